//! The REST API of the disk service: `/v1/disks`, `/v1/snapshots`,
//! `/v1/jobs`. Every request is authenticated like the rest of `/v1`, acts
//! for the caller's account and region, and leaves an audit record named
//! `disk:<Operation>`, metered to the account.

use std::sync::Arc;

use atrest_diskservice::{DiskView, Job, NewDisk, SnapshotView};
use atrest_kms::{Call, KmsError};
use axum::Router;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::{get, post};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorBody};
use crate::http_api::{AppState, Deleted, RestPath, reply, rest, string_field};
use crate::local::LocalView;

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/disks", get(list_disks).post(create_disk))
        .route("/v1/disks/{id}", get(describe_disk).delete(delete_disk))
        .route("/v1/disks/{id}/resize", post(resize_disk))
        .route("/v1/disks/{id}/rollback", post(rollback_disk))
        .route("/v1/disks/{id}/rekey", post(rekey_disk))
        .route("/v1/disks/{id}/regrant", post(regrant_disk))
        .route("/v1/disks/{id}/convert", post(convert_disk))
        .route("/v1/disks/{id}/attach-local", post(attach_local))
        .route("/v1/disks/{id}/detach-local", post(detach_local))
        .route("/v1/snapshots", get(list_snapshots).post(create_snapshot))
        .route(
            "/v1/snapshots/{id}",
            get(describe_snapshot).delete(delete_snapshot),
        )
        .route("/v1/jobs", get(list_jobs))
        .route("/v1/jobs/{id}", get(describe_job))
        .route("/v1/accounts/{account}/disks", get(account_disks))
}

pub(crate) fn u64_field(v: &Value, name: &str) -> Result<Option<u64>, ApiError> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| {
            KmsError::Validation(format!("'{name}' must be a non-negative integer")).into()
        }),
        Some(_) => Err(KmsError::Serialization(format!("'{name}' must be a number")).into()),
    }
}

/// `block_size` of a new disk (its value is checked by the disk service).
pub(crate) fn block_size_field(v: &Value) -> Result<Option<u32>, ApiError> {
    u64_field(v, "block_size")?
        .map(|b| {
            u32::try_from(b)
                .map_err(|_| KmsError::Validation("'block_size' must be 512 or 4096".into()).into())
        })
        .transpose()
}

pub(crate) fn bool_field(v: &Value, name: &str) -> Result<Option<bool>, ApiError> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(KmsError::Serialization(format!("'{name}' must be a boolean")).into()),
    }
}

/// Refuses members the operation does not know (a misspelt option must not
/// be silently ignored).
pub(crate) fn known_fields(v: &Value, known: &[&str]) -> Result<(), ApiError> {
    let Some(obj) = v.as_object() else {
        return Err(
            KmsError::Serialization("the request body must be a JSON object".into()).into(),
        );
    };
    match obj.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(KmsError::Validation(format!(
            "unknown member '{k}'; this operation takes: {}",
            known.join(", ")
        ))
        .into()),
        None => Ok(()),
    }
}

/// Refuses members the operation's body type `T` does not declare.
pub(crate) fn known_fields_of<T: utoipa::PartialSchema>(v: &Value) -> Result<(), ApiError> {
    let names = crate::openapi::property_names::<T>();
    let known: Vec<&str> = names.iter().map(String::as_str).collect();
    known_fields(v, &known)
}

/// The answer, with the acted-on key named in the audit record.
pub(crate) fn answer<T: Serialize>(
    call: &Call<'_>,
    status: StatusCode,
    key_arn: Option<&String>,
    v: &T,
) -> Result<(StatusCode, Value), ApiError> {
    if let Some(k) = key_arn {
        call.set_key(k.clone());
    }
    let v = serde_json::to_value(v)
        .map_err(|e| KmsError::Internal(format!("encoding a response: {e}")))?;
    Ok((status, v))
}

/// `POST /v1/disks`: the body. Either `size` (and options), or only
/// `snapshot_id` to create the disk from a snapshot.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(
    dead_code,
    reason = "documents the body, which is read member by member"
)]
pub(crate) struct CreateDiskRequest {
    /// Size in bytes (required unless `snapshot_id` is given).
    size: Option<u64>,
    /// Logical block size: 512 or 4096.
    block_size: Option<u32>,
    /// Whether the data is encrypted (default true).
    encrypted: Option<bool>,
    /// The master key (id, ARN or alias; default the account's disk service key).
    key_id: Option<String>,
    /// Create the disk as a copy of this snapshot (nothing else may be given).
    snapshot_id: Option<String>,
    /// Whether several clients may attach it read-write at once.
    shareable: Option<bool>,
}

/// `POST /v1/disks/{id}/resize`: the body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(
    dead_code,
    reason = "documents the body, which is read member by member"
)]
pub(crate) struct ResizeDiskRequest {
    /// The new size in bytes (disks only grow).
    size: u64,
}

/// `POST /v1/disks/{id}/rollback`: the body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(
    dead_code,
    reason = "documents the body, which is read member by member"
)]
pub(crate) struct RollbackDiskRequest {
    /// The snapshot (of this disk) to roll back to.
    snapshot_id: String,
}

/// `POST /v1/disks/{id}/rekey`: the body: exactly one of `key_id` and
/// `reencrypt: true`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(
    dead_code,
    reason = "documents the body, which is read member by member"
)]
pub(crate) struct RekeyDiskRequest {
    /// Move the disk to this master key (re-wraps its data key).
    key_id: Option<String>,
    /// Re-encrypt the disk under a fresh data key (a job).
    reencrypt: Option<bool>,
}

/// `POST /v1/disks/{id}/convert`: the body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(
    dead_code,
    reason = "documents the body, which is read member by member"
)]
pub(crate) struct ConvertDiskRequest {
    /// Whether the new disk is encrypted.
    encrypted: bool,
    /// Its master key (when encrypted; default the disk service key).
    key_id: Option<String>,
}

/// `POST /v1/snapshots`: the body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(
    dead_code,
    reason = "documents the body, which is read member by member"
)]
pub(crate) struct CreateSnapshotRequest {
    /// The disk to snapshot.
    disk_id: String,
}

/// A body that must be empty or `{}`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EmptyRequest {}

/// The caller's disks.
#[derive(Serialize, ToSchema)]
pub(crate) struct DiskList {
    /// The disks.
    disks: Vec<DiskView>,
}

/// The caller's snapshots.
#[derive(Serialize, ToSchema)]
pub(crate) struct SnapshotList {
    /// The snapshots.
    snapshots: Vec<SnapshotView>,
}

/// A job.
#[derive(Serialize, ToSchema)]
pub(crate) struct JobAnswer {
    /// The job.
    job: Job,
}

/// The caller's jobs.
#[derive(Serialize, ToSchema)]
pub(crate) struct JobList {
    /// The jobs.
    jobs: Vec<Job>,
}

#[utoipa::path(
    post,
    path = "/v1/disks",
    tag = "disks",
    operation_id = "CreateDisk",
    request_body = CreateDiskRequest,
    responses(
        (status = 201, description = "Created", body = DiskView),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Server fault", body = ErrorBody),
    )
)]
pub(crate) async fn create_disk(State(st): State<Arc<AppState>>, req: Request) -> Response {
    rest(st, req, "disk:CreateDisk", |st, call, body| {
        known_fields_of::<CreateDiskRequest>(&body)?;
        if let Some(snap) = string_field(&body, "snapshot_id")? {
            if ["size", "block_size", "encrypted", "key_id", "shareable"]
                .iter()
                .any(|f| body.get(*f).is_some_and(|v| !v.is_null()))
            {
                return Err(KmsError::Validation(
                    "a disk created from a snapshot takes its size, block size and key from it; give only 'snapshot_id' (and 'shareable' is not taken either)".into(),
                )
                .into());
            }
            let d = st.disks.clone_snapshot(call.caller, &snap)?;
            return answer(call, StatusCode::CREATED, d.key_arn.as_ref(), &d);
        }
        let size = u64_field(&body, "size")?
            .ok_or_else(|| KmsError::Validation("'size' (bytes) is required".into()))?;
        let block_size = block_size_field(&body)?;
        let d = st.disks.create_disk(
            call.caller,
            &NewDisk {
                size,
                block_size,
                encrypted: bool_field(&body, "encrypted")?,
                key_id: string_field(&body, "key_id")?,
                shareable: bool_field(&body, "shareable")?,
            },
        )?;
        answer(call, StatusCode::CREATED, d.key_arn.as_ref(), &d)
    })
    .await
}

#[utoipa::path(
    get,
    path = "/v1/disks",
    tag = "disks",
    operation_id = "ListDisks",
    responses(
        (status = 200, description = "The caller's disks", body = DiskList),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Server fault", body = ErrorBody),
    )
)]
pub(crate) async fn list_disks(State(st): State<Arc<AppState>>, req: Request) -> Response {
    rest(st, req, "disk:ListDisks", |st, call, _| {
        let disks = st.disks.list_disks(call.caller)?;
        reply(StatusCode::OK, &DiskList { disks })
    })
    .await
}

#[utoipa::path(
    get,
    path = "/v1/accounts/{account}/disks",
    tag = "admin",
    operation_id = "ListAccountDisks",
    params(("account" = String, Path, description = "Account id (12 digits)")),
    responses(
        (status = 200, description = "Every disk of the account in the region, those atrest's services manage included, with what they are for (admins only)", body = DiskList),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Server fault", body = ErrorBody),
    )
)]
pub(crate) async fn account_disks(
    State(st): State<Arc<AppState>>,
    RestPath(account): RestPath<String>,
    req: Request,
) -> Response {
    rest(st, req, "admin:ListAccountDisks", move |st, call, _| {
        atrest_kms::KeyService::require_admin_caller(call.caller)?;
        let id = atrest_kms::names::AccountId::parse(&account).ok_or_else(|| {
            KmsError::Validation(format!("'{account}' is not an account id (12 digits)"))
        })?;
        let owner = atrest_kms::Caller::root(id, &call.caller.region);
        let disks = st.disks.inventory(&owner)?;
        reply(StatusCode::OK, &DiskList { disks })
    })
    .await
}

#[utoipa::path(
    get,
    path = "/v1/disks/{id}",
    tag = "disks",
    operation_id = "DescribeDisk",
    params(("id" = String, Path, description = "Disk id")),
    responses(
        (status = 200, description = "The disk", body = DiskView),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Server fault", body = ErrorBody),
    )
)]
pub(crate) async fn describe_disk(
    State(st): State<Arc<AppState>>,
    RestPath(id): RestPath<String>,
    req: Request,
) -> Response {
    rest(st, req, "disk:DescribeDisk", move |st, call, _| {
        let d = st.disks.describe_disk(call.caller, &id)?;
        answer(call, StatusCode::OK, d.key_arn.as_ref(), &d)
    })
    .await
}

#[utoipa::path(
    delete,
    path = "/v1/disks/{id}",
    tag = "disks",
    operation_id = "DeleteDisk",
    params(("id" = String, Path, description = "Disk id")),
    responses(
        (status = 200, description = "Deleted", body = Deleted),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Server fault", body = ErrorBody),
    )
)]
pub(crate) async fn delete_disk(
    State(st): State<Arc<AppState>>,
    RestPath(id): RestPath<String>,
    req: Request,
) -> Response {
    rest(st, req, "disk:DeleteDisk", move |st, call, _| {
        st.disks.delete_disk(call.caller, &id)?;
        reply(StatusCode::OK, &Deleted { deleted: id })
    })
    .await
}

#[utoipa::path(
    post,
    path = "/v1/disks/{id}/resize",
    tag = "disks",
    operation_id = "ResizeDisk",
    params(("id" = String, Path, description = "Disk id")),
    request_body = ResizeDiskRequest,
    responses(
        (status = 200, description = "Resized", body = DiskView),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Server fault", body = ErrorBody),
    )
)]
pub(crate) async fn resize_disk(
    State(st): State<Arc<AppState>>,
    RestPath(id): RestPath<String>,
    req: Request,
) -> Response {
    rest(st, req, "disk:ResizeDisk", move |st, call, body| {
        known_fields_of::<ResizeDiskRequest>(&body)?;
        let size = u64_field(&body, "size")?
            .ok_or_else(|| KmsError::Validation("'size' (bytes) is required".into()))?;
        let d = st.disks.resize(call.caller, &id, size)?;
        answer(call, StatusCode::OK, d.key_arn.as_ref(), &d)
    })
    .await
}

#[utoipa::path(
    post,
    path = "/v1/disks/{id}/rollback",
    tag = "disks",
    operation_id = "RollbackDisk",
    params(("id" = String, Path, description = "Disk id")),
    request_body = RollbackDiskRequest,
    responses(
        (status = 200, description = "Rolled back", body = DiskView),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Server fault", body = ErrorBody),
    )
)]
pub(crate) async fn rollback_disk(
    State(st): State<Arc<AppState>>,
    RestPath(id): RestPath<String>,
    req: Request,
) -> Response {
    rest(st, req, "disk:RollbackDisk", move |st, call, body| {
        known_fields_of::<RollbackDiskRequest>(&body)?;
        let snap = crate::http_api::required_field(&body, "snapshot_id")?;
        let d = st.disks.rollback(call.caller, &id, &snap)?;
        answer(call, StatusCode::OK, d.key_arn.as_ref(), &d)
    })
    .await
}

/// `POST /v1/disks/{id}/rekey`: `{"key_id": K}` moves the disk to master key
/// K (re-wrap, O(1)); `{"reencrypt": true}` starts re-encrypting it under a
/// fresh data key and answers the job (202).
#[utoipa::path(
    post,
    path = "/v1/disks/{id}/rekey",
    tag = "disks",
    operation_id = "RekeyDisk",
    params(("id" = String, Path, description = "Disk id")),
    request_body = RekeyDiskRequest,
    responses(
        (status = 200, description = "Moved to the new master key", body = DiskView),
        (status = 202, description = "Re-encryption started", body = JobAnswer),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Server fault", body = ErrorBody),
    )
)]
pub(crate) async fn rekey_disk(
    State(st): State<Arc<AppState>>,
    RestPath(id): RestPath<String>,
    req: Request,
) -> Response {
    rest(st, req, "disk:RekeyDisk", move |st, call, body| {
        known_fields_of::<RekeyDiskRequest>(&body)?;
        let key = string_field(&body, "key_id")?;
        let reencrypt = bool_field(&body, "reencrypt")?.unwrap_or(false);
        match (key, reencrypt) {
            (Some(k), false) => {
                let d = st.disks.change_key(call.caller, &id, &k)?;
                answer(call, StatusCode::OK, d.key_arn.as_ref(), &d)
            }
            (None, true) => {
                let job = st.disks.reencrypt(call.caller, &id)?;
                reply(StatusCode::ACCEPTED, &JobAnswer { job })
            }
            _ => Err(KmsError::Validation(
                "give either 'key_id' (a new master key) or 'reencrypt': true (a new data key)"
                    .into(),
            )
            .into()),
        }
    })
    .await
}

#[utoipa::path(
    post,
    path = "/v1/disks/{id}/regrant",
    tag = "disks",
    operation_id = "RegrantDisk",
    params(("id" = String, Path, description = "Disk id")),
    responses(
        (status = 200, description = "Its grant renewed", body = DiskView),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Server fault", body = ErrorBody),
    )
)]
pub(crate) async fn regrant_disk(
    State(st): State<Arc<AppState>>,
    RestPath(id): RestPath<String>,
    req: Request,
) -> Response {
    rest(st, req, "disk:RegrantDisk", move |st, call, _| {
        let d = st.disks.regrant(call.caller, &id)?;
        answer(call, StatusCode::OK, d.key_arn.as_ref(), &d)
    })
    .await
}

#[utoipa::path(
    post,
    path = "/v1/disks/{id}/convert",
    tag = "disks",
    operation_id = "ConvertDisk",
    params(("id" = String, Path, description = "Disk id")),
    request_body = ConvertDiskRequest,
    responses(
        (status = 202, description = "Conversion started", body = JobAnswer),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Server fault", body = ErrorBody),
    )
)]
pub(crate) async fn convert_disk(
    State(st): State<Arc<AppState>>,
    RestPath(id): RestPath<String>,
    req: Request,
) -> Response {
    rest(st, req, "disk:ConvertDisk", move |st, call, body| {
        known_fields_of::<ConvertDiskRequest>(&body)?;
        let encrypted = bool_field(&body, "encrypted")?.ok_or_else(|| {
            KmsError::Validation("'encrypted' (what the new disk is to be) is required".into())
        })?;
        let key = string_field(&body, "key_id")?;
        let job = st
            .disks
            .convert(call.caller, &id, encrypted, key.as_deref())?;
        reply(StatusCode::ACCEPTED, &JobAnswer { job })
    })
    .await
}

#[utoipa::path(
    post,
    path = "/v1/snapshots",
    tag = "disks",
    operation_id = "CreateSnapshot",
    request_body = CreateSnapshotRequest,
    responses(
        (status = 201, description = "Created", body = SnapshotView),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Server fault", body = ErrorBody),
    )
)]
pub(crate) async fn create_snapshot(State(st): State<Arc<AppState>>, req: Request) -> Response {
    rest(st, req, "disk:CreateSnapshot", |st, call, body| {
        known_fields_of::<CreateSnapshotRequest>(&body)?;
        let disk = crate::http_api::required_field(&body, "disk_id")?;
        let s = st.disks.create_snapshot(call.caller, &disk)?;
        answer(call, StatusCode::CREATED, s.key_arn.as_ref(), &s)
    })
    .await
}

#[utoipa::path(
    get,
    path = "/v1/snapshots",
    tag = "disks",
    operation_id = "ListSnapshots",
    responses(
        (status = 200, description = "The caller's snapshots", body = SnapshotList),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Server fault", body = ErrorBody),
    )
)]
pub(crate) async fn list_snapshots(State(st): State<Arc<AppState>>, req: Request) -> Response {
    rest(st, req, "disk:ListSnapshots", |st, call, _| {
        let snapshots = st.disks.list_snapshots(call.caller)?;
        reply(StatusCode::OK, &SnapshotList { snapshots })
    })
    .await
}

#[utoipa::path(
    get,
    path = "/v1/snapshots/{id}",
    tag = "disks",
    operation_id = "DescribeSnapshot",
    params(("id" = String, Path, description = "Snapshot id")),
    responses(
        (status = 200, description = "The snapshot", body = SnapshotView),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Server fault", body = ErrorBody),
    )
)]
pub(crate) async fn describe_snapshot(
    State(st): State<Arc<AppState>>,
    RestPath(id): RestPath<String>,
    req: Request,
) -> Response {
    rest(st, req, "disk:DescribeSnapshot", move |st, call, _| {
        let s = st.disks.describe_snapshot(call.caller, &id)?;
        answer(call, StatusCode::OK, s.key_arn.as_ref(), &s)
    })
    .await
}

#[utoipa::path(
    delete,
    path = "/v1/snapshots/{id}",
    tag = "disks",
    operation_id = "DeleteSnapshot",
    params(("id" = String, Path, description = "Snapshot id")),
    responses(
        (status = 200, description = "Deleted", body = Deleted),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Server fault", body = ErrorBody),
    )
)]
pub(crate) async fn delete_snapshot(
    State(st): State<Arc<AppState>>,
    RestPath(id): RestPath<String>,
    req: Request,
) -> Response {
    rest(st, req, "disk:DeleteSnapshot", move |st, call, _| {
        st.disks.delete_snapshot(call.caller, &id)?;
        reply(StatusCode::OK, &Deleted { deleted: id })
    })
    .await
}

#[utoipa::path(
    get,
    path = "/v1/jobs",
    tag = "disks",
    operation_id = "ListJobs",
    responses(
        (status = 200, description = "The caller's jobs", body = JobList),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Server fault", body = ErrorBody),
    )
)]
pub(crate) async fn list_jobs(State(st): State<Arc<AppState>>, req: Request) -> Response {
    rest(st, req, "disk:ListJobs", |st, call, _| {
        let jobs = st.disks.list_jobs(call.caller);
        reply(StatusCode::OK, &JobList { jobs })
    })
    .await
}

#[utoipa::path(
    get,
    path = "/v1/jobs/{id}",
    tag = "disks",
    operation_id = "DescribeJob",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job", body = JobAnswer),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Server fault", body = ErrorBody),
    )
)]
pub(crate) async fn describe_job(
    State(st): State<Arc<AppState>>,
    RestPath(id): RestPath<String>,
    req: Request,
) -> Response {
    rest(st, req, "disk:DescribeJob", move |st, call, _| {
        let job = st.disks.job(call.caller, &id)?;
        reply(StatusCode::OK, &JobAnswer { job })
    })
    .await
}

/// `POST /v1/disks/{id}/attach-local`: the disk as a block device of the
/// server's host (answers the device path).
#[utoipa::path(
    post,
    path = "/v1/disks/{id}/attach-local",
    tag = "disks",
    operation_id = "AttachLocal",
    params(("id" = String, Path, description = "Disk id")),
    request_body = EmptyRequest,
    responses(
        (status = 200, description = "Attached", body = LocalView),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Server fault", body = ErrorBody),
    )
)]
pub(crate) async fn attach_local(
    State(st): State<Arc<AppState>>,
    RestPath(id): RestPath<String>,
    req: Request,
) -> Response {
    rest(st, req, "disk:AttachLocal", move |st, call, body| {
        known_fields_of::<EmptyRequest>(&body)?;
        let v = st.local.attach(call.caller, &id)?;
        answer(call, StatusCode::OK, None, &v)
    })
    .await
}

/// `POST /v1/disks/{id}/detach-local`: flushes the disk and removes its
/// block device (409 while it is mounted).
#[utoipa::path(
    post,
    path = "/v1/disks/{id}/detach-local",
    tag = "disks",
    operation_id = "DetachLocal",
    params(("id" = String, Path, description = "Disk id")),
    request_body = EmptyRequest,
    responses(
        (status = 200, description = "Detached", body = LocalView),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Server fault", body = ErrorBody),
    )
)]
pub(crate) async fn detach_local(
    State(st): State<Arc<AppState>>,
    RestPath(id): RestPath<String>,
    req: Request,
) -> Response {
    rest(st, req, "disk:DetachLocal", move |st, call, body| {
        known_fields_of::<EmptyRequest>(&body)?;
        let v = st.local.detach(call.caller, &id)?;
        answer(call, StatusCode::OK, None, &v)
    })
    .await
}
