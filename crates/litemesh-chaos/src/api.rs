//! The runner's side of the agents' HTTP API: clients (`litemesh-client`),
//! and how their answers are recorded in the history.
//!
//! The one rule the checker relies on: an answer 4xx is a refusal (for a
//! write, nothing applied: [`Outcome::Failed`]); anything else that is not a
//! 200 — no answer, a 5xx, an answer cut off or unreadable, a query whose
//! stream ended with an error or without its end marker — leaves the
//! outcome unknown ([`Outcome::Unknown`]).

use std::time::Duration;

use litemesh_client::{Client, Error, QueryOptions, Statement, Value};

use crate::history::Outcome;

/// One client per API address, sharing one pool of kept-alive connections;
/// every request gives up after `timeout`.
pub fn clients(addrs: &[String], timeout: Duration) -> Vec<Client> {
    let base = Client::builder().timeout(timeout);
    match addrs.first() {
        Some(first) => {
            let c = base.build(first);
            addrs.iter().map(|a| c.at(a)).collect()
        }
        None => Vec::new(),
    }
}

/// A client of the API at `addr` whose requests give up after `timeout`.
pub fn client(addr: &str, timeout: Duration) -> Client {
    Client::builder().timeout(timeout).build(addr)
}

/// Runs a query, optionally after `token` (waiting up to `wait_ms` for it);
/// returns all its rows.
pub fn rows(
    api: &Client,
    statement: &Statement,
    token: Option<(&str, u64)>,
) -> Result<Vec<Vec<Value>>, Error> {
    let options = match token {
        Some((t, wait_ms)) => QueryOptions::after(t).wait(Duration::from_millis(wait_ms)),
        None => QueryOptions::default(),
    };
    api.query(statement, &options)?.collect()
}

/// The outcome of an answer with `status` and `body`.
pub fn outcome_of(status: u16, body: &str) -> Outcome {
    match status {
        200 => Outcome::Ok,
        s if (400..500).contains(&s) => Outcome::Failed(format!("{s}: {}", truncate(body))),
        s => Outcome::Unknown(format!("{s}: {}", truncate(body))),
    }
}

/// The outcome of a failed request: refused (4xx) or unknown.
pub fn classify(e: &Error) -> Outcome {
    match e {
        Error::Http { status, body, .. } => outcome_of(status.as_u16(), body),
        // An error event after a 200: recorded as the event's JSON.
        Error::Query { message, .. } => {
            let event = serde_json::to_string(message).unwrap_or_default();
            Outcome::Unknown(format!("200: {}", truncate(&event)))
        }
        other => Outcome::Unknown(truncate(&describe(other))),
    }
}

/// A failed request in the history's words.
pub fn describe(e: &Error) -> String {
    match e {
        Error::Transport { source, .. } => source.to_string(),
        Error::Read { source, .. } => format!("reading the body: {source}"),
        Error::Http { status, body, .. } => format!("{}: {body}", status.as_u16()),
        Error::Decode { source, body, .. } => format!("bad event {body:?}: {source}"),
        Error::Truncated { .. } => "answer ended before eoq".into(),
        other => other.to_string(),
    }
}

/// At most 200 characters of `s`.
pub fn truncate(s: &str) -> String {
    s.chars().take(200).collect()
}

/// Rows as the history shows them in a message.
pub fn show_rows(rows: &[Vec<Value>]) -> String {
    let rows: Vec<Vec<serde_json::Value>> = rows
        .iter()
        .map(|r| r.iter().map(serde_json::Value::from).collect())
        .collect();
    format!("{rows:?}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use litemesh_client::StatusCode;

    fn http(code: u16, body: &str) -> Error {
        Error::Http {
            status: StatusCode::from_u16(code).unwrap(),
            message: String::new(),
            body: body.into(),
        }
    }

    #[test]
    fn refusals_fail_and_the_rest_is_unknown() {
        assert_eq!(
            classify(&http(403, "{\"error\":\"no\"}")),
            Outcome::Failed("403: {\"error\":\"no\"}".into())
        );
        assert_eq!(classify(&http(413, "x")), Outcome::Failed("413: x".into()));
        assert_eq!(classify(&http(408, "x")), Outcome::Failed("408: x".into()));
        assert_eq!(classify(&http(503, "x")), Outcome::Unknown("503: x".into()));
        assert_eq!(classify(&http(500, "x")), Outcome::Unknown("500: x".into()));
        assert_eq!(
            classify(&Error::Query {
                rows: 3,
                message: "boom".into()
            }),
            Outcome::Unknown("200: \"boom\"".into())
        );
        assert_eq!(
            classify(&Error::Truncated { rows: 1 }),
            Outcome::Unknown("answer ended before eoq".into())
        );
        assert_eq!(outcome_of(200, ""), Outcome::Ok);
        assert!(matches!(outcome_of(201, ""), Outcome::Unknown(_)));
    }
}
