//! Collecting tombstones: dropping the clock rows of deleted rows (and the
//! change-log entries of their deletes) once no replica can still need them.
//!
//! *When* a tombstone may go is decided by the node (the cut: per actor, the
//! versions every node holds and every node's writes made before holding them
//! are held here, see `docs/retention.md`); this module does the dropping,
//! and keeps what makes it safe locally:
//!
//! - **floors** (`__lm_floor`): per table, the highest causal length of a
//!   tombstone collected in it, here or on any node this one synced with. A
//!   key inserted afresh starts its life above the floor (the capture
//!   trigger reads it), so it beats the tombstone that nodes which have not
//!   collected it still hold — both kinds of node agree on the result.
//! - **the collected watermark** (`__lm_collected`): per actor, the versions
//!   already scanned, so each pass reads only the change-log chunks of
//!   versions that became collectable since the last one.
//! - **owned actors** (`__lm_owned`): the actor ids this file ever wrote
//!   with (a node moves to a new one after a crash or a restore), which the
//!   node reports so that peers know whose report covers which writer.

use std::collections::BTreeMap;

use rusqlite::{OptionalExtension, params_from_iter};

use crate::clock::EntryRef;
use crate::error::{Result, StorageError};
use crate::log::{decode_entries, write_chunks};
use crate::store::Store;
use crate::value::decode_pk;
use litemesh_proto::ActorId;

/// What one collection pass removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Collected {
    /// Tombstones (clock rows of deleted rows) dropped.
    pub tombstones: u64,
    /// Change-log chunks read.
    pub chunks_scanned: u64,
    /// Change-log entries removed on the way because they owned nothing
    /// any more (every cell overwritten, or the row deleted since).
    pub dead_entries: u64,
    /// Whether the pass stopped at its budget with more to do.
    pub more: bool,
    /// Nothing was done: changes wait to be applied (parked or
    /// quarantined), and could meet a key whose tombstone would be gone.
    pub waiting: bool,
}

impl Store {
    /// Per table, the highest causal length of a tombstone collected in it
    /// (tables without one are absent).
    pub fn floors(&self) -> Result<BTreeMap<String, u64>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT name, cl FROM __lm_floor ORDER BY name")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        let mut out = BTreeMap::new();
        for r in rows {
            let (name, cl) = r?;
            out.insert(name, cl.max(0) as u64);
        }
        Ok(out)
    }

    /// Raises this node's floors to a peer's (each to the higher of the
    /// two; a floor is never lowered). A table not known here yet keeps its
    /// floor for when it is created. Returns whether any floor rose.
    pub fn raise_floors(&mut self, floors: &BTreeMap<String, u64>) -> Result<bool> {
        let current = self.floors()?;
        let higher: Vec<(&String, u64)> = floors
            .iter()
            .filter(|(name, cl)| current.get(*name).is_none_or(|c| *c < **cl))
            .map(|(n, cl)| (n, (*cl).min(i64::MAX as u64)))
            .collect();
        if higher.is_empty() {
            return Ok(false);
        }
        let tx = self.conn.unchecked_transaction()?;
        for (name, cl) in higher {
            raise_floor(&tx, &self.tables, name, cl)?;
        }
        tx.commit()?;
        Ok(true)
    }

    /// The actor ids this file has written with (its current one included).
    pub fn owned_actors(&self) -> Result<Vec<ActorId>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT actor FROM __lm_owned ORDER BY actor")?;
        let idx: Vec<i64> = stmt
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(idx
            .into_iter()
            .filter_map(|i| self.actors.get(usize::try_from(i).ok()?).copied())
            .collect())
    }

    /// Per actor, the highest version whose tombstones have been collected.
    pub fn collected_through(&self) -> Result<BTreeMap<ActorId, u64>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT actor, through FROM __lm_collected")?;
        let rows: Vec<(i64, i64)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows
            .into_iter()
            .filter_map(|(i, t)| Some((*self.actors.get(usize::try_from(i).ok()?)?, t as u64)))
            .collect())
    }

    /// Drops the tombstones made by the versions of `cut` (per actor, every
    /// version up to the given one) and the change-log entries of their
    /// deletes, raising each table's floor to the causal lengths dropped.
    /// Reads at most about `budget` change-log chunks (a version is never
    /// split), so a large backlog is worked through over several calls.
    ///
    /// The caller guarantees the cut is safe (see `docs/retention.md`):
    /// this node holds every version of the cut, every other node does too,
    /// and every write made before its author held them is held here.
    /// Nothing is collected while changes are parked or quarantined: they
    /// may still be applied, and could meet a key whose tombstone is gone.
    pub fn collect(&mut self, cut: &BTreeMap<ActorId, u64>, budget: u64) -> Result<Collected> {
        let mut out = Collected::default();
        if self.has_pending_changes()? {
            out.waiting = true;
            return Ok(out);
        }
        let by_id = self.tables_by_id();
        let tx = self.conn.unchecked_transaction()?;
        crate::store::keep_next_version(&tx)?;
        let mut floors: BTreeMap<String, u64> = BTreeMap::new();
        for (actor, &to) in cut {
            let Some(&idx) = self.actor_idx.get(actor) else {
                continue;
            };
            let from: u64 = tx
                .prepare_cached("SELECT through FROM __lm_collected WHERE actor = ?1")?
                .query_row([idx as i64], |r| r.get::<_, i64>(0))
                .optional()?
                .unwrap_or(0)
                .max(0) as u64;
            if to <= from {
                continue;
            }
            let chunks: Vec<(i64, i64, Vec<u8>)> = tx
                .prepare_cached(
                    "SELECT version, seq, entries FROM __lm_log \
                     WHERE actor = ?1 AND version > ?2 AND version <= ?3 ORDER BY version, seq",
                )?
                .query_map((idx as i64, from as i64, to as i64), |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?
                .collect::<rusqlite::Result<_>>()?;
            let mut through = to;
            let mut last_version = None;
            for (version, seq, blob) in chunks {
                if out.chunks_scanned >= budget && last_version != Some(version) {
                    through = (version as u64).saturating_sub(1);
                    out.more = true;
                    break;
                }
                last_version = Some(version);
                out.chunks_scanned += 1;
                let entries = decode_entries(&blob, seq as u64)?;
                let before = entries.len();
                let mut kept = Vec::with_capacity(before);
                for le in entries {
                    let Some(t) = by_id.get(&le.tbl) else {
                        kept.push(le);
                        continue;
                    };
                    let pk = decode_pk(&le.pk)
                        .ok_or_else(|| StorageError::Corrupt("change log key".into()))?;
                    let entry = EntryRef {
                        actor: idx,
                        version: version as u64,
                        seq: le.seq,
                    };
                    let clock = crate::merge::load_clock(&tx, t, &pk)?;
                    match clock {
                        Some(c) if c.cl % 2 == 0 && c.owner == entry => {
                            tx.prepare_cached(&t.sql.delete_clock)?
                                .execute(params_from_iter(pk.iter()))?;
                            let f = floors.entry(t.name.clone()).or_default();
                            *f = (*f).max(c.cl);
                            out.tombstones += 1;
                        }
                        // Still owns the row's life or a cell: kept.
                        Some(c) if c.owned_by(entry, t.cols.len() as u32) => kept.push(le),
                        // Owns nothing any more (overwritten, or its row
                        // deleted since): compaction's job, done on the way.
                        _ => out.dead_entries += 1,
                    }
                }
                if kept.len() < before {
                    tx.prepare_cached(
                        "DELETE FROM __lm_log WHERE actor = ?1 AND version = ?2 AND seq = ?3",
                    )?
                    .execute((idx as i64, version, seq))?;
                    if !kept.is_empty() {
                        write_chunks(&tx, idx, version as u64, &kept)?;
                    }
                }
            }
            if through > from {
                tx.prepare_cached(
                    "INSERT INTO __lm_collected(actor, through) VALUES (?1, ?2) \
                     ON CONFLICT(actor) DO UPDATE SET through = max(through, excluded.through)",
                )?
                .execute((idx as i64, through as i64))?;
            }
            if out.more {
                break;
            }
        }
        for (name, cl) in &floors {
            raise_floor(&tx, &self.tables, name, *cl)?;
        }
        tx.commit()?;
        Ok(out)
    }

    /// Why this file cannot catch up incrementally any more, if a peer said
    /// so (it lacks versions whose tombstones the peer collected): kept in
    /// the file so that a restart does not forget it. Only a new file
    /// clears it.
    pub fn needs_snapshot(&self) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row("SELECT reason FROM __lm_stale WHERE id = 0", [], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Records that this file cannot catch up incrementally, why, and what
    /// its snapshot must cover: `need`, per actor the versions `1..=n` a
    /// peer collected (merged with what was recorded before). The first
    /// call also records what the file holds now: the versions its rows
    /// reflect (it serves listings with that much as their base while it
    /// is stale, see `snapshot`).
    pub fn set_needs_snapshot(
        &mut self,
        reason: &str,
        need: &BTreeMap<ActorId, u64>,
    ) -> Result<()> {
        let knowledge = self.knowledge()?;
        let tx = self.conn.unchecked_transaction()?;
        let was = crate::snapshot::stale_row(&tx)?;
        tx.execute(
            "INSERT OR REPLACE INTO __lm_stale(id, reason) VALUES (0, ?1)",
            [reason],
        )?;
        let (mut merged, frozen) = match was {
            Some((need, frozen)) => (need, frozen),
            None => {
                // Newly stale: a listing starts from the beginning, whatever
                // an earlier one left behind.
                tx.execute("DELETE FROM __lm_snapshot", [])?;
                (BTreeMap::new(), knowledge)
            }
        };
        for (a, c) in need {
            let e = merged.entry(*a).or_insert(0);
            *e = (*e).max(*c);
        }
        crate::snapshot::write_stale_row(&tx, &merged, &frozen)?;
        tx.commit()?;
        Ok(())
    }

    /// Gives at most `max_pages` free pages back to the file system (files
    /// made since incremental auto-vacuum: the pages collection and the log
    /// sweep free; older files keep them for reuse). Returns the pages
    /// given back.
    pub fn reclaim(&mut self, max_pages: u64) -> Result<u64> {
        let mode: i64 = self
            .conn
            .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))?;
        if mode != 2 {
            return Ok(0);
        }
        let free = |c: &rusqlite::Connection| -> Result<i64> {
            Ok(c.query_row("PRAGMA freelist_count", [], |r| r.get(0))?)
        };
        let before = free(&self.conn)?;
        if before == 0 {
            return Ok(0);
        }
        let n = max_pages.min(i64::MAX as u64);
        // The pragma frees a page per step: stepped to the end.
        let mut stmt = self
            .conn
            .prepare(&format!("PRAGMA incremental_vacuum({n})"))?;
        let mut rows = stmt.query([])?;
        while rows.next()?.is_some() {}
        Ok((before - free(&self.conn)?).max(0) as u64)
    }

    /// The highest id of a change-log chunk (chunks get increasing ids):
    /// how fast the log grows, to size the background sweep by.
    pub fn log_high_water(&self) -> Result<i64> {
        Ok(self
            .conn
            .query_row("SELECT coalesce(max(id), 0) FROM __lm_log", [], |r| {
                r.get(0)
            })?)
    }

    /// Whether changes wait to be applied (parked for an unknown table or
    /// column, or quarantined): collection waits for them.
    pub fn has_pending_changes(&self) -> Result<bool> {
        Ok(self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM __lm_parked) OR EXISTS (SELECT 1 FROM __lm_quarantine)",
            [],
            |r| r.get(0),
        )?)
    }
}

/// Raises `name`'s floor to `cl`. A table's first floor makes its capture
/// triggers again, so that they read it (tables without one do not pay for
/// the lookup).
fn raise_floor(
    conn: &rusqlite::Connection,
    tables: &std::collections::HashMap<String, std::sync::Arc<crate::schema::TableMeta>>,
    name: &str,
    cl: u64,
) -> Result<()> {
    let first: bool = conn
        .prepare_cached("SELECT NOT EXISTS (SELECT 1 FROM __lm_floor WHERE name = ?1)")?
        .query_row([name], |r| r.get(0))?;
    conn.prepare_cached(
        "INSERT INTO __lm_floor(name, cl) VALUES (?1, ?2) \
         ON CONFLICT(name) DO UPDATE SET cl = max(cl, excluded.cl)",
    )?
    .execute((name, cl.min(i64::MAX as u64) as i64))?;
    if first && let Some(t) = tables.get(name) {
        crate::schema::create_triggers(conn, t)?;
    }
    Ok(())
}
