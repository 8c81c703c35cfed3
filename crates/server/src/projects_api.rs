//! The REST API of the control plane: `/v1/projects`. Authenticated like
//! the rest of `/v1`; every request acts for the caller's account (and, for
//! new resources, the region the request was signed for) and leaves an
//! audit record named `project:<Operation>`, metered to the account.

use std::sync::Arc;

use atrest_control::{NewProject, Project, Revocation};
use atrest_dbservice::{Class, NewInstance};
use atrest_diskservice::NewDisk;
use atrest_kms::KmsError;
use axum::Router;
use axum::extract::{Path, Request, State};
use axum::response::Response;
use axum::routing::{get, post, put};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::disks_api::{answer, block_size_field, bool_field, known_fields_of, u64_field};
use crate::error::{ApiError, ErrorBody};
use crate::http_api::{AppState, reply, required_field, rest, string_field};

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/projects", get(list).post(create))
        .route("/v1/projects/{id}", get(describe).delete(delete))
        .route("/v1/projects/{id}/key-policy/{region}", get(key_policy))
        .route("/v1/projects/{id}/keys/{region}", put(set_key))
        .route("/v1/projects/{id}/disks", post(create_disk))
        .route("/v1/projects/{id}/instances", post(create_instance))
        .route("/v1/projects/{id}/pause", post(pause))
        .route("/v1/projects/{id}/resume", post(resume))
}

/// `POST /v1/projects`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(
    dead_code,
    reason = "documents the body, which is read member by member"
)]
pub(crate) struct CreateProjectRequest {
    /// Name: 1 to 64 of a-z, 0-9 and '-', starting with a letter; unique in
    /// the account.
    #[schema(pattern = "^[a-z][a-z0-9-]{0,63}$")]
    name: String,
    /// Customer-managed keys (fixed for the project's life; default false).
    cmek: Option<bool>,
    /// What the project does when a key becomes unusable (default keep).
    revocation: Option<Revocation>,
    /// Idempotency: a retry with the same token answers the first project.
    #[schema(min_length = 1, max_length = 64)]
    client_token: Option<String>,
}

/// `PUT /v1/projects/{id}/keys/{region}`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(
    dead_code,
    reason = "documents the body, which is read member by member"
)]
pub(crate) struct SetKeyRequest {
    /// The customer's key in that region (id, ARN or alias).
    key_id: String,
}

/// `POST /v1/projects/{id}/disks`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(
    dead_code,
    reason = "documents the body, which is read member by member"
)]
pub(crate) struct CreateProjectDiskRequest {
    /// Size in bytes (a multiple of 4096).
    size: u64,
    /// Logical block size, 512 (default) or 4096.
    block_size: Option<u32>,
    /// Whether several clients may attach it at once.
    shareable: Option<bool>,
}

/// `POST /v1/projects/{id}/instances`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(
    dead_code,
    reason = "documents the body, which is read member by member"
)]
pub(crate) struct CreateProjectInstanceRequest {
    /// Name: 1 to 63 of a-z, 0-9 and '-', starting with a letter.
    #[schema(pattern = "^[a-z][a-z0-9-]{0,62}$")]
    name: String,
    /// Class (default `tde`).
    class: Option<Class>,
    /// Disk size in bytes.
    size: Option<u64>,
    /// Port (default: a free one).
    port: Option<u16>,
    /// Superuser name (default `postgres`).
    master_username: Option<String>,
    /// Superuser password (default: generated and answered once).
    master_password: Option<String>,
}

/// A page of projects.
#[derive(Serialize, ToSchema)]
pub(crate) struct ProjectList {
    /// The projects, in id order.
    projects: Vec<Project>,
    /// Give as `next_token` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_token: Option<String>,
}

fn project(status: StatusCode, p: &Project) -> Result<(StatusCode, Value), ApiError> {
    reply(status, p)
}

fn revocation_field(body: &Value) -> Result<Revocation, ApiError> {
    match body.get("revocation") {
        None | Some(Value::Null) => Ok(Revocation::Keep),
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| {
            KmsError::Validation(format!(
                "'revocation' must be {{\"policy\": \"keep\"}} or {{\"policy\": \"stop\", \"after_seconds\": N}}: {e}"
            ))
            .into()
        }),
    }
}

#[utoipa::path(
    post,
    path = "/v1/projects",
    tag = "projects",
    operation_id = "CreateProject",
    request_body = CreateProjectRequest,
    responses(
        (status = 201, description = "Created", body = Project),
        (status = 200, description = "Already created with this client token", body = Project),
        (status = "4XX", description = "Refused (`ValidationException`, `ConflictException`, ...)", body = ErrorBody),
        (status = "5XX", description = "Server fault", body = ErrorBody),
    )
)]
pub(crate) async fn create(State(st): State<Arc<AppState>>, req: Request) -> Response {
    rest(st, req, "project:CreateProject", |st, call, body| {
        known_fields_of::<CreateProjectRequest>(&body)?;
        let (p, created) = st.projects.create(
            call.caller,
            &NewProject {
                name: required_field(&body, "name")?,
                cmek: bool_field(&body, "cmek")?.unwrap_or(false),
                revocation: revocation_field(&body)?,
                client_token: string_field(&body, "client_token")?,
            },
        )?;
        project(
            if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            },
            &p,
        )
    })
    .await
}

/// `?limit=` (1 to 1000, default 1000) and `?next_token=` (read by
/// `rest::paging::page`, as for every list).
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code, reason = "documents the query, which is read by hand")]
pub(crate) struct PageQuery {
    /// At most this many (1 to 1000; default 1000).
    limit: Option<u32>,
    /// Where the previous page ended.
    next_token: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/projects",
    tag = "projects",
    operation_id = "ListProjects",
    params(PageQuery),
    responses(
        (status = 200, description = "The caller's projects", body = ProjectList),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Server fault", body = ErrorBody),
    )
)]
pub(crate) async fn list(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let query = crate::rest::paging::page(req.uri());
    rest(st, req, "project:ListProjects", move |st, call, _| {
        let (limit, after) = query?;
        let (projects, next_token) = st.projects.list(call.caller, limit, after.as_deref())?;
        reply(
            StatusCode::OK,
            &ProjectList {
                projects,
                next_token,
            },
        )
    })
    .await
}

#[utoipa::path(
    get,
    path = "/v1/projects/{id}",
    tag = "projects",
    operation_id = "DescribeProject",
    params(("id" = String, Path, description = "Project id (`prj-...`)")),
    responses(
        (status = 200, description = "The project", body = Project),
        (status = "4XX", description = "Refused (`NotFoundException`, ...)", body = ErrorBody),
        (status = "5XX", description = "Server fault", body = ErrorBody),
    )
)]
pub(crate) async fn describe(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    rest(st, req, "project:DescribeProject", move |st, call, _| {
        project(StatusCode::OK, &st.projects.describe(call.caller, &id)?)
    })
    .await
}

#[utoipa::path(
    delete,
    path = "/v1/projects/{id}",
    tag = "projects",
    operation_id = "DeleteProject",
    params(("id" = String, Path, description = "Project id")),
    responses(
        (status = 200, description = "Deleted", body = Object),
        (status = "4XX", description = "Refused (`NotFoundException`, `ConflictException` while it has resources)", body = ErrorBody),
        (status = "5XX", description = "Server fault", body = ErrorBody),
    )
)]
pub(crate) async fn delete(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    rest(st, req, "project:DeleteProject", move |st, call, _| {
        st.projects.delete(call.caller, &id)?;
        reply(StatusCode::OK, &serde_json::json!({"deleted": id}))
    })
    .await
}

#[utoipa::path(
    get,
    path = "/v1/projects/{id}/key-policy/{region}",
    tag = "projects",
    operation_id = "GetProjectKeyPolicy",
    params(
        ("id" = String, Path, description = "Project id"),
        ("region" = String, Path, description = "The region the key is for"),
    ),
    responses(
        (status = 200, description = "The key policy to attach to the customer's key", body = Object),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Server fault", body = ErrorBody),
    )
)]
pub(crate) async fn key_policy(
    State(st): State<Arc<AppState>>,
    Path((id, region)): Path<(String, String)>,
    req: Request,
) -> Response {
    rest(st, req, "project:GetKeyPolicy", move |st, call, _| {
        reply(
            StatusCode::OK,
            &st.projects.key_policy(call.caller, &id, &region)?,
        )
    })
    .await
}

#[utoipa::path(
    put,
    path = "/v1/projects/{id}/keys/{region}",
    tag = "projects",
    operation_id = "SetProjectKey",
    request_body = SetKeyRequest,
    params(
        ("id" = String, Path, description = "Project id"),
        ("region" = String, Path, description = "The region"),
    ),
    responses(
        (status = 200, description = "Tested and saved", body = Project),
        (status = "4XX", description = "Refused (`KeyAccessDeniedException` names the refused permission, ...)", body = ErrorBody),
        (status = "5XX", description = "Server fault", body = ErrorBody),
    )
)]
pub(crate) async fn set_key(
    State(st): State<Arc<AppState>>,
    Path((id, region)): Path<(String, String)>,
    req: Request,
) -> Response {
    rest(st, req, "project:SetKey", move |st, call, body| {
        known_fields_of::<SetKeyRequest>(&body)?;
        let key = required_field(&body, "key_id")?;
        let p = st.projects.set_key(call.caller, &id, &region, &key)?;
        if let Some(k) = p.keys.get(&region) {
            call.set_key(k.key_arn.clone());
        }
        project(StatusCode::OK, &p)
    })
    .await
}

#[utoipa::path(
    post,
    path = "/v1/projects/{id}/disks",
    tag = "projects",
    operation_id = "CreateProjectDisk",
    request_body = CreateProjectDiskRequest,
    params(("id" = String, Path, description = "Project id")),
    responses(
        (status = 201, description = "Created under the project's key in the request's region", body = atrest_diskservice::DiskView),
        (status = "4XX", description = "Refused (`RegionNotConfiguredException`, `ConflictException` while paused, ...)", body = ErrorBody),
        (status = "5XX", description = "Server fault", body = ErrorBody),
    )
)]
pub(crate) async fn create_disk(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    rest(st, req, "project:CreateDisk", move |st, call, body| {
        known_fields_of::<CreateProjectDiskRequest>(&body)?;
        let size = u64_field(&body, "size")?
            .ok_or_else(|| KmsError::Validation("'size' (bytes) is required".into()))?;
        let block_size = block_size_field(&body)?;
        let d = st.projects.create_disk(
            call.caller,
            &id,
            &NewDisk {
                size,
                block_size,
                encrypted: None,
                key_id: None,
                shareable: bool_field(&body, "shareable")?,
            },
        )?;
        answer(call, StatusCode::CREATED, d.key_arn.as_ref(), &d)
    })
    .await
}

#[utoipa::path(
    post,
    path = "/v1/projects/{id}/instances",
    tag = "projects",
    operation_id = "CreateProjectInstance",
    request_body = CreateProjectInstanceRequest,
    params(("id" = String, Path, description = "Project id")),
    responses(
        (status = 201, description = "Created under the project's key in the request's region", body = atrest_dbservice::InstanceView),
        (status = "4XX", description = "Refused (`RegionNotConfiguredException`, ...)", body = ErrorBody),
        (status = "5XX", description = "Server fault (503: this host cannot run PostgreSQL)", body = ErrorBody),
    )
)]
pub(crate) async fn create_instance(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    rest(st, req, "project:CreateInstance", move |st, call, body| {
        known_fields_of::<CreateProjectInstanceRequest>(&body)?;
        let port = crate::db_api::port_field(&body)?;
        let v = st.projects.create_instance(
            call.caller,
            &id,
            &NewInstance {
                name: required_field(&body, "name")?,
                class: string_field(&body, "class")?
                    .map(|c| c.parse())
                    .transpose()?,
                key_id: None,
                service_key: false,
                unencrypted: false,
                size: u64_field(&body, "size")?,
                port,
                master_username: string_field(&body, "master_username")?,
                master_password: string_field(&body, "master_password")?,
            },
        )?;
        answer(call, StatusCode::CREATED, v.key_arn.as_ref(), &v)
    })
    .await
}

#[utoipa::path(
    post,
    path = "/v1/projects/{id}/pause",
    tag = "projects",
    operation_id = "PauseProject",
    params(("id" = String, Path, description = "Project id")),
    responses(
        (status = 200, description = "Paused: its instances are stopped", body = Project),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Server fault", body = ErrorBody),
    )
)]
pub(crate) async fn pause(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    rest(st, req, "project:PauseProject", move |st, call, _| {
        project(StatusCode::OK, &st.projects.pause(call.caller, &id)?)
    })
    .await
}

#[utoipa::path(
    post,
    path = "/v1/projects/{id}/resume",
    tag = "projects",
    operation_id = "ResumeProject",
    params(("id" = String, Path, description = "Project id")),
    responses(
        (status = 200, description = "Resumed: keys tested, instances started", body = Project),
        (status = "4XX", description = "Refused (`KeyAccessDeniedException` naming the key while it is unusable, ...)", body = ErrorBody),
        (status = "5XX", description = "Server fault", body = ErrorBody),
    )
)]
pub(crate) async fn resume(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    rest(st, req, "project:ResumeProject", move |st, call, _| {
        project(StatusCode::OK, &st.projects.resume(call.caller, &id)?)
    })
    .await
}
