//! The human-readable summary of a run (Markdown): faults with their
//! convergence times against the goals, the late join, operation counts,
//! replication lag, and every anomaly with the requests that show it.

use std::fmt::Write;

use crate::check::{CheckResult, CounterMetrics, PlacementMetrics};
use crate::history::{History, node_name};
use crate::run::RunConfig;

/// Goal: all replicas hold the pre-heal writes this soon after a partition
/// heals (Corrosion, same setup: 15.4 s).
pub const GOAL_PARTITION_HEAL: f64 = 3.0;
/// Goal: the same after random loss stops.
pub const GOAL_LOSS_STOP: f64 = 2.0;
/// Goal: a node joining a mesh of 10,000 rows has caught up this soon
/// (Corrosion: 1.6–2.3 s).
pub const GOAL_JOIN: f64 = 0.5;

/// Anomalies of one kind printed in full; the rest are counted.
const SHOWN_PER_KIND: usize = 5;

fn secs(x: Option<f64>) -> String {
    x.map_or("—".into(), |v| format!("{v:.2} s"))
}

fn goal_for(kind: &str) -> Option<f64> {
    match kind {
        "partition" | "isolate" | "bridge" | "region-cut" => Some(GOAL_PARTITION_HEAL),
        "loss" | "one-way-loss" => Some(GOAL_LOSS_STOP),
        _ => None,
    }
}

fn verdict(x: Option<f64>, goal: Option<f64>) -> &'static str {
    match (x, goal) {
        (_, None) => "",
        (Some(v), Some(g)) if v <= g => " ✓",
        _ => " ✗",
    }
}

fn node_list(nodes: impl IntoIterator<Item = usize>) -> String {
    nodes
        .into_iter()
        .map(node_name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The placement result in one line, e.g. `placement: pinned_eu on 2 eu
/// nodes (n1, n4: 812 rows each), 0 rows outside eu (files of n2, n3, n5
/// checked) …`.
pub fn placement_line(p: &PlacementMetrics) -> String {
    let regions = p.regions.join(", ");
    let counts: std::collections::BTreeSet<u64> = p.inside.iter().map(|(_, n)| *n).collect();
    let held = match (counts.first(), counts.last()) {
        (Some(a), Some(b)) if a == b => format!("{a} rows each"),
        (Some(a), Some(b)) => format!("{a}–{b} rows"),
        _ => "no node".into(),
    };
    let files = if p.files_checked as usize == p.outside.len() {
        format!("files of {} checked", node_list(p.outside.iter().copied()))
    } else {
        format!(
            "only {} of the files of {} could be read",
            p.files_checked,
            node_list(p.outside.iter().copied())
        )
    };
    format!(
        "placement: {} on {} {regions} nodes ({}: {held}), {} rows outside {regions} ({files}: \
         the table, its clock table, parked, quarantined and partial changes); {} rows \
         acknowledged, {} of them in one transaction with event rows; reads and writes of it \
         on nodes outside {regions}: {} refused with 403, {} without a definite answer, {} \
         otherwise; placement_rows_refused at most {}",
        p.table,
        p.inside.len(),
        node_list(p.inside.iter().map(|(n, _)| *n)),
        p.found_outside,
        p.rows_acked,
        p.rows_acked_with_events,
        p.probes_refused,
        p.probes_unknown,
        p.probes_other,
        p.rows_refused_max,
    )
}

/// The counters' result in one line, e.g. `counters: 8 counters, 5120
/// increments acknowledged (sum 14032; n1 1040, n2 1003, …), 212 of unknown
/// outcome, 0 refused; final values identical on 5 nodes and within the
/// acknowledged sum for 8 of 8 counters …`.
pub fn counters_line(c: &CounterMetrics) -> String {
    let by_node = c
        .acked_by_node
        .iter()
        .enumerate()
        .map(|(n, k)| format!("{} {k}", node_name(n)))
        .collect::<Vec<_>>()
        .join(", ");
    let unchanged = match c.acked_unchanged {
        0 => String::new(),
        k => format!("; {k} of them updates that changed nothing"),
    };
    let resolved = match c.resolved {
        0 => String::new(),
        k => format!(" ({k} of them settled by their transaction's event rows)"),
    };
    let agree = if c.identical {
        format!("final values identical on {} nodes", c.nodes)
    } else {
        format!("final values NOT identical on the {} nodes", c.nodes)
    };
    format!(
        "counters: {} counters, {} increments acknowledged (sum {}; {by_node}{unchanged}), {} of \
         unknown outcome{resolved}, {} refused; {agree} and within the acknowledged sum for {} of \
         {} counters (each the sum of the increments known applied plus that of some of those \
         of unknown outcome; {} exactly the known sum)",
        c.counters, c.acked, c.acked_sum, c.unknown, c.failed, c.possible, c.counters, c.exact,
    )
}

/// A Markdown summary of a run. `cfg` adds the run's settings when known
/// (it is not in a saved history).
pub fn summary(h: &History, r: &CheckResult, cfg: Option<&RunConfig>) -> String {
    let m = &r.metrics;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n## litemesh-chaos: seed {}, {} nodes{}",
        h.seed,
        h.nodes,
        cfg.map_or(String::new(), |c| format!(
            ", schedule {:?}, {} clients",
            c.schedule,
            c.nodes * c.clients_per_node
        ))
    );
    let _ = writeln!(
        s,
        "\n{} faults over {:.0} s; {} anomalies\n",
        h.faults.len(),
        h.quiet_from,
        r.anomalies.len()
    );
    if let Some(policy) = cfg.and_then(|c| c.retention.as_ref()) {
        let collected: Vec<String> = h
            .finals
            .iter()
            .filter_map(|f| f.end.as_ref().map(|e| e.tombstones_collected.to_string()))
            .collect();
        let _ = writeln!(
            s,
            "Retention policy {policy}: tombstones collected per node since its last start: {}\n",
            collected.join(", ")
        );
        let snapshots: Vec<String> = h
            .finals
            .iter()
            .enumerate()
            .filter_map(|(i, f)| {
                let (keys, dropped, rebased, complete) = f.end.as_ref()?.snapshot_catch_up?;
                Some(format!(
                    "n{}: {keys} keys checked, {dropped} rows dropped, {rebased} rebased{}",
                    i + 1,
                    if complete { "" } else { " (not complete)" }
                ))
            })
            .collect();
        if let Some(f) = cfg.and_then(|c| c.forget_after.as_ref()) {
            let _ = writeln!(
                s,
                "Forget-after {f}: snapshot catch-ups since the nodes' last starts: {}\n",
                if snapshots.is_empty() {
                    "none".to_string()
                } else {
                    snapshots.join("; ")
                }
            );
        }
    }

    let _ = writeln!(
        s,
        "| # | fault | held | all nodes hold every write acknowledged before the heal | membership all alive |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|");
    for (i, f) in m.faults.iter().enumerate() {
        let goal = goal_for(&f.kind);
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} s | {}{}{} | {} |",
            i + 1,
            f.label,
            f.hold,
            secs(f.converged_after),
            verdict(f.converged_after, goal),
            goal.map_or(String::new(), |g| format!(" (goal ≤ {g:.0} s)")),
            secs(f.membership_after),
        );
    }
    let _ = writeln!(
        s,
        "| | clients stopped, all healed | | {} | {} |",
        secs(m.converged_after_quiet),
        secs(m.membership_after_quiet)
    );
    let _ = writeln!(
        s,
        "\nTimes are measured from the heal (for process faults: from the restarted \
         agent's ready line or SIGCONT), sampling every agent's `/v1/status` every 100 ms."
    );

    if let Some(j) = &m.join {
        let _ = writeln!(
            s,
            "\nJoin: n{} started on an empty file beside a mesh of {} rows: ready after {:.3} s, \
             caught up {} after its ready line ({} after start){} (goal ≤ {GOAL_JOIN} s)",
            j.node + 1,
            j.rows,
            j.ready_after,
            j.catch_up.map_or("never".into(), |v| format!("{v:.3} s")),
            j.caught_up_after
                .map_or("never".into(), |v| format!("{v:.3} s")),
            verdict(j.caught_up_after, Some(GOAL_JOIN)),
        );
    }

    let _ = writeln!(s, "\n| requests | ok | failed (4xx) | unknown |");
    let _ = writeln!(s, "|---|---|---|---|");
    for (kind, c) in &m.by_kind {
        let _ = writeln!(s, "| {kind} | {} | {} | {} |", c.ok, c.failed, c.unknown);
    }
    let _ = writeln!(
        s,
        "\n{} requests; {} event rows and {} register writes acknowledged. \
         Failed (4xx): nothing applied (the workload sends some invalid transactions on \
         purpose). Unknown: no definite answer (timeout, refused connection, 5xx), so a \
         write may or may not have been applied; the checker allows both.",
        m.ops, m.rows_acked, m.register_writes_acked
    );

    let c = |k: &str| m.by_kind.get(k).cloned().unwrap_or_default();
    let (hostile, oversized) = (c("hostile"), c("oversized"));
    if hostile.ok
        + hostile.failed
        + hostile.unknown
        + oversized.ok
        + oversized.failed
        + oversized.unknown
        > 0
        || m.large_acked > 0
    {
        let _ = writeln!(
            s,
            "\nHostile requests (the sandbox must refuse them: 403): {} refused, {} without a \
             definite answer (agent down or paused), {} carried out. Row writes over 4 MiB (must \
             be refused: 413): {} refused, {} without a definite answer, {} carried out. Large \
             values of 1–3.9 MB acknowledged: {} ({:.1} MB), each checked on every node by \
             type, length and digest.",
            hostile.failed,
            hostile.unknown,
            hostile.ok,
            oversized.failed,
            oversized.unknown,
            oversized.ok,
            m.large_acked,
            m.large_bytes_acked as f64 / 1e6,
        );
    }
    if let Some(p) = &m.placement {
        let _ = writeln!(s, "\n{}", placement_line(p));
    }
    if let Some(c) = &m.counters {
        let _ = writeln!(s, "\n{}", counters_line(c));
    }
    let ends: Vec<_> = h.finals.iter().filter_map(|f| f.end.as_ref()).collect();
    if !ends.is_empty() {
        let grace = ends.iter().map(|e| e.waited).fold(0.0, f64::max);
        if ends.iter().all(|e| e.clean()) {
            let _ = writeln!(
                s,
                "\nEnd of run: `/v1/health` 200 on every node ({grace:.2} s after the final \
                 convergence); nothing quarantined, no apply or serve failures, no write error."
            );
        } else {
            let _ = writeln!(
                s,
                "\nEnd of run: some node unhealthy or stuck after {grace:.2} s of grace (see the \
                 anomalies)."
            );
        }
    }

    let l = &m.lag;
    let _ = writeln!(
        s,
        "\nReplication lag (acknowledged → held by every node), {} writes: p50 {}, p99 {}, \
         max {}{}; outside faults ({} writes): p50 {}, p99 {}, max {}. {} writes never \
         measured (acknowledged just before an agent stopped sampling).",
        l.measured,
        secs(l.p50),
        secs(l.p99),
        secs(l.max),
        l.max_op.map_or(String::new(), |o| format!(" (op {o})")),
        l.calm_measured,
        secs(l.calm_p50),
        secs(l.calm_p99),
        secs(l.calm_max),
        l.not_visible,
    );

    if r.anomalies.is_empty() {
        let _ = writeln!(s, "\nAnomalies: none.");
    } else {
        let _ = writeln!(s, "\nAnomalies:");
        for (kind, n) in r.counts() {
            let _ = writeln!(s, "- {kind}: {n}");
        }
        // The first few of each kind; all of them are in results.json.
        let mut shown: std::collections::BTreeMap<_, usize> = Default::default();
        for a in &r.anomalies {
            let n = shown.entry(a.kind).or_default();
            *n += 1;
            if *n <= SHOWN_PER_KIND {
                let _ = writeln!(s, "\n### {}\n{}\nrequests: {:?}", a.kind, a.detail, a.ops);
            }
        }
        for (kind, n) in r.counts() {
            if n > SHOWN_PER_KIND {
                let _ = writeln!(
                    s,
                    "\n({} more {kind} anomalies in results.json)",
                    n - SHOWN_PER_KIND
                );
            }
        }
    }
    s
}
