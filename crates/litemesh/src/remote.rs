//! Requests between nodes that are not replication: a query forwarded to a
//! peer (read level `fallback=nearest`) and "tell me when you hold this
//! token" (write acknowledgement levels).
//!
//! They travel on bidirectional streams of the mesh's QUIC connections
//! (mutual TLS: only members of the mesh can ask), one request frame and one
//! response frame, both MessagePack. The request frame starts with
//! [`litemesh_proto::channel::NODE`], which no sync request starts with, so
//! the driver routes it here instead of to the replication core. A peer
//! runs a forwarded query exactly as it runs a client's: under the client
//! sandbox (reads only), its own time and row limits, after checking the
//! read level itself. The answer is bounded by the transport's frame limit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use litemesh_proto::Value;
use litemesh_transport::Responder;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::node::Inner;
use crate::query::{self, QueryOptions};
use crate::sql::Statement;
use crate::token::Token;

/// A node's request to a peer.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    /// Run a read-only statement at a read level.
    Query {
        sql: String,
        params: Vec<Value>,
        min_token: Option<String>,
        max_lag_ms: Option<u64>,
        wait_ms: u64,
        max_rows: u64,
    },
    /// Answer once every version the token names is held here (or after
    /// `wait_ms`, refusing).
    Applied { token: String, wait_ms: u64 },
}

/// Why a peer did not serve a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Refusal {
    /// It does not hold what the token names (in time).
    Lagging,
    /// Its copy is staler than `max_lag_ms` allows.
    Stale,
    /// It cannot serve now (shutting down, its file fails): another may.
    Unavailable,
    /// The query itself failed there, with this HTTP status (400 bad SQL
    /// or token, 403 refused by the sandbox, 408 its time limit, 413 too
    /// large): no other node would do better, and it is not retried.
    Query(u16),
}
/// A peer's answer.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Response {
    /// The rows of a forwarded query.
    Rows {
        node: String,
        columns: Vec<String>,
        rows: Vec<Vec<Value>>,
    },
    /// It holds the token's versions.
    Applied { node: String },
    /// It did not serve.
    Refused { why: Refusal, message: String },
    /// The request arrived and is being worked on (sent at once, before
    /// the answer): a peer that cannot be reached is told from one that is
    /// slow to answer within [`ACCEPT_WITHIN`].
    Accepted,
}

/// How long a peer has to acknowledge a request (a round trip, a handshake
/// if no connection is open). A peer that does not is given up at once
/// rather than after the whole wait and query time.
pub(crate) const ACCEPT_WITHIN: Duration = Duration::from_secs(2);

/// Longest wait a peer grants a request (a client's wait is capped lower).
const MAX_WAIT: Duration = Duration::from_secs(60);

fn encode<T: Serialize>(tag: Option<u8>, v: &T) -> Bytes {
    let mut out = Vec::with_capacity(256);
    if let Some(t) = tag {
        out.push(t);
    }
    rmp_serde::encode::write_named(&mut out, v).expect("encoding to memory");
    Bytes::from(out)
}

/// Sends `req` to `peer` and waits (up to `timeout`) for its answer.
pub(crate) async fn call(
    inner: &Arc<Inner>,
    peer: SocketAddr,
    req: &Request,
    timeout: Duration,
) -> Result<Response, String> {
    let frame = encode(Some(litemesh_proto::channel::NODE), req);
    inner.count_sent(peer, frame.len());
    let started = tokio::time::Instant::now();
    let exchange = async {
        let next = async |stream: &mut litemesh_transport::ResponseStream| {
            let bytes = stream
                .next()
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "the peer closed the stream without answering".to_string())?;
            rmp_serde::from_slice::<Response>(&bytes).map_err(|e| format!("bad answer: {e}"))
        };
        // First the peer says it has the request, within a round trip or
        // two: an unreachable peer costs ACCEPT_WITHIN, not the whole wait.
        let accepted = async {
            let mut stream = inner
                .transport
                .request(peer, frame)
                .await
                .map_err(|e| e.to_string())?;
            let first = next(&mut stream).await?;
            Ok::<_, String>((stream, first))
        };
        let (mut stream, first) = tokio::time::timeout(ACCEPT_WITHIN, accepted)
            .await
            .map_err(|_| format!("no answer within {ACCEPT_WITHIN:?}"))??;
        if !matches!(first, Response::Accepted) {
            return Ok(first);
        }
        let left = timeout.saturating_sub(started.elapsed());
        tokio::time::timeout(left, next(&mut stream))
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))?
    };
    // Ends at shutdown too: nothing that holds the node outlives it.
    let mut stop = inner.shutdown.subscribe();
    tokio::select! {
        r = exchange => r,
        _ = stop.wait_for(|s| *s) => Err("this node is shutting down".into()),
    }
}

fn refusal(e: &Error) -> Refusal {
    use litemesh_storage::{Interruption, StorageError as S};
    match e {
        Error::Lagging { .. } => Refusal::Lagging,
        Error::Stale { .. } => Refusal::Stale,
        Error::Storage(S::Refused(_)) => Refusal::Query(403),
        Error::Storage(S::RowTooLarge { .. }) => Refusal::Query(413),
        Error::Storage(S::Interrupted(Interruption::ShuttingDown)) => Refusal::Unavailable,
        Error::Storage(S::Interrupted(_)) => Refusal::Query(408),
        Error::Storage(s) if s.is_environmental() => Refusal::Unavailable,
        Error::Storage(_) | Error::TooManyRows(_) | Error::InvalidToken(_) => Refusal::Query(400),
        _ => Refusal::Unavailable,
    }
}

/// Serves a peer's request (the driver saw the [`litemesh_proto::channel::NODE`]
/// tag). Never panics on what the peer sent.
pub(crate) async fn serve(
    inner: Arc<Inner>,
    from: SocketAddr,
    body: Bytes,
    mut respond: Responder,
) {
    let answer = match rmp_serde::from_slice::<Request>(&body) {
        Ok(req) => {
            // Acknowledged at once; the answer follows.
            let accepted = encode(None, &Response::Accepted);
            inner.count_sent(from, accepted.len());
            if respond.send(accepted).await.is_err() {
                return;
            }
            answer(&inner, from, req).await
        }
        Err(e) => {
            tracing::warn!(%from, "bad node request refused: {e}");
            Response::Refused {
                why: Refusal::Query(400),
                message: format!("malformed request: {e}"),
            }
        }
    };
    let mut frame = encode(None, &answer);
    if frame.len() > inner.transport.config().max_frame {
        frame = encode(
            None,
            &Response::Refused {
                why: Refusal::Query(413),
                message: format!(
                    "the result ({} bytes) is larger than one answer between nodes may be \
                     ({} bytes): narrow the query",
                    frame.len(),
                    inner.transport.config().max_frame
                ),
            },
        );
    }
    inner.count_sent(from, frame.len());
    if respond.send(frame).await.is_ok() {
        let _ = respond.finish();
    }
}

async fn answer(inner: &Arc<Inner>, from: SocketAddr, req: Request) -> Response {
    let refused = |e: Error| Response::Refused {
        why: refusal(&e),
        message: e.to_string(),
    };
    match req {
        Request::Applied { token, wait_ms } => {
            let token = match token.parse::<Token>() {
                Ok(t) => t,
                Err(e) => return refused(e),
            };
            let wait = Duration::from_millis(wait_ms).min(MAX_WAIT);
            match inner.wait_token(&token, wait).await {
                Ok(()) => Response::Applied {
                    node: inner.name.clone(),
                },
                Err(e) => refused(e),
            }
        }
        Request::Query {
            sql,
            params,
            min_token,
            max_lag_ms,
            wait_ms,
            max_rows,
        } => {
            let min_token = match min_token.map(|t| t.parse::<Token>()).transpose() {
                Ok(t) => t,
                Err(e) => return refused(e),
            };
            let opts = QueryOptions {
                min_token,
                wait: Duration::from_millis(wait_ms).min(MAX_WAIT),
                max_lag: max_lag_ms.map(Duration::from_millis),
                max_rows: Some(max_rows),
                ..QueryOptions::default()
            };
            if let Err(e) = inner.wait_level(&opts, opts.wait).await {
                return refused(e);
            }
            // The smaller of the two limits (0: none).
            let limit = match (max_rows, inner.max_query_rows) {
                (0, mine) => mine,
                (asked, 0) => asked,
                (asked, mine) => asked.min(mine),
            };
            let statement = Statement::with_params(sql, params);
            let mut rows = match query::start_for(
                &inner.queries,
                statement,
                inner.query_timeout,
                limit,
                Some(inner.placement_entitlement(from)),
            )
            .await
            {
                Ok(r) => r,
                Err(e) => return refused(e),
            };
            let columns = rows.columns().to_vec();
            let mut out = Vec::new();
            let mut bytes = 0usize;
            let max = inner.transport.config().max_frame;
            while let Some(r) = rows.next().await {
                match r {
                    Ok(row) => {
                        bytes += row.iter().map(Value::encoded_size).sum::<usize>() + 4;
                        if bytes > max {
                            return Response::Refused {
                                why: Refusal::Query(413),
                                message: format!(
                                    "the result is larger than one answer between nodes may \
                                     be ({max} bytes): narrow the query"
                                ),
                            };
                        }
                        out.push(row);
                    }
                    Err(e) => return refused(e),
                }
            }
            Response::Rows {
                node: inner.name.clone(),
                columns,
                rows: out,
            }
        }
    }
}
