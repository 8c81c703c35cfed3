//! Copies of stored snapshots to another region (D5: a snapshot leaves its
//! region only re-encrypted under a key of the destination).
//!
//! The copy is a new stored snapshot in the destination region, with its
//! own lineage, under a fresh data key that a key of that region wraps
//! (GenerateDataKeyWithoutPlaintext through the service's grant, as for a
//! new disk). Every chunk is decrypted with the source's data key and
//! encrypted with the copy's (same sectors, same tweaks), in memory, block
//! by block, into the destination region's store. So the source key cannot
//! read the copy, and disabling it does not lock the copy. The copy's
//! record goes through the same states as an upload (`uploading` with a
//! cursor, then `complete` once its manifest is stored), and resumes after
//! a crash; the source cannot be deleted while a copy of it runs.

use std::collections::BTreeMap;
use std::sync::Arc;

use atrest_crypto::xts::Xts256;
use atrest_disk::{CHUNK, DiskError, Labels, RawChunk};
use atrest_kms::Caller;
use bytes::Bytes;
use zeroize::Zeroize;

use super::format::{self, BLOCK_BYTES, BLOCK_CHUNKS};
use super::{Archive, CONCURRENCY, Record, RecordState, for_each_step, lock, spawn_job};
use crate::jobs::{JobCell, JobKind};
use crate::{DiskService, Result, SNAPSHOT_CONTEXT, SnapshotView, ctx, new_id, owner_labels};

impl DiskService {
    /// Copies one of the caller's stored snapshots into `region`,
    /// re-encrypted under a fresh data key wrapped by `key_id` there
    /// (default: the account's disk service key of that region). Returns
    /// the copy (state `uploading`, with its job).
    pub fn copy_stored_snapshot(
        self: &Arc<Self>,
        caller: &Caller,
        snapshot: &str,
        region: &str,
        key_id: Option<&str>,
    ) -> Result<SnapshotView> {
        let archive = Arc::clone(self.archive()?);
        let Some(src) = self.own_stored(caller, snapshot)? else {
            // A local snapshot, or none.
            self.own_snapshot(crate::Actor::Customer, caller, snapshot)?;
            return Err(DiskError::Invalid(format!(
                "snapshot {snapshot} is a local snapshot; store it in the object store first (atrest disk snapshot --to-object-store)"
            ))
            .into());
        };
        if !matches!(src.state, RecordState::Complete { .. }) {
            return Err(DiskError::Conflict(format!(
                "snapshot {snapshot} is not completely stored yet"
            ))
            .into());
        }
        let Some(src_key) = &src.key else {
            return Err(DiskError::Invalid(format!(
                "snapshot {snapshot} is not encrypted; a snapshot leaves its region only encrypted under a key of the destination"
            ))
            .into());
        };
        if !self.kms.regions().iter().any(|r| r == region) {
            return Err(DiskError::Invalid(format!(
                "region {region} is not served here (regions: {})",
                self.kms.regions().join(", ")
            ))
            .into());
        }
        self.check_key(&caller.region, &format!("snapshot {snapshot}"), src_key)?;
        self.caller_may(caller, &src_key.key_arn, &["Decrypt"])?;
        let mut dest = caller.clone();
        dest.region = region.to_owned();
        let arn = self.resolve_key(&dest, key_id)?;
        let id = new_id("snap")?;
        let key = self.new_key_info(&dest, &arn, &ctx(SNAPSHOT_CONTEXT, &id))?;
        let record = Record {
            id: id.clone(),
            disk: src.disk.clone(),
            lineage: id.clone(),
            size: src.size,
            block_size: src.block_size,
            key: Some(key),
            labels: owner_labels(&dest),
            source: String::new(),
            copy_of: Some(src.id.clone()),
            state: RecordState::Uploading { done: 0, sent: 0 },
        };
        {
            let _gc = lock(&archive.gc);
            if let Err(e) = archive.put_record(&record) {
                drop(_gc);
                if let Some(k) = &record.key {
                    self.retire(region, k);
                }
                return Err(e);
            }
        }
        tracing::info!(source = snapshot, copy = %id, region, "snapshot copy to another region started");
        self.spawn_copy(&archive, record.clone(), &dest)?;
        Ok(self.stored_view(&record))
    }

    pub(crate) fn spawn_copy(
        self: &Arc<Self>,
        archive: &Arc<Archive>,
        r: Record,
        owner: &Caller,
    ) -> Result<()> {
        let cell = self.new_job(
            JobKind::Copy,
            &r.disk,
            Some(r.id.clone()),
            owner,
            r.size,
            Labels::new(),
        )?;
        cell.update(|j| j.source = r.copy_of.clone());
        let svc = Arc::clone(self);
        let archive = Arc::clone(archive);
        let what = format!(
            "copy {} of snapshot {}",
            r.id,
            r.copy_of.as_deref().unwrap_or_default()
        );
        spawn_job(cell, "objsnap-copy", what, move |cell| {
            svc.copy(&archive, cell, r)
        });
        Ok(())
    }

    fn copy(&self, archive: &Archive, cell: &JobCell, mut r: Record) -> Result<()> {
        let RecordState::Uploading { done, mut sent } = r.state else {
            return Ok(());
        };
        let src_id = r.copy_of.clone().unwrap_or_default();
        let src = archive
            .record(&src_id)?
            .ok_or_else(|| DiskError::NotFound {
                kind: "snapshot",
                id: src_id.clone(),
            })?;
        let m = archive.manifest(&src)?;
        let dst_key = r.key.clone();
        let (Some(src_key), Some(dst_key)) = (&src.key, &dst_key) else {
            return Err(DiskError::Failed(format!("copy {} has no keys", r.id)).into());
        };
        let (src_region, dst_region) = (src.region(), r.region());
        let unwrap = |region: &str, id: &str, k: &atrest_disk::KeyInfo| {
            self.unwrap_key(region, k, &ctx(SNAPSHOT_CONTEXT, id))
                .map_err(|e| self.key_failure(region, &format!("snapshot {id}"), k, e))
        };
        let src_plain = unwrap(&src_region, &src.id, src_key)?;
        let dst_plain = unwrap(&dst_region, &r.id, dst_key)?;
        let xts = |k: &atrest_crypto::XtsKey| {
            Xts256::new(k).map_err(|e| DiskError::Failed(format!("preparing a data key: {e}")))
        };
        let (mut dec, mut enc) = (xts(&src_plain)?, xts(&dst_plain)?);
        drop(src_plain);
        let (from, to) = (archive.objects(&src_region), archive.objects(&dst_region));
        let bs = u64::from(src.block_size);
        let entries: Vec<(u64, String)> = m.blocks.iter().map(|(i, d)| (*i, d.clone())).collect();
        let mut blocks = BTreeMap::new();
        for_each_step(from, &m.lineage, &entries, |step, names, objs| {
            let mut puts = Vec::new();
            for (((index, digest), name), obj) in step.iter().zip(names).zip(objs) {
                let mut chunks = format::decode_block(name, &obj, digest, src.block_size)?;
                for (i, c) in chunks.iter_mut().enumerate() {
                    let RawChunk::Data { bytes } = c else {
                        continue;
                    };
                    let sector = (index * BLOCK_CHUNKS + i as u64) * CHUNK / bs;
                    let r = dec
                        .decrypt_sectors(sector, bs as usize, bytes)
                        .and_then(|()| enc.encrypt_sectors(sector, bs as usize, bytes));
                    if let Err(e) = r {
                        bytes.zeroize();
                        return Err(DiskError::Failed(format!("re-encrypting: {e}")).into());
                    }
                }
                let Some(obj) = format::encode_block(&chunks) else {
                    continue;
                };
                let new_digest = format::digest(&obj);
                if *index >= done {
                    puts.push((
                        format::block_name(&r.lineage, &new_digest),
                        Bytes::from(obj),
                    ));
                }
                blocks.insert(*index, new_digest);
            }
            let bytes: u64 = puts.iter().map(|(_, o)| o.len() as u64).sum();
            if !puts.is_empty() {
                to.put_many(puts, CONCURRENCY)?;
            }
            sent += bytes;
            let end = step.last().map_or(0, |(i, _)| i + 1);
            if end > done {
                r.state = RecordState::Uploading { done: end, sent };
                archive.put_record(&r)?;
            }
            cell.update(|j| {
                j.progress.done = (end * BLOCK_BYTES).min(r.size);
                j.transferred = Some(sent);
            });
            Ok(())
        })?;
        let mut manifest = r.manifest(blocks);
        manifest.seal(&dst_plain);
        drop(dst_plain);
        let bytes = manifest.encode();
        let manifest_sha256 = format::digest(&bytes);
        sent += bytes.len() as u64;
        to.put(&format::manifest_name(&r.id), Bytes::from(bytes))?;
        r.state = RecordState::Complete {
            manifest_sha256,
            blocks: manifest.blocks.len() as u64,
            sent,
        };
        archive.put_record(&r)?;
        cell.update(|j| {
            j.progress.done = r.size;
            j.transferred = Some(sent);
        });
        archive.wake_if_deletions_wait();
        Ok(())
    }
}
