//! Dropping an attachment without detaching it: detached if unused; if in
//! use, the mounted file system keeps working and nothing stays pinned once
//! it is unmounted.

use std::fs;

use atrest_localattach::{LocalAttachment, cleanup_stale};

use crate::support::{
    MemDisk, Mounted, RunDir, bound_to, eventually, mounts_under, require_host, run,
};

#[test]
fn dropping_an_unused_attachment_detaches_it() {
    require_host!();
    let run_dir = RunDir::new();
    let disk = MemDisk::new(4 << 20, 512);
    let att = LocalAttachment::attach(disk.clone(), run_dir.path(), "dropped").unwrap();
    let loop_dev = att.loop_device().to_path_buf();
    let file = att.device_file();
    let flushes = disk.flushes();
    drop(att);
    assert!(!bound_to(&loop_dev, &file));
    assert!(disk.flushes() > flushes, "drop did not flush");
    assert_eq!(
        mounts_under(run_dir.path()),
        Vec::<std::path::PathBuf>::new()
    );
    assert!(!run_dir.path().join("dropped").exists());
}

#[test]
fn dropping_a_mounted_attachment_keeps_the_file_system_working() {
    require_host!();
    let run_dir = RunDir::new();
    let disk = MemDisk::new(32 << 20, 4096);
    let att = LocalAttachment::attach(disk, run_dir.path(), "inuse").unwrap();
    let loop_dev = att.loop_device().to_path_buf();
    let file = att.device_file();
    run("mkfs.ext4", &["-q", "-F", &loop_dev.to_string_lossy()]);
    let mnt = Mounted::mount(&loop_dev);
    drop(att);

    fs::write(mnt.path().join("still-works"), b"yes").unwrap();
    run("sync", &[]);
    assert_eq!(fs::read(mnt.path().join("still-works")).unwrap(), b"yes");
    mnt.unmount();
    // Autoclear: unbound once its last user let go.
    assert!(eventually(5, || !bound_to(&loop_dev, &file)));
    // The FUSE server lives on until the process exits; cleanup_stale
    // clears its mount.
    assert_eq!(mounts_under(run_dir.path()).len(), 1);
    assert_eq!(cleanup_stale(run_dir.path()).unwrap(), ["inuse"]);
    assert_eq!(
        mounts_under(run_dir.path()),
        Vec::<std::path::PathBuf>::new()
    );
}
