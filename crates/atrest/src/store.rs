//! `atrest store`: the metadata store itself, offline.
//!
//! `atrest store copy --from DATA_DIR --to postgres://...` moves a
//! single-node installation's shared records (`kms.redb` into namespace
//! `kms`, `control.redb` into `control`) into PostgreSQL, then compares the
//! row count and checksum of every table on both sides. Node-local state
//! (the audit chain, disks and their `disks/meta.redb`, database instances,
//! the root of trust) stays in the data dir.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use atrest_store::{RedbStore, Store, StoreError, TableSum, checksum, copy_all};

use crate::cli::{StoreArgs, StoreCommand};

/// The stores that move, as (file in the data dir, namespace, required).
const MOVED: [(&str, &str, bool); 2] = [
    ("kms.redb", "kms", true),
    ("control.redb", "control", false),
];

pub async fn run(args: StoreArgs) -> anyhow::Result<()> {
    match args.command {
        StoreCommand::Copy { from, to } => {
            tokio::task::spawn_blocking(move || copy(&from, &to, &mut std::io::stdout().lock()))
                .await
                .context("the copy task failed")?
        }
    }
}

fn open_source(path: &Path) -> anyhow::Result<RedbStore> {
    match RedbStore::open(path) {
        Ok(s) => Ok(s),
        Err(StoreError::Locked(p)) => bail!(
            "{p} is in use by another process: stop the atrest server on this data dir \
             before copying (the copy is offline)"
        ),
        Err(e) => Err(e).with_context(|| format!("opening {}", path.display())),
    }
}

/// Copies the data dir `from`'s shared stores into the PostgreSQL database
/// at `to` and verifies them, reporting on `out`.
pub fn copy(from: &Path, to: &str, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut sources: Vec<(PathBuf, &str)> = Vec::new();
    for (file, ns, required) in MOVED {
        let path = from.join(file);
        if path.is_file() {
            sources.push((path, ns));
        } else if required {
            bail!(
                "{} not found: {} is not an atrest data dir",
                path.display(),
                from.display()
            );
        } else {
            writeln!(out, "{file}: absent, nothing to copy into namespace {ns}")?;
        }
    }
    // Open everything, and check every destination is empty, before
    // writing anything.
    let mut pairs = Vec::new();
    for (path, ns) in sources {
        let src = open_source(&path)?;
        let dst = atrest_pgstore::PgStore::open(to, ns)
            .with_context(|| format!("opening namespace {ns} of the destination"))?;
        let present = dst.tables()?;
        if !present.is_empty() {
            let names: Vec<&str> = present.iter().map(|t| t.name()).collect();
            bail!(
                "the destination's namespace {ns} is not empty (tables: {}); \
                 copy only into an empty database",
                names.join(", ")
            );
        }
        pairs.push((path, ns, src, dst));
    }
    let mut mismatches = 0usize;
    for (path, ns, src, dst) in &pairs {
        let report = copy_all(src, dst)
            .with_context(|| format!("copying {} into namespace {ns}", path.display()))?;
        writeln!(
            out,
            "copied {} into namespace {ns}: {} tables, {} rows",
            path.display(),
            report.tables.len(),
            report.rows
        )?;
        dst.refresh()?;
        let (a, b) = (checksum(src)?, checksum(dst)?);
        mismatches += compare(ns, &a, &b, out)?;
    }
    if mismatches > 0 {
        bail!(
            "verification failed: {mismatches} table(s) differ between the data dir and PostgreSQL"
        );
    }
    writeln!(out, "verified: every table's row count and SHA-256 match")?;
    Ok(())
}

/// Prints each table's count and checksum on both sides; the number of
/// tables that differ.
fn compare(
    ns: &str,
    src: &[TableSum],
    dst: &[TableSum],
    out: &mut dyn Write,
) -> anyhow::Result<usize> {
    let mut names: Vec<&str> = src.iter().chain(dst).map(|t| t.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let mut bad = 0;
    for name in names {
        let a = src.iter().find(|t| t.name == name);
        let b = dst.iter().find(|t| t.name == name);
        let show = |t: Option<&TableSum>| {
            t.map_or_else(
                || "absent".to_owned(),
                |t| format!("{} rows sha256 {}", t.rows, t.hex()),
            )
        };
        let same = a.is_some() && a == b;
        if !same {
            bad += 1;
        }
        if same {
            writeln!(out, "  {ns} {name}: {} ok", show(a))?;
        } else {
            writeln!(
                out,
                "  {ns} {name}: MISMATCH: source {}, destination {}",
                show(a),
                show(b)
            )?;
        }
    }
    Ok(bad)
}
