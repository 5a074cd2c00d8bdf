//! The node: storage, membership, sync and transport wired together.
//!
//! Tasks (all in the application's tokio runtime):
//! - the **incoming** task reads transport events: datagrams and reliable
//!   membership messages go to the membership task; broadcasts are applied and
//!   reported to the sync task; sync requests are served from a read
//!   connection;
//! - the **membership** task drives the SWIM state machine (timers, messages)
//!   and tells the sync task which peers are up, down, and how far;
//! - the **sync** task drives the broadcast/anti-entropy scheduler and starts
//!   reconciliations.
//!
//! SQLite work runs on tokio's blocking pool: one writer connection (local
//! transactions and merges), one reader for serving peers, one for queries.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use litemesh_membership as mb;
use litemesh_storage::{
    ActorId, ChangeBatch, DEFAULT_MAX_WIRE_BYTES, Knowledge, Store, decode_batch, encode_batch,
};
use litemesh_sync::{DEFAULT_MAX_MESSAGE, Message, Scheduler, SyncOutcome};
use litemesh_transport::{
    Event as TEvent, Incoming, MeshIdentity, Responder, Transport, TransportConfig,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::error::Error;
use crate::settings::{Settings, Tls};
use crate::sql::{self, QueryResult, Statement};
use crate::token::Token;

/// Tag of a unidirectional stream message: membership (push-pull).
const CH_MEMBERSHIP: u8 = 0;
/// Tag of a unidirectional stream message: sync broadcast.
const CH_SYNC: u8 = 1;
/// Bytes of changes per batch extracted for a peer.
const BATCH_BYTES: usize = 256 * 1024;
/// Received batches are applied in groups of about this many bytes (one
/// SQLite transaction each).
const APPLY_GROUP_BYTES: usize = 4 * 1024 * 1024;
/// Versions larger than this are not broadcast; anti-entropy carries them.
const MAX_BROADCAST_BYTES: usize = 1024 * 1024;
/// Rows returned by one query at most.
const MAX_QUERY_ROWS: usize = 1_000_000;

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

/// A member as this node sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemberInfo {
    /// Node name.
    pub name: String,
    /// QUIC address.
    pub addr: SocketAddr,
    /// Region, if set.
    pub region: Option<String>,
    /// `alive`, `suspect`, `dead` or `left`.
    pub state: String,
    /// SWIM incarnation.
    pub incarnation: u64,
    /// Smoothed round-trip time in milliseconds.
    pub rtt_ms: Option<f64>,
    /// The member's storage actor id.
    pub actor: Option<String>,
    /// Its advertised HTTP API address.
    pub api: Option<String>,
}

/// What the node knows of a peer's replication state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeerStatus {
    /// QUIC address.
    pub addr: SocketAddr,
    /// Versions the peer had, at the last reconciliation, that this node still
    /// lacks.
    pub behind_versions: u64,
    /// Seconds since the last completed reconciliation with it.
    pub last_sync_secs_ago: Option<f64>,
    /// Round-trip time in milliseconds.
    pub rtt_ms: Option<f64>,
}

/// A snapshot of the node's state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    /// Node name.
    pub name: String,
    /// Storage actor id (hex).
    pub actor: String,
    /// Last local version.
    pub db_version: u64,
    /// Highest version held per actor.
    pub version_vector: BTreeMap<String, u64>,
    /// Per actor, the highest version `n` such that every version `1..=n` is
    /// held: what this node has of that actor without gaps. Tokens naming
    /// versions up to it are satisfied here.
    pub complete_through: BTreeMap<String, u64>,
    /// Replication peers.
    pub peers: Vec<PeerStatus>,
    /// Broadcast messages waiting for the rate limit.
    pub broadcast_queue: usize,
    /// Broadcast messages dropped on overflow (anti-entropy repairs them).
    pub broadcast_dropped: u64,
    /// Counters.
    pub changes_applied: u64,
    /// Completed reconciliations.
    pub syncs_completed: u64,
    /// Failed reconciliations.
    pub syncs_failed: u64,
    /// Versions received in part.
    pub partial_versions: usize,
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

/// Membership metadata of a node.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct NodeMeta {
    name: String,
    region: Option<String>,
    api: Option<String>,
    actor: String,
}

enum SyncInput {
    PeerUp(SocketAddr, Option<Duration>),
    PeerDown(SocketAddr),
    Rtt(SocketAddr, Duration),
    LocalCommit(Vec<Vec<u8>>),
    Broadcast {
        from: SocketAddr,
        hops: u8,
        batch: Vec<u8>,
        newly: bool,
    },
    Done(SocketAddr, SyncOutcome),
    Urgent(SocketAddr),
    /// A broadcast from this peer showed lost broadcasts.
    Behind(SocketAddr),
    Status(oneshot::Sender<(Vec<litemesh_sync::PeerStatus>, usize, u64)>),
}

enum MbInput {
    Message(SocketAddr, Bytes),
    Leave(oneshot::Sender<()>),
}

struct Inner {
    writer: Mutex<Store>,
    reader: Mutex<Store>,
    query: Mutex<rusqlite::Connection>,
    actor: ActorId,
    name: String,
    /// The QUIC address peers are told to use.
    advertised: SocketAddr,
    transport: Transport,
    knowledge: watch::Sender<Knowledge>,
    changes: broadcast::Sender<ChangeEvent>,
    members: Mutex<Vec<MemberInfo>>,
    peer_knowledge: Mutex<BTreeMap<SocketAddr, (Knowledge, tokio::time::Instant)>>,
    sync_tx: mpsc::UnboundedSender<SyncInput>,
    mb_tx: mpsc::UnboundedSender<MbInput>,
    shutdown: watch::Sender<bool>,
    epoch: tokio::time::Instant,
    changes_applied: AtomicU64,
    syncs_completed: AtomicU64,
    syncs_failed: AtomicU64,
}

impl Inner {
    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    fn closed(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Runs `f` on the writer connection in the blocking pool.
    async fn with_writer<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut Store) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let inner = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut w = inner.writer.lock().unwrap_or_else(|e| e.into_inner());
            let out = f(&mut w)?;
            // Publish what this node now holds (read back from the file).
            let k = w.knowledge()?;
            inner.knowledge.send_replace(k);
            Ok(out)
        })
        .await
        .map_err(|_| Error::ShuttingDown)?
    }

    /// Applies batches from a peer; returns whether anything new was applied.
    async fn apply(self: &Arc<Self>, batches: Vec<ChangeBatch>) -> Result<bool, Error> {
        if batches.is_empty() {
            return Ok(false);
        }
        let report = self
            .with_writer(move |w| Ok(w.apply_all(&batches)?))
            .await?;
        let news = report.versions_applied > 0
            || report.chunks_buffered > 0
            || report.versions_cleared > 0;
        self.changes_applied.fetch_add(
            report.cells_written as u64 + report.rows_deleted as u64,
            Ordering::Relaxed,
        );
        if !report.tables_changed.is_empty() {
            let _ = self.changes.send(ChangeEvent {
                tables: report.tables_changed,
                local: false,
            });
        }
        Ok(news)
    }

    fn send_uni(self: &Arc<Self>, to: SocketAddr, tag: u8, payload: &[u8]) {
        let mut buf = Vec::with_capacity(payload.len() + 1);
        buf.push(tag);
        buf.extend_from_slice(payload);
        let inner = self.clone();
        tokio::spawn(async move {
            if let Err(e) = inner.transport.send_uni(to, Bytes::from(buf)).await {
                tracing::debug!(%to, "send failed: {e}");
            }
        });
    }
}

/// A running litemesh node. Cheap to clone; [`Node::shutdown`] stops it.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
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

fn open_stores(settings: &Settings) -> Result<(Store, Store, rusqlite::Connection), Error> {
    let mut writer = Store::open(&settings.db_path)?;
    for sql in &settings.schema {
        let report = writer.apply_schema(sql)?;
        for w in report.warnings {
            tracing::warn!("{w}");
        }
    }
    let reader = Store::open(&settings.db_path)?;
    let mut query = rusqlite::Connection::open_with_flags(
        &settings.db_path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    query.busy_timeout(Duration::from_secs(5))?;
    // Statements on replicated tables name the capture functions (in their
    // triggers) even when they are refused as writes.
    litemesh_storage::attach(&mut query)?;
    Ok((writer, reader, query))
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

impl Node {
    /// Opens the file, applies the schema, binds the QUIC socket, joins the
    /// mesh through the seeds (retrying until one answers) and starts
    /// replicating. Must be called inside a tokio runtime.
    pub async fn start(settings: Settings) -> Result<Node, Error> {
        let s2 = settings.clone();
        let (writer, reader, query) = tokio::task::spawn_blocking(move || open_stores(&s2))
            .await
            .map_err(|_| Error::ShuttingDown)??;
        let actor = writer.actor_id();
        let knowledge0 = writer.knowledge()?;
        let ident = identity(&settings.tls)?;
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

        let (sync_tx, sync_rx) = mpsc::unbounded_channel();
        let (mb_tx, mb_rx) = mpsc::unbounded_channel();
        let (shutdown, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            writer: Mutex::new(writer),
            reader: Mutex::new(reader),
            query: Mutex::new(query),
            actor,
            name: name.clone(),
            advertised: addr,
            transport: transport.clone(),
            knowledge: watch::channel(knowledge0).0,
            changes: broadcast::channel(1024).0,
            members: Mutex::new(Vec::new()),
            peer_knowledge: Mutex::new(BTreeMap::new()),
            sync_tx,
            mb_tx,
            shutdown,
            epoch: tokio::time::Instant::now(),
            changes_applied: AtomicU64::new(0),
            syncs_completed: AtomicU64::new(0),
            syncs_failed: AtomicU64::new(0),
        });

        let generation = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(1);
        let id = mb::NodeId(u64::from_be_bytes(
            actor.0[..8].try_into().expect("8 bytes"),
        ));
        let seed = u64::from_be_bytes(actor.0[8..].try_into().expect("8 bytes")) ^ generation;
        let mut membership = mb::Membership::new(
            mb::Identity { id, generation },
            addr,
            settings.membership.clone(),
            seed,
        );
        let meta = NodeMeta {
            name,
            region: settings.region.clone(),
            api: settings.api_addr.clone(),
            actor: actor.to_hex(),
        };
        let meta = rmp_serde::to_vec(&meta).map_err(|e| Error::Settings(e.to_string()))?;
        membership
            .set_metadata(mb::Instant::from_duration(inner.now()), meta)
            .map_err(|e| Error::Settings(e.to_string()))?;
        let seeds: Vec<SocketAddr> = settings
            .seeds
            .iter()
            .copied()
            .filter(|s| *s != addr && *s != transport.local_addr())
            .collect();
        // With no seeds this starts a new mesh.
        membership.join(mb::Instant::from_duration(inner.now()), &seeds);

        let tasks = vec![
            tokio::spawn(incoming_loop(inner.clone(), incoming)),
            tokio::spawn(membership_loop(inner.clone(), membership, mb_rx)),
            tokio::spawn(sync_loop(
                inner.clone(),
                settings.sync.clone(),
                seed,
                sync_rx,
            )),
        ];
        tracing::info!(%addr, actor = %actor, "litemesh node started");
        Ok(Node {
            inner,
            tasks: Arc::new(Mutex::new(tasks)),
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

    /// The node's storage actor id.
    pub fn actor_id(&self) -> ActorId {
        self.inner.actor
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Runs the statements as one SQLite transaction (all or nothing). The
    /// changes are on disk when this returns, and on their way to the peers.
    pub async fn execute(&self, statements: Vec<Statement>) -> Result<Executed, Error> {
        if self.inner.closed() {
            return Err(Error::ShuttingDown);
        }
        let (rows_affected, version, db_version, batches, tables) = self
            .inner
            .with_writer(move |w| {
                let committed = w.transaction(|tx| {
                    let mut out = Vec::with_capacity(statements.len());
                    for st in &statements {
                        out.push(sql::execute(tx, st).map_err(|e| match e {
                            Error::Storage(s) => s,
                            other => litemesh_storage::StorageError::Decode(other.to_string()),
                        })?);
                    }
                    Ok(out)
                })?;
                // Committed: from here on nothing may turn into an error,
                // or the caller would take a durable write for a refused one.
                // The newest local version is this write's (when it wrote).
                let db_version = match committed.version {
                    Some(v) => v,
                    None => w.db_version()?,
                };
                let mut batches = Vec::new();
                let mut tables = BTreeSet::new();
                if let Some(v) = committed.version {
                    let mut total = 0;
                    let read = w.version_changes(v, BATCH_BYTES, |b| {
                        for vc in &b.versions {
                            for r in &vc.rows {
                                tables.insert(r.table.clone());
                            }
                        }
                        let bytes = encode_batch(&b, DEFAULT_MAX_WIRE_BYTES)?;
                        total += bytes.len();
                        if total <= MAX_BROADCAST_BYTES {
                            batches.push(bytes);
                        }
                        Ok(true)
                    });
                    if let Err(e) = read {
                        tracing::error!(
                            version = v,
                            "committed, but its changes cannot be broadcast: {e}; \
                             anti-entropy will offer them"
                        );
                        batches.clear();
                    }
                    if total > MAX_BROADCAST_BYTES {
                        batches.clear();
                    }
                }
                Ok((
                    committed.value,
                    committed.version,
                    db_version,
                    batches,
                    tables,
                ))
            })
            .await?;
        let token = match version {
            Some(v) => Token::new(self.inner.actor, v),
            None => Token::default(),
        };
        if version.is_some() {
            let _ = self.inner.changes.send(ChangeEvent {
                tables,
                local: true,
            });
            let _ = self.inner.sync_tx.send(SyncInput::LocalCommit(batches));
        }
        Ok(Executed {
            rows_affected,
            version: db_version,
            token,
        })
    }

    /// Runs a read-only statement. With `min_token`, first waits (up to
    /// `wait`) until this node has applied everything the token names.
    pub async fn query(
        &self,
        statement: Statement,
        min_token: Option<&Token>,
        wait: Duration,
    ) -> Result<QueryResult, Error> {
        if let Some(token) = min_token {
            self.wait_for(token, wait).await?;
        }
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let conn = inner.query.lock().unwrap_or_else(|e| e.into_inner());
            sql::query(&conn, &statement, MAX_QUERY_ROWS)
        })
        .await
        .map_err(|_| Error::ShuttingDown)?
    }

    /// Waits until this node holds every version `token` names.
    pub async fn wait_for(&self, token: &Token, wait: Duration) -> Result<(), Error> {
        let mut rx = self.inner.knowledge.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let missing = token.missing_in(&rx.borrow_and_update());
            let Some((actor, version)) = missing else {
                return Ok(());
            };
            let changed = tokio::time::timeout_at(deadline, rx.changed()).await;
            if !matches!(changed, Ok(Ok(()))) {
                return Err(Error::Lagging {
                    missing: format!("actor {actor}: version {version}"),
                    waited: wait,
                });
            }
        }
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
            .members
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// What this node holds and how far behind each peer it is.
    pub async fn status(&self) -> Result<Status, Error> {
        let k = self.inner.knowledge.borrow().clone();
        let (tx, rx) = oneshot::channel();
        let _ = self.inner.sync_tx.send(SyncInput::Status(tx));
        let (peers, queue, dropped) = rx.await.unwrap_or_default();
        let db_version = k
            .have
            .get(&self.inner.actor)
            .and_then(|r| r.max())
            .unwrap_or(0);
        let seen = self
            .inner
            .peer_knowledge
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let peers = peers
            .into_iter()
            .map(|p| {
                let (behind, ago) = match seen.get(&p.addr) {
                    Some((theirs, at)) => (lacking(&k, theirs), Some(at.elapsed().as_secs_f64())),
                    None => (0, None),
                };
                PeerStatus {
                    addr: p.addr,
                    behind_versions: behind,
                    last_sync_secs_ago: ago,
                    rtt_ms: p.rtt.map(|r| r.as_secs_f64() * 1000.0),
                }
            })
            .collect();
        Ok(Status {
            name: self.inner.name.clone(),
            actor: self.inner.actor.to_hex(),
            db_version,
            version_vector: k
                .heads()
                .into_iter()
                .map(|(a, v)| (a.to_hex(), v))
                .collect(),
            complete_through: k
                .have
                .iter()
                .map(|(a, r)| {
                    let n = match r.ranges().first() {
                        Some(&(1, end)) => end,
                        _ => 0,
                    };
                    (a.to_hex(), n)
                })
                .collect(),
            peers,
            broadcast_queue: queue,
            broadcast_dropped: dropped,
            changes_applied: self.inner.changes_applied.load(Ordering::Relaxed),
            syncs_completed: self.inner.syncs_completed.load(Ordering::Relaxed),
            syncs_failed: self.inner.syncs_failed.load(Ordering::Relaxed),
            partial_versions: k.partial.values().map(|m| m.len()).sum(),
        })
    }

    /// What this node holds.
    pub fn knowledge(&self) -> Knowledge {
        self.inner.knowledge.borrow().clone()
    }

    /// Leaves the mesh gracefully (members learn at once instead of detecting
    /// a failure), closes connections and stops the node's tasks.
    pub async fn shutdown(&self) {
        if self.inner.closed() {
            return;
        }
        let (tx, rx) = oneshot::channel();
        if self.inner.mb_tx.send(MbInput::Leave(tx)).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), rx).await;
        }
        self.inner.shutdown.send_replace(true);
        self.inner.transport.close().await;
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for t in tasks {
            t.abort();
        }
    }
}

/// Versions in `theirs` that `ours` lacks.
fn lacking(ours: &Knowledge, theirs: &Knowledge) -> u64 {
    theirs
        .have
        .iter()
        .map(|(a, r)| match ours.have.get(a) {
            Some(o) => r.difference(o).count(),
            None => r.count(),
        })
        .sum()
}

async fn incoming_loop(inner: Arc<Inner>, mut incoming: Incoming) {
    while let Some(ev) = incoming.recv().await {
        match ev {
            TEvent::Datagram { from, bytes } => {
                let _ = inner.mb_tx.send(MbInput::Message(from, bytes));
            }
            TEvent::Uni { from, bytes } => match bytes.first() {
                Some(&CH_MEMBERSHIP) => {
                    let _ = inner.mb_tx.send(MbInput::Message(from, bytes.slice(1..)));
                }
                Some(&CH_SYNC) => {
                    tokio::spawn(on_broadcast(inner.clone(), from, bytes.slice(1..)));
                }
                _ => tracing::warn!(%from, "unknown stream message refused"),
            },
            TEvent::Request {
                from,
                bytes,
                respond,
            } => {
                tokio::spawn(serve_sync(inner.clone(), from, bytes, respond));
            }
        }
    }
}

async fn on_broadcast(inner: Arc<Inner>, from: SocketAddr, bytes: Bytes) {
    let (hops, batch) = match litemesh_sync::decode(&bytes, DEFAULT_MAX_MESSAGE) {
        Ok(Message::Broadcast { hops, batch }) => (hops, batch),
        Ok(_) => return tracing::warn!(%from, "unexpected message on the broadcast channel"),
        Err(e) => return tracing::warn!(%from, "bad broadcast refused: {e}"),
    };
    let decoded = match decode_batch(&batch, DEFAULT_MAX_WIRE_BYTES) {
        Ok(b) => b,
        Err(e) => return tracing::warn!(%from, "bad change batch refused: {e}"),
    };
    let heads: Vec<(ActorId, u64)> = decoded
        .versions
        .iter()
        .map(|v| (v.actor, v.version))
        .collect();
    match inner.apply(vec![decoded]).await {
        Ok(newly) => {
            // A broadcast far ahead of what this node holds of its writer
            // means broadcasts were lost (a partition, one-way loss, an
            // overflowing queue): pull from the sender now rather than at the
            // next round. A few versions missing is ordinary reordering.
            let behind = {
                let k = inner.knowledge.borrow();
                heads
                    .iter()
                    .any(|(a, v)| missing_below(&k, a, *v) >= GAP_PULL_THRESHOLD)
            };
            if behind {
                let _ = inner.sync_tx.send(SyncInput::Behind(from));
            }
            let _ = inner.sync_tx.send(SyncInput::Broadcast {
                from,
                hops,
                batch,
                newly,
            });
        }
        Err(e) => tracing::warn!(%from, "applying a broadcast failed: {e}"),
    }
}

/// Versions of `actor` below `version` missing from `k` at which a broadcast
/// makes the node pull from its sender at once.
const GAP_PULL_THRESHOLD: u64 = 16;

/// How many of `actor`'s versions `1..version` `k` lacks.
fn missing_below(k: &Knowledge, actor: &ActorId, version: u64) -> u64 {
    let below = version.saturating_sub(1);
    let held: u64 = k.have.get(actor).map_or(0, |r| {
        r.ranges()
            .iter()
            .take_while(|(start, _)| *start <= below)
            .map(|(start, end)| (*end).min(below) - start + 1)
            .sum()
    });
    below - held.min(below)
}

/// Answers a reconciliation request: every batch the requester lacks, then
/// this node's knowledge.
async fn serve_sync(inner: Arc<Inner>, from: SocketAddr, bytes: Bytes, mut respond: Responder) {
    let theirs = match litemesh_sync::decode(&bytes, DEFAULT_MAX_MESSAGE) {
        Ok(Message::SyncRequest { knowledge }) => knowledge,
        Ok(_) | Err(_) => {
            tracing::warn!(%from, "bad sync request refused");
            respond.reject(1);
            return;
        }
    };
    let ours = inner.knowledge.borrow().clone();
    if !ours.covers(&theirs) {
        // The requester holds versions this node lacks: pull from it soon.
        let _ = inner.sync_tx.send(SyncInput::Urgent(from));
    }
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(4);
    let inner2 = inner.clone();
    let extract = tokio::task::spawn_blocking(move || -> Result<(), Error> {
        let mut r = inner2.reader.lock().unwrap_or_else(|e| e.into_inner());
        r.refresh()?;
        r.changes_since(&theirs, BATCH_BYTES, |b| {
            let batch = encode_batch(&b, DEFAULT_MAX_WIRE_BYTES)?;
            let msg = litemesh_sync::encode(&Message::SyncBatch { batch }, DEFAULT_MAX_MESSAGE)
                .map_err(|e| litemesh_storage::StorageError::Decode(e.to_string()))?;
            Ok(tx.blocking_send(msg).is_ok())
        })?;
        Ok(())
    });
    while let Some(frame) = rx.recv().await {
        if let Err(e) = respond.send(Bytes::from(frame)).await {
            tracing::debug!(%from, "sync response interrupted: {e}");
            return;
        }
    }
    match extract.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(%from, "serving sync failed: {e}");
            respond.reject(2);
            return;
        }
        Err(_) => return,
    }
    let done = Message::SyncDone {
        knowledge: inner.knowledge.borrow().clone(),
    };
    if let Ok(msg) = litemesh_sync::encode(&done, DEFAULT_MAX_MESSAGE)
        && respond.send(Bytes::from(msg)).await.is_ok()
    {
        let _ = respond.finish();
    }
}

/// One reconciliation with `peer`: send our knowledge, apply what comes back.
async fn run_sync(inner: Arc<Inner>, peer: SocketAddr) {
    let outcome = match sync_once(&inner, peer).await {
        Ok(has_more) => {
            inner.syncs_completed.fetch_add(1, Ordering::Relaxed);
            SyncOutcome::Completed {
                peer_has_more: has_more,
            }
        }
        Err(e) => {
            tracing::debug!(%peer, "sync failed: {e}");
            inner.syncs_failed.fetch_add(1, Ordering::Relaxed);
            SyncOutcome::Failed
        }
    };
    let _ = inner.sync_tx.send(SyncInput::Done(peer, outcome));
}

async fn sync_once(inner: &Arc<Inner>, peer: SocketAddr) -> Result<bool, Error> {
    let knowledge = inner.knowledge.borrow().clone();
    let req = litemesh_sync::encode(&Message::SyncRequest { knowledge }, DEFAULT_MAX_MESSAGE)
        .map_err(|e| Error::Settings(e.to_string()))?;
    let mut stream = inner.transport.request(peer, Bytes::from(req)).await?;
    let mut group = Vec::new();
    let mut group_bytes = 0;
    let mut theirs = None;
    let mut learned = false;
    while let Some(frame) = stream.next().await? {
        match litemesh_sync::decode(&frame, DEFAULT_MAX_MESSAGE) {
            Ok(Message::SyncBatch { batch }) => {
                group_bytes += batch.len();
                group.push(decode_batch(&batch, DEFAULT_MAX_WIRE_BYTES)?);
                if group_bytes >= APPLY_GROUP_BYTES {
                    learned |= inner.apply(std::mem::take(&mut group)).await?;
                    group_bytes = 0;
                }
            }
            Ok(Message::SyncDone { knowledge }) => theirs = Some(knowledge),
            Ok(_) => return Err(Error::Settings("unexpected sync message".into())),
            Err(e) => return Err(Error::Settings(e.to_string())),
        }
    }
    learned |= inner.apply(group).await?;
    let theirs =
        theirs.ok_or_else(|| Error::Settings("sync ended without its final frame".into()))?;
    let ours = inner.knowledge.borrow().clone();
    // Come back at once only if this exchange taught us something and the peer
    // still holds more (we were catching up); versions it committed meanwhile
    // arrive by broadcast or the next round.
    let has_more = learned && !ours.covers(&theirs);
    inner
        .peer_knowledge
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(peer, (theirs, tokio::time::Instant::now()));
    Ok(has_more)
}

async fn sync_loop(
    inner: Arc<Inner>,
    config: litemesh_sync::Config,
    seed: u64,
    mut rx: mpsc::UnboundedReceiver<SyncInput>,
) {
    let mut sched = Scheduler::new(config, seed);
    let mut shutdown = inner.shutdown.subscribe();
    loop {
        let now = inner.now();
        while let Some(t) = sched.poll_transmit(now) {
            inner.send_uni(t.to, CH_SYNC, &t.bytes);
        }
        while let Some(peer) = sched.poll_sync(now) {
            tokio::spawn(run_sync(inner.clone(), peer));
        }
        let wake = sched
            .poll_timeout(now)
            .map(|t| inner.epoch + t)
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(1));
        tokio::select! {
            msg = rx.recv() => {
                let Some(msg) = msg else { break };
                match msg {
                    SyncInput::PeerUp(a, rtt) => sched.peer_up(a, rtt),
                    SyncInput::PeerDown(a) => {
                        sched.peer_down(a);
                        inner.peer_knowledge.lock().unwrap_or_else(|e| e.into_inner()).remove(&a);
                    }
                    SyncInput::Rtt(a, rtt) => sched.set_rtt(a, rtt),
                    SyncInput::LocalCommit(batches) => {
                        for b in batches {
                            sched.on_local_commit(b);
                        }
                    }
                    SyncInput::Broadcast { from, hops, batch, newly } => sched.on_broadcast(from, hops, batch, newly),
                    SyncInput::Done(a, outcome) => sched.sync_done(inner.now(), a, outcome),
                    SyncInput::Urgent(a) => sched.mark_urgent(inner.now(), a),
                    SyncInput::Behind(a) => sched.pull_soon(inner.now(), a),
                    SyncInput::Status(tx) => {
                        let _ = tx.send((sched.peers(), sched.queue_len(), sched.dropped()));
                    }
                }
            }
            _ = tokio::time::sleep_until(wake) => {}
            _ = shutdown.changed() => break,
        }
    }
}

async fn membership_loop(
    inner: Arc<Inner>,
    mut m: mb::Membership,
    mut rx: mpsc::UnboundedReceiver<MbInput>,
) {
    let mut shutdown = inner.shutdown.subscribe();
    let mut leaving: Option<(oneshot::Sender<()>, tokio::time::Instant)> = None;
    let mut last_rtt_push = tokio::time::Instant::now();
    publish_members(&inner, &m, false);
    loop {
        // Outputs of the state machine.
        while let Some(t) = m.poll_transmit() {
            if t.reliable {
                inner.send_uni(t.dst, CH_MEMBERSHIP, &t.payload);
            } else {
                let tr = inner.transport.clone();
                tokio::spawn(async move {
                    if let Err(e) = tr.send_datagram(t.dst, Bytes::from(t.payload)).await {
                        tracing::trace!(to = %t.dst, "datagram not sent: {e}");
                    }
                });
            }
        }
        let mut changed = false;
        while let Some(ev) = m.poll_event() {
            changed = true;
            match ev {
                mb::Event::Joined(x) | mb::Event::Alive(x) => {
                    let _ = inner.sync_tx.send(SyncInput::PeerUp(x.addr, x.rtt));
                }
                mb::Event::Dead(x) | mb::Event::Left(x) => {
                    let _ = inner.sync_tx.send(SyncInput::PeerDown(x.addr));
                }
                mb::Event::Suspect(_) | mb::Event::MetadataChanged(_) => {}
            }
        }
        if changed || last_rtt_push.elapsed() > Duration::from_secs(1) {
            publish_members(&inner, &m, last_rtt_push.elapsed() > Duration::from_secs(1));
            last_rtt_push = tokio::time::Instant::now();
        }
        let leave_done = leaving.as_ref().is_some_and(|(_, deadline)| {
            m.leave_complete() || tokio::time::Instant::now() >= *deadline
        });
        if leave_done && let Some((tx, _)) = leaving.take() {
            let _ = tx.send(());
        }
        let wake = m
            .poll_timeout()
            .map(|t| inner.epoch + t.as_duration())
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(1))
            .min(tokio::time::Instant::now() + Duration::from_millis(200));
        tokio::select! {
            msg = rx.recv() => match msg {
                None => break,
                Some(MbInput::Message(from, bytes)) => {
                    let now = mb::Instant::from_duration(inner.now());
                    if let Err(e) = m.handle_message(now, from, &bytes) {
                        tracing::debug!(%from, "bad membership message refused: {e}");
                    }
                }
                Some(MbInput::Leave(tx)) => {
                    m.leave(mb::Instant::from_duration(inner.now()));
                    leaving = Some((tx, tokio::time::Instant::now() + Duration::from_millis(500)));
                }
            },
            _ = tokio::time::sleep_until(wake) => {
                m.handle_timeout(mb::Instant::from_duration(inner.now()));
            }
            _ = shutdown.changed() => break,
        }
    }
}

fn publish_members(inner: &Arc<Inner>, m: &mb::Membership, push_rtt: bool) {
    let mut out = Vec::new();
    let local = m.local_member();
    for x in std::iter::once(local).chain(m.members().filter(|x| x.identity != local.identity)) {
        let meta: Option<NodeMeta> = rmp_serde::from_slice(x.metadata.as_bytes()).ok();
        let state = match x.state {
            mb::MemberState::Alive => "alive",
            mb::MemberState::Suspect => "suspect",
            mb::MemberState::Dead => "dead",
            mb::MemberState::Left => "left",
        };
        if push_rtt
            && x.identity != local.identity
            && x.state == mb::MemberState::Alive
            && let Some(rtt) = x.rtt
        {
            let _ = inner.sync_tx.send(SyncInput::Rtt(x.addr, rtt));
        }
        out.push(MemberInfo {
            name: meta
                .as_ref()
                .map(|m| m.name.clone())
                .unwrap_or_else(|| x.identity.id.to_string()),
            addr: x.addr,
            region: meta.as_ref().and_then(|m| m.region.clone()),
            state: state.to_string(),
            incarnation: x.incarnation,
            rtt_ms: x.rtt.map(|r| r.as_secs_f64() * 1000.0),
            actor: meta.as_ref().map(|m| m.actor.clone()),
            api: meta.and_then(|m| m.api),
        });
    }
    *inner.members.lock().unwrap_or_else(|e| e.into_inner()) = out;
}

#[cfg(test)]
mod tests {
    use super::*;
    use litemesh_storage::RangeSet;

    #[test]
    fn missing_below_counts_the_holes_under_a_version() {
        let a = ActorId([1; 16]);
        let b = ActorId([2; 16]);
        let mut k = Knowledge::default();
        k.have
            .insert(a, RangeSet::from_ranges([(1, 10), (20, 30), (40, 40)]));
        assert_eq!(missing_below(&k, &a, 11), 0, "1..=10 held");
        assert_eq!(missing_below(&k, &a, 1), 0);
        assert_eq!(missing_below(&k, &a, 15), 4, "11..=14");
        assert_eq!(missing_below(&k, &a, 25), 9, "11..=19");
        assert_eq!(missing_below(&k, &a, 41), 9 + 9, "11..=19 and 31..=39");
        assert_eq!(missing_below(&k, &a, 100), 9 + 9 + 59);
        assert_eq!(missing_below(&k, &b, 17), 16, "nothing of b held");
    }
}
