//! CreateKey, DescribeKey, ListKeys, UpdateKeyDescription, EnableKey,
//! DisableKey, ScheduleKeyDeletion, CancelKeyDeletion.

use atrest_store::WriteTx;
use time::Duration;
use uuid::Uuid;

use super::pagination::{self, Listing};
use super::{Caller, KeyService};
use crate::KmsError;
use crate::api::{
    self, CreateKeyRequest, Empty, KeyIdRequest, KeyIdResponse, KeyListEntry, KeyMetadata,
    KeyMetadataResponse, Keys, ListKeysRequest, Page, ScheduleKeyDeletionRequest,
    ScheduleKeyDeletionResponse, UpdateKeyDescriptionRequest,
};
use crate::clock::{epoch_seconds, to_millis};
use crate::names::{KeyRef, key_arn};
use crate::records::{self, DueKind, KeyRecord, KeyState, VersionOrigin};

const KEY_SPECS: [&str; 17] = [
    "RSA_2048",
    "RSA_3072",
    "RSA_4096",
    "ECC_NIST_P256",
    "ECC_NIST_P384",
    "ECC_NIST_P521",
    "ECC_SECG_P256K1",
    "SYMMETRIC_DEFAULT",
    "HMAC_224",
    "HMAC_256",
    "HMAC_384",
    "HMAC_512",
    "SM2",
    "ML_DSA_44",
    "ML_DSA_65",
    "ML_DSA_87",
    "ECC_NIST_EDWARDS25519",
];
const KEY_USAGES: [&str; 4] = [
    "SIGN_VERIFY",
    "ENCRYPT_DECRYPT",
    "GENERATE_VERIFY_MAC",
    "KEY_AGREEMENT",
];
const ORIGINS: [&str; 4] = ["AWS_KMS", "EXTERNAL", "AWS_CLOUDHSM", "EXTERNAL_KEY_STORE"];

/// Checks an enum member: a value AWS knows but atrest does not support is
/// `UnsupportedOperationException`; a value AWS does not know is a
/// `ValidationException`.
fn enum_member(
    value: Option<&str>,
    member: &str,
    known: &[&str],
    supported: &str,
) -> Result<(), KmsError> {
    match value {
        None => Ok(()),
        Some(v) if v == supported => Ok(()),
        Some(v) if known.contains(&v) => Err(KmsError::UnsupportedOperation(format!(
            "atrest supports only {member} {supported}, not {v}."
        ))),
        Some(v) => Err(KmsError::constraint(
            member,
            v,
            &format!("Member must satisfy enum value set: [{}]", known.join(", ")),
        )),
    }
}

impl KeyService {
    pub(crate) fn metadata(key: &KeyRecord) -> KeyMetadata {
        KeyMetadata {
            aws_account_id: key.account.clone(),
            key_id: key.id.to_string(),
            arn: Self::arn(key),
            creation_date: epoch_seconds(key.created),
            enabled: key.state == KeyState::Enabled,
            description: key.description.clone(),
            key_usage: "ENCRYPT_DECRYPT",
            key_state: key.state.as_str(),
            deletion_date: key.deletion_date.map(epoch_seconds),
            origin: "AWS_KMS",
            key_manager: "CUSTOMER",
            customer_master_key_spec: "SYMMETRIC_DEFAULT",
            key_spec: "SYMMETRIC_DEFAULT",
            encryption_algorithms: ["SYMMETRIC_DEFAULT"],
            multi_region: false,
            current_key_material_id: key.current_material_id.clone(),
        }
    }

    /// CreateKey.
    pub fn create_key(
        &self,
        caller: &Caller,
        req: CreateKeyRequest,
    ) -> Result<KeyMetadataResponse, KmsError> {
        if req.policy.is_some() {
            return Err(KmsError::UnsupportedOperation(
                "Key policies are not supported by this atrest version; omit Policy to get the default key policy (the key's account may use and manage it).".into(),
            ));
        }
        let description = req.description.unwrap_or_default();
        api::length(&description, "description", 0, 8192)?;
        enum_member(
            req.key_usage.as_deref(),
            "keyUsage",
            &KEY_USAGES,
            "ENCRYPT_DECRYPT",
        )?;
        enum_member(
            req.key_spec.as_deref(),
            "keySpec",
            &KEY_SPECS,
            "SYMMETRIC_DEFAULT",
        )?;
        enum_member(
            req.customer_master_key_spec.as_deref(),
            "customerMasterKeySpec",
            &KEY_SPECS,
            "SYMMETRIC_DEFAULT",
        )?;
        enum_member(req.origin.as_deref(), "origin", &ORIGINS, "AWS_KMS")?;
        if req.custom_key_store_id.is_some() || req.xks_key_id.is_some() {
            return Err(KmsError::UnsupportedOperation(
                "Custom key stores are not supported by this atrest version.".into(),
            ));
        }
        if req.multi_region == Some(true) {
            return Err(KmsError::UnsupportedOperation(
                "Multi-Region keys are not supported: an atrest key lives in exactly one region."
                    .into(),
            ));
        }
        let tags = super::tags::validate_tags(req.tags.unwrap_or_default(), Vec::new())?;

        let now = self.now_ms();
        let id = Uuid::new_v4();
        let mut tx = self.store.write()?;
        let material_id = self.add_version(&mut *tx, &id, 1, VersionOrigin::Initial, now)?;
        let key = KeyRecord {
            v: 1,
            id,
            account: caller.account.as_str().to_owned(),
            region: caller.region.clone(),
            created: now,
            description,
            state: KeyState::Enabled,
            deletion_date: None,
            current_version: 1,
            current_material_id: material_id,
            rotation: None,
            on_demand_rotations: 0,
            tags,
        };
        records::put(&mut *tx, records::KEYS, id.as_bytes(), &key)?;
        tx.put(
            records::KEYS_BY_OWNER,
            &records::owner_key(&key.region, &key.account, &id),
            b"",
        )?;
        tx.commit()?;
        Ok(KeyMetadataResponse {
            key_metadata: Self::metadata(&key),
        })
    }

    /// DescribeKey.
    pub fn describe_key(
        &self,
        caller: &Caller,
        req: KeyIdRequest,
    ) -> Result<KeyMetadataResponse, KmsError> {
        let key_ref = KeyRef::parse(&api::required(req.key_id, "keyId")?)?;
        Self::check_grant_tokens(req.grant_tokens.as_ref())?;
        let tx = self.store.read()?;
        let key = self.resolve(&*tx, caller, &key_ref)?;
        Self::authorize(caller, "DescribeKey", &key)?;
        Ok(KeyMetadataResponse {
            key_metadata: Self::metadata(&key),
        })
    }

    /// ListKeys.
    pub fn list_keys(&self, caller: &Caller, req: ListKeysRequest) -> Result<Page<Keys>, KmsError> {
        let size = pagination::page_size(req.limit, 100, 1000)?;
        let after = pagination::decode(Listing::Keys, req.marker.as_deref())?;
        let prefix = records::owner_prefix(&caller.region, caller.account.as_str());
        let after_key = after.map(|a| {
            let mut k = prefix.clone();
            k.extend_from_slice(&a);
            k
        });
        let tx = self.store.read()?;
        let rows = tx.scan(
            records::KEYS_BY_OWNER,
            &prefix,
            after_key.as_deref(),
            size + 1,
        )?;
        let ids: Vec<Uuid> = rows
            .iter()
            .filter_map(|(k, _)| k.get(prefix.len()..).and_then(|b| Uuid::from_slice(b).ok()))
            .collect();
        let (ids, next) = pagination::finish(Listing::Keys, ids, size, |id| id.as_bytes().to_vec());
        Ok(Page {
            truncated: next.is_some(),
            next_marker: next,
            items: Keys {
                keys: ids
                    .iter()
                    .map(|id| KeyListEntry {
                        key_id: id.to_string(),
                        key_arn: key_arn(&caller.region, caller.account.as_str(), id),
                    })
                    .collect(),
            },
        })
    }

    /// Runs `change` on a key named by a key id or key ARN, inside one write
    /// transaction, and stores the result.
    pub(crate) fn update_key<T>(
        &self,
        caller: &Caller,
        key_id: Option<String>,
        action: &str,
        change: impl FnOnce(&Self, &mut KeyRecord, &mut dyn WriteTx, i64) -> Result<T, KmsError>,
    ) -> Result<T, KmsError> {
        let mut tx = self.store.write()?;
        let mut key = self.resolve_for_management(&*tx, caller, key_id)?;
        Self::authorize(caller, action, &key)?;
        let now = self.now_ms();
        let out = change(self, &mut key, &mut *tx, now)?;
        records::put(&mut *tx, records::KEYS, key.id.as_bytes(), &key)?;
        tx.commit()?;
        Ok(out)
    }

    /// UpdateKeyDescription.
    pub fn update_key_description(
        &self,
        caller: &Caller,
        req: UpdateKeyDescriptionRequest,
    ) -> Result<Empty, KmsError> {
        let description = api::required(req.description, "description")?;
        api::length(&description, "description", 0, 8192)?;
        self.update_key(
            caller,
            req.key_id,
            "UpdateKeyDescription",
            |_, key, _, _| {
                Self::require_not_pending_deletion(key)?;
                key.description = description;
                Ok(Empty {})
            },
        )
    }

    /// EnableKey.
    pub fn enable_key(&self, caller: &Caller, req: KeyIdRequest) -> Result<Empty, KmsError> {
        self.update_key(caller, req.key_id, "EnableKey", |_, key, _, _| {
            Self::require_not_pending_deletion(key)?;
            key.state = KeyState::Enabled;
            Ok(Empty {})
        })
    }

    /// DisableKey.
    pub fn disable_key(&self, caller: &Caller, req: KeyIdRequest) -> Result<Empty, KmsError> {
        self.update_key(caller, req.key_id, "DisableKey", |_, key, _, _| {
            Self::require_not_pending_deletion(key)?;
            key.state = KeyState::Disabled;
            Ok(Empty {})
        })
    }

    /// ScheduleKeyDeletion.
    pub fn schedule_key_deletion(
        &self,
        caller: &Caller,
        req: ScheduleKeyDeletionRequest,
    ) -> Result<ScheduleKeyDeletionResponse, KmsError> {
        let days = match req.pending_window_in_days {
            None => 30,
            Some(d) => api::in_range(d, "pendingWindowInDays", 7, 30)?,
        };
        self.update_key(
            caller,
            req.key_id,
            "ScheduleKeyDeletion",
            |_, key, tx, now| {
                Self::require_not_pending_deletion(key)?;
                let when =
                    to_millis(crate::clock::from_millis(now) + Duration::days(i64::from(days)));
                key.state = KeyState::PendingDeletion;
                key.deletion_date = Some(when);
                tx.put(
                    records::DUE,
                    &records::due_key(when, DueKind::Deletion, &key.id),
                    b"",
                )?;
                Ok(ScheduleKeyDeletionResponse {
                    key_id: Self::arn(key),
                    deletion_date: epoch_seconds(when),
                    key_state: "PendingDeletion",
                    pending_window_in_days: days,
                })
            },
        )
    }

    /// CancelKeyDeletion. The key comes back Disabled, as in AWS.
    pub fn cancel_key_deletion(
        &self,
        caller: &Caller,
        req: KeyIdRequest,
    ) -> Result<KeyIdResponse, KmsError> {
        self.update_key(caller, req.key_id, "CancelKeyDeletion", |_, key, tx, _| {
            let (KeyState::PendingDeletion, Some(when)) = (key.state, key.deletion_date) else {
                return Err(KmsError::InvalidState(format!(
                    "{} is not pending deletion.",
                    Self::arn(key)
                )));
            };
            tx.delete(
                records::DUE,
                &records::due_key(when, DueKind::Deletion, &key.id),
            )?;
            key.state = KeyState::Disabled;
            key.deletion_date = None;
            Ok(KeyIdResponse {
                key_id: Self::arn(key),
            })
        })
    }
}
