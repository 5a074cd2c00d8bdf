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
        }
    }

    /// A peer is alive (joined, or came back after a failure or a partition):
    /// reconcile with it at once.
    pub fn peer_up(&mut self, addr: SocketAddr, rtt: Option<Duration>) {
        let p = self.peers.entry(addr).or_insert(Peer {
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
        // The nearest peers directly (every peer of a small mesh), plus a few
        // random ones to seed the relays across regions.
        let mut peers: Vec<(SocketAddr, Option<Duration>)> = self
            .peers
            .iter()
            .filter(|(_, p)| p.up)
            .map(|(a, p)| (*a, p.rtt))
            .collect();
        peers.shuffle(&mut self.rng);
        peers.sort_by_key(|(_, rtt)| rtt.unwrap_or(Duration::MAX));
        let direct = self.config.direct_fanout.min(peers.len());
        let mut targets: Vec<SocketAddr> = peers[..direct].iter().map(|p| p.0).collect();
        let mut rest: Vec<SocketAddr> = peers[direct..].iter().map(|p| p.0).collect();
        rest.shuffle(&mut self.rng);
        // Every known peer up and reached directly: nobody needs a relay.
        // With a peer down in this node's view (a fault, a node gone but
        // not yet forgotten), others that still reach it relay as before.
        let hops = if rest.is_empty() && self.peers.values().all(|p| p.up) {
            0
        } else {
            self.config.relay_hops
        };
        targets.extend(rest.into_iter().take(self.config.fanout));
        self.enqueue(targets, hops, batch);
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
        if !newly_applied || hops == 0 {
            return;
        }
        let targets = self.targets(Some(from));
        self.enqueue(targets, hops - 1, batch);
    }

    /// Relay targets: half the fan-out to the nearest peers, the rest at random.
    fn targets(&mut self, exclude: Option<SocketAddr>) -> Vec<SocketAddr> {
        let mut peers: Vec<(SocketAddr, Option<Duration>)> = self
            .peers
            .iter()
            .filter(|(a, p)| p.up && Some(**a) != exclude)
            .map(|(a, p)| (*a, p.rtt))
            .collect();
        peers.shuffle(&mut self.rng);
        let n = self.config.fanout.min(peers.len());
        // Half the fan-out to the nearest peers (fast local spread), the rest at
        // random (reach across regions).
        let nearest = n.div_ceil(2);
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
        let candidates: Vec<(SocketAddr, f64)> = self
            .peers
            .iter()
            .filter(|(_, p)| p.up && !p.syncing && p.retry_at <= now)
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
        assert_eq!(n, 3);
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
}
