//! The QUIC endpoint, its connection cache and the three channels.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{
    Connection, ConnectionError, Endpoint, IdleTimeout, ReadError, RecvStream, Runtime,
    SendDatagramError, SendStream, TokioRuntime, VarInt, WriteError,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, trace, warn};

use crate::cid::StableCidGenerator;
use crate::config::TransportConfig;
use crate::error::{Error, Result, codes};
use crate::fault::{FaultHandle, FaultySocket};
use crate::tls::{self, MeshIdentity, SERVER_NAME};

/// Something a peer sent to this node.
#[derive(Debug)]
pub enum Event {
    /// An unreliable datagram (membership channel).
    Datagram {
        /// Peer address.
        from: SocketAddr,
        /// Payload.
        bytes: Bytes,
    },
    /// A message received on a unidirectional stream (broadcast channel).
    Uni {
        /// Peer address.
        from: SocketAddr,
        /// The message (one frame).
        bytes: Bytes,
    },
    /// A request on a bidirectional stream (sync / full-state channel).
    /// Answer through `respond`; dropping it without calling
    /// [`Responder::finish`] resets the stream (the requester gets
    /// [`Error::Refused`] with [`codes::ABANDONED`]).
    Request {
        /// Peer address.
        from: SocketAddr,
        /// The request frame.
        bytes: Bytes,
        /// Sends the response frames.
        respond: Responder,
    },
}

impl Event {
    /// The peer the event came from.
    pub fn peer(&self) -> SocketAddr {
        match self {
            Event::Datagram { from, .. }
            | Event::Uni { from, .. }
            | Event::Request { from, .. } => *from,
        }
    }
}

/// Receiver of the events of a [`Transport`] (bounded queue). Returns `None`
/// once the transport is closed and all its connections are gone.
#[derive(Debug)]
pub struct Incoming {
    rx: mpsc::Receiver<Event>,
}

impl Incoming {
    /// Wait for the next event.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// Next event if one is queued.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }
}

/// State shared by the transport handle and its background tasks.
#[derive(Debug)]
struct Shared {
    config: TransportConfig,
    local_addr: SocketAddr,
    /// No peer authentication: certificate names mean nothing.
    insecure: bool,
    /// Live connections by peer address (at most one per address is used for
    /// sending; the newest wins).
    conns: Mutex<HashMap<SocketAddr, Connection>>,
    /// Per-address dial locks, so concurrent sends share one handshake.
    dialing: Mutex<HashMap<SocketAddr, Arc<tokio::sync::Mutex<()>>>>,
    /// What the certificates of connected peers say (mutual TLS only).
    names: Mutex<HashMap<SocketAddr, PeerCert>>,
    /// Event queue; taken on close so the receiver ends.
    events: Mutex<Option<mpsc::Sender<Event>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections never panic half-way, so a poisoned lock is usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

fn code(c: u32) -> VarInt {
    VarInt::from_u32(c)
}

impl Shared {
    fn live(&self, addr: SocketAddr) -> Option<Connection> {
        let mut conns = lock(&self.conns);
        match conns.get(&addr) {
            Some(conn) if conn.close_reason().is_none() => Some(conn.clone()),
            Some(_) => {
                conns.remove(&addr);
                None
            }
            None => None,
        }
    }

    fn register(&self, addr: SocketAddr, conn: &Connection) {
        lock(&self.conns).insert(addr, conn.clone());
        if self.insecure {
            lock(&self.names).remove(&addr);
            return;
        }
        let region = tls::peer_region(conn).unwrap_or_else(|e| {
            tracing::warn!(peer = %addr, "peer certificate: {e}; no region taken from it");
            None
        });
        let cert = PeerCert {
            name: tls::peer_name(conn),
            region,
        };
        lock(&self.names).insert(addr, cert);
    }

    /// Drop `conn` from the cache if it is the cached connection for `addr`.
    fn forget(&self, addr: SocketAddr, conn: &Connection) {
        let mut conns = lock(&self.conns);
        if conns
            .get(&addr)
            .is_some_and(|c| c.stable_id() == conn.stable_id())
        {
            conns.remove(&addr);
            lock(&self.names).remove(&addr);
        }
    }

    fn sender(&self) -> Option<mpsc::Sender<Event>> {
        lock(&self.events).clone()
    }
}

/// What a connected peer's certificate says about it.
#[derive(Debug, Clone)]
struct PeerCert {
    name: Option<String>,
    region: Option<String>,
}

#[derive(Debug)]
struct Inner {
    endpoint: Endpoint,
    shared: Arc<Shared>,
    accept_task: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.endpoint.close(code(codes::CLOSED), b"dropped");
        self.accept_task.abort();
    }
}

/// A litemesh node's QUIC transport. Cheap to clone (all clones share the
/// endpoint); dropping the last clone closes the endpoint.
#[derive(Debug, Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

impl Transport {
    /// Bind the node's UDP socket and start accepting connections.
    ///
    /// With `faults`, the socket is wrapped in a [`FaultySocket`] controlled
    /// by that handle. Must be called inside a tokio runtime (else
    /// [`Error::Config`]).
    pub fn bind(
        config: TransportConfig,
        identity: &MeshIdentity,
        faults: Option<FaultHandle>,
    ) -> Result<(Transport, Incoming)> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::Config(
                "Transport::bind must be called inside a tokio runtime".into(),
            ));
        }
        config.validate()?;
        let alpn = tls::alpn_for(&config.mesh_id)?;

        let mut transport = quinn::TransportConfig::default();
        transport
            .keep_alive_interval(Some(config.keep_alive))
            .max_idle_timeout(Some(
                IdleTimeout::try_from(config.idle_timeout)
                    .map_err(|e| Error::Config(format!("idle_timeout: {e}")))?,
            ))
            .max_concurrent_bidi_streams(code(config.max_concurrent_requests))
            .max_concurrent_uni_streams(code(config.max_concurrent_uni))
            .datagram_receive_buffer_size(Some(config.datagram_buffer))
            .datagram_send_buffer_size(config.datagram_buffer)
            .receive_window(
                VarInt::from_u64(config.connection_window)
                    .map_err(|e| Error::Config(format!("connection_window: {e}")))?,
            )
            // Meshes usually run on LANs / within a region: a lower initial
            // RTT estimate makes handshake retransmissions (under loss) quicker.
            .initial_rtt(Duration::from_millis(100));
        // Ask peers to acknowledge every 8th packet or within 10 ms rather
        // than every 2nd: a broadcast is one small packet per peer, and the
        // acknowledgements cost as much to send and process as the data.
        let mut acks = quinn::AckFrequencyConfig::default();
        acks.ack_eliciting_threshold(VarInt::from_u32(8))
            .max_ack_delay(Some(Duration::from_millis(10)));
        transport.ack_frequency_config(Some(acks));
        let transport = Arc::new(transport);

        let server_crypto = QuicServerConfig::try_from(identity.server_config(&alpn)?)
            .map_err(|e| Error::Tls(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server
            .transport_config(transport.clone())
            .max_incoming(config.max_connections)
            // Peers are identified by address: do not let a connection move.
            .migration(false);

        let client_crypto = QuicClientConfig::try_from(identity.client_config(&alpn)?)
            .map_err(|e| Error::Tls(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
        client.transport_config(transport);

        let socket = std::net::UdpSocket::bind(config.listen)?;
        let runtime = Arc::new(TokioRuntime);
        let mut udp = runtime.wrap_udp_socket(socket)?;
        if let Some(faults) = faults {
            udp = Arc::new(FaultySocket::new(udp, faults));
        }
        let mut endpoint_config =
            quinn::EndpointConfig::new(Arc::new(identity.derived_key("stateless-reset")));
        let cid_key = Arc::new(identity.derived_key("connection-id"));
        endpoint_config.cid_generator(move || Box::new(StableCidGenerator::new(cid_key.clone())));
        let mut endpoint =
            Endpoint::new_with_abstract_socket(endpoint_config, Some(server), udp, runtime)?;
        endpoint.set_default_client_config(client);
        let local_addr = endpoint.local_addr()?;

        let (tx, rx) = mpsc::channel(config.event_queue);
        let shared = Arc::new(Shared {
            config,
            local_addr,
            insecure: identity.is_insecure(),
            conns: Mutex::new(HashMap::new()),
            dialing: Mutex::new(HashMap::new()),
            names: Mutex::new(HashMap::new()),
            events: Mutex::new(Some(tx)),
        });
        let accept_task = tokio::spawn(accept_loop(endpoint.clone(), shared.clone()));
        info!(addr = %local_addr, mesh = %shared.config.mesh_id, insecure = identity.is_insecure(), "transport bound");
        Ok((
            Transport {
                inner: Arc::new(Inner {
                    endpoint,
                    shared,
                    accept_task,
                }),
            },
            Incoming { rx },
        ))
    }

    /// The address of the node's socket (its identity as a peer).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.shared.local_addr
    }

    /// The configuration the transport was bound with.
    pub fn config(&self) -> &TransportConfig {
        &self.inner.shared.config
    }

    /// Certificate name (CN) of the peer at `addr`, if a connection to it is
    /// open and the node uses mutual TLS (always `None` in insecure mode).
    pub fn peer_name(&self, addr: SocketAddr) -> Option<String> {
        lock(&self.inner.shared.names)
            .get(&canonical(addr))
            .and_then(|c| c.name.clone())
    }

    /// The region certified by the certificate of the peer at `addr`:
    /// `None` if no connection to it is open or the node runs insecure,
    /// `Some(None)` if its certificate names no region.
    pub fn peer_region(&self, addr: SocketAddr) -> Option<Option<String>> {
        lock(&self.inner.shared.names)
            .get(&canonical(addr))
            .map(|c| c.region.clone())
    }

    /// Addresses with an open connection.
    pub fn connected_peers(&self) -> Vec<SocketAddr> {
        lock(&self.inner.shared.conns)
            .iter()
            .filter(|(_, c)| c.close_reason().is_none())
            .map(|(a, _)| *a)
            .collect()
    }

    /// Current datagram size limit towards `addr`, if a connection to it is
    /// open (it starts around 1150 bytes and may grow with path-MTU
    /// discovery).
    pub fn max_datagram_size(&self, addr: SocketAddr) -> Option<usize> {
        self.inner.shared.live(canonical(addr))?.max_datagram_size()
    }

    /// Send one unreliable datagram. Fails with [`Error::DatagramTooLarge`]
    /// above the current path limit (about 1150 bytes before path-MTU
    /// discovery raises it).
    pub async fn send_datagram(&self, addr: SocketAddr, bytes: Bytes) -> Result<()> {
        let addr = canonical(addr);
        let (conn, _) = self.connection(addr).await?;
        let max = conn
            .max_datagram_size()
            .ok_or(Error::DatagramsUnsupported { addr })?;
        if bytes.len() > max {
            return Err(Error::DatagramTooLarge {
                size: bytes.len(),
                max,
            });
        }
        let size = bytes.len();
        conn.send_datagram(bytes).map_err(|e| match e {
            SendDatagramError::TooLarge => Error::DatagramTooLarge { size, max },
            SendDatagramError::UnsupportedByPeer | SendDatagramError::Disabled => {
                Error::DatagramsUnsupported { addr }
            }
            SendDatagramError::ConnectionLost(source) => {
                self.inner.shared.forget(addr, &conn);
                Error::Connection { addr, source }
            }
        })
    }

    /// Send one reliable message on a new unidirectional stream.
    ///
    /// Returns once the message is handed to QUIC, which retransmits it until
    /// acknowledged or until the connection dies (delivery is not confirmed).
    pub async fn send_uni(&self, addr: SocketAddr, bytes: Bytes) -> Result<()> {
        let addr = canonical(addr);
        self.check_frame(bytes.len())?;
        let (conn, mut send) = self
            .open(addr, |c| Box::pin(async move { c.open_uni().await }))
            .await?;
        let result = async {
            write_frame(&mut send, bytes).await?;
            send.finish().map_err(|e| Error::Stream(e.to_string()))
        }
        .await;
        self.after_error(addr, &conn, result)
    }

    /// Send a request on a new bidirectional stream and return the stream of
    /// response frames.
    pub async fn request(&self, addr: SocketAddr, bytes: Bytes) -> Result<ResponseStream> {
        let addr = canonical(addr);
        self.check_frame(bytes.len())?;
        let (conn, (mut send, recv)) = self
            .open(addr, |c| Box::pin(async move { c.open_bi().await }))
            .await?;
        let result = async {
            write_frame(&mut send, bytes).await?;
            send.finish().map_err(|e| Error::Stream(e.to_string()))
        }
        .await;
        self.after_error(addr, &conn, result)?;
        Ok(ResponseStream {
            recv,
            max_frame: self.inner.shared.config.max_frame,
            done: false,
        })
    }

    /// Close every connection and the endpoint, waiting (up to 3 s) for the
    /// peers to be told. After this, sends fail with [`Error::Closed`] and
    /// the [`Incoming`] receiver ends once all connection tasks finished.
    pub async fn close(&self) {
        lock(&self.inner.shared.events).take();
        self.inner.endpoint.close(code(codes::CLOSED), b"closing");
        lock(&self.inner.shared.conns).clear();
        let _ = tokio::time::timeout(Duration::from_secs(3), self.inner.endpoint.wait_idle()).await;
        info!(addr = %self.local_addr(), "transport closed");
    }

    fn check_frame(&self, size: usize) -> Result<()> {
        let max = self.inner.shared.config.max_frame;
        if size > max {
            return Err(Error::FrameTooLarge {
                size: size as u64,
                max,
            });
        }
        Ok(())
    }

    fn after_error<T>(&self, addr: SocketAddr, conn: &Connection, result: Result<T>) -> Result<T> {
        if result.is_err() && conn.close_reason().is_some() {
            self.inner.shared.forget(addr, conn);
        }
        result
    }

    /// Open a stream with `open`, on the cached connection or a new one. If a
    /// cached connection turns out to be dead, it is evicted and the open is
    /// retried once on a fresh connection.
    async fn open<T>(
        &self,
        addr: SocketAddr,
        open: impl Fn(
            Connection,
        ) -> std::pin::Pin<
            Box<dyn Future<Output = std::result::Result<T, ConnectionError>> + Send>,
        >,
    ) -> Result<(Connection, T)> {
        let mut retried = false;
        loop {
            let (conn, fresh) = self.connection(addr).await?;
            match open(conn.clone()).await {
                Ok(stream) => return Ok((conn, stream)),
                Err(source) => {
                    self.inner.shared.forget(addr, &conn);
                    if fresh || retried {
                        return Err(Error::Connection { addr, source });
                    }
                    debug!(peer = %addr, error = %source, "cached connection was dead, redialling");
                    retried = true;
                }
            }
        }
    }

    /// The live connection to `addr`, dialling if needed. The flag is true if
    /// the connection was just established by this call.
    async fn connection(&self, addr: SocketAddr) -> Result<(Connection, bool)> {
        let shared = &self.inner.shared;
        if lock(&shared.events).is_none() {
            return Err(Error::Closed);
        }
        if let Some(conn) = shared.live(addr) {
            return Ok((conn, false));
        }
        let dial_lock = lock(&shared.dialing).entry(addr).or_default().clone();
        let guard = dial_lock.lock().await;
        let result = match shared.live(addr) {
            Some(conn) => Ok((conn, false)),
            None => self.dial(addr).await.map(|c| (c, true)),
        };
        drop(guard);
        {
            let mut dialing = lock(&shared.dialing);
            if dialing
                .get(&addr)
                .is_some_and(|l| Arc::ptr_eq(l, &dial_lock))
            {
                dialing.remove(&addr);
            }
        }
        result
    }

    async fn dial(&self, addr: SocketAddr) -> Result<Connection> {
        let shared = &self.inner.shared;
        let endpoint = &self.inner.endpoint;
        if endpoint.open_connections() >= shared.config.max_connections {
            return Err(Error::TooManyConnections {
                max: shared.config.max_connections,
            });
        }
        // A handshake's retransmissions back off exponentially: one begun
        // during a partition may next send seconds after the heal. So every
        // `connect_attempt` a fresh handshake joins the ones still running
        // (a slow peer, far away or busy, can still answer an older one);
        // the first to complete wins, the rest are dropped (closed).
        let deadline = tokio::time::Instant::now() + shared.config.connect_timeout;
        let mut attempts = tokio::task::JoinSet::new();
        let mut next_attempt = tokio::time::Instant::now();
        let conn = loop {
            let now = tokio::time::Instant::now();
            if now >= deadline {
                info!(peer = %addr, "outgoing connection timed out");
                return Err(Error::ConnectTimeout { addr });
            }
            if now >= next_attempt && attempts.len() < MAX_HANDSHAKES {
                let connecting = endpoint
                    .connect(addr, SERVER_NAME)
                    .map_err(|source| Error::Connect { addr, source })?;
                attempts.spawn(connecting);
                next_attempt = now + shared.config.connect_attempt;
            }
            tokio::select! {
                Some(done) = attempts.join_next() => match done {
                    Ok(Ok(conn)) => break conn,
                    // Unanswered: the others, or the next attempt, may do better.
                    Ok(Err(ConnectionError::TimedOut)) | Err(_) => {
                        debug!(peer = %addr, "a handshake went unanswered");
                    }
                    Ok(Err(source)) => {
                        // Refused handshake (certificate, mesh id) or protocol error.
                        warn!(peer = %addr, error = %source, "outgoing connection failed");
                        return Err(Error::Connection { addr, source });
                    }
                },
                _ = tokio::time::sleep_until(next_attempt.min(deadline)) => {}
            }
        };
        drop(attempts);
        debug!(peer = %addr, "connected");
        shared.register(addr, &conn);
        match shared.sender() {
            Some(tx) => {
                tokio::spawn(serve(shared.clone(), conn.clone(), addr, tx));
            }
            None => {
                conn.close(code(codes::UNAVAILABLE), b"closing");
                return Err(Error::Closed);
            }
        }
        Ok(conn)
    }
}

/// Handshakes running at once for one dial (see `TransportConfig::connect_attempt`).
const MAX_HANDSHAKES: usize = 3;

/// Response frames of a [`Transport::request`].
#[derive(Debug)]
pub struct ResponseStream {
    recv: RecvStream,
    max_frame: usize,
    done: bool,
}

impl ResponseStream {
    /// The next response frame, or `None` when the responder finished.
    ///
    /// A frame above `max_frame` fails with [`Error::FrameTooLarge`] and
    /// stops the stream (the responder sees [`codes::FRAME_TOO_LARGE`]).
    pub async fn next(&mut self) -> Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        match read_frame(&mut self.recv, self.max_frame).await {
            Ok(None) => {
                self.done = true;
                Ok(None)
            }
            Ok(Some(frame)) => Ok(Some(frame)),
            Err(e) => {
                self.done = true;
                refuse(&mut self.recv, &e);
                Err(e)
            }
        }
    }

    /// Read all remaining frames (at most `max_frames`, else
    /// [`Error::Protocol`]).
    pub async fn collect(mut self, max_frames: usize) -> Result<Vec<Bytes>> {
        let mut frames = Vec::new();
        while let Some(frame) = self.next().await? {
            if frames.len() == max_frames {
                let _ = self.recv.stop(code(codes::FRAME_TOO_LARGE));
                return Err(Error::Protocol(format!(
                    "more than {max_frames} response frames"
                )));
            }
            frames.push(frame);
        }
        Ok(frames)
    }
}

/// The answering side of a request: send any number of frames, then
/// [`finish`](Responder::finish). Writes wait for flow control
/// (backpressure). Dropping it unfinished resets the stream.
#[derive(Debug)]
pub struct Responder {
    send: Option<SendStream>,
    max_frame: usize,
    peer: SocketAddr,
}

impl Responder {
    /// The requesting peer.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Send one response frame (at most `max_frame` bytes).
    pub async fn send(&mut self, frame: Bytes) -> Result<()> {
        if frame.len() > self.max_frame {
            return Err(Error::FrameTooLarge {
                size: frame.len() as u64,
                max: self.max_frame,
            });
        }
        let send = self.send.as_mut().ok_or(Error::Closed)?;
        write_frame(send, frame).await
    }

    /// End the response: the requester's [`ResponseStream::next`] returns
    /// `None` after the frames sent so far.
    pub fn finish(mut self) -> Result<()> {
        if let Some(mut send) = self.send.take() {
            send.finish().map_err(|e| Error::Stream(e.to_string()))?;
        }
        Ok(())
    }

    /// Abort the response with an application error code; the requester
    /// gets [`Error::Refused`] with that code.
    pub fn reject(mut self, error_code: u32) {
        if let Some(mut send) = self.send.take() {
            let _ = send.reset(code(error_code));
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if let Some(mut send) = self.send.take() {
            let _ = send.reset(code(codes::ABANDONED));
        }
    }
}

fn read_error(e: ReadError) -> Error {
    match e {
        ReadError::Reset(code) => Error::Refused {
            code: code.into_inner(),
        },
        other => Error::Stream(other.to_string()),
    }
}

fn write_error(e: WriteError) -> Error {
    match e {
        WriteError::Stopped(code) => Error::Refused {
            code: code.into_inner(),
        },
        other => Error::Stream(other.to_string()),
    }
}

/// Frame = 4-byte big-endian length + payload.
async fn write_frame(send: &mut SendStream, payload: Bytes) -> Result<()> {
    let len = u32::try_from(payload.len()).map_err(|_| Error::FrameTooLarge {
        size: payload.len() as u64,
        max: u32::MAX as usize,
    })?;
    let mut chunks = [Bytes::copy_from_slice(&len.to_be_bytes()), payload];
    send.write_all_chunks(&mut chunks)
        .await
        .map_err(write_error)
}

/// Read one frame; `None` on a clean end of stream before a header. Memory
/// grows with the bytes actually received (bounded by flow control), not with
/// the announced length.
async fn read_frame(recv: &mut RecvStream, max: usize) -> Result<Option<Bytes>> {
    let mut header = [0u8; 4];
    let mut got = 0;
    while got < header.len() {
        match recv.read(&mut header[got..]).await.map_err(read_error)? {
            Some(n) => got += n,
            None if got == 0 => return Ok(None),
            None => return Err(Error::Protocol("stream ended inside a frame header".into())),
        }
    }
    let len = u32::from_be_bytes(header) as usize;
    if len > max {
        return Err(Error::FrameTooLarge {
            size: len as u64,
            max,
        });
    }
    let mut buf: Option<BytesMut> = None;
    let mut remaining = len;
    while remaining > 0 {
        let chunk = recv
            .read_chunk(remaining, true)
            .await
            .map_err(read_error)?
            .ok_or_else(|| Error::Protocol(format!("stream ended inside a {len}-byte frame")))?;
        remaining -= chunk.bytes.len();
        match &mut buf {
            // Whole frame in one chunk: no copy.
            None if remaining == 0 => return Ok(Some(chunk.bytes)),
            None => {
                let mut b = BytesMut::with_capacity(len.min(64 * 1024));
                b.extend_from_slice(&chunk.bytes);
                buf = Some(b);
            }
            Some(b) => b.extend_from_slice(&chunk.bytes),
        }
    }
    Ok(Some(buf.map(BytesMut::freeze).unwrap_or_default()))
}

/// Tell the sender why we gave up on its stream.
fn refuse(recv: &mut RecvStream, error: &Error) {
    let c = match error {
        Error::FrameTooLarge { .. } => codes::FRAME_TOO_LARGE,
        Error::Protocol(_) => codes::MALFORMED,
        _ => return,
    };
    let _ = recv.stop(code(c));
}

async fn accept_loop(endpoint: Endpoint, shared: Arc<Shared>) {
    while let Some(incoming) = endpoint.accept().await {
        let remote = canonical(incoming.remote_address());
        if endpoint.open_connections() >= shared.config.max_connections {
            warn!(peer = %remote, max = shared.config.max_connections, "refusing connection: too many connections");
            incoming.refuse();
            continue;
        }
        let shared = shared.clone();
        tokio::spawn(async move {
            let conn = match incoming.await {
                Ok(conn) => conn,
                Err(error) => {
                    warn!(peer = %remote, %error, "refused incoming connection");
                    return;
                }
            };
            let Some(tx) = shared.sender() else {
                conn.close(code(codes::UNAVAILABLE), b"closing");
                return;
            };
            debug!(peer = %remote, "accepted connection");
            // The newest connection with a peer wins: after a peer restarts,
            // its fresh connection replaces the stale one at once.
            shared.register(remote, &conn);
            serve(shared, conn, remote, tx).await;
        });
    }
    debug!("accept loop ended");
}

/// Deliver everything arriving on `conn` until it closes, then evict it.
async fn serve(shared: Arc<Shared>, conn: Connection, from: SocketAddr, tx: mpsc::Sender<Event>) {
    let max_frame = shared.config.max_frame;
    let datagrams = async {
        while let Ok(bytes) = conn.read_datagram().await {
            if let Err(e) = tx.try_send(Event::Datagram { from, bytes }) {
                match e {
                    mpsc::error::TrySendError::Full(_) => {
                        debug!(peer = %from, "event queue full, datagram dropped")
                    }
                    mpsc::error::TrySendError::Closed(_) => break,
                }
            }
        }
    };
    let unis = async {
        while let Ok(mut recv) = conn.accept_uni().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                match read_frame(&mut recv, max_frame).await {
                    Ok(Some(bytes)) => {
                        let _ = tx.send(Event::Uni { from, bytes }).await;
                    }
                    Ok(None) => trace!(peer = %from, "empty uni stream"),
                    Err(error) => {
                        warn!(peer = %from, %error, "rejected uni stream");
                        refuse(&mut recv, &error);
                    }
                }
            });
        }
    };
    let bis = async {
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                match read_frame(&mut recv, max_frame).await {
                    Ok(Some(bytes)) => {
                        let respond = Responder {
                            send: Some(send),
                            max_frame,
                            peer: from,
                        };
                        let _ = tx
                            .send(Event::Request {
                                from,
                                bytes,
                                respond,
                            })
                            .await;
                    }
                    Ok(None) => {
                        let _ = send.reset(code(codes::MALFORMED));
                    }
                    Err(error) => {
                        warn!(peer = %from, %error, "rejected request");
                        refuse(&mut recv, &error);
                        let c = match error {
                            Error::FrameTooLarge { .. } => codes::FRAME_TOO_LARGE,
                            _ => codes::MALFORMED,
                        };
                        let _ = send.reset(code(c));
                    }
                }
            });
        }
    };
    tokio::join!(datagrams, unis, bis);
    drop(tx);
    shared.forget(from, &conn);
    match conn.close_reason() {
        Some(ConnectionError::LocallyClosed)
        | Some(ConnectionError::ApplicationClosed(_))
        | None => {
            debug!(peer = %from, "connection closed")
        }
        Some(reason) => info!(peer = %from, %reason, "connection lost"),
    }
}
