//! Re-encryption under a new data key (issue D8): online against an
//! in-memory reference (with a snapshot, a clone, trims and growth), with
//! writers racing the steps, through power losses at any point (including
//! a failure at each step of a commit) and resumed; no pattern or key in the
//! files; and the operations it refuses.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use atrest_crypto::XtsKey;
use atrest_disk::{
    CHUNK, DiskError, DiskSpec, Engine, FileStorage, KeyInfo, Labels, OpenDisk, RekeyProgress,
};
use atrest_store::MemoryStore;

use super::{FaultyStore, MemPool, Rng, key, key_info, mem_engine, pattern};

pub(super) fn new_key() -> XtsKey {
    XtsKey::from_slice(&(101..=164).collect::<Vec<u8>>()).unwrap()
}

pub(super) fn new_key_info() -> KeyInfo {
    KeyInfo {
        key_arn: "arn:aws:kms:us-east-1:111122223333:key/next".into(),
        wrapped: vec![9; 40],
        grant_id: None,
    }
}

fn spec(size: u64, block_size: u32) -> DiskSpec {
    DiskSpec {
        size,
        block_size,
        key: Some(key_info()),
        labels: Labels::new(),
    }
}

fn read_whole(d: &OpenDisk) -> Vec<u8> {
    let mut buf = vec![0u8; d.size() as usize];
    d.read(0, &mut buf).unwrap();
    buf
}

/// Reads disk `id` with `key` alone (the disk must not be open).
fn read_with(engine: &Arc<Engine>, id: &str, key: &XtsKey) -> Vec<u8> {
    read_whole(&engine.open_disk(id, Some(key)).unwrap())
}

/// Reads snapshot `id` through a throwaway clone, with `key`.
fn read_snapshot(engine: &Arc<Engine>, id: &str, key: &XtsKey) -> Vec<u8> {
    engine
        .clone_snapshot(id, "probe", None, Labels::new())
        .unwrap();
    let got = read_with(engine, "probe", key);
    engine.delete_disk("probe").unwrap();
    got
}

/// A random block-aligned range of up to three chunks, within `len`.
fn range(rng: &mut Rng, len: usize, bs: u32) -> (u64, usize) {
    let bs = u64::from(bs);
    let blocks = len as u64 / bs;
    let first = rng.below(blocks);
    let n = 1 + rng.below((blocks - first).min(3 * CHUNK / bs));
    (first * bs, (n * bs) as usize)
}

pub(super) fn write_random(rng: &mut Rng, d: &OpenDisk, model: &mut [u8], fua: bool) {
    let (off, n) = range(rng, model.len(), d.block_size());
    let bytes = pattern(rng, n);
    d.write(off, &bytes, fua).unwrap();
    model[off as usize..off as usize + n].copy_from_slice(&bytes);
}

pub(super) fn trim_random(rng: &mut Rng, d: &OpenDisk, model: &mut [u8]) {
    let (mut off, n) = range(rng, model.len(), d.block_size());
    // Half of them on a chunk boundary, so whole chunks are trimmed.
    if rng.below(2) == 0 {
        off -= off % CHUNK;
    }
    let n = n.min(model.len() - off as usize);
    d.trim(off, n as u64).unwrap();
    model[off as usize..off as usize + n].fill(0);
}

#[test]
fn online_rekey_matches_the_reference() {
    for (seed, bs) in [(1, 512), (2, 4096), (3, 4096), (4, 512)] {
        run_online(seed, bs);
    }
}

#[allow(clippy::too_many_lines, reason = "one scenario, one place")]
fn run_online(seed: u64, bs: u32) {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let (engine, _) = mem_engine();
    let (old, new) = (key(), new_key());
    // A partial last chunk.
    let size = 20 * CHUNK + 8192;
    engine.create_disk("d", &spec(size, bs)).unwrap();
    let d = engine.open_disk("d", Some(&old)).unwrap();
    let mut model = vec![0u8; size as usize];
    for _ in 0..16 {
        write_random(&mut rng, &d, &mut model, false);
    }
    // The last chunk, so that it holds data.
    let tail = pattern(&mut rng, 8192);
    d.write(size - 8192, &tail, false).unwrap();
    model[(size - 8192) as usize..].copy_from_slice(&tail);
    // A snapshot: the disk now stands on its layer, which the re-encryption
    // must copy from and then leave.
    engine.snapshot_disk("d", "s", None, Labels::new()).unwrap();
    let snap = model.clone();
    for _ in 0..6 {
        write_random(&mut rng, &d, &mut model, false);
    }
    d.trim(3 * CHUNK, 2 * CHUNK + 4096).unwrap();
    model[3 * CHUNK as usize..5 * CHUNK as usize + 4096].fill(0);
    // A clone of the snapshot, with data of its own.
    engine
        .clone_snapshot("s", "c", None, Labels::new())
        .unwrap();
    let mut clone = snap.clone();
    {
        let c = engine.open_disk("c", Some(&old)).unwrap();
        for _ in 0..4 {
            write_random(&mut rng, &c, &mut clone, false);
        }
    }
    d.flush().unwrap();

    let p = d.start_rekey(new_key_info(), &new).unwrap();
    assert_eq!(
        p,
        RekeyProgress {
            done: 0,
            total: 21,
            finished: false
        }
    );
    assert_eq!(
        engine.disk("d").unwrap().rekey.map(|r| (r.key, r.done)),
        Some((new_key_info(), 0))
    );
    let mut last = p;
    let mut grown = false;
    let mut steps = 0;
    while !last.finished {
        match rng.below(7) {
            0 | 1 => {
                let p = d.rekey_step(1 + rng.below(3)).unwrap();
                assert!(p.done > last.done, "seed {seed}: no progress: {p:?}");
                assert_eq!(engine.disk("d").unwrap().rekey.is_none(), p.finished);
                last = p;
                steps += 1;
                // Growing is allowed while it runs; the new area is more to
                // do (this handle keeps its size until opened again).
                if steps == 3 && !grown {
                    engine.resize("d", size + 3 * CHUNK).unwrap();
                    grown = true;
                }
            }
            2 | 3 => {
                let fua = rng.below(4) == 0;
                write_random(&mut rng, &d, &mut model, fua);
            }
            4 => trim_random(&mut rng, &d, &mut model),
            5 => {
                let (off, n) = range(&mut rng, model.len(), bs);
                let mut buf = vec![0u8; n];
                d.read(off, &mut buf).unwrap();
                assert!(
                    buf == model[off as usize..off as usize + n],
                    "seed {seed}: read at {off} of {n} differs during the re-encryption"
                );
            }
            _ => d.flush().unwrap(),
        }
    }
    assert!(grown, "seed {seed}: finished in under three steps");
    assert_eq!(last.total, 24, "seed {seed}: the growth is counted");
    assert_eq!(last.done, last.total);
    assert!(
        read_whole(&d) == model,
        "seed {seed}: the open disk differs"
    );
    // The same handle goes on, under the new key alone.
    write_random(&mut rng, &d, &mut model, false);
    assert!(matches!(d.rekey_step(1), Err(DiskError::Invalid(_))));
    drop(d);
    let info = engine.disk("d").unwrap();
    assert_eq!((info.key, info.rekey), (Some(new_key_info()), None));
    model.resize((size + 3 * CHUNK) as usize, 0);
    assert!(
        read_with(&engine, "d", &new) == model,
        "seed {seed}: the new key does not read the disk"
    );
    let garbage = read_with(&engine, "d", &old);
    for i in 0..model.len() as u64 / CHUNK {
        let r = (i * CHUNK) as usize..((i + 1) * CHUNK) as usize;
        if model[r.clone()].iter().any(|b| *b != 0) {
            assert!(
                garbage[r.clone()] != model[r],
                "seed {seed}: chunk {i} reads right with the old key"
            );
        }
    }
    // The snapshot and the clone keep the old key and their data.
    assert_eq!(engine.snapshot("s").unwrap().key, Some(key_info()));
    assert!(
        read_snapshot(&engine, "s", &old) == snap,
        "seed {seed}: snapshot"
    );
    assert!(read_with(&engine, "c", &old) == clone, "seed {seed}: clone");
    // The disk stands alone: without the snapshot and the clone it reads the
    // same, and deleting it too leaves nothing in use.
    engine.delete_disk("c").unwrap();
    let in_use = engine.chunks_in_use().unwrap();
    engine.delete_snapshot("s").unwrap();
    assert!(
        engine.chunks_in_use().unwrap() < in_use,
        "seed {seed}: the snapshot's layer is still held"
    );
    assert!(read_with(&engine, "d", &new) == model, "seed {seed}: alone");
    engine.delete_disk("d").unwrap();
    assert_eq!(engine.chunks_in_use().unwrap(), 0, "seed {seed}: space");
}

/// Writers encrypt before they take the engine lock; a step that moves
/// their chunks to the new key in between must not leave old-key
/// ciphertext under the new key's part of the disk.
#[test]
fn writes_racing_the_steps_land_under_the_right_key() {
    for seed in 1..=3u64 {
        let (engine, _) = mem_engine();
        let (old, new) = (key(), new_key());
        let size = 48 * CHUNK;
        engine.create_disk("d", &spec(size, 512)).unwrap();
        let d = engine.open_disk("d", Some(&old)).unwrap();
        let mut model = vec![0u8; size as usize];
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        for i in 0..size / CHUNK {
            let bytes = pattern(&mut rng, CHUNK as usize);
            d.write(i * CHUNK, &bytes, false).unwrap();
            model[(i * CHUNK) as usize..((i + 1) * CHUNK) as usize].copy_from_slice(&bytes);
        }
        d.start_rekey(new_key_info(), &new).unwrap();
        let stop = AtomicBool::new(false);
        let model = std::thread::scope(|s| {
            let writer = s.spawn(|| {
                let mut rng = Rng(seed | 0x100);
                let mut model = model;
                while !stop.load(Ordering::SeqCst) {
                    // Large writes, so that encrypting one takes a while.
                    let off = rng.below(size / 512 - 1024) * 512;
                    let bytes = pattern(&mut rng, 1024 * 512);
                    d.write(off, &bytes, false).unwrap();
                    model[off as usize..off as usize + bytes.len()].copy_from_slice(&bytes);
                    let mut back = vec![0u8; bytes.len()];
                    d.read(off, &mut back).unwrap();
                    assert!(back == bytes, "seed {seed}: read back at {off}");
                }
                model
            });
            while !d.rekey_step(1).unwrap().finished {
                std::thread::yield_now();
            }
            stop.store(true, Ordering::SeqCst);
            writer.join().unwrap()
        });
        assert!(read_whole(&d) == model, "seed {seed}: the open disk");
        drop(d);
        assert!(read_with(&engine, "d", &new) == model, "seed {seed}");
    }
}

#[test]
fn rekey_survives_power_loss_and_resumes() {
    for seed in 1..=12u64 {
        run_crashes(seed);
    }
}

/// Opens `d` with the keys its state needs.
fn open(engine: &Arc<Engine>) -> OpenDisk {
    let (old, new) = (key(), new_key());
    match engine.disk("d").unwrap().rekey {
        Some(_) => engine.open_disk_rekeying("d", &old, &new).unwrap(),
        None => engine.open_disk("d", Some(&new)).unwrap(),
    }
}

#[allow(clippy::too_many_lines, reason = "one model, one place")]
fn run_crashes(seed: u64) {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let store = Arc::new(FaultyStore {
        inner: MemoryStore::new(),
        fail_commit: AtomicBool::new(false),
    });
    let mut pool = Arc::new(MemPool::default());
    let mut engine = Engine::open(store.clone(), pool.clone()).unwrap();
    let bs = if seed.is_multiple_of(2) { 512 } else { 4096 };
    let size = 12 * CHUNK + 4096;
    engine.create_disk("d", &spec(size, bs)).unwrap();
    let old = key();
    let mut d = engine.open_disk("d", Some(&old)).unwrap();
    let mut model = vec![0u8; size as usize];
    for _ in 0..8 {
        write_random(&mut rng, &d, &mut model, false);
    }
    let snap = model.clone();
    if !seed.is_multiple_of(3) {
        engine.snapshot_disk("d", "s", None, Labels::new()).unwrap();
        for _ in 0..4 {
            write_random(&mut rng, &d, &mut model, false);
        }
    }
    d.start_rekey(new_key_info(), &new_key()).unwrap();
    // The state as of the last commit, every version acknowledged since
    // (after a power loss a block may hold any of them), and the `done` of
    // the last commit (None once finished).
    let mut durable = model.clone();
    let mut history: Vec<Vec<u8>> = Vec::new();
    let mut committed = Some(0u64);
    let mut crashes = 0;
    let mut after_finish = 0;
    loop {
        match rng.below(9) {
            0..=2 if committed.is_some() => match d.rekey_step(1 + rng.below(3)) {
                Ok(p) => {
                    committed = (!p.finished).then_some(p.done);
                    durable.clone_from(&model);
                    history.clear();
                }
                Err(e) => panic!("seed {seed}: step: {e}"),
            },
            3 | 4 => {
                let fua = rng.below(4) == 0;
                write_random(&mut rng, &d, &mut model, fua);
                history.push(model.clone());
                if fua {
                    durable.clone_from(&model);
                    history.clear();
                }
            }
            5 => {
                trim_random(&mut rng, &d, &mut model);
                history.push(model.clone());
            }
            6 => {
                d.flush().unwrap();
                durable.clone_from(&model);
                history.clear();
            }
            _ => {
                // Power loss, often in the middle of a step's commit: the
                // pool sync or the store commit fails, then the power goes.
                let fault = rng.below(3);
                match fault {
                    0 => pool.fail_sync.store(true, Ordering::SeqCst),
                    1 => store.fail_commit.store(true, Ordering::SeqCst),
                    _ => {}
                }
                if fault < 2 {
                    let r = if committed.is_some() && rng.below(4) != 0 {
                        d.rekey_step(1 + rng.below(3)).map(drop)
                    } else {
                        d.flush()
                    };
                    match r {
                        // Stopped: nothing more is accepted.
                        Err(DiskError::Failed(_)) => assert!(matches!(
                            d.read(0, &mut [0; 4096]),
                            Err(DiskError::Failed(_))
                        )),
                        // A flush with nothing to commit: the store was
                        // not asked.
                        Ok(()) if fault == 1 => {
                            durable.clone_from(&model);
                            history.clear();
                        }
                        r => panic!("seed {seed}: {r:?}"),
                    }
                }
                pool.fail_sync.store(false, Ordering::SeqCst);
                store.fail_commit.store(false, Ordering::SeqCst);
                drop(d);
                pool = Arc::new(pool.crash(&mut rng));
                engine = Engine::open(store.clone(), pool.clone()).unwrap();
                let info = engine.disk("d").unwrap();
                assert_eq!(
                    info.rekey.as_ref().map(|r| r.done),
                    committed,
                    "seed {seed}: the re-encryption's progress is the last commit's"
                );
                let expect_key = if committed.is_some() {
                    key_info()
                } else {
                    new_key_info()
                };
                assert_eq!(info.key, Some(expect_key), "seed {seed}");
                d = open(&engine);
                // Unflushed writes may or may not have survived: every byte
                // that is not the last commit's must be one acknowledged
                // since.
                let got = read_whole(&d);
                for (i, (g, m)) in got.iter().zip(durable.iter()).enumerate() {
                    assert!(
                        g == m || history.iter().any(|v| v[i] == *g),
                        "seed {seed} crash {crashes}: byte {i} is neither flushed nor written"
                    );
                }
                model = got;
                durable.clone_from(&model);
                history.clear();
                crashes += 1;
            }
        }
        if committed.is_none() {
            after_finish += 1;
            if after_finish > 20 && crashes > 2 {
                break;
            }
        }
    }
    assert!(read_whole(&d) == model, "seed {seed}: the open disk");
    drop(d);
    assert!(
        read_with(&engine, "d", &new_key()) == model,
        "seed {seed}: the new key alone"
    );
    if !seed.is_multiple_of(3) {
        assert!(
            read_snapshot(&engine, "s", &old) == snap,
            "seed {seed}: snapshot"
        );
        engine.delete_snapshot("s").unwrap();
    }
    engine.delete_disk("d").unwrap();
    assert_eq!(engine.chunks_in_use().unwrap(), 0, "seed {seed}: space");
}

#[test]
fn no_pattern_or_key_reaches_the_files_of_a_rekeyed_disk() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(atrest_store::RedbStore::open(&dir.path().join("meta.redb")).unwrap());
    let pool = Arc::new(FileStorage::open(&dir.path().join("pool")).unwrap());
    let engine = Engine::open(store, pool).unwrap();
    engine.create_disk("d", &spec(4 << 20, 512)).unwrap();
    let (old, new) = (key(), new_key());
    let pattern: Vec<u8> = b"ATREST-PLAINTEXT-PATTERN-0123456".repeat(64);
    let d = engine.open_disk("d", Some(&old)).unwrap();
    for i in 0..16u64 {
        d.write(i * 100 * 512, &pattern, false).unwrap();
    }
    d.flush().unwrap();
    engine.snapshot_disk("d", "s", None, Labels::new()).unwrap();
    d.start_rekey(new_key_info(), &new).unwrap();
    let mut i = 0;
    while !d.rekey_step(2).unwrap().finished {
        // Writes during the re-encryption, on both sides of `done`.
        d.write(i * 37 * 512, &pattern, i.is_multiple_of(3))
            .unwrap();
        i += 1;
    }
    d.write(512, &pattern, true).unwrap();
    let mut back = vec![0u8; pattern.len()];
    d.read(512, &mut back).unwrap();
    assert_eq!(back, pattern);
    drop((d, engine));
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(
            !bytes.windows(32).any(|w| w == &pattern[..32]),
            "plaintext in a file"
        );
        for k in [&old, &new] {
            for half in [&k.expose()[..32], &k.expose()[32..]] {
                assert!(!bytes.windows(32).any(|w| w == half), "key in a file");
            }
        }
    }
}

#[test]
fn refused_during_a_rekey_and_nothing_changes() {
    let (engine, _) = mem_engine();
    let (old, new) = (key(), new_key());
    engine.create_disk("d", &spec(1 << 20, 512)).unwrap();
    engine
        .create_disk(
            "plain",
            &DiskSpec {
                key: None,
                ..spec(1 << 20, 512)
            },
        )
        .unwrap();
    engine.snapshot_disk("d", "s", None, Labels::new()).unwrap();
    // Not encrypted: nothing to re-encrypt.
    let p = engine.open_disk("plain", None).unwrap();
    assert!(matches!(
        p.start_rekey(new_key_info(), &new),
        Err(DiskError::Invalid(_))
    ));
    assert!(matches!(p.rekey_step(1), Err(DiskError::Invalid(_))));
    drop(p);
    assert_eq!(engine.disk("plain").unwrap().rekey, None);
    // Not being re-encrypted: both keys are refused.
    assert!(matches!(
        engine.open_disk_rekeying("d", &old, &new),
        Err(DiskError::Invalid(_))
    ));
    let d = engine.open_disk("d", Some(&old)).unwrap();
    d.write(0, &[5; 4096], false).unwrap();
    d.start_rekey(new_key_info(), &new).unwrap();
    let before = engine.disk("d").unwrap();
    let conflict = |r: Result<_, DiskError>, what: &str| match r {
        Err(DiskError::Conflict(m)) => assert!(m.contains("re-encrypted"), "{what}: {m}"),
        Err(e) => panic!("{what}: {e}"),
        Ok(_) => panic!("{what}: accepted"),
    };
    conflict(d.start_rekey(new_key_info(), &new).map(drop), "again");
    conflict(
        engine
            .snapshot_disk("d", "s2", None, Labels::new())
            .map(drop),
        "snapshot",
    );
    conflict(engine.rewrap("d", key_info()).map(drop), "rewrap");
    drop(d);
    conflict(engine.rollback("d", "s").map(drop), "rollback");
    // One key is not enough to open it.
    conflict(engine.open_disk("d", Some(&old)).map(drop), "open");
    conflict(engine.open_disk("d", Some(&new)).map(drop), "open");
    assert_eq!(engine.disk("d").unwrap(), before);
    assert_eq!(engine.snapshots().unwrap().len(), 1);
    // Clones of its snapshots are fine.
    engine
        .clone_snapshot("s", "c", None, Labels::new())
        .unwrap();
    assert_eq!(read_with(&engine, "c", &old), vec![0u8; 1 << 20]);
    // Resumed through a new handle; once finished, all is allowed again.
    let d = engine.open_disk_rekeying("d", &old, &new).unwrap();
    while !d.rekey_step(64).unwrap().finished {}
    assert!(matches!(d.rekey_step(1), Err(DiskError::Invalid(_))));
    drop(d);
    assert!(matches!(
        engine.open_disk_rekeying("d", &old, &new),
        Err(DiskError::Invalid(_))
    ));
    let mut b = vec![0u8; 4096];
    engine
        .open_disk("d", Some(&new))
        .unwrap()
        .read(0, &mut b)
        .unwrap();
    assert_eq!(b, vec![5; 4096]);
    engine
        .snapshot_disk("d", "s2", None, Labels::new())
        .unwrap();
    assert_eq!(engine.snapshot("s2").unwrap().key, Some(new_key_info()));
    // A disk that is not open may be deleted mid-way.
    let d = engine.open_disk("c", Some(&old)).unwrap();
    d.write(0, &[6; 4096], false).unwrap();
    d.start_rekey(new_key_info(), &new).unwrap();
    d.rekey_step(1).unwrap();
    drop(d);
    engine.delete_disk("c").unwrap();
}

/// Reads look their chunks up under the engine lock and read and decrypt
/// them outside it. Readers racing re-encryption steps (which move chunks
/// and free the old ones), and a writer that trims, rewrites and flushes
/// (so freed chunks are reused), must always see the data, never another
/// chunk's bytes or bytes under the wrong key.
#[test]
fn reads_racing_rekey_steps_and_chunk_reuse_see_the_data() {
    let (engine, _) = mem_engine();
    let size = 16 * CHUNK;
    engine.create_disk("d", &spec(size, 4096)).unwrap();
    engine.create_disk("scratch", &spec(size, 4096)).unwrap();
    let d = Arc::new(engine.open_disk("d", Some(&key())).unwrap());
    let scratch = engine.open_disk("scratch", Some(&key())).unwrap();
    let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8 | 1).collect();
    d.write(0, &data, false).unwrap();
    d.flush().unwrap();
    d.start_rekey(new_key_info(), &new_key()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..3u64)
        .map(|t| {
            let (d, stop, data) = (Arc::clone(&d), Arc::clone(&stop), data.clone());
            std::thread::spawn(move || {
                let mut reads = 0u64;
                let mut buf = vec![0u8; 3 * CHUNK as usize];
                while !stop.load(Ordering::Relaxed) || reads < 50 {
                    let off = ((reads * 7 + t * 5) % 13) * CHUNK;
                    d.read(off, &mut buf).unwrap();
                    let want = &data[off as usize..off as usize + buf.len()];
                    assert!(buf == want, "read at {off} saw other bytes");
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    // Churn on another disk: chunks freed and reused after each flush.
    let churn = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let junk = vec![0xeeu8; CHUNK as usize];
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let at = (i % 16) * CHUNK;
                scratch.write(at, &junk, false).unwrap();
                scratch.trim(at, CHUNK).unwrap();
                scratch.flush().unwrap();
                i += 1;
            }
        })
    };
    while !d.rekey_step(1).unwrap().finished {
        std::thread::yield_now();
    }
    stop.store(true, Ordering::Relaxed);
    churn.join().unwrap();
    for r in readers {
        assert!(r.join().unwrap() >= 50);
    }
    let mut all = vec![0u8; size as usize];
    d.read(0, &mut all).unwrap();
    assert!(all == data);
}
