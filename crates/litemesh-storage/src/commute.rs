//! Commutative columns: counters and max/min registers.
//!
//! A column is declared commutative in its table's `CREATE TABLE`, with a
//! directive comment (parsed with the placement directive, see
//! `placement.rs`):
//!
//! ```sql
//! CREATE TABLE posts (
//!     id TEXT PRIMARY KEY,
//!     likes INTEGER NOT NULL DEFAULT 0,
//!     best INTEGER,
//!     first_seen TEXT
//! ) -- litemesh: counter = likes; max = best; min = first_seen
//! ;
//! ```
//!
//! - A **counter** holds its column's DEFAULT plus, for every actor that wrote
//!   it in this life of the row, that actor's contribution. A local write adds
//!   the difference it makes (new value minus the value as this node sees it)
//!   to the local actor's contribution, so `SET n = n + 1` through any
//!   connection counts one more, and an assignment (`SET n = 10`) sets the
//!   value as this node sees it while increments not yet seen here are added
//!   on top (an observed reset). Contributions merge per actor, the later
//!   entry of that actor winning: idempotent, commutative and associative,
//!   so every replica sums the same contributions.
//! - A **max** (**min**) register keeps the largest (smallest) value written
//!   in this life, by SQLite's order of values (NULL < numbers < text < blobs,
//!   text compared bytewise); NULL means "no value" and never wins. A local
//!   write that would move it back is refused (write `max(col, ?)`).
//!
//! A delete and a re-insert start a new life, as for every cell.

use std::cmp::Ordering;

use litemesh_proto::{CellKind, Value};
use rusqlite::types::ValueRef;

use crate::clock::{EntryRef, RowClock, Slot};

/// How a non-key column merges, as the table registry (`__lm_kinds`) says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ColKind {
    /// Last writer wins.
    Plain,
    /// A counter whose value starts at `base` (the column's DEFAULT).
    Counter { base: i64 },
    /// A register that only moves up.
    Max,
    /// A register that only moves down.
    Min,
}

impl ColKind {
    /// The kind as it travels with a cell.
    pub(crate) fn cell_kind(self) -> CellKind {
        match self {
            ColKind::Plain => CellKind::Plain,
            ColKind::Counter { .. } => CellKind::Counter,
            ColKind::Max => CellKind::Max,
            ColKind::Min => CellKind::Min,
        }
    }

    /// True for max and min registers.
    pub(crate) fn is_register(self) -> bool {
        matches!(self, ColKind::Max | ColKind::Min)
    }

    /// The token that names the kind in trigger arguments (see
    /// [`parse_kinds`]).
    pub(crate) fn token(self) -> String {
        match self {
            ColKind::Plain => "p".into(),
            ColKind::Counter { base } => format!("c{base}"),
            ColKind::Max => "M".into(),
            ColKind::Min => "m".into(),
        }
    }
}

/// Parses the kinds argument the capture triggers pass: one token per
/// non-key column, separated by spaces (`p`, `c<base>`, `M`, `m`).
pub(crate) fn parse_kinds(s: &str) -> Option<Vec<ColKind>> {
    s.split(' ')
        .map(|t| match t {
            "p" => Some(ColKind::Plain),
            "M" => Some(ColKind::Max),
            "m" => Some(ColKind::Min),
            _ => t
                .strip_prefix('c')
                .and_then(|b| b.parse().ok())
                .map(|base| ColKind::Counter { base }),
        })
        .collect()
}

/// Storage class rank in SQLite's order of values.
fn class(v: ValueRef<'_>) -> u8 {
    match v {
        ValueRef::Null => 0,
        ValueRef::Integer(_) | ValueRef::Real(_) => 1,
        ValueRef::Text(_) => 2,
        ValueRef::Blob(_) => 3,
    }
}

/// An integer against a float, exactly (no rounding of large integers).
fn cmp_int_real(i: i64, f: f64) -> Ordering {
    if f.is_nan() {
        return Ordering::Greater;
    }
    if f >= 9_223_372_036_854_775_808.0 {
        return Ordering::Less;
    }
    if f < -9_223_372_036_854_775_808.0 {
        return Ordering::Greater;
    }
    let t = f.trunc();
    match i.cmp(&(t as i64)) {
        Ordering::Equal => {
            if f > t {
                Ordering::Less
            } else if f < t {
                Ordering::Greater
            } else {
                Ordering::Equal
            }
        }
        o => o,
    }
}

/// SQLite's order of values with the BINARY collation: NULL, then numbers
/// (integers and reals compared by value), then text, then blobs (bytewise).
pub(crate) fn sql_cmp(a: ValueRef<'_>, b: ValueRef<'_>) -> Ordering {
    match (a, b) {
        (ValueRef::Integer(x), ValueRef::Integer(y)) => x.cmp(&y),
        // -0.0 and 0.0 are equal, as for SQLite (and as each is to 0).
        (ValueRef::Real(x), ValueRef::Real(y)) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
        (ValueRef::Integer(x), ValueRef::Real(y)) => cmp_int_real(x, y),
        (ValueRef::Real(x), ValueRef::Integer(y)) => cmp_int_real(y, x).reverse(),
        (ValueRef::Text(x), ValueRef::Text(y)) | (ValueRef::Blob(x), ValueRef::Blob(y)) => x.cmp(y),
        _ => class(a).cmp(&class(b)),
    }
}

/// How `a` ranks against `b` in the direction register `kind` moves:
/// `Greater` when `a` would replace `b`. NULL ranks below every value in
/// both directions (it means "no value").
pub(crate) fn register_rank(kind: ColKind, a: ValueRef<'_>, b: ValueRef<'_>) -> Ordering {
    match (a, b) {
        (ValueRef::Null, ValueRef::Null) => Ordering::Equal,
        (ValueRef::Null, _) => Ordering::Less,
        (_, ValueRef::Null) => Ordering::Greater,
        _ if kind == ColKind::Min => sql_cmp(b, a),
        _ => sql_cmp(a, b),
    }
}

/// A counter's value as stored in its column: the base plus the
/// contributions (wrapping at the 64-bit limits, the same on every node).
pub(crate) fn counter_value(base: i64, sum: i64) -> Value {
    Value::Integer(base.wrapping_add(sum))
}

/// Adds `delta` to the contribution of `entry`'s actor to counter column
/// `col`, now owned by `entry`.
fn contribute(clock: &mut RowClock, col: u32, entry: EntryRef, delta: i64) {
    let prev = clock.slot(col, entry.actor).map_or(0, |s| s.value);
    clock.set_slot(Slot {
        col,
        entry,
        value: prev.wrapping_add(delta),
    });
}

/// The integer a counter is written with; `None` for any other value.
fn integer(v: ValueRef<'_>) -> Option<i64> {
    match v {
        ValueRef::Integer(i) => Some(i),
        _ => None,
    }
}

/// Why a local write of a commutative column is refused.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Refusal {
    /// A counter (by column index) written with something other than an
    /// integer.
    NotACount { col: usize, value: Value },
    /// A register (by column index) written with a value that would move
    /// it the wrong way: `from` is its value, `to` the value written.
    Backwards { col: usize, from: Value, to: Value },
}

fn not_a_count(col: usize, value: ValueRef<'_>) -> Refusal {
    Refusal::NotACount {
        col,
        value: Value::from_ref(value),
    }
}

/// A local write of register `col` with `new`, the value the row now
/// holds; `cur` is the value it held (the row's value before the write when
/// the register has no clock in this life: its column's default). A value
/// that ranks lower is refused; one that ranks the same or higher is
/// written (equal ranks with other bytes, `1` and `1.0`, are decided by the
/// cell clock on merge, as a plain cell).
fn write_register(
    clock: &mut RowClock,
    kind: ColKind,
    col: u32,
    new: ValueRef<'_>,
    before: ValueRef<'_>,
    entry: EntryRef,
) -> Result<(), Refusal> {
    let held = clock
        .cell(col)
        .map(|_| clock.reg(col).cloned().unwrap_or(Value::Null));
    let cur = held.clone().unwrap_or_else(|| Value::from_ref(before));
    if register_rank(kind, new, cur.as_ref()) == Ordering::Less {
        return Err(Refusal::Backwards {
            col: col as usize,
            from: cur,
            to: Value::from_ref(new),
        });
    }
    if held.is_none() || !same(new, cur.as_ref()) {
        clock.bump(col, entry);
        clock.set_reg(col, Value::from_ref(new));
    }
    Ok(())
}

/// Whether two values are the same by type and bytes.
fn same(a: ValueRef<'_>, b: ValueRef<'_>) -> bool {
    match (a, b) {
        (ValueRef::Real(x), ValueRef::Real(y)) => x.to_bits() == y.to_bits(),
        _ => a == b,
    }
}

/// The clock after a local insert by `entry` into a table with commutative
/// columns. `now`: each non-key column's value as the row holds it once the
/// insert is done (read from the table, so that a trigger of the
/// application that changed the row first is counted too; plain columns'
/// are not used). Over a live row (`INSERT OR REPLACE`, a key moved onto a
/// live one) every column is written as by an update: a counter moves by
/// the difference, a register may not move back; otherwise the row starts
/// a life whose counters hold the inserted value minus their base as this
/// actor's contribution.
pub(crate) fn local_insert(
    old: Option<&RowClock>,
    entry: EntryRef,
    kinds: &[ColKind],
    now: &[ValueRef<'_>],
    floor: Option<i64>,
) -> Result<RowClock, Refusal> {
    let ncols = kinds.len() as u32;
    if let Some(p) = old.filter(|p| p.cl % 2 == 1) {
        let mut c = p.clone();
        for (i, (&k, &new)) in kinds.iter().zip(now).enumerate() {
            let col = i as u32;
            match k {
                ColKind::Plain => c.bump(col, entry),
                ColKind::Counter { base } => {
                    let new = integer(new).ok_or_else(|| not_a_count(i, new))?;
                    let delta = new.wrapping_sub(base.wrapping_add(c.slot_sum(col)));
                    if delta != 0 {
                        contribute(&mut c, col, entry, delta);
                    }
                }
                // No value before the replace to fall back on: a register
                // without a clock takes the new value.
                ColKind::Max | ColKind::Min => {
                    write_register(&mut c, k, col, new, new, entry)?;
                }
            }
        }
        return Ok(c);
    }
    let mut c = RowClock::inserted(old, entry, ncols);
    if let Some(f) = floor {
        c = c.above_floor(f.max(0) as u64);
    }
    for (i, (&k, &new)) in kinds.iter().zip(now).enumerate() {
        let col = i as u32;
        match k {
            ColKind::Plain => {}
            ColKind::Counter { base } => {
                let delta = integer(new)
                    .ok_or_else(|| not_a_count(i, new))?
                    .wrapping_sub(base);
                if delta != 0 {
                    contribute(&mut c, col, entry, delta);
                }
            }
            ColKind::Max | ColKind::Min => c.set_reg(col, Value::from_ref(new)),
        }
    }
    Ok(c)
}

/// Records a local update of column `col` that changed it: `now` is its
/// value as the row holds it after the update (read from the table, so
/// that an application trigger that changed the row since is counted
/// too), `before` its value before.
pub(crate) fn local_update(
    clock: &mut RowClock,
    kind: ColKind,
    col: u32,
    now: ValueRef<'_>,
    before: ValueRef<'_>,
    entry: EntryRef,
) -> Result<(), Refusal> {
    match kind {
        ColKind::Plain => clock.bump(col, entry),
        ColKind::Counter { base } => {
            let now = integer(now).ok_or_else(|| not_a_count(col as usize, now))?;
            let delta = now.wrapping_sub(base.wrapping_add(clock.slot_sum(col)));
            if delta != 0 {
                contribute(clock, col, entry, delta);
            }
        }
        ColKind::Max | ColKind::Min => write_register(clock, kind, col, now, before, entry)?,
    }
    Ok(())
}

/// Merges a remote write of register `col` (`value`, cell version `cv`, by
/// `actor`) into `clock`: whether it wins. The rank of the value decides,
/// then the cell version, then the actor id — a total order, so the merge
/// is a maximum: the same whatever the order of arrival.
pub(crate) fn register_wins(
    clock: &RowClock,
    kind: ColKind,
    col: u32,
    value: &Value,
    cv: u64,
    actor: litemesh_proto::ActorId,
    local_actor: impl Fn(u64) -> Option<litemesh_proto::ActorId>,
) -> bool {
    let Some(l) = clock.cell(col) else {
        return true;
    };
    let cur = clock.reg(col).cloned().unwrap_or(Value::Null);
    match register_rank(kind, value.as_ref(), cur.as_ref()) {
        Ordering::Greater => true,
        Ordering::Less => false,
        Ordering::Equal => {
            let la = local_actor(l.entry.actor);
            Some((cv, actor)) > la.map(|a| (l.cv, a))
        }
    }
}

/// Merges a remote contribution to counter `col` by `entry` (its actor's
/// latest as of that entry): whether it replaces the one held.
pub(crate) fn merge_contribution(
    clock: &mut RowClock,
    col: u32,
    entry: EntryRef,
    value: i64,
) -> bool {
    let newer = clock
        .slot(col, entry.actor)
        .is_none_or(|s| (s.entry.version, s.entry.seq) < (entry.version, entry.seq));
    if newer {
        clock.set_slot(Slot { col, entry, value });
    }
    newer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_of_values() {
        use ValueRef::*;
        assert_eq!(sql_cmp(Integer(1), Real(1.0)), Ordering::Equal);
        assert_eq!(sql_cmp(Integer(1), Real(1.5)), Ordering::Less);
        assert_eq!(sql_cmp(Real(-0.5), Integer(-1)), Ordering::Greater);
        assert_eq!(
            sql_cmp(Integer(i64::MAX), Real(9.223372036854776e18)),
            Ordering::Less,
            "2^63 as a float is above every integer"
        );
        assert_eq!(
            sql_cmp(
                Integer(9_007_199_254_740_993),
                Real(9_007_199_254_740_992.0)
            ),
            Ordering::Greater,
            "no rounding of the integer"
        );
        assert_eq!(sql_cmp(Integer(5), Text(b"1")), Ordering::Less);
        assert_eq!(sql_cmp(Text(b"b"), Blob(b"a")), Ordering::Less);
        assert_eq!(sql_cmp(Text(b"B"), Text(b"a")), Ordering::Less);
        assert_eq!(
            register_rank(ColKind::Min, Integer(1), Integer(2)),
            Ordering::Greater
        );
        assert_eq!(
            register_rank(ColKind::Min, Null, Integer(2)),
            Ordering::Less
        );
        assert_eq!(
            register_rank(ColKind::Max, Null, Integer(2)),
            Ordering::Less
        );
        assert_eq!(
            parse_kinds("p c-5 M m c0"),
            Some(vec![
                ColKind::Plain,
                ColKind::Counter { base: -5 },
                ColKind::Max,
                ColKind::Min,
                ColKind::Counter { base: 0 }
            ])
        );
        assert_eq!(parse_kinds("x"), None);
    }
}
