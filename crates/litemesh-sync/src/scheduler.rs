//! The sans-IO scheduler: broadcast fan-out and relays, the send queue and its
//! rate limit, and the choice of anti-entropy peers.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use litemesh_proto::Knowledge;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use litemesh_proto::{DEFAULT_MAX_MESSAGE, Message, channel, encode};

/// Tuning of the scheduler.
#[derive(Debug, Clone)]
pub struct Config {
    /// A fresh local commit goes directly to this many peers, nearest by
    /// round-trip time first (all of them in a mesh this small or smaller).
    pub direct_fanout: usize,
    /// Further random peers a fresh commit goes to, and peers a relay goes to.
    pub fanout: usize,
    /// How many times a broadcast may be relayed.
    pub relay_hops: u8,
    /// Mean time between anti-entropy rounds (jittered ±25%).
    pub sync_interval: Duration,
    /// Reconciliations running at once, at most.
    pub max_concurrent_syncs: usize,
    /// Wait before retrying a peer whose sync failed.
    pub sync_retry: Duration,
    /// Byte rate of broadcast sends (token bucket, one second of burst).
    pub rate_limit_bytes_per_s: u64,
    /// Broadcast messages queued at most; the oldest is dropped beyond.
    pub queue_limit: usize,
    /// Bytes of changes per batch extracted for a peer (one response frame).
    pub batch_bytes: usize,
    /// Batches received in a reconciliation are applied in groups of about
    /// this many bytes, one SQLite transaction each.
    pub apply_group_bytes: usize,
    /// A local commit whose changes encode to more than this is not
    /// broadcast; anti-entropy carries it.
    pub max_broadcast_bytes: usize,
    /// A broadcast showing at least this many versions of its writer missing
    /// below it makes the node pull from its sender at once (lost broadcasts).
    pub gap_pull_threshold: u64,
    /// A reconciliation that receives nothing for this long fails (time
    /// spent waiting for this node's own applies does not count).
    pub session_timeout: Duration,
    /// A peer showing versions of this node's own actor beyond its file makes
    /// the node move to a new actor id, at most this often.
    pub rotate_at_most_every: Duration,
    /// Largest sync message accepted or sent.
    pub max_message: usize,
    /// Region-aware dissemination: a fresh commit goes to the
    /// `direct_fanout` nearest peers of this node's region (plus `fanout`
    /// random others of it) and to `entries_per_region` peers of each
    /// other region, which fan it out inside theirs; relays stay inside the
    /// relaying node's region; anti-entropy picks a peer of another region
    /// once in `cross_region_sync_every` rounds. Off: every peer is treated
    /// alike, whatever its region.
    pub region_aware: bool,
    /// Entry nodes a fresh commit is sent to in each other region.
    pub entries_per_region: usize,
    /// One anti-entropy round in this many goes to a peer of another region
    /// (when there are both kinds); the others stay in this node's region.
    pub cross_region_sync_every: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            direct_fanout: 32,
            fanout: 3,
            relay_hops: 4,
            sync_interval: Duration::from_secs(2),
            max_concurrent_syncs: 2,
            sync_retry: Duration::from_millis(500),
            rate_limit_bytes_per_s: 16 * 1024 * 1024,
            queue_limit: 4096,
            batch_bytes: 256 * 1024,
            apply_group_bytes: 4 * 1024 * 1024,
            max_broadcast_bytes: 1024 * 1024,
            gap_pull_threshold: 16,
            session_timeout: Duration::from_secs(30),
            rotate_at_most_every: Duration::from_secs(60),
            max_message: DEFAULT_MAX_MESSAGE,
            region_aware: true,
            entries_per_region: 2,
            cross_region_sync_every: 4,
        }
    }
}

/// A broadcast message to send on a unidirectional stream.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The peer.
    pub to: SocketAddr,
    /// The channel tag [`channel::SYNC`], then the encoded
    /// [`Message::Broadcast`].
    pub bytes: Arc<[u8]>,
}

/// How a reconciliation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncOutcome {
    /// Completed; `peer_has_more` when the peer stopped early (byte budget) or
    /// its final knowledge shows versions this node still lacks.
    Completed {
        /// Whether to come back to this peer at once.
        peer_has_more: bool,
    },
    /// The connection or the peer failed.
    Failed,
}

/// What the scheduler knows of a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    /// The peer's address.
    pub addr: SocketAddr,
    /// Whether membership holds it alive (a peer that went down is kept,
    /// with what was known of it, until it comes back).
    pub up: bool,
    /// What it held at the end of the last reconciliation with it, and when
    /// that was.
    pub knowledge: Option<(Knowledge, Duration)>,
    /// Round-trip time estimate.
    pub rtt: Option<Duration>,
    /// When the last reconciliation with it completed.
    pub last_sync: Option<Duration>,
    /// Whether a reconciliation with it is running.
    pub syncing: bool,
}

#[derive(Debug, Clone)]
struct Peer {
    /// Its region, as its membership metadata says.
    region: Option<String>,
    up: bool,
    knowledge: Option<(Knowledge, Duration)>,
    rtt: Option<Duration>,
    last_sync: Option<Duration>,
    urgent: bool,
    syncing: bool,
    retry_at: Duration,
}

/// The scheduler. Time is a `Duration` since any fixed origin chosen by the
/// driver; randomness comes from the seed.
#[derive(Debug)]
pub struct Scheduler {
    config: Config,
    rng: ChaCha8Rng,
    peers: BTreeMap<SocketAddr, Peer>,
    next_round: Duration,
    queue: VecDeque<Outgoing>,
    tokens: f64,
    last_refill: Duration,
    dropped: u64,
    /// This node's region.
    region: Option<String>,
    /// Anti-entropy rounds chosen so far (every `cross_region_sync_every`th
    /// goes across regions).
    rounds: u32,
}

impl Scheduler {
    /// A scheduler with no peers.
    pub fn new(config: Config, seed: u64) -> Scheduler {
        let tokens = config.rate_limit_bytes_per_s as f64;
        Scheduler {
            config,
            rng: ChaCha8Rng::seed_from_u64(seed),
            peers: BTreeMap::new(),
            next_round: Duration::ZERO,
            queue: VecDeque::new(),
            tokens,
            last_refill: Duration::ZERO,
            dropped: 0,
            region: None,
            rounds: 0,
        }
    }

    /// Sets this node's region.
    pub fn set_region(&mut self, region: Option<String>) {
        self.region = region;
    }

    /// A peer's region, as its membership metadata gives it.
    pub fn peer_region(&self, addr: SocketAddr) -> Option<String> {
        self.peers.get(&addr).and_then(|p| p.region.clone())
    }

    /// Sets a peer's region (from its membership metadata).
    pub fn set_peer_region(&mut self, addr: SocketAddr, region: Option<String>) {
        if let Some(p) = self.peers.get_mut(&addr) {
            p.region = region;
        }
    }

    /// Whether dissemination goes by region: it is on, and some peer is in
    /// another region than this node.
    fn by_region(&self) -> bool {
        self.config.region_aware && self.peers.values().any(|p| p.region != self.region)
    }

    /// Whether `addr` is in another region than this node. A sender this
    /// node does not know (it just joined, or sends from another address
    /// than the one it advertises) counts as remote: its broadcast is fanned
    /// out here rather than dropped (fan-out stays bounded: only a node
    /// that learns something passes it on).
    fn is_remote(&self, addr: &SocketAddr) -> bool {
        self.peers.get(addr).is_none_or(|p| p.region != self.region)
    }

    /// A peer is alive (joined, or came back after a failure or a partition):
    /// reconcile with it at once.
    pub fn peer_up(&mut self, addr: SocketAddr, rtt: Option<Duration>) {
        let p = self.peers.entry(addr).or_insert(Peer {
            region: None,
            up: true,
            knowledge: None,
            rtt,
            last_sync: None,
            urgent: true,
            syncing: false,
            retry_at: Duration::ZERO,
        });
        p.up = true;
        p.urgent = true;
        p.retry_at = Duration::ZERO;
        if rtt.is_some() {
            p.rtt = rtt;
        }
    }

    /// A peer is gone (dead, left, or unreachable): nothing is sent to it
    /// and it is not chosen for reconciliation until it comes back; what was
    /// known of it stays.
    pub fn peer_down(&mut self, addr: SocketAddr) {
        if let Some(p) = self.peers.get_mut(&addr) {
            p.up = false;
            p.urgent = false;
        }
        self.queue.retain(|t| t.to != addr);
    }

    /// Forgets a peer altogether (it left the mesh for good).
    pub fn forget(&mut self, addr: SocketAddr) {
        self.peers.remove(&addr);
        self.queue.retain(|t| t.to != addr);
    }

    /// Records what `addr` held at the end of a reconciliation.
    pub fn set_knowledge(&mut self, now: Duration, addr: SocketAddr, k: Knowledge) {
        if let Some(p) = self.peers.get_mut(&addr) {
            p.knowledge = Some((k, now));
        }
    }

    /// Whether `addr` is a peer that membership holds alive.
    pub fn is_up(&self, addr: &SocketAddr) -> bool {
        self.peers.get(addr).is_some_and(|p| p.up)
    }

    /// Updates a peer's round-trip time.
    pub fn set_rtt(&mut self, addr: SocketAddr, rtt: Duration) {
        if let Some(p) = self.peers.get_mut(&addr) {
            p.rtt = Some(rtt);
        }
    }

    /// Reconcile with `addr` as soon as possible (e.g. it showed versions this
    /// node lacks) — unless a reconciliation with it completed in the last
    /// quarter interval: under a steady stream of writes a peer almost always
    /// holds something still in flight, which broadcast or the next round
    /// brings, and reacting to each would keep every pair syncing.
    pub fn mark_urgent(&mut self, now: Duration, addr: SocketAddr) {
        let recent = self.config.sync_interval / 4;
        if let Some(p) = self.peers.get_mut(&addr) {
            let fresh = p.last_sync.is_some_and(|t| now.saturating_sub(t) < recent);
            if !fresh {
                p.urgent = true;
            }
        }
    }

    /// A broadcast from `addr` showed that broadcasts were lost (it is far
    /// ahead of what this node holds of its writer): reconcile with it soon,
    /// unless a reconciliation is already running or pending, which is most
    /// likely repairing the same gap. (While a node catches up, every
    /// broadcast it receives shows a gap; pulling from each sender would
    /// fetch the same backlog several times.)
    pub fn pull_soon(&mut self, now: Duration, addr: SocketAddr) {
        if self.peers.values().any(|p| p.syncing || (p.up && p.urgent)) {
            return;
        }
        self.mark_urgent(now, addr);
    }

    /// The known peers.
    pub fn peers(&self) -> Vec<PeerStatus> {
        self.peers
            .iter()
            .map(|(a, p)| PeerStatus {
                addr: *a,
                up: p.up,
                knowledge: p.knowledge.clone(),
                rtt: p.rtt,
                last_sync: p.last_sync,
                syncing: p.syncing,
            })
            .collect()
    }

    /// Broadcast messages waiting for the rate limit.
    pub fn queue_len(&self) -> usize {
        self.queue.len()
    }

    /// Broadcast messages dropped because the queue overflowed.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// A local transaction committed: send its encoded batch to the
    /// `direct_fanout` nearest peers (every peer of a mesh of up to
    /// `direct_fanout + 1` nodes) and `fanout` random others. When every
    /// peer this node knows is up and among the direct targets, the message
    /// goes with no hops left: nobody relays it (relays would only bring
    /// every node copies of what it already has). Otherwise — a larger
    /// mesh, or a peer down in this node's view that others may still
    /// reach — receivers relay it, up to `relay_hops` times.
    pub fn on_local_commit(&mut self, batch: Vec<u8>) {
        if self.by_region() {
            let (targets, hops) = self.region_targets(None);
            self.enqueue(targets, hops, batch);
            return;
        }
        // The nearest peers directly (every peer of a small mesh), plus a few
        // random ones to seed the relays across regions.
        let peers: Vec<(SocketAddr, Option<Duration>)> = self
            .peers
            .iter()
            .filter(|(_, p)| p.up)
            .map(|(a, p)| (*a, p.rtt))
            .collect();
        let all_up = self.peers.values().all(|p| p.up);
        let (targets, hops) = self.fan_out(peers, all_up);
        self.enqueue(targets, hops, batch);
    }

    /// The `direct_fanout` nearest of `peers`, plus `fanout` random others,
    /// and the hops the message carries: 0 when that reaches every one of
    /// them and every peer they stand for is up (`all_up`: nobody needs a
    /// relay), else `relay_hops` (with a peer down in this node's view — a
    /// fault, a node gone but not yet forgotten — others that still reach
    /// it relay).
    fn fan_out(
        &mut self,
        mut peers: Vec<(SocketAddr, Option<Duration>)>,
        all_up: bool,
    ) -> (Vec<SocketAddr>, u8) {
        peers.shuffle(&mut self.rng);
        peers.sort_by_key(|(_, rtt)| rtt.unwrap_or(Duration::MAX));
        let direct = self.config.direct_fanout.min(peers.len());
        let mut targets: Vec<SocketAddr> = peers[..direct].iter().map(|p| p.0).collect();
        let mut rest: Vec<SocketAddr> = peers[direct..].iter().map(|p| p.0).collect();
        rest.shuffle(&mut self.rng);
        let hops = if rest.is_empty() && all_up {
            0
        } else {
            self.config.relay_hops
        };
        targets.extend(rest.into_iter().take(self.config.fanout));
        (targets, hops)
    }

    /// Region-aware targets of a fresh commit (`from` = `None`) or of a
    /// broadcast that entered this node's region from `from`: the
    /// `direct_fanout` nearest peers of this node's region (plus `fanout`
    /// random others of it beyond those), and, for a fresh commit only,
    /// `entries_per_region` peers of every other region, nearest first. The
    /// hops: 0 when every peer of the region is up and reached directly,
    /// else `relay_hops` (relays stay in the region).
    fn region_targets(&mut self, from: Option<SocketAddr>) -> (Vec<SocketAddr>, u8) {
        let own = self.region.clone();
        let mut local: Vec<(SocketAddr, Option<Duration>)> = Vec::new();
        let mut remote: BTreeMap<Option<String>, Vec<(SocketAddr, Option<Duration>)>> =
            BTreeMap::new();
        for (a, p) in &self.peers {
            if !p.up || Some(*a) == from {
                continue;
            }
            if p.region == own {
                local.push((*a, p.rtt));
            } else {
                remote
                    .entry(p.region.clone())
                    .or_default()
                    .push((*a, p.rtt));
            }
        }
        let all_local_up = self
            .peers
            .iter()
            .filter(|(a, p)| p.region == own && Some(**a) != from)
            .all(|(_, p)| p.up);
        let (mut targets, hops) = self.fan_out(local, all_local_up);
        if from.is_none() {
            for (_, mut peers) in remote {
                peers.shuffle(&mut self.rng);
                peers.sort_by_key(|(_, rtt)| rtt.unwrap_or(Duration::MAX));
                targets.extend(
                    peers
                        .iter()
                        .take(self.config.entries_per_region)
                        .map(|p| p.0),
                );
            }
        }
        (targets, hops)
    }

    /// A broadcast arrived from `from`. When it taught this node something
    /// (`newly_applied`) and may travel further, relay it to other peers.
    pub fn on_broadcast(
        &mut self,
        from: SocketAddr,
        hops: u8,
        batch: Vec<u8>,
        newly_applied: bool,
    ) {
        if !newly_applied {
            return;
        }
        if self.by_region() {
            if self.is_remote(&from) {
                // It entered this node's region here: fan out inside it, as
                // its writer would.
                let (targets, hops) = self.region_targets(Some(from));
                self.enqueue(targets, hops, batch);
                return;
            }
            if hops == 0 {
                return;
            }
            // Relays stay inside the region.
            let targets = self.targets(Some(from), true);
            self.enqueue(targets, hops - 1, batch);
            return;
        }
        if hops == 0 {
            return;
        }
        let targets = self.targets(Some(from), false);
        self.enqueue(targets, hops - 1, batch);
    }

    /// Relay targets: half the fan-out to the nearest peers, the rest at random.
    fn targets(&mut self, exclude: Option<SocketAddr>, in_region: bool) -> Vec<SocketAddr> {
        let own = self.region.clone();
        let mut peers: Vec<(SocketAddr, Option<Duration>)> = self
            .peers
            .iter()
            .filter(|(a, p)| p.up && Some(**a) != exclude && (!in_region || p.region == own))
            .map(|(a, p)| (*a, p.rtt))
            .collect();
        peers.shuffle(&mut self.rng);
        // At least ln(candidates) + 2 targets: a relay that reaches a node
        // for the first time is the only one that sends on, so with a fan-out
        // of k about e^-k of the candidates are missed and left to
        // anti-entropy (5% with 3); ln(n) + 2 leaves well under one node.
        let adaptive = (peers.len().max(1) as f64).ln().ceil() as usize + 2;
        let n = self.config.fanout.max(adaptive).min(peers.len());
        // Half the fan-out to the nearest peers (fast local spread), the rest at
        // random (reach across regions). Inside a region all at random: the
        // round-trip times differ little there, and the nearest are the
        // peers every sender picks (they were the writer's direct targets
        // already), so a bias towards them leaves the others to
        // anti-entropy.
        let nearest = if in_region { 0 } else { n.div_ceil(2) };
        peers.sort_by_key(|(_, rtt)| rtt.unwrap_or(Duration::MAX));
        let mut out: Vec<SocketAddr> = peers.iter().take(nearest).map(|p| p.0).collect();
        let mut rest: Vec<SocketAddr> = peers.iter().skip(nearest).map(|p| p.0).collect();
        rest.shuffle(&mut self.rng);
        out.extend(rest.into_iter().take(n - nearest));
        out
    }

    fn enqueue(&mut self, targets: Vec<SocketAddr>, hops: u8, batch: Vec<u8>) {
        if targets.is_empty() {
            return;
        }
        let Ok(message) = encode(&Message::Broadcast { hops, batch }, self.config.max_message)
        else {
            // Too large to broadcast: anti-entropy carries it.
            return;
        };
        let mut bytes = Vec::with_capacity(message.len() + 1);
        bytes.push(channel::SYNC);
        bytes.extend_from_slice(&message);
        let bytes: Arc<[u8]> = bytes.into();
        for to in targets {
            self.queue.push_back(Outgoing {
                to,
                bytes: bytes.clone(),
            });
        }
        while self.queue.len() > self.config.queue_limit {
            self.queue.pop_front();
            self.dropped += 1;
        }
    }

    fn refill(&mut self, now: Duration) {
        let burst = self.config.rate_limit_bytes_per_s as f64;
        let dt = now.saturating_sub(self.last_refill).as_secs_f64();
        self.tokens = (self.tokens + dt * burst).min(burst);
        self.last_refill = self.last_refill.max(now);
    }

    /// The next broadcast message to send now, if the rate limit allows.
    pub fn poll_transmit(&mut self, now: Duration) -> Option<Outgoing> {
        self.refill(now);
        let burst = self.config.rate_limit_bytes_per_s as f64;
        let size = self.queue.front()?.bytes.len() as f64;
        // A message larger than the whole burst goes when the bucket is full.
        if size <= self.tokens || self.tokens >= burst {
            self.tokens -= size;
            return self.queue.pop_front();
        }
        None
    }

    /// The peer to reconcile with now, if any. The caller runs the exchange and
    /// reports with [`Scheduler::sync_done`].
    pub fn poll_sync(&mut self, now: Duration) -> Option<SocketAddr> {
        let running = self.peers.values().filter(|p| p.syncing).count();
        if running >= self.config.max_concurrent_syncs {
            return None;
        }
        let ready = |p: &Peer| p.up && !p.syncing && p.retry_at <= now;
        // Urgent peers first, nearest first.
        let urgent = self
            .peers
            .iter()
            .filter(|(_, p)| p.urgent && ready(p))
            .min_by_key(|(_, p)| p.rtt.unwrap_or(Duration::MAX))
            .map(|(a, _)| *a);
        let chosen = match urgent {
            Some(a) => Some(a),
            None if now >= self.next_round => {
                let jitter = self.rng.random_range(0.75..1.25);
                self.next_round = now + self.config.sync_interval.mul_f64(jitter);
                self.pick_by_need(now)
            }
            None => None,
        };
        let addr = chosen?;
        let p = self.peers.get_mut(&addr)?;
        p.urgent = false;
        p.syncing = true;
        Some(addr)
    }

    /// Weighted choice: peers not synced for long weigh more, distant ones less.
    fn pick_by_need(&mut self, now: Duration) -> Option<SocketAddr> {
        // Region-aware: most rounds stay in this node's region, one in
        // `cross_region_sync_every` goes to another (so a region cut off from
        // a writer still converges through any path). Without a candidate of
        // the preferred kind, any peer will do.
        self.rounds = self.rounds.wrapping_add(1);
        let prefer = if self.by_region() {
            let cross = self
                .rounds
                .is_multiple_of(self.config.cross_region_sync_every.max(1));
            Some(cross)
        } else {
            None
        };
        let ready = |p: &Peer| p.up && !p.syncing && p.retry_at <= now;
        let own = self.region.clone();
        let kind_ok = |p: &Peer| match prefer {
            Some(cross) => (p.region != own) == cross,
            None => true,
        };
        let any_of_kind = self.peers.values().any(|p| ready(p) && kind_ok(p));
        let candidates: Vec<(SocketAddr, f64)> = self
            .peers
            .iter()
            .filter(|(_, p)| ready(p) && (!any_of_kind || kind_ok(p)))
            .map(|(a, p)| {
                let age = p
                    .last_sync
                    .map(|t| now.saturating_sub(t).as_secs_f64())
                    .unwrap_or(60.0);
                let rtt_ms = p.rtt.map(|r| r.as_secs_f64() * 1000.0).unwrap_or(50.0);
                (*a, (age + 1.0) / (1.0 + rtt_ms / 20.0))
            })
            .collect();
        let total: f64 = candidates.iter().map(|c| c.1).sum();
        if candidates.is_empty() || total <= 0.0 {
            return None;
        }
        let mut x = self.rng.random_range(0.0..total);
        for (a, w) in &candidates {
            if x < *w {
                return Some(*a);
            }
            x -= w;
        }
        candidates.last().map(|c| c.0)
    }

    /// A reconciliation with `addr` ended.
    pub fn sync_done(&mut self, now: Duration, addr: SocketAddr, outcome: SyncOutcome) {
        let retry = self.config.sync_retry;
        if let Some(p) = self.peers.get_mut(&addr) {
            p.syncing = false;
            match outcome {
                SyncOutcome::Completed { peer_has_more } => {
                    p.last_sync = Some(now);
                    p.urgent = peer_has_more;
                }
                SyncOutcome::Failed => {
                    p.retry_at = now + retry;
                    p.urgent = true;
                }
            }
        }
    }

    /// When the driver should call back (next round, retry, or rate-limit
    /// refill), if anything is pending.
    pub fn poll_timeout(&self, now: Duration) -> Option<Duration> {
        // While the concurrency limit is reached, only a finishing sync (which
        // the driver reports) can start another: no timer for rounds then.
        let running = self.peers.values().filter(|p| p.syncing).count();
        let can_sync = running < self.config.max_concurrent_syncs;
        let mut t = if !self.peers.values().any(|p| p.up) || !can_sync {
            None
        } else {
            Some(self.next_round.max(now))
        };
        for p in self.peers.values() {
            if can_sync && p.up && p.urgent && !p.syncing {
                let r = p.retry_at.max(now);
                t = Some(t.map_or(r, |x| x.min(r)));
            }
        }
        if let Some(front) = self.queue.front() {
            let missing = (front.bytes.len() as f64 - self.tokens).max(0.0);
            let wait = Duration::from_secs_f64(missing / self.config.rate_limit_bytes_per_s as f64);
            let r = now + wait;
            t = Some(t.map_or(r, |x| x.min(r)));
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use litemesh_proto::decode;

    fn addr(i: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 7000 + i))
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn local_commit_goes_to_nearest_peers_first() {
        let mut s = Scheduler::new(
            Config {
                direct_fanout: 1,
                fanout: 1,
                ..Config::default()
            },
            1,
        );
        for i in 0..10 {
            s.peer_up(addr(i), Some(ms(10 + u64::from(i) * 10)));
        }
        s.on_local_commit(vec![1, 2, 3]);
        let mut to = Vec::new();
        while let Some(t) = s.poll_transmit(ms(0)) {
            to.push(t.to);
            match decode(&t.bytes[1..], 1 << 20).unwrap() {
                Message::Broadcast { hops, batch } => {
                    assert_eq!(hops, Config::default().relay_hops);
                    assert_eq!(batch, vec![1, 2, 3]);
                }
                m => panic!("unexpected {m:?}"),
            }
        }
        assert_eq!(to.len(), 2);
        assert!(
            to.contains(&addr(0)),
            "the nearest peer is always chosen: {to:?}"
        );
    }

    #[test]
    fn a_small_mesh_gets_every_commit_directly() {
        let mut s = Scheduler::new(Config::default(), 9);
        for i in 0..20 {
            s.peer_up(addr(i), Some(ms(1)));
        }
        s.on_local_commit(vec![1]);
        let mut to = std::collections::BTreeSet::new();
        while let Some(t) = s.poll_transmit(ms(0)) {
            to.insert(t.to);
            // Every peer has it from the writer: nobody relays it.
            match decode(&t.bytes[1..], 1 << 20).unwrap() {
                Message::Broadcast { hops, .. } => assert_eq!(hops, 0),
                m => panic!("unexpected {m:?}"),
            }
        }
        assert_eq!(to.len(), 20);
        // A peer down in this node's view: others may still reach it, so
        // they relay.
        s.peer_down(addr(7));
        s.on_local_commit(vec![2]);
        let mut n = 0;
        while let Some(t) = s.poll_transmit(ms(0)) {
            assert_ne!(t.to, addr(7));
            match decode(&t.bytes[1..], 1 << 20).unwrap() {
                Message::Broadcast { hops, .. } => assert_eq!(hops, Config::default().relay_hops),
                m => panic!("unexpected {m:?}"),
            }
            n += 1;
        }
        assert_eq!(n, 19);
    }

    #[test]
    fn relays_only_news_and_only_while_hops_remain() {
        let mut s = Scheduler::new(Config::default(), 2);
        for i in 0..5 {
            s.peer_up(addr(i), None);
        }
        s.on_broadcast(addr(0), 2, vec![9], false);
        assert!(
            s.poll_transmit(ms(0)).is_none(),
            "duplicates are not relayed"
        );
        s.on_broadcast(addr(0), 0, vec![9], true);
        assert!(s.poll_transmit(ms(0)).is_none(), "no hops left");
        s.on_broadcast(addr(0), 2, vec![9], true);
        let mut n = 0;
        while let Some(t) = s.poll_transmit(ms(0)) {
            assert_ne!(t.to, addr(0), "never back to the sender");
            assert!(matches!(
                decode(&t.bytes[1..], 1 << 20).unwrap(),
                Message::Broadcast { hops: 1, .. }
            ));
            n += 1;
        }
        // ln(4) + 2 rounds up to 4: every candidate.
        assert_eq!(n, 4);
    }

    #[test]
    fn rate_limit_and_queue_overflow_drop_oldest() {
        let cfg = Config {
            direct_fanout: 1,
            fanout: 0,
            rate_limit_bytes_per_s: 1000,
            queue_limit: 3,
            ..Config::default()
        };
        let mut s = Scheduler::new(cfg, 3);
        s.peer_up(addr(1), None);
        for i in 0..5u8 {
            s.on_local_commit(vec![i; 400]);
        }
        assert_eq!(s.queue_len(), 3);
        assert_eq!(s.dropped(), 2);
        // Only about 1000 bytes may go in the first second.
        let mut sent = Vec::new();
        while let Some(t) = s.poll_transmit(ms(0)) {
            sent.push(t);
        }
        assert_eq!(sent.len(), 2);
        let oldest_kept = match decode(&sent[0].bytes[1..], 1 << 20).unwrap() {
            Message::Broadcast { batch, .. } => batch[0],
            _ => unreachable!(),
        };
        assert_eq!(oldest_kept, 2, "the two oldest were dropped");
        assert!(s.poll_transmit(ms(100)).is_none(), "not enough tokens yet");
        assert!(s.poll_timeout(ms(100)).is_some());
        assert!(s.poll_transmit(ms(400)).is_some(), "refilled");
    }

    #[test]
    fn new_and_returning_peers_are_synced_at_once_then_by_interval() {
        let mut s = Scheduler::new(Config::default(), 4);
        s.peer_up(addr(1), Some(ms(5)));
        s.peer_up(addr(2), Some(ms(1)));
        // Both urgent: nearest first, two at a time.
        assert_eq!(s.poll_sync(ms(0)), Some(addr(2)));
        assert_eq!(s.poll_sync(ms(0)), Some(addr(1)));
        assert_eq!(s.poll_sync(ms(0)), None, "concurrency limit");
        assert_eq!(
            s.poll_timeout(ms(0)),
            None,
            "nothing to wake for until a sync ends"
        );
        s.sync_done(
            ms(10),
            addr(2),
            SyncOutcome::Completed {
                peer_has_more: false,
            },
        );
        s.sync_done(
            ms(10),
            addr(1),
            SyncOutcome::Completed {
                peer_has_more: true,
            },
        );
        assert_eq!(
            s.poll_sync(ms(10)),
            Some(addr(1)),
            "has more: again at once"
        );
        s.sync_done(ms(20), addr(1), SyncOutcome::Failed);
        assert_eq!(s.poll_sync(ms(20)), Some(addr(2)), "a round is due");
        s.sync_done(
            ms(30),
            addr(2),
            SyncOutcome::Completed {
                peer_has_more: false,
            },
        );
        assert_eq!(s.poll_sync(ms(30)), None, "failed peer waits for its retry");
        let wake = s.poll_timeout(ms(30)).unwrap();
        assert!(wake <= ms(20) + Config::default().sync_retry);
        assert_eq!(s.poll_sync(wake), Some(addr(1)));
        // A peer that went down is not chosen; when it returns it is urgent again.
        s.peer_down(addr(2));
        assert!(s.peers().iter().any(|p| p.addr == addr(2) && !p.up));
        s.peer_up(addr(2), None);
        assert_eq!(s.poll_sync(wake), Some(addr(2)));
    }

    #[test]
    fn a_gap_pulls_from_one_sender_at_a_time() {
        let mut s = Scheduler::new(Config::default(), 6);
        for i in 0..3 {
            s.peer_up(addr(i), Some(ms(1)));
        }
        let done = SyncOutcome::Completed {
            peer_has_more: false,
        };
        while let Some(a) = s.poll_sync(ms(0)) {
            s.sync_done(ms(0), a, done);
        }
        assert_eq!(s.poll_sync(ms(600)), None, "nothing due");
        s.pull_soon(ms(600), addr(0));
        assert_eq!(s.poll_sync(ms(600)), Some(addr(0)));
        // While that pull runs, gaps seen from other senders add nothing.
        s.pull_soon(ms(610), addr(1));
        s.pull_soon(ms(610), addr(2));
        assert_eq!(s.poll_sync(ms(610)), None);
        s.sync_done(ms(700), addr(0), done);
        s.pull_soon(ms(700), addr(1));
        assert_eq!(s.poll_sync(ms(700)), Some(addr(1)), "idle again: pull");
    }

    #[test]
    fn rounds_spread_over_peers() {
        let mut s = Scheduler::new(Config::default(), 5);
        for i in 0..4 {
            s.peer_up(addr(i), Some(ms(10)));
        }
        let mut now = ms(0);
        while let Some(a) = s.poll_sync(now) {
            s.sync_done(
                now,
                a,
                SyncOutcome::Completed {
                    peer_has_more: false,
                },
            );
        }
        let mut counts = BTreeMap::new();
        for _ in 0..400 {
            now = s.poll_timeout(now).unwrap();
            if let Some(a) = s.poll_sync(now) {
                *counts.entry(a).or_insert(0) += 1;
                s.sync_done(
                    now,
                    a,
                    SyncOutcome::Completed {
                        peer_has_more: false,
                    },
                );
            }
        }
        assert_eq!(counts.len(), 4);
        assert!(counts.values().all(|&c| c > 50), "{counts:?}");
    }

    /// A scheduler in region `own` with `n` peers in each of `regions`
    /// (peer addresses numbered from 100 per region).
    fn regional(own: &str, regions: &[(&str, u16)], aware: bool) -> Scheduler {
        let mut s = Scheduler::new(
            Config {
                region_aware: aware,
                ..Config::default()
            },
            7,
        );
        s.set_region(Some(own.into()));
        for (k, (r, n)) in regions.iter().enumerate() {
            for i in 0..*n {
                let a = addr(100 * (k as u16 + 1) + i);
                // Remote regions are the nearer ones by RTT here: the
                // region-blind choice would favour them.
                let rtt = if *r == own { ms(20) } else { ms(5) };
                s.peer_up(a, Some(rtt));
                s.set_peer_region(a, Some(r.to_string()));
            }
        }
        s
    }

    fn sent(s: &mut Scheduler) -> Vec<(SocketAddr, u8)> {
        let mut out = Vec::new();
        while let Some(t) = s.poll_transmit(ms(0)) {
            match decode(&t.bytes[1..], 1 << 20).unwrap() {
                Message::Broadcast { hops, .. } => out.push((t.to, hops)),
                m => panic!("unexpected {m:?}"),
            }
        }
        out
    }

    /// The position (from 1) in `regional`'s list of the region of `a`.
    fn region_of(a: SocketAddr) -> u16 {
        a.port() / 100 - 70
    }

    #[test]
    fn a_fresh_commit_crosses_each_region_boundary_a_bounded_number_of_times() {
        let mut s = regional("a", &[("a", 5), ("b", 40), ("c", 40)], true);
        s.on_local_commit(vec![1]);
        let to = sent(&mut s);
        let per = |r: u16| to.iter().filter(|(a, _)| region_of(*a) == r).count();
        // Every peer of its own region, two entries in each other one.
        assert_eq!((per(1), per(2), per(3)), (5, 2, 2), "{to:?}");
        // Its region is covered directly: no relays there.
        assert!(to.iter().all(|(_, h)| *h == 0), "{to:?}");

        // Region-blind, the nearest 32 peers (here all remote) and 3 more.
        let mut s = regional("a", &[("a", 5), ("b", 40), ("c", 40)], false);
        s.on_local_commit(vec![1]);
        let to = sent(&mut s);
        assert_eq!(to.len(), 35);
        assert!(to.iter().filter(|(a, _)| region_of(*a) != 1).count() >= 30);
    }

    #[test]
    fn an_entry_node_fans_out_inside_its_region_and_relays_stay_there() {
        let mut s = regional("b", &[("a", 5), ("b", 10), ("c", 10)], true);
        let from_a = addr(100);
        // From another region: fan out to the whole region, nothing back out.
        s.on_broadcast(from_a, 0, vec![1], true);
        let to = sent(&mut s);
        assert_eq!(to.len(), 10, "{to:?}");
        assert!(
            to.iter().all(|(a, h)| region_of(*a) == 2 && *h == 0),
            "{to:?}"
        );
        // Known already: nothing.
        s.on_broadcast(from_a, 3, vec![1], false);
        assert!(sent(&mut s).is_empty());
        // A relay from inside the region goes on inside it only.
        s.on_broadcast(addr(200), 2, vec![2], true);
        let to = sent(&mut s);
        assert!(!to.is_empty());
        assert!(
            to.iter()
                .all(|(a, h)| region_of(*a) == 2 && *a != addr(200) && *h == 1),
            "{to:?}"
        );
        // A region bigger than the direct fan-out: relays cover the rest.
        let mut s = regional("b", &[("a", 5), ("b", 60)], true);
        s.on_broadcast(from_a, 0, vec![1], true);
        let to = sent(&mut s);
        assert_eq!(to.len(), 35, "{to:?}");
        assert!(to.iter().all(|(a, h)| region_of(*a) == 2 && *h > 0));
    }

    #[test]
    fn anti_entropy_stays_in_the_region_but_crosses_regularly() {
        let mut s = regional("a", &[("a", 3), ("b", 3)], true);
        let mut cross = 0;
        let mut t = ms(0);
        for _ in 0..400 {
            t += ms(5_000);
            while let Some(p) = s.poll_sync(t) {
                if region_of(p) != 1 {
                    cross += 1;
                }
                s.sync_done(
                    t,
                    p,
                    SyncOutcome::Completed {
                        peer_has_more: false,
                    },
                );
            }
        }
        // One round in four goes across (the first rounds of new peers are
        // the urgent ones, on any side).
        assert!((80..=140).contains(&cross), "{cross}");
        // A node alone in its region still syncs, across.
        let mut s = regional("a", &[("b", 3)], true);
        assert!(s.poll_sync(ms(0)).is_some());
    }
}
