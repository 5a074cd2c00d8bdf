//! Commutative columns: counters and max/min registers merge without losing
//! concurrent updates (docs/storage.md, "Commutative columns").

use litemesh_storage::{ChangeBatch, StorageError, Store, Value};
use proptest::prelude::*;

const SCHEMA: &str = "
CREATE TABLE posts (
    id TEXT PRIMARY KEY,
    title TEXT,
    likes INTEGER NOT NULL DEFAULT 0,
    views INTEGER NOT NULL DEFAULT 100,
    hi,
    lo
) -- litemesh: counter = likes, views; max = hi; min = lo
;
";

fn open(dir: &tempfile::TempDir, name: &str) -> Store {
    let mut s = Store::open(dir.path().join(format!("{name}.db"))).unwrap();
    s.apply_schema(SCHEMA).unwrap();
    s
}

fn batches(from: &Store, to: &Store, max_bytes: usize) -> Vec<ChangeBatch> {
    let k = to.knowledge().unwrap();
    let mut out = Vec::new();
    from.changes_since(&k, max_bytes, |b| {
        out.push(b);
        Ok(true)
    })
    .unwrap();
    out
}

fn sync(from: &Store, to: &mut Store) {
    for b in batches(from, to, 64 * 1024) {
        to.apply(&b).unwrap();
    }
}

fn rows(s: &Store) -> Vec<Vec<Value>> {
    let conn = s.connection();
    let mut stmt = conn.prepare("SELECT * FROM posts ORDER BY id").unwrap();
    let n = stmt.column_count();
    stmt.query_map([], |r| (0..n).map(|i| r.get::<_, Value>(i)).collect())
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

fn get(s: &Store, id: &str, col: &str) -> Value {
    s.connection()
        .query_row(
            &format!("SELECT {col} FROM posts WHERE id = ?1"),
            [id],
            |r| r.get(0),
        )
        .unwrap_or(Value::Null)
}

#[test]
fn partitioned_increments_all_count() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = open(&dir, "a");
    let mut b = open(&dir, "b");
    a.execute_batch("INSERT INTO posts(id, title) VALUES ('p', 'hello')")
        .unwrap();
    sync(&a, &mut b);
    // Apart: each node counts likes on its own.
    for _ in 0..5 {
        a.execute_batch("UPDATE posts SET likes = likes + 1 WHERE id = 'p'")
            .unwrap();
    }
    for _ in 0..3 {
        b.execute_batch("UPDATE posts SET likes = likes + 2, views = views + 1 WHERE id = 'p'")
            .unwrap();
    }
    b.execute_batch("UPDATE posts SET likes = likes - 1 WHERE id = 'p'")
        .unwrap();
    assert_eq!(get(&a, "p", "likes"), Value::Integer(5));
    assert_eq!(get(&b, "p", "likes"), Value::Integer(5));
    sync(&a, &mut b);
    sync(&b, &mut a);
    assert_eq!(get(&a, "p", "likes"), Value::Integer(10));
    assert_eq!(get(&a, "p", "views"), Value::Integer(103));
    assert_eq!(rows(&a), rows(&b));
    // Applying again changes nothing.
    for x in batches(&a, &b, 1 << 20) {
        b.apply(&x).unwrap();
    }
    assert_eq!(rows(&a), rows(&b));
}

// ---------------------------------------------------------------------------
// Property: three replicas, random concurrent increments, decrements,
// assignments (observed resets), deletes, re-inserts and register writes,
// delivered late, twice, partially, in any order. Every replica ends
// identical, and each counter equals its base plus every contribution made
// in the row's final life — measured as the local change each statement
// made where it ran — and each register the largest (smallest) value
// written in that life.

const NODES: usize = 3;

#[derive(Debug, Clone)]
enum Write {
    /// `INSERT … ON CONFLICT DO UPDATE SET likes = likes + excluded.likes`
    Upsert {
        key: u8,
        n: i64,
    },
    /// `UPDATE SET likes = likes + n, views = views - 1`
    Add {
        key: u8,
        n: i64,
    },
    /// `UPDATE SET likes = n` (an observed reset)
    Assign {
        key: u8,
        n: i64,
    },
    /// `INSERT OR REPLACE` with explicit values
    Replace {
        key: u8,
        n: i64,
        reg: u8,
    },
    Delete {
        key: u8,
    },
    /// `UPDATE SET hi = v, lo = v`
    Reg {
        key: u8,
        reg: u8,
    },
}

#[derive(Debug, Clone)]
enum Op {
    Tx {
        node: usize,
        writes: Vec<Write>,
    },
    /// `from`'s latest local version alone goes in flight to `to` (as a
    /// broadcast does: the receiver may lack the versions before it).
    Broadcast {
        from: usize,
        to: usize,
    },
    Send {
        from: usize,
        to: usize,
        small: bool,
    },
    Deliver {
        pick: usize,
        dup: bool,
    },
}

fn write() -> impl Strategy<Value = Write> {
    let key = 0u8..2;
    prop_oneof![
        3 => (key.clone(), -3i64..6).prop_map(|(key, n)| Write::Upsert { key, n }),
        3 => (key.clone(), -3i64..6).prop_map(|(key, n)| Write::Add { key, n }),
        1 => (key.clone(), 0i64..20).prop_map(|(key, n)| Write::Assign { key, n }),
        1 => (key.clone(), 0i64..20, 0u8..8).prop_map(|(key, n, reg)| Write::Replace { key, n, reg }),
        1 => key.clone().prop_map(|key| Write::Delete { key }),
        2 => (key, 0u8..8).prop_map(|(key, reg)| Write::Reg { key, reg }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..NODES, prop::collection::vec(write(), 1..4)).prop_map(|(node, writes)| Op::Tx { node, writes }),
        3 => (0..NODES, 0..NODES, any::<bool>()).prop_map(|(from, to, small)| Op::Send { from, to, small }),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(pick, dup)| Op::Deliver { pick, dup }),
        2 => (0..NODES, 0..NODES).prop_map(|(from, to)| Op::Broadcast { from, to }),
        // The newest batch in flight first: older contributions of the
        // same actor then arrive after newer ones.
        2 => Just(Op::Deliver { pick: usize::MAX, dup: false }),
    ]
}

/// Register values of several types and ties (1 and 1.0).
fn reg_value(r: u8) -> &'static str {
    ["NULL", "1", "1.0", "-2", "2.5", "'a'", "'b'", "7"][r as usize]
}

fn sql(w: &Write) -> String {
    match w {
        Write::Upsert { key, n } => format!(
            "INSERT INTO posts(id, likes) VALUES ('k{key}', {n}) \
             ON CONFLICT(id) DO UPDATE SET likes = likes + excluded.likes"
        ),
        Write::Add { key, n } => {
            format!("UPDATE posts SET likes = likes + {n}, views = views - 1 WHERE id = 'k{key}'")
        }
        Write::Assign { key, n } => format!("UPDATE posts SET likes = {n} WHERE id = 'k{key}'"),
        Write::Replace { key, n, reg } => format!(
            "INSERT OR REPLACE INTO posts(id, likes, views, hi, lo) VALUES ('k{key}', {n}, {n}, {r}, {r})",
            r = reg_value(*reg)
        ),
        Write::Delete { key } => format!("DELETE FROM posts WHERE id = 'k{key}'"),
        Write::Reg { key, reg } => format!(
            "UPDATE posts SET hi = {r}, lo = {r} WHERE id = 'k{key}'",
            r = reg_value(*reg)
        ),
    }
}

fn key_of(w: &Write) -> u8 {
    match w {
        Write::Upsert { key, .. }
        | Write::Add { key, .. }
        | Write::Assign { key, .. }
        | Write::Replace { key, .. }
        | Write::Delete { key }
        | Write::Reg { key, .. } => *key,
    }
}

/// A row's causal length, read from its clock (the first varint of the
/// packed clock, see docs/storage.md); 0 when it never existed.
fn causal_length(conn: &rusqlite::Connection, key: &str) -> u64 {
    let blob: Option<Vec<u8>> = conn
        .query_row(
            "SELECT __clk FROM __lm_clk_posts WHERE id = ?1",
            [key],
            |r| r.get(0),
        )
        .ok();
    let Some(b) = blob else { return 0 };
    let (mut v, mut shift) = (0u64, 0);
    for byte in b {
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    v
}

/// One row as the model sees it.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    likes: i64,
    views: i64,
    hi: Value,
    lo: Value,
}

fn seen(conn: &rusqlite::Connection, key: &str) -> Option<Seen> {
    conn.query_row(
        "SELECT likes, views, hi, lo FROM posts WHERE id = ?1",
        [key],
        |r| {
            Ok(Seen {
                likes: r.get(0)?,
                views: r.get(1)?,
                hi: r.get(2)?,
                lo: r.get(3)?,
            })
        },
    )
    .ok()
}

/// SQLite's order of values (NULL < numbers < text < blobs).
fn order(a: &Value, b: &Value) -> std::cmp::Ordering {
    use std::cmp::Ordering::*;
    let class = |v: &Value| match v {
        Value::Null => 0,
        Value::Integer(_) | Value::Real(_) => 1,
        Value::Text(_) => 2,
        Value::Blob(_) => 3,
    };
    let num = |v: &Value| match v {
        Value::Integer(i) => *i as f64,
        Value::Real(f) => *f,
        _ => 0.0,
    };
    match (a, b) {
        (Value::Text(x), Value::Text(y)) => x.cmp(y),
        _ if class(a) == 1 && class(b) == 1 => num(a).partial_cmp(&num(b)).unwrap_or(Equal),
        _ => class(a).cmp(&class(b)),
    }
}

/// What every contribution of one life adds up to.
#[derive(Debug, Default)]
struct Life {
    likes: i64,
    views: i64,
    hi: Vec<Value>,
    lo: Vec<Value>,
}

fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Store> = (0..NODES).map(|i| open(&dir, &format!("n{i}"))).collect();
    // (key, causal length) → contributions made in that life, anywhere.
    let mut lives: std::collections::BTreeMap<(u8, u64), Life> = Default::default();
    let mut in_flight: Vec<(usize, ChangeBatch)> = Vec::new();
    for op in ops {
        match op {
            Op::Tx { node, writes } => {
                let done = nodes[node].transaction(|tx| {
                    let mut made = Vec::new();
                    for w in &writes {
                        let key = format!("k{}", key_of(w));
                        let (cl0, before) = (causal_length(tx, &key), seen(tx, &key));
                        tx.execute_batch(&sql(w))?;
                        let (cl1, after) = (causal_length(tx, &key), seen(tx, &key));
                        let Some(after) = after else { continue };
                        let (likes0, views0) = match &before {
                            Some(b) if cl0 == cl1 => (b.likes, b.views),
                            _ => (0, 100),
                        };
                        made.push((
                            key_of(w),
                            cl1,
                            after.likes - likes0,
                            after.views - views0,
                            after,
                        ));
                    }
                    Ok(made)
                });
                // A register written backwards refuses the transaction:
                // nothing of it happened.
                let made = match done {
                    Ok(c) => c.value,
                    Err(StorageError::RegisterBackwards { .. }) => continue,
                    Err(e) => panic!("{e}"),
                };
                for (key, cl, dl, dv, after) in made {
                    let l = lives.entry((key, cl)).or_default();
                    l.likes += dl;
                    l.views += dv;
                    l.hi.push(after.hi);
                    l.lo.push(after.lo);
                }
            }
            Op::Broadcast { from, to } => {
                let v = nodes[from].db_version().unwrap();
                if from != to && v > 0 {
                    nodes[from]
                        .version_changes(v, 64 * 1024, |b| {
                            in_flight.push((to, b));
                            Ok(true)
                        })
                        .unwrap();
                }
            }
            Op::Send { from, to, small } => {
                if from != to {
                    let max = if small { 512 } else { 64 * 1024 };
                    for b in batches(&nodes[from], &nodes[to], max) {
                        in_flight.push((to, b));
                    }
                }
            }
            Op::Deliver { pick, dup } => {
                if !in_flight.is_empty() {
                    let (to, b) = if pick == usize::MAX {
                        in_flight.pop().expect("not empty")
                    } else if dup {
                        in_flight[pick % in_flight.len()].clone()
                    } else {
                        in_flight.remove(pick % in_flight.len())
                    };
                    nodes[to].apply(&b).unwrap();
                }
            }
        }
    }
    for (to, b) in in_flight.into_iter().rev() {
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
    let first = rows(&nodes[0]);
    for n in &nodes[1..] {
        assert_eq!(rows(n), first, "replicas differ");
    }
    for key in 0..2u8 {
        let k = format!("k{key}");
        let Some(row) = seen(nodes[0].connection(), &k) else {
            continue;
        };
        let cl = causal_length(nodes[0].connection(), &k);
        let life = lives
            .get(&(key, cl))
            .expect("a live row was written in its life");
        assert_eq!(row.likes, life.likes, "likes of {k} (life {cl}): {life:?}");
        assert_eq!(row.views, 100 + life.views, "views of {k} (life {cl})");
        // The register holds the largest (smallest) value any write of the
        // life left where it ran; NULL never wins.
        let best = |vals: &[Value], max: bool| -> Value {
            let mut it = vals.iter().filter(|v| **v != Value::Null);
            let Some(mut b) = it.next() else {
                return Value::Null;
            };
            for v in it {
                let o = order(v, b);
                if (max && o.is_gt()) || (!max && o.is_lt()) {
                    b = v;
                }
            }
            b.clone()
        };
        assert!(
            order(&row.hi, &best(&life.hi, true)).is_eq(),
            "hi of {k}: {:?}, written {:?}",
            row.hi,
            life.hi
        );
        assert!(
            order(&row.lo, &best(&life.lo, false)).is_eq(),
            "lo of {k}: {:?}, written {:?}",
            row.lo,
            life.lo
        );
    }
    // A fresh node fed by a compacted one gets the same.
    let dir2 = tempfile::tempdir().unwrap();
    nodes[0].compact().unwrap();
    let mut fresh = open(&dir2, "fresh");
    sync(&nodes[0], &mut fresh);
    assert_eq!(rows(&fresh), first, "a fresh replica differs");
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
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]
    #[test]
    fn counters_and_registers_converge_to_the_model(ops in prop::collection::vec(op(), 1..60)) {
        run(ops);
    }
}

#[test]
fn an_older_contribution_arriving_late_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = open(&dir, "a");
    let mut b = open(&dir, "b");
    a.execute_batch("INSERT INTO posts(id, likes) VALUES ('p', 1)")
        .unwrap();
    let old = batches(&a, &b, 1 << 20);
    let v = a
        .execute_batch("UPDATE posts SET likes = likes + 10 WHERE id = 'p'")
        .unwrap()
        .unwrap();
    // The newer version alone, as a broadcast brings it.
    let mut new = Vec::new();
    a.version_changes(v, 1 << 20, |x| {
        new.push(x);
        Ok(true)
    })
    .unwrap();
    for x in new.iter().chain(&old).chain(&new) {
        b.apply(x).unwrap();
    }
    assert_eq!(get(&b, "p", "likes"), Value::Integer(11));
    assert_eq!(rows(&a), rows(&b));
}

#[test]
fn an_assignment_sets_what_this_node_sees_and_keeps_unseen_increments() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = open(&dir, "a");
    let mut b = open(&dir, "b");
    a.execute_batch("INSERT INTO posts(id, likes) VALUES ('p', 7)")
        .unwrap();
    sync(&a, &mut b);
    // b resets to 0 while a, not yet seen by b, adds 3.
    b.execute_batch("UPDATE posts SET likes = 0 WHERE id = 'p'")
        .unwrap();
    a.execute_batch("UPDATE posts SET likes = likes + 3 WHERE id = 'p'")
        .unwrap();
    sync(&a, &mut b);
    sync(&b, &mut a);
    // The reset cancelled the 7 it saw; the 3 it did not see stays.
    assert_eq!(get(&a, "p", "likes"), Value::Integer(3));
    assert_eq!(rows(&a), rows(&b));
    // INSERT OR REPLACE over the live row is an assignment too.
    a.execute_batch("INSERT OR REPLACE INTO posts(id, likes, views) VALUES ('p', 50, 100)")
        .unwrap();
    sync(&a, &mut b);
    assert_eq!(get(&b, "p", "likes"), Value::Integer(50));
    // A delete and a re-insert start over.
    b.execute_batch(
        "DELETE FROM posts WHERE id = 'p'; INSERT INTO posts(id, likes) VALUES ('p', 1)",
    )
    .unwrap();
    a.execute_batch("UPDATE posts SET likes = likes + 100 WHERE id = 'p'")
        .unwrap();
    sync(&a, &mut b);
    sync(&b, &mut a);
    assert_eq!(get(&a, "p", "likes"), Value::Integer(1), "the delete won");
    assert_eq!(rows(&a), rows(&b));
}

#[test]
fn concurrent_inserts_of_one_key_add_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = open(&dir, "a");
    let mut b = open(&dir, "b");
    let upsert = "INSERT INTO posts(id, likes, hi, lo) VALUES ('p', 1, 5, 5) \
                  ON CONFLICT(id) DO UPDATE SET likes = likes + excluded.likes";
    a.execute_batch(upsert).unwrap();
    b.execute_batch(upsert).unwrap();
    b.execute_batch(upsert).unwrap();
    b.execute_batch("UPDATE posts SET hi = 9, lo = 2 WHERE id = 'p'")
        .unwrap();
    a.execute_batch("UPDATE posts SET hi = 6, lo = 4 WHERE id = 'p'")
        .unwrap();
    sync(&a, &mut b);
    sync(&b, &mut a);
    assert_eq!(get(&a, "p", "likes"), Value::Integer(3));
    assert_eq!(
        get(&a, "p", "views"),
        Value::Integer(100),
        "the default is the base"
    );
    assert_eq!(get(&a, "p", "hi"), Value::Integer(9));
    assert_eq!(get(&a, "p", "lo"), Value::Integer(2));
    assert_eq!(rows(&a), rows(&b));
}

#[test]
fn a_register_write_that_would_move_it_back_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = open(&dir, "a");
    a.execute_batch("INSERT INTO posts(id, hi, lo) VALUES ('p', 10, 10)")
        .unwrap();
    let v = a.db_version().unwrap();
    for sql in [
        "UPDATE posts SET hi = 3, title = 't' WHERE id = 'p'",
        "UPDATE posts SET lo = 30 WHERE id = 'p'",
        // NULL is no value: it never replaces one.
        "UPDATE posts SET hi = NULL WHERE id = 'p'",
        // Replacing the row goes on with its life: registers too.
        "INSERT OR REPLACE INTO posts(id, hi, lo) VALUES ('p', 4, 4)",
        // A key moved onto a live row: its registers are compared too.
        "INSERT INTO posts(id, hi, lo) VALUES ('q', 20, 20); \
         UPDATE OR REPLACE posts SET id = 'p', hi = 1 WHERE id = 'q'",
    ] {
        let err = a.execute_batch(sql).unwrap_err();
        assert!(
            matches!(&err, StorageError::RegisterBackwards { .. }),
            "{sql}: {err}"
        );
        assert!(err.to_string().contains("would move it back"), "{err}");
    }
    assert_eq!(a.db_version().unwrap(), v, "nothing committed");
    assert_eq!(get(&a, "p", "title"), Value::Null);
    // The forms that keep the larger (smaller) value always pass.
    a.execute_batch(
        "UPDATE posts SET hi = max(hi, 3), lo = min(lo, 30), title = 't' WHERE id = 'p'",
    )
    .unwrap();
    a.execute_batch("INSERT OR REPLACE INTO posts(id, hi, lo) VALUES ('p', 11, 4)")
        .unwrap();
    assert_eq!(get(&a, "p", "hi"), Value::Integer(11));
    assert_eq!(get(&a, "p", "lo"), Value::Integer(4));
    let mut b = open(&dir, "b");
    sync(&a, &mut b);
    assert_eq!(rows(&a), rows(&b));
}

#[test]
fn zeros_of_either_sign_and_type_rank_equal_and_converge() {
    // -0.0, 0 and 0.0 are one rank; the cell clock decides, the same on
    // every node whatever the order of arrival.
    let dir = tempfile::tempdir().unwrap();
    let mut n: Vec<Store> = (0..3).map(|i| open(&dir, &format!("z{i}"))).collect();
    n[0].execute_batch("INSERT INTO posts(id) VALUES ('p')")
        .unwrap();
    for i in 1..3 {
        let (f, t) = pair(&mut n, 0, i);
        sync(f, t);
    }
    for (i, v) in ["-0.0", "0", "0.0"].iter().enumerate() {
        n[i].execute_batch(&format!(
            "UPDATE posts SET hi = {v}, lo = {v} WHERE id = 'p'"
        ))
        .unwrap();
    }
    for order in [[1, 2], [2, 0], [0, 1]] {
        let to = 3 - order[0] - order[1];
        for from in order {
            let (f, t) = pair(&mut n, from, to);
            sync(f, t);
        }
    }
    for _ in 0..2 {
        for from in 0..3 {
            for to in 0..3 {
                if from != to {
                    let (f, t) = pair(&mut n, from, to);
                    sync(f, t);
                }
            }
        }
    }
    let typed = |s: &Store| -> String {
        s.connection()
            .query_row(
                "SELECT typeof(hi) || quote(hi) || typeof(lo) || quote(lo) FROM posts",
                [],
                |r| r.get(0),
            )
            .unwrap()
    };
    assert_eq!(typed(&n[0]), typed(&n[1]));
    assert_eq!(typed(&n[0]), typed(&n[2]));
}

#[test]
fn application_triggers_that_change_a_counter_are_counted_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = open(&dir, "a");
    let mut b = open(&dir, "b");
    // Made after the capture triggers: SQLite fires them first.
    a.connection()
        .execute_batch(
            "CREATE TRIGGER bonus AFTER INSERT ON posts BEGIN \
               UPDATE posts SET likes = likes + 100, hi = 50 WHERE id = NEW.id; END; \
             CREATE TRIGGER again AFTER UPDATE OF title ON posts BEGIN \
               UPDATE posts SET likes = likes + 1000 WHERE id = NEW.id; END;",
        )
        .unwrap();
    a.execute_batch("INSERT INTO posts(id, likes, hi) VALUES ('p', 1, 5)")
        .unwrap();
    assert_eq!(get(&a, "p", "likes"), Value::Integer(101));
    a.execute_batch("UPDATE posts SET title = 't', likes = likes + 1 WHERE id = 'p'")
        .unwrap();
    assert_eq!(get(&a, "p", "likes"), Value::Integer(1102));
    sync(&a, &mut b);
    assert_eq!(rows(&a), rows(&b));
    assert_eq!(get(&b, "p", "hi"), Value::Integer(50));
}

#[test]
fn a_register_column_added_later_does_not_move_back_from_its_default() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Store::open(dir.path().join("a.db")).unwrap();
    a.apply_schema("CREATE TABLE r (id TEXT PRIMARY KEY)")
        .unwrap();
    a.execute_batch("INSERT INTO r VALUES ('old')").unwrap();
    let later =
        "CREATE TABLE r (id TEXT PRIMARY KEY, hi INTEGER DEFAULT 100) -- litemesh: max = hi\n;";
    a.apply_schema(later).unwrap();
    let err = a.execute_batch("UPDATE r SET hi = 5").unwrap_err();
    assert!(
        matches!(err, StorageError::RegisterBackwards { .. }),
        "{err}"
    );
    a.execute_batch("UPDATE r SET hi = 150").unwrap();
    let mut b = Store::open(dir.path().join("b.db")).unwrap();
    b.apply_schema("CREATE TABLE r (id TEXT PRIMARY KEY)")
        .unwrap();
    b.apply_schema(later).unwrap();
    sync(&a, &mut b);
    let hi: i64 = b
        .connection()
        .query_row("SELECT hi FROM r", [], |r| r.get(0))
        .unwrap();
    assert_eq!(hi, 150);
}

#[test]
fn with_recursive_triggers_a_replace_is_a_delete_and_an_insert_on_every_node() {
    // SQLite runs INSERT OR REPLACE as a delete and an insert when
    // recursive triggers are on: the row starts a new life, its counters
    // and registers with it — on every node alike.
    let dir = tempfile::tempdir().unwrap();
    let mut a = open(&dir, "a");
    let mut b = open(&dir, "b");
    a.connection()
        .execute_batch("PRAGMA recursive_triggers = ON")
        .unwrap();
    a.execute_batch("INSERT INTO posts(id, hi, lo, likes) VALUES ('p', 10, 10, 2)")
        .unwrap();
    sync(&a, &mut b);
    b.execute_batch("UPDATE posts SET likes = likes + 3 WHERE id = 'p'")
        .unwrap();
    a.execute_batch("UPDATE posts SET hi = 12, lo = 9, likes = likes + 1 WHERE id = 'p'")
        .unwrap();
    a.execute_batch("INSERT OR REPLACE INTO posts(id, hi, lo, likes) VALUES ('p', 1, 99, 5)")
        .unwrap();
    sync(&a, &mut b);
    sync(&b, &mut a);
    assert_eq!(rows(&a), rows(&b));
    assert_eq!(get(&b, "p", "likes"), Value::Integer(5), "a new life");
    assert_eq!(get(&b, "p", "hi"), Value::Integer(1));
}

#[test]
fn writes_through_an_attached_connection_count() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir, "a");
    let path = dir.path().join("a.db");
    let mut app = rusqlite::Connection::open(&path).unwrap();
    litemesh_storage::attach(&mut app).unwrap();
    app.execute("INSERT INTO posts(id, likes) VALUES ('p', 2)", [])
        .unwrap();
    app.execute("UPDATE posts SET likes = likes + 40 WHERE id = 'p'", [])
        .unwrap();
    let mut b = open(&dir, "b");
    b.execute_batch("INSERT INTO posts(id, likes) VALUES ('p', 1000)")
        .unwrap();
    sync(&a, &mut b);
    assert_eq!(get(&b, "p", "likes"), Value::Integer(1042));
}

#[test]
fn a_counter_refuses_what_is_not_an_integer_and_nothing_is_applied() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = open(&dir, "a");
    a.execute_batch("INSERT INTO posts(id, likes) VALUES ('p', 1)")
        .unwrap();
    let v = a.db_version().unwrap();
    for sql in [
        "UPDATE posts SET likes = likes + 0.5 WHERE id = 'p'",
        "UPDATE posts SET likes = 'many' WHERE id = 'p'",
        "INSERT INTO posts(id, likes) VALUES ('q', 2.5)",
        "UPDATE posts SET likes = 9223372036854775807 WHERE id = 'p'; \
         UPDATE posts SET likes = likes + 1 WHERE id = 'p'",
    ] {
        let err = a.execute_batch(sql).unwrap_err();
        assert!(
            matches!(&err, StorageError::NotACount { column, .. } if column == "likes"),
            "{sql}: {err}"
        );
        assert!(err.to_string().contains("is a counter"), "{err}");
    }
    assert_eq!(a.db_version().unwrap(), v, "nothing committed");
    assert_eq!(get(&a, "p", "likes"), Value::Integer(1));
}

#[test]
fn the_schema_check_refuses_counters_that_could_not_converge() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(dir.path().join("s.db")).unwrap();
    for (sql, why) in [
        (
            "CREATE TABLE t (id TEXT PRIMARY KEY, n REAL DEFAULT 0) -- litemesh: counter = n",
            "holds integers",
        ),
        (
            "CREATE TABLE t (id TEXT PRIMARY KEY, n INTEGER) -- litemesh: counter = n",
            "integer DEFAULT",
        ),
        (
            "CREATE TABLE t (id TEXT PRIMARY KEY, n INTEGER DEFAULT 'x') -- litemesh: counter = n",
            "integer DEFAULT",
        ),
        (
            "CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER DEFAULT 0) -- litemesh: counter = id",
            "key column",
        ),
        (
            "CREATE TABLE t (id TEXT PRIMARY KEY, n INTEGER DEFAULT 0) -- litemesh: counter = m",
            "names no column",
        ),
        (
            "CREATE TABLE t (id TEXT PRIMARY KEY, n INTEGER DEFAULT 0 CHECK (n >= 0)) -- litemesh: counter = n",
            "CHECK",
        ),
        (
            "CREATE TABLE t (id TEXT PRIMARY KEY, n INTEGER DEFAULT 0) -- litemesh: counter = n; max = n",
            "more than one",
        ),
        (
            "CREATE TABLE t (id TEXT PRIMARY KEY, n INTEGER DEFAULT 0) -- litemesh: counters = n",
            "unknown litemesh directive",
        ),
        (
            "CREATE TABLE t (id TEXT PRIMARY KEY, n INTEGER DEFAULT 0) -- litemesh counter = n",
            "looks like a litemesh directive",
        ),
        (
            "CREATE TABLE t (id TEXT PRIMARY KEY, n INTEGER DEFAULT 0) -- litemesh: counter = n\n;\n\
             CREATE INDEX i ON t(abs(n))",
            "through a function",
        ),
    ] {
        let err = s.apply_schema(sql).unwrap_err().to_string();
        assert!(err.contains(why), "{sql}: {err}");
    }
    // Prose that mentions litemesh is no directive; integer literals in
    // any spelling are bases; a quoted column name may hold spaces.
    let mut p = Store::open(dir.path().join("p.db")).unwrap();
    p.apply_schema(
        "CREATE TABLE prose (id TEXT PRIMARY KEY, \"my hits\" INTEGER DEFAULT (-(0x10)), \
         z INTEGER DEFAULT 0) -- litemesh, minimal schema\n\
         -- litemesh: counter = \"my hits\"\n;",
    )
    .unwrap();
    p.execute_batch(
        "INSERT INTO prose(id) VALUES ('a'); UPDATE prose SET \"my hits\" = \"my hits\" + 1",
    )
    .unwrap();
    assert_eq!(
        p.connection()
            .query_row("SELECT \"my hits\" FROM prose", [], |r| r.get::<_, i64>(0))
            .unwrap(),
        -15
    );
    let err = p
        .apply_schema("CREATE TABLE rnd (id TEXT PRIMARY KEY, n INTEGER DEFAULT (random())) -- litemesh: counter = n\n;")
        .unwrap_err()
        .to_string();
    assert!(err.contains("integer DEFAULT"), "{err}");
    // STRICT tables, a negative base, a column added later.
    s.apply_schema(
        "CREATE TABLE t (id TEXT PRIMARY KEY, n INT NOT NULL DEFAULT -5) STRICT -- litemesh: counter = n",
    )
    .unwrap();
    s.execute_batch("INSERT INTO t(id) VALUES ('a'); UPDATE t SET n = n + 1")
        .unwrap();
    let later = "CREATE TABLE t (id TEXT PRIMARY KEY, n INT NOT NULL DEFAULT -5, m INTEGER NOT NULL DEFAULT 2, top ANY) STRICT \
                 -- litemesh: counter = n, m; max = top";
    let r = s.apply_schema(later).unwrap();
    assert_eq!(r.added_columns.len(), 2);
    assert!(s.apply_schema(later).unwrap().is_unchanged(), "idempotent");
    s.execute_batch("UPDATE t SET m = m + 3, top = 'x'")
        .unwrap();
    let mut b = Store::open(dir.path().join("b.db")).unwrap();
    b.apply_schema(later).unwrap();
    sync(&s, &mut b);
    let row: (i64, i64, String) = b
        .connection()
        .query_row("SELECT n, m, top FROM t", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!(row, (-4, 5, "x".into()));
    // A column's kind never changes.
    for changed in [
        "CREATE TABLE t (id TEXT PRIMARY KEY, n INT NOT NULL DEFAULT -5, m INTEGER NOT NULL DEFAULT 2, top ANY) STRICT \
         -- litemesh: counter = n; max = top",
        "CREATE TABLE t (id TEXT PRIMARY KEY, n INT NOT NULL DEFAULT -5, m INTEGER NOT NULL DEFAULT 2, top ANY) STRICT \
         -- litemesh: counter = n, m; min = top",
    ] {
        let err = s.apply_schema(changed).unwrap_err().to_string();
        assert!(err.contains("merge rule cannot change"), "{err}");
    }
}

#[test]
fn a_node_whose_schema_merges_a_column_otherwise_quarantines_the_change() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = open(&dir, "a");
    let mut b = Store::open(dir.path().join("b.db")).unwrap();
    b.apply_schema(
        "CREATE TABLE posts (id TEXT PRIMARY KEY, title TEXT, likes INTEGER NOT NULL DEFAULT 0, \
         views INTEGER NOT NULL DEFAULT 100, hi, lo)",
    )
    .unwrap();
    a.execute_batch("INSERT INTO posts(id, likes) VALUES ('p', 3)")
        .unwrap();
    a.execute_batch("INSERT INTO posts(id, title) VALUES ('q', 'plain')")
        .unwrap();
    let report = b.apply_all(&batches(&a, &b, 1 << 20)).unwrap();
    assert_eq!(report.quarantined.len(), 2, "{report:?}");
    assert!(
        report.quarantined[0]
            .2
            .contains("the nodes' schemas differ"),
        "{report:?}"
    );
    assert_eq!(b.quarantined_count(), 2);
}

#[test]
fn a_counter_whose_default_differs_between_nodes_is_quarantined_not_summed_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Store::open(dir.path().join("a.db")).unwrap();
    let mut b = Store::open(dir.path().join("b.db")).unwrap();
    a.apply_schema(
        "CREATE TABLE c (id TEXT PRIMARY KEY, n INTEGER DEFAULT 0) -- litemesh: counter = n\n;",
    )
    .unwrap();
    b.apply_schema(
        "CREATE TABLE c (id TEXT PRIMARY KEY, n INTEGER DEFAULT 100) -- litemesh: counter = n\n;",
    )
    .unwrap();
    a.execute_batch("INSERT INTO c VALUES ('p', 5)").unwrap();
    let report = b.apply_all(&batches(&a, &b, 1 << 20)).unwrap();
    assert_eq!(report.quarantined.len(), 1, "{report:?}");
    assert!(report.quarantined[0].2.contains("DEFAULT 0"), "{report:?}");
}

#[test]
fn changes_for_a_counter_not_known_yet_are_parked_then_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = open(&dir, "a");
    let mut b = Store::open(dir.path().join("b.db")).unwrap();
    b.apply_schema("CREATE TABLE other (id TEXT PRIMARY KEY)")
        .unwrap();
    a.execute_batch("INSERT INTO posts(id, likes) VALUES ('p', 3)")
        .unwrap();
    a.execute_batch("UPDATE posts SET likes = likes + 4 WHERE id = 'p'")
        .unwrap();
    sync(&a, &mut b);
    b.apply_schema(&format!(
        "CREATE TABLE other (id TEXT PRIMARY KEY);\n{SCHEMA}"
    ))
    .unwrap();
    assert_eq!(get(&b, "p", "likes"), Value::Integer(7));
    assert_eq!(rows(&a), rows(&b));
}

#[test]
fn batches_with_commutative_cells_use_the_new_wire_format_and_old_batches_decode() {
    use litemesh_storage::{WIRE_VERSION, WIRE_VERSION_PLAIN, decode_batch, encode_batch};
    let dir = tempfile::tempdir().unwrap();
    let schema = "CREATE TABLE posts (id TEXT PRIMARY KEY, title TEXT, \
                  likes INTEGER NOT NULL DEFAULT 0) -- litemesh: counter = likes\n;";
    let mut a = Store::open(dir.path().join("a.db")).unwrap();
    a.apply_schema(schema).unwrap();
    let mut b = Store::open(dir.path().join("b.db")).unwrap();
    b.apply_schema(schema).unwrap();
    a.execute_batch("INSERT INTO posts(id, title) VALUES ('plain', 'x')")
        .unwrap();
    let plain = batches(&a, &b, 1 << 20);
    let bytes = encode_batch(&plain[0], 1 << 20).unwrap();
    assert_eq!(
        bytes[0], WIRE_VERSION_PLAIN,
        "no commutative cell: the old format"
    );
    a.execute_batch("UPDATE posts SET likes = likes + 1 WHERE id = 'plain'")
        .unwrap();
    let with = batches(&a, &b, 1 << 20);
    let bytes = encode_batch(&with[0], 1 << 20).unwrap();
    assert_eq!(bytes[0], WIRE_VERSION);
    assert_eq!(decode_batch(&bytes, 1 << 20).unwrap(), with[0]);
    // A counter contribution that is not an integer is malformed.
    let mut bad = with[0].clone();
    for c in bad
        .versions
        .iter_mut()
        .flat_map(|v| &mut v.rows)
        .flat_map(|r| &mut r.cells)
    {
        if c.column == "likes" {
            c.value = Value::Real(1.5);
        }
    }
    let bytes = encode_batch(&bad, 1 << 20).unwrap();
    assert!(decode_batch(&bytes, 1 << 20).is_err());
    for x in plain.iter().chain(&with) {
        b.apply(x).unwrap();
    }
    assert_eq!(get(&b, "plain", "likes"), Value::Integer(1));
}

#[test]
fn metadata_stays_small_with_many_writers() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Store> = (0..10).map(|i| open(&dir, &format!("w{i}"))).collect();
    for (i, n) in nodes.iter_mut().enumerate() {
        n.execute_batch(&format!(
            "INSERT INTO posts(id, likes) VALUES ('p', {}) \
             ON CONFLICT(id) DO UPDATE SET likes = likes + excluded.likes",
            i + 1
        ))
        .unwrap();
    }
    let mut all = open(&dir, "all");
    for n in &nodes {
        sync(n, &mut all);
    }
    assert_eq!(get(&all, "p", "likes"), Value::Integer(55));
    let clock: Vec<u8> = all
        .connection()
        .query_row("SELECT __clk FROM __lm_clk_posts", [], |r| r.get(0))
        .unwrap();
    assert!(
        clock.len() < 160,
        "{} bytes of clock for 10 writers",
        clock.len()
    );
}
