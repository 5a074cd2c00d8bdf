//! Tombstone collection: dropping deleted rows' clocks once the stable cut
//! (litemesh_sync::stable_cut, from peers' reports) covers them never
//! changes what replicas converge to — no deleted row comes back, no write
//! is lost — whatever the order and delay of delivery.

mod common;
use std::collections::BTreeMap;

use litemesh_storage::{ChangeBatch, Knowledge, Store, StoreOptions, Value};
use litemesh_sync::{HeldBack, Report, stable_cut};
use proptest::prelude::*;

const NODES: usize = 3;
const SCHEMA: &str = "CREATE TABLE kv (k INTEGER PRIMARY KEY, v INTEGER);";

fn open(dir: &tempfile::TempDir, i: usize) -> Store {
    let opts = StoreOptions {
        durable: false,
        ..Default::default()
    };
    let mut s = Store::open_with(dir.path().join(format!("n{i}.db")), &opts).unwrap();
    s.apply_schema(SCHEMA).unwrap();
    s
}

/// A node of the test mesh: its store and the last report of every peer.
struct Node {
    store: Store,
    reports: BTreeMap<usize, Report>,
}

impl Node {
    fn report(&self) -> Report {
        Report {
            knowledge: self.store.knowledge().unwrap(),
            owned: self.store.owned_actors().unwrap(),
            unapplied: 0,
        }
    }

    /// Collects what the stable cut allows; returns tombstones dropped.
    fn collect(&mut self, me: usize, budget: u64) -> u64 {
        let members: Vec<usize> = (0..NODES).filter(|i| *i != me).collect();
        let mine = self.store.knowledge().unwrap();
        let owned = self.store.owned_actors().unwrap();
        match stable_cut(&mine, &owned, &members, &self.reports) {
            Ok(cut) => self.store.collect(&cut.cut, budget).unwrap().tombstones,
            Err(HeldBack::NoReport(_) | HeldBack::Behind { .. }) => 0,
            Err(e) => panic!("every writer reports, nothing is quarantined: {e:?}"),
        }
    }
}

/// One reconciliation, as the protocol does it: `to` sends its knowledge
/// (and floors), `from` answers with what `to` lacks and its own knowledge
/// (and floors). Batches are returned to be delivered later.
fn session(nodes: &mut [Node], from: usize, to: usize) -> Vec<ChangeBatch> {
    let to_report = nodes[to].report();
    let to_floors = nodes[to].store.floors().unwrap();
    let mut out = Vec::new();
    nodes[from]
        .store
        .changes_since(&to_report.knowledge, 4096, |b| {
            out.push(b);
            Ok(true)
        })
        .unwrap();
    nodes[from].store.raise_floors(&to_floors).unwrap();
    nodes[from].reports.insert(to, to_report);
    let from_report = nodes[from].report();
    let from_floors = nodes[from].store.floors().unwrap();
    nodes[to].store.raise_floors(&from_floors).unwrap();
    nodes[to].reports.insert(from, from_report);
    out
}

fn mesh(dir: &tempfile::TempDir) -> Vec<Node> {
    (0..NODES)
        .map(|i| Node {
            store: open(dir, i),
            reports: BTreeMap::new(),
        })
        .collect()
}

fn dump(s: &Store) -> Vec<(i64, i64)> {
    s.connection()
        .prepare("SELECT k, v FROM kv ORDER BY k")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn tombstones(s: &Store) -> u64 {
    s.metadata_stats().unwrap().tables[0].2
}

/// Syncs every pair until every node holds everything.
fn settle(nodes: &mut [Node], collect: bool) {
    for _round in 0..4 {
        for from in 0..NODES {
            for to in 0..NODES {
                if from != to {
                    for b in session(nodes, from, to) {
                        nodes[to].store.apply(&b).unwrap();
                    }
                }
            }
        }
        if collect {
            for (i, n) in nodes.iter_mut().enumerate() {
                n.collect(i, u64::MAX);
            }
        }
    }
}

#[test]
fn collected_tombstones_go_and_reinserts_win_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = mesh(&dir);
    for k in 0..50 {
        nodes[0]
            .store
            .execute_batch(&format!("INSERT INTO kv VALUES ({k}, {k})"))
            .unwrap();
    }
    nodes[0]
        .store
        .execute_batch("DELETE FROM kv WHERE k < 40")
        .unwrap();
    // Delete and re-insert key 45 a few times: its causal length climbs.
    settle(&mut nodes, false);
    for i in 0..3 {
        nodes[1]
            .store
            .execute_batch("DELETE FROM kv WHERE k = 45")
            .unwrap();
        settle(&mut nodes, false);
        nodes[2]
            .store
            .execute_batch(&format!("INSERT INTO kv VALUES (45, {i})"))
            .unwrap();
        settle(&mut nodes, false);
    }
    nodes[1]
        .store
        .execute_batch("DELETE FROM kv WHERE k = 45")
        .unwrap();
    settle(&mut nodes, false);
    assert_eq!(tombstones(&nodes[0].store), 41);
    // Before every node has reported holding the deletes, nothing goes.
    let mut fresh = Node {
        store: open(&dir, 9),
        reports: BTreeMap::new(),
    };
    assert_eq!(fresh.collect(9, u64::MAX), 0);
    // Node 0 collects alone; the others keep their tombstones.
    assert_eq!(nodes[0].collect(0, u64::MAX), 41);
    assert_eq!(tombstones(&nodes[0].store), 0);
    assert_eq!(tombstones(&nodes[1].store), 41);
    assert_eq!(nodes[0].store.floors().unwrap()["kv"], 8);
    // Node 0 re-inserts keys it no longer has a clock for: the new lives
    // start above the floor and beat the tombstones nodes 1 and 2 hold.
    nodes[0]
        .store
        .execute_batch("INSERT INTO kv VALUES (3, 300), (45, 4500)")
        .unwrap();
    // Node 1, which still holds the tombstones, re-inserts another key.
    nodes[1]
        .store
        .execute_batch("INSERT INTO kv VALUES (7, 700)")
        .unwrap();
    settle(&mut nodes, true);
    let want: Vec<(i64, i64)> = vec![(3, 300), (7, 700)]
        .into_iter()
        .chain((40..50).filter(|k| *k != 45).map(|k| (k, k)))
        .chain([(45, 4500)])
        .collect::<std::collections::BTreeMap<_, _>>()
        .into_iter()
        .collect();
    for n in &nodes {
        assert_eq!(dump(&n.store), want);
        assert_eq!(tombstones(&n.store), 0, "every node collected");
    }
    // A log entry of a delete is gone with its tombstone: the versions are
    // still held (nothing to ask again), served as cleared.
    let stats = nodes[2].store.metadata_stats().unwrap();
    assert!(stats.log_rows <= 20, "log rows left: {}", stats.log_rows);
    // A node joining now learns the floors in its first session and its own
    // inserts of old keys win as well.
    let mut all: Vec<Node> = nodes;
    all[2] = Node {
        store: open(&dir, 3),
        reports: BTreeMap::new(),
    };
    settle(&mut all, false);
    assert_eq!(dump(&all[2].store), want);
    assert_eq!(all[2].store.floors().unwrap()["kv"], 8);
}

#[test]
fn collection_resumes_within_its_budget() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = mesh(&dir);
    for k in 0..300 {
        nodes[0]
            .store
            .execute_batch(&format!(
                "INSERT INTO kv VALUES ({k}, 0); DELETE FROM kv WHERE k = {k}"
            ))
            .unwrap();
    }
    settle(&mut nodes, false);
    let mut total = 0;
    let mut passes = 0;
    loop {
        let n = nodes[1].collect(1, 25);
        passes += 1;
        if n == 0 {
            break;
        }
        total += n;
    }
    assert_eq!(total, 300);
    assert!(passes > 10, "the budget splits the work ({passes} passes)");
    assert_eq!(tombstones(&nodes[1].store), 0);
}

#[derive(Debug, Clone)]
enum Op {
    Insert { node: usize, key: i64 },
    Update { node: usize, key: i64 },
    Delete { node: usize, key: i64 },
    Send { from: usize, to: usize },
    Deliver { pick: usize, dup: bool },
    Collect { node: usize, budget: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0i64..3;
    prop_oneof![
        3 => (0..NODES, key.clone()).prop_map(|(node, key)| Op::Insert { node, key }),
        2 => (0..NODES, key.clone()).prop_map(|(node, key)| Op::Update { node, key }),
        3 => (0..NODES, key).prop_map(|(node, key)| Op::Delete { node, key }),
        4 => (0..NODES, 0..NODES).prop_map(|(from, to)| Op::Send { from, to }),
        4 => (any::<usize>(), any::<bool>()).prop_map(|(pick, dup)| Op::Deliver { pick, dup }),
        2 => (0..NODES, 1u64..4).prop_map(|(node, budget)| Op::Collect { node, budget }),
    ]
}

/// A write as the oracle sees it: its version and what its node held before.
struct Written {
    key: i64,
    value: Option<i64>,
    actor: litemesh_storage::ActorId,
    version: u64,
    past: Knowledge,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    /// Random writes, deletes and re-inserts of a few keys on three nodes,
    /// batches delivered late, twice or never (then repaired), collection
    /// run at random on any node: the replicas end identical, and every key
    /// ends as causality allows — present with a value no delete had seen,
    /// or absent because of a delete no later write had seen.
    #[test]
    fn collection_never_resurrects_or_loses(ops in prop::collection::vec(op(), 1..80)) {
        let dir = tempfile::tempdir().unwrap();
        let mut nodes = mesh(&dir);
        let mut flight: Vec<(usize, ChangeBatch)> = Vec::new();
        let mut written: Vec<Written> = Vec::new();
        let mut next_value = 1000;
        for op in ops {
            let (node, sql, key, value) = match op {
                Op::Insert { node, key } => {
                    next_value += 1;
                    (node, format!("INSERT OR REPLACE INTO kv VALUES ({key}, {next_value})"), key, Some(next_value))
                }
                Op::Update { node, key } => {
                    next_value += 1;
                    (node, format!("UPDATE kv SET v = {next_value} WHERE k = {key}"), key, Some(next_value))
                }
                Op::Delete { node, key } => (node, format!("DELETE FROM kv WHERE k = {key}"), key, None),
                Op::Send { from, to } => {
                    if from != to {
                        for b in session(&mut nodes, from, to) {
                            flight.push((to, b));
                        }
                    }
                    continue;
                }
                Op::Deliver { pick, dup } => {
                    if !flight.is_empty() {
                        let i = pick % flight.len();
                        let (to, b) = if dup { flight[i].clone() } else { flight.swap_remove(i) };
                        nodes[to].store.apply(&b).unwrap();
                    }
                    continue;
                }
                Op::Collect { node, budget } => {
                    nodes[node].collect(node, budget);
                    continue;
                }
            };
            let past = nodes[node].store.knowledge().unwrap();
            if let Some(version) = nodes[node].store.execute_batch(&sql).unwrap() {
                written.push(Written { key, value, actor: nodes[node].store.actor_id(), version, past });
            }
        }
        for (to, b) in flight.drain(..) {
            nodes[to].store.apply(&b).unwrap();
        }
        settle(&mut nodes, true);
        let end = dump(&nodes[0].store);
        for n in &nodes[1..] {
            prop_assert_eq!(dump(&n.store), end.clone());
        }
        let end: BTreeMap<i64, i64> = end.into_iter().collect();
        for key in 0..3 {
            let seen_by = |w: &Written, later: &Written| later.past.contains(&w.actor, w.version);
            let ops: Vec<&Written> = written.iter().filter(|w| w.key == key).collect();
            match end.get(&key) {
                Some(v) => {
                    let w = ops.iter().find(|w| w.value == Some(*v));
                    prop_assert!(w.is_some(), "key {} holds {}, which no write wrote", key, v);
                    let w = w.unwrap();
                    let deleted_after = ops.iter().any(|d| d.value.is_none() && seen_by(w, d));
                    prop_assert!(!deleted_after, "key {} came back with {} after a delete that had seen it", key, v);
                }
                None => {
                    let live_delete = ops.iter().any(|d| {
                        d.value.is_none() && !ops.iter().any(|w| w.value.is_some() && seen_by(d, w))
                    });
                    prop_assert!(
                        ops.iter().all(|w| w.value.is_none()) || live_delete,
                        "key {} is gone, but no delete could have removed its last writes", key
                    );
                }
            }
        }
    }
}

#[test]
fn floors_are_never_lowered_and_keep_unknown_tables() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(&dir, 0);
    let f = |pairs: &[(&str, u64)]| -> BTreeMap<String, u64> {
        pairs.iter().map(|(n, c)| (n.to_string(), *c)).collect()
    };
    assert!(s.raise_floors(&f(&[("kv", 6), ("later", 4)])).unwrap());
    assert!(!s.raise_floors(&f(&[("kv", 2)])).unwrap());
    assert_eq!(s.floors().unwrap(), f(&[("kv", 6), ("later", 4)]));
    s.execute_batch("INSERT INTO kv VALUES (1, 1)").unwrap();
    s.apply_schema(&format!(
        "{SCHEMA} CREATE TABLE later (id INTEGER PRIMARY KEY);"
    ))
    .unwrap();
    s.execute_batch("INSERT INTO later VALUES (1)").unwrap();
    // The new lives start above the floors: visible in what a peer receives.
    let mut peer = open(&dir, 1);
    peer.apply_schema(&format!(
        "{SCHEMA} CREATE TABLE later (id INTEGER PRIMARY KEY);"
    ))
    .unwrap();
    let mut cls = Vec::new();
    s.changes_since(&peer.knowledge().unwrap(), 4096, |b| {
        for v in &b.versions {
            for r in &v.rows {
                cls.push((r.table.clone(), r.cl));
            }
        }
        Ok(true)
    })
    .unwrap();
    cls.sort();
    assert_eq!(cls, vec![("kv".to_string(), 7), ("later".to_string(), 5)]);
    let _ = Value::Null;
}

/// A file made with `reclaim_pages` gives the pages collection frees back
/// to the file system; one made without keeps them for reuse.
#[test]
fn collected_pages_go_back_to_the_file_system_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let size = |s: &Store, name: &str| {
        s.connection()
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .unwrap();
        std::fs::metadata(dir.path().join(name)).unwrap().len()
    };
    for reclaim in [true, false] {
        let name = format!("r{reclaim}.db");
        let opts = StoreOptions {
            durable: false,
            reclaim_pages: reclaim,
            ..Default::default()
        };
        let mut s = Store::open_with(dir.path().join(&name), &opts).unwrap();
        s.apply_schema(SCHEMA).unwrap();
        for chunk in 0..20 {
            let values: Vec<String> = (0..500)
                .map(|i| format!("({}, {})", chunk * 500 + i, i))
                .collect();
            s.execute_batch(&format!("INSERT INTO kv VALUES {}", values.join(", ")))
                .unwrap();
        }
        s.execute_batch("DELETE FROM kv").unwrap();
        let k = s.knowledge().unwrap();
        let cut = k.have.keys().map(|a| (*a, k.complete_through(a))).collect();
        assert_eq!(s.collect(&cut, u64::MAX).unwrap().tombstones, 10_000);
        s.compact().unwrap();
        let before = size(&s, &name);
        let pages = s.reclaim(u64::MAX).unwrap();
        let after = size(&s, &name);
        if reclaim {
            assert!(pages > 10, "{pages} pages given back");
            assert!(after < before / 2, "{before} -> {after} bytes");
        } else {
            assert_eq!(pages, 0);
            assert_eq!(after, before);
        }
    }
}
