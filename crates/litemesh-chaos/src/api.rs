//! A small blocking client of the agent's HTTP API.

use std::time::Duration;

use serde_json::{Value as Json, json};

/// How a request ended, before it is classified for the history.
#[derive(Debug)]
pub enum Answer {
    /// HTTP 200 with its body.
    Ok(String),
    /// Any other status, with the body.
    Status(u16, String),
    /// No answer: connection refused or reset, timeout.
    Transport(String),
}

/// A kept-alive HTTP client with one overall timeout per request.
#[derive(Clone)]
pub struct Api {
    agent: ureq::Agent,
}

impl Api {
    /// A client whose requests give up after `timeout`.
    pub fn new(timeout: Duration) -> Api {
        Api {
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(timeout))
                .build()
                .into(),
        }
    }

    fn finish(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Answer {
        match r {
            Err(e) => Answer::Transport(e.to_string()),
            Ok(mut r) => {
                let status = r.status().as_u16();
                match r.body_mut().with_config().limit(1 << 30).read_to_string() {
                    Err(e) => Answer::Transport(format!("reading the body: {e}")),
                    Ok(body) if status == 200 => Answer::Ok(body),
                    Ok(body) => Answer::Status(status, body),
                }
            }
        }
    }

    /// `POST path` with a JSON body.
    pub fn post(&self, api: &str, path: &str, body: &Json) -> Answer {
        Self::finish(
            self.agent
                .post(format!("http://{api}{path}"))
                .header("content-type", "application/json")
                .send(body.to_string()),
        )
    }

    /// `GET path`.
    pub fn get(&self, api: &str, path: &str) -> Answer {
        Self::finish(self.agent.get(format!("http://{api}{path}")).call())
    }

    /// Runs a query (`sql` with `params`), optionally after `token`; returns
    /// its rows.
    pub fn query(
        &self,
        api: &str,
        sql: &str,
        params: Json,
        token: Option<(&str, u64)>,
    ) -> Result<Vec<Vec<Json>>, Answer> {
        let path = match token {
            Some((t, wait_ms)) => format!("/v1/queries?min_token={t}&wait_ms={wait_ms}"),
            None => "/v1/queries".into(),
        };
        match self.post(api, &path, &json!([sql, params])) {
            Answer::Ok(body) => parse_rows(&body),
            other => Err(other),
        }
    }
}

/// The rows of a query's newline-delimited answer; an `error` event in the
/// stream makes the whole answer an error.
pub fn parse_rows(body: &str) -> Result<Vec<Vec<Json>>, Answer> {
    let mut rows = Vec::new();
    let mut ended = false;
    for line in body.lines().filter(|l| !l.trim().is_empty()) {
        let ev: Json = serde_json::from_str(line)
            .map_err(|e| Answer::Transport(format!("bad event {line:?}: {e}")))?;
        if let Some(r) = ev.get("row") {
            rows.push(r[1].as_array().cloned().unwrap_or_default());
        } else if let Some(e) = ev.get("error") {
            return Err(Answer::Status(200, e.to_string()));
        } else if ev.get("eoq").is_some() {
            ended = true;
        }
    }
    if !ended {
        return Err(Answer::Transport("answer ended before eoq".into()));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_need_the_end_of_query_event() {
        let ok = "{\"columns\":[\"a\"]}\n{\"row\":[1,[5]]}\n{\"eoq\":{\"time\":0.1}}\n";
        assert_eq!(parse_rows(ok).unwrap(), vec![vec![json!(5)]]);
        assert!(parse_rows("{\"columns\":[\"a\"]}\n{\"row\":[1,[5]]}\n").is_err());
        assert!(parse_rows("{\"columns\":[]}\n{\"error\":\"boom\"}\n").is_err());
    }
}
