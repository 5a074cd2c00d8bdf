//! The HTTP server of the API: a bounded number of connections, each with
//! time limits, so that slow or idle clients cannot hold the agent's
//! resources (descriptors, tasks, query connections) for long.
//!
//! - at most `max_connections` open at once; past that, a new connection is
//!   closed at once (and counted);
//! - a client must send a request's headers within `header_timeout` of the
//!   connection opening or of the previous answer (this also closes idle
//!   kept-alive connections), and its body within the body timeout (see
//!   `api::read_body`);
//! - writing an answer may not stall for longer than `write_timeout` (a
//!   client that stops reading a streamed query result is cut off, which
//!   also stops the query).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

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
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((tcp, _)) => {
                    stats.accepted.fetch_add(1, Ordering::Relaxed);
                    if stats.open.load(Ordering::Relaxed) >= limits.max_connections {
                        stats.refused.fetch_add(1, Ordering::Relaxed);
                        drop(tcp);
                        continue;
                    }
                    // Small request/answer exchanges: no Nagle delay.
                    if let Err(e) = tcp.set_nodelay(true) {
                        tracing::debug!("TCP_NODELAY not set: {e}");
                    }
                    let open = Open::new(stats.clone());
                    let io = TokioIo::new(Stalling::new(tcp, limits.write_timeout, stats.clone()));
                    let svc = TowerToHyperService::new(app.clone());
                    let header_timeout = limits.header_timeout;
                    let mut stop = stop.clone();
                    conns.spawn(async move {
                        let _open = open;
                        let mut b = hyper::server::conn::http1::Builder::new();
                        b.timer(TokioTimer::new())
                            .header_read_timeout(header_timeout)
                            .keep_alive(true);
                        let conn = b.serve_connection(io, svc);
                        tokio::pin!(conn);
                        tokio::select! {
                            r = conn.as_mut() => {
                                if let Err(e) = r {
                                    tracing::debug!("HTTP connection ended: {e}");
                                }
                            }
                            _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                                conn.as_mut().graceful_shutdown();
                                let _ = conn.await;
                            }
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
