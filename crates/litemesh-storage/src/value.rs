//! SQLite values as they travel between nodes.

use rusqlite::types::{FromSql, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
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
    pub fn encoded_size(&self) -> usize {
        match self {
            Value::Null => 2,
            Value::Integer(_) | Value::Real(_) => 10,
            Value::Text(s) => s.len() + 6,
            Value::Blob(b) => b.len() + 6,
        }
    }

    /// Borrows the value as a rusqlite reference.
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
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(self.as_ref()))
    }
}

impl FromSql for Value {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        Ok(Value::from_ref(value))
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

/// Encodes a primary key (a list of values) into the compact, deterministic byte
/// string stored in the change log.
pub(crate) fn encode_pk(values: &[ValueRef<'_>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    for v in values {
        match v {
            ValueRef::Null => out.push(0),
            ValueRef::Integer(i) => {
                out.push(1);
                out.extend_from_slice(&i.to_be_bytes());
            }
            ValueRef::Real(f) => {
                out.push(2);
                out.extend_from_slice(&f.to_bits().to_be_bytes());
            }
            ValueRef::Text(t) => {
                out.push(3);
                crate::varint::put(&mut out, t.len() as u64);
                out.extend_from_slice(t);
            }
            ValueRef::Blob(b) => {
                out.push(4);
                crate::varint::put(&mut out, b.len() as u64);
                out.extend_from_slice(b);
            }
        }
    }
    out
}

/// Decodes a key written by [`encode_pk`]. `None` if the bytes are malformed.
pub(crate) fn decode_pk(mut bytes: &[u8]) -> Option<Vec<Value>> {
    let mut out = Vec::with_capacity(1);
    while let Some((&tag, rest)) = bytes.split_first() {
        bytes = rest;
        let v = match tag {
            0 => Value::Null,
            1 | 2 => {
                let (num, rest) = bytes.split_first_chunk::<8>()?;
                bytes = rest;
                let n = u64::from_be_bytes(*num);
                if tag == 1 {
                    Value::Integer(n as i64)
                } else {
                    Value::Real(f64::from_bits(n))
                }
            }
            3 | 4 => {
                let len = usize::try_from(crate::varint::get(&mut bytes)?).ok()?;
                if bytes.len() < len {
                    return None;
                }
                let (data, rest) = bytes.split_at(len);
                bytes = rest;
                if tag == 3 {
                    Value::Text(String::from_utf8(data.to_vec()).ok()?)
                } else {
                    Value::Blob(data.to_vec())
                }
            }
            _ => return None,
        };
        out.push(v);
    }
    Some(out)
}
