//! Table placement on the sync paths: broadcasts (fresh and relayed) are
//! filtered per receiver, and reconciliations extract per requester, by
//! the receiver's region — the certified one when the driver can tell it.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use litemesh_proto::{
    ChangeBatch, DEFAULT_MAX_WIRE_BYTES, Entitlement, Message, Placement, channel, encode,
    encode_batch,
};

/// Tells a peer's region as its certificate certifies it: `Some(region)`
/// when known (`Some(None)`: certified without a region), `None` when it
/// cannot tell (no connection open yet).
pub type RegionResolver = Arc<dyn Fn(SocketAddr) -> Option<Option<String>> + Send + Sync>;

/// Broadcast messages whose filtered forms are kept (one per receiver
/// region), most recent last.
const CACHED: usize = 16;

struct Cached {
    bytes: Arc<[u8]>,
    /// The hops and the batch, when the batch needs filtering at all.
    parsed: Option<(u8, ChangeBatch)>,
    /// Its form for a receiver's entitlement (`None`: nothing to send
    /// there).
    per_region: HashMap<Entitlement, Option<Arc<[u8]>>>,
}

/// The placement the core enforces, and how it learns peers' regions.
pub(crate) struct Filter {
    placement: Placement,
    resolver: Option<RegionResolver>,
    cache: VecDeque<Cached>,
    /// Partial replicas: the tables each carries (from its metadata).
    pub(crate) carried: HashMap<SocketAddr, std::collections::BTreeSet<String>>,
    /// Broadcast messages not sent because the receiver may hold rows the
    /// version reached this node without.
    pub(crate) skipped: u64,
}

impl fmt::Debug for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Filter")
            .field("placement", &self.placement)
            .field("certified", &self.resolver.is_some())
            .finish()
    }
}

impl Filter {
    pub(crate) fn new(placement: Placement, resolver: Option<RegionResolver>) -> Filter {
        Filter {
            placement,
            resolver,
            cache: VecDeque::new(),
            carried: HashMap::new(),
            skipped: 0,
        }
    }

    /// Records the tables a peer carries (`None`: all).
    pub(crate) fn set_carried(&mut self, addr: SocketAddr, tables: Option<Vec<String>>) {
        match tables {
            Some(t) => {
                self.carried
                    .insert(addr, t.iter().map(|t| t.to_ascii_lowercase()).collect());
            }
            None => {
                self.carried.remove(&addr);
            }
        }
    }

    pub(crate) fn is_active(&self) -> bool {
        !self.placement.is_empty() || !self.carried.is_empty()
    }

    /// What the peer at `addr` may hold: by its certified region when a
    /// resolver is set (a peer it cannot tell yet gets unpinned tables
    /// only), else by the region it gossips (`claimed`; insecure meshes and
    /// the simulator).
    pub(crate) fn entitlement(&self, addr: SocketAddr, claimed: Option<String>) -> Entitlement {
        let region = match &self.resolver {
            Some(r) => r(addr).flatten(),
            None => claimed,
        };
        Entitlement {
            region,
            carried: self.carried.get(&addr).cloned(),
        }
    }

    /// The broadcast message `bytes` as the peer at `addr` may receive it,
    /// or `None` when nothing of it may be sent there.
    pub(crate) fn broadcast_for(
        &mut self,
        addr: SocketAddr,
        claimed: Option<String>,
        bytes: Arc<[u8]>,
        max_message: usize,
    ) -> Option<Arc<[u8]>> {
        let ent = self.entitlement(addr, claimed);
        let i = match self
            .cache
            .iter()
            .position(|c| Arc::ptr_eq(&c.bytes, &bytes))
        {
            Some(i) => i,
            None => {
                let partial = !self.carried.is_empty();
                let parsed = parse(&bytes).filter(|(_, b)| partial || self.placement.touches(b));
                if self.cache.len() >= CACHED {
                    self.cache.pop_front();
                }
                self.cache.push_back(Cached {
                    bytes: bytes.clone(),
                    parsed,
                    per_region: HashMap::new(),
                });
                self.cache.len() - 1
            }
        };
        let c = &mut self.cache[i];
        let Some((hops, batch)) = &c.parsed else {
            return Some(bytes);
        };
        let form = c
            .per_region
            .entry(ent.clone())
            .or_insert_with(|| {
                let f = self.placement.filter_batch(batch, &ent);
                if f.is_empty() {
                    return None;
                }
                let inner = encode_batch(&f, DEFAULT_MAX_WIRE_BYTES).ok()?;
                let m = encode(
                    &Message::Broadcast {
                        hops: *hops,
                        batch: inner,
                    },
                    max_message,
                )
                .ok()?;
                let mut out = Vec::with_capacity(m.len() + 1);
                out.push(channel::SYNC);
                out.extend_from_slice(&m);
                Some(out.into())
            })
            .clone();
        if form.is_none() {
            self.skipped += 1;
        }
        form
    }
}

/// The hops and batch of an encoded broadcast message (channel tag first).
fn parse(bytes: &[u8]) -> Option<(u8, ChangeBatch)> {
    let (&tag, rest) = bytes.split_first()?;
    if tag != channel::SYNC {
        return None;
    }
    let b = crate::replication::decode_broadcast(rest, usize::MAX).ok()?;
    Some((b.hops(), b.batch().clone()))
}
