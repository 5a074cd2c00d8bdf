//! `litemesh demo`: a small mesh in one process (temporary files, an
//! ephemeral CA, mutual TLS on loopback). Every node writes; a partition
//! splits the mesh while both sides keep writing; the partition heals and the
//! nodes converge to identical contents.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use litemesh::{FaultHandle, Node, Settings, Statement, Tls, Value};

use crate::CliResult;

const SCHEMA: &str = "CREATE TABLE events (id TEXT PRIMARY KEY, node TEXT, seq INTEGER, body TEXT);
CREATE TABLE tallies (id TEXT PRIMARY KEY, n INTEGER NOT NULL DEFAULT 0) -- litemesh: counter = n
;";
const NAMES: [&str; 5] = ["alpha", "beta", "gamma", "delta", "epsilon"];
/// How long the nodes may take to converge after the healing.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(25);
/// How long to wait, after the healing, for every node to see all alive.
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(10);

/// `litemesh demo`
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Nodes in the mesh (3 to 5).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(3..=5))]
    nodes: u8,
    /// Seconds of writing: the first half with the mesh whole, the second
    /// half partitioned (2 to 20).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(2..=20))]
    seconds: u64,
    /// Writes per second on each node.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=100))]
    rate: u64,
}

struct DemoNode {
    node: Node,
    faults: FaultHandle,
    seq: i64,
}

/// Runs the demo.
pub fn run(a: DemoArgs) -> CliResult {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    rt.block_on(demo(a))
}

async fn count(n: &Node) -> i64 {
    match n
        .query("SELECT count(*) FROM events".into(), None, Duration::ZERO)
        .await
    {
        Ok(r) => match r.rows.first().and_then(|r| r.first()) {
            Some(Value::Integer(c)) => *c,
            _ => -1,
        },
        Err(_) => -1,
    }
}

/// The counter every write increments, as node `n` sees it.
async fn tally(n: &Node) -> i64 {
    match n
        .query(
            "SELECT n FROM tallies WHERE id = 'writes'".into(),
            None,
            Duration::ZERO,
        )
        .await
    {
        Ok(r) => match r.rows.first().and_then(|r| r.first()) {
            Some(Value::Integer(c)) => *c,
            _ => 0,
        },
        Err(_) => -1,
    }
}

/// Row count and an FNV-1a checksum of every row in key order.
async fn contents(n: &Node) -> Result<(usize, u64), String> {
    let r = n
        .query(
            "SELECT id, node, seq, body FROM events ORDER BY id".into(),
            None,
            Duration::ZERO,
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for row in &r.rows {
        for b in format!("{row:?}\n").bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    Ok((r.rows.len(), h))
}

async fn lag(n: &Node) -> f64 {
    n.status()
        .await
        .map(|s| s.max_lag.as_secs_f64())
        .unwrap_or(0.0)
}

/// One line: per node its rows, the rows written anywhere that it lacks
/// (`missing`), its own lag estimate (`lag`: seconds its copy of the
/// stalest writer's data has not been known complete) and the members it
/// sees alive.
async fn progress(t0: Instant, phase: &str, nodes: &[DemoNode]) {
    let written: i64 = nodes.iter().map(|d| d.seq).sum();
    let mut line = format!("[{:5.1}s] {phase:<11}", t0.elapsed().as_secs_f64());
    for d in nodes {
        let alive = d
            .node
            .members()
            .iter()
            .filter(|m| m.state == litemesh::MemberState::Alive)
            .count();
        let rows = count(&d.node).await;
        line.push_str(&format!(
            " | {} rows={rows} missing={} counter={} lag={:.1}s alive={alive}",
            d.node.name(),
            written - rows,
            tally(&d.node).await,
            lag(&d.node).await
        ));
    }
    println!("{line}");
}

async fn write(d: &mut DemoNode) -> Result<(), String> {
    d.seq += 1;
    let name = d.node.name().to_string();
    d.node
        .execute(vec![
            Statement::with_params(
                "INSERT INTO events (id, node, seq, body) VALUES (?1, ?2, ?3, ?4)",
                vec![
                    Value::Text(format!("{name}-{:05}", d.seq)),
                    Value::Text(name.clone()),
                    Value::Integer(d.seq),
                    Value::Text(format!("event {} written on {name}", d.seq)),
                ],
            ),
            // One counter, incremented by every write on every node: its
            // contributions add up across the partition (a counter column).
            Statement::from(
                "INSERT INTO tallies (id, n) VALUES ('writes', 1) \
                 ON CONFLICT (id) DO UPDATE SET n = n + 1",
            ),
        ])
        .await
        .map(|_| ())
        .map_err(|e| format!("write on {name}: {e}"))
}

async fn write_for(
    t0: Instant,
    phase: &str,
    nodes: &mut [DemoNode],
    secs: f64,
    rate: u64,
) -> Result<(), String> {
    let tick = Duration::from_secs_f64(1.0 / rate as f64);
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut next_report = Instant::now() + Duration::from_secs(1);
    while Instant::now() < end {
        for d in nodes.iter_mut() {
            write(d).await?;
        }
        tokio::time::sleep(tick).await;
        if Instant::now() >= next_report {
            progress(t0, phase, nodes).await;
            next_report += Duration::from_secs(1);
        }
    }
    Ok(())
}

async fn demo(a: DemoArgs) -> CliResult {
    let t0 = Instant::now();
    let n = usize::from(a.nodes);
    let dir = tempfile::tempdir().map_err(|e| format!("temporary folder: {e}"))?;
    let (ca, ca_key) =
        litemesh_transport::generate_ca("litemesh demo CA").map_err(|e| e.to_string())?;
    println!(
        "litemesh demo: {n} nodes, mutual TLS with an ephemeral CA, files in {}",
        dir.path().display()
    );
    let mut nodes: Vec<DemoNode> = Vec::new();
    // Two regions, certified in the certificates: the partition of phase 2
    // cuts them apart.
    let split = n - n / 2;
    let region = |i: usize| if i < split { "eu" } else { "us" };
    for (i, name) in NAMES[..n].iter().enumerate() {
        let (cert, key) =
            litemesh_transport::generate_node_cert_in(&ca, &ca_key, name, Some(region(i)))
                .map_err(|e| e.to_string())?;
        let mut s = Settings::new(
            dir.path().join(format!("{name}.db")),
            "127.0.0.1:0".parse().expect("address"),
        );
        s.name = Some(name.to_string());
        s.schema.push(SCHEMA.into());
        s.tls = Tls::Pem {
            ca: ca.clone(),
            cert,
            key,
        };
        s.seeds = nodes
            .first()
            .map(|d| d.node.local_addr())
            .into_iter()
            .collect();
        let faults = FaultHandle::new();
        s.faults = Some(faults.clone());
        let node = Node::start(s)
            .await
            .map_err(|e| format!("starting {name}: {e}"))?;
        println!(
            "  started {name} on {} (region {})",
            node.local_addr(),
            region(i)
        );
        nodes.push(DemoNode {
            node,
            faults,
            seq: 0,
        });
    }
    let formed = Instant::now();
    while nodes.iter().any(|d| {
        d.node
            .members()
            .iter()
            .filter(|m| m.state == litemesh::MemberState::Alive)
            .count()
            < n
    }) {
        if formed.elapsed() > Duration::from_secs(15) {
            return finish(&nodes, Err("the mesh did not form within 15 s".into())).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "mesh formed in {:.2?}: every node sees {n} alive",
        formed.elapsed()
    );

    let half = a.seconds as f64 / 2.0;
    println!(
        "phase 1: all nodes write ({} writes/s each) for {half:.1} s",
        a.rate
    );
    if let Err(e) = write_for(t0, "connected", &mut nodes, half, a.rate).await {
        return finish(&nodes, Err(e)).await;
    }

    // Split: the last ⌊n/2⌋ nodes (region us) form the minority side.
    let addrs: Vec<_> = nodes.iter().map(|d| d.node.local_addr()).collect();
    for (i, d) in nodes.iter().enumerate() {
        let other_side: Vec<_> = if i < split {
            addrs[split..].to_vec()
        } else {
            addrs[..split].to_vec()
        };
        d.faults.partition(other_side);
    }
    let side = |r: std::ops::Range<usize>| {
        nodes[r]
            .iter()
            .map(|d| d.node.name().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "phase 2: partition {{{}}} | {{{}}} (region eu cut from region us); both sides keep \
         writing for {half:.1} s",
        side(0..split),
        side(split..n)
    );
    if let Err(e) = write_for(t0, "partitioned", &mut nodes, half, a.rate).await {
        return finish(&nodes, Err(e)).await;
    }
    // What an operator sees, by region, just before the heal.
    for (d, other) in [(&nodes[0], "us"), (&nodes[n - 1], "eu")] {
        if let Ok(st) = d.node.status().await
            && let Some(r) = st
                .regions
                .iter()
                .find(|r| r.region.as_deref() == Some(other))
        {
            println!(
                "  {} sees region {other}: {}/{} members reachable, its writers' lag {:.1} s",
                d.node.name(),
                r.reachable,
                r.members,
                r.max_lag.as_secs_f64()
            );
        }
    }
    let writes: i64 = nodes.iter().map(|d| d.seq).sum();

    for d in &nodes {
        d.faults.heal();
    }
    let healed = Instant::now();
    println!("phase 3: partition healed; waiting for convergence ({writes} rows written in all)");
    let mut next_report = Instant::now() + Duration::from_millis(500);
    let converged = loop {
        let mut all = Vec::with_capacity(n);
        for d in &nodes {
            match contents(&d.node).await {
                Ok(c) => all.push(c),
                Err(e) => return finish(&nodes, Err(e)).await,
            }
        }
        let mut tallies = Vec::with_capacity(n);
        for d in &nodes {
            tallies.push(tally(&d.node).await);
        }
        if all.iter().all(|c| *c == all[0] && c.0 as i64 == writes)
            && tallies.iter().all(|t| *t == writes)
        {
            break Ok(healed.elapsed());
        }
        if healed.elapsed() > CONVERGE_TIMEOUT {
            break Err(format!(
                "not converged {CONVERGE_TIMEOUT:?} after the healing"
            ));
        }
        if Instant::now() >= next_report {
            progress(t0, "healing", &nodes).await;
            next_report += Duration::from_millis(500);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    if let Ok(t) = &converged {
        progress(t0, "converged", &nodes).await;
        println!("converged {:.3} s after the healing", t.as_secs_f64());
        // Membership heals on its own schedule (failure detection marked the
        // other side dead during the partition); replication did not wait.
        let all_alive = |nodes: &[DemoNode]| {
            nodes.iter().all(|d| {
                d.node
                    .members()
                    .iter()
                    .filter(|m| m.state == litemesh::MemberState::Alive)
                    .count()
                    == n
            })
        };
        while !all_alive(&nodes) && healed.elapsed() < MEMBERSHIP_TIMEOUT {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if all_alive(&nodes) {
            println!(
                "membership healed {:.3} s after the healing: every node sees {n} alive",
                healed.elapsed().as_secs_f64()
            );
        } else {
            println!(
                "membership not yet healed {MEMBERSHIP_TIMEOUT:?} after the healing (replication does not depend on it)"
            );
        }
    }
    finish(&nodes, converged).await
}

/// Prints every node's contents and the summary, stops the nodes.
async fn finish(nodes: &[DemoNode], outcome: Result<Duration, String>) -> CliResult {
    println!("final contents:");
    let mut sums = Vec::new();
    let mut tallies = Vec::new();
    for d in nodes {
        let c = contents(&d.node).await;
        let t = tally(&d.node).await;
        match &c {
            Ok((rows, sum)) => {
                println!(
                    "  {:<8} rows={rows:<5} checksum={sum:016x} counter={t}",
                    d.node.name()
                )
            }
            Err(e) => println!("  {:<8} unreadable: {e}", d.node.name()),
        }
        sums.push(c.ok());
        tallies.push(t);
    }
    let identical = sums.windows(2).all(|w| w[0] == w[1])
        && sums[0].is_some()
        && tallies.windows(2).all(|w| w[0] == w[1]);
    // All leave at once (each leave waits for its announcement to go out).
    let leaving: Vec<_> = nodes
        .iter()
        .map(|d| {
            let node = d.node.clone();
            tokio::spawn(async move { node.shutdown().await })
        })
        .collect();
    for l in leaving {
        let _ = l.await;
    }
    let written: i64 = nodes.iter().map(|d| d.seq).sum();
    match outcome {
        Ok(t) if identical => {
            println!(
                "summary: {} nodes, {written} rows written (some during the partition), \
                 converged {:.3} s after the healing, all nodes identical — OK",
                nodes.len(),
                t.as_secs_f64()
            );
            println!(
                "         the counter incremented by every write on every node, both sides \
                 of the partition, reads {} everywhere: the exact sum",
                tallies[0]
            );
            Ok(ExitCode::SUCCESS)
        }
        Ok(_) => {
            println!("summary: the nodes differ — FAILED");
            Ok(ExitCode::FAILURE)
        }
        Err(e) => {
            println!("summary: {e} — FAILED");
            Ok(ExitCode::FAILURE)
        }
    }
}
