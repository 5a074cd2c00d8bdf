//! Group commit (several clients' transactions, one commit) and grouped
//! merges (several arrivals, one commit).

mod common;

use std::time::Duration;

use common::*;
use litemesh_storage::{ClientLimits, StorageError, Value};

/// Runs each item (a list of SQL statements) as one client's transaction of
/// a group; returns each one's version or error.
fn group(
    s: &mut litemesh_storage::Store,
    limits: &ClientLimits,
    items: &[Vec<String>],
) -> Vec<Result<Option<u64>, StorageError>> {
    s.client_transactions(limits, items, |sqls, tx| {
        for q in sqls {
            tx.execute(q, &[])?;
        }
        Ok(())
    })
    .unwrap()
    .into_iter()
    .map(|r| r.map(|c| c.version))
    .collect()
}

fn item(sqls: &[&str]) -> Vec<String> {
    sqls.iter().map(|s| s.to_string()).collect()
}

#[test]
fn each_transaction_of_a_group_gets_its_own_version_and_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = open(&dir, "a");
    a.execute_batch("INSERT INTO items VALUES ('before', 0, 'x')")
        .unwrap();
    let items = vec![
        item(&["INSERT INTO items VALUES ('g1', 1, 'one')"]),
        // Fails on its second statement: its first must not stay.
        item(&[
            "INSERT INTO items VALUES ('bad', 2, 'two')",
            "INSERT INTO items VALUES ('before', 9, 'dup key')",
        ]),
        item(&["SELECT 1"]),
        item(&["NOT SQL AT ALL"]),
        item(&[
            "UPDATE items SET b = 'changed' WHERE id = 'g1'",
            "INSERT INTO items VALUES ('g3', 3, 'three')",
        ]),
        item(&["DROP TABLE items"]),
    ];
    let res = group(&mut a, &ClientLimits::default(), &items);
    assert_eq!(res[0].as_ref().unwrap(), &Some(2));
    assert!(res[1].as_ref().unwrap_err().to_string().contains("UNIQUE"));
    assert_eq!(res[2].as_ref().unwrap(), &None, "a read writes no version");
    assert!(res[3].is_err());
    assert_eq!(res[4].as_ref().unwrap(), &Some(3));
    assert!(
        matches!(res[5], Err(StorageError::Refused(_))),
        "{:?}",
        res[5]
    );
    assert_eq!(a.db_version().unwrap(), 3);
    let rows = dump(&a, "items");
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(!rows.iter().any(|r| r[0] == Value::Text("bad".into())));

    // Each version carries exactly its own transaction's changes.
    let mut v3 = Vec::new();
    a.version_changes(3, 64 * 1024, |b| {
        v3.push(b);
        Ok(true)
    })
    .unwrap();
    let rows3: usize = v3
        .iter()
        .flat_map(|b| &b.versions)
        .map(|v| v.rows.len())
        .sum();
    assert_eq!(rows3, 2);

    // A peer converges on the group's outcome.
    let mut b = open(&dir, "b");
    sync(&a, &mut b);
    assert_eq!(dump(&a, "items"), dump(&b, "items"));
    assert_eq!(a.knowledge().unwrap().have, b.knowledge().unwrap().have);

    // The group committed: a reopened file has it.
    drop(a);
    let a = litemesh_storage::Store::open(dir.path().join("a.db")).unwrap();
    assert_eq!(a.db_version().unwrap(), 3);
    assert_eq!(dump(&a, "items"), dump(&b, "items"));
}

#[test]
fn a_transaction_that_makes_sqlite_abandon_the_group_fails_alone() {
    // An interrupted write rolls back SQLite's whole transaction; the other
    // members of the group are run again and commit.
    let dir = tempfile::tempdir().unwrap();
    let mut a = open(&dir, "a");
    let slow = "INSERT INTO items(id, a) SELECT 'slow' || x, x FROM \
        (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) \
         SELECT x FROM c LIMIT 100000000)";
    let items = vec![
        item(&["INSERT INTO items VALUES ('first', 1, 'x')"]),
        item(&[slow]),
        item(&["INSERT INTO items VALUES ('last', 3, 'x')"]),
    ];
    let limits = ClientLimits {
        timeout: Some(Duration::from_millis(200)),
        ..ClientLimits::default()
    };
    let res = group(&mut a, &limits, &items);
    assert!(res[0].as_ref().unwrap().is_some());
    assert!(
        matches!(res[1], Err(StorageError::Interrupted(_))),
        "{:?}",
        res[1]
    );
    assert!(res[2].as_ref().unwrap().is_some());
    let ids: Vec<Value> = dump(&a, "items")
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    assert_eq!(
        ids,
        vec![Value::Text("first".into()), Value::Text("last".into())]
    );
    assert_eq!(a.db_version().unwrap(), 2, "versions stay dense");
    let mut b = open(&dir, "b");
    sync(&a, &mut b);
    assert_eq!(dump(&a, "items"), dump(&b, "items"));
}

#[test]
fn grouped_merges_commit_together_and_report_per_group() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = open(&dir, "a");
    let mut b = open(&dir, "b");
    let mut per_version = Vec::new();
    for i in 0..3 {
        a.execute_batch(&format!("INSERT INTO items VALUES ('k{i}', {i}, 'x')"))
            .unwrap();
        let mut bs = Vec::new();
        a.version_changes(i + 1, 64 * 1024, |batch| {
            bs.push(batch);
            Ok(true)
        })
        .unwrap();
        per_version.push(bs);
    }
    // The second version twice (a broadcast and its relay), in two groups.
    let groups: Vec<&[litemesh_storage::ChangeBatch]> = vec![
        &per_version[0],
        &per_version[1],
        &per_version[1],
        &per_version[2],
    ];
    let reports = b.apply_groups(&groups).unwrap();
    assert_eq!(reports.len(), 4);
    assert_eq!(reports[0].versions_applied, 1);
    assert_eq!(reports[1].versions_applied, 1);
    assert_eq!(reports[2].versions_applied, 0);
    assert_eq!(reports[2].versions_duplicate, 1);
    assert_eq!(reports[3].versions_applied, 1);
    assert!(b.merges_unsynced(), "merges wait for a sync to disk");
    b.sync_merges().unwrap();
    assert!(!b.merges_unsynced());
    assert_eq!(dump(&a, "items"), dump(&b, "items"));
    assert_eq!(a.knowledge().unwrap().have, b.knowledge().unwrap().have);
}
