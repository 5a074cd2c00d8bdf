//! Group commit of clients' transactions.
//!
//! [`Node::execute`](crate::Node::execute) queues its transaction here; one
//! task takes everything queued while the writer was busy and runs it as
//! one SQLite transaction ([`Store::client_transactions`]): each client's
//! transaction in a savepoint, with a version of its own, failing alone;
//! one durable commit for the group, after which every client is answered.
//! A lone client pays exactly what it did before; many concurrent ones
//! share the wait for the disk. What the group committed is broadcast
//! together: versions small enough share broadcast messages.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use litemesh_proto::ChangeBatch;
use litemesh_storage::{ClientLimits, Committed, Store};
use tokio::sync::{mpsc, oneshot};

use crate::error::Error;
use crate::node::{ChangeEvent, Executed, Inner, unix_ms};
use crate::sql::Statement;
use crate::token::Token;

/// Clients' transactions committed together, at most.
const GROUP_AT_ONCE: usize = 64;

/// Statements a group takes more transactions for, at most: a long group
/// delays every client in it.
const GROUP_STATEMENTS: usize = 1024;

/// Bytes of a broadcast message that carries several versions, at most.
const BATCH_BYTES: usize = 256 * 1024;

/// One client's transaction, waiting for its turn.
pub(crate) struct CommitRequest {
    pub(crate) statements: Vec<Statement>,
    pub(crate) reply: oneshot::Sender<Result<Executed, Error>>,
}

/// Runs queued transactions, a group at a time, until the node shuts down.
/// A request's work runs to its end even if its client went away; a group
/// under way when the node shuts down is finished and answered (statements
/// still running are stopped, so it ends soon), and what is still queued is
/// answered `ShuttingDown`, never having run.
pub(crate) async fn commit_loop(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<CommitRequest>) {
    let mut shutdown = inner.shutdown.subscribe();
    loop {
        if *shutdown.borrow_and_update() {
            break;
        }
        let first = tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            r = rx.recv() => match r {
                Some(r) => r,
                None => break,
            },
        };
        let mut statements = first.statements.len();
        let mut group = vec![first];
        while group.len() < GROUP_AT_ONCE && statements < GROUP_STATEMENTS {
            match rx.try_recv() {
                Ok(r) => {
                    statements += r.statements.len();
                    group.push(r);
                }
                Err(_) => break,
            }
        }
        commit_group(&inner, group).await;
    }
}

/// What the writer hands back for a group.
struct Outcome {
    results: Vec<Result<Committed<Vec<usize>>, Error>>,
    db_version: u64,
    actor: litemesh_proto::ActorId,
    encoded: Vec<Vec<u8>>,
    tables: BTreeSet<String>,
}

async fn commit_group(inner: &Arc<Inner>, group: Vec<CommitRequest>) {
    let (statements, replies): (Vec<Vec<Statement>>, Vec<_>) =
        group.into_iter().map(|r| (r.statements, r.reply)).unzip();
    let limits = ClientLimits {
        timeout: Some(inner.transaction_timeout),
        ..ClientLimits::default()
    };
    let node = inner.clone();
    let max_broadcast = inner.max_broadcast;
    let res = inner
        .with_writer(move |w| {
            node.rotate_if_on_probation(w)?;
            let results = w.client_transactions(&limits, &statements, |stmts, tx| {
                let mut out = Vec::with_capacity(stmts.len());
                for st in stmts {
                    out.push(tx.execute(&st.sql, &st.params)?);
                }
                Ok(out)
            });
            let results = match results {
                Ok(r) => r,
                Err(e) => {
                    node.wrote(&Err(&e));
                    return Err(e.into());
                }
            };
            // A client's transaction that met a disk error (a full disk, an
            // I/O error) says the file cannot be written, even if the
            // group's commit went through.
            match results.iter().find_map(|r| match r {
                Err(e) if e.is_environmental() => Some(e),
                _ => None,
            }) {
                Some(e) => node.wrote(&Err(e)),
                None if results.iter().any(|r| r.is_ok()) => node.wrote(&Ok(())),
                None => {}
            }
            // Committed: from here on nothing may turn into an error, or a
            // caller would take a durable write for a refused one.
            let versions: Vec<u64> = results
                .iter()
                .filter_map(|r| r.as_ref().ok().and_then(|c| c.version))
                .collect();
            let (encoded, tables) = broadcast_of(w, &versions, max_broadcast);
            Ok(Outcome {
                results: results
                    .into_iter()
                    .map(|r| r.map_err(Error::from))
                    .collect(),
                db_version: w.db_version().unwrap_or(0),
                actor: w.actor_id(),
                encoded,
                tables,
            })
        })
        .await;
    let out = match res {
        Ok(o) => o,
        Err(e) => {
            // The group failed as a whole (nothing of it committed): every
            // client gets the same error, as typed as the first.
            for reply in replies {
                let _ = reply.send(Err(group_error(inner, &e)));
            }
            return;
        }
    };
    inner.commit_groups.fetch_add(1, Ordering::Relaxed);
    inner.transactions_committed.fetch_add(
        out.results.iter().filter(|r| r.is_ok()).count() as u64,
        Ordering::Relaxed,
    );
    let last = out
        .results
        .iter()
        .filter_map(|r| r.as_ref().ok()?.version)
        .max();
    // The broadcast first, then the clients: a client that hears back
    // (and, say, stops the node) finds its write already on its way. After
    // the knowledge is published (`with_writer`), so that peers answering
    // the broadcast never look ahead of this node.
    if let Some(last) = last {
        let _ = inner.changes.send(ChangeEvent {
            tables: out.tables,
            local: true,
        });
        let ms = unix_ms();
        let encoded = (!out.encoded.is_empty()).then_some(out.encoded);
        crate::driver::drive(inner, |c, _| {
            c.handle_encoded_local_commit(last, ms, encoded)
        });
    }
    for (reply, res) in replies.into_iter().zip(out.results) {
        let _ = reply.send(res.map(|c| Executed {
            rows_affected: c.value,
            version: c.version.unwrap_or(out.db_version),
            token: match c.version {
                Some(v) => Token::new(out.actor, v),
                None => Token::default(),
            },
        }));
    }
}

/// What each client of a group that failed as a whole is told: the node
/// shutting down, or the storage error (a full disk, an I/O error: the
/// file's fault, not the request's, so an answer another node may serve).
fn group_error(inner: &Inner, e: &Error) -> Error {
    use litemesh_storage::{Interruption, StorageError};
    if inner.closed() {
        return Error::ShuttingDown;
    }
    match e {
        Error::ShuttingDown
        | Error::Storage(StorageError::Interrupted(Interruption::ShuttingDown)) => {
            Error::ShuttingDown
        }
        Error::Storage(StorageError::Interrupted(i)) => {
            Error::Storage(StorageError::Interrupted(*i))
        }
        Error::Storage(StorageError::Sqlite(rusqlite::Error::SqliteFailure(code, msg))) => {
            Error::Storage(StorageError::Sqlite(rusqlite::Error::SqliteFailure(
                *code,
                msg.clone(),
            )))
        }
        other => Error::Storage(StorageError::Sqlite(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR),
            Some(other.to_string()),
        ))),
    }
}

/// The broadcast messages of versions just committed, encoded (on the
/// blocking pool, not under the core's lock), and the tables they wrote.
/// Versions whose changes fit share messages of up to [`BATCH_BYTES`]; a
/// version that encodes to more than the core's cap goes by anti-entropy
/// (the core's rule, [`litemesh_sync::encode_local_commit`]).
fn broadcast_of(
    w: &Store,
    versions: &[u64],
    max_broadcast: usize,
) -> (Vec<Vec<u8>>, BTreeSet<String>) {
    let mut tables = BTreeSet::new();
    let mut encoded: Vec<Vec<u8>> = Vec::new();
    // A shared message never exceeds the broadcast cap (the estimate
    // overcounts, so what fits by it fits encoded).
    let shared_cap = BATCH_BYTES.min(max_broadcast);
    let mut shared = ChangeBatch::default();
    let mut shared_bytes = 0;
    let flush = |shared: &mut ChangeBatch, encoded: &mut Vec<Vec<u8>>| {
        if !shared.is_empty() {
            let b = std::mem::take(shared);
            encoded.extend(
                litemesh_sync::encode_local_commit(std::slice::from_ref(&b), max_broadcast)
                    .into_iter()
                    .flatten(),
            );
        }
    };
    for &v in versions {
        let mut batches = Vec::new();
        // The size estimate is generous (it overcounts), so only what is
        // surely over the cap is dropped here.
        let mut total = 0;
        let read = w.version_changes(v, BATCH_BYTES, |b| {
            for r in b.versions.iter().flat_map(|vc| &vc.rows) {
                tables.insert(r.table.clone());
                total += r.encoded_size();
            }
            if total <= 2 * max_broadcast {
                batches.push(b);
            }
            Ok(true)
        });
        if let Err(e) = read {
            tracing::error!(
                version = v,
                "committed, but its changes cannot be broadcast: {e}; anti-entropy will offer them"
            );
            continue;
        }
        if total > 2 * max_broadcast {
            continue;
        }
        if batches.len() == 1 && total <= shared_cap {
            // Small: shares a message with the versions next to it.
            if shared_bytes + total > shared_cap {
                flush(&mut shared, &mut encoded);
                shared_bytes = 0;
            }
            shared_bytes += total;
            let b = batches.pop().unwrap_or_default();
            shared.versions.extend(b.versions);
            shared.cleared.extend(b.cleared);
        } else {
            // Large: messages of its own (its chunks), all or none, after
            // the versions before it (receivers see versions in order, so
            // none looks like a gap to pull).
            flush(&mut shared, &mut encoded);
            shared_bytes = 0;
            encoded.extend(
                litemesh_sync::encode_local_commit(&batches, max_broadcast)
                    .into_iter()
                    .flatten(),
            );
        }
    }
    flush(&mut shared, &mut encoded);
    (encoded, tables)
}
