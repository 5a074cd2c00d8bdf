//! Counter benchmark: increments of a counter column against the same
//! updates of a last-writer-wins column, side by side in one run, and the
//! metadata a counter keeps once many nodes wrote it.
//!
//! - `increment`: 100,000 `UPDATE t SET hits = hits + 1 WHERE id = ?` over
//!   1,000 rows (random ids), in transactions of 100, on a counter table
//!   and on a plain one; the two alternate, medians of several runs.
//! - `merge`: a fresh replica applies those changes (extract + apply).
//! - `metadata`: 10 writers each increment every counter once, a replica
//!   merges them all: bytes of row clock per row, counter vs plain.
//!
//! Run: `cargo bench -p litemesh-storage --bench counters` (`-- --runs N
//! --ops N --rows N`). The last lines are the figures.

mod common;

use std::time::{Duration, Instant};

use common::arg;
use litemesh_storage::{ChangeBatch, Store, StoreOptions};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const COUNTER: &str = "CREATE TABLE t (id TEXT PRIMARY KEY, hits INTEGER NOT NULL DEFAULT 0) \
                       -- litemesh: counter = hits\n;";
const PLAIN: &str = "CREATE TABLE t (id TEXT PRIMARY KEY, hits INTEGER NOT NULL DEFAULT 0);";

fn open(dir: &tempfile::TempDir, name: &str, schema: &str) -> Store {
    let mut s = Store::open_with(
        dir.path().join(format!("{name}.db")),
        &StoreOptions::default(),
    )
    .expect("open");
    s.apply_schema(schema).expect("schema");
    s
}

fn seed_rows(s: &mut Store, rows: usize) {
    s.transaction(|tx| {
        let mut st = tx.prepare_cached("INSERT INTO t(id) VALUES (?1)")?;
        for i in 0..rows {
            st.execute([format!("row-{i:05}")])?;
        }
        Ok(())
    })
    .expect("seed");
}

/// `ops` increments of random rows, 100 per transaction.
fn increments(s: &mut Store, ids: &[usize]) -> Duration {
    let t = Instant::now();
    for chunk in ids.chunks(100) {
        s.transaction(|tx| {
            let mut st = tx.prepare_cached("UPDATE t SET hits = hits + 1 WHERE id = ?1")?;
            for i in chunk {
                st.execute([format!("row-{i:05}")])?;
            }
            Ok(())
        })
        .expect("increments");
    }
    t.elapsed()
}

fn extract(from: &Store, to: &Store) -> Vec<ChangeBatch> {
    let k = to.knowledge().expect("knowledge");
    let mut out = Vec::new();
    from.changes_since(&k, 256 * 1024, |b| {
        out.push(b);
        Ok(true)
    })
    .expect("extract");
    out
}

fn merge(from: &Store, to: &mut Store) -> Duration {
    let t = Instant::now();
    let b = extract(from, to);
    to.apply_all(&b).expect("apply");
    t.elapsed()
}

fn sum(s: &Store) -> i64 {
    s.connection()
        .query_row("SELECT sum(hits) FROM t", [], |r| r.get(0))
        .expect("sum")
}

fn clock_bytes(s: &Store) -> f64 {
    s.connection()
        .query_row("SELECT avg(length(__clk)) FROM __lm_clk_t", [], |r| {
            r.get(0)
        })
        .expect("clock bytes")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let runs = arg("--runs", 5);
    let ops = arg("--ops", 100_000);
    let rows = arg("--rows", 1_000);
    let mut rng = ChaCha8Rng::seed_from_u64(15);
    let ids: Vec<usize> = (0..ops).map(|_| rng.random_range(0..rows)).collect();
    let (mut inc, mut mrg) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let dir = tempfile::tempdir().expect("dir");
        let mut t = [Duration::ZERO; 2];
        let mut m = [Duration::ZERO; 2];
        // Alternate which goes first.
        let order: [usize; 2] = if run % 2 == 0 { [0, 1] } else { [1, 0] };
        for &k in &order {
            let schema = [COUNTER, PLAIN][k];
            let mut s = open(&dir, &format!("w{k}"), schema);
            seed_rows(&mut s, rows);
            t[k] = increments(&mut s, &ids);
            assert_eq!(sum(&s), ops as i64);
            let mut r = open(&dir, &format!("r{k}"), schema);
            m[k] = merge(&s, &mut r);
            assert_eq!(sum(&r), ops as i64);
        }
        println!(
            "run {run}: increments counter {:.0} ms, plain {:.0} ms ({:.2}x); \
             merge counter {:.0} ms, plain {:.0} ms ({:.2}x)",
            t[0].as_secs_f64() * 1e3,
            t[1].as_secs_f64() * 1e3,
            t[0].as_secs_f64() / t[1].as_secs_f64(),
            m[0].as_secs_f64() * 1e3,
            m[1].as_secs_f64() * 1e3,
            m[0].as_secs_f64() / m[1].as_secs_f64(),
        );
        inc.push(t[0].as_secs_f64() / t[1].as_secs_f64());
        mrg.push(m[0].as_secs_f64() / m[1].as_secs_f64());
    }
    // Ten writers each add one to every row; one replica merges them all.
    let dir = tempfile::tempdir().expect("dir");
    let mut per_row = [0.0; 2];
    for (k, schema) in [COUNTER, PLAIN].into_iter().enumerate() {
        let mut all = open(&dir, &format!("all{k}"), schema);
        seed_rows(&mut all, rows);
        let mut writers: Vec<Store> = (0..10)
            .map(|w| {
                let mut s = open(&dir, &format!("m{k}-{w}"), schema);
                merge(&all, &mut s);
                s
            })
            .collect();
        let everyone: Vec<usize> = (0..rows).collect();
        for w in &mut writers {
            increments(w, &everyone);
        }
        for w in &writers {
            merge(w, &mut all);
        }
        let expect = if k == 0 {
            10 * rows as i64
        } else {
            rows as i64
        };
        assert_eq!(sum(&all), expect, "the counter counts every writer");
        per_row[k] = clock_bytes(&all);
    }
    println!(
        "metadata after 10 writers: counter {:.1} bytes of clock per row, plain {:.1} \
         (the counter sums 10 writers' increments; the plain column kept one)",
        per_row[0], per_row[1]
    );
    println!("increment_vs_plain_update_x: {:.2}", median(inc));
    println!("merge_vs_plain_x: {:.2}", median(mrg));
    println!("counter_clock_bytes_10_writers: {:.1}", per_row[0]);
}
