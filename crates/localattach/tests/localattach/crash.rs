//! After the process holding an attachment is killed, `cleanup_stale`
//! leaves no loop device, mount or directory under the run directory.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use atrest_localattach::{LocalAttachment, cleanup_stale};

use crate::support::{
    MemDisk, RunDir, bound_to, eventually, loop_backing, loops_under, mounts_under, require_host,
    run,
};

const CHILD_ENV: &str = "ATREST_LOCALATTACH_CRASH_RUN_DIR";
const CHILD_TEST: &str = "crash::child_holds_an_attachment_until_killed";

/// Kills the child on drop.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Detaches a loop device set up with `losetup` on drop, if it is still
/// bound to the file.
struct LosetupGuard(PathBuf, PathBuf);

impl Drop for LosetupGuard {
    fn drop(&mut self) {
        if bound_to(&self.0, &self.1) {
            let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
        }
    }
}

/// The process that crashes: attaches, reports, and waits to be killed.
#[test]
#[ignore = "helper process of cleanup_stale_after_a_crash"]
fn child_holds_an_attachment_until_killed() {
    let Some(run_dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let disk = MemDisk::new(16 << 20, 4096);
    let att = LocalAttachment::attach(disk as Arc<_>, Path::new(&run_dir), "crashed").unwrap();
    println!("READY {}", att.loop_device().display());
    // Bounded, in case the parent dies first.
    std::thread::sleep(Duration::from_secs(120));
}

#[test]
fn cleanup_stale_after_a_crash() {
    require_host!();
    let run_dir = RunDir::new();
    let mut child = ChildGuard(
        Command::new(std::env::current_exe().unwrap())
            .args([
                CHILD_TEST,
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, run_dir.path())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let child_loop = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        // The harness prints "test <name> ... " on the same line first.
        .find_map(|l| {
            l.split_once("READY ")
                .map(|(_, dev)| PathBuf::from(dev.trim()))
        })
        .expect("the child did not attach");
    let file = run_dir.path().join("crashed/device");
    assert_eq!(loop_backing(&child_loop).as_deref(), Some(file.as_path()));

    // A second loop device on the same file, without autoclear, as an
    // older build or an operator might have left.
    let extra =
        PathBuf::from(run("losetup", &["--find", "--show", &file.to_string_lossy()]).trim());
    let _extra_guard = LosetupGuard(extra.clone(), file.clone());

    child.0.kill().unwrap();
    child.0.wait().unwrap();

    // The crash left the FUSE mount (dead) and the extra loop device; the
    // child's own loop device (autoclear, unused) unbound itself.
    assert_eq!(
        mounts_under(run_dir.path()).len(),
        1,
        "{:?}",
        mounts_under(run_dir.path())
    );
    assert!(
        eventually(5, || !bound_to(&child_loop, &file)),
        "the autoclear loop device outlived its process"
    );
    assert_eq!(loops_under(run_dir.path()), std::slice::from_ref(&extra));

    let cleaned = cleanup_stale(run_dir.path()).unwrap();
    assert_eq!(cleaned, ["crashed"]);
    assert_eq!(mounts_under(run_dir.path()), Vec::<PathBuf>::new());
    assert!(
        !bound_to(&extra, &file),
        "the stale loop device is still bound"
    );
    assert!(!run_dir.path().join("crashed").exists());
    // Nothing left: a second run finds nothing.
    assert_eq!(cleanup_stale(run_dir.path()).unwrap(), Vec::<String>::new());
}
