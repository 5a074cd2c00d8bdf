//! The compact, deterministic encoding of primary keys in the change log.

use litemesh_proto::Value;
use rusqlite::types::ValueRef;

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
