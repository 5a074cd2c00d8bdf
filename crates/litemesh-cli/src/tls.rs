//! `litemesh tls`: the mesh CA and node certificates.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::CliResult;

/// `litemesh tls …`
#[derive(Args, Debug)]
pub struct TlsArgs {
    #[command(subcommand)]
    command: TlsCommand,
}

#[derive(Subcommand, Debug)]
enum TlsCommand {
    /// Make a new mesh CA: DIR/ca.pem (certificate) and DIR/ca.key (keep it
    /// offline).
    Ca {
        /// Folder for ca.pem and ca.key (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "litemesh CA")]
        common_name: String,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Make a node certificate signed by the CA: DIR2/NAME.pem and
    /// DIR2/NAME.key (valid as both server and client certificate).
    Node {
        /// Folder holding ca.pem and ca.key.
        #[arg(long, value_name = "DIR")]
        ca_dir: PathBuf,
        /// Node name (certificate common name; a DNS name or an IP address).
        #[arg(long)]
        name: String,
        /// Folder for NAME.pem and NAME.key (created if missing).
        #[arg(long, value_name = "DIR2")]
        out: PathBuf,
        /// The node's region, certified in the certificate: peers take the
        /// node's region from there, and the agent refuses a `--region`
        /// that contradicts it.
        #[arg(long, value_name = "R")]
        region: Option<String>,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
}

/// Writes `text` to `path` with `mode`, refusing to overwrite unless `force`.
fn write_file(path: &Path, text: &str, mode: u32, force: bool) -> Result<(), String> {
    let mut o = std::fs::File::options();
    o.write(true).mode(mode);
    if force {
        o.create(true).truncate(true);
    } else {
        o.create_new(true);
    }
    let mut f = o.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            format!("{} exists; pass --force to overwrite it", path.display())
        } else {
            format!("{}: {e}", path.display())
        }
    })?;
    f.write_all(text.as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    // `mode` only applies to new files.
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn mkdir(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))
}

/// Runs `litemesh tls …`.
pub fn run(args: TlsArgs) -> CliResult {
    match args.command {
        TlsCommand::Ca {
            out,
            common_name,
            force,
        } => {
            mkdir(&out)?;
            let (cert, key) =
                litemesh_transport::generate_ca(&common_name).map_err(|e| e.to_string())?;
            let (cp, kp) = (out.join("ca.pem"), out.join("ca.key"));
            write_file(&kp, &key, 0o600, force)?;
            write_file(&cp, &cert, 0o644, force)?;
            println!("wrote {} and {}", cp.display(), kp.display());
        }
        TlsCommand::Node {
            ca_dir,
            name,
            out,
            region,
            force,
        } => {
            if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
                return Err(format!("invalid node name {name:?}"));
            }
            let ca = read(&ca_dir.join("ca.pem"))?;
            let ca_key = read(&ca_dir.join("ca.key"))?;
            let (cert, key) =
                litemesh_transport::generate_node_cert_in(&ca, &ca_key, &name, region.as_deref())
                    .map_err(|e| e.to_string())?;
            mkdir(&out)?;
            let (cp, kp) = (
                out.join(format!("{name}.pem")),
                out.join(format!("{name}.key")),
            );
            write_file(&kp, &key, 0o600, force)?;
            write_file(&cp, &cert, 0o644, force)?;
            match region {
                Some(r) => println!("wrote {} and {} (region {r})", cp.display(), kp.display()),
                None => println!("wrote {} and {}", cp.display(), kp.display()),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
