//! Local attachment: a block device on this host (`/dev/loopN`) for a
//! virtual disk served by this process, so that `mkfs.ext4 /dev/loopN` and
//! `mount` work on it.
//!
//! Owns: the FUSE file system that exposes one [`BlockDevice`] as the
//! regular file `run_dir/<name>/device`, the loop device bound to that file,
//! and cleaning up after a crash ([`cleanup_stale`]). Knows nothing of
//! disks, encryption or keys: the disk service implements [`BlockDevice`].
//! The kernel has no NBD client here; FUSE plus loop is the way in.
//!
//! # The I/O path and durability
//!
//! ```text
//! ext4 -> /dev/loopN -> loop driver -> FUSE file -> this process -> BlockDevice
//! ```
//!
//! * **No hidden page cache.** The FUSE file is opened with
//!   `FOPEN_DIRECT_IO` and the connection does not use the writeback cache,
//!   so the kernel keeps no cache of the file: each write of the loop driver
//!   reaches [`BlockDevice::write`] before it completes. That is what makes a
//!   flush meaningful. (The page cache of `/dev/loopN` above the loop driver
//!   is the file system's own, written back by its `fsync`/`sync`.)
//! * **Concurrency.** The loop device is bound with `LO_FLAGS_DIRECT_IO`, so
//!   the loop driver submits asynchronous direct I/O to the file instead of
//!   one synchronous call at a time, and the connection asks for
//!   `FUSE_ASYNC_DIO`, so the kernel keeps several such requests in flight to
//!   the FUSE worker threads: a backend with latency serves them in
//!   parallel. If the loop driver declines direct I/O it falls back to its
//!   buffered path, which on this uncached file is still a pass-through,
//!   only serial.
//! * **Flush.** A `REQ_PREFLUSH`/FUA from the file system reaches the loop
//!   driver as a flush, which it performs as `vfs_fsync` on the FUSE file;
//!   that arrives here as FUSE `FSYNC`, and the reply waits for
//!   [`BlockDevice::flush`]. The loop device advertises a volatile write
//!   cache and no FUA, so the block layer turns FUA writes into write +
//!   flush. A write on a file descriptor with `O_DSYNC` also passes
//!   `fua = true`.
//! * **Discard.** The loop driver discards with
//!   `fallocate(PUNCH_HOLE)` (and zeroes with `ZERO_RANGE`); both call
//!   [`BlockDevice::trim`] on the whole blocks of the range and write zeros
//!   over partial ones. The discard granularity is the block size (the
//!   file system's `statfs` block size).
//!
//! # The loop device
//!
//! Bound with `LOOP_CONFIGURE` (Linux 5.8+: file, logical block size and
//! flags in one atomic step), logical block size = [`BlockDevice::block_size`],
//! and `LO_FLAGS_AUTOCLEAR`: the kernel unbinds it at its last close. The
//! attachment keeps one descriptor open, which holds it bound; when the
//! process dies that descriptor closes, so a crash leaves no loop device
//! behind once nothing (no mount) uses it. [`LocalAttachment::detach`]
//! refuses with [`Error::Busy`] while the device is mounted (an `O_EXCL`
//! open fails) or open by another process (`/proc/*/fd`), rather than
//! letting `LOOP_CLR_FD` silently defer the unbind.
//!
//! # Permissions
//!
//! The server runs as root and mounts without `allow_other`: a FUSE mount
//! serves only the mounting user, which is root here, and the loop driver's
//! requests carry root's credentials. The directory is 0700 and the file
//! 0600 (`default_permissions`), so no other user can read the plaintext.
//!
//! # Crashes
//!
//! When the serving process dies, its FUSE connection is aborted: a file
//! system still mounted on the loop device gets I/O errors (what was not
//! flushed is lost, as on a power cut) until it is unmounted; the loop
//! device unbinds itself then (autoclear). [`cleanup_stale`], at the next
//! start, unbinds what is unused, lazily unmounts the dead FUSE mounts and
//! removes the directories.
//!
//! # Limits
//!
//! * Linux 5.8+ only, root only; `/dev/fuse` and `/dev/loop-control`
//!   needed. The mount is a direct `mount(2)` by root (fuser's pure-Rust
//!   mount): no libfuse, no `fusermount3`.
//! * Every call blocks (mounting, ioctls, waiting out transient openers):
//!   call from a thread that may block, never from an async task.
//! * Memory pressure: writeback of the file system on the loop device goes
//!   through this process. The FUSE threads ask for `PR_SET_IO_FLUSHER` so
//!   their allocations do not recurse into that writeback; threads of the
//!   [`BlockDevice`] implementation that serve its I/O should call
//!   [`mark_io_flusher_thread`] too. It needs `CAP_SYS_RESOURCE`; without
//!   it (some containers) the request is refused and logged at debug level.
//! * The process must not itself do I/O to a file system mounted on its own
//!   attachment from the threads that serve it.
//! * [`cleanup_stale`] takes everything under its `run_dir` for stale: one
//!   process per `run_dir`.
//! * `unsafe` is confined to the private `sys` module (loop ioctls,
//!   `umount2`, `prctl`).

#![warn(missing_docs)]

mod attach;
mod cleanup;
mod error;
mod fs;
mod host;
mod sys;

use std::io;

pub use attach::LocalAttachment;
pub use cleanup::cleanup_stale;
pub use error::{Busy, Error};

/// What the FUSE file serves: a fixed-size array of bytes with a flush.
/// Implemented by the disk service's attachment elsewhere.
///
/// Calls come from several FUSE worker threads at once. This crate only
/// calls [`read`](Self::read) and [`write`](Self::write) with non-empty
/// ranges that lie within [`size`](Self::size), but at **any offset and
/// length**: the loop driver sends block-aligned requests, yet anyone with
/// access to the FUSE file may read or write it unaligned, and those are
/// passed through as they are. [`trim`](Self::trim) is only called with
/// whole, block-aligned blocks.
pub trait BlockDevice: Send + Sync + 'static {
    /// The size in bytes, a non-zero multiple of [`block_size`](Self::block_size).
    /// Read once, at attach.
    fn size(&self) -> u64;

    /// The logical block size, 512 or 4096; the loop device's logical block
    /// size. Read once, at attach.
    fn block_size(&self) -> u32;

    /// Fills `buf` with the bytes at `offset`.
    fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;

    /// Writes `data` at `offset`. When it returns the write is complete
    /// (later reads see it), though not necessarily durable; with `fua` it
    /// must also be durable.
    fn write(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()>;

    /// Discards `[offset, offset + len)`, block-aligned; the range reads as
    /// zeros afterwards.
    fn trim(&self, offset: u64, len: u64) -> io::Result<()>;

    /// Makes every write completed before the call durable.
    fn flush(&self) -> io::Result<()>;
}

/// Marks the calling thread as part of the block I/O path
/// (`prctl(PR_SET_IO_FLUSHER)`, Linux 5.6+, needs `CAP_SYS_RESOURCE`): its
/// memory allocations will not wait for writeback, which could otherwise
/// be writeback to the very loop device this thread serves. Call it on
/// threads that do the work of a [`BlockDevice`]; FUSE worker threads are
/// marked already.
pub fn mark_io_flusher_thread() -> Result<(), Error> {
    sys::set_io_flusher().map_err(|e| Error::io("prctl(PR_SET_IO_FLUSHER)", e))
}

#[cfg(test)]
mod tests {
    fn send_sync<T: Send + Sync + 'static>() {}

    #[test]
    fn errors_and_attachments_cross_threads() {
        send_sync::<crate::Error>();
        send_sync::<crate::LocalAttachment>();
    }
}
