//! The clients: each is bound to a home node (as an application beside its
//! agent), writes there, reads there, and now and then reads on another node
//! with the token of one of its own writes. Beside them, a [`LargeClient`]
//! writes values of megabytes (and rows over the agent's size limit, which
//! must be refused), and a [`HostileClient`] sends statements the API's
//! sandbox must refuse. Clients beside a node of the pinned table's region
//! write rows of it (some in the same transaction as event rows); clients
//! beside a node outside it now and then try to read or write it, which
//! must be refused (403). Clients on every node add to a few shared counters
//! (a column declared `-- litemesh: counter = n`), whatever the faults.
//! Every request and answer is recorded as an [`Op`].

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use litemesh_client::{Client as Api, Error, Statement, Value};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::api::{self, classify, describe, outcome_of, rows, show_rows, truncate};
use crate::history::{
    NodeIx, Op, OpKind, Outcome, PINNED_REGION, PINNED_TABLE, Stmt, large_value, region_of,
};

/// Rows of a large transaction, and bytes of padding per row: 24 × 12,000
/// bytes, more than one sync batch.
const LARGE_TXN_ROWS: u32 = 24;
const LARGE_TXN_PAD: u32 = 12_000;

/// Probability that a request of a client beside a node outside the pinned
/// table's region is an attempt to read or write that table (refused: 403).
const PLACEMENT_PROBE_P: f64 = 0.008;

/// Number of shared register keys: few, so that nodes write the same cells
/// concurrently.
pub const REGISTER_KEYS: usize = 8;

/// Number of shared counters (rows of [`crate::history::COUNTER_TABLE`]):
/// few, so that every node adds to each of them, concurrently and across
/// every fault.
pub const COUNTERS: usize = 8;

/// Probability that a client's request is a counter increment.
const COUNTER_P: f64 = 0.12;

/// The id of counter `i` (`c0`, …, `c7`).
pub fn counter_id(i: usize) -> String {
    format!("c{i}")
}

/// What every client shares.
pub struct Shared {
    /// The run's clock origin.
    pub t0: Instant,
    /// HTTP API address of every node.
    pub apis: Vec<String>,
    /// Next op id.
    pub next_id: AtomicU64,
    /// Each client's next write sequence number (read by others for
    /// transaction checks).
    pub seqs: Vec<AtomicU64>,
    /// Set to stop the clients.
    pub stop: AtomicBool,
    /// An existing folder where hostile `ATTACH` requests name their files
    /// (absolute: the agents resolve it, not the runner).
    pub attach_dir: PathBuf,
}

impl Shared {
    /// Seconds since the start of the run.
    pub fn now(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }
}

/// Workload settings.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    /// Mean pause between a client's requests.
    pub think: Duration,
    /// Timeout of a write request.
    pub write_timeout: Duration,
    /// How long a token read waits on the node (`wait_ms`).
    pub token_wait: Duration,
    /// Mean pause between the hostile client's requests (zero: no hostile
    /// client).
    pub hostile_every: Duration,
    /// Mean pause between the large-value client's writes (zero: no such
    /// client).
    pub large_every: Duration,
    /// Register keys the clients write and delete ([`REGISTER_KEYS`]; more
    /// with a retention policy, so deleted keys stay deleted long enough
    /// for their tombstones to be collected).
    pub register_keys: usize,
}

/// One client's state.
pub struct Client {
    id: u32,
    home: NodeIx,
    shared: Arc<Shared>,
    cfg: WorkloadConfig,
    rng: ChaCha8Rng,
    /// A client of every node's API.
    api: Vec<Api>,
    seq: u64,
    /// Recent acknowledged writes: (op id, statements, token).
    recent: VecDeque<(u64, Vec<Stmt>, String)>,
    /// Its node may hold the pinned table (it is in [`PINNED_REGION`]).
    pinned_home: bool,
    /// Attempts on the pinned table so far (its node outside the region).
    probes: u64,
    /// Per counter: its node holds its row (an upsert of it was
    /// acknowledged there; rows of counters are never deleted), so an
    /// update of it changes it.
    counter_held: [bool; COUNTERS],
    ops: Vec<Op>,
}

impl Client {
    /// Client `id` with home node `home`, its randomness from `seed`.
    pub fn new(id: u32, home: NodeIx, seed: u64, shared: Arc<Shared>, cfg: WorkloadConfig) -> Self {
        let api = api::clients(&shared.apis, cfg.write_timeout + cfg.token_wait);
        Client {
            id,
            home,
            shared,
            rng: ChaCha8Rng::seed_from_u64(seed ^ (u64::from(id) << 32) ^ 0xc11e),
            cfg,
            api,
            seq: 0,
            recent: VecDeque::new(),
            pinned_home: region_of(home) == PINNED_REGION,
            probes: 0,
            counter_held: [false; COUNTERS],
            ops: Vec::new(),
        }
    }

    /// Sends requests until told to stop; returns its history.
    pub fn run(mut self) -> Vec<Op> {
        while !self.shared.stop.load(Ordering::Relaxed) {
            self.step();
            let mean = self.cfg.think.as_secs_f64();
            let pause = self.rng.random_range(0.0..=2.0 * mean);
            std::thread::sleep(Duration::from_secs_f64(pause));
        }
        self.ops
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.shared.seqs[self.id as usize].store(self.seq, Ordering::Relaxed);
        self.seq
    }

    fn events(&mut self, n: u32, pad: u32) -> Vec<Stmt> {
        let seq = self.next_seq();
        let txn = format!("c{}-{seq}", self.id);
        (0..n)
            .map(|k| Stmt::InsertEvent {
                id: format!("{txn}-{k}"),
                txn: txn.clone(),
                size: n,
                pad,
            })
            .collect()
    }

    /// Adds a row of the pinned table to the transaction of the event rows
    /// `s` insert: one transaction across a global and a pinned table.
    fn pin(s: &mut Vec<Stmt>) {
        let txn = s.iter().find_map(|st| match st {
            Stmt::InsertEvent { txn, .. } => Some(txn.clone()),
            _ => None,
        });
        if let Some(txn) = txn {
            s.push(Stmt::InsertPinned {
                id: format!("{txn}-p"),
                txn,
            });
        }
    }

    /// A row of the pinned table alone, as its own transaction.
    fn pinned_only(&mut self) -> Stmt {
        let seq = self.next_seq();
        let txn = format!("c{}-{seq}", self.id);
        Stmt::InsertPinned {
            id: format!("{txn}-p"),
            txn,
        }
    }

    fn key(&mut self) -> String {
        format!(
            "k{}",
            self.rng.random_range(0..self.cfg.register_keys.max(1))
        )
    }

    fn set_register(&mut self) -> Stmt {
        let seq = self.next_seq();
        Stmt::SetRegister {
            key: self.key(),
            value: format!("c{}-{seq}", self.id),
        }
    }

    fn step(&mut self) {
        // Beside a node outside the pinned table's region: now and then an
        // attempt to read or write that table, which must be refused.
        if !self.pinned_home && self.rng.random_bool(PLACEMENT_PROBE_P) {
            return self.placement_probe();
        }
        if self.rng.random_bool(COUNTER_P) {
            return self.add_counter();
        }
        let roll = self.rng.random_range(0..100);
        match roll {
            // Now and then a transaction larger than a sync batch (256 KiB):
            // its version travels in chunks and must be seen whole.
            0..30 if self.rng.random_bool(0.006) => {
                let s = self.events(LARGE_TXN_ROWS, LARGE_TXN_PAD);
                self.write(s);
            }
            // Beside a node of the pinned table's region: a row of it alone
            // (5%), or with the event row in one transaction (15%).
            0..30 if self.pinned_home && self.rng.random_bool(0.05) => {
                let s = vec![self.pinned_only()];
                self.write(s);
            }
            0..30 => {
                let mut s = self.events(1, 0);
                if self.pinned_home && self.rng.random_bool(0.15) {
                    Self::pin(&mut s);
                }
                self.write(s);
            }
            30..42 => {
                let n = self.rng.random_range(2..=6);
                let mut s = self.events(n, 0);
                if self.pinned_home && self.rng.random_bool(0.5) {
                    Self::pin(&mut s);
                }
                if self.rng.random_bool(0.5) {
                    let r = self.set_register();
                    s.push(r);
                }
                self.write(s);
            }
            42..60 => {
                let s = vec![self.set_register()];
                self.write(s);
            }
            60..65 => {
                let key = self.key();
                self.write(vec![Stmt::DeleteRegister { key }]);
            }
            65..67 => {
                let n = self.rng.random_range(1..=3);
                let mut s = self.events(n, 0);
                if self.pinned_home && self.rng.random_bool(0.5) {
                    Self::pin(&mut s);
                }
                s.push(Stmt::Invalid);
                self.write(s);
            }
            67..75 => self.count_events(),
            75..80 => self.txn_check(),
            80..88 => {
                let key = self.key();
                self.read_register(self.home, key, None);
            }
            _ => self.token_read(),
        }
    }

    fn record(&mut self, node: NodeIx, invoke: f64, kind: OpKind, outcome: Outcome) -> u64 {
        record(
            &self.shared,
            &mut self.ops,
            self.id,
            node,
            invoke,
            kind,
            outcome,
        )
    }

    /// Sends `stmts` to its node as one transaction and records it; true if
    /// it was acknowledged.
    fn write(&mut self, stmts: Vec<Stmt>) -> bool {
        let invoke = self.shared.now();
        let (outcome, token, version) = post_write(&self.api[self.home], &stmts, self.id);
        let acked = outcome == Outcome::Ok;
        // A transaction that changed nothing (a delete of a missing row) has
        // no version to name: nothing to read back with its token. Nor has a
        // lone counter increment anything a token read looks for.
        let lone_counter = matches!(stmts.as_slice(), [Stmt::AddCounter { .. }]);
        let ok = acked && version.is_some() && !lone_counter;
        let id = self.record(
            self.home,
            invoke,
            OpKind::Write {
                stmts: stmts.clone(),
                token: token.clone(),
                version,
            },
            outcome,
        );
        if ok && let Some(t) = token {
            self.recent.push_back((id, stmts, t));
            if self.recent.len() > 16 {
                self.recent.pop_front();
            }
        }
        acked
    }

    /// Adds to one of the shared counters on its node: mostly (70%) an
    /// upsert of 1–5, which creates the row if the node lacks it, alone or
    /// (15% of them) in one transaction with an event row; otherwise an
    /// update adding 1–5 (20%) or subtracting 1–3 (10%), sent only once its
    /// node is known to hold the row (else an upsert instead), so that an
    /// update seldom changes nothing. Deltas are small and never 0, so that
    /// the checker can tell exactly which sums the increments of unknown
    /// outcome allow.
    fn add_counter(&mut self) {
        let i = self.rng.random_range(0..COUNTERS);
        let id = counter_id(i);
        let held = self.counter_held[i];
        let (delta, upsert) = match self.rng.random_range(0..100) {
            0..20 if held => (self.rng.random_range(1..=5), false),
            20..30 if held => (-self.rng.random_range(1..=3), false),
            _ => (self.rng.random_range(1..=5), true),
        };
        let mut stmts = if upsert && self.rng.random_bool(0.15) {
            self.events(1, 0)
        } else {
            Vec::new()
        };
        stmts.push(Stmt::AddCounter { id, delta, upsert });
        if self.write(stmts) && upsert {
            self.counter_held[i] = true;
        }
    }

    fn count_events(&mut self) {
        let invoke = self.shared.now();
        let r = rows(
            &self.api[self.home],
            &Statement::new("SELECT count(*) FROM events"),
            None,
        );
        let (count, outcome) = single_count(r);
        self.record(self.home, invoke, OpKind::CountEvents { count }, outcome);
    }

    fn txn_check(&mut self) {
        let n = self.shared.seqs.len();
        let writer = self.rng.random_range(0..n) as u32;
        let from_seq = self.shared.seqs[writer as usize]
            .load(Ordering::Relaxed)
            .saturating_sub(200);
        let invoke = self.shared.now();
        let r = rows(
            &self.api[self.home],
            &Statement::new(
                "SELECT txn, count(*), max(size) FROM events WHERE client = ? AND seq >= ? \
                 GROUP BY txn HAVING count(*) <> max(size)",
            )
            .bind(writer)
            .bind(seq_value(from_seq)),
            None,
        );
        let (partial, outcome) = match r {
            Ok(rows) => {
                let p: Vec<(String, u64, u64)> = rows
                    .iter()
                    .map(|r| {
                        let n = |i: usize| r.get(i).and_then(Value::as_u64).unwrap_or(0);
                        let txn = r.first().and_then(Value::as_str).unwrap_or("?");
                        (txn.to_string(), n(1), n(2))
                    })
                    .collect();
                (Some(p), Outcome::Ok)
            }
            Err(e) => (None, classify(&e)),
        };
        self.record(
            self.home,
            invoke,
            OpKind::TxnCheck {
                writer,
                from_seq,
                partial,
            },
            outcome,
        );
    }

    fn read_register(&mut self, node: NodeIx, key: String, after: Option<(u64, String)>) {
        let wait = self.cfg.token_wait.as_millis() as u64;
        let invoke = self.shared.now();
        let r = rows(
            &self.api[node],
            &Statement::new("SELECT v FROM registers WHERE k = ?").bind(key.as_str()),
            after.as_ref().map(|(_, t)| (t.as_str(), wait)),
        );
        let (value, outcome) = match r {
            Ok(rows) => match rows.as_slice() {
                [] => (Some(None), Outcome::Ok),
                [row] => (
                    Some(row.first().and_then(Value::as_str).map(str::to_string)),
                    Outcome::Ok,
                ),
                _ => (
                    None,
                    Outcome::Unknown(format!("several rows: {}", show_rows(&rows))),
                ),
            },
            Err(e) => (None, classify(&e)),
        };
        let (after, token) = match after {
            Some((id, t)) => (Some(id), Some(t)),
            None => (None, None),
        };
        self.record(
            node,
            invoke,
            OpKind::ReadRegister {
                key,
                token,
                after,
                value,
            },
            outcome,
        );
    }

    /// On its node, outside the pinned table's region: reads or writes the
    /// table, in one of several forms. Each must be refused with 403 (the
    /// table may only be held in its region) and change nothing, not even
    /// the valid event row a transaction across placements also inserts.
    fn placement_probe(&mut self) {
        self.probes += 1;
        let id = format!("P{}-{}", self.id, self.probes);
        let t = PINNED_TABLE;
        let insert = format!(
            "INSERT INTO {t}(id, txn, client) VALUES ('{id}', '{id}', {})",
            self.id
        );
        let mut a = Attack {
            name: "",
            request: Request::Transaction(Vec::new()),
            sql: Vec::new(),
            expect: 403,
            rows: Vec::new(),
            file: None,
        };
        let query = match self.rng.random_range(0..5) {
            0 => {
                a.name = "placement-write";
                a.sql = vec![insert];
                a.rows = vec![id];
                false
            }
            1 => {
                let ev = format!("{id}-ev");
                a.name = "placement-write-with-event";
                a.sql = vec![poison_insert(&ev, self.id), insert];
                a.rows = vec![ev, id];
                false
            }
            2 => {
                a.name = "placement-delete";
                a.sql = vec![format!("DELETE FROM {t} WHERE txn <> ''")];
                false
            }
            3 => {
                a.name = "placement-read";
                a.sql = vec![format!("SELECT id, txn FROM {t} ORDER BY id LIMIT 5")];
                true
            }
            _ => {
                a.name = "placement-read-join";
                a.sql = vec![format!(
                    "SELECT count(*) FROM events e JOIN {t} p ON p.txn = e.txn"
                )];
                true
            }
        };
        a.request = if query {
            Request::Query(Statement::new(a.sql[0].as_str()))
        } else {
            Request::Transaction(a.sql.iter().map(|s| Statement::new(s.as_str())).collect())
        };
        send_hostile(
            &self.shared,
            &self.api[self.home],
            &mut self.ops,
            self.id,
            self.home,
            a,
        );
    }

    /// Reads one of its own recent writes on a random node, with that write's
    /// token: the write (or a later one) must be visible.
    fn token_read(&mut self) {
        if self.recent.is_empty() {
            return self.count_events();
        }
        let i = self.rng.random_range(0..self.recent.len());
        let (op, stmts, token) = self.recent[i].clone();
        let node = self.rng.random_range(0..self.shared.apis.len());
        let register = stmts.iter().find_map(|s| match s {
            Stmt::SetRegister { key, .. } | Stmt::DeleteRegister { key } => Some(key.clone()),
            _ => None,
        });
        let txn = stmts.iter().find_map(|s| match s {
            Stmt::InsertEvent { txn, size, .. } => Some((txn.clone(), *size)),
            _ => None,
        });
        match (txn, register) {
            (Some((txn, size)), reg) if reg.is_none() || self.rng.random_bool(0.5) => {
                let wait = self.cfg.token_wait.as_millis() as u64;
                let invoke = self.shared.now();
                let r = rows(
                    &self.api[node],
                    &Statement::new("SELECT count(*) FROM events WHERE txn = ?").bind(txn.as_str()),
                    Some((&token, wait)),
                );
                let (count, outcome) = single_count(r);
                self.record(
                    node,
                    invoke,
                    OpKind::ReadTxn {
                        txn,
                        size,
                        token,
                        after: op,
                        count,
                    },
                    outcome,
                );
            }
            (_, Some(key)) => self.read_register(node, key, Some((op, token))),
            _ => self.count_events(),
        }
    }
}

/// Records an op of `client`, completed now; returns its id.
fn record(
    shared: &Shared,
    ops: &mut Vec<Op>,
    client: u32,
    node: NodeIx,
    invoke: f64,
    kind: OpKind,
    outcome: Outcome,
) -> u64 {
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    ops.push(Op {
        id,
        client,
        node,
        invoke,
        complete: shared.now(),
        kind,
        outcome,
    });
    id
}

/// Sends `stmts` as one transaction through `api`; returns the outcome, the
/// token and the version it names.
fn post_write(
    api: &Api,
    stmts: &[Stmt],
    client: u32,
) -> (Outcome, Option<String>, Option<(String, u64)>) {
    let body: Vec<Statement> = stmts.iter().map(|s| statement(s, client)).collect();
    match api.execute(&body) {
        Ok(done) => {
            let t = done.token.into_string();
            let version = parse_token(&t);
            (Outcome::Ok, Some(t), version)
        }
        Err(Error::Decode { body, .. }) => (
            Outcome::Unknown(format!("200 without a token: {}", truncate(&body))),
            None,
            None,
        ),
        Err(e) => (classify(&e), None, None),
    }
}

/// A sequence number as an SQL integer.
fn seq_value(seq: u64) -> Value {
    Value::Integer(i64::try_from(seq).expect("sequence numbers fit in an i64"))
}

/// The statement for `s`, written by `client`.
pub fn statement(s: &Stmt, client: u32) -> Statement {
    match s {
        Stmt::InsertEvent { id, txn, size, pad } => {
            let seq: u64 = txn
                .rsplit('-')
                .next()
                .and_then(|x| x.parse().ok())
                .unwrap_or(0);
            Statement::new(
                "INSERT INTO events(id, txn, size, client, seq, pad) VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(id.as_str())
            .bind(txn.as_str())
            .bind(*size)
            .bind(client)
            .bind(seq_value(seq))
            .bind("x".repeat(*pad as usize))
        }
        Stmt::SetRegister { key, value } => Statement::new(
            "INSERT INTO registers(k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
        )
        .bind(key.as_str())
        .bind(value.as_str()),
        Stmt::DeleteRegister { key } => {
            Statement::new("DELETE FROM registers WHERE k = ?").bind(key.as_str())
        }
        Stmt::InsertPinned { id, txn } => Statement::new(format!(
            "INSERT INTO {PINNED_TABLE}(id, txn, client) VALUES (?, ?, ?)"
        ))
        .bind(id.as_str())
        .bind(txn.as_str())
        .bind(client),
        Stmt::Invalid => Statement::new("INSERT INTO no_such_table VALUES (1)"),
        Stmt::AddCounter {
            id,
            delta,
            upsert: true,
        } => Statement::new(
            "INSERT INTO counters(id, n) VALUES (?, ?) \
             ON CONFLICT(id) DO UPDATE SET n = n + excluded.n",
        )
        .bind(id.as_str())
        .bind(*delta),
        Stmt::AddCounter { id, delta, .. } => {
            let (op, by) = if *delta < 0 {
                ("-", -*delta)
            } else {
                ("+", *delta)
            };
            Statement::new(format!("UPDATE counters SET n = n {op} ? WHERE id = ?"))
                .bind(by)
                .bind(id.as_str())
        }
        Stmt::InsertLarge {
            id,
            len,
            seed,
            text,
        } => {
            let bytes = large_value(*seed, *len, *text);
            let v = if *text {
                Value::Text(String::from_utf8(bytes).expect("ASCII"))
            } else {
                Value::Blob(bytes)
            };
            Statement::new("INSERT INTO large(id, len, v) VALUES (?, ?, ?)")
                .bind(id.as_str())
                .bind(*len)
                .bind(v)
        }
    }
}

/// `(actor, version)` of a single-version token `actor:version`.
pub fn parse_token(t: &str) -> Option<(String, u64)> {
    let (a, v) = t.split_once(':')?;
    Some((a.to_string(), v.parse().ok()?))
}

/// The count a `SELECT count(*) …` answered, and the outcome.
fn single_count(r: Result<Vec<Vec<Value>>, Error>) -> (Option<u64>, Outcome) {
    match r {
        Ok(rows) => match rows.first().and_then(|r| r.first()).and_then(Value::as_u64) {
            Some(c) => (Some(c), Outcome::Ok),
            None => (
                None,
                Outcome::Unknown(format!("unexpected rows {}", show_rows(&rows))),
            ),
        },
        Err(e) => (None, classify(&e)),
    }
}

/// Smallest and largest valid large value (bytes): well below the agent's
/// limit of 4 MiB per row write (key and cells), above the 1 MiB past which
/// a version only travels by anti-entropy.
pub const LARGE_MIN: u32 = 1_000_000;
/// See [`LARGE_MIN`].
pub const LARGE_MAX: u32 = 3_900_000;

/// Writes, now and then, a row with a value of 1–3.9 MB on a random node
/// (acknowledged: it must reach every node, identical), or a row write of
/// 5–9 MB in various forms (it must be refused with 413 and never appear).
pub struct LargeClient {
    id: u32,
    shared: Arc<Shared>,
    rng: ChaCha8Rng,
    /// A client of every node's API.
    api: Vec<Api>,
    every: Duration,
    n: u64,
    /// Ids of acknowledged large rows (targets of oversized updates).
    acked: Vec<String>,
    ops: Vec<Op>,
}

impl LargeClient {
    /// Client `id`, its randomness from `seed`.
    pub fn new(id: u32, seed: u64, shared: Arc<Shared>, cfg: &WorkloadConfig) -> Self {
        let api = api::clients(&shared.apis, Duration::from_secs(60));
        LargeClient {
            id,
            shared,
            rng: ChaCha8Rng::seed_from_u64(seed ^ (u64::from(id) << 32) ^ 0x1a26e),
            // Megabytes through a debug-build agent, maybe behind a pause.
            api,
            every: cfg.large_every,
            n: 0,
            acked: Vec::new(),
            ops: Vec::new(),
        }
    }

    /// Writes until told to stop; returns its history.
    pub fn run(mut self) -> Vec<Op> {
        loop {
            let mean = self.every.as_secs_f64();
            let pause = self.rng.random_range(0.2 * mean..=1.8 * mean);
            if sleep_unless_stopped(&self.shared, pause) {
                return self.ops;
            }
            self.step();
        }
    }

    fn step(&mut self) {
        self.n += 1;
        let node = self.rng.random_range(0..self.shared.apis.len());
        if self.rng.random_bool(0.6) {
            let stmt = Stmt::InsertLarge {
                id: format!("L{}-{}", self.id, self.n),
                len: self.rng.random_range(LARGE_MIN..=LARGE_MAX),
                seed: self.rng.random(),
                text: self.rng.random_bool(0.5),
            };
            let invoke = self.shared.now();
            let stmts = vec![stmt];
            let (outcome, token, version) = post_write(&self.api[node], &stmts, self.id);
            if outcome == Outcome::Ok
                && let Some(Stmt::InsertLarge { id, .. }) = stmts.first()
            {
                self.acked.push(id.clone());
            }
            record(
                &self.shared,
                &mut self.ops,
                self.id,
                node,
                invoke,
                OpKind::Write {
                    stmts,
                    token,
                    version,
                },
                outcome,
            );
        } else {
            let a = self.oversized();
            send_hostile(
                &self.shared,
                &self.api[node],
                &mut self.ops,
                self.id,
                node,
                a,
            );
        }
    }

    /// A row write over the limit, in one of several forms.
    fn oversized(&mut self) -> Attack {
        let id = format!("O{}-{}", self.id, self.n);
        let big = self.rng.random_range(5_000_000..=9_000_000u32);
        let insert = "INSERT INTO large(id, len, v) VALUES (?, ?, ?)";
        let mut a = Attack {
            name: "",
            request: Request::Transaction(Vec::new()),
            sql: Vec::new(),
            expect: 413,
            rows: vec![id.clone()],
            file: None,
        };
        let one = |s: Statement| Request::Transaction(vec![s]);
        let roll = self.rng.random_range(0..100);
        match roll {
            // Built by SQL: the request is small, the row is not.
            0..30 => {
                let sql = "INSERT INTO large(id, len, v) VALUES (?, ?, randomblob(?))";
                a.name = "oversized-randomblob";
                a.sql = vec![format!("{sql} -- {big} bytes")];
                a.request = one(Statement::new(sql).bind(id).bind(big).bind(big));
            }
            // A blob parameter (the body stays under the 8 MiB limit).
            30..50 => {
                let len = self.rng.random_range(5_000_000..=6_000_000u32);
                let v = large_value(self.rng.random(), len, false);
                a.name = "oversized-blob-param";
                a.sql = vec![format!("{insert} -- blob parameter of {len} bytes")];
                a.request = one(Statement::new(insert).bind(id).bind(len).bind(v));
            }
            // A text parameter.
            50..62 => {
                let len = self.rng.random_range(5_000_000..=8_000_000u32);
                let v =
                    String::from_utf8(large_value(self.rng.random(), len, true)).expect("ASCII");
                a.name = "oversized-text-param";
                a.sql = vec![format!("{insert} -- text parameter of {len} bytes")];
                a.request = one(Statement::new(insert).bind(id).bind(len).bind(v));
            }
            // Two cells, each under the limit, together over it.
            62..74 => {
                let sql = "INSERT INTO large(id, len, v, note) \
                           VALUES (?, ?, randomblob(2600000), hex(randomblob(1100000)))";
                a.name = "oversized-two-cells";
                a.sql = vec![format!("{sql} -- 4,800,000 bytes in two cells")];
                a.request = one(Statement::new(sql).bind(id).bind(0));
            }
            // After a valid insert in the same transaction: nothing of it
            // may commit.
            74..86 => {
                let ev = format!("{id}-ev");
                let sql = "INSERT INTO large(id, len, v) VALUES (?, ?, randomblob(?))";
                a.name = "oversized-after-valid-insert";
                let first = poison_insert(&ev, self.id);
                a.sql = vec![first.clone(), format!("{sql} -- {big} bytes")];
                a.request = Request::Transaction(vec![
                    Statement::new(first),
                    Statement::new(sql).bind(id).bind(big).bind(big),
                ]);
                a.rows.push(ev);
            }
            // An update of an acknowledged large row: it must keep its value.
            86..95 if !self.acked.is_empty() => {
                let target = self.acked[self.rng.random_range(0..self.acked.len())].clone();
                let sql = "UPDATE large SET v = randomblob(?) WHERE id = ?";
                a.name = "oversized-update";
                a.sql = vec![format!("{sql} -- {big} bytes, row {target}")];
                a.request = one(Statement::new(sql).bind(big).bind(target));
                a.rows.clear();
            }
            // A body over the API's 8 MiB limit (refused before it is read,
            // so the answer may also be a reset connection).
            _ => {
                let len = self.rng.random_range(6_400_000..=7_000_000u32);
                let v = large_value(self.rng.random(), len, false);
                a.name = "oversized-body";
                a.sql = vec![format!(
                    "{insert} -- blob parameter of {len} bytes, body over 8 MiB"
                )];
                a.request = one(Statement::new(insert).bind(id).bind(len).bind(v));
            }
        }
        a
    }
}

/// What an attack sends.
enum Request {
    /// `POST /v1/transactions`.
    Transaction(Vec<Statement>),
    /// `POST /v1/queries`.
    Query(Statement),
}

impl Request {
    fn endpoint(&self) -> &'static str {
        match self {
            Request::Transaction(_) => "/v1/transactions",
            Request::Query(_) => "/v1/queries",
        }
    }
}

/// A request that must be refused.
struct Attack {
    /// Short name.
    name: &'static str,
    request: Request,
    /// What is recorded of the statements.
    sql: Vec<String>,
    expect: u16,
    rows: Vec<String>,
    file: Option<String>,
}

/// `INSERT` of one event row `id` (never inserted by anyone else): valid on
/// its own, so that a refused request that contains it shows whether
/// anything of it committed.
fn poison_insert(id: &str, client: u32) -> String {
    format!(
        "INSERT INTO events(id, txn, size, client, seq) VALUES ('{id}', '{id}', 1, {client}, 0)"
    )
}

/// Sends `a` to `node` (through `api`, its client) and records it. The
/// answer is taken as it comes, whatever its status: the status is the
/// point.
fn send_hostile(
    shared: &Shared,
    api: &Api,
    ops: &mut Vec<Op>,
    client: u32,
    node: NodeIx,
    a: Attack,
) {
    let invoke = shared.now();
    let endpoint = a.request.endpoint();
    let answer = match &a.request {
        Request::Transaction(stmts) => api.post_raw(endpoint, stmts),
        Request::Query(stmt) => api.post_raw(endpoint, stmt),
    };
    let (status, text, outcome) = match answer {
        Ok(r) => {
            let status = r.status.as_u16();
            (Some(status), truncate(&r.body), outcome_of(status, &r.body))
        }
        Err(e) => (None, truncate(&describe(&e)), classify(&e)),
    };
    record(
        shared,
        ops,
        client,
        node,
        invoke,
        OpKind::Hostile {
            attack: a.name.into(),
            endpoint: endpoint.into(),
            sql: a.sql,
            expect: a.expect,
            status,
            rows: a.rows,
            file: a.file,
            answer: Some(text),
        },
        outcome,
    );
}

/// Sleeps `secs` in short steps; true if told to stop meanwhile.
fn sleep_unless_stopped(shared: &Shared, secs: f64) -> bool {
    let until = Instant::now() + Duration::from_secs_f64(secs.max(0.0));
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            return true;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
}

/// Statements the sandbox must refuse in a transaction (403), by name.
const TX_ATTACKS: &[(&str, &str)] = &[
    ("tx-drop-trigger", "DROP TRIGGER \"__lm_ins_events\""),
    ("tx-drop-trigger-upd", "DROP TRIGGER \"__lm_upd_registers\""),
    ("tx-drop-table", "DROP TABLE registers"),
    ("tx-create-table", "CREATE TABLE sneaky(a)"),
    ("tx-create-index", "CREATE INDEX sneaky_pad ON events(pad)"),
    ("tx-alter-table", "ALTER TABLE events ADD COLUMN z"),
    ("tx-pragma-query-only", "PRAGMA query_only = 1"),
    ("tx-pragma-locking-mode", "PRAGMA locking_mode = EXCLUSIVE"),
    (
        "tx-pragma-wal-autocheckpoint",
        "PRAGMA wal_autocheckpoint = 0",
    ),
    ("tx-begin", "BEGIN"),
    ("tx-commit", "COMMIT"),
    ("tx-savepoint", "SAVEPOINT s"),
    ("tx-rollback", "ROLLBACK"),
    ("tx-attach", ""),
    ("tx-delete-lm-log", "DELETE FROM __lm_log"),
    ("tx-update-lm-site", "UPDATE __lm_site SET next_version = 1"),
    (
        "tx-update-lm-site-quoted",
        "UPDATE \"__LM_SITE\" SET next_version = 1",
    ),
    ("tx-read-lm-log", "SELECT * FROM __lm_log"),
    (
        "tx-read-lm-cte",
        "WITH x AS (SELECT * FROM __lm_have) SELECT count(*) FROM x",
    ),
    ("tx-lm-function", "SELECT __lm_seq()"),
    ("tx-insert-lm-function", ""),
];

/// Statements the sandbox must refuse as a query (403), by name.
const QUERY_ATTACKS: &[(&str, &str)] = &[
    ("q-begin", "BEGIN"),
    ("q-attach", ""),
    ("q-pragma-cache-size", "PRAGMA cache_size = 1"),
    ("q-pragma-writable-schema", "PRAGMA writable_schema = 1"),
    ("q-read-lm-log", "SELECT * FROM __lm_log"),
    ("q-lm-function", "SELECT __lm_seq()"),
    ("q-delete", "DELETE FROM events"),
    ("q-insert", ""),
    ("q-create-table", "CREATE TABLE sneaky(a)"),
];

/// Sends, at a modest rate and to random nodes, statements the API's
/// sandbox must refuse: DDL, pragmas, transaction control, ATTACH,
/// litemesh's own tables and functions, writes through the query endpoint.
/// A transaction's forbidden statement often comes with a valid insert of a
/// row nobody else writes: the whole request must fail, and the row never
/// appear.
pub struct HostileClient {
    id: u32,
    shared: Arc<Shared>,
    rng: ChaCha8Rng,
    /// A client of every node's API.
    api: Vec<Api>,
    every: Duration,
    n: u64,
    ops: Vec<Op>,
}

impl HostileClient {
    /// Client `id`, its randomness from `seed`.
    pub fn new(id: u32, seed: u64, shared: Arc<Shared>, cfg: &WorkloadConfig) -> Self {
        let api = api::clients(&shared.apis, cfg.write_timeout + cfg.token_wait);
        HostileClient {
            id,
            shared,
            rng: ChaCha8Rng::seed_from_u64(seed ^ (u64::from(id) << 32) ^ 0xba0),
            api,
            every: cfg.hostile_every,
            n: 0,
            ops: Vec::new(),
        }
    }

    /// Sends requests until told to stop; returns its history.
    pub fn run(mut self) -> Vec<Op> {
        loop {
            let mean = self.every.as_secs_f64();
            let pause = self.rng.random_range(0.0..=2.0 * mean);
            if sleep_unless_stopped(&self.shared, pause) {
                return self.ops;
            }
            self.n += 1;
            let node = self.rng.random_range(0..self.shared.apis.len());
            let a = self.attack();
            send_hostile(
                &self.shared,
                &self.api[node],
                &mut self.ops,
                self.id,
                node,
                a,
            );
        }
    }

    fn attach(&self) -> (String, String) {
        let file = self
            .shared
            .attach_dir
            .join(format!("attach-{}-{}.db", self.id, self.n))
            .display()
            .to_string()
            .replace('\'', "''");
        (format!("ATTACH DATABASE '{file}' AS e"), file)
    }

    fn attack(&mut self) -> Attack {
        let poison = format!("H{}-{}", self.id, self.n);
        let mut a = Attack {
            name: "",
            request: Request::Transaction(Vec::new()),
            sql: Vec::new(),
            expect: 403,
            rows: Vec::new(),
            file: None,
        };
        let query = self.rng.random_bool(0.35);
        let (name, fixed) = if query {
            QUERY_ATTACKS[self.rng.random_range(0..QUERY_ATTACKS.len())]
        } else {
            TX_ATTACKS[self.rng.random_range(0..TX_ATTACKS.len())]
        };
        a.name = name;
        let sql = match name {
            "tx-attach" | "q-attach" => {
                let (sql, file) = self.attach();
                a.file = Some(file);
                sql
            }
            "tx-insert-lm-function" => {
                a.rows.push(poison.clone());
                format!(
                    "INSERT INTO events(id, txn, size, client, seq) \
                     VALUES ('{poison}', '{poison}', 1, {}, __lm_seq())",
                    self.id
                )
            }
            "q-insert" => {
                a.rows.push(poison.clone());
                poison_insert(&poison, self.id)
            }
            _ => fixed.to_string(),
        };
        if query {
            a.request = Request::Query(Statement::new(sql.as_str()));
            a.sql = vec![sql];
            return a;
        }
        // Alone, after a valid insert, or before one: the whole request
        // fails either way.
        let valid = poison_insert(&poison, self.id);
        a.sql = match self.rng.random_range(0..4) {
            0 | 1 if a.rows.is_empty() => {
                a.rows.push(poison);
                vec![valid, sql]
            }
            2 if a.rows.is_empty() => {
                a.rows.push(poison);
                vec![sql, valid]
            }
            _ => vec![sql],
        };
        a.request =
            Request::Transaction(a.sql.iter().map(|s| Statement::new(s.as_str())).collect());
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(delta: i64, upsert: bool) -> Statement {
        let s = Stmt::AddCounter {
            id: counter_id(3),
            delta,
            upsert,
        };
        statement(&s, 0)
    }

    #[test]
    fn counter_increments_add_their_delta_in_every_form() {
        let upsert = add(4, true);
        assert_eq!(
            upsert.sql,
            "INSERT INTO counters(id, n) VALUES (?, ?) ON CONFLICT(id) DO UPDATE SET n = n + excluded.n"
        );
        assert_eq!(upsert.params, vec![Value::from("c3"), Value::Integer(4)]);
        let plus = add(2, false);
        assert_eq!(plus.sql, "UPDATE counters SET n = n + ? WHERE id = ?");
        assert_eq!(plus.params, vec![Value::Integer(2), Value::from("c3")]);
        let minus = add(-3, false);
        assert_eq!(minus.sql, "UPDATE counters SET n = n - ? WHERE id = ?");
        assert_eq!(minus.params, vec![Value::Integer(3), Value::from("c3")]);
    }
}
