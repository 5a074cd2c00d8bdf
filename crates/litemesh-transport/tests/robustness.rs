//! Hostile or oversized input: refused, logged, never fatal.

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use common::{Ca, MESH, Node, Seen, assert_echo, config, init_tracing};
use litemesh_transport::{Bytes, Error, Transport, codes};

#[tokio::test]
async fn garbage_udp_does_not_hurt() {
    init_tracing();
    let ca = Ca::new("mesh CA");
    let a = Node::start(config(MESH), &ca.identity("a"), None);
    let b = Node::start(config(MESH), &ca.identity("b"), None);
    assert_echo(&b.transport, a.addr()).await;

    let junk = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut random = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect()
    };
    let mut packets: Vec<Vec<u8>> = vec![vec![], vec![0], vec![0xff; 1500], vec![0; 1200]];
    for len in [1, 5, 20, 100, 1199, 1200, 1350, 1452, 4000, 65000] {
        packets.push(random(len));
        // Long header, QUIC v1, random rest: looks like an Initial.
        let mut p = random(len.max(1200));
        p[0] = 0xc0 | (p[0] & 0x0f);
        p[1..5].copy_from_slice(&1u32.to_be_bytes());
        packets.push(p);
        // Unknown version: provokes version negotiation.
        let mut p = random(len.max(1200));
        p[0] = 0xc0;
        p[1..5].copy_from_slice(&0x1a2a_3a4au32.to_be_bytes());
        packets.push(p);
        // Short header (1-RTT) garbage.
        let mut p = random(len.max(30));
        p[0] = 0x40 | (p[0] & 0x3f);
        packets.push(p);
    }
    for _ in 0..3 {
        for p in &packets {
            let _ = junk.send_to(p, a.addr());
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Both the existing connection and new ones keep working.
    assert_echo(&b.transport, a.addr()).await;
    assert_echo(&a.transport, b.addr()).await;
    let c = Node::start(config(MESH), &ca.identity("c"), None);
    assert_echo(&c.transport, a.addr()).await;
}

#[tokio::test]
async fn oversized_frames_are_rejected_and_the_connection_survives() {
    init_tracing();
    let ca = Ca::new("mesh CA");
    let mut big = config(MESH);
    big.max_frame = 1024 * 1024;
    let mut small = config(MESH);
    small.max_frame = 64 * 1024;
    let a = Node::start(big, &ca.identity("a"), None);
    let mut b = Node::start(small, &ca.identity("b"), None);

    // Local check: nothing is sent.
    let too_big = Bytes::from(vec![1u8; 1024 * 1024 + 1]);
    match a.transport.send_uni(b.addr(), too_big.clone()).await {
        Err(Error::FrameTooLarge { size, max }) => {
            assert_eq!((size, max), (1024 * 1024 + 1, 1024 * 1024))
        }
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
    assert!(matches!(
        a.transport.request(b.addr(), too_big).await,
        Err(Error::FrameTooLarge { .. })
    ));

    // Remote check: B (64 KiB limit) refuses A's 100 KB request.
    assert_echo(&a.transport, b.addr()).await;
    let result = async {
        let mut response = a
            .transport
            .request(b.addr(), Bytes::from(vec![2u8; 100_000]))
            .await?;
        response.next().await
    }
    .await;
    match result {
        Err(Error::Refused { code }) => assert_eq!(code, u64::from(codes::FRAME_TOO_LARGE)),
        other => panic!("expected Refused(FRAME_TOO_LARGE), got {other:?}"),
    }
    // A 100 KB uni message is dropped by B, not delivered.
    let _ = a
        .transport
        .send_uni(b.addr(), Bytes::from(vec![3u8; 100_000]))
        .await;

    // B asks A for a response frame above B's limit: B's reader refuses it.
    let mut response = b
        .transport
        .request(a.addr(), Bytes::from_static(b"count:2:100000"))
        .await
        .unwrap();
    match response.next().await {
        Err(Error::FrameTooLarge { size, max }) => assert_eq!((size, max), (100_000, 64 * 1024)),
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }

    // Datagrams above the path limit.
    assert!(matches!(
        a.transport
            .send_datagram(b.addr(), Bytes::from(vec![0u8; 4000]))
            .await,
        Err(Error::DatagramTooLarge { size: 4000, .. })
    ));

    // Same connection, still fine.
    a.transport
        .send_uni(b.addr(), Bytes::from_static(b"small"))
        .await
        .unwrap();
    loop {
        match b.next_seen(5).await {
            Seen::Uni(_, bytes) => {
                assert_eq!(&bytes[..], b"small", "oversized message was delivered");
                break;
            }
            _ => continue,
        }
    }
    assert_echo(&a.transport, b.addr()).await;
    assert_echo(&b.transport, a.addr()).await;
    assert_eq!(a.transport.connected_peers(), vec![b.addr()]);
}

#[tokio::test]
async fn connection_limit_is_enforced() {
    init_tracing();
    let ca = Ca::new("mesh CA");
    let mut limited = config(MESH);
    limited.max_connections = 1;
    let a = Node::start(limited, &ca.identity("a"), None);
    let b = Node::start(config(MESH), &ca.identity("b"), None);
    let c = Node::start(config(MESH), &ca.identity("c"), None);
    assert_echo(&b.transport, a.addr()).await;
    // A is full: C is refused, and A cannot dial C either.
    assert!(
        common::echo(&c.transport, a.addr(), "hi", Duration::from_secs(3))
            .await
            .is_err()
    );
    assert!(matches!(
        a.transport.send_uni(c.addr(), Bytes::new()).await,
        Err(Error::TooManyConnections { max: 1 })
    ));
    assert_echo(&b.transport, a.addr()).await;
}

#[tokio::test]
async fn abandoned_request_is_reported() {
    init_tracing();
    let ca = Ca::new("mesh CA");
    let (a, _a_incoming) = Transport::bind(config(MESH), &ca.identity("a"), None).unwrap();
    let (b, mut b_incoming) = Transport::bind(config(MESH), &ca.identity("b"), None).unwrap();
    tokio::spawn(async move {
        while let Some(event) = b_incoming.recv().await {
            if let litemesh_transport::Event::Request { mut respond, .. } = event {
                respond.send(Bytes::from_static(b"partial")).await.unwrap();
                drop(respond); // no finish
            }
        }
    });
    let mut response = a
        .request(b.local_addr(), Bytes::from_static(b"q"))
        .await
        .unwrap();
    let first = response.next().await;
    let outcome = match first {
        Ok(Some(frame)) => {
            assert_eq!(&frame[..], b"partial");
            response.next().await
        }
        other => other,
    };
    match outcome {
        Err(Error::Refused { code }) => assert_eq!(code, u64::from(codes::ABANDONED)),
        other => panic!("expected Refused(ABANDONED), got {other:?}"),
    }
}
