//! The REST API of database backups: `POST /v1/instances/{name}/backups`,
//! `GET /v1/backups[?instance=NAME]`, `GET` and `DELETE
//! /v1/backups/{id}`, `POST /v1/backups/{id}/restore`. Authenticated,
//! audited (`db:<Operation>`, with the key) and metered like the rest of
//! `/v1`.

use std::collections::BTreeMap;
use std::sync::Arc;

use atrest_kms::KmsError;
use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::response::Response;
use axum::routing::{get, post};
use http::StatusCode;
use serde_json::json;

use crate::disks_api::{answer, known_fields};
use crate::http_api::{AppState, required_field, rest, string_field};

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/instances/{name}/backups", post(create))
        .route("/v1/backups", get(list))
        .route("/v1/backups/{id}", get(describe).delete(delete))
        .route("/v1/backups/{id}/restore", post(restore))
}

async fn create(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
    req: Request,
) -> Response {
    rest(st, req, "db:CreateBackup", move |st, call, body| {
        known_fields(&body, &[])?;
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

async fn list(
    State(st): State<Arc<AppState>>,
    Query(q): Query<BTreeMap<String, String>>,
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
        Ok((StatusCode::OK, json!({"backups": v})))
    })
    .await
}

async fn describe(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    rest(st, req, "db:DescribeBackup", move |st, call, _| {
        let v = st.db.describe_backup(call.caller, &id)?;
        answer(call, StatusCode::OK, Some(&v.key_arn), &v)
    })
    .await
}

async fn delete(State(st): State<Arc<AppState>>, Path(id): Path<String>, req: Request) -> Response {
    rest(st, req, "db:DeleteBackup", move |st, call, _| {
        let v = st.db.delete_backup(call.caller, &id)?;
        call.set_key(v.key_arn);
        Ok((StatusCode::OK, json!({"deleted": id})))
    })
    .await
}

async fn restore(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    rest(st, req, "db:RestoreBackup", move |st, call, body| {
        known_fields(&body, &["name", "to_time"])?;
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
