//! Local attach (D3): a disk as a block device of this host. The kernel
//! here has no NBD client, so the disk is a file on a FUSE mount under
//! `/run/atrest/<data-dir hash>/local/<disk>/` with a loop device on it
//! (`atrest-localattach`). The mount is outside the data dir, so copying
//! or scanning the data dir never reads a disk's plaintext through it. It
//! holds no data: every byte goes
//! through the disk's [`Attachment`], so it is encrypted before it reaches
//! the pool, and flushes from the file system on the loop device reach the
//! disk engine.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use atrest_diskservice::{Attachment, DiskService, DiskView, ManagedDisks, ServiceError};
use atrest_kms::{Caller, KmsError};
use atrest_localattach::{BlockDevice, LocalAttachment};
use serde::Serialize;

/// Where a server over `data_dir` keeps what lives only while it runs
/// (local attachments, database mounts and sockets): under `/run` (a
/// tmpfs, emptied at boot), named by a hash of the data dir so that a
/// restart finds what a crash left, and two servers never share it.
pub(crate) fn run_base(data_dir: &std::path::Path) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    let canonical = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let h = atrest_crypto::hash::sha256(canonical.as_os_str().as_bytes());
    let name: String = h[..8].iter().map(|b| format!("{b:02x}")).collect();
    PathBuf::from("/run/atrest").join(name)
}

/// Where local attachments are mounted.
pub(crate) fn run_dir(data_dir: &std::path::Path) -> PathBuf {
    run_base(data_dir).join("local")
}

/// The local attachments of this server.
pub(crate) struct LocalDisks {
    run_dir: PathBuf,
    disks: Arc<DiskService>,
    /// The database service's path to its instances' disks, which the
    /// customer's (`disks`) refuses.
    db: ManagedDisks,
    attached: Mutex<BTreeMap<String, LocalAttachment>>,
}

/// Whose API a local attach or detach goes through.
#[derive(Debug, Clone, Copy)]
enum Via {
    /// The customer's (REST `attach-local`).
    Customer,
    /// The database service's, for an instance's disk.
    Db,
}

/// What `attach-local` answers.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct LocalView {
    /// The disk.
    pub disk: String,
    /// The block device to format and mount.
    pub device: String,
}

/// An attached disk as a block device.
struct Device {
    att: Attachment,
    size: u64,
    block_size: u32,
}

/// A failed I/O on the disk as the block device's error: of the error's
/// kind ([`ServiceError::io_kind`]), so that the FUSE file answers `ENOSPC`
/// for a full pool, not `EIO`; the error itself stays inside.
fn io(e: ServiceError) -> std::io::Error {
    std::io::Error::new(e.io_kind(), e)
}

impl BlockDevice for Device {
    fn size(&self) -> u64 {
        self.size
    }

    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.att.read(offset, buf).map_err(io)
    }

    fn write(&self, offset: u64, data: &[u8], fua: bool) -> std::io::Result<()> {
        self.att.write(offset, data, fua).map_err(io)
    }

    fn trim(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.att.trim(offset, len).map_err(io)
    }

    fn flush(&self) -> std::io::Result<()> {
        self.att.flush().map_err(io)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl LocalDisks {
    /// Cleans up what a crash left under `run_dir` (loop devices, FUSE
    /// mounts).
    pub(crate) fn open(run_dir: PathBuf, disks: Arc<DiskService>) -> Self {
        if run_dir.exists() {
            match atrest_localattach::cleanup_stale(&run_dir) {
                Ok(gone) if !gone.is_empty() => {
                    tracing::warn!(?gone, "cleaned up local attachments a crash left");
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "cleaning up stale local attachments failed"),
            }
        }
        let db = disks.managed(atrest_dbservice::SERVICE);
        Self {
            run_dir,
            disks,
            db,
            attached: Mutex::new(BTreeMap::new()),
        }
    }

    fn describe(&self, via: Via, caller: &Caller, disk: &str) -> Result<DiskView, ServiceError> {
        match via {
            Via::Customer => self.disks.describe_disk(caller, disk),
            Via::Db => self.db.describe_disk(caller, disk),
        }
    }

    /// Attaches one of the caller's disks as a block device of this host.
    pub(crate) fn attach(&self, caller: &Caller, disk: &str) -> Result<LocalView, ServiceError> {
        self.attach_via(Via::Customer, caller, disk)
    }

    fn attach_via(&self, via: Via, caller: &Caller, disk: &str) -> Result<LocalView, ServiceError> {
        let mut attached = lock(&self.attached);
        if let Some(a) = attached.get(disk) {
            // Same disk: only its owner (through the path that may use it)
            // learns that it is attached.
            self.describe(via, caller, disk)?;
            return Err(ServiceError::Disk(atrest_disk::DiskError::Conflict(
                format!(
                    "disk {disk} is already attached locally as {}",
                    a.loop_device().display()
                ),
            )));
        }
        let att = match via {
            Via::Customer => {
                let holder = format!("{} at this host", caller.principal_arn());
                self.disks.attach_as(caller, disk, &holder)?
            }
            Via::Db => {
                let holder = format!("atrest's {} service at this host", self.db.service());
                self.db.attach_as(caller, disk, &holder)?
            }
        };
        let size = att.size()?;
        let block_size = att.block_size()?;
        std::fs::create_dir_all(&self.run_dir)
            .map_err(|e| KmsError::Internal(format!("creating the run dir: {e}")))?;
        let dev = Arc::new(Device {
            att,
            size,
            block_size,
        });
        let local = LocalAttachment::attach(dev, &self.run_dir, disk)
            .map_err(|e| KmsError::Internal(format!("attaching {disk} locally: {e}")))?;
        let view = LocalView {
            disk: disk.to_owned(),
            device: local.loop_device().display().to_string(),
        };
        tracing::info!(disk, device = %view.device, "disk attached locally");
        attached.insert(disk.to_owned(), local);
        Ok(view)
    }

    /// Detaches a local attachment: the loop device goes (refused while
    /// it is mounted or open), the disk is flushed and the mount removed.
    pub(crate) fn detach(&self, caller: &Caller, disk: &str) -> Result<LocalView, ServiceError> {
        self.detach_via(Via::Customer, caller, disk)
    }

    fn detach_via(&self, via: Via, caller: &Caller, disk: &str) -> Result<LocalView, ServiceError> {
        self.describe(via, caller, disk)?;
        let mut attached = lock(&self.attached);
        let Some(local) = attached.remove(disk) else {
            return Err(ServiceError::Disk(atrest_disk::DiskError::Conflict(
                format!("disk {disk} is not attached locally"),
            )));
        };
        let view = LocalView {
            disk: disk.to_owned(),
            device: local.loop_device().display().to_string(),
        };
        match local.detach() {
            Ok(()) => {
                tracing::info!(disk, device = %view.device, "disk detached locally");
                Ok(view)
            }
            Err(atrest_localattach::Error::Busy(busy)) => {
                let msg = format!(
                    "{} is in use ({}): unmount it first",
                    view.device,
                    busy.reason()
                );
                attached.insert(disk.to_owned(), busy.into_attachment());
                Err(ServiceError::Disk(atrest_disk::DiskError::Conflict(msg)))
            }
            Err(e) => Err(KmsError::Internal(format!("detaching {disk}: {e}")).into()),
        }
    }

    /// Detaches everything (at shutdown); what is still mounted stays.
    pub(crate) fn detach_all(&self) {
        let all = std::mem::take(&mut *lock(&self.attached));
        for (disk, local) in all {
            if let Err(e) = local.detach() {
                tracing::error!(disk, error = %e, "detaching a local attachment at shutdown failed");
            }
        }
        // Empty now unless something stayed mounted: leave nothing in /run
        // (the parent also held the database service's run dir, gone by
        // now, and may exist without this one).
        let _ = std::fs::remove_dir(&self.run_dir);
        if let Some(parent) = self.run_dir.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// The database service's instance disks, through its own path: the
/// customer's refuses them.
impl atrest_dbservice::Volumes for LocalDisks {
    fn attach(&self, caller: &Caller, disk: &str) -> Result<PathBuf, ServiceError> {
        self.attach_via(Via::Db, caller, disk)
            .map(|v| PathBuf::from(v.device))
    }

    fn detach(&self, caller: &Caller, disk: &str) -> Result<(), ServiceError> {
        self.detach_via(Via::Db, caller, disk).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use std::io::ErrorKind;

    use atrest_disk::DiskError;

    use super::*;

    /// The block device's error has the disk error's kind (a full pool is
    /// `StorageFull`, which the FUSE file answers `ENOSPC`), its message,
    /// and the error itself inside.
    #[test]
    fn a_device_error_keeps_the_kind_and_the_message() {
        let full = ServiceError::Disk(DiskError::Io {
            context: "writing the pool".into(),
            error: std::io::Error::from_raw_os_error(28),
        });
        let shown = full.to_string();
        let e = io(full);
        assert_eq!(e.kind(), ErrorKind::StorageFull);
        assert_eq!(e.to_string(), shown);
        assert!(
            e.get_ref()
                .and_then(|inner| inner.downcast_ref::<ServiceError>())
                .is_some()
        );
        let invalid = ServiceError::Disk(DiskError::Invalid("beyond the end".into()));
        assert_eq!(io(invalid).kind(), ErrorKind::InvalidInput);
        let closed = ServiceError::Closed {
            disk: "disk-1".into(),
            reason: "its key was disabled".into(),
        };
        assert_eq!(io(closed).kind(), ErrorKind::Other);
    }
}
