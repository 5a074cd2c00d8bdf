//! The agent's HTTP API (JSON).
//!
//! - `POST /v1/transactions`: an array of statements, one transaction;
//! - `POST /v1/queries`: one read-only statement, rows as NDJSON events;
//! - `GET /v1/members`, `GET /v1/status`, `GET /v1/health`;
//! - `GET /metrics`: Prometheus text format.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use litemesh::{Error, Node, Token};
use serde::Deserialize;
use serde_json::{Value as Json, json};

use crate::json::{from_value, to_statement};

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// How long a query with `min_token` waits by default.
const DEFAULT_WAIT_MS: u64 = 5_000;
/// Longest wait a client may ask for.
const MAX_WAIT_MS: u64 = 60_000;

/// What the handlers share.
pub struct AppState {
    /// The node.
    pub node: Node,
    /// `/v1/health` answers 503 when some peer has more versions than this
    /// that the node lacks.
    pub health_max_behind: u64,
}

/// The API's routes.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/transactions", post(transactions))
        .route("/v1/queries", post(queries))
        .route("/v1/members", get(members))
        .route("/v1/status", get(status))
        .route("/v1/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(refuse_large_bodies))
        .with_state(state)
}

/// Answers 413 at once when the announced length is past the limit, before
/// the body is read (and before `100 Continue`), so the client gets the answer
/// instead of a connection reset in the middle of sending. Bodies without a
/// length are cut at the limit by `DefaultBodyLimit`.
async fn refuse_large_bodies(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body larger than {MAX_BODY_BYTES} bytes"),
        );
    }
    next.run(req).await
}

fn error(status: StatusCode, msg: impl std::fmt::Display) -> Response {
    (status, axum::Json(json!({ "error": msg.to_string() }))).into_response()
}

/// The status code for a node error.
fn error_status(e: &Error) -> StatusCode {
    match e {
        Error::Storage(_) | Error::NotReadOnly(_) | Error::InvalidToken(_) | Error::Settings(_) => {
            StatusCode::BAD_REQUEST
        }
        Error::Lagging { .. } | Error::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        Error::Transport(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A failed request: its status and message.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error(self.0, self.1)
    }
}

/// Parses a JSON body, turning every failure into a 4xx with `error`.
fn body_json(body: Result<Bytes, BytesRejection>) -> Result<Json, ApiError> {
    let bytes = body.map_err(|r| {
        let status = r.status();
        let msg = if status == StatusCode::PAYLOAD_TOO_LARGE {
            format!("request body larger than {MAX_BODY_BYTES} bytes")
        } else {
            r.body_text()
        };
        ApiError(status, msg)
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("malformed JSON body: {e}")))
}

async fn transactions(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let j = match body_json(body) {
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
    match st.node.execute(statements).await {
        Ok(done) => {
            let results: Vec<Json> = done
                .rows_affected
                .iter()
                .map(|n| json!({ "rows_affected": n }))
                .collect();
            axum::Json(json!({
                "results": results,
                "time": t.elapsed().as_secs_f64(),
                "version": done.version,
                "token": done.token.to_string(),
            }))
            .into_response()
        }
        Err(e) => error(error_status(&e), e),
    }
}

#[derive(Deserialize)]
struct QueryParams {
    min_token: Option<String>,
    wait_ms: Option<u64>,
}

async fn queries(
    State(st): State<Arc<AppState>>,
    params: Result<Query<QueryParams>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Query(params) = match params {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let j = match body_json(body) {
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
    let t = Instant::now();
    let result = match st.node.query(statement, token.as_ref(), wait).await {
        Ok(r) => r,
        Err(e) => return error(error_status(&e), e),
    };
    // Everything is known before the first byte is sent, so every failure
    // above has its own status; the body is the event stream.
    let mut out = Vec::with_capacity(64 + result.rows.len() * 32);
    let mut line = |j: Json| {
        serde_json::to_writer(&mut out, &j).expect("JSON to memory");
        out.push(b'\n');
    };
    line(json!({ "columns": result.columns }));
    for (i, row) in result.rows.iter().enumerate() {
        let values: Vec<Json> = row.iter().map(from_value).collect();
        line(json!({ "row": [i + 1, values] }));
    }
    line(json!({ "eoq": { "time": t.elapsed().as_secs_f64() } }));
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from(out),
    )
        .into_response()
}

async fn members(State(st): State<Arc<AppState>>) -> Response {
    axum::Json(st.node.members()).into_response()
}

async fn status(State(st): State<Arc<AppState>>) -> Response {
    match st.node.status().await {
        Ok(s) => axum::Json(s).into_response(),
        Err(e) => error(error_status(&e), e),
    }
}

async fn health(State(st): State<Arc<AppState>>) -> Response {
    let s = match st.node.status().await {
        Ok(s) => s,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    let lagging: Vec<Json> = s
        .peers
        .iter()
        .filter(|p| p.behind_versions > st.health_max_behind)
        .map(|p| json!({ "peer": p.addr, "behind_versions": p.behind_versions }))
        .collect();
    if lagging.is_empty() {
        axum::Json(json!({ "status": "ok", "name": s.name, "db_version": s.db_version }))
            .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({
                "status": "lagging",
                "error": format!(
                    "behind {} peer(s) by more than {} versions",
                    lagging.len(),
                    st.health_max_behind
                ),
                "lagging": lagging,
            })),
        )
            .into_response()
    }
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
        "litemesh_db_version",
        "gauge",
        "Last version written on this node.",
        &one(s.db_version as f64),
    );
    let behind: Vec<(String, f64)> = s
        .peers
        .iter()
        .map(|p| {
            (
                format!("{{peer=\"{}\"}}", label(&p.addr.to_string())),
                p.behind_versions as f64,
            )
        })
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
        .filter_map(|p| {
            p.last_sync_secs_ago
                .map(|a| (format!("{{peer=\"{}\"}}", label(&p.addr.to_string())), a))
        })
        .collect();
    metric(
        "litemesh_peer_last_sync_age_seconds",
        "gauge",
        "Seconds since the last completed reconciliation with a peer.",
        &ago,
    );
    metric(
        "litemesh_changes_applied_total",
        "counter",
        "Changes from peers applied to this node.",
        &one(s.changes_applied as f64),
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
                members.iter().filter(|m| m.state == *state).count() as f64,
            )
        })
        .collect();
    metric(
        "litemesh_members",
        "gauge",
        "Members of the mesh by state, as this node sees them (itself included).",
        &states,
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
