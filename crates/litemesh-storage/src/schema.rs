//! Replicated schema: validation of `CREATE TABLE` / `CREATE INDEX` statements,
//! additive migrations, and the change-capture triggers.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, Transaction};

use crate::commute::ColKind;
use crate::error::{Result, StorageError};

/// Quotes an SQL identifier.
pub(crate) fn q(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// What applying a schema did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchemaReport {
    /// Tables created.
    pub created_tables: Vec<String>,
    /// Columns added, as (table, column).
    pub added_columns: Vec<(String, String)>,
    /// Indexes created.
    pub created_indexes: Vec<String>,
    /// Warnings (e.g. rowid-alias keys that may collide across nodes).
    pub warnings: Vec<String>,
}

impl SchemaReport {
    /// True when the schema changed nothing.
    pub fn is_unchanged(&self) -> bool {
        self.created_tables.is_empty()
            && self.added_columns.is_empty()
            && self.created_indexes.is_empty()
    }
}

/// A replicated table as the engine knows it (mirrors `__lm_tables` / `__lm_columns`).
#[derive(Debug, Clone)]
pub(crate) struct TableMeta {
    pub id: i64,
    pub name: String,
    /// Primary-key columns in key order.
    pub pk: Vec<String>,
    /// Non-key columns by clock index.
    pub cols: Vec<String>,
    pub col_idx: HashMap<String, u32>,
    /// Lower-cased column names to their index (SQLite names are case-insensitive).
    pub col_idx_ci: HashMap<String, u32>,
    /// How each non-key column merges, by clock index.
    pub kinds: Vec<ColKind>,
    /// Whether any column is commutative (counter, max or min).
    pub commutative: bool,
    /// Quoted name of the clock table.
    pub clk: String,
    /// Prepared-statement texts used for every merged or extracted row.
    pub sql: std::sync::Arc<TableSql>,
}

impl TableMeta {
    /// A non-key column's index, whatever the case of its spelling.
    pub(crate) fn column(&self, name: &str) -> Option<u32> {
        self.col_idx
            .get(name)
            .or_else(|| self.col_idx_ci.get(&name.to_ascii_lowercase()))
            .copied()
    }
}

/// SQL texts of one table, built once when the table is loaded.
#[derive(Debug)]
pub(crate) struct TableSql {
    /// `SELECT clock FROM clk WHERE pk = ?1..`
    pub load_clock: String,
    /// `INSERT OR REPLACE INTO clk(pk.., clock..) VALUES (?..)`
    pub store_clock: String,
    /// `UPDATE clk SET __clk = ?n+1 WHERE pk = ?1..` (a row's clock
    /// rewritten in place, cheaper than a replace's delete and insert)
    pub update_clock: String,
    /// `DELETE FROM t WHERE pk = ?1..`
    pub delete_row: String,
    /// `DELETE FROM clk WHERE pk = ?1..` (a collected tombstone)
    pub delete_clock: String,
    /// `SELECT cols.. FROM t WHERE pk = ?1..`
    pub select_cols: String,
    /// `INSERT OR REPLACE INTO t(pk.., cols..) VALUES (?..)`
    pub replace_row: String,
    /// Per column: `UPDATE t SET col = ?1 WHERE pk = ?2..`
    pub update_col: Vec<String>,
}

impl TableSql {
    fn new(name: &str, clk: &str, pk: &[String], cols: &[String]) -> TableSql {
        let w = |offset: usize| {
            pk.iter()
                .enumerate()
                .map(|(i, p)| format!("{} = ?{}", q(p), i + 1 + offset))
                .collect::<Vec<_>>()
                .join(" AND ")
        };
        let params = |n: usize| {
            (1..=n)
                .map(|i| format!("?{i}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let names = |c: &[String]| c.iter().map(|c| q(c)).collect::<Vec<_>>().join(", ");
        let all: Vec<String> = pk.iter().chain(cols).cloned().collect();
        let t = q(name);
        TableSql {
            load_clock: format!("SELECT __clk FROM {clk} WHERE {}", w(0)),
            store_clock: format!(
                "INSERT OR REPLACE INTO {clk}({}, __clk) VALUES ({})",
                names(pk),
                params(pk.len() + 1)
            ),
            update_clock: format!("UPDATE {clk} SET __clk = ?{} WHERE {}", pk.len() + 1, w(0)),
            delete_row: format!("DELETE FROM {t} WHERE {}", w(0)),
            delete_clock: format!("DELETE FROM {clk} WHERE {}", w(0)),
            select_cols: if cols.is_empty() {
                format!("SELECT 1 FROM {t} WHERE {}", w(0))
            } else {
                format!("SELECT {} FROM {t} WHERE {}", names(cols), w(0))
            },
            replace_row: format!(
                "INSERT OR REPLACE INTO {t}({}) VALUES ({})",
                names(&all),
                params(all.len())
            ),
            update_col: cols
                .iter()
                .map(|c| format!("UPDATE {t} SET {} = ?1 WHERE {}", q(c), w(1)))
                .collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct ColInfo {
    name: String,
    decl_type: String,
    notnull: bool,
    dflt: Option<String>,
    pk: i64,
    hidden: i64,
}

/// An index as declared: (name, table, SQL).
type DeclaredIndex = (String, String, String);

#[derive(Debug, Clone)]
struct DeclaredTable {
    name: String,
    sql: String,
    cols: Vec<ColInfo>,
    /// The regions its placement directive names (`None`: everywhere).
    regions: Option<std::collections::BTreeSet<String>>,
    /// Commutative columns, by exact column name.
    kinds: HashMap<String, ColKind>,
}

impl DeclaredTable {
    /// Whether column `name` (any case) is a counter.
    fn is_counter(&self, name: &str) -> bool {
        self.kinds
            .iter()
            .any(|(c, k)| c.eq_ignore_ascii_case(name) && matches!(k, ColKind::Counter { .. }))
    }

    fn pk(&self) -> Vec<String> {
        let mut pk: Vec<_> = self.cols.iter().filter(|c| c.pk > 0).collect();
        pk.sort_by_key(|c| c.pk);
        pk.into_iter().map(|c| c.name.clone()).collect()
    }
}

fn table_info(conn: &Connection, table: &str) -> Result<Vec<ColInfo>> {
    let mut stmt = conn.prepare(&format!("PRAGMA table_xinfo({})", q(table)))?;
    let cols = stmt
        .query_map([], |r| {
            Ok(ColInfo {
                name: r.get(1)?,
                decl_type: r.get::<_, Option<String>>(2)?.unwrap_or_default(),
                notnull: r.get::<_, i64>(3)? != 0,
                dflt: r.get(4)?,
                pk: r.get(5)?,
                hidden: r.get(6)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(cols)
}

fn is_reserved(name: &str) -> bool {
    let l = name.to_ascii_lowercase();
    l.starts_with("__lm_") || l.starts_with("sqlite_")
}

/// Parses the schema SQL in a scratch in-memory database and validates it.
fn declare(
    sql: &str,
    report: &mut SchemaReport,
) -> Result<(Vec<DeclaredTable>, Vec<DeclaredIndex>)> {
    let placed = crate::placement::table_directives(sql)?;
    let scratch = Connection::open_in_memory()?;
    use rusqlite::fallible_iterator::FallibleIterator;
    let mut batch = rusqlite::Batch::new(&scratch, sql);
    while let Some(mut stmt) = batch
        .next()
        .map_err(|e| StorageError::SchemaSql(e.to_string()))?
    {
        let text = stmt.expanded_sql().unwrap_or_default();
        // Comments (a placement directive, documentation) are not words.
        let words: Vec<String> = crate::lex::without_comments(&text)
            .split_whitespace()
            .take(3)
            .map(|w| w.to_ascii_uppercase())
            .collect();
        let ok = matches!(
            words
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .as_slice(),
            ["CREATE", "TABLE", ..] | ["CREATE", "INDEX", ..] | ["CREATE", "UNIQUE", "INDEX"]
        );
        if !ok {
            return Err(StorageError::SchemaSql(format!(
                "only CREATE TABLE and CREATE INDEX statements are allowed, got: {}",
                text.chars().take(80).collect::<String>()
            )));
        }
        stmt.raw_execute()
            .map_err(|e| StorageError::SchemaSql(e.to_string()))?;
    }

    let mut tables = Vec::new();
    let rows: Vec<(String, String)> = scratch
        .prepare("SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY rowid")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (name, sql) in rows {
        if is_reserved(&name) {
            return Err(StorageError::ReservedName(name));
        }
        let cols = table_info(&scratch, &name)?;
        let d = placed
            .get(&name.to_ascii_lowercase())
            .cloned()
            .unwrap_or_default();
        let kinds = declared_kinds(&scratch, &name, &cols, &d.kinds)?;
        let t = DeclaredTable {
            name: name.clone(),
            sql: sql.clone(),
            cols,
            regions: d.regions,
            kinds,
        };
        let pk = t.pk();
        if pk.is_empty() {
            return Err(StorageError::NoPrimaryKey { table: name });
        }
        if sql.to_ascii_uppercase().contains("AUTOINCREMENT") {
            return Err(StorageError::Autoincrement { table: name });
        }
        let without_rowid = sql
            .to_ascii_uppercase()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .contains("WITHOUT ROWID");
        if pk.len() == 1 && !without_rowid {
            let c = t.cols.iter().find(|c| c.name == pk[0]).expect("pk column");
            if c.decl_type.eq_ignore_ascii_case("INTEGER") {
                let w = format!(
                    "table {name:?}: INTEGER PRIMARY KEY {:?} is SQLite's rowid; rows inserted on different \
                     nodes with automatically chosen ids will collide and overwrite each other — \
                     prefer TEXT keys holding UUIDs",
                    c.name
                );
                tracing::warn!("{w}");
                report.warnings.push(w);
            }
        }
        for c in &t.cols {
            if c.hidden != 0 {
                return Err(StorageError::Unsupported {
                    table: name,
                    reason: format!("generated column {:?} is not supported", c.name),
                });
            }
            if c.pk == 0 && c.notnull && c.dflt.is_none() {
                return Err(StorageError::Unsupported {
                    table: name,
                    reason: format!(
                        "column {:?} is NOT NULL without a DEFAULT; a row can arrive in parts from \
                         several writers, so NOT NULL columns need a default",
                        c.name
                    ),
                });
            }
        }
        // Unique constraints other than the primary key cannot be honoured by a merge.
        if let Some((idx, _)) = scratch
            .prepare(&format!("PRAGMA index_list({})", q(&name)))?
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(1)?,
                    r.get::<_, bool>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?
            .into_iter()
            .find(|(_, unique, origin)| *unique && origin != "pk")
            .map(|(n, _, o)| (n, o))
        {
            return Err(StorageError::Unsupported {
                table: name,
                reason: format!(
                    "unique index or constraint {idx:?}: two nodes can write rows that are each valid \
                     alone but conflict once merged; only the primary key may be unique"
                ),
            });
        }
        check_convergent(&scratch, &t, report)?;
        tables.push(t);
    }
    let indexes: Vec<(String, String, String)> = scratch
        .prepare("SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL ORDER BY rowid")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (name, tbl, sql) in &indexes {
        if is_reserved(name) {
            return Err(StorageError::ReservedName(name.clone()));
        }
        if let Some(t) = tables.iter().find(|t| t.name.eq_ignore_ascii_case(tbl)) {
            check_index(t, name, sql)?;
        }
    }
    Ok((tables, indexes))
}

/// A token of an index definition, enough to see which columns its
/// expressions read and whether they call functions.
#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Open,
    Close,
    Comma,
    Other,
}

fn tokenize(sql: &str) -> Vec<Tok> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'\'' => {
                i += 1;
                while i < b.len() {
                    if b[i] == b'\'' && b.get(i + 1) == Some(&b'\'') {
                        i += 2;
                    } else if b[i] == b'\'' {
                        break;
                    } else {
                        i += 1;
                    }
                }
                i += 1;
                out.push(Tok::Other);
            }
            b'"' | b'`' | b'[' => {
                let close = if c == b'[' { b']' } else { c };
                let start = i + 1;
                i += 1;
                while i < b.len() && b[i] != close {
                    i += 1;
                }
                out.push(Tok::Ident(sql[start..i.min(b.len())].to_string()));
                i += 1;
            }
            b'(' => {
                out.push(Tok::Open);
                i += 1;
            }
            b')' => {
                out.push(Tok::Close);
                i += 1;
            }
            b',' => {
                out.push(Tok::Comma);
                i += 1;
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
                let start = i;
                while i < b.len()
                    && (b[i].is_ascii_alphanumeric()
                        || b[i] == b'_'
                        || b[i] == b'$'
                        || b[i] >= 0x80)
                {
                    i += 1;
                }
                out.push(Tok::Ident(sql[start..i].to_string()));
            }
            c if c.is_ascii_whitespace() => i += 1,
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
            }
            _ => {
                out.push(Tok::Other);
                i += 1;
            }
        }
    }
    out
}

/// Words that may precede `(` without being a function call.
const NOT_FUNCTIONS: &[&str] = &[
    "IN", "EXISTS", "CAST", "AND", "OR", "NOT", "WHEN", "THEN", "ELSE", "CASE", "END", "IS", "ON",
    "WHERE", "BETWEEN", "COLLATE", "ASC", "DESC", "SELECT",
];

/// An index whose entry for a row depends on several non-key columns
/// through a function (in one indexed expression, or through the partial
/// index's WHERE clause) can fail on a row that two concurrent writes made
/// together, each valid on its own node: `CASE WHEN parse THEN
/// json_extract(body, '$.x') END`. Such an index is refused; plain columns,
/// expressions of one column, and multi-column expressions without
/// functions are fine.
fn check_index(t: &DeclaredTable, index: &str, sql: &str) -> Result<()> {
    let toks = tokenize(sql);
    let non_key: Vec<String> = t
        .cols
        .iter()
        .filter(|c| c.pk == 0)
        .map(|c| c.name.to_ascii_lowercase())
        .collect();
    // Skip to the column list: `ON <table> (`.
    let Some(on) = toks
        .iter()
        .position(|x| matches!(x, Tok::Ident(w) if w.eq_ignore_ascii_case("ON")))
    else {
        return Ok(());
    };
    let Some(open) = toks[on..]
        .iter()
        .position(|x| *x == Tok::Open)
        .map(|p| p + on)
    else {
        return Ok(());
    };
    let mut exprs: Vec<Vec<Tok>> = vec![Vec::new()];
    let mut depth = 1;
    let mut i = open + 1;
    while i < toks.len() && depth > 0 {
        match &toks[i] {
            Tok::Open => depth += 1,
            Tok::Close => depth -= 1,
            Tok::Comma if depth == 1 => {
                exprs.push(Vec::new());
                i += 1;
                continue;
            }
            _ => {}
        }
        if depth > 0 {
            exprs.last_mut().expect("one").push(toks[i].clone());
        }
        i += 1;
    }
    let rest = &toks[i.min(toks.len())..];
    let where_part: Vec<Tok> = match rest
        .iter()
        .position(|x| matches!(x, Tok::Ident(w) if w.eq_ignore_ascii_case("WHERE")))
    {
        Some(w) => rest[w + 1..].to_vec(),
        None => Vec::new(),
    };
    let analyse = |part: &[Tok]| -> (std::collections::BTreeSet<String>, bool) {
        let mut cols = std::collections::BTreeSet::new();
        let mut calls = false;
        for (k, x) in part.iter().enumerate() {
            if let Tok::Ident(w) = x {
                let l = w.to_ascii_lowercase();
                let call = part.get(k + 1) == Some(&Tok::Open)
                    && !NOT_FUNCTIONS.iter().any(|n| n.eq_ignore_ascii_case(w));
                if call || w.eq_ignore_ascii_case("ESCAPE") {
                    calls = true;
                } else if non_key.contains(&l) {
                    cols.insert(l);
                }
            }
        }
        (cols, calls)
    };
    let (where_cols, where_calls) = analyse(&where_part);
    let parts: Vec<&Vec<Tok>> = if exprs.iter().all(Vec::is_empty) {
        Vec::new()
    } else {
        exprs.iter().collect()
    };
    let mut checks: Vec<(std::collections::BTreeSet<String>, bool)> = parts
        .iter()
        .map(|e| {
            let (mut cols, calls) = analyse(e);
            cols.extend(where_cols.iter().cloned());
            (cols, calls || where_calls)
        })
        .collect();
    checks.push((where_cols.clone(), where_calls));
    for (cols, calls) in checks {
        if let Some(c) = cols.iter().find(|c| t.is_counter(c)).filter(|_| calls) {
            return Err(StorageError::Unsupported {
                table: t.name.clone(),
                reason: format!(
                    "index {index:?} computes its entries from counter {c:?} through a \
                     function: a counter's value is a sum no node wrote, which the function may \
                     not take, and the merge would fail on some nodes; index the counter itself"
                ),
            });
        }
        if cols.len() >= 2 && calls {
            return Err(StorageError::Unsupported {
                table: t.name.clone(),
                reason: format!(
                    "index {index:?} computes its entries from several columns ({}) through a \
                     function: two concurrent writes, each valid on its node, can merge into a \
                     row the function cannot take, and the merge would fail on some nodes; index \
                     the columns themselves, or an expression of one column, or store the \
                     computed value in a column written in one statement",
                    cols.into_iter().collect::<Vec<_>>().join(", ")
                ),
            });
        }
    }
    Ok(())
}

/// Most non-key columns a replicated table may have (every column is an
/// argument of a capture function — twice on updates, its new and old value —
/// and SQLite bounds those to 1000).
const MAX_COLUMNS: usize = 480;

/// Refuses table features a merge could not apply, or could apply differently
/// on different nodes; warns about those whose meaning changes under
/// replication.
fn check_convergent(
    scratch: &Connection,
    t: &DeclaredTable,
    report: &mut SchemaReport,
) -> Result<()> {
    let name = &t.name;
    let unsupported = |reason: String| StorageError::Unsupported {
        table: name.clone(),
        reason,
    };
    if t.cols.len() > MAX_COLUMNS {
        return Err(unsupported(format!(
            "{} columns; a replicated table may have at most {MAX_COLUMNS}",
            t.cols.len()
        )));
    }
    for c in &t.cols {
        let l = c.name.to_ascii_lowercase();
        if l == "__clk" || l.starts_with("__lm_") {
            return Err(unsupported(format!(
                "column name {:?} is reserved by litemesh (__clk, __lm_*)",
                c.name
            )));
        }
        let default_null = c.dflt.as_deref().is_some_and(|d| {
            d.trim_matches(|ch: char| ch == '(' || ch == ')' || ch.is_whitespace())
                .eq_ignore_ascii_case("NULL")
        });
        if c.pk == 0 && c.notnull && default_null {
            return Err(unsupported(format!(
                "column {:?} is NOT NULL with DEFAULT NULL; a row can arrive in parts from \
                 several writers, so NOT NULL columns need a non-NULL default",
                c.name
            )));
        }
    }
    // Key collation: the table and its clock table must agree on which keys
    // are equal, and every node must store the same spelling of a key. A
    // non-BINARY collation (NOCASE, RTRIM, ...) makes 'Bob' and 'bob' one row
    // that keeps whichever spelling each node saw first.
    let key_indexes: Vec<String> = scratch
        .prepare(&format!("PRAGMA index_list({})", q(name)))?
        .query_map([], |r| Ok((r.get::<_, String>(1)?, r.get::<_, String>(3)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?
        .into_iter()
        .filter(|(_, origin)| origin == "pk")
        .map(|(n, _)| n)
        .collect();
    for idx in key_indexes {
        let cols: Vec<(Option<String>, String, bool)> = scratch
            .prepare(&format!("PRAGMA index_xinfo({})", q(&idx)))?
            .query_map([], |r| {
                Ok((
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, Option<String>>(4)?.unwrap_or_default(),
                    r.get::<_, bool>(5)?,
                ))
            })?
            .collect::<rusqlite::Result<_>>()?;
        for (col, coll, key) in cols {
            if key && !coll.eq_ignore_ascii_case("BINARY") {
                let col = col.unwrap_or_default();
                return Err(unsupported(format!(
                    "primary key column {col:?} uses COLLATE {coll}: keys equal under {coll} but \
                     spelled differently (e.g. 'Bob' and 'bob') written on two nodes would become \
                     one row whose spelling differs between nodes; keep the default BINARY \
                     collation and store the key normalized (e.g. lower({col}))"
                )));
            }
        }
    }
    // Foreign keys: merges apply rows in any order and never run actions, so
    // an action (ON DELETE CASCADE, SET NULL, SET DEFAULT) would change rows
    // on the writer only.
    let fks: Vec<(String, String, String)> = scratch
        .prepare(&format!("PRAGMA foreign_key_list({})", q(name)))?
        .query_map([], |r| Ok((r.get(2)?, r.get(5)?, r.get(6)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (parent, on_update, on_delete) in &fks {
        for (when, action) in [("UPDATE", on_update), ("DELETE", on_delete)] {
            let a = action.to_ascii_uppercase();
            if a != "NO ACTION" && a != "RESTRICT" {
                return Err(unsupported(format!(
                    "foreign key to {parent:?} has ON {when} {a}: merges apply rows in any order \
                     and cannot run actions on every node alike; drop the action and change \
                     the dependent rows in the same transaction instead"
                )));
            }
        }
    }
    if !fks.is_empty() {
        let w = format!(
            "table {name:?}: foreign keys are not enforced (rows from different writers arrive in \
             any order); the REFERENCES clauses are kept as documentation"
        );
        tracing::warn!("{w}");
        report.warnings.push(w);
    }
    check_checks(t)?;
    Ok(())
}

/// A CHECK constraint over several non-key columns can refuse a row that
/// two concurrent writes to different columns make together, each valid on
/// its own node: refused. One over a single column (and the key) holds on
/// every merged row, since each cell's value passed it where it was written.
fn check_checks(t: &DeclaredTable) -> Result<()> {
    let toks = tokenize(&t.sql);
    let non_key: Vec<String> = t
        .cols
        .iter()
        .filter(|c| c.pk == 0)
        .map(|c| c.name.to_ascii_lowercase())
        .collect();
    let mut i = 0;
    while i < toks.len() {
        let is_check = matches!(&toks[i], Tok::Ident(w) if w.eq_ignore_ascii_case("CHECK"))
            && toks.get(i + 1) == Some(&Tok::Open);
        if !is_check {
            i += 1;
            continue;
        }
        let mut depth = 0;
        let mut cols = std::collections::BTreeSet::new();
        let mut j = i + 1;
        while j < toks.len() {
            match &toks[j] {
                Tok::Open => depth += 1,
                Tok::Close => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                Tok::Ident(w) if non_key.contains(&w.to_ascii_lowercase()) => {
                    cols.insert(w.to_ascii_lowercase());
                }
                _ => {}
            }
            j += 1;
        }
        if let Some(c) = cols.iter().find(|c| t.is_counter(c)) {
            return Err(StorageError::Unsupported {
                table: t.name.clone(),
                reason: format!(
                    "a CHECK constraint reads counter {c:?}: a counter is the sum of every \
                     node's contributions, each valid where it was made, and the sum can break \
                     the constraint (stock 1, two nodes take one each: -1); check the value in \
                     the application"
                ),
            });
        }
        if cols.len() >= 2 {
            return Err(StorageError::Unsupported {
                table: t.name.clone(),
                reason: format!(
                    "a CHECK constraint over several columns ({}): two concurrent writes to \
                     different columns, each valid on its node, can merge into a row it \
                     refuses; keep each CHECK to one column (and the key), and check \
                     combinations in the application",
                    cols.into_iter().collect::<Vec<_>>().join(", ")
                ),
            });
        }
        i = j + 1;
    }
    Ok(())
}

/// Loads the replicated tables from the registry.
pub(crate) fn load_tables(conn: &Connection) -> Result<HashMap<String, std::sync::Arc<TableMeta>>> {
    let mut out = HashMap::new();
    let mut stmt = conn.prepare("SELECT id, name, pk FROM __lm_tables")?;
    let rows: Vec<(i64, String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (id, name, pk) in rows {
        let pk: Vec<String> = pk.split('\u{1f}').map(str::to_owned).collect();
        let cols: Vec<String> = conn
            .prepare("SELECT name FROM __lm_columns WHERE tbl = ?1 ORDER BY idx")?
            .query_map([id], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let col_idx = cols
            .iter()
            .enumerate()
            .map(|(i, c)| (c.clone(), i as u32))
            .collect();
        let col_idx_ci = cols
            .iter()
            .enumerate()
            .map(|(i, c)| (c.to_ascii_lowercase(), i as u32))
            .collect();
        let clk = q(&format!("__lm_clk_{name}"));
        let sql = std::sync::Arc::new(TableSql::new(&name, &clk, &pk, &cols));
        let mut kinds = vec![ColKind::Plain; cols.len()];
        let declared: Vec<(i64, String, Option<i64>)> = conn
            .prepare_cached("SELECT idx, kind, base FROM __lm_kinds WHERE tbl = ?1")?
            .query_map([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (idx, kind, base) in declared {
            let k = match kind.as_str() {
                "counter" => ColKind::Counter {
                    base: base.unwrap_or(0),
                },
                "max" => ColKind::Max,
                "min" => ColKind::Min,
                other => {
                    return Err(StorageError::Corrupt(format!(
                        "unknown column kind {other:?} in table {name:?}"
                    )));
                }
            };
            let slot = usize::try_from(idx)
                .ok()
                .and_then(|i| kinds.get_mut(i))
                .ok_or_else(|| StorageError::Corrupt(format!("column kind of {name:?}")))?;
            *slot = k;
        }
        let commutative = kinds.iter().any(|k| *k != ColKind::Plain);
        out.insert(
            name.clone(),
            std::sync::Arc::new(TableMeta {
                id,
                sql,
                kinds,
                commutative,
                clk,
                name,
                pk,
                cols,
                col_idx,
                col_idx_ci,
            }),
        );
    }
    Ok(out)
}

/// Applies a schema: validates it, creates new tables and indexes, adds new
/// columns, and refuses anything destructive. Runs inside `tx`.
pub(crate) fn apply(tx: &Transaction<'_>, sql: &str) -> Result<SchemaReport> {
    let mut report = SchemaReport::default();
    let (declared, indexes) = declare(sql, &mut report)?;
    let known = load_tables(tx)?;
    for t in &declared {
        match known.get(&t.name) {
            None => create_table(tx, t, &mut report)?,
            Some(meta) => migrate_table(tx, t, meta, &mut report)?,
        }
        crate::placement::declare(
            tx,
            &t.name,
            t.regions.as_ref(),
            !known.contains_key(&t.name),
        )?;
    }
    for name in known.keys() {
        if !declared.iter().any(|t| &t.name == name) {
            return Err(StorageError::Destructive(format!(
                "replicated table {name:?} is missing from the schema; dropping replicated tables is not supported"
            )));
        }
    }
    for (name, tbl, sql) in indexes {
        let existing: Option<String> = tx
            .query_row(
                "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = ?1",
                [&name],
                |r| r.get(0),
            )
            .optional()?;
        match existing {
            None => {
                tx.execute_batch(&sql)?;
                report.created_indexes.push(name);
            }
            Some(old) if normalize(&old) == normalize(&sql) => {}
            Some(_) => {
                return Err(StorageError::Destructive(format!(
                    "index {name:?} on {tbl:?} already exists with a different definition"
                )));
            }
        }
    }
    Ok(report)
}

fn normalize(sql: &str) -> String {
    sql.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_ascii_lowercase()
}

fn create_table(tx: &Transaction<'_>, t: &DeclaredTable, report: &mut SchemaReport) -> Result<()> {
    let exists: bool = tx.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [&t.name],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if exists {
        return Err(StorageError::UnmanagedTable(t.name.clone()));
    }
    tx.execute_batch(&t.sql)?;
    let pk = t.pk();
    let pk_text = pk.join("\u{1f}");
    tx.execute(
        "INSERT INTO __lm_tables(name, pk, sql) VALUES (?1, ?2, ?3)",
        (&t.name, &pk_text, &t.sql),
    )?;
    let id = tx.last_insert_rowid();
    for (idx, c) in t.cols.iter().filter(|c| c.pk == 0).enumerate() {
        tx.execute(
            "INSERT INTO __lm_columns(tbl, idx, name) VALUES (?1, ?2, ?3)",
            (id, idx as i64, &c.name),
        )?;
        record_kind(tx, id, idx as i64, t.kinds.get(&c.name))?;
    }
    let pk_defs: Vec<String> = pk
        .iter()
        .map(|p| {
            let c = t.cols.iter().find(|c| &c.name == p).expect("pk column");
            format!("{} {}", q(p), c.decl_type)
        })
        .collect();
    // The clock table must see keys exactly as the table does: the same
    // declared types, and STRICT when the table is (an `ANY` key of a STRICT
    // table has no affinity; in a plain table it would have NUMERIC, and
    // '1' and 1 would be one clock for two rows).
    let strict: bool = tx
        .query_row(
            "SELECT strict FROM pragma_table_list WHERE schema = 'main' AND name = ?1",
            [&t.name],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(false);
    tx.execute_batch(&format!(
        "CREATE TABLE {clk} ({defs}, __clk BLOB NOT NULL, PRIMARY KEY ({pks})) WITHOUT ROWID{strict}",
        clk = q(&format!("__lm_clk_{}", t.name)),
        defs = pk_defs.join(", "),
        pks = pk.iter().map(|p| q(p)).collect::<Vec<_>>().join(", "),
        strict = if strict { ", STRICT" } else { "" },
    ))?;
    let meta = load_tables(tx)?
        .remove(&t.name)
        .ok_or_else(|| StorageError::Corrupt("table registry".into()))?;
    create_triggers(tx, &meta)?;
    report.created_tables.push(t.name.clone());
    Ok(())
}

fn migrate_table(
    tx: &Transaction<'_>,
    t: &DeclaredTable,
    meta: &TableMeta,
    report: &mut SchemaReport,
) -> Result<()> {
    let current = table_info(tx, &t.name)?;
    for c in &current {
        let Some(d) = t.cols.iter().find(|d| d.name == c.name) else {
            return Err(StorageError::Destructive(format!(
                "column {:?} of {:?} is missing from the schema; dropping columns is not supported",
                c.name, t.name
            )));
        };
        let same = d.decl_type.eq_ignore_ascii_case(&c.decl_type)
            && d.notnull == c.notnull
            && d.pk == c.pk
            && d.dflt == c.dflt;
        if !same {
            return Err(StorageError::Destructive(format!(
                "column {:?} of {:?} changed its type, key, NOT NULL or DEFAULT; only new columns can be added",
                c.name, t.name
            )));
        }
        if c.pk == 0 {
            let now = meta
                .column(&c.name)
                .map_or(ColKind::Plain, |i| meta.kinds[i as usize]);
            let wanted = t.kinds.get(&c.name).copied().unwrap_or(ColKind::Plain);
            if now.cell_kind() != wanted.cell_kind() {
                return Err(StorageError::Destructive(format!(
                    "column {:?} of {:?} is a {} column and the schema declares it {}: a \
                     column's merge rule cannot change (its replicas hold values merged by \
                     the old one); add a new column",
                    c.name,
                    t.name,
                    now.cell_kind().name(),
                    wanted.cell_kind().name()
                )));
            }
        }
    }
    let mut added = false;
    for d in &t.cols {
        if current.iter().any(|c| c.name == d.name) {
            continue;
        }
        if d.pk > 0 {
            return Err(StorageError::Destructive(format!(
                "new column {:?} of {:?} is part of the primary key; the key cannot change",
                d.name, t.name
            )));
        }
        let mut def = format!("{} {}", q(&d.name), d.decl_type);
        if d.notnull {
            def.push_str(" NOT NULL");
        }
        if let Some(dflt) = &d.dflt {
            def.push_str(&format!(" DEFAULT {dflt}"));
        }
        tx.execute_batch(&format!("ALTER TABLE {} ADD COLUMN {def}", q(&t.name)))?;
        let idx = meta.cols.len() as i64
            + report
                .added_columns
                .iter()
                .filter(|(tb, _)| tb == &t.name)
                .count() as i64;
        tx.execute(
            "INSERT INTO __lm_columns(tbl, idx, name) VALUES (?1, ?2, ?3)",
            (meta.id, idx, &d.name),
        )?;
        record_kind(tx, meta.id, idx, t.kinds.get(&d.name))?;
        report.added_columns.push((t.name.clone(), d.name.clone()));
        added = true;
    }
    if added {
        let meta = load_tables(tx)?
            .remove(&t.name)
            .ok_or_else(|| StorageError::Corrupt("table registry".into()))?;
        create_triggers(tx, &meta)?;
    }
    Ok(())
}

/// Records a commutative column in the registry (`__lm_kinds`).
fn record_kind(tx: &Transaction<'_>, tbl: i64, idx: i64, kind: Option<&ColKind>) -> Result<()> {
    let (name, base) = match kind {
        None | Some(ColKind::Plain) => return Ok(()),
        Some(ColKind::Counter { base }) => ("counter", Some(*base)),
        Some(ColKind::Max) => ("max", None),
        Some(ColKind::Min) => ("min", None),
    };
    tx.execute(
        "INSERT OR REPLACE INTO __lm_kinds(tbl, idx, kind, base) VALUES (?1, ?2, ?3, ?4)",
        (tbl, idx, name, base),
    )?;
    Ok(())
}

/// Checks the commutative columns a table's directives declare and returns
/// them by exact column name: columns of the table, not of its key; a
/// counter holds integers (INTEGER affinity) and starts at an integer
/// DEFAULT; no CHECK constraint reads a counter (a sum of contributions,
/// each valid where it was made, can break it: stock 1, two nodes take one
/// each).
fn declared_kinds(
    scratch: &Connection,
    table: &str,
    cols: &[ColInfo],
    declared: &[(String, litemesh_proto::CellKind)],
) -> Result<HashMap<String, ColKind>> {
    use litemesh_proto::CellKind;
    let bad = |why: String| StorageError::Unsupported {
        table: table.to_string(),
        reason: why,
    };
    let strict: bool = scratch
        .query_row(
            "SELECT strict FROM pragma_table_list WHERE schema = 'main' AND name = ?1",
            [table],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(false);
    let mut out = HashMap::new();
    for (name, kind) in declared {
        let Some(c) = cols.iter().find(|c| c.name.eq_ignore_ascii_case(name)) else {
            return Err(bad(format!(
                "`litemesh: {} = {name}` names no column of the table",
                kind.name()
            )));
        };
        if c.pk > 0 {
            return Err(bad(format!(
                "key column {:?} cannot be a {} (keys identify rows)",
                c.name,
                kind.name()
            )));
        }
        let k = match kind {
            CellKind::Counter => {
                let d = c.decl_type.to_ascii_uppercase();
                let integer = if strict {
                    d == "INT" || d == "INTEGER"
                } else {
                    d.contains("INT")
                };
                if !integer {
                    return Err(bad(format!(
                        "counter {:?} is declared {:?}: a counter holds integers — declare it \
                         INTEGER (REAL sums would differ in their last bits between nodes that \
                         add the same numbers in another order; count whole units such as \
                         cents instead)",
                        c.name, c.decl_type
                    )));
                }
                let base = c.dflt.as_deref().and_then(integer_literal).ok_or_else(|| {
                    bad(format!(
                        "counter {:?} needs an integer DEFAULT, the value it starts from \
                         (e.g. `{} INTEGER NOT NULL DEFAULT 0`)",
                        c.name, c.name
                    ))
                })?;
                ColKind::Counter { base }
            }
            CellKind::Max => ColKind::Max,
            CellKind::Min => ColKind::Min,
            CellKind::Plain => continue,
        };
        out.insert(c.name.clone(), k);
    }
    Ok(out)
}

/// An integer DEFAULT as `PRAGMA table_info` shows it: a literal, decimal
/// or hexadecimal, in parentheses and signed any number of times (`0`,
/// `-5`, `(+3)`, `0x10`, `(-(5))`). Only a literal: a counter's base must
/// be the same on every node, so `random()` and the like are not one.
fn integer_literal(text: &str) -> Option<i64> {
    let mut t = text.trim();
    let mut negative = false;
    loop {
        if let Some(inner) = t.strip_prefix('(').and_then(|x| x.strip_suffix(')')) {
            t = inner.trim();
        } else if let Some(rest) = t.strip_prefix('-') {
            negative = !negative;
            t = rest.trim();
        } else if let Some(rest) = t.strip_prefix('+') {
            t = rest.trim();
        } else {
            break;
        }
    }
    let magnitude: i128 = match t.get(..2) {
        Some(p) if p.eq_ignore_ascii_case("0x") => {
            // SQLite reads up to 16 hex digits as a 64-bit two's
            // complement integer.
            let digits = &t[2..];
            if digits.is_empty() || digits.len() > 16 {
                return None;
            }
            i128::from(u64::from_str_radix(digits, 16).ok()? as i64)
        }
        _ if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) => t.parse().ok()?,
        _ => return None,
    };
    i64::try_from(if negative { -magnitude } else { magnitude }).ok()
}

/// Key columns with no type affinity: untyped or BLOB (ANY in a STRICT
/// table).
fn ambiguous_keys(conn: &Connection, t: &TableMeta) -> Result<Vec<String>> {
    let strict: bool = conn
        .query_row(
            "SELECT strict FROM pragma_table_list WHERE schema = 'main' AND name = ?1",
            [&t.name],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(false);
    let cols = table_info(conn, &t.name)?;
    Ok(cols
        .into_iter()
        .filter(|c| c.pk > 0)
        .filter(|c| {
            let d = c.decl_type.to_ascii_uppercase();
            if strict {
                d == "ANY"
            } else {
                let typed = ["INT", "CHAR", "CLOB", "TEXT", "REAL", "FLOA", "DOUB"]
                    .iter()
                    .any(|k| d.contains(k));
                // Untyped or BLOB: no affinity. (Any other word: NUMERIC.)
                !typed && (d.is_empty() || d.contains("BLOB"))
            }
        })
        .map(|c| c.name)
        .collect())
}

/// Quotes an SQL string literal.
fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// (Re)creates the change-capture triggers of a table. They name the local
/// actor's index (read from `__lm_site`), so they are regenerated when it
/// changes.
pub(crate) fn create_triggers(conn: &Connection, t: &TableMeta) -> Result<()> {
    let local: i64 =
        conn.query_row("SELECT local FROM __lm_site WHERE id = 0", [], |r| r.get(0))?;
    let name = &t.name;
    let tq = q(name);
    let clk = &t.clk;
    let tid = t.id;
    let ncols = t.cols.len();
    let npk = t.pk.len();
    let tname = lit(name);
    let list = |prefix: &str, cols: &[String]| {
        cols.iter()
            .map(|c| format!("{prefix}{}", q(c)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let pk_cols = list("", &t.pk);
    let pk_new = list("NEW.", &t.pk);
    let pk_old = list("OLD.", &t.pk);
    let cells_new: String = t.cols.iter().map(|c| format!(", NEW.{}", q(c))).collect();
    // Whether a cell changed: by type and bytes (`__lm_differ`), not by the
    // column's collation or numeric equality ('abc' to 'ABC' under NOCASE, 1
    // to 1.0 are changes, and must replicate).
    let pairs = |cols: &[String]| {
        cols.iter()
            .map(|c| format!("NEW.{0}, OLD.{0}", q(c)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let match_on = |prefix: &str| {
        t.pk.iter()
            .map(|p| format!("{} = {prefix}{}", q(p), q(p)))
            .collect::<Vec<_>>()
            .join(" AND ")
    };
    let pk_same = format!("NOT __lm_differ({})", pairs(&t.pk));
    // Each row write: number it, check it (no NULL key, not larger than a
    // change may be), log it (buffered inside a store transaction, else
    // written at once as a one-entry chunk), update the row clock.
    let log = |pkvals: &str, write: bool, cells: &str| {
        let write = i32::from(write);
        format!(
            "SELECT __lm_seq();\n\
             INSERT INTO __lm_log(actor, version, seq, last, entries) \
             SELECT {local}, __lm_version(), __lm_cur_seq(), __lm_cur_seq(), __lm_entry({tid}, {pkvals}) \
             WHERE NOT __lm_buffered({tid}, {tname}, {npk}, {write}, {pkvals}{cells});\n"
        )
    };
    // A key inserted afresh starts a life above the table's floor: the
    // highest causal length of any tombstone collected in it (see
    // retention.rs), so it wins over a tombstone other nodes still hold.
    // Read only by tables that have one: the triggers are made again when
    // a table gets its first floor.
    let floored: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM __lm_floor WHERE name = ?1)",
        [name],
        |r| r.get(0),
    )?;
    let floor = if floored {
        format!("(SELECT cl FROM __lm_floor WHERE name = {tname})")
    } else {
        "NULL".to_string()
    };
    // Tables with commutative columns (commute.rs) call the `_k` variants
    // of the clock functions, which take each column's kind (and name, for
    // errors) and its value as the row holds it now — read from the table,
    // not NEW: a trigger of the application that fired first may have
    // changed the row since, and a counter must count that too.
    let kinds = lit(&t
        .kinds
        .iter()
        .map(|k| k.token())
        .collect::<Vec<_>>()
        .join(" "));
    let names = lit(&t.cols.join("\u{1f}"));
    let now = |prefix: &str, c: &String, k: &ColKind| {
        if *k == ColKind::Plain {
            "NULL".to_string()
        } else {
            format!(
                "(SELECT {} FROM {tq} WHERE {})",
                q(c),
                t.pk.iter()
                    .map(|p| format!("{} = {prefix}{}", q(p), q(p)))
                    .collect::<Vec<_>>()
                    .join(" AND ")
            )
        }
    };
    let now_new: String = t
        .cols
        .iter()
        .zip(&t.kinds)
        .map(|(c, k)| format!(", {}", now("NEW.", c, k)))
        .collect();
    let insert_fn = |clock: &str| {
        if t.commutative {
            format!(
                "__lm_clk_insert_k({clock}, {local}, __lm_version(), __lm_cur_seq(), {ncols}, {floor}, \
                 {tname}, {kinds}, {names}{now_new})"
            )
        } else {
            format!(
                "__lm_clk_insert({clock}, {local}, __lm_version(), __lm_cur_seq(), {ncols}, {floor})"
            )
        }
    };
    let insert_clock = |pkvals: &str| {
        format!(
            "INSERT INTO {clk}({pk_cols}, __clk) VALUES ({pkvals}, {}) \
             ON CONFLICT({pk_cols}) DO UPDATE SET __clk = {};\n",
            insert_fn("NULL"),
            insert_fn("__clk"),
        )
    };
    let delete_clock = |m: &str| {
        format!(
            "UPDATE {clk} SET __clk = __lm_clk_delete(__clk, {local}, __lm_version(), __lm_cur_seq()) WHERE {m};\n"
        )
    };
    // A key column without affinity (untyped or BLOB; ANY in a STRICT table)
    // stores 1 and 1.0 as two values that compare equal: one row, spelled
    // differently on different nodes. Such keys refuse integral REALs.
    let ambiguous = ambiguous_keys(conn, t)?;
    let key_check = |prefix: &str| {
        if ambiguous.is_empty() {
            return String::new();
        }
        let cond = ambiguous
            .iter()
            .map(|k| {
                format!(
                    "(typeof({prefix}{0}) = 'real' AND {prefix}{0} = CAST({prefix}{0} AS INTEGER))",
                    q(k)
                )
            })
            .collect::<Vec<_>>()
            .join(" OR ");
        format!(
            "SELECT RAISE(ABORT, {msg}) WHERE {cond};\n",
            msg = lit(&format!(
                "a key of replicated table {name:?} is a REAL with an integer value (such as 1.0): \
                 the key column has no type affinity, so it would equal the INTEGER key of the same \
                 value and the row could be spelled differently on different nodes; write the key \
                 as an integer"
            ))
        )
    };
    let trig = |kind: &str| q(&format!("__lm_{kind}_{name}"));
    let mut sql = String::new();
    for kind in ["ins", "upd", "updpk", "del"] {
        sql.push_str(&format!("DROP TRIGGER IF EXISTS {};\n", trig(kind)));
    }
    sql.push_str(&format!(
        "CREATE TRIGGER {} AFTER INSERT ON {tq} WHEN __lm_local() BEGIN\n{}{}{}END;\n",
        trig("ins"),
        key_check("NEW."),
        log(&pk_new, true, &cells_new),
        insert_clock(&pk_new),
    ));
    if ncols > 0 {
        // The changed cells are checked (UTF-8, size) by `__lm_clk_update`,
        // which compares each pair once; the key is unchanged.
        let cells = pairs(&t.cols);
        // The (now, old) pairs the clock function compares: for commutative
        // columns, the value the row holds now.
        let compared = if t.commutative {
            t.cols
                .iter()
                .zip(&t.kinds)
                .map(|(c, k)| {
                    if *k == ColKind::Plain {
                        format!("NEW.{0}, OLD.{0}", q(c))
                    } else {
                        format!("{}, OLD.{}", now("NEW.", c, k), q(c))
                    }
                })
                .collect::<Vec<_>>()
                .join(", ")
        } else {
            cells.clone()
        };
        let update_fn = if t.commutative {
            format!(
                "__lm_clk_update_k(__clk, {local}, __lm_version(), __lm_cur_seq(), {tname}, {kinds}, {names}"
            )
        } else {
            format!("__lm_clk_update(__clk, {local}, __lm_version(), __lm_cur_seq(), {tname}")
        };
        sql.push_str(&format!(
            "CREATE TRIGGER {} AFTER UPDATE ON {tq} WHEN __lm_local() AND ({pk_same}) AND __lm_differ({cells}) BEGIN\n{log}\
             UPDATE {clk} SET __clk = {update_fn}, {npk}, {pk_new}, {compared}) WHERE {m};\nEND;\n",
            trig("upd"),
            log = log(&pk_new, false, ""),
            m = match_on("NEW."),
        ));
    }
    sql.push_str(&format!(
        "CREATE TRIGGER {} AFTER UPDATE ON {tq} WHEN __lm_local() AND NOT ({pk_same}) BEGIN\n{}{}{}{}{}END;\n",
        trig("updpk"),
        key_check("NEW."),
        log(&pk_old, false, ""),
        delete_clock(&match_on("OLD.")),
        log(&pk_new, true, &cells_new),
        insert_clock(&pk_new),
    ));
    sql.push_str(&format!(
        "CREATE TRIGGER {} AFTER DELETE ON {tq} WHEN __lm_local() BEGIN\n{}{}END;\n",
        trig("del"),
        log(&pk_old, false, ""),
        delete_clock(&match_on("OLD.")),
    ));
    conn.execute_batch(&sql)?;
    Ok(())
}
