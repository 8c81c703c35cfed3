//! The FUSE file system: one directory holding one regular file, `device`,
//! whose bytes are the [`BlockDevice`]'s.
//!
//! The file is opened with `FOPEN_DIRECT_IO`, so the kernel keeps no page
//! cache for it: every read and write of the loop driver (or of anyone
//! opening the file) arrives here as it is issued, and a write is in the
//! block device before its reply. `fsync`/`fdatasync`, which is what the
//! loop driver does for a flush, calls [`BlockDevice::flush`] before
//! replying. `fallocate(PUNCH_HOLE)`, what the loop driver does for a
//! discard, trims.

use std::cell::Cell;
use std::ffi::OsStr;
use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, WriteFlags,
};

use crate::BlockDevice;

/// The name of the one file.
pub(crate) const DEVICE_FILE: &str = "device";

const ROOT: INodeNo = INodeNo::ROOT;
const FILE: INodeNo = INodeNo(2);
/// Nothing here ever changes but the bytes, so the kernel may cache names and
/// attributes for long.
const TTL: Duration = Duration::from_secs(3600);

/// Maps a block device error to the errno the kernel sees: the error's own
/// errno when it has one, else by its kind (an error made with
/// [`io::Error::new`], as the disk service's are): out of space (a full
/// pool) is `ENOSPC`, not permitted `EPERM`, an invalid argument `EINVAL`,
/// out of memory `ENOMEM`, anything else `EIO` (the table of
/// `atrest_nbd::transmit::errno::of_kind`, which NBD clients get).
fn errno_of(e: &io::Error) -> Errno {
    use io::ErrorKind as K;
    if let Some(n) = e.raw_os_error() {
        return Errno::from_i32(n);
    }
    match e.kind() {
        K::StorageFull | K::QuotaExceeded | K::FileTooLarge => Errno::ENOSPC,
        K::PermissionDenied | K::ReadOnlyFilesystem => Errno::EPERM,
        K::InvalidInput => Errno::EINVAL,
        K::OutOfMemory => Errno::ENOMEM,
        _ => Errno::EIO,
    }
}

/// Marks each FUSE worker thread an I/O flusher once (see
/// [`crate::mark_io_flusher_thread`]).
fn mark_worker_thread() {
    thread_local! {
        static MARKED: Cell<bool> = const { Cell::new(false) };
    }
    MARKED.with(|m| {
        if !m.get() {
            m.set(true);
            if let Err(e) = crate::sys::set_io_flusher() {
                tracing::debug!(error = %e, "PR_SET_IO_FLUSHER refused for a FUSE worker");
            }
        }
    });
}

/// The FUSE side of one attachment.
pub(crate) struct DeviceFs {
    dev: Arc<dyn BlockDevice>,
    size: u64,
    block_size: u32,
    uid: u32,
    gid: u32,
    created: SystemTime,
}

impl DeviceFs {
    /// `size` and `block_size` are the device's, already checked by the
    /// caller; `uid`/`gid` own both inodes.
    pub(crate) fn new(
        dev: Arc<dyn BlockDevice>,
        size: u64,
        block_size: u32,
        uid: u32,
        gid: u32,
    ) -> Self {
        Self {
            dev,
            size,
            block_size,
            uid,
            gid,
            created: SystemTime::now(),
        }
    }

    fn attr(&self, ino: INodeNo) -> Option<FileAttr> {
        let (kind, perm, nlink, size) = match ino {
            ROOT => (FileType::Directory, 0o700, 2, 0),
            FILE => (FileType::RegularFile, 0o600, 1, self.size),
            _ => return None,
        };
        Some(FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: self.created,
            mtime: self.created,
            ctime: self.created,
            crtime: self.created,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: self.block_size,
            flags: 0,
        })
    }

    /// Zeroes `[offset, offset + len)` (within the size): trims the
    /// block-aligned middle, writes zeros over partial blocks at the edges,
    /// so [`BlockDevice::trim`] only ever sees whole blocks.
    fn zero_range(&self, offset: u64, len: u64) -> io::Result<()> {
        let bs = u64::from(self.block_size);
        let end = offset.saturating_add(len).min(self.size);
        if offset >= end {
            return Ok(());
        }
        let first_full = offset.div_ceil(bs).saturating_mul(bs);
        let last_full = end / bs * bs;
        if first_full >= last_full {
            return self.write_zeros(offset, end);
        }
        self.write_zeros(offset, first_full)?;
        self.dev.trim(first_full, last_full - first_full)?;
        self.write_zeros(last_full, end)
    }

    /// Writes zeros over `[start, end)`, which is less than one block.
    fn write_zeros(&self, start: u64, end: u64) -> io::Result<()> {
        if start >= end {
            return Ok(());
        }
        let len = usize::try_from(end - start).map_err(io::Error::other)?;
        self.dev.write(start, &vec![0; len], false)
    }
}

impl Filesystem for DeviceFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // Asynchronous direct I/O: the loop driver (bound with
        // LO_FLAGS_DIRECT_IO) submits its requests as async kiocbs, and with
        // this the kernel keeps several in flight to our worker threads
        // instead of waiting for each in turn.
        if let Err(missing) = config.add_capabilities(InitFlags::FUSE_ASYNC_DIO) {
            tracing::debug!(
                ?missing,
                "kernel lacks FUSE_ASYNC_DIO: loop I/O will be serial"
            );
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.attr(FILE) {
            Some(attr) if parent == ROOT && name == DEVICE_FILE => {
                reply.entry(&TTL, &attr, Generation(0));
            }
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let Some(attr) = self.attr(ino) else {
            return reply.error(Errno::ENOENT);
        };
        // The size is the device's and fixed (this also refuses O_TRUNC);
        // owner, mode and times are accepted and ignored.
        if size.is_some_and(|s| s != attr.size) {
            return reply.error(Errno::EPERM);
        }
        reply.attr(&TTL, &attr);
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match ino {
            FILE => reply.opened(
                FileHandle(0),
                FopenFlags::FOPEN_DIRECT_IO
                    | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES
                    | FopenFlags::FOPEN_NOFLUSH,
            ),
            ROOT => reply.error(Errno::EISDIR),
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        mark_worker_thread();
        if ino != FILE {
            return reply.error(Errno::EISDIR);
        }
        // Reads at or past the end are short, as for any file.
        let end = offset.saturating_add(u64::from(size)).min(self.size);
        let Some(len) = end
            .checked_sub(offset)
            .and_then(|l| usize::try_from(l).ok())
        else {
            return reply.data(&[]);
        };
        if len == 0 {
            return reply.data(&[]);
        }
        let mut buf = vec![0; len];
        match self.dev.read(offset, &mut buf) {
            Ok(()) => reply.data(&buf),
            Err(e) => {
                tracing::warn!(offset, len, error = %e, "block device read failed");
                reply.error(errno_of(&e));
            }
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        mark_worker_thread();
        if ino != FILE {
            return reply.error(Errno::EISDIR);
        }
        if data.is_empty() {
            return reply.written(0);
        }
        // The file cannot grow: a write starting at or past the end fails,
        // one crossing it is short (as on a block device).
        if offset >= self.size {
            return reply.error(Errno::ENOSPC);
        }
        let room = usize::try_from(self.size - offset).unwrap_or(usize::MAX);
        let data = &data[..data.len().min(room)];
        let Ok(written) = u32::try_from(data.len()) else {
            return reply.error(Errno::EINVAL);
        };
        // O_DSYNC (also set by O_SYNC) asks for this write to be durable on
        // completion; the kernel also sends an fsync after it.
        let fua = flags.0 & libc::O_DSYNC != 0;
        match self.dev.write(offset, data, fua) {
            Ok(()) => reply.written(written),
            Err(e) => {
                tracing::warn!(offset, len = data.len(), error = %e, "block device write failed");
                reply.error(errno_of(&e));
            }
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2): nothing is buffered here, and close is no durability
        // point. (FOPEN_NOFLUSH makes the kernel skip this; kept for older
        // kernels.)
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        mark_worker_thread();
        if ino != FILE {
            return reply.ok();
        }
        // The durability point: every write replied to so far is made
        // durable before the kernel (and so the loop driver's flush, and
        // the file system's REQ_PREFLUSH/FUA above it) completes.
        match self.dev.flush() {
            Ok(()) => reply.ok(),
            Err(e) => {
                tracing::warn!(error = %e, "block device flush failed");
                reply.error(errno_of(&e));
            }
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        mark_worker_thread();
        if ino != FILE {
            return reply.error(Errno::EISDIR);
        }
        const KEEP: i32 = libc::FALLOC_FL_KEEP_SIZE;
        const PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE;
        const ZERO: i32 = libc::FALLOC_FL_ZERO_RANGE;
        if mode & !(KEEP | PUNCH | ZERO) != 0 {
            return reply.error(Errno::from_i32(libc::EOPNOTSUPP));
        }
        let Some(end) = offset.checked_add(length) else {
            return reply.error(Errno::EFBIG);
        };
        if mode & KEEP == 0 && end > self.size {
            return reply.error(Errno::EFBIG);
        }
        if mode & (PUNCH | ZERO) == 0 {
            // Plain allocation: every byte already exists.
            return reply.ok();
        }
        // Loop sends PUNCH_HOLE for a discard and ZERO_RANGE (or
        // PUNCH_HOLE) for write-zeroes; both read back as zeros after.
        match self.zero_range(offset, length) {
            Ok(()) => reply.ok(),
            Err(e) => {
                tracing::warn!(offset, length, error = %e, "block device trim failed");
                reply.error(errno_of(&e));
            }
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match ino {
            ROOT => reply.opened(FileHandle(0), FopenFlags::empty()),
            FILE => reply.error(Errno::ENOTDIR),
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino != ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let entries = [
            (ROOT, FileType::Directory, "."),
            (ROOT, FileType::Directory, ".."),
            (FILE, FileType::RegularFile, DEVICE_FILE),
        ];
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        for (next, (ino, kind, name)) in (1u64..).zip(entries).skip(skip) {
            if reply.add(ino, next, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // f_bsize is what the loop driver takes as its discard granularity.
        let bs = u64::from(self.block_size);
        reply.statfs(
            self.size / bs,
            0,
            0,
            2,
            0,
            self.block_size,
            255,
            self.block_size,
        );
    }

    // No extended attributes. ENOSYS makes the kernel stop asking.
    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Records every call, for checking how ranges are split.
    #[derive(Default)]
    struct Recorder {
        calls: Mutex<Vec<(&'static str, u64, u64)>>,
    }

    impl BlockDevice for Recorder {
        fn size(&self) -> u64 {
            1 << 20
        }
        fn block_size(&self) -> u32 {
            4096
        }
        fn read(&self, _offset: u64, _buf: &mut [u8]) -> io::Result<()> {
            Ok(())
        }
        fn write(&self, offset: u64, data: &[u8], _fua: bool) -> io::Result<()> {
            assert!(data.iter().all(|b| *b == 0));
            self.calls
                .lock()
                .unwrap()
                .push(("write", offset, data.len() as u64));
            Ok(())
        }
        fn trim(&self, offset: u64, len: u64) -> io::Result<()> {
            self.calls.lock().unwrap().push(("trim", offset, len));
            Ok(())
        }
        fn flush(&self) -> io::Result<()> {
            Ok(())
        }
    }

    fn zero(offset: u64, len: u64) -> Vec<(&'static str, u64, u64)> {
        let rec = Arc::new(Recorder::default());
        let fs = DeviceFs::new(rec.clone(), 1 << 20, 4096, 0, 0);
        fs.zero_range(offset, len).unwrap();
        rec.calls.lock().unwrap().clone()
    }

    #[test]
    fn errno_of_keeps_the_os_errno_else_maps_the_kind() {
        use io::ErrorKind as K;
        // The error's own errno, whatever its kind.
        for n in [libc::ENOSPC, libc::EDQUOT, libc::EROFS, libc::EBUSY] {
            assert_eq!(errno_of(&io::Error::from_raw_os_error(n)).code(), n);
        }
        // Without one, by kind.
        for (kind, want) in [
            (K::StorageFull, libc::ENOSPC),
            (K::QuotaExceeded, libc::ENOSPC),
            (K::FileTooLarge, libc::ENOSPC),
            (K::PermissionDenied, libc::EPERM),
            (K::ReadOnlyFilesystem, libc::EPERM),
            (K::InvalidInput, libc::EINVAL),
            (K::OutOfMemory, libc::ENOMEM),
            (K::Other, libc::EIO),
            (K::NotFound, libc::EIO),
            (K::UnexpectedEof, libc::EIO),
        ] {
            let e = io::Error::new(kind, "no errno of its own");
            assert_eq!(errno_of(&e).code(), want, "{kind:?}");
        }
    }

    #[test]
    fn zero_range_trims_only_whole_blocks() {
        assert_eq!(zero(4096, 8192), [("trim", 4096, 8192)]);
        assert_eq!(
            zero(100, 3 * 4096),
            [
                ("write", 100, 3996),
                ("trim", 4096, 8192),
                ("write", 12288, 100)
            ]
        );
        assert_eq!(zero(10, 20), [("write", 10, 20)]);
        // Within one block, but crossing none: written.
        assert_eq!(zero(4000, 200), [("write", 4000, 200)]);
        // Clamped to the size.
        assert_eq!(
            zero((1 << 20) - 4096, 1 << 30),
            [("trim", (1 << 20) - 4096, 4096)]
        );
        assert_eq!(zero(1 << 20, 10), []);
    }
}
