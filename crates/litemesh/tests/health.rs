//! Health and lag under partitions, and the node's own versions never
//! reused — over real QUIC on loopback with the transport's fault injection.

mod common;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use litemesh::{FaultHandle, HealthIssue, HealthThresholds, Node, Settings, Statement, Value};

async fn insert(node: &Node, id: String) -> litemesh::Executed {
    node.execute(vec![Statement::with_params(
        "INSERT INTO items VALUES (?1, ?2, 1)",
        vec![Value::Text(id), Value::Text(node.name().into())],
    )])
    .await
    .unwrap()
}

async fn start(
    dir: &tempfile::TempDir,
    ca: &Ca,
    name: &str,
    seeds: &[SocketAddr],
) -> (Node, FaultHandle) {
    let s: Settings = settings(dir, name, ca, seeds);
    let f = s.faults.clone().unwrap();
    (Node::start(s).await.unwrap(), f)
}

fn thresholds() -> HealthThresholds {
    HealthThresholds {
        max_lag: Duration::from_secs(2),
        max_behind_versions: 100,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_makes_the_minority_unhealthy_its_lag_grow_and_healing_clears_both() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let (a, fa) = start(&dir, &ca, "a", &[]).await;
    let seed = a.local_addr();
    let (b, fb) = start(&dir, &ca, "b", &[seed]).await;
    let (c, fc) = start(&dir, &ca, "c", &[seed]).await;
    let nodes = [a.clone(), b.clone(), c.clone()];
    eventually(Duration::from_secs(20), "all alive", || {
        let ok = nodes.iter().all(|n| alive_count(n) == 3);
        async move { ok }
    })
    .await;
    insert(&a, "before".into()).await;
    eventually(Duration::from_secs(10), "all healthy", || {
        let nodes = nodes.clone();
        async move {
            for n in &nodes {
                if !n.health(&thresholds()).await.unwrap().is_ok() {
                    return false;
                }
            }
            true
        }
    })
    .await;
    // c is cut off from a and b; a keeps writing.
    fa.partition(vec![c.local_addr()]);
    fb.partition(vec![c.local_addr()]);
    fc.partition(vec![a.local_addr(), b.local_addr()]);
    let mut i = 0;
    eventually(Duration::from_secs(30), "c reports itself cut off", || {
        i += 1;
        let (a, c) = (a.clone(), c.clone());
        async move {
            insert(&a, format!("during-{i}")).await;
            let h = c.health(&thresholds()).await.unwrap();
            h.issues.iter().any(|x| {
                matches!(
                    x,
                    HealthIssue::CutOff {
                        reachable: 1,
                        known: 3
                    }
                )
            })
        }
    })
    .await;
    // Its lag for a grows, in seconds, while a and b stay healthy.
    let lag_of_a = |n: Node, actor: litemesh::ActorId| async move {
        n.status()
            .await
            .unwrap()
            .writers
            .iter()
            .find(|w| w.actor == actor)
            .map(|w| w.lag.as_secs_f64())
            .unwrap_or(0.0)
    };
    let a_actor = a.actor_id();
    let l1 = lag_of_a(c.clone(), a_actor).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let l2 = lag_of_a(c.clone(), a_actor).await;
    assert!(l2 > l1 && l2 > 1.0, "lag grows: {l1} then {l2}");
    assert!(a.health(&thresholds()).await.unwrap().is_ok());
    assert!(b.health(&thresholds()).await.unwrap().is_ok());
    // Healed: c catches up and is healthy again.
    for f in [&fa, &fb, &fc] {
        f.heal();
    }
    eventually(Duration::from_secs(30), "identical after healing", || {
        let nodes = nodes.clone();
        async move { all_identical(&nodes).await }
    })
    .await;
    eventually(Duration::from_secs(30), "c healthy again", || {
        let c = c.clone();
        async move { c.health(&thresholds()).await.unwrap().is_ok() }
    })
    .await;
    // a saw c away, and says for how long (retention's absences).
    eventually(
        Duration::from_secs(10),
        "the absence of c noted on a",
        || {
            let a = a.clone();
            async move {
                let r = a.retention().await.unwrap();
                r.longest_absence
                    .is_some_and(|(m, d)| m == "c" && d > Duration::from_secs(1))
                    && r.members.iter().all(|m| m.unreachable_for.is_none())
            }
        },
    )
    .await;
    // The lag is recomputed as heads and knowledge arrive, not when the
    // health verdict is: it clears soon after.
    eventually(Duration::from_secs(10), "c's lag for a back to 0", || {
        let c = c.clone();
        async move { lag_of_a(c, a_actor).await == 0.0 }
    })
    .await;
    for n in &nodes {
        n.shutdown().await;
    }
}

/// A backup of a cleanly stopped node, restored over a file that went on
/// writing afterwards, looks clean; the peers' knowledge of its actor gives
/// it away, and the node moves to a new actor id instead of reusing the
/// versions they hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_backup_is_caught_by_its_peers_and_never_reuses_a_version() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let (b, _) = start(&dir, &ca, "b", &[]).await;
    let seed = b.local_addr();
    let (a, _) = start(&dir, &ca, "a", &[seed]).await;
    for i in 0..5 {
        insert(&a, format!("first-{i}")).await;
    }
    let first_actor = a.actor_id();
    a.shutdown().await;
    drop(a);
    // The backup, taken while a is stopped (the file and its marker).
    let db = dir.path().join("a.db");
    let clean = dir.path().join("a.db-clean");
    let wal = dir.path().join("a.db-wal");
    let backup = std::fs::read(&db).unwrap();
    let backup_clean = std::fs::read(&clean).unwrap();
    let backup_wal = std::fs::read(&wal).ok();
    let (a, _) = start(&dir, &ca, "a", &[seed]).await;
    assert_eq!(a.actor_id(), first_actor, "a clean restart keeps the actor");
    // Once a peer has shown that it holds a's latest version, a writes on
    // under its actor id.
    eventually(Duration::from_secs(10), "a reconciled with b", || {
        let a = a.clone();
        async move { a.status().await.unwrap().syncs_completed > 0 }
    })
    .await;
    for i in 0..5 {
        insert(&a, format!("second-{i}")).await;
    }
    assert_eq!(a.actor_id(), first_actor);
    eventually(Duration::from_secs(10), "b has a's ten rows", || {
        let b = b.clone();
        async move { dump(&b).await.len() == 10 }
    })
    .await;
    a.shutdown().await;
    drop(a);
    // Every connection of the stopped node is closed once its tasks are gone.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Restore in place (same file, so the same inode) with the old marker.
    let _ = std::fs::remove_file(&wal);
    let _ = std::fs::remove_file(dir.path().join("a.db-shm"));
    std::fs::write(&db, &backup).unwrap();
    std::fs::write(&clean, &backup_clean).unwrap();
    if let Some(w) = &backup_wal {
        std::fs::write(&wal, w).unwrap();
    }
    let (a, _) = start(&dir, &ca, "a", &[seed]).await;
    eventually(Duration::from_secs(20), "a moves to a new actor id", || {
        let ok = a.actor_id() != first_actor;
        async move { ok }
    })
    .await;
    let done = insert(&a, "third".into()).await;
    assert_ne!(done.token.versions()[0].0, first_actor);
    let nodes = [a.clone(), b.clone()];
    eventually(Duration::from_secs(20), "both hold all eleven rows", || {
        let nodes = nodes.clone();
        async move { all_identical(&nodes).await && dump(&nodes[0]).await.len() == 11 }
    })
    .await;
    for n in &nodes {
        n.shutdown().await;
    }
}

/// The same restore while every peer is down: no peer can tell, so the first
/// write moves the node to a new actor id before it commits, and the write
/// the restore lost comes back when the peer does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_backup_with_no_peer_in_reach_writes_under_a_new_actor() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let (b, _) = start(&dir, &ca, "b", &[]).await;
    let (a, _) = start(&dir, &ca, "a", &[b.local_addr()]).await;
    insert(&a, "one".into()).await;
    let first_actor = a.actor_id();
    a.shutdown().await;
    drop(a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let db = dir.path().join("a.db");
    let clean = dir.path().join("a.db-clean");
    let wal = dir.path().join("a.db-wal");
    let backup = std::fs::read(&db).unwrap();
    let backup_clean = std::fs::read(&clean).unwrap();
    let backup_wal = std::fs::read(&wal).ok();
    let (a, _) = start(&dir, &ca, "a", &[b.local_addr()]).await;
    assert_eq!(a.actor_id(), first_actor);
    let two = insert(&a, "two".into()).await;
    b.wait_for(&two.token, Duration::from_secs(10))
        .await
        .unwrap();
    a.shutdown().await;
    drop(a);
    b.shutdown().await;
    drop(b);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = std::fs::remove_file(&wal);
    let _ = std::fs::remove_file(dir.path().join("a.db-shm"));
    std::fs::write(&db, &backup).unwrap();
    std::fs::write(&clean, &backup_clean).unwrap();
    if let Some(w) = &backup_wal {
        std::fs::write(&wal, w).unwrap();
    }
    // b is down: a starts clean, with no one to ask.
    let (a, _) = start(&dir, &ca, "a", &[]).await;
    assert_eq!(
        a.actor_id(),
        first_actor,
        "clean as far as the file can tell"
    );
    let three = insert(&a, "three".into()).await;
    assert_ne!(
        three.token.versions()[0].0,
        first_actor,
        "the first write went under a new actor id"
    );
    let (b, _) = start(&dir, &ca, "b", &[a.local_addr()]).await;
    let nodes = [a.clone(), b.clone()];
    eventually(
        Duration::from_secs(20),
        "one, two and three everywhere",
        || {
            let nodes = nodes.clone();
            async move { all_identical(&nodes).await && dump(&nodes[0]).await.len() == 3 }
        },
    )
    .await;
    a.wait_for(&two.token, Duration::from_secs(5))
        .await
        .unwrap();
    for n in &nodes {
        n.shutdown().await;
    }
}
