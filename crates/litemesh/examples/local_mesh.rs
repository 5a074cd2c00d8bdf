//! A three-node mesh in one process, on loopback, with mutual TLS and an
//! ephemeral CA: writes replicate, a partition splits the mesh, both sides
//! keep writing, the partition heals and every node converges.
//!
//! `cargo run --release -p litemesh --example local_mesh`

use std::time::{Duration, Instant};

use litemesh::{FaultHandle, Node, Settings, Statement, Tls, Value};

const SCHEMA: &str = "CREATE TABLE notes (id TEXT PRIMARY KEY, author TEXT, body TEXT)";

async fn count(node: &Node) -> usize {
    node.query("SELECT count(*) FROM notes".into(), None, Duration::ZERO)
        .await
        .map(|r| match r.rows[0][0] {
            Value::Integer(n) => n as usize,
            _ => 0,
        })
        .unwrap_or(0)
}

async fn show(nodes: &[(Node, FaultHandle)]) {
    let mut line = String::new();
    for (n, _) in nodes {
        let alive = n
            .members()
            .iter()
            .filter(|m| m.state == litemesh::MemberState::Alive)
            .count();
        line.push_str(&format!(
            "  {}: {} rows, sees {alive} alive",
            n.name(),
            count(n).await
        ));
    }
    println!("{line}");
}

async fn write(node: &Node, i: usize) {
    node.execute(vec![Statement::with_params(
        "INSERT INTO notes VALUES (?1, ?2, ?3)",
        vec![
            Value::Text(format!("{}-{i}", node.name())),
            Value::Text(node.name().into()),
            Value::Text(format!("note {i} from {}", node.name())),
        ],
    )])
    .await
    .expect("write");
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let (ca_cert, ca_key) = litemesh_transport::generate_ca("local mesh")?;
    let mut nodes: Vec<(Node, FaultHandle)> = Vec::new();
    for name in ["alpha", "beta", "gamma"] {
        let (cert, key) = litemesh_transport::generate_node_cert(&ca_cert, &ca_key, name)?;
        let mut s = Settings::new(
            dir.path().join(format!("{name}.db")),
            "127.0.0.1:0".parse()?,
        );
        s.name = Some(name.into());
        s.schema.push(SCHEMA.into());
        s.tls = Tls::Pem {
            ca: ca_cert.clone(),
            cert,
            key,
        };
        s.seeds = nodes
            .first()
            .map(|(n, _)| n.local_addr())
            .into_iter()
            .collect();
        let faults = FaultHandle::new();
        s.faults = Some(faults.clone());
        let node = Node::start(s).await?;
        println!(
            "started {} on {} (seed: {:?})",
            name,
            node.local_addr(),
            nodes.first().map(|(n, _)| n.local_addr())
        );
        nodes.push((node, faults));
    }
    while nodes.iter().any(|(n, _)| {
        n.members()
            .iter()
            .filter(|m| m.state == litemesh::MemberState::Alive)
            .count()
            < 3
    }) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("mesh formed:");
    show(&nodes).await;

    // A write, then a read on another node that waits for it (version token).
    let done = nodes[0]
        .0
        .execute(vec![
            "INSERT INTO notes VALUES ('hello', 'alpha', 'first note')".into(),
        ])
        .await?;
    let t = Instant::now();
    let rows = nodes[2]
        .0
        .query(
            "SELECT body FROM notes WHERE id = 'hello'".into(),
            Some(&done.token),
            Duration::from_secs(5),
        )
        .await?;
    println!(
        "gamma reads alpha's write with its token after {:?}: {:?}",
        t.elapsed(),
        rows.rows[0][0]
    );

    // Partition gamma from the others; both sides keep writing.
    let gamma = nodes[2].0.local_addr();
    let others: Vec<_> = nodes[..2].iter().map(|(n, _)| n.local_addr()).collect();
    nodes[0].1.partition([gamma]);
    nodes[1].1.partition([gamma]);
    nodes[2].1.partition(others);
    println!("partition: gamma | alpha, beta — writing on both sides for 8 s");
    for i in 0..8 {
        write(&nodes[i % 2].0, i).await;
        write(&nodes[2].0, i).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        show(&nodes).await;
    }
    for (_, f) in &nodes {
        f.heal();
    }
    let healed = Instant::now();
    println!("healed; waiting for convergence");
    loop {
        let mut dumps = Vec::new();
        for (n, _) in &nodes {
            dumps.push(
                n.query(
                    "SELECT * FROM notes ORDER BY id".into(),
                    None,
                    Duration::ZERO,
                )
                .await?
                .rows,
            );
        }
        if dumps.windows(2).all(|w| w[0] == w[1]) {
            println!(
                "identical on all three after {:?} ({} rows)",
                healed.elapsed(),
                dumps[0].len()
            );
            break;
        }
        if healed.elapsed() > Duration::from_secs(30) {
            println!("not converged after 30 s");
            std::process::exit(1);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    show(&nodes).await;
    let st = nodes[0].0.status().await?;
    println!(
        "alpha status: db_version {} version vector {:?}",
        st.db_version, st.version_vector
    );
    for (n, _) in &nodes {
        n.shutdown().await;
    }
    Ok(())
}
