//! `litemesh agent`: one node and its HTTP API.

use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use std::time::Duration;

use clap::Args;
use litemesh::{HealthThresholds, Node, Settings, Tls};
use serde::Deserialize;

use crate::CliResult;
use crate::api::{AppState, HttpStats, router};
use crate::server::{self, HttpLimits};

const DEFAULT_API: &str = "127.0.0.1:8787";
const DEFAULT_LISTEN: &str = "127.0.0.1:8788";
const DEFAULT_HEALTH_MAX_BEHIND: u64 = 1000;
const DEFAULT_HEALTH_MAX_LAG: Duration = Duration::from_secs(30);
const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_MAX_QUERY_ROWS: u64 = 1_000_000;
const DEFAULT_MAX_CONNECTIONS: u64 = 1024;
const DEFAULT_FORGET_AFTER: Duration = Duration::from_secs(3 * 24 * 3600);
/// Time a client has to send a request's headers, and most idle time of a
/// kept-alive connection; sending a body and reading an answer may stall
/// three times as long.
const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// After SIGTERM/SIGINT the agent exits within this long, whatever runs.
const STOP_WITHIN: Duration = Duration::from_secs(10);

/// Flags of `litemesh agent` (each may also be set in the `--config` file).
#[derive(Args, Debug, Default)]
pub struct AgentArgs {
    /// TOML file with any of these settings (keys named like the flags, `_`
    /// for `-`); flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The node's SQLite file; created if missing (required).
    #[arg(long, value_name = "PATH")]
    pub db: Option<PathBuf>,
    /// UDP address for QUIC; port 0 picks one [default: 127.0.0.1:8788].
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<String>,
    /// The QUIC address peers reach this node at, when it differs from
    /// `--listen` (required with a wildcard `--listen` such as 0.0.0.0:7400;
    /// port 0: the bound port) [default: the bound address].
    #[arg(long, value_name = "ADDR:PORT")]
    pub advertise: Option<String>,
    /// A node of the mesh to join by (repeatable; host names allowed). None:
    /// this is the first node of a new mesh.
    #[arg(long, value_name = "ADDR:PORT")]
    pub seed: Vec<String>,
    /// HTTP API address [default: 127.0.0.1:8787].
    #[arg(long, value_name = "ADDR:PORT")]
    pub api: Option<String>,
    /// `.sql` file or folder of them (sorted by name): CREATE TABLE / CREATE
    /// INDEX statements, applied at start (additive only). Repeatable.
    #[arg(long, value_name = "PATH")]
    pub schema: Vec<PathBuf>,
    /// Node name [default: host name and QUIC port].
    #[arg(long)]
    pub name: Option<String>,
    /// Region. Taken from the node certificate (`litemesh tls node
    /// --region`); if given, it must be the certified one (under --insecure
    /// it is only a label).
    #[arg(long)]
    pub region: Option<String>,
    /// A partial replica: carry only these tables (comma-separated or
    /// repeated); rows of the others never enter this node's file.
    /// Default: every table its region may hold.
    #[arg(long, value_name = "TABLE", value_delimiter = ',')]
    pub tables: Vec<String>,
    /// Mesh CA certificate (PEM).
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// This node's certificate (PEM, signed by the CA).
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// No peer authentication (local experiments only).
    #[arg(long)]
    pub insecure: bool,
    /// `/v1/health` answers 503 when more than this many versions of a
    /// reachable writer (or of a peer) are missing here [default: 1000].
    #[arg(long, value_name = "N")]
    pub health_max_behind: Option<u64>,
    /// `/v1/health` answers 503 when a reachable writer's data is staler than
    /// this here, e.g. `30s`, `2m` [default: 30s].
    #[arg(long, value_name = "DURATION")]
    pub health_max_lag: Option<String>,
    /// Time limit of a query, e.g. `30s` [default: 30s].
    #[arg(long, value_name = "DURATION")]
    pub query_timeout: Option<String>,
    /// Time limit of a transaction (it holds the node's writer) [default: 30s].
    #[arg(long, value_name = "DURATION")]
    pub transaction_timeout: Option<String>,
    /// Most rows a query returns; past it the answer ends with an error event
    /// (0: no limit) [default: 1000000].
    #[arg(long, value_name = "N")]
    pub max_query_rows: Option<u64>,
    /// Most HTTP API connections open at once [default: 1024].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<u64>,
    /// Time an HTTP client has to send a request's headers, and most idle
    /// time of a kept-alive connection; sending a body or reading an answer
    /// may stall three times as long [default: 10s].
    #[arg(long, value_name = "DURATION")]
    pub http_timeout: Option<String>,
    /// Forget a member not seen for this long (it is no longer rejoined nor
    /// counted as known), e.g. `72h` [default: 3d].
    #[arg(long, value_name = "DURATION")]
    pub forget_after: Option<String>,
    /// Retention policy: once every node holds a row's delete, keep its
    /// tombstone this much longer, then collect it, e.g. `7d`; `off` keeps
    /// every tombstone forever. Set the same on every node (docs/retention.md)
    /// [default: off].
    #[arg(long, value_name = "DURATION")]
    pub retention: Option<String>,
}

/// A setting given once or as a list.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    fn into_vec(self) -> Vec<T> {
        match self {
            OneOrMany::One(x) => vec![x],
            OneOrMany::Many(v) => v,
        }
    }
}

/// The `--config` file.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    db: Option<PathBuf>,
    listen: Option<String>,
    advertise: Option<String>,
    seed: Option<OneOrMany<String>>,
    api: Option<String>,
    schema: Option<OneOrMany<PathBuf>>,
    name: Option<String>,
    region: Option<String>,
    tables: Option<OneOrMany<String>>,
    tls_ca: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    insecure: Option<bool>,
    health_max_behind: Option<u64>,
    health_max_lag: Option<String>,
    query_timeout: Option<String>,
    transaction_timeout: Option<String>,
    max_query_rows: Option<u64>,
    max_connections: Option<u64>,
    http_timeout: Option<String>,
    forget_after: Option<String>,
    retention: Option<String>,
}

/// Settings after merging the file and the flags.
#[derive(Debug)]
struct Resolved {
    db: PathBuf,
    listen: SocketAddr,
    advertise: Option<SocketAddr>,
    seeds: Vec<SocketAddr>,
    api: SocketAddr,
    schema: Vec<String>,
    name: Option<String>,
    region: Option<String>,
    tables: Option<Vec<String>>,
    tls: Tls,
    thresholds: HealthThresholds,
    query_timeout: Duration,
    transaction_timeout: Duration,
    max_query_rows: u64,
    max_connections: u64,
    http_timeout: Duration,
    forget_after: Duration,
    retention: Option<Duration>,
}

/// Parses a duration: a number with a unit (`ms`, `s`, `m`, `h`, `d`), or
/// bare seconds.
pub fn parse_duration(what: &str, s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| {
        format!("{what} {s:?}: expected a duration such as 500ms, 30s, 5m, 2h or 3d")
    })?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        other => {
            return Err(format!(
                "{what} {s:?}: unknown unit {other:?} (use ms, s, m, h or d)"
            ));
        }
    };
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("{what} {s:?}: out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn resolve_one(what: &str, s: &str, prefer_v4: bool) -> Result<SocketAddr, String> {
    let addrs: Vec<SocketAddr> = s
        .to_socket_addrs()
        .map_err(|e| format!("{what} {s:?}: {e} (expected ADDR:PORT or HOST:PORT)"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4() == prefer_v4)
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("{what} {s:?}: the name resolves to no address"))
}

/// The schema texts from files and folders of `.sql` files.
fn read_schema(paths: &[PathBuf]) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for p in paths {
        let md = std::fs::metadata(p).map_err(|e| format!("schema {}: {e}", p.display()))?;
        let files = if md.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| format!("schema folder {}: {e}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "sql") && f.is_file())
                .collect();
            files.sort();
            files
        } else {
            vec![p.clone()]
        };
        for f in files {
            out.push(
                std::fs::read_to_string(&f)
                    .map_err(|e| format!("schema file {}: {e}", f.display()))?,
            );
        }
    }
    Ok(out)
}

const TLS_HELP: &str = "peers must be authenticated: give --tls-ca, --tls-cert and --tls-key \
(make them with `litemesh tls ca --out DIR` and then \
`litemesh tls node --ca-dir DIR --name NAME --out DIR2` for each node), \
or pass --insecure for a local experiment without peer authentication";

fn resolve(args: AgentArgs) -> Result<Resolved, String> {
    let file = match &args.config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| format!("config file {}: {e}", p.display()))?;
            toml::from_str::<FileConfig>(&text)
                .map_err(|e| format!("config file {}: {e}", p.display()))?
        }
        None => FileConfig::default(),
    };
    // Relative paths in the file are relative to the file's folder.
    let base = args
        .config
        .as_deref()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let rel = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };

    let db = args
        .db
        .or(file.db.map(rel))
        .ok_or("--db PATH is required (the node's SQLite file)")?;
    let listen_s = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| DEFAULT_LISTEN.into());
    let listen = resolve_one("--listen", &listen_s, true)?;
    let advertise = args
        .advertise
        .or(file.advertise)
        .map(|a| resolve_one("--advertise", &a, listen.is_ipv4()))
        .transpose()?;
    let seed_s = if args.seed.is_empty() {
        file.seed.map(OneOrMany::into_vec).unwrap_or_default()
    } else {
        args.seed
    };
    let seeds = seed_s
        .iter()
        .map(|s| resolve_one("--seed", s, listen.is_ipv4()))
        .collect::<Result<Vec<_>, _>>()?;
    let api_s = args.api.or(file.api).unwrap_or_else(|| DEFAULT_API.into());
    let api = resolve_one("--api", &api_s, true)?;
    let schema_paths = if args.schema.is_empty() {
        file.schema
            .map(|s| s.into_vec().into_iter().map(rel).collect())
            .unwrap_or_default()
    } else {
        args.schema
    };
    let schema = read_schema(&schema_paths)?;
    let insecure = args.insecure || file.insecure.unwrap_or(false);
    let ca = args.tls_ca.or(file.tls_ca.map(rel));
    let cert = args.tls_cert.or(file.tls_cert.map(rel));
    let key = args.tls_key.or(file.tls_key.map(rel));
    let tls = match (ca, cert, key, insecure) {
        (Some(ca), Some(cert), Some(key), false) => Tls::Files { ca, cert, key },
        (None, None, None, true) => Tls::Insecure,
        (None, None, None, false) => return Err(TLS_HELP.into()),
        (_, _, _, true) => {
            return Err("--insecure cannot be combined with --tls-ca/--tls-cert/--tls-key".into());
        }
        _ => return Err("mutual TLS needs all three of --tls-ca, --tls-cert and --tls-key".into()),
    };
    let dur = |flag: &str, v: Option<String>, dflt: Duration| -> Result<Duration, String> {
        v.map(|s| parse_duration(flag, &s))
            .transpose()
            .map(|d| d.unwrap_or(dflt))
    };
    let query_timeout = dur(
        "--query-timeout",
        args.query_timeout.or(file.query_timeout),
        DEFAULT_QUERY_TIMEOUT,
    )?;
    let transaction_timeout = dur(
        "--transaction-timeout",
        args.transaction_timeout.or(file.transaction_timeout),
        DEFAULT_TRANSACTION_TIMEOUT,
    )?;
    if query_timeout.is_zero() || transaction_timeout.is_zero() {
        return Err("--query-timeout and --transaction-timeout must be more than 0".into());
    }
    let max_connections = args
        .max_connections
        .or(file.max_connections)
        .unwrap_or(DEFAULT_MAX_CONNECTIONS);
    if max_connections == 0 {
        return Err("--max-connections must be at least 1".into());
    }
    Ok(Resolved {
        db,
        listen,
        advertise,
        seeds,
        api,
        schema,
        name: args.name.or(file.name),
        region: args.region.or(file.region),
        tables: if args.tables.is_empty() {
            file.tables.map(OneOrMany::into_vec)
        } else {
            Some(args.tables)
        }
        .map(|t| {
            t.iter()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
                .collect()
        }),
        tls,
        thresholds: HealthThresholds {
            max_lag: dur(
                "--health-max-lag",
                args.health_max_lag.or(file.health_max_lag),
                DEFAULT_HEALTH_MAX_LAG,
            )?,
            max_behind_versions: args
                .health_max_behind
                .or(file.health_max_behind)
                .unwrap_or(DEFAULT_HEALTH_MAX_BEHIND),
        },
        query_timeout,
        transaction_timeout,
        max_query_rows: args
            .max_query_rows
            .or(file.max_query_rows)
            .unwrap_or(DEFAULT_MAX_QUERY_ROWS),
        max_connections,
        http_timeout: dur(
            "--http-timeout",
            args.http_timeout.or(file.http_timeout),
            DEFAULT_HTTP_TIMEOUT,
        )?
        .max(Duration::from_millis(100)),
        forget_after: dur(
            "--forget-after",
            args.forget_after.or(file.forget_after),
            DEFAULT_FORGET_AFTER,
        )?,
        retention: match args.retention.or(file.retention) {
            None => None,
            Some(s) if s.trim().eq_ignore_ascii_case("off") => None,
            Some(s) => Some(parse_duration("--retention", &s)?),
        },
    })
}

/// Also holds the lock earlier versions took on `<db>.lock` (the node now
/// locks the database file itself), so that an agent of each version on one
/// file, during an upgrade, still exclude each other.
fn legacy_lock(db: &Path) -> Result<std::fs::File, String> {
    let mut p = db.as_os_str().to_owned();
    p.push(".lock");
    let path = PathBuf::from(p);
    let f = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("lock file {}: {e}", path.display()))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(format!(
            "{} is already in use by another litemesh node (lock {} is held); \
             stop it first or use another --db",
            db.display(),
            path.display()
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(format!("cannot lock {}: {e}", path.display())),
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Runs the agent until SIGINT or SIGTERM.
pub fn run(args: AgentArgs) -> CliResult {
    let r = resolve(args)?;
    let _legacy = legacy_lock(&r.db)?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    rt.block_on(serve(r))
}

async fn serve(r: Resolved) -> CliResult {
    // Installed first: a signal during the start is handled once it is done.
    let signals = Signals::new()?;
    let listener = tokio::net::TcpListener::bind(r.api)
        .await
        .map_err(|e| format!("cannot bind the HTTP API on {}: {e}", r.api))?;
    let api_addr = listener
        .local_addr()
        .map_err(|e| format!("HTTP API address: {e}"))?;
    // The default name needs the QUIC port: with port 0, pick one now.
    let mut listen = r.listen;
    if listen.port() == 0 && r.name.is_none() {
        let s = UdpSocket::bind(listen).map_err(|e| format!("cannot bind {listen}: {e}"))?;
        listen = s.local_addr().map_err(|e| format!("{listen}: {e}"))?;
    }
    let mut settings = Settings::new(&r.db, listen);
    settings.advertise = r.advertise;
    settings.seeds = r.seeds;
    settings.schema = r.schema;
    settings.tls = r.tls;
    settings.name = Some(
        r.name
            .unwrap_or_else(|| format!("{}-{}", host_name(), listen.port())),
    );
    settings.region = r.region;
    settings.tables = r.tables;
    settings.api_addr = Some(api_addr.to_string());
    settings.query_timeout = r.query_timeout;
    settings.transaction_timeout = r.transaction_timeout;
    settings.max_query_rows = r.max_query_rows;
    settings.forget_after = r.forget_after;
    settings.retention = r.retention;
    let node = Node::start(settings)
        .await
        .map_err(|e| format!("cannot start the node: {e}"))?;
    crate::api::clean_stale_backups(node.db_path());

    let fds = server::raise_fd_limit();
    // Keep descriptors for the node itself (QUIC, SQLite files).
    let max_connections = r.max_connections.min(fds.saturating_sub(64).max(16));
    let http = Arc::new(HttpStats::default());
    let state = Arc::new(AppState {
        node: node.clone(),
        thresholds: r.thresholds,
        body_timeout: r.http_timeout * 3,
        http: http.clone(),
        backup: Arc::new(tokio::sync::Mutex::new(())),
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let limits = HttpLimits {
        max_connections,
        header_timeout: r.http_timeout,
        write_timeout: r.http_timeout * 3,
    };
    let server = tokio::spawn(server::serve(
        listener,
        router(state),
        limits,
        http,
        stop_rx,
    ));

    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "litemesh agent ready api={} listen={} name={}",
            api_addr,
            node.local_addr(),
            node.name()
        );
        let _ = out.flush();
    }

    let mut signals = signals;
    let signal = signals.recv().await;
    tracing::info!("{signal}: leaving the mesh");
    eprintln!("litemesh: {signal} received, leaving the mesh");
    // Whatever runs, the agent is gone within STOP_WITHIN; a second signal
    // ends it at once.
    std::thread::spawn(|| {
        std::thread::sleep(STOP_WITHIN);
        eprintln!(
            "litemesh: did not stop within {} s; exiting now (every committed write is on disk)",
            STOP_WITHIN.as_secs()
        );
        std::process::exit(0);
    });
    tokio::spawn(async move {
        let again = signals.recv().await;
        eprintln!("litemesh: {again} received again; exiting now");
        std::process::exit(0);
    });
    let _ = stop_tx.send(true);
    node.shutdown().await;
    // In-flight requests get a moment to finish.
    let _ = tokio::time::timeout(Duration::from_secs(3), server).await;
    Ok(ExitCode::SUCCESS)
}

/// SIGTERM and SIGINT.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Signals, String> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM handler: {e}"))?,
            int: signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT handler: {e}"))?,
        })
    }

    /// Waits for either; returns its name.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
