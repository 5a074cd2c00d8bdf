//! Error type of the transport.

use std::net::SocketAddr;

/// Application error codes carried in QUIC `STOP_SENDING`, `RESET_STREAM` and
/// `CONNECTION_CLOSE` frames.
pub mod codes {
    /// Normal shutdown.
    pub const CLOSED: u32 = 0;
    /// A frame was larger than the receiver's `max_frame`.
    pub const FRAME_TOO_LARGE: u32 = 1;
    /// The handler dropped its [`Responder`](crate::Responder) without finishing.
    pub const ABANDONED: u32 = 2;
    /// The node refused the connection because it has too many.
    pub const TOO_MANY_CONNECTIONS: u32 = 3;
    /// The node is shutting down or its event queue is gone.
    pub const UNAVAILABLE: u32 = 4;
    /// A frame was malformed (truncated header or payload).
    pub const MALFORMED: u32 = 5;
}

/// Errors returned by the transport.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Socket or file I/O failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),

    /// The configuration is invalid (mesh id, timeouts, limits...).
    #[error("invalid configuration: {0}")]
    Config(String),

    /// Certificates or keys could not be generated, read or used.
    #[error("TLS / certificate error: {0}")]
    Tls(String),

    /// quinn refused to start connecting (bad address, endpoint closed, ...).
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// Peer address.
        addr: SocketAddr,
        /// Underlying error.
        #[source]
        source: quinn::ConnectError,
    },

    /// The handshake failed or the connection was lost (includes TLS refusal:
    /// unknown CA, wrong mesh id / ALPN, idle timeout, peer closed).
    #[error("connection to {addr} failed: {source}")]
    Connection {
        /// Peer address.
        addr: SocketAddr,
        /// Underlying error.
        #[source]
        source: quinn::ConnectionError,
    },

    /// The handshake did not finish within `connect_timeout`.
    #[error("connecting to {addr} timed out")]
    ConnectTimeout {
        /// Peer address.
        addr: SocketAddr,
    },

    /// A frame is larger than the configured maximum (on send: nothing was
    /// sent; on receive: the stream was refused).
    #[error("frame of {size} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// Size of the offending frame (or at least this many bytes).
        size: u64,
        /// The limit.
        max: usize,
    },

    /// A datagram is larger than what the path currently allows.
    #[error("datagram of {size} bytes exceeds the current limit of {max} bytes")]
    DatagramTooLarge {
        /// Size of the datagram.
        size: usize,
        /// Current maximum (depends on the path MTU).
        max: usize,
    },

    /// The peer has datagrams disabled.
    #[error("peer {addr} does not accept datagrams")]
    DatagramsUnsupported {
        /// Peer address.
        addr: SocketAddr,
    },

    /// The peer stopped or reset the stream with an application error code
    /// (see [`codes`]).
    #[error("peer refused the stream with code {code} ({})", code_name(*code))]
    Refused {
        /// Application error code.
        code: u64,
    },

    /// The stream was interrupted by the loss or closing of the connection.
    #[error("stream failed: {0}")]
    Stream(String),

    /// The peer sent bytes that are not a valid frame.
    #[error("protocol violation: {0}")]
    Protocol(String),

    /// The node already has `max_connections` connections.
    #[error("too many connections (max {max})")]
    TooManyConnections {
        /// The limit.
        max: usize,
    },

    /// The transport has been closed.
    #[error("transport closed")]
    Closed,
}

/// Convenience alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn code_name(code: u64) -> &'static str {
    match u32::try_from(code) {
        Ok(codes::CLOSED) => "closed",
        Ok(codes::FRAME_TOO_LARGE) => "frame too large",
        Ok(codes::ABANDONED) => "request abandoned by the handler",
        Ok(codes::TOO_MANY_CONNECTIONS) => "too many connections",
        Ok(codes::UNAVAILABLE) => "unavailable",
        Ok(codes::MALFORMED) => "malformed frame",
        _ => "unknown",
    }
}
