//! Which faults a run injects, in which order, for how long: a pure function
//! of the seed, so a run can be repeated.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::history::{NodeIx, node_name, region_of};
use crate::netns::DropRule;

/// One fault.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// No UDP between any node of one side and any node of another.
    Partition {
        /// The sides.
        sides: Vec<Vec<NodeIx>>,
    },
    /// Two sides that cannot reach each other, and a bridge node that
    /// reaches both.
    Bridge {
        /// One side.
        left: Vec<NodeIx>,
        /// The other side.
        right: Vec<NodeIx>,
        /// The node in the middle.
        bridge: NodeIx,
    },
    /// Every node of one region cut off from every node of the others.
    RegionCut {
        /// The region cut off.
        region: &'static str,
        /// Its nodes.
        inside: Vec<NodeIx>,
        /// The others.
        outside: Vec<NodeIx>,
    },
    /// Random loss of every UDP packet with probability `p`.
    Loss {
        /// Drop probability.
        p: f64,
    },
    /// Loss of the packets `node` sends, with probability `p`; what it
    /// receives gets through.
    OneWay {
        /// The node whose packets are lost.
        node: NodeIx,
        /// Drop probability (1.0: it can hear but not speak).
        p: f64,
    },
    /// SIGKILL, then a restart on the same file after the hold.
    Kill {
        /// The node.
        node: NodeIx,
    },
    /// SIGSTOP, then SIGCONT after the hold.
    Pause {
        /// The node.
        node: NodeIx,
    },
    /// Graceful stop (SIGTERM), a long time away, then a restart.
    Offline {
        /// The node.
        node: NodeIx,
    },
    /// Sabotage, to show that the checker catches data loss: the node is
    /// isolated (its clients' writes are acknowledged but reach nobody), then
    /// killed, its files deleted, and restarted empty.
    Wipe {
        /// The node.
        node: NodeIx,
    },
}

fn names(nodes: &[NodeIx]) -> String {
    let v: Vec<String> = nodes.iter().map(|&i| node_name(i)).collect();
    format!("{{{}}}", v.join(","))
}

impl Fault {
    /// Short kind name, as reported.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Partition { sides } if sides.iter().any(|s| s.len() == 1) => "isolate",
            Fault::Partition { .. } => "partition",
            Fault::Bridge { .. } => "bridge",
            Fault::RegionCut { .. } => "region-cut",
            Fault::Loss { .. } => "loss",
            Fault::OneWay { .. } => "one-way-loss",
            Fault::Kill { .. } => "kill-restart",
            Fault::Pause { .. } => "pause",
            Fault::Offline { .. } => "offline",
            Fault::Wipe { .. } => "wipe",
        }
    }

    /// A description naming the nodes.
    pub fn label(&self) -> String {
        match self {
            Fault::Partition { sides } => {
                let s: Vec<String> = sides.iter().map(|s| names(s)).collect();
                format!("partition {}", s.join(" / "))
            }
            Fault::Bridge {
                left,
                right,
                bridge,
            } => format!(
                "bridge {} - n{} - {}",
                names(left),
                bridge + 1,
                names(right)
            ),
            Fault::RegionCut {
                region,
                inside,
                outside,
            } => format!(
                "region {region} cut off: {} / {}",
                names(inside),
                names(outside)
            ),
            Fault::Loss { p } => format!("loss {:.0}% all links", p * 100.0),
            Fault::OneWay { node, p } => {
                format!("one-way loss {:.0}% of what n{} sends", p * 100.0, node + 1)
            }
            Fault::Kill { node } => format!("SIGKILL n{}, restart on the same file", node + 1),
            Fault::Pause { node } => format!("SIGSTOP n{}, then SIGCONT", node + 1),
            Fault::Offline { node } => format!("n{} offline (SIGTERM), then restarted", node + 1),
            Fault::Wipe { node } => format!(
                "SABOTAGE: n{} isolated, then killed, its files deleted, restarted empty",
                node + 1
            ),
        }
    }

    /// The firewall rules it needs, given each node's address.
    pub fn drop_rules(&self, addrs: &[String]) -> Vec<DropRule> {
        let cut = |a: &[NodeIx], b: &[NodeIx], out: &mut Vec<DropRule>| {
            for &x in a {
                for &y in b {
                    for (f, t) in [(x, y), (y, x)] {
                        out.push(DropRule {
                            from: Some(addrs[f].clone()),
                            to: Some(addrs[t].clone()),
                            p: 1.0,
                        });
                    }
                }
            }
        };
        let mut out = Vec::new();
        match self {
            Fault::Partition { sides } => {
                for (i, a) in sides.iter().enumerate() {
                    for b in &sides[i + 1..] {
                        cut(a, b, &mut out);
                    }
                }
            }
            Fault::Bridge { left, right, .. } => cut(left, right, &mut out),
            Fault::RegionCut {
                inside, outside, ..
            } => cut(inside, outside, &mut out),
            Fault::Loss { p } => out.push(DropRule {
                from: None,
                to: None,
                p: *p,
            }),
            Fault::OneWay { node, p } => out.push(DropRule {
                from: Some(addrs[*node].clone()),
                to: None,
                p: *p,
            }),
            Fault::Wipe { node } => {
                let rest: Vec<NodeIx> = (0..addrs.len()).filter(|i| i != node).collect();
                cut(&[*node], &rest, &mut out);
            }
            Fault::Kill { .. } | Fault::Pause { .. } | Fault::Offline { .. } => {}
        }
        out
    }
}

/// A fault, how long it is held, and how long the mesh then runs without
/// faults before the next one.
#[derive(Debug, Clone, PartialEq)]
pub struct Phase {
    /// The fault.
    pub fault: Fault,
    /// Seconds it is held.
    pub hold: f64,
    /// Seconds without faults after it is healed.
    pub settle: f64,
}

/// Which schedule to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ScheduleKind {
    /// Every fault kind once, with short holds (the 35 s partition included):
    /// about three minutes, for CI.
    Ci,
    /// Faults drawn at random (kinds, nodes, holds) until the duration is
    /// used up.
    Random,
    /// One fault that loses acknowledged writes on purpose ([`Fault::Wipe`]):
    /// the run must end with anomalies. Shows the checker is not blind.
    Sabotage,
}

fn shuffled(n: usize, rng: &mut ChaCha8Rng) -> Vec<NodeIx> {
    let mut v: Vec<NodeIx> = (0..n).collect();
    v.shuffle(rng);
    v
}

fn halves(n: usize, rng: &mut ChaCha8Rng) -> Fault {
    let v = shuffled(n, rng);
    let (a, b) = v.split_at(n / 2);
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    a.sort_unstable();
    b.sort_unstable();
    Fault::Partition { sides: vec![a, b] }
}

fn isolate(n: usize, rng: &mut ChaCha8Rng) -> Fault {
    let x = rng.random_range(0..n);
    let rest: Vec<NodeIx> = (0..n).filter(|&i| i != x).collect();
    Fault::Partition {
        sides: vec![vec![x], rest],
    }
}

fn region_cut(n: usize, rng: &mut ChaCha8Rng) -> Fault {
    let region = region_of(rng.random_range(0..n.min(3)));
    let (inside, outside): (Vec<NodeIx>, Vec<NodeIx>) =
        (0..n).partition(|&i| region_of(i) == region);
    Fault::RegionCut {
        region,
        inside,
        outside,
    }
}

fn bridge(n: usize, rng: &mut ChaCha8Rng) -> Fault {
    let v = shuffled(n, rng);
    let bridge = v[0];
    let rest = &v[1..];
    let (l, r) = rest.split_at(rest.len() / 2);
    let (mut left, mut right) = (l.to_vec(), r.to_vec());
    left.sort_unstable();
    right.sort_unstable();
    Fault::Bridge {
        left,
        right,
        bridge,
    }
}

/// The schedule for `kind`, `n` nodes (at least 3), from `seed`. `duration`
/// (seconds) bounds the random schedule; the CI one has a fixed length.
pub fn schedule(kind: ScheduleKind, n: usize, seed: u64, duration: f64) -> Vec<Phase> {
    assert!(n >= 3, "a chaos run needs at least 3 nodes");
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5c4e_d01e);
    match kind {
        ScheduleKind::Ci => {
            let node = |rng: &mut ChaCha8Rng| rng.random_range(0..n);
            vec![
                Phase {
                    fault: halves(n, &mut rng),
                    hold: 35.0,
                    settle: 8.0,
                },
                Phase {
                    fault: Fault::Loss { p: 0.10 },
                    hold: 15.0,
                    settle: 6.0,
                },
                Phase {
                    fault: bridge(n, &mut rng),
                    hold: 10.0,
                    settle: 6.0,
                },
                Phase {
                    fault: isolate(n, &mut rng),
                    hold: 10.0,
                    settle: 6.0,
                },
                Phase {
                    fault: Fault::OneWay {
                        node: node(&mut rng),
                        p: 1.0,
                    },
                    hold: 10.0,
                    settle: 8.0,
                },
                Phase {
                    fault: region_cut(n, &mut rng),
                    hold: 12.0,
                    settle: 6.0,
                },
                Phase {
                    fault: Fault::Kill {
                        node: node(&mut rng),
                    },
                    hold: 3.0,
                    settle: 6.0,
                },
                Phase {
                    fault: Fault::Pause {
                        node: node(&mut rng),
                    },
                    hold: 8.0,
                    settle: 8.0,
                },
                Phase {
                    fault: Fault::Offline {
                        node: node(&mut rng),
                    },
                    hold: 20.0,
                    settle: 6.0,
                },
            ]
        }
        ScheduleKind::Sabotage => vec![Phase {
            fault: Fault::Wipe {
                node: rng.random_range(0..n),
            },
            hold: 8.0,
            settle: 6.0,
        }],
        ScheduleKind::Random => {
            let mut out = Vec::new();
            let mut used = 0.0;
            while used < duration {
                let x = rng.random_range(0..n);
                let (fault, hold) = match rng.random_range(0..10) {
                    0 | 1 => (halves(n, &mut rng), rng.random_range(5.0..60.0)),
                    9 => (region_cut(n, &mut rng), rng.random_range(5.0..60.0)),
                    2 => (bridge(n, &mut rng), rng.random_range(5.0..40.0)),
                    3 => (isolate(n, &mut rng), rng.random_range(5.0..40.0)),
                    4 => (
                        Fault::Loss {
                            p: rng.random_range(0.05..0.30),
                        },
                        rng.random_range(5.0..40.0),
                    ),
                    5 => (
                        Fault::OneWay {
                            node: x,
                            p: if rng.random_bool(0.5) {
                                1.0
                            } else {
                                rng.random_range(0.2..0.8)
                            },
                        },
                        rng.random_range(5.0..30.0),
                    ),
                    6 => (Fault::Kill { node: x }, rng.random_range(0.5..10.0)),
                    7 => (Fault::Pause { node: x }, rng.random_range(1.0..20.0)),
                    _ => (Fault::Offline { node: x }, rng.random_range(30.0..120.0)),
                };
                let settle = rng.random_range(5.0..15.0);
                used += hold + settle;
                out.push(Phase {
                    fault,
                    hold,
                    settle,
                });
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_repeat_for_a_seed_and_differ_across_seeds() {
        let a = schedule(ScheduleKind::Random, 5, 7, 1800.0);
        let b = schedule(ScheduleKind::Random, 5, 7, 1800.0);
        let c = schedule(ScheduleKind::Random, 5, 8, 1800.0);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let total: f64 = a.iter().map(|p| p.hold + p.settle).sum();
        assert!((1800.0..1800.0 + 140.0).contains(&total), "{total}");
    }

    #[test]
    fn ci_schedule_has_every_fault_kind_and_the_35s_partition() {
        let s = schedule(ScheduleKind::Ci, 5, 1, 0.0);
        let kinds: std::collections::BTreeSet<&str> = s.iter().map(|p| p.fault.kind()).collect();
        for k in [
            "partition",
            "bridge",
            "isolate",
            "loss",
            "one-way-loss",
            "kill-restart",
            "pause",
            "offline",
            "region-cut",
        ] {
            assert!(kinds.contains(k), "{k} missing from {kinds:?}");
        }
        assert!(
            s.iter()
                .any(|p| p.fault.kind() == "partition" && p.hold >= 35.0)
        );
    }

    #[test]
    fn partition_rules_cut_exactly_the_cross_pairs_both_ways() {
        let addrs: Vec<String> = (0..5).map(|i| format!("127.0.0.{}", 10 + i)).collect();
        let f = Fault::Partition {
            sides: vec![vec![0, 1], vec![2, 3, 4]],
        };
        let rules = f.drop_rules(&addrs);
        assert_eq!(rules.len(), 2 * 2 * 3);
        for r in &rules {
            let from: usize = r.from.as_ref().unwrap()[8..].parse::<usize>().unwrap() - 10;
            let to: usize = r.to.as_ref().unwrap()[8..].parse::<usize>().unwrap() - 10;
            assert_ne!(from < 2, to < 2, "{r:?} stays within a side");
        }
        let b = Fault::Bridge {
            left: vec![0, 1],
            right: vec![3, 4],
            bridge: 2,
        };
        assert!(
            b.drop_rules(&addrs)
                .iter()
                .all(|r| !r.from.as_ref().unwrap().ends_with(".12")
                    && !r.to.as_ref().unwrap().ends_with(".12")),
            "the bridge is never cut"
        );
    }
}
