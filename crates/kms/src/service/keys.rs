//! CreateKey, DescribeKey, ListKeys, UpdateKeyDescription, EnableKey,
//! DisableKey, ScheduleKeyDeletion, CancelKeyDeletion.

use atrest_policy::{PolicyDocument, PolicyKind};
use atrest_store::WriteTx;
use time::Duration;
use uuid::Uuid;

use super::pagination::{self, Listing};
use super::{Call, KeyService};
use crate::KmsError;
use crate::api::{
    self, CreateKeyRequest, Empty, KeyIdRequest, KeyIdResponse, KeyListEntry, KeyMetadata,
    KeyMetadataResponse, Keys, ListKeysRequest, Page, ScheduleKeyDeletionRequest,
    ScheduleKeyDeletionResponse, UpdateKeyDescriptionRequest,
};
use crate::clock::{epoch_seconds, to_millis};
use crate::names::{KeyRef, key_arn};
use crate::records::{
    self, DueKind, KeyManager, KeyOrigin, KeyRecord, KeySpec, KeyState, KeyUsage, VersionOrigin,
};

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
const ORIGINS: [&str; 4] = ["AWS_KMS", "EXTERNAL", "AWS_CLOUDHSM", "EXTERNAL_KMS"];

/// Checks an enum member: a value AWS knows but atrest does not support is
/// `UnsupportedOperationException`; a value AWS does not know is a
/// `ValidationException`.
fn enum_member(
    value: Option<&str>,
    member: &str,
    known: &[&str],
    supported: &[&str],
) -> Result<(), KmsError> {
    match value {
        None => Ok(()),
        Some(v) if supported.contains(&v) => Ok(()),
        Some(v) if known.contains(&v) => Err(KmsError::UnsupportedOperation(format!(
            "atrest supports only {member} {}, not {v}.",
            supported.join(" or ")
        ))),
        Some(v) => Err(KmsError::constraint(
            member,
            v,
            &format!("Member must satisfy enum value set: [{}]", known.join(", ")),
        )),
    }
}

/// CreateKey's `KeySpec` (or its deprecated twin `CustomerMasterKeySpec`)
/// and `KeyUsage`, checked against AWS's valid combinations.
fn spec_and_usage(req: &CreateKeyRequest) -> Result<(KeySpec, KeyUsage), KmsError> {
    enum_member(
        req.key_usage.as_deref(),
        "keyUsage",
        &KEY_USAGES,
        &KEY_USAGES,
    )?;
    let supported: Vec<&str> = KeySpec::ALL.iter().map(|s| s.as_str()).collect();
    enum_member(req.key_spec.as_deref(), "keySpec", &KEY_SPECS, &supported)?;
    enum_member(
        req.customer_master_key_spec.as_deref(),
        "customerMasterKeySpec",
        &KEY_SPECS,
        &supported,
    )?;
    let spec = match (
        req.key_spec.as_deref(),
        req.customer_master_key_spec.as_deref(),
    ) {
        (Some(_), Some(_)) => {
            return Err(KmsError::Validation(
                "You cannot specify KeySpec and CustomerMasterKeySpec in the same request. CustomerMasterKeySpec parameter is deprecated. Use KeySpec parameter instead."
                    .into(),
            ));
        }
        (Some(s), None) | (None, Some(s)) => KeySpec::parse(s).unwrap_or_default(),
        (None, None) => KeySpec::SymmetricDefault,
    };
    let usage = match req.key_usage.as_deref() {
        Some(u) => KeyUsage::parse(u).unwrap_or_default(),
        None => KeyUsage::EncryptDecrypt,
    };
    if !spec.usages().contains(&usage) {
        return Err(KmsError::Validation(format!(
            "KeyUsage {} is not compatible with KeySpec {}. A {} key supports KeyUsage {}.",
            usage.as_str(),
            spec.as_str(),
            spec.as_str(),
            spec.usages()
                .iter()
                .map(|u| u.as_str())
                .collect::<Vec<_>>()
                .join(" or ")
        )));
    }
    Ok((spec, usage))
}

/// The default key policy: the key's account may do everything, through its
/// root and through identity policies (AWS's default key policy).
#[must_use]
pub fn default_key_policy(account: &str) -> String {
    format!(
        r#"{{"Version":"2012-10-17","Id":"key-default-1","Statement":[{{"Sid":"Enable IAM User Permissions","Effect":"Allow","Principal":{{"AWS":"arn:aws:iam::{account}:root"}},"Action":"kms:*","Resource":"*"}}]}}"#
    )
}

/// Parses a key policy supplied by a customer.
pub(crate) fn parse_key_policy(text: &str) -> Result<PolicyDocument, KmsError> {
    api::length(text, "policy", 1, PolicyDocument::MAX_LEN)
        .map_err(|e| KmsError::MalformedPolicyDocument(e.to_string()))?;
    PolicyDocument::parse(text, PolicyKind::Resource)
        .map_err(|e| KmsError::MalformedPolicyDocument(e.to_string()))
}

impl KeyService {
    pub(crate) fn metadata(&self, key: &KeyRecord) -> KeyMetadata {
        let external = key.origin == KeyOrigin::External;
        let (enc, sign, mac, agree) = records::algorithms(key.spec, key.usage);
        KeyMetadata {
            aws_account_id: key.account.clone(),
            key_id: key.key_id(),
            arn: Self::arn(key),
            creation_date: epoch_seconds(key.created),
            enabled: key.state == KeyState::Enabled,
            description: key.description.clone(),
            key_usage: key.usage.as_str(),
            key_state: key.state.as_str(),
            deletion_date: key.deletion_date.map(epoch_seconds),
            origin: key.origin.as_str(),
            key_manager: match key.manager {
                KeyManager::Customer => "CUSTOMER",
                KeyManager::Service => "AWS",
            },
            customer_master_key_spec: key.spec.as_str(),
            key_spec: key.spec.as_str(),
            encryption_algorithms: (!enc.is_empty()).then_some(enc),
            signing_algorithms: (!sign.is_empty()).then_some(sign),
            mac_algorithms: (!mac.is_empty()).then_some(mac),
            key_agreement_algorithms: (!agree.is_empty()).then_some(agree),
            multi_region: key.multi_region.is_some(),
            multi_region_configuration: key.multi_region.as_ref().map(|m| {
                let related = |region: &String| api::MultiRegionKey {
                    arn: crate::names::mrk_arn(region, &key.account, &m.id),
                    region: region.clone(),
                };
                api::MultiRegionConfiguration {
                    multi_region_key_type: if key.is_replica() {
                        "REPLICA"
                    } else {
                        "PRIMARY"
                    },
                    primary_key: related(&m.primary),
                    replica_keys: m
                        .regions
                        .iter()
                        .filter(|r| **r != m.primary)
                        .map(related)
                        .collect(),
                }
            }),
            current_key_material_id: (key.current_version > 0)
                .then(|| key.current_material_id.clone()),
            expiration_model: (external && key.import.is_some()).then(|| {
                match key.import.as_ref().and_then(|i| i.valid_to) {
                    Some(_) => "KEY_MATERIAL_EXPIRES",
                    None => "KEY_MATERIAL_DOES_NOT_EXPIRE",
                }
            }),
            valid_to: key
                .import
                .as_ref()
                .and_then(|i| i.valid_to)
                .map(epoch_seconds),
            custom_key_store_id: key.external.as_ref().map(|e| e.store.clone()),
            xks_key_configuration: key
                .external
                .as_ref()
                .map(|e| api::XksKeyConfiguration { id: e.key.clone() }),
            external_key_status: self.external_status(key),
        }
    }

    /// Stores a new key (record, owner index, policy). Material, if any, is
    /// the caller's business. The owner index of a multi-Region key holds
    /// its `mrk-` id (ListKeys shows it), and the key is indexed by that id
    /// in its region.
    pub(crate) fn insert_key(
        tx: &mut dyn WriteTx,
        key: &KeyRecord,
        policy: &str,
    ) -> Result<(), KmsError> {
        records::put(tx, records::KEYS, key.id.as_bytes(), key)?;
        let shown = match &key.multi_region {
            Some(m) => {
                tx.put(
                    records::MULTI_REGION_KEYS,
                    &records::multi_region_key(&m.id, &key.region),
                    key.id.as_bytes(),
                )?;
                key.key_id().into_bytes()
            }
            None => Vec::new(),
        };
        tx.put(
            records::KEYS_BY_OWNER,
            &records::owner_key(&key.region, &key.account, &key.id),
            &shown,
        )?;
        tx.put(records::KEY_POLICIES, key.id.as_bytes(), policy.as_bytes())?;
        Ok(())
    }

    /// A new key record with no material yet.
    pub(crate) fn new_key_record(
        &self,
        account: &str,
        region: &str,
        description: String,
        origin: KeyOrigin,
        tags: Vec<(String, String)>,
    ) -> KeyRecord {
        KeyRecord {
            v: 1,
            id: Uuid::new_v4(),
            account: account.to_owned(),
            region: region.to_owned(),
            created: self.now_ms(),
            description,
            state: match origin {
                KeyOrigin::AwsKms | KeyOrigin::ExternalKms => KeyState::Enabled,
                KeyOrigin::External => KeyState::PendingImport,
            },
            deletion_date: None,
            current_version: 0,
            current_material_id: String::new(),
            rotation: None,
            on_demand_rotations: 0,
            tags,
            origin,
            manager: KeyManager::Customer,
            service: None,
            policy_version: 0,
            import: None,
            state_after_import: None,
            external: None,
            spec: KeySpec::SymmetricDefault,
            usage: KeyUsage::EncryptDecrypt,
            multi_region: None,
        }
    }

    /// CreateKey.
    pub fn create_key(
        &self,
        call: &Call<'_>,
        req: CreateKeyRequest,
    ) -> Result<KeyMetadataResponse, KmsError> {
        let caller = call.caller;
        let (spec, usage) = spec_and_usage(&req)?;
        let description = req.description.unwrap_or_default();
        api::length(&description, "description", 0, 8192)?;
        enum_member(
            req.origin.as_deref(),
            "origin",
            &ORIGINS,
            &["AWS_KMS", "EXTERNAL", "EXTERNAL_KMS"],
        )?;
        let external = match (
            req.origin.as_deref(),
            req.custom_key_store_id,
            req.xks_key_id,
        ) {
            (Some("EXTERNAL_KMS"), Some(store), Some(remote)) => {
                api::length(&store, "customKeyStoreId", 1, 64)?;
                api::length(&remote, "xksKeyId", 1, 128)?;
                Some(records::ExternalKey { store, key: remote })
            }
            (Some("EXTERNAL_KMS"), None, _) => {
                return Err(KmsError::Validation(
                    "A key with Origin EXTERNAL_KMS needs a CustomKeyStoreId (the key provider)."
                        .into(),
                ));
            }
            (Some("EXTERNAL_KMS"), Some(_), None) => {
                return Err(KmsError::Validation(
                    "A key with Origin EXTERNAL_KMS needs an XksKeyId (the key at the provider)."
                        .into(),
                ));
            }
            (_, None, None) => None,
            (_, _, _) => {
                return Err(KmsError::UnsupportedOperation(
                    "atrest's custom key stores are external key stores: CustomKeyStoreId and XksKeyId need Origin EXTERNAL_KMS."
                        .into(),
                ));
            }
        };
        let origin = match req.origin.as_deref() {
            Some("EXTERNAL") => KeyOrigin::External,
            Some("EXTERNAL_KMS") => KeyOrigin::ExternalKms,
            _ => KeyOrigin::AwsKms,
        };
        let multi_region = req.multi_region == Some(true);
        if multi_region {
            super::multi_region::check_new(origin)?;
        }
        // AWS imports symmetric, HMAC, RSA and ECDSA (NIST, secp256k1)
        // material; Ed25519 and ML-DSA keys are only ever generated.
        let importable = !matches!(
            spec,
            KeySpec::EccNistEdwards25519 | KeySpec::MlDsa44 | KeySpec::MlDsa65 | KeySpec::MlDsa87
        );
        let allowed = match origin {
            KeyOrigin::AwsKms => true,
            KeyOrigin::External => importable,
            KeyOrigin::ExternalKms => spec == KeySpec::SymmetricDefault,
        };
        if !allowed {
            return Err(KmsError::UnsupportedOperation(format!(
                "Origin {} is not supported for KeySpec {}.",
                origin.as_str(),
                spec.as_str()
            )));
        }
        let tags = super::tags::validate_tags(req.tags.unwrap_or_default(), Vec::new())?;
        if let Some(ext) = &external {
            // Authorize before calling anyone else's KMS on the caller's word.
            let tx = self.store.read()?;
            self.authorize_identity(&*tx, call, "CreateKey", "*")?;
            self.require_not_suspended(&*tx, caller.account.as_str())?;
            drop(tx);
            self.check_new_external(&ext.store, &ext.key)?;
        }
        let mut tx = self.store.write()?;
        self.authorize_identity(&*tx, call, "CreateKey", "*")?;
        self.require_not_suspended(&*tx, caller.account.as_str())?;
        let mut key = self.new_key_record(
            caller.account.as_str(),
            &caller.region,
            description,
            origin,
            tags,
        );
        key.spec = spec;
        key.usage = usage;
        if multi_region {
            key.multi_region = Some(records::MultiRegion {
                id: Uuid::new_v4(),
                primary: key.region.clone(),
                regions: vec![key.region.clone()],
                pending_window_days: None,
            });
        }
        call.set_key(Self::arn(&key));
        let policy = match req.policy {
            Some(text) => {
                let doc = parse_key_policy(&text)?;
                if req.bypass_policy_lockout_safety_check != Some(true) {
                    self.lockout_check(&*tx, call, &Self::arn(&key), &doc)?;
                }
                text
            }
            None => default_key_policy(caller.account.as_str()),
        };
        // An external key also has atrest material: a blob needs both it and
        // the provider's unwrap (double encryption).
        if matches!(origin, KeyOrigin::AwsKms | KeyOrigin::ExternalKms) {
            key.current_material_id = self.add_version(
                &mut *tx,
                &key.id,
                key.spec,
                1,
                VersionOrigin::Initial,
                key.created,
            )?;
            key.current_version = 1;
        }
        key.external = external;
        Self::insert_key(&mut *tx, &key, &policy)?;
        self.commit(tx, call)?;
        if key.external.is_some() {
            self.note_usable(key.id);
        }
        Ok(KeyMetadataResponse {
            key_metadata: self.metadata(&key),
        })
    }

    /// DescribeKey.
    pub fn describe_key(
        &self,
        call: &Call<'_>,
        req: KeyIdRequest,
    ) -> Result<KeyMetadataResponse, KmsError> {
        let key_ref = KeyRef::parse(&api::required(req.key_id, "keyId")?)?;
        let tx = self.store.read()?;
        self.check_grant_tokens(req.grant_tokens.as_deref())?;
        let key = self.resolve(&*tx, call, &key_ref)?;
        let alias = key_ref.alias_name();
        self.authorize_key(
            &*tx,
            call,
            "DescribeKey",
            &key,
            &super::authz::Facts {
                request_alias: alias.as_deref(),
                ..Default::default()
            },
        )?;
        Ok(KeyMetadataResponse {
            key_metadata: self.metadata(&key),
        })
    }

    /// ListKeys.
    pub fn list_keys(&self, call: &Call<'_>, req: ListKeysRequest) -> Result<Page<Keys>, KmsError> {
        let caller = call.caller;
        let size = pagination::page_size(req.limit, 100, 1000)?;
        let after = pagination::decode(Listing::Keys, req.marker.as_deref())?;
        let prefix = records::owner_prefix(&caller.region, caller.account.as_str());
        let after_key = after.map(|a| {
            let mut k = prefix.clone();
            k.extend_from_slice(&a);
            k
        });
        let tx = self.store.read()?;
        self.authorize_identity(&*tx, call, "ListKeys", "*")?;
        let rows = tx.scan(
            records::KEYS_BY_OWNER,
            &prefix,
            after_key.as_deref(),
            size + 1,
        )?;
        // The value is a multi-Region key's `mrk-` id, empty for others.
        let ids: Vec<(Uuid, Vec<u8>)> = rows
            .into_iter()
            .filter_map(|(k, v)| {
                k.get(prefix.len()..)
                    .and_then(|b| Uuid::from_slice(b).ok())
                    .map(|id| (id, v))
            })
            .collect();
        let (ids, next) =
            pagination::finish(Listing::Keys, ids, size, |(id, _)| id.as_bytes().to_vec());
        Ok(Page {
            truncated: next.is_some(),
            next_marker: next,
            items: Keys {
                keys: ids
                    .iter()
                    .map(|(id, shown)| match std::str::from_utf8(shown) {
                        Ok(mrk) if !mrk.is_empty() => KeyListEntry {
                            key_arn: format!(
                                "arn:aws:kms:{}:{}:key/{mrk}",
                                caller.region, caller.account
                            ),
                            key_id: mrk.to_owned(),
                        },
                        _ => KeyListEntry {
                            key_id: id.to_string(),
                            key_arn: key_arn(&caller.region, caller.account.as_str(), id),
                        },
                    })
                    .collect(),
            },
        })
    }

    /// Runs `change` on a key named by a key id or key ARN, inside one write
    /// transaction, after authorizing `action`; stores the result and commits
    /// (with the audit record made durable first).
    pub(crate) fn update_key<T>(
        &self,
        call: &Call<'_>,
        key_id: Option<String>,
        action: &str,
        change: impl FnOnce(&Self, &mut KeyRecord, &mut dyn WriteTx, i64) -> Result<T, KmsError>,
    ) -> Result<T, KmsError> {
        let mut tx = self.store.write()?;
        let mut key = self.resolve_for_management(&*tx, call, key_id)?;
        self.authorize_key(&*tx, call, action, &key, &super::authz::Facts::default())?;
        let now = self.now_ms();
        let out = change(self, &mut key, &mut *tx, now)?;
        records::put(&mut *tx, records::KEYS, key.id.as_bytes(), &key)?;
        self.commit(tx, call)?;
        Ok(out)
    }

    /// UpdateKeyDescription.
    pub fn update_key_description(
        &self,
        call: &Call<'_>,
        req: UpdateKeyDescriptionRequest,
    ) -> Result<Empty, KmsError> {
        let description = api::required(req.description, "description")?;
        api::length(&description, "description", 0, 8192)?;
        self.update_key(call, req.key_id, "UpdateKeyDescription", |_, key, _, _| {
            Self::require_not_pending_deletion(key)?;
            Self::require_customer_managed(key, "change the description of")?;
            key.description = description;
            Ok(Empty {})
        })
    }

    /// EnableKey.
    pub fn enable_key(&self, call: &Call<'_>, req: KeyIdRequest) -> Result<Empty, KmsError> {
        self.update_key(call, req.key_id, "EnableKey", |_, key, _, _| {
            Self::require_not_pending_deletion(key)?;
            Self::require_customer_managed(key, "enable or disable")?;
            if key.state == KeyState::PendingImport {
                return Err(Self::pending_import(key));
            }
            key.state = KeyState::Enabled;
            Ok(Empty {})
        })
    }

    /// DisableKey.
    pub fn disable_key(&self, call: &Call<'_>, req: KeyIdRequest) -> Result<Empty, KmsError> {
        self.update_key(call, req.key_id, "DisableKey", |_, key, _, _| {
            Self::require_not_pending_deletion(key)?;
            Self::require_customer_managed(key, "enable or disable")?;
            if key.state == KeyState::PendingImport {
                return Err(Self::pending_import(key));
            }
            key.state = KeyState::Disabled;
            Ok(Empty {})
        })
    }

    /// ScheduleKeyDeletion.
    pub fn schedule_key_deletion(
        &self,
        call: &Call<'_>,
        req: ScheduleKeyDeletionRequest,
    ) -> Result<ScheduleKeyDeletionResponse, KmsError> {
        let days = match req.pending_window_in_days {
            None => 30,
            Some(d) => api::in_range(d, "pendingWindowInDays", 7, 30)?,
        };
        self.update_key(
            call,
            req.key_id,
            "ScheduleKeyDeletion",
            |svc, key, tx, now| {
                Self::require_not_pending_deletion(key)?;
                Self::require_customer_managed(key, "schedule deletion of")?;
                if svc.has_replicas(key) {
                    // AWS: a primary key waits for its replicas to go; its
                    // waiting period starts when the last one is deleted.
                    key.state = KeyState::PendingReplicaDeletion;
                    key.deletion_date = None;
                    if let Some(m) = &mut key.multi_region {
                        m.pending_window_days = Some(days);
                    }
                    return Ok(ScheduleKeyDeletionResponse {
                        key_id: Self::arn(key),
                        deletion_date: None,
                        key_state: key.state.as_str(),
                        pending_window_in_days: days,
                    });
                }
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
                    deletion_date: Some(epoch_seconds(when)),
                    key_state: "PendingDeletion",
                    pending_window_in_days: days,
                })
            },
        )
    }

    /// CancelKeyDeletion. The key comes back Disabled, as in AWS (or
    /// PendingImport if it has no key material).
    pub fn cancel_key_deletion(
        &self,
        call: &Call<'_>,
        req: KeyIdRequest,
    ) -> Result<KeyIdResponse, KmsError> {
        self.update_key(call, req.key_id, "CancelKeyDeletion", |_, key, tx, _| {
            if key.state == KeyState::PendingReplicaDeletion {
                key.state = KeyState::Disabled;
                if let Some(m) = &mut key.multi_region {
                    m.pending_window_days = None;
                }
                return Ok(KeyIdResponse {
                    key_id: Self::arn(key),
                });
            }
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
            key.state = if key.current_version == 0 {
                KeyState::PendingImport
            } else {
                KeyState::Disabled
            };
            key.deletion_date = None;
            Ok(KeyIdResponse {
                key_id: Self::arn(key),
            })
        })
    }
}
