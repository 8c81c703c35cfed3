//! Shared helpers: the in-memory block device double, guards that leave no
//! mount, loop device or directory behind even when a test fails, and
//! readers of the host's mount and loop state.

use std::fs;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use atrest_localattach::BlockDevice;

/// Why these tests cannot run here, if they cannot.
pub fn skip_reason() -> Option<&'static str> {
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse is missing (no FUSE)");
    }
    if !Path::new("/dev/loop-control").exists() {
        return Some("/dev/loop-control is missing (no loop driver)");
    }
    None
}

/// Returns from the test, saying why, when the host cannot run it.
macro_rules! require_host {
    () => {
        if let Some(reason) = crate::support::skip_reason() {
            println!("skipped: {reason}");
            return;
        }
    };
}
pub(crate) use require_host;

/// Test double: a block device in memory that counts flushes, trims and
/// FUA writes, and fails writes on demand.
pub struct MemDisk {
    data: Mutex<Vec<u8>>,
    block_size: u32,
    flushes: AtomicUsize,
    trims: AtomicUsize,
    fua_writes: AtomicUsize,
    fail_writes: Mutex<Option<io::ErrorKind>>,
}

impl MemDisk {
    pub fn new(size: usize, block_size: u32) -> Arc<Self> {
        Arc::new(Self {
            data: Mutex::new(vec![0; size]),
            block_size,
            flushes: AtomicUsize::new(0),
            trims: AtomicUsize::new(0),
            fua_writes: AtomicUsize::new(0),
            fail_writes: Mutex::new(None),
        })
    }

    /// Makes every write fail with an error of `kind` and no OS errno (as
    /// the disk service's are), or stops that.
    pub fn fail_writes(&self, kind: Option<io::ErrorKind>) {
        *self.fail_writes.lock().unwrap() = kind;
    }

    pub fn flushes(&self) -> usize {
        self.flushes.load(Ordering::SeqCst)
    }

    pub fn trims(&self) -> usize {
        self.trims.load(Ordering::SeqCst)
    }

    pub fn fua_writes(&self) -> usize {
        self.fua_writes.load(Ordering::SeqCst)
    }

    /// The stored bytes at `[offset, offset + len)`.
    pub fn bytes(&self, offset: usize, len: usize) -> Vec<u8> {
        self.data.lock().unwrap()[offset..offset + len].to_vec()
    }

    /// Changes the stored bytes behind the kernel's back.
    pub fn poke(&self, offset: usize, bytes: &[u8]) {
        self.data.lock().unwrap()[offset..offset + bytes.len()].copy_from_slice(bytes);
    }

    fn range(&self, offset: u64, len: usize) -> io::Result<std::ops::Range<usize>> {
        let size = self.data.lock().unwrap().len();
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let end = start.checked_add(len).filter(|e| *e <= size);
        // The crate promises never to go past the end.
        assert!(end.is_some(), "out of range: {offset} + {len} > {size}");
        Ok(start..start + len)
    }
}

impl BlockDevice for MemDisk {
    fn size(&self) -> u64 {
        self.data.lock().unwrap().len() as u64
    }

    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let r = self.range(offset, buf.len())?;
        buf.copy_from_slice(&self.data.lock().unwrap()[r]);
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        if let Some(kind) = *self.fail_writes.lock().unwrap() {
            return Err(io::Error::new(kind, "injected write failure"));
        }
        let r = self.range(offset, data.len())?;
        self.data.lock().unwrap()[r].copy_from_slice(data);
        if fua {
            self.fua_writes.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }

    fn trim(&self, offset: u64, len: u64) -> io::Result<()> {
        let bs = u64::from(self.block_size);
        assert!(
            offset.is_multiple_of(bs) && len.is_multiple_of(bs),
            "unaligned trim {offset}+{len}"
        );
        let r = self.range(offset, usize::try_from(len).unwrap())?;
        self.data.lock().unwrap()[r].fill(0);
        self.trims.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// A temporary run directory. On drop, clears anything a failed test left
/// in it (with the crate's own `cleanup_stale`) before removing it.
pub struct RunDir {
    dir: Option<tempfile::TempDir>,
}

impl RunDir {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("atrest-la-run-")
            .tempdir()
            .unwrap();
        Self { dir: Some(dir) }
    }

    pub fn path(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            if let Err(e) = atrest_localattach::cleanup_stale(dir.path()) {
                println!("cleanup of {} failed: {e}", dir.path().display());
            }
            let _ = dir.close();
        }
    }
}

/// Runs a command, failing the test with its output if it fails.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An ext4 (or any) file system mounted on a fresh temporary directory;
/// unmounted on drop (lazily if it must), and the directory removed.
pub struct Mounted {
    dir: Option<tempfile::TempDir>,
    mounted: bool,
}

impl Mounted {
    pub fn mount(device: &Path) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("atrest-la-mnt-")
            .tempdir()
            .unwrap();
        let mut m = Self {
            dir: Some(dir),
            mounted: false,
        };
        run(
            "mount",
            &[
                "-t",
                "ext4",
                &device.to_string_lossy(),
                &m.path().to_string_lossy(),
            ],
        );
        m.mounted = true;
        m
    }

    pub fn path(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }

    pub fn unmount(mut self) {
        run("umount", &[&self.path().to_string_lossy()]);
        self.mounted = false;
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.mounted {
            let p = self.path().to_string_lossy().into_owned();
            let ok = Command::new("umount")
                .arg(&p)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("umount").args(["-l", &p]).status();
            }
        }
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }
}

/// Mount points at or under `dir`, from `/proc/self/mountinfo`.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(&dir))
        .collect()
}

/// The sysfs name of a loop device path: `/dev/loop3` -> `loop3`.
pub fn loop_name(device: &Path) -> String {
    device.file_name().unwrap().to_string_lossy().into_owned()
}

/// The backing file of a loop device, `None` when it is not bound.
pub fn loop_backing(device: &Path) -> Option<PathBuf> {
    let path = format!("/sys/block/{}/loop/backing_file", loop_name(device));
    let mut bytes = fs::read(path).ok()?;
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
    }
    Some(PathBuf::from(std::ffi::OsString::from_vec(bytes)))
}

/// Whether `device` is bound to `file`. (Tests run in parallel: a device
/// one test released may at once be bound by another.)
pub fn bound_to(device: &Path, file: &Path) -> bool {
    loop_backing(device).is_some_and(|b| b == file)
}

/// Bound loop devices whose backing file is under `dir`.
pub fn loops_under(dir: &Path) -> Vec<PathBuf> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let mut out = Vec::new();
    for e in fs::read_dir("/sys/block").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        let dev = PathBuf::from(format!("/dev/{name}"));
        if loop_backing(&dev).is_some_and(|b| b.starts_with(&dir)) {
            out.push(dev);
        }
    }
    out
}

/// A `/sys/block/<loop>/queue/<attr>` value.
pub fn queue_attr(device: &Path, attr: &str) -> String {
    fs::read_to_string(format!("/sys/block/{}/queue/{attr}", loop_name(device)))
        .unwrap()
        .trim()
        .to_owned()
}

/// Polls `cond` for up to `secs` seconds.
pub fn eventually(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > Duration::from_secs(secs) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A buffer aligned for O_DIRECT.
pub struct Aligned {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    pub fn new(len: usize) -> Self {
        let buf = vec![0; len + 4096];
        let start = buf.as_ptr().align_offset(4096);
        Self { buf, start, len }
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

/// Deterministic, incompressible-looking bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
