//! What attach refuses, without touching the host.

use atrest_localattach::{Error, LocalAttachment};

use crate::support::{MemDisk, RunDir, mounts_under, require_host};

#[test]
fn attach_refuses_bad_names_geometry_and_a_taken_name() {
    require_host!();
    let run_dir = RunDir::new();
    for name in ["", "..", "a/b", "a,b"] {
        let err =
            LocalAttachment::attach(MemDisk::new(1 << 20, 512), run_dir.path(), name).unwrap_err();
        assert!(matches!(err, Error::InvalidName(_)), "{name}: {err}");
    }
    for (size, bs) in [(1 << 20, 1024), ((1 << 20) + 512, 4096)] {
        let err =
            LocalAttachment::attach(MemDisk::new(size, bs), run_dir.path(), "geo").unwrap_err();
        assert!(matches!(err, Error::InvalidDevice(_)), "{size}/{bs}: {err}");
    }

    let att = LocalAttachment::attach(MemDisk::new(1 << 20, 512), run_dir.path(), "taken").unwrap();
    let err =
        LocalAttachment::attach(MemDisk::new(1 << 20, 512), run_dir.path(), "taken").unwrap_err();
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
    assert!(err.to_string().contains("taken"), "{err}");
    // The refused attach left the first one alone.
    assert_eq!(mounts_under(run_dir.path()).len(), 1);
    assert!(format!("{att:?}").contains("taken"));
    att.detach().unwrap();
}
