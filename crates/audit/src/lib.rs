//! The audit trail: one record per request, appended to a file, chained by
//! HMAC so that any edited, inserted, deleted or reordered record is
//! detected, and made durable before the request it describes takes effect.
//!
//! Owns: the record format, the chain, the file and its crash recovery,
//! group commit (many appends share one fsync), verification and queries.
//! Knows nothing of what the operations mean.
//!
//! INTERFACE CONTRACT (fixed; the implementation fills it in):
//! * [`AuditLog::open`] opens or creates the log, repairs a torn final line
//!   left by a crash (a record that was never acknowledged), checks the tail
//!   against the head file, and starts the syncer.
//! * [`AuditLog::append`] / [`AuditLog::append_blocking`] return only once
//!   the record is durable (written and fsynced), or an error; a caller must
//!   not let the request take effect on error (fail closed).
//! * [`verify`] names the first bad record; [`query`] filters records.
//!
//! # Files
//!
//! The log lives in one directory (created mode 0700 if absent) as two files,
//! both created mode 0600:
//!
//! * `audit.log`: one record per line, append-only. A line is the compact
//!   JSON of [`Record`] followed by `\n`, with the fields in this fixed order
//!   (absent options and an empty `context_keys` are left out):
//!   `seq, time, request_id, region, account, principal, access_key_id,
//!   source, operation, key_arn, via_service, grant_id, context_keys, result,
//!   prev, mac`. For example (one line):
//!   `{"seq":1,"time":"2026-11-22T07:12:00.123Z","request_id":"...",
//!   "operation":"Decrypt",...,"result":"Success","prev":"000...0",
//!   "mac":"3f1c..."}`.
//! * `audit.head`: one fixed-length line (172 bytes, within one disk sector),
//!   `atrest-audit-head v1 <seq as 20 digits> <mac> <tag>\n`, naming the last
//!   record the syncer has made durable. `tag` is the hex HMAC-SHA256 under
//!   the audit key of the bytes before ` <tag>`. It is rewritten in place
//!   (same offset, same length) and fsynced after every batch. The head is
//!   what makes deleting records from the *end* of the log detectable; its
//!   tag makes editing it detectable. (Replacing it with an older genuine
//!   head together with truncating the log is not detectable from the files
//!   alone; anchoring the head elsewhere would be.)
//!
//! # The chain
//!
//! `prev` is the `mac` of the previous record (64 `0`s for seq 1); `seq`
//! counts from 1 without gaps. `mac` is the lower-case hex HMAC-SHA256, under
//! the audit key, of the line's exact bytes before `,"mac":"`, that is
//! `{"seq":N,` ... `,"prev":"<64 hex>"`. Because the MAC covers the exact
//! bytes rather than a re-serialisation, any change to a line is caught,
//! including ones that keep the JSON valid and even its meaning (whitespace,
//! field order, escapes, hex case); an edited `seq` or `prev` is caught by
//! the MAC, a deleted, duplicated or moved record by the seq, a record
//! spliced in from another chain by `prev`, a deleted tail by the head.
//! Checking a line needs no JSON parse: a line must end with
//! `,"mac":"<64 hex>"}`, its signed part with `,"prev":"<64 hex>"` and begin
//! with `{"seq":<digits>,`; the MAC then vouches for the rest. Records hold
//! only what the caller put in the [`Entry`]; the crate never sees secrets.
//!
//! # Group commit
//!
//! An append does its own write, in the caller's thread: under the tail
//! lock it assigns seq, prev and mac and writes the line with one
//! `write_at` at the end of the log (over preallocated zeros), so the order
//! of the lines is the order of the appends, and a killed process loses no
//! record an append returned. A dedicated syncer thread makes the writes
//! durable: it snapshots the end of what is written, `fdatasync`s the log
//! without holding the lock (appends go on meanwhile), rewrites the head to
//! name the last record the sync covered (syncing the head too when
//! [`Options::head_sync_interval`] is zero), and only then replies `Ok(seq)`
//! to every durable append the sync covered, in seq order.
//!
//! * A durable append ([`AuditLog::append`] awaits a one-shot reply,
//!   [`AuditLog::append_blocking`] blocks on a std channel) wakes the syncer,
//!   which starts a sync at once, or [`Options::commit_interval`] after the
//!   last one began. Records written while a sync runs share the next one.
//! * A written append ([`AuditLog::append_written`]) returns as soon as its
//!   line is written; the syncer syncs it within [`Options::sync_interval`]
//!   together with everything written meanwhile (or sooner, with the next
//!   durable append's sync). A power loss or kernel crash before that sync
//!   can lose such records, from the end only: recovery keeps every record up
//!   to the last one made durable, and cuts a torn tail.
//!
//! Fail closed: if a write fails, that append gets [`AuditError::Io`]; if a
//! sync or the head update fails, every append waiting for it does. Either
//! way the log tries (best effort) to cut the file back to the end of the
//! last record it acknowledged (synced, or returned by a written append),
//! and from then on every append gets [`AuditError::Closed`] until the log is
//! reopened. It never continues after a failure: the file may end in a torn
//! record, and after a failed fsync the page cache no longer says what is on
//! disk, so records already returned by written appends may be lost, and a
//! record whose durable append failed may remain in the log (a record of a
//! refused request, never a request without its record). An appender that
//! stops waiting (its future dropped) does not withdraw its record.
//!
//! # Opening and recovery
//!
//! [`AuditLog::open`] creates the files if absent (the head first, written
//! for an empty log and synced, then the directory synced), takes an
//! exclusive lock on `audit.log` (a second writer, in this process or another,
//! is refused), reads the head, and reads the whole log checking the chain.
//! Because the head is written only after the log is synced, every record it
//! names is durable; records after it are durable ones whose head update did
//! not happen, or written ones the page cache kept (a killed process), or
//! the torn remains of unsynced writes (a power loss). Hence:
//!
//! * every record up to the head's seq must be present and good, and the
//!   head's record must have the head's mac; otherwise the log is
//!   [`AuditError::Damaged`] (whose `seq` is the first bad line, or 0 for
//!   the head file itself) and does not open;
//! * after the head's record, good records are kept (their MACs prove the
//!   audit key wrote them) and the head is advanced to them;
//! * everything from the first bad line after the head on was never
//!   acknowledged and is cut away, with a `tracing::warn!`, if that line is
//!   what a crash during a write leaves: a line cut short (no final `\n`) or
//!   one holding NUL bytes (blocks allocated but not written). Any other bad
//!   line after the head (a complete line with a bad MAC, a wrong seq or
//!   prev) cannot come from a crash: it is an inserted record, and the log is
//!   [`AuditError::Damaged`];
//! * an empty head file is accepted only with an empty log (a crash while
//!   creating the files).
//!
//! Opening reads and MACs the whole file: about 550 bytes a record, so a
//! million records are about 550 MB and take on the order of a second or
//! two, bounded by HMAC-SHA256 and the disk. The log is never rotated by
//! this crate.
//!
//! # Verify and query
//!
//! [`verify`] reads `audit.head` and then `audit.log` without opening the
//! log for writing (so it can run beside a live writer) and applies the same
//! rules, reporting instead of repairing: the first bad line and why (bad
//! MAC, seq gap or duplicate or out of order, prev mismatch, unparsable or
//! incomplete line, a mismatch with the head, records missing from the end,
//! a bad or missing head (line 0)). An incomplete last line after the head's
//! record is not reported: it is a write in progress, or a torn one that the
//! next open cuts away. A bad line after the head holding NUL bytes is
//! reported, with a note that it is probably crash debris that opening cuts.
//!
//! [`query`] reads the log without checking it and filters it. Times are
//! compared as strings, which orders them correctly because every `time` is
//! written as UTC with milliseconds, `YYYY-MM-DDTHH:MM:SS.mmmZ` (callers
//! must use exactly that form; `since`/`until` may be any prefix of it, e.g.
//! a date).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader};
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use atrest_crypto::SecretKey;
use atrest_crypto::hash::HmacSha256Key;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

mod format;
mod scan;
mod storage;
mod writer;

pub use storage::{Faults, Faulty, FileStorage, Storage};

use format::{HEAD_LEN, ZERO_MAC, decode_head, encode_head};
use scan::{missing_reason, scan};
use writer::{Ack, Core, Syncer};

/// The log file's name in the directory.
pub const LOG_FILE: &str = "audit.log";
/// The head file's name in the directory.
pub const HEAD_FILE: &str = "audit.head";

/// The read buffer for scanning a log.
const READ_BUF: usize = 64 * 1024;

/// What a caller submits: one request's facts. Never a secret: no
/// plaintext, key material, access key secret or encryption-context value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Entry {
    /// When the request was received, RFC 3339 UTC with milliseconds.
    pub time: String,
    /// The request id returned to the client.
    pub request_id: String,
    /// The region the request was for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The caller's account, when authenticated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// The caller's principal ARN (or service name), when authenticated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// The access key id used, when authenticated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    /// The client's address (`ip:port`), or `in-process` for services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The operation (`Encrypt`, `CreateGrant`, `admin:CreateAccount`, ...).
    pub operation: String,
    /// The key ARN the request acted on, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_arn: Option<String>,
    /// The service the request came through (`kms:ViaService`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via_service: Option<String>,
    /// The grant that allowed the request, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<String>,
    /// The names (never the values) of the encryption-context keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub context_keys: Vec<String>,
    /// `Success`, or the AWS error type (`AccessDeniedException`, ...).
    pub result: String,
    /// How many requests the record stands for, when more than one: a
    /// record of refused unauthenticated requests from one source over an
    /// interval (`operation` is then `unauthenticated`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Of an aggregated record: how many of its requests were refused for
    /// each reason (`MissingAuthenticationTokenException`,
    /// `InvalidSignatureException`, `NotFound`, ...).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub kinds: std::collections::BTreeMap<String, u64>,
}

/// A record as stored: the entry, its sequence number (from 1), and the
/// chain fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = AuditRecord)]
pub struct Record {
    /// Position in the log, from 1, without gaps.
    pub seq: u64,
    /// The facts.
    #[serde(flatten)]
    pub entry: Entry,
    /// Hex MAC of the previous record (64 zeros for the first).
    pub prev: String,
    /// Hex HMAC-SHA256 over `prev` and this record's other fields.
    pub mac: String,
}

/// Audit errors. An append error means the request must not take effect.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The file could not be read, written or synced.
    #[error("audit log {path}: {reason}")]
    Io {
        /// The file.
        path: String,
        /// What failed.
        reason: String,
    },
    /// The log on disk is not a valid chain (at open).
    #[error("audit log {path} is damaged at record {seq}: {reason}")]
    Damaged {
        /// The file.
        path: String,
        /// The first bad record's position (1-based line number).
        seq: u64,
        /// What is wrong.
        reason: String,
    },
    /// The log has stopped (after an I/O error it refuses all appends
    /// until the log is reopened).
    #[error("audit log is not accepting records: {0}")]
    Closed(String),
}

/// The result of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records that verified, in order, before the first bad one.
    pub good: u64,
    /// The first bad record: its line number (1-based) and what is wrong.
    /// `None` if the whole log verified, including against the head file.
    pub first_bad: Option<(u64, String)>,
}

/// A filter for [`query`]; every field that is set must match.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Records about this key ARN.
    pub key_arn: Option<String>,
    /// Records by this principal ARN.
    pub principal: Option<String>,
    /// Records of this operation.
    pub operation: Option<String>,
    /// Records at or after this time (RFC 3339).
    pub since: Option<String>,
    /// Records before this time (RFC 3339).
    pub until: Option<String>,
    /// At most this many records (the most recent ones).
    pub limit: Option<usize>,
}

/// What the log has done since it was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditStats {
    /// Records written.
    pub records: u64,
    /// Batches committed (each one sync of the log).
    pub batches: u64,
    /// The most records one sync covered.
    pub max_batch: u64,
    /// The seq of the last record in the log.
    pub last_seq: u64,
    /// The seq of the last record known durable.
    pub synced_seq: u64,
    /// Why the log stopped, if it did (appends then fail).
    pub failed: Option<String>,
}

/// How the log trades latency and durability for CPU. The defaults suit the key
/// service (see the module documentation for the measurements).
#[derive(Debug, Clone)]
pub struct Options {
    /// The least time between the starts of two syncs that durable appends
    /// ([`AuditLog::append`], [`AuditLog::append_blocking`]) wait for.
    /// Appends arriving meanwhile wait and share the next sync, so this
    /// bounds the syncs per second, which cost CPU (about 100 µs of system
    /// time each on the reference machine). An append arriving when the log
    /// has been idle for longer does not wait. Zero syncs as soon as the
    /// last sync is done.
    pub commit_interval: Duration,
    /// The most time a record appended with [`AuditLog::append_written`]
    /// (answered once written, before it is durable) waits for the sync
    /// that makes it durable. Records written meanwhile share that sync.
    pub sync_interval: Duration,
    /// How often the head is synced. Zero syncs it after every sync of the
    /// log, before the durable appends it covered are acknowledged.
    /// Otherwise the head is still written after every sync of the log
    /// before acknowledging (so it names every durable record for any
    /// reader and across a process crash), but synced only when this much
    /// time has passed since its last sync, when the syncer is idle past
    /// that, and when the log is closed; a power loss can then
    /// leave it naming an older record, which recovery handles (the records
    /// after it are durable and kept) at the cost of not detecting, for
    /// those records only, a truncation made before the next open.
    pub head_sync_interval: Duration,
    /// The log file is extended with written zeros this many bytes at a
    /// time, so that most batches overwrite blocks the file already has:
    /// their `fdatasync` then flushes the data without the inode (on the
    /// reference machine about half the time and two thirds of the CPU of an
    /// appending one). The zeros are cut away when the log is closed, and
    /// after a crash by the next open. Zero turns this off.
    pub preallocate: u64,
    /// Wrap both files in [`Faulty`] storages driven by this switch (for
    /// tests that make the audit storage fail on demand).
    pub faults: Option<Faults>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            commit_interval: DEFAULT_COMMIT_INTERVAL,
            sync_interval: DEFAULT_SYNC_INTERVAL,
            head_sync_interval: DEFAULT_HEAD_SYNC_INTERVAL,
            preallocate: DEFAULT_PREALLOCATE,
            faults: None,
        }
    }
}

/// [`Options::commit_interval`]'s default.
///
/// Zero: in the key service, waiting for company cost more (latency, and idle
/// CPUs woken again) than the syncs it saved. With `atrest serve
/// --audit-commit-delay-us 1000` instead of 0, `kms-load` measured 25 % to
/// 40 % fewer ops/s at 4 to 16 concurrent requests and no gain at 64
/// (`docs/benchmarks.md`, section 2).
pub const DEFAULT_COMMIT_INTERVAL: Duration = Duration::ZERO;
/// [`Options::sync_interval`]'s default: a power loss can take at most
/// about this much of the records answered before their sync, and the
/// syncs it costs (100 a second at most) take about 1 % of a core on the
/// reference machine.
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_millis(10);
/// [`Options::preallocate`]'s default.
pub const DEFAULT_PREALLOCATE: u64 = 1 << 20;
/// [`Options::head_sync_interval`]'s default.
pub const DEFAULT_HEAD_SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// The audit log, open for appending.
pub struct AuditLog {
    core: Arc<Core>,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLog")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

fn io_err(path: impl Into<String>, e: impl fmt::Display) -> AuditError {
    AuditError::Io {
        path: path.into(),
        reason: e.to_string(),
    }
}

fn damaged(path: impl Into<String>, seq: u64, reason: impl Into<String>) -> AuditError {
    AuditError::Damaged {
        path: path.into(),
        seq,
        reason: reason.into(),
    }
}

/// Reads all of a small storage (the head).
fn read_small<S: Storage>(s: &mut S, max: u64) -> Result<Vec<u8>, AuditError> {
    let len = s.len().map_err(|e| io_err(s.name(), e))?;
    if len > max {
        return Err(damaged(
            s.name(),
            0,
            format!("{HEAD_FILE} is {len} bytes long"),
        ));
    }
    let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
    let mut at = 0usize;
    while at < buf.len() {
        let n = s
            .read_at(at as u64, &mut buf[at..])
            .map_err(|e| io_err(s.name(), e))?;
        if n == 0 {
            buf.truncate(at);
            break;
        }
        at += n;
    }
    Ok(buf)
}

impl AuditLog {
    /// Opens (creating if absent) the log in `dir` (files `audit.log` and
    /// `audit.head`), chained under `key`.
    pub fn open(dir: &Path, key: &SecretKey<32>) -> Result<Self, AuditError> {
        Self::open_with_options(dir, key, &Options::default())
    }

    /// [`AuditLog::open`] with [`Options`].
    pub fn open_with_options(
        dir: &Path,
        key: &SecretKey<32>,
        options: &Options,
    ) -> Result<Self, AuditError> {
        let dir_name = dir.display().to_string();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io_err(&dir_name, e))?;
        // The head first: a log without a head is damaged, a head without a
        // log is a crash during creation.
        let head_path = dir.join(HEAD_FILE);
        let log_path = dir.join(LOG_FILE);
        let (head, head_created) = FileStorage::open(&head_path)
            .map_err(|e| io_err(head_path.display().to_string(), e))?;
        let (log, log_created) =
            FileStorage::open(&log_path).map_err(|e| io_err(log_path.display().to_string(), e))?;
        if let Err(e) = log.file().try_lock() {
            let reason = match e {
                fs::TryLockError::WouldBlock => {
                    "already open for writing (by this or another process)".to_string()
                }
                fs::TryLockError::Error(e) => format!("cannot lock: {e}"),
            };
            return Err(io_err(log.name(), reason));
        }
        if head_created || log_created {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io_err(&dir_name, e))?;
        }
        Self::open_with(log, head, key, options)
    }

    /// Opens the log on the given storages: `log` holds `audit.log`, `head`
    /// holds `audit.head` (with `options.faults`, both are wrapped in
    /// [`Faulty`]). Recovers as [`AuditLog::open`] does and starts the syncer
    /// thread, which owns both from then on.
    pub fn open_with<L: Storage, H: Storage>(
        log: L,
        head: H,
        key: &SecretKey<32>,
        options: &Options,
    ) -> Result<Self, AuditError> {
        match &options.faults {
            None => Self::start(log, head, key, options),
            Some(f) => Self::start(
                Faulty::new(log, f.clone()),
                Faulty::new(head, f.clone()),
                key,
                options,
            ),
        }
    }

    fn start<L: Storage, H: Storage>(
        mut log: L,
        mut head: H,
        key: &SecretKey<32>,
        options: &Options,
    ) -> Result<Self, AuditError> {
        let (seq, prev, len) = recover(&mut log, &mut head, key)?;
        let core = Arc::new(Core::new(
            Box::new(log),
            key.duplicate(),
            (len, seq, prev),
            options.preallocate,
        ));
        let syncer = Syncer::new(
            Arc::clone(&core),
            head,
            options.commit_interval,
            options.sync_interval,
            options.head_sync_interval,
        );
        let thread = std::thread::Builder::new()
            .name("atrest-audit".into())
            .spawn(move || syncer.run())
            .map_err(|e| AuditError::Closed(format!("cannot start the audit syncer: {e}")))?;
        Ok(Self {
            core,
            thread: Some(thread),
        })
    }

    /// Writes `entry`'s record; `ack`, if given, gets the reply once it is
    /// durable.
    fn write(&self, entry: &Entry, ack: Option<Ack>) -> Result<u64, AuditError> {
        if self.core.failed.get().is_some() {
            return Err(self.stopped());
        }
        self.core.append(&format::encode_body(entry), ack)
    }

    fn stopped(&self) -> AuditError {
        match self.core.failed.get() {
            Some(reason) => AuditError::Closed(reason.clone()),
            None => AuditError::Closed("the audit syncer has stopped".into()),
        }
    }

    /// Appends `entry`; resolves once it is durable. Returns its `seq`.
    pub async fn append(&self, entry: Entry) -> Result<u64, AuditError> {
        let (tx, rx) = oneshot::channel();
        self.write(&entry, Some(Ack::Async(tx)))?;
        drop(entry);
        rx.await.map_err(|_| self.stopped())?
    }

    /// [`AuditLog::append`] for synchronous callers.
    pub fn append_blocking(&self, entry: Entry) -> Result<u64, AuditError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.write(&entry, Some(Ack::Blocking(tx)))?;
        drop(entry);
        rx.recv().map_err(|_| self.stopped())?
    }

    /// Appends `entry` and returns its `seq` once its record is written to
    /// the log file, before it is durable: it is then in the kernel's page
    /// cache, so that a killed process loses nothing, and the syncer makes
    /// it durable within [`Options::sync_interval`]. A power loss or kernel
    /// crash before that sync can lose it. An error means the record is not
    /// in the log (fail closed, as for [`AuditLog::append`]). It does one
    /// positioned write under a short lock and never waits for the disk, so
    /// async code may call it directly.
    pub fn append_written(&self, entry: &Entry) -> Result<u64, AuditError> {
        self.write(entry, None)
    }

    /// What the log has done since open.
    #[must_use]
    pub fn stats(&self) -> AuditStats {
        let c = &self.core;
        AuditStats {
            records: c.records.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            max_batch: c.max_batch.load(Ordering::Relaxed),
            last_seq: c.last_seq.load(Ordering::Acquire),
            synced_seq: c.synced_seq.load(Ordering::Acquire),
            failed: c.failed.get().cloned(),
        }
    }
}

impl Drop for AuditLog {
    /// Syncs what is written, then waits for the syncer to stop (so the
    /// files are closed and the lock released when this returns).
    fn drop(&mut self) {
        self.core.close();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads the head and the log, repairs the log's tail and advances the head
/// as the recovery rules say; returns the last record's seq and mac and the
/// log's length.
fn recover<L: Storage, H: Storage>(
    log: &mut L,
    head: &mut H,
    key: &SecretKey<32>,
) -> Result<(u64, [u8; 64], u64), AuditError> {
    let log_len = log.len().map_err(|e| io_err(log.name(), e))?;
    let head_bytes = read_small(head, 4096)?;
    let (head_seq, head_mac) = if head_bytes.is_empty() {
        if log_len != 0 {
            return Err(damaged(
                head.name(),
                0,
                format!("{HEAD_FILE} is missing or empty but the log is not"),
            ));
        }
        write_head(head, key, 0, &ZERO_MAC)?;
        (0, ZERO_MAC)
    } else {
        decode_head(key, &head_bytes).map_err(|r| damaged(head.name(), 0, r))?
    };

    let reader = BufReader::with_capacity(READ_BUF, storage::StorageReader::new(log));
    let s = scan(reader, key, Some((head_seq, head_mac))).map_err(|e| io_err(log.name(), e))?;
    if let Some(bad) = &s.bad
        && (bad.line <= head_seq || !bad.debris)
    {
        return Err(damaged(log.name(), bad.line, bad.reason.clone()));
    }
    if s.good < head_seq {
        return Err(damaged(
            log.name(),
            s.good + 1,
            missing_reason(head_seq, s.good),
        ));
    }
    if let Some(bad) = &s.bad
        && bad.zeros
    {
        tracing::debug!(
            path = %log.name(),
            bytes = log_len - s.offset,
            "audit log: removing preallocated space left by a writer that did not close the log"
        );
    } else if let Some(bad) = &s.bad {
        tracing::warn!(
            path = %log.name(),
            line = bad.line,
            reason = %bad.reason,
            bytes = log_len - s.offset,
            "audit log: cutting away an unacknowledged torn tail (left by a crash or a failed write)"
        );
    }
    if s.offset < log_len {
        log.set_len(s.offset)
            .and_then(|()| log.sync())
            .map_err(|e| io_err(log.name(), e))?;
    }
    if s.good > head_seq {
        tracing::warn!(
            path = %log.name(),
            head = head_seq,
            last = s.good,
            "audit log: keeping durable records after the head (a crash or failed write came \
             between the log's sync and the head's); advancing the head"
        );
        write_head(head, key, s.good, &s.prev)?;
    }
    Ok((s.good, s.prev, s.offset))
}

fn write_head<H: Storage>(
    head: &mut H,
    key: &SecretKey<32>,
    seq: u64,
    mac: &[u8; 64],
) -> Result<(), AuditError> {
    let bytes = encode_head(&HmacSha256Key::new(key.expose()), seq, mac);
    debug_assert_eq!(bytes.len(), HEAD_LEN);
    head.write_at(0, &bytes)
        .and_then(|()| head.set_len(HEAD_LEN as u64))
        .and_then(|()| head.sync())
        .map_err(|e| io_err(head.name(), e))
}

fn open_read(path: &Path) -> Result<Option<File>, AuditError> {
    match File::open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path.display().to_string(), e)),
    }
}

/// Verifies the log in `dir` under `key`.
pub fn verify(dir: &Path, key: &SecretKey<32>) -> Result<VerifyReport, AuditError> {
    // Beside a live writer, a read can catch the head in the middle of its
    // rewrite, or the log in the middle of a write over its preallocated
    // zeros (part of a line read before the write, the rest after it).
    // Either looks like damage that only a crash or an edit would leave;
    // such a result is confirmed by reading again before it is reported.
    let mut attempt = 0;
    loop {
        let (report, maybe_live) = verify_once(dir, key)?;
        attempt += 1;
        if !maybe_live || attempt == VERIFY_ATTEMPTS {
            return Ok(report);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

const VERIFY_ATTEMPTS: u32 = 4;

/// One reading; also whether a bad result may be a live writer's doing.
fn verify_once(dir: &Path, key: &SecretKey<32>) -> Result<(VerifyReport, bool), AuditError> {
    let head_path = dir.join(HEAD_FILE);
    let log_path = dir.join(LOG_FILE);
    // The head first: a live writer syncs the log before the head, so every
    // record the head names is in the log when it is read afterwards.
    let head_bytes = match fs::read(&head_path) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err(head_path.display().to_string(), e)),
    };
    let Some(log) = open_read(&log_path)? else {
        return Err(io_err(log_path.display().to_string(), "no audit log here"));
    };
    let log_len = log
        .metadata()
        .map_err(|e| io_err(log_path.display().to_string(), e))?
        .len();
    let head = match head_bytes.as_deref() {
        None | Some([]) if log_len == 0 => {
            let report = VerifyReport {
                good: 0,
                first_bad: None,
            };
            return Ok((report, false));
        }
        None => Err(format!("{HEAD_FILE} is missing")),
        Some([]) => Err(format!("{HEAD_FILE} is empty")),
        Some(b) => decode_head(key, b),
    };
    let reader = BufReader::with_capacity(READ_BUF, log);
    let s = scan(reader, key, head.as_ref().ok().copied())
        .map_err(|e| io_err(log_path.display().to_string(), e))?;
    let maybe_live = match (&head, &s.bad) {
        (Err(_), _) => true,
        (Ok((head_seq, _)), Some(bad)) => bad.line > *head_seq && bad.debris && !bad.incomplete,
        (Ok(_), None) => false,
    };
    let first_bad = match (head, s.bad) {
        // After the head's record, an incomplete last line is a write in
        // progress, or a torn one that open cuts away: not reported.
        (Ok((head_seq, _)), Some(bad)) if bad.line > head_seq && bad.incomplete => None,
        (Ok((head_seq, _)), Some(bad)) if bad.line > head_seq && bad.debris => Some((
            bad.line,
            format!(
                "{} (after the head's record {head_seq}: possibly a torn write from a crash, \
                 which opening the log cuts away)",
                bad.reason
            ),
        )),
        (_, Some(bad)) => Some((bad.line, bad.reason)),
        (Ok((head_seq, _)), None) if s.good < head_seq => {
            Some((s.good + 1, missing_reason(head_seq, s.good)))
        }
        (Ok(_), None) => None,
        (Err(reason), None) => Some((0, reason)),
    };
    let report = VerifyReport {
        good: s.good,
        first_bad,
    };
    Ok((report, maybe_live))
}

impl Filter {
    fn matches(&self, r: &Record) -> bool {
        fn eq(want: Option<&String>, have: Option<&String>) -> bool {
            want.is_none_or(|w| have == Some(w))
        }
        eq(self.key_arn.as_ref(), r.entry.key_arn.as_ref())
            && eq(self.principal.as_ref(), r.entry.principal.as_ref())
            && eq(self.operation.as_ref(), Some(&r.entry.operation))
            && self.since.as_ref().is_none_or(|s| r.entry.time >= *s)
            && self.until.as_ref().is_none_or(|u| r.entry.time < *u)
    }
}

/// The records of the log in `dir` that match `filter`, oldest first.
pub fn query(dir: &Path, filter: &Filter) -> Result<Vec<Record>, AuditError> {
    let path = dir.join(LOG_FILE);
    let name = || path.display().to_string();
    let Some(file) = open_read(&path)? else {
        return Err(io_err(name(), "no audit log here"));
    };
    let mut reader = BufReader::with_capacity(READ_BUF, file);
    let mut out = std::collections::VecDeque::new();
    let limit = filter.limit.unwrap_or(usize::MAX);
    if limit == 0 {
        return Ok(Vec::new());
    }
    let mut line = Vec::with_capacity(1024);
    let mut no = 0u64;
    loop {
        line.clear();
        let got = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| io_err(name(), e))?;
        if got == 0 {
            break;
        }
        no += 1;
        // An incomplete last line is a write in progress (or a torn one);
        // NUL bytes are the preallocated tail, read before a write that
        // the rest of the line was read after. Either is the end.
        let Some(body) = line.strip_suffix(b"\n") else {
            break;
        };
        if body.contains(&0) {
            break;
        }
        let record = match format::parse_record(body) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(path = %name(), line = no, error = %e, "audit query: skipping an unparsable line");
                continue;
            }
        };
        if filter.matches(&record) {
            if out.len() == limit {
                out.pop_front();
            }
            out.push_back(record);
        }
    }
    Ok(out.into())
}
