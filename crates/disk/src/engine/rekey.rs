//! Re-encryption under a new data key, online and resumable: which key
//! each chunk of an open disk is under, and the steps that move chunks to
//! the new key (see "Re-encryption" in the crate docs).

use atrest_crypto::XtsKey;
use atrest_crypto::xts::Xts256;

use super::{CHUNK_LEN, Dirty, OpenDisk, State, ZERO, chunks, cipher, damaged, not_found};
use crate::{CHUNK, DiskError, KeyInfo, RekeyInfo, RekeyProgress};

/// Which key each chunk of an open disk is under. Keys are named by serial
/// number, so that a write encrypted before a re-encryption step can tell
/// which of its chunks changed keys in the meantime. Changes only under the
/// engine lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Layout {
    pub(super) cur: u32,
    pub(super) next: u32,
    /// Chunk indexes below this are under `next` (0 when no re-encryption
    /// runs).
    pub(super) done: u64,
}

impl Layout {
    pub(super) fn key(&self, idx: u64) -> u32 {
        if idx < self.done { self.next } else { self.cur }
    }
}

/// The ciphers of an open disk.
pub(super) struct Keys {
    /// The disk's data key (`None`: unencrypted).
    pub(super) cur: Option<Xts256>,
    /// The new data key while the disk is re-encrypted.
    pub(super) next: Option<Xts256>,
    pub(super) layout: Layout,
}

impl Keys {
    pub(super) fn new(cur: Option<Xts256>, next: Option<Xts256>, done: u64) -> Self {
        Self {
            cur,
            next,
            layout: Layout {
                cur: 0,
                next: 1,
                done,
            },
        }
    }

    /// How many of `len` bytes at `offset` lie in chunks already moved to
    /// the new key (the keys split the disk at one offset).
    fn below_boundary(&self, offset: u64, len: usize) -> usize {
        let boundary = self.layout.done.saturating_mul(CHUNK);
        usize::try_from(boundary.saturating_sub(offset))
            .unwrap_or(usize::MAX)
            .min(len)
    }

    /// En- or decrypts `data`, which starts at byte `offset` of the disk,
    /// each chunk under its key (the keys split the disk at one offset).
    pub(super) fn crypt(
        &mut self,
        block_size: usize,
        offset: u64,
        data: &mut [u8],
        encrypt: bool,
    ) -> Result<(), DiskError> {
        let low = self.below_boundary(offset, data.len());
        let (below, above) = data.split_at_mut(low);
        if !below.is_empty() {
            let Some(next) = self.next.as_mut() else {
                return Err(crypto_failed("no key for re-encrypted chunks"));
            };
            sectors(next, block_size, offset, below, encrypt)?;
        }
        if let (Some(cur), false) = (self.cur.as_mut(), above.is_empty()) {
            sectors(cur, block_size, offset + low as u64, above, encrypt)?;
        }
        Ok(())
    }

    /// Encrypts `src`, which starts at byte `offset` of the disk, into `dst`
    /// (as long), each chunk under its key; [`Keys::crypt`] without a copy.
    pub(super) fn crypt_to(
        &mut self,
        block_size: usize,
        offset: u64,
        src: &[u8],
        dst: &mut [u8],
    ) -> Result<(), DiskError> {
        let low = self.below_boundary(offset, src.len());
        let (src_below, src_above) = src.split_at(low);
        let (dst_below, dst_above) = dst.split_at_mut(low.min(dst.len()));
        let encrypt = |c: &mut Xts256, offset: u64, src: &[u8], dst: &mut [u8]| {
            c.encrypt_sectors_to(offset / block_size as u64, block_size, src, dst)
                .map_err(crypto_failed)
        };
        if !src_below.is_empty() {
            let Some(next) = self.next.as_mut() else {
                return Err(crypto_failed("no key for re-encrypted chunks"));
            };
            encrypt(next, offset, src_below, dst_below)?;
        }
        if let (Some(cur), false) = (self.cur.as_mut(), src_above.is_empty()) {
            encrypt(cur, offset + low as u64, src_above, dst_above)?;
        }
        Ok(())
    }
}

fn sectors(
    c: &mut Xts256,
    block_size: usize,
    offset: u64,
    data: &mut [u8],
    encrypt: bool,
) -> Result<(), DiskError> {
    let first = offset / block_size as u64;
    let r = if encrypt {
        c.encrypt_sectors(first, block_size, data)
    } else {
        c.decrypt_sectors(first, block_size, data)
    };
    r.map_err(crypto_failed)
}

/// A sector encryption that failed: a [`DiskError::Io`] of kind
/// [`Other`](std::io::ErrorKind::Other), like a failed read or write of the
/// data (the engine goes on; a block-device client sees `EIO`).
fn crypto_failed(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> DiskError {
    DiskError::io("sector encryption", std::io::Error::other(e))
}

impl OpenDisk {
    /// Starts re-encrypting the disk under the data key `next`, wrapped as
    /// `info`; [`OpenDisk::rekey_step`] does the work. Committed before it
    /// returns. `Conflict` if a re-encryption is in progress already,
    /// `Invalid` if the disk is not encrypted.
    pub fn start_rekey(&self, info: KeyInfo, next: &XtsKey) -> Result<RekeyProgress, DiskError> {
        let next = cipher(next)?;
        let mut st = self.engine.lock()?;
        let dm = st
            .disks
            .get_mut(&self.id)
            .ok_or_else(|| not_found("disk", &self.id))?;
        if dm.key.is_none() {
            return Err(DiskError::Invalid(format!(
                "disk {} is not encrypted; it cannot be re-encrypted",
                self.id
            )));
        }
        if dm.rekey.is_some() {
            return Err(DiskError::Conflict(format!(
                "disk {} is being re-encrypted already",
                self.id
            )));
        }
        dm.rekey = Some(RekeyInfo { key: info, done: 0 });
        let total = chunks(dm.size);
        st.dirty.insert(Dirty::Disk(self.id.clone()));
        {
            // With `done` at 0 no chunk changes keys yet.
            let mut keys = self.keys();
            keys.next = Some(next);
            keys.layout.next = keys.layout.cur.wrapping_add(1);
            keys.layout.done = 0;
        }
        self.engine.commit(&mut st)?;
        Ok(RekeyProgress {
            done: 0,
            total,
            finished: false,
        })
    }

    /// Re-encrypts up to `max_chunks` more chunks under the new key (chunk
    /// indexes that no layer maps read as zeros and are passed over for
    /// free), then commits. The step that does the last chunk also
    /// finishes: the disk's key becomes the new one, it stands on no
    /// snapshot any more, and this handle uses the new key alone, all in
    /// the same commit. `Invalid` if no re-encryption is in progress. The
    /// disk goes on serving I/O meanwhile.
    pub fn rekey_step(&self, max_chunks: u64) -> Result<RekeyProgress, DiskError> {
        if self.engine.lock()?.disk(&self.id)?.rekey.is_none() {
            return Err(DiskError::Invalid(format!(
                "disk {} is not being re-encrypted",
                self.id
            )));
        }
        for _ in 0..max_chunks {
            // One chunk per hold of the lock, so I/O goes on in between.
            let mut st = self.engine.lock()?;
            if self.rekey_next(&mut st)? {
                break;
            }
        }
        let mut st = self.engine.lock()?;
        self.engine.commit(&mut st)?;
        let d = st.disk(&self.id)?;
        let total = chunks(d.size);
        Ok(match &d.rekey {
            Some(r) => RekeyProgress {
                done: r.done,
                total,
                finished: false,
            },
            None => RekeyProgress {
                done: total,
                total,
                finished: true,
            },
        })
    }

    /// Re-encrypts the next chunk that holds data, moves `done` past it, and
    /// finishes if it was the last. True once finished.
    fn rekey_next(&self, st: &mut State) -> Result<bool, DiskError> {
        let d = st.disk(&self.id)?;
        let Some(done) = d.rekey.as_ref().map(|r| r.done) else {
            return Ok(true);
        };
        let (top, total) = (d.top, chunks(d.size));
        let idx = st.next_mapped(top, done)?.unwrap_or(total).min(total);
        if idx < total {
            self.rekey_chunk(st, top, idx)?;
        }
        let done = (idx + 1).min(total);
        if let Some(r) = st.disks.get_mut(&self.id).and_then(|d| d.rekey.as_mut()) {
            r.done = done;
        }
        st.dirty.insert(Dirty::Disk(self.id.clone()));
        self.keys().layout.done = done;
        if done < total {
            return Ok(false);
        }
        self.finish_rekey(st)?;
        Ok(true)
    }

    /// Copies chunk `idx` into a fresh chunk of the top layer, under the new
    /// key. Never in place: until the commit, durable metadata still names
    /// the old chunk, which stays intact (it is freed by the commit).
    fn rekey_chunk(&self, st: &mut State, top: u64, idx: u64) -> Result<(), DiskError> {
        let Some((phys, visible)) = st.find(top, idx)? else {
            return Ok(());
        };
        let mut chunk = vec![0u8; CHUNK_LEN];
        self.engine
            .pool
            .read_at(phys * CHUNK, &mut chunk[..visible])
            .map_err(|e| DiskError::io("reading the pool", e))?;
        {
            let mut guard = self.keys();
            let keys = &mut *guard;
            let bs = self.block_size as usize;
            let start = idx * CHUNK;
            let (Some(cur), Some(next)) = (keys.cur.as_mut(), keys.next.as_mut()) else {
                return Err(DiskError::Conflict(format!(
                    "disk {} was not opened with both its keys",
                    self.id
                )));
            };
            sectors(cur, bs, start, &mut chunk[..visible], false)?;
            sectors(next, bs, start, &mut chunk, true)?;
        }
        let fresh = st.alloc();
        if let Err(e) = self.engine.pool.write_at(fresh * CHUNK, &chunk) {
            st.free.insert(fresh);
            return Err(DiskError::io("writing the pool", e));
        }
        if let Some(old) = st.layer_mut(top)?.map.insert(idx, fresh) {
            st.free_chunk(old);
        }
        st.dirty.insert(Dirty::Map(top, idx));
        Ok(())
    }

    /// Every chunk is under the new key, and every one that holds data is in
    /// the top layer: the disk leaves its parent layers and the old key.
    fn finish_rekey(&self, st: &mut State) -> Result<(), DiskError> {
        let d = st.disk(&self.id)?;
        let (top, size) = (d.top, d.size);
        let Some(rekey) = d.rekey.clone() else {
            return Ok(());
        };
        let l = st.layer_mut(top)?;
        if l.map.range(chunks(size)..).any(|(_, p)| *p != ZERO) {
            return Err(damaged(format!(
                "disk {} maps chunks beyond its size",
                self.id
            )));
        }
        let parent = l.rec.parent.take();
        l.rec.limit = 0;
        st.dirty.insert(Dirty::Layer(top));
        if let Some(p) = parent {
            st.drop_child(p)?;
        }
        let dm = st
            .disks
            .get_mut(&self.id)
            .ok_or_else(|| not_found("disk", &self.id))?;
        dm.key = Some(rekey.key);
        dm.rekey = None;
        st.dirty.insert(Dirty::Disk(self.id.clone()));
        let mut keys = self.keys();
        keys.cur = keys.next.take();
        keys.layout = Layout {
            cur: keys.layout.next,
            next: keys.layout.next,
            done: 0,
        };
        Ok(())
    }
}
