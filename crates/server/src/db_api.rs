//! The REST API of the database service: `/v1/instances`. Authenticated
//! like the rest of `/v1`; every request acts for the caller's account and
//! region and leaves an audit record named `db:<Operation>`, metered to the
//! account, with the instance's key when it has one.

use std::sync::Arc;

use atrest_dbservice::{Class, EncryptionChange, InstanceView, NewInstance};
use atrest_kms::{Call, KmsError};
use axum::Router;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::{get, post};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::disks_api::{EmptyRequest, answer, bool_field, known_fields_of, u64_field};
use crate::error::{ApiError, ErrorBody};
use crate::http_api::{AppState, Deleted, RestPath, reply, rest, string_field};

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/instances", get(list).post(create))
        .route("/v1/instances/{name}", get(describe).delete(delete))
        .route("/v1/instances/{name}/start", post(start))
        .route("/v1/instances/{name}/stop", post(stop))
        .route("/v1/instances/{name}/restart", post(restart))
        .route("/v1/instances/{name}/replicas", post(create_replica))
        .route("/v1/instances/{name}/switchover", post(switchover))
        .route("/v1/instances/{name}/encryption", post(change_encryption))
        .route("/v1/instances/{name}/parameters", post(set_parameters))
        .route("/v1/instances/{name}/resize", post(resize))
        .route("/v1/instances/{name}/clone", post(clone_instance))
}

/// `POST /v1/instances/{name}/parameters`: the body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(
    dead_code,
    reason = "documents the body, which is read member by member"
)]
pub(crate) struct SetParametersRequest {
    /// PostgreSQL settings: name to value (a string, number or boolean), or
    /// null to reset one to its default.
    parameters: std::collections::BTreeMap<String, ParameterValue>,
}

/// A PostgreSQL setting's value.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
#[allow(
    dead_code,
    reason = "documents the body, which is read member by member"
)]
pub(crate) enum ParameterValue {
    /// As text.
    Text(String),
    /// A number.
    Number(f64),
    /// A boolean (`on` or `off`).
    Bool(bool),
    /// Null: reset the setting to its default.
    Reset,
}

/// `POST /v1/instances/{name}/resize`: the body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(
    dead_code,
    reason = "documents the body, which is read member by member"
)]
pub(crate) struct ResizeInstanceRequest {
    /// The new disk size in bytes (disks only grow).
    size: u64,
}

/// `POST /v1/instances/{name}/clone`: the body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(
    dead_code,
    reason = "documents the body, which is read member by member"
)]
pub(crate) struct CloneInstanceRequest {
    /// The new instance's name.
    name: String,
    /// Its port (1024 to 65535; default: a free one).
    #[schema(minimum = 1024, maximum = 65535)]
    port: Option<u16>,
}

/// `POST /v1/instances/{name}/replicas`: the body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(
    dead_code,
    reason = "documents the body, which is read member by member"
)]
pub(crate) struct CreateReplicaRequest {
    /// The replica's name (default: derived from the primary's).
    name: Option<String>,
    /// Its port (1024 to 65535; default: a free one).
    #[schema(minimum = 1024, maximum = 65535)]
    port: Option<u16>,
}

/// What `POST /v1/instances/{name}/encryption` does.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
#[allow(
    dead_code,
    reason = "documents the body, which is read member by member"
)]
pub(crate) enum EncryptionAction {
    /// Encrypt the instance's disk.
    Enable,
    /// Decrypt it (class `disk` only).
    Disable,
    /// Move it to another key.
    SetKey,
}

/// `POST /v1/instances/{name}/encryption`: the body. `enable` and
/// `set-key` take exactly one of `key_id` and `service_key: true`;
/// `disable` takes neither.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(
    dead_code,
    reason = "documents the body, which is read member by member"
)]
pub(crate) struct ChangeEncryptionRequest {
    /// The change.
    action: EncryptionAction,
    /// The customer's key (id, ARN or alias).
    key_id: Option<String>,
    /// Use the account's database service key.
    service_key: Option<bool>,
}

/// `POST /v1/instances`: the body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(
    dead_code,
    reason = "documents the body, which is read member by member"
)]
pub(crate) struct CreateInstanceRequest {
    /// Name: 1 to 63 of a-z, 0-9 and '-', starting with a letter.
    #[schema(pattern = "^[a-z][a-z0-9-]{0,62}$")]
    name: String,
    /// Class (default `tde`).
    class: Option<Class>,
    /// The customer's key (id, ARN or alias).
    key_id: Option<String>,
    /// Use the account's database service key.
    service_key: Option<bool>,
    /// No encryption (class `disk` only).
    unencrypted: Option<bool>,
    /// Disk size in bytes.
    size: Option<u64>,
    /// Port (1024 to 65535; default: a free one).
    #[schema(minimum = 1024, maximum = 65535)]
    port: Option<u16>,
    /// The superuser's name.
    master_username: Option<String>,
    /// The superuser's password (default: generated and answered once).
    master_password: Option<String>,
}

/// The caller's instances.
#[derive(Serialize, ToSchema)]
pub(crate) struct InstanceList {
    /// The instances.
    instances: Vec<InstanceView>,
}

#[utoipa::path(
    post,
    path = "/v1/instances/{name}/parameters",
    tag = "databases",
    operation_id = "SetParameters",
    params(("name" = String, Path, description = "Instance name")),
    request_body = SetParametersRequest,
    responses(
        (status = 200, description = "The instance", body = InstanceView),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Server fault (503: this host cannot run PostgreSQL)", body = ErrorBody),
    )
)]
pub(crate) async fn set_parameters(
    State(st): State<Arc<AppState>>,
    RestPath(name): RestPath<String>,
    req: Request,
) -> Response {
    rest(st, req, "db:SetParameters", move |st, call, body| {
        known_fields_of::<SetParametersRequest>(&body)?;
        audit_key(st, call, &name);
        let Some(obj) = body.get("parameters").and_then(Value::as_object) else {
            return Err(KmsError::Validation(
                "'parameters' (an object of name to string, or null to reset) is required".into(),
            )
            .into());
        };
        let mut params = std::collections::BTreeMap::new();
        for (k, v) in obj {
            let v = match v {
                Value::Null => None,
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                Value::Bool(b) => Some(if *b { "on" } else { "off" }.to_owned()),
                _ => {
                    return Err(KmsError::Serialization(format!(
                        "parameter '{k}' must be a string, number, boolean or null"
                    ))
                    .into());
                }
            };
            params.insert(k.clone(), v);
        }
        let v = st.db.set_parameters(call.caller, &name, &params)?;
        view(call, StatusCode::OK, &v)
    })
    .await
}

#[utoipa::path(
    post,
    path = "/v1/instances/{name}/resize",
    tag = "databases",
    operation_id = "ResizeInstance",
    params(("name" = String, Path, description = "Instance name")),
    request_body = ResizeInstanceRequest,
    responses(
        (status = 200, description = "The instance", body = InstanceView),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Server fault (503: this host cannot run PostgreSQL)", body = ErrorBody),
    )
)]
pub(crate) async fn resize(
    State(st): State<Arc<AppState>>,
    RestPath(name): RestPath<String>,
    req: Request,
) -> Response {
    rest(st, req, "db:ResizeInstance", move |st, call, body| {
        known_fields_of::<ResizeInstanceRequest>(&body)?;
        audit_key(st, call, &name);
        let size = u64_field(&body, "size")?
            .ok_or_else(|| KmsError::Validation("'size' (bytes) is required".into()))?;
        let v = st.db.resize(call.caller, &name, size)?;
        view(call, StatusCode::OK, &v)
    })
    .await
}

#[utoipa::path(
    post,
    path = "/v1/instances/{name}/clone",
    tag = "databases",
    operation_id = "CloneInstance",
    params(("name" = String, Path, description = "Instance name")),
    request_body = CloneInstanceRequest,
    responses(
        (status = 201, description = "Created", body = InstanceView),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Server fault (503: this host cannot run PostgreSQL)", body = ErrorBody),
    )
)]
pub(crate) async fn clone_instance(
    State(st): State<Arc<AppState>>,
    RestPath(name): RestPath<String>,
    req: Request,
) -> Response {
    rest(st, req, "db:CloneInstance", move |st, call, body| {
        known_fields_of::<CloneInstanceRequest>(&body)?;
        audit_key(st, call, &name);
        let new = crate::http_api::required_field(&body, "name")?;
        let v = st
            .db
            .clone_instance(call.caller, &name, &new, port_field(&body)?)?;
        view(call, StatusCode::CREATED, &v)
    })
    .await
}

pub(crate) fn port_field(body: &Value) -> Result<Option<u16>, ApiError> {
    u64_field(body, "port")?
        .map(|p| {
            u16::try_from(p)
                .map_err(|_| KmsError::Validation("'port' must be 1024 to 65535".into()).into())
        })
        .transpose()
}

/// Sets the audit record's key to the instance's (when it has one).
fn audit_key(st: &AppState, call: &Call<'_>, name: &str) {
    if let Ok(v) = st.db.describe(call.caller, name)
        && let Some(k) = v.key_arn
    {
        call.set_key(k);
    }
}

#[utoipa::path(
    post,
    path = "/v1/instances/{name}/replicas",
    tag = "databases",
    operation_id = "CreateReplica",
    params(("name" = String, Path, description = "Instance name")),
    request_body = CreateReplicaRequest,
    responses(
        (status = 201, description = "Created", body = InstanceView),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Server fault (503: this host cannot run PostgreSQL)", body = ErrorBody),
    )
)]
pub(crate) async fn create_replica(
    State(st): State<Arc<AppState>>,
    RestPath(name): RestPath<String>,
    req: Request,
) -> Response {
    rest(st, req, "db:CreateReplica", move |st, call, body| {
        known_fields_of::<CreateReplicaRequest>(&body)?;
        audit_key(st, call, &name);
        let replica = string_field(&body, "name")?;
        let v = st
            .db
            .create_replica(call.caller, &name, replica.as_deref(), port_field(&body)?)?;
        view(call, StatusCode::CREATED, &v)
    })
    .await
}

#[utoipa::path(
    post,
    path = "/v1/instances/{name}/switchover",
    tag = "databases",
    operation_id = "Switchover",
    params(("name" = String, Path, description = "Instance name")),
    request_body = EmptyRequest,
    responses(
        (status = 200, description = "The instance", body = InstanceView),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Server fault (503: this host cannot run PostgreSQL)", body = ErrorBody),
    )
)]
pub(crate) async fn switchover(
    State(st): State<Arc<AppState>>,
    RestPath(name): RestPath<String>,
    req: Request,
) -> Response {
    rest(st, req, "db:Switchover", move |st, call, body| {
        known_fields_of::<EmptyRequest>(&body)?;
        audit_key(st, call, &name);
        let v = st.db.switchover(call.caller, &name)?;
        view(call, StatusCode::OK, &v)
    })
    .await
}

#[utoipa::path(
    post,
    path = "/v1/instances/{name}/encryption",
    tag = "databases",
    operation_id = "ChangeEncryption",
    params(("name" = String, Path, description = "Instance name")),
    request_body = ChangeEncryptionRequest,
    responses(
        (status = 200, description = "The instance", body = InstanceView),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Server fault (503: this host cannot run PostgreSQL)", body = ErrorBody),
    )
)]
pub(crate) async fn change_encryption(
    State(st): State<Arc<AppState>>,
    RestPath(name): RestPath<String>,
    req: Request,
) -> Response {
    rest(st, req, "db:ChangeEncryption", move |st, call, body| {
        known_fields_of::<ChangeEncryptionRequest>(&body)?;
        audit_key(st, call, &name);
        let action = crate::http_api::required_field(&body, "action")?;
        let key_id = string_field(&body, "key_id")?;
        let service_key = bool_field(&body, "service_key")?.unwrap_or(false);
        let change = match action.as_str() {
            "enable" | "set-key" => {
                if key_id.is_some() == service_key {
                    return Err(KmsError::Validation(format!(
                        "'{action}' takes exactly one of 'key_id' and 'service_key'"
                    ))
                    .into());
                }
                if action == "enable" {
                    EncryptionChange::Enable { key_id }
                } else {
                    EncryptionChange::SetKey { key_id }
                }
            }
            "disable" => {
                if key_id.is_some() || service_key {
                    return Err(KmsError::Validation("'disable' takes no key".into()).into());
                }
                EncryptionChange::Disable
            }
            other => {
                return Err(KmsError::Validation(format!(
                    "'{other}' is not an encryption action; use enable, disable or set-key"
                ))
                .into());
            }
        };
        let v = st.db.change_encryption(call.caller, &name, &change)?;
        view(call, StatusCode::OK, &v)
    })
    .await
}

fn view(
    call: &Call<'_>,
    status: StatusCode,
    v: &InstanceView,
) -> Result<(StatusCode, Value), ApiError> {
    answer(call, status, v.key_arn.as_ref(), v)
}

#[utoipa::path(
    post,
    path = "/v1/instances",
    tag = "databases",
    operation_id = "CreateInstance",
    request_body = CreateInstanceRequest,
    responses(
        (status = 201, description = "Created", body = InstanceView),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Server fault (503: this host cannot run PostgreSQL)", body = ErrorBody),
    )
)]
pub(crate) async fn create(State(st): State<Arc<AppState>>, req: Request) -> Response {
    rest(st, req, "db:CreateInstance", |st, call, body| {
        known_fields_of::<CreateInstanceRequest>(&body)?;
        let name = crate::http_api::required_field(&body, "name")?;
        let class = string_field(&body, "class")?
            .map(|c| c.parse())
            .transpose()?;
        let port = port_field(&body)?;
        let v = st.db.create(
            call.caller,
            &NewInstance {
                name,
                class,
                key_id: string_field(&body, "key_id")?,
                service_key: bool_field(&body, "service_key")?.unwrap_or(false),
                unencrypted: bool_field(&body, "unencrypted")?.unwrap_or(false),
                size: u64_field(&body, "size")?,
                port,
                master_username: string_field(&body, "master_username")?,
                master_password: string_field(&body, "master_password")?,
            },
        )?;
        view(call, StatusCode::CREATED, &v)
    })
    .await
}

#[utoipa::path(
    get,
    path = "/v1/instances",
    tag = "databases",
    operation_id = "ListInstances",
    responses(
        (status = 200, description = "The caller's instances", body = InstanceList),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Server fault (503: this host cannot run PostgreSQL)", body = ErrorBody),
    )
)]
pub(crate) async fn list(State(st): State<Arc<AppState>>, req: Request) -> Response {
    rest(st, req, "db:ListInstances", |st, call, _| {
        let instances = st.db.list(call.caller);
        reply(StatusCode::OK, &InstanceList { instances })
    })
    .await
}

#[utoipa::path(
    get,
    path = "/v1/instances/{name}",
    tag = "databases",
    operation_id = "DescribeInstance",
    params(("name" = String, Path, description = "Instance name")),
    responses(
        (status = 200, description = "The instance", body = InstanceView),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Server fault (503: this host cannot run PostgreSQL)", body = ErrorBody),
    )
)]
pub(crate) async fn describe(
    State(st): State<Arc<AppState>>,
    RestPath(name): RestPath<String>,
    req: Request,
) -> Response {
    rest(st, req, "db:DescribeInstance", move |st, call, _| {
        let v = st.db.describe(call.caller, &name)?;
        view(call, StatusCode::OK, &v)
    })
    .await
}

#[utoipa::path(
    delete,
    path = "/v1/instances/{name}",
    tag = "databases",
    operation_id = "DeleteInstance",
    params(("name" = String, Path, description = "Instance name")),
    responses(
        (status = 200, description = "Deleted", body = Deleted),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Server fault (503: this host cannot run PostgreSQL)", body = ErrorBody),
    )
)]
pub(crate) async fn delete(
    State(st): State<Arc<AppState>>,
    RestPath(name): RestPath<String>,
    req: Request,
) -> Response {
    rest(st, req, "db:DeleteInstance", move |st, call, _| {
        let key = st.db.describe(call.caller, &name)?.key_arn;
        st.db.delete(call.caller, &name)?;
        if let Some(k) = key {
            call.set_key(k);
        }
        reply(StatusCode::OK, &Deleted { deleted: name })
    })
    .await
}

macro_rules! lifecycle {
    ($fn:ident, $op:literal, $method:ident, $path:literal, $id:literal, $what:literal) => {
        #[utoipa::path(
            post,
            path = $path,
            tag = "databases",
            operation_id = $id,
            params(("name" = String, Path, description = "Instance name")),
            request_body = EmptyRequest,
            responses(
                (status = 200, description = $what, body = InstanceView),
                (status = "4XX", description = "Refused", body = ErrorBody),
                (status = "5XX", description = "Server fault (503: this host cannot run PostgreSQL)", body = ErrorBody),
            )
        )]
        pub(crate) async fn $fn(
            State(st): State<Arc<AppState>>,
            RestPath(name): RestPath<String>,
            req: Request,
        ) -> Response {
            rest(st, req, $op, move |st, call, body| {
                known_fields_of::<EmptyRequest>(&body)?;
                audit_key(st, call, &name);
                let v = st.db.$method(call.caller, &name)?;
                view(call, StatusCode::OK, &v)
            })
            .await
        }
    };
}

lifecycle!(
    start,
    "db:StartInstance",
    start,
    "/v1/instances/{name}/start",
    "StartInstance",
    "Started"
);
lifecycle!(
    stop,
    "db:StopInstance",
    stop,
    "/v1/instances/{name}/stop",
    "StopInstance",
    "Stopped"
);
lifecycle!(
    restart,
    "db:RestartInstance",
    restart,
    "/v1/instances/{name}/restart",
    "RestartInstance",
    "Restarted"
);
