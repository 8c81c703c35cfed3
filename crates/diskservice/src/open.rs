//! Open disks: one engine handle per disk, shared by its attachments and
//! jobs, closed when the last one goes or when its key is lost (D9).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Instant;

use atrest_disk::{DiskError, KeyInfo, OpenDisk};
use atrest_kms::Caller;

use crate::{
    Actor, DISK_CONTEXT, DiskService, L_CONVERTING, L_SHAREABLE, OnKeyLoss, Result, ServiceError,
    ctx, owner_caller,
};

/// One open disk.
pub(crate) struct Shared {
    disk: String,
    region: String,
    handle: RwLock<Option<OpenDisk>>,
    /// Why it was closed under its users (names the key).
    closed: Mutex<Option<String>>,
    /// Since when its key has been unusable, as the monitor saw it.
    unusable_since: Mutex<Option<Instant>>,
    users: Mutex<usize>,
    /// The clients attached to it and their attachments; a disk that is
    /// not shareable has at most one client.
    holders: Mutex<BTreeMap<String, Holds>>,
    /// Serializes the read-modify-write of I/O that is not aligned to the
    /// block size, so two of them cannot lose each other's bytes.
    rmw: Mutex<()>,
}

/// One client's attachments of an open disk.
#[derive(Default)]
struct Holds {
    all: usize,
    /// Those made through the customer's API (not a manager's), which an
    /// adoption must not take over from under the customer.
    customer: usize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A user's (or a job's) hold on an open disk. I/O goes through it; dropping
/// it detaches, and the last detach closes the disk and drops its key.
pub struct Attachment {
    svc: Arc<DiskService>,
    shared: Arc<Shared>,
    /// The customer, for the audit record of the detach; `None` for jobs.
    caller: Option<Caller>,
    key_arn: Option<String>,
    /// The client holding it; `None` for jobs.
    holder: Option<String>,
    /// Who attached it (for jobs, which hold no client, unused).
    actor: Actor,
}

impl std::fmt::Debug for Attachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attachment")
            .field("disk", &self.shared.disk)
            .finish_non_exhaustive()
    }
}

impl Attachment {
    /// The disk's id.
    #[must_use]
    pub fn disk(&self) -> &str {
        &self.shared.disk
    }

    fn with<T>(&self, f: impl FnOnce(&OpenDisk) -> Result<T, DiskError>) -> Result<T> {
        let h = self
            .shared
            .handle
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match h.as_ref() {
            Some(d) => Ok(f(d)?),
            None => Err(ServiceError::Closed {
                disk: self.shared.disk.clone(),
                reason: lock(&self.shared.closed)
                    .clone()
                    .unwrap_or_else(|| "closed".into()),
            }),
        }
    }

    /// Size in bytes (as when the disk was opened).
    pub fn size(&self) -> Result<u64> {
        self.with(|d| Ok(d.size()))
    }

    /// Logical block size.
    pub fn block_size(&self) -> Result<u32> {
        self.with(|d| Ok(d.block_size()))
    }

    /// Reads at `offset`, any offset and length within the disk.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.with(|d| {
            let Some((start, end)) = widen(d, offset, buf.len() as u64)? else {
                return d.read(offset, buf);
            };
            let mut whole = vec![0u8; to_len(end - start)?];
            d.read(start, &mut whole)?;
            let from = to_len(offset - start)?;
            buf.copy_from_slice(&whole[from..from + buf.len()]);
            Ok(())
        })
    }

    /// Writes at `offset`, any offset and length within the disk; durable
    /// at the next flush, or at once with `fua`. Writes that do not cover
    /// whole blocks read the blocks' other bytes first.
    pub fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<()> {
        self.with(|d| write_any(d, &self.shared.rmw, offset, data, fua))
    }

    /// Makes a range read as zeros: any offset and length within the disk.
    /// The whole blocks in it are trimmed (their space freed where only
    /// this disk held it); partial blocks at its ends are written.
    pub fn trim(&self, offset: u64, len: u64) -> Result<()> {
        self.with(|d| {
            if widen(d, offset, len)?.is_none() {
                return d.trim(offset, len);
            }
            let bs = u64::from(d.block_size());
            let first = offset.next_multiple_of(bs);
            let last = (offset + len) / bs * bs;
            let rmw = &self.shared.rmw;
            if first >= last {
                return zero_any(d, rmw, offset, len, false);
            }
            zero_any(d, rmw, offset, first - offset, false)?;
            d.trim(first, last - first)?;
            zero_any(d, rmw, last, offset + len - last, false)
        })
    }

    /// Writes zeros over `len` bytes at `offset` (allocating them).
    pub fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> Result<()> {
        self.with(|d| zero_any(d, &self.shared.rmw, offset, len, fua))
    }

    /// Makes every acknowledged write durable.
    pub fn flush(&self) -> Result<()> {
        self.with(OpenDisk::flush)
    }

    pub(crate) fn handle<T>(&self, f: impl FnOnce(&OpenDisk) -> Result<T, DiskError>) -> Result<T> {
        self.with(f)
    }
}

/// For I/O that is not aligned to the disk's block size, the aligned range
/// around it (`None`: aligned already). Checks the range is in the disk.
fn widen(d: &OpenDisk, offset: u64, len: u64) -> Result<Option<(u64, u64)>, DiskError> {
    let end = offset
        .checked_add(len)
        .filter(|e| *e <= d.size())
        .ok_or_else(|| {
            DiskError::Invalid(format!(
                "I/O at {offset} of {len} bytes is beyond the disk's {} bytes",
                d.size()
            ))
        })?;
    let bs = u64::from(d.block_size());
    if offset.is_multiple_of(bs) && len.is_multiple_of(bs) {
        return Ok(None);
    }
    Ok(Some((offset / bs * bs, end.next_multiple_of(bs))))
}

/// A write at any offset and length within the disk.
fn write_any(
    d: &OpenDisk,
    rmw: &Mutex<()>,
    offset: u64,
    data: &[u8],
    fua: bool,
) -> Result<(), DiskError> {
    let Some((start, end)) = widen(d, offset, data.len() as u64)? else {
        return d.write(offset, data, fua);
    };
    let _rmw = lock(rmw);
    let bs = to_len(u64::from(d.block_size()))?;
    let mut whole = vec![0u8; to_len(end - start)?];
    let last = whole.len() - bs;
    d.read(start, &mut whole[..bs])?;
    if whole.len() > bs {
        d.read(end - bs as u64, &mut whole[last..])?;
    }
    let from = to_len(offset - start)?;
    whole[from..from + data.len()].copy_from_slice(data);
    d.write(start, &whole, fua)
}

/// Zeros written over `len` bytes at `offset`, a megabyte at a time.
fn zero_any(
    d: &OpenDisk,
    rmw: &Mutex<()>,
    offset: u64,
    len: u64,
    fua: bool,
) -> Result<(), DiskError> {
    const PIECE: u64 = 1 << 20;
    widen(d, offset, len)?;
    let zeros = vec![0u8; to_len(len.min(PIECE))?];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(PIECE);
        write_any(d, rmw, offset + done, &zeros[..to_len(n)?], fua)?;
        done += n;
    }
    Ok(())
}

fn to_len(n: u64) -> Result<usize, DiskError> {
    usize::try_from(n).map_err(|_| DiskError::Invalid(format!("{n} bytes is too long")))
}

/// One attachment fewer for `holder`, made by `actor`.
fn unclaim(shared: &Shared, holder: &str, actor: Actor) {
    let mut holders = lock(&shared.holders);
    if let Some(h) = holders.get_mut(holder) {
        h.all = h.all.saturating_sub(1);
        if actor == Actor::Customer {
            h.customer = h.customer.saturating_sub(1);
        }
        if h.all == 0 {
            holders.remove(holder);
        }
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if let Some(h) = &self.holder {
            unclaim(&self.shared, h, self.actor);
        }
        self.svc.release(&self.shared);
        if let Some(c) = &self.caller {
            self.svc
                .audit(c, "disk:DetachDisk", self.key_arn.as_deref(), "Success");
        }
    }
}

impl DiskService {
    pub(crate) fn is_open(&self, disk: &str) -> bool {
        lock(&self.open).contains_key(disk)
    }

    /// A client that holds `disk` attached through the customer's API.
    pub(crate) fn customer_holder(&self, disk: &str) -> Option<String> {
        let shared = lock(&self.open).get(disk).cloned()?;
        lock(&shared.holders)
            .iter()
            .find(|(_, h)| h.customer > 0)
            .map(|(name, _)| name.clone())
    }

    /// Attaches one of the caller's disks for the caller itself (the client
    /// is the caller's principal); see [`DiskService::attach_as`].
    pub fn attach(self: &Arc<Self>, caller: &Caller, disk: &str) -> Result<Attachment> {
        self.attach_as(caller, disk, &caller.principal_arn())
    }

    /// Attaches one of the caller's disks for the client `holder` (for
    /// NBD, the principal and the peer's host): unlocks its data key
    /// (refusing if the key cannot be used) or shares the handle already
    /// open. A disk that is not shareable is attached by one client at a
    /// time; the same client may attach it again (several connections of
    /// one NBD client). The attach is audited and metered; so is the
    /// detach, when the [`Attachment`] is dropped.
    pub fn attach_as(
        self: &Arc<Self>,
        caller: &Caller,
        disk: &str,
        holder: &str,
    ) -> Result<Attachment> {
        self.attach_as_by(Actor::Customer, caller, disk, holder)
    }

    pub(crate) fn attach_as_by(
        self: &Arc<Self>,
        actor: Actor,
        caller: &Caller,
        disk: &str,
        holder: &str,
    ) -> Result<Attachment> {
        let d = self.own_disk(actor, caller, disk)?;
        if let Some(s) = d.labels.get(crate::archive::L_RESTORING) {
            return Err(DiskError::Conflict(format!(
                "disk {disk} is being restored from snapshot {s}; attach it when the job is done"
            ))
            .into());
        }
        if d.labels.contains_key(L_CONVERTING) {
            return Err(DiskError::Conflict(format!(
                "disk {disk} is being filled by a conversion; attach it when the job is done"
            ))
            .into());
        }
        if lock(&self.converting).contains(disk) {
            return Err(DiskError::Conflict(format!(
                "disk {disk} is being copied by a conversion; attach it when the job is done"
            ))
            .into());
        }
        let key_arn = d.key.as_ref().map(|k| k.key_arn.clone());
        let shareable = d.labels.contains_key(L_SHAREABLE);
        let r = key_arn
            .as_ref()
            .map_or(Ok(()), |k| self.caller_may(caller, k, &["Decrypt"]))
            .and_then(|()| self.open_shared(disk, &caller.region))
            .and_then(|shared| self.claim(shared, disk, holder, shareable, actor));
        let result = match &r {
            Ok(_) => "Success",
            Err(ServiceError::Kms(e)) => e.aws_type(),
            Err(ServiceError::Locked { .. }) => "DiskLockedException",
            Err(ServiceError::Disk(DiskError::Conflict(_))) => "ConflictException",
            Err(_) => "Failed",
        };
        let meta = atrest_kms::RequestMeta::in_process();
        let call = atrest_kms::Call::new(caller, &meta);
        call.set_operation("disk:AttachDisk");
        if let Some(k) = &key_arn {
            call.set_key(k.clone());
        }
        let recorded = self.kms.record_event(self.kms.audit_entry(&call, result));
        let shared = r?;
        if let Err(e) = recorded {
            unclaim(&shared, holder, actor);
            self.release(&shared);
            return Err(e.into());
        }
        tracing::info!(disk, principal = %caller.principal_arn(), holder, "disk attached");
        Ok(Attachment {
            svc: Arc::clone(self),
            shared,
            caller: Some(caller.clone()),
            key_arn,
            holder: Some(holder.to_owned()),
            actor,
        })
    }

    /// Makes `holder` one of an open disk's clients; refused (and the open
    /// released) if another client holds a disk that is not shareable, or
    /// if a customer's disk was adopted by a service meanwhile.
    fn claim(
        &self,
        shared: Arc<Shared>,
        disk: &str,
        holder: &str,
        shareable: bool,
        actor: Actor,
    ) -> Result<Arc<Shared>> {
        let mut holders = lock(&shared.holders);
        let other = holders.keys().find(|h| h.as_str() != holder).cloned();
        if let Some(other) = other
            && !shareable
        {
            drop(holders);
            self.release(&shared);
            return Err(DiskError::Conflict(format!(
                "disk {disk} is attached by {other}; detach it there first, or create the disk shareable"
            ))
            .into());
        }
        let h = holders.entry(holder.to_owned()).or_default();
        h.all += 1;
        if actor == Actor::Customer {
            h.customer += 1;
        }
        drop(holders);
        if actor == Actor::Customer {
            // Claimed first, then the labels looked at again: an adoption
            // labels first, then looks at the customer's holds
            // (`ManagedDisks::adopt`), so one of the two sees the other.
            let still_theirs = self
                .engine
                .disk(disk)
                .map_err(ServiceError::from)
                .and_then(|d| actor.check("disk", disk, &d.labels));
            if let Err(e) = still_theirs {
                unclaim(&shared, holder, actor);
                self.release(&shared);
                return Err(e);
            }
        }
        Ok(shared)
    }

    /// Opens a disk for a job of the service (not audited as an attach).
    pub(crate) fn attach_internal(self: &Arc<Self>, disk: &str) -> Result<Attachment> {
        let d = self.engine.disk(disk)?;
        let owner = owner_caller(&d.labels)
            .ok_or_else(|| DiskError::Failed(format!("disk {disk} has no owner label")))?;
        let shared = self.open_shared(disk, &owner.region)?;
        Ok(Attachment {
            svc: Arc::clone(self),
            shared,
            caller: None,
            key_arn: None,
            holder: None,
            actor: Actor::Customer,
        })
    }

    fn open_shared(&self, disk: &str, region: &str) -> Result<Arc<Shared>> {
        let mut open = lock(&self.open);
        if let Some(s) = open.get(disk) {
            let alive = s
                .handle
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .is_some();
            if alive {
                *lock(&s.users) += 1;
                return Ok(Arc::clone(s));
            }
        }
        let d = self.engine.disk(disk)?;
        let resource = format!("disk {disk}");
        let handle = match &d.key {
            None => self.engine.open_disk(disk, None)?,
            Some(k) => {
                self.check_key(region, &resource, k)?;
                let context = ctx(DISK_CONTEXT, disk);
                let unwrap = |k: &KeyInfo| {
                    self.unwrap_key(region, k, &context)
                        .map_err(|e| self.key_failure(region, &resource, k, e))
                };
                let key = unwrap(k)?;
                match &d.rekey {
                    None => self.engine.open_disk(disk, Some(&key))?,
                    Some(r) => {
                        let next = unwrap(&r.key)?;
                        self.engine.open_disk_rekeying(disk, &key, &next)?
                    }
                }
            }
        };
        let shared = Arc::new(Shared {
            disk: disk.to_owned(),
            region: region.to_owned(),
            handle: RwLock::new(Some(handle)),
            closed: Mutex::new(None),
            unusable_since: Mutex::new(None),
            users: Mutex::new(1),
            holders: Mutex::new(BTreeMap::new()),
            rmw: Mutex::new(()),
        });
        // A handle closed for key loss whose users are still around is
        // replaced; they keep failing with the reason.
        open.insert(disk.to_owned(), Arc::clone(&shared));
        Ok(shared)
    }

    /// One user fewer; the last closes the disk (dropping its key).
    fn release(&self, shared: &Arc<Shared>) {
        let last = {
            let mut u = lock(&shared.users);
            *u = u.saturating_sub(1);
            *u == 0
        };
        if !last {
            return;
        }
        let mut open = lock(&self.open);
        if open
            .get(&shared.disk)
            .is_some_and(|s| Arc::ptr_eq(s, shared))
        {
            open.remove(&shared.disk);
        }
        drop(open);
        let h = shared
            .handle
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(h) = h
            && let Err(e) = h.flush()
        {
            tracing::error!(disk = %shared.disk, error = %e, "flushing a disk at close failed");
        }
    }

    /// One pass of the key check over open disks.
    pub fn check_open_disks(&self) {
        let open: Vec<Arc<Shared>> = lock(&self.open).values().cloned().collect();
        for s in open {
            let Ok(d) = self.engine.disk(&s.disk) else {
                continue;
            };
            let keys = d.key.iter().chain(d.rekey.iter().map(|r| &r.key));
            let mut unusable = None;
            for k in keys {
                if let Ok(Some(reason)) = self
                    .session(&s.region)
                    .and_then(|ss| Ok(ss.key_unusable(&k.key_arn, k.grant_id.as_deref())?))
                {
                    unusable = Some(format!("its key {} cannot be used: {reason}", k.key_arn));
                    break;
                }
            }
            let mut since = lock(&s.unusable_since);
            let Some(reason) = unusable else {
                *since = None;
                continue;
            };
            let first = *since.get_or_insert_with(Instant::now);
            drop(since);
            let OnKeyLoss::CloseAfter(grace) = self.config.on_key_loss else {
                tracing::warn!(disk = %s.disk, %reason, "open disk keeps serving although its key cannot be used");
                continue;
            };
            if first.elapsed() < grace {
                continue;
            }
            let h = s
                .handle
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            if let Some(h) = h {
                *lock(&s.closed) = Some(reason.clone());
                if let Err(e) = h.flush() {
                    tracing::error!(disk = %s.disk, error = %e, "flushing a disk at close failed");
                }
                drop(h);
                tracing::warn!(disk = %s.disk, %reason, "closed an open disk: its key cannot be used");
                if let Some(owner) = owner_caller(&d.labels) {
                    self.audit(
                        &owner,
                        "disk:CloseDisk",
                        d.key.as_ref().map(|k| k.key_arn.as_str()),
                        "KeyUnavailable",
                    );
                }
            }
        }
    }
}

/// Starts the periodic key check of open disks; it ends with the service.
pub(crate) fn start_monitor(svc: &Arc<DiskService>) {
    let weak: Weak<DiskService> = Arc::downgrade(svc);
    let interval = svc.config.check_interval;
    let spawned = std::thread::Builder::new()
        .name("disk-key-check".into())
        .spawn(move || {
            loop {
                std::thread::sleep(interval);
                let Some(svc) = weak.upgrade() else { return };
                svc.check_open_disks();
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the disk key check");
    }
}
