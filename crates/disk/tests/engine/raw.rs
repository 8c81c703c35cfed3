//! Raw chunks (issue 21): a snapshot's chunks exported as stored, never
//! decrypted, and written back into a disk of a second engine under the
//! same data key, read the same as the snapshot (with trims, a rollback to
//! a smaller size then growth, so that chunks show only partly through a
//! layer's limit, and a size that is not a multiple of the chunk); after a
//! re-encryption under the new key; the errors; and a power cut before or
//! during the flush of raw writes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use atrest_crypto::XtsKey;
use atrest_disk::{CHUNK, DiskError, DiskSpec, Engine, KeyInfo, Labels, RawChunk};
use atrest_store::MemoryStore;

use super::rekey::{new_key, new_key_info, trim_random, write_random};
use super::{FaultyStore, MemPool, Rng, key, key_info, mem_engine, pattern};

fn spec(size: u64, block_size: u32, key: Option<KeyInfo>) -> DiskSpec {
    DiskSpec {
        size,
        block_size,
        key,
        labels: Labels::new(),
    }
}

/// Reads snapshot `id` through a throwaway clone.
fn read_snapshot(engine: &Arc<Engine>, id: &str, key: Option<&XtsKey>) -> Vec<u8> {
    engine
        .clone_snapshot(id, "probe", None, Labels::new())
        .unwrap();
    let d = engine.open_disk("probe", key).unwrap();
    let mut got = vec![0u8; d.size() as usize];
    d.read(0, &mut got).unwrap();
    drop(d);
    engine.delete_disk("probe").unwrap();
    got
}

/// Every chunk of snapshot `id`, asked for in ranges of up to three.
fn export(engine: &Engine, id: &str) -> Vec<RawChunk> {
    let total = engine.snapshot(id).unwrap().size.div_ceil(CHUNK);
    let mut out = Vec::new();
    let mut first = 0;
    while first < total {
        let n = (total - first).min(3);
        let got = engine.snapshot_raw_chunks(id, first, n).unwrap();
        assert_eq!(got.len() as u64, n);
        out.extend(got);
        first += n;
    }
    out
}

/// The exported chunks against what the snapshot reads as (`plain`): a
/// `Zero` chunk reads as zeros; `Data` is a positive multiple of the block
/// size within the snapshot, what it leaves out reads as zeros, and its
/// bytes are the plaintext of an unencrypted snapshot and no sector of it
/// is the plaintext of an encrypted one.
fn check_export(chunks: &[RawChunk], plain: &[u8], bs: u32, encrypted: bool) {
    let bs = bs as usize;
    for (i, c) in chunks.iter().enumerate() {
        let start = i * CHUNK as usize;
        let end = (start + CHUNK as usize).min(plain.len());
        let want = &plain[start..end];
        match c {
            RawChunk::Zero => assert!(want.iter().all(|b| *b == 0), "chunk {i}: Zero, not zeros"),
            RawChunk::Data { bytes } => {
                let n = bytes.len();
                assert!(
                    n > 0 && n.is_multiple_of(bs) && start + n <= end,
                    "chunk {i}: {n}"
                );
                assert!(want[n..].iter().all(|b| *b == 0), "chunk {i}: hidden data");
                if encrypted {
                    for (s, (c, p)) in bytes.chunks(bs).zip(want.chunks(bs)).enumerate() {
                        assert_ne!(c, p, "chunk {i} sector {s} is plaintext");
                    }
                } else {
                    assert!(bytes[..] == want[..n], "chunk {i}: not as stored");
                }
            }
        }
    }
}

/// Writes `chunks` into a new disk of a second engine (its own pool and
/// store) with `key` (the data key and its wrapped form), flushes, and
/// reads it all. With `junk`, the disk holds other data first, which every
/// chunk must replace.
fn restore(
    chunks: &[RawChunk],
    size: u64,
    bs: u32,
    key: Option<(&XtsKey, KeyInfo)>,
    junk: Option<&mut Rng>,
) -> Vec<u8> {
    let (engine, _) = mem_engine();
    let (k, info) = key.map_or((None, None), |(k, i)| (Some(k), Some(i)));
    engine.create_disk("r", &spec(size, bs, info)).unwrap();
    let d = engine.open_disk("r", k).unwrap();
    if let Some(rng) = junk {
        d.write(0, &pattern(rng, size as usize), false).unwrap();
        d.flush().unwrap();
    }
    for (i, c) in chunks.iter().enumerate() {
        d.write_raw_chunk(i as u64, c).unwrap();
    }
    d.flush().unwrap();
    drop(d);
    // Reopened from what the flush made durable.
    let mut got = vec![0u8; size as usize];
    engine.open_disk("r", k).unwrap().read(0, &mut got).unwrap();
    got
}

fn is_zero(c: &RawChunk) -> bool {
    matches!(c, RawChunk::Zero)
}

fn data_len(c: &RawChunk) -> Option<usize> {
    match c {
        RawChunk::Zero => None,
        RawChunk::Data { bytes } => Some(bytes.len()),
    }
}

#[test]
fn raw_chunks_round_trip_into_a_second_engine() {
    for (seed, bs, encrypted, anywhere) in [
        (1, 512, true, false),
        (2, 4096, true, false),
        (3, 512, false, false),
        (4, 4096, false, false),
        (5, 512, true, true),
        (6, 4096, true, true),
        (7, 512, false, true),
        (8, 4096, true, true),
    ] {
        round_trip(seed, bs, encrypted, anywhere);
    }
}

/// Disk `d`: data and trims, snapshot `s1` (6 chunks and 8 KiB); grown,
/// data past the old size, snapshot `s2`; rolled back to `s1` and grown
/// again, more data and a whole-chunk trim, snapshot `final`. Each
/// snapshot round-trips. Unless `anywhere`, the random writes and trims
/// stay in the first six chunks, and the shape of the export is checked
/// by hand too.
#[allow(clippy::too_many_lines, reason = "one scenario, one place")]
fn round_trip(seed: u64, bs: u32, encrypted: bool, anywhere: bool) {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let (engine, _) = mem_engine();
    let k = key();
    let key_opt = encrypted.then_some(&k);
    let s0 = 6 * CHUNK + 8192;
    engine
        .create_disk("d", &spec(s0, bs, encrypted.then(key_info)))
        .unwrap();
    // Where random writes and trims go: the disk, or its first six chunks.
    let random_part = |len: usize| if anywhere { len } else { 6 * CHUNK as usize };
    let mut model = vec![0u8; s0 as usize];
    {
        let d = engine.open_disk("d", key_opt).unwrap();
        for _ in 0..8 {
            let n = random_part(model.len());
            write_random(&mut rng, &d, &mut model[..n], false);
        }
        // The partial last chunk holds data.
        let tail = pattern(&mut rng, 8192);
        d.write(6 * CHUNK, &tail, false).unwrap();
        model[6 * CHUNK as usize..].copy_from_slice(&tail);
        for _ in 0..2 {
            let n = random_part(model.len());
            trim_random(&mut rng, &d, &mut model[..n]);
        }
    }
    engine
        .snapshot_disk("d", "s1", None, Labels::new())
        .unwrap();
    let m1 = model.clone();

    // Grown: data past the old size, up into the partial last chunk.
    let s2 = 9 * CHUNK + 8192;
    engine.resize("d", s2).unwrap();
    model.resize(s2 as usize, 0);
    {
        let d = engine.open_disk("d", key_opt).unwrap();
        let more = pattern(&mut rng, 3 * CHUNK as usize);
        d.write(6 * CHUNK + 4096, &more, false).unwrap();
        model[(6 * CHUNK + 4096) as usize..(9 * CHUNK + 4096) as usize].copy_from_slice(&more);
    }
    engine
        .snapshot_disk("d", "s2", None, Labels::new())
        .unwrap();
    let m2 = model.clone();

    // Back to s1's size, then grown again: chunk 6 shows s1's chunk only
    // below s1's size, and s2's data past it must not show.
    engine.rollback("d", "s1").unwrap();
    let s3 = 14 * CHUNK + 20480;
    engine.resize("d", s3).unwrap();
    model = m1.clone();
    model.resize(s3 as usize, 0);
    {
        let d = engine.open_disk("d", key_opt).unwrap();
        for _ in 0..6 {
            let n = random_part(model.len());
            let fua = rng.below(3) == 0;
            write_random(&mut rng, &d, &mut model[..n], fua);
        }
        // A chunk of the grown area, filled by copy-on-write.
        let w = pattern(&mut rng, 4096);
        d.write(10 * CHUNK + 8192, &w, false).unwrap();
        model[(10 * CHUNK + 8192) as usize..(10 * CHUNK + 12288) as usize].copy_from_slice(&w);
        // A whole chunk trimmed: the zero marker over s1's data.
        d.trim(3 * CHUNK, CHUNK).unwrap();
        model[3 * CHUNK as usize..4 * CHUNK as usize].fill(0);
    }
    engine
        .snapshot_disk("d", "final", None, Labels::new())
        .unwrap();

    for (snap, want, size) in [("s1", &m1, s0), ("s2", &m2, s2), ("final", &model, s3)] {
        let what = format!("seed {seed} bs {bs} encrypted {encrypted} {snap}");
        let read = read_snapshot(&engine, snap, key_opt);
        assert!(read == *want, "{what}: the snapshot reads wrong");
        let chunks = export(&engine, snap);
        check_export(&chunks, want, bs, encrypted);
        let junk = (rng.below(2) == 0).then_some(&mut rng);
        let got = restore(&chunks, size, bs, key_opt.map(|k| (k, key_info())), junk);
        assert!(got == read, "{what}: restored differs from the snapshot");
    }
    if anywhere {
        return;
    }
    let s1 = export(&engine, "s1");
    assert_eq!(data_len(&s1[6]), Some(8192), "s1: the partial last chunk");
    let s2c = export(&engine, "s2");
    assert_eq!(data_len(&s2c[6]), Some(CHUNK as usize));
    // s2's layer holds all of chunk 9, but nothing past the snapshot's size
    // is exported.
    assert_eq!(data_len(&s2c[9]), Some(8192), "s2: cut at its size");
    let f = export(&engine, "final");
    assert_eq!(f.len(), 15);
    assert_eq!(
        data_len(&f[6]),
        Some(8192),
        "final: chunk 6 shows through s1's limit only"
    );
    assert!(is_zero(&f[3]), "final: a trimmed chunk is Zero");
    assert_eq!(data_len(&f[10]), Some(CHUNK as usize));
    for i in [7, 8, 9, 11, 12, 13, 14] {
        assert!(is_zero(&f[i]), "final: unmapped chunk {i} is {:?}", f[i]);
    }
}

#[test]
fn a_snapshot_after_a_finished_rekey_exports_chunks_under_the_new_key() {
    let mut rng = Rng(0x5eed);
    let (engine, _) = mem_engine();
    let (old, new) = (key(), new_key());
    let size = 8 * CHUNK + 4096;
    engine
        .create_disk("d", &spec(size, 512, Some(key_info())))
        .unwrap();
    let mut model = vec![0u8; size as usize];
    let d = engine.open_disk("d", Some(&old)).unwrap();
    for _ in 0..6 {
        write_random(&mut rng, &d, &mut model, false);
    }
    drop(d);
    engine
        .snapshot_disk("d", "before", None, Labels::new())
        .unwrap();
    let before = model.clone();
    let d = engine.open_disk("d", Some(&old)).unwrap();
    write_random(&mut rng, &d, &mut model, false);
    d.start_rekey(new_key_info(), &new).unwrap();
    while !d.rekey_step(3).unwrap().finished {}
    for _ in 0..3 {
        write_random(&mut rng, &d, &mut model, false);
    }
    drop(d);
    engine
        .snapshot_disk("d", "after", None, Labels::new())
        .unwrap();
    assert_eq!(engine.snapshot("after").unwrap().key, Some(new_key_info()));

    let chunks = export(&engine, "after");
    check_export(&chunks, &model, 512, true);
    let got = restore(&chunks, size, 512, Some((&new, new_key_info())), None);
    assert!(got == model, "restored under the new key differs");
    assert!(got == read_snapshot(&engine, "after", Some(&new)));
    // Under the old key the same bytes are garbage.
    let wrong = restore(&chunks, size, 512, Some((&old, key_info())), None);
    assert!(
        wrong != model,
        "the new key's chunks read under the old key"
    );
    // The snapshot from before keeps the old key.
    let chunks = export(&engine, "before");
    let got = restore(&chunks, size, 512, Some((&old, key_info())), None);
    assert!(
        got == before,
        "the older snapshot under the old key differs"
    );
}

#[test]
fn raw_chunk_errors_change_nothing() {
    let (engine, _) = mem_engine();
    let k = key();
    let size = 2 * CHUNK + 4096;
    engine
        .create_disk("d", &spec(size, 512, Some(key_info())))
        .unwrap();
    let d = engine.open_disk("d", Some(&k)).unwrap();
    d.write(0, &[7; 8192], false).unwrap();
    d.write(2 * CHUNK, &[8; 4096], false).unwrap();
    engine.snapshot_disk("d", "s", None, Labels::new()).unwrap();

    assert!(matches!(
        engine.snapshot_raw_chunks("nope", 0, 1),
        Err(DiskError::NotFound {
            kind: "snapshot",
            ..
        })
    ));
    for (first, count) in [(0, 4), (3, 1), (2, 2), (u64::MAX, 2), (1, u64::MAX)] {
        assert!(
            matches!(
                engine.snapshot_raw_chunks("s", first, count),
                Err(DiskError::Invalid(_))
            ),
            "{first} + {count}"
        );
    }
    assert!(engine.snapshot_raw_chunks("s", 3, 0).unwrap().is_empty());
    let all = engine.snapshot_raw_chunks("s", 0, 3).unwrap();
    assert_eq!(
        all.iter().map(data_len).collect::<Vec<_>>(),
        [Some(CHUNK as usize), None, Some(4096)]
    );

    // The Debug form shows lengths, never bytes.
    assert_eq!(format!("{:?}", all[2]), "Data { visible: 4096, .. }");
    assert_eq!(format!("{:?}", all[1]), "Zero");

    let used = engine.chunks_in_use().unwrap();
    let mut contents = vec![0u8; size as usize];
    d.read(0, &mut contents).unwrap();
    let data = |n: usize| RawChunk::Data { bytes: vec![9; n] };
    for (idx, chunk) in [
        (3, RawChunk::Zero),
        (3, data(512)),
        (u64::MAX, data(512)),
        (0, data(0)),
        (0, data(100)),
        (0, data(513)),
        (0, data(CHUNK as usize + 512)),
        // Past the disk's size: 4 KiB of chunk 2 are in the disk.
        (2, data(8192)),
    ] {
        assert!(
            matches!(d.write_raw_chunk(idx, &chunk), Err(DiskError::Invalid(_))),
            "{idx} {chunk:?}"
        );
    }
    assert_eq!(engine.chunks_in_use().unwrap(), used);
    let mut now = vec![0u8; size as usize];
    d.read(0, &mut now).unwrap();
    assert!(now == contents);
    d.write_raw_chunk(2, &data(4096)).unwrap();
    drop(d);

    // Block size 4096: 512 bytes are not a block.
    engine.create_disk("big", &spec(size, 4096, None)).unwrap();
    let b = engine.open_disk("big", None).unwrap();
    assert!(matches!(
        b.write_raw_chunk(0, &data(512)),
        Err(DiskError::Invalid(_))
    ));
    b.write_raw_chunk(0, &data(4096)).unwrap();
    drop(b);

    // While the disk is re-encrypted: Conflict, and nothing changes.
    let d = engine.open_disk("d", Some(&k)).unwrap();
    d.start_rekey(new_key_info(), &new_key()).unwrap();
    let (record, used) = (engine.disk("d").unwrap(), engine.chunks_in_use().unwrap());
    for chunk in [RawChunk::Zero, data(4096), data(CHUNK as usize)] {
        match d.write_raw_chunk(0, &chunk) {
            Err(DiskError::Conflict(m)) => assert!(m.contains("re-encrypted"), "{m}"),
            other => panic!("{chunk:?}: {other:?}"),
        }
    }
    assert_eq!(engine.disk("d").unwrap(), record);
    assert_eq!(engine.chunks_in_use().unwrap(), used);
    // Its older snapshot still exports.
    assert_eq!(engine.snapshot_raw_chunks("s", 0, 3).unwrap(), all);
}

/// Raw writes over a disk with data, then a power cut: with no flush, or
/// with the flush's pool sync or store commit failing, each chunk reads
/// wholly as before or as written; after a flush, as written.
#[test]
fn raw_writes_survive_a_flush_and_are_whole_chunks_old_or_new_without_one() {
    for seed in 1..=6u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        for fault in 0..4 {
            raw_crash(&mut rng, fault, seed);
        }
    }
}

/// `fault`: 0 the pool sync fails, 1 the store commit fails, 2 the flush
/// succeeds, 3 no flush.
fn raw_crash(rng: &mut Rng, fault: u32, seed: u64) {
    let k = key();
    let size = 6 * CHUNK + 8192;
    let bs = if seed.is_multiple_of(2) { 512 } else { 4096 };
    // The source: data, a trim, a snapshot.
    let (src, _) = mem_engine();
    src.create_disk("src", &spec(size, bs, Some(key_info())))
        .unwrap();
    let mut new = vec![0u8; size as usize];
    {
        let d = src.open_disk("src", Some(&k)).unwrap();
        for _ in 0..6 {
            write_random(rng, &d, &mut new, false);
        }
        d.trim(CHUNK, CHUNK).unwrap();
        new[CHUNK as usize..2 * CHUNK as usize].fill(0);
    }
    src.snapshot_disk("src", "s", None, Labels::new()).unwrap();
    let chunks = export(&src, "s");

    // The target: a disk with other data, flushed.
    let store = Arc::new(FaultyStore {
        inner: MemoryStore::new(),
        fail_commit: AtomicBool::new(false),
    });
    let pool = Arc::new(MemPool::default());
    let e = Engine::open(store.clone(), pool.clone()).unwrap();
    e.create_disk("r", &spec(size, bs, Some(key_info())))
        .unwrap();
    let old = pattern(rng, size as usize);
    let d = e.open_disk("r", Some(&k)).unwrap();
    d.write(0, &old, false).unwrap();
    d.flush().unwrap();
    let records = e.disks().unwrap();
    for (i, c) in chunks.iter().enumerate() {
        // Some twice: the first fresh chunk is replaced before the commit.
        if i % 3 == 0 {
            let junk = RawChunk::Data {
                bytes: pattern(rng, CHUNK.min(size - i as u64 * CHUNK) as usize),
            };
            d.write_raw_chunk(i as u64, &junk).unwrap();
        }
        d.write_raw_chunk(i as u64, c).unwrap();
    }
    pool.fail_sync.store(fault == 0, Ordering::SeqCst);
    store.fail_commit.store(fault == 1, Ordering::SeqCst);
    let flushed = match fault {
        3 => false,
        _ => {
            let r = d.flush();
            assert_eq!(r.is_ok(), fault == 2, "fault {fault}: {r:?}");
            r.is_ok()
        }
    };
    pool.fail_sync.store(false, Ordering::SeqCst);
    store.fail_commit.store(false, Ordering::SeqCst);
    drop((d, e));

    let e = Engine::open(store, Arc::new(pool.crash(rng))).unwrap();
    assert_eq!(e.disks().unwrap(), records);
    let mut got = vec![0u8; size as usize];
    e.open_disk("r", Some(&k))
        .unwrap()
        .read(0, &mut got)
        .unwrap();
    let what = format!("seed {seed} fault {fault}");
    if flushed {
        assert!(got == new, "{what}: flushed, then lost");
        return;
    }
    let c = CHUNK as usize;
    for (i, ((g, o), n)) in got
        .chunks(c)
        .zip(old.chunks(c))
        .zip(new.chunks(c))
        .enumerate()
    {
        assert!(g == o || g == n, "{what}: chunk {i} is neither old nor new");
    }
}

/// Exports racing the deletion of the snapshot, the reuse of its chunks by
/// another disk and the snapshot taken again under the same id (with the
/// same data, so the same ciphertext): each export is the snapshot's
/// chunks or `NotFound`, never other data.
#[test]
fn exports_racing_deletion_and_chunk_reuse_see_the_snapshot_or_nothing() {
    let (engine, _) = mem_engine();
    let k = key();
    // More chunks than one hold of the reuse gate reads.
    let size = 20 * CHUNK;
    let data = pattern(&mut Rng(3), size as usize);
    let make = || {
        engine
            .create_disk("d", &spec(size, 4096, Some(key_info())))
            .unwrap();
        let d = engine.open_disk("d", Some(&k)).unwrap();
        d.write(0, &data, false).unwrap();
        drop(d);
        engine.snapshot_disk("d", "s", None, Labels::new()).unwrap();
        // The snapshot's layer is a leaf: deleting it frees its chunks.
        engine.delete_disk("d").unwrap();
    };
    make();
    let total = size / CHUNK;
    let reference = engine.snapshot_raw_chunks("s", 0, total).unwrap();
    engine
        .create_disk("other", &spec(size, 4096, Some(key_info())))
        .unwrap();
    let stop = AtomicBool::new(false);
    let (mut ok, mut gone) = (0u32, 0u32);
    std::thread::scope(|sc| {
        sc.spawn(|| {
            let o = engine.open_disk("other", Some(&k)).unwrap();
            for i in 0..24u8 {
                engine.delete_snapshot("s").unwrap();
                // Trimmed, then written: fresh chunks, from the ones the
                // snapshot just gave back.
                o.trim(0, size).unwrap();
                o.write(0, &vec![i | 0x80; size as usize], false).unwrap();
                o.flush().unwrap();
                make();
                // Time for exports of the new snapshot to complete, or
                // to be cut short by the next deletion.
                let ms = [0, 3, 30][usize::from(i % 3)];
                std::thread::sleep(std::time::Duration::from_millis(ms));
            }
            stop.store(true, Ordering::SeqCst);
        });
        while !stop.load(Ordering::SeqCst) {
            match engine.snapshot_raw_chunks("s", 0, total) {
                Ok(got) => {
                    assert!(got == reference, "an export read other data");
                    ok += 1;
                }
                Err(DiskError::NotFound { .. }) => gone += 1,
                Err(e) => panic!("{e}"),
            }
        }
    });
    assert!(ok > 0, "no export completed ({gone} not found)");
}
