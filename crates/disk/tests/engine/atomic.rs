//! Every metadata operation, and a flushed or FUA write, against a power
//! loss at each step of its commit: the pool sync failing, the store commit
//! failing, or both succeeding; then the power is cut (unsynced pool writes
//! kept, dropped or torn at random) and the engine reopened. A metadata
//! operation leaves exactly the state before it or exactly the state after
//! it; a write leaves each sector as before or as written.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use atrest_disk::{DiskError, DiskInfo, DiskSpec, Engine, KeyInfo, Labels, SnapshotInfo};
use atrest_store::MemoryStore;

use super::{FaultyStore, MemPool, Rng, key, key_info, pattern, read_all};

/// What an engine shows: records, every disk's contents, chunks in use.
#[derive(PartialEq, Eq)]
struct Seen {
    disks: Vec<DiskInfo>,
    snapshots: Vec<SnapshotInfo>,
    contents: Vec<Vec<u8>>,
    chunks: u64,
}

impl std::fmt::Debug for Seen {
    /// Contents as a length and a checksum each (a failure stays readable).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sums: Vec<(usize, u64)> = self
            .contents
            .iter()
            .map(|c| {
                let sum = c.iter().fold(0u64, |h, &b| {
                    h.wrapping_mul(0x100_0000_01b3).wrapping_add(u64::from(b))
                });
                (c.len(), sum)
            })
            .collect();
        f.debug_struct("Seen")
            .field("disks", &self.disks)
            .field("snapshots", &self.snapshots)
            .field("contents", &sums)
            .field("chunks", &self.chunks)
            .finish()
    }
}

fn observe(e: &Arc<Engine>) -> Seen {
    let disks = e.disks().unwrap();
    let contents = disks
        .iter()
        .map(|d| read_all(e, &d.id, d.key.is_some()))
        .collect();
    Seen {
        snapshots: e.snapshots().unwrap(),
        chunks: e.chunks_in_use().unwrap(),
        disks,
        contents,
    }
}

fn spec(size: u64) -> DiskSpec {
    DiskSpec {
        size,
        block_size: 512,
        key: Some(key_info()),
        labels: Labels::new(),
    }
}

/// A disk `d` with data, a snapshot `s` of it, data written after, and a
/// clone `c` of `s`; all committed.
fn setup(rng: &mut Rng) -> (Arc<FaultyStore>, Arc<MemPool>, Arc<Engine>) {
    let store = Arc::new(FaultyStore {
        inner: MemoryStore::new(),
        fail_commit: AtomicBool::new(false),
    });
    let pool = Arc::new(MemPool::default());
    let e = Engine::open(store.clone(), pool.clone()).unwrap();
    e.create_disk("d", &spec(256 << 10)).unwrap();
    let k = key();
    {
        let d = e.open_disk("d", Some(&k)).unwrap();
        d.write(0, &pattern(rng, 256 << 10), false).unwrap();
        d.flush().unwrap();
    }
    e.snapshot_disk("d", "s", None, Labels::new()).unwrap();
    {
        let d = e.open_disk("d", Some(&k)).unwrap();
        d.write(0, &pattern(rng, 64 << 10), false).unwrap();
        d.flush().unwrap();
    }
    e.clone_snapshot("s", "c", None, Labels::new()).unwrap();
    (store, pool, e)
}

type Op = fn(&Arc<Engine>) -> Result<(), DiskError>;

fn other_key() -> KeyInfo {
    KeyInfo {
        key_arn: "arn:aws:kms:us-east-1:111122223333:key/other".into(),
        wrapped: vec![8; 40],
        grant_id: Some("g".into()),
    }
}

fn write_op(e: &Arc<Engine>, fua: bool) -> Result<(), DiskError> {
    let k = key();
    let d = e.open_disk("d", Some(&k))?;
    // In place (the top layer owns chunk 0) and copy-on-write (chunk 2).
    d.write(4096, &[0xA5; 8192], fua)?;
    d.write(2 * 65536 + 512, &[0x5A; 4096], fua)?;
    if fua { Ok(()) } else { d.flush() }
}

const METADATA: [(&str, Op); 9] = [
    ("create", |e| e.create_disk("n", &spec(128 << 10)).map(drop)),
    ("snapshot", |e| {
        e.snapshot_disk("d", "s2", None, Labels::new()).map(drop)
    }),
    ("clone", |e| {
        e.clone_snapshot("s", "c2", None, Labels::new()).map(drop)
    }),
    ("rollback", |e| e.rollback("d", "s").map(drop)),
    ("resize", |e| e.resize("d", 512 << 10).map(drop)),
    ("rewrap", |e| e.rewrap("d", other_key()).map(drop)),
    ("delete disk", |e| e.delete_disk("c").map(drop)),
    ("delete snapshot", |e| e.delete_snapshot("s").map(drop)),
    ("set labels", |e| {
        e.set_labels("d", Labels::from([("a".into(), "b".into())]))
            .map(drop)
    }),
];

const WRITES: [(&str, Op); 2] = [
    ("write + flush", |e| write_op(e, false)),
    ("FUA write", |e| write_op(e, true)),
];

/// One operation under one fault, then a power cut.
struct Trial {
    /// The state before the operation.
    before: Seen,
    /// What the operation answered.
    result: Result<(), DiskError>,
    /// The state right after a successful operation.
    live: Option<Seen>,
    /// The state after the power cut and a reopen.
    crashed: Seen,
}

/// Runs `op` on a fresh [`setup`] with `fault` (0: the pool sync fails;
/// 1: the store commit fails; 2: both succeed), then cuts the power and
/// reopens. A failed commit must stop the engine until it is reopened.
fn trial(op: Op, fault: u32, rng: &mut Rng) -> Trial {
    let (store, pool, e) = setup(rng);
    let before = observe(&e);
    pool.fail_sync.store(fault == 0, Ordering::SeqCst);
    store.fail_commit.store(fault == 1, Ordering::SeqCst);
    let result = op(&e);
    pool.fail_sync.store(false, Ordering::SeqCst);
    store.fail_commit.store(false, Ordering::SeqCst);
    let live = if result.is_ok() {
        Some(observe(&e))
    } else {
        assert!(matches!(result, Err(DiskError::Failed(_))), "{result:?}");
        assert!(matches!(e.disks(), Err(DiskError::Failed(_))));
        None
    };
    assert_eq!(result.is_ok(), fault == 2, "fault {fault}: {result:?}");
    drop(e);
    let e = Engine::open(store, Arc::new(pool.crash(rng))).unwrap();
    Trial {
        before,
        result,
        live,
        crashed: observe(&e),
    }
}

#[test]
fn each_metadata_operation_is_all_or_nothing_at_every_step_of_its_commit() {
    for seed in 1..=6u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        for (name, op) in METADATA {
            for fault in 0..3 {
                let t = trial(op, fault, &mut rng);
                match &t.live {
                    Some(after) => {
                        assert_eq!(
                            &t.crashed, after,
                            "{name}: committed, then the power was cut"
                        );
                        assert_ne!(after, &t.before, "{name} changed nothing");
                    }
                    None => assert_eq!(
                        t.crashed, t.before,
                        "{name}: fault {fault}, then the power was cut"
                    ),
                }
            }
        }
    }
}

#[test]
fn a_flushed_or_fua_write_survives_and_an_unflushed_one_is_per_sector_old_or_new() {
    for seed in 1..=12u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        for (name, op) in WRITES {
            for fault in 0..3 {
                let Trial {
                    before,
                    result,
                    crashed: got,
                    ..
                } = trial(op, fault, &mut rng);
                assert_eq!(got.disks, before.disks, "{name} {fault}");
                assert_eq!(got.snapshots, before.snapshots, "{name} {fault}");
                let i = got.disks.iter().position(|d| d.id == "d").unwrap();
                // Other disks are untouched.
                for (j, c) in got.contents.iter().enumerate() {
                    if j != i {
                        assert!(c == &before.contents[j], "{name} {fault}: disk {j} changed");
                    }
                }
                // What the write meant the disk to read as.
                let old = &before.contents[i];
                let mut new = old.clone();
                new[4096..4096 + 8192].fill(0xA5);
                new[2 * 65536 + 512..2 * 65536 + 512 + 4096].fill(0x5A);
                if result.is_ok() {
                    assert!(got.contents[i] == new, "{name}: acknowledged, then lost");
                } else {
                    for (s, ((g, o), n)) in got.contents[i]
                        .chunks(512)
                        .zip(old.chunks(512))
                        .zip(new.chunks(512))
                        .enumerate()
                    {
                        assert!(
                            g == o || g == n,
                            "{name} {fault}: sector {s} is neither old nor new"
                        );
                    }
                }
            }
        }
    }
}
