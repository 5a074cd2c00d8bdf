//! Statements and results.

use litemesh_storage::Value;

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
