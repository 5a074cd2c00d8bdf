//! # litemesh
//!
//! The embeddable litemesh node: a local SQLite file whose replicated tables
//! are kept in sync with every other node of the mesh, peer to peer, over QUIC
//! with mutual TLS.
//!
//! ```no_run
//! use litemesh::{Node, Settings, Tls};
//! # async fn demo() -> Result<(), litemesh::Error> {
//! let mut settings = Settings::new("node.db", "127.0.0.1:7400".parse().unwrap());
//! settings.schema.push("CREATE TABLE items (id TEXT PRIMARY KEY, qty INTEGER)".into());
//! settings.tls = Tls::Files { ca: "ca.pem".into(), cert: "n1.pem".into(), key: "n1.key".into() };
//! settings.seeds.push("127.0.0.1:7401".parse().unwrap());
//! let node = Node::start(settings).await?;
//! let done = node.execute(vec!["INSERT INTO items VALUES ('x', 1)".into()]).await?;
//! // Read it back, on this or any other node, never older than that write:
//! let rows = node.query("SELECT qty FROM items".into(), Some(&done.token), std::time::Duration::from_secs(5)).await?;
//! node.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Consistency: every table converges (per-cell last-writer-wins by logical
//! clock); a read given a version token waits until this node has applied
//! everything the token names (read-your-writes, monotonic reads across nodes).
//! See `docs/consistency.md`.

mod commit;
mod driver;
mod error;
mod health;
mod levels;
mod node;
mod query;
mod remote;
mod session;
mod settings;
mod sql;
mod status;
mod token;

pub use error::Error;
pub use health::{Health, HealthIssue, HealthThresholds};
pub use levels::{Ack, AckReport};
pub use litemesh_proto::{ActorId, Knowledge};
pub use litemesh_storage::MetadataStats;
pub use litemesh_storage::{BackupInfo, Restored, inspect as inspect_backup};
pub use litemesh_storage::{Interruption, StorageError, Value};
pub use litemesh_transport::FaultHandle;
pub use node::{ChangeEvent, Executed, Node, Subscription};
pub use query::{Fallback, QueryOptions, Rows};
pub use session::{backup_file, restore};
pub use settings::{Settings, Tls};
pub use sql::{QueryResult, Statement};
pub use status::{
    CollectionReport, MemberInfo, MemberRetention, MemberState, PeerState, PeerStatus,
    QuarantineStatus, RegionStatus, RetainedWriter, RetentionReport, SnapshotCatchUp, Status,
    WriterStatus,
};
pub use token::Token;
