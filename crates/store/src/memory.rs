//! An in-memory store: the reference model for the conformance suite and a
//! backend for tests. Nothing survives the process.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use crate::{Entry, ReadTx, Store, StoreError, Table, WriteTx, prefix_end};

type Map = BTreeMap<(&'static str, Vec<u8>), Vec<u8>>;

/// A bound on (table, key).
type KeyBound = Bound<(&'static str, Vec<u8>)>;

/// A store held in memory. Reads see an immutable snapshot; writers run one at
/// a time on a private copy that replaces the snapshot on commit.
#[derive(Default)]
pub struct MemoryStore {
    snapshot: RwLock<Arc<Map>>,
    writer: Mutex<()>,
}

impl MemoryStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn current(&self) -> Arc<Map> {
        match self.snapshot.read() {
            Ok(g) => Arc::clone(&g),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }
}

struct MemRead {
    map: Arc<Map>,
}

/// Pending changes of a write transaction: `None` is a deletion.
type Overlay = BTreeMap<(&'static str, Vec<u8>), Option<Vec<u8>>>;

struct MemWrite<'a> {
    store: &'a MemoryStore,
    base: Arc<Map>,
    changes: Overlay,
    _guard: MutexGuard<'a, ()>,
}

fn get(map: &Map, table: Table, key: &[u8]) -> Option<Vec<u8>> {
    map.get(&(table.name(), key.to_vec())).cloned()
}

fn bounds(table: Table, prefix: &[u8], after: Option<&[u8]>) -> (KeyBound, KeyBound) {
    let t = table.name();
    let start = match after {
        Some(a) if a >= prefix => Bound::Excluded((t, a.to_vec())),
        _ => Bound::Included((t, prefix.to_vec())),
    };
    let end = match prefix_end(prefix) {
        Some(e) => Bound::Excluded((t, e)),
        None => Bound::Unbounded,
    };
    (start, end)
}

fn scan(map: &Map, table: Table, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> Vec<Entry> {
    let t = table.name();
    map.range(bounds(table, prefix, after))
        .take_while(|((tn, _), _)| *tn == t)
        .take(limit)
        .map(|((_, k), v)| (k.clone(), v.clone()))
        .collect()
}

impl Store for MemoryStore {
    fn read(&self) -> Result<Box<dyn ReadTx + '_>, StoreError> {
        Ok(Box::new(MemRead {
            map: self.current(),
        }))
    }

    fn write(&self) -> Result<Box<dyn WriteTx + '_>, StoreError> {
        let guard = self
            .writer
            .lock()
            .map_err(|_| StoreError::Backend("memory store writer poisoned".into()))?;
        Ok(Box::new(MemWrite {
            store: self,
            base: self.current(),
            changes: Overlay::new(),
            _guard: guard,
        }))
    }

    fn tables(&self) -> Result<Vec<Table>, StoreError> {
        let map = self.current();
        let mut names: Vec<&'static str> = map.keys().map(|(t, _)| *t).collect();
        names.dedup();
        Ok(names.into_iter().map(Table::new).collect())
    }
}

impl ReadTx for MemRead {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(get(&self.map, table, key))
    }

    fn scan(
        &self,
        table: Table,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        Ok(scan(&self.map, table, prefix, after, limit))
    }
}

impl ReadTx for MemWrite<'_> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.changes.get(&(table.name(), key.to_vec())) {
            Some(change) => Ok(change.clone()),
            None => Ok(get(&self.base, table, key)),
        }
    }

    /// Merges the snapshot with this transaction's changes, which win.
    fn scan(
        &self,
        table: Table,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let t = table.name();
        let base = self
            .base
            .range(bounds(table, prefix, after))
            .take_while(|((tn, _), _)| *tn == t)
            .map(|((_, k), v)| (k.as_slice(), v.as_slice()));
        let pending = self
            .changes
            .range(bounds(table, prefix, after))
            .take_while(|((tn, _), _)| *tn == t)
            .map(|((_, k), v)| (k.as_slice(), v.as_deref()));
        Ok(crate::merge_pending(base, pending, limit))
    }
}

impl WriteTx for MemWrite<'_> {
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.changes
            .insert((table.name(), key.to_vec()), Some(value.to_vec()));
        Ok(())
    }

    fn delete(&mut self, table: Table, key: &[u8]) -> Result<bool, StoreError> {
        let existed = self.get(table, key)?.is_some();
        self.changes.insert((table.name(), key.to_vec()), None);
        Ok(existed)
    }

    fn commit(self: Box<Self>) -> Result<(), StoreError> {
        let this = *self;
        // Drop our reference to the snapshot first, so that the map is copied
        // only if a reader still holds it.
        drop(this.base);
        let mut slot = match this.store.snapshot.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let map = Arc::make_mut(&mut slot);
        for ((t, k), change) in this.changes {
            match change {
                Some(v) => {
                    map.insert((t, k), v);
                }
                None => {
                    map.remove(&(t, k));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn conformance() {
        crate::conformance::run(&super::MemoryStore::new());
    }
}
