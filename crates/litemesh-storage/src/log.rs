//! The change log: which row writes of which version still own data.
//!
//! `__lm_log(id, actor, version, seq, last, entries)` stores *chunks*: each
//! row holds entries `seq..=last` (not necessarily contiguous) of one version
//! as a compact blob of `(seq delta, table id, encoded key)` triples, sized to
//! fit one database page without overflow. A local transaction written through
//! [`Store::transaction`](crate::Store::transaction) logs its row writes in
//! chunks at commit time (one B-tree insert per ~150 row writes instead of one
//! per row); writes from other attached connections log one-entry chunks from
//! the triggers; merged remote versions log their chunks once per version.

use rusqlite::{Connection, OptionalExtension};

use crate::error::{Result, StorageError};
use crate::varint;

/// Bytes of entries per chunk: below SQLite's largest local payload of a
/// 4 KiB table page, so a chunk never spills to overflow pages.
pub(crate) const CHUNK_BYTES: usize = 3800;

/// One row write: entry number, table id, encoded primary key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct LogEntry {
    pub seq: u64,
    pub tbl: i64,
    pub pk: Vec<u8>,
}

/// Appends one encoded entry to `out`; `prev` is the previous entry's number
/// in the chunk (or the chunk's first number).
pub(crate) fn put_entry(out: &mut Vec<u8>, seq: u64, prev: u64, tbl: i64, pk: &[u8]) {
    varint::put(out, seq - prev);
    varint::put(out, tbl as u64);
    varint::put(out, pk.len() as u64);
    out.extend_from_slice(pk);
}

/// Decodes a chunk's entries; `first` is the chunk's first entry number.
pub(crate) fn decode_entries(mut bytes: &[u8], first: u64) -> Result<Vec<LogEntry>> {
    let corrupt = || StorageError::Corrupt("change log chunk".into());
    let mut out = Vec::new();
    let mut seq = first;
    while !bytes.is_empty() {
        seq = seq
            .checked_add(varint::get(&mut bytes).ok_or_else(corrupt)?)
            .ok_or_else(corrupt)?;
        let tbl = varint::get(&mut bytes).ok_or_else(corrupt)? as i64;
        let len =
            usize::try_from(varint::get(&mut bytes).ok_or_else(corrupt)?).map_err(|_| corrupt())?;
        if bytes.len() < len {
            return Err(corrupt());
        }
        let (pk, rest) = bytes.split_at(len);
        bytes = rest;
        out.push(LogEntry {
            seq,
            tbl,
            pk: pk.to_vec(),
        });
    }
    Ok(out)
}

/// Writes `entries` of `(actor, version)` as page-sized chunks. A chunk that
/// would start at the same entry number as an existing one is merged with it.
pub(crate) fn write_chunks(
    conn: &Connection,
    actor: u64,
    version: u64,
    entries: &[LogEntry],
) -> Result<()> {
    let mut sorted: Vec<LogEntry> = entries.to_vec();
    sorted.sort();
    sorted.dedup();
    let mut start = 0;
    while start < sorted.len() {
        let first = sorted[start].seq;
        let existing: Option<Vec<u8>> = conn
            .prepare_cached(
                "SELECT entries FROM __lm_log WHERE actor = ?1 AND version = ?2 AND seq = ?3",
            )?
            .query_row((actor as i64, version as i64, first as i64), |r| r.get(0))
            .optional()?;
        let mut blob = Vec::with_capacity(CHUNK_BYTES);
        let mut prev = first;
        let mut end = start;
        if let Some(old) = existing {
            // Rare (changes applied late from the parking area): merge.
            let mut all = decode_entries(&old, first)?;
            all.push(sorted[start].clone());
            all.sort();
            all.dedup();
            for e in &all {
                put_entry(&mut blob, e.seq, prev, e.tbl, &e.pk);
                prev = e.seq;
            }
            end = start + 1;
        } else {
            while end < sorted.len() {
                let e = &sorted[end];
                let before = blob.len();
                put_entry(&mut blob, e.seq, prev, e.tbl, &e.pk);
                if blob.len() > CHUNK_BYTES && end > start {
                    blob.truncate(before);
                    break;
                }
                prev = e.seq;
                end += 1;
            }
        }
        conn.prepare_cached(
            "INSERT OR REPLACE INTO __lm_log(actor, version, seq, last, entries) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute((actor as i64, version as i64, first as i64, prev as i64, blob))?;
        start = end;
    }
    Ok(())
}
