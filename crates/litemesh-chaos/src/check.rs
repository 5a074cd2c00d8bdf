//! The checker: reads a recorded [`History`] and reports the anomalies it
//! shows, plus metrics (convergence after each fault, replication lag, join
//! time).
//!
//! # Soundness
//!
//! Every rule is meant to be *sound*: a correct litemesh never triggers it,
//! whatever the timing, the faults and the outcome of uncertain requests. Where
//! the history does not determine the answer (a write that timed out may or
//! may not have been applied; a read that failed tells nothing), the checker
//! assumes whatever makes the history legal.
//!
//! # The precedence relation on register writes
//!
//! A *register write* is one `SetRegister`/`DeleteRegister` statement of a
//! `Write` op; it carries the op's node, invoke and complete times and
//! outcome. For two writes on the same key, `W' ≺ W` ("W' definitely precedes
//! W") iff both were sent to the same node, `W'` was acknowledged (`Ok`) and
//! `W'` completed before `W` was invoked.
//!
//! Why this is sound: litemesh merges per cell (causal length per row, then
//! cell version, then actor id). When `W` runs on a node, `W'` is already
//! committed there (it was acknowledged, by that node, before `W` was even
//! sent), so `W` either bumps the row's causal length above `W'`'s (a delete, or
//! a re-insert after a delete) or writes the cell with a higher cell version in
//! the same life. Either way `W`'s clock beats `W'`'s on every node: wherever
//! `W` has been applied, the state `W'` produced can never be current again.
//! Nothing is claimed about writes sent to different nodes: they may be
//! concurrent, and either may win.
//!
//! An observed register value `Some(v)` names exactly one write, because
//! values are unique over the run. An observed `None` (no row) is explained by
//! any delete of that key that may have been applied (any non-failed one), or
//! by the initial state, which precedes every write. An observation is *stale
//! with respect to an applied write* `W` when every write that could explain
//! it `≺ W` (the initial state is stale with respect to any write; a delete
//! explains `None` itself, so `None` is never stale with respect to a delete
//! it could be).
//!
//! When several writes are known to be applied on a node (the "knowledge"
//! below), an observation is stale if each of its explanations `≺` *some*
//! known-applied write: each explanation is then overwritten on that node.
//! Known-applied writes come from: a value read on the node (the write that
//! wrote it), an acknowledged write sent to the node (local commit before the
//! answer), the write whose token a successful read waited for (its *sets*
//! only, see below), and — for the final states — every acknowledged write
//! (each must reach every node).
//!
//! # Deletes that change nothing
//!
//! A `DELETE` of a row the node does not hold changes nothing: litemesh
//! captures changes with per-row triggers, so no tombstone, no version, and
//! (if nothing else changed) an empty token. `W' ≺ D` for such a delete `D`
//! still means something *on `D`'s node* and *in the final states*: the row
//! was absent there when `D` ran, so the state `W'` produced had already been
//! overwritten there by a change that, like every applied change, reaches
//! every node. But another node holding `D`'s token does not necessarily hold
//! that change, so knowledge from tokens only uses the token op's
//! `SetRegister` statements (a set always changes the row: values are
//! unique). An acknowledged delete still counts as applied on its own node
//! (read-your-writes) and for the final states.
//!
//! # Counters
//!
//! A counter's value is its default (0) plus the sum of every increment
//! applied anywhere, whatever the order and concurrency, so its final value
//! is known exactly but for the increments of unknown outcome: it must be
//! the sum of the increments known applied plus the sum of *some subset* of
//! the unknown ones (each may or may not have been applied). Known applied:
//! an acknowledged upsert (it always adds its delta), an acknowledged update
//! with a non-empty token (an update of a row the node lacks changes
//! nothing and names no version), and an increment of unknown outcome whose
//! transaction's event rows are in every final state (transactions apply
//! whole; event rows are never deleted). Known not applied: a refused one
//! (4xx), and one of unknown outcome whose event rows are in no final state.
//! The deltas are small, so the set of subset sums is computed exactly
//! ([`SubsetSums`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use serde::Serialize;

use crate::history::{
    FinalState, History, LargeFinal, MembersView, NodeIx, Op, OpKind, Outcome, Pinned, Sample,
    Stmt, large_final, lists_alive, node_name,
};

/// At most this many op ids per anomaly.
const MAX_OPS: usize = 10;
/// At most this many examples listed in an anomaly's detail.
const MAX_EXAMPLES: usize = 10;
/// Crash log tails longer than this are cut (from the front).
const MAX_LOG: usize = 4000;

/// What the checker found: the anomalies (empty for a clean run) and the
/// metrics.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    /// Every anomaly found, grouped by kind (in [`AnomalyKind`] order).
    pub anomalies: Vec<Anomaly>,
    /// Counts, convergence times, replication lag and join times.
    pub metrics: Metrics,
}

impl CheckResult {
    /// Number of anomalies of each kind found (kinds with none are absent).
    pub fn counts(&self) -> BTreeMap<AnomalyKind, usize> {
        let mut out = BTreeMap::new();
        for a in &self.anomalies {
            *out.entry(a.kind).or_insert(0) += 1;
        }
        out
    }

    /// True if no anomaly was found.
    pub fn is_clean(&self) -> bool {
        self.anomalies.is_empty()
    }
}

/// One violation of a rule.
#[derive(Debug, Clone, Serialize)]
pub struct Anomaly {
    /// Which rule.
    pub kind: AnomalyKind,
    /// Human-readable explanation, with node names, values and times (bounded
    /// length: long lists are cut to a few examples and a total).
    pub detail: String,
    /// Ids of the requests that show it (at most 10).
    pub ops: Vec<u64>,
}

/// The rules the checker enforces. Each variant's doc says what it means and
/// why a correct system never shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AnomalyKind {
    /// An acknowledged write's event row is missing from (or different in) a
    /// node's final contents. Acknowledged writes must reach every node, and
    /// event rows are never updated or deleted. One anomaly per (node, txn).
    /// Also an acknowledged large value missing from a node's final contents,
    /// and an acknowledged row of a pinned table missing from the final
    /// contents of a node of its regions; and a counter missing from a
    /// node's final contents although an increment known applied changed
    /// it (rows of counters are never deleted).
    LostWrite,
    /// A large value in a node's final contents is not what its write wrote
    /// (type, length or digest differ). Large rows are never updated, and a
    /// row's change travels whole.
    CorruptValue,
    /// A counter's final value on some node is not the sum of the
    /// increments known applied plus the sum of some subset of those of
    /// unknown outcome: an acknowledged increment was lost, or one was
    /// applied twice, or a refused one was applied. Every increment adds
    /// exactly its delta once, on every node.
    CounterMismatch,
    /// Something written only by a request that failed definitely (4xx) is
    /// visible: an event row or large value in a final state, or a register
    /// value read or in a final state, or a counter row that only failed
    /// upserts could have created. A failed transaction applies nothing.
    FailedWriteVisible,
    /// A request the API's sandbox must refuse (DDL, a pragma, transaction
    /// control, ATTACH, litemesh's own tables or functions, a write through
    /// the query endpoint) was not refused: answered 2xx, or with a status
    /// other than 403 (or 503, a node unavailable or shutting down; no answer
    /// at all tells nothing); or a row it would have written is in a final
    /// state; or a file its ATTACH named exists at the end.
    SandboxBreach,
    /// A write of a large value under the agent's limits (a value of 1–3.9
    /// MB, in a request under the 8 MiB body limit) was refused (4xx). Such a
    /// write must commit.
    LargeWriteRefused,
    /// A counter increment was refused with a 4xx other than 408 (a time
    /// limit). It is valid SQL on a table of the schema: it must commit.
    CounterWriteRefused,
    /// A row write over the agent's size limit (4 MiB of key and cells) was
    /// not refused: answered 2xx, or with a status other than 413 (or 503),
    /// or its row is in a final state.
    OversizedAccepted,
    /// A row of a pinned table where it may not be: the SQLite file of a node
    /// outside the table's regions, read after its agent stopped, holds
    /// anything of it (rows, clock rows, parked, quarantined or partial
    /// changes naming it), or could not be read; a node counted rows of it
    /// sent by peers (`placement_rows_refused` above 0: senders must filter
    /// by the receiver's region); a node's status does not list the table
    /// as pinned to its regions; or a read or write of the table on a node
    /// outside its regions was not refused with 403 naming where it may be
    /// held (no answer, or 503, tells nothing).
    PlacementBreach,
    /// A transaction was seen partially: a `TxnCheck` reported a partial
    /// transaction, a final state holds some but not all rows of a
    /// transaction (also for writes of unknown outcome: they apply whole or
    /// not at all), or a token read counted a number of rows other than 0 and
    /// the size. Transactions are applied atomically, locally and remotely.
    /// Also, on a node of a pinned table's regions, a transaction across the
    /// pinned table and `events` held in part (elsewhere only its event rows
    /// may be held, whole).
    HalfTransaction,
    /// The final contents of the nodes differ after the final healing (a
    /// pinned table: among the nodes of its regions), counters included.
    Divergence,
    /// A read with a version token did not see the write named by the token:
    /// `ReadTxn` counted 0 rows, or `ReadRegister` returned a value stale with
    /// respect to a register write of the token's op on the same key.
    StaleTokenRead,
    /// A later read on the same node went backwards: `CountEvents` counted
    /// fewer rows than a read that completed before it was sent, or
    /// `ReadRegister` returned a value stale with respect to a write already
    /// known applied on that node (seen by an earlier read, acknowledged by
    /// the node itself, or waited for with a token). Node state is durable,
    /// also across restarts.
    NonMonotonicRead,
    /// A register value (read, or in a final state), or an event row or a
    /// counter row in a final state, that no request ever wrote.
    InventedValue,
    /// A node's final register value is stale with respect to an acknowledged
    /// write of that key (which must have reached every node).
    SupersededFinalValue,
    /// After the clients stopped and every fault was healed, a node's last
    /// progress sample still lacks versions of acknowledged writes.
    NotConverged,
    /// A node's last membership view does not list every other node alive.
    MembershipNotConverged,
    /// At the end (after the final convergence, and a grace of up to 10 s) a
    /// node still holds changes from peers in quarantine, or its consecutive
    /// failures to apply peers' changes or to serve peers are not zero. With
    /// every fault healed and every change held, nothing may stay stuck.
    StuckApply,
    /// At the end (same grace) a node's `/v1/health` does not answer 200, its
    /// status reports a write error, or its status cannot be read.
    UnhealthyAtEnd,
    /// An agent process exited unexpectedly.
    AgentCrash,
}

impl AnomalyKind {
    /// Every kind, in order.
    pub const ALL: [AnomalyKind; 20] = [
        AnomalyKind::LostWrite,
        AnomalyKind::CorruptValue,
        AnomalyKind::CounterMismatch,
        AnomalyKind::FailedWriteVisible,
        AnomalyKind::SandboxBreach,
        AnomalyKind::LargeWriteRefused,
        AnomalyKind::CounterWriteRefused,
        AnomalyKind::OversizedAccepted,
        AnomalyKind::PlacementBreach,
        AnomalyKind::HalfTransaction,
        AnomalyKind::Divergence,
        AnomalyKind::StaleTokenRead,
        AnomalyKind::NonMonotonicRead,
        AnomalyKind::InventedValue,
        AnomalyKind::SupersededFinalValue,
        AnomalyKind::NotConverged,
        AnomalyKind::MembershipNotConverged,
        AnomalyKind::StuckApply,
        AnomalyKind::UnhealthyAtEnd,
        AnomalyKind::AgentCrash,
    ];

    /// Kebab-case name, e.g. `lost-write` (the same as its serde form).
    pub fn name(&self) -> &'static str {
        match self {
            AnomalyKind::LostWrite => "lost-write",
            AnomalyKind::CorruptValue => "corrupt-value",
            AnomalyKind::CounterMismatch => "counter-mismatch",
            AnomalyKind::FailedWriteVisible => "failed-write-visible",
            AnomalyKind::SandboxBreach => "sandbox-breach",
            AnomalyKind::LargeWriteRefused => "large-write-refused",
            AnomalyKind::CounterWriteRefused => "counter-write-refused",
            AnomalyKind::OversizedAccepted => "oversized-accepted",
            AnomalyKind::PlacementBreach => "placement-breach",
            AnomalyKind::HalfTransaction => "half-transaction",
            AnomalyKind::Divergence => "divergence",
            AnomalyKind::StaleTokenRead => "stale-token-read",
            AnomalyKind::NonMonotonicRead => "non-monotonic-read",
            AnomalyKind::InventedValue => "invented-value",
            AnomalyKind::SupersededFinalValue => "superseded-final-value",
            AnomalyKind::NotConverged => "not-converged",
            AnomalyKind::MembershipNotConverged => "membership-not-converged",
            AnomalyKind::StuckApply => "stuck-apply",
            AnomalyKind::UnhealthyAtEnd => "unhealthy-at-end",
            AnomalyKind::AgentCrash => "agent-crash",
        }
    }
}

impl std::fmt::Display for AnomalyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What was measured. Times are in seconds; `None` when not measurable.
/// Progress samples are taken about every 100 ms, so convergence and lag times
/// are no finer than that.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Metrics {
    /// Requests in the history.
    pub ops: u64,
    /// Outcomes per request kind (`write`, `count`, `txn-check`,
    /// `read-register`, `read-txn`).
    pub by_kind: BTreeMap<String, OutcomeCounts>,
    /// Event rows inserted by acknowledged writes.
    pub rows_acked: u64,
    /// Register statements (sets and deletes) of acknowledged writes.
    pub register_writes_acked: u64,
    /// Large values of acknowledged writes.
    #[serde(default)]
    pub large_acked: u64,
    /// Their bytes.
    #[serde(default)]
    pub large_bytes_acked: u64,
    /// One entry per fault, in order.
    pub faults: Vec<FaultResult>,
    /// Time from `quiet_from` until every node held every acknowledged
    /// version (`None`: some node never did before the samples end).
    pub converged_after_quiet: Option<f64>,
    /// Time from `quiet_from` until every node's view listed every other node
    /// alive (`None`: never before the views end).
    pub membership_after_quiet: Option<f64>,
    /// Replication lag of acknowledged writes.
    pub lag: LagMetrics,
    /// The join measurement, if the run had one.
    pub join: Option<JoinMetrics>,
    /// The pinned table: where it was found, and the refusals (histories
    /// with one).
    pub placement: Option<PlacementMetrics>,
    /// The counters: increments by outcome, and the verdict on the final
    /// values (histories with counter increments or counter rows).
    pub counters: Option<CounterMetrics>,
}

/// What the run showed of the counters.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CounterMetrics {
    /// Counters written, or found in a final state.
    pub counters: u64,
    /// Increments acknowledged.
    pub acked: u64,
    /// What they added (an update that changed nothing adds 0).
    pub acked_sum: i64,
    /// Acknowledged updates that changed nothing (their node did not hold
    /// the row yet).
    pub acked_unchanged: u64,
    /// Per node: increments acknowledged by it (index: node).
    pub acked_by_node: Vec<u64>,
    /// Increments of unknown outcome.
    pub unknown: u64,
    /// Of those, shown applied or not applied by their transaction's event
    /// rows in the final states.
    pub resolved: u64,
    /// Increments refused (4xx): nothing applied.
    pub failed: u64,
    /// Nodes whose final counters were read.
    pub nodes: u64,
    /// Whether every node's final counters are the same (ids and values).
    pub identical: bool,
    /// Counters whose final value is possible on every node holding them:
    /// the sum of the increments known applied plus that of some subset of
    /// those of unknown outcome.
    pub possible: u64,
    /// Of those, counters whose value is exactly the sum of the increments
    /// known applied.
    pub exact: u64,
}

/// What the run showed of the pinned table's placement.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PlacementMetrics {
    /// The table.
    pub table: String,
    /// The regions it may be held in.
    pub regions: Vec<String>,
    /// Nodes of those regions, and the rows of it each held at the end
    /// (read through the API).
    pub inside: Vec<(NodeIx, u64)>,
    /// Nodes outside them.
    pub outside: Vec<NodeIx>,
    /// Rows of it written by acknowledged writes.
    pub rows_acked: u64,
    /// Of those, rows written in one transaction with event rows (a
    /// transaction across a global and a pinned table).
    pub rows_acked_with_events: u64,
    /// Nodes outside whose files were read.
    pub files_checked: u64,
    /// Everything of it found in those files (rows, clock rows, parked,
    /// quarantined and partial changes naming it): must be 0.
    pub found_outside: u64,
    /// Reads and writes of it on nodes outside its regions refused with 403
    /// naming where it may be held.
    pub probes_refused: u64,
    /// The same without a definite answer (agent down, or 503).
    pub probes_unknown: u64,
    /// The same answered otherwise (each an anomaly).
    pub probes_other: u64,
    /// The largest `placement_rows_refused` any node reported.
    pub rows_refused_max: u64,
}

/// How many requests of one kind ended each way.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OutcomeCounts {
    /// Answered with success.
    pub ok: u64,
    /// Refused definitely.
    pub failed: u64,
    /// No definite answer.
    pub unknown: u64,
}

/// A fault and how fast the mesh recovered from it.
#[derive(Debug, Clone, Serialize)]
pub struct FaultResult {
    /// The fault's description.
    pub label: String,
    /// The fault's kind.
    pub kind: String,
    /// When it started.
    pub start: f64,
    /// When it was healed.
    pub heal: f64,
    /// `heal - start`.
    pub hold: f64,
    /// Time after `heal` until every node held every version acknowledged by
    /// `heal` (the first progress sample at or after `heal` showing it, the
    /// latest over the nodes). `None` if some node did not before the next
    /// fault started (or, for the last fault, before the samples end).
    pub converged_after: Option<f64>,
    /// Time after `heal` until every node's latest view (taken after `heal`)
    /// listed every other node alive. `None` if not before the next fault
    /// started (or the views end).
    pub membership_after: Option<f64>,
}

/// Replication lag: for an acknowledged write with version `(actor, v)`, the
/// time from its acknowledgement until every node's progress sample showed
/// `complete_through[actor] >= v` (the latest over the nodes). Nodes are those
/// running the mesh at the write's time (the joining node only counts for
/// writes acknowledged after it was spawned).
#[derive(Debug, Clone, Default, Serialize)]
pub struct LagMetrics {
    /// Writes whose lag was measured.
    pub measured: u64,
    /// Acknowledged writes with a version that some node was never seen
    /// holding (not measurable).
    pub not_visible: u64,
    /// Median lag.
    pub p50: Option<f64>,
    /// 99th percentile lag.
    pub p99: Option<f64>,
    /// Largest lag.
    pub max: Option<f64>,
    /// The write op with the largest lag.
    pub max_op: Option<u64>,
    /// Writes measured whose interval `[complete, visible]` overlaps no fault
    /// interval `[start, heal]`.
    pub calm_measured: u64,
    /// Median lag of calm writes.
    pub calm_p50: Option<f64>,
    /// 99th percentile lag of calm writes.
    pub calm_p99: Option<f64>,
    /// Largest lag of calm writes.
    pub calm_max: Option<f64>,
    /// The calm write op with the largest lag.
    pub calm_max_op: Option<u64>,
}

/// How fast a node joined an existing mesh.
#[derive(Debug, Clone, Serialize)]
pub struct JoinMetrics {
    /// The joining node.
    pub node: NodeIx,
    /// Rows in the mesh when it joined.
    pub rows: u64,
    /// `ready - spawned`.
    pub ready_after: f64,
    /// `caught_up - spawned` (`None` if it never caught up).
    pub caught_up_after: Option<f64>,
    /// `caught_up - ready` (`None` if it never caught up).
    pub catch_up: Option<f64>,
}

/// Checks a history: every anomaly rule, and the metrics.
///
/// Runs in roughly `O(n log n)` in the number of ops, rows and samples.
pub fn check(h: &History) -> CheckResult {
    let ix = Index::build(h);
    let mut out = Vec::new();
    check_final_events(&ix, &mut out);
    check_lost_writes(&ix, &mut out);
    check_divergence(&ix, &mut out);
    check_reads(&ix, &mut out);
    check_count_monotonic(&ix, &mut out);
    check_register_monotonic(&ix, &mut out);
    check_final_registers(&ix, &mut out);
    check_not_converged(&ix, &mut out);
    check_membership(&ix, &mut out);
    check_large_values(&ix, &mut out);
    check_hostile(&ix, &mut out);
    check_placement(&ix, &mut out);
    check_counters(&ix, &mut out);
    check_end(&ix, &mut out);
    check_crashes(&ix, &mut out);
    // Stable: keeps the (deterministic) order within a kind.
    out.sort_by_key(|a| a.kind);
    let metrics = metrics(&ix);
    CheckResult {
        anomalies: out,
        metrics,
    }
}

// ---------------------------------------------------------------------------
// Index of the history
// ---------------------------------------------------------------------------

/// An op's outcome, without the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    Ok,
    Failed,
    Unknown,
}

fn status(o: &Outcome) -> St {
    match o {
        Outcome::Ok => St::Ok,
        Outcome::Failed(_) => St::Failed,
        Outcome::Unknown(_) => St::Unknown,
    }
}

/// One register statement of a write op.
struct RegWrite<'a> {
    op: &'a Op,
    st: St,
    key: &'a str,
    /// `None` for a delete.
    value: Option<&'a str>,
}

/// Which write a register value names.
#[derive(Clone, Copy)]
enum Src {
    /// Index into [`Index::regs`].
    One(usize),
    /// Written by more than one statement (should not happen: values are
    /// unique). Such values are not used for staleness, only for "invented".
    Many,
}

/// Who wrote an event row id.
struct EventRef {
    /// The first op writing it.
    op: u64,
    /// Every op writing it failed.
    all_failed: bool,
}

/// Who wrote a large row id, and what it must hold.
struct LargeRef {
    /// The first op writing it.
    op: u64,
    /// Every op writing it failed.
    all_failed: bool,
    /// Its value as a final state must show it.
    expect: LargeFinal,
}

/// Who wrote a row of the pinned table.
struct PinnedRef<'a> {
    /// The first op writing it.
    op: u64,
    /// That op's outcome.
    st: St,
    /// Every op writing it failed.
    all_failed: bool,
    /// Its transaction id.
    txn: &'a str,
    /// Ids of the event rows the same op inserted (a transaction across a
    /// global and a pinned table).
    events: Vec<&'a str>,
}

/// The deletes of one key sent to one node (failed ones excluded: they
/// explain nothing).
struct DelInfo {
    /// One of them has an unknown outcome: such a delete is never `≺`
    /// anything, so it can always explain `None`.
    unknown: bool,
    /// Latest completion of an acknowledged one (`-inf` if none).
    max_ok_complete: f64,
}

/// Per register key.
#[derive(Default)]
struct KeyInfo {
    /// Non-failed deletes, per node they were sent to.
    dels: BTreeMap<NodeIx, DelInfo>,
    /// Every acknowledged write of the key, as knowledge (for final states).
    ok_writes: Knowledge,
}

/// A write known to be applied on some node: the latest invocation among
/// known-applied writes sent to one writer node.
#[derive(Debug, Clone, Copy)]
struct Known {
    /// Invocation time of the write.
    invoke: f64,
    /// The op that showed it applied (a read, or the write itself).
    witness: u64,
    /// The write op.
    write_op: u64,
}

/// What is known applied, for one key on one node (or everywhere): per writer
/// node, the latest-invoked known-applied write. An acknowledged write `W2` is
/// overwritten iff `W2.complete < known[W2.node].invoke` (then `W2 ≺` that
/// write).
#[derive(Default, Clone)]
struct Knowledge {
    t: BTreeMap<NodeIx, Known>,
}

impl Knowledge {
    fn learn(&mut self, writer: NodeIx, k: Known) {
        match self.t.get_mut(&writer) {
            Some(cur) if cur.invoke >= k.invoke => {}
            Some(cur) => *cur = k,
            None => {
                self.t.insert(writer, k);
            }
        }
    }

    /// Whether the value written by `w` can no longer be current: `w ≺` a
    /// known-applied write. Returns that write.
    fn stale_some(&self, w: &RegWrite<'_>) -> Option<Known> {
        if w.st != St::Ok {
            return None;
        }
        self.t
            .get(&w.op.node)
            .filter(|k| w.op.complete < k.invoke)
            .copied()
    }

    /// Whether `None` (no row) can no longer be current: something is known
    /// applied (so the initial state is overwritten) and every non-failed
    /// delete of the key `≺` a known-applied write. Returns one such write.
    fn stale_none(&self, key: Option<&KeyInfo>) -> Option<Known> {
        let first = *self.t.values().next()?;
        let Some(key) = key else {
            return Some(first);
        };
        let mut witness = first;
        for (node, d) in &key.dels {
            if d.unknown {
                return None;
            }
            match self.t.get(node) {
                Some(k) if d.max_ok_complete < k.invoke => witness = *k,
                _ => return None,
            }
        }
        Some(witness)
    }
}

struct Index<'a> {
    h: &'a History,
    /// Number of nodes.
    n: usize,
    ops: HashMap<u64, &'a Op>,
    regs: Vec<RegWrite<'a>>,
    /// Register statements of each write op (indices into `regs`).
    op_regs: HashMap<u64, Vec<usize>>,
    by_value: HashMap<&'a str, Src>,
    keys: BTreeMap<&'a str, KeyInfo>,
    events: HashMap<&'a str, EventRef>,
    /// Large rows, by id.
    large: HashMap<&'a str, LargeRef>,
    /// Rows of the pinned table, by id.
    pinned: BTreeMap<&'a str, PinnedRef<'a>>,
    /// Counters, by id: every counter incremented, or found in a final
    /// state.
    counters: BTreeMap<&'a str, CounterInfo>,
    /// Rows that hostile requests would have written, and the request.
    hostile_rows: HashMap<&'a str, &'a Op>,
    /// Write ops of each transaction id.
    txn_ops: HashMap<&'a str, Vec<u64>>,
    /// Progress samples per node, by time.
    samples: Vec<Vec<&'a Sample>>,
    /// Membership views, by time.
    views: Vec<&'a MembersView>,
}

impl<'a> Index<'a> {
    fn build(h: &'a History) -> Index<'a> {
        let n = if h.nodes > 0 {
            h.nodes
        } else {
            h.node_records.len().max(h.finals.len())
        };
        let mut ix = Index {
            h,
            n,
            ops: HashMap::with_capacity(h.ops.len()),
            regs: Vec::new(),
            op_regs: HashMap::new(),
            by_value: HashMap::new(),
            keys: BTreeMap::new(),
            events: HashMap::new(),
            large: HashMap::new(),
            pinned: BTreeMap::new(),
            counters: BTreeMap::new(),
            hostile_rows: HashMap::new(),
            txn_ops: HashMap::new(),
            samples: Vec::new(),
            views: Vec::new(),
        };
        for op in &h.ops {
            ix.ops.insert(op.id, op);
            if let OpKind::Hostile { rows, .. } = &op.kind {
                for r in rows {
                    ix.hostile_rows.insert(r.as_str(), op);
                }
            }
            let OpKind::Write { stmts, .. } = &op.kind else {
                continue;
            };
            let st = status(&op.outcome);
            for s in stmts {
                match s {
                    Stmt::InsertEvent { id, txn, .. } => {
                        ix.events
                            .entry(id.as_str())
                            .and_modify(|e| e.all_failed &= st == St::Failed)
                            .or_insert(EventRef {
                                op: op.id,
                                all_failed: st == St::Failed,
                            });
                        let ops = ix.txn_ops.entry(txn.as_str()).or_default();
                        if ops.last() != Some(&op.id) {
                            ops.push(op.id);
                        }
                    }
                    Stmt::SetRegister { key, value } => {
                        let i = ix.regs.len();
                        ix.regs.push(RegWrite {
                            op,
                            st,
                            key,
                            value: Some(value),
                        });
                        ix.op_regs.entry(op.id).or_default().push(i);
                        ix.by_value
                            .entry(value.as_str())
                            .and_modify(|s| *s = Src::Many)
                            .or_insert(Src::One(i));
                    }
                    Stmt::DeleteRegister { key } => {
                        let i = ix.regs.len();
                        ix.regs.push(RegWrite {
                            op,
                            st,
                            key,
                            value: None,
                        });
                        ix.op_regs.entry(op.id).or_default().push(i);
                    }
                    Stmt::InsertLarge {
                        id,
                        len,
                        seed,
                        text,
                    } => {
                        let failed = st == St::Failed;
                        ix.large
                            .entry(id.as_str())
                            .and_modify(|e| e.all_failed &= failed)
                            .or_insert_with(|| LargeRef {
                                op: op.id,
                                all_failed: failed,
                                expect: large_final(*seed, *len, *text),
                            });
                    }
                    Stmt::InsertPinned { id, txn } => {
                        let failed = st == St::Failed;
                        let events = stmts
                            .iter()
                            .filter_map(|e| match e {
                                Stmt::InsertEvent { id, .. } => Some(id.as_str()),
                                _ => None,
                            })
                            .collect();
                        ix.pinned
                            .entry(id.as_str())
                            .and_modify(|e| e.all_failed &= failed)
                            .or_insert(PinnedRef {
                                op: op.id,
                                st,
                                all_failed: failed,
                                txn,
                                events,
                            });
                        let ops = ix.txn_ops.entry(txn.as_str()).or_default();
                        if ops.last() != Some(&op.id) {
                            ops.push(op.id);
                        }
                    }
                    Stmt::AddCounter { .. } | Stmt::Invalid => {}
                }
            }
        }
        ix.counters = counter_infos(h);
        for w in &ix.regs {
            let k = ix.keys.entry(w.key).or_default();
            if w.st == St::Failed {
                continue;
            }
            if w.value.is_none() {
                let d = k.dels.entry(w.op.node).or_insert(DelInfo {
                    unknown: false,
                    max_ok_complete: f64::NEG_INFINITY,
                });
                if w.st == St::Unknown {
                    d.unknown = true;
                } else {
                    d.max_ok_complete = d.max_ok_complete.max(w.op.complete);
                }
            }
            if w.st == St::Ok {
                k.ok_writes.learn(
                    w.op.node,
                    Known {
                        invoke: w.op.invoke,
                        witness: w.op.id,
                        write_op: w.op.id,
                    },
                );
            }
        }
        let slots = h
            .samples
            .iter()
            .map(|s| s.node + 1)
            .max()
            .unwrap_or(0)
            .max(n);
        ix.samples = vec![Vec::new(); slots];
        for s in &h.samples {
            ix.samples[s.node].push(s);
        }
        for v in &mut ix.samples {
            v.sort_by(|a, b| a.at.total_cmp(&b.at));
        }
        ix.views = h.members.iter().collect();
        ix.views.sort_by(|a, b| a.at.total_cmp(&b.at));
        ix
    }

    /// The register write a value names, if exactly one.
    fn writer_of(&self, value: &str) -> Option<Option<&RegWrite<'a>>> {
        match self.by_value.get(value)? {
            Src::One(i) => Some(Some(&self.regs[*i])),
            Src::Many => Some(None),
        }
    }

    /// Whether node `node` is part of the mesh at time `t` (the joining node
    /// only from its spawn on).
    fn participates(&self, node: NodeIx, t: f64) -> bool {
        match &self.h.join {
            Some(j) if j.node == node => j.spawned <= t,
            _ => true,
        }
    }

    fn nodes_at(&self, t: f64) -> Vec<NodeIx> {
        (0..self.n).filter(|&i| self.participates(i, t)).collect()
    }
}

fn name(node: NodeIx) -> String {
    node_name(node)
}

/// Sorted, deduplicated, at most [`MAX_OPS`] op ids.
fn op_list(ids: impl IntoIterator<Item = u64>) -> Vec<u64> {
    let mut v: Vec<u64> = Vec::new();
    for id in ids {
        if !v.contains(&id) {
            v.push(id);
            if v.len() == MAX_OPS {
                break;
            }
        }
    }
    v
}

/// `a, b, c … (N in all)` from the first examples and a total.
fn examples(items: &[String], total: usize) -> String {
    let mut s = items
        .iter()
        .take(MAX_EXAMPLES)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if total > items.len().min(MAX_EXAMPLES) {
        let _ = write!(s, " … ({total} in all)");
    }
    s
}

fn push(out: &mut Vec<Anomaly>, kind: AnomalyKind, detail: String, ops: Vec<u64>) {
    out.push(Anomaly { kind, detail, ops });
}

fn show(v: Option<&str>) -> String {
    match v {
        Some(v) => format!("{v:?}"),
        None => "no row".to_string(),
    }
}

// ---------------------------------------------------------------------------
// Final states: events
// ---------------------------------------------------------------------------

/// Event rows in the final states.
///
/// - **FailedWriteVisible**: a row whose id only failed writes inserted. A
///   failed transaction applies nothing, so its rows can be nowhere.
/// - **InventedValue**: a row whose id no request inserted (the runner's
///   preload is recorded as requests too).
/// - **HalfTransaction**: per node, the rows of a transaction present must be
///   all of them (`count == size`, and all rows agree on `size`). A
///   transaction, acknowledged or of unknown outcome, is applied whole or not
///   at all, and event rows are never deleted.
fn check_final_events(ix: &Index<'_>, out: &mut Vec<Anomaly>) {
    for f in &ix.h.finals {
        let mut failed: BTreeMap<u64, Vec<&str>> = BTreeMap::new();
        let mut invented: Vec<String> = Vec::new();
        // txn -> (rows, size of first row, sizes disagree)
        let mut txns: HashMap<&str, (u64, u64, bool)> = HashMap::new();
        for (id, (txn, size)) in &f.events {
            match ix.events.get(id.as_str()) {
                Some(e) if e.all_failed => failed.entry(e.op).or_default().push(id),
                Some(_) => {}
                // Reported by `check_hostile`.
                None if ix.hostile_rows.contains_key(id.as_str()) => {}
                None => invented.push(id.clone()),
            }
            let t = txns.entry(txn.as_str()).or_insert((0, *size, false));
            t.0 += 1;
            if t.1 != *size {
                t.2 = true;
            }
        }
        for (op, ids) in failed {
            let list: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
            push(
                out,
                AnomalyKind::FailedWriteVisible,
                format!(
                    "{}: final state holds event rows of failed write op {op}: {}",
                    name(f.node),
                    examples(&list, ids.len())
                ),
                vec![op],
            );
        }
        if !invented.is_empty() {
            push(
                out,
                AnomalyKind::InventedValue,
                format!(
                    "{}: final state holds event rows no request inserted: {}",
                    name(f.node),
                    examples(&invented, invented.len())
                ),
                Vec::new(),
            );
        }
        let mut half: Vec<(&str, u64, u64, bool)> = txns
            .into_iter()
            .filter(|(_, (rows, size, mixed))| *mixed || rows != size)
            .map(|(txn, (rows, size, mixed))| (txn, rows, size, mixed))
            .collect();
        half.sort();
        for (txn, rows, size, mixed) in half {
            let ops = ix.txn_ops.get(txn).cloned().unwrap_or_default();
            let detail = if mixed {
                format!(
                    "{}: final state holds {rows} rows of txn {txn} that disagree on its size",
                    name(f.node)
                )
            } else {
                format!(
                    "{}: final state holds {rows} of the {size} rows of txn {txn}",
                    name(f.node)
                )
            };
            push(out, AnomalyKind::HalfTransaction, detail, op_list(ops));
        }
    }
}

/// **LostWrite**: every event row of an acknowledged write must be in every
/// node's final state with the same `(txn, size)`. Acknowledged writes reach
/// every node once faults are healed, and event rows are never updated or
/// deleted. One anomaly per (node, txn).
fn check_lost_writes(ix: &Index<'_>, out: &mut Vec<Anomaly>) {
    struct Lost<'a> {
        op: u64,
        missing: Vec<&'a str>,
        missing_total: usize,
        different: usize,
        size: u32,
    }
    let mut lost: BTreeMap<(NodeIx, &str), Lost<'_>> = BTreeMap::new();
    for op in &ix.h.ops {
        if op.outcome != Outcome::Ok {
            continue;
        }
        let OpKind::Write { stmts, .. } = &op.kind else {
            continue;
        };
        for s in stmts {
            let Stmt::InsertEvent { id, txn, size, .. } = s else {
                continue;
            };
            for f in &ix.h.finals {
                let found = f.events.get(id);
                let ok = matches!(found, Some((t, sz)) if t == txn && *sz == u64::from(*size));
                if ok {
                    continue;
                }
                let l = lost.entry((f.node, txn.as_str())).or_insert(Lost {
                    op: op.id,
                    missing: Vec::new(),
                    missing_total: 0,
                    different: 0,
                    size: *size,
                });
                if found.is_some() {
                    l.different += 1;
                } else {
                    l.missing_total += 1;
                    if l.missing.len() < MAX_EXAMPLES {
                        l.missing.push(id);
                    }
                }
            }
        }
    }
    // Acknowledged large values: present on every node (their content is
    // checked by `check_large_values`).
    for op in &ix.h.ops {
        let (Outcome::Ok, OpKind::Write { stmts, .. }) = (&op.outcome, &op.kind) else {
            continue;
        };
        for s in stmts {
            let Stmt::InsertLarge { id, len, .. } = s else {
                continue;
            };
            for f in &ix.h.finals {
                if !f.large.contains_key(id) {
                    push(
                        out,
                        AnomalyKind::LostWrite,
                        format!(
                            "{}: acknowledged write op {} of large value {id} ({len} bytes) is missing from its final state",
                            name(f.node),
                            op.id
                        ),
                        vec![op.id],
                    );
                }
            }
        }
    }
    for ((node, txn), l) in lost {
        let mut detail = format!(
            "{}: acknowledged write op {} (txn {txn}, {} rows)",
            name(node),
            l.op,
            l.size
        );
        if l.missing_total > 0 {
            let ids: Vec<String> = l.missing.iter().map(|s| s.to_string()).collect();
            let _ = write!(
                detail,
                ", rows missing from its final state: {}",
                examples(&ids, l.missing_total)
            );
        }
        if l.different > 0 {
            let _ = write!(
                detail,
                ", {} rows present with a different (txn, size)",
                l.different
            );
        }
        push(out, AnomalyKind::LostWrite, detail, vec![l.op]);
    }
}

// ---------------------------------------------------------------------------
// Divergence
// ---------------------------------------------------------------------------

/// Differences between two sorted maps: keys only in `a`, only in `b`, and in
/// both with different values (examples, and totals).
struct MapDiff<K> {
    only_a: (Vec<K>, usize),
    only_b: (Vec<K>, usize),
    differ: (Vec<K>, usize),
}

fn diff_maps<'m, K: Ord + Clone, V: PartialEq>(
    a: &'m BTreeMap<K, V>,
    b: &'m BTreeMap<K, V>,
) -> MapDiff<&'m K> {
    fn note<K>(slot: &mut (Vec<K>, usize), k: K) {
        if slot.0.len() < MAX_EXAMPLES {
            slot.0.push(k);
        }
        slot.1 += 1;
    }
    let mut d = MapDiff {
        only_a: (Vec::new(), 0),
        only_b: (Vec::new(), 0),
        differ: (Vec::new(), 0),
    };
    let mut ia = a.iter().peekable();
    let mut ib = b.iter().peekable();
    loop {
        match (ia.peek(), ib.peek()) {
            (None, None) => break,
            (Some((ka, _)), None) => {
                note(&mut d.only_a, *ka);
                ia.next();
            }
            (None, Some((kb, _))) => {
                note(&mut d.only_b, *kb);
                ib.next();
            }
            (Some((ka, va)), Some((kb, vb))) => match ka.cmp(kb) {
                std::cmp::Ordering::Less => {
                    note(&mut d.only_a, *ka);
                    ia.next();
                }
                std::cmp::Ordering::Greater => {
                    note(&mut d.only_b, *kb);
                    ib.next();
                }
                std::cmp::Ordering::Equal => {
                    if va != vb {
                        note(&mut d.differ, *ka);
                    }
                    ia.next();
                    ib.next();
                }
            },
        }
    }
    d
}

/// **Divergence**: after the final healing every node must hold exactly the
/// same rows (every change reaches every node, and merging is deterministic).
///
/// The final states are grouped into classes of identical content; the
/// largest class is the reference and each other class gets one anomaly with
/// examples of differing rows (bounded).
fn check_divergence(ix: &Index<'_>, out: &mut Vec<Anomaly>) {
    let finals = &ix.h.finals;
    let mut classes: Vec<Vec<usize>> = Vec::new();
    for (i, f) in finals.iter().enumerate() {
        let same = classes.iter_mut().find(|c| {
            let r = &finals[c[0]];
            r.events == f.events
                && r.registers == f.registers
                && r.large == f.large
                && r.counters == f.counters
        });
        match same {
            Some(c) => c.push(i),
            None => classes.push(vec![i]),
        }
    }
    if classes.len() < 2 {
        return;
    }
    let reference = (0..classes.len())
        .max_by_key(|&c| (classes[c].len(), std::cmp::Reverse(c)))
        .unwrap_or(0);
    let names = |c: &[usize]| {
        c.iter()
            .map(|&i| name(finals[i].node))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let r = &finals[classes[reference][0]];
    for (ci, class) in classes.iter().enumerate() {
        if ci == reference {
            continue;
        }
        let o = &finals[class[0]];
        let (rn, on) = (name(r.node), name(o.node));
        let mut detail = format!(
            "final state of {{{}}} differs from {{{}}}:",
            names(class),
            names(&classes[reference])
        );
        let mut ops = Vec::new();
        let ev = diff_maps(&r.events, &o.events);
        let rg = diff_maps(&r.registers, &o.registers);
        let lg = diff_maps(&r.large, &o.large);
        let ev_op = |id: &String| ix.events.get(id.as_str()).map(|e| e.op);
        let val_op =
            |v: Option<&String>| v.and_then(|v| ix.writer_of(v)).flatten().map(|w| w.op.id);
        for (label, (keys, total)) in [
            (format!("events only on {rn}"), &ev.only_a),
            (format!("events only on {on}"), &ev.only_b),
            ("events with different (txn, size)".to_string(), &ev.differ),
        ] {
            if *total == 0 {
                continue;
            }
            let list: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
            ops.extend(keys.iter().filter_map(|k| ev_op(k)));
            let _ = write!(detail, " {label}: {};", examples(&list, *total));
        }
        for (label, (keys, total)) in [
            (format!("large values only on {rn}"), &lg.only_a),
            (format!("large values only on {on}"), &lg.only_b),
            ("large values that differ".to_string(), &lg.differ),
        ] {
            if *total == 0 {
                continue;
            }
            let list: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
            ops.extend(
                keys.iter()
                    .filter_map(|k| ix.large.get(k.as_str()).map(|l| l.op)),
            );
            let _ = write!(detail, " {label}: {};", examples(&list, *total));
        }
        let reg_keys = rg
            .only_a
            .0
            .iter()
            .chain(&rg.only_b.0)
            .chain(&rg.differ.0)
            .collect::<BTreeSet<_>>();
        let reg_total = rg.only_a.1 + rg.only_b.1 + rg.differ.1;
        if reg_total > 0 {
            let list: Vec<String> = reg_keys
                .iter()
                .map(|k| {
                    let (a, b) = (r.registers.get(**k), o.registers.get(**k));
                    ops.extend(val_op(a));
                    ops.extend(val_op(b));
                    format!(
                        "{k}: {rn}={} {on}={}",
                        show(a.map(|s| s.as_str())),
                        show(b.map(|s| s.as_str()))
                    )
                })
                .collect();
            let _ = write!(detail, " registers: {};", examples(&list, reg_total));
        }
        let ct = diff_maps(&r.counters, &o.counters);
        let ct_keys = ct
            .only_a
            .0
            .iter()
            .chain(&ct.only_b.0)
            .chain(&ct.differ.0)
            .collect::<BTreeSet<_>>();
        let ct_total = ct.only_a.1 + ct.only_b.1 + ct.differ.1;
        if ct_total > 0 {
            let show = |v: Option<&Option<i64>>| match v {
                None => "no row".to_string(),
                Some(None) => "not an integer".to_string(),
                Some(Some(n)) => n.to_string(),
            };
            let list: Vec<String> = ct_keys
                .iter()
                .map(|k| {
                    format!(
                        "{k}: {rn}={} {on}={}",
                        show(r.counters.get(**k)),
                        show(o.counters.get(**k))
                    )
                })
                .collect();
            let _ = write!(detail, " counters: {};", examples(&list, ct_total));
        }
        detail.pop();
        push(out, AnomalyKind::Divergence, detail, op_list(ops));
    }
}

// ---------------------------------------------------------------------------
// Reads
// ---------------------------------------------------------------------------

/// Per-read rules:
///
/// - **HalfTransaction** (a): a `TxnCheck` that reports a partial transaction.
/// - **StaleTokenRead** / **HalfTransaction** (c): a `ReadTxn` waits for the
///   token of the write that inserted the transaction, so it must count all
///   `size` rows. `0` means the token's write was not visible (stale); any
///   other count but `size` means the transaction was seen half applied.
/// - **StaleTokenRead** (registers): a `ReadRegister` with the token of write
///   op `W` runs where `W` is applied, so if `W` sets the key, the value must
///   not be stale with respect to that set (see the module docs): the value
///   of `W` itself, or of any write not `≺ W`, is fine. A delete in `W` is not
///   used: it may have changed nothing (module docs, "Deletes that change
///   nothing"), so `None` or an older value proves nothing.
/// - **InventedValue**: a value no `SetRegister` wrote.
/// - **FailedWriteVisible**: a value only a failed write wrote.
fn check_reads(ix: &Index<'_>, out: &mut Vec<Anomaly>) {
    for op in &ix.h.ops {
        if op.outcome != Outcome::Ok {
            continue;
        }
        match &op.kind {
            OpKind::TxnCheck {
                writer,
                from_seq,
                partial: Some(partial),
            } if !partial.is_empty() => {
                let list: Vec<String> = partial
                    .iter()
                    .map(|(txn, seen, size)| format!("{txn} ({seen} of {size} rows)"))
                    .collect();
                let ops = std::iter::once(op.id).chain(
                    partial
                        .iter()
                        .filter_map(|(txn, _, _)| ix.txn_ops.get(txn.as_str()))
                        .flatten()
                        .copied(),
                );
                push(
                    out,
                    AnomalyKind::HalfTransaction,
                    format!(
                        "{}: txn check of client {writer}'s rows from seq {from_seq} saw partial transactions: {}",
                        name(op.node),
                        examples(&list, partial.len())
                    ),
                    op_list(ops),
                );
            }
            OpKind::ReadTxn {
                txn,
                size,
                after,
                count: Some(count),
                ..
            } if *count != u64::from(*size) => {
                let (kind, what) = if *count == 0 {
                    (
                        AnomalyKind::StaleTokenRead,
                        "does not see the token's write",
                    )
                } else {
                    (AnomalyKind::HalfTransaction, "sees the transaction partly")
                };
                push(
                    out,
                    kind,
                    format!(
                        "{}: read of txn {txn} with the token of write op {after} counted {count} of {size} rows: {what}",
                        name(op.node)
                    ),
                    vec![op.id, *after],
                );
            }
            OpKind::ReadRegister {
                key,
                after,
                value: Some(value),
                ..
            } => {
                let observed = value.as_deref();
                let mut writer = None;
                if let Some(v) = observed {
                    match ix.writer_of(v) {
                        None => {
                            push(
                                out,
                                AnomalyKind::InventedValue,
                                format!(
                                    "{}: read of register {key} returned {v:?}, which no request wrote",
                                    name(op.node)
                                ),
                                vec![op.id],
                            );
                            continue;
                        }
                        Some(Some(w)) if w.st == St::Failed => {
                            push(
                                out,
                                AnomalyKind::FailedWriteVisible,
                                format!(
                                    "{}: read of register {key} returned {v:?}, written only by failed op {}",
                                    name(op.node),
                                    w.op.id
                                ),
                                vec![op.id, w.op.id],
                            );
                            continue;
                        }
                        Some(Some(w)) => writer = Some(w),
                        // Ambiguous value: tells nothing about staleness.
                        Some(None) => continue,
                    }
                }
                let Some(after) = after else { continue };
                let Some(w) = ix.ops.get(after) else { continue };
                if status(&w.outcome) == St::Failed {
                    continue;
                }
                let on_key = ix.op_regs.get(after).is_some_and(|r| {
                    r.iter()
                        .any(|&i| ix.regs[i].key == key && ix.regs[i].value.is_some())
                });
                if !on_key {
                    continue;
                }
                let mut k = Knowledge::default();
                k.learn(
                    w.node,
                    Known {
                        invoke: w.invoke,
                        witness: w.id,
                        write_op: w.id,
                    },
                );
                let stale = match writer {
                    Some(wr) => k.stale_some(wr).map(|_| {
                        format!(
                            "written by op {} on {} (acknowledged at {:.3}), before op {} was sent to {} at {:.3}",
                            wr.op.id,
                            name(wr.op.node),
                            wr.op.complete,
                            w.id,
                            name(w.node),
                            w.invoke
                        )
                    }),
                    None => k.stale_none(ix.keys.get(key.as_str())).map(|_| {
                        "every delete of the key (if any) was acknowledged by the same node before it was sent".to_string()
                    }),
                };
                if let Some(why) = stale {
                    let mut ops = vec![op.id, w.id];
                    ops.extend(writer.map(|wr| wr.op.id));
                    push(
                        out,
                        AnomalyKind::StaleTokenRead,
                        format!(
                            "{}: read of register {key} with the token of write op {} returned {}: {why}",
                            name(op.node),
                            w.id,
                            show(observed)
                        ),
                        op_list(ops),
                    );
                }
            }
            _ => {}
        }
    }
}

/// **NonMonotonicRead** (counts): events are never deleted and node state is
/// durable (also across restarts), so on one node a `CountEvents` sent after
/// another one completed counts at least as many rows.
///
/// Per node: reads sorted by invocation, swept against reads sorted by
/// completion, keeping the largest count among reads completed strictly
/// before. Violations are grouped by the earlier read they contradict.
fn check_count_monotonic(ix: &Index<'_>, out: &mut Vec<Anomaly>) {
    let mut per_node: BTreeMap<NodeIx, Vec<(&Op, u64)>> = BTreeMap::new();
    for op in &ix.h.ops {
        if let (Outcome::Ok, OpKind::CountEvents { count: Some(count) }) = (&op.outcome, &op.kind) {
            per_node.entry(op.node).or_default().push((op, *count));
        }
    }
    for (node, reads) in per_node {
        let mut by_invoke = reads.clone();
        by_invoke.sort_by(|a, b| a.0.invoke.total_cmp(&b.0.invoke));
        let mut by_complete = reads;
        by_complete.sort_by(|a, b| a.0.complete.total_cmp(&b.0.complete));
        let mut best: Option<(&Op, u64)> = None;
        let mut j = 0;
        // earlier read id -> (its count, later reads that counted fewer)
        type Later<'o> = Vec<(&'o Op, u64)>;
        let mut bad: BTreeMap<u64, (u64, Later<'_>)> = BTreeMap::new();
        for &(r2, c2) in &by_invoke {
            while j < by_complete.len() && by_complete[j].0.complete < r2.invoke {
                let (r1, c1) = by_complete[j];
                if best.is_none_or(|(_, b)| c1 > b) {
                    best = Some((r1, c1));
                }
                j += 1;
            }
            if let Some((r1, c1)) = best
                && c2 < c1
            {
                bad.entry(r1.id)
                    .or_insert((c1, Vec::new()))
                    .1
                    .push((r2, c2));
            }
        }
        for (r1, (c1, later)) in bad {
            let (r2, c2) = later[0];
            let mut detail = format!(
                "{}: count of events went from {c1} (op {r1}) to {c2} (op {}, sent at {:.3}, after op {r1} completed)",
                name(node),
                r2.id,
                r2.invoke
            );
            if later.len() > 1 {
                let _ = write!(
                    detail,
                    "; {} later reads counted fewer than {c1}",
                    later.len()
                );
            }
            let ops = std::iter::once(r1).chain(later.iter().map(|(r, _)| r.id));
            push(out, AnomalyKind::NonMonotonicRead, detail, op_list(ops));
        }
    }
}

/// **NonMonotonicRead** (registers): on one node, once a write is known
/// applied there, no later read on that node may return a value stale with
/// respect to it (node state is durable, and a write never un-applies).
///
/// A write is known applied on node `X` for key `k` from the completion of:
/// a read on `X` that returned its value (any outcome but failed); an
/// acknowledged write sent to `X` (committed locally before the answer: this
/// is read-your-writes); a successful read on `X` (register or txn) waiting
/// for its token (its sets only, see the module docs). A read sent to `X`
/// afterwards must return a value not stale with respect to any of them.
///
/// Per (node, key), one sweep over the events in time order (a read sent at
/// the same instant as another completes does not count as after it), keeping
/// per writer node the latest invocation known applied: `O(n log n)`.
/// Violations are grouped by (node, key, contradicted write).
fn check_register_monotonic<'a>(ix: &Index<'a>, out: &mut Vec<Anomaly>) {
    enum Ev<'o> {
        Learn { writer: NodeIx, known: Known },
        Query { op: &'o Op, value: Option<&'o str> },
    }
    type Groups<'o> = BTreeMap<(NodeIx, &'o str), Vec<(f64, Ev<'o>)>>;
    let mut groups: Groups<'a> = BTreeMap::new();
    // `sets_only`: learn from a write's sets only (for writes known applied
    // through their token, see `check_reads`).
    let learn_op = |groups: &mut Groups<'a>,
                    at_node: NodeIx,
                    at: f64,
                    witness: u64,
                    w: &Op,
                    sets_only: bool| {
        let Some(regs) = ix.op_regs.get(&w.id) else {
            return;
        };
        let mut seen: Vec<&str> = Vec::new();
        for &i in regs {
            let key = ix.regs[i].key;
            if (sets_only && ix.regs[i].value.is_none()) || seen.contains(&key) {
                continue;
            }
            seen.push(key);
            groups.entry((at_node, key)).or_default().push((
                at,
                Ev::Learn {
                    writer: w.node,
                    known: Known {
                        invoke: w.invoke,
                        witness,
                        write_op: w.id,
                    },
                },
            ));
        }
    };
    for op in &ix.h.ops {
        if op.outcome != Outcome::Ok {
            continue;
        }
        match &op.kind {
            OpKind::Write { .. } => learn_op(&mut groups, op.node, op.complete, op.id, op, false),
            OpKind::ReadRegister {
                key,
                after,
                value: Some(value),
                ..
            } => {
                let value = value.as_deref();
                groups
                    .entry((op.node, key.as_str()))
                    .or_default()
                    .push((op.invoke, Ev::Query { op, value }));
                if let Some(v) = value
                    && let Some(Some(w)) = ix.writer_of(v)
                    && w.st != St::Failed
                {
                    groups.entry((op.node, key.as_str())).or_default().push((
                        op.complete,
                        Ev::Learn {
                            writer: w.op.node,
                            known: Known {
                                invoke: w.op.invoke,
                                witness: op.id,
                                write_op: w.op.id,
                            },
                        },
                    ));
                }
                if let Some(w) = after.and_then(|a| ix.ops.get(&a))
                    && status(&w.outcome) != St::Failed
                {
                    learn_op(&mut groups, op.node, op.complete, op.id, w, true);
                }
            }
            OpKind::ReadTxn {
                after,
                count: Some(_),
                ..
            } => {
                if let Some(w) = ix.ops.get(after)
                    && status(&w.outcome) != St::Failed
                {
                    learn_op(&mut groups, op.node, op.complete, op.id, w, true);
                }
            }
            _ => {}
        }
    }
    for ((node, key), mut evs) in groups {
        // Queries before learns at the same instant: "after" is strict.
        evs.sort_by(|a, b| {
            a.0.total_cmp(&b.0).then_with(|| {
                let rank = |e: &Ev<'_>| matches!(e, Ev::Learn { .. }) as u8;
                rank(&a.1).cmp(&rank(&b.1))
            })
        });
        let key_info = ix.keys.get(key);
        let mut k = Knowledge::default();
        // contradicted write op -> (its witness, later reads)
        type Later<'o> = Vec<(&'o Op, Option<&'o str>)>;
        let mut bad: BTreeMap<u64, (Known, Later<'_>)> = BTreeMap::new();
        for (_, ev) in &evs {
            match ev {
                Ev::Learn { writer, known } => k.learn(*writer, *known),
                Ev::Query { op, value } => {
                    let stale = match value {
                        Some(v) => match ix.writer_of(v) {
                            Some(Some(w)) if w.st != St::Failed => k.stale_some(w),
                            _ => None,
                        },
                        None => k.stale_none(key_info),
                    };
                    if let Some(known) = stale {
                        bad.entry(known.write_op)
                            .or_insert((known, Vec::new()))
                            .1
                            .push((op, *value));
                    }
                }
            }
        }
        for (write_op, (known, later)) in bad {
            let (r2, v2) = later[0];
            let shown_by = if known.witness == write_op {
                format!("acknowledged by {} itself", name(node))
            } else {
                format!("seen applied there by op {}", known.witness)
            };
            let why = match v2.and_then(|v| ix.writer_of(v)).flatten() {
                Some(w2) => format!(
                    "written by op {} on {}, acknowledged at {:.3}, before op {write_op} was sent there at {:.3}",
                    w2.op.id,
                    name(w2.op.node),
                    w2.op.complete,
                    known.invoke
                ),
                None => format!(
                    "every delete of the key (if any) precedes op {write_op} or another write known applied"
                ),
            };
            let mut detail = format!(
                "{}: read of register {key} (op {}, sent at {:.3}) returned {} although write op {write_op} was already {shown_by}: {why}",
                name(node),
                r2.id,
                r2.invoke,
                show(v2)
            );
            if later.len() > 1 {
                let _ = write!(
                    detail,
                    "; {} later reads were stale the same way",
                    later.len()
                );
            }
            let mut ops = vec![known.witness, write_op];
            ops.extend(later.iter().map(|(r, _)| r.id));
            push(out, AnomalyKind::NonMonotonicRead, detail, op_list(ops));
        }
    }
}

// ---------------------------------------------------------------------------
// Final states: registers
// ---------------------------------------------------------------------------

/// Register values in the final states:
///
/// - **InventedValue**: a value no `SetRegister` wrote.
/// - **FailedWriteVisible**: a value only a failed write wrote.
/// - **SupersededFinalValue**: every acknowledged write reaches every node, so
///   the final value of a key must not be stale with respect to any
///   acknowledged write of that key: a value `Some(v)` from write `W` is
///   superseded if `W ≺` some acknowledged write `W1` (same node, `W`
///   acknowledged before `W1` was sent); `None` is superseded if some
///   acknowledged write exists and every non-failed delete of the key `≺` some
///   acknowledged write (the initial state is then overwritten, and so is
///   every delete's result).
fn check_final_registers(ix: &Index<'_>, out: &mut Vec<Anomaly>) {
    let empty = Knowledge::default();
    for f in &ix.h.finals {
        let node = name(f.node);
        // Values present.
        for (key, v) in &f.registers {
            let w = match ix.writer_of(v) {
                None => {
                    push(
                        out,
                        AnomalyKind::InventedValue,
                        format!(
                            "{node}: final value of register {key} is {v:?}, which no request wrote"
                        ),
                        Vec::new(),
                    );
                    continue;
                }
                Some(None) => continue,
                Some(Some(w)) => w,
            };
            if w.st == St::Failed {
                push(
                    out,
                    AnomalyKind::FailedWriteVisible,
                    format!(
                        "{node}: final value of register {key} is {v:?}, written only by failed op {}",
                        w.op.id
                    ),
                    vec![w.op.id],
                );
                continue;
            }
            let k = ix.keys.get(key.as_str()).map_or(&empty, |k| &k.ok_writes);
            if let Some(known) = k.stale_some(w) {
                push(
                    out,
                    AnomalyKind::SupersededFinalValue,
                    format!(
                        "{node}: final value of register {key} is {v:?} from op {} (acknowledged by {} at {:.3}), but op {} was sent to {} at {:.3} and acknowledged",
                        w.op.id,
                        name(w.op.node),
                        w.op.complete,
                        known.write_op,
                        name(w.op.node),
                        known.invoke
                    ),
                    vec![w.op.id, known.write_op],
                );
            }
        }
        // Keys with no row.
        for (key, info) in &ix.keys {
            if f.registers.contains_key(*key) {
                continue;
            }
            if let Some(known) = info.ok_writes.stale_none(Some(info)) {
                let why = if info.dels.is_empty() {
                    "no delete of it was ever sent".to_string()
                } else {
                    "every delete of it was acknowledged before a later write to the same node was sent".to_string()
                };
                push(
                    out,
                    AnomalyKind::SupersededFinalValue,
                    format!(
                        "{node}: register {key} has no row in the final state, but acknowledged write op {} set or deleted it and {why}",
                        known.write_op
                    ),
                    vec![known.write_op],
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Convergence, membership, crashes
// ---------------------------------------------------------------------------

/// Whether a sample shows every version of `target`.
fn holds(s: &Sample, target: &BTreeMap<&str, u64>) -> bool {
    target
        .iter()
        .all(|(a, v)| s.complete_through.get(*a).copied().unwrap_or(0) >= *v)
}

/// The first sample of `node` at or after `from` and before `until` holding
/// `target`.
fn first_holding(
    ix: &Index<'_>,
    node: NodeIx,
    from: f64,
    until: f64,
    target: &BTreeMap<&str, u64>,
) -> Option<f64> {
    let s = ix.samples.get(node)?;
    let start = s.partition_point(|x| x.at < from);
    s[start..]
        .iter()
        .take_while(|x| x.at < until)
        .find(|x| holds(x, target))
        .map(|x| x.at)
}

/// Time after `from` until every node in `nodes` held `target`.
fn convergence_time(
    ix: &Index<'_>,
    nodes: &[NodeIx],
    from: f64,
    until: f64,
    target: &BTreeMap<&str, u64>,
) -> Option<f64> {
    let mut latest = from;
    for &n in nodes {
        latest = latest.max(first_holding(ix, n, from, until, target)?);
    }
    Some(latest - from)
}

/// Whether a view lists every node of `nodes` other than its own alive.
fn view_ok(v: &MembersView, nodes: &[NodeIx]) -> bool {
    lists_alive(&v.members, nodes.iter().copied().filter(|&o| o != v.node))
}

/// Time after `from` until, for every node of `nodes`, its latest view taken
/// in `[from, t]` lists every other node alive.
fn membership_time(ix: &Index<'_>, nodes: &[NodeIx], from: f64, until: f64) -> Option<f64> {
    if nodes.is_empty() {
        return None;
    }
    let start = ix.views.partition_point(|v| v.at < from);
    let mut good: BTreeMap<NodeIx, bool> = BTreeMap::new();
    let mut n_good = 0;
    for v in &ix.views[start..] {
        if v.at >= until {
            break;
        }
        if !nodes.contains(&v.node) {
            continue;
        }
        let ok = view_ok(v, nodes);
        let prev = good.insert(v.node, ok).unwrap_or(false);
        match (prev, ok) {
            (false, true) => n_good += 1,
            (true, false) => n_good -= 1,
            _ => {}
        }
        if n_good == nodes.len() {
            return Some(v.at - from);
        }
    }
    None
}

/// Per actor, the highest version of an acknowledged write, and that write.
fn max_versions<'a>(ix: &Index<'a>) -> BTreeMap<&'a str, (u64, u64)> {
    let mut t: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for op in &ix.h.ops {
        if let (
            Outcome::Ok,
            OpKind::Write {
                version: Some((actor, v)),
                ..
            },
        ) = (&op.outcome, &op.kind)
        {
            let e = t.entry(actor.as_str()).or_insert((*v, op.id));
            if *v > e.0 {
                *e = (*v, op.id);
            }
        }
    }
    t
}

/// **NotConverged**: once faults are healed and clients stopped, every node
/// receives every acknowledged version; its last progress sample (which must
/// be at or after `quiet_from`) must show `complete_through >=` the highest
/// acknowledged version of every actor.
fn check_not_converged(ix: &Index<'_>, out: &mut Vec<Anomaly>) {
    let target = max_versions(ix);
    for node in 0..ix.n {
        let last = ix.samples.get(node).and_then(|s| s.last());
        let Some(last) = last.filter(|s| s.at >= ix.h.quiet_from) else {
            push(
                out,
                AnomalyKind::NotConverged,
                format!(
                    "{}: no progress sample at or after quiet_from ({:.3})",
                    name(node),
                    ix.h.quiet_from
                ),
                Vec::new(),
            );
            continue;
        };
        let mut lacks = Vec::new();
        let mut ops = Vec::new();
        for (actor, (v, op)) in &target {
            let has = last.complete_through.get(*actor).copied().unwrap_or(0);
            if has < *v {
                lacks.push(format!("{actor}: holds through {has}, needs {v}"));
                ops.push(*op);
            }
        }
        if !lacks.is_empty() {
            push(
                out,
                AnomalyKind::NotConverged,
                format!(
                    "{}: last progress sample (at {:.3}) lacks acknowledged versions: {}",
                    name(node),
                    last.at,
                    examples(&lacks, lacks.len())
                ),
                op_list(ops),
            );
        }
    }
}

/// **MembershipNotConverged**: with every fault healed, failure detection
/// must end with everyone alive: each node's last view must list every other
/// node (`n{i+1}`) with state `alive` (its own entry is ignored).
fn check_membership(ix: &Index<'_>, out: &mut Vec<Anomaly>) {
    let all: Vec<NodeIx> = (0..ix.n).collect();
    let mut last: BTreeMap<NodeIx, &MembersView> = BTreeMap::new();
    for v in &ix.views {
        last.insert(v.node, v);
    }
    for node in 0..ix.n {
        let Some(v) = last.get(&node) else {
            push(
                out,
                AnomalyKind::MembershipNotConverged,
                format!("{}: no membership view recorded", name(node)),
                Vec::new(),
            );
            continue;
        };
        if view_ok(v, &all) {
            continue;
        }
        let wrong: Vec<String> = all
            .iter()
            .filter(|&&o| o != node)
            .filter_map(|&o| {
                let want = name(o);
                let states: Vec<&str> = v
                    .members
                    .iter()
                    .filter(|(n, _)| *n == want)
                    .map(|(_, s)| s.as_str())
                    .collect();
                if states.iter().any(|s| s.eq_ignore_ascii_case("alive")) {
                    None
                } else if states.is_empty() {
                    Some(format!("{want} missing"))
                } else {
                    Some(format!("{want} {}", states.join("/")))
                }
            })
            .collect();
        push(
            out,
            AnomalyKind::MembershipNotConverged,
            format!(
                "{}: last membership view (at {:.3}): {}",
                name(node),
                v.at,
                examples(&wrong, wrong.len())
            ),
            Vec::new(),
        );
    }
}

/// **AgentCrash**: every unexpected agent exit the runner recorded.
fn check_crashes(ix: &Index<'_>, out: &mut Vec<Anomaly>) {
    for (i, r) in ix.h.node_records.iter().enumerate() {
        let who = if r.name.is_empty() {
            name(i)
        } else {
            r.name.clone()
        };
        for (at, status, log) in &r.crashes {
            let tail = if log.len() > MAX_LOG {
                let mut cut = log.len() - MAX_LOG;
                while !log.is_char_boundary(cut) {
                    cut += 1;
                }
                format!("…{}", &log[cut..])
            } else {
                log.clone()
            };
            push(
                out,
                AnomalyKind::AgentCrash,
                format!(
                    "{who}: agent exited unexpectedly at {at:.3} ({status}); log tail:\n{tail}"
                ),
                Vec::new(),
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Large values, hostile requests, the end of the run
// ---------------------------------------------------------------------------

/// Large values:
///
/// - **LargeWriteRefused**: a write of a large value refused (4xx). Large
///   values stay under the row limit and their requests under the body
///   limit, so nothing but an unavailable agent (no answer, 5xx) may keep
///   one from committing.
///
/// In the final states (their presence where acknowledged is checked by
/// `check_lost_writes`):
///
/// - **CorruptValue**: a row whose type, length or digest is not what its
///   write wrote (whatever that write's outcome: one of unknown outcome may
///   be absent, but if present it is whole). Large rows are never updated.
/// - **FailedWriteVisible**: a row only failed writes inserted.
/// - **InventedValue**: a row no request inserted (hostile requests' rows are
///   left to `check_hostile`).
fn check_large_values(ix: &Index<'_>, out: &mut Vec<Anomaly>) {
    for op in &ix.h.ops {
        let (Outcome::Failed(why), OpKind::Write { stmts, .. }) = (&op.outcome, &op.kind) else {
            continue;
        };
        for s in stmts {
            let Stmt::InsertLarge { id, len, text, .. } = s else {
                continue;
            };
            // The value's share of the request body (base64 for a blob).
            let body = if *text {
                u64::from(*len)
            } else {
                u64::from(*len).div_ceil(3) * 4
            };
            push(
                out,
                AnomalyKind::LargeWriteRefused,
                format!(
                    "{}: write op {} of large value {id} ({} of {len} bytes, a request body of about {body} bytes) was refused: {why}",
                    name(op.node),
                    op.id,
                    if *text { "text" } else { "blob" },
                ),
                vec![op.id],
            );
        }
    }
    let show = |l: &LargeFinal| format!("{} of {} bytes, digest {}", l.kind, l.bytes, l.digest);
    for f in &ix.h.finals {
        let node = name(f.node);
        let mut invented = Vec::new();
        for (id, got) in &f.large {
            match ix.large.get(id.as_str()) {
                Some(r) if r.all_failed => push(
                    out,
                    AnomalyKind::FailedWriteVisible,
                    format!(
                        "{node}: final state holds large value {id} of failed write op {}",
                        r.op
                    ),
                    vec![r.op],
                ),
                Some(r) if *got != r.expect => push(
                    out,
                    AnomalyKind::CorruptValue,
                    format!(
                        "{node}: large value {id} of write op {} is a {}, but was written as a {}",
                        r.op,
                        show(got),
                        show(&r.expect)
                    ),
                    vec![r.op],
                ),
                Some(_) => {}
                None if ix.hostile_rows.contains_key(id.as_str()) => {}
                None => invented.push(id.clone()),
            }
        }
        if !invented.is_empty() {
            push(
                out,
                AnomalyKind::InventedValue,
                format!(
                    "{node}: final state holds large values no request inserted: {}",
                    examples(&invented, invented.len())
                ),
                Vec::new(),
            );
        }
    }
}

/// A hostile request in a few words: `op 12 (tx-drop-table, /v1/transactions:
/// DROP TABLE registers)`.
fn describe_hostile(op: &Op) -> String {
    let OpKind::Hostile {
        attack,
        endpoint,
        sql,
        ..
    } = &op.kind
    else {
        return format!("op {}", op.id);
    };
    let mut text = sql.join("; ");
    if text.chars().count() > 300 {
        text = text.chars().take(300).collect::<String>() + "…";
    }
    format!("op {} ({attack}, {endpoint}: {text})", op.id)
}

/// Requests that must be refused:
///
/// - **SandboxBreach** (expected 403) / **OversizedAccepted** (expected
///   413): answered with any status but the expected one or 503 (2xx: it was
///   carried out; another 4xx: something other than the sandbox or the size
///   check stopped it, so they let it through; a 5xx other than 503: it
///   failed inside). No answer at all (a killed or paused agent) tells
///   nothing.
/// - The same kinds when a row the request would have written is in a final
///   state (a refused request commits nothing, not even its valid
///   statements), one anomaly per (node, request).
/// - **SandboxBreach** for every file a hostile `ATTACH` named that exists at
///   the end.
fn check_hostile(ix: &Index<'_>, out: &mut Vec<Anomaly>) {
    let kind_of = |op: &Op| match &op.kind {
        OpKind::Hostile { expect: 413, .. } => AnomalyKind::OversizedAccepted,
        _ if is_placement_probe(op) => AnomalyKind::PlacementBreach,
        _ => AnomalyKind::SandboxBreach,
    };
    for op in &ix.h.ops {
        let OpKind::Hostile {
            expect,
            status: Some(status),
            answer,
            ..
        } = &op.kind
        else {
            continue;
        };
        // A placement refusal says where the table may be held: a 403 for
        // anything else means the placement check let it through.
        if status == expect
            && is_placement_probe(op)
            && !answer
                .as_deref()
                .is_some_and(|a| a.contains(PLACEMENT_REFUSAL))
        {
            push(
                out,
                AnomalyKind::PlacementBreach,
                format!(
                    "{} ({}): {} was refused with 403, but not for placement (no \"{PLACEMENT_REFUSAL}\"): {}",
                    name(op.node),
                    ix.h.region(op.node),
                    describe_hostile(op),
                    answer.as_deref().unwrap_or("")
                ),
                vec![op.id],
            );
            continue;
        }
        if status == expect || *status == 503 {
            continue;
        }
        let how = if (200..300).contains(status) {
            format!("was carried out (HTTP {status})")
        } else {
            format!("was answered {status} instead of {expect}")
        };
        push(
            out,
            kind_of(op),
            format!(
                "{}: {} {how}: {}",
                name(op.node),
                describe_hostile(op),
                answer.as_deref().unwrap_or("")
            ),
            vec![op.id],
        );
    }
    for f in &ix.h.finals {
        let mut found: BTreeMap<u64, Vec<&str>> = BTreeMap::new();
        for id in f.events.keys().chain(f.large.keys()).chain(f.pinned.keys()) {
            if let Some(op) = ix.hostile_rows.get(id.as_str()) {
                found.entry(op.id).or_default().push(id);
            }
        }
        for (op, ids) in found {
            let op = ix.ops[&op];
            let list: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
            push(
                out,
                kind_of(op),
                format!(
                    "{}: final state holds rows of {}, which must have changed nothing: {}",
                    name(f.node),
                    describe_hostile(op),
                    examples(&list, list.len())
                ),
                vec![op.id],
            );
        }
    }
    for path in &ix.h.files_created {
        let op = ix.h.ops.iter().find(|op| {
            matches!(&op.kind, OpKind::Hostile { file: Some(f), .. } if path.starts_with(f.as_str()))
        });
        push(
            out,
            AnomalyKind::SandboxBreach,
            format!(
                "file {path} exists at the end: named by {}",
                op.map_or("a hostile ATTACH".to_string(), describe_hostile)
            ),
            op.map(|o| vec![o.id]).unwrap_or_default(),
        );
    }
}

/// What a refusal of access to a pinned table on a node outside its regions
/// says.
const PLACEMENT_REFUSAL: &str = "may only be held in region(s)";

/// Whether `op` is a read or write of the pinned table sent to a node
/// outside its regions (recorded as a hostile request expecting 403).
fn is_placement_probe(op: &Op) -> bool {
    matches!(&op.kind, OpKind::Hostile { attack, .. } if attack.starts_with("placement-"))
}

/// The pinned table (histories with one, [`History::pinned`]). On each node
/// of its regions, from the contents read through the API:
///
/// - **LostWrite**: a row of an acknowledged write missing (or with another
///   `txn`); one anomaly per (node, write).
/// - **FailedWriteVisible**: a row only failed writes inserted.
/// - **InventedValue**: a row no request inserted (or with a `txn` none
///   wrote; hostile requests' rows are left to `check_hostile`).
/// - **HalfTransaction**: a transaction across the pinned table and
///   `events`, acknowledged or of unknown outcome, seen in part: its pinned
///   row without all its event rows, or event rows without its pinned row. A
///   node of the regions gets it whole.
/// - **Divergence**: the nodes of the regions hold different rows of it.
///
/// **PlacementBreach**, on every node outside its regions: its file (read
/// after the agents stopped) holds anything of the table, could not be
/// read, or was not read; or its API returned rows of it. On every node: a
/// progress sample or the end status with `placement_rows_refused` above 0
/// (a peer sent rows it must have withheld), or an end status that does not
/// list the table as pinned to its regions.
fn check_placement(ix: &Index<'_>, out: &mut Vec<Anomaly>) {
    let Some(p) = &ix.h.pinned else {
        return;
    };
    let table = p.table.as_str();
    let regions = p.regions.join(", ");
    let allowed = |node: NodeIx| p.allows(ix.h.region(node));
    for f in &ix.h.finals {
        let node = name(f.node);
        let region = ix.h.region(f.node);
        if allowed(f.node) {
            check_pinned_inside(ix, p, f, out);
        } else {
            if !f.pinned.is_empty() {
                let ids: Vec<String> = f.pinned.keys().cloned().collect();
                push(
                    out,
                    AnomalyKind::PlacementBreach,
                    format!(
                        "{node} (region {region}) answered rows of {table}, which may only be held in {regions}: {}",
                        examples(&ids, ids.len())
                    ),
                    op_list(
                        ids.iter()
                            .filter_map(|i| ix.pinned.get(i.as_str()).map(|r| r.op)),
                    ),
                );
            }
            let why = match &f.file {
                None => Some(format!(
                    "its file was not read: nothing shows it holds no row of {table}"
                )),
                Some(s) => match &s.error {
                    Some(e) => Some(format!(
                        "its file {} could not be read ({e}): nothing shows it holds no row of {table}",
                        s.path
                    )),
                    None if s.total() > 0 => {
                        Some(format!("its file {} holds {}", s.path, s.describe(table)))
                    }
                    None => None,
                },
            };
            if let Some(why) = why {
                let ops = f.file.iter().flat_map(|s| &s.ids).filter_map(|i| {
                    ix.pinned
                        .get(i.as_str())
                        .map(|r| r.op)
                        .or_else(|| ix.hostile_rows.get(i.as_str()).map(|o| o.id))
                });
                push(
                    out,
                    AnomalyKind::PlacementBreach,
                    format!(
                        "{node} (region {region}), outside the regions of {table} ({regions}): {why}"
                    ),
                    op_list(ops),
                );
            }
        }
        if let Some(e) = &f.end
            && e.status_error.is_none()
        {
            let listed: BTreeSet<&str> = e
                .placement
                .get(table)
                .map(|r| r.iter().map(String::as_str).collect())
                .unwrap_or_default();
            let want: BTreeSet<&str> = p.regions.iter().map(String::as_str).collect();
            if listed != want {
                push(
                    out,
                    AnomalyKind::PlacementBreach,
                    format!(
                        "{node}: its status lists the placement {:?}, without {table} in exactly {regions}",
                        e.placement
                    ),
                    Vec::new(),
                );
            }
        }
    }
    // Rows peers sent that the node may not hold: none may be sent. The
    // counter restarts with the agent, so every sample counts.
    let mut refused: BTreeMap<NodeIx, (u64, f64)> = BTreeMap::new();
    for s in &ix.h.samples {
        if s.placement_rows_refused > 0 {
            let e = refused.entry(s.node).or_insert((0, s.at));
            e.0 = e.0.max(s.placement_rows_refused);
        }
    }
    for f in &ix.h.finals {
        if let Some(e) = &f.end
            && e.placement_rows_refused > 0
        {
            let r = refused.entry(f.node).or_insert((0, e.at));
            r.0 = r.0.max(e.placement_rows_refused);
        }
    }
    for (node, (n, first)) in refused {
        push(
            out,
            AnomalyKind::PlacementBreach,
            format!(
                "{} (region {}): peers sent it rows of tables its region may not hold (placement_rows_refused up to {n}, first seen at {first:.3}): senders must leave them out",
                name(node),
                ix.h.region(node)
            ),
            Vec::new(),
        );
    }
    // The nodes of the regions agree on the table.
    let inside: Vec<&FinalState> = ix.h.finals.iter().filter(|f| allowed(f.node)).collect();
    let mut classes: Vec<Vec<&FinalState>> = Vec::new();
    for f in inside {
        match classes.iter_mut().find(|c| c[0].pinned == f.pinned) {
            Some(c) => c.push(f),
            None => classes.push(vec![f]),
        }
    }
    let Some(reference) =
        (0..classes.len()).max_by_key(|&c| (classes[c].len(), std::cmp::Reverse(c)))
    else {
        return;
    };
    let names = |c: &[&FinalState]| {
        c.iter()
            .map(|f| name(f.node))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let r = classes[reference][0];
    for (ci, class) in classes.iter().enumerate() {
        if ci == reference {
            continue;
        }
        let o = class[0];
        let d = diff_maps(&r.pinned, &o.pinned);
        let mut detail = format!(
            "rows of {table} on {{{}}} differ from {{{}}}:",
            names(class),
            names(&classes[reference])
        );
        let mut ops = Vec::new();
        for (label, (keys, total)) in [
            (format!("only on {}", name(r.node)), &d.only_a),
            (format!("only on {}", name(o.node)), &d.only_b),
            ("with a different txn".to_string(), &d.differ),
        ] {
            if *total == 0 {
                continue;
            }
            let list: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
            ops.extend(
                keys.iter()
                    .filter_map(|k| ix.pinned.get(k.as_str()).map(|p| p.op)),
            );
            let _ = write!(detail, " {label}: {};", examples(&list, *total));
        }
        detail.pop();
        push(out, AnomalyKind::Divergence, detail, op_list(ops));
    }
}

/// The pinned table on node `f`, one of its regions (see
/// [`check_placement`]).
fn check_pinned_inside(ix: &Index<'_>, p: &Pinned, f: &FinalState, out: &mut Vec<Anomaly>) {
    let node = name(f.node);
    let table = p.table.as_str();
    for (id, r) in &ix.pinned {
        let held = f.pinned.get(*id);
        if r.st == St::Ok && held.map(String::as_str) != Some(r.txn) {
            push(
                out,
                AnomalyKind::LostWrite,
                format!(
                    "{node}: acknowledged write op {} (txn {}): row {id} of {table} {}",
                    r.op,
                    r.txn,
                    match held {
                        Some(t) => format!("holds txn {t:?}"),
                        None => "missing from its final state".into(),
                    }
                ),
                vec![r.op],
            );
        }
        if r.all_failed || r.events.is_empty() {
            continue;
        }
        // A transaction across placements: whole here, or not at all.
        let events_held = r
            .events
            .iter()
            .filter(|e| f.events.contains_key(**e))
            .count();
        let whole = if held.is_some() {
            events_held == r.events.len()
        } else {
            events_held == 0
        };
        if !whole {
            push(
                out,
                AnomalyKind::HalfTransaction,
                format!(
                    "{node}: final state holds {} row {id} of {table} and {events_held} of the {} event rows of txn {} (a transaction across a global and a pinned table, whole on a node of {})",
                    if held.is_some() { "the" } else { "not the" },
                    r.events.len(),
                    r.txn,
                    p.regions.join(", ")
                ),
                vec![r.op],
            );
        }
    }
    let mut invented = Vec::new();
    for (id, txn) in &f.pinned {
        match ix.pinned.get(id.as_str()) {
            Some(r) if r.all_failed => push(
                out,
                AnomalyKind::FailedWriteVisible,
                format!(
                    "{node}: final state holds row {id} of {table} of failed write op {}",
                    r.op
                ),
                vec![r.op],
            ),
            Some(r) if r.txn != txn.as_str() => {
                invented.push(format!("{id} (txn {txn:?}, written as {:?})", r.txn))
            }
            Some(_) => {}
            // Reported by `check_hostile`.
            None if ix.hostile_rows.contains_key(id.as_str()) => {}
            None => invented.push(id.clone()),
        }
    }
    if !invented.is_empty() {
        push(
            out,
            AnomalyKind::InventedValue,
            format!(
                "{node}: final state holds rows of {table} no request inserted: {}",
                examples(&invented, invented.len())
            ),
            Vec::new(),
        );
    }
}

/// Each node's state at the end (read after the final convergence, with a
/// grace of up to 10 s; histories without it are not judged):
///
/// - **StuckApply**: changes from peers in quarantine, or consecutive
///   failures to apply peers' changes or to serve peers.
/// - **UnhealthyAtEnd**: `/v1/health` not 200, a write error, or a status
///   that could not be read.
fn check_end(ix: &Index<'_>, out: &mut Vec<Anomaly>) {
    for f in &ix.h.finals {
        let Some(e) = &f.end else { continue };
        let node = name(f.node);
        let mut stuck = Vec::new();
        if !e.quarantined.is_empty() {
            let list: Vec<String> = e
                .quarantined
                .iter()
                .map(|q| format!("{}:{} ({} rows): {}", q.actor, q.version, q.rows, q.error))
                .collect();
            stuck.push(format!(
                "{} change(s) from peers in quarantine: {}",
                list.len(),
                examples(&list, list.len())
            ));
        }
        if e.apply_failures > 0 {
            stuck.push(format!(
                "{} consecutive failures to apply peers' changes",
                e.apply_failures
            ));
        }
        if e.serve_failures > 0 {
            stuck.push(format!(
                "{} consecutive failures to serve peers",
                e.serve_failures
            ));
        }
        if !stuck.is_empty() {
            push(
                out,
                AnomalyKind::StuckApply,
                format!(
                    "{node} at the end (at {:.3}, after {:.1} s of grace): {}",
                    e.at,
                    e.waited,
                    stuck.join("; ")
                ),
                Vec::new(),
            );
        }
        let mut unwell = Vec::new();
        if let Some(err) = &e.status_error {
            unwell.push(format!("status unreadable: {err}"));
        }
        if let Some(err) = &e.write_error {
            unwell.push(format!("write error: {err}"));
        }
        match e.health {
            Some(200) => {}
            Some(code) if !e.issues.is_empty() => {
                let list: Vec<String> = e.issues.iter().map(|(k, m)| format!("{k}: {m}")).collect();
                unwell.push(format!("/v1/health answered {code}: {}", list.join("; ")));
            }
            Some(code) => unwell.push(format!(
                "/v1/health answered {code}: {}",
                e.health_detail.as_deref().unwrap_or("")
            )),
            None => unwell.push(format!(
                "/v1/health did not answer: {}",
                e.health_detail.as_deref().unwrap_or("")
            )),
        }
        if !unwell.is_empty() {
            push(
                out,
                AnomalyKind::UnhealthyAtEnd,
                format!(
                    "{node} at the end (at {:.3}, after {:.1} s of grace): {}",
                    e.at,
                    e.waited,
                    unwell.join("; ")
                ),
                Vec::new(),
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Counters
// ---------------------------------------------------------------------------

/// Every sum of a subset of some deltas (the empty subset included), as a
/// bitset over `min..=max`: `min` is the sum of the negative deltas, `max`
/// that of the positive ones, and bit `i` stands for the sum `min + i`.
#[derive(Debug, Clone)]
struct SubsetSums {
    min: i64,
    max: i64,
    bits: Vec<u64>,
}

impl SubsetSums {
    /// The subset sums of `deltas`. Equal deltas are taken together: `k`
    /// copies of `d` add the same sums as `d, 2d, 4d, …` and the rest up to
    /// `k·d` (binary splitting), so a long run's thousands of small deltas
    /// cost a few dozen shifts of the bitset.
    fn of(deltas: &[i64]) -> SubsetSums {
        let min: i64 = deltas.iter().filter(|d| **d < 0).sum();
        let max: i64 = deltas.iter().filter(|d| **d > 0).sum();
        let len = usize::try_from(max - min + 1).expect("a range of sums that fits in memory");
        let mut sums = SubsetSums {
            min,
            max,
            bits: vec![0; len.div_ceil(64)],
        };
        sums.set(0);
        let mut copies: BTreeMap<i64, i64> = BTreeMap::new();
        for &d in deltas.iter().filter(|d| **d != 0) {
            *copies.entry(d).or_default() += 1;
        }
        for (d, mut left) in copies {
            let mut take = 1;
            while left > 0 {
                let part = take.min(left);
                // Every partial sum stays within min..=max: no bit is
                // shifted out of the set.
                let by = usize::try_from((d * part).unsigned_abs()).expect("a small shift");
                if d > 0 {
                    sums.or_shifted_up(by);
                } else {
                    sums.or_shifted_down(by);
                }
                left -= part;
                take *= 2;
            }
        }
        sums
    }

    /// The bit of `sum`, if it is within `min..=max`.
    fn bit(&self, sum: i64) -> Option<usize> {
        (self.min..=self.max)
            .contains(&sum)
            .then(|| usize::try_from(sum - self.min).expect("within the range"))
    }

    fn set(&mut self, sum: i64) {
        let i = self.bit(sum).expect("a sum within the range");
        self.bits[i / 64] |= 1 << (i % 64);
    }

    /// Whether some subset of the deltas sums to `sum`.
    fn contains(&self, sum: i64) -> bool {
        self.bit(sum)
            .is_some_and(|i| (self.bits[i / 64] >> (i % 64)) & 1 == 1)
    }

    /// Adds `s + k` for every sum `s` (`bits |= bits << k`), in place: from
    /// the top down, so that every word read is still the old one.
    fn or_shifted_up(&mut self, k: usize) {
        let (words, shift) = (k / 64, k % 64);
        for i in (words..self.bits.len()).rev() {
            let src = i - words;
            let mut v = self.bits[src] << shift;
            if shift > 0 && src > 0 {
                v |= self.bits[src - 1] >> (64 - shift);
            }
            self.bits[i] |= v;
        }
    }

    /// Adds `s - k` for every sum `s` (`bits |= bits >> k`), in place: from
    /// the bottom up.
    fn or_shifted_down(&mut self, k: usize) {
        let (words, shift) = (k / 64, k % 64);
        let n = self.bits.len();
        for i in 0..n.saturating_sub(words) {
            let src = i + words;
            let mut v = self.bits[src] >> shift;
            if shift > 0 && src + 1 < n {
                v |= self.bits[src + 1] << (64 - shift);
            }
            self.bits[i] |= v;
        }
    }

    /// The greatest possible sum below `x`.
    fn below(&self, x: i64) -> Option<i64> {
        (self.min..x.min(self.max + 1))
            .rev()
            .find(|s| self.contains(*s))
    }

    /// The least possible sum above `x`.
    fn above(&self, x: i64) -> Option<i64> {
        (x.max(self.min - 1) + 1..=self.max).find(|s| self.contains(*s))
    }

    /// Whether every sum in `min..=max` is possible.
    fn contiguous(&self) -> bool {
        (self.min..=self.max).all(|s| self.contains(s))
    }
}

/// Whether a counter increment was applied, as far as the history tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Applied {
    /// It was: acknowledged (and it changed the row), or of unknown outcome
    /// with its transaction's event rows in every final state.
    Yes,
    /// It was not: refused, acknowledged but changed nothing (an update of
    /// a row its node did not hold), or of unknown outcome with its
    /// transaction's event rows in no final state.
    No,
    /// It may or may not have been.
    Maybe,
}

/// Whether a counter increment of write op `op` (an upsert if `upsert`,
/// else an update) was applied (see [`Applied`]).
///
/// An acknowledged upsert always adds its delta (it inserts the row or
/// updates it). An acknowledged update adds its delta if it changed its row,
/// which its token shows when it is its transaction's only statement
/// (non-empty: it changed something; empty: nothing). An increment of
/// unknown outcome in one transaction with event rows was applied iff they
/// were: transactions apply whole, and event rows are never deleted.
fn increment_applied(h: &History, op: &Op, upsert: bool) -> Applied {
    let OpKind::Write { stmts, token, .. } = &op.kind else {
        return Applied::No;
    };
    match status(&op.outcome) {
        St::Failed => Applied::No,
        St::Ok if upsert => Applied::Yes,
        St::Ok => match token {
            Some(t) if t.is_empty() => Applied::No,
            Some(_) if stmts.len() == 1 => Applied::Yes,
            _ => Applied::Maybe,
        },
        St::Unknown => {
            let events: Vec<&String> = stmts
                .iter()
                .filter_map(|s| match s {
                    Stmt::InsertEvent { id, .. } => Some(id),
                    _ => None,
                })
                .collect();
            if events.is_empty() || h.finals.is_empty() {
                return Applied::Maybe;
            }
            let held = |f: &FinalState| {
                events
                    .iter()
                    .filter(|id| f.events.contains_key(**id))
                    .count()
            };
            if h.finals.iter().all(|f| held(f) == events.len()) {
                Applied::Yes
            } else if h.finals.iter().all(|f| held(f) == 0) {
                Applied::No
            } else {
                // Seen in part, or on some nodes only: reported as such
                // (half-transaction, divergence); nothing settled here.
                Applied::Maybe
            }
        }
    }
}

/// What the requests say of one counter: which increments were applied,
/// which may have been, and who may have created its row.
#[derive(Debug, Default)]
struct CounterInfo {
    /// Every acknowledged increment (ops).
    acked_ops: Vec<u64>,
    /// Increments of unknown outcome, settled or not.
    unknown_outcome: u64,
    /// Acknowledged increments that changed it: `(op, delta)`.
    acked: Vec<(u64, i64)>,
    /// Acknowledged updates that changed nothing (ops).
    acked_unchanged: Vec<u64>,
    /// Increments of unknown outcome that their event rows show applied:
    /// `(op, delta)`.
    resolved: Vec<(u64, i64)>,
    /// Increments of unknown outcome that their event rows show not
    /// applied (ops).
    resolved_not: Vec<u64>,
    /// Increments that may or may not have been applied (of unknown
    /// outcome, or acknowledged updates whose effect the token does not
    /// show): `(op, delta)`.
    unknown: Vec<(u64, i64)>,
    /// Refused increments (ops).
    failed: Vec<u64>,
    /// A request that may have created its row: a non-failed upsert (an
    /// update never creates one).
    creator: Option<u64>,
    /// A failed upsert, if any.
    failed_upsert: Option<u64>,
}

impl CounterInfo {
    /// The sum of the increments known applied.
    fn known_sum(&self) -> i64 {
        self.acked
            .iter()
            .chain(&self.resolved)
            .map(|(_, d)| d)
            .sum()
    }

    /// Whether some increment known applied changed it (its row must then
    /// be on every node: rows of counters are never deleted).
    fn must_exist(&self) -> bool {
        !self.acked.is_empty() || !self.resolved.is_empty()
    }

    /// The sums the increments of unknown outcome may add.
    fn unknown_sums(&self) -> SubsetSums {
        let deltas: Vec<i64> = self.unknown.iter().map(|(_, d)| *d).collect();
        SubsetSums::of(&deltas)
    }

    /// Whether `value` is a possible final value: the known sum plus that
    /// of some subset of the unknown increments.
    fn possible(&self, value: Option<i64>, sums: &SubsetSums) -> bool {
        value.is_some_and(|v| sums.contains(v - self.known_sum()))
    }
}

/// Every counter incremented by a request, or found in a final state.
fn counter_infos(h: &History) -> BTreeMap<&str, CounterInfo> {
    let mut out: BTreeMap<&str, CounterInfo> = BTreeMap::new();
    for op in &h.ops {
        let OpKind::Write { stmts, .. } = &op.kind else {
            continue;
        };
        for (id, delta, upsert) in stmts.iter().filter_map(Stmt::counter) {
            let c = out.entry(id).or_default();
            let st = status(&op.outcome);
            match st {
                St::Ok => c.acked_ops.push(op.id),
                St::Unknown => c.unknown_outcome += 1,
                St::Failed => {}
            }
            if upsert {
                match st {
                    St::Failed => c.failed_upsert = c.failed_upsert.or(Some(op.id)),
                    _ => c.creator = c.creator.or(Some(op.id)),
                }
            }
            match (st, increment_applied(h, op, upsert)) {
                (St::Ok, Applied::Yes) => c.acked.push((op.id, delta)),
                (St::Ok, Applied::No) => c.acked_unchanged.push(op.id),
                (St::Failed, _) => c.failed.push(op.id),
                (_, Applied::Yes) => c.resolved.push((op.id, delta)),
                (_, Applied::No) => c.resolved_not.push(op.id),
                (_, Applied::Maybe) => c.unknown.push((op.id, delta)),
            }
        }
    }
    for f in &h.finals {
        for id in f.counters.keys() {
            out.entry(id.as_str()).or_default();
        }
    }
    out
}

/// Deltas as a multiset, in increasing order, e.g. `-2 ×2, +1 ×4, +3 ×1`.
fn delta_multiset(deltas: impl IntoIterator<Item = i64>) -> String {
    let mut n: BTreeMap<i64, u64> = BTreeMap::new();
    for d in deltas {
        *n.entry(d).or_default() += 1;
    }
    n.iter()
        .map(|(d, k)| format!("{d:+} ×{k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn node_names(nodes: &[NodeIx]) -> String {
    nodes
        .iter()
        .map(|n| name(*n))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why counter `id`'s value `value` on `nodes` is impossible.
fn counter_mismatch(
    id: &str,
    value: Option<i64>,
    nodes: &[NodeIx],
    c: &CounterInfo,
    sums: &SubsetSums,
) -> String {
    let known = c.known_sum();
    let acked: i64 = c.acked.iter().map(|(_, d)| d).sum();
    let mut d = match value {
        Some(v) => format!("counter {id} is {v} on {}: ", node_names(nodes)),
        None => format!("counter {id} is not an integer on {}: ", node_names(nodes)),
    };
    let _ = write!(
        d,
        "its {} acknowledged increments sum to {acked}",
        c.acked_ops.len()
    );
    if !c.acked_unchanged.is_empty() {
        let _ = write!(
            d,
            " ({} of them updates that changed nothing)",
            c.acked_unchanged.len()
        );
    }
    if !c.resolved.is_empty() {
        let _ = write!(
            d,
            ", and {} of unknown outcome that their event rows show applied add {} (known sum {known})",
            c.resolved.len(),
            delta_multiset(c.resolved.iter().map(|(_, d)| *d))
        );
    }
    if c.unknown.is_empty() {
        let _ = write!(
            d,
            "; none is of unknown outcome, so it must be exactly {known}"
        );
    } else {
        let _ = write!(
            d,
            "; {} of unknown outcome, any of which may have applied, have the deltas {}, so it must be {known} plus the sum of some of them: within {}..={} ({})",
            c.unknown.len(),
            delta_multiset(c.unknown.iter().map(|(_, d)| *d)),
            known + sums.min,
            known + sums.max,
            if sums.contiguous() {
                "every value in between possible"
            } else {
                "not every value in between"
            }
        );
    }
    if let Some(v) = value {
        let (lo, hi) = (known + sums.min, known + sums.max);
        if v < lo {
            let _ = write!(
                d,
                "; {v} is {} below the least possible value: increments lost",
                lo - v
            );
        } else if v > hi {
            let _ = write!(
                d,
                "; {v} is {} above the greatest possible value: an increment applied twice, or a refused one applied",
                v - hi
            );
        } else {
            let (below, above) = (sums.below(v - known), sums.above(v - known));
            let _ = write!(
                d,
                "; {v} falls between the possible values {} and {}",
                below.map_or("—".into(), |s| (known + s).to_string()),
                above.map_or("—".into(), |s| (known + s).to_string())
            );
        }
    }
    d
}

/// Counters (increments of [`Stmt::AddCounter`], final states'
/// `counters`; see the module docs):
///
/// - **CounterMismatch**: a final value that is not the sum of the
///   increments known applied plus that of some subset of those of unknown
///   outcome (or not an integer). One anomaly per (counter, value), naming
///   the nodes that hold it.
/// - **LostWrite**: a counter missing from a node's final state although an
///   increment known applied changed it; one anomaly per (node, counter).
/// - **FailedWriteVisible** / **InventedValue**: a counter row that only
///   failed upserts, or no request at all, could have created.
/// - **CounterWriteRefused**: an increment refused with a 4xx other than
///   408 (a time limit says nothing about the statement).
///
/// Nodes holding different values are reported by `check_divergence`.
fn check_counters(ix: &Index<'_>, out: &mut Vec<Anomaly>) {
    for op in &ix.h.ops {
        let (Outcome::Failed(why), OpKind::Write { stmts, .. }) = (&op.outcome, &op.kind) else {
            continue;
        };
        if why.starts_with("408") {
            continue;
        }
        for (id, delta, upsert) in stmts.iter().filter_map(Stmt::counter) {
            push(
                out,
                AnomalyKind::CounterWriteRefused,
                format!(
                    "{}: {} of counter {id} by {delta:+} (write op {}) was refused: {why}",
                    name(op.node),
                    if upsert { "upsert" } else { "update" },
                    op.id
                ),
                vec![op.id],
            );
        }
    }
    for (id, c) in &ix.counters {
        let mut by_value: BTreeMap<Option<i64>, Vec<NodeIx>> = BTreeMap::new();
        for f in &ix.h.finals {
            match f.counters.get(*id) {
                Some(v) => by_value.entry(*v).or_default().push(f.node),
                None if c.must_exist() => {
                    let ops: Vec<u64> =
                        c.acked.iter().chain(&c.resolved).map(|(o, _)| *o).collect();
                    push(
                        out,
                        AnomalyKind::LostWrite,
                        format!(
                            "{}: counter {id} is missing from its final state, although {} increments known applied changed it (write ops {})",
                            name(f.node),
                            ops.len(),
                            examples(
                                &ops.iter().map(u64::to_string).collect::<Vec<_>>(),
                                ops.len()
                            )
                        ),
                        op_list(ops),
                    );
                }
                None => {}
            }
        }
        if by_value.is_empty() {
            continue;
        }
        if c.creator.is_none() {
            let nodes: Vec<NodeIx> = by_value.values().flatten().copied().collect();
            let (kind, why, ops) = match c.failed_upsert {
                Some(op) => (
                    AnomalyKind::FailedWriteVisible,
                    format!("which only failed upserts could have created (write op {op})"),
                    vec![op],
                ),
                None => (
                    AnomalyKind::InventedValue,
                    "which no request could have created (no upsert of it was sent)".to_string(),
                    Vec::new(),
                ),
            };
            push(
                out,
                kind,
                format!(
                    "{}: final state holds counter {id}, {why}",
                    node_names(&nodes)
                ),
                ops,
            );
            continue;
        }
        let sums = c.unknown_sums();
        for (value, nodes) in &by_value {
            if c.possible(*value, &sums) {
                continue;
            }
            // The requests that could explain it: those of unknown outcome
            // first, then the last acknowledged ones.
            let ops = c
                .unknown
                .iter()
                .map(|(o, _)| *o)
                .chain(c.acked.iter().rev().map(|(o, _)| *o));
            push(
                out,
                AnomalyKind::CounterMismatch,
                counter_mismatch(id, *value, nodes, c, &sums),
                op_list(ops),
            );
        }
    }
}

/// The counters' metrics (`None`: a history without counters).
fn counter_metrics(ix: &Index<'_>) -> Option<CounterMetrics> {
    if ix.counters.is_empty() {
        return None;
    }
    let h = ix.h;
    let mut m = CounterMetrics {
        counters: ix.counters.len() as u64,
        acked_by_node: vec![0; ix.n],
        nodes: h.finals.len() as u64,
        identical: h.finals.windows(2).all(|w| w[0].counters == w[1].counters),
        ..CounterMetrics::default()
    };
    for (id, c) in &ix.counters {
        m.acked += c.acked_ops.len() as u64;
        m.acked_sum += c.acked.iter().map(|(_, d)| d).sum::<i64>();
        m.acked_unchanged += c.acked_unchanged.len() as u64;
        m.unknown += c.unknown_outcome;
        m.resolved += (c.resolved.len() + c.resolved_not.len()) as u64;
        m.failed += c.failed.len() as u64;
        for op in &c.acked_ops {
            if let Some(slot) = ix.ops.get(op).and_then(|o| m.acked_by_node.get_mut(o.node)) {
                *slot += 1;
            }
        }
        let values: Vec<Option<i64>> = h
            .finals
            .iter()
            .filter_map(|f| f.counters.get(*id).copied())
            .collect();
        let present = values.len() == h.finals.len() || !c.must_exist();
        let sums = c.unknown_sums();
        if present && c.creator.is_some() && values.iter().all(|v| c.possible(*v, &sums)) {
            m.possible += 1;
            if values.iter().all(|v| *v == Some(c.known_sum())) {
                m.exact += 1;
            }
        }
    }
    Some(m)
}

// ---------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------

fn kind_name(k: &OpKind) -> &'static str {
    match k {
        OpKind::Write { stmts, .. } if stmts.iter().any(|s| s.counter().is_some()) => "counter",
        OpKind::Write { .. } => "write",
        OpKind::Hostile { expect: 413, .. } => "oversized",
        OpKind::Hostile { attack, .. } if attack.starts_with("placement-") => "placement",
        OpKind::Hostile { .. } => "hostile",
        OpKind::CountEvents { .. } => "count",
        OpKind::TxnCheck { .. } => "txn-check",
        OpKind::ReadRegister { .. } => "read-register",
        OpKind::ReadTxn { .. } => "read-txn",
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Range-maximum table over one series, answering "first index at or after
/// `from` with value `>= v`" in `O(log n)` by binary lifting.
struct SparseMax {
    levels: Vec<Vec<u64>>,
}

impl SparseMax {
    fn new(values: Vec<u64>) -> SparseMax {
        let n = values.len();
        let mut levels = vec![values];
        let mut k = 1;
        while (1usize << k) <= n {
            let prev = &levels[k - 1];
            let half = 1usize << (k - 1);
            let next = (0..=n - (1usize << k))
                .map(|i| prev[i].max(prev[i + half]))
                .collect();
            levels.push(next);
            k += 1;
        }
        SparseMax { levels }
    }

    fn first_at_least(&self, from: usize, v: u64) -> Option<usize> {
        let n = self.levels[0].len();
        let mut i = from;
        for k in (0..self.levels.len()).rev() {
            let step = 1usize << k;
            if i + step <= n && self.levels[k][i] < v {
                i += step;
            }
        }
        (i < n).then_some(i)
    }
}

fn metrics(ix: &Index<'_>) -> Metrics {
    let h = ix.h;
    let mut m = Metrics {
        ops: h.ops.len() as u64,
        ..Metrics::default()
    };
    for name in [
        "write",
        "count",
        "txn-check",
        "read-register",
        "read-txn",
        "hostile",
        "oversized",
    ] {
        m.by_kind.insert(name.to_string(), OutcomeCounts::default());
    }
    for op in &h.ops {
        let c = m
            .by_kind
            .entry(kind_name(&op.kind).to_string())
            .or_default();
        match status(&op.outcome) {
            St::Ok => c.ok += 1,
            St::Failed => c.failed += 1,
            St::Unknown => c.unknown += 1,
        }
        if let (Outcome::Ok, OpKind::Write { stmts, .. }) = (&op.outcome, &op.kind) {
            for s in stmts {
                match s {
                    Stmt::InsertEvent { .. } => m.rows_acked += 1,
                    Stmt::SetRegister { .. } | Stmt::DeleteRegister { .. } => {
                        m.register_writes_acked += 1
                    }
                    Stmt::InsertLarge { len, .. } => {
                        m.large_acked += 1;
                        m.large_bytes_acked += u64::from(*len);
                    }
                    Stmt::InsertPinned { .. } | Stmt::AddCounter { .. } | Stmt::Invalid => {}
                }
            }
        }
    }

    // Acknowledged versioned writes, by completion.
    let mut versioned: Vec<(&Op, &str, u64)> = h
        .ops
        .iter()
        .filter(|op| op.outcome == Outcome::Ok)
        .filter_map(|op| match &op.kind {
            OpKind::Write {
                version: Some((a, v)),
                ..
            } => Some((op, a.as_str(), *v)),
            _ => None,
        })
        .collect();
    versioned.sort_by(|a, b| a.0.complete.total_cmp(&b.0.complete));

    // Per fault: the versions acknowledged by its heal (one sweep in heal
    // order).
    let mut by_heal: Vec<usize> = (0..h.faults.len()).collect();
    by_heal.sort_by(|&a, &b| h.faults[a].heal.total_cmp(&h.faults[b].heal));
    let mut targets: Vec<BTreeMap<&str, u64>> = vec![BTreeMap::new(); h.faults.len()];
    let mut running: BTreeMap<&str, u64> = BTreeMap::new();
    let mut j = 0;
    for &fi in &by_heal {
        while j < versioned.len() && versioned[j].0.complete <= h.faults[fi].heal {
            let (_, a, v) = versioned[j];
            let e = running.entry(a).or_insert(0);
            *e = (*e).max(v);
            j += 1;
        }
        targets[fi] = running.clone();
    }
    for (fi, f) in h.faults.iter().enumerate() {
        let until = h
            .faults
            .get(fi + 1)
            .map_or(f64::INFINITY, |next| next.start);
        let nodes = ix.nodes_at(f.heal);
        m.faults.push(FaultResult {
            label: f.label.clone(),
            kind: f.kind.clone(),
            start: f.start,
            heal: f.heal,
            hold: f.heal - f.start,
            converged_after: convergence_time(ix, &nodes, f.heal, until, &targets[fi]),
            membership_after: membership_time(ix, &nodes, f.heal, until),
        });
    }

    let all: Vec<NodeIx> = (0..ix.n).collect();
    let final_target: BTreeMap<&str, u64> = max_versions(ix)
        .into_iter()
        .map(|(a, (v, _))| (a, v))
        .collect();
    m.converged_after_quiet =
        convergence_time(ix, &all, h.quiet_from, f64::INFINITY, &final_target);
    m.membership_after_quiet = membership_time(ix, &all, h.quiet_from, f64::INFINITY);

    m.lag = lag(ix, &versioned);

    m.join = h.join.as_ref().map(|j| JoinMetrics {
        node: j.node,
        rows: j.rows,
        ready_after: j.ready - j.spawned,
        caught_up_after: j.caught_up.map(|c| c - j.spawned),
        catch_up: j.caught_up.map(|c| c - j.ready),
    });
    m.placement = h.pinned.as_ref().map(|p| placement_metrics(ix, p));
    m.counters = counter_metrics(ix);
    m
}

fn placement_metrics(ix: &Index<'_>, p: &Pinned) -> PlacementMetrics {
    let h = ix.h;
    let mut m = PlacementMetrics {
        table: p.table.clone(),
        regions: p.regions.clone(),
        ..PlacementMetrics::default()
    };
    for f in &h.finals {
        if p.allows(h.region(f.node)) {
            m.inside.push((f.node, f.pinned.len() as u64));
        } else {
            m.outside.push(f.node);
            if let Some(s) = f.file.as_ref().filter(|s| s.error.is_none()) {
                m.files_checked += 1;
                m.found_outside += s.total();
            }
        }
        if let Some(e) = &f.end {
            m.rows_refused_max = m.rows_refused_max.max(e.placement_rows_refused);
        }
    }
    for s in &h.samples {
        m.rows_refused_max = m.rows_refused_max.max(s.placement_rows_refused);
    }
    for r in ix.pinned.values().filter(|r| r.st == St::Ok) {
        m.rows_acked += 1;
        if !r.events.is_empty() {
            m.rows_acked_with_events += 1;
        }
    }
    for op in h.ops.iter().filter(|op| is_placement_probe(op)) {
        match &op.kind {
            OpKind::Hostile {
                status: Some(403),
                answer: Some(a),
                ..
            } if a.contains(PLACEMENT_REFUSAL) => m.probes_refused += 1,
            OpKind::Hostile {
                status: None | Some(503),
                ..
            } => m.probes_unknown += 1,
            _ => m.probes_other += 1,
        }
    }
    m
}

/// Replication lag (see [`LagMetrics`]).
fn lag(ix: &Index<'_>, versioned: &[(&Op, &str, u64)]) -> LagMetrics {
    let h = ix.h;
    // Actor → index, numbered in key order: the per-actor tables below are
    // built by iterating the keys.
    let actors: BTreeMap<&str, usize> = versioned
        .iter()
        .map(|(_, a, _)| *a)
        .collect::<BTreeSet<&str>>()
        .into_iter()
        .enumerate()
        .map(|(i, a)| (a, i))
        .collect();
    // Per node: sample times, and per actor a range-max table of
    // complete_through.
    let tables: Vec<(Vec<f64>, Vec<SparseMax>)> = (0..ix.n)
        .map(|node| {
            let s = ix.samples.get(node).map(|v| v.as_slice()).unwrap_or(&[]);
            let times = s.iter().map(|x| x.at).collect();
            let per_actor = actors
                .keys()
                .map(|a| {
                    SparseMax::new(
                        s.iter()
                            .map(|x| x.complete_through.get(*a).copied().unwrap_or(0))
                            .collect(),
                    )
                })
                .collect();
            (times, per_actor)
        })
        .collect();

    // Fault intervals, merged, for "calm".
    let mut intervals: Vec<(f64, f64)> = h.faults.iter().map(|f| (f.start, f.heal)).collect();
    intervals.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut merged: Vec<(f64, f64)> = Vec::new();
    for (s, e) in intervals {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    let calm = |from: f64, to: f64| {
        let i = merged.partition_point(|iv| iv.1 < from);
        merged.get(i).is_none_or(|iv| iv.0 > to)
    };

    let mut all: Vec<(f64, u64)> = Vec::new();
    let mut quiet: Vec<(f64, u64)> = Vec::new();
    let mut out = LagMetrics::default();
    for &(op, actor, v) in versioned {
        let ai = actors[actor];
        let mut visible = op.complete;
        let mut seen = true;
        for (node, (times, per_actor)) in tables.iter().enumerate() {
            if !ix.participates(node, op.complete) {
                continue;
            }
            let from = times.partition_point(|t| *t < op.complete);
            match per_actor[ai].first_at_least(from, v) {
                Some(i) => visible = visible.max(times[i]),
                None => {
                    seen = false;
                    break;
                }
            }
        }
        if !seen {
            out.not_visible += 1;
            continue;
        }
        let l = visible - op.complete;
        all.push((l, op.id));
        if calm(op.complete, visible) {
            quiet.push((l, op.id));
        }
    }
    let stats = |v: &mut Vec<(f64, u64)>| {
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        let xs: Vec<f64> = v.iter().map(|x| x.0).collect();
        (
            v.len() as u64,
            percentile(&xs, 0.5),
            percentile(&xs, 0.99),
            v.last().map(|x| x.0),
            v.last().map(|x| x.1),
        )
    };
    (out.measured, out.p50, out.p99, out.max, out.max_op) = stats(&mut all);
    (
        out.calm_measured,
        out.calm_p50,
        out.calm_p99,
        out.calm_max,
        out.calm_max_op,
    ) = stats(&mut quiet);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{FaultRecord, FileScan, JoinRecord, NodeEnd, NodeRecord, Quarantined};

    fn actor(node: NodeIx) -> String {
        format!("a{}", node + 1)
    }

    fn ev(id: &str, txn: &str, size: u32) -> Stmt {
        Stmt::InsertEvent {
            id: id.into(),
            txn: txn.into(),
            size,
            pad: 0,
        }
    }

    fn set(key: &str, value: &str) -> Stmt {
        Stmt::SetRegister {
            key: key.into(),
            value: value.into(),
        }
    }

    fn del(key: &str) -> Stmt {
        Stmt::DeleteRegister { key: key.into() }
    }

    fn unknown() -> Outcome {
        Outcome::Unknown("timeout".into())
    }

    fn failed() -> Outcome {
        Outcome::Failed("400 bad sql".into())
    }

    /// Builds synthetic histories.
    struct B {
        h: History,
        next: u64,
        /// Highest version per actor so far.
        versions: BTreeMap<String, u64>,
        /// Each node's current actor (a restart after SIGKILL changes it).
        actors: Vec<String>,
    }

    impl B {
        fn new(nodes: usize) -> B {
            let h = History {
                seed: 1,
                nodes,
                node_records: (0..nodes)
                    .map(|i| NodeRecord {
                        name: name(i),
                        region: String::new(),
                        actor: actor(i),
                        actors: vec![actor(i)],
                        started: vec![0.0],
                        crashes: Vec::new(),
                    })
                    .collect(),
                ..History::default()
            };
            B {
                h,
                next: 1,
                versions: (0..nodes).map(|i| (actor(i), 0)).collect(),
                actors: (0..nodes).map(actor).collect(),
            }
        }

        fn op(&mut self, node: NodeIx, t0: f64, t1: f64, kind: OpKind, outcome: Outcome) -> u64 {
            let id = self.next;
            self.next += 1;
            self.h.ops.push(Op {
                id,
                client: node as u32,
                node,
                invoke: t0,
                complete: t1,
                kind,
                outcome,
            });
            id
        }

        fn write(&mut self, node: NodeIx, t0: f64, t1: f64, stmts: Vec<Stmt>, o: Outcome) -> u64 {
            let (token, version) = if o == Outcome::Ok {
                let a = self.actors[node].clone();
                let v = self.versions.entry(a.clone()).or_insert(0);
                *v += 1;
                let v = *v;
                (Some(format!("{a}:{v}")), Some((a, v)))
            } else {
                (None, None)
            };
            let kind = OpKind::Write {
                stmts,
                token,
                version,
            };
            self.op(node, t0, t1, kind, o)
        }

        fn ok(&mut self, node: NodeIx, t0: f64, t1: f64, stmts: Vec<Stmt>) -> u64 {
            self.write(node, t0, t1, stmts, Outcome::Ok)
        }

        fn read(
            &mut self,
            node: NodeIx,
            t0: f64,
            t1: f64,
            key: &str,
            after: Option<u64>,
            value: Option<&str>,
        ) -> u64 {
            let kind = OpKind::ReadRegister {
                key: key.into(),
                token: after.map(|a| format!("tok{a}")),
                after,
                value: Some(value.map(String::from)),
            };
            self.op(node, t0, t1, kind, Outcome::Ok)
        }

        #[allow(clippy::too_many_arguments)]
        fn read_txn(
            &mut self,
            node: NodeIx,
            t0: f64,
            t1: f64,
            txn: &str,
            size: u32,
            after: u64,
            count: u64,
        ) -> u64 {
            let kind = OpKind::ReadTxn {
                txn: txn.into(),
                size,
                token: format!("tok{after}"),
                after,
                count: Some(count),
            };
            self.op(node, t0, t1, kind, Outcome::Ok)
        }

        fn count(&mut self, node: NodeIx, t0: f64, t1: f64, count: u64) -> u64 {
            self.op(
                node,
                t0,
                t1,
                OpKind::CountEvents { count: Some(count) },
                Outcome::Ok,
            )
        }

        fn sample(&mut self, node: NodeIx, at: f64, ct: &[(NodeIx, u64)]) {
            self.h.samples.push(Sample {
                at,
                node,
                complete_through: ct.iter().map(|(n, v)| (actor(*n), *v)).collect(),
                placement_rows_refused: 0,
            });
        }

        /// Every node holds every acknowledged version so far.
        fn sample_all(&mut self, at: f64) {
            for n in 0..self.h.nodes {
                self.h.samples.push(Sample {
                    at,
                    node: n,
                    complete_through: self.versions.clone(),
                    placement_rows_refused: 0,
                });
            }
        }

        fn view(&mut self, node: NodeIx, at: f64, members: &[(NodeIx, &str)]) {
            self.h.members.push(MembersView {
                at,
                node,
                members: members
                    .iter()
                    .map(|(n, s)| (name(*n), s.to_string()))
                    .collect(),
            });
        }

        /// Every node sees every node (itself included) alive.
        fn views_all(&mut self, at: f64) {
            let all: Vec<(NodeIx, &str)> = (0..self.h.nodes).map(|n| (n, "alive")).collect();
            for n in 0..self.h.nodes {
                self.view(n, at, &all);
            }
        }

        fn fault(&mut self, start: f64, heal: f64) {
            self.h.faults.push(FaultRecord {
                label: format!("partition at {start}"),
                kind: "partition-halves".into(),
                start,
                heal,
                down: Vec::new(),
            });
        }

        /// Quiet from `at`: converged samples and views right after, and
        /// identical finals modelled by applying the acknowledged writes in
        /// completion order.
        fn settle(&mut self, at: f64) {
            self.h.quiet_from = at;
            self.sample_all(at + 0.1);
            self.views_all(at + 0.1);
            let mut writes: Vec<&Op> = self
                .h
                .ops
                .iter()
                .filter(|o| o.outcome == Outcome::Ok && matches!(o.kind, OpKind::Write { .. }))
                .collect();
            writes.sort_by(|a, b| a.complete.total_cmp(&b.complete));
            let mut f = FinalState::default();
            for w in writes {
                let OpKind::Write { stmts, token, .. } = &w.kind else {
                    unreachable!()
                };
                // An empty token: the write changed nothing.
                if token.as_deref() == Some("") {
                    continue;
                }
                for s in stmts {
                    match s {
                        Stmt::InsertEvent { id, txn, size, .. } => {
                            f.events.insert(id.clone(), (txn.clone(), u64::from(*size)));
                        }
                        Stmt::SetRegister { key, value } => {
                            f.registers.insert(key.clone(), value.clone());
                        }
                        Stmt::DeleteRegister { key } => {
                            f.registers.remove(key);
                        }
                        Stmt::InsertLarge {
                            id,
                            len,
                            seed,
                            text,
                        } => {
                            f.large.insert(id.clone(), large_final(*seed, *len, *text));
                        }
                        Stmt::InsertPinned { id, txn } => {
                            f.pinned.insert(id.clone(), txn.clone());
                        }
                        // An upsert creates the row or adds to it; an
                        // update only adds to a row that is there.
                        Stmt::AddCounter { id, delta, upsert } => match f.counters.get_mut(id) {
                            Some(Some(n)) => *n += delta,
                            None if *upsert => {
                                f.counters.insert(id.clone(), Some(*delta));
                            }
                            _ => {}
                        },
                        Stmt::Invalid => {}
                    }
                }
            }
            // With a pinned table: its rows only on nodes of its regions,
            // and a clean file everywhere.
            let finals = (0..self.h.nodes)
                .map(|node| {
                    let mut fs = FinalState { node, ..f.clone() };
                    if let Some(p) = &self.h.pinned {
                        if !p.allows(self.h.region(node)) {
                            fs.pinned.clear();
                        }
                        let n = fs.pinned.len() as u64;
                        fs.file = Some(FileScan {
                            path: format!("/x/{}.db", name(node)),
                            rows: n,
                            clock_rows: n,
                            ..FileScan::default()
                        });
                    }
                    fs
                })
                .collect();
            self.h.finals = finals;
        }

        /// Sets a register in every final state.
        fn final_reg(&mut self, key: &str, value: Option<&str>) {
            for f in &mut self.h.finals {
                match value {
                    Some(v) => f.registers.insert(key.into(), v.into()),
                    None => f.registers.remove(key),
                };
            }
        }

        fn check(&self) -> CheckResult {
            check(&self.h)
        }
    }

    fn kinds(r: &CheckResult) -> Vec<AnomalyKind> {
        r.anomalies.iter().map(|a| a.kind).collect()
    }

    fn assert_clean(r: &CheckResult) {
        assert!(r.is_clean(), "unexpected anomalies: {:#?}", r.anomalies);
    }

    /// Asserts that exactly `n` anomalies of `kind` were found and nothing
    /// else; returns them.
    fn only(r: &CheckResult, kind: AnomalyKind, n: usize) -> Vec<Anomaly> {
        let of: Vec<Anomaly> = r
            .anomalies
            .iter()
            .filter(|a| a.kind == kind)
            .cloned()
            .collect();
        assert_eq!(
            (of.len(), r.anomalies.len()),
            (n, n),
            "expected {n} × {kind} only, got: {:#?}",
            r.anomalies
        );
        of
    }

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-9)
    }

    /// A small clean run with one partition.
    fn clean() -> (B, [u64; 4]) {
        let mut b = B::new(3);
        let w1 = b.ok(0, 0.0, 0.1, vec![ev("e1", "t1", 2), ev("e2", "t1", 2)]);
        let w2 = b.ok(1, 0.05, 0.15, vec![set("k", "x1")]);
        b.sample_all(0.3);
        b.read(2, 0.31, 0.32, "k", Some(w2), Some("x1"));
        b.read_txn(2, 0.33, 0.34, "t1", 2, w1, 2);
        b.count(2, 0.35, 0.36, 2);
        b.count(2, 0.40, 0.41, 2);
        b.fault(1.0, 2.0);
        let w3 = b.ok(0, 1.1, 1.2, vec![set("k", "x2"), ev("e3", "t3", 1)]);
        b.sample(0, 1.3, &[(0, 2), (1, 1)]);
        b.sample(1, 1.3, &[(0, 1), (1, 1)]);
        b.sample(2, 1.3, &[(0, 1), (1, 1)]);
        // n2 does not see x2 yet: another node, no token.
        b.read(1, 1.4, 1.5, "k", None, Some("x1"));
        b.count(1, 1.4, 1.5, 2);
        b.read(0, 1.4, 1.5, "k", None, Some("x2"));
        b.count(0, 1.4, 1.5, 3);
        b.views_all(2.2);
        b.sample_all(2.3);
        b.read(1, 2.4, 2.5, "k", None, Some("x2"));
        let w4 = b.ok(1, 3.0, 3.1, vec![del("k")]);
        b.read(1, 3.2, 3.3, "k", None, None);
        b.read(2, 3.2, 3.3, "k", Some(w4), None);
        b.settle(4.0);
        (b, [w1, w2, w3, w4])
    }

    #[test]
    fn clean_history_has_no_anomalies_and_sensible_metrics() {
        let (b, [_, _, w3, _]) = clean();
        let r = b.check();
        assert_clean(&r);
        let m = &r.metrics;
        assert_eq!(m.ops, b.h.ops.len() as u64);
        assert_eq!(m.by_kind["write"].ok, 4);
        assert_eq!(m.by_kind["read-register"].ok, 6);
        assert_eq!(m.by_kind["count"].ok, 4);
        assert_eq!(m.by_kind["read-txn"].ok, 1);
        assert_eq!(m.rows_acked, 3);
        assert_eq!(m.register_writes_acked, 3);
        assert_eq!(m.faults.len(), 1);
        let f = &m.faults[0];
        assert_eq!(f.hold, 1.0);
        assert!(close(f.converged_after, 0.3), "{f:?}");
        assert!(close(f.membership_after, 0.2), "{f:?}");
        assert!(close(m.converged_after_quiet, 0.1));
        assert!(close(m.membership_after_quiet, 0.1));
        let lag = &m.lag;
        assert_eq!((lag.measured, lag.not_visible), (4, 0));
        // w3 became visible everywhere only after the heal.
        assert_eq!(lag.max_op, Some(w3));
        assert!(close(lag.max, 2.3 - 1.2));
        assert_eq!(lag.calm_measured, 3);
        assert!(close(lag.calm_max, 1.0));
        assert!(close(lag.p50, 0.2), "{lag:?}");
        assert!(m.join.is_none());
        // Serializes.
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("converged_after"));
    }

    #[test]
    fn lag_is_measured_per_actor_whatever_the_order_writes_come_in() {
        // The first acknowledged write is by the actor that sorts last, and
        // the actors reach different versions: the per-actor tables must
        // still be matched to the right actor.
        let mut b = B::new(3);
        b.ok(2, 0.0, 0.1, vec![ev("a-0", "a", 1)]);
        b.ok(0, 0.0, 0.1, vec![ev("b-0", "b", 1)]);
        b.ok(0, 0.1, 0.15, vec![ev("c-0", "c", 1)]);
        b.sample(0, 0.2, &[(0, 2), (2, 1)]);
        b.sample(1, 0.2, &[(0, 2)]);
        b.sample(2, 0.2, &[(0, 2), (2, 1)]);
        b.sample(1, 0.5, &[(0, 2), (2, 1)]);
        b.settle(1.0);
        let lag = b.check().metrics.lag;
        assert_eq!((lag.measured, lag.not_visible), (3, 0), "{lag:?}");
        assert!(close(lag.max, 0.4), "{lag:?}");
        assert_eq!(lag.max_op, Some(1), "the write of n3 waited for n2");
    }

    #[test]
    fn fault_convergence_is_none_without_a_sample_before_the_next_fault() {
        let (mut b, _) = clean();
        // A second fault starting before the post-heal samples.
        b.h.faults.push(FaultRecord {
            label: "kill n2".into(),
            kind: "kill".into(),
            start: 2.1,
            heal: 2.6,
            down: vec![1],
        });
        let r = b.check();
        assert_eq!(r.metrics.faults[0].converged_after, None);
        assert_eq!(r.metrics.faults[0].membership_after, None);
        assert!(r.metrics.faults[1].converged_after.is_some());
    }

    #[test]
    fn join_metrics() {
        let (mut b, _) = clean();
        b.h.join = Some(JoinRecord {
            node: 2,
            rows: 10,
            spawned: 0.0,
            ready: 0.5,
            caught_up: Some(2.0),
        });
        let j = b.check().metrics.join.unwrap();
        assert_eq!(
            (j.ready_after, j.caught_up_after, j.catch_up),
            (0.5, Some(2.0), Some(1.5))
        );
    }

    #[test]
    fn lost_write() {
        let (mut b, [w1, ..]) = clean();
        b.h.finals[1].events.remove("e2");
        let r = b.check();
        let lost: Vec<_> = r
            .anomalies
            .iter()
            .filter(|a| a.kind == AnomalyKind::LostWrite)
            .collect();
        assert_eq!(lost.len(), 1, "{:#?}", r.anomalies);
        assert_eq!(lost[0].ops, vec![w1]);
        assert!(lost[0].detail.starts_with("n2:"), "{}", lost[0].detail);
        // The missing row also makes the txn half there, and n2 diverge.
        assert!(kinds(&r).contains(&AnomalyKind::HalfTransaction));
        assert!(kinds(&r).contains(&AnomalyKind::Divergence));
    }

    #[test]
    fn failed_write_visible() {
        let (mut b, _) = clean();
        let w = b.write(
            0,
            5.0,
            5.1,
            vec![ev("f1", "tf", 1), set("j", "fv"), Stmt::Invalid],
            failed(),
        );
        b.read(1, 5.2, 5.3, "j", None, Some("fv"));
        for f in &mut b.h.finals {
            f.events.insert("f1".into(), ("tf".into(), 1));
        }
        let r = b.check();
        let a = only(&r, AnomalyKind::FailedWriteVisible, 4);
        assert!(a.iter().all(|a| a.ops.contains(&w)));
        // The final register value is fine if absent.
        b.final_reg("j", Some("fv"));
        let r = b.check();
        only(&r, AnomalyKind::FailedWriteVisible, 7);
    }

    #[test]
    fn half_transaction_in_finals_txn_check_and_read_txn() {
        let (mut b, [w1, ..]) = clean();
        // An unknown-outcome write may be applied, but whole.
        let w = b.write(
            0,
            5.0,
            5.1,
            vec![ev("u1", "tu", 2), ev("u2", "tu", 2)],
            unknown(),
        );
        for f in &mut b.h.finals {
            f.events.insert("u1".into(), ("tu".into(), 2));
        }
        let r = b.check();
        let a = only(&r, AnomalyKind::HalfTransaction, 3);
        assert_eq!(a[0].ops, vec![w]);

        let (mut b, _) = clean();
        let c = b.op(
            2,
            5.0,
            5.1,
            OpKind::TxnCheck {
                writer: 0,
                from_seq: 0,
                partial: Some(vec![("t1".into(), 1, 2)]),
            },
            Outcome::Ok,
        );
        let r = b.check();
        let a = only(&r, AnomalyKind::HalfTransaction, 1);
        assert_eq!(a[0].ops, vec![c, w1]);

        let (mut b, _) = clean();
        let rt = b.read_txn(1, 5.0, 5.1, "t1", 2, w1, 1);
        let r = b.check();
        let a = only(&r, AnomalyKind::HalfTransaction, 1);
        assert_eq!(a[0].ops, vec![rt, w1]);
    }

    #[test]
    fn divergence() {
        let mut b = B::new(3);
        // Concurrent writes on two nodes: either may win, but everywhere.
        b.ok(0, 0.0, 0.1, vec![set("k", "x1")]);
        b.ok(1, 0.0, 0.1, vec![set("k", "x2")]);
        b.settle(1.0);
        b.h.finals[0].registers.insert("k".into(), "x1".into());
        b.h.finals[1].registers.insert("k".into(), "x2".into());
        b.h.finals[2].registers.insert("k".into(), "x2".into());
        let r = b.check();
        let a = only(&r, AnomalyKind::Divergence, 1);
        assert!(
            a[0].detail.contains("{n1} differs from {n2, n3}"),
            "{}",
            a[0].detail
        );
        assert!(
            a[0].detail.contains("k: n2=\"x2\" n1=\"x1\""),
            "{}",
            a[0].detail
        );
    }

    #[test]
    fn stale_token_read_on_events() {
        let (mut b, [w1, ..]) = clean();
        let rt = b.read_txn(1, 5.0, 5.1, "t1", 2, w1, 0);
        let r = b.check();
        let a = only(&r, AnomalyKind::StaleTokenRead, 1);
        assert_eq!(a[0].ops, vec![rt, w1]);
    }

    #[test]
    fn stale_token_read_on_registers() {
        let mut b = B::new(3);
        let w1 = b.ok(0, 0.0, 1.0, vec![set("k", "a")]);
        let w2 = b.ok(0, 2.0, 3.0, vec![set("k", "b")]);
        // With w2's token, a (acknowledged by n1 before w2 was sent) is stale.
        let r1 = b.read(1, 4.0, 4.1, "k", Some(w2), Some("a"));
        b.settle(10.0);
        let r = b.check();
        let a = only(&r, AnomalyKind::StaleTokenRead, 1);
        assert_eq!(a[0].ops, vec![r1, w2, w1]);

        // No row at all after a set: the initial state is stale.
        let mut b = B::new(3);
        let w1 = b.ok(0, 0.0, 1.0, vec![set("k", "a")]);
        let r1 = b.read(1, 4.0, 4.1, "k", Some(w1), None);
        b.settle(10.0);
        let a = only(&b.check(), AnomalyKind::StaleTokenRead, 1);
        assert_eq!(a[0].ops, vec![r1, w1]);

        // No row, where the only delete was acknowledged before the set.
        let mut b = B::new(3);
        b.ok(0, 0.0, 1.0, vec![del("k")]);
        let w1 = b.ok(0, 2.0, 3.0, vec![set("k", "a")]);
        b.read(1, 4.0, 4.1, "k", Some(w1), None);
        b.settle(10.0);
        only(&b.check(), AnomalyKind::StaleTokenRead, 1);
    }

    #[test]
    fn non_monotonic_count() {
        let (mut b, _) = clean();
        let r1 = b.count(1, 5.0, 5.1, 3);
        let r2 = b.count(1, 5.2, 5.3, 2);
        let r3 = b.count(1, 5.4, 5.5, 1);
        // Concurrent with r1 (sent before it completed): not ordered.
        b.count(1, 5.05, 5.06, 2);
        let a = only(&b.check(), AnomalyKind::NonMonotonicRead, 1);
        assert_eq!(a[0].ops, vec![r1, r2, r3]);
    }

    #[test]
    fn non_monotonic_register_read() {
        let mut b = B::new(3);
        b.ok(0, 0.0, 1.0, vec![set("k", "a")]);
        let w2 = b.ok(0, 2.0, 3.0, vec![set("k", "b")]);
        let r1 = b.read(1, 4.0, 4.1, "k", None, Some("b"));
        let r2 = b.read(1, 4.2, 4.3, "k", None, Some("a"));
        // On n3 the same reads in the other order are fine.
        b.read(2, 4.0, 4.1, "k", None, Some("a"));
        b.read(2, 4.2, 4.3, "k", None, Some("b"));
        // Concurrent reads on n2 are not ordered.
        b.read(1, 4.05, 4.15, "k", None, Some("a"));
        b.settle(10.0);
        let a = only(&b.check(), AnomalyKind::NonMonotonicRead, 1);
        assert_eq!(a[0].ops, vec![r1, w2, r2]);

        // None after having seen a value, with no delete ever.
        let mut b = B::new(3);
        b.ok(0, 0.0, 1.0, vec![set("k", "a")]);
        b.read(1, 4.0, 4.1, "k", None, Some("a"));
        b.read(1, 4.2, 4.3, "k", None, None);
        b.settle(10.0);
        only(&b.check(), AnomalyKind::NonMonotonicRead, 1);
    }

    #[test]
    fn read_your_writes_and_token_knowledge() {
        // A node's own acknowledged write is applied there.
        let mut b = B::new(3);
        b.ok(0, 0.0, 1.0, vec![set("k", "a")]);
        let w2 = b.ok(0, 2.0, 3.0, vec![set("k", "b")]);
        let r = b.read(0, 4.0, 4.1, "k", None, Some("a"));
        b.settle(10.0);
        let a = only(&b.check(), AnomalyKind::NonMonotonicRead, 1);
        assert_eq!(a[0].ops, vec![w2, r]);

        // A token read shows its write applied for later reads on that node.
        let mut b = B::new(3);
        b.ok(0, 0.0, 1.0, vec![set("k", "a")]);
        let w2 = b.ok(0, 2.0, 3.0, vec![set("k", "b")]);
        let t = b.read_txn(1, 4.0, 4.1, "none", 0, w2, 0);
        let r = b.read(1, 4.2, 4.3, "k", None, Some("a"));
        b.settle(10.0);
        let a = only(&b.check(), AnomalyKind::NonMonotonicRead, 1);
        assert_eq!(a[0].ops, vec![t, w2, r]);
    }

    #[test]
    fn invented_value() {
        let (mut b, _) = clean();
        b.read(1, 5.0, 5.1, "k", None, Some("zzz"));
        b.final_reg("k2", Some("yyy"));
        only(&b.check(), AnomalyKind::InventedValue, 4);

        // An event row nobody inserted, on every node.
        let (mut b, _) = clean();
        for f in &mut b.h.finals {
            f.events.insert("ghost-0".into(), ("ghost".into(), 1));
        }
        let n = b.h.finals.len();
        let a = only(&b.check(), AnomalyKind::InventedValue, n);
        assert!(a[0].detail.contains("ghost-0"), "{}", a[0].detail);
    }

    #[test]
    fn superseded_final_value() {
        let mut b = B::new(3);
        let w1 = b.ok(0, 0.0, 1.0, vec![set("k", "a")]);
        let w2 = b.ok(0, 2.0, 3.0, vec![set("k", "b")]);
        b.settle(10.0);
        b.final_reg("k", Some("a"));
        let a = only(&b.check(), AnomalyKind::SupersededFinalValue, 3);
        assert_eq!(a[0].ops, vec![w1, w2]);

        // No row but an acknowledged set and no delete.
        b.final_reg("k", None);
        only(&b.check(), AnomalyKind::SupersededFinalValue, 3);

        // No row where the delete was followed by a set on the same node.
        let mut b = B::new(3);
        b.ok(1, 0.0, 1.0, vec![del("k")]);
        b.ok(1, 2.0, 3.0, vec![set("k", "b")]);
        b.settle(10.0);
        b.final_reg("k", None);
        only(&b.check(), AnomalyKind::SupersededFinalValue, 3);
    }

    #[test]
    fn not_converged() {
        let (mut b, [_, _, w3, _]) = clean();
        b.sample(2, 4.5, &[(1, 2)]);
        let a = only(&b.check(), AnomalyKind::NotConverged, 1);
        assert!(a[0].detail.starts_with("n3:"), "{}", a[0].detail);
        assert_eq!(a[0].ops, vec![w3]);
        assert!(close(b.check().metrics.converged_after_quiet, 0.1));

        // No sample at all after quiet.
        let (mut b, _) = clean();
        b.h.samples.retain(|s| s.node != 1 || s.at < 4.0);
        only(&b.check(), AnomalyKind::NotConverged, 1);
    }

    #[test]
    fn membership_not_converged() {
        let (mut b, _) = clean();
        b.view(1, 5.0, &[(0, "alive"), (1, "alive"), (2, "suspect")]);
        b.h.members.retain(|v| v.node != 2);
        let a = only(&b.check(), AnomalyKind::MembershipNotConverged, 2);
        assert!(a[0].detail.contains("n3 suspect"), "{}", a[0].detail);
        assert!(
            a[1].detail.contains("n3: no membership view"),
            "{}",
            a[1].detail
        );
        assert_eq!(b.check().metrics.membership_after_quiet, None);
    }

    #[test]
    fn agent_crash() {
        let (mut b, _) = clean();
        b.h.node_records[1]
            .crashes
            .push((2.5, "signal 6".into(), "thread panicked".into()));
        let a = only(&b.check(), AnomalyKind::AgentCrash, 1);
        assert!(a[0].detail.contains("n2") && a[0].detail.contains("panicked"));
    }

    #[test]
    fn concurrent_writes_older_looking_value_wins() {
        let mut b = B::new(3);
        b.ok(0, 0.0, 1.0, vec![set("k", "a")]);
        b.ok(1, 2.0, 3.0, vec![set("k", "b")]);
        // n3 applied b first, then a (which won the merge).
        b.read(2, 4.0, 4.1, "k", None, Some("b"));
        b.read(2, 4.2, 4.3, "k", None, Some("a"));
        b.settle(10.0);
        b.final_reg("k", Some("a"));
        assert_clean(&b.check());
    }

    #[test]
    fn unknown_write_value_may_appear() {
        let mut b = B::new(3);
        b.ok(0, 0.0, 1.0, vec![set("k", "a")]);
        b.write(
            0,
            2.0,
            3.0,
            vec![set("k", "u"), ev("u1", "tu", 1)],
            unknown(),
        );
        b.read(1, 4.0, 4.1, "k", None, Some("u"));
        b.read(1, 4.2, 4.3, "k", None, Some("u"));
        b.settle(10.0);
        b.final_reg("k", Some("u"));
        for f in &mut b.h.finals {
            f.events.insert("u1".into(), ("tu".into(), 1));
        }
        assert_clean(&b.check());
        // Or not appear at all.
        b.final_reg("k", Some("a"));
        for f in &mut b.h.finals {
            f.events.remove("u1");
        }
        assert_clean(&b.check());
    }

    #[test]
    fn none_after_delete_is_fine() {
        let mut b = B::new(3);
        let w1 = b.ok(0, 0.0, 1.0, vec![set("k", "a")]);
        let d = b.ok(1, 2.0, 3.0, vec![del("k")]);
        // The delete on another node may win over w1.
        b.read(2, 4.0, 4.1, "k", Some(w1), None);
        b.read(2, 4.2, 4.3, "k", Some(d), None);
        b.read(0, 4.2, 4.3, "k", None, None);
        b.read(1, 4.2, 4.3, "k", None, None);
        // A delete of unknown outcome sent after w1 on its node.
        let mut b2 = B::new(3);
        let w = b2.ok(0, 0.0, 1.0, vec![set("k", "a")]);
        b2.write(0, 2.0, 3.0, vec![del("k")], unknown());
        b2.read(1, 4.0, 4.1, "k", Some(w), None);
        b2.settle(10.0);
        b2.final_reg("k", None);
        assert_clean(&b2.check());
        b.settle(10.0);
        assert_clean(&b.check());
    }

    #[test]
    fn delete_token_proves_nothing_elsewhere() {
        // n2 deletes k, n1 receives it, then n1's own delete changes nothing
        // (no tombstone, no version): n3 holding that delete's token may not
        // hold n2's delete yet, and still show a.
        let mut b = B::new(3);
        b.ok(0, 0.0, 1.0, vec![set("k", "a")]);
        b.ok(1, 1.5, 1.6, vec![del("k")]);
        let d = b.ok(0, 2.0, 3.0, vec![del("k"), ev("e1", "t1", 1)]);
        b.read(2, 4.0, 4.1, "k", Some(d), Some("a"));
        b.read(2, 4.2, 4.3, "k", None, Some("a"));
        b.settle(10.0);
        assert_clean(&b.check());
        // On n1 itself a is gone for good.
        let r = b.read(0, 4.0, 4.1, "k", None, Some("a"));
        let a = only(&b.check(), AnomalyKind::NonMonotonicRead, 1);
        assert_eq!(a[0].ops, vec![d, r]);
    }

    #[test]
    fn old_value_on_another_node_without_token_is_fine() {
        let mut b = B::new(3);
        b.ok(0, 0.0, 1.0, vec![set("k", "a")]);
        b.ok(0, 2.0, 3.0, vec![set("k", "b")]);
        b.read(1, 4.0, 4.1, "k", None, Some("a"));
        b.read(1, 4.2, 4.3, "k", None, Some("a"));
        b.read(2, 4.0, 4.1, "k", None, None);
        b.read(2, 4.2, 4.3, "k", None, Some("b"));
        b.settle(10.0);
        assert_clean(&b.check());
    }

    fn large(id: &str, len: u32, seed: u64) -> Stmt {
        Stmt::InsertLarge {
            id: id.into(),
            len,
            seed,
            text: seed.is_multiple_of(2),
        }
    }

    /// A hostile request to `node` that got `status` (`None`: no answer).
    fn hostile(
        b: &mut B,
        node: NodeIx,
        t: f64,
        expect: u16,
        status: Option<u16>,
        rows: &[&str],
        file: Option<&str>,
    ) -> u64 {
        let outcome = match status {
            Some(s) if (200..300).contains(&s) => Outcome::Ok,
            Some(s) if (400..500).contains(&s) => Outcome::Failed(format!("{s}: refused")),
            Some(s) => Outcome::Unknown(format!("{s}: unavailable")),
            None => unknown(),
        };
        let kind = OpKind::Hostile {
            attack: if expect == 413 {
                "oversized-randomblob".into()
            } else {
                "tx-drop-table".into()
            },
            endpoint: "/v1/transactions".into(),
            sql: vec!["DROP TABLE registers".into()],
            expect,
            status,
            rows: rows.iter().map(|r| r.to_string()).collect(),
            file: file.map(String::from),
            answer: status.map(|s| format!("answer {s}")),
        };
        b.op(node, t, t + 0.01, kind, outcome)
    }

    /// Number of anomalies of each kind.
    fn tally(r: &CheckResult) -> BTreeMap<AnomalyKind, usize> {
        r.counts()
    }

    #[test]
    fn large_values_lost_corrupt_failed_invented() {
        let (mut b, _) = clean();
        let w = b.ok(1, 5.0, 5.5, vec![large("L1", 3000, 7)]);
        // Unknown outcome: may be absent, or present whole.
        let u = b.write(2, 5.0, 5.5, vec![large("L2", 2000, 8)], unknown());
        b.settle(6.0);
        assert_clean(&b.check());
        let whole = large_final(8, 2000, true);
        for fs in &mut b.h.finals {
            fs.large.insert("L2".into(), whole.clone());
        }
        assert_clean(&b.check());
        let base = b.h.clone();
        // A large write refused is an anomaly in itself.
        let f = b.write(0, 5.0, 5.1, vec![large("L3", 1000, 9)], failed());
        let a = only(&b.check(), AnomalyKind::LargeWriteRefused, 1);
        assert_eq!(a[0].ops, vec![f]);
        assert!(
            a[0].detail.contains(
                "blob of 1000 bytes, a request body of about 1336 bytes) was refused: 400 bad sql"
            ),
            "{}",
            a[0].detail
        );

        // Missing on one node: lost (and that node diverges).
        let mut b1 = B {
            h: base.clone(),
            ..B::new(3)
        };
        b1.h.finals[2].large.remove("L1");
        let r = b1.check();
        let lost: Vec<_> = r
            .anomalies
            .iter()
            .filter(|a| a.kind == AnomalyKind::LostWrite)
            .collect();
        assert_eq!(lost.len(), 1, "{:#?}", r.anomalies);
        assert_eq!(lost[0].ops, vec![w]);
        assert!(lost[0].detail.starts_with("n3:") && lost[0].detail.contains("L1"));
        assert_eq!(
            tally(&r),
            BTreeMap::from([(AnomalyKind::LostWrite, 1), (AnomalyKind::Divergence, 1)])
        );

        // A different length or digest everywhere: corrupt on every node.
        let mut b2 = B {
            h: base.clone(),
            ..B::new(3)
        };
        for fs in &mut b2.h.finals {
            fs.large.get_mut("L1").unwrap().bytes = 2999;
            fs.large.get_mut("L2").unwrap().digest = "0000000000000000".into();
        }
        let r = b2.check();
        assert_eq!(
            tally(&r),
            BTreeMap::from([(AnomalyKind::CorruptValue, 6)]),
            "{:#?}",
            r.anomalies
        );
        assert!(r.anomalies.iter().any(|a| a.ops == vec![w]));
        assert!(r.anomalies.iter().any(|a| a.ops == vec![u]));

        // A failed write's value, and one nobody wrote, on every node.
        let mut b3 = B {
            h: b.h.clone(),
            ..B::new(3)
        };
        for fs in &mut b3.h.finals {
            fs.large.insert("L3".into(), large_final(9, 1000, false));
            fs.large.insert("ghost".into(), large_final(1, 10, false));
        }
        let r = b3.check();
        assert_eq!(
            tally(&r),
            BTreeMap::from([
                (AnomalyKind::FailedWriteVisible, 3),
                (AnomalyKind::LargeWriteRefused, 1),
                (AnomalyKind::InventedValue, 3)
            ]),
            "{:#?}",
            r.anomalies
        );
        assert!(r.anomalies.iter().any(|a| a.ops == vec![f]));
        assert_eq!(b3.check().metrics.large_acked, 1);
        assert_eq!(b3.check().metrics.large_bytes_acked, 3000);
    }

    #[test]
    fn hostile_requests_must_be_refused() {
        let (mut b, _) = clean();
        // Refused as expected, unanswered (agent down), or unavailable: fine.
        hostile(
            &mut b,
            0,
            5.0,
            403,
            Some(403),
            &["H1"],
            Some("/x/attach-1.db"),
        );
        hostile(&mut b, 1, 5.0, 403, None, &["H2"], None);
        hostile(&mut b, 2, 5.0, 403, Some(503), &[], None);
        hostile(&mut b, 0, 5.1, 413, Some(413), &["O1"], None);
        hostile(&mut b, 1, 5.1, 413, None, &["O2"], None);
        let r = b.check();
        assert_clean(&r);
        assert_eq!(r.metrics.by_kind["hostile"].failed, 1);
        assert_eq!(r.metrics.by_kind["hostile"].unknown, 2);
        assert_eq!(r.metrics.by_kind["oversized"].failed, 1);

        // Carried out, refused for another reason, or failing inside.
        let mut b1 = B {
            h: b.h.clone(),
            ..B::new(3)
        };
        let ok = hostile(&mut b1, 0, 5.2, 403, Some(200), &[], None);
        let other = hostile(&mut b1, 1, 5.2, 403, Some(400), &[], None);
        let inside = hostile(&mut b1, 2, 5.2, 403, Some(500), &[], None);
        let big = hostile(&mut b1, 2, 5.3, 413, Some(200), &[], None);
        let big400 = hostile(&mut b1, 2, 5.3, 413, Some(400), &[], None);
        let r = b1.check();
        let breach = only_kinds(&r, AnomalyKind::SandboxBreach, 3);
        assert_eq!(
            breach.iter().map(|a| a.ops[0]).collect::<Vec<_>>(),
            vec![ok, other, inside]
        );
        assert!(
            breach[0].detail.contains("was carried out (HTTP 200)"),
            "{}",
            breach[0].detail
        );
        assert!(
            breach[0].detail.contains("DROP TABLE registers"),
            "{}",
            breach[0].detail
        );
        assert!(
            breach[1].detail.contains("answered 400 instead of 403"),
            "{}",
            breach[1].detail
        );
        let over = only_kinds(&r, AnomalyKind::OversizedAccepted, 2);
        assert_eq!(over[0].ops, vec![big]);
        assert_eq!(over[1].ops, vec![big400]);
        assert_eq!(r.anomalies.len(), 5);

        // A refused request's rows in the final states (events and large
        // values): on every node, not reported as invented.
        let mut b2 = B {
            h: b.h.clone(),
            ..B::new(3)
        };
        for fs in &mut b2.h.finals {
            fs.events.insert("H2".into(), ("H2".into(), 1));
            fs.large.insert("O1".into(), large_final(3, 10, false));
        }
        let r = b2.check();
        assert_eq!(
            tally(&r),
            BTreeMap::from([
                (AnomalyKind::SandboxBreach, 3),
                (AnomalyKind::OversizedAccepted, 3)
            ]),
            "{:#?}",
            r.anomalies
        );
        assert!(r.anomalies[0].detail.contains("must have changed nothing"));

        // A file an ATTACH named exists.
        let mut b3 = B {
            h: b.h.clone(),
            ..B::new(3)
        };
        b3.h.files_created.push("/x/attach-1.db-journal".into());
        let a = only(&b3.check(), AnomalyKind::SandboxBreach, 1);
        assert_eq!(
            a[0].ops,
            vec![
                1 + b
                    .h
                    .ops
                    .iter()
                    .position(|o| matches!(&o.kind, OpKind::Hostile { file: Some(_), .. }))
                    .unwrap() as u64
            ]
        );
        assert!(
            a[0].detail.contains("attach-1.db-journal"),
            "{}",
            a[0].detail
        );
    }

    /// The anomalies of `kind`: exactly `n` of them (others may exist).
    fn only_kinds(r: &CheckResult, kind: AnomalyKind, n: usize) -> Vec<Anomaly> {
        let of: Vec<Anomaly> = r
            .anomalies
            .iter()
            .filter(|a| a.kind == kind)
            .cloned()
            .collect();
        assert_eq!(of.len(), n, "expected {n} × {kind}: {:#?}", r.anomalies);
        of
    }

    fn healthy_end() -> NodeEnd {
        NodeEnd {
            at: 4.5,
            health: Some(200),
            actor: "a1".into(),
            ..NodeEnd::default()
        }
    }

    #[test]
    fn stuck_apply_and_unhealthy_at_end() {
        let (mut b, _) = clean();
        for f in &mut b.h.finals {
            f.end = Some(healthy_end());
        }
        assert_clean(&b.check());

        let mut b1 = B {
            h: b.h.clone(),
            ..B::new(3)
        };
        let e = b1.h.finals[1].end.as_mut().unwrap();
        e.quarantined.push(Quarantined {
            actor: "a1".into(),
            version: 7,
            rows: 2,
            error: "NOT NULL constraint failed".into(),
        });
        e.apply_failures = 4;
        b1.h.finals[2].end.as_mut().unwrap().serve_failures = 1;
        let a = only(&b1.check(), AnomalyKind::StuckApply, 2);
        assert!(a[0].detail.starts_with("n2 at the end"), "{}", a[0].detail);
        assert!(
            a[0].detail.contains("a1:7 (2 rows): NOT NULL"),
            "{}",
            a[0].detail
        );
        assert!(
            a[0].detail.contains("4 consecutive failures to apply"),
            "{}",
            a[0].detail
        );
        assert!(
            a[1].detail.contains("1 consecutive failures to serve"),
            "{}",
            a[1].detail
        );

        let mut b2 = B {
            h: b.h.clone(),
            ..B::new(3)
        };
        let e = b2.h.finals[0].end.as_mut().unwrap();
        e.health = Some(503);
        e.issues = vec![("lagging".into(), "data of n2 is 31.0 s stale".into())];
        b2.h.finals[1].end.as_mut().unwrap().write_error = Some("disk full".into());
        let e = b2.h.finals[2].end.as_mut().unwrap();
        e.health = None;
        e.status_error = Some("/v1/status: connection refused".into());
        let a = only(&b2.check(), AnomalyKind::UnhealthyAtEnd, 3);
        assert!(
            a[0].detail.contains("503: lagging: data of n2"),
            "{}",
            a[0].detail
        );
        assert!(
            a[1].detail.contains("write error: disk full"),
            "{}",
            a[1].detail
        );
        assert!(a[2].detail.contains("status unreadable"), "{}", a[2].detail);
        assert!(a[2].detail.contains("did not answer"), "{}", a[2].detail);

        // Older histories without the end readings are not judged.
        let mut b3 = B {
            h: b.h.clone(),
            ..B::new(3)
        };
        b3.h.finals[0].end = None;
        assert_clean(&b3.check());
    }

    #[test]
    fn a_node_restarted_as_a_new_actor() {
        // n1 writes as a1, is killed, and writes as a1' after its restart:
        // both actors' versions must reach everyone, and nothing assumes one
        // actor per node.
        let mut b = B::new(3);
        b.ok(0, 0.0, 0.1, vec![ev("e1", "t1", 1), set("k", "x1")]);
        b.ok(0, 0.2, 0.3, vec![ev("e2", "t2", 1)]);
        b.sample_all(0.5);
        b.h.faults.push(FaultRecord {
            label: "SIGKILL n1".into(),
            kind: "kill".into(),
            start: 1.0,
            heal: 2.0,
            down: vec![0],
        });
        b.actors[0] = "a1b".into();
        b.h.node_records[0].actors.push("a1b".into());
        let w3 = b.ok(0, 2.1, 2.2, vec![ev("e3", "t3", 1), set("k", "x3")]);
        b.read(0, 2.3, 2.4, "k", None, Some("x3"));
        b.read(1, 2.5, 2.6, "k", Some(w3), Some("x3"));
        b.settle(3.0);
        let r = b.check();
        assert_clean(&r);
        assert_eq!((r.metrics.lag.measured, r.metrics.lag.not_visible), (3, 0));
        // Old actor held everywhere, new one missing on n3.
        b.h.samples.push(Sample {
            at: 3.5,
            node: 2,
            complete_through: BTreeMap::from([("a1".into(), 2)]),
            placement_rows_refused: 0,
        });
        let a = only(&b.check(), AnomalyKind::NotConverged, 1);
        assert!(
            a[0].detail.contains("a1b: holds through 0, needs 1"),
            "{}",
            a[0].detail
        );
        assert_eq!(a[0].ops, vec![w3]);
    }

    fn pinned(id: &str, txn: &str) -> Stmt {
        Stmt::InsertPinned {
            id: id.into(),
            txn: txn.into(),
        }
    }

    /// A read or write of the pinned table on `node` (outside its region)
    /// that got `status` with `answer` (`None`: no answer).
    fn probe(b: &mut B, node: NodeIx, t: f64, status: Option<u16>, answer: &str) -> u64 {
        let outcome = match status {
            Some(200) => Outcome::Ok,
            Some(s) if (400..500).contains(&s) => Outcome::Failed(format!("{s}: {answer}")),
            Some(s) => Outcome::Unknown(format!("{s}: {answer}")),
            None => unknown(),
        };
        let kind = OpKind::Hostile {
            attack: "placement-write".into(),
            endpoint: "/v1/transactions".into(),
            sql: vec!["INSERT INTO pinned_eu(id, txn, client) VALUES ('P1', 'P1', 1)".into()],
            expect: 403,
            status,
            rows: vec![format!("P{node}-{t}")],
            file: None,
            answer: status.map(|_| answer.to_string()),
        };
        b.op(node, t, t + 0.01, kind, outcome)
    }

    const REFUSED: &str = "{\"error\":\"table \\\"pinned_eu\\\" may only be held in region(s) eu; \
                           this node is in region \\\"us\\\"\"}";

    /// Five nodes (`n1`, `n4` in eu), a table pinned to eu written on both,
    /// alone and with event rows, acknowledged, unknown and failed; reads
    /// and writes of it refused outside eu; clean files everywhere.
    fn placed() -> (B, [u64; 4]) {
        let mut b = B::new(5);
        b.h.pinned = Some(Pinned::chaos());
        let w1 = b.ok(0, 0.0, 0.1, vec![ev("e1", "t1", 1), pinned("t1-p", "t1")]);
        let w2 = b.ok(3, 0.0, 0.1, vec![pinned("t2-p", "t2")]);
        let u = b.write(
            0,
            0.2,
            0.3,
            vec![ev("e3", "t3", 2), ev("e3b", "t3", 2), pinned("t3-p", "t3")],
            unknown(),
        );
        let f = b.write(
            3,
            0.2,
            0.3,
            vec![ev("e4", "t4", 1), pinned("t4-p", "t4"), Stmt::Invalid],
            failed(),
        );
        probe(&mut b, 1, 0.5, Some(403), REFUSED);
        probe(&mut b, 2, 0.5, None, "");
        probe(&mut b, 4, 0.5, Some(503), "shutting down");
        b.settle(4.0);
        for f in &mut b.h.finals {
            f.end = Some(NodeEnd {
                placement: BTreeMap::from([("pinned_eu".into(), vec!["eu".into()])]),
                ..healthy_end()
            });
        }
        (b, [w1, w2, u, f])
    }

    #[test]
    fn placement_clean_run_and_its_report() {
        let (b, _) = placed();
        let r = b.check();
        assert_clean(&r);
        let p = r.metrics.placement.clone().unwrap();
        assert_eq!(p.inside, vec![(0, 2), (3, 2)]);
        assert_eq!(p.outside, vec![1, 2, 4]);
        assert_eq!((p.files_checked, p.found_outside), (3, 0));
        assert_eq!((p.rows_acked, p.rows_acked_with_events), (2, 1));
        assert_eq!(
            (p.probes_refused, p.probes_unknown, p.probes_other),
            (1, 2, 0)
        );
        assert_eq!(r.metrics.by_kind["placement"].failed, 1);
        let line = crate::report::placement_line(&p);
        assert!(
            line.starts_with(
                "placement: pinned_eu on 2 eu nodes (n1, n4: 2 rows each), 0 rows outside eu \
                 (files of n2, n3, n5 checked"
            ),
            "{line}"
        );
        let summary = crate::report::summary(&b.h, &r, None);
        assert!(summary.contains(&line), "{summary}");
        // Histories without a pinned table are not judged on placement.
        let mut old = b.h.clone();
        old.pinned = None;
        for f in &mut old.finals {
            f.file = None;
        }
        let r = check(&old);
        assert_clean(&r);
        assert!(r.metrics.placement.is_none());
    }

    #[test]
    fn a_pinned_row_in_the_file_of_a_node_outside_its_region_is_an_anomaly() {
        let (b, [w1, ..]) = placed();
        // n2 (us) holds the row of w1 and its clock row: found in its file
        // (its API refuses the table, so only the file shows it).
        let mut h = b.h.clone();
        let s = h.finals[1].file.as_mut().unwrap();
        s.rows = 1;
        s.ids = vec!["t1-p".into()];
        s.clock_rows = 1;
        let a = only(&check(&h), AnomalyKind::PlacementBreach, 1);
        assert_eq!(a[0].ops, vec![w1]);
        assert!(
            a[0].detail.starts_with(
                "n2 (region us), outside the regions of pinned_eu (eu): its file /x/n2.db holds \
                 1 rows of pinned_eu (ids t1-p), 1 rows of __lm_clk_pinned_eu"
            ),
            "{}",
            a[0].detail
        );

        // Only a trace of it: a quarantined version naming the table (n5),
        // or a clock row (n3).
        let mut h = b.h.clone();
        h.finals[4].file.as_mut().unwrap().quarantined = 1;
        h.finals[2].file.as_mut().unwrap().clock_rows = 2;
        let a = only(&check(&h), AnomalyKind::PlacementBreach, 2);
        assert!(
            a[0].detail.contains("2 rows of __lm_clk_pinned_eu"),
            "{}",
            a[0].detail
        );
        assert!(
            a[1].detail.contains("1 quarantined versions"),
            "{}",
            a[1].detail
        );

        // A file that could not be read, or was not, proves nothing.
        let mut h = b.h.clone();
        h.finals[2].file.as_mut().unwrap().error = Some("opening: locked".into());
        h.finals[4].file = None;
        let a = only(&check(&h), AnomalyKind::PlacementBreach, 2);
        assert!(
            a[0].detail.contains("could not be read (opening: locked)"),
            "{}",
            a[0].detail
        );
        assert!(
            a[1].detail.contains("its file was not read"),
            "{}",
            a[1].detail
        );

        // The API of a node outside answered rows of it.
        let mut h = b.h.clone();
        h.finals[1].pinned.insert("t2-p".into(), "t2".into());
        let a = only(&check(&h), AnomalyKind::PlacementBreach, 1);
        assert!(
            a[0].detail.contains("answered rows of pinned_eu"),
            "{}",
            a[0].detail
        );
    }

    #[test]
    fn placement_refused_rows_status_and_probes() {
        let (b, _) = placed();
        // Peers sent rows a node may not hold: in a sample (n3), at the end
        // (n2).
        let mut h = b.h.clone();
        h.samples.push(Sample {
            at: 2.0,
            node: 2,
            complete_through: BTreeMap::new(),
            placement_rows_refused: 4,
        });
        h.finals[1].end.as_mut().unwrap().placement_rows_refused = 2;
        let r = check(&h);
        let a = only(&r, AnomalyKind::PlacementBreach, 2);
        assert!(
            a[0].detail
                .starts_with("n2 (region us): peers sent it rows")
                && a[0].detail.contains("up to 2"),
            "{}",
            a[0].detail
        );
        assert!(a[1].detail.contains("n3 (region ap)"), "{}", a[1].detail);
        assert_eq!(r.metrics.placement.unwrap().rows_refused_max, 4);

        // A node that does not know the table is pinned.
        let mut h = b.h.clone();
        h.finals[4].end.as_mut().unwrap().placement.clear();
        let a = only(&check(&h), AnomalyKind::PlacementBreach, 1);
        assert!(
            a[0].detail.starts_with("n5: its status lists"),
            "{}",
            a[0].detail
        );

        // Outside eu, a write of the table carried out, refused for another
        // reason, or refused with 403 for something else.
        let mut b1 = B {
            h: b.h.clone(),
            ..B::new(5)
        };
        b1.next = 100;
        let ok = probe(&mut b1, 1, 1.0, Some(200), "{\"token\":\"a2:1\"}");
        let other = probe(&mut b1, 2, 1.0, Some(400), "no such table");
        let sandbox = probe(&mut b1, 4, 1.0, Some(403), "{\"error\":\"not authorized\"}");
        let r = b1.check();
        let a = only(&r, AnomalyKind::PlacementBreach, 3);
        assert_eq!(
            a.iter().map(|a| a.ops[0]).collect::<Vec<_>>(),
            vec![ok, other, sandbox]
        );
        assert!(
            a[0].detail.contains("was carried out (HTTP 200)"),
            "{}",
            a[0].detail
        );
        assert!(
            a[2].detail.contains("but not for placement"),
            "{}",
            a[2].detail
        );
        assert_eq!(r.metrics.placement.unwrap().probes_other, 3);
    }

    #[test]
    fn pinned_rows_lost_half_failed_and_divergent_in_the_region() {
        let (b, [w1, _, u, f]) = placed();
        // n4 lacks w1's pinned row but holds its event row: lost, half a
        // transaction, and n4 differs from n1.
        let mut h = b.h.clone();
        h.finals[3].pinned.remove("t1-p");
        let r = check(&h);
        assert_eq!(
            tally(&r),
            BTreeMap::from([
                (AnomalyKind::LostWrite, 1),
                (AnomalyKind::HalfTransaction, 1),
                (AnomalyKind::Divergence, 1)
            ]),
            "{:#?}",
            r.anomalies
        );
        assert!(r.anomalies.iter().all(|a| a.ops == vec![w1]));
        // Outside eu the same transaction holds only its event row: fine
        // (the part the node may hold).

        // The write of unknown outcome applied: its event rows everywhere,
        // its pinned row on neither eu node: half on both.
        let mut h = b.h.clone();
        for fs in &mut h.finals {
            fs.events.insert("e3".into(), ("t3".into(), 2));
            fs.events.insert("e3b".into(), ("t3".into(), 2));
        }
        let a = only(&check(&h), AnomalyKind::HalfTransaction, 2);
        assert!(a.iter().all(|a| a.ops == vec![u]));
        assert!(
            a[0].detail
                .contains("not the row t3-p of pinned_eu and 2 of the 2 event rows"),
            "{}",
            a[0].detail
        );
        // Applied whole on the eu nodes: fine.
        for fs in &mut h.finals {
            if fs.node == 0 || fs.node == 3 {
                fs.pinned.insert("t3-p".into(), "t3".into());
            }
        }
        assert_clean(&check(&h));

        // The failed write's pinned row, and one nobody wrote, in eu.
        let mut h = b.h.clone();
        for fs in &mut h.finals {
            if fs.node == 0 || fs.node == 3 {
                fs.pinned.insert("t4-p".into(), "t4".into());
                fs.pinned.insert("ghost".into(), "g".into());
            }
        }
        let r = check(&h);
        assert_eq!(
            tally(&r),
            BTreeMap::from([
                (AnomalyKind::FailedWriteVisible, 2),
                (AnomalyKind::InventedValue, 2)
            ]),
            "{:#?}",
            r.anomalies
        );
        assert!(r.anomalies[0].ops == vec![f]);
    }

    fn add(id: &str, delta: i64, upsert: bool) -> Stmt {
        Stmt::AddCounter {
            id: id.into(),
            delta,
            upsert,
        }
    }

    /// Adds `delta` to counter `id` in every final state (an increment of
    /// unknown outcome that was applied).
    fn final_add(b: &mut B, id: &str, delta: i64) {
        for f in &mut b.h.finals {
            let n = f.counters.get_mut(id).unwrap().as_mut().unwrap();
            *n += delta;
        }
    }

    /// The ops of [`counted`].
    struct Counted {
        /// `c0`: +5 acknowledged (an update).
        up: u64,
        /// `c1`: +4 acknowledged (the upsert that created it).
        c1_first: u64,
        /// `c1`: +2 of unknown outcome, applied.
        u_applied: u64,
        /// `c1`: +3 of unknown outcome, not applied.
        u_not: u64,
    }

    /// Three nodes adding to two counters. `c0`: created concurrently by an
    /// upsert on each node (+1, +1, +2), then +5 and −3 by updates: 6, all
    /// acknowledged. `c1`: created by +4 (acknowledged); an acknowledged
    /// update of +2 that changed nothing (its node did not hold the row
    /// yet: empty token); of unknown outcome, +2 applied and +3 not, +5 in
    /// a transaction whose event row is in the final states (applied) and
    /// +1 in one whose event row is not (not applied); +1 refused for a
    /// time limit (408). Final `c1`: 4 + 2 + 5 = 11, the known sum being 9
    /// and the unknown deltas +2 and +3 (possible: 9, 11, 12, 14).
    fn counted() -> (B, Counted) {
        let mut b = B::new(3);
        b.ok(0, 0.0, 0.1, vec![add("c0", 1, true)]);
        b.ok(1, 0.0, 0.1, vec![add("c0", 1, true)]);
        b.ok(2, 0.0, 0.1, vec![add("c0", 2, true)]);
        let up = b.ok(0, 0.2, 0.3, vec![add("c0", 5, false)]);
        b.ok(1, 0.2, 0.3, vec![add("c0", -3, false)]);
        let c1_first = b.ok(2, 0.0, 0.1, vec![add("c1", 4, true)]);
        let nothing = OpKind::Write {
            stmts: vec![add("c1", 2, false)],
            token: Some(String::new()),
            version: None,
        };
        b.op(0, 0.0, 0.05, nothing, Outcome::Ok);
        let u_applied = b.write(0, 0.5, 5.5, vec![add("c1", 2, true)], unknown());
        let u_not = b.write(1, 0.5, 5.5, vec![add("c1", 3, true)], unknown());
        b.write(
            2,
            0.5,
            5.5,
            vec![ev("ce1", "ct1", 1), add("c1", 5, true)],
            unknown(),
        );
        b.write(
            0,
            0.5,
            5.5,
            vec![ev("ce2", "ct2", 1), add("c1", 1, true)],
            unknown(),
        );
        let time_limit = Outcome::Failed("408: the statement ran past its time limit".into());
        b.write(1, 0.5, 0.6, vec![add("c1", 1, true)], time_limit);
        b.settle(6.0);
        final_add(&mut b, "c1", 2 + 5);
        for f in &mut b.h.finals {
            f.events.insert("ce1".into(), ("ct1".into(), 1));
        }
        let ops = Counted {
            up,
            c1_first,
            u_applied,
            u_not,
        };
        (b, ops)
    }

    #[test]
    fn counters_clean_run_and_its_report() {
        let (b, _) = counted();
        assert_eq!(b.h.finals[0].counters["c0"], Some(6));
        assert_eq!(b.h.finals[0].counters["c1"], Some(11));
        let r = b.check();
        assert_clean(&r);
        let c = r.metrics.counters.clone().unwrap();
        assert_eq!((c.counters, c.nodes), (2, 3));
        assert_eq!((c.acked, c.acked_sum, c.acked_unchanged), (7, 10, 1));
        assert_eq!(c.acked_by_node, vec![3, 2, 2]);
        assert_eq!((c.unknown, c.resolved, c.failed), (4, 2, 1));
        assert!(c.identical);
        assert_eq!((c.possible, c.exact), (2, 1));
        assert_eq!(
            r.metrics.by_kind["counter"],
            OutcomeCounts {
                ok: 7,
                failed: 1,
                unknown: 4
            }
        );
        let line = crate::report::counters_line(&c);
        assert!(
            line.starts_with(
                "counters: 2 counters, 7 increments acknowledged (sum 10; n1 3, n2 2, n3 2; 1 of \
                 them updates that changed nothing), 4 of unknown outcome (2 of them settled by \
                 their transaction's event rows), 1 refused; final values identical on 3 nodes \
                 and within the acknowledged sum for 2 of 2 counters"
            ),
            "{line}"
        );
        let summary = crate::report::summary(&b.h, &r, None);
        assert!(summary.contains(&line), "{summary}");

        // Every increment of unknown outcome applied, or none: fine too.
        let mut all = counted().0;
        final_add(&mut all, "c1", 3);
        assert_clean(&all.check());
        let mut none = counted().0;
        final_add(&mut none, "c1", -2);
        assert_clean(&none.check());

        // Histories without counters have no counter metrics.
        assert!(clean().0.check().metrics.counters.is_none());
    }

    #[test]
    fn a_lost_counter_increment_is_a_mismatch() {
        // c0 without its +5: no increment of c0 is of unknown outcome.
        let (mut b, o) = counted();
        final_add(&mut b, "c0", -5);
        let a = only(&b.check(), AnomalyKind::CounterMismatch, 1);
        assert_eq!(
            a[0].detail,
            "counter c0 is 1 on n1, n2, n3: its 5 acknowledged increments sum to 6; none is of \
             unknown outcome, so it must be exactly 6; 1 is 5 below the least possible value: \
             increments lost"
        );
        assert!(a[0].ops.contains(&o.up), "{:?}", a[0].ops);

        // c1 without its first +4: 7, below 9 whatever the unknown did.
        let (mut b, o) = counted();
        final_add(&mut b, "c1", -4);
        let a = only(&b.check(), AnomalyKind::CounterMismatch, 1);
        assert_eq!(
            a[0].detail,
            "counter c1 is 7 on n1, n2, n3: its 2 acknowledged increments sum to 4 (1 of them \
             updates that changed nothing), and 1 of unknown outcome that their event rows show \
             applied add +5 ×1 (known sum 9); 2 of unknown outcome, any of which may have \
             applied, have the deltas +2 ×1, +3 ×1, so it must be 9 plus the sum of some of \
             them: within 9..=14 (not every value in between); 7 is 2 below the least possible \
             value: increments lost"
        );
        assert_eq!(&a[0].ops[..2], &[o.u_applied, o.u_not]);
        assert!(a[0].ops.contains(&o.c1_first), "{:?}", a[0].ops);
    }

    #[test]
    fn a_double_applied_counter_increment_is_a_mismatch() {
        // +4 applied twice: 15, above the greatest possible 14.
        let (mut b, _) = counted();
        final_add(&mut b, "c1", 4);
        let a = only(&b.check(), AnomalyKind::CounterMismatch, 1);
        assert!(
            a[0].detail.starts_with("counter c1 is 15 on n1, n2, n3:")
                && a[0].detail.ends_with(
                    "15 is 1 above the greatest possible value: an increment applied twice, or \
                     a refused one applied"
                ),
            "{}",
            a[0].detail
        );
        // The unknown +2 applied twice: 13, between the possible 12 and 14.
        let (mut b, _) = counted();
        final_add(&mut b, "c1", 2);
        let a = only(&b.check(), AnomalyKind::CounterMismatch, 1);
        assert!(
            a[0].detail
                .ends_with("13 falls between the possible values 12 and 14"),
            "{}",
            a[0].detail
        );
        // The +1 whose event row is nowhere applied anyway (10): possible
        // were it of unknown outcome alone, impossible once its
        // transaction shows it was not applied.
        let (mut b, _) = counted();
        final_add(&mut b, "c1", -1);
        let a = only(&b.check(), AnomalyKind::CounterMismatch, 1);
        assert!(
            a[0].detail
                .ends_with("10 falls between the possible values 9 and 11"),
            "{}",
            a[0].detail
        );
        // A refusal for anything but a time limit (408) is an anomaly of
        // its own: a valid increment must commit.
        let (mut b, _) = counted();
        let refused = b.write(
            2,
            7.0,
            7.1,
            vec![add("c0", 1, true)],
            Outcome::Failed("400: no such column: n".into()),
        );
        let a = only(&b.check(), AnomalyKind::CounterWriteRefused, 1);
        assert_eq!(
            a[0].detail,
            format!(
                "n3: upsert of counter c0 by +1 (write op {refused}) was refused: 400: no such \
                 column: n"
            )
        );
        assert_eq!(a[0].ops, vec![refused]);
    }

    #[test]
    fn diverging_missing_invented_and_failed_counters() {
        // n3 did not get the unknown +2 the others got: both values are
        // possible, but the replicas disagree.
        let (mut b, _) = counted();
        *b.h.finals[2].counters.get_mut("c1").unwrap() = Some(9);
        let a = only(&b.check(), AnomalyKind::Divergence, 1);
        assert_eq!(
            a[0].detail,
            "final state of {n3} differs from {n1, n2}: counters: c1: n1=11 n3=9"
        );
        assert!(!b.check().metrics.counters.unwrap().identical);

        // n2 lost the row of c0: lost, and different from the others.
        let (mut b, _) = counted();
        b.h.finals[1].counters.remove("c0");
        let r = b.check();
        assert_eq!(
            tally(&r),
            BTreeMap::from([(AnomalyKind::LostWrite, 1), (AnomalyKind::Divergence, 1)]),
            "{:#?}",
            r.anomalies
        );
        assert!(
            r.anomalies[0]
                .detail
                .starts_with("n2: counter c0 is missing from its final state, although 5 increments known applied changed it"),
            "{}",
            r.anomalies[0].detail
        );
        assert_eq!(r.metrics.counters.unwrap().possible, 1);

        // A counter nobody wrote, and one only a refused upsert could have
        // created, on every node; and a value that is not an integer.
        let (mut b, _) = counted();
        let refused = b.write(
            1,
            7.0,
            7.1,
            vec![add("c2", 1, true)],
            Outcome::Failed("403: not allowed".into()),
        );
        for f in &mut b.h.finals {
            f.counters.insert("c9".into(), Some(1));
            f.counters.insert("c2".into(), Some(1));
            f.counters.insert("c0".into(), None);
        }
        let r = b.check();
        assert_eq!(
            tally(&r),
            BTreeMap::from([
                (AnomalyKind::CounterMismatch, 1),
                (AnomalyKind::CounterWriteRefused, 1),
                (AnomalyKind::FailedWriteVisible, 1),
                (AnomalyKind::InventedValue, 1),
            ]),
            "{:#?}",
            r.anomalies
        );
        let detail = |k| {
            r.anomalies
                .iter()
                .find(|a| a.kind == k)
                .map(|a| a.detail.clone())
                .unwrap()
        };
        assert!(
            detail(AnomalyKind::CounterMismatch)
                .starts_with("counter c0 is not an integer on n1, n2, n3"),
            "{}",
            detail(AnomalyKind::CounterMismatch)
        );
        assert_eq!(
            detail(AnomalyKind::FailedWriteVisible),
            format!(
                "n1, n2, n3: final state holds counter c2, which only failed upserts could have created (write op {refused})"
            )
        );
        assert_eq!(
            detail(AnomalyKind::InventedValue),
            "n1, n2, n3: final state holds counter c9, which no request could have created (no upsert of it was sent)"
        );
    }

    #[test]
    fn subset_sums_are_exact() {
        // Against brute force: mixed signs, repeated deltas (binary
        // splitting), and shifts across and beyond a 64-bit word.
        let cases: Vec<Vec<i64>> = vec![
            vec![],
            vec![3],
            vec![-2],
            vec![2, 3],
            vec![1, 1, 1, 1, 1, 1, 1],
            vec![5, 5, 5, -3, -3, 2],
            vec![70, -65, 1, 130, -1, 64, 64, 64],
            (0..40)
                .map(|i| if i % 3 == 0 { -(i % 4) - 1 } else { i % 5 + 1 })
                .collect(),
        ];
        for deltas in cases {
            let s = SubsetSums::of(&deltas);
            let mut want = BTreeSet::from([0i64]);
            for d in &deltas {
                let more: Vec<i64> = want.iter().map(|x| x + d).collect();
                want.extend(more);
            }
            for x in s.min - 70..=s.max + 70 {
                assert_eq!(s.contains(x), want.contains(&x), "{deltas:?}: sum {x}");
            }
            assert_eq!(s.min, *want.first().unwrap(), "{deltas:?}");
            assert_eq!(s.max, *want.last().unwrap(), "{deltas:?}");
            let mid = (s.min + s.max) / 2;
            assert_eq!(s.below(mid), want.range(..mid).next_back().copied());
            assert_eq!(s.above(mid), want.range(mid + 1..).next().copied());
        }
        // A long run's thousands of small deltas: quick.
        let many: Vec<i64> = (0..20_000)
            .map(|i| [1, 2, 3, 4, 5, -1, -2, -3][i % 8])
            .collect();
        let s = SubsetSums::of(&many);
        assert!(s.contiguous() && s.contains(-15_000) && s.contains(37_500));
    }

    #[test]
    fn names_are_kebab_case_and_match_serde() {
        for k in AnomalyKind::ALL {
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.name()));
        }
    }

    #[test]
    fn sparse_max_first_at_least() {
        let vals = vec![1, 5, 2, 7, 3, 3, 9, 0, 4];
        let t = SparseMax::new(vals.clone());
        for from in 0..=vals.len() + 1 {
            for v in 0..11 {
                let want = (from..vals.len()).find(|&i| vals[i] >= v);
                assert_eq!(t.first_at_least(from, v), want, "from {from} v {v}");
            }
        }
        assert_eq!(SparseMax::new(Vec::new()).first_at_least(0, 0), None);
    }

    #[test]
    fn large_history_is_fast() {
        // 5 nodes, 200k ops, ~60k rows per node: must be well under a few
        // seconds even in debug builds (no quadratic loop).
        let mut b = B::new(5);
        let mut t = 0.0;
        for i in 0..100_000u64 {
            t += 0.001;
            let node = (i % 5) as usize;
            if i % 3 == 0 {
                b.ok(
                    node,
                    t,
                    t + 0.0005,
                    vec![set(&format!("k{}", i % 7), &format!("v{i}"))],
                );
            } else {
                b.ok(
                    node,
                    t,
                    t + 0.0005,
                    vec![ev(&format!("e{i}"), &format!("t{i}"), 1)],
                );
            }
            b.read(node, t, t + 0.0005, &format!("k{}", i % 7), None, None);
            if i % 100 == 0 {
                b.sample_all(t + 0.0006);
            }
        }
        b.settle(t + 1.0);
        let start = std::time::Instant::now();
        let r = b.check();
        let took = start.elapsed();
        // Reads of no row after sets on the same node are stale: lots of
        // NonMonotonicRead, grouped.
        assert!(
            r.counts()
                .keys()
                .all(|k| *k == AnomalyKind::NonMonotonicRead)
        );
        assert!(took.as_secs_f64() < 20.0, "took {took:?}");
        eprintln!("checked {} ops in {took:?}", b.h.ops.len());
    }
}
