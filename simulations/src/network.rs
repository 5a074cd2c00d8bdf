//! Deterministic discrete-event network.
//!
//! The network is generic over [`SimNode`]: anything driven by "time passes"
//! and "a message arrived", producing messages to send. Payloads are opaque
//! bytes, so the same model can carry membership datagrams today and QUIC
//! packets later. Everything (latency jitter, loss, event order) derives from
//! one seed; two runs with the same seed and the same driver calls produce
//! identical results.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::net::SocketAddr;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A message produced by a node.
#[derive(Clone, Debug)]
pub struct Outgoing {
    /// Destination address.
    pub dst: SocketAddr,
    /// Opaque payload.
    pub payload: Vec<u8>,
    /// Reliable messages are never dropped by random loss (they model a
    /// stream that retransmits) but are still cut by partitions and crashes.
    pub reliable: bool,
}

/// A protocol endpoint driven by simulated time and messages (sans-IO).
pub trait SimNode {
    /// A message from `from` arrived at time `now`.
    fn on_message(&mut self, now: Duration, from: SocketAddr, payload: &[u8]);
    /// Called at (or, after a pause, later than) the instant returned by
    /// [`SimNode::next_timeout`].
    fn on_timeout(&mut self, now: Duration);
    /// Next message to put on the wire.
    fn poll_transmit(&mut self) -> Option<Outgoing>;
    /// When the node next wants [`SimNode::on_timeout`].
    fn next_timeout(&self) -> Option<Duration>;
}

/// Link model.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    /// Probability that a datagram is lost (applied independently per message).
    pub loss: f64,
    /// One-way base latency between regions: `latency[a][b]`.
    pub latency: Vec<Vec<Duration>>,
    /// Uniform jitter as a fraction of the base latency (0.2 = ±20 %).
    pub jitter: f64,
    /// Bandwidth used to delay large reliable messages (bytes per second).
    pub reliable_bandwidth: f64,
}

impl LinkConfig {
    /// Three regions (one-way 1 ms inside a region, 35–75 ms across),
    /// ±20 % jitter and the given loss rate.
    pub fn three_regions(loss: f64) -> Self {
        let ms = Duration::from_millis;
        LinkConfig {
            loss,
            latency: vec![
                vec![ms(1), ms(40), ms(75)],
                vec![ms(40), ms(1), ms(35)],
                vec![ms(75), ms(35), ms(1)],
            ],
            jitter: 0.2,
            reliable_bandwidth: 12.5e6,
        }
    }

    /// `regions` regions (at most 8) with realistic WAN round-trip times
    /// between them (see [`WAN_RTT_MS`]), 1.5 ms one-way inside a region,
    /// ±50 % jitter (so 1.5–4.5 ms round trips inside a region), and the
    /// given loss rate.
    pub fn wan(regions: usize, loss: f64) -> Self {
        let r = regions.clamp(1, WAN_REGIONS.len());
        let latency = (0..r)
            .map(|a| {
                (0..r)
                    .map(|b| {
                        if a == b {
                            Duration::from_micros(1500)
                        } else {
                            Duration::from_micros(WAN_RTT_MS[a][b] as u64 * 500)
                        }
                    })
                    .collect()
            })
            .collect();
        LinkConfig {
            loss,
            latency,
            jitter: 0.5,
            reliable_bandwidth: 12.5e6,
        }
    }

    /// Number of regions in the latency matrix.
    pub fn regions(&self) -> usize {
        self.latency.len()
    }
}

/// The regions of [`LinkConfig::wan`], in the order they are added.
pub const WAN_REGIONS: [&str; 8] = [
    "us-east",
    "eu-west",
    "us-west",
    "ap-northeast",
    "eu-central",
    "ap-southeast",
    "sa-east",
    "ap-south",
];

/// Round-trip times between [`WAN_REGIONS`], in milliseconds: round
/// figures of the public inter-region latency medians cloud providers and
/// measurement sites publish (e.g. AWS's inter-region latency tables as
/// shown by cloudping.co) — Virginia, Ireland, Oregon, Tokyo, Frankfurt,
/// Singapore, São Paulo, Mumbai. All lie in 30–250 ms, the range the
/// simulation is asked to cover.
pub const WAN_RTT_MS: [[u32; 8]; 8] = [
    //  use  euw  usw  apne euc  apse sae  aps
    [0, 70, 65, 150, 90, 220, 115, 190],    // us-east
    [70, 0, 125, 210, 30, 170, 180, 120],   // eu-west
    [65, 125, 0, 100, 150, 165, 175, 220],  // us-west
    [150, 210, 100, 0, 225, 70, 250, 130],  // ap-northeast
    [90, 30, 150, 225, 0, 160, 205, 110],   // eu-central
    [220, 170, 165, 70, 160, 0, 250, 60],   // ap-southeast
    [115, 180, 175, 250, 205, 250, 0, 250], // sa-east
    [190, 120, 220, 130, 110, 60, 250, 0],  // ap-south
];

/// Traffic counters of one node.
#[derive(Clone, Copy, Debug, Default)]
pub struct NodeStats {
    /// Messages sent.
    pub msgs_sent: u64,
    /// Payload bytes sent (datagram + reliable).
    pub bytes_sent: u64,
    /// Payload bytes sent over the reliable channel.
    pub reliable_bytes_sent: u64,
    /// Messages delivered to this node.
    pub msgs_received: u64,
    /// Payload bytes sent to nodes of other regions, by the payload's first
    /// byte (the driver's message kind; 3 and above counted together) and
    /// whether its second byte is 1 (for the whole-node driver: a sync
    /// broadcast on a stream, rather than membership).
    pub cross_region_bytes: [[u64; 2]; 4],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Up,
    Paused,
    Down,
}

struct Slot<N> {
    node: N,
    addr: SocketAddr,
    region: usize,
    status: Status,
    wake: Option<Duration>,
    stats: NodeStats,
}

enum Ev {
    Deliver {
        dst: SocketAddr,
        from: SocketAddr,
        payload: Vec<u8>,
    },
    Wake {
        node: usize,
    },
    Resume {
        node: usize,
    },
}

struct Queued {
    at: Duration,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    fn cmp(&self, o: &Self) -> Ordering {
        // Min-heap on (time, insertion order).
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// The simulated network and its nodes.
pub struct Network<N: SimNode> {
    now: Duration,
    queue: BinaryHeap<Queued>,
    seq: u64,
    rng: ChaCha8Rng,
    link: LinkConfig,
    slots: Vec<Slot<N>>,
    by_addr: BTreeMap<SocketAddr, usize>,
    /// Partition group per node; messages only flow within a group.
    groups: Option<Vec<u32>>,
    /// Nodes whose outgoing messages are all lost (one-way loss: they still
    /// receive).
    muted: BTreeSet<usize>,
    delivered: u64,
    dropped: u64,
}

impl<N: SimNode> Network<N> {
    /// An empty network at time zero.
    pub fn new(link: LinkConfig, seed: u64) -> Self {
        Network {
            now: Duration::ZERO,
            queue: BinaryHeap::new(),
            seq: 0,
            rng: ChaCha8Rng::seed_from_u64(seed),
            link,
            slots: Vec::new(),
            by_addr: BTreeMap::new(),
            groups: None,
            muted: BTreeSet::new(),
            delivered: 0,
            dropped: 0,
        }
    }

    /// Current simulated time.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// Adds a running node at `addr` in `region`; returns its index.
    pub fn add_node(&mut self, addr: SocketAddr, region: usize, node: N) -> usize {
        let idx = self.slots.len();
        self.slots.push(Slot {
            node,
            addr,
            region: region % self.link.regions().max(1),
            status: Status::Up,
            wake: None,
            stats: NodeStats::default(),
        });
        self.by_addr.insert(addr, idx);
        self.after_call(idx);
        idx
    }

    /// Number of nodes ever added.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True if no node was added.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The node at `idx`.
    pub fn node(&self, idx: usize) -> &N {
        &self.slots[idx].node
    }

    /// Address of node `idx`.
    pub fn addr(&self, idx: usize) -> SocketAddr {
        self.slots[idx].addr
    }

    /// Region of node `idx`.
    pub fn region(&self, idx: usize) -> usize {
        self.slots[idx].region
    }

    /// True unless the node is crashed (paused nodes count as up).
    pub fn is_up(&self, idx: usize) -> bool {
        self.slots[idx].status != Status::Down
    }

    /// True while the node is paused.
    pub fn is_paused(&self, idx: usize) -> bool {
        self.slots[idx].status == Status::Paused
    }

    /// Traffic counters of node `idx`.
    pub fn stats(&self, idx: usize) -> NodeStats {
        self.slots[idx].stats
    }

    /// Resets all traffic counters (e.g. after warm-up).
    pub fn reset_stats(&mut self) {
        for s in &mut self.slots {
            s.stats = NodeStats::default();
        }
    }

    /// Total (delivered, dropped) messages.
    pub fn totals(&self) -> (u64, u64) {
        (self.delivered, self.dropped)
    }

    /// Changes the datagram loss rate.
    pub fn set_loss(&mut self, loss: f64) {
        self.link.loss = loss;
    }

    /// Calls `f` on a running node (to inject API calls such as join or
    /// leave), then sends what it produced. Returns `None` if the node is
    /// crashed or paused.
    pub fn with_node<R>(&mut self, idx: usize, f: impl FnOnce(&mut N, Duration) -> R) -> Option<R> {
        if self.slots[idx].status != Status::Up {
            return None;
        }
        let r = f(&mut self.slots[idx].node, self.now);
        self.after_call(idx);
        Some(r)
    }

    /// Crashes node `idx`: it stops, in-flight messages to it are lost.
    pub fn crash(&mut self, idx: usize) {
        self.slots[idx].status = Status::Down;
        self.slots[idx].wake = None;
    }

    /// Stalls node `idx` for `d`: it receives nothing (messages are lost) and
    /// runs nothing; on resume its overdue timers fire late.
    pub fn pause(&mut self, idx: usize, d: Duration) {
        if self.slots[idx].status != Status::Up {
            return;
        }
        self.slots[idx].status = Status::Paused;
        self.slots[idx].wake = None;
        let at = self.now + d;
        self.push(at, Ev::Resume { node: idx });
    }

    /// Replaces node `idx` by a fresh `node` (a restart), optionally at a
    /// new address. The old address stops resolving.
    pub fn restart(&mut self, idx: usize, addr: SocketAddr, node: N) {
        let old = self.slots[idx].addr;
        if self.by_addr.get(&old) == Some(&idx) {
            self.by_addr.remove(&old);
        }
        let s = &mut self.slots[idx];
        s.node = node;
        s.addr = addr;
        s.status = Status::Up;
        s.wake = None;
        self.by_addr.insert(addr, idx);
        self.after_call(idx);
    }

    /// Splits the network: node `i` can only reach nodes with the same
    /// `groups[i]`.
    pub fn partition(&mut self, groups: Vec<u32>) {
        self.groups = Some(groups);
    }

    /// Removes any partition.
    pub fn heal(&mut self) {
        self.groups = None;
    }

    /// Loses everything node `idx` sends (it still receives), or stops doing
    /// so.
    pub fn set_muted(&mut self, idx: usize, muted: bool) {
        if muted {
            self.muted.insert(idx);
        } else {
            self.muted.remove(&idx);
        }
    }

    /// Processes events up to and including time `t`.
    pub fn run_until(&mut self, t: Duration) {
        while let Some(q) = self.queue.peek() {
            if q.at > t {
                break;
            }
            let q = self.queue.pop().expect("peeked");
            self.now = q.at;
            match q.ev {
                Ev::Deliver { dst, from, payload } => {
                    // Resolve at delivery time: a restarted node no longer
                    // owns its old address.
                    let Some(&to) = self.by_addr.get(&dst) else {
                        self.dropped += 1;
                        continue;
                    };
                    if self.slots[to].status != Status::Up {
                        self.dropped += 1;
                        continue;
                    }
                    self.delivered += 1;
                    self.slots[to].stats.msgs_received += 1;
                    let now = self.now;
                    self.slots[to].node.on_message(now, from, &payload);
                    self.after_call(to);
                }
                Ev::Wake { node } => {
                    let s = &mut self.slots[node];
                    if s.status != Status::Up || s.wake != Some(q.at) {
                        continue;
                    }
                    s.wake = None;
                    let now = self.now;
                    s.node.on_timeout(now);
                    self.after_call(node);
                }
                Ev::Resume { node } => {
                    let s = &mut self.slots[node];
                    if s.status != Status::Paused {
                        continue;
                    }
                    s.status = Status::Up;
                    let now = self.now;
                    if s.node.next_timeout().is_some_and(|t| t <= now) {
                        s.node.on_timeout(now);
                    }
                    self.after_call(node);
                }
            }
        }
        self.now = self.now.max(t);
    }

    fn push(&mut self, at: Duration, ev: Ev) {
        self.seq += 1;
        self.queue.push(Queued {
            at,
            seq: self.seq,
            ev,
        });
    }

    /// Sends what node `idx` produced and (re)schedules its wake-up.
    fn after_call(&mut self, idx: usize) {
        while let Some(out) = self.slots[idx].node.poll_transmit() {
            self.send(idx, out);
        }
        if self.slots[idx].status != Status::Up {
            return;
        }
        if let Some(t) = self.slots[idx].node.next_timeout() {
            let t = t.max(self.now);
            if self.slots[idx].wake.is_none_or(|w| t < w) {
                self.slots[idx].wake = Some(t);
                self.push(t, Ev::Wake { node: idx });
            }
        }
    }

    fn send(&mut self, from_idx: usize, out: Outgoing) {
        let len = out.payload.len() as u64;
        {
            let st = &mut self.slots[from_idx].stats;
            st.msgs_sent += 1;
            st.bytes_sent += len;
            if out.reliable {
                st.reliable_bytes_sent += len;
            }
        }
        let Some(&to) = self.by_addr.get(&out.dst) else {
            self.dropped += 1;
            return;
        };
        if self.muted.contains(&from_idx) {
            self.dropped += 1;
            return;
        }
        if let Some(g) = &self.groups
            && g.get(from_idx) != g.get(to)
        {
            self.dropped += 1;
            return;
        }
        if !out.reliable && self.link.loss > 0.0 && self.rng.random_bool(self.link.loss.min(1.0)) {
            self.dropped += 1;
            return;
        }
        let (ra, rb) = (self.slots[from_idx].region, self.slots[to].region);
        if ra != rb {
            let kind = out.payload.first().map_or(0, |k| (*k as usize).min(3));
            let sub = usize::from(out.payload.get(1) == Some(&1));
            self.slots[from_idx].stats.cross_region_bytes[kind][sub] += len;
        }
        let base = self.link.latency[ra][rb];
        let j = self.link.jitter;
        let mut delay = if j > 0.0 {
            base.mul_f64(1.0 + self.rng.random_range(-j..=j))
        } else {
            base
        };
        if out.reliable && self.link.reliable_bandwidth > 0.0 {
            delay += Duration::from_secs_f64(len as f64 / self.link.reliable_bandwidth);
        }
        let at = self.now + delay;
        let from = self.slots[from_idx].addr;
        self.push(
            at,
            Ev::Deliver {
                dst: out.dst,
                from,
                payload: out.payload,
            },
        );
    }
}
