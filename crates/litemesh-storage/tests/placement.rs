//! Table placement: rows of a pinned table never enter the file of a node
//! outside its regions, by any path, and nobody is left with a gap or a
//! version passed off as complete.

use litemesh_storage::{ChangeBatch, Entitlement, StorageError, Store, Value};

const SCHEMA: &str = "
CREATE TABLE posts (id TEXT PRIMARY KEY, body TEXT);
CREATE TABLE eu_users ( -- litemesh: regions = eu
    id TEXT PRIMARY KEY, email TEXT);
";

fn node(dir: &tempfile::TempDir, name: &str, region: &str) -> Store {
    let mut s = Store::open(dir.path().join(format!("{name}.db"))).unwrap();
    s.apply_schema(SCHEMA).unwrap();
    s.set_entitlement(Entitlement::region(Some(region.into())))
        .unwrap();
    s
}

/// What `from` sends `to` in a reconciliation, filtered for `to`'s
/// entitlement as a node does.
fn batches_for(from: &Store, to: &Store) -> Vec<ChangeBatch> {
    let mut out = Vec::new();
    from.changes_for(
        &to.knowledge().unwrap(),
        Some(to.entitlement()),
        64 * 1024,
        |b| {
            out.push(b);
            Ok(true)
        },
    )
    .unwrap();
    out
}

fn sync(from: &Store, to: &mut Store) -> litemesh_storage::ApplyReport {
    let bs = batches_for(from, to);
    to.apply_all(&bs).unwrap()
}

/// One transaction of `n` rows in each table, the eu rows' emails made of
/// `secret`.
fn write_large(s: &mut Store, n: usize, secret: &str) {
    s.transaction(|t| {
        for i in 0..n {
            t.execute(
                "INSERT INTO posts VALUES (?1, ?2)",
                (format!("p{i}"), "x".repeat(200)),
            )?;
            t.execute(
                "INSERT INTO eu_users VALUES (?1, ?2)",
                (format!("u{i}"), secret.repeat(200 / secret.len().max(1))),
            )?;
        }
        Ok(())
    })
    .unwrap();
}

/// [`batches_for`] in small batches: a large version comes in chunks.
fn chunks_for(from: &Store, to: &Store) -> Vec<ChangeBatch> {
    let mut out = Vec::new();
    from.changes_for(
        &to.knowledge().unwrap(),
        Some(to.entitlement()),
        8 * 1024,
        |b| {
            out.push(b);
            Ok(true)
        },
    )
    .unwrap();
    out
}

fn count(s: &Store, sql: &str) -> i64 {
    s.connection().query_row(sql, [], |r| r.get(0)).unwrap()
}

/// Every trace of `eu_users` rows in a file: the table, its clocks, parked,
/// quarantined and buffered (chunks of large versions) changes. (The
/// change log refers to rows by key and table id, and keeps entries only
/// for rows the file holds.)
fn eu_traces(s: &Store) -> i64 {
    count(s, "SELECT count(*) FROM eu_users")
        + count(s, "SELECT count(*) FROM __lm_clk_eu_users")
        + count(
            s,
            "SELECT count(*) FROM __lm_parked WHERE instr(CAST(change AS TEXT), 'eu_users') > 0",
        )
        + count(
            s,
            "SELECT count(*) FROM __lm_quarantine WHERE instr(CAST(rows AS TEXT), 'eu_users') > 0",
        )
        + count(
            s,
            "SELECT count(*) FROM __lm_partial WHERE instr(CAST(rows AS TEXT), 'eu_users') > 0",
        )
}

#[test]
fn a_pinned_table_stays_in_its_regions_and_nobody_is_left_with_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let mut eu = node(&dir, "eu", "eu");
    let mut us = node(&dir, "us", "us");
    let mut eu2 = node(&dir, "eu2", "eu");
    // One transaction across placements, one only in the pinned table.
    eu.execute_batch(
        "INSERT INTO posts VALUES ('p1', 'hello'); INSERT INTO eu_users VALUES ('u1', 'a@eu');",
    )
    .unwrap();
    eu.execute_batch("INSERT INTO eu_users VALUES ('u2', 'b@eu')")
        .unwrap();

    let r = sync(&eu, &mut us);
    assert_eq!(r.rows_refused, 0, "the sender filtered");
    assert_eq!(count(&us, "SELECT count(*) FROM posts"), 1);
    assert_eq!(eu_traces(&us), 0);
    // Both versions are held: the us node asks for nothing more.
    assert!(us.knowledge().unwrap().covers(&eu.knowledge().unwrap()));
    assert!(batches_for(&eu, &us).is_empty());

    // The us node never passes those versions off as complete to an eu
    // node: neither sent nor reported cleared.
    let from_us = batches_for(&us, &eu2);
    assert!(from_us.iter().all(|b| b.is_empty()), "{from_us:?}");
    sync(&us, &mut eu2);
    assert!(eu2.knowledge().unwrap().have.is_empty());
    // The eu node supplies them whole.
    sync(&eu, &mut eu2);
    assert_eq!(count(&eu2, "SELECT count(*) FROM eu_users"), 2);
    assert!(eu2.knowledge().unwrap().covers(&eu.knowledge().unwrap()));

    // Another us node learns the versions from the us node, stripped alike.
    let mut us2 = node(&dir, "us2", "us");
    sync(&us, &mut us2);
    assert!(us2.knowledge().unwrap().covers(&eu.knowledge().unwrap()));
    assert_eq!(eu_traces(&us2), 0);
    assert_eq!(count(&us2, "SELECT count(*) FROM posts"), 1);
}

#[test]
fn a_version_held_in_part_is_never_reported_cleared() {
    let dir = tempfile::tempdir().unwrap();
    let mut eu = node(&dir, "eu", "eu");
    let mut us = node(&dir, "us", "us");
    let mut eu2 = node(&dir, "eu2", "eu");
    eu.execute_batch(
        "INSERT INTO posts VALUES ('p1', 'v1'); INSERT INTO eu_users VALUES ('u1', 'a@eu');",
    )
    .unwrap();
    // Version 2 overwrites every cell of version 1 that the us node holds.
    eu.execute_batch("UPDATE posts SET body = 'v2' WHERE id = 'p1'")
        .unwrap();
    sync(&eu, &mut us);
    us.compact().unwrap();
    let from_us = batches_for(&us, &eu2);
    for b in &from_us {
        assert!(
            b.cleared.iter().all(|c| c.start > 1),
            "version 1 reported cleared: {b:?}"
        );
        assert!(b.versions.iter().all(|v| v.version != 1));
    }
    sync(&us, &mut eu2);
    assert!(!eu2.knowledge().unwrap().contains(&eu.actor_id(), 1));
    sync(&eu, &mut eu2);
    assert_eq!(count(&eu2, "SELECT count(*) FROM eu_users"), 1);
}

#[test]
fn rows_a_sender_should_not_have_sent_never_enter_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut eu = node(&dir, "eu", "eu");
    let mut us = node(&dir, "us", "us");
    eu.execute_batch(
        "INSERT INTO posts VALUES ('p1', 'x'); INSERT INTO eu_users VALUES ('u1', 'a@eu');",
    )
    .unwrap();
    // Unfiltered, as a sender that ignores placement would send.
    let mut all = Vec::new();
    eu.changes_since(&us.knowledge().unwrap(), 64 * 1024, |b| {
        all.push(b);
        Ok(true)
    })
    .unwrap();
    let r = us.apply_all(&all).unwrap();
    assert_eq!(r.rows_refused, 1);
    assert_eq!(eu_traces(&us), 0);
    assert_eq!(count(&us, "SELECT count(*) FROM posts"), 1);
    // The version is held — and known to lack the eu rows.
    let mut eu2 = node(&dir, "eu2", "eu");
    assert!(batches_for(&us, &eu2).iter().all(|b| b.is_empty()));
    sync(&eu, &mut eu2);
    assert_eq!(count(&eu2, "SELECT count(*) FROM eu_users"), 1);
}

#[test]
fn a_write_to_a_table_pinned_elsewhere_is_refused_naming_its_regions() {
    let dir = tempfile::tempdir().unwrap();
    let mut us = node(&dir, "us", "us");
    let err = us
        .execute_batch("INSERT INTO eu_users VALUES ('u1', 'x')")
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("eu_users") && msg.contains("eu"), "{msg}");
    // Through a connection of the application's own, too.
    let path = dir.path().join("us.db");
    let mut conn = rusqlite::Connection::open(&path).unwrap();
    litemesh_storage::attach(&mut conn).unwrap();
    let e = conn
        .execute("INSERT INTO eu_users VALUES ('u2', 'y')", [])
        .unwrap_err();
    assert!(
        e.to_string().contains("may only be held in region(s) eu"),
        "{e}"
    );
    // Unpinned tables are written as usual.
    us.execute_batch("INSERT INTO posts VALUES ('p', 'ok')")
        .unwrap();
    assert_eq!(eu_traces(&us), 0);
}

#[test]
fn widening_a_placement_works_and_narrowing_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut eu = node(&dir, "eu", "eu");
    let mut us = node(&dir, "us", "us");
    eu.execute_batch(
        "INSERT INTO posts VALUES ('p1', 'x'); INSERT INTO eu_users VALUES ('u1', 'a@eu');",
    )
    .unwrap();
    sync(&eu, &mut us);
    assert_eq!(eu_traces(&us), 0);

    let wider = SCHEMA.replace("regions = eu", "regions = eu, us");
    eu.apply_schema(&wider).unwrap();
    let report = us.apply_schema(&wider).unwrap();
    assert!(report.is_unchanged());
    // The us node forgot the version it held without eu_users rows, and
    // fetches it again whole.
    assert!(!us.knowledge().unwrap().contains(&eu.actor_id(), 1));
    sync(&eu, &mut us);
    assert_eq!(count(&us, "SELECT count(*) FROM eu_users"), 1);
    us.execute_batch("INSERT INTO eu_users VALUES ('u2', 'us ok now')")
        .unwrap();

    // Narrowing back, or pinning a table replicated everywhere: refused.
    let err = eu.apply_schema(SCHEMA).unwrap_err();
    assert!(matches!(err, StorageError::Destructive(_)), "{err}");
    let pin_posts = wider.replace(
        "CREATE TABLE posts (",
        "CREATE TABLE posts ( -- litemesh: regions = eu\n",
    );
    let err = eu.apply_schema(&pin_posts).unwrap_err();
    assert!(err.to_string().contains("cannot be pinned"), "{err}");
    // A mistyped directive is refused too.
    let typo = SCHEMA.replace("regions = eu", "region = eu");
    let fresh = Store::open(dir.path().join("fresh.db")).unwrap();
    drop(fresh);
    let mut fresh = Store::open(dir.path().join("fresh.db")).unwrap();
    assert!(fresh.apply_schema(&typo).is_err());
}

#[test]
fn a_node_whose_file_holds_rows_it_may_not_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut eu = node(&dir, "eu", "eu");
    eu.execute_batch("INSERT INTO eu_users VALUES ('u1', 'a@eu')")
        .unwrap();
    let err = eu
        .set_entitlement(Entitlement::region(Some("us".into())))
        .unwrap_err();
    assert!(matches!(err, StorageError::Placement(_)), "{err}");
    // Still the eu node it was.
    eu.execute_batch("INSERT INTO eu_users VALUES ('u2', 'b@eu')")
        .unwrap();
}

#[test]
fn a_partial_replica_holds_only_the_tables_it_carries_and_can_add_more() {
    let dir = tempfile::tempdir().unwrap();
    let mut eu = node(&dir, "eu", "eu");
    let mut part = Store::open(dir.path().join("part.db")).unwrap();
    part.apply_schema(SCHEMA).unwrap();
    part.set_entitlement(Entitlement {
        region: Some("eu".into()),
        carried: Some(["eu_users".to_string()].into()),
    })
    .unwrap();
    eu.execute_batch(
        "INSERT INTO posts VALUES ('p1', 'x'); INSERT INTO eu_users VALUES ('u1', 'a@eu');",
    )
    .unwrap();
    // Even sent everything, it keeps only what it carries.
    let mut all = Vec::new();
    eu.changes_since(&part.knowledge().unwrap(), 64 * 1024, |b| {
        all.push(b);
        Ok(true)
    })
    .unwrap();
    let r = part.apply_all(&all).unwrap();
    assert_eq!(r.rows_refused, 0, "not carried is not forbidden");
    assert_eq!(count(&part, "SELECT count(*) FROM posts"), 0);
    assert_eq!(count(&part, "SELECT count(*) FROM eu_users"), 1);
    assert!(part.knowledge().unwrap().covers(&eu.knowledge().unwrap()));
    // Carrying posts too: the version is fetched again, whole.
    part.set_entitlement(Entitlement::region(Some("eu".into())))
        .unwrap();
    sync(&eu, &mut part);
    assert_eq!(count(&part, "SELECT count(*) FROM posts"), 1);
    assert_eq!(
        part.connection()
            .query_row("SELECT body FROM posts", [], |r| r.get::<_, Value>(0))
            .unwrap(),
        Value::Text("x".into())
    );
}

struct Count(usize);

impl litemesh_storage::RowSink for Count {
    fn columns(&mut self, _: Vec<String>) -> litemesh_storage::Result<bool> {
        Ok(true)
    }
    fn row(&mut self, _: Vec<Value>) -> litemesh_storage::Result<bool> {
        self.0 += 1;
        Ok(true)
    }
}

#[test]
fn queries_read_only_what_this_node_and_the_node_they_run_for_may_hold() {
    use litemesh_storage::{ClientLimits, ReadConnection};
    let dir = tempfile::tempdir().unwrap();
    let mut eu = node(&dir, "eu", "eu");
    eu.execute_batch("INSERT INTO eu_users VALUES ('u1', 'a@eu')")
        .unwrap();
    let mut us = node(&dir, "us", "us");
    let run = |store: &Store, path: &str, sql: &str, limits: &ClientLimits| {
        let mut rc = ReadConnection::open(dir.path().join(path)).unwrap();
        rc.set_placement(store.placement().clone(), store.entitlement().clone());
        let mut c = Count(0);
        rc.query(sql, &[], limits, &mut c).map(|()| c.0)
    };
    let plain = ClientLimits::default();
    assert_eq!(
        run(&eu, "eu.db", "SELECT * FROM eu_users", &plain).unwrap(),
        1
    );
    // Forwarded for a node of another region: refused, whatever the path
    // to the table (a join, a subquery).
    let for_us = ClientLimits {
        on_behalf_of: Some(Entitlement::region(Some("us".into()))),
        ..ClientLimits::default()
    };
    for sql in [
        "SELECT * FROM eu_users",
        "SELECT p.id FROM posts p JOIN eu_users u ON u.id = p.id",
        "SELECT (SELECT count(*) FROM eu_users)",
    ] {
        let err = run(&eu, "eu.db", sql, &for_us).unwrap_err();
        assert!(
            matches!(&err, StorageError::Refused(m) if m.contains("requesting node")),
            "{sql}: {err}"
        );
    }
    assert_eq!(
        run(&eu, "eu.db", "SELECT * FROM posts", &for_us).unwrap(),
        0
    );
    // On the us node itself.
    let err = run(&us, "us.db", "SELECT * FROM eu_users", &plain).unwrap_err();
    assert!(err.to_string().contains("region(s) eu"), "{err}");
    us.execute_batch("INSERT INTO posts VALUES ('p', 'x')")
        .unwrap();
}

#[test]
fn a_large_version_in_chunks_is_filtered_chunk_by_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let mut eu = node(&dir, "eu", "eu");
    let mut us = node(&dir, "us", "us");
    let mut eu2 = node(&dir, "eu2", "eu");
    write_large(&mut eu, 300, "y");
    let small = chunks_for;
    let bs = small(&eu, &us);
    assert!(bs.len() > 5, "chunked: {} batches", bs.len());
    assert!(
        bs.iter()
            .flat_map(|b| &b.versions)
            .all(|v| v.chunk.is_some()
                && v.withheld == ["eu_users"]
                && v.rows.iter().all(|r| r.table == "posts"))
    );
    // Chunks arriving one by one, as a slow sync delivers them.
    for b in &bs {
        us.apply(b).unwrap();
    }
    assert_eq!(count(&us, "SELECT count(*) FROM posts"), 300);
    assert_eq!(eu_traces(&us), 0);
    assert!(us.knowledge().unwrap().covers(&eu.knowledge().unwrap()));
    assert!(small(&us, &eu2).iter().all(|b| b.is_empty()));
    for b in small(&eu, &eu2) {
        eu2.apply(&b).unwrap();
    }
    assert_eq!(count(&eu2, "SELECT count(*) FROM eu_users"), 300);
}

#[test]
fn no_spelling_of_a_query_reads_a_table_pinned_elsewhere() {
    use litemesh_storage::{ClientLimits, ReadConnection};
    let dir = tempfile::tempdir().unwrap();
    let mut eu = node(&dir, "eu", "eu");
    eu.execute_batch("INSERT INTO eu_users VALUES ('u1', 'a@eu')")
        .unwrap();
    let us = node(&dir, "us", "us");
    let open = |store: &Store, path: &str| {
        let rc = ReadConnection::open(dir.path().join(path)).unwrap();
        rc.set_placement(store.placement().clone(), store.entitlement().clone());
        rc
    };
    let forms = [
        "SELECT * FROM eu_users",
        "WITH x AS (SELECT * FROM eu_users) SELECT * FROM x",
        "SELECT * FROM (SELECT * FROM eu_users) AS y",
        "SELECT * FROM (SELECT * FROM eu_users LIMIT 5) AS y, posts",
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r, eu_users WHERE n < 3) SELECT * FROM r",
    ];
    let plain = ClientLimits::default();
    let for_us = ClientLimits {
        on_behalf_of: Some(Entitlement::region(Some("us".into()))),
        ..ClientLimits::default()
    };
    let mut on_us = open(&us, "us.db");
    let mut on_eu = open(&eu, "eu.db");
    for sql in forms {
        let err = on_us.query(sql, &[], &plain, &mut Count(0)).unwrap_err();
        assert!(matches!(&err, StorageError::Refused(_)), "{sql}: {err}");
        // On the eu node for itself (compiled and cached) …
        on_eu.query(sql, &[], &plain, &mut Count(0)).unwrap();
        // … and then for a us node: authorized again, refused.
        let err = on_eu.query(sql, &[], &for_us, &mut Count(0)).unwrap_err();
        assert!(matches!(&err, StorageError::Refused(_)), "{sql}: {err}");
    }
}

#[test]
fn litemesh_names_are_refused_in_client_statements_whatever_the_spelling() {
    use litemesh_storage::{ClientLimits, ReadConnection};
    let dir = tempfile::tempdir().unwrap();
    let mut eu = node(&dir, "eu", "eu");
    let mut rc = ReadConnection::open(dir.path().join("eu.db")).unwrap();
    for sql in [
        "WITH x AS (SELECT * FROM __lm_site) SELECT * FROM x",
        "SELECT * FROM (SELECT * FROM \"__LM_LOG\") AS y",
        "WITH __lm_trick AS (SELECT 1) SELECT * FROM __lm_trick",
        "SELECT __lm_local()",
    ] {
        let err = rc
            .query(sql, &[], &ClientLimits::default(), &mut Count(0))
            .unwrap_err();
        assert!(err.to_string().contains("__lm_"), "{sql}: {err}");
    }
    // In a string, the name is only text.
    rc.query(
        "SELECT '__lm_site', 'it''s __lm_'",
        &[],
        &ClientLimits::default(),
        &mut Count(0),
    )
    .unwrap();
    let err = eu
        .client_transaction(&ClientLimits::default(), |tx| {
            tx.execute(
                "WITH x AS (SELECT count(*) AS n FROM __lm_log) INSERT INTO posts SELECT 'c', n FROM x",
                &[],
            )
        })
        .unwrap_err();
    assert!(err.to_string().contains("__lm_"), "{err}");
    eu.client_transaction(&ClientLimits::default(), |tx| {
        tx.execute(
            "INSERT INTO posts VALUES ('__lm_x', 'text may say __lm_')",
            &[],
        )
    })
    .unwrap();
}

#[test]
fn buffered_and_quarantined_rows_go_when_the_node_may_no_longer_hold_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut eu = node(&dir, "eu", "eu");
    let mut other = node(&dir, "other", "eu");
    write_large(&mut eu, 200, "SECRET");
    let bs = chunks_for(&eu, &other);
    assert!(bs.len() > 4);
    // Half the chunks arrive while the node is in eu; then it restarts in
    // us (it holds no eu row yet, so that is allowed).
    let half = bs.len() / 2;
    for b in &bs[..half] {
        other.apply(b).unwrap();
    }
    assert!(eu_traces(&other) > 0, "chunks buffered");
    other
        .set_entitlement(Entitlement::region(Some("us".into())))
        .unwrap();
    assert_eq!(eu_traces(&other), 0, "buffered eu rows purged");
    for b in &bs[half..] {
        other.apply(b).unwrap();
    }
    assert_eq!(eu_traces(&other), 0);
    assert_eq!(count(&other, "SELECT count(*) FROM posts"), 200);
    assert!(other.knowledge().unwrap().covers(&eu.knowledge().unwrap()));
    // Erased, not only unlinked: the secret is nowhere in the file.
    drop(other);
    let bytes = std::fs::read(dir.path().join("other.db")).unwrap();
    let wal = std::fs::read(dir.path().join("other.db-wal")).unwrap_or_default();
    for b in [&bytes, &wal] {
        assert!(
            !b.windows(12).any(|w| w == b"SECRETSECRET"),
            "plaintext of a purged row left in the file"
        );
    }
}

#[test]
fn a_directive_may_sit_above_its_table_among_other_comments() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(dir.path().join("s.db")).unwrap();
    s.apply_schema(
        "-- the posts\nCREATE TABLE posts (id TEXT PRIMARY KEY, body TEXT);\n\
         -- customers of the EU\n-- litemesh: regions = eu\n\
         CREATE /* note */ TABLE eu_users (id TEXT PRIMARY KEY, email TEXT);",
    )
    .unwrap();
    assert!(s.placement().regions("eu_users").unwrap().contains("eu"));
    assert!(s.placement().regions("posts").is_none());
}

#[test]
fn a_quoted_identifier_hides_no_litemesh_name() {
    use litemesh_storage::{ClientLimits, ReadConnection};
    let dir = tempfile::tempdir().unwrap();
    let mut eu = node(&dir, "eu", "eu");
    let mut rc = ReadConnection::open(dir.path().join("eu.db")).unwrap();
    for sql in [
        "WITH \"--\" AS (SELECT 1), __lm_z AS (SELECT hex(actor) FROM __lm_site) SELECT * FROM __lm_z",
        "WITH \"x'\" AS (SELECT 1), __lm_z AS (SELECT * FROM __lm_clk_eu_users) SELECT * FROM __lm_z, \"x'\"",
        "WITH [/*] AS (SELECT 1), __lm_z AS (SELECT 1) SELECT * FROM __lm_z",
        "WITH `'` AS (SELECT 1), __lm_z AS (SELECT 1) SELECT * FROM __lm_z",
        "SELECT * FROM \"x\"\"'\", __lm_log",
        "SELECT 1 AS \"__LM_x\"",
    ] {
        let err = rc
            .query(sql, &[], &ClientLimits::default(), &mut Count(0))
            .unwrap_err();
        assert!(err.to_string().contains("__lm_"), "{sql}: {err}");
    }
    let err = eu
        .client_transaction(&ClientLimits::default(), |tx| {
            tx.execute(
                "WITH \"--\" AS (SELECT 1), __lm_z AS (SELECT __lm_version() AS v) SELECT * FROM __lm_z",
                &[],
            )
        })
        .unwrap_err();
    assert!(err.to_string().contains("__lm_"), "{err}");
}

#[test]
fn a_version_claimed_without_a_write_is_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = node(&dir, "s", "eu");
    // However a transaction came to claim a version (here, by calling the
    // capture function itself on the trusted connection), writing nothing
    // uses none: no version reported, and the next write takes it.
    let c = s
        .transaction(|t| {
            let v: i64 = t.query_row("SELECT __lm_version()", [], |r| r.get(0))?;
            Ok(v)
        })
        .unwrap();
    assert_eq!(c.value, 1);
    assert_eq!(c.version, None);
    let w = s
        .transaction(|t| {
            t.execute("INSERT INTO posts VALUES ('p', 'x')", [])?;
            Ok(())
        })
        .unwrap();
    assert_eq!(w.version, Some(1));
    assert_eq!(s.db_version().unwrap(), 1);
}
