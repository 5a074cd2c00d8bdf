//! The retention policy with real agent processes: tombstones are collected
//! once every node holds the deletes, a member that is away holds
//! collection back (and says so) and catches up incrementally when it
//! returns, and keys deleted and collected can be inserted again on any
//! node, a node that joined later included.

mod common;

use common::*;
use serde_json::{Value as Json, json};

fn retention(api: &str) -> Json {
    let (code, body) = get(api, "/v1/retention");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn tombstones(api: &str) -> u64 {
    retention(api)["metadata"]["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tombstones"].as_u64().unwrap())
        .sum()
}

fn count(api: &str) -> i64 {
    scalar(api, "SELECT count(*) FROM items")
}

/// Runs statements on a node that may still be joining (with a policy, a
/// new node refuses writes until its first reconciliation completes):
/// retries its 503 for a while.
fn exec_joined(api: &str, statements: Json) {
    let mut last = String::new();
    for _ in 0..200 {
        let (code, body) = post(api, "/v1/transactions", statements.to_string());
        if code == 200 {
            return;
        }
        assert_eq!(code, 503, "{body}");
        last = body;
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("writes still refused after 20 s: {last}");
}

/// Inserts rows `k0..k{n}` (qty = i) on `writer`, and waits until every
/// node in `all` holds `n` rows.
fn insert_everywhere(writer: &str, n: usize, all: &[&str]) {
    let stmts: Vec<Json> = (0..n)
        .map(|i| json!(format!("INSERT INTO items (id, qty) VALUES ('k{i}', {i})")))
        .collect();
    exec(writer, Json::Array(stmts));
    eventually(20, "the rows everywhere", || {
        all.iter().all(|a| count(a) == n as i64)
    });
}

fn agent(d: &std::path::Path, sc: &str, name: &str, listen: &str, seed: Option<&str>) -> Agent {
    agent_with(d, sc, name, listen, seed, &[])
}

fn agent_with(
    d: &std::path::Path,
    sc: &str,
    name: &str,
    listen: &str,
    seed: Option<&str>,
    extra: &[&str],
) -> Agent {
    let db = s(&d.join(format!("{name}.db")));
    let mut args = vec![
        "--db",
        &db,
        "--listen",
        listen,
        "--api",
        "127.0.0.1:0",
        "--schema",
        sc,
        "--insecure",
        "--name",
        name,
        "--retention",
        "1s",
    ];
    if let Some(seed) = seed {
        args.extend(["--seed", seed]);
    }
    args.extend(extra);
    Agent::start(d, name, &args)
}

#[test]
fn tombstones_are_collected_once_every_node_holds_the_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sc = schema(d);
    let n1 = agent(d, &sc, "n1", "127.0.0.1:0", None);
    let n2 = agent(d, &sc, "n2", "127.0.0.1:0", Some(&n1.listen));
    let mut n3 = agent(d, &sc, "n3", "127.0.0.1:0", Some(&n1.listen));
    let all = || [&n1.api, &n2.api];
    let stmts: Vec<Json> = (0..100)
        .map(|i| json!(format!("INSERT INTO items (id, qty) VALUES ('k{i}', {i})")))
        .collect();
    exec(&n1.api, Json::Array(stmts));
    eventually(20, "the rows on n2", || count(&n2.api) == 100);
    exec_joined(&n2.api, json!(["DELETE FROM items WHERE qty < 90"]));
    eventually(20, "the deletes everywhere", || {
        [&n1.api, &n2.api, &n3.api].iter().all(|a| count(a) == 10)
    });
    eventually(60, "every tombstone collected on every node", || {
        [&n1.api, &n2.api, &n3.api]
            .iter()
            .all(|a| tombstones(a) == 0)
    });
    let r = retention(&n1.api);
    assert_eq!(r["policy_secs"].as_f64(), Some(1.0), "{r}");
    assert!(
        r["collection"]["tombstones_collected"].as_u64().unwrap() >= 90,
        "{r}"
    );
    assert_eq!(r["collection"]["floors"]["items"].as_u64(), Some(2), "{r}");
    let (_, metrics) = get(&n2.api, "/metrics");
    assert!(
        metrics.contains("litemesh_tombstones_collected_total 90")
            && metrics.contains("litemesh_collection_held_back 0"),
        "{metrics}"
    );
    let o = run(&["retention", "--api", &n3.api]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("90 tombstones collected") && out.contains("items=2"),
        "{out}"
    );

    // A key whose tombstone is gone everywhere is inserted again: its new
    // life starts above the floor and reaches every node.
    exec_joined(
        &n2.api,
        json!(["INSERT INTO items (id, qty) VALUES ('k5', 500)"]),
    );
    eventually(20, "the re-inserted key everywhere", || {
        [&n1.api, &n2.api, &n3.api]
            .iter()
            .all(|a| scalar(a, "SELECT coalesce(sum(qty), 0) FROM items WHERE id = 'k5'") == 500)
    });

    // n3 goes away: deletes made meanwhile keep their tombstones on n1 and
    // n2 (n3 may still write those keys), and n1 names who it waits for.
    let n3_listen = n3.listen.clone();
    n3.terminate();
    exec(&n1.api, json!(["DELETE FROM items WHERE qty >= 90"]));
    std::thread::sleep(std::time::Duration::from_secs(8));
    for a in all() {
        // The ten rows left of the first batch and the re-inserted key.
        assert_eq!(tombstones(a), 11, "collected while n3 lacks the deletes");
    }
    let r = retention(&n1.api);
    assert_eq!(
        r["collection"]["slowest_member"].as_str(),
        Some("n3"),
        "{r}"
    );
    // n3 comes back on its address and file: it catches up incrementally,
    // the deleted rows stay deleted, and then the tombstones go.
    let n3 = agent(d, &sc, "n3", &n3_listen, Some(&n1.listen));
    eventually(30, "n3 caught up", || count(&n3.api) == 0);
    eventually(60, "the new tombstones collected", || {
        [&n1.api, &n2.api, &n3.api]
            .iter()
            .all(|a| tombstones(a) == 0)
    });

    // A node that joins after all this learns the floors at its first
    // reconciliation; its own insert of a collected key reaches everyone.
    let n4 = agent(d, &sc, "n4", "127.0.0.1:0", Some(&n2.listen));
    let heads = |api: &str| -> Vec<(String, u64)> {
        retention(api)["writers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| (w["actor"].to_string(), w["head"].as_u64().unwrap()))
            .collect()
    };
    eventually(30, "n4 caught up", || heads(&n4.api) == heads(&n1.api));
    assert!(
        retention(&n4.api)["collection"]["floors"]["items"]
            .as_u64()
            .unwrap()
            >= 2
    );
    exec_joined(
        &n4.api,
        json!(["INSERT INTO items (id, qty) VALUES ('k95', 950)"]),
    );
    eventually(20, "n4's insert everywhere", || {
        [&n1.api, &n2.api, &n3.api, &n4.api]
            .iter()
            .all(|a| count(a) == 1)
    });
}

#[test]
fn a_bad_retention_flag_is_refused_and_a_new_node_writes_after_joining() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sc = schema(d);
    let db = s(&d.join("x.db"));
    let r = Agent::try_start(
        d,
        "x",
        &[
            "--db",
            &db,
            "--listen",
            "127.0.0.1:0",
            "--api",
            "127.0.0.1:0",
            "--schema",
            &sc,
            "--insecure",
            "--retention",
            "forever",
        ],
    );
    let Err((_, err)) = r else {
        panic!("an agent started with --retention forever")
    };
    assert!(err.contains("--retention"), "{err}");
    // A new node whose seed never answers has learned no floors: with a
    // policy on, it refuses writes until its first reconciliation.
    let lonely = agent(d, &sc, "lonely", "127.0.0.1:0", Some("127.0.0.1:9"));
    let (code, body) = post(
        &lonely.api,
        "/v1/transactions",
        json!(["INSERT INTO items (id, qty) VALUES ('a', 1)"]).to_string(),
    );
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("first reconciliation"), "{body}");
    // The first node of a mesh (no seed) writes at once.
    let first = agent(d, &sc, "first", "127.0.0.1:0", None);
    exec(
        &first.api,
        json!(["INSERT INTO items (id, qty) VALUES ('a', 1)"]),
    );
}

fn status(api: &str) -> Json {
    let (code, body) = get(api, "/v1/status");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn qty(api: &str, id: &str) -> Option<i64> {
    let (st, rows, body) = query(
        api,
        Json::String(format!("SELECT qty FROM items WHERE id = '{id}'")),
        "",
    );
    assert_eq!(st, 200, "{body}");
    rows.first().and_then(|r| r[0].as_i64())
}

/// A node away longer than the others waited for it (`--forget-after`),
/// with writes of its own made while it was cut off, comes back with its
/// old file: the versions it lacks had their tombstones collected, so it
/// cannot catch up incrementally. It is told so and catches up by snapshot
/// on its own: the rows deleted meanwhile go, its own writes stay (the
/// update of a row deleted elsewhere loses, as it would have), and every
/// node ends with the same rows.
#[test]
fn a_node_back_after_the_others_stopped_waiting_catches_up_by_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sc = schema(d);
    let quick = ["--forget-after", "3s"];
    let mut n1 = agent_with(d, &sc, "n1", "127.0.0.1:0", None, &quick);
    let mut n2 = agent_with(d, &sc, "n2", "127.0.0.1:0", Some(&n1.listen), &quick);
    let mut n3 = agent_with(d, &sc, "n3", "127.0.0.1:0", Some(&n1.listen), &quick);
    insert_everywhere(&n1.api, 20, &[&n1.api, &n2.api, &n3.api]);
    let (l1, l2, l3) = (n1.listen.clone(), n2.listen.clone(), n3.listen.clone());
    // n3 cut off from the others: it writes on its own.
    n1.terminate();
    n2.terminate();
    exec(
        &n3.api,
        json!([
            "INSERT INTO items (id, qty) VALUES ('mine', 100)",
            "UPDATE items SET qty = 1019 WHERE id = 'k19'",
            "UPDATE items SET qty = 1001 WHERE id = 'k1'",
        ]),
    );
    n3.terminate();
    // The others, without it: deletes, collected once n3 is forgotten.
    let n1 = agent_with(d, &sc, "n1", &l1, None, &quick);
    let n2 = agent_with(d, &sc, "n2", &l2, Some(&l1), &quick);
    exec_joined(&n1.api, json!(["DELETE FROM items WHERE qty < 15"]));
    eventually(60, "tombstones collected without n3", || {
        [&n1.api, &n2.api]
            .iter()
            .all(|a| count(a) == 5 && tombstones(a) == 0)
    });
    let n3 = agent_with(d, &sc, "n3", &l3, Some(&l1), &quick);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !([&n1.api, &n2.api, &n3.api].iter().all(|a| count(a) == 6)
        && get(&n3.api, "/v1/health").0 == 200)
    {
        if std::time::Instant::now() >= deadline {
            let _ = std::fs::write("/tmp/n1.log", n1.stderr());
            let _ = std::fs::write("/tmp/n2.log", n2.stderr());
            let _ = std::fs::write("/tmp/n3.log", n3.stderr());
        }
        assert!(
            std::time::Instant::now() < deadline,
            "n3 did not catch up: counts {:?}, n3 {}\n--- n3's log:\n{}\n--- n1's log:\n{}",
            [&n1.api, &n2.api, &n3.api].map(|a| query(
                a,
                Json::String("SELECT id, qty FROM items ORDER BY id".into()),
                ""
            )
            .1),
            status(&n3.api),
            n3.stderr(),
            n1.stderr()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let st = status(&n3.api);
    let c = &st["snapshot_catch_up"];
    assert_eq!(c["complete"], true, "{st}");
    assert_eq!(c["rows_dropped"], 15, "{st}");
    assert_eq!(c["rows_rebased"], 1, "its fresh row, under the floor: {st}");
    assert_eq!(st["needs_snapshot"], Json::Null, "{st}");
    for a in [&n1.api, &n2.api, &n3.api] {
        assert_eq!(qty(a, "mine"), Some(100), "its insert");
        assert_eq!(qty(a, "k19"), Some(1019), "its update of a row that lived");
        assert_eq!(qty(a, "k1"), None, "a row deleted elsewhere stays deleted");
    }
    eventually(30, "n3 incremental again for the others", || {
        let r = retention(&n1.api);
        r["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "n3" && m["incremental"] == true)
    });
    // It takes writes again, and they replicate.
    exec(
        &n3.api,
        json!(["INSERT INTO items (id, qty) VALUES ('after', 1)"]),
    );
    eventually(20, "its new write everywhere", || {
        [&n1.api, &n2.api].iter().all(|a| count(a) == 7)
    });
}

/// A node away longer than the others wait comes back while they are down,
/// and they come back seeded with it: it neither takes writes nor serves
/// its stale rows until a peer has checked it — the peer tells it it
/// needs a snapshot, and it catches up by one. The deleted rows stay
/// deleted everywhere.
#[test]
fn a_stale_node_is_checked_before_it_writes_or_is_pulled_from() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sc = schema(d);
    let quick = ["--forget-after", "3s"];
    let n1 = agent_with(d, &sc, "n1", "127.0.0.1:0", None, &quick);
    let n2 = agent_with(d, &sc, "n2", "127.0.0.1:0", Some(&n1.listen), &quick);
    let mut n3 = agent_with(d, &sc, "n3", "127.0.0.1:0", Some(&n1.listen), &quick);
    insert_everywhere(&n1.api, 10, &[&n1.api, &n2.api, &n3.api]);
    let n3_listen = n3.listen.clone();
    n3.terminate();
    exec(&n1.api, json!(["DELETE FROM items WHERE qty < 5"]));
    eventually(60, "tombstones collected without n3", || {
        [&n1.api, &n2.api].iter().all(|a| tombstones(a) == 0)
    });
    let (l1, l2) = (n1.listen.clone(), n2.listen.clone());
    drop(n1);
    drop(n2);
    // n3 alone: away longer than --forget-after, it takes no write.
    let n3 = agent_with(d, &sc, "n3", &n3_listen, None, &quick);
    let (code, body) = post(
        &n3.api,
        "/v1/transactions",
        json!(["UPDATE items SET qty = qty + 1000 WHERE id IN ('k1', 'k2')"]).to_string(),
    );
    assert_eq!(code, 503, "{body}");
    // The others come back seeded with n3: they pull from it first, and
    // get nothing; n3 is told it needs a snapshot, and takes one.
    let n1 = agent_with(d, &sc, "n1", &l1, Some(&n3_listen), &quick);
    let n2 = agent_with(d, &sc, "n2", &l2, Some(&n3_listen), &quick);
    eventually(60, "n3 caught up by snapshot", || {
        count(&n3.api) == 5 && get(&n3.api, "/v1/health").0 == 200
    });
    assert_eq!(status(&n3.api)["snapshot_catch_up"]["rows_dropped"], 5);
    std::thread::sleep(std::time::Duration::from_secs(2));
    for a in [&n1.api, &n2.api, &n3.api] {
        assert_eq!(count(a), 5, "no deleted row back");
    }
}

/// A file that wrote on its own (the first node of a mesh of its own) and
/// then joins a mesh that collected tombstones is told it needs a
/// snapshot: it takes one, and its own write — of a key the mesh deleted
/// and collected, so nobody can tell any more which came later — is kept
/// and reaches every node (the one case a snapshot decides without the
/// collected delete: insert wins, the same everywhere; docs/retention.md).
#[test]
fn a_file_that_wrote_before_joining_a_collecting_mesh_catches_up_by_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sc = schema(d);
    let n1 = agent(d, &sc, "n1", "127.0.0.1:0", None);
    let n2 = agent(d, &sc, "n2", "127.0.0.1:0", Some(&n1.listen));
    exec(
        &n1.api,
        json!([
            "INSERT INTO items (id, qty) VALUES ('k', 1)",
            "INSERT INTO items (id, qty) VALUES ('gone', 1)"
        ]),
    );
    eventually(20, "the rows on n2", || count(&n2.api) == 2);
    exec_joined(&n2.api, json!(["DELETE FROM items"]));
    eventually(60, "the tombstones collected", || {
        [&n1.api, &n2.api]
            .iter()
            .all(|a| tombstones(a) == 0 && count(a) == 0)
    });
    // n4 starts a mesh of its own and writes k there.
    let mut n4 = agent(d, &sc, "n4", "127.0.0.1:0", None);
    exec(
        &n4.api,
        json!(["INSERT INTO items (id, qty) VALUES ('k', 444)"]),
    );
    let l4 = n4.listen.clone();
    n4.terminate();
    let n4 = agent(d, &sc, "n4", &l4, Some(&n1.listen));
    eventually(60, "n4 caught up, its write everywhere", || {
        [&n1.api, &n2.api, &n4.api]
            .iter()
            .all(|a| qty(a, "k") == Some(444) && count(a) == 1)
            && get(&n4.api, "/v1/health").0 == 200
    });
    let st = status(&n4.api);
    assert_eq!(st["snapshot_catch_up"]["rows_rebased"], 1, "{st}");
}

/// A node killed (SIGKILL) and restarted on its address goes on collecting:
/// it is never its own peer.
#[test]
fn a_node_killed_and_restarted_goes_on_collecting() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sc = schema(d);
    let n1 = agent(d, &sc, "n1", "127.0.0.1:0", None);
    let mut n2 = agent(d, &sc, "n2", "127.0.0.1:0", Some(&n1.listen));
    let n3 = agent(d, &sc, "n3", "127.0.0.1:0", Some(&n1.listen));
    insert_everywhere(&n1.api, 20, &[&n1.api, &n2.api, &n3.api]);
    let l2 = n2.listen.clone();
    n2.child.kill().unwrap();
    n2.child.wait().unwrap();
    let n2 = agent(d, &sc, "n2", &l2, Some(&n1.listen));
    exec(&n1.api, json!(["DELETE FROM items WHERE qty < 10"]));
    eventually(
        60,
        "every tombstone collected, on the restarted node too",
        || {
            [&n1.api, &n2.api, &n3.api]
                .iter()
                .all(|a| count(a) == 10 && tombstones(a) == 0)
        },
    );
}

/// A whole mesh stopped for longer than `--forget-after` and started again:
/// every node holds its writes until a reconciliation checks it, and they
/// check each other — the mesh resumes, writes flow again.
#[test]
fn a_whole_mesh_stopped_for_long_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sc = schema(d);
    let quick = ["--forget-after", "2s"];
    let mut n1 = agent_with(d, &sc, "n1", "127.0.0.1:0", None, &quick);
    let mut n2 = agent_with(d, &sc, "n2", "127.0.0.1:0", Some(&n1.listen), &quick);
    let mut n3 = agent_with(d, &sc, "n3", "127.0.0.1:0", Some(&n1.listen), &quick);
    insert_everywhere(&n1.api, 10, &[&n1.api, &n2.api, &n3.api]);
    exec_joined(&n2.api, json!(["DELETE FROM items WHERE qty < 5"]));
    eventually(60, "collected", || {
        [&n1.api, &n2.api, &n3.api]
            .iter()
            .all(|a| count(a) == 5 && tombstones(a) == 0)
    });
    let listens = [n1.listen.clone(), n2.listen.clone(), n3.listen.clone()];
    n1.terminate();
    n2.terminate();
    n3.terminate();
    std::thread::sleep(std::time::Duration::from_secs(4));
    let n1 = agent_with(d, &sc, "n1", &listens[0], Some(&listens[1]), &quick);
    let n2 = agent_with(d, &sc, "n2", &listens[1], Some(&listens[2]), &quick);
    let n3 = agent_with(d, &sc, "n3", &listens[2], Some(&listens[0]), &quick);
    eventually(30, "writes accepted again everywhere", || {
        [&n1.api, &n2.api, &n3.api]
            .iter()
            .enumerate()
            .all(|(i, a)| {
                post(
                    a,
                    "/v1/transactions",
                    json!([format!(
                        "INSERT OR REPLACE INTO items (id, qty) VALUES ('after{i}', 1)"
                    )])
                    .to_string(),
                )
                .0 == 200
            })
    });
    eventually(20, "the new writes everywhere", || {
        [&n1.api, &n2.api, &n3.api].iter().all(|a| count(a) == 8)
    });
    for a in [&n1.api, &n2.api, &n3.api] {
        assert!(
            !get(a, "/v1/health").1.contains("needs_snapshot"),
            "a node of a mesh stopped whole was fenced"
        );
    }
    // n1 and n2 remembered members alive when they stopped (n3 had
    // forgotten them: they left before it), so they held until checked.
    for n in [&n1, &n2] {
        assert!(
            n.stderr().contains("longer than --forget-after"),
            "{} did not hold after the long stop: {}",
            n.name,
            n.stderr()
        );
    }
}
