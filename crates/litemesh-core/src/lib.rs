//! # litemesh-core
//!
//! The node core: membership (SWIM with Lifeguard, `litemesh-membership`)
//! and replication (`litemesh-sync`) composed into one sans-IO state machine
//! — everything a litemesh node decides, with no sockets, no SQLite and no
//! clock. Two drivers run it: the `litemesh` node (tokio, quinn, SQLite in
//! the blocking pool) and the simulator in `simulations/` (simulated network,
//! disk faults and clock, real SQLite files). What one tests, the other ships.
//!
//! # Driving it
//!
//! Time is a `Duration` since an origin the driver chooses (monotonic);
//! wall-clock time (for the members remembered across restarts and the
//! commit times of published heads) is that plus the Unix time of the origin,
//! given once at creation.
//!
//! Inputs: [`NodeCore::handle_datagram`], [`NodeCore::handle_uni`],
//! [`NodeCore::handle_request`], [`NodeCore::handle_response_frame`],
//! [`NodeCore::handle_response_end`] (network); [`NodeCore::set_knowledge`],
//! [`NodeCore::handle_local_commit`], [`NodeCore::handle_applied`],
//! [`NodeCore::handle_extracted`], [`NodeCore::set_actor`] (storage);
//! [`NodeCore::leave`]; [`NodeCore::handle_timeout`] (time).
//!
//! Outputs, drained after every input: [`NodeCore::poll_transmit`],
//! [`NodeCore::poll_storage`], [`NodeCore::poll_event`],
//! [`NodeCore::poll_timeout`]; and the known members to save in the file,
//! [`NodeCore::take_known_to_save`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use litemesh_membership as mb;
use litemesh_proto::{ActorId, ChangeBatch, Head, Knowledge, NodeMeta, WireError, channel};
use litemesh_sync::{
    Extracted, LagTracker, OpId, PeerStatus, Replication, RequestId, SessionId, Stats, StorageOp,
    WriterLag,
};

pub use litemesh_sync::Event as SyncEvent;
pub use retention::CollectionStatus;

mod retention;

/// Tuning of the node core.
#[derive(Debug, Clone)]
pub struct Config {
    /// Replication.
    pub sync: litemesh_sync::Config,
    /// Membership.
    pub membership: mb::Config,
    /// A member not seen for this long is forgotten (and no longer rejoined).
    pub forget_after: Duration,
    /// Most often the node republishes its head in its membership metadata.
    pub head_publish_every: Duration,
    /// How often the node tries to rejoin remembered members it cannot see.
    pub rejoin_every: Duration,
    /// Remembered members tried at start, most recently seen first.
    pub rejoin_at_most: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            sync: litemesh_sync::Config::default(),
            membership: mb::Config::default(),
            forget_after: Duration::from_secs(72 * 3600),
            head_publish_every: Duration::from_secs(1),
            rejoin_every: Duration::from_secs(15),
            rejoin_at_most: 32,
        }
    }
}

/// A member remembered in the node's file from an earlier run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remembered {
    /// Its address.
    pub addr: SocketAddr,
    /// Its name, if known.
    pub name: Option<String>,
    /// Its actor, if known.
    pub actor: Option<ActorId>,
    /// When it was last seen alive (Unix milliseconds).
    pub last_seen_ms: u64,
}

/// What the node knows of a member across its restarts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    /// Its name, if known.
    pub name: Option<String>,
    /// Its current actor, if known.
    pub actor: Option<ActorId>,
    /// When this node first knew of it (core time).
    pub first_known: Duration,
    /// When it was last seen alive (Unix milliseconds; 0: not in this run
    /// nor remembered).
    pub last_seen_ms: u64,
}

/// A member as this node sees it (itself included).
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// Its name (its membership id when it published none).
    pub name: String,
    /// Its QUIC address.
    pub addr: SocketAddr,
    /// Its region, if it has one.
    pub region: Option<String>,
    /// Liveness.
    pub state: mb::MemberState,
    /// SWIM incarnation.
    pub incarnation: u64,
    /// Smoothed round-trip time.
    pub rtt: Option<Duration>,
    /// Its current actor.
    pub actor: Option<ActorId>,
    /// Its HTTP API address, if it serves one.
    pub api: Option<String>,
}

/// A message to send.
#[derive(Debug, Clone)]
pub enum Transmit {
    /// One unreliable datagram (membership probes and gossip).
    Datagram {
        /// The peer.
        to: SocketAddr,
        /// The datagram.
        bytes: Vec<u8>,
    },
    /// A replication transmit, or a reliable membership message
    /// ([`litemesh_sync::Transmit::Uni`] with the membership channel tag).
    Sync(litemesh_sync::Transmit),
}

/// Something the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// From replication (move to a new actor id, cancel or resume a session,
    /// a reconciliation ended).
    Sync(SyncEvent),
    /// The members changed (state, metadata): refresh what is shown.
    MembersChanged,
    /// The graceful leave started by [`NodeCore::leave`] is done (or timed
    /// out): the driver may close the transport.
    LeaveDone,
    /// Collect the tombstones made by these versions (per actor, every
    /// version up to the one given): `Store::collect`, then report the
    /// store's floors with [`NodeCore::set_floors`]. Only with a retention
    /// policy ([`NodeCore::set_retention`]).
    Collect(BTreeMap<ActorId, u64>),
}

/// What a node starts with.
#[derive(Debug, Clone)]
pub struct Start {
    /// Tuning.
    pub config: Config,
    /// The address peers reach this node at.
    pub addr: SocketAddr,
    /// Its metadata (name, region, API, actor, head).
    pub meta: NodeMeta,
    /// What its file holds.
    pub knowledge: Knowledge,
    /// The file restarted cleanly and may yet be a restored copy (see
    /// [`Replication::take_probation`]).
    pub probation: bool,
    /// Members remembered in its file.
    pub remembered: Vec<Remembered>,
    /// Seed addresses to join through (none: start a new mesh, unless
    /// remembered members answer).
    pub seeds: Vec<SocketAddr>,
    /// Unix time of the core's time origin, milliseconds.
    pub wall_at_origin_ms: u64,
    /// The membership generation of this run (greater than any earlier run's).
    pub generation: u64,
    /// Seed of every random choice.
    pub seed: u64,
}

/// The node core. See the [crate documentation](crate).
pub struct NodeCore {
    config: Config,
    repl: Replication,
    membership: mb::Membership,
    meta: NodeMeta,
    lag: LagTracker,
    addr: SocketAddr,
    wall0: u64,
    known: BTreeMap<SocketAddr, Known>,
    forgotten: Vec<String>,
    known_dirty: bool,
    known_new: bool,
    last_save: Duration,
    members: Vec<Member>,
    head_pending: Option<(ActorId, u64, u64)>,
    head_published: Duration,
    next_rejoin: Duration,
    /// The seeds it started with: tried again, with the remembered members,
    /// while not seen alive (a node cut off longer than `forget_after` has
    /// forgotten every member, and finds the mesh again through them).
    seeds: Vec<SocketAddr>,
    next_housekeeping: Duration,
    /// The deadline of a graceful leave in progress, and whether it is done.
    leaving: Option<(Duration, bool)>,
    events: VecDeque<Event>,
    /// Members whose published table placement differs from this node's
    /// (by address).
    placement_mismatch: BTreeSet<SocketAddr>,
    /// Tombstone collection.
    collector: retention::Collector,
}

/// Saved members are written at most this often when only their last-seen
/// times changed (a new member is saved at the next opportunity).
const SAVE_EVERY: Duration = Duration::from_secs(30);
/// How long a graceful leave may take.
const LEAVE_TIMEOUT: Duration = Duration::from_millis(500);
/// Period of forgetting and round-trip-time updates.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(1);

impl std::fmt::Debug for NodeCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCore")
            .field("addr", &self.addr)
            .field("actor", &self.repl.actor())
            .field("members", &self.members.len())
            .finish_non_exhaustive()
    }
}

fn mbt(now: Duration) -> mb::Instant {
    mb::Instant::from_duration(now)
}

impl NodeCore {
    /// A node core that starts joining through `start.seeds` and the
    /// remembered members. Fails only if the metadata cannot be encoded or
    /// is too large for membership.
    pub fn new(start: Start) -> Result<NodeCore, WireError> {
        let Start {
            config,
            addr,
            meta,
            knowledge,
            probation,
            remembered,
            seeds,
            wall_at_origin_ms,
            generation,
            seed,
        } = start;
        let actor = meta.actor;
        let forget_ms = config.forget_after.as_millis() as u64;
        let mut known = BTreeMap::new();
        let mut forgotten = Vec::new();
        let mut lag = LagTracker::new();
        for p in &remembered {
            if p.addr == addr || wall_at_origin_ms.saturating_sub(p.last_seen_ms) > forget_ms {
                forgotten.push(p.addr.to_string());
                continue;
            }
            if let Some(a) = p.actor
                && a != actor
            {
                lag.reachable(Duration::ZERO, a, false);
            }
            known.insert(
                p.addr,
                Known {
                    name: p.name.clone(),
                    actor: p.actor,
                    first_known: Duration::ZERO,
                    last_seen_ms: p.last_seen_ms,
                },
            );
        }
        let id = mb::NodeId(u64::from_be_bytes(
            actor.0[..8].try_into().expect("8 bytes"),
        ));
        let mut membership = mb::Membership::new(
            mb::Identity { id, generation },
            addr,
            config.membership.clone(),
            seed,
        );
        membership
            .set_metadata(mb::Instant::ZERO, meta.encode()?)
            .map_err(|e| WireError::Malformed(e.to_string()))?;
        let seeds: Vec<SocketAddr> = seeds.into_iter().filter(|s| *s != addr).collect();
        let mut joining = seeds.clone();
        for p in remembered.iter().take(config.rejoin_at_most) {
            if p.addr != addr && !joining.contains(&p.addr) && known.contains_key(&p.addr) {
                joining.push(p.addr);
            }
        }
        // With no one to join this starts a new mesh.
        membership.join(mb::Instant::ZERO, &joining);
        let mut repl = Replication::new(
            config.sync.clone(),
            seed,
            actor,
            knowledge.clone(),
            probation,
        );
        repl.set_region(meta.region.clone());
        lag.observe(&knowledge);
        let mut core = NodeCore {
            next_rejoin: config.rejoin_every,
            seeds,
            config,
            repl,
            membership,
            meta,
            lag,
            addr,
            wall0: wall_at_origin_ms,
            known_dirty: !forgotten.is_empty(),
            known,
            forgotten,
            known_new: false,
            last_save: Duration::ZERO,
            members: Vec::new(),
            head_pending: None,
            head_published: Duration::ZERO,
            next_housekeeping: HOUSEKEEPING_EVERY,
            leaving: None,
            events: VecDeque::new(),
            placement_mismatch: BTreeSet::new(),
            collector: retention::Collector::default(),
        };
        core.refresh_members(Duration::ZERO, false);
        Ok(core)
    }

    fn wall(&self, now: Duration) -> u64 {
        self.wall0 + now.as_millis() as u64
    }

    // ----- state the driver reads -----

    /// The replication core (read-only: its peers, stats, knowledge).
    pub fn replication(&self) -> &Replication {
        &self.repl
    }

    /// The actor this node writes as.
    pub fn actor(&self) -> ActorId {
        self.repl.actor()
    }

    /// The address peers reach this node at.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The members, this node first.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Members known (from membership and the file), by address, this node
    /// excluded.
    pub fn known(&self) -> &BTreeMap<SocketAddr, Known> {
        &self.known
    }

    /// Replication peers (see [`Replication::peers`]).
    pub fn peers(&self) -> Vec<PeerStatus> {
        self.repl.peers()
    }

    /// Replication counters.
    pub fn stats(&self) -> Stats {
        self.repl.stats()
    }

    /// The tables a peer carries, if it is a partial replica.
    pub fn peer_tables(&self, addr: SocketAddr) -> Option<std::collections::BTreeSet<String>> {
        self.repl.peer_tables(addr)
    }

    /// Members (alive or suspect) whose schema pins tables differently from
    /// this node's: rows they send or relay may not be filtered as this
    /// node's placement says.
    pub fn placement_mismatches(&self) -> Vec<SocketAddr> {
        self.placement_mismatch.iter().copied().collect()
    }

    /// Whether some peer is a partial replica.
    pub fn has_partial_peers(&self) -> bool {
        self.repl.has_partial_peers()
    }

    /// A peer's region, as it gossips it.
    pub fn peer_region(&self, addr: SocketAddr) -> Option<String> {
        self.repl.peer_region(addr)
    }

    /// Sets the table placement replication enforces (see
    /// [`Replication::set_placement`]).
    pub fn set_placement(
        &mut self,
        placement: litemesh_proto::Placement,
        resolver: Option<litemesh_sync::RegionResolver>,
    ) {
        self.repl.set_placement(placement, resolver);
    }

    /// Lag per writer, given what the node holds.
    pub fn lag(&self, now: Duration, knowledge: &Knowledge) -> Vec<WriterLag> {
        self.lag.lag(now, knowledge, &self.repl.actor())
    }

    /// What tombstone collection found at its last check.
    pub fn collection(&self) -> CollectionStatus {
        self.collector.status()
    }

    /// Whether this node has joined a mesh (or started its own).
    pub fn is_joined(&self) -> bool {
        self.membership.is_joined()
    }

    // ----- storage -----

    /// What the node holds now, and the versions in its quarantine: call
    /// after every operation on the writer connection.
    pub fn set_knowledge(&mut self, knowledge: Knowledge, quarantined: Vec<(ActorId, u64)>) {
        self.lag.observe(&knowledge);
        self.repl.set_knowledge(knowledge, quarantined);
    }

    /// Sets the retention policy (`window`: keep what every node holds this
    /// long, then collect its tombstones; `None`: collect nothing) and what
    /// the node reports to peers at each reconciliation: the actors its
    /// file wrote with and its floors (see `docs/retention.md`).
    pub fn set_retention(
        &mut self,
        window: Option<Duration>,
        owned: Vec<ActorId>,
        floors: BTreeMap<String, u64>,
    ) {
        self.collector.window = window;
        self.collector.owned = owned.clone();
        self.repl.set_retention_info(owned, floors);
    }

    /// How far the store has collected tombstones (`Store::collected_through`):
    /// peers lacking those versions are refused (they need a snapshot).
    pub fn set_collected(&mut self, collected: BTreeMap<ActorId, u64>) {
        self.repl.set_collected(collected);
    }

    /// At start: this node cannot catch up incrementally (a peer said so
    /// before it restarted; the file remembers). See
    /// [`Replication::set_needs_snapshot`].
    pub fn set_needs_snapshot(
        &mut self,
        reason: String,
        need: BTreeMap<litemesh_proto::ActorId, u64>,
    ) {
        self.repl.set_needs_snapshot(reason, need);
    }

    /// At start: serve nothing until a reconciliation this node opens
    /// completes (see [`Replication::hold_until_synced`]).
    pub fn hold_until_synced(&mut self) {
        self.repl.hold_until_synced();
    }

    /// Why this node cannot catch up incrementally, if a peer said so
    /// (see [`Replication::needs_snapshot`]).
    pub fn needs_snapshot(&self) -> Option<String> {
        self.repl.needs_snapshot().map(str::to_string)
    }

    /// The store's floors changed (a collection, or a peer's higher floors
    /// raised): report them to peers from now on.
    pub fn set_floors(&mut self, floors: BTreeMap<String, u64>) {
        let owned = self.collector.owned.clone();
        self.repl.set_retention_info(owned, floors);
    }

    /// A local transaction committed `version` at `unix_ms` with these
    /// changes: broadcast them, publish the new head.
    pub fn handle_local_commit(
        &mut self,
        now: Duration,
        version: u64,
        unix_ms: u64,
        batches: &[ChangeBatch],
    ) {
        let _ = now;
        self.repl.handle_local_commit(batches);
        self.local_head(version, unix_ms);
    }

    /// [`NodeCore::handle_local_commit`] for changes the driver encoded with
    /// [`litemesh_sync::encode_local_commit`], outside the core's lock.
    pub fn handle_encoded_local_commit(
        &mut self,
        version: u64,
        unix_ms: u64,
        encoded: Option<Vec<Vec<u8>>>,
    ) {
        self.repl.handle_encoded_local_commit(encoded);
        self.local_head(version, unix_ms);
    }

    fn local_head(&mut self, version: u64, unix_ms: u64) {
        let actor = self.repl.actor();
        if self
            .head_pending
            .is_none_or(|(a, pv, _)| a != actor || version > pv)
        {
            self.head_pending = Some((actor, version, unix_ms));
        }
    }

    /// The node moved to a new actor id, whose latest version is `head`.
    pub fn set_actor(&mut self, now: Duration, actor: ActorId, head: u64) {
        if !self.collector.owned.contains(&actor) {
            self.collector.owned.push(actor);
        }
        self.repl.add_owned(actor);
        self.repl.set_actor(actor);
        self.head_pending = Some((actor, head, self.wall(now)));
    }

    /// See [`Replication::take_probation`].
    pub fn take_probation(&mut self) -> bool {
        self.repl.take_probation()
    }

    /// See [`Replication::restore_probation`].
    pub fn restore_probation(&mut self) {
        self.repl.restore_probation();
    }

    /// See [`Replication::handle_applied`].
    pub fn handle_applied(&mut self, now: Duration, op: OpId, result: Result<bool, String>) {
        self.repl.handle_applied(now, op, result);
    }

    /// See [`Replication::handle_pruned`].
    pub fn handle_pruned(
        &mut self,
        now: Duration,
        op: OpId,
        result: Result<litemesh_sync::Pruned, String>,
    ) {
        self.repl.handle_pruned(now, op, result);
    }

    /// See [`Replication::set_checked`].
    pub fn set_checked(&mut self, checked: litemesh_proto::Knowledge) {
        self.repl.set_checked(checked);
    }

    /// See [`Replication::set_snapshot_cursor`].
    pub fn set_snapshot_cursor(&mut self, cursor: litemesh_proto::SnapshotCursor) {
        self.repl.set_snapshot_cursor(cursor);
    }

    /// See [`Replication::snapshot_progress`].
    pub fn snapshot_progress(&self) -> &litemesh_sync::SnapshotProgress {
        self.repl.snapshot_progress()
    }

    /// See [`Replication::handle_extracted`].
    pub fn handle_extracted(&mut self, now: Duration, op: OpId, outcome: Extracted) {
        self.repl.handle_extracted(now, op, outcome);
    }

    /// Whether [`NodeCore::take_known_to_save`] has something to save now.
    pub fn wants_save(&self, now: Duration) -> bool {
        self.known_dirty && (self.known_new || now.saturating_sub(self.last_save) >= SAVE_EVERY)
    }

    /// The members to save in the file, if they changed and it is time
    /// (at once for a member never saved, else at most every 30 s; `force`:
    /// now, e.g. at shutdown): members seen alive, and addresses to forget.
    /// Call [`NodeCore::save_failed`] if saving fails.
    pub fn take_known_to_save(
        &mut self,
        now: Duration,
        force: bool,
    ) -> Option<(Vec<Remembered>, Vec<String>)> {
        if !self.known_dirty {
            return None;
        }
        let due = force || self.known_new || now.saturating_sub(self.last_save) >= SAVE_EVERY;
        if !due {
            return None;
        }
        self.known_dirty = false;
        self.known_new = false;
        self.last_save = now;
        let seen = self
            .known
            .iter()
            .filter(|(_, k)| k.last_seen_ms > 0)
            .map(|(a, k)| Remembered {
                addr: *a,
                name: k.name.clone(),
                actor: k.actor,
                last_seen_ms: k.last_seen_ms,
            })
            .collect();
        Some((seen, std::mem::take(&mut self.forgotten)))
    }

    /// Saving what [`NodeCore::take_known_to_save`] gave failed: keep it for
    /// the next time.
    pub fn save_failed(&mut self, forget: Vec<String>) {
        self.known_dirty = true;
        self.forgotten.extend(forget);
    }

    // ----- network -----

    /// A membership datagram arrived.
    pub fn handle_datagram(
        &mut self,
        now: Duration,
        from: SocketAddr,
        bytes: &[u8],
    ) -> Result<(), String> {
        let r = self
            .membership
            .handle_message(mbt(now), from, bytes)
            .map_err(|e| e.to_string());
        self.after_membership(now);
        self.check_leave(now);
        r
    }

    /// A message arrived on a unidirectional stream (channel tag first).
    pub fn handle_uni(
        &mut self,
        now: Duration,
        from: SocketAddr,
        bytes: &[u8],
    ) -> Result<(), String> {
        match bytes.split_first() {
            Some((&channel::MEMBERSHIP, rest)) => self.handle_datagram(now, from, rest),
            Some((&channel::SYNC, rest)) => self
                .repl
                .handle_broadcast(now, from, rest)
                .map_err(|e| e.to_string()),
            _ => Err("unknown stream message".into()),
        }
    }

    /// A sync broadcast the driver decoded outside the core's lock (see
    /// [`litemesh_sync::decode_broadcast`]).
    pub fn handle_decoded_broadcast(
        &mut self,
        now: Duration,
        from: SocketAddr,
        b: litemesh_sync::Broadcast,
    ) {
        self.repl.handle_decoded_broadcast(now, from, b);
    }

    /// See [`Replication::handle_decoded_frame`].
    pub fn handle_decoded_frame(
        &mut self,
        now: Duration,
        session: SessionId,
        frame: Result<litemesh_sync::Frame, WireError>,
    ) -> bool {
        self.repl.handle_decoded_frame(now, session, frame)
    }

    /// See [`Replication::handle_request`].
    pub fn handle_request(
        &mut self,
        now: Duration,
        from: SocketAddr,
        request: RequestId,
        bytes: &[u8],
    ) -> Result<(), WireError> {
        self.repl.handle_request(now, from, request, bytes)
    }

    /// See [`Replication::handle_response_frame`].
    pub fn handle_response_frame(
        &mut self,
        now: Duration,
        session: SessionId,
        bytes: &[u8],
    ) -> bool {
        self.repl.handle_response_frame(now, session, bytes)
    }

    /// See [`Replication::handle_response_end`].
    pub fn handle_response_end(
        &mut self,
        now: Duration,
        session: SessionId,
        result: Result<(), String>,
    ) {
        self.repl.handle_response_end(now, session, result);
    }

    /// Leaves the mesh gracefully: members learn at once. [`Event::LeaveDone`]
    /// follows when the leave is known or after a short timeout.
    pub fn leave(&mut self, now: Duration) {
        if self.leaving.is_none() {
            self.membership.leave(mbt(now));
            self.leaving = Some((now + LEAVE_TIMEOUT, false));
        }
    }

    fn check_leave(&mut self, now: Duration) {
        if let Some((deadline, false)) = self.leaving
            && (self.membership.leave_complete() || now >= deadline)
        {
            self.leaving = Some((deadline, true));
            self.events.push_back(Event::LeaveDone);
        }
    }

    // ----- time -----

    /// Time passed.
    pub fn handle_timeout(&mut self, now: Duration) {
        if self
            .membership
            .poll_timeout()
            .is_some_and(|t| t <= mbt(now))
        {
            self.membership.handle_timeout(mbt(now));
        }
        self.repl.handle_timeout(now);
        if self.leaving.is_some() {
            self.check_leave(now);
            self.after_membership(now);
            return;
        }
        if let Some((actor, v, ms)) = self.head_pending
            && now.saturating_sub(self.head_published) >= self.config.head_publish_every
        {
            self.meta.actor = actor;
            self.meta.head = Some(Head {
                version: v,
                unix_ms: ms,
            });
            // Metadata of a valid node always encodes and fits.
            if let Ok(bytes) = self.meta.encode() {
                let _ = self.membership.set_metadata(mbt(now), bytes);
            }
            self.head_pending = None;
            self.head_published = now;
        }
        if now >= self.next_rejoin {
            self.next_rejoin = now + self.config.rejoin_every;
            self.rejoin(now);
        }
        if now >= self.next_housekeeping {
            self.next_housekeeping = now + HOUSEKEEPING_EVERY;
            self.forget_stale(now);
            self.refresh_members(now, true);
        }
        if self.collector.window.is_some() && now >= self.collector.next_check {
            self.collector.next_check = now + retention::CHECK_EVERY;
            // Required: every member known, and every node that reported
            // until it is forgotten (one that left may come back with
            // writes made before it held the latest deletes).
            let forget = self.config.forget_after;
            // Not this node itself, and not a peer refused as stale: it is
            // fenced off (its broadcasts dropped, never pulled from) until
            // it comes back with a fresh file.
            let stale = self.repl.stale_peers();
            let counted = |a: &SocketAddr| *a != self.addr && !stale.contains(a);
            let recent: BTreeMap<SocketAddr, litemesh_sync::Report> = self
                .repl
                .reports()
                .iter()
                .filter(|(a, _)| {
                    counted(a)
                        && self
                            .repl
                            .report_times()
                            .get(*a)
                            .is_some_and(|t| now.saturating_sub(*t) < forget)
                })
                .map(|(a, r)| (*a, r.clone()))
                .collect();
            let members: Vec<SocketAddr> = self
                .known
                .keys()
                .chain(recent.keys())
                .filter(|a| counted(a))
                .copied()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            if let Some(cut) = self
                .collector
                .check(now, self.repl.knowledge(), &members, &recent)
            {
                self.events.push_back(Event::Collect(cut));
            }
        }
        self.after_membership(now);
    }

    /// When to call [`NodeCore::handle_timeout`] next.
    pub fn poll_timeout(&self, now: Duration) -> Duration {
        let mut t = self.next_housekeeping.min(self.next_rejoin);
        if let Some(m) = self.membership.poll_timeout() {
            t = t.min(Duration::from_micros(m.as_micros()));
        }
        if let Some(r) = self.repl.poll_timeout(now) {
            t = t.min(r);
        }
        if self.head_pending.is_some() {
            t = t.min(self.head_published + self.config.head_publish_every);
        }
        if let Some((d, false)) = self.leaving {
            t = t.min(d);
        }
        t.max(now)
    }

    // ----- outputs -----

    /// The next message to send.
    pub fn poll_transmit(&mut self, now: Duration) -> Option<Transmit> {
        if let Some(t) = self.membership.poll_transmit() {
            return Some(if t.reliable {
                let mut bytes = Vec::with_capacity(t.payload.len() + 1);
                bytes.push(channel::MEMBERSHIP);
                bytes.extend_from_slice(&t.payload);
                Transmit::Sync(litemesh_sync::Transmit::Uni {
                    to: t.dst,
                    bytes: Arc::from(bytes),
                })
            } else {
                Transmit::Datagram {
                    to: t.dst,
                    bytes: t.payload,
                }
            });
        }
        if self.leaving.is_some() {
            return None;
        }
        self.repl.poll_transmit(now).map(Transmit::Sync)
    }

    /// The next storage operation to run.
    pub fn poll_storage(&mut self) -> Option<StorageOp> {
        self.repl.poll_storage()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        if let Some(e) = self.events.pop_front() {
            return Some(e);
        }
        self.repl.poll_event().map(Event::Sync)
    }

    // ----- internals -----

    /// Acts on what membership reported.
    fn after_membership(&mut self, now: Duration) {
        let mut changed = false;
        while let Some(ev) = self.membership.poll_event() {
            changed = true;
            // Replication and the known members go by address; a member that
            // restarted with a new identity at the same address supersedes
            // the old one, whose end must not take the address down.
            let superseded = match &ev {
                mb::Event::Suspect(x) | mb::Event::Dead(x) | mb::Event::Left(x) => {
                    self.membership.members().any(|y| {
                        y.addr == x.addr
                            && y.identity != x.identity
                            && matches!(y.state, mb::MemberState::Alive | mb::MemberState::Suspect)
                    })
                }
                _ => false,
            };
            self.on_member_event(now, &ev, superseded);
            // An earlier incarnation of this very node (restarted on its
            // address) is never a peer: it would reconcile with itself.
            let own = match &ev {
                mb::Event::Joined(x)
                | mb::Event::Alive(x)
                | mb::Event::MetadataChanged(x)
                | mb::Event::Suspect(x)
                | mb::Event::Dead(x)
                | mb::Event::Left(x) => x.addr == self.addr,
            };
            if own {
                continue;
            }
            match ev {
                mb::Event::Joined(x) | mb::Event::Alive(x) => {
                    self.repl.peer_up(x.addr, x.rtt);
                    self.peer_meta(x.addr, x.metadata.as_bytes());
                }
                mb::Event::MetadataChanged(x) => {
                    self.peer_meta(x.addr, x.metadata.as_bytes());
                }
                mb::Event::Dead(x) | mb::Event::Left(x) if !superseded => {
                    self.repl.peer_down(x.addr);
                    self.placement_mismatch.remove(&x.addr);
                }
                _ => {}
            }
        }
        if changed {
            self.refresh_members(now, false);
        }
    }

    /// What replication takes from a peer's metadata: its region (region-
    /// aware dissemination) and, for a partial replica, its tables.
    fn peer_meta(&mut self, addr: SocketAddr, bytes: &[u8]) {
        let meta = NodeMeta::decode(bytes).ok();
        if let Some(m) = &meta {
            if m.placement != self.meta.placement {
                self.placement_mismatch.insert(addr);
            } else {
                self.placement_mismatch.remove(&addr);
            }
        }
        self.repl
            .set_peer_region(addr, meta.as_ref().and_then(|m| m.region.clone()));
        self.repl.set_peer_tables(addr, meta.and_then(|m| m.tables));
    }

    /// Keeps the known members and the lag tracker in step with membership.
    fn on_member_event(&mut self, now: Duration, ev: &mb::Event, superseded: bool) {
        let (x, reachable, left) = match ev {
            mb::Event::Joined(x) | mb::Event::Alive(x) | mb::Event::MetadataChanged(x) => {
                (x, true, false)
            }
            mb::Event::Suspect(x) | mb::Event::Dead(x) => (x, false, false),
            mb::Event::Left(x) => (x, false, true),
        };
        if x.addr == self.addr {
            return;
        }
        let meta = NodeMeta::decode(x.metadata.as_bytes()).ok();
        let actor = meta.as_ref().map(|m| m.actor);
        if superseded {
            if let Some(a) = actor
                && self.known.get(&x.addr).and_then(|k| k.actor) != Some(a)
            {
                self.lag.forget(&a);
            }
            return;
        }
        if left {
            if let Some(k) = self.known.remove(&x.addr) {
                if let Some(a) = k.actor {
                    self.lag.forget(&a);
                }
                self.forgotten.push(x.addr.to_string());
                self.known_dirty = true;
            }
            return;
        }
        let wall = self.wall(now);
        let entry = match self.known.entry(x.addr) {
            std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::btree_map::Entry::Vacant(v) => {
                // A new member (or one back after it left): saved at once,
                // so that a crash right after does not forget it.
                self.known_new = true;
                let addr = x.addr.to_string();
                self.forgotten.retain(|a| *a != addr);
                v.insert(Known {
                    name: None,
                    actor: None,
                    first_known: now,
                    last_seen_ms: 0,
                })
            }
        };
        if let Some(m) = &meta {
            entry.name = Some(m.name.clone());
        }
        if let Some(a) = actor {
            if let Some(old) = entry.actor
                && old != a
            {
                // The member moved to a new actor id (it restarted after a
                // crash): the old one writes no more.
                self.lag.forget(&old);
            }
            entry.actor = Some(a);
            self.lag.reachable(now, a, reachable);
            if let Some(Head { version, unix_ms }) = meta.as_ref().and_then(|m| m.head) {
                self.lag.head(now, a, version, Some(unix_ms));
                if reachable {
                    self.repl.handle_head(now, x.addr, a, version);
                }
            }
        }
        if reachable {
            entry.last_seen_ms = wall;
            self.known_dirty = true;
        }
        self.lag.observe(self.repl.knowledge());
    }

    /// Sends a join to the remembered members and the seeds this node does
    /// not see alive: a node alone after a restart, or on one side of a
    /// partition long enough for the others to be forgotten, finds the mesh
    /// again.
    fn rejoin(&mut self, now: Duration) {
        if !self.membership.is_joined() {
            return; // Still joining: the join retries on its own.
        }
        let alive = self.reachable_addrs();
        let mut targets: Vec<SocketAddr> = self
            .known
            .keys()
            .filter(|a| !alive.contains(a) && **a != self.addr)
            .copied()
            .collect();
        for s in &self.seeds {
            if !alive.contains(s) && !targets.contains(s) {
                targets.push(*s);
            }
        }
        if !targets.is_empty() {
            self.membership.join(mbt(now), &targets);
        }
    }

    /// Addresses of the members membership holds alive or suspect.
    fn reachable_addrs(&self) -> BTreeSet<SocketAddr> {
        self.membership
            .members()
            .filter(|x| matches!(x.state, mb::MemberState::Alive | mb::MemberState::Suspect))
            .map(|x| x.addr)
            .collect()
    }

    /// Forgets members not seen for `forget_after`.
    fn forget_stale(&mut self, now: Duration) {
        let limit = self.config.forget_after.as_millis() as u64;
        let wall = self.wall(now);
        let alive = self.reachable_addrs();
        let stale: Vec<SocketAddr> = self
            .known
            .iter()
            .filter(|(a, k)| {
                !alive.contains(a)
                    && k.last_seen_ms > 0
                    && wall.saturating_sub(k.last_seen_ms) > limit
            })
            .map(|(a, _)| *a)
            .collect();
        for a in stale {
            if let Some(k) = self.known.remove(&a) {
                if let Some(act) = k.actor {
                    self.lag.forget(&act);
                }
                self.forgotten.push(a.to_string());
                self.known_dirty = true;
            }
        }
    }

    /// Rebuilds the members list; with `push_rtt`, hands round-trip times
    /// to replication.
    fn refresh_members(&mut self, _now: Duration, push_rtt: bool) {
        let local = self.membership.local_member().clone();
        let mut out = Vec::new();
        for x in std::iter::once(&local).chain(
            self.membership
                .members()
                .filter(|x| x.identity != local.identity),
        ) {
            let meta = NodeMeta::decode(x.metadata.as_bytes()).ok();
            out.push(Member {
                name: meta
                    .as_ref()
                    .map(|m| m.name.clone())
                    .unwrap_or_else(|| x.identity.id.to_string()),
                addr: x.addr,
                region: meta.as_ref().and_then(|m| m.region.clone()),
                state: x.state,
                incarnation: x.incarnation,
                rtt: x.rtt,
                actor: meta.as_ref().map(|m| m.actor),
                api: meta.and_then(|m| m.api),
            });
        }
        if push_rtt {
            for m in &out[1..] {
                if m.state == mb::MemberState::Alive
                    && let Some(rtt) = m.rtt
                {
                    self.repl.set_rtt(m.addr, rtt);
                }
            }
        }
        if out != self.members {
            self.members = out;
            self.events.push_back(Event::MembersChanged);
        }
    }
}
