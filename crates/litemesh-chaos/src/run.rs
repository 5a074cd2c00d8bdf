//! One run, inside the namespace: start the mesh, preload it, add a late
//! joiner, start the clients, play the fault schedule, heal, wait for
//! convergence, read the final contents, stop everything, check.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use litemesh_client::{Client as Api, Error, Statement, Value};

use crate::api::{self, describe, rows};
use crate::check::{CheckResult, check};
use crate::cluster::{Cluster, ClusterError, ProcState};
use crate::history::{
    FaultRecord, FinalState, History, JoinRecord, LargeFinal, NodeEnd, NodeIx, NodeRecord, Op,
    OpKind, Outcome, Pinned, Quarantined, Stmt, digest, region_of,
};
use crate::netns::{Firewall, NetError};
use crate::observe::{self, Observed};
use crate::schedule::{Fault, Phase, ScheduleKind, schedule};
use crate::workload::{
    Client, HostileClient, LargeClient, Shared, WorkloadConfig, parse_token, statement,
};

/// Client id of the runner's own preload writes.
pub const PRELOAD_CLIENT: u32 = 1000;

/// Settings of a run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Number of nodes (at least 3).
    pub nodes: usize,
    /// Seed of the schedule and the clients.
    pub seed: u64,
    /// Which schedule.
    pub schedule: ScheduleKind,
    /// Length of the random schedule, in seconds.
    pub duration: f64,
    /// Clients per node.
    pub clients_per_node: usize,
    /// Mean pause between a client's requests.
    pub think: Duration,
    /// Rows in the mesh before the last node joins.
    pub preload: u64,
    /// The `litemesh` binary.
    pub agent_bin: PathBuf,
    /// Where files, logs and results go.
    pub out: PathBuf,
    /// `RUST_LOG` of the agents.
    pub agent_log: String,
    /// How long the final convergence may take before it counts as failed.
    pub converge_deadline: Duration,
    /// Mean pause between hostile requests (zero: none).
    pub hostile_every: Duration,
    /// Mean pause between large-value writes (zero: none).
    pub large_every: Duration,
    /// The agents' retention policy (`--retention`), if any: tombstones of
    /// the registers the workload deletes are collected during the run.
    pub retention: Option<String>,
    /// The agents' `--forget-after`, if set.
    pub forget_after: Option<String>,
}

/// How long the end-of-run health check polls a node that is not yet healthy
/// (lag and reachability need a gossip round to settle after the final
/// convergence).
pub const END_HEALTH_GRACE: Duration = Duration::from_secs(10);

/// A run that could not be carried out (as opposed to one that found
/// anomalies).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Namespace or firewall trouble.
    #[error(transparent)]
    Net(#[from] NetError),
    /// Agent trouble.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

struct Runner {
    cfg: RunConfig,
    cluster: Cluster,
    fw: Firewall,
    shared: Arc<Shared>,
    observed: Arc<Mutex<Observed>>,
    records: Vec<NodeRecord>,
    runner_ops: Vec<Op>,
    /// A client of the first node's API (the preload).
    api: Api,
}

fn say(shared: &Shared, msg: impl AsRef<str>) {
    println!("[{:7.2}s] {}", shared.now(), msg.as_ref());
}

impl Runner {
    fn now(&self) -> f64 {
        self.shared.now()
    }

    /// Forgets node `ix`'s last progress sample (it was killed or is being
    /// restarted): waits must see a sample of the new process.
    fn forget_progress(&self, ix: NodeIx) {
        self.observed.lock().unwrap().latest.remove(&ix);
    }

    fn start_node(&mut self, ix: NodeIx) -> Result<f64, RunError> {
        self.forget_progress(ix);
        match self.cluster.start(ix) {
            Ok(()) => {}
            Err(e) => {
                // One retry: a start failure is itself an anomaly, recorded.
                let t = self.now();
                self.records[ix]
                    .crashes
                    .push((t, "failed to start".into(), e.to_string()));
                say(&self.shared, format!("n{} failed to start: {e}", ix + 1));
                std::thread::sleep(Duration::from_secs(1));
                self.cluster.start(ix)?;
            }
        }
        let t = self.now();
        self.records[ix].started.push(t);
        Ok(t)
    }

    /// Sleeps `secs`, restarting (and recording) any agent that exits on
    /// its own meanwhile.
    fn watch(&mut self, secs: f64) -> Result<(), RunError> {
        let until = Instant::now() + Duration::from_secs_f64(secs.max(0.0));
        loop {
            for (ix, status, tail) in self.cluster.reap_unexpected() {
                let t = self.now();
                say(
                    &self.shared,
                    format!(
                        "ANOMALY: n{} exited unexpectedly ({status}); restarting it",
                        ix + 1
                    ),
                );
                self.records[ix].crashes.push((t, status, tail));
                self.start_node(ix)?;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            std::thread::sleep(left.min(Duration::from_millis(100)));
        }
    }

    /// The mesh's current knowledge: per actor, the highest version any
    /// node holds completely.
    fn mesh_target(&self) -> BTreeMap<String, u64> {
        let o = self.observed.lock().unwrap();
        let mut t: BTreeMap<String, u64> = BTreeMap::new();
        for ct in o.latest.values() {
            for (a, v) in ct {
                let e = t.entry(a.clone()).or_default();
                *e = (*e).max(*v);
            }
        }
        t
    }

    /// Waits until `nodes` all hold `target`; returns the time it took.
    fn wait_hold(
        &mut self,
        nodes: &[NodeIx],
        target: &BTreeMap<String, u64>,
        deadline: Duration,
    ) -> Result<Option<f64>, RunError> {
        let start = Instant::now();
        while start.elapsed() < deadline {
            if self
                .observed
                .lock()
                .unwrap()
                .all_hold(nodes.iter().copied(), target)
            {
                return Ok(Some(start.elapsed().as_secs_f64()));
            }
            self.watch(0.05)?;
        }
        Ok(None)
    }

    fn preload(&mut self) -> Result<(), RunError> {
        let mut seq = 0u64;
        let mut left = self.cfg.preload;
        while left > 0 {
            let n = left.min(1000) as u32;
            seq += 1;
            let txn = format!("c{PRELOAD_CLIENT}-{seq}");
            let stmts: Vec<Stmt> = (0..n)
                .map(|k| Stmt::InsertEvent {
                    id: format!("{txn}-{k}"),
                    txn: txn.clone(),
                    size: n,
                    pad: 0,
                })
                .collect();
            let body: Vec<Statement> = stmts.iter().map(|s| statement(s, PRELOAD_CLIENT)).collect();
            let invoke = self.now();
            let done = self
                .api
                .execute(&body)
                .map_err(|e| RunError::Other(format!("preload failed: {e}")))?;
            let token = Some(done.token.into_string());
            let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
            self.runner_ops.push(Op {
                id,
                client: PRELOAD_CLIENT,
                node: 0,
                invoke,
                complete: self.now(),
                kind: OpKind::Write {
                    stmts,
                    version: token.as_deref().and_then(parse_token),
                    token,
                },
                outcome: Outcome::Ok,
            });
            left -= u64::from(n);
        }
        Ok(())
    }

    /// Starts the last node on an empty file and measures how long it takes
    /// to hold everything the mesh holds, polling it every 10 ms.
    fn join(&mut self, ix: NodeIx, rows: u64) -> Result<JoinRecord, RunError> {
        let target = self.mesh_target();
        let spawned = self.now();
        let ready = self.start_node(ix)?;
        let poll = api::client(&self.cluster.specs[ix].api, Duration::from_millis(500));
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut caught_up = None;
        while Instant::now() < deadline {
            if let Ok(status) = poll.status() {
                let at = self.now();
                let holds = target.iter().all(|(a, n)| {
                    status
                        .complete_through
                        .get(a.as_str())
                        .copied()
                        .unwrap_or(0)
                        >= *n
                });
                if holds {
                    caught_up = Some(at);
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(JoinRecord {
            node: ix,
            rows,
            spawned,
            ready,
            caught_up,
        })
    }

    fn play(&mut self, phase: &Phase) -> Result<FaultRecord, RunError> {
        let addrs: Vec<String> = self.cluster.specs.iter().map(|s| s.ip.clone()).collect();
        let f = &phase.fault;
        let start = self.now();
        say(
            &self.shared,
            format!("fault: {} for {:.1} s", f.label(), phase.hold),
        );
        let mut down = Vec::new();
        match f {
            Fault::Kill { node } => {
                self.cluster.kill(*node);
                self.forget_progress(*node);
                down.push(*node);
            }
            Fault::Pause { node } => {
                self.cluster.pause(*node);
                down.push(*node);
            }
            Fault::Offline { node } => {
                if let Some(why) = self.cluster.terminate(*node, Duration::from_secs(20)) {
                    let t = self.now();
                    self.records[*node].crashes.push((
                        t,
                        why,
                        crate::cluster::log_tail(&self.cluster.specs[*node].log, 30),
                    ));
                }
                down.push(*node);
            }
            Fault::Wipe { node } => {
                self.fw.apply(&f.drop_rules(&addrs))?;
                down.push(*node);
            }
            _ => self.fw.apply(&f.drop_rules(&addrs))?,
        }
        // A killed or terminated node has no process and a paused one does
        // not exit, so `watch` only ever sees real crashes.
        self.watch(phase.hold)?;
        // Checked after the heal below, so that a failing probe does not
        // leave the cut in place.
        let mut probe = Ok(());
        if let Fault::RegionCut {
            region,
            inside,
            outside,
        } = f
        {
            self.report_region_view(region, outside);
            probe = self.region_cut_probe(inside, outside);
        }
        match f {
            Fault::Kill { node } | Fault::Offline { node } => {
                self.start_node(*node)?;
            }
            Fault::Pause { node } => self.cluster.resume(*node),
            Fault::Wipe { node } => {
                self.cluster.kill(*node);
                let db = self.cluster.specs[*node].db.clone();
                for suffix in ["", "-wal", "-shm"] {
                    let mut p = db.clone().into_os_string();
                    p.push(suffix);
                    let _ = std::fs::remove_file(p);
                }
                self.start_node(*node)?;
                self.fw.heal()?;
            }
            _ => self.fw.heal()?,
        }
        probe?;
        let heal = self.now();
        Ok(FaultRecord {
            label: f.label(),
            kind: f.kind().into(),
            start,
            heal,
            down,
        })
    }

    /// At the end of a region cut: what the nodes outside see of the region
    /// (`/v1/status` `regions`): its members reachable and its lag in
    /// seconds. Said in the run's log, as an operator would see it.
    fn report_region_view(&self, region: &str, outside: &[NodeIx]) {
        for &ix in outside {
            let c = api::client(&self.cluster.specs[ix].api, Duration::from_secs(5));
            let line = match c.status() {
                Ok(st) => match st
                    .regions
                    .iter()
                    .find(|r| r.region.as_deref() == Some(region))
                {
                    Some(r) => format!(
                        "n{} sees region {region}: {}/{} members reachable, its writers' lag {:.1} s",
                        ix + 1,
                        r.reachable,
                        r.members,
                        r.max_lag_secs
                    ),
                    None => format!("n{} lists no region {region}", ix + 1),
                },
                Err(e) => format!("n{}: status failed: {e}", ix + 1),
            };
            say(&self.shared, format!("region view: {line}"));
        }
    }

    /// During a region cut, an application whose own agent is inside the
    /// cut region reads a write made outside it: its agent cannot serve
    /// the token (503), so the client falls back on the next agent it was
    /// given, outside, which can. The agent's own `fallback=nearest` has
    /// nobody to forward to (its reachable peers lack the write too) and
    /// must say so. Either failing fails the run.
    fn region_cut_probe(&self, inside: &[NodeIx], outside: &[NodeIx]) -> Result<(), RunError> {
        let (Some(&i), Some(&o)) = (inside.first(), outside.first()) else {
            return Ok(());
        };
        let (api_i, api_o) = (
            self.cluster.specs[i].api.clone(),
            self.cluster.specs[o].api.clone(),
        );
        let fail = |what: String| RunError::Other(format!("region-cut probe: {what}"));
        let id = format!("cut-{:.3}", self.now());
        let done = api::client(&api_o, Duration::from_secs(10))
            .execute(&[Statement::new("INSERT INTO probes (id) VALUES (?)").bind(id.as_str())])
            .map_err(|e| fail(format!("write on n{}: {e}", o + 1)))?;
        let read = Statement::new("SELECT count(*) FROM probes WHERE id = ?").bind(id.as_str());
        let level = litemesh_client::QueryOptions::after(done.token.clone())
            .wait(Duration::from_millis(500));
        // The agent alone, with its own fallback: it cannot, and says why.
        let alone = api::client(&api_i, Duration::from_secs(15))
            .query(&read, &level.clone().fallback_nearest());
        match alone {
            Err(Error::Http {
                status, message, ..
            }) if status.as_u16() == 503 => say(
                &self.shared,
                format!("region-cut probe: n{} alone answers 503: {message}", i + 1),
            ),
            Err(e) => return Err(fail(format!("n{} alone: unexpected {e}", i + 1))),
            Ok(_) => {
                return Err(fail(format!(
                    "n{} served a write made outside its cut-off region",
                    i + 1
                )));
            }
        }
        // The application's client, given its agent and one outside.
        let client = litemesh_client::Client::builder()
            .timeout(Duration::from_secs(15))
            .build_many(&[&api_i, &api_o]);
        let mut rows = client
            .query(&read, &level)
            .map_err(|e| fail(format!("client with a fallback: {e}")))?;
        let n = rows
            .next()
            .and_then(|r| r.ok())
            .and_then(|r| r.first().and_then(Value::as_i64));
        if n != Some(1) || !rows.url().contains(&api_o) {
            return Err(fail(format!(
                "client with a fallback read {n:?} from {}",
                rows.url()
            )));
        }
        say(
            &self.shared,
            format!(
                "region-cut probe: a client of n{} read the write made on n{} through n{} (its fallback)",
                i + 1,
                o + 1,
                o + 1
            ),
        );
        Ok(())
    }

    fn final_state(&self, ix: NodeIx) -> Result<FinalState, RunError> {
        let big = api::client(&self.cluster.specs[ix].api, Duration::from_secs(120));
        let failed = |e: Error| RunError::Other(format!("final read of n{}: {e}", ix + 1));
        let read = |sql: &str| rows(&big, &Statement::new(sql), None).map_err(failed);
        let mut st = FinalState {
            node: ix,
            ..Default::default()
        };
        let text =
            |r: &[Value], i: usize| r.get(i).and_then(Value::as_str).unwrap_or("").to_string();
        for r in read("SELECT id, txn, size FROM events")? {
            let size = r.get(2).and_then(Value::as_u64).unwrap_or(0);
            st.events.insert(text(&r, 0), (text(&r, 1), size));
        }
        for r in read("SELECT k, v FROM registers")? {
            st.registers.insert(text(&r, 0), text(&r, 1));
        }
        for r in read("SELECT id, n FROM counters")? {
            st.counters
                .insert(text(&r, 0), r.get(1).and_then(Value::as_i64));
        }
        // The pinned table, where the node may hold it (elsewhere the API
        // refuses; its file is read once the agent has stopped).
        let pinned = Pinned::chaos();
        if pinned.allows(region_of(ix)) {
            for r in read(&format!("SELECT id, txn FROM {}", pinned.table))? {
                st.pinned.insert(text(&r, 0), text(&r, 1));
            }
        }
        // Large values one at a time, reduced to type, length and digest.
        for r in read("SELECT id FROM large ORDER BY id")? {
            let id = text(&r, 0);
            let one =
                Statement::new("SELECT typeof(v), v FROM large WHERE id = ?").bind(id.as_str());
            let found = rows(&big, &one, None).map_err(failed)?;
            let Some(row) = found.first() else { continue };
            let kind = text(row, 0);
            let bytes = match row.get(1) {
                Some(Value::Text(t)) => t.as_bytes().to_vec(),
                Some(Value::Blob(b)) => b.clone(),
                // A number or NULL: its JSON text.
                Some(other) => serde_json::Value::from(other).to_string().into_bytes(),
                None => Vec::new(),
            };
            st.large.insert(
                id,
                LargeFinal {
                    kind,
                    bytes: bytes.len() as u64,
                    digest: digest(&bytes),
                },
            );
        }
        Ok(st)
    }

    /// One reading of node `ix`'s `/v1/status` and `/v1/health` through
    /// `poll`, its client.
    fn read_end(&self, poll: &Api, waited: f64) -> NodeEnd {
        let mut end = NodeEnd {
            waited,
            ..NodeEnd::default()
        };
        // The status's shape is the API's (a field it lacks does not
        // decode): every field read here is there.
        match poll.status() {
            Ok(s) => {
                end.actor = s.actor.into_string();
                end.apply_failures = s.apply_failures;
                end.serve_failures = s.serve_failures;
                end.max_lag_secs = s.max_lag_secs;
                end.write_error = s.write_error;
                end.placement_rows_refused = s.placement_rows_refused;
                end.placement = s.placement;
                end.tombstones_collected = s.tombstones_collected;
                end.snapshot_catch_up = s
                    .snapshot_catch_up
                    .map(|c| (c.keys_checked, c.rows_dropped, c.rows_rebased, c.complete));
                end.quarantined = s
                    .quarantined
                    .into_iter()
                    .map(|c| Quarantined {
                        actor: c.actor.into_string(),
                        version: c.version,
                        rows: c.rows,
                        error: c.error,
                    })
                    .collect();
            }
            Err(Error::Decode { source, .. }) => {
                end.status_error = Some(format!("/v1/status: bad JSON: {source}"))
            }
            Err(Error::Http { status, body, .. }) => {
                end.status_error = Some(format!(
                    "/v1/status answered {}: {}",
                    status.as_u16(),
                    cut(&body)
                ))
            }
            Err(e) => end.status_error = Some(format!("/v1/status: {}", cut(&describe(&e)))),
        }
        match poll.health() {
            // The agent answers 200 exactly when its verdict is ok, 503 with
            // the issues otherwise.
            Ok(h) if h.is_healthy() => end.health = Some(200),
            Ok(h) => {
                end.health = Some(503);
                end.issues = h
                    .issues
                    .iter()
                    .map(|i| (i.kind.to_string(), i.message.clone()))
                    .collect();
                end.health_detail = Some(cut(&serde_json::to_string(&h).unwrap_or_default()));
            }
            Err(Error::Http { status, body, .. }) => {
                end.health = Some(status.as_u16());
                end.health_detail = Some(cut(&body));
            }
            // A 200 whose body is not a verdict: healthy by its status.
            Err(Error::Decode { .. }) => end.health = Some(200),
            Err(e) => end.health_detail = Some(cut(&describe(&e))),
        }
        end.at = self.now();
        end
    }

    /// Every node's status and health after the final convergence, polled
    /// for up to [`END_HEALTH_GRACE`] until each is clean.
    fn end_states(&mut self) -> Result<Vec<NodeEnd>, RunError> {
        let n = self.cluster.len();
        let addrs: Vec<String> = self.cluster.specs.iter().map(|s| s.api.clone()).collect();
        let poll = api::clients(&addrs, Duration::from_secs(5));
        let start = Instant::now();
        let mut ends: Vec<Option<NodeEnd>> = vec![None; n];
        loop {
            let waited = start.elapsed().as_secs_f64();
            for (ix, end) in ends.iter_mut().enumerate() {
                if !end.as_ref().is_some_and(NodeEnd::clean) {
                    *end = Some(self.read_end(&poll[ix], waited));
                }
            }
            if ends.iter().flatten().all(NodeEnd::clean) || start.elapsed() >= END_HEALTH_GRACE {
                break;
            }
            self.watch(0.25)?;
        }
        Ok(ends.into_iter().flatten().collect())
    }
}

/// At most 2,000 characters of `s`.
fn cut(s: &str) -> String {
    s.chars().take(2000).collect()
}

/// What the files hold of the pinned table, in a line of the run's log
/// (the checker judges it; the summary says its verdict).
fn placement_line(pinned: &Pinned, finals: &[FinalState]) -> String {
    let (mut inside, mut outside) = (Vec::new(), Vec::new());
    for f in finals {
        let name = crate::history::node_name(f.node);
        let allowed = pinned.allows(region_of(f.node));
        let what = match &f.file {
            Some(s) if s.error.is_none() && allowed => format!("{name} {} rows", s.rows),
            Some(s) if s.error.is_none() => format!("{name} {}", s.describe(&pinned.table)),
            _ => format!("{name} unreadable"),
        };
        if allowed {
            inside.push(what)
        } else {
            outside.push(what)
        }
    }
    format!(
        "placement, read in the files: {} in its region: {}; outside: {}",
        pinned.table,
        inside.join(", "),
        outside.join(", ")
    )
}

/// Per actor, the highest acknowledged version among `ops`.
fn acked_target(ops: &[Op]) -> BTreeMap<String, u64> {
    let mut t: BTreeMap<String, u64> = BTreeMap::new();
    for op in ops {
        if let (
            OpKind::Write {
                version: Some((a, v)),
                ..
            },
            Outcome::Ok,
        ) = (&op.kind, &op.outcome)
        {
            let e = t.entry(a.clone()).or_default();
            *e = (*e).max(*v);
        }
    }
    t
}

/// Carries out a run inside the current network namespace; returns the
/// history and what the checker found in it.
pub fn run(cfg: RunConfig) -> Result<(History, CheckResult), RunError> {
    let fw = Firewall::init()?;
    let n = cfg.nodes;
    let mut cluster = Cluster::prepare(&cfg.agent_bin, &cfg.out, n, &cfg.agent_log)?;
    if let Some(r) = &cfg.retention {
        cluster.extra_args = vec!["--retention".into(), r.clone()];
    }
    if let Some(f) = &cfg.forget_after {
        cluster
            .extra_args
            .extend(["--forget-after".to_string(), f.clone()]);
    }
    let clients = n * cfg.clients_per_node;
    // Hostile ATTACH requests name files here; none may ever be created.
    let attach_dir = std::fs::canonicalize(&cfg.out)
        .map_err(|e| RunError::Other(format!("{}: {e}", cfg.out.display())))?
        .join("hostile");
    std::fs::create_dir_all(&attach_dir)
        .map_err(|e| RunError::Other(format!("{}: {e}", attach_dir.display())))?;
    let shared = Arc::new(Shared {
        t0: Instant::now(),
        apis: cluster.specs.iter().map(|s| s.api.clone()).collect(),
        next_id: AtomicU64::new(0),
        seqs: (0..clients).map(|_| AtomicU64::new(0)).collect(),
        stop: AtomicBool::new(false),
        attach_dir,
    });
    let mut r = Runner {
        records: cluster
            .specs
            .iter()
            .map(|s| NodeRecord {
                name: s.name.clone(),
                region: region_of(s.ix).into(),
                ..Default::default()
            })
            .collect(),
        cluster,
        fw,
        shared: shared.clone(),
        observed: Arc::new(Mutex::new(Observed::default())),
        runner_ops: Vec::new(),
        api: api::client(&shared.apis[0], Duration::from_secs(60)),
        cfg: cfg.clone(),
    };
    let stop_observer = Arc::new(AtomicBool::new(false));
    let observer = {
        let (s, st, o) = (shared.clone(), stop_observer.clone(), r.observed.clone());
        std::thread::spawn(move || observe::run(s, st, o))
    };

    // The mesh, without its last node.
    let joiner = n - 1;
    for ix in 0..joiner {
        r.start_node(ix)?;
    }
    say(&shared, format!("{} agents ready", joiner));
    let first: Vec<NodeIx> = (0..joiner).collect();
    r.preload()?;
    let target = acked_target(&r.runner_ops);
    match r.wait_hold(&first, &target, Duration::from_secs(120))? {
        Some(t) => say(
            &shared,
            format!(
                "preloaded {} rows; on all {joiner} nodes after {t:.2} s",
                cfg.preload
            ),
        ),
        None => {
            return Err(RunError::Other(
                "the preload never reached every node".into(),
            ));
        }
    }

    // The late joiner.
    let join = r.join(joiner, cfg.preload)?;
    match join.caught_up {
        Some(c) => say(
            &shared,
            format!(
                "n{} joined: ready {:.3} s after start, caught up {:.3} s after ready",
                joiner + 1,
                join.ready - join.spawned,
                c - join.ready
            ),
        ),
        None => say(&shared, format!("n{} never caught up", joiner + 1)),
    }

    // The clients.
    let wcfg = WorkloadConfig {
        think: cfg.think,
        write_timeout: Duration::from_secs(5),
        token_wait: Duration::from_secs(2),
        hostile_every: cfg.hostile_every,
        large_every: cfg.large_every,
        register_keys: if cfg.retention.is_some() {
            8 * crate::workload::REGISTER_KEYS
        } else {
            crate::workload::REGISTER_KEYS
        },
    };
    let mut handles: Vec<_> = (0..clients)
        .map(|c| {
            let client = Client::new(c as u32, c % n, cfg.seed, shared.clone(), wcfg.clone());
            std::thread::spawn(move || client.run())
        })
        .collect();
    let mut extra = Vec::new();
    if !wcfg.large_every.is_zero() {
        let c = LargeClient::new(clients as u32, cfg.seed, shared.clone(), &wcfg);
        handles.push(std::thread::spawn(move || c.run()));
        extra.push("a large-value writer");
    }
    if !wcfg.hostile_every.is_zero() {
        let c = HostileClient::new(clients as u32 + 1, cfg.seed, shared.clone(), &wcfg);
        handles.push(std::thread::spawn(move || c.run()));
        extra.push("a hostile client");
    }
    say(
        &shared,
        if extra.is_empty() {
            format!("{clients} clients writing and reading")
        } else {
            format!(
                "{clients} clients writing and reading, and {}",
                extra.join(" and ")
            )
        },
    );
    r.watch(5.0)?;

    // The faults.
    let phases = schedule(cfg.schedule, n, cfg.seed, cfg.duration);
    let mut faults = Vec::new();
    for phase in &phases {
        let rec = r.play(phase)?;
        let target = r.mesh_target();
        let heal = rec.heal;
        faults.push(rec);
        let everyone: Vec<NodeIx> = (0..n).collect();
        let waited = r.wait_hold(&everyone, &target, Duration::from_secs_f64(phase.settle))?;
        match waited {
            Some(t) => say(
                &shared,
                format!("healed; all nodes hold what the mesh held at the heal after {t:.2} s"),
            ),
            None => say(
                &shared,
                format!(
                    "healed; not converged within the {:.0} s settle",
                    phase.settle
                ),
            ),
        }
        let left = phase.settle - (r.now() - heal);
        r.watch(left)?;
    }

    // Quiet: clients stop, everything is healed; wait for convergence.
    shared.stop.store(true, Ordering::Relaxed);
    let mut ops = std::mem::take(&mut r.runner_ops);
    for h in handles {
        ops.extend(
            h.join()
                .map_err(|_| RunError::Other("a client thread panicked".into()))?,
        );
    }
    let quiet_from = r.now();
    r.fw.heal()?;
    for ix in 0..n {
        match r.cluster.state(ix) {
            ProcState::Paused => r.cluster.resume(ix),
            ProcState::Down => {
                r.start_node(ix)?;
            }
            ProcState::Running => {}
        }
    }
    let target = acked_target(&ops);
    let everyone: Vec<NodeIx> = (0..n).collect();
    match r.wait_hold(&everyone, &target, cfg.converge_deadline)? {
        Some(t) => say(
            &shared,
            format!("clients stopped; every acknowledged write on every node after {t:.2} s"),
        ),
        None => say(&shared, "clients stopped; NOT converged by the deadline"),
    }
    // Writes of unknown outcome may have been applied too: before reading
    // the final contents, wait until every node holds all that any node
    // holds (bounded by the same deadline; the checker judges the rest).
    let start = Instant::now();
    while start.elapsed() < cfg.converge_deadline {
        let all = r.mesh_target();
        if r.observed
            .lock()
            .unwrap()
            .all_hold(everyone.iter().copied(), &all)
        {
            break;
        }
        r.watch(0.05)?;
    }
    let members_deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < members_deadline && !r.observed.lock().unwrap().membership_converged(n) {
        r.watch(0.1)?;
    }
    r.watch(0.6)?; // one more membership sample of every node
    say(
        &shared,
        format!(
            "membership converged: {}",
            r.observed.lock().unwrap().membership_converged(n)
        ),
    );
    stop_observer.store(true, Ordering::Relaxed);
    let _ = observer.join();

    let read_from = Instant::now();
    let mut finals = Vec::new();
    for ix in 0..n {
        finals.push(r.final_state(ix)?);
    }
    say(
        &shared,
        format!(
            "final contents read in {:.1} s",
            read_from.elapsed().as_secs_f64()
        ),
    );
    let ends = r.end_states()?;
    let unwell: Vec<String> = ends
        .iter()
        .enumerate()
        .filter(|(_, e)| !e.clean())
        .map(|(ix, _)| crate::history::node_name(ix))
        .collect();
    say(
        &shared,
        if unwell.is_empty() {
            format!(
                "every node healthy, nothing quarantined or failing, after {:.2} s",
                ends.iter().map(|e| e.waited).fold(0.0, f64::max)
            )
        } else {
            format!("NOT healthy at the end: {}", unwell.join(", "))
        },
    );
    for (f, e) in finals.iter_mut().zip(ends) {
        f.end = Some(e);
    }
    for (ix, why) in r.cluster.stop_all() {
        let t = r.now();
        let tail = crate::cluster::log_tail(&r.cluster.specs[ix].log, 30);
        r.records[ix].crashes.push((t, why, tail));
    }
    // What each file holds of the pinned table, read now that no agent
    // runs: on a node outside its region, nothing at all.
    let pinned = Pinned::chaos();
    for f in finals.iter_mut() {
        f.file = Some(crate::placement::scan(
            &r.cluster.specs[f.node].db,
            &pinned.table,
        ));
    }
    let line = placement_line(&pinned, &finals);
    say(&shared, line);
    let observed = std::mem::take(&mut *r.observed.lock().unwrap());
    for (ix, actors) in &observed.actors {
        r.records[*ix].actor = actors.last().cloned().unwrap_or_default();
        r.records[*ix].actors = actors.clone();
    }
    // Files hostile ATTACH requests named: none may exist.
    let mut files_created = Vec::new();
    for op in &ops {
        if let OpKind::Hostile { file: Some(f), .. } = &op.kind {
            for suffix in ["", "-journal", "-wal", "-shm"] {
                let p = format!("{f}{suffix}");
                if std::path::Path::new(&p).exists() {
                    files_created.push(p);
                }
            }
        }
    }
    let history = History {
        seed: cfg.seed,
        nodes: n,
        node_records: r.records.clone(),
        ops,
        faults,
        samples: observed.samples,
        members: observed.members,
        quiet_from,
        finals,
        files_created,
        pinned: Some(pinned),
        join: Some(join),
    };
    let result = check(&history);
    Ok((history, result))
}
