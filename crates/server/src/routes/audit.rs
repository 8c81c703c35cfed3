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
    /// Only this node's records older than this one (seq): the
    /// `next_before` of the previous page, to page back through this node's
    /// chain alone (with one node, the whole trail).
    #[param(value_type = Option<i64>, minimum = 0)]
    before: Option<String>,
    /// Where the previous page stopped on every node: its `next_cursor`,
    /// to page back through the trail of all nodes.
    cursor: Option<String>,
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
    /// The records, oldest first: the latest that match (before `before`
    /// or `cursor`), of every node that answered, merged by time; each
    /// names its node (`node`).
    records: Vec<atrest_audit::Record>,
    /// When older records match too and the page is of this node's chain
    /// alone (one node, or `before` given): the `before` that asks for the
    /// next older page (the seq of the oldest record here). Absent when
    /// there is nothing older.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_before: Option<u64>,
    /// When older records match too: the `cursor` that asks for the next
    /// older page across every node. Absent when there is nothing older.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
    /// The nodes whose records are not here: down, or not answering.
    missing_nodes: Vec<MissingNode>,
}

/// A node whose records or chain could not be read.
#[derive(Serialize, ToSchema, Clone)]
pub(crate) struct MissingNode {
    /// Its id.
    node: String,
    /// Its name.
    name: String,
    /// Why.
    reason: String,
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

/// The result of verifying the audit chains of every node.
#[derive(Serialize, ToSchema, Clone)]
pub(crate) struct AuditVerification {
    /// Whether every node's chain verified (every state `ok`).
    verified: bool,
    /// Of this node's chain: records that verified, before the first bad
    /// one.
    good_records: u64,
    /// Of this node's chain: the first bad record, if any.
    first_bad: Option<BadRecord>,
    /// Every registered node's chain.
    nodes: Vec<NodeVerification>,
}

/// One node's chain, verified.
#[derive(Serialize, ToSchema, Clone)]
pub(crate) struct NodeVerification {
    /// The node's id.
    node: String,
    /// Its name.
    name: String,
    /// Whether its chain verified (state `ok`).
    verified: bool,
    /// Records that verified, before the first bad one (0 when
    /// unreachable).
    good_records: u64,
    /// The first bad record, if any.
    first_bad: Option<BadRecord>,
    /// `ok`, `damaged`, `truncated` (it ends before the head its node
    /// published in the shared store) or `unreachable` (not checked).
    state: crate::audit_nodes::ChainState,
    /// The head its node last published (seq), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    published_seq: Option<u64>,
    /// Why the state is not `ok`.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
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
        if before.is_some() && q.cursor.is_some() {
            return Err(ApiError::Invalid(
                "give 'before' (this node's chain) or 'cursor' (every node's), not both".into(),
            ));
        }
        let cursor = q
            .cursor
            .as_deref()
            .map(crate::audit_nodes::parse_cursor)
            .transpose()
            .map_err(ApiError::Invalid)?;
        if limit == 0 {
            return Ok(AuditRecords {
                records: Vec::new(),
                next_before: None,
                next_cursor: None,
                missing_nodes: Vec::new(),
            });
        }
        // One more than asked: whether it is there says whether there is
        // an older page.
        let ask = crate::internal::RecordsQuery {
            account,
            key: q.key,
            principal: q.principal,
            operation: q.operation,
            since: q.since,
            until: q.until,
            before,
            limit: Some(limit + 1),
        };
        let me = st.cluster.me().id.clone();
        let local = |before: Option<u64>| {
            let filter = atrest_audit::Filter { before, ..ask.filter() };
            let turn = QUERY_TURNS.take();
            let records = atrest_audit::query_newest(&st.audit_dir, &filter)
                .map_err(|e| ApiError::Internal(e.to_string()));
            drop(turn);
            records
        };
        let nodes = cluster_nodes(st);
        if before.is_some() || nodes.len() == 1 {
            // This node's chain alone, paged by seq as ever.
            let before = before.or_else(|| cursor.as_ref().and_then(|c| c.get(&me).copied()));
            let mut records = local(before)?;
            let next_before = if records.len() > limit {
                records.truncate(limit);
                records.last().map(|r| r.seq)
            } else {
                None
            };
            // Records as written: those of earlier releases name no node.
            records.reverse();
            let next_cursor = next_before.map(|b| {
                crate::audit_nodes::format_cursor(&[(me.clone(), b)].into())
            });
            return Ok(AuditRecords { records, next_before, next_cursor, missing_nodes: Vec::new() });
        }
        let start = cursor.unwrap_or_default();
        let mut lists = Vec::new();
        let mut missing = Vec::new();
        let mut calls = Vec::new();
        for n in nodes {
            let below = start.get(&n.id).copied();
            if below == Some(0) {
                continue;
            }
            if n.id == me {
                lists.push((me.clone(), local(below)?));
            } else if !st.cluster.is_up(&n) {
                missing.push(MissingNode {
                    node: n.id.clone(),
                    name: n.name.clone(),
                    reason: "down: no heartbeat for more than 10 s".into(),
                });
            } else {
                let query = serde_urlencoded::to_string(crate::internal::RecordsQuery {
                    before: below,
                    ..ask.clone()
                })
                .map_err(|e| ApiError::Internal(e.to_string()))?;
                calls.push((n, http::Method::GET, format!("/internal/v1/audit/records?{query}"), bytes::Bytes::new()));
            }
        }
        for (n, answer) in call_peers(st, calls, crate::internal::CALL_TIMEOUT) {
            match answer.and_then(|b| {
                serde_json::from_slice::<crate::internal::RecordsAnswer>(&b).map_err(|e| e.to_string())
            }) {
                Ok(a) => lists.push((n.id.clone(), a.records)),
                Err(reason) => missing.push(MissingNode { node: n.id.clone(), name: n.name.clone(), reason }),
            }
        }
        let page = crate::audit_nodes::merge(lists, &start, limit);
        let mut records = page.records;
        records.reverse();
        Ok(AuditRecords {
            records,
            next_before: None,
            next_cursor: page.next.as_ref().map(crate::audit_nodes::format_cursor),
            missing_nodes: missing,
        })
    },
}

/// Every registered node, this one included (it may not have written its
/// record yet).
fn cluster_nodes(st: &AppState) -> Vec<crate::cluster::NodeRecord> {
    let me = st.cluster.me();
    let mut nodes = st.cluster.nodes().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "reading the node registry failed; this node alone");
        Vec::new()
    });
    if !nodes.iter().any(|n| n.id == me.id) {
        nodes.push(crate::cluster::NodeRecord {
            id: me.id.clone(),
            name: me.name.clone(),
            api_url: String::new(),
            nbd_addr: None,
            started_ms: 0,
            heartbeat_ms: 0,
            leases: Vec::new(),
            disks: Vec::new(),
            instances: Vec::new(),
            extra: std::collections::BTreeMap::new(),
        });
    }
    nodes
}

/// Makes the internal calls, all at once, each within `timeout`; answers
/// each node's body or why there is none. Runs on a blocking thread (as
/// every endpoint's `run` does).
fn call_peers(
    st: &AppState,
    calls: Vec<(
        crate::cluster::NodeRecord,
        http::Method,
        String,
        bytes::Bytes,
    )>,
    timeout: std::time::Duration,
) -> Vec<(crate::cluster::NodeRecord, Result<bytes::Bytes, String>)> {
    if calls.is_empty() {
        return Vec::new();
    }
    let handle = tokio::runtime::Handle::current();
    let tasks: Vec<_> = calls
        .into_iter()
        .map(|(n, method, pq, body)| {
            let peers = std::sync::Arc::clone(&st.peers);
            let url = n.api_url.clone();
            let task =
                handle.spawn(async move { peers.call(&url, method, &pq, body, timeout).await });
            (n, task)
        })
        .collect();
    tasks
        .into_iter()
        .map(|(n, task)| {
            let answer = handle.block_on(task).unwrap_or_else(|e| Err(e.to_string()));
            (n, answer)
        })
        .collect()
}

/// How long another node may take to verify its chain (it reads the whole
/// of it).
const VERIFY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// Starts publishing this node's chain head and metering in its registry
/// record, and makes its client to the other nodes.
///
/// If the head this node published before (in its record from its last
/// run) is not in its chain any more (the chain was cut back, and its
/// head file replaced by an older one, which the files alone cannot
/// show), it says so in the log and publishes that head as lost
/// ([`crate::audit_nodes::LOST`]) from now on, so that verification
/// reports its chain as truncated.
pub(crate) fn join_cluster(
    kms: &KeyService,
    trail: &crate::trail::SharedTrail,
    cluster: &crate::cluster::Cluster,
    audit_dir: &std::path::Path,
    ca_file: Option<&std::path::Path>,
) -> Result<std::sync::Arc<crate::internal::Peers>, String> {
    let me = cluster.me().id.clone();
    let before = cluster.nodes().ok().and_then(|nodes| {
        nodes.into_iter().find(|n| n.id == me).and_then(|n| {
            crate::audit_nodes::lost_head(&n.extra)
                .map(|h| (h, true))
                .or_else(|| crate::audit_nodes::published_head(&n.extra).map(|h| (h, false)))
        })
    });
    if let Some((head, was_lost)) = before {
        let lost = was_lost
            || atrest_audit::mac_at(audit_dir, head.seq)
                .map(|mac| mac.as_deref() != Some(head.mac.as_str()))
                .unwrap_or(false);
        if lost {
            tracing::error!(
                seq = head.seq,
                "the audit chain does not hold the head this node published before: it was cut \
                 back; verification reports it as truncated"
            );
            let value = serde_json::to_value(&head).unwrap_or_default();
            cluster.publish(crate::audit_nodes::LOST, Box::new(move || value.clone()));
        }
    }
    let t = std::sync::Arc::clone(trail);
    cluster.publish(
        crate::audit_nodes::HEAD,
        Box::new(move || serde_json::to_value(t.head()).unwrap_or_default()),
    );
    let t = std::sync::Arc::clone(trail);
    cluster.publish(
        crate::audit_nodes::METERING,
        Box::new(move || serde_json::to_value(t.metering.usage(None)).unwrap_or_default()),
    );
    let key = kms.cluster_key().map_err(|e| e.to_string())?;
    Ok(std::sync::Arc::new(crate::internal::Peers::new(
        &key,
        cluster.me().id.clone(),
        ca_file,
    )?))
}

endpoint! {
    /// Verify the audit trail's chain (admins).
    verify_audit: post "/v1/audit/verify" => "audit:VerifyAudit",
    tag: "audit", status: OK, paged: false, idempotent: false,
    answer: AuditVerification,
    resource: |_, _, _, _, _| Ok(Resource::any()),
    run: |st, call, _, _, _| {
        KeyService::require_admin_caller(call.caller)?;
        use crate::audit_nodes::{ChainState, classify, lost_head, published_head};
        let me = st.cluster.me().id.clone();
        let nodes = cluster_nodes(st);
        let bad = |fb: Option<(u64, String)>| fb.map(|(record, reason)| BadRecord { record, reason });
        let mut out = Vec::new();
        let mut calls = Vec::new();
        let mut here = None;
        for n in nodes {
            let published = published_head(&n.extra);
            if n.id == me {
                // The live head is at least the published one.
                let live = st.trail.head();
                let head = match published {
                    Some(p) if p.seq > live.seq => p,
                    _ => live,
                };
                let v = crate::internal::verify_here(st, Some(head.seq)).map_err(ApiError::Internal)?;
                let (state, reason) = classify(&v, Some(&head), lost_head(&n.extra).as_ref());
                here = Some((v.good, v.first_bad.clone()));
                out.push(NodeVerification {
                    node: n.id.clone(), name: n.name.clone(), verified: state == ChainState::Ok,
                    good_records: v.good, first_bad: bad(v.first_bad), state,
                    published_seq: Some(head.seq), reason,
                });
            } else {
                let body = serde_json::to_vec(&crate::internal::VerifyRequest {
                    check_seq: published.as_ref().map(|h| h.seq),
                })
                .map_err(|e| ApiError::Internal(e.to_string()))?;
                calls.push((n, http::Method::POST, "/internal/v1/audit/verify".to_owned(), bytes::Bytes::from(body)));
            }
        }
        for (n, answer) in call_peers(st, calls, VERIFY_TIMEOUT) {
            let published = published_head(&n.extra);
            let v = answer.and_then(|b| {
                serde_json::from_slice::<crate::internal::VerifyAnswer>(&b).map_err(|e| e.to_string())
            });
            out.push(match v {
                Ok(v) => {
                    let (state, reason) = classify(&v, published.as_ref(), lost_head(&n.extra).as_ref());
                    NodeVerification {
                        node: n.id.clone(), name: n.name.clone(), verified: state == ChainState::Ok,
                        good_records: v.good, first_bad: bad(v.first_bad), state,
                        published_seq: published.map(|h| h.seq), reason,
                    }
                }
                Err(reason) => NodeVerification {
                    node: n.id.clone(), name: n.name.clone(), verified: false,
                    good_records: 0, first_bad: None, state: ChainState::Unreachable,
                    published_seq: published.map(|h| h.seq),
                    reason: Some(format!("its chain could not be checked: {reason}")),
                },
            });
        }
        let (good_records, first_bad) = here.unwrap_or((0, None));
        Ok(AuditVerification {
            verified: out.iter().all(|n| n.state == ChainState::Ok),
            good_records,
            first_bad: bad(first_bad),
            nodes: out,
        })
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
        // This node's live counts, and the others' last published ones.
        let me = st.cluster.me().id.clone();
        let others = st
            .cluster
            .nodes()
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .into_iter()
            .filter(|n| n.id != me)
            .flat_map(|n| crate::audit_nodes::published_usage(&n.extra));
        let all = st.trail.metering.usage(account.as_deref()).into_iter().chain(others);
        Ok(MeteringReport { usage: crate::audit_nodes::sum_usage(all, account.as_deref()) })
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
