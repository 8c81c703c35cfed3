//! The embedded default: one redb file.
//!
//! redb is a copy-on-write B-tree with checksummed, double-buffered commits:
//! after a crash the file opens at the last committed transaction. Every
//! commit here uses `Durability::Immediate` (fsync before `commit` returns).

use std::path::Path;

use redb::{ReadableDatabase, ReadableTable, TableDefinition, TableError, TableHandle};

use crate::{Entry, ReadTx, Store, StoreError, Table, WriteTx, prefix_end};

/// A store in one redb file.
pub struct RedbStore {
    db: redb::Database,
    path: String,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn def(table: Table) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
    TableDefinition::new(table.name())
}

impl RedbStore {
    /// Opens the store at `path`, creating it if absent. Fails with
    /// [`StoreError::Locked`] if another process has it open.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let shown = path.display().to_string();
        match redb::Database::create(path) {
            Ok(db) => Ok(Self { db, path: shown }),
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => Err(StoreError::Locked(shown)),
            Err(e) => Err(StoreError::Backend(format!("opening {shown}: {e}"))),
        }
    }

    /// Where the file is.
    #[must_use]
    pub fn path(&self) -> &str {
        &self.path
    }
}

struct RedbRead(redb::ReadTransaction);
struct RedbWrite(redb::WriteTransaction);

fn scan_table<T: ReadableTable<&'static [u8], &'static [u8]>>(
    t: &T,
    prefix: &[u8],
    after: Option<&[u8]>,
    limit: usize,
) -> Result<Vec<Entry>, StoreError> {
    use std::ops::Bound;
    let start: Bound<&[u8]> = match after {
        Some(a) if a >= prefix => Bound::Excluded(a),
        _ => Bound::Included(prefix),
    };
    let end_buf = prefix_end(prefix);
    let end: Bound<&[u8]> = match &end_buf {
        Some(e) => Bound::Excluded(e.as_slice()),
        None => Bound::Unbounded,
    };
    let mut out = Vec::new();
    for item in t.range::<&[u8]>((start, end)).map_err(backend)? {
        if out.len() >= limit {
            break;
        }
        let (k, v) = item.map_err(backend)?;
        out.push((k.value().to_vec(), v.value().to_vec()));
    }
    Ok(out)
}

impl Store for RedbStore {
    fn read(&self) -> Result<Box<dyn ReadTx + '_>, StoreError> {
        Ok(Box::new(RedbRead(self.db.begin_read().map_err(backend)?)))
    }

    fn write(&self) -> Result<Box<dyn WriteTx + '_>, StoreError> {
        let mut tx = self.db.begin_write().map_err(backend)?;
        tx.set_durability(redb::Durability::Immediate)
            .map_err(backend)?;
        Ok(Box::new(RedbWrite(tx)))
    }

    fn tables(&self) -> Result<Vec<Table>, StoreError> {
        let tx = self.db.begin_read().map_err(backend)?;
        let mut out = Vec::new();
        for handle in tx.list_tables().map_err(backend)? {
            let name = handle.name().to_owned();
            let t = tx
                .open_table(TableDefinition::<&[u8], &[u8]>::new(&name))
                .map_err(backend)?;
            if t.first().map_err(backend)?.is_some() {
                out.push(Table::named(name));
            }
        }
        Ok(out)
    }
}

impl ReadTx for RedbRead {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.0.open_table(def(table)) {
            Ok(t) => Ok(t.get(key).map_err(backend)?.map(|v| v.value().to_vec())),
            Err(TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(backend(e)),
        }
    }

    fn scan(
        &self,
        table: Table,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        match self.0.open_table(def(table)) {
            Ok(t) => scan_table(&t, prefix, after, limit),
            Err(TableError::TableDoesNotExist(_)) => Ok(Vec::new()),
            Err(e) => Err(backend(e)),
        }
    }
}

impl ReadTx for RedbWrite {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        // Opening a table in a write transaction creates it; that is harmless
        // (an empty table) and discarded if the transaction is not committed.
        let t = self.0.open_table(def(table)).map_err(backend)?;
        Ok(t.get(key).map_err(backend)?.map(|v| v.value().to_vec()))
    }

    fn scan(
        &self,
        table: Table,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let t = self.0.open_table(def(table)).map_err(backend)?;
        scan_table(&t, prefix, after, limit)
    }
}

impl WriteTx for RedbWrite {
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let mut t = self.0.open_table(def(table)).map_err(backend)?;
        t.insert(key, value).map_err(backend)?;
        Ok(())
    }

    fn delete(&mut self, table: Table, key: &[u8]) -> Result<bool, StoreError> {
        let mut t = self.0.open_table(def(table)).map_err(backend)?;
        Ok(t.remove(key).map_err(backend)?.is_some())
    }

    fn commit(self: Box<Self>) -> Result<(), StoreError> {
        self.0.commit().map_err(backend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("meta.redb")).unwrap();
        crate::conformance::run(&store);
    }

    #[test]
    fn committed_data_survives_reopen_and_uncommitted_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        let t = Table::new("t");
        {
            let store = RedbStore::open(&path).unwrap();
            let mut w = store.write().unwrap();
            w.put(t, b"kept", b"1").unwrap();
            w.commit().unwrap();
            let mut w = store.write().unwrap();
            w.put(t, b"lost", b"2").unwrap();
            drop(w);
        }
        let store = RedbStore::open(&path).unwrap();
        let r = store.read().unwrap();
        assert_eq!(r.get(t, b"kept").unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(r.get(t, b"lost").unwrap(), None);
    }

    #[test]
    fn a_second_open_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        let _first = RedbStore::open(&path).unwrap();
        assert!(matches!(RedbStore::open(&path), Err(StoreError::Locked(_))));
    }
}
