//! Partitions, offline nodes, late joiners and foreign certificates, over real
//! QUIC on loopback with the transport's fault-injection layer.

mod common;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use litemesh::{FaultHandle, Node, Settings, Statement, Value};

async fn insert(node: &Node, id: String, v: i64) {
    node.execute(vec![Statement::with_params(
        "INSERT INTO items VALUES (?1, ?2, ?3)",
        vec![
            Value::Text(id),
            Value::Text(node.name().into()),
            Value::Integer(v),
        ],
    )])
    .await
    .unwrap();
}

async fn insert_many(node: &Node, prefix: &str, n: usize, per_tx: usize) {
    let mut i = 0;
    while i < n {
        let stmts: Vec<Statement> = (i..(i + per_tx).min(n))
            .map(|k| {
                Statement::with_params(
                    "INSERT INTO items VALUES (?1, ?2, ?3)",
                    vec![
                        Value::Text(format!("{prefix}-{k:06}")),
                        Value::Text(prefix.into()),
                        Value::Integer(k as i64),
                    ],
                )
            })
            .collect();
        node.execute(stmts).await.unwrap();
        i += per_tx;
    }
}

struct Started {
    node: Node,
    faults: FaultHandle,
}

async fn start(dir: &tempfile::TempDir, ca: &Ca, name: &str, seeds: &[SocketAddr]) -> Started {
    let s: Settings = settings(dir, name, ca, seeds);
    let faults = s.faults.clone().unwrap();
    Started {
        node: Node::start(s).await.unwrap(),
        faults,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_with_writes_on_both_sides_heals_and_loses_nothing() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let a = start(&dir, &ca, "a", &[]).await;
    let seed = a.node.local_addr();
    let mut all = vec![a];
    for name in ["b", "c", "d", "e"] {
        all.push(start(&dir, &ca, name, &[seed]).await);
    }
    let nodes: Vec<Node> = all.iter().map(|s| s.node.clone()).collect();
    eventually(Duration::from_secs(20), "all alive", || {
        let ok = nodes.iter().all(|n| alive_count(n) == 5);
        async move { ok }
    })
    .await;
    let (left, right) = all.split_at(2);
    let left_addrs: Vec<SocketAddr> = left.iter().map(|s| s.node.local_addr()).collect();
    let right_addrs: Vec<SocketAddr> = right.iter().map(|s| s.node.local_addr()).collect();
    for s in left {
        s.faults.partition(right_addrs.clone());
    }
    for s in right {
        s.faults.partition(left_addrs.clone());
    }
    // Writes on both sides while apart, acknowledged by their node.
    let mut acked = Vec::new();
    let hold = Instant::now();
    let mut k = 0;
    // Long enough for membership to declare the other side dead (the
    // deterministic simulator covers long and repeated partitions; this is
    // the same over real QUIC).
    while hold.elapsed() < Duration::from_secs(12) {
        for s in &all {
            let id = format!("{}-{k}", s.node.name());
            insert(&s.node, id.clone(), k).await;
            acked.push(id);
        }
        k += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Each side converged internally, and does not have the other side's writes.
    assert!(!all_identical(&[nodes[0].clone(), nodes[4].clone()]).await);
    for s in &all {
        s.faults.heal();
    }
    let took = eventually(Duration::from_secs(20), "identical after heal", || {
        let nodes = nodes.clone();
        async move { all_identical(&nodes).await }
    })
    .await;
    eprintln!(
        "converged {took:?} after healing a 35 s partition ({} acknowledged writes)",
        acked.len()
    );
    let rows = dump(&nodes[2]).await;
    for id in &acked {
        assert!(
            rows.iter().any(|r| r[0] == Value::Text(id.clone())),
            "acknowledged write {id} lost"
        );
    }
    for n in &nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_offline_during_writes_catches_up_when_back() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let a = start(&dir, &ca, "a", &[]).await;
    let seed = a.node.local_addr();
    let b = start(&dir, &ca, "b", &[seed]).await;
    let c = start(&dir, &ca, "c", &[seed]).await;
    eventually(Duration::from_secs(20), "all alive", || {
        let ok = alive_count(&c.node) == 3;
        async move { ok }
    })
    .await;
    c.node.shutdown().await;
    insert_many(&a.node, "while-away", 10_000, 1_000).await;
    insert_many(&b.node, "b-side", 100, 10).await;
    // c comes back on the same file (a new process would get a new port).
    let back = Node::start(settings(&dir, "c", &ca, &[seed]))
        .await
        .unwrap();
    let nodes = vec![a.node.clone(), b.node.clone(), back.clone()];
    let took = eventually(Duration::from_secs(60), "c caught up", || {
        let nodes = nodes.clone();
        async move { all_identical(&nodes).await }
    })
    .await;
    eprintln!("offline node caught up on 10,100 rows in {took:?}");
    assert_eq!(dump(&back).await.len(), 10_100);
    for n in &nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_catches_up_and_never_shows_half_a_transaction() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let a = start(&dir, &ca, "a", &[]).await;
    let seed = a.node.local_addr();
    // 100,000 rows: one transaction of 20,000 (replicated in chunks, applied
    // atomically) and 80 transactions of 1,000.
    insert_many(&a.node, "big", 20_000, 20_000).await;
    insert_many(&a.node, "small", 80_000, 1_000).await;
    let late = start(&dir, &ca, "late", &[seed]).await;
    let nodes = vec![a.node.clone(), late.node.clone()];
    let started = Instant::now();
    loop {
        // The big transaction is visible entirely or not at all.
        let big = late
            .node
            .query(
                "SELECT count(*) FROM items WHERE node = 'big'".into(),
                None,
                Duration::ZERO,
            )
            .await
            .unwrap()
            .rows[0][0]
            .clone();
        assert!(
            big == Value::Integer(0) || big == Value::Integer(20_000),
            "half a transaction visible: {big:?}"
        );
        if all_identical(&nodes).await {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "late joiner did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!(
        "late joiner caught up on 100,000 rows in {:?} (debug build)",
        started.elapsed()
    );
    for n in &nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_a_certificate_from_another_ca_is_refused() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let other = Ca::new();
    let a = start(&dir, &ca, "a", &[]).await;
    let seed = a.node.local_addr();
    let intruder = start(&dir, &other, "intruder", &[seed]).await;
    let friend = start(&dir, &ca, "friend", &[seed]).await;
    eventually(Duration::from_secs(20), "the friend joins", || {
        let ok = alive_count(&a.node) == 2 && alive_count(&friend.node) == 2;
        async move { ok }
    })
    .await;
    intruder
        .node
        .execute(vec!["INSERT INTO items VALUES ('evil', 'x', 1)".into()])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(alive_count(&intruder.node), 1, "the intruder is alone");
    assert!(a.node.members().iter().all(|m| m.name != "intruder"));
    assert!(
        dump(&a.node).await.is_empty(),
        "nothing from the intruder replicated"
    );
    for n in [&a.node, &intruder.node, &friend.node] {
        n.shutdown().await;
    }
}
