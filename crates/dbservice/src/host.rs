//! The host side of an instance: the file system on its disk's block
//! device, the mount, the OS user PostgreSQL runs as, and processes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{DbError, Result};

/// The OS user PostgreSQL runs as (it refuses to run as root).
#[derive(Debug, Clone)]
pub(crate) struct OsUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl OsUser {
    pub(crate) fn lookup(name: &str) -> Result<Self> {
        match nix::unistd::User::from_name(name) {
            Ok(Some(u)) => Ok(Self {
                name: name.to_owned(),
                uid: u.uid.as_raw(),
                gid: u.gid.as_raw(),
            }),
            Ok(None) => Err(DbError::Unavailable(format!(
                "the OS user '{name}' that PostgreSQL runs as does not exist (install PostgreSQL, or give --db-os-user)"
            ))),
            Err(e) => Err(DbError::Failed(format!(
                "looking up the OS user '{name}': {e}"
            ))),
        }
    }

    /// Gives `path` to this user.
    pub(crate) fn chown(&self, path: &Path) -> Result<()> {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
            .map_err(|e| DbError::Failed(format!("chown {}: {e}", path.display())))
    }
}

/// Runs `cmd` to completion; fails with its stderr.
pub(crate) fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .output()
        .map_err(|e| DbError::Failed(format!("{what}: cannot run {:?}: {e}", cmd.get_program())))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(DbError::Failed(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Makes an ext4 file system on `device`.
pub(crate) fn mkfs(device: &Path) -> Result<()> {
    run(
        Command::new("mkfs.ext4")
            .args([
                "-q",
                "-F",
                "-L",
                "atrest-db",
                "-E",
                "lazy_itable_init=0,lazy_journal_init=0",
            ])
            .arg(device),
        "mkfs.ext4",
    )
    .map(drop)
}

/// Whether something is mounted at `dir` (by /proc/self/mounts).
pub(crate) fn is_mounted(dir: &Path) -> bool {
    mounts_under(dir).iter().any(|m| m == dir)
}

/// Mount points at or under `dir`.
pub(crate) fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mounts") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| l.split(' ').nth(1))
        .map(unescape_mount)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// /proc/mounts escapes space, tab, newline and backslash as octal.
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = u16::from(b[i + 1] - b'0') * 64
                + u16::from(b[i + 2] - b'0') * 8
                + u16::from(b[i + 3] - b'0');
            out.push(u8::try_from(v).unwrap_or(b'?'));
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mounts `device` (ext4) at `dir`.
pub(crate) fn mount(device: &Path, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| DbError::Failed(format!("creating {}: {e}", dir.display())))?;
    run(
        Command::new("mount")
            .args(["-t", "ext4", "-o", "noatime,nodev,nosuid"])
            .arg(device)
            .arg(dir),
        "mount",
    )
    .map(drop)
}

/// Unmounts `dir`: a few tries, then lazily (the file system goes when
/// its last user does).
pub(crate) fn unmount(dir: &Path) -> Result<()> {
    if !is_mounted(dir) {
        return Ok(());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = run(Command::new("umount").arg(dir), "umount");
        if r.is_ok() || !is_mounted(dir) {
            return Ok(());
        }
        if Instant::now() > deadline {
            tracing::warn!(dir = %dir.display(), "unmount keeps failing; unmounting lazily");
            return run(Command::new("umount").arg("-l").arg(dir), "umount -l").map(drop);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Whether a TCP port on the loopback address is free to listen on.
pub(crate) fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A free loopback port (the kernel's choice).
pub(crate) fn free_port() -> Result<u16> {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| DbError::Failed(format!("finding a free port: {e}")))
}

/// Whether `pid` is a live process whose command is `postgres`.
pub(crate) fn is_postgres(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "postgres")
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        })
}

/// Kills `pid` (SIGKILL) if it is a postgres process, and waits for it to
/// go.
pub(crate) fn kill_postgres(pid: u32) {
    if !is_postgres(pid) {
        return;
    }
    let Ok(raw) = i32::try_from(pid) else { return };
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(raw),
        nix::sys::signal::Signal::SIGKILL,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while is_postgres(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(unescape_mount("/a\\040b"), "/a b");
        assert_eq!(unescape_mount("/plain"), "/plain");
        assert_eq!(unescape_mount("/x\\"), "/x\\");
    }
}
