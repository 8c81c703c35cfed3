//! The key service: every operation, over a [`Store`], sealed by a [`RootKey`].

mod accounts;
mod aliases;
mod asymmetric;
mod audit;
mod authz;
mod call;
mod crypto;
mod data_key_pair;
mod external;
mod grants;
mod import;
mod keys;
mod last_used;
mod lifecycle;
mod local_provider;
mod mac;
mod multi_region;
mod pagination;
mod policies;
mod rotation;
mod services;
mod tags;
mod users;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use atrest_crypto::{Aes256Key, SecretBytes};
use atrest_store::{ReadTx, Store, WriteTx};
use base64::Engine;
use uuid::Uuid;

pub use accounts::{
    AccessKeyInfo, AccessKeyLastUsed, AdminBootstrap, CachedAccessKey, NewAccessKey,
};
pub use audit::{AuditSink, audit_time};
pub use call::{AuditFacts, Call, Caller, RequestMeta, new_request_id};
pub use external::{
    CustomKeyStore, ExternalHealth, ExternalKeyStatus, ExternalReport, Providers,
    XksProxyConfiguration,
};
pub use last_used::{
    AccessKeyUse, DEFAULT_FLUSH_INTERVAL as DEFAULT_ACCESS_KEY_USE_FLUSH_INTERVAL,
};
pub use lifecycle::LifecycleReport;
pub use local_provider::LocalKeyService;
pub use services::{KeyUnusable, ServiceSession};
pub use users::UserInfo;

use crate::KmsError;
use crate::clock::{Clock, to_millis};
use crate::names::{KeyRef, key_arn, valid_region};
use crate::records::{self, KeyRecord, KeyState, VersionRecord};
use crate::root::RootKey;

/// The HKDF `info` of the audit trail's key (see [`RootKey::derive`]).
pub const AUDIT_KEY_INFO: &[u8] = b"atrest/audit/v1";
/// The derivation label of the key nodes sharing a store authenticate
/// their calls to each other with (every node has the same root).
pub const CLUSTER_KEY_INFO: &[u8] = b"atrest/cluster/v1";

/// The key service.
pub struct KeyService {
    store: Arc<dyn Store>,
    root: RootKey,
    regions: Vec<String>,
    clock: Arc<dyn Clock>,
    /// Unsealed key material by (key id, version). Material never changes for
    /// a version, so entries are only removed when a key is deleted.
    materials: RwLock<HashMap<(Uuid, u32), Arc<Material>>>,
    /// Unsealed secret access keys, with their state, by access key id.
    /// Every change of a key removes its entry after committing (see
    /// `accounts.rs`, `forget_access_key`).
    secrets: RwLock<HashMap<String, Arc<CachedAccessKey>>>,
    /// Bumped (under the `secrets` lock) whenever an entry is removed, so
    /// that a lookup which read the store before a change does not put the
    /// old state back after it.
    secrets_generation: std::sync::atomic::AtomicU64,
    /// Last use of access keys, in memory until flushed.
    key_use: last_used::UseTracker,
    /// Parsed key and identity policies.
    policies: authz::PolicyCache,
    /// Decoded key records (see [`records::DecodeCache`]).
    key_records: records::DecodeCache<KeyRecord>,
    /// Decoded users, for the identity policies of every request they send.
    user_records: records::DecodeCache<records::UserRecord>,
    /// Accounts whose use of keys is suspended (mirrors the store).
    suspended: RwLock<std::collections::HashSet<String>>,
    /// Set when another node changed an account: `suspended` is read
    /// again from the store before it is used.
    suspended_stale: std::sync::atomic::AtomicBool,
    /// Where audit records go (set once by the server).
    audit: OnceLock<Arc<dyn AuditSink>>,
    /// Keys derived from the root key for purposes other than sealing.
    derived: DerivedKeys,
    /// Key providers for keys held in another KMS (set by the server).
    providers: RwLock<Arc<Providers>>,
}

/// Keys derived from the root key once at start.
struct DerivedKeys {
    /// MACs grant tokens.
    grant_tokens: Aes256Key,
    /// Seals import tokens (which carry a wrapping private key).
    import_tokens: Aes256Key,
    /// Fingerprints imported key material.
    import_fingerprint: Aes256Key,
}

impl core::fmt::Debug for KeyService {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("KeyService")
            .field("regions", &self.regions)
            .finish_non_exhaustive()
    }
}

/// One version of a key's material, unsealed.
#[allow(
    dead_code,
    reason = "secret and public: read by the asymmetric and MAC operations"
)]
pub(crate) struct Material {
    /// The AES key of a symmetric key's version; for the other specs, the
    /// bytes are in `secret` only.
    aes: Option<Aes256Key>,
    /// The material as sealed: see [`VersionRecord::sealed`].
    pub(crate) secret: SecretBytes,
    /// For an asymmetric key: the public key, DER SubjectPublicKeyInfo.
    pub(crate) public: Option<Vec<u8>>,
    pub(crate) id: String,
    /// For an asymmetric key: the private key, parsed on first use (RSA
    /// parsing costs a modular check; see `asymmetric.rs`).
    pub(crate) parsed: OnceLock<atrest_crypto::asymmetric::PrivateKey>,
}

impl Material {
    /// The AES key of a symmetric key's version.
    pub(crate) fn aes(&self) -> Result<&Aes256Key, KmsError> {
        self.aes
            .as_ref()
            .ok_or_else(|| KmsError::Internal("symmetric material expected".into()))
    }
}

/// Generates the material of a new version of a key of `spec`: its secret,
/// and its public key if it has one.
pub(crate) fn generate_material(
    spec: records::KeySpec,
) -> Result<(SecretBytes, Option<Vec<u8>>), KmsError> {
    if let Some(pair) = spec.key_pair() {
        let private = atrest_crypto::keypair::generate(pair)?;
        let public = atrest_crypto::keypair::public_key_der(pair, private.expose())?;
        return Ok((private, Some(public)));
    }
    let len = spec.hmac_key_len().unwrap_or(32);
    Ok((SecretBytes::random(len)?, None))
}

/// AAD for sealing a key version's material.
pub(crate) fn material_aad(id: &Uuid, version: u32) -> Vec<u8> {
    let mut aad = b"atrest/kms/material/v1".to_vec();
    aad.extend_from_slice(id.as_bytes());
    aad.extend_from_slice(&version.to_be_bytes());
    aad
}

fn read_lock<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write_lock<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl KeyService {
    /// Opens the key service over `store`. The store is stamped with the root
    /// key's check value on first use; a store stamped by another root key is
    /// refused.
    pub fn open(
        store: Arc<dyn Store>,
        root: RootKey,
        regions: Vec<String>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, KmsError> {
        if regions.is_empty() {
            return Err(KmsError::Validation(
                "at least one region must be served".into(),
            ));
        }
        if let Some(bad) = regions.iter().find(|r| !valid_region(r)) {
            return Err(KmsError::Validation(format!(
                "'{bad}' is not a valid region name (lower-case letters, digits and '-', starting with a letter)"
            )));
        }
        {
            let mut tx = store.write()?;
            match tx.get(records::META, b"root_check")? {
                Some(stored) if stored != root.check_value().as_bytes() => {
                    return Err(KmsError::Internal(
                        "the metadata store was sealed by a different root key".into(),
                    ));
                }
                Some(_) => {}
                None => {
                    tx.put(records::META, b"root_check", root.check_value().as_bytes())?;
                    tx.put(records::META, b"schema", records::SCHEMA_VERSION.as_bytes())?;
                }
            }
            match tx.get(records::META, b"schema")? {
                Some(v) if v == records::SCHEMA_VERSION.as_bytes() => {}
                other => {
                    return Err(KmsError::Internal(format!(
                        "unsupported metadata schema {:?}",
                        other.map(|v| String::from_utf8_lossy(&v).into_owned())
                    )));
                }
            }
            tx.commit()?;
        }
        let suspended = {
            let tx = store.read()?;
            let mut set = std::collections::HashSet::new();
            for (_, v) in tx.scan(records::ACCOUNTS, b"", None, usize::MAX)? {
                let a: records::AccountRecord = records::decode(records::ACCOUNTS, &v)?;
                if a.suspended {
                    set.insert(a.id);
                }
            }
            set
        };
        let derived = DerivedKeys {
            grant_tokens: root.derive(b"atrest/kms/grant-token/v1")?,
            import_tokens: root.derive(b"atrest/kms/import-token/v1")?,
            import_fingerprint: root.derive(b"atrest/kms/import-fingerprint/v1")?,
        };
        Ok(Self {
            store,
            root,
            regions,
            clock,
            materials: RwLock::new(HashMap::new()),
            secrets: RwLock::new(HashMap::new()),
            secrets_generation: std::sync::atomic::AtomicU64::new(0),
            key_use: last_used::UseTracker::default(),
            policies: authz::PolicyCache::default(),
            key_records: records::DecodeCache::new(records::KEYS),
            user_records: records::DecodeCache::new(records::USERS),
            suspended: RwLock::new(suspended),
            suspended_stale: std::sync::atomic::AtomicBool::new(false),
            audit: OnceLock::new(),
            derived,
            providers: RwLock::new(Arc::new(Providers::default())),
        })
    }

    /// Follows the changes other nodes commit to a shared store: what this
    /// service keeps in memory of access keys and accounts is dropped as
    /// soon as the store reports a change (see `Store::watch`). Call once,
    /// at start; a no-op on the embedded store, which has no other writer.
    pub fn follow_store(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        self.store
            .watch(Arc::new(move |change: &atrest_store::Change<'_>| {
                let Some(me) = me.upgrade() else { return };
                match *change {
                    atrest_store::Change::Row { table, key }
                        if table == records::ACCESS_KEYS.name() =>
                    {
                        me.forget_access_key(&String::from_utf8_lossy(key));
                    }
                    atrest_store::Change::Row { table, .. }
                        if table == records::ACCOUNTS.name() =>
                    {
                        me.forget_accounts();
                    }
                    atrest_store::Change::Row { .. } => {}
                    atrest_store::Change::All => me.forget_accounts(),
                }
            }));
    }

    /// Drops every cached access key and marks the suspended accounts to
    /// be read again.
    fn forget_accounts(&self) {
        let mut cached = write_lock(&self.secrets);
        cached.clear();
        self.secrets_generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.suspended_stale
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Catches up with changes other nodes committed to a shared store (a
    /// no-op on the embedded store).
    pub fn catch_up(&self) -> Result<(), KmsError> {
        Ok(self.store.refresh()?)
    }

    /// Whether the store is this process's alone (the embedded default).
    #[must_use]
    pub fn store_is_local(&self) -> bool {
        !self.store.is_shared()
    }

    /// Whether this node's view of a shared store is confirmed current
    /// (always, on the embedded store).
    #[must_use]
    pub fn store_is_current(&self) -> bool {
        self.store.is_current()
    }

    /// Regions served.
    #[must_use]
    pub fn regions(&self) -> &[String] {
        &self.regions
    }

    /// The clock the service runs on.
    #[must_use]
    pub fn now(&self) -> time::OffsetDateTime {
        self.clock.now()
    }

    fn now_ms(&self) -> i64 {
        to_millis(self.clock.now())
    }

    fn arn(key: &KeyRecord) -> String {
        match &key.multi_region {
            Some(m) => crate::names::mrk_arn(&key.region, &key.account, &m.id),
            None => key_arn(&key.region, &key.account, &key.id),
        }
    }

    /// Sends audit records to `sink` from now on (set once, at start).
    pub fn set_audit_sink(&self, sink: Arc<dyn AuditSink>) {
        let _ = self.audit.set(sink);
    }

    /// The key that chains the audit trail, derived from the root key.
    pub fn audit_key(&self) -> Result<Aes256Key, KmsError> {
        Ok(self.root.derive(AUDIT_KEY_INFO)?)
    }

    /// The key nodes authenticate their internal calls to each other with,
    /// derived from the root key (so every node of a cluster has it).
    pub fn cluster_key(&self) -> Result<Aes256Key, KmsError> {
        Ok(self.root.derive(CLUSTER_KEY_INFO)?)
    }

    /// Finds the key a `KeyId` names, for the caller, in the caller's region.
    fn resolve(
        &self,
        tx: &dyn ReadTx,
        call: &Call<'_>,
        key_ref: &KeyRef,
    ) -> Result<KeyRecord, KmsError> {
        let caller = call.caller;
        let not_found = |region: &str, account: &str, id: &Uuid| {
            KmsError::NotFound(format!(
                "Key '{}' does not exist",
                key_arn(region, account, id)
            ))
        };
        let (id, expected_account) = match key_ref {
            KeyRef::Id(id) => (*id, caller.account.as_str().to_owned()),
            KeyRef::KeyArn {
                region,
                account,
                id,
            } => {
                if *region != caller.region {
                    return Err(not_found(region, account, id));
                }
                (*id, account.clone())
            }
            KeyRef::Alias(name) => {
                return self.resolve_alias(tx, &caller.region, caller.account.as_str(), name);
            }
            KeyRef::MultiRegionId(id) => {
                return self.resolve_multi_region(tx, &caller.region, caller.account.as_str(), id);
            }
            KeyRef::MultiRegionArn {
                region,
                account,
                id,
            } => {
                if *region != caller.region {
                    return Err(KmsError::NotFound(format!(
                        "Key '{}' does not exist",
                        crate::names::mrk_arn(region, account, id)
                    )));
                }
                return self.resolve_multi_region(tx, region, account, id);
            }
            KeyRef::AliasArn {
                region,
                account,
                name,
            } => {
                if *region != caller.region || *account != caller.account.as_str() {
                    return Err(KmsError::NotFound(format!(
                        "Alias {} is not found.",
                        crate::names::alias_arn(region, account, name)
                    )));
                }
                return self.resolve_alias(tx, region, account, name);
            }
        };
        let key: Option<KeyRecord> = self.key_records.get(tx, id.as_bytes())?;
        match key {
            Some(k) if k.region == caller.region && k.account == expected_account => Ok(k),
            _ => Err(not_found(&caller.region, &expected_account, &id)),
        }
    }

    /// Finds the record of the multi-Region key `mrk` in `region`, owned
    /// by `account`.
    fn resolve_multi_region(
        &self,
        tx: &dyn ReadTx,
        region: &str,
        account: &str,
        mrk: &Uuid,
    ) -> Result<KeyRecord, KmsError> {
        self.multi_region_record(tx, mrk, region)?
            .filter(|k| k.account == account)
            .ok_or_else(|| {
                KmsError::NotFound(format!(
                    "Key '{}' does not exist",
                    crate::names::mrk_arn(region, account, mrk)
                ))
            })
    }

    /// The record of the multi-Region key `mrk` in `region`, if it has one.
    fn multi_region_record(
        &self,
        tx: &dyn ReadTx,
        mrk: &Uuid,
        region: &str,
    ) -> Result<Option<KeyRecord>, KmsError> {
        let Some(id) = tx.get(
            records::MULTI_REGION_KEYS,
            &records::multi_region_key(mrk, region),
        )?
        else {
            return Ok(None);
        };
        let id = Uuid::from_slice(&id)
            .map_err(|_| KmsError::Internal("corrupt multi-Region key index".into()))?;
        self.key_records.get(tx, id.as_bytes())
    }

    fn resolve_alias(
        &self,
        tx: &dyn ReadTx,
        region: &str,
        account: &str,
        name: &str,
    ) -> Result<KeyRecord, KmsError> {
        let not_found = || {
            KmsError::NotFound(format!(
                "Alias {} is not found.",
                crate::names::alias_arn(region, account, name)
            ))
        };
        let alias: records::AliasRecord = records::get(
            tx,
            records::ALIASES,
            &records::alias_key(region, account, name),
        )?
        .ok_or_else(not_found)?;
        let key: Option<KeyRecord> = self.key_records.get(tx, alias.target.as_bytes())?;
        key.ok_or_else(not_found)
    }

    /// Resolves a key for a management operation, which takes only a key id
    /// or key ARN, never an alias.
    fn resolve_for_management(
        &self,
        tx: &dyn ReadTx,
        call: &Call<'_>,
        key_id: Option<String>,
    ) -> Result<KeyRecord, KmsError> {
        let raw = crate::api::required(key_id, "keyId")?;
        let key_ref = KeyRef::parse(&raw)?;
        if key_ref.is_alias() {
            return Err(KmsError::NotFound(format!(
                "Invalid keyId '{raw}': this operation takes a key ID or key ARN, not an alias"
            )));
        }
        self.resolve(tx, call, &key_ref)
    }

    /// Fails unless `key` can encrypt and decrypt now.
    fn require_enabled(key: &KeyRecord) -> Result<(), KmsError> {
        match key.state {
            KeyState::Enabled => Ok(()),
            KeyState::Disabled => Err(KmsError::Disabled(format!(
                "{} is disabled.",
                Self::arn(key)
            ))),
            KeyState::PendingDeletion | KeyState::PendingReplicaDeletion => {
                Err(Self::pending_deletion(key))
            }
            KeyState::PendingImport => Err(Self::pending_import(key)),
        }
    }

    /// The key a data-plane operation names by `member`, authorized for
    /// `action` with `facts` (the alias it was named by is added), Enabled,
    /// of a kind `fits` accepts, with neither its account nor the caller's
    /// suspended; and its current material. Encrypt, GenerateDataKey*,
    /// GenerateDataKeyPair*, Sign, Verify, GenerateMac and the others share
    /// this order of checks, which the key-state and authorization matrices
    /// assert.
    #[allow(
        clippy::too_many_arguments,
        reason = "every data-plane operation's checks in one place"
    )]
    pub(crate) fn usable_key(
        &self,
        tx: &dyn ReadTx,
        call: &Call<'_>,
        key_id: Option<String>,
        member: &str,
        action: &str,
        facts: authz::Facts<'_>,
        fits: impl FnOnce(&KeyRecord) -> Result<(), KmsError>,
    ) -> Result<(KeyRecord, Arc<Material>), KmsError> {
        let key_ref = KeyRef::parse(&crate::api::required(key_id, member)?)?;
        let key = self.resolve(tx, call, &key_ref)?;
        let alias = key_ref.alias_name();
        self.authorize_key(
            tx,
            call,
            action,
            &key,
            &authz::Facts {
                request_alias: alias.as_deref(),
                ..facts
            },
        )?;
        Self::require_enabled(&key)?;
        fits(&key)?;
        self.require_not_suspended(tx, &key.account)?;
        self.require_not_suspended(tx, call.caller.account.as_str())?;
        let material = self
            .material(tx, &key, key.current_version)?
            .ok_or_else(|| {
                KmsError::Internal(format!("current version of {} is missing", Self::arn(&key)))
            })?;
        Ok((key, material))
    }

    /// Fails unless `key` has `usage` (and, for ENCRYPT_DECRYPT, the
    /// SYMMETRIC_DEFAULT spec when `symmetric`): AWS's
    /// `InvalidKeyUsageException` for a key of the wrong kind.
    pub(crate) fn require_usage(
        key: &KeyRecord,
        usage: records::KeyUsage,
        symmetric: bool,
        operation: &str,
    ) -> Result<(), KmsError> {
        let spec_ok = !symmetric || key.spec == records::KeySpec::SymmetricDefault;
        if key.usage != usage || !spec_ok {
            return Err(KmsError::InvalidKeyUsage(format!(
                "{} key usage is {} and key spec is {}, which is not valid for {operation}.",
                Self::arn(key),
                key.usage.as_str(),
                key.spec.as_str()
            )));
        }
        Ok(())
    }

    fn pending_import(key: &KeyRecord) -> KmsError {
        KmsError::InvalidState(format!("{} is pending import.", Self::arn(key)))
    }

    fn pending_deletion(key: &KeyRecord) -> KmsError {
        if key.state == KeyState::PendingReplicaDeletion {
            return KmsError::InvalidState(format!(
                "{} is pending replica deletion.",
                Self::arn(key)
            ));
        }
        KmsError::InvalidState(format!("{} is pending deletion.", Self::arn(key)))
    }

    /// Fails if `key` is pending deletion (management operations that AWS
    /// allows on disabled keys but not on keys being deleted), or, as a
    /// primary key, waiting for its replicas to be deleted first.
    fn require_not_pending_deletion(key: &KeyRecord) -> Result<(), KmsError> {
        if matches!(
            key.state,
            KeyState::PendingDeletion | KeyState::PendingReplicaDeletion
        ) {
            return Err(Self::pending_deletion(key));
        }
        Ok(())
    }

    /// Fails for a service key: customers may not change its lifecycle or
    /// policy (K2).
    fn require_customer_managed(key: &KeyRecord, what: &str) -> Result<(), KmsError> {
        if key.manager == records::KeyManager::Service {
            return Err(KmsError::UnsupportedOperation(format!(
                "{} is a service key managed by atrest; customers cannot {what} it.",
                Self::arn(key)
            )));
        }
        Ok(())
    }

    /// The unsealed material of one version of `key`, or `None` if the key
    /// has no such version. Cached after the first unseal.
    fn material(
        &self,
        tx: &dyn ReadTx,
        key: &KeyRecord,
        version: u32,
    ) -> Result<Option<Arc<Material>>, KmsError> {
        if let Some(m) = read_lock(&self.materials).get(&(key.id, version)) {
            return Ok(Some(Arc::clone(m)));
        }
        let rec: Option<VersionRecord> = records::get(
            tx,
            records::VERSIONS,
            &records::version_key(&key.id, version),
        )?;
        let Some(rec) = rec else {
            return Ok(None);
        };
        if rec.import.as_ref().is_some_and(|i| i.deleted) {
            return Err(KmsError::InvalidState(format!(
                "Key material {} of {} was deleted or expired and is pending import.",
                rec.material_id,
                Self::arn(key)
            )));
        }
        let secret = self
            .root
            .open(&material_aad(&key.id, version), &rec.sealed)
            .map_err(|_| {
                KmsError::Internal(format!(
                    "key material of {} version {version} does not unseal",
                    Self::arn(key)
                ))
            })?;
        let public = rec
            .public
            .as_deref()
            .map(|p| {
                base64::engine::general_purpose::STANDARD
                    .decode(p)
                    .map_err(|_| {
                        KmsError::Internal(format!(
                            "public key of {} version {version} is not base64",
                            Self::arn(key)
                        ))
                    })
            })
            .transpose()?;
        let aes = match key.spec {
            records::KeySpec::SymmetricDefault => Some(Aes256Key::from_secret_bytes(&secret)?),
            _ => None,
        };
        let m = Arc::new(Material {
            aes,
            secret,
            public,
            id: rec.material_id,
            parsed: OnceLock::new(),
        });
        write_lock(&self.materials).insert((key.id, version), Arc::clone(&m));
        Ok(Some(m))
    }

    /// Creates, seals and stores a new version of the material of key `id`
    /// of `spec`.
    fn add_version(
        &self,
        tx: &mut dyn WriteTx,
        id: &Uuid,
        spec: records::KeySpec,
        version: u32,
        origin: records::VersionOrigin,
        now_ms: i64,
    ) -> Result<String, KmsError> {
        let (material, public) = generate_material(spec)?;
        let material_id = hex::encode(atrest_crypto::rand::array::<32>()?);
        let sealed = self
            .root
            .seal(&material_aad(id, version), material.expose())?;
        let public = public.map(|p| base64::engine::general_purpose::STANDARD.encode(p));
        records::put(
            tx,
            records::VERSIONS,
            &records::version_key(id, version),
            &VersionRecord {
                v: 1,
                version,
                created: now_ms,
                origin,
                material_id: material_id.clone(),
                sealed,
                public,
                import: None,
            },
        )?;
        Ok(material_id)
    }

    /// Drops cached material of a deleted key.
    fn forget_key(&self, id: &Uuid) {
        write_lock(&self.materials).retain(|(k, _), _| k != id);
    }

    /// The material of every version of a key, for the secrecy tests only.
    #[cfg(feature = "test-support")]
    pub fn material_for_tests(&self, key_id: &Uuid) -> Result<Vec<Vec<u8>>, KmsError> {
        let tx = self.store.read()?;
        let key: KeyRecord = records::get(&*tx, records::KEYS, key_id.as_bytes())?
            .ok_or_else(|| KmsError::NotFound("no such key".into()))?;
        let mut out = Vec::new();
        for v in 1..=key.current_version {
            if let Ok(Some(m)) = self.material(&*tx, &key, v) {
                out.push(m.secret.expose().to_vec());
            }
        }
        Ok(out)
    }

    /// The root key, for the secrecy tests only.
    #[cfg(feature = "test-support")]
    #[must_use]
    pub fn root_key_for_tests(&self) -> Vec<u8> {
        self.root.expose_for_tests().to_vec()
    }
}
