//! # litemesh-proto
//!
//! The vocabulary litemesh nodes share, with no I/O and no SQLite: who wrote
//! a version ([`ActorId`]), sets of versions ([`RangeSet`]), what a node holds
//! ([`Knowledge`], with the arithmetic the protocol does on it), the unit of
//! replication ([`ChangeBatch`]), the messages of the sync protocol
//! ([`Message`]), the membership metadata a node publishes ([`NodeMeta`]), and
//! the versioned encodings of all of them. Decoding never panics: malformed
//! or oversized input is a [`WireError`].
//!
//! The storage engine, the replication core and the node all depend on this
//! crate; it depends on none of them. The `sqlite` feature adds conversions
//! between [`Value`] and rusqlite's types, for the storage engine.

mod actor;
mod batch;
mod error;
mod knowledge;
mod message;
mod meta;
mod placement;
mod ranges;
mod value;

/// Tags of the messages nodes send on unidirectional QUIC streams: the first
/// byte says which protocol the rest belongs to.
pub mod channel {
    /// Membership (SWIM) messages sent reliably (push-pull, joins).
    pub const MEMBERSHIP: u8 = 0;
    /// Sync broadcasts ([`crate::Message::Broadcast`]).
    pub const SYNC: u8 = 1;
    /// First byte of a request on a bidirectional stream that is not a sync
    /// request (a forwarded query, a write acknowledgement): sync requests
    /// start with their encoding's version byte, which is never this.
    pub const NODE: u8 = 0x80;
}

pub use actor::ActorId;
pub use batch::{
    CellChange, CellKind, ChangeBatch, Cleared, DEFAULT_MAX_WIRE_BYTES, RowChange, SeqRange,
    VersionChanges, WIRE_VERSION, WIRE_VERSION_PLAIN, decode_batch, encode_batch, validate,
};
pub use error::WireError;
pub use knowledge::Knowledge;
pub use message::{
    DEFAULT_MAX_MESSAGE, KeyChunk, MAX_CHUNK_KEYS, MAX_FLOORS, MAX_OWNED_ACTORS, Message,
    RetentionInfo, SnapshotCursor, decode, encode,
};
pub use meta::{Head, NodeMeta};
pub use placement::{Entitlement, MAX_WITHHELD, Placement};
pub use ranges::RangeSet;
pub use value::Value;
