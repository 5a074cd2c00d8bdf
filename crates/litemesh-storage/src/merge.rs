//! Merging remote changes.
//!
//! The rule, per cell, the same on every node:
//! 1. A row's causal length (`cl`) decides life and death: the higher `cl` wins;
//!    an even `cl` deletes the row, an odd one (re)creates it and discards every
//!    cell written in an earlier life.
//! 2. Within the same `cl`, the cell with the higher cell version (`cv`) wins;
//!    equal `cv`s are broken by the larger actor id.
//! 3. An identical clock means the same write: nothing to do (idempotence).
//!
//! Every batch is applied in one SQLite transaction together with the version
//! bookkeeping: it lands whole or not at all.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, params_from_iter};

use crate::change::{ActorId, ChangeBatch, RowChange, SeqRange, VersionChanges};
use crate::clock::{CellClock, Cells, EntryRef, RowClock};
use crate::error::{Result, StorageError};
use crate::log::LogEntry;
use crate::ranges::RangeSet;
use crate::schema::{TableMeta, q};
use crate::store::{Store, add_have, has_version};
use crate::value::{Value, encode_pk};

/// What [`Store::apply`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Versions applied in full.
    pub versions_applied: usize,
    /// Versions skipped because this node already had them.
    pub versions_duplicate: usize,
    /// Chunks of large versions stored until the rest arrives.
    pub chunks_buffered: usize,
    /// Cells that won the merge and were written.
    pub cells_written: usize,
    /// Row deletions applied.
    pub rows_deleted: usize,
    /// Row changes parked for tables or columns this node does not know yet.
    pub rows_parked: usize,
    /// Versions recorded as cleared.
    pub versions_cleared: u64,
    /// Tables whose content changed.
    pub tables_changed: BTreeSet<String>,
}

/// Merge mode, while alive: remote changes are not local writes, so the
/// connection compiles statements without triggers (no trigger programs, no
/// statement journals: merges run at the speed of plain writes), and the
/// triggers' own guard (`__lm_local()`) is off as a second line of defence.
/// Dropping the guard — also on panic — restores capture.
struct MergeMode {
    db: *mut rusqlite::ffi::sqlite3,
    flag: std::sync::Arc<crate::capture::CaptureState>,
}

impl MergeMode {
    fn enter(
        conn: &Connection,
        flag: std::sync::Arc<crate::capture::CaptureState>,
    ) -> Result<MergeMode> {
        flag.enabled.store(false, Ordering::SeqCst);
        let guard = MergeMode {
            // SAFETY: the handle stays valid while the store (which owns the
            // connection and this guard's scope) lives.
            db: unsafe { conn.handle() },
            flag,
        };
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER,
            false,
        )?;
        Ok(guard)
    }
}

impl Drop for MergeMode {
    fn drop(&mut self) {
        // SAFETY: `db` is the live connection handle (see `enter`); this config
        // verb takes an int and a nullable int pointer.
        unsafe {
            rusqlite::ffi::sqlite3_db_config(
                self.db,
                rusqlite::ffi::SQLITE_DBCONFIG_ENABLE_TRIGGER,
                1 as std::os::raw::c_int,
                std::ptr::null_mut::<std::os::raw::c_int>(),
            );
        }
        self.flag.enabled.store(true, Ordering::SeqCst);
    }
}

impl Store {
    /// Merges a batch of remote changes. All or nothing: on error, neither data
    /// nor bookkeeping change. Versions already held are skipped, so applying a
    /// batch twice is harmless.
    pub fn apply(&mut self, batch: &ChangeBatch) -> Result<ApplyReport> {
        self.apply_all(std::slice::from_ref(batch))
    }

    /// Merges several batches in one SQLite transaction (one disk sync): all
    /// of them, or none.
    pub fn apply_all(&mut self, batches: &[ChangeBatch]) -> Result<ApplyReport> {
        for b in batches {
            crate::change::validate(b)?;
        }
        // Merge mode for every batch, small or large, so that application
        // triggers never fire for remote changes (a documented guarantee).
        let _merge = MergeMode::enter(&self.conn, self.state.clone())?;
        let res = self.apply_inner(batches);
        if res.is_err() {
            // The transaction rolled back: drop cached actor indexes it added.
            self.reload()?;
        }
        res
    }

    fn apply_inner(&mut self, batches: &[ChangeBatch]) -> Result<ApplyReport> {
        let mut report = ApplyReport::default();
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        match self.apply_body(batches, &mut report) {
            Ok(()) => {
                self.conn.execute_batch("COMMIT")?;
                Ok(report)
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    fn apply_body(&mut self, batches: &[ChangeBatch], report: &mut ApplyReport) -> Result<()> {
        let own = self.actor;
        // Chunks of large versions, gathered over all batches of this call: a
        // version whose chunks all arrive together is applied straight away.
        let mut chunked: BTreeMap<(ActorId, u64), Vec<&VersionChanges>> = BTreeMap::new();
        for batch in batches {
            for c in &batch.cleared {
                if c.actor == own {
                    continue;
                }
                let a = self.index_of(&c.actor)?;
                add_have(&self.conn, a, c.start, c.end)?;
                self.conn
                    .prepare_cached(
                        "DELETE FROM __lm_partial WHERE actor = ?1 AND version BETWEEN ?2 AND ?3",
                    )?
                    .execute((a as i64, c.start as i64, c.end as i64))?;
                report.versions_cleared += c.end - c.start + 1;
            }
            for v in &batch.versions {
                if v.actor == own {
                    report.versions_duplicate += 1;
                    continue;
                }
                match v.chunk {
                    None
                    | Some(SeqRange {
                        start: 0,
                        end: u64::MAX,
                    }) => {
                        self.apply_version(v.actor, v.version, v.rows.iter(), report)?;
                    }
                    Some(_) => chunked.entry((v.actor, v.version)).or_default().push(v),
                }
            }
        }
        for ((actor, version), parts) in chunked {
            let a = self.index_of(&actor)?;
            if has_version(&self.conn, a, version)? {
                report.versions_duplicate += 1;
                continue;
            }
            let mut covered = RangeSet::new();
            for p in &parts {
                let c = p.chunk.expect("chunked");
                covered.insert_range(c.start, c.end);
            }
            if covered.contains_range(0, u64::MAX) {
                self.conn
                    .prepare_cached("DELETE FROM __lm_partial WHERE actor = ?1 AND version = ?2")?
                    .execute((a as i64, version as i64))?;
                // Overlapping chunks may repeat a row; merging is idempotent.
                let mut rows: Vec<&RowChange> = parts.iter().flat_map(|p| &p.rows).collect();
                rows.sort_by_key(|r| r.seq);
                self.apply_version(actor, version, rows.into_iter(), report)?;
                continue;
            }
            for p in parts {
                let chunk = p.chunk.expect("chunked");
                if let Some(rows) = self.buffer_chunk(a, version, chunk, &p.rows)? {
                    self.apply_version(actor, version, rows.iter(), report)?;
                    break;
                }
                report.chunks_buffered += 1;
            }
        }
        Ok(())
    }

    fn apply_version<'r>(
        &mut self,
        actor: ActorId,
        version: u64,
        rows: impl Iterator<Item = &'r RowChange>,
        report: &mut ApplyReport,
    ) -> Result<()> {
        let a = self.index_of(&actor)?;
        if has_version(&self.conn, a, version)? {
            report.versions_duplicate += 1;
            return Ok(());
        }
        let mut logged = Vec::new();
        for row in rows {
            logged.extend(self.merge_row(a, actor, version, row, report)?);
        }
        if !logged.is_empty() {
            crate::log::write_chunks(&self.conn, a, version, &logged)?;
        }
        add_have(&self.conn, a, version, version)?;
        report.versions_applied += 1;
        Ok(())
    }

    /// Stores a chunk; returns all rows of the version once its chunks cover it.
    fn buffer_chunk(
        &mut self,
        a: u64,
        version: u64,
        chunk: SeqRange,
        rows: &[RowChange],
    ) -> Result<Option<Vec<RowChange>>> {
        let blob = rmp_serde::to_vec(rows).map_err(|e| StorageError::Decode(e.to_string()))?;
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO __lm_partial(actor, version, start, end, rows) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute((a as i64, version as i64, chunk.start as i64, chunk.end as i64, blob))?;
        let mut covered = RangeSet::new();
        let mut parts: Vec<Vec<u8>> = Vec::new();
        {
            let mut stmt = self.conn.prepare_cached(
                "SELECT start, end, rows FROM __lm_partial WHERE actor = ?1 AND version = ?2 ORDER BY start",
            )?;
            let mut q = stmt.query((a as i64, version as i64))?;
            while let Some(r) = q.next()? {
                covered.insert_range(r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64);
                parts.push(r.get(2)?);
            }
        }
        if !covered.contains_range(0, u64::MAX) {
            return Ok(None);
        }
        self.conn
            .prepare_cached("DELETE FROM __lm_partial WHERE actor = ?1 AND version = ?2")?
            .execute((a as i64, version as i64))?;
        let mut all: Vec<RowChange> = Vec::new();
        for p in parts {
            let rows: Vec<RowChange> = rmp_serde::from_slice(&p)
                .map_err(|e| StorageError::Corrupt(format!("buffered chunk: {e}")))?;
            all.extend(rows);
        }
        all.sort_by_key(|r| r.seq);
        Ok(Some(all))
    }

    fn park(&self, a: u64, version: u64, row: &RowChange, report: &mut ApplyReport) -> Result<()> {
        let blob = rmp_serde::to_vec(row).map_err(|e| StorageError::Decode(e.to_string()))?;
        // Two parts of one row write may be parked (unknown columns of a known
        // table); keep the cells of both.
        let existing: Option<Vec<u8>> = self
            .conn
            .prepare_cached(
                "SELECT change FROM __lm_parked WHERE actor = ?1 AND version = ?2 AND seq = ?3",
            )?
            .query_row((a as i64, version as i64, row.seq as i64), |r| r.get(0))
            .optional()?;
        let blob = match existing {
            Some(old) => {
                let mut old: RowChange = rmp_serde::from_slice(&old)
                    .map_err(|e| StorageError::Corrupt(format!("parked change: {e}")))?;
                for c in &row.cells {
                    if !old.cells.iter().any(|o| o.column == c.column) {
                        old.cells.push(c.clone());
                    }
                }
                rmp_serde::to_vec(&old).map_err(|e| StorageError::Decode(e.to_string()))?
            }
            None => blob,
        };
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO __lm_parked(actor, version, seq, change) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute((a as i64, version as i64, row.seq as i64, blob))?;
        report.rows_parked += 1;
        Ok(())
    }

    /// Applies changes parked for tables or columns that are now known.
    pub(crate) fn retry_parked(&mut self) -> Result<ApplyReport> {
        let _merge = MergeMode::enter(&self.conn, self.state.clone())?;
        let mut report = ApplyReport::default();
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        let res = (|| {
            let parked: Vec<(i64, i64, i64, Vec<u8>)> = self
                .conn
                .prepare("SELECT actor, version, seq, change FROM __lm_parked ORDER BY actor, version, seq")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect::<rusqlite::Result<_>>()?;
            for (a, v, s, blob) in parked {
                let row: RowChange = rmp_serde::from_slice(&blob)
                    .map_err(|e| StorageError::Corrupt(format!("parked change: {e}")))?;
                let Some(t) = self.tables.get(&row.table) else {
                    continue;
                };
                if !row.cells.iter().any(|c| t.col_idx.contains_key(&c.column))
                    && !row.cells.is_empty()
                {
                    continue;
                }
                self.conn
                    .prepare_cached(
                        "DELETE FROM __lm_parked WHERE actor = ?1 AND version = ?2 AND seq = ?3",
                    )?
                    .execute((a, v, s))?;
                let actor = crate::store::actor_at(&self.actors, a)?;
                if let Some(e) = self.merge_row(a as u64, actor, v as u64, &row, &mut report)? {
                    crate::log::write_chunks(&self.conn, a as u64, v as u64, &[e])?;
                }
            }
            Ok(())
        })();
        match res {
            Ok(()) => {
                self.conn.execute_batch("COMMIT")?;
                Ok(report)
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    /// Merges one row write into the local row.
    fn merge_row(
        &mut self,
        a: u64,
        actor: ActorId,
        version: u64,
        row: &RowChange,
        report: &mut ApplyReport,
    ) -> Result<Option<LogEntry>> {
        let Some(t) = self.tables.get(&row.table).cloned() else {
            self.park(a, version, row, report)?;
            return Ok(None);
        };
        if row.pk.len() != t.pk.len() {
            return Err(StorageError::Decode(format!(
                "table {:?} has {} key columns, change has {}",
                t.name,
                t.pk.len(),
                row.pk.len()
            )));
        }
        let mut known = Vec::with_capacity(row.cells.len());
        let mut unknown = Vec::new();
        for c in &row.cells {
            match t.col_idx.get(&c.column) {
                Some(&i) => known.push((i, c)),
                None => unknown.push(c.clone()),
            }
        }
        if !unknown.is_empty() {
            let parked = RowChange {
                cells: unknown,
                ..row.clone()
            };
            self.park(a, version, &parked, report)?;
        }
        let entry = EntryRef {
            actor: a,
            version,
            seq: row.seq,
        };
        let local = load_clock(&self.conn, &t, &row.pk)?;
        let local_cl = local.as_ref().map_or(0, |c| c.cl);
        let conn = &self.conn;
        if row.cl < local_cl {
            return Ok(None);
        }
        let mut wrote = false;
        if row.cl > local_cl {
            if row.cl.is_multiple_of(2) {
                if local_cl % 2 == 1 {
                    conn.prepare_cached(&t.sql.delete_row)?
                        .execute(params_from_iter(row.pk.iter()))?;
                    report.rows_deleted += 1;
                    report.tables_changed.insert(t.name.clone());
                }
                let clock = RowClock {
                    cl: row.cl,
                    owner: entry,
                    owner_cells: 0,
                    cells: Cells::default(),
                };
                store_clock(conn, &t, &row.pk, &clock)?;
            } else {
                // A new life of the row: earlier cells are void.
                let mut cells = Cells::default();
                let mut compact = known.len() == t.cols.len();
                for (i, c) in &known {
                    compact &= c.cv == 1;
                    cells.set(*i, CellClock { cv: c.cv, entry });
                }
                if known.len() == t.cols.len() {
                    // Every column present: one prepared statement for all rows.
                    let mut vals: Vec<&Value> = row.pk.iter().collect();
                    let mut by_idx: Vec<Option<&Value>> = vec![None; t.cols.len()];
                    for (i, c) in &known {
                        by_idx[*i as usize] = Some(&c.value);
                    }
                    vals.extend(by_idx.into_iter().map(|v| v.unwrap_or(&Value::Null)));
                    conn.prepare_cached(&t.sql.replace_row)?
                        .execute(params_from_iter(vals))?;
                } else {
                    let mut cols: Vec<&str> = t.pk.iter().map(String::as_str).collect();
                    let mut vals: Vec<&Value> = row.pk.iter().collect();
                    for (i, c) in &known {
                        cols.push(&t.cols[*i as usize]);
                        vals.push(&c.value);
                    }
                    let sql = format!(
                        "INSERT OR REPLACE INTO {}({}) VALUES ({})",
                        q(&t.name),
                        cols.iter().map(|c| q(c)).collect::<Vec<_>>().join(", "),
                        (1..=cols.len())
                            .map(|i| format!("?{i}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                    conn.prepare_cached(&sql)?.execute(params_from_iter(vals))?;
                }
                let oc = if compact {
                    cells = Cells::default();
                    t.cols.len() as u32
                } else {
                    0
                };
                let clock = RowClock {
                    cl: row.cl,
                    owner: entry,
                    owner_cells: oc,
                    cells,
                };
                store_clock(conn, &t, &row.pk, &clock)?;
                report.cells_written += known.len();
                report.tables_changed.insert(t.name.clone());
            }
            wrote = true;
        } else if row.cl % 2 == 1 {
            let mut local = local.expect("cl > 0 means a clock row");
            let mut won: Vec<(u32, &Value)> = Vec::new();
            for (i, c) in &known {
                let wins = match local.cell(*i) {
                    None => true,
                    Some(l) => {
                        let la = crate::store::actor_at(&self.actors, l.entry.actor as i64)?;
                        (c.cv, actor) > (l.cv, la)
                    }
                };
                if wins {
                    won.push((*i, &c.value));
                }
            }
            if !won.is_empty() {
                for (i, v) in &won {
                    let vals = std::iter::once(*v).chain(row.pk.iter());
                    conn.prepare_cached(&t.sql.update_col[*i as usize])?
                        .execute(params_from_iter(vals))?;
                }
                for (i, _) in &won {
                    let cv = known
                        .iter()
                        .find(|(k, _)| k == i)
                        .map(|(_, c)| c.cv)
                        .unwrap_or(1);
                    local.cells.set(*i, CellClock { cv, entry });
                }
                store_clock(conn, &t, &row.pk, &local)?;
                report.cells_written += won.len();
                report.tables_changed.insert(t.name.clone());
                wrote = true;
            }
        }
        if !wrote {
            return Ok(None);
        }
        let pkref: Vec<ValueRef<'_>> = row.pk.iter().map(Value::as_ref).collect();
        Ok(Some(LogEntry {
            seq: row.seq,
            tbl: t.id,
            pk: encode_pk(&pkref),
        }))
    }
}

pub(crate) fn load_clock(
    conn: &Connection,
    t: &TableMeta,
    pk: &[Value],
) -> Result<Option<RowClock>> {
    let mut stmt = conn.prepare_cached(&t.sql.load_clock)?;
    let blob: Option<Vec<u8>> = stmt
        .query_row(params_from_iter(pk.iter()), |r| r.get(0))
        .optional()?;
    blob.map(|b| {
        RowClock::decode(&b)
            .ok_or_else(|| StorageError::Corrupt(format!("row clock in {}", t.name)))
    })
    .transpose()
}

fn store_clock(conn: &Connection, t: &TableMeta, pk: &[Value], clock: &RowClock) -> Result<()> {
    let mut params: Vec<rusqlite::types::Value> = pk.iter().map(to_sql_value).collect();
    params.push(clock.encode().into());
    conn.prepare_cached(&t.sql.store_clock)?
        .execute(params_from_iter(params))?;
    Ok(())
}

fn to_sql_value(v: &Value) -> rusqlite::types::Value {
    match v {
        Value::Null => rusqlite::types::Value::Null,
        Value::Integer(i) => rusqlite::types::Value::Integer(*i),
        Value::Real(f) => rusqlite::types::Value::Real(*f),
        Value::Text(s) => rusqlite::types::Value::Text(s.clone()),
        Value::Blob(b) => rusqlite::types::Value::Blob(b.clone()),
    }
}
