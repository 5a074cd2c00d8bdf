//! `litemesh backup` and `litemesh restore`: an online copy of a node's
//! file through its agent, and a new node made from one.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use litemesh_client::Client;

use crate::CliResult;

/// `litemesh backup`
#[derive(Args, Debug)]
pub struct BackupArgs {
    /// The agent's HTTP API address.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8787")]
    api: String,
    /// Where to write the copy (must not exist).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

/// `litemesh restore`
#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The backup to restore (it is not changed).
    #[arg(value_name = "BACKUP")]
    from: PathBuf,
    /// The node file to make (must not exist): start an agent on it.
    #[arg(long, value_name = "FILE")]
    db: PathBuf,
}

/// Takes a consistent copy of the agent's node file, while it runs.
pub fn backup(a: BackupArgs) -> CliResult {
    if a.out.exists() {
        return Err(format!("{} already exists", a.out.display()));
    }
    let mut part = a.out.clone().into_os_string();
    part.push(".part");
    let part = PathBuf::from(part);
    let written = (|| -> Result<u64, String> {
        let mut f = std::fs::File::create(&part)
            .map_err(|e| format!("cannot write {}: {e}", part.display()))?;
        let client = Client::builder().no_timeout().build(&a.api);
        let n = client.backup(&mut f).map_err(|e| e.to_string())?;
        f.flush()
            .and_then(|()| f.sync_all())
            .map_err(|e| format!("cannot write {}: {e}", part.display()))?;
        Ok(n)
    })();
    let info = written.and_then(|_| {
        litemesh::inspect_backup(&part).map_err(|e| format!("the copy is not usable: {e}"))
    });
    let info = match info {
        Ok(i) => i,
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            return Err(e);
        }
    };
    std::fs::rename(&part, &a.out).map_err(|e| format!("cannot write {}: {e}", a.out.display()))?;
    println!(
        "backup of {} written to {}: {} bytes, {} tables, {} versions, actor {}",
        a.api,
        a.out.display(),
        info.bytes,
        info.tables.len(),
        info.versions,
        info.actor
    );
    println!(
        "restore it as a new node with: litemesh restore {} --db NEW.db",
        a.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Makes a node file from a backup, with a new identity.
pub fn restore(a: RestoreArgs) -> CliResult {
    let r = litemesh::restore(&a.from, &a.db).map_err(|e| e.to_string())?;
    println!(
        "restored {} into {}: a new node, writing as actor {} ({} versions held; the \
         backup's actor {} is one of its peers now, and what it wrote after the backup \
         comes back from the nodes that hold it)",
        a.from.display(),
        a.db.display(),
        r.new_actor,
        r.versions,
        r.old_actor
    );
    println!(
        "start it with: litemesh agent --db {} --seed <a member> …",
        a.db.display()
    );
    Ok(ExitCode::SUCCESS)
}
