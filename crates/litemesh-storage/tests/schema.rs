//! Schema validation and additive migrations.

mod common;
use common::*;
use litemesh_storage::{StorageError, Store, Value};

fn fresh() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path().join("s.db")).unwrap();
    (dir, s)
}

#[test]
fn a_primary_key_is_required() {
    let (_d, mut s) = fresh();
    let err = s
        .apply_schema("CREATE TABLE t (a TEXT, b INTEGER)")
        .unwrap_err();
    assert!(
        matches!(&err, StorageError::NoPrimaryKey { table } if table == "t"),
        "{err}"
    );
    assert!(err.to_string().contains("PRIMARY KEY"));
}

#[test]
fn autoincrement_is_refused_with_advice() {
    let (_d, mut s) = fresh();
    let err = s
        .apply_schema("CREATE TABLE counters (id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT)")
        .unwrap_err();
    assert!(matches!(&err, StorageError::Autoincrement { table } if table == "counters"));
    let msg = err.to_string();
    assert!(msg.contains("counters") && msg.contains("UUID"), "{msg}");
    assert!(s.tables().is_empty(), "nothing created");
}

#[test]
fn rowid_alias_key_is_accepted_with_a_warning() {
    let (_d, mut s) = fresh();
    let r = s
        .apply_schema("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        .unwrap();
    assert_eq!(r.created_tables, vec!["t".to_string()]);
    assert_eq!(r.warnings.len(), 1);
    assert!(r.warnings[0].contains("collide"), "{}", r.warnings[0]);
    // A text key draws no warning.
    let r = s
        .apply_schema(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); CREATE TABLE u (id TEXT PRIMARY KEY)",
        )
        .unwrap();
    assert_eq!(r.created_tables, vec!["u".to_string()]);
}

#[test]
fn constructs_a_merge_cannot_honour_are_refused() {
    let (_d, mut s) = fresh();
    for (sql, needle) in [
        (
            "CREATE TABLE t (id TEXT PRIMARY KEY, email TEXT UNIQUE)",
            "unique",
        ),
        (
            "CREATE TABLE t (id TEXT PRIMARY KEY, v TEXT); CREATE UNIQUE INDEX tv ON t(v)",
            "unique",
        ),
        (
            "CREATE TABLE t (id TEXT PRIMARY KEY, v TEXT NOT NULL)",
            "DEFAULT",
        ),
        (
            "CREATE TABLE t (id TEXT PRIMARY KEY, v INTEGER, w INTEGER AS (v * 2))",
            "generated",
        ),
        ("CREATE TABLE __lm_x (id TEXT PRIMARY KEY)", "reserved"),
        (
            "CREATE TABLE t (id TEXT PRIMARY KEY); INSERT INTO t VALUES ('x')",
            "only CREATE TABLE",
        ),
        ("CREATE TABLE t (id TEXT PRIMARY KEY", "invalid schema SQL"),
        ("CREATE VIEW v AS SELECT 1", "only CREATE TABLE"),
    ] {
        let err = s.apply_schema(sql).unwrap_err().to_string();
        assert!(err.contains(needle), "{sql}: {err}");
    }
    assert!(s.tables().is_empty());
}

#[test]
fn additive_changes_apply_to_an_existing_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(&dir, "s");
    s.execute_batch("INSERT INTO items VALUES ('x', 1, 'one')")
        .unwrap();
    drop(s);
    let mut s = Store::open(dir.path().join("s.db")).unwrap();
    // Same schema again: nothing to do.
    assert!(s.apply_schema(SCHEMA).unwrap().is_unchanged());
    let newer = format!(
        "{}\nCREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT);\nCREATE INDEX items_b ON items(b);",
        SCHEMA.replace("b TEXT)", "b TEXT, c REAL, d TEXT NOT NULL DEFAULT 'dflt')")
    );
    let r = s.apply_schema(&newer).unwrap();
    assert_eq!(r.created_tables, vec!["notes".to_string()]);
    assert_eq!(
        r.added_columns,
        vec![
            ("items".to_string(), "c".to_string()),
            ("items".to_string(), "d".to_string())
        ]
    );
    assert_eq!(r.created_indexes, vec!["items_b".to_string()]);
    assert_eq!(
        dump(&s, "items"),
        vec![vec![
            Value::Text("x".into()),
            Value::Integer(1),
            Value::Text("one".into()),
            Value::Null,
            Value::Text("dflt".into())
        ]]
    );
    // Writes to the new column are captured and replicate.
    s.execute_batch("UPDATE items SET c = 2.5 WHERE id = 'x'")
        .unwrap();
    let mut other = Store::open(dir.path().join("o.db")).unwrap();
    other.apply_schema(&newer).unwrap();
    sync(&s, &mut other);
    assert_eq!(dump(&other, "items"), dump(&s, "items"));
}

#[test]
fn adding_a_column_does_not_rewrite_row_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(&dir, "s");
    s.transaction(|tx| {
        let mut st = tx.prepare("INSERT INTO items VALUES (?1, ?2, 'v')")?;
        for i in 0..5000 {
            st.execute((format!("id{i}"), i))?;
        }
        Ok(())
    })
    .unwrap();
    let before = s.connection().total_changes();
    s.apply_schema(&SCHEMA.replace("b TEXT)", "b TEXT, extra INTEGER DEFAULT 7)"))
        .unwrap();
    let written = s.connection().total_changes() - before;
    assert!(written < 10, "adding a column wrote {written} rows");
}

#[test]
fn destructive_changes_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(&dir, "s");
    for (sql, needle) in [
        (SCHEMA.replace("b TEXT)", ")").replace("a INTEGER,", "a INTEGER"), "column \"b\""),
        (SCHEMA.replace("a INTEGER", "a TEXT"), "changed"),
        (SCHEMA.replace("CREATE TABLE tags (k TEXT NOT NULL, n INTEGER NOT NULL, v TEXT DEFAULT 'none', PRIMARY KEY (k, n));", ""), "missing"),
        (SCHEMA.replace("ON items(a)", "ON items(b)"), "different definition"),
        (SCHEMA.replace("b TEXT)", "b TEXT, e TEXT NOT NULL)"), "DEFAULT"),
    ] {
        let err = s.apply_schema(&sql).unwrap_err();
        assert!(err.to_string().contains(needle), "{err}");
        assert_eq!(s.tables(), vec!["items".to_string(), "tags".to_string()]);
        assert_eq!(s.columns("items").unwrap().1, vec!["a".to_string(), "b".to_string()]);
    }
}

#[test]
fn tables_not_created_by_litemesh_are_not_adopted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch("CREATE TABLE items (id TEXT PRIMARY KEY, a INTEGER, b TEXT)")
        .unwrap();
    let mut s = Store::open(&path).unwrap();
    let err = s.apply_schema(SCHEMA).unwrap_err();
    assert!(
        matches!(err, StorageError::UnmanagedTable(ref t) if t == "items"),
        "{err}"
    );
}
