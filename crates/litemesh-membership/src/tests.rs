//! Unit tests of the state machine with a tiny zero-latency harness.

use super::*;
use crate::wire::{Envelope, Message, PushPullKind, Record, Update};

fn addr(i: u64) -> SocketAddr {
    SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 7000))
}

fn ident(i: u64, g: u64) -> Identity {
    Identity {
        id: NodeId(i),
        generation: g,
    }
}

fn node(i: u64) -> Membership {
    Membership::new(ident(i, 1), addr(i), Config::default(), i)
}

fn ms(x: u64) -> Instant {
    Instant::from_micros(x * 1000)
}

/// Zero-latency network over a set of nodes; `down` nodes receive nothing.
struct Harness {
    nodes: Vec<Membership>,
    down: Vec<bool>,
    now: Instant,
    sent: Vec<(Instant, usize, Transmit)>,
}

impl Harness {
    fn new(n: u64) -> Self {
        Harness {
            nodes: (1..=n).map(node).collect(),
            down: vec![false; n as usize],
            now: Instant::ZERO,
            sent: Vec::new(),
        }
    }

    fn deliver(&mut self) {
        for _ in 0..10_000 {
            let mut any = false;
            for i in 0..self.nodes.len() {
                while let Some(t) = self.nodes[i].poll_transmit() {
                    any = true;
                    self.sent.push((self.now, i, t.clone()));
                    if self.down[i] {
                        continue;
                    }
                    if let Some(j) = self
                        .nodes
                        .iter()
                        .position(|n| n.local_member().addr == t.dst)
                        && !self.down[j]
                    {
                        let from = self.nodes[i].local_member().addr;
                        self.nodes[j]
                            .handle_message(self.now, from, &t.payload)
                            .unwrap();
                    }
                }
            }
            if !any {
                return;
            }
        }
    }

    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.now += Duration::from_millis(10);
            for i in 0..self.nodes.len() {
                if !self.down[i] {
                    self.nodes[i].handle_timeout(self.now);
                }
            }
            self.deliver();
        }
    }

    fn bootstrap(&mut self) {
        self.nodes[0].join(self.now, &[]);
        let seed = addr(1);
        for i in 1..self.nodes.len() {
            self.nodes[i].join(self.now, &[seed]);
        }
        self.deliver();
    }

    fn state(&self, observer: usize, subject: u64) -> Option<MemberState> {
        self.nodes[observer]
            .member(NodeId(subject))
            .map(|m| m.state)
    }
}

fn envelope(from: Identity, message: Message) -> Vec<u8> {
    wire::encode(&Envelope {
        sender: from,
        message,
    })
}

fn record(i: u64, g: u64, inc: u64, state: MemberState) -> Record {
    Record {
        id: NodeId(i),
        generation: g,
        incarnation: inc,
        addr: addr(i),
        state,
        metadata: Metadata::default(),
    }
}

fn gossip(m: &mut Membership, now: Instant, from: u64, updates: Vec<Update>) {
    let bytes = envelope(ident(from, 1), Message::Gossip { gossip: updates });
    m.handle_message(now, addr(from), &bytes).unwrap();
}

fn joined_alone(i: u64) -> Membership {
    let mut m = node(i);
    m.join(Instant::ZERO, &[]);
    m
}

#[test]
fn small_cluster_converges() {
    let mut h = Harness::new(5);
    h.bootstrap();
    h.run_for(Duration::from_secs(5));
    for i in 0..5 {
        assert_eq!(h.nodes[i].num_live_members(), 4, "node {i}");
        assert!(h.nodes[i].is_joined());
    }
}

#[test]
fn join_retries_with_exponential_backoff() {
    let mut m = node(1);
    m.join(Instant::ZERO, &[addr(99)]);
    let mut times = vec![];
    let mut now = Instant::ZERO;
    while now < ms(40_000) {
        while let Some(t) = m.poll_transmit() {
            assert!(t.reliable);
            assert_eq!(t.dst, addr(99));
            times.push(now.as_micros() / 1000);
        }
        now += Duration::from_millis(10);
        m.handle_timeout(now);
    }
    assert_eq!(times, vec![0, 1000, 3000, 7000, 15000, 31000]);
    assert!(!m.is_joined());
}

#[test]
fn refutes_suspicion_about_itself() {
    let mut a = joined_alone(1);
    gossip(
        &mut a,
        ms(1),
        2,
        vec![Update::Alive(record(2, 1, 0, MemberState::Alive))],
    );
    let inc0 = a.local_member().incarnation;
    gossip(
        &mut a,
        ms(2),
        2,
        vec![Update::Suspect {
            id: NodeId(1),
            generation: 1,
            incarnation: inc0,
            from: NodeId(2),
        }],
    );
    assert_eq!(a.local_member().incarnation, inc0 + 1);
    assert!(a.health_multiplier() > 1, "being suspected raises LHM");
    // The refutation is the freshest broadcast and goes out first.
    a.handle_timeout(ms(2000));
    let mut saw = false;
    while let Some(t) = a.poll_transmit() {
        if let Ok(env) = wire::decode(&t.payload, usize::MAX) {
            let g = match env.message {
                Message::Gossip { gossip } | Message::Ping { gossip, .. } => gossip,
                _ => vec![],
            };
            saw |= g.iter().any(
                |u| matches!(u, Update::Alive(r) if r.id == NodeId(1) && r.incarnation == inc0 + 1),
            );
        }
    }
    assert!(saw, "refutation gossiped");
    // A suspicion for the old generation or an older incarnation is no threat.
    gossip(
        &mut a,
        ms(2001),
        2,
        vec![Update::Dead {
            id: NodeId(1),
            generation: 0,
            incarnation: 99,
            from: NodeId(2),
        }],
    );
    assert_eq!(a.local_member().incarnation, inc0 + 1);
}

#[test]
fn incarnation_ordering() {
    let mut a = joined_alone(1);
    let t = ms(1);
    gossip(
        &mut a,
        t,
        3,
        vec![Update::Alive(record(2, 1, 5, MemberState::Alive))],
    );
    let st = |a: &Membership| a.member(NodeId(2)).unwrap().state;
    let suspect = |inc| Update::Suspect {
        id: NodeId(2),
        generation: 1,
        incarnation: inc,
        from: NodeId(3),
    };
    let dead = |inc| Update::Dead {
        id: NodeId(2),
        generation: 1,
        incarnation: inc,
        from: NodeId(3),
    };
    let alive = |inc| Update::Alive(record(2, 1, inc, MemberState::Alive));
    gossip(&mut a, t, 3, vec![suspect(4)]);
    assert_eq!(st(&a), MemberState::Alive, "older suspicion ignored");
    gossip(&mut a, t, 3, vec![suspect(5)]);
    assert_eq!(st(&a), MemberState::Suspect);
    gossip(&mut a, t, 3, vec![alive(5)]);
    assert_eq!(
        st(&a),
        MemberState::Suspect,
        "alive needs a higher incarnation"
    );
    gossip(&mut a, t, 3, vec![alive(6)]);
    assert_eq!(st(&a), MemberState::Alive, "refuted");
    gossip(&mut a, t, 3, vec![dead(5)]);
    assert_eq!(st(&a), MemberState::Alive, "stale death ignored");
    gossip(&mut a, t, 3, vec![dead(6)]);
    assert_eq!(st(&a), MemberState::Dead);
    gossip(&mut a, t, 3, vec![alive(6)]);
    assert_eq!(st(&a), MemberState::Dead);
    gossip(&mut a, t, 3, vec![alive(7)]);
    assert_eq!(st(&a), MemberState::Alive, "member refuted its death");
    let events: Vec<Event> = std::iter::from_fn(|| a.poll_event()).collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| match e {
            Event::Joined(_) => "joined",
            Event::Alive(_) => "alive",
            Event::Suspect(_) => "suspect",
            Event::Dead(_) => "dead",
            Event::Left(_) => "left",
            Event::MetadataChanged(_) => "meta",
        })
        .collect();
    assert_eq!(kinds, ["joined", "suspect", "alive", "dead", "alive"]);
}

#[test]
fn push_pull_never_revives_without_higher_incarnation() {
    let mut a = joined_alone(1);
    let t = ms(1);
    gossip(
        &mut a,
        t,
        2,
        vec![Update::Alive(record(2, 1, 0, MemberState::Alive))],
    );
    gossip(
        &mut a,
        t,
        2,
        vec![Update::Alive(record(3, 1, 3, MemberState::Alive))],
    );
    gossip(
        &mut a,
        t,
        2,
        vec![Update::Dead {
            id: NodeId(3),
            generation: 1,
            incarnation: 3,
            from: NodeId(2),
        }],
    );
    let pp = |members| {
        envelope(
            ident(2, 1),
            Message::PushPull {
                kind: PushPullKind::Push,
                members,
            },
        )
    };
    a.handle_message(t, addr(2), &pp(vec![record(3, 1, 3, MemberState::Alive)]))
        .unwrap();
    assert_eq!(a.member(NodeId(3)).unwrap().state, MemberState::Dead);
    // It replies with its own state over the reliable channel.
    let reply = std::iter::from_fn(|| a.poll_transmit()).find(|t| t.reliable);
    assert_eq!(reply.map(|t| t.dst), Some(addr(2)));
    a.handle_message(t, addr(2), &pp(vec![record(3, 1, 4, MemberState::Alive)]))
        .unwrap();
    assert_eq!(a.member(NodeId(3)).unwrap().state, MemberState::Alive);
    // A remote "dead" is only a suspicion locally.
    a.handle_message(t, addr(2), &pp(vec![record(3, 1, 4, MemberState::Dead)]))
        .unwrap();
    assert_eq!(a.member(NodeId(3)).unwrap().state, MemberState::Suspect);
    // Remote state saying we are dead makes us refute.
    let inc = a.local_member().incarnation;
    a.handle_message(t, addr(2), &pp(vec![record(1, 1, inc, MemberState::Dead)]))
        .unwrap();
    assert_eq!(a.local_member().incarnation, inc + 1);
}

#[test]
fn new_generation_replaces_old_at_once() {
    let mut a = joined_alone(1);
    let t = ms(1);
    gossip(
        &mut a,
        t,
        3,
        vec![Update::Alive(record(2, 1, 9, MemberState::Alive))],
    );
    let mut newer = record(2, 2, 0, MemberState::Alive);
    newer.addr = addr(200);
    gossip(&mut a, t, 3, vec![Update::Alive(newer)]);
    let m = a.member(NodeId(2)).unwrap();
    assert_eq!(
        (m.identity.generation, m.addr, m.state),
        (2, addr(200), MemberState::Alive)
    );
    // Anything about the old generation is now ignored.
    gossip(
        &mut a,
        t,
        3,
        vec![Update::Alive(record(2, 1, 50, MemberState::Alive))],
    );
    gossip(
        &mut a,
        t,
        3,
        vec![Update::Dead {
            id: NodeId(2),
            generation: 1,
            incarnation: 50,
            from: NodeId(3),
        }],
    );
    let m = a.member(NodeId(2)).unwrap();
    assert_eq!((m.identity.generation, m.state), (2, MemberState::Alive));
    // Messages sent by the old generation are ignored too.
    let bytes = envelope(
        ident(2, 1),
        Message::Gossip {
            gossip: vec![Update::Alive(record(4, 1, 0, MemberState::Alive))],
        },
    );
    a.handle_message(t, addr(2), &bytes).unwrap();
    assert!(a.member(NodeId(4)).is_none());
}

#[test]
fn reaped_members_are_tombstoned() {
    let mut a = joined_alone(1);
    let t = ms(1);
    gossip(
        &mut a,
        t,
        3,
        vec![Update::Alive(record(2, 1, 4, MemberState::Alive))],
    );
    gossip(
        &mut a,
        t,
        3,
        vec![Update::Dead {
            id: NodeId(2),
            generation: 1,
            incarnation: 4,
            from: NodeId(3),
        }],
    );
    let reap = Config::default().dead_reap_after + Duration::from_secs(2);
    a.handle_timeout(t + reap);
    assert!(a.member(NodeId(2)).is_none(), "reaped");
    assert_eq!(a.state_sizes().1, 1, "one tombstone");
    // Stale gossip and push-pull cannot bring it back...
    gossip(
        &mut a,
        t + reap,
        3,
        vec![Update::Alive(record(2, 1, 4, MemberState::Alive))],
    );
    let pp = envelope(
        ident(3, 1),
        Message::PushPull {
            kind: PushPullKind::Push,
            members: vec![record(2, 1, 3, MemberState::Alive)],
        },
    );
    a.handle_message(t + reap, addr(3), &pp).unwrap();
    assert!(a.member(NodeId(2)).is_none());
    // ...but a restart (new generation) can.
    gossip(
        &mut a,
        t + reap,
        3,
        vec![Update::Alive(record(2, 2, 0, MemberState::Alive))],
    );
    assert_eq!(a.member(NodeId(2)).unwrap().state, MemberState::Alive);
    // Tombstones expire.
    gossip(
        &mut a,
        t + reap,
        3,
        vec![Update::Left {
            id: NodeId(2),
            generation: 2,
            incarnation: 1,
        }],
    );
    let later = t + reap + Config::default().left_reap_after + Duration::from_secs(2);
    a.handle_timeout(later);
    assert_eq!(a.state_sizes().1, 1);
    a.handle_timeout(later + Config::default().tombstone_ttl + Duration::from_secs(2));
    assert_eq!(a.state_sizes().1, 0);
}

#[test]
fn suspicion_timeout_shrinks_with_confirmations() {
    let mut a = joined_alone(1);
    let ups = (2..=100)
        .map(|i| Update::Alive(record(i, 1, 0, MemberState::Alive)))
        .collect();
    gossip(&mut a, ms(1), 2, ups);
    assert_eq!(a.num_live_members(), 99);
    let (min, max) = (Duration::from_secs(8), Duration::from_secs(48));
    assert_eq!(a.suspicion_timeout(0), max);
    let one = a.suspicion_timeout(1);
    assert!(one > min && one < max, "{one:?}");
    assert_eq!(a.suspicion_timeout(2), min);
    assert_eq!(a.suspicion_timeout(5), min);
    // Confirmations from distinct members shorten a running suspicion.
    let s = |from| Update::Suspect {
        id: NodeId(50),
        generation: 1,
        incarnation: 0,
        from: NodeId(from),
    };
    gossip(&mut a, ms(1000), 2, vec![s(2)]);
    let deadline = |a: &Membership| a.members[&NodeId(50)].suspicion.as_ref().unwrap().deadline;
    assert_eq!(deadline(&a), ms(1000) + max);
    gossip(&mut a, ms(1000), 2, vec![s(2)]);
    assert_eq!(
        deadline(&a),
        ms(1000) + max,
        "same member does not confirm twice"
    );
    gossip(&mut a, ms(1000), 3, vec![s(3)]);
    gossip(&mut a, ms(1000), 4, vec![s(4)]);
    assert_eq!(deadline(&a), ms(1000) + min);
}

#[test]
fn crash_detection_and_leave() {
    let mut h = Harness::new(6);
    h.bootstrap();
    h.run_for(Duration::from_secs(5));
    h.down[5] = true;
    h.nodes[4].leave(h.now);
    h.run_for(Duration::from_secs(3));
    for i in 0..4 {
        assert_eq!(h.state(i, 5), Some(MemberState::Left), "observer {i}");
    }
    assert!(h.nodes[4].leave_complete());
    h.down[4] = true;
    // N = 5 alive: min 4 s, max 24 s (+ one probe period for the last check).
    h.run_for(Duration::from_secs(30));
    for i in 0..4 {
        assert_eq!(h.state(i, 6), Some(MemberState::Dead), "observer {i}");
    }
}

#[test]
fn local_health_multiplier_rises_and_recovers() {
    let mut h = Harness::new(4);
    h.bootstrap();
    h.run_for(Duration::from_secs(5));
    assert_eq!(h.nodes[0].health_multiplier(), 1);
    // Node 1 is cut off (everyone else unreachable): its probes fail and
    // no helper sends nacks.
    h.down[1] = true;
    h.down[2] = true;
    h.down[3] = true;
    h.run_for(Duration::from_secs(6));
    let lhm = h.nodes[0].health_multiplier();
    assert!(lhm > 2, "lhm {lhm}");
    // Its probe period is stretched accordingly.
    h.down = vec![false; 4];
    h.run_for(Duration::from_secs(60));
    assert_eq!(h.nodes[0].health_multiplier(), 1);
}

#[test]
fn datagrams_fit_the_budget() {
    let mut a = joined_alone(1);
    let ups: Vec<Update> = (2..300)
        .map(|i| {
            let mut r = record(i, 1, 0, MemberState::Alive);
            r.metadata = Metadata::new(vec![7; 400 + (i as usize % 100)]).unwrap();
            Update::Alive(r)
        })
        .collect();
    for chunk in ups.chunks(2) {
        gossip(&mut a, ms(1), 2, chunk.to_vec());
    }
    let mut n = 0;
    let mut now = ms(1);
    for _ in 0..200 {
        now += Duration::from_millis(50);
        a.handle_timeout(now);
        while let Some(t) = a.poll_transmit() {
            if !t.reliable {
                n += 1;
                assert!(t.payload.len() <= 1200, "{} bytes", t.payload.len());
            }
        }
    }
    assert!(n > 50);
}

#[test]
fn metadata_is_bounded() {
    let mut a = node(1);
    assert!(
        a.set_metadata(Instant::ZERO, vec![0; MAX_METADATA_LEN + 1])
            .is_err()
    );
    assert!(
        a.set_metadata(Instant::ZERO, vec![0; MAX_METADATA_LEN])
            .is_ok()
    );
}

#[test]
fn metadata_change_is_disseminated() {
    let mut h = Harness::new(4);
    h.bootstrap();
    h.run_for(Duration::from_secs(3));
    let now = h.now;
    h.nodes[2].set_metadata(now, b"region=eu".to_vec()).unwrap();
    h.run_for(Duration::from_secs(2));
    for i in [0, 1, 3] {
        let m = h.nodes[i].member(NodeId(3)).unwrap();
        assert_eq!(m.metadata.as_bytes(), b"region=eu");
        assert!(m.rtt.is_some() || i == 2);
    }
    let evs: Vec<Event> = std::iter::from_fn(|| h.nodes[0].poll_event()).collect();
    assert!(
        evs.iter()
            .any(|e| matches!(e, Event::MetadataChanged(m) if m.identity.id == NodeId(3)))
    );
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn valid_payloads() -> Vec<Vec<u8>> {
        wire::tests::sample_messages()
            .iter()
            .map(wire::encode)
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = wire::decode(&bytes, 1 << 16);
            let mut with_version = vec![wire::WIRE_VERSION];
            with_version.extend_from_slice(&bytes);
            let _ = wire::decode(&with_version, 1 << 16);
            let mut a = joined_alone(1);
            let _ = a.handle_message(ms(1), addr(2), &with_version);
            a.handle_timeout(ms(5000));
        }

        #[test]
        fn random_valid_traffic_keeps_invariants(
            steps in proptest::collection::vec(
                (1u64..7, 1u64..4, 0u64..6, 0u8..5, 2u64..7, 0u64..3000),
                1..120,
            ),
        ) {
            let mut a = joined_alone(1);
            let mut now = ms(1);
            let mut last_inc = a.local_member().incarnation;
            for (id, generation, inc, kind, from, dt) in steps {
                now += Duration::from_millis(dt);
                let mut rec = record(id, generation, inc, MemberState::Alive);
                let update = match kind {
                    0 => Update::Alive(rec),
                    1 => Update::Suspect { id: NodeId(id), generation, incarnation: inc, from: NodeId(from) },
                    2 => Update::Dead { id: NodeId(id), generation, incarnation: inc, from: NodeId(from) },
                    3 => Update::Left { id: NodeId(id), generation, incarnation: inc },
                    _ => {
                        rec.state = [MemberState::Alive, MemberState::Suspect, MemberState::Dead, MemberState::Left][(inc % 4) as usize];
                        let bytes = envelope(ident(from, 1), Message::PushPull { kind: PushPullKind::Push, members: vec![rec] });
                        a.handle_message(now, addr(from), &bytes).unwrap();
                        a.handle_timeout(now);
                        continue;
                    }
                };
                gossip(&mut a, now, from, vec![update]);
                a.handle_timeout(now);
                while let Some(t) = a.poll_transmit() {
                    prop_assert!(t.reliable || t.payload.len() <= 1200);
                    prop_assert!(wire::validate(&t.payload, usize::MAX).is_ok());
                }
                let me = a.local_member();
                prop_assert!(me.incarnation >= last_inc, "own incarnation went backwards");
                prop_assert_eq!(me.state, MemberState::Alive);
                last_inc = me.incarnation;
                prop_assert!(a.member(NodeId(1)).is_none(), "self in the member table");
                prop_assert!(a.members().all(|m| m.identity.generation >= 1));
            }
        }

        #[test]
        fn mutated_messages_never_panic(
            which in 0usize..6,
            edits in proptest::collection::vec((any::<u16>(), any::<u8>(), 0u8..4), 1..8),
        ) {
            let mut bytes = valid_payloads()[which].clone();
            for (pos, val, op) in edits {
                let i = pos as usize % (bytes.len() + 1);
                match op {
                    0 if i < bytes.len() => bytes[i] = val,
                    1 => bytes.insert(i, val),
                    2 if i < bytes.len() => { bytes.remove(i); }
                    _ => bytes.truncate(i),
                }
            }
            let _ = wire::decode(&bytes, 1 << 16);
            let mut a = joined_alone(1);
            if a.handle_message(ms(1), addr(2), &bytes).is_ok() {
                // Whatever got accepted must keep the machine working.
                a.handle_timeout(ms(60_000));
                while a.poll_transmit().is_some() {}
            }
        }
    }
}

#[test]
fn known_members_are_added_quietly() {
    let mut a = joined_alone(1);
    while a.poll_transmit().is_some() {}
    let before = a.state_sizes().2;
    let known: Vec<Member> = (2..10)
        .map(|i| Member {
            identity: ident(i, 1),
            addr: addr(i),
            incarnation: 0,
            state: MemberState::Alive,
            metadata: Metadata::default(),
            rtt: None,
        })
        .collect();
    a.add_known_members(ms(1), known);
    assert_eq!(a.num_live_members(), 8);
    assert_eq!(a.state_sizes().2, before, "nothing re-gossiped");
    let joined = std::iter::from_fn(|| a.poll_event())
        .filter(|e| matches!(e, Event::Joined(_)))
        .count();
    assert_eq!(joined, 8);
}

#[test]
fn helper_answers_a_last_check_with_a_newer_incarnation() {
    let mut c = joined_alone(3);
    gossip(
        &mut c,
        ms(1),
        1,
        vec![Update::Alive(record(2, 1, 5, MemberState::Alive))],
    );
    while c.poll_transmit().is_some() {}
    let req = |si| {
        envelope(
            ident(1, 1),
            Message::PingReq {
                seq: 77,
                target: NodeId(2),
                target_generation: 1,
                target_addr: addr(2),
                window_ms: 500,
                suspected_incarnation: si,
                gossip: vec![],
            },
        )
    };
    let answers = |c: &mut Membership| {
        std::iter::from_fn(|| c.poll_transmit())
            .filter(|t| t.dst == addr(1))
            .filter_map(|t| wire::decode(&t.payload, usize::MAX).ok())
            .filter(|e| match &e.message {
                Message::Gossip { gossip } => gossip.iter().any(
                    |u| matches!(u, Update::Alive(r) if r.id == NodeId(2) && r.incarnation == 5),
                ),
                _ => false,
            })
            .count()
    };
    // A regular indirect probe: only the relayed ping.
    c.handle_message(ms(2), addr(1), &req(None)).unwrap();
    assert_eq!(answers(&mut c), 0);
    // A last check of a stale suspicion: the helper corrects the requester.
    c.handle_message(ms(3), addr(1), &req(Some(4))).unwrap();
    assert_eq!(answers(&mut c), 1);
    // Not when the suspicion is current.
    c.handle_message(ms(4), addr(1), &req(Some(5))).unwrap();
    assert_eq!(answers(&mut c), 0);
}

#[test]
fn a_member_restarted_under_a_new_identity_without_seeds_is_found_again() {
    let mut h = Harness::new(3);
    h.bootstrap();
    h.run_for(Duration::from_secs(3));
    assert!((2..=3).all(|j| h.state(0, j) == Some(MemberState::Alive)));
    // Node 3 restarts with a new id at the same address, and no seeds: on
    // its own it forms a mesh of one.
    let restarted = Membership::new(ident(33, 2), addr(3), Config::default(), 33);
    h.nodes[2] = restarted;
    h.nodes[2].join(h.now, &[]);
    h.run_for(Duration::from_secs(20));
    // The others probed the old identity at that address; the new one
    // introduced itself and is a member again, on every node.
    for i in 0..2 {
        assert_eq!(h.state(i, 33), Some(MemberState::Alive), "seen by {i}");
    }
    assert_eq!(h.nodes[2].num_live_members(), 2, "and it sees the mesh");
}
