//! The system calls this crate makes that `std` does not wrap: the loop
//! ioctls (`linux/loop.h`), `umount2(2)` and `prctl(PR_SET_IO_FLUSHER)`.
//!
//! Every function here is a thin, typed wrapper; the policy (which device,
//! when, what an errno means) lives in the callers. The structures mirror the
//! kernel's UAPI layout exactly (`#[repr(C)]`, fixed-width fields), and the
//! tests below pin their sizes.
#![allow(unsafe_code)] // ioctl/umount2/prctl FFI; every block has a SAFETY comment.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

// ioctl request numbers from linux/loop.h ('L' << 8 | n), stable UAPI.
const LOOP_CLR_FD: libc::Ioctl = 0x4C01;
const LOOP_GET_STATUS64: libc::Ioctl = 0x4C05;
const LOOP_CONFIGURE: libc::Ioctl = 0x4C0A;
const LOOP_CTL_GET_FREE: libc::Ioctl = 0x4C82;

/// `LO_FLAGS_AUTOCLEAR`: detach when the last opener closes the device.
pub(crate) const LO_FLAGS_AUTOCLEAR: u32 = 4;
/// `LO_FLAGS_DIRECT_IO`: the loop driver opens no page cache of its own on
/// the backing file.
pub(crate) const LO_FLAGS_DIRECT_IO: u32 = 16;

/// `PR_SET_IO_FLUSHER` (Linux 5.6); not in `libc` for glibc targets.
const PR_SET_IO_FLUSHER: libc::c_int = 57;

const LO_NAME_SIZE: usize = 64;
const LO_KEY_SIZE: usize = 32;

/// `struct loop_info64`.
#[repr(C)]
#[derive(Clone, Copy)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; LO_KEY_SIZE],
    lo_init: [u64; 2],
}

impl LoopInfo64 {
    const fn zeroed() -> Self {
        Self {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: 0,
            lo_sizelimit: 0,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: 0,
            lo_file_name: [0; LO_NAME_SIZE],
            lo_crypt_name: [0; LO_NAME_SIZE],
            lo_encrypt_key: [0; LO_KEY_SIZE],
            lo_init: [0; 2],
        }
    }
}

/// `struct loop_config` (`LOOP_CONFIGURE`, Linux 5.8).
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// What `LOOP_GET_STATUS64` says of a bound loop device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LoopStatus {
    /// `st_dev` of the backing file, in the kernel's `new_encode_dev` form
    /// (the same form `stat(2)` returns on Linux).
    pub(crate) backing_dev: u64,
    /// `st_ino` of the backing file.
    pub(crate) backing_ino: u64,
    /// `LO_FLAGS_*` in force.
    pub(crate) flags: u32,
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `LOOP_CTL_GET_FREE` on `/dev/loop-control`: the index of a free loop
/// device, created if none is free.
pub(crate) fn loop_ctl_get_free(control: &File) -> io::Result<u32> {
    // SAFETY: LOOP_CTL_GET_FREE takes no argument and reads no memory of
    // ours; `control` is an open file for the duration of the call.
    let n = check(unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) })?;
    u32::try_from(n).map_err(|_| io::Error::other("LOOP_CTL_GET_FREE returned a negative index"))
}

/// `LOOP_CONFIGURE`: binds `backing` to the loop device `dev` with the given
/// logical block size and flags, atomically (no window in which the device
/// is bound with the wrong block size or flags).
pub(crate) fn loop_configure(
    dev: &File,
    backing: &File,
    block_size: u32,
    flags: u32,
    file_name: &Path,
) -> io::Result<()> {
    let fd = u32::try_from(backing.as_raw_fd())
        .map_err(|_| io::Error::other("negative file descriptor"))?;
    let mut info = LoopInfo64::zeroed();
    info.lo_flags = flags;
    // Informational only (losetup reads the path from sysfs); truncated to
    // the field, always NUL-terminated.
    let name = file_name.as_os_str().as_bytes();
    let n = name.len().min(LO_NAME_SIZE - 1);
    info.lo_file_name[..n].copy_from_slice(&name[..n]);
    let config = LoopConfig {
        fd,
        block_size,
        info,
        reserved: [0; 8],
    };
    // SAFETY: LOOP_CONFIGURE reads one `struct loop_config`, which `config`
    // is (repr(C), layout pinned by the tests below); the pointer is valid
    // for the duration of the call and the kernel does not keep it. Both
    // files are open for the duration of the call.
    check(unsafe {
        libc::ioctl(
            dev.as_raw_fd(),
            LOOP_CONFIGURE,
            &raw const config as *const libc::c_void,
        )
    })?;
    Ok(())
}

/// `LOOP_CLR_FD`: asks the kernel to unbind the device. The kernel marks it
/// autoclear and unbinds it at the last close (at once if the caller's file
/// is the only one open).
pub(crate) fn loop_clr_fd(dev: &File) -> io::Result<()> {
    // SAFETY: LOOP_CLR_FD takes no argument; `dev` is open for the call.
    check(unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CLR_FD) })?;
    Ok(())
}

/// `LOOP_GET_STATUS64`; `ENXIO` if the device is not bound.
pub(crate) fn loop_get_status(dev: &File) -> io::Result<LoopStatus> {
    let mut info = LoopInfo64::zeroed();
    // SAFETY: LOOP_GET_STATUS64 writes one `struct loop_info64` to the
    // pointer, which points at `info` (repr(C), layout pinned by the tests
    // below), valid and exclusively borrowed for the duration of the call.
    check(unsafe {
        libc::ioctl(
            dev.as_raw_fd(),
            LOOP_GET_STATUS64,
            &raw mut info as *mut libc::c_void,
        )
    })?;
    Ok(LoopStatus {
        backing_dev: info.lo_device,
        backing_ino: info.lo_inode,
        flags: info.lo_flags,
    })
}

/// `umount2(path, 0)`, or with `MNT_DETACH` when `lazy`.
pub(crate) fn umount(path: &Path, lazy: bool) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    let flags = if lazy { libc::MNT_DETACH } else { 0 };
    // SAFETY: `c` is a NUL-terminated string that lives across the call;
    // umount2 only reads it.
    check(unsafe { libc::umount2(c.as_ptr(), flags) })?;
    Ok(())
}

/// `prctl(PR_SET_IO_FLUSHER, 1)` for the calling thread.
pub(crate) fn set_io_flusher() -> io::Result<()> {
    let (zero, one): (libc::c_ulong, libc::c_ulong) = (0, 1);
    // SAFETY: PR_SET_IO_FLUSHER takes integer arguments only (arg2 = 1, the
    // rest must be 0) and changes flags of the calling thread; no memory is
    // passed.
    check(unsafe { libc::prctl(PR_SET_IO_FLUSHER, one, zero, zero, zero) })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uapi_layouts_match_the_kernel() {
        // sizeof(struct loop_info64) and sizeof(struct loop_config) on every
        // Linux ABI (the structs contain only fixed-width fields).
        assert_eq!(size_of::<LoopInfo64>(), 232);
        assert_eq!(size_of::<LoopConfig>(), 304);
        assert_eq!(std::mem::offset_of!(LoopInfo64, lo_flags), 52);
        assert_eq!(std::mem::offset_of!(LoopInfo64, lo_file_name), 56);
        assert_eq!(std::mem::offset_of!(LoopConfig, info), 8);
    }
}
