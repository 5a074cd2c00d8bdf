//! The whole agent path: meshes of `litemesh agent` processes with mutual TLS
//! on loopback, driven through the HTTP API, optionally side by side with an
//! older build of the agent.
//!
//! ```sh
//! cargo bench -p litemesh-cli --bench agent -- [--agents 1,5,20] \
//!     [--old-bin PATH] [--bin PATH] [--rounds R] [--secs S] [--quick]
//! ```
//!
//! - `--agents LIST`: mesh sizes (default `1,5,20`; 1 is a lone agent, to see
//!   what a mesh costs the writer). Agent 0 is the seed of every other agent;
//!   the phases start once every agent sees all N alive (up to 60 s), plus 1 s.
//! - `--old-bin PATH`: also run every mesh size with the `litemesh` binary at
//!   PATH (same flags). The binary under test is the one cargo built, or
//!   `--bin PATH` (to profile one binary alone, say).
//! - `--rounds R`: meshes per binary and size (default 1, or 2 with
//!   `--old-bin`). Runs alternate new, old, new, old… so that machine noise
//!   hits both; the figures are medians over rounds (error counts: totals).
//! - `--secs S`: seconds per load phase (default 4).
//! - `--quick`: only the `seq` and `c16 spread` phases, for fast checks.
//! - Anything else (such as cargo's `--bench`) is ignored.
//!
//! Each round starts a fresh mesh per binary and terminates it after. The
//! phases (each writing its own primary keys into `items`):
//! 1. `seq`: sequential single-row transactions to agent 0, one client on a
//!    kept-alive connection: tx/s.
//! 2. `c{C} spread` / `c{C} one`, C in 1, 4, 16, 64: C client threads, each
//!    with its own kept-alive connection, writing single-row transactions for
//!    `--secs`, client i to agent i % N (`spread`) or all to agent 0 (`one`;
//!    not run for N = 1, where it is `spread`): total tx/s. Meanwhile a
//!    prober writes one row every 25 ms, to the agents in turn, and waits
//!    until every other agent has it (token reads, in parallel, one new
//!    connection each): acknowledged → visible p50 / p99 and the number of
//!    probes (none for N = 1).
//! 3. One 5,000-row transaction to agent 1 (agent 0 if N = 1), request to
//!    answer, and until every other agent has it; then, with no load,
//!    acknowledged → visible on every other agent for 200 writes (100 if
//!    N ≥ 20), writers in turn, measured like the prober's.
//!
//! Failed requests during phases are counted (`…_errors`,
//! `…_probe_failures`), not fatal; a mesh that fails to start loses its
//! round.
//!
//! Output: a table per mesh size (new, old, new/old), then `name: value`
//! lines: `agent{N}_{figure}` for the new binary (e.g. `agent5_seq_tx_per_s`,
//! `agent20_c16_spread_prop_p99_ms`), `old_agent{N}_{figure}` for the old one;
//! for N = 5 also the historical names `agent_tx_per_s`,
//! `agent_5000_row_tx_s`, `agent_5000_row_everywhere_s`,
//! `agent_propagation_p50_ms` and `agent_propagation_p99_ms` (and `old_…`);
//! `agent{N}_seq_ratio_new_over_old`, `agent{N}_c16_spread_over_seq`, and
//! `mesh_cost_x` = a lone agent's seq tx/s ÷ a 5-agent mesh's.

#[path = "../tests/common/mod.rs"]
mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use litemesh_client::{Client, MemberState, QueryOptions, Statement, Token};

/// Timeout of every request.
const TIMEOUT: Duration = Duration::from_secs(30);
/// How long a token read waits for its token (within [`TIMEOUT`], so that
/// the agent's refusal arrives before the client gives up).
const TOKEN_WAIT: Duration = Duration::from_secs(25);
/// The prober's period during a load phase.
const PROBE_EVERY: Duration = Duration::from_millis(25);
/// Client counts of the concurrent phases.
const CONCURRENCY: [usize; 4] = [1, 4, 16, 64];
/// Rows of the large transaction.
const BIG_ROWS: i64 = 5000;
/// The machine-readable names kept from the 5-agent-only bench: (name,
/// figure).
const HISTORICAL: [(&str, &str); 5] = [
    ("agent_tx_per_s", "seq_tx_per_s"),
    ("agent_5000_row_tx_s", "5000_row_tx_s"),
    ("agent_5000_row_everywhere_s", "5000_row_everywhere_s"),
    ("agent_propagation_p50_ms", "propagation_p50_ms"),
    ("agent_propagation_p99_ms", "propagation_p99_ms"),
];

// ---------------------------------------------------------------- options

struct Options {
    agents: Vec<usize>,
    old_bin: Option<PathBuf>,
    bin: PathBuf,
    rounds: usize,
    secs: Duration,
    quick: bool,
}

impl Options {
    fn parse(mut args: impl Iterator<Item = String>) -> Options {
        let mut agents = vec![1, 5, 20];
        let mut old_bin = None;
        let mut bin = PathBuf::from(BIN);
        let mut rounds = None;
        let mut secs = 4.0;
        let mut quick = false;
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
                _ => (arg, None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| args.next())
                    .unwrap_or_else(|| panic!("{flag} needs a value"))
            };
            match flag.as_str() {
                "--agents" => {
                    agents = value()
                        .split(',')
                        .map(|n| match n.trim().parse() {
                            Ok(n) if n > 0 => n,
                            _ => panic!("--agents: a list of sizes such as 1,5,20, not {n:?}"),
                        })
                        .collect()
                }
                "--old-bin" => old_bin = Some(PathBuf::from(value())),
                "--bin" => bin = PathBuf::from(value()),
                "--rounds" => rounds = Some(value().parse().expect("--rounds: a number")),
                "--secs" => secs = value().parse().expect("--secs: a number of seconds"),
                "--quick" => quick = true,
                _ => {} // e.g. `--bench`, from cargo
            }
        }
        if let Some(bin) = &old_bin {
            assert!(bin.is_file(), "--old-bin {}: no such file", bin.display());
        }
        let rounds = rounds.unwrap_or(if old_bin.is_some() { 2 } else { 1 });
        assert!(rounds > 0, "--rounds: at least 1");
        assert!(secs > 0.0, "--secs: more than 0");
        Options {
            agents,
            old_bin,
            bin,
            rounds,
            secs: Duration::from_secs_f64(secs),
            quick,
        }
    }

    /// The concurrent phases for a mesh of `n`.
    fn phases(&self, n: usize) -> Vec<(usize, Placement)> {
        if self.quick {
            return vec![(16, Placement::Spread)];
        }
        let placements: &[Placement] = if n == 1 {
            &[Placement::Spread]
        } else {
            &[Placement::Spread, Placement::One]
        };
        CONCURRENCY
            .iter()
            .flat_map(|&c| placements.iter().map(move |&p| (c, p)))
            .collect()
    }
}

// ---------------------------------------------------------------- figures

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// Transactions per second.
    Rate,
    Millis,
    Secs,
    /// A quotient of two figures.
    Ratio,
    /// A count (median over rounds, no new/old ratio).
    Count,
    /// Failed requests (total over rounds, no new/old ratio).
    Errors,
}

impl Kind {
    fn show(self, v: f64) -> String {
        if v.is_nan() {
            return "-".into();
        }
        match self {
            Kind::Rate | Kind::Count | Kind::Errors => format!("{v:.0}"),
            Kind::Millis | Kind::Ratio => format!("{v:.2}"),
            Kind::Secs => format!("{v:.3}"),
        }
    }

    /// Whether new ÷ old means something.
    fn compares(self) -> bool {
        !matches!(self, Kind::Count | Kind::Errors)
    }
}

struct Figure {
    /// Machine-readable name, without the `agent{N}_` prefix.
    key: String,
    /// Row of the table.
    label: String,
    kind: Kind,
    value: f64,
}

/// The figures of one mesh run, or their medians over rounds, in order.
#[derive(Default)]
struct Figures(Vec<Figure>);

impl Figures {
    fn add(&mut self, key: impl Into<String>, label: impl Into<String>, kind: Kind, value: f64) {
        self.0.push(Figure {
            key: key.into(),
            label: label.into(),
            kind,
            value,
        });
    }

    fn get(&self, key: &str) -> Option<f64> {
        self.0
            .iter()
            .find(|f| f.key == key)
            .map(|f| f.value)
            .filter(|v| !v.is_nan())
    }

    fn load(&mut self, key: &str, label: &str, load: &Load) {
        self.add(
            format!("{key}_tx_per_s"),
            format!("{label}: tx/s"),
            Kind::Rate,
            load.tx_per_s,
        );
        self.add(
            format!("{key}_errors"),
            format!("{label}: failed requests"),
            Kind::Errors,
            load.errors as f64,
        );
    }

    /// Propagation figures; `key` names them (`{key}_p50_ms`…).
    fn latency(&mut self, key: &str, label: &str, lat: &Latencies) {
        let sorted = lat.sorted();
        for p in [50, 99] {
            self.add(
                format!("{key}_p{p}_ms"),
                format!("{label} p{p} ms"),
                Kind::Millis,
                pct(&sorted, p as f64 / 100.0),
            );
        }
        self.add(
            format!("{key}_probes"),
            format!("{label}: probes"),
            Kind::Count,
            sorted.len() as f64,
        );
        self.add(
            format!("{key}_probe_failures"),
            format!("{label}: failed probes"),
            Kind::Errors,
            lat.failures as f64,
        );
    }

    /// Figures derived from others (after the medians).
    fn derive(&mut self) {
        if let (Some(c16), Some(seq)) = (self.get("c16_spread_tx_per_s"), self.get("seq_tx_per_s"))
        {
            self.add(
                "c16_spread_over_seq",
                "c16 spread tx/s / seq tx/s",
                Kind::Ratio,
                c16 / seq,
            );
        }
    }

    /// Per figure, the median over `runs` (errors: the total).
    fn combine(runs: &[Figures]) -> Figures {
        let mut out = Figures::default();
        for run in runs {
            for f in &run.0 {
                if out.0.iter().all(|o| o.key != f.key) {
                    let values = runs.iter().filter_map(|r| r.get(&f.key));
                    let value = if f.kind == Kind::Errors {
                        values.sum()
                    } else {
                        median(values.collect())
                    };
                    out.add(f.key.clone(), f.label.clone(), f.kind, value);
                }
            }
        }
        out
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// Percentile `p` (0..1) of `sorted`; NaN if empty.
fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

// ---------------------------------------------------------------- meshes

/// What every agent is started with: the mesh CA, node certificates n0…,
/// and the schema.
struct Setup {
    ca_pem: String,
    certs: PathBuf,
    schema: String,
}

impl Setup {
    /// A CA and certificates for `nodes` agents, in `dir`.
    fn new(dir: &Path, nodes: usize) -> Setup {
        let ca = dir.join("ca");
        let certs = dir.join("certs");
        assert!(run(&["tls", "ca", "--out", &s(&ca)]).status.success());
        for i in 0..nodes {
            let ok = run(&[
                "tls",
                "node",
                "--ca-dir",
                &s(&ca),
                "--name",
                &format!("n{i}"),
                "--out",
                &s(&certs),
            ])
            .status
            .success();
            assert!(ok, "certificate of n{i}");
        }
        let schema = dir.join("schema.sql");
        std::fs::write(
            &schema,
            "CREATE TABLE items (id TEXT PRIMARY KEY, v INTEGER, note TEXT);",
        )
        .expect("schema");
        Setup {
            ca_pem: s(&ca.join("ca.pem")),
            certs,
            schema: s(&schema),
        }
    }

    /// Starts agent `n{i}` of `bin` in `dir`, joining by `seed`.
    fn agent(&self, bin: &Path, dir: &Path, i: usize, seed: Option<&str>) -> Agent {
        let name = format!("n{i}");
        let db = s(&dir.join(format!("{name}.db")));
        let cert = s(&self.certs.join(format!("{name}.pem")));
        let key = s(&self.certs.join(format!("{name}.key")));
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
            &self.schema,
            "--tls-ca",
            &self.ca_pem,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ];
        if let Some(seed) = seed {
            args.extend(["--seed", seed]);
        }
        Agent::start_bin(bin, dir, &name, &args)
    }
}

/// Running agents; killed when dropped (see [`Mesh::shutdown`]).
struct Mesh {
    agents: Vec<Agent>,
    apis: Vec<String>,
}

/// Starts `n` agents of `bin` in `dir`, every one seeded with agent 0, and
/// waits until each sees all `n` alive, plus 1 s.
fn start_mesh(bin: &Path, n: usize, dir: &Path, setup: &Setup) -> Mesh {
    std::fs::create_dir_all(dir).expect("mesh folder");
    let mut agents: Vec<Agent> = Vec::new();
    for i in 0..n {
        let seed = agents.first().map(|a| a.listen.clone());
        agents.push(setup.agent(bin, dir, i, seed.as_deref()));
    }
    let apis: Vec<String> = agents.iter().map(|a| a.api.clone()).collect();
    let mesh = Mesh { agents, apis };
    eventually(60, &format!("{n} agents see {n} alive"), || {
        mesh.apis.iter().all(|api| {
            fresh(api)
                .members()
                .is_ok_and(|m| m.iter().filter(|x| x.state == MemberState::Alive).count() == n)
        })
    });
    thread::sleep(Duration::from_secs(1));
    mesh
}

impl Mesh {
    fn len(&self) -> usize {
        self.apis.len()
    }

    /// The API addresses of every agent but `i`.
    fn others(&self, i: usize) -> Vec<String> {
        let mut others = self.apis.clone();
        others.remove(i);
        others
    }

    /// SIGTERM to every agent, then up to 15 s for them to exit; those
    /// still running are killed when the mesh is dropped.
    fn shutdown(mut self) {
        let pids: Vec<String> = self
            .agents
            .iter()
            .map(|a| a.child.id().to_string())
            .collect();
        let _ = Command::new("kill").arg("-TERM").args(&pids).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        for a in &mut self.agents {
            while matches!(a.child.try_wait(), Ok(None)) {
                if Instant::now() > deadline {
                    eprintln!("  agent {} did not exit after SIGTERM: killed", a.name);
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

// ---------------------------------------------------------------- load

/// A client of the agent at `api` with a connection of its own.
fn fresh(api: &str) -> Client {
    Client::builder().timeout(TIMEOUT).build(api)
}

fn insert(id: String, v: i64, note: &str) -> Statement {
    Statement::new("INSERT INTO items VALUES (?, ?, ?)")
        .bind(id)
        .bind(v)
        .bind(note)
}

/// What a load phase did.
struct Load {
    tx_per_s: f64,
    errors: u64,
}

/// What one writing client did.
#[derive(Default)]
struct Tally {
    ok: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn merge(mut self, other: Tally) -> Tally {
        self.ok += other.ok;
        self.errors += other.errors;
        self.first_error = self.first_error.or(other.first_error);
        self
    }

    fn into_load(self, what: &str, elapsed: Duration) -> Load {
        if let Some(e) = &self.first_error {
            eprintln!("  {what}: {} failed requests, the first: {e}", self.errors);
        }
        Load {
            tx_per_s: self.ok as f64 / elapsed.as_secs_f64(),
            errors: self.errors,
        }
    }
}

/// Single-row transactions through `client` (keys `{prefix}-{n}`) until
/// `until`.
fn write_loop(client: &Client, prefix: &str, until: Instant) -> Tally {
    let mut t = Tally::default();
    let mut n = 0;
    while Instant::now() < until {
        match client.execute(&[insert(format!("{prefix}-{n}"), n, prefix)]) {
            Ok(_) => t.ok += 1,
            Err(e) => {
                t.errors += 1;
                t.first_error.get_or_insert_with(|| e.to_string());
                thread::sleep(Duration::from_millis(10)); // no busy loop on a dead agent
            }
        }
        n += 1;
    }
    t
}

/// Phase 1: one client writing to agent 0 for `secs`.
fn sequential(mesh: &Mesh, secs: Duration) -> Load {
    let start = Instant::now();
    let tally = write_loop(&fresh(&mesh.apis[0]), "seq", start + secs);
    tally.into_load("seq", start.elapsed())
}

#[derive(Clone, Copy)]
enum Placement {
    /// Client i writes to agent i % N.
    Spread,
    /// Every client writes to agent 0.
    One,
}

impl Placement {
    fn name(self) -> &'static str {
        match self {
            Placement::Spread => "spread",
            Placement::One => "one",
        }
    }

    fn agent(self, client: usize, agents: usize) -> usize {
        match self {
            Placement::Spread => client % agents,
            Placement::One => 0,
        }
    }
}

/// Phase 2: `clients` threads writing for `secs` (keys `{key}-{client}-n`),
/// with a [`Prober`] alongside if there is more than one agent.
fn concurrent(
    mesh: &Mesh,
    clients: usize,
    placement: Placement,
    secs: Duration,
    key: &str,
) -> (Load, Option<Latencies>) {
    let prober = (mesh.len() > 1).then(|| Prober::new(mesh, format!("probe-{key}")));
    let start = Instant::now();
    let until = start + secs;
    thread::scope(|s| {
        let probing = prober.as_ref().map(|p| s.spawn(move || p.run(until)));
        let writers: Vec<_> = (0..clients)
            .map(|i| {
                let api = &mesh.apis[placement.agent(i, mesh.len())];
                let prefix = format!("{key}-{i}");
                s.spawn(move || write_loop(&fresh(api), &prefix, until))
            })
            .collect();
        let tally = writers
            .into_iter()
            .map(|w| w.join().expect("writer thread"))
            .fold(Tally::default(), Tally::merge);
        let load = tally.into_load(key, start.elapsed());
        (load, probing.map(|p| p.join().expect("prober thread")))
    })
}

// ---------------------------------------------------------------- propagation

/// Waits on every agent in `apis` (in parallel, each on a new connection)
/// until it has `token`.
fn visible_everywhere(apis: &[String], token: &Token) -> Result<(), String> {
    let after = QueryOptions::after(token.clone()).wait(TOKEN_WAIT);
    let read = |api: &String| {
        fresh(api)
            .query(&Statement::new("SELECT 1"), &after)
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map(drop)
            .map_err(|e| format!("token read on {api}: {e}"))
    };
    thread::scope(|s| {
        let reads: Vec<_> = apis.iter().map(|api| s.spawn(move || read(api))).collect();
        reads.into_iter().try_for_each(|r| {
            r.join()
                .unwrap_or_else(|_| Err("token reader panicked".into()))
        })
    })
}

/// Acknowledged → visible times in ms, and the probes that failed.
#[derive(Default)]
struct Latencies {
    ms: Vec<f64>,
    failures: u64,
    first_error: Option<String>,
}

impl Latencies {
    fn record(&mut self, probe: Result<f64, String>) {
        match probe {
            Ok(ms) => self.ms.push(ms),
            Err(e) => {
                self.failures += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }

    fn sorted(&self) -> Vec<f64> {
        let mut v = self.ms.clone();
        v.sort_by(f64::total_cmp);
        v
    }

    fn report_errors(&self, what: &str) {
        if let Some(e) = &self.first_error {
            eprintln!("  {what}: {} failed probes, the first: {e}", self.failures);
        }
    }
}

/// Writes one row at a time, to the agents in turn, and times until every
/// other agent has it.
struct Prober {
    /// One client per agent, sharing kept-alive connections.
    writers: Vec<Client>,
    apis: Vec<String>,
    prefix: String,
}

impl Prober {
    fn new(mesh: &Mesh, prefix: String) -> Prober {
        let first = fresh(&mesh.apis[0]);
        Prober {
            writers: mesh.apis.iter().map(|a| first.at(a)).collect(),
            apis: mesh.apis.clone(),
            prefix,
        }
    }

    /// Probe `k`: a write to agent k % N; ms from its answer until every
    /// other agent has it.
    fn probe(&self, k: usize) -> Result<f64, String> {
        let w = k % self.writers.len();
        let id = format!("{}-{k}", self.prefix);
        let done = self.writers[w]
            .execute(&[insert(id, k as i64, &self.prefix)])
            .map_err(|e| format!("probe write to {}: {e}", self.apis[w]))?;
        let t0 = Instant::now();
        let mut others = self.apis.clone();
        others.remove(w);
        visible_everywhere(&others, &done.token)?;
        Ok(t0.elapsed().as_secs_f64() * 1000.0)
    }

    /// A probe every [`PROBE_EVERY`] (or as soon as the last one ends, if
    /// it took longer) until `until`.
    fn run(&self, until: Instant) -> Latencies {
        let mut lat = Latencies::default();
        let mut next = Instant::now();
        let mut k = 0;
        while next < until {
            thread::sleep(next.saturating_duration_since(Instant::now()));
            lat.record(self.probe(k));
            k += 1;
            next = (next + PROBE_EVERY).max(Instant::now());
        }
        lat.report_errors(&self.prefix);
        lat
    }

    /// `count` probes, `pause` apart.
    fn run_count(&self, count: usize, pause: Duration) -> Latencies {
        let mut lat = Latencies::default();
        for k in 0..count {
            lat.record(self.probe(k));
            thread::sleep(pause);
        }
        lat.report_errors(&self.prefix);
        lat
    }
}

/// Phase 3: one 5,000-row transaction, then propagation with no load.
fn unloaded(mesh: &Mesh, f: &mut Figures) {
    let w = if mesh.len() > 1 { 1 } else { 0 };
    let stmts: Vec<Statement> = (0..BIG_ROWS)
        .map(|i| insert(format!("bulk-{i}"), i, "bulk row with some text"))
        .collect();
    let t0 = Instant::now();
    match fresh(&mesh.apis[w]).execute(&stmts) {
        Err(e) => eprintln!("  5,000-row transaction: {e}"),
        Ok(done) => {
            f.add(
                "5000_row_tx_s",
                "one 5,000-row tx: s",
                Kind::Secs,
                t0.elapsed().as_secs_f64(),
            );
            if mesh.len() > 1 {
                match visible_everywhere(&mesh.others(w), &done.token) {
                    Ok(()) => f.add(
                        "5000_row_everywhere_s",
                        "  on every other agent after s",
                        Kind::Secs,
                        t0.elapsed().as_secs_f64(),
                    ),
                    Err(e) => eprintln!("  5,000-row transaction: {e}"),
                }
            }
        }
    }
    if mesh.len() > 1 {
        let writes = if mesh.len() >= 20 { 100 } else { 200 };
        let prober = Prober::new(mesh, "prop".into());
        let lat = prober.run_count(writes, Duration::from_millis(5));
        f.latency(
            "propagation",
            &format!("no load, ack -> visible ({writes} writes)"),
            &lat,
        );
    }
}

/// Every phase on a fresh mesh of `n` agents of `bin`.
fn run_mesh(bin: &Path, n: usize, dir: &Path, setup: &Setup, opts: &Options) -> Figures {
    let mesh = start_mesh(bin, n, dir, setup);
    let mut f = Figures::default();
    f.load("seq", "seq", &sequential(&mesh, opts.secs));
    for (clients, placement) in opts.phases(n) {
        let key = format!("c{clients}_{}", placement.name());
        let label = format!("c{clients} {}", placement.name());
        let (load, lat) = concurrent(&mesh, clients, placement, opts.secs, &key);
        f.load(&key, &label, &load);
        if let Some(lat) = lat {
            f.latency(
                &format!("{key}_prop"),
                &format!("{label} ack -> visible"),
                &lat,
            );
        }
    }
    if !opts.quick {
        unloaded(&mesh, &mut f);
    }
    mesh.shutdown();
    f
}

// ---------------------------------------------------------------- output

/// The medians of one mesh size, per binary.
struct Summary {
    n: usize,
    new: Figures,
    old: Option<Figures>,
}

impl Summary {
    fn table(&self, rounds: usize) {
        let with_old = self.old.is_some();
        println!();
        println!(
            "== {} agent{}: medians over {rounds} round{} ==",
            self.n,
            if self.n == 1 { "" } else { "s" },
            if rounds == 1 { "" } else { "s" },
        );
        let mut header = format!("{:<46} {:>10}", "figure", "new");
        if with_old {
            header += &format!(" {:>10} {:>9}", "old", "new/old");
        }
        println!("{header}");
        // Every figure of either binary (a run may have failed), new's order.
        let old_only = self.old.iter().flat_map(|o| &o.0);
        let mut rows: Vec<&Figure> = self.new.0.iter().collect();
        rows.extend(old_only.filter(|o| self.new.0.iter().all(|f| f.key != o.key)));
        for fig in rows {
            let new = self.new.get(&fig.key).unwrap_or(f64::NAN);
            let old = self.old.as_ref().and_then(|o| o.get(&fig.key));
            if fig.kind == Kind::Errors && new == 0.0 && old.unwrap_or(0.0) == 0.0 {
                continue; // no failures: shown in the `name: value` lines only
            }
            let mut line = format!("{:<46} {:>10}", fig.label, fig.kind.show(new));
            if with_old {
                let old = old.unwrap_or(f64::NAN);
                let ratio = if fig.kind.compares() {
                    Kind::Ratio.show(new / old)
                } else {
                    String::new()
                };
                line += &format!(" {:>10} {ratio:>9}", fig.kind.show(old));
            }
            println!("{line}");
        }
    }

    fn lines(&self) {
        print_lines("", self.n, &self.new);
        if let Some(old) = &self.old {
            print_lines("old_", self.n, old);
            if let (Some(new), Some(old)) = (self.new.get("seq_tx_per_s"), old.get("seq_tx_per_s"))
            {
                println!("agent{}_seq_ratio_new_over_old: {:.3}", self.n, new / old);
            }
        }
    }
}

fn print_lines(prefix: &str, n: usize, f: &Figures) {
    for fig in f.0.iter().filter(|fig| !fig.value.is_nan()) {
        println!("{prefix}agent{n}_{}: {}", fig.key, fig.kind.show(fig.value));
    }
    if n == 5 {
        for (name, key) in HISTORICAL {
            if let Some(fig) = f.0.iter().find(|fig| fig.key == key && !fig.value.is_nan()) {
                println!("{prefix}{name}: {}", fig.kind.show(fig.value));
            }
        }
    }
}

/// A lone agent's sequential rate ÷ a 5-agent mesh's, from `figures`.
fn mesh_cost(summaries: &[Summary], figures: impl Fn(&Summary) -> Option<&Figures>) -> Option<f64> {
    let seq = |n| {
        summaries
            .iter()
            .find(|s| s.n == n)
            .and_then(&figures)
            .and_then(|f| f.get("seq_tx_per_s"))
    };
    Some(seq(1)? / seq(5)?)
}

fn main() {
    let opts = Options::parse(std::env::args().skip(1));
    let dir = tempfile::tempdir().expect("tempdir");
    let max_n = opts.agents.iter().copied().max().unwrap_or(1);
    let setup = Setup::new(dir.path(), max_n);
    let mut bins = vec![("new", opts.bin.clone())];
    if let Some(old) = &opts.old_bin {
        bins.push(("old", old.clone()));
    }
    println!(
        "litemesh agent benchmark: agent processes, mutual TLS, loopback, HTTP clients; \
         {:.1} s per load phase{}",
        opts.secs.as_secs_f64(),
        if opts.quick { " (quick)" } else { "" }
    );
    for (label, bin) in &bins {
        println!("{label}: {}", bin.display());
    }

    let mut summaries = Vec::new();
    for &n in &opts.agents {
        let mut runs: Vec<Vec<Figures>> = bins.iter().map(|_| Vec::new()).collect();
        for round in 0..opts.rounds {
            for ((label, bin), runs) in bins.iter().zip(&mut runs) {
                eprintln!("{n} agents, round {}/{}, {label}", round + 1, opts.rounds);
                let mesh_dir = dir.path().join(format!("n{n}-r{round}-{label}"));
                let run = || run_mesh(bin, n, &mesh_dir, &setup, &opts);
                match catch_unwind(AssertUnwindSafe(run)) {
                    Ok(figures) => runs.push(figures),
                    Err(_) => eprintln!("  {n} agents, {label}: the run failed (see above)"),
                }
            }
        }
        let mut medians = runs.iter().map(|r| Figures::combine(r));
        let mut new = medians.next().expect("the new binary's runs");
        new.derive();
        let old = medians.next().map(|mut old| {
            old.derive();
            old
        });
        summaries.push(Summary { n, new, old });
    }

    for summary in &summaries {
        summary.table(opts.rounds);
    }
    let new_cost = mesh_cost(&summaries, |s| Some(&s.new));
    let old_cost = mesh_cost(&summaries, |s| s.old.as_ref());
    if let Some(c) = new_cost {
        let old = old_cost.map_or(String::new(), |o| format!(" (old: {o:.2})"));
        println!("\nmesh cost: lone agent seq tx/s / 5-agent seq tx/s = {c:.2}{old}");
    }
    println!();
    for summary in &summaries {
        summary.lines();
    }
    if let Some(c) = new_cost {
        println!("mesh_cost_x: {c:.2}");
    }
    if let Some(c) = old_cost {
        println!("old_mesh_cost_x: {c:.2}");
    }
}
