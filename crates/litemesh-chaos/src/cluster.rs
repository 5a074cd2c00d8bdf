//! The agent processes: certificates, start, SIGKILL, SIGSTOP/SIGCONT,
//! graceful stop, restart on the same file, and noticing unexpected exits.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::history::NodeIx;

/// The replicated schema every agent starts with. `pinned_eu`
/// ([`crate::history::PINNED_TABLE`]) is pinned to region `eu`
/// ([`crate::history::PINNED_REGION`]): only `n1` and `n4` may hold it.
/// The column `n` of `counters` ([`crate::history::COUNTER_TABLE`]) is a
/// counter: every node's increments add up, concurrent ones included.
pub const SCHEMA: &str = "\
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    txn TEXT NOT NULL DEFAULT '',
    size INTEGER NOT NULL DEFAULT 1,
    client INTEGER NOT NULL DEFAULT 0,
    seq INTEGER NOT NULL DEFAULT 0,
    pad TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS events_by_writer ON events(client, seq);
CREATE INDEX IF NOT EXISTS events_by_txn ON events(txn);
CREATE TABLE IF NOT EXISTS registers (
    k TEXT PRIMARY KEY,
    v TEXT
);
CREATE TABLE IF NOT EXISTS large (
    id TEXT PRIMARY KEY,
    len INTEGER NOT NULL DEFAULT 0,
    v BLOB,
    note TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS probes (
    id TEXT PRIMARY KEY,
    note TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS pinned_eu (
    id TEXT PRIMARY KEY,
    txn TEXT NOT NULL DEFAULT '',
    client INTEGER NOT NULL DEFAULT 0
) -- litemesh: regions = eu
;
CREATE TABLE IF NOT EXISTS counters (
    id TEXT PRIMARY KEY,
    n INTEGER NOT NULL DEFAULT 0
) -- litemesh: counter = n
;
";

/// A failure to start or drive an agent.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The agent binary is not where it was looked for.
    #[error(
        "agent binary {0} not found: build it first (`cargo build -p litemesh-cli`, \
         or `--release`), or pass --agent-bin"
    )]
    NoBinary(PathBuf),
    /// A file could not be written or read.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// A `litemesh tls …` command failed.
    #[error("making certificates failed: {0}")]
    Tls(String),
    /// The agent exited or stayed silent instead of printing its ready line.
    #[error("agent {name} did not start: {why}; last lines of {log}:\n{tail}")]
    Start {
        /// Node name.
        name: String,
        /// What happened.
        why: String,
        /// Its log file.
        log: String,
        /// The end of its log.
        tail: String,
    },
}

/// Where one node lives.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Index.
    pub ix: NodeIx,
    /// Name (`n1`, …).
    pub name: String,
    /// Its loopback address.
    pub ip: String,
    /// QUIC address.
    pub listen: String,
    /// HTTP API address.
    pub api: String,
    /// SQLite file.
    pub db: PathBuf,
    /// Log file (stderr of every incarnation, appended).
    pub log: PathBuf,
}

/// How the node's process is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcState {
    /// Not started, or stopped on purpose.
    Down,
    /// Running.
    Running,
    /// SIGSTOPped.
    Paused,
}

/// The nodes of a run.
pub struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    log_filter: String,
    /// More flags every agent gets (e.g. `--retention 2s`).
    pub extra_args: Vec<String>,
    /// The nodes.
    pub specs: Vec<NodeSpec>,
    procs: Vec<Option<Child>>,
    state: Vec<ProcState>,
}

impl Cluster {
    /// Prepares `n` nodes in `dir`: certificates from a fresh mesh CA (made
    /// with `litemesh tls`, as an operator would), the schema file, and the
    /// addresses `127.0.0.10`, `127.0.0.11`, …. Starts nothing.
    pub fn prepare(
        bin: &Path,
        dir: &Path,
        n: usize,
        log_filter: &str,
    ) -> Result<Cluster, ClusterError> {
        if !bin.is_file() {
            return Err(ClusterError::NoBinary(bin.to_path_buf()));
        }
        let io = |what: &Path| {
            let w = what.display().to_string();
            move |e| ClusterError::Io(w, e)
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let tls = dir.join("tls");
        run_tls(bin, &["tls", "ca", "--out", &s(&tls)])?;
        let schema = dir.join("schema.sql");
        std::fs::write(&schema, SCHEMA).map_err(io(&schema))?;
        let mut specs = Vec::new();
        for ix in 0..n {
            let name = crate::history::node_name(ix);
            run_tls(
                bin,
                &[
                    "tls",
                    "node",
                    "--ca-dir",
                    &s(&tls),
                    "--name",
                    &name,
                    "--region",
                    crate::history::region_of(ix),
                    "--out",
                    &s(&tls),
                ],
            )?;
            let ip = format!("127.0.0.{}", 10 + ix);
            specs.push(NodeSpec {
                ix,
                listen: format!("{ip}:7000"),
                api: format!("{ip}:8000"),
                db: dir.join(format!("{name}.db")),
                log: dir.join(format!("{name}.log")),
                name,
                ip,
            });
        }
        Ok(Cluster {
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            log_filter: log_filter.into(),
            extra_args: Vec::new(),
            procs: (0..n).map(|_| None).collect(),
            state: vec![ProcState::Down; n],
            specs,
        })
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.specs.len()
    }

    /// Whether there are no nodes.
    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }

    /// The state of node `ix`'s process.
    pub fn state(&self, ix: NodeIx) -> ProcState {
        self.state[ix]
    }

    /// Starts node `ix` (seeded with every other node) and waits for its ready
    /// line.
    pub fn start(&mut self, ix: NodeIx) -> Result<(), ClusterError> {
        let spec = self.specs[ix].clone();
        let tls = self.dir.join("tls");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)
            .map_err(|e| ClusterError::Io(s(&spec.log), e))?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("agent")
            .args(["--db", &s(&spec.db)])
            .args(["--listen", &spec.listen])
            .args(["--api", &spec.api])
            .args(["--name", &spec.name])
            .args(["--schema", &s(&self.dir.join("schema.sql"))])
            .args(["--tls-ca", &s(&tls.join("ca.pem"))])
            .args(["--tls-cert", &s(&tls.join(format!("{}.pem", spec.name)))])
            .args(["--tls-key", &s(&tls.join(format!("{}.key", spec.name)))]);
        for other in self.specs.iter().filter(|o| o.ix != ix) {
            cmd.args(["--seed", &other.listen]);
        }
        cmd.args(&self.extra_args);
        cmd.env("RUST_LOG", &self.log_filter)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        // SAFETY: prctl is async-signal-safe; it makes the agent die with the
        // runner, so no agent outlives a crashed run.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| ClusterError::Io(s(&self.bin), e))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("litemesh agent ready ") {
                    let _ = tx.send(());
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(()) => break,
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {
                    if let Ok(Some(status)) = child.try_wait() {
                        return Err(self.start_error(&spec, format!("exited with {status}")));
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(self.start_error(&spec, "no ready line within 60 s".into()));
                }
            }
        }
        self.procs[ix] = Some(child);
        self.state[ix] = ProcState::Running;
        Ok(())
    }

    fn start_error(&self, spec: &NodeSpec, why: String) -> ClusterError {
        ClusterError::Start {
            name: spec.name.clone(),
            why,
            log: s(&spec.log),
            tail: log_tail(&spec.log, 20),
        }
    }

    fn signal(&self, ix: NodeIx, sig: i32) {
        if let Some(c) = &self.procs[ix] {
            // SAFETY: sending a signal has no memory-safety preconditions.
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }

    /// SIGKILL; waits for the process to be gone.
    pub fn kill(&mut self, ix: NodeIx) {
        self.signal(ix, libc::SIGKILL);
        if let Some(mut c) = self.procs[ix].take() {
            let _ = c.wait();
        }
        self.state[ix] = ProcState::Down;
    }

    /// SIGSTOP.
    pub fn pause(&mut self, ix: NodeIx) {
        self.signal(ix, libc::SIGSTOP);
        self.state[ix] = ProcState::Paused;
    }

    /// SIGCONT.
    pub fn resume(&mut self, ix: NodeIx) {
        self.signal(ix, libc::SIGCONT);
        self.state[ix] = ProcState::Running;
    }

    /// SIGTERM (graceful leave), waiting up to `grace`; SIGKILL after that.
    /// Returns a description of how it ended (`None`: exited 0 in time).
    pub fn terminate(&mut self, ix: NodeIx, grace: Duration) -> Option<String> {
        if self.state[ix] == ProcState::Paused {
            self.resume(ix);
        }
        self.signal(ix, libc::SIGTERM);
        let mut c = self.procs[ix].take()?;
        self.state[ix] = ProcState::Down;
        let deadline = Instant::now() + grace;
        loop {
            match c.try_wait() {
                Ok(Some(st)) if st.success() => return None,
                Ok(Some(st)) => return Some(format!("exited with {st} after SIGTERM")),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = c.kill();
                    let _ = c.wait();
                    return Some(format!(
                        "still running {:.0} s after SIGTERM; killed",
                        grace.as_secs_f64()
                    ));
                }
            }
        }
    }

    /// Nodes that exited without being told to: `(node, exit status, end of
    /// its log)`. They are marked down.
    pub fn reap_unexpected(&mut self) -> Vec<(NodeIx, String, String)> {
        let mut out = Vec::new();
        for ix in 0..self.procs.len() {
            let exited = match &mut self.procs[ix] {
                Some(c) => c.try_wait().ok().flatten(),
                None => None,
            };
            if let Some(st) = exited {
                self.procs[ix] = None;
                self.state[ix] = ProcState::Down;
                out.push((ix, st.to_string(), log_tail(&self.specs[ix].log, 30)));
            }
        }
        out
    }

    /// Stops every node (SIGCONT first for paused ones), gracefully where it
    /// can. Returns the nodes that did not exit cleanly.
    pub fn stop_all(&mut self) -> Vec<(NodeIx, String)> {
        let mut bad = Vec::new();
        for ix in 0..self.procs.len() {
            if self.procs[ix].is_some()
                && let Some(why) = self.terminate(ix, Duration::from_secs(20))
            {
                bad.push((ix, why));
            }
        }
        bad
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for ix in 0..self.procs.len() {
            if self.procs[ix].is_some() {
                self.signal(ix, libc::SIGCONT);
                self.kill(ix);
            }
        }
    }
}

fn run_tls(bin: &Path, args: &[&str]) -> Result<(), ClusterError> {
    let out = Command::new(bin)
        .args(args)
        .output()
        .map_err(|e| ClusterError::Tls(e.to_string()))?;
    if !out.status.success() {
        return Err(ClusterError::Tls(format!(
            "`litemesh {}`: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// The last `lines` lines of a log file (reads at most its last 64 KiB).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut buf = String::new();
    let _ = f.read_to_string(&mut buf);
    let all: Vec<&str> = buf.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{COUNTER_COLUMN, COUNTER_TABLE, PINNED_REGION, PINNED_TABLE};

    /// The `CREATE TABLE` statement of `table` in the schema, up to its `;`.
    fn create_table(table: &str) -> &'static str {
        let start = SCHEMA
            .find(&format!("CREATE TABLE IF NOT EXISTS {table} ("))
            .expect("the table is in the schema");
        &SCHEMA[start..start + SCHEMA[start..].find(';').unwrap()]
    }

    #[test]
    fn the_schema_pins_the_pinned_table_to_its_region() {
        let stmt = create_table(PINNED_TABLE);
        assert!(
            stmt.contains(&format!("-- litemesh: regions = {PINNED_REGION}\n")),
            "{stmt}"
        );
    }

    #[test]
    fn the_schema_declares_the_counter_column() {
        let stmt = create_table(COUNTER_TABLE);
        assert!(
            stmt.contains(&format!(
                "    {COUNTER_COLUMN} INTEGER NOT NULL DEFAULT 0\n"
            )),
            "{stmt}"
        );
        assert!(
            stmt.contains(&format!("-- litemesh: counter = {COUNTER_COLUMN}\n")),
            "{stmt}"
        );
    }
}
