//! Replication benchmark: in-process nodes over real QUIC with mutual TLS on
//! loopback.
//!
//! `cargo bench -p litemesh --bench replication` (options: `--writes N`,
//! `--rows N`). Figures (last lines):
//! - `propagation_p50_ms`, `propagation_p99_ms`: a write acknowledged on one
//!   node → applied on every other node, 5 nodes;
//! - `propagation_p99_ms_20`: the same with 20 nodes;
//! - `reconcile_bytes_x`: bytes a reconciliation exchanges to repair k = 100
//!   differing rows in a 100,000-row table, divided by the raw size of those
//!   rows (their key and values); also shown for a 10,000-row table to show it
//!   does not depend on the table size;
//! - `pipeline_apply_cells_per_s`: a new node catching up on 100,000 rows
//!   through the whole pipeline (extract, QUIC, decode, apply), cells/s.

use std::time::{Duration, Instant};

use litemesh::{Node, Settings, Statement, Tls, Value};
use litemesh_storage::{Store, encode_batch};

const SCHEMA: &str = "CREATE TABLE items (id TEXT PRIMARY KEY, a INTEGER, b TEXT, c REAL)";

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Ca(String, String);

impl Ca {
    fn tls(&self, name: &str) -> Tls {
        let (cert, key) = litemesh_transport::generate_node_cert(&self.0, &self.1, name).unwrap();
        Tls::Pem {
            ca: self.0.clone(),
            cert,
            key,
        }
    }
}

fn settings(
    dir: &tempfile::TempDir,
    ca: &Ca,
    name: &str,
    seed: Option<std::net::SocketAddr>,
) -> Settings {
    let mut s = Settings::new(
        dir.path().join(format!("{name}.db")),
        "127.0.0.1:0".parse().unwrap(),
    );
    s.schema.push(SCHEMA.into());
    s.tls = ca.tls(name);
    s.name = Some(name.into());
    s.seeds = seed.into_iter().collect();
    s
}

async fn mesh(dir: &tempfile::TempDir, ca: &Ca, n: usize) -> Vec<Node> {
    let first = Node::start(settings(dir, ca, "n0", None)).await.unwrap();
    let seed = first.local_addr();
    let mut nodes = vec![first];
    for i in 1..n {
        nodes.push(
            Node::start(settings(dir, ca, &format!("n{i}"), Some(seed)))
                .await
                .unwrap(),
        );
    }
    let start = Instant::now();
    while !nodes.iter().all(|x| {
        x.members()
            .iter()
            .filter(|m| m.state == litemesh::MemberState::Alive)
            .count()
            == n
    }) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "mesh of {n} did not form"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let the first reconciliations settle.
    tokio::time::sleep(Duration::from_secs(1)).await;
    nodes
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Milliseconds from acknowledgement to applied on every other node.
async fn propagation(nodes: &[Node], writes: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(writes);
    for i in 0..writes {
        let w = &nodes[i % nodes.len()];
        let done = w
            .execute(vec![Statement::with_params(
                "INSERT INTO items VALUES (?1, ?2, 'propagation', 1.0)",
                vec![Value::Text(format!("p{i}")), Value::Integer(i as i64)],
            )])
            .await
            .unwrap();
        let t0 = Instant::now();
        let waits = nodes
            .iter()
            .filter(|n| n.name() != w.name())
            .map(|n| {
                let n = n.clone();
                let token = done.token.clone();
                tokio::spawn(async move { n.wait_for(&token, Duration::from_secs(10)).await })
            })
            .collect::<Vec<_>>();
        for h in waits {
            h.await.unwrap().unwrap();
        }
        out.push(t0.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    out.sort_by(|a, b| a.partial_cmp(b).unwrap());
    out
}

fn fill(store: &mut Store, from: usize, n: usize, tag: &str) {
    store
        .transaction(|tx| {
            let mut st = tx.prepare("INSERT INTO items VALUES (?1, ?2, ?3, ?4)")?;
            for i in from..from + n {
                st.execute((
                    format!("{tag}{i:08x}"),
                    i as i64,
                    "some text value",
                    i as f64 / 3.0,
                ))?;
            }
            Ok(())
        })
        .unwrap();
}

/// Bytes of one reconciliation (request + response frames) repairing k rows,
/// and the raw size of those rows.
fn reconcile_bytes(rows: usize, k: usize) -> (usize, usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Store::open(dir.path().join("a.db")).unwrap();
    let mut b = Store::open(dir.path().join("b.db")).unwrap();
    a.apply_schema(SCHEMA).unwrap();
    b.apply_schema(SCHEMA).unwrap();
    fill(&mut a, 0, rows, "r");
    let mut batches = Vec::new();
    a.changes_since(&b.knowledge().unwrap(), 256 * 1024, |x| {
        batches.push(x);
        Ok(true)
    })
    .unwrap();
    b.apply_all(&batches).unwrap();
    // k rows written on a that b lacks (b missed their broadcast).
    for i in 0..k {
        fill(&mut a, rows + i, 1, "d");
    }
    let raw: usize = (rows..rows + k)
        .map(|i| format!("d{i:08x}").len() + 8 + "some text value".len() + 8)
        .sum();
    let request = litemesh_proto::encode(
        &litemesh_proto::Message::SyncRequest {
            knowledge: b.knowledge().unwrap(),
            retention: Default::default(),
        },
        usize::MAX,
    )
    .unwrap()
    .len();
    let mut response = 0;
    a.changes_since(&b.knowledge().unwrap(), 256 * 1024, |x| {
        let batch = encode_batch(&x, usize::MAX)?;
        response +=
            litemesh_proto::encode(&litemesh_proto::Message::SyncBatch { batch }, usize::MAX)
                .unwrap()
                .len();
        Ok(true)
    })
    .unwrap();
    let done = litemesh_proto::encode(
        &litemesh_proto::Message::SyncDone {
            knowledge: a.knowledge().unwrap(),
            retention: Default::default(),
        },
        usize::MAX,
    )
    .unwrap()
    .len();
    (request + response + done, raw)
}

async fn pipeline(dir: &tempfile::TempDir, ca: &Ca, rows: usize) -> f64 {
    let a = Node::start(settings(dir, ca, "src", None)).await.unwrap();
    let per_tx = 10_000;
    let mut i = 0;
    while i < rows {
        let stmts: Vec<Statement> = (i..(i + per_tx).min(rows))
            .map(|k| {
                Statement::with_params(
                    "INSERT INTO items VALUES (?1, ?2, 'some text value', ?3)",
                    vec![
                        Value::Text(format!("r{k:08x}")),
                        Value::Integer(k as i64),
                        Value::Real(k as f64),
                    ],
                )
            })
            .collect();
        a.execute(stmts).await.unwrap();
        i += per_tx;
    }
    let target = a.knowledge();
    let t0 = Instant::now();
    let b = Node::start(settings(dir, ca, "dst", Some(a.local_addr())))
        .await
        .unwrap();
    while !b.knowledge().covers(&target) {
        assert!(t0.elapsed() < Duration::from_secs(300));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    a.shutdown().await;
    b.shutdown().await;
    (rows * 3) as f64 / secs
}

fn main() {
    let writes = arg("--writes", 200);
    let rows = arg("--rows", 100_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (cert, key) = litemesh_transport::generate_ca("bench").unwrap();
    let ca = Ca(cert, key);
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let five = mesh(&dir, &ca, 5).await;
        let p5 = propagation(&five, writes).await;
        for n in &five {
            n.shutdown().await;
        }
        let dir20 = tempfile::tempdir().unwrap();
        let twenty = mesh(&dir20, &ca, 20).await;
        let p20 = propagation(&twenty, writes).await;
        if std::env::var("LM_DEBUG").is_ok() {
            for n in &twenty {
                let st = n.status().await.unwrap();
                let alive = n.members().iter().filter(|m| m.state == litemesh::MemberState::Alive).count();
                eprintln!("{}: alive {alive} peers {} dropped {} syncs {}/{} applied {}", st.name, st.peers.len(), st.broadcast_dropped, st.syncs_completed, st.syncs_failed, st.changes_applied);
            }
        }
        for n in &twenty {
            n.shutdown().await;
        }
        let (b_small, raw_small) = reconcile_bytes(rows / 10, 100);
        let (b_big, raw_big) = reconcile_bytes(rows, 100);
        let dir_p = tempfile::tempdir().unwrap();
        let rate = pipeline(&dir_p, &ca, rows).await;

        println!("litemesh replication benchmark (in-process nodes, QUIC + mutual TLS on loopback)");
        println!(
            "propagation, 5 nodes, {writes} writes: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            percentile(&p5, 0.5),
            percentile(&p5, 0.9),
            percentile(&p5, 0.99),
            p5[p5.len() - 1]
        );
        println!(
            "propagation, 20 nodes, {writes} writes: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            percentile(&p20, 0.5),
            percentile(&p20, 0.9),
            percentile(&p20, 0.99),
            p20[p20.len() - 1]
        );
        println!(
            "reconcile 100 differing rows: {b_small} bytes for {raw_small} raw bytes in a {}-row table, {b_big} bytes for {raw_big} raw bytes in a {rows}-row table",
            rows / 10
        );
        println!("new node catching up on {rows} rows: {rate:.0} cells/s");
        println!("propagation_p50_ms: {:.2}", percentile(&p5, 0.5));
        println!("propagation_p99_ms: {:.2}", percentile(&p5, 0.99));
        println!("propagation_p99_ms_20: {:.2}", percentile(&p20, 0.99));
        println!("reconcile_bytes_x: {:.2}", b_big as f64 / raw_big as f64);
        println!("pipeline_apply_cells_per_s: {rate:.0}");
    });
}
