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

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, params_from_iter};

use crate::clock::{CellClock, Cells, EntryRef, Reg, RowClock, Slot};
use crate::commute::{ColKind, counter_value};
use crate::error::{Result, StorageError};
use crate::log::LogEntry;
use crate::schema::{TableMeta, q};
use crate::store::{Store, add_have, has_version};
use crate::value::encode_pk;
use litemesh_proto::RangeSet;
use litemesh_proto::Value;
use litemesh_proto::{
    ActorId, CellChange, CellKind, ChangeBatch, RowChange, SeqRange, VersionChanges,
};
use std::borrow::Cow;

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
    /// Versions that failed to apply because of their data (a constraint, a
    /// type, a value an index expression refuses), newly put in quarantine
    /// with the error: they are kept, retried later, and never block other
    /// versions.
    pub quarantined: Vec<(ActorId, u64, String)>,
    /// Versions skipped because they are already in quarantine.
    pub versions_in_quarantine: usize,
    /// Parked row changes that still failed to merge (left parked).
    pub parked_failed: usize,
    /// Versions (or chunks) skipped because they arrived without rows of a
    /// table this node may hold (a sender that holds them only in part):
    /// not recorded as held, so a node that holds them whole supplies them.
    pub versions_incomplete: usize,
    /// Rows of tables this node's region may not hold that a sender sent
    /// anyway (a sender that does not know the placement, or lies): left
    /// out, never written to the file.
    pub rows_refused: usize,
    /// Rows of tables this node (a partial replica) does not carry, that
    /// a sender sent because it did not know: left out.
    pub rows_not_carried: usize,
}

impl ApplyReport {
    fn absorb(&mut self, o: ApplyReport) {
        self.versions_applied += o.versions_applied;
        self.versions_duplicate += o.versions_duplicate;
        self.chunks_buffered += o.chunks_buffered;
        self.cells_written += o.cells_written;
        self.rows_deleted += o.rows_deleted;
        self.rows_parked += o.rows_parked;
        self.versions_cleared += o.versions_cleared;
        self.tables_changed.extend(o.tables_changed);
        self.quarantined.extend(o.quarantined);
        self.versions_in_quarantine += o.versions_in_quarantine;
        self.parked_failed += o.parked_failed;
        self.versions_incomplete += o.versions_incomplete;
        self.rows_refused += o.rows_refused;
        self.rows_not_carried += o.rows_not_carried;
    }
}

/// A version kept in quarantine: it failed to apply on this node because of
/// its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantinedVersion {
    /// The writer.
    pub actor: ActorId,
    /// The writer's version.
    pub version: u64,
    /// Row changes it holds.
    pub rows: usize,
    /// The last error.
    pub error: String,
    /// When it first failed (Unix milliseconds).
    pub first_failed_ms: u64,
    /// When it was last tried (Unix milliseconds).
    pub last_tried_ms: u64,
    /// Attempts so far.
    pub attempts: u64,
}

/// What [`Store::retry_quarantined`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryReport {
    /// Versions that now applied (out of quarantine).
    pub applied: Vec<(ActorId, u64)>,
    /// Versions tried that failed again.
    pub failed: usize,
    /// Tables whose content changed.
    pub tables_changed: BTreeSet<String>,
}

/// Begins a write transaction; one left open by a failure is rolled back
/// first (a second line of defence: `commit` never leaves one).
fn begin(conn: &Connection) -> Result<()> {
    if !conn.is_autocommit() {
        tracing::error!("a transaction was left open on the writer; rolling it back");
        let _ = conn.execute_batch("ROLLBACK");
    }
    conn.execute_batch("BEGIN IMMEDIATE")?;
    Ok(())
}

/// Commits; if the commit fails, no transaction stays open (some failures
/// leave it open, and every later `BEGIN` would fail).
fn commit(conn: &Connection) -> Result<()> {
    match conn.execute_batch("COMMIT") {
        Ok(()) => Ok(()),
        Err(e) => {
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            Err(e.into())
        }
    }
}

/// Wall-clock time in Unix milliseconds.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Wait before retrying a quarantined version that failed `attempts` times:
/// 5 s, doubling, at most 10 minutes.
fn retry_delay_ms(attempts: u64) -> u64 {
    (5_000u64 << attempts.saturating_sub(1).min(10)).min(600_000)
}

/// Merge mode, while alive: the store works through its merge connection (see
/// [`Store::open_merge_connection`]), which compiles statements without triggers
/// (no trigger programs, no statement journals: merges run at the speed of
/// plain writes) and ignores CHECK constraints. Those settings are made once,
/// when that connection opens: switching them on the writer's connection
/// would expire every statement it has compiled (SQLite re-prepares them all
/// at their next use), which cost about half the CPU of a node applying a
/// stream of small broadcasts. Dropping the guard — also on panic — gives the
/// store its own connection back.
pub(crate) struct Merging<'a> {
    store: &'a mut Store,
}

impl<'a> Merging<'a> {
    pub(crate) fn enter(store: &'a mut Store) -> Result<Merging<'a>> {
        store.open_merge_connection()?;
        let Some(merge) = store.merge_conn.as_mut() else {
            return Err(StorageError::Corrupt("no merge connection".into()));
        };
        std::mem::swap(&mut store.conn, merge);
        Ok(Merging { store })
    }
}

impl std::ops::Deref for Merging<'_> {
    type Target = Store;
    fn deref(&self) -> &Store {
        self.store
    }
}

impl std::ops::DerefMut for Merging<'_> {
    fn deref_mut(&mut self) -> &mut Store {
        self.store
    }
}

impl Drop for Merging<'_> {
    fn drop(&mut self) {
        // Whatever merge mode committed waits for a sync to disk (see
        // `Store::merges_unsynced`).
        self.store.merges_unsynced |= self.store.opts.durable;
        self.store.merged_last = true;
        if let Some(merge) = self.store.merge_conn.as_mut() {
            std::mem::swap(&mut self.store.conn, merge);
        }
    }
}

/// The tables withheld from any chunk of a version.
fn union_withheld(parts: &[&VersionChanges]) -> Vec<String> {
    let mut all: BTreeSet<String> = BTreeSet::new();
    for p in parts {
        all.extend(p.withheld.iter().cloned());
    }
    all.into_iter().collect()
}

impl Store {
    /// Merges a batch of remote changes. All or nothing: on error, neither data
    /// nor bookkeeping change. Versions already held are skipped, so applying a
    /// batch twice is harmless.
    pub fn apply(&mut self, batch: &ChangeBatch) -> Result<ApplyReport> {
        self.apply_all(std::slice::from_ref(batch))
    }

    /// Merges several batches in one SQLite transaction (one disk sync).
    ///
    /// A version whose data cannot be applied on this node (a constraint, a
    /// type, a value an index expression refuses: see
    /// [`StorageError::is_data_error`]) is put in quarantine with its error
    /// and the others are applied: one bad change never blocks the rest. Any
    /// other failure (disk full, I/O error, a lock held elsewhere) fails the
    /// whole call and changes nothing.
    pub fn apply_all(&mut self, batches: &[ChangeBatch]) -> Result<ApplyReport> {
        let mut reports = self.apply_groups(&[batches])?;
        Ok(reports.pop().unwrap_or_default())
    }

    /// Merges several groups of batches (say, the broadcasts that arrived
    /// while the writer was busy) in one SQLite transaction: one commit for
    /// all of them, and a report per group, in order. Quarantine works as
    /// in [`Store::apply_all`]: a version that cannot apply is set aside and
    /// the rest commit; any other failure fails the whole call and changes
    /// nothing.
    pub fn apply_groups(&mut self, groups: &[&[ChangeBatch]]) -> Result<Vec<ApplyReport>> {
        for b in groups.iter().flat_map(|g| g.iter()) {
            litemesh_proto::validate(b)?;
        }
        // Merge mode for every batch, small or large, so that application
        // triggers never fire for remote changes (a documented guarantee).
        let mut s = Merging::enter(self)?;
        // Fast path: one transaction, no savepoints. Failures are rare; on a
        // data error, redo with every version in its own savepoint.
        let res = match s.apply_inner(groups, false) {
            Err(e) if e.is_data_error() => {
                s.reload()?;
                s.apply_inner(groups, true)
            }
            other => other,
        };
        if res.is_err() {
            // The transaction rolled back: drop cached actor indexes it added.
            s.reload()?;
        }
        res
    }

    fn apply_inner(
        &mut self,
        groups: &[&[ChangeBatch]],
        isolate: bool,
    ) -> Result<Vec<ApplyReport>> {
        let mut reports = vec![ApplyReport::default(); groups.len()];
        begin(&self.conn)?;
        let body = groups
            .iter()
            .zip(reports.iter_mut())
            .try_for_each(|(g, report)| self.apply_body(g, report, isolate));
        match body {
            Ok(()) => {
                commit(&self.conn)?;
                for (a, v, e) in reports.iter().flat_map(|r| &r.quarantined) {
                    tracing::error!(
                        actor = %a,
                        version = v,
                        "a remote change cannot be applied on this node and is quarantined: {e}"
                    );
                }
                Ok(reports)
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    fn apply_body(
        &mut self,
        batches: &[ChangeBatch],
        report: &mut ApplyReport,
        isolate: bool,
    ) -> Result<()> {
        let own = self.actor;
        // Each batch's versions as this node may hold them (placement).
        let mut admitted: Vec<Vec<Cow<'_, VersionChanges>>> = Vec::with_capacity(batches.len());
        for batch in batches {
            let mut keep = Vec::with_capacity(batch.versions.len());
            for v in &batch.versions {
                if v.actor == own {
                    report.versions_duplicate += 1;
                } else if let Some(v) = self.admit(v, report) {
                    keep.push(v);
                }
            }
            admitted.push(keep);
        }
        // Chunks of large versions, gathered over all batches of this call: a
        // version whose chunks all arrive together is applied straight away.
        let mut chunked: BTreeMap<(ActorId, u64), Vec<&VersionChanges>> = BTreeMap::new();
        for (batch, versions) in batches.iter().zip(&admitted) {
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
                // A version with nothing left to apply needs no quarantine.
                if self
                    .quarantined
                    .range((a, c.start)..=(a, c.end))
                    .next()
                    .is_some()
                {
                    self.conn
                        .prepare_cached(
                            "DELETE FROM __lm_quarantine WHERE actor = ?1 AND version BETWEEN ?2 AND ?3",
                        )?
                        .execute((a as i64, c.start as i64, c.end as i64))?;
                    let gone: Vec<(u64, u64)> = self
                        .quarantined
                        .range((a, c.start)..=(a, c.end))
                        .copied()
                        .collect();
                    for k in gone {
                        self.quarantined.remove(&k);
                    }
                }
                report.versions_cleared += c.end - c.start + 1;
            }
            for v in versions {
                let v: &VersionChanges = v;
                match v.chunk {
                    None
                    | Some(SeqRange {
                        start: 0,
                        end: u64::MAX,
                    }) => {
                        let rows: Vec<&RowChange> = v.rows.iter().collect();
                        self.apply_version(v.actor, v.version, rows, &v.withheld, report, isolate)?;
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
            if self.quarantined.contains(&(a, version)) {
                report.versions_in_quarantine += 1;
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
                let withheld = union_withheld(&parts);
                self.apply_version(actor, version, rows, &withheld, report, isolate)?;
                continue;
            }
            let withheld = union_withheld(&parts);
            for p in parts {
                let chunk = p.chunk.expect("chunked");
                crate::placement::add_withheld(
                    &self.conn,
                    a,
                    version,
                    &withheld.iter().cloned().collect(),
                )?;
                if let Some(rows) = self.buffer_chunk(a, version, chunk, &p.rows)? {
                    let rows: Vec<&RowChange> = rows.iter().collect();
                    self.apply_version(actor, version, rows, &withheld, report, isolate)?;
                    break;
                }
                report.chunks_buffered += 1;
            }
        }
        Ok(())
    }

    /// Applies one version, unless held or in quarantine. With `isolate`, in
    /// its own savepoint: a data error puts it in quarantine instead of
    /// failing the call.
    #[allow(clippy::too_many_arguments)]
    fn apply_version(
        &mut self,
        actor: ActorId,
        version: u64,
        rows: Vec<&RowChange>,
        withheld: &[String],
        report: &mut ApplyReport,
        isolate: bool,
    ) -> Result<()> {
        let a = self.index_of(&actor)?;
        if has_version(&self.conn, a, version)? {
            report.versions_duplicate += 1;
            return Ok(());
        }
        if self.quarantined.contains(&(a, version)) {
            report.versions_in_quarantine += 1;
            return Ok(());
        }
        if !withheld.is_empty() {
            // Outside the version's savepoint: kept if it is quarantined.
            crate::placement::add_withheld(
                &self.conn,
                a,
                version,
                &withheld.iter().cloned().collect(),
            )?;
        }
        if !isolate {
            return self.merge_version(a, actor, version, &rows, report);
        }
        self.conn.execute_batch("SAVEPOINT lm_version")?;
        let mut sub = ApplyReport::default();
        match self.merge_version(a, actor, version, &rows, &mut sub) {
            Ok(()) => {
                self.conn.execute_batch("RELEASE lm_version")?;
                report.absorb(sub);
                Ok(())
            }
            Err(e) => {
                self.conn
                    .execute_batch("ROLLBACK TO lm_version; RELEASE lm_version")?;
                if !e.is_data_error() {
                    return Err(e);
                }
                let msg = e.to_string();
                self.quarantine(a, version, &rows, &msg)?;
                report.quarantined.push((actor, version, msg));
                Ok(())
            }
        }
    }

    /// Merges the rows of one version and records it as held.
    fn merge_version(
        &mut self,
        a: u64,
        actor: ActorId,
        version: u64,
        rows: &[&RowChange],
        report: &mut ApplyReport,
    ) -> Result<()> {
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

    /// A remote version as this node may hold it: without rows of tables
    /// it may not hold (named in `withheld`), or `None` when it lacks rows
    /// this node may hold (it came from a node holding it only in part).
    fn admit<'v>(
        &self,
        v: &'v VersionChanges,
        report: &mut ApplyReport,
    ) -> Option<Cow<'v, VersionChanges>> {
        let (p, e) = (&self.placement, &self.entitlement);
        if v.withheld.is_empty() && !p.restricts(e) {
            return Some(Cow::Borrowed(v));
        }
        if v.withheld.iter().any(|t| p.may_hold(e, t)) {
            report.versions_incomplete += 1;
            return None;
        }
        if v.rows.iter().all(|r| p.may_hold(e, &r.table)) {
            return Some(Cow::Borrowed(v));
        }
        let refused = v.rows.iter().filter(|r| !p.allows(e, &r.table)).count();
        report.rows_not_carried += v
            .rows
            .iter()
            .filter(|r| p.allows(e, &r.table) && !p.may_hold(e, &r.table))
            .count();
        if refused > 0 {
            report.rows_refused += refused;
            tracing::warn!(
                actor = %v.actor,
                version = v.version,
                rows = refused,
                "a peer sent rows of a table this node's region may not hold: left out"
            );
        }
        p.filter_version(v, e).map(Cow::Owned)
    }

    /// Keeps a version that failed on its data, with its rows and the error.
    fn quarantine(&mut self, a: u64, version: u64, rows: &[&RowChange], error: &str) -> Result<()> {
        let blob = rmp_serde::to_vec(rows).map_err(|e| StorageError::Decode(e.to_string()))?;
        let now = now_ms() as i64;
        self.conn
            .prepare_cached(
                "INSERT INTO __lm_quarantine(actor, version, rows, error, first_failed, last_tried, attempts) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5, 1) \
                 ON CONFLICT(actor, version) DO UPDATE SET error = ?4, last_tried = ?5, attempts = attempts + 1",
            )?
            .execute((a as i64, version as i64, blob, error, now))?;
        self.quarantined.insert((a, version));
        Ok(())
    }

    /// The versions in quarantine, oldest failure first.
    pub fn quarantine_list(&self) -> Result<Vec<QuarantinedVersion>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT actor, version, rows, error, first_failed, last_tried, attempts \
             FROM __lm_quarantine ORDER BY first_failed, actor, version",
        )?;
        let mut out = Vec::new();
        let mut q = stmt.query([])?;
        while let Some(r) = q.next()? {
            let rows: Vec<RowChange> = rmp_serde::from_slice(&r.get::<_, Vec<u8>>(2)?)
                .map_err(|e| StorageError::Corrupt(format!("quarantined change: {e}")))?;
            out.push(QuarantinedVersion {
                actor: crate::store::actor_at(&self.actors, r.get(0)?)?,
                version: r.get::<_, i64>(1)? as u64,
                rows: rows.len(),
                error: r.get(3)?,
                first_failed_ms: r.get::<_, i64>(4)? as u64,
                last_tried_ms: r.get::<_, i64>(5)? as u64,
                attempts: r.get::<_, i64>(6)? as u64,
            });
        }
        Ok(out)
    }

    /// Number of versions in quarantine.
    pub fn quarantined_count(&self) -> usize {
        self.quarantined.len()
    }

    /// The versions in quarantine (from memory, no I/O).
    pub fn quarantined_versions(&self) -> Vec<(ActorId, u64)> {
        self.quarantined
            .iter()
            .filter_map(|&(a, v)| self.actors.get(a as usize).map(|id| (*id, v)))
            .collect()
    }

    /// Tries again the quarantined versions that are due (every one with
    /// `force`): after a failure, 5 s, then doubling up to 10 minutes. A
    /// version that applies leaves the quarantine and counts as held.
    pub fn retry_quarantined(&mut self, now_ms: u64, force: bool) -> Result<RetryReport> {
        if self.quarantined.is_empty() {
            return Ok(RetryReport::default());
        }
        Merging::enter(self)?.retry_quarantined_merging(now_ms, force)
    }

    fn retry_quarantined_merging(&mut self, now_ms: u64, force: bool) -> Result<RetryReport> {
        let mut out = RetryReport::default();
        if self.quarantined.is_empty() {
            return Ok(out);
        }
        // Which are due, without reading their rows.
        let due: Vec<(i64, i64)> = {
            let mut stmt = self.conn.prepare_cached(
                "SELECT actor, version, last_tried, attempts FROM __lm_quarantine ORDER BY actor, version",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)? as u64,
                    r.get::<_, i64>(3)? as u64,
                ))
            })?;
            let mut due = Vec::new();
            for r in rows {
                let (a, v, last, attempts) = r?;
                if force || last.saturating_add(retry_delay_ms(attempts)) <= now_ms {
                    due.push((a, v));
                }
            }
            due
        };
        if due.is_empty() {
            return Ok(out);
        }
        begin(&self.conn)?;
        let res = (|| -> Result<()> {
            for (a, v) in due {
                let blob: Vec<u8> = self
                    .conn
                    .prepare_cached(
                        "SELECT rows FROM __lm_quarantine WHERE actor = ?1 AND version = ?2",
                    )?
                    .query_row((a, v), |r| r.get(0))?;
                let (a, v) = (a as u64, v as u64);
                let actor = crate::store::actor_at(&self.actors, a as i64)?;
                let rows: Vec<RowChange> = rmp_serde::from_slice(&blob)
                    .map_err(|e| StorageError::Corrupt(format!("quarantined change: {e}")))?;
                let rows: Vec<&RowChange> = rows.iter().collect();
                self.conn.execute_batch("SAVEPOINT lm_version")?;
                let mut sub = ApplyReport::default();
                let held = has_version(&self.conn, a, v)?;
                let res = if held {
                    Ok(())
                } else {
                    self.merge_version(a, actor, v, &rows, &mut sub)
                };
                match res {
                    Ok(()) => {
                        self.conn.execute_batch("RELEASE lm_version")?;
                        self.conn
                            .prepare_cached(
                                "DELETE FROM __lm_quarantine WHERE actor = ?1 AND version = ?2",
                            )?
                            .execute((a as i64, v as i64))?;
                        self.quarantined.remove(&(a, v));
                        out.tables_changed.extend(sub.tables_changed);
                        out.applied.push((actor, v));
                    }
                    Err(e) => {
                        self.conn
                            .execute_batch("ROLLBACK TO lm_version; RELEASE lm_version")?;
                        if !e.is_data_error() {
                            return Err(e);
                        }
                        self.quarantine(a, v, &rows, &e.to_string())?;
                        out.failed += 1;
                    }
                }
            }
            Ok(())
        })();
        match res {
            Ok(()) => {
                if let Err(e) = commit(&self.conn) {
                    self.reload()?;
                    return Err(e);
                }
                for (a, v) in &out.applied {
                    tracing::info!(actor = %a, version = v, "a quarantined change now applied");
                }
                Ok(out)
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                self.reload()?;
                Err(e)
            }
        }
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
        Merging::enter(self)?.retry_parked_merging()
    }

    fn retry_parked_merging(&mut self) -> Result<ApplyReport> {
        let mut report = ApplyReport::default();
        begin(&self.conn)?;
        let res = (|| {
            let parked: Vec<(i64, i64, i64, Vec<u8>)> = self
                .conn
                .prepare("SELECT actor, version, seq, change FROM __lm_parked ORDER BY actor, version, seq")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect::<rusqlite::Result<_>>()?;
            for (a, v, s, blob) in parked {
                let row: RowChange = rmp_serde::from_slice(&blob)
                    .map_err(|e| StorageError::Corrupt(format!("parked change: {e}")))?;
                let Some(t) = self.table(&row.table) else {
                    continue;
                };
                if !row.cells.iter().any(|c| t.column(&c.column).is_some()) && !row.cells.is_empty()
                {
                    continue;
                }
                self.conn.execute_batch("SAVEPOINT lm_parked")?;
                let merged = (|| -> Result<()> {
                    self.conn
                        .prepare_cached(
                            "DELETE FROM __lm_parked WHERE actor = ?1 AND version = ?2 AND seq = ?3",
                        )?
                        .execute((a, v, s))?;
                    let actor = crate::store::actor_at(&self.actors, a)?;
                    if let Some(e) = self.merge_row(a as u64, actor, v as u64, &row, &mut report)? {
                        crate::log::write_chunks(&self.conn, a as u64, v as u64, &[e])?;
                    }
                    Ok(())
                })();
                match merged {
                    Ok(()) => self.conn.execute_batch("RELEASE lm_parked")?,
                    Err(e) => {
                        self.conn
                            .execute_batch("ROLLBACK TO lm_parked; RELEASE lm_parked")?;
                        if !e.is_data_error() {
                            return Err(e);
                        }
                        // It stays parked (and forwarded); the log says why.
                        tracing::error!(
                            version = v,
                            table = %row.table,
                            "a parked change still cannot be applied: {e}"
                        );
                        report.parked_failed += 1;
                    }
                }
            }
            Ok(())
        })();
        match res {
            Ok(()) => {
                commit(&self.conn)?;
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
        // The last line of placement, whatever path the row came by (a
        // buffered chunk, a quarantined or parked change kept from before
        // the node's entitlement changed): never written.
        if !self.placement.may_hold(&self.entitlement, &row.table) {
            crate::placement::add_withheld(
                &self.conn,
                a,
                version,
                &BTreeSet::from([row.table.clone()]),
            )?;
            return Ok(None);
        }
        let Some(t) = self.table(&row.table).cloned() else {
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
            match t.column(&c.column) {
                Some(i) => {
                    // A cell merged by another rule than this node's schema
                    // says: the schemas differ, and no rule is right here.
                    let kind = t.kinds[i as usize];
                    let base = match kind {
                        ColKind::Counter { base } => base,
                        _ => 0,
                    };
                    if kind.cell_kind() != c.kind || base != c.base {
                        return Err(StorageError::KindMismatch {
                            table: t.name.clone(),
                            column: t.cols[i as usize].clone(),
                            local: describe_kind(kind),
                            remote: describe_kind(match c.kind {
                                CellKind::Counter => ColKind::Counter { base: c.base },
                                CellKind::Max => ColKind::Max,
                                CellKind::Min => ColKind::Min,
                                CellKind::Plain => ColKind::Plain,
                            }),
                        });
                    }
                    known.push((i, c))
                }
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
                    slots: Vec::new(),
                    regs: Vec::new(),
                };
                store_clock(conn, &t, &row.pk, &clock, local.is_some())?;
            } else {
                // A new life of the row: earlier cells are void.
                let mut cells = Cells::default();
                let mut slots = Vec::new();
                let mut regs = Vec::new();
                // What the table holds: a counter's value is its base plus
                // the contribution (the one contribution of this life yet).
                let mut counted: Vec<(u32, Value)> = Vec::new();
                let mut plain_cells = 0;
                let mut compact = true;
                for (i, c) in &known {
                    match t.kinds[*i as usize] {
                        ColKind::Counter { base } => {
                            let Value::Integer(v) = c.value else {
                                return Err(StorageError::Decode(
                                    "a counter contribution that is not an integer".into(),
                                ));
                            };
                            slots.push(Slot {
                                col: *i,
                                entry,
                                value: v,
                            });
                            counted.push((*i, counter_value(base, v)));
                        }
                        k => {
                            if k.is_register() {
                                regs.push(Reg {
                                    col: *i,
                                    value: c.value.clone(),
                                });
                            }
                            plain_cells += 1;
                            compact &= c.cv == 1;
                            cells.set(*i, CellClock { cv: c.cv, entry });
                        }
                    }
                }
                // Compact when every column but the counters is written at
                // cell version 1 (a counter's clock is its contributions).
                let counters = t
                    .kinds
                    .iter()
                    .filter(|k| matches!(k, ColKind::Counter { .. }))
                    .count();
                compact &= plain_cells + counters == t.cols.len();
                slots.sort_by_key(|s| s.col);
                regs.sort_by_key(|r| r.col);
                let value_of = |i: u32, c: &'_ CellChange| -> Value {
                    match counted.iter().find(|(k, _)| *k == i) {
                        Some((_, v)) => v.clone(),
                        None => c.value.clone(),
                    }
                };
                let owned: Vec<(u32, Cow<'_, Value>)> = known
                    .iter()
                    .map(|(i, c)| {
                        if counted.is_empty() {
                            (*i, Cow::Borrowed(&c.value))
                        } else {
                            (*i, Cow::Owned(value_of(*i, c)))
                        }
                    })
                    .collect();
                if known.len() == t.cols.len() {
                    // Every column present: one prepared statement for all rows.
                    let mut vals: Vec<&Value> = row.pk.iter().collect();
                    let mut by_idx: Vec<Option<&Value>> = vec![None; t.cols.len()];
                    for (i, v) in &owned {
                        by_idx[*i as usize] = Some(v.as_ref());
                    }
                    vals.extend(by_idx.into_iter().map(|v| v.unwrap_or(&Value::Null)));
                    conn.prepare_cached(&t.sql.replace_row)?
                        .execute(params_from_iter(vals))?;
                } else {
                    let mut cols: Vec<&str> = t.pk.iter().map(String::as_str).collect();
                    let mut vals: Vec<&Value> = row.pk.iter().collect();
                    for (i, v) in &owned {
                        cols.push(&t.cols[*i as usize]);
                        vals.push(v.as_ref());
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
                    slots,
                    regs,
                };
                store_clock(conn, &t, &row.pk, &clock, local.is_some())?;
                report.cells_written += known.len();
                report.tables_changed.insert(t.name.clone());
            }
            wrote = true;
        } else if row.cl % 2 == 1 {
            let mut local = local.expect("cl > 0 means a clock row");
            let mut won: Vec<(u32, &Value)> = Vec::new();
            // Counters whose value changed, with the new value.
            let mut counted: Vec<(u32, Value)> = Vec::new();
            for (i, c) in &known {
                let wins = match t.kinds[*i as usize] {
                    ColKind::Plain => match local.cell(*i) {
                        None => true,
                        Some(l) => {
                            let la = crate::store::actor_at(&self.actors, l.entry.actor as i64)?;
                            (c.cv, actor) > (l.cv, la)
                        }
                    },
                    ColKind::Counter { base } => {
                        let Value::Integer(v) = c.value else {
                            return Err(StorageError::Decode(
                                "a counter contribution that is not an integer".into(),
                            ));
                        };
                        if crate::commute::merge_contribution(&mut local, *i, entry, v) {
                            counted.push((*i, counter_value(base, local.slot_sum(*i))));
                        }
                        false
                    }
                    k => {
                        let actors = &self.actors;
                        let wins = crate::commute::register_wins(
                            &local,
                            k,
                            *i,
                            &c.value,
                            c.cv,
                            actor,
                            |idx| actors.get(idx as usize).copied(),
                        );
                        if wins {
                            local.set_reg(*i, c.value.clone());
                        }
                        wins
                    }
                };
                if wins {
                    won.push((*i, &c.value));
                }
            }
            for (i, v) in &counted {
                let vals = std::iter::once(v).chain(row.pk.iter());
                conn.prepare_cached(&t.sql.update_col[*i as usize])?
                    .execute(params_from_iter(vals))?;
            }
            if won.is_empty() && !counted.is_empty() {
                store_clock(conn, &t, &row.pk, &local, true)?;
                report.cells_written += counted.len();
                report.tables_changed.insert(t.name.clone());
                wrote = true;
            }
            if !won.is_empty() {
                report.cells_written += counted.len();
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
                store_clock(conn, &t, &row.pk, &local, true)?;
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

/// A column kind as a mismatch error names it.
fn describe_kind(k: ColKind) -> String {
    match k {
        ColKind::Counter { base } => format!("counter (DEFAULT {base})"),
        other => other.cell_kind().name().to_string(),
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

/// Writes a row's clock: in place when the row has one (`exists`), else
/// inserted.
fn store_clock(
    conn: &Connection,
    t: &TableMeta,
    pk: &[Value],
    clock: &RowClock,
    exists: bool,
) -> Result<()> {
    let blob = clock.encode();
    let params = pk
        .iter()
        .map(|v| v as &dyn rusqlite::ToSql)
        .chain(std::iter::once(&blob as &dyn rusqlite::ToSql));
    if exists {
        let updated = conn
            .prepare_cached(&t.sql.update_clock)?
            .execute(params_from_iter(params.clone()))?;
        if updated == 1 {
            return Ok(());
        }
    }
    conn.prepare_cached(&t.sql.store_clock)?
        .execute(params_from_iter(params))?;
    Ok(())
}
