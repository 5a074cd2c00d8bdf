//! Knowledge: which versions of which actors a node holds, and the arithmetic
//! nodes do on it to decide what to send, what to pull and how far behind
//! they are.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{ActorId, RangeSet};

/// What a node holds: for every actor, the versions it has applied (or knows to
/// be cleared), plus versions it has only partly received.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Knowledge {
    /// Complete versions per actor.
    pub have: BTreeMap<ActorId, RangeSet>,
    /// Versions received in part: actor → version → ranges of entry numbers held.
    pub partial: BTreeMap<ActorId, BTreeMap<u64, RangeSet>>,
}

impl Knowledge {
    /// Per-actor head: the highest version known for each actor.
    pub fn heads(&self) -> BTreeMap<ActorId, u64> {
        self.have
            .iter()
            .filter_map(|(a, r)| r.max().map(|m| (*a, m)))
            .collect()
    }

    /// Whether every version of `other` is also in `self`.
    pub fn covers(&self, other: &Knowledge) -> bool {
        other.have.iter().all(|(a, theirs)| match self.have.get(a) {
            Some(ours) => theirs.difference(ours).is_empty(),
            None => theirs.is_empty(),
        })
    }

    /// Whether `actor`'s `version` is held completely.
    #[inline]
    pub fn contains(&self, actor: &ActorId, version: u64) -> bool {
        self.have.get(actor).is_some_and(|r| r.contains(version))
    }

    /// The highest `n` such that every version `1..=n` of `actor` is held
    /// (0 if version 1 is not).
    #[inline]
    pub fn complete_through(&self, actor: &ActorId) -> u64 {
        match self.have.get(actor).and_then(|r| r.ranges().first()) {
            Some(&(1, end)) => end,
            _ => 0,
        }
    }

    /// How many of `actor`'s versions `1..=version` are not held.
    #[inline]
    pub fn missing_up_to(&self, actor: &ActorId, version: u64) -> u64 {
        let held: u64 = self.have.get(actor).map_or(0, |r| {
            r.ranges()
                .iter()
                .take_while(|(start, _)| *start <= version)
                .map(|(start, end)| (*end).min(version) - start + 1)
                .sum()
        });
        version - held.min(version)
    }

    /// How many versions `theirs` holds that `self` does not: what a peer
    /// with `theirs` could still send this node.
    pub fn lacking(&self, theirs: &Knowledge) -> u64 {
        theirs
            .have
            .iter()
            .map(|(a, r)| match self.have.get(a) {
                Some(ours) => r.difference(ours).count(),
                None => r.count(),
            })
            .sum()
    }

    /// The complete versions held by both (partial records left out).
    pub fn intersection(&self, other: &Knowledge) -> Knowledge {
        let mut out = Knowledge::default();
        for (a, r) in &self.have {
            if let Some(o) = other.have.get(a) {
                let both = r.difference(&r.difference(o));
                if !both.is_empty() {
                    out.have.insert(*a, both);
                }
            }
        }
        out
    }

    /// Adds every complete version `other` holds (partial records left
    /// out).
    pub fn union_with(&mut self, other: &Knowledge) {
        for (a, r) in &other.have {
            self.have.entry(*a).or_default().union_with(r);
        }
    }

    /// Adds one complete version (idempotent); drops any partial record of it.
    pub fn insert(&mut self, actor: ActorId, version: u64) {
        self.have.entry(actor).or_default().insert(version);
        if let Some(p) = self.partial.get_mut(&actor) {
            p.remove(&version);
            if p.is_empty() {
                self.partial.remove(&actor);
            }
        }
    }

    /// Whether every range set in it is well formed (sorted, disjoint,
    /// non-adjacent, `start <= end`): what a decoder checks of a peer's
    /// knowledge.
    pub fn is_well_formed(&self) -> bool {
        self.have.values().all(RangeSet::is_well_formed)
            && self
                .partial
                .values()
                .flat_map(|m| m.values())
                .all(RangeSet::is_well_formed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(ranges: &[(u8, u64, u64)]) -> Knowledge {
        let mut k = Knowledge::default();
        for &(a, s, e) in ranges {
            k.have
                .entry(ActorId([a; 16]))
                .or_default()
                .insert_range(s, e);
        }
        k
    }

    #[test]
    fn arithmetic() {
        let a = ActorId([1; 16]);
        let ours = k(&[(1, 1, 10), (1, 15, 20)]);
        let theirs = k(&[(1, 1, 25), (2, 1, 3)]);
        assert_eq!(ours.lacking(&theirs), 4 + 5 + 3);
        assert_eq!(theirs.lacking(&ours), 0);
        assert!(theirs.covers(&ours) && !ours.covers(&theirs));
        assert_eq!(ours.complete_through(&a), 10);
        assert_eq!(ours.missing_up_to(&a, 20), 4);
        assert_eq!(ours.missing_up_to(&a, 12), 2);
        assert_eq!(ours.missing_up_to(&a, 0), 0);
        assert!(ours.contains(&a, 16) && !ours.contains(&a, 11));
        assert_eq!(ours.heads()[&a], 20);
        let mut x = ours.clone();
        x.partial
            .entry(a)
            .or_default()
            .insert(12, RangeSet::from_ranges([(0, 5)]));
        x.insert(a, 12);
        assert!(x.contains(&a, 12) && x.partial.is_empty());
        assert!(x.is_well_formed());
    }
}
