//! The disk service: customers' encrypted disks (D1, D2, D5 to D9).
//!
//! Owns: who a disk belongs to (an account and a region), how its data key
//! is obtained and unlocked through the key service, which key states lock
//! it, the open handles that serve it, and long jobs (re-encryption,
//! conversion) with their progress. The data layout and the commit protocol
//! are the disk engine's ([`atrest_disk`]); authorization is the key
//! service's.
//!
//! # Keys
//!
//! The service acts as the principal `disk.atrest` through the key
//! service's in-process path ([`atrest_kms::ServiceSession`]), exactly as
//! an external caller would be evaluated:
//!
//! * Creating an encrypted disk: as the customer through the service
//!   (`kms:ViaService = disk.<region>.atrest`), it resolves the key the
//!   customer named (DescribeKey) and creates a grant to `disk.atrest` for
//!   `Decrypt`, `GenerateDataKeyWithoutPlaintext`, `ReEncryptFrom` and
//!   `ReEncryptTo`, constrained to the encryption context
//!   `{"atrest:disk:id": "<disk>"}`. A customer who may not create grants on
//!   the key cannot have a disk under it (the PassRole check). Then, as
//!   `disk.atrest` under that grant, GenerateDataKeyWithoutPlaintext (64
//!   bytes, the XTS key) with that context. Only the wrapped key and the
//!   grant id are stored.
//! * A snapshot gets its own grant and its own wrapping of the same data key
//!   (ReEncrypt from the disk's context to `{"atrest:snapshot:id": ...}`); a
//!   disk created from a snapshot likewise (ReEncrypt to the new disk's
//!   context). So each resource is unlocked by its own grant, and revoking
//!   one locks exactly that resource.
//! * Opening a disk decrypts its data key (Decrypt under the grant) into a
//!   zeroizing buffer, builds the XTS key schedule, and drops the plaintext;
//!   the schedule lives as long as the disk is open.
//! * Changing a disk's master key re-wraps the data key (ReEncrypt under a
//!   new grant on the new key), O(1); re-encryption moves the data to a
//!   fresh data key, online, resumable (a [`Job`]).
//!
//! # Locking (D9)
//!
//! Before an operation needs a key, the service asks the key service why
//! the key might be unusable ([`KeyUnusable`]: disabled, pending deletion,
//! deleted, grant revoked) and refuses with [`ServiceError::Locked`], which
//! names the key and the reason. Re-enabling the key (or granting again)
//! unlocks. An open disk follows [`OnKeyLoss`]: keep serving, or close
//! within a configured time after its key became unusable, checked every
//! [`Config::check_interval`].
//!
//! # Managed disks
//!
//! A service of atrest may manage disks for a customer, as RDS owns its
//! instances' EBS volumes: an instance's disk is the database service's.
//! atrest mounts its file system as root, so a customer who could attach
//! it could hand the kernel's ext4 parser hostile bytes and plant links
//! for atrest to follow, and one who could snapshot, resize or delete it
//! would act behind the service. Such a disk (and its snapshots, and a
//! conversion's copy of it) carries the labels `managed_by` (the service)
//! and `managed_for` (what the service says it is for, e.g. an instance's
//! name and id). [`DiskService`]'s own methods are the customer's: they
//! leave managed disks, snapshots and jobs out of lists and refuse every
//! operation on them with [`ServiceError::Managed`], which names the
//! resource and what it is for; another account's still reads as not
//! found. The manager works through [`DiskService::managed`], a
//! [`ManagedDisks`] with the same operations, as the owning customer. A
//! disk without the labels (a previous release's instance disk) is usable
//! by both until the manager [adopts](ManagedDisks::adopt) it.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod archive;
mod jobs;
mod managed;
mod open;
pub mod tags;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use atrest_crypto::XtsKey;
use atrest_disk::{DiskError, DiskInfo, DiskSpec, Engine, KeyInfo, Labels, SnapshotInfo};
use atrest_kms::names::AccountId;
use atrest_kms::{Caller, KeyService, KeyUnusable, KmsError, Operation, ServiceSession};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Serialize;
use serde_json::{Value, json};
use zeroize::Zeroizing;

pub use archive::foreign::ForeignRestore;
pub use archive::{GcReport, ObjectStores};
pub use jobs::{Job, JobKind, JobState};
pub use managed::ManagedDisks;
pub use open::Attachment;

use managed::{Actor, manager_labels};

/// The service's name (its principal is `disk.atrest`).
pub const SERVICE: &str = "disk";
/// The encryption-context key that names a disk.
pub const DISK_CONTEXT: &str = "atrest:disk:id";
/// The encryption-context key that names a snapshot.
pub const SNAPSHOT_CONTEXT: &str = "atrest:snapshot:id";
/// The operations a disk's grant allows the service.
pub const GRANT_OPERATIONS: [&str; 4] = [
    "Decrypt",
    "GenerateDataKeyWithoutPlaintext",
    "ReEncryptFrom",
    "ReEncryptTo",
];

const L_ACCOUNT: &str = "account";
const L_REGION: &str = "region";
const L_CREATED: &str = "created";
/// On a disk being filled by a conversion: the source disk.
const L_CONVERTING: &str = "converting_from";
/// On a disk that several clients may attach read-write at once.
const L_SHAREABLE: &str = "shareable";

/// What an open disk does when its key becomes unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnKeyLoss {
    /// Keep serving with the key already unlocked (as AWS EBS does).
    KeepServing,
    /// Close the disk (dropping its key) once the key has been unusable
    /// for this long.
    CloseAfter(Duration),
}

/// Service configuration.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// What open disks do when their key becomes unusable.
    pub on_key_loss: OnKeyLoss,
    /// How often open disks' keys are checked.
    pub check_interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            on_key_loss: OnKeyLoss::CloseAfter(Duration::from_secs(60)),
            check_interval: Duration::from_secs(10),
        }
    }
}

/// Errors. Client mistakes are [`ServiceError::Disk`] (not found, invalid,
/// conflict), [`ServiceError::Kms`] (access denied, unknown key, ...),
/// [`ServiceError::Locked`] and [`ServiceError::Managed`]; the rest are
/// server faults.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// From the disk engine.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// From the key service.
    #[error(transparent)]
    Kms(#[from] KmsError),
    /// The resource's key cannot be used.
    #[error("{resource} is locked: its key {key_arn} cannot be used: {reason}")]
    Locked {
        /// `disk <id>` or `snapshot <id>`.
        resource: String,
        /// The master key.
        key_arn: String,
        /// Why.
        reason: KeyUnusable,
    },
    /// An open disk was closed because its key became unusable.
    #[error("disk {disk} was closed: {reason}")]
    Closed {
        /// The disk.
        disk: String,
        /// Why (names the key).
        reason: String,
    },
    /// No such job.
    #[error("job {0} does not exist")]
    NoJob(String),
    /// The object store failed or refused (the error names the object, or
    /// the store).
    #[error("object store: {0}")]
    ObjectStore(atrest_objstore::ObjError),
    /// An object in the object store is not what atrest wrote.
    #[error(transparent)]
    Corrupt(archive::format::Corrupt),
    /// The resource is managed by a service of atrest (an instance's disk
    /// is the database service's), so its customer cannot use it
    /// directly; that service's API can.
    #[error(
        "{resource} is managed by atrest's {service} service for {managed_for} and cannot be used directly"
    )]
    Managed {
        /// `disk <id>`, `snapshot <id>` or `job <id>`.
        resource: String,
        /// The managing service (`db`).
        service: String,
        /// What the service says it is for (an instance's name and id).
        managed_for: String,
    },
}

impl ServiceError {
    /// Whether the server is at fault (rather than the request).
    #[must_use]
    pub fn is_server_fault(&self) -> bool {
        match self {
            Self::Disk(e) => matches!(e, DiskError::Failed(_) | DiskError::Io { .. }),
            Self::Kms(e) => matches!(e, KmsError::Internal(_)),
            _ => false,
        }
    }

    /// What this error is as an I/O error, for the front ends that serve an
    /// attached disk as a block device and answer with an errno (NBD,
    /// local attach): the engine's kind for a disk error
    /// ([`DiskError::io_kind`]: a full pool is
    /// [`StorageFull`](std::io::ErrorKind::StorageFull)), and
    /// [`Other`](std::io::ErrorKind::Other) for the rest.
    #[must_use]
    pub fn io_kind(&self) -> std::io::ErrorKind {
        match self {
            Self::Disk(e) => e.io_kind(),
            _ => std::io::ErrorKind::Other,
        }
    }
}

type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// A disk as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DiskView {
    /// Id (`disk-` and 16 hex digits).
    pub id: String,
    /// Size in bytes.
    pub size: u64,
    /// Logical block size.
    pub block_size: u32,
    /// Whether its data is encrypted.
    pub encrypted: bool,
    /// The master key its data key is wrapped under.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_arn: Option<String>,
    /// The snapshot it was created from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// Owning account.
    pub account: String,
    /// Region.
    pub region: String,
    /// Creation time (RFC 3339).
    pub created: String,
    /// `available`, `in-use` (open), `re-encrypting`, `converting` or
    /// `restoring` (being filled from a snapshot in the object store).
    pub state: String,
    /// Whether several clients may attach it read-write at once.
    pub shareable: bool,
    /// A re-encryption's progress, in chunks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reencrypt: Option<Progress>,
    /// For a disk a service of atrest manages (shown to operators only,
    /// [`DiskService::inventory`]): what it is for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub managed_for: Option<String>,
    /// Its tags ([`tags`]).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

/// A snapshot as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SnapshotView {
    /// Id (`snap-` and 16 hex digits).
    pub id: String,
    /// The disk it was taken of.
    pub disk: String,
    /// Size in bytes.
    pub size: u64,
    /// Logical block size.
    pub block_size: u32,
    /// Whether its data is encrypted.
    pub encrypted: bool,
    /// The master key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_arn: Option<String>,
    /// Owning account.
    pub account: String,
    /// Region.
    pub region: String,
    /// Creation time (RFC 3339).
    pub created: String,
    /// `local` (in the disk pool) or `object-store`.
    pub storage: String,
    /// For a stored snapshot: `uploading`, `available` (complete, usable)
    /// or `deleting`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// An upload's progress, in bytes of the disk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// Bytes the upload sent to the object store (blocks already stored
    /// are not sent again).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uploaded_bytes: Option<u64>,
    /// The upload's job, while this server runs it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
}

/// Progress of a long operation.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Progress {
    /// Units done.
    pub done: u64,
    /// Units in all.
    pub total: u64,
}

/// What a new disk is.
#[derive(Debug, Clone, Default)]
pub struct NewDisk {
    /// Size in bytes.
    pub size: u64,
    /// Logical block size (default 512).
    pub block_size: Option<u32>,
    /// Encrypt (default true).
    pub encrypted: Option<bool>,
    /// The master key (id, ARN or alias); default `alias/atrest/disk`, the
    /// account's service key for disks.
    pub key_id: Option<String>,
    /// Whether several clients may attach it read-write at once (default
    /// false: one client at a time, as an EBS volume without Multi-Attach).
    pub shareable: Option<bool>,
    /// Its tags ([`tags`]).
    pub tags: BTreeMap<String, String>,
}

/// The disk service. Its public methods are the customer's: they neither
/// list nor act on disks a service of atrest manages (see
/// [`DiskService::managed`]).
pub struct DiskService {
    kms: Arc<KeyService>,
    engine: Arc<Engine>,
    config: Config,
    open: Mutex<BTreeMap<String, Arc<open::Shared>>>,
    jobs: Mutex<BTreeMap<String, Arc<jobs::JobCell>>>,
    /// Disks a conversion is copying from (not attachable meanwhile).
    converting: Mutex<std::collections::BTreeSet<String>>,
    /// Serializes metadata operations that span the key service and the
    /// engine (grant, wrap, commit), so two cannot interleave on one disk.
    ops: Mutex<()>,
    /// Snapshots in object storage, once configured.
    archive: std::sync::OnceLock<Arc<archive::Archive>>,
}

impl std::fmt::Debug for DiskService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskService").finish_non_exhaustive()
    }
}

fn new_id(prefix: &str) -> Result<String> {
    let b = atrest_crypto::rand::array::<8>()
        .map_err(|e| KmsError::Internal(format!("random id: {e}")))?;
    Ok(format!("{prefix}-{}", hex::encode(b)))
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn ctx(name: &str, id: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(name.to_owned(), id.to_owned())])
}

fn owner_labels(caller: &Caller) -> Labels {
    Labels::from([
        (L_ACCOUNT.to_owned(), caller.account.as_str().to_owned()),
        (L_REGION.to_owned(), caller.region.clone()),
        (L_CREATED.to_owned(), now_rfc3339()),
    ])
}

fn owned_by(labels: &Labels, caller: &Caller) -> bool {
    labels.get(L_ACCOUNT).map(String::as_str) == Some(caller.account.as_str())
        && labels.get(L_REGION) == Some(&caller.region)
}

fn label(labels: &Labels, name: &str) -> String {
    labels.get(name).cloned().unwrap_or_default()
}

fn str_field(v: &Value, name: &str) -> Result<String, KmsError> {
    v.get(name)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| KmsError::Internal(format!("key service response lacks {name}")))
}

/// A base64 member of a key-service response (ciphertext blobs only; a
/// plaintext is decoded into zeroizing buffers in `unwrap_key`).
fn blob_field(v: &Value, name: &str) -> Result<Vec<u8>, KmsError> {
    B64.decode(str_field(v, name)?)
        .map_err(|_| KmsError::Internal(format!("key service response: {name} is not base64")))
}

impl DiskService {
    /// The service over `engine`, using `kms`. Resumes re-encryptions and
    /// conversions a crash interrupted, and starts the key check of open
    /// disks.
    pub fn start(kms: Arc<KeyService>, engine: Arc<Engine>, config: Config) -> Result<Arc<Self>> {
        let svc = Arc::new(Self {
            kms,
            engine,
            config,
            open: Mutex::new(BTreeMap::new()),
            jobs: Mutex::new(BTreeMap::new()),
            converting: Mutex::new(std::collections::BTreeSet::new()),
            ops: Mutex::new(()),
            archive: std::sync::OnceLock::new(),
        });
        jobs::resume(&svc)?;
        open::start_monitor(&svc);
        Ok(svc)
    }

    /// The engine (for flushing at shutdown and for tests).
    #[must_use]
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    fn session(&self, region: &str) -> Result<ServiceSession<'_>> {
        Ok(self.kms.service_session(SERVICE, region)?)
    }

    /// Refuses unless `caller` may itself use `key_arn` through this service
    /// for each of `actions` (by the key policy, its identity policies and
    /// its grants). The service works under its own grant; this makes the
    /// caller's own rights to the key count too, as EBS asks for
    /// `kms:CreateGrant` and `kms:Decrypt` of the person who creates,
    /// attaches or copies a volume: a user denied the key is refused naming
    /// it, whatever the disk's grant allows the service.
    pub(crate) fn caller_may(
        &self,
        caller: &Caller,
        key_arn: &str,
        actions: &[&str],
    ) -> Result<()> {
        match self
            .session(&caller.region)?
            .check_customer(caller, key_arn, actions)
        {
            // A key that is gone locks the resource: the service's own use
            // of it fails next and names the key and why (`Locked`), as it
            // does for every other state that locks it.
            Err(KmsError::NotFound(_)) => Ok(()),
            r => r.map_err(ServiceError::from),
        }
    }

    fn lock_ops(&self) -> std::sync::MutexGuard<'_, ()> {
        self.ops
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a service event (attach, detach, lock) in the audit trail
    /// as an operation of `account`.
    fn audit(&self, caller: &Caller, operation: &'static str, key_arn: Option<&str>, result: &str) {
        let meta = atrest_kms::RequestMeta::in_process();
        let call = atrest_kms::Call::new(caller, &meta);
        call.set_operation(operation);
        if let Some(k) = key_arn {
            call.set_key(k.to_owned());
        }
        if let Err(e) = self.kms.record_event(self.kms.audit_entry(&call, result)) {
            tracing::error!(operation, error = %e, "audit trail cannot record a disk event");
        }
    }

    // ----- views and ownership -------------------------------------------

    fn disk_view(&self, d: &DiskInfo) -> DiskView {
        let open = self.is_open(&d.id);
        let converting = d.labels.contains_key(L_CONVERTING);
        let state = if d.rekey.is_some() {
            "re-encrypting"
        } else if converting {
            "converting"
        } else if d.labels.contains_key(archive::L_RESTORING) {
            "restoring"
        } else if open {
            "in-use"
        } else {
            "available"
        };
        let reencrypt = d.rekey.as_ref().map(|r| Progress {
            done: r.done,
            total: d.size.div_ceil(atrest_disk::CHUNK),
        });
        DiskView {
            id: d.id.clone(),
            size: d.size,
            block_size: d.block_size,
            encrypted: d.key.is_some(),
            key_arn: d.key.as_ref().map(|k| k.key_arn.clone()),
            origin: d.origin.clone(),
            account: label(&d.labels, L_ACCOUNT),
            region: label(&d.labels, L_REGION),
            created: label(&d.labels, L_CREATED),
            state: state.to_owned(),
            shareable: d.labels.contains_key(L_SHAREABLE),
            reencrypt,
            managed_for: d.labels.get(managed::L_MANAGED_FOR).cloned(),
            tags: tags::of(&d.labels),
        }
    }

    fn snapshot_view(s: &SnapshotInfo) -> SnapshotView {
        SnapshotView {
            id: s.id.clone(),
            disk: s.disk.clone(),
            size: s.size,
            block_size: s.block_size,
            encrypted: s.key.is_some(),
            key_arn: s.key.as_ref().map(|k| k.key_arn.clone()),
            account: label(&s.labels, L_ACCOUNT),
            region: label(&s.labels, L_REGION),
            created: label(&s.labels, L_CREATED),
            storage: "local".into(),
            state: None,
            progress: None,
            uploaded_bytes: None,
            job: None,
        }
    }

    /// The region a disk is in, for callers that name a disk without one
    /// (NBD clients); the attach that follows checks the owner.
    pub fn disk_region(&self, id: &str) -> Result<String> {
        let d = self.engine.disk(id)?;
        d.labels.get(L_REGION).cloned().ok_or_else(|| {
            DiskError::NotFound {
                kind: "disk",
                id: id.to_owned(),
            }
            .into()
        })
    }

    /// The caller's disk `id`, if `actor` may use it: another account's
    /// reads as not found (whoever manages it), one managed by another
    /// than `actor` is refused naming its manager.
    fn own_disk(&self, actor: Actor, caller: &Caller, id: &str) -> Result<DiskInfo> {
        let d = self.engine.disk(id)?;
        if !owned_by(&d.labels, caller) {
            return Err(DiskError::NotFound {
                kind: "disk",
                id: id.to_owned(),
            }
            .into());
        }
        actor.check("disk", id, &d.labels)?;
        Ok(d)
    }

    /// As [`Self::own_disk`], for a snapshot.
    fn own_snapshot(&self, actor: Actor, caller: &Caller, id: &str) -> Result<SnapshotInfo> {
        let s = self.engine.snapshot(id)?;
        if !owned_by(&s.labels, caller) || s.labels.contains_key(archive::L_UPLOAD_FOR) {
            return Err(DiskError::NotFound {
                kind: "snapshot",
                id: id.to_owned(),
            }
            .into());
        }
        actor.check("snapshot", id, &s.labels)?;
        Ok(s)
    }

    /// Every disk in this pool as (id, account): what this node hosts, for
    /// the node registry. Gives no access.
    #[must_use]
    pub fn hosted(&self) -> Vec<(String, String)> {
        self.engine.disks().map_or_else(
            |_| Vec::new(),
            |disks| {
                disks
                    .iter()
                    .map(|d| (d.id.clone(), label(&d.labels, L_ACCOUNT)))
                    .collect()
            },
        )
    }

    /// The caller's disks (not those a service manages).
    pub fn list_disks(&self, caller: &Caller) -> Result<Vec<DiskView>> {
        Ok(self
            .engine
            .disks()?
            .iter()
            .filter(|d| owned_by(&d.labels, caller) && Actor::Customer.sees(&d.labels))
            .map(|d| self.disk_view(d))
            .collect())
    }

    /// Every disk of the caller's account and region, those a service of
    /// atrest manages included (with what they are for): the operators'
    /// view of what uses the pool. Changes nothing and gives no access.
    pub fn inventory(&self, caller: &Caller) -> Result<Vec<DiskView>> {
        Ok(self
            .engine
            .disks()?
            .iter()
            .filter(|d| owned_by(&d.labels, caller))
            .map(|d| self.disk_view(d))
            .collect())
    }

    /// One of the caller's disks.
    pub fn describe_disk(&self, caller: &Caller, id: &str) -> Result<DiskView> {
        self.describe_disk_by(Actor::Customer, caller, id)
    }

    fn describe_disk_by(&self, actor: Actor, caller: &Caller, id: &str) -> Result<DiskView> {
        Ok(self.disk_view(&self.own_disk(actor, caller, id)?))
    }

    /// The caller's snapshots (not those a service manages), local and in
    /// the object store.
    pub fn list_snapshots(&self, caller: &Caller) -> Result<Vec<SnapshotView>> {
        let mut out: Vec<SnapshotView> = self
            .engine
            .snapshots()?
            .iter()
            .filter(|s| {
                owned_by(&s.labels, caller)
                    && Actor::Customer.sees(&s.labels)
                    && !s.labels.contains_key(archive::L_UPLOAD_FOR)
            })
            .map(Self::snapshot_view)
            .collect();
        out.extend(self.list_stored(caller)?);
        Ok(out)
    }

    /// One of the caller's snapshots.
    pub fn describe_snapshot(&self, caller: &Caller, id: &str) -> Result<SnapshotView> {
        if let Some(v) = self.describe_stored(caller, id)? {
            return Ok(v);
        }
        Ok(Self::snapshot_view(&self.own_snapshot(
            Actor::Customer,
            caller,
            id,
        )?))
    }

    // ----- keys ----------------------------------------------------------

    /// Refuses with [`ServiceError::Locked`] (naming the key and the
    /// reason) when the caller's disk `id` is encrypted under a key that
    /// cannot be used now. For services built on disks (databases).
    pub fn check_disk_key(&self, caller: &Caller, id: &str) -> Result<()> {
        self.check_disk_key_by(Actor::Customer, caller, id)
    }

    fn check_disk_key_by(&self, actor: Actor, caller: &Caller, id: &str) -> Result<()> {
        let d = self.own_disk(actor, caller, id)?;
        match &d.key {
            Some(k) => self.check_key(&caller.region, &format!("disk {id}"), k),
            None => Ok(()),
        }
    }

    /// Refuses with [`ServiceError::Locked`] if `key` cannot be used.
    fn check_key(&self, region: &str, resource: &str, key: &KeyInfo) -> Result<()> {
        let s = self.session(region)?;
        match s.key_unusable(&key.key_arn, key.grant_id.as_deref())? {
            None => Ok(()),
            Some(reason) => Err(ServiceError::Locked {
                resource: resource.to_owned(),
                key_arn: key.key_arn.clone(),
                reason,
            }),
        }
    }

    /// Maps a key-service failure on `key` to [`ServiceError::Locked`] when
    /// the key turned unusable meanwhile.
    fn key_failure(
        &self,
        region: &str,
        resource: &str,
        key: &KeyInfo,
        e: KmsError,
    ) -> ServiceError {
        match self.check_key(region, resource, key) {
            Err(locked @ ServiceError::Locked { .. }) => locked,
            _ => e.into(),
        }
    }

    /// Resolves the master key `key_id` names for the customer (default:
    /// the account's disk service key) to its ARN.
    fn resolve_key(&self, caller: &Caller, key_id: Option<&str>) -> Result<String> {
        let s = self.session(&caller.region)?;
        let key_id = match key_id {
            Some(k) => k.to_owned(),
            None => s.service_key(&caller.account)?,
        };
        let out = s.call_for(caller, Operation::DescribeKey, &json!({"KeyId": key_id}))?;
        let meta = out
            .get("KeyMetadata")
            .ok_or_else(|| KmsError::Internal("DescribeKey response lacks KeyMetadata".into()))?;
        if meta.get("KeySpec").and_then(Value::as_str) != Some("SYMMETRIC_DEFAULT") {
            return Err(KmsError::Validation(format!(
                "Key '{key_id}' is not a symmetric encryption key; a disk needs one"
            ))
            .into());
        }
        Ok(str_field(meta, "Arn")?)
    }

    /// Creates, as the customer through the service, the grant that lets
    /// the service use `key_arn` for the resource named by `context`.
    fn grant(
        &self,
        caller: &Caller,
        key_arn: &str,
        context: &BTreeMap<String, String>,
    ) -> Result<String> {
        let s = self.session(&caller.region)?;
        let (id, _token) = s.grant_for(caller, key_arn, &GRANT_OPERATIONS, context)?;
        Ok(id)
    }

    /// Retires a grant the service no longer needs (best effort: a revoked
    /// grant is already gone).
    fn retire(&self, region: &str, key: &KeyInfo) {
        let Some(g) = &key.grant_id else { return };
        let r = self.session(region).and_then(|s| {
            s.call(
                Operation::RetireGrant,
                &json!({"KeyId": key.key_arn, "GrantId": g}),
            )
            .map_err(Into::into)
        });
        if let Err(e) = r {
            tracing::info!(key = %key.key_arn, grant = %g, error = %e, "could not retire a disk grant");
        }
    }

    /// A fresh data key under `key_arn` for `context`, wrapped.
    fn new_data_key(
        &self,
        region: &str,
        key_arn: &str,
        context: &BTreeMap<String, String>,
    ) -> Result<Vec<u8>> {
        let out = self.session(region)?.call(
            Operation::GenerateDataKeyWithoutPlaintext,
            &json!({"KeyId": key_arn, "NumberOfBytes": 64, "EncryptionContext": context}),
        )?;
        Ok(blob_field(&out, "CiphertextBlob")?)
    }

    /// Re-wraps `key`'s data key from `from` to `to_arn` / `to`.
    fn rewrap(
        &self,
        region: &str,
        key: &KeyInfo,
        from: &BTreeMap<String, String>,
        to_arn: &str,
        to: &BTreeMap<String, String>,
    ) -> Result<Vec<u8>, KmsError> {
        let out = self.kms_session(region)?.call(
            Operation::ReEncrypt,
            &json!({
                "CiphertextBlob": B64.encode(&key.wrapped),
                "SourceKeyId": key.key_arn,
                "SourceEncryptionContext": from,
                "DestinationKeyId": to_arn,
                "DestinationEncryptionContext": to,
            }),
        )?;
        blob_field(&out, "CiphertextBlob")
    }

    fn kms_session(&self, region: &str) -> Result<ServiceSession<'_>, KmsError> {
        self.kms.service_session(SERVICE, region)
    }

    /// The plaintext data key of `key` (wrapped for `context`).
    fn unwrap_key(
        &self,
        region: &str,
        key: &KeyInfo,
        context: &BTreeMap<String, String>,
    ) -> Result<XtsKey, KmsError> {
        #[derive(serde::Deserialize)]
        struct Out {
            #[serde(rename = "Plaintext", deserialize_with = "zeroizing_string")]
            plaintext: Zeroizing<String>,
        }
        let raw = self.kms_session(region)?.call_raw(
            Operation::Decrypt,
            &json!({
                "CiphertextBlob": B64.encode(&key.wrapped),
                "KeyId": key.key_arn,
                "EncryptionContext": context,
            }),
        )?;
        let out: Out = serde_json::from_slice(&raw).map_err(|_| {
            KmsError::Internal("the Decrypt response has no usable Plaintext".into())
        })?;
        let bytes = Zeroizing::new(
            B64.decode(out.plaintext.as_bytes())
                .map_err(|_| KmsError::Internal("Decrypt response is not base64".into()))?,
        );
        XtsKey::from_slice(&bytes)
            .map_err(|e| KmsError::Internal(format!("a disk data key is not 64 bytes: {e}")))
    }

    // ----- operations ----------------------------------------------------

    /// Creates a disk for `caller`.
    pub fn create_disk(&self, caller: &Caller, req: &NewDisk) -> Result<DiskView> {
        self.create_disk_labelled(caller, req, Labels::new())
    }

    /// Creates a disk with `extra` labels besides its owner's (its
    /// manager's, a conversion's source).
    fn create_disk_labelled(
        &self,
        caller: &Caller,
        req: &NewDisk,
        extra: Labels,
    ) -> Result<DiskView> {
        atrest_disk::check_size(req.size)?;
        let block_size = req.block_size.unwrap_or(512);
        if block_size != 512 && block_size != 4096 {
            return Err(DiskError::Invalid(format!(
                "the logical block size must be 512 or 4096, not {block_size}"
            ))
            .into());
        }
        tags::validate(&req.tags)?;
        let encrypted = req.encrypted.unwrap_or(true);
        if !encrypted && req.key_id.is_some() {
            return Err(KmsError::Validation(
                "a key was given for an unencrypted disk; leave out 'key_id' or set 'encrypted'"
                    .into(),
            )
            .into());
        }
        let id = new_id("disk")?;
        let _g = self.lock_ops();
        let key = if encrypted {
            let arn = self.resolve_key(caller, req.key_id.as_deref())?;
            Some(self.new_key_info(caller, &arn, &ctx(DISK_CONTEXT, &id))?)
        } else {
            None
        };
        let mut labels = owner_labels(caller);
        labels.extend(extra);
        labels.extend(tags::labels(&req.tags));
        if req.shareable == Some(true) {
            labels.insert(L_SHAREABLE.to_owned(), "true".to_owned());
        }
        let spec = DiskSpec {
            size: req.size,
            block_size,
            key: key.clone(),
            labels,
        };
        match self.engine.create_disk(&id, &spec) {
            Ok(d) => {
                tracing::info!(disk = %id, account = %caller.account, size = req.size, encrypted, "disk created");
                Ok(self.disk_view(&d))
            }
            Err(e) => {
                if let Some(k) = &key {
                    self.retire(&caller.region, k);
                }
                Err(e.into())
            }
        }
    }

    /// A grant and a fresh wrapped data key for a new resource.
    fn new_key_info(
        &self,
        caller: &Caller,
        arn: &str,
        context: &BTreeMap<String, String>,
    ) -> Result<KeyInfo> {
        self.caller_may(caller, arn, &["GenerateDataKeyWithoutPlaintext"])?;
        let grant = self.grant(caller, arn, context)?;
        let info = KeyInfo {
            key_arn: arn.to_owned(),
            wrapped: Vec::new(),
            grant_id: Some(grant),
        };
        match self.new_data_key(&caller.region, arn, context) {
            Ok(wrapped) => Ok(KeyInfo { wrapped, ..info }),
            Err(e) => {
                self.retire(&caller.region, &info);
                Err(e)
            }
        }
    }

    /// A grant and a wrapping of `key`'s data key (wrapped for `from`) for
    /// a new resource named by `to`.
    fn derived_key_info(
        &self,
        caller: &Caller,
        resource: &str,
        key: &KeyInfo,
        from: &BTreeMap<String, String>,
        to: &BTreeMap<String, String>,
    ) -> Result<KeyInfo> {
        self.check_key(&caller.region, resource, key)?;
        self.caller_may(caller, &key.key_arn, &["Decrypt"])?;
        let grant = self.grant(caller, &key.key_arn, to)?;
        let info = KeyInfo {
            key_arn: key.key_arn.clone(),
            wrapped: Vec::new(),
            grant_id: Some(grant),
        };
        match self.rewrap(&caller.region, key, from, &key.key_arn, to) {
            Ok(wrapped) => Ok(KeyInfo { wrapped, ..info }),
            Err(e) => {
                self.retire(&caller.region, &info);
                Err(self.key_failure(&caller.region, resource, key, e))
            }
        }
    }

    /// Snapshots one of the caller's disks: O(1).
    pub fn create_snapshot(&self, caller: &Caller, disk: &str) -> Result<SnapshotView> {
        self.create_snapshot_by(Actor::Customer, caller, disk)
    }

    /// A snapshot inherits its disk's manager.
    fn create_snapshot_by(
        &self,
        actor: Actor,
        caller: &Caller,
        disk: &str,
    ) -> Result<SnapshotView> {
        self.create_snapshot_labelled(actor, caller, disk, Labels::new())
            .map(|s| Self::snapshot_view(&s))
    }

    /// A snapshot with `extra` labels besides its owner's and manager's.
    fn create_snapshot_labelled(
        &self,
        actor: Actor,
        caller: &Caller,
        disk: &str,
        extra: Labels,
    ) -> Result<SnapshotInfo> {
        let _g = self.lock_ops();
        let d = self.own_disk(actor, caller, disk)?;
        busy_check(&d)?;
        let id = new_id("snap")?;
        let key = match &d.key {
            None => None,
            Some(k) => Some(self.derived_key_info(
                caller,
                &format!("disk {disk}"),
                k,
                &ctx(DISK_CONTEXT, disk),
                &ctx(SNAPSHOT_CONTEXT, &id),
            )?),
        };
        let mut labels = owner_labels(caller);
        labels.extend(manager_labels(&d.labels));
        labels.extend(extra);
        match self.engine.snapshot_disk(disk, &id, key.clone(), labels) {
            Ok(s) => {
                tracing::info!(disk, snapshot = %id, "snapshot created");
                Ok(s)
            }
            Err(e) => {
                if let Some(k) = &key {
                    self.retire(&caller.region, k);
                }
                Err(e.into())
            }
        }
    }

    /// Creates a disk from one of the caller's snapshots: same data key,
    /// same master key, no data copied.
    pub fn clone_snapshot(&self, caller: &Caller, snapshot: &str) -> Result<DiskView> {
        self.clone_snapshot_by(Actor::Customer, caller, snapshot, Labels::new())
    }

    /// [`Self::clone_snapshot`], the new disk tagged with `tags`.
    pub fn clone_snapshot_tagged(
        &self,
        caller: &Caller,
        snapshot: &str,
        tags: &BTreeMap<String, String>,
    ) -> Result<DiskView> {
        tags::validate(tags)?;
        self.clone_snapshot_by(
            Actor::Customer,
            caller,
            snapshot,
            tags::labels(tags).collect(),
        )
    }

    /// The tags of the caller's disk `disk`, `None` if it has no such disk:
    /// the condition keys a policy sees (`aws:ResourceTag/<key>`).
    #[must_use]
    pub fn disk_tags(&self, caller: &Caller, disk: &str) -> Option<BTreeMap<String, String>> {
        self.own_disk(Actor::Customer, caller, disk)
            .ok()
            .map(|d| tags::of(&d.labels))
    }

    /// The new disk gets `extra` labels (its manager's) besides its owner's.
    fn clone_snapshot_by(
        &self,
        actor: Actor,
        caller: &Caller,
        snapshot: &str,
        extra: Labels,
    ) -> Result<DiskView> {
        let _g = self.lock_ops();
        if actor == Actor::Customer
            && let Some(r) = self.own_stored(caller, snapshot)?
        {
            return self.restore_stored(caller, &r, extra);
        }
        let s = self.own_snapshot(actor, caller, snapshot)?;
        let id = new_id("disk")?;
        let key = match &s.key {
            None => None,
            Some(k) => Some(self.derived_key_info(
                caller,
                &format!("snapshot {snapshot}"),
                k,
                &ctx(SNAPSHOT_CONTEXT, snapshot),
                &ctx(DISK_CONTEXT, &id),
            )?),
        };
        let mut labels = owner_labels(caller);
        labels.extend(extra);
        match self
            .engine
            .clone_snapshot(snapshot, &id, key.clone(), labels)
        {
            Ok(d) => {
                tracing::info!(snapshot, disk = %id, "disk created from snapshot");
                Ok(self.disk_view(&d))
            }
            Err(e) => {
                if let Some(k) = &key {
                    self.retire(&caller.region, k);
                }
                Err(e.into())
            }
        }
    }

    /// Rolls one of the caller's disks back to one of its snapshots.
    pub fn rollback(&self, caller: &Caller, disk: &str, snapshot: &str) -> Result<DiskView> {
        let _g = self.lock_ops();
        let d = self.own_disk(Actor::Customer, caller, disk)?;
        let s = self.own_snapshot(Actor::Customer, caller, snapshot)?;
        busy_check(&d)?;
        if let Some(k) = &d.key {
            self.check_key(&caller.region, &format!("disk {disk}"), k)?;
            self.caller_may(caller, &k.key_arn, &["Decrypt"])?;
        }
        if let Some(k) = &s.key {
            self.check_key(&caller.region, &format!("snapshot {snapshot}"), k)?;
            self.caller_may(caller, &k.key_arn, &["Decrypt"])?;
        }
        let d = self.engine.rollback(disk, snapshot)?;
        tracing::info!(disk, snapshot, "disk rolled back");
        Ok(self.disk_view(&d))
    }

    /// Grows one of the caller's disks.
    pub fn resize(&self, caller: &Caller, disk: &str, size: u64) -> Result<DiskView> {
        self.resize_by(Actor::Customer, caller, disk, size)
    }

    fn resize_by(&self, actor: Actor, caller: &Caller, disk: &str, size: u64) -> Result<DiskView> {
        let _g = self.lock_ops();
        self.own_disk(actor, caller, disk)?;
        let d = self.engine.resize(disk, size)?;
        Ok(self.disk_view(&d))
    }

    /// Moves one of the caller's disks to another master key of its region:
    /// the same data key, re-wrapped, O(1). The old grant is retired.
    pub fn change_key(&self, caller: &Caller, disk: &str, key_id: &str) -> Result<DiskView> {
        self.change_key_by(Actor::Customer, caller, disk, key_id)
    }

    fn change_key_by(
        &self,
        actor: Actor,
        caller: &Caller,
        disk: &str,
        key_id: &str,
    ) -> Result<DiskView> {
        let _g = self.lock_ops();
        let d = self.own_disk(actor, caller, disk)?;
        busy_check(&d)?;
        let Some(old) = d.key else {
            return Err(DiskError::Invalid(format!(
                "disk {disk} is not encrypted; convert it into a new encrypted disk instead"
            ))
            .into());
        };
        let resource = format!("disk {disk}");
        self.check_key(&caller.region, &resource, &old)?;
        self.caller_may(caller, &old.key_arn, &["Decrypt"])?;
        let arn = self.resolve_key(caller, Some(key_id))?;
        self.caller_may(caller, &arn, &["ReEncryptTo"])?;
        let context = ctx(DISK_CONTEXT, disk);
        let grant = self.grant(caller, &arn, &context)?;
        let mut new = KeyInfo {
            key_arn: arn.clone(),
            wrapped: Vec::new(),
            grant_id: Some(grant),
        };
        match self.rewrap(&caller.region, &old, &context, &arn, &context) {
            Ok(w) => new.wrapped = w,
            Err(e) => {
                self.retire(&caller.region, &new);
                return Err(self.key_failure(&caller.region, &resource, &old, e));
            }
        }
        let d = match self.engine.rewrap(disk, new.clone()) {
            Ok(d) => d,
            Err(e) => {
                self.retire(&caller.region, &new);
                return Err(e.into());
            }
        };
        if old.grant_id != new.grant_id {
            self.retire(&caller.region, &old);
        }
        tracing::info!(disk, from = %old.key_arn, to = %arn, "disk master key changed");
        Ok(self.disk_view(&d))
    }

    /// Lets the service use a disk's key again after its grant was revoked:
    /// a new grant, as the customer (who must be allowed to create it).
    pub fn regrant(&self, caller: &Caller, disk: &str) -> Result<DiskView> {
        self.regrant_by(Actor::Customer, caller, disk)
    }

    fn regrant_by(&self, actor: Actor, caller: &Caller, disk: &str) -> Result<DiskView> {
        let _g = self.lock_ops();
        let d = self.own_disk(actor, caller, disk)?;
        let Some(old) = d.key else {
            return Err(DiskError::Invalid(format!("disk {disk} is not encrypted")).into());
        };
        let grant = self.grant(caller, &old.key_arn, &ctx(DISK_CONTEXT, disk))?;
        let new = KeyInfo {
            grant_id: Some(grant),
            ..old
        };
        let d = self.engine.rewrap(disk, new)?;
        Ok(self.disk_view(&d))
    }

    /// Deletes one of the caller's disks (not while open); retires its
    /// grant.
    pub fn delete_disk(&self, caller: &Caller, disk: &str) -> Result<()> {
        self.delete_disk_by(Actor::Customer, caller, disk)
    }

    fn delete_disk_by(&self, actor: Actor, caller: &Caller, disk: &str) -> Result<()> {
        let _g = self.lock_ops();
        let d = self.own_disk(actor, caller, disk)?;
        if self.is_open(disk) {
            return Err(DiskError::Conflict(format!(
                "disk {disk} is in use; detach it (and wait for its jobs) before deleting it"
            ))
            .into());
        }
        self.engine.delete_disk(disk)?;
        if let Some(k) = &d.key {
            self.retire(&caller.region, k);
            if let Some(r) = &d.rekey
                && r.key.grant_id != k.grant_id
            {
                self.retire(&caller.region, &r.key);
            }
        }
        tracing::info!(disk, "disk deleted");
        Ok(())
    }

    /// Deletes one of the caller's snapshots; retires its grant.
    pub fn delete_snapshot(&self, caller: &Caller, snapshot: &str) -> Result<()> {
        self.delete_snapshot_by(Actor::Customer, caller, snapshot)
    }

    fn delete_snapshot_by(&self, actor: Actor, caller: &Caller, snapshot: &str) -> Result<()> {
        let _g = self.lock_ops();
        if actor == Actor::Customer
            && let Some(r) = self.own_stored(caller, snapshot)?
        {
            return self.delete_stored(caller, r);
        }
        let s = self.own_snapshot(actor, caller, snapshot)?;
        self.engine.delete_snapshot(snapshot)?;
        if let Some(k) = &s.key {
            self.retire(&caller.region, k);
        }
        tracing::info!(snapshot, "snapshot deleted");
        Ok(())
    }
}

/// Deserializes a string straight into a zeroizing buffer.
fn zeroizing_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Zeroizing<String>, D::Error> {
    <String as serde::Deserialize>::deserialize(d).map(Zeroizing::new)
}

/// Refuses metadata changes while a re-encryption or conversion runs.
fn busy_check(d: &DiskInfo) -> Result<()> {
    if d.rekey.is_some() {
        return Err(DiskError::Conflict(format!(
            "disk {} is being re-encrypted; wait for the job to finish",
            d.id
        ))
        .into());
    }
    if let Some(s) = d.labels.get(archive::L_RESTORING) {
        return Err(DiskError::Conflict(format!(
            "disk {} is being restored from snapshot {s}; wait for the job to finish",
            d.id
        ))
        .into());
    }
    if d.labels.contains_key(L_CONVERTING) {
        return Err(DiskError::Conflict(format!(
            "disk {} is being filled by a conversion; wait for the job to finish",
            d.id
        ))
        .into());
    }
    Ok(())
}

/// The account a disk belongs to, for service-internal callers.
fn owner_caller(labels: &Labels) -> Option<Caller> {
    let account = AccountId::parse(labels.get(L_ACCOUNT)?)?;
    Some(Caller::root(account, labels.get(L_REGION)?))
}
