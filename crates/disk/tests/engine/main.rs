//! The disk engine against an in-memory reference: random sequences of
//! write, flush, FUA write, trim, snapshot, clone, rollback, resize, delete
//! and power loss (including a failure at each step of a commit); every
//! read matches the reference and no flushed write is ever lost. Also: bad
//! input gives typed errors and changes nothing, space is reclaimed, and no
//! pattern or key reaches the files. Re-encryption under a new key is in
//! [`rekey`], raw chunks (a snapshot's ciphertext out and back in) in
//! [`raw`].

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod atomic;
mod raw;
mod rekey;

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use atrest_crypto::XtsKey;
use atrest_disk::{CHUNK, DiskError, DiskSpec, Engine, FileStorage, KeyInfo, Labels, Storage};
use atrest_store::{Entry, MemoryStore, ReadTx, Store, StoreError, Table, WriteTx};

/// A pool in memory that models power loss: writes reach `current`; a sync
/// makes `current` durable; a crash keeps the durable bytes plus any subset
/// of the writes since, each torn at a random 512-byte boundary or not.
#[derive(Default)]
struct MemPool {
    s: Mutex<PoolState>,
    fail_sync: AtomicBool,
    /// Makes every write fail with this OS error (`ENOSPC`: a full pool).
    fail_writes: Mutex<Option<i32>>,
}

#[derive(Default, Clone)]
struct PoolState {
    current: Vec<u8>,
    durable: Vec<u8>,
    unsynced: Vec<(u64, Vec<u8>)>,
}

fn put(buf: &mut Vec<u8>, off: u64, data: &[u8]) {
    let end = off as usize + data.len();
    if buf.len() < end {
        buf.resize(end, 0);
    }
    buf[off as usize..end].copy_from_slice(data);
}

impl Storage for MemPool {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let s = self.s.lock().unwrap();
        for (i, b) in buf.iter_mut().enumerate() {
            *b = s.current.get(offset as usize + i).copied().unwrap_or(0);
        }
        Ok(())
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        if let Some(errno) = *self.fail_writes.lock().unwrap() {
            return Err(io::Error::from_raw_os_error(errno));
        }
        let mut s = self.s.lock().unwrap();
        put(&mut s.current, offset, data);
        s.unsynced.push((offset, data.to_vec()));
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.s.lock().unwrap().current.len() as u64)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.s.lock().unwrap().current.resize(len as usize, 0);
        Ok(())
    }
    fn sync(&self) -> io::Result<()> {
        if self.fail_sync.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected sync failure"));
        }
        let mut s = self.s.lock().unwrap();
        s.durable = s.current.clone();
        s.unsynced.clear();
        Ok(())
    }
}

impl MemPool {
    /// What a power cut leaves, as a fresh pool.
    fn crash(&self, rng: &mut Rng) -> MemPool {
        let s = self.s.lock().unwrap();
        let mut img = s.durable.clone();
        for (off, data) in &s.unsynced {
            match rng.below(3) {
                0 => {}
                1 => put(&mut img, *off, data),
                _ => {
                    let cut = (rng.below(data.len() as u64 / 512 + 1) * 512) as usize;
                    put(&mut img, *off, &data[..cut]);
                }
            }
        }
        MemPool {
            s: Mutex::new(PoolState {
                current: img.clone(),
                durable: img,
                unsynced: Vec::new(),
            }),
            fail_sync: AtomicBool::new(false),
            fail_writes: Mutex::new(None),
        }
    }
}

/// A store whose commits fail on demand (the store itself is atomic: a
/// failed commit changes nothing).
struct FaultyStore {
    inner: MemoryStore,
    fail_commit: AtomicBool,
}

struct FaultyTx<'a> {
    inner: Box<dyn WriteTx + 'a>,
    fail: bool,
}

impl ReadTx for FaultyTx<'_> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(table, key)
    }
    fn scan(
        &self,
        table: Table,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        self.inner.scan(table, prefix, after, limit)
    }
}

impl WriteTx for FaultyTx<'_> {
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.inner.put(table, key, value)
    }
    fn delete(&mut self, table: Table, key: &[u8]) -> Result<bool, StoreError> {
        self.inner.delete(table, key)
    }
    fn commit(self: Box<Self>) -> Result<(), StoreError> {
        if self.fail {
            return Err(StoreError::Backend("injected commit failure".into()));
        }
        self.inner.commit()
    }
}

impl Store for FaultyStore {
    fn read(&self) -> Result<Box<dyn ReadTx + '_>, StoreError> {
        self.inner.read()
    }
    fn write(&self) -> Result<Box<dyn WriteTx + '_>, StoreError> {
        Ok(Box::new(FaultyTx {
            inner: self.inner.write()?,
            fail: self.fail_commit.load(Ordering::SeqCst),
        }))
    }
    fn tables(&self) -> Result<Vec<Table>, StoreError> {
        self.inner.tables()
    }
}

/// xorshift64*.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

/// What each disk and snapshot must read as.
#[derive(Clone, Default)]
struct Model {
    /// Disk id -> (contents as acknowledged, block size, encrypted).
    disks: BTreeMap<String, (Vec<u8>, u32, bool)>,
    snapshots: BTreeMap<String, (Vec<u8>, String)>,
}

fn key() -> XtsKey {
    XtsKey::from_slice(&(1..=64).collect::<Vec<u8>>()).unwrap()
}

fn key_info() -> KeyInfo {
    KeyInfo {
        key_arn: "arn:aws:kms:us-east-1:111122223333:key/test".into(),
        wrapped: vec![7; 40],
        grant_id: None,
    }
}

fn read_all(engine: &Arc<Engine>, id: &str, encrypted: bool) -> Vec<u8> {
    let k = key();
    let d = engine.open_disk(id, encrypted.then_some(&k)).unwrap();
    let mut buf = vec![0u8; d.size() as usize];
    d.read(0, &mut buf).unwrap();
    buf
}

fn check(engine: &Arc<Engine>, model: &Model, step: usize) {
    for (id, (data, _, enc)) in &model.disks {
        let got = read_all(engine, id, *enc);
        assert!(got == *data, "step {step}: disk {id} differs");
    }
    for (sid, (data, _)) in &model.snapshots {
        let s = engine.snapshot(sid).unwrap();
        engine
            .clone_snapshot(sid, "probe", None, Labels::new())
            .unwrap();
        let got = read_all(engine, "probe", s.key.is_some());
        engine.delete_disk("probe").unwrap();
        assert!(got == *data, "step {step}: snapshot {sid} differs");
    }
}

fn pattern(rng: &mut Rng, len: usize) -> Vec<u8> {
    let seed = rng.next();
    (0..len)
        .map(|i| (seed.wrapping_add(i as u64 * 31) >> 3) as u8 | 1)
        .collect()
}

#[test]
fn random_operations_and_power_loss_match_the_reference() {
    for seed in 1..=24u64 {
        run_model(seed, 150);
    }
}

#[allow(clippy::too_many_lines, reason = "one model, one place")]
fn run_model(seed: u64, steps: usize) {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let store = Arc::new(FaultyStore {
        inner: MemoryStore::new(),
        fail_commit: AtomicBool::new(false),
    });
    let mut pool = Arc::new(MemPool::default());
    let mut engine = Engine::open(store.clone(), pool.clone()).unwrap();
    let mut model = Model::default();
    // The state as of the last commit.
    let mut durable = model.clone();
    // Every version of each disk acknowledged since the last commit: after a
    // power loss a block may hold any of them (unflushed block writes).
    let mut history: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    let mut next_id = 0u32;
    let k = key();

    for step in 0..steps {
        let disks: Vec<String> = model.disks.keys().cloned().collect();
        let snaps: Vec<String> = model.snapshots.keys().cloned().collect();
        let pick = |rng: &mut Rng, v: &[String]| v[rng.below(v.len() as u64) as usize].clone();
        match rng.below(14) {
            0 | 1 if model.disks.len() < 4 => {
                next_id += 1;
                let id = format!("d{next_id}");
                let size = (1 + rng.below(8)) * 32 * 1024;
                let bs = if rng.below(2) == 0 { 512 } else { 4096 };
                let enc = rng.below(3) != 0;
                let spec = DiskSpec {
                    size,
                    block_size: bs,
                    key: enc.then(key_info),
                    labels: Labels::new(),
                };
                engine.create_disk(&id, &spec).unwrap();
                model.disks.insert(id, (vec![0; size as usize], bs, enc));
                durable = model.clone();
                history.clear();
            }
            2..=5 if !disks.is_empty() => {
                let id = pick(&mut rng, &disks);
                let (data, bs, enc) = model.disks.get_mut(&id).unwrap();
                let bs64 = u64::from(*bs);
                let blocks = data.len() as u64 / bs64;
                let first = rng.below(blocks);
                let n = 1 + rng.below((blocks - first).min(3 * CHUNK / bs64));
                let bytes = pattern(&mut rng, (n * bs64) as usize);
                let fua = rng.below(4) == 0;
                let d = engine.open_disk(&id, enc.then_some(&k)).unwrap();
                d.write(first * bs64, &bytes, fua).unwrap();
                let off = (first * bs64) as usize;
                data[off..off + bytes.len()].copy_from_slice(&bytes);
                let version = data.clone();
                history.entry(id.clone()).or_default().push(version);
                if fua {
                    durable = model.clone();
                    history.clear();
                }
            }
            6 if !disks.is_empty() => {
                let id = pick(&mut rng, &disks);
                let (data, bs, enc) = model.disks.get_mut(&id).unwrap();
                let bs64 = u64::from(*bs);
                let blocks = data.len() as u64 / bs64;
                // Half the trims start on a chunk boundary, so that whole
                // chunks are freed (and may be reused before the commit).
                let per_chunk = CHUNK / bs64;
                let mut first = rng.below(blocks);
                if rng.below(2) == 0 {
                    first -= first % per_chunk;
                }
                let n = 1 + rng.below((blocks - first).min(2 * per_chunk));
                let d = engine.open_disk(&id, enc.then_some(&k)).unwrap();
                d.trim(first * bs64, n * bs64).unwrap();
                let off = (first * bs64) as usize;
                data[off..off + (n * bs64) as usize].fill(0);
                let version = data.clone();
                history.entry(id.clone()).or_default().push(version);
            }
            7 => {
                engine.flush().unwrap();
                durable = model.clone();
                history.clear();
            }
            8 if !disks.is_empty() => {
                next_id += 1;
                let id = format!("s{next_id}");
                let disk = pick(&mut rng, &disks);
                engine
                    .snapshot_disk(&disk, &id, None, Labels::new())
                    .unwrap();
                let data = model.disks[&disk].0.clone();
                model.snapshots.insert(id, (data, disk));
                durable = model.clone();
                history.clear();
            }
            9 if !snaps.is_empty() && model.disks.len() < 4 => {
                next_id += 1;
                let id = format!("c{next_id}");
                let s = pick(&mut rng, &snaps);
                let info = engine.clone_snapshot(&s, &id, None, Labels::new()).unwrap();
                let (data, _) = model.snapshots[&s].clone();
                model
                    .disks
                    .insert(id, (data, info.block_size, info.key.is_some()));
                durable = model.clone();
                history.clear();
            }
            10 if !disks.is_empty() => {
                let disk = pick(&mut rng, &disks);
                let mine: Vec<String> = model
                    .snapshots
                    .iter()
                    .filter(|(_, (_, of))| *of == disk)
                    .map(|(s, _)| s.clone())
                    .collect();
                let Some(s) = mine.last() else { continue };
                match engine.rollback(&disk, s) {
                    Ok(_) => {
                        let data = model.snapshots[s].0.clone();
                        model.disks.get_mut(&disk).unwrap().0 = data;
                    }
                    // A snapshot of this disk taken before an earlier
                    // rollback to an older one is no longer in its chain.
                    Err(DiskError::Invalid(_)) => {}
                    Err(e) => panic!("step {step}: rollback: {e}"),
                }
                durable = model.clone();
                history.clear();
            }
            11 if !disks.is_empty() => {
                let disk = pick(&mut rng, &disks);
                let (data, _, _) = model.disks.get_mut(&disk).unwrap();
                let size = data.len() as u64 + rng.below(4) * 4096 + 4096;
                engine.resize(&disk, size).unwrap();
                data.resize(size as usize, 0);
                durable = model.clone();
                history.clear();
            }
            12 if !disks.is_empty() && rng.below(3) == 0 => {
                let disk = pick(&mut rng, &disks);
                engine.delete_disk(&disk).unwrap();
                model.disks.remove(&disk);
                durable = model.clone();
                history.clear();
            }
            12 if !snaps.is_empty() => {
                let s = pick(&mut rng, &snaps);
                engine.delete_snapshot(&s).unwrap();
                model.snapshots.remove(&s);
                durable = model.clone();
                history.clear();
            }
            13 => {
                // Power loss, sometimes in the middle of a commit: the pool
                // sync or the store commit fails, then the power goes.
                match rng.below(3) {
                    0 => pool.fail_sync.store(true, Ordering::SeqCst),
                    1 => store.fail_commit.store(true, Ordering::SeqCst),
                    _ => {}
                }
                let faulty = pool.fail_sync.load(Ordering::SeqCst)
                    || store.fail_commit.load(Ordering::SeqCst);
                if faulty {
                    match engine.flush() {
                        // Stopped: nothing more is accepted.
                        Err(DiskError::Failed(_)) => {
                            assert!(matches!(engine.disks(), Err(DiskError::Failed(_))));
                        }
                        // Nothing to commit: the store was not asked.
                        Ok(()) => {
                            assert!(!pool.fail_sync.load(Ordering::SeqCst));
                            durable = model.clone();
                            history.clear();
                        }
                        Err(e) => panic!("step {step}: {e}"),
                    }
                }
                pool.fail_sync.store(false, Ordering::SeqCst);
                store.fail_commit.store(false, Ordering::SeqCst);
                pool = Arc::new(pool.crash(&mut rng));
                engine = Engine::open(store.clone(), pool.clone()).unwrap();
                // Unflushed writes may or may not have survived: the model
                // becomes the last durable state, and any byte that differs
                // must hold a value acknowledged since; it is taken from what
                // the engine now reads.
                model = durable.clone();
                for (id, (data, _, enc)) in model.disks.iter_mut() {
                    let got = read_all(&engine, id, *enc);
                    let versions = history.get(id).map(Vec::as_slice).unwrap_or_default();
                    for (i, (g, d)) in got.iter().zip(data.iter_mut()).enumerate() {
                        if g != d {
                            assert!(
                                versions.iter().any(|v| v.get(i) == Some(g)),
                                "seed {seed} step {step}: disk {id} byte {i} is neither flushed nor written"
                            );
                            *d = *g;
                        }
                    }
                }
                durable = model.clone();
                history.clear();
            }
            _ => {}
        }
        if step % 10 == 0 || step + 1 == steps {
            check(&engine, &model, step);
        }
    }
    // Everything deleted: no chunk stays in use.
    drop(engine);
    let engine = Engine::open(store.clone(), pool.clone()).unwrap();
    for d in engine.disks().unwrap() {
        engine.delete_disk(&d.id).unwrap();
    }
    for s in engine.snapshots().unwrap() {
        engine.delete_snapshot(&s.id).unwrap();
    }
    assert_eq!(
        engine.chunks_in_use().unwrap(),
        0,
        "seed {seed}: space not reclaimed"
    );
    let tx = store.read().unwrap();
    for t in ["disk.disks", "disk.snapshots", "disk.layers", "disk.map"] {
        assert!(
            tx.scan(Table::new(t), b"", None, 10).unwrap().is_empty(),
            "{t} not empty"
        );
    }
}

fn mem_engine() -> (Arc<Engine>, Arc<MemPool>) {
    let pool = Arc::new(MemPool::default());
    let engine = Engine::open(Arc::new(MemoryStore::new()), pool.clone()).unwrap();
    (engine, pool)
}

#[test]
fn snapshot_and_clone_copy_nothing_and_diverge() {
    let (engine, pool) = mem_engine();
    let spec = DiskSpec {
        size: 64 << 30,
        block_size: 4096,
        key: Some(key_info()),
        labels: Labels::new(),
    };
    engine.create_disk("big", &spec).unwrap();
    let k = key();
    let d = engine.open_disk("big", Some(&k)).unwrap();
    d.write(0, &[0xAB; 8192], true).unwrap();
    let used = pool.len().unwrap();
    engine
        .snapshot_disk("big", "snap", None, Labels::new())
        .unwrap();
    let clone = engine
        .clone_snapshot("snap", "copy", None, Labels::new())
        .unwrap();
    // No data was copied.
    assert_eq!(pool.len().unwrap(), used);
    assert_eq!(clone.size, 64 << 30);
    assert_eq!(clone.key, Some(key_info()));
    // The disk and the clone diverge; the snapshot stays.
    d.write(0, &[0x11; 4096], true).unwrap();
    let c = engine.open_disk("copy", Some(&k)).unwrap();
    c.write(4096, &[0x22; 4096], true).unwrap();
    let mut b = vec![0u8; 8192];
    d.read(0, &mut b).unwrap();
    assert_eq!(
        (&b[..4096], &b[4096..]),
        (&[0x11; 4096][..], &[0xAB; 4096][..])
    );
    c.read(0, &mut b).unwrap();
    assert_eq!(
        (&b[..4096], &b[4096..]),
        (&[0xAB; 4096][..], &[0x22; 4096][..])
    );
    // Far beyond anything written: zeros.
    c.read((64 << 30) - 8192, &mut b).unwrap();
    assert!(b.iter().all(|x| *x == 0));
}

/// A data write the pool has no room for fails with the pool's own error
/// (kind `StorageFull`, `ENOSPC`), whether it needed a fresh chunk or
/// wrote one in place; the chunk it took is given back, and the engine
/// goes on once there is room.
#[test]
fn a_full_pool_fails_writes_with_its_own_error_and_the_engine_goes_on() {
    const ENOSPC: i32 = 28;
    let (engine, pool) = mem_engine();
    let spec = DiskSpec {
        size: 1 << 20,
        block_size: 4096,
        key: None,
        labels: Labels::new(),
    };
    engine.create_disk("d", &spec).unwrap();
    let d = engine.open_disk("d", None).unwrap();
    d.write(0, &[1; 4096], true).unwrap();
    let used = engine.chunks_in_use().unwrap();

    *pool.fail_writes.lock().unwrap() = Some(ENOSPC);
    // A fresh chunk, then in place.
    for offset in [CHUNK, 0] {
        let e = d.write(offset, &[2; 4096], false).unwrap_err();
        assert_eq!(e.io_kind(), io::ErrorKind::StorageFull, "{e}");
        match &e {
            DiskError::Io { context, error } => {
                assert_eq!(context, "writing the pool");
                assert_eq!(error.kind(), io::ErrorKind::StorageFull);
                assert_eq!(error.raw_os_error(), Some(ENOSPC));
            }
            other => panic!("expected an I/O error: {other:?}"),
        }
        assert!(
            e.to_string()
                .starts_with("disk I/O: writing the pool: No space left on device"),
            "{e}"
        );
    }
    assert_eq!(engine.chunks_in_use().unwrap(), used);

    *pool.fail_writes.lock().unwrap() = None;
    d.write(CHUNK, &[3; 4096], true).unwrap();
    let mut b = vec![0u8; 4096];
    d.read(CHUNK, &mut b).unwrap();
    assert_eq!(b, [3; 4096]);
    d.read(0, &mut b).unwrap();
    assert_eq!(b, [1; 4096]);
    // Other errors are not I/O errors of the pool.
    assert_eq!(
        d.write(100, &[1; 512], false).unwrap_err().io_kind(),
        io::ErrorKind::InvalidInput
    );
    assert_eq!(
        engine.open_disk("d", None).unwrap_err().io_kind(),
        io::ErrorKind::Other
    );
}

#[test]
fn bad_input_gets_typed_errors_and_changes_nothing() {
    let (engine, _) = mem_engine();
    let ok = DiskSpec {
        size: 1 << 20,
        block_size: 512,
        key: None,
        labels: Labels::new(),
    };
    for (size, bs) in [
        (0, 512),
        (1000, 512),
        ((64u64 << 40) + 4096, 512),
        (1 << 20, 1024),
    ] {
        let spec = DiskSpec {
            size,
            block_size: bs,
            key: None,
            labels: Labels::new(),
        };
        assert!(matches!(
            engine.create_disk("x", &spec),
            Err(DiskError::Invalid(_))
        ));
    }
    assert!(matches!(
        engine.create_disk("bad id!", &ok),
        Err(DiskError::Invalid(_))
    ));
    engine.create_disk("d", &ok).unwrap();
    assert!(matches!(
        engine.create_disk("d", &ok),
        Err(DiskError::Exists { .. })
    ));
    let d = engine.open_disk("d", None).unwrap();
    assert!(matches!(
        d.write(100, &[1; 512], false),
        Err(DiskError::Invalid(_))
    ));
    assert!(matches!(
        d.write(0, &[1; 100], false),
        Err(DiskError::Invalid(_))
    ));
    assert!(matches!(
        d.write(1 << 20, &[1; 512], false),
        Err(DiskError::Invalid(_))
    ));
    assert!(matches!(
        d.write(u64::MAX - 511, &[1; 512], false),
        Err(DiskError::Invalid(_))
    ));
    let mut b = [0u8; 512];
    assert!(matches!(
        d.read((1 << 20) - 256, &mut b),
        Err(DiskError::Invalid(_))
    ));
    assert!(matches!(
        engine.resize("d", 4096),
        Err(DiskError::Invalid(_))
    ));
    assert!(matches!(
        engine.resize("d", 64u64 << 41),
        Err(DiskError::Invalid(_))
    ));
    assert!(matches!(
        engine.resize("nope", 1 << 21),
        Err(DiskError::NotFound { .. })
    ));
    assert!(matches!(
        engine.snapshot_disk("nope", "s", None, Labels::new()),
        Err(DiskError::NotFound { .. })
    ));
    assert!(matches!(
        engine.clone_snapshot("nope", "c", None, Labels::new()),
        Err(DiskError::NotFound { .. })
    ));
    assert!(matches!(
        engine.delete_snapshot("nope"),
        Err(DiskError::NotFound { .. })
    ));
    // Open: no rollback or delete.
    engine.snapshot_disk("d", "s", None, Labels::new()).unwrap();
    assert!(matches!(
        engine.rollback("d", "s"),
        Err(DiskError::Conflict(_))
    ));
    assert!(matches!(
        engine.delete_disk("d"),
        Err(DiskError::Conflict(_))
    ));
    // One open handle at a time.
    assert!(matches!(
        engine.open_disk("d", None),
        Err(DiskError::Conflict(_))
    ));
    // A clone of an unencrypted snapshot cannot be given a key, nor can a
    // snapshot of an unencrypted disk.
    assert!(matches!(
        engine.clone_snapshot("s", "c", Some(key_info()), Labels::new()),
        Err(DiskError::Invalid(_))
    ));
    assert!(matches!(
        engine.snapshot_disk("d", "s2", Some(key_info()), Labels::new()),
        Err(DiskError::Invalid(_))
    ));
    drop(d);
    // An encrypted disk needs its key; an unencrypted one refuses one.
    let k = key();
    assert!(matches!(
        engine.open_disk("d", Some(&k)),
        Err(DiskError::Invalid(_))
    ));
    assert_eq!(engine.disk("d").unwrap().size, 1 << 20);
    assert_eq!(engine.disks().unwrap().len(), 1);
    assert_eq!(engine.snapshots().unwrap().len(), 1);
}

#[test]
fn no_pattern_or_key_reaches_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(atrest_store::RedbStore::open(&dir.path().join("meta.redb")).unwrap());
    let pool = Arc::new(FileStorage::open(&dir.path().join("pool")).unwrap());
    let engine = Engine::open(store, pool).unwrap();
    let spec = DiskSpec {
        size: 4 << 20,
        block_size: 512,
        key: Some(key_info()),
        labels: Labels::new(),
    };
    engine.create_disk("d", &spec).unwrap();
    let k = key();
    let pattern: Vec<u8> = b"ATREST-PLAINTEXT-PATTERN-0123456".repeat(64);
    let d = engine.open_disk("d", Some(&k)).unwrap();
    for i in 0..16u64 {
        d.write(i * 100 * 512, &pattern, false).unwrap();
    }
    d.flush().unwrap();
    engine.snapshot_disk("d", "s", None, Labels::new()).unwrap();
    let c = engine
        .clone_snapshot("s", "c", None, Labels::new())
        .unwrap();
    let cd = engine.open_disk(&c.id, Some(&k)).unwrap();
    cd.write(512, &pattern[..1024], true).unwrap();
    let mut back = vec![0u8; pattern.len()];
    cd.read(0, &mut back).unwrap();
    assert_eq!(back, pattern);
    drop((d, cd, engine));
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(
            !bytes.windows(32).any(|w| w == &pattern[..32]),
            "plaintext in a file"
        );
        assert!(
            !bytes.windows(32).any(|w| w == &k.expose()[..32]),
            "key in a file"
        );
    }
}
