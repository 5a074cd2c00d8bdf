//! Extracting the changes a peer lacks.

use std::collections::BTreeMap;

use rusqlite::params_from_iter;

use crate::clock::EntryRef;
use crate::commute::ColKind;
use crate::error::{Result, StorageError};
use crate::log::{LogEntry, decode_entries};
use crate::schema::TableMeta;
use crate::store::{Store, read_knowledge};
use crate::value::decode_pk;
use litemesh_proto::RangeSet;
use litemesh_proto::Value;
use litemesh_proto::{
    ActorId, CellChange, CellKind, ChangeBatch, Cleared, Entitlement, Knowledge, Placement,
    RowChange, SeqRange, VersionChanges,
};

/// What one call to [`Store::changes_since`] produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtractStats {
    /// Batches handed to the sink.
    pub batches: usize,
    /// Versions (or chunks) with data.
    pub versions: usize,
    /// Row changes.
    pub rows: usize,
    /// Cells.
    pub cells: usize,
    /// Versions reported as cleared.
    pub cleared_versions: u64,
    /// Whether the sink stopped the extraction early.
    pub stopped: bool,
    /// Versions left out because their change log cannot be read (damaged
    /// metadata, or a key an earlier version wrote that cannot be decoded):
    /// neither sent nor reported cleared, so the peer's gap stays visible.
    pub unreadable_versions: u64,
    /// Versions left out because this node holds them without rows of a
    /// table the requester may hold (placement): sending them would pass
    /// for complete what is not; the requester gets them from a node that
    /// holds them whole.
    pub incomplete_versions: u64,
}

/// What the requester holds of a version in part (entry ranges), and the
/// tables withheld from versions this node holds.
type Held<'a> = (
    Option<&'a BTreeMap<u64, RangeSet>>,
    &'a BTreeMap<u64, Vec<String>>,
);

struct Out<'s> {
    /// Placement and the requester's entitlement, when rows are filtered.
    filter: Option<(&'s Placement, &'s Entitlement)>,
    max_bytes: usize,
    cur: ChangeBatch,
    size: usize,
    sink: &'s mut dyn FnMut(ChangeBatch) -> Result<bool>,
    stats: ExtractStats,
    /// Cleared ranges, sent after every batch with data.
    cleared: Vec<Cleared>,
}

impl Out<'_> {
    fn flush(&mut self) -> Result<()> {
        if self.cur.is_empty() || self.stats.stopped {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.cur);
        self.size = 0;
        self.stats.batches += 1;
        if !(self.sink)(batch)? {
            self.stats.stopped = true;
        }
        Ok(())
    }

    /// Flushes the batches with data, then the cleared ranges (unless the
    /// sink stopped the answer: they come in a later one).
    fn flush_cleared(&mut self) -> Result<()> {
        self.flush()?;
        for c in std::mem::take(&mut self.cleared) {
            if self.stats.stopped {
                break;
            }
            self.stats.cleared_versions += c.end - c.start + 1;
            self.size += 40;
            self.cur.cleared.push(c);
            if self.size > self.max_bytes {
                self.flush()?;
            }
        }
        self.flush()
    }

    fn push(&mut self, v: VersionChanges, size: usize) {
        self.stats.versions += 1;
        self.stats.rows += v.rows.len();
        self.stats.cells += v.rows.iter().map(|r| r.cells.len()).sum::<usize>();
        self.size += size + 32;
        self.cur.versions.push(v);
    }

    fn emit_version(
        &mut self,
        actor: ActorId,
        version: u64,
        rows: Vec<RowChange>,
        segments: &[(u64, u64)],
        withheld: Vec<String>,
    ) -> Result<()> {
        let sizes: Vec<usize> = rows.iter().map(RowChange::encoded_size).collect();
        let total: usize = sizes.iter().sum();
        let whole = segments == [(0, u64::MAX)];
        if whole && total + 32 <= self.max_bytes {
            if self.size + total + 32 > self.max_bytes {
                self.flush()?;
            }
            self.push(
                VersionChanges {
                    actor,
                    version,
                    chunk: None,
                    rows,
                    withheld,
                },
                total,
            );
            return Ok(());
        }
        // Split into chunks covering `segments`, never cutting between rows of
        // one entry number.
        let mut rows = rows.into_iter().zip(sizes).peekable();
        for &(s, e) in segments {
            let mut start = s;
            let mut chunk: Vec<RowChange> = Vec::new();
            let mut chunk_size = 0;
            while let Some((r, _)) = rows.peek() {
                if r.seq > e {
                    break;
                }
                let (r, sz) = rows.next().expect("peeked");
                let same_seq = chunk.last().is_some_and(|l| l.seq == r.seq);
                if !chunk.is_empty()
                    && !same_seq
                    && self.size + chunk_size + sz + 32 > self.max_bytes
                {
                    let last = chunk.last().expect("non-empty").seq;
                    let full = std::mem::take(&mut chunk);
                    self.push(
                        VersionChanges {
                            actor,
                            version,
                            chunk: Some(SeqRange { start, end: last }),
                            rows: full,
                            withheld: withheld.clone(),
                        },
                        chunk_size,
                    );
                    self.flush()?;
                    if self.stats.stopped {
                        return Ok(());
                    }
                    start = last + 1;
                    chunk_size = 0;
                } else if chunk.is_empty() && self.size > 0 && self.size + sz + 32 > self.max_bytes
                {
                    self.flush()?;
                }
                chunk_size += sz;
                chunk.push(r);
            }
            self.push(
                VersionChanges {
                    actor,
                    version,
                    chunk: Some(SeqRange { start, end: e }),
                    rows: chunk,
                    withheld: withheld.clone(),
                },
                chunk_size,
            );
        }
        Ok(())
    }
}

impl Store {
    /// Streams, in batches of at most about `max_bytes`, exactly the changes that
    /// a peer holding `theirs` lacks: for each actor, the versions this node has
    /// and the peer has not, with their surviving cells, and the versions with
    /// nothing left (every cell overwritten since) as cleared ranges. Versions the
    /// peer holds in part are sent only for the parts it lacks. Runs on one
    /// consistent snapshot. `sink` returns `false` to stop early.
    pub fn changes_since(
        &self,
        theirs: &Knowledge,
        max_bytes: usize,
        sink: impl FnMut(ChangeBatch) -> Result<bool>,
    ) -> Result<ExtractStats> {
        self.changes_for(theirs, None, max_bytes, sink)
    }

    /// [`Store::changes_since`] for a requester entitled to `requester`
    /// (its certified region, the tables it carries; `None`: everything):
    /// rows of tables it may not hold are left out and named in each
    /// version's `withheld`, and versions this node holds without rows the
    /// requester may hold are neither sent nor reported cleared.
    pub fn changes_for(
        &self,
        theirs: &Knowledge,
        requester: Option<&Entitlement>,
        max_bytes: usize,
        mut sink: impl FnMut(ChangeBatch) -> Result<bool>,
    ) -> Result<ExtractStats> {
        let tx = self.conn.unchecked_transaction()?;
        let ours = read_knowledge(&self.conn, &self.actors, self.local)?;
        let stats = self.extract_in(&ours, theirs, requester, max_bytes, &mut sink)?;
        drop(tx);
        Ok(stats)
    }

    /// [`Store::changes_for`] inside a read transaction the caller holds,
    /// `ours` read in it. Cleared ranges come last, after every batch with
    /// data: a requester that holds a version as cleared took, from the
    /// same read, the state that cleared it (`snapshot` relies on it).
    pub(crate) fn extract_in(
        &self,
        ours: &Knowledge,
        theirs: &Knowledge,
        requester: Option<&Entitlement>,
        max_bytes: usize,
        sink: &mut dyn FnMut(ChangeBatch) -> Result<bool>,
    ) -> Result<ExtractStats> {
        let mut out = Out {
            filter: requester.map(|e| (&self.placement, e)),
            max_bytes: max_bytes.max(1024),
            cur: ChangeBatch::default(),
            size: 0,
            sink,
            stats: ExtractStats::default(),
            cleared: Vec::new(),
        };
        for (actor, have) in &ours.have {
            let need = match theirs.have.get(actor) {
                Some(t) => have.difference(t),
                None => have.clone(),
            };
            if need.is_empty() {
                continue;
            }
            let partial = theirs.partial.get(actor);
            self.extract_actor(*actor, &need, partial, &mut out)?;
            if out.stats.stopped {
                break;
            }
        }
        out.flush_cleared()?;
        Ok(out.stats)
    }

    /// Streams the changes of one version of this node's own actor (used to
    /// broadcast a local commit).
    pub fn version_changes(
        &self,
        version: u64,
        max_bytes: usize,
        mut sink: impl FnMut(ChangeBatch) -> Result<bool>,
    ) -> Result<ExtractStats> {
        let tx = self.conn.unchecked_transaction()?;
        let mut out = Out {
            filter: None,
            max_bytes: max_bytes.max(1024),
            cur: ChangeBatch::default(),
            size: 0,
            sink: &mut sink,
            stats: ExtractStats::default(),
            cleared: Vec::new(),
        };
        let mut need = RangeSet::new();
        need.insert(version);
        self.extract_actor(self.actor, &need, None, &mut out)?;
        out.flush_cleared()?;
        drop(tx);
        Ok(out.stats)
    }

    fn extract_actor(
        &self,
        actor: ActorId,
        need: &RangeSet,
        their_partial: Option<&BTreeMap<u64, RangeSet>>,
        out: &mut Out<'_>,
    ) -> Result<()> {
        let a = *self
            .actor_idx
            .get(&actor)
            .ok_or_else(|| StorageError::Corrupt(format!("actor {actor} has no index")))?;
        let by_id: BTreeMap<i64, &TableMeta> =
            self.tables.values().map(|t| (t.id, t.as_ref())).collect();
        let mut with_data = RangeSet::new();
        for &(s, e) in need.ranges() {
            let withheld = crate::placement::withheld_in(&self.conn, a, s, e)?;
            let mut parked: BTreeMap<u64, Vec<RowChange>> = BTreeMap::new();
            {
                let mut stmt = self.conn.prepare_cached(
                    "SELECT version, change FROM __lm_parked WHERE actor = ?1 AND version BETWEEN ?2 AND ?3 ORDER BY version, seq",
                )?;
                let mut rows = stmt.query((a as i64, s as i64, e as i64))?;
                while let Some(r) = rows.next()? {
                    let blob: Vec<u8> = r.get(1)?;
                    let rc: RowChange = rmp_serde::from_slice(&blob)
                        .map_err(|e| StorageError::Corrupt(format!("parked change: {e}")))?;
                    parked
                        .entry(r.get::<_, i64>(0)? as u64)
                        .or_default()
                        .push(rc);
                }
            }
            let mut stmt = self.conn.prepare_cached(
                "SELECT version, entries, seq FROM __lm_log WHERE actor = ?1 AND version BETWEEN ?2 AND ?3 ORDER BY version, seq",
            )?;
            let mut rows = stmt.query((a as i64, s as i64, e as i64))?;
            let mut cur_version: Option<u64> = None;
            let mut cur_rows: Vec<RowChange> = Vec::new();
            // Versions whose log cannot be read are isolated: one damaged
            // version must not stop every other from being served.
            let mut bad = RangeSet::new();
            while let Some(r) = rows.next()? {
                let version = r.get::<_, i64>(0)? as u64;
                if cur_version != Some(version) {
                    if let Some(v) = cur_version {
                        self.finish_or_skip(
                            actor,
                            v,
                            std::mem::take(&mut cur_rows),
                            &bad,
                            &mut parked,
                            (their_partial, &withheld),
                            &mut with_data,
                            out,
                        )?;
                        if out.stats.stopped {
                            return Ok(());
                        }
                    }
                    cur_version = Some(version);
                }
                if bad.contains(version) {
                    continue;
                }
                let blob: Vec<u8> = r.get(1)?;
                let entries = match decode_entries(&blob, r.get::<_, i64>(2)? as u64) {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::error!(%actor, version, "version left out of a sync: {e}");
                        bad.insert(version);
                        continue;
                    }
                };
                for le in entries {
                    let Some(t) = by_id.get(&le.tbl) else {
                        continue;
                    };
                    let Some(pk) = decode_pk(&le.pk) else {
                        tracing::error!(
                            %actor,
                            version,
                            table = %t.name,
                            "version left out of a sync: a key in its change log cannot be decoded"
                        );
                        bad.insert(version);
                        break;
                    };
                    let entry = EntryRef {
                        actor: a,
                        version,
                        seq: le.seq,
                    };
                    if let Some(rc) = live_row(&self.conn, t, entry, pk)? {
                        cur_rows.push(rc);
                    }
                }
            }
            if let Some(v) = cur_version {
                self.finish_or_skip(
                    actor,
                    v,
                    cur_rows,
                    &bad,
                    &mut parked,
                    (their_partial, &withheld),
                    &mut with_data,
                    out,
                )?;
            }
            for (v, rows) in std::mem::take(&mut parked) {
                if out.stats.stopped {
                    return Ok(());
                }
                let mut none = BTreeMap::new();
                self.finish_version(
                    actor,
                    v,
                    rows,
                    &mut none,
                    (their_partial, &withheld),
                    &mut with_data,
                    out,
                )?;
            }
            // Versions held without some tables' rows and with nothing else
            // left: never folded into a cleared range (the requester must
            // learn what they lack).
            for &v in withheld.keys() {
                if out.stats.stopped {
                    return Ok(());
                }
                if with_data.contains(v) {
                    continue;
                }
                let mut none = BTreeMap::new();
                self.finish_version(
                    actor,
                    v,
                    Vec::new(),
                    &mut none,
                    (their_partial, &withheld),
                    &mut with_data,
                    out,
                )?;
            }
        }
        let cleared = need.difference(&with_data);
        for &(s, e) in cleared.ranges() {
            out.cleared.push(Cleared {
                actor,
                start: s,
                end: e,
            });
        }
        Ok(())
    }

    /// [`Store::finish_version`], or, for a version whose log could not be
    /// read, nothing: it counts as holding data (never reported cleared).
    #[allow(clippy::too_many_arguments)]
    fn finish_or_skip(
        &self,
        actor: ActorId,
        version: u64,
        rows: Vec<RowChange>,
        bad: &RangeSet,
        parked: &mut BTreeMap<u64, Vec<RowChange>>,
        held: Held<'_>,
        with_data: &mut RangeSet,
        out: &mut Out<'_>,
    ) -> Result<()> {
        if bad.contains(version) {
            parked.remove(&version);
            with_data.insert(version);
            out.stats.unreadable_versions += 1;
            return Ok(());
        }
        self.finish_version(actor, version, rows, parked, held, with_data, out)
    }

    #[allow(clippy::too_many_arguments)]
    fn finish_version(
        &self,
        actor: ActorId,
        version: u64,
        mut rows: Vec<RowChange>,
        parked: &mut BTreeMap<u64, Vec<RowChange>>,
        (their_partial, held_without): Held<'_>,
        with_data: &mut RangeSet,
        out: &mut Out<'_>,
    ) -> Result<()> {
        if let Some(p) = parked.remove(&version) {
            rows.extend(p);
            rows.sort_by_key(|r| r.seq);
        }
        let mut withheld: std::collections::BTreeSet<String> = held_without
            .get(&version)
            .map(|w| w.iter().cloned().collect())
            .unwrap_or_default();
        if let Some((placement, ent)) = out.filter {
            if withheld.iter().any(|t| placement.may_hold(ent, t)) {
                // Held here without rows the requester may hold.
                with_data.insert(version);
                out.stats.incomplete_versions += 1;
                return Ok(());
            }
            if placement.restricts(ent) {
                rows.retain(|r| {
                    let ok = placement.may_hold(ent, &r.table);
                    if !ok && !withheld.contains(&r.table) {
                        withheld.insert(r.table.clone());
                    }
                    ok
                });
            }
        }
        if rows.is_empty() && withheld.is_empty() {
            return Ok(());
        }
        let withheld: Vec<String> = withheld.into_iter().collect();
        with_data.insert(version);
        let mut segments = vec![(0, u64::MAX)];
        if let Some(held) = their_partial.and_then(|p| p.get(&version)) {
            let all = RangeSet::from_ranges([(0, u64::MAX)]);
            segments = all.difference(held).ranges().to_vec();
            rows.retain(|r| !held.contains(r.seq));
            if segments.is_empty() {
                return Ok(());
            }
        }
        out.emit_version(actor, version, rows, &segments, withheld)
    }

    /// Deletes change-log entries whose cells were all overwritten (their
    /// versions are then reported as cleared). Returns how many were removed.
    pub fn compact(&mut self) -> Result<u64> {
        let mut removed = 0;
        let mut from = 0;
        loop {
            let (n, next) = self.compact_step(from, u64::MAX)?;
            removed += n;
            match next {
                Some(n) => from = n,
                None => return Ok(removed),
            }
        }
    }

    /// One bounded step of [`Store::compact`]: the change-log chunks with
    /// an id from `from` on, at most `budget` of them, in one transaction.
    /// Returns the entries removed and where the next step starts (`None`:
    /// the end of the log was reached). A node sweeps its log this way in
    /// the background, a step at a time.
    pub fn compact_step(&mut self, from: i64, budget: u64) -> Result<(u64, Option<i64>)> {
        let by_id = self.tables_by_id();
        let tx = self.conn.unchecked_transaction()?;
        crate::store::keep_next_version(&tx)?;
        let mut removed = 0u64;
        let mut rewrites: Vec<(i64, i64, i64, Vec<LogEntry>)> = Vec::new();
        let mut next = None;
        {
            let mut stmt = tx.prepare(
                "SELECT id, actor, version, seq, entries FROM __lm_log WHERE id >= ?1 ORDER BY id",
            )?;
            let mut rows = stmt.query([from])?;
            let mut seen = 0u64;
            while let Some(r) = rows.next()? {
                let id: i64 = r.get(0)?;
                if seen >= budget {
                    next = Some(id);
                    break;
                }
                seen += 1;
                let (a, v, s): (i64, i64, i64) = (r.get(1)?, r.get(2)?, r.get(3)?);
                let entries = decode_entries(&r.get::<_, Vec<u8>>(4)?, s as u64)?;
                let before = entries.len();
                let mut live = Vec::with_capacity(before);
                for le in entries {
                    let Some(t) = by_id.get(&le.tbl) else {
                        live.push(le);
                        continue;
                    };
                    let pk = decode_pk(&le.pk)
                        .ok_or_else(|| StorageError::Corrupt("change log key".into()))?;
                    let entry = EntryRef {
                        actor: a as u64,
                        version: v as u64,
                        seq: le.seq,
                    };
                    if live_row(&tx, t, entry, pk)?.is_some() {
                        live.push(le);
                    }
                }
                if live.len() < before {
                    removed += (before - live.len()) as u64;
                    rewrites.push((a, v, s, live));
                }
            }
        }
        for (a, v, s, live) in rewrites {
            tx.prepare_cached(
                "DELETE FROM __lm_log WHERE actor = ?1 AND version = ?2 AND seq = ?3",
            )?
            .execute((a, v, s))?;
            if !live.is_empty() {
                crate::log::write_chunks(&tx, a as u64, v as u64, &live)?;
            }
        }
        tx.commit()?;
        Ok((removed, next))
    }
}

/// The part of a row that entry `entry` still owns, or `None` if nothing.
fn live_row(
    conn: &rusqlite::Connection,
    t: &TableMeta,
    entry: EntryRef,
    pk: Vec<Value>,
) -> Result<Option<RowChange>> {
    let Some(clock) = crate::merge::load_clock(conn, t, &pk)? else {
        return Ok(None);
    };
    // Plain cells owned, read from the table; commutative ones come from
    // the clock (a counter's contribution, a register's value).
    let mut owned: Vec<(usize, u64)> = Vec::new();
    let mut from_clock: Vec<(usize, CellChange)> = Vec::new();
    if clock.cl % 2 == 1 {
        for i in 0..t.cols.len() {
            let col = i as u32;
            match t.kinds[i] {
                ColKind::Plain => {
                    if let Some(c) = clock.cell(col)
                        && c.entry == entry
                    {
                        owned.push((i, c.cv));
                    }
                }
                ColKind::Counter { base } => {
                    if let Some(s) = clock.slot(col, entry.actor)
                        && s.entry == entry
                    {
                        from_clock.push((
                            i,
                            CellChange {
                                column: t.cols[i].clone(),
                                value: Value::Integer(s.value),
                                cv: 1,
                                kind: CellKind::Counter,
                                base,
                            },
                        ));
                    }
                }
                k @ (ColKind::Max | ColKind::Min) => {
                    if let Some(c) = clock.cell(col)
                        && c.entry == entry
                    {
                        from_clock.push((
                            i,
                            CellChange {
                                column: t.cols[i].clone(),
                                value: clock.reg(col).cloned().unwrap_or(Value::Null),
                                cv: c.cv,
                                kind: k.cell_kind(),
                                base: 0,
                            },
                        ));
                    }
                }
            }
        }
    }
    if owned.is_empty() && from_clock.is_empty() && clock.owner != entry {
        return Ok(None);
    }
    let mut cells = Vec::with_capacity(owned.len() + from_clock.len());
    if !owned.is_empty() {
        let mut stmt = conn.prepare_cached(&t.sql.select_cols)?;
        let mut rows = stmt.query(params_from_iter(pk.iter()))?;
        let r = rows.next()?.ok_or_else(|| {
            StorageError::Corrupt(format!("live clock without a row in {}", t.name))
        })?;
        for (i, cv) in owned {
            cells.push((
                i,
                CellChange {
                    column: t.cols[i].clone(),
                    value: r.get::<_, Value>(i)?,
                    cv,
                    kind: CellKind::Plain,
                    base: 0,
                },
            ));
        }
    }
    let cells = if from_clock.is_empty() {
        cells.into_iter().map(|(_, c)| c).collect()
    } else {
        cells.extend(from_clock);
        cells.sort_by_key(|(i, _)| *i);
        cells.into_iter().map(|(_, c)| c).collect()
    };
    Ok(Some(RowChange {
        table: t.name.clone(),
        pk,
        seq: entry.seq,
        cl: clock.cl,
        cells,
    }))
}
