//! `litemesh`: the command line of the litemesh replication mesh.
//!
//! - `litemesh agent` runs one node and its HTTP API;
//! - `litemesh tls ca|node` makes the mesh's certificates;
//! - `litemesh exec|query|members|status` talk to an agent's HTTP API;
//! - `litemesh demo` runs a small mesh in one process, partitions and heals it;
//! - `litemesh backup|restore` copy a running node's file, and make a new
//!   node from a copy.

mod agent;
mod api;
mod backup;
mod client;
mod demo;
mod json;
mod server;
mod tls;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Peer-to-peer SQLite replication mesh.
#[derive(Parser, Debug)]
#[command(name = "litemesh", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one node of the mesh, with its HTTP API.
    Agent(Box<agent::AgentArgs>),
    /// Make the mesh's TLS certificates.
    Tls(tls::TlsArgs),
    /// Run SQL statements as one transaction on an agent.
    Exec(client::ExecArgs),
    /// Run a read-only query on an agent and print the rows.
    Query(client::QueryArgs),
    /// Show an agent's view of the mesh membership.
    Members(client::ApiArgs),
    /// Show an agent's versions, peers and replication lag.
    Status(client::ApiArgs),
    /// Run a small mesh in this process: writes, a partition, its healing.
    Demo(demo::DemoArgs),
    /// What an agent keeps and for how long: tombstones, the change log,
    /// how far back versions can be served, absences seen.
    Retention(client::ApiArgs),
    /// Take a consistent copy of an agent's node file, while it runs.
    Backup(backup::BackupArgs),
    /// Make a node file from a backup: a new node (new identity, data kept).
    Restore(backup::RestoreArgs),
}

/// Client commands behave like other Unix tools when their output is cut
/// short (`litemesh status | head`): they end quietly on SIGPIPE instead of
/// panicking on a broken pipe. The agent keeps Rust's default (ignored).
fn default_sigpipe() {
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread
    // is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(
        cli.command,
        Command::Exec(_)
            | Command::Query(_)
            | Command::Members(_)
            | Command::Status(_)
            | Command::Backup(_)
            | Command::Retention(_)
    ) {
        default_sigpipe();
    }
    let result = match cli.command {
        Command::Agent(a) => agent::run(*a),
        Command::Tls(a) => tls::run(a),
        Command::Exec(a) => client::exec(a),
        Command::Query(a) => client::query(a),
        Command::Members(a) => client::members(a),
        Command::Status(a) => client::status(a),
        Command::Demo(a) => demo::run(a),
        Command::Backup(a) => backup::backup(a),
        Command::Retention(a) => client::retention(a),
        Command::Restore(a) => backup::restore(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("litemesh: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Errors of the command line: a message for the user.
pub type CliResult = Result<ExitCode, String>;
