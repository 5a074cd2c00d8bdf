//! The clients: each is bound to a home node (as an application beside its
//! agent), writes there, reads there, and now and then reads on another node
//! with the token of one of its own writes. Every request and answer is
//! recorded as an [`Op`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value as Json, json};

use crate::api::{Answer, Api};
use crate::history::{NodeIx, Op, OpKind, Outcome, Stmt};

/// Rows of a large transaction, and bytes of padding per row: 24 × 12,000
/// bytes, more than one sync batch.
const LARGE_TXN_ROWS: u32 = 24;
const LARGE_TXN_PAD: u32 = 12_000;

/// Number of shared register keys: few, so that nodes write the same cells
/// concurrently.
pub const REGISTER_KEYS: usize = 8;

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
}

/// One client's state.
pub struct Client {
    id: u32,
    home: NodeIx,
    shared: Arc<Shared>,
    cfg: WorkloadConfig,
    rng: ChaCha8Rng,
    api: Api,
    seq: u64,
    /// Recent acknowledged writes: (op id, statements, token).
    recent: VecDeque<(u64, Vec<Stmt>, String)>,
    ops: Vec<Op>,
}

impl Client {
    /// Client `id` with home node `home`, its randomness from `seed`.
    pub fn new(id: u32, home: NodeIx, seed: u64, shared: Arc<Shared>, cfg: WorkloadConfig) -> Self {
        let api = Api::new(cfg.write_timeout + cfg.token_wait);
        Client {
            id,
            home,
            shared,
            rng: ChaCha8Rng::seed_from_u64(seed ^ (u64::from(id) << 32) ^ 0xc11e),
            cfg,
            api,
            seq: 0,
            recent: VecDeque::new(),
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

    fn key(&mut self) -> String {
        format!("k{}", self.rng.random_range(0..REGISTER_KEYS))
    }

    fn set_register(&mut self) -> Stmt {
        let seq = self.next_seq();
        Stmt::SetRegister {
            key: self.key(),
            value: format!("c{}-{seq}", self.id),
        }
    }

    fn step(&mut self) {
        let roll = self.rng.random_range(0..100);
        match roll {
            // Now and then a transaction larger than a sync batch (256 KiB):
            // its version travels in chunks and must be seen whole.
            0..30 if self.rng.random_bool(0.006) => {
                let s = self.events(LARGE_TXN_ROWS, LARGE_TXN_PAD);
                self.write(s);
            }
            0..30 => {
                let s = self.events(1, 0);
                self.write(s);
            }
            30..42 => {
                let n = self.rng.random_range(2..=6);
                let mut s = self.events(n, 0);
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
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        self.ops.push(Op {
            id,
            client: self.id,
            node,
            invoke,
            complete: self.shared.now(),
            kind,
            outcome,
        });
        id
    }

    fn write(&mut self, stmts: Vec<Stmt>) {
        let body: Vec<Json> = stmts.iter().map(|s| stmt_json(s, self.id)).collect();
        let api = self.shared.apis[self.home].clone();
        let invoke = self.shared.now();
        let answer = self.api.post(&api, "/v1/transactions", &Json::Array(body));
        let (outcome, token, version) = match answer {
            Answer::Ok(body) => {
                let v: Json = serde_json::from_str(&body).unwrap_or(Json::Null);
                match v["token"].as_str() {
                    Some(t) => (Outcome::Ok, Some(t.to_string()), parse_token(t)),
                    None => (
                        Outcome::Unknown(format!("200 without a token: {body}")),
                        None,
                        None,
                    ),
                }
            }
            other => (classify(other), None, None),
        };
        // A transaction that changed nothing (a delete of a missing row) has
        // no version to name: nothing to read back with its token.
        let ok = outcome == Outcome::Ok && version.is_some();
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
    }

    fn count_events(&mut self) {
        let api = self.shared.apis[self.home].clone();
        let invoke = self.shared.now();
        let r = self
            .api
            .query(&api, "SELECT count(*) FROM events", json!([]), None);
        let (count, outcome) = single_count(r);
        self.record(self.home, invoke, OpKind::CountEvents { count }, outcome);
    }

    fn txn_check(&mut self) {
        let n = self.shared.seqs.len();
        let writer = self.rng.random_range(0..n) as u32;
        let from_seq = self.shared.seqs[writer as usize]
            .load(Ordering::Relaxed)
            .saturating_sub(200);
        let api = self.shared.apis[self.home].clone();
        let invoke = self.shared.now();
        let r = self.api.query(
            &api,
            "SELECT txn, count(*), max(size) FROM events WHERE client = ? AND seq >= ? \
             GROUP BY txn HAVING count(*) <> max(size)",
            json!([writer, from_seq]),
            None,
        );
        let (partial, outcome) = match r {
            Ok(rows) => {
                let p: Vec<(String, u64, u64)> = rows
                    .iter()
                    .map(|r| {
                        let n = |i: usize| r.get(i).and_then(Json::as_u64).unwrap_or(0);
                        let txn = r.first().and_then(Json::as_str).unwrap_or("?");
                        (txn.to_string(), n(1), n(2))
                    })
                    .collect();
                (Some(p), Outcome::Ok)
            }
            Err(a) => (None, classify(a)),
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
        let api = self.shared.apis[node].clone();
        let wait = self.cfg.token_wait.as_millis() as u64;
        let invoke = self.shared.now();
        let r = self.api.query(
            &api,
            "SELECT v FROM registers WHERE k = ?",
            json!([key]),
            after.as_ref().map(|(_, t)| (t.as_str(), wait)),
        );
        let (value, outcome) = match r {
            Ok(rows) => match rows.as_slice() {
                [] => (Some(None), Outcome::Ok),
                [row] => (
                    Some(row.first().and_then(Json::as_str).map(str::to_string)),
                    Outcome::Ok,
                ),
                _ => (None, Outcome::Unknown(format!("several rows: {rows:?}"))),
            },
            Err(a) => (None, classify(a)),
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
                let api = self.shared.apis[node].clone();
                let wait = self.cfg.token_wait.as_millis() as u64;
                let invoke = self.shared.now();
                let r = self.api.query(
                    &api,
                    "SELECT count(*) FROM events WHERE txn = ?",
                    json!([txn]),
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

/// The JSON statement for `s`, written by `client`.
pub fn stmt_json(s: &Stmt, client: u32) -> Json {
    match s {
        Stmt::InsertEvent { id, txn, size, pad } => {
            let seq: u64 = txn
                .rsplit('-')
                .next()
                .and_then(|x| x.parse().ok())
                .unwrap_or(0);
            json!([
                "INSERT INTO events(id, txn, size, client, seq, pad) VALUES (?, ?, ?, ?, ?, ?)",
                [id, txn, size, client, seq, "x".repeat(*pad as usize)]
            ])
        }
        Stmt::SetRegister { key, value } => json!([
            "INSERT INTO registers(k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
            [key, value]
        ]),
        Stmt::DeleteRegister { key } => json!(["DELETE FROM registers WHERE k = ?", [key]]),
        Stmt::Invalid => json!("INSERT INTO no_such_table VALUES (1)"),
    }
}

/// `(actor, version)` of a single-version token `actor:version`.
pub fn parse_token(t: &str) -> Option<(String, u64)> {
    let (a, v) = t.split_once(':')?;
    Some((a.to_string(), v.parse().ok()?))
}

/// The count a `SELECT count(*) …` answered, and the outcome.
fn single_count(r: Result<Vec<Vec<Json>>, Answer>) -> (Option<u64>, Outcome) {
    match r {
        Ok(rows) => match rows.first().and_then(|r| r.first()).and_then(Json::as_u64) {
            Some(c) => (Some(c), Outcome::Ok),
            None => (None, Outcome::Unknown(format!("unexpected rows {rows:?}"))),
        },
        Err(a) => (None, classify(a)),
    }
}

/// The outcome of a non-200 answer: 4xx means refused (for a write: nothing
/// applied); anything else leaves it unknown.
fn classify(a: Answer) -> Outcome {
    match a {
        Answer::Ok(_) => Outcome::Ok,
        Answer::Status(s, body) if (400..500).contains(&s) => {
            Outcome::Failed(format!("{s}: {}", truncate(&body)))
        }
        Answer::Status(s, body) => Outcome::Unknown(format!("{s}: {}", truncate(&body))),
        Answer::Transport(e) => Outcome::Unknown(truncate(&e)),
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(200).collect()
}
