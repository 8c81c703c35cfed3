//! The REST API of the disk service: `/v1/disks`, `/v1/snapshots`,
//! `/v1/jobs`. Every request is authenticated like the rest of `/v1`, acts
//! for the caller's account and region, and leaves an audit record named
//! `disk:<Operation>`, metered to the account.

use std::sync::Arc;

use atrest_diskservice::NewDisk;
use atrest_kms::{Call, KmsError};
use axum::Router;
use axum::extract::{Path, Request, State};
use axum::response::Response;
use axum::routing::{get, post};
use http::StatusCode;
use serde::Serialize;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::http_api::{AppState, rest, string_field};

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

async fn create_disk(State(st): State<Arc<AppState>>, req: Request) -> Response {
    rest(st, req, "disk:CreateDisk", |st, call, body| {
        known_fields(
            &body,
            &[
                "size",
                "block_size",
                "encrypted",
                "key_id",
                "snapshot_id",
                "shareable",
            ],
        )?;
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
        let block_size = u64_field(&body, "block_size")?
            .map(|b| {
                u32::try_from(b).map_err(|_| {
                    KmsError::Validation("'block_size' must be 512 or 4096".into())
                })
            })
            .transpose()?;
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

async fn list_disks(State(st): State<Arc<AppState>>, req: Request) -> Response {
    rest(st, req, "disk:ListDisks", |st, call, _| {
        let disks = st.disks.list_disks(call.caller)?;
        Ok((StatusCode::OK, json!({"disks": disks})))
    })
    .await
}

async fn describe_disk(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    rest(st, req, "disk:DescribeDisk", move |st, call, _| {
        let d = st.disks.describe_disk(call.caller, &id)?;
        answer(call, StatusCode::OK, d.key_arn.as_ref(), &d)
    })
    .await
}

async fn delete_disk(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    rest(st, req, "disk:DeleteDisk", move |st, call, _| {
        st.disks.delete_disk(call.caller, &id)?;
        Ok((StatusCode::OK, json!({"deleted": id})))
    })
    .await
}

async fn resize_disk(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    rest(st, req, "disk:ResizeDisk", move |st, call, body| {
        known_fields(&body, &["size"])?;
        let size = u64_field(&body, "size")?
            .ok_or_else(|| KmsError::Validation("'size' (bytes) is required".into()))?;
        let d = st.disks.resize(call.caller, &id, size)?;
        answer(call, StatusCode::OK, d.key_arn.as_ref(), &d)
    })
    .await
}

async fn rollback_disk(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    rest(st, req, "disk:RollbackDisk", move |st, call, body| {
        known_fields(&body, &["snapshot_id"])?;
        let snap = crate::http_api::required_field(&body, "snapshot_id")?;
        let d = st.disks.rollback(call.caller, &id, &snap)?;
        answer(call, StatusCode::OK, d.key_arn.as_ref(), &d)
    })
    .await
}

/// `POST /v1/disks/{id}/rekey`: `{"key_id": K}` moves the disk to master key
/// K (re-wrap, O(1)); `{"reencrypt": true}` starts re-encrypting it under a
/// fresh data key and answers the job (202).
async fn rekey_disk(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    rest(st, req, "disk:RekeyDisk", move |st, call, body| {
        known_fields(&body, &["key_id", "reencrypt"])?;
        let key = string_field(&body, "key_id")?;
        let reencrypt = bool_field(&body, "reencrypt")?.unwrap_or(false);
        match (key, reencrypt) {
            (Some(k), false) => {
                let d = st.disks.change_key(call.caller, &id, &k)?;
                answer(call, StatusCode::OK, d.key_arn.as_ref(), &d)
            }
            (None, true) => {
                let job = st.disks.reencrypt(call.caller, &id)?;
                Ok((StatusCode::ACCEPTED, json!({"job": job})))
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

async fn regrant_disk(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    rest(st, req, "disk:RegrantDisk", move |st, call, _| {
        let d = st.disks.regrant(call.caller, &id)?;
        answer(call, StatusCode::OK, d.key_arn.as_ref(), &d)
    })
    .await
}

async fn convert_disk(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    rest(st, req, "disk:ConvertDisk", move |st, call, body| {
        known_fields(&body, &["encrypted", "key_id"])?;
        let encrypted = bool_field(&body, "encrypted")?.ok_or_else(|| {
            KmsError::Validation("'encrypted' (what the new disk is to be) is required".into())
        })?;
        let key = string_field(&body, "key_id")?;
        let job = st
            .disks
            .convert(call.caller, &id, encrypted, key.as_deref())?;
        Ok((StatusCode::ACCEPTED, json!({"job": job})))
    })
    .await
}

async fn create_snapshot(State(st): State<Arc<AppState>>, req: Request) -> Response {
    rest(st, req, "disk:CreateSnapshot", |st, call, body| {
        known_fields(&body, &["disk_id"])?;
        let disk = crate::http_api::required_field(&body, "disk_id")?;
        let s = st.disks.create_snapshot(call.caller, &disk)?;
        answer(call, StatusCode::CREATED, s.key_arn.as_ref(), &s)
    })
    .await
}

async fn list_snapshots(State(st): State<Arc<AppState>>, req: Request) -> Response {
    rest(st, req, "disk:ListSnapshots", |st, call, _| {
        let snaps = st.disks.list_snapshots(call.caller)?;
        Ok((StatusCode::OK, json!({"snapshots": snaps})))
    })
    .await
}

async fn describe_snapshot(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    rest(st, req, "disk:DescribeSnapshot", move |st, call, _| {
        let s = st.disks.describe_snapshot(call.caller, &id)?;
        answer(call, StatusCode::OK, s.key_arn.as_ref(), &s)
    })
    .await
}

async fn delete_snapshot(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    rest(st, req, "disk:DeleteSnapshot", move |st, call, _| {
        st.disks.delete_snapshot(call.caller, &id)?;
        Ok((StatusCode::OK, json!({"deleted": id})))
    })
    .await
}

async fn list_jobs(State(st): State<Arc<AppState>>, req: Request) -> Response {
    rest(st, req, "disk:ListJobs", |st, call, _| {
        Ok((
            StatusCode::OK,
            json!({"jobs": st.disks.list_jobs(call.caller)}),
        ))
    })
    .await
}

async fn describe_job(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    rest(st, req, "disk:DescribeJob", move |st, call, _| {
        let job = st.disks.job(call.caller, &id)?;
        Ok((StatusCode::OK, json!({"job": job})))
    })
    .await
}

/// `POST /v1/disks/{id}/attach-local`: the disk as a block device of the
/// server's host (answers the device path).
async fn attach_local(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    rest(st, req, "disk:AttachLocal", move |st, call, body| {
        known_fields(&body, &[])?;
        let v = st.local.attach(call.caller, &id)?;
        answer(call, StatusCode::OK, None, &v)
    })
    .await
}

/// `POST /v1/disks/{id}/detach-local`: flushes the disk and removes its
/// block device (409 while it is mounted).
async fn detach_local(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    rest(st, req, "disk:DetachLocal", move |st, call, body| {
        known_fields(&body, &[])?;
        let v = st.local.detach(call.caller, &id)?;
        answer(call, StatusCode::OK, None, &v)
    })
    .await
}
