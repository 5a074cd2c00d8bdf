//! Online backups and restoring one as a new node.

use litemesh_storage::{Store, backup, inspect, restore};

const SCHEMA: &str = "CREATE TABLE t (id TEXT PRIMARY KEY, v INTEGER)";

#[test]
fn a_backup_taken_while_writing_restores_as_a_new_actor_with_everything_kept() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    let mut a = Store::open(&db).unwrap();
    a.apply_schema(SCHEMA).unwrap();
    for i in 0..50 {
        a.execute_batch(&format!("INSERT INTO t VALUES ('k{i}', {i})"))
            .unwrap();
    }
    // Taken with the writer open (and a write transaction's worth of WAL).
    let copy = dir.path().join("copy.db");
    let bytes = backup(&db, &copy).unwrap();
    assert!(bytes > 0);
    assert!(backup(&db, &copy).is_err(), "never over an existing file");
    a.execute_batch("INSERT INTO t VALUES ('late', 0)").unwrap();
    let info = inspect(&copy).unwrap();
    assert_eq!(info.actor, a.actor_id());
    assert_eq!(info.tables, ["t"]);
    assert_eq!(info.versions, 50);

    let restored = dir.path().join("b.db");
    let r = restore(&copy, &restored).unwrap();
    assert_eq!(r.old_actor, a.actor_id());
    assert_ne!(r.new_actor, r.old_actor);
    assert!(
        restore(&copy, &restored).is_err(),
        "never over an existing file"
    );
    let mut b = Store::open(&restored).unwrap();
    assert_eq!(b.actor_id(), r.new_actor);
    let n: i64 = b
        .connection()
        .query_row("SELECT count(*) FROM t", [], |x| x.get(0))
        .unwrap();
    assert_eq!(n, 50);
    // The old actor's 50 versions are held as a peer's; new writes go under
    // the new actor, never reusing one of the old actor's numbers.
    let k = b.knowledge().unwrap();
    assert_eq!(k.complete_through(&r.old_actor), 50);
    b.execute_batch("INSERT INTO t VALUES ('new', 1)").unwrap();
    let k = b.knowledge().unwrap();
    assert_eq!(k.complete_through(&r.old_actor), 50);
    assert!(k.heads()[&r.new_actor] > 0);
    assert_ne!(b.node_id().unwrap(), a.node_id().unwrap());
    // The original's version 51 ('late') reaches the restored node like
    // any peer's.
    let mut out = Vec::new();
    a.changes_since(&b.knowledge().unwrap(), 1 << 20, |x| {
        out.push(x);
        Ok(true)
    })
    .unwrap();
    b.apply_all(&out).unwrap();
    let late: i64 = b
        .connection()
        .query_row("SELECT count(*) FROM t WHERE id = 'late'", [], |x| x.get(0))
        .unwrap();
    assert_eq!(late, 1);
    // A leftover rollback journal where the file would go: refused (it
    // would be replayed into the restored file).
    std::fs::write(dir.path().join("j.db-journal"), b"stale").unwrap();
    let err = restore(&copy, &dir.path().join("j.db")).unwrap_err();
    assert!(err.to_string().contains("-journal"), "{err}");
    assert!(!dir.path().join("j.db").exists());
    // The count of versions held is the data's: the backup's 50 (the new
    // actor's empty range below its first version is not counted).
    assert_eq!(r.versions, 50);
    // Not a litemesh file: refused, nothing made.
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, b"nope").unwrap();
    assert!(restore(&junk, &dir.path().join("c.db")).is_err());
    assert!(!dir.path().join("c.db").exists());
    assert!(!dir.path().join("c.db.restoring").exists());
}
