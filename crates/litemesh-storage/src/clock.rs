//! Per-row clock metadata: the causal length of a row and the clock of each cell.
//!
//! Every replicated table `T` has a companion table `__lm_clk_T`, keyed by the same
//! primary key, holding one row per row of `T` that ever existed (deleted rows stay
//! as tombstones):
//!
//! | column | meaning |
//! |---|---|
//! | `__cl` | causal length: odd = alive, even = deleted |
//! | `__oa`, `__ov`, `__os` | the entry (actor index, version, seq) that set `__cl` |
//! | `__oc` | cells with a column index below `__oc` and not listed in `__cells` belong to that entry with cell version 1 (the common case after an insert) |
//! | `__cells` | varint-encoded list of explicit cell clocks `(column index, cell version, actor index, version, seq)` |
//!
//! The compact default (`__oc` = number of columns, `__cells = NULL`) makes a
//! freshly inserted row cost a few bytes of metadata, and a column added later
//! needs no metadata rewrite: its index is at or above every existing row's
//! `__oc`, so its cells start with no clock (and the column's default value).

use crate::varint;

/// One change-log entry: a row write by `actor` (local index) in `version`, number
/// `seq` within that version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct EntryRef {
    pub actor: u64,
    pub version: u64,
    pub seq: u64,
}

/// The clock of one cell: its cell version and the entry that wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CellClock {
    pub cv: u64,
    pub entry: EntryRef,
}

/// Explicit cell clocks of a row, sorted by column index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Cells(pub Vec<(u32, CellClock)>);

impl Cells {
    /// Decodes the `__cells` column. `None` if the bytes are corrupt.
    pub fn decode(blob: Option<&[u8]>) -> Option<Cells> {
        let Some(mut bytes) = blob else {
            return Some(Cells::default());
        };
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let col = u32::try_from(varint::get(&mut bytes)?).ok()?;
            let cv = varint::get(&mut bytes)?;
            let actor = varint::get(&mut bytes)?;
            let version = varint::get(&mut bytes)?;
            let seq = varint::get(&mut bytes)?;
            out.push((
                col,
                CellClock {
                    cv,
                    entry: EntryRef {
                        actor,
                        version,
                        seq,
                    },
                },
            ));
        }
        Some(Cells(out))
    }

    /// Encodes for the `__cells` column; `None` (SQL NULL) when empty.
    pub fn encode(&self) -> Option<Vec<u8>> {
        if self.0.is_empty() {
            return None;
        }
        let mut out = Vec::with_capacity(self.0.len() * 8);
        for (col, c) in &self.0 {
            varint::put(&mut out, u64::from(*col));
            varint::put(&mut out, c.cv);
            varint::put(&mut out, c.entry.actor);
            varint::put(&mut out, c.entry.version);
            varint::put(&mut out, c.entry.seq);
        }
        Some(out)
    }

    /// The explicit clock of column `col`, if any.
    pub fn get(&self, col: u32) -> Option<CellClock> {
        self.0
            .binary_search_by_key(&col, |(c, _)| *c)
            .ok()
            .map(|i| self.0[i].1)
    }

    /// Sets the explicit clock of column `col`.
    pub fn set(&mut self, col: u32, clock: CellClock) {
        match self.0.binary_search_by_key(&col, |(c, _)| *c) {
            Ok(i) => self.0[i].1 = clock,
            Err(i) => self.0.insert(i, (col, clock)),
        }
    }
}

/// The metadata row of one data row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RowClock {
    /// Causal length: odd = alive, even = deleted, 0 = never seen.
    pub cl: u64,
    /// The entry that set `cl`.
    pub owner: EntryRef,
    /// Cells with an index below this and no explicit clock belong to `owner`
    /// at cell version 1.
    pub owner_cells: u32,
    pub cells: Cells,
}

impl RowClock {
    /// The effective clock of column `col`: explicit, else the owner's default,
    /// else none.
    pub fn cell(&self, col: u32) -> Option<CellClock> {
        self.cells.get(col).or(if col < self.owner_cells {
            Some(CellClock {
                cv: 1,
                entry: self.owner,
            })
        } else {
            None
        })
    }
}
