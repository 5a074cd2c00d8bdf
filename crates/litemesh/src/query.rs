//! Client queries: a pool of sandboxed read-only connections, time limits,
//! row limits and streaming.
//!
//! Each query takes one connection of the pool (so a slow query holds up only
//! itself), runs on tokio's blocking pool, and hands its rows over a bounded
//! channel in chunks: memory stays bounded whatever the result's size, and a
//! slow reader slows the query instead of buffering it. The query stops — and
//! its connection returns to the pool, with no transaction left open — when
//! it ends, when it runs past its time limit, when its [`Rows`] are dropped
//! (the client went away), or when the node shuts down.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use litemesh_storage::{ClientLimits, ReadConnection, RowSink, StorageError, Value};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::error::Error;
use crate::sql::Statement;
use crate::token::Token;

/// Rows per chunk handed to the reader.
const CHUNK_ROWS: usize = 256;
/// Chunks buffered between the query and its reader.
const CHUNKS_IN_FLIGHT: usize = 4;

/// How to run a query.
#[derive(Debug, Clone, Default)]
pub struct QueryOptions {
    /// Read-your-writes: first wait until this node holds everything the
    /// token names.
    pub min_token: Option<Token>,
    /// How long to wait for `min_token` (then [`Error::Lagging`]).
    pub wait: Duration,
    /// Time limit of the query itself (default: the node's
    /// `Settings::query_timeout`).
    pub timeout: Option<Duration>,
    /// Most rows returned (default: the node's `Settings::max_query_rows`; 0
    /// for no limit). A result past it ends with [`Error::TooManyRows`],
    /// never silently cut.
    pub max_rows: Option<u64>,
    /// Bounded staleness: serve only if this node's copy of every writer it
    /// knows was known complete at most this long ago (its replication lag,
    /// see docs/consistency.md); waits up to `wait` for that, then
    /// [`Error::Stale`].
    pub max_lag: Option<Duration>,
    /// What to do when this node cannot satisfy `min_token` / `max_lag`
    /// in time.
    pub fallback: Fallback,
}

/// Where a query goes when this node cannot satisfy its read level.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Fallback {
    /// Nowhere: the query fails ([`Error::Lagging`], [`Error::Stale`]).
    #[default]
    None,
    /// To the nearest reachable peer (by round-trip time) that satisfies the
    /// level, over the mesh's QUIC connections; [`Rows::served_by`] names it.
    /// This node waits up to half of `wait` itself first.
    Nearest,
}

pub(crate) struct QueryPool {
    conns: Mutex<Vec<ReadConnection>>,
    permits: Arc<Semaphore>,
}

impl QueryPool {
    pub(crate) fn new(conns: Vec<ReadConnection>) -> QueryPool {
        QueryPool {
            permits: Arc::new(Semaphore::new(conns.len())),
            conns: Mutex::new(conns),
        }
    }
}

enum Item {
    Rows(Vec<Vec<Value>>),
    End,
    Failed(Error),
}

/// The rows of a running query, in order. Dropping it stops the query.
pub struct Rows {
    columns: Vec<String>,
    rx: mpsc::Receiver<Item>,
    buf: VecDeque<Vec<Value>>,
    cancel: Arc<AtomicBool>,
    timeout: Duration,
    done: bool,
    /// The peer that ran the query, if it was not this node.
    served_by: Option<String>,
}

impl std::fmt::Debug for Rows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rows")
            .field("columns", &self.columns)
            .finish()
    }
}

impl Rows {
    /// The result's column names.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The name of the peer that ran the query (`fallback=nearest`), or
    /// `None` if this node did.
    pub fn served_by(&self) -> Option<&str> {
        self.served_by.as_deref()
    }

    /// A result run on a peer, received whole.
    pub(crate) fn forwarded(
        served_by: String,
        columns: Vec<String>,
        rows: Vec<Vec<Value>>,
    ) -> Rows {
        let (_, rx) = mpsc::channel(1);
        Rows {
            columns,
            rx,
            buf: rows.into(),
            cancel: Arc::new(AtomicBool::new(false)),
            timeout: Duration::ZERO,
            done: true,
            served_by: Some(served_by),
        }
    }

    /// The next row; `None` at the end; an error ends the stream (time limit,
    /// row limit, a runtime error of the statement).
    pub async fn next(&mut self) -> Option<Result<Vec<Value>, Error>> {
        loop {
            if let Some(r) = self.buf.pop_front() {
                return Some(Ok(r));
            }
            if self.done {
                return None;
            }
            match self.rx.recv().await {
                Some(Item::Rows(rows)) => self.buf.extend(rows),
                Some(Item::End) => self.done = true,
                Some(Item::Failed(e)) => {
                    self.done = true;
                    return Some(Err(e));
                }
                None => {
                    // The query stopped without saying why: it could not hand
                    // its rows over in time (the reader was too slow).
                    self.done = true;
                    return Some(Err(Error::Storage(StorageError::Interrupted(
                        litemesh_storage::Interruption::TimedOut(self.timeout),
                    ))));
                }
            }
        }
    }
}

impl Drop for Rows {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::SeqCst);
    }
}

/// A connection taken from the pool, returned when dropped.
struct Lease {
    conn: Option<ReadConnection>,
    pool: Arc<QueryPool>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            self.pool
                .conns
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(c);
        }
    }
}

/// Hands columns and chunks of rows to the async side.
struct Sink {
    columns: Option<oneshot::Sender<Vec<String>>>,
    chunk: Vec<Vec<Value>>,
    tx: mpsc::Sender<Item>,
    rt: tokio::runtime::Handle,
    deadline: tokio::time::Instant,
    count: u64,
    max_rows: u64,
}

impl Sink {
    fn send(&mut self, item: Item) -> bool {
        let tx = self.tx.clone();
        let deadline = self.deadline;
        self.rt
            .block_on(async move { tokio::time::timeout_at(deadline, tx.send(item)).await })
            .is_ok_and(|r| r.is_ok())
    }
}

impl RowSink for Sink {
    fn columns(&mut self, names: Vec<String>) -> litemesh_storage::Result<bool> {
        if let Some(tx) = self.columns.take() {
            return Ok(tx.send(names).is_ok());
        }
        Ok(true)
    }

    fn row(&mut self, values: Vec<Value>) -> litemesh_storage::Result<bool> {
        if self.max_rows > 0 && self.count >= self.max_rows {
            let rows = std::mem::take(&mut self.chunk);
            if !rows.is_empty() && !self.send(Item::Rows(rows)) {
                return Ok(false);
            }
            let max = self.max_rows;
            self.send(Item::Failed(Error::TooManyRows(max)));
            return Ok(false);
        }
        self.count += 1;
        self.chunk.push(values);
        if self.chunk.len() >= CHUNK_ROWS {
            let rows = std::mem::take(&mut self.chunk);
            return Ok(self.send(Item::Rows(rows)));
        }
        Ok(true)
    }
}

/// Starts `statement` on a pooled connection. Returns once its columns are
/// known and its first rows (or its error) are in.
pub(crate) async fn start(
    pool: &Arc<QueryPool>,
    statement: Statement,
    timeout: Duration,
    max_rows: u64,
) -> Result<Rows, Error> {
    start_for(pool, statement, timeout, max_rows, None).await
}

/// [`start`] for another node (a forwarded query): it may only read tables
/// `on_behalf_of` may hold (table placement).
pub(crate) async fn start_for(
    pool: &Arc<QueryPool>,
    statement: Statement,
    timeout: Duration,
    max_rows: u64,
    on_behalf_of: Option<litemesh_proto::Entitlement>,
) -> Result<Rows, Error> {
    let started = std::time::Instant::now();
    let deadline = tokio::time::Instant::now() + timeout;
    let permit = match tokio::time::timeout_at(deadline, pool.permits.clone().acquire_owned()).await
    {
        Ok(Ok(p)) => p,
        Ok(Err(_)) => return Err(Error::ShuttingDown),
        Err(_) => {
            return Err(Error::Storage(StorageError::Interrupted(
                litemesh_storage::Interruption::TimedOut(timeout),
            )));
        }
    };
    let cancel = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
    let (ctx, crx) = oneshot::channel();
    let pool2 = pool.clone();
    let cancel2 = cancel.clone();
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let Some(conn) = pool2.conns.lock().unwrap_or_else(|e| e.into_inner()).pop() else {
            let _ = tx.blocking_send(Item::Failed(Error::ShuttingDown));
            return;
        };
        // Back to the pool on every path, a panic included.
        let mut lease = Lease {
            conn: Some(conn),
            pool: pool2.clone(),
        };
        let mut sink = Sink {
            columns: Some(ctx),
            chunk: Vec::new(),
            tx: tx.clone(),
            rt,
            deadline,
            count: 0,
            max_rows,
        };
        let limits = ClientLimits {
            timeout: Some(timeout),
            started: Some(started),
            cancel: Some(cancel2),
            on_behalf_of,
        };
        let res = lease.conn.as_mut().expect("leased").query(
            &statement.sql,
            &statement.params,
            &limits,
            &mut sink,
        );
        drop(lease);
        let last = match res {
            Ok(()) => {
                let rows = std::mem::take(&mut sink.chunk);
                if !rows.is_empty() && !sink.send(Item::Rows(rows)) {
                    return;
                }
                Item::End
            }
            Err(e) => Item::Failed(Error::Storage(e)),
        };
        sink.send(last);
    });
    let mut rows = Rows {
        columns: Vec::new(),
        rx,
        buf: VecDeque::new(),
        cancel,
        timeout,
        done: false,
        served_by: None,
    };
    match crx.await {
        Ok(columns) => rows.columns = columns,
        // The statement failed before it had columns (bad SQL, refused).
        Err(_) => {
            return match rows.rx.recv().await {
                Some(Item::Failed(e)) => Err(e),
                _ => Err(Error::ShuttingDown),
            };
        }
    }
    // Read ahead to the first rows, so that an error on the first row (a
    // runtime error, the time limit) is the answer rather than a stream that
    // ends badly.
    match rows.rx.recv().await {
        Some(Item::Rows(r)) => rows.buf.extend(r),
        Some(Item::End) => rows.done = true,
        Some(Item::Failed(e)) => return Err(e),
        None => {
            return Err(Error::Storage(StorageError::Interrupted(
                litemesh_storage::Interruption::TimedOut(timeout),
            )));
        }
    }
    Ok(rows)
}
