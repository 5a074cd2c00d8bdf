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
//! Run: `cargo bench -p litemesh-storage --bench churn [-- --ops N --live N]`.

use std::path::Path;
use std::time::Instant;

use litemesh_storage::Store;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const SCHEMA: &str = "CREATE TABLE items (id TEXT PRIMARY KEY, a INTEGER, b TEXT)";

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// The file's size once its WAL is checkpointed into it.
fn size(conn: &rusqlite::Connection, path: &Path) -> u64 {
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .expect("checkpoint");
    std::fs::metadata(path).expect("size").len()
}

fn count(conn: &rusqlite::Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |r| r.get(0)).expect("count")
}

fn main() {
    let ops = arg("--ops", 1_000_000);
    let live_target = arg("--live", 10_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("churn.db");
    let mut s = Store::open(&path).expect("open");
    s.apply_schema(SCHEMA).expect("schema");
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut live: Vec<String> = Vec::with_capacity(live_target * 2);
    let started = Instant::now();
    let mut done = 0;
    while done < ops {
        let batch = 100.min(ops - done);
        let mut plan = Vec::with_capacity(batch);
        for _ in 0..batch {
            // Below the target, insert more; above, delete more.
            let r: f64 = rng.random();
            let bias = (live.len() as f64 / live_target as f64 - 1.0).clamp(-0.3, 0.3);
            let op = if live.is_empty() || r < 1.0 / 3.0 - bias {
                let id = format!("{:016x}", rng.random::<u64>());
                live.push(id.clone());
                (0, id)
            } else if r < 2.0 / 3.0 {
                (1, live[rng.random_range(0..live.len())].clone())
            } else {
                let i = rng.random_range(0..live.len());
                (2, live.swap_remove(i))
            };
            plan.push(op);
        }
        let v: i64 = rng.random_range(0..1_000_000);
        s.transaction(|t| {
            for (op, id) in &plan {
                match op {
                    0 => t.execute(
                        "INSERT INTO items VALUES (?1, ?2, 'some text of a row')",
                        (id, v),
                    )?,
                    1 => t.execute("UPDATE items SET a = ?2 WHERE id = ?1", (id, v))?,
                    _ => t.execute("DELETE FROM items WHERE id = ?1", [id])?,
                };
            }
            Ok(())
        })
        .expect("transaction");
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
    // Compaction (what overwrites leave behind) as the node runs it.
    let removed = s.compact().expect("compact");
    let conn = s.connection();
    let log_rows_after = count(conn, "SELECT count(*) FROM __lm_log");
    let compacted = size(conn, &path);
    conn.execute_batch("VACUUM").expect("vacuum");
    let vacuumed = size(conn, &path);

    // The same live rows in a fresh litemesh file and a plain SQLite file.
    let fresh_path = dir.path().join("fresh.db");
    let mut fresh = Store::open(&fresh_path).expect("open");
    fresh.apply_schema(SCHEMA).expect("schema");
    let ids: Vec<String> = {
        let mut st = conn.prepare("SELECT id FROM items").expect("ids");
        st.query_map([], |r| r.get(0))
            .expect("ids")
            .collect::<Result<_, _>>()
            .expect("ids")
    };
    fresh
        .transaction(|t| {
            for id in &ids {
                t.execute(
                    "INSERT INTO items VALUES (?1, 1, 'some text of a row')",
                    [id],
                )?;
            }
            Ok(())
        })
        .expect("fresh");
    let fresh_size = size(fresh.connection(), &fresh_path);
    let plain_path = dir.path().join("plain.db");
    let plain = rusqlite::Connection::open(&plain_path).expect("plain");
    plain
        .execute_batch(&format!("PRAGMA journal_mode = WAL; {SCHEMA}; BEGIN"))
        .expect("plain schema");
    for id in &ids {
        plain
            .execute(
                "INSERT INTO items VALUES (?1, 1, 'some text of a row')",
                [id],
            )
            .expect("plain insert");
    }
    plain.execute_batch("COMMIT").expect("commit");
    let plain_size = size(&plain, &plain_path);

    let mb = |b: u64| b as f64 / 1e6;
    println!(
        "{ops} operations over ~{live_target} live rows: {:.0} ops/s",
        ops as f64 / secs
    );
    println!("live rows at the end:                {rows}");
    println!(
        "clock rows (live + tombstones):      {clocks} ({} tombstones)",
        clocks - rows
    );
    println!(
        "change-log rows:                     {log_rows} ({:.1} MB of entries), {log_rows_after} after compaction ({removed} entries removed)",
        mb(log_bytes as u64)
    );
    println!("file after the churn:                {:.1} MB", mb(churned));
    println!(
        "  after compaction:                  {:.1} MB",
        mb(compacted)
    );
    println!(
        "  after compaction and VACUUM:       {:.1} MB",
        mb(vacuumed)
    );
    println!(
        "fresh litemesh file, same live rows: {:.1} MB",
        mb(fresh_size)
    );
    println!(
        "plain SQLite file, same live rows:   {:.1} MB",
        mb(plain_size)
    );
    println!("churn_ops_per_s: {:.0}", ops as f64 / secs);
    println!("churn_tombstones: {}", clocks - rows);
    println!(
        "churn_file_over_fresh_x: {:.2}",
        compacted as f64 / fresh_size as f64
    );
    println!(
        "churn_vacuumed_over_fresh_x: {:.2}",
        vacuumed as f64 / fresh_size as f64
    );
}
