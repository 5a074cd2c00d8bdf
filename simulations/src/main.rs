//! `litemesh-simulations`: run membership scenarios and print a report.
//!
//! ```text
//! litemesh-simulations membership [--nodes N] [--loss P] [--seed S] [--duration SECS]
//!     [--crashes K] [--update-every SECS] [--stall-nodes K --stall-every SECS --stall-for SECS]
//!     [--csv FILE] [--plot FILE.svg]
//! litemesh-simulations sweep [--sizes 10,100,1000] [--loss P] [--seed S] [--duration SECS]
//!     [--large-duration SECS] [--csv FILE] [--plot FILE.svg]
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
         litemesh-simulations replication [--nodes N] [--loss P] [--seed S] [--partition SECS]"
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
        "replication" => (|| {
            let params = litemesh_simulations::replication_scenario::ReplicationParams {
                nodes: get(&flags, "nodes", 5usize)?,
                loss: get(&flags, "loss", 0.1f64)?,
                seed: get(&flags, "seed", 1u64)?,
                partition: Duration::from_secs_f64(get(&flags, "partition", 60.0)?),
                ..Default::default()
            };
            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            let r = litemesh_simulations::replication_scenario::run(&params, dir.path());
            println!(
                "{} replicas, {:.0}% loss on broadcasts, {} s half/half partition with writes on both sides",
                params.nodes,
                params.loss * 100.0,
                params.partition.as_secs()
            );
            println!("writes: {}", r.writes);
            println!("rows: {}", r.content.len());
            println!(
                "messages delivered/dropped: {}/{}",
                r.messages.0, r.messages.1
            );
            match r.converge_after_heal {
                Some(t) => println!("converge_after_heal_s: {:.2}", t.as_secs_f64()),
                None => {
                    return Err("replicas did not converge within 120 s of simulated time".into());
                }
            }
            Ok(())
        })(),
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
