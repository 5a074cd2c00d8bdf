//! Samples every node's replication progress (`/v1/status`, every 100 ms)
//! and membership view (`/v1/members`, every 500 ms) for the whole run.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value as Json;

use crate::api::{Answer, Api};
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
    let api = Api::new(Duration::from_millis(400));
    let mut tick = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let started = std::time::Instant::now();
        for (node, addr) in shared.apis.iter().enumerate() {
            if let Answer::Ok(body) = api.get(addr, "/v1/status") {
                let at = shared.now();
                let Ok(v) = serde_json::from_str::<Json>(&body) else {
                    continue;
                };
                let ct: BTreeMap<String, u64> = v["complete_through"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .filter_map(|(a, n)| Some((a.clone(), n.as_u64()?)))
                            .collect()
                    })
                    .unwrap_or_default();
                let mut o = out.lock().unwrap();
                if let Some(actor) = v["actor"].as_str() {
                    let seen = o.actors.entry(node).or_default();
                    if seen.last().map(String::as_str) != Some(actor) {
                        seen.push(actor.to_string());
                    }
                }
                o.latest.insert(node, ct.clone());
                o.samples.push(Sample {
                    at,
                    node,
                    complete_through: ct,
                });
            }
            if tick.is_multiple_of(MEMBERS_EVERY)
                && let Answer::Ok(body) = api.get(addr, "/v1/members")
            {
                let at = shared.now();
                let Ok(Json::Array(list)) = serde_json::from_str::<Json>(&body) else {
                    continue;
                };
                let members: Vec<(String, String)> = list
                    .iter()
                    .map(|m| {
                        (
                            m["name"].as_str().unwrap_or("").to_string(),
                            m["state"].as_str().unwrap_or("").to_string(),
                        )
                    })
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
