//! Placement seen in the files: what a node's SQLite file holds of a pinned
//! table, read directly once its agent has stopped. The API of a node
//! outside the table's regions refuses to read it, so the file is the only
//! witness that no row (nor any trace of one) ever reached the node.

use std::path::Path;

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::history::FileScan;

/// Ids listed at most in a [`FileScan`].
const MAX_IDS: usize = 10;

/// Reads, without changing it, what the file `db` holds of `table`: its
/// rows, its clock table's rows, and changes waiting in `__lm_parked`,
/// `__lm_quarantine` or `__lm_partial` whose encoded rows contain the
/// table's name. A table (or an internal table) that does not exist holds
/// nothing. Any other failure is recorded in [`FileScan::error`].
pub fn scan(db: &Path, table: &str) -> FileScan {
    let mut out = FileScan {
        path: db.display().to_string(),
        ..FileScan::default()
    };
    if let Err(e) = read(db, table, &mut out) {
        out.error = Some(e);
    }
    out
}

fn read(db: &Path, table: &str, out: &mut FileScan) -> Result<(), String> {
    if !db.is_file() {
        return Err("no such file".into());
    }
    // Read-only, but not `immutable`: changes still in the WAL are read too.
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| format!("opening: {e}"))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    let exists = |name: &str| -> Result<bool, String> {
        conn.query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1 COLLATE NOCASE",
            [name],
            |_| Ok(()),
        )
        .optional()
        .map(|r| r.is_some())
        .map_err(|e| format!("reading sqlite_master: {e}"))
    };
    let count = |sql: &str, param: Option<&[u8]>| -> Result<u64, String> {
        let n: i64 = match param {
            Some(p) => conn.query_row(sql, [p], |r| r.get(0)),
            None => conn.query_row(sql, [], |r| r.get(0)),
        }
        .map_err(|e| format!("{sql}: {e}"))?;
        Ok(n.max(0) as u64)
    };
    let quoted = |name: &str| format!("\"{}\"", name.replace('"', "\"\""));
    if exists(table)? {
        out.rows = count(&format!("SELECT count(*) FROM {}", quoted(table)), None)?;
        let sql = format!(
            "SELECT CAST(id AS TEXT) FROM {} ORDER BY id LIMIT {MAX_IDS}",
            quoted(table)
        );
        let mut stmt = conn.prepare(&sql).map_err(|e| format!("{sql}: {e}"))?;
        out.ids = stmt
            .query_map([], |r| r.get::<_, Option<String>>(0))
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| format!("{sql}: {e}"))?
            .into_iter()
            .map(Option::unwrap_or_default)
            .collect();
    }
    let clock = format!("__lm_clk_{table}");
    if exists(&clock)? {
        out.clock_rows = count(&format!("SELECT count(*) FROM {}", quoted(&clock)), None)?;
    }
    // The changes are kept encoded (MessagePack): a row change carries its
    // table's name as a string, so its bytes are in the blob.
    let name = table.as_bytes();
    for (internal, column, slot) in [
        ("__lm_parked", "change", &mut out.parked),
        ("__lm_quarantine", "rows", &mut out.quarantined),
        ("__lm_partial", "rows", &mut out.partial),
    ] {
        if exists(internal)? {
            *slot = count(
                &format!(
                    "SELECT count(*) FROM {internal} WHERE instr(CAST({column} AS BLOB), ?1) > 0"
                ),
                Some(name),
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, name: &str, sql: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        let c = Connection::open(&p).unwrap();
        c.execute_batch(sql).unwrap();
        p
    }

    const INTERNAL: &str = "
        CREATE TABLE __lm_parked(actor, version, seq, change BLOB);
        CREATE TABLE __lm_quarantine(actor, version, rows BLOB, error);
        CREATE TABLE __lm_partial(actor, version, start, end, rows BLOB);
        CREATE TABLE pinned_eu(id TEXT PRIMARY KEY, txn TEXT);
        CREATE TABLE __lm_clk_pinned_eu(id TEXT PRIMARY KEY, __clk BLOB);
    ";

    #[test]
    fn finds_rows_clocks_and_encoded_changes_of_the_table() {
        let dir = std::env::temp_dir().join(format!("lmchaos-scan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let clean = file(&dir, "clean.db", INTERNAL);
        let s = scan(&clean, "pinned_eu");
        assert_eq!(s.error, None);
        assert_eq!(s.total(), 0);
        assert_eq!(s.describe("pinned_eu"), "nothing");

        let dirty = file(
            &dir,
            "dirty.db",
            &format!(
                "{INTERNAL}
                INSERT INTO pinned_eu VALUES ('c0-1-p', 'c0-1'), ('c0-2-p', 'c0-2');
                INSERT INTO __lm_clk_pinned_eu VALUES ('c0-1-p', x'00');
                INSERT INTO __lm_parked VALUES (1, 1, 0, CAST('..pinned_eu..' AS BLOB));
                INSERT INTO __lm_parked VALUES (1, 2, 0, CAST('..events..' AS BLOB));
                INSERT INTO __lm_quarantine VALUES (1, 3, x'00a970696e6e65645f6575', 'e');
                INSERT INTO __lm_partial VALUES (1, 4, 0, 1, x'00');"
            ),
        );
        let s = scan(&dirty, "pinned_eu");
        assert_eq!(s.error, None);
        assert_eq!(
            (s.rows, s.clock_rows, s.parked, s.quarantined, s.partial),
            (2, 1, 1, 1, 0)
        );
        assert_eq!(s.ids, vec!["c0-1-p", "c0-2-p"]);
        assert_eq!(s.total(), 5);
        let d = s.describe("pinned_eu");
        assert!(
            d.starts_with("2 rows of pinned_eu (ids c0-1-p, c0-2-p)"),
            "{d}"
        );
        assert!(d.contains("1 quarantined versions"), "{d}");

        // A file without the table (nor litemesh's tables) holds nothing.
        let bare = file(&dir, "bare.db", "CREATE TABLE x(a);");
        assert_eq!(scan(&bare, "pinned_eu").total(), 0);
        // A missing file is an error, not a clean bill.
        let missing = scan(&dir.join("missing.db"), "pinned_eu");
        assert!(missing.error.is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
