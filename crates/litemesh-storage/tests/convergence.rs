//! Property test: replicas doing random inserts, updates, deletes and
//! re-inserts on overlapping keys, exchanging change batches in random order,
//! with duplicates, delays and partial subsets, end with identical content.

mod common;
use common::*;
use litemesh_storage::{ChangeBatch, Store};
use proptest::prelude::*;

const NODES: usize = 3;

#[derive(Debug, Clone)]
enum Write {
    Upsert { key: u8, a: i64, b: u8 },
    InsertOrIgnore { key: u8, a: i64 },
    Replace { key: u8, b: u8 },
    Update { key: u8, a: i64 },
    Delete { key: u8 },
    ChangeKey { from: u8, to: u8 },
    Tag { k: u8, n: u8, v: u8 },
    Untag { k: u8, n: u8 },
}

#[derive(Debug, Clone)]
enum Op {
    /// One local transaction of one or more writes.
    Tx { node: usize, writes: Vec<Write> },
    /// `from` extracts what `to` lacks; the batches go in flight.
    Send { from: usize, to: usize, small: bool },
    /// One batch in flight is delivered (and, with `dup`, stays in flight).
    Deliver { pick: usize, dup: bool },
}

fn write() -> impl Strategy<Value = Write> {
    let key = 0u8..4;
    prop_oneof![
        (key.clone(), -5i64..5, 0u8..3).prop_map(|(key, a, b)| Write::Upsert { key, a, b }),
        (key.clone(), -5i64..5).prop_map(|(key, a)| Write::InsertOrIgnore { key, a }),
        (key.clone(), 0u8..3).prop_map(|(key, b)| Write::Replace { key, b }),
        (key.clone(), -5i64..5).prop_map(|(key, a)| Write::Update { key, a }),
        key.clone().prop_map(|key| Write::Delete { key }),
        (key.clone(), key).prop_map(|(from, to)| Write::ChangeKey { from, to }),
        (0u8..2, 0u8..2, 0u8..3).prop_map(|(k, n, v)| Write::Tag { k, n, v }),
        (0u8..2, 0u8..2).prop_map(|(k, n)| Write::Untag { k, n }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..NODES, prop::collection::vec(write(), 1..4)).prop_map(|(node, writes)| Op::Tx { node, writes }),
        2 => (0..NODES, 0..NODES, any::<bool>()).prop_map(|(from, to, small)| Op::Send { from, to, small }),
        3 => (any::<usize>(), any::<bool>()).prop_map(|(pick, dup)| Op::Deliver { pick, dup }),
    ]
}

fn sql(w: &Write) -> String {
    match w {
        Write::Upsert { key, a, b } => format!(
            "INSERT INTO items VALUES ('k{key}', {a}, 'b{b}') ON CONFLICT(id) DO UPDATE SET a = excluded.a, b = excluded.b"
        ),
        Write::InsertOrIgnore { key, a } => {
            format!("INSERT OR IGNORE INTO items VALUES ('k{key}', {a}, NULL)")
        }
        Write::Replace { key, b } => {
            format!("INSERT OR REPLACE INTO items VALUES ('k{key}', 0, 'r{b}')")
        }
        Write::Update { key, a } => format!("UPDATE items SET a = {a} WHERE id = 'k{key}'"),
        Write::Delete { key } => format!("DELETE FROM items WHERE id = 'k{key}'"),
        Write::ChangeKey { from, to } => {
            format!("UPDATE OR IGNORE items SET id = 'k{to}' WHERE id = 'k{from}'")
        }
        Write::Tag { k, n, v } => {
            format!("INSERT OR REPLACE INTO tags VALUES ('t{k}', {n}, 'v{v}')")
        }
        Write::Untag { k, n } => format!("DELETE FROM tags WHERE k = 't{k}' AND n = {n}"),
    }
}

fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Store> = (0..NODES).map(|i| open(&dir, &format!("n{i}"))).collect();
    let mut in_flight: Vec<(usize, ChangeBatch)> = Vec::new();
    for op in ops {
        match op {
            Op::Tx { node, writes } => {
                let stmts: Vec<String> = writes.iter().map(sql).collect();
                nodes[node].execute_batch(&stmts.join(";\n")).unwrap();
            }
            Op::Send { from, to, small } => {
                if from != to {
                    let max = if small { 1024 } else { 64 * 1024 };
                    for b in batches(&nodes[from], &nodes[to], max) {
                        in_flight.push((to, b));
                    }
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
                    nodes[to].apply(&b).unwrap();
                }
            }
        }
    }
    // Late deliveries, then full anti-entropy between every pair.
    for (to, b) in in_flight {
        nodes[to].apply(&b).unwrap();
    }
    for _ in 0..2 {
        for from in 0..NODES {
            for to in 0..NODES {
                if from != to {
                    let (f, t) = pair(&mut nodes, from, to);
                    sync(f, t);
                }
            }
        }
    }
    let first_items = dump(&nodes[0], "items");
    let first_tags = dump(&nodes[0], "tags");
    let first_k = nodes[0].knowledge().unwrap();
    for n in &nodes[1..] {
        assert_eq!(dump(n, "items"), first_items);
        assert_eq!(dump(n, "tags"), first_tags);
        assert_eq!(n.knowledge().unwrap().have, first_k.have);
    }
    // Compaction changes what is stored, never what is replicated.
    let dir2 = tempfile::tempdir().unwrap();
    nodes[0].compact().unwrap();
    let mut fresh = open(&dir2, "fresh");
    let (src, _) = pair(&mut nodes, 0, 1);
    sync(src, &mut fresh);
    assert_eq!(dump(&fresh, "items"), first_items);
    assert_eq!(dump(&fresh, "tags"), first_tags);
    assert_eq!(fresh.knowledge().unwrap().have, first_k.have);
}

fn pair(nodes: &mut [Store], a: usize, b: usize) -> (&Store, &mut Store) {
    assert_ne!(a, b);
    if a < b {
        let (l, r) = nodes.split_at_mut(b);
        (&l[a], &mut r[0])
    } else {
        let (l, r) = nodes.split_at_mut(a);
        (&r[0], &mut l[b])
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]
    #[test]
    fn replicas_converge(ops in prop::collection::vec(op(), 1..60)) {
        run(ops);
    }
}
