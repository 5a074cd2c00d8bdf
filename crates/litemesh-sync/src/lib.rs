//! # litemesh-sync
//!
//! How changes travel between litemesh nodes, as a sans-IO core: this crate
//! decides *what* to send to *whom* and *when*; a driver (the `litemesh` node,
//! or the simulator) moves the bytes and talks to storage.
//!
//! Two mechanisms:
//!
//! - **Broadcast** ([`Scheduler::on_local_commit`], [`Scheduler::on_broadcast`]):
//!   a fresh commit goes at once to a few peers, nearest by round-trip time
//!   first, and each receiver that learns something new relays it a bounded
//!   number of hops. Sends are rate-limited; when the queue overflows, the
//!   oldest message is dropped and anti-entropy repairs the gap.
//! - **Anti-entropy** ([`Scheduler::poll_sync`]): every few seconds, and at
//!   once when a peer joins, comes back, or is known to hold more, the node
//!   reconciles with one peer: it sends its [`Knowledge`]; the peer streams
//!   back exactly the change batches it lacks ([`Message::SyncBatch`]) and ends
//!   with its own knowledge ([`Message::SyncDone`]).
//!
//! [`Knowledge`]: litemesh_proto::Knowledge
//! [`Message::SyncBatch`]: litemesh_proto::Message::SyncBatch
//! [`Message::SyncDone`]: litemesh_proto::Message::SyncDone

mod lag;
mod placement;
mod replication;
mod retention;
mod scheduler;

pub use lag::{LagTracker, WriterLag};
pub use placement::RegionResolver;
pub use replication::{
    Broadcast, Event, Extracted, Frame, OpId, Pruned, Replication, RequestId, SessionId,
    SnapshotProgress, Stats, StorageOp, Transmit, decode_broadcast, decode_frame, encode_key_chunk,
    encode_local_commit, encode_snapshot_base, encode_sync_batch,
};
pub use retention::{HeldBack, Report, StableCut, stable_cut};
pub use scheduler::{Config, Outgoing, PeerStatus, Scheduler, SyncOutcome};
