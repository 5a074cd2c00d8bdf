//! The tokio driver of the node core (`litemesh_core::NodeCore`: membership
//! and replication): feeds it inputs, carries out its outputs with quinn and the SQLite
//! connections, and wakes it when its timer is due.
//!
//! Every input goes through [`drive`]: lock the core, hand it the input,
//! drain its outputs, unlock, then act on them. The core decides; this module
//! only moves bytes and runs storage work:
//!
//! - transmits: datagrams and unidirectional streams each in a short task of
//!   its own (QUIC bounds what is in flight), reconciliation
//!   requests (one task per open session, reading its response frames as
//!   the core allows), answers to peers' requests (one task per request,
//!   owning the stream);
//! - storage operations: applies run one at a time on the writer connection
//!   by the apply task; extractions run on the reader connection in the
//!   blocking pool, streaming their batches to the requester's task;
//! - events: moving to a new actor id, cancelling or resuming a session.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use litemesh_core::{Event, NodeCore, SyncEvent, Transmit};
use litemesh_proto::ChangeBatch;
use litemesh_storage::{SnapshotFrame, StorageError};
use litemesh_sync::{
    Extracted, OpId, RequestId, SessionId, StorageOp, encode_key_chunk, encode_snapshot_base,
    encode_sync_batch,
};
use litemesh_transport::Responder;
use tokio::sync::{Notify, mpsc};

use crate::node::Inner;

/// What the driver keeps of the sessions and requests in flight.
#[derive(Default)]
pub(crate) struct Streams {
    sessions: BTreeMap<SessionId, Arc<SessionCtl>>,
    serving: BTreeMap<RequestId, mpsc::Sender<Serve>>,
    next_request: u64,
}

/// Control of one session's reading task.
#[derive(Default)]
struct SessionCtl {
    wake: Notify,
    cancelled: AtomicBool,
}

/// What a request's task sends on its stream.
enum Serve {
    Frame(Vec<u8>),
    Last(Vec<u8>),
    Reject(u32),
}

fn streams(inner: &Inner) -> std::sync::MutexGuard<'_, Streams> {
    inner.streams.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `f` on the core, then carries out everything it asked for. Callable
/// from any task or blocking thread of the runtime.
pub(crate) fn drive<T>(inner: &Arc<Inner>, f: impl FnOnce(&mut NodeCore, Duration) -> T) -> T {
    let now = inner.now();
    let mut transmits = Vec::new();
    let mut ops = Vec::new();
    let mut events = Vec::new();
    let (out, next) = {
        let mut core = inner.core();
        let out = f(&mut core, now);
        while let Some(t) = core.poll_transmit(now) {
            transmits.push(t);
        }
        while let Some(op) = core.poll_storage() {
            ops.push(op);
        }
        while let Some(e) = core.poll_event() {
            events.push(e);
        }
        (out, core.poll_timeout(now))
    };
    // Wake the timer task only if the core wants to be called earlier than
    // it is set for.
    let next = next.as_micros() as u64;
    if next < inner.timer_at.load(Ordering::SeqCst) {
        inner.timer_at.store(next, Ordering::SeqCst);
        inner.timer.notify_one();
    }
    for t in transmits {
        transmit(inner, t);
    }
    for op in ops {
        storage(inner, op);
    }
    for e in events {
        event(inner, e);
    }
    out
}

fn transmit(inner: &Arc<Inner>, t: Transmit) {
    let t = match t {
        Transmit::Datagram { to, bytes } => {
            return send(inner, to, Out::Datagram(Bytes::from(bytes)));
        }
        Transmit::Sync(t) => t,
    };
    use litemesh_sync::Transmit as T;
    match t {
        T::Uni { to, bytes } => send(inner, to, Out::Uni(Bytes::from_owner(bytes))),
        T::Request { session, to, bytes } => {
            let ctl = Arc::new(SessionCtl::default());
            streams(inner).sessions.insert(session, ctl.clone());
            tokio::spawn(run_session(inner.clone(), session, to, bytes, ctl));
        }
        T::Respond { request, bytes } => serve(inner, request, Serve::Last(bytes)),
        T::Reject { request, code } => serve(inner, request, Serve::Reject(code)),
    }
}

/// A message to send on the transport.
pub(crate) enum Out {
    Datagram(Bytes),
    Uni(Bytes),
}

/// Sends `out` to `to` in a task of its own: a send may wait on a
/// connection being opened or on QUIC flow control, and must hold up
/// nothing else. (A bounded queue and a bounded number of sends per peer
/// were tried: under the chaos workload they dropped broadcasts behind
/// large messages and lag grew fivefold; QUIC's own limits bound what is in
/// flight.)
fn send(inner: &Arc<Inner>, to: SocketAddr, out: Out) {
    let tr = inner.transport.clone();
    inner.count_sent(
        to,
        match &out {
            Out::Datagram(b) | Out::Uni(b) => b.len(),
        },
    );
    tokio::spawn(async move {
        match out {
            Out::Datagram(b) => {
                if let Err(e) = tr.send_datagram(to, b).await {
                    tracing::trace!(%to, "datagram not sent: {e}");
                }
            }
            Out::Uni(b) => {
                if let Err(e) = tr.send_uni(to, b).await {
                    tracing::debug!(%to, "send failed: {e}");
                }
            }
        }
    });
}

/// Hands a final answer to the task of `request` (gone if the requester left).
fn serve(inner: &Arc<Inner>, request: RequestId, msg: Serve) {
    let tx = streams(inner).serving.get(&request).cloned();
    if let Some(tx) = tx {
        // Every batch of the answer is already in the channel (the
        // extraction ended before the core answers), but the channel may
        // still be full: the final message waits for room rather than
        // being lost, which would leave the requester waiting on a stream
        // that never ends.
        match tx.try_send(msg) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(msg)) => {
                tokio::spawn(async move {
                    let _ = tx.send(msg).await;
                });
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

fn storage(inner: &Arc<Inner>, op: StorageOp) {
    match op {
        StorageOp::Apply { op, batches } => {
            let _ = inner.apply_tx.send((op, batches));
        }
        StorageOp::Extract {
            op,
            request,
            theirs,
            requester,
            batch_bytes,
            listing_only,
            snapshot,
        } => {
            let tx = streams(inner).serving.get(&request).cloned();
            let inner = inner.clone();
            let max = inner.max_message;
            tokio::task::spawn_blocking(move || {
                let outcome = match tx {
                    None => Extracted::Interrupted,
                    Some(tx) => extract(
                        &inner,
                        &tx,
                        &theirs,
                        requester.as_ref(),
                        snapshot.as_ref().map(|c| (c, listing_only)),
                        batch_bytes,
                        max,
                    ),
                };
                if let Extracted::Failed(e) = &outcome {
                    tracing::warn!("serving a sync failed: {e}");
                }
                drive(&inner, |c, now| c.handle_extracted(now, op, outcome));
            });
        }
        StorageOp::Prune {
            op,
            chunk,
            theirs,
            need,
        } => {
            let inner = inner.clone();
            tokio::spawn(async move {
                let i2 = inner.clone();
                let res = inner
                    .with_writer(move |w| {
                        // It may write (rows deleted or rebased): never
                        // under a version number a peer already holds.
                        i2.rotate_if_on_probation(w)?;
                        Ok(w.prune_absent(&chunk, &theirs, &need)?)
                    })
                    .await;
                let res = match res {
                    Ok(p) => {
                        if !p.tables_changed.is_empty() {
                            let _ = inner.changes.send(crate::node::ChangeEvent {
                                tables: p.tables_changed.clone(),
                                local: false,
                            });
                        }
                        Ok(litemesh_sync::Pruned {
                            dropped: p.dropped,
                            rebased: p.rebased,
                            checked: p.checked,
                            complete: p.complete,
                            cursor: p.cursor,
                            now_checked: p.now_checked,
                        })
                    }
                    Err(e) => {
                        tracing::warn!("checking a snapshot listing failed: {e}");
                        Err(e.to_string())
                    }
                };
                drive(&inner, |c, now| c.handle_pruned(now, op, res));
            });
        }
    }
}

/// Streams every batch `theirs` lacks to the requester's task.
fn extract(
    inner: &Inner,
    tx: &mpsc::Sender<Serve>,
    theirs: &litemesh_proto::Knowledge,
    requester: Option<&litemesh_proto::Entitlement>,
    snapshot: Option<(&litemesh_proto::SnapshotCursor, bool)>,
    batch_bytes: usize,
    max: usize,
) -> Extracted {
    // Read under the reader's lock into memory, up to a budget, then send
    // with the lock released: a requester that reads slowly (its applies
    // are behind) slows its own answer only, never the others this node
    // serves. Past the budget the answer ends early; the requester, told
    // by the last frame that this node holds more, comes back at once and
    // resumes where this answer stopped.
    let mut frames = Vec::new();
    let mut bytes = 0;
    let mut skipped = 0u64;
    let res = {
        let mut r = inner.reader.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = r.refresh() {
            return Extracted::Failed(e.to_string());
        }
        let mut push = |frame: Vec<u8>| {
            bytes += frame.len();
            frames.push(frame);
            bytes < SERVE_BUDGET
        };
        match snapshot {
            Some((from, listing_only)) => {
                r.snapshot_for(theirs, requester, from, listing_only, batch_bytes, |f| {
                    Ok(match f {
                        SnapshotFrame::Batch(b) => match encode_sync_batch(&b, max) {
                            Ok(frame) => push(frame),
                            // A snapshot must not skip what it cannot send.
                            Err(e) => return Err(StorageError::SnapshotUnavailable(e.to_string())),
                        },
                        SnapshotFrame::Base(k) => push(
                            encode_snapshot_base(k, max)
                                .map_err(|e| StorageError::SnapshotUnavailable(e.to_string()))?,
                        ),
                        SnapshotFrame::Keys(c) => push(
                            encode_key_chunk(c, max)
                                .map_err(|e| StorageError::SnapshotUnavailable(e.to_string()))?,
                        ),
                    })
                })
            }
            None => r.changes_for(theirs, requester, batch_bytes, |b| {
                match encode_sync_batch(&b, max) {
                    Ok(frame) => {
                        if !push(frame) {
                            return Ok(false);
                        }
                    }
                    Err(e) => {
                        // A change written before the row limit existed, larger
                        // than a message: skipped, never failing the rest.
                        skipped += 1;
                        let versions: Vec<String> = b
                            .versions
                            .iter()
                            .map(|v| format!("{}:{}", v.actor, v.version))
                            .collect();
                        tracing::error!(
                            versions = ?versions,
                            "a change batch cannot be sent ({e}); skipping it, the rest goes on"
                        );
                    }
                }
                Ok(true)
            }),
        }
    };
    match res {
        Err(StorageError::SnapshotUnavailable(why)) => {
            tracing::info!("a peer asked for a snapshot this node cannot serve now: {why}");
            return Extracted::Refused(format!("no snapshot from this node now: {why}"));
        }
        Err(e) => return Extracted::Failed(e.to_string()),
        Ok(_) => {}
    }
    for frame in frames {
        if tx.blocking_send(Serve::Frame(frame)).is_err() {
            return Extracted::Interrupted;
        }
    }
    Extracted::Done { skipped }
}

/// Bytes of frames one answer reads before it sends them (and ends).
const SERVE_BUDGET: usize = 16 * 1024 * 1024;

fn event(inner: &Arc<Inner>, e: Event) {
    let e = match e {
        Event::Sync(e) => e,
        Event::MembersChanged => return,
        Event::LeaveDone => {
            if let Some(tx) = inner.left.lock().unwrap_or_else(|e| e.into_inner()).take() {
                let _ = tx.send(());
            }
            return;
        }
        Event::Collect(cut) => {
            start_collection(inner, cut);
            return;
        }
    };
    match e {
        SyncEvent::RotateActor {
            from,
            their_head,
            our_head,
        } => {
            tracing::error!(
                %from,
                their_head,
                our_head,
                "a peer holds versions of this node's actor that its file does not (lost \
                 commits, a restored or copied file): moving to a new actor id so that no \
                 version is reused"
            );
            let inner = inner.clone();
            tokio::spawn(async move {
                match inner.with_writer(|w| Ok(w.rotate_actor()?)).await {
                    Ok(new) => {
                        let head = inner
                            .knowledge
                            .borrow()
                            .have
                            .get(&new)
                            .and_then(|r| r.max())
                            .unwrap_or(0);
                        drive(&inner, |c, now| c.set_actor(now, new, head));
                    }
                    Err(e) => tracing::error!("could not move to a new actor id: {e}"),
                }
            });
        }
        SyncEvent::RaiseFloors(floors) => {
            let inner = inner.clone();
            tokio::spawn(async move {
                let res = inner
                    .with_writer(move |w| {
                        w.raise_floors(&floors)?;
                        Ok(w.floors()?)
                    })
                    .await;
                match res {
                    Ok(floors) => drive(&inner, |c, _| c.set_floors(floors)),
                    Err(e) => tracing::error!("could not record a peer's collection floors: {e}"),
                }
            });
        }
        SyncEvent::PeerNeedsSnapshot { peer, missing } => {
            tracing::error!(
                %peer,
                missing,
                "a peer lacks versions whose tombstones this node collected (it was away longer \
                 than collection waited for it): its reconciliations are refused and its \
                 broadcasts dropped until it is replaced by a fresh file or a restore"
            );
        }
        SyncEvent::NeedsSnapshot { from, reason, need } => {
            tracing::error!(
                %from,
                "this node cannot catch up incrementally and now refuses writes: {reason}"
            );
            // Kept in the file: a restart must not forget it.
            let inner = inner.clone();
            let reason = format!("{from} said: {reason}");
            tokio::spawn(async move {
                if let Err(e) = inner
                    .with_writer(move |w| Ok(w.set_needs_snapshot(&reason, &need)?))
                    .await
                {
                    tracing::error!("could not record that this node needs a snapshot: {e}");
                }
            });
        }
        SyncEvent::SnapshotComplete { from, progress } => {
            tracing::info!(
                %from,
                keys_checked = progress.checked,
                rows_dropped = progress.dropped,
                rows_rebased = progress.rebased,
                "caught up by snapshot: this node is whole again, takes writes and serves its data"
            );
        }
        SyncEvent::CancelSession(id) => {
            if let Some(ctl) = streams(inner).sessions.get(&id) {
                ctl.cancelled.store(true, Ordering::SeqCst);
                ctl.wake.notify_one();
            }
        }
        SyncEvent::ResumeReading(id) => {
            if let Some(ctl) = streams(inner).sessions.get(&id) {
                ctl.wake.notify_one();
            }
        }
        SyncEvent::SyncEnded { peer, error } => match error {
            None => {
                if inner.joining.swap(false, Ordering::SeqCst) {
                    tracing::info!(%peer, "first reconciliation with the mesh done: writes accepted");
                }
            }
            Some(e) => tracing::debug!(%peer, "sync failed: {e}"),
        },
    }
}

/// Change-log chunks one collection pass reads (one writer transaction,
/// a few milliseconds): a backlog is worked through pass by pass, with
/// writes in between.
const COLLECT_BUDGET: u64 = 512;

/// Collects the tombstones of `cut` in the background, one pass at a time;
/// a cut that arrives meanwhile is taken after (only the newest).
fn start_collection(
    inner: &Arc<Inner>,
    cut: std::collections::BTreeMap<litemesh_proto::ActorId, u64>,
) {
    {
        let mut c = inner.collection.lock().unwrap_or_else(|e| e.into_inner());
        c.pending = Some(cut);
        if c.running {
            return;
        }
        c.running = true;
    }
    let inner = inner.clone();
    tokio::spawn(async move {
        loop {
            let cut = {
                let mut c = inner.collection.lock().unwrap_or_else(|e| e.into_inner());
                match c.pending.take() {
                    Some(cut) => cut,
                    None => {
                        c.running = false;
                        return;
                    }
                }
            };
            let mut collected = 0;
            loop {
                let pass_cut = cut.clone();
                let res = inner
                    .with_writer(move |w| {
                        let c = w.collect(&pass_cut, COLLECT_BUDGET)?;
                        Ok((c, w.floors()?, w.collected_through()?))
                    })
                    .await;
                match res {
                    Ok((c, _, _)) if c.waiting => {
                        // Parked or quarantined changes must apply first:
                        // try again in a while (unless a newer cut comes).
                        inner
                            .collection
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .waiting = true;
                        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                        let mut s = inner.collection.lock().unwrap_or_else(|e| e.into_inner());
                        if s.pending.is_none() {
                            s.pending = Some(cut.clone());
                        }
                        break;
                    }
                    Ok((c, floors, through)) => {
                        collected += c.tombstones;
                        {
                            let mut s = inner.collection.lock().unwrap_or_else(|e| e.into_inner());
                            s.tombstones += c.tombstones;
                            s.log_entries_removed += c.dead_entries;
                            s.passes += 1;
                            s.error = None;
                            s.waiting = false;
                            if !c.more {
                                s.done = cut.clone();
                            }
                        }
                        drive(&inner, |core, _| {
                            core.set_floors(floors);
                            core.set_collected(through);
                        });
                        if !c.more {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::error!("collecting tombstones failed: {e}");
                        inner
                            .collection
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .error = Some(e.to_string());
                        break;
                    }
                }
            }
            if collected > 0 {
                tracing::info!(
                    tombstones = collected,
                    "collected tombstones every node holds"
                );
            }
        }
    });
}

/// Reads the response of one reconciliation this node opened, frame by
/// frame as the core allows.
async fn run_session(
    inner: Arc<Inner>,
    session: SessionId,
    to: SocketAddr,
    request: Vec<u8>,
    ctl: Arc<SessionCtl>,
) {
    // Every wait also ends at shutdown: no task outlives the node.
    let mut shutdown = inner.shutdown.subscribe();
    let stopping = || "the node is shutting down".to_string();
    inner.count_sent(to, request.len());
    let opened = tokio::select! {
        r = inner.transport.request(to, Bytes::from(request)) => r.map_err(|e| e.to_string()),
        _ = shutdown.wait_for(|s| *s) => Err(stopping()),
    };
    let end = match opened {
        Err(e) => Err(e),
        Ok(mut stream) => loop {
            if ctl.cancelled.load(Ordering::SeqCst) {
                break Ok(());
            }
            let next = tokio::select! {
                r = stream.next() => r,
                _ = shutdown.wait_for(|s| *s) => break Err(stopping()),
            };
            match next {
                Err(e) => break Err(e.to_string()),
                Ok(None) => break Ok(()),
                Ok(Some(frame)) => {
                    // Decoded here, not under the core's lock.
                    let frame = litemesh_sync::decode_frame(&frame, inner.max_message);
                    let more = drive(&inner, |c, now| c.handle_decoded_frame(now, session, frame));
                    if !more {
                        // Paused while its applies catch up, or ended.
                        tokio::select! {
                            _ = ctl.wake.notified() => {}
                            _ = shutdown.wait_for(|s| *s) => break Err(stopping()),
                        }
                    }
                }
            }
        },
    };
    if !ctl.cancelled.load(Ordering::SeqCst) {
        drive(&inner, |c, now| c.handle_response_end(now, session, end));
    }
    streams(&inner).sessions.remove(&session);
}

/// Broadcasts larger than this are decoded off the incoming loop.
const DECODE_INLINE_BYTES: usize = 64 * 1024;

/// A message on a unidirectional stream. Sync broadcasts (up to a megabyte)
/// are decoded here, outside the core's lock; membership messages are small.
pub(crate) fn on_uni(inner: &Arc<Inner>, from: SocketAddr, bytes: &[u8]) {
    let res = match bytes.split_first() {
        // A large broadcast is decoded on the blocking pool: the incoming
        // loop (membership probes, requests) never waits on it.
        Some((&litemesh_proto::channel::SYNC, rest)) if rest.len() > DECODE_INLINE_BYTES => {
            let inner = inner.clone();
            let bytes = Bytes::copy_from_slice(rest);
            tokio::task::spawn_blocking(move || {
                match litemesh_sync::decode_broadcast(&bytes, inner.max_message) {
                    Ok(b) => drive(&inner, |c, now| c.handle_decoded_broadcast(now, from, b)),
                    Err(e) => tracing::warn!(%from, "bad message refused: {e}"),
                }
            });
            Ok(())
        }
        Some((&litemesh_proto::channel::SYNC, rest)) => {
            match litemesh_sync::decode_broadcast(rest, inner.max_message) {
                Ok(b) => {
                    drive(inner, |c, now| c.handle_decoded_broadcast(now, from, b));
                    Ok(())
                }
                Err(e) => Err(e.to_string()),
            }
        }
        _ => drive(inner, |c, now| c.handle_uni(now, from, bytes)),
    };
    if let Err(e) = res {
        tracing::warn!(%from, "bad message refused: {e}");
    }
}

/// A peer opened a reconciliation: hand it to the core and answer it.
pub(crate) fn on_request(inner: &Arc<Inner>, from: SocketAddr, bytes: Bytes, respond: Responder) {
    if bytes.first() == Some(&litemesh_proto::channel::NODE) {
        // A forwarded query or an acknowledgement wait: not the core's. It
        // ends at shutdown like every task that holds the node.
        let inner = inner.clone();
        let mut stop = inner.shutdown.subscribe();
        tokio::spawn(async move {
            let body = bytes.slice(1..);
            tokio::select! {
                _ = crate::remote::serve(inner.clone(), from, body, respond) => {}
                _ = stop.wait_for(|s| *s) => {}
            }
        });
        return;
    }
    let (tx, rx) = mpsc::channel(4);
    let request = {
        let mut s = streams(inner);
        s.next_request += 1;
        let id = RequestId(s.next_request);
        s.serving.insert(id, tx);
        id
    };
    tokio::spawn(answer(inner.clone(), request, respond, rx));
    if let Err(e) = drive(inner, |c, now| c.handle_request(now, from, request, &bytes)) {
        tracing::warn!(%from, "bad sync request refused: {e}");
    }
}

/// Writes the answer to one request: the batches, then the last frame.
async fn answer(
    inner: Arc<Inner>,
    request: RequestId,
    mut respond: Responder,
    mut rx: mpsc::Receiver<Serve>,
) {
    let mut shutdown = inner.shutdown.subscribe();
    let peer = respond.peer();
    loop {
        let msg = tokio::select! {
            m = rx.recv() => m,
            _ = shutdown.wait_for(|s| *s) => None,
        };
        let Some(msg) = msg else { break };
        if let Serve::Frame(f) | Serve::Last(f) = &msg {
            inner.count_sent(peer, f.len());
        }
        match msg {
            Serve::Frame(f) => {
                if let Err(e) = respond.send(Bytes::from(f)).await {
                    tracing::debug!("sync response interrupted: {e}");
                    break;
                }
            }
            Serve::Last(f) => {
                if respond.send(Bytes::from(f)).await.is_ok() {
                    let _ = respond.finish();
                }
                break;
            }
            Serve::Reject(code) => {
                respond.reject(code);
                break;
            }
        }
    }
    streams(&inner).serving.remove(&request);
}

/// Applies what the core asks for, on the writer: everything queued while
/// the writer was busy (up to [`APPLY_AT_ONCE`] operations and
/// [`APPLY_ROWS_AT_ONCE`] row changes) in one SQLite transaction. Merges
/// commit without waiting for the disk; they are synced at most
/// [`MERGE_SYNC_DELAY`] later (or by the next local commit).
pub(crate) async fn apply_loop(
    inner: Arc<Inner>,
    mut rx: mpsc::UnboundedReceiver<(OpId, Vec<ChangeBatch>)>,
) {
    let mut sync_at: Option<tokio::time::Instant> = None;
    let mut last_start: Option<tokio::time::Instant> = None;
    loop {
        let first = match sync_at {
            None => rx.recv().await,
            Some(at) => tokio::select! {
                op = rx.recv() => op,
                _ = tokio::time::sleep_until(at) => {
                    sync_at = None;
                    inner.sync_merges().await;
                    continue;
                }
            },
        };
        let Some(first) = first else { break };
        // Back-to-back arrivals: at most one transaction per
        // `APPLY_INTERVAL`, so that a stream of small broadcasts is applied
        // a few at a time rather than paying a commit each. A lone arrival
        // goes at once.
        if let Some(last) = last_start {
            let next = last + APPLY_INTERVAL;
            if tokio::time::Instant::now() < next {
                tokio::time::sleep_until(next).await;
            }
        }
        last_start = Some(tokio::time::Instant::now());
        // Everything queued meanwhile goes in the same transaction.
        let mut rows = row_changes(&first.1);
        let mut ops = vec![first];
        while ops.len() < APPLY_AT_ONCE && rows < APPLY_ROWS_AT_ONCE {
            match rx.try_recv() {
                Ok(op) => {
                    rows += row_changes(&op.1);
                    ops.push(op);
                }
                Err(_) => break,
            }
        }
        let (results, unsynced) = inner.apply_many(ops).await;
        if unsynced && sync_at.is_none() {
            sync_at = Some(tokio::time::Instant::now() + MERGE_SYNC_DELAY);
        }
        let results: Vec<(OpId, Result<bool, String>)> = results
            .into_iter()
            .map(|(op, res)| {
                let res = match res {
                    Ok(newly) => Ok(newly),
                    // Shutting down interrupts an apply in progress: nothing
                    // is lost, anti-entropy brings it again after the restart.
                    Err(e) if inner.closed() => {
                        tracing::debug!("changes not applied: {e}");
                        Err(e.to_string())
                    }
                    Err(e) => {
                        tracing::warn!("applying changes from a peer failed: {e}");
                        Err(e.to_string())
                    }
                };
                (op, res)
            })
            .collect();
        drive(&inner, |c, now| {
            for (op, res) in results {
                c.handle_applied(now, op, res);
            }
        });
    }
    if sync_at.is_some() {
        inner.sync_merges().await;
    }
}

/// Row changes in an operation's batches.
fn row_changes(batches: &[ChangeBatch]) -> usize {
    batches
        .iter()
        .flat_map(|b| &b.versions)
        .map(|v| v.rows.len())
        .sum()
}

/// Apply transactions start at least this far apart (see [`apply_loop`]).
const APPLY_INTERVAL: Duration = Duration::from_millis(3);

/// Storage operations applied in one transaction, at most.
const APPLY_AT_ONCE: usize = 64;

/// Row changes an apply transaction takes more operations for, at most (a
/// long transaction delays what queues behind it).
const APPLY_ROWS_AT_ONCE: usize = 4096;

/// How long merged remote changes may wait for a sync to disk: what a power
/// failure can take from the remote changes a node holds (a crash of the
/// process takes nothing), fetched again from peers after the restart.
pub(crate) const MERGE_SYNC_DELAY: Duration = Duration::from_millis(100);

/// Wakes the core when its timer is due (rounds, retries, rate limit,
/// session deadlines); every other input wakes this task to recompute it.
pub(crate) async fn timer_loop(inner: Arc<Inner>) {
    let mut shutdown = inner.shutdown.subscribe();
    loop {
        let now = inner.now();
        let next = {
            // Set under the core's lock: an input that comes later and wants
            // an earlier call sees this value and wakes the task.
            let core = inner.core();
            let next = core.poll_timeout(now).min(now + Duration::from_secs(1));
            inner
                .timer_at
                .store(next.as_micros() as u64, Ordering::SeqCst);
            next
        };
        let wake = inner.epoch + next;
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {
                drive(&inner, |c, now| c.handle_timeout(now));
            }
            _ = inner.timer.notified() => {}
            _ = shutdown.changed() => break,
        }
    }
}
