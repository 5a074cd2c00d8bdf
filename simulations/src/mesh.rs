//! Whole-node simulation: the real node core (`litemesh-core`: membership and
//! replication, the same code `litemesh::Node` drives) with real storage (one
//! SQLite file per node), under a simulated network, clock and process
//! faults — reproducible from a seed, with a state checker that runs as the
//! simulation runs.
//!
//! The simulated node ([`MeshNode`]) is a second driver of
//! [`litemesh_core::NodeCore`]: it carries out the core's storage operations
//! at once on its `Store`, and maps its transmits to simulated messages:
//!
//! | core transmit | simulated message |
//! |---|---|
//! | membership datagram | lossy |
//! | unidirectional stream (broadcast, push-pull) | lossy (a QUIC stream lost with its connection) |
//! | reconciliation request | reliable (cut by partitions and crashes) |
//! | its whole response (batches and last frame) | one reliable message |
//!
//! A reconciliation whose request or response is lost ends by the core's
//! own session deadline, as in the node.
//!
//! [`run`] runs one seed of a mixed-fault scenario: writers on every node,
//! then a random sequence of faults (partitions, isolation, one-way loss,
//! loss bursts, crash and restart from the same file, pauses), then a heal;
//! the checker ([`Checker`]) looks at every node every simulated second
//! and at the end.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use litemesh_core::{Config as CoreConfig, Event, NodeCore, Start, SyncEvent, Transmit};
use litemesh_membership::MemberState;
use litemesh_proto::{ActorId, ChangeBatch, Entitlement, Knowledge, NodeMeta, Placement};
use litemesh_storage::SnapshotFrame;
use litemesh_storage::{Store, StoreOptions};
use litemesh_sync::{
    Extracted, Pruned, RequestId, SessionId, StorageOp, encode_key_chunk, encode_snapshot_base,
    encode_sync_batch,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::network::{LinkConfig, Network, Outgoing, SimNode};

const SCHEMA: &str = "CREATE TABLE kv (k TEXT PRIMARY KEY, v INTEGER, writer TEXT);\n\
                      CREATE TABLE events (id TEXT PRIMARY KEY, tx TEXT, n INTEGER);\n\
                      CREATE TABLE tally (k TEXT PRIMARY KEY, n INTEGER NOT NULL DEFAULT 0) \
                      -- litemesh: counter = n\n;\n\
                      CREATE TABLE pinned (tx TEXT PRIMARY KEY, writer TEXT) -- litemesh: regions = r0";

/// Keys of the `tally` table (a counter each) the workload increments.
pub const COUNTER_KEYS: u32 = 4;

/// The region the `pinned` table lives in.
pub const PINNED_REGION: usize = 0;

/// Unix time of the simulation's origin (any fixed value: runs are
/// reproducible).
const WALL_ORIGIN_MS: u64 = 1_800_000_000_000;

/// The node's QUIC idle timeout: a request to a peer that cannot answer
/// fails after it.
const TRANSPORT_IDLE: Duration = Duration::from_secs(3);

/// Kinds of simulated message.
const DATAGRAM: u8 = 0;
const UNI: u8 = 1;
const REQUEST: u8 = 2;
const RESPONSE: u8 = 3;

/// A transaction a node acknowledged: what the checker holds it to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acked {
    /// Who wrote it.
    pub actor: ActorId,
    /// Its version.
    pub version: u64,
    /// Its id in the `events` table (`n` rows with `tx = id`).
    pub tx: String,
    /// Rows it inserted.
    pub n: u64,
    /// The node that acknowledged it.
    pub node: usize,
    /// When.
    pub at: Duration,
    /// It also wrote a row of the `pinned` table (nodes of its region
    /// write one in every transaction).
    pub pinned: bool,
    /// It also incremented a counter: the `tally` key and the delta (the
    /// upsert `n = n + delta`).
    pub increment: Option<(String, i64)>,
}

/// A simulated litemesh node: the node core and a SQLite file.
pub struct MeshNode {
    idx: usize,
    region: usize,
    name: String,
    store: Store,
    core: NodeCore,
    now: Duration,
    outbox: VecDeque<Outgoing>,
    /// Responses received for sessions this node opened: frames still to
    /// feed (the core may pause reading).
    inbound: BTreeMap<SessionId, (SocketAddr, VecDeque<Vec<u8>>, bool)>,
    paused: BTreeSet<SessionId>,
    /// Requests sent and not answered yet, with when: a QUIC connection
    /// whose peer stops answering fails after its idle timeout.
    waiting: BTreeMap<SessionId, Duration>,
    /// Frames of the answers being built, by request.
    answering: BTreeMap<RequestId, (SocketAddr, u64, Vec<Vec<u8>>)>,
    next_request: u64,
    rng: ChaCha8Rng,
    /// The counter increments' own draws: the rest of the workload draws
    /// what it drew before counters (the same seeds, the same histories).
    counter_rng: ChaCha8Rng,
    next_write: Option<Duration>,
    write_interval: Duration,
    writes: u64,
    /// What the file holds, as of the last write or apply.
    held: Knowledge,
    /// Transactions acknowledged since the checker last looked.
    pub acked: Vec<Acked>,
    /// Storage errors (must stay empty: merges never fail on this schema).
    pub errors: Vec<String>,
    /// Deletes (and re-inserts) of `kv` keys in the workload.
    deletes: bool,
    /// Sabotage: collect tombstones by this node's own knowledge alone,
    /// ignoring what peers hold.
    naive_collection: bool,
    /// Sabotage: record every counter increment with a delta one more than
    /// the one committed.
    miscount: bool,
    /// Tombstones collected since the node (re)started.
    pub collected: u64,
    /// Whether being told (or telling a peer) "needs a snapshot" is
    /// expected (a node cut off past `forget_after`), not a violation.
    pub stale_allowed: bool,
    /// Snapshot catch-ups this node completed, and the rows they dropped
    /// (deleted elsewhere while it was away) and rebased.
    pub snapshots_completed: u64,
    pub snapshot_dropped: u64,
    pub snapshot_rebased: u64,
}

fn encode_frames(session: u64, frames: &[Vec<u8>], ok: bool) -> Vec<u8> {
    let mut out = vec![RESPONSE];
    out.extend_from_slice(&session.to_be_bytes());
    out.push(u8::from(ok));
    for f in frames {
        out.extend_from_slice(&(f.len() as u32).to_be_bytes());
        out.extend_from_slice(f);
    }
    out
}

fn decode_frames(mut b: &[u8]) -> Option<(u64, bool, Vec<Vec<u8>>)> {
    let session = u64::from_be_bytes(b.get(..8)?.try_into().ok()?);
    let ok = *b.get(8)? == 1;
    b = &b[9..];
    let mut frames = Vec::new();
    while !b.is_empty() {
        let n = u32::from_be_bytes(b.get(..4)?.try_into().ok()?) as usize;
        frames.push(b.get(4..4 + n)?.to_vec());
        b = &b[4 + n..];
    }
    Some((session, ok, frames))
}

impl MeshNode {
    /// Opens (or reopens, after a crash) node `idx`'s file at `path` and
    /// starts its core at simulated time `now`, joining through `seeds`,
    /// collecting tombstones by `retention` (see [`NodeCore::set_retention`]).
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        idx: usize,
        path: &Path,
        addr: SocketAddr,
        region: usize,
        seeds: &[SocketAddr],
        config: &CoreConfig,
        seed: u64,
        now: Duration,
        retention: Option<Duration>,
    ) -> MeshNode {
        let mut actor = [0u8; 16];
        actor[..8].copy_from_slice(&seed.to_be_bytes());
        actor[8..].copy_from_slice(&(seed.rotate_left(17) ^ 0x5bd1_e995).to_be_bytes());
        let opts = StoreOptions {
            durable: false,
            actor: Some(ActorId(actor)),
            ..StoreOptions::default()
        };
        let mut store = Store::open_with(path, &opts).expect("open store");
        store.apply_schema(SCHEMA).expect("schema");
        // Refused when the file holds rows its region may not (a node that
        // ignored the placement before its restart): reported, and the node
        // runs on refusing every pinned row.
        let mut errors = Vec::new();
        if let Err(e) = store.set_entitlement(Entitlement::region(Some(format!("r{region}")))) {
            errors.push(format!("opening: {e}"));
        }
        let actor = store.actor_id();
        let knowledge = store.knowledge().expect("knowledge");
        let held = knowledge.clone();
        let name = format!("n{idx}");
        let meta =
            NodeMeta {
                name: name.clone(),
                region: Some(format!("r{region}")),
                api: None,
                actor,
                head: knowledge.have.get(&actor).and_then(|r| r.max()).map(|v| {
                    litemesh_proto::Head {
                        version: v,
                        unix_ms: WALL_ORIGIN_MS + now.as_millis() as u64,
                    }
                }),
                tables: None,
                placement: store.placement().digest(),
            };
        // The core's origin is the simulation's: times are the network's.
        let core = NodeCore::new(Start {
            config: config.clone(),
            addr,
            meta,
            knowledge,
            probation: false,
            remembered: Vec::new(),
            seeds: seeds.to_vec(),
            wall_at_origin_ms: WALL_ORIGIN_MS,
            generation: 1 + now.as_millis() as u64,
            seed: seed ^ now.as_nanos() as u64,
        })
        .expect("core");
        let mut core = core;
        // No certificates in the simulator: regions are what nodes gossip.
        core.set_placement(store.placement().clone(), None);
        core.set_retention(
            retention,
            store.owned_actors().expect("owned actors"),
            store.floors().expect("floors"),
        );
        // As the node does at start: what its file remembers.
        core.set_collected(store.collected_through().expect("collected"));
        core.set_checked(store.checked().expect("checked"));
        if let Some(reason) = store.needs_snapshot().expect("needs snapshot") {
            core.set_needs_snapshot(reason, store.snapshot_need().expect("need"));
            core.set_snapshot_cursor(store.snapshot_cursor().expect("cursor"));
        }
        let mut n = MeshNode {
            held,
            idx,
            region,
            name,
            store,
            core,
            now,
            outbox: VecDeque::new(),
            inbound: BTreeMap::new(),
            paused: BTreeSet::new(),
            waiting: BTreeMap::new(),
            answering: BTreeMap::new(),
            next_request: 0,
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0xabcdef ^ now.as_nanos() as u64),
            counter_rng: ChaCha8Rng::seed_from_u64(seed ^ 0x636f_756e_7465 ^ now.as_nanos() as u64),
            next_write: None,
            write_interval: Duration::from_millis(300),
            writes: 0,
            acked: Vec::new(),
            errors,
            deletes: retention.is_some(),
            naive_collection: false,
            miscount: false,
            collected: 0,
            stale_allowed: false,
            snapshots_completed: 0,
            snapshot_dropped: 0,
            snapshot_rebased: 0,
        };
        n.pump();
        n
    }

    /// Sabotage: this node collects tombstones as soon as it holds the
    /// deletes itself, whatever its peers hold. The checker must catch it.
    pub fn collect_naively(&mut self) {
        self.naive_collection = true;
    }

    /// Sabotage: this node records each counter increment it commits with
    /// a delta one more than the one it wrote. The checker must catch it.
    pub fn miscount_counters(&mut self) {
        self.miscount = true;
    }

    /// Tombstones the node's file holds now.
    pub fn tombstones(&self) -> u64 {
        self.store
            .metadata_stats()
            .expect("stats")
            .tables
            .iter()
            .map(|t| t.2)
            .sum()
    }

    /// Sabotage: this node ignores table placement — it sends pinned rows
    /// to anyone and keeps them whatever its region. The checker must
    /// catch it.
    pub fn ignore_placement(&mut self) {
        self.core.set_placement(Placement::new(), None);
        self.store
            .set_entitlement(Entitlement::region(Some(format!("r{PINNED_REGION}"))))
            .expect("entitlement");
    }

    /// The node's region index.
    pub fn region(&self) -> usize {
        self.region
    }

    /// Transactions whose `pinned` row this node's file holds.
    pub fn pinned_rows(&self) -> BTreeSet<String> {
        let mut st = self
            .store
            .connection()
            .prepare_cached("SELECT tx FROM pinned")
            .expect("query");
        st.query_map([], |r| r.get::<_, String>(0))
            .expect("rows")
            .collect::<Result<_, _>>()
            .expect("rows")
    }

    /// Everything of the `pinned` table this node's file holds, metadata
    /// included: rows, their clocks, parked, quarantined and buffered
    /// changes. A node outside the table's region must hold none of it.
    pub fn pinned_traces(&self) -> i64 {
        let c = self.store.connection();
        let n = |sql: &str| -> i64 { c.query_row(sql, [], |r| r.get(0)).expect("count") };
        n("SELECT count(*) FROM pinned")
            + n("SELECT count(*) FROM __lm_clk_pinned")
            + n("SELECT count(*) FROM __lm_parked WHERE instr(CAST(change AS TEXT), 'pinned') > 0")
            + n(
                "SELECT count(*) FROM __lm_quarantine WHERE instr(CAST(rows AS TEXT), 'pinned') > 0",
            )
            + n("SELECT count(*) FROM __lm_partial WHERE instr(CAST(rows AS TEXT), 'pinned') > 0")
    }

    /// Starts (or stops) writing a transaction every `interval` on average.
    pub fn set_writing(&mut self, now: Duration, interval: Option<Duration>) {
        self.next_write = interval.map(|i| {
            self.write_interval = i;
            now + i
        });
    }

    /// Commits one transaction at `now`, outside the write schedule, and
    /// returns the version it wrote.
    pub fn write_now(&mut self, now: Duration) -> Option<(ActorId, u64)> {
        self.now = now;
        let before = self.acked.len();
        self.write();
        self.pump();
        self.acked.get(before).map(|a| (a.actor, a.version))
    }

    /// Whether the node holds `version` of `actor` (as of its last write or
    /// apply; no SQLite read).
    pub fn holds(&self, actor: &ActorId, version: u64) -> bool {
        self.held.contains(actor, version)
    }

    /// Transactions committed by this node since it (re)started.
    pub fn writes(&self) -> u64 {
        self.writes
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the node's file holds.
    pub fn knowledge(&self) -> Knowledge {
        self.store.knowledge().expect("knowledge")
    }

    /// The core (members, peers, stats).
    pub fn core(&self) -> &NodeCore {
        &self.core
    }

    /// Every row of both tables, sorted.
    pub fn dump(&self) -> Vec<String> {
        let c = self.store.connection();
        let mut out = Vec::new();
        let mut st = c
            .prepare("SELECT k, v, writer FROM kv ORDER BY k")
            .expect("query");
        let rows = st
            .query_map([], |r| {
                // A cell may be NULL for a while: an update of a row that
                // arrives before the insert of its life (out of order).
                Ok(format!(
                    "kv:{}={:?}:{:?}",
                    r.get::<_, String>(0)?,
                    r.get::<_, Option<i64>>(1)?,
                    r.get::<_, Option<String>>(2)?
                ))
            })
            .expect("rows");
        for r in rows {
            out.push(r.expect("row"));
        }
        let mut st = c
            .prepare("SELECT id, tx, n FROM events ORDER BY id")
            .expect("query");
        let rows = st
            .query_map([], |r| {
                Ok(format!(
                    "ev:{}:{}:{}",
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?
                ))
            })
            .expect("rows");
        for r in rows {
            out.push(r.expect("row"));
        }
        for (k, n) in self.counters() {
            // `ct:KEY:VALUE`: a NULL shows as `:None`, a row missing a cell.
            out.push(format!("ct:{k}:{n:?}"));
        }
        out
    }

    /// The counters of the `tally` table, by key.
    pub fn counters(&self) -> BTreeMap<String, Option<i64>> {
        let mut st = self
            .store
            .connection()
            .prepare_cached("SELECT k, n FROM tally ORDER BY k")
            .expect("query");
        st.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Option<i64>>(1)?))
        })
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("rows")
    }

    /// Rows visible per transaction.
    pub fn tx_rows(&self) -> BTreeMap<String, u64> {
        let mut st = self
            .store
            .connection()
            .prepare_cached("SELECT tx, count(*) FROM events GROUP BY tx")
            .expect("query");
        st.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
        })
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("rows")
    }

    /// Members this node sees alive, itself included.
    pub fn alive(&self) -> usize {
        self.core
            .members()
            .iter()
            .filter(|m| m.state == MemberState::Alive)
            .count()
    }

    fn write(&mut self) {
        // A node that needs a snapshot refuses writes (the node's 503).
        if self.core.needs_snapshot().is_some() {
            return;
        }
        let n: u64 = if self.rng.random_bool(0.2) {
            self.rng.random_range(2..6)
        } else {
            1
        };
        let tx = format!("{}-{}-{}", self.name, self.now.as_millis(), self.writes);
        let key = self.rng.random_range(0..40u32);
        let v: i64 = self.rng.random_range(0..1_000_000);
        let name = self.name.clone();
        let pinned = self.store.may_hold("pinned");
        // With deletes on, a third of the transactions delete their key
        // instead: keys die and come back, the case collection must get right.
        let delete = self.deletes && self.rng.random_bool(0.35);
        // Half of the transactions also add to one of a few counters (never
        // deleted), in the upsert form, by a delta that may be negative.
        let r = &mut self.counter_rng;
        let increment = r.random_bool(0.5).then(|| {
            let key = format!("c{}", r.random_range(0..COUNTER_KEYS));
            let d: i64 = r.random_range(1..10);
            (key, if r.random_bool(0.3) { -d } else { d })
        });
        let committed = self.store.transaction(|t| {
            if pinned {
                t.execute("INSERT INTO pinned VALUES (?1, ?2)", (&tx, &name))?;
            }
            if delete {
                t.execute("DELETE FROM kv WHERE k = ?1", [format!("k{key:02}")])?;
            } else {
                t.execute(
                    "INSERT INTO kv VALUES (?1, ?2, ?3) ON CONFLICT(k) DO UPDATE SET v = excluded.v, \
                     writer = excluded.writer",
                    (format!("k{key:02}"), v, &name),
                )?;
            }
            for i in 0..n {
                t.execute(
                    "INSERT INTO events VALUES (?1, ?2, ?3)",
                    (format!("{tx}/{i}"), &tx, n as i64),
                )?;
            }
            if let Some((key, d)) = &increment {
                t.execute(
                    "INSERT INTO tally(k, n) VALUES (?1, ?2) \
                     ON CONFLICT(k) DO UPDATE SET n = n + excluded.n",
                    (key, d),
                )?;
            }
            Ok(())
        });
        let committed = match committed {
            Ok(c) => c,
            Err(e) => {
                self.errors.push(format!("local write: {e}"));
                return;
            }
        };
        self.writes += 1;
        let Some(version) = committed.version else {
            return;
        };
        self.acked.push(Acked {
            actor: self.store.actor_id(),
            version,
            tx,
            n,
            node: self.idx,
            at: self.now,
            pinned,
            increment: increment.map(|(k, d)| (k, if self.miscount { d + 1 } else { d })),
        });
        let mut batches: Vec<ChangeBatch> = Vec::new();
        if let Err(e) = self.store.version_changes(version, 256 * 1024, |b| {
            batches.push(b);
            Ok(true)
        }) {
            self.errors.push(format!("reading a local version: {e}"));
        }
        self.refresh_knowledge();
        let now = self.now;
        let ms = WALL_ORIGIN_MS + now.as_millis() as u64;
        self.core.handle_local_commit(now, version, ms, &batches);
    }

    fn refresh_knowledge(&mut self) {
        match self.store.knowledge() {
            Ok(k) => {
                let q = self.store.quarantined_versions();
                self.held = k.clone();
                self.core.set_knowledge(k, q);
            }
            Err(e) => self.errors.push(format!("reading knowledge: {e}")),
        }
    }

    /// Carries out everything the core asked for, until it asks nothing.
    fn pump(&mut self) {
        loop {
            let mut busy = false;
            while let Some(t) = self.core.poll_transmit(self.now) {
                busy = true;
                self.transmit(t);
            }
            while let Some(op) = self.core.poll_storage() {
                busy = true;
                self.storage(op);
            }
            while let Some(e) = self.core.poll_event() {
                busy = true;
                self.event(e);
            }
            if self.feed() {
                busy = true;
            }
            if !busy {
                break;
            }
        }
    }

    fn transmit(&mut self, t: Transmit) {
        use litemesh_sync::Transmit as T;
        let (dst, payload, reliable) = match t {
            Transmit::Datagram { to, bytes } => {
                let mut p = vec![DATAGRAM];
                p.extend_from_slice(&bytes);
                (to, p, false)
            }
            Transmit::Sync(T::Uni { to, bytes }) => {
                let mut p = vec![UNI];
                p.extend_from_slice(&bytes);
                (to, p, false)
            }
            Transmit::Sync(T::Request { session, to, bytes }) => {
                self.waiting.insert(session, self.now);
                let mut p = vec![REQUEST];
                p.extend_from_slice(&session.0.to_be_bytes());
                p.extend_from_slice(&bytes);
                (to, p, true)
            }
            Transmit::Sync(T::Respond { request, bytes }) => {
                let Some((to, session, mut frames)) = self.answering.remove(&request) else {
                    return;
                };
                frames.push(bytes);
                (to, encode_frames(session, &frames, true), true)
            }
            Transmit::Sync(T::Reject { request, .. }) => {
                let Some((to, session, _)) = self.answering.remove(&request) else {
                    return;
                };
                (to, encode_frames(session, &[], false), true)
            }
        };
        self.outbox.push_back(Outgoing {
            dst,
            payload,
            reliable,
        });
    }

    fn storage(&mut self, op: StorageOp) {
        let now = self.now;
        match op {
            StorageOp::Apply { op, batches } => {
                let res = self
                    .store
                    .apply_all(&batches)
                    .map(|r| {
                        r.versions_applied > 0 || r.chunks_buffered > 0 || r.versions_cleared > 0
                    })
                    .map_err(|e| e.to_string());
                if let Err(e) = &res {
                    self.errors.push(format!("apply: {e}"));
                }
                self.refresh_knowledge();
                self.core.handle_applied(now, op, res);
            }
            StorageOp::Extract {
                op,
                request,
                theirs,
                requester,
                batch_bytes,
                listing_only,
                snapshot,
            } => {
                let mut frames = Vec::new();
                let mut skipped = 0;
                let max = litemesh_proto::DEFAULT_MAX_MESSAGE;
                let res = match &snapshot {
                    // The same frames, in the same order, as the node's.
                    Some(from) => self.store.snapshot_for(
                        &theirs,
                        requester.as_ref(),
                        from,
                        listing_only,
                        batch_bytes,
                        |f| {
                            let frame = match f {
                                SnapshotFrame::Batch(b) => encode_sync_batch(&b, max),
                                SnapshotFrame::Base(k) => encode_snapshot_base(k, max),
                                SnapshotFrame::Keys(c) => encode_key_chunk(c, max),
                            };
                            match frame {
                                Ok(f) => frames.push(f),
                                Err(_) => skipped += 1,
                            }
                            Ok(true)
                        },
                    ),
                    None => self
                        .store
                        .changes_for(&theirs, requester.as_ref(), batch_bytes, |b| {
                            match encode_sync_batch(&b, max) {
                                Ok(f) => frames.push(f),
                                Err(_) => skipped += 1,
                            }
                            Ok(true)
                        }),
                };
                if let Some(a) = self.answering.get_mut(&request) {
                    a.2 = frames;
                }
                let outcome = match res {
                    Ok(_) => Extracted::Done { skipped },
                    Err(litemesh_storage::StorageError::SnapshotUnavailable(why)) => {
                        Extracted::Refused(why)
                    }
                    Err(e) => {
                        self.errors.push(format!("extract: {e}"));
                        Extracted::Failed(e.to_string())
                    }
                };
                self.core.handle_extracted(now, op, outcome);
            }
            StorageOp::Prune {
                op,
                chunk,
                theirs,
                need,
            } => {
                let res = self
                    .store
                    .prune_absent(&chunk, &theirs, &need)
                    .map(|p| {
                        self.snapshot_dropped += p.dropped;
                        self.snapshot_rebased += p.rebased;
                        Pruned {
                            dropped: p.dropped,
                            rebased: p.rebased,
                            checked: p.checked,
                            complete: p.complete,
                            cursor: p.cursor,
                            now_checked: p.now_checked,
                        }
                    })
                    .map_err(|e| e.to_string());
                if let Err(e) = &res {
                    self.errors.push(format!("prune: {e}"));
                }
                self.refresh_knowledge();
                self.core.handle_pruned(now, op, res);
            }
        }
    }

    fn event(&mut self, e: Event) {
        match e {
            Event::Sync(SyncEvent::ResumeReading(s)) => {
                self.paused.remove(&s);
            }
            Event::Sync(SyncEvent::CancelSession(s)) => {
                self.waiting.remove(&s);
                self.inbound.remove(&s);
                self.paused.remove(&s);
            }
            Event::Sync(SyncEvent::RotateActor { .. }) => {
                // Never in these runs: files are never lost or copied.
                self.errors
                    .push("a peer held versions of this node's actor beyond its file".into());
            }
            Event::Sync(SyncEvent::RaiseFloors(floors)) => {
                let res = self
                    .store
                    .raise_floors(&floors)
                    .and_then(|_| self.store.floors());
                match res {
                    Ok(f) => self.core.set_floors(f),
                    Err(e) => self.errors.push(format!("raising floors: {e}")),
                }
            }
            Event::Sync(SyncEvent::PeerNeedsSnapshot { peer, missing }) => {
                // Never with every member waited for: a violation.
                if !self.stale_allowed {
                    self.errors.push(format!(
                        "refused {peer} as needing a snapshot ({missing} versions)"
                    ));
                }
            }
            Event::Sync(SyncEvent::NeedsSnapshot { from, reason, need }) => {
                if self.stale_allowed {
                    if let Err(e) = self.store.set_needs_snapshot(&reason, &need) {
                        self.errors
                            .push(format!("recording the need of a snapshot: {e}"));
                    }
                } else {
                    self.errors
                        .push(format!("told by {from} it needs a snapshot: {reason}"));
                }
            }
            Event::Collect(cut) => {
                let cut = if self.naive_collection {
                    let k = &self.held;
                    k.have.keys().map(|a| (*a, k.complete_through(a))).collect()
                } else {
                    cut
                };
                let res = self
                    .store
                    .collect(&cut, u64::MAX)
                    .and_then(|c| Ok((c, self.store.floors()?)));
                match res {
                    Ok((c, f)) => {
                        self.collected += c.tombstones;
                        self.core.set_floors(f);
                        if let Ok(through) = self.store.collected_through() {
                            self.core.set_collected(through);
                        }
                    }
                    Err(e) => self.errors.push(format!("collecting: {e}")),
                }
            }
            Event::Sync(SyncEvent::SnapshotComplete { .. }) => {
                self.snapshots_completed += 1;
            }
            Event::Sync(SyncEvent::SyncEnded { .. }) | Event::MembersChanged | Event::LeaveDone => {
            }
        }
    }

    /// Feeds received response frames to the core while it reads.
    fn feed(&mut self) -> bool {
        let mut fed = false;
        let ready: Vec<SessionId> = self
            .inbound
            .keys()
            .filter(|s| !self.paused.contains(s))
            .copied()
            .collect();
        for s in ready {
            let now = self.now;
            while let Some((_, frames, ok)) = self.inbound.get_mut(&s) {
                match frames.pop_front() {
                    Some(f) => {
                        fed = true;
                        if !self.core.handle_response_frame(now, s, &f) {
                            if self.inbound.contains_key(&s) {
                                self.paused.insert(s);
                            }
                            break;
                        }
                    }
                    None => {
                        let ok = *ok;
                        self.inbound.remove(&s);
                        fed = true;
                        let end = if ok {
                            Ok(())
                        } else {
                            Err("refused by the peer".into())
                        };
                        self.core.handle_response_end(now, s, end);
                        break;
                    }
                }
            }
        }
        fed
    }
}

impl SimNode for MeshNode {
    fn on_message(&mut self, now: Duration, from: SocketAddr, payload: &[u8]) {
        self.now = now;
        let Some((&kind, body)) = payload.split_first() else {
            return;
        };
        match kind {
            DATAGRAM => {
                let _ = self.core.handle_datagram(now, from, body);
            }
            UNI => {
                let _ = self.core.handle_uni(now, from, body);
            }
            REQUEST if body.len() >= 8 => {
                let session = u64::from_be_bytes(body[..8].try_into().expect("8 bytes"));
                self.next_request += 1;
                let request = RequestId(self.next_request);
                self.answering.insert(request, (from, session, Vec::new()));
                let _ = self.core.handle_request(now, from, request, &body[8..]);
            }
            RESPONSE => {
                if let Some((session, ok, frames)) = decode_frames(body)
                    && self.waiting.remove(&SessionId(session)).is_some()
                {
                    self.inbound
                        .insert(SessionId(session), (from, frames.into(), ok));
                }
            }
            _ => {}
        }
        self.pump();
    }

    fn on_timeout(&mut self, now: Duration) {
        self.now = now;
        if let Some(t) = self.next_write
            && t <= now
        {
            self.write();
            let jitter = self.rng.random_range(0.5..1.5);
            self.next_write = Some(now + self.write_interval.mul_f64(jitter));
        }
        let lost: Vec<SessionId> = self
            .waiting
            .iter()
            .filter(|(_, sent)| now.saturating_sub(**sent) >= TRANSPORT_IDLE)
            .map(|(s, _)| *s)
            .collect();
        for s in lost {
            self.waiting.remove(&s);
            self.core
                .handle_response_end(now, s, Err("connection lost (idle timeout)".into()));
        }
        self.core.handle_timeout(now);
        self.pump();
    }

    fn poll_transmit(&mut self) -> Option<Outgoing> {
        self.outbox.pop_front()
    }

    fn next_timeout(&self) -> Option<Duration> {
        let mut t = self.core.poll_timeout(self.now);
        if let Some(sent) = self.waiting.values().min() {
            t = t.min(*sent + TRANSPORT_IDLE);
        }
        Some(match self.next_write {
            Some(w) => t.min(w),
            None => t,
        })
    }
}

/// Parameters of one run.
#[derive(Debug, Clone)]
pub struct MeshParams {
    /// Nodes.
    pub nodes: usize,
    /// The seed of everything.
    pub seed: u64,
    /// Background loss of lossy messages.
    pub loss: f64,
    /// Faults, one after another.
    pub faults: usize,
    /// Mean time between transactions on each node.
    pub write_interval: Duration,
    /// After the heal: the longest the run waits for convergence.
    pub settle: Duration,
    /// Sabotage: a crashed node comes back with its file deleted (its
    /// acknowledged writes that no peer has yet are lost, and its actor id
    /// is reused). The checker must catch it.
    pub lose_files: bool,
    /// Sabotage: every node ignores table placement (see
    /// [`MeshNode::ignore_placement`]). The checker must catch it.
    pub ignore_placement: bool,
    /// The retention policy of every node; with one, the workload also
    /// deletes and re-inserts keys (see [`MeshNode::open`]).
    pub retention: Option<Duration>,
    /// Sabotage: every node collects tombstones by its own knowledge alone
    /// (see [`MeshNode::collect_naively`]). The checker must catch it.
    pub naive_collection: bool,
    /// Sabotage: every node records its counter increments one more than
    /// it committed (see [`MeshNode::miscount_counters`]). The checker must
    /// catch it.
    pub miscount_counters: bool,
    /// After the faults, the last node is cut off alone for this long,
    /// writing on its own, while `forget_after` is a third of it: the
    /// others forget it and collect tombstones it lacks, and when it comes
    /// back it must catch up by snapshot (with a retention policy).
    pub long_absence: Option<Duration>,
}

impl Default for MeshParams {
    fn default() -> Self {
        MeshParams {
            nodes: 5,
            seed: 1,
            loss: 0.02,
            faults: 4,
            write_interval: Duration::from_millis(400),
            settle: Duration::from_secs(60),
            lose_files: false,
            ignore_placement: false,
            retention: None,
            naive_collection: false,
            miscount_counters: false,
            long_absence: None,
        }
    }
}

/// A fault of the mixed scenario.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// The nodes split in two groups.
    Partition(Vec<u32>),
    /// Everything one node sends is lost.
    OneWay(usize),
    /// Loss on every link.
    Loss(f64),
    /// A node crashes, and restarts from its file after the fault's time.
    Crash(usize),
    /// A node stops running (and receiving) for the fault's time.
    Pause(usize),
    /// A node cut off alone for longer than `forget_after` (see
    /// [`MeshParams::long_absence`]).
    CutOff(usize),
}

/// What one run observed.
#[derive(Debug, Clone, PartialEq)]
pub struct MeshReport {
    /// The seed.
    pub seed: u64,
    /// The faults, with how long each lasted.
    pub faults: Vec<(Fault, Duration)>,
    /// Transactions acknowledged.
    pub acked: usize,
    /// From the heal until every replica held the same rows; `None` if not
    /// within the settle time.
    pub converged_after: Option<Duration>,
    /// From the heal until every node saw every other alive.
    pub members_after: Option<Duration>,
    /// What the checker found (empty: none).
    pub violations: Vec<String>,
    /// A digest of the final content (equal runs, equal digests).
    pub digest: u64,
    /// Tombstones collected (over every node and its restarts).
    pub tombstones_collected: u64,
    /// Tombstones left at the end (over every node).
    pub tombstones_left: u64,
    /// With a retention policy: from the heal until no node held a
    /// tombstone any more (`None`: not within the settle time).
    pub collected_after: Option<Duration>,
    /// Snapshot catch-ups completed, and the rows they dropped (deleted
    /// elsewhere meanwhile) and rebased (over every node).
    pub snapshots: u64,
    pub snapshot_dropped: u64,
    pub snapshot_rebased: u64,
    /// Acknowledged transactions that incremented a counter.
    pub counter_increments: u64,
    /// Counters incremented at least once.
    pub counter_keys: usize,
    /// Counters equal, on every node at the end, to the sum of the deltas
    /// of their acknowledged increments.
    pub counters_exact: usize,
}

/// The state checker: holds every node to the promises, as the run runs.
#[derive(Debug, Default)]
pub struct Checker {
    acked: Vec<Acked>,
    /// Per counter key: the acknowledged increments and the sum of their
    /// deltas (what every replica's value must end at).
    counters: BTreeMap<String, (u64, i64)>,
    /// Counters found exact at the end.
    counters_exact: usize,
    /// Per node, the knowledge last seen (it must only grow).
    seen: BTreeMap<usize, Knowledge>,
    /// What it found.
    pub violations: Vec<String>,
}

impl Checker {
    /// Looks at every running node now.
    pub fn check(&mut self, net: &mut Network<MeshNode>) {
        self.collect(net);
        let now = net.now();
        for i in 0..net.len() {
            if !net.is_up(i) {
                continue;
            }
            let n = net.node(i);
            for e in &n.errors {
                self.violate(format!("{now:?} {}: storage error: {e}", n.name()));
            }
            let k = n.knowledge();
            if let Some(before) = self.seen.get(&i)
                && !k.covers(before)
            {
                self.violate(format!("{now:?} {}: knowledge shrank", n.name()));
            }
            let visible = n.tx_rows();
            let in_place = n.region() == PINNED_REGION;
            let pinned = if in_place {
                n.pinned_rows()
            } else {
                let traces = n.pinned_traces();
                if traces > 0 {
                    self.violations.push(format!(
                        "{now:?} {}: holds {traces} row(s) or clock(s) of a table pinned to r{PINNED_REGION} \
                         outside its region",
                        n.name()
                    ));
                }
                BTreeSet::new()
            };
            for a in &self.acked {
                let rows = visible.get(&a.tx).copied().unwrap_or(0);
                let held = k.contains(&a.actor, a.version);
                // The part of a transaction a node may hold arrives whole.
                if in_place && a.pinned && (rows != 0 || held) && !pinned.contains(&a.tx) {
                    self.violations.push(format!(
                        "{now:?} {}: transaction {} arrived without its pinned row",
                        n.name(),
                        a.tx
                    ));
                }
                // A version is visible whole or not at all; once the node
                // holds it (a token naming it is satisfied here), all of it.
                if rows != 0 && rows != a.n {
                    self.violations.push(format!(
                        "{now:?} {}: transaction {} visible in part ({rows} of {} rows)",
                        n.name(),
                        a.tx,
                        a.n
                    ));
                } else if held && rows != a.n {
                    self.violations.push(format!(
                        "{now:?} {}: holds {}:{} but its rows are missing (a token read would be stale)",
                        n.name(),
                        a.actor,
                        a.version
                    ));
                }
                if a.node == i && !held {
                    self.violations.push(format!(
                        "{now:?} {}: lost its own acknowledged write {}",
                        n.name(),
                        a.tx
                    ));
                }
            }
            self.seen.insert(i, k);
        }
        self.violations.dedup();
    }

    /// Takes what every running node acknowledged since the last look.
    pub fn collect(&mut self, net: &mut Network<MeshNode>) {
        for i in 0..net.len() {
            if !net.is_up(i) {
                continue;
            }
            let acked = net
                .with_node(i, |n, _| std::mem::take(&mut n.acked))
                .unwrap_or_default();
            self.take(acked);
        }
    }

    /// Holds the nodes to `acked`, transactions a node acknowledged (a
    /// crashed node's too: its commits are in its file).
    pub fn take(&mut self, acked: Vec<Acked>) {
        for a in &acked {
            if let Some((k, d)) = &a.increment {
                let c = self.counters.entry(k.clone()).or_default();
                c.0 += 1;
                c.1 += d;
            }
        }
        self.acked.extend(acked);
    }

    fn violate(&mut self, v: String) {
        if self.violations.len() < 100 {
            self.violations.push(v);
        }
    }

    /// At the end: every acknowledged write on every node, and no row
    /// missing a cell (an update merged without the insert of its life).
    pub fn check_final(&mut self, net: &Network<MeshNode>) {
        for i in 0..net.len() {
            let n = net.node(i);
            let partial = n.dump().iter().filter(|r| r.contains(":None")).count();
            if partial > 0 {
                self.violations
                    .push(format!("end {}: {partial} row(s) missing a cell", n.name()));
            }
            let visible = n.tx_rows();
            let pinned = n.pinned_rows();
            for a in &self.acked {
                if n.region() == PINNED_REGION && a.pinned && !pinned.contains(&a.tx) {
                    self.violations.push(format!(
                        "end {}: pinned row of {} (by n{}) missing",
                        n.name(),
                        a.tx,
                        a.node
                    ));
                }
                if visible.get(&a.tx).copied().unwrap_or(0) != a.n {
                    self.violations.push(format!(
                        "end {}: acknowledged write {} (by n{}) missing",
                        n.name(),
                        a.tx,
                        a.node
                    ));
                }
            }
        }
        self.check_counters(net);
    }

    /// Every counter, on every node, is the sum of the deltas of its
    /// acknowledged increments (no row where none was acknowledged).
    fn check_counters(&mut self, net: &Network<MeshNode>) {
        let observed: Vec<(String, BTreeMap<String, Option<i64>>)> = (0..net.len())
            .map(|i| (net.node(i).name().to_string(), net.node(i).counters()))
            .collect();
        let keys: BTreeSet<String> = self
            .counters
            .keys()
            .chain(observed.iter().flat_map(|(_, c)| c.keys()))
            .cloned()
            .collect();
        for k in keys {
            let expected = self.counters.get(&k).map(|c| c.1);
            if observed
                .iter()
                .all(|(_, c)| c.get(&k).map(|v| *v == expected) == Some(true))
            {
                self.counters_exact += 1;
                continue;
            }
            let expected = match self.counters.get(&k) {
                Some((n, sum)) => format!("{sum} (the sum of {n} acknowledged increments)"),
                None => "no row (no acknowledged increment)".to_string(),
            };
            let seen: Vec<String> = observed
                .iter()
                .map(|(name, c)| match c.get(&k) {
                    None => format!("{name}=no row"),
                    Some(None) => format!("{name}=NULL"),
                    Some(Some(v)) => format!("{name}={v}"),
                })
                .collect();
            self.violations.push(format!(
                "end: counter {k}: expected {expected}, observed {}",
                seen.join(" ")
            ));
        }
    }

    /// Acknowledged transactions that incremented a counter.
    pub fn increments(&self) -> u64 {
        self.counters.values().map(|c| c.0).sum()
    }

    /// Transactions acknowledged so far.
    pub fn acked(&self) -> usize {
        self.acked.len()
    }
}

pub(crate) fn addr_of(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 2, (i / 250) as u8, (i % 250) as u8 + 1], 7000))
}

/// The configuration the simulated nodes run: the node's defaults.
pub fn config() -> CoreConfig {
    CoreConfig::default()
}

/// Runs one seed of the mixed-fault scenario in `dir`.
pub fn run(p: &MeshParams, dir: &Path) -> MeshReport {
    let mut link = LinkConfig::three_regions(p.loss);
    link.jitter = 0.2;
    let mut net: Network<MeshNode> = Network::new(link, p.seed);
    let mut rng = ChaCha8Rng::seed_from_u64(p.seed ^ 0x6d65_7368);
    let mut cfg = config();
    if let Some(away) = p.long_absence {
        cfg.forget_after = away / 3;
    }
    let path = |i: usize| -> PathBuf { dir.join(format!("n{i}.db")) };
    let node_seed = |i: usize| p.seed.wrapping_mul(1_000_003).wrapping_add(i as u64);
    for i in 0..p.nodes {
        let seeds: Vec<SocketAddr> = if i == 0 { vec![] } else { vec![addr_of(0)] };
        let n = MeshNode::open(
            i,
            &path(i),
            addr_of(i),
            i % 3,
            &seeds,
            &cfg,
            node_seed(i),
            net.now(),
            p.retention,
        );
        let mut n = n;
        if p.ignore_placement {
            n.ignore_placement();
        }
        if p.naive_collection {
            n.collect_naively();
        }
        if p.miscount_counters {
            n.miscount_counters();
        }
        n.stale_allowed = p.long_absence.is_some();
        net.add_node(addr_of(i), i % 3, n);
    }
    let mut checker = Checker::default();
    let mut t = Duration::ZERO;
    let step = Duration::from_millis(250);
    let mut steps = 0u64;
    let mut advance =
        |net: &mut Network<MeshNode>, checker: &mut Checker, until: Duration, t: &mut Duration| {
            while *t < until {
                *t += step;
                net.run_until(*t);
                steps += 1;
                if steps.is_multiple_of(4) {
                    checker.check(net);
                }
            }
        };
    // Join, then write everywhere.
    advance(&mut net, &mut checker, Duration::from_secs(5), &mut t);
    for i in 0..p.nodes {
        net.with_node(i, |n, now| n.set_writing(now, Some(p.write_interval)));
    }
    advance(&mut net, &mut checker, t + Duration::from_secs(5), &mut t);
    let mut faults = Vec::new();
    let mut collected = 0;
    for _ in 0..p.faults {
        let held = Duration::from_millis(rng.random_range(3_000..25_000));
        let victim = rng.random_range(0..p.nodes);
        let fault = match rng.random_range(0..5) {
            0 => {
                let groups: Vec<u32> = (0..p.nodes).map(|_| rng.random_range(0..2)).collect();
                Fault::Partition(groups)
            }
            1 => Fault::OneWay(victim),
            2 => Fault::Loss(rng.random_range(0.1..0.4)),
            3 => Fault::Crash(victim),
            _ => Fault::Pause(victim),
        };
        match &fault {
            Fault::Partition(g) => net.partition(g.clone()),
            Fault::OneWay(v) => net.set_muted(*v, true),
            Fault::Loss(l) => net.set_loss(*l),
            Fault::Crash(v) => net.crash(*v),
            Fault::Pause(v) => net.pause(*v, held),
            Fault::CutOff(_) => unreachable!("drawn only after the mixed faults"),
        }
        advance(&mut net, &mut checker, t + held, &mut t);
        match &fault {
            Fault::Partition(_) => net.heal(),
            Fault::OneWay(v) => net.set_muted(*v, false),
            Fault::Loss(_) => net.set_loss(p.loss),
            Fault::Crash(v) => {
                if p.lose_files {
                    for ext in ["", "-wal", "-shm"] {
                        let _ = std::fs::remove_file(format!("{}{ext}", path(*v).display()));
                    }
                }
                let n = MeshNode::open(
                    *v,
                    &path(*v),
                    addr_of(*v),
                    *v % 3,
                    &[addr_of((*v + 1) % p.nodes)],
                    &cfg,
                    node_seed(*v),
                    net.now(),
                    p.retention,
                );
                let mut n = n;
                if p.ignore_placement {
                    n.ignore_placement();
                }
                if p.naive_collection {
                    n.collect_naively();
                }
                if p.miscount_counters {
                    n.miscount_counters();
                }
                n.stale_allowed = p.long_absence.is_some();
                collected += net.node(*v).collected;
                // What it acknowledged since the checker's last look and
                // before the crash: committed, in the file it restarts from.
                checker.take(net.node(*v).acked.clone());
                net.restart(*v, addr_of(*v), n);
                let w = p.write_interval;
                net.with_node(*v, |n, now| n.set_writing(now, Some(w)));
            }
            Fault::Pause(_) | Fault::CutOff(_) => {}
        }
        faults.push((fault, held));
        // Some calm between faults.
        let calm = Duration::from_millis(rng.random_range(1_000..6_000));
        advance(&mut net, &mut checker, t + calm, &mut t);
    }
    if let Some(away) = p.long_absence {
        // The last node cut off alone, long enough to be forgotten; both
        // sides write on.
        net.heal();
        let mut groups = vec![0; p.nodes];
        groups[p.nodes - 1] = 1;
        net.partition(groups);
        faults.push((Fault::CutOff(p.nodes - 1), away));
        advance(&mut net, &mut checker, t + away, &mut t);
    }
    // Heal everything and stop writing; then wait for convergence.
    net.heal();
    net.set_loss(p.loss);
    for i in 0..p.nodes {
        net.set_muted(i, false);
        net.with_node(i, |n, now| n.set_writing(now, None));
    }
    let healed = t;
    let mut converged_after = None;
    let mut members_after = None;
    let mut collected_after = None;
    let fine = Duration::from_millis(50);
    while t < healed + p.settle {
        t += fine;
        net.run_until(t);
        if (t - healed).as_millis().is_multiple_of(1000) {
            checker.check(&mut net);
        }
        if members_after.is_none() && (0..p.nodes).all(|i| net.node(i).alive() == p.nodes) {
            members_after = Some(t - healed);
        }
        if converged_after.is_none() {
            let first = net.node(0).dump();
            if (1..p.nodes).all(|i| net.node(i).dump() == first) {
                converged_after = Some(t - healed);
            }
        }
        if p.retention.is_some()
            && collected_after.is_none()
            && converged_after.is_some()
            && (t - healed).as_millis().is_multiple_of(1000)
            && (0..p.nodes).all(|i| net.node(i).tombstones() == 0)
        {
            collected_after = Some(t - healed);
        }
        if converged_after.is_some()
            && members_after.is_some()
            && (p.retention.is_none() || collected_after.is_some())
        {
            break;
        }
    }
    // What the nodes acknowledged since the checker's last look.
    checker.collect(&mut net);
    checker.check_final(&net);
    let mut violations = std::mem::take(&mut checker.violations);
    if converged_after.is_none() {
        violations.push(format!(
            "replicas not identical {:?} after the heal",
            p.settle
        ));
    }
    if members_after.is_none() {
        violations.push(format!(
            "not every member alive everywhere {:?} after the heal",
            p.settle
        ));
    }
    let snapshots: u64 = (0..p.nodes).map(|i| net.node(i).snapshots_completed).sum();
    if p.long_absence.is_some()
        && p.retention.is_some()
        && net.node(p.nodes - 1).snapshots_completed == 0
    {
        violations
            .push("the node cut off past --forget-after did not catch up by snapshot".to_string());
    }
    if p.retention.is_some() && collected_after.is_none() {
        let left: u64 = (0..p.nodes).map(|i| net.node(i).tombstones()).sum();
        violations.push(format!(
            "{left} tombstone(s) still held {:?} after the heal (every node holds every delete)",
            p.settle
        ));
    }
    let digest = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        net.node(0).dump().hash(&mut h);
        h.finish()
    };
    MeshReport {
        seed: p.seed,
        faults,
        acked: checker.acked(),
        converged_after,
        members_after,
        violations,
        digest,
        tombstones_collected: collected + (0..p.nodes).map(|i| net.node(i).collected).sum::<u64>(),
        tombstones_left: (0..p.nodes).map(|i| net.node(i).tombstones()).sum(),
        collected_after,
        snapshots,
        snapshot_dropped: (0..p.nodes).map(|i| net.node(i).snapshot_dropped).sum(),
        snapshot_rebased: (0..p.nodes).map(|i| net.node(i).snapshot_rebased).sum(),
        counter_increments: checker.increments(),
        counter_keys: checker.counters.len(),
        counters_exact: checker.counters_exact,
    }
}
