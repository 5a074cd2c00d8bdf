//! Table placement in the file: the declaration in the schema, the
//! registry of pinned tables (`__lm_placement`), this node's entitlement,
//! the guard triggers that refuse writes to tables it may not hold, and the
//! record of versions held without some tables' rows (`__lm_withheld`).
//!
//! A table is pinned with a comment in its `CREATE TABLE` statement:
//!
//! ```sql
//! CREATE TABLE eu_customers ( -- litemesh: regions = eu-west, eu-central
//!     id TEXT PRIMARY KEY,
//!     email TEXT
//! );
//! ```
//!
//! The rules (see docs/regions.md): widening a table's regions (or
//! unpinning it) is allowed; narrowing them, or pinning a table that was
//! replicated everywhere, is refused (its rows are already where the new
//! placement forbids). A node never holds rows of a table its region does
//! not allow: merges leave them out, and local writes are refused.

use std::collections::{BTreeMap, BTreeSet};

use rusqlite::{Connection, OptionalExtension, Transaction};

use crate::error::{Result, StorageError};
use crate::lex::{comments, statements};
use crate::schema::q;
use crate::store::Store;
use litemesh_proto::{Entitlement, Placement};

/// What [`Store::set_entitlement`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntitlementReport {
    /// Versions this node held without some tables' rows, and now may hold
    /// them: forgotten, so that anti-entropy fetches them again whole.
    pub versions_refetched: u64,
}

/// What the `litemesh:` directives of one `CREATE TABLE` statement declare.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Directives {
    /// The regions it is pinned to (`regions = …`); `None`: everywhere.
    pub regions: Option<BTreeSet<String>>,
    /// Commutative columns (`counter = …`, `max = …`, `min = …`), as
    /// written, with their kind.
    pub kinds: Vec<(String, litemesh_proto::CellKind)>,
}

impl Directives {
    fn is_empty(&self) -> bool {
        self.regions.is_none() && self.kinds.is_empty()
    }
}

/// The placement directives of a schema text, by lower-cased table name
/// (see [`table_directives`]).
#[cfg(test)]
pub(crate) fn directives(schema: &str) -> Result<BTreeMap<String, BTreeSet<String>>> {
    Ok(table_directives(schema)?
        .into_iter()
        .filter_map(|(t, d)| d.regions.map(|r| (t, r)))
        .collect())
}

/// The `litemesh:` directives of a schema text, by lower-cased table name.
/// A directive is a comment anywhere inside a `CREATE TABLE` statement (up
/// to its `;`, so a comment after the closing parenthesis counts). One in
/// any other statement is an error.
pub(crate) fn table_directives(schema: &str) -> Result<BTreeMap<String, Directives>> {
    let mut out = BTreeMap::new();
    for seg in statements(schema) {
        let has = comments(seg).iter().any(|c| {
            let c = c.trim().trim_start_matches(['*', '!']).trim();
            c.get(..9)
                .is_some_and(|p| p.eq_ignore_ascii_case("litemesh:"))
                || mentions_directive(c)
        });
        if !has {
            continue;
        }
        // Which table the statement creates: run it alone.
        let scratch = Connection::open_in_memory()?;
        let created: Vec<String> = scratch
            .execute_batch(seg)
            .ok()
            .and_then(|()| {
                scratch
                    .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
                    .ok()?
                    .query_map([], |r| r.get(0))
                    .ok()?
                    .collect::<rusqlite::Result<Vec<String>>>()
                    .ok()
            })
            .unwrap_or_default();
        let [table] = created.as_slice() else {
            return Err(StorageError::SchemaSql(format!(
                "a `litemesh:` directive must be inside the CREATE TABLE statement it declares \
                 for (before its `;`): {}",
                seg.trim().chars().take(80).collect::<String>()
            )));
        };
        let d = parse_directives(table, seg)?;
        if !d.is_empty() {
            out.insert(table.to_ascii_lowercase(), d);
        }
    }
    Ok(out)
}

/// Parses the placement directive of one `CREATE TABLE` statement: the
/// regions it names, or `None` when it has none.
#[cfg(test)]
pub(crate) fn parse_directive(table: &str, sql: &str) -> Result<Option<BTreeSet<String>>> {
    Ok(parse_directives(table, sql)?.regions)
}

/// The grammar of a directive, for errors.
const GRAMMAR: &str = "`litemesh: regions = REGION[, REGION…]`, `litemesh: counter = COLUMN[, \
                       COLUMN…]`, `max = …` or `min = …` (several clauses separated by `;`)";

/// Parses the `litemesh:` directives of one `CREATE TABLE` statement. A
/// comment that starts with `litemesh:` and says anything else is an error
/// (a typo must not leave a table replicated everywhere, or a counter
/// merged as a plain column).
pub(crate) fn parse_directives(table: &str, sql: &str) -> Result<Directives> {
    use litemesh_proto::CellKind;
    let bad = |why: String| StorageError::Unsupported {
        table: table.to_string(),
        reason: why,
    };
    let mut found = Directives::default();
    for comment in comments(sql) {
        let c = comment.trim().trim_start_matches(['*', '!']).trim();
        let Some(rest) = c
            .get(..9)
            .filter(|p| p.eq_ignore_ascii_case("litemesh:"))
            .map(|_| c[9..].trim())
        else {
            if mentions_directive(c) {
                return Err(bad(format!(
                    "comment {c:?} looks like a litemesh directive but is not one: write {GRAMMAR}"
                )));
            }
            continue;
        };
        for clause in rest.split(';').map(str::trim).filter(|x| !x.is_empty()) {
            let Some((key, list)) = clause.split_once('=') else {
                return Err(bad(format!(
                    "unknown litemesh directive {clause:?}: the directives are {GRAMMAR}"
                )));
            };
            let key = key.trim().to_ascii_lowercase();
            // Regions by commas or spaces; column names by commas (a
            // quoted name may hold spaces).
            let items: Vec<&str> = if key == "regions" {
                list.split([',', ' ', '\t', '\n', '\r'])
                    .filter(|r| !r.is_empty())
                    .collect()
            } else {
                list.split(',')
                    .map(str::trim)
                    .filter(|r| !r.is_empty())
                    .collect()
            };
            if items.is_empty() {
                return Err(bad(format!("`litemesh: {key} =` names nothing")));
            }
            let kind = match key.as_str() {
                "regions" => {
                    if found.regions.is_some() {
                        return Err(bad("more than one `litemesh: regions` directive".into()));
                    }
                    let mut regions = BTreeSet::new();
                    for r in items {
                        let ok = r.len() <= 64
                            && r.bytes().all(|b| {
                                b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')
                            });
                        if !ok {
                            return Err(bad(format!(
                                "region {r:?} in `litemesh: regions`: use 1 to 64 ASCII letters, \
                                 digits, '-', '_' or '.'"
                            )));
                        }
                        regions.insert(r.to_string());
                    }
                    found.regions = Some(regions);
                    continue;
                }
                "counter" => CellKind::Counter,
                "max" => CellKind::Max,
                "min" => CellKind::Min,
                _ => {
                    return Err(bad(format!(
                        "unknown litemesh directive {clause:?}: the directives are {GRAMMAR}"
                    )));
                }
            };
            for col in items {
                let col = col.trim_matches(['"', '`', '[', ']']);
                if found.kinds.iter().any(|(c, _)| c.eq_ignore_ascii_case(col)) {
                    return Err(bad(format!(
                        "column {col:?} is named by more than one `litemesh:` directive"
                    )));
                }
                found.kinds.push((col.to_string(), kind));
            }
        }
    }
    Ok(found)
}

/// Whether a comment mentions `litemesh` followed by `region…`, or by
/// `counter`, `max` or `min` and `=`: a directive mistyped (a typo must not
/// leave a table replicated everywhere, or a counter merged as a plain
/// column). Prose (`-- litemesh, minimal schema`) is not.
fn mentions_directive(c: &str) -> bool {
    let l = c.to_ascii_lowercase();
    l.find("litemesh").is_some_and(|i| {
        let rest = l[i + 8..].trim_start_matches(|ch: char| !ch.is_ascii_alphanumeric());
        let word: String = rest
            .chars()
            .take_while(|ch| ch.is_ascii_alphanumeric() || *ch == '_')
            .collect();
        let after = rest[word.len()..].trim_start();
        rest.starts_with("region")
            || (["counter", "counters", "max", "min"].contains(&word.as_str())
                && (after.starts_with('=') || after.starts_with(':')))
    })
}

/// Reads the registry of pinned tables.
pub(crate) fn load(conn: &Connection) -> Result<Placement> {
    let mut p = Placement::new();
    let rows: Vec<(String, String)> = conn
        .prepare("SELECT name, regions FROM __lm_placement")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (name, regions) in rows {
        p.pin(&name, regions.split(',').map(str::to_string));
    }
    Ok(p)
}

/// Records the placement a schema declares for `table`, refusing to
/// narrow it. `new_table`: the table is created by this schema (any
/// placement is fine then).
pub(crate) fn declare(
    tx: &Transaction<'_>,
    table: &str,
    declared: Option<&BTreeSet<String>>,
    new_table: bool,
) -> Result<()> {
    let current: Option<String> = tx
        .query_row(
            "SELECT regions FROM __lm_placement WHERE name = ?1",
            [table],
            |r| r.get(0),
        )
        .optional()?;
    let current: Option<BTreeSet<String>> =
        current.map(|c| c.split(',').map(str::to_string).collect());
    let list = |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>().join(", ");
    if !new_table {
        match (&current, declared) {
            (None, Some(d)) => {
                return Err(StorageError::Destructive(format!(
                    "table {table:?} is replicated to every region and cannot be pinned to \
                     {} now: its rows are already everywhere (create a new pinned table and \
                     copy the rows that must stay there)",
                    list(d)
                )));
            }
            (Some(c), Some(d)) if !c.is_subset(d) => {
                return Err(StorageError::Destructive(format!(
                    "table {table:?} is placed in {} and the schema narrows it to {}: its rows \
                     may already be in the regions left out; only widening a placement is \
                     supported",
                    list(c),
                    list(d)
                )));
            }
            _ => {}
        }
    }
    match declared {
        None => {
            tx.execute("DELETE FROM __lm_placement WHERE name = ?1", [table])?;
        }
        Some(d) => {
            let text = d.iter().cloned().collect::<Vec<_>>().join(",");
            tx.execute(
                "INSERT INTO __lm_placement(name, regions) VALUES (?1, ?2) \
                 ON CONFLICT(name) DO UPDATE SET regions = ?2",
                (table, &text),
            )?;
        }
    }
    Ok(())
}

/// The message a refused access to `table` gives on a node entitled to
/// `ent`.
pub(crate) fn not_here(placement: &Placement, ent: &Entitlement, table: &str) -> String {
    match placement.regions(table) {
        Some(rs) if !placement.allows(ent, table) => format!(
            "table {table:?} may only be held in region(s) {}; this node is in {}",
            rs.iter().cloned().collect::<Vec<_>>().join(", "),
            ent.region
                .as_deref()
                .map_or("no region".to_string(), |r| format!("region {r:?}")),
        ),
        _ => format!("table {table:?} is not carried by this node (a partial replica)"),
    }
}

/// Reads the tables withheld from `actor`'s versions `start..=end`.
pub(crate) fn withheld_in(
    conn: &Connection,
    actor: u64,
    start: u64,
    end: u64,
) -> Result<BTreeMap<u64, Vec<String>>> {
    let mut out = BTreeMap::new();
    let mut stmt = conn.prepare_cached(
        "SELECT version, tables FROM __lm_withheld WHERE actor = ?1 AND version BETWEEN ?2 AND ?3",
    )?;
    let mut rows = stmt.query((actor as i64, start as i64, end.min(i64::MAX as u64) as i64))?;
    while let Some(r) = rows.next()? {
        let v: i64 = r.get(0)?;
        let t: String = r.get(1)?;
        out.insert(v as u64, split(&t));
    }
    Ok(out)
}

fn split(t: &str) -> Vec<String> {
    t.split('\u{1f}')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Adds `tables` to what is withheld from one version.
pub(crate) fn add_withheld(
    conn: &Connection,
    actor: u64,
    version: u64,
    tables: &BTreeSet<String>,
) -> Result<()> {
    if tables.is_empty() {
        return Ok(());
    }
    let old: Option<String> = conn
        .prepare_cached("SELECT tables FROM __lm_withheld WHERE actor = ?1 AND version = ?2")?
        .query_row((actor as i64, version as i64), |r| r.get(0))
        .optional()?;
    let mut all: BTreeSet<String> = old
        .as_deref()
        .map(split)
        .unwrap_or_default()
        .into_iter()
        .collect();
    let before = all.len();
    all.extend(tables.iter().cloned());
    if old.is_some() && all.len() == before {
        return Ok(());
    }
    let text = all.into_iter().collect::<Vec<_>>().join("\u{1f}");
    conn.prepare_cached(
        "INSERT INTO __lm_withheld(actor, version, tables) VALUES (?1, ?2, ?3) \
         ON CONFLICT(actor, version) DO UPDATE SET tables = ?3",
    )?
    .execute((actor as i64, version as i64, text))?;
    Ok(())
}

impl Store {
    /// Which regions each pinned table may live in (from the schema).
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// What this node may hold.
    pub fn entitlement(&self) -> &Entitlement {
        &self.entitlement
    }

    /// Whether this node may hold rows of `table`.
    pub fn may_hold(&self, table: &str) -> bool {
        self.placement.may_hold(&self.entitlement, table)
    }

    /// Sets what this node may hold: its region (certified) and, for a
    /// partial replica, the tables it carries. Refused, changing nothing,
    /// when the file already holds rows of a table the new entitlement
    /// excludes (a node moved to another region, a partial replica dropping
    /// a table): those rows must not stay on this node. Versions held
    /// without tables this node may now hold are forgotten, so that
    /// anti-entropy fetches them again whole.
    pub fn set_entitlement(&mut self, ent: Entitlement) -> Result<EntitlementReport> {
        if let Some(carried) = &ent.carried {
            for t in carried {
                if !self.tables_ci.contains_key(t) {
                    return Err(StorageError::UnknownTable(t.clone()));
                }
            }
        }
        let carried = ent.carried.as_ref().map(|c| {
            c.iter()
                .map(|t| t.to_ascii_lowercase())
                .collect::<BTreeSet<_>>()
        });
        let ent = Entitlement {
            region: ent.region,
            carried,
        };
        for name in self.tables.keys() {
            if self.placement.may_hold(&ent, name) {
                continue;
            }
            let t = &self.tables[name];
            let rows: bool = self.conn.query_row(
                &format!(
                    "SELECT EXISTS(SELECT 1 FROM {}) OR EXISTS(SELECT 1 FROM {})",
                    q(name),
                    t.clk
                ),
                [],
                |r| r.get(0),
            )?;
            if rows {
                return Err(StorageError::Placement(format!(
                    "this file holds rows of {}; start the node with a fresh file (or in a \
                     region the table is placed in)",
                    not_here(&self.placement, &ent, name)
                )));
            }
        }
        self.entitlement = ent;
        self.reconcile_placement()
    }

    /// Installs the guard triggers for the current placement and
    /// entitlement, and forgets versions held without tables this node may
    /// now hold (after a widening).
    pub(crate) fn reconcile_placement(&mut self) -> Result<EntitlementReport> {
        let mut report = EntitlementReport::default();
        let tx = self.conn.unchecked_transaction()?;
        let old: Vec<String> = tx
            .prepare("SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE '\\_\\_lm\\_guard\\_%' ESCAPE '\\'")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for t in old {
            tx.execute_batch(&format!("DROP TRIGGER IF EXISTS {}", q(&t)))?;
        }
        let mut names: Vec<&String> = self.tables.keys().collect();
        names.sort();
        for (i, name) in names.into_iter().enumerate() {
            if self.placement.may_hold(&self.entitlement, name) {
                continue;
            }
            let msg = format!(
                "litemesh placement: {}",
                not_here(&self.placement, &self.entitlement, name)
            )
            .replace('\'', "''");
            for (op, what) in [("i", "INSERT"), ("u", "UPDATE"), ("d", "DELETE")] {
                tx.execute_batch(&format!(
                    "CREATE TRIGGER {} BEFORE {what} ON {} BEGIN SELECT RAISE(ABORT, '{msg}'); END",
                    q(&format!("__lm_guard_{i}_{op}")),
                    q(name)
                ))?;
            }
        }
        // What this node may no longer hold is erased from the disk, not
        // only unlinked (freed pages are overwritten).
        tx.execute_batch("PRAGMA secure_delete = ON")?;
        // Buffered chunks and quarantined versions kept from before (a node
        // moved to another region, a partial replica dropping a table):
        // their rows of tables it may not hold go, the versions are marked
        // as held without them.
        let buffered: Vec<(i64, i64, Option<i64>, Vec<u8>)> = tx
            .prepare("SELECT actor, version, start, rows FROM __lm_partial")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let quarantined: Vec<(i64, i64, Option<i64>, Vec<u8>)> = tx
            .prepare("SELECT actor, version, NULL, rows FROM __lm_quarantine")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (a, v, start, blob) in buffered.into_iter().chain(quarantined) {
            let Ok(changes) = rmp_serde::from_slice::<Vec<litemesh_proto::RowChange>>(&blob) else {
                continue;
            };
            let (keep, gone): (Vec<_>, Vec<_>) = changes
                .into_iter()
                .partition(|r| self.placement.may_hold(&self.entitlement, &r.table));
            if gone.is_empty() {
                continue;
            }
            let blob = rmp_serde::to_vec(&keep).map_err(|e| StorageError::Decode(e.to_string()))?;
            match start {
                Some(s) => tx.execute(
                    "UPDATE __lm_partial SET rows = ?4 WHERE actor = ?1 AND version = ?2 AND start = ?3",
                    (a, v, s, blob),
                )?,
                None => tx.execute(
                    "UPDATE __lm_quarantine SET rows = ?3 WHERE actor = ?1 AND version = ?2",
                    (a, v, blob),
                )?,
            };
            let tables: BTreeSet<String> = gone.into_iter().map(|r| r.table).collect();
            add_withheld(&tx, a as u64, v as u64, &tables)?;
        }
        // Parked rows (for tables this node did not know when they came) of
        // tables it may not hold: dropped, their versions marked as held
        // without them.
        let parked: Vec<(i64, i64, i64, Vec<u8>)> = tx
            .prepare("SELECT actor, version, seq, change FROM __lm_parked")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (a, v, seq, blob) in parked {
            let Ok(rc) = rmp_serde::from_slice::<litemesh_proto::RowChange>(&blob) else {
                continue;
            };
            if self.placement.may_hold(&self.entitlement, &rc.table) {
                continue;
            }
            tx.execute(
                "DELETE FROM __lm_parked WHERE actor = ?1 AND version = ?2 AND seq = ?3",
                (a, v, seq),
            )?;
            add_withheld(&tx, a as u64, v as u64, &BTreeSet::from([rc.table]))?;
        }
        // Versions held without a table this node may now hold.
        let rows: Vec<(i64, i64, String)> = tx
            .prepare("SELECT actor, version, tables FROM __lm_withheld")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (a, v, tables) in rows {
            if split(&tables)
                .iter()
                .any(|t| self.placement.may_hold(&self.entitlement, t))
            {
                crate::store::remove_have(&tx, a as u64, v as u64)?;
                tx.execute(
                    "DELETE FROM __lm_withheld WHERE actor = ?1 AND version = ?2",
                    (a, v),
                )?;
                report.versions_refetched += 1;
            }
        }
        tx.commit()?;
        self.conn.execute_batch("PRAGMA secure_delete = OFF")?;
        self.guard
            .set_placement(self.placement.clone(), self.entitlement.clone());
        if report.versions_refetched > 0 {
            tracing::info!(
                versions = report.versions_refetched,
                "placement widened: versions held without tables this node may now hold \
                 will be fetched again"
            );
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_are_read_from_comments_only() {
        let sql =
            "CREATE TABLE t ( -- litemesh: regions = eu-west, eu-central\n id TEXT PRIMARY KEY)";
        let r = parse_directive("t", sql).unwrap().unwrap();
        assert_eq!(r.into_iter().collect::<Vec<_>>(), ["eu-central", "eu-west"]);
        let block = "CREATE TABLE t /* LiteMesh: Regions=us */ (id TEXT PRIMARY KEY)";
        assert_eq!(parse_directive("t", block).unwrap().unwrap().len(), 1);
        let doc = "CREATE TABLE t /** litemesh: regions = us */ (id TEXT PRIMARY KEY)";
        assert_eq!(parse_directive("t", doc).unwrap().unwrap().len(), 1);
        let other = "CREATE TABLE t (id TEXT PRIMARY KEY) -- replicated by litemesh";
        assert_eq!(parse_directive("t", other).unwrap(), None);
        let in_string =
            "CREATE TABLE t (id TEXT PRIMARY KEY, v TEXT DEFAULT '-- litemesh: regions = eu')";
        assert_eq!(parse_directive("t", in_string).unwrap(), None);
        let plain = "CREATE TABLE t (id TEXT PRIMARY KEY) -- just a table";
        assert_eq!(parse_directive("t", plain).unwrap(), None);
    }

    #[test]
    fn a_directive_after_the_closing_parenthesis_counts() {
        let schema = "CREATE TABLE a (id TEXT PRIMARY KEY); \n\
                      CREATE TABLE \"B;b\" (id TEXT PRIMARY KEY, v TEXT DEFAULT ';') -- litemesh: regions = eu\n\
                      ;CREATE TABLE c (id TEXT PRIMARY KEY) /* litemesh: regions = us */";
        let d = directives(schema).unwrap();
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d["b;b"].contains("eu"));
        assert!(d["c"].contains("us"));
        // Above the statement it places, with other comments around.
        let above = "-- users of the EU\n-- litemesh: regions = eu\nCREATE /* x */ TABLE a (id TEXT PRIMARY KEY);";
        assert!(directives(above).unwrap()["a"].contains("eu"));
        assert_eq!(
            crate::lex::without_comments("CREATE /* x */ TABLE a -- y\n(id)")
                .split_whitespace()
                .collect::<Vec<_>>(),
            ["CREATE", "TABLE", "a", "(id)"]
        );
        // After the `;`, it belongs to no CREATE TABLE.
        assert!(
            directives("CREATE TABLE a (id TEXT PRIMARY KEY); -- litemesh: regions = eu").is_err()
        );
        assert!(
            directives("CREATE TABLE a (id TEXT PRIMARY KEY);\nCREATE INDEX i ON a(id) -- litemesh: regions = eu")
                .is_err()
        );
    }

    #[test]
    fn a_mistyped_directive_is_an_error() {
        for sql in [
            "CREATE TABLE t (id TEXT PRIMARY KEY) -- litemesh : regions = eu",
            "CREATE TABLE t (id TEXT PRIMARY KEY) -- litemesh regions = eu",
            "CREATE TABLE t (id TEXT PRIMARY KEY) -- placement: litemesh: regions = eu",
            "CREATE TABLE t (id TEXT PRIMARY KEY) -- LiteMesh-Region: eu",
            "CREATE TABLE t (id TEXT PRIMARY KEY) -- litemesh: region = eu",
            "CREATE TABLE t (id TEXT PRIMARY KEY) -- litemesh: regions eu",
            "CREATE TABLE t (id TEXT PRIMARY KEY) -- litemesh: regions =",
            "CREATE TABLE t (id TEXT PRIMARY KEY) -- litemesh: regions = e'u",
            "CREATE TABLE t /* litemesh: regions = a */ (id TEXT PRIMARY KEY) -- litemesh: regions = b",
        ] {
            assert!(parse_directive("t", sql).is_err(), "{sql}");
        }
    }
}
