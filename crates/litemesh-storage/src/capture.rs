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

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use litemesh_proto::Value;
use rusqlite::functions::FunctionFlags;
use rusqlite::types::{ToSqlOutput, Value as SqlValue, ValueRef};
use rusqlite::{Connection, Error as SqlError};

use crate::clock::{EntryRef, RowClock};
use crate::log::{LogEntry, put_entry};
use crate::value::encode_pk;

/// Largest row write a node accepts: the key and the cells one write sets,
/// in bytes (text and blobs by length). A larger write is refused when it is
/// made ([`crate::StorageError::RowTooLarge`]), so that every change that commits
/// fits, whole, in one batch of [`litemesh_proto::DEFAULT_MAX_WIRE_BYTES`] on every node.
pub const MAX_ROW_WRITE_BYTES: usize = 4 * 1024 * 1024;

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
    /// The next version, read by `Store::transaction` before running the
    /// caller's statements, so the first capture needs no query (0: unknown).
    pub next_hint: AtomicU64,
    /// When set (inside [`Store::transaction`](crate::Store::transaction)),
    /// change-log entries are collected in `buffer` and written in chunks
    /// before the commit instead of one row per write.
    pub buffering: AtomicBool,
    pub buffer: Mutex<Vec<LogEntry>>,
    /// Why the capture refused the last row write (row too large, NULL key),
    /// as a typed error for [`Store::transaction`](crate::Store::transaction)
    /// to return instead of SQLite's text.
    pub refusal: Mutex<Option<crate::StorageError>>,
}

impl CaptureState {
    pub(crate) fn reset(&self) {
        self.version.store(0, Ordering::SeqCst);
        self.next_hint.store(0, Ordering::SeqCst);
        self.seq.store(0, Ordering::SeqCst);
        self.buffer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.refusal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }

    /// Takes the typed reason of the last refused row write, if any.
    pub fn take_refusal(&self) -> Option<crate::StorageError> {
        self.refusal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// `e`, or the typed refusal it carries: the reason the capture
    /// recorded, when `e` is that refusal's error (not an earlier one the
    /// caller caught and went on from).
    pub fn typed(&self, e: crate::StorageError) -> crate::StorageError {
        match self.take_refusal() {
            Some(r) if e.to_string().contains(&r.to_string()) => r,
            _ => e,
        }
    }

    /// Takes the buffered log entries.
    pub fn take_buffer(&self) -> Vec<LogEntry> {
        std::mem::take(&mut *self.buffer.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn buffer_len(&self) -> usize {
        self.buffer.lock().unwrap_or_else(|e| e.into_inner()).len()
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
        let hint = s.next_hint.load(Ordering::Relaxed);
        if hint != 0 {
            s.version.store(hint, Ordering::Relaxed);
            return Ok(hint as i64);
        }
        // SAFETY: the connection is only used to read one row while the
        // calling statement runs, as SQLite allows from inside a function.
        let conn = unsafe { ctx.get_connection()? };
        let next: i64 = conn.query_row(crate::store::NEXT_VERSION_SQL, [], |r| r.get(0))?;
        s.version.store(next as u64, Ordering::Relaxed);
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

    // __lm_buffered(table_id, table_name, npk, is_write, pk..., cells...):
    // checks a row write (is_write: an insert, an update, the new key of a
    // key change; not a delete): no NULL key, text that is valid UTF-8, the
    // key and the written cells within MAX_ROW_WRITE_BYTES, so that the
    // change fits in one sync message on every node; then, inside a store
    // transaction, buffers its log entry and returns 1; else returns 0.
    let s = state.clone();
    conn.create_scalar_function("__lm_buffered", -1, flags, move |ctx| {
        if ctx.len() < 5 {
            return Err(user_err("__lm_buffered: too few arguments"));
        }
        let tbl: i64 = ctx.get(0)?;
        let npk: usize = ctx.get::<i64>(2)?.try_into().unwrap_or(0);
        let writes: bool = ctx.get(3)?;
        if npk == 0 || 4 + npk > ctx.len() {
            return Err(user_err("__lm_buffered: bad key length"));
        }
        let mut size = 0usize;
        let mut pk = Vec::with_capacity(npk);
        for i in 4..ctx.len() {
            let v = ctx.get_raw(i);
            size += value_size(v);
            // Text that is not valid UTF-8 would not travel to peers as it
            // is stored.
            if let ValueRef::Text(t) = v
                && writes
                && std::str::from_utf8(t).is_err()
            {
                let table: String = ctx.get(1)?;
                return Err(refuse(&s, crate::StorageError::InvalidText { table }));
            }
            if i < 4 + npk {
                if v == ValueRef::Null {
                    let table: String = ctx.get(1)?;
                    return Err(refuse(&s, crate::StorageError::NullKey { table }));
                }
                pk.push(v);
            }
        }
        if size > MAX_ROW_WRITE_BYTES {
            let table: String = ctx.get(1)?;
            return Err(refuse(
                &s,
                crate::StorageError::RowTooLarge {
                    table,
                    size,
                    limit: MAX_ROW_WRITE_BYTES,
                },
            ));
        }
        if !s.buffering.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let seq = s.seq.load(Ordering::Relaxed).saturating_sub(1);
        let pk = encode_pk(&pk);
        s.buffer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(LogEntry { seq, tbl, pk });
        Ok(true)
    })?;

    // __lm_entry(table_id, pk...): the one-entry log chunk of the current row write.
    let s = state.clone();
    conn.create_scalar_function("__lm_entry", -1, flags, move |ctx| {
        let (tbl, pk) = entry_args(ctx)?;
        let seq = s.seq.load(Ordering::Relaxed).saturating_sub(1);
        let mut out = Vec::with_capacity(pk.len() + 8);
        put_entry(&mut out, seq, seq, tbl, &pk);
        Ok(ToSqlOutput::Owned(SqlValue::Blob(out)))
    })?;

    // __lm_clk_insert(old_clock, actor, version, seq, ncols, floor): the clock
    // after a local insert; `floor` (NULL: none) is the table's collection
    // floor, which a new life starts above.
    conn.create_scalar_function("__lm_clk_insert", 6, flags, |ctx| {
        let old = clock_arg(ctx, 0)?;
        let entry = entry_arg(ctx, 1)?;
        let ncols: u32 = ctx.get(4)?;
        let clock = RowClock::inserted(old.as_ref(), entry, ncols);
        Ok(match ctx.get::<Option<i64>>(5)? {
            // A new life (no clock, or a tombstone) starts above the floor.
            Some(floor) if old.as_ref().is_none_or(|o| o.cl % 2 == 0) => {
                clock.above_floor(floor.max(0) as u64)
            }
            _ => clock,
        }
        .encode())
    })?;

    // __lm_differ(new_0, old_0, new_1, old_1, ...): whether any pair differs
    // by type or bytes. (Not by collation or numeric equality: 'abc' to
    // 'ABC' under NOCASE, or 1 to 1.0, are changes that must replicate.)
    conn.create_scalar_function("__lm_differ", -1, flags, |ctx| {
        let mut i = 0;
        while i + 1 < ctx.len() {
            if !same(ctx.get_raw(i), ctx.get_raw(i + 1)) {
                return Ok(true);
            }
            i += 2;
        }
        Ok(false)
    })?;

    // __lm_clk_update(clock, actor, version, seq, table_name, npk, pk...,
    // new_0, old_0, new_1, old_1, ...): checks the cells the update changes
    // (text that is valid UTF-8; with the key, within MAX_ROW_WRITE_BYTES)
    // and returns the clock after the update, every changed cell bumped.
    let s = state.clone();
    conn.create_scalar_function("__lm_clk_update", -1, flags, move |ctx| {
        if ctx.len() < 6 {
            return Err(user_err("__lm_clk_update: too few arguments"));
        }
        let entry = entry_arg(ctx, 1)?;
        let npk: usize = ctx.get::<i64>(5)?.try_into().unwrap_or(0);
        update_clock(ctx, &s, 4, 6, npk, |clock, col, _, _| {
            clock.bump(col, entry);
            Ok(())
        })
        .map_err(|e| match e {
            UpdateError::Sql(e) => e,
            UpdateError::Refused(_) => user_err("__lm_clk_update: unexpected refusal"),
        })
    })?;

    // __lm_clk_insert_k(old_clock, actor, version, seq, ncols, floor, table,
    // kinds, names, now_0, …): `__lm_clk_insert` for a table with
    // commutative columns (see commute.rs): `kinds` names each non-key
    // column's kind, `names` their names (for errors), then each column's
    // value as the row now holds it (NULL for plain columns: unused).
    let s = state.clone();
    conn.create_scalar_function("__lm_clk_insert_k", -1, flags, move |ctx| {
        if ctx.len() < 9 {
            return Err(user_err("__lm_clk_insert_k: too few arguments"));
        }
        let old = clock_arg(ctx, 0)?;
        let entry = entry_arg(ctx, 1)?;
        let floor: Option<i64> = ctx.get(5)?;
        let kinds = kinds_arg(ctx, 7, ctx.len() - 9)?;
        let now: Vec<ValueRef<'_>> = (9..ctx.len()).map(|i| ctx.get_raw(i)).collect();
        match crate::commute::local_insert(old.as_ref(), entry, &kinds, &now, floor) {
            Ok(clock) => Ok(clock.encode()),
            Err(r) => Err(refuse(&s, refusal(ctx, 6, 8, r)?)),
        }
    })?;

    // __lm_clk_update_k(clock, actor, version, seq, table_name, kinds, names,
    // npk, pk..., now_0, old_0, ...): `__lm_clk_update` for a table with
    // commutative columns; `now_i` is the column's value as the row now
    // holds it (read from the table for commutative columns).
    let s = state.clone();
    conn.create_scalar_function("__lm_clk_update_k", -1, flags, move |ctx| {
        if ctx.len() < 8 {
            return Err(user_err("__lm_clk_update_k: too few arguments"));
        }
        let npk: usize = ctx.get::<i64>(7)?.try_into().unwrap_or(0);
        let first = 8 + npk;
        if first > ctx.len() || !(ctx.len() - first).is_multiple_of(2) {
            return Err(user_err("__lm_clk_update_k: bad arguments"));
        }
        let kinds = kinds_arg(ctx, 5, (ctx.len() - first) / 2)?;
        let entry = entry_arg(ctx, 1)?;
        let clock = update_clock(ctx, &s, 4, 8, npk, |clock, col, now, before| {
            crate::commute::local_update(clock, kinds[col as usize], col, now, before, entry)
        });
        match clock {
            Ok(c) => Ok(c),
            Err(UpdateError::Sql(e)) => Err(e),
            Err(UpdateError::Refused(r)) => Err(refuse(&s, refusal(ctx, 4, 6, r)?)),
        }
    })?;

    // __lm_clk_delete(clock, actor, version, seq): the clock after a local delete.
    conn.create_scalar_function("__lm_clk_delete", 4, flags, |ctx| {
        let clock = clock_arg(ctx, 0)?.ok_or_else(|| user_err("missing row clock"))?;
        Ok(clock.deleted(entry_arg(ctx, 1)?).encode())
    })?;

    let s = state.clone();
    conn.commit_hook(Some(move || {
        // Entries still buffered would be lost by this commit: refuse it.
        let lost = s.buffer_len() > 0;
        if lost {
            tracing::error!(
                "commit with unwritten change-log entries refused; end store transactions through Store::transaction"
            );
        }
        s.reset();
        lost
    }))?;
    let s = state.clone();
    conn.rollback_hook(Some(move || s.reset()))?;
    Ok(state)
}

fn entry_args(ctx: &rusqlite::functions::Context<'_>) -> rusqlite::Result<(i64, Vec<u8>)> {
    if ctx.len() < 2 {
        return Err(user_err("log entry: table id and key expected"));
    }
    let tbl: i64 = ctx.get(0)?;
    let vals: Vec<ValueRef<'_>> = (1..ctx.len()).map(|i| ctx.get_raw(i)).collect();
    Ok((tbl, encode_pk(&vals)))
}

fn clock_arg(
    ctx: &rusqlite::functions::Context<'_>,
    i: usize,
) -> rusqlite::Result<Option<RowClock>> {
    match ctx.get_raw(i) {
        ValueRef::Null => Ok(None),
        ValueRef::Blob(b) => RowClock::decode(b)
            .map(Some)
            .ok_or_else(|| user_err("corrupt row clock")),
        _ => Err(user_err("corrupt row clock")),
    }
}

/// A local entry from (actor index, version, seq) arguments at `i`..`i + 2`.
fn entry_arg(ctx: &rusqlite::functions::Context<'_>, i: usize) -> rusqlite::Result<EntryRef> {
    let actor: i64 = ctx.get(i)?;
    let version: i64 = ctx.get(i + 1)?;
    let seq: i64 = ctx.get(i + 2)?;
    Ok(EntryRef {
        actor: actor as u64,
        version: version as u64,
        seq: seq as u64,
    })
}

/// Whether two values are the same by type and bytes (a REAL by its bits).
fn same(a: ValueRef<'_>, b: ValueRef<'_>) -> bool {
    match (a, b) {
        (ValueRef::Null, ValueRef::Null) => true,
        (ValueRef::Integer(x), ValueRef::Integer(y)) => x == y,
        (ValueRef::Real(x), ValueRef::Real(y)) => x.to_bits() == y.to_bits(),
        (ValueRef::Text(x), ValueRef::Text(y)) | (ValueRef::Blob(x), ValueRef::Blob(y)) => x == y,
        _ => false,
    }
}

/// Bytes a value takes in a change (as counted against the row limit).
fn value_size(v: ValueRef<'_>) -> usize {
    match v {
        ValueRef::Null => 1,
        ValueRef::Integer(_) | ValueRef::Real(_) => 9,
        ValueRef::Text(b) | ValueRef::Blob(b) => b.len() + 5,
    }
}

/// Records a typed refusal and returns the SQL error that carries its text.
fn refuse(state: &CaptureState, e: crate::StorageError) -> SqlError {
    let msg = e.to_string();
    *state.refusal.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
    SqlError::UserFunctionError(msg.into())
}

/// Why [`update_clock`] failed.
enum UpdateError {
    Sql(SqlError),
    /// A write of a commutative column refused.
    Refused(crate::commute::Refusal),
}

impl From<SqlError> for UpdateError {
    fn from(e: SqlError) -> Self {
        UpdateError::Sql(e)
    }
}

/// The body of the update clock functions: the clock is argument 0, the
/// table's name argument `name_at`, the key `npk` values from `pk_at`, then
/// pairs of (new, old) values by column. Checks every changed cell (valid
/// UTF-8; with the key, within [`MAX_ROW_WRITE_BYTES`]) and records it with
/// `write(clock, column, new, old)`.
fn update_clock(
    ctx: &rusqlite::functions::Context<'_>,
    s: &CaptureState,
    name_at: usize,
    pk_at: usize,
    npk: usize,
    mut write: impl FnMut(
        &mut RowClock,
        u32,
        ValueRef<'_>,
        ValueRef<'_>,
    ) -> Result<(), crate::commute::Refusal>,
) -> Result<Vec<u8>, UpdateError> {
    let mut clock = clock_arg(ctx, 0)?.ok_or_else(|| user_err("missing row clock"))?;
    let first = pk_at + npk;
    if first > ctx.len() || !(ctx.len() - first).is_multiple_of(2) {
        return Err(user_err("update clock: bad arguments").into());
    }
    let mut size: usize = (pk_at..first).map(|i| value_size(ctx.get_raw(i))).sum();
    let mut col = 0u32;
    let mut i = first;
    while i + 1 < ctx.len() {
        let (new, old) = (ctx.get_raw(i), ctx.get_raw(i + 1));
        if !same(new, old) {
            if let ValueRef::Text(t) = new
                && std::str::from_utf8(t).is_err()
            {
                let table: String = ctx.get(name_at)?;
                return Err(refuse(s, crate::StorageError::InvalidText { table }).into());
            }
            size += value_size(new);
            write(&mut clock, col, new, old).map_err(UpdateError::Refused)?;
        }
        col += 1;
        i += 2;
    }
    if size > MAX_ROW_WRITE_BYTES {
        let table: String = ctx.get(name_at)?;
        return Err(refuse(
            s,
            crate::StorageError::RowTooLarge {
                table,
                size,
                limit: MAX_ROW_WRITE_BYTES,
            },
        )
        .into());
    }
    Ok(clock.encode())
}

/// The column kinds argument at `i`, for `ncols` columns.
fn kinds_arg(
    ctx: &rusqlite::functions::Context<'_>,
    i: usize,
    ncols: usize,
) -> rusqlite::Result<Vec<crate::commute::ColKind>> {
    let text: String = ctx.get(i)?;
    crate::commute::parse_kinds(&text)
        .filter(|k| k.len() == ncols)
        .ok_or_else(|| user_err("column kinds do not match the values"))
}

/// The typed error of a refused write of a commutative column: the table's
/// name is argument `table_at`, the columns' names (joined by U+001F)
/// argument `names_at`.
fn refusal(
    ctx: &rusqlite::functions::Context<'_>,
    table_at: usize,
    names_at: usize,
    r: crate::commute::Refusal,
) -> rusqlite::Result<crate::StorageError> {
    use crate::commute::Refusal;
    let table: String = ctx.get(table_at)?;
    let names: String = ctx.get(names_at)?;
    let name = |col: usize| names.split('\u{1f}').nth(col).unwrap_or("?").to_string();
    Ok(match r {
        Refusal::NotACount { col, value } => crate::StorageError::NotACount {
            table,
            column: name(col),
            value: match value {
                Value::Real(_) => format!(
                    "{} (a REAL; a sum beyond the 64-bit range becomes one)",
                    describe(&value)
                ),
                Value::Text(_) => format!("{} (TEXT)", describe(&value)),
                _ => describe(&value),
            },
        },
        Refusal::Backwards { col, from, to } => crate::StorageError::RegisterBackwards {
            table,
            column: name(col),
            from: describe(&from),
            to: describe(&to),
        },
    })
}

/// A value as an error message shows it.
fn describe(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::Integer(i) => i.to_string(),
        Value::Real(f) => format!("{f:?}"),
        Value::Text(t) if t.len() <= 40 => format!("{t:?}"),
        Value::Text(t) => format!("{:?}…", t.chars().take(40).collect::<String>()),
        Value::Blob(b) => format!("a blob of {} bytes", b.len()),
    }
}
