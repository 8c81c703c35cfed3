//! Raw chunks: a snapshot's chunks exactly as stored, and writing them
//! back into a disk under the same data key (see "Raw chunks (object
//! storage)" in the crate docs).

use super::{CHUNK_LEN, Dirty, Engine, OpenDisk, ZERO, chunks, not_found, not_rekeying};
use crate::{CHUNK, DiskError, RawChunk};

/// Chunks read from the pool per hold of the reuse gate: a commit that
/// frees chunks waits for the gate while it holds the engine lock, so one
/// hold stays short however many chunks a caller asks for.
const CHUNKS_PER_GATE: u64 = 16;

impl Engine {
    /// Chunks `first .. first + count` of snapshot `id` exactly as stored
    /// (ciphertext of an encrypted snapshot, plaintext of an unencrypted
    /// one), resolved through its layer chain as a read would: the top
    /// layer first, parents only below their limit, nothing past the
    /// snapshot's size. Nothing is decrypted; the data key is not needed.
    ///
    /// `Invalid` if the range passes the snapshot's chunk count (its size
    /// divided by [`CHUNK`], rounded up), `NotFound` for an unknown
    /// snapshot (also if it is deleted, or deleted and taken again under
    /// the same id, while the chunks are read). The
    /// answer holds up to `count` chunks in memory. Like reads, the pool is
    /// read outside the engine lock.
    pub fn snapshot_raw_chunks(
        &self,
        id: &str,
        first: u64,
        count: u64,
    ) -> Result<Vec<RawChunk>, DiskError> {
        let layer = {
            let st = self.lock()?;
            let s = st.snapshot(id)?;
            let total = chunks(s.size);
            if first.checked_add(count).is_none_or(|end| end > total) {
                return Err(DiskError::Invalid(format!(
                    "chunks {first} + {count} are beyond snapshot {id}'s {total} chunks"
                )));
            }
            s.layer
        };
        let mut out = Vec::with_capacity(usize::try_from(count).unwrap_or(0).min(1 << 16));
        let mut idx = first;
        let end = first + count;
        while idx < end {
            let batch = (end - idx).min(CHUNKS_PER_GATE);
            self.raw_batch(id, layer, idx, batch, &mut out)?;
            idx += batch;
        }
        Ok(out)
    }

    /// Appends chunks `first .. first + count` of snapshot `id` to `out`:
    /// looked up under the engine lock, read from the pool outside it while
    /// holding the reuse gate shared (as [`OpenDisk::read`] does), so no
    /// chunk is reused under the read. A snapshot's layers never change
    /// while it exists, so batches read at different times agree as long
    /// as `id` is still the snapshot of `layer` (layer ids are never
    /// reused).
    fn raw_batch(
        &self,
        id: &str,
        layer: u64,
        first: u64,
        count: u64,
        out: &mut Vec<RawChunk>,
    ) -> Result<(), DiskError> {
        let mut plan = Vec::new();
        let _gate = {
            let st = self.lock()?;
            let s = st.snapshot(id)?;
            if s.layer != layer {
                return Err(not_found("snapshot", id));
            }
            for idx in first..first + count {
                let start = idx * CHUNK;
                // Nothing past the snapshot's size is exported: what the
                // last chunk of a size that is not a multiple of CHUNK
                // holds past it (encrypted zeros) need not be stored.
                let size_left = s.size.saturating_sub(start).min(CHUNK) as usize;
                let found = st
                    .find(s.layer, idx)?
                    .map(|(phys, visible)| (phys, visible.min(size_left)))
                    .filter(|(_, visible)| *visible > 0);
                plan.push(found);
            }
            self.reuse
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        for found in plan {
            let Some((phys, visible)) = found else {
                out.push(RawChunk::Zero);
                continue;
            };
            let mut bytes = vec![0u8; visible];
            self.pool
                .read_at(phys * CHUNK, &mut bytes)
                .map_err(|e| DiskError::io("reading the pool", e))?;
            out.push(RawChunk::Data { bytes });
        }
        Ok(())
    }
}

impl OpenDisk {
    /// Writes chunk `idx` of this disk from a [`RawChunk`] that
    /// [`Engine::snapshot_raw_chunks`] gave for a snapshot under the same
    /// data key, with the same logical block size, at the same index (the
    /// engine cannot tell: other bytes would read as garbage, not fail).
    ///
    /// [`RawChunk::Data`]: its bytes are written as they are into a fresh
    /// chunk of the top layer, the rest of the chunk filled with this
    /// disk's encrypted zeros (plaintext zeros for an unencrypted disk).
    /// [`RawChunk::Zero`]: the index reads as zeros afterwards, as after a
    /// trim. Either way the whole chunk is replaced: after a power loss
    /// before the next flush it reads entirely as before or as written.
    ///
    /// `Invalid` for an `idx` past the disk's chunks or bytes whose length
    /// is 0, not a multiple of the block size, over [`CHUNK`] or reaching
    /// past the disk's size; `Conflict` while the disk is being
    /// re-encrypted. Durable after the next [`OpenDisk::flush`].
    pub fn write_raw_chunk(&self, idx: u64, chunk: &RawChunk) -> Result<(), DiskError> {
        let total = chunks(self.size);
        if idx >= total {
            return Err(DiskError::Invalid(format!(
                "chunk {idx} is beyond disk {}'s {total} chunks",
                self.id
            )));
        }
        match chunk {
            RawChunk::Zero => self.zero_chunk(idx),
            RawChunk::Data { bytes } => self.write_chunk_bytes(idx, bytes),
        }
    }

    /// Makes chunk `idx` read as zeros: the zero marker in the top layer,
    /// unless the chunk reads as zeros already.
    fn zero_chunk(&self, idx: u64) -> Result<(), DiskError> {
        let mut st = self.engine.lock()?;
        let d = st.disk(&self.id)?;
        not_rekeying(d, "write raw chunks into")?;
        let top = d.top;
        if st.find(top, idx)?.is_none() {
            return Ok(());
        }
        if let Some(old) = st.layer_mut(top)?.map.insert(idx, ZERO) {
            st.free_chunk(old);
        }
        st.dirty.insert(Dirty::Map(top, idx));
        Ok(())
    }

    fn write_chunk_bytes(&self, idx: u64, bytes: &[u8]) -> Result<(), DiskError> {
        let bs = self.block_size as usize;
        let start = idx * CHUNK;
        let n = bytes.len();
        if n == 0 || !n.is_multiple_of(bs) || n > CHUNK_LEN {
            return Err(DiskError::Invalid(format!(
                "a raw chunk is a positive multiple of the {bs}-byte block size up to {CHUNK} \
                 bytes, not {n} bytes"
            )));
        }
        if start + n as u64 > self.size {
            return Err(DiskError::Invalid(format!(
                "{n} bytes of chunk {idx} reach beyond disk {}'s {} bytes",
                self.id, self.size
            )));
        }
        // The encrypted zeros of the tail are made before taking the engine
        // lock, under the key layout noted here; if it changed by the time
        // the lock is held (a re-encryption started and finished in
        // between), they are made again.
        let mut buf = vec![0u8; CHUNK_LEN];
        buf[..n].copy_from_slice(bytes);
        let before = {
            let mut keys = self.keys();
            keys.crypt(bs, start + n as u64, &mut buf[n..], true)?;
            keys.layout
        };
        let mut st = self.engine.lock()?;
        let d = st.disk(&self.id)?;
        not_rekeying(d, "write raw chunks into")?;
        let top = d.top;
        {
            let mut keys = self.keys();
            if keys.layout != before {
                buf[n..].fill(0);
                keys.crypt(bs, start + n as u64, &mut buf[n..], true)?;
            }
        }
        // Always a fresh chunk, never in place: until the next commit the
        // durable map still names the old one, which stays intact (freed by
        // that commit), so a power loss leaves the whole chunk old or new.
        let fresh = st.alloc();
        if let Err(e) = self.engine.pool.write_at(fresh * CHUNK, &buf) {
            // Not referred to by anything: give it back.
            st.free.insert(fresh);
            return Err(DiskError::io("writing the pool", e));
        }
        if let Some(old) = st.layer_mut(top)?.map.insert(idx, fresh) {
            st.free_chunk(old);
        }
        st.dirty.insert(Dirty::Map(top, idx));
        Ok(())
    }
}
