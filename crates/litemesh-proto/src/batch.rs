//! Change batches: the unit of replication, and their versioned wire encoding.

use serde::{Deserialize, Serialize};

use crate::error::{WireError, check_size};
use crate::{ActorId, Value};

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

/// How a cell merges with concurrent writes of it (`docs/storage.md`,
/// "Commutative columns"). Travels with every cell that is not
/// [`CellKind::Plain`], so that a node whose schema declares the column
/// differently refuses the change (quarantine) instead of merging it by
/// another rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "u8", try_from = "u8")]
pub enum CellKind {
    /// Last writer wins: the value of the write with the higher cell version
    /// (then the larger actor id).
    #[default]
    Plain,
    /// One node's contribution to a counter: the cell's value is the sum, over
    /// the actors that wrote it in this life, of their latest contribution
    /// (plus the column's default). `value` is the writer's contribution
    /// (an integer), not the sum.
    Counter,
    /// A register that only moves up: concurrent writes merge to the largest.
    Max,
    /// A register that only moves down: concurrent writes merge to the smallest.
    Min,
}

impl CellKind {
    /// True for last-writer-wins cells (the field is left out of encodings).
    #[inline]
    pub fn is_plain(&self) -> bool {
        *self == CellKind::Plain
    }

    /// The name used in schema directives and errors.
    pub fn name(self) -> &'static str {
        match self {
            CellKind::Plain => "plain",
            CellKind::Counter => "counter",
            CellKind::Max => "max",
            CellKind::Min => "min",
        }
    }
}

impl From<CellKind> for u8 {
    fn from(k: CellKind) -> u8 {
        match k {
            CellKind::Plain => 0,
            CellKind::Counter => 1,
            CellKind::Max => 2,
            CellKind::Min => 3,
        }
    }
}

impl TryFrom<u8> for CellKind {
    type Error = String;
    fn try_from(b: u8) -> Result<CellKind, String> {
        Ok(match b {
            0 => CellKind::Plain,
            1 => CellKind::Counter,
            2 => CellKind::Max,
            3 => CellKind::Min,
            other => return Err(format!("unknown cell kind {other}")),
        })
    }
}

/// One cell of a row change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellChange {
    /// Column name.
    pub column: String,
    /// New value (for a [`CellKind::Counter`] cell: the writer's
    /// contribution).
    pub value: Value,
    /// Cell version: how many times the cell was written in this life of the row.
    pub cv: u64,
    /// How the cell merges (a trailing field: absent for plain cells, and
    /// in batches of earlier releases).
    #[serde(default, skip_serializing_if = "CellKind::is_plain")]
    pub kind: CellKind,
    /// For a [`CellKind::Counter`] cell: the counter's base (its column's
    /// DEFAULT) where it was written, so that a node whose schema declares
    /// another refuses the change instead of summing from a different
    /// start. (A trailing field, absent when 0.)
    #[serde(default, skip_serializing_if = "is_zero")]
    pub base: i64,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
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
    /// Approximate encoded size in bytes, used to bound batches.
    #[inline]
    pub fn encoded_size(&self) -> usize {
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
    /// Tables whose rows were left out of this version on their way here
    /// (table placement: the node that sent it, or one before it, may not
    /// hold them, or the receiver may not). Empty for a version sent whole.
    /// A node never serves a version as complete to a node entitled to one
    /// of these tables. (A trailing field: batches without it encode as
    /// before.)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub withheld: Vec<String>,
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
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.versions.is_empty() && self.cleared.is_empty()
    }

    /// Number of cells in the batch.
    #[inline]
    pub fn cell_count(&self) -> usize {
        self.versions
            .iter()
            .flat_map(|v| &v.rows)
            .map(|r| r.cells.len())
            .sum()
    }
}

/// Wire format version of [`ChangeBatch`] encodings that carry commutative
/// cells ([`CellKind`] other than plain). A batch without them is encoded
/// as format [`WIRE_VERSION_PLAIN`], byte for byte as before, so a mesh
/// whose nodes run different releases keeps replicating everything but
/// commutative columns (a node of an earlier release refuses a format-2
/// batch, loudly, instead of merging a counter as a plain cell).
pub const WIRE_VERSION: u8 = 2;

/// Wire format version of batches without commutative cells (the format of
/// earlier releases, still decoded).
pub const WIRE_VERSION_PLAIN: u8 = 1;

/// Default upper bound for an encoded batch.
pub const DEFAULT_MAX_WIRE_BYTES: usize = 8 * 1024 * 1024;

/// Encodes a batch: one format byte, then MessagePack. Fails if the result is
/// larger than `limit`.
pub fn encode_batch(batch: &ChangeBatch, limit: usize) -> Result<Vec<u8>, WireError> {
    let commutative = batch
        .versions
        .iter()
        .flat_map(|v| &v.rows)
        .flat_map(|r| &r.cells)
        .any(|c| !c.kind.is_plain());
    let mut out = vec![if commutative {
        WIRE_VERSION
    } else {
        WIRE_VERSION_PLAIN
    }];
    rmp_serde::encode::write(&mut out, batch).map_err(WireError::malformed)?;
    check_size(out.len(), limit)?;
    Ok(out)
}

/// Decodes a batch written by [`encode_batch`], checking the size limit, the
/// format version and the batch's invariants. Malformed input is an error, never
/// a panic.
pub fn decode_batch(bytes: &[u8], limit: usize) -> Result<ChangeBatch, WireError> {
    check_size(bytes.len(), limit)?;
    let (&ver, body) = bytes
        .split_first()
        .ok_or_else(|| WireError::malformed("empty message"))?;
    if ver != WIRE_VERSION && ver != WIRE_VERSION_PLAIN {
        return Err(WireError::Malformed(format!(
            "unsupported wire version {ver} (this node speaks {WIRE_VERSION_PLAIN} and {WIRE_VERSION})"
        )));
    }
    let batch: ChangeBatch = rmp_serde::from_slice(body).map_err(WireError::malformed)?;
    validate(&batch)?;
    Ok(batch)
}

/// Checks what the type system cannot: versions start at 1, chunk and cleared
/// ranges are ordered, causal lengths are non-zero, rows carry a key.
pub fn validate(batch: &ChangeBatch) -> Result<(), WireError> {
    for v in &batch.versions {
        if v.version == 0 {
            return Err(WireError::Malformed("version 0 does not exist".into()));
        }
        if let Some(c) = v.chunk
            && c.start > c.end
        {
            return Err(WireError::Malformed("chunk range start > end".into()));
        }
        for r in &v.rows {
            if r.cl == 0 {
                return Err(WireError::Malformed("causal length 0".into()));
            }
            if r.pk.is_empty() {
                return Err(WireError::Malformed("row change without a key".into()));
            }
            if r.cl % 2 == 0 && !r.cells.is_empty() {
                return Err(WireError::Malformed("cells on a deleted row".into()));
            }
            if r.cells
                .iter()
                .any(|c| c.kind == CellKind::Counter && !matches!(c.value, Value::Integer(_)))
            {
                return Err(WireError::Malformed(
                    "a counter contribution that is not an integer".into(),
                ));
            }
        }
        if v.withheld.len() > crate::placement::MAX_WITHHELD {
            return Err(WireError::Malformed("too many withheld tables".into()));
        }
    }
    for c in &batch.cleared {
        if c.start == 0 || c.start > c.end {
            return Err(WireError::Malformed("bad cleared range".into()));
        }
    }
    Ok(())
}
