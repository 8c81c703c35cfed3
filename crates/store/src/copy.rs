//! Moving a store into another backend, and checking that two stores hold
//! the same rows.
//!
//! [`copy_all`] copies every table of one store into an empty one, in
//! batches; [`checksum`] sums every table (row count and SHA-256 over the
//! rows in key order) so that the two sides can be compared after a copy.

use crate::{Store, StoreError, Table};

/// Rows per scan and per write transaction.
const BATCH: usize = 1000;

/// What [`copy_all`] copied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// Each table copied and its row count, in name order.
    pub tables: Vec<(String, u64)>,
    /// All rows copied.
    pub rows: u64,
}

/// One table's count and checksum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableSum {
    /// The table's name.
    pub name: String,
    /// Its rows.
    pub rows: u64,
    /// SHA-256 over each row in key order, as the key's length (8 bytes,
    /// big-endian), the key, the value's length, the value.
    pub sha256: [u8; 32],
}

impl TableSum {
    /// The checksum in lowercase hex.
    #[must_use]
    pub fn hex(&self) -> String {
        self.sha256.iter().map(|b| format!("{b:02x}")).collect()
    }
}

fn sorted_tables(store: &dyn Store) -> Result<Vec<Table>, StoreError> {
    let mut tables = store.tables()?;
    tables.sort_by_key(|t| t.name());
    tables.dedup();
    Ok(tables)
}

/// Copies every table of `from` into `to`, which must hold no row
/// ([`StoreError::NotEmpty`] otherwise). Reads one snapshot of `from`;
/// writes in transactions of up to 1000 rows, so a failure part-way leaves
/// `to` partly written (and then refused by a second copy: empty it first).
pub fn copy_all(from: &dyn Store, to: &dyn Store) -> Result<CopyReport, StoreError> {
    let present = sorted_tables(to)?;
    if !present.is_empty() {
        let names: Vec<&str> = present.iter().map(|t| t.name()).collect();
        return Err(StoreError::NotEmpty(names.join(", ")));
    }
    let tables = sorted_tables(from)?;
    let snapshot = from.read()?;
    let mut report = CopyReport::default();
    for table in tables {
        let mut after: Option<Vec<u8>> = None;
        let mut rows = 0u64;
        loop {
            let batch = snapshot.scan(table, b"", after.as_deref(), BATCH)?;
            let Some((last, _)) = batch.last() else { break };
            after = Some(last.clone());
            let mut w = to.write()?;
            for (k, v) in &batch {
                w.put(table, k, v)?;
            }
            w.commit()?;
            rows += batch.len() as u64;
            if batch.len() < BATCH {
                break;
            }
        }
        report.rows += rows;
        report.tables.push((table.name().to_owned(), rows));
    }
    Ok(report)
}

/// The count and checksum of every table of `store` that holds a row, in
/// name order, from one snapshot.
pub fn checksum(store: &dyn Store) -> Result<Vec<TableSum>, StoreError> {
    let tables = sorted_tables(store)?;
    let snapshot = store.read()?;
    let mut out = Vec::with_capacity(tables.len());
    for table in tables {
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        let mut rows = 0u64;
        let mut after: Option<Vec<u8>> = None;
        loop {
            let batch = snapshot.scan(table, b"", after.as_deref(), BATCH)?;
            for (k, v) in &batch {
                ctx.update(&(k.len() as u64).to_be_bytes());
                ctx.update(k);
                ctx.update(&(v.len() as u64).to_be_bytes());
                ctx.update(v);
            }
            rows += batch.len() as u64;
            match batch.last() {
                Some((last, _)) if batch.len() == BATCH => after = Some(last.clone()),
                _ => break,
            }
        }
        let digest = ctx.finish();
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(digest.as_ref());
        out.push(TableSum {
            name: table.name().to_owned(),
            rows,
            sha256,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MemoryStore, RedbStore};

    fn fill(store: &dyn Store, tables: &[&'static str], rows: usize) {
        for name in tables {
            let t = Table::new(name);
            let mut w = store.write().unwrap();
            for i in 0..rows {
                let key = format!("{name}/{i:06}");
                w.put(t, key.as_bytes(), &[i as u8; 7]).unwrap();
            }
            w.commit().unwrap();
        }
    }

    #[test]
    fn copies_every_table_in_batches_and_the_sums_agree() {
        let dir = tempfile::tempdir().unwrap();
        let from = RedbStore::open(&dir.path().join("a.redb")).unwrap();
        // More than one batch in one table, an empty key and value in another.
        fill(&from, &["keys", "grants"], 2500);
        let mut w = from.write().unwrap();
        w.put(Table::new("odd"), b"", b"").unwrap();
        w.commit().unwrap();
        let to = MemoryStore::new();
        let report = copy_all(&from, &to).unwrap();
        assert_eq!(report.rows, 5001);
        assert_eq!(
            report.tables,
            vec![
                ("grants".to_owned(), 2500),
                ("keys".to_owned(), 2500),
                ("odd".to_owned(), 1)
            ]
        );
        let (a, b) = (checksum(&from).unwrap(), checksum(&to).unwrap());
        assert_eq!(a, b);
        assert_eq!(a.len(), 3);
        assert_eq!(a[1].rows, 2500);
        // And back into redb.
        let back = RedbStore::open(&dir.path().join("b.redb")).unwrap();
        copy_all(&to, &back).unwrap();
        assert_eq!(checksum(&back).unwrap(), a);
    }

    #[test]
    fn a_non_empty_destination_is_refused() {
        let from = MemoryStore::new();
        fill(&from, &["keys"], 3);
        let to = MemoryStore::new();
        fill(&to, &["other"], 1);
        match copy_all(&from, &to) {
            Err(StoreError::NotEmpty(tables)) => assert_eq!(tables, "other"),
            other => panic!("{other:?}"),
        }
        assert_eq!(checksum(&to).unwrap().len(), 1);
    }

    #[test]
    fn the_checksum_sees_a_changed_value_a_moved_boundary_and_a_missing_row() {
        let a = MemoryStore::new();
        fill(&a, &["t"], 10);
        let sum = checksum(&a).unwrap();
        let t = Table::new("t");
        // The same bytes split differently between key and value differ.
        let b = MemoryStore::new();
        let mut w = b.write().unwrap();
        w.put(t, b"ab", b"c").unwrap();
        w.commit().unwrap();
        let c = MemoryStore::new();
        let mut w = c.write().unwrap();
        w.put(t, b"a", b"bc").unwrap();
        w.commit().unwrap();
        assert_ne!(checksum(&b).unwrap(), checksum(&c).unwrap());
        let mut w = a.write().unwrap();
        w.put(t, b"t/000003", b"changed").unwrap();
        w.commit().unwrap();
        assert_ne!(checksum(&a).unwrap(), sum);
        let mut w = a.write().unwrap();
        w.put(t, b"t/000003", &[3u8; 7]).unwrap();
        w.commit().unwrap();
        assert_eq!(checksum(&a).unwrap(), sum);
        let mut w = a.write().unwrap();
        w.delete(t, b"t/000009").unwrap();
        w.commit().unwrap();
        let now = checksum(&a).unwrap();
        assert_eq!(now[0].rows, 9);
        assert_ne!(now, sum);
        assert_eq!(sum[0].hex().len(), 64);
    }
}
