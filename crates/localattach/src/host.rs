//! Reading the host's state: mounts (`/proc/self/mountinfo`), bound loop
//! devices (`/sys/block/loopN/loop`) and who holds a device open
//! (`/proc/<pid>/fd`). Read-only; no system calls beyond `std`.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// One line of `/proc/self/mountinfo`, the fields this crate uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mount {
    /// Where it is mounted (unescaped).
    pub(crate) mount_point: PathBuf,
    /// The file system type, e.g. `fuse.atrest` or `ext4`.
    pub(crate) fstype: String,
}

impl Mount {
    pub(crate) fn is_fuse(&self) -> bool {
        self.fstype == "fuse" || self.fstype.starts_with("fuse.")
    }
}

/// The mounts of this process's mount namespace.
pub(crate) fn mounts() -> io::Result<Vec<Mount>> {
    Ok(parse_mountinfo(&fs::read("/proc/self/mountinfo")?))
}

/// Parses mountinfo (proc(5)); malformed lines are skipped.
fn parse_mountinfo(text: &[u8]) -> Vec<Mount> {
    text.split(|b| *b == b'\n')
        .filter_map(|line| {
            let fields: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
            let mount_point = fields.get(4)?;
            let sep = fields.iter().position(|f| *f == b"-")?;
            let fstype = fields.get(sep + 1)?;
            Some(Mount {
                mount_point: PathBuf::from(OsString::from_vec(unescape(mount_point))),
                fstype: String::from_utf8_lossy(&unescape(fstype)).into_owned(),
            })
        })
        .collect()
}

/// Undoes the kernel's octal escapes (`\040` for a space, and so on).
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal = field
            .get(i + 1..i + 4)
            .filter(|d| field[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .map(|d| d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0')))
            .and_then(|v| u8::try_from(v).ok());
        match octal {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

/// A bound loop device and the path of its backing file as the kernel
/// reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BoundLoop {
    pub(crate) index: u32,
    pub(crate) backing_file: PathBuf,
}

impl BoundLoop {
    pub(crate) fn device(&self) -> PathBuf {
        loop_device_path(self.index)
    }
}

/// `/dev/loopN`.
pub(crate) fn loop_device_path(index: u32) -> PathBuf {
    PathBuf::from(format!("/dev/loop{index}"))
}

/// `/sys/block/loopN/loop/backing_file`: present only while bound.
fn backing_file_attr(index: u32) -> PathBuf {
    PathBuf::from(format!("/sys/block/loop{index}/loop/backing_file"))
}

/// Whether loop device `index` is bound to a file.
pub(crate) fn loop_is_bound(index: u32) -> bool {
    backing_file_attr(index).exists()
}

/// The backing file of loop device `index`, `None` if it is not bound.
pub(crate) fn loop_backing(index: u32) -> Option<PathBuf> {
    let mut bytes = fs::read(backing_file_attr(index)).ok()?;
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
    }
    Some(PathBuf::from(OsString::from_vec(bytes)))
}

/// Every bound loop device.
pub(crate) fn bound_loops() -> io::Result<Vec<BoundLoop>> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/sys/block")? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(index) = name
            .to_str()
            .and_then(|n| n.strip_prefix("loop"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // None: not bound (or unbound meanwhile).
        if let Some(backing_file) = loop_backing(index) {
            out.push(BoundLoop {
                index,
                backing_file,
            });
        }
    }
    out.sort_by_key(|l| l.index);
    Ok(out)
}

/// The processes holding the block device `rdev` open, other than through
/// this process's descriptors in `own_fds`. Only descriptors whose path is
/// under `/dev` are looked at, so that no `stat` ever reaches into some other
/// (possibly hung) FUSE file system.
pub(crate) fn openers(rdev: u64, own_fds: &[i32]) -> Vec<u32> {
    let me = std::process::id();
    let Ok(procs) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        // Processes come and go, and some deny access: skip what can't be read.
        let Ok(fds) = fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let num = fd.file_name().to_str().and_then(|s| s.parse::<i32>().ok());
            if pid == me && num.is_some_and(|n| own_fds.contains(&n)) {
                continue;
            }
            let link = fd.path();
            if !fs::read_link(&link).is_ok_and(|t| t.starts_with("/dev/")) {
                continue;
            }
            if fs::metadata(&link)
                .is_ok_and(|m| m.file_type().is_block_device() && m.rdev() == rdev)
            {
                pids.push(pid);
                break;
            }
        }
    }
    pids
}

/// `path` relative to `base`, first component only: the attachment name a
/// path under the run directory belongs to.
pub(crate) fn name_under(base: &Path, path: &Path) -> Option<String> {
    let rest = path.strip_prefix(base).ok()?;
    let first = rest.components().next()?;
    match first {
        std::path::Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_parse_with_escapes_and_optional_fields() {
        let text = b"22 1 0:21 / /proc rw,nosuid shared:5 - proc proc rw\n\
            99 22 0:55 / /run/at\\040rest/d1 rw,nosuid,nodev master:1 shared:2 - fuse.atrest atrest-localattach:d1 rw,user_id=0\n\
            garbage\n\
            100 22 7:3 / /mnt rw - ext4 /dev/loop3 rw\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].mount_point, Path::new("/run/at rest/d1"));
        assert_eq!(m[1].fstype, "fuse.atrest");
        assert!(m[1].is_fuse());
        assert_eq!(m[2].fstype, "ext4");
        assert!(!m[2].is_fuse());
    }

    #[test]
    fn unescape_leaves_malformed_escapes() {
        assert_eq!(unescape(b"a\\134b"), b"a\\b");
        assert_eq!(unescape(b"a\\9xyz\\"), b"a\\9xyz\\");
        assert_eq!(unescape(b"\\777"), b"\\777");
    }

    #[test]
    fn names_under_the_run_dir() {
        let base = Path::new("/run/atrest");
        assert_eq!(
            name_under(base, Path::new("/run/atrest/d1/device")),
            Some("d1".into())
        );
        assert_eq!(name_under(base, Path::new("/run/atrest")), None);
        assert_eq!(name_under(base, Path::new("/run/atrest2/x")), None);
    }
}
