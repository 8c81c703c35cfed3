//! What the key service stores, and where. Every record is JSON with a
//! version field `v`; every secret in a record is sealed under the root key
//! (see `root.rs`) before it gets here. `docs/design.md` lists the tables.

use atrest_store::{ReadTx, Table, WriteTx};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use uuid::Uuid;

use crate::KmsError;

/// `schema` → format version; `root_check` → the root key's check value.
pub const META: Table = Table::new("kms.meta");
/// account id → [`AccountRecord`].
pub const ACCOUNTS: Table = Table::new("kms.accounts");
/// access key id → [`AccessKeyRecord`].
pub const ACCESS_KEYS: Table = Table::new("kms.access_keys");
/// key id (16 bytes) → [`KeyRecord`].
pub const KEYS: Table = Table::new("kms.keys");
/// region `\0` account `\0` key id (16 bytes) → empty: keys by owner, for ListKeys.
pub const KEYS_BY_OWNER: Table = Table::new("kms.keys_by_owner");
/// key id (16 bytes) ‖ version (u32 BE) → [`VersionRecord`].
pub const VERSIONS: Table = Table::new("kms.key_versions");
/// region `\0` account `\0` alias name → [`AliasRecord`].
pub const ALIASES: Table = Table::new("kms.aliases");
/// due time (ms, u64 BE) ‖ kind (1 byte) ‖ key id (16 bytes) → empty: the
/// lifecycle schedule (automatic rotations `r`, deletions `d`, expiry of
/// imported material `x`).
pub const DUE: Table = Table::new("kms.due");
/// key id (16 bytes) → the key policy document (UTF-8 JSON).
pub const KEY_POLICIES: Table = Table::new("kms.key_policies");
/// account `\0` user name → [`UserRecord`].
pub const USERS: Table = Table::new("kms.users");
/// key id (16 bytes) ‖ grant id → [`GrantRecord`].
pub const GRANTS: Table = Table::new("kms.grants");
/// retiring principal `\0` key id (16 bytes) ‖ grant id → empty.
pub const GRANTS_BY_RETIREE: Table = Table::new("kms.grants_by_retiree");
/// region `\0` account `\0` service → key id (16 bytes): service keys.
pub const SERVICE_KEYS: Table = Table::new("kms.service_keys");

/// The current schema version.
pub const SCHEMA_VERSION: &str = "1";

/// An account.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccountRecord {
    /// Record format version.
    pub v: u32,
    /// The 12-digit id.
    pub id: String,
    /// Creation time, ms since the epoch.
    pub created: i64,
    /// Whether the account may call the admin API.
    pub admin: bool,
    /// Whether its use of keys is suspended (K13).
    #[serde(default)]
    pub suspended: bool,
    /// Whether this is atrest's own service account (where service
    /// principals live).
    #[serde(default)]
    pub service: bool,
}

/// A user inside an account, with identity policies.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserRecord {
    /// Record format version.
    pub v: u32,
    /// The account.
    pub account: String,
    /// The user name.
    pub name: String,
    /// Creation time, ms.
    pub created: i64,
    /// Identity policies by name (JSON documents).
    pub policies: std::collections::BTreeMap<String, String>,
    /// Bumped on every policy change (cache key).
    pub policy_version: u64,
}

/// A grant on a key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GrantRecord {
    /// Record format version.
    pub v: u32,
    /// Grant id (64 hex characters).
    pub id: String,
    /// The key.
    pub key_id: Uuid,
    /// Optional name (idempotency of CreateGrant).
    pub name: Option<String>,
    /// The principal the grant lets act.
    pub grantee: String,
    /// The principal that may retire it.
    pub retiring: Option<String>,
    /// Operations it allows (AWS names).
    pub operations: Vec<String>,
    /// EncryptionContextEquals constraint.
    pub context_equals: Option<std::collections::BTreeMap<String, String>>,
    /// EncryptionContextSubset constraint.
    pub context_subset: Option<std::collections::BTreeMap<String, String>>,
    /// The account whose principal created it.
    pub issuing_account: String,
    /// Creation time, ms.
    pub created: i64,
}

/// An access key. The secret is sealed under the root key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessKeyRecord {
    /// Record format version.
    pub v: u32,
    /// The access key id.
    pub id: String,
    /// The owning account.
    pub account: String,
    /// The user it belongs to; `None` for the account's root.
    #[serde(default)]
    pub user: Option<String>,
    /// Creation time, ms since the epoch.
    pub created: i64,
    /// Whether the key may sign requests.
    pub active: bool,
    /// The secret access key, sealed (base64).
    pub sealed_secret: String,
    /// The last authenticated use, as last flushed from memory: at most one
    /// flush interval old (see `service/last_used.rs`). Absent in records
    /// of earlier releases, and until a first use is flushed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used: Option<LastUsedRecord>,
}

/// When and where an access key was last used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastUsedRecord {
    /// When, ms since the epoch.
    pub time: i64,
    /// Through which service: `kms` (the KMS API), `atrest` (the REST API)
    /// or `nbd` (a disk over NBD, by its pre-shared key).
    pub service: String,
    /// The region of the request.
    pub region: String,
}

/// Key states that exist in the store (a deleted key has no record).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyState {
    /// Usable.
    Enabled,
    /// Usable for nothing but management.
    Disabled,
    /// Scheduled for deletion.
    PendingDeletion,
    /// An EXTERNAL key without key material.
    PendingImport,
}

impl KeyState {
    /// AWS's name for the state.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enabled => "Enabled",
            Self::Disabled => "Disabled",
            Self::PendingDeletion => "PendingDeletion",
            Self::PendingImport => "PendingImport",
        }
    }
}

/// An automatic-rotation schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rotation {
    /// Days between rotations (90 to 2560).
    pub period_days: u32,
    /// When the next rotation is due, ms since the epoch.
    pub next: i64,
}

/// A KMS key's metadata. Its material lives in [`VersionRecord`]s.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Record format version.
    pub v: u32,
    /// Key id.
    pub id: Uuid,
    /// Owning account.
    pub account: String,
    /// Region.
    pub region: String,
    /// Creation time, ms.
    pub created: i64,
    /// Description.
    pub description: String,
    /// State.
    pub state: KeyState,
    /// When deletion happens, if pending, ms.
    pub deletion_date: Option<i64>,
    /// The version new ciphertexts use.
    pub current_version: u32,
    /// The material id of the current version.
    pub current_material_id: String,
    /// Automatic rotation, if enabled.
    pub rotation: Option<Rotation>,
    /// On-demand rotations so far (AWS allows 25 per key).
    pub on_demand_rotations: u32,
    /// Tags, sorted by key.
    pub tags: Vec<(String, String)>,
    /// Where the material comes from.
    #[serde(default)]
    pub origin: KeyOrigin,
    /// Who manages the key: the customer, or atrest (service keys).
    #[serde(default)]
    pub manager: KeyManager,
    /// For a service key: the service it belongs to.
    #[serde(default)]
    pub service: Option<String>,
    /// Bumped on every PutKeyPolicy (cache key of the parsed policy).
    #[serde(default)]
    pub policy_version: u64,
    /// For EXTERNAL keys: the imported material's state.
    #[serde(default)]
    pub import: Option<ImportState>,
    /// The state to return to when imported material arrives (PendingImport keys).
    #[serde(default)]
    pub state_after_import: Option<KeyState>,
    /// For EXTERNAL_KMS keys: the key in another KMS that wraps every data
    /// key of this key's ciphertexts.
    #[serde(default)]
    pub external: Option<ExternalKey>,
}

/// A key in another KMS, reached through a configured key provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalKey {
    /// The provider's name (shown as the custom key store id).
    pub store: String,
    /// The remote key (shown as the XKS key id).
    pub key: String,
}

/// Where a key's material comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyOrigin {
    /// Generated by atrest.
    #[default]
    AwsKms,
    /// Imported by the customer (BYOK).
    External,
    /// Held in another KMS (a key provider); atrest never has it.
    ExternalKms,
}

impl KeyOrigin {
    /// AWS's name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AwsKms => "AWS_KMS",
            Self::External => "EXTERNAL",
            Self::ExternalKms => "EXTERNAL_KMS",
        }
    }
}

/// Who manages a key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyManager {
    /// The customer.
    #[default]
    Customer,
    /// atrest (a service key); shown as `AWS`, as AWS managed keys are.
    Service,
}

/// Imported key material: what identifies it, and when it expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportState {
    /// HMAC of the material under a key derived from the root key: lets a
    /// re-import be checked against the first without keeping the material.
    pub fingerprint: String,
    /// When the material expires, ms; `None` if it does not.
    pub valid_to: Option<i64>,
}

/// How a key version came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VersionOrigin {
    /// Created with the key.
    Initial,
    /// Created by automatic rotation.
    Automatic,
    /// Created by RotateKeyOnDemand.
    OnDemand,
}

/// One version of a key's material, sealed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionRecord {
    /// Record format version.
    pub v: u32,
    /// Version number, from 1.
    pub version: u32,
    /// Creation time, ms.
    pub created: i64,
    /// How it was created.
    pub origin: VersionOrigin,
    /// A random, public identifier of this material (hex).
    pub material_id: String,
    /// The 32-byte material, sealed under the root key (base64).
    pub sealed: String,
}

/// An alias.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AliasRecord {
    /// Record format version.
    pub v: u32,
    /// The key it points to.
    pub target: Uuid,
    /// Creation time, ms.
    pub created: i64,
    /// Last update, ms.
    pub updated: i64,
}

/// Decodes a stored record; a record that does not parse is corruption, the
/// server's fault.
pub fn decode<T: DeserializeOwned>(table: Table, bytes: &[u8]) -> Result<T, KmsError> {
    serde_json::from_slice(bytes)
        .map_err(|e| KmsError::Internal(format!("corrupt record in {}: {e}", table.name())))
}

/// Encodes a record.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, KmsError> {
    serde_json::to_vec(value).map_err(|e| KmsError::Internal(format!("encoding record: {e}")))
}

/// Reads and decodes one record.
pub fn get<T: DeserializeOwned>(
    tx: &(impl ReadTx + ?Sized),
    table: Table,
    key: &[u8],
) -> Result<Option<T>, KmsError> {
    tx.get(table, key)?.map(|b| decode(table, &b)).transpose()
}

/// Decoded records of one table, reused while their stored bytes stay the
/// same. Every hit compares the bytes just read with those the record was
/// decoded from, so no write needs to invalidate anything: a changed record
/// reads as other bytes and is decoded again. It saves the JSON decoding
/// (about 2 µs for a key record) on every cryptographic request.
pub(crate) struct DecodeCache<T> {
    table: Table,
    /// Record key -> (the stored bytes, the record decoded from them).
    entries: std::sync::RwLock<std::collections::HashMap<Vec<u8>, Decoded<T>>>,
}

type Decoded<T> = (Vec<u8>, std::sync::Arc<T>);

impl<T: DeserializeOwned> DecodeCache<T> {
    /// Entries kept before the cache starts again from empty.
    const LIMIT: usize = 100_000;

    pub(crate) fn new(table: Table) -> Self {
        Self {
            table,
            entries: std::sync::RwLock::default(),
        }
    }

    /// [`get`] through the cache, shared.
    pub(crate) fn get_shared(
        &self,
        tx: &(impl ReadTx + ?Sized),
        key: &[u8],
    ) -> Result<Option<std::sync::Arc<T>>, KmsError> {
        let Some(bytes) = tx.get(self.table, key)? else {
            return Ok(None);
        };
        {
            let entries = self
                .entries
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some((seen, value)) = entries.get(key)
                && *seen == bytes
            {
                return Ok(Some(std::sync::Arc::clone(value)));
            }
        }
        let value = std::sync::Arc::new(decode::<T>(self.table, &bytes)?);
        let mut entries = self
            .entries
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if entries.len() >= Self::LIMIT {
            entries.clear();
        }
        entries.insert(key.to_vec(), (bytes, std::sync::Arc::clone(&value)));
        Ok(Some(value))
    }
}

impl<T: DeserializeOwned + Clone> DecodeCache<T> {
    /// [`get`] through the cache.
    pub(crate) fn get(
        &self,
        tx: &(impl ReadTx + ?Sized),
        key: &[u8],
    ) -> Result<Option<T>, KmsError> {
        Ok(self.get_shared(tx, key)?.map(|v| T::clone(&v)))
    }
}

/// Encodes and writes one record.
pub fn put<T: Serialize>(
    tx: &mut (impl WriteTx + ?Sized),
    table: Table,
    key: &[u8],
    value: &T,
) -> Result<(), KmsError> {
    tx.put(table, key, &encode(value)?)?;
    Ok(())
}

/// `region \0 account \0`.
#[must_use]
pub fn owner_prefix(region: &str, account: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(region.len() + account.len() + 2);
    k.extend_from_slice(region.as_bytes());
    k.push(0);
    k.extend_from_slice(account.as_bytes());
    k.push(0);
    k
}

/// The [`KEYS_BY_OWNER`] key of a key.
#[must_use]
pub fn owner_key(region: &str, account: &str, id: &Uuid) -> Vec<u8> {
    let mut k = owner_prefix(region, account);
    k.extend_from_slice(id.as_bytes());
    k
}

/// The [`VERSIONS`] key of a key version.
#[must_use]
pub fn version_key(id: &Uuid, version: u32) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..16].copy_from_slice(id.as_bytes());
    k[16..].copy_from_slice(&version.to_be_bytes());
    k
}

/// The [`USERS`] key of a user.
#[must_use]
pub fn user_key(account: &str, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(account.len() + name.len() + 1);
    k.extend_from_slice(account.as_bytes());
    k.push(0);
    k.extend_from_slice(name.as_bytes());
    k
}

/// The [`GRANTS`] key of a grant.
#[must_use]
pub fn grant_key(key_id: &Uuid, grant_id: &str) -> Vec<u8> {
    let mut k = key_id.as_bytes().to_vec();
    k.extend_from_slice(grant_id.as_bytes());
    k
}

/// The [`SERVICE_KEYS`] key of a service key.
#[must_use]
pub fn service_key_key(region: &str, account: &str, service: &str) -> Vec<u8> {
    let mut k = owner_prefix(region, account);
    k.extend_from_slice(service.as_bytes());
    k
}

/// The [`ALIASES`] key of an alias.
#[must_use]
pub fn alias_key(region: &str, account: &str, name: &str) -> Vec<u8> {
    let mut k = owner_prefix(region, account);
    k.extend_from_slice(name.as_bytes());
    k
}

/// Kinds of [`DUE`] entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DueKind {
    /// An automatic rotation.
    Rotation = b'r' as isize,
    /// A deletion at the end of the waiting period.
    Deletion = b'd' as isize,
    /// Expiry of imported key material.
    Expiry = b'x' as isize,
}

/// The [`DUE`] key of a scheduled event.
#[must_use]
pub fn due_key(at_ms: i64, kind: DueKind, id: &Uuid) -> [u8; 25] {
    let mut k = [0u8; 25];
    k[..8].copy_from_slice(&u64::try_from(at_ms.max(0)).unwrap_or(0).to_be_bytes());
    k[8] = kind as u8;
    k[9..].copy_from_slice(id.as_bytes());
    k
}

/// Parses a [`DUE`] key.
#[must_use]
pub fn parse_due_key(k: &[u8]) -> Option<(i64, DueKind, Uuid)> {
    if k.len() != 25 {
        return None;
    }
    let at = i64::try_from(u64::from_be_bytes(k[..8].try_into().ok()?)).ok()?;
    let kind = match k[8] {
        b'r' => DueKind::Rotation,
        b'd' => DueKind::Deletion,
        b'x' => DueKind::Expiry,
        _ => return None,
    };
    Some((at, kind, Uuid::from_bytes(k[9..].try_into().ok()?)))
}
