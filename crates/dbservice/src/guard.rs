//! `atrest_guard`, the PostgreSQL server extension that keeps an instance's
//! master user inside its database (guard/atrest_guard.c), compiled by
//! build.rs and embedded here, and installed for the server to load with
//! `shared_preload_libraries`.
//!
//! # Why
//!
//! The master user is meant to be what it is on AWS RDS: powerful in the
//! database (LOGIN, CREATEDB, CREATEROLE) and powerless outside it, so not
//! a superuser. Up to PostgreSQL 15, CREATEROLE lets a role grant any
//! non-superuser role, itself included, membership in the predefined
//! `pg_execute_server_program`, `pg_read_server_files` and
//! `pg_write_server_files`: then `COPY ... PROGRAM` runs commands on the
//! host as the OS user PostgreSQL runs as, and `COPY ... FROM` a file reads
//! any file it can. CREATEROLE also lets it drop, rename or alter atrest's
//! own non-superuser roles (`atrest_replication`). The guard refuses all of
//! that to non-superusers. PostgreSQL 16 changed CREATEROLE (a role may
//! grant only what it holds with ADMIN OPTION, and administer only roles it
//! created), so from 16 on the guard is not needed.

use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::pg::PgBin;

/// The compiled guard.
pub(crate) struct Embedded {
    /// The PostgreSQL major version it was built for (and loads into only).
    pub major: u32,
    /// The shared object.
    pub object: &'static [u8],
}

/// The guard, or `None` when the crate was built without PostgreSQL's
/// server headers (build.rs warned then).
pub(crate) const EMBEDDED: Option<Embedded> = include!(concat!(env!("OUT_DIR"), "/guard.rs"));

/// The file name [`install`] writes.
pub(crate) const FILE_NAME: &str = "atrest_guard.so";

/// Whether a master user with CREATEROLE needs the guard on PostgreSQL
/// `pg_major`: up to 15, CREATEROLE reaches the server's files and
/// programs and atrest's own roles (see the module's documentation).
pub(crate) fn needed(pg_major: u32) -> bool {
    pg_major <= 15
}

/// Writes the embedded guard as `dir/atrest_guard.so` (mode 0644, owned by
/// root when run as root; `dir` is created 0755 if missing) and returns
/// its path, or `None` if the crate has no guard.
///
/// The object goes to a new temporary file (`O_EXCL`: never through a file
/// or link already there) and is renamed over the old one, so a server
/// starting meanwhile loads the old or the new object, never half of one.
/// `dir` must be atrest's own: root's, not writable by others.
pub(crate) fn install(dir: &Path) -> io::Result<Option<PathBuf>> {
    match &EMBEDDED {
        Some(e) => write_object(dir, e.object).map(Some),
        None => Ok(None),
    }
}

/// The guard for this host's PostgreSQL, decided once per server.
#[derive(Debug, Clone)]
pub(crate) struct Status {
    /// The library every instance preloads (`None`: none is needed, or
    /// none fits this PostgreSQL).
    pub path: Option<PathBuf>,
    /// Whether masters get CREATEROLE: from PostgreSQL 16 on, or with the
    /// guard loaded.
    pub createrole: bool,
}

impl Status {
    /// Installs the guard into `dir` if this PostgreSQL needs it and the
    /// embedded one was built for its major version. Without a fitting
    /// guard, masters get no CREATEROLE (logged once, with the remedy).
    pub(crate) fn prepare(bin: &PgBin, dir: &Path) -> Self {
        let none = Self {
            path: None,
            createrole: false,
        };
        let major = match bin.major() {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, "cannot tell PostgreSQL's version: master users get no CREATEROLE");
                return none;
            }
        };
        if !needed(major) {
            return Self {
                path: None,
                createrole: true,
            };
        }
        match &EMBEDDED {
            Some(e) if e.major == major => match install(dir) {
                Ok(Some(path)) => Self {
                    path: Some(path),
                    createrole: true,
                },
                Ok(None) => none,
                Err(err) => {
                    tracing::error!(error = %err, dir = %dir.display(), "cannot install atrest_guard: master users get no CREATEROLE");
                    none
                }
            },
            Some(e) => {
                tracing::warn!(
                    built_for = e.major,
                    postgresql = major,
                    "atrest_guard was built for another PostgreSQL: master users get no CREATEROLE (rebuild atrest with this PostgreSQL's server headers)"
                );
                none
            }
            None => {
                tracing::warn!(
                    postgresql = major,
                    "atrest was built without atrest_guard: master users get no CREATEROLE on PostgreSQL 15 and older (install postgresql-server-dev-{major} and rebuild)"
                );
                none
            }
        }
    }
}

fn write_object(dir: &Path, object: &[u8]) -> io::Result<PathBuf> {
    if !dir.is_dir() {
        DirBuilder::new().recursive(true).mode(0o755).create(dir)?;
        // The mode above is subject to the umask; PostgreSQL's OS user must
        // be able to reach the file.
        std::fs::set_permissions(dir, Permissions::from_mode(0o755))?;
    }
    let path = dir.join(FILE_NAME);
    let tmp = dir.join(format!(".{FILE_NAME}.{}.tmp", std::process::id()));
    // A leftover of this pid's earlier crash; a link is removed, not followed.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)?;
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::fchown(&f, Some(0), Some(0))?;
        }
        // Readable by PostgreSQL's OS user whatever the umask.
        f.set_permissions(Permissions::from_mode(0o644))?;
        f.write_all(object)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map(|()| path)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn needed_up_to_15() {
        assert!(needed(14));
        assert!(needed(15));
        assert!(!needed(16));
        assert!(!needed(17));
    }

    #[test]
    fn install_writes_and_replaces() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("lib").join("guard");
        let first = write_object(&dir, b"first").unwrap();
        assert_eq!(first, dir.join(FILE_NAME));
        let second = write_object(&dir, b"second object").unwrap();
        assert_eq!(first, second);
        assert_eq!(std::fs::read(&second).unwrap(), b"second object");
        let meta = std::fs::metadata(&second).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o644);
        assert_eq!(
            std::fs::metadata(&dir).unwrap().mode() & 0o7777,
            0o755,
            "the directory PostgreSQL reads the object from"
        );
        if nix::unistd::geteuid().is_root() {
            assert_eq!((meta.uid(), meta.gid()), (0, 0));
        }
        // Only the object: no temporary file left behind.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [FILE_NAME]);

        match (install(&dir).unwrap(), &EMBEDDED) {
            (Some(p), Some(e)) => assert_eq!(std::fs::read(p).unwrap(), e.object),
            (None, None) => {}
            (p, e) => panic!("install gave {p:?}, embedded: {}", e.is_some()),
        }
    }
}
