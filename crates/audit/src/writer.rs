//! The write path: appends in the caller's thread, syncs in one syncer
//! thread (group commit).
//!
//! An append takes the tail lock, gives the record its seq, prev and mac,
//! writes its line with one `write_at` at the end of the log, and lets the
//! lock go: records are in the file in seq order, and every record the
//! caller was told of is in the kernel's page cache (a killed process loses
//! none). What happens next depends on the caller:
//!
//! * a durable append ([`Core::append`] with an [`Ack`]) leaves its ack with
//!   the tail and wakes the syncer, which syncs the log, rewrites the head,
//!   and only then acks every waiting record the sync covered, in seq order.
//!   Records written while a sync runs share the next one, so one `fdatasync`
//!   serves every request that arrived during the last;
//! * a written append (no ack) is answered at once; the syncer syncs it
//!   within [`crate::Options::sync_interval`], together with whatever else
//!   arrived meanwhile.
//!
//! The syncer also seals the active segment once it holds
//! [`crate::Options::segment_bytes`] (see [`Syncer::rotate`] and the crate
//! documentation, "Segments").
//!
//! Fail closed: an error writing a record fails that append; an error
//! syncing the log, writing or syncing the head, or sealing a segment,
//! fails every waiting append. Either way the log stops for good: every later append is refused
//! ([`AuditError::Closed`]). The file may end in a torn or unacknowledged
//! record, and after a failed fsync the page cache no longer says what is on
//! disk. Before stopping it tries, best effort, to cut the log back to the
//! end of the last record it acknowledged; whether or not that works,
//! reopening the log cuts away a torn tail.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, mpsc};
use std::time::{Duration, Instant};

use atrest_crypto::SecretKey;
use atrest_crypto::hash::HmacSha256Key;
use tokio::sync::oneshot;

use crate::format::{encode_head, encode_line};
use crate::segment::{Segment, TimeRange};
use crate::storage::{Dir, Storage};
use crate::{AuditError, LOG_FILE};

static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// How a durable appender waits for its reply.
pub(crate) enum Ack {
    Async(oneshot::Sender<Result<u64, AuditError>>),
    Blocking(mpsc::SyncSender<Result<u64, AuditError>>),
}

impl Ack {
    fn send(self, r: Result<u64, AuditError>) {
        // An appender that stopped waiting (a dropped future) is not an
        // error: its record stays.
        match self {
            Ack::Async(tx) => {
                let _ = tx.send(r);
            }
            Ack::Blocking(tx) => {
                let _ = tx.try_send(r);
            }
        }
    }
}

/// The end of the log, as appenders and the syncer share it.
struct Tail {
    /// The active segment (`audit.log`), replaced when the syncer seals it.
    log: Arc<dyn Storage>,
    /// The seq of the active segment's first record (whether or not it is
    /// written yet).
    seg_first: u64,
    /// The times of the active segment's records.
    times: TimeRange,
    /// The syncer has been woken to seal the active segment.
    seal_asked: bool,
    /// Length of the written part of the log: every record written so far.
    len: u64,
    /// The file's length: `len` and then zeros.
    allocated: u64,
    /// The last written record's seq and mac.
    seq: u64,
    prev: [u8; 64],
    /// The last sync covered the log up to here.
    synced_seq: u64,
    synced_len: u64,
    /// The end and seq a sync in progress covers: the head may be rewritten
    /// to name them at any moment, so a cut must not go below them.
    syncing: Option<(u64, u64)>,
    /// The end and seq of the last record answered before its sync.
    answered_len: u64,
    answered_seq: u64,
    /// When the oldest record not covered by a sync was written, if it was
    /// answered at once (durable appends wait in `waiters` instead).
    unsynced_since: Option<Instant>,
    /// Durable appends waiting for a sync, in seq order.
    waiters: Vec<(u64, Ack)>,
    /// The line being encoded (kept to reuse its allocation).
    buf: Vec<u8>,
    /// The log is being closed: sync what is written, then stop.
    closing: bool,
}

/// What appenders, the syncer and the handle share.
pub(crate) struct Core {
    /// The audit key, prepared for HMAC.
    key: HmacSha256Key,
    preallocate: u64,
    /// Seal the active segment once it holds this many bytes (0: never).
    segment_bytes: u64,
    tail: Mutex<Tail>,
    /// Wakes the syncer.
    wake: Condvar,
    /// Wakes bulk appenders waiting for a seal ([`Core::append`] with
    /// `pace`): notified when a segment is sealed and when the log stops.
    sealed_cv: Condvar,
    /// Set once when the log fails; appends are refused from then on.
    pub(crate) failed: OnceLock<String>,
    /// Records written since open.
    pub(crate) records: AtomicU64,
    /// Syncs of the log since open.
    pub(crate) batches: AtomicU64,
    /// The most records one sync covered.
    pub(crate) max_batch: AtomicU64,
    /// The seq of the last written record.
    pub(crate) last_seq: AtomicU64,
    /// The seq of the last record a sync covered.
    pub(crate) synced_seq: AtomicU64,
    /// The seq and mac of the last record a sync covered (the head).
    pub(crate) durable: Mutex<(u64, [u8; 64])>,
    /// Segments sealed since open.
    pub(crate) sealed: AtomicU64,
}

/// Where a recovered log's active segment stands.
pub(crate) struct Recovered {
    /// Bytes of records in the active segment.
    pub(crate) len: u64,
    /// The last record's seq and mac (in the active segment, or the last
    /// sealed one).
    pub(crate) seq: u64,
    pub(crate) prev: [u8; 64],
    /// The seq of the active segment's first record.
    pub(crate) seg_first: u64,
    /// The times of the active segment's records.
    pub(crate) times: TimeRange,
}

impl Core {
    /// A core for a log recovered as `r` says (all of it durable), whose
    /// active segment is `log`.
    pub(crate) fn new(
        log: Box<dyn Storage>,
        key: SecretKey<32>,
        r: Recovered,
        preallocate: u64,
        segment_bytes: u64,
    ) -> Self {
        let Recovered {
            len,
            seq,
            prev,
            seg_first,
            times,
        } = r;
        Self {
            key: HmacSha256Key::new(key.expose()),
            preallocate,
            segment_bytes,
            tail: Mutex::new(Tail {
                log: Arc::from(log),
                seg_first,
                times,
                seal_asked: false,
                len,
                allocated: len,
                seq,
                prev,
                synced_seq: seq,
                synced_len: len,
                syncing: None,
                answered_len: len,
                answered_seq: seq,
                unsynced_since: None,
                waiters: Vec::new(),
                buf: Vec::with_capacity(1024),
                closing: false,
            }),
            wake: Condvar::new(),
            sealed_cv: Condvar::new(),
            failed: OnceLock::new(),
            records: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            max_batch: AtomicU64::new(0),
            last_seq: AtomicU64::new(seq),
            synced_seq: AtomicU64::new(seq),
            durable: Mutex::new((seq, prev)),
            sealed: AtomicU64::new(0),
        }
    }

    /// Notes that the records up to `seq` (whose mac is `mac`) are durable.
    fn set_durable(&self, seq: u64, mac: [u8; 64]) {
        let mut d = self
            .durable
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seq > d.0 {
            *d = (seq, mac);
        }
    }

    /// The seq and mac of the last durable record.
    pub(crate) fn durable(&self) -> (u64, [u8; 64]) {
        *self
            .durable
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock(&self) -> MutexGuard<'_, Tail> {
        // A panic while holding the lock cannot leave the tail half
        // updated: it is updated only after the write succeeded.
        self.tail
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn closed(&self) -> AuditError {
        AuditError::Closed(
            self.failed
                .get()
                .cloned()
                .unwrap_or_else(|| "the audit log is closed".into()),
        )
    }

    /// Writes the records whose fields the bodies hold
    /// ([`crate::format::encode_body`]), each with its entry's `time`, with
    /// one write, and returns the last one's seq. With `ack` (for one
    /// record), the record waits for a sync and `ack` gets the reply;
    /// without, they were answered by this return and are synced within
    /// the sync interval. With `pace`, first waits while the active segment
    /// is due to be sealed (bulk loads: a segment then grows past its size
    /// by one batch at most).
    pub(crate) fn append(
        &self,
        records: &[(&[u8], &[u8])],
        ack: Option<Ack>,
        pace: bool,
    ) -> Result<u64, AuditError> {
        let mut t = self.lock();
        while pace
            && self.segment_bytes > 0
            && t.len >= self.segment_bytes
            && self.failed.get().is_none()
            && !t.closing
        {
            t = self
                .sealed_cv
                .wait(t)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        if self.failed.get().is_some() || t.closing {
            return Err(self.closed());
        }
        let mut buf = std::mem::take(&mut t.buf);
        buf.clear();
        let (mut seq, mut prev) = (t.seq, t.prev);
        for (_, body) in records {
            seq += 1;
            prev = encode_line(&self.key, seq, body, &prev, &mut buf);
        }
        let at = t.len;
        let end = at + buf.len() as u64;
        let log = Arc::clone(&t.log);
        let written = self
            .preallocate_to(&mut t, end)
            .and_then(|()| log.write_at(at, &buf));
        // Keep a line's worth of buffer, not a batch's.
        if buf.capacity() <= 64 * 1024 {
            t.buf = buf;
        }
        if let Err(e) = written {
            let reason = format!("cannot write: {e}");
            let waiters = self.fail(&mut t, &log.name(), &reason, true);
            drop(t);
            self.wake.notify_all();
            fail_all(waiters, &log.name(), &reason);
            return Err(AuditError::Io {
                path: log.name(),
                reason,
            });
        }
        t.len = end;
        t.seq = seq;
        t.prev = prev;
        for (time, _) in records {
            t.times.add(Some(time));
        }
        self.records
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        self.last_seq.store(seq, Ordering::Release);
        // The syncer sleeps until the earliest thing due; wake it only when
        // this record makes something due earlier.
        let mut wake = match ack {
            None => {
                t.answered_len = end;
                t.answered_seq = seq;
                let first = t.unsynced_since.is_none();
                if first {
                    t.unsynced_since = Some(Instant::now());
                }
                first && t.waiters.is_empty()
            }
            Some(ack) => {
                t.waiters.push((seq, ack));
                t.waiters.len() == 1
            }
        };
        if self.segment_bytes > 0 && t.len >= self.segment_bytes && !t.seal_asked {
            t.seal_asked = true;
            wake = true;
        }
        drop(t);
        if wake {
            self.wake.notify_one();
        }
        Ok(seq)
    }

    /// Makes the file at least `end` long, extending it with written zeros.
    fn preallocate_to(&self, t: &mut Tail, end: u64) -> std::io::Result<()> {
        if end <= t.allocated || self.preallocate == 0 {
            return Ok(());
        }
        let target = end.div_ceil(self.preallocate) * self.preallocate;
        while t.allocated < target {
            let n = (target - t.allocated).min(ZEROS.len() as u64);
            t.log.write_at(t.allocated, &ZEROS[..n as usize])?;
            t.allocated += n;
        }
        Ok(())
    }

    /// Stops the log: every later append is refused. With `cut`, tries to
    /// cut the log back to the end of the last acknowledged record, or of
    /// the records a sync in progress covers (the head may be rewritten to
    /// name them); not at all after a head failure (the head may already
    /// name later records).
    /// Returns the waiting appends, which the caller fails outside the lock.
    fn fail(&self, t: &mut Tail, path: &str, reason: &str, cut: bool) -> Vec<(u64, Ack)> {
        tracing::error!(path = %path, %reason, "audit log failed; refusing all further records");
        let _ = self.failed.set(format!("{path}: {reason}"));
        if cut {
            let (keep, keep_seq) = [
                (t.answered_len, t.answered_seq),
                (t.synced_len, t.synced_seq),
                t.syncing.unwrap_or((0, 0)),
            ]
            .into_iter()
            .max()
            .unwrap_or((t.synced_len, t.synced_seq));
            if t.log.set_len(keep).is_ok() {
                let _ = t.log.sync();
                t.allocated = keep;
                t.len = keep;
                t.seq = keep_seq;
                self.last_seq.store(keep_seq, Ordering::Release);
            }
        }
        t.unsynced_since = None;
        self.sealed_cv.notify_all();
        std::mem::take(&mut t.waiters)
    }

    /// Asks the syncer to sync what is written and stop.
    pub(crate) fn close(&self) {
        self.lock().closing = true;
        self.wake.notify_all();
        self.sealed_cv.notify_all();
    }
}

fn fail_all(waiters: Vec<(u64, Ack)>, path: &str, reason: &str) {
    for (_, ack) in waiters {
        ack.send(Err(AuditError::Io {
            path: path.to_owned(),
            reason: reason.to_owned(),
        }));
    }
}

/// The syncer thread's state: it alone touches the head.
pub(crate) struct Syncer<H> {
    core: Arc<Core>,
    head: H,
    /// The directory, to seal segments in (`None`: never sealed).
    dir: Option<Box<dyn Dir>>,
    /// The least time between the starts of two syncs for durable appends.
    commit_interval: Duration,
    /// The most time a record answered at once waits for its sync.
    sync_interval: Duration,
    /// How often the head is synced (zero: with every sync of the log).
    head_sync_interval: Duration,
    last_sync: Option<Instant>,
    /// The head was written since its last sync.
    head_dirty: bool,
    last_head_sync: Instant,
}

impl<H: Storage> Syncer<H> {
    pub(crate) fn new(
        core: Arc<Core>,
        head: H,
        dir: Option<Box<dyn Dir>>,
        (commit_interval, sync_interval, head_sync_interval): (Duration, Duration, Duration),
    ) -> Self {
        Self {
            core,
            head,
            dir,
            commit_interval,
            sync_interval,
            head_sync_interval,
            last_sync: None,
            head_dirty: false,
            last_head_sync: Instant::now(),
        }
    }

    /// When the next sync of the log is due, if one is.
    fn sync_due(&self, t: &Tail, now: Instant) -> Option<Instant> {
        if !t.waiters.is_empty() {
            return Some(self.last_sync.map_or(now, |l| l + self.commit_interval));
        }
        t.unsynced_since.map(|s| s + self.sync_interval)
    }

    /// Whether the active segment is due to be sealed.
    fn seal_due(&self, t: &Tail) -> bool {
        self.dir.is_some() && self.core.segment_bytes > 0 && t.len >= self.core.segment_bytes
    }

    pub(crate) fn run(mut self) {
        let core = Arc::clone(&self.core);
        let mut t = core.lock();
        loop {
            if core.failed.get().is_some() {
                if t.closing {
                    break;
                }
                t = core
                    .wake
                    .wait(t)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                continue;
            }
            if t.closing {
                if t.seq > t.synced_seq {
                    t = self.sync(&core, t);
                    continue;
                }
                break;
            }
            if self.seal_due(&t) {
                t = self.rotate(&core, t);
                continue;
            }
            let now = Instant::now();
            let sync_due = self.sync_due(&t, now);
            if sync_due.is_some_and(|d| d <= now) {
                t = self.sync(&core, t);
                continue;
            }
            let head_due = self
                .head_dirty
                .then(|| self.last_head_sync + self.head_sync_interval);
            if head_due.is_some_and(|d| d <= now) {
                drop(t);
                self.sync_head();
                t = core.lock();
                continue;
            }
            t = match [sync_due, head_due].into_iter().flatten().min() {
                Some(due) => {
                    core.wake
                        .wait_timeout(t, due - now)
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .0
                }
                None => core
                    .wake
                    .wait(t)
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            };
        }
        let (len, allocated, log) = (t.len, t.allocated, Arc::clone(&t.log));
        drop(t);
        if self.head_dirty {
            self.sync_head();
        }
        // Leave the file at rest without its zero tail.
        if allocated > len && core.failed.get().is_none() {
            let _ = log.set_len(len).and_then(|()| log.sync());
        }
    }

    /// Syncs the log up to what is written now, rewrites the head to name
    /// it, and acks the durable appends the sync covered. The lock is let go
    /// during the I/O, so appends go on meanwhile.
    fn sync<'a>(&mut self, core: &'a Core, mut t: MutexGuard<'a, Tail>) -> MutexGuard<'a, Tail> {
        let (seq, prev, len, log) = (t.seq, t.prev, t.len, Arc::clone(&t.log));
        t.unsynced_since = None;
        t.syncing = Some((len, seq));
        drop(t);
        self.last_sync = Some(Instant::now());
        // Every write that returned before the snapshot above is covered.
        let strict = self.head_sync_interval.is_zero();
        let result = log
            .sync()
            .map_err(|e| (log.name(), format!("cannot sync: {e}"), true))
            .and_then(|()| {
                self.head
                    .write_at(0, &encode_head(&core.key, seq, &prev))
                    .and_then(|()| if strict { self.head.sync() } else { Ok(()) })
                    .map_err(|e| {
                        (
                            self.head.name(),
                            format!("cannot write or sync: {e}"),
                            false,
                        )
                    })
            });
        let mut t = core.lock();
        // The head is written (or will never be, on an error): from here a
        // cut may go back to the last sync that succeeded.
        t.syncing = None;
        if let Err((path, reason, cut)) = result {
            let waiters = core.fail(&mut t, &path, &reason, cut);
            drop(t);
            fail_all(waiters, &path, &reason);
            return core.lock();
        }
        self.head_dirty = !strict;
        let n = seq - t.synced_seq;
        t.synced_seq = seq;
        t.synced_len = len;
        let covered = t.waiters.partition_point(|(s, _)| *s <= seq);
        let acks: Vec<(u64, Ack)> = t.waiters.drain(..covered).collect();
        drop(t);
        core.batches.fetch_add(1, Ordering::Relaxed);
        core.max_batch.fetch_max(n, Ordering::Relaxed);
        core.synced_seq.store(seq, Ordering::Release);
        core.set_durable(seq, prev);
        for (s, ack) in acks {
            ack.send(Ok(s));
        }
        core.lock()
    }

    /// Seals the active segment: syncs it, renames it to its segment name,
    /// and starts a new `audit.log` (the crate documentation, "Segments",
    /// has the crash analysis). Holds the tail lock from the seal's sync to
    /// the new file's creation, so the sealed segment ends at a record
    /// boundary with every record written before it, and no append writes
    /// into a renamed file; syncs what is written first without the lock,
    /// so that the sync under it has little left to flush.
    fn rotate<'a>(&mut self, core: &'a Core, mut t: MutexGuard<'a, Tail>) -> MutexGuard<'a, Tail> {
        if t.seq > t.synced_seq {
            t = self.sync(core, t);
            if core.failed.get().is_some() || t.closing || !self.seal_due(&t) {
                return t;
            }
        }
        let Some(dir) = self.dir.as_ref() else {
            return t;
        };
        let (seq, prev, len) = (t.seq, t.prev, t.len);
        let name = Segment {
            first: t.seg_first,
            last: seq,
            times: t.times.times(),
        }
        .file_name();
        let log = Arc::clone(&t.log);
        // 1. The sealed part, without its zero tail, durable.
        if let Err(e) = log.set_len(len).and_then(|()| log.sync()) {
            let (path, reason) = (log.name(), format!("cannot sync before sealing: {e}"));
            let waiters = core.fail(&mut t, &path, &reason, true);
            drop(t);
            fail_all(waiters, &path, &reason);
            return core.lock();
        }
        t.allocated = len;
        t.synced_len = len;
        t.synced_seq = seq;
        // 2. Renamed, and the rename durable; 3. a new active file.
        let step = dir
            .rename(LOG_FILE, &name)
            .and_then(|()| dir.sync())
            .map_err(|e| format!("cannot rename {LOG_FILE} to {name}: {e}"))
            .and_then(|()| {
                dir.create_new(LOG_FILE)
                    .map_err(|e| format!("cannot create a new {LOG_FILE}: {e}"))
            });
        let new = match step {
            Ok(new) => new,
            Err(reason) => {
                // Nothing unacknowledged to cut: the old file is synced.
                let waiters = core.fail(&mut t, &dir.name(), &reason, false);
                drop(t);
                fail_all(waiters, &dir.name(), &reason);
                return core.lock();
            }
        };
        t.log = Arc::from(new);
        t.seg_first = seq + 1;
        t.times = TimeRange::default();
        t.seal_asked = false;
        t.len = 0;
        t.allocated = 0;
        t.synced_len = 0;
        t.answered_len = 0;
        t.answered_seq = seq;
        t.unsynced_since = None;
        // Every waiting append is in the sealed segment, durable.
        let waiters = std::mem::take(&mut t.waiters);
        drop(t);
        core.sealed_cv.notify_all();
        core.sealed.fetch_add(1, Ordering::Relaxed);
        // 4. The new file durable before any sync of it acknowledges a
        // record; then the head names the sealed segment's last record.
        let strict = self.head_sync_interval.is_zero();
        let result = dir
            .sync()
            .map_err(|e| (dir.name(), format!("cannot sync: {e}")))
            .and_then(|()| {
                self.head
                    .write_at(0, &encode_head(&core.key, seq, &prev))
                    .and_then(|()| if strict { self.head.sync() } else { Ok(()) })
                    .map_err(|e| (self.head.name(), format!("cannot write or sync: {e}")))
            });
        if let Err((path, reason)) = result {
            let mut t = core.lock();
            let mut failed = core.fail(&mut t, &path, &reason, false);
            drop(t);
            failed.extend(waiters);
            fail_all(failed, &path, &reason);
            return core.lock();
        }
        self.head_dirty = !strict;
        core.synced_seq.fetch_max(seq, Ordering::Release);
        core.set_durable(seq, prev);
        for (s, ack) in waiters {
            ack.send(Ok(s));
        }
        core.lock()
    }

    /// Syncs a head written without syncing (the records it names are
    /// already durable in the log; a failure still stops the log).
    fn sync_head(&mut self) {
        self.head_dirty = false;
        self.last_head_sync = Instant::now();
        if self.core.failed.get().is_some() {
            return;
        }
        if let Err(e) = self.head.sync() {
            let reason = format!("cannot sync: {e}");
            let mut t = self.core.lock();
            let waiters = self.core.fail(&mut t, &self.head.name(), &reason, false);
            drop(t);
            fail_all(waiters, &self.head.name(), &reason);
        }
    }
}
