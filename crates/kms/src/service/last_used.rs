//! When and where each access key was last used.
//!
//! Every authenticated request notes its access key's use here, in memory;
//! the store gets it at most once per flush interval per key (one minute
//! unless the server is told otherwise), and at a clean shutdown. A write
//! per request would cost a commit (an fsync) on every KMS call, far more
//! than the call itself. The precision that follows: the stored time is at
//! most one interval older than the last use, and a crash loses at most one
//! interval of it. Listings merge what is in memory, so while the server
//! runs they are exact. AWS's `GetAccessKeyLastUsed` is coarse too.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::KeyService;
use crate::KmsError;
use crate::records::{self, AccessKeyRecord, LastUsedRecord};

/// The default flush interval: at most one store write per key a minute.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(60);

/// What a request authenticated by an access key came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessKeyUse {
    /// The KMS API (SigV4 service `kms`).
    Kms,
    /// The REST API (SigV4 service `atrest`).
    Rest,
    /// A disk over NBD, by the key's TLS pre-shared key.
    Nbd,
}

impl AccessKeyUse {
    /// The name shown as the service of the last use.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kms => "kms",
            Self::Rest => "atrest",
            Self::Nbd => "nbd",
        }
    }
}

/// One key's use, as noted in memory.
struct Noted {
    time: i64,
    service: AccessKeyUse,
    region: String,
    /// Whether this use is newer than what the store has.
    dirty: bool,
    /// When this key's use was last written, ms (`None`: not since start).
    flushed: Option<i64>,
}

impl Noted {
    fn record(&self) -> LastUsedRecord {
        LastUsedRecord {
            time: self.time,
            service: self.service.as_str().to_owned(),
            region: self.region.clone(),
        }
    }
}

/// The in-memory side: one entry per access key used since start.
pub(crate) struct UseTracker {
    entries: Mutex<HashMap<String, Noted>>,
    interval_ms: AtomicU64,
}

impl Default for UseTracker {
    fn default() -> Self {
        Self {
            entries: Mutex::default(),
            interval_ms: AtomicU64::new(millis(DEFAULT_FLUSH_INTERVAL)),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl UseTracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Noted>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The use noted in memory for `access_key_id`, if any.
    pub(crate) fn noted(&self, access_key_id: &str) -> Option<LastUsedRecord> {
        self.lock().get(access_key_id).map(Noted::record)
    }

    /// Drops what was noted of a deleted key.
    pub(crate) fn forget(&self, access_key_id: &str) {
        self.lock().remove(access_key_id);
    }
}

impl KeyService {
    /// Notes that `access_key_id` just authenticated a request through
    /// `service` in `region`. Memory only: never a store write (see
    /// [`KeyService::flush_access_key_use`]).
    pub fn note_access_key_use(&self, access_key_id: &str, service: AccessKeyUse, region: &str) {
        let now = self.now_ms();
        let mut entries = self.key_use.lock();
        if let Some(n) = entries.get_mut(access_key_id) {
            n.time = now;
            n.service = service;
            // Requests of one key mostly stay in one region: no allocation then.
            if n.region != region {
                region.clone_into(&mut n.region);
            }
            n.dirty = true;
        } else {
            entries.insert(
                access_key_id.to_owned(),
                Noted {
                    time: now,
                    service,
                    region: region.to_owned(),
                    dirty: true,
                    flushed: None,
                },
            );
        }
    }

    /// Sets how often, at most, a key's last use is written to the store.
    pub fn set_access_key_use_flush_interval(&self, interval: Duration) {
        self.key_use
            .interval_ms
            .store(millis(interval), Ordering::Relaxed);
    }

    /// How often, at most, a key's last use is written to the store.
    #[must_use]
    pub fn access_key_use_flush_interval(&self) -> Duration {
        Duration::from_millis(self.key_use.interval_ms.load(Ordering::Relaxed))
    }

    /// Writes the last use of every key used since its last write, if that
    /// write is at least one flush interval old (`all`: whatever its age,
    /// for shutdown), in one transaction. Returns how many keys were
    /// written; with none due, the store is not touched.
    pub fn flush_access_key_use(&self, all: bool) -> Result<usize, KmsError> {
        let now = self.now_ms();
        let interval =
            i64::try_from(self.key_use.interval_ms.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
        let due: Vec<(String, LastUsedRecord)> = self
            .key_use
            .lock()
            .iter()
            .filter(|(_, n)| {
                n.dirty && (all || n.flushed.is_none_or(|f| now.saturating_sub(f) >= interval))
            })
            .map(|(id, n)| (id.clone(), n.record()))
            .collect();
        if due.is_empty() {
            return Ok(0);
        }
        let mut tx = self.store.write()?;
        let mut gone = Vec::new();
        let mut written = 0;
        for (id, last) in &due {
            let Some(mut rec): Option<AccessKeyRecord> =
                records::get(&*tx, records::ACCESS_KEYS, id.as_bytes())?
            else {
                // Deleted since it was used.
                gone.push(id.as_str());
                continue;
            };
            if rec.last_used.as_ref().is_some_and(|l| l.time >= last.time) {
                continue;
            }
            rec.last_used = Some(last.clone());
            records::put(&mut *tx, records::ACCESS_KEYS, id.as_bytes(), &rec)?;
            written += 1;
        }
        tx.commit()?;
        let mut entries = self.key_use.lock();
        for id in gone {
            entries.remove(id);
        }
        for (id, last) in &due {
            if let Some(n) = entries.get_mut(id) {
                n.flushed = Some(now);
                // A use noted since the snapshot stays dirty, for the next
                // interval.
                if n.record() == *last {
                    n.dirty = false;
                }
            }
        }
        Ok(written)
    }
}
