//! Deterministic discrete-event simulation of litemesh protocol cores.
//!
//! * [`network`]: a generic, seeded network model (latency matrix, loss,
//!   partitions, crash, pause, restart) driving any [`network::SimNode`].
//! * [`membership_scenario`]: clusters of `litemesh-membership` nodes and
//!   the metrics computed from their observations.
//! * [`mesh`]: whole nodes — the real node core (`litemesh-core`, the code
//!   `litemesh::Node` drives) with real SQLite files — under simulated
//!   network faults, crashes, pauses and clock, with a state checker running
//!   as the simulation runs; reproducible from a seed.
//! * [`regions`]: convergence against the number of regions on a WAN
//!   latency matrix, region-aware dissemination against region-blind.
//! * [`report`]: percentiles, the text/CSV report and a small SVG plotter.

pub mod membership_scenario;
pub mod mesh;
pub mod network;
pub mod regions;
pub mod report;
