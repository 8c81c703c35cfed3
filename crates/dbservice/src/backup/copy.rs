//! Copies of backups to another region (issue 21: a backup leaves its
//! region only re-encrypted under a key of the destination).
//!
//! A copy is a new backup (a new id) whose objects live in a namespace of
//! their own, `db/<copy id>/…`, as if of an instance of that id that never
//! existed here: its base backup, and every archived WAL file of the
//! source instance from the backup's `start_wal` to the newest archived
//! when the copy is made (history files included), so the copy restores to
//! any time from the backup's end to that WAL's last commit. Every artifact
//! is opened with its own data key and re-sealed, chunk by chunk in
//! memory, under a fresh data key that `db.atrest` generates under the
//! destination key through a grant the caller creates on that key,
//! constrained to `{"atrest:db:id": <copy id>}`. The manifest (region and
//! key of the destination) is written last: it is the commit point. So
//! the source key cannot read the copy, and disabling it does not lock the
//! copy. A copy that fails removes what it wrote and retires its grant; a
//! crash in the middle leaves objects without a manifest under the copy's
//! namespace, which are not a backup (never listed) and which nothing
//! reads.

use super::*;

/// One artifact: where it is, whose it is, and its name.
struct Artifact<'a> {
    region: &'a str,
    instance: &'a str,
    object: String,
    name: String,
}

impl DbService {
    /// Copies the caller's backup `backup_id` into `region`, re-encrypted
    /// under `key_id` there (default: the account's database service key
    /// of that region), with the WAL archived since the backup began.
    /// Answers the copy, listed and restorable in `region` like a backup
    /// whose instance is gone.
    pub fn copy_backup(
        &self,
        caller: &Caller,
        backup_id: &str,
        region: &str,
        key_id: Option<&str>,
    ) -> Result<BackupView> {
        let b = self.describe_backup(caller, backup_id)?;
        if !self.kms.regions().iter().any(|r| r == region) {
            return Err(DbError::Invalid(format!(
                "region {region} is not served here (regions: {})",
                self.kms.regions().join(", ")
            )));
        }
        self.key_state(&b.region, &b.instance, &b.key_arn)?;
        self.caller_may(caller, &b.key_arn, &["Decrypt"])?;
        let mut dest = caller.clone();
        region.clone_into(&mut dest.region);
        let key_arn = self.destination_key(&dest, key_id)?;
        // What the source committed so far is copied too.
        let source = lock(&self.records).get(&b.instance_id).cloned();
        if let Some(s) = source.filter(|s| self.is_running(s)) {
            let flushed = self.bin().and_then(|bin| self.flush_archive(&bin, &s));
            if let Err(e) = flushed {
                tracing::warn!(instance = %s.name, error = %e, "could not archive the source's current WAL before a backup copy");
            }
        }
        let id = format!("bk-{}", random_hex(8)?);
        let session = self.kms.service_session(SERVICE, region)?;
        let (grant, _token) = session
            .grant_for(&dest, &key_arn, &GRANT_OPERATIONS, &context(&id))
            .map_err(|e| self.key_failure(region, &id, &key_arn, e))?;
        let _busy = lock(&self.backup.busy);
        let copied = self.copy_artifacts(&b, region, &id, &key_arn);
        let written = copied.and_then(|(size, data_size)| {
            let v = BackupView {
                id: id.clone(),
                instance_id: id.clone(),
                region: region.to_owned(),
                key_arn: key_arn.clone(),
                size,
                data_size,
                copy_of: Some(b.id.clone()),
                ..b.clone()
            };
            // The commit point: the manifest, written last.
            let bytes = serde_json::to_vec_pretty(&v)
                .map_err(|e| DbError::Failed(format!("encoding a manifest: {e}")))?;
            self.config
                .backups
                .put(&manifest_object(&id, &id), bytes.into())
                .map_err(|e| self.store_err(e))?;
            Ok(v)
        });
        match written {
            Ok(v) => {
                tracing::info!(backup = %b.id, copy = %id, region, key = %key_arn, "backup copied to another region");
                Ok(v)
            }
            Err(e) => {
                self.discard_copy(&id);
                let retired = session.call(
                    Operation::RetireGrant,
                    &json!({"KeyId": key_arn, "GrantId": grant}),
                );
                if let Err(r) = retired {
                    tracing::info!(key = %key_arn, grant = %grant, error = %r, "could not retire a backup copy's grant");
                }
                Err(e)
            }
        }
    }

    /// The ARN of the copy's key in the caller's (destination) region,
    /// which must be usable there.
    fn destination_key(&self, dest: &Caller, key_id: Option<&str>) -> Result<String> {
        let key_id = self.key_or_service_key(dest, key_id)?;
        let session = self.kms.service_session(SERVICE, &dest.region)?;
        let out = session.call_for(dest, Operation::DescribeKey, &json!({"KeyId": key_id}))?;
        let arn = out
            .get("KeyMetadata")
            .and_then(|m| m.get("Arn"))
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| DbError::Failed("DescribeKey's answer lacks the key's ARN".into()))?
            .to_owned();
        match session.key_unusable(&arn, None)? {
            None => Ok(arn),
            Some(reason) => Err(DbError::Conflict(format!(
                "key {arn} cannot be used: {reason}; a backup copy is encrypted under a usable key of its region"
            ))),
        }
    }

    /// Re-seals the archived WAL the copy restores through, then its base
    /// backup, into the copy's namespace. Answers (bytes stored, plaintext
    /// bytes) of the base backup.
    fn copy_artifacts(
        &self,
        b: &BackupView,
        region: &str,
        id: &str,
        key_arn: &str,
    ) -> Result<(u64, u64)> {
        let src = b.instance_id.as_str();
        let wal = self
            .config
            .backups
            .list(&format!("db/{src}/wal"))
            .map_err(|e| self.store_err(e))?;
        for m in wal {
            let f = m.name.rsplit('/').next().unwrap_or_default();
            if !agent::valid_wal_name(f) || wal_prunable(f, Some(&b.start_wal)) {
                continue;
            }
            self.reseal(
                &Artifact {
                    region: &b.region,
                    instance: src,
                    object: wal_object(src, f),
                    name: format!("{src}/wal/{f}"),
                },
                &Artifact {
                    region,
                    instance: id,
                    object: wal_object(id, f),
                    name: format!("{id}/wal/{f}"),
                },
                key_arn,
            )?;
        }
        self.reseal(
            &Artifact {
                region: &b.region,
                instance: src,
                object: base_object(src, &b.id),
                name: format!("{src}/base/{}.tar", b.id),
            },
            &Artifact {
                region,
                instance: id,
                object: base_object(id, id),
                name: format!("{id}/base/{id}.tar"),
            },
            key_arn,
        )
    }

    /// Opens `from` with its data key and seals it into `to` under a fresh
    /// data key of `key_arn`. Answers (bytes stored, plaintext bytes).
    fn reseal(&self, from: &Artifact<'_>, to: &Artifact<'_>, key_arn: &str) -> Result<(u64, u64)> {
        let opener =
            self.open_artifact(from.region, &from.object, from.instance, &from.name, None)?;
        let (key, wrapped_key) =
            self.generate_data_key(to.region, to.instance, to.instance, key_arn)?;
        let w = self
            .config
            .backups
            .writer(&to.object)
            .map_err(|e| self.store_err(e))?;
        let header = Header {
            wrapped_key,
            key_arn: key_arn.to_owned(),
            instance: to.instance.to_owned(),
            name: to.name.clone(),
        };
        let location = self.config.backups.location();
        let what = format!("object {} (copied to {})", from.object, to.object);
        let (w, plain) = crate::artifact::reseal(opener, w, &key, &header)
            .map_err(|e| damaged(&location, &what, e))?;
        let size = w.finish().map_err(|e| self.store_err(e))?;
        Ok((size, plain))
    }

    /// Removes what a failed copy wrote (best effort).
    fn discard_copy(&self, id: &str) {
        let store = &self.config.backups;
        match store.list(&format!("db/{id}")) {
            Ok(objs) => {
                for m in objs {
                    let _ = store.delete(&m.name);
                }
            }
            Err(e) => {
                tracing::warn!(copy = %id, error = %e, "cannot remove what a failed backup copy wrote");
            }
        }
    }
}
