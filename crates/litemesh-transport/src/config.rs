//! Transport configuration.

use std::net::SocketAddr;
use std::time::Duration;

use crate::error::{Error, Result};

/// Default maximum size of one stream frame: 8 MiB.
pub const DEFAULT_MAX_FRAME: usize = 8 * 1024 * 1024;

/// Settings of a [`Transport`](crate::Transport). Build with
/// [`TransportConfig::new`] and adjust the public fields.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// Address of the node's single UDP socket (use port 0 to let the OS
    /// choose; read it back with [`Transport::local_addr`](crate::Transport::local_addr)).
    pub listen: SocketAddr,
    /// Mesh identifier, part of the ALPN (`litemesh/1/<mesh_id>`): nodes of
    /// different meshes refuse each other during the handshake.
    pub mesh_id: String,
    /// Largest stream frame (uni message, request or response frame) this node
    /// sends or accepts. Default 8 MiB; at most `u32::MAX`.
    pub max_frame: usize,
    /// Interval of QUIC keep-alive pings. Default 1 s.
    pub keep_alive: Duration,
    /// A connection that hears nothing from its peer for this long is closed
    /// (the effective value is the smaller of both peers'). Default 5 s.
    pub idle_timeout: Duration,
    /// Bound on establishing an outgoing connection. Default 5 s.
    pub connect_timeout: Duration,
    /// Within `connect_timeout`, every `connect_attempt` without an answer a
    /// fresh handshake starts beside the running ones (at most three; the
    /// first to complete wins). A handshake's retransmissions back off
    /// exponentially, so one begun during a partition may next send seconds
    /// after the partition heals; a fresh one sends at once, while an older
    /// one can still complete with a slow or distant peer. Default 1 s.
    pub connect_attempt: Duration,
    /// Maximum number of QUIC connections (inbound + outbound); extra
    /// incoming connections are refused and extra dials fail. Default 256.
    pub max_connections: usize,
    /// Concurrent bidirectional (request) streams a peer may open on one
    /// connection. Default 64.
    pub max_concurrent_requests: u32,
    /// Concurrent unidirectional (broadcast) streams a peer may open on one
    /// connection. Default 128.
    pub max_concurrent_uni: u32,
    /// Capacity of the [`Incoming`](crate::Incoming) event queue. When full,
    /// datagrams are dropped and streams wait (backpressure). Default 1024.
    pub event_queue: usize,
    /// Bytes of datagrams buffered per connection, each way. Default 1 MiB.
    pub datagram_buffer: usize,
    /// Flow-control window of a whole connection (bytes in flight towards
    /// this node across all its streams). Default 16 MiB.
    pub connection_window: u64,
}

impl TransportConfig {
    /// Defaults for a node listening on `listen` in mesh `mesh_id`.
    pub fn new(listen: SocketAddr, mesh_id: impl Into<String>) -> Self {
        Self {
            listen,
            mesh_id: mesh_id.into(),
            max_frame: DEFAULT_MAX_FRAME,
            keep_alive: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            connect_attempt: Duration::from_secs(1),
            max_connections: 256,
            max_concurrent_requests: 64,
            max_concurrent_uni: 128,
            event_queue: 1024,
            datagram_buffer: 1024 * 1024,
            connection_window: 16 * 1024 * 1024,
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |msg: &str| Err(Error::Config(msg.to_string()));
        if self.max_frame == 0 || self.max_frame as u64 > u64::from(u32::MAX) {
            return bad("max_frame must be in 1..=u32::MAX");
        }
        if self.keep_alive.is_zero() || self.idle_timeout <= self.keep_alive {
            return bad("keep_alive must be non-zero and shorter than idle_timeout");
        }
        if self.connect_timeout.is_zero() || self.connect_attempt.is_zero() {
            return bad("connect_timeout and connect_attempt must be non-zero");
        }
        if self.max_connections == 0 || self.event_queue == 0 {
            return bad("max_connections and event_queue must be non-zero");
        }
        if self.connection_window == 0 {
            return bad("connection_window must be non-zero");
        }
        crate::tls::alpn_for(&self.mesh_id)?;
        Ok(())
    }
}
