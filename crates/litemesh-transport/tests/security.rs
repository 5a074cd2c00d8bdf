//! Peers outside the mesh are refused, and the refusing node keeps serving.

mod common;

use std::time::Duration;

use common::{Ca, MESH, Node, Seen, assert_echo, config, echo, init_tracing};
use litemesh_transport::{Bytes, MeshIdentity};

const T: Duration = Duration::from_secs(5);

#[tokio::test]
async fn certificate_from_another_ca_is_refused_both_ways() {
    init_tracing();
    let mesh_ca = Ca::new("mesh CA");
    let other_ca = Ca::new("other CA");
    let a = Node::start(config(MESH), &mesh_ca.identity("a"), None);
    let mut b = Node::start(config(MESH), &mesh_ca.identity("b"), None);
    let evil = Node::start(config(MESH), &other_ca.identity("evil"), None);

    // Evil as client: A refuses its certificate.
    assert!(
        echo(&evil.transport, a.addr(), "let me in", T)
            .await
            .is_err()
    );
    assert!(
        evil.transport
            .send_uni(a.addr(), Bytes::from_static(b"x"))
            .await
            .is_err()
            || a.transport.connected_peers().is_empty()
    );
    // Evil as server: A refuses the server certificate.
    assert!(echo(&a.transport, evil.addr(), "hello?", T).await.is_err());
    assert!(a.transport.peer_name(evil.addr()).is_none());

    // A keeps serving a good peer, in both directions.
    assert_echo(&b.transport, a.addr()).await;
    assert_echo(&a.transport, b.addr()).await;
    a.transport
        .send_datagram(b.addr(), Bytes::from_static(b"still here"))
        .await
        .unwrap();
    loop {
        if let Seen::Datagram(from, bytes) = b.next_seen(5).await {
            assert_eq!((from, &bytes[..]), (a.addr(), &b"still here"[..]));
            break;
        }
    }
    // Nothing from evil reached the application.
    assert!(!a.transport.connected_peers().contains(&evil.addr()));
}

#[tokio::test]
async fn wrong_mesh_id_is_refused() {
    init_tracing();
    let ca = Ca::new("shared CA");
    let a = Node::start(config(MESH), &ca.identity("a"), None);
    let b = Node::start(config(MESH), &ca.identity("b"), None);
    // Same CA, different mesh: the ALPN does not match.
    let stranger = Node::start(config("other-mesh"), &ca.identity("stranger"), None);

    assert!(echo(&stranger.transport, a.addr(), "hi", T).await.is_err());
    assert!(echo(&a.transport, stranger.addr(), "hi", T).await.is_err());
    assert_echo(&b.transport, a.addr()).await;
    assert_echo(&a.transport, b.addr()).await;
}

#[tokio::test]
async fn insecure_and_secure_nodes_do_not_mix() {
    init_tracing();
    let ca = Ca::new("mesh CA");
    let a = Node::start(config(MESH), &ca.identity("a"), None);
    let b = Node::start(config(MESH), &ca.identity("b"), None);
    let loose = Node::start(config(MESH), &MeshIdentity::insecure().unwrap(), None);

    // No client certificate: refused by A.
    assert!(echo(&loose.transport, a.addr(), "hi", T).await.is_err());
    // Self-signed server certificate: refused by A.
    assert!(echo(&a.transport, loose.addr(), "hi", T).await.is_err());
    assert_echo(&b.transport, a.addr()).await;
}
