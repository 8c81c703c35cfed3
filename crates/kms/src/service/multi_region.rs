//! Multi-Region keys: CreateKey with `MultiRegion`, ReplicateKey,
//! UpdatePrimaryRegion, and keeping the shared properties of related keys
//! equal.
//!
//! A multi-Region key is one [`KeyRecord`] per region that holds it, each
//! with its own internal `id` (its policy, grants, aliases, tags, state and
//! deletion schedule are keyed by it, as for any key) and the same
//! [`records::MultiRegion`]: the shared id customers see (`mrk-...`, also the
//! key id in ciphertext blobs), the primary's region and every region's
//! name. Each record holds its own copy of every version of the material,
//! sealed under its own id, so a region's record and material are complete
//! on their own: a blob made in one region decrypts in another, and deleting
//! one region's key deletes its own rows only.
//!
//! Shared properties (the material and its versions, the rotation schedule,
//! the primary's region and the list of regions) change on the primary and
//! are copied to every replica in the same transaction
//! ([`KeyService::sync_replicas`]).

use serde::{Deserialize, Serialize};
use time::Duration;

use super::authz::Facts;
use super::{Call, Caller, KeyService};
use crate::KmsError;
use crate::api::{self, KeyMetadata, Tag};
use crate::clock::{from_millis, to_millis};
use crate::names::{KeyRef, valid_region};
use crate::records::{self, DueKind, KeyOrigin, KeyRecord, KeyState, VersionRecord};
use atrest_store::WriteTx;

/// ReplicateKey.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ReplicateKeyRequest {
    /// The primary key: key id or key ARN.
    pub key_id: Option<String>,
    /// Where the replica goes.
    pub replica_region: Option<String>,
    /// The replica's key policy (default: the default key policy).
    pub policy: Option<String>,
    /// Skip the lockout safety check of `policy`.
    pub bypass_policy_lockout_safety_check: Option<bool>,
    /// The replica's description.
    pub description: Option<String>,
    /// The replica's tags.
    pub tags: Option<Vec<Tag>>,
}

/// ReplicateKey's response.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ReplicateKeyResponse {
    /// The new replica.
    pub replica_key_metadata: KeyMetadata,
    /// Its key policy.
    pub replica_policy: String,
    /// Its tags.
    pub replica_tags: Vec<Tag>,
}

/// UpdatePrimaryRegion.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UpdatePrimaryRegionRequest {
    /// The current primary key: key id or key ARN.
    pub key_id: Option<String>,
    /// The region of the replica that becomes the primary.
    pub primary_region: Option<String>,
}

/// Checks that a new key of `origin` can be multi-Region.
pub(crate) fn check_new(origin: KeyOrigin) -> Result<(), KmsError> {
    match origin {
        KeyOrigin::AwsKms => Ok(()),
        // AWS: custom key stores cannot hold multi-Region keys.
        KeyOrigin::ExternalKms => Err(KmsError::UnsupportedOperation(
            "Multi-Region keys cannot be created in a custom key store (Origin EXTERNAL_KMS)."
                .into(),
        )),
        // AWS allows it (the same material imported into every related
        // key); atrest does not yet.
        KeyOrigin::External => Err(KmsError::UnsupportedOperation(
            "atrest does not support multi-Region keys with imported key material (Origin EXTERNAL)."
                .into(),
        )),
    }
}

impl KeyService {
    /// Whether `key` is a multi-Region primary key with replicas.
    pub(crate) fn has_replicas(&self, key: &KeyRecord) -> bool {
        key.multi_region
            .as_ref()
            .is_some_and(|m| !key.is_replica() && m.regions.len() > 1)
    }

    /// Fails for a multi-Region replica: `what` is done on the primary.
    pub(crate) fn require_primary(key: &KeyRecord, what: &str) -> Result<(), KmsError> {
        match &key.multi_region {
            Some(m) if key.is_replica() => Err(KmsError::UnsupportedOperation(format!(
                "{} is a multi-Region replica key; {what} is done on its primary key, {}.",
                Self::arn(key),
                crate::names::mrk_arn(&m.primary, &key.account, &m.id)
            ))),
            _ => Ok(()),
        }
    }

    /// Copies the shared properties of the multi-Region key `from` (with
    /// any versions of its material the others lack) to every other region's
    /// record of it. The caller stores `from` itself.
    pub(crate) fn sync_replicas(
        &self,
        tx: &mut dyn WriteTx,
        from: &KeyRecord,
    ) -> Result<(), KmsError> {
        let Some(m) = &from.multi_region else {
            return Ok(());
        };
        for region in m.regions.iter().filter(|r| **r != from.region) {
            let Some(mut other) = self.multi_region_record(&*tx, &m.id, region)? else {
                return Err(KmsError::Internal(format!(
                    "{} lists region {region}, which has no record of it",
                    Self::arn(from)
                )));
            };
            self.copy_versions(tx, from, &other, other.current_version + 1)?;
            other.current_version = from.current_version;
            other
                .current_material_id
                .clone_from(&from.current_material_id);
            other.rotation = from.rotation;
            other.on_demand_rotations = from.on_demand_rotations;
            let own_window = other
                .multi_region
                .as_ref()
                .and_then(|o| o.pending_window_days);
            other.multi_region = Some(records::MultiRegion {
                pending_window_days: own_window,
                ..m.clone()
            });
            records::put(tx, records::KEYS, other.id.as_bytes(), &other)?;
        }
        Ok(())
    }

    /// Copies versions `first..=from.current_version` of `from`'s material
    /// to `to`, sealed under `to`'s id.
    fn copy_versions(
        &self,
        tx: &mut dyn WriteTx,
        from: &KeyRecord,
        to: &KeyRecord,
        first: u32,
    ) -> Result<(), KmsError> {
        for version in first..=from.current_version {
            let Some(rec): Option<VersionRecord> = records::get(
                &*tx,
                records::VERSIONS,
                &records::version_key(&from.id, version),
            )?
            else {
                continue;
            };
            let secret = self
                .root
                .open(&super::material_aad(&from.id, version), &rec.sealed)
                .map_err(|_| {
                    KmsError::Internal(format!(
                        "key material of {} version {version} does not unseal",
                        Self::arn(from)
                    ))
                })?;
            let sealed = self
                .root
                .seal(&super::material_aad(&to.id, version), secret.expose())?;
            records::put(
                tx,
                records::VERSIONS,
                &records::version_key(&to.id, version),
                &VersionRecord { sealed, ..rec },
            )?;
        }
        Ok(())
    }

    /// After `key`, one region's record of a multi-Region key, was deleted
    /// (in `tx`): drops it from the index and from every other record's list
    /// of regions; a primary key waiting for its replicas starts its own
    /// waiting period when the last is gone.
    pub(crate) fn forget_region(
        &self,
        tx: &mut dyn WriteTx,
        key: &KeyRecord,
        now: i64,
    ) -> Result<(), KmsError> {
        let Some(m) = &key.multi_region else {
            return Ok(());
        };
        tx.delete(
            records::MULTI_REGION_KEYS,
            &records::multi_region_key(&m.id, &key.region),
        )?;
        let regions: Vec<String> = m
            .regions
            .iter()
            .filter(|r| **r != key.region)
            .cloned()
            .collect();
        let Some(first) = regions.first() else {
            return Ok(());
        };
        // The primary is deleted last (it waits for its replicas), so it is
        // still there; should it not be, the oldest replica takes its place.
        let primary_region = if m.primary == key.region {
            first.clone()
        } else {
            m.primary.clone()
        };
        let Some(mut primary) = self.multi_region_record(&*tx, &m.id, &primary_region)? else {
            return Err(KmsError::Internal(format!(
                "{} has no record in its primary region {primary_region}",
                Self::arn(key)
            )));
        };
        let own_window = primary
            .multi_region
            .as_ref()
            .and_then(|p| p.pending_window_days);
        primary.multi_region = Some(records::MultiRegion {
            id: m.id,
            primary: primary_region,
            regions,
            pending_window_days: own_window,
        });
        if primary.state == KeyState::PendingReplicaDeletion && !self.has_replicas(&primary) {
            let days = own_window.unwrap_or(30);
            let when = to_millis(from_millis(now) + Duration::days(i64::from(days)));
            primary.state = KeyState::PendingDeletion;
            primary.deletion_date = Some(when);
            if let Some(pm) = &mut primary.multi_region {
                pm.pending_window_days = None;
            }
            tx.put(
                records::DUE,
                &records::due_key(when, DueKind::Deletion, &primary.id),
                b"",
            )?;
            tracing::info!(key = %Self::arn(&primary), "the last replica is deleted; the primary key's waiting period starts");
        }
        records::put(tx, records::KEYS, primary.id.as_bytes(), &primary)?;
        self.sync_replicas(tx, &primary)
    }

    /// ReplicateKey.
    pub fn replicate_key(
        &self,
        call: &Call<'_>,
        req: ReplicateKeyRequest,
    ) -> Result<ReplicateKeyResponse, KmsError> {
        let caller = call.caller;
        let raw = api::required(req.key_id, "keyId")?;
        let region = api::required(req.replica_region, "replicaRegion")?;
        api::length(&region, "replicaRegion", 1, 32)?;
        if !valid_region(&region) {
            return Err(KmsError::constraint(
                "replicaRegion",
                &region,
                "Member must satisfy regular expression pattern: ^([a-z]+-){2,3}\\d+$",
            ));
        }
        let description = req.description.unwrap_or_default();
        api::length(&description, "description", 0, 8192)?;
        let key_ref = KeyRef::parse(&raw)?;
        if key_ref.is_alias() {
            return Err(KmsError::NotFound(format!(
                "Invalid keyId '{raw}': this operation takes a key ID or key ARN, not an alias"
            )));
        }
        let mut tx = self.store.write()?;
        let mut primary = self.resolve(&*tx, call, &key_ref)?;
        let facts = [("kms:ReplicaRegion", region.as_str())];
        self.authorize_key(
            &*tx,
            call,
            "ReplicateKey",
            &primary,
            &Facts {
                more: &facts,
                ..Facts::default()
            },
        )?;
        // AWS: kms:CreateKey (and kms:TagResource for tags) in an identity
        // policy, evaluated in the replica's region.
        let replica_caller = Caller {
            region: region.clone(),
            ..caller.clone()
        };
        let replica_call = Call::new(&replica_caller, call.meta);
        self.authorize_identity(&*tx, &replica_call, "CreateKey", "*")?;
        if req.tags.as_ref().is_some_and(|t| !t.is_empty()) {
            self.authorize_identity(&*tx, &replica_call, "TagResource", "*")?;
        }
        let Some(m) = primary.multi_region.clone() else {
            return Err(KmsError::UnsupportedOperation(format!(
                "{} is not a multi-Region key; only multi-Region primary keys can be replicated.",
                Self::arn(&primary)
            )));
        };
        if primary.is_replica() {
            return Err(KmsError::UnsupportedOperation(format!(
                "{} is a multi-Region replica key; only its primary key, {}, can be replicated.",
                Self::arn(&primary),
                crate::names::mrk_arn(&m.primary, &primary.account, &m.id)
            )));
        }
        Self::require_not_pending_deletion(&primary)?;
        if !self.regions.contains(&region) {
            return Err(KmsError::UnsupportedOperation(format!(
                "This server does not serve region '{region}'; it serves {}.",
                self.regions.join(", ")
            )));
        }
        if m.regions.contains(&region) {
            return Err(KmsError::AlreadyExists(format!(
                "Multi-Region key {} already has a {} in region {region}.",
                Self::arn(&primary),
                if region == m.primary {
                    "primary key"
                } else {
                    "replica key"
                }
            )));
        }
        self.require_not_suspended(&*tx, caller.account.as_str())?;
        let tags = super::tags::validate_tags(req.tags.unwrap_or_default(), Vec::new())?;
        let mut replica =
            self.new_key_record(&primary.account, &region, description, primary.origin, tags);
        replica.spec = primary.spec;
        replica.usage = primary.usage;
        replica.state = KeyState::Enabled;
        let mut shared = m.clone();
        shared.regions.push(region.clone());
        shared.pending_window_days = None;
        replica.multi_region = Some(shared.clone());
        let replica_arn = Self::arn(&replica);
        let policy = match req.policy {
            Some(text) => {
                let doc = super::keys::parse_key_policy(&text)?;
                if req.bypass_policy_lockout_safety_check != Some(true) {
                    self.lockout_check(&*tx, &replica_call, &replica_arn, &doc)?;
                }
                text
            }
            None => super::keys::default_key_policy(&primary.account),
        };
        Self::insert_key(&mut *tx, &replica, &policy)?;
        primary.multi_region = Some(records::MultiRegion {
            pending_window_days: m.pending_window_days,
            ..shared
        });
        records::put(&mut *tx, records::KEYS, primary.id.as_bytes(), &primary)?;
        // Copies the material and rotation to the new replica (and the new
        // list of regions to every replica).
        self.sync_replicas(&mut *tx, &primary)?;
        let replica = self
            .multi_region_record(&*tx, &m.id, &region)?
            .ok_or_else(|| KmsError::Internal("the new replica is missing".into()))?;
        call.set_key(Self::arn(&primary));
        self.commit(tx, call)?;
        Ok(ReplicateKeyResponse {
            replica_key_metadata: self.metadata(&replica),
            replica_policy: policy,
            replica_tags: replica
                .tags
                .iter()
                .map(|(k, v)| Tag {
                    tag_key: Some(k.clone()),
                    tag_value: Some(v.clone()),
                })
                .collect(),
        })
    }

    /// UpdatePrimaryRegion: the replica in `PrimaryRegion` becomes the
    /// primary key, the primary a replica. Automatic rotation, scheduled on
    /// the primary, moves with it.
    pub fn update_primary_region(
        &self,
        call: &Call<'_>,
        req: UpdatePrimaryRegionRequest,
    ) -> Result<api::Empty, KmsError> {
        let caller = call.caller;
        let raw = api::required(req.key_id, "keyId")?;
        let region = api::required(req.primary_region, "primaryRegion")?;
        api::length(&region, "primaryRegion", 1, 32)?;
        if !valid_region(&region) {
            return Err(KmsError::constraint(
                "primaryRegion",
                &region,
                "Member must satisfy regular expression pattern: ^([a-z]+-){2,3}\\d+$",
            ));
        }
        let key_ref = KeyRef::parse(&raw)?;
        if key_ref.is_alias() {
            return Err(KmsError::NotFound(format!(
                "Invalid keyId '{raw}': this operation takes a key ID or key ARN, not an alias"
            )));
        }
        let mut tx = self.store.write()?;
        let mut primary = self.resolve(&*tx, call, &key_ref)?;
        let facts = [("kms:PrimaryRegion", region.as_str())];
        let facts = Facts {
            more: &facts,
            ..Facts::default()
        };
        self.authorize_key(&*tx, call, "UpdatePrimaryRegion", &primary, &facts)?;
        let Some(m) = primary.multi_region.clone() else {
            return Err(KmsError::UnsupportedOperation(format!(
                "{} is not a multi-Region key.",
                Self::arn(&primary)
            )));
        };
        if primary.is_replica() {
            return Err(KmsError::UnsupportedOperation(format!(
                "{} is a multi-Region replica key; call UpdatePrimaryRegion on its primary key, {}.",
                Self::arn(&primary),
                crate::names::mrk_arn(&m.primary, &primary.account, &m.id)
            )));
        }
        Self::require_not_pending_deletion(&primary)?;
        if region == primary.region {
            // Already the primary: nothing to change.
            call.set_key(Self::arn(&primary));
            self.commit(tx, call)?;
            return Ok(api::Empty {});
        }
        let Some(mut replica) = self.multi_region_record(&*tx, &m.id, &region)? else {
            return Err(KmsError::NotFound(format!(
                "Multi-Region key {} has no replica key in region {region}.",
                Self::arn(&primary)
            )));
        };
        // AWS: kms:UpdatePrimaryRegion on the replica too, in its region.
        let replica_caller = Caller {
            region: region.clone(),
            ..caller.clone()
        };
        let replica_call = Call::new(&replica_caller, call.meta);
        self.authorize_key(&*tx, &replica_call, "UpdatePrimaryRegion", &replica, &facts)?;
        Self::require_not_pending_deletion(&replica)?;
        if replica.state == KeyState::PendingImport {
            return Err(Self::pending_import(&replica));
        }
        self.require_not_suspended(&*tx, caller.account.as_str())?;
        let mut regions = vec![region.clone()];
        regions.extend(m.regions.iter().filter(|r| **r != region).cloned());
        let shared = records::MultiRegion {
            id: m.id,
            primary: region.clone(),
            regions,
            pending_window_days: None,
        };
        if let Some(r) = primary.rotation {
            tx.delete(
                records::DUE,
                &records::due_key(r.next, DueKind::Rotation, &primary.id),
            )?;
            tx.put(
                records::DUE,
                &records::due_key(r.next, DueKind::Rotation, &replica.id),
                b"",
            )?;
        }
        primary.multi_region = Some(shared.clone());
        replica.multi_region = Some(shared);
        replica.rotation = primary.rotation;
        records::put(&mut *tx, records::KEYS, primary.id.as_bytes(), &primary)?;
        records::put(&mut *tx, records::KEYS, replica.id.as_bytes(), &replica)?;
        self.sync_replicas(&mut *tx, &replica)?;
        call.set_key(Self::arn(&primary));
        self.commit(tx, call)?;
        Ok(api::Empty {})
    }
}
