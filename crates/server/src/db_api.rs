//! The REST API of the database service: `/v1/instances`. Authenticated
//! like the rest of `/v1`; every request acts for the caller's account and
//! region and leaves an audit record named `db:<Operation>`, metered to the
//! account, with the instance's key when it has one.

use std::sync::Arc;

use atrest_dbservice::{EncryptionChange, InstanceView, NewInstance};
use atrest_kms::{Call, KmsError};
use axum::Router;
use axum::extract::{Path, Request, State};
use axum::response::Response;
use axum::routing::{get, post};
use http::StatusCode;
use serde_json::{Value, json};

use crate::disks_api::{answer, bool_field, known_fields, u64_field};
use crate::error::ApiError;
use crate::http_api::{AppState, rest, string_field};

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

async fn set_parameters(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
    req: Request,
) -> Response {
    rest(st, req, "db:SetParameters", move |st, call, body| {
        known_fields(&body, &["parameters"])?;
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

async fn resize(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
    req: Request,
) -> Response {
    rest(st, req, "db:ResizeInstance", move |st, call, body| {
        known_fields(&body, &["size"])?;
        audit_key(st, call, &name);
        let size = u64_field(&body, "size")?
            .ok_or_else(|| KmsError::Validation("'size' (bytes) is required".into()))?;
        let v = st.db.resize(call.caller, &name, size)?;
        view(call, StatusCode::OK, &v)
    })
    .await
}

async fn clone_instance(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
    req: Request,
) -> Response {
    rest(st, req, "db:CloneInstance", move |st, call, body| {
        known_fields(&body, &["name", "port"])?;
        audit_key(st, call, &name);
        let new = crate::http_api::required_field(&body, "name")?;
        let v = st
            .db
            .clone_instance(call.caller, &name, &new, port_field(&body)?)?;
        view(call, StatusCode::CREATED, &v)
    })
    .await
}

fn port_field(body: &Value) -> Result<Option<u16>, ApiError> {
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

async fn create_replica(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
    req: Request,
) -> Response {
    rest(st, req, "db:CreateReplica", move |st, call, body| {
        known_fields(&body, &["name", "port"])?;
        audit_key(st, call, &name);
        let replica = string_field(&body, "name")?;
        let v = st
            .db
            .create_replica(call.caller, &name, replica.as_deref(), port_field(&body)?)?;
        view(call, StatusCode::CREATED, &v)
    })
    .await
}

async fn switchover(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
    req: Request,
) -> Response {
    rest(st, req, "db:Switchover", move |st, call, body| {
        known_fields(&body, &[])?;
        audit_key(st, call, &name);
        let v = st.db.switchover(call.caller, &name)?;
        view(call, StatusCode::OK, &v)
    })
    .await
}

async fn change_encryption(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
    req: Request,
) -> Response {
    rest(st, req, "db:ChangeEncryption", move |st, call, body| {
        known_fields(&body, &["action", "key_id", "service_key"])?;
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

async fn create(State(st): State<Arc<AppState>>, req: Request) -> Response {
    rest(st, req, "db:CreateInstance", |st, call, body| {
        known_fields(
            &body,
            &[
                "name",
                "class",
                "key_id",
                "service_key",
                "unencrypted",
                "size",
                "port",
                "master_username",
                "master_password",
            ],
        )?;
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

async fn list(State(st): State<Arc<AppState>>, req: Request) -> Response {
    rest(st, req, "db:ListInstances", |st, call, _| {
        Ok((
            StatusCode::OK,
            json!({"instances": st.db.list(call.caller)}),
        ))
    })
    .await
}

async fn describe(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
    req: Request,
) -> Response {
    rest(st, req, "db:DescribeInstance", move |st, call, _| {
        let v = st.db.describe(call.caller, &name)?;
        view(call, StatusCode::OK, &v)
    })
    .await
}

async fn delete(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
    req: Request,
) -> Response {
    rest(st, req, "db:DeleteInstance", move |st, call, _| {
        let key = st.db.describe(call.caller, &name)?.key_arn;
        st.db.delete(call.caller, &name)?;
        if let Some(k) = key {
            call.set_key(k);
        }
        Ok((StatusCode::OK, json!({"deleted": name})))
    })
    .await
}

macro_rules! lifecycle {
    ($fn:ident, $op:literal, $method:ident) => {
        async fn $fn(
            State(st): State<Arc<AppState>>,
            Path(name): Path<String>,
            req: Request,
        ) -> Response {
            rest(st, req, $op, move |st, call, body| {
                known_fields(&body, &[])?;
                audit_key(st, call, &name);
                let v = st.db.$method(call.caller, &name)?;
                view(call, StatusCode::OK, &v)
            })
            .await
        }
    };
}

lifecycle!(start, "db:StartInstance", start);
lifecycle!(stop, "db:StopInstance", stop);
lifecycle!(restart, "db:RestartInstance", restart);
