//! Change capture: the SQL functions that the replication triggers call.
//!
//! Every write to a replicated table fires triggers (created by [`crate::schema`])
//! that record, in the same SQLite transaction, the row write in `__lm_log` and
//! the new cell clocks in the table's clock table. The triggers call the
//! functions below, which must be registered on every connection that writes to
//! the file: [`Store`](crate::Store) does it for its own connection, and
//! [`attach`] does it for an application's own connection. A connection without
//! them (for example the `sqlite3` shell) gets `no such function: __lm_local`
//! on any write to a replicated table: writes are refused, never unrecorded.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rusqlite::functions::FunctionFlags;
use rusqlite::types::{ToSqlOutput, Value as SqlValue, ValueRef};
use rusqlite::{Connection, Error as SqlError};

use crate::clock::{CellClock, Cells, EntryRef};
use crate::value::encode_pk;

/// Per-connection capture state: the version and entry counter of the open
/// transaction. Reset by the commit and rollback hooks.
#[derive(Debug, Default)]
pub(crate) struct CaptureState {
    /// False while the store applies remote changes (triggers then do nothing).
    pub enabled: AtomicBool,
    /// The version claimed by the open transaction, 0 if none yet.
    pub version: AtomicU64,
    /// Next entry number within the version.
    pub seq: AtomicU64,
}

impl CaptureState {
    fn reset(&self) {
        self.version.store(0, Ordering::SeqCst);
        self.seq.store(0, Ordering::SeqCst);
    }
}

fn user_err(msg: &str) -> SqlError {
    SqlError::UserFunctionError(msg.to_owned().into())
}

/// Registers the capture functions and transaction hooks on `conn`, so that it
/// can write to replicated tables of a litemesh file. Replaces any commit or
/// rollback hook already set on the connection.
pub fn attach(conn: &mut Connection) -> Result<(), crate::StorageError> {
    attach_state(conn)?;
    Ok(())
}

pub(crate) fn attach_state(conn: &mut Connection) -> rusqlite::Result<Arc<CaptureState>> {
    let state = Arc::new(CaptureState {
        enabled: AtomicBool::new(true),
        ..Default::default()
    });
    let flags = FunctionFlags::SQLITE_UTF8;
    let det = flags | FunctionFlags::SQLITE_DETERMINISTIC;

    let s = state.clone();
    conn.create_scalar_function("__lm_local", 0, flags, move |_| {
        Ok(s.enabled.load(Ordering::Relaxed))
    })?;

    let s = state.clone();
    conn.create_scalar_function("__lm_version", 0, flags, move |ctx| {
        let v = s.version.load(Ordering::Relaxed);
        if v != 0 {
            return Ok(v as i64);
        }
        // SAFETY: the connection is only used to read one row while the
        // calling statement runs, as SQLite allows from inside a function.
        let conn = unsafe { ctx.get_connection()? };
        let next: i64 = conn.query_row(crate::store::NEXT_VERSION_SQL, [], |r| r.get(0))?;
        s.version.store(next as u64, Ordering::Relaxed);
        s.seq.store(0, Ordering::Relaxed);
        Ok(next)
    })?;

    let s = state.clone();
    conn.create_scalar_function("__lm_seq", 0, flags, move |_| {
        Ok(s.seq.fetch_add(1, Ordering::Relaxed) as i64)
    })?;

    let s = state.clone();
    conn.create_scalar_function("__lm_cur_seq", 0, flags, move |_| {
        Ok(s.seq.load(Ordering::Relaxed).saturating_sub(1) as i64)
    })?;

    conn.create_scalar_function("__lm_pk", -1, det, |ctx| {
        let vals: Vec<ValueRef<'_>> = (0..ctx.len()).map(|i| ctx.get_raw(i)).collect();
        Ok(ToSqlOutput::Owned(SqlValue::Blob(encode_pk(&vals))))
    })?;

    // __lm_cells_update(cells, oc, version, seq, changed_0, changed_1, ...)
    conn.create_scalar_function("__lm_cells_update", -1, flags, |ctx| {
        if ctx.len() < 4 {
            return Err(user_err("__lm_cells_update: too few arguments"));
        }
        let (mut cells, oc, entry) = cells_args(ctx)?;
        for col in 0..ctx.len() - 4 {
            let changed: bool = ctx.get::<Option<bool>>(col + 4)?.unwrap_or(false);
            if changed {
                bump_cell(&mut cells, oc, col as u32, entry);
            }
        }
        Ok(blob_or_null(cells))
    })?;

    // __lm_cells_all(cells, oc, version, seq, ncols): every cell overwritten.
    conn.create_scalar_function("__lm_cells_all", 5, flags, |ctx| {
        let (mut cells, oc, entry) = cells_args(ctx)?;
        let ncols: i64 = ctx.get(4)?;
        for col in 0..ncols.max(0) as u32 {
            bump_cell(&mut cells, oc, col, entry);
        }
        Ok(blob_or_null(cells))
    })?;

    let s = state.clone();
    conn.commit_hook(Some(move || {
        s.reset();
        false
    }))?;
    let s = state.clone();
    conn.rollback_hook(Some(move || s.reset()))?;
    Ok(state)
}

fn cells_args(ctx: &rusqlite::functions::Context<'_>) -> rusqlite::Result<(Cells, i64, EntryRef)> {
    let blob = match ctx.get_raw(0) {
        ValueRef::Blob(b) => Some(b),
        ValueRef::Null => None,
        _ => return Err(user_err("corrupt cell clocks")),
    };
    let cells = Cells::decode(blob).ok_or_else(|| user_err("corrupt cell clocks"))?;
    let oc: i64 = ctx.get(1)?;
    let version: i64 = ctx.get(2)?;
    let seq: i64 = ctx.get(3)?;
    Ok((
        cells,
        oc,
        EntryRef {
            actor: 0,
            version: version as u64,
            seq: seq as u64,
        },
    ))
}

fn bump_cell(cells: &mut Cells, oc: i64, col: u32, entry: EntryRef) {
    let old = cells
        .get(col)
        .map(|c| c.cv)
        .unwrap_or(u64::from(i64::from(col) < oc));
    cells.set(col, CellClock { cv: old + 1, entry });
}

fn blob_or_null(cells: Cells) -> ToSqlOutput<'static> {
    match cells.encode() {
        Some(b) => ToSqlOutput::Owned(SqlValue::Blob(b)),
        None => ToSqlOutput::Owned(SqlValue::Null),
    }
}
