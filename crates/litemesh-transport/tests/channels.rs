//! The three channels between two healthy nodes, identities and lifecycle.

mod common;

use std::time::{Duration, Instant};

use common::{Ca, MESH, Node, Seen, assert_echo, config, init_tracing};
use litemesh_transport::{Bytes, Error, MeshIdentity, generate_node_cert, generate_node_cert_in};

#[tokio::test]
async fn datagram_uni_and_streamed_response() {
    init_tracing();
    let ca = Ca::new("test CA");
    let a = Node::start(config(MESH), &ca.identity("node-a"), None);
    let mut b = Node::start(config(MESH), &ca.identity("node-b"), None);

    // Datagram (the first send also establishes the connection).
    a.transport
        .send_datagram(b.addr(), Bytes::from_static(b"hello datagram"))
        .await
        .unwrap();
    assert_eq!(
        b.next_seen(5).await,
        Seen::Datagram(a.addr(), Bytes::from_static(b"hello datagram"))
    );

    // Uni message, bigger than a packet.
    let big = Bytes::from(vec![7u8; 300_000]);
    a.transport.send_uni(b.addr(), big.clone()).await.unwrap();
    assert_eq!(b.next_seen(5).await, Seen::Uni(a.addr(), big));

    // Request with several response frames streamed back.
    let mut response = a
        .transport
        .request(b.addr(), Bytes::from_static(b"count:5:70000"))
        .await
        .unwrap();
    let mut frames = Vec::new();
    while let Some(frame) = response.next().await.unwrap() {
        frames.push(frame);
    }
    assert_eq!(frames.len(), 5);
    for (i, frame) in frames.iter().enumerate() {
        assert_eq!(frame.len(), 70000);
        assert!(frame.iter().all(|&x| x == i as u8));
    }
    assert!(matches!(b.next_seen(5).await, Seen::Request(from, _) if from == a.addr()));

    // Empty response and empty messages are fine.
    let frames = a
        .transport
        .request(b.addr(), Bytes::from_static(b"count:0:0"))
        .await
        .unwrap()
        .collect(10)
        .await
        .unwrap();
    assert!(frames.is_empty());
    a.transport.send_uni(b.addr(), Bytes::new()).await.unwrap();

    // Peer certificate names, both ways.
    assert_eq!(a.transport.peer_name(b.addr()).as_deref(), Some("node-b"));
    assert_eq!(b.transport.peer_name(a.addr()).as_deref(), Some("node-a"));

    // The reverse direction reuses B's accepted connection.
    assert_echo(&b.transport, a.addr()).await;
    assert_eq!(a.transport.connected_peers(), vec![b.addr()]);
    assert_eq!(b.transport.connected_peers(), vec![a.addr()]);

    a.transport.close().await;
    b.transport.close().await;
    assert!(matches!(
        a.transport.send_uni(b.addr(), Bytes::new()).await,
        Err(Error::Closed)
    ));
}

#[tokio::test]
async fn many_concurrent_requests_share_one_connection() {
    init_tracing();
    let ca = Ca::new("test CA");
    let a = Node::start(config(MESH), &ca.identity("a"), None);
    let b = Node::start(config(MESH), &ca.identity("b"), None);
    let mut tasks = Vec::new();
    // More than max_concurrent_requests (64): the excess waits for stream credit.
    for i in 0..100 {
        let t = a.transport.clone();
        let to = b.addr();
        tasks.push(tokio::spawn(async move {
            common::echo(&t, to, &format!("req {i}"), Duration::from_secs(10)).await
        }));
    }
    for (i, task) in tasks.into_iter().enumerate() {
        let frames = task.await.unwrap().unwrap();
        assert_eq!(frames, vec![Bytes::from(format!("req {i}"))]);
    }
    assert_eq!(a.transport.connected_peers().len(), 1);
}

#[tokio::test]
async fn a_peers_region_is_the_one_its_certificate_certifies() {
    init_tracing();
    let ca = Ca::new("region CA");
    let identity = |name: &str, region: Option<&str>| {
        let (cert, key) = generate_node_cert_in(&ca.cert, &ca.key, name, region).unwrap();
        MeshIdentity::from_pem(ca.cert.as_bytes(), cert.as_bytes(), key.as_bytes()).unwrap()
    };
    let eu = identity("in-eu", Some("eu-west"));
    assert_eq!(eu.region().unwrap().as_deref(), Some("eu-west"));
    let none = identity("nowhere", None);
    assert_eq!(none.region().unwrap(), None);
    let a = Node::start(config(MESH), &eu, None);
    let b = Node::start(config(MESH), &none, None);
    // Not connected yet: nothing known.
    assert_eq!(b.transport.peer_region(a.addr()), None);
    assert_echo(&b.transport, a.addr()).await;
    assert_eq!(
        b.transport.peer_region(a.addr()),
        Some(Some("eu-west".to_string()))
    );
    assert_eq!(a.transport.peer_region(b.addr()), Some(None));
    // Region names are checked where certificates are made.
    for bad in ["", "a b", "eu/west", &"x".repeat(65)] {
        assert!(
            generate_node_cert_in(&ca.cert, &ca.key, "n", Some(bad)).is_err(),
            "{bad:?}"
        );
    }
}

#[tokio::test]
async fn pem_files_and_insecure_mode() {
    init_tracing();
    let ca = Ca::new("file CA");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = generate_node_cert(&ca.cert, &ca.key, "file-node").unwrap();
    std::fs::write(dir.path().join("ca.pem"), &ca.cert).unwrap();
    std::fs::write(dir.path().join("node.pem"), &cert).unwrap();
    std::fs::write(dir.path().join("node.key"), &key).unwrap();
    let id = MeshIdentity::from_pem_files(
        dir.path().join("ca.pem"),
        dir.path().join("node.pem"),
        dir.path().join("node.key"),
    )
    .unwrap();
    assert!(!id.is_insecure());
    let a = Node::start(config(MESH), &id, None);
    let b = Node::start(config(MESH), &ca.identity("b"), None);
    assert_echo(&a.transport, b.addr()).await;
    assert_eq!(
        b.transport.peer_name(a.addr()).as_deref(),
        Some("file-node")
    );

    // Bad PEM input is an error, not a panic.
    assert!(matches!(
        MeshIdentity::from_pem(b"junk", cert.as_bytes(), key.as_bytes()),
        Err(Error::Tls(_))
    ));
    assert!(MeshIdentity::from_pem_files("/nonexistent/ca", "/x", "/y").is_err());

    // Insecure nodes talk to each other (encrypted, unauthenticated).
    let insecure = MeshIdentity::insecure().unwrap();
    assert!(insecure.is_insecure());
    let x = Node::start(config(MESH), &insecure, None);
    let mut y = Node::start(config(MESH), &MeshIdentity::insecure().unwrap(), None);
    assert_echo(&x.transport, y.addr()).await;
    x.transport
        .send_uni(y.addr(), Bytes::from_static(b"u"))
        .await
        .unwrap();
    assert!(matches!(y.next_seen(5).await, Seen::Request(..)));
    assert_eq!(
        y.next_seen(5).await,
        Seen::Uni(x.addr(), Bytes::from_static(b"u"))
    );
    assert_eq!(x.transport.peer_name(y.addr()), None);
}

#[tokio::test]
async fn config_is_validated() {
    let ca = Ca::new("test CA");
    let id = ca.identity("n");
    for mesh in ["", "has space", "ümlaut"] {
        let r = litemesh_transport::Transport::bind(config(mesh), &id, None);
        assert!(matches!(r, Err(Error::Config(_))), "mesh id {mesh:?}");
    }
    let mut c = config(MESH);
    c.idle_timeout = c.keep_alive;
    assert!(matches!(
        litemesh_transport::Transport::bind(c, &id, None),
        Err(Error::Config(_))
    ));
    let mut c = config(MESH);
    c.max_frame = 0;
    assert!(litemesh_transport::Transport::bind(c, &id, None).is_err());
}

#[tokio::test]
async fn closed_peer_is_detected_and_redialled() {
    init_tracing();
    let ca = Ca::new("test CA");
    let a = Node::start(config(MESH), &ca.identity("a"), None);
    let b = Node::start(config(MESH), &ca.identity("b"), None);
    let b_addr = b.addr();
    assert_echo(&a.transport, b_addr).await;
    b.transport.close().await;
    drop(b);
    // A notices the close and evicts the connection.
    let start = Instant::now();
    while !a.transport.connected_peers().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "close not noticed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A new node on the same address is reachable at once.
    let mut c = config(MESH);
    c.listen = b_addr;
    // (The old socket is released once quinn's tasks have wound down.)
    let id = ca.identity("b2");
    let start = Instant::now();
    let b2 = loop {
        match litemesh_transport::Transport::bind(c.clone(), &id, None) {
            Ok((transport, incoming)) => {
                break Node {
                    transport,
                    seen: common::serve(incoming),
                };
            }
            Err(e) => {
                assert!(
                    start.elapsed() < Duration::from_secs(5),
                    "rebind failed: {e}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert_echo(&a.transport, b2.addr()).await;
    assert_eq!(a.transport.peer_name(b_addr).as_deref(), Some("b2"));
}

#[tokio::test]
async fn crashed_and_restarted_peer_is_detected_by_stateless_reset() {
    init_tracing();
    let ca = Ca::new("test CA");
    // Long idle timeout: detection below must come from the stateless reset.
    let mut slow = config(MESH);
    slow.idle_timeout = Duration::from_secs(30);
    let a = Node::start(slow.clone(), &ca.identity("a"), None);
    let b_id = ca.identity("b");
    let faults = litemesh_transport::FaultHandle::new();
    let b = Node::start(slow.clone(), &b_id, Some(faults.clone()));
    let b_addr = b.addr();
    assert_echo(&a.transport, b_addr).await;

    // "Crash": B goes silent (its goodbye is lost) and disappears.
    faults.set_drop_probability(1.0);
    b.transport.close().await;
    drop(b);
    assert_eq!(a.transport.connected_peers(), vec![b_addr]);

    // B restarts on the same address with the same identity.
    let mut c = slow.clone();
    c.listen = b_addr;
    let start = Instant::now();
    let _b2 = loop {
        match litemesh_transport::Transport::bind(c.clone(), &b_id, None) {
            Ok((transport, incoming)) => {
                break Node {
                    transport,
                    seen: common::serve(incoming),
                };
            }
            Err(e) => {
                assert!(
                    start.elapsed() < Duration::from_secs(5),
                    "rebind failed: {e}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    // A's next keep-alive is answered with a stateless reset.
    let restarted = Instant::now();
    while !a.transport.connected_peers().is_empty() {
        assert!(
            restarted.elapsed() < Duration::from_secs(5),
            "stale connection not reset"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("stale connection reset after {:?}", restarted.elapsed());
    assert_echo(&a.transport, b_addr).await;
}

#[tokio::test]
async fn datagram_limit_and_end_of_events() {
    init_tracing();
    let ca = Ca::new("test CA");
    let (a, mut a_events) =
        litemesh_transport::Transport::bind(config(MESH), &ca.identity("a"), None).unwrap();
    let mut b = Node::start(config(MESH), &ca.identity("b"), None);
    assert_eq!(a.max_datagram_size(b.addr()), None);
    a.send_datagram(b.addr(), Bytes::from_static(b"x"))
        .await
        .unwrap();
    let max = a.max_datagram_size(b.addr()).unwrap();
    eprintln!("datagram limit on loopback: {max}");
    assert!((1000..=65_535).contains(&max), "{max}");
    a.send_datagram(b.addr(), Bytes::from(vec![9u8; max]))
        .await
        .unwrap();
    loop {
        match b.next_seen(5).await {
            Seen::Datagram(_, bytes) if bytes.len() == max => break,
            _ => continue,
        }
    }
    // One byte over the limit is refused. (Path-MTU discovery may raise the
    // limit meanwhile: read it again just before, and retry if it grew.)
    let mut refused = false;
    for _ in 0..10 {
        let now = a.max_datagram_size(b.addr()).unwrap();
        match a
            .send_datagram(b.addr(), Bytes::from(vec![9u8; now + 1]))
            .await
        {
            Err(Error::DatagramTooLarge { .. }) => {
                refused = true;
                break;
            }
            Ok(()) => assert!(
                a.max_datagram_size(b.addr()).unwrap() > now,
                "a datagram over the limit was sent"
            ),
            Err(e) => panic!("{e}"),
        }
    }
    assert!(refused);

    // B sends A something nobody reads yet, then A closes: its event stream
    // yields what was queued and ends.
    b.transport
        .send_uni(a.local_addr(), Bytes::from_static(b"queued"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    a.close().await;
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(event) = a_events.recv().await {
            drop(event);
        }
    })
    .await;
    assert!(end.is_ok(), "event stream did not end after close");
}
