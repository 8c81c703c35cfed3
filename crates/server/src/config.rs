//! What a server needs to start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use atrest_kms::root::RootSource;

pub use crate::tls::TlsFiles;

/// Server configuration.
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Serve TLS with these files; plain HTTP otherwise.
    pub tls: Option<TlsFiles>,
    /// Allow plain HTTP on a non-loopback address.
    pub allow_plaintext_remote: bool,
    /// The data dir.
    pub data_dir: PathBuf,
    /// Where the first start writes the admin's credentials, outside the
    /// data dir (`None`: `<data-dir>.admin-credentials`, beside it).
    pub admin_credentials: Option<PathBuf>,
    /// The root of trust.
    pub root: RootSource,
    /// Regions served.
    pub regions: Vec<String>,
    /// How often the lifecycle schedule runs.
    pub lifecycle_interval: Duration,
    /// Shift of the lifecycle clock (tests only; zero otherwise).
    pub lifecycle_clock_offset: time::Duration,
    /// The largest request body accepted.
    pub max_body_bytes: usize,
    /// Serve Prometheus metrics (`GET /metrics`) on this address.
    pub metrics_listen: Option<SocketAddr>,
    /// How the audit trail commits (group-commit pacing, sync interval,
    /// head sync; tests may inject I/O failures).
    pub audit: atrest_audit::Options,
    /// Which answers wait until their audit record is durable.
    pub audit_sync: AuditSync,
    /// The disk service: what open disks do when their key is lost.
    pub disks: atrest_diskservice::Config,
    /// Serve disks over NBD.
    pub nbd: Option<crate::nbd::NbdConfig>,
    /// The database service.
    pub db: DbSettings,
    /// Key providers (keys held in another KMS), by name.
    pub providers:
        std::collections::BTreeMap<String, std::sync::Arc<dyn atrest_keyprovider::KeyProvider>>,
    /// How often every external key is checked at its provider.
    pub provider_check_interval: Duration,
    /// How often, at most, an access key's last use is written to the
    /// store (it is kept in memory in between; see
    /// `atrest_kms::DEFAULT_ACCESS_KEY_USE_FLUSH_INTERVAL`).
    pub access_key_use_flush: Duration,
    /// What a connection may hold and take (every listener).
    pub connections: ConnectionLimits,
    /// How often the refusals before authentication counted per client
    /// address are written to the audit trail (one record per address).
    pub audit_refusal_interval: Duration,
    /// Where snapshots are stored in object storage (`None`: the local
    /// directory `<data-dir>/objects`).
    pub object_store: Option<atrest_objstore::StoreConfig>,
    /// Regions whose stored snapshots go to a store of their own.
    pub region_object_stores: Vec<(String, atrest_objstore::StoreConfig)>,
    /// Several nodes on one shared metadata store.
    pub cluster: ClusterSettings,
    /// The web console at `/console/` (`None`: not served). Its cookie is
    /// marked `Secure` when the listener serves TLS, whatever is set here.
    pub console: Option<atrest_console::Options>,
}

/// Where the metadata lives and how this node shows itself to the others.
#[derive(Debug, Clone, Default)]
pub struct ClusterSettings {
    /// `postgres://...`: the key service's and the projects' metadata live
    /// in this PostgreSQL database, shared with other nodes (`None`: the
    /// embedded redb files in the data dir).
    pub store_url: Option<String>,
    /// This node's name (default: the host name).
    pub node_name: Option<String>,
    /// The URL other nodes and clients reach this node's API at (default:
    /// the listen address).
    pub advertise_api: Option<String>,
    /// The address clients reach this node's NBD server at (default: the
    /// NBD listen address).
    pub advertise_nbd: Option<String>,
}

/// [`ServerConfig::audit_refusal_interval`]'s default.
pub const DEFAULT_AUDIT_REFUSAL_INTERVAL: Duration = Duration::from_secs(60);

/// What a connection may hold and take: the limits every listener (HTTP,
/// metrics, NBD) applies, and the deadlines of each protocol. See
/// `docs/design.md`, "Hostile clients".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Per listener: connections open at once, in all and per client
    /// address, and the drain at shutdown.
    pub limits: atrest_listen::Limits,
    /// HTTP: the request head's deadline, the idle keep-alive timeout, and
    /// the deadline of a write that makes no progress.
    pub deadlines: atrest_listen::Deadlines,
    /// HTTP: from the request's head to its body's last byte.
    pub body_timeout: Duration,
    /// HTTPS: from the connection to the end of the TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// NBD: from the connection to the end of option negotiation (TLS
    /// included).
    pub nbd_negotiation_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            limits: atrest_listen::Limits::default(),
            deadlines: atrest_listen::Deadlines::default(),
            body_timeout: DEFAULT_BODY_TIMEOUT,
            tls_handshake_timeout: DEFAULT_TLS_HANDSHAKE_TIMEOUT,
            nbd_negotiation_timeout: DEFAULT_NBD_NEGOTIATION_TIMEOUT,
        }
    }
}

/// [`ConnectionLimits::body_timeout`]'s default: a 64 KiB body at 6.5 KB/s.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// [`ConnectionLimits::tls_handshake_timeout`]'s default.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// [`ConnectionLimits::nbd_negotiation_timeout`]'s default.
pub const DEFAULT_NBD_NEGOTIATION_TIMEOUT: Duration = Duration::from_secs(10);

/// How the database service runs PostgreSQL.
#[derive(Debug, Clone)]
pub struct DbSettings {
    /// The directory of PostgreSQL's programs (default: found on PATH or
    /// under `/usr/lib/postgresql`).
    pub pg_bin: Option<PathBuf>,
    /// The uids (and gids) of the instances' own OS users.
    pub uid_range: std::ops::RangeInclusive<u32>,
    /// A local directory for database backups (default: the server's
    /// object store, under `db/`).
    pub backup_dir: Option<PathBuf>,
    /// Default disk size of a new instance, in bytes.
    pub default_size: u64,
}

impl Default for DbSettings {
    fn default() -> Self {
        Self {
            pg_bin: None,
            uid_range: DEFAULT_DB_UID_RANGE,
            backup_dir: None,
            default_size: 4 << 30,
        }
    }
}

/// Which answers wait until their audit record is durable (on disk, synced)
/// rather than written (in the log file, which a killed process cannot
/// lose). Either way a record that cannot be written refuses its request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AuditSync {
    /// A request that changes stored state (a new key, a policy, a grant, a
    /// state change, an account) commits only once its record is durable.
    /// Any other request (cryptographic operations, reads, refusals) is
    /// answered once its record is written; the log is synced within
    /// [`atrest_audit::Options::sync_interval`], so a power loss or kernel
    /// crash can lose the records of that last interval, never the record
    /// of a change that took effect.
    #[default]
    Changes,
    /// Every answer waits until its record is durable.
    Every,
}

/// Default uid range of database instances' OS users: above the 16-bit
/// range (65534 is `nobody`), below the ranges container runtimes hand out
/// as subordinate ids (100000 and up).
pub const DEFAULT_DB_UID_RANGE: std::ops::RangeInclusive<u32> = 70000..=79999;

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";
/// Default region.
pub const DEFAULT_REGION: &str = "us-east-1";
/// Default request body limit: AWS KMS requests are small (a 4 KiB
/// plaintext is under 6 KiB of JSON).
pub const DEFAULT_MAX_BODY: usize = 64 * 1024;
