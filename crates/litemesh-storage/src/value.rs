//! The compact, deterministic encoding of primary keys in the change log.

use litemesh_proto::Value;
use rusqlite::types::ValueRef;

// Tags of the key encoding. 0–4 are the first format's; 5–7 (metadata
// format 3) store common keys in fewer bytes. Decoding takes both, so a log
// written before the upgrade reads as before.
const NULL: u8 = 0;
const INT_FIXED: u8 = 1;
const REAL: u8 = 2;
const TEXT: u8 = 3;
const BLOB: u8 = 4;
/// An integer as a zigzag varint (1–10 bytes instead of 8).
const INT_VARINT: u8 = 5;
/// Text of lowercase hexadecimal digits, even in length: the bytes they
/// spell (half the length).
const TEXT_HEX: u8 = 6;
/// A UUID in its canonical lowercase text form
/// (`xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`): its 16 bytes.
const TEXT_UUID: u8 = 7;

/// Encodes a primary key (a list of values) into the compact, deterministic byte
/// string stored in the change log.
pub(crate) fn encode_pk(values: &[ValueRef<'_>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    for v in values {
        match v {
            ValueRef::Null => out.push(NULL),
            ValueRef::Integer(i) => {
                out.push(INT_VARINT);
                crate::varint::put(&mut out, ((i << 1) ^ (i >> 63)) as u64);
            }
            ValueRef::Real(f) => {
                out.push(REAL);
                out.extend_from_slice(&f.to_bits().to_be_bytes());
            }
            ValueRef::Text(t) => {
                if let Some(bytes) = uuid_bytes(t) {
                    out.push(TEXT_UUID);
                    out.extend_from_slice(&bytes);
                } else if !t.is_empty()
                    && t.len() % 2 == 0
                    && t.iter().all(|&c| hex_digit(c).is_some())
                {
                    out.push(TEXT_HEX);
                    crate::varint::put(&mut out, (t.len() / 2) as u64);
                    out.extend(t.chunks(2).map(|p| hex_byte(p[0], p[1])));
                } else {
                    out.push(TEXT);
                    crate::varint::put(&mut out, t.len() as u64);
                    out.extend_from_slice(t);
                }
            }
            ValueRef::Blob(b) => {
                out.push(BLOB);
                crate::varint::put(&mut out, b.len() as u64);
                out.extend_from_slice(b);
            }
        }
    }
    out
}

/// A lowercase hexadecimal digit's value.
fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn hex_byte(hi: u8, lo: u8) -> u8 {
    (hex_digit(hi).unwrap_or(0) << 4) | hex_digit(lo).unwrap_or(0)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn push_hex(out: &mut String, bytes: &[u8]) {
    for b in bytes {
        out.push(HEX[(b >> 4) as usize] as char);
        out.push(HEX[(b & 15) as usize] as char);
    }
}

/// The 16 bytes of a UUID in canonical lowercase text form.
fn uuid_bytes(t: &[u8]) -> Option<[u8; 16]> {
    if t.len() != 36 {
        return None;
    }
    let mut out = [0u8; 16];
    let mut n = 0;
    let mut i = 0;
    while i < 36 {
        if matches!(i, 8 | 13 | 18 | 23) {
            if t[i] != b'-' {
                return None;
            }
            i += 1;
            continue;
        }
        out[n] = (hex_digit(t[i])? << 4) | hex_digit(t[i + 1])?;
        n += 1;
        i += 2;
    }
    Some(out)
}

fn uuid_text(b: &[u8; 16]) -> String {
    let mut s = String::with_capacity(36);
    for (i, part) in [&b[0..4], &b[4..6], &b[6..8], &b[8..10], &b[10..16]]
        .into_iter()
        .enumerate()
    {
        if i > 0 {
            s.push('-');
        }
        push_hex(&mut s, part);
    }
    s
}

/// Decodes a key written by [`encode_pk`]. `None` if the bytes are malformed.
pub(crate) fn decode_pk(mut bytes: &[u8]) -> Option<Vec<Value>> {
    let mut out = Vec::with_capacity(1);
    while let Some((&tag, rest)) = bytes.split_first() {
        bytes = rest;
        let v = match tag {
            NULL => Value::Null,
            INT_FIXED | REAL => {
                let (num, rest) = bytes.split_first_chunk::<8>()?;
                bytes = rest;
                let n = u64::from_be_bytes(*num);
                if tag == INT_FIXED {
                    Value::Integer(n as i64)
                } else {
                    Value::Real(f64::from_bits(n))
                }
            }
            INT_VARINT => {
                let z = crate::varint::get(&mut bytes)?;
                Value::Integer(((z >> 1) as i64) ^ -((z & 1) as i64))
            }
            TEXT | BLOB | TEXT_HEX => {
                let len = usize::try_from(crate::varint::get(&mut bytes)?).ok()?;
                if bytes.len() < len {
                    return None;
                }
                let (data, rest) = bytes.split_at(len);
                bytes = rest;
                match tag {
                    TEXT => Value::Text(String::from_utf8(data.to_vec()).ok()?),
                    BLOB => Value::Blob(data.to_vec()),
                    _ => {
                        let mut s = String::with_capacity(2 * len);
                        push_hex(&mut s, data);
                        Value::Text(s)
                    }
                }
            }
            TEXT_UUID => {
                let (b, rest) = bytes.split_first_chunk::<16>()?;
                bytes = rest;
                Value::Text(uuid_text(b))
            }
            _ => return None,
        };
        out.push(v);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(v: Value) -> usize {
        let r: ValueRef<'_> = match &v {
            Value::Null => ValueRef::Null,
            Value::Integer(i) => ValueRef::Integer(*i),
            Value::Real(f) => ValueRef::Real(*f),
            Value::Text(t) => ValueRef::Text(t.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        };
        let bytes = encode_pk(&[r, ValueRef::Integer(7)]);
        assert_eq!(
            decode_pk(&bytes),
            Some(vec![v.clone(), Value::Integer(7)]),
            "{v:?}"
        );
        bytes.len() - 2
    }

    #[test]
    fn every_key_decodes_to_itself_and_common_ones_are_short() {
        for i in [0, 1, -1, 63, -64, 64, i64::MAX, i64::MIN, 1 << 40] {
            round_trip(Value::Integer(i));
        }
        assert_eq!(round_trip(Value::Integer(100)), 3);
        for t in [
            "",
            "a",
            "ab",
            "0f",
            "0F",
            "abc",
            "xyz",
            "00ff",
            "été",
            "12345678",
            "123e4567-e89b-12d3-a456-426614174000",
            "123E4567-E89B-12D3-A456-426614174000",
            "123e4567-e89b-12d3-a456_426614174000",
            "123e4567e89b12d3a456426614174000",
        ] {
            round_trip(Value::Text(t.into()));
        }
        assert_eq!(
            round_trip(Value::Text("00000704fdfcaca5".into())),
            1 + 1 + 8
        );
        assert_eq!(
            round_trip(Value::Text("123e4567-e89b-12d3-a456-426614174000".into())),
            1 + 16
        );
        // Uppercase stays text: it must read back exactly as written.
        assert_eq!(round_trip(Value::Text("0F".into())), 1 + 1 + 2);
        round_trip(Value::Null);
        round_trip(Value::Real(-2.5));
        round_trip(Value::Blob(vec![0, 1, 2]));
    }

    #[test]
    fn keys_written_by_the_first_format_still_decode() {
        let mut old = vec![INT_FIXED];
        old.extend_from_slice(&(-5i64).to_be_bytes());
        old.extend_from_slice(&[TEXT, 2, b'h', b'i']);
        assert_eq!(
            decode_pk(&old),
            Some(vec![Value::Integer(-5), Value::Text("hi".into())])
        );
        assert_eq!(decode_pk(&[TEXT_UUID, 1, 2]), None, "truncated");
        assert_eq!(decode_pk(&[99]), None, "unknown tag");
    }
}
