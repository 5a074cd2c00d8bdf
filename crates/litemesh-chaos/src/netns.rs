//! The network namespace a run lives in, and the iptables rules that make its
//! network faults.
//!
//! A run creates `lmchaos-<pid>`, brings its loopback up and re-executes the
//! runner inside it (`ip netns exec`). Every agent binds its own loopback
//! address (`127.0.0.10`, `127.0.0.11`, …): all of `127.0.0.0/8` is local on
//! Linux, so no address needs adding. Faults are rules in one chain,
//! `LMCHAOS`, jumped to from `INPUT`, matching UDP only: the agents' QUIC
//! traffic (membership, broadcast, sync) is cut or thinned, while the clients'
//! HTTP requests to their own agent, which are TCP, always get through, as for
//! an application running beside its agent.

use std::process::{Command, Stdio};

/// A failure to set up or drive the namespace or its firewall.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A command the suite needs is missing or refused to work.
    #[error("{0}")]
    Unavailable(String),
    /// A command failed.
    #[error("`{cmd}` failed: {stderr}")]
    Command {
        /// The command line.
        cmd: String,
        /// What it printed on stderr.
        stderr: String,
    },
}

/// Runs `iptables ARGS…`, waiting up to 5 s for the xtables lock (another
/// firewall tool may hold it for a moment).
fn iptables(args: &[&str]) -> Result<String, NetError> {
    let mut all = vec!["-w", "5"];
    all.extend_from_slice(args);
    sh("iptables", &all)
}

/// Runs a command to completion; its stderr becomes the error.
pub fn sh(program: &str, args: &[&str]) -> Result<String, NetError> {
    let cmd = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| NetError::Command {
            cmd: cmd.clone(),
            stderr: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(NetError::Command {
            cmd,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Checks that the run can create namespaces and firewall rules: root, `ip`
/// and `iptables` present. Says what is missing and how to get it.
pub fn check_prerequisites() -> Result<(), NetError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(NetError::Unavailable(
            "the chaos suite needs root (it creates a network namespace and iptables rules); \
             run it with sudo or as root"
                .into(),
        ));
    }
    for (tool, package) in [("ip", "iproute2"), ("iptables", "iptables")] {
        if which(tool).is_none() {
            return Err(NetError::Unavailable(format!(
                "`{tool}` not found: install it (Debian/Ubuntu: apt-get install {package})"
            )));
        }
    }
    Ok(())
}

fn which(tool: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// A network namespace, deleted (with every process still in it) on drop.
pub struct Namespace {
    name: String,
}

impl Namespace {
    /// The name used by the run of process `pid`.
    pub fn name_for(pid: u32) -> String {
        format!("lmchaos-{pid}")
    }

    /// Creates the namespace and brings its loopback up.
    pub fn create(name: &str) -> Result<Namespace, NetError> {
        sh("ip", &["netns", "add", name]).map_err(|e| {
            NetError::Unavailable(format!("cannot create network namespace {name}: {e}"))
        })?;
        let ns = Namespace { name: name.into() };
        sh("ip", &["-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Kills every process in the namespace and deletes it.
    pub fn destroy(&self) {
        kill_all_in(&self.name);
        if let Err(e) = sh("ip", &["netns", "del", &self.name]) {
            eprintln!("chaos: could not delete namespace {}: {e}", self.name);
        }
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        self.destroy();
    }
}

fn kill_all_in(name: &str) {
    if let Ok(pids) = sh("ip", &["netns", "pids", name]) {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // SAFETY: sending a signal has no memory-safety preconditions.
            unsafe {
                libc::kill(pid, libc::SIGCONT);
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// Removes namespaces left by runs whose process is gone (a runner killed
/// with SIGKILL cannot clean up after itself). Returns their names.
pub fn sweep_stale() -> Vec<String> {
    let Ok(list) = sh("ip", &["netns", "list"]) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(pid) = name.strip_prefix("lmchaos-") else {
            continue;
        };
        // Still running (a reused pid does not count).
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains("litemesh-chaos") {
            continue;
        }
        kill_all_in(name);
        if sh("ip", &["netns", "del", name]).is_ok() {
            removed.push(name.to_string());
        }
    }
    removed
}

/// One directed firewall rule: drop UDP from `from` to `to` (any address when
/// `None`) with probability `p` (1.0: always).
#[derive(Debug, Clone, PartialEq)]
pub struct DropRule {
    /// Source address, or any.
    pub from: Option<String>,
    /// Destination address, or any.
    pub to: Option<String>,
    /// Drop probability in `(0, 1]`.
    pub p: f64,
}

/// The fault chain of the namespace the process runs in.
pub struct Firewall {
    chain: &'static str,
}

impl Firewall {
    /// Creates the `LMCHAOS` chain and jumps to it from `INPUT`. Fails, saying
    /// why, when iptables does not work here (no kernel support, no rights).
    pub fn init() -> Result<Firewall, NetError> {
        let fw = Firewall { chain: "LMCHAOS" };
        let unavailable =
            |e: NetError| NetError::Unavailable(format!("iptables does not work here: {e}"));
        if iptables(&["-n", "-L", fw.chain]).is_err() {
            iptables(&["-N", fw.chain]).map_err(unavailable)?;
            iptables(&["-A", "INPUT", "-j", fw.chain]).map_err(unavailable)?;
        }
        // Probe the statistic match once so a kernel without it fails here,
        // not in the middle of the run.
        fw.apply(&[DropRule {
            from: Some("127.0.0.254".into()),
            to: None,
            p: 0.5,
        }])
        .map_err(unavailable)?;
        fw.heal()?;
        Ok(fw)
    }

    /// Adds the rules (on top of those already in place).
    pub fn apply(&self, rules: &[DropRule]) -> Result<(), NetError> {
        for r in rules {
            let mut args: Vec<String> =
                vec!["-A".into(), self.chain.into(), "-p".into(), "udp".into()];
            if let Some(f) = &r.from {
                args.extend(["-s".into(), f.clone()]);
            }
            if let Some(t) = &r.to {
                args.extend(["-d".into(), t.clone()]);
            }
            if r.p < 1.0 {
                args.extend([
                    "-m".into(),
                    "statistic".into(),
                    "--mode".into(),
                    "random".into(),
                    "--probability".into(),
                    format!("{:.4}", r.p),
                ]);
            }
            args.extend(["-j".into(), "DROP".into()]);
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            iptables(&refs)?;
        }
        Ok(())
    }

    /// Removes every fault rule.
    pub fn heal(&self) -> Result<(), NetError> {
        iptables(&["-F", self.chain]).map(|_| ())
    }

    /// The rules in place, as iptables prints them.
    pub fn listing(&self) -> String {
        iptables(&["-S", self.chain]).unwrap_or_default()
    }
}
