//! The node's SQLite file: opening, local transactions, bookkeeping.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior};

use crate::capture::{CaptureState, attach_state};
use crate::error::{Result, StorageError};
use crate::sandbox::{ClientLimits, ClientTx};
use crate::schema::{self, SchemaReport, TableMeta};
use litemesh_proto::RangeSet;
use litemesh_proto::{ActorId, Knowledge};

/// The next version of the local actor: one past the highest in the change
/// log, or the floor kept in `__lm_site` (raised before log entries are
/// compacted away, and set when the node moves to a new actor id), whichever
/// is higher. Deriving it from the log means the capture triggers need no
/// extra write per row, and a version is used exactly when a committed
/// transaction wrote entries with it.
pub(crate) const NEXT_VERSION_SQL: &str = "SELECT max(s.next_version, \
    coalesce((SELECT max(version) FROM __lm_log WHERE actor = s.local), 0) + 1) \
    FROM __lm_site AS s WHERE s.id = 0";

/// Raises the local version counter to one past every version the log
/// names: before log entries go (compaction, collection), so that the next
/// version is never one already used.
pub(crate) fn keep_next_version(conn: &Connection) -> Result<()> {
    conn.execute(
        &format!("UPDATE __lm_site SET next_version = ({NEXT_VERSION_SQL}) WHERE id = 0"),
        [],
    )?;
    Ok(())
}

/// Version of the on-disk metadata layout. Format 1 (the first release) had
/// the local actor fixed at index 0 and no quarantine, peer list or session
/// marker; format 2 wrote every key in the change log in the first key
/// encoding (format 3 adds shorter forms of integers, hexadecimal text and
/// UUIDs, see `value.rs`); format 4 adds table placement (`__lm_placement`,
/// `__lm_withheld`: a binary that does not know them would serve versions
/// held without some tables' rows as complete); format 5 adds tombstone
/// collection (`__lm_floor`, `__lm_collected`, `__lm_owned`: a binary that
/// does not know the floors would insert a key whose tombstone was collected
/// below it, and lose that write on every node that still holds the
/// tombstone); format 6 adds commutative columns (`__lm_kinds`, and counter
/// contributions and register values in row clocks: a binary that does not
/// know them would merge a counter as a plain cell). Older formats are
/// upgraded in place when opened; a binary older than the file's format
/// refuses to open it.
const FORMAT: i64 = 6;

const INTERNAL_DDL: &str = "
CREATE TABLE IF NOT EXISTS __lm_site(
    id INTEGER PRIMARY KEY CHECK (id = 0),
    actor BLOB NOT NULL,
    next_version INTEGER NOT NULL,
    format INTEGER NOT NULL,
    local INTEGER NOT NULL DEFAULT 0,
    node BLOB,
    clean BLOB,
    probe INTEGER NOT NULL DEFAULT 0,
    capture INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS __lm_actors(idx INTEGER PRIMARY KEY, actor BLOB NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS __lm_have(
    actor INTEGER NOT NULL, start INTEGER NOT NULL, end INTEGER NOT NULL,
    PRIMARY KEY (actor, start)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS __lm_tables(
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, pk TEXT NOT NULL, sql TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS __lm_columns(
    tbl INTEGER NOT NULL, idx INTEGER NOT NULL, name TEXT NOT NULL,
    PRIMARY KEY (tbl, idx)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS __lm_kinds(
    tbl INTEGER NOT NULL, idx INTEGER NOT NULL, kind TEXT NOT NULL, base INTEGER,
    PRIMARY KEY (tbl, idx)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS __lm_log(
    id INTEGER PRIMARY KEY,
    actor INTEGER NOT NULL, version INTEGER NOT NULL, seq INTEGER NOT NULL,
    last INTEGER NOT NULL, entries BLOB NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS __lm_log_key ON __lm_log(actor, version, seq);
CREATE TABLE IF NOT EXISTS __lm_parked(
    actor INTEGER NOT NULL, version INTEGER NOT NULL, seq INTEGER NOT NULL, change BLOB NOT NULL,
    PRIMARY KEY (actor, version, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS __lm_partial(
    actor INTEGER NOT NULL, version INTEGER NOT NULL, start INTEGER NOT NULL, end INTEGER NOT NULL,
    rows BLOB NOT NULL,
    PRIMARY KEY (actor, version, start)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS __lm_quarantine(
    actor INTEGER NOT NULL, version INTEGER NOT NULL, rows BLOB NOT NULL, error TEXT NOT NULL,
    first_failed INTEGER NOT NULL, last_tried INTEGER NOT NULL, attempts INTEGER NOT NULL,
    PRIMARY KEY (actor, version)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS __lm_peers(
    addr TEXT PRIMARY KEY, name TEXT, actor BLOB, last_seen INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS __lm_placement(name TEXT PRIMARY KEY, regions TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS __lm_withheld(
    actor INTEGER NOT NULL, version INTEGER NOT NULL, tables TEXT NOT NULL,
    PRIMARY KEY (actor, version)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS __lm_floor(name TEXT PRIMARY KEY, cl INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS __lm_collected(actor INTEGER PRIMARY KEY, through INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS __lm_owned(actor INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS __lm_stale(id INTEGER PRIMARY KEY CHECK (id = 0), reason TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS __lm_snapshot(
    id INTEGER PRIMARY KEY CHECK (id = 0), tbl TEXT NOT NULL, after BLOB, past INTEGER NOT NULL,
    base BLOB, need BLOB, frozen BLOB, partial INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS __lm_checked(id INTEGER PRIMARY KEY CHECK (id = 0), knowledge BLOB NOT NULL);
";

/// Columns format 2 added to `__lm_site`.
const SITE_V2_COLUMNS: &str = "
ALTER TABLE __lm_site ADD COLUMN local INTEGER NOT NULL DEFAULT 0;
ALTER TABLE __lm_site ADD COLUMN node BLOB;
ALTER TABLE __lm_site ADD COLUMN clean BLOB;
ALTER TABLE __lm_site ADD COLUMN probe INTEGER NOT NULL DEFAULT 0;
ALTER TABLE __lm_site ADD COLUMN capture INTEGER NOT NULL DEFAULT 0;
";

/// Version of the capture triggers' text: a file whose triggers were made by
/// another version gets them regenerated when opened.
const CAPTURE: i64 = 7;

/// How to open a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// `PRAGMA synchronous=FULL` (default): a commit is on disk before it returns.
    /// Turn off only for throwaway stores.
    pub durable: bool,
    /// How long a writer waits for another connection's lock.
    pub busy_timeout: std::time::Duration,
    /// SQLite page cache size in KiB (`PRAGMA cache_size`).
    pub cache_kib: u32,
    /// The actor id of a file created now (default: random). Deterministic
    /// simulations set it; an existing file keeps its own.
    pub actor: Option<ActorId>,
    /// A file created now gives the pages it frees back to the file system
    /// ([`Store::reclaim`]: SQLite's incremental auto-vacuum). For nodes
    /// with a retention policy, whose collection frees pages steadily; it
    /// costs about 7% on inserts (a pointer map is kept), so it is off by
    /// default. An existing file keeps its mode.
    pub reclaim_pages: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            durable: true,
            busy_timeout: std::time::Duration::from_secs(5),
            cache_kib: 64 * 1024,
            actor: None,
            reclaim_pages: false,
        }
    }
}

/// A committed local transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed<T> {
    /// What the closure returned.
    pub value: T,
    /// The version this node's actor gave the transaction, `None` if it wrote
    /// nothing to replicated tables.
    pub version: Option<u64>,
}

/// One node's replicated SQLite file.
pub struct Store {
    pub(crate) conn: Connection,
    pub(crate) state: Arc<CaptureState>,
    pub(crate) actor: ActorId,
    /// Index of this node's current actor in `actors` (0 unless the node
    /// moved to a new actor id, see [`Store::rotate_actor`]).
    pub(crate) local: u64,
    pub(crate) tables: HashMap<String, Arc<TableMeta>>,
    /// This open initialized the file (it held no litemesh metadata).
    created: bool,
    /// Lower-cased table names to their registered spelling (SQLite names are
    /// case-insensitive; a peer's schema file may spell them differently).
    pub(crate) tables_ci: HashMap<String, String>,
    /// Actor indexes: `actors[idx]` is the actor's id.
    /// Append-only in the file; reloaded after any failed transaction.
    pub(crate) actors: Vec<ActorId>,
    pub(crate) actor_idx: HashMap<ActorId, u64>,
    /// Versions held in quarantine (cache of `__lm_quarantine`, written only
    /// by this store's connection).
    pub(crate) quarantined: std::collections::BTreeSet<(u64, u64)>,
    /// The sandbox of client statements and the limits of long statements.
    pub(crate) guard: Arc<crate::sandbox::ConnGuard>,
    /// The connection merges run on, opened at the first merge (see
    /// [`Store::open_merge_connection`]).
    pub(crate) merge_conn: Option<Connection>,
    /// Merges committed since the file was last synced to disk (see
    /// [`Store::sync_merges`]).
    pub(crate) merges_unsynced: bool,
    /// The merge connection wrote last: reads of metadata go through it,
    /// whose page cache is current (the other's was invalidated by the
    /// merge's commit).
    pub(crate) merged_last: bool,
    pub(crate) opts: StoreOptions,
    /// Pinned tables (from `__lm_placement`).
    pub(crate) placement: litemesh_proto::Placement,
    /// What this node may hold (see [`Store::set_entitlement`]).
    pub(crate) entitlement: litemesh_proto::Entitlement,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("actor", &self.actor).finish()
    }
}

impl Store {
    /// Opens (or creates) a node's file with default options.
    pub fn open(path: impl AsRef<Path>) -> Result<Store> {
        Self::open_with(path, &StoreOptions::default())
    }

    /// Opens (or creates) a node's file. A new file gets a random actor id.
    pub fn open_with(path: impl AsRef<Path>, opts: &StoreOptions) -> Result<Store> {
        let mut conn = Connection::open(path)?;
        configure(&conn, opts)?;
        // A new file may give back the pages that collection and the log
        // sweep free (`Store::reclaim`): the mode can only be chosen before
        // the file's first page is written (before WAL mode, before any
        // table).
        let empty: bool = conn.query_row("PRAGMA page_count", [], |r| r.get::<_, i64>(0))? == 0;
        if empty && opts.reclaim_pages {
            conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL")?;
        }
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") && !mode.eq_ignore_ascii_case("memory") {
            return Err(StorageError::Corrupt(format!(
                "could not switch the file to WAL mode (got {mode})"
            )));
        }
        let state = attach_state(&mut conn)?;
        let mut created = false;
        {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute_batch(INTERNAL_DDL)?;
            let site: Option<(Vec<u8>, i64)> = tx
                .query_row(
                    "SELECT actor, format FROM __lm_site WHERE id = 0",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            match site {
                None => {
                    created = true;
                    let actor = opts.actor.unwrap_or_else(ActorId::random);
                    tx.execute(
                        "INSERT INTO __lm_site(id, actor, next_version, format, local, node) \
                         VALUES (0, ?1, 1, ?2, 0, ?1)",
                        (&actor.0[..], FORMAT),
                    )?;
                    tx.execute(
                        "INSERT INTO __lm_actors(idx, actor) VALUES (0, ?1)",
                        [&actor.0[..]],
                    )?;
                    tx.execute("INSERT INTO __lm_owned(actor) VALUES (0)", [])?;
                }
                Some((_, 1)) => {
                    upgrade_from_format_1(&tx)?;
                    tx.execute(
                        "INSERT OR IGNORE INTO __lm_owned(actor) SELECT local FROM __lm_site",
                        [],
                    )?;
                }
                // Format 3 only adds key encodings (the old ones still
                // read); formats 4, 5 and 6 only add tables (created above).
                // Which earlier actors were this file's own is not recorded
                // before format 5: only the current one is claimed.
                Some((_, 2..=4)) => {
                    tx.execute("UPDATE __lm_site SET format = ?1 WHERE id = 0", [FORMAT])?;
                    tx.execute(
                        "INSERT OR IGNORE INTO __lm_owned(actor) SELECT local FROM __lm_site",
                        [],
                    )?;
                }
                Some((_, 5)) => {
                    tx.execute("UPDATE __lm_site SET format = ?1 WHERE id = 0", [FORMAT])?;
                }
                Some((_, f)) if f != FORMAT => {
                    return Err(StorageError::Corrupt(format!(
                        "metadata format {f} is not supported by this version (expects {FORMAT})"
                    )));
                }
                Some(_) => {}
            }
            let capture: i64 =
                tx.query_row("SELECT capture FROM __lm_site WHERE id = 0", [], |r| {
                    r.get(0)
                })?;
            if capture != CAPTURE {
                for t in schema::load_tables(&tx)?.values() {
                    schema::create_triggers(&tx, t)?;
                }
                tx.execute("UPDATE __lm_site SET capture = ?1 WHERE id = 0", [CAPTURE])?;
            }
            tx.commit()?;
        }
        let guard = crate::sandbox::ConnGuard::install(&mut conn)?;
        let mut store = Store {
            conn,
            state,
            actor: ActorId([0; 16]),
            local: 0,
            tables: HashMap::new(),
            tables_ci: HashMap::new(),
            actors: Vec::new(),
            actor_idx: HashMap::new(),
            quarantined: Default::default(),
            guard,
            created,
            merge_conn: None,
            merges_unsynced: false,
            merged_last: false,
            opts: opts.clone(),
            placement: Default::default(),
            entitlement: Default::default(),
        };
        store.reload()?;
        Ok(store)
    }

    /// The connection merges run on, opened at the first merge: statements
    /// compiled without triggers (`SQLITE_DBCONFIG_ENABLE_TRIGGER` off: remote
    /// changes fire no application trigger and pay for no trigger program)
    /// and with CHECK constraints ignored (a merge combines writes that were
    /// each valid where they were made, and must never fail on the
    /// combination: every node keeps the same row). Both settings are made
    /// once; switching them on one shared connection would expire every
    /// statement it has compiled, at every merge.
    pub(crate) fn open_merge_connection(&mut self) -> Result<()> {
        if self.merge_conn.is_none() {
            let path = self
                .conn
                .path()
                .filter(|p| !p.is_empty())
                .ok_or_else(|| {
                    StorageError::Corrupt(
                        "merges need a database file, not an in-memory one".into(),
                    )
                })?
                .to_string();
            let mut conn = Connection::open(&path)?;
            configure(&conn, &self.opts)?;
            if self.opts.durable {
                // Merges do not wait for the disk: their commit is synced by
                // the next local commit or by `sync_merges`, whichever comes
                // first (see `Store::sync_merges`).
                conn.execute_batch("PRAGMA synchronous = NORMAL")?;
            }
            conn.set_db_config(
                rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER,
                false,
            )?;
            conn.execute_batch("PRAGMA ignore_check_constraints = ON")?;
            // Triggers are never compiled here; should one be, its guard
            // (`__lm_local()`) is off on this connection.
            let state = attach_state(&mut conn)?;
            state.enabled.store(false, Ordering::SeqCst);
            self.guard.install_on(&mut conn)?;
            self.merge_conn = Some(conn);
        }
        Ok(())
    }

    /// The connection merges run on (opened now if need be), for reads and
    /// diagnostics: a per-connection setting made through it (a page limit,
    /// say) applies to merges, one made through [`Store::connection`] does
    /// not.
    pub fn merge_connection(&mut self) -> Result<&Connection> {
        self.open_merge_connection()?;
        self.merge_conn
            .as_ref()
            .ok_or_else(|| StorageError::Corrupt("no merge connection".into()))
    }

    /// Whether this open initialized the file: it held no litemesh metadata
    /// before (a new file), so its actor id is new and has written nothing.
    pub fn created(&self) -> bool {
        self.created
    }

    /// Reloads the in-memory caches of file metadata (actor indexes, tables,
    /// quarantine).
    pub(crate) fn reload(&mut self) -> Result<()> {
        let actors: Vec<(i64, Vec<u8>)> = self
            .conn
            .prepare("SELECT idx, actor FROM __lm_actors ORDER BY idx")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        self.actors.clear();
        self.actor_idx.clear();
        for (i, (idx, bytes)) in actors.into_iter().enumerate() {
            let id: [u8; 16] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| StorageError::Corrupt("actor id length".into()))?;
            if idx != i as i64 {
                return Err(StorageError::Corrupt("actor indexes are not dense".into()));
            }
            self.actors.push(ActorId(id));
            self.actor_idx.insert(ActorId(id), idx as u64);
        }
        let (local, actor): (i64, Vec<u8>) =
            self.conn
                .query_row("SELECT local, actor FROM __lm_site WHERE id = 0", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
        self.local = local as u64;
        self.actor = actor_at(&self.actors, local)?;
        if self.actor.0[..] != actor[..] {
            return Err(StorageError::Corrupt(
                "the local actor index does not name the local actor".into(),
            ));
        }
        self.tables = schema::load_tables(&self.conn)?;
        self.placement = crate::placement::load(&self.conn)?;
        self.tables_ci = self
            .tables
            .keys()
            .map(|k| (k.to_ascii_lowercase(), k.clone()))
            .collect();
        self.quarantined = self
            .conn
            .prepare("SELECT actor, version FROM __lm_quarantine")?
            .query_map([], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
            })?
            .collect::<rusqlite::Result<_>>()?;
        self.guard.set_schema(&self.conn, &self.tables)?;
        Ok(())
    }

    /// A replicated table by name, whatever the case of its spelling.
    pub(crate) fn table(&self, name: &str) -> Option<&Arc<TableMeta>> {
        self.tables.get(name).or_else(|| {
            self.tables_ci
                .get(&name.to_ascii_lowercase())
                .and_then(|n| self.tables.get(n))
        })
    }

    /// Re-reads the file's metadata (tables, known actors). A second `Store` on
    /// the same file (e.g. one used for reads) calls this to see actors and
    /// tables another connection added.
    pub fn refresh(&mut self) -> Result<()> {
        self.reload()
    }

    /// This node's actor id.
    pub fn actor_id(&self) -> ActorId {
        self.actor
    }

    /// The last version this node's actor committed (0 if none).
    pub fn db_version(&self) -> Result<u64> {
        let next: i64 = self
            .conn
            .prepare_cached(NEXT_VERSION_SQL)?
            .query_row([], |r| r.get(0))?;
        Ok(next as u64 - 1)
    }

    /// The replicated tables' names.
    pub fn tables(&self) -> Vec<String> {
        let mut t: Vec<_> = self.tables.keys().cloned().collect();
        t.sort();
        t
    }

    /// The non-key columns the engine tracks for `table`.
    pub fn columns(&self, table: &str) -> Option<(Vec<String>, Vec<String>)> {
        self.tables
            .get(table)
            .map(|t| (t.pk.clone(), t.cols.clone()))
    }

    /// Applies schema SQL (`CREATE TABLE` / `CREATE INDEX` statements): new
    /// tables, columns and indexes are created; anything destructive is refused and
    /// nothing changes. Changes parked for tables or columns this schema adds are
    /// applied.
    pub fn apply_schema(&mut self, sql: &str) -> Result<SchemaReport> {
        let res = (|| -> Result<SchemaReport> {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let report = schema::apply(&tx, sql)?;
            tx.commit()?;
            Ok(report)
        })();
        self.reload()?;
        let report = res?;
        self.reconcile_placement()?;
        if !report.is_unchanged() {
            self.retry_parked()?;
            // A schema change may be what quarantined versions waited for.
            self.retry_quarantined(crate::merge::now_ms(), true)?;
        }
        Ok(report)
    }

    /// Runs `f` in one immediate SQLite transaction and commits it. Every write
    /// to a replicated table is recorded in the same transaction under one new
    /// version of this node's actor. If `f` fails, nothing is applied.
    pub fn transaction<T>(
        &mut self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T>,
    ) -> Result<Committed<T>> {
        self.merged_last = false;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Inside this immediate transaction no other connection can commit, so
        // the next version read now stays valid until the commit.
        let next: i64 = tx
            .prepare_cached(NEXT_VERSION_SQL)?
            .query_row([], |r| r.get(0))?;
        self.state.next_hint.store(next as u64, Ordering::SeqCst);
        let value = {
            let _buffering = Buffering::on(&self.state);
            let value = match f(&tx) {
                Ok(v) => v,
                // A row write the capture refused: its typed reason.
                Err(e) => return Err(self.state.typed(e)),
            };
            // Write the buffered change-log entries in chunks, in this transaction.
            let entries = self.state.take_buffer();
            if !entries.is_empty() {
                let v = self.state.version.load(Ordering::SeqCst);
                crate::log::write_chunks(&tx, self.local, v, &entries)?;
            }
            (value, !entries.is_empty())
        };
        let (value, wrote) = value;
        // A version is used exactly when change-log entries were written
        // under it: one claimed without any (however it was claimed) is
        // not, and the next transaction takes it.
        let v = if wrote {
            self.state.version.load(Ordering::SeqCst)
        } else {
            0
        };
        tx.commit()?;
        if v != 0 {
            // A durable commit that wrote syncs the whole log, merges
            // before it included.
            self.merges_unsynced = false;
        }
        Ok(Committed {
            value,
            version: (v != 0).then_some(v),
        })
    }

    /// Runs a client's statements as one transaction, like
    /// [`Store::transaction`], under the sandbox (see the `sandbox` module:
    /// DML on replicated tables only) and `limits`. Each statement goes
    /// through [`ClientTx::execute`]. A refused or failed statement fails the
    /// whole transaction, and nothing is applied.
    pub fn client_transaction<T>(
        &mut self,
        limits: &ClientLimits,
        f: impl FnOnce(&ClientTx<'_>) -> Result<T>,
    ) -> Result<Committed<T>> {
        let guard = self.guard.clone();
        let _limits = guard.limits(limits);
        self.transaction(|tx| {
            let _length = crate::sandbox::LengthLimit::on(tx);
            f(&ClientTx { tx, guard: &guard })
        })
        .map_err(|e| guard.map_storage_err(e))
    }

    /// Runs several clients' transactions with one commit (group commit):
    /// each item is run by `run` in a savepoint of one SQLite transaction,
    /// gets a version of its own when it writes, and fails alone (its
    /// savepoint rolled back, the others kept). The one commit that ends the
    /// group waits for the disk, like [`Store::client_transaction`]'s: when
    /// this returns `Ok`, every `Ok` inside it is durable.
    ///
    /// `Err` means the group's commit failed and nothing of it applied. The
    /// items first run without savepoints (they cost a large transaction
    /// dearly); the first that fails rolls the group back, and the others
    /// run again, each in a savepoint from then on: `run` may be called more
    /// than once for an item. An error that makes SQLite abandon the whole
    /// transaction (an interrupted write, a full disk) likewise fails only
    /// the item that met it.
    pub fn client_transactions<I, T>(
        &mut self,
        limits: &ClientLimits,
        items: &[I],
        run: impl Fn(&I, &ClientTx<'_>) -> Result<T>,
    ) -> Result<Vec<Result<Committed<T>>>> {
        self.merged_last = false;
        let guard = self.guard.clone();
        // The store's own statements (savepoints, the commit) can be
        // interrupted too (a node shutting down): typed like a client's.
        self.client_group(limits, items, run)
            .map_err(|e| guard.map_storage_err(e))
    }

    fn client_group<I, T>(
        &mut self,
        limits: &ClientLimits,
        items: &[I],
        run: impl Fn(&I, &ClientTx<'_>) -> Result<T>,
    ) -> Result<Vec<Result<Committed<T>>>> {
        let guard = self.guard.clone();
        let mut out: Vec<Option<Result<Committed<T>>>> = items.iter().map(|_| None).collect();
        // Optimistic first: no savepoints (a savepoint makes SQLite copy
        // every page a transaction then changes for its own rollback: a
        // large transaction pays dearly). The first failure rolls the group
        // back and runs the rest again, each in a savepoint.
        let mut isolate = false;
        loop {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut done: Vec<(usize, Committed<T>)> = Vec::new();
            let mut abandoned = false;
            for (i, item) in items.iter().enumerate() {
                if out[i].is_some() {
                    continue;
                }
                if isolate {
                    tx.execute_batch("SAVEPOINT lm_client")?;
                }
                let next: i64 = tx
                    .prepare_cached(NEXT_VERSION_SQL)?
                    .query_row([], |r| r.get(0))?;
                self.state.reset();
                self.state.next_hint.store(next as u64, Ordering::SeqCst);
                let res = {
                    let _limits = guard.limits(limits);
                    let _length = crate::sandbox::LengthLimit::on(&tx);
                    let _buffering = Buffering::on(&self.state);
                    match run(
                        item,
                        &ClientTx {
                            tx: &tx,
                            guard: &guard,
                        },
                    ) {
                        Ok(v) => {
                            let entries = self.state.take_buffer();
                            // Used only when entries were written under it.
                            let version = if entries.is_empty() {
                                0
                            } else {
                                self.state.version.load(Ordering::SeqCst)
                            };
                            if !entries.is_empty() {
                                crate::log::write_chunks(&tx, self.local, version, &entries)
                                    .map(|()| (v, version))
                            } else {
                                Ok((v, version))
                            }
                        }
                        Err(e) => Err(self.state.typed(e)),
                    }
                };
                match res {
                    Ok((value, v)) => {
                        if isolate {
                            tx.execute_batch("RELEASE lm_client")?;
                        }
                        done.push((
                            i,
                            Committed {
                                value,
                                version: (v != 0).then_some(v),
                            },
                        ));
                    }
                    Err(e) => {
                        let e = guard.map_storage_err(e);
                        self.state.reset();
                        // An error met in the optimistic pass may come from
                        // the changes of a member before it in the pass,
                        // which may yet fail and vanish: it is kept only if
                        // no member ran before it or it is the member's own
                        // (a time limit, a refusal); otherwise the member
                        // runs again, isolated, and fails or not there.
                        if isolate || done.is_empty() || own_error(&e) {
                            out[i] = Some(Err(e));
                        }
                        if !isolate || tx.is_autocommit() {
                            // Roll the group back (SQLite may have done it
                            // already) and run the others again, isolated.
                            abandoned = true;
                            isolate = true;
                            break;
                        }
                        tx.execute_batch("ROLLBACK TO lm_client; RELEASE lm_client")?;
                    }
                }
            }
            if abandoned {
                drop(tx);
                if out.iter().all(Option::is_some) {
                    break;
                }
                continue;
            }
            tx.commit()?;
            if done.iter().any(|(_, c)| c.version.is_some()) {
                self.merges_unsynced = false;
            }
            for (i, c) in done {
                out[i] = Some(Ok(c));
            }
            break;
        }
        Ok(out
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(StorageError::Corrupt("unfinished".into()))))
            .collect())
    }

    /// Sets a flag that, once true, stops any statement running on this
    /// store's connection (a node shutting down).
    pub fn set_stop_flag(&self, flag: Arc<std::sync::atomic::AtomicBool>) {
        self.guard.set_stop_flag(flag);
    }

    /// Runs statements (separated by `;`) as one transaction. See [`Store::transaction`].
    pub fn execute_batch(&mut self, sql: &str) -> Result<Option<u64>> {
        Ok(self.transaction(|tx| Ok(tx.execute_batch(sql)?))?.version)
    }

    /// The underlying connection, for reads. Writes through it are captured too
    /// (it has the capture functions), but prefer [`Store::transaction`], which
    /// reports the version.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// What this node holds: its own versions and every remote actor's ranges,
    /// read from the file (the one source of truth).
    pub fn knowledge(&self) -> Result<Knowledge> {
        // Both connections see the same committed file; the one that wrote
        // last reads it without refilling its page cache.
        let conn = match (&self.merge_conn, self.merged_last) {
            (Some(m), true) => m,
            _ => &self.conn,
        };
        read_knowledge(conn, &self.actors, self.local)
    }

    /// The replicated tables by their id (as the change log names them).
    pub(crate) fn tables_by_id(&self) -> std::collections::BTreeMap<i64, Arc<TableMeta>> {
        self.tables.values().map(|t| (t.id, t.clone())).collect()
    }

    /// Moves this node to a new actor id: later local writes are numbered
    /// under the new id, and every version the old id wrote stays in the file
    /// as an ordinary remote actor's. The new actor's numbering starts after
    /// the old one's last version, so `db_version` keeps growing; the
    /// versions below it hold nothing and are reported to peers as cleared.
    ///
    /// This is what keeps a node from ever reusing a version number its peers
    /// already hold: a file that lost its last commits (a deleted WAL, a
    /// restored backup, a copied file) would otherwise number new writes with
    /// versions that mean something else on other nodes. Returns the new id.
    pub fn rotate_actor(&mut self) -> Result<ActorId> {
        let res = (|| -> Result<ActorId> {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let next: i64 = tx.query_row(NEXT_VERSION_SQL, [], |r| r.get(0))?;
            let old = self.local;
            let new = ActorId::random();
            let idx: i64 = tx.query_row("SELECT count(*) FROM __lm_actors", [], |r| r.get(0))?;
            tx.execute(
                "INSERT INTO __lm_actors(idx, actor) VALUES (?1, ?2)",
                (idx, &new.0[..]),
            )?;
            tx.execute("INSERT OR IGNORE INTO __lm_owned(actor) VALUES (?1)", [idx])?;
            if next > 1 {
                add_have(&tx, old, 1, next as u64 - 1)?;
            }
            tx.execute(
                "UPDATE __lm_site SET actor = ?1, local = ?2, next_version = ?3 WHERE id = 0",
                (&new.0[..], idx, next),
            )?;
            for t in schema::load_tables(&tx)?.values() {
                schema::create_triggers(&tx, t)?;
            }
            tx.commit()?;
            Ok(new)
        })();
        self.reload()?;
        let new = res?;
        tracing::info!(actor = %new, "moved to a new actor id");
        Ok(new)
    }

    /// A stable id of this node's file, made with it (the first actor id):
    /// unlike [`Store::actor_id`], it never changes.
    pub fn node_id(&self) -> Result<[u8; 16]> {
        let node: Option<Vec<u8>> =
            self.conn
                .query_row("SELECT node FROM __lm_site WHERE id = 0", [], |r| r.get(0))?;
        node.as_deref()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| StorageError::Corrupt("node id".into()))
    }

    /// The marker a clean shutdown left in the file ([`Store::set_clean_marker`]),
    /// if any.
    pub fn clean_marker(&self) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn
            .query_row("SELECT clean FROM __lm_site WHERE id = 0", [], |r| r.get(0))?)
    }

    /// Sets (on a clean shutdown) or clears (at start) the clean-shutdown
    /// marker, durably.
    pub fn set_clean_marker(&mut self, marker: Option<&[u8]>) -> Result<()> {
        self.conn
            .execute("UPDATE __lm_site SET clean = ?1 WHERE id = 0", [marker])?;
        Ok(())
    }

    /// Checks that the file can be written: one tiny durable transaction.
    pub fn probe_write(&mut self) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute("UPDATE __lm_site SET probe = probe + 1 WHERE id = 0", [])?;
        tx.commit()?;
        self.merges_unsynced = false;
        Ok(())
    }

    /// Whether remote changes merged since the last sync to disk could still
    /// be lost by a power failure (never by a crash of the process).
    ///
    /// Merges commit without waiting for the disk (`synchronous = NORMAL`
    /// on the merge connection): the change log a merge appends to is synced
    /// by the next local commit (which waits for the disk, merges before it
    /// included) or by [`Store::sync_merges`]. What a power failure takes
    /// is a suffix of the merges, never a local write nor a torn one, and
    /// the file still says exactly what it holds, so the lost versions are
    /// fetched again from peers. A node calls `sync_merges` shortly after
    /// merging, which bounds that window.
    pub fn merges_unsynced(&self) -> bool {
        self.merges_unsynced
    }

    /// Syncs merged remote changes to disk if any are not yet (one tiny
    /// durable transaction); see [`Store::merges_unsynced`].
    pub fn sync_merges(&mut self) -> Result<()> {
        if self.merges_unsynced {
            self.probe_write()?;
        }
        Ok(())
    }

    /// The members this node has seen, most recently seen first.
    pub fn remembered_peers(&self) -> Result<Vec<RememberedPeer>> {
        let mut stmt = self.conn.prepare(
            "SELECT addr, name, actor, last_seen FROM __lm_peers ORDER BY last_seen DESC",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(RememberedPeer {
                addr: r.get(0)?,
                name: r.get(1)?,
                actor: r
                    .get::<_, Option<Vec<u8>>>(2)?
                    .and_then(|b| <[u8; 16]>::try_from(b.as_slice()).ok())
                    .map(ActorId),
                last_seen_ms: r.get::<_, i64>(3)? as u64,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Forgets the addresses in `forget`, then records members as seen
    /// (inserted or updated by address), in one transaction.
    pub fn remember_peers(&mut self, seen: &[RememberedPeer], forget: &[String]) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        for addr in forget {
            tx.prepare_cached("DELETE FROM __lm_peers WHERE addr = ?1")?
                .execute([addr])?;
        }
        for p in seen {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO __lm_peers(addr, name, actor, last_seen) \
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute((
                &p.addr,
                &p.name,
                p.actor.map(|a| a.0.to_vec()),
                p.last_seen_ms as i64,
            ))?;
        }
        tx.commit()?;
        Ok(())
    }

    pub(crate) fn index_of(&mut self, actor: &ActorId) -> Result<u64> {
        if let Some(&i) = self.actor_idx.get(actor) {
            return Ok(i);
        }
        let idx = self.actors.len() as u64;
        self.conn.execute(
            "INSERT INTO __lm_actors(idx, actor) VALUES (?1, ?2)",
            (idx as i64, &actor.0[..]),
        )?;
        self.actors.push(*actor);
        self.actor_idx.insert(*actor, idx);
        Ok(idx)
    }
}

/// Whether a client transaction's error is its own whatever the other
/// members of its group did (see [`Store::client_transactions`]).
fn own_error(e: &StorageError) -> bool {
    matches!(
        e,
        StorageError::Interrupted(_)
            | StorageError::Refused(_)
            | StorageError::RowTooLarge { .. }
            | StorageError::NullKey { .. }
            | StorageError::InvalidText { .. }
            | StorageError::NotACount { .. }
            | StorageError::RegisterBackwards { .. }
            | StorageError::InvalidStatement(_)
    )
}

/// A member of the mesh as remembered in the file, so that a restarted node
/// finds the mesh again with or without seeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RememberedPeer {
    /// Its address (`ip:port`): what identifies it across its restarts.
    pub addr: String,
    /// Its name, if it published one.
    pub name: Option<String>,
    /// Its storage actor, if it published one.
    pub actor: Option<ActorId>,
    /// When it was last seen alive (Unix milliseconds).
    pub last_seen_ms: u64,
}

/// Upgrades a format-1 file in the open transaction: the local actor stays
/// at index 0, the stable node id is the actor id, and the capture triggers
/// are regenerated (they now name the local actor's index).
/// Settings of every read-write connection of a store.
fn configure(conn: &Connection, opts: &StoreOptions) -> Result<()> {
    conn.busy_timeout(opts.busy_timeout)?;
    conn.set_prepared_statement_cache_capacity(256);
    // The page cache holds the clock tables' working set. (temp_store stays
    // at its default: statement journals then buffer in one 64 KiB chunk
    // before spilling, much cheaper than MEMORY's 1 KiB chunks.) Foreign
    // keys stay off: merges never run their checks or actions (see
    // docs/storage.md). WAL mode is the file's, set when it is created.
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {}; PRAGMA cache_size = -{}; PRAGMA foreign_keys = OFF;",
        if opts.durable { "FULL" } else { "OFF" },
        opts.cache_kib
    ))?;
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
    // Plans never depend on the values bound to a statement: with the
    // planner free to look at them, a cached statement whose parameter
    // changes between small integers and others (actor indexes 0 and 1) is
    // compiled again at its next run.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(())
}

fn upgrade_from_format_1(tx: &Transaction<'_>) -> Result<()> {
    tx.execute_batch(SITE_V2_COLUMNS)?;
    tx.execute(
        "UPDATE __lm_site SET node = actor, format = ?1 WHERE id = 0",
        [FORMAT],
    )?;
    for t in schema::load_tables(tx)?.values() {
        schema::create_triggers(tx, t)?;
    }
    tracing::info!("upgraded the file's litemesh metadata to format {FORMAT}");
    Ok(())
}

/// Buffers change-log entries while alive (also on panic, it switches back).
struct Buffering<'a>(&'a CaptureState);

impl<'a> Buffering<'a> {
    fn on(state: &'a CaptureState) -> Self {
        state.buffering.store(true, Ordering::SeqCst);
        Buffering(state)
    }
}

impl Drop for Buffering<'_> {
    fn drop(&mut self) {
        self.0.buffering.store(false, Ordering::SeqCst);
    }
}

pub(crate) fn read_knowledge(
    conn: &Connection,
    actors: &[ActorId],
    local: u64,
) -> Result<Knowledge> {
    let mut k = Knowledge::default();
    let next: i64 = conn
        .prepare_cached(NEXT_VERSION_SQL)?
        .query_row([], |r| r.get(0))?;
    if next > 1 {
        k.have.insert(
            actor_at(actors, local as i64)?,
            RangeSet::from_ranges([(1, next as u64 - 1)]),
        );
    }
    let mut stmt =
        conn.prepare_cached("SELECT actor, start, end FROM __lm_have ORDER BY actor, start")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let a = actor_at(actors, r.get(0)?)?;
        k.have
            .entry(a)
            .or_default()
            .insert_range(r.get::<_, i64>(1)? as u64, r.get::<_, i64>(2)? as u64);
    }
    let mut stmt = conn.prepare_cached("SELECT actor, version, start, end FROM __lm_partial")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let a = actor_at(actors, r.get(0)?)?;
        k.partial
            .entry(a)
            .or_default()
            .entry(r.get::<_, i64>(1)? as u64)
            .or_default()
            .insert_range(r.get::<_, i64>(2)? as u64, r.get::<_, i64>(3)? as u64);
    }
    Ok(k)
}

pub(crate) fn actor_at(actors: &[ActorId], idx: i64) -> Result<ActorId> {
    actors
        .get(idx as usize)
        .copied()
        .ok_or_else(|| StorageError::Corrupt(format!("unknown actor index {idx}")))
}

/// Records that `actor` (a remote index) has `start..=end`, merging with
/// adjacent ranges in `__lm_have`.
pub(crate) fn add_have(conn: &Connection, actor: u64, start: u64, end: u64) -> Result<()> {
    let a = actor as i64;
    let (mut s, mut e) = (start, end);
    // Ranges that overlap or touch [s, e].
    let mut stmt = conn.prepare_cached(
        "SELECT start, end FROM __lm_have WHERE actor = ?1 AND start <= ?3 AND end >= ?2",
    )?;
    let touching: Vec<(i64, i64)> = stmt
        .query_map(
            (
                a,
                s.saturating_sub(1) as i64,
                e.saturating_add(1).min(i64::MAX as u64) as i64,
            ),
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?
        .collect::<rusqlite::Result<_>>()?;
    for (ts, te) in touching {
        s = s.min(ts as u64);
        e = e.max(te as u64);
        conn.prepare_cached("DELETE FROM __lm_have WHERE actor = ?1 AND start = ?2")?
            .execute((a, ts))?;
    }
    conn.prepare_cached("INSERT INTO __lm_have(actor, start, end) VALUES (?1, ?2, ?3)")?
        .execute((a, s as i64, e as i64))?;
    Ok(())
}

/// Forgets that `actor` index holds `version` (it will be fetched again).
pub(crate) fn remove_have(conn: &Connection, actor: u64, version: u64) -> Result<()> {
    let a = actor as i64;
    let v = version as i64;
    let range: Option<(i64, i64)> = conn
        .prepare_cached(
            "SELECT start, end FROM __lm_have WHERE actor = ?1 AND start <= ?2 AND end >= ?2",
        )?
        .query_row((a, v), |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((s, e)) = range else {
        return Ok(());
    };
    conn.prepare_cached("DELETE FROM __lm_have WHERE actor = ?1 AND start = ?2")?
        .execute((a, s))?;
    if s < v {
        add_have(conn, actor, s as u64, version - 1)?;
    }
    if v < e {
        add_have(conn, actor, version + 1, e as u64)?;
    }
    Ok(())
}

/// Whether remote `actor` index has `version` recorded.
pub(crate) fn has_version(conn: &Connection, actor: u64, version: u64) -> Result<bool> {
    let mut stmt = conn.prepare_cached(
        "SELECT end FROM __lm_have WHERE actor = ?1 AND start <= ?2 ORDER BY start DESC LIMIT 1",
    )?;
    let end: Option<i64> = stmt
        .query_row((actor as i64, version as i64), |r| r.get(0))
        .optional()?;
    Ok(end.is_some_and(|e| e as u64 >= version))
}
