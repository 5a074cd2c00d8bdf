//! What happened during a run: every client request with its answer, the
//! faults with their times, the agents' replication progress as sampled, and
//! the final contents of every node. The checker reads only this.
//!
//! Times are seconds since the start of the run (`f64`), read from one
//! monotonic clock in the runner process.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Node index (0-based); node `i` is called `n{i+1}`.
pub type NodeIx = usize;

/// Node `ix`'s name: `n{ix+1}`.
pub fn node_name(ix: NodeIx) -> String {
    format!("n{}", ix + 1)
}

/// Whether a membership view (`(name, state)` pairs) lists every node of
/// `others` as alive.
pub fn lists_alive(members: &[(String, String)], others: impl IntoIterator<Item = NodeIx>) -> bool {
    others.into_iter().all(|o| {
        let want = node_name(o);
        members
            .iter()
            .any(|(n, st)| *n == want && st.eq_ignore_ascii_case("alive"))
    })
}

/// One client request and its answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Op {
    /// Unique over the run, in invocation order per client.
    pub id: u64,
    /// The client that sent it.
    pub client: u32,
    /// The node whose API it went to.
    pub node: NodeIx,
    /// When the request was sent.
    pub invoke: f64,
    /// When the answer (or the error) came back.
    pub complete: f64,
    /// What was asked, and what the answer said.
    pub kind: OpKind,
    /// How it ended.
    pub outcome: Outcome,
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    /// Answered with success.
    Ok,
    /// Refused with a definite error (HTTP 4xx): nothing was applied.
    Failed(String),
    /// No definite answer (timeout, connection error, 5xx): a write may or may
    /// not have been applied; a read tells nothing.
    Unknown(String),
}

/// A write statement of a transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Stmt {
    /// `INSERT INTO events(id, txn, size, client, seq) …`: a row that is never
    /// updated or deleted. Every row of transaction `txn` carries `size`, the
    /// number of event rows that transaction inserts.
    InsertEvent {
        /// Row id, unique over the run.
        id: String,
        /// The transaction's id, shared by its rows.
        txn: String,
        /// Number of event rows in the transaction.
        size: u32,
        /// Bytes of padding in the row (large transactions, whose versions
        /// travel in several chunks, must still be seen whole).
        #[serde(default)]
        pad: u32,
    },
    /// Upsert of `registers(k, v)`: `v` is unique over the run, so a value
    /// read names the write that wrote it.
    SetRegister {
        /// Key, from a small shared set.
        key: String,
        /// Value, unique over the run.
        value: String,
    },
    /// `DELETE FROM registers WHERE k = key`.
    DeleteRegister {
        /// Key.
        key: String,
    },
    /// A statement that fails (bad SQL), making the whole transaction fail.
    Invalid,
}

/// A request and, when it succeeded, what the answer said.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OpKind {
    /// `POST /v1/transactions`: the statements, in order, as one transaction.
    Write {
        /// The statements.
        stmts: Vec<Stmt>,
        /// On success: the version token of the answer.
        token: Option<String>,
        /// On success: the writing node's actor id (hex) and the version the
        /// transaction got (parsed from the token).
        version: Option<(String, u64)>,
    },
    /// `SELECT count(*) FROM events` on the client's own node, no token.
    /// Events are never deleted, so on one node a later read never counts
    /// fewer.
    CountEvents {
        /// On success: the count.
        count: Option<u64>,
    },
    /// Looks for half-visible transactions among the event rows of one
    /// writing client from `from_seq` on (no token).
    TxnCheck {
        /// The writer whose rows are checked.
        writer: u32,
        /// First write sequence number checked.
        from_seq: u64,
        /// On success: every transaction seen with fewer rows than its size,
        /// as `(txn, rows seen, size)`. Any entry is an anomaly.
        partial: Option<Vec<(String, u64, u64)>>,
    },
    /// `SELECT v FROM registers WHERE k = key`, with or without a token.
    ReadRegister {
        /// Key.
        key: String,
        /// The token sent as `min_token`, if any.
        token: Option<String>,
        /// The write op (by id) whose token was sent, if any.
        after: Option<u64>,
        /// On success: `Some(None)` for no row, `Some(Some(v))` for a value.
        value: Option<Option<String>>,
    },
    /// `SELECT count(*) FROM events WHERE txn = ?` with the token of the write
    /// op `after` that inserted transaction `txn`: must count all its rows.
    ReadTxn {
        /// Transaction id.
        txn: String,
        /// The transaction's size.
        size: u32,
        /// The token sent as `min_token`.
        token: String,
        /// The write op (by id) that inserted it.
        after: u64,
        /// On success: rows counted.
        count: Option<u64>,
    },
}

/// A fault and when it was active.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FaultRecord {
    /// Human-readable description, e.g. `partition {n1,n2} | {n3,n4,n5}`.
    pub label: String,
    /// Short kind name, e.g. `partition-halves`.
    pub kind: String,
    /// When it started.
    pub start: f64,
    /// When it was healed (for process faults: when the restarted agent
    /// printed its ready line, or was sent SIGCONT).
    pub heal: f64,
    /// Nodes that were stopped, killed or offline during it.
    pub down: Vec<NodeIx>,
}

/// One sample of a node's replication progress (`GET /v1/status`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    /// When the answer came back.
    pub at: f64,
    /// Which node.
    pub node: NodeIx,
    /// `complete_through`: per actor (hex), every version up to this held.
    pub complete_through: BTreeMap<String, u64>,
}

/// One node's membership view at one moment (`GET /v1/members`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MembersView {
    /// When the answer came back.
    pub at: f64,
    /// Whose view.
    pub node: NodeIx,
    /// `(name, state)` of every member listed.
    pub members: Vec<(String, String)>,
}

/// A node's final contents, read after the final healing.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FinalState {
    /// Node index.
    pub node: NodeIx,
    /// Every event row: `id → (txn, size)`.
    pub events: BTreeMap<String, (String, u64)>,
    /// Every register: `k → v`.
    pub registers: BTreeMap<String, String>,
}

/// A node's process history.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Node name (`n1`, …).
    pub name: String,
    /// Actor id (hex), from `/v1/status`.
    pub actor: String,
    /// Times it was (re)started and its API answered.
    pub started: Vec<f64>,
    /// Unexpected exits: `(time, exit status, last lines of its log)`.
    pub crashes: Vec<(f64, String, String)>,
}

/// Everything the checker needs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct History {
    /// The run's seed.
    pub seed: u64,
    /// Number of nodes.
    pub nodes: usize,
    /// The nodes.
    pub node_records: Vec<NodeRecord>,
    /// Client requests, in no particular order.
    pub ops: Vec<Op>,
    /// Faults, in order.
    pub faults: Vec<FaultRecord>,
    /// Replication progress samples, in time order.
    pub samples: Vec<Sample>,
    /// Membership views, in time order.
    pub members: Vec<MembersView>,
    /// When the clients stopped and every fault was healed.
    pub quiet_from: f64,
    /// Final contents of every node (read after convergence or its deadline).
    pub finals: Vec<FinalState>,
    /// The join measurement: when the late node was started, when its API
    /// answered, and when it held everything the mesh held at its start
    /// (`None` if it never did).
    pub join: Option<JoinRecord>,
}

/// A node joining an existing mesh.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRecord {
    /// The joining node.
    pub node: NodeIx,
    /// Rows in the mesh when it joined.
    pub rows: u64,
    /// Process start.
    pub spawned: f64,
    /// Its ready line.
    pub ready: f64,
    /// When it first held every version the mesh held at `spawned`.
    pub caught_up: Option<f64>,
}
