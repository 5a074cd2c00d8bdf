//! The litemesh chaos suite.
//!
//! `litemesh-chaos run` starts real `litemesh agent` processes with mutual TLS
//! inside a network namespace it creates, drives concurrent HTTP clients
//! against them while a seeded schedule injects faults (iptables partitions
//! and packet loss, SIGKILL and restart, SIGSTOP pauses, long outages), records
//! every request and answer in a [`history::History`], and checks it
//! ([`check`]): no acknowledged write lost, identical replicas after healing,
//! no transaction seen half applied, no stale token read, no read going
//! backwards, membership converged, and no row of the region-pinned table
//! on a node outside its region (its files are read after the run:
//! [`placement`]).

pub mod api;
pub mod check;
pub mod cluster;
pub mod history;
pub mod netns;
pub mod observe;
pub mod placement;
pub mod report;
pub mod run;
pub mod schedule;
pub mod workload;
