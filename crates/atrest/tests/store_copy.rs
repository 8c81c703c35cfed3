//! `atrest store copy` of a populated data dir into a real PostgreSQL
//! (Debian's, started here; skipped with a notice only when PostgreSQL is
//! missing and `ATREST_REQUIRE_POSTGRES` is unset).

#![allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

#[path = "../../pgstore/tests/support/postgres.rs"]
mod postgres;

use std::path::Path;
use std::process::{Command, Output};

use atrest_pgstore::PgStore;
use atrest_store::{RedbStore, Store, Table, checksum};

fn atrest_copy(from: &Path, to: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_atrest"))
        .args(["store", "copy", "--from"])
        .arg(from)
        .env("ATREST_STORE", to)
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn populate(path: &Path, tables: &[&'static str], rows: usize) {
    let store = RedbStore::open(path).unwrap();
    for name in tables {
        let t = Table::new(name);
        let mut w = store.write().unwrap();
        for i in 0..rows {
            w.put(t, format!("{i:05}").as_bytes(), &[(i % 251) as u8; 40])
                .unwrap();
        }
        w.commit().unwrap();
    }
}

#[test]
fn a_data_dir_is_copied_verified_and_never_twice() {
    let Some(pg) = postgres::Postgres::start().unwrap() else {
        return;
    };
    let url = pg.url("sslmode=disable");
    let dir = tempfile::tempdir().unwrap();
    populate(
        &dir.path().join("kms.redb"),
        &["keys", "grants", "aliases"],
        1500,
    );
    populate(&dir.path().join("control.redb"), &["projects"], 7);

    // A server running on the data dir holds the file: refused, clearly.
    let held = RedbStore::open(&dir.path().join("kms.redb")).unwrap();
    let out = atrest_copy(dir.path(), &url);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("stop the atrest server"),
        "{}",
        text(&out)
    );
    drop(held);

    let out = atrest_copy(dir.path(), &url);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("kms keys: 1500 rows sha256"), "{shown}");
    assert!(shown.contains("control projects: 7 rows"), "{shown}");
    assert!(shown.contains("verified"), "{shown}");
    assert!(!shown.contains(&pg.password), "{shown}");
    for (file, ns) in [("kms.redb", "kms"), ("control.redb", "control")] {
        let src = RedbStore::open(&dir.path().join(file)).unwrap();
        let dst = PgStore::open(&url, ns).unwrap();
        assert_eq!(checksum(&src).unwrap(), checksum(&dst).unwrap());
    }

    // A second copy finds the destination not empty.
    let out = atrest_copy(dir.path(), &url);
    assert!(!out.status.success());
    assert!(text(&out).contains("not empty"), "{}", text(&out));

    // Not a data dir.
    let empty = tempfile::tempdir().unwrap();
    let out = atrest_copy(empty.path(), &url);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("not an atrest data dir"),
        "{}",
        text(&out)
    );
    assert!(!empty.path().join("kms.redb").exists());
}
