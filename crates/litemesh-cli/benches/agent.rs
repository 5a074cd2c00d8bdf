//! The whole agent path: 5 `litemesh agent` processes with mutual TLS on
//! loopback, driven through the HTTP API.
//!
//! `cargo bench -p litemesh-cli --bench agent` prints:
//! - `agent_tx_per_s`: sequential single-row transactions to one agent, one
//!   client on a kept-alive connection;
//! - `agent_5000_row_tx_s`: one 5,000-row transaction, request to answer;
//! - `agent_5000_row_everywhere_s`: and until every other agent has it;
//! - `agent_propagation_p50_ms` / `_p99_ms`: write acknowledged by one agent →
//!   visible on every other agent (token reads on the four others).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use litemesh_client::{Client, MemberState, QueryOptions, Statement, Token};

/// Timeout of every request.
const TIMEOUT: Duration = Duration::from_secs(30);

/// A client of the agent at `api` with a connection of its own.
fn fresh(api: &str) -> Client {
    Client::builder().timeout(TIMEOUT).build(api)
}

/// Waits on every agent in `apis` (in parallel, each on a new connection)
/// until it has `token`.
fn visible_everywhere(apis: &[String], token: &Token) {
    let handles: Vec<_> = apis
        .iter()
        .map(|api| {
            let api = fresh(api);
            let after = QueryOptions::after(token.clone()).wait(Duration::from_millis(30_000));
            std::thread::spawn(move || {
                let rows = api
                    .query(&Statement::new("SELECT 1"), &after)
                    .and_then(|rows| rows.collect::<Result<Vec<_>, _>>());
                if let Err(e) = rows {
                    panic!("token read on {}: {e}", api.base_url());
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("reader");
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let ca = d.join("ca");
    let certs = d.join("certs");
    assert!(run(&["tls", "ca", "--out", &s(&ca)]).status.success());
    let schema = d.join("schema.sql");
    std::fs::write(
        &schema,
        "CREATE TABLE items (id TEXT PRIMARY KEY, v INTEGER, note TEXT);",
    )
    .unwrap();
    let mut agents: Vec<Agent> = Vec::new();
    for i in 0..5 {
        let name = format!("n{i}");
        assert!(
            run(&[
                "tls",
                "node",
                "--ca-dir",
                &s(&ca),
                "--name",
                &name,
                "--out",
                &s(&certs)
            ])
            .status
            .success()
        );
        let db = s(&d.join(format!("{name}.db")));
        let cert = s(&certs.join(format!("{name}.pem")));
        let key = s(&certs.join(format!("{name}.key")));
        let ca_pem = s(&ca.join("ca.pem"));
        let mut args = vec![
            "--db",
            &db,
            "--name",
            &name,
            "--listen",
            "127.0.0.1:0",
            "--api",
            "127.0.0.1:0",
            "--schema",
            schema.to_str().unwrap(),
            "--tls-ca",
            &ca_pem,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        if let Some(first) = agents.first() {
            args.push("--seed".into());
            args.push(first.listen.clone());
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        agents.push(Agent::start(d, &name, &refs));
    }
    let apis: Vec<String> = agents.iter().map(|a| a.api.clone()).collect();
    eventually(30, "5 agents see 5 alive", || {
        apis.iter().all(|api| {
            fresh(api)
                .members()
                .is_ok_and(|m| m.iter().filter(|x| x.state == MemberState::Alive).count() == 5)
        })
    });
    std::thread::sleep(Duration::from_secs(1));
    // One client for the writes: kept-alive connections, one per agent.
    let writer = fresh(&apis[0]);
    let clients: Vec<Client> = apis.iter().map(|a| writer.at(a)).collect();

    // Sequential single-row transactions to one agent.
    let t0 = Instant::now();
    let mut n = 0;
    while t0.elapsed() < Duration::from_secs(5) {
        let insert = Statement::new("INSERT INTO items VALUES (?, ?, 'seq')")
            .bind(format!("seq-{n}"))
            .bind(n);
        clients[0].execute(&[insert]).expect("sequential write");
        n += 1;
    }
    let tx_per_s = n as f64 / t0.elapsed().as_secs_f64();

    // One 5,000-row transaction.
    let stmts: Vec<Statement> = (0..5000)
        .map(|i| {
            Statement::new("INSERT INTO items VALUES (?, ?, 'bulk row with some text')")
                .bind(format!("bulk-{i}"))
                .bind(i)
        })
        .collect();
    let t0 = Instant::now();
    let done = clients[1].execute(&stmts).expect("5,000-row write");
    let big_tx = t0.elapsed().as_secs_f64();
    let token = done.token;
    let others: Vec<String> = apis
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .map(|(_, a)| a.clone())
        .collect();
    visible_everywhere(&others, &token);
    let big_everywhere = t0.elapsed().as_secs_f64();

    // Acknowledged → visible on every other agent.
    let mut lat = Vec::new();
    for i in 0..200 {
        let w = i % 5;
        let insert = Statement::new("INSERT INTO items VALUES (?, ?, 'prop')")
            .bind(format!("prop-{i}"))
            .bind(i as i64);
        let done = clients[w].execute(&[insert]).expect("write");
        let t0 = Instant::now();
        let token = done.token;
        let others: Vec<String> = apis
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != w)
            .map(|(_, a)| a.clone())
            .collect();
        visible_everywhere(&others, &token);
        lat.push(t0.elapsed().as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(5));
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());

    println!("litemesh agent benchmark: 5 agent processes, mutual TLS, loopback, HTTP clients");
    println!("sequential single-row transactions to one agent: {tx_per_s:.0} tx/s");
    println!(
        "one 5,000-row transaction: {big_tx:.3} s; on every other agent after {big_everywhere:.3} s"
    );
    println!(
        "acknowledged -> visible on all 4 others (200 writes): p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms (includes the 4 HTTP token reads)",
        pct(&lat, 0.5),
        pct(&lat, 0.9),
        pct(&lat, 0.99)
    );
    println!("agent_tx_per_s: {tx_per_s:.0}");
    println!("agent_5000_row_tx_s: {big_tx:.3}");
    println!("agent_5000_row_everywhere_s: {big_everywhere:.3}");
    println!("agent_propagation_p50_ms: {:.2}", pct(&lat, 0.5));
    println!("agent_propagation_p99_ms: {:.2}", pct(&lat, 0.99));
    for mut a in agents {
        a.terminate();
    }
}
