//! Detach refuses, and changes nothing, while the loop device is in use.

use std::fs;

use atrest_localattach::{Error, LocalAttachment};

use crate::support::{MemDisk, Mounted, RunDir, bound_to, loop_backing, require_host, run};

fn expect_busy(result: Result<(), Error>) -> (String, LocalAttachment) {
    match result {
        Err(Error::Busy(busy)) => {
            let message = busy.to_string();
            assert!(message.contains("busy"), "{message}");
            (busy.reason().to_owned(), busy.into_attachment())
        }
        other => panic!("expected Busy, got {other:?}"),
    }
}

#[test]
fn detach_while_mounted_or_open_is_busy_and_changes_nothing() {
    require_host!();
    let run_dir = RunDir::new();
    let disk = MemDisk::new(32 << 20, 4096);
    let att = LocalAttachment::attach(disk, run_dir.path(), "busy").unwrap();
    let loop_dev = att.loop_device().to_path_buf();
    run("mkfs.ext4", &["-q", "-F", &loop_dev.to_string_lossy()]);
    let mnt = Mounted::mount(&loop_dev);
    fs::write(mnt.path().join("before"), b"1").unwrap();

    let (reason, att) = expect_busy(att.detach());
    assert!(reason.contains("mounted"), "{reason}");
    // Still attached and working.
    assert_eq!(
        loop_backing(&loop_dev).as_deref(),
        Some(att.device_file().as_path())
    );
    fs::write(mnt.path().join("after"), b"2").unwrap();
    run("sync", &[]);
    assert_eq!(fs::read(mnt.path().join("before")).unwrap(), b"1");
    mnt.unmount();

    // A plain opener (no exclusive claim) is found too.
    let holder = fs::File::open(&loop_dev).unwrap();
    let (reason, att) = expect_busy(att.detach());
    assert!(reason.contains(&std::process::id().to_string()), "{reason}");
    let file = att.device_file();
    assert!(bound_to(&loop_dev, &file));
    drop(holder);

    att.detach().unwrap();
    assert!(!bound_to(&loop_dev, &file));
    assert!(!run_dir.path().join("busy").exists());
}
