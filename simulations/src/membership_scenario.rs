//! Membership clusters on the simulated network, plus the metrics computed
//! from what every node observed.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use litemesh_membership::{
    Config, Event, Identity, Instant, Member, MemberState, Membership, NodeId,
};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::network::{LinkConfig, Network, Outgoing, SimNode};

/// What an observer saw, compacted for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObsKind {
    /// Joined / alive / metadata changed, with the metadata version.
    Seen,
    /// Marked suspect.
    Suspect,
    /// Marked dead.
    Dead,
    /// Marked left.
    Left,
}

/// One observation by one node.
#[derive(Clone, Copy, Debug)]
pub struct Obs {
    /// Simulated time.
    pub t: Duration,
    /// What happened.
    pub kind: ObsKind,
    /// Subject id.
    pub id: NodeId,
    /// Subject generation.
    pub generation: u64,
    /// Metadata version carried by the subject's metadata (see [`metadata`]).
    pub version: u64,
}

/// Simulator metadata: 8-byte little-endian version, region byte, name.
pub fn metadata(version: u64, region: u8, name: &str) -> Vec<u8> {
    let mut v = version.to_le_bytes().to_vec();
    v.push(region);
    v.extend_from_slice(name.as_bytes());
    v
}

/// Version encoded by [`metadata`] (0 if absent).
pub fn metadata_version(m: &Member) -> u64 {
    m.metadata
        .as_bytes()
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0)
}

/// A [`Membership`] adapted to the simulator, logging what it observes.
pub struct MemberNode {
    /// The state machine.
    pub m: Membership,
    /// Observations (only while `recording`).
    pub log: Vec<Obs>,
    /// Whether observations are logged.
    pub recording: bool,
    /// Messages rejected by the decoder.
    pub decode_errors: u64,
}

fn to_instant(d: Duration) -> Instant {
    Instant::from_duration(d)
}

impl MemberNode {
    /// Wraps a state machine.
    pub fn new(m: Membership) -> Self {
        MemberNode {
            m,
            log: Vec::new(),
            recording: true,
            decode_errors: 0,
        }
    }

    fn drain_events(&mut self, now: Duration) {
        while let Some(ev) = self.m.poll_event() {
            if !self.recording {
                continue;
            }
            let (kind, m) = match &ev {
                Event::Joined(m) | Event::Alive(m) | Event::MetadataChanged(m) => {
                    (ObsKind::Seen, m)
                }
                Event::Suspect(m) => (ObsKind::Suspect, m),
                Event::Dead(m) => (ObsKind::Dead, m),
                Event::Left(m) => (ObsKind::Left, m),
            };
            self.log.push(Obs {
                t: now,
                kind,
                id: m.identity.id,
                generation: m.identity.generation,
                version: metadata_version(m),
            });
        }
    }
}

impl SimNode for MemberNode {
    fn on_message(&mut self, now: Duration, from: SocketAddr, payload: &[u8]) {
        if self
            .m
            .handle_message(to_instant(now), from, payload)
            .is_err()
        {
            self.decode_errors += 1;
        }
        self.drain_events(now);
    }

    fn on_timeout(&mut self, now: Duration) {
        self.m.handle_timeout(to_instant(now));
        self.drain_events(now);
    }

    fn poll_transmit(&mut self) -> Option<Outgoing> {
        self.m.poll_transmit().map(|t| Outgoing {
            dst: t.dst,
            payload: t.payload,
            reliable: t.reliable,
        })
    }

    fn next_timeout(&self) -> Option<Duration> {
        self.m.poll_timeout().map(Instant::as_duration)
    }
}

/// Cluster construction options.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Number of nodes.
    pub nodes: usize,
    /// Seed for everything.
    pub seed: u64,
    /// Protocol configuration for every node.
    pub config: Config,
    /// Network model.
    pub link: LinkConfig,
    /// Joins are spread evenly over this period.
    pub join_spread: Duration,
}

impl ClusterOptions {
    /// Defaults: three regions, the given loss, default protocol config,
    /// joins spread over `max(1 s, N × 20 ms)`.
    pub fn new(nodes: usize, loss: f64, seed: u64) -> Self {
        ClusterOptions {
            nodes,
            seed,
            config: Config::default(),
            link: LinkConfig::three_regions(loss),
            join_spread: Duration::from_millis(20 * nodes as u64).max(Duration::from_secs(1)),
        }
    }
}

/// A metadata update to track for dissemination.
#[derive(Clone, Copy, Debug)]
pub struct TrackedUpdate {
    /// Subject.
    pub identity: Identity,
    /// New version.
    pub version: u64,
    /// When it was published.
    pub t: Duration,
}

/// A cluster of membership nodes on a simulated network.
pub struct Cluster {
    /// The network (and the nodes).
    pub net: Network<MemberNode>,
    config: Config,
    seed: u64,
    identities: Vec<Identity>,
    active: Vec<bool>,
    versions: Vec<u64>,
    next_addr: u32,
    next_id: u64,
    rng: ChaCha8Rng,
    /// When each (id, generation) stopped being healthy (crash, leave,
    /// replaced by a restart). Used to classify false positives.
    pub down_since: BTreeMap<(NodeId, u64), Duration>,
    /// Crashes so far: who and when.
    pub crashes: Vec<(Identity, Duration)>,
    /// Metadata updates so far.
    pub updates: Vec<TrackedUpdate>,
    join_spread: Duration,
}

fn addr_of(counter: u32) -> SocketAddr {
    let c = counter + 1;
    SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::new(10, (c >> 16) as u8, (c >> 8) as u8, c as u8),
        7000,
    ))
}

impl Cluster {
    /// Creates `opts.nodes` nodes (not joined yet; see [`Cluster::bootstrap`]).
    pub fn new(opts: ClusterOptions) -> Self {
        let mut c = Cluster {
            net: Network::new(opts.link, opts.seed),
            config: opts.config,
            seed: opts.seed,
            identities: Vec::new(),
            active: Vec::new(),
            versions: Vec::new(),
            next_addr: 0,
            next_id: 1 << 32,
            rng: ChaCha8Rng::seed_from_u64(opts.seed ^ 0x005e_edc1_u64),
            down_since: BTreeMap::new(),
            crashes: Vec::new(),
            updates: Vec::new(),
            join_spread: opts.join_spread,
        };
        for _ in 0..opts.nodes {
            c.add_node();
        }
        c
    }

    fn make_node(
        &mut self,
        idx: usize,
        identity: Identity,
        addr: SocketAddr,
        version: u64,
    ) -> MemberNode {
        let node_seed = self
            .seed
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add((idx as u64) << 20)
            .wrapping_add(identity.generation);
        let mut m = Membership::new(identity, addr, self.config.clone(), node_seed);
        let region = (idx % self.net_regions()) as u8;
        m.set_metadata(
            Instant::ZERO,
            metadata(version, region, &format!("node-{idx}")),
        )
        .expect("small metadata");
        MemberNode::new(m)
    }

    fn net_regions(&self) -> usize {
        3
    }

    /// Adds one (not yet joined) node; returns its index.
    pub fn add_node(&mut self) -> usize {
        let idx = self.identities.len();
        let identity = Identity {
            id: NodeId(idx as u64 + 1),
            generation: 1,
        };
        let addr = addr_of(self.next_addr);
        self.next_addr += 1;
        let node = self.make_node(idx, identity, addr, 1);
        self.identities.push(identity);
        self.active.push(true);
        self.versions.push(1);
        self.net.add_node(addr, idx, node)
    }

    /// Number of node slots.
    pub fn len(&self) -> usize {
        self.identities.len()
    }

    /// True if there are no nodes.
    pub fn is_empty(&self) -> bool {
        self.identities.is_empty()
    }

    /// Current simulated time.
    pub fn now(&self) -> Duration {
        self.net.now()
    }

    /// Runs the simulation until `t`.
    pub fn run_until(&mut self, t: Duration) {
        self.net.run_until(t);
    }

    /// Runs for `d` more.
    pub fn run_for(&mut self, d: Duration) {
        let t = self.now() + d;
        self.net.run_until(t);
    }

    /// Current identity of slot `i`.
    pub fn identity(&self, i: usize) -> Identity {
        self.identities[i]
    }

    /// True if slot `i` runs a healthy (possibly paused) node.
    pub fn is_active(&self, i: usize) -> bool {
        self.active[i]
    }

    /// The state machine of slot `i`.
    pub fn membership(&self, i: usize) -> &Membership {
        &self.net.node(i).m
    }

    /// Joins every node: node 0 alone, node `i` through up to three random
    /// earlier nodes, spread over the configured join period.
    pub fn bootstrap(&mut self) {
        let n = self.len();
        let start = self.now();
        for i in 0..n {
            let t = start + self.join_spread.mul_f64(i as f64 / n.max(1) as f64);
            self.run_until(t);
            let seeds: Vec<SocketAddr> = if i == 0 {
                Vec::new()
            } else {
                let mut c: Vec<usize> = (0..i).filter(|&j| self.active[j]).collect();
                c.shuffle(&mut self.rng);
                c.into_iter().take(3).map(|j| self.net.addr(j)).collect()
            };
            self.net
                .with_node(i, |node, now| node.m.join(to_instant(now), &seeds));
        }
    }

    /// Starts every node with a complete view (via
    /// `Membership::add_known_members`), as if the cluster had already
    /// converged. Used for large N, where simulating thousands of
    /// concurrent joins costs more than the measurement itself.
    pub fn preload(&mut self) {
        let all: Vec<Member> = (0..self.len())
            .map(|i| self.membership(i).local_member().clone())
            .collect();
        for i in 0..self.len() {
            let me = self.identities[i].id;
            self.net.with_node(i, |node, now| {
                let others = all.iter().filter(|m| m.identity.id != me).cloned();
                node.m.add_known_members(to_instant(now), others);
                node.m.join(to_instant(now), &[]);
                while node.m.poll_event().is_some() {}
            });
        }
    }

    /// Joins slot `i` through `seeds` (slot indices).
    pub fn join(&mut self, i: usize, seeds: &[usize]) {
        let seeds: Vec<SocketAddr> = seeds.iter().map(|&j| self.net.addr(j)).collect();
        self.net
            .with_node(i, |node, now| node.m.join(to_instant(now), &seeds));
    }

    /// True when every active node sees exactly the other active nodes (with
    /// their current generation) as alive or suspect.
    pub fn converged(&self) -> bool {
        let expected: Vec<Identity> = (0..self.len())
            .filter(|&i| self.active[i])
            .map(|i| self.identities[i])
            .collect();
        (0..self.len()).filter(|&i| self.active[i]).all(|i| {
            let m = self.membership(i);
            if m.num_live_members() + 1 != expected.len() {
                return false;
            }
            expected.iter().all(|e| {
                e.id == m.local_member().identity.id
                    || m.member(e.id).is_some_and(|x| {
                        x.identity == *e
                            && matches!(x.state, MemberState::Alive | MemberState::Suspect)
                    })
            })
        })
    }

    /// True when every active node sees every other active node (with its
    /// current generation) as alive: no suspicion left anywhere.
    pub fn all_alive(&self) -> bool {
        let act: Vec<usize> = (0..self.len()).filter(|&i| self.active[i]).collect();
        act.iter().all(|&i| {
            let m = self.membership(i);
            act.iter().filter(|&&j| j != i).all(|&j| {
                let e = self.identities[j];
                m.member(e.id)
                    .is_some_and(|x| x.identity == e && x.state == MemberState::Alive)
            })
        })
    }

    /// Approximate fraction of (active observer, other active member)
    /// pairs known: live-member counts against the expected count (exact
    /// as long as nobody crashed, which holds during warm-up; O(N)).
    pub fn known_fraction(&self) -> f64 {
        let act: Vec<usize> = (0..self.len()).filter(|&i| self.active[i]).collect();
        if act.len() < 2 {
            return 1.0;
        }
        let want = act.len() - 1;
        let known: usize = act
            .iter()
            .map(|&i| self.membership(i).num_live_members().min(want))
            .sum();
        known as f64 / (act.len() * want) as f64
    }

    /// Runs in `step`s until [`Cluster::converged`] or `max` elapsed;
    /// returns the time it took.
    pub fn run_until_converged(&mut self, max: Duration, step: Duration) -> Option<Duration> {
        let start = self.now();
        loop {
            if self.converged() {
                return Some(self.now() - start);
            }
            if self.now() - start >= max {
                return None;
            }
            self.run_for(step);
        }
    }

    /// Crashes slot `i`.
    pub fn crash(&mut self, i: usize) {
        self.stop(i);
        self.crashes.push((self.identities[i], self.now()));
    }

    /// Stalls slot `i` for `d` (it stays healthy).
    pub fn pause(&mut self, i: usize, d: Duration) {
        self.net.pause(i, d);
    }

    /// Gracefully leaves slot `i` (the node keeps running to gossip it).
    pub fn leave(&mut self, i: usize) {
        let now = self.now();
        self.net
            .with_node(i, |node, now| node.m.leave(to_instant(now)));
        self.active[i] = false;
        self.down_since
            .entry(key(self.identities[i]))
            .or_insert(now);
    }

    /// Stops slot `i` silently without counting it as a crash (e.g. after
    /// a completed leave).
    pub fn stop(&mut self, i: usize) {
        let now = self.now();
        self.net.crash(i);
        self.active[i] = false;
        self.down_since
            .entry(key(self.identities[i]))
            .or_insert(now);
    }

    /// Restarts slot `i` with the same id and the next generation, at a new
    /// address if `new_addr`, and joins through `seeds` (slot indices).
    pub fn restart(&mut self, i: usize, new_addr: bool, seeds: &[usize]) {
        let now = self.now();
        let old = self.identities[i];
        self.down_since.entry(key(old)).or_insert(now);
        let identity = Identity {
            id: old.id,
            generation: old.generation + 1,
        };
        let addr = if new_addr {
            let a = addr_of(self.next_addr);
            self.next_addr += 1;
            a
        } else {
            self.net.addr(i)
        };
        self.versions[i] += 1;
        let node = self.make_node(i, identity, addr, self.versions[i]);
        self.identities[i] = identity;
        self.active[i] = true;
        self.net.restart(i, addr, node);
        self.join(i, seeds);
    }

    /// Replaces slot `i` by a brand-new node (fresh id, new address) and
    /// joins it through `seeds` (slot indices).
    pub fn restart_as_new(&mut self, i: usize, seeds: &[usize]) {
        let now = self.now();
        let old = self.identities[i];
        self.down_since.entry(key(old)).or_insert(now);
        self.next_id += 1;
        let identity = Identity {
            id: NodeId(self.next_id),
            generation: 1,
        };
        let addr = addr_of(self.next_addr);
        self.next_addr += 1;
        self.versions[i] = 1;
        let node = self.make_node(i, identity, addr, 1);
        self.identities[i] = identity;
        self.active[i] = true;
        self.net.restart(i, addr, node);
        self.join(i, seeds);
    }

    /// Publishes a new metadata version from slot `i` (tracked for
    /// dissemination metrics).
    pub fn bump_metadata(&mut self, i: usize) {
        self.versions[i] += 1;
        let v = self.versions[i];
        let region = (i % 3) as u8;
        let md = metadata(v, region, &format!("node-{i}"));
        let done = self.net.with_node(i, |node, now| {
            node.m.set_metadata(to_instant(now), md).is_ok()
        });
        if done == Some(true) {
            self.updates.push(TrackedUpdate {
                identity: self.identities[i],
                version: v,
                t: self.now(),
            });
        }
    }

    /// Enables or disables observation logging on every node.
    pub fn set_recording(&mut self, on: bool) {
        for i in 0..self.len() {
            // Crashed nodes are not reachable through with_node; that's fine.
            self.net.with_node(i, |node, _| node.recording = on);
        }
    }

    /// Per-observer detection delays (seconds) of every crash, over the
    /// currently active observers that had joined before the crash, plus
    /// the number of (crash, observer) pairs never detected.
    pub fn detection_times(&self) -> (Vec<f64>, usize) {
        let mut out = Vec::new();
        let mut missing = 0;
        for &(who, tc) in &self.crashes {
            for j in (0..self.len()).filter(|&j| self.active[j]) {
                let node = self.net.node(j);
                if node.m.local_member().identity.id == who.id {
                    continue;
                }
                let d = node.log.iter().find(|o| {
                    o.kind == ObsKind::Dead
                        && o.id == who.id
                        && o.generation == who.generation
                        && o.t >= tc
                });
                match d {
                    Some(o) => out.push((o.t - tc).as_secs_f64()),
                    None => {
                        // Observers that joined after the crash may never
                        // have known the crashed member.
                        if node
                            .log
                            .iter()
                            .any(|o| o.id == who.id && o.generation == who.generation)
                        {
                            missing += 1;
                        }
                    }
                }
            }
        }
        (out, missing)
    }

    /// False positives: (distinct healthy members that someone declared
    /// dead, total such declarations).
    pub fn false_positives(&self) -> (usize, usize) {
        let mut members = std::collections::BTreeSet::new();
        let mut events = 0;
        for j in 0..self.len() {
            for o in &self.net.node(j).log {
                if o.kind != ObsKind::Dead {
                    continue;
                }
                let healthy = match self.down_since.get(&(o.id, o.generation)) {
                    None => true,
                    Some(&t) => o.t < t,
                };
                if healthy {
                    members.insert((o.id, o.generation));
                    events += 1;
                }
            }
        }
        (members.len(), events)
    }

    /// Dissemination of tracked metadata updates: for each update the time
    /// until every active observer had it (seconds), every per-observer
    /// delay, and the number of updates that never reached everyone.
    pub fn dissemination(&self) -> (Vec<f64>, Vec<f64>, usize) {
        let subjects: std::collections::BTreeSet<(NodeId, u64)> =
            self.updates.iter().map(|u| key(u.identity)).collect();
        let mut coverage = Vec::new();
        let mut per_observer = Vec::new();
        let mut incomplete = 0;
        // observer -> subject -> [(t, version)]
        let mut seen: Vec<SeenMap> = Vec::with_capacity(self.len());
        for j in 0..self.len() {
            let mut map: HashMap<(NodeId, u64), Vec<(Duration, u64)>> = HashMap::new();
            for o in &self.net.node(j).log {
                if o.kind == ObsKind::Seen && subjects.contains(&(o.id, o.generation)) {
                    map.entry((o.id, o.generation))
                        .or_default()
                        .push((o.t, o.version));
                }
            }
            seen.push(map);
        }
        for u in &self.updates {
            let mut worst = Duration::ZERO;
            let mut complete = true;
            for j in (0..self.len()).filter(|&j| self.active[j]) {
                if self.identities[j].id == u.identity.id {
                    continue;
                }
                let got = seen[j]
                    .get(&key(u.identity))
                    .and_then(|v| v.iter().find(|(t, ver)| *ver >= u.version && *t >= u.t));
                match got {
                    Some((t, _)) => {
                        let d = *t - u.t;
                        per_observer.push(d.as_secs_f64());
                        worst = worst.max(d);
                    }
                    None => complete = false,
                }
            }
            if complete {
                coverage.push(worst.as_secs_f64());
            } else {
                incomplete += 1;
            }
        }
        (coverage, per_observer, incomplete)
    }

    /// Mean payload bytes sent per active member per second over `window`
    /// (call [`Network::reset_stats`] at the start of the window).
    pub fn bytes_per_member_per_s(&self, window: Duration) -> f64 {
        let act: Vec<usize> = (0..self.len()).filter(|&i| self.active[i]).collect();
        if act.is_empty() || window.is_zero() {
            return 0.0;
        }
        let total: u64 = act.iter().map(|&i| self.net.stats(i).bytes_sent).sum();
        total as f64 / act.len() as f64 / window.as_secs_f64()
    }

    /// A deterministic random number generator for scenario decisions.
    pub fn rng(&mut self) -> &mut ChaCha8Rng {
        &mut self.rng
    }

    /// Random active slot, excluding `exclude`.
    pub fn random_active(&mut self, exclude: &[usize]) -> Option<usize> {
        let c: Vec<usize> = (0..self.len())
            .filter(|&i| self.active[i] && !exclude.contains(&i))
            .collect();
        if c.is_empty() {
            None
        } else {
            Some(c[self.rng.random_range(0..c.len())])
        }
    }
}

/// subject -> [(time, version)] seen by one observer.
type SeenMap = HashMap<(NodeId, u64), Vec<(Duration, u64)>>;

fn key(i: Identity) -> (NodeId, u64) {
    (i.id, i.generation)
}

/// Options of the standard measurement scenario (see `run_standard`).
#[derive(Clone, Debug)]
pub struct StandardOptions {
    /// Cluster size.
    pub nodes: usize,
    /// Datagram loss rate.
    pub loss: f64,
    /// Seed.
    pub seed: u64,
    /// Measured period after warm-up.
    pub duration: Duration,
    /// Nodes crashed during the first half of the measured period.
    pub crashes: usize,
    /// A random member publishes new metadata this often.
    pub update_every: Duration,
    /// Stalls: (nodes, period, stall length).
    pub stalls: Option<(usize, Duration, Duration)>,
    /// Start from a converged view instead of simulating every join
    /// (default: only above 1,000 nodes).
    pub preload: bool,
    /// Protocol configuration.
    pub config: Config,
}

impl StandardOptions {
    /// Defaults for `nodes`, `loss`, `seed`: 300 s measured, N/200 crashes
    /// (at least one), one metadata update every 2 s, no stalls.
    pub fn new(nodes: usize, loss: f64, seed: u64) -> Self {
        StandardOptions {
            nodes,
            loss,
            seed,
            duration: Duration::from_secs(300),
            crashes: (nodes / 200).max(1),
            update_every: Duration::from_secs(2),
            stalls: None,
            preload: nodes > 1000,
            config: Config::default(),
        }
    }
}

/// Raw results of a standard run.
pub struct StandardResult {
    /// Per-(crash, observer) detection delays, seconds.
    pub detect: Vec<f64>,
    /// Crash/observer pairs never detected.
    pub undetected: usize,
    /// Distinct healthy members declared dead / number of declarations.
    pub false_positives: (usize, usize),
    /// Per-update time until every member had it, seconds.
    pub coverage: Vec<f64>,
    /// Per-(update, observer) delays, seconds.
    pub per_observer: Vec<f64>,
    /// Updates that never reached everyone.
    pub incomplete: usize,
    /// Payload bytes per member per second during the measured window.
    pub bytes_per_member_per_s: f64,
    /// Of which over the reliable channel (push-pull).
    pub reliable_bytes_per_member_per_s: f64,
    /// Messages per member per second.
    pub msgs_per_member_per_s: f64,
    /// Time the initial cluster took to converge after the first join.
    pub warmup: Duration,
    /// Largest member table / tombstone count / broadcast queue seen at the end.
    pub max_state: (usize, usize, usize),
}

/// The standard scenario: bootstrap, warm up until converged, then measure
/// for `duration` while crashing `crashes` random nodes at random times in
/// the first half and publishing a metadata update every `update_every`.
pub fn run_standard(o: &StandardOptions) -> StandardResult {
    let mut copts = ClusterOptions::new(o.nodes, o.loss, o.seed);
    copts.config = o.config.clone();
    let mut c = Cluster::new(copts);
    c.set_recording(false);
    if o.preload {
        c.preload();
    } else {
        c.bootstrap();
    }
    // Warm up until (almost) every member knows every other one: the last
    // few epidemic misses are only repaired by push-pull, which at large N
    // runs every few minutes, so 99.9 % is enough to start measuring.
    let cap = c.now() + Duration::from_secs(300);
    let step = Duration::from_secs((o.nodes as u64 / 250).max(2));
    while c.now() < cap && c.known_fraction() < 0.999 {
        c.run_for(step);
    }
    let warmup = c.now();
    c.run_for(Duration::from_secs(10));
    c.set_recording(true);
    c.net.reset_stats();
    let start = c.now();
    let end = start + o.duration;

    // Plan crashes and stalls deterministically.
    let mut crash_plan: Vec<(Duration, usize)> = Vec::new();
    let mut victims = Vec::new();
    for _ in 0..o.crashes.min(o.nodes.saturating_sub(2)) {
        if let Some(v) = c.random_active(&victims) {
            victims.push(v);
            let at = c.rng().random_range(0.05..0.5f64);
            crash_plan.push((start + o.duration.mul_f64(at), v));
        }
    }
    crash_plan.sort();
    let stallers: Vec<usize> = match o.stalls {
        Some((k, _, _)) => (0..k).filter_map(|_| c.random_active(&victims)).collect(),
        None => Vec::new(),
    };
    let mut next_update = start + Duration::from_secs(1);
    let mut next_stall = start + Duration::from_secs(5);
    let mut ci = 0;
    let tick = Duration::from_millis(100);
    while c.now() < end {
        let t = (c.now() + tick).min(end);
        c.run_until(t);
        while ci < crash_plan.len() && crash_plan[ci].0 <= c.now() {
            c.crash(crash_plan[ci].1);
            ci += 1;
        }
        if c.now() >= next_update && c.now() + Duration::from_secs(20) < end {
            if let Some(i) = c.random_active(&[]) {
                c.bump_metadata(i);
            }
            next_update += o.update_every;
        }
        if let Some((_, every, len)) = o.stalls
            && c.now() >= next_stall
        {
            for &s in &stallers {
                if c.is_active(s) {
                    c.pause(s, len);
                }
            }
            next_stall += every;
        }
    }
    let (detect, undetected) = c.detection_times();
    let (coverage, per_observer, incomplete) = c.dissemination();
    let mut max_state = (0, 0, 0);
    for i in (0..c.len()).filter(|&i| c.is_active(i)) {
        let s = c.membership(i).state_sizes();
        max_state = (
            max_state.0.max(s.0),
            max_state.1.max(s.1),
            max_state.2.max(s.2),
        );
    }
    StandardResult {
        detect,
        undetected,
        false_positives: c.false_positives(),
        coverage,
        per_observer,
        incomplete,
        bytes_per_member_per_s: c.bytes_per_member_per_s(o.duration),
        reliable_bytes_per_member_per_s: {
            let act: Vec<usize> = (0..c.len()).filter(|&i| c.is_active(i)).collect();
            let tot: u64 = act
                .iter()
                .map(|&i| c.net.stats(i).reliable_bytes_sent)
                .sum();
            tot as f64 / act.len().max(1) as f64 / o.duration.as_secs_f64()
        },
        msgs_per_member_per_s: {
            let act: Vec<usize> = (0..c.len()).filter(|&i| c.is_active(i)).collect();
            let tot: u64 = act.iter().map(|&i| c.net.stats(i).msgs_sent).sum();
            tot as f64 / act.len().max(1) as f64 / o.duration.as_secs_f64()
        },
        warmup,
        max_state,
    }
}
