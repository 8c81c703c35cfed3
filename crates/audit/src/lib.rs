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
//!   against the head file, and starts the writer.
//! * [`AuditLog::append`] / [`AuditLog::append_blocking`] return only once
//!   the record is durable (written and fsynced), or an error; a caller must
//!   not let the request take effect on error (fail closed).
//! * [`verify`] names the first bad record; [`query`] filters records.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::path::Path;

use atrest_crypto::SecretKey;
use serde::{Deserialize, Serialize};

/// What a caller submits: one request's facts. Never a secret: no
/// plaintext, key material, access key secret or encryption-context value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
}

/// A record as stored: the entry, its sequence number (from 1), and the
/// chain fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// The writer has stopped (after an I/O error it refuses all appends
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

/// The audit log, open for appending.
pub struct AuditLog {
    _private: (),
}

impl AuditLog {
    /// Opens (creating if absent) the log in `dir` (files `audit.log` and
    /// `audit.head`), chained under `key`.
    pub fn open(_dir: &Path, _key: &SecretKey<32>) -> Result<Self, AuditError> {
        Err(AuditError::Closed("not yet implemented".into()))
    }

    /// Appends `entry`; resolves once it is durable. Returns its `seq`.
    pub async fn append(&self, _entry: Entry) -> Result<u64, AuditError> {
        Err(AuditError::Closed("not yet implemented".into()))
    }

    /// [`AuditLog::append`] for synchronous callers.
    pub fn append_blocking(&self, _entry: Entry) -> Result<u64, AuditError> {
        Err(AuditError::Closed("not yet implemented".into()))
    }
}

/// Verifies the log in `dir` under `key`.
pub fn verify(_dir: &Path, _key: &SecretKey<32>) -> Result<VerifyReport, AuditError> {
    Err(AuditError::Closed("not yet implemented".into()))
}

/// The records of the log in `dir` that match `filter`, oldest first.
pub fn query(_dir: &Path, _filter: &Filter) -> Result<Vec<Record>, AuditError> {
    Err(AuditError::Closed("not yet implemented".into()))
}
