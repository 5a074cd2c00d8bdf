//! The node: storage, membership, sync and transport wired together.
//!
//! Tasks (all in the application's tokio runtime):
//! - the **incoming** task reads transport events: datagrams and reliable
//!   membership messages go to the membership task; broadcasts are applied and
//!   reported to the sync task; sync requests are served from a read
//!   connection;
//! - the **membership** task drives the SWIM state machine (timers, messages),
//!   publishes this node's head in its metadata, rejoins remembered members
//!   it cannot see, and tells the sync task and the lag tracker which peers
//!   are up, down, and how far;
//! - the **sync** task drives the broadcast/anti-entropy scheduler and starts
//!   reconciliations;
//! - the **maintenance** task probes that the file can be written, retries
//!   quarantined changes and saves the remembered members.
//!
//! SQLite work runs on tokio's blocking pool: one writer connection (local
//! transactions and merges), one reader for serving peers, and a pool of
//! sandboxed read-only connections for client queries.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use litemesh_core::{Config as CoreConfig, NodeCore, Remembered, Start};
use litemesh_proto::{ActorId, ChangeBatch, Head, Knowledge, NodeMeta};
use litemesh_storage::{ReadConnection, RememberedPeer, StorageError, Store};
use litemesh_sync::OpId;
use litemesh_transport::{Event as TEvent, Incoming, MeshIdentity, Transport, TransportConfig};
use tokio::sync::{Notify, broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::commit::{self, CommitRequest};
use crate::driver::{self, Streams};
use crate::error::Error;
use crate::health::{self, Failures, Health, HealthIssue, HealthThresholds};
use crate::levels::{Ack, AckReport};
use crate::query::{self, Fallback, QueryOptions, QueryPool, Rows};
use crate::session::{self, FileLock};
use crate::settings::{Settings, Tls};
use crate::sql::{QueryResult, Statement};
use crate::status::{
    CollectionReport, MemberInfo, MemberRetention, PeerState, PeerStatus, QuarantineStatus,
    RegionStatus, RetainedWriter, RetentionReport, Status, WriterStatus,
};
use crate::token::Token;

/// Period of the maintenance task.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(1);
/// Change-log chunks the background sweep reads per maintenance tick (with
/// a retention policy), at least: a few milliseconds of the writer. When the
/// log grows faster, twice the chunks written since the last tick (at most
/// [`SWEEP_CHUNKS_MAX`]), so the sweep keeps up with any write rate.
/// Free pages given back to the file system per maintenance tick with a
/// retention policy (8 MiB at the default page size).
const RECLAIM_PAGES: u64 = 2048;

const SWEEP_CHUNKS: u64 = 64;
const SWEEP_CHUNKS_MAX: u64 = 4096;
/// Without a successful write for this long, the maintenance task probes.
const WRITE_PROBE_AFTER: Duration = Duration::from_secs(5);

/// The result of [`Node::execute`].
#[derive(Debug, Clone, PartialEq)]
pub struct Executed {
    /// Rows affected by each statement.
    pub rows_affected: Vec<usize>,
    /// This node's db version after the transaction.
    pub version: u64,
    /// Names what the transaction wrote; pass it to a query on any node.
    pub token: Token,
}

/// Committed changes to replicated tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeEvent {
    /// Tables whose rows changed.
    pub tables: BTreeSet<String>,
    /// Whether the change was written on this node.
    pub local: bool,
}

/// A stream of [`ChangeEvent`]s for chosen tables.
pub struct Subscription {
    rx: broadcast::Receiver<ChangeEvent>,
    tables: Option<BTreeSet<String>>,
}

impl Subscription {
    /// The next change to a subscribed table. `None` when the node stops. If
    /// the subscriber falls far behind, missed events are skipped (the next
    /// event still arrives).
    pub async fn next(&mut self) -> Option<ChangeEvent> {
        loop {
            match self.rx.recv().await {
                Ok(mut ev) => {
                    if let Some(t) = &self.tables {
                        ev.tables.retain(|x| t.contains(x));
                        if ev.tables.is_empty() {
                            continue;
                        }
                    }
                    return Some(ev);
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

pub(crate) struct Inner {
    pub(crate) writer: Mutex<Store>,
    pub(crate) reader: Mutex<Store>,
    pub(crate) queries: Arc<QueryPool>,
    pub(crate) name: String,
    /// This node's region (certified by its certificate under mutual TLS).
    pub(crate) region: Option<String>,
    /// Peers whose gossiped region contradicts their certificate (warned
    /// once each).
    region_liars: Mutex<HashSet<SocketAddr>>,
    /// Bytes sent per destination address (all channels), for the bytes
    /// per region in status and metrics.
    sent_bytes: Mutex<HashMap<SocketAddr, u64>>,
    /// The region each of those addresses was last seen in.
    sent_regions: Mutex<HashMap<SocketAddr, Option<String>>>,
    db_path: PathBuf,
    /// The QUIC address peers are told to use.
    pub(crate) advertised: SocketAddr,
    pub(crate) transport: Transport,
    pub(crate) knowledge: watch::Sender<Knowledge>,
    pub(crate) changes: broadcast::Sender<ChangeEvent>,
    /// Versions in the writer's quarantine, and their details (refreshed
    /// after every writer operation while there are any).
    quarantined: Mutex<Vec<(ActorId, u64)>>,
    quarantine: Mutex<Vec<litemesh_storage::QuarantinedVersion>>,
    failures: Mutex<Failures>,
    /// The node core: membership and replication, every protocol decision
    /// and every piece of per-peer state.
    core: Mutex<NodeCore>,
    /// Fired when a graceful leave is done.
    pub(crate) left: Mutex<Option<oneshot::Sender<()>>>,
    /// Wakes the core's timer task (its next timeout may have changed).
    pub(crate) timer: Notify,
    /// When the timer task is set to call the core (micros since `epoch`).
    pub(crate) timer_at: AtomicU64,
    /// Open sessions and requests (the driver's side of them).
    pub(crate) streams: Mutex<Streams>,
    /// Storage applies the core asked for, run one at a time.
    pub(crate) apply_tx: mpsc::UnboundedSender<(OpId, Vec<ChangeBatch>)>,
    /// Clients' transactions waiting for the next group commit.
    commits: mpsc::UnboundedSender<CommitRequest>,
    pub(crate) max_message: usize,
    pub(crate) max_broadcast: usize,
    pub(crate) shutdown: watch::Sender<bool>,
    /// Set when the node starts shutting down: no new client work.
    closing: AtomicBool,
    /// Stops every running statement (node shutdown).
    stop: Arc<AtomicBool>,
    pub(crate) epoch: tokio::time::Instant,
    changes_applied: AtomicU64,
    /// Rows of tables this node may not hold that peers sent anyway.
    pub(crate) placement_rows_refused: AtomicU64,
    /// Rows of tables this partial replica does not carry, sent anyway.
    pub(crate) rows_not_carried: AtomicU64,
    /// Pinned tables (from the schema).
    pub(crate) placement: litemesh_proto::Placement,
    /// The mesh runs without TLS: peers' regions are what they gossip.
    pub(crate) insecure: bool,
    /// Members already warned about for a different placement.
    placement_warned: Mutex<HashSet<SocketAddr>>,
    /// Members unreachable now (since when), and the longest absence seen.
    absences: Mutex<Absences>,
    /// Tombstone collection: the cut waiting to be collected, and totals.
    pub(crate) collection: Mutex<Collection>,
    /// The retention policy (`None`: keep every tombstone).
    pub(crate) retention: Option<Duration>,
    /// `Settings::forget_after`.
    pub(crate) forget_after: Duration,
    /// A new node of a mesh that collects tombstones, before its first
    /// completed reconciliation: it refuses writes until it has learned
    /// the mesh's floors (docs/retention.md).
    pub(crate) joining: std::sync::atomic::AtomicBool,
    /// Group commit counters: transactions, and the commits they took.
    pub(crate) transactions_committed: AtomicU64,
    pub(crate) commit_groups: AtomicU64,
    /// Apply transactions run.
    apply_transactions: AtomicU64,
    pub(crate) query_timeout: Duration,
    pub(crate) transaction_timeout: Duration,
    pub(crate) max_query_rows: u64,
    lock: Mutex<Option<FileLock>>,
}

impl Inner {
    pub(crate) fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    pub(crate) fn closed(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    fn actor(&self) -> ActorId {
        self.core().actor()
    }

    /// The replication core (held briefly: never across an await or I/O).
    pub(crate) fn core(&self) -> std::sync::MutexGuard<'_, NodeCore> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A member's region: the one its certificate certifies when a
    /// connection to it is open (mutual TLS), else the one it gossips. A
    /// gossiped region that contradicts the certificate is ignored, with a
    /// warning.
    pub(crate) fn member_region(&self, addr: SocketAddr, claimed: Option<&str>) -> Option<String> {
        if addr == self.advertised {
            return self.region.clone();
        }
        match self.transport.peer_region(addr) {
            Some(certified) => {
                if claimed.is_some() && claimed != certified.as_deref() {
                    let mut liars = self.region_liars.lock().unwrap_or_else(|e| e.into_inner());
                    if liars.insert(addr) {
                        tracing::warn!(
                            peer = %addr,
                            claimed = claimed.unwrap_or(""),
                            certified = certified.as_deref().unwrap_or("none"),
                            "a member claims a region its certificate does not certify: \
                             its certificate is believed"
                        );
                    }
                }
                certified
            }
            None => claimed.map(str::to_string),
        }
    }

    /// The tables this node's own `version` wrote (`None` if it cannot be
    /// read).
    pub(crate) fn tables_written(&self, version: u64) -> Option<BTreeSet<String>> {
        let mut r = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        r.refresh().ok()?;
        let mut tables = BTreeSet::new();
        r.version_changes(version, usize::MAX / 2, |b| {
            for v in &b.versions {
                tables.extend(v.rows.iter().map(|row| row.table.clone()));
            }
            Ok(true)
        })
        .ok()?;
        Some(tables)
    }

    /// Members whose schema pins tables differently from this node's, by
    /// name (or address).
    pub(crate) fn placement_mismatch(&self) -> Vec<String> {
        let addrs = self.core().placement_mismatches();
        addrs
            .into_iter()
            .map(|a| self.transport.peer_name(a).unwrap_or_else(|| a.to_string()))
            .collect()
    }

    /// Why collection cannot run on this node's side, if changes wait to be
    /// applied (parked or quarantined) before any can be collected.
    fn collection_waiting(&self) -> Option<String> {
        self.collection
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .waiting
            .then(|| "changes wait to be applied here (parked or quarantined)".to_string())
    }

    /// Notes since when tombstone collection has been held back, and logs
    /// when it starts and stops being held back.
    fn track_collection(&self) {
        if self.retention.is_none() {
            return;
        }
        let held = self
            .core()
            .collection()
            .held_back
            .or_else(|| self.collection_waiting());
        let mut c = self.collection.lock().unwrap_or_else(|e| e.into_inner());
        match (&held, c.held_since) {
            (Some(why), None) => {
                tracing::info!("tombstone collection is held back: {why}");
                c.held_since = Some(std::time::Instant::now());
            }
            (None, Some(_)) => {
                tracing::info!("tombstone collection is no longer held back");
                c.held_since = None;
            }
            _ => {}
        }
    }

    /// Notes which members are unreachable since when, and the longest
    /// absence of one that came back.
    fn track_absences(&self) {
        let members: Vec<(SocketAddr, String, bool)> = self
            .core()
            .members()
            .iter()
            .filter(|m| m.addr != self.advertised)
            .map(|m| {
                (
                    m.addr,
                    m.name.clone(),
                    m.state == litemesh_membership::MemberState::Alive,
                )
            })
            .collect();
        let now = std::time::Instant::now();
        let mut a = self.absences.lock().unwrap_or_else(|e| e.into_inner());
        for (addr, name, alive) in members {
            if alive {
                if let Some(since) = a.since.remove(&addr) {
                    let away = now.duration_since(since);
                    if a.longest.as_ref().is_none_or(|(_, d)| away > *d) {
                        a.longest = Some((name, away));
                    }
                }
            } else {
                a.since.entry(addr).or_insert(now);
            }
        }
    }

    /// Logs, once per member, that its schema pins tables differently.
    fn warn_placement_mismatch(&self) {
        let now = self.core().placement_mismatches();
        let mut warned = self
            .placement_warned
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for a in &now {
            if warned.insert(*a) {
                tracing::error!(
                    peer = %a,
                    "a member's schema pins tables differently from this node's: rows it sends or \
                     relays are not filtered as this node's placement says; apply the same schema \
                     on every node"
                );
            }
        }
        warned.retain(|a| now.contains(a));
    }

    /// What the peer at `addr` may hold, for table placement: by the region
    /// its certificate certifies (none while that cannot be told), or, in
    /// an insecure mesh, by the region it gossips.
    pub(crate) fn placement_entitlement(&self, addr: SocketAddr) -> litemesh_proto::Entitlement {
        let region = match self.transport.peer_region(addr) {
            Some(r) => r,
            None if self.insecure => self.core().peer_region(addr),
            None => None,
        };
        litemesh_proto::Entitlement::region(region)
    }

    /// Counts `len` bytes sent to `to` (any channel).
    pub(crate) fn count_sent(&self, to: SocketAddr, len: usize) {
        *self
            .sent_bytes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(to)
            .or_default() += len as u64;
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, Failures> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the writer connection in the blocking pool.
    pub(crate) async fn with_writer<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut Store) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let inner = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut w = inner.writer.lock().unwrap_or_else(|e| e.into_inner());
            let out = f(&mut w);
            // Publish what this node now holds (read back from the file).
            inner.refresh_quarantine(&mut w, false);
            if let Ok(k) = w.knowledge() {
                // Under the writer's lock: the core sees knowledge grow in
                // the order it grew.
                let quarantined = inner
                    .quarantined
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                inner.core().set_knowledge(k.clone(), quarantined);
                inner.knowledge.send_replace(k);
            }
            out
        })
        .await
        .map_err(|_| Error::ShuttingDown)?
    }

    /// Before the first write of a node on probation (it restarted on a file
    /// that may be a restored copy), moves it to a new actor id.
    pub(crate) fn rotate_if_on_probation(&self, w: &mut Store) -> Result<(), Error> {
        if !self.core().take_probation() {
            return Ok(());
        }
        let new = match w.rotate_actor() {
            Ok(n) => n,
            Err(e) => {
                self.core().restore_probation();
                return Err(e.into());
            }
        };
        tracing::warn!(
            actor = %new,
            "a write came before any peer confirmed that it holds this node's latest \
             version (the file may be a restored copy): writing under a new actor id"
        );
        let now = self.now();
        self.core().set_actor(now, new, 0);
        Ok(())
    }

    /// Refreshes the cached quarantine from the writer: when the set of
    /// versions changed, or with `details` (after retries).
    fn refresh_quarantine(&self, w: &mut Store, details: bool) {
        let mut q = self.quarantined.lock().unwrap_or_else(|e| e.into_inner());
        if q.is_empty() && w.quarantined_count() == 0 {
            return;
        }
        let now = w.quarantined_versions();
        if details || now != *q {
            *q = now;
            *self.quarantine.lock().unwrap_or_else(|e| e.into_inner()) =
                w.quarantine_list().unwrap_or_default();
        }
    }

    /// Records the outcome of an operation that wrote the file.
    pub(crate) fn wrote(&self, res: &Result<(), &StorageError>) {
        let mut f = self.failures();
        match res {
            Ok(()) => f.wrote(),
            Err(e) if e.is_environmental() => {
                f.write_error = Some(e.to_string());
            }
            Err(_) => {}
        }
    }

    /// Applies the batches of several storage operations from the core in
    /// one SQLite transaction (one commit), under one hold of the writer and
    /// one read of the knowledge after it; returns, per operation, whether
    /// it taught this node something, and whether merges now wait for a
    /// sync to disk.
    pub(crate) async fn apply_many(
        self: &Arc<Self>,
        ops: Vec<(OpId, Vec<ChangeBatch>)>,
    ) -> (Vec<(OpId, Result<bool, Error>)>, bool) {
        let ids: Vec<(OpId, bool)> = ops.iter().map(|(op, b)| (*op, !b.is_empty())).collect();
        let res = self
            .with_writer(move |w| {
                let groups: Vec<&[ChangeBatch]> = ops
                    .iter()
                    .filter(|(_, b)| !b.is_empty())
                    .map(|(_, b)| b.as_slice())
                    .collect();
                let reports = if groups.is_empty() {
                    Ok(Vec::new())
                } else {
                    w.apply_groups(&groups).map_err(Error::from)
                };
                Ok((reports, w.merges_unsynced()))
            })
            .await;
        let (reports, unsynced) = match res {
            Ok(r) => r,
            Err(e) => (Err(e), false),
        };
        let mut reports = match reports {
            Ok(r) => {
                if !r.is_empty() {
                    self.apply_transactions.fetch_add(1, Ordering::Relaxed);
                }
                r.into_iter()
            }
            Err(e) => {
                // The whole group failed: the failure counts once.
                let msg = e.to_string();
                let _ = self.applied(Err(e));
                let results = ids
                    .into_iter()
                    .map(|(op, _)| (op, Err(Error::Protocol(msg.clone()))))
                    .collect();
                return (results, unsynced);
            }
        };
        let results = ids
            .into_iter()
            .map(|(op, nonempty)| {
                let report = if nonempty { reports.next() } else { None };
                (op, self.applied(Ok(report)))
            })
            .collect();
        (results, unsynced)
    }

    /// Syncs merged remote changes to disk (see [`Store::sync_merges`]).
    pub(crate) async fn sync_merges(self: &Arc<Self>) {
        let res = self
            .with_writer(|w| w.sync_merges().map_err(Error::from))
            .await;
        if let Err(e) = res {
            if let Error::Storage(s) = &e {
                self.wrote(&Err(s));
            }
            tracing::warn!("syncing merged changes to disk failed: {e}");
        }
    }

    /// Records the outcome of one apply (failures, counters, change events).
    fn applied(
        &self,
        res: Result<Option<litemesh_storage::ApplyReport>, Error>,
    ) -> Result<bool, Error> {
        let report = match res {
            Ok(None) => return Ok(false),
            Ok(Some(r)) => r,
            Err(e) => {
                let mut f = self.failures();
                f.apply += 1;
                f.apply_error = Some(e.to_string());
                if let Error::Storage(s) = &e
                    && s.is_environmental()
                {
                    f.write_error = Some(s.to_string());
                }
                if f.apply >= health::FAILING_AFTER {
                    tracing::error!(
                        failures = f.apply,
                        "applying changes from peers keeps failing: {e}"
                    );
                }
                return Err(e);
            }
        };
        {
            let mut f = self.failures();
            f.apply = 0;
            f.apply_error = None;
            f.wrote();
        }
        let news = report.versions_applied > 0
            || report.chunks_buffered > 0
            || report.versions_cleared > 0;
        self.changes_applied.fetch_add(
            report.cells_written as u64 + report.rows_deleted as u64,
            Ordering::Relaxed,
        );
        if report.rows_refused > 0 {
            self.placement_rows_refused
                .fetch_add(report.rows_refused as u64, Ordering::Relaxed);
        }
        if report.rows_not_carried > 0 {
            self.rows_not_carried
                .fetch_add(report.rows_not_carried as u64, Ordering::Relaxed);
        }
        if !report.tables_changed.is_empty() {
            let _ = self.changes.send(ChangeEvent {
                tables: report.tables_changed,
                local: false,
            });
        }
        Ok(news)
    }
}

/// A running litemesh node. Cheap to clone; [`Node::shutdown`] stops it.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    /// The commit task: not aborted at shutdown but waited for, so that a
    /// group under way is answered.
    commits: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.inner.name)
            .field("addr", &self.inner.transport.local_addr())
            .finish()
    }
}

/// The advertise setting, checked: a wildcard bind needs one, and an
/// advertised address must be a real one.
fn check_advertise(
    bound: SocketAddr,
    advertise: Option<SocketAddr>,
) -> Result<Option<SocketAddr>, Error> {
    match advertise {
        Some(a) if a.ip().is_unspecified() => Err(Error::Settings(format!(
            "advertise address {a} is unspecified: give the address peers reach this node at"
        ))),
        Some(a) => Ok(Some(a)),
        None if bound.ip().is_unspecified() => Err(Error::Settings(format!(
            "listening on {bound} (all interfaces) needs an advertise address: \
             the address peers reach this node at, e.g. 10.0.0.5:{}",
            bound.port()
        ))),
        None => Ok(None),
    }
}

/// Members unreachable now, and the longest absence seen (see
/// Tombstone collection as the node runs it (the core decides the cut).
#[derive(Debug, Default)]
pub(crate) struct Collection {
    /// A cut the core handed over and no pass has taken yet.
    pub pending: Option<std::collections::BTreeMap<ActorId, u64>>,
    /// Whether a collection task runs.
    pub running: bool,
    /// Tombstones collected since the node started.
    pub tombstones: u64,
    /// Passes run (one per budget of change-log chunks).
    pub passes: u64,
    /// The cut collected last (per actor).
    pub done: std::collections::BTreeMap<ActorId, u64>,
    /// Why the last pass failed, if it did.
    pub error: Option<String>,
    /// Since when the core has reported collection held back.
    pub held_since: Option<std::time::Instant>,
    /// The last pass could not run: changes wait to be applied.
    pub waiting: bool,
    /// Where the background sweep of the change log goes on.
    pub sweep_from: i64,
    /// The log's highest chunk id at the last sweep step.
    pub sweep_high: i64,
    /// Change-log entries the sweep removed (their cells all overwritten).
    pub log_entries_removed: u64,
}

/// `Inner::track_absences`).
#[derive(Debug, Default)]
struct Absences {
    since: HashMap<SocketAddr, std::time::Instant>,
    longest: Option<(String, Duration)>,
}

struct Opened {
    placement: litemesh_proto::Placement,
    writer: Store,
    reader: Store,
    queries: Vec<ReadConnection>,
    lock: FileLock,
    remembered: Vec<RememberedPeer>,
    /// The actor id was kept (a clean restart): see `Inner::probation`.
    kept: bool,
}

fn open_stores(
    settings: &Settings,
    region: Option<String>,
    stop: &Arc<AtomicBool>,
) -> Result<Opened, Error> {
    let lock = session::lock(&settings.db_path)?;
    let mut writer = Store::open_with(
        &settings.db_path,
        &litemesh_storage::StoreOptions {
            reclaim_pages: settings.retention.is_some(),
            ..Default::default()
        },
    )?;
    // Every schema text together: one file per table (a folder of them)
    // declares the schema as a whole.
    if !settings.schema.is_empty() {
        let report = writer.apply_schema(&settings.schema.join("\n;\n"))?;
        for w in report.warnings {
            tracing::warn!("{w}");
        }
    }
    let entitlement = litemesh_proto::Entitlement {
        region,
        carried: settings
            .tables
            .as_ref()
            .map(|t| t.iter().map(|t| t.to_ascii_lowercase()).collect()),
    };
    writer.set_entitlement(entitlement)?;
    let placement = writer.placement().clone();
    for t in settings.tables.iter().flatten() {
        if !placement.allows(writer.entitlement(), t) {
            tracing::warn!(
                table = %t,
                "--tables names a table this node's region may not hold: it will hold none of it"
            );
        }
    }
    if !placement.is_empty() {
        for (t, r) in placement.pinned() {
            tracing::info!(
                table = t,
                regions = ?r,
                here = writer.may_hold(t),
                "pinned table"
            );
        }
    }
    let begun = session::begin(&mut writer, &settings.db_path)?;
    writer.set_stop_flag(stop.clone());
    let reader = Store::open(&settings.db_path)?;
    reader.set_stop_flag(stop.clone());
    let mut queries = Vec::new();
    for _ in 0..settings.query_connections.max(1) {
        let q = ReadConnection::open(&settings.db_path)?;
        q.set_stop_flag(stop.clone());
        q.set_placement(placement.clone(), writer.entitlement().clone());
        queries.push(q);
    }
    let remembered = writer.remembered_peers()?;
    Ok(Opened {
        placement,
        writer,
        reader,
        queries,
        lock,
        remembered,
        kept: begun.kept,
    })
}

/// A partial replica's tables, as its metadata tells peers (so that they
/// leave the others out), unless the list would not fit in the metadata:
/// then peers send everything and the node leaves out what it does not
/// carry on arrival.
fn gossiped_tables(
    settings: &Settings,
    name: &str,
    region: Option<&str>,
    actor: ActorId,
) -> Option<Vec<String>> {
    let tables: Vec<String> = settings
        .tables
        .as_ref()?
        .iter()
        .map(|t| t.to_ascii_lowercase())
        .collect();
    // The largest the metadata gets (the head grows).
    let widest = NodeMeta {
        name: name.to_string(),
        region: region.map(str::to_string),
        api: settings.api_addr.clone(),
        actor,
        head: Some(Head {
            version: u64::MAX,
            unix_ms: u64::MAX,
        }),
        tables: Some(tables.clone()),
        placement: Some(u64::MAX),
    };
    match widest.encode() {
        Ok(b) if b.len() <= litemesh_membership::MAX_METADATA_LEN => Some(tables),
        _ => {
            tracing::warn!(
                "the list of tables this partial replica carries is too long to gossip: \
                 peers will send every table, and this node leaves out the others on arrival"
            );
            None
        }
    }
}

fn identity(tls: &Tls) -> Result<MeshIdentity, Error> {
    Ok(match tls {
        Tls::Insecure => MeshIdentity::insecure()?,
        Tls::Pem { ca, cert, key } => {
            MeshIdentity::from_pem(ca.as_bytes(), cert.as_bytes(), key.as_bytes())?
        }
        Tls::Files { ca, cert, key } => MeshIdentity::from_pem_files(ca, cert, key)?,
    })
}

/// Members and lag grouped by region (this node counted in its own).
fn regions(own: Option<&str>, peers: &[PeerStatus], writers: &[WriterStatus]) -> Vec<RegionStatus> {
    let mut by: BTreeMap<Option<String>, RegionStatus> = BTreeMap::new();
    let mut entry = |r: &Option<String>| {
        by.entry(r.clone()).or_insert_with(|| RegionStatus {
            region: r.clone(),
            members: 0,
            reachable: 0,
            max_lag: Duration::ZERO,
            reachable_max_lag: Duration::ZERO,
            nearest_rtt: None,
            bytes_sent: 0,
        });
    };
    entry(&own.map(str::to_string));
    for p in peers {
        entry(&p.region);
    }
    for w in writers {
        entry(&w.region);
    }
    if let Some(r) = by.get_mut(&own.map(str::to_string)) {
        r.members += 1;
        r.reachable += 1;
    }
    for p in peers {
        let r = by.get_mut(&p.region).expect("entry made above");
        r.members += 1;
        // Alive only, as for the lag of writers: a suspect member's writes
        // are already counted as not known complete.
        if p.state == PeerState::Alive {
            r.reachable += 1;
            if let Some(rtt) = p.rtt {
                r.nearest_rtt = Some(r.nearest_rtt.map_or(rtt, |n| n.min(rtt)));
            }
        }
    }
    for w in writers {
        let r = by.get_mut(&w.region).expect("entry made above");
        r.max_lag = r.max_lag.max(w.lag);
        if w.reachable {
            r.reachable_max_lag = r.reachable_max_lag.max(w.lag);
        }
    }
    by.into_values().collect()
}

/// The node's region: the one its certificate certifies. A `--region` that
/// contradicts the certificate is refused; one given without a certified
/// region is refused too, unless the node runs insecure (where nothing is
/// certified and the region is only what the node says).
fn node_region(ident: &MeshIdentity, claimed: Option<&str>) -> Result<Option<String>, Error> {
    if let Some(r) = claimed {
        litemesh_transport::validate_region(r).map_err(|e| Error::Settings(e.to_string()))?;
    }
    if ident.is_insecure() {
        return Ok(claimed.map(str::to_string));
    }
    let certified = match (ident.region(), claimed) {
        (Ok(r), _) => r,
        (Err(e), Some(_)) => return Err(Error::Settings(format!("node certificate: {e}"))),
        (Err(e), None) => {
            tracing::warn!("node certificate: {e}; this node has no region");
            None
        }
    };
    match (claimed, certified) {
        (Some(c), Some(r)) if c != r => Err(Error::Settings(format!(
            "region {c:?} contradicts the node certificate, which certifies region {r:?}"
        ))),
        (Some(c), None) => Err(Error::Settings(format!(
            "region {c:?} is not certified: the node certificate names no region \
             (make one with `litemesh tls node --region {c}`)"
        ))),
        (_, r) => Ok(r),
    }
}

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Node {
    /// Opens the file (taking its lock: one node per file), applies the
    /// schema, binds the QUIC socket, joins the mesh through the seeds and
    /// the members remembered from earlier runs (retrying until one answers)
    /// and starts replicating. Must be called inside a tokio runtime.
    pub async fn start(settings: Settings) -> Result<Node, Error> {
        let ident = identity(&settings.tls)?;
        let region = node_region(&ident, settings.region.as_deref())?;
        let s2 = settings.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let region2 = region.clone();
        let opened = tokio::task::spawn_blocking(move || open_stores(&s2, region2, &stop2))
            .await
            .map_err(|_| Error::ShuttingDown)??;
        let Opened {
            placement,
            writer,
            reader,
            queries,
            lock,
            remembered,
            kept,
        } = opened;
        let actor = writer.actor_id();
        let knowledge0 = writer.knowledge()?;
        // A new file joining a mesh with a retention policy: writes wait for
        // its first reconciliation, which brings the floors (a key whose
        // tombstone was collected must be inserted above them).
        let owned0 = writer.owned_actors()?;
        let fresh_joiner = settings.retention.is_some()
            && !settings.seeds.is_empty()
            && knowledge0
                .have
                .iter()
                .all(|(a, r)| r.is_empty() || owned0.contains(a));
        // Away from every member longer than they wait for one (with a
        // policy): its peers may have collected tombstones it lacks.
        let last_contact = remembered.iter().map(|p| p.last_seen_ms).max();
        let away_too_long = settings.retention.is_some()
            && last_contact.is_some_and(|t| {
                unix_ms().saturating_sub(t) > settings.forget_after.as_millis() as u64
            });
        let joining = fresh_joiner || away_too_long;
        let head0 = knowledge0.have.get(&actor).and_then(|r| r.max());
        let mut tcfg = TransportConfig::new(settings.listen, settings.mesh_id.clone());
        tcfg.keep_alive = settings.keep_alive;
        tcfg.idle_timeout = settings.idle_timeout;
        let bound = settings.listen;
        let advertise = check_advertise(bound, settings.advertise)?;
        let (transport, incoming) = Transport::bind(tcfg, &ident, settings.faults.clone())?;
        // The address peers are told to use (membership, seeds).
        let addr = match advertise {
            Some(a) if a.port() == 0 => SocketAddr::new(a.ip(), transport.local_addr().port()),
            Some(a) => a,
            None => transport.local_addr(),
        };
        let name = settings
            .name
            .clone()
            .unwrap_or_else(|| format!("node-{}", addr.port()));

        let (apply_tx, apply_rx) = mpsc::unbounded_channel();
        let (commits, commits_rx) = mpsc::unbounded_channel();
        let (shutdown, _) = watch::channel(false);
        let epoch = tokio::time::Instant::now();
        let wall0 = unix_ms();
        // Members remembered from earlier runs: known, not reached yet. An
        // address that no longer parses is dropped from the file.
        let mut unreadable = Vec::new();
        let mut known0 = Vec::new();
        for p in &remembered {
            match p.addr.parse::<SocketAddr>() {
                Ok(a) => known0.push(Remembered {
                    addr: a,
                    name: p.name.clone(),
                    actor: p.actor,
                    last_seen_ms: p.last_seen_ms,
                }),
                Err(_) => unreadable.push(p.addr.clone()),
            }
        }
        let generation = wall0.max(1);
        let seed = u64::from_be_bytes(actor.0[8..].try_into().expect("8 bytes")) ^ generation;
        let config = CoreConfig {
            sync: settings.sync.clone(),
            membership: settings.membership.clone(),
            forget_after: settings.forget_after,
            ..CoreConfig::default()
        };
        let meta = NodeMeta {
            name: name.clone(),
            region: region.clone(),
            api: settings.api_addr.clone(),
            actor,
            head: head0.map(|version| Head {
                version,
                unix_ms: wall0,
            }),
            tables: gossiped_tables(&settings, &name, region.as_deref(), actor),
            placement: placement.digest(),
        };
        // Seeds, and the members of earlier runs: a restarted node finds the
        // mesh again with or without --seed.
        let seeds: Vec<SocketAddr> = settings
            .seeds
            .iter()
            .copied()
            .filter(|s| *s != transport.local_addr())
            .collect();
        let mut core = NodeCore::new(Start {
            config,
            addr,
            meta,
            knowledge: knowledge0.clone(),
            probation: kept,
            remembered: known0,
            seeds,
            wall_at_origin_ms: wall0,
            generation,
            seed,
        })
        .map_err(|e| Error::Settings(format!("membership metadata: {e}")))?;
        if !unreadable.is_empty() {
            core.save_failed(unreadable);
        }
        core.set_retention(settings.retention, writer.owned_actors()?, writer.floors()?);
        core.set_collected(writer.collected_through()?);
        core.set_checked(writer.checked()?);
        if let Some(reason) = writer.needs_snapshot()? {
            tracing::error!(
                "this node's file cannot catch up incrementally (a peer said so before it \
                 stopped): it refuses writes and serves nothing until it has caught up by \
                 snapshot from a peer. {reason}"
            );
            core.set_needs_snapshot(reason, writer.snapshot_need()?);
            core.set_snapshot_cursor(writer.snapshot_cursor()?);
        }
        if away_too_long {
            tracing::warn!(
                "this node has not been in touch with any member for longer than \
                 --forget-after: with a retention policy its peers may have collected \
                 tombstones it lacks; it accepts no writes and serves nothing until a \
                 reconciliation shows it can still catch up incrementally"
            );
        }
        if joining {
            // Nothing it holds leaves it before a peer has checked it: a
            // write made before it knew this mesh could meet a collected
            // tombstone.
            core.hold_until_synced();
        }
        if !placement.is_empty() {
            // Under mutual TLS a peer's region is its certificate's, never
            // what it gossips.
            let resolver: Option<litemesh_sync::RegionResolver> =
                if matches!(settings.tls, Tls::Insecure) {
                    None
                } else {
                    let t = transport.clone();
                    Some(Arc::new(move |a| t.peer_region(a)))
                };
            core.set_placement(placement.clone(), resolver);
        }
        let inner = Arc::new(Inner {
            writer: Mutex::new(writer),
            reader: Mutex::new(reader),
            queries: Arc::new(QueryPool::new(queries)),
            name,
            region,
            region_liars: Mutex::new(HashSet::new()),
            sent_bytes: Mutex::new(HashMap::new()),
            sent_regions: Mutex::new(HashMap::new()),
            db_path: settings.db_path.clone(),
            advertised: addr,
            transport: transport.clone(),
            knowledge: watch::channel(knowledge0).0,
            changes: broadcast::channel(1024).0,
            quarantined: Mutex::new(Vec::new()),
            quarantine: Mutex::new(Vec::new()),
            failures: Mutex::new(Failures {
                last_write_ok: Some(std::time::Instant::now()),
                ..Failures::default()
            }),
            core: Mutex::new(core),
            left: Mutex::new(None),
            timer: Notify::new(),
            timer_at: AtomicU64::new(0),
            streams: Mutex::new(Streams::default()),
            apply_tx,
            commits,
            max_message: settings.sync.max_message,
            max_broadcast: settings.sync.max_broadcast_bytes,
            shutdown,
            closing: AtomicBool::new(false),
            stop,
            epoch,
            changes_applied: AtomicU64::new(0),
            placement_rows_refused: AtomicU64::new(0),
            rows_not_carried: AtomicU64::new(0),
            placement: placement.clone(),
            insecure: matches!(settings.tls, Tls::Insecure),
            placement_warned: Mutex::new(HashSet::new()),
            absences: Mutex::new(Absences::default()),
            collection: Mutex::new(Collection::default()),
            retention: settings.retention,
            forget_after: settings.forget_after,
            joining: std::sync::atomic::AtomicBool::new(joining),
            transactions_committed: AtomicU64::new(0),
            commit_groups: AtomicU64::new(0),
            apply_transactions: AtomicU64::new(0),
            query_timeout: settings.query_timeout,
            transaction_timeout: settings.transaction_timeout,
            max_query_rows: settings.max_query_rows,
            lock: Mutex::new(Some(lock)),
        });
        // Send the join.
        driver::drive(&inner, |_, _| ());

        let tasks = vec![
            tokio::spawn(incoming_loop(inner.clone(), incoming)),
            tokio::spawn(driver::timer_loop(inner.clone())),
            tokio::spawn(driver::apply_loop(inner.clone(), apply_rx)),
            tokio::spawn(maintenance_loop(inner.clone())),
        ];
        tracing::info!(%addr, actor = %actor, "litemesh node started");
        let commits = tokio::spawn(commit::commit_loop(inner.clone(), commits_rx));
        Ok(Node {
            inner,
            tasks: Arc::new(Mutex::new(tasks)),
            commits: Arc::new(Mutex::new(Some(commits))),
        })
    }

    /// The QUIC address the node listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.transport.local_addr()
    }

    /// The QUIC address peers are told to reach it at (the `advertise`
    /// setting, or the bound address).
    pub fn advertised_addr(&self) -> SocketAddr {
        self.inner.advertised
    }

    /// The node's current storage actor id (it changes when the node moves to
    /// a new one, e.g. after a crash).
    pub fn actor_id(&self) -> ActorId {
        self.inner.actor()
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Writes a consistent copy of the node's file to `out` (which must not
    /// exist), while the node runs: its data, clocks, change log and
    /// identity. Restore it with [`crate::restore`], which gives the copy a
    /// new identity. Returns the copy's size in bytes.
    pub async fn backup(&self, out: &std::path::Path) -> Result<u64, Error> {
        if self.inner.closed() {
            return Err(Error::ShuttingDown);
        }
        let db = self.inner.db_path.clone();
        let out = out.to_path_buf();
        tokio::task::spawn_blocking(move || litemesh_storage::backup(&db, &out))
            .await
            .map_err(|_| Error::ShuttingDown)?
            .map_err(Error::from)
    }

    /// The node's file.
    pub fn db_path(&self) -> &std::path::Path {
        &self.inner.db_path
    }

    /// Whether the node is shutting down (or shut down).
    pub fn is_closed(&self) -> bool {
        self.inner.closed()
    }

    /// Runs the statements as one SQLite transaction (all or nothing), under
    /// the client sandbox: DML on replicated tables (and reads), nothing
    /// else; at most `Settings::transaction_timeout`. The changes are on
    /// disk when this returns, and on their way to the peers.
    pub async fn execute(&self, statements: Vec<Statement>) -> Result<Executed, Error> {
        if self.inner.closed() {
            return Err(Error::ShuttingDown);
        }
        // Its rows may include some deleted elsewhere whose tombstones are
        // gone: a write could bring them back.
        if let Some(why) = self.inner.core().needs_snapshot() {
            return Err(Error::NeedsSnapshot(why));
        }
        if self.inner.joining.load(Ordering::SeqCst) {
            return Err(Error::Joining);
        }
        // Queued for the next group commit; what follows the commit (the
        // broadcast, the local change event, the head to publish) runs in
        // the commit task: a caller that goes away (a client disconnecting)
        // stops none of it.
        let (reply, answer) = oneshot::channel();
        self.inner
            .commits
            .send(CommitRequest { statements, reply })
            .map_err(|_| Error::ShuttingDown)?;
        answer.await.map_err(|_| Error::ShuttingDown)?
    }

    /// Like [`Node::execute`], then waits (up to `timeout`) until other
    /// nodes hold the transaction, as `ack` asks. The write is committed
    /// here whatever happens next and is never undone: the report says which
    /// nodes confirmed and whether the level was reached in time.
    pub async fn execute_acked(
        &self,
        statements: Vec<Statement>,
        ack: &Ack,
        timeout: Duration,
    ) -> Result<(Executed, AckReport), Error> {
        if *ack == Ack::Region && self.inner.region.is_none() {
            // Refused before anything is written.
            return Err(Error::BadLevel(
                "ack=region: this node has no region (give it a certificate made with \
                 `litemesh tls node --region R`)"
                    .into(),
            ));
        }
        let done = self.execute(statements).await?;
        // With pinned tables, `regions` means the regions that may hold
        // what the transaction wrote.
        let placed = !self.inner.placement.is_empty() || self.inner.core().has_partial_peers();
        let written = match (ack, placed) {
            (Ack::Local, _) | (_, false) => None,
            _ if !done.token.versions().is_empty() => {
                let inner = self.inner.clone();
                let version = done.token.versions()[0].1;
                tokio::task::spawn_blocking(move || inner.tables_written(version))
                    .await
                    .ok()
                    .flatten()
            }
            _ => None,
        };
        let report = self
            .inner
            .acknowledge(&done.token, ack, timeout, written.as_ref())
            .await;
        Ok((done, report))
    }

    /// Runs a read-only statement and returns all its rows. With
    /// `min_token`, first waits (up to `wait`) until this node has applied
    /// everything the token names. The node's query time limit and row limit
    /// apply ([`Error::TooManyRows`] past the latter); see
    /// [`Node::query_rows`] to stream large results.
    pub async fn query(
        &self,
        statement: Statement,
        min_token: Option<&Token>,
        wait: Duration,
    ) -> Result<QueryResult, Error> {
        let mut rows = self
            .query_rows(
                statement,
                QueryOptions {
                    min_token: min_token.cloned(),
                    wait,
                    ..QueryOptions::default()
                },
            )
            .await?;
        let mut out = QueryResult {
            columns: rows.columns().to_vec(),
            rows: Vec::new(),
        };
        while let Some(r) = rows.next().await {
            out.rows.push(r?);
        }
        Ok(out)
    }

    /// Starts a read-only statement on one of the node's query connections
    /// and streams its rows. The statement runs under the client sandbox
    /// (reads only: no transaction control, no ATTACH, no pragma that changes
    /// anything) and its time limit; dropping the returned [`Rows`] stops it.
    pub async fn query_rows(
        &self,
        statement: Statement,
        opts: QueryOptions,
    ) -> Result<Rows, Error> {
        if self.inner.closed() {
            return Err(Error::ShuttingDown);
        }
        // With a fallback, this node waits half the time and leaves the rest
        // to the peers.
        let local_wait = match opts.fallback {
            Fallback::None => opts.wait,
            Fallback::Nearest => opts.wait / 2,
        };
        if let Err(e) = self.inner.wait_level(&opts, local_wait).await {
            if opts.fallback == Fallback::Nearest
                && matches!(e, Error::Lagging { .. } | Error::Stale { .. })
            {
                return self
                    .inner
                    .forward_query(statement, &opts, opts.wait - local_wait, e)
                    .await;
            }
            return Err(e);
        }
        query::start(
            &self.inner.queries,
            statement,
            opts.timeout.unwrap_or(self.inner.query_timeout),
            opts.max_rows.unwrap_or(self.inner.max_query_rows),
        )
        .await
    }

    /// Waits until this node holds every version `token` names.
    pub async fn wait_for(&self, token: &Token, wait: Duration) -> Result<(), Error> {
        self.inner.wait_token(token, wait).await
    }

    /// Changes committed to `tables` (all replicated tables if empty), local or
    /// remote, from now on.
    pub fn subscribe(&self, tables: &[&str]) -> Subscription {
        Subscription {
            rx: self.inner.changes.subscribe(),
            tables: (!tables.is_empty()).then(|| tables.iter().map(|t| t.to_string()).collect()),
        }
    }

    /// The membership view, this node included.
    pub fn members(&self) -> Vec<MemberInfo> {
        self.inner
            .core()
            .members()
            .iter()
            .map(|m| MemberInfo {
                name: m.name.clone(),
                addr: m.addr,
                region: self.inner.member_region(m.addr, m.region.as_deref()),
                state: m.state,
                incarnation: m.incarnation,
                rtt: m.rtt,
                actor: m.actor,
                api: m.api.clone(),
            })
            .collect()
    }

    /// What this node holds, how far behind each peer and writer it is, and
    /// what fails.
    pub async fn status(&self) -> Result<Status, Error> {
        let inner = &self.inner;
        let k = inner.knowledge.borrow().clone();
        let core_now = inner.now();
        let (sched, stats, actor, known, lags) = {
            let core = inner.core();
            (
                core.peers(),
                core.stats(),
                core.actor(),
                core.known().clone(),
                core.lag(core_now, &k),
            )
        };
        let db_version = k.have.get(&actor).and_then(|r| r.max()).unwrap_or(0);
        let members = self.members();
        let mut peers = Vec::new();
        let mut reachable = 1;
        // A member restarted under a new identity is listed twice at one
        // address until the old one is reaped: the liveliest speaks for it.
        for (addr, kn) in &known {
            let m = members
                .iter()
                .filter(|m| m.addr == *addr)
                .min_by_key(|m| PeerState::from(m.state));
            let state = m.map_or(PeerState::Unreachable, |m| m.state.into());
            if state.is_reachable() {
                reachable += 1;
            }
            let seen = sched
                .iter()
                .find(|p| p.addr == *addr)
                .and_then(|p| p.knowledge.as_ref());
            let (behind, last) = match seen {
                Some((theirs, at)) => (k.lacking(theirs), Some(core_now.saturating_sub(*at))),
                None => (0, None),
            };
            peers.push(PeerStatus {
                addr: *addr,
                name: m.map(|m| m.name.clone()).or(kn.name.clone()),
                state,
                behind_versions: behind,
                last_sync_ago: last,
                sync_age: last.unwrap_or_else(|| core_now.saturating_sub(kn.first_known)),
                rtt: sched
                    .iter()
                    .find(|p| p.addr == *addr)
                    .and_then(|p| p.rtt)
                    .or(m.and_then(|m| m.rtt)),
                region: m.and_then(|m| m.region.clone()),
            });
        }
        let names: BTreeMap<ActorId, (Option<String>, SocketAddr)> = known
            .iter()
            .filter_map(|(a, kn)| kn.actor.map(|act| (act, (kn.name.clone(), *a))))
            .collect();
        let writers: Vec<WriterStatus> = lags
            .iter()
            .map(|l| WriterStatus {
                actor: l.actor,
                name: names.get(&l.actor).and_then(|(n, _)| n.clone()),
                addr: names.get(&l.actor).map(|(_, a)| *a),
                reachable: l.reachable,
                lag: l.lag,
                head: l.head,
                missing_versions: l.missing_versions,
                region: names
                    .get(&l.actor)
                    .and_then(|(_, a)| members.iter().find(|m| m.addr == *a))
                    .and_then(|m| m.region.clone()),
            })
            .collect();
        let mut regions = regions(inner.region.as_deref(), &peers, &writers);
        let sent: Vec<(SocketAddr, u64)> = inner
            .sent_bytes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(a, n)| (*a, *n))
            .collect();
        let mut last_region = inner.sent_regions.lock().unwrap_or_else(|e| e.into_inner());
        for (addr, n) in sent {
            // The region an address was last seen in: bytes stay counted
            // there after its member is forgotten (the counter never goes
            // down).
            if let Some(m) = members.iter().find(|m| m.addr == addr) {
                last_region.insert(addr, m.region.clone());
            }
            let region = last_region.get(&addr).cloned().flatten();
            match regions.iter_mut().find(|r| r.region == region) {
                Some(r) => r.bytes_sent += n,
                None => regions.push(RegionStatus {
                    region,
                    members: 0,
                    reachable: 0,
                    max_lag: Duration::ZERO,
                    reachable_max_lag: Duration::ZERO,
                    nearest_rtt: None,
                    bytes_sent: n,
                }),
            }
        }
        drop(last_region);
        regions.sort_by(|a, b| a.region.cmp(&b.region));
        // From memory: status (and health) never wait on SQLite.
        let quarantine = inner
            .quarantine
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let now_ms = unix_ms();
        let f = inner.failures().clone();
        let tombstones_collected = inner
            .collection
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .tombstones;
        let (collection_held_back, needs_snapshot, snapshot_catch_up) = {
            let core = inner.core();
            let p = core.snapshot_progress();
            let needs = core.needs_snapshot();
            let catch_up = (p.chunks > 0 || needs.is_some()).then(|| crate::SnapshotCatchUp {
                keys_checked: p.checked,
                rows_dropped: p.dropped,
                rows_rebased: p.rebased,
                complete: p.completed_at.is_some() && needs.is_none(),
            });
            (core.collection().held_back, needs, catch_up)
        };
        let collection_held_back = collection_held_back.or_else(|| inner.collection_waiting());
        Ok(Status {
            name: inner.name.clone(),
            actor,
            db_version,
            version_vector: k.heads(),
            complete_through: k.have.keys().map(|a| (*a, k.complete_through(a))).collect(),
            peers,
            max_lag: writers.iter().map(|w| w.lag).max().unwrap_or_default(),
            writers,
            quarantined: quarantine
                .into_iter()
                .map(|q| QuarantineStatus {
                    actor: q.actor,
                    version: q.version,
                    rows: q.rows,
                    error: q.error,
                    since: Duration::from_millis(now_ms.saturating_sub(q.first_failed_ms)),
                    attempts: q.attempts,
                })
                .collect(),
            members_reachable: reachable,
            members_known: known.len() + 1,
            broadcast_queue: stats.broadcast_queue,
            broadcast_dropped: stats.broadcast_dropped,
            changes_applied: inner.changes_applied.load(Ordering::Relaxed),
            transactions_committed: inner.transactions_committed.load(Ordering::Relaxed),
            commit_groups: inner.commit_groups.load(Ordering::Relaxed),
            apply_transactions: inner.apply_transactions.load(Ordering::Relaxed),
            broadcasts_known: stats.broadcasts_known,
            broadcasts_withheld: stats.broadcasts_withheld,
            placement_rows_refused: inner.placement_rows_refused.load(Ordering::Relaxed),
            rows_not_carried: inner.rows_not_carried.load(Ordering::Relaxed),
            tombstones_collected,
            collection_held_back,
            needs_snapshot,
            snapshot_catch_up,
            placement_mismatch: inner.placement_mismatch(),
            placement: inner
                .placement
                .pinned()
                .map(|(t, r)| (t.to_string(), r.iter().cloned().collect()))
                .collect(),
            syncs_completed: stats.syncs_completed,
            syncs_failed: stats.syncs_failed,
            apply_failures: f.apply,
            serve_failures: stats.serve_failures,
            write_error: f.write_error,
            partial_versions: k.partial.values().map(|m| m.len()).sum(),
            region: inner.region.clone(),
            regions,
        })
    }

    /// What this node keeps and for how long: see [`RetentionReport`].
    /// Counts the replication metadata (reads every clock table).
    pub async fn retention(&self) -> Result<RetentionReport, Error> {
        let inner = self.inner.clone();
        let metadata = tokio::task::spawn_blocking(move || {
            let mut r = inner.reader.lock().unwrap_or_else(|e| e.into_inner());
            r.refresh()?;
            r.metadata_stats()
        })
        .await
        .map_err(|_| Error::ShuttingDown)??;
        let inner = &self.inner;
        let k = inner.knowledge.borrow().clone();
        let names: HashMap<ActorId, String> = inner
            .core()
            .members()
            .iter()
            .filter_map(|m| m.actor.map(|a| (a, m.name.clone())))
            .collect();
        let status = inner.core().collection();
        let (done, tombstones, swept, error, held_since) = {
            let c = inner.collection.lock().unwrap_or_else(|e| e.into_inner());
            (
                c.done.clone(),
                c.tombstones,
                c.log_entries_removed,
                c.error.clone(),
                c.held_since,
            )
        };
        let floors = metadata.floors.clone();
        let writers = k
            .heads()
            .into_iter()
            .map(|(actor, head)| RetainedWriter {
                actor,
                name: if actor == inner.actor() {
                    Some(inner.name.clone())
                } else {
                    names.get(&actor).cloned()
                },
                head,
                // Collected versions are served as cleared: all servable.
                oldest_servable: 1,
                collected_through: done.get(&actor).copied().unwrap_or(0),
            })
            .collect();
        let now = std::time::Instant::now();
        let (since, longest) = {
            let a = inner.absences.lock().unwrap_or_else(|e| e.into_inner());
            (a.since.clone(), a.longest.clone())
        };
        let stale = inner.core().replication().stale_peers().clone();
        let members = inner
            .core()
            .members()
            .iter()
            .filter(|m| m.addr != inner.advertised)
            .map(|m| MemberRetention {
                name: m.name.clone(),
                addr: m.addr,
                state: m.state,
                unreachable_for: since.get(&m.addr).map(|s| now.duration_since(*s)),
                incremental: !stale.contains(&m.addr),
            })
            .collect();
        let name_of = |a: SocketAddr| {
            inner
                .core()
                .members()
                .iter()
                .find(|m| m.addr == a)
                .map_or_else(|| a.to_string(), |m| m.name.clone())
        };
        let held_back_for = held_since.map(|t| now.duration_since(t));
        let mut warnings = Vec::new();
        if let (Some(policy), Some(held), Some(why)) =
            (inner.retention, held_back_for, status.held_back.as_ref())
            && held > policy
        {
            warnings.push(format!(
                "tombstone collection has been held back for {}s, longer than the retention \
                 window ({}s): {why}; tombstones accumulate until it advances (a member that \
                 is gone for good is forgotten after --forget-after)",
                held.as_secs(),
                policy.as_secs()
            ));
        }
        if let Some(e) = &error {
            warnings.push(format!("tombstone collection: {e}"));
        }
        let collection = CollectionReport {
            stable_versions: status.stable.values().sum(),
            collected_versions: done.values().sum(),
            tombstones_collected: tombstones,
            log_entries_swept: swept,
            held_back: status
                .held_back
                .clone()
                .or_else(|| inner.collection_waiting()),
            held_back_for,
            slowest_member: status.laggard.map(|(a, n)| (name_of(a), n)),
            floors,
            error,
        };
        Ok(RetentionReport {
            policy: inner.retention,
            collection,
            // With a policy, collection waits for a member until it is
            // forgotten: away longer, it cannot catch up incrementally.
            offline_limit: inner.retention.map(|_| inner.forget_after),
            writers,
            members,
            longest_absence: longest,
            metadata,
            warnings,
        })
    }

    /// Whether the node is fit to serve, by the rules of the `health` module
    /// (lag of reachable writers, versions missing, cut off from most known
    /// members, quarantined changes, failing applies or serves, a file that
    /// cannot be written, shutting down).
    pub async fn health(&self, t: &HealthThresholds) -> Result<Health, Error> {
        let mut issues = Vec::new();
        if self.inner.closed() {
            issues.push(HealthIssue::ShuttingDown);
            return Ok(Health { issues });
        }
        let s = self.status().await?;
        for w in &s.writers {
            let who = w.name.clone().unwrap_or_else(|| w.actor.to_hex());
            if w.reachable && w.lag > t.max_lag {
                issues.push(HealthIssue::Lagging {
                    writer: who.clone(),
                    lag: w.lag,
                    max: t.max_lag,
                });
            }
            if w.reachable && w.missing_versions > t.max_behind_versions {
                issues.push(HealthIssue::Behind {
                    of: who,
                    versions: w.missing_versions,
                    max: t.max_behind_versions,
                });
            }
        }
        for p in &s.peers {
            let reachable = p.state.is_reachable();
            if reachable && p.behind_versions > t.max_behind_versions {
                issues.push(HealthIssue::Behind {
                    of: p.name.clone().unwrap_or_else(|| p.addr.to_string()),
                    versions: p.behind_versions,
                    max: t.max_behind_versions,
                });
            }
        }
        if health::cut_off(s.members_reachable, s.members_known) {
            issues.push(HealthIssue::CutOff {
                reachable: s.members_reachable,
                known: s.members_known,
            });
        }
        if !s.placement_mismatch.is_empty() {
            issues.push(HealthIssue::PlacementMismatch {
                peers: s.placement_mismatch.clone(),
            });
        }
        if let Some(reason) = &s.needs_snapshot {
            issues.push(HealthIssue::NeedsSnapshot {
                reason: reason.clone(),
            });
        }
        if let Some(q) = s.quarantined.first() {
            issues.push(HealthIssue::Quarantined {
                versions: s.quarantined.len(),
                error: q.error.clone(),
            });
        }
        let f = self.inner.failures().clone();
        if f.apply >= health::FAILING_AFTER {
            issues.push(HealthIssue::ApplyFailing {
                failures: f.apply,
                error: f.apply_error.unwrap_or_default(),
            });
        }
        let serving = self.inner.core().stats();
        if serving.serve_failures >= health::FAILING_AFTER {
            issues.push(HealthIssue::ServeFailing {
                failures: serving.serve_failures,
                error: serving.serve_error.unwrap_or_default(),
            });
        }
        if let Some(e) = f.write_error {
            issues.push(HealthIssue::CannotWrite { error: e });
        }
        if f.file_gone {
            issues.push(HealthIssue::FileGone {
                path: self.inner.db_path.display().to_string(),
            });
        }
        Ok(Health { issues })
    }

    /// What this node holds.
    pub fn knowledge(&self) -> Knowledge {
        self.inner.knowledge.borrow().clone()
    }

    /// Tries again, now, every change from peers in quarantine (after the
    /// cause was fixed). Returns how many now applied and how many still fail.
    pub async fn retry_quarantined(&self) -> Result<(usize, usize), Error> {
        let inner = self.inner.clone();
        let r = self
            .inner
            .with_writer(move |w| {
                let r = w.retry_quarantined(unix_ms(), true)?;
                inner.refresh_quarantine(w, true);
                w.sync_merges()?;
                Ok(r)
            })
            .await?;
        if !r.tables_changed.is_empty() {
            let _ = self.inner.changes.send(ChangeEvent {
                tables: r.tables_changed,
                local: false,
            });
        }
        Ok((r.applied.len(), r.failed))
    }

    /// Leaves the mesh gracefully (members learn at once instead of detecting
    /// a failure), stops every running statement, closes connections, stops
    /// the node's tasks, and marks the file as cleanly shut down (so that the
    /// next start keeps the actor id). Returns within a few seconds whatever
    /// is running.
    pub async fn shutdown(&self) {
        if self.inner.closing.swap(true, Ordering::SeqCst) {
            return;
        }
        self.inner.stop.store(true, Ordering::SeqCst);
        let (tx, rx) = oneshot::channel();
        *self.inner.left.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        driver::drive(&self.inner, |c, now| c.leave(now));
        let _ = tokio::time::timeout(Duration::from_secs(2), rx).await;
        self.inner.shutdown.send_replace(true);
        let commits = self
            .commits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(c) = commits {
            let _ = tokio::time::timeout(Duration::from_secs(5), c).await;
        }
        self.inner.transport.close().await;
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for t in tasks {
            t.abort();
        }
        // Running statements were stopped by the flag; once the writer is
        // free, record the clean shutdown.
        let inner = self.inner.clone();
        let save = tokio::task::spawn_blocking(move || {
            let mut w = inner.writer.lock().unwrap_or_else(|e| e.into_inner());
            inner.stop.store(false, Ordering::SeqCst);
            // A file removed or replaced under the node is not the one the
            // path names: nothing to mark.
            let same = inner
                .lock
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .is_some_and(|l| l.names(&inner.db_path));
            let res = save_known(&inner, &mut w, true).and_then(|()| {
                if same {
                    session::end_clean(&mut w, &inner.db_path)
                } else {
                    Ok(())
                }
            });
            inner.stop.store(true, Ordering::SeqCst);
            if let Err(e) = res {
                tracing::warn!("could not record the clean shutdown: {e}");
            }
            drop(w);
            inner.lock.lock().unwrap_or_else(|e| e.into_inner()).take();
        });
        let _ = tokio::time::timeout(Duration::from_secs(5), save).await;
    }
}

async fn incoming_loop(inner: Arc<Inner>, mut incoming: Incoming) {
    while let Some(ev) = incoming.recv().await {
        match ev {
            TEvent::Datagram { from, bytes } => {
                if let Err(e) = driver::drive(&inner, |c, now| c.handle_datagram(now, from, &bytes))
                {
                    tracing::debug!(%from, "bad membership message refused: {e}");
                }
            }
            TEvent::Uni { from, bytes } => driver::on_uni(&inner, from, &bytes),
            TEvent::Request {
                from,
                bytes,
                respond,
            } => driver::on_request(&inner, from, bytes, respond),
        }
    }
}

/// Saves the known members in the file (for the next start), when the core
/// says they changed and it is time (`force`: now).
fn save_known(inner: &Inner, w: &mut Store, force: bool) -> Result<(), Error> {
    let now = inner.now();
    let Some((seen, forget)) = inner.core().take_known_to_save(now, force) else {
        return Ok(());
    };
    let rows: Vec<RememberedPeer> = seen
        .iter()
        .map(|r| RememberedPeer {
            addr: r.addr.to_string(),
            name: r.name.clone(),
            actor: r.actor,
            last_seen_ms: r.last_seen_ms,
        })
        .collect();
    tracing::debug!(
        seen = rows.len(),
        forget = forget.len(),
        "saving the known members"
    );
    if let Err(e) = w.remember_peers(&rows, &forget) {
        inner.core().save_failed(forget);
        return Err(e.into());
    }
    Ok(())
}

/// Periodic upkeep: the write probe, quarantine retries, forgetting members
/// not seen for too long, saving the known members.
async fn maintenance_loop(inner: Arc<Inner>) {
    let mut shutdown = inner.shutdown.subscribe();
    let mut tick = tokio::time::interval(MAINTENANCE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => break,
        }
        // The file must still be the one the node opened.
        let gone = !inner
            .lock
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_none_or(|l| l.names(&inner.db_path));
        if gone && !inner.failures().file_gone {
            tracing::error!(
                path = %inner.db_path.display(),
                "the database file was removed or replaced while the node runs; restart the node"
            );
        }
        inner.failures().file_gone = gone;
        inner.warn_placement_mismatch();
        inner.track_absences();
        inner.track_collection();
        let idle = inner
            .failures()
            .last_write_ok
            .is_none_or(|t| t.elapsed() >= WRITE_PROBE_AFTER);
        let failing = inner.failures().write_error.is_some();
        let quarantined = inner
            .quarantined
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len();
        if inner.retention.is_some() {
            // With a retention policy the change log is swept too: entries
            // whose cells were all overwritten since serve nothing.
            let (from, last_high) = {
                let c = inner.collection.lock().unwrap_or_else(|e| e.into_inner());
                (c.sweep_from, c.sweep_high)
            };
            match inner
                .with_writer(move |w| {
                    let high = w.log_high_water()?;
                    let grew = high.saturating_sub(last_high).max(0) as u64;
                    let budget = (grew * 2).clamp(SWEEP_CHUNKS, SWEEP_CHUNKS_MAX);
                    let (removed, next) = w.compact_step(from, budget)?;
                    // And the pages collection and the sweep freed go back
                    // to the file system (files made with incremental
                    // auto-vacuum), a bounded number a second.
                    w.reclaim(RECLAIM_PAGES)?;
                    Ok((removed, next, high))
                })
                .await
            {
                Ok((removed, next, high)) => {
                    let mut c = inner.collection.lock().unwrap_or_else(|e| e.into_inner());
                    c.sweep_from = next.unwrap_or(0);
                    c.sweep_high = high;
                    c.log_entries_removed += removed;
                }
                Err(e) => tracing::warn!("sweeping the change log failed: {e}"),
            }
        }
        let save = inner.core().wants_save(inner.now());
        if !(idle || failing || quarantined > 0 || save) {
            continue;
        }
        let i2 = inner.clone();
        let res = inner
            .with_writer(move |w| {
                let mut out = (None, None);
                if idle || failing {
                    let r = w.probe_write();
                    i2.wrote(&r.as_ref().map(|_| ()));
                    out.0 = r.err();
                }
                if quarantined > 0 {
                    match w.retry_quarantined(unix_ms(), false) {
                        Ok(r) => {
                            let tried = r.failed + r.applied.len() > 0;
                            i2.refresh_quarantine(w, tried);
                            out.1 = Some(r);
                        }
                        Err(e) => tracing::warn!("retrying quarantined changes failed: {e}"),
                    }
                }
                if save && let Err(e) = save_known(&i2, w, false) {
                    tracing::warn!("could not save the known members: {e}");
                }
                // Merges made outside the apply task (quarantine retries)
                // are synced here, within a second.
                if let Err(e) = w.sync_merges() {
                    tracing::warn!("syncing merged changes to disk failed: {e}");
                }
                Ok(out)
            })
            .await;
        match res {
            Ok((probe, retried)) => {
                if let Some(e) = probe {
                    tracing::error!("this node cannot write its file: {e}");
                }
                if let Some(r) = retried
                    && !r.tables_changed.is_empty()
                {
                    let _ = inner.changes.send(ChangeEvent {
                        tables: r.tables_changed,
                        local: false,
                    });
                }
            }
            Err(e) => tracing::warn!("maintenance failed: {e}"),
        }
    }
}
