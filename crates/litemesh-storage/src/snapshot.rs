//! Snapshot catch-up: how a node that lacks versions its peers collected
//! (it was away longer than they waited for it) becomes whole again, keeping
//! the writes it made meanwhile.
//!
//! Incremental sync brings such a node every version it lacks — versions
//! whose tombstones were collected come as *cleared* — but not the deletes
//! themselves: a row deleted elsewhere while it was away, whose tombstone
//! is gone, would stay on it. So a snapshot answer adds, after the batches
//! and from the same read, a **listing of the responder's clock table**,
//! table by table, in key ranges ([`KeyChunk`]): the keys of the rows it
//! holds alive, and of those it deleted whose tombstones are not collected
//! yet (with their causal lengths), with the responder's knowledge at that
//! read (the *base*). For each range the catching-up node looks at the
//! rows it holds alive there and the responder does not
//! ([`Store::prune_absent`]):
//!
//! - the responder holds a tombstone of the row at a later life, or holds a
//!   version that wrote the row's current life (the write that started it,
//!   or any of its cells) and no longer has the row: it was deleted there
//!   at a later life — what incremental sync would have delivered, had the
//!   tombstone not been collected. The row is deleted here, by an ordinary
//!   local delete (replicated like any: a node that kept the same life,
//!   deciding with a clock that named other writes of it, learns of the
//!   delete too).
//! - it holds none of them: the life is news to the responder (a write this
//!   node made while away, or one that has not reached the responder yet):
//!   the row stays. If every such write is this node's own and the row's
//!   causal length is at or under the table's floor, a delete collected
//!   elsewhere could still beat it on nodes that hold the tombstone and not
//!   on those that dropped it, so the row is written again as a new local
//!   write, above the floor (`rebased`): every node ends with it.
//!
//! Each range is decided on its own, with the base read with it, so a
//! listing may stop anywhere and resume (from a cursor kept in the file),
//! from the same peer or another. A completed listing records its bases'
//! intersection as *checked* ([`Store::checked`]): versions whose deletes
//! this file's rows reflect although it may lack them. The file stays
//! stale until what it holds and checked covers every version its peers
//! said they collected (`need`); a listing from peers lacking some is
//! done again.
//!
//! Both sides of a long partition collect what the other lacks, so each
//! needs the other's listing: a node that is stale itself answers a
//! snapshot request with its listing only (its writes may touch rows
//! deleted on the other side, and wait until it is checked), and its base
//! is only what its rows reflect — what it held when it learned it was
//! stale, and what it has checked since.
//!
//! Why a held version proves the responder saw the life: a version held
//! with data was merged; one held as *cleared* was cleared by a node whose
//! state had overwritten or deleted all of it — and cleared ranges come last
//! in an answer, after every batch of the same read, so the node that took
//! them took that state too.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use rusqlite::{OptionalExtension, params_from_iter, types::ValueRef};

use crate::error::{Result, StorageError};
use crate::extract::ExtractStats;
use crate::schema::{TableMeta, q};
use crate::store::{Store, read_knowledge};
use crate::value::{decode_pk, encode_pk};
use litemesh_proto::{
    ActorId, ChangeBatch, Entitlement, KeyChunk, Knowledge, SnapshotCursor, Value,
};

/// One frame of a snapshot answer, in order: batches, then the base, then
/// key chunks.
#[derive(Debug, Clone)]
pub enum SnapshotFrame {
    /// A batch of changes the requester lacks.
    Batch(ChangeBatch),
    /// What this node held at the read the listing comes from.
    Base(Knowledge),
    /// Keys of one range of one table.
    Keys(KeyChunk),
}

/// What [`Store::prune_absent`] did with one range.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Rows held here alive that the peer had deleted: removed.
    pub dropped: u64,
    /// Rows written here that the peer has not seen, at or under a floor:
    /// written again above it as new local writes.
    pub rebased: u64,
    /// Rows the peer has not seen, kept as they are.
    pub kept: u64,
    /// Keys of the range checked here.
    pub checked: u64,
    /// The listing is complete: the file no longer needs a snapshot.
    pub complete: bool,
    /// Where the next answer's listing starts.
    pub cursor: SnapshotCursor,
    /// Tables whose content changed.
    pub tables_changed: BTreeSet<String>,
    /// With the last range: the versions whose deletes this file's rows
    /// are now checked against ([`Store::checked`]).
    pub now_checked: Option<Knowledge>,
}

/// Keys per chunk of a listing.
const CHUNK_KEYS: usize = 2048;
/// Bytes of keys per chunk.
const CHUNK_BYTES: usize = 256 * 1024;
/// Rows of a range checked (and rewritten) per transaction here.
const PRUNE_BATCH: usize = 4096;

impl Store {
    /// A snapshot answer for a requester holding `theirs` (entitled to
    /// `requester`; `None`: everything), listing keys from `from`: the
    /// batches it lacks (as [`Store::changes_for`]), then, from the same
    /// read, [`SnapshotFrame::Base`] and the key chunks. `sink` returns
    /// `false` to stop (the requester resumes from its cursor).
    ///
    /// Refused ([`StorageError::SnapshotUnavailable`], before any frame)
    /// while changes wait to be applied here (the listing would miss their
    /// rows). Tables the requester may hold and this node may not are not
    /// listed, and the versions held here without their rows are left out
    /// of the base.
    ///
    /// `listing_only`: no batches (this node needs a snapshot itself: its
    /// writes may include some to rows deleted elsewhere, not to be sent
    /// before it has been checked). The base of a node that needs a
    /// snapshot is only what its rows reflect: what it held when it learned
    /// it was stale, and what it has checked since.
    pub fn snapshot_for(
        &self,
        theirs: &Knowledge,
        requester: Option<&Entitlement>,
        from: &SnapshotCursor,
        listing_only: bool,
        max_bytes: usize,
        mut sink: impl FnMut(SnapshotFrame) -> Result<bool>,
    ) -> Result<ExtractStats> {
        let tx = self.conn.unchecked_transaction()?;
        if self.has_pending_changes()? {
            return Err(StorageError::SnapshotUnavailable(
                "changes wait to be applied on this node".into(),
            ));
        }
        // The tables both may hold: the others are not listed, and the
        // versions held here without rows of a table the requester may hold
        // are left out of the base below (the requester learns nothing of
        // their deletes from this listing).
        let mut tables: Vec<&TableMeta> = self
            .tables
            .values()
            .map(|t| t.as_ref())
            .filter(|t| requester.is_none_or(|e| self.placement.may_hold(e, &t.name)))
            .filter(|t| self.placement.may_hold(&self.entitlement, &t.name))
            .collect();
        tables.sort_by(|a, b| a.name.cmp(&b.name));
        let ours = read_knowledge(&self.conn, &self.actors, self.local)?;
        let stats = if listing_only {
            ExtractStats::default()
        } else {
            self.extract_in(&ours, theirs, requester, max_bytes, &mut |b| {
                sink(SnapshotFrame::Batch(b))
            })?
        };
        if stats.stopped {
            return Ok(stats);
        }
        let mut base = match stale_row(&self.conn)? {
            Some((_, frozen)) => {
                let mut reflected = frozen;
                reflected.union_with(&read_checked(&self.conn)?);
                ours.intersection(&reflected)
            }
            None => ours,
        };
        {
            let mut stmt = self
                .conn
                .prepare_cached("SELECT actor, version, tables FROM __lm_withheld")?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let (a, v, t): (i64, i64, String) = (r.get(0)?, r.get(1)?, r.get(2)?);
                let theirs_too = t.split('\u{1f}').any(|name| {
                    !name.is_empty() && requester.is_none_or(|e| self.placement.may_hold(e, name))
                });
                if let (true, Some(actor)) = (theirs_too, self.actors.get(a as usize))
                    && let Some(r) = base.have.get_mut(actor)
                {
                    *r = r.difference(&litemesh_proto::RangeSet::from_ranges([(
                        v as u64, v as u64,
                    )]));
                }
            }
        }
        if !sink(SnapshotFrame::Base(base))? {
            return Ok(stats);
        }
        let floors = self.floors()?;
        let todo: Vec<&TableMeta> = tables
            .into_iter()
            .filter(|t| t.name.as_str() >= from.table.as_str())
            .collect();
        if todo.is_empty() {
            sink(SnapshotFrame::Keys(KeyChunk {
                last: true,
                ..KeyChunk::default()
            }))?;
            return Ok(stats);
        }
        let n = todo.len();
        for (i, t) in todo.into_iter().enumerate() {
            let mut after =
                if t.name == from.table {
                    if from.past {
                        if i + 1 == n {
                            sink(SnapshotFrame::Keys(KeyChunk {
                                last: true,
                                ..KeyChunk::default()
                            }))?;
                        }
                        continue;
                    }
                    match &from.after {
                        Some(a) => {
                            Some(decode_pk(a).filter(|k| k.len() == t.pk.len()).ok_or_else(
                                || StorageError::Decode("a snapshot cursor's key".into()),
                            )?)
                        }
                        None => None,
                    }
                } else {
                    None
                };
            let floor = floors.get(&t.name).copied().unwrap_or(0);
            loop {
                let (keys, more) = list_keys(&self.conn, t, after.as_deref(), None, CHUNK_KEYS)?;
                let end = !more;
                let through = if end {
                    None
                } else {
                    keys.last().map(|k| k.pk.clone())
                };
                let mut chunk = KeyChunk {
                    table: t.name.clone(),
                    after: after.as_deref().map(encode_values),
                    through: through.as_deref().map(encode_values),
                    floor,
                    last: end && i + 1 == n,
                    ..KeyChunk::default()
                };
                for k in keys {
                    if k.cl % 2 == 1 {
                        chunk.keys.push(k.encoded.into());
                    } else {
                        chunk.dead.push((k.encoded.into(), k.cl));
                    }
                }
                if !sink(SnapshotFrame::Keys(chunk))? {
                    return Ok(stats);
                }
                if end {
                    break;
                }
                after = through;
            }
        }
        drop(tx);
        Ok(stats)
    }

    /// The versions whose deletes this file's rows have been checked
    /// against by a completed snapshot listing (it may lack some of them:
    /// the rows they deleted were dropped instead).
    pub fn checked(&self) -> Result<Knowledge> {
        read_checked(&self.conn)
    }

    /// What this file's snapshot must cover, while it needs one: per actor,
    /// the versions `1..=n` peers collected that it lacked.
    pub fn snapshot_need(&self) -> Result<BTreeMap<ActorId, u64>> {
        Ok(stale_row(&self.conn)?.map(|(n, _)| n).unwrap_or_default())
    }

    /// Where this file's snapshot listing resumes, while it needs one.
    pub fn snapshot_cursor(&self) -> Result<SnapshotCursor> {
        Ok(self
            .conn
            .query_row(
                "SELECT tbl, after, past FROM __lm_snapshot WHERE id = 0",
                [],
                |r| {
                    Ok(SnapshotCursor {
                        table: r.get(0)?,
                        after: r.get(1)?,
                        past: r.get(2)?,
                    })
                },
            )
            .optional()?
            .unwrap_or_default())
    }

    /// Checks one range of a peer's listing against the rows held here
    /// (see the [module documentation](self)): deletes the rows the peer
    /// deleted, writes again above the floor the rows the peer has not seen
    /// that a collected delete could beat, and records how far the listing
    /// got. Ranges must come in order, each starting where the last one
    /// checked here ended (else [`StorageError::SnapshotOutOfOrder`], and
    /// nothing is done: the listing resumes from the stored cursor). The
    /// range that ends the listing clears the file's "needs a snapshot"
    /// mark if what it holds and checked covers `need` (merged with what
    /// the file recorded) — and only if every table it holds was listed.
    /// `theirs`: the peer's base, from the same answer.
    pub fn prune_absent(
        &mut self,
        chunk: &KeyChunk,
        theirs: &Knowledge,
        need: &BTreeMap<ActorId, u64>,
    ) -> Result<Pruned> {
        let mut out = Pruned::default();
        // In order: where the last range checked here ended.
        let (cursor, partial) = self.listing_state()?;
        let mine: Vec<String> = {
            let mut v: Vec<String> = self
                .tables
                .keys()
                .filter(|t| self.placement.may_hold(&self.entitlement, t))
                .cloned()
                .collect();
            v.sort();
            v
        };
        let mut skipped = false;
        match &chunk.after {
            Some(_) => {
                if chunk.table != cursor.table || chunk.after != cursor.after || cursor.past {
                    return Err(StorageError::SnapshotOutOfOrder);
                }
            }
            None => {
                let end = if chunk.table.is_empty() {
                    None
                } else {
                    Some(chunk.table.as_str())
                };
                if cursor.after.is_some() && !cursor.past {
                    // A table left in the middle: only a peer that lists
                    // the next tables may go on from here (it does not hold
                    // the rest of this one, which stays unchecked).
                    if end.is_some_and(|e| e <= cursor.table.as_str()) {
                        return Err(StorageError::SnapshotOutOfOrder);
                    }
                    skipped = true;
                }
                // Tables of this node the listing went past unlisted (the
                // peer does not hold them): their rows are not checked.
                skipped |= mine.iter().any(|t| {
                    let after_cursor = if cursor.past {
                        t.as_str() > cursor.table.as_str()
                    } else {
                        t.as_str() >= cursor.table.as_str()
                    };
                    after_cursor && end.is_none_or(|e| t.as_str() < e)
                });
                if end.is_some_and(|e| {
                    e < cursor.table.as_str() || (cursor.past && e == cursor.table.as_str())
                }) {
                    return Err(StorageError::SnapshotOutOfOrder);
                }
            }
        }
        // The listing ends here: tables of this node after its last one
        // were not listed either.
        if chunk.last && !chunk.table.is_empty() {
            skipped |= mine.iter().any(|t| t.as_str() > chunk.table.as_str());
        }
        let t = if chunk.table.is_empty() {
            None
        } else {
            self.raise_floors(&[(chunk.table.clone(), chunk.floor)].into())?;
            self.table(&chunk.table).cloned()
        };
        if let Some(t) = &t {
            let dec = |b: &Option<Vec<u8>>| -> Result<Option<Vec<Value>>> {
                match b {
                    None => Ok(None),
                    Some(b) => decode_pk(b)
                        .filter(|k| k.len() == t.pk.len())
                        .map(Some)
                        .ok_or_else(|| StorageError::Decode("a snapshot chunk's range".into())),
                }
            };
            let mut after = dec(&chunk.after)?;
            let through = dec(&chunk.through)?;
            let listed: HashSet<&[u8]> = chunk.keys.iter().map(|k| k.as_slice()).collect();
            let dead: HashMap<&[u8], u64> = chunk
                .dead
                .iter()
                .map(|(k, cl)| (k.as_slice(), *cl))
                .collect();
            let floor = self.floors()?.get(&t.name).copied().unwrap_or(0);
            // This node's rows of the range, a bounded batch at a time (the
            // last range of a table is open-ended here).
            loop {
                let (keys, more) = list_keys(
                    &self.conn,
                    t,
                    after.as_deref(),
                    through.as_deref(),
                    PRUNE_BATCH,
                )?;
                let mut drop: Vec<Vec<Value>> = Vec::new();
                let mut rebase: Vec<Vec<Value>> = Vec::new();
                let last_key = keys.last().map(|k| k.pk.clone());
                for k in keys {
                    if k.cl % 2 == 0 {
                        continue; // A tombstone here: nothing to bring back.
                    }
                    out.checked += 1;
                    if listed.contains(k.encoded.as_slice()) {
                        continue;
                    }
                    // Deleted there at a later life, not collected yet: the
                    // delete wins, as it will when it arrives.
                    if dead
                        .get(k.encoded.as_slice())
                        .is_some_and(|cl| *cl > k.clock.cl)
                    {
                        drop.push(k.pk);
                        continue;
                    }
                    let clock = k.clock;
                    let life = clock.life_entries(t.cols.len() as u32);
                    let seen = life.iter().any(|e| {
                        self.actors
                            .get(e.actor as usize)
                            .is_some_and(|a| theirs.contains(a, e.version))
                    });
                    if seen {
                        drop.push(k.pk);
                    } else if clock.cl <= floor {
                        // News to the peer, but a delete collected elsewhere
                        // may beat it where its tombstone is still held:
                        // written again above the floor (whoever wrote it).
                        rebase.push(k.pk);
                    } else {
                        out.kept += 1;
                    }
                }
                if !rebase.is_empty() || !drop.is_empty() {
                    let (dropped, rebased) = self.rewrite_rows(t, &drop, &rebase)?;
                    out.dropped += dropped;
                    out.rebased += rebased;
                    out.tables_changed.insert(t.name.clone());
                }
                if !more {
                    break;
                }
                after = last_key;
            }
        }
        out.cursor = if chunk.last {
            SnapshotCursor::default()
        } else {
            SnapshotCursor {
                table: chunk.table.clone(),
                past: chunk.through.is_none(),
                after: chunk.through.clone(),
            }
        };
        let checked = read_checked(&self.conn)?;
        let m = crate::merge::Merging::enter(self)?;
        let tx = m.conn.unchecked_transaction()?;
        // Every range of one listing checked against a base that holds at
        // least the intersection of them all.
        let prior: Option<Vec<u8>> = tx
            .query_row("SELECT base FROM __lm_snapshot WHERE id = 0", [], |r| {
                r.get(0)
            })
            .optional()?
            .flatten();
        let meet = match prior {
            Some(b) => decode_knowledge(&b)?.intersection(theirs),
            None => theirs.intersection(theirs),
        };
        let partial = partial || skipped;
        // What the snapshot must cover: the file's record and the core's.
        let (mut all_need, frozen) = stale_row(&tx)?.unwrap_or_default();
        for (a, c) in need {
            let e = all_need.entry(*a).or_insert(0);
            *e = (*e).max(*c);
        }
        if chunk.last {
            let mut now_checked = checked;
            // Tables the peer does not hold were not listed; the versions
            // that wrote them are out of its base already (it holds them
            // without their rows: `__lm_withheld`), so the rest counts.
            if partial {
                tracing::info!("a snapshot listing went past tables the peer does not hold");
            }
            now_checked.union_with(&meet);
            tx.execute(
                "INSERT OR REPLACE INTO __lm_checked(id, knowledge) VALUES (0, ?1)",
                [encode_knowledge(&now_checked)?],
            )?;
            // What its rows reflect: what it held when it learned it was
            // stale, and what listings checked since — not what came as
            // cleared meanwhile (the batches of this very snapshot).
            let mut holds = frozen.clone();
            holds.union_with(&now_checked);
            let short: u64 = all_need
                .iter()
                .map(|(a, c)| holds.missing_up_to(a, *c))
                .fold(0u64, u64::saturating_add);
            if short == 0 {
                tx.execute("DELETE FROM __lm_snapshot", [])?;
                tx.execute("DELETE FROM __lm_stale", [])?;
                out.complete = true;
            } else {
                // The listing's sources lacked versions a peer collected,
                // or skipped tables held here: again, from another.
                tracing::info!(
                    short,
                    partial,
                    "a snapshot listing completed without covering {short} collected version(s) \
                     (or without listing every table held here): listing again"
                );
                out.cursor = SnapshotCursor::default();
                write_stale_row(&tx, &all_need, &frozen)?;
                tx.execute(
                    "UPDATE __lm_snapshot SET tbl = '', after = NULL, past = 0, base = NULL, \
                     partial = 0 WHERE id = 0",
                    [],
                )?;
            }
            out.now_checked = Some(now_checked);
        } else {
            write_stale_row(&tx, &all_need, &frozen)?;
            tx.execute(
                "UPDATE __lm_snapshot SET tbl = ?1, after = ?2, past = ?3, base = ?4, \
                 partial = ?5 WHERE id = 0",
                (
                    &out.cursor.table,
                    &out.cursor.after,
                    out.cursor.past,
                    encode_knowledge(&meet)?,
                    partial,
                ),
            )?;
        }
        tx.commit()?;
        Ok(out)
    }

    /// Where the listing stands: the cursor, and whether a table held here
    /// was skipped so far.
    fn listing_state(&self) -> Result<(SnapshotCursor, bool)> {
        Ok(self
            .conn
            .query_row(
                "SELECT tbl, after, past, partial FROM __lm_snapshot WHERE id = 0",
                [],
                |r| {
                    Ok((
                        SnapshotCursor {
                            table: r.get(0)?,
                            after: r.get(1)?,
                            past: r.get(2)?,
                        },
                        r.get(3)?,
                    ))
                },
            )
            .optional()?
            .unwrap_or_default())
    }

    /// One new local transaction: deletes the rows of `drop` (ordinary
    /// deletes, replicated like any: a node that kept the same life of a
    /// row, deciding with a clock that named other writes of it, learns of
    /// the delete too), and writes the rows of `rebase` again, unchanged —
    /// each deleted and inserted, so its new life starts above the table's
    /// floor (the capture puts it there) with every cell this node's.
    fn rewrite_rows(
        &mut self,
        t: &TableMeta,
        drop: &[Vec<Value>],
        pks: &[Vec<Value>],
    ) -> Result<(u64, u64)> {
        let cols: Vec<String> = t.pk.iter().chain(&t.cols).map(|c| q(c)).collect();
        let select = format!(
            "SELECT {} FROM {} WHERE {}",
            cols.join(", "),
            q(&t.name),
            where_pk(t, 0)
        );
        let insert = format!(
            "INSERT INTO {}({}) VALUES ({})",
            q(&t.name),
            cols.join(", "),
            (1..=cols.len())
                .map(|i| format!("?{i}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let delete = t.sql.delete_row.clone();
        let n = cols.len();
        let done = self.transaction(|tx| {
            let mut dropped = 0u64;
            for pk in drop {
                dropped += tx
                    .prepare_cached(&delete)?
                    .execute(params_from_iter(pk.iter()))? as u64;
            }
            let mut count = 0u64;
            for pk in pks {
                let row: Option<Vec<rusqlite::types::Value>> = tx
                    .prepare_cached(&select)?
                    .query_row(params_from_iter(pk.iter()), |r| {
                        (0..n).map(|i| r.get(i)).collect()
                    })
                    .optional()?;
                let Some(row) = row else { continue };
                tx.prepare_cached(&delete)?
                    .execute(params_from_iter(pk.iter()))?;
                tx.prepare_cached(&insert)?
                    .execute(params_from_iter(row.iter()))?;
                count += 1;
            }
            Ok((dropped, count))
        })?;
        Ok(done.value)
    }
}

/// `pk1 = ?n+1 AND pk2 = ?n+2 ..`
fn where_pk(t: &TableMeta, offset: usize) -> String {
    t.pk.iter()
        .enumerate()
        .map(|(i, p)| format!("{} = ?{}", q(p), i + 1 + offset))
        .collect::<Vec<_>>()
        .join(" AND ")
}

fn encode_values(k: &[Value]) -> Vec<u8> {
    let refs: Vec<ValueRef<'_>> = k.iter().map(Value::as_ref).collect();
    encode_pk(&refs)
}

/// One row of a clock table: its key, decoded and encoded, and its clock.
struct Listed {
    pk: Vec<Value>,
    encoded: Vec<u8>,
    cl: u64,
    clock: crate::clock::RowClock,
}

/// The rows of `t`'s clock table — alive and tombstones — in
/// `(after, through]`, in key order: with a `limit`, at most that many and
/// about [`CHUNK_BYTES`]; and whether more may follow. The clock table, not
/// the data table: it is defined alike on every node (key order included)
/// and holds tombstones too.
fn list_keys(
    conn: &rusqlite::Connection,
    t: &TableMeta,
    after: Option<&[Value]>,
    through: Option<&[Value]>,
    limit: usize,
) -> Result<(Vec<Listed>, bool)> {
    let cols: Vec<String> = t.pk.iter().map(|c| q(c)).collect();
    let tuple = format!("({})", cols.join(", "));
    let mut select = cols.clone();
    select.push("__clk".into());
    let n = cols.len();
    let params = |offset: usize| {
        format!(
            "({})",
            (1..=n)
                .map(|i| format!("?{}", i + offset))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let mut conds = Vec::new();
    let mut args: Vec<&Value> = Vec::new();
    if let Some(a) = after {
        conds.push(format!("{tuple} > {}", params(args.len())));
        args.extend(a.iter());
    }
    if let Some(b) = through {
        conds.push(format!("{tuple} <= {}", params(args.len())));
        args.extend(b.iter());
    }
    let sql = format!(
        "SELECT {} FROM {}{} ORDER BY {} LIMIT {}",
        select.join(", "),
        t.clk,
        if conds.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conds.join(" AND "))
        },
        cols.join(", "),
        limit.min(i64::MAX as usize)
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(params_from_iter(args))?;
    let mut out = Vec::new();
    let mut bytes = 0;
    while let Some(r) = rows.next()? {
        let refs: Vec<ValueRef<'_>> = (0..n)
            .map(|i| r.get_ref(i))
            .collect::<rusqlite::Result<_>>()?;
        let encoded = encode_pk(&refs);
        let pk: Vec<Value> = refs.iter().map(|v| Value::from_ref(*v)).collect();
        let blob: Vec<u8> = r.get(n)?;
        let clock = crate::clock::RowClock::decode(&blob)
            .ok_or_else(|| StorageError::Corrupt(format!("row clock in {}", t.name)))?;
        bytes += encoded.len() + 4;
        out.push(Listed {
            pk,
            encoded,
            cl: clock.cl,
            clock,
        });
        if limit != usize::MAX && (bytes >= CHUNK_BYTES || out.len() >= limit) {
            return Ok((out, true));
        }
    }
    Ok((out, false))
}

fn encode_knowledge(k: &Knowledge) -> Result<Vec<u8>> {
    rmp_serde::to_vec(k).map_err(|e| StorageError::Corrupt(format!("knowledge: {e}")))
}

fn decode_knowledge(b: &[u8]) -> Result<Knowledge> {
    rmp_serde::from_slice(b).map_err(|e| StorageError::Corrupt(format!("knowledge: {e}")))
}

fn read_checked(conn: &rusqlite::Connection) -> Result<Knowledge> {
    let b: Option<Vec<u8>> = conn
        .query_row("SELECT knowledge FROM __lm_checked WHERE id = 0", [], |r| {
            r.get(0)
        })
        .optional()?;
    b.map_or(Ok(Knowledge::default()), |b| decode_knowledge(&b))
}

/// What a stale file's snapshot must cover, and what it held when it
/// learned it was stale; `None` when it is not stale.
pub(crate) fn stale_row(
    conn: &rusqlite::Connection,
) -> Result<Option<(BTreeMap<ActorId, u64>, Knowledge)>> {
    type Blobs = (Option<Vec<u8>>, Option<Vec<u8>>);
    let row: Option<Blobs> = conn
        .query_row(
            "SELECT need, frozen FROM __lm_snapshot WHERE id = 0 \
             AND EXISTS (SELECT 1 FROM __lm_stale)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((need, frozen)) = row else {
        return Ok(None);
    };
    let need: BTreeMap<ActorId, u64> = match need {
        Some(b) => rmp_serde::from_slice(&b)
            .map_err(|e| StorageError::Corrupt(format!("snapshot need: {e}")))?,
        None => BTreeMap::new(),
    };
    let frozen = match frozen {
        Some(b) => decode_knowledge(&b)?,
        None => Knowledge::default(),
    };
    Ok(Some((need, frozen)))
}

pub(crate) fn write_stale_row(
    conn: &rusqlite::Connection,
    need: &BTreeMap<ActorId, u64>,
    frozen: &Knowledge,
) -> Result<()> {
    let need = rmp_serde::to_vec(need)
        .map_err(|e| StorageError::Corrupt(format!("snapshot need: {e}")))?;
    conn.execute(
        "INSERT INTO __lm_snapshot(id, tbl, after, past, need, frozen) VALUES (0, '', NULL, 0, ?1, ?2) \
         ON CONFLICT(id) DO UPDATE SET need = excluded.need, frozen = excluded.frozen",
        (need, encode_knowledge(frozen)?),
    )?;
    Ok(())
}
