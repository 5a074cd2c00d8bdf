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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_status_and_graceful_leave() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let nodes = start_mesh(&dir, &ca, 3).await;
    let mut remote = nodes[1].subscribe(&["items"]);
    let mut local = nodes[0].subscribe(&[]);
    let done = nodes[0]
        .execute(vec!["INSERT INTO items VALUES ('s', 'n0', 1)".into()])
        .await
        .unwrap();
    assert_eq!(done.rows_affected, vec![1]);
    assert_eq!(done.version, 1);
    let ev = tokio::time::timeout(Duration::from_secs(10), local.next())
        .await
        .unwrap()
        .unwrap();
    assert!(ev.local && ev.tables.contains("items"));
    let ev = tokio::time::timeout(Duration::from_secs(10), remote.next())
        .await
        .unwrap()
        .unwrap();
    assert!(!ev.local && ev.tables.contains("items"));

    // Status: versions held and replication peers.
    nodes[1]
        .wait_for(&done.token, Duration::from_secs(10))
        .await
        .unwrap();
    let st = nodes[1].status().await.unwrap();
    assert_eq!(st.version_vector.get(&nodes[0].actor_id()), Some(&1));
    assert_eq!(
        st.complete_through.get(&nodes[0].actor_id()),
        Some(&1),
        "version 1 held, no gap"
    );
    assert_eq!(st.peers.len(), 2);
    assert_eq!(st.db_version, 0, "n1 wrote nothing itself");

    // A read-only check on queries, and a bad statement changes nothing.
    let err = nodes[1]
        .query("DELETE FROM items".into(), None, Duration::ZERO)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("read-only"), "{err}");
    assert!(matches!(
        err,
        litemesh::Error::Storage(litemesh::StorageError::Refused(_))
    ));
    let err = nodes[1]
        .execute(vec![
            "INSERT INTO items VALUES ('t', 'n1', 1)".into(),
            "INSERT INTO nope VALUES (1)".into(),
        ])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no such table"), "{err}");
    assert_eq!(
        dump(&nodes[1]).await.len(),
        1,
        "the failed transaction applied nothing"
    );

    // A graceful leave is seen as "left", not as a failure.
    nodes[2].shutdown().await;
    eventually(Duration::from_secs(5), "the others see n2 as left", || {
        let ok = nodes[..2].iter().all(|n| {
            n.members()
                .iter()
                .any(|m| m.name == "n2" && m.state == litemesh::MemberState::Left)
        });
        async move { ok }
    })
    .await;
    for n in &nodes[..2] {
        n.shutdown().await;
    }
}
