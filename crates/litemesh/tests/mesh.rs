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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transactions_share_commits_and_each_keeps_its_own_version() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let nodes = start_mesh(&dir, &ca, 3).await;
    nodes[0]
        .execute(vec!["INSERT INTO items VALUES ('taken', 'n0', 0)".into()])
        .await
        .unwrap();
    // 64 clients at once; every eighth one fails on its second statement.
    let mut tasks = Vec::new();
    for i in 0..64i64 {
        let node = nodes[0].clone();
        tasks.push(tokio::spawn(async move {
            let second = if i % 8 == 7 {
                "INSERT INTO items VALUES ('taken', 'dup', 0)".to_string()
            } else {
                format!("UPDATE items SET v = v + 1 WHERE id = 'c{i}'")
            };
            node.execute(vec![
                Statement::with_params(
                    "INSERT INTO items VALUES (?1, 'n0', 0)",
                    vec![Value::Text(format!("c{i}"))],
                ),
                second.as_str().into(),
            ])
            .await
        }));
    }
    let mut versions = Vec::new();
    let mut tokens = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await.unwrap() {
            Ok(done) => {
                assert_ne!(i % 8, 7, "client {i} should have failed");
                assert_eq!(done.rows_affected, vec![1, 1]);
                versions.push(done.version);
                tokens.push(done.token);
            }
            Err(e) => {
                assert_eq!(i % 8, 7, "client {i} failed: {e}");
                assert!(e.to_string().contains("UNIQUE"), "{e}");
            }
        }
    }
    // One version each, dense after the first write's.
    versions.sort();
    assert_eq!(versions, (2..=57).collect::<Vec<u64>>());
    let st = nodes[0].status().await.unwrap();
    assert_eq!(st.transactions_committed, 57);
    assert!(
        st.commit_groups < st.transactions_committed,
        "concurrent transactions shared commits: {} commits for {}",
        st.commit_groups,
        st.transactions_committed
    );
    // Every token is honoured on the other nodes, and they converge on
    // exactly the committed transactions.
    for t in &tokens {
        for n in &nodes[1..] {
            n.wait_for(t, Duration::from_secs(15)).await.unwrap();
        }
    }
    eventually(Duration::from_secs(15), "all three identical", || {
        let nodes = nodes.clone();
        async move { all_identical(&nodes).await }
    })
    .await;
    let rows = dump(&nodes[2]).await;
    assert_eq!(rows.len(), 1 + 56);
    assert!(
        rows.iter()
            .all(|r| r[0] == Value::Text("taken".into()) || r[2] == Value::Integer(1))
    );
    // The mesh is small enough for direct delivery: no relays, so every
    // broadcast a node received taught it something.
    for n in &nodes[1..] {
        assert_eq!(n.status().await.unwrap().broadcasts_known, 0);
    }
    for n in &nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_answered_ok_at_shutdown_is_in_the_file() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let node = Node::start(settings(&dir, "n0", &ca, &[])).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..400i64 {
        let node = node.clone();
        tasks.push(tokio::spawn(async move {
            if i == 200 {
                node.shutdown().await;
            }
            let res = node
                .execute(vec![Statement::with_params(
                    "INSERT INTO items VALUES (?1, 'n0', ?2)",
                    vec![Value::Text(format!("k{i}")), Value::Integer(i)],
                )])
                .await;
            (i, res)
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            (i, Ok(_)) => acked.push(i),
            // Every refusal says why: the node is shutting down (an HTTP
            // 503), never a fault of the request nor an internal error.
            (i, Err(e)) => assert!(
                matches!(
                    e,
                    litemesh::Error::ShuttingDown
                        | litemesh::Error::Storage(litemesh_storage::StorageError::Interrupted(
                            litemesh_storage::Interruption::ShuttingDown
                        ))
                ),
                "k{i}: {e:?}"
            ),
        }
    }
    node.shutdown().await;
    // A write after the shutdown is refused as such.
    let late = node
        .execute(vec![Statement::with_params(
            "INSERT INTO items VALUES ('late', 'n0', 0)",
            vec![],
        )])
        .await;
    assert!(
        matches!(late, Err(litemesh::Error::ShuttingDown)),
        "{late:?}"
    );
    let store = litemesh_storage::Store::open(dir.path().join("n0.db")).unwrap();
    for i in &acked {
        let n: i64 = store
            .connection()
            .query_row(
                "SELECT count(*) FROM items WHERE id = ?1",
                [format!("k{i}")],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 1, "k{i} was acknowledged but is not in the file");
    }
    // Tasks run concurrently: how many of those spawned after the one that
    // shut the node down got in first depends on scheduling, but not all.
    assert!(
        acked.len() < 400,
        "the writes after the shutdown were refused"
    );
}
