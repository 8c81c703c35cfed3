//! EnableKeyRotation, DisableKeyRotation, GetKeyRotationStatus,
//! RotateKeyOnDemand, ListKeyRotations.
//!
//! Rotation adds a key version; the key id never changes, new ciphertexts use
//! the newest version, and every older version keeps decrypting.

use super::authz::Facts;
use super::pagination::{self, Listing};
use super::{Call, KeyService};
use crate::KmsError;
use crate::api::{
    self, Empty, EnableKeyRotationRequest, KeyIdRequest, KeyIdResponse, ListForKeyRequest, Page,
    RotationEntry, RotationStatusResponse, Rotations,
};
use crate::clock::epoch_seconds;
use crate::records::{self, DueKind, KeyRecord, KeyState, Rotation, VersionOrigin, VersionRecord};

/// On-demand rotations a key may have (AWS's quota).
pub const MAX_ON_DEMAND_ROTATIONS: u32 = 25;
/// Default automatic rotation period.
pub const DEFAULT_PERIOD_DAYS: u32 = 365;

const DAY_MS: i64 = 86_400_000;

fn require_rotatable(key: &KeyRecord) -> Result<(), KmsError> {
    match key.state {
        KeyState::Enabled => Ok(()),
        KeyState::Disabled => Err(KmsError::Disabled(format!(
            "{} is disabled.",
            KeyService::arn(key)
        ))),
        KeyState::PendingDeletion | KeyState::PendingReplicaDeletion => {
            Err(KeyService::pending_deletion(key))
        }
        KeyState::PendingImport => Err(KeyService::pending_import(key)),
    }
}

/// Only symmetric encryption keys rotate (as in AWS KMS): rotating an
/// asymmetric or HMAC key would change its public key or its MACs.
fn require_symmetric(key: &KeyRecord) -> Result<(), KmsError> {
    if key.spec != records::KeySpec::SymmetricDefault {
        return Err(KmsError::UnsupportedOperation(format!(
            "{} has KeySpec {}; only symmetric encryption keys (SYMMETRIC_DEFAULT) support key rotation.",
            KeyService::arn(key),
            key.spec.as_str()
        )));
    }
    Ok(())
}

fn require_generated(key: &KeyRecord) -> Result<(), KmsError> {
    require_symmetric(key)?;
    if key.origin == records::KeyOrigin::External {
        return Err(KmsError::UnsupportedOperation(format!(
            "{} has imported key material; atrest does not rotate imported material.",
            KeyService::arn(key)
        )));
    }
    if key.origin == records::KeyOrigin::ExternalKms {
        return Err(KmsError::UnsupportedOperation(format!(
            "{} is held in a custom key store; rotate the key at its provider (atrest needs no change).",
            KeyService::arn(key)
        )));
    }
    Ok(())
}

impl KeyService {
    /// EnableKeyRotation. Re-enabling with another period moves the next
    /// rotation to the last rotation plus the new period.
    pub fn enable_key_rotation(
        &self,
        call: &Call<'_>,
        req: EnableKeyRotationRequest,
    ) -> Result<Empty, KmsError> {
        let period = match req.rotation_period_in_days {
            None => DEFAULT_PERIOD_DAYS,
            Some(d) => api::in_range(d, "rotationPeriodInDays", 90, 2560)?,
        };
        self.update_key(
            call,
            req.key_id,
            "EnableKeyRotation",
            |svc, key, tx, now| {
                require_generated(key)?;
                Self::require_primary(key, "automatic rotation")?;
                require_rotatable(key)?;
                let next = match key.rotation {
                    Some(old) => {
                        tx.delete(
                            records::DUE,
                            &records::due_key(old.next, DueKind::Rotation, &key.id),
                        )?;
                        let anchor = old.next - i64::from(old.period_days) * DAY_MS;
                        (anchor + i64::from(period) * DAY_MS).max(now)
                    }
                    None => now + i64::from(period) * DAY_MS,
                };
                key.rotation = Some(Rotation {
                    period_days: period,
                    next,
                });
                tx.put(
                    records::DUE,
                    &records::due_key(next, DueKind::Rotation, &key.id),
                    b"",
                )?;
                svc.sync_replicas(tx, key)?;
                Ok(Empty {})
            },
        )
    }

    /// DisableKeyRotation.
    pub fn disable_key_rotation(
        &self,
        call: &Call<'_>,
        req: KeyIdRequest,
    ) -> Result<Empty, KmsError> {
        self.update_key(call, req.key_id, "DisableKeyRotation", |svc, key, tx, _| {
            require_generated(key)?;
            Self::require_primary(key, "automatic rotation")?;
            require_rotatable(key)?;
            if let Some(old) = key.rotation.take() {
                tx.delete(
                    records::DUE,
                    &records::due_key(old.next, DueKind::Rotation, &key.id),
                )?;
            }
            svc.sync_replicas(tx, key)?;
            Ok(Empty {})
        })
    }

    /// GetKeyRotationStatus.
    pub fn get_key_rotation_status(
        &self,
        call: &Call<'_>,
        req: KeyIdRequest,
    ) -> Result<RotationStatusResponse, KmsError> {
        let tx = self.store.read()?;
        let key = self.resolve_for_management(&*tx, call, req.key_id)?;
        self.authorize_key(&*tx, call, "GetKeyRotationStatus", &key, &Facts::default())?;
        require_symmetric(&key)?;
        Ok(RotationStatusResponse {
            key_rotation_enabled: key.rotation.is_some(),
            // AWS answers the bare key id here (and the ARN elsewhere).
            key_id: key.id.to_string(),
            rotation_period_in_days: key.rotation.map(|r| r.period_days),
            next_rotation_date: key.rotation.map(|r| epoch_seconds(r.next)),
        })
    }

    /// Adds a version to `key` and makes it current.
    pub(crate) fn rotate(
        &self,
        key: &mut KeyRecord,
        tx: &mut dyn atrest_store::WriteTx,
        origin: VersionOrigin,
        now: i64,
    ) -> Result<(), KmsError> {
        let version = key.current_version.checked_add(1).ok_or_else(|| {
            KmsError::LimitExceeded(format!("{} has no more versions", Self::arn(key)))
        })?;
        key.current_material_id = self.add_version(tx, &key.id, key.spec, version, origin, now)?;
        key.current_version = version;
        Ok(())
    }

    /// RotateKeyOnDemand: rotates now, independent of automatic rotation.
    pub fn rotate_key_on_demand(
        &self,
        call: &Call<'_>,
        req: KeyIdRequest,
    ) -> Result<KeyIdResponse, KmsError> {
        self.update_key(call, req.key_id, "RotateKeyOnDemand", |svc, key, tx, now| {
            if key.origin == records::KeyOrigin::External {
                require_symmetric(key)?;
                require_rotatable(key)?;
                if key.on_demand_rotations >= MAX_ON_DEMAND_ROTATIONS {
                    return Err(KmsError::LimitExceeded(format!(
                        "{} has reached the limit of {MAX_ON_DEMAND_ROTATIONS} on-demand rotations.",
                        Self::arn(key)
                    )));
                }
                svc.rotate_to_imported(key, tx, now)?;
                key.on_demand_rotations += 1;
                return Ok(KeyIdResponse {
                    key_id: Self::arn(key),
                });
            }
            require_generated(key)?;
            Self::require_primary(key, "rotation")?;
            require_rotatable(key)?;
            if key.on_demand_rotations >= MAX_ON_DEMAND_ROTATIONS {
                return Err(KmsError::LimitExceeded(format!(
                    "{} has reached the limit of {MAX_ON_DEMAND_ROTATIONS} on-demand rotations.",
                    Self::arn(key)
                )));
            }
            svc.rotate(key, tx, VersionOrigin::OnDemand, now)?;
            key.on_demand_rotations += 1;
            // A multi-Region key's replicas get the new version too.
            svc.sync_replicas(tx, key)?;
            Ok(KeyIdResponse {
                key_id: Self::arn(key),
            })
        })
    }

    /// Makes the imported material pending rotation the key's current
    /// material (RotateKeyOnDemand of a key with imported material).
    fn rotate_to_imported(
        &self,
        key: &mut KeyRecord,
        tx: &mut dyn atrest_store::WriteTx,
        now: i64,
    ) -> Result<(), KmsError> {
        let mut pending = None;
        for (vk, v) in tx.scan(records::VERSIONS, key.id.as_bytes(), None, usize::MAX)? {
            let rec: VersionRecord = records::decode(records::VERSIONS, &v)?;
            if rec
                .import
                .as_ref()
                .is_some_and(|i| i.pending_rotation && !i.deleted)
            {
                pending = Some((vk, rec));
            }
        }
        let Some((vk, mut rec)) = pending else {
            return Err(KmsError::InvalidState(format!(
                "{} has imported key material and no key material in PENDING_ROTATION state: import new key material (ImportKeyMaterial with ImportType NEW_KEY_MATERIAL) first.",
                Self::arn(key)
            )));
        };
        let valid_to = rec.import.as_ref().and_then(|i| i.valid_to);
        if let Some(i) = rec.import.as_mut() {
            i.pending_rotation = false;
        }
        rec.created = now;
        rec.origin = VersionOrigin::OnDemand;
        records::put(tx, records::VERSIONS, &vk, &rec)?;
        key.current_version = rec.version;
        key.current_material_id = rec.material_id;
        if let Some(i) = key.import.as_mut() {
            i.valid_to = valid_to;
        }
        Ok(())
    }

    /// ListKeyRotations: every rotation (versions after the first), oldest
    /// first; with `IncludeKeyMaterial` ALL_KEY_MATERIAL, every material.
    pub fn list_key_rotations(
        &self,
        call: &Call<'_>,
        req: ListForKeyRequest,
    ) -> Result<Page<Rotations>, KmsError> {
        let size = pagination::page_size(req.limit, 100, 1000)?;
        let after = pagination::decode(Listing::Rotations, req.marker.as_deref())?;
        let tx = self.store.read()?;
        let key = self.resolve_for_management(&*tx, call, req.key_id)?;
        self.authorize_key(&*tx, call, "ListKeyRotations", &key, &Facts::default())?;
        require_symmetric(&key)?;
        let all = match req.include_key_material.as_deref() {
            None | Some("ROTATIONS_ONLY") => false,
            Some("ALL_KEY_MATERIAL") => true,
            Some(other) => {
                return Err(KmsError::constraint(
                    "includeKeyMaterial",
                    other,
                    "Member must satisfy enum value set: [ALL_KEY_MATERIAL, ROTATIONS_ONLY]",
                ));
            }
        };
        let first = u32::from(!all);
        let after_version = match after {
            None => first,
            Some(b) => u32::from_be_bytes(
                b.as_slice()
                    .try_into()
                    .map_err(|_| KmsError::InvalidMarker("Invalid marker".into()))?,
            )
            .max(first),
        };
        let cursor = records::version_key(&key.id, after_version);
        let rows = tx.scan(
            records::VERSIONS,
            key.id.as_bytes(),
            Some(&cursor),
            size + 1,
        )?;
        let mut versions = Vec::with_capacity(rows.len());
        for (_, v) in rows {
            let rec = records::decode::<VersionRecord>(records::VERSIONS, &v)?;
            // Material pending rotation is the newest version; only
            // ALL_KEY_MATERIAL lists it.
            if all || !rec.import.as_ref().is_some_and(|i| i.pending_rotation) {
                versions.push(rec);
            }
        }
        let external = key.origin == records::KeyOrigin::External;
        let legacy_valid_to = key.import.as_ref().and_then(|i| i.valid_to);
        let current = key.current_version;
        let (versions, next) = pagination::finish(Listing::Rotations, versions, size, |v| {
            v.version.to_be_bytes().to_vec()
        });
        Ok(Page {
            truncated: next.is_some(),
            next_marker: next,
            items: Rotations {
                rotations: versions
                    .into_iter()
                    .map(|v| {
                        let import = v.import.clone().unwrap_or(records::VersionImport {
                            valid_to: legacy_valid_to,
                            ..records::VersionImport::default()
                        });
                        let rotated =
                            v.origin != VersionOrigin::Initial && !import.pending_rotation;
                        RotationEntry {
                            key_id: key.key_id(),
                            rotation_date: rotated.then(|| epoch_seconds(v.created)),
                            rotation_type: rotated.then_some(
                                if v.origin == VersionOrigin::OnDemand {
                                    "ON_DEMAND"
                                } else {
                                    "AUTOMATIC"
                                },
                            ),
                            key_material_id: v.material_id,
                            key_material_state: Some(if import.pending_rotation {
                                "PENDING_ROTATION"
                            } else if v.version == current {
                                "CURRENT"
                            } else {
                                "NON_CURRENT"
                            }),
                            import_state: external.then_some(if import.deleted {
                                "PENDING_IMPORT"
                            } else {
                                "IMPORTED"
                            }),
                            expiration_model: (external && !import.deleted).then_some(
                                if import.valid_to.is_some() {
                                    "KEY_MATERIAL_EXPIRES"
                                } else {
                                    "KEY_MATERIAL_DOES_NOT_EXPIRE"
                                },
                            ),
                            valid_to: import.valid_to.filter(|_| external).map(epoch_seconds),
                            key_material_description: import.description.filter(|_| external),
                        }
                    })
                    .collect(),
            },
        })
    }
}
