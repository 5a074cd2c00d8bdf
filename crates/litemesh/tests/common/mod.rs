#![allow(dead_code)]
//! Helpers for in-process mesh tests over real QUIC on loopback.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use litemesh::{FaultHandle, Node, Settings, Tls, Value};

pub const SCHEMA: &str = "CREATE TABLE items (id TEXT PRIMARY KEY, node TEXT, v INTEGER)";

/// A mesh CA and a way to mint node certificates.
pub struct Ca {
    pub cert: String,
    pub key: String,
}

impl Ca {
    pub fn new() -> Ca {
        let (cert, key) = litemesh_transport::generate_ca("test mesh").unwrap();
        Ca { cert, key }
    }

    pub fn tls(&self, name: &str) -> Tls {
        self.tls_in(name, None)
    }

    /// A certificate that certifies `region`.
    pub fn tls_in(&self, name: &str, region: Option<&str>) -> Tls {
        let (cert, key) =
            litemesh_transport::generate_node_cert_in(&self.cert, &self.key, name, region).unwrap();
        Tls::Pem {
            ca: self.cert.clone(),
            cert,
            key,
        }
    }
}

pub fn settings(dir: &tempfile::TempDir, name: &str, ca: &Ca, seeds: &[SocketAddr]) -> Settings {
    let mut s = Settings::new(
        dir.path().join(format!("{name}.db")),
        "127.0.0.1:0".parse().unwrap(),
    );
    s.schema.push(SCHEMA.into());
    s.tls = ca.tls(name);
    s.name = Some(name.into());
    s.seeds = seeds.to_vec();
    s.faults = Some(FaultHandle::new());
    s
}

pub async fn dump(node: &Node) -> Vec<Vec<Value>> {
    node.query(
        "SELECT * FROM items ORDER BY id".into(),
        None,
        Duration::ZERO,
    )
    .await
    .unwrap()
    .rows
}

/// Polls `f` until it returns true or `limit` passes; returns the time taken.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if f().await {
            return start.elapsed();
        }
        if start.elapsed() > limit {
            panic!("{what}: not true after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn all_identical(nodes: &[Node]) -> bool {
    let first = dump(&nodes[0]).await;
    for n in &nodes[1..] {
        if dump(n).await != first {
            return false;
        }
    }
    true
}

pub fn alive_count(node: &Node) -> usize {
    node.members()
        .iter()
        .filter(|m| m.state == litemesh::MemberState::Alive)
        .count()
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}
