//! The metadata store of atrest.
//!
//! Owns: durable, transactional storage of small records, behind the
//! [`Store`] trait. Knows nothing of what the records mean; callers encode them
//! and must never hand it plaintext secrets.
//!
//! The trait is deliberately small (get, ordered prefix scan, put, delete,
//! commit) so that the embedded default ([`RedbStore`], an ACID, crash-safe
//! B-tree file) and a shared PostgreSQL store can implement it alike, and so
//! that one conformance suite ([`conformance`]) checks every backend.
//!
//! Semantics every backend provides:
//! * a read transaction sees one committed snapshot;
//! * write transactions are serializable (the embedded backends run them one
//!   at a time);
//! * a write transaction takes effect only if [`WriteTx::commit`] returns `Ok`,
//!   and is then durable; dropping it without committing discards it.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod conformance;
pub mod copy;
mod memory;
mod redb_store;

pub use copy::{CopyReport, TableSum, checksum, copy_all};
pub use memory::MemoryStore;
pub use redb_store::RedbStore;

/// A named table of byte keys to byte values, ordered by key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Table(&'static str);

impl Table {
    /// A table called `name`. Names are part of the on-disk format.
    #[must_use]
    pub const fn new(name: &'static str) -> Self {
        Self(name)
    }

    /// A table whose name is known only at run time (a tool that lists a
    /// store's tables). The name is leaked: call it a bounded number of times.
    #[must_use]
    pub fn named(name: String) -> Self {
        Self(Box::leak(name.into_boxed_str()))
    }

    /// The table's name.
    #[must_use]
    pub const fn name(self) -> &'static str {
        self.0
    }
}

/// One key and value from a scan.
pub type Entry = (Vec<u8>, Vec<u8>);

/// Errors of the store. All of them are the server's problem, not a client's.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The backend failed (I/O, corruption, a full disk).
    #[error("metadata store: {0}")]
    Backend(String),
    /// Another process holds the store open.
    #[error("metadata store at {0} is in use by another process")]
    Locked(String),
    /// A copy's destination already holds rows (the tables named).
    #[error("the destination store is not empty (tables: {0}); copy only into an empty store")]
    NotEmpty(String),
}

/// A change another process committed to a shared store, as a
/// [`Watcher`] hears of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change<'a> {
    /// The row `key` of `table` was written or deleted.
    Row {
        /// The table's name.
        table: &'a str,
        /// The row's key.
        key: &'a [u8],
    },
    /// Anything may have changed (the process lost track of the store, or
    /// caught up by reloading it): every cache above the store starts again.
    All,
}

/// Called after changes committed elsewhere are visible to this process's
/// reads. Must be quick and must not call back into the store.
pub type Watcher = std::sync::Arc<dyn Fn(&Change<'_>) + Send + Sync>;

/// A durable transactional key-value store.
///
/// The embedded backends have one writer, this process. A shared backend
/// (several atrest nodes on one PostgreSQL) also has writers elsewhere, and
/// the last four methods are how a process keeps its caches honest and its
/// periodic tasks single; their defaults are the embedded answers.
pub trait Store: Send + Sync {
    /// Starts a read transaction on the latest committed snapshot.
    fn read(&self) -> Result<Box<dyn ReadTx + '_>, StoreError>;
    /// Starts a write transaction.
    fn write(&self) -> Result<Box<dyn WriteTx + '_>, StoreError>;

    /// Whether other processes write to this store too (a shared backend).
    fn is_shared(&self) -> bool {
        false
    }

    /// Calls `watcher` after each change another process commits becomes
    /// visible here. Embedded stores have no other writer and never call it.
    fn watch(&self, watcher: Watcher) {
        let _ = watcher;
    }

    /// Whether this process's reads are confirmed current within the
    /// store's staleness bound. A cache kept above the store (decisions
    /// derived from records) may be used only while this is true.
    fn is_current(&self) -> bool {
        true
    }

    /// Waits until every change committed before this call is visible to
    /// this process's reads. A lookup that found nothing calls it before it
    /// answers "not found"; concurrent calls share one catch-up.
    fn refresh(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Takes or renews the lease `name` for `holder` for `ttl`, and answers
    /// whether `holder` holds it now. A lease lets one process among several
    /// sharing the store run a periodic task; with one process, it always
    /// does.
    fn lease(
        &self,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        let _ = (name, holder, ttl);
        Ok(true)
    }

    /// The tables that hold at least one row (to copy or check a store).
    fn tables(&self) -> Result<Vec<Table>, StoreError>;
}

/// Reads, shared by read and write transactions.
pub trait ReadTx {
    /// The value stored under `key`.
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Up to `limit` entries whose key starts with `prefix`, in key order,
    /// starting after `after` (exclusive) when given.
    fn scan(
        &self,
        table: Table,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError>;
}

/// A write transaction.
pub trait WriteTx: ReadTx {
    /// Stores `value` under `key`, replacing any previous value.
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError>;
    /// Removes `key`; returns whether it was present.
    fn delete(&mut self, table: Table, key: &[u8]) -> Result<bool, StoreError>;
    /// Makes every change of this transaction durable, atomically.
    fn commit(self: Box<Self>) -> Result<(), StoreError>;
}

/// A write transaction's scan for backends that keep its changes in memory
/// over a committed snapshot: merges `base` (committed entries) with
/// `pending` (its changes; `None` is a deletion), both in key order and
/// already limited to the scanned range; a pending change wins over the
/// committed entry of the same key. At most `limit` entries.
pub fn merge_pending<'a>(
    base: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    pending: impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)>,
    limit: usize,
) -> Vec<Entry> {
    let (mut base, mut pending) = (base.peekable(), pending.peekable());
    let mut out = Vec::new();
    while out.len() < limit {
        let take_pending = match (base.peek().map(|e| e.0), pending.peek().map(|e| e.0)) {
            (None, None) => break,
            (Some(_), None) => false,
            (None, Some(_)) => true,
            (Some(bk), Some(pk)) => {
                if pk == bk {
                    base.next();
                }
                pk <= bk
            }
        };
        if take_pending {
            if let Some((k, Some(v))) = pending.next() {
                out.push((k.to_vec(), v.to_vec()));
            }
        } else if let Some((k, v)) = base.next() {
            out.push((k.to_vec(), v.to_vec()));
        }
    }
    out
}

/// The smallest key strictly greater than every key starting with `prefix`,
/// or `None` if there is none (the prefix is all 0xff).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}
