//! Snapshot catch-up: how a node that lacks versions its peers collected
//! (it was away longer than they waited for it) becomes whole again, keeping
//! the writes it made meanwhile.
//!
//! Incremental sync brings such a node every version it lacks — versions
//! whose tombstones were collected come as *cleared* — but not the deletes
//! themselves: a row deleted elsewhere while it was away, whose tombstone
//! is gone, would stay on it. So a snapshot answer adds, after the batches
//! and from the same read, the **keys of every row the responder holds
//! alive**, table by table, in key ranges ([`KeyChunk`]), with the
//! responder's knowledge at that read. For each range the catching-up node
//! looks at the rows it holds alive there and the responder does not list
//! ([`Store::prune_absent`]):
//!
//! - the responder holds a version that wrote the row's current life (the
//!   write that started it, or any of its cells): it merged that life and no
//!   longer has the row, so the row was deleted there at a later life —
//!   exactly what incremental sync would have delivered, had the tombstone
//!   not been collected. The row goes (no tombstone is kept: the floors,
//!   raised to the responder's, cover it).
//! - it holds none of them: the life is news to the responder (a write this
//!   node made while away, or one that has not reached the responder yet):
//!   the row stays. If every such write is this node's own and the row's
//!   causal length is at or under the table's floor, a delete collected
//!   elsewhere could still beat it on nodes that hold the tombstone and not
//!   on those that dropped it, so the row is written again as a new local
//!   write, above the floor (`rebased`): every node ends with it.
//!
//! Each range is decided on its own, with the knowledge read with it, so a
//! listing may stop anywhere and resume (from a cursor kept in the file),
//! from the same peer or another.
//!
//! Why a held version proves the responder saw the life: a version held
//! with data was merged; one held as *cleared* was cleared by a node whose
//! state had overwritten or deleted all of it — and cleared ranges come last
//! in an answer, after every batch of the same read, so the node that took
//! them took that state too.

use std::collections::{BTreeSet, HashSet};

use rusqlite::{OptionalExtension, params_from_iter, types::ValueRef};

use crate::error::{Result, StorageError};
use crate::extract::ExtractStats;
use crate::schema::{TableMeta, q};
use crate::store::{Store, read_knowledge};
use crate::value::{decode_pk, encode_pk};
use litemesh_proto::{ChangeBatch, Entitlement, KeyChunk, Knowledge, SnapshotCursor, Value};

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
}

/// Keys per chunk of a listing.
const CHUNK_KEYS: usize = 2048;
/// Bytes of keys per chunk.
const CHUNK_BYTES: usize = 256 * 1024;

impl Store {
    /// A snapshot answer for a requester holding `theirs` (entitled to
    /// `requester`; `None`: everything), listing keys from `from`: the
    /// batches it lacks (as [`Store::changes_for`]), then, from the same
    /// read, [`SnapshotFrame::Base`] and the key chunks. `sink` returns
    /// `false` to stop (the requester resumes from its cursor).
    ///
    /// Refused ([`StorageError::SnapshotUnavailable`], before any frame)
    /// while changes wait to be applied here (the listing would miss their
    /// rows), or when the requester may hold a table this node may not.
    pub fn snapshot_for(
        &self,
        theirs: &Knowledge,
        requester: Option<&Entitlement>,
        from: &SnapshotCursor,
        max_bytes: usize,
        mut sink: impl FnMut(SnapshotFrame) -> Result<bool>,
    ) -> Result<ExtractStats> {
        let tx = self.conn.unchecked_transaction()?;
        if self.has_pending_changes()? {
            return Err(StorageError::SnapshotUnavailable(
                "changes wait to be applied on this node".into(),
            ));
        }
        let mut tables: Vec<&TableMeta> = self
            .tables
            .values()
            .map(|t| t.as_ref())
            .filter(|t| requester.is_none_or(|e| self.placement.may_hold(e, &t.name)))
            .collect();
        tables.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(t) = tables
            .iter()
            .find(|t| !self.placement.may_hold(&self.entitlement, &t.name))
        {
            return Err(StorageError::SnapshotUnavailable(format!(
                "this node does not hold table {:?}",
                t.name
            )));
        }
        let ours = read_knowledge(&self.conn, &self.actors, self.local)?;
        let stats = self.extract_in(&ours, theirs, requester, max_bytes, &mut |b| {
            sink(SnapshotFrame::Batch(b))
        })?;
        if stats.stopped {
            return Ok(stats);
        }
        if !sink(SnapshotFrame::Base(ours))? {
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
                let (keys, bytes, more) =
                    list_keys(&self.conn, t, after.as_deref(), None, CHUNK_KEYS)?;
                let end = !more;
                let through = if end { None } else { keys.last().cloned() };
                let chunk = KeyChunk {
                    table: t.name.clone(),
                    after: after.as_deref().map(encode_values),
                    through: through.as_deref().map(encode_values),
                    keys: bytes.into_iter().map(serde_bytes::ByteBuf::from).collect(),
                    floor,
                    last: end && i + 1 == n,
                };
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
    /// (see the [module documentation](self)): drops the rows the peer
    /// deleted, writes again above the floor the rows of this node's own
    /// the peer has not seen and a collected delete could beat, and records
    /// how far the listing got. The chunk that ends the listing clears the
    /// file's "needs a snapshot" mark. `theirs`: the peer's knowledge from
    /// the same answer's [`SnapshotFrame::Base`].
    pub fn prune_absent(&mut self, chunk: &KeyChunk, theirs: &Knowledge) -> Result<Pruned> {
        let mut out = Pruned::default();
        let t = if chunk.table.is_empty() {
            None
        } else {
            self.raise_floors(&[(chunk.table.clone(), chunk.floor)].into())?;
            self.table(&chunk.table).cloned()
        };
        let mut drop: Vec<Vec<Value>> = Vec::new();
        let mut rebase: Vec<Vec<Value>> = Vec::new();
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
            let after = dec(&chunk.after)?;
            let through = dec(&chunk.through)?;
            let listed: HashSet<&[u8]> = chunk.keys.iter().map(|k| k.as_slice()).collect();
            let floor = self.floors()?.get(&t.name).copied().unwrap_or(0);
            let owned: BTreeSet<u64> = self
                .conn
                .prepare_cached("SELECT actor FROM __lm_owned")?
                .query_map([], |r| r.get::<_, i64>(0))?
                .map(|r| r.map(|a| a as u64))
                .collect::<rusqlite::Result<_>>()?;
            let (keys, bytes, _) = list_keys(
                &self.conn,
                t,
                after.as_deref(),
                through.as_deref(),
                usize::MAX,
            )?;
            out.checked = keys.len() as u64;
            for (pk, enc) in keys.into_iter().zip(bytes) {
                if listed.contains(enc.as_slice()) {
                    continue;
                }
                let Some(clock) = crate::merge::load_clock(&self.conn, t, &pk)? else {
                    // A row without a clock is not replicated state.
                    continue;
                };
                let mut life: Vec<crate::clock::EntryRef> = vec![clock.owner];
                life.extend(
                    (0..t.cols.len() as u32).filter_map(|c| clock.cell(c).map(|x| x.entry)),
                );
                let seen = life.iter().any(|e| {
                    self.actors
                        .get(e.actor as usize)
                        .is_some_and(|a| theirs.contains(a, e.version))
                });
                if seen {
                    drop.push(pk);
                } else if clock.cl <= floor && life.iter().all(|e| owned.contains(&e.actor)) {
                    rebase.push(pk);
                } else {
                    out.kept += 1;
                }
            }
        }
        if !rebase.is_empty()
            && let Some(t) = &t
        {
            out.rebased = self.rebase_rows(t, &rebase)?;
            out.tables_changed.insert(t.name.clone());
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
        let m = crate::merge::Merging::enter(self)?;
        let tx = m.conn.unchecked_transaction()?;
        if let Some(t) = &t {
            for pk in &drop {
                tx.prepare_cached(&t.sql.delete_row)?
                    .execute(params_from_iter(pk.iter()))?;
                tx.prepare_cached(&t.sql.delete_clock)?
                    .execute(params_from_iter(pk.iter()))?;
            }
            if !drop.is_empty() {
                out.dropped = drop.len() as u64;
                out.tables_changed.insert(t.name.clone());
            }
        }
        if chunk.last {
            tx.execute("DELETE FROM __lm_snapshot", [])?;
            tx.execute("DELETE FROM __lm_stale", [])?;
            out.complete = true;
        } else {
            tx.execute(
                "INSERT OR REPLACE INTO __lm_snapshot(id, tbl, after, past) VALUES (0, ?1, ?2, ?3)",
                (&out.cursor.table, &out.cursor.after, out.cursor.past),
            )?;
        }
        tx.commit()?;
        Ok(out)
    }

    /// Writes rows again, unchanged, as one new local transaction: each is
    /// deleted and inserted, so its new life starts above the table's floor
    /// (the capture puts it there) with every cell this node's.
    fn rebase_rows(&mut self, t: &TableMeta, pks: &[Vec<Value>]) -> Result<u64> {
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
            Ok(count)
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

/// Keys, decoded and encoded, and whether more may follow.
type Keys = (Vec<Vec<Value>>, Vec<Vec<u8>>, bool);

/// The keys of the rows of `t` alive here in `(after, through]`, in key
/// order: with a `limit`, at most that many and about [`CHUNK_BYTES`].
fn list_keys(
    conn: &rusqlite::Connection,
    t: &TableMeta,
    after: Option<&[Value]>,
    through: Option<&[Value]>,
    limit: usize,
) -> Result<Keys> {
    let cols: Vec<String> = t.pk.iter().map(|c| q(c)).collect();
    let tuple = format!("({})", cols.join(", "));
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
        cols.join(", "),
        q(&t.name),
        if conds.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conds.join(" AND "))
        },
        cols.join(", "),
        limit.min(i64::MAX as usize)
    );
    let limit = if limit == usize::MAX {
        usize::MAX
    } else {
        limit
    };
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(params_from_iter(args))?;
    let mut keys = Vec::new();
    let mut encoded = Vec::new();
    let mut bytes = 0;
    while let Some(r) = rows.next()? {
        let refs: Vec<ValueRef<'_>> = (0..n)
            .map(|i| r.get_ref(i))
            .collect::<rusqlite::Result<_>>()?;
        let enc = encode_pk(&refs);
        bytes += enc.len();
        keys.push(refs.iter().map(|v| Value::from_ref(*v)).collect());
        encoded.push(enc);
        if limit != usize::MAX && (bytes >= CHUNK_BYTES || keys.len() >= limit) {
            return Ok((keys, encoded, true));
        }
    }
    Ok((keys, encoded, false))
}
