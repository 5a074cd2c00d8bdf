//! Compact sets of version numbers, kept as sorted, disjoint, inclusive ranges.

use serde::{Deserialize, Serialize};

/// A set of `u64` versions stored as sorted, non-adjacent, inclusive ranges.
///
/// A node that has received versions 1..=500 and 502..=900 of an actor holds
/// two ranges, whatever the number of versions in them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RangeSet {
    ranges: Vec<(u64, u64)>,
}

impl RangeSet {
    /// The empty set.
    #[inline]
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a set from arbitrary (possibly overlapping, unsorted) inclusive ranges.
    /// Ranges with `start > end` are ignored.
    pub fn from_ranges(ranges: impl IntoIterator<Item = (u64, u64)>) -> Self {
        let mut set = Self::new();
        for (s, e) in ranges {
            set.insert_range(s, e);
        }
        set
    }

    /// The ranges, sorted and disjoint.
    #[inline]
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    /// True when the set holds no version.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The largest version in the set.
    #[inline]
    pub fn max(&self) -> Option<u64> {
        self.ranges.last().map(|r| r.1)
    }

    /// Number of versions in the set (saturating).
    #[inline]
    pub fn count(&self) -> u64 {
        self.ranges.iter().fold(0u64, |acc, (s, e)| {
            acc.saturating_add(e - s).saturating_add(1)
        })
    }

    /// Whether `v` is in the set.
    #[inline]
    pub fn contains(&self, v: u64) -> bool {
        match self.ranges.binary_search_by(|&(s, _)| s.cmp(&v)) {
            Ok(_) => true,
            Err(0) => false,
            Err(i) => self.ranges[i - 1].1 >= v,
        }
    }

    /// Adds one version.
    #[inline]
    pub fn insert(&mut self, v: u64) {
        self.insert_range(v, v);
    }

    /// Adds the inclusive range `start..=end`.
    #[inline]
    pub fn insert_range(&mut self, start: u64, end: u64) {
        if start > end {
            return;
        }
        // First range whose end + 1 >= start (could merge with the new one).
        let first = self
            .ranges
            .partition_point(|&(_, e)| e.saturating_add(1) < start);
        // First range whose start > end + 1 (cannot merge).
        let last = self
            .ranges
            .partition_point(|&(s, _)| s <= end.saturating_add(1));
        if first >= last {
            self.ranges.insert(first, (start, end));
            return;
        }
        let new_start = start.min(self.ranges[first].0);
        let new_end = end.max(self.ranges[last - 1].1);
        self.ranges.drain(first..last);
        self.ranges.insert(first, (new_start, new_end));
    }

    /// Adds every version of `other`.
    pub fn union_with(&mut self, other: &RangeSet) {
        for &(s, e) in &other.ranges {
            self.insert_range(s, e);
        }
    }

    /// The versions of `self` that are not in `other`.
    pub fn difference(&self, other: &RangeSet) -> RangeSet {
        let mut out = Vec::new();
        let mut j = 0;
        for &(s, e) in &self.ranges {
            let mut cur = s;
            while j < other.ranges.len() && other.ranges[j].1 < cur {
                j += 1;
            }
            let mut k = j;
            let mut done = false;
            while k < other.ranges.len() && other.ranges[k].0 <= e {
                let (os, oe) = other.ranges[k];
                if os > cur {
                    out.push((cur, os - 1));
                }
                if oe >= e {
                    done = true;
                    break;
                }
                cur = oe + 1;
                k += 1;
            }
            if !done && cur <= e {
                out.push((cur, e));
            }
        }
        RangeSet { ranges: out }
    }

    /// Whether the set holds every version in `start..=end`.
    #[inline]
    pub fn contains_range(&self, start: u64, end: u64) -> bool {
        if start > end {
            return true;
        }
        match self.ranges.binary_search_by(|&(s, _)| s.cmp(&start)) {
            Ok(i) => self.ranges[i].1 >= end,
            Err(0) => false,
            Err(i) => self.ranges[i - 1].1 >= end,
        }
    }

    /// Checks the invariants (sorted, disjoint, non-adjacent, start <= end).
    /// Used on sets decoded from the network.
    pub fn is_well_formed(&self) -> bool {
        self.ranges.iter().all(|&(s, e)| s <= e)
            && self
                .ranges
                .windows(2)
                .all(|w| w[0].1.saturating_add(1) < w[1].0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn model(ranges: &[(u64, u64)]) -> BTreeSet<u64> {
        ranges.iter().flat_map(|&(s, e)| s..=e).collect()
    }

    proptest! {
        #[test]
        fn behaves_like_a_set(a in prop::collection::vec((0u64..60, 0u64..8), 0..12),
                              b in prop::collection::vec((0u64..60, 0u64..8), 0..12)) {
            let a: Vec<_> = a.into_iter().map(|(s, l)| (s, s + l)).collect();
            let b: Vec<_> = b.into_iter().map(|(s, l)| (s, s + l)).collect();
            let sa = RangeSet::from_ranges(a.clone());
            let sb = RangeSet::from_ranges(b.clone());
            prop_assert!(sa.is_well_formed());
            let ma = model(&a);
            let mb = model(&b);
            prop_assert_eq!(model(sa.ranges()), ma.clone());
            prop_assert_eq!(sa.count(), ma.len() as u64);
            let diff = sa.difference(&sb);
            prop_assert!(diff.is_well_formed());
            prop_assert_eq!(model(diff.ranges()), ma.difference(&mb).copied().collect::<BTreeSet<_>>());
            for v in 0..70 {
                prop_assert_eq!(sa.contains(v), ma.contains(&v));
                prop_assert_eq!(sa.contains_range(v, v + 3), (v..=v + 3).all(|x| ma.contains(&x)));
            }
            let mut u = sa.clone();
            u.union_with(&sb);
            prop_assert_eq!(model(u.ranges()), ma.union(&mb).copied().collect::<BTreeSet<_>>());
        }
    }
}
