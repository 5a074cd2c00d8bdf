//! Table placement: which regions may hold a table's rows, what a node is
//! entitled to, and the filtering every path that carries rows applies.
//!
//! A table is *pinned* to a set of regions when its schema says so; its rows
//! may only reach nodes certified in one of them. A node may also carry only
//! some tables (a partial replica). A version (one transaction of one actor)
//! that reaches a node without the rows of some tables carries their names
//! in [`VersionChanges::withheld`]: the node records the version as held
//! (it has everything it may hold, so it asks for nothing more) and never
//! serves it as complete to a node entitled to one of those tables.

use std::collections::{BTreeMap, BTreeSet};

use crate::{ChangeBatch, VersionChanges};

/// Most withheld table names one version may carry on the wire.
pub const MAX_WITHHELD: usize = 4096;

/// The regions each pinned table may live in. Tables not named here are
/// replicated to every node. Names are compared without regard to ASCII
/// case, as SQLite does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    pinned: BTreeMap<String, BTreeSet<String>>,
}

/// What one node may hold: the tables allowed in its (certified) region,
/// further narrowed to the tables it chooses to carry, if it is a partial
/// replica.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Entitlement {
    /// The node's region (`None`: no region; it may hold unpinned tables only).
    pub region: Option<String>,
    /// The tables it carries, lower-cased; `None` for all of them.
    pub carried: Option<BTreeSet<String>>,
}

impl Entitlement {
    /// A full replica in `region`.
    pub fn region(region: Option<String>) -> Entitlement {
        Entitlement {
            region,
            carried: None,
        }
    }
}

impl Placement {
    /// No table pinned.
    pub fn new() -> Placement {
        Placement::default()
    }

    /// Pins `table` to `regions` (replacing what it was pinned to).
    pub fn pin(&mut self, table: &str, regions: impl IntoIterator<Item = String>) {
        self.pinned
            .insert(table.to_ascii_lowercase(), regions.into_iter().collect());
    }

    /// Whether no table is pinned.
    pub fn is_empty(&self) -> bool {
        self.pinned.is_empty()
    }

    /// The regions `table` is pinned to, or `None` if it lives everywhere.
    pub fn regions(&self, table: &str) -> Option<&BTreeSet<String>> {
        if self.pinned.is_empty() {
            return None;
        }
        self.pinned.get(&table.to_ascii_lowercase())
    }

    /// The pinned tables and their regions.
    pub fn pinned(&self) -> impl Iterator<Item = (&str, &BTreeSet<String>)> {
        self.pinned.iter().map(|(t, r)| (t.as_str(), r))
    }

    /// A digest of the placement (`None` when no table is pinned), which
    /// nodes publish so that a node whose schema pins differently is seen.
    /// FNV-1a over the sorted tables and regions: the same on every
    /// platform and version.
    pub fn digest(&self) -> Option<u64> {
        if self.pinned.is_empty() {
            return None;
        }
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for b in bytes {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        };
        for (t, rs) in &self.pinned {
            eat(t.as_bytes());
            eat(&[0x1f]);
            for r in rs {
                eat(r.as_bytes());
                eat(&[0x1e]);
            }
            eat(&[0x1d]);
        }
        Some(h)
    }

    /// Whether the region of `ent` allows `table` (carried tables aside).
    pub fn allows(&self, ent: &Entitlement, table: &str) -> bool {
        match self.regions(table) {
            None => true,
            Some(rs) => ent.region.as_ref().is_some_and(|r| rs.contains(r)),
        }
    }

    /// Whether a node entitled to `ent` may hold rows of `table`.
    pub fn may_hold(&self, ent: &Entitlement, table: &str) -> bool {
        self.allows(ent, table)
            && ent
                .carried
                .as_ref()
                .is_none_or(|c| c.contains(&table.to_ascii_lowercase()))
    }

    /// Whether filtering is ever needed for `ent`: some table is pinned or
    /// the node carries only some tables.
    pub fn restricts(&self, ent: &Entitlement) -> bool {
        !self.pinned.is_empty() || ent.carried.is_some()
    }

    /// The version `v` as a node entitled to `ent` may receive it: without
    /// the rows of tables it may not hold (named in `withheld`), or `None`
    /// when it was already stripped of rows that node *is* entitled to
    /// (serving it would pass for complete what is not).
    pub fn filter_version(&self, v: &VersionChanges, ent: &Entitlement) -> Option<VersionChanges> {
        if v.withheld.iter().any(|t| self.may_hold(ent, t)) {
            return None;
        }
        if !self.restricts(ent) {
            return Some(v.clone());
        }
        let mut withheld: BTreeSet<String> = v.withheld.iter().cloned().collect();
        let mut rows = Vec::with_capacity(v.rows.len());
        for r in &v.rows {
            if self.may_hold(ent, &r.table) {
                rows.push(r.clone());
            } else if !withheld.contains(&r.table) {
                withheld.insert(r.table.clone());
            }
        }
        Some(VersionChanges {
            actor: v.actor,
            version: v.version,
            chunk: v.chunk,
            rows,
            withheld: withheld.into_iter().collect(),
        })
    }

    /// `batch` as a node entitled to `ent` may receive it (see
    /// [`Placement::filter_version`]); cleared ranges pass unchanged (they
    /// carry no rows, and a sender never folds a version with withheld
    /// tables into one).
    pub fn filter_batch(&self, batch: &ChangeBatch, ent: &Entitlement) -> ChangeBatch {
        ChangeBatch {
            versions: batch
                .versions
                .iter()
                .filter_map(|v| self.filter_version(v, ent))
                .collect(),
            cleared: batch.cleared.clone(),
        }
    }

    /// Whether `batch` needs filtering for some receiver: it has rows of a
    /// pinned table, or a version already stripped of some.
    pub fn touches(&self, batch: &ChangeBatch) -> bool {
        batch.versions.iter().any(|v| {
            !v.withheld.is_empty() || v.rows.iter().any(|r| self.regions(&r.table).is_some())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ActorId, RowChange, Value};

    fn row(table: &str) -> RowChange {
        RowChange {
            table: table.into(),
            pk: vec![Value::Integer(1)],
            seq: 0,
            cl: 1,
            cells: vec![],
        }
    }

    fn version(tables: &[&str], withheld: &[&str]) -> VersionChanges {
        VersionChanges {
            actor: ActorId([1; 16]),
            version: 1,
            chunk: None,
            rows: tables.iter().map(|t| row(t)).collect(),
            withheld: withheld.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn placement() -> Placement {
        let mut p = Placement::new();
        p.pin("EU_Users", ["eu".to_string()]);
        p
    }

    #[test]
    fn rows_of_a_pinned_table_reach_only_its_regions() {
        let p = placement();
        let v = version(&["eu_users", "posts"], &[]);
        let us = Entitlement::region(Some("us".into()));
        let f = p.filter_version(&v, &us).unwrap();
        assert_eq!(f.rows.len(), 1);
        assert_eq!(f.rows[0].table, "posts");
        assert_eq!(f.withheld, vec!["eu_users".to_string()]);
        let eu = Entitlement::region(Some("eu".into()));
        assert_eq!(p.filter_version(&v, &eu).unwrap(), v);
        // No region: unpinned tables only.
        let none = Entitlement::region(None);
        assert_eq!(p.filter_version(&v, &none).unwrap().withheld, ["eu_users"]);
    }

    #[test]
    fn a_stripped_version_is_never_served_to_a_node_entitled_to_more() {
        let p = placement();
        let stripped = version(&["posts"], &["eu_users"]);
        let eu = Entitlement::region(Some("eu".into()));
        assert_eq!(p.filter_version(&stripped, &eu), None);
        let us = Entitlement::region(Some("us".into()));
        assert_eq!(p.filter_version(&stripped, &us).unwrap(), stripped);
        // A partial replica in eu that does not carry eu_users may have it.
        let partial = Entitlement {
            region: Some("eu".into()),
            carried: Some(["posts".to_string()].into()),
        };
        assert_eq!(p.filter_version(&stripped, &partial).unwrap(), stripped);
    }

    #[test]
    fn the_digest_tells_placements_apart() {
        let p = placement();
        assert_eq!(Placement::new().digest(), None);
        let mut same = Placement::new();
        same.pin("eu_users", ["eu".to_string()]);
        assert_eq!(p.digest(), same.digest());
        let mut wider = Placement::new();
        wider.pin("eu_users", ["eu".to_string(), "us".to_string()]);
        assert_ne!(p.digest(), wider.digest());
        assert!(p.digest().is_some());
    }

    #[test]
    fn a_partial_replica_gets_only_the_tables_it_carries() {
        let p = Placement::new();
        let partial = Entitlement {
            region: None,
            carried: Some(["posts".to_string()].into()),
        };
        let v = version(&["posts", "likes", "likes"], &[]);
        let f = p.filter_version(&v, &partial).unwrap();
        assert_eq!(f.rows.len(), 1);
        assert_eq!(f.withheld, ["likes"]);
        assert!(!p.restricts(&Entitlement::default()));
    }

    #[test]
    fn a_batch_with_withheld_tables_still_decodes_and_without_them_encodes_as_before() {
        let plain = ChangeBatch {
            versions: vec![version(&["posts"], &[])],
            cleared: vec![],
        };
        let bytes = crate::encode_batch(&plain, 1 << 20).unwrap();
        assert_eq!(crate::decode_batch(&bytes, 1 << 20).unwrap(), plain);
        let with = ChangeBatch {
            versions: vec![version(&["posts"], &["eu_users"])],
            cleared: vec![],
        };
        let bytes2 = crate::encode_batch(&with, 1 << 20).unwrap();
        assert!(bytes2.len() > bytes.len());
        assert_eq!(crate::decode_batch(&bytes2, 1 << 20).unwrap(), with);
    }
}
