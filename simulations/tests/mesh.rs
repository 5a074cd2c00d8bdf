//! Whole-node simulation: the shipping node core with real SQLite files under
//! simulated faults, checked as it runs.

use std::time::Duration;

use litemesh_simulations::mesh::{MeshParams, run};

fn params(seed: u64) -> MeshParams {
    MeshParams {
        nodes: 5,
        seed,
        faults: 3,
        ..MeshParams::default()
    }
}

#[test]
fn mixed_faults_lose_nothing_and_heal() {
    for seed in [3, 8] {
        let dir = tempfile::tempdir().unwrap();
        let r = run(&params(seed), dir.path());
        assert!(r.violations.is_empty(), "seed {seed}: {:#?}", r.violations);
        assert!(r.acked > 200, "seed {seed}: {} transactions", r.acked);
        assert!(r.counter_increments > 50, "seed {seed}: {r:?}");
        assert_eq!(r.counters_exact, r.counter_keys, "seed {seed}");
        // Simulated time: exact and reproducible, not a wall-clock figure.
        let c = r.converged_after.expect("converged");
        assert!(
            c <= Duration::from_secs(10),
            "seed {seed}: converged {c:?} after the heal"
        );
        let m = r.members_after.expect("members alive");
        assert!(
            m <= Duration::from_secs(10),
            "seed {seed}: members {m:?} after the heal"
        );
    }
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let a = run(&params(11), tempfile::tempdir().unwrap().path());
    let b = run(&params(11), tempfile::tempdir().unwrap().path());
    assert_eq!(a, b);
    let c = run(&params(12), tempfile::tempdir().unwrap().path());
    assert_ne!(a.digest, c.digest, "another seed, another history");
}

#[test]
fn the_checker_catches_lost_writes() {
    // Crash faults that delete the crashed node's file: writes only it held
    // are gone, and it numbers versions again under the same actor.
    let mut found = false;
    for seed in 1..20 {
        let p = MeshParams {
            lose_files: true,
            ..params(seed)
        };
        let r = run(&p, tempfile::tempdir().unwrap().path());
        let crashed = r
            .faults
            .iter()
            .any(|(f, _)| matches!(f, litemesh_simulations::mesh::Fault::Crash(_)));
        if !crashed {
            assert!(r.violations.is_empty(), "seed {seed}: {:#?}", r.violations);
            continue;
        }
        assert!(
            !r.violations.is_empty(),
            "seed {seed}: a lost file went unnoticed"
        );
        found |= r.violations.iter().any(|v| {
            v.contains("lost its own acknowledged write")
                || v.contains("missing")
                || v.contains("beyond its file")
        });
        if found {
            break;
        }
    }
    assert!(found, "no seed with a crash showed the loss");
}

#[test]
fn the_checker_catches_a_wrong_counter_sum() {
    // Every node records its counter increments one more than it committed:
    // the replicas agree with each other, not with the increments.
    let p = MeshParams {
        miscount_counters: true,
        faults: 1,
        ..params(5)
    };
    let r = run(&p, tempfile::tempdir().unwrap().path());
    assert!(r.counter_increments > 50, "{r:?}");
    assert!(
        r.counter_keys > 0 && r.counters_exact < r.counter_keys,
        "{r:?}"
    );
    assert!(
        r.violations
            .iter()
            .any(|v| v.starts_with("end: counter c") && v.contains("expected")),
        "{:#?}",
        r.violations
    );
    assert!(r.converged_after.is_some(), "the replicas still agree");
}

#[test]
fn the_checker_catches_rows_outside_their_region() {
    // Every node ignores the placement of the table pinned to r0: its rows
    // reach (and stay on) nodes of r1 and r2. The checker looks at the
    // files themselves.
    let p = MeshParams {
        ignore_placement: true,
        faults: 1,
        ..params(5)
    };
    let r = run(&p, tempfile::tempdir().unwrap().path());
    assert!(
        r.violations
            .iter()
            .any(|v| v.contains("of a table pinned to r0 outside its region")),
        "{:#?}",
        r.violations
    );
}

#[test]
fn pinned_rows_stay_in_their_region_and_reach_all_of_it_under_faults() {
    // The checker looks at every file as the run goes: no row (or clock,
    // parked or buffered change) of the table pinned to r0 on a node of r1
    // or r2, every transaction's pinned row with it on r0 nodes, and, at
    // the end, every acknowledged pinned row on every r0 node.
    for seed in [21, 22, 23] {
        let p = MeshParams {
            nodes: 7,
            faults: 4,
            ..params(seed)
        };
        let r = run(&p, tempfile::tempdir().unwrap().path());
        assert!(r.violations.is_empty(), "seed {seed}: {:#?}", r.violations);
        assert!(r.converged_after.is_some(), "seed {seed}: not converged");
    }
}

/// Retention on (a 5 s window), keys deleted and re-inserted everywhere under
/// faults: tombstones are collected as the run goes, and the replicas still
/// end identical with every acknowledged write.
#[test]
fn tombstone_collection_under_faults_converges() {
    for seed in [3, 8] {
        let dir = tempfile::tempdir().unwrap();
        let p = MeshParams {
            retention: Some(Duration::from_secs(5)),
            settle: Duration::from_secs(120),
            ..params(seed)
        };
        let r = run(&p, dir.path());
        assert!(r.violations.is_empty(), "seed {seed}: {:#?}", r.violations);
        // Once the mesh is quiet, every tombstone goes: none is kept by
        // mistake, and collection never waits on a node that has reported.
        let c = r.collected_after.unwrap_or_else(|| {
            panic!(
                "seed {seed}: {} tombstones left after {:?} ({} collected)",
                r.tombstones_left, p.settle, r.tombstones_collected
            )
        });
        assert!(r.tombstones_collected > 50, "seed {seed}: {r:?}");
        eprintln!(
            "seed {seed}: {} tombstones collected; none left {c:?} after the heal",
            r.tombstones_collected
        );
    }
}

/// Sabotage: nodes collect a tombstone as soon as they hold it themselves.
/// A concurrent write elsewhere then survives on some nodes and not on
/// others: the checker must see the replicas differ.
#[test]
fn the_checker_catches_unsafe_collection() {
    let caught = [3, 8, 13].iter().any(|&seed| {
        let dir = tempfile::tempdir().unwrap();
        let p = MeshParams {
            retention: Some(Duration::ZERO),
            naive_collection: true,
            ..params(seed)
        };
        !run(&p, dir.path()).violations.is_empty()
    });
    assert!(
        caught,
        "collecting without every node's report went unnoticed"
    );
}

/// A node cut off alone longer than `--forget-after` while both sides
/// write, delete and collect: when the partition heals each side lacks
/// versions the other collected, so every node catches up by snapshot (the
/// cut-off node from a listing of the others, they from its), and the
/// replicas end identical with every acknowledged write — the writes the
/// cut-off node made alone included.
#[test]
fn a_node_cut_off_past_forget_after_catches_up_by_snapshot() {
    for seed in [4, 25] {
        let dir = tempfile::tempdir().unwrap();
        let p = MeshParams {
            retention: Some(Duration::from_secs(5)),
            settle: Duration::from_secs(120),
            long_absence: Some(Duration::from_secs(60)),
            faults: 4,
            ..params(seed)
        };
        let r = run(&p, dir.path());
        assert!(r.violations.is_empty(), "seed {seed}: {:#?}", r.violations);
        assert!(r.snapshots >= 2, "seed {seed}: both sides: {r:?}");
        eprintln!(
            "seed {seed}: {} snapshot catch-ups, {} rows dropped, {} rebased; identical {:?} \
             after the heal",
            r.snapshots, r.snapshot_dropped, r.snapshot_rebased, r.converged_after
        );
    }
}
