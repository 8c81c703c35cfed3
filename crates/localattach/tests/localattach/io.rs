//! Bytes through the loop device and through the FUSE file: they reach the
//! block device at once (no cache), fdatasync flushes it, discards trim.

use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};

use atrest_localattach::LocalAttachment;

use crate::support::{
    Aligned, MemDisk, RunDir, bound_to, loop_backing, pattern, queue_attr, require_host, run,
};

const MIB: usize = 1 << 20;

#[test]
fn direct_io_through_the_loop_device_reaches_the_backend_and_flushes() {
    require_host!();
    let run_dir = RunDir::new();
    let disk = MemDisk::new(8 * MIB, 512);
    let att = LocalAttachment::attach(disk.clone(), run_dir.path(), "io").unwrap();
    let loop_dev = att.loop_device().to_path_buf();
    assert_eq!(att.name(), "io");
    assert_eq!(
        loop_backing(&loop_dev).as_deref(),
        Some(att.device_file().as_path())
    );
    assert_eq!(queue_attr(&loop_dev, "logical_block_size"), "512");
    let sectors: u64 = std::fs::read_to_string(format!(
        "/sys/block/{}/size",
        crate::support::loop_name(&loop_dev)
    ))
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    assert_eq!(sectors * 512, 8 * MIB as u64);

    let dev = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&loop_dev)
        .unwrap();
    let offset = MIB + 512;
    let data = pattern(64 * 1024, 1);
    let mut buf = Aligned::new(data.len());
    buf.as_mut_slice().copy_from_slice(&data);
    dev.write_all_at(buf.as_slice(), offset as u64).unwrap();
    // O_DIRECT completed: the bytes are in the backend, before any flush.
    assert_eq!(disk.bytes(offset, data.len()), data);
    let before = disk.flushes();
    dev.sync_data().unwrap();
    assert!(
        disk.flushes() > before,
        "fdatasync on the loop device did not flush the block device"
    );

    let mut back = Aligned::new(data.len());
    dev.read_exact_at(back.as_mut_slice(), offset as u64)
        .unwrap();
    assert_eq!(back.as_slice(), &data[..]);

    // Nothing is cached between the loop device and the backend: a change
    // behind the kernel's back shows through O_DIRECT at once.
    disk.poke(0, &[0xAB; 4096]);
    let mut first = Aligned::new(4096);
    dev.read_exact_at(first.as_mut_slice(), 0).unwrap();
    assert!(first.as_slice().iter().all(|b| *b == 0xAB));
    drop(dev);

    // A discard through the loop device becomes a trim.
    disk.poke(2 * MIB, &pattern(MIB, 2));
    let trims = disk.trims();
    run(
        "blkdiscard",
        &[
            "-o",
            &(2 * MIB).to_string(),
            "-l",
            &MIB.to_string(),
            &loop_dev.to_string_lossy(),
        ],
    );
    assert!(disk.trims() > trims, "blkdiscard did not trim");
    assert!(disk.bytes(2 * MIB, MIB).iter().all(|b| *b == 0));

    let file = att.device_file();
    att.detach().unwrap();
    assert!(
        !bound_to(&loop_dev, &file),
        "loop device still bound after detach"
    );
    assert!(!run_dir.path().join("io").exists());
}

#[test]
fn the_fuse_file_takes_unaligned_io_and_keeps_its_size() {
    require_host!();
    let run_dir = RunDir::new();
    let size = 4 * MIB;
    let disk = MemDisk::new(size, 4096);
    let att = LocalAttachment::attach(disk.clone(), run_dir.path(), "file").unwrap();
    assert_eq!(queue_attr(att.loop_device(), "logical_block_size"), "4096");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(att.device_file())
        .unwrap();
    assert_eq!(f.metadata().unwrap().len(), size as u64);

    // Unaligned write and read; in the backend before any fsync.
    f.write_all_at(b"hello, world", 12345).unwrap();
    assert_eq!(disk.bytes(12345, 12), b"hello, world");
    let mut got = [0; 7];
    f.read_exact_at(&mut got, 12343).unwrap();
    assert_eq!(&got, b"\0\0hello");

    // Reads at the end are short; writes cannot grow the file.
    let mut tail = [0; 10];
    assert_eq!(f.read_at(&mut tail, size as u64 - 4).unwrap(), 4);
    assert_eq!(f.read_at(&mut tail, size as u64).unwrap(), 0);
    assert_eq!(f.write_at(&[7; 10], size as u64 - 4).unwrap(), 4);
    assert_eq!(disk.bytes(size - 4, 4), [7; 4]);
    let err = f.write_at(b"x", size as u64).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
    assert!(f.set_len(1).is_err());
    assert_eq!(f.metadata().unwrap().len(), size as u64);

    // fsync flushes; O_DSYNC writes are FUA.
    let before = disk.flushes();
    f.sync_all().unwrap();
    assert!(disk.flushes() > before);
    let sync = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DSYNC)
        .open(att.device_file())
        .unwrap();
    let fua = disk.fua_writes();
    sync.write_all_at(b"durable", 100).unwrap();
    assert!(disk.fua_writes() > fua);
    drop(sync);

    // Punching a hole trims whole blocks and zeroes the partial ones.
    disk.poke(0, &pattern(5 * 4096, 3));
    let trims = disk.trims();
    let path = att.device_file();
    run(
        "fallocate",
        &["-p", "-o", "100", "-l", "16000", &path.to_string_lossy()],
    );
    assert!(disk.trims() > trims);
    let after = disk.bytes(0, 5 * 4096);
    let original = pattern(5 * 4096, 3);
    assert_eq!(after[..100], original[..100]);
    assert!(after[100..16100].iter().all(|b| *b == 0));
    assert_eq!(after[16100..], original[16100..]);

    drop(f);
    att.detach().unwrap();
}

/// A block device error without an OS errno answers the errno of its kind:
/// a full pool (`StorageFull`) is `ENOSPC` to the writer of the FUSE file,
/// not `EIO`; and the file serves on once the device does.
#[test]
fn a_backend_error_answers_the_errno_of_its_kind() {
    require_host!();
    let run_dir = RunDir::new();
    let disk = MemDisk::new(4 * MIB, 4096);
    let att = LocalAttachment::attach(disk.clone(), run_dir.path(), "kinds").unwrap();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(att.device_file())
        .unwrap();
    for (kind, want) in [
        (std::io::ErrorKind::StorageFull, libc::ENOSPC),
        (std::io::ErrorKind::QuotaExceeded, libc::ENOSPC),
        (std::io::ErrorKind::ReadOnlyFilesystem, libc::EPERM),
        (std::io::ErrorKind::Other, libc::EIO),
    ] {
        disk.fail_writes(Some(kind));
        let err = f.write_at(&[1; 4096], 8192).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(want), "{kind:?}: {err}");
    }
    disk.fail_writes(None);
    f.write_all_at(&[2; 4096], 8192).unwrap();
    assert_eq!(disk.bytes(8192, 4096), [2; 4096]);
    drop(f);
    att.detach().unwrap();
}
