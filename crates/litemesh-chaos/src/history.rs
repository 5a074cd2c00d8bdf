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

/// The regions a run's nodes are in, round-robin: node `ix` is in
/// `REGIONS[ix % 3]` (certified in its certificate).
pub const REGIONS: [&str; 3] = ["eu", "us", "ap"];

/// The region of node `ix`.
pub fn region_of(ix: NodeIx) -> &'static str {
    REGIONS[ix % REGIONS.len()]
}

/// The table of the chaos schema pinned to one region (`-- litemesh:
/// regions = eu` in its `CREATE TABLE`): its rows must never reach a node
/// of another region.
pub const PINNED_TABLE: &str = "pinned_eu";

/// The one region [`PINNED_TABLE`] may be held in (two nodes of five,
/// `n1` and `n4`; one node with three).
pub const PINNED_REGION: &str = "eu";

/// The table of the chaos schema whose column [`COUNTER_COLUMN`] is a
/// counter (`-- litemesh: counter = n` in its `CREATE TABLE`): its value is
/// its default (0) plus the sum of every node's increments, concurrent ones
/// included.
pub const COUNTER_TABLE: &str = "counters";

/// The counter column of [`COUNTER_TABLE`].
pub const COUNTER_COLUMN: &str = "n";

/// A pinned table and the regions it may be held in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pinned {
    /// Table name.
    pub table: String,
    /// The regions its rows may be held in.
    pub regions: Vec<String>,
}

impl Pinned {
    /// The chaos schema's pinned table.
    pub fn chaos() -> Pinned {
        Pinned {
            table: PINNED_TABLE.into(),
            regions: vec![PINNED_REGION.into()],
        }
    }

    /// Whether a node of `region` may hold its rows.
    pub fn allows(&self, region: &str) -> bool {
        self.regions.iter().any(|r| r == region)
    }
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
    /// `INSERT INTO pinned_eu(id, txn, client)`: a row of the pinned table
    /// ([`PINNED_TABLE`]), never updated or deleted, written through a node
    /// of its region. In a transaction with event rows it shares their
    /// `txn`: such a transaction spans a global and a pinned table, and
    /// every node of the region must see it whole (the others see its
    /// event rows only).
    InsertPinned {
        /// Row id, unique over the run.
        id: String,
        /// The transaction's id (that of its event rows, if any).
        txn: String,
    },
    /// `INSERT INTO large(id, len, v)`: a row that is never updated or
    /// deleted, whose value `v` is [`large_value`]`(seed, len, text)` (a blob,
    /// sent as a `{"blob": base64}` parameter, or a text). Only the seed is
    /// recorded, never the megabytes.
    InsertLarge {
        /// Row id, unique over the run.
        id: String,
        /// Bytes of the value.
        len: u32,
        /// Seed of the value's content.
        seed: u64,
        /// A text value (else a blob).
        text: bool,
    },
    /// An increment of counter `id` ([`COUNTER_TABLE`]) by `delta`, which
    /// is never 0: an upsert (`INSERT INTO counters(id, n) VALUES (id,
    /// delta) ON CONFLICT(id) DO UPDATE SET n = n + excluded.n`, which adds
    /// `delta` whether it inserts the row or updates it), or an update
    /// (`UPDATE counters SET n = n + delta`, or `n - |delta|` for a negative
    /// one), which adds `delta` to a row the node holds and changes nothing
    /// on a node without the row. Rows of counters are never deleted.
    AddCounter {
        /// Counter id, from a small shared set.
        id: String,
        /// What it adds (negative: subtracts).
        delta: i64,
        /// An upsert (else an update).
        upsert: bool,
    },
}

impl Stmt {
    /// The counter increment of this statement: `(id, delta, upsert)`.
    pub fn counter(&self) -> Option<(&str, i64, bool)> {
        match self {
            Stmt::AddCounter { id, delta, upsert } => Some((id.as_str(), *delta, *upsert)),
            _ => None,
        }
    }
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
    /// A request that must be refused: a statement the API's sandbox forbids
    /// (expected answer 403), or a row write larger than the agent's limit
    /// (413). Nothing of it may ever be applied.
    Hostile {
        /// Short name of what it tries, e.g. `tx-drop-trigger`.
        attack: String,
        /// `/v1/transactions` or `/v1/queries`.
        endpoint: String,
        /// The statements sent (parameters not shown).
        sql: Vec<String>,
        /// The status it must get: 403 (sandbox) or 413 (too large).
        expect: u16,
        /// The status it got; `None` without an answer.
        status: Option<u16>,
        /// Ids of rows (of `events` or `large`) it would have written: none
        /// may ever appear.
        #[serde(default)]
        rows: Vec<String>,
        /// The file an `ATTACH` in it would have created: it must not exist
        /// at the end.
        #[serde(default)]
        file: Option<String>,
        /// The answer's body, or the error without one (cut short).
        #[serde(default)]
        answer: Option<String>,
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
    /// `placement_rows_refused`: rows of tables its region may not hold
    /// that peers sent anyway, since the agent's start (must stay 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub placement_rows_refused: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
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
    /// Every row of `large`: `id →` what its value is.
    #[serde(default)]
    pub large: BTreeMap<String, LargeFinal>,
    /// Every counter of [`COUNTER_TABLE`]: `id → n` (`None`: a value that
    /// is not an integer).
    #[serde(default)]
    pub counters: BTreeMap<String, Option<i64>>,
    /// Every row of the pinned table, `id → txn`, read through the API on
    /// nodes of its regions (elsewhere the API refuses it: what the node's
    /// file holds is in `file`).
    #[serde(default)]
    pub pinned: BTreeMap<String, String>,
    /// What the node's SQLite file holds of the pinned table, read after
    /// its agent stopped (`None`: not read, or a history without placement).
    #[serde(default)]
    pub file: Option<FileScan>,
    /// The node's health at the end, after the final convergence (`None` in
    /// histories of older runs).
    #[serde(default)]
    pub end: Option<NodeEnd>,
}

/// What a node's SQLite file holds of the pinned table, read directly
/// (read-only) once its agent has stopped: the table itself, its clock
/// table (`__lm_clk_<table>`), and changes waiting in `__lm_parked`,
/// `__lm_quarantine` or `__lm_partial` whose encoded rows name the table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileScan {
    /// The file read.
    pub path: String,
    /// Why the file could not be read, if it could not (nothing below is
    /// then known).
    pub error: Option<String>,
    /// Rows of the table.
    pub rows: u64,
    /// Up to 10 of their ids.
    pub ids: Vec<String>,
    /// Rows of its clock table.
    pub clock_rows: u64,
    /// Rows of `__lm_parked` whose change names the table.
    pub parked: u64,
    /// Rows of `__lm_quarantine` whose rows name the table.
    pub quarantined: u64,
    /// Rows of `__lm_partial` whose rows name the table.
    pub partial: u64,
}

impl FileScan {
    /// Everything found of the table, all places together.
    pub fn total(&self) -> u64 {
        self.rows + self.clock_rows + self.parked + self.quarantined + self.partial
    }

    /// What was found where, e.g. `3 rows of pinned_eu (ids …), 3 clock rows`.
    pub fn describe(&self, table: &str) -> String {
        let mut parts = Vec::new();
        if self.rows > 0 {
            parts.push(format!(
                "{} rows of {table} (ids {}{})",
                self.rows,
                self.ids.join(", "),
                if self.rows > self.ids.len() as u64 {
                    " …"
                } else {
                    ""
                }
            ));
        }
        for (n, what) in [
            (self.clock_rows, format!("rows of __lm_clk_{table}")),
            (self.parked, format!("parked changes of {table}")),
            (
                self.quarantined,
                format!("quarantined versions with rows of {table}"),
            ),
            (
                self.partial,
                format!("partial versions with rows of {table}"),
            ),
        ] {
            if n > 0 {
                parts.push(format!("{n} {what}"));
            }
        }
        if parts.is_empty() {
            "nothing".into()
        } else {
            parts.join(", ")
        }
    }
}

/// A large value as found in a final state: its type, length and digest
/// (the megabytes themselves are not kept).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LargeFinal {
    /// `blob` or `text` (SQLite's `typeof`).
    pub kind: String,
    /// Length in bytes.
    pub bytes: u64,
    /// [`digest`] of the bytes.
    pub digest: String,
}

/// A change from a peer that a node could not apply (`quarantined` in
/// `/v1/status`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quarantined {
    /// The writer's actor id.
    pub actor: String,
    /// Its version.
    pub version: u64,
    /// Row changes in it.
    pub rows: u64,
    /// Why it cannot be applied.
    pub error: String,
}

/// How a node ended: `/v1/status` and `/v1/health` read after the final
/// convergence (polled for a short grace until healthy).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeEnd {
    /// When the last reading came back.
    pub at: f64,
    /// Seconds polled before this reading (the grace used).
    pub waited: f64,
    /// Why `/v1/status` could not be read, if it could not.
    pub status_error: Option<String>,
    /// Its actor id at the end.
    pub actor: String,
    /// Changes from peers it could not apply.
    pub quarantined: Vec<Quarantined>,
    /// Consecutive failures to apply changes from peers.
    pub apply_failures: u64,
    /// Consecutive failures to serve a peer's sync.
    pub serve_failures: u64,
    /// Why it cannot write its file, if it cannot.
    pub write_error: Option<String>,
    /// Largest lag over every writer (seconds).
    pub max_lag_secs: f64,
    /// `placement_rows_refused`: rows of tables its region may not hold
    /// that peers sent anyway (since its last start).
    #[serde(default)]
    pub placement_rows_refused: u64,
    /// `placement`: the pinned tables it knows, and their regions.
    #[serde(default)]
    pub placement: BTreeMap<String, Vec<String>>,
    /// `tombstones_collected` (since its last start; a retention policy).
    #[serde(default)]
    pub tombstones_collected: u64,
    /// `snapshot_catch_up` (since its last start): keys checked, rows
    /// dropped, rows rebased, complete.
    #[serde(default)]
    pub snapshot_catch_up: Option<(u64, u64, u64, bool)>,
    /// `/v1/health`'s status code; `None` without an answer.
    pub health: Option<u16>,
    /// Its issues when unhealthy: `(kind, message)`.
    pub issues: Vec<(String, String)>,
    /// `/v1/health`'s body or the error, when not 200 (cut short).
    pub health_detail: Option<String>,
}

impl NodeEnd {
    /// Whether it ended healthy and with nothing stuck.
    pub fn clean(&self) -> bool {
        self.status_error.is_none()
            && self.quarantined.is_empty()
            && self.apply_failures == 0
            && self.serve_failures == 0
            && self.write_error.is_none()
            && self.health == Some(200)
    }
}

/// A node's process history.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Node name (`n1`, …).
    pub name: String,
    /// Its certified region (empty in histories of older runs:
    /// [`region_of`] then).
    #[serde(default)]
    pub region: String,
    /// Actor id (hex), from `/v1/status`: the last one seen.
    pub actor: String,
    /// Every actor id it had, in order: a node restarted after SIGKILL
    /// writes as a new actor.
    #[serde(default)]
    pub actors: Vec<String>,
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
    /// Files named by hostile `ATTACH` requests that existed at the end
    /// (there must be none).
    #[serde(default)]
    pub files_created: Vec<String>,
    /// The schema's pinned table (`None` in histories of older runs: no
    /// placement checks then).
    #[serde(default)]
    pub pinned: Option<Pinned>,
    /// The join measurement: when the late node was started, when its API
    /// answered, and when it held everything the mesh held at its start
    /// (`None` if it never did).
    pub join: Option<JoinRecord>,
}

impl History {
    /// Node `ix`'s region: as recorded, else as [`region_of`] places it.
    pub fn region(&self, ix: NodeIx) -> &str {
        match self.node_records.get(ix) {
            Some(r) if !r.region.is_empty() => &r.region,
            _ => region_of(ix),
        }
    }
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

/// The content of a large value: `len` bytes from `seed` (splitmix64); for a
/// text, letters and digits.
pub fn large_value(seed: u64, len: u32, text: bool) -> Vec<u8> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut state = seed;
    let mut out = Vec::with_capacity(len as usize + 8);
    while out.len() < len as usize {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(len as usize);
    if text {
        for b in &mut out {
            *b = ALPHABET[usize::from(*b & 63)];
        }
    }
    out
}

/// A digest of a value's bytes: FNV-1a (64 bits), in hex. It tells values
/// apart; it is not meant to resist anyone.
pub fn digest(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// What a final state must hold for a large value written as `(seed, len,
/// text)`.
pub fn large_final(seed: u64, len: u32, text: bool) -> LargeFinal {
    LargeFinal {
        kind: if text { "text" } else { "blob" }.into(),
        bytes: u64::from(len),
        digest: digest(&large_value(seed, len, text)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_values_are_deterministic_and_distinct() {
        let a = large_value(1, 100, false);
        assert_eq!(a, large_value(1, 100, false));
        assert_ne!(a, large_value(2, 100, false));
        assert_eq!(large_value(1, 37, false), a[..37]);
        let t = large_value(1, 100, true);
        assert!(
            t.iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
        );
        assert_ne!(digest(&a), digest(&large_value(2, 100, false)));
        assert_eq!(large_final(1, 100, true).digest, digest(&t));
    }
}
