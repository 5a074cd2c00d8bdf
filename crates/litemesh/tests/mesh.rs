//! Nodes over real QUIC with mutual TLS on loopback, in one process.

mod common;
use std::time::Duration;

use common::*;
use litemesh::{Node, Statement, Value};

async fn start_mesh(dir: &tempfile::TempDir, ca: &Ca, n: usize) -> Vec<Node> {
    let first = Node::start(settings(dir, "n0", ca, &[])).await.unwrap();
    let seed = first.local_addr();
    let mut nodes = vec![first];
    for i in 1..n {
        nodes.push(
            Node::start(settings(dir, &format!("n{i}"), ca, &[seed]))
                .await
                .unwrap(),
        );
    }
    eventually(
        Duration::from_secs(20),
        "every node sees every member alive",
        || {
            let ok = nodes.iter().all(|x| alive_count(x) == n);
            async move { ok }
        },
    )
    .await;
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_join_by_seed_and_converge() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let nodes = start_mesh(&dir, &ca, 5).await;
    for (i, node) in nodes.iter().enumerate() {
        for j in 0..20 {
            node.execute(vec![Statement::with_params(
                "INSERT INTO items VALUES (?1, ?2, ?3)",
                vec![
                    Value::Text(format!("{i}-{j}")),
                    Value::Text(format!("n{i}")),
                    Value::Integer(j),
                ],
            )])
            .await
            .unwrap();
        }
        // Everyone also writes the same shared row.
        node.execute(vec![Statement::with_params(
            "INSERT INTO items VALUES ('shared', ?1, 0) ON CONFLICT(id) DO UPDATE SET node = excluded.node",
            vec![Value::Text(format!("n{i}"))],
        )])
        .await
        .unwrap();
    }
    eventually(Duration::from_secs(15), "all five identical", || {
        let nodes = nodes.clone();
        async move { all_identical(&nodes).await }
    })
    .await;
    assert_eq!(dump(&nodes[3]).await.len(), 5 * 20 + 1);
    for n in &nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_reads_on_another_node_are_never_stale() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let nodes = start_mesh(&dir, &ca, 3).await;
    for round in 0..30 {
        let w = &nodes[round % 3];
        let r = &nodes[(round + 1) % 3];
        let done = w
            .execute(vec![Statement::with_params(
                "INSERT INTO items VALUES ('k', 'x', ?1) ON CONFLICT(id) DO UPDATE SET v = excluded.v",
                vec![Value::Integer(round as i64)],
            )])
            .await
            .unwrap();
        let rows = r
            .query(
                "SELECT v FROM items WHERE id = 'k'".into(),
                Some(&done.token),
                Duration::from_secs(10),
            )
            .await
            .unwrap()
            .rows;
        assert_eq!(
            rows,
            vec![vec![Value::Integer(round as i64)]],
            "round {round}"
        );
    }
    for n in &nodes {
        n.shutdown().await;
    }
}
