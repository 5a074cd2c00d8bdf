//! The JSON shapes of the agent's HTTP API: what each endpoint answers.
//!
//! The agent serializes these same types, so each shape is defined here
//! once. Decoding is tolerant of fields added later (they are ignored) and
//! of string values added later to the enums below (they decode as
//! `Other`).
//!
//! Where the agent wrote an object with `serde_json::json!` (keys sorted),
//! the fields are declared in alphabetical order so that the bytes on the
//! wire stayed the same when the agent moved to these types.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::value::Value;

/// A string enum with known values and an `Other` for values added later.
macro_rules! open_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $text:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )*
            /// A value this version of the client does not know.
            Other(String),
        }

        impl $name {
            /// The value as it is on the wire.
            pub fn as_str(&self) -> &str {
                match self {
                    $( $name::$variant => $text, )*
                    $name::Other(s) => s,
                }
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                match s {
                    $( $text => $name::$variant, )*
                    other => $name::Other(other.to_owned()),
                }
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                match $name::from(s.as_str()) {
                    $name::Other(_) => $name::Other(s),
                    known => known,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d).map($name::from)
            }
        }
    };
}

/// A string the API defines as opaque, typed so it is not mixed up with
/// other strings.
macro_rules! string_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Wraps a string.
            pub fn new(s: impl Into<String>) -> Self {
                $name(s.into())
            }

            /// The string.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The string, owned.
            pub fn into_string(self) -> String {
                self.0
            }

            /// Whether it is the empty string.
            pub fn is_empty(&self) -> bool {
                self.0.is_empty()
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                $name(s)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                $name(s.to_owned())
            }
        }

        impl FromStr for $name {
            type Err = std::convert::Infallible;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Ok($name(s.to_owned()))
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_id! {
    /// A version token: names what a transaction wrote. Opaque to clients;
    /// pass it to a query on any node ([`crate::QueryOptions::min_token`])
    /// to read no older than that write. Empty when the transaction changed
    /// nothing replicated.
    Token
}

string_id! {
    /// A node's storage actor id (hex). A node writes as a new actor after a
    /// crash or a restore.
    ActorId
}

open_enum! {
    /// A member's state in the membership protocol (`/v1/members`, and the
    /// peers of `/v1/status`).
    pub enum MemberState {
        /// Answering probes.
        Alive => "alive",
        /// Missed probes; may still refute.
        Suspect => "suspect",
        /// Declared failed.
        Dead => "dead",
        /// Left the mesh gracefully.
        Left => "left",
        /// Remembered from an earlier run and not reached yet (peers only).
        Unreachable => "unreachable",
    }
}

open_enum! {
    /// The verdict of `/v1/health`.
    pub enum HealthStatus {
        /// Serving and caught up (HTTP 200).
        Ok => "ok",
        /// See the issues (HTTP 503).
        Unhealthy => "unhealthy",
    }
}

open_enum! {
    /// What kind of trouble a [`HealthIssue`] is.
    pub enum HealthIssueKind {
        /// A reachable writer's data is stale here past the threshold.
        Lagging => "lagging",
        /// Too many versions of a writer or peer are missing here.
        Behind => "behind",
        /// The node reaches at most half the members it knows.
        CutOff => "cut_off",
        /// Changes from peers cannot be applied here.
        Quarantined => "quarantined",
        /// Applying changes from peers keeps failing.
        ApplyFailing => "apply_failing",
        /// Serving peers' reconciliations keeps failing.
        ServeFailing => "serve_failing",
        /// The node cannot write its file.
        CannotWrite => "cannot_write",
        /// The database file was removed or replaced under the node.
        FileGone => "file_gone",
        /// A member's schema pins tables differently from this node's.
        PlacementMismatch => "placement_mismatch",
        /// The node is shutting down.
        ShuttingDown => "shutting_down",
    }
}

/// The body of every error answer: `{"error": "…"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
}

/// What one statement of a transaction did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatementResult {
    /// Rows it inserted, updated or deleted.
    pub rows_affected: u64,
}

/// The answer of `POST /v1/transactions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransactionResult {
    /// One result per statement, in order.
    pub results: Vec<StatementResult>,
    /// Seconds the transaction took on the agent.
    #[serde(default)]
    pub time: f64,
    /// Names what the transaction wrote (empty if nothing replicated
    /// changed).
    pub token: Token,
    /// The node's db version after the transaction.
    pub version: u64,
    /// With an acknowledgement level (`ack=…`): which other nodes confirmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack: Option<AckResult>,
}

/// Which nodes confirmed a transaction, for `ack=N|region|regions` (in
/// [`TransactionResult::ack`]). HTTP 200 when `reached`, 202 when the
/// timeout came first (the write stays committed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AckResult {
    /// The level asked for: `local`, a number, `region` or `regions`.
    pub level: String,
    /// Whether it was reached within the timeout.
    pub reached: bool,
    /// The nodes that confirmed they hold the transaction.
    pub confirmed: Vec<AckNode>,
    /// What was still missing at the answer (empty if reached).
    #[serde(default)]
    pub missing: Vec<String>,
    /// Milliseconds the confirmations took.
    #[serde(default)]
    pub waited_ms: f64,
}

/// A node that confirmed a transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AckNode {
    /// Its name.
    pub name: String,
    /// Its region (certified under mutual TLS), if it has one.
    pub region: Option<String>,
}

/// End of a query's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndOfQuery {
    /// Seconds the query took on the agent.
    #[serde(default)]
    pub time: f64,
    /// The peer that ran the query when the agent forwarded it
    /// (`fallback=nearest`); absent when the agent ran it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_by: Option<String>,
}

/// One line of `POST /v1/queries`'s newline-delimited answer.
///
/// The agent sends `columns` first, then one `row` per row, then `eoq`; a
/// failure after the first line ends the stream with `error` instead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", from = "WireEvent")]
pub enum QueryEvent {
    /// `{"columns": [name, …]}`.
    Columns(Vec<String>),
    /// `{"row": [n, [value, …]]}`: row number `n` (from 1) and its values.
    Row(u64, Vec<Value>),
    /// `{"eoq": {"time": seconds}}`: the query ended; every row was sent.
    Eoq(EndOfQuery),
    /// `{"error": "…"}`: the query failed; no more rows follow.
    Error(String),
    /// An event this version of the client does not know (skipped by
    /// [`crate::Rows`]); never sent.
    #[serde(skip_serializing)]
    Unknown,
}

/// A query event as decoded: any object; the first known key wins.
#[derive(Deserialize)]
struct WireEvent {
    columns: Option<Vec<String>>,
    row: Option<(u64, Vec<Value>)>,
    error: Option<String>,
    eoq: Option<EndOfQuery>,
}

impl From<WireEvent> for QueryEvent {
    fn from(w: WireEvent) -> Self {
        if let Some(c) = w.columns {
            QueryEvent::Columns(c)
        } else if let Some((n, values)) = w.row {
            QueryEvent::Row(n, values)
        } else if let Some(e) = w.error {
            QueryEvent::Error(e)
        } else if let Some(e) = w.eoq {
            QueryEvent::Eoq(e)
        } else {
            QueryEvent::Unknown
        }
    }
}

/// A member as the node sees it (`GET /v1/members`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// Node name.
    pub name: String,
    /// Its QUIC address.
    pub addr: SocketAddr,
    /// Its region, if set.
    pub region: Option<String>,
    /// Its state.
    pub state: MemberState,
    /// SWIM incarnation.
    pub incarnation: u64,
    /// Smoothed round-trip time in milliseconds.
    pub rtt_ms: Option<f64>,
    /// Its storage actor id.
    pub actor: Option<ActorId>,
    /// Its advertised HTTP API address.
    pub api: Option<String>,
}

/// A peer's replication state (in [`Status::peers`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// Its QUIC address.
    pub addr: SocketAddr,
    /// Its name, if known.
    pub name: Option<String>,
    /// `alive`, `suspect`, `dead`, `left` or `unreachable`.
    pub state: MemberState,
    /// Versions it had at the last reconciliation that this node still
    /// lacks.
    pub behind_versions: u64,
    /// Seconds since the last completed reconciliation with it.
    pub last_sync_secs_ago: Option<f64>,
    /// Seconds since the last completed reconciliation with it, or, if there
    /// was none, since this node first knew of it.
    pub sync_age_secs: f64,
    /// Round-trip time in milliseconds.
    pub rtt_ms: Option<f64>,
    /// Its region, if known.
    #[serde(default)]
    pub region: Option<String>,
}

/// Replication lag of one writer (in [`Status::writers`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WriterStatus {
    /// Its actor id.
    pub actor: ActorId,
    /// The member's name, if known.
    pub name: Option<String>,
    /// The member's address, if known.
    pub addr: Option<SocketAddr>,
    /// Whether it is reachable.
    pub reachable: bool,
    /// Seconds this node's copy of its data has not been known complete.
    pub lag_secs: f64,
    /// Its latest published version.
    pub head: u64,
    /// Versions up to `head` this node lacks.
    pub missing_versions: u64,
    /// The member's region, if known.
    #[serde(default)]
    pub region: Option<String>,
}

/// One region of the mesh as the node sees it (in [`Status::regions`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionStatus {
    /// The region (`null`: members with no region).
    pub region: Option<String>,
    /// Known members in it, the node itself included if it is in it.
    pub members: u64,
    /// Those alive in membership (not suspect, not dead), the node itself
    /// included.
    pub reachable: u64,
    /// The largest lag of its writers, in seconds.
    pub max_lag_secs: f64,
    /// The largest lag of its reachable writers, in seconds.
    pub reachable_max_lag_secs: f64,
    /// Round-trip time to its nearest reachable member, in milliseconds.
    pub nearest_rtt_ms: Option<f64>,
    /// Bytes the node sent to members of the region since it started.
    #[serde(default)]
    pub bytes_sent: u64,
}

/// A change from a peer that cannot be applied on the node (in
/// [`Status::quarantined`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuarantinedChange {
    /// The writer's actor id.
    pub actor: ActorId,
    /// Its version.
    pub version: u64,
    /// Row changes it holds.
    pub rows: u64,
    /// Why it fails.
    pub error: String,
    /// Seconds since it first failed.
    pub since_secs: f64,
    /// Attempts so far.
    pub attempts: u64,
}

/// A node's catch-up by snapshot (`docs/retention.md`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotCatchUp {
    /// Keys of its rows checked against peers' listings.
    pub keys_checked: u64,
    /// Rows removed: deleted on the peers while it was away.
    pub rows_dropped: u64,
    /// Rows of its own the peers had not seen, written again as new writes.
    pub rows_rebased: u64,
    /// Whether it completed.
    pub complete: bool,
}

/// A snapshot of the node's state (`GET /v1/status`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Node name.
    pub name: String,
    /// Its current storage actor id.
    pub actor: ActorId,
    /// Last local version.
    pub db_version: u64,
    /// Highest version held per actor.
    pub version_vector: BTreeMap<ActorId, u64>,
    /// Per actor, the highest version `n` such that every version `1..=n` is
    /// held: tokens naming versions up to it are satisfied here.
    pub complete_through: BTreeMap<ActorId, u64>,
    /// Every member known, with its replication state.
    pub peers: Vec<PeerStatus>,
    /// Lag per writer.
    pub writers: Vec<WriterStatus>,
    /// The largest lag over every writer, in seconds.
    pub max_lag_secs: f64,
    /// Changes from peers that cannot be applied here.
    pub quarantined: Vec<QuarantinedChange>,
    /// Members reachable, this node included.
    pub members_reachable: u64,
    /// Members known (alive, suspect, dead, or remembered), this node
    /// included.
    pub members_known: u64,
    /// Broadcast messages waiting for the rate limit.
    pub broadcast_queue: u64,
    /// Broadcast messages dropped on overflow (anti-entropy repairs them).
    pub broadcast_dropped: u64,
    /// Changes from peers applied.
    pub changes_applied: u64,
    /// Clients' transactions committed on this node.
    #[serde(default)]
    pub transactions_committed: u64,
    /// Commits they took (group commit: concurrent transactions share one).
    #[serde(default)]
    pub commit_groups: u64,
    /// SQLite transactions that applied changes from peers.
    #[serde(default)]
    pub apply_transactions: u64,
    /// Broadcasts received that held nothing new (neither applied nor
    /// relayed).
    #[serde(default)]
    pub broadcasts_known: u64,
    /// Broadcast messages not sent to a peer that may hold rows the
    /// version reached this node without (table placement).
    #[serde(default)]
    pub broadcasts_withheld: u64,
    /// Rows of tables this node's region may not hold that peers sent
    /// anyway, left out.
    #[serde(default)]
    pub placement_rows_refused: u64,
    /// A partial replica: rows of tables it does not carry that peers sent
    /// (they did not know), left out.
    #[serde(default)]
    pub rows_not_carried: u64,
    /// Tombstones collected since the node started (a retention policy).
    #[serde(default)]
    pub tombstones_collected: u64,
    /// Why tombstone collection cannot advance, if something holds it back.
    #[serde(default)]
    pub collection_held_back: Option<String>,
    /// Why this node cannot catch up incrementally and refuses writes.
    #[serde(default)]
    pub needs_snapshot: Option<String>,
    /// This node's catch-up by snapshot, if one ran since it started.
    #[serde(default)]
    pub snapshot_catch_up: Option<SnapshotCatchUp>,
    /// Members whose schema pins tables differently from this node's.
    #[serde(default)]
    pub placement_mismatch: Vec<String>,
    /// Pinned tables and the regions they may live in.
    #[serde(default)]
    pub placement: std::collections::BTreeMap<String, Vec<String>>,
    /// Completed reconciliations.
    pub syncs_completed: u64,
    /// Failed reconciliations.
    pub syncs_failed: u64,
    /// Consecutive failures to apply changes from peers.
    pub apply_failures: u64,
    /// Consecutive failures to serve a peer's reconciliation.
    pub serve_failures: u64,
    /// Why the node cannot write its file, if it cannot.
    pub write_error: Option<String>,
    /// Versions received in part.
    pub partial_versions: u64,
    /// The node's region.
    #[serde(default)]
    pub region: Option<String>,
    /// Members and lag per region.
    #[serde(default)]
    pub regions: Vec<RegionStatus>,
}

/// One reason a node is unhealthy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthIssue {
    /// What kind of trouble.
    pub kind: HealthIssueKind,
    /// It, in words.
    pub message: String,
}

/// The answer of `GET /v1/health` (HTTP 200 when healthy, 503 when not).
// Fields in alphabetical order: see the module's documentation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// The node's last local version (when healthy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_version: Option<u64>,
    /// Every issue in one line (when unhealthy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why it is unhealthy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub issues: Vec<HealthIssue>,
    /// Node name.
    pub name: String,
    /// The verdict.
    pub status: HealthStatus,
}

impl Health {
    /// Whether the node is fit to serve.
    pub fn is_healthy(&self) -> bool {
        self.status == HealthStatus::Ok
    }
}

/// The answer of `POST /v1/quarantine/retry`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetryResult {
    /// Quarantined changes applied now.
    pub applied: u64,
    /// Those still failing.
    pub still_failing: u64,
}

/// The answer of `GET /v1/retention`: what the node keeps and for how long.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Retention {
    /// How long tombstones are kept once every node holds them, in seconds
    /// (`null`: forever — nothing is collected).
    pub policy_secs: Option<f64>,
    /// Tombstone collection: how far it went, what holds it back.
    #[serde(default)]
    pub collection: Collection,
    /// How long a node may be away and still catch up incrementally, in
    /// seconds (`null`: any time).
    pub offline_limit_secs: Option<f64>,
    /// Per writer: the oldest of its versions this node can still serve.
    pub writers: Vec<RetainedWriter>,
    /// Per member: whether it can still catch up incrementally.
    pub members: Vec<MemberRetention>,
    /// The longest a member was away and came back, since the node started.
    pub longest_absence: Option<Absence>,
    /// What replication keeps beside the rows.
    pub metadata: Metadata,
    /// What an operator should know.
    pub warnings: Vec<String>,
}

/// A writer in [`Retention`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetainedWriter {
    /// Its actor.
    pub actor: ActorId,
    /// The member's name, if known.
    pub name: Option<String>,
    /// The highest of its versions held.
    pub head: u64,
    /// The oldest of its versions this node can still serve (1: all).
    pub oldest_servable: u64,
    /// Its versions whose tombstones were collected here (`1..=n`).
    #[serde(default)]
    pub collected_through: u64,
}

/// Tombstone collection, in [`Retention`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Collection {
    /// Versions every node holds now (summed over writers).
    pub stable_versions: u64,
    /// Versions whose tombstones were collected (summed over writers).
    pub collected_versions: u64,
    /// Tombstones collected since the node started.
    pub tombstones_collected: u64,
    /// Change-log entries the background sweep removed since the node
    /// started.
    #[serde(default)]
    pub log_entries_swept: u64,
    /// Why collection cannot advance, if something holds it back.
    pub held_back: Option<String>,
    /// For how long, in seconds.
    pub held_back_secs: Option<f64>,
    /// The member whose last report lacks the most of what this node holds.
    pub slowest_member: Option<String>,
    /// How many versions it lacks.
    pub slowest_member_lacks: Option<u64>,
    /// Per table, the causal length fresh inserts start above.
    pub floors: std::collections::BTreeMap<String, u64>,
    /// Why the last collection pass failed, if it did.
    pub error: Option<String>,
}

/// A member in [`Retention`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberRetention {
    /// Its name.
    pub name: String,
    /// Its QUIC address.
    pub addr: SocketAddr,
    /// Its state.
    pub state: MemberState,
    /// How long it has been unreachable, in seconds, if it is.
    pub unreachable_secs: Option<f64>,
    /// Whether it can catch up incrementally (else by snapshot).
    pub incremental: bool,
}

/// An absence in [`Retention`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Absence {
    /// The member.
    pub member: String,
    /// How long it was away, in seconds.
    pub secs: f64,
}

/// The replication metadata of a node's file, in [`Retention`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// Per replicated table.
    pub tables: Vec<TableMetadata>,
    /// Rows of the change log.
    pub log_rows: u64,
    /// Bytes of change-log entries.
    pub log_bytes: u64,
    /// The file's size.
    pub file_bytes: u64,
    /// Its free pages, in bytes.
    pub free_bytes: u64,
}

/// A table in [`Metadata`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableMetadata {
    /// The table.
    pub table: String,
    /// Live rows.
    pub rows: u64,
    /// Tombstones (clock rows of deleted rows).
    pub tombstones: u64,
}
