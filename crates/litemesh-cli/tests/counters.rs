//! Counters and max/min registers through the agent's interfaces: two
//! nodes that never saw each other count on their own, then join, and
//! every node reads the exact sum.

mod common;
use common::*;
use serde_json::json;

const SCHEMA: &str = "CREATE TABLE stock (
    sku TEXT PRIMARY KEY,
    qty INTEGER NOT NULL DEFAULT 0,
    peak INTEGER
) -- litemesh: counter = qty; max = peak
;
";

fn qty(api: &str) -> i64 {
    scalar(api, "SELECT qty FROM stock WHERE sku = 'apple'")
}

#[test]
fn apart_nodes_count_on_their_own_and_converge_to_the_exact_sum() {
    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("schema.sql");
    std::fs::write(&schema, SCHEMA).unwrap();
    let schema = s(&schema);
    let a = named_insecure_agent(dir.path(), "a", &schema, &[]);
    let mut b = named_insecure_agent(dir.path(), "b", &schema, &[]);
    // Two meshes of one node each: a partition from the start.
    let upsert = |api: &str, n: i64| {
        exec(
            api,
            json!([[
                "INSERT INTO stock(sku, qty, peak) VALUES ('apple', ?1, ?1) \
                 ON CONFLICT(sku) DO UPDATE SET qty = qty + excluded.qty, peak = qty + excluded.qty",
                [n]
            ]]),
        );
    };
    for _ in 0..10 {
        upsert(&a.api, 1);
    }
    upsert(&b.api, 5);
    upsert(&b.api, 7);
    // The command line too.
    let out = run(&[
        "exec",
        "--api",
        &b.api,
        "UPDATE stock SET qty = qty - 2 WHERE sku = 'apple'",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(qty(&a.api), 10);
    assert_eq!(qty(&b.api), 10);
    // A value that is not a count is refused with a clear error, nothing applied.
    let (st, body) = post(
        &a.api,
        "/v1/transactions",
        json!(["UPDATE stock SET qty = qty + 0.5"]).to_string(),
    );
    assert_eq!(st, 400, "{body}");
    assert!(body.contains("is a counter"), "{body}");
    // b joins a: the two sides' counts add up, everywhere.
    b.terminate();
    let b = named_insecure_agent(dir.path(), "b", &schema, &["--seed", &a.listen]);
    eventually(20, "the exact sum on both nodes", || {
        qty(&a.api) == 20 && qty(&b.api) == 20
    });
    assert_eq!(
        scalar(&a.api, "SELECT peak FROM stock"),
        12,
        "the register keeps the largest value written anywhere (b's local 5 + 7)"
    );
    // Counting goes on on both, concurrently.
    for _ in 0..5 {
        upsert(&a.api, 1);
        upsert(&b.api, 1);
    }
    eventually(20, "30 on both nodes", || {
        qty(&a.api) == 30 && qty(&b.api) == 30
    });
}

#[test]
fn a_schema_whose_counter_could_not_converge_stops_the_agent_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("schema.sql");
    std::fs::write(
        &schema,
        "CREATE TABLE t (id TEXT PRIMARY KEY, total REAL DEFAULT 0) -- litemesh: counter = total\n;",
    )
    .unwrap();
    let db = dir.path().join("a.db");
    let r = Agent::try_start(
        dir.path(),
        "a",
        &[
            "--db",
            &s(&db),
            "--listen",
            "127.0.0.1:0",
            "--api",
            "127.0.0.1:0",
            "--schema",
            &s(&schema),
            "--insecure",
        ],
    );
    let Err((status, stderr)) = r else {
        panic!("the agent started");
    };
    assert!(status.is_some_and(|s| !s.success()), "{status:?}");
    assert!(stderr.contains("a counter holds integers"), "{stderr}");
}
