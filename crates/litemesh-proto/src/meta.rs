//! What a node tells the mesh about itself in its membership metadata.
//!
//! Encoded as MessagePack with field names, so that nodes of different
//! versions read each other's: unknown fields are ignored, missing optional
//! ones are `None`.

use serde::{Deserialize, Serialize};

use crate::ActorId;
use crate::error::WireError;

/// A node's membership metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeMeta {
    /// The node's name.
    pub name: String,
    /// Its region, if it has one.
    pub region: Option<String>,
    /// The address of its HTTP API, if it serves one.
    pub api: Option<String>,
    /// The actor its writes are versioned under.
    pub actor: ActorId,
    /// Its latest version and when it was committed (Unix milliseconds):
    /// every node measures its lag behind this writer from it.
    pub head: Option<Head>,
    /// A partial replica: the tables it carries (lower-cased), so that
    /// senders leave the others out; `None` for a full replica.
    pub tables: Option<Vec<String>>,
    /// The digest of its table placement ([`crate::Placement::digest`]):
    /// nodes whose schemas pin tables differently see it.
    pub placement: Option<u64>,
}

/// A writer's latest version and its commit time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// The version.
    pub version: u64,
    /// When it was committed, Unix milliseconds.
    pub unix_ms: u64,
}

/// The encoding (field names and types are the wire format).
#[derive(Serialize, Deserialize)]
struct Wire {
    name: String,
    region: Option<String>,
    api: Option<String>,
    /// Hex.
    actor: String,
    #[serde(default)]
    head: Option<u64>,
    #[serde(default)]
    head_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tables: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    placement: Option<u64>,
}

impl NodeMeta {
    /// Encodes the metadata.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let w = Wire {
            name: self.name.clone(),
            region: self.region.clone(),
            api: self.api.clone(),
            actor: self.actor.to_hex(),
            head: self.head.map(|h| h.version),
            head_ms: self.head.map(|h| h.unix_ms),
            tables: self.tables.clone(),
            placement: self.placement,
        };
        rmp_serde::to_vec_named(&w).map_err(WireError::malformed)
    }

    /// Decodes metadata written by any version of [`NodeMeta::encode`].
    pub fn decode(bytes: &[u8]) -> Result<NodeMeta, WireError> {
        let w: Wire = rmp_serde::from_slice(bytes).map_err(WireError::malformed)?;
        let actor = ActorId::from_hex(&w.actor)
            .ok_or_else(|| WireError::malformed("the actor is not 32 hex digits"))?;
        let head = match (w.head, w.head_ms) {
            (Some(version), Some(unix_ms)) => Some(Head { version, unix_ms }),
            _ => None,
        };
        Ok(NodeMeta {
            name: w.name,
            region: w.region,
            api: w.api,
            actor,
            head,
            tables: w.tables,
            placement: w.placement,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_of_an_older_node_is_read_and_garbage_refused() {
        #[derive(Serialize)]
        struct Old {
            name: String,
            region: Option<String>,
            api: Option<String>,
            actor: String,
        }
        let old = Old {
            name: "n".into(),
            region: None,
            api: None,
            actor: "ab".repeat(16),
        };
        let m = NodeMeta::decode(&rmp_serde::to_vec(&old).unwrap()).unwrap();
        assert_eq!((m.name.as_str(), m.head), ("n", None));
        assert_eq!(m.actor, ActorId([0xab; 16]));
        let new = NodeMeta {
            head: Some(Head {
                version: 7,
                unix_ms: 1,
            }),
            ..m
        };
        assert_eq!(NodeMeta::decode(&new.encode().unwrap()).unwrap(), new);
        let partial = NodeMeta {
            tables: Some(vec!["posts".into()]),
            ..new.clone()
        };
        assert_eq!(
            NodeMeta::decode(&partial.encode().unwrap()).unwrap(),
            partial
        );
        // A full replica's metadata is as before.
        assert!(new.encode().unwrap().len() < partial.encode().unwrap().len());
        assert!(NodeMeta::decode(&[0xc1, 1, 2]).is_err());
        let bad = Old {
            actor: "zz".into(),
            ..old
        };
        assert!(NodeMeta::decode(&rmp_serde::to_vec(&bad).unwrap()).is_err());
    }
}
