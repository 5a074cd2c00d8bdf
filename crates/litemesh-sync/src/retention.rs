//! Which tombstones may be collected: the *stable cut*, computed from the
//! knowledge peers report at every reconciliation.
//!
//! A tombstone made by version `(A, v)` may be dropped at node `N` once no
//! write it has to defeat can still arrive anywhere and no node can still
//! write its key without knowing it. `N` can tell from the last report of
//! each node (its knowledge, and the actors it writes or wrote with):
//!
//! 1. every member `N` knows of has reported (members that left or went
//!    silent included, until they are forgotten), and so has every node
//!    that claims an actor `N` holds versions of;
//! 2. every such report holds `(A, v)`: its node held the delete, so every
//!    write it made afterwards knew the tombstone (or the floor that
//!    replaced it) — such writes carry a larger causal length and win;
//! 3. `N` holds every version of each reporter's own actors that its report
//!    holds: every write made *before* the reporter held the delete is
//!    already here, and merged against the tombstone. Versions of actors no
//!    report claims (a node gone for good, an actor a node used before
//!    litemesh recorded actors) count likewise for every reporter: what any
//!    of them could still pass on is already here.
//!
//! So the cut is, per actor, the versions `1..=c` held by `N` and by every
//! report. Versions are counted as a prefix (`1..=c`) so the cut is a small
//! map, monotone as reports advance.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use litemesh_proto::{ActorId, Knowledge};

/// What a node reported at a reconciliation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The versions it held.
    pub knowledge: Knowledge,
    /// The actors it writes or wrote with.
    pub owned: Vec<ActorId>,
    /// Versions its knowledge counts that it had not applied (quarantined):
    /// while there are any, the report proves nothing.
    pub unapplied: u64,
}

/// Why nothing (more) can be collected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeldBack<K> {
    /// A member has not reported since this node started.
    NoReport(K),

    /// A node's report counts versions it has not applied (quarantined).
    Unapplied {
        /// The reporter.
        node: K,
        /// How many.
        versions: u64,
    },
    /// A node reported writes of its own (or of a writer no node claims)
    /// that this node does not hold yet.
    Behind {
        /// The reporter.
        node: K,
        /// How many of its own versions are missing here.
        missing: u64,
    },
}

impl<K: fmt::Display> fmt::Display for HeldBack<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeldBack::NoReport(k) => write!(f, "member {k} has not reported its knowledge yet"),

            HeldBack::Unapplied { node, versions } => write!(
                f,
                "{node} holds {versions} version(s) it could not apply (quarantined)"
            ),
            HeldBack::Behind { node, missing } => write!(
                f,
                "{node}'s last report holds {missing} version(s) of its own (or of writers no \
                 node claims) that are not held here yet"
            ),
        }
    }
}

/// The stable cut and who limits it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StableCut<K> {
    /// Per actor, versions `1..=n` are stable (actors at 0 are left out).
    pub cut: BTreeMap<ActorId, u64>,
    /// The reporter whose knowledge lacks the most of what this node
    /// holds: the one holding collection back the most, if any lacks.
    pub laggard: Option<(K, u64)>,
}

/// Computes the stable cut at a node holding `mine`, writing with `my_actors`,
/// knowing `members` (every member, in any state, until membership forgets
/// it), from the last `reports` of each node (keyed like `members`).
pub fn stable_cut<K: Ord + Clone>(
    mine: &Knowledge,
    my_actors: &[ActorId],
    members: &[K],
    reports: &BTreeMap<K, Report>,
) -> Result<StableCut<K>, HeldBack<K>> {
    for m in members {
        if !reports.contains_key(m) {
            return Err(HeldBack::NoReport(m.clone()));
        }
    }
    let mut claimed: BTreeMap<ActorId, Vec<&K>> = BTreeMap::new();
    for (k, r) in reports {
        for a in &r.owned {
            claimed.entry(*a).or_default().push(k);
        }
    }
    let mine_owned: BTreeSet<&ActorId> = my_actors.iter().collect();
    let mut required: BTreeSet<&K> = members.iter().collect();
    for (a, versions) in &mine.have {
        if versions.is_empty() || mine_owned.contains(a) {
            continue;
        }
        if let Some(ks) = claimed.get(a) {
            required.extend(ks.iter().copied());
        }
    }
    // Actors a reporter must not hold more of than this node: its own, and
    // those nobody claims.
    let unclaimed: Vec<&ActorId> = reports
        .values()
        .flat_map(|r| r.knowledge.have.keys())
        .chain(mine.have.keys())
        .filter(|a| !claimed.contains_key(a) && !mine_owned.contains(a))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut laggard: Option<(K, u64)> = None;
    for k in &required {
        let r = &reports[*k];
        if r.unapplied > 0 {
            return Err(HeldBack::Unapplied {
                node: (*k).clone(),
                versions: r.unapplied,
            });
        }
        let missing: u64 = r
            .owned
            .iter()
            .chain(unclaimed.iter().copied())
            .filter(|a| !mine_owned.contains(a))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .map(|a| match (r.knowledge.have.get(a), mine.have.get(a)) {
                (Some(theirs), Some(ours)) => theirs.difference(ours).count(),
                (Some(theirs), None) => theirs.count(),
                (None, _) => 0,
            })
            .sum();
        if missing > 0 {
            return Err(HeldBack::Behind {
                node: (*k).clone(),
                missing,
            });
        }
        let lacks = r.knowledge.lacking(mine);
        if lacks > 0 && laggard.as_ref().is_none_or(|(_, l)| lacks > *l) {
            laggard = Some(((*k).clone(), lacks));
        }
    }
    let mut cut = BTreeMap::new();
    for a in mine.have.keys() {
        let c = required
            .iter()
            .map(|k| reports[*k].knowledge.complete_through(a))
            .fold(mine.complete_through(a), u64::min);
        if c > 0 {
            cut.insert(*a, c);
        }
    }
    Ok(StableCut { cut, laggard })
}

#[cfg(test)]
mod tests {
    use super::*;
    use litemesh_proto::RangeSet;

    fn k(pairs: &[(u8, u64)]) -> Knowledge {
        let mut out = Knowledge::default();
        for (a, n) in pairs {
            out.have
                .insert(ActorId([*a; 16]), RangeSet::from_ranges([(1, *n)]));
        }
        out
    }

    fn report(pairs: &[(u8, u64)], owned: &[u8]) -> Report {
        Report {
            knowledge: k(pairs),
            owned: owned.iter().map(|a| ActorId([*a; 16])).collect(),
            unapplied: 0,
        }
    }

    #[test]
    fn cut_is_the_prefix_every_report_holds() {
        let mine = k(&[(1, 10), (2, 5)]);
        let reports = BTreeMap::from([
            ("b", report(&[(1, 7), (2, 5)], &[2])),
            ("c", report(&[(1, 9), (2, 3)], &[3])),
        ]);
        let cut = stable_cut(&mine, &[ActorId([1; 16])], &["b", "c"], &reports).unwrap();
        assert_eq!(
            cut.cut,
            BTreeMap::from([(ActorId([1; 16]), 7), (ActorId([2; 16]), 3)])
        );
        assert_eq!(cut.laggard.map(|l| l.0), Some("b"));
    }

    #[test]
    fn held_back_by_silence_unknown_writers_and_missing_writes() {
        let mine = k(&[(1, 10), (2, 5)]);
        let me = [ActorId([1; 16])];
        let b = report(&[(1, 10), (2, 5)], &[2]);
        assert_eq!(
            stable_cut(&mine, &me, &["b", "c"], &BTreeMap::from([("b", b.clone())])),
            Err(HeldBack::NoReport("c"))
        );
        // Actor 2's writer is gone, and nobody claims it: a reporter that
        // holds more of it than this node could still pass that on.
        let c = report(&[(1, 10), (2, 7)], &[3]);
        assert_eq!(
            stable_cut(&mine, &me, &["c"], &BTreeMap::from([("c", c)])),
            Err(HeldBack::Behind {
                node: "c",
                missing: 2
            })
        );
        let c = report(&[(1, 10), (2, 4)], &[3]);
        let cut = stable_cut(&mine, &me, &["c"], &BTreeMap::from([("c", c)])).unwrap();
        assert_eq!(cut.cut[&ActorId([2; 16])], 4);
        // b reported writes of its own this node does not hold yet.
        let ahead = report(&[(1, 10), (2, 8)], &[2]);
        assert_eq!(
            stable_cut(&mine, &me, &["b"], &BTreeMap::from([("b", ahead)])),
            Err(HeldBack::Behind {
                node: "b",
                missing: 3
            })
        );
        // A report counting a version its node has not applied proves nothing.
        let mut quarantining = b.clone();
        quarantining.unapplied = 1;
        assert_eq!(
            stable_cut(&mine, &me, &["b"], &BTreeMap::from([("b", quarantining)])),
            Err(HeldBack::Unapplied {
                node: "b",
                versions: 1
            })
        );
        // A node that left membership still counts if it wrote.
        let cut = stable_cut(&mine, &me, &[], &BTreeMap::from([("b", b)])).unwrap();
        assert_eq!(cut.cut[&ActorId([2; 16])], 5);
    }
}
