//! Regions bound to certificates, read levels (bounded staleness, fallback
//! to the nearest peer) and write acknowledgement levels, over real QUIC on
//! loopback with the transport's fault-injection layer.

mod common;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use litemesh::{
    Ack, Error, Fallback, FaultHandle, Node, QueryOptions, Settings, Statement, Token, Value,
};

fn insert(id: &str) -> Vec<Statement> {
    vec![Statement::with_params(
        "INSERT INTO items VALUES (?1, 'x', 1)",
        vec![Value::Text(id.into())],
    )]
}

struct Mesh {
    nodes: Vec<Node>,
    faults: Vec<FaultHandle>,
    addrs: Vec<SocketAddr>,
}

/// Starts one node per `(name, region)`, the first as the seed, and waits
/// until every node sees every other alive.
async fn mesh(
    dir: &tempfile::TempDir,
    ca: &Ca,
    spec: &[(&str, Option<&str>)],
    tweak: impl Fn(&str, &mut Settings),
) -> Mesh {
    let mut m = Mesh {
        nodes: Vec::new(),
        faults: Vec::new(),
        addrs: Vec::new(),
    };
    for (name, region) in spec {
        let mut s = settings(dir, name, ca, &m.addrs[..m.addrs.len().min(1)]);
        s.tls = ca.tls_in(name, *region);
        tweak(name, &mut s);
        m.faults.push(s.faults.clone().unwrap());
        let node = Node::start(s).await.unwrap();
        m.addrs.push(node.local_addr());
        m.nodes.push(node);
    }
    let n = m.nodes.len();
    for node in &m.nodes {
        eventually(Duration::from_secs(15), "everyone alive", || async {
            alive_count(node) == n
        })
        .await;
    }
    m
}

fn query(sql: &str) -> Statement {
    Statement::from(sql)
}

async fn rows(node: &Node, opts: QueryOptions) -> Result<(Vec<Vec<Value>>, Option<String>), Error> {
    let mut r = node
        .query_rows(query("SELECT id FROM items ORDER BY id"), opts)
        .await?;
    let mut out = Vec::new();
    while let Some(row) = r.next().await {
        out.push(row?);
    }
    Ok((out, r.served_by().map(str::to_string)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_region_is_the_certificates_and_a_contradicting_one_is_refused() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    // A certificate of region eu, and the node claims us: refused.
    let mut s = settings(&dir, "a", &ca, &[]);
    s.tls = ca.tls_in("a", Some("eu"));
    s.region = Some("us".into());
    let e = Node::start(s).await.unwrap_err().to_string();
    assert!(e.contains("contradicts") && e.contains("\"eu\""), "{e}");
    // A certificate without a region, and the node claims one: refused too.
    let mut s = settings(&dir, "b", &ca, &[]);
    s.region = Some("eu".into());
    let e = Node::start(s).await.unwrap_err().to_string();
    assert!(e.contains("not certified"), "{e}");
    // A region that is no region name.
    let mut s = settings(&dir, "c", &ca, &[]);
    s.tls = ca.tls_in("c", Some("eu"));
    s.region = Some("eu west".into());
    assert!(Node::start(s).await.is_err());
    // No --region: the certificate's. The same one: fine.
    for claim in [None, Some("eu")] {
        let mut s = settings(&dir, "d", &ca, &[]);
        s.tls = ca.tls_in("d", Some("eu"));
        s.region = claim.map(str::to_string);
        let node = Node::start(s).await.unwrap();
        assert_eq!(node.status().await.unwrap().region.as_deref(), Some("eu"));
        node.shutdown().await;
    }
    // Insecure meshes certify nothing: the region is what the node says.
    let mut s = settings(&dir, "e", &ca, &[]);
    s.tls = litemesh::Tls::Insecure;
    s.region = Some("ap".into());
    let node = Node::start(s).await.unwrap();
    assert_eq!(node.status().await.unwrap().region.as_deref(), Some("ap"));
    node.shutdown().await;
    // The certificate tool refuses a bad region name.
    assert!(
        litemesh_transport::generate_node_cert_in(&ca.cert, &ca.key, "f", Some("a/b")).is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_status_and_write_acknowledgements_by_region() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let m = mesh(
        &dir,
        &ca,
        &[("a", Some("eu")), ("b", Some("eu")), ("c", Some("us"))],
        |_, _| {},
    )
    .await;
    let a = &m.nodes[0];
    // Regions as certified, grouped in status.
    eventually(Duration::from_secs(10), "regions known", || async {
        let s = a.status().await.unwrap();
        let by: Vec<(Option<String>, usize, usize)> = s
            .regions
            .iter()
            .map(|r| (r.region.clone(), r.members, r.reachable))
            .collect();
        by == vec![(Some("eu".into()), 2, 2), (Some("us".into()), 1, 1)]
    })
    .await;
    let regions: Vec<(String, Option<String>)> = a
        .members()
        .into_iter()
        .map(|x| (x.name, x.region))
        .collect();
    assert!(
        regions.contains(&("c".into(), Some("us".into()))),
        "{regions:?}"
    );

    let wait = Duration::from_secs(5);
    // ack=2: both others hold it when the answer comes.
    let (done, r) = a
        .execute_acked(insert("k1"), &Ack::Nodes(2), wait)
        .await
        .unwrap();
    assert!(r.reached, "{r:?}");
    let mut names: Vec<&str> = r.confirmed.iter().map(|(n, _)| n.as_str()).collect();
    names.sort();
    assert_eq!(names, ["b", "c"]);
    for n in &m.nodes[1..] {
        // Held: a token read with no wait at all succeeds.
        n.wait_for(&done.token, Duration::ZERO).await.unwrap();
    }
    // ack=region: another node of eu.
    let (_, r) = a
        .execute_acked(insert("k2"), &Ack::Region, wait)
        .await
        .unwrap();
    assert!(r.reached, "{r:?}");
    assert!(
        r.confirmed.contains(&("b".into(), Some("eu".into()))),
        "{r:?}"
    );
    // ack=regions: a node of every other region (us).
    let (_, r) = a
        .execute_acked(insert("k3"), &Ack::Regions, wait)
        .await
        .unwrap();
    assert!(r.reached, "{r:?}");
    assert!(
        r.confirmed.contains(&("c".into(), Some("us".into()))),
        "{r:?}"
    );

    // Cut us off: ack=regions times out, says what is missing, and the write
    // stays committed.
    m.faults[2].partition(m.addrs[..2].to_vec());
    m.faults[0].partition([m.addrs[2]]);
    m.faults[1].partition([m.addrs[2]]);
    let t = std::time::Instant::now();
    let (done, r) = a
        .execute_acked(insert("k4"), &Ack::Regions, Duration::from_millis(700))
        .await
        .unwrap();
    assert!(!r.reached, "{r:?}");
    assert_eq!(r.missing, vec!["region us".to_string()]);
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    a.wait_for(&done.token, Duration::ZERO).await.unwrap();
    // ack=region is still reached inside eu.
    let (_, r) = a
        .execute_acked(insert("k5"), &Ack::Region, Duration::from_secs(3))
        .await
        .unwrap();
    assert!(r.reached, "{r:?}");
    // The lag of the cut-off region shows on a, per region.
    eventually(Duration::from_secs(15), "us lagging on a", || async {
        let s = a.status().await.unwrap();
        s.regions
            .iter()
            .any(|r| r.region.as_deref() == Some("us") && r.reachable == 0)
    })
    .await;
    for f in &m.faults {
        f.heal();
    }
    eventually(Duration::from_secs(20), "identical after heal", || {
        all_identical(&m.nodes)
    })
    .await;
    for n in &m.nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_levels_fall_back_to_the_nearest_peer_that_satisfies_them() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    // c gets a's writes only by broadcast from a (no anti-entropy, no gap
    // pulls, no relays): cut from a, it falls behind while b stays current.
    let m = mesh(
        &dir,
        &ca,
        &[("a", None), ("b", None), ("c", None)],
        |name, s| {
            s.sync.relay_hops = 0;
            if name == "c" {
                s.sync.sync_interval = Duration::from_secs(3600);
                s.sync.gap_pull_threshold = u64::MAX;
            }
        },
    )
    .await;
    let (a, b, c) = (&m.nodes[0], &m.nodes[1], &m.nodes[2]);
    m.faults[0].partition([m.addrs[2]]);
    m.faults[2].partition([m.addrs[0]]);
    let mut token = Token::default();
    for i in 0..5 {
        let (done, r) = a
            .execute_acked(
                insert(&format!("w{i}")),
                &Ack::Nodes(1),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert!(r.reached && r.confirmed[0].0 == "b", "{r:?}");
        token.merge(&done.token);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        c.wait_for(&token, Duration::ZERO).await.is_err(),
        "c must lack a's writes"
    );

    // min_token: c cannot, and says so; with the fallback, b serves.
    let level = QueryOptions {
        min_token: Some(token.clone()),
        wait: Duration::from_millis(200),
        ..QueryOptions::default()
    };
    match rows(c, level.clone()).await {
        Err(Error::Lagging { .. }) => {}
        other => panic!("expected Lagging, got {other:?}"),
    }
    let (got, served_by) = rows(
        c,
        QueryOptions {
            fallback: Fallback::Nearest,
            ..level.clone()
        },
    )
    .await
    .unwrap();
    assert_eq!(served_by.as_deref(), Some("b"));
    assert_eq!(got.len(), 5);

    // max_lag: c has heard a's heads (gossip through b) and lacks them.
    let stale = QueryOptions {
        max_lag: Some(Duration::from_millis(300)),
        wait: Duration::ZERO,
        ..QueryOptions::default()
    };
    eventually(Duration::from_secs(10), "c stale", || async {
        matches!(rows(c, stale.clone()).await, Err(Error::Stale { .. }))
    })
    .await;
    let (got, served_by) = rows(
        c,
        QueryOptions {
            fallback: Fallback::Nearest,
            wait: Duration::from_millis(400),
            ..stale.clone()
        },
    )
    .await
    .unwrap();
    assert_eq!(served_by.as_deref(), Some("b"));
    assert_eq!(got.len(), 5);
    // b itself serves the level locally.
    let (_, served_by) = rows(b, stale.clone()).await.unwrap();
    assert_eq!(served_by, None);
    // A bad statement is not forwarded: its error is the node's.
    let bad = c
        .query_rows(
            query("SELECT nope FROM items"),
            QueryOptions {
                fallback: Fallback::Nearest,
                ..level.clone()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&bad, Error::PeerRefused { peer, status: 400, .. } if peer == "b"),
        "{bad:?}"
    );
    assert!(bad.to_string().contains("nope"), "{bad}");
    // ack=region on a node with no region: refused before anything is
    // written.
    let e = a
        .execute_acked(insert("nowhere"), &Ack::Region, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::BadLevel(_)), "{e:?}");
    let (all, _) = rows(a, QueryOptions::default()).await.unwrap();
    assert!(!all.contains(&vec![Value::Text("nowhere".into())]));
    // Nobody reachable satisfies it: a clear error naming who was tried.
    m.faults[2].partition(m.addrs[..2].to_vec());
    m.faults[1].partition([m.addrs[2]]);
    let e = rows(
        c,
        QueryOptions {
            fallback: Fallback::Nearest,
            ..level.clone()
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(e, Error::NoReplica(_)), "{e:?}");
    assert!(e.to_string().contains("c (this node)"), "{e}");
    for n in &m.nodes {
        n.shutdown().await;
    }
}
