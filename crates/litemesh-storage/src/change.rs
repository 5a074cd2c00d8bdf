//! Change batches: what nodes exchange, and their versioned wire encoding.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Result, StorageError};
use crate::ranges::RangeSet;
use crate::value::Value;

/// A node's identity in the version space: 16 random bytes, created with the file.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ActorId(pub [u8; 16]);

impl ActorId {
    /// A fresh random id.
    pub fn random() -> Self {
        ActorId(rand::random())
    }

    /// Hex form, for logs and APIs.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses the hex form.
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 32 || !s.is_ascii() {
            return None;
        }
        let mut out = [0u8; 16];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(ActorId(out))
    }
}

impl fmt::Debug for ActorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ActorId({})", &self.to_hex()[..8])
    }
}

impl fmt::Display for ActorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for ActorId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for ActorId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let bytes: serde_bytes::ByteBuf = Deserialize::deserialize(d)?;
        let arr: [u8; 16] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| serde::de::Error::invalid_length(bytes.len(), &"16 bytes"))?;
        Ok(ActorId(arr))
    }
}

/// What a node holds: for every actor, the versions it has applied (or knows to
/// be cleared), plus versions it has only partly received.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Knowledge {
    /// Complete versions per actor.
    pub have: BTreeMap<ActorId, RangeSet>,
    /// Versions received in part: actor → version → ranges of entry numbers held.
    pub partial: BTreeMap<ActorId, BTreeMap<u64, RangeSet>>,
}

impl Knowledge {
    /// Per-actor head: the highest version known for each actor.
    pub fn heads(&self) -> BTreeMap<ActorId, u64> {
        self.have
            .iter()
            .filter_map(|(a, r)| r.max().map(|m| (*a, m)))
            .collect()
    }

    /// Whether every version of `other` is also in `self`.
    pub fn covers(&self, other: &Knowledge) -> bool {
        other.have.iter().all(|(a, theirs)| match self.have.get(a) {
            Some(ours) => theirs.difference(ours).is_empty(),
            None => theirs.is_empty(),
        })
    }

    /// Whether `actor`'s `version` is held completely.
    pub fn contains(&self, actor: &ActorId, version: u64) -> bool {
        self.have.get(actor).is_some_and(|r| r.contains(version))
    }

    /// The highest `n` such that every version `1..=n` of `actor` is held
    /// (0 if version 1 is not).
    pub fn complete_through(&self, actor: &ActorId) -> u64 {
        match self.have.get(actor).and_then(|r| r.ranges().first()) {
            Some(&(1, end)) => end,
            _ => 0,
        }
    }

    /// How many of `actor`'s versions `1..=version` are not held.
    pub fn missing_up_to(&self, actor: &ActorId, version: u64) -> u64 {
        let held: u64 = self.have.get(actor).map_or(0, |r| {
            r.ranges()
                .iter()
                .take_while(|(start, _)| *start <= version)
                .map(|(start, end)| (*end).min(version) - start + 1)
                .sum()
        });
        version - held.min(version)
    }
}

/// The range of entry numbers a chunk of a large version covers. A version sent
/// in one piece has no chunk range; a version split over several batches is
/// complete once its chunks cover `0..=u64::MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqRange {
    /// First entry number covered.
    pub start: u64,
    /// Last entry number covered (`u64::MAX` on the last chunk).
    pub end: u64,
}

/// One cell of a row change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellChange {
    /// Column name.
    pub column: String,
    /// New value.
    pub value: Value,
    /// Cell version: how many times the cell was written in this life of the row.
    pub cv: u64,
}

/// One row write: the row's causal length and the cells this write still owns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowChange {
    /// Table name.
    pub table: String,
    /// Primary key values, in primary-key order.
    pub pk: Vec<Value>,
    /// Entry number within the version.
    pub seq: u64,
    /// Causal length of the row: odd = alive, even = deleted.
    pub cl: u64,
    /// Cells (empty for a delete, or a row whose cells were all overwritten later).
    pub cells: Vec<CellChange>,
}

impl RowChange {
    pub(crate) fn encoded_size(&self) -> usize {
        16 + self.table.len()
            + self.pk.iter().map(Value::encoded_size).sum::<usize>()
            + self
                .cells
                .iter()
                .map(|c| c.column.len() + 12 + c.value.encoded_size())
                .sum::<usize>()
    }
}

/// The changes of one version (one committed transaction of one actor), or a
/// chunk of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionChanges {
    /// Who wrote it.
    pub actor: ActorId,
    /// The actor's version number.
    pub version: u64,
    /// `None` when the whole version is here; else the entry numbers covered.
    pub chunk: Option<SeqRange>,
    /// The row writes, by entry number.
    pub rows: Vec<RowChange>,
}

/// A contiguous range of an actor's versions that has no data left to send:
/// every cell it wrote was overwritten since.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cleared {
    /// The actor.
    pub actor: ActorId,
    /// First version.
    pub start: u64,
    /// Last version (inclusive).
    pub end: u64,
}

/// A unit of replication: versions with their rows, and cleared ranges.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChangeBatch {
    /// Versions (or chunks of versions) with data.
    pub versions: Vec<VersionChanges>,
    /// Versions with nothing left to send.
    pub cleared: Vec<Cleared>,
}

impl ChangeBatch {
    /// True when the batch carries nothing.
    pub fn is_empty(&self) -> bool {
        self.versions.is_empty() && self.cleared.is_empty()
    }

    /// Number of cells in the batch.
    pub fn cell_count(&self) -> usize {
        self.versions
            .iter()
            .flat_map(|v| &v.rows)
            .map(|r| r.cells.len())
            .sum()
    }
}

/// Wire format version of [`ChangeBatch`] encodings.
pub const WIRE_VERSION: u8 = 1;

/// Default upper bound for an encoded batch.
pub const DEFAULT_MAX_WIRE_BYTES: usize = 8 * 1024 * 1024;

/// Largest row write a node accepts: the key and the cells one write sets,
/// in bytes (text and blobs by length). A larger write is refused when it is
/// made ([`StorageError::RowTooLarge`]), so that every change that commits
/// fits, whole, in one batch of [`DEFAULT_MAX_WIRE_BYTES`] on every node.
pub const MAX_ROW_WRITE_BYTES: usize = 4 * 1024 * 1024;

/// Encodes a batch: one format byte, then MessagePack. Fails if the result is
/// larger than `limit`.
pub fn encode_batch(batch: &ChangeBatch, limit: usize) -> Result<Vec<u8>> {
    let mut out = vec![WIRE_VERSION];
    rmp_serde::encode::write(&mut out, batch).map_err(|e| StorageError::Decode(e.to_string()))?;
    if out.len() > limit {
        return Err(StorageError::TooLarge {
            size: out.len(),
            limit,
        });
    }
    Ok(out)
}

/// Decodes a batch written by [`encode_batch`], checking the size limit, the
/// format version and the batch's invariants. Malformed input is an error, never
/// a panic.
pub fn decode_batch(bytes: &[u8], limit: usize) -> Result<ChangeBatch> {
    if bytes.len() > limit {
        return Err(StorageError::TooLarge {
            size: bytes.len(),
            limit,
        });
    }
    let (&ver, body) = bytes
        .split_first()
        .ok_or_else(|| StorageError::Decode("empty message".into()))?;
    if ver != WIRE_VERSION {
        return Err(StorageError::Decode(format!(
            "unsupported wire version {ver} (this node speaks {WIRE_VERSION})"
        )));
    }
    let batch: ChangeBatch =
        rmp_serde::from_slice(body).map_err(|e| StorageError::Decode(e.to_string()))?;
    validate(&batch)?;
    Ok(batch)
}

/// Checks what the type system cannot: versions start at 1, chunk and cleared
/// ranges are ordered, causal lengths are non-zero, rows carry a key.
pub fn validate(batch: &ChangeBatch) -> Result<()> {
    for v in &batch.versions {
        if v.version == 0 {
            return Err(StorageError::Decode("version 0 does not exist".into()));
        }
        if let Some(c) = v.chunk
            && c.start > c.end
        {
            return Err(StorageError::Decode("chunk range start > end".into()));
        }
        for r in &v.rows {
            if r.cl == 0 {
                return Err(StorageError::Decode("causal length 0".into()));
            }
            if r.pk.is_empty() {
                return Err(StorageError::Decode("row change without a key".into()));
            }
            if r.cl % 2 == 0 && !r.cells.is_empty() {
                return Err(StorageError::Decode("cells on a deleted row".into()));
            }
        }
    }
    for c in &batch.cleared {
        if c.start == 0 || c.start > c.end {
            return Err(StorageError::Decode("bad cleared range".into()));
        }
    }
    Ok(())
}
