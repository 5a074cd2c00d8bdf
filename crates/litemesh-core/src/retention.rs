//! When to collect tombstones: the node's side of the retention policy.
//!
//! Every few seconds the core computes the stable cut
//! ([`litemesh_sync::stable_cut`]) from the reports peers sent at their last
//! reconciliation and the members it knows, and keeps a few timed samples of
//! it. A version may be collected once it has been stable for the whole
//! retention window: the cut handed to the driver ([`crate::Event::Collect`])
//! is the newest sample at least a window old. The window is a margin on
//! top of stability — for a member this node has not heard of yet, and for
//! an operator who wants deleted rows' metadata kept a while (an audit, a
//! backup cycle).

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use litemesh_proto::{ActorId, Knowledge};
use litemesh_sync::{HeldBack, Report, stable_cut};

/// How often the stable cut is recomputed.
pub(crate) const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Most samples kept per window (they are spaced window / this apart).
const SAMPLES_PER_WINDOW: u32 = 64;

/// The collection state of a node.
#[derive(Debug, Default)]
pub(crate) struct Collector {
    /// The policy: keep stable versions this long (`None`: collect nothing).
    pub window: Option<Duration>,
    /// This file's actors (current and earlier).
    pub owned: Vec<ActorId>,
    /// Stable cuts, oldest first, with when they were computed.
    samples: VecDeque<(Duration, BTreeMap<ActorId, u64>)>,
    /// The cut last handed to the driver.
    emitted: BTreeMap<ActorId, u64>,
    /// Why the stable cut could not be computed at the last check.
    pub held_back: Option<String>,
    /// The member whose report lacks the most of what this node holds.
    pub laggard: Option<(SocketAddr, u64)>,
    pub next_check: Duration,
}

/// What a check found, for the status report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CollectionStatus {
    /// The policy (`None`: off).
    pub window: Option<Duration>,
    /// Per actor, the versions stable now (every node holds them).
    pub stable: BTreeMap<ActorId, u64>,
    /// Per actor, the versions whose tombstones may be collected (stable
    /// for a whole window).
    pub collectable: BTreeMap<ActorId, u64>,
    /// Why nothing more can be collected, if something holds it back.
    pub held_back: Option<String>,
    /// The member whose last report lacks the most of what this node holds,
    /// and how many versions.
    pub laggard: Option<(SocketAddr, u64)>,
}

impl Collector {
    /// Recomputes the stable cut; returns a cut to collect when it advanced.
    pub fn check(
        &mut self,
        now: Duration,
        mine: &Knowledge,
        members: &[SocketAddr],
        reports: &BTreeMap<SocketAddr, Report>,
    ) -> Option<BTreeMap<ActorId, u64>> {
        let window = self.window?;
        match stable_cut(mine, &self.owned, members, reports) {
            Ok(c) => {
                self.held_back = None;
                self.laggard = c.laggard;
                let spacing = (window / SAMPLES_PER_WINDOW).max(CHECK_EVERY);
                let newest = self.samples.back();
                if newest.is_none_or(|(t, cut)| *cut != c.cut && now.saturating_sub(*t) >= spacing)
                {
                    self.samples.push_back((now, c.cut));
                }
            }
            Err(h) => {
                self.held_back = Some(held_back_text(&h));
                self.laggard = None;
            }
        }
        // The newest sample a whole window old; older ones are not needed.
        while self.samples.len() > 1 && now.saturating_sub(self.samples[1].0) >= window {
            self.samples.pop_front();
        }
        let (t, cut) = self.samples.front()?;
        if now.saturating_sub(*t) < window || *cut == self.emitted {
            return None;
        }
        self.emitted = cut.clone();
        Some(cut.clone())
    }

    /// What the last check found.
    pub fn status(&self) -> CollectionStatus {
        CollectionStatus {
            window: self.window,
            stable: self
                .samples
                .back()
                .map(|(_, c)| c.clone())
                .unwrap_or_default(),
            collectable: self.emitted.clone(),
            held_back: self.held_back.clone(),
            laggard: self.laggard,
        }
    }
}

fn held_back_text(h: &HeldBack<SocketAddr>) -> String {
    h.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use litemesh_proto::RangeSet;

    fn k(n: u64) -> Knowledge {
        let mut out = Knowledge::default();
        out.have
            .insert(ActorId([1; 16]), RangeSet::from_ranges([(1, n)]));
        out
    }

    #[test]
    fn a_cut_is_collected_once_stable_for_a_window() {
        let peer: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let mut c = Collector {
            window: Some(Duration::from_secs(60)),
            owned: vec![ActorId([1; 16])],
            ..Default::default()
        };
        let report = |n| {
            BTreeMap::from([(
                peer,
                Report {
                    knowledge: k(n),
                    owned: vec![ActorId([2; 16])],
                    unapplied: 0,
                },
            )])
        };
        let s = Duration::from_secs;
        assert_eq!(c.check(s(0), &k(10), &[peer], &BTreeMap::new()), None);
        assert!(c.held_back.as_deref().unwrap().contains("not reported"));
        assert_eq!(c.check(s(5), &k(10), &[peer], &report(4)), None);
        assert_eq!(c.check(s(30), &k(12), &[peer], &report(8)), None);
        // A window after the first sample: its cut (4), not the newer one.
        let cut = c.check(s(66), &k(12), &[peer], &report(12)).unwrap();
        assert_eq!(cut[&ActorId([1; 16])], 4);
        assert_eq!(c.check(s(67), &k(12), &[peer], &report(12)), None);
        let cut = c.check(s(91), &k(12), &[peer], &report(12)).unwrap();
        assert_eq!(cut[&ActorId([1; 16])], 8);
        assert_eq!(c.status().stable[&ActorId([1; 16])], 12);
        // Off: nothing, ever.
        c.window = None;
        assert_eq!(c.check(s(1000), &k(12), &[peer], &report(12)), None);
    }
}
