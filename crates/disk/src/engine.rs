//! The engine: disks, snapshots and layers in memory, their commit to the
//! store, and the data path.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use atrest_crypto::XtsKey;
use atrest_crypto::xts::Xts256;
use atrest_store::{ReadTx, Store, Table};
use serde::{Deserialize, Serialize};

use crate::{
    CHUNK, DiskError, DiskInfo, DiskSpec, KeyInfo, Labels, SnapshotInfo, Storage, check_size,
};

mod raw;
mod rekey;

use rekey::{Keys, Layout};

const DISKS: Table = Table::new("disk.disks");
const SNAPSHOTS: Table = Table::new("disk.snapshots");
const LAYERS: Table = Table::new("disk.layers");
/// Key: layer (8 bytes BE) then chunk index (8 bytes BE); value: pool chunk
/// (8 bytes BE), [`ZERO`] for a chunk that reads as zeros.
const MAP: Table = Table::new("disk.map");
/// Key: a free pool chunk below `next_chunk` (8 bytes BE); empty value.
const FREE: Table = Table::new("disk.free");
/// `next_chunk` and `next_layer` (8 bytes BE each).
const META: Table = Table::new("disk.meta");

/// The map value of a chunk that reads as zeros.
const ZERO: u64 = u64::MAX;
const CHUNK_LEN: usize = CHUNK as usize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Owner {
    Disk(String),
    Snapshot(String),
    None,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct LayerRecord {
    parent: Option<u64>,
    /// The parent chain shows through only below this offset.
    limit: u64,
    /// Layers whose parent this is.
    children: u32,
    owner: Owner,
}

#[derive(Debug)]
struct Layer {
    rec: LayerRecord,
    map: BTreeMap<u64, u64>,
}

/// A record changed since the last commit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Dirty {
    Disk(String),
    Snapshot(String),
    Layer(u64),
    Map(u64, u64),
    Free(u64),
    Meta,
}

#[derive(Default)]
struct State {
    disks: BTreeMap<String, DiskInfo>,
    snapshots: BTreeMap<String, SnapshotInfo>,
    layers: BTreeMap<u64, Layer>,
    free: BTreeSet<u64>,
    next_chunk: u64,
    next_layer: u64,
    dirty: BTreeSet<Dirty>,
    /// Chunks freed since the last commit: reusable once it is durable.
    pending_free: BTreeSet<u64>,
    /// Open handles per disk.
    open: BTreeMap<String, u32>,
    failed: Option<String>,
}

fn be(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

fn map_key(layer: u64, idx: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&be(layer));
    k[8..].copy_from_slice(&be(idx));
    k
}

fn u64_of(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.try_into().ok()?))
}

/// Every entry of `table`, read in pages.
fn scan_all(tx: &dyn ReadTx, table: Table) -> Result<Vec<atrest_store::Entry>, DiskError> {
    const PAGE: usize = 4096;
    let mut out: Vec<atrest_store::Entry> = Vec::new();
    loop {
        let after = out.last().map(|(k, _)| k.clone());
        let page = tx
            .scan(table, b"", after.as_deref(), PAGE)
            .map_err(failed)?;
        let n = page.len();
        out.extend(page);
        if n < PAGE {
            return Ok(out);
        }
    }
}

fn failed(e: impl std::fmt::Display) -> DiskError {
    DiskError::Failed(e.to_string())
}

fn damaged(what: impl std::fmt::Display) -> DiskError {
    DiskError::Failed(format!("disk metadata is damaged: {what}"))
}

/// The chunks of a disk of `size` bytes.
fn chunks(size: u64) -> u64 {
    size.div_ceil(CHUNK)
}

/// Refuses `what` on a disk that is being re-encrypted.
fn not_rekeying(d: &DiskInfo, what: &str) -> Result<(), DiskError> {
    if d.rekey.is_some() {
        return Err(DiskError::Conflict(format!(
            "disk {} is being re-encrypted; {what} it once that is finished",
            d.id
        )));
    }
    Ok(())
}

fn not_found(kind: &'static str, id: &str) -> DiskError {
    DiskError::NotFound {
        kind,
        id: id.to_owned(),
    }
}

/// The disk engine over a metadata store and a pool.
pub struct Engine {
    store: Arc<dyn Store>,
    pool: Arc<dyn Storage>,
    state: Mutex<State>,
    /// Reads look up their chunks under the state lock, then read and
    /// decrypt them outside it holding this gate shared; a commit holds it
    /// exclusively while it makes freed chunks reusable, so no chunk a read
    /// is about to read is reused (overwritten with other data) under it.
    reuse: RwLock<()>,
    /// Buffers that writes encrypt into, kept for the next write: a fresh
    /// 1 MiB allocation costs page faults and zeroing on every write.
    scratch: Mutex<Vec<Vec<u8>>>,
}

/// Scratch buffers kept, and the largest kept (bigger writes allocate).
const SCRATCH_KEPT: usize = 8;
const SCRATCH_MAX: usize = 4 << 20;

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

impl State {
    fn layer(&self, id: u64) -> Result<&Layer, DiskError> {
        self.layers
            .get(&id)
            .ok_or_else(|| damaged(format!("layer {id} is missing")))
    }

    fn layer_mut(&mut self, id: u64) -> Result<&mut Layer, DiskError> {
        self.layers
            .get_mut(&id)
            .ok_or_else(|| damaged(format!("layer {id} is missing")))
    }

    fn disk(&self, id: &str) -> Result<&DiskInfo, DiskError> {
        self.disks.get(id).ok_or_else(|| not_found("disk", id))
    }

    fn snapshot(&self, id: &str) -> Result<&SnapshotInfo, DiskError> {
        self.snapshots
            .get(id)
            .ok_or_else(|| not_found("snapshot", id))
    }

    fn check(&self) -> Result<(), DiskError> {
        match &self.failed {
            Some(r) => Err(DiskError::Failed(r.clone())),
            None => Ok(()),
        }
    }

    fn new_layer(
        &mut self,
        parent: Option<u64>,
        limit: u64,
        owner: Owner,
    ) -> Result<u64, DiskError> {
        let id = self.next_layer;
        self.next_layer += 1;
        self.dirty.insert(Dirty::Meta);
        if let Some(p) = parent {
            self.layer_mut(p)?.rec.children += 1;
            self.dirty.insert(Dirty::Layer(p));
        }
        self.layers.insert(
            id,
            Layer {
                rec: LayerRecord {
                    parent,
                    limit,
                    children: 0,
                    owner,
                },
                map: BTreeMap::new(),
            },
        );
        self.dirty.insert(Dirty::Layer(id));
        Ok(id)
    }

    /// Takes `layer`'s owner away and frees it, and then its ancestors, as
    /// long as they have neither owner nor children.
    fn release(&mut self, layer: u64) -> Result<(), DiskError> {
        self.layer_mut(layer)?.rec.owner = Owner::None;
        self.dirty.insert(Dirty::Layer(layer));
        let mut cur = Some(layer);
        while let Some(id) = cur {
            let l = self.layer(id)?;
            if l.rec.owner != Owner::None || l.rec.children > 0 {
                break;
            }
            let Some(l) = self.layers.remove(&id) else {
                break;
            };
            for (idx, phys) in l.map {
                self.dirty.insert(Dirty::Map(id, idx));
                self.free_chunk(phys);
            }
            self.dirty.insert(Dirty::Layer(id));
            cur = l.rec.parent;
            if let Some(p) = cur {
                let pl = self.layer_mut(p)?;
                pl.rec.children = pl.rec.children.saturating_sub(1);
                self.dirty.insert(Dirty::Layer(p));
            }
        }
        Ok(())
    }

    /// Takes one child away from `layer`, freeing it (and its ancestors, as
    /// [`State::release`] does) if it is left with neither owner nor
    /// children.
    fn drop_child(&mut self, layer: u64) -> Result<(), DiskError> {
        let l = self.layer_mut(layer)?;
        l.rec.children = l.rec.children.saturating_sub(1);
        let unused = l.rec.owner == Owner::None && l.rec.children == 0;
        self.dirty.insert(Dirty::Layer(layer));
        if unused {
            self.release(layer)?;
        }
        Ok(())
    }

    fn free_chunk(&mut self, phys: u64) {
        if phys != ZERO {
            self.pending_free.insert(phys);
            self.dirty.insert(Dirty::Free(phys));
        }
    }

    fn alloc(&mut self) -> u64 {
        let p = match self.free.pop_first() {
            Some(p) => p,
            None => {
                let p = self.next_chunk;
                self.next_chunk += 1;
                self.dirty.insert(Dirty::Meta);
                p
            }
        };
        self.dirty.insert(Dirty::Free(p));
        p
    }

    /// Where chunk `idx` of the chain topped by `top` is: `Some((phys,
    /// visible))` with `visible` the bytes of it the chain shows (the rest
    /// reads as zeros), or `None` if it reads as zeros.
    fn find(&self, top: u64, idx: u64) -> Result<Option<(u64, usize)>, DiskError> {
        let start = idx * CHUNK;
        let mut limit = u64::MAX;
        let mut cur = Some(top);
        while let Some(id) = cur {
            if start >= limit {
                return Ok(None);
            }
            let l = self.layer(id)?;
            if let Some(&p) = l.map.get(&idx) {
                if p == ZERO {
                    return Ok(None);
                }
                let visible = (limit - start).min(CHUNK);
                return Ok(Some((p, visible as usize)));
            }
            limit = limit.min(l.rec.limit);
            cur = l.rec.parent;
        }
        Ok(None)
    }

    /// The first chunk index at or after `from` that some layer of the chain
    /// topped by `top` maps (the chunks before it read as zeros).
    fn next_mapped(&self, top: u64, from: u64) -> Result<Option<u64>, DiskError> {
        let mut first: Option<u64> = None;
        let mut cur = Some(top);
        while let Some(id) = cur {
            let l = self.layer(id)?;
            if let Some((&idx, _)) = l.map.range(from..).next() {
                first = Some(first.map_or(idx, |f| f.min(idx)));
            }
            cur = l.rec.parent;
        }
        Ok(first)
    }

    fn is_ancestor(&self, ancestor: u64, of: u64) -> Result<bool, DiskError> {
        let mut cur = Some(of);
        while let Some(id) = cur {
            if id == ancestor {
                return Ok(true);
            }
            cur = self.layer(id)?.rec.parent;
        }
        Ok(false)
    }
}

impl Engine {
    /// Opens the engine on `store` and `pool`, loading the last committed
    /// state (what a crash left is exactly that).
    pub fn open(store: Arc<dyn Store>, pool: Arc<dyn Storage>) -> Result<Arc<Self>, DiskError> {
        let mut st = State::default();
        {
            let tx = store.read().map_err(failed)?;
            for (k, v) in scan_all(&*tx, DISKS)? {
                let d: DiskInfo = serde_json::from_slice(&v).map_err(damaged)?;
                if d.id.as_bytes() != k.as_slice() {
                    return Err(damaged("a disk record under another id"));
                }
                st.disks.insert(d.id.clone(), d);
            }
            for (_, v) in scan_all(&*tx, SNAPSHOTS)? {
                let s: SnapshotInfo = serde_json::from_slice(&v).map_err(damaged)?;
                st.snapshots.insert(s.id.clone(), s);
            }
            for (k, v) in scan_all(&*tx, LAYERS)? {
                let id = u64_of(&k).ok_or_else(|| damaged("layer key"))?;
                let rec: LayerRecord = serde_json::from_slice(&v).map_err(damaged)?;
                st.layers.insert(
                    id,
                    Layer {
                        rec,
                        map: BTreeMap::new(),
                    },
                );
            }
            for (k, v) in scan_all(&*tx, MAP)? {
                let (Some(layer), Some(idx), Some(phys)) = (
                    k.get(..8).and_then(u64_of),
                    k.get(8..).and_then(u64_of),
                    u64_of(&v),
                ) else {
                    return Err(damaged("map entry"));
                };
                st.layer_mut(layer)?.map.insert(idx, phys);
            }
            for (k, _) in scan_all(&*tx, FREE)? {
                st.free
                    .insert(u64_of(&k).ok_or_else(|| damaged("free entry"))?);
            }
            let meta = |name: &[u8]| -> Result<u64, DiskError> {
                match tx.get(META, name).map_err(failed)? {
                    Some(v) => u64_of(&v).ok_or_else(|| damaged("meta entry")),
                    None => Ok(0),
                }
            };
            st.next_chunk = meta(b"next_chunk")?;
            st.next_layer = meta(b"next_layer")?;
        }
        for d in st.disks.values() {
            st.layer(d.top)?;
            if d.rekey.is_some() && d.key.is_none() {
                return Err(damaged(format!(
                    "disk {} is being re-encrypted but has no key",
                    d.id
                )));
            }
        }
        for s in st.snapshots.values() {
            st.layer(s.layer)?;
        }
        Ok(Arc::new(Self {
            store,
            pool,
            state: Mutex::new(st),
            reuse: RwLock::new(()),
            scratch: Mutex::new(Vec::new()),
        }))
    }

    /// A buffer of at least `len` bytes to encrypt a write into. Its
    /// contents are whatever the last write left (ciphertext); the caller
    /// overwrites the part it uses.
    fn take_scratch(&self, len: usize) -> Vec<u8> {
        let kept = self
            .scratch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        let mut buf = kept.unwrap_or_default();
        if buf.len() < len {
            buf.resize(len, 0);
        }
        buf
    }

    /// Keeps `buf` for a later write, unless enough are kept or it is large.
    fn give_scratch(&self, buf: Vec<u8>) {
        if buf.len() > SCRATCH_MAX {
            return;
        }
        let mut kept = self
            .scratch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if kept.len() < SCRATCH_KEPT {
            kept.push(buf);
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>, DiskError> {
        let st = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        st.check()?;
        Ok(st)
    }

    /// Makes the state durable (the commit protocol of the crate docs).
    fn commit(&self, st: &mut State) -> Result<(), DiskError> {
        if let Err(reason) = self.commit_inner(st) {
            st.failed = Some(reason.clone());
            return Err(DiskError::Failed(reason));
        }
        Ok(())
    }

    fn commit_inner(&self, st: &mut State) -> Result<(), String> {
        self.pool
            .sync()
            .map_err(|e| format!("syncing the pool: {e}"))?;
        if st.dirty.is_empty() {
            return Ok(());
        }
        let mut tx = self.store.write().map_err(|e| e.to_string())?;
        let put_json = |tx: &mut Box<dyn atrest_store::WriteTx + '_>,
                        table: Table,
                        key: &[u8],
                        v: Option<Vec<u8>>|
         -> Result<(), String> {
            match v {
                Some(v) => tx.put(table, key, &v).map_err(|e| e.to_string()),
                None => tx.delete(table, key).map(drop).map_err(|e| e.to_string()),
            }
        };
        for d in &st.dirty {
            match d {
                Dirty::Disk(id) => {
                    let v = st.disks.get(id).map(serde_json::to_vec).transpose();
                    put_json(&mut tx, DISKS, id.as_bytes(), v.map_err(|e| e.to_string())?)?;
                }
                Dirty::Snapshot(id) => {
                    let v = st.snapshots.get(id).map(serde_json::to_vec).transpose();
                    put_json(
                        &mut tx,
                        SNAPSHOTS,
                        id.as_bytes(),
                        v.map_err(|e| e.to_string())?,
                    )?;
                }
                Dirty::Layer(id) => {
                    let v = st
                        .layers
                        .get(id)
                        .map(|l| serde_json::to_vec(&l.rec))
                        .transpose();
                    put_json(&mut tx, LAYERS, &be(*id), v.map_err(|e| e.to_string())?)?;
                }
                Dirty::Map(layer, idx) => {
                    let v = st
                        .layers
                        .get(layer)
                        .and_then(|l| l.map.get(idx))
                        .map(|p| be(*p).to_vec());
                    put_json(&mut tx, MAP, &map_key(*layer, *idx), v)?;
                }
                Dirty::Free(p) => {
                    let free = st.free.contains(p) || st.pending_free.contains(p);
                    put_json(&mut tx, FREE, &be(*p), free.then(Vec::new))?;
                }
                Dirty::Meta => {
                    put_json(
                        &mut tx,
                        META,
                        b"next_chunk",
                        Some(be(st.next_chunk).to_vec()),
                    )?;
                    put_json(
                        &mut tx,
                        META,
                        b"next_layer",
                        Some(be(st.next_layer).to_vec()),
                    )?;
                }
            }
        }
        tx.commit().map_err(|e| e.to_string())?;
        st.dirty.clear();
        let freed = std::mem::take(&mut st.pending_free);
        if !freed.is_empty() {
            let _no_reads_in_flight = self
                .reuse
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            st.free.extend(freed);
        }
        Ok(())
    }

    /// Makes every acknowledged write and change durable.
    ///
    /// When no metadata changed since the last commit (the common case: a
    /// database overwriting its own blocks), every acknowledged write is
    /// already in place in the pool file, and syncing it is all a flush
    /// needs; that sync runs without the engine lock, so writes and other
    /// flushes go on meanwhile (a write that lands during the sync was not
    /// acknowledged before this flush began, so it need not be covered).
    /// Otherwise the full commit runs under the lock.
    pub fn flush(&self) -> Result<(), DiskError> {
        {
            let mut st = self.lock()?;
            if !st.dirty.is_empty() {
                return self.commit(&mut st);
            }
        }
        if let Err(e) = self.pool.sync() {
            let reason = format!("syncing the pool: {e}");
            let mut st = self
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            st.failed = Some(reason.clone());
            return Err(DiskError::Failed(reason));
        }
        Ok(())
    }

    /// Creates a disk.
    pub fn create_disk(&self, id: &str, spec: &DiskSpec) -> Result<DiskInfo, DiskError> {
        check_size(spec.size)?;
        if spec.block_size != 512 && spec.block_size != 4096 {
            return Err(DiskError::Invalid(format!(
                "the logical block size must be 512 or 4096, not {}",
                spec.block_size
            )));
        }
        check_id(id)?;
        let mut st = self.lock()?;
        if st.disks.contains_key(id) {
            return Err(DiskError::Exists {
                kind: "disk",
                id: id.to_owned(),
            });
        }
        let top = st.new_layer(None, 0, Owner::Disk(id.to_owned()))?;
        let d = DiskInfo {
            id: id.to_owned(),
            size: spec.size,
            block_size: spec.block_size,
            key: spec.key.clone(),
            origin: None,
            labels: spec.labels.clone(),
            rekey: None,
            top,
        };
        st.disks.insert(id.to_owned(), d.clone());
        st.dirty.insert(Dirty::Disk(id.to_owned()));
        self.commit(&mut st)?;
        Ok(d)
    }

    /// A disk's record.
    pub fn disk(&self, id: &str) -> Result<DiskInfo, DiskError> {
        Ok(self.lock()?.disk(id)?.clone())
    }

    /// A snapshot's record.
    pub fn snapshot(&self, id: &str) -> Result<SnapshotInfo, DiskError> {
        Ok(self.lock()?.snapshot(id)?.clone())
    }

    /// Every disk, by id.
    pub fn disks(&self) -> Result<Vec<DiskInfo>, DiskError> {
        Ok(self.lock()?.disks.values().cloned().collect())
    }

    /// Every snapshot, by id.
    pub fn snapshots(&self) -> Result<Vec<SnapshotInfo>, DiskError> {
        Ok(self.lock()?.snapshots.values().cloned().collect())
    }

    /// Snapshots `disk` as `id`: O(1), no data copied. Writes acknowledged
    /// before it are in the snapshot. `key`, if given, must wrap the disk's
    /// data key (for instance under a context naming the snapshot); without
    /// it the snapshot keeps the disk's wrapped key.
    pub fn snapshot_disk(
        &self,
        disk: &str,
        id: &str,
        key: Option<KeyInfo>,
        labels: Labels,
    ) -> Result<SnapshotInfo, DiskError> {
        check_id(id)?;
        let mut st = self.lock()?;
        let d = st.disk(disk)?.clone();
        not_rekeying(&d, "snapshot")?;
        if st.snapshots.contains_key(id) {
            return Err(DiskError::Exists {
                kind: "snapshot",
                id: id.to_owned(),
            });
        }
        if d.key.is_none() && key.is_some() {
            return Err(DiskError::Invalid(format!(
                "disk {disk} is not encrypted, so neither is a snapshot of it"
            )));
        }
        st.layer_mut(d.top)?.rec.owner = Owner::Snapshot(id.to_owned());
        st.dirty.insert(Dirty::Layer(d.top));
        let top = st.new_layer(Some(d.top), d.size, Owner::Disk(disk.to_owned()))?;
        let s = SnapshotInfo {
            id: id.to_owned(),
            disk: disk.to_owned(),
            size: d.size,
            block_size: d.block_size,
            key: key.or_else(|| d.key.clone()),
            labels,
            layer: d.top,
        };
        st.snapshots.insert(id.to_owned(), s.clone());
        st.dirty.insert(Dirty::Snapshot(id.to_owned()));
        if let Some(dm) = st.disks.get_mut(disk) {
            dm.top = top;
        }
        st.dirty.insert(Dirty::Disk(disk.to_owned()));
        self.commit(&mut st)?;
        Ok(s)
    }

    /// Creates disk `id` from `snapshot`: same size, block size and data key
    /// (`key`, if given, must wrap that same data key, for instance under
    /// another master key); no data copied.
    pub fn clone_snapshot(
        &self,
        snapshot: &str,
        id: &str,
        key: Option<KeyInfo>,
        labels: Labels,
    ) -> Result<DiskInfo, DiskError> {
        check_id(id)?;
        let mut st = self.lock()?;
        let s = st.snapshot(snapshot)?.clone();
        if st.disks.contains_key(id) {
            return Err(DiskError::Exists {
                kind: "disk",
                id: id.to_owned(),
            });
        }
        if s.key.is_none() && key.is_some() {
            return Err(DiskError::Invalid(
                "a clone of an unencrypted snapshot is unencrypted; encrypting needs a copy into a new disk".into(),
            ));
        }
        let top = st.new_layer(Some(s.layer), s.size, Owner::Disk(id.to_owned()))?;
        let d = DiskInfo {
            id: id.to_owned(),
            size: s.size,
            block_size: s.block_size,
            key: key.or(s.key),
            origin: Some(snapshot.to_owned()),
            labels,
            rekey: None,
            top,
        };
        st.disks.insert(id.to_owned(), d.clone());
        st.dirty.insert(Dirty::Disk(id.to_owned()));
        self.commit(&mut st)?;
        Ok(d)
    }

    /// Rolls `disk` back to `snapshot` (one taken of this disk's current
    /// chain): its contents and size become the snapshot's. The disk must
    /// not be open.
    pub fn rollback(&self, disk: &str, snapshot: &str) -> Result<DiskInfo, DiskError> {
        let mut st = self.lock()?;
        let d = st.disk(disk)?.clone();
        let s = st.snapshot(snapshot)?.clone();
        not_rekeying(&d, "roll back")?;
        if st.open.get(disk).copied().unwrap_or(0) > 0 {
            return Err(DiskError::Conflict(format!(
                "disk {disk} is open; detach it before rolling it back"
            )));
        }
        if !st.is_ancestor(s.layer, d.top)? {
            return Err(DiskError::Invalid(format!(
                "snapshot {snapshot} is not a snapshot of disk {disk}'s current contents"
            )));
        }
        let top = st.new_layer(Some(s.layer), s.size, Owner::Disk(disk.to_owned()))?;
        st.release(d.top)?;
        let dm = st
            .disks
            .get_mut(disk)
            .ok_or_else(|| not_found("disk", disk))?;
        dm.top = top;
        dm.size = s.size;
        let out = dm.clone();
        st.dirty.insert(Dirty::Disk(disk.to_owned()));
        self.commit(&mut st)?;
        Ok(out)
    }

    /// Grows `disk` to `size` (never shrinks). An attached user sees the new
    /// size after attaching again.
    pub fn resize(&self, disk: &str, size: u64) -> Result<DiskInfo, DiskError> {
        check_size(size)?;
        let st = self.lock()?;
        self.update_disk(st, disk, |d| {
            if size < d.size {
                return Err(DiskError::Invalid(format!(
                    "disk {disk} is {} bytes; it can only grow",
                    d.size
                )));
            }
            d.size = size;
            Ok(())
        })
    }

    /// Changes `disk`'s record with `f` and commits it; nothing changes if
    /// `f` refuses.
    fn update_disk(
        &self,
        mut st: MutexGuard<'_, State>,
        disk: &str,
        f: impl FnOnce(&mut DiskInfo) -> Result<(), DiskError>,
    ) -> Result<DiskInfo, DiskError> {
        let dm = st
            .disks
            .get_mut(disk)
            .ok_or_else(|| not_found("disk", disk))?;
        f(dm)?;
        let out = dm.clone();
        st.dirty.insert(Dirty::Disk(disk.to_owned()));
        self.commit(&mut st)?;
        Ok(out)
    }

    /// Replaces the wrapped data key of `disk` (the same data key, wrapped
    /// under another master key): O(1), no data touched.
    pub fn rewrap(&self, disk: &str, key: KeyInfo) -> Result<DiskInfo, DiskError> {
        let st = self.lock()?;
        self.update_disk(st, disk, |dm| {
            if dm.key.is_none() {
                return Err(DiskError::Invalid(format!("disk {disk} is not encrypted")));
            }
            not_rekeying(dm, "rewrap")?;
            dm.key = Some(key);
            Ok(())
        })
    }

    /// Deletes `disk` (not while open); its space is reclaimed unless a
    /// snapshot still refers to it.
    pub fn delete_disk(&self, disk: &str) -> Result<(), DiskError> {
        let mut st = self.lock()?;
        let d = st.disk(disk)?.clone();
        if st.open.get(disk).copied().unwrap_or(0) > 0 {
            return Err(DiskError::Conflict(format!(
                "disk {disk} is open; detach it before deleting it"
            )));
        }
        st.release(d.top)?;
        st.disks.remove(disk);
        st.dirty.insert(Dirty::Disk(disk.to_owned()));
        self.commit(&mut st)
    }

    /// Deletes `snapshot`; its space is reclaimed once no clone or later
    /// snapshot stands on it.
    pub fn delete_snapshot(&self, snapshot: &str) -> Result<(), DiskError> {
        let mut st = self.lock()?;
        let s = st.snapshot(snapshot)?.clone();
        st.release(s.layer)?;
        st.snapshots.remove(snapshot);
        st.dirty.insert(Dirty::Snapshot(snapshot.to_owned()));
        self.commit(&mut st)
    }

    /// Replaces the caller's labels of `disk`.
    pub fn set_labels(&self, disk: &str, labels: Labels) -> Result<DiskInfo, DiskError> {
        let st = self.lock()?;
        self.update_disk(st, disk, |d| {
            d.labels = labels;
            Ok(())
        })
    }

    /// Pool chunks in use (for tests and space accounting).
    pub fn chunks_in_use(&self) -> Result<u64, DiskError> {
        let st = self.lock()?;
        Ok(st.next_chunk - st.free.len() as u64 - st.pending_free.len() as u64)
    }

    /// Opens `disk` for I/O. `key` is its plaintext data key, which an
    /// encrypted disk needs and an unencrypted one refuses. A disk has one
    /// open handle at a time (share it to serve several users). A disk that
    /// is being re-encrypted needs both its keys:
    /// [`Engine::open_disk_rekeying`].
    pub fn open_disk(
        self: &Arc<Self>,
        disk: &str,
        key: Option<&XtsKey>,
    ) -> Result<OpenDisk, DiskError> {
        let mut st = self.lock()?;
        let d = st.disk(disk)?.clone();
        check_not_open(&st, disk)?;
        if d.rekey.is_some() {
            return Err(DiskError::Conflict(format!(
                "disk {disk} is being re-encrypted: opening it needs both its data keys \
                 (open_disk_rekeying)"
            )));
        }
        let cur = match (&d.key, key) {
            (Some(_), Some(k)) => Some(cipher(k)?),
            (None, None) => None,
            (Some(_), None) => {
                return Err(DiskError::Invalid(format!(
                    "disk {disk} is encrypted: its data key is needed to open it"
                )));
            }
            (None, Some(_)) => {
                return Err(DiskError::Invalid(format!("disk {disk} is not encrypted")));
            }
        };
        Ok(self.open_handle(&mut st, d, Keys::new(cur, None, 0)))
    }

    /// Opens a disk that is being re-encrypted: `key` is its current data
    /// key, `next` the new one (see [`OpenDisk::rekey_step`]).
    pub fn open_disk_rekeying(
        self: &Arc<Self>,
        disk: &str,
        key: &XtsKey,
        next: &XtsKey,
    ) -> Result<OpenDisk, DiskError> {
        let mut st = self.lock()?;
        let d = st.disk(disk)?.clone();
        check_not_open(&st, disk)?;
        let Some(done) = d.rekey.as_ref().map(|r| r.done) else {
            return Err(DiskError::Invalid(format!(
                "disk {disk} is not being re-encrypted; open it with its data key alone"
            )));
        };
        let keys = Keys::new(Some(cipher(key)?), Some(cipher(next)?), done);
        Ok(self.open_handle(&mut st, d, keys))
    }

    fn open_handle(self: &Arc<Self>, st: &mut State, d: DiskInfo, keys: Keys) -> OpenDisk {
        *st.open.entry(d.id.clone()).or_insert(0) += 1;
        OpenDisk {
            engine: Arc::clone(self),
            id: d.id,
            size: d.size,
            block_size: d.block_size,
            keys: Mutex::new(keys),
        }
    }
}

fn check_not_open(st: &State, disk: &str) -> Result<(), DiskError> {
    if st.open.contains_key(disk) {
        return Err(DiskError::Conflict(format!(
            "disk {disk} is open already; share the open handle"
        )));
    }
    Ok(())
}

fn cipher(key: &XtsKey) -> Result<Xts256, DiskError> {
    Xts256::new(key).map_err(|e| DiskError::Invalid(format!("data key: {e}")))
}

fn check_id(id: &str) -> Result<(), DiskError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(DiskError::Invalid(format!(
            "an id is 1 to 64 letters, digits, '-' or '_', not {id:?}"
        )))
    }
}

/// An open disk: reads, writes, flushes, re-encryption. Its size is the
/// disk's size when it was opened. Dropping it closes the disk and drops its
/// key schedules.
pub struct OpenDisk {
    engine: Arc<Engine>,
    id: String,
    size: u64,
    block_size: u32,
    /// Locked after the engine's state, never before it.
    keys: Mutex<Keys>,
}

impl std::fmt::Debug for OpenDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenDisk")
            .field("id", &self.id)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl Drop for OpenDisk {
    fn drop(&mut self) {
        let mut st = self
            .engine
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = st.open.get_mut(&self.id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                st.open.remove(&self.id);
            }
        }
    }
}

impl OpenDisk {
    /// The disk's id.
    #[must_use]
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Size in bytes.
    #[must_use]
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Logical block size.
    #[must_use]
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    fn keys(&self) -> MutexGuard<'_, Keys> {
        self.keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn check_io(&self, offset: u64, len: usize) -> Result<(), DiskError> {
        let bs = u64::from(self.block_size);
        if !offset.is_multiple_of(bs) || !(len as u64).is_multiple_of(bs) {
            return Err(DiskError::Invalid(format!(
                "I/O at {offset} of {len} bytes is not aligned to the {bs}-byte block size"
            )));
        }
        if offset
            .checked_add(len as u64)
            .is_none_or(|end| end > self.size)
        {
            return Err(DiskError::Invalid(format!(
                "I/O at {offset} of {len} bytes is beyond the disk's {} bytes",
                self.size
            )));
        }
        Ok(())
    }

    fn crypt(&self, offset: u64, data: &mut [u8], encrypt: bool) -> Result<(), DiskError> {
        self.keys()
            .crypt(self.block_size as usize, offset, data, encrypt)
    }

    /// Reads `buf.len()` bytes at `offset` (both multiples of the block
    /// size, within the disk). Only the lookup of its chunks holds the
    /// engine lock: the pool reads and the decryption run outside it, so
    /// reads of all disks proceed in parallel (see [`Engine`]'s `reuse`).
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        self.check_io(offset, buf.len())?;
        // A re-encryption step that moved keys between the lookup and the
        // decryption makes the lookup stale: look up again.
        while !self.read_once(offset, buf)? {}
        Ok(())
    }

    /// One attempt at a read; `false` if the key layout changed under it.
    fn read_once(&self, offset: u64, buf: &mut [u8]) -> Result<bool, DiskError> {
        let mut plan = Vec::new();
        let (layout, _gate) = {
            let st = self.engine.lock()?;
            let top = st.disk(&self.id)?.top;
            let mut done = 0usize;
            while done < buf.len() {
                let off = offset + done as u64;
                let within = (off % CHUNK) as usize;
                let n = (CHUNK_LEN - within).min(buf.len() - done);
                plan.push((done, n, within, st.find(top, off / CHUNK)?));
                done += n;
            }
            let layout = self.keys().layout;
            let gate = self
                .engine
                .reuse
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            (layout, gate)
        };
        for (done, n, within, found) in plan {
            let off = offset + done as u64;
            let out = &mut buf[done..done + n];
            let Some((phys, visible)) = found else {
                out.fill(0);
                continue;
            };
            self.engine
                .pool
                .read_at(phys * CHUNK + within as u64, out)
                .map_err(|e| DiskError::io("reading the pool", e))?;
            {
                let mut keys = self.keys();
                if keys.layout != layout {
                    return Ok(false);
                }
                keys.crypt(self.block_size as usize, off, out, false)?;
            }
            if within + n > visible {
                let from = visible.saturating_sub(within);
                out[from..].fill(0);
            }
        }
        Ok(true)
    }

    /// Writes `data` at `offset` (both multiples of the block size, within
    /// the disk). Durable after the next [`OpenDisk::flush`], or at once with
    /// `fua`.
    pub fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), DiskError> {
        self.check_io(offset, data.len())?;
        // Encrypted before taking the engine lock, so that the cipher runs
        // while other users' I/O goes on. The layout it was encrypted under
        // is checked again under the lock: a re-encryption step in between
        // may have moved some of its chunks to the new key.
        let mut scratch = None;
        let before = {
            let mut keys = self.keys();
            if keys.cur.is_some() {
                let mut buf = self.engine.take_scratch(data.len());
                keys.crypt_to(
                    self.block_size as usize,
                    offset,
                    data,
                    &mut buf[..data.len()],
                )?;
                scratch = Some(buf);
            }
            keys.layout
        };
        let result = self.store_write(offset, data, scratch.as_deref_mut(), before, fua);
        if let Some(buf) = scratch {
            self.engine.give_scratch(buf);
        }
        result
    }

    /// The part of [`OpenDisk::write`] under the engine lock: `enc` is the
    /// data encrypted under the key layout `before` (`None`: unencrypted).
    fn store_write(
        &self,
        offset: u64,
        data: &[u8],
        enc: Option<&mut [u8]>,
        before: Layout,
        fua: bool,
    ) -> Result<(), DiskError> {
        let mut st = self.engine.lock()?;
        let top = st.disk(&self.id)?.top;
        let enc: &[u8] = match enc {
            None => data,
            Some(enc) => {
                let enc = &mut enc[..data.len()];
                let mut keys = self.keys();
                if keys.layout != before {
                    let now = keys.layout;
                    let mut done = 0usize;
                    while done < data.len() {
                        let off = offset + done as u64;
                        let idx = off / CHUNK;
                        let n = (CHUNK_LEN - (off % CHUNK) as usize).min(data.len() - done);
                        if before.key(idx) != now.key(idx) {
                            keys.crypt_to(
                                self.block_size as usize,
                                off,
                                &data[done..done + n],
                                &mut enc[done..done + n],
                            )?;
                        }
                        done += n;
                    }
                }
                enc
            }
        };
        let mut done = 0usize;
        while done < enc.len() {
            let off = offset + done as u64;
            let idx = off / CHUNK;
            let within = (off % CHUNK) as usize;
            let n = (CHUNK_LEN - within).min(enc.len() - done);
            let piece = &enc[done..done + n];
            let owned = st.layer(top)?.map.get(&idx).copied().filter(|p| *p != ZERO);
            if let Some(phys) = owned {
                self.engine
                    .pool
                    .write_at(phys * CHUNK + within as u64, piece)
                    .map_err(|e| DiskError::io("writing the pool", e))?;
            } else {
                let filled;
                let chunk = if n == CHUNK_LEN {
                    piece
                } else {
                    let mut chunk = vec![0u8; CHUNK_LEN];
                    self.fill_from_chain(&st, top, idx, &mut chunk)?;
                    chunk[within..within + n].copy_from_slice(piece);
                    filled = chunk;
                    &filled[..]
                };
                let phys = st.alloc();
                if let Err(e) = self.engine.pool.write_at(phys * CHUNK, chunk) {
                    // Not referred to by anything: give it back.
                    st.free.insert(phys);
                    return Err(DiskError::io("writing the pool", e));
                }
                if let Some(old) = st.layer_mut(top)?.map.insert(idx, phys) {
                    st.free_chunk(old);
                }
                st.dirty.insert(Dirty::Map(top, idx));
            }
            done += n;
        }
        if fua {
            self.engine.commit(&mut st)?;
        }
        Ok(())
    }

    /// The ciphertext chunk `idx` of the chain reads as, for copy-on-write:
    /// the chain's bytes where it shows them, encrypted zeros elsewhere.
    fn fill_from_chain(
        &self,
        st: &State,
        top: u64,
        idx: u64,
        chunk: &mut [u8],
    ) -> Result<(), DiskError> {
        let start = idx * CHUNK;
        match st.find(top, idx)? {
            None => self.crypt(start, chunk, true),
            Some((phys, visible)) => {
                self.engine
                    .pool
                    .read_at(phys * CHUNK, &mut chunk[..visible])
                    .map_err(|e| DiskError::io("reading the pool", e))?;
                if visible < chunk.len() {
                    let tail = &mut chunk[visible..];
                    tail.fill(0);
                    self.crypt(start + visible as u64, tail, true)?;
                }
                Ok(())
            }
        }
    }

    /// Makes the range read as zeros and frees what only the top layer held
    /// (whole chunks only; partial chunks are written with zeros).
    pub fn trim(&self, offset: u64, len: u64) -> Result<(), DiskError> {
        let len_usize =
            usize::try_from(len).map_err(|_| DiskError::Invalid("length too large".into()))?;
        self.check_io(offset, len_usize)?;
        let mut done = 0u64;
        while done < len {
            let off = offset + done;
            let within = off % CHUNK;
            let n = (CHUNK - within).min(len - done);
            if within == 0 && n == CHUNK {
                let mut st = self.engine.lock()?;
                let top = st.disk(&self.id)?.top;
                let idx = off / CHUNK;
                if let Some(old) = st.layer_mut(top)?.map.insert(idx, ZERO) {
                    st.free_chunk(old);
                }
                st.dirty.insert(Dirty::Map(top, idx));
            } else {
                self.write(off, &vec![0u8; n as usize], false)?;
            }
            done += n;
        }
        Ok(())
    }

    /// Makes every write acknowledged so far durable.
    pub fn flush(&self) -> Result<(), DiskError> {
        self.engine.flush()
    }
}
