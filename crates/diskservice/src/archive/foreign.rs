//! Restores of snapshots that another server stored (O4: "restorable on any
//! machine").
//!
//! This server has no record of such a snapshot, and its own key service
//! cannot unwrap the data key: the key service that wrapped it is the other
//! server's (or the customer's own KMS). The operator configures it here as
//! an `aws-kms` key provider; the customer names it. Then:
//!
//! * the manifest is read from the store; it must be the caller's own
//!   account's (another account's reads as not found: snapshots are not
//!   shared across accounts) and encrypted (an unencrypted manifest cannot
//!   be authenticated without the other server's metadata);
//! * the data key is decrypted at that key service with the manifest's blob
//!   and context ([`atrest_kms::KeyService::decrypt_at_provider`]), whose key
//!   policy and grants decide whether this server's principal may;
//! * the manifest's MAC is checked under it, and every block against its
//!   digest;
//! * the new disk is created here under a fresh data key of a key of this
//!   server (the one the caller names, or the account's disk service key),
//!   and the restore re-encrypts every chunk into it, so the disk does not
//!   depend on the other key service afterwards.
//!
//! A crash restarts the restore from the beginning (the labels on the disk
//! say which snapshot and which provider).

use std::collections::BTreeMap;
use std::sync::Arc;

use atrest_crypto::XtsKey;
use atrest_crypto::xts::Xts256;
use atrest_disk::{CHUNK, DiskError, Labels, RawChunk};
use atrest_kms::Caller;
use zeroize::Zeroize;

use super::format::{self, BLOCK_BYTES, BLOCK_CHUNKS, Manifest};
use super::{Archive, L_RESTORING, for_each_step, spawn_job};
use crate::jobs::{JobCell, JobKind};
use crate::{DiskService, DiskView, NewDisk, Result, SNAPSHOT_CONTEXT, ctx, label};

/// On a disk being restored from another server's snapshot: the key
/// provider that unwraps its data key.
pub(crate) const L_RESTORE_PROVIDER: &str = "restore_provider";

/// What a caller asks of a restore of another server's snapshot.
#[derive(Debug, Clone, Default)]
pub struct ForeignRestore {
    /// The key provider (an `aws-kms` provider) behind which the key
    /// service that wrapped the snapshot's data key answers.
    pub provider: String,
    /// The new disk's master key here (default: the account's disk
    /// service key).
    pub key_id: Option<String>,
    /// Its tags.
    pub tags: BTreeMap<String, String>,
}

impl DiskService {
    /// Restores snapshot `snapshot`, stored in this server's object store
    /// by another server, into a new disk of the caller's (see the module
    /// documentation). Returns the disk (state `restoring`).
    pub fn restore_from_store(
        self: &Arc<Self>,
        caller: &Caller,
        snapshot: &str,
        req: &ForeignRestore,
    ) -> Result<DiskView> {
        if !format::valid_id(snapshot) {
            return Err(DiskError::NotFound {
                kind: "snapshot",
                id: snapshot.to_owned(),
            }
            .into());
        }
        let archive = Arc::clone(self.archive()?);
        match archive.record(snapshot)? {
            // Another account's reads as not found, as everywhere.
            Some(r) if !crate::owned_by(&r.labels, caller) => {
                return Err(DiskError::NotFound {
                    kind: "snapshot",
                    id: snapshot.to_owned(),
                }
                .into());
            }
            Some(_) => {
                return Err(DiskError::Invalid(format!(
                    "snapshot {snapshot} was stored by this server; restore it without a key provider"
                ))
                .into());
            }
            None => {}
        }
        let (m, _key) = self.foreign_manifest(&archive, caller, snapshot, &req.provider)?;
        let extra = Labels::from([
            (L_RESTORING.to_owned(), snapshot.to_owned()),
            (L_RESTORE_PROVIDER.to_owned(), req.provider.clone()),
        ]);
        let d = self.create_disk_labelled(
            caller,
            &NewDisk {
                size: m.size,
                block_size: Some(m.block_size),
                encrypted: Some(true),
                key_id: req.key_id.clone(),
                shareable: None,
                tags: req.tags.clone(),
            },
            extra,
        )?;
        tracing::info!(snapshot, disk = %d.id, provider = %req.provider, "restore of another server's snapshot started");
        self.spawn_foreign_restore(&archive, snapshot.to_owned(), d.id.clone(), caller)?;
        Ok(d)
    }

    /// The manifest of another server's snapshot, checked, with its data
    /// key (decrypted at `provider`).
    fn foreign_manifest(
        &self,
        archive: &Archive,
        caller: &Caller,
        snapshot: &str,
        provider: &str,
    ) -> Result<(Manifest, XtsKey)> {
        let name = format::manifest_name(snapshot);
        let bytes = match archive.objects(&caller.region).get(&name) {
            Err(atrest_objstore::ObjError::NotFound { .. }) => {
                return Err(DiskError::NotFound {
                    kind: "snapshot",
                    id: snapshot.to_owned(),
                }
                .into());
            }
            r => r?,
        };
        let m = Manifest::decode(&name, &bytes)?;
        if m.id != snapshot || m.account != caller.account.as_str() {
            return Err(DiskError::NotFound {
                kind: "snapshot",
                id: snapshot.to_owned(),
            }
            .into());
        }
        let Some(k) = &m.key else {
            return Err(DiskError::Invalid(format!(
                "snapshot {snapshot} is not encrypted: only the server that stored it can restore it"
            ))
            .into());
        };
        if k.context != ctx(SNAPSHOT_CONTEXT, snapshot) {
            return Err(format::Corrupt {
                object: name,
                detail: "its key is wrapped for another resource".into(),
            }
            .into());
        }
        let blob = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &k.wrapped)
            .map_err(|_| format::Corrupt {
            object: name.clone(),
            detail: "its wrapped key is not base64".into(),
        })?;
        let plain = self
            .kms
            .decrypt_at_provider(provider, &k.key_arn, &blob, &k.context)?;
        let key = XtsKey::from_slice(plain.expose()).map_err(|_| format::Corrupt {
            object: name.clone(),
            detail: "its data key is not 64 bytes".into(),
        })?;
        m.verify(&name, &key)?;
        Ok((m, key))
    }

    pub(crate) fn spawn_foreign_restore(
        self: &Arc<Self>,
        archive: &Arc<Archive>,
        snapshot: String,
        disk: String,
        owner: &Caller,
    ) -> Result<()> {
        let size = self.engine.disk(&disk)?.size;
        let cell = self.new_job(
            JobKind::Restore,
            &disk,
            Some(disk.clone()),
            owner,
            size,
            Labels::new(),
        )?;
        cell.update(|j| j.source = Some(snapshot.clone()));
        let svc = Arc::clone(self);
        let archive = Arc::clone(archive);
        let owner = owner.clone();
        let what = format!("restore of snapshot {snapshot} into disk {disk}");
        spawn_job(cell, "objsnap-restore", what, move |cell| {
            svc.foreign_restore(&archive, cell, &owner, &snapshot, &disk)
        });
        Ok(())
    }

    fn foreign_restore(
        self: &Arc<Self>,
        archive: &Archive,
        cell: &JobCell,
        owner: &Caller,
        snapshot: &str,
        disk: &str,
    ) -> Result<()> {
        let labels = self.engine.disk(disk)?.labels;
        let provider = label(&labels, L_RESTORE_PROVIDER);
        let (m, key) = self.foreign_manifest(archive, owner, snapshot, &provider)?;
        let mut cipher = Xts256::new(&key)
            .map_err(|e| DiskError::Failed(format!("preparing the snapshot's key: {e}")))?;
        drop(key);
        let objects = archive.objects(&owner.region);
        let att = self.attach_internal(disk)?;
        let entries: Vec<(u64, String)> = m.blocks.iter().map(|(i, d)| (*i, d.clone())).collect();
        let mut got = 0u64;
        for_each_step(objects, &m.lineage, &entries, |step, names, objs| {
            for (((index, digest), name), obj) in step.iter().zip(names).zip(objs) {
                got += obj.len() as u64;
                for (i, c) in format::decode_block(name, &obj, digest, m.block_size)?
                    .into_iter()
                    .enumerate()
                {
                    let RawChunk::Data { mut bytes } = c else {
                        continue;
                    };
                    let idx = index * BLOCK_CHUNKS + i as u64;
                    let r = cipher
                        .decrypt_sectors(
                            idx * CHUNK / u64::from(m.block_size),
                            m.block_size as usize,
                            &mut bytes,
                        )
                        .map_err(|e| DiskError::Failed(format!("decrypting: {e}")).into())
                        .and_then(|()| att.write(idx * CHUNK, &bytes, false));
                    bytes.zeroize();
                    r?;
                }
            }
            att.flush()?;
            let last = step.last().map_or(0, |(i, _)| *i);
            cell.update(|j| {
                j.progress.done = ((last + 1) * BLOCK_BYTES).min(m.size);
                j.transferred = Some(got);
            });
            Ok(())
        })?;
        att.flush()?;
        drop(att);
        let mut labels = self.engine.disk(disk)?.labels;
        labels.remove(L_RESTORING);
        labels.remove(L_RESTORE_PROVIDER);
        self.engine.set_labels(disk, labels)?;
        cell.update(|j| j.progress.done = m.size);
        Ok(())
    }
}
