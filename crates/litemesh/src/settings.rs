//! Node settings (the same as the agent's flags).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use litemesh_transport::FaultHandle;

/// How the node authenticates peers.
#[derive(Debug, Clone)]
pub enum Tls {
    /// Mutual TLS from PEM files: the mesh CA, this node's certificate and key.
    Files {
        /// CA certificate.
        ca: PathBuf,
        /// Node certificate (signed by the CA).
        cert: PathBuf,
        /// Node private key.
        key: PathBuf,
    },
    /// Mutual TLS from PEM text.
    Pem {
        /// CA certificate.
        ca: String,
        /// Node certificate.
        cert: String,
        /// Node private key.
        key: String,
    },
    /// No peer authentication (local experiments only).
    Insecure,
}

/// Everything a node needs to start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The node's SQLite file (created if missing).
    pub db_path: PathBuf,
    /// UDP address for QUIC (port 0: pick one).
    pub listen: SocketAddr,
    /// The QUIC address peers reach this node at, when it differs from the
    /// bound one (a wildcard bind such as `0.0.0.0:7400`); port 0 means the
    /// bound port. Required when `listen` has an unspecified IP. Peers are
    /// told apart by address, so it must also be the source address of the
    /// node's packets. Default: the bound address.
    pub advertise: Option<SocketAddr>,
    /// Nodes of the mesh to join by; none: first node of a new mesh.
    pub seeds: Vec<SocketAddr>,
    /// Schema SQL texts (`CREATE TABLE` / `CREATE INDEX`), applied at start
    /// together (as one schema: each may declare some of the tables).
    /// A table is pinned to regions with a comment in its `CREATE TABLE`
    /// (`-- litemesh: regions = eu-west, eu-central`; docs/regions.md).
    pub schema: Vec<String>,
    /// A partial replica: the only tables this node carries (`None`: all
    /// that its region may hold). Rows of the others never enter its file.
    pub tables: Option<Vec<String>>,
    /// Peer authentication.
    pub tls: Tls,
    /// Name shown in membership (default: derived from the listen address).
    pub name: Option<String>,
    /// Region. Under mutual TLS the node's region is the one its
    /// certificate certifies; this must be `None` or that same region (a
    /// different one is refused at start). Under [`Tls::Insecure`] it is
    /// only a label.
    pub region: Option<String>,
    /// The HTTP API address to advertise in membership, if any.
    pub api_addr: Option<String>,
    /// Mesh id: nodes of different meshes refuse each other.
    pub mesh_id: String,
    /// Fault injection (tests).
    pub faults: Option<FaultHandle>,
    /// Broadcast and anti-entropy tuning.
    pub sync: litemesh_sync::Config,
    /// Membership tuning.
    pub membership: litemesh_membership::Config,
    /// QUIC keep-alive interval (dead connections are detected within a few).
    pub keep_alive: Duration,
    /// QUIC idle timeout.
    pub idle_timeout: Duration,
    /// Time limit of a client query (default 30 s): past it, the query stops
    /// with an error.
    pub query_timeout: Duration,
    /// Time limit of a client transaction (default 30 s): past it, the
    /// transaction stops and nothing of it is applied. It holds the writer
    /// (which also applies peers' changes) while it runs.
    pub transaction_timeout: Duration,
    /// Most rows a query returns (default 1,000,000; 0: no limit); a result
    /// past it ends with an error, never silently cut.
    pub max_query_rows: u64,
    /// Read-only connections for client queries (queries running at once).
    pub query_connections: usize,
    /// A member not seen for this long is forgotten (no longer rejoined, no
    /// longer counted as known). Default 3 days.
    pub forget_after: Duration,
    /// The retention policy: once every node holds a deleted row's delete,
    /// keep its tombstone this much longer, then collect it (see
    /// docs/retention.md). `None` (the default): keep every tombstone.
    pub retention: Option<Duration>,
}

impl Settings {
    /// Defaults for a node with `db_path` listening on `listen`, insecure,
    /// with no seeds and no schema.
    pub fn new(db_path: impl Into<PathBuf>, listen: SocketAddr) -> Settings {
        Settings {
            db_path: db_path.into(),
            listen,
            advertise: None,
            seeds: Vec::new(),
            schema: Vec::new(),
            tables: None,
            tls: Tls::Insecure,
            name: None,
            region: None,
            api_addr: None,
            mesh_id: "litemesh".into(),
            faults: None,
            sync: litemesh_sync::Config::default(),
            membership: litemesh_membership::Config::default(),
            keep_alive: Duration::from_millis(500),
            idle_timeout: Duration::from_secs(3),
            query_timeout: Duration::from_secs(30),
            transaction_timeout: Duration::from_secs(30),
            max_query_rows: 1_000_000,
            query_connections: 4,
            forget_after: Duration::from_secs(3 * 24 * 3600),
            retention: None,
        }
    }
}
