//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use litemesh_transport::{
    Bytes, Event, FaultHandle, Incoming, MeshIdentity, Transport, TransportConfig, generate_ca,
    generate_node_cert,
};
use tokio::sync::mpsc;

pub const MESH: &str = "test-mesh";

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "litemesh_transport=debug".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A mesh CA that can issue node identities.
pub struct Ca {
    pub cert: String,
    pub key: String,
}

impl Ca {
    pub fn new(name: &str) -> Self {
        let (cert, key) = generate_ca(name).unwrap();
        Self { cert, key }
    }

    pub fn identity(&self, node: &str) -> MeshIdentity {
        let (cert, key) = generate_node_cert(&self.cert, &self.key, node).unwrap();
        MeshIdentity::from_pem(self.cert.as_bytes(), cert.as_bytes(), key.as_bytes()).unwrap()
    }
}

/// Fast-detecting configuration on a loopback port chosen by the OS.
pub fn config(mesh: &str) -> TransportConfig {
    let mut config = TransportConfig::new("127.0.0.1:0".parse().unwrap(), mesh);
    config.keep_alive = Duration::from_millis(300);
    config.idle_timeout = Duration::from_secs(2);
    config.connect_timeout = Duration::from_secs(2);
    config
}

/// What a test node observed.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    Datagram(SocketAddr, Bytes),
    Uni(SocketAddr, Bytes),
    Request(SocketAddr, Bytes),
}

/// Serve `incoming`: record datagrams, uni messages and requests; answer
/// requests. A request `count:<n>:<size>` is answered with `n` frames of
/// `size` bytes (frame `i` filled with byte `i`); any other request is
/// echoed back as a single frame.
pub fn serve(mut incoming: Incoming) -> mpsc::UnboundedReceiver<Seen> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(event) = incoming.recv().await {
            match event {
                Event::Datagram { from, bytes } => {
                    let _ = tx.send(Seen::Datagram(from, bytes));
                }
                Event::Uni { from, bytes } => {
                    let _ = tx.send(Seen::Uni(from, bytes));
                }
                Event::Request {
                    from,
                    bytes,
                    mut respond,
                } => {
                    let _ = tx.send(Seen::Request(from, bytes.clone()));
                    tokio::spawn(async move {
                        let text = String::from_utf8_lossy(&bytes).to_string();
                        let frames: Vec<Bytes> = match text.strip_prefix("count:") {
                            Some(rest) => {
                                let (n, size) = rest.split_once(':').unwrap();
                                let (n, size): (usize, usize) =
                                    (n.parse().unwrap(), size.parse().unwrap());
                                (0..n).map(|i| Bytes::from(vec![i as u8; size])).collect()
                            }
                            None => vec![bytes],
                        };
                        for frame in frames {
                            if respond.send(frame).await.is_err() {
                                return;
                            }
                        }
                        let _ = respond.finish();
                    });
                }
            }
        }
    });
    rx
}

/// A bound node serving with [`serve`].
pub struct Node {
    pub transport: Transport,
    pub seen: mpsc::UnboundedReceiver<Seen>,
}

impl Node {
    pub fn start(
        config: TransportConfig,
        identity: &MeshIdentity,
        faults: Option<FaultHandle>,
    ) -> Self {
        let (transport, incoming) = Transport::bind(config, identity, faults).unwrap();
        Node {
            transport,
            seen: serve(incoming),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.transport.local_addr()
    }

    /// Next observation, or panic after `secs` seconds.
    pub async fn next_seen(&mut self, secs: u64) -> Seen {
        tokio::time::timeout(Duration::from_secs(secs), self.seen.recv())
            .await
            .expect("timed out waiting for an event")
            .expect("event stream ended")
    }
}

/// Echo request round trip, bounded by `timeout`.
pub async fn echo(
    from: &Transport,
    to: SocketAddr,
    msg: &str,
    timeout: Duration,
) -> Result<Vec<Bytes>, String> {
    let fut = async {
        let stream = from
            .request(to, Bytes::copy_from_slice(msg.as_bytes()))
            .await
            .map_err(|e| e.to_string())?;
        stream.collect(1000).await.map_err(|e| e.to_string())
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(result) => result,
        Err(_) => Err("timed out".into()),
    }
}

/// Assert that an echo request succeeds.
pub async fn assert_echo(from: &Transport, to: SocketAddr) {
    let frames = echo(from, to, "ping", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(frames, vec![Bytes::from_static(b"ping")]);
}
