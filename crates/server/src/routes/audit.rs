//! The audit trail, metering and service keys: `/v1/audit`,
//! `/v1/audit/verify`, `/v1/metering`, `/v1/service-keys/{service}`.
//! Actions `audit:QueryAudit`, `audit:VerifyAudit`, `audit:GetMetering` on
//! `*`, and `kms:EnsureServiceKey` on the alias it makes sure of.
#![allow(
    unused_qualifications,
    reason = "utoipa's expansion of the declared parameters names their types in full"
)]

use atrest_kms::{KeyService, KmsError};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::rest::{Replayable, Resource, endpoint};
use crate::state::AppState;

/// The routes of this module.
pub(crate) fn routes() -> OpenApiRouter<std::sync::Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(query_audit))
        .routes(routes!(verify_audit))
        .routes(routes!(metering))
        .routes(routes!(ensure_service_key))
}

/// `GET /v1/audit`: the filters (every one given must match) and the page.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditQuery {
    /// An account: only its records (admins; anyone else sees only their
    /// own account's records, and may name only that account).
    account: Option<String>,
    /// A key ARN.
    key: Option<String>,
    /// A principal ARN.
    principal: Option<String>,
    /// An operation (`Encrypt`, `disk:CreateDisk`, ...).
    operation: Option<String>,
    /// Records at or after this time (RFC 3339).
    since: Option<String>,
    /// Records before this time (RFC 3339).
    until: Option<String>,
    /// Only records older than this one (seq): the `next_before` of the
    /// previous page, to page back through the trail.
    #[param(value_type = Option<i64>, minimum = 0)]
    before: Option<String>,
    /// At most this many records, the latest (default and maximum 1000;
    /// for more, page with `before`).
    #[param(value_type = Option<i64>, minimum = 0, maximum = 1000)]
    limit: Option<String>,
}

/// `limit`'s default and most.
const MAX_LIMIT: usize = 1000;

/// Audit records.
#[derive(Serialize, ToSchema, Clone)]
pub(crate) struct AuditRecords {
    /// The records, oldest first: the latest that match (before `before`).
    records: Vec<atrest_audit::Record>,
    /// When older records match too: the `before` that asks for the next
    /// older page (the seq of the oldest record here). Absent when there is
    /// nothing older.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_before: Option<u64>,
}

/// How many audit queries run at once; the others wait their turn. Each
/// holds at most a block of the log and a page of records (a few MB), so
/// together they stay within a bounded amount of memory, and of the disk's
/// and the CPUs' time.
const CONCURRENT_QUERIES: usize = 4;

/// The turns of [`CONCURRENT_QUERIES`] (queries run on blocking threads,
/// which wait here in turn).
static QUERY_TURNS: Turns = Turns {
    running: std::sync::Mutex::new(0),
    freed: std::sync::Condvar::new(),
};

struct Turns {
    running: std::sync::Mutex<usize>,
    freed: std::sync::Condvar,
}

/// A turn: the query runs while it is held.
struct Turn(&'static Turns);

impl Turns {
    /// Waits until fewer than [`CONCURRENT_QUERIES`] run.
    fn take(&'static self) -> Turn {
        let mut n = self
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while *n >= CONCURRENT_QUERIES {
            n = self
                .freed
                .wait(n)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        *n += 1;
        Turn(self)
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        *self
            .0
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) -= 1;
        self.0.freed.notify_one();
    }
}

/// A non-negative number in a query parameter.
fn number(name: &str, v: &str) -> Result<u64, ApiError> {
    v.parse::<i64>()
        .ok()
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(|| ApiError::Invalid(format!("'{name}' must be a non-negative number")))
}

/// The first record that failed verification.
#[derive(Serialize, ToSchema, Clone)]
pub(crate) struct BadRecord {
    /// Its line number (from 1).
    record: u64,
    /// What is wrong with it.
    reason: String,
}

/// The result of verifying the audit chain.
#[derive(Serialize, ToSchema, Clone)]
pub(crate) struct AuditVerification {
    /// Whether the whole log verified.
    verified: bool,
    /// Records that verified, before the first bad one.
    good_records: u64,
    /// The first bad record, if any.
    first_bad: Option<BadRecord>,
}

/// `GET /v1/metering`: the account to report on.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct MeteringQuery {
    /// The account (admins: default every account; others: only their own).
    account: Option<String>,
}

/// Request counts.
#[derive(Serialize, ToSchema, Clone)]
pub(crate) struct MeteringReport {
    /// One row per account, region and operation.
    usage: Vec<crate::trail::Usage>,
}

/// A service in a path.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct ServicePath {
    /// The service's name (`disk`, `db`).
    service: String,
}

/// A service key of the caller's account.
#[derive(Serialize, ToSchema, Clone)]
pub(crate) struct ServiceKey {
    /// The service.
    service: String,
    /// The key's ARN.
    key_arn: String,
    /// Its alias (`alias/atrest/<service>`).
    alias: String,
}

impl Replayable for AuditRecords {}
impl Replayable for AuditVerification {}
impl Replayable for MeteringReport {}
impl Replayable for ServiceKey {}

endpoint! {
    /// Audit records by account, key, principal, operation and time, the
    /// latest first in pages of at most 1000 (each page oldest first; pass
    /// its `next_before` as `before` for the next older one). An admin
    /// sees every account's; anyone else only their own account's.
    query_audit: get "/v1/audit" => "audit:QueryAudit",
    tag: "audit", status: OK, paged: false, idempotent: false,
    query: AuditQuery,
    answer: AuditRecords,
    resource: |_, _, _, _, _| Ok(Resource::any()),
    run: |st, call, _, q, _| {
        let limit = match &q.limit {
            None => MAX_LIMIT,
            Some(l) => usize::try_from(number("limit", l)?)
                .ok()
                .filter(|&l| l <= MAX_LIMIT)
                .ok_or_else(|| {
                    ApiError::Invalid(format!("'limit' must be an integer from 0 to {MAX_LIMIT}"))
                })?,
        };
        let before = q.before.as_deref().map(|b| number("before", b)).transpose()?;
        let account = match (call.caller.admin, q.account) {
            (true, a) => a,
            (false, Some(a)) if a != call.caller.account.as_str() => {
                return Err(KmsError::AccessDenied(format!(
                    "User: {} may read only its own account's audit records",
                    call.caller.principal_arn()
                ))
                .into());
            }
            (false, _) => Some(call.caller.account.as_str().to_owned()),
        };
        if limit == 0 {
            return Ok(AuditRecords { records: Vec::new(), next_before: None });
        }
        // One more than asked: whether it is there says whether there is
        // an older page.
        let filter = atrest_audit::Filter {
            account,
            key_arn: q.key,
            principal: q.principal,
            operation: q.operation,
            since: q.since,
            until: q.until,
            before,
            limit: Some(limit + 1),
        };
        let turn = QUERY_TURNS.take();
        let mut records = atrest_audit::query_newest(&st.audit_dir, &filter)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        drop(turn);
        let next_before = if records.len() > limit {
            records.truncate(limit);
            records.last().map(|r| r.seq)
        } else {
            None
        };
        records.reverse();
        Ok(AuditRecords { records, next_before })
    },
}

endpoint! {
    /// Verify the audit trail's chain (admins).
    verify_audit: post "/v1/audit/verify" => "audit:VerifyAudit",
    tag: "audit", status: OK, paged: false, idempotent: false,
    answer: AuditVerification,
    resource: |_, _, _, _, _| Ok(Resource::any()),
    run: |st, call, _, _, _| {
        KeyService::require_admin_caller(call.caller)?;
        let key = st.kms.audit_key()?;
        let report = atrest_audit::verify(&st.audit_dir, &key)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let first_bad = report.first_bad.map(|(record, reason)| BadRecord { record, reason });
        Ok(AuditVerification { verified: first_bad.is_none(), good_records: report.good, first_bad })
    },
}

endpoint! {
    /// Request counts: admins may see every account, anyone else only
    /// their own.
    metering: get "/v1/metering" => "audit:GetMetering",
    tag: "audit", status: OK, paged: false, idempotent: false,
    query: MeteringQuery,
    answer: MeteringReport,
    resource: |_, _, _, _, _| Ok(Resource::any()),
    run: |st, call, _, q, _| {
        let account = match (call.caller.admin, q.account) {
            (true, a) => a,
            (false, Some(a)) if a != call.caller.account.as_str() => {
                return Err(KmsError::AccessDenied(format!(
                    "User: {} may read only its own account's metering",
                    call.caller.principal_arn()
                ))
                .into());
            }
            (false, _) => Some(call.caller.account.as_str().to_owned()),
        };
        Ok(MeteringReport { usage: st.trail.metering.usage(account.as_deref()) })
    },
}

endpoint! {
    /// Make sure the account has the service key of a service
    /// (`alias/atrest/<service>`) in the region, creating it as the service
    /// does when it first needs one.
    ensure_service_key: put "/v1/service-keys/{service}" => "kms:EnsureServiceKey",
    tag: "admin", status: OK, paged: false, idempotent: false,
    path: ServicePath,
    answer: ServiceKey,
    resource: |_, c, p, _, _| Ok(Resource::arn(format!(
        "arn:aws:kms:{}:{}:alias/atrest/{}", c.region, c.account, p.service
    ))),
    run: |st, call, p, _, _| {
        let session = st.kms.service_session(&p.service, &call.caller.region)?;
        let key_arn = session.service_key(&call.caller.account)?;
        let alias = format!("alias/atrest/{}", p.service);
        Ok(ServiceKey { service: p.service, key_arn, alias })
    },
}
