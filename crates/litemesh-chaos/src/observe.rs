//! Samples every node's replication progress (`/v1/status`, every 100 ms;
//! with it, the rows of pinned tables peers sent it that it may not hold)
//! and membership view (`/v1/members`, every 500 ms) for the whole run.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use litemesh_client::Error;

use crate::api;
use crate::history::{MembersView, NodeIx, Sample, lists_alive};
use crate::workload::Shared;

/// Interval between progress samples.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);
const MEMBERS_EVERY: u32 = 5;

/// What the observer has seen so far.
#[derive(Default)]
pub struct Observed {
    /// Every progress sample.
    pub samples: Vec<Sample>,
    /// Every membership view.
    pub members: Vec<MembersView>,
    /// Latest `complete_through` per node.
    pub latest: BTreeMap<NodeIx, BTreeMap<String, u64>>,
    /// Latest view per node.
    pub latest_members: BTreeMap<NodeIx, Vec<(String, String)>>,
    /// Each node's actor ids, in the order seen (a node restarted after
    /// SIGKILL writes as a new actor).
    pub actors: BTreeMap<NodeIx, Vec<String>>,
}

impl Observed {
    /// Whether every node's latest sample holds `target` (per actor, all
    /// versions up to it).
    pub fn all_hold(
        &self,
        mut nodes: impl Iterator<Item = NodeIx>,
        target: &BTreeMap<String, u64>,
    ) -> bool {
        nodes.all(|n| {
            self.latest.get(&n).is_some_and(|ct| {
                target
                    .iter()
                    .all(|(a, v)| ct.get(a).copied().unwrap_or(0) >= *v)
            })
        })
    }

    /// Whether every node's latest view lists every other node as alive.
    pub fn membership_converged(&self, nodes: usize) -> bool {
        (0..nodes).all(|n| {
            self.latest_members
                .get(&n)
                .is_some_and(|view| lists_alive(view, (0..nodes).filter(|&o| o != n)))
        })
    }
}

/// Samples until `stop` is set; results in `out`.
pub fn run(
    shared: Arc<Shared>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    out: Arc<Mutex<Observed>>,
) {
    let apis = api::clients(&shared.apis, Duration::from_millis(400));
    let mut tick = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let started = std::time::Instant::now();
        for (node, api) in apis.iter().enumerate() {
            match api.status() {
                Ok(status) => {
                    let at = shared.now();
                    let actor = status.actor.into_string();
                    let ct: BTreeMap<String, u64> = status
                        .complete_through
                        .into_iter()
                        .map(|(a, n)| (a.into_string(), n))
                        .collect();
                    let mut o = out.lock().unwrap();
                    let seen = o.actors.entry(node).or_default();
                    if seen.last() != Some(&actor) {
                        seen.push(actor);
                    }
                    o.latest.insert(node, ct.clone());
                    o.samples.push(Sample {
                        at,
                        node,
                        complete_through: ct,
                        placement_rows_refused: status.placement_rows_refused,
                    });
                }
                // An answer that is not a status: no membership sample of
                // this node this time either.
                Err(Error::Decode { .. }) => continue,
                Err(_) => {}
            }
            if tick.is_multiple_of(MEMBERS_EVERY)
                && let Ok(list) = api.members()
            {
                let at = shared.now();
                let members: Vec<(String, String)> = list
                    .into_iter()
                    .map(|m| (m.name, m.state.to_string()))
                    .collect();
                let mut o = out.lock().unwrap();
                o.latest_members.insert(node, members.clone());
                o.members.push(MembersView { at, node, members });
            }
        }
        tick = tick.wrapping_add(1);
        if let Some(rest) = SAMPLE_EVERY.checked_sub(started.elapsed()) {
            std::thread::sleep(rest);
        }
    }
}
