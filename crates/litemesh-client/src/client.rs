//! The blocking client.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result, StatusCode};
use crate::query::{Events, QueryOptions, Rows};
use crate::types::{ErrorBody, Health, Member, RetryResult, Status, TransactionResult};
use crate::value::Statement;

/// How long a whole request (connecting, sending, reading the answer) may
/// take, unless [`ClientBuilder::timeout`] says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// How long measuring the round trip to a fallback agent may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Largest answer read whole (everything but a query's rows, which stream).
const MAX_ANSWER_BYTES: u64 = 1 << 30;

type Response = ureq::http::Response<ureq::Body>;

/// A blocking client of one agent's HTTP API — or of several, the first
/// preferred ([`ClientBuilder::build_many`]).
///
/// Connections are kept alive and reused. Cloning is cheap and shares them;
/// so does [`Client::at`], which addresses another agent.
#[derive(Debug, Clone)]
pub struct Client {
    agent: ureq::Agent,
    base: String,
    /// Other agents to fall back on, nearest first once measured.
    others: Vec<String>,
    /// Round-trip times measured to the other agents.
    rtts: Arc<Mutex<HashMap<String, Duration>>>,
}

/// Settings of a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    timeout: Option<Duration>,
    connect_timeout: Option<Duration>,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder {
            timeout: Some(DEFAULT_TIMEOUT),
            connect_timeout: None,
        }
    }
}

impl ClientBuilder {
    /// How long a whole request may take, from connecting to the end of its
    /// answer (a query's last row included). Default: [`DEFAULT_TIMEOUT`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// No overall time limit.
    pub fn no_timeout(mut self) -> Self {
        self.timeout = None;
        self
    }

    /// How long connecting may take (within the overall timeout).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// A client of the agent whose API listens at `addr`: `HOST:PORT` or a
    /// URL `http://HOST:PORT` (the API speaks plain HTTP).
    pub fn build(self, addr: &str) -> Client {
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(self.timeout);
        if let Some(t) = self.connect_timeout {
            config = config.timeout_connect(Some(t));
        }
        Client {
            agent: config.build().into(),
            base: base_url(addr),
            others: Vec::new(),
            rtts: Arc::default(),
        }
    }

    /// A client of several agents: it talks to the first (the local one)
    /// and, when that one cannot be reached or cannot serve a query at its
    /// read level (503), to the others, nearest first by measured
    /// round-trip time. Transactions go elsewhere only when the first agent
    /// could not be connected to at all (nothing was sent, so nothing can
    /// be applied twice). `addrs` must not be empty.
    pub fn build_many(self, addrs: &[&str]) -> Client {
        let mut c = self.build(addrs.first().copied().unwrap_or("127.0.0.1:8787"));
        c.others = addrs.iter().skip(1).map(|a| base_url(a)).collect();
        c
    }
}

/// `http://HOST:PORT` for `HOST:PORT` or a URL, without a trailing `/`.
fn base_url(addr: &str) -> String {
    let addr = addr.trim_end_matches('/');
    if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}

/// Percent-encodes all but unreserved characters (for a query string).
fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// An answer as it came: for requests whose answer is the point (probing
/// the API's refusals) rather than its content.
#[derive(Debug, Clone, PartialEq)]
pub struct RawAnswer {
    /// Its status.
    pub status: StatusCode,
    /// Its body.
    pub body: String,
}

impl Client {
    /// A client of the agent at `addr` (`HOST:PORT` or `http://HOST:PORT`)
    /// with the default settings.
    pub fn new(addr: &str) -> Client {
        ClientBuilder::default().build(addr)
    }

    /// Settings for a client.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// A client of the agent at `addr`, with this one's settings and
    /// connection pool.
    pub fn at(&self, addr: &str) -> Client {
        Client {
            agent: self.agent.clone(),
            base: base_url(addr),
            others: Vec::new(),
            rtts: Arc::default(),
        }
    }

    /// The other agents this client falls back on, nearest first (those
    /// not measured yet are measured now, with `GET /v1/health`).
    pub fn fallbacks(&self) -> Vec<String> {
        let mut with_rtt: Vec<(Duration, String)> = self
            .others
            .iter()
            .map(|b| {
                let known = self
                    .rtts
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(b)
                    .copied();
                let rtt = known.unwrap_or_else(|| {
                    let t = Instant::now();
                    // A short probe: an agent that does not answer at once
                    // goes last.
                    let ok = self
                        .agent
                        .get(format!("{b}/v1/health"))
                        .config()
                        .timeout_global(Some(PROBE_TIMEOUT))
                        .build()
                        .call()
                        .is_ok();
                    let rtt = if ok { t.elapsed() } else { Duration::MAX };
                    self.rtts
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(b.clone(), rtt);
                    rtt
                });
                (rtt, b.clone())
            })
            .collect();
        with_rtt.sort();
        with_rtt.into_iter().map(|(_, b)| b).collect()
    }

    /// Runs `f` on this agent, then, while `again` says another agent may
    /// do better, on the fallbacks, nearest first. The first error is kept
    /// if every agent fails.
    fn with_fallback<T>(
        &self,
        again: impl Fn(&Error) -> bool,
        f: impl Fn(&Client) -> Result<T>,
    ) -> Result<T> {
        let first = match f(self) {
            Ok(v) => return Ok(v),
            Err(e) if self.others.is_empty() || !again(&e) => return Err(e),
            Err(e) => e,
        };
        for b in self.fallbacks() {
            let other = self.at(&b);
            let t = Instant::now();
            match f(&other) {
                Ok(v) => {
                    self.rtts
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(b, t.elapsed());
                    return Ok(v);
                }
                Err(e) if again(&e) => {
                    if matches!(e, Error::Transport { .. }) {
                        // Down: measured again next time.
                        self.rtts
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&b);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(first)
    }

    /// The API's base URL, e.g. `http://127.0.0.1:8787`.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `POST /v1/transactions`: runs `statements` as one transaction on the
    /// agent's node, all or nothing.
    ///
    /// An [`Error::Http`] with a 4xx status means nothing was applied; see
    /// [`Error`] for the rest.
    pub fn execute(&self, statements: &[Statement]) -> Result<TransactionResult> {
        self.execute_as(statements)
    }

    /// Like [`Client::execute`], with the answer decoded as `T` (e.g. a
    /// `serde_json::Value`, to see the answer as it is).
    pub fn execute_as<T: DeserializeOwned>(&self, statements: &[Statement]) -> Result<T> {
        self.execute_at("/v1/transactions", statements)
    }

    /// Like [`Client::execute`], answered once other nodes hold the
    /// transaction as `ack` asks (`"2"`, `"region"`, `"regions"`), or after
    /// `timeout` with what was reached ([`TransactionResult::ack`]; the
    /// write stays committed either way).
    pub fn execute_acked(
        &self,
        statements: &[Statement],
        ack: &str,
        timeout: Duration,
    ) -> Result<TransactionResult> {
        let path = format!(
            "/v1/transactions?ack={}&ack_timeout_ms={}",
            urlencode(ack),
            timeout.as_millis()
        );
        self.execute_at(&path, statements)
    }

    fn execute_at<T: DeserializeOwned>(&self, path: &str, statements: &[Statement]) -> Result<T> {
        self.with_fallback(not_sent, |c| {
            let (url, r) = c.post(path, statements)?;
            // 202: committed, the acknowledgement level not reached in time.
            let r = if r.status() == StatusCode::ACCEPTED {
                r
            } else {
                success(&url, r)?
            };
            decode(&url, read_text(&url, r)?)
        })
    }

    /// `POST /v1/queries`: runs one read-only statement; its rows stream
    /// (see [`Rows`]).
    ///
    /// Fails before any row with [`Error::Http`] if the agent refuses the
    /// statement (400 bad SQL, 403 not read-only), reaches its time limit
    /// before the first row (408), or does not reach `options.min_token`
    /// within the wait (503).
    pub fn query(&self, statement: &Statement, options: &QueryOptions) -> Result<Rows> {
        Rows::start(self.query_events(statement, options)?)
    }

    /// Like [`Client::query`], as the answer's events, one per line.
    pub fn query_events(&self, statement: &Statement, options: &QueryOptions) -> Result<Events> {
        self.with_fallback(cannot_serve, |c| c.query_events_here(statement, options))
    }

    fn query_events_here(&self, statement: &Statement, options: &QueryOptions) -> Result<Events> {
        let mut path = String::from("/v1/queries");
        let mut sep = '?';
        if let Some(t) = &options.min_token {
            path.push_str(&format!("{sep}min_token={}", urlencode(t.as_str())));
            sep = '&';
        }
        if let Some(w) = options.wait {
            path.push_str(&format!("{sep}wait_ms={}", w.as_millis()));
            sep = '&';
        }
        if let Some(m) = options.max_lag {
            path.push_str(&format!("{sep}max_lag_ms={}", m.as_millis()));
            sep = '&';
        }
        if options.fallback_nearest {
            path.push_str(&format!("{sep}fallback=nearest"));
        }
        let (url, r) = self.post(&path, statement)?;
        let r = success(&url, r)?;
        Ok(Events::new(url, r.into_body().into_reader()))
    }

    /// `GET /v1/members`: the membership as the node sees it, itself
    /// included.
    pub fn members(&self) -> Result<Vec<Member>> {
        self.get_json("/v1/members")
    }

    /// `GET /v1/status`: versions, peers, replication lag, failures.
    pub fn status(&self) -> Result<Status> {
        self.get_json("/v1/status")
    }

    /// `GET /v1/health`: the node's verdict on itself.
    ///
    /// Both a healthy node (HTTP 200) and an unhealthy one (HTTP 503 with
    /// its issues) answer `Ok`: see [`Health::is_healthy`]. A 503 without a
    /// verdict (the node could not tell) is an [`Error::Http`].
    pub fn health(&self) -> Result<Health> {
        let (url, r) = self.get("/v1/health")?;
        if r.status() != StatusCode::SERVICE_UNAVAILABLE {
            let r = success(&url, r)?;
            return decode(&url, read_text(&url, r)?);
        }
        let status = r.status();
        let body = read_text(&url, r)?;
        match serde_json::from_str::<Health>(&body) {
            Ok(h) => Ok(h),
            Err(_) => Err(http_error(status, body)),
        }
    }

    /// `POST /v1/quarantine/retry`: retries the changes from peers that
    /// could not be applied on the node.
    pub fn retry_quarantined(&self) -> Result<RetryResult> {
        let url = self.url("/v1/quarantine/retry");
        let r = self
            .agent
            .post(&url)
            .send_empty()
            .map_err(|source| Error::Transport {
                url: url.clone(),
                source,
            })?;
        let r = success(&url, r)?;
        decode(&url, read_text(&url, r)?)
    }

    /// `GET /v1/retention`: what the node keeps and for how long.
    pub fn retention(&self) -> Result<crate::types::Retention> {
        self.get_json("/v1/retention")
    }

    /// `GET /metrics`: the node's metrics in Prometheus text format.
    pub fn metrics(&self) -> Result<String> {
        let (url, r) = self.get("/metrics")?;
        let r = success(&url, r)?;
        read_text(&url, r)
    }

    /// `GET /v1/backup`: a consistent copy of the agent's node file, written
    /// to `out` as it arrives. Returns the bytes written. (Build the client
    /// with [`ClientBuilder::no_timeout`] for a large file.)
    pub fn backup(&self, out: &mut impl std::io::Write) -> Result<u64> {
        let (url, r) = self.get("/v1/backup")?;
        let mut r = success(&url, r)?;
        let mut reader = r.body_mut().with_config().limit(u64::MAX).reader();
        std::io::copy(&mut reader, out).map_err(|e| Error::Read {
            url: url.clone(),
            source: ureq::Error::Io(e),
        })
    }

    /// `POST path` with `body` as JSON, and the answer as it came, whatever
    /// its status: for probing the API itself (what a malformed or
    /// forbidden request gets). Only a request without an answer is an error.
    pub fn post_raw(&self, path: &str, body: &(impl Serialize + ?Sized)) -> Result<RawAnswer> {
        let (url, r) = self.post(path, body)?;
        let status = r.status();
        let body = read_text(&url, r)?;
        Ok(RawAnswer { status, body })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn get(&self, path: &str) -> Result<(String, Response)> {
        let url = self.url(path);
        match self.agent.get(&url).call() {
            Ok(r) => Ok((url, r)),
            Err(source) => Err(Error::Transport { url, source }),
        }
    }

    fn post(&self, path: &str, body: &(impl Serialize + ?Sized)) -> Result<(String, Response)> {
        let body = serde_json::to_vec(body).map_err(Error::Encode)?;
        let url = self.url(path);
        let sent = self
            .agent
            .post(&url)
            .header("content-type", "application/json")
            .send(body);
        match sent {
            Ok(r) => Ok((url, r)),
            Err(source) => Err(Error::Transport { url, source }),
        }
    }

    fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let (url, r) = self.get(path)?;
        let r = success(&url, r)?;
        decode(&url, read_text(&url, r)?)
    }
}

/// The request never reached the agent (no connection): safe to send
/// elsewhere, even a transaction.
fn not_sent(e: &Error) -> bool {
    let Error::Transport { source, .. } = e else {
        return false;
    };
    match source {
        ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => true,
        ureq::Error::Timeout(ureq::Timeout::Connect | ureq::Timeout::Resolve) => true,
        ureq::Error::Io(io) => matches!(
            io.kind(),
            std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::AddrNotAvailable
        ),
        _ => false,
    }
}

/// The agent is unreachable or cannot serve a read at its level now: a
/// query may go to another agent.
fn cannot_serve(e: &Error) -> bool {
    match e {
        Error::Transport { .. } => true,
        Error::Http { status, .. } => *status == StatusCode::SERVICE_UNAVAILABLE,
        _ => false,
    }
}

/// The whole body as text.
fn read_text(url: &str, mut r: Response) -> Result<String> {
    r.body_mut()
        .with_config()
        .limit(MAX_ANSWER_BYTES)
        .read_to_string()
        .map_err(|source| Error::Read {
            url: url.to_string(),
            source,
        })
}

/// The answer if it is a success (200), else its [`Error::Http`].
fn success(url: &str, r: Response) -> Result<Response> {
    if r.status() == StatusCode::OK {
        return Ok(r);
    }
    let status = r.status();
    Err(http_error(status, read_text(url, r)?))
}

/// An error answer: its message is the body's `error` field, or the body.
fn http_error(status: StatusCode, body: String) -> Error {
    let message = match serde_json::from_str::<ErrorBody>(&body) {
        Ok(b) => b.error,
        Err(_) => body.clone(),
    };
    Error::Http {
        status,
        message,
        body,
    }
}

fn decode<T: DeserializeOwned>(url: &str, body: String) -> Result<T> {
    serde_json::from_str(&body).map_err(|source| Error::Decode {
        url: url.to_string(),
        source,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_query_strings() {
        assert_eq!(base_url("127.0.0.1:8787"), "http://127.0.0.1:8787");
        assert_eq!(base_url("http://h:1/"), "http://h:1");
        assert_eq!(base_url("https://h:1"), "https://h:1");
        assert_eq!(urlencode("ab:12,cd~_.-"), "ab%3A12%2Ccd~_.-");
        let c = Client::new("h:1");
        assert_eq!(c.at("g:2").base_url(), "http://g:2");
    }

    #[test]
    fn error_answers_carry_the_message_and_the_body() {
        let e = http_error(StatusCode::FORBIDDEN, r#"{"error":"not read-only"}"#.into());
        assert_eq!(e.to_string(), "403 Forbidden: not read-only");
        assert!(e.is_refused() && !e.is_outcome_unknown());
        assert_eq!(e.status(), Some(StatusCode::FORBIDDEN));
        let Error::Http { body, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(body, r#"{"error":"not read-only"}"#);
        // Not JSON: the body is the message.
        let e = http_error(StatusCode::BAD_GATEWAY, "upstream gone".into());
        assert_eq!(e.to_string(), "502 Bad Gateway: upstream gone");
        for (code, refused) in [
            (400, true),
            (408, true),
            (413, true),
            (503, false),
            (500, false),
        ] {
            let e = http_error(StatusCode::from_u16(code).unwrap(), String::new());
            assert_eq!(e.is_refused(), refused, "{code}");
            assert_eq!(e.is_outcome_unknown(), !refused, "{code}");
        }
    }
}
