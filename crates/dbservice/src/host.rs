//! The host side of an instance: the file system on its disk's block
//! device, its check and mount, and processes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{DbError, Result};

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

/// Makes an ext4 file system on `device` with UUID `uuid`, its root
/// directory root's and the instance's group's.
pub(crate) fn mkfs(device: &Path, uuid: &str, gid: u32) -> Result<()> {
    run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "atrest-db", "-U", uuid, "-E"])
            .arg(format!(
                "lazy_itable_init=0,lazy_journal_init=0,root_owner=0:{gid}"
            ))
            .arg(device),
        "mkfs.ext4",
    )
    .map(drop)
}

/// Checks the file system on `device` before root mounts it: `e2fsck -p`
/// (replays the journal and repairs only what is safe to repair without a
/// person; anything more is refused), then the superblock must be ext4's
/// with the UUID atrest gave it (`expected`; `None` for an instance of an
/// earlier release, whose UUID is then recorded). Answers the UUID.
pub(crate) fn check_fs(device: &Path, expected: Option<&str>, instance: &str) -> Result<String> {
    let out = Command::new("e2fsck")
        .args(["-p"])
        .arg(device)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .map_err(|e| DbError::Failed(format!("cannot run e2fsck: {e}")))?;
    // 0: clean; 1: repaired; 2: repaired, reboot advised (the root file
    // system's concern only). 4 and up: errors left, or e2fsck failed.
    match out.status.code() {
        Some(0..=2) => {}
        code => {
            return Err(DbError::Damaged(format!(
                "the file system of instance {instance} failed its check (e2fsck exit {}): {}; it was not mounted",
                code.map_or_else(|| "by a signal".to_owned(), |c| c.to_string()),
                String::from_utf8_lossy(&out.stdout).trim()
            )));
        }
    }
    let head = run(
        Command::new("dumpe2fs")
            .args(["-h"])
            .arg(device)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "dumpe2fs",
    )?;
    let field = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
    };
    if field("Filesystem magic number:").as_deref() != Some("0xEF53") {
        return Err(DbError::Damaged(format!(
            "the disk of instance {instance} does not hold an ext4 file system; it was not mounted"
        )));
    }
    let uuid = field("Filesystem UUID:").unwrap_or_default();
    if let Some(want) = expected
        && !uuid.eq_ignore_ascii_case(want)
    {
        return Err(DbError::Damaged(format!(
            "the file system on the disk of instance {instance} is not the one atrest made (UUID {uuid}, not {want}); it was not mounted"
        )));
    }
    Ok(uuid)
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

/// Mounts `device` (ext4, checked by [`check_fs`]) at `dir`: no devices,
/// no set-uid programs, nothing executable.
pub(crate) fn mount(device: &Path, dir: &Path) -> Result<()> {
    run(
        Command::new("mount")
            .args(["-t", "ext4", "-o", "noatime,nodev,nosuid,noexec"])
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

/// Whether `pid` is a live process whose command is `postgres` and whose
/// real uid is `uid` (the instance's user: a pid read from a file the
/// instance can write must never make root signal another's process).
pub(crate) fn is_postgres(pid: u32, uid: u32) -> bool {
    let live = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .is_ok_and(|c| c.trim() == "postgres")
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        });
    live && process_uid(pid) == Some(uid)
}

/// The real uid of `pid`.
pub(crate) fn process_uid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Kills `pid` (SIGKILL) if it is the postgres process of `uid`, and
/// waits for it to go.
pub(crate) fn kill_postgres(pid: u32, uid: u32) {
    if !is_postgres(pid, uid) {
        return;
    }
    let Ok(raw) = i32::try_from(pid) else { return };
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(raw),
        nix::sys::signal::Signal::SIGKILL,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while is_postgres(pid, uid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_systems_are_checked_before_they_are_mounted() {
        // e2fsprogs works on a plain file: no loop device, no root needed.
        if Command::new("mkfs.ext4").arg("-V").output().is_err() {
            eprintln!("skipped: mkfs.ext4 (e2fsprogs) is not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("fs.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
        let uuid = "2f1e6b8a-4c3d-4e5f-8a9b-0c1d2e3f4a5b";
        mkfs(&img, uuid, 4242).unwrap();
        assert_eq!(check_fs(&img, Some(uuid), "t").unwrap(), uuid);
        // An earlier release's instance: its UUID is learnt.
        assert_eq!(check_fs(&img, None, "t").unwrap(), uuid);
        // A file system atrest did not make (another UUID): refused.
        let other = "00000000-1111-4222-8333-444444444444";
        match check_fs(&img, Some(other), "t") {
            Err(DbError::Damaged(m)) => assert!(m.contains("not the one atrest made"), "{m}"),
            r => panic!("{r:?}"),
        }
        // A damaged superblock (its magic number overwritten): refused.
        {
            use std::io::{Seek, SeekFrom, Write};
            let mut f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
            f.seek(SeekFrom::Start(1024 + 56)).unwrap();
            f.write_all(&[0, 0]).unwrap();
        }
        assert!(matches!(
            check_fs(&img, Some(uuid), "t"),
            Err(DbError::Damaged(_))
        ));
        // Not a file system at all.
        std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
        assert!(matches!(
            check_fs(&img, None, "t"),
            Err(DbError::Damaged(_))
        ));
    }

    #[test]
    fn processes_are_checked_by_uid() {
        let me = std::process::id();
        let uid = nix::unistd::getuid().as_raw();
        assert_eq!(process_uid(me), Some(uid));
        // This test process is not named postgres.
        assert!(!is_postgres(me, uid));
        assert_eq!(process_uid(u32::MAX), None);
    }

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(unescape_mount("/a\\040b"), "/a b");
        assert_eq!(unescape_mount("/plain"), "/plain");
        assert_eq!(unescape_mount("/x\\"), "/x\\");
    }
}
