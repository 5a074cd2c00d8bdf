//! The replication core's protocol rules, on virtual time: each test feeds
//! the core inputs by hand and checks what it asks for. No sockets, no
//! SQLite, no clock.

use std::net::SocketAddr;
use std::time::Duration;

use litemesh_proto::{
    ActorId, ChangeBatch, KeyChunk, Knowledge, Message, RetentionInfo, RowChange, SnapshotCursor,
    Value, VersionChanges, channel, decode, encode, encode_batch,
};
use litemesh_sync::{
    Config, Event, Extracted, OpId, Pruned, Replication, RequestId, SessionId, StorageOp, Transmit,
    encode_key_chunk, encode_snapshot_base, encode_sync_batch,
};

const ME: ActorId = ActorId([1; 16]);
const THEM: ActorId = ActorId([2; 16]);

fn addr(i: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7000 + i))
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn batch(actor: ActorId, version: u64, bytes: usize) -> ChangeBatch {
    ChangeBatch {
        versions: vec![VersionChanges {
            actor,
            version,
            chunk: None,
            rows: vec![RowChange {
                table: "t".into(),
                pk: vec![Value::Integer(version as i64)],
                seq: 0,
                cl: 1,
                cells: vec![litemesh_proto::CellChange {
                    column: "v".into(),
                    value: Value::Blob(vec![7; bytes]),
                    cv: 1,
                    kind: Default::default(),
                    base: 0,
                }],
            }],
            withheld: vec![],
        }],
        cleared: vec![],
    }
}

fn broadcast(actor: ActorId, version: u64, hops: u8) -> Vec<u8> {
    let b = encode_batch(&batch(actor, version, 10), usize::MAX).unwrap();
    encode(&Message::Broadcast { hops, batch: b }, usize::MAX).unwrap()
}

fn holding(actor: ActorId, upto: u64) -> Knowledge {
    let mut k = Knowledge::default();
    if upto > 0 {
        k.have.entry(actor).or_default().insert_range(1, upto);
    }
    k
}

/// A core with these peers; periodic rounds an hour apart, so that only
/// the rule under test opens reconciliations.
fn core(peers: &[u16]) -> Replication {
    let cfg = Config {
        sync_interval: Duration::from_secs(3600),
        ..Config::default()
    };
    let mut c = Replication::new(cfg, 7, ME, Knowledge::default(), false);
    for &p in peers {
        c.peer_up(addr(p), Some(ms(p as u64)));
    }
    c
}

/// Drains every transmit, storage operation and event.
#[derive(Default, Debug)]
struct Out {
    uni: Vec<(SocketAddr, Vec<u8>)>,
    requests: Vec<(SessionId, SocketAddr, Knowledge)>,
    answers: Vec<(RequestId, Option<Knowledge>)>,
    applies: Vec<(OpId, Vec<ChangeBatch>)>,
    extracts: Vec<(OpId, RequestId, Knowledge)>,
    events: Vec<Event>,
    /// Refusals sent: why, and whether the requester needs a snapshot.
    refusals: Vec<(RequestId, String, bool)>,
    /// The snapshot cursor of each request opened (snapshot catch-up).
    request_snapshots: Vec<Option<SnapshotCursor>>,
    /// The snapshot cursor of each extraction asked for, and whether it is
    /// to list only (no batches).
    extract_snapshots: Vec<Option<SnapshotCursor>>,
    extract_listing_only: Vec<bool>,
    prunes: Vec<(OpId, KeyChunk, Knowledge)>,
}

fn drain(c: &mut Replication, now: Duration) -> Out {
    let mut o = Out::default();
    while let Some(t) = c.poll_transmit(now) {
        match t {
            Transmit::Uni { to, bytes } => o.uni.push((to, bytes.to_vec())),
            Transmit::Request { session, to, bytes } => {
                let Message::SyncRequest {
                    knowledge,
                    retention,
                } = decode(&bytes, usize::MAX).unwrap()
                else {
                    panic!("not a request")
                };
                o.requests.push((session, to, knowledge));
                o.request_snapshots.push(retention.snapshot);
            }
            Transmit::Respond { request, bytes } => match decode(&bytes, usize::MAX).unwrap() {
                Message::SyncDone { knowledge, .. } => o.answers.push((request, Some(knowledge))),
                Message::SyncRefused {
                    reason, snapshot, ..
                } => o.refusals.push((request, reason, snapshot)),
                m => panic!("not a last frame: {m:?}"),
            },
            Transmit::Reject { request, .. } => o.answers.push((request, None)),
        }
    }
    while let Some(op) = c.poll_storage() {
        match op {
            StorageOp::Apply { op, batches } => o.applies.push((op, batches)),
            StorageOp::Extract {
                op,
                request,
                theirs,
                snapshot,
                listing_only,
                ..
            } => {
                o.extracts.push((op, request, theirs));
                o.extract_snapshots.push(snapshot);
                o.extract_listing_only.push(listing_only);
            }
            StorageOp::Prune {
                op, chunk, theirs, ..
            } => o.prunes.push((op, chunk, theirs)),
        }
    }
    while let Some(e) = c.poll_event() {
        o.events.push(e);
    }
    o
}

/// Completes every reconciliation the core opened at `now` with an empty
/// answer from a peer holding `theirs`.
fn answer_all(c: &mut Replication, now: Duration, out: &Out, theirs: &Knowledge) {
    for (s, _, _) in &out.requests {
        let done = encode(
            &Message::SyncDone {
                knowledge: theirs.clone(),
                retention: Default::default(),
            },
            usize::MAX,
        )
        .unwrap();
        assert!(c.handle_response_frame(now, *s, &done));
        c.handle_response_end(now, *s, Ok(()));
    }
}

/// Answers every reconciliation the core opens at `now` (from peers holding
/// `theirs`) until it opens no more.
fn settle(c: &mut Replication, now: Duration, theirs: &Knowledge) {
    loop {
        let o = drain(c, now);
        if o.requests.is_empty() {
            break;
        }
        answer_all(c, now, &o, theirs);
    }
}

#[test]
fn a_broadcast_is_applied_then_relayed_only_if_it_taught_something() {
    let mut c = core(&[2, 3, 4, 5, 6]);
    settle(&mut c, ms(0), &Knowledge::default());
    c.handle_broadcast(ms(1), addr(2), &broadcast(THEM, 1, 3)[..])
        .unwrap();
    let o = drain(&mut c, ms(1));
    assert_eq!(o.applies.len(), 1, "one apply per broadcast");
    assert!(o.uni.is_empty(), "nothing relayed before it is applied");
    c.set_knowledge(holding(THEM, 1), vec![]);
    c.handle_applied(ms(2), o.applies[0].0, Ok(true));
    let o = drain(&mut c, ms(2));
    // 4 candidates besides the sender: at least ln(4) + 2 of them, so all.
    assert_eq!(o.uni.len(), 4, "relayed to the fan-out");
    for (to, bytes) in &o.uni {
        assert_ne!(*to, addr(2), "never back to the sender");
        assert_eq!(bytes[0], channel::SYNC);
        match decode(&bytes[1..], usize::MAX).unwrap() {
            Message::Broadcast { hops, .. } => assert_eq!(hops, 2),
            m => panic!("{m:?}"),
        }
    }
    // The same broadcast again (a relay) teaches nothing: no apply is even
    // asked for, and it is not relayed.
    c.handle_broadcast(ms(3), addr(3), &broadcast(THEM, 1, 3)[..])
        .unwrap();
    let o = drain(&mut c, ms(3));
    assert!(o.applies.is_empty(), "a known version needs no apply");
    assert!(o.uni.is_empty(), "nor a relay");
    assert_eq!(c.stats().broadcasts_known, 1);
    // Before it is applied, a second copy is applied too (idempotent): the
    // core goes by what the file holds.
    c.handle_broadcast(ms(3), addr(3), &broadcast(THEM, 5, 1)[..])
        .unwrap();
    c.handle_broadcast(ms(3), addr(4), &broadcast(THEM, 5, 1)[..])
        .unwrap();
    let o = drain(&mut c, ms(3));
    assert_eq!(o.applies.len(), 2);
    c.handle_applied(ms(3), o.applies[0].0, Ok(true));
    c.handle_applied(ms(3), o.applies[1].0, Ok(false));
    drain(&mut c, ms(3));
    // Hops spent: applied, not relayed.
    c.handle_broadcast(ms(4), addr(3), &broadcast(THEM, 2, 0)[..])
        .unwrap();
    let o = drain(&mut c, ms(4));
    c.set_knowledge(holding(THEM, 2), vec![]);
    c.handle_applied(ms(4), o.applies[0].0, Ok(true));
    assert!(drain(&mut c, ms(4)).uni.is_empty());
    // Garbage is refused and asks for nothing.
    assert!(c.handle_broadcast(ms(5), addr(3), &[1, 2, 3]).is_err());
    let o = drain(&mut c, ms(5));
    assert!(o.applies.is_empty() && o.uni.is_empty());
}

#[test]
fn a_gap_behind_a_broadcast_pulls_from_its_sender_at_once() {
    let mut c = core(&[2, 3]);
    settle(&mut c, ms(0), &Knowledge::default());
    // Long after the last round (a pull within a quarter interval of one is
    // not repeated), version 40 arrives; 1..=39 are missing: more than the
    // threshold.
    c.handle_broadcast(ms(1_000_000), addr(3), &broadcast(THEM, 40, 1)[..])
        .unwrap();
    let o = drain(&mut c, ms(1_000_000));
    let mut k = Knowledge::default();
    k.insert(THEM, 40);
    c.set_knowledge(k.clone(), vec![]);
    c.handle_applied(ms(1_000_000), o.applies[0].0, Ok(true));
    let o = drain(&mut c, ms(1_000_000));
    assert_eq!(o.requests.len(), 1, "pulls now, not at the next round");
    assert_eq!(o.requests[0].1, addr(3), "from the sender");
    assert_eq!(o.requests[0].2, k, "telling what it holds");
    // A few versions missing is ordinary reordering: no pull.
    let mut c = core(&[2]);
    settle(&mut c, ms(0), &Knowledge::default());
    c.set_knowledge(holding(THEM, 10), vec![]);
    c.handle_broadcast(ms(1_000_000), addr(2), &broadcast(THEM, 13, 1)[..])
        .unwrap();
    let o = drain(&mut c, ms(1_000_000));
    c.handle_applied(ms(1_000_000), o.applies[0].0, Ok(true));
    assert!(drain(&mut c, ms(1_000_000)).requests.is_empty());
}

#[test]
fn a_published_head_beyond_what_is_held_pulls_from_its_writer() {
    let mut c = core(&[2]);
    settle(&mut c, ms(0), &Knowledge::default());
    c.set_knowledge(holding(THEM, 5), vec![]);
    c.handle_head(ms(1_000_000), addr(2), THEM, 5);
    assert!(
        drain(&mut c, ms(1_000_000)).requests.is_empty(),
        "held: nothing to do"
    );
    c.handle_head(ms(1_000_000), addr(2), THEM, 6);
    let o = drain(&mut c, ms(1_000_000));
    assert_eq!(o.requests.len(), 1);
    assert_eq!(o.requests[0].1, addr(2));
}

#[test]
fn local_commits_go_to_every_peer_of_a_small_mesh_unless_over_the_cap() {
    let mut c = core(&[2, 3, 4]);
    settle(&mut c, ms(0), &Knowledge::default());
    c.handle_local_commit(&[batch(ME, 1, 100)]);
    let o = drain(&mut c, ms(1));
    let mut to: Vec<SocketAddr> = o.uni.iter().map(|u| u.0).collect();
    to.sort();
    assert_eq!(to, vec![addr(2), addr(3), addr(4)]);
    // Over the broadcast cap: anti-entropy carries it.
    let cap = Config::default().max_broadcast_bytes;
    c.handle_local_commit(&[batch(ME, 2, cap / 2), batch(ME, 2, cap / 2 + 10)]);
    assert!(drain(&mut c, ms(2)).uni.is_empty());
}

#[test]
fn a_reconciliation_groups_its_applies_pauses_reading_and_finishes_after_them() {
    let cfg = Config {
        apply_group_bytes: 1000,
        ..Config::default()
    };
    let mut c = Replication::new(cfg, 7, ME, Knowledge::default(), false);
    c.peer_up(addr(2), None);
    let o = drain(&mut c, ms(0));
    let (s, to, _) = o.requests[0].clone();
    assert_eq!(to, addr(2));
    // Frames of about 600 bytes: an apply every second frame.
    let frame = |v: u64| encode_sync_batch(&batch(THEM, v, 600), usize::MAX).unwrap();
    assert!(c.handle_response_frame(ms(1), s, &frame(1)));
    assert!(drain(&mut c, ms(1)).applies.is_empty(), "grouping");
    assert!(c.handle_response_frame(ms(1), s, &frame(2)));
    let a1 = drain(&mut c, ms(1)).applies;
    assert_eq!(a1.len(), 1);
    assert_eq!(a1[0].1.len(), 2, "two batches, one transaction");
    c.handle_response_frame(ms(1), s, &frame(3));
    let more = c.handle_response_frame(ms(1), s, &frame(4));
    let a2 = drain(&mut c, ms(1)).applies;
    assert!(!more, "two applies behind: stop reading");
    // The deadline does not run while the node waits on its own applies.
    c.handle_timeout(ms(60_000));
    assert!(drain(&mut c, ms(60_000)).events.is_empty());
    c.set_knowledge(holding(THEM, 2), vec![]);
    c.handle_applied(ms(60_001), a1[0].0, Ok(true));
    let o = drain(&mut c, ms(60_001));
    assert_eq!(o.events, vec![Event::ResumeReading(s)]);
    let done = encode(
        &Message::SyncDone {
            knowledge: holding(THEM, 10),
            retention: Default::default(),
        },
        usize::MAX,
    )
    .unwrap();
    assert!(c.handle_response_frame(ms(60_002), s, &done));
    c.handle_response_end(ms(60_002), s, Ok(()));
    assert!(
        drain(&mut c, ms(60_002)).events.is_empty(),
        "not finished while an apply runs"
    );
    c.set_knowledge(holding(THEM, 4), vec![]);
    c.handle_applied(ms(60_003), a2[0].0, Ok(true));
    let o = drain(&mut c, ms(60_003));
    assert!(o.events.contains(&Event::SyncEnded {
        peer: addr(2),
        error: None
    }));
    // It learned something and the peer holds more: back at once.
    assert_eq!(o.requests.len(), 1, "resumes with the same peer");
    assert_eq!(o.requests[0].1, addr(2));
    assert_eq!(o.requests[0].2, holding(THEM, 4));
    let st = c.peers();
    assert_eq!(
        st[0].knowledge.as_ref().map(|k| &k.0),
        Some(&holding(THEM, 10))
    );
    assert_eq!(c.stats().syncs_completed, 1);
}

#[test]
fn a_reconciliation_that_hears_nothing_fails_and_is_retried() {
    let mut c = core(&[2]);
    let o = drain(&mut c, ms(0));
    let (s, _, _) = o.requests[0].clone();
    let timeout = Config::default().session_timeout;
    assert!(c.poll_timeout(ms(0)).unwrap() <= timeout);
    c.handle_timeout(timeout);
    let o = drain(&mut c, timeout);
    assert!(o.events.contains(&Event::CancelSession(s)));
    assert_eq!(c.stats().syncs_failed, 1);
    // A late frame of the failed session is ignored.
    let done = encode(
        &Message::SyncDone {
            knowledge: Knowledge::default(),
            retention: Default::default(),
        },
        usize::MAX,
    )
    .unwrap();
    assert!(!c.handle_response_frame(timeout, s, &done));
    // Retried after the retry delay.
    let later = timeout + Config::default().sync_retry;
    let o = drain(&mut c, later);
    assert_eq!(o.requests.len(), 1);
    assert_ne!(o.requests[0].0, s, "a new session");
    // A response that ends without its last frame fails too.
    let s2 = o.requests[0].0;
    c.handle_response_end(later, s2, Ok(()));
    assert!(drain(&mut c, later).events.iter().any(|e| matches!(
        e,
        Event::SyncEnded { error: Some(m), .. } if m.contains("final frame")
    )));
}

#[test]
fn serving_extracts_what_the_requester_lacks_and_answers_once_with_fresh_knowledge() {
    let mut c = core(&[2]);
    drain(&mut c, ms(0));
    c.set_knowledge(holding(ME, 5), vec![(THEM, 9)]);
    let req = encode(
        &Message::SyncRequest {
            knowledge: holding(ME, 2),
            retention: Default::default(),
        },
        usize::MAX,
    )
    .unwrap();
    c.handle_request(ms(1), addr(2), RequestId(1), &req)
        .unwrap();
    let o = drain(&mut c, ms(1));
    assert_eq!(o.extracts.len(), 1);
    assert_eq!(o.extracts[0].2, holding(ME, 2));
    assert!(
        o.answers.is_empty(),
        "the last frame comes after the batches"
    );
    // More committed while extracting: the last frame says so.
    c.set_knowledge(holding(ME, 6), vec![(THEM, 9)]);
    c.handle_extracted(ms(2), o.extracts[0].0, Extracted::Done { skipped: 0 });
    let o = drain(&mut c, ms(2));
    let mut want = holding(ME, 6);
    want.insert(THEM, 9);
    assert_eq!(
        o.answers,
        vec![(RequestId(1), Some(want))],
        "quarantined versions advertised"
    );
    // A malformed request is rejected at once.
    assert!(
        c.handle_request(ms(3), addr(2), RequestId(2), &[9, 9])
            .is_err()
    );
    assert_eq!(drain(&mut c, ms(3)).answers, vec![(RequestId(2), None)]);
    // A failed extraction is rejected and counted.
    c.handle_request(ms(4), addr(2), RequestId(3), &req)
        .unwrap();
    let o = drain(&mut c, ms(4));
    c.handle_extracted(ms(4), o.extracts[0].0, Extracted::Failed("disk".into()));
    assert_eq!(drain(&mut c, ms(4)).answers, vec![(RequestId(3), None)]);
    assert_eq!(c.stats().serve_failures, 1);
}

#[test]
fn a_peer_holding_more_of_our_own_actor_makes_us_move_to_a_new_one_at_most_once_a_minute() {
    let mut c = Replication::new(Config::default(), 7, ME, holding(ME, 5), true);
    c.peer_up(addr(2), None);
    drain(&mut c, ms(0));
    // A peer holding exactly our head confirms the file: probation over.
    let req = |k: Knowledge| {
        encode(
            &Message::SyncRequest {
                knowledge: k,
                retention: Default::default(),
            },
            usize::MAX,
        )
        .unwrap()
    };
    c.handle_request(ms(1), addr(2), RequestId(1), &req(holding(ME, 5)))
        .unwrap();
    assert!(!c.take_probation());
    assert!(drain(&mut c, ms(1)).events.is_empty());
    // A peer holding more: our file lost commits.
    c.handle_request(ms(2), addr(2), RequestId(2), &req(holding(ME, 9)))
        .unwrap();
    let o = drain(&mut c, ms(2));
    assert!(o.events.contains(&Event::RotateActor {
        from: addr(2),
        their_head: 9,
        our_head: 5
    }));
    c.handle_request(ms(3), addr(2), RequestId(3), &req(holding(ME, 9)))
        .unwrap();
    assert!(
        !drain(&mut c, ms(3))
            .events
            .iter()
            .any(|e| matches!(e, Event::RotateActor { .. })),
        "at most once a minute"
    );
    c.set_actor(ActorId([3; 16]));
    assert_eq!(c.actor(), ActorId([3; 16]));
}

#[test]
fn a_peer_that_goes_down_keeps_what_was_known_of_it_and_is_not_chosen() {
    let mut c = core(&[2, 3]);
    settle(&mut c, ms(0), &holding(THEM, 3));
    c.peer_down(addr(2));
    let p = c.peers();
    let two = p.iter().find(|p| p.addr == addr(2)).unwrap();
    assert!(!two.up);
    assert_eq!(
        two.knowledge.as_ref().map(|k| &k.0),
        Some(&holding(THEM, 3))
    );
    c.handle_local_commit(&[batch(ME, 1, 10)]);
    let o = drain(&mut c, ms(1));
    assert!(
        o.uni.iter().all(|u| u.0 == addr(3)),
        "nothing sent to a down peer"
    );
    for t in 1..20 {
        for (_, to, _) in drain(&mut c, ms(t * 1000)).requests {
            assert_eq!(to, addr(3));
        }
    }
}

/// A responder that collected versions a requester lacks refuses its plain
/// reconciliation ("needs a snapshot") but serves a snapshot request —
/// while still treating it as stale (its broadcasts dropped, never pulled
/// from) until it asks without lacking anything.
#[test]
fn a_stale_requester_is_refused_incrementally_and_served_a_snapshot() {
    let mut c = core(&[2]);
    drain(&mut c, ms(0));
    c.set_knowledge(holding(THEM, 10), vec![]);
    c.set_collected([(THEM, 5)].into());
    let mut stale = holding(THEM, 2);
    stale
        .have
        .entry(ActorId([3; 16]))
        .or_default()
        .insert_range(1, 3);
    let ask = |snapshot: Option<SnapshotCursor>| {
        encode(
            &Message::SyncRequest {
                knowledge: stale.clone(),
                retention: RetentionInfo {
                    snapshot,
                    ..Default::default()
                },
            },
            usize::MAX,
        )
        .unwrap()
    };
    c.handle_request(ms(1), addr(2), RequestId(1), &ask(None))
        .unwrap();
    let o = drain(&mut c, ms(1));
    assert!(o.extracts.is_empty());
    assert_eq!(o.refusals.len(), 1);
    assert!(o.refusals[0].2, "told it needs a snapshot: {o:?}");
    assert!(
        o.events
            .iter()
            .any(|e| matches!(e, Event::PeerNeedsSnapshot { missing: 3, .. }))
    );
    let cursor = SnapshotCursor {
        table: "t".into(),
        after: Some(vec![1]),
        past: false,
    };
    c.handle_request(ms(2), addr(2), RequestId(2), &ask(Some(cursor.clone())))
        .unwrap();
    let o = drain(&mut c, ms(2));
    assert!(o.refusals.is_empty(), "{o:?}");
    assert_eq!(o.extract_snapshots, vec![Some(cursor)]);
    assert!(c.stale_peers().contains(&addr(2)), "still stale meanwhile");
    // A responder that cannot list (changes waiting): refused, not failed.
    c.handle_extracted(ms(3), o.extracts[0].0, Extracted::Refused("busy".into()));
    let o = drain(&mut c, ms(3));
    assert_eq!(o.refusals.len(), 1);
    assert!(!o.refusals[0].2);
    assert_eq!(c.stats().serve_failures, 0);
}

/// The stale node's side: told it needs a snapshot, it asks for one from
/// its cursor; each range of the listing becomes a prune after the batches
/// before it, and the last one makes it whole (writes and serving resume).
#[test]
fn a_node_told_it_needs_a_snapshot_asks_for_one_and_is_whole_after_the_listing() {
    let mut c = core(&[2]);
    c.set_knowledge(holding(THEM, 2), vec![]);
    let o = drain(&mut c, ms(0));
    let (s, _, _) = o.requests[0];
    assert_eq!(o.request_snapshots, vec![None]);
    let refused = encode(
        &Message::SyncRefused {
            reason: "collected".into(),
            snapshot: true,
            collected: [(THEM, 5)].into(),
        },
        usize::MAX,
    )
    .unwrap();
    assert!(!c.handle_response_frame(ms(1), s, &refused));
    assert!(c.needs_snapshot().is_some());
    let o = drain(&mut c, ms(1));
    assert!(
        o.events
            .iter()
            .any(|e| matches!(e, Event::NeedsSnapshot { .. }))
    );
    // The next reconciliation asks for a snapshot, from the cursor.
    let cursor = SnapshotCursor {
        table: "t".into(),
        after: None,
        past: false,
    };
    c.set_snapshot_cursor(cursor.clone());
    let mut now = ms(2);
    let s = loop {
        c.handle_timeout(now);
        let o = drain(&mut c, now);
        if let Some((s, _, _)) = o.requests.first() {
            assert_eq!(o.request_snapshots, vec![Some(cursor.clone())]);
            break *s;
        }
        now += ms(500);
        assert!(now < Duration::from_secs(120), "never asked again");
    };
    let theirs = holding(THEM, 10);
    let frames = [
        encode_sync_batch(&batch(THEM, 3, 10), usize::MAX).unwrap(),
        encode_snapshot_base(theirs.clone(), usize::MAX).unwrap(),
        encode_key_chunk(
            KeyChunk {
                table: "t".into(),
                through: Some(vec![9]),
                ..Default::default()
            },
            usize::MAX,
        )
        .unwrap(),
    ];
    for f in &frames {
        c.handle_response_frame(now, s, f);
    }
    let o = drain(&mut c, now);
    assert_eq!(o.applies.len(), 1, "the batch before the range");
    assert!(
        o.prunes.is_empty(),
        "the range waits for the batch before it"
    );
    c.handle_applied(now, o.applies[0].0, Ok(true));
    let o = drain(&mut c, now);
    assert_eq!(o.prunes.len(), 1);
    assert_eq!(o.prunes[0].2, theirs, "checked against the base");
    let next = SnapshotCursor {
        table: "t".into(),
        after: Some(vec![9]),
        past: false,
    };
    c.handle_pruned(
        now,
        o.prunes[0].0,
        Ok(Pruned {
            dropped: 2,
            checked: 5,
            cursor: next.clone(),
            ..Default::default()
        }),
    );
    assert!(c.needs_snapshot().is_some(), "not before the last range");
    assert_eq!(c.snapshot_progress().cursor, next);
    let last = encode_key_chunk(
        KeyChunk {
            table: "t".into(),
            after: Some(vec![9]),
            last: true,
            ..Default::default()
        },
        usize::MAX,
    )
    .unwrap();
    c.handle_response_frame(now, s, &last);
    let o = drain(&mut c, now);
    // The file says complete, but its listing's base did not cover what
    // the peer collected (THEM 1..=5): again, from the start.
    c.handle_pruned(
        now,
        o.prunes[0].0,
        Ok(Pruned {
            complete: true,
            now_checked: Some(holding(THEM, 4)),
            ..Default::default()
        }),
    );
    assert!(c.needs_snapshot().is_some(), "not covered yet");
    assert_eq!(c.snapshot_progress().cursor, SnapshotCursor::default());
    let o = drain(&mut c, now);
    assert!(
        o.events
            .iter()
            .any(|e| matches!(e, Event::NeedsSnapshot { need, .. } if need.get(&THEM) == Some(&5)))
    );
    c.handle_response_frame(now, s, &last);
    let o = drain(&mut c, now);
    c.handle_pruned(
        now,
        o.prunes[0].0,
        Ok(Pruned {
            rebased: 1,
            checked: 3,
            complete: true,
            now_checked: Some(holding(THEM, 10)),
            ..Default::default()
        }),
    );
    assert_eq!(c.needs_snapshot(), None, "whole again");
    let p = c.snapshot_progress();
    assert_eq!((p.dropped, p.rebased, p.checked), (2, 1, 8));
    let o = drain(&mut c, now);
    assert!(
        o.events
            .iter()
            .any(|e| matches!(e, Event::SnapshotComplete { .. }))
    );
}

/// Whichever side opens the reconciliation, the stale node learns it is
/// stale: a request from a peer that collected versions this node lacks
/// makes it refuse and stop.
#[test]
fn a_request_from_a_peer_that_collected_what_this_node_lacks_makes_it_stop() {
    let mut c = core(&[2]);
    drain(&mut c, ms(0));
    c.set_knowledge(holding(THEM, 2), vec![]);
    let req = encode(
        &Message::SyncRequest {
            knowledge: holding(THEM, 10),
            retention: RetentionInfo {
                collected: [(THEM, 6)].into(),
                ..Default::default()
            },
        },
        usize::MAX,
    )
    .unwrap();
    c.handle_request(ms(1), addr(2), RequestId(1), &req)
        .unwrap();
    let o = drain(&mut c, ms(1));
    assert!(o.extracts.is_empty(), "nothing of its rows served");
    assert_eq!(o.refusals.len(), 1);
    assert!(c.needs_snapshot().is_some());
    assert!(
        o.events
            .iter()
            .any(|e| matches!(e, Event::NeedsSnapshot { .. }))
    );
    // Stale, it still answers another node's snapshot request — with its
    // listing only (the two sides of a long partition need each other's).
    let snap = encode(
        &Message::SyncRequest {
            knowledge: holding(THEM, 1),
            retention: RetentionInfo {
                snapshot: Some(SnapshotCursor::default()),
                ..Default::default()
            },
        },
        usize::MAX,
    )
    .unwrap();
    c.handle_request(ms(2), addr(2), RequestId(2), &snap)
        .unwrap();
    let o = drain(&mut c, ms(2));
    assert!(o.refusals.is_empty(), "{o:?}");
    assert_eq!(o.extract_listing_only, vec![true]);
    // A new node (holding nothing) is not stale.
    let mut fresh = core(&[2]);
    drain(&mut fresh, ms(0));
    fresh
        .handle_request(ms(1), addr(2), RequestId(1), &req)
        .unwrap();
    assert_eq!(fresh.needs_snapshot(), None);
}
