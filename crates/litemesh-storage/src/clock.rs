//! Per-row clock metadata: the causal length of a row and the clock of each cell.
//!
//! Every replicated table `T` has a companion table `__lm_clk_T`, keyed by the same
//! primary key, holding one row per row of `T` that ever existed (deleted rows stay
//! as tombstones), with one packed column `__clk`:
//!
//! | field | meaning |
//! |---|---|
//! | `cl` | causal length: odd = alive, even = deleted |
//! | `owner` | the entry (actor index, version, seq) that set `cl` |
//! | `oc` | cells with a column index below `oc` and no explicit clock belong to `owner` with cell version 1 (the common case after an insert) |
//! | cells | explicit cell clocks `(column index, cell version, actor index, version, seq)` |
//!
//! all as varints, then, for tables with commutative columns
//! ([`crate::commute`]), after a marker: the counter contributions
//! `(column index, actor index, version, seq, zigzag value)` and the register
//! values `(column index, length, value in the key encoding)`. The compact default (`oc` = number of columns, no explicit
//! cells) makes a freshly inserted row cost a few bytes of metadata, and a
//! column added later needs no metadata rewrite: its index is at or above
//! every existing row's `oc`, so its cells start with no clock (and the
//! column's default value).

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

/// One actor's contribution to a counter cell in this life of the row: the
/// sum of every change that actor made to it, as of `entry` (its latest
/// write of the cell). Only that actor ever writes it, so of two
/// contributions of one actor the one with the later entry is the current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    pub col: u32,
    pub entry: EntryRef,
    pub value: i64,
}

/// The value of a max/min register cell, kept with its clock so that the
/// merge and a write that replaces the row compare against it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Reg {
    pub col: u32,
    pub value: litemesh_proto::Value,
}

/// Marks the start of the commutative section of a packed clock (above any
/// column index, which is a `u32` below 480).
const COMMUTE_MARK: u64 = 1 << 32;

/// The metadata row of one data row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RowClock {
    /// Causal length: odd = alive, even = deleted, 0 = never seen.
    pub cl: u64,
    /// The entry that set `cl`.
    pub owner: EntryRef,
    /// Cells with an index below this and no explicit clock belong to `owner`
    /// at cell version 1.
    pub owner_cells: u32,
    pub cells: Cells,
    /// Counter contributions, sorted by (column, actor index).
    pub slots: Vec<Slot>,
    /// Register values, sorted by column.
    pub regs: Vec<Reg>,
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

impl RowClock {
    /// The clock of a row first inserted by `entry` with `ncols` non-key columns.
    pub fn inserted(prev: Option<&RowClock>, entry: EntryRef, ncols: u32) -> RowClock {
        match prev {
            // INSERT OR REPLACE over a live row: every cell is overwritten.
            Some(p) if p.cl % 2 == 1 => {
                let mut c = p.clone();
                for col in 0..ncols {
                    c.bump(col, entry);
                }
                c
            }
            _ => RowClock {
                cl: prev.map_or(1, |p| p.cl + 1),
                owner: entry,
                owner_cells: ncols,
                cells: Cells::default(),
                slots: Vec::new(),
                regs: Vec::new(),
            },
        }
    }

    /// The contribution of actor index `actor` to counter column `col`.
    pub fn slot(&self, col: u32, actor: u64) -> Option<&Slot> {
        self.slots
            .binary_search_by_key(&(col, actor), |s| (s.col, s.entry.actor))
            .ok()
            .map(|i| &self.slots[i])
    }

    /// Sets a contribution (replacing the same actor's for that column).
    pub fn set_slot(&mut self, slot: Slot) {
        match self
            .slots
            .binary_search_by_key(&(slot.col, slot.entry.actor), |s| (s.col, s.entry.actor))
        {
            Ok(i) => self.slots[i] = slot,
            Err(i) => self.slots.insert(i, slot),
        }
    }

    /// The sum of the contributions to counter column `col` (wrapping, as
    /// every node computes it: the same on all of them whatever the order).
    pub fn slot_sum(&self, col: u32) -> i64 {
        self.slots
            .iter()
            .filter(|s| s.col == col)
            .fold(0i64, |a, s| a.wrapping_add(s.value))
    }

    /// The value of register column `col`, if it was written in this life.
    pub fn reg(&self, col: u32) -> Option<&litemesh_proto::Value> {
        self.regs
            .binary_search_by_key(&col, |r| r.col)
            .ok()
            .map(|i| &self.regs[i].value)
    }

    /// Sets the value of register column `col`.
    pub fn set_reg(&mut self, col: u32, value: litemesh_proto::Value) {
        match self.regs.binary_search_by_key(&col, |r| r.col) {
            Ok(i) => self.regs[i].value = value,
            Err(i) => self.regs.insert(i, Reg { col, value }),
        }
    }

    /// Whether `entry` still owns anything of the row: its life (the
    /// entry that set the causal length), a cell, or a counter
    /// contribution. Kinds are not needed: a counter column never has a
    /// cell clock of its own that matters (see `crate::commute`).
    pub fn owned_by(&self, entry: EntryRef, ncols: u32) -> bool {
        self.owner == entry
            || (self.cl % 2 == 1
                && ((0..ncols).any(|i| self.cell(i).is_some_and(|x| x.entry == entry))
                    || self.slots.iter().any(|s| s.entry == entry)))
    }

    /// Every entry that wrote this life: the owner, the cells' writers and
    /// the counter contributions'.
    pub fn life_entries(&self, ncols: u32) -> Vec<EntryRef> {
        let mut life = vec![self.owner];
        life.extend((0..ncols).filter_map(|c| self.cell(c).map(|x| x.entry)));
        life.extend(self.slots.iter().map(|s| s.entry));
        life
    }

    /// A life started by a local insert, moved above `floor` (the highest
    /// causal length of a tombstone collected in the table): odd, and
    /// greater than every tombstone of the key that any node may still hold.
    pub fn above_floor(mut self, floor: u64) -> RowClock {
        if self.cl <= floor {
            // floor is even (a tombstone's), so floor + 1 is a live length.
            self.cl = floor | 1;
            if self.cl <= floor {
                self.cl += 2;
            }
        }
        self
    }

    /// The clock after `entry` deleted the row (unchanged if already deleted).
    pub fn deleted(&self, entry: EntryRef) -> RowClock {
        if self.cl.is_multiple_of(2) {
            return self.clone();
        }
        RowClock {
            cl: self.cl + 1,
            owner: entry,
            owner_cells: 0,
            cells: Cells::default(),
            slots: Vec::new(),
            regs: Vec::new(),
        }
    }

    /// Records a local write of column `col` by `entry`: cell version + 1.
    pub fn bump(&mut self, col: u32, entry: EntryRef) {
        let old = self.cell(col).map_or(0, |c| c.cv);
        self.cells.set(col, CellClock { cv: old + 1, entry });
    }

    /// Packs the clock for the `__clk` column.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.cells.0.len() * 8);
        varint::put(&mut out, self.cl);
        varint::put(&mut out, self.owner.actor);
        varint::put(&mut out, self.owner.version);
        varint::put(&mut out, self.owner.seq);
        varint::put(&mut out, u64::from(self.owner_cells));
        if let Some(cells) = self.cells.encode() {
            out.extend_from_slice(&cells);
        }
        if !self.slots.is_empty() || !self.regs.is_empty() {
            varint::put(&mut out, COMMUTE_MARK);
            varint::put(&mut out, self.slots.len() as u64);
            for s in &self.slots {
                varint::put(&mut out, u64::from(s.col));
                varint::put(&mut out, s.entry.actor);
                varint::put(&mut out, s.entry.version);
                varint::put(&mut out, s.entry.seq);
                varint::put(&mut out, ((s.value << 1) ^ (s.value >> 63)) as u64);
            }
            for r in &self.regs {
                varint::put(&mut out, u64::from(r.col));
                let v = crate::value::encode_pk(&[r.value.as_ref()]);
                varint::put(&mut out, v.len() as u64);
                out.extend_from_slice(&v);
            }
        }
        out
    }

    /// Unpacks the `__clk` column. `None` if corrupt.
    pub fn decode(mut bytes: &[u8]) -> Option<RowClock> {
        let cl = varint::get(&mut bytes)?;
        let actor = varint::get(&mut bytes)?;
        let version = varint::get(&mut bytes)?;
        let seq = varint::get(&mut bytes)?;
        let owner_cells = u32::try_from(varint::get(&mut bytes)?).ok()?;
        let mut cells = Vec::new();
        let mut slots = Vec::new();
        let mut regs = Vec::new();
        while !bytes.is_empty() {
            let col = varint::get(&mut bytes)?;
            if col == COMMUTE_MARK {
                let n = varint::get(&mut bytes)?;
                for _ in 0..n {
                    let col = u32::try_from(varint::get(&mut bytes)?).ok()?;
                    let entry = EntryRef {
                        actor: varint::get(&mut bytes)?,
                        version: varint::get(&mut bytes)?,
                        seq: varint::get(&mut bytes)?,
                    };
                    let z = varint::get(&mut bytes)?;
                    let value = ((z >> 1) as i64) ^ -((z & 1) as i64);
                    slots.push(Slot { col, entry, value });
                }
                while !bytes.is_empty() {
                    let col = u32::try_from(varint::get(&mut bytes)?).ok()?;
                    let len = usize::try_from(varint::get(&mut bytes)?).ok()?;
                    let (v, rest) = bytes.split_at_checked(len)?;
                    bytes = rest;
                    let [value] =
                        <[litemesh_proto::Value; 1]>::try_from(crate::value::decode_pk(v)?).ok()?;
                    regs.push(Reg { col, value });
                }
                break;
            }
            let col = u32::try_from(col).ok()?;
            let cv = varint::get(&mut bytes)?;
            let entry = EntryRef {
                actor: varint::get(&mut bytes)?,
                version: varint::get(&mut bytes)?,
                seq: varint::get(&mut bytes)?,
            };
            cells.push((col, CellClock { cv, entry }));
        }
        Some(RowClock {
            cl,
            owner: EntryRef {
                actor,
                version,
                seq,
            },
            owner_cells,
            cells: Cells(cells),
            slots,
            regs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_transitions() {
        let e = |v, s| EntryRef {
            actor: 0,
            version: v,
            seq: s,
        };
        let c = RowClock::inserted(None, e(1, 0), 3);
        assert_eq!(c.cl, 1);
        assert_eq!(c.cell(2).unwrap().cv, 1);
        assert!(c.cell(3).is_none(), "a column added later has no clock");
        assert_eq!(RowClock::decode(&c.encode()).unwrap(), c);
        let mut u = c.clone();
        u.bump(1, e(2, 0));
        assert_eq!(
            u.cell(1).unwrap(),
            CellClock {
                cv: 2,
                entry: e(2, 0)
            }
        );
        assert_eq!(RowClock::decode(&u.encode()).unwrap(), u);
        let d = u.deleted(e(3, 0));
        assert_eq!(d.cl, 2);
        assert!(d.cell(0).is_none());
        assert_eq!(
            d.deleted(e(4, 0)),
            d,
            "deleting a deleted row changes nothing"
        );
        let r = RowClock::inserted(Some(&d), e(5, 0), 3);
        assert_eq!((r.cl, r.owner), (3, e(5, 0)));
        let rr = RowClock::inserted(Some(&r), e(6, 0), 3);
        assert_eq!(rr.cl, 3, "replace over a live row keeps its life");
        assert_eq!(rr.cell(0).unwrap().cv, 2);
        assert!(RowClock::decode(&[0x80]).is_none());
    }
}
