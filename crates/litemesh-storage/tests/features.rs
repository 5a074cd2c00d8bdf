//! Property test: on tables using every schema feature the schema check
//! accepts (CHECK constraints of one column and the key, collations on
//! non-key columns,
//! expression and partial indexes, foreign keys, WITHOUT ROWID, composite,
//! integer and NUMERIC keys, STRICT tables, defaults), any local write that
//! commits merges on every replica — never an error, never a quarantine —
//! and the replicas end identical, whatever the order of delivery.

mod common;
use common::dump;
use litemesh_storage::{ChangeBatch, Store};
use proptest::prelude::*;

const NODES: usize = 3;

const FEATURES: &str = "
CREATE TABLE acc (
    id TEXT PRIMARY KEY,
    lo INTEGER NOT NULL DEFAULT 0,
    hi INTEGER NOT NULL DEFAULT 10,
    name TEXT COLLATE NOCASE,
    doc TEXT DEFAULT '{}',
    score REAL CHECK (score IS NULL OR score >= 0),
    CHECK (lo >= 0 AND lo < 100),
    CHECK (id <> hi)
);
CREATE INDEX acc_name ON acc(name);
CREATE INDEX acc_doc ON acc(json_extract(doc, '$.a'));
CREATE INDEX acc_part ON acc(lo) WHERE hi > 5;
CREATE TABLE kv (
    k INTEGER, sub TEXT, v BLOB, owner TEXT REFERENCES acc(id),
    PRIMARY KEY (k, sub)
) WITHOUT ROWID;
CREATE TABLE st (id INTEGER PRIMARY KEY, x INTEGER NOT NULL DEFAULT 0, y TEXT) STRICT;
CREATE TABLE num (id NUMERIC PRIMARY KEY, v ANY);
CREATE TABLE sany (k ANY PRIMARY KEY, v INTEGER) STRICT;
";

#[derive(Debug, Clone)]
enum Op {
    Tx { node: usize, writes: Vec<String> },
    Send { from: usize, to: usize, small: bool },
    Deliver { pick: usize, dup: bool },
}

fn write() -> impl Strategy<Value = String> {
    let k = 0u8..3;
    prop_oneof![
        (k.clone(), 0i64..6, 3i64..9).prop_map(|(k, lo, hi)| format!(
            "INSERT INTO acc(id, lo, hi) VALUES ('a{k}', {lo}, {hi}) \
             ON CONFLICT(id) DO UPDATE SET lo = excluded.lo, hi = excluded.hi"
        )),
        (k.clone(), 0i64..9)
            .prop_map(|(k, v)| format!("UPDATE acc SET lo = {v} WHERE id = 'a{k}'")),
        (k.clone(), 0i64..9)
            .prop_map(|(k, v)| format!("UPDATE acc SET hi = {v} WHERE id = 'a{k}'")),
        (
            k.clone(),
            prop::sample::select(vec!["Bob", "bob", "BOB", "ann"])
        )
            .prop_map(|(k, n)| format!("UPDATE acc SET name = '{n}' WHERE id = 'a{k}'")),
        (k.clone(), 0i64..4).prop_map(|(k, a)| format!(
            "UPDATE acc SET doc = json_object('a', {a}) WHERE id = 'a{k}'"
        )),
        (k.clone(), 0u8..3)
            .prop_map(|(k, s)| format!("UPDATE acc SET score = {s}.5 WHERE id = 'a{k}'")),
        k.clone()
            .prop_map(|k| format!("DELETE FROM acc WHERE id = 'a{k}'")),
        (0i64..3, prop::sample::select(vec!["x", "y"]), k.clone()).prop_map(|(n, s, o)| format!(
            "INSERT OR REPLACE INTO kv VALUES ({n}, '{s}', randomblob(4), 'a{o}')"
        )),
        (0i64..3).prop_map(|n| format!("DELETE FROM kv WHERE k = {n}")),
        (0i64..3, 0i64..5).prop_map(|(i, x)| format!(
            "INSERT INTO st VALUES ({i}, {x}, 'y{x}') ON CONFLICT(id) DO UPDATE SET x = excluded.x"
        )),
        (0i64..3, 0i64..5)
            .prop_map(|(i, x)| format!("UPDATE st SET y = NULL, x = {x} WHERE id = {i}")),
        (
            prop::sample::select(vec!["1", "'1'", "1.0", "'1.0'", "2", "'two'"]),
            0i64..5
        )
            .prop_map(|(k, v)| format!("INSERT OR REPLACE INTO num VALUES ({k}, {v})")),
        prop::sample::select(vec!["1", "'1.0'", "'two'"])
            .prop_map(|k| format!("DELETE FROM num WHERE id = {k}")),
        (
            prop::sample::select(vec!["1", "'1'", "1.0", "x'01'"]),
            0i64..5
        )
            .prop_map(|(k, v)| format!("INSERT OR REPLACE INTO sany VALUES ({k}, {v})")),
        prop::sample::select(vec!["1", "'1'"])
            .prop_map(|k| format!("DELETE FROM sany WHERE k = {k}")),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..NODES, prop::collection::vec(write(), 1..4)).prop_map(|(node, writes)| Op::Tx { node, writes }),
        2 => (0..NODES, 0..NODES, any::<bool>()).prop_map(|(from, to, small)| Op::Send { from, to, small }),
        3 => (any::<usize>(), any::<bool>()).prop_map(|(pick, dup)| Op::Deliver { pick, dup }),
    ]
}

fn apply(to: &mut Store, b: &ChangeBatch) {
    let r = to.apply(b).expect("a merge never fails");
    assert!(r.quarantined.is_empty(), "nothing quarantined: {r:?}");
}

fn full_sync(from: &Store, to: &mut Store) {
    let k = to.knowledge().unwrap();
    let mut out = Vec::new();
    from.changes_since(&k, 64 * 1024, |b| {
        out.push(b);
        Ok(true)
    })
    .unwrap();
    for b in out {
        apply(to, &b);
    }
}

fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Store> = (0..NODES)
        .map(|i| {
            let mut s = Store::open(dir.path().join(format!("n{i}.db"))).unwrap();
            s.apply_schema(FEATURES).unwrap();
            s
        })
        .collect();
    let mut in_flight: Vec<(usize, ChangeBatch)> = Vec::new();
    for op in ops {
        match op {
            Op::Tx { node, writes } => {
                // A write the local constraints refuse simply does not commit.
                let _ = nodes[node].execute_batch(&writes.join(";\n"));
            }
            Op::Send { from, to, small } => {
                if from != to {
                    let k = nodes[to].knowledge().unwrap();
                    let max = if small { 1024 } else { 64 * 1024 };
                    nodes[from]
                        .changes_since(&k, max, |b| {
                            in_flight.push((to, b));
                            Ok(true)
                        })
                        .unwrap();
                }
            }
            Op::Deliver { pick, dup } => {
                if !in_flight.is_empty() {
                    let i = pick % in_flight.len();
                    let (to, b) = if dup {
                        in_flight[i].clone()
                    } else {
                        in_flight.swap_remove(i)
                    };
                    apply(&mut nodes[to], &b);
                }
            }
        }
    }
    for (to, b) in in_flight {
        apply(&mut nodes[to], &b);
    }
    for _ in 0..2 {
        for from in 0..NODES {
            for to in 0..NODES {
                if from != to {
                    let (f, t) = if from < to {
                        let (l, r) = nodes.split_at_mut(to);
                        (&l[from], &mut r[0])
                    } else {
                        let (l, r) = nodes.split_at_mut(from);
                        (&r[0], &mut l[to])
                    };
                    full_sync(f, t);
                }
            }
        }
    }
    for table in ["acc", "kv", "st", "num", "sany"] {
        let first = dump(&nodes[0], table);
        for n in &nodes[1..] {
            assert_eq!(dump(n, table), first, "{table}");
        }
    }
    for n in &nodes {
        assert_eq!(n.quarantined_count(), 0);
        let ok: String = n
            .connection()
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn every_accepted_feature_merges(ops in prop::collection::vec(op(), 1..50)) {
        run(ops);
    }
}
