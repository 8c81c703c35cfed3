//! Long operations: re-encryption under a fresh data key (online,
//! resumable) and conversion between unencrypted and encrypted (a copy into
//! a new disk). Each runs on its own thread; its progress is followed
//! through [`DiskService::job`].

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use atrest_disk::{CHUNK, DiskError, KeyInfo, Labels};
use atrest_kms::Caller;
use serde::Serialize;

use crate::{
    Actor, DISK_CONTEXT, DiskService, L_CONVERTING, NewDisk, Progress, Result, ServiceError,
    busy_check, ctx, manager_labels, new_id, now_rfc3339, owner_caller,
};

/// Chunks re-encrypted per commit.
const REKEY_BATCH: u64 = 16;
/// Bytes copied per step of a conversion.
const COPY_STEP: usize = 1 << 20;

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum JobKind {
    /// Re-encrypt a disk under a fresh data key.
    Reencrypt,
    /// Copy a disk into a new one, encrypted differently.
    Convert,
    /// Upload a snapshot to the object store (`target`: the stored
    /// snapshot).
    Upload,
    /// Fill a new disk from a snapshot in the object store (`source`: the
    /// snapshot).
    Restore,
    /// Copy a stored snapshot to another region, re-encrypted (`source`:
    /// the snapshot; `target`: the copy).
    Copy,
}

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum JobState {
    /// Working.
    Running,
    /// Done.
    Succeeded,
    /// Stopped on an error (see `error`); a re-encryption resumes at the
    /// next start.
    Failed,
}

/// A job, as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Job {
    /// Id (`job-` and 16 hex digits).
    pub id: String,
    /// What it does.
    pub kind: JobKind,
    /// The disk it works on (a conversion's source).
    pub disk: String,
    /// A conversion's new disk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Owning account.
    pub account: String,
    /// Region.
    pub region: String,
    /// When it started (RFC 3339).
    pub started: String,
    /// State.
    pub state: JobState,
    /// Progress in bytes of the disk.
    pub progress: Progress,
    /// Bytes sent to (upload) or read from (restore) the object store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transferred: Option<u64>,
    /// A restore's snapshot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A running job's shared record.
pub(crate) struct JobCell {
    job: Mutex<Job>,
    /// Its disk's manager's labels when it started (none for a
    /// customer's job): a job on a managed disk is its manager's.
    manager: Labels,
}

impl JobCell {
    pub(crate) fn update(&self, f: impl FnOnce(&mut Job)) {
        f(&mut self
            .job
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner));
    }

    pub(crate) fn get(&self) -> Job {
        self.job
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl DiskService {
    pub(crate) fn new_job(
        &self,
        kind: JobKind,
        disk: &str,
        target: Option<String>,
        owner: &Caller,
        total: u64,
        manager: Labels,
    ) -> Result<Arc<JobCell>> {
        let job = Job {
            id: new_id("job")?,
            kind,
            disk: disk.to_owned(),
            target,
            account: owner.account.as_str().to_owned(),
            region: owner.region.clone(),
            started: now_rfc3339(),
            state: JobState::Running,
            progress: Progress { done: 0, total },
            transferred: None,
            source: None,
            error: None,
        };
        let cell = Arc::new(JobCell {
            job: Mutex::new(job.clone()),
            manager,
        });
        self.jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(job.id, Arc::clone(&cell));
        Ok(cell)
    }

    /// The caller's jobs (not those of a service's disks).
    pub fn list_jobs(&self, caller: &Caller) -> Vec<Job> {
        self.jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .filter(|c| Actor::Customer.sees(&c.manager))
            .map(|c| c.get())
            .filter(|j| j.account == caller.account.as_str() && j.region == caller.region)
            .collect()
    }

    /// One of the caller's jobs.
    pub fn job(&self, caller: &Caller, id: &str) -> Result<Job> {
        self.job_by(Actor::Customer, caller, id)
    }

    pub(crate) fn job_by(&self, actor: Actor, caller: &Caller, id: &str) -> Result<Job> {
        let cell = self
            .jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(id)
            .cloned();
        let job = cell.as_ref().map(|c| (c.get(), &c.manager));
        match job {
            Some((j, manager))
                if j.account == caller.account.as_str() && j.region == caller.region =>
            {
                actor.check("job", id, manager)?;
                Ok(j)
            }
            _ => Err(ServiceError::NoJob(id.to_owned())),
        }
    }

    /// Starts re-encrypting one of the caller's disks under a fresh data
    /// key (same master key), online: the disk stays usable. Resumes after
    /// a crash at the next start.
    pub fn reencrypt(self: &Arc<Self>, caller: &Caller, disk: &str) -> Result<Job> {
        let _g = self.lock_ops();
        let d = self.own_disk(Actor::Customer, caller, disk)?;
        busy_check(&d)?;
        let Some(key) = d.key.clone() else {
            return Err(DiskError::Invalid(format!(
                "disk {disk} is not encrypted; convert it into a new encrypted disk instead"
            ))
            .into());
        };
        let resource = format!("disk {disk}");
        self.check_key(&caller.region, &resource, &key)?;
        self.caller_may(
            caller,
            &key.key_arn,
            &["Decrypt", "GenerateDataKeyWithoutPlaintext"],
        )?;
        let context = ctx(DISK_CONTEXT, disk);
        let wrapped = self
            .new_data_key(&caller.region, &key.key_arn, &context)
            .map_err(|e| match e {
                ServiceError::Kms(k) => self.key_failure(&caller.region, &resource, &key, k),
                other => other,
            })?;
        let next_info = KeyInfo {
            wrapped,
            ..key.clone()
        };
        let next = self
            .unwrap_key(&caller.region, &next_info, &context)
            .map_err(|e| self.key_failure(&caller.region, &resource, &key, e))?;
        let att = self.attach_internal(disk)?;
        let p = att.handle(|od| od.start_rekey(next_info, &next))?;
        drop(next);
        let cell = self.new_job(
            JobKind::Reencrypt,
            disk,
            None,
            caller,
            d.size,
            manager_labels(&d.labels),
        )?;
        cell.update(|j| j.progress.done = (p.done * CHUNK).min(d.size));
        tracing::info!(disk, "re-encryption started");
        Ok(self.spawn_rekey(cell, att, d.size))
    }

    fn spawn_rekey(self: &Arc<Self>, cell: Arc<JobCell>, att: crate::Attachment, size: u64) -> Job {
        let job = cell.get();
        let run = move || {
            let disk = att.disk().to_owned();
            let outcome = loop {
                match att.handle(|od| od.rekey_step(REKEY_BATCH)) {
                    Ok(p) if p.finished => break Ok(()),
                    Ok(p) => cell.update(|j| j.progress.done = (p.done * CHUNK).min(size)),
                    Err(e) => break Err(e),
                }
            };
            // The disk is closed before the job says it is done, so that an
            // attach right after the answer finds it free.
            drop(att);
            match outcome {
                Ok(()) => {
                    cell.update(|j| {
                        j.state = JobState::Succeeded;
                        j.progress.done = size;
                    });
                    tracing::info!(%disk, "re-encryption finished");
                }
                Err(e) => {
                    tracing::error!(%disk, error = %e, "re-encryption stopped; it resumes at the next start");
                    cell.update(|j| {
                        j.state = JobState::Failed;
                        j.error = Some(e.to_string());
                    });
                }
            }
        };
        if let Err(e) = std::thread::Builder::new()
            .name("disk-rekey".into())
            .spawn(run)
        {
            tracing::error!(error = %e, "cannot start a re-encryption thread");
        }
        job
    }

    /// Starts copying one of the caller's disks into a new disk, encrypted
    /// (under `key_id`, default the disk service key) or not. The source
    /// cannot be attached until the copy is done; the new disk cannot be
    /// attached, snapshotted or changed until then. Returns the job; its
    /// `target` is the new disk.
    pub fn convert(
        self: &Arc<Self>,
        caller: &Caller,
        disk: &str,
        encrypted: bool,
        key_id: Option<&str>,
    ) -> Result<Job> {
        self.convert_by(Actor::Customer, caller, disk, encrypted, key_id)
    }

    /// The target, and the job, inherit the source's manager.
    pub(crate) fn convert_by(
        self: &Arc<Self>,
        actor: Actor,
        caller: &Caller,
        disk: &str,
        encrypted: bool,
        key_id: Option<&str>,
    ) -> Result<Job> {
        let src = self.own_disk(actor, caller, disk)?;
        busy_check(&src)?;
        if src.key.is_some() == encrypted && key_id.is_none() {
            return Err(DiskError::Invalid(format!(
                "disk {disk} is {} already; to change its key use rekey",
                if encrypted {
                    "encrypted"
                } else {
                    "unencrypted"
                }
            ))
            .into());
        }
        if let Some(k) = &src.key {
            self.check_key(&caller.region, &format!("disk {disk}"), k)?;
            self.caller_may(caller, &k.key_arn, &["Decrypt"])?;
        }
        if self.is_open(disk) {
            return Err(DiskError::Conflict(format!(
                "disk {disk} is in use; detach it before converting it (or convert a clone of a snapshot of it)"
            ))
            .into());
        }
        let manager = manager_labels(&src.labels);
        let mut extra = manager.clone();
        extra.insert(L_CONVERTING.to_owned(), disk.to_owned());
        let target = self.create_disk_labelled(
            caller,
            &NewDisk {
                size: src.size,
                block_size: Some(src.block_size),
                encrypted: Some(encrypted),
                key_id: key_id.map(str::to_owned),
                shareable: Some(src.labels.contains_key(crate::L_SHAREABLE)),
                // The copy replaces the source: it keeps its tags.
                tags: crate::tags::of(&src.labels),
            },
            extra,
        )?;
        let cell = self.new_job(
            JobKind::Convert,
            disk,
            Some(target.id.clone()),
            caller,
            src.size,
            manager,
        )?;
        Ok(self.spawn_convert(cell, disk.to_owned(), target.id))
    }

    fn spawn_convert(self: &Arc<Self>, cell: Arc<JobCell>, src: String, target: String) -> Job {
        let job = cell.get();
        self.converting_sources().insert(src.clone());
        let svc = Arc::clone(self);
        let run = move || {
            let r = svc.copy_disk(&cell, &src, &target);
            svc.converting_sources().remove(&src);
            match r {
                Ok(()) => {
                    cell.update(|j| j.state = JobState::Succeeded);
                    tracing::info!(source = %src, target = %target, "conversion finished");
                }
                Err(e) => {
                    tracing::error!(source = %src, target = %target, error = %e, "conversion stopped; it restarts at the next start");
                    cell.update(|j| {
                        j.state = JobState::Failed;
                        j.error = Some(e.to_string());
                    });
                }
            }
        };
        if let Err(e) = std::thread::Builder::new()
            .name("disk-convert".into())
            .spawn(run)
        {
            tracing::error!(error = %e, "cannot start a conversion thread");
        }
        job
    }

    fn converting_sources(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.converting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether a conversion is copying from `disk`.
    pub(crate) fn is_converting_source(&self, disk: &str) -> bool {
        self.converting_sources().contains(disk)
    }

    fn copy_disk(self: &Arc<Self>, cell: &JobCell, src: &str, target: &str) -> Result<()> {
        let from = self.attach_internal(src)?;
        let to = self.attach_internal(target)?;
        let size = from.size()?;
        let mut buf = vec![0u8; COPY_STEP];
        let mut off = 0u64;
        while off < size {
            let n = usize::try_from((size - off).min(COPY_STEP as u64)).unwrap_or(COPY_STEP);
            let b = &mut buf[..n];
            from.read(off, b)?;
            // A target never holds data where the source reads as zeros
            // (it starts empty and the source cannot change meanwhile), so
            // zero stretches are skipped, keeping the copy thin.
            let mut at = 0usize;
            while at < n {
                let m = (CHUNK as usize).min(n - at);
                let piece = &b[at..at + m];
                if piece.iter().any(|&x| x != 0) {
                    to.write(off + at as u64, piece, false)?;
                }
                at += m;
            }
            b.fill(0);
            off += n as u64;
            cell.update(|j| j.progress.done = off);
        }
        to.flush()?;
        let mut labels = self.engine.disk(target)?.labels;
        labels.remove(L_CONVERTING);
        self.engine.set_labels(target, labels)?;
        Ok(())
    }
}

/// Resumes the re-encryptions and conversions a crash interrupted.
pub(crate) fn resume(svc: &Arc<DiskService>) -> Result<()> {
    for d in svc.engine.disks()? {
        let Some(owner) = owner_caller(&d.labels) else {
            continue;
        };
        if d.rekey.is_some() {
            let att = match svc.attach_internal(&d.id) {
                Ok(a) => a,
                Err(e) => {
                    tracing::error!(disk = %d.id, error = %e, "cannot resume a re-encryption");
                    continue;
                }
            };
            let cell = svc.new_job(
                JobKind::Reencrypt,
                &d.id,
                None,
                &owner,
                d.size,
                manager_labels(&d.labels),
            )?;
            tracing::info!(disk = %d.id, "resuming a re-encryption");
            svc.spawn_rekey(cell, att, d.size);
        }
        if let Some(src) = d.labels.get(L_CONVERTING) {
            // The target inherited its source's manager.
            let cell = svc.new_job(
                JobKind::Convert,
                src,
                Some(d.id.clone()),
                &owner,
                d.size,
                manager_labels(&d.labels),
            )?;
            tracing::info!(source = %src, target = %d.id, "restarting a conversion");
            svc.spawn_convert(cell, src.clone(), d.id.clone());
        }
    }
    Ok(())
}
