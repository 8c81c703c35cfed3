//! The audit trail: one record per request (or per group of requests the
//! caller counts together, with [`Entry::count`]), appended to a file,
//! chained by HMAC so that any edited, inserted, deleted or reordered record is
//! detected, and made durable before the request it describes takes effect.
//! The file is sealed into an immutable segment at a set size and a new one
//! started, the chain running on across them.
//!
//! Owns: the record format, the chain, the files and their crash recovery,
//! group commit (many appends share one fsync), segments, verification and
//! queries. Knows nothing of what the operations mean.
//!
//! INTERFACE CONTRACT (fixed; the implementation fills it in):
//! * [`AuditLog::open`] opens or creates the log, repairs a torn final line
//!   left by a crash (a record that was never acknowledged), checks the tail
//!   against the head file and its link to the last sealed segment, and
//!   starts the syncer.
//! * [`AuditLog::append`] / [`AuditLog::append_blocking`] return only once
//!   the record is durable (written and fsynced), or an error; a caller must
//!   not let the request take effect on error (fail closed).
//! * [`verify`] names the first bad record, across every segment;
//!   [`query_newest`] returns the latest records a filter matches, and
//!   [`visit_oldest`] hands every record to a callback, both reading in
//!   fixed-size blocks whatever the trail's size.
//!
//! # Files
//!
//! The log lives in one directory (created mode 0700 if absent). The writer
//! holds an exclusive `flock` on the directory (a second writer, in this
//! process or another, is refused). Every file is created mode 0600:
//!
//! * `audit.log`, the active segment: one record per line, append-only. A
//!   line is the compact JSON of [`Record`] followed by `\n`, with the
//!   fields in this fixed order (absent options and empty `context_keys`
//!   and `kinds` are left out): `seq, time, request_id, region, account,
//!   principal, access_key_id, source, operation, key_arn, via_service,
//!   grant_id, context_keys, result, count, kinds, node, prev, mac` (`node`,
//!   the writing node's id, is absent from records written before it was
//!   added; they read and verify as before). For example
//!   (one line):
//!   `{"seq":1,"time":"2026-11-22T07:12:00.123Z","request_id":"...",
//!   "operation":"Decrypt",...,"result":"Success","prev":"000...0",
//!   "mac":"3f1c..."}`.
//! * `audit-<first>-<last>[-<min>-<max>].log`, the sealed segments: former
//!   active segments, never written again. `first` and `last` are the seqs
//!   of its first and last records as 20 digits, so that the names sort by
//!   seq; `min` and `max` are the least and greatest `time` among its
//!   records (not those of its first and last: times are only nearly in
//!   order), compacted to `YYYYMMDDTHHMMSSmmmZ`, for queries to skip the
//!   segment exactly. They are left out (`audit-<first>-<last>.log`) when a
//!   record's time is not in the canonical form below; such a segment is
//!   never skipped by time. For example
//!   `audit-00000000000000000001-00000000000000121905-20261122T071200123Z-20261122T081507999Z.log`.
//! * `audit.head`: one fixed-length line (172 bytes, within one disk sector),
//!   `atrest-audit-head v1 <seq as 20 digits> <mac> <tag>\n`, naming the last
//!   record the syncer has made durable, in whichever segment it is. `tag`
//!   is the hex HMAC-SHA256 under the audit key of the bytes before
//!   ` <tag>`. It is rewritten in place
//!   (same offset, same length) and fsynced after every batch. The head is
//!   what makes deleting records from the *end* of the log detectable; its
//!   tag makes editing it detectable. (Replacing it with an older genuine
//!   head together with truncating the log is not detectable from the files
//!   alone; anchoring the head elsewhere would be.)
//!
//! # The chain
//!
//! `prev` is the `mac` of the previous record (64 `0`s for seq 1), whether
//! in the same segment or at the end of the one before; `seq` counts from 1
//! without gaps across segments. `mac` is the lower-case hex HMAC-SHA256, under
//! the audit key, of the line's exact bytes before `,"mac":"`, that is
//! `{"seq":N,` ... `,"prev":"<64 hex>"`. Because the MAC covers the exact
//! bytes rather than a re-serialisation, any change to a line is caught,
//! including ones that keep the JSON valid and even its meaning (whitespace,
//! field order, escapes, hex case); an edited `seq` or `prev` is caught by
//! the MAC, a deleted, duplicated or moved record by the seq, a record
//! spliced in from another chain by `prev`, a deleted tail by the head, a
//! deleted, reordered or renamed segment by the seqs and by its name.
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
//! # Segments
//!
//! When the active segment holds [`Options::segment_bytes`] (default 64
//! MiB; zero never seals), the syncer seals it. It first syncs what is
//! written, without the tail lock (acknowledging what that covers), then,
//! holding the tail lock, so that the segment ends at a record boundary
//! with every record written before it and no append writes meanwhile:
//!
//! 1. cuts the preallocated zeros (`set_len`) and `fdatasync`s the file:
//!    every record in it, and its length, durable;
//! 2. renames `audit.log` to the segment's name and `fsync`s the directory:
//!    the name durable, before any new `audit.log` exists;
//! 3. creates a new, empty `audit.log` and writes on into it.
//!
//! Then, without the lock: 4. `fsync`s the directory again (the new file's
//! name durable before any sync of it acknowledges a record), rewrites the
//! head to name the sealed segment's last record, and acknowledges the
//! durable appends that waited (all of them are in the sealed segment). An
//! error at any step stops the log as any other does (fail closed); the
//! directory is then in one of the states below, which the next open
//! recovers. Appends of single records never wait for a seal, so a segment
//! grows past its size by what they write until the syncer holds the lock
//! (a record or two); [`AuditLog::append_written_batch`] waits for a due
//! seal, so that bulk loads grow it by one batch at most.
//!
//! Crash analysis. A process crash keeps what the page cache holds and
//! every rename and creation that returned; a power loss keeps, of each
//! file, what was synced (and maybe some of what was not), and of the
//! directory, what was synced (and maybe some of what was not). The steps
//! are ordered so that a crash at any point leaves one of these states:
//!
//! * Before step 1 is done: an active segment that may end in a torn record
//!   or zeros: the ordinary recovery below.
//! * After step 1, before the rename is durable: `audit.log` holds exactly
//!   the records up to the seal, synced and whole. Opening it is ordinary;
//!   the syncer seals it as soon as it runs, since it is past the size.
//! * After the rename is durable, before the new `audit.log` is (a crash
//!   between the directory sync of step 2 and that of step 4, or a killed
//!   process between steps 2 and 3): the sealed segment and no `audit.log`.
//!   Opening creates an empty `audit.log` (and syncs the directory); the
//!   head names a record of the sealed segment, or an older one.
//! * After the new `audit.log` is durable: a sealed segment and an active
//!   one holding what was written into it and reached the disk, possibly
//!   torn or zeros: the ordinary recovery, continuing the chain from the
//!   sealed segment's last record.
//!
//! The sealed file's data is durable before its new name is (step 1 before
//! step 2), so a sealed segment is always whole: a sealed segment with a
//! torn or missing record is damage, never a crash. The old name cannot
//! point to a new, empty file while the sealed records have no name (the
//! rename is durable before the creation begins). No record of the new
//! `audit.log` is acknowledged as durable before its name is. The head is
//! written only after the log sync it names: it names a durable record in
//! a sealed segment or the active one; after a power loss it may name an
//! older record than the last sealed one (its sync is lazy), which open
//! checks in its segment (a bisection by seq: a few reads).
//!
//! # Opening and recovery
//!
//! [`AuditLog::open`] takes the directory's lock, creates the files if
//! absent (the head first, written for an empty log and synced, then
//! `audit.log`, then the directory synced), lists the sealed segments and
//! checks their names (a file named `audit-*.log` that is not a segment's
//! name, a gap or an overlap between segments, is
//! [`AuditError::Damaged`]), reads the last record of the last sealed
//! segment (it must be whole, with a good MAC and the seq its name says),
//! reads the head, and reads the active segment checking the chain from
//! that record on: its first record must have the next seq and that
//! record's mac as `prev`. It reads no other segment, so its time does not
//! grow with the trail. Because the head is written only after the log is
//! synced, every record it names is durable; records after it are durable
//! ones whose head update did not happen, or written ones the page cache
//! kept (a killed process), or the torn remains of unsynced writes (a power
//! loss). Hence:
//!
//! * every record up to the head's seq must be present and good, and the
//!   head's record must have the head's mac (looked up in its sealed
//!   segment when it is in one); otherwise the log is
//!   [`AuditError::Damaged`] (whose `seq` is the first bad record, or 0 for
//!   the head file or a segment's name) and does not open;
//! * after the head's record, good records are kept (their MACs prove the
//!   audit key wrote them), made durable, and the head is advanced to them;
//! * everything from the first bad line after the head on was never
//!   acknowledged and is cut away, with a `tracing::warn!`, if that line is
//!   what a crash during a write leaves: a line cut short (no final `\n`) or
//!   one holding NUL bytes (blocks allocated but not written). Any other bad
//!   line after the head (a complete line with a bad MAC, a wrong seq or
//!   prev) cannot come from a crash: it is an inserted record, and the log is
//!   [`AuditError::Damaged`];
//! * an empty head file is accepted only with an empty log and no sealed
//!   segment (a crash while creating the files).
//!
//! Opening reads and MACs the active segment only: at most
//! [`Options::segment_bytes`] and a little more (64 MiB, about 120,000
//! records, in about a tenth of a second on the reference machine), plus
//! one block of the last sealed segment. Damage inside older sealed
//! segments is for [`verify`] to find.
//!
//! # Verify and query
//!
//! [`verify`] reads `audit.head`, then every sealed segment in seq order and
//! the active one, without opening the log for writing (so it can run
//! beside a live writer: it lists the segments, opens `audit.log` and lists
//! again, until no seal came between), and applies the same rules with the
//! chain running on across segments, reporting instead of repairing: the
//! first bad record by its seq (the report's line number is the seq) and
//! why (bad MAC, seq gap or duplicate or out of order, prev mismatch,
//! unparsable or incomplete line, a mismatch with the head, records missing
//! from the end, a bad or missing head (line 0)). A missing sealed segment
//! shows as a seq gap where its records should be; reordered segments as a
//! seq out of order; a sealed segment must also hold exactly what its name
//! says (first and last seq, time range), else it is reported at its first
//! record (or, for records deleted from or added to its end, at the first
//! such seq); a file named like a segment that is not one is reported at
//! line 0. Nothing wrong inside a sealed segment is excused as a crash's
//! doing. In the active segment, an incomplete last line after the head's
//! record is not reported: it is a write in progress, or a torn one that
//! the next open cuts away. A bad line there holding NUL bytes is reported,
//! with a note that it is probably crash debris that opening cuts.
//!
//! [`query_newest`] does not check the chain. It takes a consistent listing
//! as `verify` does, then reads the active segment and the sealed ones
//! newest first, each backwards in 64 KiB blocks, and applies the filter to
//! each line as it reads it, stopping at the limit. A segment whose name
//! says it holds no record the filter can match is not read: by seq for
//! `before` (only records with a lower seq), by its time range for `since`
//! and `until`. Within a segment, `before` is found by bisection. The
//! fields a filter wants equal (account, key, principal, operation) are
//! searched for in whole blocks as the exact bytes the writer puts in a
//! line (`"account":"111122223333"`: a string value holds no unescaped
//! `"`, so they occur nowhere else), so the lines between matches are never
//! looked at one by one; a candidate line is parsed and the filter checked
//! on the record. Its memory is one block, one line (at most 1 MiB; the
//! writer refuses a longer record, and readers skip one that damage made)
//! and the records it returns: independent of the trail's size. Beside a
//! live writer, an incomplete last line, or one holding NUL bytes (part of
//! it read before the write over the preallocated zeros), is no record.
//! [`visit_oldest`] reads every segment forwards the same way, handing
//! each record to a callback (the server rebuilds its metering with it).
//! Times are compared as strings, which orders them correctly because every
//! `time` is written as UTC with milliseconds, `YYYY-MM-DDTHH:MM:SS.mmmZ`
//! (callers must use exactly that form; `since`/`until` may be any prefix
//! of it, e.g. a date).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufReader};
use std::ops::ControlFlow;
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
mod read;
mod scan;
mod segment;
mod storage;
mod writer;

pub use storage::{Dir, Faults, Faulty, FileStorage, FsDir, Storage};

use format::{Chain, HEAD_LEN, ZERO_MAC, decode_head, encode_head};
use scan::{missing_reason, scan};
use segment::Segment;
use writer::{Ack, Core, Recovered, Syncer};

/// The active segment's file name in the directory.
pub const LOG_FILE: &str = "audit.log";
/// The head file's name in the directory.
pub const HEAD_FILE: &str = "audit.head";

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
    /// The id of the node that wrote the record, when several nodes share
    /// one store (each keeps its own chain). Records written before nodes
    /// were named have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
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
    /// The first bad record: its line number (1-based, across segments:
    /// the seq it should have) and what is wrong; 0 for the head file or
    /// a file named like a segment that is not one. `None` if the whole log
    /// verified, including against the head file.
    pub first_bad: Option<(u64, String)>,
}

/// A chain's head: its last durable record's seq and mac.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = AuditHead)]
pub struct Head {
    /// The record's seq (0: the log is empty).
    pub seq: u64,
    /// Its mac, lower-case hex.
    pub mac: String,
}

/// The mac of record `seq` of the log in `dir`, if the log holds it (found
/// by the bisection queries use; the chain is not checked).
pub fn mac_at(dir: &Path, seq: u64) -> Result<Option<String>, AuditError> {
    if seq == 0 {
        return Ok(Some(String::from_utf8_lossy(&ZERO_MAC).into_owned()));
    }
    let filter = Filter {
        before: Some(seq.saturating_add(1)),
        limit: Some(1),
        ..Filter::default()
    };
    Ok(query_newest(dir, &filter)?
        .into_iter()
        .find(|r| r.seq == seq)
        .map(|r| r.mac))
}

/// A filter for [`query_newest`]; every field that is set must match.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Records of this account.
    pub account: Option<String>,
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
    /// Records before this one: seq below this (a cursor for paging).
    pub before: Option<u64>,
    /// At most this many records (the most recent ones). `None` is no
    /// limit: the memory a query takes then grows with what it finds.
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
    /// Segments sealed.
    pub sealed: u64,
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
    /// The active segment (`audit.log`) is sealed into an immutable segment
    /// file, and a new one started, once it holds this many bytes of
    /// records (see "Segments" in the crate documentation). Zero never
    /// seals. Only a log opened in a directory ([`AuditLog::open`],
    /// [`AuditLog::open_in`]) is sealed.
    pub segment_bytes: u64,
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
            segment_bytes: DEFAULT_SEGMENT_BYTES,
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
/// [`Options::segment_bytes`]'s default: 64 MiB, about 120,000 records.
/// Opening the log reads the active segment only, so this bounds the time
/// an open takes (about a tenth of a second); a query by time skips whole
/// segments outside its window.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;

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

pub(crate) fn io_err(path: impl Into<String>, e: impl fmt::Display) -> AuditError {
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
fn read_small<S: Storage + ?Sized>(s: &S, max: u64) -> Result<Vec<u8>, AuditError> {
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

/// The longest entry body the writer takes: a line must stay well within
/// what readers hold ([`read::MAX_LINE`]).
const MAX_BODY: usize = read::MAX_LINE - 1024;

impl AuditLog {
    /// Opens (creating if absent) the log in `dir` (files `audit.log`,
    /// `audit.head` and the sealed segments), chained under `key`.
    pub fn open(dir: &Path, key: &SecretKey<32>) -> Result<Self, AuditError> {
        Self::open_with_options(dir, key, &Options::default())
    }

    /// [`AuditLog::open`] with [`Options`].
    pub fn open_with_options(
        dir: &Path,
        key: &SecretKey<32>,
        options: &Options,
    ) -> Result<Self, AuditError> {
        let d = FsDir::open_locked(dir).map_err(|e| io_err(dir.display().to_string(), e))?;
        Self::open_in(d, key, options)
    }

    /// Opens (creating if absent) the log in the [`Dir`] `dir`, which must
    /// let no other writer in (as [`FsDir`] does); with `options.faults`,
    /// `dir` and its files are wrapped in [`Faulty`]. Recovers as
    /// [`AuditLog::open`] does and starts the syncer thread, which owns the
    /// directory from then on (it seals segments there).
    pub fn open_in<D: Dir>(
        dir: D,
        key: &SecretKey<32>,
        options: &Options,
    ) -> Result<Self, AuditError> {
        let dir: Box<dyn Dir> = match &options.faults {
            None => Box::new(dir),
            Some(f) => Box::new(Faulty::new(dir, f.clone())),
        };
        let open = |name: &str| -> Result<(Box<dyn Storage>, bool), AuditError> {
            dir.open_file(name, true)
                .map_err(|e| io_err(format!("{}/{name}", dir.name()), e))?
                .ok_or_else(|| io_err(format!("{}/{name}", dir.name()), "cannot create"))
        };
        // The head first: a log without a head is damaged, a head without a
        // log is a crash during creation (or after sealing a segment).
        let (mut head, head_created) = open(HEAD_FILE)?;
        let (mut log, log_created) = open(LOG_FILE)?;
        if head_created || log_created {
            dir.sync().map_err(|e| io_err(dir.name(), e))?;
        }
        let names = dir.list().map_err(|e| io_err(dir.name(), e))?;
        let (segments, bad) = segment::segments_of(names);
        if let Some(why) = bad.first() {
            return Err(damaged(dir.name(), 0, why.clone()));
        }
        if let Err((seq, why)) = segment::check_sequence(&segments) {
            return Err(damaged(dir.name(), seq, why));
        }
        let base = match segments.last() {
            None => (0, ZERO_MAC),
            Some(last) => last_sealed_record(&*dir, last, key)?,
        };
        let lookup = |seq: u64| sealed_mac(&*dir, &segments, seq, key);
        let r = recover(&mut log, &mut head, key, base, &lookup)?;
        Self::start(log, head, Some(dir), r, key, options)
    }

    /// Opens the log on two given storages, without a directory: `log`
    /// holds `audit.log`, `head` holds `audit.head` (with `options.faults`,
    /// both are wrapped in [`Faulty`]). Such a log is never sealed into
    /// segments. Recovers as [`AuditLog::open`] does and starts the syncer
    /// thread, which owns both from then on.
    pub fn open_with<L: Storage, H: Storage>(
        log: L,
        head: H,
        key: &SecretKey<32>,
        options: &Options,
    ) -> Result<Self, AuditError> {
        let (mut log, mut head): (Box<dyn Storage>, Box<dyn Storage>) = match &options.faults {
            None => (Box::new(log), Box::new(head)),
            Some(f) => (
                Box::new(Faulty::new(log, f.clone())),
                Box::new(Faulty::new(head, f.clone())),
            ),
        };
        let none = |seq: u64| -> Result<[u8; 64], AuditError> {
            Err(damaged(head_name(), seq, "no such record"))
        };
        let r = recover(&mut log, &mut head, key, (0, ZERO_MAC), &none)?;
        Self::start(log, head, None, r, key, options)
    }

    fn start(
        log: Box<dyn Storage>,
        head: Box<dyn Storage>,
        dir: Option<Box<dyn Dir>>,
        r: Recovered,
        key: &SecretKey<32>,
        options: &Options,
    ) -> Result<Self, AuditError> {
        let segment_bytes = if dir.is_some() {
            options.segment_bytes
        } else {
            0
        };
        let core = Arc::new(Core::new(
            log,
            key.duplicate(),
            r,
            options.preallocate,
            segment_bytes,
        ));
        let syncer = Syncer::new(
            Arc::clone(&core),
            head,
            dir,
            (
                options.commit_interval,
                options.sync_interval,
                options.head_sync_interval,
            ),
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

    /// Writes the entries' records with one write; `ack`, if given (for one
    /// entry), gets the reply once it is durable; `pace` as for
    /// [`Core::append`].
    fn write(&self, entries: &[&Entry], ack: Option<Ack>, pace: bool) -> Result<u64, AuditError> {
        if self.core.failed.get().is_some() {
            return Err(self.stopped());
        }
        let bodies: Vec<Vec<u8>> = entries.iter().map(|e| format::encode_body(e)).collect();
        if let Some(big) = bodies.iter().find(|b| b.len() > MAX_BODY) {
            return Err(AuditError::Io {
                path: LOG_FILE.into(),
                reason: format!(
                    "a record of {} bytes is longer than a record may be ({MAX_BODY} bytes)",
                    big.len()
                ),
            });
        }
        let records: Vec<(&[u8], &[u8])> = entries
            .iter()
            .zip(&bodies)
            .map(|(e, b)| (e.time.as_bytes(), b.as_slice()))
            .collect();
        self.core.append(&records, ack, pace)
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
        self.write(&[&entry], Some(Ack::Async(tx)), false)?;
        drop(entry);
        rx.await.map_err(|_| self.stopped())?
    }

    /// [`AuditLog::append`] for synchronous callers.
    pub fn append_blocking(&self, entry: Entry) -> Result<u64, AuditError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.write(&[&entry], Some(Ack::Blocking(tx)), false)?;
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
        self.write(&[entry], None, false)
    }

    /// [`AuditLog::append_written`] for many entries at once, for bulk
    /// loads (tests, benchmarks): their records are written in order with
    /// one write, and the last one's seq is returned (that of the last
    /// record in the log, if `entries` is empty). It first waits while the
    /// active segment is due to be sealed, so that a segment grows past
    /// [`Options::segment_bytes`] by one batch at most (appends of single
    /// records never wait: a segment grows past its size by what they
    /// write until the syncer seals it, typically a few records).
    pub fn append_written_batch(&self, entries: &[Entry]) -> Result<u64, AuditError> {
        let refs: Vec<&Entry> = entries.iter().collect();
        self.write(&refs, None, true)
    }

    /// The chain's durable head: the seq and mac of the last record a sync
    /// made durable (seq 0 and 64 `0`s for an empty log). A node publishes
    /// it so that a chain cut back later is seen as truncated.
    #[must_use]
    pub fn head(&self) -> Head {
        let (seq, mac) = self.core.durable();
        Head {
            seq,
            mac: String::from_utf8_lossy(&mac).into_owned(),
        }
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
            sealed: c.sealed.load(Ordering::Relaxed),
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

fn head_name() -> String {
    HEAD_FILE.to_owned()
}

/// Opens a sealed segment of `dir` for reading.
fn open_sealed(
    dir: &dyn Dir,
    seg: &Segment,
) -> Result<(Box<dyn Storage>, u64, String), AuditError> {
    let name = seg.file_name();
    let path = format!("{}/{name}", dir.name());
    let (file, _) = dir
        .open_file(&name, false)
        .map_err(|e| io_err(&path, e))?
        .ok_or_else(|| damaged(&path, seg.first, "the sealed segment is gone"))?;
    let len = file.len().map_err(|e| io_err(&path, e))?;
    Ok((file, len, path))
}

/// The seq and mac of the last sealed segment's last record, checked: the
/// segment must end with a whole record, with a good MAC, whose seq is
/// the one the name says. The active segment's first record must follow
/// it.
fn last_sealed_record(
    dir: &dyn Dir,
    seg: &Segment,
    key: &SecretKey<32>,
) -> Result<(u64, [u8; 64]), AuditError> {
    let (file, len, path) = open_sealed(dir, seg)?;
    let src = read::OfStorage(&*file);
    let end = read::complete_end(&src, 0, len).map_err(|e| io_err(&path, e))?;
    if end != len {
        return Err(damaged(
            &path,
            seg.last,
            "the sealed segment does not end with a whole record",
        ));
    }
    let mut last = None;
    read::lines_back(&src, (0, end), None, &|| path.clone(), |line| {
        last = Some(line.to_vec());
        ControlFlow::Break(())
    })
    .map_err(|e| io_err(&path, e))?;
    let Some(line) = last else {
        return Err(damaged(&path, seg.first, "the sealed segment is empty"));
    };
    let (seq, _, mac) = format::check_mac(&HmacSha256Key::new(key.expose()), &line)
        .map_err(|why| damaged(&path, seg.last, why))?;
    if seq != seg.last {
        return Err(damaged(
            &path,
            seg.last,
            format!(
                "the segment's name says it ends with record {}, but it ends with record {seq}",
                seg.last
            ),
        ));
    }
    Ok((seq, mac))
}

/// The mac of record `seq`, found in the sealed segments (checked).
fn sealed_mac(
    dir: &dyn Dir,
    segments: &[Segment],
    seq: u64,
    key: &SecretKey<32>,
) -> Result<[u8; 64], AuditError> {
    let Some(seg) = segments.iter().find(|s| s.first <= seq && seq <= s.last) else {
        return Err(damaged(
            dir.name(),
            seq,
            "no sealed segment holds the record audit.head names",
        ));
    };
    let (file, len, path) = open_sealed(dir, seg)?;
    let line = read::find_line(&read::OfStorage(&*file), 0, len, seq)
        .map_err(|e| io_err(&path, e))?
        .ok_or_else(|| {
            damaged(
                &path,
                seq,
                "the record audit.head names is not in its segment",
            )
        })?;
    let (found, _, mac) = format::check_mac(&HmacSha256Key::new(key.expose()), &line)
        .map_err(|why| damaged(&path, seq, why))?;
    if found != seq {
        return Err(damaged(
            &path,
            seq,
            "the record audit.head names is not in its segment",
        ));
    }
    Ok(mac)
}

/// Reads the head and the active segment, repairs the segment's tail and
/// advances the head as the recovery rules say. `base` is the last sealed
/// record's seq and mac (`(0, ZERO_MAC)` without sealed segments), which
/// the active segment continues; `lookup` finds the mac of an older sealed
/// record (the head may name one).
fn recover<L: Storage + ?Sized, H: Storage + ?Sized>(
    log: &mut L,
    head: &mut H,
    key: &SecretKey<32>,
    (base_seq, base_mac): (u64, [u8; 64]),
    lookup: &dyn Fn(u64) -> Result<[u8; 64], AuditError>,
) -> Result<Recovered, AuditError> {
    let log_len = log.len().map_err(|e| io_err(log.name(), e))?;
    let head_bytes = read_small(head, 4096)?;
    let (head_seq, head_mac) = if head_bytes.is_empty() {
        if log_len != 0 || base_seq != 0 {
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
    // The head names a record of a sealed segment (a power loss soon after
    // a seal, with the head synced lazily): it must be there, with that mac.
    if head_seq <= base_seq {
        let mac = if head_seq == base_seq {
            base_mac
        } else if head_seq == 0 {
            ZERO_MAC
        } else {
            lookup(head_seq)?
        };
        if mac != head_mac {
            return Err(damaged(
                head.name(),
                head_seq,
                "its mac differs from the one audit.head names (the record or the head was \
                 replaced)",
            ));
        }
    }

    let mut chain = Chain::resume(key, base_seq, base_mac);
    let mut times = segment::TimeRange::default();
    let reader = BufReader::with_capacity(read::BLOCK, storage::StorageReader::new(&*log));
    let head_check = (head_seq > base_seq).then_some((head_seq, head_mac));
    let s = scan(reader, &mut chain, head_check, Some(&mut times))
        .map_err(|e| io_err(log.name(), e))?;
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
    let cut = s.offset < log_len;
    if cut {
        log.set_len(s.offset).map_err(|e| io_err(log.name(), e))?;
    }
    if cut || s.good > head_seq {
        // The records the head is about to name may be in the page cache
        // only (a killed process): durable before the head names them.
        log.sync().map_err(|e| io_err(log.name(), e))?;
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
    Ok(Recovered {
        len: s.offset,
        seq: s.good,
        prev: s.prev,
        seg_first: base_seq + 1,
        times,
    })
}

fn write_head<H: Storage + ?Sized>(
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

/// Verifies the log in `dir` under `key`: every segment in order, the
/// chain running on across them, then against the head.
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
    // The head first: a live writer syncs the log before the head, so every
    // record the head names is in the log when it is read afterwards.
    let head_bytes = match fs::read(&head_path) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err(head_path.display().to_string(), e)),
    };
    let snap = segment::snapshot(dir)?;
    let log_path = dir.join(LOG_FILE);
    let log_len = match &snap.active {
        Some(f) => f
            .metadata()
            .map_err(|e| io_err(log_path.display().to_string(), e))?
            .len(),
        None => 0,
    };
    let bad = |good: u64, line: u64, why: String| {
        let report = VerifyReport {
            good,
            first_bad: Some((line, why)),
        };
        Ok((report, false))
    };
    if let Some(why) = snap.bad_names.first() {
        return bad(0, 0, why.clone());
    }
    let head = match head_bytes.as_deref() {
        None | Some([]) if log_len == 0 && snap.segments.is_empty() => {
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
    let head_check = head.as_ref().ok().copied();
    let mut chain = Chain::new(key);
    for seg in &snap.segments {
        let name = seg.file_name();
        let path = dir.join(&name);
        let file = File::open(&path).map_err(|e| io_err(path.display().to_string(), e))?;
        let first = chain.next_seq;
        let mut times = segment::TimeRange::default();
        let reader = BufReader::with_capacity(read::BLOCK, file);
        let s = scan(reader, &mut chain, head_check, Some(&mut times))
            .map_err(|e| io_err(path.display().to_string(), e))?;
        // A sealed segment was synced whole before it was named: nothing
        // wrong in it can be a crash's or a live writer's doing.
        if let Some(b) = s.bad {
            return bad(s.good, b.line, format!("{} (in {name})", b.reason));
        }
        // The name must say what the segment holds: queries skip segments
        // by it.
        let holds = Segment {
            first,
            last: s.good,
            times: times.times(),
        };
        if holds != *seg {
            let (good, at, why) = if s.good < first {
                (first - 1, first, "holds no records".to_owned())
            } else if holds.first != seg.first {
                (
                    first - 1,
                    first,
                    format!("begins with record {first}, not the one its name says"),
                )
            } else if holds.last < seg.last {
                (
                    holds.last,
                    holds.last + 1,
                    format!(
                        "ends with record {}, but its name says {} (records were deleted from \
                         its end)",
                        holds.last, seg.last
                    ),
                )
            } else if holds.last > seg.last {
                (
                    seg.last,
                    seg.last + 1,
                    format!(
                        "holds records past the {} its name says (records were added)",
                        seg.last
                    ),
                )
            } else {
                (
                    first - 1,
                    first,
                    format!(
                        "holds the records of {}: its name says other times (it was renamed)",
                        holds.file_name()
                    ),
                )
            };
            return bad(good, at, format!("segment {name} {why}"));
        }
    }
    let s = match &snap.active {
        Some(f) => {
            let reader = BufReader::with_capacity(read::BLOCK, f);
            scan(reader, &mut chain, head_check, None)
                .map_err(|e| io_err(log_path.display().to_string(), e))?
        }
        None => scan(io::empty(), &mut chain, head_check, None)
            .map_err(|e| io_err(log_path.display().to_string(), e))?,
    };
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
        eq(self.account.as_ref(), r.entry.account.as_ref())
            && eq(self.key_arn.as_ref(), r.entry.key_arn.as_ref())
            && eq(self.principal.as_ref(), r.entry.principal.as_ref())
            && eq(self.operation.as_ref(), Some(&r.entry.operation))
            && self.since.as_ref().is_none_or(|s| r.entry.time >= *s)
            && self.until.as_ref().is_none_or(|u| r.entry.time < *u)
            && self.before.is_none_or(|b| r.seq < b)
    }
}

/// The records of the log in `dir` that match `filter`, newest first, at
/// most `filter.limit` of them. Reads the segments newest first, each
/// backwards in blocks, skipping the segments whose names say they hold no
/// record the filter can match (by seq for `before`, by time range for
/// `since` and `until`), and stops at the limit: its memory is one block
/// and the records it returns, whatever the log's size. It does not check
/// the chain ([`verify`] does). Beside a live writer it sees the records
/// written when it reads the end of the active segment; a line being
/// written (incomplete, or holding the preallocated zeros) is no record.
pub fn query_newest(dir: &Path, filter: &Filter) -> Result<Vec<Record>, AuditError> {
    let snap = segment::snapshot(dir)?;
    for why in &snap.bad_names {
        tracing::warn!(dir = %dir.display(), "audit query: skipping a file: {why}");
    }
    let limit = filter.limit.unwrap_or(usize::MAX);
    let mut out = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    let matcher = read::Matcher::new(filter);
    let before_ok = |first: u64| filter.before.is_none_or(|b| first < b);
    let active_first = snap.segments.last().map_or(1, |s| s.last + 1);
    if let Some(file) = &snap.active
        && before_ok(active_first)
    {
        let path = dir.join(LOG_FILE);
        search_back(file, &path, &matcher, limit, &mut out)?;
    }
    for seg in snap.segments.iter().rev() {
        if out.len() >= limit {
            break;
        }
        if !before_ok(seg.first)
            || !seg.may_hold_times(filter.since.as_deref(), filter.until.as_deref())
        {
            continue;
        }
        let path = dir.join(seg.file_name());
        let file = File::open(&path).map_err(|e| io_err(path.display().to_string(), e))?;
        search_back(&file, &path, &matcher, limit, &mut out)?;
    }
    Ok(out)
}

/// Adds the matching records of one segment file to `out`, newest first,
/// until `out` holds `limit`.
fn search_back(
    file: &File,
    path: &Path,
    m: &read::Matcher<'_>,
    limit: usize,
    out: &mut Vec<Record>,
) -> Result<(), AuditError> {
    let name = || path.display().to_string();
    let len = file.metadata().map_err(|e| io_err(name(), e))?.len();
    let mut end = read::complete_end(file, 0, len).map_err(|e| io_err(name(), e))?;
    if let Some(before) = m.before() {
        end = read::bisect(file, 0, end, before)
            .map_err(|e| io_err(name(), e))?
            .1;
    }
    read::lines_back(file, (0, end), m.needle(), &name, |line| {
        if let Some(r) = m.record(line, &name) {
            out.push(r);
            if out.len() >= limit {
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    })
    .map_err(|e| io_err(name(), e))
}

/// Calls `f` on every record of the log in `dir`, oldest first, reading
/// each segment forwards in blocks (memory: one block and one record), and
/// returns how many there were. Like [`query_newest`] it does not check the
/// chain, and skips lines that are no record (with a warning).
pub fn visit_oldest(dir: &Path, mut f: impl FnMut(&Record)) -> Result<u64, AuditError> {
    let snap = segment::snapshot(dir)?;
    for why in &snap.bad_names {
        tracing::warn!(dir = %dir.display(), "audit log: skipping a file: {why}");
    }
    let mut n = 0;
    for seg in &snap.segments {
        let path = dir.join(seg.file_name());
        let name = || path.display().to_string();
        let file = File::open(&path).map_err(|e| io_err(name(), e))?;
        let len = file.metadata().map_err(|e| io_err(name(), e))?.len();
        n += read::records_forward(&file, len, &name, &mut f).map_err(|e| io_err(name(), e))?;
    }
    if let Some(file) = &snap.active {
        let path = dir.join(LOG_FILE);
        let name = || path.display().to_string();
        let len = file.metadata().map_err(|e| io_err(name(), e))?.len();
        let end = read::complete_end(file, 0, len).map_err(|e| io_err(name(), e))?;
        n += read::records_forward(file, end, &name, &mut f).map_err(|e| io_err(name(), e))?;
    }
    Ok(n)
}
