//! Snapshot catch-up: a node away while its peers collected tombstones of
//! versions it lacks comes back whole — rows deleted meanwhile gone, its
//! own writes kept — and ends exactly where incremental sync would have
//! taken it had nothing been collected.
//!
//! Every test runs the same history in two worlds from identical files (the
//! same actors, so concurrent writes break ties alike): in one the peers
//! collect while the node is away and it catches up by snapshot; in the
//! other nothing is collected and it catches up incrementally. Both must end
//! with the same rows on every node.

use std::collections::BTreeMap;

use litemesh_storage::{
    ChangeBatch, KeyChunk, Knowledge, SnapshotCursor, SnapshotFrame, Store, StoreOptions,
};
use litemesh_sync::{HeldBack, Report, stable_cut};
use proptest::prelude::*;

const SCHEMA: &str = "CREATE TABLE kv (k INTEGER PRIMARY KEY, v INTEGER);
CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT);";

/// Nodes 0 and 1 stay; node 2 goes away.
const NODES: usize = 3;
const AWAY: usize = 2;

fn opts() -> StoreOptions {
    StoreOptions {
        durable: false,
        ..Default::default()
    }
}

/// Two worlds of three files each, identical (the same actor ids).
fn twin_worlds(dir: &tempfile::TempDir) -> (Vec<Store>, Vec<Store>) {
    for i in 0..NODES {
        let mut s = Store::open_with(dir.path().join(format!("a{i}.db")), &opts()).unwrap();
        s.apply_schema(SCHEMA).unwrap();
        drop(s);
        std::fs::copy(
            dir.path().join(format!("a{i}.db")),
            dir.path().join(format!("b{i}.db")),
        )
        .unwrap();
    }
    let open = |w: &str| -> Vec<Store> {
        (0..NODES)
            .map(|i| Store::open_with(dir.path().join(format!("{w}{i}.db")), &opts()).unwrap())
            .collect()
    };
    let (a, b) = (open("a"), open("b"));
    assert_eq!(a[0].actor_id(), b[0].actor_id(), "twin files");
    (a, b)
}

fn report(s: &Store) -> Report {
    Report {
        knowledge: s.knowledge().unwrap(),
        owned: s.owned_actors().unwrap(),
        unapplied: 0,
    }
}

/// One incremental reconciliation: `to` gets what it lacks from `from`,
/// floors travel both ways.
fn pull(w: &mut [Store], from: usize, to: usize) {
    let theirs = w[to].knowledge().unwrap();
    let mut out: Vec<ChangeBatch> = Vec::new();
    w[from]
        .changes_since(&theirs, 4096, |b| {
            out.push(b);
            Ok(true)
        })
        .unwrap();
    for b in &out {
        w[to].apply(b).unwrap();
    }
    let f = w[from].floors().unwrap();
    w[to].raise_floors(&f).unwrap();
    let f = w[to].floors().unwrap();
    w[from].raise_floors(&f).unwrap();
}

/// Syncs every pair of `nodes` until they hold the same.
fn settle(w: &mut [Store], nodes: &[usize]) {
    for _ in 0..3 {
        for &a in nodes {
            for &b in nodes {
                if a != b {
                    pull(w, a, b);
                }
            }
        }
    }
}

/// Nodes 0 and 1 collect what the stable cut allows with node 2 forgotten
/// (away longer than they wait for a member): they report to each other
/// only.
fn collect_without_the_away_node(w: &mut [Store]) -> u64 {
    let mut total = 0;
    for me in 0..2 {
        let other = 1 - me;
        let reports = BTreeMap::from([(other, report(&w[other]))]);
        let mine = w[me].knowledge().unwrap();
        let owned = w[me].owned_actors().unwrap();
        match stable_cut(&mine, &owned, &[other], &reports) {
            Ok(cut) => total += w[me].collect(&cut.cut, u64::MAX).unwrap().tombstones,
            Err(HeldBack::NoReport(_) | HeldBack::Behind { .. }) => {}
            Err(e) => panic!("{e:?}"),
        }
    }
    total
}

/// What a snapshot catch-up from `from` did on `to`.
#[derive(Debug, Default)]
struct Took {
    dropped: u64,
    rebased: u64,
    answers: u64,
}

/// Per actor, the versions `1..=n` some of `nodes` collected.
fn collected_by(w: &[Store], nodes: &[usize]) -> BTreeMap<litemesh_storage::ActorId, u64> {
    let mut need = BTreeMap::new();
    for &n in nodes {
        for (a, c) in w[n].collected_through().unwrap() {
            let e = need.entry(a).or_insert(0);
            *e = c.max(*e);
        }
    }
    need
}

/// Snapshot catch-up of `to` from `sources` in turn (one answer each,
/// cut after `frames_per_answer` frames to exercise resuming), until the
/// listing completes — as the core drives it: a source that needs a
/// snapshot itself answers with its listing only.
fn snapshot(w: &mut [Store], sources: &[usize], to: usize, frames_per_answer: usize) -> Took {
    let mut took = Took::default();
    let others: Vec<usize> = (0..NODES).filter(|n| *n != to).collect();
    let need = collected_by(w, &others);
    w[to].set_needs_snapshot("test", &need).unwrap();
    for round in 0.. {
        assert!(round < 10_000, "the listing never completes");
        let from = sources[round % sources.len()];
        let cursor: SnapshotCursor = w[to].snapshot_cursor().unwrap();
        let theirs = w[to].knowledge().unwrap();
        let listing_only = w[from].needs_snapshot().unwrap().is_some();
        let mut frames = Vec::new();
        let mut listed = 0;
        w[from]
            .snapshot_for(&theirs, None, &cursor, listing_only, 4096, |f| {
                let keys = matches!(f, SnapshotFrame::Keys(_));
                frames.push(f);
                listed += usize::from(keys);
                Ok(listed < frames_per_answer)
            })
            .unwrap();
        took.answers += 1;
        let mut base: Option<Knowledge> = None;
        for f in frames {
            match f {
                SnapshotFrame::Batch(b) => {
                    w[to].apply(&b).unwrap();
                }
                SnapshotFrame::Base(k) => base = Some(k),
                SnapshotFrame::Keys(c) => {
                    let p = w[to]
                        .prune_absent(&c, base.as_ref().expect("base first"), &need)
                        .unwrap();
                    took.dropped += p.dropped;
                    took.rebased += p.rebased;
                    if p.complete {
                        assert_eq!(w[to].needs_snapshot().unwrap(), None);
                        return took;
                    }
                }
            }
        }
    }
    unreachable!()
}

/// The rows of both tables.
type Rows = (Vec<(i64, i64)>, Vec<(String, String)>);

fn dump(s: &Store) -> Rows {
    let c = s.connection();
    let kv = c
        .prepare("SELECT k, v FROM kv ORDER BY k")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let notes = c
        .prepare("SELECT id, body FROM notes ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    (kv, notes)
}

fn exec(s: &mut Store, sql: &str) {
    s.execute_batch(sql).unwrap();
}

/// A history step, run alike in both worlds.
#[derive(Debug, Clone)]
enum Op {
    /// On a node that stays: insert or replace key `k` (0..8) with `v`.
    Upsert(usize, i64, i64),
    /// On a node that stays: update `k` if present.
    Update(usize, i64, i64),
    /// On a node that stays: delete `k`.
    Delete(usize, i64),
    /// Nodes 0 and 1 reconcile.
    Sync,
    /// The away node updates a key it holds.
    AwayUpdate(i64, i64),
    /// The away node deletes a key.
    AwayDelete(i64),
    /// The away node inserts a key no other node ever uses (>= 100).
    AwayInsert(i64, i64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..2usize, 0..8i64, 0..100i64).prop_map(|(n, k, v)| Op::Upsert(n, k, v)),
        (0..2usize, 0..8i64, 0..100i64).prop_map(|(n, k, v)| Op::Update(n, k, v)),
        (0..2usize, 0..8i64).prop_map(|(n, k)| Op::Delete(n, k)),
        Just(Op::Sync),
        (0..8i64, 0..100i64).prop_map(|(k, v)| Op::AwayUpdate(k, v)),
        (0..8i64).prop_map(Op::AwayDelete),
        (100..110i64, 0..100i64).prop_map(|(k, v)| Op::AwayInsert(k, v)),
    ]
}

fn run(w: &mut [Store], op: &Op) {
    match *op {
        Op::Upsert(n, k, v) => exec(
            &mut w[n],
            &format!("INSERT OR REPLACE INTO kv VALUES ({k}, {v})"),
        ),
        Op::Update(n, k, v) => exec(&mut w[n], &format!("UPDATE kv SET v = {v} WHERE k = {k}")),
        Op::Delete(n, k) => exec(&mut w[n], &format!("DELETE FROM kv WHERE k = {k}")),
        Op::Sync => settle(w, &[0, 1]),
        Op::AwayUpdate(k, v) => exec(
            &mut w[AWAY],
            &format!("UPDATE kv SET v = {v} WHERE k = {k}"),
        ),
        Op::AwayDelete(k) => exec(&mut w[AWAY], &format!("DELETE FROM kv WHERE k = {k}")),
        Op::AwayInsert(k, v) => exec(
            &mut w[AWAY],
            &format!("INSERT OR REPLACE INTO kv VALUES ({k}, {v})"),
        ),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// The property: with collection and a snapshot catch-up, every node
    /// ends with exactly the rows incremental sync gives without
    /// collection — deletes made while the node was away stay deleted,
    /// the writes it made meanwhile survive where they win.
    #[test]
    fn snapshot_catch_up_equals_incremental_sync(
        before in prop::collection::vec(op(), 0..12),
        away in prop::collection::vec(op(), 1..40),
        frames_per_answer in 1usize..6,
        alternate in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (mut collected, mut plain) = twin_worlds(&dir);
        for w in [&mut collected, &mut plain] {
            // Some shared history every node holds.
            for op in before.iter().filter(|o| !matches!(o, Op::AwayUpdate(..) | Op::AwayDelete(_) | Op::AwayInsert(..))) {
                run(w, op);
            }
            settle(w, &[0, 1, 2]);
            for op in &away {
                run(w, op);
            }
            settle(w, &[0, 1]);
        }
        collect_without_the_away_node(&mut collected);
        let sources: &[usize] = if alternate { &[0, 1] } else { &[0] };
        snapshot(&mut collected, sources, AWAY, frames_per_answer);
        settle(&mut collected, &[0, 1, 2]);
        settle(&mut plain, &[0, 1, 2]);
        let want = dump(&plain[0]);
        for i in 0..NODES {
            prop_assert_eq!(&dump(&plain[i]), &want, "incremental world, node {}", i);
            prop_assert_eq!(&dump(&collected[i]), &want, "snapshot world, node {}", i);
        }
    }

    /// Both sides of a long partition collect (the away node alone
    /// collects its own deletes), so each needs the other's listing: the
    /// away node lists against a node that is stale too (listing only,
    /// its base what its rows reflect), that node then against the away
    /// node, the third against either — and every node ends with exactly
    /// what incremental sync gives without collection.
    #[test]
    fn both_sides_of_a_long_partition_catch_up_by_snapshot(
        before in prop::collection::vec(op(), 0..12),
        away in prop::collection::vec(op(), 1..40),
        frames_per_answer in 1usize..6,
        third_from_away in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (mut collected, mut plain) = twin_worlds(&dir);
        for w in [&mut collected, &mut plain] {
            for op in before.iter().filter(|o| !matches!(o, Op::AwayUpdate(..) | Op::AwayDelete(_) | Op::AwayInsert(..))) {
                run(w, op);
            }
            settle(w, &[0, 1, 2]);
            for op in &away {
                run(w, op);
            }
            settle(w, &[0, 1]);
        }
        collect_without_the_away_node(&mut collected);
        // Alone, the away node waits for no one.
        let cut: BTreeMap<_, _> = {
            let k = collected[AWAY].knowledge().unwrap();
            k.have.keys().map(|a| (*a, k.complete_through(a))).collect()
        };
        collected[AWAY].collect(&cut, u64::MAX).unwrap();
        // Everyone learns it is stale (each side collected what the other
        // lacks); then the listings, in the order the nodes would.
        for i in 0..2 {
            let need = collected_by(&collected, &[AWAY]);
            collected[i].set_needs_snapshot("the away node collected", &need).unwrap();
        }
        snapshot(&mut collected, &[0], AWAY, frames_per_answer);
        snapshot(&mut collected, &[AWAY], 0, frames_per_answer);
        snapshot(&mut collected, &[if third_from_away { AWAY } else { 0 }], 1, frames_per_answer);
        settle(&mut collected, &[0, 1, 2]);
        settle(&mut plain, &[0, 1, 2]);
        let want = dump(&plain[0]);
        for (i, node) in collected.iter().enumerate() {
            prop_assert_eq!(&dump(node), &want, "snapshot world, node {}", i);
        }
    }
}

/// A concrete run: the away node holds rows the others deleted (and
/// collected), and wrote rows of its own; the snapshot drops the first and
/// keeps (rebasing) the second, in several resumable answers, and every
/// node ends identical.
#[test]
fn a_node_back_from_a_long_absence_drops_deleted_rows_and_keeps_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, _) = twin_worlds(&dir);
    for k in 0..200 {
        exec(&mut w[0], &format!("INSERT INTO kv VALUES ({k}, {k})"));
    }
    exec(
        &mut w[1],
        "INSERT INTO notes VALUES ('a', 'one'), ('b', 'two')",
    );
    settle(&mut w, &[0, 1, 2]);
    // Away: the others delete half the rows and collect; the away node
    // updates some of those and writes rows of its own.
    exec(&mut w[0], "DELETE FROM kv WHERE k % 2 = 0");
    exec(&mut w[1], "DELETE FROM notes WHERE id = 'a'");
    exec(&mut w[AWAY], "UPDATE kv SET v = -1 WHERE k < 10");
    exec(
        &mut w[AWAY],
        "INSERT INTO kv VALUES (1000, 1), (1001, 2); INSERT INTO notes VALUES ('mine', 'kept')",
    );
    settle(&mut w, &[0, 1]);
    let gone = collect_without_the_away_node(&mut w);
    assert!(gone >= 101, "tombstones collected: {gone}");
    // Incrementally, the away node would keep the deleted rows forever.
    let took = snapshot(&mut w, &[0, 1], AWAY, 1);
    assert_eq!(took.dropped, 101, "{took:?}");
    assert_eq!(
        took.rebased, 3,
        "its own rows, at or under the floor: {took:?}"
    );
    assert!(took.answers > 1, "resumed: {took:?}");
    settle(&mut w, &[0, 1, 2]);
    let (kv, notes) = dump(&w[0]);
    assert_eq!(kv.len(), 100 + 2);
    assert!(
        kv.iter().all(|(k, _)| k % 2 == 1 || *k >= 1000),
        "no deleted row back: {kv:?}"
    );
    assert!(kv.contains(&(1, -1)), "its update of a surviving row kept");
    assert!(kv.contains(&(1000, 1)) && kv.contains(&(1001, 2)));
    assert_eq!(
        notes,
        vec![
            ("b".to_string(), "two".to_string()),
            ("mine".to_string(), "kept".to_string())
        ]
    );
    for s in &w {
        assert_eq!(dump(s), (kv.clone(), notes.clone()));
    }
}

/// The one case the result is a choice, documented: a row the away node
/// started afresh while the others deleted the same key at a later life
/// and collected it. Nobody holds that delete any more; the row is kept
/// (insert wins), and every node agrees.
#[test]
fn a_fresh_life_of_a_key_deleted_and_collected_elsewhere_is_kept_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, _) = twin_worlds(&dir);
    exec(&mut w[0], "INSERT INTO kv VALUES (1, 1)");
    exec(&mut w[0], "DELETE FROM kv WHERE k = 1");
    settle(&mut w, &[0, 1, 2]);
    // Away: the others re-insert and delete again (life 4); the away node
    // inserts the key afresh (life 3).
    exec(&mut w[1], "INSERT INTO kv VALUES (1, 2)");
    exec(&mut w[1], "DELETE FROM kv WHERE k = 1");
    exec(&mut w[AWAY], "INSERT INTO kv VALUES (1, 3)");
    settle(&mut w, &[0, 1]);
    assert!(collect_without_the_away_node(&mut w) > 0);
    let took = snapshot(&mut w, &[0], AWAY, usize::MAX);
    assert_eq!((took.dropped, took.rebased), (0, 1), "{took:?}");
    settle(&mut w, &[0, 1, 2]);
    for s in &w {
        assert_eq!(dump(s).0, vec![(1, 3)]);
    }
}

/// A malformed cursor or range (network input) is an error, never a panic,
/// and changes nothing.
#[test]
fn malformed_cursors_and_ranges_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, _) = twin_worlds(&dir);
    exec(&mut w[0], "INSERT INTO kv VALUES (1, 1)");
    let theirs = w[1].knowledge().unwrap();
    let bad = SnapshotCursor {
        table: "kv".into(),
        after: Some(vec![0xff, 0xff, 0xff]),
        past: false,
    };
    let mut sent = 0;
    assert!(
        w[0].snapshot_for(&theirs, None, &bad, false, 4096, |_| {
            sent += 1;
            Ok(true)
        })
        .is_err()
    );
    // A chunk whose range cannot be decoded: an error, nothing changed.
    let chunk = KeyChunk {
        table: "kv".into(),
        after: Some(vec![0xff, 0xff]),
        ..KeyChunk::default()
    };
    assert!(
        w[1].prune_absent(&chunk, &Knowledge::default(), &BTreeMap::new())
            .is_err()
    );
    assert_eq!(w[1].snapshot_cursor().unwrap(), SnapshotCursor::default());
}

/// Ranges are checked in order: one that does not start where the last
/// one ended is refused and changes nothing (the listing resumes from the
/// stored cursor), so a crash or a reordering can never skip a range.
#[test]
fn listing_ranges_are_checked_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, _) = twin_worlds(&dir);
    let values: Vec<String> = (0..5000).map(|k| format!("({k}, {k})")).collect();
    exec(
        &mut w[0],
        &format!("INSERT INTO kv VALUES {}", values.join(", ")),
    );
    settle(&mut w, &[0, 1, 2]);
    exec(&mut w[0], "DELETE FROM kv WHERE k % 3 = 0");
    settle(&mut w, &[0, 1]);
    collect_without_the_away_node(&mut w);
    let need = collected_by(&w, &[0, 1]);
    w[AWAY].set_needs_snapshot("test", &need).unwrap();
    let theirs = w[AWAY].knowledge().unwrap();
    let mut frames = Vec::new();
    w[0].snapshot_for(
        &theirs,
        None,
        &SnapshotCursor::default(),
        false,
        4096,
        |f| {
            frames.push(f);
            Ok(true)
        },
    )
    .unwrap();
    let mut base = None;
    let mut chunks = Vec::new();
    for f in frames {
        match f {
            SnapshotFrame::Batch(b) => {
                w[AWAY].apply(&b).unwrap();
            }
            SnapshotFrame::Base(k) => base = Some(k),
            SnapshotFrame::Keys(c) => chunks.push(c),
        }
    }
    let base = base.unwrap();
    assert!(chunks.len() >= 3, "kv in several ranges: {}", chunks.len());
    let before = dump(&w[AWAY]);
    // The second range before the first: refused, nothing done.
    assert!(matches!(
        w[AWAY].prune_absent(&chunks[1], &base, &need),
        Err(litemesh_storage::StorageError::SnapshotOutOfOrder)
    ));
    assert_eq!(dump(&w[AWAY]), before);
    assert_eq!(
        w[AWAY].snapshot_cursor().unwrap(),
        SnapshotCursor::default()
    );
    // In order: the listing completes and the deleted rows go.
    let mut complete = false;
    for c in &chunks {
        complete = w[AWAY].prune_absent(c, &base, &need).unwrap().complete;
    }
    assert!(complete);
    assert_eq!(dump(&w[AWAY]), dump(&w[0]));
}
