//! `litemesh-chaos`: runs the chaos suite (see the crate docs and
//! docs/chaos.md).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::{Parser, Subcommand};

use litemesh_chaos::check::check;
use litemesh_chaos::history::History;
use litemesh_chaos::netns::{self, Namespace};
use litemesh_chaos::report;
use litemesh_chaos::run::{RunConfig, run};
use litemesh_chaos::schedule::ScheduleKind;

#[derive(Parser)]
#[command(
    name = "litemesh-chaos",
    about = "Real litemesh agents in a network namespace, real faults, every answer checked"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs the suite; exits 1 if the checker finds any anomaly, 2 if the run
    /// could not be carried out.
    Run(Box<RunArgs>),
    /// Checks a saved history again (`history.json` of an earlier run).
    Check {
        /// The history file.
        history: PathBuf,
    },
    /// Removes namespaces and processes left by runs that were killed.
    Cleanup,
}

#[derive(clap::Args, Clone)]
struct RunArgs {
    /// Number of agents.
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// Seed of the fault schedule and the clients.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// `ci`: every fault once (about 3 minutes); `random`: random faults for
    /// `--duration`; `sabotage`: loses acknowledged writes on purpose, so the
    /// run must fail (shows the checker sees data loss).
    #[arg(long, value_enum, default_value_t = ScheduleKind::Ci)]
    schedule: ScheduleKind,
    /// Length of a random schedule: `90s`, `30m`, `2h` (ignored by `ci`).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    duration: Duration,
    /// Clients per agent.
    #[arg(long, default_value_t = 2)]
    clients_per_node: usize,
    /// Mean pause between a client's requests, in milliseconds.
    #[arg(long, default_value_t = 25)]
    think_ms: u64,
    /// Mean pause between the hostile client's requests (statements the
    /// API's sandbox must refuse), in milliseconds; 0: no hostile client.
    #[arg(long, default_value_t = 500)]
    hostile_ms: u64,
    /// Mean pause between the large-value client's writes (values of 1–3.9
    /// MB that must replicate, rows over 4 MiB that must be refused), in
    /// milliseconds; 0: no large values.
    #[arg(long, default_value_t = 10000)]
    large_ms: u64,
    /// Rows written before the last agent joins.
    #[arg(long, default_value_t = 10_000)]
    preload: u64,
    /// The `litemesh` binary (default: next to this one).
    #[arg(long)]
    agent_bin: Option<PathBuf>,
    /// Folder for the agents' files, logs, the history and the results
    /// (default: a new folder under the system's temporary directory).
    #[arg(long)]
    out: Option<PathBuf>,
    /// `RUST_LOG` for the agents.
    #[arg(long, default_value = "info")]
    agent_log: String,
    /// Seconds the final convergence may take before the run fails.
    #[arg(long, default_value_t = 60)]
    converge_deadline: u64,
    /// The agents' retention policy (`litemesh agent --retention`), e.g.
    /// `2s`: tombstones of deleted registers are collected during the run.
    #[arg(long)]
    retention: Option<String>,
    /// The agents' `--forget-after`, e.g. `8s`: with a retention policy,
    /// nodes cut off (or stopped) longer than that are forgotten, both sides
    /// collect what the other lacks, and they come back by snapshot.
    #[arg(long)]
    forget_after: Option<String>,
    /// Internal: the namespace this process already runs in.
    #[arg(long, hide = true)]
    inside: Option<String>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| s.split_at(i));
    let n: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("bad duration unit in {s:?} (use s, m or h)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Cleanup => {
            if let Err(e) = netns::check_prerequisites() {
                eprintln!("litemesh-chaos: {e}");
                return ExitCode::from(2);
            }
            let removed = netns::sweep_stale();
            println!("removed {} stale namespace(s) {removed:?}", removed.len());
            ExitCode::SUCCESS
        }
        Cmd::Check { history } => {
            let h: History = match std::fs::read(&history)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            {
                Ok(h) => h,
                Err(e) => {
                    eprintln!("litemesh-chaos: {}: {e}", history.display());
                    return ExitCode::from(2);
                }
            };
            let result = check(&h);
            print!("{}", report::summary(&h, &result, None));
            if result.anomalies.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Cmd::Run(args) => match &args.inside {
            Some(_) => inside(*args),
            None => outside(*args),
        },
    }
}

/// Creates the namespace, re-executes this program inside it, and removes
/// the namespace and every process in it whatever happens.
fn outside(_args: RunArgs) -> ExitCode {
    if let Err(e) = netns::check_prerequisites() {
        eprintln!("litemesh-chaos: {e}");
        return ExitCode::from(2);
    }
    // Handlers first, so that an interruption from here on still removes
    // the namespace. SAFETY: the handler only stores to an atomic.
    unsafe {
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
    for stale in netns::sweep_stale() {
        eprintln!("litemesh-chaos: removed namespace {stale} left by an earlier run");
    }
    let name = Namespace::name_for(std::process::id());
    let ns = match Namespace::create(&name) {
        Ok(ns) => ns,
        Err(e) => {
            eprintln!("litemesh-chaos: {e}");
            return ExitCode::from(2);
        }
    };
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("litemesh-chaos: cannot find my own executable: {e}");
            return ExitCode::from(2);
        }
    };
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns.name()])
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .args(["--inside", ns.name()]);
    // SAFETY: prctl is async-signal-safe. The run dies with this process
    // (the setting survives the exec of `ip` and of the runner), so a
    // killed outer process leaves no run going on.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("litemesh-chaos: cannot enter the namespace: {e}");
            return ExitCode::from(2);
        }
    };
    let mut interrupted_at = None;
    let code = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st.code().unwrap_or(2),
            Ok(None) => {}
            Err(_) => break 2,
        }
        if INTERRUPTED.load(Ordering::SeqCst) {
            let t = *interrupted_at.get_or_insert_with(std::time::Instant::now);
            if t.elapsed() > Duration::from_secs(3) {
                let _ = child.kill();
            } else {
                // SAFETY: sending a signal has no memory-safety preconditions.
                unsafe {
                    libc::kill(child.id() as i32, libc::SIGTERM);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    drop(ns);
    if INTERRUPTED.load(Ordering::SeqCst) {
        eprintln!("litemesh-chaos: interrupted; namespace {name} and its processes removed");
        return ExitCode::from(2);
    }
    ExitCode::from(code.clamp(0, 255) as u8)
}

fn default_agent_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("litemesh")))
        .unwrap_or_else(|| PathBuf::from("litemesh"))
}

/// Marks a folder as made by this tool, so a later run may empty it.
const OUT_MARKER: &str = ".litemesh-chaos";

/// Makes `out` ready for a run: created if missing; emptied if an earlier run
/// made it (it would otherwise restart old databases); refused if it holds
/// anything else, since nothing but our own files may ever be deleted.
fn prepare_out(out: &Path) -> Result<(), String> {
    let show = out.display();
    if out.exists() {
        let mut entries = std::fs::read_dir(out).map_err(|e| format!("{show}: {e}"))?;
        if entries.next().is_some() {
            if !out.join(OUT_MARKER).is_file() {
                return Err(format!(
                    "{show} exists and was not made by litemesh-chaos: choose another --out \
                     (the folder of an earlier run is reused, nothing else is deleted)"
                ));
            }
            std::fs::remove_dir_all(out).map_err(|e| format!("emptying {show}: {e}"))?;
        }
    }
    std::fs::create_dir_all(out).map_err(|e| format!("{show}: {e}"))?;
    std::fs::write(
        out.join(OUT_MARKER),
        "made by litemesh-chaos; may be emptied by a later run\n",
    )
    .map_err(|e| format!("{show}: {e}"))
}

fn write_json(path: &Path, v: &impl serde::Serialize) -> Result<(), String> {
    let f = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::to_writer(std::io::BufWriter::new(f), v)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The run itself, in the namespace.
fn inside(args: RunArgs) -> ExitCode {
    let out = args.out.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!(
            "litemesh-chaos-seed{}-{}",
            args.seed,
            std::process::id()
        ))
    });
    if let Err(e) = prepare_out(&out) {
        eprintln!("litemesh-chaos: {e}");
        return ExitCode::from(2);
    }
    let cfg = RunConfig {
        nodes: args.nodes.max(3),
        seed: args.seed,
        schedule: args.schedule,
        duration: args.duration.as_secs_f64(),
        clients_per_node: args.clients_per_node.max(1),
        think: Duration::from_millis(args.think_ms),
        preload: args.preload,
        agent_bin: args.agent_bin.clone().unwrap_or_else(default_agent_bin),
        out: out.clone(),
        agent_log: args.agent_log.clone(),
        converge_deadline: Duration::from_secs(args.converge_deadline),
        hostile_every: Duration::from_millis(args.hostile_ms),
        large_every: Duration::from_millis(args.large_ms),
        retention: args.retention.clone(),
        forget_after: args.forget_after.clone(),
    };
    println!(
        "litemesh-chaos: {} nodes, seed {}, schedule {:?}, results in {}",
        cfg.nodes,
        cfg.seed,
        cfg.schedule,
        out.display()
    );
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(cfg.clone())));
    let (history, result) = match outcome {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            eprintln!("litemesh-chaos: the run could not be carried out: {e}");
            return ExitCode::from(2);
        }
        Err(_) => {
            eprintln!("litemesh-chaos: the runner panicked (a bug in the runner, not an anomaly)");
            return ExitCode::from(2);
        }
    };
    let summary = report::summary(&history, &result, Some(&cfg));
    print!("{summary}");
    let mut failed = false;
    for (file, res) in [
        (
            "history.json",
            write_json(&out.join("history.json"), &history),
        ),
        (
            "results.json",
            write_json(&out.join("results.json"), &result),
        ),
        (
            "summary.md",
            std::fs::write(out.join("summary.md"), &summary).map_err(|e| e.to_string()),
        ),
    ] {
        if let Err(e) = res {
            eprintln!("litemesh-chaos: writing {file}: {e}");
            failed = true;
        }
    }
    println!("history, results and agent logs in {}", out.display());
    if !result.anomalies.is_empty() {
        ExitCode::from(1)
    } else if failed {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("45").unwrap(), Duration::from_secs(45));
        assert!(parse_duration("3d").is_err());
        assert!(parse_duration("m").is_err());
    }
}
