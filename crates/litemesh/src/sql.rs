//! Statements and results.

use litemesh_storage::Value;
use rusqlite::types::ToSqlOutput;
use rusqlite::{Connection, ToSql, params_from_iter};

use crate::error::Error;

/// One SQL statement with positional parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    /// The SQL text.
    pub sql: String,
    /// Parameters (`?1`, `?2`, … or `?`).
    pub params: Vec<Value>,
}

impl Statement {
    /// A statement with parameters.
    pub fn with_params(sql: impl Into<String>, params: Vec<Value>) -> Statement {
        Statement {
            sql: sql.into(),
            params,
        }
    }
}

impl From<&str> for Statement {
    fn from(sql: &str) -> Self {
        Statement {
            sql: sql.to_owned(),
            params: Vec::new(),
        }
    }
}

impl From<String> for Statement {
    fn from(sql: String) -> Self {
        Statement {
            sql,
            params: Vec::new(),
        }
    }
}

/// Rows returned by a query.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct QueryResult {
    /// Column names.
    pub columns: Vec<String>,
    /// Rows, in order.
    pub rows: Vec<Vec<Value>>,
}

struct Param<'a>(&'a Value);
impl ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        self.0.to_sql()
    }
}

/// Runs one write statement; returns rows affected.
pub(crate) fn execute(conn: &Connection, st: &Statement) -> Result<usize, Error> {
    let mut stmt = conn.prepare_cached(&st.sql)?;
    Ok(stmt.execute(params_from_iter(st.params.iter().map(Param)))?)
}

/// Runs one read-only statement.
pub(crate) fn query(
    conn: &Connection,
    st: &Statement,
    max_rows: usize,
) -> Result<QueryResult, Error> {
    let mut stmt = conn.prepare_cached(&st.sql)?;
    if !stmt.readonly() {
        return Err(Error::NotReadOnly(st.sql.chars().take(200).collect()));
    }
    let columns: Vec<String> = stmt.column_names().map(|s| s.to_string()).collect();
    let n = columns.len();
    let mut rows = stmt.query(params_from_iter(st.params.iter().map(Param)))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        if out.len() >= max_rows {
            break;
        }
        out.push(
            (0..n)
                .map(|i| r.get::<_, Value>(i))
                .collect::<rusqlite::Result<Vec<_>>>()?,
        );
    }
    Ok(QueryResult { columns, rows: out })
}
