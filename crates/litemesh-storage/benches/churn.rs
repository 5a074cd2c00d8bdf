//! Churn benchmark: how a node's file grows under a steady mix of inserts,
//! updates and deletes over a bounded set of live rows — the metadata that
//! deleted rows leave behind (their tombstones and change-log entries).
//!
//! `--ops N` operations (default 1,000,000) on `items(id TEXT PRIMARY KEY,
//! a INTEGER, b TEXT)`, about `--live N` live rows (default 10,000): each
//! operation inserts a row with a new random id, updates a live row or
//! deletes one (a third each, steered to keep the live count near the
//! target), 100 operations per transaction. At the end the file (WAL
//! checkpointed) is compared with a fresh litemesh file and a plain SQLite
//! file holding the same live rows. Prints the figures, then `key: value`
//! lines.
//!
//! Two runs of the same operations, side by side: with no retention policy
//! (nothing collected), and with one, as a node with `--retention` runs it
//! on its own: every second a sweep step of the change log (twice the
//! chunks written since the last step, at least 64) and up to 2,048 free
//! pages given back to the file system, and a collection of
//! the tombstones made by versions stable at the previous check (a node
//! alone holds everything it wrote: its stable cut is what it holds; the
//! cut waits one check, a window of about a second).
//!
//! Run: `cargo bench -p litemesh-storage --bench churn [-- --ops N --live N]`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use litemesh_storage::{ActorId, Store};

mod common;
use common::{SCHEMA, arg};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The file's size once its WAL is checkpointed into it.
fn size(conn: &rusqlite::Connection, path: &Path) -> u64 {
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .expect("checkpoint");
    std::fs::metadata(path).expect("size").len()
}

fn count(conn: &rusqlite::Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |r| r.get(0)).expect("count")
}

/// What one churn run measured.
struct Figures {
    secs: f64,
    rows: i64,
    clocks: i64,
    log_rows: i64,
    log_bytes: i64,
    churned: u64,
    removed: u64,
    log_rows_after: i64,
    compacted: u64,
    vacuumed: u64,
    collected: u64,
    ids: Vec<String>,
    /// With a policy: the file once collection, the sweep and the page
    /// reclaim have caught up after the churn.
    settled: u64,
}

fn main() {
    let ops = arg("--ops", 1_000_000);
    let live_target = arg("--live", 10_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let off = churn(dir.path(), "off", ops, live_target, false);
    let on = churn(dir.path(), "on", ops, live_target, true);
    assert_eq!(off.ids, on.ids, "both runs end with the same live rows");
    let ids = &off.ids;
    let fresh_size = fresh(dir.path(), ids);
    let plain_size = plain(dir.path(), ids);
    let mb = |b: u64| b as f64 / 1e6;
    println!("{ops} operations over ~{live_target} live rows, 100 per transaction");
    println!(
        "fresh litemesh file, same live rows: {:.1} MB; plain SQLite file: {:.1} MB",
        mb(fresh_size),
        mb(plain_size)
    );
    for (name, f) in [("no retention policy", &off), ("retention policy on", &on)] {
        println!("\n{name}: {:.0} ops/s", ops as f64 / f.secs);
        println!("  live rows at the end:              {}", f.rows);
        println!(
            "  clock rows (live + tombstones):    {} ({} tombstones; {} collected on the way)",
            f.clocks,
            f.clocks - f.rows,
            f.collected
        );
        println!(
            "  change-log rows:                   {} ({:.1} MB of entries), {} after compaction ({} entries removed)",
            f.log_rows,
            mb(f.log_bytes as u64),
            f.log_rows_after,
            f.removed
        );
        println!(
            "  file after the churn:              {:.1} MB ({:.2}x fresh)",
            mb(f.churned),
            f.churned as f64 / fresh_size as f64
        );
        println!(
            "    settled (seconds later, policy): {:.1} MB ({:.2}x)",
            mb(f.settled),
            f.settled as f64 / fresh_size as f64
        );
        println!(
            "    after compaction:                {:.1} MB ({:.2}x)",
            mb(f.compacted),
            f.compacted as f64 / fresh_size as f64
        );
        println!(
            "    after compaction and VACUUM:     {:.1} MB ({:.2}x)",
            mb(f.vacuumed),
            f.vacuumed as f64 / fresh_size as f64
        );
    }
    for (key, f) in [("off", &off), ("on", &on)] {
        println!("churn_{key}_ops_per_s: {:.0}", ops as f64 / f.secs);
        println!("churn_{key}_tombstones: {}", f.clocks - f.rows);
        println!(
            "churn_{key}_file_over_fresh_x: {:.2}",
            f.churned as f64 / fresh_size as f64
        );
        println!(
            "churn_{key}_settled_over_fresh_x: {:.2}",
            f.settled as f64 / fresh_size as f64
        );
        println!(
            "churn_{key}_compacted_over_fresh_x: {:.2}",
            f.compacted as f64 / fresh_size as f64
        );
        println!(
            "churn_{key}_vacuumed_over_fresh_x: {:.2}",
            f.vacuumed as f64 / fresh_size as f64
        );
    }
}

/// One churn run; with `policy`, collection and the log sweep as a node
/// runs them.
fn churn(dir: &Path, name: &str, ops: usize, live_target: usize, policy: bool) -> Figures {
    let path = dir.join(format!("churn-{name}.db"));
    let opts = litemesh_storage::StoreOptions {
        reclaim_pages: policy,
        ..Default::default()
    };
    let mut s = Store::open_with(&path, &opts).expect("open");
    s.apply_schema(SCHEMA).expect("schema");
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut live: Vec<String> = Vec::with_capacity(live_target * 2);
    let started = Instant::now();
    let mut done = 0;
    let mut collected = 0;
    let mut next_tick = Instant::now() + Duration::from_secs(1);
    let mut sweep_from = 0;
    let mut sweep_high = 0;
    let mut cut: BTreeMap<ActorId, u64> = BTreeMap::new();
    while done < ops {
        if policy && Instant::now() >= next_tick {
            next_tick += Duration::from_secs(1);
            // The node's maintenance tick: a sweep step sized by the log's
            // growth, then the collection of the cut a check ago.
            let high = s.log_high_water().expect("high water");
            let budget = ((high - sweep_high).max(0) as u64 * 2).clamp(64, 4096);
            sweep_high = high;
            let (_, next) = s.compact_step(sweep_from, budget).expect("sweep");
            sweep_from = next.unwrap_or(0);
            s.reclaim(2048).expect("reclaim");
            collected += s.collect(&cut, u64::MAX).expect("collect").tombstones;
            let k = s.knowledge().expect("knowledge");
            cut = k.have.keys().map(|a| (*a, k.complete_through(a))).collect();
        }
        let batch = 100.min(ops - done);
        common::churn_batch(&mut s, &mut rng, &mut live, batch, live_target);
        done += batch;
    }
    let secs = started.elapsed().as_secs_f64();
    let conn = s.connection();
    let rows = count(conn, "SELECT count(*) FROM items");
    let clocks = count(conn, "SELECT count(*) FROM __lm_clk_items");
    let log_rows = count(conn, "SELECT count(*) FROM __lm_log");
    let log_bytes = count(
        conn,
        "SELECT coalesce(sum(length(entries)), 0) FROM __lm_log",
    );
    let churned = size(conn, &path);
    // With a policy, a few seconds later: the last deletes' tombstones
    // collected, the sweep and the page reclaim caught up (what a node
    // does within seconds of the churn stopping).
    let settled = if policy {
        s.collect(&cut, u64::MAX).expect("collect");
        let k = s.knowledge().expect("knowledge");
        let cut: BTreeMap<ActorId, u64> =
            k.have.keys().map(|a| (*a, k.complete_through(a))).collect();
        collected += s.collect(&cut, u64::MAX).expect("collect").tombstones;
        loop {
            let (_, next) = s.compact_step(sweep_from, 4096).expect("sweep");
            match next {
                Some(n) if n > sweep_from => sweep_from = n,
                _ => break,
            }
        }
        while s.reclaim(2048).expect("reclaim") > 0 {}
        size(s.connection(), &path)
    } else {
        churned
    };
    // A whole compaction at the end (what overwrites leave behind).
    let removed = s.compact().expect("compact");
    let conn = s.connection();
    let log_rows_after = count(conn, "SELECT count(*) FROM __lm_log");
    let compacted = size(conn, &path);
    conn.execute_batch("VACUUM").expect("vacuum");
    let vacuumed = size(conn, &path);
    let mut ids: Vec<String> = {
        let mut st = conn.prepare("SELECT id FROM items").expect("ids");
        st.query_map([], |r| r.get(0))
            .expect("ids")
            .collect::<Result<_, _>>()
            .expect("ids")
    };
    ids.sort();
    Figures {
        settled,
        secs,
        rows,
        clocks,
        log_rows,
        log_bytes,
        churned,
        removed,
        log_rows_after,
        compacted,
        vacuumed,
        collected,
        ids,
    }
}

/// A fresh litemesh file holding `ids`: its size.
fn fresh(dir: &Path, ids: &[String]) -> u64 {
    let fresh_path = dir.join("fresh.db");
    let mut fresh = Store::open(&fresh_path).expect("open");
    fresh.apply_schema(SCHEMA).expect("schema");
    fresh
        .transaction(|t| {
            for id in ids {
                t.execute(
                    "INSERT INTO items VALUES (?1, 1, 'some text of a row')",
                    [id],
                )?;
            }
            Ok(())
        })
        .expect("fresh");
    size(fresh.connection(), &fresh_path)
}

/// A plain SQLite file holding `ids`: its size.
fn plain(dir: &Path, ids: &[String]) -> u64 {
    let plain_path = dir.join("plain.db");
    let plain = rusqlite::Connection::open(&plain_path).expect("plain");
    plain
        .execute_batch(&format!("PRAGMA journal_mode = WAL; {SCHEMA}; BEGIN"))
        .expect("plain schema");
    for id in ids {
        plain
            .execute(
                "INSERT INTO items VALUES (?1, 1, 'some text of a row')",
                [id],
            )
            .expect("plain insert");
    }
    plain.execute_batch("COMMIT").expect("commit");
    size(&plain, &plain_path)
}
