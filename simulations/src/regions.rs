//! Convergence against the number of regions: whole nodes (the real node
//! core and SQLite files, as in [`crate::mesh`]) on a WAN latency matrix
//! ([`LinkConfig::wan`]), with region-aware dissemination on or off.
//!
//! One run: `nodes` nodes spread round-robin over `regions` regions join
//! the mesh; then `writes` single transactions, each on a random node, one
//! at a time: the time until every node holds it, and the broadcast bytes
//! that crossed a region boundary; then, optionally, region 0 is cut off
//! from the others for `cut` while every node keeps writing, and the time
//! from the heal until every node holds the same versions and rows.

use std::path::Path;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::mesh::{self, MeshNode, addr_of};
use crate::network::{LinkConfig, Network};

/// The simulated message kinds whose cross-region bytes are counted apart
/// (see `mesh.rs`): unidirectional streams (broadcasts), reconciliation
/// requests and responses.
const UNI: usize = 1;
const REQUEST: usize = 2;
const RESPONSE: usize = 3;

/// Parameters of one run.
#[derive(Debug, Clone)]
pub struct RegionParams {
    /// Nodes.
    pub nodes: usize,
    /// Regions (1..=8).
    pub regions: usize,
    /// Region-aware dissemination (the node's default) or region-blind.
    pub aware: bool,
    /// The seed of everything.
    pub seed: u64,
    /// Writes measured one at a time.
    pub writes: usize,
    /// Region 0 cut off for this long (while everyone writes), then healed.
    pub cut: Option<Duration>,
    /// Background loss of datagrams and broadcast streams.
    pub loss: f64,
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct RegionReport {
    /// The parameters.
    pub params: RegionParams,
    /// Per measured write: the time until every node held it (`None`: not
    /// within 30 s).
    pub reach: Vec<Option<Duration>>,
    /// Broadcast bytes that crossed a region boundary, per write.
    pub cross_broadcast_bytes: f64,
    /// Reconciliation bytes that crossed a region boundary, per second
    /// (the background cost of anti-entropy), during the write phase.
    pub cross_sync_bytes_per_s: f64,
    /// All traffic crossing regions during the write phase (membership
    /// included), per write.
    pub cross_total_bytes: f64,
    /// Time from joining to every node seeing every other alive.
    pub joined_after: Option<Duration>,
    /// After the cut: from the heal until every node held the same versions
    /// (`None`: not within the settle time). `None` without a cut.
    pub healed_after: Option<Option<Duration>>,
    /// Writes acknowledged during the cut.
    pub cut_writes: usize,
    /// Problems (a replica that differs at the end).
    pub violations: Vec<String>,
    /// Wall time of the run.
    pub wall: Duration,
}

/// Runs one configuration in `dir` (one SQLite file per node).
pub fn run(p: &RegionParams, dir: &Path) -> RegionReport {
    let started = Instant::now();
    let mut net: Network<MeshNode> = Network::new(LinkConfig::wan(p.regions, p.loss), p.seed);
    let mut rng = ChaCha8Rng::seed_from_u64(p.seed ^ 0x7265_6769);
    let mut cfg = mesh::config();
    cfg.sync.region_aware = p.aware;
    let regions = p.regions.max(1);
    for i in 0..p.nodes {
        // Join through a node that joined before (spreads the joins).
        let seeds = if i == 0 {
            vec![]
        } else {
            vec![addr_of(rng.random_range(0..i))]
        };
        let seed = p.seed.wrapping_mul(1_000_003).wrapping_add(i as u64);
        let n = MeshNode::open(
            i,
            &dir.join(format!("n{i}.db")),
            addr_of(i),
            i % regions,
            &seeds,
            &cfg,
            seed,
            net.now(),
            None,
        );
        net.add_node(addr_of(i), i % regions, n);
    }
    let mut t = Duration::ZERO;
    let mut joined_after = None;
    while t < Duration::from_secs(180) {
        t += Duration::from_millis(500);
        net.run_until(t);
        if (0..p.nodes).all(|i| net.node(i).alive() == p.nodes) {
            joined_after = Some(t);
            break;
        }
    }
    // Some calm: the first reconciliations after joining are over.
    t += Duration::from_secs(10);
    net.run_until(t);
    net.reset_stats();
    let phase = t;
    let mut reach = Vec::new();
    let step = Duration::from_millis(2);
    for _ in 0..p.writes {
        let writer = rng.random_range(0..p.nodes);
        let Some(Some((actor, version))) = net.with_node(writer, |n, now| n.write_now(now)) else {
            reach.push(None);
            continue;
        };
        let t0 = t;
        let mut got = None;
        let mut first_held: Vec<Option<Duration>> = vec![None; p.nodes];
        while t < t0 + Duration::from_secs(30) {
            t += step;
            net.run_until(t);
            let mut all = true;
            for (i, f) in first_held.iter_mut().enumerate() {
                if f.is_none() {
                    if net.node(i).holds(&actor, version) {
                        *f = Some(t - t0);
                    } else {
                        all = false;
                    }
                }
            }
            if all {
                got = Some(t - t0);
                break;
            }
        }
        if std::env::var_os("LITEMESH_SIM_DEBUG").is_some() {
            let mut v: Vec<u128> = first_held.iter().flatten().map(|d| d.as_millis()).collect();
            v.sort();
            let q = |x: f64| v.get(((v.len().max(1) - 1) as f64 * x) as usize).copied();
            eprintln!(
                "write by n{writer}: held by {} nodes; ms p50 {:?} p90 {:?} p95 {:?} p99 {:?} max {:?}",
                v.len(),
                q(0.5),
                q(0.9),
                q(0.95),
                q(0.99),
                q(1.0)
            );
        }
        reach.push(got);
        // The next write starts from quiet (2 s apart at least).
        let next = t0 + Duration::from_secs(2);
        if t < next {
            t = next;
            net.run_until(t);
        }
    }
    let secs = (t - phase).as_secs_f64().max(1e-9);
    let (mut broadcast, mut sync, mut total) = (0u64, 0u64, 0u64);
    for i in 0..p.nodes {
        let c = net.stats(i).cross_region_bytes;
        // A stream whose transport payload starts with the sync channel
        // tag: a broadcast (the others carry membership).
        broadcast += c[UNI][1];
        sync += c[REQUEST].iter().sum::<u64>() + c[RESPONSE].iter().sum::<u64>();
        total += c.iter().flatten().sum::<u64>();
    }
    let writes = p.writes.max(1) as f64;
    let mut violations = Vec::new();
    let mut healed_after = None;
    let mut cut_writes = 0;
    if let Some(cut) = p.cut {
        let groups: Vec<u32> = (0..p.nodes).map(|i| u32::from(i % regions != 0)).collect();
        net.partition(groups);
        // About two writes a second in the whole mesh, on both sides.
        let every = Duration::from_millis(500 * p.nodes as u64);
        for i in 0..p.nodes {
            net.with_node(i, |n, now| n.set_writing(now, Some(every)));
        }
        let before: u64 = (0..p.nodes).map(|i| net.node(i).writes()).sum();
        let end = t + cut;
        while t < end {
            t += Duration::from_secs(1);
            net.run_until(t);
        }
        net.heal();
        for i in 0..p.nodes {
            net.with_node(i, |n, now| n.set_writing(now, None));
        }
        cut_writes = ((0..p.nodes).map(|i| net.node(i).writes()).sum::<u64>() - before) as usize;
        let healed = t;
        let mut done = None;
        while t < healed + Duration::from_secs(300) {
            t += Duration::from_millis(50);
            net.run_until(t);
            let k0 = net.node(0).knowledge();
            if (1..p.nodes).all(|i| {
                let k = net.node(i).knowledge();
                k.covers(&k0) && k0.covers(&k)
            }) {
                done = Some(t - healed);
                break;
            }
        }
        healed_after = Some(done);
        if done.is_none() {
            violations.push("replicas did not converge within 300 s of the heal".into());
        }
    }
    // Every replica holds the same rows at the end.
    let first = net.node(0).dump();
    for i in 1..p.nodes {
        if net.node(i).dump() != first {
            violations.push(format!("n{i}: rows differ from n0's at the end"));
            break;
        }
    }
    RegionReport {
        params: p.clone(),
        reach,
        cross_broadcast_bytes: broadcast as f64 / writes,
        cross_sync_bytes_per_s: sync as f64 / secs,
        cross_total_bytes: total as f64 / writes,
        joined_after,
        healed_after,
        cut_writes,
        violations,
        wall: started.elapsed(),
    }
}
