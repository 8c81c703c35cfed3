//! The database service: PostgreSQL instances whose every byte at rest is
//! encrypted under the customer's key (R1 to R8).
//!
//! Owns: instances (a name, a class, a disk, a port, a role), running the
//! real, unmodified PostgreSQL on a file system on the instance's encrypted
//! disk, locking an instance when its key becomes unusable, and, in
//! [`backup`], encrypted base backups and WAL archives. The disk (its key,
//! its grant, its data) is the disk service's ([`atrest_diskservice`]); the
//! block device that puts it on this host is the server's local attach,
//! behind [`Volumes`].
//!
//! # An instance on the host
//!
//! The disk is attached locally (a loop device), formatted ext4 and
//! mounted under `<run>/db/<id>/mnt` (outside the data dir, on tmpfs). The
//! PostgreSQL data directory (`pgdata`: tables, WAL, temporary files), its
//! log and atrest's per-instance secrets all live on that file system, so
//! they reach the disk engine only as ciphertext. PostgreSQL runs as an
//! unprivileged OS user (`postgres` by default), listens on 127.0.0.1 and
//! on a socket under `<run>/db/<id>/sock`. atrest's own connections use
//! that socket with peer authentication; every TCP connection needs a
//! password (SCRAM).
//!
//! # Records and crashes
//!
//! An instance's record is a JSON file under `<data dir>/db/instances`,
//! replaced atomically. It holds no secret. A record is written with phase
//! `creating` before the disk is made, so that a crash in the middle of a
//! creation is rolled back (disk deleted, record removed) at the next
//! start. The postmaster's pid is kept under the run dir, so that after the
//! atrest server is killed (its disks gone from under PostgreSQL) the next
//! start kills the orphaned server, unmounts, and starts it again: crash
//! recovery from the WAL on the encrypted disk.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod agent;
mod artifact;
mod backup;
mod encryption;
mod guard;
mod host;
mod manage;
mod pg;
mod replica;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use atrest_diskservice::{DiskService, NewDisk, ServiceError};
use atrest_kms::names::AccountId;
use atrest_kms::{Caller, KeyService, KeyUnusable, KmsError};
use serde::{Deserialize, Serialize};

use crate::host::OsUser;
use crate::pg::{Layout, PgBin, Settings};

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
pub use backup::BackupView;
pub use encryption::EncryptionChange;

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
    /// The OS user PostgreSQL runs as.
    pub os_user: String,
    /// Instance records (`<data dir>/db`).
    pub state_dir: PathBuf,
    /// Mounts, sockets and pids (`/run/atrest/<hash>/db`).
    pub run_dir: PathBuf,
    /// Backup storage (default `<data dir>/backups`).
    pub backup_dir: PathBuf,
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
    /// From the disk service.
    #[error(transparent)]
    Disk(#[from] ServiceError),
    /// From the key service.
    #[error(transparent)]
    Kms(#[from] KmsError),
    /// This host cannot run PostgreSQL as configured.
    #[error("{0}")]
    Unavailable(String),
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
    /// The customer's PostgreSQL parameters, written into `atrest.conf`
    /// at every start.
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
}

impl Record {
    fn owned_by(&self, caller: &Caller) -> bool {
        self.account == caller.account.as_str() && self.region == caller.region
    }

    fn caller(&self) -> Result<Caller> {
        let account = AccountId::parse(&self.account)
            .ok_or_else(|| DbError::Failed(format!("record {} names a bad account", self.id)))?;
        Ok(Caller::root(account, &self.region))
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
}

/// A running (or mounted) instance on this host.
#[derive(Debug)]
struct Live {
    layout: Layout,
    /// The block device the file system is on.
    device: PathBuf,
    pid: Option<u32>,
    /// When its key was first seen unusable.
    unusable_since: Option<Instant>,
}

/// The database service.
pub struct DbService {
    kms: Arc<KeyService>,
    disks: Arc<DiskService>,
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
            disks,
            volumes,
            records: Mutex::new(BTreeMap::new()),
            live: Mutex::new(BTreeMap::new()),
            ops: Mutex::new(()),
            backup: backup::State::default(),
            host_error,
            config,
        });
        svc.load()?;
        if svc.host_error.is_none() {
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
            if let Some(pid) = std::fs::read_to_string(dir.join("postmaster.pid"))
                .ok()
                .and_then(|t| t.trim().parse::<u32>().ok())
            {
                if host::is_postgres(pid) {
                    tracing::warn!(pid, dir = %dir.display(), "killing a PostgreSQL server a crash of atrest left running");
                }
                host::kill_postgres(pid);
                let _ = std::fs::remove_file(dir.join("postmaster.pid"));
            }
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

    /// Saves `r`. The backup fields (agent token, backup grant) are the
    /// backup module's: a save keeps the stored values, so that a copy of
    /// the record taken before they changed does not undo them.
    fn save(&self, r: &Record) -> Result<()> {
        let mut records = lock(&self.records);
        let mut r = r.clone();
        if let Some(stored) = records.get(&r.id) {
            r.agent_token_sha256.clone_from(&stored.agent_token_sha256);
            r.backup_grant.clone_from(&stored.backup_grant);
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
        let dir = self.config.run_dir.join(id);
        Layout {
            mnt: dir.join("mnt"),
            sock: dir.join("sock"),
        }
    }

    fn bin(&self) -> Result<PgBin> {
        PgBin::find(self.config.pg_bin.as_deref())
    }

    fn os_user(&self) -> Result<OsUser> {
        if let Some(e) = &self.host_error {
            return Err(DbError::Unavailable(e.clone()));
        }
        OsUser::lookup(&self.config.os_user)
    }

    /// The caller's instance named (or with id) `name`.
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
        let live = lock(&self.live);
        let running = live
            .get(&r.id)
            .and_then(|l| l.pid)
            .is_some_and(host::is_postgres);
        drop(live);
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

    // ----- reads ----------------------------------------------------------

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

    // ----- create -----------------------------------------------------------

    /// Creates and starts an instance (R1, R6).
    pub fn create(&self, caller: &Caller, req: &NewInstance) -> Result<InstanceView> {
        if !valid_name(&req.name) {
            return Err(DbError::Invalid(format!(
                "'{}' is not a valid instance name: 1 to 63 of a-z, 0-9 and '-', starting with a letter",
                req.name
            )));
        }
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
        let user = self.os_user()?;
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
        let disk = self.disks.create_disk(
            caller,
            &NewDisk {
                size,
                block_size: Some(4096),
                encrypted: Some(!req.unencrypted),
                key_id,
                shareable: Some(false),
            },
        )?;
        let rec = self.new_record(caller, &req.name, class, disk.id, port, &master, None)?;
        let generated = req.master_password.is_none();
        let password = match &req.master_password {
            Some(p) => zeroize::Zeroizing::new(p.clone()),
            None => zeroize::Zeroizing::new(random_hex(16)?),
        };
        let rec = self.provision(
            &bin,
            &user,
            &rec,
            true,
            |layout| pg::initdb(&bin, &user, layout, &master, &password),
            |_| Ok(()),
        )?;
        tracing::info!(instance = %rec.name, id = %rec.id, port, "instance created");
        let mut v = self.view(&rec);
        if generated {
            v.master_password = Some(password.to_string());
        }
        Ok(v)
    }

    /// The record of a new instance on `disk` (phase `creating`).
    #[expect(clippy::too_many_arguments, reason = "the fields of a new record")]
    fn new_record(
        &self,
        caller: &Caller,
        name: &str,
        class: Class,
        disk: String,
        port: u16,
        master: &str,
        primary: Option<String>,
    ) -> Result<Record> {
        Ok(Record {
            id: format!("db-{}", random_hex(8)?),
            name: name.to_owned(),
            account: caller.account.as_str().to_owned(),
            region: caller.region.clone(),
            class,
            disk,
            port,
            master_username: master.to_owned(),
            phase: "creating".into(),
            running: true,
            primary,
            created: now_rfc3339(),
            agent_token_sha256: None,
            backup_grant: None,
            parameters: BTreeMap::new(),
        })
    }

    /// Builds a new instance on its new disk: saves its record (phase
    /// `creating`), makes (when `fresh`; a clone's disk has one) and mounts
    /// its file system, `fill`s it (initdb,
    /// a base backup, a restore), starts PostgreSQL, runs `started` and
    /// marks it `ready`. Any failure rolls everything back.
    fn provision(
        &self,
        bin: &PgBin,
        user: &OsUser,
        rec: &Record,
        fresh: bool,
        fill: impl FnOnce(&Layout) -> Result<()>,
        started: impl FnOnce(&Record) -> Result<()>,
    ) -> Result<Record> {
        let r = self.save(rec).and_then(|()| {
            let layout = if fresh {
                self.mount_new(&rec.caller()?, rec)?
            } else {
                self.mount_existing(rec)?
            };
            fill(&layout)?;
            self.start_locked(bin, user, rec)?;
            started(rec)?;
            let mut ready = rec.clone();
            ready.phase = "ready".into();
            self.save(&ready)?;
            Ok(lock(&self.records).get(&rec.id).cloned().unwrap_or(ready))
        });
        if let Err(e) = &r {
            tracing::error!(instance = %rec.name, error = %e, "creating an instance failed; rolling back");
            self.roll_back(bin, user, rec);
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

    /// Runs one SQL statement on the instance as its superuser, over its
    /// socket (unaligned, tuples only).
    pub(crate) fn sql(
        &self,
        bin: &PgBin,
        user: &OsUser,
        rec: &Record,
        sql: &str,
    ) -> Result<String> {
        pg::query(
            bin,
            user,
            &self.layout(&rec.id),
            rec.port,
            &rec.master_username,
            sql,
        )
    }

    /// [`DbService::sql`] with the statement on stdin (it carries a secret).
    pub(crate) fn sql_stdin(
        &self,
        bin: &PgBin,
        user: &OsUser,
        rec: &Record,
        sql: &str,
    ) -> Result<()> {
        pg::query_stdin(
            bin,
            user,
            &self.layout(&rec.id),
            rec.port,
            &rec.master_username,
            sql,
        )
    }

    /// Records that the instance's disk is attached as `device` (so that
    /// stopping detaches it); answers its layout.
    fn track(&self, rec: &Record, device: &Path) -> Layout {
        let layout = self.layout(&rec.id);
        lock(&self.live).insert(
            rec.id.clone(),
            Live {
                layout: layout.clone(),
                device: device.to_path_buf(),
                pid: None,
                unusable_since: None,
            },
        );
        layout
    }

    /// Attaches the new instance's disk, makes its file system and mounts
    /// it.
    fn mount_new(&self, caller: &Caller, rec: &Record) -> Result<Layout> {
        let device = self.volumes.attach(caller, &rec.disk)?;
        let layout = self.track(rec, &device);
        host::mkfs(&device)?;
        host::mount(&device, &layout.mnt)?;
        Ok(layout)
    }

    /// Mounts an existing instance's disk (attaching it first).
    fn mount_existing(&self, rec: &Record) -> Result<Layout> {
        let layout = self.layout(&rec.id);
        if lock(&self.live).contains_key(&rec.id) && host::is_mounted(&layout.mnt) {
            return Ok(layout);
        }
        self.check_key(rec)?;
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
        self.track(rec, &device);
        if let Err(e) = host::mount(&device, &layout.mnt) {
            lock(&self.live).remove(&rec.id);
            let _ = self.volumes.detach(&caller, &rec.disk);
            return Err(e);
        }
        Ok(layout)
    }

    /// Starts PostgreSQL on a mounted instance; records its pid.
    fn start_locked(&self, bin: &PgBin, user: &OsUser, rec: &Record) -> Result<()> {
        let layout = self.layout(&rec.id);
        if let Some(pid) = lock(&self.live).get(&rec.id).and_then(|l| l.pid)
            && host::is_postgres(pid)
        {
            return Ok(());
        }
        if !host::port_free(rec.port) {
            return Err(DbError::Conflict(format!(
                "instance {} cannot start: port {} is in use on 127.0.0.1",
                rec.name, rec.port
            )));
        }
        let settings = Settings {
            port: rec.port,
            extra: self.extra_settings(rec),
        };
        pg::write_settings(user, &layout, &settings)?;
        self.mark_standby(user, rec)?;
        let pid = pg::start(bin, user, &layout, rec.port, START_WAIT)?;
        let pidfile = self.config.run_dir.join(&rec.id).join("postmaster.pid");
        std::fs::write(&pidfile, pid.to_string())
            .map_err(|e| DbError::Failed(format!("writing {}: {e}", pidfile.display())))?;
        if let Some(l) = lock(&self.live).get_mut(&rec.id) {
            l.pid = Some(pid);
            l.unusable_since = None;
        }
        Ok(())
    }

    /// Settings beyond port and sockets: replication (every instance can
    /// have standbys; a standby's primary), archiving.
    fn extra_settings(&self, rec: &Record) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = vec![
            ("wal_level".into(), "replica".into()),
            ("max_wal_senders".into(), "10".into()),
            ("max_replication_slots".into(), "10".into()),
            ("wal_keep_size".into(), pg::quote("256MB")),
            ("hot_standby".into(), "on".into()),
        ];
        v.extend(self.standby_settings(rec));
        v.extend(self.archive_settings(rec));
        v.extend(
            rec.parameters
                .iter()
                .map(|(k, val)| (k.clone(), pg::quote(val))),
        );
        v
    }

    /// Stops PostgreSQL (if running), unmounts and detaches.
    fn shut(&self, bin: Option<&PgBin>, user: Option<&OsUser>, rec: &Record) {
        let live = lock(&self.live).remove(&rec.id);
        let layout = live
            .as_ref()
            .map_or_else(|| self.layout(&rec.id), |l| l.layout.clone());
        let pid = live.as_ref().and_then(|l| l.pid);
        if let (Some(bin), Some(user)) = (bin, user)
            && host::is_mounted(&layout.mnt)
            && pid.is_some_and(host::is_postgres)
        {
            pg::stop(bin, user, &layout, pid);
        }
        if let Some(pid) = pid {
            host::kill_postgres(pid);
        }
        let _ = std::fs::remove_file(self.config.run_dir.join(&rec.id).join("postmaster.pid"));
        if let Err(e) = host::unmount(&layout.mnt) {
            tracing::error!(instance = %rec.name, error = %e, "unmounting failed");
        } else {
            // Nothing of a stopped instance stays under /run.
            let _ = std::fs::remove_dir_all(&layout.sock);
            let _ = std::fs::remove_dir(&layout.mnt);
            let _ = std::fs::remove_dir(self.config.run_dir.join(&rec.id));
        }
        if live.is_some()
            && let Ok(caller) = rec.caller()
            && let Err(e) = self.volumes.detach(&caller, &rec.disk)
        {
            tracing::warn!(instance = %rec.name, error = %e, "detaching the instance's disk failed");
        }
    }

    fn roll_back(&self, bin: &PgBin, user: &OsUser, rec: &Record) {
        self.shut(Some(bin), Some(user), rec);
        if let Ok(caller) = rec.caller()
            && let Err(e) = self.disks.delete_disk(&caller, &rec.disk)
        {
            tracing::error!(instance = %rec.name, disk = %rec.disk, error = %e, "deleting the disk of a failed creation failed");
        }
        if let Err(e) = self.forget(&rec.id) {
            tracing::error!(instance = %rec.name, error = %e, "removing the record of a failed creation failed");
        }
    }

    // ----- lifecycle --------------------------------------------------------

    /// Starts the instance: unlocks its disk's key first (R5).
    pub fn start(&self, caller: &Caller, name: &str) -> Result<InstanceView> {
        let bin = self.bin()?;
        let user = self.os_user()?;
        let _ops = lock(&self.ops);
        let mut rec = self.own(caller, name)?;
        self.bring_up(&bin, &user, &rec)?;
        rec.running = true;
        self.save(&rec)?;
        Ok(self.view(&rec))
    }

    fn bring_up(&self, bin: &PgBin, user: &OsUser, rec: &Record) -> Result<()> {
        self.check_key(rec)?;
        self.mount_existing(rec)?;
        if let Err(e) = self.start_locked(bin, user, rec) {
            self.shut(Some(bin), Some(user), rec);
            return Err(e);
        }
        Ok(())
    }

    /// Stops the instance (a clean shutdown), unmounts and detaches its
    /// disk: its key is no longer in memory.
    pub fn stop(&self, caller: &Caller, name: &str) -> Result<InstanceView> {
        let bin = self.bin().ok();
        let user = self.os_user().ok();
        let _ops = lock(&self.ops);
        let mut rec = self.own(caller, name)?;
        self.shut(bin.as_ref(), user.as_ref(), &rec);
        rec.running = false;
        self.save(&rec)?;
        Ok(self.view(&rec))
    }

    /// Stops and starts the instance; refused while its key is unusable
    /// (it is left running then).
    pub fn restart(&self, caller: &Caller, name: &str) -> Result<InstanceView> {
        let bin = self.bin()?;
        let user = self.os_user()?;
        let _ops = lock(&self.ops);
        let mut rec = self.own(caller, name)?;
        self.check_key(&rec)?;
        self.shut(Some(&bin), Some(&user), &rec);
        self.bring_up(&bin, &user, &rec)?;
        rec.running = true;
        self.save(&rec)?;
        Ok(self.view(&rec))
    }

    /// Deletes the instance and its disk. Its backups stay (they are
    /// deleted on their own).
    pub fn delete(&self, caller: &Caller, name: &str) -> Result<()> {
        let bin = self.bin().ok();
        let user = self.os_user().ok();
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
        self.shut(bin.as_ref(), user.as_ref(), &rec);
        self.disks.delete_disk(caller, &rec.disk)?;
        self.forget(&rec.id)?;
        tracing::info!(instance = %rec.name, "instance deleted");
        Ok(())
    }

    // ----- server lifecycle -------------------------------------------------

    /// Rolls back creations a crash interrupted and starts every instance
    /// that should run (those whose key is unusable stay locked).
    pub fn resume(&self) {
        let bin = self.bin().ok();
        let user = self.os_user().ok();
        let records: Vec<Record> = lock(&self.records).values().cloned().collect();
        for rec in records {
            if rec.phase == "creating" {
                tracing::warn!(instance = %rec.name, "rolling back a creation a crash interrupted");
                if let (Some(b), Some(u)) = (&bin, &user) {
                    self.roll_back(b, u, &rec);
                }
                continue;
            }
            if !rec.running {
                continue;
            }
            let (Some(b), Some(u)) = (&bin, &user) else {
                tracing::error!(instance = %rec.name, "PostgreSQL is not available; instance not started");
                continue;
            };
            let _ops = lock(&self.ops);
            match self.bring_up(b, u, &rec) {
                Ok(()) => tracing::info!(instance = %rec.name, "instance started"),
                Err(e) => tracing::error!(instance = %rec.name, error = %e, "instance not started"),
            }
        }
    }

    /// Stops every instance (at shutdown); they start again with the
    /// server.
    pub fn shutdown(&self) {
        let bin = self.bin().ok();
        let user = self.os_user().ok();
        let _ops = lock(&self.ops);
        let ids: Vec<String> = lock(&self.live).keys().cloned().collect();
        for id in ids {
            let rec = lock(&self.records).get(&id).cloned();
            if let Some(rec) = rec {
                self.shut(bin.as_ref(), user.as_ref(), &rec);
            }
        }
        // The WAL agent's socket goes; then the run dir is empty unless
        // something stayed mounted.
        self.close_backups();
        let _ = std::fs::remove_dir(&self.config.run_dir);
    }

    /// One pass of the check of running instances (R5): a key unusable
    /// for longer than the policy allows stops the instance; a PostgreSQL
    /// server that died (killed, crashed) is started again, with crash
    /// recovery, as long as its key can be used.
    pub fn check(&self) {
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
                let dead = l.pid.is_some_and(|p| !host::is_postgres(p));
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
            let (bin, user) = (self.bin().ok(), self.os_user().ok());
            if due {
                tracing::warn!(instance = %rec.name, "stopping the instance: its key has been unusable longer than the policy allows");
                self.shut(bin.as_ref(), user.as_ref(), &rec);
            } else if unusable {
                tracing::warn!(instance = %rec.name, "PostgreSQL died and the key cannot be used: not started again");
                self.shut(bin.as_ref(), user.as_ref(), &rec);
            } else if let (Some(b), Some(u)) = (&bin, &user) {
                tracing::warn!(instance = %rec.name, "PostgreSQL died; starting it again");
                if let Err(e) = self.start_locked(b, u, &rec) {
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
        for bad in ["", "pg_admin", "Admin", "a-b", "1a", "a b"] {
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
