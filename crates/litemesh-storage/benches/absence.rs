//! A long absence: one node is away while another makes `--ops N` changes
//! (default 1,000,000: inserts of new keys, updates and deletes, a third
//! each, over about `--live N` live rows, default 10,000, 100 per
//! transaction). How much it takes to catch up when it returns — the same
//! extraction and merge the node runs, measured in bytes on the wire
//! (encoded change batches) and time (extract + merge), three ways:
//!
//! 1. **incremental, nothing collected** (no retention policy, or a policy
//!    whose collection waited for the absent node, as it does while the
//!    node is a member): it gets every version it lacks, each as what
//!    survives of it (overwritten cells are not sent) — deletes included;
//! 2. **incremental, log swept**: the same with the change log swept (a
//!    policy on: overwritten entries removed, tombstones kept because the
//!    absent node still needs them);
//! 3. **a fresh file** (the node was away longer than `--forget-after`, the
//!    others collected the tombstones, and it is replaced): everything from
//!    scratch — the live rows, and every version as cleared.
//!
//! Run: `cargo bench -p litemesh-storage --bench absence [-- --ops N --live N]`.

use std::path::Path;
use std::time::Instant;

use litemesh_storage::{Store, StoreOptions, encode_batch};

mod common;
use common::{SCHEMA, arg};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn open(path: &Path) -> Store {
    let opts = StoreOptions {
        durable: false,
        ..StoreOptions::default()
    };
    let mut s = Store::open_with(path, &opts).expect("open");
    s.apply_schema(SCHEMA).expect("schema");
    s
}

/// `ops` operations of churn on `s`, keeping about `live_target` rows.
fn churn(
    s: &mut Store,
    rng: &mut ChaCha8Rng,
    live: &mut Vec<String>,
    ops: usize,
    live_target: usize,
) {
    let mut done = 0;
    while done < ops {
        let batch = 100.min(ops - done);
        common::churn_batch(s, rng, live, batch, live_target);
        done += batch;
    }
}

/// `to` catches up from `from`: (bytes encoded, seconds, row changes).
fn catch_up(from: &Store, to: &mut Store) -> (u64, f64, u64) {
    let started = Instant::now();
    let theirs = to.knowledge().expect("knowledge");
    let mut batches = Vec::new();
    from.changes_since(&theirs, 256 * 1024, |b| {
        batches.push(b);
        Ok(true)
    })
    .expect("extract");
    let mut bytes = 0;
    let mut rows = 0;
    for b in &batches {
        bytes += encode_batch(b, usize::MAX).expect("encode").len() as u64;
        rows += b.versions.iter().map(|v| v.rows.len() as u64).sum::<u64>();
    }
    for chunk in batches.chunks(64) {
        to.apply_all(chunk).expect("apply");
    }
    (bytes, started.elapsed().as_secs_f64(), rows)
}

fn dump(s: &Store) -> Vec<(String, i64)> {
    s.connection()
        .prepare("SELECT id, a FROM items ORDER BY id")
        .expect("dump")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("dump")
        .collect::<Result<_, _>>()
        .expect("dump")
}

fn main() {
    let ops = arg("--ops", 1_000_000);
    let live_target = arg("--live", 10_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let mut a = open(&d.join("a.db"));
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut live = Vec::new();
    // Both nodes start with the same rows.
    churn(&mut a, &mut rng, &mut live, live_target, live_target);
    let mut away = open(&d.join("away.db"));
    let mut away_swept = open(&d.join("away-swept.db"));
    catch_up(&a, &mut away);
    catch_up(&a, &mut away_swept);
    // The absence: the other node's changes.
    let started = Instant::now();
    churn(&mut a, &mut rng, &mut live, ops, live_target);
    let made = started.elapsed().as_secs_f64();
    let mb = |b: u64| b as f64 / 1e6;
    println!(
        "{ops} changes over ~{live_target} live rows while a node was away ({made:.0} s to make them)"
    );
    let (b1, t1, r1) = catch_up(&a, &mut away);
    assert_eq!(dump(&away), dump(&a), "incremental catch-up converges");
    println!(
        "1. incremental, nothing collected:    {:>7.1} MB, {:>5.1} s, {r1} row changes",
        mb(b1),
        t1
    );
    // A policy on: the log swept (tombstones kept for the absent node).
    a.compact().expect("compact");
    let (b2, t2, r2) = catch_up(&a, &mut away_swept);
    assert_eq!(
        dump(&away_swept),
        dump(&a),
        "catch-up after the sweep converges"
    );
    println!(
        "2. incremental, log swept:            {:>7.1} MB, {:>5.1} s, {r2} row changes",
        mb(b2),
        t2
    );
    // Collected everywhere: the absent node is replaced by a fresh file.
    let k = a.knowledge().expect("knowledge");
    let cut = k.have.keys().map(|x| (*x, k.complete_through(x))).collect();
    let collected = a.collect(&cut, u64::MAX).expect("collect");
    let mut fresh = open(&d.join("fresh.db"));
    let (b3, t3, r3) = catch_up(&a, &mut fresh);
    assert_eq!(dump(&fresh), dump(&a), "a fresh file converges");
    println!(
        "3. a fresh file (tombstones collected: {}): {:>7.1} MB, {:>5.1} s, {r3} row changes",
        collected.tombstones,
        mb(b3),
        t3
    );
    println!("absence_incremental_mb: {:.1}", mb(b1));
    println!("absence_incremental_s: {t1:.1}");
    println!("absence_swept_mb: {:.1}", mb(b2));
    println!("absence_swept_s: {t2:.1}");
    println!("absence_fresh_mb: {:.1}", mb(b3));
    println!("absence_fresh_s: {t3:.1}");
}
