//! The AWS KMS JSON 1.1 request and response shapes for the operations
//! atrest implements. Member names are AWS's (PascalCase); unknown members
//! are ignored, as AWS does, so newer SDKs keep working.
//!
//! Every request member is optional at the serde level so that a missing
//! required member is a `ValidationException` naming it (AWS's behaviour),
//! while a member of the wrong JSON type is a `SerializationException`.

use std::collections::BTreeMap;

use atrest_crypto::SecretBytes;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::KmsError;

/// Binary data, base64 in JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob(pub Vec<u8>);

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        B64.decode(s.as_bytes())
            .map(Blob)
            .map_err(|_| serde::de::Error::custom("blob member is not valid base64"))
    }
}

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(&self.0))
    }
}

/// Secret binary data (plaintexts), base64 in JSON; wiped when dropped, and
/// its base64 form is wiped after serialisation.
pub struct SecretBlob(pub SecretBytes);

impl core::fmt::Debug for SecretBlob {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de> Deserialize<'de> for SecretBlob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = zeroize::Zeroizing::new(String::deserialize(d)?);
        B64.decode(s.as_bytes())
            .map(|v| SecretBlob(SecretBytes::new(v)))
            .map_err(|_| serde::de::Error::custom("blob member is not valid base64"))
    }
}

impl Serialize for SecretBlob {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let encoded = zeroize::Zeroizing::new(B64.encode(self.0.expose()));
        s.serialize_str(&encoded)
    }
}

/// A tag as AWS sends it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Tag {
    /// Tag key (1 to 128 characters).
    pub tag_key: Option<String>,
    /// Tag value (0 to 256 characters).
    pub tag_value: Option<String>,
}

/// A tag must be a JSON object; the derived deserializer would also accept a
/// positional array, which the protocol does not.
impl<'de> Deserialize<'de> for Tag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Fields {
            tag_key: Option<String>,
            tag_value: Option<String>,
        }
        let map = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        let f = Fields::deserialize(serde_json::Value::Object(map))
            .map_err(serde::de::Error::custom)?;
        Ok(Tag {
            tag_key: f.tag_key,
            tag_value: f.tag_value,
        })
    }
}

/// An encryption context.
pub type Context = BTreeMap<String, String>;

/// A required member, or AWS's validation error naming it.
pub(crate) fn required<T>(v: Option<T>, member: &str) -> Result<T, KmsError> {
    v.ok_or_else(|| KmsError::required(member))
}

/// An integer member that must lie in `lo..=hi`.
pub(crate) fn in_range(v: i64, member: &str, lo: i64, hi: i64) -> Result<u32, KmsError> {
    if v < lo {
        return Err(KmsError::constraint(
            member,
            v,
            &format!("Member must have value greater than or equal to {lo}"),
        ));
    }
    if v > hi {
        return Err(KmsError::constraint(
            member,
            v,
            &format!("Member must have value less than or equal to {hi}"),
        ));
    }
    u32::try_from(v).map_err(|_| KmsError::constraint(member, v, "Member must fit in 32 bits"))
}

/// A string member whose length (in characters) must lie in `lo..=hi`.
pub(crate) fn length(v: &str, member: &str, lo: usize, hi: usize) -> Result<(), KmsError> {
    match KmsError::length(member, Some(v), v.chars().count(), lo, hi) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

macro_rules! request {
    ($(#[$m:meta])* $name:ident { $($(#[$fm:meta])* $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Default, Deserialize)]
        #[serde(rename_all = "PascalCase")]
        pub struct $name { $($(#[$fm])* pub $field: Option<$ty>,)* }
    };
}

request!(
    /// CreateKey.
    CreateKeyRequest {
        policy: String,
        description: String,
        key_usage: String,
        customer_master_key_spec: String,
        key_spec: String,
        origin: String,
        custom_key_store_id: String,
        bypass_policy_lockout_safety_check: bool,
        tags: Vec<Tag>,
        multi_region: bool,
        xks_key_id: String,
    }
);
request!(
    /// Requests that name one key and nothing else.
    KeyIdRequest { key_id: String, grant_tokens: Vec<String> }
);
request!(
    /// ListKeys.
    ListKeysRequest { limit: i64, marker: String }
);
request!(
    /// UpdateKeyDescription.
    UpdateKeyDescriptionRequest { key_id: String, description: String }
);
request!(
    /// ScheduleKeyDeletion.
    ScheduleKeyDeletionRequest { key_id: String, pending_window_in_days: i64 }
);
request!(
    /// Encrypt.
    EncryptRequest {
        key_id: String,
        plaintext: SecretBlob,
        encryption_context: Context,
        grant_tokens: Vec<String>,
        encryption_algorithm: String,
        dry_run: bool,
    }
);
request!(
    /// Decrypt.
    DecryptRequest {
        ciphertext_blob: Blob,
        encryption_context: Context,
        grant_tokens: Vec<String>,
        key_id: String,
        encryption_algorithm: String,
        recipient: serde_json::Value,
        dry_run: bool,
    }
);
request!(
    /// ReEncrypt.
    ReEncryptRequest {
        ciphertext_blob: Blob,
        source_encryption_context: Context,
        source_key_id: String,
        destination_key_id: String,
        destination_encryption_context: Context,
        source_encryption_algorithm: String,
        destination_encryption_algorithm: String,
        grant_tokens: Vec<String>,
        dry_run: bool,
    }
);
request!(
    /// GenerateDataKey and GenerateDataKeyWithoutPlaintext.
    GenerateDataKeyRequest {
        key_id: String,
        encryption_context: Context,
        number_of_bytes: i64,
        key_spec: String,
        grant_tokens: Vec<String>,
        recipient: serde_json::Value,
        dry_run: bool,
    }
);
request!(
    /// GenerateRandom.
    GenerateRandomRequest {
        number_of_bytes: i64,
        custom_key_store_id: String,
        recipient: serde_json::Value,
    }
);
request!(
    /// CreateAlias and UpdateAlias.
    AliasRequest { alias_name: String, target_key_id: String }
);
request!(
    /// DeleteAlias.
    DeleteAliasRequest { alias_name: String }
);
request!(
    /// ListAliases.
    ListAliasesRequest { key_id: String, limit: i64, marker: String }
);
request!(
    /// EnableKeyRotation.
    EnableKeyRotationRequest { key_id: String, rotation_period_in_days: i64 }
);
request!(
    /// ListKeyRotations and ListResourceTags.
    ListForKeyRequest { key_id: String, limit: i64, marker: String, include_key_material: String }
);
request!(
    /// TagResource.
    TagResourceRequest { key_id: String, tags: Vec<Tag> }
);
request!(
    /// UntagResource.
    UntagResourceRequest { key_id: String, tag_keys: Vec<String> }
);

/// A key's metadata as DescribeKey and CreateKey return it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeyMetadata {
    /// Owning account.
    #[serde(rename = "AWSAccountId")]
    pub aws_account_id: String,
    /// Key id.
    pub key_id: String,
    /// Key ARN.
    pub arn: String,
    /// Creation time, epoch seconds.
    pub creation_date: f64,
    /// Whether the state is Enabled.
    pub enabled: bool,
    /// Description.
    pub description: String,
    /// The key usage.
    pub key_usage: &'static str,
    /// State.
    pub key_state: &'static str,
    /// Deletion date, epoch seconds, if pending.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deletion_date: Option<f64>,
    /// Origin of the material.
    pub origin: &'static str,
    /// `CUSTOMER` (or `AWS` for service keys).
    pub key_manager: &'static str,
    /// Deprecated twin of `KeySpec`.
    pub customer_master_key_spec: &'static str,
    /// The key spec.
    pub key_spec: &'static str,
    /// For ENCRYPT_DECRYPT keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption_algorithms: Option<&'static [&'static str]>,
    /// For SIGN_VERIFY keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing_algorithms: Option<&'static [&'static str]>,
    /// For GENERATE_VERIFY_MAC keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac_algorithms: Option<&'static [&'static str]>,
    /// For KEY_AGREEMENT keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_agreement_algorithms: Option<&'static [&'static str]>,
    /// Whether this is a multi-Region key.
    pub multi_region: bool,
    /// For a multi-Region key: its primary and replicas.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub multi_region_configuration: Option<MultiRegionConfiguration>,
    /// The material new ciphertexts use (absent while PendingImport).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_key_material_id: Option<String>,
    /// For EXTERNAL keys: whether the imported material expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiration_model: Option<&'static str>,
    /// For EXTERNAL keys whose material expires: when, epoch seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid_to: Option<f64>,
    /// For EXTERNAL_KMS keys: the key provider.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub custom_key_store_id: Option<String>,
    /// For EXTERNAL_KMS keys: the key at the provider.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xks_key_configuration: Option<XksKeyConfiguration>,
    /// For EXTERNAL_KMS keys (atrest's addition): what the provider said
    /// at the last use or health check, with its words when it refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_key_status: Option<crate::ExternalKeyStatus>,
}

/// A multi-Region key's place among its related keys.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct MultiRegionConfiguration {
    /// `PRIMARY` or `REPLICA`.
    pub multi_region_key_type: &'static str,
    /// The primary key.
    pub primary_key: MultiRegionKey,
    /// Every replica key.
    pub replica_keys: Vec<MultiRegionKey>,
}

/// One of a multi-Region key's related keys.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct MultiRegionKey {
    /// Its ARN.
    pub arn: String,
    /// Its region.
    pub region: String,
}

/// `{"Id": remote key id}`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct XksKeyConfiguration {
    /// The key's id at the provider.
    pub id: String,
}

/// `{"KeyMetadata": ...}`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeyMetadataResponse {
    /// The metadata.
    pub key_metadata: KeyMetadata,
}

/// One entry of ListKeys.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeyListEntry {
    /// Key id.
    pub key_id: String,
    /// Key ARN.
    pub key_arn: String,
}

/// A page of a listing.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Page<T: Serialize> {
    #[serde(flatten)]
    /// The items, under the listing's own member name.
    pub items: T,
    /// Where the next page starts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_marker: Option<String>,
    /// Whether there is a next page.
    pub truncated: bool,
}

/// `{"Keys": [...]}`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Keys {
    /// Keys.
    pub keys: Vec<KeyListEntry>,
}

/// One alias.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AliasEntry {
    /// `alias/...`.
    pub alias_name: String,
    /// Alias ARN.
    pub alias_arn: String,
    /// Key id it points to.
    pub target_key_id: String,
    /// Creation, epoch seconds.
    pub creation_date: f64,
    /// Last update, epoch seconds.
    pub last_updated_date: f64,
}

/// `{"Aliases": [...]}`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Aliases {
    /// Aliases.
    pub aliases: Vec<AliasEntry>,
}

/// `{"Tags": [...]}`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Tags {
    /// Tags.
    pub tags: Vec<Tag>,
}

/// One rotation.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RotationEntry {
    /// Key id.
    pub key_id: String,
    /// When; absent for the first material and material pending rotation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotation_date: Option<f64>,
    /// `AUTOMATIC` or `ON_DEMAND`; absent where there is no rotation date.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotation_type: Option<&'static str>,
    /// The material created.
    pub key_material_id: String,
    /// `CURRENT`, `NON_CURRENT` or `PENDING_ROTATION`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_material_state: Option<&'static str>,
    /// Imported material: `IMPORTED` or `PENDING_IMPORT`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub import_state: Option<&'static str>,
    /// Imported material: `KEY_MATERIAL_EXPIRES` or `KEY_MATERIAL_DOES_NOT_EXPIRE`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiration_model: Option<&'static str>,
    /// Imported material that expires: when, epoch seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid_to: Option<f64>,
    /// Imported material: the customer's description.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_material_description: Option<String>,
}

/// `{"Rotations": [...]}`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Rotations {
    /// Rotations.
    pub rotations: Vec<RotationEntry>,
}

/// ScheduleKeyDeletion's response.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ScheduleKeyDeletionResponse {
    /// Key ARN.
    pub key_id: String,
    /// When the key will be deleted; absent for a multi-Region primary key
    /// waiting for its replicas (not known until the last is deleted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deletion_date: Option<f64>,
    /// `PendingDeletion`, or `PendingReplicaDeletion`.
    pub key_state: &'static str,
    /// The waiting period.
    pub pending_window_in_days: u32,
}

/// Responses that carry only the key ARN.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeyIdResponse {
    /// Key ARN.
    pub key_id: String,
}

/// Encrypt's response.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct EncryptResponse {
    /// The ciphertext blob.
    pub ciphertext_blob: Blob,
    /// Key ARN.
    pub key_id: String,
    /// `SYMMETRIC_DEFAULT`.
    pub encryption_algorithm: &'static str,
}

/// Decrypt's response.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DecryptResponse {
    /// Key ARN.
    pub key_id: String,
    /// The plaintext.
    pub plaintext: SecretBlob,
    /// `SYMMETRIC_DEFAULT`.
    pub encryption_algorithm: &'static str,
    /// The material that decrypted it.
    pub key_material_id: String,
}

/// ReEncrypt's response.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ReEncryptResponse {
    /// The new blob.
    pub ciphertext_blob: Blob,
    /// Source key ARN.
    pub source_key_id: String,
    /// Destination key ARN.
    pub key_id: String,
    /// `SYMMETRIC_DEFAULT`.
    pub source_encryption_algorithm: &'static str,
    /// `SYMMETRIC_DEFAULT`.
    pub destination_encryption_algorithm: &'static str,
    /// Source material.
    pub source_key_material_id: String,
    /// Destination material.
    pub destination_key_material_id: String,
}

/// GenerateDataKey's response (and, without `Plaintext`, GenerateDataKeyWithoutPlaintext's).
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DataKeyResponse {
    /// The data key, encrypted.
    pub ciphertext_blob: Blob,
    /// The data key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plaintext: Option<SecretBlob>,
    /// Key ARN.
    pub key_id: String,
    /// The material used.
    pub key_material_id: String,
}

/// GenerateRandom's response.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RandomResponse {
    /// The random bytes.
    pub plaintext: SecretBlob,
}

/// GetKeyRotationStatus's response.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RotationStatusResponse {
    /// Whether automatic rotation is on.
    pub key_rotation_enabled: bool,
    /// Key id (not the ARN, as AWS answers).
    pub key_id: String,
    /// The period, when enabled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotation_period_in_days: Option<u32>,
    /// The next automatic rotation, when enabled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_rotation_date: Option<f64>,
}

/// An empty response body, `{}`.
#[derive(Debug, Serialize)]
pub struct Empty {}
