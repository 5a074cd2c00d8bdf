//! The sandbox of statements run for clients (the node's HTTP API and
//! `Node::execute` / `Node::query`), and the limits on how long they run.
//!
//! SQLite calls an *authorizer* for every table, column, function, pragma and
//! statement kind a statement touches, when the statement is compiled —
//! including the statements of triggers and views it fires. Every connection
//! of a store has one installed for good ([`ConnGuard::install`]); it allows
//! everything while the store runs its own statements, and applies a policy
//! while a client's statement is compiled:
//!
//! - a **transaction** may read the tables and views of the main database and
//!   write (INSERT, UPDATE, DELETE) the replicated tables, nothing else: no
//!   DDL, no transaction control, no ATTACH/DETACH, no PRAGMA, no access to
//!   litemesh's own tables (`__lm_*`) or functions;
//! - a **query** may only read them, with a few read-only introspection
//!   pragmas (`table_info`, `index_list`, ...).
//!
//! Statements that triggers and views of the schema run on the client's behalf
//! (the capture triggers above all) are the schema's, not the client's, and
//! are allowed: only the operator, through the schema files or the embedding
//! application, can create them.
//!
//! A refused statement fails to compile, so it changes nothing. A progress
//! handler stops any statement that runs past its deadline, whose client went
//! away, or that is running when the node shuts down.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::{Connection, OpenFlags, params_from_iter};

use crate::error::{Interruption, Result, StorageError};
use crate::schema::TableMeta;
use litemesh_proto::Value;

/// The store's own statements: everything allowed.
const TRUSTED: u8 = 0;
/// A client's write transaction is being compiled.
const CLIENT_TX: u8 = 1;
/// A client's query is being compiled.
const CLIENT_QUERY: u8 = 2;

/// VM instructions between two checks of the deadline and cancel flags.
const PROGRESS_OPS: i32 = 4000;

/// Largest string or blob a client statement may build (SQLite's own default
/// is 1 GB, which a single `randomblob()` call could allocate).
const CLIENT_MAX_LENGTH: i32 = 32 * 1024 * 1024;

/// Pragmas a query may run: read-only introspection. (`table_info(t)` and the
/// like take a table name as their argument; the others must have none.)
const QUERY_PRAGMAS_WITH_ARG: &[&str] = &[
    "table_info",
    "table_xinfo",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
    "table_list",
];
const QUERY_PRAGMAS_NO_ARG: &[&str] = &[
    "table_list",
    "collation_list",
    "function_list",
    "pragma_list",
    "module_list",
    "data_version",
    "user_version",
    "schema_version",
    "application_id",
    "page_count",
    "page_size",
    "freelist_count",
    "encoding",
    "compile_options",
];

/// Virtual tables that expose the file's pages or the connection's state.
const UNREADABLE: &[&str] = &["dbstat", "sqlite_dbpage", "sqlite_stmt"];

/// Functions never allowed in client statements.
const DENIED_FUNCTIONS: &[&str] = &["load_extension", "fts3_tokenizer", "sqlite_offset"];

/// Limits of a statement run for a client.
#[derive(Debug, Clone, Default)]
pub struct ClientLimits {
    /// Time limit, counted from `started`.
    pub timeout: Option<Duration>,
    /// When the time limit started to run (default: when the statement
    /// starts; a query that waited for a connection counts from the request).
    pub started: Option<Instant>,
    /// Set to stop the statement (e.g. its client went away).
    pub cancel: Option<Arc<AtomicBool>>,
    /// The statement runs for another node (a forwarded query): it may
    /// only read tables that node may hold too.
    pub on_behalf_of: Option<litemesh_proto::Entitlement>,
}

#[derive(Debug, Default)]
struct Policy {
    /// Lower-cased names of the replicated tables.
    writable: HashSet<String>,
    /// Pinned tables, and what this node may hold.
    placement: litemesh_proto::Placement,
    own: litemesh_proto::Entitlement,
}

#[derive(Debug)]
struct Running {
    deadline: Option<(Instant, Duration)>,
    cancel: Option<Arc<AtomicBool>>,
    on_behalf_of: Option<litemesh_proto::Entitlement>,
}

/// Per-connection state of the authorizer and the progress handler.
#[derive(Debug, Default)]
pub(crate) struct ConnGuard {
    mode: AtomicU8,
    policy: RwLock<Policy>,
    refusal: Mutex<Option<String>>,
    running: Mutex<Option<Running>>,
    interrupted: Mutex<Option<Interruption>>,
    stop: Mutex<Option<Arc<AtomicBool>>>,
}

impl ConnGuard {
    /// Installs the authorizer and the progress handler on `conn` for good.
    pub(crate) fn install(conn: &mut Connection) -> Result<Arc<ConnGuard>> {
        let guard = Arc::new(ConnGuard::default());
        guard.install_on(conn)?;
        Ok(guard)
    }

    /// Installs this guard on one more connection of the same store (its
    /// merge connection), which never runs two statements at once with the
    /// first: the stop flag and the limits then apply to both.
    pub(crate) fn install_on(self: &Arc<Self>, conn: &mut Connection) -> Result<()> {
        let g = self.clone();
        conn.authorizer(Some(move |ctx: AuthContext<'_>| g.authorize(ctx)))?;
        let g = self.clone();
        conn.progress_handler(PROGRESS_OPS, Some(move || g.should_stop()))?;
        Ok(())
    }

    /// Re-reads which tables a client may read and write.
    pub(crate) fn set_schema(
        &self,
        conn: &Connection,
        tables: &HashMap<String, Arc<TableMeta>>,
    ) -> Result<()> {
        self.set_schema_names(conn, tables.keys().map(String::as_str))
    }

    /// Sets the placement the policy enforces: tables this node may not
    /// hold can be neither read nor written by clients.
    pub(crate) fn set_placement(
        &self,
        placement: litemesh_proto::Placement,
        own: litemesh_proto::Entitlement,
    ) {
        let mut p = self.policy.write().unwrap_or_else(|e| e.into_inner());
        p.placement = placement;
        p.own = own;
    }

    fn set_schema_names<'a>(
        &self,
        _conn: &Connection,
        writable: impl Iterator<Item = &'a str>,
    ) -> Result<()> {
        let mut p = self.policy.write().unwrap_or_else(|e| e.into_inner());
        p.writable = writable.map(str::to_ascii_lowercase).collect();
        Ok(())
    }

    /// Sets the flag that stops every statement of this connection (node
    /// shutdown).
    pub(crate) fn set_stop_flag(&self, flag: Arc<AtomicBool>) {
        *self.stop.lock().unwrap_or_else(|e| e.into_inner()) = Some(flag);
    }

    fn should_stop(&self) -> bool {
        let stopping = self
            .stop
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Relaxed));
        let why = if stopping {
            Some(Interruption::ShuttingDown)
        } else {
            let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            match running.as_ref() {
                Some(r) if r.cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed)) => {
                    Some(Interruption::Cancelled)
                }
                Some(Running {
                    deadline: Some((at, limit)),
                    ..
                }) if Instant::now() >= *at => Some(Interruption::TimedOut(*limit)),
                _ => None,
            }
        };
        match why {
            Some(w) => {
                *self.interrupted.lock().unwrap_or_else(|e| e.into_inner()) = Some(w);
                true
            }
            None => false,
        }
    }

    /// Starts the limits of a client statement; they end when the returned
    /// value is dropped.
    pub(crate) fn limits(&self, l: &ClientLimits) -> LimitsOn<'_> {
        *self.interrupted.lock().unwrap_or_else(|e| e.into_inner()) = None;
        *self.running.lock().unwrap_or_else(|e| e.into_inner()) = Some(Running {
            deadline: l
                .timeout
                .map(|t| (l.started.unwrap_or_else(Instant::now) + t, t)),
            cancel: l.cancel.clone(),
            on_behalf_of: l.on_behalf_of.clone(),
        });
        LimitsOn(self)
    }

    /// Compiles what follows under the client policy `mode` until the
    /// returned value is dropped.
    fn client_mode(&self, mode: u8) -> ModeOn<'_> {
        *self.refusal.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let before = self.mode.swap(mode, Ordering::SeqCst);
        ModeOn(self, before)
    }

    /// Turns SQLite's "not authorized" and "interrupted" into the typed
    /// reason recorded when they happened.
    pub(crate) fn map_err(&self, e: rusqlite::Error) -> StorageError {
        let denied = match &e {
            rusqlite::Error::SqliteFailure(f, msg) => {
                f.code == rusqlite::ErrorCode::AuthorizationForStatementDenied
                    || msg
                        .as_deref()
                        .is_some_and(|m| m.starts_with("not authorized"))
            }
            rusqlite::Error::SqlInputError { error, msg, .. } => {
                error.code == rusqlite::ErrorCode::AuthorizationForStatementDenied
                    || msg.starts_with("not authorized")
            }
            _ => false,
        };
        if denied {
            let why = self
                .refusal
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            return StorageError::Refused(why.unwrap_or_else(|| "statement not allowed".into()));
        }
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::AuthorizationForStatementDenied) => {
                let why = self
                    .refusal
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take();
                StorageError::Refused(why.unwrap_or_else(|| "statement not allowed".into()))
            }
            Some(rusqlite::ErrorCode::OperationInterrupted) => {
                let why = self
                    .interrupted
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take();
                StorageError::Interrupted(why.unwrap_or(Interruption::Cancelled))
            }
            _ => StorageError::Sqlite(e),
        }
    }

    /// The typed form of an error raised while the limits were on.
    pub(crate) fn map_storage_err(&self, e: StorageError) -> StorageError {
        match e {
            StorageError::Sqlite(e) => self.map_err(e),
            other => other,
        }
    }

    fn authorize(&self, ctx: AuthContext<'_>) -> Authorization {
        let mode = self.mode.load(Ordering::SeqCst);
        if mode == TRUSTED {
            return Authorization::Allow;
        }
        let policy = self.policy.read().unwrap_or_else(|e| e.into_inner());
        let placed = match ctx.action {
            AuthAction::Read { table_name, .. }
            | AuthAction::Insert { table_name }
            | AuthAction::Update { table_name, .. }
            | AuthAction::Delete { table_name } => self.placed(&policy, table_name),
            _ => Ok(()),
        };
        // Inside litemesh's own triggers (the capture of a client's write):
        // their statements are litemesh's. SQLite names the trigger as the
        // accessor — but also a subquery's alias or a CTE's name, which the
        // client chooses: a client statement naming anything `__lm_*` is
        // refused before it is compiled (`check_names`), so an accessor
        // with that prefix is one of litemesh's triggers.
        // Queries are read-only: no trigger ever runs in one.
        let ours = mode == CLIENT_TX && ctx.accessor.is_some_and(internal);
        match placed.and_then(|()| {
            if ours {
                Ok(())
            } else {
                decide(mode, &policy, &ctx)
            }
        }) {
            Ok(()) => Authorization::Allow,
            Err(why) => {
                // The first refusal names what the client asked for (SQLite
                // may ask about more once it has been told no).
                self.refusal
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert(why);
                Authorization::Deny
            }
        }
    }
}

impl ConnGuard {
    /// Refuses access to a table this node (or the node a statement runs
    /// for) may not hold.
    fn placed(&self, p: &Policy, table: &str) -> std::result::Result<(), String> {
        if p.placement.is_empty() && p.own.carried.is_none() {
            return Ok(());
        }
        // A table's clocks are its rows' keys: placed with it.
        let lower = table.to_ascii_lowercase();
        let table = lower.strip_prefix("__lm_clk_").unwrap_or(table);
        if lower.starts_with("sqlite_stat") {
            let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            if running.as_ref().is_some_and(|r| r.on_behalf_of.is_some()) {
                // Statistics of every table (row counts, sampled keys):
                // not for another node.
                return Err(format!("{table:?} cannot be read by another node"));
            }
        }
        if !p.placement.may_hold(&p.own, table) {
            return Err(crate::placement::not_here(&p.placement, &p.own, table));
        }
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ent) = running.as_ref().and_then(|r| r.on_behalf_of.as_ref())
            && !p.placement.allows(ent, table)
        {
            return Err(format!(
                "the requesting node may not read {}",
                crate::placement::not_here(&p.placement, ent, table)
            ));
        }
        Ok(())
    }
}

/// Ends a client statement's limits.
pub(crate) struct LimitsOn<'a>(&'a ConnGuard);

impl Drop for LimitsOn<'_> {
    fn drop(&mut self) {
        *self.0.running.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// Ends a client compilation mode.
struct ModeOn<'a>(&'a ConnGuard, u8);

impl Drop for ModeOn<'_> {
    fn drop(&mut self) {
        self.0.mode.store(self.1, Ordering::SeqCst);
    }
}

fn internal(name: &str) -> bool {
    name.to_ascii_lowercase().starts_with("__lm_")
}

const DDL: &str = "schema changes (CREATE, DROP, ALTER, REINDEX, ANALYZE) are not allowed through \
the API: declare replicated tables and indexes in the schema files (--schema) and restart the node";

/// The policy: `Ok` if a client statement may do `ctx.action`.
fn decide(mode: u8, p: &Policy, ctx: &AuthContext<'_>) -> std::result::Result<(), String> {
    let main = ctx.database_name.is_none_or(|d| d == "main" || d == "temp");
    match ctx.action {
        AuthAction::Select | AuthAction::Recursive => Ok(()),
        AuthAction::Read { table_name, .. } => {
            if internal(table_name) {
                Err(format!(
                    "{table_name:?} is one of litemesh's own tables (__lm_*): clients can neither read nor write them"
                ))
            } else if !main {
                Err(format!(
                    "only the node's main database can be read ({table_name:?} is in {:?})",
                    ctx.database_name.unwrap_or("")
                ))
            } else if UNREADABLE.contains(&table_name.to_ascii_lowercase().as_str()) {
                Err(format!("{table_name:?} cannot be read through the API"))
            } else {
                // Tables and views of the main database, and the names a
                // statement gives its own subqueries (CTEs).
                Ok(())
            }
        }
        AuthAction::Insert { table_name }
        | AuthAction::Update { table_name, .. }
        | AuthAction::Delete { table_name } => {
            let schema_table = ["sqlite_master", "sqlite_schema", "sqlite_temp_master"]
                .contains(&table_name.to_ascii_lowercase().as_str());
            if schema_table {
                Err(DDL.into())
            } else if mode == CLIENT_QUERY {
                Err("a query is read-only: send writes as a transaction".into())
            } else if internal(table_name) {
                Err(format!(
                    "{table_name:?} is one of litemesh's own tables (__lm_*): clients can neither read nor write them"
                ))
            } else if main && p.writable.contains(&table_name.to_ascii_lowercase()) {
                Ok(())
            } else {
                Err(format!(
                    "{table_name:?} is not a replicated table: the API writes replicated tables only \
                     (declared in the schema files)"
                ))
            }
        }
        AuthAction::Function { function_name } => {
            let f = function_name.to_ascii_lowercase();
            if internal(&f) || DENIED_FUNCTIONS.contains(&f.as_str()) {
                Err(format!("function {function_name}() is not allowed"))
            } else {
                Ok(())
            }
        }
        AuthAction::Pragma {
            pragma_name,
            pragma_value,
        } => {
            let name = pragma_name.to_ascii_lowercase();
            let ok = mode == CLIENT_QUERY
                && main
                && match pragma_value {
                    None => QUERY_PRAGMAS_NO_ARG.contains(&name.as_str()),
                    Some(_) => QUERY_PRAGMAS_WITH_ARG.contains(&name.as_str()),
                };
            if ok {
                Ok(())
            } else if mode == CLIENT_QUERY {
                Err(format!(
                    "PRAGMA {pragma_name} is not allowed: queries may run only read-only \
                     introspection pragmas (table_info, table_xinfo, index_list, index_info, \
                     index_xinfo, foreign_key_list, table_list, ...)"
                ))
            } else {
                Err(format!(
                    "PRAGMA {pragma_name} is not allowed in a transaction: pragmas would change \
                     the node's connection or file, not replicated data"
                ))
            }
        }
        AuthAction::Transaction { .. } | AuthAction::Savepoint { .. } => Err(
            "transaction control (BEGIN, COMMIT, ROLLBACK, SAVEPOINT, RELEASE) is not allowed: \
             each request already runs as exactly one transaction"
                .into(),
        ),
        AuthAction::Attach { .. } | AuthAction::Detach { .. } => Err(
            "ATTACH and DETACH are not allowed: the API reads and writes this node's database only"
                .into(),
        ),
        AuthAction::CreateIndex { .. }
        | AuthAction::CreateTable { .. }
        | AuthAction::CreateTempIndex { .. }
        | AuthAction::CreateTempTable { .. }
        | AuthAction::CreateTempTrigger { .. }
        | AuthAction::CreateTempView { .. }
        | AuthAction::CreateTrigger { .. }
        | AuthAction::CreateView { .. }
        | AuthAction::DropIndex { .. }
        | AuthAction::DropTable { .. }
        | AuthAction::DropTempIndex { .. }
        | AuthAction::DropTempTable { .. }
        | AuthAction::DropTempTrigger { .. }
        | AuthAction::DropTempView { .. }
        | AuthAction::DropTrigger { .. }
        | AuthAction::DropView { .. }
        | AuthAction::AlterTable { .. }
        | AuthAction::Reindex { .. }
        | AuthAction::Analyze { .. }
        | AuthAction::CreateVtable { .. }
        | AuthAction::DropVtable { .. } => Err(DDL.into()),
        _ => Err("this kind of statement is not allowed through the API".into()),
    }
}

/// Bounds the strings and blobs client statements build while alive
/// (restores SQLite's default when dropped).
pub(crate) struct LengthLimit<'a>(&'a Connection);

impl<'a> LengthLimit<'a> {
    pub(crate) fn on(conn: &'a Connection) -> LengthLimit<'a> {
        let _ = conn.set_limit(
            rusqlite::limits::Limit::SQLITE_LIMIT_LENGTH,
            CLIENT_MAX_LENGTH,
        );
        LengthLimit(conn)
    }
}

impl Drop for LengthLimit<'_> {
    fn drop(&mut self) {
        let _ = self
            .0
            .set_limit(rusqlite::limits::Limit::SQLITE_LIMIT_LENGTH, 1_000_000_000);
    }
}

/// One client transaction on the writer (see [`crate::Store::client_transaction`]).
pub struct ClientTx<'a> {
    pub(crate) tx: &'a rusqlite::Transaction<'a>,
    pub(crate) guard: &'a ConnGuard,
}

impl ClientTx<'_> {
    /// Runs one client statement (with positional parameters) under the
    /// sandbox; returns the rows it changed. Exactly one statement: trailing
    /// statements are refused.
    pub fn execute(&self, sql: &str, params: &[Value]) -> Result<usize> {
        let _mode = self.guard.client_mode(CLIENT_TX);
        (|| -> Result<usize> {
            // Cached under a key no statement of the store's own has (they
            // never start with a comment; the cache trims white space, not
            // comments), so that a client can never reach a statement
            // compiled outside the sandbox. A cached client statement was
            // authorized when compiled, and is compiled again, under the
            // client policy, if the schema changes.
            check_names(sql)?;
            let key = format!("{CLIENT_KEY}{sql}");
            let mut stmt = self
                .tx
                .prepare_cached(&key)
                .map_err(|e| self.guard.map_err(unprefix(e)))?;
            check_params(&stmt, params)?;
            if stmt.column_count() == 0 {
                return stmt
                    .execute(params_from_iter(params.iter()))
                    .map_err(|e| self.guard.map_err(e));
            }
            // A statement that returns rows (a SELECT, or a write with
            // RETURNING): run it to the end; its rows are not returned.
            let readonly = stmt.readonly();
            let mut rows = stmt
                .query(params_from_iter(params.iter()))
                .map_err(|e| self.guard.map_err(e))?;
            let mut returned = 0usize;
            while rows.next().map_err(|e| self.guard.map_err(e))?.is_some() {
                returned += 1;
            }
            Ok(if readonly { 0 } else { returned })
        })()
    }
}

/// The prefix of the statement-cache keys of client statements.
const CLIENT_KEY: &str = "/*client*/";

/// An error about a prefixed statement, as about the client's own text.
fn unprefix(e: rusqlite::Error) -> rusqlite::Error {
    match e {
        rusqlite::Error::SqlInputError {
            error,
            msg,
            sql,
            offset,
        } => rusqlite::Error::SqlInputError {
            error,
            msg,
            sql: sql
                .strip_prefix(CLIENT_KEY)
                .map(str::to_string)
                .unwrap_or(sql),
            offset: (offset - CLIENT_KEY.len() as i32).max(0),
        },
        other => other,
    }
}

/// What a query produced, for [`ReadConnection::query`].
pub trait RowSink {
    /// The result's column names, before any row. `false` stops the query.
    fn columns(&mut self, names: Vec<String>) -> Result<bool>;
    /// One row. `false` stops the query (the rest is not read).
    fn row(&mut self, values: Vec<Value>) -> Result<bool>;
}

/// A read-only connection for client queries, sandboxed for good.
pub struct ReadConnection {
    conn: Connection,
    guard: Arc<ConnGuard>,
}

impl std::fmt::Debug for ReadConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadConnection").finish()
    }
}

impl ReadConnection {
    /// Opens `path` read-only for client queries.
    pub fn open(path: impl AsRef<Path>) -> Result<ReadConnection> {
        let mut conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.set_prepared_statement_cache_capacity(64);
        conn.set_limit(rusqlite::limits::Limit::SQLITE_LIMIT_ATTACHED, 0)?;
        conn.set_limit(
            rusqlite::limits::Limit::SQLITE_LIMIT_LENGTH,
            CLIENT_MAX_LENGTH,
        )?;
        conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
        // Statements on replicated tables name the capture functions (in
        // their triggers) even when they are refused as writes.
        crate::attach(&mut conn)?;
        let guard = ConnGuard::install(&mut conn)?;
        let mut rc = ReadConnection { conn, guard };
        rc.refresh()?;
        rc.guard.mode.store(CLIENT_QUERY, Ordering::SeqCst);
        Ok(rc)
    }

    /// Re-reads which tables and views exist (after a schema change).
    pub fn refresh(&mut self) -> Result<()> {
        let writable: Vec<String> = Vec::new();
        self.guard
            .set_schema_names(&self.conn, writable.iter().map(String::as_str))
    }

    /// Sets the placement this connection enforces (see
    /// [`Store::set_entitlement`](crate::Store::set_entitlement)): queries
    /// of tables this node may not hold are refused, naming where they live.
    pub fn set_placement(
        &self,
        placement: litemesh_proto::Placement,
        own: litemesh_proto::Entitlement,
    ) {
        self.guard.set_placement(placement, own);
    }

    /// Sets the flag that stops any query of this connection (node shutdown).
    pub fn set_stop_flag(&self, flag: Arc<AtomicBool>) {
        self.guard.set_stop_flag(flag);
    }

    /// Runs one read-only statement under the sandbox and `limits`, handing
    /// its columns and rows to `sink`. No transaction stays open afterwards.
    pub fn query(
        &mut self,
        sql: &str,
        params: &[Value],
        limits: &ClientLimits,
        sink: &mut dyn RowSink,
    ) -> Result<()> {
        *self.guard.refusal.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let res = {
            let _limits = self.guard.limits(limits);
            let res = run_query(&self.conn, sql, params, sink, limits.on_behalf_of.is_some());
            res.map_err(|e| self.guard.map_storage_err(e))
        };
        if !self.conn.is_autocommit() {
            // The authorizer refuses transaction control, so this is only a
            // second line of defence: a read transaction left open would pin
            // old data for every later query and let the WAL grow.
            tracing::error!("a query left a transaction open; rolling it back");
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        res
    }
}

/// Refuses a client statement that names anything `__lm_*` (litemesh's own
/// tables, functions and triggers): outside string literals, whatever the
/// quoting. Clients never need those names, and refusing them up front
/// keeps the authorizer's view of "inside a litemesh trigger" trustworthy.
pub(crate) fn check_names(sql: &str) -> Result<()> {
    if crate::lex::names_prefix(sql, "__lm_") {
        return Err(litemesh_names());
    }
    Ok(())
}

fn litemesh_names() -> StorageError {
    StorageError::Refused(
        "names starting with __lm_ are litemesh's own tables, functions and triggers: clients \
         can neither use nor define them"
            .into(),
    )
}

/// A statement's parameters must match what it takes, with a message that
/// says so.
fn check_params(stmt: &rusqlite::Statement<'_>, params: &[Value]) -> Result<()> {
    let want = stmt.parameter_count();
    if want != params.len() {
        return Err(StorageError::InvalidStatement(format!(
            "the statement takes {want} parameter(s), {} given",
            params.len()
        )));
    }
    Ok(())
}

fn run_query(
    conn: &Connection,
    sql: &str,
    params: &[Value],
    sink: &mut dyn RowSink,
    fresh: bool,
) -> Result<()> {
    check_names(sql)?;
    // Every statement of this connection is a client's: caching is safe —
    // except for a statement run for another node (`fresh`), which must be
    // authorized again under that node's placement (a cached statement was
    // authorized once, when compiled for whoever ran it first).
    let mut plain;
    let mut cached;
    let stmt: &mut rusqlite::Statement<'_> = if fresh {
        plain = conn.prepare(sql)?;
        &mut plain
    } else {
        cached = conn.prepare_cached(sql)?;
        &mut cached
    };
    check_params(stmt, params)?;
    if !stmt.readonly() {
        return Err(StorageError::Refused(
            "a query is read-only: send writes as a transaction".into(),
        ));
    }
    let columns: Vec<String> = stmt.column_names().map(|s| s.to_string()).collect();
    let n = columns.len();
    if !sink.columns(columns)? {
        return Ok(());
    }
    let mut rows = stmt.query(params_from_iter(params.iter()))?;
    while let Some(r) = rows.next()? {
        let values = (0..n)
            .map(|i| r.get::<_, Value>(i))
            .collect::<rusqlite::Result<Vec<_>>>()?;
        if !sink.row(values)? {
            break;
        }
    }
    Ok(())
}
