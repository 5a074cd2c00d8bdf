//! SQLite values as they travel between nodes.

use serde::{Deserialize, Serialize};

/// One SQLite value: the five storage classes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// A 64-bit signed integer.
    Integer(i64),
    /// A 64-bit float.
    Real(f64),
    /// UTF-8 text.
    Text(String),
    /// Raw bytes.
    Blob(#[serde(with = "serde_bytes")] Vec<u8>),
}

impl Value {
    /// Approximate encoded size in bytes, used to bound batches.
    #[inline]
    pub fn encoded_size(&self) -> usize {
        match self {
            Value::Null => 2,
            Value::Integer(_) | Value::Real(_) => 10,
            Value::Text(s) => s.len() + 6,
            Value::Blob(b) => b.len() + 6,
        }
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Integer(v)
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Real(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_owned())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}
impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Value::Blob(v)
    }
}

/// Conversions to and from rusqlite's types (feature `sqlite`).
#[cfg(feature = "sqlite")]
mod sqlite {
    use rusqlite::types::{FromSql, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

    use super::Value;

    impl Value {
        /// Borrows the value as a rusqlite reference.
        #[inline]
        pub fn as_ref(&self) -> ValueRef<'_> {
            match self {
                Value::Null => ValueRef::Null,
                Value::Integer(i) => ValueRef::Integer(*i),
                Value::Real(f) => ValueRef::Real(*f),
                Value::Text(s) => ValueRef::Text(s.as_bytes()),
                Value::Blob(b) => ValueRef::Blob(b),
            }
        }

        /// Copies a rusqlite value reference. Text that is not UTF-8 is kept as a blob.
        #[inline]
        pub fn from_ref(v: ValueRef<'_>) -> Value {
            match v {
                ValueRef::Null => Value::Null,
                ValueRef::Integer(i) => Value::Integer(i),
                ValueRef::Real(f) => Value::Real(f),
                ValueRef::Text(t) => match std::str::from_utf8(t) {
                    Ok(s) => Value::Text(s.to_owned()),
                    Err(_) => Value::Blob(t.to_vec()),
                },
                ValueRef::Blob(b) => Value::Blob(b.to_vec()),
            }
        }
    }

    impl ToSql for Value {
        #[inline]
        fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
            Ok(ToSqlOutput::Borrowed(self.as_ref()))
        }
    }

    impl FromSql for Value {
        #[inline]
        fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
            Ok(Value::from_ref(value))
        }
    }
}
