//! The agent's HTTP API (JSON).
//!
//! - `POST /v1/transactions`: an array of statements, one transaction;
//! - `POST /v1/queries`: one read-only statement, rows streamed as NDJSON;
//! - `GET /v1/members`, `GET /v1/status`, `GET /v1/health`;
//! - `POST /v1/quarantine/retry`: retry changes from peers that failed here;
//! - `GET /metrics`: Prometheus text format.
//!
//! Every statement runs under the node's sandbox (see docs/security.md):
//! transactions read and write replicated tables, queries only read.
//!
//! Answers are the types of `litemesh_client::types`, so the client crate
//! and this server share one definition of every JSON shape.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use litemesh::{
    Ack, Error, Fallback, HealthThresholds, Interruption, Node, QueryOptions, StorageError, Token,
};
use litemesh_client::types as wire;
use serde::Deserialize;
use serde_json::Value as Json;

use crate::json::{to_statement, wire_member, wire_status, wire_value};

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// How long a query with `min_token` waits by default.
const DEFAULT_WAIT_MS: u64 = 5_000;
/// Longest wait a client may ask for.
const MAX_WAIT_MS: u64 = 60_000;

/// Counters of the HTTP server, for `/metrics`.
#[derive(Debug, Default)]
pub struct HttpStats {
    /// Connections open now.
    pub open: AtomicU64,
    /// Connections accepted in all.
    pub accepted: AtomicU64,
    /// Connections closed at once because the limit was reached and every
    /// open one was busy.
    pub refused: AtomicU64,
    /// Idle (or still silent) connections closed to make room for new ones
    /// at the limit.
    pub evicted: AtomicU64,
    /// Connections closed for being too slow (headers, body, or reading the
    /// answer).
    pub timed_out: AtomicU64,
}

/// What the handlers share.
pub struct AppState {
    /// The node.
    pub node: Node,
    /// When `/v1/health` answers 503.
    pub thresholds: HealthThresholds,
    /// How long a client may take to send a request body.
    pub body_timeout: Duration,
    /// The server's counters.
    pub http: Arc<HttpStats>,
    /// Held while a backup is taken (one at a time).
    pub backup: Arc<tokio::sync::Mutex<()>>,
}

/// The API's routes.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/transactions", post(transactions))
        .route("/v1/queries", post(queries))
        .route("/v1/members", get(members))
        .route("/v1/status", get(status))
        .route("/v1/health", get(health))
        .route("/v1/quarantine/retry", post(quarantine_retry))
        .route("/v1/backup", get(backup))
        .route("/v1/retention", get(retention))
        .route("/metrics", get(metrics))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        // `read_body` is the one limit (8 MiB): without this, axum's `Bytes`
        // extractor would add its own default of 2 MiB.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            read_body,
        ))
        .with_state(state)
}

/// Reads the whole request body before the handler runs, within the size
/// limit and the body timeout: 413 at once when the announced length is
/// past the limit (before `100 Continue`, so the client gets the answer
/// instead of a reset in the middle of sending), 413 when an unannounced
/// body grows past it, 408 when the client sends too slowly.
async fn read_body(
    State(st): State<Arc<AppState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return too_large();
    }
    let (parts, body) = req.into_parts();
    let bytes =
        match tokio::time::timeout(st.body_timeout, axum::body::to_bytes(body, MAX_BODY_BYTES))
            .await
        {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                let too_big = std::error::Error::source(&e)
                    .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
                if too_big {
                    return too_large();
                }
                return error(StatusCode::BAD_REQUEST, format!("reading the body: {e}"));
            }
            Err(_) => {
                st.http.timed_out.fetch_add(1, Ordering::Relaxed);
                let mut r = error(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the request body did not arrive within {:.0} s",
                        st.body_timeout.as_secs_f64()
                    ),
                );
                r.headers_mut()
                    .insert(header::CONNECTION, "close".parse().expect("header value"));
                return r;
            }
        };
    next.run(axum::extract::Request::from_parts(parts, Body::from(bytes)))
        .await
}

fn too_large() -> Response {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body larger than {MAX_BODY_BYTES} bytes"),
    )
}

fn error(status: StatusCode, msg: impl std::fmt::Display) -> Response {
    let body = wire::ErrorBody {
        error: msg.to_string(),
    };
    (status, axum::Json(body)).into_response()
}

/// The status code for a node error.
fn error_status(e: &Error) -> StatusCode {
    match e {
        Error::Storage(StorageError::Refused(_)) => StatusCode::FORBIDDEN,
        Error::Storage(StorageError::RowTooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
        Error::Storage(StorageError::Interrupted(Interruption::ShuttingDown)) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        Error::Storage(StorageError::Interrupted(_)) => StatusCode::REQUEST_TIMEOUT,
        // The file cannot be written or read (disk full, I/O, a lock held
        // elsewhere): another node can serve.
        Error::Storage(s) if s.is_environmental() => StatusCode::SERVICE_UNAVAILABLE,
        // Bad SQL, a constraint, a type: the request's own fault.
        Error::Storage(_) => StatusCode::BAD_REQUEST,
        Error::InvalidToken(_)
        | Error::Settings(_)
        | Error::TooManyRows(_)
        | Error::BadLevel(_) => StatusCode::BAD_REQUEST,
        Error::PeerRefused { status, .. } => {
            StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_REQUEST)
        }
        Error::Lagging { .. }
        | Error::Stale { .. }
        | Error::NoReplica(_)
        | Error::ShuttingDown
        | Error::NeedsSnapshot(_)
        | Error::Joining => StatusCode::SERVICE_UNAVAILABLE,
        Error::Transport(_) | Error::InUse(_) | Error::Protocol(_) => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

/// A request that failed before reaching the node: its status and message.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error(self.0, self.1)
    }
}

/// Parses a JSON body, turning every failure into a 400 with `error`.
fn body_json(body: &Bytes) -> Result<Json, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("malformed JSON body: {e}")))
}

#[derive(Deserialize)]
struct TransactionParams {
    ack: Option<String>,
    ack_timeout_ms: Option<u64>,
}

async fn transactions(
    State(st): State<Arc<AppState>>,
    params: Result<Query<TransactionParams>, QueryRejection>,
    body: Bytes,
) -> Response {
    let Query(params) = match params {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let ack = match params.ack.as_deref().unwrap_or("local").parse::<Ack>() {
        Ok(a) => a,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let ack_timeout = Duration::from_millis(
        params
            .ack_timeout_ms
            .unwrap_or(DEFAULT_WAIT_MS)
            .min(MAX_WAIT_MS),
    );
    let j = match body_json(&body) {
        Ok(j) => j,
        Err(r) => return r.into_response(),
    };
    let Json::Array(items) = j else {
        return error(
            StatusCode::BAD_REQUEST,
            "the body must be a JSON array of statements",
        );
    };
    if items.is_empty() {
        return error(StatusCode::BAD_REQUEST, "no statements given");
    }
    let mut statements = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        match to_statement(item) {
            Ok(s) => statements.push(s),
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("statement {}: {e}", i + 1)),
        }
    }
    let t = Instant::now();
    let (done, report) = if ack == Ack::Local {
        match st.node.execute(statements).await {
            Ok(done) => (done, None),
            Err(e) => return error(error_status(&e), e),
        }
    } else {
        match st.node.execute_acked(statements, &ack, ack_timeout).await {
            Ok((done, report)) => (done, Some(report)),
            Err(e) => return error(error_status(&e), e),
        }
    };
    // Committed here either way: 202 says the level was not reached in
    // time (the write is not undone).
    let status = match &report {
        Some(r) if !r.reached => StatusCode::ACCEPTED,
        _ => StatusCode::OK,
    };
    let body = wire::TransactionResult {
        results: done
            .rows_affected
            .iter()
            .map(|&n| wire::StatementResult {
                rows_affected: n as u64,
            })
            .collect(),
        time: t.elapsed().as_secs_f64(),
        token: done.token.to_string().into(),
        version: done.version,
        ack: report.map(|r| wire::AckResult {
            level: r.level.to_string(),
            reached: r.reached,
            confirmed: r
                .confirmed
                .into_iter()
                .map(|(name, region)| wire::AckNode { name, region })
                .collect(),
            missing: r.missing,
            waited_ms: r.waited.as_secs_f64() * 1000.0,
        }),
    };
    (status, axum::Json(body)).into_response()
}

#[derive(Deserialize)]
struct QueryParams {
    min_token: Option<String>,
    wait_ms: Option<u64>,
    max_lag_ms: Option<u64>,
    fallback: Option<String>,
}

/// One NDJSON line.
fn line(out: &mut Vec<u8>, event: &wire::QueryEvent) {
    serde_json::to_writer(&mut *out, event).expect("JSON to memory");
    out.push(b'\n');
}

async fn queries(
    State(st): State<Arc<AppState>>,
    params: Result<Query<QueryParams>, QueryRejection>,
    body: Bytes,
) -> Response {
    let Query(params) = match params {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let j = match body_json(&body) {
        Ok(j) => j,
        Err(r) => return r.into_response(),
    };
    let statement = match to_statement(&j) {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let token = match params.min_token.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(t) => match t.parse::<Token>() {
            Ok(t) => Some(t),
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        },
    };
    let wait = Duration::from_millis(params.wait_ms.unwrap_or(DEFAULT_WAIT_MS).min(MAX_WAIT_MS));
    let fallback = match params.fallback.as_deref().map(str::trim) {
        None | Some("") | Some("none") => Fallback::None,
        Some("nearest") => Fallback::Nearest,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("fallback {other:?}: use none or nearest"),
            );
        }
    };
    let t = Instant::now();
    let opts = QueryOptions {
        min_token: token,
        wait,
        max_lag: params.max_lag_ms.map(Duration::from_millis),
        fallback,
        ..QueryOptions::default()
    };
    // Errors known before the first byte (bad SQL, refused, the token not
    // reached, a failure on the first row) get their own status; after
    // that, the stream ends with an error event.
    let rows = match st.node.query_rows(statement, opts).await {
        Ok(r) => r,
        Err(e) => return error(error_status(&e), e),
    };
    let mut first = Vec::new();
    line(
        &mut first,
        &wire::QueryEvent::Columns(rows.columns().to_vec()),
    );
    let served_by = rows.served_by().map(str::to_string);
    struct S {
        rows: Option<litemesh::Rows>,
        n: u64,
        t: Instant,
        served_by: Option<String>,
    }
    let head =
        futures_util::stream::once(async move { Ok::<_, std::io::Error>(Bytes::from(first)) });
    let body = futures_util::stream::unfold(
        S {
            rows: Some(rows),
            n: 0,
            t,
            served_by: served_by.clone(),
        },
        |mut s| async move {
            let rows = s.rows.as_mut()?;
            let mut out = Vec::with_capacity(8 * 1024);
            // Up to ~64 KiB per chunk, without waiting for more than the
            // rows already in.
            loop {
                match rows.next().await {
                    Some(Ok(values)) => {
                        s.n += 1;
                        let v = values.into_iter().map(wire_value).collect();
                        line(&mut out, &wire::QueryEvent::Row(s.n, v));
                        if out.len() >= 64 * 1024 {
                            break;
                        }
                    }
                    Some(Err(e)) => {
                        line(&mut out, &wire::QueryEvent::Error(e.to_string()));
                        s.rows = None;
                        break;
                    }
                    None => {
                        let time = s.t.elapsed().as_secs_f64();
                        let served_by = s.served_by.take();
                        line(
                            &mut out,
                            &wire::QueryEvent::Eoq(wire::EndOfQuery { time, served_by }),
                        );
                        s.rows = None;
                        break;
                    }
                }
            }
            Some((Ok::<_, std::io::Error>(Bytes::from(out)), s))
        },
    );
    use futures_util::StreamExt as _;
    let mut response = (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(head.chain(body)),
    )
        .into_response();
    if let Some(node) = served_by.and_then(|n| header::HeaderValue::from_str(&n).ok()) {
        response.headers_mut().insert("x-litemesh-served-by", node);
    }
    response
}

async fn members(State(st): State<Arc<AppState>>) -> Response {
    let members: Vec<wire::Member> = st.node.members().into_iter().map(wire_member).collect();
    axum::Json(members).into_response()
}

async fn status(State(st): State<Arc<AppState>>) -> Response {
    match st.node.status().await {
        Ok(s) => axum::Json(wire_status(s)).into_response(),
        Err(e) => error(error_status(&e), e),
    }
}

async fn health(State(st): State<Arc<AppState>>) -> Response {
    let h = match st.node.health(&st.thresholds).await {
        Ok(h) => h,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    if h.is_ok() {
        let v = st.node.knowledge();
        let db = v
            .have
            .get(&st.node.actor_id())
            .and_then(|r| r.max())
            .unwrap_or(0);
        return axum::Json(wire::Health {
            db_version: Some(db),
            error: None,
            issues: Vec::new(),
            name: st.node.name().to_string(),
            status: wire::HealthStatus::Ok,
        })
        .into_response();
    }
    let issues: Vec<wire::HealthIssue> = h
        .issues
        .iter()
        .map(|i| wire::HealthIssue {
            kind: i.kind().into(),
            message: i.to_string(),
        })
        .collect();
    let text: Vec<&str> = issues.iter().map(|i| i.message.as_str()).collect();
    let body = wire::Health {
        db_version: None,
        error: Some(text.join("; ")),
        issues,
        name: st.node.name().to_string(),
        status: wire::HealthStatus::Unhealthy,
    };
    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
}

async fn quarantine_retry(State(st): State<Arc<AppState>>) -> Response {
    match st.node.retry_quarantined().await {
        Ok((applied, failing)) => axum::Json(wire::RetryResult {
            applied: applied as u64,
            still_failing: failing as u64,
        })
        .into_response(),
        Err(e) => error(error_status(&e), e),
    }
}

/// `GET /v1/retention`: what the node keeps and for how long.
async fn retention(State(st): State<Arc<AppState>>) -> Response {
    match st.node.retention().await {
        Ok(r) => axum::Json(crate::json::wire_retention(r)).into_response(),
        Err(e) => error(error_status(&e), e),
    }
}

/// Prefix of the temporary folder a backup is taken in, beside the node's
/// file (`.litemesh-backup-<file name>-…`).
fn backup_prefix(db: &std::path::Path) -> String {
    format!(
        ".litemesh-backup-{}-",
        db.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    )
}

/// Removes the temporary folders of backups a crashed run of this node
/// left beside its file (only this node's: its file name is in them).
pub fn clean_stale_backups(db: &std::path::Path) {
    let dir = db.parent().filter(|d| !d.as_os_str().is_empty());
    let dir = dir.unwrap_or_else(|| std::path::Path::new("."));
    let prefix = backup_prefix(db);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            match std::fs::remove_dir_all(e.path()) {
                Ok(()) => tracing::info!(
                    path = %e.path().display(),
                    "removed the temporary copy of a backup an earlier run left behind"
                ),
                Err(err) => tracing::warn!(path = %e.path().display(), "cannot remove: {err}"),
            }
        }
    }
}

/// `GET /v1/backup`: a consistent copy of the node's file, taken now
/// (`VACUUM INTO` a temporary file beside it, streamed, then deleted). One
/// at a time: 503 while another is taken. The copy, its folder and the
/// one-at-a-time slot belong to the copying task until it ends, and then
/// to the stream: a client that goes away never frees the slot while a
/// copy still runs, nor leaves a copy behind.
async fn backup(State(st): State<Arc<AppState>>) -> Response {
    let Ok(running) = st.backup.clone().try_lock_owned() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "a backup is already being taken on this node; try again when it is done",
        );
    };
    if st.node.is_closed() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    let db = st.node.db_path().to_path_buf();
    let dir = db
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| ".".into());
    let tmp = match tempfile::Builder::new()
        .prefix(&backup_prefix(&db))
        .tempdir_in(&dir)
    {
        Ok(t) => t,
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot make a temporary folder in {}: {e}", dir.display()),
            );
        }
    };
    let path = tmp.path().join("backup.db");
    let copy = tokio::task::spawn_blocking(move || {
        let r = litemesh_storage_backup(&db, &path);
        (r, path, tmp, running)
    });
    let (res, path, tmp, running) = match copy.await {
        Ok(x) => x,
        Err(_) => return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down"),
    };
    let bytes = match res {
        Ok(b) => b,
        Err(e) => return error(error_status(&e), e),
    };
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot read the backup: {e}"),
            );
        }
    };
    // The folder (and the copy) go when the stream ends, however it ends.
    let stream = futures_util::stream::unfold(
        (file, tmp, running),
        |(mut file, tmp, running)| async move {
            use tokio::io::AsyncReadExt;
            let mut buf = vec![0u8; 256 * 1024];
            match file.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((
                        Ok::<_, std::io::Error>(Bytes::from(buf)),
                        (file, tmp, running),
                    ))
                }
                Err(e) => Some((Err(e), (file, tmp, running))),
            }
        },
    );
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/vnd.sqlite3")
        .header(header::CONTENT_LENGTH, bytes)
        .header(
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{}.db\"", st.node.name()),
        )
        .body(Body::from_stream(stream))
        .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// The copy itself (blocking), with the node's error type.
fn litemesh_storage_backup(
    db: &std::path::Path,
    out: &std::path::Path,
) -> Result<u64, litemesh::Error> {
    litemesh::backup_file(db, out)
}

/// Escapes a Prometheus label value.
fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    let s = match st.node.status().await {
        Ok(s) => s,
        Err(e) => return error(error_status(&e), e),
    };
    let healthy = st
        .node
        .health(&st.thresholds)
        .await
        .map(|h| h.is_ok())
        .unwrap_or(false);
    let members = st.node.members();
    let mut o = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(o, "# HELP {name} {help}");
        let _ = writeln!(o, "# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(o, "{name}{labels} {v}");
        }
    };
    let one = |v: f64| vec![(String::new(), v)];
    metric(
        "litemesh_healthy",
        "gauge",
        "1 when /v1/health answers 200, else 0.",
        &one(if healthy { 1.0 } else { 0.0 }),
    );
    metric(
        "litemesh_db_version",
        "gauge",
        "Last version written on this node.",
        &one(s.db_version as f64),
    );
    let writer_label = |w: &litemesh::WriterStatus| {
        format!(
            "{{writer=\"{}\",actor=\"{}\",reachable=\"{}\"}}",
            label(w.name.as_deref().unwrap_or("")),
            label(&w.actor.to_hex()),
            w.reachable
        )
    };
    let lag: Vec<(String, f64)> = s
        .writers
        .iter()
        .map(|w| (writer_label(w), w.lag.as_secs_f64()))
        .collect();
    metric(
        "litemesh_lag_seconds",
        "gauge",
        "Per writer: seconds this node's copy of its data has not been known complete (0 when \
         current; grows while it is unreachable or while catch-up lags).",
        &lag,
    );
    metric(
        "litemesh_max_lag_seconds",
        "gauge",
        "The largest litemesh_lag_seconds over all writers (0 without writers).",
        &one(s.max_lag.as_secs_f64()),
    );
    let region_label =
        |r: &Option<String>| format!("{{region=\"{}\"}}", label(r.as_deref().unwrap_or("")));
    let by_region = |f: &dyn Fn(&litemesh::RegionStatus) -> f64| -> Vec<(String, f64)> {
        s.regions
            .iter()
            .map(|r| (region_label(&r.region), f(r)))
            .collect()
    };
    metric(
        "litemesh_region_lag_seconds",
        "gauge",
        "Per region: the largest litemesh_lag_seconds of its reachable writers (what health \
         checks); region=\"\" groups members with no region.",
        &by_region(&|r| r.reachable_max_lag.as_secs_f64()),
    );
    metric(
        "litemesh_region_max_lag_seconds",
        "gauge",
        "Per region: the largest litemesh_lag_seconds of all its writers, unreachable ones \
         included (grows while the region is cut off from this node).",
        &by_region(&|r| r.max_lag.as_secs_f64()),
    );
    metric(
        "litemesh_region_sent_bytes_total",
        "counter",
        "Per destination region: bytes this node sent to its members since it started \
         (membership, broadcasts, reconciliation, forwarded queries and acknowledgements).",
        &by_region(&|r| r.bytes_sent as f64),
    );
    metric(
        "litemesh_region_members",
        "gauge",
        "Per region: members known, this node included in its own region.",
        &by_region(&|r| r.members as f64),
    );
    metric(
        "litemesh_region_members_reachable",
        "gauge",
        "Per region: members alive (not suspect, not dead), this node included in its own \
         region.",
        &by_region(&|r| r.reachable as f64),
    );
    let missing: Vec<(String, f64)> = s
        .writers
        .iter()
        .map(|w| (writer_label(w), w.missing_versions as f64))
        .collect();
    metric(
        "litemesh_writer_missing_versions",
        "gauge",
        "Per writer: versions up to its latest published one that this node lacks.",
        &missing,
    );
    let peer_label = |p: &litemesh::PeerStatus| {
        format!(
            "{{peer=\"{}\",name=\"{}\",state=\"{}\"}}",
            label(&p.addr.to_string()),
            label(p.name.as_deref().unwrap_or("")),
            label(p.state.as_str())
        )
    };
    let behind: Vec<(String, f64)> = s
        .peers
        .iter()
        .map(|p| (peer_label(p), p.behind_versions as f64))
        .collect();
    metric(
        "litemesh_peer_behind_versions",
        "gauge",
        "Versions a peer had at the last reconciliation that this node still lacks.",
        &behind,
    );
    metric(
        "litemesh_max_behind_versions",
        "gauge",
        "Largest litemesh_peer_behind_versions over all peers (0 without peers).",
        &one(s.peers.iter().map(|p| p.behind_versions).max().unwrap_or(0) as f64),
    );
    let ago: Vec<(String, f64)> = s
        .peers
        .iter()
        .map(|p| (peer_label(p), p.sync_age.as_secs_f64()))
        .collect();
    metric(
        "litemesh_peer_last_sync_age_seconds",
        "gauge",
        "Per known peer (alive, suspect, dead or unreachable): seconds since the last completed \
         reconciliation with it, or since it became known if there was none.",
        &ago,
    );
    metric(
        "litemesh_members_reachable",
        "gauge",
        "Members reachable (alive or suspect), this node included.",
        &one(s.members_reachable as f64),
    );
    metric(
        "litemesh_members_known",
        "gauge",
        "Members known (reachable, dead, or remembered from earlier runs), this node included.",
        &one(s.members_known as f64),
    );
    metric(
        "litemesh_quarantined_versions",
        "gauge",
        "Changes from peers that cannot be applied on this node (see /v1/status).",
        &one(s.quarantined.len() as f64),
    );
    metric(
        "litemesh_apply_failures",
        "gauge",
        "Consecutive failures to apply changes from peers (0 when the last one succeeded).",
        &one(s.apply_failures as f64),
    );
    metric(
        "litemesh_serve_failures",
        "gauge",
        "Consecutive failures to serve a peer's reconciliation.",
        &one(s.serve_failures as f64),
    );
    metric(
        "litemesh_can_write",
        "gauge",
        "1 when the last write to the node's file succeeded, else 0.",
        &one(if s.write_error.is_none() { 1.0 } else { 0.0 }),
    );
    metric(
        "litemesh_changes_applied_total",
        "counter",
        "Changes from peers applied to this node.",
        &one(s.changes_applied as f64),
    );
    metric(
        "litemesh_transactions_committed_total",
        "counter",
        "Clients' transactions committed on this node.",
        &one(s.transactions_committed as f64),
    );
    metric(
        "litemesh_commit_groups_total",
        "counter",
        "Commits those transactions took (group commit: concurrent transactions share one).",
        &one(s.commit_groups as f64),
    );
    metric(
        "litemesh_apply_transactions_total",
        "counter",
        "SQLite transactions that applied changes from peers (arrivals that queue together share one).",
        &one(s.apply_transactions as f64),
    );
    metric(
        "litemesh_broadcasts_known_total",
        "counter",
        "Broadcasts received that held nothing new (neither applied nor relayed).",
        &one(s.broadcasts_known as f64),
    );
    metric(
        "litemesh_broadcasts_withheld_total",
        "counter",
        "Broadcast messages not sent to a peer that may hold rows the version reached this node without (table placement).",
        &one(s.broadcasts_withheld as f64),
    );
    metric(
        "litemesh_placement_rows_refused_total",
        "counter",
        "Rows of tables this node's region may not hold that peers sent anyway (left out, never written).",
        &one(s.placement_rows_refused as f64),
    );
    metric(
        "litemesh_placement_mismatch_members",
        "gauge",
        "Members whose schema pins tables differently from this node's (apply the same schema everywhere).",
        &one(s.placement_mismatch.len() as f64),
    );
    metric(
        "litemesh_tombstones_collected_total",
        "counter",
        "Tombstones (deleted rows' metadata) collected by the retention policy since the node started.",
        &one(s.tombstones_collected as f64),
    );
    metric(
        "litemesh_collection_held_back",
        "gauge",
        "1 when a retention policy is set and tombstone collection cannot advance (see /v1/retention), else 0.",
        &one(if s.collection_held_back.is_some() {
            1.0
        } else {
            0.0
        }),
    );
    metric(
        "litemesh_rows_not_carried_total",
        "counter",
        "A partial replica: rows of tables it does not carry that peers sent (they did not know), left out.",
        &one(s.rows_not_carried as f64),
    );
    metric(
        "litemesh_syncs_completed_total",
        "counter",
        "Completed anti-entropy reconciliations.",
        &one(s.syncs_completed as f64),
    );
    metric(
        "litemesh_syncs_failed_total",
        "counter",
        "Failed anti-entropy reconciliations.",
        &one(s.syncs_failed as f64),
    );
    metric(
        "litemesh_broadcast_queue_depth",
        "gauge",
        "Broadcast messages waiting for the rate limit.",
        &one(s.broadcast_queue as f64),
    );
    metric(
        "litemesh_broadcast_dropped_total",
        "counter",
        "Broadcast messages dropped on overflow (anti-entropy repairs them).",
        &one(s.broadcast_dropped as f64),
    );
    metric(
        "litemesh_partial_versions",
        "gauge",
        "Versions received only in part.",
        &one(s.partial_versions as f64),
    );
    let states: Vec<(String, f64)> = ["alive", "suspect", "dead", "left"]
        .iter()
        .map(|state| {
            (
                format!("{{state=\"{state}\"}}"),
                members
                    .iter()
                    .filter(|m| litemesh::PeerState::from(m.state).as_str() == *state)
                    .count() as f64,
            )
        })
        .collect();
    metric(
        "litemesh_members",
        "gauge",
        "Members of the mesh by state, as this node sees them (itself included).",
        &states,
    );
    let h = &st.http;
    metric(
        "litemesh_api_connections",
        "gauge",
        "HTTP API connections open.",
        &one(h.open.load(Ordering::Relaxed) as f64),
    );
    metric(
        "litemesh_api_connections_total",
        "counter",
        "HTTP API connections accepted.",
        &one(h.accepted.load(Ordering::Relaxed) as f64),
    );
    metric(
        "litemesh_api_connections_refused_total",
        "counter",
        "HTTP API connections closed at once because the connection limit was reached.",
        &one(h.refused.load(Ordering::Relaxed) as f64),
    );
    metric(
        "litemesh_api_connections_evicted_total",
        "counter",
        "Idle HTTP API connections closed to make room for new ones at the connection limit.",
        &one(h.evicted.load(Ordering::Relaxed) as f64),
    );
    metric(
        "litemesh_api_timeouts_total",
        "counter",
        "HTTP API connections or requests ended for being too slow.",
        &one(h.timed_out.load(Ordering::Relaxed) as f64),
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        o,
    )
        .into_response()
}
