//! What a node reports of itself: members, peers, writers, quarantine and
//! the status snapshot. Typed (enums, actor ids, durations); the agent's
//! HTTP API chooses their JSON form.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use litemesh_proto::ActorId;

pub use litemesh_membership::MemberState;

/// A peer's state as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PeerState {
    /// Alive in membership.
    Alive,
    /// Suspected by membership (still reachable, maybe).
    Suspect,
    /// Declared dead by membership.
    Dead,
    /// Left the mesh.
    Left,
    /// Known (remembered from an earlier run, or forgotten by membership)
    /// but not seen in this run.
    Unreachable,
}

impl PeerState {
    /// Whether the node counts it as reachable (alive or suspect).
    pub fn is_reachable(self) -> bool {
        matches!(self, PeerState::Alive | PeerState::Suspect)
    }

    /// Its lowercase name (as the API shows it).
    pub fn as_str(self) -> &'static str {
        match self {
            PeerState::Alive => "alive",
            PeerState::Suspect => "suspect",
            PeerState::Dead => "dead",
            PeerState::Left => "left",
            PeerState::Unreachable => "unreachable",
        }
    }
}

impl From<MemberState> for PeerState {
    fn from(s: MemberState) -> Self {
        match s {
            MemberState::Alive => PeerState::Alive,
            MemberState::Suspect => PeerState::Suspect,
            MemberState::Dead => PeerState::Dead,
            MemberState::Left => PeerState::Left,
        }
    }
}

/// A member as this node sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberInfo {
    /// Node name.
    pub name: String,
    /// QUIC address.
    pub addr: SocketAddr,
    /// Region, if set.
    pub region: Option<String>,
    /// Liveness.
    pub state: MemberState,
    /// SWIM incarnation.
    pub incarnation: u64,
    /// Smoothed round-trip time.
    pub rtt: Option<Duration>,
    /// The member's storage actor id.
    pub actor: Option<ActorId>,
    /// Its advertised HTTP API address.
    pub api: Option<String>,
}

/// What the node knows of a peer's replication state. Every member it knows
/// is listed — alive, suspect, dead, or remembered from an earlier run and
/// not reached yet (`unreachable`) — with its age, so that a stale peer shows.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerStatus {
    /// QUIC address.
    pub addr: SocketAddr,
    /// Its name, if known.
    pub name: Option<String>,
    /// Its liveness as membership sees it, or unreachable.
    pub state: PeerState,
    /// Versions the peer had, at the last reconciliation, that this node still
    /// lacks.
    pub behind_versions: u64,
    /// Time since the last completed reconciliation with it.
    pub last_sync_ago: Option<Duration>,
    /// Time since the last completed reconciliation with it, or, if there
    /// was none, since this node first knew of it.
    pub sync_age: Duration,
    /// Round-trip time.
    pub rtt: Option<Duration>,
    /// Its region, if known.
    pub region: Option<String>,
}

/// Replication lag of one writer (a member's current actor).
#[derive(Debug, Clone, PartialEq)]
pub struct WriterStatus {
    /// Its actor id.
    pub actor: ActorId,
    /// The member's name, if known.
    pub name: Option<String>,
    /// The member's address, if known.
    pub addr: Option<SocketAddr>,
    /// Whether it is reachable (alive).
    pub reachable: bool,
    /// How long this node's copy of its data has not been known complete.
    pub lag: Duration,
    /// Its latest published version.
    pub head: u64,
    /// Versions up to `head` this node lacks.
    pub missing_versions: u64,
    /// The member's region, if known.
    pub region: Option<String>,
}

/// One region of the mesh, as this node sees it: its members and how far
/// behind this node's copy of their writes is.
#[derive(Debug, Clone, PartialEq)]
pub struct RegionStatus {
    /// The region (`None`: members with no region).
    pub region: Option<String>,
    /// Known members in it, this node included if it is in it.
    pub members: usize,
    /// Those alive in membership (not suspect, not dead), this node
    /// included.
    pub reachable: usize,
    /// The largest lag of its writers (reachable or not).
    pub max_lag: Duration,
    /// The largest lag of its reachable writers (what health checks).
    pub reachable_max_lag: Duration,
    /// The round-trip time to its nearest reachable member, if measured.
    pub nearest_rtt: Option<Duration>,
    /// Bytes this node sent to members of the region since it started
    /// (membership, broadcasts, reconciliation, node requests).
    pub bytes_sent: u64,
}

/// A change from a peer that cannot be applied on this node.
#[derive(Debug, Clone, PartialEq)]
pub struct QuarantineStatus {
    /// The writer's actor id.
    pub actor: ActorId,
    /// Its version.
    pub version: u64,
    /// Row changes it holds.
    pub rows: usize,
    /// Why it fails.
    pub error: String,
    /// Time since it first failed.
    pub since: Duration,
    /// Attempts so far.
    pub attempts: u64,
}

/// A node's catch-up by snapshot (`docs/retention.md`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotCatchUp {
    /// Keys of its rows checked against peers' listings.
    pub keys_checked: u64,
    /// Rows removed: deleted on the peers while it was away.
    pub rows_dropped: u64,
    /// Rows of its own the peers had not seen, written again above the
    /// floor (they replicate as new writes).
    pub rows_rebased: u64,
    /// Whether it completed (the node is whole again).
    pub complete: bool,
}

/// A snapshot of the node's state.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// Node name.
    pub name: String,
    /// Storage actor id.
    pub actor: ActorId,
    /// Last local version.
    pub db_version: u64,
    /// Highest version held per actor.
    pub version_vector: BTreeMap<ActorId, u64>,
    /// Per actor, the highest version `n` such that every version `1..=n` is
    /// held: what this node has of that actor without gaps. Tokens naming
    /// versions up to it are satisfied here.
    pub complete_through: BTreeMap<ActorId, u64>,
    /// Replication peers: every member known.
    pub peers: Vec<PeerStatus>,
    /// Lag per writer.
    pub writers: Vec<WriterStatus>,
    /// The largest lag over every writer.
    pub max_lag: Duration,
    /// Changes from peers that cannot be applied here.
    pub quarantined: Vec<QuarantineStatus>,
    /// Members reachable, this node included.
    pub members_reachable: usize,
    /// Members known (alive, suspect, dead, or remembered), this node included.
    pub members_known: usize,
    /// Broadcast messages waiting for the rate limit.
    pub broadcast_queue: usize,
    /// Broadcast messages dropped on overflow (anti-entropy repairs them).
    pub broadcast_dropped: u64,
    /// Counters.
    pub changes_applied: u64,
    /// Clients' transactions committed on this node.
    pub transactions_committed: u64,
    /// Commits they took (group commit: concurrent transactions share one).
    pub commit_groups: u64,
    /// SQLite transactions that applied changes from peers (arrivals that
    /// queue together share one).
    pub apply_transactions: u64,
    /// Broadcasts received that held nothing new (no apply, no relay).
    pub broadcasts_known: u64,
    /// Broadcast messages not sent to a peer that may hold rows the
    /// version reached this node without (table placement).
    pub broadcasts_withheld: u64,
    /// Rows of tables this node's region may not hold that peers sent
    /// anyway: left out (a peer ignoring the placement; see the log).
    pub placement_rows_refused: u64,
    /// A partial replica: rows of tables it does not carry that peers sent
    /// (they did not know), left out.
    pub rows_not_carried: u64,
    /// Tombstones collected since the node started (a retention policy).
    pub tombstones_collected: u64,
    /// Why tombstone collection cannot advance, if a policy is set and
    /// something holds it back (`GET /v1/retention` tells more).
    pub collection_held_back: Option<String>,
    /// Why this node cannot catch up incrementally and refuses writes, if a
    /// peer collected tombstones of versions it lacks.
    pub needs_snapshot: Option<String>,
    /// This node's catch-up by snapshot, if one ran since it started (or is
    /// running).
    pub snapshot_catch_up: Option<SnapshotCatchUp>,
    /// Members whose schema pins tables differently from this node's.
    pub placement_mismatch: Vec<String>,
    /// Pinned tables and the regions they may live in.
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
    pub partial_versions: usize,
    /// This node's region.
    pub region: Option<String>,
    /// Per region: members and lag (sorted by region; no region first).
    pub regions: Vec<RegionStatus>,
}

/// What this node keeps and for how long (`Node::retention`): the policy,
/// how far tombstone collection has gone and what holds it back, how far
/// back each writer's versions can still be served, whether each member can
/// still catch up incrementally, the absences seen, and what the
/// replication metadata weighs (see docs/retention.md).
#[derive(Debug, Clone, PartialEq)]
pub struct RetentionReport {
    /// How long tombstones are kept once every node holds them (`None`:
    /// forever, nothing is collected).
    pub policy: Option<Duration>,
    /// Tombstone collection: how far it has gone, what holds it back.
    pub collection: CollectionReport,
    /// How long a node may be away and still catch up incrementally
    /// (`None`: any time; with a policy, `--forget-after`: collection waits
    /// for a member that long).
    pub offline_limit: Option<Duration>,
    /// Per writer: the oldest of its versions this node can still serve.
    pub writers: Vec<RetainedWriter>,
    /// Per member: whether it can still catch up incrementally.
    pub members: Vec<MemberRetention>,
    /// The longest a member was unreachable and then came back, since this
    /// node started: (member, how long).
    pub longest_absence: Option<(String, Duration)>,
    /// What replication keeps beside the rows.
    pub metadata: litemesh_storage::MetadataStats,
    /// What an operator should know (a policy shorter than absences seen).
    pub warnings: Vec<String>,
}

/// Tombstone collection in a [`RetentionReport`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CollectionReport {
    /// Versions every node holds now (stable; summed over writers).
    pub stable_versions: u64,
    /// Versions whose tombstones were collected (summed over writers).
    pub collected_versions: u64,
    /// Tombstones collected since this node started.
    pub tombstones_collected: u64,
    /// Change-log entries the background sweep removed since this node
    /// started (every cell they wrote was overwritten since).
    pub log_entries_swept: u64,
    /// Why collection cannot advance, if something holds it back.
    pub held_back: Option<String>,
    /// How long it has been held back.
    pub held_back_for: Option<Duration>,
    /// The member whose last report lacks the most versions this node
    /// holds (name or address), and how many.
    pub slowest_member: Option<(String, u64)>,
    /// Per table, the causal length fresh inserts start above.
    pub floors: std::collections::BTreeMap<String, u64>,
    /// Why the last collection pass failed, if it did.
    pub error: Option<String>,
}

/// One writer in a [`RetentionReport`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetainedWriter {
    /// Its actor.
    pub actor: ActorId,
    /// The member's name, if known.
    pub name: Option<String>,
    /// The highest of its versions this node holds.
    pub head: u64,
    /// The oldest of its versions this node can still serve (1: all —
    /// versions whose tombstones were collected are served as cleared,
    /// with the floors that replace them).
    pub oldest_servable: u64,
    /// Its versions whose tombstones have been collected here (`1..=n`).
    pub collected_through: u64,
}

/// One member in a [`RetentionReport`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRetention {
    /// Its name.
    pub name: String,
    /// Its address.
    pub addr: SocketAddr,
    /// Liveness.
    pub state: MemberState,
    /// How long it has been unreachable, if it is.
    pub unreachable_for: Option<Duration>,
    /// Whether it can catch up incrementally (else: by snapshot).
    pub incremental: bool,
}
