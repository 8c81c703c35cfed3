//! The data dir: the metadata store, the root-of-trust descriptor, and on
//! first start the admin credentials file.
//!
//! ```text
//! <data-dir>/            mode 0700
//!   kms.redb             the metadata store (sealed secrets only)
//!   audit/audit.log      the audit trail (HMAC-chained, append-only)
//!   audit/audit.head     the last record's position and MAC
//!   disks/meta.redb      the disk engine's metadata (wrapped data keys only)
//!   disks/pool           the disk engine's chunk pool (ciphertext of encrypted disks)
//!   root.json            root-of-trust kind and check value
//!   admin-credentials    AWS shared-credentials file of the first admin key, 0600
//! ```

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use atrest_kms::root::{RootError, RootKey, RootSource, write_atomically};
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
}

/// The name of the admin credentials file.
pub const ADMIN_CREDENTIALS: &str = "admin-credentials";

/// Opens (creating if needed) `dir` with `root` and serves `regions`.
pub fn open(
    dir: &Path,
    root: RootSource,
    regions: Vec<String>,
    clock: Arc<dyn atrest_kms::clock::Clock>,
    (audit, audit_sync): (&atrest_audit::Options, crate::config::AuditSync),
    disk_config: atrest_diskservice::Config,
) -> Result<DataDir, DataDirError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| DataDirError::io(format!("creating data dir {}", dir.display()), e))?;
    // The store's file lock is the data dir's lock: take it first, so two
    // servers can never initialise the same dir at once.
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.join("kms.redb"))?);
    let root = RootKey::open_or_create(dir, root)?;
    let kms = KeyService::open(store, root, regions, clock).map_err(|e| {
        DataDirError::Kms(match e {
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
            let path = dir.join(ADMIN_CREDENTIALS);
            let text = zeroize::Zeroizing::new(format!(
                "# atrest admin credentials for account {}, created on first start.\n\
                 # Use with: AWS_SHARED_CREDENTIALS_FILE={}\n\
                 [default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
                b.key.account,
                path.display(),
                b.key.access_key_id,
                String::from_utf8_lossy(b.key.secret_access_key.expose())
            ));
            write_atomically(&path, text.as_bytes(), 0o600)?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
                .map_err(|e| DataDirError::io(path.display().to_string(), e))?;
            // Only now that the operator can read the secret is the
            // bootstrap done; a crash before this line redoes the file.
            kms.finish_bootstrap()
                .map_err(|e| DataDirError::Kms(e.to_string()))?;
            Some((b, path))
        }
    };
    let audit_dir = dir.join("audit");
    let audit_key = kms
        .audit_key()
        .map_err(|e| DataDirError::Kms(e.to_string()))?;
    let log = atrest_audit::AuditLog::open_with_options(&audit_dir, &audit_key, audit)
        .map_err(DataDirError::Audit)?;
    let trail = Arc::new(
        crate::trail::Trail::new(log, &audit_dir, audit_sync).map_err(DataDirError::Audit)?,
    );
    kms.set_audit_sink(trail.clone());
    let kms = Arc::new(kms);
    let disks = open_disks(&dir.join("disks"), &kms, disk_config)?;
    Ok(DataDir {
        kms,
        trail,
        bootstrap,
        disks,
    })
}

/// Opens the disk engine in `dir` and starts the disk service on it.
fn open_disks(
    dir: &Path,
    kms: &Arc<KeyService>,
    config: atrest_diskservice::Config,
) -> Result<Arc<atrest_diskservice::DiskService>, DataDirError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| DataDirError::io(format!("creating {}", dir.display()), e))?;
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.join("meta.redb"))?);
    let pool_path = dir.join("pool");
    let pool = atrest_disk::FileStorage::open(&pool_path)
        .map_err(|e| DataDirError::io(format!("disk pool {}", pool_path.display()), e))?;
    let engine = atrest_disk::Engine::open(store, Arc::new(pool)).map_err(DataDirError::Disks)?;
    atrest_diskservice::DiskService::start(Arc::clone(kms), engine, config)
        .map_err(DataDirError::DiskService)
}
