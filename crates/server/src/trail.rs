//! The audit trail and metering, as the server runs them.
//!
//! Every request leaves one record in the audit log (`atrest-audit`).
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

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use atrest_audit::{AuditLog, Entry};

use crate::config::AuditSync;
use serde::Serialize;

/// Counts by (account, region, operation, outcome).
#[derive(Default)]
pub struct Metering {
    counts: RwLock<HashMap<(String, String, String, bool), AtomicU64>>,
}

/// One metering row.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
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
fn metered_operation(operation: &str) -> String {
    let known = operation.starts_with("admin:")
        || ((operation.starts_with("disk:") || operation.starts_with("db:"))
            && operation.len() <= 40)
        || operation.starts_with("http:")
        || atrest_kms::Operation::from_name(operation).is_some();
    if known {
        operation.to_owned()
    } else {
        "unknown".to_owned()
    }
}

/// What a record is counted under: account, region, operation, success.
type MeterKey = (String, String, String, bool);

impl Metering {
    /// The row `entry` counts in; records without an account or region
    /// (refused before authentication) are not metered.
    fn key(entry: &Entry) -> Option<MeterKey> {
        let (Some(account), Some(region)) = (&entry.account, &entry.region) else {
            return None;
        };
        Some((
            account.clone(),
            region.clone(),
            metered_operation(&entry.operation),
            entry.result == "Success",
        ))
    }

    fn add(&self, key: MeterKey) {
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
            .entry(key)
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
        for ((acct, region, op, ok), n) in map.iter() {
            if account.is_some_and(|a| a != acct) {
                continue;
            }
            let row = rows
                .entry((acct.clone(), region.clone(), op.clone()))
                .or_insert_with(|| Usage {
                    account: acct.clone(),
                    region: region.clone(),
                    operation: op.clone(),
                    success: 0,
                    error: 0,
                });
            if *ok {
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

/// The audit log and metering together; the key service's audit sink.
pub struct Trail {
    log: AuditLog,
    sync: AuditSync,
    /// Counts of what the log holds.
    pub metering: Metering,
}

impl Trail {
    /// Wraps an open log, rebuilding the counts from `dir`'s records.
    pub fn new(log: AuditLog, dir: &std::path::Path, sync: AuditSync) -> Result<Self, String> {
        let metering = Metering::default();
        let records = atrest_audit::query(dir, &atrest_audit::Filter::default())
            .map_err(|e| e.to_string())?;
        for key in records.iter().filter_map(|r| Metering::key(&r.entry)) {
            metering.add(key);
        }
        Ok(Self {
            log,
            sync,
            metering,
        })
    }

    /// Counts a record once it is in the log.
    fn meter(&self, key: Option<MeterKey>) {
        if let Some(key) = key {
            self.metering.add(key);
        }
    }

    /// Appends and counts the record of a request that changed no stored
    /// state; resolves once the record is written, or durable with
    /// [`AuditSync::Every`].
    pub async fn record(&self, entry: Entry) -> Result<(), String> {
        let key = Metering::key(&entry);
        match self.sync {
            AuditSync::Changes => self.log.append_written(&entry).map(drop),
            AuditSync::Every => self.log.append(entry).await.map(drop),
        }
        .map_err(|e| e.to_string())?;
        self.meter(key);
        Ok(())
    }
}

/// The key service records here the requests that change stored state
/// (before they commit) and the calls of services in process: always
/// durable.
impl atrest_kms::AuditSink for Trail {
    fn record_blocking(&self, entry: Entry) -> Result<(), String> {
        let key = Metering::key(&entry);
        self.log.append_blocking(entry).map_err(|e| e.to_string())?;
        self.meter(key);
        Ok(())
    }
}

/// A shared trail.
pub type SharedTrail = Arc<Trail>;

#[cfg(test)]
mod tests {
    use super::metered_operation;

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
