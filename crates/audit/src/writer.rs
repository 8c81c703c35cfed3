//! The writer thread: group commit.
//!
//! Appenders send a [`Pending`] over an unbounded channel (sending never
//! blocks) and wait on their own one-shot reply. The thread blocks for the
//! first pending entry, then takes whatever else is already queued (up to
//! [`MAX_BATCH`]), and commits the batch: it assigns seq, prev and mac to
//! each, writes all the lines with one `write_at` at the end of the log,
//! syncs the log, rewrites the head in place and syncs it, and only then
//! replies `Ok(seq)` to each appender, in seq order. While it commits, new
//! entries queue up and form the next batch, so the batch size adapts to
//! the load: one fsync pair serves every request that arrived during the
//! previous one.
//!
//! Any error while writing or syncing fails every entry of the batch and
//! stops the log for good (fail closed): the file may now end in a torn or
//! unacknowledged record, and after a failed fsync the kernel's page cache no
//! longer says what is on disk. Before stopping it tries, best effort, to cut
//! the log back to its last acknowledged record; whether or not that works,
//! reopening the log cuts everything after the head away.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, mpsc};
use std::time::{Duration, Instant};

use atrest_crypto::SecretKey;
use tokio::sync::oneshot;

use crate::AuditError;
use crate::format::{encode_head, encode_line};
use crate::storage::Storage;

/// The most entries one batch takes (about 0.5 MB of records).
pub(crate) const MAX_BATCH: usize = 1024;

/// How many past batch sizes set the next batch's target.
const RECENT: usize = 8;

static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// How an appender waits for its reply.
pub(crate) enum Ack {
    Async(oneshot::Sender<Result<u64, AuditError>>),
    Blocking(mpsc::SyncSender<Result<u64, AuditError>>),
}

impl Ack {
    fn send(self, r: Result<u64, AuditError>) {
        // An appender that stopped waiting (a dropped future) is not an
        // error: its record, if written, stays.
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

/// One entry waiting to be committed: its fields already encoded by the
/// appender ([`crate::format::encode_body`]).
pub(crate) struct Pending {
    pub(crate) body: Vec<u8>,
    pub(crate) ack: Ack,
}

/// State shared between the writer and the handle.
#[derive(Default)]
pub(crate) struct Shared {
    /// Set once when the writer fails; appends are refused from then on.
    pub(crate) failed: OnceLock<String>,
    /// Records committed (acknowledged) since open.
    pub(crate) records: AtomicU64,
    /// Batches committed since open.
    pub(crate) batches: AtomicU64,
    /// The largest batch committed since open.
    pub(crate) max_batch: AtomicU64,
    /// The seq of the last committed record.
    pub(crate) last_seq: AtomicU64,
    /// Entries sent and not yet taken by the writer.
    pub(crate) queued: AtomicUsize,
    /// How many waiting entries end the wait for the next commit early
    /// (the appender that makes `queued` reach it unparks the writer).
    pub(crate) target: AtomicUsize,
}

pub(crate) struct Writer<L, H> {
    pub(crate) log: L,
    pub(crate) head: H,
    pub(crate) key: SecretKey<32>,
    /// Length of the log's acknowledged part.
    pub(crate) len: u64,
    /// The log file's length: `len` and then zeros.
    allocated: u64,
    pub(crate) seq: u64,
    pub(crate) prev: [u8; 64],
    pub(crate) shared: Arc<Shared>,
    pub(crate) commit_interval: Duration,
    pub(crate) commit_batch: usize,
    pub(crate) head_sync_interval: Duration,
    pub(crate) preallocate: u64,
    /// The sizes of the last batches.
    recent: [usize; RECENT],
    recent_at: usize,
    /// The head was written since its last sync.
    head_dirty: bool,
    last_head_sync: Instant,
    last_commit: Option<Instant>,
}

impl<L: Storage, H: Storage> Writer<L, H> {
    #[allow(clippy::too_many_arguments, reason = "one private constructor")]
    pub(crate) fn new(
        log: L,
        head: H,
        key: SecretKey<32>,
        (len, seq, prev): (u64, u64, [u8; 64]),
        shared: Arc<Shared>,
        (commit_interval, commit_batch): (Duration, usize),
        (head_sync_interval, preallocate): (Duration, u64),
    ) -> Self {
        Self {
            log,
            head,
            key,
            len,
            allocated: len,
            seq,
            prev,
            shared,
            commit_interval,
            commit_batch,
            head_sync_interval,
            preallocate,
            recent: [1; RECENT],
            recent_at: 0,
            head_dirty: false,
            last_head_sync: Instant::now(),
            last_commit: None,
        }
    }

    /// The next entry; meanwhile syncs the head when it is due.
    fn next(&mut self, rx: &mpsc::Receiver<Pending>) -> Option<Pending> {
        loop {
            if !self.head_dirty {
                return rx.recv().ok();
            }
            let due = self.last_head_sync + self.head_sync_interval;
            match rx.recv_timeout(due.saturating_duration_since(Instant::now())) {
                Ok(p) => return Some(p),
                Err(mpsc::RecvTimeoutError::Timeout) => self.sync_head(),
                Err(mpsc::RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    pub(crate) fn run(mut self, rx: mpsc::Receiver<Pending>) {
        let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
        let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
        let mut acks: Vec<(Ack, u64)> = Vec::with_capacity(MAX_BATCH);
        // `recv` keeps returning what is queued after the handle is dropped,
        // so every accepted entry gets its reply before the thread ends.
        while let Some(first) = self.next(&rx) {
            batch.push(first);
            // Bound the syncs per second: what arrives meanwhile shares the
            // next one.
            self.pace();
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            self.shared.queued.fetch_sub(batch.len(), Ordering::AcqRel);
            self.recent[self.recent_at] = batch.len();
            self.recent_at = (self.recent_at + 1) % RECENT;
            let target = self.recent.iter().copied().max().unwrap_or(1);
            self.shared
                .target
                .store(target.clamp(1, self.commit_batch), Ordering::Release);
            if let Some(reason) = self.shared.failed.get() {
                for p in batch.drain(..) {
                    p.ack.send(Err(AuditError::Closed(reason.clone())));
                }
                continue;
            }
            self.last_commit = Some(Instant::now());
            self.commit(&mut batch, &mut buf, &mut acks);
            if self.head_dirty && self.last_head_sync.elapsed() >= self.head_sync_interval {
                self.sync_head();
            }
        }
        if self.head_dirty {
            self.sync_head();
        }
        // Leave the file at rest without its zero tail.
        if self.allocated > self.len && self.shared.failed.get().is_none() {
            let _ = self.log.set_len(self.len).and_then(|()| self.log.sync());
        }
    }

    /// Makes the file at least `end` long, extending it with zeros.
    fn preallocate(&mut self, end: u64) -> std::io::Result<()> {
        if end <= self.allocated || self.preallocate == 0 {
            return Ok(());
        }
        let target = end.div_ceil(self.preallocate) * self.preallocate;
        while self.allocated < target {
            let n = (target - self.allocated).min(ZEROS.len() as u64);
            self.log.write_at(self.allocated, &ZEROS[..n as usize])?;
            self.allocated += n;
        }
        Ok(())
    }

    /// Waits, before a commit, until as many entries are waiting as the
    /// largest of the last few batches had (capped at `commit_batch`), or
    /// until `commit_interval` has passed since the last commit began. Under
    /// light load the batches, and so the target, are 1: no wait. Under a
    /// closed loop of N clients, the target is N: the commit starts as soon
    /// as all of them have sent. Under heavy load the interval bounds the
    /// syncs per second. The sleep is a park; the appender whose entry
    /// reaches the target unparks it.
    fn pace(&self) {
        let Some(last) = self.last_commit else {
            return;
        };
        let due = last + self.commit_interval;
        let target = self.shared.target.load(Ordering::Acquire);
        loop {
            let wait = due.saturating_duration_since(Instant::now());
            if wait.is_zero() || self.shared.queued.load(Ordering::Acquire) >= target {
                return;
            }
            std::thread::park_timeout(wait);
        }
    }

    /// Syncs a head written without syncing (acknowledged records are
    /// already durable in the log; a failure still stops the log).
    fn sync_head(&mut self) {
        self.head_dirty = false;
        self.last_head_sync = Instant::now();
        if self.shared.failed.get().is_some() {
            return;
        }
        if let Err(e) = self.head.sync() {
            self.fail(
                &mut Vec::new(),
                self.head.name(),
                format!("cannot sync: {e}"),
            );
        }
    }

    fn commit(&mut self, batch: &mut Vec<Pending>, buf: &mut Vec<u8>, acks: &mut Vec<(Ack, u64)>) {
        buf.clear();
        acks.clear();
        let mut seq = self.seq;
        let mut prev = self.prev;
        for p in batch.drain(..) {
            seq += 1;
            prev = encode_line(&self.key, seq, &p.body, &prev, buf);
            acks.push((p.ack, seq));
        }
        if acks.is_empty() {
            return;
        }

        let logged = self
            .preallocate(self.len + buf.len() as u64)
            .and_then(|()| self.log.write_at(self.len, buf))
            .and_then(|()| self.log.sync());
        if let Err(e) = logged {
            // Best effort: take the unacknowledged bytes away again.
            let _ = self.log.set_len(self.len).and_then(|()| self.log.sync());
            self.fail(acks, self.log.name(), format!("cannot write or sync: {e}"));
            return;
        }
        let head = encode_head(&self.key, seq, &prev);
        let strict = self.head_sync_interval.is_zero();
        let headed = self
            .head
            .write_at(0, &head)
            .and_then(|()| if strict { self.head.sync() } else { Ok(()) });
        if let Err(e) = headed {
            // The log must stay as it is: the head may already name the new
            // records. Reopening settles it (the head decides).
            self.fail(acks, self.head.name(), format!("cannot write or sync: {e}"));
            return;
        }

        self.head_dirty = !strict;
        self.len += buf.len() as u64;
        self.seq = seq;
        self.prev = prev;
        let n = acks.len() as u64;
        self.shared.records.fetch_add(n, Ordering::Relaxed);
        self.shared.batches.fetch_add(1, Ordering::Relaxed);
        self.shared.max_batch.fetch_max(n, Ordering::Relaxed);
        self.shared.last_seq.store(seq, Ordering::Release);
        for (ack, s) in acks.drain(..) {
            ack.send(Ok(s));
        }
    }

    fn fail(&self, acks: &mut Vec<(Ack, u64)>, path: String, reason: String) {
        tracing::error!(path = %path, %reason, "audit log failed; refusing all further records");
        let _ = self.shared.failed.set(format!("{path}: {reason}"));
        for (ack, _) in acks.drain(..) {
            ack.send(Err(AuditError::Io {
                path: path.clone(),
                reason: reason.clone(),
            }));
        }
    }
}
