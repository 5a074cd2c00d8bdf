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
//!    scratch — the live rows, and every version as cleared;
//! 4. **by snapshot** (the same absence, the node keeps its file — with
//!    `--own N` changes of its own made while away, default 1,000): what it
//!    lacks (as cleared where collected), then the listing of every live
//!    key, checked against its rows; it keeps its own writes, drops the
//!    rows deleted meanwhile, and the other node then pulls its writes.
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

/// `to` catches up from `from` by snapshot, in answers of at most 16 MB
/// (the node's budget) resumed from its cursor: (bytes encoded, seconds,
/// answers, rows dropped, rows rebased).
fn snapshot_catch_up(from: &Store, to: &mut Store) -> (u64, f64, u64, u64, u64) {
    use litemesh_storage::SnapshotFrame;
    let started = Instant::now();
    let need = from.collected_through().expect("collected");
    to.set_needs_snapshot("bench", &need).expect("mark");
    let (mut bytes, mut answers, mut dropped, mut rebased) = (0u64, 0u64, 0u64, 0u64);
    loop {
        answers += 1;
        let theirs = to.knowledge().expect("knowledge");
        let cursor = to.snapshot_cursor().expect("cursor");
        let mut frames = Vec::new();
        let mut size = 0;
        from.snapshot_for(&theirs, None, &cursor, false, 256 * 1024, |f| {
            let b = match &f {
                SnapshotFrame::Batch(b) => litemesh_sync::encode_sync_batch(b, usize::MAX),
                SnapshotFrame::Base(k) => {
                    litemesh_sync::encode_snapshot_base(k.clone(), usize::MAX)
                }
                SnapshotFrame::Keys(c) => litemesh_sync::encode_key_chunk(c.clone(), usize::MAX),
            }
            .expect("encode");
            size += b.len();
            frames.push(f);
            Ok(size < 16 * 1024 * 1024)
        })
        .expect("snapshot");
        bytes += size as u64;
        let mut base = None;
        let mut group = Vec::new();
        for f in frames {
            match f {
                SnapshotFrame::Batch(b) => {
                    group.push(b);
                    if group.len() == 64 {
                        to.apply_all(&group).expect("apply");
                        group.clear();
                    }
                }
                SnapshotFrame::Base(k) => base = Some(k),
                SnapshotFrame::Keys(c) => {
                    to.apply_all(&group).expect("apply");
                    group.clear();
                    let p = to
                        .prune_absent(&c, base.as_ref().expect("base"), &need)
                        .expect("prune");
                    dropped += p.dropped;
                    rebased += p.rebased;
                    if p.complete {
                        return (
                            bytes,
                            started.elapsed().as_secs_f64(),
                            answers,
                            dropped,
                            rebased,
                        );
                    }
                }
            }
        }
        to.apply_all(&group).expect("apply");
    }
}

fn main() {
    let ops = arg("--ops", 1_000_000);
    let own = arg("--own", 1_000);
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
    let mut away_snap = open(&d.join("away-snapshot.db"));
    catch_up(&a, &mut away);
    catch_up(&a, &mut away_swept);
    catch_up(&a, &mut away_snap);
    // The node kept by snapshot writes on its own while away.
    let mut own_live = live.clone();
    let mut own_rng = ChaCha8Rng::seed_from_u64(12);
    churn(
        &mut away_snap,
        &mut own_rng,
        &mut own_live,
        own,
        live_target,
    );
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
    // The same absence, the node keeps its file: by snapshot.
    let (b4, t4, answers, dropped, rebased) = snapshot_catch_up(&a, &mut away_snap);
    catch_up(&away_snap, &mut a);
    assert_eq!(dump(&away_snap), dump(&a), "a snapshot catch-up converges");
    println!(
        "4. by snapshot, {own} own changes kept: {:>7.1} MB, {:>5.1} s, {answers} answer(s), \
         {dropped} rows dropped (deleted meanwhile), {rebased} own rows rebased",
        mb(b4),
        t4
    );
    println!("absence_incremental_mb: {:.1}", mb(b1));
    println!("absence_incremental_s: {t1:.1}");
    println!("absence_swept_mb: {:.1}", mb(b2));
    println!("absence_swept_s: {t2:.1}");
    println!("absence_fresh_mb: {:.1}", mb(b3));
    println!("absence_fresh_s: {t3:.1}");
    println!("absence_snapshot_mb: {:.1}", mb(b4));
    println!("absence_snapshot_s: {t4:.1}");
}
