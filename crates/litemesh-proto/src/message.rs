//! Messages of the sync protocol (broadcast and reconciliation) and their
//! versioned encoding.

use serde::{Deserialize, Serialize};

use crate::Knowledge;
use crate::error::{WireError, check_size};

/// Format version of sync messages.
const VERSION: u8 = 1;

/// Default size limit of one message (one frame on a stream).
pub const DEFAULT_MAX_MESSAGE: usize = 8 * 1024 * 1024;

/// One message of the sync protocol.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// A fresh change batch (encoded with [`crate::encode_batch`]), to
    /// be relayed at most `hops` more times. Sent on a unidirectional stream.
    Broadcast {
        /// Relays left.
        hops: u8,
        /// The encoded batch.
        #[serde(with = "serde_bytes")]
        batch: Vec<u8>,
    },
    /// Opens a reconciliation: what the requester holds. The request frame of a
    /// bidirectional stream.
    SyncRequest {
        /// The requester's knowledge.
        knowledge: Knowledge,
    },
    /// A batch the requester lacks; response frames of the stream.
    SyncBatch {
        /// The encoded batch.
        #[serde(with = "serde_bytes")]
        batch: Vec<u8>,
    },
    /// The last response frame: the responder's own knowledge, so the
    /// requester can tell what the responder lacks.
    SyncDone {
        /// The responder's knowledge.
        knowledge: Knowledge,
    },
}

/// Encodes a message: a format byte, then MessagePack.
pub fn encode(msg: &Message, limit: usize) -> Result<Vec<u8>, WireError> {
    let mut out = vec![VERSION];
    rmp_serde::encode::write(&mut out, msg).map_err(WireError::malformed)?;
    check_size(out.len(), limit)?;
    Ok(out)
}

/// Decodes a message, refusing oversized or malformed input (never panics).
pub fn decode(bytes: &[u8], limit: usize) -> Result<Message, WireError> {
    check_size(bytes.len(), limit)?;
    let (&v, body) = bytes
        .split_first()
        .ok_or_else(|| WireError::malformed("empty message"))?;
    if v != VERSION {
        return Err(WireError::Malformed(format!(
            "unsupported sync message version {v} (this node speaks {VERSION})"
        )));
    }
    let msg: Message = rmp_serde::from_slice(body).map_err(WireError::malformed)?;
    if let Message::SyncRequest { knowledge } | Message::SyncDone { knowledge } = &msg
        && !knowledge.is_well_formed()
    {
        return Err(WireError::malformed("knowledge ranges are not well formed"));
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ActorId, RangeSet};
    use proptest::prelude::*;

    #[test]
    fn roundtrip() {
        let mut k = Knowledge::default();
        k.have
            .insert(ActorId([7; 16]), RangeSet::from_ranges([(1, 10), (12, 20)]));
        for m in [
            Message::Broadcast {
                hops: 3,
                batch: vec![1, 2, 3],
            },
            Message::SyncRequest {
                knowledge: k.clone(),
            },
            Message::SyncBatch {
                batch: vec![9; 100],
            },
            Message::SyncDone { knowledge: k },
        ] {
            let b = encode(&m, 1 << 20).unwrap();
            assert_eq!(decode(&b, 1 << 20).unwrap(), m);
        }
        let big = Message::SyncBatch {
            batch: vec![0; 2000],
        };
        assert!(matches!(
            encode(&big, 1000),
            Err(WireError::TooLarge { .. })
        ));
        let b = encode(&big, 1 << 20).unwrap();
        assert!(matches!(decode(&b, 1000), Err(WireError::TooLarge { .. })));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(&bytes, 1 << 20);
            let mut v = vec![VERSION];
            v.extend(bytes);
            let _ = decode(&v, 1 << 20);
        }
    }
}
