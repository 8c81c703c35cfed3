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
/// multi-Region key id (16 bytes) ‖ region → key id (16 bytes): the record
/// of a multi-Region key in each region that holds it (see [`MultiRegion`]).
pub const MULTI_REGION_KEYS: Table = Table::new("kms.multi_region_keys");

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
    /// A multi-Region primary key scheduled for deletion, waiting for its
    /// replicas to be deleted before its own waiting period starts.
    PendingReplicaDeletion,
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
            Self::PendingReplicaDeletion => "PendingReplicaDeletion",
        }
    }
}

/// AWS's key specs. A key's spec never changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeySpec {
    /// AES-256-GCM (atrest's blob format).
    #[default]
    SymmetricDefault,
    /// RSA, 2048 bits.
    Rsa2048,
    /// RSA, 3072 bits.
    Rsa3072,
    /// RSA, 4096 bits.
    Rsa4096,
    /// NIST P-256.
    EccNistP256,
    /// NIST P-384.
    EccNistP384,
    /// NIST P-521.
    EccNistP521,
    /// secp256k1.
    EccSecgP256k1,
    /// Ed25519.
    EccNistEdwards25519,
    /// HMAC with SHA-224 (a 28-byte key).
    Hmac224,
    /// HMAC with SHA-256 (32 bytes).
    Hmac256,
    /// HMAC with SHA-384 (48 bytes).
    Hmac384,
    /// HMAC with SHA-512 (64 bytes).
    Hmac512,
    /// ML-DSA-44.
    MlDsa44,
    /// ML-DSA-65.
    MlDsa65,
    /// ML-DSA-87.
    MlDsa87,
}

impl KeySpec {
    /// Every spec atrest supports, in AWS's order.
    pub const ALL: [KeySpec; 16] = [
        Self::Rsa2048,
        Self::Rsa3072,
        Self::Rsa4096,
        Self::EccNistP256,
        Self::EccNistP384,
        Self::EccNistP521,
        Self::EccSecgP256k1,
        Self::SymmetricDefault,
        Self::Hmac224,
        Self::Hmac256,
        Self::Hmac384,
        Self::Hmac512,
        Self::MlDsa44,
        Self::MlDsa65,
        Self::MlDsa87,
        Self::EccNistEdwards25519,
    ];

    /// AWS's name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SymmetricDefault => "SYMMETRIC_DEFAULT",
            Self::Rsa2048 => "RSA_2048",
            Self::Rsa3072 => "RSA_3072",
            Self::Rsa4096 => "RSA_4096",
            Self::EccNistP256 => "ECC_NIST_P256",
            Self::EccNistP384 => "ECC_NIST_P384",
            Self::EccNistP521 => "ECC_NIST_P521",
            Self::EccSecgP256k1 => "ECC_SECG_P256K1",
            Self::EccNistEdwards25519 => "ECC_NIST_EDWARDS25519",
            Self::Hmac224 => "HMAC_224",
            Self::Hmac256 => "HMAC_256",
            Self::Hmac384 => "HMAC_384",
            Self::Hmac512 => "HMAC_512",
            Self::MlDsa44 => "ML_DSA_44",
            Self::MlDsa65 => "ML_DSA_65",
            Self::MlDsa87 => "ML_DSA_87",
        }
    }

    /// The spec of AWS's name.
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// The key pair kind of an asymmetric spec.
    #[must_use]
    pub fn key_pair(self) -> Option<atrest_crypto::keypair::KeyPairSpec> {
        use atrest_crypto::keypair::KeyPairSpec as P;
        Some(match self {
            Self::Rsa2048 => P::Rsa2048,
            Self::Rsa3072 => P::Rsa3072,
            Self::Rsa4096 => P::Rsa4096,
            Self::EccNistP256 => P::EccNistP256,
            Self::EccNistP384 => P::EccNistP384,
            Self::EccNistP521 => P::EccNistP521,
            Self::EccSecgP256k1 => P::EccSecgP256k1,
            Self::EccNistEdwards25519 => P::Ed25519,
            Self::MlDsa44 => P::MlDsa44,
            Self::MlDsa65 => P::MlDsa65,
            Self::MlDsa87 => P::MlDsa87,
            Self::SymmetricDefault
            | Self::Hmac224
            | Self::Hmac256
            | Self::Hmac384
            | Self::Hmac512 => return None,
        })
    }

    /// The HMAC key length in bytes, for an HMAC spec.
    #[must_use]
    pub fn hmac_key_len(self) -> Option<usize> {
        match self {
            Self::Hmac224 => Some(28),
            Self::Hmac256 => Some(32),
            Self::Hmac384 => Some(48),
            Self::Hmac512 => Some(64),
            _ => None,
        }
    }

    /// The key usages AWS allows for the spec; the first is the default
    /// where AWS has one.
    #[must_use]
    pub fn usages(self) -> &'static [KeyUsage] {
        use KeyUsage as U;
        match self {
            Self::SymmetricDefault => &[U::EncryptDecrypt],
            Self::Rsa2048 | Self::Rsa3072 | Self::Rsa4096 => &[U::EncryptDecrypt, U::SignVerify],
            Self::EccNistP256 | Self::EccNistP384 | Self::EccNistP521 => {
                &[U::SignVerify, U::KeyAgreement]
            }
            Self::EccSecgP256k1
            | Self::EccNistEdwards25519
            | Self::MlDsa44
            | Self::MlDsa65
            | Self::MlDsa87 => &[U::SignVerify],
            Self::Hmac224 | Self::Hmac256 | Self::Hmac384 | Self::Hmac512 => {
                &[U::GenerateVerifyMac]
            }
        }
    }

    /// Whether the spec is an HMAC spec.
    #[must_use]
    pub fn is_hmac(self) -> bool {
        self.hmac_key_len().is_some()
    }

    /// Whether the spec is RSA.
    #[must_use]
    pub fn is_rsa(self) -> bool {
        matches!(self, Self::Rsa2048 | Self::Rsa3072 | Self::Rsa4096)
    }
}

/// AWS's key usages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyUsage {
    /// Encrypt and decrypt.
    #[default]
    EncryptDecrypt,
    /// Sign and verify.
    SignVerify,
    /// Generate and verify MACs.
    GenerateVerifyMac,
    /// Derive shared secrets (ECDH).
    KeyAgreement,
}

impl KeyUsage {
    /// Every usage.
    pub const ALL: [KeyUsage; 4] = [
        Self::SignVerify,
        Self::EncryptDecrypt,
        Self::GenerateVerifyMac,
        Self::KeyAgreement,
    ];

    /// AWS's name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EncryptDecrypt => "ENCRYPT_DECRYPT",
            Self::SignVerify => "SIGN_VERIFY",
            Self::GenerateVerifyMac => "GENERATE_VERIFY_MAC",
            Self::KeyAgreement => "KEY_AGREEMENT",
        }
    }

    /// The usage of AWS's name.
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

/// The algorithms a key of `spec` and `usage` offers, as `DescribeKey`
/// lists them: (encryption, signing, MAC, key agreement).
#[must_use]
pub fn algorithms(
    spec: KeySpec,
    usage: KeyUsage,
) -> (
    &'static [&'static str],
    &'static [&'static str],
    &'static [&'static str],
    &'static [&'static str],
) {
    const NONE: &[&str] = &[];
    let (enc, sign, mac, agree): (&[&str], &[&str], &[&str], &[&str]) = match (spec, usage) {
        (KeySpec::SymmetricDefault, _) => (&["SYMMETRIC_DEFAULT"], NONE, NONE, NONE),
        (s, KeyUsage::EncryptDecrypt) if s.is_rsa() => (
            &["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"],
            NONE,
            NONE,
            NONE,
        ),
        (s, KeyUsage::SignVerify) if s.is_rsa() => (
            NONE,
            &[
                "RSASSA_PSS_SHA_256",
                "RSASSA_PSS_SHA_384",
                "RSASSA_PSS_SHA_512",
                "RSASSA_PKCS1_V1_5_SHA_256",
                "RSASSA_PKCS1_V1_5_SHA_384",
                "RSASSA_PKCS1_V1_5_SHA_512",
            ],
            NONE,
            NONE,
        ),
        (_, KeyUsage::KeyAgreement) => (NONE, NONE, NONE, &["ECDH"]),
        (KeySpec::EccNistP256 | KeySpec::EccSecgP256k1, _) => {
            (NONE, &["ECDSA_SHA_256"], NONE, NONE)
        }
        (KeySpec::EccNistP384, _) => (NONE, &["ECDSA_SHA_384"], NONE, NONE),
        (KeySpec::EccNistP521, _) => (NONE, &["ECDSA_SHA_512"], NONE, NONE),
        (KeySpec::EccNistEdwards25519, _) => {
            (NONE, &["ED25519_SHA_512", "ED25519_PH_SHA_512"], NONE, NONE)
        }
        (KeySpec::MlDsa44 | KeySpec::MlDsa65 | KeySpec::MlDsa87, _) => {
            (NONE, &["ML_DSA_SHAKE_256"], NONE, NONE)
        }
        (KeySpec::Hmac224, _) => (NONE, NONE, &["HMAC_SHA_224"], NONE),
        (KeySpec::Hmac256, _) => (NONE, NONE, &["HMAC_SHA_256"], NONE),
        (KeySpec::Hmac384, _) => (NONE, NONE, &["HMAC_SHA_384"], NONE),
        (KeySpec::Hmac512, _) => (NONE, NONE, &["HMAC_SHA_512"], NONE),
        (KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096, _) => (NONE, NONE, NONE, NONE),
    };
    (enc, sign, mac, agree)
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
    /// The key spec (records of earlier releases are all symmetric).
    #[serde(default)]
    pub spec: KeySpec,
    /// The key usage.
    #[serde(default)]
    pub usage: KeyUsage,
    /// For a multi-Region key: its shared id and where it lives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multi_region: Option<MultiRegion>,
}

/// What makes a key record one region's copy of a multi-Region key. Every
/// region's copy is a record of its own, with its own `id` (so its policy,
/// grants, aliases, tags, state and schedule stay independent, keyed as for
/// any key), and all share `id` here: the id customers see (`mrk-` and 32
/// hex digits) and the key id in ciphertext blobs. [`MULTI_REGION_KEYS`]
/// finds a region's record from it. Each record has its own copy of every
/// version of the material, sealed under its own `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MultiRegion {
    /// The multi-Region key id, shared by every region's record.
    pub id: Uuid,
    /// The region of the primary key (shared; kept equal in every record).
    pub primary: String,
    /// Every region holding the key, the primary's first, then replicas in
    /// the order they were made (shared).
    pub regions: Vec<String>,
    /// For a primary key in `PendingReplicaDeletion`: the waiting period
    /// that starts once its last replica is deleted (this record's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_window_days: Option<u32>,
}

impl KeyRecord {
    /// The key id customers see: the UUID, or `mrk-` and 32 hex digits for
    /// a multi-Region key.
    #[must_use]
    pub fn key_id(&self) -> String {
        match &self.multi_region {
            Some(m) => crate::names::mrk_key_id(&m.id),
            None => self.id.to_string(),
        }
    }

    /// The key id a ciphertext blob names: the multi-Region key id for a
    /// multi-Region key (so every region can find its copy), else `id`.
    #[must_use]
    pub fn blob_id(&self) -> Uuid {
        self.multi_region.as_ref().map_or(self.id, |m| m.id)
    }

    /// Whether this is a multi-Region replica key.
    #[must_use]
    pub fn is_replica(&self) -> bool {
        self.multi_region
            .as_ref()
            .is_some_and(|m| m.primary != self.region)
    }
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
    /// The material, sealed under the root key (base64): 32 bytes for a
    /// symmetric key, the raw HMAC key for an HMAC key, the PKCS#8 DER
    /// private key for an asymmetric key.
    pub sealed: String,
    /// For an asymmetric key: its public key, DER SubjectPublicKeyInfo
    /// (base64). Public, so not sealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public: Option<String>,
    /// For imported material: its expiry, description and state. Absent in
    /// records of earlier releases (then the key's [`ImportState`] holds
    /// the expiry of its one material) and for generated material.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import: Option<VersionImport>,
}

/// One imported key material's life (see `service/import.rs`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionImport {
    /// When the material expires, ms; `None` if it does not.
    #[serde(default)]
    pub valid_to: Option<i64>,
    /// The customer's description of the material.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Imported as new material for an on-demand rotation that has not
    /// happened yet: the key does not use it.
    #[serde(default)]
    pub pending_rotation: bool,
    /// Deleted (DeleteImportedKeyMaterial, or expired): `sealed` is empty
    /// until the same material is imported again.
    #[serde(default)]
    pub deleted: bool,
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

/// The [`MULTI_REGION_KEYS`] key of a multi-Region key's record in `region`.
#[must_use]
pub fn multi_region_key(mrk: &Uuid, region: &str) -> Vec<u8> {
    let mut k = mrk.as_bytes().to_vec();
    k.extend_from_slice(region.as_bytes());
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
