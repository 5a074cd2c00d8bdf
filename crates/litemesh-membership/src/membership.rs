//! The SWIM + Lifeguard state machine.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tracing::{debug, trace, warn};

use crate::broadcast::Broadcasts;
use crate::config::Config;
use crate::time::Instant;
use crate::wire::{
    self, DecodeError, Envelope, Identity, MAX_METADATA_LEN, Member, MemberState, Message,
    Metadata, NodeId, PushPullKind, Record, Update,
};

/// A message the driver must send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Destination address.
    pub dst: SocketAddr,
    /// Encoded message (first byte is the wire version).
    pub payload: Vec<u8>,
    /// `true` for full-state push-pull: send over the reliable channel
    /// (stream), it may exceed the datagram budget. `false`: one datagram of
    /// at most [`Config::max_datagram`] bytes, loss is tolerated.
    pub reliable: bool,
}

/// Membership change reported to the application.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A member (or a new generation of a known id, which replaces the old
    /// one) became known and alive.
    Joined(Member),
    /// A suspected or dead member proved to be alive again.
    Alive(Member),
    /// A member failed a probe and is suspected.
    Suspect(Member),
    /// A member was declared dead.
    Dead(Member),
    /// A member left gracefully.
    Left(Member),
    /// An alive member published new metadata.
    MetadataChanged(Member),
}

/// Metadata larger than [`MAX_METADATA_LEN`] bytes was rejected.
#[derive(Debug, thiserror::Error)]
#[error("metadata of {0} bytes exceeds the {MAX_METADATA_LEN}-byte limit")]
pub struct MetadataTooLarge(pub usize);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    ProbeTick,
    ProbeTimeout(u64),
    ProbeEnd(u64),
    RelayTimeout(u64),
    Suspicion(NodeId),
    Gossip,
    PushPull,
    Housekeeping,
    Reconnect,
    JoinRetry,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ProbePurpose {
    /// Round-robin failure detection.
    Regular,
    /// Last check of a suspect whose suspicion timer expired.
    Confirm,
}

struct Probe {
    target: NodeId,
    generation: u64,
    incarnation: u64,
    purpose: ProbePurpose,
    sent_at: Instant,
    acked: bool,
    nacks_expected: usize,
    nacks: usize,
}

struct Relay {
    requester: SocketAddr,
    requester_seq: u64,
    acked: bool,
}

struct Suspicion {
    start: Instant,
    originator: NodeId,
    confirmers: BTreeSet<NodeId>,
    deadline: Instant,
    confirming: bool,
    /// Failed last checks so far (two are needed, spaced apart).
    failed_checks: u8,
}

struct Entry {
    member: Member,
    state_change: Instant,
    suspicion: Option<Box<Suspicion>>,
    /// When we last told the member that we suspect it or hold it dead (so
    /// that it refutes).
    told: Option<Instant>,
}

struct Tombstone {
    generation: u64,
    incarnation: u64,
    left: bool,
    addr: SocketAddr,
    at: Instant,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    Joining {
        seeds: Vec<SocketAddr>,
        delay: Duration,
    },
    Joined,
    Left,
}

/// SWIM + Lifeguard membership of one node. See the crate docs for how to
/// drive it.
pub struct Membership {
    config: Config,
    me: Member,
    rng: ChaCha8Rng,
    members: BTreeMap<NodeId, Entry>,
    tombstones: BTreeMap<NodeId, Tombstone>,
    tomb_order: VecDeque<(Instant, NodeId, u64)>,
    broadcasts: Broadcasts,
    probe_order: Vec<NodeId>,
    probe_idx: usize,
    probes: BTreeMap<u64, Probe>,
    relays: BTreeMap<u64, Relay>,
    reconnects: BTreeMap<u64, (NodeId, Instant)>,
    next_seq: u64,
    timers: BTreeSet<(Instant, Timer)>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    /// Local health score, `0..max_lhm`; the multiplier is `score + 1`.
    lhm: u32,
    phase: Phase,
    /// Set while firing a batch of timers that were late (local stall).
    stalled: bool,
    /// Set while merging the full state received in answer to our join:
    /// everything in it is already known cluster-wide, so it is not
    /// re-gossiped (avoids a storm of N updates per join).
    quiet: bool,
    /// Cached number of alive/suspect members (`None` = recompute).
    live_count: std::cell::Cell<Option<usize>>,
    /// Members declared dead recently (still receive gossip).
    recently_dead: Vec<NodeId>,
    /// When we last introduced ourselves to an address that probed an
    /// identity we replaced (see `reintroduce`).
    reintroduced: BTreeMap<SocketAddr, Instant>,
}

impl Membership {
    /// Creates the state machine for the local node `identity`, reachable at
    /// `addr`. `seed` seeds all protocol randomness. Nothing happens until
    /// [`Membership::join`] is called.
    pub fn new(identity: Identity, addr: SocketAddr, config: Config, seed: u64) -> Self {
        Membership {
            me: Member {
                identity,
                addr,
                incarnation: 0,
                state: MemberState::Alive,
                metadata: Metadata::default(),
                rtt: None,
            },
            config,
            rng: ChaCha8Rng::seed_from_u64(seed),
            members: BTreeMap::new(),
            tombstones: BTreeMap::new(),
            tomb_order: VecDeque::new(),
            broadcasts: Broadcasts::default(),
            probe_order: Vec::new(),
            probe_idx: 0,
            probes: BTreeMap::new(),
            relays: BTreeMap::new(),
            reconnects: BTreeMap::new(),
            next_seq: 0,
            timers: BTreeSet::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            lhm: 0,
            phase: Phase::Idle,
            stalled: false,
            quiet: false,
            live_count: std::cell::Cell::new(Some(0)),
            recently_dead: Vec::new(),
            reintroduced: BTreeMap::new(),
        }
    }

    // ------------------------------------------------------------------
    // Public API
    // ------------------------------------------------------------------

    /// The local node's own record.
    pub fn local_member(&self) -> &Member {
        &self.me
    }

    /// Every known remote member (alive, suspect, dead or left, until reaped).
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values().map(|e| &e.member)
    }

    /// A remote member by id.
    pub fn member(&self, id: NodeId) -> Option<&Member> {
        self.members.get(&id).map(|e| &e.member)
    }

    /// Number of alive or suspect remote members.
    pub fn num_live_members(&self) -> usize {
        if let Some(n) = self.live_count.get() {
            return n;
        }
        let n = self
            .members
            .values()
            .filter(|e| is_live(e.member.state))
            .count();
        self.live_count.set(Some(n));
        n
    }

    fn states_changed(&self) {
        self.live_count.set(None);
    }

    /// Size of internal tables: (members incl. dead/left, tombstones,
    /// pending broadcasts). Exposed to check that state stays bounded.
    pub fn state_sizes(&self) -> (usize, usize, usize) {
        (
            self.members.len(),
            self.tombstones.len(),
            self.broadcasts.len(),
        )
    }

    /// Current local health multiplier (1 = healthy, up to `max_lhm`).
    pub fn health_multiplier(&self) -> u32 {
        self.lhm + 1
    }

    /// True once a seed answered (or `join` was called without seeds).
    pub fn is_joined(&self) -> bool {
        self.phase == Phase::Joined
    }

    /// True after [`Membership::leave`] once the Left notice has been
    /// gossiped the full retransmit count; the node can then be dropped.
    pub fn leave_complete(&self) -> bool {
        self.phase == Phase::Left && self.broadcasts.is_empty()
    }

    /// Sets the local metadata (bumps the incarnation and gossips it when
    /// already joined).
    pub fn set_metadata(
        &mut self,
        _now: Instant,
        metadata: Vec<u8>,
    ) -> Result<(), MetadataTooLarge> {
        let md = Metadata::new(metadata).map_err(|b| MetadataTooLarge(b.len()))?;
        if md == self.me.metadata {
            return Ok(());
        }
        self.me.metadata = md;
        if self.phase != Phase::Idle && self.phase != Phase::Left {
            self.me.incarnation += 1;
            self.broadcasts.push(Update::Alive(self.self_record()));
        }
        Ok(())
    }

    /// Pre-populates the view with members known from elsewhere (a peer
    /// list persisted by the previous run, static configuration, or a
    /// simulator building a large converged cluster), as if received in a
    /// full-state sync: each is added as alive at the given incarnation
    /// unless we know better, nothing is re-gossiped, `Joined` events are
    /// emitted. Call before or after [`Membership::join`].
    pub fn add_known_members(&mut self, now: Instant, members: impl IntoIterator<Item = Member>) {
        self.quiet = true;
        for m in members {
            self.apply_alive(
                now,
                Record {
                    id: m.identity.id,
                    generation: m.identity.generation,
                    incarnation: m.incarnation,
                    addr: m.addr,
                    state: MemberState::Alive,
                    metadata: m.metadata,
                },
            );
        }
        self.quiet = false;
    }

    /// Starts the protocol. With no seeds the node forms a cluster of its
    /// own; otherwise it sends a join (full-state push) to every seed and
    /// retries with exponential backoff until one answers.
    pub fn join(&mut self, now: Instant, seeds: &[SocketAddr]) {
        if self.phase == Phase::Left {
            warn!("join after leave ignored; create a new generation instead");
            return;
        }
        let seeds: Vec<SocketAddr> = seeds
            .iter()
            .copied()
            .filter(|s| *s != self.me.addr)
            .collect();
        if seeds.is_empty() {
            if self.phase != Phase::Joined {
                self.become_joined(now);
            }
            return;
        }
        let delay = self.config.join_retry_initial;
        for s in &seeds {
            self.send_push_pull(*s, PushPullKind::Join);
        }
        if self.phase != Phase::Joined {
            self.phase = Phase::Joining { seeds, delay };
            self.set_timer(now + delay, Timer::JoinRetry);
        }
    }

    /// Leaves gracefully: gossips a final `Left` notice (directly to a few
    /// members at once, then piggybacked) and stops probing. Keep driving
    /// the machine until [`Membership::leave_complete`] to spread it.
    pub fn leave(&mut self, now: Instant) {
        if self.phase == Phase::Left {
            return;
        }
        self.me.incarnation += 1;
        self.me.state = MemberState::Left;
        self.phase = Phase::Left;
        let update = Update::Left {
            id: self.me.identity.id,
            generation: self.me.identity.generation,
            incarnation: self.me.incarnation,
        };
        self.broadcasts.push(update);
        self.timers.clear();
        self.probes.clear();
        self.relays.clear();
        let n = self.config.gossip_fanout * 2;
        for addr in self.random_live_addrs(n, None) {
            self.send_gossip(addr, None);
        }
        self.set_timer(now + self.config.gossip_interval, Timer::Gossip);
    }

    /// Earliest instant at which [`Membership::handle_timeout`] must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|(t, _)| *t)
    }

    /// Next message to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Next membership event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Fires every timer due at `now`. Timers that are late by more than
    /// [`Config::stall_threshold`] indicate that this node itself was stalled;
    /// probe failures observed in such a batch are discarded and the local
    /// health multiplier is raised instead.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(&(first, _)) = self.timers.first() else {
            return;
        };
        if first > now {
            return;
        }
        self.stalled = now.saturating_duration_since(first) > self.config.stall_threshold;
        if self.stalled {
            warn!(
                late_ms = now.saturating_duration_since(first).as_millis() as u64,
                "timers fired late; assuming a local stall"
            );
            self.lhm_add(1);
            // Catch up on whatever was gossiped while we were frozen.
            if self.phase == Phase::Joined
                && let Some(addr) = self.random_live_addrs(1, None).pop()
            {
                self.send_push_pull(addr, PushPullKind::Push);
            }
        }
        // Bounded loop: handlers only schedule timers in the future, except
        // for zero-length configured durations.
        for _ in 0..100_000 {
            let Some(&(t, timer)) = self.timers.first() else {
                break;
            };
            if t > now {
                break;
            }
            self.timers.pop_first();
            self.fire(now, timer);
        }
        self.stalled = false;
    }

    /// Processes one received message (datagram or reliable) from `from`.
    /// Malformed input is rejected with an error and otherwise ignored.
    pub fn handle_message(
        &mut self,
        now: Instant,
        from: SocketAddr,
        bytes: &[u8],
    ) -> Result<(), DecodeError> {
        let env = match wire::decode(bytes, self.config.max_message_size) {
            Ok(env) => env,
            Err(e) => {
                debug!(%from, error = %e, "dropping undecodable message");
                return Err(e);
            }
        };
        if self.phase == Phase::Left || self.phase == Phase::Idle {
            return Ok(());
        }
        let Envelope { sender, message } = env;
        if sender.id == self.me.identity.id {
            return Ok(());
        }
        if let Some(e) = self.members.get(&sender.id)
            && e.member.identity.generation > sender.generation
        {
            trace!(%from, "message from an old generation ignored");
            return Ok(());
        }
        match message {
            Message::Ping {
                seq,
                target,
                target_generation,
                gossip,
            } => {
                self.apply_gossip(now, gossip);
                if target == self.me.identity.id && target_generation == self.me.identity.generation
                {
                    self.send_ack(from, seq);
                } else {
                    self.reintroduce(now, from, sender.id);
                }
            }
            Message::Ack { seq, gossip } => {
                self.apply_gossip(now, gossip);
                self.on_ack(now, from, sender, seq);
            }
            Message::Nack { seq } => {
                if let Some(p) = self.probes.get_mut(&seq) {
                    p.nacks += 1;
                }
            }
            Message::PingReq {
                seq,
                target,
                target_generation,
                target_addr,
                window_ms,
                suspected_incarnation,
                gossip,
            } => {
                self.apply_gossip(now, gossip);
                if let Some(si) = suspected_incarnation
                    && let Some(e) = self.members.get(&target)
                    && e.member.identity.generation == target_generation
                    && e.member.state == MemberState::Alive
                    && e.member.incarnation > si
                {
                    let rec = Update::Alive(Record {
                        id: target,
                        generation: target_generation,
                        incarnation: e.member.incarnation,
                        addr: e.member.addr,
                        state: MemberState::Alive,
                        metadata: e.member.metadata.clone(),
                    });
                    self.send_gossip(from, Some(rec));
                }
                let my_seq = self.next_seq();
                self.relays.insert(
                    my_seq,
                    Relay {
                        requester: from,
                        requester_seq: seq,
                        acked: false,
                    },
                );
                self.send_ping(target_addr, my_seq, target, target_generation, None);
                // Nack early enough to reach the requester before its window closes
                // even across regions.
                let wait = Duration::from_millis(u64::from(window_ms)).mul_f64(0.6);
                self.set_timer(now + wait, Timer::RelayTimeout(my_seq));
            }
            Message::Gossip { gossip } => self.apply_gossip(now, gossip),
            Message::PushPull { kind, members } => {
                self.quiet =
                    kind == PushPullKind::Reply && matches!(self.phase, Phase::Joining { .. });
                self.merge_state(now, sender.id, members);
                self.quiet = false;
                match kind {
                    PushPullKind::Join | PushPullKind::Push => {
                        self.send_push_pull(from, PushPullKind::Reply);
                    }
                    PushPullKind::Reply => {
                        if matches!(self.phase, Phase::Joining { .. }) {
                            debug!(%from, "join answered");
                            self.become_joined(now);
                        }
                    }
                }
            }
        }
        // After the message: if it was the sender's refutation, there is
        // nothing left to tell it.
        self.tell_if_suspected(now, from, sender);
        Ok(())
    }

    // ------------------------------------------------------------------
    // Timers
    // ------------------------------------------------------------------

    fn set_timer(&mut self, at: Instant, timer: Timer) {
        self.timers.insert((at, timer));
    }

    fn lhm_mult(&self) -> u32 {
        self.lhm + 1
    }

    fn lhm_add(&mut self, d: u32) {
        self.lhm = (self.lhm + d).min(self.config.max_lhm.saturating_sub(1));
    }

    fn lhm_sub(&mut self) {
        self.lhm = self.lhm.saturating_sub(1);
    }

    fn become_joined(&mut self, now: Instant) {
        self.phase = Phase::Joined;
        self.timers.retain(|(_, t)| *t != Timer::JoinRetry);
        self.broadcasts.push(Update::Alive(self.self_record()));
        let jitter = |rng: &mut ChaCha8Rng, d: Duration| d.mul_f64(rng.random_range(0.0..1.0));
        let pi = self.config.probe_interval;
        let gi = self.config.gossip_interval;
        let pp = self.config.push_pull_period(self.cluster_size());
        let ri = self.config.reconnect_interval;
        let t1 = now + jitter(&mut self.rng, pi);
        let t2 = now + jitter(&mut self.rng, gi);
        let t3 = now + pp / 2 + jitter(&mut self.rng, pp);
        let t4 = now + jitter(&mut self.rng, pi);
        let t5 = now + ri + jitter(&mut self.rng, ri);
        self.set_timer(t1, Timer::ProbeTick);
        self.set_timer(t2, Timer::Gossip);
        self.set_timer(t3, Timer::PushPull);
        self.set_timer(t4, Timer::Housekeeping);
        self.set_timer(t5, Timer::Reconnect);
    }

    fn fire(&mut self, now: Instant, timer: Timer) {
        match timer {
            Timer::ProbeTick => {
                if self.phase != Phase::Joined {
                    return;
                }
                self.start_regular_probe(now);
                let next = now + self.config.probe_interval * self.lhm_mult();
                self.set_timer(next, Timer::ProbeTick);
            }
            Timer::ProbeTimeout(seq) => self.probe_timeout(seq),
            Timer::ProbeEnd(seq) => self.probe_end(now, seq),
            Timer::RelayTimeout(seq) => {
                if let Some(r) = self.relays.remove(&seq)
                    && !r.acked
                {
                    self.send(
                        r.requester,
                        Message::Nack {
                            seq: r.requester_seq,
                        },
                    );
                }
            }
            Timer::Suspicion(id) => self.suspicion_expired(now, id),
            Timer::Gossip => {
                self.gossip_round(now);
                if self.phase == Phase::Joined
                    || (self.phase == Phase::Left && !self.broadcasts.is_empty())
                {
                    self.set_timer(now + self.config.gossip_interval, Timer::Gossip);
                }
            }
            Timer::PushPull => {
                if self.phase != Phase::Joined {
                    return;
                }
                if let Some(addr) = self.random_live_addrs(1, None).pop() {
                    self.send_push_pull(addr, PushPullKind::Push);
                }
                let p = self.config.push_pull_period(self.cluster_size());
                let next = now + p.mul_f64(self.rng.random_range(0.75..1.25));
                self.set_timer(next, Timer::PushPull);
            }
            Timer::Housekeeping => {
                self.housekeeping(now);
                if self.phase == Phase::Joined {
                    self.set_timer(now + self.config.probe_interval * 5, Timer::Housekeeping);
                }
            }
            Timer::Reconnect => {
                if self.phase != Phase::Joined {
                    return;
                }
                self.reconnect(now);
                self.set_timer(now + self.config.reconnect_interval, Timer::Reconnect);
            }
            Timer::JoinRetry => {
                if let Phase::Joining { seeds, delay } = self.phase.clone() {
                    debug!(attempt_delay_ms = delay.as_millis() as u64, "retrying join");
                    for s in &seeds {
                        self.send_push_pull(*s, PushPullKind::Join);
                    }
                    let delay = (delay * 2).min(self.config.join_retry_max);
                    self.phase = Phase::Joining { seeds, delay };
                    self.set_timer(now + delay, Timer::JoinRetry);
                }
            }
        }
    }

    // ------------------------------------------------------------------
    // Probing
    // ------------------------------------------------------------------

    fn next_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    fn next_probe_target(&mut self) -> Option<NodeId> {
        for _ in 0..2 {
            while self.probe_idx < self.probe_order.len() {
                let id = self.probe_order[self.probe_idx];
                self.probe_idx += 1;
                if self
                    .members
                    .get(&id)
                    .is_some_and(|e| is_live(e.member.state))
                {
                    return Some(id);
                }
            }
            self.probe_order = self
                .members
                .iter()
                .filter(|(_, e)| is_live(e.member.state))
                .map(|(id, _)| *id)
                .collect();
            self.probe_order.shuffle(&mut self.rng);
            self.probe_idx = 0;
        }
        None
    }

    fn start_regular_probe(&mut self, now: Instant) {
        let Some(target) = self.next_probe_target() else {
            return;
        };
        self.start_probe(now, target, ProbePurpose::Regular);
    }

    fn start_probe(&mut self, now: Instant, target: NodeId, purpose: ProbePurpose) {
        let Some(e) = self.members.get(&target) else {
            return;
        };
        let (addr, generation, incarnation) = (
            e.member.addr,
            e.member.identity.generation,
            e.member.incarnation,
        );
        let seq = self.next_seq();
        self.probes.insert(
            seq,
            Probe {
                target,
                generation,
                incarnation,
                purpose,
                sent_at: now,
                acked: false,
                nacks_expected: 0,
                nacks: 0,
            },
        );
        // Lifeguard's buddy system: a probe of a member we suspect carries
        // the suspicion, so that a live target refutes in its ack.
        let extra = (purpose == ProbePurpose::Confirm)
            .then_some(Update::Suspect {
                id: target,
                generation,
                incarnation,
                from: self.me.identity.id,
            })
            .or_else(|| self.accusation_of(target, generation));
        self.send_ping(addr, seq, target, generation, extra);
        let m = self.lhm_mult();
        self.set_timer(
            now + self.config.probe_timeout * m,
            Timer::ProbeTimeout(seq),
        );
        self.set_timer(now + self.config.probe_interval * m, Timer::ProbeEnd(seq));
    }

    fn probe_timeout(&mut self, seq: u64) {
        let Some(p) = self.probes.get(&seq) else {
            return;
        };
        if p.acked {
            return;
        }
        let target = p.target;
        let Some(e) = self.members.get(&target) else {
            return;
        };
        let (addr, generation) = (e.member.addr, e.member.identity.generation);
        let m = self.lhm_mult();
        let window = (self.config.probe_interval * m)
            .saturating_sub(self.config.probe_timeout * m)
            .max(Duration::from_millis(1));
        let window_ms = u32::try_from(window.as_millis()).unwrap_or(u32::MAX);
        let suspected_incarnation = (p.purpose == ProbePurpose::Confirm).then_some(p.incarnation);
        let helpers = self.random_live_addrs(self.config.indirect_checks, Some(target));
        trace!(target = %target, helpers = helpers.len(), "direct probe timed out");
        for h in &helpers {
            let msg = Message::PingReq {
                seq,
                target,
                target_generation: generation,
                target_addr: addr,
                window_ms,
                suspected_incarnation,
                gossip: Vec::new(),
            };
            self.send_with_gossip(*h, msg, None);
        }
        if let Some(p) = self.probes.get_mut(&seq) {
            p.nacks_expected = helpers.len();
        }
    }

    fn probe_end(&mut self, now: Instant, seq: u64) {
        let Some(p) = self.probes.remove(&seq) else {
            return;
        };
        if p.acked {
            return;
        }
        if self.stalled {
            debug!(target = %p.target, "ignoring probe failure observed during a local stall");
            if p.purpose == ProbePurpose::Confirm {
                self.rearm_suspicion(now, p.target);
            }
            return;
        }
        // Lifeguard: a failed probe whose helpers did not even send their
        // nacks hints that we are the unhealthy side (one point per missing
        // nack). If they all nacked, the target is the problem, not us.
        if p.nacks_expected > 0 {
            self.lhm_add((p.nacks_expected - p.nacks.min(p.nacks_expected)) as u32);
        } else {
            self.lhm_add(1);
        }
        let Some(e) = self.members.get(&p.target) else {
            return;
        };
        if e.member.identity.generation != p.generation {
            return;
        }
        match p.purpose {
            ProbePurpose::Regular => {
                if e.member.state == MemberState::Suspect {
                    // Our own failed probe is an independent confirmation
                    // of a suspicion we learned from someone else.
                    let inc = e.member.incarnation;
                    self.apply_suspect(now, p.target, p.generation, inc, self.me.identity.id);
                } else if e.member.state == MemberState::Alive {
                    debug!(target = %p.target, "probe failed, suspecting");
                    let inc = e.member.incarnation;
                    let addr = e.member.addr;
                    self.apply_suspect(now, p.target, p.generation, inc, self.me.identity.id);
                    // Tell the suspect directly so it can refute quickly.
                    let u = Update::Suspect {
                        id: p.target,
                        generation: p.generation,
                        incarnation: inc,
                        from: self.me.identity.id,
                    };
                    self.send_gossip(addr, Some(u));
                }
            }
            ProbePurpose::Confirm => {
                if e.member.state == MemberState::Suspect && e.member.incarnation <= p.incarnation {
                    let inc = e.member.incarnation;
                    let gap = self.config.probe_interval * 2;
                    let first = self
                        .members
                        .get_mut(&p.target)
                        .and_then(|e| e.suspicion.as_mut())
                        .filter(|s| s.failed_checks == 0)
                        .map(|s| {
                            // One more check after a gap, so that a member
                            // that happens to stall during the first one
                            // (a GC pause) is not declared dead for it.
                            s.failed_checks = 1;
                            s.confirming = false;
                            s.deadline = now + gap;
                        });
                    if first.is_some() {
                        self.set_timer(now + gap, Timer::Suspicion(p.target));
                    } else {
                        self.declare_dead(now, p.target, p.generation, inc, self.me.identity.id);
                    }
                }
            }
        }
    }

    fn on_ack(&mut self, now: Instant, from: SocketAddr, sender: Identity, seq: u64) {
        if let Some(p) = self.probes.get_mut(&seq) {
            if p.acked {
                return;
            }
            p.acked = true;
            let direct = sender.id == p.target && sender.generation == p.generation;
            let (target, purpose, sample) = (
                p.target,
                p.purpose,
                now.saturating_duration_since(p.sent_at),
            );
            self.lhm_sub();
            if direct && let Some(e) = self.members.get_mut(&target) {
                e.member.rtt = Some(match e.member.rtt {
                    None => sample,
                    Some(r) => r.mul_f64(0.875) + sample.mul_f64(0.125),
                });
            }
            if purpose == ProbePurpose::Confirm {
                // It answered: do not declare it dead. If its refutation got
                // lost, suspect it again for the minimum timeout.
                self.rearm_suspicion(now, target);
            }
        } else if let Some(r) = self.relays.get_mut(&seq) {
            if r.acked {
                return;
            }
            r.acked = true;
            let (requester, rseq) = (r.requester, r.requester_seq);
            self.send_ack(requester, rseq);
        } else if let Some((id, _)) = self.reconnects.remove(&seq) {
            if sender.id != id {
                return;
            }
            {
                // First-hand evidence that a reaped member is alive: restore
                // it as dead (so our state tells it to refute) instead of
                // letting the tombstone block it forever.
                if let Some(t) = self.tombstones.get(&id)
                    && t.generation == sender.generation
                    && !t.left
                    && !self.members.contains_key(&id)
                {
                    let t = self.tombstones.remove(&id).expect("checked");
                    self.members.insert(
                        id,
                        Entry {
                            member: Member {
                                identity: sender,
                                addr: from,
                                incarnation: t.incarnation,
                                state: MemberState::Dead,
                                metadata: Metadata::default(),
                                rtt: None,
                            },
                            state_change: now,
                            suspicion: None,
                            told: None,
                        },
                    );
                }
                debug!(member = %id, %from, "dead member answered a reconnect probe; exchanging state");
                self.send_push_pull(from, PushPullKind::Push);
            }
        }
    }

    // ------------------------------------------------------------------
    // Suspicion (Lifeguard)
    // ------------------------------------------------------------------

    fn suspicion_timeout(&self, confirmations: usize) -> Duration {
        let n = self.cluster_size();
        let min = self.config.suspicion_min(n);
        let max = self.config.suspicion_max(n);
        let mut k = self.config.suspicion_confirmations;
        if n < k + 2 {
            k = 0;
        }
        if k == 0 || confirmations >= k {
            return min;
        }
        let frac = ((confirmations + 1) as f64).ln() / ((k + 1) as f64).ln();
        let t = max.as_secs_f64() - (max.as_secs_f64() - min.as_secs_f64()) * frac;
        Duration::from_secs_f64(t.max(min.as_secs_f64()))
    }

    fn suspicion_expired(&mut self, now: Instant, id: NodeId) {
        let Some(e) = self.members.get_mut(&id) else {
            return;
        };
        let Some(s) = e.suspicion.as_mut() else {
            return;
        };
        if s.deadline > now || s.confirming {
            return;
        }
        s.confirming = true;
        debug!(member = %id, "suspicion timeout; last direct check before declaring dead");
        self.start_probe(now, id, ProbePurpose::Confirm);
    }

    fn rearm_suspicion(&mut self, now: Instant, id: NodeId) {
        let min = self.config.suspicion_min(self.cluster_size());
        if let Some(e) = self.members.get_mut(&id)
            && let Some(s) = e.suspicion.as_mut()
        {
            s.confirming = false;
            s.deadline = now + min;
            self.timers.insert((now + min, Timer::Suspicion(id)));
        }
    }

    // ------------------------------------------------------------------
    // Applying updates
    // ------------------------------------------------------------------

    fn apply_gossip(&mut self, now: Instant, gossip: Vec<Update>) {
        for u in gossip {
            match u {
                Update::Alive(r) => self.apply_alive(now, r),
                Update::Suspect {
                    id,
                    generation,
                    incarnation,
                    from,
                } => self.apply_suspect(now, id, generation, incarnation, from),
                Update::Dead {
                    id,
                    generation,
                    incarnation,
                    from,
                } => self.declare_dead(now, id, generation, incarnation, from),
                Update::Left {
                    id,
                    generation,
                    incarnation,
                } => self.apply_left(now, id, generation, incarnation),
            }
        }
    }

    fn rebroadcast(&mut self, update: Update) {
        if !self.quiet {
            self.broadcasts.push(update);
        }
    }

    fn refute(&mut self, incarnation: u64) {
        self.me.incarnation = self.me.incarnation.max(incarnation) + 1;
        debug!(
            incarnation = self.me.incarnation,
            "refuting suspicion about myself"
        );
        self.broadcasts.push(Update::Alive(self.self_record()));
    }

    /// Handles a claim about ourselves; returns true if it was about us.
    fn about_me(
        &mut self,
        id: NodeId,
        generation: u64,
        incarnation: u64,
        accusation: bool,
    ) -> bool {
        if id != self.me.identity.id {
            return false;
        }
        if !accusation || generation != self.me.identity.generation || self.phase == Phase::Left {
            return true;
        }
        if incarnation >= self.me.incarnation {
            self.lhm_add(1);
            self.refute(incarnation);
        } else if !self.broadcasts.has_fresh(id) {
            // Stale accusation: someone missed our refutation; repeat it.
            self.broadcasts.push(Update::Alive(self.self_record()));
        }
        true
    }

    fn tombstone_blocks(
        &mut self,
        id: NodeId,
        generation: u64,
        incarnation: u64,
        alive: bool,
    ) -> bool {
        let Some(t) = self.tombstones.get(&id) else {
            return false;
        };
        if generation < t.generation
            || (generation == t.generation && (t.left || !alive || incarnation <= t.incarnation))
        {
            return true;
        }
        self.tombstones.remove(&id);
        false
    }

    fn apply_alive(&mut self, now: Instant, r: Record) {
        if r.id == self.me.identity.id {
            if r.generation == self.me.identity.generation
                && r.incarnation >= self.me.incarnation
                && (r.incarnation > self.me.incarnation
                    || r.addr != self.me.addr
                    || r.metadata != self.me.metadata)
                && self.phase != Phase::Left
            {
                // Someone spreads a different version of us; override it.
                self.refute(r.incarnation);
            }
            return;
        }
        if self.tombstone_blocks(r.id, r.generation, r.incarnation, true) {
            return;
        }
        let make = |r: &Record| Member {
            identity: Identity {
                id: r.id,
                generation: r.generation,
            },
            addr: r.addr,
            incarnation: r.incarnation,
            state: MemberState::Alive,
            metadata: r.metadata.clone(),
            rtt: None,
        };
        match self.members.get_mut(&r.id) {
            None => {
                debug!(member = %r.id, generation = r.generation, "member joined");
                let member = make(&r);
                self.members.insert(
                    r.id,
                    Entry {
                        member: member.clone(),
                        state_change: now,
                        suspicion: None,
                        told: None,
                    },
                );
                // Insert at a random not-yet-probed position (swap, O(1)).
                self.probe_order.push(r.id);
                let last = self.probe_order.len() - 1;
                let pos = self.rng.random_range(self.probe_idx.min(last)..=last);
                self.probe_order.swap(pos, last);
                self.states_changed();
                self.events.push_back(Event::Joined(member));
            }
            Some(e) => {
                let cur = e.member.identity.generation;
                if r.generation < cur {
                    return;
                }
                if r.generation > cur {
                    debug!(member = %r.id, generation = r.generation, "new generation replaces the old one");
                    let member = make(&r);
                    e.member = member.clone();
                    e.state_change = now;
                    e.suspicion = None;
                    self.live_count.set(None);
                    self.events.push_back(Event::Joined(member));
                } else {
                    if e.member.state == MemberState::Left || r.incarnation <= e.member.incarnation
                    {
                        return;
                    }
                    let was = e.member.state;
                    let meta_changed = e.member.metadata != r.metadata;
                    e.member.incarnation = r.incarnation;
                    e.member.addr = r.addr;
                    e.member.metadata = r.metadata.clone();
                    e.member.state = MemberState::Alive;
                    e.suspicion = None;
                    if was != MemberState::Alive {
                        e.state_change = now;
                        self.live_count.set(None);
                        self.events.push_back(Event::Alive(e.member.clone()));
                    }
                    if meta_changed {
                        self.events
                            .push_back(Event::MetadataChanged(e.member.clone()));
                    }
                }
            }
        }
        self.rebroadcast(Update::Alive(r));
    }

    fn apply_suspect(
        &mut self,
        now: Instant,
        id: NodeId,
        generation: u64,
        incarnation: u64,
        from: NodeId,
    ) {
        if self.about_me(id, generation, incarnation, true) {
            return;
        }
        let n_timeout0 = self.suspicion_timeout(0);
        let Some(e) = self.members.get_mut(&id) else {
            return;
        };
        if e.member.identity.generation != generation || incarnation < e.member.incarnation {
            return;
        }
        match e.member.state {
            MemberState::Alive => {
                e.member.state = MemberState::Suspect;
                e.member.incarnation = incarnation;
                e.state_change = now;
                let deadline = now + n_timeout0;
                e.suspicion = Some(Box::new(Suspicion {
                    start: now,
                    originator: from,
                    confirmers: BTreeSet::new(),
                    deadline,
                    confirming: false,
                    failed_checks: 0,
                }));
                self.events.push_back(Event::Suspect(e.member.clone()));
                self.timers.insert((deadline, Timer::Suspicion(id)));
            }
            MemberState::Suspect => {
                e.member.incarnation = incarnation;
                let Some(s) = e.suspicion.as_mut() else {
                    return;
                };
                if from == s.originator || !s.confirmers.insert(from) {
                    return;
                }
                let c = s.confirmers.len();
                let start = s.start;
                let timeout = self.suspicion_timeout(c);
                if let Some(s) = self.members.get_mut(&id).and_then(|e| e.suspicion.as_mut()) {
                    let deadline = start + timeout;
                    if deadline < s.deadline {
                        s.deadline = deadline;
                        if !s.confirming {
                            self.timers
                                .insert((deadline.max(now), Timer::Suspicion(id)));
                        }
                    }
                }
            }
            MemberState::Dead | MemberState::Left => return,
        }
        self.rebroadcast(Update::Suspect {
            id,
            generation,
            incarnation,
            from,
        });
    }

    fn declare_dead(
        &mut self,
        now: Instant,
        id: NodeId,
        generation: u64,
        incarnation: u64,
        from: NodeId,
    ) {
        if self.about_me(id, generation, incarnation, true) {
            return;
        }
        let Some(e) = self.members.get_mut(&id) else {
            return;
        };
        if e.member.identity.generation != generation
            || incarnation < e.member.incarnation
            || !is_live(e.member.state)
        {
            return;
        }
        debug!(member = %id, %from, "member declared dead");
        self.live_count.set(None);
        self.recently_dead.push(id);
        e.member.state = MemberState::Dead;
        e.member.incarnation = incarnation;
        e.state_change = now;
        e.suspicion = None;
        self.events.push_back(Event::Dead(e.member.clone()));
        self.rebroadcast(Update::Dead {
            id,
            generation,
            incarnation,
            from,
        });
    }

    fn apply_left(&mut self, now: Instant, id: NodeId, generation: u64, incarnation: u64) {
        if self.about_me(id, generation, incarnation, false) {
            return;
        }
        let Some(e) = self.members.get_mut(&id) else {
            return;
        };
        if e.member.identity.generation != generation || e.member.state == MemberState::Left {
            return;
        }
        debug!(member = %id, "member left");
        self.live_count.set(None);
        e.member.state = MemberState::Left;
        e.member.incarnation = e.member.incarnation.max(incarnation);
        e.state_change = now;
        e.suspicion = None;
        self.events.push_back(Event::Left(e.member.clone()));
        self.rebroadcast(Update::Left {
            id,
            generation,
            incarnation,
        });
    }

    /// Merges a full state received by push-pull. Remote "dead" is only
    /// taken as a suspicion (the member gets a chance to refute), remote
    /// "alive" never overrides a local suspect/dead without a higher
    /// incarnation (same rule as gossip).
    fn merge_state(&mut self, now: Instant, sender: NodeId, records: Vec<Record>) {
        for r in records.into_iter().take(1 << 20) {
            match r.state {
                MemberState::Alive => self.apply_alive(now, r),
                MemberState::Suspect => {
                    let (id, g, i) = (r.id, r.generation, r.incarnation);
                    if !self.members.contains_key(&id) && id != self.me.identity.id {
                        self.apply_alive(now, r);
                    }
                    self.apply_suspect(now, id, g, i, sender);
                }
                MemberState::Dead => {
                    self.apply_suspect(now, r.id, r.generation, r.incarnation, sender);
                }
                MemberState::Left => self.apply_left(now, r.id, r.generation, r.incarnation),
            }
        }
    }

    // ------------------------------------------------------------------
    // Periodic work
    // ------------------------------------------------------------------

    fn gossip_round(&mut self, now: Instant) {
        if self.broadcasts.is_empty() {
            return;
        }
        let mut targets = self.random_live_addrs(self.config.gossip_fanout, None);
        // Gossip to the dead: recently declared members get a fair share so
        // that a live one learns about it and refutes.
        let window = self.config.gossip_to_the_dead;
        let members = &self.members;
        self.recently_dead.retain(|id| {
            members.get(id).is_some_and(|e| {
                e.member.state == MemberState::Dead
                    && now.saturating_duration_since(e.state_change) < window
            })
        });
        if !self.recently_dead.is_empty() && !targets.is_empty() {
            let d = self.recently_dead.len();
            let live = self.num_live_members();
            if self.rng.random_range(0..d + live) < d * targets.len().max(1) {
                let id = self.recently_dead[self.rng.random_range(0..d)];
                let i = self.rng.random_range(0..targets.len());
                targets[i] = self.members[&id].member.addr;
            }
        }
        for addr in targets {
            if self.broadcasts.is_empty() {
                break;
            }
            self.send_gossip(addr, None);
        }
    }

    fn housekeeping(&mut self, now: Instant) {
        let dead_after = self.config.dead_reap_after;
        let left_after = self.config.left_reap_after;
        let reap: Vec<NodeId> = self
            .members
            .iter()
            .filter(|(_, e)| {
                let age = now.saturating_duration_since(e.state_change);
                (e.member.state == MemberState::Dead && age >= dead_after)
                    || (e.member.state == MemberState::Left && age >= left_after)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in reap {
            if let Some(e) = self.members.remove(&id) {
                debug!(member = %id, "reaping member");
                self.states_changed();
                let g = e.member.identity.generation;
                self.tombstones.insert(
                    id,
                    Tombstone {
                        generation: g,
                        incarnation: e.member.incarnation,
                        left: e.member.state == MemberState::Left,
                        addr: e.member.addr,
                        at: now,
                    },
                );
                self.tomb_order.push_back((now, id, g));
            }
        }
        // Expire tombstones by age and count.
        while let Some(&(at, id, g)) = self.tomb_order.front() {
            let expired = now.saturating_duration_since(at) >= self.config.tombstone_ttl
                || self.tomb_order.len() > self.config.max_tombstones;
            if !expired {
                break;
            }
            self.tomb_order.pop_front();
            if self
                .tombstones
                .get(&id)
                .is_some_and(|t| t.generation == g && t.at == at)
            {
                self.tombstones.remove(&id);
            }
        }
        // Forget old introductions.
        let every = self.config.probe_interval * 5;
        self.reintroduced
            .retain(|_, at| now.saturating_duration_since(*at) < every);
        // Forget unanswered reconnect probes.
        let horizon = self.config.probe_interval * 4;
        self.reconnects
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < horizon);
        // Keep the probe list from growing with ids that disappeared.
        if self.probe_order.len() > 2 * self.members.len() + 16 {
            self.probe_order.clear();
            self.probe_idx = 0;
        }
    }

    /// A member probed this address under an identity that is not ours (the
    /// one we replaced: we restarted with a new identity or generation, and
    /// it still holds the old one as alive, or as dead and probes it to
    /// reconnect). Unless it is already a live member to us, send it a join:
    /// the two views merge and it learns who lives here now. A node that
    /// restarted without seeds, or lost the list of members it knew, finds
    /// the mesh again this way. At most once per push-pull period per address.
    fn reintroduce(&mut self, now: Instant, from: SocketAddr, sender: NodeId) {
        if self.phase == Phase::Left {
            return;
        }
        let known_live = self
            .members
            .get(&sender)
            .is_some_and(|e| is_live(e.member.state));
        if known_live {
            return;
        }
        let every = self.config.probe_interval * 5;
        if self
            .reintroduced
            .get(&from)
            .is_some_and(|t| now.saturating_duration_since(*t) < every)
        {
            return;
        }
        self.reintroduced.insert(from, now);
        debug!(%from, "probed under a former identity; joining the prober");
        self.send_push_pull(from, PushPullKind::Join);
    }

    fn reconnect(&mut self, now: Instant) {
        let mut candidates: Vec<(NodeId, u64, SocketAddr)> = self
            .members
            .values()
            .filter(|e| e.member.state == MemberState::Dead)
            .map(|e| {
                (
                    e.member.identity.id,
                    e.member.identity.generation,
                    e.member.addr,
                )
            })
            .collect();
        candidates.extend(
            self.tombstones
                .iter()
                .filter(|(_, t)| !t.left)
                .map(|(id, t)| (*id, t.generation, t.addr)),
        );
        if candidates.is_empty() {
            return;
        }
        let (id, g, addr) = candidates[self.rng.random_range(0..candidates.len())];
        let seq = self.next_seq();
        self.reconnects.insert(seq, (id, now));
        self.send_ping(addr, seq, id, g, None);
    }

    // ------------------------------------------------------------------
    // Sending
    // ------------------------------------------------------------------

    fn cluster_size(&self) -> usize {
        self.num_live_members() + 1
    }

    fn self_record(&self) -> Record {
        Record {
            id: self.me.identity.id,
            generation: self.me.identity.generation,
            incarnation: self.me.incarnation,
            addr: self.me.addr,
            state: self.me.state,
            metadata: self.me.metadata.clone(),
        }
    }

    /// Up to `n` distinct random alive members (excluding `exclude`).
    /// Samples the probe list (which holds every live member) and falls
    /// back to a full scan for small clusters.
    fn random_live_addrs(&mut self, n: usize, exclude: Option<NodeId>) -> Vec<SocketAddr> {
        let mut picked: Vec<NodeId> = Vec::with_capacity(n);
        if self.probe_order.len() > 4 * n + 8 {
            for _ in 0..(8 * n + 8) {
                if picked.len() == n {
                    break;
                }
                let id = self.probe_order[self.rng.random_range(0..self.probe_order.len())];
                if Some(id) == exclude || picked.contains(&id) {
                    continue;
                }
                if self
                    .members
                    .get(&id)
                    .is_some_and(|e| e.member.state == MemberState::Alive)
                {
                    picked.push(id);
                }
            }
        }
        if picked.len() < n {
            let mut all: Vec<NodeId> = self
                .members
                .iter()
                .filter(|(id, e)| Some(**id) != exclude && e.member.state == MemberState::Alive)
                .map(|(id, _)| *id)
                .collect();
            let k = n.min(all.len());
            let (chosen, _) = all.partial_shuffle(&mut self.rng, k);
            picked = chosen.to_vec();
        }
        picked
            .iter()
            .map(|id| self.members[id].member.addr)
            .collect()
    }

    fn send(&mut self, dst: SocketAddr, message: Message) {
        let reliable = matches!(message, Message::PushPull { .. });
        let payload = wire::encode(&Envelope {
            sender: self.me.identity,
            message,
        });
        self.transmits.push_back(Transmit {
            dst,
            payload,
            reliable,
        });
    }

    /// Sends `message` after filling its gossip list up to the datagram
    /// budget. `first` is placed before the queued updates.
    fn send_with_gossip(&mut self, dst: SocketAddr, mut message: Message, first: Option<Update>) {
        let base = wire::encode(&Envelope {
            sender: self.me.identity,
            message: message.clone(),
        })
        .len();
        // Array length header may grow from 1 to 3 bytes.
        let mut budget = self.config.max_datagram.saturating_sub(base + 2);
        let mut gossip = Vec::new();
        let mut skip = None;
        if let Some(u) = first {
            budget = budget.saturating_sub(wire::encoded_len(&u));
            skip = Some(u.subject());
            gossip.push(u);
        }
        let limit = self.config.retransmit_limit(self.cluster_size());
        gossip.extend(self.broadcasts.take(budget, limit, skip));
        match &mut message {
            Message::Ping { gossip: g, .. }
            | Message::Ack { gossip: g, .. }
            | Message::PingReq { gossip: g, .. }
            | Message::Gossip { gossip: g } => *g = gossip,
            _ => {}
        }
        self.send(dst, message);
    }

    fn send_ping(
        &mut self,
        dst: SocketAddr,
        seq: u64,
        target: NodeId,
        target_generation: u64,
        first: Option<Update>,
    ) {
        let msg = Message::Ping {
            seq,
            target,
            target_generation,
            gossip: Vec::new(),
        };
        self.send_with_gossip(dst, msg, first);
    }

    fn send_ack(&mut self, dst: SocketAddr, seq: u64) {
        let msg = Message::Ack {
            seq,
            gossip: Vec::new(),
        };
        self.send_with_gossip(dst, msg, None);
    }

    /// A member we suspect, or hold dead, just spoke to us: tell it (at
    /// most once per probe interval), so that it refutes and its refutation
    /// clears the accusation everywhere. Without this, an accusation raised
    /// while our own packets were being lost (one-way loss) outlives the
    /// fault: its gossip was spent while nothing got through, and nobody
    /// else holds it for the accused to hear about.
    fn tell_if_suspected(&mut self, now: Instant, from: SocketAddr, sender: Identity) {
        let Some(u) = self.accusation_of(sender.id, sender.generation) else {
            return;
        };
        let every = self.config.probe_interval;
        let Some(e) = self.members.get_mut(&sender.id) else {
            return;
        };
        if e.told
            .is_some_and(|t| now.saturating_duration_since(t) < every)
        {
            return;
        }
        e.told = Some(now);
        self.send_gossip(from, Some(u));
    }

    /// Our accusation of member `id` (of `generation`), as an update to
    /// send it: suspect or dead, if we hold it so.
    fn accusation_of(&self, id: NodeId, generation: u64) -> Option<Update> {
        let e = self.members.get(&id)?;
        if e.member.identity.generation != generation {
            return None;
        }
        let (incarnation, from) = (e.member.incarnation, self.me.identity.id);
        match e.member.state {
            MemberState::Suspect => Some(Update::Suspect {
                id,
                generation,
                incarnation,
                from,
            }),
            MemberState::Dead => Some(Update::Dead {
                id,
                generation,
                incarnation,
                from,
            }),
            MemberState::Alive | MemberState::Left => None,
        }
    }

    fn send_gossip(&mut self, dst: SocketAddr, first: Option<Update>) {
        self.send_with_gossip(dst, Message::Gossip { gossip: Vec::new() }, first);
    }

    fn send_push_pull(&mut self, dst: SocketAddr, kind: PushPullKind) {
        let mut members: Vec<Record> = Vec::with_capacity(self.members.len() + 1);
        members.push(self.self_record());
        members.extend(self.members.values().map(|e| Record {
            id: e.member.identity.id,
            generation: e.member.identity.generation,
            incarnation: e.member.incarnation,
            addr: e.member.addr,
            state: e.member.state,
            metadata: e.member.metadata.clone(),
        }));
        self.send(dst, Message::PushPull { kind, members });
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;

fn is_live(s: MemberState) -> bool {
    matches!(s, MemberState::Alive | MemberState::Suspect)
}
