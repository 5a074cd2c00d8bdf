//! The fault-injection layer: partitions, loss, delay, seen by real QUIC.

mod common;

use std::time::{Duration, Instant};

use common::{Ca, MESH, Node, Seen, assert_echo, config, echo, init_tracing};
use litemesh_transport::{Bytes, FaultHandle};

#[tokio::test]
async fn partition_heals_without_waiting_for_a_long_timeout() {
    init_tracing();
    let ca = Ca::new("mesh CA");
    let fa = FaultHandle::new();
    let fb = FaultHandle::new();
    let a = Node::start(config(MESH), &ca.identity("a"), Some(fa.clone()));
    let mut b = Node::start(config(MESH), &ca.identity("b"), Some(fb.clone()));
    assert_echo(&a.transport, b.addr()).await;

    // Cut A off from B (A's handle blocks both directions).
    fa.partition([b.addr()]);
    assert!(fa.is_blocked(b.addr()));
    assert!(
        echo(&a.transport, b.addr(), "lost", Duration::from_millis(800))
            .await
            .is_err()
    );
    let _ = a
        .transport
        .send_uni(b.addr(), Bytes::from_static(b"lost"))
        .await;

    // Both sides detect the dead connection within the idle timeout (2 s)
    // and evict it.
    let start = Instant::now();
    while !a.transport.connected_peers().is_empty() || !b.transport.connected_peers().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "dead connection not detected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Dialling during the partition fails.
    assert!(
        echo(&a.transport, b.addr(), "lost", Duration::from_millis(800))
            .await
            .is_err()
    );
    assert!(fa.dropped() > 0);

    // Heal and measure how long until A reaches B again, retrying like a
    // gossip loop would.
    fa.heal();
    let healed = Instant::now();
    loop {
        if echo(&a.transport, b.addr(), "back", Duration::from_millis(500))
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            healed.elapsed() < Duration::from_secs(5),
            "no reconnection after heal"
        );
    }
    let took = healed.elapsed();
    eprintln!("reconnected {took:?} after heal");
    assert!(took < Duration::from_secs(5));

    // Nothing sent during the partition arrived; new messages do.
    a.transport
        .send_uni(b.addr(), Bytes::from_static(b"after"))
        .await
        .unwrap();
    loop {
        match b.next_seen(5).await {
            Seen::Uni(_, bytes) => {
                assert_eq!(&bytes[..], b"after");
                break;
            }
            Seen::Request(_, bytes) => assert_ne!(&bytes[..], b"lost"),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn short_partition_keeps_or_restores_the_connection() {
    init_tracing();
    let ca = Ca::new("mesh CA");
    let faults = FaultHandle::new();
    let a = Node::start(config(MESH), &ca.identity("a"), Some(faults.clone()));
    let b = Node::start(config(MESH), &ca.identity("b"), None);
    assert_echo(&a.transport, b.addr()).await;
    // Partition shorter than the idle timeout, with a request in flight.
    faults.partition([b.addr()]);
    let t = a.transport.clone();
    let to = b.addr();
    let in_flight =
        tokio::spawn(async move { echo(&t, to, "in flight", Duration::from_secs(10)).await });
    tokio::time::sleep(Duration::from_millis(700)).await;
    faults.heal_peer(b.addr());
    assert!(!faults.is_blocked(b.addr()));
    let healed = Instant::now();
    // The in-flight request either completes by retransmission or fails with
    // the connection; either way a fresh request gets through promptly.
    let _ = in_flight.await.unwrap();
    loop {
        if echo(&a.transport, b.addr(), "ping", Duration::from_millis(500))
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            healed.elapsed() < Duration::from_secs(5),
            "no recovery after heal"
        );
    }
    eprintln!("recovered {:?} after heal", healed.elapsed());
}

#[tokio::test]
async fn reliable_streams_survive_random_loss() {
    init_tracing();
    let ca = Ca::new("mesh CA");
    // A drops 20% of the packets it sends and 20% of those it receives:
    // every packet between A and B, data or ack, has a 20% chance of loss.
    let faults = FaultHandle::new();
    faults.set_drop_probability(0.2);
    let mut cfg = config(MESH);
    cfg.idle_timeout = Duration::from_secs(5);
    cfg.connect_timeout = Duration::from_secs(10);
    let a = Node::start(cfg.clone(), &ca.identity("a"), Some(faults.clone()));
    let mut b = Node::start(cfg, &ca.identity("b"), None);

    let start = Instant::now();
    for i in 0..20u8 {
        a.transport
            .send_uni(b.addr(), Bytes::from(vec![i; 8_000]))
            .await
            .unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 20 {
        if let Seen::Uni(_, bytes) = b.next_seen(20).await {
            assert_eq!(bytes.len(), 8_000);
            assert!(bytes.iter().all(|&x| x == bytes[0]));
            got.push(bytes[0]);
        }
    }
    got.sort_unstable();
    assert_eq!(got, (0..20).collect::<Vec<_>>());

    let frames = a
        .transport
        .request(b.addr(), Bytes::from_static(b"count:4:30000"))
        .await
        .unwrap()
        .collect(10)
        .await
        .unwrap();
    assert_eq!(frames.len(), 4);
    for (i, f) in frames.iter().enumerate() {
        assert!(f.len() == 30_000 && f.iter().all(|&x| x == i as u8));
    }
    assert!(faults.dropped() > 5, "dropped only {}", faults.dropped());
    eprintln!(
        "lossy transfer took {:?}, {} packets dropped",
        start.elapsed(),
        faults.dropped()
    );
}

#[tokio::test]
async fn delay_and_total_loss_are_switchable() {
    init_tracing();
    let ca = Ca::new("mesh CA");
    let faults = FaultHandle::new();
    let a = Node::start(config(MESH), &ca.identity("a"), Some(faults.clone()));
    let b = Node::start(config(MESH), &ca.identity("b"), None);
    assert_echo(&a.transport, b.addr()).await;

    faults.set_delay(Duration::from_millis(150));
    let start = Instant::now();
    assert_echo(&a.transport, b.addr()).await;
    assert!(start.elapsed() >= Duration::from_millis(150));
    assert!(faults.delayed() > 0);
    assert_eq!(faults.config().delay, Duration::from_millis(150));

    faults.set_delay(Duration::ZERO);
    faults.set_drop_probability(1.0);
    assert!(
        echo(&a.transport, b.addr(), "void", Duration::from_millis(500))
            .await
            .is_err()
    );
    faults.reset();
    assert_eq!(faults.config(), Default::default());
    let start = Instant::now();
    loop {
        if echo(&a.transport, b.addr(), "ping", Duration::from_millis(500))
            .await
            .is_ok()
        {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}
