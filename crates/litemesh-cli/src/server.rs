//! The HTTP server of the API: a bounded number of connections, each with
//! time limits, so that slow or idle clients cannot hold the agent's
//! resources (descriptors, tasks, query connections) for long.
//!
//! - at most `max_connections` open at once; past that, the connection that
//!   has waited longest without a request in progress (idle, or still sending
//!   its headers) is closed to make room, so that a flood of idle or slow
//!   connections cannot shut out a health check; when every connection is
//!   busy, the new one is closed at once (each counted);
//! - a client must send a request's headers within `header_timeout` of the
//!   connection opening or of the previous answer (this also closes idle
//!   kept-alive connections), and its body within the body timeout (see
//!   `api::read_body`);
//! - writing an answer may not stall for longer than `write_timeout` (a
//!   client that stops reading a streamed query result is cut off, which
//!   also stops the query).

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

use crate::api::HttpStats;

/// Limits of the HTTP server.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Connections open at once, at most.
    pub max_connections: u64,
    /// Time to send a request's headers (and most idle time between requests).
    pub header_timeout: Duration,
    /// Longest stall while writing an answer.
    pub write_timeout: Duration,
}

/// Serves `app` on `listener` until `stop` turns true, then lets the open
/// connections finish their current request (the caller bounds how long it
/// waits for that).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    stats: Arc<HttpStats>,
    mut stop: watch::Receiver<bool>,
) {
    let mut conns = tokio::task::JoinSet::new();
    let registry: Arc<Mutex<BTreeMap<u64, Arc<ConnState>>>> = Arc::default();
    let mut next_id: u64 = 0;
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((tcp, _)) => {
                    stats.accepted.fetch_add(1, Ordering::Relaxed);
                    if stats.open.load(Ordering::Relaxed) >= limits.max_connections {
                        // Make room: close the connection idle the longest.
                        let victim = {
                            let mut reg = registry.lock().unwrap_or_else(|e| e.into_inner());
                            let v = reg
                                .values()
                                .filter(|c| c.in_flight.load(Ordering::SeqCst) == 0)
                                .min_by_key(|c| *c.idle_since.lock().unwrap_or_else(|e| e.into_inner()))
                                .cloned();
                            if let Some(v) = &v {
                                reg.remove(&v.id);
                            }
                            v
                        };
                        match victim {
                            Some(v) => {
                                stats.evicted.fetch_add(1, Ordering::Relaxed);
                                v.kill.notify_one();
                            }
                            None => {
                                stats.refused.fetch_add(1, Ordering::Relaxed);
                                drop(tcp);
                                continue;
                            }
                        }
                    }
                    // Small request/answer exchanges: no Nagle delay.
                    if let Err(e) = tcp.set_nodelay(true) {
                        tracing::debug!("TCP_NODELAY not set: {e}");
                    }
                    let open = Open::new(stats.clone());
                    let io = TokioIo::new(Stalling::new(tcp, limits.write_timeout, stats.clone()));
                    next_id += 1;
                    let state = Arc::new(ConnState {
                        id: next_id,
                        idle_since: Mutex::new(std::time::Instant::now()),
                        in_flight: AtomicUsize::new(0),
                        kill: Notify::new(),
                    });
                    registry
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(state.id, state.clone());
                    let svc = Tracked {
                        inner: TowerToHyperService::new(app.clone()),
                        conn: state.clone(),
                    };
                    let header_timeout = limits.header_timeout;
                    let mut stop = stop.clone();
                    let counters = stats.clone();
                    let registry = registry.clone();
                    conns.spawn(async move {
                        let _open = open;
                        let _registered = Registered(registry, state.id);
                        let mut b = hyper::server::conn::http1::Builder::new();
                        b.timer(TokioTimer::new())
                            .header_read_timeout(header_timeout)
                            .keep_alive(true);
                        let conn = b.serve_connection(io, svc);
                        tokio::pin!(conn);
                        tokio::select! {
                            r = conn.as_mut() => {
                                if let Err(e) = r {
                                    if e.is_timeout() {
                                        counters.timed_out.fetch_add(1, Ordering::Relaxed);
                                    }
                                    tracing::debug!("HTTP connection ended: {e}");
                                }
                            }
                            _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                                conn.as_mut().graceful_shutdown();
                                let _ = conn.await;
                            }
                            _ = state.kill.notified() => {}
                        }
                    });
                }
                Err(e) => {
                    // Out of descriptors, most likely: wait a little rather
                    // than spin.
                    tracing::warn!("HTTP API accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
        }
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

/// What the server knows of an open connection.
struct ConnState {
    id: u64,
    /// Since when no request has been in progress on it.
    idle_since: Mutex<std::time::Instant>,
    /// Requests in progress: from their head until their answer's body is
    /// sent (or dropped).
    in_flight: AtomicUsize,
    /// Closes it (to make room for a new one).
    kill: Notify,
}

/// Removes a connection from the registry when its task ends.
struct Registered(Arc<Mutex<BTreeMap<u64, Arc<ConnState>>>>, u64);

impl Drop for Registered {
    fn drop(&mut self) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.1);
    }
}

/// A request in progress on a connection, until its answer is sent.
struct InFlight(Arc<ConnState>);

impl InFlight {
    fn new(c: Arc<ConnState>) -> InFlight {
        c.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(c)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        *self.0.idle_since.lock().unwrap_or_else(|e| e.into_inner()) = std::time::Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The API service, counting requests in progress on its connection.
struct Tracked {
    inner: TowerToHyperService<Router>,
    conn: Arc<ConnState>,
}

impl hyper::service::Service<hyper::Request<hyper::body::Incoming>> for Tracked {
    type Response = hyper::Response<Body>;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, req: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        let guard = InFlight::new(self.conn.clone());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            Ok(resp.map(|b| {
                Body::new(Guarded {
                    inner: b,
                    _guard: guard,
                })
            }))
        })
    }
}

/// An answer body that keeps its request counted as in progress until it
/// is sent or dropped.
struct Guarded {
    inner: Body,
    _guard: InFlight,
}

impl http_body::Body for Guarded {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Counts an open connection while alive.
struct Open(Arc<HttpStats>);

impl Open {
    fn new(s: Arc<HttpStats>) -> Open {
        s.open.fetch_add(1, Ordering::Relaxed);
        Open(s)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A TCP stream whose writes fail once they stall for longer than a limit.
struct Stalling {
    tcp: TcpStream,
    limit: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
    stats: Arc<HttpStats>,
}

impl Stalling {
    fn new(tcp: TcpStream, limit: Duration, stats: Arc<HttpStats>) -> Stalling {
        Stalling {
            tcp,
            limit,
            stalled: None,
            stats,
        }
    }

    /// After a write that returned `Pending`: fails once the stall is too long.
    fn check_stall(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let limit = self.limit;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.stats.timed_out.fetch_add(1, Ordering::Relaxed);
                Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client stopped reading the answer",
                ))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for Stalling {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stalling {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.tcp).poll_write(cx, buf) {
            Poll::Pending => self.check_stall(cx).map(Err),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs) {
            Poll::Pending => self.check_stall(cx).map(Err),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.tcp).poll_flush(cx) {
            Poll::Pending => self.check_stall(cx).map(Err),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// Raises the soft limit of open descriptors to the hard limit (the default
/// soft limit, often 1024, is low for a server); returns the limit in force.
pub fn raise_fd_limit() -> u64 {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 {
            return 1024;
        }
        if l.rlim_cur < l.rlim_max {
            let want = libc::rlimit {
                rlim_cur: l.rlim_max,
                rlim_max: l.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                l.rlim_cur = l.rlim_max;
            }
        }
    }
    l.rlim_cur
}
