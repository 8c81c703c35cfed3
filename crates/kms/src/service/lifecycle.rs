//! The schedule that runs inside the server: automatic rotations and
//! deletions at the end of their waiting period.
//!
//! Due events are kept in the `kms.due` table ordered by time, so a tick
//! reads only what is due. Each event is handled in its own transaction and
//! re-checked against the key inside it, so an event made stale by a later
//! change (rotation disabled, deletion cancelled) is simply dropped.

use uuid::Uuid;

use super::KeyService;
use crate::KmsError;
use crate::records::{self, AliasRecord, DueKind, KeyRecord, KeyState, VersionOrigin};

/// What one tick did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LifecycleReport {
    /// Keys rotated automatically.
    pub rotated: Vec<Uuid>,
    /// Keys deleted.
    pub deleted: Vec<Uuid>,
    /// Keys whose imported material expired.
    pub expired: Vec<Uuid>,
}

const DAY_MS: i64 = 86_400_000;

impl KeyService {
    /// Runs every rotation and deletion that is due now.
    pub fn run_due(&self) -> Result<LifecycleReport, KmsError> {
        let now = self.now_ms();
        let mut report = LifecycleReport::default();
        let mut cursor: Option<Vec<u8>> = None;
        loop {
            let batch = {
                let tx = self.store.read()?;
                tx.scan(records::DUE, b"", cursor.as_deref(), 64)?
            };
            if batch.is_empty() {
                break;
            }
            for (k, _) in batch {
                let Some((at, kind, id)) = records::parse_due_key(&k) else {
                    // An entry this version cannot read: drop it rather than
                    // spin on it, and say so.
                    tracing::warn!("dropping unreadable lifecycle entry");
                    let mut tx = self.store.write()?;
                    tx.delete(records::DUE, &k)?;
                    tx.commit()?;
                    continue;
                };
                if at > now {
                    return Ok(report);
                }
                cursor = Some(k.clone());
                match kind {
                    DueKind::Deletion => {
                        if self.delete_if_due(&k, &id, now)? {
                            report.deleted.push(id);
                        }
                    }
                    DueKind::Rotation => {
                        if self.rotate_if_due(&k, at, &id, now)? {
                            report.rotated.push(id);
                        }
                    }
                    DueKind::Expiry => {
                        if self.expire_if_due(&k, at, &id)? {
                            report.expired.push(id);
                        }
                    }
                }
            }
        }
        Ok(report)
    }

    fn delete_if_due(&self, due: &[u8], id: &Uuid, now: i64) -> Result<bool, KmsError> {
        let mut tx = self.store.write()?;
        let key: Option<KeyRecord> = records::get(&*tx, records::KEYS, id.as_bytes())?;
        let Some(key) = key.filter(|k| {
            k.state == KeyState::PendingDeletion && k.deletion_date.is_some_and(|d| d <= now)
        }) else {
            tx.delete(records::DUE, due)?;
            tx.commit()?;
            return Ok(false);
        };
        tx.delete(records::DUE, due)?;
        if let Some(r) = key.rotation {
            tx.delete(
                records::DUE,
                &records::due_key(r.next, DueKind::Rotation, id),
            )?;
        }
        for (vk, _) in tx.scan(records::VERSIONS, id.as_bytes(), None, usize::MAX)? {
            tx.delete(records::VERSIONS, &vk)?;
        }
        let prefix = records::owner_prefix(&key.region, &key.account);
        for (ak, av) in tx.scan(records::ALIASES, &prefix, None, usize::MAX)? {
            let a: AliasRecord = records::decode(records::ALIASES, &av)?;
            if a.target == *id {
                tx.delete(records::ALIASES, &ak)?;
            }
        }
        tx.delete(
            records::KEYS_BY_OWNER,
            &records::owner_key(&key.region, &key.account, id),
        )?;
        if let Some(records::ImportState {
            valid_to: Some(t), ..
        }) = &key.import
        {
            tx.delete(records::DUE, &records::due_key(*t, DueKind::Expiry, id))?;
        }
        Self::remove_all_grants(&mut *tx, id)?;
        tx.delete(records::KEY_POLICIES, id.as_bytes())?;
        tx.delete(records::KEYS, id.as_bytes())?;
        self.forget_region(&mut *tx, &key, now)?;
        let sys = self.system_call(&key, "ScheduledKeyDeletion");
        self.commit(tx, &sys.call())?;
        self.forget_key(id);
        tracing::info!(key = %Self::arn(&key), "deleted key and its material at the end of its waiting period");
        Ok(true)
    }

    fn rotate_if_due(&self, due: &[u8], at: i64, id: &Uuid, now: i64) -> Result<bool, KmsError> {
        let mut tx = self.store.write()?;
        let key: Option<KeyRecord> = records::get(&*tx, records::KEYS, id.as_bytes())?;
        let Some(mut key) = key.filter(|k| k.rotation.is_some_and(|r| r.next == at)) else {
            tx.delete(records::DUE, due)?;
            tx.commit()?;
            return Ok(false);
        };
        if key.state != KeyState::Enabled {
            // Not rotated while disabled; it rotates once re-enabled.
            return Ok(false);
        }
        let Some(mut rotation) = key.rotation else {
            return Ok(false);
        };
        self.rotate(&mut key, &mut *tx, VersionOrigin::Automatic, now)?;
        let period = i64::from(rotation.period_days) * DAY_MS;
        let mut next = at + period;
        if next <= now {
            next = now + period;
        }
        rotation.next = next;
        key.rotation = Some(rotation);
        tx.delete(records::DUE, due)?;
        tx.put(
            records::DUE,
            &records::due_key(next, DueKind::Rotation, id),
            b"",
        )?;
        records::put(&mut *tx, records::KEYS, id.as_bytes(), &key)?;
        self.sync_replicas(&mut *tx, &key)?;
        let sys = self.system_call(&key, "AutomaticKeyRotation");
        self.commit(tx, &sys.call())?;
        tracing::info!(key = %Self::arn(&key), version = key.current_version, "rotated key automatically");
        Ok(true)
    }

    fn expire_if_due(&self, due: &[u8], at: i64, id: &Uuid) -> Result<bool, KmsError> {
        let mut tx = self.store.write()?;
        let key: Option<KeyRecord> = records::get(&*tx, records::KEYS, id.as_bytes())?;
        let Some(mut key) = key.filter(|k| k.origin == records::KeyOrigin::External) else {
            tx.delete(records::DUE, due)?;
            tx.commit()?;
            return Ok(false);
        };
        tx.delete(records::DUE, due)?;
        if !self.expire_imported_material(&mut *tx, &mut key, at)? {
            tx.commit()?;
            return Ok(false);
        }
        records::put(&mut *tx, records::KEYS, id.as_bytes(), &key)?;
        let sys = self.system_call(&key, "ImportedKeyMaterialExpiry");
        self.commit(tx, &sys.call())?;
        self.forget_key(id);
        tracing::info!(key = %Self::arn(&key), "imported key material expired; the key is pending import");
        Ok(true)
    }

    /// The caller and metadata under which the schedule acts on `key`: the
    /// key's account, with the system principal `atrest`.
    pub(super) fn system_call(&self, key: &KeyRecord, operation: &'static str) -> SystemCall {
        let mut caller = match crate::names::AccountId::parse(&key.account) {
            Some(a) => super::Caller::root(a, &key.region),
            None => super::Caller::root(
                crate::names::AccountId::parse("000000000000")
                    .unwrap_or_else(|| unreachable!("twelve digits")),
                &key.region,
            ),
        };
        caller.principal.kind = atrest_policy::PrincipalKind::Service("atrest".into());
        SystemCall {
            caller,
            meta: super::RequestMeta::in_process(),
            operation,
            key_arn: Self::arn(key),
        }
    }
}

/// A system action's caller and metadata, owned.
pub(super) struct SystemCall {
    caller: super::Caller,
    meta: super::RequestMeta,
    operation: &'static str,
    key_arn: String,
}

impl SystemCall {
    pub(super) fn call(&self) -> super::Call<'_> {
        let c = super::Call::new(&self.caller, &self.meta);
        c.set_operation(self.operation);
        c.set_key(self.key_arn.clone());
        c
    }
}
