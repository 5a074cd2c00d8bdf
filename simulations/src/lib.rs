//! Deterministic discrete-event simulation of litemesh protocol cores.
//!
//! * [`network`]: a generic, seeded network model (latency matrix, loss,
//!   partitions, crash, pause, restart) driving any [`network::SimNode`].
//! * [`membership_scenario`]: clusters of `litemesh-membership` nodes and
//!   the metrics computed from their observations.
//! * [`replication_scenario`]: replicas (`litemesh-storage` + the
//!   `litemesh-sync` scheduler and messages) replicating data through the
//!   same network, with loss and partitions, reproducible from a seed.
//! * [`report`]: percentiles, the text/CSV report and a small SVG plotter.

pub mod membership_scenario;
pub mod network;
pub mod replication_scenario;
pub mod report;
