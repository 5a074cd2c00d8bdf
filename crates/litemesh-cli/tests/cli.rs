//! End-to-end tests: real `litemesh` processes.

mod common;

use common::*;
use serde_json::{Value as Json, json};

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn three_agents_with_mutual_tls_replicate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca_dir = s(&d.join("ca"));
    let certs = s(&d.join("certs"));
    let o = run(&["tls", "ca", "--out", &ca_dir]);
    assert!(o.status.success(), "{}", stderr(&o));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(d.join("ca/ca.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    for n in ["n1", "n2", "n3"] {
        let o = run(&[
            "tls", "node", "--ca-dir", &ca_dir, "--name", n, "--out", &certs,
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let mode = std::fs::metadata(d.join(format!("certs/{n}.key")))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // Refuses to overwrite without --force.
    assert!(!run(&["tls", "ca", "--out", &ca_dir]).status.success());

    let sc = schema(d);
    let ca_pem = s(&d.join("ca/ca.pem"));
    let start = |n: &str, seed: Option<&str>| {
        let db = s(&d.join(format!("{n}.db")));
        let cert = s(&d.join(format!("certs/{n}.pem")));
        let key = s(&d.join(format!("certs/{n}.key")));
        let mut args = vec![
            "--db",
            &db,
            "--listen",
            "127.0.0.1:0",
            "--api",
            "127.0.0.1:0",
            "--schema",
            &sc,
            "--name",
            n,
            "--tls-ca",
            &ca_pem,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ];
        if let Some(seed) = seed {
            args.extend(["--seed", seed]);
        }
        Agent::start(d, n, &args)
    };
    let a1 = start("n1", None);
    let a2 = start("n2", Some(&a1.listen));
    // A seed given by host name.
    let by_name = a1.listen.replace("127.0.0.1", "localhost");
    let a3 = start("n3", Some(&by_name));
    assert_eq!(a2.name, "n2");

    // Writes through each node's API reach the others (read with the token).
    for (i, writer) in [&a1, &a2, &a3].into_iter().enumerate() {
        let done = exec(
            &writer.api,
            json!([["INSERT INTO items (id, qty, data) VALUES (?1, ?2, ?3)",
                    [format!("k{i}"), i, {"blob": "AAEC"}]]]),
        );
        assert_eq!(done["results"][0]["rows_affected"], 1);
        let token = done["token"].as_str().unwrap().to_string();
        for reader in [&a1, &a2, &a3] {
            let (st, rows, body) = query(
                &reader.api,
                json!({"query": "SELECT qty, data FROM items WHERE id = ?", "params": [format!("k{i}")]}),
                &format!("?min_token={token}&wait_ms=10000"),
            );
            assert_eq!(st, 200, "{body}");
            assert_eq!(
                rows,
                vec![vec![json!(i), json!({"blob": "AAEC"})]],
                "{body}"
            );
        }
    }
    // Membership: everyone sees three alive members.
    eventually(15, "3 alive members", || {
        let (st, body) = get(&a3.api, "/v1/members");
        let m: Json = serde_json::from_str(&body).unwrap();
        st == 200
            && m.as_array()
                .unwrap()
                .iter()
                .filter(|x| x["state"] == "alive")
                .count()
                == 3
    });
    eventually(15, "metrics showing 3 alive members", || {
        let (st, metrics) = get(&a2.api, "/metrics");
        st == 200 && metrics.contains("litemesh_members{state=\"alive\"} 3")
    });
    let (_, metrics) = get(&a2.api, "/metrics");
    assert!(
        metrics.contains("litemesh_peer_behind_versions{peer="),
        "{metrics}"
    );
    // Its own write, one commit; the two others' writes applied (three
    // nodes: every write reached it from its writer, none relayed).
    for line in [
        "litemesh_transactions_committed_total 1",
        "litemesh_commit_groups_total 1",
        "litemesh_broadcasts_known_total 0",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    let (st, body) = get(&a2.api, "/v1/health");
    assert_eq!(st, 200, "{body}");
}

#[test]
fn client_commands_print_results() {
    let dir = tempfile::tempdir().unwrap();
    let a = insecure_agent(dir.path(), "c");
    let api = a.api.as_str();
    let o = run(&[
        "exec",
        "--api",
        api,
        "INSERT INTO items (id, qty) VALUES ('apple', 3)",
        "INSERT INTO items (id, qty) VALUES ('pear, green', 5)",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("statement 1: 1 row(s) affected"), "{out}");
    assert!(out.contains("statement 2: 1 row(s) affected"), "{out}");
    let token = out
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .expect("token line")
        .to_string();
    assert!(token.contains(':'), "{out}");

    let o = run(&[
        "query",
        "--api",
        api,
        "--min-token",
        &token,
        "SELECT id, qty FROM items ORDER BY id",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["id", "qty"],
        "{out}"
    );
    assert!(
        lines[2].starts_with("apple") && lines[2].ends_with('3'),
        "{out}"
    );
    assert!(
        lines[3].starts_with("pear, green") && lines[3].ends_with('5'),
        "{out}"
    );
    assert_eq!(lines[4], "(2 rows)");

    let o = run(&[
        "query",
        "--api",
        api,
        "--format",
        "csv",
        "SELECT id, qty FROM items ORDER BY id",
    ]);
    assert_eq!(stdout(&o), "id,qty\napple,3\n\"pear, green\",5\n");
    let o = run(&[
        "query",
        "--api",
        api,
        "--format",
        "json",
        "SELECT id, qty FROM items ORDER BY id",
    ]);
    let j: Json = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        j,
        json!([{"id": "apple", "qty": 3}, {"id": "pear, green", "qty": 5}])
    );

    // A bad query: non-zero exit and the API's message.
    let o = run(&["query", "--api", api, "DELETE FROM items"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("read-only"), "{}", stderr(&o));

    eventually(10, "members lists the node", || {
        let o = run(&["members", "--api", api]);
        o.status.success() && stdout(&o).contains(&a.name) && stdout(&o).contains("alive")
    });
    let o = run(&["members", "--api", api]);
    assert!(stdout(&o).starts_with("NAME"), "{}", stdout(&o));

    let o = run(&["status", "--api", api]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains(&format!("name:              {}", a.name)),
        "{out}"
    );
    assert!(out.contains("db_version:        1"), "{out}");
    assert!(out.contains("writers (replication lag):"), "{out}");
    assert!(out.contains("health:            ok"), "{out}");

    // No agent there: a clear error.
    let o = run(&["status", "--api", "127.0.0.1:1"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("cannot reach the agent"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn bad_inputs_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let a = insecure_agent(dir.path(), "b");
    let api = a.api.as_str();
    exec(
        api,
        json!(["INSERT INTO items (id, qty) VALUES ('keep', 1)"]),
    );

    let check = |path: &str, body: Vec<u8>, want: u16, needle: &str| {
        let (st, text) = post(api, path, body);
        assert_eq!(st, want, "{path}: {text}");
        let j: Json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
        let msg = j["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error: {text}"));
        assert!(msg.contains(needle), "{path}: {msg:?} lacks {needle:?}");
    };
    let t = "/v1/transactions";
    let q = "/v1/queries";
    check(t, b"[\"INSERT INTO items".to_vec(), 400, "malformed JSON");
    check(q, b"{nope".to_vec(), 400, "malformed JSON");
    check(t, b"{\"a\": 1}".to_vec(), 400, "array");
    check(t, b"[]".to_vec(), 400, "no statements");
    // A body past the limit: 413 (announced by its length, refused before
    // it is sent).
    let (st, text) = post_expect_continue(api, t, 9 * 1024 * 1024);
    assert_eq!(st, 413, "{text}");
    assert!(text.contains("larger than"), "{text}");
    check(
        t,
        json!(["INSERT INTO nope VALUES (1)"]).to_string().into(),
        400,
        "no such table",
    );
    check(
        q,
        json!("SELECT * FROM nope").to_string().into(),
        400,
        "no such table",
    );
    // The first statement succeeds, the second fails: nothing applied.
    check(
        t,
        json!([
            "INSERT INTO items (id, qty) VALUES ('x', 1)",
            "INSERT INTO items VALUES (,)"
        ])
        .to_string()
        .into(),
        400,
        "syntax error",
    );
    check(
        t,
        json!([
            "INSERT INTO items (id, qty) VALUES ('y', 1)",
            "INSERT INTO items (id, qty) VALUES ('keep', 2)"
        ])
        .to_string()
        .into(),
        400,
        "UNIQUE",
    );
    check(
        q,
        json!("DELETE FROM items").to_string().into(),
        403,
        "read-only",
    );
    check(
        q,
        json!(["UPDATE items SET qty = 9", []]).to_string().into(),
        403,
        "read-only",
    );
    check(
        &format!("{q}?min_token=garbage"),
        json!("SELECT 1").to_string().into(),
        400,
        "token",
    );
    check(
        t,
        json!([["SELECT ?", [{"x": 1}]]]).to_string().into(),
        400,
        "blob",
    );

    let (st, rows, body) = query(api, json!("SELECT id, qty FROM items ORDER BY id"), "");
    assert_eq!(st, 200, "{body}");
    assert_eq!(rows, vec![vec![json!("keep"), json!(1)]]);

    // A token this node will never reach: 503 naming the lag.
    let (st, text) = post(
        api,
        &format!("{q}?min_token={}:99&wait_ms=200", "ab".repeat(16)),
        json!("SELECT 1").to_string(),
    );
    assert_eq!(st, 503, "{text}");
    assert!(text.contains("has not yet applied"), "{text}");
    let (st, text) = get(api, "/v1/nothing");
    assert_eq!(st, 404, "{text}");
}

#[test]
fn sigterm_exits_zero_and_restart_keeps_every_write() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut a = insecure_agent(d, "r");
    let mut acked = Vec::new();
    for i in 0..25 {
        let done = exec(
            &a.api,
            json!([[
                "INSERT INTO items (id, qty) VALUES (?1, ?2)",
                [format!("w{i:02}"), i]
            ]]),
        );
        acked.push(done["token"].as_str().unwrap().to_string());
    }
    let st = a.terminate();
    assert_eq!(st.code(), Some(0), "stderr: {}", a.stderr());
    drop(a);
    let b = insecure_agent(d, "r");
    let (st, rows, body) = query(
        &b.api,
        json!("SELECT id, qty FROM items ORDER BY id"),
        &format!("?min_token={}", acked.last().unwrap()),
    );
    assert_eq!(st, 200, "{body}");
    let want: Vec<Vec<Json>> = (0..25)
        .map(|i| vec![json!(format!("w{i:02}")), json!(i)])
        .collect();
    assert_eq!(rows, want);
}

#[test]
fn second_agent_on_the_same_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let _first = insecure_agent(d, "l");
    let db = s(&d.join("l.db"));
    let err = Agent::try_start(
        d,
        "l2",
        &[
            "--db",
            &db,
            "--listen",
            "127.0.0.1:0",
            "--api",
            "127.0.0.1:0",
            "--insecure",
        ],
    )
    .err()
    .expect("second start must fail");
    assert_eq!(err.0.and_then(|s| s.code()), Some(1), "{}", err.1);
    assert!(err.1.contains("already in use"), "{}", err.1);
}

#[test]
fn config_file_and_tls_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    schema(d);
    let cfg = d.join("agent.toml");
    std::fs::write(
        &cfg,
        "db = \"cfg.db\"\nlisten = \"127.0.0.1:0\"\napi = \"127.0.0.1:0\"\n\
         schema = [\"schema.sql\"]\nname = \"from-file\"\nregion = \"eu-west\"\ninsecure = true\n",
    )
    .unwrap();
    // The file's settings, the name overridden by a flag.
    let a = Agent::start(d, "cfg", &["--config", &s(&cfg), "--name", "from-flag"]);
    assert_eq!(a.name, "from-flag");
    assert!(d.join("cfg.db").exists());
    exec(&a.api, json!(["INSERT INTO items (id) VALUES ('a')"]));
    eventually(10, "member with region", || {
        let (_, body) = get(&a.api, "/v1/members");
        body.contains("\"region\":\"eu-west\"") && body.contains("\"name\":\"from-flag\"")
    });
    drop(a);

    // An unknown key is an error.
    let bad = d.join("bad.toml");
    std::fs::write(
        &bad,
        "db = \"x.db\"\ninsecure = true\nlisten_addr = \"1.2.3.4:5\"\n",
    )
    .unwrap();
    let o = run(&["agent", "--config", &s(&bad)]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("listen_addr"), "{}", stderr(&o));

    // Without TLS flags and without --insecure: refused, with the way out.
    let db = s(&d.join("t.db"));
    let o = run(&[
        "agent",
        "--db",
        &db,
        "--listen",
        "127.0.0.1:0",
        "--api",
        "127.0.0.1:0",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains("litemesh tls ca --out DIR") && e.contains("--insecure"),
        "{e}"
    );
    // Only some of the TLS flags: refused.
    let o = run(&["agent", "--db", &db, "--tls-ca", "ca.pem"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("all three"), "{}", stderr(&o));
    // Without --db: refused.
    let o = run(&["agent", "--insecure"]);
    assert!(stderr(&o).contains("--db"), "{}", stderr(&o));
}

/// A transaction is answered 200 once committed, whatever happens after the
/// commit: here a value too large to be broadcast (anti-entropy carries it).
/// A value too large to replicate at all is refused before it commits.
#[test]
fn a_committed_write_is_never_answered_as_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a = insecure_agent(dir.path(), "big");
    let (st, body) = post(
        &a.api,
        "/v1/transactions",
        json!(["INSERT INTO items (id, data) VALUES ('big', randomblob(3000000))"]).to_string(),
    );
    assert_eq!(st, 200, "{body}");
    assert_eq!(
        scalar(&a.api, "SELECT length(data) FROM items WHERE id = 'big'"),
        3_000_000
    );
    let (st, body) = post(
        &a.api,
        "/v1/transactions",
        json!(["INSERT INTO items (id, data) VALUES ('huge', randomblob(9000000))"]).to_string(),
    );
    assert_eq!(st, 413, "{body}");
    assert!(body.contains("exceeds the limit"), "{body}");
    assert_eq!(
        scalar(&a.api, "SELECT count(*) FROM items WHERE id = 'huge'"),
        0
    );
}

/// `--listen 0.0.0.0:PORT` binds every interface; peers must be told a real
/// address: without `--advertise` the agent refuses, saying so; with it, the
/// members list shows the advertised address and replication works.
#[test]
fn wildcard_listen_needs_and_uses_advertise() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sc = schema(d);
    let db1 = s(&d.join("w1.db"));
    let o = run(&[
        "agent",
        "--db",
        &db1,
        "--listen",
        "0.0.0.0:0",
        "--api",
        "127.0.0.1:0",
        "--insecure",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("advertise"), "{}", stderr(&o));

    let base = [
        "--listen",
        "0.0.0.0:0",
        "--advertise",
        "127.0.0.1:0",
        "--api",
        "127.0.0.1:0",
        "--schema",
        &sc,
        "--insecure",
    ];
    let mut args1 = vec!["--db", &db1, "--name", "w1"];
    args1.extend(base);
    let a1 = Agent::start(d, "w1", &args1);
    let port1 = a1.listen.rsplit(':').next().unwrap().to_string();
    let seed = format!("127.0.0.1:{port1}");
    let db2 = s(&d.join("w2.db"));
    let mut args2 = vec!["--db", &db2, "--name", "w2", "--seed", &seed];
    args2.extend(base);
    let a2 = Agent::start(d, "w2", &args2);

    eventually(15, "w1 listed at its advertised address", || {
        let (st, body) = get(&a2.api, "/v1/members");
        let m: Json = serde_json::from_str(&body).unwrap();
        st == 200
            && m.as_array()
                .unwrap()
                .iter()
                .any(|x| x["name"] == "w1" && x["state"] == "alive" && x["addr"] == json!(seed))
    });
    let done = exec(
        &a1.api,
        json!(["INSERT INTO items (id, qty) VALUES ('w', 1)"]),
    );
    let token = done["token"].as_str().unwrap().to_string();
    let (st, rows, body) = query(
        &a2.api,
        json!("SELECT qty FROM items WHERE id = 'w'"),
        &format!("?min_token={token}&wait_ms=10000"),
    );
    assert_eq!(st, 200, "{body}");
    assert_eq!(rows, vec![vec![json!(1)]]);
}

#[test]
fn demo_converges() {
    let t = std::time::Instant::now();
    let o = run(&["demo", "--nodes", "3", "--seconds", "4"]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}\n{}", stderr(&o));
    assert!(out.contains("converged"), "{out}");
    assert!(out.contains("all nodes identical"), "{out}");
    assert!(t.elapsed() < std::time::Duration::from_secs(60));
}
