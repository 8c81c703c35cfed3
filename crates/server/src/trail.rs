//! The audit trail and metering, as the server runs them.
//!
//! Every authenticated request leaves one record in the audit log
//! (`atrest-audit`). Requests refused before authentication (no signature,
//! one that does not verify, an unknown access key; a body too large, late
//! or unreadable, an unknown path or method) are counted in memory per
//! client address instead, and written as one record per address and
//! interval ([`Refusals`]): a client without credentials cannot grow the
//! trail by more than one record per interval per address it sends from.
//! Requests that change stored state record inside the key service, and
//! commit only once the record is durable. Everything else is recorded here
//! before its response is sent: written to the log file, and durable within
//! the log's sync interval (or durable before the answer, with
//! [`AuditSync::Every`]). A record that cannot be written turns a success
//! into an error (fail closed).
//!
//! Metering (K9) counts records by account, region, operation and outcome.
//! The counts are rebuilt from the audit log at start, so they are exactly
//! the log's, and survive restarts without a store of their own.

use std::collections::BTreeMap;
use std::hash::RandomState;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use hashbrown::{Equivalent, HashMap};

use atrest_audit::{AuditLog, Entry};

use crate::config::AuditSync;
use serde::Serialize;

/// Counts by (account, region, operation, outcome).
#[derive(Default)]
pub struct Metering {
    /// Looked up by a borrowed [`MeterRef`], so that counting a request
    /// allocates nothing once its row exists.
    counts: RwLock<HashMap<MeterKey, AtomicU64, RandomState>>,
}

/// One metering row.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Usage {
    /// Account.
    pub account: String,
    /// Region.
    pub region: String,
    /// Operation.
    pub operation: String,
    /// Successful requests.
    pub success: u64,
    /// Failed or refused requests.
    pub error: u64,
}

/// The operation name a record is metered under. Names a client made up
/// (an unknown `X-Amz-Target`) are counted together as `unknown`, so an
/// authenticated caller cannot grow the table without bound.
fn metered_operation(operation: &str) -> &str {
    /// The services of atrest's REST actions (declared by the server, not
    /// named by clients), and `http:` (refusals before a route, under a
    /// method name of at most 16 characters).
    const SERVICES: [&str; 8] = [
        "admin:", "audit:", "db:", "disk:", "http:", "iam:", "kms:", "project:",
    ];
    let known = (SERVICES.iter().any(|s| operation.starts_with(s)) && operation.len() <= 48)
        || atrest_kms::Operation::from_name(operation).is_some();
    if known { operation } else { "unknown" }
}

/// What a record is counted under: account, region, operation, success.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct MeterKey {
    account: String,
    region: String,
    operation: String,
    success: bool,
}

impl MeterKey {
    fn borrowed(&self) -> MeterRef<'_> {
        MeterRef {
            account: &self.account,
            region: &self.region,
            operation: &self.operation,
            success: self.success,
        }
    }
}

/// A [`MeterKey`] borrowed from a record. Its derived `Hash` feeds the
/// hasher what `MeterKey`'s does (a `&str` hashes as the `String` it
/// equals), which is what [`Equivalent`] lookups need.
#[derive(Debug, Clone, Copy, Hash)]
struct MeterRef<'a> {
    account: &'a str,
    region: &'a str,
    operation: &'a str,
    success: bool,
}

impl MeterRef<'_> {
    fn to_owned(self) -> MeterKey {
        MeterKey {
            account: self.account.to_owned(),
            region: self.region.to_owned(),
            operation: self.operation.to_owned(),
            success: self.success,
        }
    }
}

impl Equivalent<MeterKey> for MeterRef<'_> {
    fn equivalent(&self, key: &MeterKey) -> bool {
        self.account == key.account
            && self.region == key.region
            && self.operation == key.operation
            && self.success == key.success
    }
}

impl Metering {
    /// The row `entry` counts in; records without an account or region
    /// (refused before authentication) are not metered.
    fn key(entry: &Entry) -> Option<MeterRef<'_>> {
        let (Some(account), Some(region)) = (&entry.account, &entry.region) else {
            return None;
        };
        Some(MeterRef {
            account,
            region,
            operation: metered_operation(&entry.operation),
            success: entry.result == "Success",
        })
    }

    fn add(&self, key: MeterRef<'_>) {
        if let Some(c) = self
            .counts
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
        {
            c.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.counts
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(key.to_owned())
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The counts, optionally of one account, sorted.
    #[must_use]
    pub fn usage(&self, account: Option<&str>) -> Vec<Usage> {
        let map = self
            .counts
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut rows: BTreeMap<(String, String, String), Usage> = BTreeMap::new();
        for (key, n) in map.iter() {
            if account.is_some_and(|a| a != key.account) {
                continue;
            }
            let row = rows
                .entry((
                    key.account.clone(),
                    key.region.clone(),
                    key.operation.clone(),
                ))
                .or_insert_with(|| Usage {
                    account: key.account.clone(),
                    region: key.region.clone(),
                    operation: key.operation.clone(),
                    success: 0,
                    error: 0,
                });
            if key.success {
                row.success += n.load(Ordering::Relaxed);
            } else {
                row.error += n.load(Ordering::Relaxed);
            }
        }
        rows.into_values().collect()
    }

    /// The counts in Prometheus' text exposition format.
    #[must_use]
    pub fn prometheus(&self) -> String {
        let mut out = String::from(
            "# HELP atrest_kms_requests_total Key-service requests by account, region, operation and outcome.\n# TYPE atrest_kms_requests_total counter\n",
        );
        for u in self.usage(None) {
            for (outcome, n) in [("success", u.success), ("error", u.error)] {
                if n > 0 {
                    out.push_str(&format!(
                        "atrest_kms_requests_total{{account=\"{}\",region=\"{}\",operation=\"{}\",outcome=\"{outcome}\"}} {n}\n",
                        escape(&u.account),
                        escape(&u.region),
                        escape(&u.operation)
                    ));
                }
            }
        }
        out
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Requests refused before authentication, counted per client address
/// until the next [`Trail::flush_refusals`], which writes one record per
/// address: operation `unauthenticated`, result `Refused`, `count` and
/// `kinds` (refusals by error type), `time` of the first refusal. At most
/// [`MAX_REFUSING_ADDRESSES`] addresses are told apart per interval; the
/// refusals of any further address are counted under the source `other`.
#[derive(Default)]
pub struct Refusals {
    pending: std::sync::Mutex<std::collections::HashMap<Option<std::net::IpAddr>, Refused>>,
}

/// One address's refusals in the current interval.
struct Refused {
    first: String,
    count: u64,
    kinds: BTreeMap<String, u64>,
}

/// Addresses told apart in one interval of [`Refusals`] (the memory they
/// take is bounded: about 200 bytes each).
pub const MAX_REFUSING_ADDRESSES: usize = 10_000;
/// Error types kept apart per address (more fold into `other`).
const MAX_KINDS: usize = 16;

impl Refusals {
    /// Counts one refusal of `kind` from `source` at `time`.
    fn note(&self, source: Option<std::net::IpAddr>, kind: &str, time: impl FnOnce() -> String) {
        let mut pending = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = if pending.len() >= MAX_REFUSING_ADDRESSES && !pending.contains_key(&source) {
            None
        } else {
            source
        };
        let r = pending.entry(key).or_insert_with(|| Refused {
            first: time(),
            count: 0,
            kinds: BTreeMap::new(),
        });
        r.count += 1;
        let kind = if r.kinds.len() >= MAX_KINDS && !r.kinds.contains_key(kind) {
            "other"
        } else {
            kind
        };
        match r.kinds.get_mut(kind) {
            Some(n) => *n += 1,
            None => {
                r.kinds.insert(kind.to_owned(), 1);
            }
        }
    }

    fn take(&self) -> Vec<(Option<std::net::IpAddr>, Refused)> {
        let mut pending = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut all: Vec<_> = pending.drain().collect();
        all.sort_by(|a, b| a.1.first.cmp(&b.1.first));
        all
    }
}

/// The audit log and metering together; the key service's audit sink.
pub struct Trail {
    log: AuditLog,
    /// This node's id, written into every record.
    node: Option<String>,
    sync: AuditSync,
    /// Counts of what the log holds.
    pub metering: Metering,
    /// Refusals before authentication, not yet written.
    refusals: Refusals,
}

impl Trail {
    /// Wraps an open log, rebuilding the counts from `dir`'s records;
    /// every record appended from now on names `node` (this node's id).
    pub fn new(
        log: AuditLog,
        dir: &std::path::Path,
        sync: AuditSync,
        node: Option<String>,
    ) -> Result<Self, atrest_audit::AuditError> {
        let metering = Metering::default();
        // One record at a time: memory does not grow with the log.
        atrest_audit::visit_oldest(dir, |r| {
            if let Some(key) = Metering::key(&r.entry) {
                metering.add(key);
            }
        })?;
        Ok(Self {
            log,
            node,
            sync,
            metering,
            refusals: Refusals::default(),
        })
    }

    /// Counts a request refused before authentication (see [`Refusals`]);
    /// written by the next [`Trail::flush_refusals`].
    pub fn note_refusal(&self, source: Option<std::net::IpAddr>, kind: &str) {
        self.refusals.note(source, kind, || {
            atrest_kms::audit_time(time::OffsetDateTime::now_utc())
        });
    }

    /// Writes one record per address of the refusals counted since the
    /// last flush; returns how many records it wrote.
    pub fn flush_refusals(&self) -> Result<usize, String> {
        let all = self.refusals.take();
        let n = all.len();
        for (source, r) in all {
            let source = source.map_or_else(|| "other".to_owned(), |ip| ip.to_string());
            tracing::info!(%source, count = r.count, kinds = ?r.kinds, "refused requests without valid credentials");
            let entry = Entry {
                time: r.first,
                request_id: uuid::Uuid::new_v4().to_string(),
                source: Some(source),
                operation: UNAUTHENTICATED.to_owned(),
                result: "Refused".to_owned(),
                count: Some(r.count),
                kinds: r.kinds,
                node: self.node.clone(),
                ..Entry::default()
            };
            self.log.append_written(&entry).map_err(|e| e.to_string())?;
        }
        Ok(n)
    }

    /// Appends and counts the record of a request that changed no stored
    /// state; resolves once the record is written, or durable with
    /// [`AuditSync::Every`].
    pub async fn record(&self, mut entry: Entry) -> Result<(), String> {
        self.stamp(&mut entry);
        match self.sync {
            AuditSync::Changes => {
                self.log.append_written(&entry).map_err(|e| e.to_string())?;
                if let Some(key) = Metering::key(&entry) {
                    self.metering.add(key);
                }
            }
            AuditSync::Every => {
                let key = Metering::key(&entry).map(MeterRef::to_owned);
                self.log.append(entry).await.map_err(|e| e.to_string())?;
                self.meter_owned(key.as_ref());
            }
        }
        Ok(())
    }

    /// Names this node in `entry` (unless it names one already).
    fn stamp(&self, entry: &mut Entry) {
        if entry.node.is_none() {
            entry.node.clone_from(&self.node);
        }
    }

    /// The chain's durable head (seq and mac of its last durable record).
    #[must_use]
    pub fn head(&self) -> atrest_audit::Head {
        self.log.head()
    }

    /// Counts a record, by a key taken before the entry went to the log.
    fn meter_owned(&self, key: Option<&MeterKey>) {
        if let Some(k) = key {
            self.metering.add(k.borrowed());
        }
    }
}

/// The key service records here the requests that change stored state
/// (before they commit) and the calls of services in process: always
/// durable.
impl atrest_kms::AuditSink for Trail {
    fn record_blocking(&self, mut entry: Entry) -> Result<(), String> {
        self.stamp(&mut entry);
        let key = Metering::key(&entry).map(MeterRef::to_owned);
        self.log.append_blocking(entry).map_err(|e| e.to_string())?;
        self.meter_owned(key.as_ref());
        Ok(())
    }
}

/// The operation of the records of refusals before authentication.
pub const UNAUTHENTICATED: &str = "unauthenticated";

/// A shared trail.
pub type SharedTrail = Arc<Trail>;

#[cfg(test)]
mod tests {
    use super::{Entry, Metering, Usage, metered_operation};

    #[test]
    fn borrowed_keys_find_the_rows_they_made() {
        let m = Metering::default();
        let entry = |account: &str, operation: &str, result: &str| Entry {
            account: Some(account.into()),
            region: Some("us-east-1".into()),
            operation: operation.into(),
            result: result.into(),
            ..Entry::default()
        };
        for e in [
            entry("111122223333", "Decrypt", "Success"),
            entry("111122223333", "Decrypt", "Success"),
            entry("111122223333", "Decrypt", "AccessDeniedException"),
            entry("111122223333", "Encrypt", "Success"),
            entry("444455556666", "Decrypt", "Success"),
            Entry {
                region: None,
                ..entry("444455556666", "Decrypt", "Success")
            },
        ] {
            if let Some(k) = Metering::key(&e) {
                m.add(k);
            }
        }
        let row = |account: &str, operation: &str, success, error| Usage {
            account: account.into(),
            region: "us-east-1".into(),
            operation: operation.into(),
            success,
            error,
        };
        assert_eq!(
            m.usage(None),
            vec![
                row("111122223333", "Decrypt", 2, 1),
                row("111122223333", "Encrypt", 1, 0),
                row("444455556666", "Decrypt", 1, 0),
            ]
        );
        let counts = m.counts.read().unwrap();
        assert_eq!(counts.len(), 4);
        // The rows are found by the borrowed form, as `add`'s read-locked
        // path needs (a hash that disagreed would send every request to
        // the write lock, and the counts above would not show it).
        for key in counts.keys() {
            let borrowed = key.borrowed();
            assert!(counts.get(&borrowed).is_some(), "{borrowed:?}");
        }
    }

    #[test]
    fn made_up_operation_names_are_metered_as_unknown() {
        assert_eq!(metered_operation("Encrypt"), "Encrypt");
        assert_eq!(
            metered_operation("admin:CreateAccount"),
            "admin:CreateAccount"
        );
        assert_eq!(metered_operation("http:GET"), "http:GET");
        assert_eq!(metered_operation("EncryptX"), "unknown");
        assert_eq!(metered_operation("x".repeat(64).as_str()), "unknown");
        assert_eq!(metered_operation(""), "unknown");
    }
}
