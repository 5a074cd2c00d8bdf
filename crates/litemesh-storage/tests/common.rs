#![allow(dead_code)]
//! Helpers shared by the storage tests.

use litemesh_storage::{ChangeBatch, Store, Value};

pub const SCHEMA: &str = "
CREATE TABLE items (id TEXT PRIMARY KEY, a INTEGER, b TEXT);
CREATE TABLE tags (k TEXT NOT NULL, n INTEGER NOT NULL, v TEXT DEFAULT 'none', PRIMARY KEY (k, n));
CREATE INDEX items_a ON items(a);
";

pub fn open(dir: &tempfile::TempDir, name: &str) -> Store {
    let mut s = Store::open(dir.path().join(format!("{name}.db"))).unwrap();
    s.apply_schema(SCHEMA).unwrap();
    s
}

/// Everything `from` has that `to` lacks, as batches of at most `max_bytes`.
pub fn batches(from: &Store, to: &Store, max_bytes: usize) -> Vec<ChangeBatch> {
    let k = to.knowledge().unwrap();
    let mut out = Vec::new();
    from.changes_since(&k, max_bytes, |b| {
        out.push(b);
        Ok(true)
    })
    .unwrap();
    out
}

/// Full one-way sync.
pub fn sync(from: &Store, to: &mut Store) {
    for b in batches(from, to, 64 * 1024) {
        to.apply(&b).unwrap();
    }
}

/// All rows of a table, sorted, as values.
pub fn dump(s: &Store, table: &str) -> Vec<Vec<Value>> {
    let conn = s.connection();
    let mut stmt = conn
        .prepare(&format!("SELECT * FROM \"{table}\" ORDER BY 1, 2"))
        .unwrap();
    let n = stmt.column_count();
    stmt.query_map([], |r| (0..n).map(|i| r.get::<_, Value>(i)).collect())
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}
