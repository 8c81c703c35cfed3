//! The database service: PostgreSQL instances whose every byte at rest is
//! encrypted under the customer's key (R1 to R8).
//!
//! Owns: instances (a name, a class, a disk, a port, a role), running the
//! real, unmodified PostgreSQL on a file system on the instance's encrypted
//! disk, locking an instance when its key becomes unusable, and, in
//! [`backup`], encrypted base backups and WAL archives. The disk (its key,
//! its grant, its data) is the disk service's ([`atrest_diskservice`]),
//! which holds it as a disk this service manages: the customer cannot see
//! or use it directly. The block device that puts it on this host is the
//! server's local attach, behind [`Volumes`].
//!
//! # An instance on the host
//!
//! The disk is attached locally (a loop device), checked (`e2fsck -p` and
//! the UUID atrest gave its file system) and mounted `nodev,nosuid,noexec`
//! under `<run>/db/<id>/mnt` (outside the data dir, on tmpfs). The
//! PostgreSQL data directory (`pgdata`: tables, WAL, temporary files), its
//! log and atrest's per-instance secrets all live on that file system, so
//! they reach the disk engine only as ciphertext.
//!
//! # Isolation
//!
//! The customer's master user is powerful inside the database and
//! powerless outside it (see [`pg`] and `docs/design.md`):
//!
//! * it is not a superuser; atrest's own superuser (`atrest_admin`) is
//!   reachable only by root over the instance's socket;
//! * every instance runs as an OS user of its own ([`users`]), so no
//!   instance can read, list or signal another's files, socket or
//!   processes; the WAL agent serves a connection only for the instance
//!   whose user it comes from;
//! * root never follows a path the instance's user can write: every file
//!   it touches there goes through [`tree`], and the server's configuration
//!   lives outside the data directory, in root's directory;
//! * parameters are allow-listed ([`params`]);
//! * on PostgreSQL 15 and older, a small server extension ([`guard`]) keeps
//!   CREATEROLE from granting the roles that read and write server files
//!   and run programs, and from touching atrest's roles.
//!
//! # Records and crashes
//!
//! An instance's record is a JSON file under `<data dir>/db/instances`,
//! replaced atomically. It holds no secret. A record is written with phase
//! `creating` before the disk is made, so that a crash in the middle of a
//! creation is rolled back (disk deleted, record and OS user removed) at
//! the next start. The postmaster's pid is kept under the run dir, so that
//! after the atrest server is killed (its disks gone from under
//! PostgreSQL) the next start kills the orphaned server, unmounts, and
//! starts it again: crash recovery from the WAL on the encrypted disk.
//!
//! # Instances of an earlier release
//!
//! A record of a release before this isolation (`layout` 0) is migrated at
//! its next start: it gets its OS user, its files change hands, atrest's
//! old settings file leaves the data directory, parameters off the
//! allow-list are dropped, and (on a primary) the master is demoted, see
//! [`DbService::converge_roles`].

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod agent;
mod artifact;
mod backup;
mod encryption;
mod guard;
mod host;
mod manage;
mod migrate;
mod params;
mod pg;
mod replica;
mod roles;
mod tree;
mod users;

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use atrest_diskservice::{DiskService, ManagedDisks, NewDisk, ServiceError};
use atrest_kms::names::AccountId;
use atrest_kms::{Caller, KeyService, KeyUnusable, KmsError};
use serde::{Deserialize, Serialize};

use crate::pg::{Layout, PgBin, Settings};
use crate::users::OsUser;

pub use users::parse_range as parse_uid_range;

/// The service name: principal `db.atrest`, `kms:ViaService`
/// `db.<region>.atrest`, service key `alias/atrest/db`.
pub const SERVICE: &str = "db";

/// Puts a disk on this host as a block device, and takes it off.
pub trait Volumes: Send + Sync {
    /// Attaches `disk` (the caller's) and returns its block device.
    fn attach(&self, caller: &Caller, disk: &str) -> Result<PathBuf, ServiceError>;
    /// Detaches it (flushing it).
    fn detach(&self, caller: &Caller, disk: &str) -> Result<(), ServiceError>;
}

/// What a running instance does when its key becomes unusable.
pub use atrest_diskservice::OnKeyLoss;
pub use backup::{BackupView, SourceKeys};
pub use encryption::EncryptionChange;
pub use migrate::{LegacyBackups, Moved};
pub use params::ParamError;

/// The embedded guard, for tests and operators: the PostgreSQL major
/// version `atrest_guard` was built for and its shared object, or `None`
/// when this build had no PostgreSQL server headers. The guard keeps a
/// non-superuser CREATEROLE master user from the roles that reach the
/// server's files and programs, and from atrest's own `atrest_*` roles;
/// PostgreSQL up to 15 needs it for such a user (see guard/atrest_guard.c).
pub fn guard_object() -> Option<(u32, &'static [u8])> {
    guard::EMBEDDED.map(|e| (e.major, e.object))
}

/// Service configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The directory of PostgreSQL's programs (default: found on PATH or
    /// under `/usr/lib/postgresql`).
    pub pg_bin: Option<PathBuf>,
    /// The uids (and gids) of the instances' own OS users.
    pub uid_range: RangeInclusive<u32>,
    /// Instance records (`<data dir>/db`).
    pub state_dir: PathBuf,
    /// Mounts, sockets and pids (`/run/atrest/<hash>/db`).
    pub run_dir: PathBuf,
    /// Backup storage: base backups and WAL archives are objects under
    /// `db/` in this store (the server's object store, shared with the
    /// disk service's snapshots, or a local directory of its own).
    pub backups: atrest_objstore::Objects,
    /// Where an earlier release kept backups as files, moved into
    /// `backups` at the start ([`LegacyBackups`]).
    pub legacy_backups: Option<LegacyBackups>,
    /// The `atrest` program, which PostgreSQL runs to archive and fetch WAL.
    pub agent_program: PathBuf,
    /// What running instances do when their key becomes unusable.
    pub on_key_loss: OnKeyLoss,
    /// How often running instances' keys (and processes) are checked.
    pub check_interval: Duration,
    /// Default disk size of a new instance.
    pub default_size: u64,
}

/// Errors. Client mistakes are [`DbError::NotFound`], [`DbError::Invalid`],
/// [`DbError::Conflict`], [`DbError::Locked`] and the disk and key
/// services' own client errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// No such instance (or backup) in the caller's account and region.
    #[error("{kind} '{id}' does not exist")]
    NotFound {
        /// `instance` or `backup`.
        kind: &'static str,
        /// What was asked for.
        id: String,
    },
    /// A bad request.
    #[error("{0}")]
    Invalid(String),
    /// The instance's state does not allow it.
    #[error("{0}")]
    Conflict(String),
    /// The instance's key cannot be used.
    #[error("instance {instance} is locked: its key {key_arn} cannot be used: {reason}")]
    Locked {
        /// The instance's name.
        instance: String,
        /// The key.
        key_arn: String,
        /// Why.
        reason: KeyUnusable,
    },
    /// A PostgreSQL parameter customers may not set, or a value not of its
    /// form.
    #[error(transparent)]
    ParameterRefused(#[from] ParamError),
    /// From the disk service.
    #[error(transparent)]
    Disk(#[from] ServiceError),
    /// From the key service.
    #[error(transparent)]
    Kms(#[from] KmsError),
    /// This host cannot run PostgreSQL as configured.
    #[error("{0}")]
    Unavailable(String),
    /// The instance's file system failed its check before mounting (it was
    /// not mounted).
    #[error("{0}")]
    Damaged(String),
    /// Backup storage (the object store) failed or refused: unreachable,
    /// wrong credentials, a missing bucket, a missing object. Names the
    /// store and the object (never a credential).
    #[error("backup storage {location}: {source}")]
    ObjectStore {
        /// The store's location.
        location: String,
        /// What the store answered.
        source: atrest_objstore::ObjError,
    },
    /// A server fault (details in the message, which goes to the log).
    #[error("{0}")]
    Failed(String),
}

impl DbError {
    /// Whether the server is at fault.
    #[must_use]
    pub fn is_server_fault(&self) -> bool {
        match self {
            Self::Failed(_) => true,
            Self::Disk(e) => e.is_server_fault(),
            Self::Kms(e) => matches!(e, KmsError::Internal(_)),
            _ => false,
        }
    }
}

type Result<T, E = DbError> = std::result::Result<T, E>;

/// An instance's class (R2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    /// Encrypted from creation; encryption can never be turned off.
    Tde,
    /// Encryption can be enabled, its key replaced, or turned off.
    Disk,
}

impl std::str::FromStr for Class {
    type Err = DbError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "tde" => Ok(Self::Tde),
            "disk" => Ok(Self::Disk),
            _ => Err(DbError::Invalid(format!(
                "'{s}' is not an instance class; use tde or disk"
            ))),
        }
    }
}

/// The stored record of an instance. Holds no secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Record {
    pub id: String,
    pub name: String,
    pub account: String,
    pub region: String,
    pub class: Class,
    pub disk: String,
    pub port: u16,
    pub master_username: String,
    /// `creating` until the first start succeeded, then `ready`.
    pub phase: String,
    /// Whether it should be running (started again after a crash or a
    /// restart of atrest).
    pub running: bool,
    /// The primary this instance streams from, if it is a replica.
    #[serde(default)]
    pub primary: Option<String>,
    pub created: String,
    /// SHA-256 of the token its WAL agent presents.
    #[serde(default)]
    pub agent_token_sha256: Option<String>,
    /// The grant that lets `db.atrest` use the instance's key for backups.
    #[serde(default)]
    pub backup_grant: Option<String>,
    /// The customer's PostgreSQL parameters, written into the server's
    /// configuration at every start.
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
    /// Days its backups are kept (0: until deleted).
    #[serde(default)]
    pub backup_retention_days: u32,
    /// The uid and gid of the instance's own OS user (`None` in a record
    /// of an earlier release, until its first start).
    #[serde(default)]
    pub os_uid: Option<u32>,
    /// The UUID of the file system atrest made on the instance's disk,
    /// checked before every mount.
    #[serde(default)]
    pub fs_uuid: Option<String>,
    /// The version of the instance's layout on the host: 0 for a record of
    /// a release before per-instance users (migrated at its next start),
    /// [`LAYOUT`] now.
    #[serde(default)]
    pub layout: u32,
    /// The customer's tags (the disk service's rules), condition keys of
    /// identity policies (`aws:ResourceTag/<key>`).
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// The current layout version of an instance ([`Record::layout`]).
pub(crate) const LAYOUT: u32 = 1;

impl Record {
    fn owned_by(&self, caller: &Caller) -> bool {
        self.account == caller.account.as_str() && self.region == caller.region
    }

    fn caller(&self) -> Result<Caller> {
        let account = AccountId::parse(&self.account)
            .ok_or_else(|| DbError::Failed(format!("record {} names a bad account", self.id)))?;
        Ok(Caller::root(account, &self.region))
    }

    /// How the disk service names this instance to the customer (a disk
    /// it manages for it).
    pub(crate) fn managed_for(&self) -> String {
        format!("database instance {} ({})", self.name, self.id)
    }
}

/// An instance as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct InstanceView {
    /// Id (`db-` and 16 hex digits).
    pub id: String,
    /// Name, unique in the account and region.
    pub name: String,
    /// `tde` or `disk`.
    pub class: Class,
    /// `running`, `stopped`, `locked` (its key cannot be used) or
    /// `failed`.
    pub state: String,
    /// Why it is locked or failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Whether its data is encrypted.
    pub encrypted: bool,
    /// The key its disk is encrypted under.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_arn: Option<String>,
    /// Its disk.
    pub disk: String,
    /// Where clients connect.
    pub host: String,
    /// The port.
    pub port: u16,
    /// The superuser clients log in as.
    pub master_username: String,
    /// `primary` or `replica`.
    pub role: String,
    /// The primary's name, for a replica.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
    /// Owning account.
    pub account: String,
    /// Region.
    pub region: String,
    /// Creation time (RFC 3339).
    pub created: String,
    /// The superuser's password, answered once by a creation that
    /// generated it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub master_password: Option<String>,
    /// Its tags.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Days its backups are kept (0: until deleted). The newest backup is
    /// always kept.
    pub backup_retention_days: u32,
}

/// What a new instance is.
#[derive(Debug, Clone, Default)]
pub struct NewInstance {
    /// Name: 1 to 63 of a-z, 0-9 and '-', starting with a letter.
    pub name: String,
    /// Class (default tde).
    pub class: Option<Class>,
    /// The customer's key (id, ARN or alias).
    pub key_id: Option<String>,
    /// Use the account's database service key, `alias/atrest/db`.
    pub service_key: bool,
    /// No encryption (class disk only).
    pub unencrypted: bool,
    /// Disk size in bytes.
    pub size: Option<u64>,
    /// Port (default: a free one).
    pub port: Option<u16>,
    /// Superuser name (default `postgres`).
    pub master_username: Option<String>,
    /// Superuser password (default: generated and answered once).
    pub master_password: Option<String>,
    /// Tags (the disk service's rules: at most 50, no `aws:` keys).
    pub tags: BTreeMap<String, String>,
}

/// A running (or mounted) instance on this host.
#[derive(Debug)]
struct Live {
    layout: Layout,
    /// The block device the file system is on.
    device: PathBuf,
    pid: Option<u32>,
    /// The instance's OS user.
    user: OsUser,
    /// When its key was first seen unusable.
    unusable_since: Option<Instant>,
}

/// The database service.
pub struct DbService {
    kms: Arc<KeyService>,
    /// The disk service, as the manager of instance disks: the customer
    /// can neither see nor use them.
    disks: ManagedDisks,
    volumes: Arc<dyn Volumes>,
    config: Config,
    records: Mutex<BTreeMap<String, Record>>,
    live: Mutex<BTreeMap<String, Live>>,
    /// Serializes operations that change an instance's state.
    ops: Mutex<()>,
    /// Why this host cannot run instances (no run dir), if it cannot.
    host_error: Option<String>,
    /// Backups, WAL archiving and restores ([`backup`]).
    backup: backup::State,
    /// The guard library, once installed for this host's PostgreSQL.
    guard: OnceLock<guard::Status>,
}

impl std::fmt::Debug for DbService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbService").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn random_hex(n: usize) -> Result<String> {
    let mut b = vec![0u8; n];
    atrest_crypto::rand::fill(&mut b).map_err(|e| DbError::Failed(format!("random: {e}")))?;
    Ok(hex::encode(b))
}

fn valid_name(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn valid_username(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !s.starts_with("pg_")
        && !s.starts_with("atrest")
}

/// Default time PostgreSQL gets to start (crash recovery included).
const START_WAIT: Duration = Duration::from_secs(300);

impl DbService {
    /// The service. Cleans up what a crash of atrest left (orphaned
    /// PostgreSQL servers, mounts), rolls back interrupted creations; call
    /// [`DbService::resume`] to start the instances that should run.
    pub fn open(
        kms: Arc<KeyService>,
        disks: Arc<DiskService>,
        volumes: Arc<dyn Volumes>,
        config: Config,
    ) -> Result<Arc<Self>> {
        let records = config.state_dir.join("instances");
        std::fs::create_dir_all(&records)
            .map_err(|e| DbError::Failed(format!("creating {}: {e}", records.display())))?;
        // Without its run dir (a server not run as root) the service
        // answers every operation that needs the host with this; the rest
        // of atrest serves as usual.
        let host_error = std::fs::create_dir_all(&config.run_dir).err().map(|e| {
            let msg = format!(
                "database instances are not available on this server: it cannot create {} ({e}); run atrest as root, which mounts file systems and runs PostgreSQL as its own user",
                config.run_dir.display()
            );
            tracing::warn!("{msg}");
            msg
        });
        let svc = Arc::new(Self {
            kms,
            disks: disks.managed(SERVICE),
            volumes,
            records: Mutex::new(BTreeMap::new()),
            live: Mutex::new(BTreeMap::new()),
            ops: Mutex::new(()),
            backup: backup::State::default(),
            host_error,
            guard: OnceLock::new(),
            config,
        });
        svc.load()?;
        if svc.host_error.is_none() {
            svc.adopt_legacy()?;
            svc.open_backups()?;
        }
        Ok(svc)
    }

    /// Kills what a crash left and unmounts it, before the server's local
    /// attach cleans up its own leftovers. Call before [`DbService::open`].
    pub fn cleanup_stale(run_dir: &Path) {
        let Ok(entries) = std::fs::read_dir(run_dir) else {
            return;
        };
        for e in entries.flatten() {
            let dir = e.path();
            let Ok(text) = std::fs::read_to_string(dir.join("postmaster.pid")) else {
                continue;
            };
            // "<pid> <uid>"; a release before per-instance users wrote
            // only the pid, of a server running as `postgres`.
            let mut words = text.split_whitespace();
            let pid = words.next().and_then(|p| p.parse::<u32>().ok());
            let uid = words
                .next()
                .and_then(|u| u.parse::<u32>().ok())
                .or_else(|| {
                    nix::unistd::User::from_name("postgres")
                        .ok()
                        .flatten()
                        .map(|u| u.uid.as_raw())
                });
            if let (Some(pid), Some(uid)) = (pid, uid) {
                if host::is_postgres(pid, uid) {
                    tracing::warn!(pid, dir = %dir.display(), "killing a PostgreSQL server a crash of atrest left running");
                }
                host::kill_postgres(pid, uid);
            }
            let _ = std::fs::remove_file(dir.join("postmaster.pid"));
        }
        let mut mounts = host::mounts_under(run_dir);
        mounts.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
        for m in mounts {
            tracing::warn!(mount = %m.display(), "unmounting what a crash of atrest left mounted");
            if let Err(e) = host::unmount(&m) {
                tracing::error!(mount = %m.display(), error = %e, "unmount failed");
            }
        }
    }

    fn records_dir(&self) -> PathBuf {
        self.config.state_dir.join("instances")
    }

    fn load(&self) -> Result<()> {
        let dir = self.records_dir();
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| DbError::Failed(format!("reading {}: {e}", dir.display())))?;
        let mut records = lock(&self.records);
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            let bytes = std::fs::read(&p)
                .map_err(|e| DbError::Failed(format!("reading {}: {e}", p.display())))?;
            let r: Record = serde_json::from_slice(&bytes).map_err(|e| {
                DbError::Failed(format!("{} is not an instance record: {e}", p.display()))
            })?;
            records.insert(r.id.clone(), r);
        }
        Ok(())
    }

    /// Saves `r`. The backup fields (agent token, backup grant, retention) are the
    /// backup module's, and the host fields (uid, file system, layout) are
    /// set once: a save keeps the stored values, so that a copy of the
    /// record taken before they changed does not undo them.
    fn save(&self, r: &Record) -> Result<()> {
        let mut records = lock(&self.records);
        let mut r = r.clone();
        if let Some(stored) = records.get(&r.id) {
            r.agent_token_sha256.clone_from(&stored.agent_token_sha256);
            r.backup_grant.clone_from(&stored.backup_grant);
            r.backup_retention_days = stored.backup_retention_days;
            // The host fields only move forward: a copy taken before they
            // were set does not undo them.
            r.os_uid = r.os_uid.or(stored.os_uid);
            if stored.fs_uuid.is_some() {
                r.fs_uuid.clone_from(&stored.fs_uuid);
            }
            r.layout = r.layout.max(stored.layout);
        }
        self.write_record(&r)?;
        records.insert(r.id.clone(), r);
        Ok(())
    }

    /// Writes `r` to its file (atomically).
    fn write_record(&self, r: &Record) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(r)
            .map_err(|e| DbError::Failed(format!("encoding a record: {e}")))?;
        let path = self.records_dir().join(format!("{}.json", r.id));
        atrest_kms::root::write_atomically(&path, &bytes, 0o600)
            .map_err(|e| DbError::Failed(format!("saving {}: {e}", path.display())))
    }

    fn forget(&self, id: &str) -> Result<()> {
        let path = self.records_dir().join(format!("{id}.json"));
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(DbError::Failed(format!("removing {}: {e}", path.display()))),
        }
        lock(&self.records).remove(id);
        let _ = std::fs::remove_dir_all(self.config.run_dir.join(id));
        Ok(())
    }

    fn layout(&self, id: &str) -> Layout {
        Layout::new(self.config.run_dir.join(id))
    }

    fn bin(&self) -> Result<PgBin> {
        PgBin::find(self.config.pg_bin.as_deref())
    }

    /// Fails when this host cannot run instances (no run dir).
    fn host(&self) -> Result<()> {
        match &self.host_error {
            Some(e) => Err(DbError::Unavailable(e.clone())),
            None => Ok(()),
        }
    }

    /// The comment of this server's instances' OS users: `atrest <tag>
    /// <id>`, the tag naming this server's run directory ([`users`]).
    fn user_comment(&self, id: &str) -> String {
        let tag = self
            .config
            .run_dir
            .parent()
            .and_then(Path::file_name)
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        format!("atrest {tag} {id}")
    }

    /// The instance's OS user, made if it is missing (a host rebuilt from
    /// the same data dir gets the same ids back).
    fn user_of(&self, rec: &Record) -> Result<OsUser> {
        self.host()?;
        let uid = rec
            .os_uid
            .or_else(|| lock(&self.records).get(&rec.id).and_then(|r| r.os_uid))
            .ok_or_else(|| DbError::Failed(format!("instance {} has no OS user yet", rec.name)))?;
        users::ensure(&users::name_of(&rec.id), uid, &self.user_comment(&rec.id))
    }

    /// A uid for a new instance: free on this host and in no record.
    fn new_uid(&self) -> Result<u32> {
        let reserved: BTreeSet<u32> = lock(&self.records)
            .values()
            .filter_map(|r| r.os_uid)
            .collect();
        users::free_id(&self.config.uid_range, &reserved)
    }

    /// Removes the instance's OS user (once nothing of it is left).
    fn remove_user(&self, rec: &Record) {
        if rec.os_uid.is_some() {
            users::remove(&users::name_of(&rec.id), &self.user_comment(&rec.id));
        }
    }

    /// Gives each record of an earlier release a uid of its own (its user
    /// is made at its next start), and its disk to this service (which a
    /// customer attached to it refuses for now: the next start tries again).
    fn adopt_legacy(&self) -> Result<()> {
        let legacy: Vec<Record> = lock(&self.records)
            .values()
            .filter(|r| r.layout < LAYOUT && r.phase == "ready")
            .cloned()
            .collect();
        for mut r in legacy {
            let before = r.parameters.len();
            r.parameters.retain(|k, v| match params::check(k, v) {
                Ok(_) => true,
                Err(e) => {
                    tracing::warn!(instance = %r.name, parameter = %k, error = %e, "dropped a parameter off the allow-list");
                    false
                }
            });
            if r.os_uid.is_none() || r.parameters.len() != before {
                r.os_uid = Some(r.os_uid.map_or_else(|| self.new_uid(), Ok)?);
                self.write_record(&r)?;
                lock(&self.records).insert(r.id.clone(), r.clone());
            }
            if let Err(e) = r
                .caller()
                .and_then(|c| Ok(self.disks.adopt(&c, &r.disk, &r.managed_for())?))
            {
                tracing::warn!(instance = %r.name, disk = %r.disk, error = %e, "the instance's disk is not the database service's yet");
            }
        }
        Ok(())
    }

    /// The guard library for this host's PostgreSQL, installed once.
    fn guard(&self, bin: &PgBin) -> &guard::Status {
        self.guard
            .get_or_init(|| guard::Status::prepare(bin, &self.config.run_dir.join("lib")))
    }

    fn own(&self, caller: &Caller, name: &str) -> Result<Record> {
        lock(&self.records)
            .values()
            .find(|r| {
                r.owned_by(caller) && (r.name == name || r.id == name) && r.phase != "creating"
            })
            .cloned()
            .ok_or_else(|| DbError::NotFound {
                kind: "instance",
                id: name.to_owned(),
            })
    }

    fn view(&self, r: &Record) -> InstanceView {
        let d = r
            .caller()
            .ok()
            .and_then(|c| self.disks.describe_disk(&c, &r.disk).ok());
        let (encrypted, key_arn) = d.map_or((false, None), |d| (d.encrypted, d.key_arn));
        let running = self.is_running(r);
        let (state, reason) = if running {
            ("running", None)
        } else if let Err(e) = self.check_key(r) {
            ("locked", Some(e.to_string()))
        } else if r.running {
            (
                "failed",
                Some("PostgreSQL is not running; start it".to_owned()),
            )
        } else {
            ("stopped", None)
        };
        let primary = r.primary.as_ref().map(|p| {
            lock(&self.records)
                .get(p)
                .map_or_else(|| p.clone(), |x| x.name.clone())
        });
        InstanceView {
            id: r.id.clone(),
            name: r.name.clone(),
            class: r.class,
            state: state.to_owned(),
            reason,
            encrypted,
            key_arn,
            disk: r.disk.clone(),
            host: "127.0.0.1".into(),
            port: r.port,
            master_username: r.master_username.clone(),
            role: if r.primary.is_some() {
                "replica"
            } else {
                "primary"
            }
            .into(),
            primary,
            account: r.account.clone(),
            region: r.region.clone(),
            created: r.created.clone(),
            master_password: None,
            tags: r.tags.clone(),
            backup_retention_days: r.backup_retention_days,
        }
    }

    /// Refuses with [`DbError::Locked`] when the instance's key cannot be
    /// used.
    fn check_key(&self, r: &Record) -> Result<()> {
        let caller = r.caller()?;
        match self.disks.check_disk_key(&caller, &r.disk) {
            Ok(()) => Ok(()),
            Err(ServiceError::Locked {
                key_arn, reason, ..
            }) => Err(DbError::Locked {
                instance: r.name.clone(),
                key_arn,
                reason,
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Refuses unless `caller` may itself use `key_arn` through the
    /// database service for each of `actions` (the key policy, its identity
    /// policies, its grants), as RDS asks of whoever starts, backs up or
    /// restores an encrypted instance: the service's own grants do not
    /// stand in for the caller's rights. A key that is gone passes here;
    /// the service's own use of it names the lock.
    fn caller_may(&self, caller: &Caller, key_arn: &str, actions: &[&str]) -> Result<()> {
        match self
            .kms
            .service_session(SERVICE, &caller.region)?
            .check_customer(caller, key_arn, actions)
        {
            Err(KmsError::NotFound(_)) => Ok(()),
            r => r.map_err(DbError::from),
        }
    }

    /// [`Self::caller_may`] for the key of `rec`'s disk (none: nothing to
    /// ask).
    fn caller_may_use(&self, caller: &Caller, rec: &Record, actions: &[&str]) -> Result<()> {
        let key = self
            .disks
            .describe_disk(&rec.caller()?, &rec.disk)
            .ok()
            .and_then(|d| d.key_arn);
        match key {
            Some(k) => self.caller_may(caller, &k, actions),
            None => Ok(()),
        }
    }

    // ----- reads ----------------------------------------------------------

    /// Every instance this service runs as (id, name, account): what this
    /// node hosts, for the node registry. Gives no access.
    #[must_use]
    pub fn hosted(&self) -> Vec<(String, String, String)> {
        lock(&self.records)
            .values()
            .map(|r| (r.id.clone(), r.name.clone(), r.account.clone()))
            .collect()
    }

    /// The caller's instances.
    pub fn list(&self, caller: &Caller) -> Vec<InstanceView> {
        let rs: Vec<Record> = lock(&self.records)
            .values()
            .filter(|r| r.owned_by(caller) && r.phase != "creating")
            .cloned()
            .collect();
        rs.iter().map(|r| self.view(r)).collect()
    }

    /// One of the caller's instances, by name or id.
    pub fn describe(&self, caller: &Caller, name: &str) -> Result<InstanceView> {
        Ok(self.view(&self.own(caller, name)?))
    }

    /// The tags of the caller's instance `name_or_id`, `None` if it has no
    /// such instance: the condition keys a policy sees.
    #[must_use]
    pub fn tags_of(&self, caller: &Caller, name_or_id: &str) -> Option<BTreeMap<String, String>> {
        self.own(caller, name_or_id).ok().map(|r| r.tags)
    }

    /// The name of the caller's instance that `name_or_id` names (by name
    /// or id), `None` if none does: what a policy names it by, whichever
    /// way a request named it.
    #[must_use]
    pub fn name_of(&self, caller: &Caller, name_or_id: &str) -> Option<String> {
        self.own(caller, name_or_id).ok().map(|r| r.name)
    }

    // ----- create -----------------------------------------------------------

    /// Creates and starts an instance (R1, R6).
    pub fn create(&self, caller: &Caller, req: &NewInstance) -> Result<InstanceView> {
        if !valid_name(&req.name) {
            return Err(DbError::Invalid(format!(
                "'{}' is not a valid instance name: 1 to 63 of a-z, 0-9 and '-', starting with a letter",
                req.name
            )));
        }
        atrest_diskservice::tags::validate(&req.tags)
            .map_err(|e| DbError::Invalid(e.to_string()))?;
        let class = req.class.unwrap_or(Class::Tde);
        let keys = usize::from(req.key_id.is_some())
            + usize::from(req.service_key)
            + usize::from(req.unencrypted);
        if keys != 1 {
            return Err(DbError::Invalid(
                "give exactly one of a key ('key_id'), the service key ('service_key') or no encryption ('unencrypted', class disk only)".into(),
            ));
        }
        if req.unencrypted && class == Class::Tde {
            return Err(DbError::Invalid(
                "a tde instance is encrypted from creation; 'unencrypted' needs class disk".into(),
            ));
        }
        let master = req
            .master_username
            .clone()
            .unwrap_or_else(|| "postgres".into());
        if !valid_username(&master) {
            return Err(DbError::Invalid(format!(
                "'{master}' is not a valid master user name: 1 to 63 of a-z, 0-9 and '_', starting with a letter or '_', not 'pg_'"
            )));
        }
        if let Some(p) = &req.master_password
            && (p.len() < 8 || p.len() > 128 || p.chars().any(char::is_control))
        {
            return Err(DbError::Invalid(
                "the master password must be 8 to 128 characters, none of them control characters"
                    .into(),
            ));
        }
        let size = req.size.unwrap_or(self.config.default_size);
        let bin = self.bin()?;
        self.host()?;
        let _ops = lock(&self.ops);
        self.check_new_name(caller, &req.name)?;
        let port = self.choose_port(req.port)?;
        let key_id = if req.service_key {
            Some(
                self.kms
                    .service_session(SERVICE, &caller.region)?
                    .service_key(&caller.account)?,
            )
        } else {
            req.key_id.clone()
        };
        let mut rec = self.new_record(caller, &req.name, class, port, &master, None)?;
        rec.tags.clone_from(&req.tags);
        self.make_disk(caller, &mut rec, size, 4096, key_id)?;
        let generated = req.master_password.is_none();
        let password = match &req.master_password {
            Some(p) => zeroize::Zeroizing::new(p.clone()),
            None => zeroize::Zeroizing::new(random_hex(16)?),
        };
        let rec = self.provision(
            &bin,
            &rec,
            true,
            |layout, user| pg::initdb(&bin, user, layout),
            |rec| self.create_master(&bin, rec, &password),
        )?;
        tracing::info!(instance = %rec.name, id = %rec.id, port, "instance created");
        let mut v = self.view(&rec);
        if generated {
            v.master_password = Some(password.to_string());
        }
        Ok(v)
    }

    /// Makes a new instance's disk, the database service's own, encrypted
    /// under `key` (or not at all), and names it in the record.
    fn make_disk(
        &self,
        caller: &Caller,
        rec: &mut Record,
        size: u64,
        block_size: u32,
        key: Option<String>,
    ) -> Result<()> {
        let disk = NewDisk {
            size,
            block_size: Some(block_size),
            encrypted: Some(key.is_some()),
            key_id: key,
            shareable: Some(false),
            tags: BTreeMap::new(),
        };
        rec.disk = self
            .disks
            .create_disk(caller, &rec.managed_for(), &disk)?
            .id;
        Ok(())
    }

    /// The record of a new instance (phase `creating`; its disk is set
    /// once made): its id, its OS user's uid, its file system's UUID.
    fn new_record(
        &self,
        caller: &Caller,
        name: &str,
        class: Class,
        port: u16,
        master: &str,
        primary: Option<String>,
    ) -> Result<Record> {
        let mut uuid = [0u8; 16];
        atrest_crypto::rand::fill(&mut uuid)
            .map_err(|e| DbError::Failed(format!("random: {e}")))?;
        // A version 4 UUID.
        uuid[6] = (uuid[6] & 0x0f) | 0x40;
        uuid[8] = (uuid[8] & 0x3f) | 0x80;
        let h = hex::encode(uuid);
        let fs_uuid = format!(
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        );
        Ok(Record {
            id: format!("db-{}", random_hex(8)?),
            name: name.to_owned(),
            account: caller.account.as_str().to_owned(),
            region: caller.region.clone(),
            class,
            disk: String::new(),
            port,
            master_username: master.to_owned(),
            phase: "creating".into(),
            running: true,
            primary,
            created: now_rfc3339(),
            agent_token_sha256: None,
            backup_grant: None,
            parameters: BTreeMap::new(),
            backup_retention_days: 0,
            os_uid: Some(self.new_uid()?),
            fs_uuid: Some(fs_uuid),
            layout: LAYOUT,
            tags: BTreeMap::new(),
        })
    }

    /// Builds a new instance on its new disk: saves its record (phase
    /// `creating`), makes (when `fresh`; a clone's disk has one) and mounts
    /// its file system, `fill`s it as the instance's user (initdb, a base
    /// backup, a restore), starts PostgreSQL, runs `started` and marks it
    /// `ready`. Any failure rolls everything back (the OS user too).
    fn provision(
        &self,
        bin: &PgBin,
        rec: &Record,
        fresh: bool,
        fill: impl FnOnce(&Layout, &OsUser) -> Result<()>,
        started: impl FnOnce(&Record) -> Result<()>,
    ) -> Result<Record> {
        let r = self.save(rec).and_then(|()| {
            let layout = if fresh {
                self.mount_new(&rec.caller()?, rec)?
            } else {
                self.mount_existing(rec)?
            };
            let user = self.user_of(rec)?;
            layout.prepare_fs(&user)?;
            fill(&layout, &user)?;
            self.start_locked(bin, rec)?;
            started(rec)?;
            let mut ready = rec.clone();
            ready.phase = "ready".into();
            self.save(&ready)?;
            Ok(lock(&self.records).get(&rec.id).cloned().unwrap_or(ready))
        });
        if let Err(e) = &r {
            tracing::error!(instance = %rec.name, error = %e, "creating an instance failed; rolling back");
            self.roll_back(bin, rec);
        }
        r
    }

    /// Refuses a name that is invalid or taken in the caller's account
    /// and region.
    fn check_new_name(&self, caller: &Caller, name: &str) -> Result<()> {
        if !valid_name(name) {
            return Err(DbError::Invalid(format!(
                "'{name}' is not a valid instance name: 1 to 63 of a-z, 0-9 and '-', starting with a letter"
            )));
        }
        if lock(&self.records)
            .values()
            .any(|r| r.owned_by(caller) && r.name == name)
        {
            return Err(DbError::Conflict(format!(
                "an instance named '{name}' already exists"
            )));
        }
        Ok(())
    }

    fn choose_port(&self, port: Option<u16>) -> Result<u16> {
        let taken: Vec<u16> = lock(&self.records).values().map(|r| r.port).collect();
        match port {
            Some(p) if p < 1024 => Err(DbError::Invalid(format!(
                "port {p} is privileged; choose 1024 to 65535"
            ))),
            Some(p) if taken.contains(&p) => Err(DbError::Conflict(format!(
                "port {p} belongs to another instance"
            ))),
            Some(p) if !host::port_free(p) => Err(DbError::Conflict(format!(
                "port {p} is in use on 127.0.0.1"
            ))),
            Some(p) => Ok(p),
            None => {
                for _ in 0..20 {
                    let p = host::free_port()?;
                    if !taken.contains(&p) {
                        return Ok(p);
                    }
                }
                Err(DbError::Failed("no free port found".into()))
            }
        }
    }

    /// Runs one SQL statement on the instance as atrest's superuser, over
    /// its socket (unaligned, tuples only). An instance of an earlier
    /// release whose roles are not migrated yet (a standby of a primary not
    /// started since, a restore of an old backup before it converged) has
    /// no `atrest_admin`: its master is still the superuser then.
    pub(crate) fn sql(&self, bin: &PgBin, rec: &Record, sql: &str) -> Result<String> {
        let layout = self.layout(&rec.id);
        let conn = |role, db| pg::Conn {
            bin,
            layout: &layout,
            port: rec.port,
            role,
            db,
        };
        match conn(pg::ADMIN_ROLE, pg::ADMIN_DB).query(sql) {
            Err(e) if roles::not_migrated(&e) => conn(&rec.master_username, "postgres").query(sql),
            r => r,
        }
    }

    /// [`DbService::sql`] with the statements on stdin (they carry a
    /// secret).
    pub(crate) fn sql_stdin(&self, bin: &PgBin, rec: &Record, sql: &str) -> Result<String> {
        let layout = self.layout(&rec.id);
        let conn = |role, db| pg::Conn {
            bin,
            layout: &layout,
            port: rec.port,
            role,
            db,
        };
        match conn(pg::ADMIN_ROLE, pg::ADMIN_DB).query_stdin(sql) {
            Err(e) if roles::not_migrated(&e) => {
                conn(&rec.master_username, "postgres").query_stdin(sql)
            }
            r => r,
        }
    }

    /// Records that the instance's disk is attached as `device` (so that
    /// stopping detaches it); answers its layout.
    fn track(&self, rec: &Record, device: &Path, user: &OsUser) -> Layout {
        let layout = self.layout(&rec.id);
        lock(&self.live).insert(
            rec.id.clone(),
            Live {
                layout: layout.clone(),
                device: device.to_path_buf(),
                pid: None,
                user: user.clone(),
                unusable_since: None,
            },
        );
        layout
    }

    /// Attaches the new instance's disk, makes its file system and mounts
    /// it.
    fn mount_new(&self, caller: &Caller, rec: &Record) -> Result<Layout> {
        let user = self.user_of(rec)?;
        let uuid = rec.fs_uuid.clone().ok_or_else(|| {
            DbError::Failed(format!("instance {} has no file system UUID", rec.name))
        })?;
        let device = self.volumes.attach(caller, &rec.disk)?;
        let layout = self.track(rec, &device, &user);
        layout.prepare_run_dir(&user)?;
        host::mkfs(&device, &uuid, user.gid)?;
        host::check_fs(&device, Some(&uuid), &rec.name)?;
        host::mount(&device, &layout.mnt)?;
        Ok(layout)
    }

    /// Mounts an existing instance's disk (attaching it first), once its
    /// file system passed its check.
    fn mount_existing(&self, rec: &Record) -> Result<Layout> {
        let layout = self.layout(&rec.id);
        if lock(&self.live).contains_key(&rec.id) && host::is_mounted(&layout.mnt) {
            return Ok(layout);
        }
        self.check_key(rec)?;
        let user = self.user_of(rec)?;
        let caller = rec.caller()?;
        let device = match self.volumes.attach(&caller, &rec.disk) {
            Ok(d) => d,
            Err(ServiceError::Locked {
                key_arn, reason, ..
            }) => {
                return Err(DbError::Locked {
                    instance: rec.name.clone(),
                    key_arn,
                    reason,
                });
            }
            Err(e) => return Err(e.into()),
        };
        self.track(rec, &device, &user);
        let expected = rec.fs_uuid.clone().or_else(|| {
            lock(&self.records)
                .get(&rec.id)
                .and_then(|r| r.fs_uuid.clone())
        });
        let mounted = layout.prepare_run_dir(&user).and_then(|()| {
            let uuid = host::check_fs(&device, expected.as_deref(), &rec.name)?;
            if expected.is_none() {
                // An instance of an earlier release: its file system's
                // UUID is recorded now and checked from then on.
                let mut r = rec.clone();
                r.fs_uuid = Some(uuid);
                self.save(&r)?;
            }
            host::mount(&device, &layout.mnt)
        });
        if let Err(e) = mounted {
            lock(&self.live).remove(&rec.id);
            let _ = self.volumes.detach(&caller, &rec.disk);
            return Err(e);
        }
        Ok(layout)
    }

    /// Starts PostgreSQL on a mounted instance; records its pid. An
    /// instance of an earlier release has its files migrated first, and a
    /// primary's roles converge once it runs ([`DbService::converge_roles`]).
    fn start_locked(&self, bin: &PgBin, rec: &Record) -> Result<()> {
        let layout = self.layout(&rec.id);
        let user = self.user_of(rec)?;
        if let Some(pid) = lock(&self.live).get(&rec.id).and_then(|l| l.pid)
            && host::is_postgres(pid, user.uid)
        {
            return Ok(());
        }
        if !host::port_free(rec.port) {
            return Err(DbError::Conflict(format!(
                "instance {} cannot start: port {} is in use on 127.0.0.1",
                rec.name, rec.port
            )));
        }
        let stored_layout = lock(&self.records)
            .get(&rec.id)
            .map_or(rec.layout, |r| r.layout.max(rec.layout));
        if stored_layout < LAYOUT {
            self.disks
                .adopt(&rec.caller()?, &rec.disk, &rec.managed_for())?;
            self.migrate_files(rec, &user, &layout)?;
        }
        layout.prepare_fs(&user)?;
        let settings = Settings {
            port: rec.port,
            guard: self.guard(bin).path.clone(),
            params: rec
                .parameters
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            extra: self.extra_settings(rec, &user, &layout)?,
        };
        pg::write_config(&user, &layout, &rec.master_username, &settings)?;
        self.mark_role(&user, rec)?;
        let pid = pg::start(bin, &user, &layout, rec.port, START_WAIT)?;
        let pidfile = layout.dir.join("postmaster.pid");
        std::fs::write(&pidfile, format!("{pid} {}", user.uid))
            .map_err(|e| DbError::Failed(format!("writing {}: {e}", pidfile.display())))?;
        if let Some(l) = lock(&self.live).get_mut(&rec.id) {
            l.pid = Some(pid);
            l.unusable_since = None;
        }
        if rec.primary.is_none() && !self.is_restoring(rec) {
            self.converge_roles(bin, rec)?;
        }
        if stored_layout < LAYOUT {
            let mut r = lock(&self.records)
                .get(&rec.id)
                .cloned()
                .unwrap_or_else(|| rec.clone());
            r.layout = LAYOUT;
            self.save(&r)?;
            tracing::info!(instance = %rec.name, user = %user.name, "instance migrated to its own OS user");
        }
        Ok(())
    }

    /// Settings beyond port and sockets: replication (every instance can
    /// have standbys; a standby's primary), archiving.
    fn extra_settings(
        &self,
        rec: &Record,
        user: &OsUser,
        layout: &Layout,
    ) -> Result<Vec<(String, String)>> {
        let mut v: Vec<(String, String)> = vec![
            ("wal_level".into(), "replica".into()),
            ("max_wal_senders".into(), "10".into()),
            ("max_replication_slots".into(), "10".into()),
            ("wal_keep_size".into(), pg::quote("256MB")),
            ("hot_standby".into(), "on".into()),
        ];
        v.extend(self.standby_settings(rec, user, layout)?);
        v.extend(self.archive_settings(rec));
        Ok(v)
    }

    /// Moves an instance of an earlier release onto its own OS user: the
    /// file system's root becomes root's (closing it to every other user
    /// first), atrest's directory root's alone (a `replication.pw` that is
    /// not root's is dropped), the data directory the instance user's, and
    /// atrest's old settings file (which could hold a standby's password)
    /// leaves the data directory. Parameters off the allow-list are dropped.
    fn migrate_files(&self, rec: &Record, user: &OsUser, layout: &Layout) -> Result<()> {
        use crate::tree::Owner;
        let err = |e: std::io::Error| {
            DbError::Failed(format!("migrating the files of instance {}: {e}", rec.name))
        };
        let t = layout.tree()?;
        t.set_root(
            Owner {
                uid: 0,
                gid: user.gid,
            },
            0o750,
        )
        .map_err(err)?;
        match t.stat(pg::SECRETS_DIR).map_err(err)? {
            Some(s) if tree::is_dir(&s) => {}
            Some(_) => t.remove(pg::SECRETS_DIR).map_err(err)?,
            None => {}
        }
        t.ensure_dir(pg::SECRETS_DIR, Owner::ROOT, 0o700)
            .map_err(err)?;
        let secrets = t.subtree(pg::SECRETS_DIR).map_err(err)?;
        for name in ["agent.token", "initdb.pw"] {
            secrets.remove(name).map_err(err)?;
        }
        let keep_pw = secrets
            .stat("replication.pw")
            .map_err(err)?
            .is_some_and(|s| s.st_uid == 0 && tree::is_single_file(&s));
        if !keep_pw {
            secrets.remove("replication.pw").map_err(err)?;
        }
        let n = t.chown_all(pg::PGDATA, user.owner()).map_err(err)?;
        layout.pgdata_tree()?.remove("atrest.conf").map_err(err)?;
        tracing::info!(instance = %rec.name, user = %user.name, files = n, "migrated the instance's files to its own OS user");
        Ok(())
    }

    /// Stops PostgreSQL (if running), unmounts and detaches.
    fn shut(&self, bin: Option<&PgBin>, rec: &Record) {
        let live = lock(&self.live).remove(&rec.id);
        let layout = live
            .as_ref()
            .map_or_else(|| self.layout(&rec.id), |l| l.layout.clone());
        let pid = live.as_ref().and_then(|l| l.pid);
        let user = live
            .as_ref()
            .map(|l| l.user.clone())
            .or_else(|| self.user_of(rec).ok());
        if let Some(user) = &user {
            if let Some(bin) = bin
                && host::is_mounted(&layout.mnt)
                && pid.is_some_and(|p| host::is_postgres(p, user.uid))
            {
                pg::stop(bin, user, &layout, pid);
            }
            if let Some(pid) = pid {
                host::kill_postgres(pid, user.uid);
            }
        }
        let _ = std::fs::remove_file(layout.dir.join("postmaster.pid"));
        if let Err(e) = host::unmount(&layout.mnt) {
            tracing::error!(instance = %rec.name, error = %e, "unmounting failed");
        } else if !host::is_mounted(&layout.mnt) {
            // Nothing of a stopped instance stays under /run (its
            // configuration, a standby's password file, its socket).
            let _ = std::fs::remove_dir_all(&layout.dir);
        }
        if live.is_some()
            && let Ok(caller) = rec.caller()
            && let Err(e) = self.volumes.detach(&caller, &rec.disk)
        {
            tracing::warn!(instance = %rec.name, error = %e, "detaching the instance's disk failed");
        }
    }

    fn roll_back(&self, bin: &PgBin, rec: &Record) {
        self.shut(Some(bin), rec);
        if !rec.disk.is_empty()
            && let Ok(caller) = rec.caller()
            && let Err(e) = self.disks.delete_disk(&caller, &rec.disk)
        {
            tracing::error!(instance = %rec.name, disk = %rec.disk, error = %e, "deleting the disk of a failed creation failed");
        }
        if let Err(e) = self.forget(&rec.id) {
            tracing::error!(instance = %rec.name, error = %e, "removing the record of a failed creation failed");
        }
        self.remove_user(rec);
    }

    // ----- lifecycle --------------------------------------------------------

    /// Starts the instance: unlocks its disk's key first (R5).
    pub fn start(&self, caller: &Caller, name: &str) -> Result<InstanceView> {
        let bin = self.bin()?;
        self.host()?;
        let _ops = lock(&self.ops);
        let mut rec = self.own(caller, name)?;
        self.caller_may_use(caller, &rec, &["Decrypt"])?;
        self.bring_up(&bin, &rec)?;
        rec.running = true;
        self.save(&rec)?;
        Ok(self.view(&rec))
    }

    fn bring_up(&self, bin: &PgBin, rec: &Record) -> Result<()> {
        self.check_key(rec)?;
        self.mount_existing(rec)?;
        if let Err(e) = self.start_locked(bin, rec) {
            self.shut(Some(bin), rec);
            return Err(e);
        }
        Ok(())
    }

    /// Stops the instance (a clean shutdown), unmounts and detaches its
    /// disk: its key is no longer in memory.
    pub fn stop(&self, caller: &Caller, name: &str) -> Result<InstanceView> {
        let bin = self.bin().ok();
        let _ops = lock(&self.ops);
        let mut rec = self.own(caller, name)?;
        self.shut(bin.as_ref(), &rec);
        rec.running = false;
        self.save(&rec)?;
        Ok(self.view(&rec))
    }

    /// Stops and starts the instance; refused while its key is unusable
    /// (it is left running then).
    pub fn restart(&self, caller: &Caller, name: &str) -> Result<InstanceView> {
        let bin = self.bin()?;
        self.host()?;
        let _ops = lock(&self.ops);
        let mut rec = self.own(caller, name)?;
        self.check_key(&rec)?;
        self.caller_may_use(caller, &rec, &["Decrypt"])?;
        self.shut(Some(&bin), &rec);
        self.bring_up(&bin, &rec)?;
        rec.running = true;
        self.save(&rec)?;
        Ok(self.view(&rec))
    }

    /// Deletes the instance, its disk and its OS user. Its backups stay
    /// (they are deleted on their own).
    pub fn delete(&self, caller: &Caller, name: &str) -> Result<()> {
        let bin = self.bin().ok();
        let _ops = lock(&self.ops);
        let rec = self.own(caller, name)?;
        if let Some(r) = lock(&self.records)
            .values()
            .find(|r| r.primary.as_deref() == Some(rec.id.as_str()))
        {
            return Err(DbError::Conflict(format!(
                "instance {} has the replica {}; delete it first",
                rec.name, r.name
            )));
        }
        self.shut(bin.as_ref(), &rec);
        self.disks.delete_disk(caller, &rec.disk)?;
        self.forget(&rec.id)?;
        self.remove_user(&rec);
        self.forget_backups(&rec);
        tracing::info!(instance = %rec.name, "instance deleted");
        Ok(())
    }

    // ----- server lifecycle -------------------------------------------------

    /// Rolls back creations a crash interrupted and starts every instance
    /// that should run (those whose key is unusable stay locked); primaries
    /// first, so that an earlier release's roles are migrated before their
    /// standbys start.
    pub fn resume(&self) {
        let bin = self.bin().ok();
        let mut records: Vec<Record> = lock(&self.records).values().cloned().collect();
        records.sort_by_key(|r| r.primary.is_some());
        for rec in records {
            if rec.phase == "creating" {
                tracing::warn!(instance = %rec.name, "rolling back a creation a crash interrupted");
                if let Some(b) = &bin {
                    self.roll_back(b, &rec);
                }
                continue;
            }
            if !rec.running {
                continue;
            }
            let Some(b) = bin.as_ref().filter(|_| self.host_error.is_none()) else {
                tracing::error!(instance = %rec.name, "PostgreSQL is not available; instance not started");
                continue;
            };
            let _ops = lock(&self.ops);
            match self.bring_up(b, &rec) {
                Ok(()) => tracing::info!(instance = %rec.name, "instance started"),
                Err(e) => tracing::error!(instance = %rec.name, error = %e, "instance not started"),
            }
        }
    }

    /// Stops every instance (at shutdown); they start again with the
    /// server.
    pub fn shutdown(&self) {
        let bin = self.bin().ok();
        let _ops = lock(&self.ops);
        let ids: Vec<String> = lock(&self.live).keys().cloned().collect();
        for id in ids {
            let rec = lock(&self.records).get(&id).cloned();
            if let Some(rec) = rec {
                self.shut(bin.as_ref(), &rec);
            }
        }
        // The WAL agent's socket goes; then the run dir holds only the
        // guard library, which goes too.
        self.close_backups();
        let _ = std::fs::remove_dir_all(self.config.run_dir.join("lib"));
        let _ = std::fs::remove_dir(&self.config.run_dir);
    }

    /// One pass of the check of running instances (R5): a key unusable
    /// for longer than the policy allows stops the instance; a PostgreSQL
    /// server that died (killed, crashed) is started again, with crash
    /// recovery, as long as its key can be used.
    pub fn check(&self) {
        self.retention_pass_if_due();
        let ids: Vec<String> = lock(&self.live).keys().cloned().collect();
        for id in ids {
            let Some(rec) = lock(&self.records).get(&id).cloned() else {
                continue;
            };
            if rec.phase != "ready" {
                continue;
            }
            let unusable = matches!(self.check_key(&rec), Err(DbError::Locked { .. }));
            let (due, dead) = {
                let mut live = lock(&self.live);
                let Some(l) = live.get_mut(&id) else { continue };
                let dead = l.pid.is_some_and(|p| !host::is_postgres(p, l.user.uid));
                let due = match (unusable, self.config.on_key_loss) {
                    (true, OnKeyLoss::CloseAfter(after)) => {
                        let since = *l.unusable_since.get_or_insert_with(Instant::now);
                        since.elapsed() >= after
                    }
                    (true, OnKeyLoss::KeepServing) => false,
                    (false, _) => {
                        l.unusable_since = None;
                        false
                    }
                };
                (due, dead)
            };
            if !(due || (dead && rec.running)) {
                continue;
            }
            let Ok(_ops) = self.ops.try_lock() else {
                continue;
            };
            let bin = self.bin().ok();
            if due {
                tracing::warn!(instance = %rec.name, "stopping the instance: its key has been unusable longer than the policy allows");
                self.shut(bin.as_ref(), &rec);
            } else if unusable {
                tracing::warn!(instance = %rec.name, "PostgreSQL died and the key cannot be used: not started again");
                self.shut(bin.as_ref(), &rec);
            } else if let Some(b) = &bin {
                tracing::warn!(instance = %rec.name, "PostgreSQL died; starting it again");
                if let Err(e) = self.start_locked(b, &rec) {
                    tracing::error!(instance = %rec.name, error = %e, "starting PostgreSQL again failed");
                }
            }
        }
    }

    /// How often [`DbService::check`] should run.
    #[must_use]
    pub fn check_interval(&self) -> Duration {
        self.config.check_interval
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_classes_and_users_are_checked() {
        for good in ["a", "orders", "app-2", &"x".repeat(63)] {
            assert!(valid_name(good), "{good}");
        }
        for bad in [
            "",
            "2app",
            "App",
            "a_b",
            "a.b",
            "-a",
            &"x".repeat(64),
            "a/b",
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
        for good in ["postgres", "_admin", "app_1"] {
            assert!(valid_username(good), "{good}");
        }
        for bad in [
            "",
            "pg_admin",
            "Admin",
            "a-b",
            "1a",
            "a b",
            "atrest_admin",
            "atrest",
        ] {
            assert!(!valid_username(bad), "{bad}");
        }
        assert_eq!("tde".parse::<Class>().ok(), Some(Class::Tde));
        assert_eq!("disk".parse::<Class>().ok(), Some(Class::Disk));
        assert!(matches!("TDE".parse::<Class>(), Err(DbError::Invalid(_))));
    }

    #[test]
    fn configuration_values_are_quoted() {
        assert_eq!(pg::quote("a"), "'a'");
        assert_eq!(pg::quote("it's"), "'it''s'");
        assert_eq!(pg::quote("a\\b"), "'a\\\\b'");
    }

    #[test]
    fn client_errors_are_not_server_faults() {
        let client = [
            DbError::NotFound {
                kind: "instance",
                id: "x".into(),
            },
            DbError::Invalid("x".into()),
            DbError::Conflict("x".into()),
            DbError::Unavailable("x".into()),
            DbError::Damaged("x".into()),
            DbError::ObjectStore {
                location: "s3://b".into(),
                source: atrest_objstore::ObjError::NotFound { object: "o".into() },
            },
            DbError::ParameterRefused(ParamError::NotAllowed {
                name: "port".into(),
            }),
            DbError::Locked {
                instance: "x".into(),
                key_arn: "arn".into(),
                reason: KeyUnusable::Disabled,
            },
        ];
        for e in client {
            assert!(!e.is_server_fault(), "{e:?}");
        }
        assert!(DbError::Failed("x".into()).is_server_fault());
        let locked = DbError::Locked {
            instance: "orders".into(),
            key_arn: "arn:aws:kms:us-east-1:111122223333:key/k".into(),
            reason: KeyUnusable::Disabled,
        }
        .to_string();
        assert!(
            locked.contains("orders") && locked.contains("key/k"),
            "{locked}"
        );
    }
}
