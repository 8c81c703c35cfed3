//! The conformance suite every [`Store`] backend must pass.
//!
//! Call [`run`] from a backend's tests with a fresh, empty store. It checks
//! the semantics documented on the trait, and compares random operation
//! sequences against [`MemoryStore`](crate::MemoryStore) as a model.

#![allow(clippy::unwrap_used, clippy::missing_panics_doc)] // a test harness

use std::collections::BTreeMap;

use crate::{Store, Table};

const A: Table = Table::new("conformance.a");
const B: Table = Table::new("conformance.b");

/// Runs every check against `store`, which must be empty. Panics on the first
/// violation.
pub fn run(store: &dyn Store) {
    empty_tables_read_as_empty(store);
    put_get_delete(store);
    tables_are_separate(store);
    uncommitted_writes_are_invisible_and_discarded(store);
    reads_see_a_snapshot(store);
    scans_are_ordered_prefixed_and_paged(store);
    model_check(store);
}

fn empty_tables_read_as_empty(store: &dyn Store) {
    let never = Table::new("conformance.never-written");
    let r = store.read().unwrap();
    assert_eq!(r.get(never, b"x").unwrap(), None);
    assert!(r.scan(never, b"", None, 10).unwrap().is_empty());
}

fn put_get_delete(store: &dyn Store) {
    let mut w = store.write().unwrap();
    w.put(A, b"k1", b"v1").unwrap();
    w.put(A, b"k1", b"v1b").unwrap();
    assert_eq!(w.get(A, b"k1").unwrap().as_deref(), Some(&b"v1b"[..]));
    w.commit().unwrap();
    assert_eq!(
        store.read().unwrap().get(A, b"k1").unwrap().as_deref(),
        Some(&b"v1b"[..])
    );
    let mut w = store.write().unwrap();
    assert!(w.delete(A, b"k1").unwrap());
    assert!(!w.delete(A, b"k1").unwrap());
    w.commit().unwrap();
    assert_eq!(store.read().unwrap().get(A, b"k1").unwrap(), None);
    // Empty keys and values are legal.
    let mut w = store.write().unwrap();
    w.put(A, b"", b"").unwrap();
    w.commit().unwrap();
    assert_eq!(
        store.read().unwrap().get(A, b"").unwrap().as_deref(),
        Some(&b""[..])
    );
    let mut w = store.write().unwrap();
    w.delete(A, b"").unwrap();
    w.commit().unwrap();
}

fn tables_are_separate(store: &dyn Store) {
    let mut w = store.write().unwrap();
    w.put(A, b"same", b"a").unwrap();
    w.put(B, b"same", b"b").unwrap();
    w.commit().unwrap();
    let r = store.read().unwrap();
    assert_eq!(r.get(A, b"same").unwrap().as_deref(), Some(&b"a"[..]));
    assert_eq!(r.get(B, b"same").unwrap().as_deref(), Some(&b"b"[..]));
    assert_eq!(r.scan(A, b"", None, 100).unwrap().len(), 1);
    drop(r);
    // Both tables are listed (a store copy enumerates them); one never
    // written to is not.
    let names: Vec<&str> = store.tables().unwrap().iter().map(|t| t.name()).collect();
    assert!(
        names.contains(&A.name()) && names.contains(&B.name()),
        "{names:?}"
    );
    assert!(!names.contains(&"conformance.never-written"), "{names:?}");
    let mut w = store.write().unwrap();
    w.delete(A, b"same").unwrap();
    w.delete(B, b"same").unwrap();
    w.commit().unwrap();
}

fn uncommitted_writes_are_invisible_and_discarded(store: &dyn Store) {
    let mut w = store.write().unwrap();
    w.put(A, b"pending", b"1").unwrap();
    // Only a concurrent reader could see it; read snapshots are taken from
    // committed state. (Backends serialise writers, so a reader is the test.)
    drop(w);
    assert_eq!(store.read().unwrap().get(A, b"pending").unwrap(), None);
}

fn reads_see_a_snapshot(store: &dyn Store) {
    let mut w = store.write().unwrap();
    w.put(A, b"snap", b"old").unwrap();
    w.commit().unwrap();
    let before = store.read().unwrap();
    let mut w = store.write().unwrap();
    w.put(A, b"snap", b"new").unwrap();
    w.put(A, b"snap2", b"x").unwrap();
    w.commit().unwrap();
    assert_eq!(
        before.get(A, b"snap").unwrap().as_deref(),
        Some(&b"old"[..])
    );
    assert_eq!(before.get(A, b"snap2").unwrap(), None);
    drop(before);
    assert_eq!(
        store.read().unwrap().get(A, b"snap").unwrap().as_deref(),
        Some(&b"new"[..])
    );
    let mut w = store.write().unwrap();
    w.delete(A, b"snap").unwrap();
    w.delete(A, b"snap2").unwrap();
    w.commit().unwrap();
}

fn scans_are_ordered_prefixed_and_paged(store: &dyn Store) {
    let mut w = store.write().unwrap();
    for k in [&b"p/3"[..], b"p/1", b"p/2", b"p0", b"o/9", b"p/\xff", b"q"] {
        w.put(A, k, k).unwrap();
    }
    w.put(A, b"\xff\xff", b"end").unwrap();
    w.commit().unwrap();
    let r = store.read().unwrap();
    let keys = |v: Vec<(Vec<u8>, Vec<u8>)>| v.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
    assert_eq!(
        keys(r.scan(A, b"p/", None, 100).unwrap()),
        vec![
            b"p/1".to_vec(),
            b"p/2".to_vec(),
            b"p/3".to_vec(),
            b"p/\xff".to_vec()
        ]
    );
    assert_eq!(
        keys(r.scan(A, b"p/", None, 2).unwrap()),
        vec![b"p/1".to_vec(), b"p/2".to_vec()]
    );
    assert_eq!(
        keys(r.scan(A, b"p/", Some(b"p/2"), 100).unwrap()),
        vec![b"p/3".to_vec(), b"p/\xff".to_vec()]
    );
    // A cursor before the prefix starts at the prefix.
    assert_eq!(
        keys(r.scan(A, b"p/", Some(b"a"), 1).unwrap()),
        vec![b"p/1".to_vec()]
    );
    assert!(r.scan(A, b"p/", Some(b"p/\xff"), 100).unwrap().is_empty());
    assert_eq!(
        keys(r.scan(A, b"\xff", None, 10).unwrap()),
        vec![b"\xff\xff".to_vec()]
    );
    assert_eq!(r.scan(A, b"", None, 100).unwrap().len(), 8);
    assert!(r.scan(A, b"p/", None, 0).unwrap().is_empty());
    drop(r);
    let mut w = store.write().unwrap();
    for (k, _) in w.scan(A, b"", None, 100).unwrap() {
        w.delete(A, &k).unwrap();
    }
    w.commit().unwrap();
}

/// Random transactions against the store and a `BTreeMap` model; after each
/// transaction (committed or dropped) both must agree on every read.
fn model_check(store: &dyn Store) {
    // A small deterministic generator keeps the suite free of dependencies
    // and reproducible across backends.
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for _ in 0..600 {
        let mut w = store.write().unwrap();
        let mut pending = model.clone();
        for _ in 0..(next() % 6) {
            let key = vec![b'm', (next() % 4) as u8, (next() % 8) as u8];
            if next() % 3 == 0 {
                assert_eq!(w.delete(A, &key).unwrap(), pending.remove(&key).is_some());
            } else {
                let value = next().to_le_bytes().to_vec();
                w.put(A, &key, &value).unwrap();
                pending.insert(key, value);
            }
        }
        // Reads inside the transaction see its own changes.
        let prefix = [b'm', (next() % 4) as u8];
        let after = [b'm', prefix[1], (next() % 8) as u8];
        let cursor = (next() % 2 == 0).then_some(&after[..]);
        let limit = (next() % 5) as usize + 1;
        let got = w.scan(A, &prefix, cursor, limit).unwrap();
        let want: Vec<_> = pending
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix) && cursor.is_none_or(|c| k.as_slice() > c))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert_eq!(got, want, "scan inside a write transaction");
        if next() % 4 == 0 {
            drop(w);
        } else {
            w.commit().unwrap();
            model = pending;
        }
        let r = store.read().unwrap();
        let prefix = [b'm', (next() % 4) as u8];
        let got = r.scan(A, &prefix, None, usize::MAX).unwrap();
        let want: Vec<_> = model
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert_eq!(got, want);
        let probe = vec![b'm', (next() % 4) as u8, (next() % 8) as u8];
        assert_eq!(r.get(A, &probe).unwrap(), model.get(&probe).cloned());
    }
}
