//! QUIC transport of litemesh.
//!
//! One [`Transport`] per node: a single quinn endpoint on a single UDP socket
//! carries all traffic, inbound and outbound, authenticated with mutual TLS
//! (certificates signed by the mesh CA, see [`MeshIdentity`]) and scoped to
//! one mesh by the ALPN `litemesh/1/<mesh-id>`.
//!
//! Three channels, matching the needs of the layers above:
//! - **datagrams** ([`Transport::send_datagram`], [`Event::Datagram`]):
//!   unreliable, one QUIC datagram each, size limited by the path MTU — for
//!   membership gossip;
//! - **unidirectional streams** ([`Transport::send_uni`], [`Event::Uni`]):
//!   one reliable message per stream — for broadcast;
//! - **bidirectional streams** ([`Transport::request`], [`Event::Request`]):
//!   one request frame, then any number of response frames streamed back
//!   through a [`Responder`] — for sync and full-state exchange.
//!
//! Peers are identified by socket address. Connections are cached per
//! address, dialled on demand, and evicted as soon as quinn reports them
//! closed (keep-alive + short idle timeout), so the next send redials at once.
//!
//! For tests, a [`FaultHandle`] passed to [`Transport::bind`] injects packet
//! loss, delay and partitions under the QUIC stack.
//!
//! See `docs/transport.md` for the design.

#![warn(missing_docs)]

mod cid;
mod config;
mod error;
mod fault;
mod tls;
mod transport;

pub use bytes::Bytes;
pub use config::{DEFAULT_MAX_FRAME, TransportConfig};
pub use error::{Error, Result, codes};
pub use fault::{FaultConfig, FaultHandle, FaultySocket};
pub use tls::{
    MeshIdentity, PROTOCOL_VERSION, REGION_URI_PREFIX, SERVER_NAME, alpn_for, generate_ca,
    generate_node_cert, generate_node_cert_in, validate_region,
};
pub use transport::{Event, Incoming, Responder, ResponseStream, Transport};
