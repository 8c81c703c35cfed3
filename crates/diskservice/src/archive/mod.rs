//! Snapshots in object storage (O4, D5, B5, B7): uploaded as the engine
//! stores them (ciphertext, never decrypted on the way), in content-named
//! 512 KiB blocks shared by the snapshots of one disk, resumable, restored
//! into new disks, collected when nothing refers to them.
//!
//! # Commit points
//!
//! The object store is never trusted to arbitrate: Garage, for one,
//! accepts a conditional PUT and overwrites anyway. Every decision lives in
//! the metadata store (table `objsnap.records`), one record per stored
//! snapshot:
//!
//! * `Uploading { done }`: the blocks of indexes below `done` are in the
//!   store (each PUT finished before the record said so).
//! * `Complete { manifest_sha256 }`: the commit point. It is written only
//!   after every block and then the manifest were stored; the manifest's
//!   SHA-256 in it authenticates what the store holds.
//! * `Deleting`: the customer deleted it; garbage collection removes its
//!   manifest, then the record.
//!
//! Object names are never reused for other content: a block's name is its
//! SHA-256, a manifest's path holds its snapshot's random id.
//!
//! # Garbage collection
//!
//! One pass at a time (a mutex), per lineage (the disk whose snapshots
//! share blocks): a lineage with an upload in progress is left alone; in
//! the others, every block object that no `Complete` record's manifest
//! names is deleted, then the manifests of `Deleting` records, then those
//! records. An upload records itself (`Uploading`) under the same mutex,
//! so it either starts before a pass (which then skips its lineage) or
//! after it. A crash at any step leaves work the next pass redoes; no
//! block a `Complete` record names is ever deleted.

mod copy;
pub mod foreign;
pub mod format;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, OnceLock};

use atrest_disk::{CHUNK, DiskError, KeyInfo, Labels, RawChunk, SnapshotInfo};
use atrest_kms::Caller;
use atrest_objstore::{ObjError, Objects};
use atrest_store::{Store, Table};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::jobs::{JobCell, JobKind, JobState};
use crate::{
    Actor, DISK_CONTEXT, DiskService, Result, SNAPSHOT_CONTEXT, ServiceError, SnapshotView, ctx,
    label, new_id, owned_by, owner_caller, owner_labels,
};
use format::{BLOCK_BYTES, BLOCK_CHUNKS, Manifest, ManifestKey};

/// Stored snapshots' records.
const RECORDS: Table = Table::new("objsnap.records");
/// On a local snapshot that is the source of an upload: the stored
/// snapshot's id. Such a snapshot is the service's, not listed.
pub(crate) const L_UPLOAD_FOR: &str = "upload_for";
/// On a disk being filled from a stored snapshot: its id.
pub(crate) const L_RESTORING: &str = "restoring_from";
/// Blocks read, encoded and uploaded per step (16 MiB).
const STEP_BLOCKS: u64 = 32;
/// Concurrent PUTs and GETs.
const CONCURRENCY: usize = 16;

/// Where a stored snapshot is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "state")]
pub(crate) enum RecordState {
    /// Blocks below `done` are stored.
    Uploading {
        /// Block indexes below this are in the store.
        done: u64,
        /// Bytes sent so far.
        sent: u64,
    },
    /// The manifest is stored; the commit point.
    Complete {
        /// SHA-256 (hex) of the manifest object.
        manifest_sha256: String,
        /// Blocks that hold data.
        blocks: u64,
        /// Bytes this upload sent (blocks not already stored, and the
        /// manifest).
        sent: u64,
    },
    /// Deleted; garbage collection removes what is left.
    Deleting,
}

/// A stored snapshot's record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Record {
    id: String,
    /// The disk it was taken of.
    disk: String,
    /// The blocks' name space: the disk's id.
    lineage: String,
    size: u64,
    block_size: u32,
    key: Option<KeyInfo>,
    /// Owner, region, creation time.
    labels: Labels,
    /// The local snapshot it is uploaded from (gone once complete).
    source: String,
    /// For a copy to another region: the stored snapshot it copies.
    #[serde(default)]
    copy_of: Option<String>,
    state: RecordState,
}

/// Where stored snapshots go: one object store for every region, or one
/// per region.
#[derive(Debug, Clone)]
pub struct ObjectStores {
    /// The store of every region without its own.
    pub default: Objects,
    /// Regions with a store of their own (`--region-object-store R=URL`).
    pub regions: BTreeMap<String, Objects>,
}

impl ObjectStores {
    /// The same store for every region.
    #[must_use]
    pub fn one(objects: Objects) -> Self {
        Self {
            default: objects,
            regions: BTreeMap::new(),
        }
    }

    fn of(&self, region: &str) -> &Objects {
        self.regions.get(region).unwrap_or(&self.default)
    }
}

/// The object store and the records, once configured.
pub(crate) struct Archive {
    stores: ObjectStores,
    meta: Arc<dyn Store>,
    /// One garbage collection at a time; uploads record themselves under
    /// it.
    gc: Mutex<()>,
    /// Wakes the garbage collector.
    wake: Mutex<std::sync::mpsc::Sender<()>>,
    /// The service, for the threads this starts.
    svc: std::sync::Weak<DiskService>,
}

/// What a garbage collection pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct GcReport {
    /// Block objects deleted.
    pub blocks_deleted: u64,
    /// Manifests deleted (of deleted snapshots).
    pub manifests_deleted: u64,
    /// Lineages left alone because an upload runs in them.
    pub lineages_skipped: u64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn store_err(e: atrest_store::StoreError) -> ServiceError {
    DiskError::Failed(format!("object-store records: {e}")).into()
}

impl Record {
    fn region(&self) -> String {
        label(&self.labels, crate::L_REGION)
    }

    /// The manifest of this snapshot with `blocks`, not yet sealed.
    fn manifest(&self, blocks: BTreeMap<u64, String>) -> Manifest {
        Manifest {
            format: format::MANIFEST_FORMAT.into(),
            id: self.id.clone(),
            lineage: self.lineage.clone(),
            disk: self.disk.clone(),
            size: self.size,
            block_size: self.block_size,
            chunk_size: CHUNK,
            block_chunks: BLOCK_CHUNKS,
            cipher: if self.key.is_some() {
                "AES-256-XTS"
            } else {
                "none"
            }
            .into(),
            key: self.key.as_ref().map(|k| ManifestKey {
                key_arn: k.key_arn.clone(),
                wrapped: base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    &k.wrapped,
                ),
                context: ctx(SNAPSHOT_CONTEXT, &self.id),
            }),
            account: label(&self.labels, crate::L_ACCOUNT),
            region: self.region(),
            created: label(&self.labels, crate::L_CREATED),
            blocks,
            mac: None,
        }
    }
}

impl Archive {
    /// Wakes the collector when deleted snapshots wait for it (a pass
    /// skips the lineage of an upload in progress).
    fn wake_if_deletions_wait(&self) {
        if self
            .records()
            .is_ok_and(|rs| rs.iter().any(|r| r.state == RecordState::Deleting))
        {
            // No collector (a recovery's archive): nothing to wake.
            let _ = lock(&self.wake).send(());
        }
    }

    /// The store of `region`'s snapshots.
    fn objects(&self, region: &str) -> &Objects {
        self.stores.of(region)
    }

    fn record(&self, id: &str) -> Result<Option<Record>> {
        let tx = self.meta.read().map_err(store_err)?;
        match tx.get(RECORDS, id.as_bytes()).map_err(store_err)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| DiskError::Failed(format!("stored snapshot record {id}: {e}")).into()),
        }
    }

    fn records(&self) -> Result<Vec<Record>> {
        let tx = self.meta.read().map_err(store_err)?;
        let mut out = Vec::new();
        for (k, v) in tx.scan(RECORDS, b"", None, usize::MAX).map_err(store_err)? {
            let r: Record = serde_json::from_slice(&v).map_err(|e| {
                DiskError::Failed(format!(
                    "stored snapshot record {}: {e}",
                    String::from_utf8_lossy(&k)
                ))
            })?;
            out.push(r);
        }
        Ok(out)
    }

    fn put_record(&self, r: &Record) -> Result<()> {
        let v = serde_json::to_vec(r)
            .map_err(|e| DiskError::Failed(format!("encoding a stored snapshot record: {e}")))?;
        let mut tx = self.meta.write().map_err(store_err)?;
        tx.put(RECORDS, r.id.as_bytes(), &v).map_err(store_err)?;
        tx.commit().map_err(store_err)
    }

    fn delete_record(&self, id: &str) -> Result<()> {
        let mut tx = self.meta.write().map_err(store_err)?;
        tx.delete(RECORDS, id.as_bytes()).map_err(store_err)?;
        tx.commit().map_err(store_err)
    }

    /// The manifest of a complete record, checked against the record.
    fn manifest(&self, r: &Record) -> Result<Manifest> {
        let RecordState::Complete {
            manifest_sha256, ..
        } = &r.state
        else {
            return Err(DiskError::Conflict(format!(
                "snapshot {} is not completely stored yet",
                r.id
            ))
            .into());
        };
        let name = format::manifest_name(&r.id);
        let bytes = self.objects(&r.region()).get(&name)?;
        let got = format::digest(&bytes);
        if &got != manifest_sha256 {
            return Err(format::Corrupt {
                object: name,
                detail: format!(
                    "its SHA-256 is {got}, not the {manifest_sha256} recorded when it was stored"
                ),
            }
            .into());
        }
        let m = Manifest::decode(&name, &bytes)?;
        if m.id != r.id || m.lineage != r.lineage || m.size != r.size {
            return Err(format::Corrupt {
                object: name,
                detail: "it describes another snapshot".into(),
            }
            .into());
        }
        Ok(m)
    }
}

impl DiskService {
    /// Stores snapshots in `objects`, with their records in `meta` (the
    /// engine's metadata store, or any other). Resumes the uploads and
    /// restores a crash interrupted, and collects garbage once.
    pub fn enable_object_store(
        self: &Arc<Self>,
        stores: ObjectStores,
        meta: Arc<dyn Store>,
    ) -> Result<()> {
        let (wake, woken) = std::sync::mpsc::channel();
        let archive = Arc::new(Archive {
            stores,
            meta,
            gc: Mutex::new(()),
            wake: Mutex::new(wake),
            svc: Arc::downgrade(self),
        });
        if self.archive.set(Arc::clone(&archive)).is_err() {
            return Err(DiskError::Conflict("the object store is set already".into()).into());
        }
        self.resume_archive()?;
        let svc = Arc::downgrade(self);
        // The collector runs once now and whenever a stored snapshot is
        // deleted; it ends with the service.
        spawn("objsnap-gc", move || {
            let mut first = true;
            while first || woken.recv().is_ok() {
                first = false;
                while woken.try_recv().is_ok() {}
                let Some(svc) = svc.upgrade() else { return };
                if let Err(e) = svc.collect_garbage() {
                    tracing::error!(error = %e, "object store garbage collection failed");
                }
            }
        });
        Ok(())
    }

    pub(crate) fn archive(&self) -> Result<&Arc<Archive>> {
        self.archive.get().ok_or_else(|| {
            DiskError::Invalid("this server has no object store configured".into()).into()
        })
    }

    /// Where snapshots are stored (for the server's banner and health).
    #[must_use]
    pub fn object_store_location(&self) -> Option<String> {
        self.archive.get().map(|a| a.stores.default.location())
    }

    fn stored_view(&self, r: &Record) -> SnapshotView {
        let (state, progress, sent) = match &r.state {
            RecordState::Uploading { done, sent } => (
                "uploading",
                Some(crate::Progress {
                    done: (done * BLOCK_BYTES).min(r.size),
                    total: r.size,
                }),
                Some(*sent),
            ),
            RecordState::Complete { sent, .. } => ("available", None, Some(*sent)),
            RecordState::Deleting => ("deleting", None, None),
        };
        let job = lock(&self.jobs)
            .values()
            .map(|c| c.get())
            .find(|j| {
                matches!(j.kind, JobKind::Upload | JobKind::Copy)
                    && j.target.as_deref() == Some(&r.id)
            })
            .map(|j| j.id);
        SnapshotView {
            id: r.id.clone(),
            disk: r.disk.clone(),
            size: r.size,
            block_size: r.block_size,
            encrypted: r.key.is_some(),
            key_arn: r.key.as_ref().map(|k| k.key_arn.clone()),
            account: label(&r.labels, crate::L_ACCOUNT),
            region: label(&r.labels, crate::L_REGION),
            created: label(&r.labels, crate::L_CREATED),
            storage: "object-store".into(),
            state: Some(state.into()),
            progress,
            uploaded_bytes: sent,
            job,
        }
    }

    /// The caller's stored snapshots (none without an object store).
    pub(crate) fn list_stored(&self, caller: &Caller) -> Result<Vec<SnapshotView>> {
        let Some(a) = self.archive.get() else {
            return Ok(Vec::new());
        };
        Ok(a.records()?
            .iter()
            .filter(|r| owned_by(&r.labels, caller) && r.state != RecordState::Deleting)
            .map(|r| self.stored_view(r))
            .collect())
    }

    /// The caller's stored snapshot `id`, if there is one.
    pub(crate) fn own_stored(&self, caller: &Caller, id: &str) -> Result<Option<Record>> {
        let Some(a) = self.archive.get() else {
            return Ok(None);
        };
        match a.record(id)? {
            Some(r) if owned_by(&r.labels, caller) && r.state != RecordState::Deleting => {
                Ok(Some(r))
            }
            Some(_) => Err(DiskError::NotFound {
                kind: "snapshot",
                id: id.to_owned(),
            }
            .into()),
            None => Ok(None),
        }
    }

    /// One of the caller's stored snapshots, as a view.
    pub(crate) fn describe_stored(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<Option<SnapshotView>> {
        Ok(self.own_stored(caller, id)?.map(|r| self.stored_view(&r)))
    }

    /// Snapshots one of the caller's disks into the object store: a local
    /// snapshot (O(1)) is taken, uploaded in the background, and released
    /// once the stored snapshot is complete. Returns the stored snapshot
    /// (state `uploading`, with its job).
    pub fn create_stored_snapshot(
        self: &Arc<Self>,
        caller: &Caller,
        disk: &str,
    ) -> Result<SnapshotView> {
        let archive = Arc::clone(self.archive()?);
        let d = self.own_disk(Actor::Customer, caller, disk)?;
        let id = new_id("snap")?;
        let source = self.create_snapshot_labelled(
            Actor::Customer,
            caller,
            disk,
            Labels::from([(L_UPLOAD_FOR.to_owned(), id.clone())]),
        )?;
        let key = match &source.key {
            None => None,
            Some(k) => match self.derived_key_info(
                caller,
                &format!("snapshot {id}"),
                k,
                &ctx(SNAPSHOT_CONTEXT, &source.id),
                &ctx(SNAPSHOT_CONTEXT, &id),
            ) {
                Ok(k) => Some(k),
                Err(e) => {
                    self.drop_source(&source);
                    return Err(e);
                }
            },
        };
        let record = Record {
            id: id.clone(),
            disk: disk.to_owned(),
            lineage: d.id,
            size: source.size,
            block_size: source.block_size,
            key,
            labels: owner_labels(caller),
            source: source.id.clone(),
            copy_of: None,
            state: RecordState::Uploading { done: 0, sent: 0 },
        };
        {
            let _gc = lock(&archive.gc);
            if let Err(e) = archive.put_record(&record) {
                drop(_gc);
                if let Some(k) = &record.key {
                    self.retire(&caller.region, k);
                }
                self.drop_source(&source);
                return Err(e);
            }
        }
        tracing::info!(disk, snapshot = %id, "snapshot upload to the object store started");
        self.spawn_upload(&archive, record.clone(), caller)?;
        Ok(self.stored_view(&record))
    }

    /// Deletes a local snapshot the service took as an upload's source.
    fn drop_source(&self, s: &SnapshotInfo) {
        let region = label(&s.labels, crate::L_REGION);
        match self.engine.delete_snapshot(&s.id) {
            Ok(()) => {
                if let Some(k) = &s.key {
                    self.retire(&region, k);
                }
            }
            Err(DiskError::NotFound { .. }) => {}
            Err(e) => {
                tracing::error!(snapshot = %s.id, error = %e, "cannot release an upload's local snapshot");
            }
        }
    }

    fn spawn_upload(
        self: &Arc<Self>,
        archive: &Arc<Archive>,
        r: Record,
        owner: &Caller,
    ) -> Result<()> {
        let cell = self.new_job(
            JobKind::Upload,
            &r.disk,
            Some(r.id.clone()),
            owner,
            r.size,
            Labels::new(),
        )?;
        let svc = Arc::clone(self);
        let archive = Arc::clone(archive);
        let what = format!("upload of snapshot {}", r.id);
        spawn_job(cell, "objsnap-upload", what, move |cell| {
            svc.upload(&archive, cell, r)
        });
        Ok(())
    }

    /// The digests a complete snapshot of `lineage` already stored (the
    /// latest), which an upload need not send again. Its blocks cannot be
    /// collected while this upload runs (its lineage is skipped).
    fn stored_digests(&self, archive: &Archive, lineage: &str, not: &str) -> BTreeSet<String> {
        let Ok(records) = archive.records() else {
            return BTreeSet::new();
        };
        let base = records
            .iter()
            .filter(|r| {
                r.lineage == lineage
                    && r.id != not
                    && matches!(r.state, RecordState::Complete { .. })
            })
            .max_by(|a, b| {
                label(&a.labels, crate::L_CREATED).cmp(&label(&b.labels, crate::L_CREATED))
            });
        match base.map(|b| archive.manifest(b)) {
            Some(Ok(m)) => m.blocks.into_values().collect(),
            Some(Err(e)) => {
                tracing::warn!(lineage, error = %e, "cannot read the previous manifest; uploading every block");
                BTreeSet::new()
            }
            None => BTreeSet::new(),
        }
    }

    fn upload(&self, archive: &Archive, cell: &JobCell, mut r: Record) -> Result<()> {
        let RecordState::Uploading { done, mut sent } = r.state else {
            return Ok(());
        };
        let source = self.engine.snapshot(&r.source)?;
        let have = self.stored_digests(archive, &r.lineage, &r.id);
        let chunks = r.size.div_ceil(CHUNK);
        let nblocks = r.size.div_ceil(BLOCK_BYTES);
        let mut blocks = BTreeMap::new();
        let objects = archive.objects(&r.region());
        // One step's blocks are read, encoded and hashed while the previous
        // step's are being sent; `done` moves past a step once its PUTs
        // have all finished.
        std::thread::scope(|scope| -> Result<()> {
            let mut in_flight: Option<(std::thread::ScopedJoinHandle<'_, Result<u64>>, u64)> = None;
            let mut b = 0u64;
            while b < nblocks || in_flight.is_some() {
                let mut next = None;
                if b < nblocks {
                    let end = (b + STEP_BLOCKS).min(nblocks);
                    let first = b * BLOCK_CHUNKS;
                    let count = (end * BLOCK_CHUNKS).min(chunks) - first;
                    let raw = self.engine.snapshot_raw_chunks(&source.id, first, count)?;
                    let mut puts = Vec::new();
                    for (i, group) in raw.chunks(BLOCK_CHUNKS as usize).enumerate() {
                        let index = b + i as u64;
                        let Some(obj) = format::encode_block(group) else {
                            continue;
                        };
                        let digest = format::digest(&obj);
                        if index >= done && !have.contains(&digest) {
                            puts.push((format::block_name(&r.lineage, &digest), Bytes::from(obj)));
                        }
                        blocks.insert(index, digest);
                    }
                    next = Some((puts, end));
                    b = end;
                }
                if let Some((h, end)) = in_flight.take() {
                    sent += h
                        .join()
                        .map_err(|_| DiskError::Failed("an upload thread panicked".into()))??;
                    if end > done {
                        r.state = RecordState::Uploading { done: end, sent };
                        archive.put_record(&r)?;
                    }
                    cell.update(|j| {
                        j.progress.done = (end * BLOCK_BYTES).min(r.size);
                        j.transferred = Some(sent);
                    });
                }
                if let Some((puts, end)) = next {
                    in_flight = Some((
                        scope.spawn(move || -> Result<u64> {
                            let bytes: u64 = puts.iter().map(|(_, o)| o.len() as u64).sum();
                            if !puts.is_empty() {
                                objects.put_many(puts, CONCURRENCY)?;
                            }
                            Ok(bytes)
                        }),
                        end,
                    ));
                }
            }
            Ok(())
        })?;
        let manifest = r.manifest(blocks);
        let mut manifest = manifest;
        if let Some(k) = &r.key {
            // The manifest is authenticated under the data key, so a server
            // without this record (a restore elsewhere) can trust it.
            let region = r.region();
            let data_key = self
                .unwrap_key(&region, k, &ctx(SNAPSHOT_CONTEXT, &r.id))
                .map_err(|e| self.key_failure(&region, &format!("snapshot {}", r.id), k, e))?;
            manifest.seal(&data_key);
        }
        let bytes = manifest.encode();
        let manifest_sha256 = format::digest(&bytes);
        sent += bytes.len() as u64;
        archive
            .objects(&r.region())
            .put(&format::manifest_name(&r.id), Bytes::from(bytes))?;
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
        // The local snapshot has served its purpose.
        self.drop_source(&source);
        archive.wake_if_deletions_wait();
        Ok(())
    }

    /// Restores one of the caller's stored snapshots into a new disk, in
    /// the background: the disk exists at once (state `restoring`) and can
    /// be attached when the job is done.
    pub(crate) fn restore_stored(
        &self,
        caller: &Caller,
        r: &Record,
        extra: Labels,
    ) -> Result<crate::DiskView> {
        let archive = Arc::clone(self.archive()?);
        let svc = archive
            .svc
            .upgrade()
            .ok_or_else(|| DiskError::Failed("the disk service is stopping".into()))?;
        // Refuses an incomplete snapshot, and a manifest that does not match
        // the record, before anything is created.
        archive.manifest(r)?;
        let id = new_id("disk")?;
        let key = match &r.key {
            None => None,
            Some(k) => Some(self.derived_key_info(
                caller,
                &format!("snapshot {}", r.id),
                k,
                &ctx(SNAPSHOT_CONTEXT, &r.id),
                &ctx(DISK_CONTEXT, &id),
            )?),
        };
        let mut labels = owner_labels(caller);
        labels.extend(extra);
        labels.insert(L_RESTORING.to_owned(), r.id.clone());
        let spec = atrest_disk::DiskSpec {
            size: r.size,
            block_size: r.block_size,
            key: key.clone(),
            labels,
        };
        let d = match self.engine.create_disk(&id, &spec) {
            Ok(d) => d,
            Err(e) => {
                if let Some(k) = &key {
                    self.retire(&caller.region, k);
                }
                return Err(e.into());
            }
        };
        tracing::info!(snapshot = %r.id, disk = %id, "restore from the object store started");
        svc.spawn_restore(&archive, r.id.clone(), id, caller)?;
        Ok(self.disk_view(&d))
    }

    fn spawn_restore(
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
        let what = format!("restore of snapshot {snapshot} into disk {disk}");
        spawn_job(cell, "objsnap-restore", what, move |cell| {
            svc.restore(&archive, cell, &snapshot, &disk)
        });
        Ok(())
    }

    fn restore(
        self: &Arc<Self>,
        archive: &Archive,
        cell: &JobCell,
        snapshot: &str,
        disk: &str,
    ) -> Result<()> {
        let r = archive
            .record(snapshot)?
            .ok_or_else(|| DiskError::NotFound {
                kind: "snapshot",
                id: snapshot.to_owned(),
            })?;
        let m = archive.manifest(&r)?;
        let att = self.attach_internal(disk)?;
        let entries: Vec<(u64, String)> = m.blocks.into_iter().collect();
        let mut got = 0u64;
        for_each_step(
            archive.objects(&r.region()),
            &m.lineage,
            &entries,
            |step, names, objs| {
                for (((index, digest), name), obj) in step.iter().zip(names).zip(objs) {
                    got += obj.len() as u64;
                    let chunks = format::decode_block(name, &obj, digest, m.block_size)?;
                    for (i, c) in chunks.iter().enumerate() {
                        if matches!(c, RawChunk::Zero) {
                            continue;
                        }
                        let idx = index * BLOCK_CHUNKS + i as u64;
                        att.handle(|od| od.write_raw_chunk(idx, c))?;
                    }
                }
                att.flush()?;
                let last = step.last().map_or(0, |(i, _)| *i);
                cell.update(|j| {
                    j.progress.done = ((last + 1) * BLOCK_BYTES).min(r.size);
                    j.transferred = Some(got);
                });
                Ok(())
            },
        )?;
        att.flush()?;
        drop(att);
        let mut labels = self.engine.disk(disk)?.labels;
        labels.remove(L_RESTORING);
        self.engine.set_labels(disk, labels)?;
        cell.update(|j| j.progress.done = r.size);
        Ok(())
    }

    /// Deletes one of the caller's stored snapshots (the record becomes
    /// `Deleting`; its objects go at the next garbage collection, started
    /// at once). Refused while a disk is being restored from it.
    pub(crate) fn delete_stored(&self, caller: &Caller, mut r: Record) -> Result<()> {
        let archive = self.archive()?;
        if matches!(r.state, RecordState::Uploading { .. }) {
            return Err(DiskError::Conflict(format!(
                "snapshot {} is being uploaded; delete it when the job is done",
                r.id
            ))
            .into());
        }
        if let Some(c) = archive.records()?.iter().find(|c| {
            c.copy_of.as_deref() == Some(&r.id) && matches!(c.state, RecordState::Uploading { .. })
        }) {
            return Err(DiskError::Conflict(format!(
                "snapshot {} is being copied into {}; delete it when the job is done",
                r.id, c.id
            ))
            .into());
        }
        if let Some(d) = self
            .engine
            .disks()?
            .iter()
            .find(|d| d.labels.get(L_RESTORING) == Some(&r.id))
        {
            return Err(DiskError::Conflict(format!(
                "disk {} is being restored from snapshot {}; delete it when the job is done",
                d.id, r.id
            ))
            .into());
        }
        r.state = RecordState::Deleting;
        archive.put_record(&r)?;
        if let Some(k) = &r.key {
            self.retire(&caller.region, k);
        }
        tracing::info!(snapshot = %r.id, "stored snapshot deleted");
        // The collector may have ended with a dropped service; nothing to do.
        let _ = lock(&archive.wake).send(());
        Ok(())
    }

    /// One garbage-collection pass over the object store (see the module
    /// documentation).
    pub fn collect_garbage(&self) -> Result<GcReport> {
        let archive = self.archive()?;
        let _gc = lock(&archive.gc);
        let mut report = GcReport::default();
        let records = archive.records()?;
        // Only a deleted snapshot leaves blocks no record names (an upload
        // or copy that completes names every block it sent), so only the
        // lineages of deleted snapshots are listed.
        let lineages: BTreeSet<&str> = records
            .iter()
            .filter(|r| r.state == RecordState::Deleting)
            .map(|r| r.lineage.as_str())
            .collect();
        for lineage in lineages {
            let mine: Vec<&Record> = records.iter().filter(|r| r.lineage == lineage).collect();
            if mine
                .iter()
                .any(|r| matches!(r.state, RecordState::Uploading { .. }))
            {
                report.lineages_skipped += 1;
                continue;
            }
            let mut live = BTreeSet::new();
            for r in mine
                .iter()
                .filter(|r| matches!(r.state, RecordState::Complete { .. }))
            {
                // A manifest that cannot be read stops the pass for this
                // lineage: its blocks might be live.
                live.extend(archive.manifest(r)?.blocks.into_values());
            }
            // A lineage's snapshots are all in one region (a copy to another
            // region starts a lineage of its own).
            let objects = archive.objects(&mine[0].region());
            let prefix = format!("blocks/{lineage}/");
            for o in objects.list(&prefix)? {
                let digest = o.name.strip_prefix(&prefix).unwrap_or_default();
                if !live.contains(digest) {
                    gc_pause();
                    objects.delete(&o.name)?;
                    report.blocks_deleted += 1;
                }
            }
            for r in mine.iter().filter(|r| r.state == RecordState::Deleting) {
                gc_pause();
                objects.delete(&format::manifest_name(&r.id))?;
                report.manifests_deleted += 1;
                archive.delete_record(&r.id)?;
            }
        }
        if report.blocks_deleted + report.manifests_deleted > 0 {
            tracing::info!(
                blocks = report.blocks_deleted,
                manifests = report.manifests_deleted,
                "object store garbage collected"
            );
        }
        Ok(report)
    }

    /// Resumes interrupted uploads and restores; releases the local
    /// snapshots of uploads that completed just before a crash.
    fn resume_archive(self: &Arc<Self>) -> Result<()> {
        let archive = Arc::clone(self.archive()?);
        for r in archive.records()? {
            let Some(owner) = owner_caller(&r.labels) else {
                continue;
            };
            match &r.state {
                RecordState::Uploading { .. } if r.copy_of.is_some() => {
                    tracing::info!(snapshot = %r.id, "resuming a snapshot copy");
                    self.spawn_copy(&archive, r.clone(), &owner)?;
                }
                RecordState::Uploading { .. } => match self.engine.snapshot(&r.source) {
                    Ok(_) => {
                        tracing::info!(snapshot = %r.id, "resuming a snapshot upload");
                        self.spawn_upload(&archive, r.clone(), &owner)?;
                    }
                    Err(DiskError::NotFound { .. }) => {
                        // Its source is gone: it can never complete.
                        tracing::warn!(snapshot = %r.id, "an upload lost its source; dropping it");
                        if let Some(k) = &r.key {
                            self.retire(&owner.region, k);
                        }
                        let mut gone = r.clone();
                        gone.state = RecordState::Deleting;
                        archive.put_record(&gone)?;
                    }
                    Err(e) => return Err(e.into()),
                },
                RecordState::Complete { .. } => {
                    if let Ok(s) = self.engine.snapshot(&r.source) {
                        self.drop_source(&s);
                    }
                }
                RecordState::Deleting => {}
            }
        }
        for d in self.engine.disks()? {
            let (Some(snapshot), Some(owner)) =
                (d.labels.get(L_RESTORING), owner_caller(&d.labels))
            else {
                continue;
            };
            tracing::info!(disk = %d.id, %snapshot, "restarting a restore");
            if d.labels.contains_key(foreign::L_RESTORE_PROVIDER) {
                self.spawn_foreign_restore(&archive, snapshot.clone(), d.id.clone(), &owner)?;
            } else {
                self.spawn_restore(&archive, snapshot.clone(), d.id.clone(), &owner)?;
            }
        }
        // Upload sources whose record never got written (a crash between
        // the local snapshot and the record) are released.
        for s in self.engine.snapshots()? {
            if let Some(t) = s.labels.get(L_UPLOAD_FOR)
                && archive.record(t)?.is_none()
            {
                self.drop_source(&s);
            }
        }
        Ok(())
    }

    /// Writes the plaintext image of stored snapshot `id` to `out`, for
    /// `atrest recover snapshot`: every block is fetched, checked against
    /// the manifest, and decrypted with the data key unwrapped through the
    /// key service (as the disk service, under the snapshot's grant).
    pub fn recover_stored(
        &self,
        stores: ObjectStores,
        meta: Arc<dyn Store>,
        id: &str,
        out: &mut dyn std::io::Write,
    ) -> Result<u64> {
        let archive = &Archive {
            stores,
            meta,
            gc: Mutex::new(()),
            wake: Mutex::new(std::sync::mpsc::channel().0),
            svc: std::sync::Weak::new(),
        };
        let r = archive.record(id)?.ok_or_else(|| DiskError::NotFound {
            kind: "snapshot",
            id: id.to_owned(),
        })?;
        let m = archive.manifest(&r)?;
        let region = label(&r.labels, crate::L_REGION);
        let mut cipher =
            match &r.key {
                None => None,
                Some(k) => {
                    let key = self
                        .unwrap_key(&region, k, &ctx(SNAPSHOT_CONTEXT, &r.id))
                        .map_err(|e| self.key_failure(&region, &format!("snapshot {id}"), k, e))?;
                    Some(atrest_crypto::xts::Xts256::new(&key).map_err(|e| {
                        DiskError::Failed(format!("preparing the snapshot's key: {e}"))
                    })?)
                }
            };
        let zeros = vec![0u8; BLOCK_BYTES as usize];
        let nblocks = r.size.div_ceil(BLOCK_BYTES);
        let mut written = 0u64;
        let mut b = 0u64;
        while b < nblocks {
            let end = (b + STEP_BLOCKS).min(nblocks);
            let want: Vec<(u64, String)> = m
                .blocks
                .range(b..end)
                .map(|(i, d)| (*i, d.clone()))
                .collect();
            let names: Vec<String> = want
                .iter()
                .map(|(_, d)| format::block_name(&m.lineage, d))
                .collect();
            let objs = archive
                .objects(&r.region())
                .get_many(names.clone(), CONCURRENCY)?;
            let mut fetched: BTreeMap<u64, Vec<RawChunk>> = BTreeMap::new();
            for (((index, digest), name), obj) in want.iter().zip(&names).zip(objs) {
                fetched.insert(
                    *index,
                    format::decode_block(name, &obj, digest, m.block_size)?,
                );
            }
            for index in b..end {
                let len = (r.size - index * BLOCK_BYTES).min(BLOCK_BYTES);
                let mut plain = vec![0u8; len as usize];
                if let Some(chunks) = fetched.remove(&index) {
                    for (i, c) in chunks.into_iter().enumerate() {
                        let RawChunk::Data { mut bytes } = c else {
                            continue;
                        };
                        let at = i * CHUNK as usize;
                        let chunk_idx = index * BLOCK_CHUNKS + i as u64;
                        if let Some(x) = cipher.as_mut() {
                            let first = chunk_idx * CHUNK / u64::from(m.block_size);
                            x.decrypt_sectors(first, m.block_size as usize, &mut bytes)
                                .map_err(|e| DiskError::Failed(format!("decrypting: {e}")))?;
                        }
                        let n = bytes.len().min(plain.len().saturating_sub(at));
                        plain[at..at + n].copy_from_slice(&bytes[..n]);
                        zeroize::Zeroize::zeroize(&mut bytes);
                    }
                    out.write_all(&plain)
                } else {
                    out.write_all(&zeros[..len as usize])
                }
                .map_err(|e| DiskError::Io {
                    context: "writing the recovered image".into(),
                    error: e,
                })?;
                zeroize::Zeroize::zeroize(&mut plain);
                written += len;
            }
            b = end;
        }
        Ok(written)
    }
}

/// Fetches the blocks `entries` names (index, digest) from `objects`, a
/// step at a time, and hands each step to `f` while the next one is being
/// fetched. Stops at the first error (of a fetch or of `f`).
pub(crate) fn for_each_step(
    objects: &Objects,
    lineage: &str,
    entries: &[(u64, String)],
    mut f: impl FnMut(&[(u64, String)], &[String], Vec<Bytes>) -> Result<()>,
) -> Result<()> {
    let steps: Vec<&[(u64, String)]> = entries.chunks(STEP_BLOCKS as usize).collect();
    let names = |step: &[(u64, String)]| -> Vec<String> {
        step.iter()
            .map(|(_, d)| format::block_name(lineage, d))
            .collect()
    };
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<Bytes>>>(1);
        let fetch_steps = steps.clone();
        scope.spawn(move || {
            for step in fetch_steps {
                let got = objects
                    .get_many(names(step), CONCURRENCY)
                    .map_err(Into::into);
                let failed = got.is_err();
                if tx.send(got).is_err() || failed {
                    return;
                }
            }
        });
        for step in steps {
            let objs = rx
                .recv()
                .map_err(|_| DiskError::Failed("the block fetcher stopped".into()))??;
            f(step, &names(step), objs)?;
        }
        Ok(())
    })
}

/// Tests slow garbage collection down to kill it between steps
/// (`ATREST_TEST_GC_STEP_MS`); unset in production.
fn gc_pause() {
    static MS: OnceLock<u64> = OnceLock::new();
    let ms = *MS.get_or_init(|| {
        std::env::var("ATREST_TEST_GC_STEP_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    });
    if ms > 0 {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

/// Runs `work` on a thread of its own as `cell`'s job: the job ends
/// succeeded, or failed with the error (logged with `what`; every job here
/// resumes or restarts at the next start).
pub(crate) fn spawn_job(
    cell: Arc<JobCell>,
    thread: &str,
    what: String,
    work: impl FnOnce(&JobCell) -> Result<()> + Send + 'static,
) {
    spawn(thread, move || match work(&cell) {
        Ok(()) => {
            cell.update(|j| j.state = JobState::Succeeded);
            tracing::info!(job = %what, "done");
        }
        Err(e) => {
            tracing::error!(job = %what, error = %e, "stopped; it resumes at the next start");
            cell.update(|j| {
                j.state = JobState::Failed;
                j.error = Some(e.to_string());
            });
        }
    });
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) {
    if let Err(e) = std::thread::Builder::new().name(name.into()).spawn(f) {
        tracing::error!(error = %e, thread = name, "cannot start a thread");
    }
}

impl From<ObjError> for ServiceError {
    fn from(e: ObjError) -> Self {
        Self::ObjectStore(e)
    }
}

impl From<format::Corrupt> for ServiceError {
    fn from(e: format::Corrupt) -> Self {
        Self::Corrupt(e)
    }
}
