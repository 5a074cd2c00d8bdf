//! What the churn and absence benchmarks share: their arguments and the
//! churn workload.

#![allow(dead_code)]

use litemesh_storage::Store;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// The table the workload churns.
pub const SCHEMA: &str = "CREATE TABLE items (id TEXT PRIMARY KEY, a INTEGER, b TEXT)";

/// The value of `--name N` on the command line (`_` allowed in numbers).
pub fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// One transaction of `batch` churn operations on `s`: inserts of new
/// random keys, updates and deletes of live ones, a third each, steered to
/// keep about `live_target` rows (below it, more inserts; above, more
/// deletes). `live` is the set of live keys, kept up to date.
pub fn churn_batch(
    s: &mut Store,
    rng: &mut ChaCha8Rng,
    live: &mut Vec<String>,
    batch: usize,
    live_target: usize,
) {
    let mut plan = Vec::with_capacity(batch);
    for _ in 0..batch {
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
}
