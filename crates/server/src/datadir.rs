//! The data dir: the metadata store, the root-of-trust descriptor; and,
//! outside it, on first start, the admin credentials file.
//!
//! ```text
//! <data-dir>/            mode 0700
//!   kms.redb             the metadata store (sealed secrets only)
//!   audit/audit.log      the audit trail's active segment (HMAC-chained, append-only)
//!   audit/audit-*.log    its sealed segments (immutable; see atrest-audit)
//!   audit/audit.head     the last record's position and MAC
//!   disks/meta.redb      the disk engine's metadata (wrapped data keys only)
//!   disks/pool           the disk engine's chunk pool (ciphertext of encrypted disks)
//!   root.json            root-of-trust kind and check value
//! <data-dir>.root.key    the root key file (default; 0600)
//! <data-dir>.admin-credentials
//!                        AWS shared-credentials file of the first admin key
//!                        (default, `--admin-credentials`; 0600)
//! ```
//!
//! Nothing in the data dir holds a secret in plaintext, so that a copy of
//! it (a backup, a disk sent for repair) gives no one the admin's key.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use atrest_kms::root::{RootError, RootKey, RootSource};
use atrest_kms::{AdminBootstrap, KeyService};
use atrest_store::{RedbStore, Store};

/// Errors opening the data dir. Messages say what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataDirError {
    /// File-system trouble: creating a directory, setting a file's mode,
    /// opening the disk pool.
    #[error("{context}: {error}")]
    Io {
        /// What was being done, on which path.
        context: String,
        /// The error.
        error: std::io::Error,
    },
    /// The store could not be opened (for example, another server has it).
    #[error(transparent)]
    Store(#[from] atrest_store::StoreError),
    /// The root of trust could not be opened.
    #[error(transparent)]
    Root(#[from] RootError),
    /// The key service refused the store.
    #[error("{0}")]
    Kms(String),
    /// The audit trail could not be opened (a damaged log, say).
    #[error("audit trail: {0}")]
    Audit(atrest_audit::AuditError),
    /// The disk engine could not be opened on its store and pool.
    #[error("disk engine: {0}")]
    Disks(atrest_disk::DiskError),
    /// The disk service could not start.
    #[error("disk service: {0}")]
    DiskService(atrest_diskservice::ServiceError),
    /// The object store's configuration is not usable.
    #[error("object store: {0}")]
    ObjectStore(atrest_objstore::ObjError),
    /// The admin credentials file cannot be where it is asked to be (inside
    /// the data dir, over a file atrest did not write, ...).
    #[error("{0}")]
    Credentials(String),
}

impl DataDirError {
    fn io(context: impl Into<String>, error: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            error,
        }
    }
}

/// The default root key file for a data dir: `<data-dir>.root.key`, beside
/// it, so that the data dir never holds key material.
#[must_use]
pub fn default_root_key_file(data_dir: &Path) -> PathBuf {
    let mut name = data_dir
        .file_name()
        .map(std::ffi::OsStr::to_os_string)
        .unwrap_or_else(|| "atrest-data".into());
    name.push(".root.key");
    data_dir.with_file_name(name)
}

/// An opened data dir.
pub struct DataDir {
    /// The key service over the data dir's store.
    pub kms: Arc<KeyService>,
    /// The audit trail (`<data-dir>/audit`) and metering.
    pub trail: crate::trail::SharedTrail,
    /// Set on first start: the admin account and the file its key was written to.
    pub bootstrap: Option<(AdminBootstrap, PathBuf)>,
    /// The disk service over `<data-dir>/disks`.
    pub disks: Arc<atrest_diskservice::DiskService>,
    /// The disk service's metadata store (`<data-dir>/disks/meta.redb`),
    /// which also holds the records of snapshots in object storage.
    pub disk_meta: Arc<dyn Store>,
    /// The key service's store: `kms.redb`, or the shared PostgreSQL
    /// database's `kms` namespace (it also holds the node registry).
    pub kms_store: Arc<dyn Store>,
    /// With a shared store: the lock on the data dir (`node.lock`), held
    /// while the server runs.
    pub lock: Option<fs::File>,
}

/// Opens the namespace `ns` of the shared store at `url`.
pub fn shared_store(url: &str, ns: &str) -> Result<Arc<dyn Store>, DataDirError> {
    Ok(Arc::new(atrest_pgstore::PgStore::open(url, ns)?))
}

/// A node joining a shared store that is sealed already must bring the
/// cluster's root: a root key file that does not exist would be made anew
/// (and then refused), so it is refused before anything is created.
fn refuse_a_new_root_for_a_sealed_store(
    store: &dyn Store,
    root: &RootSource,
) -> Result<(), DataDirError> {
    let sealed = store
        .read()?
        .get(atrest_kms::records::META, b"root_check")?
        .is_some();
    match root {
        RootSource::KeyFile(path) if sealed && !path.exists() => Err(DataDirError::Kms(format!(
            "the shared store is sealed by the cluster's root key already, and this node's root key file {} does not exist: copy the first node's root key file there (or name it with --root-key-file), so that every node unseals with the same root",
            path.display()
        ))),
        _ => Ok(()),
    }
}

/// Takes the data dir's lock when no redb file in it is the lock: two
/// servers must never run on one data dir.
fn lock_data_dir(dir: &Path) -> Result<fs::File, DataDirError> {
    let path = dir.join("node.lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| DataDirError::io(format!("opening {}", path.display()), e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(DataDirError::Store(
            atrest_store::StoreError::Locked(dir.display().to_string()),
        )),
        Err(fs::TryLockError::Error(e)) => {
            Err(DataDirError::io(format!("locking {}", path.display()), e))
        }
    }
}

/// Where earlier releases wrote the admin credentials: inside the data dir.
/// Moved out at start (see [`move_legacy_credentials`]).
pub const LEGACY_ADMIN_CREDENTIALS: &str = "admin-credentials";

/// The first line of every credentials file atrest writes: a file that does
/// not start with it is never overwritten.
const CREDENTIALS_HEADER: &str = "# atrest admin credentials";

/// The default admin credentials file for a data dir:
/// `<data-dir>.admin-credentials`, beside it, as the root key file is.
#[must_use]
pub fn default_admin_credentials_file(data_dir: &Path) -> PathBuf {
    let mut name = data_dir
        .file_name()
        .map(std::ffi::OsStr::to_os_string)
        .unwrap_or_else(|| "atrest-data".into());
    name.push(".admin-credentials");
    data_dir.with_file_name(name)
}

/// `path` made absolute, its longest existing ancestor resolved (symbolic
/// links, `..`), so two spellings of one place compare equal.
fn resolved(path: &Path) -> Result<PathBuf, DataDirError> {
    let absolute =
        std::path::absolute(path).map_err(|e| DataDirError::io(path.display().to_string(), e))?;
    let mut rest = Vec::new();
    let mut at = absolute.as_path();
    loop {
        match fs::canonicalize(at) {
            Ok(mut real) => {
                real.extend(rest.iter().rev());
                return Ok(real);
            }
            Err(_) => match (at.parent(), at.file_name()) {
                (Some(parent), Some(name)) => {
                    rest.push(name.to_os_string());
                    at = parent;
                }
                _ => return Ok(absolute),
            },
        }
    }
}

/// Refuses an admin credentials file inside the data dir: the data dir
/// holds no plaintext secret.
fn check_credentials_path(dir: &Path, path: &Path) -> Result<(), DataDirError> {
    if resolved(path)?.starts_with(resolved(dir)?) {
        return Err(DataDirError::Credentials(format!(
            "--admin-credentials {} is inside the data dir {}, which must hold no plaintext secret: give a path outside it (default: {})",
            path.display(),
            dir.display(),
            default_admin_credentials_file(dir).display()
        )));
    }
    Ok(())
}

/// Writes `text` to `path`, mode 0600, atomically (a temporary file beside
/// it, synced, renamed, the directory synced).
fn write_private(path: &Path, text: &[u8]) -> Result<(), DataDirError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |what: &str, p: &Path, e: std::io::Error| {
        DataDirError::io(format!("{what} {}", p.display()), e)
    };
    let mut tmp_name = path
        .file_name()
        .map(std::ffi::OsStr::to_os_string)
        .unwrap_or_default();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io("creating", &tmp, e))?;
    // An earlier temporary file may have had another mode.
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(|e| io("setting the mode of", &tmp, e))?;
    f.write_all(text).map_err(|e| io("writing", &tmp, e))?;
    f.sync_all().map_err(|e| io("syncing", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| io("renaming", &tmp, e))?;
    sync_dir_of(path)
}

fn sync_dir_of(path: &Path) -> Result<(), DataDirError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fs::File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(|e| DataDirError::io(format!("syncing {}", parent.display()), e))
}

/// Whether `path` may be (over)written with new credentials: it does not
/// exist, or it is a credentials file atrest wrote (never, say, the
/// operator's `~/.aws/credentials`).
fn may_write_credentials(path: &Path) -> Result<bool, DataDirError> {
    match fs::read(path) {
        Ok(bytes) => {
            let bytes = zeroize::Zeroizing::new(bytes);
            Ok(bytes.starts_with(CREDENTIALS_HEADER.as_bytes()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(DataDirError::io(format!("reading {}", path.display()), e)),
    }
}

/// An earlier release left the admin credentials in the data dir: moves
/// them to `path` (rewritten, with its "Use with" line naming the new
/// place), then removes the old file. Returns whether it moved anything.
/// If `path` already holds other credentials, refuses to start rather than
/// overwrite either.
fn move_legacy_credentials(dir: &Path, path: &Path) -> Result<bool, DataDirError> {
    let legacy = dir.join(LEGACY_ADMIN_CREDENTIALS);
    let old = match fs::read(&legacy) {
        Ok(bytes) => zeroize::Zeroizing::new(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => {
            return Err(DataDirError::io(format!("reading {}", legacy.display()), e));
        }
    };
    let text = zeroize::Zeroizing::new(
        String::from_utf8_lossy(&old)
            .replace(&legacy.display().to_string(), &path.display().to_string()),
    );
    match fs::read(path) {
        Ok(existing) => {
            let existing = zeroize::Zeroizing::new(existing);
            if *existing != *text.as_bytes() {
                return Err(DataDirError::Credentials(format!(
                    "{} (admin credentials left in the data dir by an earlier release) should move to {}, which already holds other content: move one of them away yourself, keeping the data dir free of secrets",
                    legacy.display(),
                    path.display()
                )));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => write_private(path, text.as_bytes())?,
        Err(e) => return Err(DataDirError::io(format!("reading {}", path.display()), e)),
    }
    fs::remove_file(&legacy)
        .map_err(|e| DataDirError::io(format!("removing {}", legacy.display()), e))?;
    sync_dir_of(&legacy)?;
    Ok(true)
}

/// The audit trail's directory in a data dir (`<data-dir>/audit`).
#[must_use]
pub fn audit_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("audit")
}

/// The key `data_dir`'s audit trail is chained under, derived from its root
/// of trust exactly as the running server derives it
/// ([`KeyService::audit_key`]): for tools that read or write the trail
/// while the server is stopped (`atrest audit verify --offline`, the
/// `audit-fill` benchmark tool).
pub fn audit_key(
    data_dir: &Path,
    root: RootSource,
) -> Result<atrest_crypto::Aes256Key, DataDirError> {
    RootKey::open_existing(data_dir, root)?
        .derive(atrest_kms::AUDIT_KEY_INFO)
        .map_err(|e| DataDirError::Kms(e.to_string()))
}

/// Opens (creating if needed) `dir` with `root` and serves `regions`. On
/// first start the admin's credentials go to `admin_credentials`, which
/// must be outside `dir`.
pub fn open(
    dir: &Path,
    admin_credentials: &Path,
    root: RootSource,
    regions: Vec<String>,
    clock: Arc<dyn atrest_kms::clock::Clock>,
    (audit, audit_sync): (&atrest_audit::Options, crate::config::AuditSync),
    (disk_config, store_url): (atrest_diskservice::Config, Option<&str>),
) -> Result<DataDir, DataDirError> {
    // Before anything is created: a refused flag leaves no trace.
    check_credentials_path(dir, admin_credentials)?;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| DataDirError::io(format!("creating data dir {}", dir.display()), e))?;
    // The store's file lock is the data dir's lock (or, with a shared
    // store, `node.lock`): take it first, so two servers can never
    // initialise the same dir at once.
    let (store, lock): (Arc<dyn Store>, _) = match store_url {
        None => (Arc::new(RedbStore::open(&dir.join("kms.redb"))?), None),
        Some(url) => {
            let lock = lock_data_dir(dir)?;
            (shared_store(url, "kms")?, Some(lock))
        }
    };
    if move_legacy_credentials(dir, admin_credentials)? {
        tracing::warn!(
            from = %dir.join(LEGACY_ADMIN_CREDENTIALS).display(),
            to = %admin_credentials.display(),
            "moved the admin credentials an earlier release left in the data dir out of it"
        );
    }
    if store_url.is_some() {
        refuse_a_new_root_for_a_sealed_store(&*store, &root)?;
    }
    let root = RootKey::open_or_create(dir, root)?;
    let kms_store = Arc::clone(&store);
    let kms = KeyService::open(store, root, regions, clock).map_err(|e| {
        DataDirError::Kms(match e {
            atrest_kms::KmsError::Internal(m) if store_url.is_some() && m.contains("different root key") => format!(
                "{m}: every node on a shared store must unseal with the cluster's root of trust (the same root key file, PKCS#11 key or key provider key as the first node); this node's is another one"
            ),
            atrest_kms::KmsError::Internal(m) | atrest_kms::KmsError::Validation(m) => m,
            other => other.to_string(),
        })
    })?;
    let bootstrap = match kms
        .bootstrap_admin()
        .map_err(|e| DataDirError::Kms(e.to_string()))?
    {
        None => None,
        Some(b) => {
            let path = admin_credentials.to_path_buf();
            if !may_write_credentials(&path)? {
                return Err(DataDirError::Credentials(format!(
                    "{} exists and is not an atrest admin credentials file; give --admin-credentials a path that does not exist",
                    path.display()
                )));
            }
            let text = zeroize::Zeroizing::new(format!(
                "{CREDENTIALS_HEADER} for account {}, created on first start.\n\
                 # Use with: AWS_SHARED_CREDENTIALS_FILE={}\n\
                 [default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
                b.key.account,
                path.display(),
                b.key.access_key_id,
                String::from_utf8_lossy(b.key.secret_access_key.expose())
            ));
            write_private(&path, text.as_bytes())?;
            // Only now that the operator can read the secret is the
            // bootstrap done; a crash before this line redoes the file.
            kms.finish_bootstrap()
                .map_err(|e| DataDirError::Kms(e.to_string()))?;
            Some((b, path))
        }
    };
    let audit_dir = audit_dir(dir);
    let audit_key = kms
        .audit_key()
        .map_err(|e| DataDirError::Kms(e.to_string()))?;
    let log = atrest_audit::AuditLog::open_with_options(&audit_dir, &audit_key, audit)
        .map_err(DataDirError::Audit)?;
    // Every record names the node that wrote it (its id, kept in the data
    // dir; the cluster reads the same id).
    let node = crate::cluster::node_identity(dir, Some(""))
        .map_err(|e| DataDirError::Io {
            context: format!("the node's id in {}", dir.display()),
            error: e,
        })?
        .id;
    let trail = Arc::new(
        crate::trail::Trail::new(log, &audit_dir, audit_sync, Some(node))
            .map_err(DataDirError::Audit)?,
    );
    kms.set_audit_sink(trail.clone());
    let kms = Arc::new(kms);
    kms.follow_store();
    let (disks, disk_meta) = open_disks(&dir.join("disks"), &kms, disk_config)?;
    Ok(DataDir {
        kms,
        trail,
        bootstrap,
        disks,
        disk_meta,
        kms_store,
        lock,
    })
}

/// Opens the disk engine in `dir` and starts the disk service on it.
fn open_disks(
    dir: &Path,
    kms: &Arc<KeyService>,
    config: atrest_diskservice::Config,
) -> Result<(Arc<atrest_diskservice::DiskService>, Arc<dyn Store>), DataDirError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| DataDirError::io(format!("creating {}", dir.display()), e))?;
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.join("meta.redb"))?);
    let pool_path = dir.join("pool");
    let pool = atrest_disk::FileStorage::open(&pool_path)
        .map_err(|e| DataDirError::io(format!("disk pool {}", pool_path.display()), e))?;
    let engine = atrest_disk::Engine::open(Arc::clone(&store), Arc::new(pool))
        .map_err(DataDirError::Disks)?;
    let svc = atrest_diskservice::DiskService::start(Arc::clone(kms), engine, config)
        .map_err(DataDirError::DiskService)?;
    Ok((svc, store))
}

/// Opens the object store (`config`, or `<data-dir>/objects`) and lets
/// the disk service store snapshots there; answers the store (the database
/// service's backups go there too).
pub fn enable_object_store(
    dir: &Path,
    opened: &DataDir,
    config: Option<&atrest_objstore::StoreConfig>,
    regions: &[(String, atrest_objstore::StoreConfig)],
) -> Result<atrest_objstore::Objects, DataDirError> {
    let objects = object_store(dir, config).map_err(DataDirError::ObjectStore)?;
    tracing::info!(location = %objects.location(), "snapshots are stored in the object store");
    let mut stores = atrest_diskservice::ObjectStores::one(objects.clone());
    for (region, c) in regions {
        let o = atrest_objstore::Objects::open(c).map_err(DataDirError::ObjectStore)?;
        tracing::info!(%region, location = %o.location(), "this region's snapshots have their own object store");
        stores.regions.insert(region.clone(), o);
    }
    opened
        .disks
        .enable_object_store(stores, Arc::clone(&opened.disk_meta))
        .map_err(DataDirError::DiskService)?;
    Ok(objects)
}

/// The object store of a data dir: `config`, or the local directory
/// `<data-dir>/objects` (created, mode 0700).
pub fn object_store(
    dir: &Path,
    config: Option<&atrest_objstore::StoreConfig>,
) -> Result<atrest_objstore::Objects, atrest_objstore::ObjError> {
    let local;
    let config = match config {
        Some(c) => c,
        None => {
            local = atrest_objstore::StoreConfig {
                url: format!("file://{}", dir.join("objects").display()),
                endpoint: None,
                region: None,
                path_style: false,
            };
            &local
        }
    };
    atrest_objstore::Objects::open(config)
}
