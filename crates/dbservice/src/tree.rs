//! Root's file operations inside a tree that an instance's OS user can
//! write: its file system (data directory, agent directory) and its socket
//! directory.
//!
//! atrest runs as root, and the instance's OS user (and anything it runs)
//! can plant a symbolic link, a hard link, a FIFO or a device node at any
//! name in those trees. So root never resolves a path there with the
//! ordinary calls: every path is resolved from a directory handle with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV)`, which
//! fails (`ELOOP`, `EXDEV`) instead of following a link anywhere on the
//! path or leaving the tree, and the last component is acted on through
//! the `*at` calls with `O_NOFOLLOW` or `AT_SYMLINK_NOFOLLOW`:
//!
//! * a file is written as a new file under a random name (`O_CREAT |
//!   O_EXCL`, so nothing that already exists is opened), synced, given to
//!   its owner with `fchown`, and renamed over the name (which replaces a
//!   link there, never its target);
//! * a file is read only if it is a regular file with one link, opened
//!   `O_NONBLOCK` (a FIFO would otherwise stall root), and only up to a
//!   bound;
//! * ownership and modes change through the handle (`fchown`, `fchmod`) or
//!   `fchownat(AT_SYMLINK_NOFOLLOW)`;
//! * removal is `unlinkat` of the name itself.

use std::ffi::OsStr;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use nix::unistd::{Gid, Uid};

/// Who owns what atrest creates: a uid and a gid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl Owner {
    /// root:root.
    pub(crate) const ROOT: Self = Self { uid: 0, gid: 0 };
}

/// A directory handle that root's operations resolve every path under.
#[derive(Debug)]
pub(crate) struct Tree {
    dir: OwnedFd,
    path: PathBuf,
}

fn io(e: Errno) -> std::io::Error {
    std::io::Error::from(e)
}

fn resolve_flags() -> ResolveFlag {
    ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_XDEV
}

/// `rel` split into its parent (`None` for the tree's own directory) and
/// its last component; absolute paths, `..` and empty names are refused.
fn split(rel: &str) -> std::io::Result<(Option<&str>, &str)> {
    let bad = rel.is_empty()
        || rel.starts_with('/')
        || rel.ends_with('/')
        || rel
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("'{rel}' is not a relative path inside the tree"),
        ));
    }
    Ok(match rel.rsplit_once('/') {
        Some((parent, name)) => (Some(parent), name),
        None => (None, rel),
    })
}

impl Tree {
    /// Opens directory `path` as the root of a tree. Its own path must be
    /// root's to trust (its parents are not writable by the instance's
    /// user); it must not itself be a symbolic link.
    pub(crate) fn open(path: &Path) -> std::io::Result<Self> {
        let dir = nix::fcntl::open(
            path,
            OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(io)?;
        Ok(Self {
            dir,
            path: path.to_path_buf(),
        })
    }

    fn open_at(&self, rel: &str, flags: OFlag, mode: Mode) -> std::io::Result<OwnedFd> {
        split(rel)?;
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
            .mode(mode)
            .resolve(resolve_flags());
        nix::fcntl::openat2(&self.dir, rel, how).map_err(io)
    }

    /// The directory `rel` names, as a handle (`None`: the tree itself).
    fn parent(&self, parent: Option<&str>) -> std::io::Result<OwnedFd> {
        match parent {
            None => self.dir.try_clone(),
            Some(p) => self.open_at(p, OFlag::O_DIRECTORY | OFlag::O_RDONLY, Mode::empty()),
        }
    }

    /// The subdirectory `rel` as a tree of its own.
    pub(crate) fn subtree(&self, rel: &str) -> std::io::Result<Self> {
        let dir = self.open_at(rel, OFlag::O_DIRECTORY | OFlag::O_RDONLY, Mode::empty())?;
        Ok(Self {
            dir,
            path: self.path.join(rel),
        })
    }

    /// `lstat` of `rel` (a link is described, not followed); `None` if
    /// nothing is there.
    pub(crate) fn stat(&self, rel: &str) -> std::io::Result<Option<FileStat>> {
        let (parent, name) = split(rel)?;
        let p = self.parent(parent)?;
        match nix::sys::stat::fstatat(&p, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(s) => Ok(Some(s)),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(io(e)),
        }
    }

    /// Gives the tree's own directory to `owner` with `mode`.
    pub(crate) fn set_root(&self, owner: Owner, mode: u32) -> std::io::Result<()> {
        set_owner_mode(&self.dir, owner, mode)
    }

    /// Makes directory `rel` (its parent must exist) owned by `owner` with
    /// `mode`, or gives an existing directory there that owner and mode.
    /// Anything else at that name (a link, a file) is an error.
    pub(crate) fn ensure_dir(&self, rel: &str, owner: Owner, mode: u32) -> std::io::Result<()> {
        let (parent, name) = split(rel)?;
        let p = self.parent(parent)?;
        match nix::sys::stat::mkdirat(&p, name, Mode::from_bits_truncate(0o700)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(io(e)),
        }
        let d = self.open_at(rel, OFlag::O_DIRECTORY | OFlag::O_RDONLY, Mode::empty())?;
        set_owner_mode(&d, owner, mode)
    }

    /// Replaces file `rel` with `bytes`, owned by `owner` with `mode`
    /// (see the module doc: a new file renamed over the name).
    pub(crate) fn write(
        &self,
        rel: &str,
        bytes: &[u8],
        owner: Owner,
        mode: u32,
    ) -> std::io::Result<()> {
        let (parent, name) = split(rel)?;
        let p = self.parent(parent)?;
        let mut tag = [0u8; 8];
        atrest_crypto::rand::fill(&mut tag).map_err(|e| std::io::Error::other(e.to_string()))?;
        let tmp = format!(".{name}.atrest-{}", hex::encode(tag));
        let how = OpenHow::new()
            .flags(
                OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
            )
            .mode(Mode::from_bits_truncate(0o600))
            .resolve(resolve_flags());
        let fd = nix::fcntl::openat2(&p, tmp.as_str(), how).map_err(io)?;
        let written = (|| {
            let mut f = std::fs::File::from(fd);
            f.write_all(bytes)?;
            set_owner_mode(&f, owner, mode)?;
            f.sync_all()?;
            nix::fcntl::renameat(&p, tmp.as_str(), &p, name).map_err(io)
        })();
        if written.is_err() {
            let _ =
                nix::unistd::unlinkat(&p, tmp.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
        }
        written?;
        nix::unistd::fsync(&p).map_err(io)
    }

    /// Creates file `rel` empty if nothing is there (an existing regular
    /// file is kept; anything else there is replaced).
    pub(crate) fn touch(&self, rel: &str, owner: Owner, mode: u32) -> std::io::Result<()> {
        match self.stat(rel)? {
            Some(s) if is_single_file(&s) => Ok(()),
            _ => self.write(rel, b"", owner, mode),
        }
    }

    /// Opens regular file `rel` for reading: never through a link, never a
    /// FIFO or device, never a file with other names (hard links).
    fn open_regular(&self, rel: &str) -> std::io::Result<std::fs::File> {
        let fd = self.open_at(
            rel,
            OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY,
            Mode::empty(),
        )?;
        let s = nix::sys::stat::fstat(&fd).map_err(io)?;
        if !is_single_file(&s) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{} is not a regular file with one name",
                    self.path.join(rel).display()
                ),
            ));
        }
        Ok(std::fs::File::from(fd))
    }

    /// Reads regular file `rel`, which must be at most `max` bytes;
    /// `None` if nothing is there.
    pub(crate) fn read(&self, rel: &str, max: u64) -> std::io::Result<Option<Vec<u8>>> {
        let f = match self.open_regular(rel) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        f.take(max + 1).read_to_end(&mut out)?;
        if out.len() as u64 > max {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{} is larger than {max} bytes",
                    self.path.join(rel).display()
                ),
            ));
        }
        Ok(Some(out))
    }

    /// At most the last `max` bytes of regular file `rel` from byte
    /// `from` on (empty if nothing is there).
    pub(crate) fn read_tail(&self, rel: &str, from: u64, max: u64) -> std::io::Result<Vec<u8>> {
        let mut f = match self.open_regular(rel) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let len = f.metadata()?.len();
        let start = from.max(len.saturating_sub(max));
        f.seek(SeekFrom::Start(start))?;
        let mut out = Vec::new();
        f.take(max).read_to_end(&mut out)?;
        Ok(out)
    }

    /// The size of regular file `rel` (0 if nothing is there).
    pub(crate) fn len(&self, rel: &str) -> u64 {
        self.stat(rel)
            .ok()
            .flatten()
            .filter(|s| is(s, SFlag::S_IFREG))
            .map_or(0, |s| u64::try_from(s.st_size).unwrap_or(0))
    }

    /// Removes the name `rel` (a file, link, FIFO, socket; never what a
    /// link points to). Nothing there is fine.
    pub(crate) fn remove(&self, rel: &str) -> std::io::Result<()> {
        let (parent, name) = split(rel)?;
        let p = match self.parent(parent) {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        match nix::unistd::unlinkat(&p, name, nix::unistd::UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(io(e)),
        }
    }

    /// Gives directory `rel` and everything under it to `owner`, never
    /// following a link and never leaving the file system. Answers how
    /// many entries changed.
    pub(crate) fn chown_all(&self, rel: &str, owner: Owner) -> std::io::Result<u64> {
        let d = self.open_at(rel, OFlag::O_DIRECTORY | OFlag::O_RDONLY, Mode::empty())?;
        let dev = nix::sys::stat::fstat(&self.dir).map_err(io)?.st_dev;
        chown_dir(d, owner, dev, 0)
    }
}

/// Directories deeper than this are not followed (a data directory is a
/// few levels deep).
const MAX_DEPTH: u32 = 64;

fn chown_dir(d: OwnedFd, owner: Owner, dev: u64, depth: u32) -> std::io::Result<u64> {
    if depth > MAX_DEPTH {
        return Err(std::io::Error::other("the directory tree is too deep"));
    }
    let (uid, gid) = (Uid::from_raw(owner.uid), Gid::from_raw(owner.gid));
    nix::unistd::fchown(&d, Some(uid), Some(gid)).map_err(io)?;
    let mut n = 1;
    let mut names: Vec<Vec<u8>> = Vec::new();
    {
        let mut dir = nix::dir::Dir::from_fd(d.try_clone()?).map_err(io)?;
        for e in dir.iter() {
            let e = e.map_err(io)?;
            let name = e.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(name.to_vec());
            }
        }
    }
    for name in names {
        let name = OsStr::from_bytes(&name);
        let s = nix::sys::stat::fstatat(&d, name, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(io)?;
        if is(&s, SFlag::S_IFDIR) && s.st_dev == dev {
            let how = OpenHow::new()
                .flags(OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
                .resolve(resolve_flags());
            let sub = nix::fcntl::openat2(&d, name, how).map_err(io)?;
            n += chown_dir(sub, owner, dev, depth + 1)?;
        } else {
            nix::unistd::fchownat(&d, name, Some(uid), Some(gid), AtFlags::AT_SYMLINK_NOFOLLOW)
                .map_err(io)?;
            n += 1;
        }
    }
    Ok(n)
}

fn is(s: &FileStat, kind: SFlag) -> bool {
    SFlag::from_bits_truncate(s.st_mode) & SFlag::S_IFMT == kind
}

/// Whether `s` (of [`Tree::stat`]) is a directory.
pub(crate) fn is_dir(s: &FileStat) -> bool {
    is(s, SFlag::S_IFDIR)
}

/// Whether `s` is a regular file with one name (no other hard link).
pub(crate) fn is_single_file(s: &FileStat) -> bool {
    is(s, SFlag::S_IFREG) && s.st_nlink == 1
}

fn set_owner_mode(fd: &impl AsFd, owner: Owner, mode: u32) -> std::io::Result<()> {
    nix::unistd::fchown(
        fd,
        Some(Uid::from_raw(owner.uid)),
        Some(Gid::from_raw(owner.gid)),
    )
    .map_err(io)?;
    nix::sys::stat::fchmod(fd, Mode::from_bits_truncate(mode)).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn me() -> Owner {
        Owner {
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
        }
    }

    #[test]
    fn paths_must_stay_inside() {
        for bad in ["", "/etc/passwd", "a/../b", "..", "a//b", "a/", "./a"] {
            assert!(split(bad).is_err(), "{bad}");
        }
        assert_eq!(split("a").unwrap(), (None, "a"));
        assert_eq!(split("a/b/c").unwrap(), (Some("a/b"), "c"));
    }

    #[test]
    fn links_are_replaced_or_refused_never_followed() {
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("d")).unwrap();
        let tree = Tree::open(t.path()).unwrap();
        // A link at the name: written over, the target untouched.
        std::os::unix::fs::symlink(&victim, t.path().join("d/f")).unwrap();
        tree.write("d/f", b"new", me(), 0o640).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(std::fs::read(t.path().join("d/f")).unwrap(), b"new");
        let m = std::fs::symlink_metadata(t.path().join("d/f")).unwrap();
        assert!(m.is_file() && m.permissions().mode() & 0o777 == 0o640);
        // A link on the way: refused.
        std::os::unix::fs::symlink(outside.path(), t.path().join("l")).unwrap();
        assert!(tree.write("l/victim", b"x", me(), 0o600).is_err());
        assert!(tree.read("l/victim", 100).is_err());
        assert!(tree.ensure_dir("l/sub", me(), 0o700).is_err());
        assert!(tree.chown_all("l", me()).is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        // A link as the file read: refused.
        std::os::unix::fs::symlink(&victim, t.path().join("r")).unwrap();
        assert!(tree.read("r", 100).is_err());
        assert!(tree.read_tail("r", 0, 100).is_err());
        // A hard link (another name for the file): refused.
        std::fs::hard_link(t.path().join("d/f"), t.path().join("h")).unwrap();
        assert!(tree.read("h", 100).is_err());
        // A link at a directory's name: not a directory.
        assert!(tree.ensure_dir("r", me(), 0o700).is_err());
        // Removing a link removes the link.
        tree.remove("r").unwrap();
        assert!(!t.path().join("r").exists() && victim.exists());
        tree.remove("missing").unwrap();
    }

    #[test]
    fn a_fifo_is_not_read() {
        let t = tempfile::tempdir().unwrap();
        nix::unistd::mkfifo(&t.path().join("p"), Mode::from_bits_truncate(0o600)).unwrap();
        let tree = Tree::open(t.path()).unwrap();
        // Returns at once (O_NONBLOCK) with an error instead of waiting for
        // a writer.
        assert!(tree.read("p", 10).is_err());
        assert!(tree.read_tail("p", 0, 10).is_err());
        // Replaced by a write.
        tree.touch("p", me(), 0o600).unwrap();
        assert!(
            std::fs::symlink_metadata(t.path().join("p"))
                .unwrap()
                .is_file()
        );
    }

    #[test]
    fn reads_are_bounded_and_files_and_dirs_made() {
        let t = tempfile::tempdir().unwrap();
        let tree = Tree::open(t.path()).unwrap();
        tree.ensure_dir("a", me(), 0o750).unwrap();
        tree.ensure_dir("a", me(), 0o700).unwrap();
        let m = std::fs::metadata(t.path().join("a")).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o700);
        tree.write("a/f", b"0123456789", me(), 0o600).unwrap();
        assert_eq!(tree.read("a/f", 10).unwrap().unwrap(), b"0123456789");
        assert!(tree.read("a/f", 9).is_err());
        assert_eq!(tree.read("a/none", 9).unwrap(), None);
        assert_eq!(tree.read_tail("a/f", 0, 4).unwrap(), b"6789");
        assert_eq!(tree.read_tail("a/f", 8, 4).unwrap(), b"89");
        assert_eq!(tree.len("a/f"), 10);
        tree.touch("a/f", me(), 0o600).unwrap();
        assert_eq!(tree.read("a/f", 10).unwrap().unwrap(), b"0123456789");
        tree.touch("a/g", me(), 0o600).unwrap();
        assert_eq!(tree.read("a/g", 10).unwrap().unwrap(), b"");
        let sub = tree.subtree("a").unwrap();
        assert_eq!(sub.read("f", 10).unwrap().unwrap(), b"0123456789");
        assert_eq!(tree.chown_all("a", me()).unwrap(), 3);
        // No temporary file is left.
        let names: Vec<_> = std::fs::read_dir(t.path().join("a"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }
}
