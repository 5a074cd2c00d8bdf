//! Regions, read levels and write acknowledgement levels through the CLI
//! and the HTTP API, with real `litemesh` processes.

mod common;

use common::*;
use serde_json::{Value as Json, json};
use std::path::Path;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The flags of agent `n` in `d` with its certificate (`certs/{n}.pem`,
/// made by `litemesh tls node`), the mesh CA (`ca/ca.pem`) and `schema`.
fn certified(d: &Path, n: &str, schema: &str, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "--db",
        &s(&d.join(format!("{n}.db"))),
        "--listen",
        "127.0.0.1:0",
        "--api",
        "127.0.0.1:0",
        "--schema",
        schema,
        "--name",
        n,
        "--tls-ca",
        &s(&d.join("ca/ca.pem")),
        "--tls-cert",
        &s(&d.join(format!("certs/{n}.pem"))),
        "--tls-key",
        &s(&d.join(format!("certs/{n}.key"))),
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    a.extend(extra.iter().map(|x| x.to_string()));
    a
}

#[test]
fn regions_from_certificates_acks_levels_and_client_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca_dir = s(&d.join("ca"));
    let certs = s(&d.join("certs"));
    assert!(run(&["tls", "ca", "--out", &ca_dir]).status.success());
    for (n, r) in [("n1", "eu"), ("n2", "eu"), ("n3", "us")] {
        let o = run(&[
            "tls", "node", "--ca-dir", &ca_dir, "--name", n, "--region", r, "--out", &certs,
        ]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        assert!(text(&o.stdout).contains(&format!("(region {r})")));
    }
    let o = run(&[
        "tls",
        "node",
        "--ca-dir",
        &ca_dir,
        "--name",
        "x",
        "--region",
        "no spaces",
        "--out",
        &certs,
    ]);
    assert!(!o.status.success());

    let sc = schema(d);
    let args = |n: &str, extra: &[&str]| certified(d, n, &sc, extra);

    // A --region the certificate contradicts: refused, and said why.
    let bad = args("n1", &["--region", "us"]);
    let bad: Vec<&str> = bad.iter().map(String::as_str).collect();
    match Agent::try_start(d, "bad", &bad) {
        Ok(_) => panic!("an agent claiming a region its certificate does not certify started"),
        Err((_, err)) => assert!(err.contains("contradicts"), "{err}"),
    }

    let a1v = args("n1", &["--region", "eu"]);
    let a1 = Agent::start(d, "n1", &a1v.iter().map(String::as_str).collect::<Vec<_>>());
    let a2v = args("n2", &["--seed", &a1.listen]);
    let a2 = Agent::start(d, "n2", &a2v.iter().map(String::as_str).collect::<Vec<_>>());
    let a3v = args("n3", &["--seed", &a1.listen]);
    let mut a3 = Agent::start(d, "n3", &a3v.iter().map(String::as_str).collect::<Vec<_>>());
    eventually(20, "3 alive members with their regions", || {
        let (st, body) = get(&a1.api, "/v1/members");
        let m: Json = serde_json::from_str(&body).unwrap_or(Json::Null);
        st == 200
            && m.as_array().is_some_and(|m| {
                m.iter().filter(|x| x["state"] == "alive").count() == 3
                    && m.iter().any(|x| x["name"] == "n3" && x["region"] == "us")
                    && m.iter().any(|x| x["name"] == "n2" && x["region"] == "eu")
            })
    });
    // Status and metrics, by region.
    let (_, body) = get(&a1.api, "/v1/status");
    let st: Json = serde_json::from_str(&body).unwrap();
    assert_eq!(st["region"], "eu", "{body}");
    let regions = st["regions"].as_array().unwrap();
    assert!(
        regions
            .iter()
            .any(|r| r["region"] == "us" && r["members"] == 1),
        "{body}"
    );
    let (_, metrics) = get(&a1.api, "/metrics");
    assert!(
        metrics.contains("litemesh_region_lag_seconds{region=\"us\"} ")
            && metrics.contains("litemesh_region_members{region=\"eu\"} 2"),
        "{metrics}"
    );
    let sent_to_us: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("litemesh_region_sent_bytes_total{region=\"us\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(sent_to_us > 0.0, "{metrics}");
    let o = run(&["status", "--api", &a1.api]);
    let out = text(&o.stdout);
    assert!(
        o.status.success() && out.contains("regions:") && out.contains("us"),
        "{out}"
    );

    // Write acknowledgement levels, through the CLI…
    let o = run(&[
        "exec",
        "--api",
        &a1.api,
        "--ack",
        "regions",
        "INSERT INTO items (id, qty) VALUES ('r1', 1)",
    ]);
    let out = text(&o.stdout);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        out.contains("ack regions: reached") && out.contains("n3 (us)"),
        "{out}"
    );
    // … and the API: a level that cannot be reached answers 202 with what
    // was reached, the write committed.
    let (code, body) = post(
        &a1.api,
        "/v1/transactions?ack=5&ack_timeout_ms=300",
        json!([["INSERT INTO items (id, qty) VALUES ('r2', 2)"]]).to_string(),
    );
    assert_eq!(code, 202, "{body}");
    let j: Json = serde_json::from_str(&body).unwrap();
    assert_eq!(j["ack"]["reached"], false, "{body}");
    assert_eq!(j["ack"]["confirmed"].as_array().unwrap().len(), 2, "{body}");
    assert_eq!(j["ack"]["missing"][0], "3 more nodes", "{body}");
    assert_eq!(
        scalar(&a1.api, "SELECT count(*) FROM items WHERE id = 'r2'"),
        1
    );
    let (code, body) = post(
        &a1.api,
        "/v1/transactions?ack=most",
        json!([["INSERT INTO items (id, qty) VALUES ('r3', 3)"]]).to_string(),
    );
    assert_eq!(code, 400, "{body}");
    assert_eq!(
        scalar(&a1.api, "SELECT count(*) FROM items WHERE id = 'r3'"),
        0
    );

    // Read levels on the API.
    let (code, _, body) = query(
        &a2.api,
        json!("SELECT count(*) FROM items"),
        "?max_lag_ms=60000&fallback=nearest",
    );
    assert_eq!(code, 200, "{body}");
    let (code, _, body) = query(&a2.api, json!("SELECT 1"), "?fallback=anywhere");
    assert_eq!(code, 400, "{body}");

    // The client falls back on the next agent when its own is down: reads,
    // and writes that could not be sent at all.
    a3.terminate();
    let o = run(&[
        "query",
        "--api",
        &a3.api,
        "--api",
        &a2.api,
        "SELECT count(*) FROM items",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("answered by the agent at"),
        "{}",
        text(&o.stderr)
    );
    let o = run(&[
        "exec",
        "--api",
        &format!("{},{}", a3.api, a2.api),
        "INSERT INTO items (id, qty) VALUES ('r4', 4)",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(
        scalar(&a2.api, "SELECT count(*) FROM items WHERE id = 'r4'"),
        1
    );
}

#[test]
fn a_pinned_table_never_leaves_its_regions_on_real_agents() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca_dir = s(&d.join("ca"));
    let certs = s(&d.join("certs"));
    assert!(run(&["tls", "ca", "--out", &ca_dir]).status.success());
    for (n, r) in [("eu1", "eu"), ("eu2", "eu"), ("us1", "us"), ("eu3", "eu")] {
        let o = run(&[
            "tls", "node", "--ca-dir", &ca_dir, "--name", n, "--region", r, "--out", &certs,
        ]);
        assert!(o.status.success(), "{}", text(&o.stderr));
    }
    let sc = d.join("schema.sql");
    std::fs::write(
        &sc,
        "CREATE TABLE items (id TEXT PRIMARY KEY, qty INTEGER);\n\
         CREATE TABLE eu_users (id TEXT PRIMARY KEY, email TEXT) -- litemesh: regions = eu\n;\n",
    )
    .unwrap();
    let sc = s(&sc);
    let args = |n: &str, extra: &[&str]| certified(d, n, &sc, extra);
    let start = |n: &str, extra: &[&str]| {
        let v = args(n, extra);
        Agent::start(d, n, &v.iter().map(String::as_str).collect::<Vec<_>>())
    };
    // A partial replica naming a table the schema does not have: refused.
    let bad = args("eu1", &["--tables", "nope"]);
    match Agent::try_start(
        d,
        "bad",
        &bad.iter().map(String::as_str).collect::<Vec<_>>(),
    ) {
        Ok(_) => panic!("an agent carrying an unknown table started"),
        Err((_, err)) => assert!(err.contains("nope"), "{err}"),
    }

    let eu1 = start("eu1", &[]);
    let mut us1 = start("us1", &["--seed", &eu1.listen]);
    let eu2 = start("eu2", &["--seed", &eu1.listen]);
    // A partial replica in eu that carries only the global table.
    let mut eu3 = start("eu3", &["--seed", &eu1.listen, "--tables", "ITEMS"]);
    // Every node knows every other (and so the partial replica's tables):
    // a peer that does not know them yet sends it everything, which it
    // drops on arrival and counts (`rows_not_carried`, checked below).
    eventually(20, "4 alive members, on every node", || {
        [&eu1, &us1, &eu2, &eu3].iter().all(|a| {
            let (st, body) = get(&a.api, "/v1/members");
            let m: Json = serde_json::from_str(&body).unwrap_or(Json::Null);
            st == 200
                && m.as_array()
                    .is_some_and(|m| m.iter().filter(|x| x["state"] == "alive").count() == 4)
        })
    });

    // One transaction across placements.
    exec(
        &eu1.api,
        json!([
            ["INSERT INTO items VALUES ('g1', 1)"],
            ["INSERT INTO eu_users VALUES ('u1', 'a@example.eu')"]
        ]),
    );
    eventually(20, "the eu row on eu2, the global row everywhere", || {
        scalar(&eu2.api, "SELECT count(*) FROM eu_users") == 1
            && scalar(&eu2.api, "SELECT count(*) FROM items") == 1
            && scalar(&us1.api, "SELECT count(*) FROM items") == 1
    });
    // Writes confirmed by every region that may hold them: an eu-only
    // write needs no us node.
    let (code, body) = post(
        &eu1.api,
        "/v1/transactions?ack=regions&ack_timeout_ms=2000",
        json!([["INSERT INTO eu_users VALUES ('u2', 'b@example.eu')"]]).to_string(),
    );
    assert_eq!(code, 200, "{body}");
    let j: Json = serde_json::from_str(&body).unwrap();
    assert_eq!(j["ack"]["reached"], true, "{body}");
    // A node holding the write without its eu rows (the us node, the
    // partial replica) does not count as holding it: of three peers, one
    // can confirm.
    let (code, body) = post(
        &eu1.api,
        "/v1/transactions?ack=2&ack_timeout_ms=3000",
        json!([["INSERT INTO eu_users VALUES ('u4', 'd@example.eu')"]]).to_string(),
    );
    assert_eq!(code, 202, "{body}");
    let j: Json = serde_json::from_str(&body).unwrap();
    let confirmed = j["ack"]["confirmed"].as_array().unwrap();
    assert_eq!(confirmed.len(), 1, "{body}");
    assert_eq!(confirmed[0]["name"], "eu2", "{body}");

    // On the us node the table cannot be read or written: a clear refusal
    // naming where it lives, also with fallback (never forwarded).
    for params in ["", "?fallback=nearest"] {
        let (code, _, body) = query(&us1.api, json!("SELECT * FROM eu_users"), params);
        assert_eq!(code, 403, "{body}");
        assert!(body.contains("region(s) eu"), "{body}");
    }
    let (code, body) = post(
        &us1.api,
        "/v1/transactions",
        json!([["INSERT INTO eu_users VALUES ('u3', 'c')"]]).to_string(),
    );
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("may only be held in region(s) eu"), "{body}");
    // Status and metrics say what is pinned, and that no peer sent eu rows.
    let (_, body) = get(&us1.api, "/v1/status");
    let st: Json = serde_json::from_str(&body).unwrap();
    assert_eq!(st["placement"]["eu_users"], json!(["eu"]), "{body}");
    assert_eq!(st["placement_rows_refused"], 0, "{body}");
    let (_, metrics) = get(&us1.api, "/metrics");
    assert!(
        metrics.contains("litemesh_placement_rows_refused_total 0"),
        "{metrics}"
    );
    let o = run(&["status", "--api", &us1.api]);
    let out = text(&o.stdout);
    assert!(
        o.status.success() && out.contains("placement:") && out.contains("eu_users → eu"),
        "{out}"
    );
    // The us node holds both versions (nothing left to ask for) …
    eventually(20, "us1 caught up", || {
        let (_, body) = get(&us1.api, "/v1/status");
        let st: Json = serde_json::from_str(&body).unwrap_or(Json::Null);
        st["writers"]
            .as_array()
            .is_some_and(|w| w.iter().all(|w| w["missing_versions"] == 0))
    });
    // The partial replica has the global rows, not the eu ones, and its
    // peers knew to leave those out (it had none to drop).
    eventually(20, "eu3 caught up", || {
        scalar(&eu3.api, "SELECT count(*) FROM items") == 1
    });
    let (code, _, body) = query(&eu3.api, json!("SELECT * FROM eu_users"), "");
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("not carried"), "{body}");
    let (_, body) = get(&eu3.api, "/v1/status");
    let st: Json = serde_json::from_str(&body).unwrap();
    assert_eq!(st["rows_not_carried"], 0, "{body}");
    eu3.terminate();
    let c = rusqlite::Connection::open(d.join("eu3.db")).unwrap();
    let n: i64 = c
        .query_row("SELECT count(*) FROM __lm_clk_eu_users", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0, "eu_users clocks on the partial replica");
    // … and the us node's file holds nothing of the eu table, metadata
    // included.
    us1.terminate();
    let c = rusqlite::Connection::open(d.join("us1.db")).unwrap();
    for t in ["eu_users", "__lm_clk_eu_users"] {
        let n: i64 = c
            .query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0, "{t} on the us node");
    }
    let n: i64 = c
        .query_row("SELECT count(*) FROM items", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
}

#[test]
fn a_member_whose_schema_pins_differently_is_seen_and_said() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pinned = d.join("pinned.sql");
    std::fs::write(
        &pinned,
        "CREATE TABLE items (id TEXT PRIMARY KEY, qty INTEGER);\n\
         CREATE TABLE eu_users (id TEXT PRIMARY KEY, email TEXT) -- litemesh: regions = eu\n;",
    )
    .unwrap();
    let plain = d.join("plain.sql");
    std::fs::write(
        &plain,
        "CREATE TABLE items (id TEXT PRIMARY KEY, qty INTEGER);\n\
         CREATE TABLE eu_users (id TEXT PRIMARY KEY, email TEXT);",
    )
    .unwrap();
    let start = |n: &str, schema: &Path, extra: &[&str]| {
        let mut a = vec!["--region", "eu"];
        a.extend_from_slice(extra);
        named_insecure_agent(d, n, &s(schema), &a)
    };
    let a = start("a", &pinned, &[]);
    let b = start("b", &plain, &["--seed", &a.listen]);
    eventually(20, "each sees the other's placement differ", || {
        [&a, &b].iter().all(|x| {
            let (_, body) = get(&x.api, "/v1/status");
            let st: Json = serde_json::from_str(&body).unwrap_or(Json::Null);
            st["placement_mismatch"]
                .as_array()
                .is_some_and(|m| m.len() == 1)
        })
    });
    let (code, body) = get(&a.api, "/v1/health");
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("placement_mismatch") && body.contains("pins tables differently"),
        "{body}"
    );
    let (_, metrics) = get(&b.api, "/metrics");
    assert!(
        metrics.contains("litemesh_placement_mismatch_members 1"),
        "{metrics}"
    );
    eventually(10, "the mismatch logged", || {
        std::fs::read_to_string(&a.stderr_path)
            .unwrap_or_default()
            .contains("pins tables differently")
    });
}
