//! No poison pills: every change a node accepts can be applied everywhere,
//! and a change that fails anyway is isolated. Also: the client sandbox, the
//! move to a new actor id, and the upgrade of format-1 files.

mod common;
use common::*;
use litemesh_storage::{
    ActorId, CellChange, ChangeBatch, ClientLimits, DEFAULT_MAX_WIRE_BYTES, MAX_ROW_WRITE_BYTES,
    ReadConnection, RowChange, RowSink, StorageError, Store, Value, VersionChanges, encode_batch,
};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

fn pair(schema: &str) -> (tempfile::TempDir, Store, Store) {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Store::open(dir.path().join("a.db")).unwrap();
    let mut b = Store::open(dir.path().join("b.db")).unwrap();
    a.apply_schema(schema).unwrap();
    b.apply_schema(schema).unwrap();
    (dir, a, b)
}

/// Syncs `from` → `to` the way nodes do: 256 KiB batches, each encoded for
/// the wire under the 8 MiB limit (an oversized batch fails here).
fn wire_sync(from: &Store, to: &mut Store) -> litemesh_storage::ApplyReport {
    let k = to.knowledge().unwrap();
    let mut batches = Vec::new();
    from.changes_since(&k, 256 * 1024, |b| {
        encode_batch(&b, DEFAULT_MAX_WIRE_BYTES)?;
        batches.push(b);
        Ok(true)
    })
    .unwrap();
    to.apply_all(&batches).unwrap()
}

fn count(s: &Store, sql: &str) -> i64 {
    s.connection().query_row(sql, [], |r| r.get(0)).unwrap()
}

#[test]
fn a_row_larger_than_a_change_may_be_is_refused_when_written() {
    let (_d, mut a, mut b) = pair("CREATE TABLE t (id TEXT PRIMARY KEY, note BLOB)");
    // One statement making a 9 MB value.
    let err = a
        .execute_batch("INSERT INTO t VALUES ('x', randomblob(9000000))")
        .unwrap_err();
    assert!(
        matches!(err, StorageError::RowTooLarge { size, limit, .. } if size > 9_000_000 && limit == MAX_ROW_WRITE_BYTES),
        "{err}"
    );
    assert!(err.to_string().contains("split large values"), "{err}");
    assert_eq!(count(&a, "SELECT count(*) FROM t"), 0, "nothing committed");
    assert_eq!(a.db_version().unwrap(), 0, "no version used");

    // Growing a cell by appends: refused at the write that crosses the limit.
    a.execute_batch("INSERT INTO t VALUES ('y', x'')").unwrap();
    let mb = vec![7u8; 1 << 20];
    let mut refused = false;
    for _ in 0..10 {
        let r = a.transaction(|tx| {
            tx.execute("UPDATE t SET note = note || ?1 WHERE id = 'y'", [&mb])?;
            Ok(())
        });
        match r {
            Ok(_) => {}
            Err(StorageError::RowTooLarge { .. }) => {
                refused = true;
                break;
            }
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    assert!(refused, "the append past the limit is refused");
    let len = count(&a, "SELECT length(note) FROM t WHERE id = 'y'");
    assert!(len <= MAX_ROW_WRITE_BYTES as i64 && len >= 3 << 20, "{len}");
    // A value just under the limit, and everything after it, replicate.
    a.execute_batch(&format!(
        "INSERT INTO t VALUES ('z', randomblob({}))",
        MAX_ROW_WRITE_BYTES - 64
    ))
    .unwrap();
    a.execute_batch("INSERT INTO t VALUES ('after', x'01')")
        .unwrap();
    wire_sync(&a, &mut b);
    assert_eq!(dump(&a, "t"), dump(&b, "t"));
    assert_eq!(count(&b, "SELECT count(*) FROM t"), 3);
}

#[test]
fn a_null_key_is_refused_with_a_clear_error() {
    let (_d, mut a, _b) = pair("CREATE TABLE t (id TEXT PRIMARY KEY, v INTEGER)");
    let err = a
        .execute_batch("INSERT INTO t VALUES (NULL, 1)")
        .unwrap_err();
    assert!(matches!(err, StorageError::NullKey { .. }), "{err}");
    assert_eq!(count(&a, "SELECT count(*) FROM t"), 0);
}

#[test]
fn check_constraints_hold_on_every_merged_row() {
    // Over several columns: two valid concurrent writes could merge into a
    // row it refuses. Refused, with the way out.
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(dir.path().join("s.db")).unwrap();
    let err = s
        .apply_schema(
            "CREATE TABLE r (id TEXT PRIMARY KEY, lo INTEGER, hi INTEGER, CHECK (lo <= hi))",
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("several columns (hi, lo)"), "{err}");
    // Of one column (and the key): every merged row satisfies it.
    let (_d, mut a, mut b) = pair(
        "CREATE TABLE r (id TEXT PRIMARY KEY, lo INTEGER CHECK (lo >= 0), \
         hi INTEGER, CHECK (hi < 100 AND id <> 'bad'))",
    );
    a.execute_batch("INSERT INTO r VALUES ('x', 1, 5)").unwrap();
    wire_sync(&a, &mut b);
    a.execute_batch("UPDATE r SET lo = 4 WHERE id = 'x'")
        .unwrap();
    b.execute_batch("UPDATE r SET hi = 2 WHERE id = 'x'")
        .unwrap();
    for i in 0..100 {
        a.execute_batch(&format!("INSERT INTO r VALUES ('a{i}', 0, 1)"))
            .unwrap();
    }
    let ra = wire_sync(&a, &mut b);
    let rb = wire_sync(&b, &mut a);
    assert!(ra.quarantined.is_empty() && rb.quarantined.is_empty());
    assert_eq!(dump(&a, "r"), dump(&b, "r"), "replicas identical");
    assert_eq!(count(&b, "SELECT count(*) FROM r"), 101);
    for s in [&a, &b] {
        let ok: String = s
            .connection()
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok", "every row satisfies its CHECK constraints");
    }
    // Local writes still check.
    assert!(
        a.execute_batch("INSERT INTO r VALUES ('bad2', -1, 1)")
            .is_err()
    );
}

#[test]
fn schema_features_that_would_diverge_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(dir.path().join("s.db")).unwrap();
    for (sql, needle) in [
        (
            "CREATE TABLE u (email TEXT PRIMARY KEY COLLATE NOCASE, v TEXT)",
            "COLLATE NOCASE",
        ),
        (
            "CREATE TABLE u (a TEXT, b TEXT COLLATE RTRIM, PRIMARY KEY (a, b)) WITHOUT ROWID",
            "COLLATE RTRIM",
        ),
        (
            "CREATE TABLE u (id TEXT PRIMARY KEY, v TEXT NOT NULL DEFAULT NULL)",
            "DEFAULT NULL",
        ),
        (
            "CREATE TABLE p (id TEXT PRIMARY KEY); \
             CREATE TABLE c (id TEXT PRIMARY KEY, p TEXT REFERENCES p(id) ON DELETE CASCADE)",
            "ON DELETE CASCADE",
        ),
        (
            "CREATE TABLE u (id TEXT PRIMARY KEY, __clk BLOB)",
            "reserved",
        ),
        (
            "CREATE TABLE d (id TEXT PRIMARY KEY, body TEXT, parse INTEGER NOT NULL DEFAULT 0);
             CREATE INDEX d_x ON d(CASE WHEN parse THEN json_extract(body, '$.x') END)",
            "several columns (body, parse)",
        ),
        (
            "CREATE TABLE d (id TEXT PRIMARY KEY, body TEXT, parse INTEGER);
             CREATE INDEX d_x ON d(json_extract(body, '$.x')) WHERE parse = 1",
            "several columns",
        ),
    ] {
        let err = s.apply_schema(sql).unwrap_err().to_string();
        assert!(err.contains(needle), "{sql}: {err}");
    }
    assert!(s.tables().is_empty(), "nothing applied");
    // Accepted, with warnings that say what replication changes.
    let r = s
        .apply_schema(
            "CREATE TABLE p (id TEXT PRIMARY KEY, name TEXT COLLATE NOCASE);
             CREATE TABLE c (id TEXT PRIMARY KEY, p TEXT REFERENCES p(id), n INTEGER CHECK (n >= 0),
                 a INTEGER, b INTEGER, doc TEXT);
             CREATE INDEX c_sum ON c(a + b);
             CREATE INDEX c_each ON c(lower(p), abs(n), json_extract(doc, '$.k'));
             CREATE INDEX c_part ON c(a) WHERE b > 0",
        )
        .unwrap();
    let w = r.warnings.join("\n");
    assert!(w.contains("not enforced"), "{w}");
}

#[test]
fn tables_and_columns_match_whatever_the_case_of_their_names() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Store::open(dir.path().join("a.db")).unwrap();
    let mut b = Store::open(dir.path().join("b.db")).unwrap();
    a.apply_schema("CREATE TABLE Items (ID TEXT PRIMARY KEY, Qty INTEGER)")
        .unwrap();
    b.apply_schema("CREATE TABLE items (id TEXT PRIMARY KEY, qty INTEGER)")
        .unwrap();
    a.execute_batch("INSERT INTO Items VALUES ('x', 3)")
        .unwrap();
    let r = wire_sync(&a, &mut b);
    assert_eq!(r.rows_parked, 0);
    assert_eq!(count(&b, "SELECT qty FROM items WHERE id = 'x'"), 3);
}

/// A change with a value a STRICT column refuses, as a faulty or hostile
/// peer could send.
fn bad_batch(actor: ActorId, version: u64, key: &str) -> ChangeBatch {
    ChangeBatch {
        versions: vec![VersionChanges {
            actor,
            version,
            chunk: None,
            rows: vec![RowChange {
                table: "s".into(),
                pk: vec![Value::Text(key.into())],
                seq: 0,
                cl: 1,
                cells: vec![CellChange {
                    column: "n".into(),
                    value: Value::Text("not a number".into()),
                    cv: 1,
                    kind: Default::default(),
                    base: 0,
                }],
            }],
            withheld: vec![],
        }],
        cleared: vec![],
    }
}

#[test]
fn a_change_that_cannot_apply_is_quarantined_and_blocks_nothing() {
    let (_d, mut a, mut b) = pair("CREATE TABLE s (id TEXT PRIMARY KEY, n INTEGER) STRICT");
    let evil = ActorId([9; 16]);
    let mut good = bad_batch(evil, 2, "ok");
    good.versions[0].rows[0].cells[0].value = Value::Integer(7);
    // Version 1 is bad, 2 is good, and a's own writes travel in the same call.
    a.execute_batch("INSERT INTO s VALUES ('a1', 1)").unwrap();
    let mut from_a = Vec::new();
    a.changes_since(&b.knowledge().unwrap(), 1 << 20, |x| {
        from_a.push(x);
        Ok(true)
    })
    .unwrap();
    let mut all = vec![bad_batch(evil, 1, "bad"), good];
    all.extend(from_a);
    let r = b.apply_all(&all).unwrap();
    assert_eq!(r.quarantined.len(), 1, "{r:?}");
    assert_eq!((r.quarantined[0].0, r.quarantined[0].1), (evil, 1));
    assert_eq!(r.versions_applied, 2);
    assert_eq!(
        count(&b, "SELECT count(*) FROM s"),
        2,
        "'ok' and 'a1' applied"
    );
    let k = b.knowledge().unwrap();
    assert!(!k.contains(&evil, 1) && k.contains(&evil, 2));
    let q = b.quarantine_list().unwrap();
    assert_eq!(q.len(), 1);
    assert!(
        q[0].error
            .contains("cannot store TEXT value in INTEGER column"),
        "{q:?}"
    );
    // Sent again: skipped at once, not applied, not re-quarantined.
    let r = b.apply(&bad_batch(evil, 1, "bad")).unwrap();
    assert_eq!((r.versions_in_quarantine, r.quarantined.len()), (1, 0));
    // Retried later: still failing, it stays.
    let r = b.retry_quarantined(u64::MAX, true).unwrap();
    assert_eq!((r.applied.len(), r.failed), (0, 1));
    assert_eq!(b.quarantine_list().unwrap()[0].attempts, 2);
    // Survives a restart of the store.
    let path = b.connection().path().unwrap().to_owned();
    drop(b);
    let mut b = Store::open(&path).unwrap();
    assert_eq!(b.quarantined_count(), 1);
    // Reported cleared by a peer (every cell overwritten since): released.
    let cleared = ChangeBatch {
        versions: vec![],
        cleared: vec![litemesh_storage::Cleared {
            actor: evil,
            start: 1,
            end: 1,
        }],
    };
    b.apply(&cleared).unwrap();
    assert_eq!(b.quarantined_count(), 0);
    assert!(b.knowledge().unwrap().contains(&evil, 1));
}

#[test]
fn a_quarantined_change_applies_once_what_refused_it_is_gone() {
    // b has an index (its schema is newer) on an expression that malformed
    // JSON makes fail; a, without it, writes malformed JSON.
    let dir = tempfile::tempdir().unwrap();
    let mut a = Store::open(dir.path().join("a.db")).unwrap();
    let mut b = Store::open(dir.path().join("b.db")).unwrap();
    let base = "CREATE TABLE d (id TEXT PRIMARY KEY, doc TEXT)";
    a.apply_schema(base).unwrap();
    b.apply_schema(&format!(
        "{base}; CREATE INDEX d_a ON d(json_extract(doc, '$.a'))"
    ))
    .unwrap();
    a.execute_batch("INSERT INTO d VALUES ('x', '{not json')")
        .unwrap();
    a.execute_batch("INSERT INTO d VALUES ('y', '{\"a\": 1}')")
        .unwrap();
    let r = wire_sync(&a, &mut b);
    assert_eq!(r.quarantined.len(), 1, "{r:?}");
    assert_eq!(count(&b, "SELECT count(*) FROM d"), 1, "'y' applied");
    // The writer fixes the document: that later version applies, and the
    // quarantined one no longer writes anything when retried.
    a.execute_batch("UPDATE d SET doc = '{\"a\": 2}' WHERE id = 'x'")
        .unwrap();
    wire_sync(&a, &mut b);
    let r = b.retry_quarantined(u64::MAX, true).unwrap();
    assert_eq!(r.applied.len(), 1);
    assert_eq!(b.quarantined_count(), 0);
    assert_eq!(dump(&a, "d"), dump(&b, "d"));
    assert_eq!(a.knowledge().unwrap().have, b.knowledge().unwrap().have);
}

// ---------------------------------------------------------------------------
// The sandbox
// ---------------------------------------------------------------------------

fn client_tx(s: &mut Store, sqls: &[&str]) -> Result<Option<u64>, StorageError> {
    client_tx_with(s, sqls, &ClientLimits::default())
}

fn client_tx_with(
    s: &mut Store,
    sqls: &[&str],
    limits: &ClientLimits,
) -> Result<Option<u64>, StorageError> {
    s.client_transaction(limits, |tx| {
        for q in sqls {
            tx.execute(q, &[])?;
        }
        Ok(())
    })
    .map(|c| c.version)
}

#[test]
fn client_transactions_may_only_write_replicated_tables() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(&dir, "s");
    s.connection()
        .execute_batch("CREATE TABLE local_only (k TEXT)")
        .unwrap();
    s.refresh().unwrap();
    assert!(
        client_tx(&mut s, &["INSERT INTO items VALUES ('ok', 1, 'x')"])
            .unwrap()
            .is_some()
    );
    let before = s.db_version().unwrap();
    for (sql, needle) in [
        ("DROP TRIGGER \"__lm_ins_items\"", "__lm_"),
        ("DROP TABLE items", "schema changes"),
        ("CREATE TABLE x (a)", "schema changes"),
        ("ALTER TABLE items ADD COLUMN z", "schema changes"),
        ("CREATE INDEX i2 ON items(b)", "schema changes"),
        ("PRAGMA query_only = 1", "PRAGMA query_only"),
        ("PRAGMA locking_mode = EXCLUSIVE", "PRAGMA locking_mode"),
        ("PRAGMA wal_autocheckpoint = 0", "PRAGMA wal_autocheckpoint"),
        ("DELETE FROM __lm_log", "__lm_"),
        ("UPDATE __lm_site SET next_version = 1", "__lm_"),
        (
            "INSERT INTO items SELECT 'z', count(*), NULL FROM __lm_log",
            "__lm_",
        ),
        ("ATTACH DATABASE '/tmp/lm-evil.db' AS evil", "ATTACH"),
        ("COMMIT", "transaction control"),
        ("BEGIN", "transaction control"),
        ("SAVEPOINT s", "transaction control"),
        (
            "INSERT INTO local_only VALUES ('x')",
            "not a replicated table",
        ),
        ("SELECT __lm_seq()", "__lm_"),
        // The very text of statements the store caches for itself.
        (
            "DELETE FROM __lm_partial WHERE actor = ?1 AND version = ?2",
            "own tables",
        ),
        (
            "UPDATE __lm_site SET probe = probe + 1 WHERE id = 0",
            "own tables",
        ),
        // Cached by the commit above (the change log's chunks): the cache
        // must not hand it to a client, whatever white space surrounds it.
        (
            "INSERT OR REPLACE INTO __lm_log(actor, version, seq, last, entries) VALUES (?1, ?2, ?3, ?4, ?5)",
            "own tables",
        ),
        (
            "  INSERT OR REPLACE INTO __lm_log(actor, version, seq, last, entries) VALUES (?1, ?2, ?3, ?4, ?5)\n",
            "own tables",
        ),
        (
            "INSERT INTO items VALUES ('y', 1, 'x'); DROP TABLE items",
            "schema changes",
        ),
        (
            "INSERT INTO items VALUES ('big', 1, zeroblob(900000000))",
            "too big",
        ),
    ] {
        let err =
            client_tx(&mut s, &["INSERT INTO items VALUES ('first', 1, 'x')", sql]).unwrap_err();
        assert!(err.to_string().contains(needle), "{sql}: {err}");
        assert_eq!(s.db_version().unwrap(), before, "{sql}: nothing committed");
        assert_eq!(
            count(&s, "SELECT count(*) FROM items WHERE id = 'first'"),
            0,
            "{sql}"
        );
    }
    assert!(!std::path::Path::new("/tmp/lm-evil.db").exists());
    // The connection is unchanged: writes and merges still work, and so does
    // capture (the triggers are there).
    let v = client_tx(&mut s, &["UPDATE items SET a = 2 WHERE id = 'ok'"]).unwrap();
    assert_eq!(v, Some(before + 1));
    let mut t = open(&dir, "t");
    sync(&s, &mut t);
    assert_eq!(dump(&s, "items"), dump(&t, "items"));
}

#[test]
fn client_statements_stop_at_their_time_limit_or_when_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(&dir, "s");
    let forever = "INSERT INTO items SELECT 'k' || x, x, NULL FROM \
        (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c) \
        WHERE x < 0";
    let t = Instant::now();
    let err = client_tx_with(
        &mut s,
        &[forever],
        &ClientLimits {
            timeout: Some(Duration::from_millis(200)),
            ..ClientLimits::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("time limit"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(20));
    let cancel = Arc::new(AtomicBool::new(false));
    let c2 = cancel.clone();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        c2.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    let err = client_tx_with(
        &mut s,
        &[forever],
        &ClientLimits {
            cancel: Some(cancel),
            ..ClientLimits::default()
        },
    )
    .unwrap_err();
    stopper.join().unwrap();
    assert!(err.to_string().contains("cancelled"), "{err}");
    // Later work is unaffected.
    assert!(
        client_tx(&mut s, &["INSERT INTO items VALUES ('ok', 1, 'x')"])
            .unwrap()
            .is_some()
    );
}

#[derive(Default)]
struct Collect {
    columns: Vec<String>,
    rows: Vec<Vec<Value>>,
}

impl RowSink for Collect {
    fn columns(&mut self, names: Vec<String>) -> litemesh_storage::Result<bool> {
        self.columns = names;
        Ok(true)
    }
    fn row(&mut self, values: Vec<Value>) -> litemesh_storage::Result<bool> {
        self.rows.push(values);
        Ok(true)
    }
}

fn read(rc: &mut ReadConnection, sql: &str) -> Result<Collect, StorageError> {
    let mut c = Collect::default();
    rc.query(sql, &[], &ClientLimits::default(), &mut c)?;
    Ok(c)
}

#[test]
fn queries_only_read_and_leave_the_connection_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(&dir, "s");
    s.execute_batch("INSERT INTO items VALUES ('a', 1, 'x')")
        .unwrap();
    let mut rc = ReadConnection::open(dir.path().join("s.db")).unwrap();
    assert_eq!(read(&mut rc, "SELECT id FROM items").unwrap().rows.len(), 1);
    assert!(
        read(&mut rc, "PRAGMA table_info(items)")
            .unwrap()
            .rows
            .len()
            >= 3
    );
    assert!(
        read(&mut rc, "SELECT value FROM json_each('[1,2]')")
            .unwrap()
            .rows
            .len()
            == 2
    );
    for (sql, needle) in [
        ("BEGIN", "transaction control"),
        ("ATTACH DATABASE '/tmp/lm-evil2.db' AS e", "ATTACH"),
        ("PRAGMA query_only = 0", "PRAGMA query_only"),
        ("PRAGMA cache_size = 1", "PRAGMA cache_size"),
        ("SELECT * FROM __lm_log", "__lm_"),
        ("SELECT * FROM dbstat", "cannot be read"),
        ("DELETE FROM items", "read-only"),
        ("SELECT __lm_version()", "__lm_"),
    ] {
        let err = read(&mut rc, sql).err().expect(sql).to_string();
        assert!(err.contains(needle), "{sql}: {err}");
    }
    // Still sees new writes: no read transaction was left open.
    s.execute_batch("INSERT INTO items VALUES ('b', 2, 'y')")
        .unwrap();
    assert_eq!(read(&mut rc, "SELECT id FROM items").unwrap().rows.len(), 2);
    let t = Instant::now();
    let mut c = Collect::default();
    let err = rc
        .query(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
            &[],
            &ClientLimits {
                timeout: Some(Duration::from_millis(100)),
                ..ClientLimits::default()
            },
            &mut c,
        )
        .unwrap_err();
    assert!(err.to_string().contains("time limit"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(20));
}

// ---------------------------------------------------------------------------
// Actor ids and file formats
// ---------------------------------------------------------------------------

#[test]
fn a_new_actor_id_keeps_every_old_version_and_never_reuses_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = open(&dir, "a");
    let mut b = open(&dir, "b");
    for i in 0..5 {
        a.execute_batch(&format!("INSERT INTO items VALUES ('k{i}', {i}, NULL)"))
            .unwrap();
    }
    sync(&a, &mut b);
    let old = a.actor_id();
    let node = a.node_id().unwrap();
    let new = a.rotate_actor().unwrap();
    assert_ne!(old, new);
    assert_eq!(a.node_id().unwrap(), node, "the node id stays");
    assert_eq!(a.db_version().unwrap(), 5, "numbering continues");
    let v = a
        .execute_batch("UPDATE items SET a = 100 WHERE id = 'k1'")
        .unwrap();
    assert_eq!(v, Some(6));
    let k = a.knowledge().unwrap();
    assert!(k.contains(&old, 5) && k.contains(&new, 6) && k.contains(&new, 1));
    sync(&a, &mut b);
    sync(&b, &mut a);
    assert_eq!(dump(&a, "items"), dump(&b, "items"));
    assert_eq!(count(&b, "SELECT a FROM items WHERE id = 'k1'"), 100);
    assert_eq!(a.knowledge().unwrap().have, b.knowledge().unwrap().have);
    // A fresh node gets everything, the old actor's versions included.
    let mut c = open(&dir, "c");
    sync(&a, &mut c);
    assert_eq!(dump(&a, "items"), dump(&c, "items"));
    // And the new id survives a reopen.
    drop(a);
    let a = Store::open(dir.path().join("a.db")).unwrap();
    assert_eq!(a.actor_id(), new);
}

#[test]
fn a_format_1_file_is_upgraded_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        let mut s = Store::open(&path).unwrap();
        s.apply_schema(SCHEMA).unwrap();
        s.execute_batch("INSERT INTO items VALUES ('a', 1, 'x')")
            .unwrap();
    }
    // Turn it into the first release's layout.
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "ALTER TABLE __lm_site DROP COLUMN local; ALTER TABLE __lm_site DROP COLUMN node;
             ALTER TABLE __lm_site DROP COLUMN clean; ALTER TABLE __lm_site DROP COLUMN probe;
             ALTER TABLE __lm_site DROP COLUMN capture;
             UPDATE __lm_site SET format = 1; DROP TABLE __lm_quarantine; DROP TABLE __lm_peers;",
        )
        .unwrap();
    }
    let mut s = Store::open(&path).unwrap();
    assert_eq!(s.node_id().unwrap(), s.actor_id().0);
    assert_eq!(s.db_version().unwrap(), 1);
    assert_eq!(
        s.execute_batch("INSERT INTO items VALUES ('b', 2, 'y')")
            .unwrap(),
        Some(2)
    );
    let mut t = open(&dir, "t");
    sync(&s, &mut t);
    assert_eq!(dump(&s, "items"), dump(&t, "items"));
}

#[test]
fn format_2_to_4_files_open_and_a_newer_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.db");
    {
        let mut s = Store::open(&path).unwrap();
        s.apply_schema(SCHEMA).unwrap();
        s.execute_batch("INSERT INTO items VALUES ('a', 1, 'x')")
            .unwrap();
    }
    let set = |f: i64| {
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute("UPDATE __lm_site SET format = ?1", [f])
            .unwrap();
    };
    let format = || -> i64 {
        rusqlite::Connection::open(&path)
            .unwrap()
            .query_row("SELECT format FROM __lm_site", [], |r| r.get(0))
            .unwrap()
    };
    set(2);
    {
        let mut s = Store::open(&path).unwrap();
        let mut t = open(&dir, "t");
        sync(&s, &mut t);
        assert_eq!(dump(&s, "items"), dump(&t, "items"));
        s.execute_batch("INSERT INTO items VALUES ('b', 2, 'y')")
            .unwrap();
    }
    assert_eq!(format(), 6);
    // Format 3 (before table placement), 4 (before collection) and 5
    // (before commutative columns) too.
    for f in [3, 4, 5] {
        set(f);
        drop(Store::open(&path).unwrap());
        assert_eq!(format(), 6);
    }
    set(7);
    let err = Store::open(&path).unwrap_err();
    assert!(err.to_string().contains("format 7"), "{err}");
}

#[test]
fn text_that_is_not_utf8_is_refused_and_never_stops_serving() {
    let (_d, mut a, mut b) = pair(
        "CREATE TABLE t (id TEXT PRIMARY KEY, v TEXT);
         CREATE TABLE j (x TEXT, y TEXT, PRIMARY KEY (x, y))",
    );
    a.execute_batch("INSERT INTO t VALUES ('before', 'x')")
        .unwrap();
    for sql in [
        "INSERT INTO j VALUES (CAST(x'ff' AS TEXT), 'k')",
        "INSERT INTO j VALUES ('k', 'k'); UPDATE j SET y = CAST(x'ff' AS TEXT)",
        "INSERT INTO t VALUES (CAST(x'ff' AS TEXT), 'v')",
        "INSERT INTO t VALUES ('k', CAST(x'fe' AS TEXT))",
        "UPDATE t SET v = CAST(x'c3' AS TEXT) WHERE id = 'before'",
        "INSERT INTO t VALUES (char(55296), 'v')",
    ] {
        let err = a.execute_batch(sql).unwrap_err();
        assert!(
            matches!(err, StorageError::InvalidText { .. }),
            "{sql}: {err}"
        );
    }
    a.execute_batch("INSERT INTO t VALUES ('after', 'y')")
        .unwrap();
    wire_sync(&a, &mut b);
    assert_eq!(dump(&a, "t"), dump(&b, "t"));
    assert_eq!(count(&b, "SELECT count(*) FROM t"), 2);
}

#[test]
fn changes_that_compare_equal_but_differ_are_captured() {
    let (_d, mut a, mut b) = pair(
        "CREATE TABLE t (id TEXT PRIMARY KEY, name TEXT COLLATE NOCASE, pad TEXT COLLATE RTRIM, v);
         CREATE TABLE k (id, w TEXT, PRIMARY KEY (id)) WITHOUT ROWID",
    );
    a.execute_batch("INSERT INTO t VALUES ('x', 'abc', 'p', 1); INSERT INTO k VALUES (1, 'w')")
        .unwrap();
    wire_sync(&a, &mut b);
    for sql in [
        "UPDATE t SET name = 'ABC' WHERE id = 'x'",
        "UPDATE t SET pad = 'p   ' WHERE id = 'x'",
        "UPDATE t SET v = 1.0 WHERE id = 'x'",
        "UPDATE k SET id = 'one' WHERE id = 1",
    ] {
        let v = a.execute_batch(sql).unwrap();
        assert!(v.is_some(), "{sql}: captured as a version");
    }
    // A key without type affinity cannot take 1.0 (it equals the key 1:
    // one row, two spellings).
    for sql in [
        "INSERT INTO k VALUES (2.0, 'w')",
        "UPDATE k SET id = 1.0 WHERE id = 'one'",
    ] {
        let err = a.execute_batch(sql).unwrap_err().to_string();
        assert!(err.contains("REAL with an integer value"), "{sql}: {err}");
    }
    a.execute_batch("INSERT INTO k VALUES (2.5, 'w')").unwrap();
    wire_sync(&a, &mut b);
    let typed = |s: &Store, sql: &str| -> Vec<(String, String)> {
        let mut st = s.connection().prepare(sql).unwrap();
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    for sql in [
        "SELECT name || '|' || pad || '|', typeof(v) FROM t",
        "SELECT quote(id), typeof(id) FROM k",
    ] {
        assert_eq!(typed(&a, sql), typed(&b, sql), "{sql}");
    }
    assert_eq!(
        typed(&b, "SELECT quote(id), typeof(id) FROM k ORDER BY 2"),
        vec![
            ("2.5".to_string(), "real".to_string()),
            ("'one'".to_string(), "text".to_string())
        ]
    );
}
