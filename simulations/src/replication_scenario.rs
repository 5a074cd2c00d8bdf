//! Data replication through the simulated network: real storage engines
//! (`litemesh-storage`, one SQLite file per node) and the real sync scheduler
//! (`litemesh-sync`) exchanging the real sync messages, with simulated time,
//! loss and partitions — reproducible from a seed.
//!
//! Broadcasts travel as lossy messages (so anti-entropy has gaps to repair);
//! reconciliation messages travel as reliable ones (a QUIC stream), cut by
//! partitions. Peers are a static list (membership is simulated on its own in
//! [`crate::membership_scenario`]).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use litemesh_proto::{
    ActorId, ChangeBatch, Knowledge, Message, decode, decode_batch, encode, encode_batch,
};
use litemesh_storage::{Store, StoreOptions};
use litemesh_sync::{Config as SyncConfig, Scheduler, SyncOutcome};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::network::{LinkConfig, Network, Outgoing, SimNode};

const SCHEMA: &str = "CREATE TABLE kv (k TEXT PRIMARY KEY, v INTEGER, writer TEXT)";
const MAX: usize = 8 * 1024 * 1024;
const SESSION_TIMEOUT: Duration = Duration::from_secs(5);

/// Kinds of payload on the simulated wire.
const BROADCAST: u8 = 1;
const SYNC: u8 = 2;

/// A replica: a storage engine plus the sync scheduler.
pub struct Replica {
    name: String,
    store: Store,
    sched: Scheduler,
    outbox: VecDeque<Outgoing>,
    rng: ChaCha8Rng,
    /// Time of the next local write, if writing.
    next_write: Option<Duration>,
    write_interval: Duration,
    keys: u32,
    writes: u64,
    /// Running reconciliations: peer → deadline.
    sessions: Vec<(SocketAddr, Duration)>,
    now: Duration,
}

impl Replica {
    /// A replica storing its file at `path`, knowing `peers`.
    pub fn new(path: &std::path::Path, name: &str, peers: &[SocketAddr], seed: u64) -> Replica {
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
        let mut sched = Scheduler::new(SyncConfig::default(), seed);
        for p in peers {
            sched.peer_up(*p, None);
        }
        Replica {
            name: name.to_owned(),
            store,
            sched,
            outbox: VecDeque::new(),
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0xabcdef),
            next_write: None,
            write_interval: Duration::from_millis(200),
            keys: 50,
            writes: 0,
            sessions: Vec::new(),
            now: Duration::ZERO,
        }
    }

    /// Starts (or stops) writing one row every `interval` on average.
    pub fn set_writing(&mut self, now: Duration, interval: Option<Duration>) {
        match interval {
            Some(i) => {
                self.write_interval = i;
                self.next_write = Some(now + i);
            }
            None => self.next_write = None,
        }
    }

    /// Local writes committed so far.
    pub fn writes(&self) -> u64 {
        self.writes
    }

    /// All rows, sorted.
    pub fn dump(&self) -> Vec<(String, i64, String)> {
        let mut st = self
            .store
            .connection()
            .prepare("SELECT k, v, writer FROM kv ORDER BY k")
            .expect("query");
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .expect("rows")
            .collect::<Result<_, _>>()
            .expect("rows")
    }

    /// What the replica holds.
    pub fn knowledge(&self) -> Knowledge {
        self.store.knowledge().expect("knowledge")
    }

    fn send(&mut self, dst: SocketAddr, kind: u8, msg: &Message, reliable: bool) {
        let Ok(bytes) = encode(msg, MAX) else { return };
        let mut payload = Vec::with_capacity(bytes.len() + 1);
        payload.push(kind);
        payload.extend_from_slice(&bytes);
        self.outbox.push_back(Outgoing {
            dst,
            payload,
            reliable,
        });
    }

    fn write(&mut self) {
        let key = self.rng.random_range(0..self.keys);
        let v: i64 = self.rng.random_range(0..1_000_000);
        let name = self.name.clone();
        let committed = self
            .store
            .transaction(|tx| {
                tx.execute(
                    "INSERT INTO kv VALUES (?1, ?2, ?3) ON CONFLICT(k) DO UPDATE SET v = excluded.v, writer = excluded.writer",
                    (format!("k{key:03}"), v, &name),
                )?;
                Ok(())
            })
            .expect("local write");
        self.writes += 1;
        if let Some(version) = committed.version {
            let mut batches: Vec<ChangeBatch> = Vec::new();
            self.store
                .version_changes(version, 256 * 1024, |b| {
                    batches.push(b);
                    Ok(true)
                })
                .expect("extract");
            for b in batches {
                if let Ok(bytes) = encode_batch(&b, MAX) {
                    self.sched.on_local_commit(bytes);
                }
            }
        }
    }

    fn drive(&mut self, now: Duration) {
        self.now = now;
        // Sessions that never finished (lost to a partition) fail.
        let expired: Vec<SocketAddr> = self
            .sessions
            .iter()
            .filter(|(_, d)| *d <= now)
            .map(|(p, _)| *p)
            .collect();
        for p in expired {
            self.sessions.retain(|(x, _)| *x != p);
            self.sched.sync_done(now, p, SyncOutcome::Failed);
        }
        while let Some(t) = self.sched.poll_transmit(now) {
            let mut payload = Vec::with_capacity(t.bytes.len() + 1);
            payload.push(BROADCAST);
            payload.extend_from_slice(&t.bytes);
            self.outbox.push_back(Outgoing {
                dst: t.to,
                payload,
                reliable: false,
            });
        }
        while let Some(peer) = self.sched.poll_sync(now) {
            let k = self.knowledge();
            self.send(peer, SYNC, &Message::SyncRequest { knowledge: k }, true);
            self.sessions.push((peer, now + SESSION_TIMEOUT));
        }
    }
}

impl SimNode for Replica {
    fn on_message(&mut self, now: Duration, from: SocketAddr, payload: &[u8]) {
        self.now = now;
        let Some((&kind, body)) = payload.split_first() else {
            return;
        };
        let Ok(msg) = decode(body, MAX) else { return };
        match (kind, msg) {
            (BROADCAST, Message::Broadcast { hops, batch }) => {
                let Ok(b) = decode_batch(&batch, MAX) else {
                    return;
                };
                let newly = self
                    .store
                    .apply(&b)
                    .map(|r| r.versions_applied > 0 || r.chunks_buffered > 0)
                    .unwrap_or(false);
                self.sched.on_broadcast(from, hops, batch, newly);
            }
            (SYNC, Message::SyncRequest { knowledge }) => {
                let ours = self.knowledge();
                if !ours.covers(&knowledge) {
                    self.sched.mark_urgent(now, from);
                }
                let mut frames = Vec::new();
                self.store
                    .changes_since(&knowledge, 256 * 1024, |b| {
                        frames.push(encode_batch(&b, MAX)?);
                        Ok(true)
                    })
                    .expect("extract");
                for batch in frames {
                    self.send(from, SYNC, &Message::SyncBatch { batch }, true);
                }
                self.send(from, SYNC, &Message::SyncDone { knowledge: ours }, true);
            }
            (SYNC, Message::SyncBatch { batch }) => {
                if let Ok(b) = decode_batch(&batch, MAX) {
                    self.store.apply(&b).expect("apply");
                }
            }
            (SYNC, Message::SyncDone { knowledge })
                if self.sessions.iter().any(|(p, _)| *p == from) =>
            {
                self.sessions.retain(|(p, _)| *p != from);
                let has_more = !self.knowledge().covers(&knowledge);
                self.sched.sync_done(
                    now,
                    from,
                    SyncOutcome::Completed {
                        peer_has_more: has_more,
                    },
                );
            }
            _ => {}
        }
        self.drive(now);
    }

    fn on_timeout(&mut self, now: Duration) {
        if let Some(t) = self.next_write
            && t <= now
        {
            self.write();
            let jitter = self.rng.random_range(0.5..1.5);
            self.next_write = Some(now + self.write_interval.mul_f64(jitter));
        }
        self.drive(now);
    }

    fn poll_transmit(&mut self) -> Option<Outgoing> {
        self.outbox.pop_front()
    }

    fn next_timeout(&self) -> Option<Duration> {
        let mut t = self.sched.poll_timeout(self.now);
        for d in self
            .next_write
            .iter()
            .chain(self.sessions.iter().map(|(_, d)| d))
        {
            t = Some(t.map_or(*d, |x: Duration| x.min(*d)));
        }
        t
    }
}

/// Parameters of a replication run.
#[derive(Debug, Clone)]
pub struct ReplicationParams {
    /// Replicas.
    pub nodes: usize,
    /// Loss of lossy messages (broadcasts).
    pub loss: f64,
    /// Seed of everything.
    pub seed: u64,
    /// Time writing before the partition.
    pub warmup: Duration,
    /// Length of a half/half partition during which both sides keep writing.
    pub partition: Duration,
    /// Mean time between writes on each node.
    pub write_interval: Duration,
}

impl Default for ReplicationParams {
    fn default() -> Self {
        ReplicationParams {
            nodes: 5,
            loss: 0.1,
            seed: 1,
            warmup: Duration::from_secs(10),
            partition: Duration::from_secs(60),
            write_interval: Duration::from_millis(500),
        }
    }
}

/// What a replication run observed.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicationReport {
    /// Writes committed on all nodes.
    pub writes: u64,
    /// Simulated time from healing (and stopping writes) until every replica
    /// held the same content; `None` if not within the run.
    pub converge_after_heal: Option<Duration>,
    /// The converged content (equal on all replicas), for determinism checks.
    pub content: Vec<(String, i64, String)>,
    /// Messages delivered and dropped by the network.
    pub messages: (u64, u64),
}

/// Runs: write everywhere, partition half/half while writing, heal and stop
/// writing, then measure the time until all replicas are identical.
pub fn run(params: &ReplicationParams, dir: &std::path::Path) -> ReplicationReport {
    let mut link = LinkConfig::three_regions(params.loss);
    link.jitter = 0.2;
    let mut net: Network<Replica> = Network::new(link, params.seed);
    let addrs: Vec<SocketAddr> = (0..params.nodes)
        .map(|i| SocketAddr::from(([10, 1, (i / 250) as u8, (i % 250) as u8 + 1], 7000)))
        .collect();
    for (i, addr) in addrs.iter().enumerate() {
        let peers: Vec<SocketAddr> = addrs.iter().copied().filter(|a| a != addr).collect();
        let r = Replica::new(
            &dir.join(format!("r{i}.db")),
            &format!("r{i}"),
            &peers,
            params.seed.wrapping_mul(1_000_003).wrapping_add(i as u64),
        );
        net.add_node(*addr, i % 3, r);
    }
    for i in 0..params.nodes {
        let w = params.write_interval;
        net.with_node(i, |r, now| r.set_writing(now, Some(w)));
    }
    let mut t = params.warmup;
    net.run_until(t);
    let groups: Vec<u32> = (0..params.nodes)
        .map(|i| u32::from(i >= params.nodes / 2))
        .collect();
    net.partition(groups);
    t += params.partition;
    net.run_until(t);
    net.heal();
    for i in 0..params.nodes {
        net.with_node(i, |r, now| r.set_writing(now, None));
    }
    let healed = t;
    let mut converged = None;
    let limit = healed + Duration::from_secs(120);
    while t < limit {
        t += Duration::from_millis(50);
        net.run_until(t);
        let first = net.node(0).dump();
        if (1..params.nodes).all(|i| net.node(i).dump() == first) {
            converged = Some(t - healed);
            break;
        }
    }
    let writes = (0..params.nodes).map(|i| net.node(i).writes()).sum();
    ReplicationReport {
        writes,
        converge_after_heal: converged,
        content: net.node(0).dump(),
        messages: net.totals(),
    }
}
