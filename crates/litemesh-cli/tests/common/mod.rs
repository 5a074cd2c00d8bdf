//! Helpers: real `litemesh` processes and a small HTTP client.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value as Json;

pub const BIN: &str = env!("CARGO_BIN_EXE_litemesh");

/// Runs `litemesh ARGS…` to completion.
pub fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run litemesh")
}

/// A running agent; killed when dropped.
pub struct Agent {
    pub child: Child,
    pub api: String,
    pub listen: String,
    pub name: String,
    pub stderr_path: PathBuf,
}

impl Agent {
    /// Starts `litemesh agent ARGS…` and waits for its ready line. The
    /// agent's stderr goes to `<dir>/<tag>.stderr`.
    pub fn start(dir: &Path, tag: &str, args: &[&str]) -> Agent {
        match Agent::try_start(dir, tag, args) {
            Ok(a) => a,
            Err((status, err)) => panic!("agent {tag} did not start ({status:?}): {err}"),
        }
    }

    /// Like [`Agent::start`], but returns the exit status and stderr if the
    /// agent exits before it is ready.
    pub fn try_start(
        dir: &Path,
        tag: &str,
        args: &[&str],
    ) -> Result<Agent, (Option<ExitStatus>, String)> {
        Agent::try_start_bin(Path::new(BIN), dir, tag, args)
    }

    /// Like [`Agent::start`], with the `litemesh` binary at `bin` (e.g. an
    /// older build, to compare with).
    pub fn start_bin(bin: &Path, dir: &Path, tag: &str, args: &[&str]) -> Agent {
        match Agent::try_start_bin(bin, dir, tag, args) {
            Ok(a) => a,
            Err((status, err)) => panic!(
                "agent {tag} ({}) did not start ({status:?}): {err}",
                bin.display()
            ),
        }
    }

    /// Like [`Agent::try_start`], with the `litemesh` binary at `bin`.
    pub fn try_start_bin(
        bin: &Path,
        dir: &Path,
        tag: &str,
        args: &[&str],
    ) -> Result<Agent, (Option<ExitStatus>, String)> {
        let stderr_path = dir.join(format!("{tag}.stderr"));
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let mut child = Command::new(bin)
            .arg("agent")
            .args(args)
            // LITEMESH_TEST_LOG=debug keeps the agents' detailed logs (in
            // the test's folder) when a test needs looking into.
            .env(
                "RUST_LOG",
                std::env::var("LITEMESH_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn litemesh agent");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("litemesh agent ready ") {
                    let _ = tx.send(line);
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(line) => {
                    let field = |k: &str| {
                        line.split_whitespace()
                            .find_map(|w| w.strip_prefix(&format!("{k}=")).map(str::to_string))
                            .expect("ready line field")
                    };
                    return Ok(Agent {
                        api: field("api"),
                        listen: field("listen"),
                        name: field("name"),
                        child,
                        stderr_path,
                    });
                }
                Err(_) => {
                    if let Some(st) = child.try_wait().expect("try_wait") {
                        return Err((
                            Some(st),
                            std::fs::read_to_string(&stderr_path).unwrap_or_default(),
                        ));
                    }
                    if Instant::now() > deadline {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err((
                            None,
                            std::fs::read_to_string(&stderr_path).unwrap_or_default(),
                        ));
                    }
                }
            }
        }
    }

    /// Sends SIGTERM and waits (up to 15 s) for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -TERM failed");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "agent did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP client that returns every status as an answer; reuse one to keep
/// its connections alive.
pub fn client() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

fn agent() -> ureq::Agent {
    client()
}

/// `(status, body text)` of a POST.
pub fn post(api: &str, path: &str, body: impl Into<Vec<u8>>) -> (u16, String) {
    post_with(&agent(), api, path, body)
}

/// `(status, body text)` of a POST through `client`.
pub fn post_with(
    client: &ureq::Agent,
    api: &str,
    path: &str,
    body: impl Into<Vec<u8>>,
) -> (u16, String) {
    let mut r = client
        .post(format!("http://{api}{path}"))
        .header("content-type", "application/json")
        .send(body.into())
        .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    let status = r.status().as_u16();
    let text = r
        .body_mut()
        .with_config()
        .limit(u64::MAX)
        .read_to_string()
        .expect("body");
    (status, text)
}

/// `(status, body text)` of a POST announcing a body of `len` bytes with
/// `Expect: 100-continue`: the body is sent only if the server asks for it
/// (a server refusing the size answers at once, and no half-sent body makes
/// the connection reset before the answer is read).
pub fn post_expect_continue(api: &str, path: &str, len: usize) -> (u16, String) {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(api).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        c,
        "POST {path} HTTP/1.1\r\nHost: {api}\r\nContent-Type: application/json\r\n\
         Content-Length: {len}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match c.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => panic!("read: {e}"),
        }
        let text = String::from_utf8_lossy(&buf);
        assert!(
            !text.starts_with("HTTP/1.1 100"),
            "the server asked for the body: {text}"
        );
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status: {text}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// `(status, body text)` of a GET.
pub fn get(api: &str, path: &str) -> (u16, String) {
    let mut r = agent()
        .get(format!("http://{api}{path}"))
        .call()
        .expect("GET");
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().expect("body");
    (status, text)
}

/// Runs statements as one transaction; panics unless 200. Returns the answer.
pub fn exec(api: &str, statements: Json) -> Json {
    let (st, body) = post(api, "/v1/transactions", statements.to_string());
    assert_eq!(st, 200, "{body}");
    serde_json::from_str(&body).expect("JSON")
}

/// Runs a query; returns `(status, rows)` (rows empty on error).
pub fn query(api: &str, sql: Json, params: &str) -> (u16, Vec<Vec<Json>>, String) {
    let (st, body) = post(api, &format!("/v1/queries{params}"), sql.to_string());
    let mut rows = Vec::new();
    if st == 200 {
        for line in body.lines() {
            let ev: Json = serde_json::from_str(line).expect("event");
            if let Some(r) = ev.get("row") {
                rows.push(r[1].as_array().expect("values").clone());
            }
        }
    }
    (st, rows, body)
}

/// The single integer a query returns.
pub fn scalar(api: &str, sql: &str) -> i64 {
    let (st, rows, body) = query(api, Json::String(sql.into()), "");
    assert_eq!(st, 200, "{body}");
    rows[0][0].as_i64().expect("integer")
}

/// Polls `f` until it returns true, for up to `secs` seconds.
pub fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Writes a schema file and returns its path.
pub fn schema(dir: &Path) -> String {
    let p = dir.join("schema.sql");
    std::fs::write(
        &p,
        "CREATE TABLE items (id TEXT PRIMARY KEY, qty INTEGER, data BLOB);\n",
    )
    .expect("schema");
    p.to_string_lossy().into_owned()
}

pub fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The flags of an insecure agent on `<dir>/<tag>.db` with `schema`.
fn insecure_args(dir: &Path, tag: &str, schema: &str) -> Vec<String> {
    [
        "--db",
        &s(&dir.join(format!("{tag}.db"))),
        "--listen",
        "127.0.0.1:0",
        "--api",
        "127.0.0.1:0",
        "--schema",
        schema,
        "--insecure",
    ]
    .iter()
    .map(|x| x.to_string())
    .collect()
}

/// Starts an insecure agent on `<dir>/<tag>.db` with the test schema.
pub fn insecure_agent(dir: &Path, tag: &str) -> Agent {
    let a = insecure_args(dir, tag, &schema(dir));
    Agent::start(dir, tag, &a.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Starts an insecure agent named `name` on `<dir>/<name>.db` with
/// `schema` and the `extra` flags.
#[allow(dead_code)]
pub fn named_insecure_agent(dir: &Path, name: &str, schema: &str, extra: &[&str]) -> Agent {
    let mut a = insecure_args(dir, name, schema);
    a.extend(["--name", name].iter().chain(extra).map(|x| x.to_string()));
    Agent::start(dir, name, &a.iter().map(String::as_str).collect::<Vec<_>>())
}
