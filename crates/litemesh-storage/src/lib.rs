//! # litemesh-storage
//!
//! Replicated SQLite tables for litemesh: every node keeps its own SQLite file;
//! local writes to replicated tables are captured, in the same transaction, as
//! cell-level changes tagged with `(actor, version)`; remote changes merge by a
//! deterministic per-cell rule so that every replica converges to the same
//! content whatever the order, duplication or delay of delivery.
//!
//! ```
//! use litemesh_storage::{Knowledge, Store};
//! # fn main() -> Result<(), litemesh_storage::StorageError> {
//! let dir = tempfile::tempdir().unwrap();
//! let mut a = Store::open(dir.path().join("a.db"))?;
//! let mut b = Store::open(dir.path().join("b.db"))?;
//! let schema = "CREATE TABLE items (id TEXT PRIMARY KEY, qty INTEGER)";
//! a.apply_schema(schema)?;
//! b.apply_schema(schema)?;
//!
//! a.execute_batch("INSERT INTO items VALUES ('x', 1)")?;
//! // Ship to b everything it lacks.
//! let theirs = b.knowledge()?;
//! let mut batches = Vec::new();
//! a.changes_since(&theirs, 64 * 1024, |batch| { batches.push(batch); Ok(true) })?;
//! for batch in &batches { b.apply(batch)?; }
//! let qty: i64 = b.connection().query_row("SELECT qty FROM items WHERE id = 'x'", [], |r| r.get(0))?;
//! assert_eq!(qty, 1);
//! # Ok(()) }
//! ```
//!
//! See `docs/storage.md` for the data model and the merge rule.

mod backup;
mod capture;
mod clock;
mod commute;
mod error;
mod extract;
mod lex;
mod log;
mod merge;
mod placement;
mod retention;
mod sandbox;
mod schema;
mod snapshot;
mod store;
mod value;
mod varint;

pub use backup::{BackupInfo, MetadataStats, Restored, backup, inspect, restore};
pub use capture::MAX_ROW_WRITE_BYTES;
pub use capture::attach;
pub use error::{Interruption, Result, StorageError};
pub use extract::ExtractStats;
/// The shared vocabulary, re-exported: the engine reads and writes these types.
pub use litemesh_proto::{
    ActorId, CellChange, CellKind, ChangeBatch, Cleared, DEFAULT_MAX_WIRE_BYTES, Entitlement,
    KeyChunk, Knowledge, Placement, RangeSet, RowChange, SeqRange, SnapshotCursor, Value,
    VersionChanges, WIRE_VERSION, WIRE_VERSION_PLAIN, WireError, decode_batch, encode_batch,
    validate,
};
pub use merge::{ApplyReport, QuarantinedVersion, RetryReport};
pub use placement::EntitlementReport;
pub use retention::Collected;
pub use sandbox::{ClientLimits, ClientTx, ReadConnection, RowSink};
pub use schema::SchemaReport;
pub use snapshot::{Pruned, SnapshotFrame};
pub use store::{Committed, RememberedPeer, Store, StoreOptions};
