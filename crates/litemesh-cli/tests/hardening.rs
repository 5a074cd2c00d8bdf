//! Hardening, through real agents: no input a node accepts stops
//! replication, the API runs only what the docs say, a restarted node is
//! never cut off and never reuses a version, health tells the truth.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::{Value as Json, json};

/// A test's folder: temporary, or kept at `$LITEMESH_TEST_KEEP/<name>` to
/// look into (with `LITEMESH_TEST_LOG=debug` for the agents' logs).
fn folder(name: &str) -> (Option<tempfile::TempDir>, std::path::PathBuf) {
    match std::env::var("LITEMESH_TEST_KEEP") {
        Ok(root) => {
            let p = Path::new(&root).join(name);
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            (None, p)
        }
        Err(_) => {
            let t = tempfile::tempdir().unwrap();
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    }
}

/// A free port (UDP and TCP) on loopback, for agents that must come back at
/// the same address.
fn free_port() -> u16 {
    loop {
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = u.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Starts an insecure agent on `<dir>/<tag>.db` with the test schema and
/// extra flags.
fn agent(dir: &Path, tag: &str, extra: &[&str]) -> Agent {
    let db = s(&dir.join(format!("{tag}.db")));
    let sc = schema(dir);
    let mut args = vec!["--db", &db, "--schema", &sc, "--insecure"];
    if !extra.contains(&"--listen") {
        args.extend(["--listen", "127.0.0.1:0"]);
    }
    if !extra.contains(&"--api") {
        args.extend(["--api", "127.0.0.1:0"]);
    }
    if !extra.contains(&"--name") {
        args.extend(["--name", tag]);
    }
    args.extend_from_slice(extra);
    Agent::start(dir, tag, &args)
}

fn json_get(api: &str, path: &str) -> (u16, Json) {
    let (st, body) = get(api, path);
    (
        st,
        serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {body}")),
    )
}

fn status(api: &str) -> Json {
    let (st, j) = json_get(api, "/v1/status");
    assert_eq!(st, 200, "{j}");
    j
}

fn health(api: &str) -> (u16, Json) {
    json_get(api, "/v1/health")
}

fn issue_kinds(h: &Json) -> Vec<String> {
    h["issues"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i["kind"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn alive(api: &str) -> usize {
    let (_, j) = json_get(api, "/v1/members");
    j.as_array()
        .unwrap()
        .iter()
        .filter(|m| m["state"] == "alive")
        .count()
}

fn count(api: &str) -> i64 {
    scalar(api, "SELECT count(*) FROM items")
}

fn rows(api: &str) -> Vec<Vec<Json>> {
    let (st, rows, body) = query(
        api,
        json!("SELECT id, qty, hex(data) FROM items ORDER BY id"),
        "",
    );
    assert_eq!(st, 200, "{body}");
    rows
}

fn base64_of(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(b.len() * 4 / 3 + 4);
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if c.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

fn kill9(a: &mut Agent) {
    let _ = a.child.kill();
    let _ = a.child.wait();
}

/// (status, error message) of a transaction that must fail.
fn refused(api: &str, statements: Json) -> (u16, String) {
    let (st, body) = post(api, "/v1/transactions", statements.to_string());
    let j: Json = serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    (st, j["error"].as_str().unwrap_or("").to_string())
}

#[test]
fn values_too_large_are_refused_and_large_ones_replicate_even_to_a_restarted_peer() {
    let (_dir, d) =
        folder("values_too_large_are_refused_and_large_ones_replicate_even_to_a_restarted_peer");
    let d = d.as_path();
    let a = agent(d, "a", &[]);
    let b_port = free_port().to_string();
    let b_listen = format!("127.0.0.1:{b_port}");
    let mut b = agent(d, "b", &["--listen", &b_listen, "--seed", &a.listen]);
    eventually(20, "a and b see each other", || {
        alive(&a.api) == 2 && alive(&b.api) == 2
    });
    // One statement making a 9 MB value: refused, nothing committed.
    let v0 = status(&a.api)["db_version"].as_u64().unwrap();
    let (st, msg) = refused(
        &a.api,
        json!(["INSERT INTO items (id, data) VALUES ('nine', randomblob(9000000))"]),
    );
    assert_eq!(st, 413, "{msg}");
    assert!(msg.contains("exceeds the limit of 4194304 bytes"), "{msg}");
    assert_eq!(status(&a.api)["db_version"].as_u64().unwrap(), v0);
    // Growing a value by appends: the append that crosses the limit is refused.
    exec(
        &a.api,
        json!(["INSERT INTO items (id, data) VALUES ('grow', x'')"]),
    );
    let mut last = 0;
    for i in 0..10 {
        let (st, body) = post(
            &a.api,
            "/v1/transactions",
            json!(["UPDATE items SET data = data || hex(randomblob(500000)) WHERE id = 'grow'"])
                .to_string(),
        );
        if st == 413 {
            last = i;
            break;
        }
        assert_eq!(st, 200, "{body}");
    }
    assert!(
        last >= 3,
        "appends up to the limit commit, the one past it is refused"
    );
    // A request body of 4 MB (a 3 MB blob parameter) is within the limits.
    let blob = base64_of(&vec![7u8; 3_000_000]);
    exec(
        &a.api,
        json!([["INSERT INTO items (id, data) VALUES ('param', ?1)", [{ "blob": blob }]]]),
    );
    exec(&a.api, json!(["DELETE FROM items WHERE id = 'param'"]));
    // Large values and the writes after them reach b, also after b restarts.
    exec(
        &a.api,
        json!(["INSERT INTO items (id, data) VALUES ('big', randomblob(3900000))"]),
    );
    eventually(30, "the large values reach b", || {
        scalar(&b.api, "SELECT count(*) FROM items") == 2
    });
    assert_eq!(b.terminate().code(), Some(0));
    drop(b);
    for i in 0..3 {
        exec(
            &a.api,
            json!([[
                "INSERT INTO items (id, qty) VALUES (?1, ?2)",
                [format!("later{i}"), i]
            ]]),
        );
    }
    let b = agent(d, "b", &["--listen", &b_listen]);
    eventually(30, "the restarted peer gets every later row", || {
        count(&b.api) == 5
    });
    eventually(10, "identical", || rows(&a.api) == rows(&b.api));
}

#[test]
fn transactions_may_only_write_replicated_tables() {
    let (_dir, d) = folder("transactions_may_only_write_replicated_tables");
    let d = d.as_path();
    let a = agent(d, "a", &[]);
    let b = agent(d, "b", &["--seed", &a.listen]);
    eventually(20, "a and b see each other", || alive(&a.api) == 2);
    exec(
        &a.api,
        json!(["INSERT INTO items (id, qty) VALUES ('keep', 1)"]),
    );
    let v0 = status(&a.api)["db_version"].as_u64().unwrap();
    let evil = d.join("evil.db");
    let attach = format!("ATTACH DATABASE '{}' AS evil", evil.display());
    for (sql, needle) in [
        ("DROP TRIGGER \"__lm_ins_items\"", "__lm_"),
        ("DROP TABLE items", "schema changes"),
        ("CREATE TABLE sneaky (a)", "schema changes"),
        ("ALTER TABLE items ADD COLUMN z", "schema changes"),
        ("PRAGMA query_only = 1", "PRAGMA query_only"),
        ("PRAGMA locking_mode = EXCLUSIVE", "PRAGMA locking_mode"),
        ("PRAGMA wal_autocheckpoint = 0", "PRAGMA wal_autocheckpoint"),
        ("DELETE FROM __lm_log", "own tables"),
        ("UPDATE __lm_site SET next_version = 1", "own tables"),
        (&attach, "ATTACH"),
        ("COMMIT", "transaction control"),
        ("BEGIN", "transaction control"),
        ("SELECT __lm_seq()", "__lm_"),
    ] {
        let (st, msg) = refused(
            &a.api,
            json!(["INSERT INTO items (id, qty) VALUES ('first', 1)", sql]),
        );
        assert_eq!(st, 403, "{sql}: {msg}");
        assert!(msg.contains(needle), "{sql}: {msg}");
        assert_eq!(
            status(&a.api)["db_version"].as_u64().unwrap(),
            v0,
            "{sql}: nothing committed"
        );
    }
    assert!(!evil.exists(), "ATTACH created no file");
    // Reads, and writes that return rows, run (their rows are not returned).
    let done = exec(
        &a.api,
        json!([
            "SELECT 1",
            "INSERT INTO items (id, qty) VALUES ('ret', 5) RETURNING id"
        ]),
    );
    assert_eq!(
        done["results"],
        json!([{"rows_affected": 0}, {"rows_affected": 1}])
    );
    let (st, msg) = refused(&a.api, json!([{"query": "SELECT ?", "params": [1, 2, 3]}]));
    assert_eq!(st, 400, "{msg}");
    assert!(msg.contains("takes 1 parameter(s), 3 given"), "{msg}");
    assert_eq!(
        scalar(&a.api, "SELECT count(*) FROM items WHERE id = 'first'"),
        0
    );
    // The node still writes, captures and replicates, both ways.
    let done = exec(
        &a.api,
        json!(["UPDATE items SET qty = 2 WHERE id = 'keep'"]),
    );
    let (st, rows, body) = query(
        &b.api,
        json!("SELECT qty FROM items WHERE id = 'keep'"),
        &format!("?min_token={}", done["token"].as_str().unwrap()),
    );
    assert_eq!((st, rows), (200, vec![vec![json!(2)]]), "{body}");
    let done = exec(
        &b.api,
        json!(["INSERT INTO items (id, qty) VALUES ('fromb', 3)"]),
    );
    let (st, _, body) = query(
        &a.api,
        json!("SELECT 1"),
        &format!("?min_token={}", done["token"].as_str().unwrap()),
    );
    assert_eq!(st, 200, "{body}");
    assert_eq!((health(&a.api).0, health(&b.api).0), (200, 200));
}

#[test]
fn queries_only_read_stream_with_limits_and_never_block_each_other() {
    let (_dir, d) = folder("queries_only_read_stream_with_limits_and_never_block_each_other");
    let d = d.as_path();
    let a = agent(d, "a", &["--query-timeout", "4s", "--max-query-rows", "10"]);
    for i in 0..20 {
        exec(
            &a.api,
            json!([[
                "INSERT INTO items (id, qty) VALUES (?1, ?2)",
                [format!("k{i:02}"), i]
            ]]),
        );
    }
    let q = |sql: &str| post(&a.api, "/v1/queries", json!(sql).to_string());
    for (sql, needle) in [
        ("BEGIN", "transaction control"),
        ("ATTACH DATABASE '/tmp/lm-q.db' AS e", "ATTACH"),
        ("PRAGMA cache_size = 1", "PRAGMA cache_size"),
        ("SELECT * FROM __lm_log", "own tables"),
        ("DELETE FROM items", "read-only"),
    ] {
        let (st, body) = q(sql);
        assert_eq!(st, 403, "{sql}: {body}");
        assert!(body.contains(needle), "{sql}: {body}");
    }
    // No read transaction was left open: a write is seen at once.
    let done = exec(
        &a.api,
        json!(["UPDATE items SET qty = 100 WHERE id = 'k00'"]),
    );
    let (st, rows, body) = query(
        &a.api,
        json!("SELECT qty FROM items WHERE id = 'k00'"),
        &format!("?min_token={}", done["token"].as_str().unwrap()),
    );
    assert_eq!((st, rows), (200, vec![vec![json!(100)]]), "{body}");
    // Past the row limit: the rows up to it, then an explicit error event.
    let (st, body) = q("SELECT id FROM items ORDER BY id");
    assert_eq!(st, 200, "{body}");
    let events: Vec<Json> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.iter().filter(|e| e.get("row").is_some()).count(), 10);
    let last = events.last().unwrap();
    assert!(
        last["error"]
            .as_str()
            .unwrap()
            .contains("more than 10 rows"),
        "{body}"
    );
    assert!(
        events.iter().all(|e| e.get("eoq").is_none()),
        "no silent cut"
    );
    let o = run(&["query", "--api", &a.api, "SELECT id FROM items ORDER BY id"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("after 10 row(s)") && err.contains("more than 10 rows"),
        "{err}"
    );
    // A query that never ends is stopped at its time limit, and others run
    // meanwhile.
    let api = a.api.clone();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done2 = done.clone();
    let slow = std::thread::spawn(move || {
        let r = post(
            &api,
            "/v1/queries",
            json!("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c")
                .to_string(),
        );
        done2.store(true, std::sync::atomic::Ordering::SeqCst);
        r
    });
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..5 {
        let (st, body) = q("SELECT count(*) FROM items");
        assert_eq!(st, 200, "{body}");
    }
    assert!(
        !done.load(std::sync::atomic::Ordering::SeqCst),
        "the fast queries finished while the slow one ran"
    );
    let (st, body) = slow.join().unwrap();
    assert_eq!(st, 408, "{body}");
    assert!(body.contains("time limit"), "{body}");
}

#[test]
fn a_client_that_goes_away_stops_its_query() {
    let (_dir, dpath) = folder("a_client_that_goes_away_stops_its_query");
    let a = agent(
        dpath.as_path(),
        "a",
        &["--query-timeout", "120s", "--max-query-rows", "0"],
    );
    // More abandoned endless queries than the node has query connections.
    let endless =
        json!("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c")
            .to_string();
    for _ in 0..8 {
        let mut c = TcpStream::connect(&a.api).unwrap();
        write!(
            c,
            "POST /v1/queries HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{endless}",
            endless.len()
        )
        .unwrap();
        let mut buf = [0u8; 512];
        let n = c.read(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).contains("200 OK"));
        drop(c);
    }
    // Were they still running, every query connection would be held for two
    // minutes and this would wait.
    let client = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build();
    let client: ureq::Agent = client.into();
    let (st, body) = post_with(
        &client,
        &a.api,
        "/v1/queries",
        json!("SELECT 42").to_string(),
    );
    assert_eq!(st, 200, "{body}");
}

#[test]
fn transactions_have_a_time_limit_and_sigterm_stops_whatever_runs() {
    let (_dir, dpath) = folder("transactions_have_a_time_limit_and_sigterm_stops_whatever_runs");
    let mut a = agent(
        dpath.as_path(),
        "a",
        &["--transaction-timeout", "1s", "--query-timeout", "300s"],
    );
    let forever = "INSERT INTO items (id, qty) SELECT 'k' || x, x FROM \
        (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c) WHERE x < 0";
    let (st, msg) = refused(&a.api, json!([forever]));
    assert_eq!(st, 408, "{msg}");
    assert!(msg.contains("time limit"), "{msg}");
    exec(
        &a.api,
        json!(["INSERT INTO items (id, qty) VALUES ('after', 1)"]),
    );
    // A query that would run for five minutes, then SIGTERM.
    let api = a.api.clone();
    let q = std::thread::spawn(move || {
        let mut c = TcpStream::connect(&api).unwrap();
        let body = json!(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
        )
        .to_string();
        write!(
            c,
            "POST /v1/queries HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        let _ = c.read_to_string(&mut out);
        out
    });
    std::thread::sleep(Duration::from_millis(500));
    let st = a.terminate();
    assert_eq!(st.code(), Some(0), "{}", a.stderr());
    let answer = q.join().unwrap();
    assert!(
        !answer.contains("\"row\""),
        "the query was stopped: {answer}"
    );
}

#[test]
fn slow_idle_and_surplus_connections_are_closed_and_idle_ones_make_room() {
    let (_dir, dpath) =
        folder("slow_idle_and_surplus_connections_are_closed_and_idle_ones_make_room");
    let a = agent(
        dpath.as_path(),
        "a",
        &["--http-timeout", "1s", "--max-connections", "4"],
    );
    let closed_within = |c: &mut TcpStream, secs: u64| {
        c.set_read_timeout(Some(Duration::from_secs(secs))).unwrap();
        let mut buf = [0u8; 1024];
        let mut all = Vec::new();
        loop {
            match c.read(&mut buf) {
                Ok(0) => return (true, String::from_utf8_lossy(&all).into_owned()),
                Ok(n) => all.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    return (true, String::from_utf8_lossy(&all).into_owned());
                }
                Err(_) => return (false, String::from_utf8_lossy(&all).into_owned()),
            }
        }
    };
    // Idle connections do not hold the limit: a new one takes the place of
    // the one idle the longest.
    let mut idle: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(&a.api).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let (st, _) = get(&a.api, "/v1/health");
    assert_eq!(
        st, 200,
        "a health check gets through a full house of idle connections"
    );
    let (closed, _) = closed_within(&mut idle[0], 10);
    assert!(closed, "the oldest idle connection made room");
    // Busy connections do hold it: four answers nobody reads.
    let endless = json!("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x, randomblob(100) FROM c").to_string();
    let mut busy: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut c = TcpStream::connect(&a.api).unwrap();
            write!(
                c,
                "POST /v1/queries HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{endless}",
                endless.len()
            )
            .unwrap();
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let mut extra = TcpStream::connect(&a.api).unwrap();
    let _ = write!(extra, "GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n");
    let (closed, text) = closed_within(&mut extra, 10);
    assert!(
        closed && !text.contains("200"),
        "no room while all are busy: {text}"
    );
    // Answers that stall are cut (3 × --http-timeout), and room is back.
    for c in &mut busy {
        let (closed, _) = closed_within(c, 30);
        assert!(closed, "a stalled answer is cut");
    }
    eventually(10, "room again", || get(&a.api, "/v1/health").0 == 200);
    // A body that never completes: 408.
    let mut slow = TcpStream::connect(&a.api).unwrap();
    write!(
        slow,
        "POST /v1/transactions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n[\"INSERT"
    )
    .unwrap();
    let (closed, text) = closed_within(&mut slow, 20);
    assert!(closed && text.contains("408"), "{text}");
    // Headers sent a byte at a time, too slowly: closed.
    let mut drip = TcpStream::connect(&a.api).unwrap();
    write!(drip, "GET /v1/he").unwrap();
    let (closed, _) = closed_within(&mut drip, 10);
    assert!(closed);
    let (_, metrics) = get(&a.api, "/metrics");
    assert!(
        metrics.contains("litemesh_api_connections_refused_total 1"),
        "{metrics}"
    );
}

#[test]
fn a_restarted_first_node_finds_the_mesh_again_and_health_tells_when_it_is_cut_off() {
    let (_dir, d) =
        folder("a_restarted_first_node_finds_the_mesh_again_and_health_tells_when_it_is_cut_off");
    let d = d.as_path();
    let l1 = format!("127.0.0.1:{}", free_port());
    let l2 = format!("127.0.0.1:{}", free_port());
    let l3 = format!("127.0.0.1:{}", free_port());
    // The README's quick start: n1 has no seed.
    let mut n1 = agent(d, "n1", &["--listen", &l1]);
    let mut n2 = agent(d, "n2", &["--listen", &l2, "--seed", &l1]);
    let mut n3 = agent(d, "n3", &["--listen", &l3, "--seed", &l1]);
    eventually(20, "three alive everywhere", || {
        [&n1, &n2, &n3].iter().all(|n| alive(&n.api) == 3)
    });
    // n1 restarts normally, still without a seed: it rejoins.
    assert_eq!(n1.terminate().code(), Some(0));
    drop(n1);
    let n1 = agent(d, "n1", &["--listen", &l1, "--health-max-lag", "3s"]);
    eventually(20, "the restarted n1 sees the mesh", || alive(&n1.api) == 3);
    eventually(20, "and the mesh sees n1", || {
        alive(&n2.api) == 3 && alive(&n3.api) == 3
    });
    let done = exec(
        &n1.api,
        json!(["INSERT INTO items (id, qty) VALUES ('from1', 1)"]),
    );
    let (st, _, body) = query(
        &n2.api,
        json!("SELECT 1"),
        &format!("?min_token={}", done["token"].as_str().unwrap()),
    );
    assert_eq!(st, 200, "{body}");
    let done = exec(
        &n3.api,
        json!(["INSERT INTO items (id, qty) VALUES ('from3', 3)"]),
    );
    let (st, _, body) = query(
        &n1.api,
        json!("SELECT 1"),
        &format!("?min_token={}", done["token"].as_str().unwrap()),
    );
    assert_eq!(st, 200, "{body}");
    eventually(15, "n1 healthy", || health(&n1.api).0 == 200);
    // n2 and n3 crash: n1 reaches one of the three members it knows.
    kill9(&mut n2);
    kill9(&mut n3);
    eventually(30, "n1 says it is cut off", || {
        let (st, h) = health(&n1.api);
        st == 503 && issue_kinds(&h).contains(&"cut_off".to_string())
    });
    // The dead peers keep their metrics, with a growing age.
    let (_, metrics) = get(&n1.api, "/metrics");
    let dead_lines: Vec<&str> = metrics
        .lines()
        .filter(|l| {
            l.starts_with("litemesh_peer_last_sync_age_seconds{") && l.contains("name=\"n2\"")
        })
        .collect();
    assert_eq!(dead_lines.len(), 1, "{metrics}");
    assert!(metrics.contains("litemesh_healthy 0"), "{metrics}");
    let s = status(&n1.api);
    assert_eq!(
        (s["members_reachable"].as_u64(), s["members_known"].as_u64()),
        (Some(1), Some(3))
    );
    // They come back: healthy again.
    drop(n2);
    drop(n3);
    let _n2 = agent(d, "n2", &["--listen", &l2]);
    let _n3 = agent(d, "n3", &["--listen", &l3]);
    eventually(40, "n1 healthy again", || health(&n1.api).0 == 200);
}

#[test]
fn a_node_that_lost_its_wal_never_reuses_a_version() {
    let (_dir, d) = folder("a_node_that_lost_its_wal_never_reuses_a_version");
    let d = d.as_path();
    let la = format!("127.0.0.1:{}", free_port());
    let mut a = agent(d, "a", &["--listen", &la]);
    let b = agent(d, "b", &["--seed", &la]);
    eventually(20, "a and b see each other", || alive(&b.api) == 2);
    let put = |api: &str, id: String, qty: i64| {
        exec(
            api,
            json!([["INSERT INTO items (id, qty) VALUES (?1, ?2)", [id, qty]]]),
        )
    };
    for i in 0..30 {
        put(&a.api, format!("old{i:02}"), i);
    }
    // Everything so far is checkpointed into the main file ...
    {
        let c = rusqlite::Connection::open(d.join("a.db")).unwrap();
        let (busy, log, done): (i64, i64, i64) = c
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!((busy, log), (0, done), "checkpointed");
    }
    // ... these ten only in the WAL, and b has them.
    let mut last = Json::Null;
    for i in 30..40 {
        last = put(&a.api, format!("old{i:02}"), i);
    }
    eventually(20, "b has all 40", || count(&b.api) == 40);
    let old_actor = status(&a.api)["actor"].as_str().unwrap().to_string();
    const UNCLEAN: &str = "did not end with a clean shutdown";
    assert!(
        !a.stderr().contains(UNCLEAN),
        "a new file is no unclean restart: {}",
        a.stderr()
    );
    // a crashes and its WAL is lost.
    kill9(&mut a);
    drop(a);
    std::fs::remove_file(d.join("a.db-wal")).unwrap();
    let _ = std::fs::remove_file(d.join("a.db-shm"));
    let a = agent(d, "a", &["--listen", &la]);
    assert_eq!(
        count(&a.api),
        30,
        "the WAL's ten rows are gone from a's file"
    );
    let new_actor = status(&a.api)["actor"].as_str().unwrap().to_string();
    assert_ne!(new_actor, old_actor, "a writes under a new actor id");
    assert!(a.stderr().contains(UNCLEAN), "and says so: {}", a.stderr());
    for i in 0..5 {
        put(&a.api, format!("new{i}"), 100 + i);
    }
    eventually(20, "b has a's new rows", || count(&b.api) == 45);
    eventually(20, "a got its lost rows back from b", || {
        count(&a.api) == 45
    });
    assert_eq!(rows(&a.api), rows(&b.api));
    // Tokens from before the crash still hold on a.
    let (st, _, body) = query(
        &a.api,
        json!("SELECT 1"),
        &format!("?min_token={}", last["token"].as_str().unwrap()),
    );
    assert_eq!(st, 200, "{body}");
    assert_eq!(
        scalar(&b.api, "SELECT qty FROM items WHERE id = 'old35'"),
        35
    );
}

#[test]
fn one_agent_per_file_whatever_path_names_it() {
    let (_dir, d) = folder("one_agent_per_file_whatever_path_names_it");
    let d = d.as_path();
    let _first = agent(d, "l", &[]);
    std::fs::hard_link(d.join("l.db"), d.join("hard.db")).unwrap();
    std::os::unix::fs::symlink(d.join("l.db"), d.join("soft.db")).unwrap();
    let sc = schema(d);
    for db in [
        s(&d.join("hard.db")),
        s(&d.join("soft.db")),
        s(&d.join("./sub/../l.db")),
    ] {
        std::fs::create_dir_all(d.join("sub")).unwrap();
        let err = Agent::try_start(
            d,
            "second",
            &[
                "--db",
                &db,
                "--schema",
                &sc,
                "--listen",
                "127.0.0.1:0",
                "--api",
                "127.0.0.1:0",
                "--insecure",
            ],
        )
        .err()
        .unwrap_or_else(|| panic!("a second agent on {db} must be refused"));
        assert!(err.1.contains("already in use"), "{db}: {}", err.1);
    }
}

#[test]
fn changes_that_cannot_apply_are_quarantined_loudly_and_released_when_fixed() {
    let (_dir, d) =
        folder("changes_that_cannot_apply_are_quarantined_loudly_and_released_when_fixed");
    let d = d.as_path();
    let base = "CREATE TABLE items (id TEXT PRIMARY KEY, qty INTEGER, data BLOB);\n";
    std::fs::write(d.join("a.sql"), base).unwrap();
    std::fs::write(
        d.join("b.sql"),
        format!("{base}CREATE INDEX items_json ON items(json_extract(data, '$.a'));\n"),
    )
    .unwrap();
    let start = |tag: &str, extra: &[&str]| {
        let db = s(&d.join(format!("{tag}.db")));
        let sc = s(&d.join(format!("{tag}.sql")));
        let mut args = vec![
            "--name",
            tag,
            "--db",
            &db,
            "--schema",
            &sc,
            "--insecure",
            "--listen",
            "127.0.0.1:0",
            "--api",
            "127.0.0.1:0",
            "--health-max-lag",
            "2s",
        ];
        args.extend_from_slice(extra);
        Agent::start(d, tag, &args)
    };
    let a = start("a", &[]);
    let b = start("b", &["--seed", &a.listen]);
    eventually(20, "a and b see each other", || alive(&b.api) == 2);
    // b's index cannot take this value: b cannot apply it.
    exec(
        &a.api,
        json!(["INSERT INTO items (id, data) VALUES ('bad', '{not json')"]),
    );
    for i in 0..5 {
        exec(
            &a.api,
            json!([[
                "INSERT INTO items (id, qty) VALUES (?1, ?2)",
                [format!("ok{i}"), i]
            ]]),
        );
    }
    eventually(20, "later writes still reach b", || count(&b.api) == 5);
    eventually(20, "b says so", || {
        let (st, h) = health(&b.api);
        let kinds = issue_kinds(&h);
        st == 503 && kinds.contains(&"quarantined".into()) && kinds.contains(&"lagging".into())
    });
    let s = status(&b.api);
    let q = &s["quarantined"][0];
    assert!(
        q["error"].as_str().unwrap().contains("malformed JSON"),
        "{s}"
    );
    let (_, metrics) = get(&b.api, "/metrics");
    assert!(
        metrics.contains("litemesh_quarantined_versions 1"),
        "{metrics}"
    );
    // The writer fixes the value; the quarantined change is retried.
    exec(
        &a.api,
        json!(["UPDATE items SET data = '{\"a\": 1}' WHERE id = 'bad'"]),
    );
    eventually(20, "the fix reaches b", || count(&b.api) == 6);
    let (st, body) = post(&b.api, "/v1/quarantine/retry", "");
    assert_eq!(st, 200, "{body}");
    eventually(20, "b healthy again", || health(&b.api).0 == 200);
    assert_eq!(rows(&a.api), rows(&b.api));
}

#[test]
fn health_says_when_the_node_cannot_write() {
    let (_dir, d) = folder("health_says_when_the_node_cannot_write");
    let d = d.as_path();
    let a = agent(d, "a", &[]);
    exec(
        &a.api,
        json!(["INSERT INTO items (id, qty) VALUES ('x', 1)"]),
    );
    assert_eq!(health(&a.api).0, 200);
    // Another process holds the file's write lock.
    let c = rusqlite::Connection::open(d.join("a.db")).unwrap();
    c.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let (st, msg) = refused(
        &a.api,
        json!(["INSERT INTO items (id, qty) VALUES ('y', 2)"]),
    );
    assert_eq!(st, 503, "{msg}");
    eventually(30, "unhealthy: cannot write", || {
        let (st, h) = health(&a.api);
        st == 503 && issue_kinds(&h).contains(&"cannot_write".into())
    });
    c.execute_batch("ROLLBACK").unwrap();
    eventually(30, "healthy again", || health(&a.api).0 == 200);
    exec(
        &a.api,
        json!(["INSERT INTO items (id, qty) VALUES ('y', 2)"]),
    );
}

#[test]
fn health_says_when_the_file_was_removed_under_the_node() {
    let (_dir, d) = folder("health_says_when_the_file_was_removed_under_the_node");
    let d = d.as_path();
    let a = agent(d, "a", &[]);
    exec(
        &a.api,
        json!(["INSERT INTO items (id, qty) VALUES ('x', 1)"]),
    );
    assert_eq!(health(&a.api).0, 200);
    std::fs::remove_file(d.join("a.db")).unwrap();
    eventually(10, "unhealthy: file gone", || {
        let (st, h) = health(&a.api);
        st == 503 && issue_kinds(&h).contains(&"file_gone".into())
    });
}

#[test]
fn lag_is_measured_in_seconds_and_grows_while_a_writer_is_away() {
    let (_dir, d) = folder("lag_is_measured_in_seconds_and_grows_while_a_writer_is_away");
    let d = d.as_path();
    let a = agent(d, "a", &[]);
    let mut b = agent(d, "b", &["--seed", &a.listen]);
    eventually(20, "a and b see each other", || alive(&a.api) == 2);
    exec(
        &b.api,
        json!(["INSERT INTO items (id, qty) VALUES ('b1', 1)"]),
    );
    eventually(20, "a knows b's head and holds it: no lag", || {
        let s = status(&a.api);
        s["writers"].as_array().is_some_and(|w| {
            w.len() == 1 && w[0]["head"] == 1 && w[0]["lag_secs"].as_f64() == Some(0.0)
        })
    });
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    let lag = || status(&a.api)["writers"][0]["lag_secs"].as_f64().unwrap();
    eventually(30, "the lag grows while b is away", || lag() > 1.0);
    let first = lag();
    std::thread::sleep(Duration::from_millis(1200));
    assert!(lag() > first, "it keeps growing");
    let (_, metrics) = get(&a.api, "/metrics");
    assert!(
        metrics.contains("litemesh_lag_seconds{writer=\"b\""),
        "{metrics}"
    );
}
