//! What can go wrong talking to an agent.

pub use ureq::http::StatusCode;

/// An error of a request to the agent.
///
/// The variant tells what the caller can know about the request's effect:
///
/// - [`Error::Http`] with a **4xx** status is a *refusal*
///   ([`Error::is_refused`]): the agent answered that the request failed and,
///   for a transaction, that nothing of it was applied. The agent uses
///   **400** (bad JSON, bad SQL, a constraint, a bad token), **403** (the
///   sandbox refused a statement: DDL, pragmas, `ATTACH`, litemesh's own
///   tables, a write sent as a query), **404** (no such endpoint), **408**
///   (a statement's time limit, or a body sent too slowly), **413** (a body
///   over 8 MiB, or a row write over 4 MiB).
/// - Everything else leaves the *outcome unknown*
///   ([`Error::is_outcome_unknown`]): **503** (the node is shutting down,
///   cannot write its file, or did not reach a query's `min_token` in time),
///   another 5xx, no answer at all ([`Error::Transport`]: connection refused
///   or reset, timeout), an answer cut off while it was read
///   ([`Error::Read`]), or one that could not be decoded. A transaction that
///   ends so may or may not have been applied.
/// - A query whose rows were streaming can still fail:
///   [`Error::Query`] (the agent ended the stream with an error: time or row
///   limit, a runtime error) or [`Error::Truncated`] (the stream stopped
///   without its end marker).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No answer: the request could not be sent or its answer's head did not
    /// come back (connection refused or reset, timeout, bad address).
    #[error("cannot reach the agent at {url}: {source}")]
    Transport {
        /// The request's URL.
        url: String,
        /// What the HTTP library reported.
        #[source]
        source: ureq::Error,
    },
    /// The agent answered with a status other than 200.
    #[error("{status}: {message}")]
    Http {
        /// The status.
        status: StatusCode,
        /// The answer's `error` field, or its whole body if it has none.
        message: String,
        /// The answer's body, as it came.
        body: String,
    },
    /// The answer's body broke off while it was read.
    #[error("reading the answer from {url}: {source}")]
    Read {
        /// The request's URL.
        url: String,
        /// What the HTTP library reported.
        #[source]
        source: ureq::Error,
    },
    /// The answer (or one line of a query's answer) is not what the API
    /// defines.
    #[error("bad answer from {url}: {source}")]
    Decode {
        /// The request's URL.
        url: String,
        /// Why it does not decode.
        #[source]
        source: serde_json::Error,
        /// The text that did not decode.
        body: String,
    },
    /// The request body could not be encoded as JSON.
    #[error("cannot encode the request as JSON: {0}")]
    Encode(#[source] serde_json::Error),
    /// The agent ended a query's stream with an error event after `rows`
    /// rows (time limit, row limit, a runtime error of the statement).
    #[error("after {rows} row(s): {message}")]
    Query {
        /// Rows received before the error.
        rows: u64,
        /// The agent's message.
        message: String,
    },
    /// A query's stream ended without its end marker: the connection was
    /// cut, and rows may be missing.
    #[error("the answer ended after {rows} row(s) without its end marker (connection cut)")]
    Truncated {
        /// Rows received.
        rows: u64,
    },
}

impl Error {
    /// The HTTP status of an [`Error::Http`].
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Error::Http { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether the agent refused the request (a 4xx answer): a refused
    /// transaction applied nothing.
    pub fn is_refused(&self) -> bool {
        self.status().is_some_and(|s| s.is_client_error())
    }

    /// Whether the request's effect is unknown: anything but a refusal or a
    /// request that could not be encoded (no answer, a 5xx such as 503, a
    /// broken or undecodable answer). A transaction that failed so may have
    /// been applied.
    pub fn is_outcome_unknown(&self) -> bool {
        !self.is_refused() && !matches!(self, Error::Encode(_))
    }
}

/// The result of a request to the agent.
pub type Result<T, E = Error> = std::result::Result<T, E>;
