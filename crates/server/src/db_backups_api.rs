//! The REST API of database backups: `POST /v1/instances/{name}/backups`,
//! `GET /v1/backups[?instance=NAME]`, `GET` and `DELETE
//! /v1/backups/{id}`, `POST /v1/backups/{id}/restore`. Authenticated,
//! audited (`db:<Operation>`, with the key) and metered like the rest of
//! `/v1`.

use std::collections::BTreeMap;
use std::sync::Arc;

use atrest_dbservice::{BackupView, InstanceView};
use atrest_kms::KmsError;
use axum::Router;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::{get, post};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::disks_api::{EmptyRequest, answer, known_fields_of};
use crate::error::ErrorBody;
use crate::http_api::{
    AppState, Deleted, RestPath, RestQuery, reply, required_field, rest, string_field,
};

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/instances/{name}/backups", post(create))
        .route("/v1/backups", get(list))
        .route("/v1/backups/{id}", get(describe).delete(delete))
        .route("/v1/backups/{id}/restore", post(restore))
}

/// `POST /v1/backups/{id}/restore`: the body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(
    dead_code,
    reason = "documents the body, which is read member by member"
)]
pub(crate) struct RestoreBackupRequest {
    /// The new instance's name.
    name: String,
    /// Restore to this time (RFC 3339; default the latest archived).
    to_time: Option<String>,
}

/// The caller's backups.
#[derive(Serialize, ToSchema)]
pub(crate) struct BackupList {
    /// The backups.
    backups: Vec<BackupView>,
}

#[utoipa::path(
    post,
    path = "/v1/instances/{name}/backups",
    tag = "databases",
    operation_id = "CreateBackup",
    params(("name" = String, Path, description = "Instance name")),
    request_body = EmptyRequest,
    responses(
        (status = 201, description = "Created", body = BackupView),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Server fault (503: this host cannot run PostgreSQL)", body = ErrorBody),
    )
)]
pub(crate) async fn create(
    State(st): State<Arc<AppState>>,
    RestPath(name): RestPath<String>,
    req: Request,
) -> Response {
    rest(st, req, "db:CreateBackup", move |st, call, body| {
        known_fields_of::<EmptyRequest>(&body)?;
        if let Some(k) = st
            .db
            .describe(call.caller, &name)
            .ok()
            .and_then(|v| v.key_arn)
        {
            call.set_key(k);
        }
        let v = st.db.backup(call.caller, &name)?;
        answer(call, StatusCode::CREATED, Some(&v.key_arn), &v)
    })
    .await
}

#[utoipa::path(
    get,
    path = "/v1/backups",
    tag = "databases",
    operation_id = "ListBackups",
    params(("instance" = Option<String>, Query, description = "Only this instance's backups")),
    responses(
        (status = 200, description = "The caller's backups", body = BackupList),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Server fault (503: this host cannot run PostgreSQL)", body = ErrorBody),
    )
)]
pub(crate) async fn list(
    State(st): State<Arc<AppState>>,
    RestQuery(q): RestQuery<BTreeMap<String, String>>,
    req: Request,
) -> Response {
    rest(st, req, "db:ListBackups", move |st, call, _| {
        if let Some(k) = q.keys().find(|k| k.as_str() != "instance") {
            return Err(KmsError::Validation(format!(
                "unknown query parameter '{k}'; this operation takes: instance"
            ))
            .into());
        }
        let v = st
            .db
            .list_backups(call.caller, q.get("instance").map(String::as_str))?;
        reply(StatusCode::OK, &BackupList { backups: v })
    })
    .await
}

#[utoipa::path(
    get,
    path = "/v1/backups/{id}",
    tag = "databases",
    operation_id = "DescribeBackup",
    params(("id" = String, Path, description = "Backup id")),
    responses(
        (status = 200, description = "The backup", body = BackupView),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Server fault (503: this host cannot run PostgreSQL)", body = ErrorBody),
    )
)]
pub(crate) async fn describe(
    State(st): State<Arc<AppState>>,
    RestPath(id): RestPath<String>,
    req: Request,
) -> Response {
    rest(st, req, "db:DescribeBackup", move |st, call, _| {
        let v = st.db.describe_backup(call.caller, &id)?;
        answer(call, StatusCode::OK, Some(&v.key_arn), &v)
    })
    .await
}

#[utoipa::path(
    delete,
    path = "/v1/backups/{id}",
    tag = "databases",
    operation_id = "DeleteBackup",
    params(("id" = String, Path, description = "Backup id")),
    responses(
        (status = 200, description = "Deleted", body = Deleted),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Server fault (503: this host cannot run PostgreSQL)", body = ErrorBody),
    )
)]
pub(crate) async fn delete(
    State(st): State<Arc<AppState>>,
    RestPath(id): RestPath<String>,
    req: Request,
) -> Response {
    rest(st, req, "db:DeleteBackup", move |st, call, _| {
        let v = st.db.delete_backup(call.caller, &id)?;
        call.set_key(v.key_arn);
        reply(StatusCode::OK, &Deleted { deleted: id })
    })
    .await
}

#[utoipa::path(
    post,
    path = "/v1/backups/{id}/restore",
    tag = "databases",
    operation_id = "RestoreBackup",
    params(("id" = String, Path, description = "Backup id")),
    request_body = RestoreBackupRequest,
    responses(
        (status = 201, description = "The restored instance", body = InstanceView),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Server fault (503: this host cannot run PostgreSQL)", body = ErrorBody),
    )
)]
pub(crate) async fn restore(
    State(st): State<Arc<AppState>>,
    RestPath(id): RestPath<String>,
    req: Request,
) -> Response {
    rest(st, req, "db:RestoreBackup", move |st, call, body| {
        known_fields_of::<RestoreBackupRequest>(&body)?;
        let name = required_field(&body, "name")?;
        let to_time = string_field(&body, "to_time")?;
        if let Ok(b) = st.db.describe_backup(call.caller, &id) {
            call.set_key(b.key_arn);
        }
        let v = st.db.restore(call.caller, &id, &name, to_time.as_deref())?;
        answer(call, StatusCode::CREATED, v.key_arn.as_ref(), &v)
    })
    .await
}
