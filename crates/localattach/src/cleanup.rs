//! [`cleanup_stale`]: clearing what a crashed process left under the run
//! directory.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::error::Error;
use crate::{host, sys};

/// Cleans up after a crash of the process that held attachments under
/// `run_dir`, and answers the names of the attachments it cleared.
///
/// In order: every loop device whose backing file is under `run_dir` is
/// unbound (if a file system on it is still mounted, it is marked to unbind
/// at its last close and a warning is logged); every FUSE mount under
/// `run_dir` is lazily unmounted; every empty directory in `run_dir` is
/// removed. A missing `run_dir` is not an error.
///
/// Call it at start-up, before attaching anything: it tears down *every*
/// attachment under `run_dir`, live or not, so no other process may be using
/// the same `run_dir`.
pub fn cleanup_stale(run_dir: &Path) -> Result<Vec<String>, Error> {
    let run_dir = match run_dir.canonicalize() {
        Ok(p) => p,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("resolving {}", run_dir.display()), e)),
    };
    let mut names = BTreeSet::new();

    // Loop devices first: once the FUSE mount is detached from the
    // namespace, the kernel no longer shows their backing path under
    // run_dir.
    let loops =
        host::bound_loops().map_err(|e| Error::io("listing loop devices in /sys/block", e))?;
    for l in loops {
        let Some(name) = host::name_under(&run_dir, &l.backing_file) else {
            continue;
        };
        let device = l.device();
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&device)
        {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(loop_device = %device.display(), error = %e, "stale loop device: cannot open");
                continue;
            }
        };
        match sys::loop_clr_fd(&file) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {}
            Err(e) => {
                tracing::warn!(loop_device = %device.display(), error = %e, "stale loop device: LOOP_CLR_FD");
                continue;
            }
        }
        drop(file);
        if host::loop_is_bound(l.index) {
            tracing::warn!(
                loop_device = %device.display(),
                "stale loop device still in use (mounted?): it detaches when its last user closes it"
            );
        } else {
            tracing::info!(loop_device = %device.display(), name, "detached stale loop device");
        }
        names.insert(name);
    }

    // FUSE mounts, deepest first. A dead server's mount answers ENOTCONN
    // to everything; a lazy unmount works regardless, and frees the
    // mount once the loop driver (if still bound) lets go of the file.
    let mut mounts: Vec<_> = host::mounts()
        .map_err(|e| Error::io("reading /proc/self/mountinfo", e))?
        .into_iter()
        .filter(|m| m.mount_point != run_dir && m.mount_point.starts_with(&run_dir))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.mount_point.components().count()));
    for m in mounts {
        let Some(name) = host::name_under(&run_dir, &m.mount_point) else {
            continue;
        };
        if !m.is_fuse() {
            tracing::warn!(mount_point = %m.mount_point.display(), fstype = m.fstype, "not a FUSE mount: left alone");
            continue;
        }
        match sys::umount(&m.mount_point, true) {
            Ok(()) => {
                tracing::info!(mount_point = %m.mount_point.display(), "unmounted stale FUSE mount");
                names.insert(name);
            }
            Err(e) => {
                tracing::warn!(mount_point = %m.mount_point.display(), error = %e, "stale FUSE mount: umount");
            }
        }
    }

    // The directories, now plain and empty. Never recursive: whatever is
    // not empty is not ours to delete.
    let entries = fs::read_dir(&run_dir)
        .map_err(|e| Error::io(format!("reading {}", run_dir.display()), e))?;
    for entry in entries.flatten() {
        let path = entry.path();
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        match fs::remove_dir(&path) {
            Ok(()) => {
                names.insert(entry.file_name().to_string_lossy().into_owned());
            }
            Err(e) => {
                tracing::warn!(dir = %path.display(), error = %e, "stale attachment directory left");
            }
        }
    }
    Ok(names.into_iter().collect())
}
