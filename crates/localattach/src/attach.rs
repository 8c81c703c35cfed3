//! [`LocalAttachment`]: attaching (FUSE mount, then loop device), detaching
//! (loop device, flush, FUSE unmount) and the best-effort detach on drop.

use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use fuser::{BackgroundSession, MountOption, SessionACL};

use crate::error::{Busy, Error};
use crate::fs::{DEVICE_FILE, DeviceFs};
use crate::{BlockDevice, host, sys};

/// FUSE worker threads per attachment: the loop driver keeps several
/// requests in flight.
const FUSE_THREADS: usize = 4;
/// How often to retry when another process takes the free loop device
/// between `LOOP_CTL_GET_FREE` and `LOOP_CONFIGURE`.
const LOOP_RACE_RETRIES: usize = 16;
/// How long to wait for things the kernel or udev finish asynchronously
/// (a new `/dev/loopN` node, an unbind).
const SETTLE: Duration = Duration::from_secs(2);
/// How long to look again for other openers before calling the device
/// busy: probes such as udev's `blkid` hold it open briefly.
const OPENER_GRACE: Duration = Duration::from_millis(500);

/// The longest attachment name.
pub(crate) const MAX_NAME_LEN: usize = 64;

/// A virtual disk attached to this host: a FUSE file `run_dir/<name>/device`
/// served from a [`BlockDevice`], and a loop device on that file.
///
/// Dropping an attachment that was not [detached](Self::detach) detaches it
/// on a best-effort basis (errors are logged). If the loop device is still
/// in use then, the FUSE server is left running for the life of the process
/// so that whatever uses the device keeps working, and the loop device
/// detaches by itself when its last user lets go.
pub struct LocalAttachment {
    name: String,
    dir: PathBuf,
    loop_index: u32,
    loop_path: PathBuf,
    /// `(st_dev, st_ino)` of the FUSE file, to recognise our binding.
    backing: (u64, u64),
    size: u64,
    block_size: u32,
    live: Option<Live>,
}

/// What a live attachment holds.
struct Live {
    /// Our open descriptor of the loop device. The device is configured
    /// autoclear, so this is what keeps it bound while nobody else has it
    /// open; closing it (or the process dying) unbinds it once unused.
    loop_file: Option<File>,
    session: BackgroundSession,
    dev: Arc<dyn BlockDevice>,
}

impl fmt::Debug for LocalAttachment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalAttachment")
            .field("name", &self.name)
            .field("loop_device", &self.loop_path)
            .field("file", &self.device_file())
            .field("size", &self.size)
            .field("block_size", &self.block_size)
            .field("attached", &self.live.is_some())
            .finish()
    }
}

fn validate_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName(name.to_owned()))
    }
}

fn validate_geometry(dev: &dyn BlockDevice) -> Result<(u64, u32), Error> {
    let size = dev.size();
    let bs = dev.block_size();
    if bs != 512 && bs != 4096 {
        return Err(Error::InvalidDevice(format!(
            "block size {bs} (must be 512 or 4096)"
        )));
    }
    if size == 0 || !size.is_multiple_of(u64::from(bs)) || i64::try_from(size).is_err() {
        return Err(Error::InvalidDevice(format!(
            "size {size} (must be a non-zero multiple of the block size {bs}, below 2^63)"
        )));
    }
    Ok((size, bs))
}

/// fuser asserts (panics) when `/dev/fuse` opens on descriptor 0, 1 or 2,
/// which happens when the process has closed them: refuse instead.
fn check_std_fds(run_dir: &Path) -> Result<(), Error> {
    match (0..3).find(|fd| fs::symlink_metadata(format!("/proc/self/fd/{fd}")).is_err()) {
        None => Ok(()),
        Some(fd) => Err(Error::Fuse {
            path: run_dir.to_path_buf(),
            source: io::Error::other(format!(
                "file descriptor {fd} is closed; keep 0, 1 and 2 open (on /dev/null if need be)"
            )),
        }),
    }
}

/// Creates the attachment directory, refusing one that is mounted on or
/// not empty.
fn make_dir(run_dir: &Path, name: &str) -> Result<PathBuf, Error> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(run_dir)
        .map_err(|e| Error::io(format!("creating {}", run_dir.display()), e))?;
    let run_dir = run_dir
        .canonicalize()
        .map_err(|e| Error::io(format!("resolving {}", run_dir.display()), e))?;
    let dir = run_dir.join(name);
    let mounts = host::mounts().map_err(|e| Error::io("reading /proc/self/mountinfo", e))?;
    if mounts.iter().any(|m| m.mount_point.starts_with(&dir)) {
        return Err(Error::AlreadyExists {
            path: dir,
            reason:
                "something is mounted there (a live attachment, or a stale one: run cleanup_stale)"
                    .into(),
        });
    }
    match DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            // A leftover empty directory (a crash between unmount and
            // rmdir) is reused; anything else is not ours to touch.
            let empty = fs::read_dir(&dir)
                .map_err(|e| Error::io(format!("reading {}", dir.display()), e))?
                .next()
                .is_none();
            if !empty || !dir.is_dir() {
                return Err(Error::AlreadyExists {
                    path: dir,
                    reason: "exists and is not an empty directory".into(),
                });
            }
        }
        Err(e) => return Err(Error::io(format!("creating {}", dir.display()), e)),
    }
    Ok(dir)
}

/// Binds `backing` to a free loop device; returns the device's index and
/// our open descriptor of it.
fn bind_loop(backing: &File, backing_path: &Path, block_size: u32) -> Result<(u32, File), Error> {
    let control_path = Path::new("/dev/loop-control");
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(control_path)
        .map_err(|e| Error::looperr(control_path, "open", e))?;
    let mut last_err = None;
    for _ in 0..LOOP_RACE_RETRIES {
        let index = sys::loop_ctl_get_free(&control)
            .map_err(|e| Error::looperr(control_path, "LOOP_CTL_GET_FREE", e))?;
        let path = host::loop_device_path(index);
        let file = open_loop_node(&path)?;
        // Autoclear: unbound at the last close, so a crashed process leaves
        // no loop device pinned once nothing uses it. Direct I/O: the loop
        // driver submits asynchronously, several requests in flight (see
        // the crate doc).
        let flags = sys::LO_FLAGS_AUTOCLEAR | sys::LO_FLAGS_DIRECT_IO;
        match sys::loop_configure(&file, backing, block_size, flags, backing_path) {
            Ok(()) => {
                // The kernel silently falls back to buffered I/O when it
                // cannot do direct I/O; still uncached (FOPEN_DIRECT_IO),
                // only serial.
                match sys::loop_get_status(&file) {
                    Ok(st) if st.flags & sys::LO_FLAGS_DIRECT_IO == 0 => {
                        tracing::info!(loop_device = %path.display(), "loop driver declined direct I/O");
                    }
                    _ => {}
                }
                return Ok((index, file));
            }
            // Someone bound it first: ask for another.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => last_err = Some(e),
            Err(e) => return Err(Error::looperr(path, "LOOP_CONFIGURE", e)),
        }
    }
    Err(Error::looperr(
        control_path,
        "finding a free loop device",
        last_err.unwrap_or_else(|| io::Error::other("every free device was taken")),
    ))
}

/// Opens `/dev/loopN`, waiting briefly for the node of a device that
/// `LOOP_CTL_GET_FREE` just created to appear.
fn open_loop_node(path: &Path) -> Result<File, Error> {
    let start = Instant::now();
    loop {
        match OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
        {
            Ok(f) => return Ok(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound && start.elapsed() < SETTLE => {
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(Error::looperr(path, "open", e)),
        }
    }
}

/// Waits for loop device `index` to be no longer bound to `file`; false if
/// it still is. (Once unbound, another process may bind it at once.)
fn wait_unbound(index: u32, file: &Path) -> bool {
    let start = Instant::now();
    while host::loop_backing(index).is_some_and(|b| b == file) {
        if start.elapsed() >= SETTLE {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Why the loop device could not be released.
enum Release {
    Busy(String),
    Failed(Error),
}

impl LocalAttachment {
    /// Attaches `dev`: mounts a FUSE file system at `run_dir/<name>/`
    /// exposing the file `device`, then binds a free loop device to it with
    /// the device's logical block size.
    ///
    /// `run_dir` is created (mode 0700) if missing. `name` is 1 to 64 of
    /// `[A-Za-z0-9._-]`. Requires root (mounting, loop ioctls) and Linux
    /// 5.8 or later (`LOOP_CONFIGURE`). Blocks (mount, ioctls); call it from
    /// a thread that may block, not from an async task.
    pub fn attach(dev: Arc<dyn BlockDevice>, run_dir: &Path, name: &str) -> Result<Self, Error> {
        validate_name(name)?;
        let (size, block_size) = validate_geometry(dev.as_ref())?;
        check_std_fds(run_dir)?;
        let dir = make_dir(run_dir, name)?;
        let meta =
            fs::metadata(&dir).map_err(|e| Error::io(format!("stat {}", dir.display()), e))?;
        let fs = DeviceFs::new(Arc::clone(&dev), size, block_size, meta.uid(), meta.gid());

        let mut config = fuser::Config::default();
        config.mount_options = vec![
            MountOption::FSName(format!("atrest-localattach:{name}")),
            // A kernel option, so the type reads `fuse.atrest` in mountinfo.
            MountOption::CUSTOM("subtype=atrest".into()),
            MountOption::NoDev,
            MountOption::NoSuid,
            MountOption::NoExec,
            MountOption::NoAtime,
            // The kernel checks the modes (0700 dir, 0600 file): only the
            // owner (root) gets in. No allow_other: the mounting user is root
            // and the loop driver's requests carry root's credentials.
            MountOption::DefaultPermissions,
        ];
        config.acl = SessionACL::Owner;
        config.n_threads = Some(FUSE_THREADS);
        config.clone_fd = true;
        let session = match fuser::spawn_mount(fs, &dir, &config) {
            Ok(s) => s,
            Err(source) => {
                let _ = fs::remove_dir(&dir);
                return Err(Error::Fuse { path: dir, source });
            }
        };

        // From here on, a failure unmounts and removes the directory.
        let undo = |session: BackgroundSession, dir: &Path| {
            if let Err(e) = session.umount_and_join() {
                tracing::warn!(dir = %dir.display(), error = %e, "unmounting after a failed attach");
                let _ = sys::umount(dir, true);
            }
            let _ = fs::remove_dir(dir);
        };
        let file_path = dir.join(DEVICE_FILE);
        let backing = match OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&file_path)
        {
            Ok(f) => f,
            Err(source) => {
                undo(session, &dir);
                return Err(Error::Fuse { path: dir, source });
            }
        };
        let backing_id = match backing.metadata() {
            Ok(m) => (m.dev(), m.ino()),
            Err(source) => {
                drop(backing);
                undo(session, &dir);
                return Err(Error::Fuse { path: dir, source });
            }
        };
        let (loop_index, loop_file) = match bind_loop(&backing, &file_path, block_size) {
            Ok(bound) => bound,
            Err(e) => {
                drop(backing);
                undo(session, &dir);
                return Err(e);
            }
        };
        // The loop driver holds its own reference to the file.
        drop(backing);
        let loop_path = host::loop_device_path(loop_index);
        tracing::info!(
            name,
            loop_device = %loop_path.display(),
            file = %file_path.display(),
            size,
            block_size,
            "attached"
        );
        Ok(Self {
            name: name.to_owned(),
            dir,
            loop_index,
            loop_path,
            backing: backing_id,
            size,
            block_size,
            live: Some(Live {
                loop_file: Some(loop_file),
                session,
                dev,
            }),
        })
    }

    /// The loop device, e.g. `/dev/loop3`.
    #[must_use]
    pub fn loop_device(&self) -> &Path {
        &self.loop_path
    }

    /// The attachment's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The FUSE file the loop device is bound to, `run_dir/<name>/device`.
    #[must_use]
    pub fn device_file(&self) -> PathBuf {
        self.dir.join(DEVICE_FILE)
    }

    /// Detaches: releases the loop device, flushes the block device,
    /// unmounts the FUSE file system and removes `run_dir/<name>`.
    ///
    /// If the loop device is in use (a file system on it is mounted, or
    /// another process has it open) nothing is changed and the answer is
    /// [`Error::Busy`], which hands the attachment back. Any other error is
    /// reported after the whole teardown has been tried; the loop device is
    /// released by then, and a flush error means writes may not be durable.
    ///
    /// Blocks: a busy answer takes up to half a second (transient openers
    /// are waited out), and the FUSE unmount waits for the server threads.
    pub fn detach(mut self) -> Result<(), Error> {
        match self.release_loop() {
            Ok(()) => self.teardown(),
            Err(Release::Busy(reason)) => Err(Error::Busy(Busy {
                reason,
                attachment: Box::new(self),
            })),
            Err(Release::Failed(e)) => {
                // Whatever failed, try to leave nothing behind.
                if let Err(more) = self.teardown() {
                    tracing::warn!(name = %self.name, error = %more, "detach");
                }
                Err(e)
            }
        }
    }

    /// Unbinds the loop device unless it is in use.
    fn release_loop(&mut self) -> Result<(), Release> {
        let Some(live) = self.live.as_mut() else {
            return Ok(());
        };
        let Some(loop_file) = live.loop_file.as_ref() else {
            return Ok(());
        };
        // An exclusive open fails while a mounted file system (or any other
        // exclusive holder) has the device, and keeps one from taking it
        // until we are done. A claim can outlive its holder's close for a
        // moment (a child forked meanwhile holds the descriptor until it
        // execs), so EBUSY is retried briefly.
        let start = Instant::now();
        let excl = loop {
            match OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_EXCL | libc::O_CLOEXEC)
                .open(&self.loop_path)
            {
                Ok(f) => break f,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    if start.elapsed() >= OPENER_GRACE {
                        return Err(Release::Busy(
                            "a mounted file system or another exclusive holder has it".into(),
                        ));
                    }
                    thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    return Err(Release::Failed(Error::looperr(
                        &self.loop_path,
                        "open exclusively",
                        e,
                    )));
                }
            }
        };
        let rdev = match loop_file.metadata() {
            Ok(m) => m.rdev(),
            Err(e) => return Err(Release::Failed(Error::looperr(&self.loop_path, "stat", e))),
        };
        // Plain openers do not conflict with O_EXCL; look for them, allowing
        // a moment for transient probes to go away.
        let own = [loop_file.as_raw_fd(), excl.as_raw_fd()];
        let start = Instant::now();
        loop {
            let others = host::openers(rdev, &own);
            if others.is_empty() {
                break;
            }
            if start.elapsed() >= OPENER_GRACE {
                return Err(Release::Busy(format!(
                    "held open by process(es) {others:?}"
                )));
            }
            thread::sleep(Duration::from_millis(50));
        }
        match sys::loop_clr_fd(&excl) {
            Ok(()) => {}
            // Already unbound (someone ran `losetup -d`).
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {}
            Err(e) => {
                return Err(Release::Failed(Error::looperr(
                    &self.loop_path,
                    "LOOP_CLR_FD",
                    e,
                )));
            }
        }
        // The last close unbinds it.
        drop(excl);
        live.loop_file = None;
        if wait_unbound(self.loop_index, &self.dir.join(DEVICE_FILE)) {
            return Ok(());
        }
        // Someone opened it between our look and our close: the kernel
        // unbinds it when they close it. Take it back if it is still ours,
        // so the attachment stays whole.
        match open_loop_node(&self.loop_path) {
            Ok(f) => match sys::loop_get_status(&f) {
                Ok(st) if (st.backing_dev, st.backing_ino) == self.backing => {
                    live.loop_file = Some(f);
                    Err(Release::Busy(
                        "opened by another process during detach".into(),
                    ))
                }
                // Unbound meanwhile, or rebound to another file: ours is gone.
                _ => Ok(()),
            },
            Err(e) => Err(Release::Failed(e)),
        }
    }

    /// After the loop device is released: flush, unmount, remove the
    /// directory. Reports the first error, logs the others.
    fn teardown(&mut self) -> Result<(), Error> {
        let Some(live) = self.live.take() else {
            return Ok(());
        };
        let mut errors = Vec::new();
        drop(live.loop_file);
        if let Err(e) = live.dev.flush() {
            errors.push(Error::io(format!("flushing {} at detach", self.name), e));
        }
        if let Err(source) = live.session.umount_and_join() {
            // Still open by someone (a shell in the directory, a process with
            // the file open): detach it from the namespace; the server thread
            // ends when the last user lets go.
            if let Err(e) = sys::umount(&self.dir, true) {
                tracing::warn!(dir = %self.dir.display(), error = %e, "lazy unmount failed");
            }
            errors.push(Error::Fuse {
                path: self.dir.clone(),
                source,
            });
        }
        if let Err(e) = fs::remove_dir(&self.dir) {
            errors.push(Error::io(format!("removing {}", self.dir.display()), e));
        }
        let mut errors = errors.into_iter();
        match errors.next() {
            None => {
                tracing::info!(name = %self.name, loop_device = %self.loop_path.display(), "detached");
                Ok(())
            }
            Some(first) => {
                for e in errors {
                    tracing::warn!(name = %self.name, error = %e, "detach");
                }
                Err(first)
            }
        }
    }
}

impl Drop for LocalAttachment {
    fn drop(&mut self) {
        if self.live.is_none() {
            return;
        }
        tracing::warn!(name = %self.name, "attachment dropped without detach; detaching");
        let released = match self.release_loop() {
            Ok(()) => Ok(()),
            Err(Release::Failed(e)) => {
                tracing::warn!(name = %self.name, error = %e, "releasing the loop device on drop");
                Ok(())
            }
            Err(Release::Busy(reason)) => Err(reason),
        };
        match released {
            Ok(()) => {
                if let Err(e) = self.teardown() {
                    tracing::warn!(name = %self.name, error = %e, "detach on drop");
                }
            }
            Err(reason) => {
                tracing::warn!(
                    name = %self.name,
                    loop_device = %self.loop_path.display(),
                    reason,
                    "still in use at drop: the FUSE server keeps running until the process exits, \
                     and the loop device detaches when its last user closes it"
                );
                if let Some(live) = self.live.take() {
                    // Closing our descriptor leaves the autoclear device
                    // bound only by its other users.
                    drop(live.loop_file);
                    // Keep serving: unmounting now would fail the file
                    // system mounted on the loop device.
                    std::mem::forget(live.session);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["d1", "disk-01.a_b", &"x".repeat(64)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "a,b", "é", &"x".repeat(65)] {
            assert!(
                matches!(validate_name(bad), Err(Error::InvalidName(_))),
                "{bad}"
            );
        }
    }
}
