//! The disk engine: thin-provisioned virtual block devices, encrypted with
//! AES-256-XTS under a per-disk data key, with constant-time snapshots and
//! clones (copy-on-write), rollback, growth and deletion with space reclaimed
//! once nothing refers to it.
//!
//! Owns: the layout of disk data in the pool file, the metadata that maps
//! disks to it, the commit protocol that makes flushes and metadata changes
//! atomic and durable, and sector encryption. Knows nothing of keys beyond
//! the plaintext data key it is handed to open a disk and the wrapped key it
//! stores ([`KeyInfo`], opaque here): the disk service gets and unwraps keys
//! through the key service.
//!
//! # Layout
//!
//! All disks share one pool of [`CHUNK`]-sized (64 KiB) chunks in one file
//! behind [`Storage`]: chunk `p` is bytes `p * CHUNK .. (p + 1) * CHUNK`.
//! A disk's contents are a chain of *layers*. A layer maps chunk indexes
//! (logical offset / `CHUNK`) to pool chunks, or to the zero marker (reads
//! as zeros, from a trim). Reading a chunk looks in the disk's top layer,
//! then its parent, and so on; a chunk no layer maps reads as zeros. A layer
//! only shows its parent's data below its `limit` (the size the disk had
//! when the layer began), so data beyond a snapshot's size never shows
//! through. A layer's chunks belong to it alone: writes go to the top layer
//! in place if it already maps the chunk, and otherwise to a fresh chunk
//! filled from the chain (copy-on-write).
//!
//! * A snapshot freezes the disk's top layer (now owned by the snapshot) and
//!   gives the disk a new, empty top layer on it: O(1), no data copied.
//! * A clone is a new disk whose empty top layer sits on a snapshot's layer.
//! * A rollback drops the disk's top layer and puts a new one on the
//!   snapshot's layer (which must be in the disk's chain).
//! * Deleting a disk or snapshot releases its layer; a layer with no owner
//!   and no child layers is freed (its chunks return to the pool) and its
//!   parent is released in turn. A deleted snapshot's layer that clones
//!   still stand on stays, hidden, until they are gone.
//!
//! Data is stored encrypted, sector by sector (the disk's logical block
//! size), with the logical sector number as the XTS tweak, so a chunk shared
//! by a snapshot and its clones decrypts in each of them, and copy-on-write
//! copies ciphertext without decrypting it. Unwritten parts of a chunk that
//! copy-on-write fills are encrypted zeros. A disk created without a key is
//! stored in plaintext; a snapshot or clone of an encrypted disk is always
//! encrypted with the same data key.
//!
//! # Metadata and the commit protocol
//!
//! Disks, snapshots, layers, the layer maps and the free chunks live in a
//! transactional [`Store`] (redb in the server). Changes to them are made in
//! memory and committed together by [`Engine::flush`] and by every metadata
//! operation:
//!
//! 1. sync the pool (every chunk written so far is durable);
//! 2. commit one store transaction with every changed record, map entry and
//!    free-list entry;
//! 3. only then return chunks freed by this commit to the in-memory free
//!    list, so that a chunk the last durable state refers to is never
//!    overwritten.
//!
//! A chunk allocated since the last commit is referred to by no durable
//! state, so writing it is safe whatever happens; an overwrite in place of a
//! chunk the top layer already owns is an ordinary unflushed block write. So
//! after a power loss at any point, reopening gives exactly the state of the
//! last successful commit, plus any subset of in-place writes made since
//! (block-device semantics: an acknowledged write survives only after a
//! flush, or when written with FUA). A failed sync or commit stops the
//! engine (every later call fails) until it is reopened from disk.
//!
//! # Re-encryption
//!
//! A disk moves to a fresh data key online: [`OpenDisk::start_rekey`]
//! records the new wrapped key in the disk's record with a cursor `done`
//! (0), and each [`OpenDisk::rekey_step`] moves the next chunks to the new
//! key, while the same handle goes on serving reads, writes, trims and
//! flushes.
//!
//! * **Which key.** Chunk index `idx < done` is under the new key, `idx >=
//!   done` under the old one; reads, writes, the encrypted zeros of
//!   copy-on-write and the step itself choose the cipher per chunk by that
//!   rule. The XTS tweak stays the logical sector number. A disk being
//!   re-encrypted opens only with both keys
//!   ([`Engine::open_disk_rekeying`]).
//! * **A step** takes the chunks from `done` on, one per hold of the engine
//!   lock (indexes that no layer maps read as zeros and are passed over for
//!   free). A chunk that reads as zeros is left alone. Otherwise its visible
//!   ciphertext is decrypted with the old key (bytes past what the chain
//!   shows become zeros), encrypted with the new key into a *fresh* pool
//!   chunk, and the top layer maps the index to it; a chunk the top layer
//!   owned before is freed like any other (reusable once the commit is
//!   durable). Then `done` moves past it, in the disk record and in the
//!   handle, under the same hold of the lock. The step ends with the usual
//!   commit (pool sync, then one transaction with the map entries, free
//!   entries and the disk record with its `done`).
//! * **Finishing.** When `done` reaches the disk's chunk count (its size
//!   now: a disk may grow meanwhile), every chunk that holds data is in the
//!   top layer under the new key. In the same commit the top layer leaves
//!   its parent (whose child count drops; an ownerless parent is freed, as
//!   on deletion), the disk's key becomes the new one and `rekey` is
//!   cleared; the handle then uses the new key alone. Snapshots keep their
//!   key and layers, and so do clones of them.
//! * **Writes racing a step.** A write is encrypted before it takes the
//!   engine lock. It notes the handle's key layout (the keys and `done`)
//!   first and compares it under the lock: chunks whose key changed in
//!   between are encrypted again, from the caller's data, under the lock.
//!   Without a re-encryption the layout never changes and the check is one
//!   comparison.
//! * **While it runs**, snapshots of the disk, rollback and rewrap are
//!   refused (`Conflict`): a snapshot would share chunks under two keys.
//!   Growing the disk is fine (the new area reads as zeros), and so are
//!   clones of the disk's older snapshots.
//! * **Crash.** Chunks a step wrote are named by no durable state until its
//!   commit, and the chunks they replace are not reused before it. So a
//!   power loss at any point leaves the last commit: either the old map
//!   entries with the old `done`, or the new ones with the new `done`,
//!   never a mix, and never a half-written chunk that durable metadata
//!   names. Finishing is one commit too. Resuming is
//!   [`Engine::open_disk_rekeying`] and more steps; the chunks of an
//!   interrupted step are simply done again.
//!
//! # Raw chunks (object storage)
//!
//! A snapshot can leave the pool as it is stored, never decrypted, and come
//! back into a new disk under the same data key: the XTS tweak is the
//! logical sector number, so ciphertext copied to the same offset of a disk
//! with the same data key and block size decrypts there.
//!
//! * [`Engine::snapshot_raw_chunks`] gives a range of a snapshot's chunks
//!   as [`RawChunk`]s, resolved through its chain as a read would: `Zero`
//!   for a chunk that reads as zeros, otherwise `Data` with the bytes the
//!   chain shows of it (up to a layer's limit or the snapshot's size, a
//!   multiple of the block size), the rest reading as zeros. It needs no
//!   key. Like a read it looks chunks up under the engine lock and reads
//!   the pool outside it, holding the reuse gate, a few chunks at a time; a
//!   snapshot's layers never change while it exists.
//! * [`OpenDisk::write_raw_chunk`] puts one back at the same index: `Data`
//!   into a fresh chunk of the top layer with the disk's encrypted zeros
//!   after its bytes, `Zero` as the zero marker (as a whole-chunk trim).
//!   Refused (`Conflict`) while the disk is being re-encrypted, when the
//!   key of an index can change under it. The engine cannot check that
//!   the data key and block size match: bytes under another key read as
//!   garbage.
//! * **Crash.** A raw write is an unflushed write into a fresh chunk (the
//!   chunk it replaces is freed by the next commit, as copy-on-write's
//!   are), so a power loss before the next flush leaves the whole chunk
//!   as it was, and one after it the chunk as written; never a mix.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod engine;
mod storage;

pub use engine::{Engine, OpenDisk};
pub use storage::{FileStorage, Storage};

use serde::{Deserialize, Serialize};

/// The pool's allocation unit, and the copy-on-write granule.
pub const CHUNK: u64 = 64 * 1024;
/// The largest disk: 64 TiB.
pub const MAX_SIZE: u64 = 64 << 40;

/// One chunk of a snapshot exactly as stored: ciphertext of an encrypted
/// disk, plaintext of an unencrypted one (see "Raw chunks (object
/// storage)" in the crate docs). Its `Debug` shows the length of the bytes,
/// never the bytes.
#[derive(Clone, PartialEq, Eq)]
pub enum RawChunk {
    /// Reads as zeros: no layer maps it, a trim marker, or past every
    /// limit.
    Zero,
    /// The chunk's first `bytes.len()` bytes as stored (a positive multiple
    /// of the disk's block size, at most [`CHUNK`]); the rest of the chunk
    /// reads as zeros (the part the chain does not show: past a layer's
    /// limit or past the snapshot's size).
    Data {
        /// The stored bytes.
        bytes: Vec<u8>,
    },
}

impl std::fmt::Debug for RawChunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Zero => f.write_str("Zero"),
            Self::Data { bytes } => f
                .debug_struct("Data")
                .field("visible", &bytes.len())
                .finish_non_exhaustive(),
        }
    }
}

/// Errors. Every one leaves the engine's state unchanged, except
/// [`DiskError::Failed`] (the engine stopped on an I/O error).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiskError {
    /// No disk or snapshot with this id.
    #[error("{kind} {id} does not exist")]
    NotFound {
        /// `disk` or `snapshot`.
        kind: &'static str,
        /// The id asked for.
        id: String,
    },
    /// A disk or snapshot with this id exists already.
    #[error("{kind} {id} already exists")]
    Exists {
        /// `disk` or `snapshot`.
        kind: &'static str,
        /// The id.
        id: String,
    },
    /// A size, offset, length or argument that is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// The operation conflicts with the disk's state (open, for example).
    #[error("{0}")]
    Conflict(String),
    /// The pool or the metadata store failed; the engine has stopped.
    #[error("disk engine stopped: {0}")]
    Failed(String),
    /// An I/O error on a data write or read (the engine goes on). The pool's
    /// own [`std::io::Error`] is kept, so its [`kind`](std::io::Error::kind)
    /// (a full pool is [`StorageFull`](std::io::ErrorKind::StorageFull)) and
    /// OS error number reach the callers that answer block-device clients;
    /// see [`DiskError::io_kind`]. Its message is part of this one's, so it
    /// is not also a [`source`](std::error::Error::source).
    #[error("disk I/O: {context}: {error}")]
    Io {
        /// What was being done (`writing the pool`, ...).
        context: String,
        /// The error.
        error: std::io::Error,
    },
}

impl DiskError {
    /// A [`DiskError::Io`]: `error` while doing `context`.
    pub(crate) fn io(context: impl Into<String>, error: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            error,
        }
    }

    /// What this error is as an I/O error, for the callers that serve a
    /// disk as a block device (NBD, local attach) and answer with an errno:
    /// the pool's own kind for [`DiskError::Io`],
    /// [`InvalidInput`](std::io::ErrorKind::InvalidInput) for
    /// [`DiskError::Invalid`] (a range outside the disk, say), and
    /// [`Other`](std::io::ErrorKind::Other) for the rest.
    #[must_use]
    pub fn io_kind(&self) -> std::io::ErrorKind {
        match self {
            Self::Io { error, .. } => error.kind(),
            Self::Invalid(_) => std::io::ErrorKind::InvalidInput,
            Self::NotFound { .. } | Self::Exists { .. } | Self::Conflict(_) | Self::Failed(_) => {
                std::io::ErrorKind::Other
            }
        }
    }
}

/// The wrapped data key of an encrypted disk, as the disk service stored it:
/// opaque to the engine, which only keeps it with the disk and its
/// snapshots.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    /// The master key the data key is wrapped under (a key ARN).
    pub key_arn: String,
    /// The key service's ciphertext blob of the 64-byte XTS data key.
    pub wrapped: Vec<u8>,
    /// The grant that lets the disk service unwrap it, if any.
    #[serde(default)]
    pub grant_id: Option<String>,
}

impl std::fmt::Debug for KeyInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyInfo")
            .field("key_arn", &self.key_arn)
            .field("wrapped_len", &self.wrapped.len())
            .field("grant_id", &self.grant_id)
            .finish()
    }
}

/// What a new disk is.
#[derive(Debug, Clone)]
pub struct DiskSpec {
    /// Size in bytes: a positive multiple of 4 KiB, at most [`MAX_SIZE`].
    pub size: u64,
    /// Logical block size: 512 or 4096.
    pub block_size: u32,
    /// The wrapped data key, or `None` for an unencrypted disk.
    pub key: Option<KeyInfo>,
    /// The caller's labels (owner, creation time, ...), opaque here.
    pub labels: Labels,
}

/// Labels a caller keeps with a disk or snapshot (the disk service keeps
/// the owning account and region there), opaque to the engine and
/// committed atomically with the record.
pub type Labels = std::collections::BTreeMap<String, String>;

/// A disk, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskInfo {
    /// Its id.
    pub id: String,
    /// Size in bytes.
    pub size: u64,
    /// Logical block size.
    pub block_size: u32,
    /// The wrapped data key (absent: unencrypted).
    pub key: Option<KeyInfo>,
    /// The snapshot it was cloned from, if any.
    pub origin: Option<String>,
    /// The caller's labels.
    #[serde(default)]
    pub labels: Labels,
    /// The re-encryption in progress, if any.
    #[serde(default)]
    pub rekey: Option<RekeyInfo>,
    /// Its top layer.
    pub(crate) top: u64,
}

/// A re-encryption in progress: the disk's data moves to `key`, chunk by
/// chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RekeyInfo {
    /// The new wrapped data key.
    pub key: KeyInfo,
    /// Chunk indexes below this are under the new key.
    pub done: u64,
}

/// Where a re-encryption stands, in chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RekeyProgress {
    /// Chunk indexes below this are under the new key.
    pub done: u64,
    /// The disk's chunks now: its size divided by [`CHUNK`], rounded up (a
    /// disk that grows during a re-encryption has more to do).
    pub total: u64,
    /// The re-encryption is over: the disk is under the new key alone.
    pub finished: bool,
}

/// A snapshot, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// Its id.
    pub id: String,
    /// The disk it was taken of.
    pub disk: String,
    /// The disk's size then.
    pub size: u64,
    /// The disk's logical block size.
    pub block_size: u32,
    /// Its wrapped data key (the disk's data key; absent: unencrypted).
    pub key: Option<KeyInfo>,
    /// The caller's labels.
    #[serde(default)]
    pub labels: Labels,
    /// Its (frozen) layer.
    pub(crate) layer: u64,
}

/// Checks a disk size: positive, a multiple of 4 KiB, at most [`MAX_SIZE`].
pub fn check_size(size: u64) -> Result<(), DiskError> {
    if size == 0 || !size.is_multiple_of(4096) {
        return Err(DiskError::Invalid(format!(
            "a disk size must be a positive multiple of 4096 bytes, not {size}"
        )));
    }
    if size > MAX_SIZE {
        return Err(DiskError::Invalid(format!(
            "a disk size must be at most {MAX_SIZE} bytes (64 TiB), not {size}"
        )));
    }
    Ok(())
}
