//! Replication lag in seconds, per writer, as a sans-IO tracker.
//!
//! Every node publishes, in its membership metadata, the head of its current
//! actor: its latest version (and when it committed it). Membership gossip
//! carries it to every member within a few protocol periods. From that and
//! from what this node holds, the tracker tells, for every writer, since when
//! this node's copy of the writer's data is no longer known to be complete:
//!
//! - a writer that is **alive** and whose latest published version this node
//!   holds (with every version before it) is current: lag 0;
//! - a writer whose published head this node does not hold yet: the lag runs
//!   from when that head was first heard of (so it grows while catch-up is
//!   slow or failing);
//! - a writer this node cannot reach (suspect, dead, on the other side of a
//!   partition): the lag runs from when it stopped being reachable, or from
//!   the oldest head not held, whichever is earlier — this node cannot know
//!   what the writer wrote since.
//!
//! Time is a `Duration` since any origin the driver chooses (monotonic).

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use litemesh_proto::{ActorId, Knowledge};

/// Head records kept per writer at most (the oldest ones matter; newer
/// ones beyond this are dropped until the oldest are held).
const MAX_PENDING: usize = 10_000;

#[derive(Debug, Clone)]
struct Writer {
    reachable: bool,
    /// When it stopped being reachable (or was first known as unreachable).
    unreachable_since: Option<Duration>,
    /// Heads heard of and not yet known to be held: (version, heard at).
    pending: VecDeque<(u64, Duration)>,
    /// The highest version it published.
    head: u64,
    /// When it committed that version (Unix milliseconds, its own clock).
    head_committed_ms: Option<u64>,
}

/// The lag of one writer, as computed by [`LagTracker::lag`].
#[derive(Debug, Clone, PartialEq)]
pub struct WriterLag {
    /// The writer's actor.
    pub actor: ActorId,
    /// Whether it is reachable (alive in membership).
    pub reachable: bool,
    /// How long this node's copy of its data has not been known complete.
    pub lag: Duration,
    /// Its latest published version.
    pub head: u64,
    /// Versions up to `head` this node lacks.
    pub missing_versions: u64,
    /// When it committed its head (Unix milliseconds, its own clock).
    pub head_committed_ms: Option<u64>,
}

/// Tracks, per writer, how stale this node's copy of its data may be.
#[derive(Debug, Default, Clone)]
pub struct LagTracker {
    writers: BTreeMap<ActorId, Writer>,
}

impl LagTracker {
    /// An empty tracker.
    pub fn new() -> LagTracker {
        LagTracker::default()
    }

    fn writer(&mut self, now: Duration, actor: ActorId) -> &mut Writer {
        self.writers.entry(actor).or_insert(Writer {
            reachable: false,
            unreachable_since: Some(now),
            pending: VecDeque::new(),
            head: 0,
            head_committed_ms: None,
        })
    }

    /// A writer published its head (from membership metadata). Call it for
    /// every metadata update; repeated or older heads are ignored.
    pub fn head(&mut self, now: Duration, actor: ActorId, version: u64, committed_ms: Option<u64>) {
        let w = self.writer(now, actor);
        if version <= w.head {
            return;
        }
        w.head = version;
        w.head_committed_ms = committed_ms;
        if w.pending.len() < MAX_PENDING {
            w.pending.push_back((version, now));
        }
    }

    /// A writer became reachable (alive) or unreachable (suspect, dead).
    pub fn reachable(&mut self, now: Duration, actor: ActorId, reachable: bool) {
        let w = self.writer(now, actor);
        if reachable {
            w.reachable = true;
            w.unreachable_since = None;
        } else if w.reachable || w.unreachable_since.is_none() {
            w.reachable = false;
            w.unreachable_since = Some(now);
        }
    }

    /// Stops tracking a writer (it left the mesh for good, or moved to a new
    /// actor id).
    pub fn forget(&mut self, actor: &ActorId) {
        self.writers.remove(actor);
    }

    /// The writers tracked.
    pub fn writers(&self) -> impl Iterator<Item = &ActorId> {
        self.writers.keys()
    }

    /// Drops the head records `k` now holds (call after applying changes).
    pub fn observe(&mut self, k: &Knowledge) {
        for (a, w) in &mut self.writers {
            let complete = k.complete_through(a);
            while w.pending.front().is_some_and(|(v, _)| *v <= complete) {
                w.pending.pop_front();
            }
        }
    }

    /// The lag of every writer but `own`, given what this node holds.
    pub fn lag(&self, now: Duration, k: &Knowledge, own: &ActorId) -> Vec<WriterLag> {
        let mut out = Vec::with_capacity(self.writers.len());
        for (a, w) in &self.writers {
            if a == own {
                continue;
            }
            let complete = k.complete_through(a);
            let oldest_unheld = w
                .pending
                .iter()
                .find(|(v, _)| *v > complete)
                .map(|(_, at)| *at);
            let since = match (w.reachable, w.unreachable_since, oldest_unheld) {
                (true, _, s) => s,
                (false, Some(u), Some(s)) => Some(u.min(s)),
                (false, u, s) => u.or(s),
            };
            out.push(WriterLag {
                actor: *a,
                reachable: w.reachable,
                lag: since.map_or(Duration::ZERO, |s| now.saturating_sub(s)),
                head: w.head,
                missing_versions: k.missing_up_to(a, w.head),
                head_committed_ms: w.head_committed_ms,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use litemesh_proto::RangeSet;

    fn s(x: u64) -> Duration {
        Duration::from_secs(x)
    }

    fn holding(a: ActorId, upto: u64) -> Knowledge {
        let mut k = Knowledge::default();
        if upto > 0 {
            k.have.insert(a, RangeSet::from_ranges([(1, upto)]));
        }
        k
    }

    #[test]
    fn a_reachable_writer_whose_head_is_held_has_no_lag() {
        let a = ActorId([1; 16]);
        let me = ActorId([0; 16]);
        let mut t = LagTracker::new();
        t.reachable(s(0), a, true);
        t.head(s(1), a, 10, Some(5));
        let l = t.lag(s(100), &holding(a, 10), &me);
        assert_eq!((l[0].lag, l[0].missing_versions), (Duration::ZERO, 0));
    }

    #[test]
    fn lag_runs_from_the_oldest_head_not_held() {
        let a = ActorId([1; 16]);
        let me = ActorId([0; 16]);
        let mut t = LagTracker::new();
        t.reachable(s(0), a, true);
        t.head(s(10), a, 5, None);
        t.head(s(20), a, 9, None);
        assert_eq!(t.lag(s(30), &holding(a, 3), &me)[0].lag, s(20));
        assert_eq!(t.lag(s(30), &holding(a, 3), &me)[0].missing_versions, 6);
        t.observe(&holding(a, 5));
        assert_eq!(t.lag(s(30), &holding(a, 5), &me)[0].lag, s(10));
        t.observe(&holding(a, 9));
        assert_eq!(t.lag(s(30), &holding(a, 9), &me)[0].lag, Duration::ZERO);
    }

    #[test]
    fn an_unreachable_writer_lags_from_when_it_was_lost() {
        let a = ActorId([1; 16]);
        let me = ActorId([0; 16]);
        let mut t = LagTracker::new();
        t.reachable(s(0), a, true);
        t.head(s(1), a, 4, None);
        t.reachable(s(50), a, false);
        t.reachable(s(55), a, false);
        let k = holding(a, 4);
        assert_eq!(t.lag(s(80), &k, &me)[0].lag, s(30), "grows while away");
        t.reachable(s(90), a, true);
        assert_eq!(
            t.lag(s(91), &k, &me)[0].lag,
            Duration::ZERO,
            "back and held"
        );
        // Known only as unreachable (e.g. remembered from an earlier run).
        let b = ActorId([2; 16]);
        t.reachable(s(100), b, false);
        assert_eq!(t.lag(s(110), &k, &me)[1].lag, s(10));
    }

    #[test]
    fn gaps_below_the_head_count_as_not_held() {
        let a = ActorId([1; 16]);
        let me = ActorId([0; 16]);
        let mut t = LagTracker::new();
        t.reachable(s(0), a, true);
        t.head(s(1), a, 10, None);
        let mut k = Knowledge::default();
        k.have.insert(a, RangeSet::from_ranges([(1, 4), (6, 10)]));
        let l = t.lag(s(5), &k, &me);
        assert_eq!((l[0].lag, l[0].missing_versions), (s(4), 1));
        assert!(
            t.lag(s(5), &k, &a).is_empty(),
            "the node's own actor has no lag"
        );
    }
}
