//! Connection ids that a restarted node still recognises as its own.
//!
//! A QUIC endpoint answers a packet for an unknown connection with a
//! stateless reset only if the packet's connection id looks like one it could
//! have issued. quinn's default generator keys that check with a random
//! per-process value, so a restarted node silently drops its old peers'
//! packets and they wait for their idle timeout. Keying it (and the reset
//! token key) with secrets derived from the node's private key makes the
//! restarted node reset those stale connections immediately.

use std::sync::Arc;

use quinn::{ConnectionId, ConnectionIdGenerator};
use quinn_proto::InvalidCid;
use ring::hmac;

const NONCE_LEN: usize = 8;
const TAG_LEN: usize = 4;

/// Connection id = 8 random bytes + the first 4 bytes of their HMAC.
pub(crate) struct StableCidGenerator {
    key: Arc<hmac::Key>,
}

impl StableCidGenerator {
    pub(crate) fn new(key: Arc<hmac::Key>) -> Self {
        Self { key }
    }

    fn tag(&self, nonce: &[u8]) -> [u8; TAG_LEN] {
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&hmac::sign(&self.key, nonce).as_ref()[..TAG_LEN]);
        tag
    }
}

impl ConnectionIdGenerator for StableCidGenerator {
    fn generate_cid(&mut self) -> ConnectionId {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let mut id = [0u8; NONCE_LEN + TAG_LEN];
        id[..NONCE_LEN].copy_from_slice(&nonce);
        id[NONCE_LEN..].copy_from_slice(&self.tag(&nonce));
        ConnectionId::new(&id)
    }

    fn validate(&self, cid: &ConnectionId) -> Result<(), InvalidCid> {
        if cid.len() != NONCE_LEN + TAG_LEN {
            return Err(InvalidCid);
        }
        let (nonce, tag) = cid.split_at(NONCE_LEN);
        if self.tag(nonce) == tag {
            Ok(())
        } else {
            Err(InvalidCid)
        }
    }

    fn cid_len(&self) -> usize {
        NONCE_LEN + TAG_LEN
    }

    fn cid_lifetime(&self) -> Option<std::time::Duration> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_validate_only_under_the_same_key() {
        let key = |k: &[u8]| Arc::new(hmac::Key::new(hmac::HMAC_SHA256, k));
        let mut a = StableCidGenerator::new(key(b"one"));
        let a_again = StableCidGenerator::new(key(b"one"));
        let b = StableCidGenerator::new(key(b"two"));
        let id = a.generate_cid();
        assert_eq!(id.len(), 12);
        assert!(a_again.validate(&id).is_ok());
        assert!(b.validate(&id).is_err());
        assert!(a.validate(&ConnectionId::new(&[0; 12])).is_err());
        assert!(a.validate(&ConnectionId::new(&[1; 4])).is_err());
    }
}
