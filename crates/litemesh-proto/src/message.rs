//! Messages of the sync protocol (broadcast and reconciliation) and their
//! versioned encoding.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{WireError, check_size};
use crate::{ActorId, Knowledge};

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
        /// What tombstone collection needs to know of the requester (a
        /// trailing field: absent when empty, and in older messages).
        #[serde(default, skip_serializing_if = "RetentionInfo::is_empty")]
        retention: RetentionInfo,
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
        /// What tombstone collection needs to know of the responder.
        #[serde(default, skip_serializing_if = "RetentionInfo::is_empty")]
        retention: RetentionInfo,
    },
    /// The last (and only) response frame of a reconciliation the responder
    /// will not serve, and why.
    SyncRefused {
        /// Why, for the requester's log and status.
        reason: String,
        /// The requester lacks versions whose tombstones the responder has
        /// collected: incremental sync cannot make it whole, it needs a
        /// snapshot (`docs/retention.md`).
        snapshot: bool,
        /// With `snapshot`: what the responder collected (per actor,
        /// versions `1..=n`), so the requester knows what its snapshot
        /// must cover.
        #[serde(default)]
        collected: BTreeMap<ActorId, u64>,
    },
    /// First frame of the listing part of a snapshot answer (after the
    /// batches, before the [`Message::SnapshotKeys`] frames): what the
    /// responder held when it read the keys it lists (the same read).
    SnapshotBase {
        /// The responder's knowledge at the listing.
        knowledge: Knowledge,
    },
    /// One chunk of a snapshot listing: the keys of the rows the responder
    /// holds alive, in one key range of one table.
    SnapshotKeys(KeyChunk),
}

/// Where a snapshot listing starts (or resumes): a table, and the last key
/// already checked in it. Tables are listed in name order, keys in key
/// order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotCursor {
    /// The table (empty: from the first).
    pub table: String,
    /// The last key of `table` already checked, encoded by the storage
    /// layer (`None`: from the table's first key).
    #[serde(default, with = "serde_bytes")]
    pub after: Option<Vec<u8>>,
    /// `table` is done: start with the next one.
    #[serde(default)]
    pub past: bool,
}

/// The keys of the rows alive on the responder in one key range of one
/// table: `(after, through]`, in key order. A row the requester holds alive
/// in that range and the responder does not list was deleted (or never
/// seen) there (`docs/retention.md`, snapshot catch-up).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyChunk {
    /// The table.
    pub table: String,
    /// The range starts after this key (`None`: at the table's first).
    #[serde(default, with = "serde_bytes")]
    pub after: Option<Vec<u8>>,
    /// The range ends with this key (`None`: at the table's end).
    #[serde(default, with = "serde_bytes")]
    pub through: Option<Vec<u8>>,
    /// The keys of the rows alive, encoded by the storage layer.
    pub keys: Vec<serde_bytes::ByteBuf>,
    /// The responder's collection floor for the table.
    pub floor: u64,
    /// This chunk ends the listing of every table.
    pub last: bool,
    /// The keys of the rows deleted there whose tombstones are not
    /// collected yet, with their causal lengths: a row held alive at a
    /// lower one lost to that delete.
    #[serde(default)]
    pub dead: Vec<(serde_bytes::ByteBuf, u64)>,
}

/// Most keys one [`KeyChunk`] may list.
pub const MAX_CHUNK_KEYS: usize = 65_536;

/// Longest reason a [`Message::SyncRefused`] may carry.
pub const MAX_REFUSAL: usize = 4096;

/// Most actors a node may claim in one report.
pub const MAX_OWNED_ACTORS: usize = 4096;
/// Most tables a report may carry floors for.
pub const MAX_FLOORS: usize = 4096;

/// What a node tells its peer at each reconciliation, beside its knowledge,
/// for tombstone collection (`docs/retention.md`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionInfo {
    /// The actors the node writes or wrote with (a node moves to a new actor
    /// after a crash or a restore): peers need its report to account for
    /// every writer.
    pub owned: Vec<ActorId>,
    /// Per table, the highest causal length of a tombstone the node (or a
    /// node it synced with) collected: a key inserted afresh must start its
    /// life above it.
    pub floors: BTreeMap<String, u64>,
    /// How many versions the node counts as held in its knowledge without
    /// having applied them yet (its quarantine): while there are any, its
    /// report does not prove it held what it says when it wrote.
    #[serde(default)]
    pub unapplied: u64,
    /// The node has just started after an absence longer than its peers
    /// wait for a member, and serves nothing until a reconciliation it
    /// opens completes: nodes in that state serve each other (after the
    /// usual checks), so a whole mesh restarted after a long stop resumes.
    #[serde(default)]
    pub holding: bool,
    /// Per actor, the versions `1..=n` whose tombstones the node collected:
    /// a peer lacking some of them cannot catch up incrementally from it
    /// (whichever of the two opened the reconciliation).
    #[serde(default)]
    pub collected: BTreeMap<ActorId, u64>,
    /// Versions whose deletes the node has checked its rows against by a
    /// snapshot listing (it may lack them, having dropped the rows they
    /// deleted): they count as held for the checks above.
    #[serde(default)]
    pub checked: Knowledge,
    /// In a request: the requester cannot catch up incrementally (it lacks
    /// versions peers collected) and asks for a snapshot answer, listing
    /// keys from this cursor on. Last field: absent unless set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotCursor>,
}

impl RetentionInfo {
    /// Whether there is nothing to report.
    pub fn is_empty(&self) -> bool {
        self.owned.is_empty()
            && self.floors.is_empty()
            && self.unapplied == 0
            && !self.holding
            && self.collected.is_empty()
            && self.checked.have.is_empty()
            && self.snapshot.is_none()
    }

    fn is_well_formed(&self) -> bool {
        self.owned.len() <= MAX_OWNED_ACTORS
            && self.floors.len() <= MAX_FLOORS
            && self.collected.len() <= MAX_OWNED_ACTORS * 4
            && self.checked.is_well_formed()
            && self.floors.keys().all(|n| !n.is_empty() && n.len() <= 1024)
            && self.snapshot.as_ref().is_none_or(|c| {
                c.table.len() <= 1024 && c.after.as_ref().is_none_or(|a| a.len() <= 65_536)
            })
    }
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
    if let Message::SyncRefused { reason, .. } = &msg
        && reason.len() > MAX_REFUSAL
    {
        return Err(WireError::malformed("refusal reason too long"));
    }
    if let Message::SnapshotBase { knowledge } = &msg
        && !knowledge.is_well_formed()
    {
        return Err(WireError::malformed("knowledge ranges are not well formed"));
    }
    if let Message::SnapshotKeys(c) = &msg
        && ((c.table.is_empty() && !(c.last && c.keys.is_empty() && c.dead.is_empty()))
            || c.table.len() > 1024
            || c.keys.len() + c.dead.len() > MAX_CHUNK_KEYS)
    {
        return Err(WireError::malformed("snapshot key chunk out of bounds"));
    }
    if let Message::SyncRequest {
        knowledge,
        retention,
    }
    | Message::SyncDone {
        knowledge,
        retention,
    } = &msg
    {
        if !knowledge.is_well_formed() {
            return Err(WireError::malformed("knowledge ranges are not well formed"));
        }
        if !retention.is_well_formed() {
            return Err(WireError::malformed(
                "retention report too large (actors, tables or table names)",
            ));
        }
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
                retention: RetentionInfo::default(),
            },
            Message::SyncBatch {
                batch: vec![9; 100],
            },
            Message::SyncRefused {
                reason: "stale".into(),
                snapshot: true,
                collected: BTreeMap::from([(ActorId([7; 16]), 4)]),
            },
            Message::SyncDone {
                knowledge: k.clone(),
                retention: RetentionInfo {
                    owned: vec![ActorId([7; 16]), ActorId([8; 16])],
                    floors: BTreeMap::from([("items".to_string(), 12)]),
                    unapplied: 2,
                    holding: true,
                    collected: BTreeMap::from([(ActorId([8; 16]), 3)]),
                    checked: k.clone(),
                    snapshot: Some(SnapshotCursor {
                        table: "items".into(),
                        after: Some(vec![1, 2]),
                        past: false,
                    }),
                },
            },
            Message::SnapshotBase {
                knowledge: k.clone(),
            },
            Message::SnapshotKeys(KeyChunk {
                table: "items".into(),
                after: None,
                through: Some(vec![3]),
                keys: vec![serde_bytes::ByteBuf::from(vec![1]), vec![3].into()],
                floor: 4,
                last: true,
                dead: vec![(vec![2].into(), 6)],
            }),
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

    /// A message without the retention report (as older nodes send it)
    /// decodes with an empty one; an empty one is not sent at all.
    #[test]
    fn retention_report_is_a_trailing_field() {
        #[derive(Serialize)]
        enum Old {
            #[allow(dead_code)]
            Broadcast {
                hops: u8,
            },
            SyncRequest {
                knowledge: Knowledge,
            },
        }
        let mut k = Knowledge::default();
        k.have
            .insert(ActorId([1; 16]), RangeSet::from_ranges([(1, 3)]));
        let mut old = vec![VERSION];
        rmp_serde::encode::write(
            &mut old,
            &Old::SyncRequest {
                knowledge: k.clone(),
            },
        )
        .unwrap();
        let new = Message::SyncRequest {
            knowledge: k,
            retention: RetentionInfo::default(),
        };
        assert_eq!(decode(&old, 1 << 20).unwrap(), new);
        assert_eq!(encode(&new, 1 << 20).unwrap(), old);
        let huge = Message::SyncDone {
            knowledge: Knowledge::default(),
            retention: RetentionInfo {
                owned: vec![ActorId([0; 16]); MAX_OWNED_ACTORS + 1],
                ..RetentionInfo::default()
            },
        };
        let b = encode(&huge, 1 << 20).unwrap();
        assert!(matches!(decode(&b, 1 << 20), Err(WireError::Malformed(_))));
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
