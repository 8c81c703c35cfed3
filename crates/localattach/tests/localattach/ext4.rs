//! A real file system on the loop device survives detach and re-attach on
//! the same backend.

use std::fs;
use std::io::Write;

use atrest_localattach::LocalAttachment;

use crate::support::{MemDisk, Mounted, RunDir, bound_to, pattern, require_host, run};

#[test]
fn ext4_survives_detach_and_reattach() {
    require_host!();
    let run_dir = RunDir::new();
    let disk = MemDisk::new(64 << 20, 4096);
    let big = pattern(3 << 20, 7);

    let att = LocalAttachment::attach(disk.clone(), run_dir.path(), "fs").unwrap();
    let dev = att.loop_device().to_string_lossy().into_owned();
    let trims = disk.trims();
    run("mkfs.ext4", &["-q", "-F", &dev]);
    assert!(
        disk.trims() > trims,
        "mkfs.ext4 discarded nothing: no discard support through the loop device"
    );
    let mnt = Mounted::mount(att.loop_device());
    fs::write(mnt.path().join("hello.txt"), b"hello from atrest\n").unwrap();
    fs::create_dir(mnt.path().join("sub")).unwrap();
    let mut f = fs::File::create(mnt.path().join("sub/big.bin")).unwrap();
    f.write_all(&big).unwrap();
    f.sync_all().unwrap();
    drop(f);
    run("sync", &[]);
    mnt.unmount();
    let flushes = disk.flushes();
    assert!(flushes > 0, "no flush reached the block device");
    let loop_dev = att.loop_device().to_path_buf();
    let file = att.device_file();
    att.detach().unwrap();
    assert!(!bound_to(&loop_dev, &file));
    assert!(disk.flushes() > flushes, "detach did not flush");

    // Again, on the same backend.
    let att = LocalAttachment::attach(disk.clone(), run_dir.path(), "fs").unwrap();
    let dev = att.loop_device().to_string_lossy().into_owned();
    run("fsck.ext4", &["-f", "-n", &dev]);
    let mnt = Mounted::mount(att.loop_device());
    assert_eq!(
        fs::read(mnt.path().join("hello.txt")).unwrap(),
        b"hello from atrest\n"
    );
    assert_eq!(fs::read(mnt.path().join("sub/big.bin")).unwrap(), big);
    mnt.unmount();
    let flushes = disk.flushes();
    att.detach().unwrap();
    assert!(disk.flushes() > flushes, "detach did not flush");
    assert!(!run_dir.path().join("fs").exists());
}
