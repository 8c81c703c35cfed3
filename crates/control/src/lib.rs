//! atrest's control plane: projects, and the customer-managed keys (CMEK)
//! they bind their resources to.
//!
//! Owns: project records (`<data-dir>/control.redb`), the key configuration
//! of each project and region with its test-and-save, the key policy a
//! customer attaches, resource placement (a project's disks and instances
//! are created only in regions with a configured key, under that key), the
//! project's revocation policy, and pause and resume. It calls the key
//! service, the disk service and the database service in process, as the
//! caller, through their ordinary authorization: it holds no key of its own.
//!
//! * A project is created with CMEK on or off, and that never changes
//!   (P1). Without CMEK its resources use the account's service keys
//!   (`alias/atrest/disk`, `alias/atrest/db`), atrest's managed keys.
//! * A CMEK project holds one customer key per region (P2). Configuring it
//!   (P3) runs, as the customer through each service that will use it
//!   (`kms:ViaService` `disk.<region>.atrest` and `db.<region>.atrest`),
//!   DescribeKey, GenerateDataKey, Decrypt and CreateGrant (the test grant
//!   is retired at once); the first refusal names the permission.
//! * Pause stops the project's instances; resume first tests every key the
//!   project's resources use, and refuses naming the key while one is
//!   unusable (P5). A revocation policy `stop` pauses the project by itself
//!   once a key has been unusable for the set time; `keep` (the default)
//!   keeps serving until the customer pauses.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use atrest_dbservice::{DbError, DbService, InstanceView, NewInstance};
use atrest_diskservice::{DiskService, DiskView, NewDisk, ServiceError};
use atrest_kms::{Caller, KeyService, KmsError, Operation};
use atrest_store::{Store, Table};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// account `\0` project id → [`ProjectRecord`] (JSON).
pub const PROJECTS: Table = Table::new("control.projects");

/// The services that use a project's keys, and so must be able to.
const SERVICES: [&str; 2] = ["disk", "db"];

/// Why a control-plane request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// No such project (in the caller's account).
    #[error("{0}")]
    NotFound(String),
    /// The request is malformed.
    #[error("{0}")]
    Invalid(String),
    /// The request conflicts with the project's state.
    #[error("{0}")]
    Conflict(String),
    /// The region has no key configured in this CMEK project (K10, P2).
    #[error(
        "project {project} has no key in region {region}: configure one first (PUT /v1/projects/{project}/keys/{region})"
    )]
    RegionNotConfigured {
        /// The project.
        project: String,
        /// The region.
        region: String,
    },
    /// A key cannot be used by the services: names the permission refused.
    #[error(
        "the key {key_arn} cannot be used by project {project}: {permission} was refused ({reason})"
    )]
    KeyAccess {
        /// The project.
        project: String,
        /// The key.
        key_arn: String,
        /// The refused permission and the service it was tried through.
        permission: String,
        /// The key service's words.
        reason: String,
    },
    /// From the key service.
    #[error(transparent)]
    Kms(#[from] KmsError),
    /// From the disk service.
    #[error(transparent)]
    Disk(#[from] ServiceError),
    /// From the database service.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The store failed (the server's fault).
    #[error("project store: {0}")]
    Store(String),
}

impl From<atrest_store::StoreError> for ControlError {
    fn from(e: atrest_store::StoreError) -> Self {
        Self::Store(e.to_string())
    }
}

type Result<T> = std::result::Result<T, ControlError>;

/// What a project does when one of its keys becomes unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(tag = "policy", rename_all = "kebab-case")]
pub enum Revocation {
    /// Keep serving until the customer pauses the project.
    #[default]
    Keep,
    /// Pause the project once a key has been unusable this long.
    Stop {
        /// Seconds.
        after_seconds: u64,
    },
}

/// A project's key in one region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeyConfig {
    /// The key's ARN (in the project's account and this region).
    pub key_arn: String,
    /// Its provider: `atrest`, or the custom key store (key provider) of an
    /// `EXTERNAL_KMS` key.
    pub provider: String,
    /// When it was tested and saved, RFC 3339.
    pub configured: String,
}

/// What kind of resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A disk (its id).
    Disk,
    /// A database instance (its name).
    Instance,
}

/// A resource of a project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Resource {
    /// Disk or instance.
    pub kind: Kind,
    /// The disk's id or the instance's name.
    pub id: String,
    /// Its region.
    pub region: String,
}

/// A project as stored and shown.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Project {
    /// `prj-` and 16 hex digits.
    pub id: String,
    /// Name (unique in the account).
    pub name: String,
    /// The owning account.
    pub account: String,
    /// Whether the project uses customer-managed keys (fixed at creation).
    pub cmek: bool,
    /// Creation time, RFC 3339.
    pub created: String,
    /// The revocation policy.
    pub revocation: Revocation,
    /// Keys by region (CMEK projects).
    pub keys: BTreeMap<String, KeyConfig>,
    /// Whether the project is paused.
    pub paused: bool,
    /// Its disks and instances.
    pub resources: Vec<Resource>,
    /// The client token it was created with (idempotency).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_token: Option<String>,
    /// Its tags (the disk service's rules), condition keys of identity
    /// policies (`aws:ResourceTag/<key>`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

/// A new project.
#[derive(Debug, Clone, Default)]
pub struct NewProject {
    /// Name: 1 to 64 of a-z, 0-9 and '-'.
    pub name: String,
    /// Customer-managed keys.
    pub cmek: bool,
    /// The revocation policy.
    pub revocation: Revocation,
    /// Makes a retried create return the first project.
    pub client_token: Option<String>,
    /// Tags.
    pub tags: BTreeMap<String, String>,
}

/// The control plane.
pub struct Projects {
    store: Arc<dyn Store>,
    kms: Arc<KeyService>,
    disks: Arc<DiskService>,
    db: Arc<DbService>,
    /// Serializes changes to project records.
    ops: Mutex<()>,
    /// When each (project, key) was first seen unusable (revocation policy).
    unusable_since: Mutex<BTreeMap<(String, String), std::time::Instant>>,
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn record_key(account: &str, id: &str) -> Vec<u8> {
    let mut k = account.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(id.as_bytes());
    k
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.as_bytes()[0].is_ascii_lowercase()
}

impl Projects {
    /// The control plane over `store`.
    #[must_use]
    pub fn new(
        store: Arc<dyn Store>,
        kms: Arc<KeyService>,
        disks: Arc<DiskService>,
        db: Arc<DbService>,
    ) -> Self {
        Self {
            store,
            kms,
            disks,
            db,
            ops: Mutex::new(()),
            unusable_since: Mutex::new(BTreeMap::new()),
        }
    }

    fn lock_ops(&self) -> std::sync::MutexGuard<'_, ()> {
        self.ops
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn load(&self, account: &str, id: &str) -> Result<Project> {
        let tx = self.store.read()?;
        let bytes = tx
            .get(PROJECTS, &record_key(account, id))?
            .ok_or_else(|| ControlError::NotFound(format!("project {id} does not exist")))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| ControlError::Store(format!("corrupt project {id}: {e}")))
    }

    fn save(&self, p: &Project) -> Result<()> {
        let bytes = serde_json::to_vec(p).map_err(|e| ControlError::Store(e.to_string()))?;
        let mut tx = self.store.write()?;
        tx.put(PROJECTS, &record_key(&p.account, &p.id), &bytes)?;
        tx.commit()?;
        Ok(())
    }

    fn all(&self, account: Option<&str>) -> Result<Vec<Project>> {
        let prefix = account.map(|a| record_key(a, "")).unwrap_or_default();
        let tx = self.store.read()?;
        tx.scan(PROJECTS, &prefix, None, usize::MAX)?
            .into_iter()
            .map(|(_, v)| {
                serde_json::from_slice(&v)
                    .map_err(|e| ControlError::Store(format!("corrupt project: {e}")))
            })
            .collect()
    }

    /// Creates a project. With a client token already used by this
    /// account, answers that project if it was asked for the same way, and
    /// refuses otherwise.
    pub fn create(&self, caller: &Caller, req: &NewProject) -> Result<(Project, bool)> {
        if !valid_name(&req.name) {
            return Err(ControlError::Invalid(format!(
                "'{}' is not a project name: 1 to 64 of a-z, 0-9 and '-', starting with a letter",
                req.name
            )));
        }
        if let Revocation::Stop { after_seconds } = req.revocation
            && after_seconds > 30 * 86_400
        {
            return Err(ControlError::Invalid(
                "'after_seconds' must be at most 2592000 (30 days)".into(),
            ));
        }
        atrest_diskservice::tags::validate(&req.tags)
            .map_err(|e| ControlError::Invalid(e.to_string()))?;
        if let Some(t) = &req.client_token
            && (t.is_empty() || t.len() > 64)
        {
            return Err(ControlError::Invalid(
                "'client_token' must be 1 to 64 characters".into(),
            ));
        }
        let account = caller.account.as_str();
        let _g = self.lock_ops();
        for p in self.all(Some(account))? {
            if req.client_token.is_some() && p.client_token == req.client_token {
                if p.name == req.name && p.cmek == req.cmek && p.revocation == req.revocation {
                    return Ok((p, false));
                }
                return Err(ControlError::Conflict(format!(
                    "client token already used to create project {} with other settings",
                    p.id
                )));
            }
            if p.name == req.name {
                return Err(ControlError::Conflict(format!(
                    "a project named {} already exists ({})",
                    p.name, p.id
                )));
            }
        }
        let id = format!(
            "prj-{}",
            hex::encode(atrest_crypto::rand::array::<8>().map_err(KmsError::from)?)
        );
        let p = Project {
            id,
            name: req.name.clone(),
            account: account.to_owned(),
            cmek: req.cmek,
            created: now_rfc3339(),
            revocation: req.revocation,
            keys: BTreeMap::new(),
            paused: false,
            resources: Vec::new(),
            client_token: req.client_token.clone(),
            tags: req.tags.clone(),
        };
        self.save(&p)?;
        tracing::info!(project = %p.id, account, cmek = p.cmek, "created project");
        Ok((p, true))
    }

    /// The caller's projects, in id order, `limit` from after `after`.
    pub fn list(
        &self,
        caller: &Caller,
        limit: usize,
        after: Option<&str>,
    ) -> Result<(Vec<Project>, Option<String>)> {
        let mut all = self.all(Some(caller.account.as_str()))?;
        if let Some(a) = after {
            all.retain(|p| p.id.as_str() > a);
        }
        let more = all.len() > limit;
        all.truncate(limit);
        let next = more.then(|| all.last().map(|p| p.id.clone())).flatten();
        Ok((all, next))
    }

    /// The tags of the caller's project `id`, `None` if it has no such
    /// project: the condition keys a policy sees.
    #[must_use]
    pub fn tags_of(&self, caller: &Caller, id: &str) -> Option<BTreeMap<String, String>> {
        self.load(caller.account.as_str(), id).ok().map(|p| p.tags)
    }

    /// One project, with resources that no longer exist left out.
    pub fn describe(&self, caller: &Caller, id: &str) -> Result<Project> {
        let mut p = self.load(caller.account.as_str(), id)?;
        p.resources.retain(|r| self.exists(caller, r));
        Ok(p)
    }

    fn exists(&self, caller: &Caller, r: &Resource) -> bool {
        let mut c = caller.clone();
        c.region.clone_from(&r.region);
        match r.kind {
            Kind::Disk => self.disks.describe_disk(&c, &r.id).is_ok(),
            Kind::Instance => self.db.describe(&c, &r.id).is_ok(),
        }
    }

    /// Deletes an empty project.
    pub fn delete(&self, caller: &Caller, id: &str) -> Result<()> {
        let _g = self.lock_ops();
        let p = self.describe(caller, id)?;
        if let Some(r) = p.resources.first() {
            return Err(ControlError::Conflict(format!(
                "project {id} still has {} resource(s) (first: {:?} {}); delete them first",
                p.resources.len(),
                r.kind,
                r.id
            )));
        }
        let mut tx = self.store.write()?;
        tx.delete(PROJECTS, &record_key(&p.account, &p.id))?;
        tx.commit()?;
        Ok(())
    }

    fn served(&self, region: &str) -> Result<()> {
        if self.kms.regions().iter().any(|r| r == region) {
            Ok(())
        } else {
            Err(ControlError::Invalid(format!(
                "region {region} has no key service here; this server serves: {}",
                self.kms.regions().join(", ")
            )))
        }
    }

    /// The key policy statements the customer attaches to their key for
    /// this project in `region`: the services may use the key for the
    /// account's principals (the first statement), and the account keeps
    /// administering it without being able to use it otherwise.
    pub fn key_policy(&self, caller: &Caller, id: &str, region: &str) -> Result<Value> {
        let p = self.load(caller.account.as_str(), id)?;
        self.served(region)?;
        let account = &p.account;
        let via: Vec<String> = SERVICES
            .iter()
            .map(|s| format!("{s}.{region}.atrest"))
            .collect();
        Ok(json!({
            "Version": "2012-10-17",
            "Id": format!("atrest-project-{}-{region}", p.id),
            "Statement": [
                {
                    "Sid": format!("Allow atrest's disk and database services in {region} to use the key for the account"),
                    "Effect": "Allow",
                    "Principal": {"AWS": "*"},
                    "Action": ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*",
                               "kms:CreateGrant", "kms:DescribeKey"],
                    "Resource": "*",
                    "Condition": {"StringEquals": {"kms:CallerAccount": account, "kms:ViaService": via}}
                },
                {
                    "Sid": "Allow the account to administer the key",
                    "Effect": "Allow",
                    "Principal": {"AWS": format!("arn:aws:iam::{account}:root")},
                    "Action": ["kms:Describe*", "kms:Get*", "kms:List*", "kms:PutKeyPolicy",
                               "kms:Enable*", "kms:Disable*", "kms:Update*", "kms:RevokeGrant",
                               "kms:TagResource", "kms:UntagResource", "kms:ScheduleKeyDeletion",
                               "kms:CancelKeyDeletion", "kms:CreateAlias", "kms:DeleteAlias",
                               "kms:RotateKeyOnDemand"],
                    "Resource": "*"
                }
            ]
        }))
    }

    /// Tries, as the customer through each service, everything the services
    /// will do with the key; the first refusal is named. Answers the key's
    /// ARN and provider.
    fn test_key(
        &self,
        caller: &Caller,
        project: &str,
        region: &str,
        key_id: &str,
    ) -> Result<(String, String)> {
        let mut customer = caller.clone();
        region.clone_into(&mut customer.region);
        let context = json!({"atrest:project": project});
        let mut found: Option<(String, String)> = None;
        for service in SERVICES {
            let s = self.kms.service_session(service, region)?;
            let via = s.via_service();
            let refused = |permission: &str, key_arn: &str, e: KmsError| ControlError::KeyAccess {
                project: project.to_owned(),
                key_arn: key_arn.to_owned(),
                permission: format!("{permission} through {via}"),
                reason: format!("{}: {e}", e.aws_type()),
            };
            let d = s
                .call_for(&customer, Operation::DescribeKey, &json!({"KeyId": key_id}))
                .map_err(|e| refused("kms:DescribeKey", key_id, e))?;
            let m = &d["KeyMetadata"];
            let arn = m["Arn"].as_str().unwrap_or(key_id).to_owned();
            if m["KeyManager"] != "CUSTOMER" {
                return Err(ControlError::Invalid(format!(
                    "{arn} is not a customer managed key; a CMEK project needs the customer's own key"
                )));
            }
            if m["KeySpec"] != "SYMMETRIC_DEFAULT" {
                return Err(ControlError::Invalid(format!(
                    "{arn} is not a symmetric encryption key (KeySpec {}, KeyUsage {}); a CMEK project needs one",
                    m["KeySpec"].as_str().unwrap_or("unknown"),
                    m["KeyUsage"].as_str().unwrap_or("unknown")
                )));
            }
            if m["KeyState"] != "Enabled" {
                return Err(ControlError::KeyAccess {
                    project: project.to_owned(),
                    key_arn: arn,
                    permission: "use of the key".into(),
                    reason: format!(
                        "the key is {}",
                        m["KeyState"].as_str().unwrap_or("unusable")
                    ),
                });
            }
            let provider = m["CustomKeyStoreId"]
                .as_str()
                .unwrap_or("atrest")
                .to_owned();
            let dk = s
                .call_for(
                    &customer,
                    Operation::GenerateDataKey,
                    &json!({"KeyId": arn, "KeySpec": "AES_256", "EncryptionContext": context}),
                )
                .map_err(|e| refused("kms:GenerateDataKey", &arn, e))?;
            s.call_for(
                &customer,
                Operation::Decrypt,
                &json!({"KeyId": arn, "CiphertextBlob": dk["CiphertextBlob"], "EncryptionContext": context}),
            )
            .map_err(|e| refused("kms:Decrypt", &arn, e))?;
            let g = s
                .call_for(
                    &customer,
                    Operation::CreateGrant,
                    &json!({"KeyId": arn, "GranteePrincipal": s.principal(),
                            "RetiringPrincipal": s.principal(), "Operations": ["Decrypt"],
                            "Constraints": {"EncryptionContextSubset": context}}),
                )
                .map_err(|e| refused("kms:CreateGrant", &arn, e))?;
            // The test grant goes at once (retired by the service it names).
            if let Err(e) = s.call(
                Operation::RetireGrant,
                &json!({"KeyId": arn, "GrantId": g["GrantId"]}),
            ) {
                tracing::warn!(key = %arn, error = %e, "could not retire a test grant");
            }
            found = Some((arn, provider));
        }
        found.ok_or_else(|| ControlError::Invalid("no service tested the key".into()))
    }

    /// Tests `key_id` for the project in `region` and saves it (P3).
    pub fn set_key(
        &self,
        caller: &Caller,
        id: &str,
        region: &str,
        key_id: &str,
    ) -> Result<Project> {
        self.served(region)?;
        let p = self.describe(caller, id)?;
        if !p.cmek {
            return Err(ControlError::Conflict(format!(
                "project {id} was created without CMEK: its resources use atrest's managed keys, and that cannot change"
            )));
        }
        let (arn, provider) = self.test_key(caller, id, region, key_id)?;
        if !arn.starts_with(&format!("arn:aws:kms:{region}:")) {
            return Err(ControlError::Invalid(format!(
                "{arn} is not in region {region}: a region's resources use only keys of that region"
            )));
        }
        let _g = self.lock_ops();
        let mut p = self.describe(caller, id)?;
        if let Some(old) = p.keys.get(region)
            && old.key_arn != arn
            && p.resources.iter().any(|r| r.region == region)
        {
            return Err(ControlError::Conflict(format!(
                "project {id} already encrypts resources in {region} with {}; a region keeps its key while it has resources",
                old.key_arn
            )));
        }
        p.keys.insert(
            region.to_owned(),
            KeyConfig {
                key_arn: arn,
                provider,
                configured: now_rfc3339(),
            },
        );
        self.save(&p)?;
        Ok(p)
    }

    /// The key a new resource of the project in `region` is encrypted
    /// under: the configured key (CMEK), or `None` (the service key).
    fn placement(&self, p: &Project, region: &str) -> Result<Option<String>> {
        if p.paused {
            return Err(ControlError::Conflict(format!(
                "project {} is paused; resume it first",
                p.id
            )));
        }
        if !p.cmek {
            return Ok(None);
        }
        match p.keys.get(region) {
            Some(k) => Ok(Some(k.key_arn.clone())),
            None => Err(ControlError::RegionNotConfigured {
                project: p.id.clone(),
                region: region.to_owned(),
            }),
        }
    }

    fn add_resource(&self, caller: &Caller, id: &str, r: Resource) -> Result<()> {
        let _g = self.lock_ops();
        let mut p = self.load(caller.account.as_str(), id)?;
        p.resources.push(r);
        self.save(&p)
    }

    /// Creates a disk in the project, in the caller's region (P2, P4).
    pub fn create_disk(&self, caller: &Caller, id: &str, req: &NewDisk) -> Result<DiskView> {
        let p = self.describe(caller, id)?;
        if req.key_id.is_some() || req.encrypted == Some(false) {
            return Err(ControlError::Invalid(
                "a project's disks are always encrypted under the project's key: leave out 'key_id' and 'encrypted'".into(),
            ));
        }
        let key = self.placement(&p, &caller.region)?;
        let mut req = req.clone();
        req.key_id = key;
        let d = self.disks.create_disk(caller, &req)?;
        self.add_resource(
            caller,
            id,
            Resource {
                kind: Kind::Disk,
                id: d.id.clone(),
                region: caller.region.clone(),
            },
        )?;
        Ok(d)
    }

    /// Creates a database instance in the project, in the caller's region.
    pub fn create_instance(
        &self,
        caller: &Caller,
        id: &str,
        req: &NewInstance,
    ) -> Result<InstanceView> {
        let p = self.describe(caller, id)?;
        if req.key_id.is_some() || req.service_key || req.unencrypted {
            return Err(ControlError::Invalid(
                "a project's instances are always encrypted under the project's key: leave out 'key_id', 'service_key' and 'unencrypted'".into(),
            ));
        }
        let key = self.placement(&p, &caller.region)?;
        let mut req = req.clone();
        req.service_key = key.is_none();
        req.key_id = key;
        let v = self.db.create(caller, &req)?;
        self.add_resource(
            caller,
            id,
            Resource {
                kind: Kind::Instance,
                id: v.name.clone(),
                region: caller.region.clone(),
            },
        )?;
        Ok(v)
    }

    /// Pauses the project: its instances stop (P5).
    pub fn pause(&self, caller: &Caller, id: &str) -> Result<Project> {
        let _g = self.lock_ops();
        let mut p = self.describe(caller, id)?;
        self.stop_instances(caller, &p)?;
        p.paused = true;
        self.save(&p)?;
        Ok(p)
    }

    fn stop_instances(&self, caller: &Caller, p: &Project) -> Result<()> {
        for r in p.resources.iter().filter(|r| r.kind == Kind::Instance) {
            let mut c = caller.clone();
            c.region.clone_from(&r.region);
            match self.db.stop(&c, &r.id) {
                Ok(_) | Err(DbError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Resumes the project: every key its resources use is tested first,
    /// and resume fails naming the key while one cannot be used; then its
    /// instances start.
    pub fn resume(&self, caller: &Caller, id: &str) -> Result<Project> {
        let p = self.describe(caller, id)?;
        if p.cmek {
            let regions: std::collections::BTreeSet<&str> =
                p.resources.iter().map(|r| r.region.as_str()).collect();
            for region in regions {
                if let Some(k) = p.keys.get(region) {
                    self.test_key(caller, id, region, &k.key_arn)?;
                }
            }
        }
        let _g = self.lock_ops();
        let mut p = self.describe(caller, id)?;
        for r in p.resources.iter().filter(|r| r.kind == Kind::Instance) {
            let mut c = caller.clone();
            c.region.clone_from(&r.region);
            match self.db.start(&c, &r.id) {
                Ok(_) | Err(DbError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        p.paused = false;
        self.save(&p)?;
        Ok(p)
    }

    /// Applies every project's revocation policy: a `stop` project whose
    /// key has been unusable for its set time is paused. Runs on a period.
    pub fn check(&self) -> Result<Vec<String>> {
        let mut paused = Vec::new();
        for p in self.all(None)? {
            let Revocation::Stop { after_seconds } = p.revocation else {
                continue;
            };
            if p.paused || !p.cmek {
                continue;
            }
            for (region, k) in &p.keys {
                let s = self.kms.service_session("disk", region)?;
                let unusable = s.key_unusable(&k.key_arn, None)?;
                let slot = (p.id.clone(), k.key_arn.clone());
                let mut since = self
                    .unusable_since
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let Some(why) = unusable else {
                    since.remove(&slot);
                    continue;
                };
                let first = *since.entry(slot).or_insert_with(std::time::Instant::now);
                drop(since);
                if first.elapsed().as_secs() < after_seconds {
                    continue;
                }
                let Some(account) = atrest_kms::names::AccountId::parse(&p.account) else {
                    continue;
                };
                let owner = Caller::root(account, region);
                tracing::warn!(project = %p.id, key = %k.key_arn, reason = %why, "key unusable: pausing the project (revocation policy stop)");
                self.pause(&owner, &p.id)?;
                paused.push(p.id.clone());
                break;
            }
        }
        Ok(paused)
    }
}
