//! Two- and three-replica scenarios through the public API.

mod common;
use common::*;
use litemesh_storage::{StorageError, Store, Value, WireError, attach, decode_batch, encode_batch};

fn text(s: &str) -> Value {
    Value::Text(s.into())
}

#[test]
fn insert_update_delete_replicate() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = open(&dir, "a");
    let mut b = open(&dir, "b");
    let v1 = a
        .execute_batch(
            "INSERT INTO items VALUES ('x', 1, 'one'); INSERT INTO items VALUES ('y', 2, 'two');",
        )
        .unwrap();
    assert_eq!(v1, Some(1), "one transaction is one version");
    // Every row write of a version has its own entry number.
    let bs = batches(&a, &b, 64 * 1024);
    let seqs: Vec<u64> = bs[0].versions[0].rows.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, vec![0, 1]);
    sync(&a, &mut b);
    assert_eq!(dump(&b, "items"), dump(&a, "items"));
    assert_eq!(dump(&b, "items").len(), 2);

    a.execute_batch("UPDATE items SET b = 'uno' WHERE id = 'x'")
        .unwrap();
    a.execute_batch("DELETE FROM items WHERE id = 'y'").unwrap();
    sync(&a, &mut b);
    assert_eq!(
        dump(&b, "items"),
        vec![vec![text("x"), Value::Integer(1), text("uno")]]
    );

    // Re-insert after delete resurrects the row everywhere.
    a.execute_batch("INSERT INTO items VALUES ('y', 3, 'tres')")
        .unwrap();
    sync(&a, &mut b);
    assert_eq!(dump(&b, "items"), dump(&a, "items"));
    // Nothing left to send, and b knows all of a's versions.
    assert!(batches(&a, &b, 4096).is_empty());
    assert!(b.knowledge().unwrap().covers(&a.knowledge().unwrap()));
}

#[test]
fn concurrent_writes_converge_per_cell() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = open(&dir, "a");
    let mut b = open(&dir, "b");
    a.execute_batch("INSERT INTO items VALUES ('x', 1, 'one')")
        .unwrap();
    sync(&a, &mut b);
    // Different cells of one row written on both sides: both survive.
    a.execute_batch("UPDATE items SET a = 10 WHERE id = 'x'")
        .unwrap();
    b.execute_batch("UPDATE items SET b = 'b-side' WHERE id = 'x'")
        .unwrap();
    // The same cell written on both sides: one deterministic winner.
    a.execute_batch("INSERT INTO tags VALUES ('t', 1, 'from-a')")
        .unwrap();
    b.execute_batch("INSERT INTO tags VALUES ('t', 1, 'from-b')")
        .unwrap();
    sync(&a, &mut b);
    sync(&b, &mut a);
    assert_eq!(dump(&a, "items"), dump(&b, "items"));
    assert_eq!(
        dump(&a, "items"),
        vec![vec![text("x"), Value::Integer(10), text("b-side")]]
    );
    assert_eq!(dump(&a, "tags"), dump(&b, "tags"));
}

#[test]
fn delete_wins_over_concurrent_update_then_reinsert_wins_over_delete() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = open(&dir, "a");
    let mut b = open(&dir, "b");
    a.execute_batch("INSERT INTO items VALUES ('x', 1, 'one')")
        .unwrap();
    sync(&a, &mut b);
    a.execute_batch("DELETE FROM items WHERE id = 'x'").unwrap();
    b.execute_batch("UPDATE items SET a = 5 WHERE id = 'x'")
        .unwrap();
    sync(&a, &mut b);
    sync(&b, &mut a);
    assert!(dump(&a, "items").is_empty());
    assert!(dump(&b, "items").is_empty());
    b.execute_batch("INSERT INTO items VALUES ('x', 7, 'again')")
        .unwrap();
    sync(&b, &mut a);
    assert_eq!(
        dump(&a, "items"),
        vec![vec![text("x"), Value::Integer(7), text("again")]]
    );
}

#[test]
fn applying_twice_or_out_of_order_is_harmless() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = open(&dir, "a");
    let mut b = open(&dir, "b");
    for i in 0..5 {
        a.execute_batch(&format!("INSERT INTO items VALUES ('k{i}', {i}, 'v{i}')"))
            .unwrap();
        a.execute_batch(&format!(
            "UPDATE items SET a = a + 100 WHERE id = 'k{}'",
            i / 2
        ))
        .unwrap();
    }
    let mut all = batches(&a, &b, 1024);
    all.reverse();
    for bt in all.iter().chain(all.iter()) {
        b.apply(bt).unwrap();
    }
    assert_eq!(dump(&a, "items"), dump(&b, "items"));
    let report = b.apply(&all[0]).unwrap();
    assert_eq!(report.versions_applied, 0);
}

#[test]
fn overwritten_versions_are_reported_cleared() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = open(&dir, "a");
    let mut b = open(&dir, "b");
    a.execute_batch("INSERT INTO items VALUES ('x', 1, 'one')")
        .unwrap(); // v1
    a.execute_batch("UPDATE items SET a = 2 WHERE id = 'x'")
        .unwrap(); // v2
    a.execute_batch("UPDATE items SET a = 3 WHERE id = 'x'")
        .unwrap(); // v3 overwrites v2
    let bs = batches(&a, &b, 64 * 1024);
    let cleared: Vec<_> = bs.iter().flat_map(|b| b.cleared.clone()).collect();
    assert_eq!(cleared.len(), 1);
    assert_eq!((cleared[0].start, cleared[0].end), (2, 2));
    for bt in &bs {
        b.apply(bt).unwrap();
    }
    let k = b.knowledge().unwrap();
    assert_eq!(
        k.have[&a.actor_id()].ranges(),
        &[(1, 3)],
        "the gap at v2 is closed"
    );
    assert_eq!(dump(&b, "items"), dump(&a, "items"));
    // Compaction removes the stale log entry and changes nothing else.
    assert_eq!(a.compact().unwrap(), 1);
    let mut c = open(&dir, "c");
    sync(&a, &mut c);
    assert_eq!(dump(&c, "items"), dump(&a, "items"));
}

#[test]
fn relayed_changes_reach_a_third_node() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = open(&dir, "a");
    let mut b = open(&dir, "b");
    let mut c = open(&dir, "c");
    a.execute_batch("INSERT INTO items VALUES ('x', 1, 'one')")
        .unwrap();
    b.execute_batch("INSERT INTO items VALUES ('y', 2, 'two')")
        .unwrap();
    sync(&a, &mut b);
    sync(&b, &mut c); // c gets a's write through b
    assert_eq!(dump(&c, "items"), dump(&b, "items"));
    assert!(c.knowledge().unwrap().covers(&a.knowledge().unwrap()));
}

#[test]
fn large_transaction_is_chunked_and_applied_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = open(&dir, "a");
    let mut b = open(&dir, "b");
    a.transaction(|tx| {
        let mut st = tx.prepare("INSERT INTO items VALUES (?1, ?2, 'payload-payload-payload')")?;
        for i in 0..2000 {
            st.execute((format!("key-{i:05}"), i))?;
        }
        Ok(())
    })
    .unwrap();
    let bs = batches(&a, &b, 8 * 1024);
    assert!(bs.len() > 5, "split into many batches, got {}", bs.len());
    for bt in &bs {
        assert!(bt.versions.iter().all(|v| v.chunk.is_some()));
    }
    // Until the last chunk arrives, b shows nothing of the transaction.
    for bt in &bs[..bs.len() - 1] {
        let r = b.apply(bt).unwrap();
        assert_eq!(r.versions_applied, 0);
        assert!(dump(&b, "items").is_empty());
    }
    // A sync that restarts now asks only for what is missing.
    let k = b.knowledge().unwrap();
    assert_eq!(k.partial[&a.actor_id()].len(), 1);
    let rest = batches(&a, &b, 8 * 1024);
    assert_eq!(rest.len(), 1, "only the missing chunk is sent again");
    b.apply(&rest[0]).unwrap();
    assert_eq!(dump(&b, "items").len(), 2000);
    assert_eq!(dump(&b, "items"), dump(&a, "items"));
    assert!(b.knowledge().unwrap().partial.is_empty());
}

#[test]
fn failure_in_the_middle_of_a_batch_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = open(&dir, "a");
    let mut b = open(&dir, "b");
    a.execute_batch(
        "INSERT INTO items VALUES ('k1', 1, 'ok'); INSERT INTO items VALUES ('k2', 2, 'ok')",
    )
    .unwrap();
    a.transaction(|tx| {
        let mut st = tx.prepare("INSERT INTO items VALUES (?1, ?2, ?3)")?;
        for i in 0..3000 {
            st.execute((format!("bulk-{i:05}"), i, "x".repeat(100)))?;
        }
        Ok(())
    })
    .unwrap();
    a.execute_batch("INSERT INTO items VALUES ('k4', 4, 'ok')")
        .unwrap();
    let all = batches(&a, &b, 64 * 1024);
    assert!(all.len() > 1);
    // The disk fills up (simulated with a page limit) half way through.
    let pages: i64 = b
        .connection()
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();
    b.merge_connection()
        .unwrap()
        .execute_batch(&format!("PRAGMA max_page_count = {}", pages + 40))
        .unwrap();
    let before = b.knowledge().unwrap();
    let err = b.apply_all(&all).unwrap_err();
    assert!(err.to_string().contains("full"), "{err}");
    assert!(
        dump(&b, "items").is_empty(),
        "no data from the failed batch"
    );
    assert_eq!(
        b.knowledge().unwrap(),
        before,
        "no bookkeeping from the failed batch"
    );
    for table in ["__lm_log", "__lm_partial", "__lm_clk_items", "__lm_parked"] {
        let n: i64 = b
            .connection()
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0, "{table} is empty after the failure");
    }
    // Once there is room again the same batches apply in full.
    b.merge_connection()
        .unwrap()
        .execute_batch("PRAGMA max_page_count = 1073741823")
        .unwrap();
    b.apply_all(&all).unwrap();
    assert_eq!(dump(&b, "items"), dump(&a, "items"));
    assert!(b.knowledge().unwrap().covers(&a.knowledge().unwrap()));
}

#[test]
fn changes_for_unknown_tables_and_columns_are_parked_then_applied() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = open(&dir, "a");
    let mut b = open(&dir, "b");
    let mut c = open(&dir, "c");
    let newer = format!("{SCHEMA}\nCREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT);");
    let newer = newer.replace("b TEXT)", "b TEXT, extra TEXT DEFAULT 'd')");
    a.apply_schema(&newer).unwrap();
    a.execute_batch(
        "INSERT INTO notes VALUES ('n', 'hello'); INSERT INTO items VALUES ('x', 1, 'one', 'more');",
    )
    .unwrap();
    let bs = batches(&a, &b, 64 * 1024);
    for bt in &bs {
        let r = b.apply(bt).unwrap();
        assert_eq!(r.rows_parked, 2);
    }
    // Known cells applied, unknown kept.
    assert_eq!(
        dump(&b, "items"),
        vec![vec![text("x"), Value::Integer(1), text("one")]]
    );
    // b forwards the parked cells to c, which does not know them either.
    sync(&b, &mut c);
    // Both learn the schema: the parked changes apply.
    b.apply_schema(&newer).unwrap();
    c.apply_schema(&newer).unwrap();
    for s in [&b, &c] {
        assert_eq!(dump(s, "notes"), dump(&a, "notes"));
        assert_eq!(dump(s, "items"), dump(&a, "items"));
    }
}

#[test]
fn writes_through_other_connections_are_captured_or_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    let a = {
        let mut s = Store::open(&path).unwrap();
        s.apply_schema(SCHEMA).unwrap();
        s
    };
    // A plain connection cannot write replicated tables unrecorded.
    let raw = rusqlite::Connection::open(&path).unwrap();
    let err = raw
        .execute("INSERT INTO items VALUES ('raw', 1, 'x')", [])
        .unwrap_err();
    assert!(err.to_string().contains("__lm_"), "{err}");
    // An attached connection writes and is recorded.
    let mut app = rusqlite::Connection::open(&path).unwrap();
    attach(&mut app).unwrap();
    app.execute("INSERT INTO items VALUES ('app', 1, 'x')", [])
        .unwrap();
    app.execute("UPDATE items SET a = 2 WHERE id = 'app'", [])
        .unwrap();
    let dir2 = tempfile::tempdir().unwrap();
    let mut b = open(&dir2, "b");
    sync(&a, &mut b);
    assert_eq!(
        dump(&b, "items"),
        vec![vec![text("app"), Value::Integer(2), text("x")]]
    );
    assert_eq!(a.db_version().unwrap(), 2);
}

#[test]
fn actor_and_versions_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (actor, k) = {
        let mut a = open(&dir, "a");
        a.execute_batch("INSERT INTO items VALUES ('x', 1, 'one')")
            .unwrap();
        (a.actor_id(), a.knowledge().unwrap())
    };
    let mut a = Store::open(dir.path().join("a.db")).unwrap();
    assert_eq!(a.actor_id(), actor);
    assert_eq!(a.knowledge().unwrap(), k);
    assert_eq!(
        a.execute_batch("INSERT INTO items VALUES ('y', 1, 'one')")
            .unwrap(),
        Some(2)
    );
    // A rolled-back transaction uses no version.
    let err = a.transaction(|tx| {
        tx.execute("INSERT INTO items VALUES ('z', 1, 'one')", [])?;
        Err::<(), _>(StorageError::UnknownTable("abort".into()))
    });
    assert!(err.is_err());
    assert_eq!(
        a.execute_batch("INSERT INTO items VALUES ('w', 1, 'one')")
            .unwrap(),
        Some(3)
    );
}

#[test]
fn wire_encoding_roundtrips_and_rejects_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = open(&dir, "a");
    let b = open(&dir, "b");
    a.execute_batch(
        "INSERT INTO items VALUES ('x', 1, 'one'); INSERT INTO tags VALUES ('t', 1, x'00ff')",
    )
    .unwrap();
    let bs = batches(&a, &b, 64 * 1024);
    let bytes = encode_batch(&bs[0], 1 << 20).unwrap();
    assert_eq!(decode_batch(&bytes, 1 << 20).unwrap(), bs[0]);
    assert!(matches!(
        decode_batch(&bytes, 10),
        Err(WireError::TooLarge { .. })
    ));
    assert!(matches!(
        encode_batch(&bs[0], 10),
        Err(WireError::TooLarge { .. })
    ));
    let mut wrong = bytes.clone();
    wrong[0] = 99;
    assert!(matches!(
        decode_batch(&wrong, 1 << 20),
        Err(WireError::Malformed(_))
    ));
    assert!(decode_batch(&[], 100).is_err());
    for cut in 0..bytes.len() {
        let _ = decode_batch(&bytes[..cut], 1 << 20);
    }
}

#[test]
fn application_triggers_fire_for_local_writes_only_and_merges_keep_compiled_statements() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = open(&dir, "a");
    let mut b = open(&dir, "b");
    // An application's own trigger on a replicated table, on b.
    b.connection()
        .execute_batch(
            "CREATE TABLE audit (id TEXT); \
             CREATE TRIGGER audit_items AFTER INSERT ON items BEGIN \
               INSERT INTO audit VALUES (NEW.id); \
             END;",
        )
        .unwrap();
    let audited = |s: &Store| -> i64 {
        s.connection()
            .query_row("SELECT count(*) FROM audit", [], |r| r.get(0))
            .unwrap()
    };
    // Many small merges, one version each, as broadcasts bring them.
    for i in 0..20 {
        a.execute_batch(&format!("INSERT INTO items VALUES ('r{i}', {i}, 'x')"))
            .unwrap();
        sync(&a, &mut b);
        // A local write between merges: its trigger fires.
        b.execute_batch(&format!("INSERT INTO items VALUES ('b{i}', {i}, 'y')"))
            .unwrap();
    }
    assert_eq!(dump(&b, "items").len(), 40);
    assert_eq!(audited(&b), 20, "only b's own inserts ran the trigger");
    // The merges went through their own connection: b's compiled
    // statements were never thrown away (no re-preparing at every merge).
    let reprepared: i64 = {
        let c = b.connection();
        let mut st = c
            .prepare_cached("SELECT count(*) FROM items WHERE a = ?1")
            .unwrap();
        let n: i64 = st.query_row([0], |r| r.get(0)).unwrap();
        assert_eq!(n, 2);
        st.get_status(rusqlite::StatementStatus::RePrepare) as i64
    };
    sync(&a, &mut b);
    a.execute_batch("INSERT INTO items VALUES ('last', 1, 'x')")
        .unwrap();
    sync(&a, &mut b);
    let c = b.connection();
    let mut st = c
        .prepare_cached("SELECT count(*) FROM items WHERE a = ?1")
        .unwrap();
    let n: i64 = st.query_row([1], |r| r.get(0)).unwrap();
    assert_eq!(n, 3);
    assert_eq!(
        st.get_status(rusqlite::StatementStatus::RePrepare) as i64,
        reprepared,
        "a merge expired the writer's statements"
    );
}
