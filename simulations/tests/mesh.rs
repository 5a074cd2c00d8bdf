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
