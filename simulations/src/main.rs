//! `litemesh-simulations`: run membership scenarios and print a report.
//!
//! ```text
//! litemesh-simulations membership [--nodes N] [--loss P] [--seed S] [--duration SECS]
//!     [--crashes K] [--update-every SECS] [--stall-nodes K --stall-every SECS --stall-for SECS]
//!     [--csv FILE] [--plot FILE.svg]
//! litemesh-simulations sweep [--sizes 10,100,1000] [--loss P] [--seed S] [--duration SECS]
//!     [--large-duration SECS] [--csv FILE] [--plot FILE.svg]
//! litemesh-simulations mesh [--nodes N] [--seeds A..B] [--faults K] [--loss P] [--jobs J]
//!     [--retention SECS] [--long-absence SECS]
//! litemesh-simulations regions [--nodes 200,1000] [--regions 1,2,4,8] [--writes W]
//!     [--cut-secs S] [--cut-nodes 200] [--seed S] [--jobs J] [--md FILE]
//! ```

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use litemesh_simulations::membership_scenario::{StandardOptions, run_standard};
use litemesh_simulations::report::{Panel, Summary, markdown_header, svg_cdf};

fn usage() -> ExitCode {
    eprintln!(
        "usage:\n  litemesh-simulations membership [--nodes N] [--loss P] [--seed S] [--duration SECS] \
         [--crashes K] [--update-every SECS] [--stall-nodes K] [--stall-every SECS] [--stall-for SECS] \
         [--csv FILE] [--plot FILE.svg]\n  litemesh-simulations sweep [--sizes 10,100,1000,5000] [--loss P] \
         [--seed S] [--duration SECS] [--large-duration SECS] [--csv FILE] [--plot FILE.svg]\n  \
         litemesh-simulations mesh [--nodes N] [--seeds A..B] [--faults K] [--loss P] [--jobs J] \
         [--retention SECS] [--long-absence SECS]\n  \
         litemesh-simulations regions [--nodes 200,1000] [--regions 1,2,4,8] [--writes W] \
         [--cut-secs S] [--cut-nodes N,…] [--seed S] [--jobs J] [--md FILE]"
    );
    ExitCode::from(2)
}

fn parse_flags(args: &[String]) -> Option<BTreeMap<String, String>> {
    let mut m = BTreeMap::new();
    let mut it = args.iter();
    while let Some(k) = it.next() {
        let k = k.strip_prefix("--")?;
        let v = it.next()?;
        m.insert(k.to_string(), v.clone());
    }
    Some(m)
}

fn get<T: std::str::FromStr>(f: &BTreeMap<String, String>, k: &str, d: T) -> Result<T, String> {
    match f.get(k) {
        None => Ok(d),
        Some(v) => v
            .parse()
            .map_err(|_| format!("invalid value for --{k}: {v}")),
    }
}

fn options(f: &BTreeMap<String, String>, nodes: usize) -> Result<StandardOptions, String> {
    let loss = get(f, "loss", 0.05)?;
    let seed = get(f, "seed", 1u64)?;
    let mut o = StandardOptions::new(nodes, loss, seed);
    o.duration = Duration::from_secs_f64(get(f, "duration", o.duration.as_secs_f64())?);
    o.crashes = get(f, "crashes", o.crashes)?;
    o.update_every = Duration::from_secs_f64(get(f, "update-every", o.update_every.as_secs_f64())?);
    let stall_nodes: usize = get(f, "stall-nodes", 0)?;
    if stall_nodes > 0 {
        o.stalls = Some((
            stall_nodes,
            Duration::from_secs_f64(get(f, "stall-every", 30.0)?),
            Duration::from_secs_f64(get(f, "stall-for", 2.0)?),
        ));
    }
    if o.duration < Duration::from_secs(60) {
        return Err("--duration must be at least 60 s".into());
    }
    Ok(o)
}

fn run_one(o: &StandardOptions) -> Summary {
    let t = Instant::now();
    let r = run_standard(o);
    Summary::new(o, &r, t.elapsed())
}

fn write_outputs(f: &BTreeMap<String, String>, rows: &[Summary]) -> Result<(), String> {
    if let Some(path) = f.get("csv") {
        let mut s = String::from(Summary::csv_header());
        s.push('\n');
        for r in rows {
            s.push_str(&r.csv_row());
            s.push('\n');
        }
        std::fs::write(path, s).map_err(|e| format!("writing {path}: {e}"))?;
    }
    if let Some(path) = f.get("plot") {
        let label = |r: &Summary| format!("N={}", r.nodes);
        let svg = svg_cdf(&[
            Panel {
                title: "Failure detection (crash → dead), per observer".into(),
                xlabel: "seconds".into(),
                series: rows
                    .iter()
                    .map(|r| (label(r), r.detect_samples.clone()))
                    .collect(),
            },
            Panel {
                title: "Dissemination (update → every member)".into(),
                xlabel: "seconds".into(),
                series: rows
                    .iter()
                    .map(|r| (label(r), r.coverage_samples.clone()))
                    .collect(),
            },
        ]);
        std::fs::write(path, svg).map_err(|e| format!("writing {path}: {e}"))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        return usage();
    };
    let Some(flags) = parse_flags(&args[1..]) else {
        return usage();
    };
    let result = match cmd.as_str() {
        "membership" => (|| {
            let o = options(&flags, get(&flags, "nodes", 100usize)?)?;
            let s = run_one(&o);
            write_outputs(&flags, std::slice::from_ref(&s))?;
            println!("{}", s.text());
            Ok::<(), String>(())
        })(),
        "sweep" => (|| {
            let sizes: Vec<usize> = flags
                .get("sizes")
                .map(String::as_str)
                .unwrap_or("10,100,1000,5000")
                .split(',')
                .map(|x| x.trim().parse().map_err(|_| format!("bad size {x}")))
                .collect::<Result<_, _>>()?;
            let mut rows = Vec::new();
            for n in sizes {
                let mut o = options(&flags, n)?;
                if n >= 5000 {
                    o.duration = Duration::from_secs_f64(get(&flags, "large-duration", 120.0)?);
                }
                let s = run_one(&o);
                eprintln!("{}", s.text());
                rows.push(s);
            }
            write_outputs(&flags, &rows)?;
            println!("{}", markdown_header());
            for r in &rows {
                println!("{}", r.markdown_row());
            }
            Ok(())
        })(),
        "mesh" => mesh(&flags),
        "regions" => regions(&flags),
        _ => return usage(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `mesh`: a sweep of seeds of the mixed-fault whole-node scenario.
fn mesh(flags: &BTreeMap<String, String>) -> Result<(), String> {
    use litemesh_simulations::mesh::{MeshParams, run};
    let nodes = get(flags, "nodes", 5usize)?;
    let faults = get(flags, "faults", 4usize)?;
    let loss = get(flags, "loss", 0.02f64)?;
    let range = flags.get("seeds").map(String::as_str).unwrap_or("1..20");
    let (a, b) = range
        .split_once("..")
        .ok_or_else(|| format!("--seeds takes A..B, not {range}"))?;
    let a: u64 = a.trim().parse().map_err(|_| format!("bad seed {a}"))?;
    let b: u64 = b.trim().parse().map_err(|_| format!("bad seed {b}"))?;
    if b < a {
        return Err("--seeds A..B needs A <= B".into());
    }
    let jobs = get(flags, "jobs", 1usize)?.max(1);
    // --retention SECS: every node collects tombstones by that policy, and
    // the workload deletes and re-inserts keys.
    let retention = match flags.get("retention") {
        Some(s) => Some(std::time::Duration::from_secs_f64(
            s.parse::<f64>()
                .ok()
                .filter(|v| *v >= 0.0 && *v < 1e6)
                .ok_or_else(|| format!("bad --retention value {s}"))?,
        )),
        None => None,
    };
    // --long-absence SECS: after the faults the last node is cut off alone
    // that long (forget-after a third of it), and must come back by
    // snapshot.
    let long_absence = match flags.get("long-absence") {
        Some(s) => Some(std::time::Duration::from_secs_f64(
            s.parse::<f64>()
                .ok()
                .filter(|v| *v >= 3.0 && *v < 1e6)
                .ok_or_else(|| format!("bad --long-absence value {s}"))?,
        )),
        None => None,
    };
    let settle = std::time::Duration::from_secs(if retention.is_some() { 120 } else { 60 });
    let mut snapshots = (0u64, 0u64, 0u64);
    let started = std::time::Instant::now();
    let mut collected_total = 0;
    let mut collected = Vec::new();
    let mut conv = Vec::new();
    let mut memb = Vec::new();
    let mut failed = Vec::new();
    let mut acked = 0;
    // Counters: increments acknowledged, keys incremented, keys exact on
    // every node at the end.
    let mut counters = (0u64, 0usize, 0usize);
    // Seeds are independent: `jobs` threads take them in turn; the results
    // are reported in seed order.
    let next = std::sync::atomic::AtomicU64::new(a);
    let results = std::sync::Mutex::new(BTreeMap::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if seed > b {
                        break;
                    }
                    let Ok(dir) = tempfile::tempdir() else { break };
                    let p = MeshParams {
                        nodes,
                        seed,
                        faults,
                        loss,
                        retention,
                        settle,
                        long_absence,
                        ..MeshParams::default()
                    };
                    let r = run(&p, dir.path());
                    results
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(seed, r);
                }
            });
        }
    });
    let results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    if results.len() as u64 != b - a + 1 {
        return Err("could not create a temporary folder for every seed".into());
    }
    for (seed, r) in results {
        acked += r.acked;
        counters.0 += r.counter_increments;
        counters.1 += r.counter_keys;
        counters.2 += r.counters_exact;
        collected_total += r.tombstones_collected;
        snapshots.0 += r.snapshots;
        snapshots.1 += r.snapshot_dropped;
        snapshots.2 += r.snapshot_rebased;
        if let Some(c) = r.collected_after {
            collected.push(c.as_secs_f64());
        }
        if let Some(c) = r.converged_after {
            conv.push(c.as_secs_f64());
        }
        if let Some(m) = r.members_after {
            memb.push(m.as_secs_f64());
        }
        let kinds: Vec<String> = r
            .faults
            .iter()
            .map(|(f, d)| format!("{f:?} {:.1}s", d.as_secs_f64()))
            .collect();
        if r.violations.is_empty() {
            eprintln!(
                "seed {seed}: ok, {} acked, converged {:.2} s, members {:.2} s after the heal [{}]",
                r.acked,
                r.converged_after.map_or(f64::NAN, |d| d.as_secs_f64()),
                r.members_after.map_or(f64::NAN, |d| d.as_secs_f64()),
                kinds.join(", ")
            );
        } else {
            eprintln!("seed {seed}: FAILED [{}]", kinds.join(", "));
            for v in r.violations.iter().take(10) {
                eprintln!("  {v}");
            }
            eprintln!(
                "  replay: cargo run --release -p litemesh-simulations -- mesh --nodes {nodes} \
                 --faults {faults} --loss {loss} --seeds {seed}..{seed}{}",
                retention.map_or(String::new(), |r| format!(
                    " --retention {}",
                    r.as_secs_f64()
                )) + &long_absence.map_or(String::new(), |a| format!(
                    " --long-absence {}",
                    a.as_secs_f64()
                ))
            );
            failed.push(seed);
        }
    }
    let pct = |v: &mut Vec<f64>, q: f64| -> f64 {
        if v.is_empty() {
            return f64::NAN;
        }
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * q).round() as usize]
    };
    let n = b - a + 1;
    println!(
        "mesh sweep: {n} seeds ({range}), {nodes} nodes, {faults} faults each, {:.0}% background loss; {:.0} s",
        loss * 100.0,
        started.elapsed().as_secs_f64()
    );
    println!("transactions acknowledged: {acked}");
    println!(
        "counters: {} increments acknowledged on {} keys; {} of {} equal on every node to the sum \
         of their acknowledged deltas",
        counters.0, counters.1, counters.2, counters.1
    );
    println!(
        "replicas identical after the heal: p50 {:.2} s, p99 {:.2} s, max {:.2} s",
        pct(&mut conv, 0.5),
        pct(&mut conv, 0.99),
        pct(&mut conv, 1.0)
    );
    println!(
        "every member alive everywhere after the heal: p50 {:.2} s, p99 {:.2} s, max {:.2} s",
        pct(&mut memb, 0.5),
        pct(&mut memb, 0.99),
        pct(&mut memb, 1.0)
    );
    if let Some(r) = retention {
        println!(
            "retention {:.0} s: {collected_total} tombstones collected; none left after the heal: \
             p50 {:.2} s, p99 {:.2} s, max {:.2} s",
            r.as_secs_f64(),
            pct(&mut collected, 0.5),
            pct(&mut collected, 0.99),
            pct(&mut collected, 1.0)
        );
    }
    if long_absence.is_some() {
        println!(
            "snapshot catch-ups: {} ({} rows dropped as deleted meanwhile, {} own rows rebased)",
            snapshots.0, snapshots.1, snapshots.2
        );
    }
    if failed.is_empty() {
        println!("violations: none");
        Ok(())
    } else {
        Err(format!("{} seed(s) failed: {failed:?}", failed.len()))
    }
}

fn list(flags: &BTreeMap<String, String>, k: &str, d: &str) -> Result<Vec<usize>, String> {
    flags
        .get(k)
        .map(String::as_str)
        .unwrap_or(d)
        .split(',')
        .filter(|x| !x.trim().is_empty())
        .map(|x| x.trim().parse().map_err(|_| format!("bad --{k} value {x}")))
        .collect()
}

/// `regions`: convergence against the number of regions, region-aware
/// dissemination side by side with region-blind.
fn regions(flags: &BTreeMap<String, String>) -> Result<(), String> {
    use litemesh_simulations::regions::{RegionParams, RegionReport, run};
    let sizes = list(flags, "nodes", "200,1000")?;
    let counts = list(flags, "regions", "1,2,4,8")?;
    let cut_nodes = list(flags, "cut-nodes", "200")?;
    let writes = get(flags, "writes", 20usize)?;
    let cut = Duration::from_secs(get(flags, "cut-secs", 600u64)?);
    let seed = get(flags, "seed", 1u64)?;
    let loss = get(flags, "loss", 0.0f64)?;
    let jobs = get(flags, "jobs", 1usize)?.max(1);
    if counts.iter().any(|&r| r == 0 || r > 8) {
        return Err("--regions: 1 to 8".into());
    }
    let mut todo = Vec::new();
    for &n in &sizes {
        for &r in &counts {
            // One region: nothing to be aware of; run it once.
            for aware in if r == 1 {
                vec![true]
            } else {
                vec![true, false]
            } {
                let cut = (r > 1 && cut_nodes.contains(&n)).then_some(cut);
                todo.push(RegionParams {
                    nodes: n,
                    regions: r,
                    aware,
                    seed,
                    writes,
                    cut,
                    loss,
                });
            }
        }
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: std::sync::Mutex<BTreeMap<usize, RegionReport>> = Default::default();
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Some(p) = todo.get(i) else { break };
                    let Ok(dir) = tempfile::tempdir() else { break };
                    let r = run(p, dir.path());
                    eprintln!(
                        "{} nodes, {} regions, {}: done in {:.0} s{}",
                        p.nodes,
                        p.regions,
                        if p.aware { "aware" } else { "blind" },
                        r.wall.as_secs_f64(),
                        if r.violations.is_empty() {
                            String::new()
                        } else {
                            format!(" — {:?}", r.violations)
                        }
                    );
                    results
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(i, r);
                }
            });
        }
    });
    let results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    let ms = |d: Option<Duration>| {
        d.map_or("-".to_string(), |d| format!("{:.0}", d.as_secs_f64() * 1e3))
    };
    let mut out = String::new();
    out.push_str(&format!(
        "regions sweep: seed {seed}, {writes} writes measured per run, loss {:.0}%, cut of region 0: {} s\n\n",
        loss * 100.0,
        cut.as_secs()
    ));
    out.push_str(
        "| nodes | regions | dissemination | write → every node p50 / p99 / max (ms) | \
         cross-region broadcast bytes per write | cross-region sync bytes/s | \
         all cross-region bytes per write | after a cut of region 0: healed in | run (s) |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    let mut failed = false;
    for r in results.values() {
        let mut v: Vec<Duration> = r.reach.iter().flatten().copied().collect();
        v.sort();
        let pick = |q: f64| (!v.is_empty()).then(|| v[((v.len() - 1) as f64 * q).round() as usize]);
        let missed = r.reach.iter().filter(|x| x.is_none()).count();
        let p = &r.params;
        out.push_str(&format!(
            "| {} | {} | {} | {} / {} / {}{} | {:.0} | {:.0} | {:.0} | {} | {:.0} |\n",
            p.nodes,
            p.regions,
            if p.regions == 1 {
                "(one region)"
            } else if p.aware {
                "region-aware"
            } else {
                "region-blind"
            },
            ms(pick(0.5)),
            ms(pick(0.99)),
            ms(pick(1.0)),
            if missed > 0 {
                format!(" ({missed} not everywhere in 30 s)")
            } else {
                String::new()
            },
            r.cross_broadcast_bytes,
            r.cross_sync_bytes_per_s,
            r.cross_total_bytes,
            match r.healed_after {
                None => "-".to_string(),
                Some(None) => "NOT within 300 s".to_string(),
                Some(Some(d)) => format!(
                    "{:.2} s ({} writes during the cut)",
                    d.as_secs_f64(),
                    r.cut_writes
                ),
            },
            r.wall.as_secs_f64()
        ));
        failed |= !r.violations.is_empty() || missed > 0;
    }
    print!("{out}");
    if let Some(path) = flags.get("md") {
        std::fs::write(path, &out).map_err(|e| format!("writing {path}: {e}"))?;
    }
    if failed {
        Err("some replicas did not converge (see above)".into())
    } else {
        Ok(())
    }
}
