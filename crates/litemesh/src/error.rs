//! Errors of the node.

use std::time::Duration;

/// Everything a node operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The storage engine refused or failed (bad SQL, constraint, disk…).
    #[error(transparent)]
    Storage(#[from] litemesh_storage::StorageError),
    /// The transport could not start or failed.
    #[error("transport: {0}")]
    Transport(#[from] litemesh_transport::Error),
    /// A malformed version token.
    #[error("invalid version token: {0}")]
    InvalidToken(String),
    /// The node did not apply what a token names within the wait.
    #[error("this node has not yet applied {missing} named by the token after {waited:?}")]
    Lagging {
        /// What is missing, e.g. `actor 1a2b…: version 42`.
        missing: String,
        /// How long the query waited.
        waited: Duration,
    },
    /// This node's copy is staler than a query's `max_lag` allows.
    #[error(
        "this node's copy is {lag:?} behind ({writer}), more than the {max:?} the query \
         allows, after waiting {waited:?}"
    )]
    Stale {
        /// The largest lag of a writer.
        lag: Duration,
        /// The writer, by name or actor id.
        writer: String,
        /// What the query allowed.
        max: Duration,
        /// How long the query waited.
        waited: Duration,
    },
    /// No node could serve a query at its read level (this one and the
    /// peers tried with `fallback=nearest`).
    #[error("{0}")]
    NoReplica(String),
    /// A query forwarded to a peer failed there because of the query itself
    /// (`status`: 400 bad SQL, 403 refused, 408 time limit, 413 too large).
    #[error("{peer}: {message}")]
    PeerRefused {
        /// The peer.
        peer: String,
        /// The HTTP status the failure has.
        status: u16,
        /// What it said.
        message: String,
    },
    /// A read or write level that cannot apply here (e.g. `ack=region` on a
    /// node with no region).
    #[error("{0}")]
    BadLevel(String),
    /// Bad settings.
    #[error("invalid settings: {0}")]
    Settings(String),
    /// Another node holds the database file.
    #[error(
        "{0} is already in use by another litemesh node (it holds the file's lock); \
         stop it first or use another database file"
    )]
    InUse(String),
    /// A peer broke the sync protocol.
    #[error("sync protocol: {0}")]
    Protocol(String),
    /// A query returned more rows than allowed.
    #[error(
        "the result has more than {0} rows, the limit of a query; narrow it (WHERE, LIMIT) \
         or page through it"
    )]
    TooManyRows(u64),
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// A peer collected tombstones of versions this node lacks: it refuses
    /// writes until it has caught up by snapshot (docs/retention.md).
    #[error(
        "this node cannot catch up incrementally and refuses writes until it has caught up by \
         snapshot (retry later): {0}"
    )]
    NeedsSnapshot(String),
    /// A new node of a mesh with a retention policy, before its first
    /// reconciliation: writes wait until it has learned the mesh's floors.
    #[error(
        "this node has not completed its first reconciliation with the mesh yet (a retention \
         policy is on: writes wait until it has); retry in a moment"
    )]
    Joining,
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Storage(e.into())
    }
}
