//! Online backups of a node's file, and restoring one as a new node.
//!
//! A backup is a consistent copy taken while the node runs (SQLite's
//! `VACUUM INTO` on a read-only connection: it reads one snapshot and
//! never blocks the writer). Restoring makes a file that joins the mesh
//! under a **new identity**: a new node id and a new actor, the data, the
//! clocks and the knowledge kept. The versions the backup's actor wrote stay
//! in the file as another actor's, so none is ever reused; whatever that
//! actor wrote after the backup comes back from the peers that hold it.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::error::{Result, StorageError};
use crate::store::Store;
use litemesh_proto::ActorId;

/// What [`restore`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// The actor the backup was written under (now a peer's, to this file).
    pub old_actor: ActorId,
    /// The restored file's new actor.
    pub new_actor: ActorId,
    /// Versions held, over every actor.
    pub versions: u64,
}

/// What a backup (or any node file) holds, read without changing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupInfo {
    /// The actor its local writes were made under.
    pub actor: ActorId,
    /// Versions held, over every actor.
    pub versions: u64,
    /// Replicated tables.
    pub tables: Vec<String>,
    /// Size in bytes.
    pub bytes: u64,
}

/// Checks that `path` is an intact litemesh node file (SQLite's
/// `quick_check`) and says what it holds, without changing it.
pub fn inspect(path: &Path) -> Result<BackupInfo> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    if check != "ok" {
        return Err(StorageError::Backup(format!(
            "{} is damaged: {check}",
            path.display()
        )));
    }
    let actor: Vec<u8> = conn
        .query_row("SELECT actor FROM __lm_site WHERE id = 0", [], |r| r.get(0))
        .map_err(|_| {
            StorageError::Backup(format!("{} is not a litemesh node file", path.display()))
        })?;
    let actor = ActorId(
        actor
            .as_slice()
            .try_into()
            .map_err(|_| StorageError::Corrupt("actor id length".into()))?,
    );
    let versions: i64 = conn.query_row(
        "SELECT coalesce(sum(end - start + 1), 0) FROM __lm_have",
        [],
        |r| r.get(0),
    )?;
    let local_next: i64 = conn.query_row(crate::store::NEXT_VERSION_SQL, [], |r| r.get(0))?;
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM __lm_tables ORDER BY name")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(BackupInfo {
        actor,
        // The local actor's own versions are not in `__lm_have`.
        versions: versions as u64 + (local_next as u64).saturating_sub(1),
        tables,
        bytes: std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
    })
}

/// Writes a consistent copy of the node file `db` to `out` (which must not
/// exist), while the node runs. Returns its size in bytes.
pub fn backup(db: &Path, out: &Path) -> Result<u64> {
    if out.exists() {
        return Err(StorageError::Backup(format!(
            "{} already exists",
            out.display()
        )));
    }
    let out_text = out
        .to_str()
        .ok_or_else(|| StorageError::Backup(format!("{} is not a UTF-8 path", out.display())))?;
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(10))?;
    let is_litemesh: bool = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '__lm_site'",
        [],
        |r| r.get::<_, i64>(0).map(|n| n == 1),
    )?;
    if !is_litemesh {
        return Err(StorageError::Backup(format!(
            "{} is not a litemesh node file",
            db.display()
        )));
    }
    conn.execute("VACUUM INTO ?1", [out_text])?;
    Ok(std::fs::metadata(out).map(|m| m.len()).unwrap_or(0))
}

/// Makes the node file `db` (which must not exist) from the backup
/// `from`, with a new identity: it joins the mesh as a new node and a new
/// actor. The backup file is not changed.
pub fn restore(from: &Path, db: &Path) -> Result<Restored> {
    for p in [
        db.to_path_buf(),
        sidecar(db, "-wal"),
        sidecar(db, "-journal"),
        sidecar(db, "-clean"),
    ] {
        if p.exists() {
            return Err(StorageError::Backup(format!(
                "{} already exists: restore into a new path (stop the node and move its \
                 files away first)",
                p.display()
            )));
        }
    }
    let tmp = sidecar(db, ".restoring");
    for s in ["", "-wal", "-shm", "-journal"] {
        let _ = std::fs::remove_file(sidecar(&tmp, s));
    }
    let made = (|| -> Result<Restored> {
        // A consistent copy of the backup, whatever state it is in (a WAL
        // beside it included).
        backup(from, &tmp)?;
        let check: String =
            Connection::open(&tmp)?.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
        if check != "ok" {
            return Err(StorageError::Backup(format!(
                "the backup is damaged: {check}"
            )));
        }
        let mut store = Store::open(&tmp)?;
        if store.created() {
            return Err(StorageError::Backup(format!(
                "{} holds no litemesh metadata",
                from.display()
            )));
        }
        let old_actor = store.actor_id();
        let new_actor = store.reidentify()?;
        // The new actor's range (numbers below which it will never write) is
        // not data.
        let versions = store
            .knowledge()?
            .have
            .iter()
            .filter(|(a, _)| **a != new_actor)
            .map(|(_, r)| r.count())
            .sum();
        // Everything in the main file before it is renamed.
        store
            .connection()
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")?;
        drop(store);
        for s in ["-wal", "-shm"] {
            let p = sidecar(&tmp, s);
            if std::fs::metadata(&p).is_ok_and(|m| m.len() > 0) && s == "-wal" {
                return Err(StorageError::Backup(
                    "the restored file could not be checkpointed".into(),
                ));
            }
            let _ = std::fs::remove_file(p);
        }
        Ok(Restored {
            old_actor,
            new_actor,
            versions,
        })
    })();
    match made {
        Ok(r) => {
            std::fs::rename(&tmp, db)
                .map_err(|e| StorageError::Backup(format!("{}: {e}", db.display())))?;
            Ok(r)
        }
        Err(e) => {
            for s in ["", "-wal", "-shm", "-journal"] {
                let _ = std::fs::remove_file(sidecar(&tmp, s));
            }
            Err(e)
        }
    }
}

fn sidecar(p: &Path, suffix: &str) -> std::path::PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    s.into()
}

impl Store {
    /// Gives the file a new identity: a new node id and a new actor (the
    /// versions written under the old one are kept as another actor's), and
    /// no clean-shutdown marker. For a file that will run as another node
    /// than the one that wrote it (a restored backup).
    pub fn reidentify(&mut self) -> Result<ActorId> {
        let node = ActorId::random().0;
        self.conn.execute(
            "UPDATE __lm_site SET node = ?1, clean = NULL WHERE id = 0",
            [&node[..]],
        )?;
        self.rotate_actor()
    }
}

/// What the replication metadata of a file weighs (see [`Store::metadata_stats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetadataStats {
    /// Per replicated table: (name, live rows, tombstones).
    pub tables: Vec<(String, u64, u64)>,
    /// Rows of the change log (chunks of entries).
    pub log_rows: u64,
    /// Bytes of change-log entries.
    pub log_bytes: u64,
    /// The file's size (pages in use and free).
    pub file_bytes: u64,
    /// Free pages (reused by later writes; `VACUUM` returns them).
    pub free_bytes: u64,
    /// Per table, the collection floor (see [`Store::floors`]).
    pub floors: std::collections::BTreeMap<String, u64>,
}

impl Store {
    /// Counts what replication keeps beside the rows: tombstones (clock
    /// rows of deleted rows) per table, the change log, the file's free
    /// space. Reads every clock table: for reports, not for every request.
    pub fn metadata_stats(&self) -> Result<MetadataStats> {
        let count = |sql: &str| -> Result<u64> {
            Ok(self.conn.query_row(sql, [], |r| r.get::<_, i64>(0))?.max(0) as u64)
        };
        let mut names: Vec<&String> = self.tables.keys().collect();
        names.sort();
        let mut tables = Vec::new();
        for name in names {
            let t = &self.tables[name];
            let rows = count(&format!("SELECT count(*) FROM {}", crate::schema::q(name)))?;
            let clocks = count(&format!("SELECT count(*) FROM {}", t.clk))?;
            tables.push((name.clone(), rows, clocks.saturating_sub(rows)));
        }
        let page = count("PRAGMA page_size")?;
        Ok(MetadataStats {
            tables,
            log_rows: count("SELECT count(*) FROM __lm_log")?,
            log_bytes: count("SELECT coalesce(sum(length(entries)), 0) FROM __lm_log")?,
            file_bytes: count("PRAGMA page_count")? * page,
            free_bytes: count("PRAGMA freelist_count")? * page,
            floors: self.floors()?,
        })
    }
}
