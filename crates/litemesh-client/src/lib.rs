//! # litemesh-client
//!
//! A typed, blocking client of the litemesh agent's HTTP API, and the API's
//! JSON shapes ([`types`]), which the agent serializes too.
//!
//! ```no_run
//! use std::time::Duration;
//! use litemesh_client::{Client, QueryOptions, Statement, Value};
//!
//! # fn main() -> Result<(), litemesh_client::Error> {
//! let n1 = Client::builder().timeout(Duration::from_secs(10)).build("127.0.0.1:8787");
//! // One transaction on n1.
//! let done = n1.execute(&[
//!     Statement::new("INSERT INTO items (id, qty) VALUES ('apple', 3)"),
//!     Statement::new("UPDATE items SET qty = qty + ? WHERE id = ?").bind(2).bind("apple"),
//! ])?;
//! // Read it back on another node, no older than that write; rows stream.
//! let n2 = n1.at("127.0.0.1:8788");
//! let after = QueryOptions::after(done.token).wait(Duration::from_secs(5));
//! let rows = n2.query(&Statement::new("SELECT id, qty FROM items"), &after)?;
//! println!("{:?}", rows.columns());
//! for row in rows {
//!     let row = row?; // an error here: the query failed or was cut off mid-stream
//!     if let [Value::Text(id), qty] = row.as_slice() {
//!         println!("{id}: {qty:?}");
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! Errors tell a refusal (the agent answered 4xx: a transaction applied
//! nothing) from an unknown outcome (no answer, 503, a cut-off answer): see
//! [`Error`].

mod client;
mod error;
mod query;
pub mod types;
mod value;

pub use client::{Client, ClientBuilder, DEFAULT_TIMEOUT, RawAnswer};
pub use error::{Error, Result, StatusCode};
pub use query::{Events, QueryOptions, Rows};
pub use types::{
    AckNode, AckResult, ActorId, EndOfQuery, ErrorBody, Health, HealthIssue, HealthIssueKind,
    HealthStatus, Member, MemberState, PeerStatus, QuarantinedChange, QueryEvent, RegionStatus,
    RetryResult, SnapshotCatchUp, StatementResult, Status, Token, TransactionResult, WriterStatus,
};
pub use value::{Statement, Value};

#[cfg(test)]
mod tests;
