//! Moving an earlier release's backups into the object store.
//!
//! Releases before backups went to the object store kept them as files:
//! `<backup dir>/<instance id>/base/<backup id>.tar.enc` and `.json`, and
//! `<backup dir>/<instance id>/wal/<file>` (`--db-backup-dir`, default
//! `<data dir>/backups`). The artifacts are the same bytes as the objects
//! (same format, same keys), so moving them is copying them under `db/`.
//!
//! Order is what makes an interrupted move harmless: per instance the WAL
//! first, then the base backups, then the manifests (a backup exists only
//! through its manifest, and a base backup without one is removed by the
//! start's sweep, which runs after this). Every upload is checked (the
//! object's size read back must be the file's). Nothing of the user's is
//! deleted: an uploaded directory is renamed `<dir>.migrated-<time>`, and
//! a move within a directory that is itself the store is renames. Running
//! it again after an interruption uploads again (same names, same bytes).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use atrest_objstore::Objects;
use time::OffsetDateTime;

use crate::agent::valid_wal_name;
use crate::{DbError, Result};

/// Where an earlier release kept its backups, and how to move them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LegacyBackups {
    /// A directory apart from the store (`<data dir>/backups`): its
    /// artifacts are uploaded to the store, then it is renamed
    /// `<dir>.migrated-<time>`.
    Upload(PathBuf),
    /// The directory the store itself is (`--db-backup-dir DIR`, now the
    /// store `file://DIR`): `DIR/<instance id>/...` is renamed to
    /// `DIR/db/<instance id>/...`.
    InPlace(PathBuf),
}

/// What a migration moved.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Moved {
    /// Instances whose backups were moved.
    pub instances: usize,
    /// Backups (manifests) moved.
    pub backups: usize,
    /// WAL files moved.
    pub wal_files: usize,
    /// Bytes moved.
    pub bytes: u64,
}

/// One instance's files in the old layout, in the order they move.
#[derive(Debug, Default)]
struct Instance {
    id: String,
    wal: Vec<String>,
    bases: Vec<String>,
    manifests: Vec<String>,
}

fn io_err(what: &str, path: &Path, e: &std::io::Error) -> DbError {
    DbError::Failed(format!("{what} {}: {e}", path.display()))
}

/// Whether `name` is an instance id (`db-` and 16 hex digits).
fn is_instance_id(name: &str) -> bool {
    name.strip_prefix("db-")
        .is_some_and(|h| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Whether `name` is a backup id (`bk-` and 16 hex digits).
fn is_backup_id(name: &str) -> bool {
    name.strip_prefix("bk-")
        .is_some_and(|h| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The regular files of `dir` (none if it does not exist).
fn files_of(dir: &Path) -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("reading", dir, &e)),
    };
    let mut out = Vec::new();
    for e in entries {
        let e = e.map_err(|e| io_err("reading", dir, &e))?;
        let is_file = e.file_type().map(|t| t.is_file()).unwrap_or(false);
        if let (true, Some(n)) = (is_file, e.file_name().to_str()) {
            out.push(n.to_owned());
        }
    }
    out.sort();
    Ok(out)
}

/// The old-layout instances under `dir`: directories named as instance
/// ids holding `base/` or `wal/`. Temporary files (an interrupted write of
/// the earlier release) and base backups without a manifest (not
/// backups) are left where they are.
fn scan(dir: &Path) -> Result<Vec<Instance>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("reading", dir, &e)),
    };
    let mut out = Vec::new();
    for e in entries {
        let e = e.map_err(|e| io_err("reading", dir, &e))?;
        let Some(id) = e.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if !is_instance_id(&id) || !e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            continue;
        }
        let wal: Vec<String> = files_of(&e.path().join("wal"))?
            .into_iter()
            .filter(|n| valid_wal_name(n))
            .collect();
        let base = files_of(&e.path().join("base"))?;
        let manifests: Vec<String> = base
            .iter()
            .filter(|n| n.strip_suffix(".json").is_some_and(is_backup_id))
            .cloned()
            .collect();
        let bases: Vec<String> = base
            .iter()
            .filter(|n| {
                n.strip_suffix(".tar.enc")
                    .is_some_and(|b| is_backup_id(b) && base.contains(&format!("{b}.json")))
            })
            .cloned()
            .collect();
        if !wal.is_empty() || !manifests.is_empty() {
            out.push(Instance {
                id,
                wal,
                bases,
                manifests,
            });
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

impl Instance {
    /// `(sub directory, file)` in the order they move: WAL, base backups,
    /// manifests last.
    fn files(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.wal
            .iter()
            .map(|f| ("wal", f.as_str()))
            .chain(self.bases.iter().map(|f| ("base", f.as_str())))
            .chain(self.manifests.iter().map(|f| ("base", f.as_str())))
    }
}

/// Uploads `path` as object `name`, streaming, and checks the object's
/// size. Answers the bytes.
fn upload(store: &Objects, path: &Path, name: &str) -> Result<u64> {
    let store_err = |e| DbError::ObjectStore {
        location: store.location(),
        source: e,
    };
    let mut f = File::open(path).map_err(|e| io_err("opening", path, &e))?;
    let len = f.metadata().map_err(|e| io_err("reading", path, &e))?.len();
    let mut w = store.writer(name).map_err(store_err)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| io_err("reading", path, &e))?;
        if n == 0 {
            break;
        }
        w.write_bytes(&buf[..n]).map_err(store_err)?;
    }
    let written = w.finish().map_err(store_err)?;
    let stored = store.head(name).map_err(store_err)?.map(|m| m.size);
    if written != len || stored != Some(len) {
        return Err(DbError::Failed(format!(
            "moving {} to {name}: the file has {len} bytes, the object {stored:?}",
            path.display()
        )));
    }
    Ok(len)
}

/// fsyncs a directory (a rename's durability).
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("syncing", dir, &e))
}

/// Moves the backups an earlier release left in `legacy` into `store`,
/// under `db/`. Answers `None` when there was nothing to move.
pub(crate) fn migrate(legacy: &LegacyBackups, store: &Objects) -> Result<Option<Moved>> {
    let (LegacyBackups::Upload(dir) | LegacyBackups::InPlace(dir)) = legacy;
    let instances = scan(dir)?;
    if instances.is_empty() {
        return Ok(None);
    }
    let mut moved = Moved::default();
    for i in &instances {
        let old = dir.join(&i.id);
        for (sub, file) in i.files() {
            let from = old.join(sub).join(file);
            let name = format!("db/{}/{sub}/{file}", i.id);
            moved.bytes += match legacy {
                LegacyBackups::Upload(_) => upload(store, &from, &name)?,
                LegacyBackups::InPlace(_) => {
                    let to_dir = dir.join("db").join(&i.id).join(sub);
                    std::fs::create_dir_all(&to_dir)
                        .map_err(|e| io_err("creating", &to_dir, &e))?;
                    let len = std::fs::metadata(&from)
                        .map_err(|e| io_err("reading", &from, &e))?
                        .len();
                    let to = to_dir.join(file);
                    std::fs::rename(&from, &to).map_err(|e| io_err("moving", &from, &e))?;
                    sync_dir(&to_dir)?;
                    len
                }
            };
        }
        moved.instances += 1;
        moved.backups += i.manifests.len();
        moved.wal_files += i.wal.len();
        tracing::info!(
            instance = %i.id,
            backups = i.manifests.len(),
            wal_files = i.wal.len(),
            to = %store.location(),
            "moved an earlier release's backups into the object store (db/)"
        );
    }
    match legacy {
        LegacyBackups::Upload(dir) => {
            let stamp = OffsetDateTime::now_utc().unix_timestamp();
            let mut aside = dir.clone().into_os_string();
            aside.push(format!(".migrated-{stamp}"));
            let aside = PathBuf::from(aside);
            std::fs::rename(dir, &aside).map_err(|e| io_err("renaming", dir, &e))?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
            tracing::warn!(
                from = %dir.display(),
                kept = %aside.display(),
                "an earlier release's backup directory was moved into the object store; its files are kept in the renamed directory (remove it once the backups are checked)"
            );
        }
        LegacyBackups::InPlace(dir) => {
            // What is left of the old directories (temporary files, base
            // backups without a manifest) stays where it was.
            for i in &instances {
                let old = dir.join(&i.id);
                for sub in ["wal", "base"] {
                    let _ = std::fs::remove_dir(old.join(sub));
                }
                let _ = std::fs::remove_dir(&old);
            }
        }
    }
    Ok(Some(moved))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "db-0123456789abcdef";
    const BK: &str = "bk-fedcba9876543210";
    const SEG: &str = "000000010000000000000003";

    fn old_layout(dir: &Path) {
        let base = dir.join(ID).join("base");
        let wal = dir.join(ID).join("wal");
        std::fs::create_dir_all(&base).unwrap();
        std::fs::create_dir_all(&wal).unwrap();
        // A base backup larger than one multipart part.
        let big: Vec<u8> = (0..(9u32 << 20)).map(|i| (i % 251) as u8).collect();
        std::fs::write(base.join(format!("{BK}.tar.enc")), &big).unwrap();
        std::fs::write(base.join(format!("{BK}.json")), b"{\"id\":\"bk\"}").unwrap();
        // Not backups: no manifest; an interrupted write.
        std::fs::write(base.join("bk-00000000000000aa.tar.enc"), b"orphan").unwrap();
        std::fs::write(wal.join(format!(".{SEG}.abcd.tmp")), b"tmp").unwrap();
        std::fs::write(wal.join(SEG), b"wal bytes").unwrap();
        std::fs::write(wal.join("00000002.history"), b"history").unwrap();
    }

    fn local(dir: &Path) -> Objects {
        Objects::open(&atrest_objstore::StoreConfig {
            url: format!("file://{}", dir.display()),
            ..atrest_objstore::StoreConfig::default()
        })
        .unwrap()
    }

    fn names(store: &Objects) -> Vec<String> {
        let mut n: Vec<String> = store
            .list("db/")
            .unwrap()
            .into_iter()
            .map(|m| m.name)
            .collect();
        n.sort();
        n
    }

    fn expected() -> Vec<String> {
        let mut e = vec![
            format!("db/{ID}/base/{BK}.json"),
            format!("db/{ID}/base/{BK}.tar.enc"),
            format!("db/{ID}/wal/00000002.history"),
            format!("db/{ID}/wal/{SEG}"),
        ];
        e.sort();
        e
    }

    #[test]
    fn an_old_backup_directory_is_uploaded_and_kept_aside() {
        let t = tempfile::tempdir().unwrap();
        let old = t.path().join("backups");
        old_layout(&old);
        let store = local(&t.path().join("objects"));
        let moved = migrate(&LegacyBackups::Upload(old.clone()), &store)
            .unwrap()
            .unwrap();
        assert_eq!((moved.instances, moved.backups, moved.wal_files), (1, 1, 2));
        assert_eq!(names(&store), expected());
        assert!(!old.exists(), "the old directory is renamed");
        let aside: Vec<_> = std::fs::read_dir(t.path())
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("backups.migrated-"))
            .collect();
        assert_eq!(aside.len(), 1, "kept aside: {aside:?}");
        let kept = t
            .path()
            .join(&aside[0])
            .join(ID)
            .join("base")
            .join(format!("{BK}.tar.enc"));
        assert_eq!(
            std::fs::read(kept).unwrap(),
            store
                .get(&format!("db/{ID}/base/{BK}.tar.enc"))
                .unwrap()
                .to_vec()
        );
        // Nothing left to move: nothing happens.
        assert_eq!(migrate(&LegacyBackups::Upload(old), &store).unwrap(), None);
    }

    #[test]
    fn an_interrupted_upload_is_done_again() {
        let t = tempfile::tempdir().unwrap();
        let old = t.path().join("backups");
        old_layout(&old);
        let store = local(&t.path().join("objects"));
        // As if a first run stopped after the WAL and the base backup.
        for (name, body) in [
            (format!("db/{ID}/wal/{SEG}"), &b"wal bytes"[..]),
            (format!("db/{ID}/base/{BK}.tar.enc"), &b"cut"[..]),
        ] {
            let mut w = store.writer(&name).unwrap();
            w.write_bytes(body).unwrap();
            w.finish().unwrap();
        }
        migrate(&LegacyBackups::Upload(old), &store)
            .unwrap()
            .unwrap();
        assert_eq!(names(&store), expected());
        assert_eq!(
            store
                .head(&format!("db/{ID}/base/{BK}.tar.enc"))
                .unwrap()
                .unwrap()
                .size,
            9 << 20
        );
    }

    #[test]
    fn a_backup_dir_that_is_the_store_is_moved_under_db_in_place() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("bk");
        old_layout(&dir);
        let store = local(&dir);
        // An interruption after the WAL moved: the run moves the rest.
        std::fs::create_dir_all(dir.join("db").join(ID).join("wal")).unwrap();
        std::fs::rename(
            dir.join(ID).join("wal").join(SEG),
            dir.join("db").join(ID).join("wal").join(SEG),
        )
        .unwrap();
        let moved = migrate(&LegacyBackups::InPlace(dir.clone()), &store)
            .unwrap()
            .unwrap();
        assert_eq!(moved.backups, 1);
        assert_eq!(names(&store), expected());
        // What was not a backup stays where it was.
        assert!(
            dir.join(ID)
                .join("base")
                .join("bk-00000000000000aa.tar.enc")
                .exists()
        );
        assert_eq!(migrate(&LegacyBackups::InPlace(dir), &store).unwrap(), None);
    }
}
