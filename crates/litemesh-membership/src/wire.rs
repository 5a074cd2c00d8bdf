//! Versioned wire encoding.
//!
//! A message is one version byte ([`WIRE_VERSION`]) followed by a MessagePack
//! (rmp-serde, compact array form) encoding of an envelope. [`decode`] turns
//! any malformed, truncated, oversized or trailing-garbage input into a
//! [`DecodeError`]; it never panics.

use std::fmt;
use std::net::SocketAddr;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Current wire version, the first byte of every message.
pub const WIRE_VERSION: u8 = 1;

/// Maximum size of member metadata, in bytes.
pub const MAX_METADATA_LEN: usize = 512;

/// Maximum number of gossip updates accepted in one message.
pub(crate) const MAX_UPDATES: usize = 1024;

/// Stable identifier of a node (e.g. random or derived from its key).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Node id plus generation. A node picks a new, larger generation each time
/// it starts (e.g. its start time in milliseconds); a higher generation
/// replaces the previous incarnation of the same id immediately, wherever it
/// runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Identity {
    /// Stable node id.
    pub id: NodeId,
    /// Start counter / timestamp of this process.
    pub generation: u64,
}

/// Opaque application metadata of a member (name, region, API address…),
/// at most [`MAX_METADATA_LEN`] bytes. Encoded as a MessagePack `bin`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Metadata(Vec<u8>);

impl Metadata {
    /// Wraps `bytes`, or returns them back if longer than [`MAX_METADATA_LEN`].
    pub fn new(bytes: Vec<u8>) -> Result<Self, Vec<u8>> {
        if bytes.len() > MAX_METADATA_LEN {
            Err(bytes)
        } else {
            Ok(Metadata(bytes))
        }
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl Serialize for Metadata {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Metadata {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Metadata;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "at most {MAX_METADATA_LEN} bytes of metadata")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Metadata, E> {
                Metadata::new(v.to_vec()).map_err(|b| E::invalid_length(b.len(), &self))
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Metadata, E> {
                Metadata::new(v).map_err(|b| E::invalid_length(b.len(), &self))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Metadata, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = seq.next_element::<u8>()? {
                    if out.len() == MAX_METADATA_LEN {
                        return Err(de::Error::invalid_length(out.len() + 1, &self));
                    }
                    out.push(b);
                }
                Ok(Metadata(out))
            }
        }
        d.deserialize_bytes(V)
    }
}

/// Liveness state of a member as seen by the local node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MemberState {
    /// Answering probes (or not suspected yet).
    #[serde(rename = "a")]
    Alive,
    /// Failed a probe; will be declared dead unless it refutes in time.
    #[serde(rename = "s")]
    Suspect,
    /// Declared failed.
    #[serde(rename = "d")]
    Dead,
    /// Left gracefully; final for this generation.
    #[serde(rename = "l")]
    Left,
}

/// Snapshot of what the local node knows about a member.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    /// Id and generation.
    pub identity: Identity,
    /// Address the member advertised.
    pub addr: SocketAddr,
    /// SWIM incarnation number (bumped by the member to refute suspicion
    /// or to publish new metadata).
    pub incarnation: u64,
    /// Liveness state.
    pub state: MemberState,
    /// Application metadata.
    pub metadata: Metadata,
    /// Smoothed round-trip time of direct probes (EWMA, α = 1/8), if any.
    pub rtt: Option<std::time::Duration>,
}

/// Member record as sent in gossip and push-pull.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Record {
    pub id: NodeId,
    pub generation: u64,
    pub incarnation: u64,
    pub addr: SocketAddr,
    pub state: MemberState,
    pub metadata: Metadata,
}

/// A piggybacked membership update.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) enum Update {
    #[serde(rename = "a")]
    Alive(Record),
    #[serde(rename = "s")]
    Suspect {
        id: NodeId,
        generation: u64,
        incarnation: u64,
        from: NodeId,
    },
    #[serde(rename = "d")]
    Dead {
        id: NodeId,
        generation: u64,
        incarnation: u64,
        from: NodeId,
    },
    #[serde(rename = "l")]
    Left {
        id: NodeId,
        generation: u64,
        incarnation: u64,
    },
}

impl Update {
    pub fn subject(&self) -> NodeId {
        match self {
            Update::Alive(r) => r.id,
            Update::Suspect { id, .. } | Update::Dead { id, .. } | Update::Left { id, .. } => *id,
        }
    }
}

/// Kind of a full-state exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum PushPullKind {
    #[serde(rename = "j")]
    Join,
    #[serde(rename = "p")]
    Push,
    #[serde(rename = "r")]
    Reply,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) enum Message {
    #[serde(rename = "p")]
    Ping {
        seq: u64,
        target: NodeId,
        target_generation: u64,
        gossip: Vec<Update>,
    },
    #[serde(rename = "a")]
    Ack { seq: u64, gossip: Vec<Update> },
    #[serde(rename = "n")]
    Nack { seq: u64 },
    #[serde(rename = "r")]
    PingReq {
        seq: u64,
        target: NodeId,
        target_generation: u64,
        target_addr: SocketAddr,
        /// How long the requester waits, in ms; a nack is sent at 80 %.
        window_ms: u32,
        /// Set for the last check of a suspect: the incarnation the
        /// requester suspects. A helper that knows a newer incarnation
        /// answers at once with it (the requester missed a refutation).
        suspected_incarnation: Option<u64>,
        gossip: Vec<Update>,
    },
    #[serde(rename = "g")]
    Gossip { gossip: Vec<Update> },
    #[serde(rename = "s")]
    PushPull {
        kind: PushPullKind,
        members: Vec<Record>,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Envelope {
    pub sender: Identity,
    pub message: Message,
}

/// Why an incoming message was rejected.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Zero-length input.
    #[error("empty message")]
    Empty,
    /// Larger than the configured limit.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Input length.
        len: usize,
        /// Configured limit.
        max: usize,
    },
    /// First byte is not a supported wire version.
    #[error("unsupported wire version {0}")]
    UnsupportedVersion(u8),
    /// The MessagePack body does not describe a valid message.
    #[error("malformed message: {0}")]
    Malformed(#[from] rmp_serde::decode::Error),
    /// Valid message followed by garbage.
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    /// Structurally valid but violates a protocol limit.
    #[error("invalid message: {0}")]
    Invalid(&'static str),
}

/// Encodes an envelope (infallible for in-memory buffers).
pub(crate) fn encode(env: &Envelope) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.push(WIRE_VERSION);
    // Writing into a Vec cannot fail and all our types are serializable.
    rmp_serde::encode::write(&mut out, env).expect("encoding into a Vec cannot fail");
    out
}

/// Encoded size of a single value (used to fill datagram budgets exactly).
pub(crate) fn encoded_len<T: Serialize>(v: &T) -> usize {
    rmp_serde::to_vec(v).map(|v| v.len()).unwrap_or(usize::MAX)
}

/// Decodes one message, rejecting anything malformed or larger than `max_len`.
pub(crate) fn decode(bytes: &[u8], max_len: usize) -> Result<Envelope, DecodeError> {
    let (&version, mut body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if bytes.len() > max_len {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            max: max_len,
        });
    }
    if version != WIRE_VERSION {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    let env = {
        let mut de = rmp_serde::Deserializer::new(&mut body);
        Envelope::deserialize(&mut de)?
    };
    if !body.is_empty() {
        return Err(DecodeError::TrailingBytes(body.len()));
    }
    match &env.message {
        Message::Ping { gossip, .. }
        | Message::Ack { gossip, .. }
        | Message::PingReq { gossip, .. }
        | Message::Gossip { gossip }
            if gossip.len() > MAX_UPDATES =>
        {
            return Err(DecodeError::Invalid("too many gossip updates"));
        }
        _ => {}
    }
    Ok(env)
}

/// Checks that `bytes` decode as a valid message under `max_len` without
/// handing out the (crate-private) message. Useful for transports and fuzzing.
pub fn validate(bytes: &[u8], max_len: usize) -> Result<(), DecodeError> {
    decode(bytes, max_len).map(|_| ())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn sample_messages() -> Vec<Envelope> {
        let addr: SocketAddr = "10.0.1.2:7000".parse().unwrap();
        let rec = Record {
            id: NodeId(7),
            generation: 3,
            incarnation: 9,
            addr,
            state: MemberState::Alive,
            metadata: Metadata::new(b"name=n7;region=eu".to_vec()).unwrap(),
        };
        let gossip = vec![
            Update::Alive(rec.clone()),
            Update::Suspect {
                id: NodeId(8),
                generation: 1,
                incarnation: 2,
                from: NodeId(1),
            },
            Update::Dead {
                id: NodeId(9),
                generation: 1,
                incarnation: 0,
                from: NodeId(2),
            },
            Update::Left {
                id: NodeId(10),
                generation: 5,
                incarnation: 1,
            },
        ];
        let sender = Identity {
            id: NodeId(1),
            generation: 42,
        };
        [
            Message::Ping {
                seq: 1,
                target: NodeId(2),
                target_generation: 3,
                gossip: gossip.clone(),
            },
            Message::Ack {
                seq: 1,
                gossip: vec![],
            },
            Message::Nack { seq: u64::MAX },
            Message::PingReq {
                seq: 5,
                target: NodeId(3),
                target_generation: 1,
                target_addr: "[::1]:9".parse().unwrap(),
                window_ms: 500,
                suspected_incarnation: Some(3),
                gossip: gossip.clone(),
            },
            Message::Gossip { gossip },
            Message::PushPull {
                kind: PushPullKind::Join,
                members: vec![rec; 3],
            },
        ]
        .into_iter()
        .map(|message| Envelope { sender, message })
        .collect()
    }

    #[test]
    fn roundtrip() {
        for env in sample_messages() {
            let bytes = encode(&env);
            assert_eq!(decode(&bytes, 1 << 20).unwrap(), env);
        }
    }

    #[test]
    fn rejects_bad_input() {
        let bytes = encode(&sample_messages()[0]);
        assert!(matches!(decode(&[], 100), Err(DecodeError::Empty)));
        assert!(matches!(
            decode(&bytes, 10),
            Err(DecodeError::TooLarge { .. })
        ));
        let mut v2 = bytes.clone();
        v2[0] = 2;
        assert!(matches!(
            decode(&v2, 1 << 20),
            Err(DecodeError::UnsupportedVersion(2))
        ));
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(matches!(
            decode(&trailing, 1 << 20),
            Err(DecodeError::TrailingBytes(1))
        ));
        assert!(matches!(
            decode(&bytes[..bytes.len() - 1], 1 << 20),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn rejects_oversized_metadata() {
        // A record whose metadata is 513 bytes, encoded by hand.
        #[derive(Serialize)]
        struct Raw<'a>(#[serde(with = "serde_bytes_shim")] &'a [u8]);
        mod serde_bytes_shim {
            pub fn serialize<S: serde::Serializer>(b: &&[u8], s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(b)
            }
        }
        let big = vec![1u8; MAX_METADATA_LEN + 1];
        let bytes = rmp_serde::to_vec(&Raw(&big)).unwrap();
        let r: Result<Metadata, _> = rmp_serde::from_slice(&bytes);
        assert!(r.is_err());
        let ok = vec![1u8; MAX_METADATA_LEN];
        let bytes = rmp_serde::to_vec(&Raw(&ok)).unwrap();
        let r: Metadata = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(r.as_bytes().len(), MAX_METADATA_LEN);
    }
}
