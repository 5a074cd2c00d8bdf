//! Whether a node is fit to serve: what can go wrong, and the rule that turns
//! the node's state into a verdict.
//!
//! A node is unhealthy when:
//! - a **reachable** writer's data is stale here past `max_lag` (catch-up is
//!   slow or failing), or more than `max_behind_versions` of its versions are
//!   missing;
//! - it is **cut off**: it reaches at most half of the members it knows
//!   (itself included) — alone after a restart, or on the minority side of a
//!   partition. (Writers it cannot reach are not counted as lagging: on the
//!   majority side of a partition, or after one member crashed, the rest of
//!   the mesh is as current as it can be.)
//! - changes from peers **cannot be applied**: some are in quarantine, or
//!   applying keeps failing;
//! - **serving** peers keeps failing (its data cannot leave it);
//! - it **cannot write** its file (disk full, read-only, locked elsewhere),
//!   or the file was removed or replaced under it;
//! - it is shutting down.

use std::fmt;
use std::time::Duration;

/// Thresholds of [`crate::Node::health`].
#[derive(Debug, Clone, PartialEq)]
pub struct HealthThresholds {
    /// Most staleness allowed of a reachable writer's data.
    pub max_lag: Duration,
    /// Most versions of a writer (or a peer) this node may lack.
    pub max_behind_versions: u64,
}

impl Default for HealthThresholds {
    fn default() -> Self {
        HealthThresholds {
            max_lag: Duration::from_secs(30),
            max_behind_versions: 1000,
        }
    }
}

/// Consecutive failures of applying (or serving) after which the node is
/// unhealthy: one failure is a blip, three in a row are a pattern.
pub(crate) const FAILING_AFTER: u64 = 3;

/// One reason a node is unhealthy.
#[derive(Debug, Clone, PartialEq)]
pub enum HealthIssue {
    /// A reachable writer's data is stale here.
    Lagging {
        /// The writer (its name, or its actor id).
        writer: String,
        /// How stale.
        lag: Duration,
        /// The threshold.
        max: Duration,
    },
    /// Too many versions of a writer or peer are missing here.
    Behind {
        /// The writer or peer.
        of: String,
        /// Versions missing.
        versions: u64,
        /// The threshold.
        max: u64,
    },
    /// The node reaches at most half the members it knows.
    CutOff {
        /// Members reachable, itself included.
        reachable: usize,
        /// Members known, itself included.
        known: usize,
    },
    /// Changes from peers are in quarantine: they cannot be applied here.
    Quarantined {
        /// Versions in quarantine.
        versions: usize,
        /// The error of the oldest.
        error: String,
    },
    /// Applying changes from peers keeps failing.
    ApplyFailing {
        /// Consecutive failures.
        failures: u64,
        /// The last error.
        error: String,
    },
    /// Serving peers' reconciliations keeps failing.
    ServeFailing {
        /// Consecutive failures.
        failures: u64,
        /// The last error.
        error: String,
    },
    /// The node cannot write its file.
    CannotWrite {
        /// The last error.
        error: String,
    },
    /// The database file was removed or replaced under the running node:
    /// it keeps writing to the file it opened, which no one else can read.
    FileGone {
        /// The path.
        path: String,
    },
    /// Members whose schema pins tables differently from this node's: the
    /// rows they send or relay are not filtered as this node's placement
    /// says.
    PlacementMismatch {
        /// The members, by name.
        peers: Vec<String>,
    },
    /// A peer collected tombstones of versions this node lacks: it cannot
    /// catch up incrementally (rows deleted meanwhile may still be here),
    /// refuses writes until it has caught up by snapshot (docs/retention.md).
    NeedsSnapshot {
        /// What the peer said.
        reason: String,
    },
    /// The node is shutting down.
    ShuttingDown,
}

impl HealthIssue {
    /// A short machine-readable name of the issue.
    pub fn kind(&self) -> &'static str {
        match self {
            HealthIssue::Lagging { .. } => "lagging",
            HealthIssue::Behind { .. } => "behind",
            HealthIssue::CutOff { .. } => "cut_off",
            HealthIssue::Quarantined { .. } => "quarantined",
            HealthIssue::ApplyFailing { .. } => "apply_failing",
            HealthIssue::ServeFailing { .. } => "serve_failing",
            HealthIssue::CannotWrite { .. } => "cannot_write",
            HealthIssue::FileGone { .. } => "file_gone",
            HealthIssue::PlacementMismatch { .. } => "placement_mismatch",
            HealthIssue::NeedsSnapshot { .. } => "needs_snapshot",
            HealthIssue::ShuttingDown => "shutting_down",
        }
    }
}

impl fmt::Display for HealthIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HealthIssue::Lagging { writer, lag, max } => write!(
                f,
                "data of {writer} is {:.1} s stale here (threshold {:.1} s)",
                lag.as_secs_f64(),
                max.as_secs_f64()
            ),
            HealthIssue::Behind { of, versions, max } => {
                write!(
                    f,
                    "{versions} versions of {of} missing here (threshold {max})"
                )
            }
            HealthIssue::CutOff { reachable, known } => write!(
                f,
                "cut off: reaches {reachable} of the {known} members it knows (itself included), \
                 not a majority"
            ),
            HealthIssue::Quarantined { versions, error } => write!(
                f,
                "{versions} version(s) from peers cannot be applied here and are quarantined \
                 (oldest: {error})"
            ),
            HealthIssue::ApplyFailing { failures, error } => write!(
                f,
                "applying changes from peers failed {failures} times in a row: {error}"
            ),
            HealthIssue::ServeFailing { failures, error } => write!(
                f,
                "serving peers' reconciliations failed {failures} times in a row: {error}"
            ),
            HealthIssue::CannotWrite { error } => write!(f, "cannot write its file: {error}"),
            HealthIssue::FileGone { path } => write!(
                f,
                "its database file {path} was removed or replaced while it runs: it writes to a \
                 file no one else can open; restart it"
            ),
            HealthIssue::PlacementMismatch { peers } => write!(
                f,
                "the schema of {} pins tables differently from this node's: apply the same \
                 schema on every node",
                peers.join(", ")
            ),
            HealthIssue::NeedsSnapshot { reason } => {
                write!(
                    f,
                    "cannot catch up incrementally, writes refused until it has caught up by \
                     snapshot: {reason}"
                )
            }
            HealthIssue::ShuttingDown => f.write_str("shutting down"),
        }
    }
}

/// The verdict of [`crate::Node::health`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Health {
    /// Why the node is unhealthy; empty when it is healthy.
    pub issues: Vec<HealthIssue>,
}

impl Health {
    /// Whether the node is fit to serve.
    pub fn is_ok(&self) -> bool {
        self.issues.is_empty()
    }
}

/// Failure counters kept by the node.
#[derive(Debug, Default, Clone)]
pub(crate) struct Failures {
    pub apply: u64,
    pub apply_error: Option<String>,
    pub write_error: Option<String>,
    pub last_write_ok: Option<std::time::Instant>,
    pub file_gone: bool,
}

impl Failures {
    pub(crate) fn wrote(&mut self) {
        self.write_error = None;
        self.last_write_ok = Some(std::time::Instant::now());
    }
}

/// Whether `reachable` of `known` members (each counting the node itself)
/// is a majority.
pub(crate) fn cut_off(reachable: usize, known: usize) -> bool {
    known > 1 && reachable * 2 <= known
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_off_means_no_majority() {
        assert!(!cut_off(1, 1), "a mesh of one");
        assert!(cut_off(1, 2), "two nodes, the other unreachable");
        assert!(!cut_off(2, 3), "one of three down");
        assert!(cut_off(2, 4), "an even split");
        assert!(cut_off(2, 5) && !cut_off(3, 5));
    }
}
