//! The replication core: every decision of the sync protocol, as a sans-IO
//! state machine that the node and the simulator both drive.
//!
//! # Driving it
//!
//! The driver owns the sockets, the SQLite connections and the clock; the
//! core owns every protocol decision and every piece of per-peer state. Time
//! is a `Duration` since any fixed origin the driver chooses (monotonic).
//!
//! Inputs (each may queue outputs):
//! - membership: [`Replication::peer_up`], [`Replication::peer_down`],
//!   [`Replication::set_rtt`], [`Replication::handle_head`] (a writer's
//!   published head);
//! - storage: [`Replication::set_knowledge`] after every operation on the
//!   writer connection, [`Replication::handle_local_commit`] after a local
//!   transaction, and the results of the storage operations the core asked
//!   for ([`Replication::handle_applied`], [`Replication::handle_extracted`]);
//! - network: [`Replication::handle_broadcast`] (a message on the sync
//!   channel), [`Replication::handle_request`] (a peer opened a
//!   reconciliation), [`Replication::handle_response_frame`] and
//!   [`Replication::handle_response_end`] (the answer to one this node opened);
//! - time: [`Replication::handle_timeout`].
//!
//! Outputs, to drain after every input:
//! - [`Replication::poll_transmit`]: messages to send ([`Transmit`]);
//! - [`Replication::poll_storage`]: storage operations to run
//!   ([`StorageOp`]), each answered by the matching `handle_*` call with its
//!   [`OpId`];
//! - [`Replication::poll_event`]: what else the driver must do
//!   ([`Event`]);
//! - [`Replication::poll_timeout`]: when to call `handle_timeout` next.
//!
//! Storage operations may run concurrently and finish in any order; the
//! core never waits on one except to finish the reconciliation it belongs to.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use litemesh_proto::{
    ActorId, ChangeBatch, DEFAULT_MAX_WIRE_BYTES, KeyChunk, Knowledge, Message, RetentionInfo,
    SnapshotCursor, WireError, decode, decode_batch, encode, encode_batch,
};

use crate::retention::Report;

use crate::scheduler::{Config, PeerStatus, Scheduler, SyncOutcome};

/// Identifies a reconciliation this node opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId(pub u64);

/// Identifies a reconciliation a peer opened with this node (the driver
/// numbers them, one per incoming request).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

/// Identifies a storage operation the core asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(pub u64);

/// A message to send.
#[derive(Debug, Clone)]
pub enum Transmit {
    /// Send `bytes` (channel tag included) on a unidirectional stream.
    Uni {
        /// The peer.
        to: SocketAddr,
        /// The message.
        bytes: std::sync::Arc<[u8]>,
    },
    /// Open reconciliation `session` with `to`: send `bytes` as the request of
    /// a new bidirectional stream, then report each response frame with
    /// [`Replication::handle_response_frame`] and the end of the stream with
    /// [`Replication::handle_response_end`].
    Request {
        /// The reconciliation.
        session: SessionId,
        /// The peer.
        to: SocketAddr,
        /// The request frame.
        bytes: Vec<u8>,
    },
    /// The last frame of the answer to `request` (after the batches the
    /// driver streamed for its [`StorageOp::Extract`]); finish the stream.
    Respond {
        /// The request.
        request: RequestId,
        /// The frame.
        bytes: Vec<u8>,
    },
    /// Refuse `request`: reset its stream with `code`.
    Reject {
        /// The request.
        request: RequestId,
        /// 1: malformed request; 2: this node could not serve it.
        code: u32,
    },
}

/// A storage operation the core asks for.
#[derive(Debug, Clone)]
pub enum StorageOp {
    /// Apply these batches on the writer connection, in one transaction;
    /// call [`Replication::set_knowledge`], then
    /// [`Replication::handle_applied`] with `op`.
    Apply {
        /// The operation.
        op: OpId,
        /// The batches.
        batches: Vec<ChangeBatch>,
    },
    /// Extract every change `theirs` lacks, in batches of about
    /// `batch_bytes`, and stream each to `request` as a frame made by
    /// [`encode_sync_batch`] (a batch that cannot be encoded is skipped and
    /// counted); then call [`Replication::handle_extracted`] with `op`.
    Extract {
        /// The operation.
        op: OpId,
        /// The request to stream the batches to.
        request: RequestId,
        /// What the requester holds.
        theirs: Knowledge,
        /// What the requester may hold, when tables are pinned: extract
        /// with `Store::changes_for` (its rows filtered, versions held
        /// here in part left out). `None`: everything.
        requester: Option<litemesh_proto::Entitlement>,
        /// Bytes of changes per batch.
        batch_bytes: usize,
        /// No batches, the listing only: this node needs a snapshot itself
        /// (its writes are not to be sent before it is checked).
        listing_only: bool,
        /// The requester catches up by snapshot: after the batches, from
        /// the same read, stream the listing from this cursor
        /// (`Store::snapshot_for`: its base frame with
        /// [`encode_snapshot_base`], its key chunks with
        /// [`encode_key_chunk`]).
        snapshot: Option<SnapshotCursor>,
    },
    /// Check one range of a peer's snapshot listing against the rows held
    /// here, on the writer connection (`Store::prune_absent`); call
    /// [`Replication::set_knowledge`], then [`Replication::handle_pruned`].
    Prune {
        /// The operation.
        op: OpId,
        /// The range and its keys.
        chunk: KeyChunk,
        /// The peer's knowledge at its listing.
        theirs: Knowledge,
        /// What the snapshot must cover (`Store::prune_absent`).
        need: BTreeMap<ActorId, u64>,
    },
}

/// How a [`StorageOp::Prune`] went.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Rows the peer had deleted, removed here.
    pub dropped: u64,
    /// Rows of this node's own written again above the floor.
    pub rebased: u64,
    /// Keys of the range checked.
    pub checked: u64,
    /// The listing is complete: this node is whole again.
    pub complete: bool,
    /// Where the next listing resumes.
    pub cursor: SnapshotCursor,
    /// With the last range: what this node's rows are now checked against
    /// (`Store::checked`).
    pub now_checked: Option<Knowledge>,
}

/// Progress of this node's snapshot catch-up (since it started).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotProgress {
    /// Key ranges checked.
    pub chunks: u64,
    /// Keys checked.
    pub checked: u64,
    /// Rows removed (deleted on the peers meanwhile).
    pub dropped: u64,
    /// Rows written again above the floor.
    pub rebased: u64,
    /// Where the listing resumes.
    pub cursor: SnapshotCursor,
    /// When it completed (time as the core sees it), if it did.
    pub completed_at: Option<Duration>,
}

/// Something the driver must do that is neither a transmit nor a storage
/// operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A peer holds versions of this node's own actor that its file lacks
    /// (lost commits, a restored or copied file): writing on would reuse
    /// version numbers. Move to a new actor id, then call
    /// [`Replication::set_actor`].
    RotateActor {
        /// Who showed it.
        from: SocketAddr,
        /// The highest version of this node's actor the peer holds.
        their_head: u64,
        /// The highest this node holds.
        our_head: u64,
    },
    /// Drop the stream of `session`: it failed or timed out; frames that
    /// still arrive for it are ignored.
    CancelSession(SessionId),
    /// Read the stream of `session` again (it was paused while its applies
    /// were behind).
    ResumeReading(SessionId),
    /// A peer reported tombstone-collection floors higher than this node's:
    /// raise the store's (`Store::raise_floors`), then report them back
    /// with [`Replication::set_retention_info`].
    RaiseFloors(std::collections::BTreeMap<String, u64>),
    /// A peer lacks versions whose tombstones this node collected: its
    /// reconciliation was refused, its broadcasts are dropped and it is not
    /// pulled from until it comes back whole (a fresh file, a restore).
    PeerNeedsSnapshot {
        /// The peer.
        peer: SocketAddr,
        /// Versions it lacks that were collected here.
        missing: u64,
    },
    /// This node lacks versions whose tombstones a peer collected: it cannot
    /// catch up incrementally, and must stop writing (see
    /// [`Replication::needs_snapshot`]).
    NeedsSnapshot {
        /// The peer that said so.
        from: SocketAddr,
        /// Its reason.
        reason: String,
        /// What the peer collected (per actor, versions `1..=n`): what the
        /// snapshot must cover (`Store::set_needs_snapshot`).
        need: BTreeMap<ActorId, u64>,
    },
    /// This node caught up by snapshot: it is whole again, takes writes and
    /// serves its data.
    SnapshotComplete {
        /// The peer whose listing completed it.
        from: SocketAddr,
        /// What it took.
        progress: SnapshotProgress,
    },
    /// A reconciliation this node opened ended.
    SyncEnded {
        /// The peer.
        peer: SocketAddr,
        /// `None` on success, else why it failed.
        error: Option<String>,
    },
}

/// How an [`StorageOp::Extract`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Extracted {
    /// Every batch was streamed; `skipped` could not be encoded.
    Done {
        /// Batches skipped.
        skipped: u64,
    },
    /// The requester went away while the batches were streamed.
    Interrupted,
    /// Nothing was streamed: this node cannot serve the snapshot asked for
    /// now (changes wait to be applied, a table it does not hold). Not a
    /// failure: the requester tries another peer.
    Refused(String),
    /// Reading the changes failed.
    Failed(String),
}

/// Counters of the core.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Reconciliations this node opened that completed.
    pub syncs_completed: u64,
    /// Those that failed.
    pub syncs_failed: u64,
    /// Reconciliations served in a row that failed or skipped a batch (0
    /// after one served whole).
    pub serve_failures: u64,
    /// Why the last of them failed.
    pub serve_error: Option<String>,
    /// Broadcast messages waiting for the rate limit.
    pub broadcast_queue: usize,
    /// Broadcast messages dropped because the queue overflowed.
    pub broadcast_dropped: u64,
    /// Broadcasts received that held nothing new (relays of what this node
    /// already had): neither applied nor relayed further.
    pub broadcasts_known: u64,
    /// Broadcast messages not sent to a peer because it may hold rows the
    /// version reached this node without (table placement): it gets them
    /// from a node that holds them whole.
    pub broadcasts_withheld: u64,
}

/// A reconciliation this node opened.
#[derive(Debug)]
struct Session {
    peer: SocketAddr,
    /// Fails when nothing arrives until then.
    deadline: Duration,
    group: Vec<ChangeBatch>,
    group_bytes: usize,
    /// Applies asked for and not reported yet.
    applying: usize,
    /// Whether the driver was told to stop reading.
    paused: bool,
    /// Whether an apply of this session taught this node something.
    learned: bool,
    /// The peer's knowledge, from its final frame.
    theirs: Option<Knowledge>,
    /// The stream ended without error.
    ended: bool,
    /// A snapshot answer's base: the peer's knowledge at its listing.
    base: Option<Knowledge>,
    /// A range of a snapshot listing was checked.
    listed: bool,
    /// The request asked for a snapshot answer.
    asked_snapshot: bool,
    /// Ranges of the listing waiting to be checked, in order: one at a
    /// time, each after every apply before it.
    keys: VecDeque<KeyChunk>,
    /// A range is being checked.
    pruning: bool,
}

impl Session {
    /// Work of this node's own the session waits on: applies, listing
    /// ranges queued or being checked.
    fn pending(&self) -> usize {
        self.applying + self.keys.len() + usize::from(self.pruning)
    }
}

/// Why a storage operation was asked for.
#[derive(Debug)]
enum Purpose {
    Broadcast {
        from: SocketAddr,
        hops: u8,
        /// The encoded batch, relayed as it came.
        batch: Vec<u8>,
        heads: Vec<(ActorId, u64)>,
    },
    Session(SessionId),
    Serve(RequestId),
    Prune(SessionId),
}

/// Applies of one reconciliation in flight before its stream is paused.
const MAX_APPLYING_PER_SESSION: usize = 2;

/// The replication core. See the [module documentation](self).
#[derive(Debug)]
pub struct Replication {
    config: Config,
    sched: Scheduler,
    actor: ActorId,
    /// After a clean restart: no peer has confirmed yet that it holds this
    /// node's latest version (see [`Replication::take_probation`]).
    probation: bool,
    last_rotation: Option<Duration>,
    knowledge: Knowledge,
    quarantined: Vec<(ActorId, u64)>,
    sessions: BTreeMap<SessionId, Session>,
    ops: BTreeMap<OpId, Purpose>,
    next_id: u64,
    transmits: VecDeque<Transmit>,
    storage: VecDeque<StorageOp>,
    events: VecDeque<Event>,
    stats: Stats,
    /// Table placement (inactive while no table is pinned).
    filter: crate::placement::Filter,
    /// What this node reports for tombstone collection.
    retention: RetentionInfo,
    /// The last report of every peer that reconciled with this node, and
    /// when it came.
    reports: BTreeMap<SocketAddr, Report>,
    report_at: BTreeMap<SocketAddr, Duration>,
    /// Per actor, the versions whose tombstones this node collected.
    collected: BTreeMap<ActorId, u64>,
    /// Peers found to lack collected versions.
    stale_peers: std::collections::BTreeSet<SocketAddr>,
    /// Set when a peer said this node lacks versions it collected.
    needs_snapshot: Option<String>,
    /// Serve nothing until a reconciliation this node opens completes.
    hold_until_synced: bool,
    /// Snapshot catch-up (while `needs_snapshot`).
    snapshot: SnapshotProgress,
    /// What the snapshot must cover: per actor, versions `1..=n` peers
    /// collected that this node lacked.
    need: BTreeMap<ActorId, u64>,
    /// Peers whose completed listing did not cover the need (they lack
    /// some of those versions, or hold them without rows of a table this
    /// node holds): not asked again while another may serve.
    short_sources: std::collections::BTreeSet<SocketAddr>,
    /// Versions whose deletes this node's rows were checked against by a
    /// snapshot listing: held, for the checks of collected versions.
    checked: Knowledge,
}

/// A broadcast, decoded (see [`decode_broadcast`]).
#[derive(Debug, Clone)]
pub struct Broadcast {
    hops: u8,
    /// The encoded batch, relayed as it came.
    encoded: Vec<u8>,
    batch: ChangeBatch,
}

impl Broadcast {
    /// How many more times it may be relayed.
    pub fn hops(&self) -> u8 {
        self.hops
    }

    /// Its changes.
    pub fn batch(&self) -> &ChangeBatch {
        &self.batch
    }
}

/// A response frame of a reconciliation, decoded (see [`decode_frame`]).
#[derive(Debug, Clone)]
pub enum Frame {
    /// A batch the requester lacks, and its encoded size.
    Batch(ChangeBatch, usize),
    /// The responder's knowledge and retention report: the last frame.
    Done(Knowledge, RetentionInfo),
    /// The base of a snapshot listing: the responder's knowledge at it.
    Base(Knowledge),
    /// One range of a snapshot listing.
    Keys(KeyChunk),
    /// The responder refused to serve (the only frame), and why; with
    /// `snapshot`, because this node lacks versions whose tombstones it
    /// collected.
    Refused {
        /// Why.
        reason: String,
        /// Incremental sync cannot make this node whole.
        snapshot: bool,
        /// With `snapshot`: what the responder collected.
        collected: BTreeMap<ActorId, u64>,
    },
}

/// Decodes a message of the sync channel (channel tag removed). Pure: a
/// driver may decode outside whatever lock guards the core, then call
/// [`Replication::handle_decoded_broadcast`].
pub fn decode_broadcast(bytes: &[u8], max_message: usize) -> Result<Broadcast, WireError> {
    let (hops, encoded) = match decode(bytes, max_message)? {
        Message::Broadcast { hops, batch } => (hops, batch),
        _ => {
            return Err(WireError::Malformed(
                "not a broadcast on the broadcast channel".into(),
            ));
        }
    };
    let batch = decode_batch(&encoded, DEFAULT_MAX_WIRE_BYTES)?;
    Ok(Broadcast {
        hops,
        encoded,
        batch,
    })
}

/// Decodes a response frame of a reconciliation. Pure, like
/// [`decode_broadcast`]; see [`Replication::handle_decoded_frame`].
pub fn decode_frame(bytes: &[u8], max_message: usize) -> Result<Frame, WireError> {
    match decode(bytes, max_message)? {
        Message::SyncBatch { batch } => {
            let decoded = decode_batch(&batch, DEFAULT_MAX_WIRE_BYTES)?;
            Ok(Frame::Batch(decoded, batch.len()))
        }
        Message::SyncDone {
            knowledge,
            retention,
        } => Ok(Frame::Done(knowledge, retention)),
        Message::SyncRefused {
            reason,
            snapshot,
            collected,
        } => Ok(Frame::Refused {
            reason,
            snapshot,
            collected,
        }),
        Message::SnapshotBase { knowledge } => Ok(Frame::Base(knowledge)),
        Message::SnapshotKeys(chunk) => Ok(Frame::Keys(chunk)),
        _ => Err(WireError::Malformed(
            "unexpected message in a sync response".into(),
        )),
    }
}

/// Encodes a local commit's changes for broadcast, or `None` when they
/// encode to more than `max_broadcast_bytes` (anti-entropy carries those).
/// Pure: a driver may run it outside whatever lock guards the core.
pub fn encode_local_commit(
    batches: &[ChangeBatch],
    max_broadcast_bytes: usize,
) -> Option<Vec<Vec<u8>>> {
    let mut encoded = Vec::with_capacity(batches.len());
    let mut total = 0;
    for b in batches {
        let bytes = encode_batch(b, DEFAULT_MAX_WIRE_BYTES).ok()?;
        total += bytes.len();
        if total > max_broadcast_bytes {
            return None;
        }
        encoded.push(bytes);
    }
    Some(encoded)
}

/// Encodes the base frame of a snapshot listing.
pub fn encode_snapshot_base(
    knowledge: Knowledge,
    max_message: usize,
) -> Result<Vec<u8>, WireError> {
    encode(&Message::SnapshotBase { knowledge }, max_message)
}

/// Encodes one key chunk of a snapshot listing.
pub fn encode_key_chunk(chunk: KeyChunk, max_message: usize) -> Result<Vec<u8>, WireError> {
    encode(&Message::SnapshotKeys(chunk), max_message)
}

/// Encodes one batch as a response frame of a reconciliation.
pub fn encode_sync_batch(batch: &ChangeBatch, max_message: usize) -> Result<Vec<u8>, WireError> {
    let batch = encode_batch(batch, DEFAULT_MAX_WIRE_BYTES)?;
    encode(&Message::SyncBatch { batch }, max_message)
}

impl Replication {
    /// A core for a node writing as `actor`, holding `knowledge`.
    /// `probation`: the node restarted cleanly on its file, which may yet be
    /// a restored copy (see [`Replication::take_probation`]). Randomness (peer
    /// choice, jitter) comes from `seed`.
    pub fn new(
        config: Config,
        seed: u64,
        actor: ActorId,
        knowledge: Knowledge,
        probation: bool,
    ) -> Replication {
        Replication {
            sched: Scheduler::new(config.clone(), seed),
            config,
            actor,
            probation,
            last_rotation: None,
            knowledge,
            quarantined: Vec::new(),
            sessions: BTreeMap::new(),
            ops: BTreeMap::new(),
            next_id: 1,
            transmits: VecDeque::new(),
            storage: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
            filter: crate::placement::Filter::new(Default::default(), None),
            retention: RetentionInfo::default(),
            reports: BTreeMap::new(),
            report_at: BTreeMap::new(),
            collected: BTreeMap::new(),
            stale_peers: std::collections::BTreeSet::new(),
            needs_snapshot: None,
            hold_until_synced: false,
            snapshot: SnapshotProgress::default(),
            checked: Knowledge::default(),
            need: BTreeMap::new(),
            short_sources: std::collections::BTreeSet::new(),
        }
    }

    /// What this node's rows were checked against by snapshot listings
    /// (read from its file at start: `Store::checked`).
    pub fn set_checked(&mut self, checked: Knowledge) {
        self.checked = checked;
    }

    /// Where this node's snapshot listing resumes (read from its file at
    /// start, while it needs a snapshot).
    pub fn set_snapshot_cursor(&mut self, cursor: SnapshotCursor) {
        self.snapshot.cursor = cursor;
    }

    /// Progress of this node's snapshot catch-up.
    pub fn snapshot_progress(&self) -> &SnapshotProgress {
        &self.snapshot
    }

    /// Records (at start) that this node cannot catch up incrementally, as
    /// a peer said before it restarted, and what its snapshot must cover
    /// (`Store::snapshot_need`): it serves nothing but its listing.
    pub fn set_needs_snapshot(&mut self, reason: String, need: BTreeMap<ActorId, u64>) {
        self.needs_snapshot = Some(reason);
        self.need = need;
    }

    /// A peer collected `collected` and this node lacks some of it: it is
    /// stale (if it was not already), and its snapshot must cover that too.
    /// Tells the driver whenever what it must cover grows.
    fn note_need(&mut self, from: SocketAddr, reason: String, collected: &BTreeMap<ActorId, u64>) {
        let mut grew = false;
        for (a, c) in collected {
            let e = self.need.entry(*a).or_insert(0);
            if *c > *e {
                *e = *c;
                grew = true;
            }
        }
        if self.needs_snapshot.is_none() {
            self.needs_snapshot = Some(reason.clone());
            grew = true;
        }
        if grew {
            self.events.push_back(Event::NeedsSnapshot {
                from,
                reason,
                need: self.need.clone(),
            });
        }
    }

    /// Whether what this node holds and checked covers its need.
    fn need_covered(&self) -> bool {
        let mut k = self.advertised();
        k.union_with(&self.checked);
        self.need.iter().all(|(a, c)| k.missing_up_to(a, *c) == 0)
    }

    /// Serve nothing until a reconciliation this node opens completes: set
    /// at start when the node has been away longer than its peers wait for
    /// a member, so that none of them pulls its possibly stale rows before
    /// it has learned whether it can still catch up incrementally.
    pub fn hold_until_synced(&mut self) {
        self.hold_until_synced = true;
    }

    /// Sets how far this node has collected tombstones (per actor, versions
    /// `1..=n`): a peer that lacks some of them and holds data from others
    /// is refused (it needs a snapshot).
    pub fn set_collected(&mut self, collected: BTreeMap<ActorId, u64>) {
        self.collected = collected;
    }

    /// Why this node cannot catch up incrementally any more, if a peer said
    /// so: it lacks versions whose tombstones the peer collected, so rows
    /// deleted meanwhile may still be here. It must not write, nor serve
    /// its data, until it is replaced by a fresh file or a restore.
    pub fn needs_snapshot(&self) -> Option<&str> {
        self.needs_snapshot.as_deref()
    }

    /// Peers found to lack versions whose tombstones this node collected.
    pub fn stale_peers(&self) -> &std::collections::BTreeSet<SocketAddr> {
        &self.stale_peers
    }

    /// How many collected versions a requester with `theirs` lacks — `None`
    /// when it lacks none, or holds nothing at all (a new node: what it gets
    /// is current, cleared versions and floors are all it needs). A node
    /// holding only writes of its own lacks them too: it wrote without
    /// knowing this mesh, and a write of a key whose tombstone is gone here
    /// would win on some nodes and lose on others.
    /// Versions the requester checked its rows against by a snapshot
    /// listing (`checked`) count as held.
    fn lacks_collected(&self, theirs: &Knowledge, checked: &Knowledge) -> Option<u64> {
        if theirs.have.values().all(|r| r.is_empty()) {
            return None;
        }
        let mut k = theirs.clone();
        k.union_with(checked);
        let missing: u64 = self
            .collected
            .iter()
            .map(|(a, c)| k.missing_up_to(a, *c))
            .fold(0, u64::saturating_add);
        (missing > 0).then_some(missing)
    }

    /// How many versions a peer collected (per actor, `1..=n`) that this
    /// node lacks — `None` when none, or when this node holds nothing at
    /// all (a new node: [`Replication::lacks_collected`]).
    fn lacks_collected_by(&self, collected: &BTreeMap<ActorId, u64>) -> Option<u64> {
        let mut k = self.advertised();
        if k.have.values().all(|r| r.is_empty()) {
            return None;
        }
        k.union_with(&self.checked);
        let missing: u64 = collected
            .iter()
            .map(|(a, c)| k.missing_up_to(a, *c))
            .fold(0, u64::saturating_add);
        (missing > 0).then_some(missing)
    }

    /// Sets what this node reports for tombstone collection at every
    /// reconciliation: its actors and floors (its quarantine is counted
    /// here, from [`Replication::set_knowledge`]).
    pub fn set_retention_info(&mut self, owned: Vec<ActorId>, floors: BTreeMap<String, u64>) {
        self.retention.owned = owned;
        self.retention.floors = floors;
    }

    /// Adds an actor this node writes with to what it reports (after it
    /// moved to a new actor id).
    pub fn add_owned(&mut self, actor: ActorId) {
        if !self.retention.owned.contains(&actor) {
            self.retention.owned.push(actor);
        }
    }

    /// The last report of every peer that reconciled with this node (in
    /// either direction), for [`crate::stable_cut`].
    pub fn reports(&self) -> &BTreeMap<SocketAddr, Report> {
        &self.reports
    }

    /// When each peer's last report came.
    pub fn report_times(&self) -> &BTreeMap<SocketAddr, Duration> {
        &self.report_at
    }

    fn own_retention(&self) -> RetentionInfo {
        RetentionInfo {
            unapplied: self.quarantined.len() as u64,
            holding: self.hold_until_synced,
            collected: self.collected.clone(),
            checked: self.checked.clone(),
            ..self.retention.clone()
        }
    }

    /// Records a peer's report; asks the driver to raise its floors when
    /// the peer's are higher.
    fn record_report(
        &mut self,
        now: Duration,
        from: SocketAddr,
        knowledge: Knowledge,
        info: RetentionInfo,
    ) {
        self.report_at.insert(from, now);
        let higher: BTreeMap<String, u64> = info
            .floors
            .iter()
            .filter(|(t, cl)| self.retention.floors.get(*t).is_none_or(|c| c < *cl))
            .map(|(t, cl)| (t.clone(), *cl))
            .collect();
        if !higher.is_empty() {
            for (t, cl) in &higher {
                self.retention.floors.insert(t.clone(), *cl);
            }
            self.events.push_back(Event::RaiseFloors(higher));
        }
        self.reports.insert(
            from,
            Report {
                knowledge,
                owned: info.owned,
                unapplied: info.unapplied,
            },
        );
    }

    /// Sets the table placement to enforce: broadcasts are filtered per
    /// receiver and reconciliations extracted per requester, by the region
    /// `resolver` certifies for the peer (with no resolver — an insecure
    /// mesh, the simulator — by the region it gossips).
    pub fn set_placement(
        &mut self,
        placement: litemesh_proto::Placement,
        resolver: Option<crate::RegionResolver>,
    ) {
        let carried = std::mem::take(&mut self.filter.carried);
        self.filter = crate::placement::Filter::new(placement, resolver);
        self.filter.carried = carried;
    }

    fn next(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    // ----- state the driver reads -----

    /// The actor this node writes as.
    pub fn actor(&self) -> ActorId {
        self.actor
    }

    /// What this node holds (as last reported by [`Replication::set_knowledge`]).
    pub fn knowledge(&self) -> &Knowledge {
        &self.knowledge
    }

    /// What this node tells peers it holds: its knowledge plus the versions
    /// in its quarantine — it has their data and retries them itself, so
    /// peers need not send them at every exchange. (Tokens and lag go by the
    /// real knowledge: a quarantined version is not visible here.)
    pub fn advertised(&self) -> Knowledge {
        let mut k = self.knowledge.clone();
        for &(a, v) in &self.quarantined {
            k.have.entry(a).or_default().insert(v);
        }
        k
    }

    /// Every peer ever seen up (down ones included), with what is known of it.
    pub fn peers(&self) -> Vec<PeerStatus> {
        self.sched.peers()
    }

    /// The tables a peer carries, if it is a partial replica (from its
    /// membership metadata): senders leave the others out.
    pub fn set_peer_tables(&mut self, addr: SocketAddr, tables: Option<Vec<String>>) {
        self.filter.set_carried(addr, tables);
    }

    /// The tables a peer carries, if it is a partial replica.
    pub fn peer_tables(&self, addr: SocketAddr) -> Option<std::collections::BTreeSet<String>> {
        self.filter.carried.get(&addr).cloned()
    }

    /// Whether some peer is a partial replica.
    pub fn has_partial_peers(&self) -> bool {
        !self.filter.carried.is_empty()
    }

    /// A peer's region, as its membership metadata gives it.
    pub fn peer_region(&self, addr: SocketAddr) -> Option<String> {
        self.sched.peer_region(addr)
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        Stats {
            broadcast_queue: self.sched.queue_len(),
            broadcast_dropped: self.sched.dropped(),
            broadcasts_withheld: self.filter.skipped,
            ..self.stats.clone()
        }
    }

    // ----- membership -----

    /// A peer is alive: reconcile with it at once.
    pub fn peer_up(&mut self, addr: SocketAddr, rtt: Option<Duration>) {
        self.sched.peer_up(addr, rtt);
    }

    /// A peer is down (dead, left, unreachable).
    pub fn peer_down(&mut self, addr: SocketAddr) {
        self.sched.peer_down(addr);
    }

    /// A peer's round-trip time changed.
    pub fn set_rtt(&mut self, addr: SocketAddr, rtt: Duration) {
        self.sched.set_rtt(addr, rtt);
    }

    /// This node's region (region-aware dissemination).
    pub fn set_region(&mut self, region: Option<String>) {
        self.sched.set_region(region);
    }

    /// A peer's region, from its membership metadata (call after
    /// [`Replication::peer_up`]).
    pub fn set_peer_region(&mut self, addr: SocketAddr, region: Option<String>) {
        self.sched.set_peer_region(addr, region);
    }

    /// The member at `from` published `head` as the latest version of its
    /// `actor`. If this node lacks any version up to it (a version too large
    /// to broadcast, a lost broadcast), it pulls from that member now rather
    /// than at some later round.
    pub fn handle_head(&mut self, now: Duration, from: SocketAddr, actor: ActorId, head: u64) {
        if self.sched.is_up(&from) && self.advertised().missing_up_to(&actor, head) > 0 {
            self.sched.pull_soon(now, from);
        }
    }

    // ----- storage -----

    /// What the node holds now, and the versions it keeps in quarantine:
    /// call after every operation on the writer connection. Knowledge only
    /// grows.
    pub fn set_knowledge(&mut self, knowledge: Knowledge, quarantined: Vec<(ActorId, u64)>) {
        debug_assert!(knowledge.covers(&self.knowledge), "knowledge never shrinks");
        self.knowledge = knowledge;
        self.quarantined = quarantined;
    }

    /// The node moved to a new actor id.
    pub fn set_actor(&mut self, actor: ActorId) {
        self.actor = actor;
        self.probation = false;
    }

    /// Whether the node must move to a new actor id before its next write:
    /// it restarted cleanly, and no peer has confirmed yet that it holds the
    /// node's latest version — the file may be a restored copy whose peers,
    /// all out of reach, hold versions it would number again. Clears the flag.
    pub fn take_probation(&mut self) -> bool {
        std::mem::take(&mut self.probation)
    }

    /// Puts the probation back (moving to a new actor id failed).
    pub fn restore_probation(&mut self) {
        self.probation = true;
    }

    /// A local transaction committed, with these changes: broadcast them,
    /// unless they encode to more than the broadcast cap (anti-entropy
    /// carries those).
    pub fn handle_local_commit(&mut self, batches: &[ChangeBatch]) {
        let encoded = encode_local_commit(batches, self.config.max_broadcast_bytes);
        self.handle_encoded_local_commit(encoded);
    }

    /// [`Replication::handle_local_commit`] for changes the driver encoded
    /// with [`encode_local_commit`] (outside whatever lock guards the core).
    pub fn handle_encoded_local_commit(&mut self, encoded: Option<Vec<Vec<u8>>>) {
        for bytes in encoded.into_iter().flatten() {
            self.sched.on_local_commit(bytes);
        }
    }

    /// A [`StorageOp::Apply`] ended: `Ok(newly)` when it committed (`newly`:
    /// it taught this node something: a version, a chunk, a cleared range),
    /// `Err` with why it failed. Call [`Replication::set_knowledge`] first.
    pub fn handle_applied(&mut self, now: Duration, op: OpId, result: Result<bool, String>) {
        let Some(purpose) = self.ops.remove(&op) else {
            debug_assert!(false, "an unknown or already reported apply");
            return;
        };
        match purpose {
            Purpose::Broadcast {
                from,
                hops,
                batch,
                heads,
            } => {
                let Ok(newly) = result else { return };
                self.broadcast_done(now, from, hops, batch, &heads, newly);
            }
            Purpose::Session(id) => {
                let Some(s) = self.sessions.get_mut(&id) else {
                    return; // The session failed meanwhile.
                };
                debug_assert!(s.applying > 0);
                s.applying -= 1;
                s.deadline = now + self.config.session_timeout;
                match result {
                    Ok(newly) => {
                        s.learned |= newly;
                        if s.paused && s.pending() < MAX_APPLYING_PER_SESSION {
                            s.paused = false;
                            self.events.push_back(Event::ResumeReading(id));
                        }
                        self.next_prune(id);
                        self.try_finish(now, id);
                    }
                    Err(e) => self.fail(now, id, format!("applying its changes failed: {e}")),
                }
            }
            Purpose::Serve(_) | Purpose::Prune(_) => {
                debug_assert!(false, "not an apply")
            }
        }
    }

    /// A [`StorageOp::Prune`] ended: `Ok` with what it did, `Err` with why
    /// it failed. Call [`Replication::set_knowledge`] first.
    pub fn handle_pruned(&mut self, now: Duration, op: OpId, result: Result<Pruned, String>) {
        let Some(Purpose::Prune(id)) = self.ops.remove(&op) else {
            debug_assert!(false, "an unknown or already reported prune");
            return;
        };
        if let Ok(p) = &result {
            // Recorded whatever became of the session: it is in the file.
            self.snapshot.chunks += 1;
            self.snapshot.checked += p.checked;
            self.snapshot.dropped += p.dropped;
            self.snapshot.rebased += p.rebased;
            self.snapshot.cursor = p.cursor.clone();
            if let Some(c) = &p.now_checked {
                self.checked = c.clone();
            }
        }
        let peer = self.sessions.get(&id).map(|s| s.peer);
        if let (Ok(p), Some(from)) = (&result, peer)
            && p.now_checked.is_some()
            && (!p.complete || !self.need_covered())
        {
            self.short_sources.insert(from);
        }
        if let Ok(p) = &result
            && p.complete
            && self.needs_snapshot.is_some()
            && !self.need_covered()
        {
            // The file completed against a need older than this core's (a
            // peer's collection learned meanwhile): again, from the start.
            self.snapshot.cursor = SnapshotCursor::default();
            if let Some(from) = peer {
                self.events.push_back(Event::NeedsSnapshot {
                    from,
                    reason: self.needs_snapshot.clone().unwrap_or_default(),
                    need: self.need.clone(),
                });
            }
        } else if let Ok(p) = &result
            && p.complete
            && self.needs_snapshot.is_some()
        {
            self.needs_snapshot = None;
            self.need.clear();
            self.short_sources.clear();
            self.snapshot.completed_at = Some(now);
            if let Some(from) = peer {
                self.events.push_back(Event::SnapshotComplete {
                    from,
                    progress: self.snapshot.clone(),
                });
            }
        }
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        s.pruning = false;
        s.deadline = now + self.config.session_timeout;
        match result {
            Ok(_) => {
                s.listed = true;
                if s.paused && s.pending() < MAX_APPLYING_PER_SESSION {
                    s.paused = false;
                    self.events.push_back(Event::ResumeReading(id));
                }
                self.next_prune(id);
                self.try_finish(now, id);
            }
            Err(e) => self.fail(now, id, format!("checking a snapshot listing failed: {e}")),
        }
    }

    /// A [`StorageOp::Extract`] ended.
    pub fn handle_extracted(&mut self, _now: Duration, op: OpId, outcome: Extracted) {
        let Some(Purpose::Serve(request)) = self.ops.remove(&op) else {
            debug_assert!(false, "an unknown or already reported extract");
            return;
        };
        match outcome {
            Extracted::Done { skipped } => {
                if skipped > 0 {
                    self.stats.serve_failures += 1;
                    self.stats.serve_error =
                        Some(format!("{skipped} change batch(es) too large to send"));
                } else {
                    self.stats.serve_failures = 0;
                    self.stats.serve_error = None;
                }
                // Built now, after the extraction: the requester learns
                // everything this node held when it stopped sending.
                let done = Message::SyncDone {
                    knowledge: self.advertised(),
                    retention: self.own_retention(),
                };
                match encode(&done, self.config.max_message) {
                    Ok(bytes) => self
                        .transmits
                        .push_back(Transmit::Respond { request, bytes }),
                    Err(_) => self
                        .transmits
                        .push_back(Transmit::Reject { request, code: 2 }),
                }
            }
            Extracted::Interrupted => {}
            Extracted::Refused(reason) => {
                match encode(
                    &Message::SyncRefused {
                        reason,
                        snapshot: false,
                        collected: BTreeMap::new(),
                    },
                    self.config.max_message,
                ) {
                    Ok(bytes) => self
                        .transmits
                        .push_back(Transmit::Respond { request, bytes }),
                    Err(_) => self
                        .transmits
                        .push_back(Transmit::Reject { request, code: 2 }),
                }
            }
            Extracted::Failed(e) => {
                self.stats.serve_failures += 1;
                self.stats.serve_error = Some(e);
                self.transmits
                    .push_back(Transmit::Reject { request, code: 2 });
            }
        }
    }

    // ----- network -----

    /// A message arrived on the sync channel (channel tag removed). Malformed
    /// input is refused with an error and changes nothing.
    pub fn handle_broadcast(
        &mut self,
        now: Duration,
        from: SocketAddr,
        bytes: &[u8],
    ) -> Result<(), WireError> {
        let b = decode_broadcast(bytes, self.config.max_message)?;
        self.handle_decoded_broadcast(now, from, b);
        Ok(())
    }

    /// [`Replication::handle_broadcast`] for a broadcast the driver decoded.
    pub fn handle_decoded_broadcast(&mut self, now: Duration, from: SocketAddr, b: Broadcast) {
        if self.stale_peers.contains(&from) {
            // It lacks collected versions: its writes may bring back rows
            // deleted meanwhile.
            return;
        }
        let Broadcast {
            hops,
            encoded: batch,
            batch: decoded,
        } = b;
        let heads: Vec<(ActorId, u64)> = decoded
            .versions
            .iter()
            .map(|v| (v.actor, v.version))
            .collect();
        // A broadcast of this node's own actor beyond its file.
        if let Some(&(_, v)) = heads
            .iter()
            .filter(|(a, _)| *a == self.actor)
            .max_by_key(|(_, v)| *v)
        {
            let mut k = Knowledge::default();
            k.insert(self.actor, v);
            self.check_own_versions(now, &k, from);
        }
        if self.teaches_nothing(&decoded) {
            // A relay of what this node already holds (most broadcasts of a
            // small mesh reach a node more than once): no apply, no relay.
            self.stats.broadcasts_known += 1;
            self.broadcast_done(now, from, hops, batch, &heads, false);
            return;
        }
        let op = OpId(self.next());
        self.ops.insert(
            op,
            Purpose::Broadcast {
                from,
                hops,
                batch,
                heads,
            },
        );
        self.storage.push_back(StorageOp::Apply {
            op,
            batches: vec![decoded],
        });
    }

    /// Whether applying `batch` could teach this node nothing: every version
    /// in it held (or in quarantine, or its own) and every cleared range
    /// already held.
    fn teaches_nothing(&self, batch: &ChangeBatch) -> bool {
        let held = |a: &ActorId, v: u64| {
            *a == self.actor || self.knowledge.contains(a, v) || self.quarantined.contains(&(*a, v))
        };
        batch.versions.iter().all(|v| held(&v.actor, v.version))
            && batch.cleared.iter().all(|c| {
                c.actor == self.actor
                    || self
                        .knowledge
                        .have
                        .get(&c.actor)
                        .is_some_and(|r| r.contains_range(c.start, c.end))
            })
    }

    /// A broadcast was applied (`newly`: it taught this node something) or
    /// found to hold nothing new: pull from its sender if it shows this node
    /// far behind, and relay it if it was news.
    fn broadcast_done(
        &mut self,
        now: Duration,
        from: SocketAddr,
        hops: u8,
        batch: Vec<u8>,
        heads: &[(ActorId, u64)],
        newly: bool,
    ) {
        // A broadcast far ahead of what this node holds of its writer means
        // broadcasts were lost (a partition, one-way loss, an overflowing
        // queue): pull from the sender now. A few versions missing is
        // ordinary reordering.
        let threshold = self.config.gap_pull_threshold;
        let behind = heads.iter().any(|(a, v)| {
            let missing = self.knowledge.missing_up_to(a, v.saturating_sub(1));
            // Quarantined versions count as held.
            let parked = self
                .quarantined
                .iter()
                .filter(|(qa, qv)| qa == a && *qv < *v)
                .count() as u64;
            missing.saturating_sub(parked) >= threshold
        });
        if behind {
            self.sched.pull_soon(now, from);
        }
        self.sched.on_broadcast(from, hops, batch, newly);
    }

    /// A peer opened a reconciliation: `bytes` is its request frame. Asks
    /// for the extraction of what it lacks; a malformed request is rejected.
    pub fn handle_request(
        &mut self,
        now: Duration,
        from: SocketAddr,
        request: RequestId,
        bytes: &[u8],
    ) -> Result<(), WireError> {
        let theirs = match decode(bytes, self.config.max_message) {
            Ok(Message::SyncRequest {
                knowledge,
                retention,
            }) => {
                let wants_snapshot = retention.snapshot.is_some();
                let lacks = self.lacks_collected(&knowledge, &retention.checked);
                match lacks {
                    Some(missing) => {
                        if self.stale_peers.insert(from) {
                            self.events.push_back(Event::PeerNeedsSnapshot {
                                peer: from,
                                missing,
                            });
                        }
                    }
                    None => {
                        self.stale_peers.remove(&from);
                    }
                }
                // The other way round: the requester collected versions this
                // node lacks — this node is the stale one.
                // Only what the requester holds can it have collected (a
                // wrong report must not fence this node for good).
                let collected: BTreeMap<ActorId, u64> = retention
                    .collected
                    .iter()
                    .map(|(a, c)| (*a, (*c).min(knowledge.complete_through(a))))
                    .filter(|(_, c)| *c > 0)
                    .collect();
                if let Some(missing) = self.lacks_collected_by(&collected) {
                    let reason = format!(
                        "{from} collected the tombstones of {missing} version(s) this node \
                         lacks (it was away longer than its peers waited for it): rows deleted \
                         meanwhile may still be here; it catches up by snapshot \
                         (docs/retention.md)"
                    );
                    self.note_need(from, reason, &collected);
                }
                let refusal = if let Some(why) = &self.needs_snapshot {
                    // Its listing (only) may serve another stale node: the
                    // two sides of a long partition each need the other's.
                    (!wants_snapshot).then(|| (format!("the peer cannot serve: {why}"), false))
                } else if let Some(missing) = lacks.filter(|_| !wants_snapshot) {
                    Some((
                        format!(
                            "this node lacks {missing} version(s) whose tombstones the peer has \
                             collected (it was away longer than the peers waited for it): rows \
                             deleted meanwhile may still be here; it catches up by snapshot \
                             (docs/retention.md)"
                        ),
                        true,
                    ))
                } else if self.hold_until_synced && !retention.holding {
                    Some((
                        "the peer has just started after a long absence and serves nothing \
                         until a reconciliation shows it can still catch up incrementally"
                            .to_string(),
                        false,
                    ))
                } else {
                    None
                };
                if let Some((reason, snapshot)) = refusal {
                    let collected = if snapshot {
                        self.collected.clone()
                    } else {
                        BTreeMap::new()
                    };
                    match encode(
                        &Message::SyncRefused {
                            reason,
                            snapshot,
                            collected,
                        },
                        self.config.max_message,
                    ) {
                        Ok(bytes) => self
                            .transmits
                            .push_back(Transmit::Respond { request, bytes }),
                        Err(_) => self
                            .transmits
                            .push_back(Transmit::Reject { request, code: 2 }),
                    }
                    return Ok(());
                }
                let snapshot = retention.snapshot.clone();
                if lacks.is_none() {
                    self.record_report(now, from, knowledge.clone(), retention);
                }
                (knowledge, snapshot)
            }
            Ok(_) => {
                self.transmits
                    .push_back(Transmit::Reject { request, code: 1 });
                return Err(WireError::Malformed("not a sync request".into()));
            }
            Err(e) => {
                self.transmits
                    .push_back(Transmit::Reject { request, code: 1 });
                return Err(e);
            }
        };
        let (theirs, snapshot) = theirs;
        self.check_own_versions(now, &theirs, from);
        if !self.advertised().covers(&theirs) {
            // The requester holds versions this node lacks: pull from it soon.
            self.sched.mark_urgent(now, from);
        }
        let op = OpId(self.next());
        self.ops.insert(op, Purpose::Serve(request));
        let requester = self
            .filter
            .is_active()
            .then(|| self.filter.entitlement(from, self.sched.peer_region(from)));
        self.storage.push_back(StorageOp::Extract {
            op,
            request,
            theirs,
            requester,
            batch_bytes: self.config.batch_bytes,
            listing_only: self.needs_snapshot.is_some(),
            snapshot,
        });
        Ok(())
    }

    /// A response frame of `session` arrived. Returns whether the driver
    /// should read the next one now; if not, it waits for
    /// [`Event::ResumeReading`] (its applies are behind).
    pub fn handle_response_frame(
        &mut self,
        now: Duration,
        session: SessionId,
        bytes: &[u8],
    ) -> bool {
        let frame = decode_frame(bytes, self.config.max_message);
        self.handle_decoded_frame(now, session, frame)
    }

    /// [`Replication::handle_response_frame`] for a frame the driver decoded
    /// (or failed to decode).
    pub fn handle_decoded_frame(
        &mut self,
        now: Duration,
        session: SessionId,
        frame: Result<Frame, WireError>,
    ) -> bool {
        let group_limit = self.config.apply_group_bytes;
        let timeout = self.config.session_timeout;
        let Some(s) = self.sessions.get_mut(&session) else {
            return false;
        };
        s.deadline = now + timeout;
        match frame {
            Ok(Frame::Batch(decoded, len)) => {
                s.group_bytes += len;
                s.group.push(decoded);
                if s.group_bytes >= group_limit {
                    self.flush(session);
                }
            }
            Ok(Frame::Refused {
                reason,
                snapshot,
                collected,
            }) => {
                let peer = s.peer;
                if snapshot {
                    // Recorded even while already catching up: the snapshot
                    // must cover what this peer collected too.
                    self.note_need(peer, format!("{peer} said: {reason}"), &collected);
                }
                self.fail(now, session, format!("refused: {reason}"));
                return false;
            }
            Ok(Frame::Base(_) | Frame::Keys(_)) if !s.asked_snapshot => {
                self.fail(now, session, "a snapshot listing it did not ask for".into());
                return false;
            }
            Ok(Frame::Base(knowledge)) => {
                s.base = Some(knowledge);
            }
            Ok(Frame::Keys(chunk)) => {
                if s.base.is_none() {
                    self.fail(now, session, "a snapshot listing without its base".into());
                    return false;
                }
                if self.needs_snapshot.is_some() {
                    // Checked in order, each after the batches before it.
                    s.keys.push_back(chunk);
                    self.flush(session);
                    self.next_prune(session);
                }
                // Else whole already (another listing completed): ignored.
            }
            Ok(Frame::Done(knowledge, info)) => {
                let peer = s.peer;
                s.theirs = Some(knowledge.clone());
                self.record_report(now, peer, knowledge, info);
            }
            Err(e) => {
                self.fail(now, session, format!("bad response frame: {e}"));
                return false;
            }
        }
        let Some(s) = self.sessions.get_mut(&session) else {
            return false;
        };
        if s.pending() >= MAX_APPLYING_PER_SESSION {
            s.paused = true;
            false
        } else {
            true
        }
    }

    /// Asks for the check of the session's next listing range, if none is
    /// running and every apply before it has reported.
    fn next_prune(&mut self, session: SessionId) {
        let need = self.need.clone();
        let whole = self.needs_snapshot.is_none();
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        if whole {
            // Whole already (another listing completed): the rest is moot.
            s.keys.clear();
            return;
        }
        if s.pruning || s.applying > 0 {
            return;
        }
        let (Some(chunk), Some(theirs)) = (s.keys.pop_front(), s.base.clone()) else {
            return;
        };
        s.pruning = true;
        let op = OpId(self.next());
        self.ops.insert(op, Purpose::Prune(session));
        self.storage.push_back(StorageOp::Prune {
            op,
            chunk,
            theirs,
            need,
        });
    }

    /// The response stream of `session` ended: `Ok` when the peer finished
    /// it, `Err` with why it broke (connection lost, reset, refused).
    pub fn handle_response_end(
        &mut self,
        now: Duration,
        session: SessionId,
        result: Result<(), String>,
    ) {
        if !self.sessions.contains_key(&session) {
            return;
        }
        match result {
            Err(e) => self.fail(now, session, e),
            Ok(()) => {
                self.flush(session);
                if let Some(s) = self.sessions.get_mut(&session) {
                    s.ended = true;
                }
                self.try_finish(now, session);
            }
        }
    }

    // ----- time -----

    /// Time passed: reconciliations that received nothing for too long fail.
    pub fn handle_timeout(&mut self, now: Duration) {
        let expired: Vec<SessionId> = self
            .sessions
            .iter()
            // While its own applies are behind, the node waits on itself.
            .filter(|(_, s)| s.deadline <= now && s.pending() == 0)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.fail(now, id, "the peer sent nothing for too long".into());
        }
    }

    /// When to call [`Replication::handle_timeout`] (and poll) next.
    pub fn poll_timeout(&self, now: Duration) -> Option<Duration> {
        let sessions = self
            .sessions
            .values()
            .filter(|s| s.pending() == 0)
            .map(|s| s.deadline)
            .min();
        match (self.sched.poll_timeout(now), sessions) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // ----- outputs -----

    /// The next message to send, if any: answers first, then new
    /// reconciliations, then broadcasts as the rate limit allows.
    pub fn poll_transmit(&mut self, now: Duration) -> Option<Transmit> {
        if let Some(t) = self.transmits.pop_front() {
            return Some(t);
        }
        // A peer found to lack versions this node collected is still pulled
        // from: the request tells it what this node collected, so a peer
        // still stale finds out and refuses (or answers a snapshot request
        // with its listing only), and one that has caught up serves.
        let mut polled = self.sched.poll_sync(now);
        if let Some(peer) = polled
            && self.needs_snapshot.is_some()
            && self.short_sources.contains(&peer)
        {
            // Its listing did not cover the need: another peer's may.
            self.sched.sync_done(now, peer, SyncOutcome::Failed);
            polled = None;
            if self
                .sched
                .peers()
                .iter()
                .filter(|p| p.up)
                .all(|p| self.short_sources.contains(&p.addr))
            {
                // None left to try: every one again (they may have caught
                // up meanwhile).
                self.short_sources.clear();
            }
        }
        if let Some(peer) = polled {
            let mut retention = self.own_retention();
            let asked_snapshot = self.needs_snapshot.is_some();
            if asked_snapshot {
                retention.snapshot = Some(self.snapshot.cursor.clone());
            }
            let request = Message::SyncRequest {
                knowledge: self.advertised(),
                retention,
            };
            match encode(&request, self.config.max_message) {
                Ok(bytes) => {
                    let session = SessionId(self.next());
                    self.sessions.insert(
                        session,
                        Session {
                            peer,
                            deadline: now + self.config.session_timeout,
                            group: Vec::new(),
                            group_bytes: 0,
                            applying: 0,
                            paused: false,
                            learned: false,
                            theirs: None,
                            ended: false,
                            base: None,
                            listed: false,
                            asked_snapshot,
                            keys: VecDeque::new(),
                            pruning: false,
                        },
                    );
                    return Some(Transmit::Request {
                        session,
                        to: peer,
                        bytes,
                    });
                }
                Err(e) => {
                    // Knowledge too large for one message: nothing to send.
                    self.sched.sync_done(now, peer, SyncOutcome::Failed);
                    self.stats.syncs_failed += 1;
                    self.events.push_back(Event::SyncEnded {
                        peer,
                        error: Some(format!("the sync request cannot be encoded: {e}")),
                    });
                }
            }
        }
        while let Some(o) = self.sched.poll_transmit(now) {
            if !self.filter.is_active() {
                return Some(Transmit::Uni {
                    to: o.to,
                    bytes: o.bytes,
                });
            }
            let claimed = self.sched.peer_region(o.to);
            if let Some(bytes) =
                self.filter
                    .broadcast_for(o.to, claimed, o.bytes, self.config.max_message)
            {
                return Some(Transmit::Uni { to: o.to, bytes });
            }
        }
        None
    }

    /// The next storage operation to run, if any.
    pub fn poll_storage(&mut self) -> Option<StorageOp> {
        self.storage.pop_front()
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ----- internals -----

    /// Asks for the apply of the batches a session gathered.
    fn flush(&mut self, session: SessionId) {
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        if s.group.is_empty() {
            return;
        }
        let batches = std::mem::take(&mut s.group);
        s.group_bytes = 0;
        s.applying += 1;
        let op = OpId(self.next());
        self.ops.insert(op, Purpose::Session(session));
        self.storage.push_back(StorageOp::Apply { op, batches });
    }

    /// Completes a session whose stream ended and whose applies all reported.
    fn try_finish(&mut self, now: Duration, id: SessionId) {
        let Some(s) = self.sessions.get(&id) else {
            return;
        };
        if !s.ended || s.pending() > 0 {
            return;
        }
        let Some(theirs) = s.theirs.clone() else {
            self.fail(
                now,
                id,
                "the sync response ended without its final frame".into(),
            );
            return;
        };
        let s = self.sessions.remove(&id).expect("checked above");
        self.check_own_versions(now, &theirs, s.peer);
        // Come back at once only if this exchange taught us something and
        // the peer still holds more (we were catching up); versions it
        // committed meanwhile arrive by broadcast or the next round.
        let has_more = (s.learned && !self.advertised().covers(&theirs))
            || (s.listed && self.needs_snapshot.is_some());
        self.sched.set_knowledge(now, s.peer, theirs);
        self.sched.sync_done(
            now,
            s.peer,
            SyncOutcome::Completed {
                peer_has_more: has_more,
            },
        );
        self.stats.syncs_completed += 1;
        self.hold_until_synced = false;
        self.events.push_back(Event::SyncEnded {
            peer: s.peer,
            error: None,
        });
    }

    fn fail(&mut self, now: Duration, id: SessionId, error: String) {
        let Some(s) = self.sessions.remove(&id) else {
            return;
        };
        self.sched.sync_done(now, s.peer, SyncOutcome::Failed);
        self.stats.syncs_failed += 1;
        self.events.push_back(Event::CancelSession(id));
        self.events.push_back(Event::SyncEnded {
            peer: s.peer,
            error: Some(error),
        });
    }

    /// A peer holds versions of this node's own actor beyond what its file
    /// has: the file lost commits (or is a copy of another node's) and would
    /// reuse version numbers. Asks the driver to move to a new actor id.
    fn check_own_versions(&mut self, now: Duration, theirs: &Knowledge, from: SocketAddr) {
        let own = self.actor;
        let Some(their_head) = theirs.have.get(&own).and_then(|r| r.max()) else {
            return;
        };
        let ours = self
            .knowledge
            .have
            .get(&own)
            .and_then(|r| r.max())
            .unwrap_or(0);
        if their_head == ours {
            // A peer holds this node's latest version: the file is not a
            // stale copy, the actor id stays.
            self.probation = false;
        }
        if their_head <= ours {
            return;
        }
        if self
            .last_rotation
            .is_some_and(|t| now.saturating_sub(t) < self.config.rotate_at_most_every)
        {
            return;
        }
        self.last_rotation = Some(now);
        self.events.push_back(Event::RotateActor {
            from,
            their_head,
            our_head: ours,
        });
    }
}
