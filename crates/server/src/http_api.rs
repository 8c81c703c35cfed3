//! Routes and handlers: the KMS JSON endpoint, the REST API, health.
//!
//! Every request is authenticated (SigV4), runs as a `Call` of the key
//! service, and is recorded in the audit trail before its answer is sent.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use atrest_kms::{Call, Caller, KeyService, KmsError, Operation, RequestMeta};
use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequestParts, Path, Query, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post, put};
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, Method, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;
use zeroize::Zeroizing;

use crate::error::{ApiError, ErrorBody};
use crate::trail::SharedTrail;

/// The peer of a connection, inserted by the accept loop.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Peer(pub SocketAddr);

pub(crate) struct AppState {
    pub kms: Arc<KeyService>,
    pub trail: SharedTrail,
    pub max_body: usize,
    /// Access keys' secrets never change, so their derived signing keys can
    /// be cached per scope.
    pub signing_keys: atrest_sigv4::SigningKeyCache,
    /// Where the audit log lives (for queries and verification).
    pub audit_dir: std::path::PathBuf,
    /// The disk service.
    pub disks: Arc<atrest_diskservice::DiskService>,
    /// Disks attached as block devices of this host.
    pub local: Arc<crate::local::LocalDisks>,
    /// The database service.
    pub db: Arc<atrest_dbservice::DbService>,
    /// The control plane (projects).
    pub projects: Arc<atrest_control::Projects>,
    /// Answers of recent `POST`s with an `Idempotency-Key`.
    pub idempotency: crate::rest::idempotency::Idempotency,
}

pub(crate) fn router(state: Arc<AppState>) -> Router {
    let (rest_routes, rest_doc) = crate::routes::api().split_for_parts();
    crate::openapi::add_paths(rest_doc);
    Router::new()
        .route("/", any(kms_endpoint))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/v1/openapi.json", get(crate::openapi::serve))
        .route("/v1/accounts", get(list_accounts).post(create_account))
        .route(
            "/v1/accounts/{account}/access-keys",
            get(list_access_keys).post(create_access_key),
        )
        .route(
            "/v1/accounts/{account}/users",
            get(list_users).post(create_user),
        )
        .route(
            "/v1/accounts/{account}/users/{user}/policies/{policy}",
            get(get_user_policy)
                .put(put_user_policy)
                .delete(delete_user_policy),
        )
        .route("/v1/accounts/{account}/suspend", post(suspend_account))
        .route("/v1/accounts/{account}/resume", post(resume_account))
        .route("/v1/audit", get(query_audit))
        .route("/v1/audit/verify", post(verify_audit))
        .route("/v1/metering", get(metering))
        .route("/v1/service-keys/{service}", put(ensure_service_key))
        .merge(rest_routes)
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .with_state(state)
}

/// A response body that is wiped from memory once sent (it may hold
/// plaintext data keys).
struct Wipe(Zeroizing<Vec<u8>>);

impl AsRef<[u8]> for Wipe {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

fn kms_error_response(err: &ApiError, request_id: &str) -> Response {
    let (status, ty, message) = err.parts();
    let body = json!({"__type": ty, "message": message}).to_string();
    let mut resp = (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-amz-json-1.1"),
        )],
        body,
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(request_id) {
        resp.headers_mut().insert("x-amzn-requestid", v);
    }
    close_if_body_unread(err, resp)
}

/// A request refused before its body was read leaves bytes on the
/// connection; close it rather than let a client reuse it.
fn close_if_body_unread(err: &ApiError, mut resp: Response) -> Response {
    if matches!(err, ApiError::BodyTooLarge(_) | ApiError::BodyRead(_)) {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

pub(crate) fn rest_error_response(err: &ApiError, request_id: &str) -> Response {
    let (status, code, message) = err.rest_parts();
    let body = ErrorBody {
        code: code.to_owned(),
        message,
        request_id: request_id.to_owned(),
    };
    let body = serde_json::to_string(&body).unwrap_or_else(|_| {
        r#"{"code":"InternalFailure","message":"The error could not be encoded.","requestId":""}"#
            .to_owned()
    });
    let mut resp = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("AWS4-HMAC-SHA256"),
        );
    }
    close_if_body_unread(err, resp)
}

pub(crate) async fn read_body(
    body: Body,
    headers: &http::HeaderMap,
    max: usize,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > max) {
        return Err(ApiError::BodyTooLarge(max));
    }
    match Limited::new(body, max).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::BodyTooLarge(max)),
        Err(e) => Err(ApiError::BodyRead(e.to_string())),
    }
}

/// Verifies the request's SigV4 signature for `service`; returns the caller
/// and the access key id.
pub(crate) fn authenticate(
    st: &AppState,
    parts: &Parts,
    body: &[u8],
    service: &str,
) -> Result<(Caller, String), ApiError> {
    let parsed = atrest_sigv4::parse_request(
        &parts.method,
        &parts.uri,
        &parts.headers,
        body,
        &atrest_sigv4::Policy {
            service,
            regions: st.kms.regions(),
            now: time::OffsetDateTime::now_utc(),
        },
    )?;
    let Some(key) = st.kms.access_key(parsed.access_key_id())? else {
        return Err(atrest_sigv4::AuthError::UnrecognizedClient.into());
    };
    parsed.verify_cached(key.secret(), Some(&st.signing_keys))?;
    if !key.active {
        return Err(ApiError::InactiveKey);
    }
    Ok((
        key.caller(parsed.region()),
        parsed.access_key_id().to_owned(),
    ))
}

fn content_type_ok(parts: &Parts) -> Result<(), ApiError> {
    let ct = parts
        .headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let base = ct
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match base.as_str() {
        "application/x-amz-json-1.1" | "application/x-amz-json-1.0" | "application/json" => Ok(()),
        _ => Err(ApiError::ContentType(ct)),
    }
}

/// The audit entry of a request refused before it became a call (bad
/// signature, body too large, unknown operation, ...).
pub(crate) fn refused_entry(
    meta: &RequestMeta,
    operation: &str,
    caller: Option<&Caller>,
    err: &ApiError,
) -> atrest_audit::Entry {
    atrest_audit::Entry {
        time: atrest_kms::audit_time(meta.time),
        request_id: meta.request_id.clone(),
        region: caller.map(|c| c.region.clone()),
        account: caller.map(|c| c.account.as_str().to_owned()),
        principal: caller.map(Caller::principal_arn),
        access_key_id: meta.access_key_id.clone(),
        source: Some(meta.source.clone()),
        operation: operation.to_owned(),
        result: err.parts().1.to_owned(),
        ..atrest_audit::Entry::default()
    }
}

/// The `X-Amz-Target` header, for logs and the records of refused requests.
fn target_header(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get("x-amz-target")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// The operation a refused request is recorded under: the target without
/// its `TrentService.` prefix, at most 64 characters, or `unknown`.
fn refused_operation(target: Option<&str>) -> String {
    target
        .and_then(|t| t.strip_prefix("TrentService."))
        .unwrap_or("unknown")
        .chars()
        .take(64)
        .collect()
}

/// The outcome of a call, with what its audit record needs.
pub(crate) struct Outcome<T> {
    pub result: Result<T, ApiError>,
    pub entry: Option<atrest_audit::Entry>,
}

async fn kms_endpoint(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let started = Instant::now();
    let peer = req.extensions().get::<Peer>().map(|p| p.0);
    let mut meta = RequestMeta::in_process();
    meta.source = peer.map_or_else(|| "unknown".into(), |p| p.to_string());
    let (parts, body) = req.into_parts();
    let outcome = handle_kms(&st, &parts, body, &mut meta).await;
    // Record before answering; a success that cannot be recorded is not given.
    let mut result = outcome.result;
    if let Some(entry) = outcome.entry
        && let Err(e) = st.trail.record(entry).await
        && result.is_ok()
    {
        tracing::error!(request_id = %meta.request_id, error = %e, "audit trail unavailable; refusing the request");
        result = Err(KmsError::Internal(format!(
            "the audit trail cannot record the request ({e})"
        ))
        .into());
    }
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let id = &meta.request_id;
    match result {
        Ok((op, caller, out)) => {
            // Data-plane calls can number tens of thousands a second: they
            // are logged at debug; the audit trail records every call.
            if op.is_read_only() {
                tracing::debug!(request_id = %id, peer = ?peer, operation = op.name(), principal = %caller.principal_arn(), region = %caller.region, status = 200, ms, "kms request");
            } else {
                tracing::info!(request_id = %id, peer = ?peer, operation = op.name(), principal = %caller.principal_arn(), region = %caller.region, status = 200, ms, "kms request");
            }
            let mut resp = Response::new(Body::from(Bytes::from_owner(Wipe(out))));
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-amz-json-1.1"),
            );
            if let Ok(v) = HeaderValue::from_str(id) {
                h.insert("x-amzn-requestid", v);
            }
            resp
        }
        Err(err) => {
            let (status, ty, _) = err.parts();
            let target = target_header(&parts.headers);
            if err.is_server_fault() {
                tracing::error!(request_id = %id, peer = ?peer, target = ?target, error = ?err, "kms request failed (server fault)");
            } else {
                tracing::info!(request_id = %id, peer = ?peer, target = ?target, status = status.as_u16(), error_type = ty, ms, "kms request refused");
            }
            kms_error_response(&err, id)
        }
    }
}

async fn handle_kms(
    st: &Arc<AppState>,
    parts: &Parts,
    body: Body,
    meta: &mut RequestMeta,
) -> Outcome<(Operation, Caller, Zeroizing<Vec<u8>>)> {
    let refused = |meta: &RequestMeta, caller: Option<&Caller>, err: ApiError| Outcome {
        entry: Some(refused_entry(
            meta,
            &refused_operation(target_header(&parts.headers).as_deref()),
            caller,
            &err,
        )),
        result: Err(err),
    };
    if parts.method != Method::POST {
        return refused(meta, None, ApiError::Method);
    }
    let body = match read_body(body, &parts.headers, st.max_body).await {
        Ok(b) => b,
        Err(e) => return refused(meta, None, e),
    };
    let (caller, akid) = match authenticate(st, parts, &body, "kms") {
        Ok(x) => x,
        Err(e) => return refused(meta, None, e),
    };
    meta.access_key_id = Some(akid);
    let target = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Some(op) = Operation::from_target(target) else {
        let err = KmsError::UnknownOperation(if target.is_empty() {
            "The request has no X-Amz-Target header naming an operation.".into()
        } else {
            format!("Unknown operation {target}")
        });
        return refused(meta, Some(&caller), err.into());
    };
    if let Err(e) = content_type_ok(parts) {
        return refused(meta, Some(&caller), e);
    }
    let (result, entry) =
        if op.is_read_only() && !(op.may_call_provider() && st.kms.has_providers()) {
            run_kms_call(&st.kms, &caller, meta, op, &body)
        } else {
            // Writes wait for fsyncs; keep them off the reactor threads.
            let (kms, caller, meta) = (Arc::clone(&st.kms), caller.clone(), meta.clone());
            match tokio::task::spawn_blocking(move || run_kms_call(&kms, &caller, &meta, op, &body))
                .await
            {
                Ok(x) => x,
                Err(e) => (Err(KmsError::Internal(format!("worker failed: {e}"))), None),
            }
        };
    Outcome {
        result: result.map(|out| (op, caller, out)).map_err(ApiError::from),
        entry,
    }
}

/// Runs one key-service call and, unless the key service recorded it
/// itself (a write), builds its audit entry.
fn run_kms_call(
    kms: &KeyService,
    caller: &Caller,
    meta: &RequestMeta,
    op: Operation,
    body: &[u8],
) -> (
    Result<Zeroizing<Vec<u8>>, KmsError>,
    Option<atrest_audit::Entry>,
) {
    let call = Call::new(caller, meta);
    let result = kms.call(&call, op, body);
    let entry = (!call.recorded()).then(|| {
        let outcome = match &result {
            Ok(_) => "Success",
            Err(e) => e.aws_type(),
        };
        kms.audit_entry(&call, outcome)
    });
    (result, entry)
}

/// Runs a REST handler: authenticates (service `atrest`), reads the JSON
/// body, runs `f` off the reactor as an audited call named `operation`, and
/// shapes the answer.
pub(crate) async fn rest<F>(
    st: Arc<AppState>,
    req: Request,
    operation: &'static str,
    f: F,
) -> Response
where
    F: FnOnce(&AppState, &Call<'_>, Value) -> Result<(StatusCode, Value), ApiError>
        + Send
        + 'static,
{
    let peer = req.extensions().get::<Peer>().map(|p| p.0);
    let mut meta = RequestMeta::in_process();
    meta.source = peer.map_or_else(|| "unknown".into(), |p| p.to_string());
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let method = parts.method.clone();
    let outcome: Outcome<(StatusCode, Value)> = async {
        let body = match read_body(body, &parts.headers, st.max_body).await {
            Ok(b) => b,
            Err(e) => {
                return Outcome {
                    entry: Some(refused_entry(&meta, operation, None, &e)),
                    result: Err(e),
                };
            }
        };
        let (caller, akid) = match authenticate(&st, &parts, &body, crate::REST_SERVICE) {
            Ok(x) => x,
            Err(e) => {
                return Outcome {
                    entry: Some(refused_entry(&meta, operation, None, &e)),
                    result: Err(e),
                };
            }
        };
        meta.access_key_id = Some(akid);
        let extras = (|| {
            let idem = if method == Method::POST {
                crate::rest::idempotency::key(&parts.headers)?
            } else {
                None
            };
            let paging = (method == Method::GET && operation.contains(":List"))
                .then(|| crate::rest::paging::page(&parts.uri))
                .transpose()?;
            Ok::<_, ApiError>((idem, paging))
        })();
        let (idem, paging) = match extras {
            Ok(x) => x,
            Err(e) => {
                return Outcome {
                    entry: Some(refused_entry(&meta, operation, Some(&caller), &e)),
                    result: Err(e),
                };
            }
        };
        let value: Value = if body.iter().all(u8::is_ascii_whitespace) {
            json!({})
        } else {
            match serde_json::from_slice(&body) {
                Ok(v @ Value::Object(_)) => v,
                Ok(_) => {
                    let err: ApiError =
                        KmsError::Serialization("The request body must be a JSON object.".into())
                            .into();
                    return Outcome {
                        entry: Some(refused_entry(&meta, operation, Some(&caller), &err)),
                        result: Err(err),
                    };
                }
                Err(e) => {
                    let err: ApiError =
                        KmsError::Serialization(format!("The request body is not valid JSON: {e}"))
                            .into();
                    return Outcome {
                        entry: Some(refused_entry(&meta, operation, Some(&caller), &err)),
                        result: Err(err),
                    };
                }
            }
        };
        let (st2, meta2, path2) = (Arc::clone(&st), meta.clone(), path.clone());
        let joined = tokio::task::spawn_blocking(move || {
            let call = Call::new(&caller, &meta2);
            call.set_operation(operation);
            let result = match &idem {
                None => f(&st2, &call, value),
                Some(k) => {
                    let slot = crate::rest::idempotency::Slot {
                        principal: caller.principal_arn(),
                        path: path2.clone(),
                        key: k.clone(),
                    };
                    match st2.idempotency.seen(&slot, &body) {
                        Err(e) => Err(e),
                        Ok(Some(replayed)) => Ok(replayed),
                        Ok(None) => {
                            let r = f(&st2, &call, value);
                            if let Ok((s, v)) = &r {
                                st2.idempotency.keep(slot, &body, *s, without_secrets(v));
                            }
                            r
                        }
                    }
                }
            };
            let result = match (result, &paging) {
                (Ok((s, v)), Some((limit, after))) => Ok((
                    s,
                    crate::rest::paging::paginate(v, *limit, after.as_deref()),
                )),
                (r, _) => r,
            };
            let entry = (!call.recorded()).then(|| {
                let outcome = match &result {
                    Ok(_) => "Success",
                    Err(e) => e.parts().1,
                };
                st2.kms.audit_entry(&call, outcome)
            });
            (result, entry)
        })
        .await;
        match joined {
            Ok((result, entry)) => Outcome { result, entry },
            Err(e) => Outcome {
                result: Err(KmsError::Internal(format!("worker failed: {e}")).into()),
                entry: None,
            },
        }
    }
    .await;
    let mut result = outcome.result;
    if let Some(entry) = outcome.entry
        && let Err(e) = st.trail.record(entry).await
        && result.is_ok()
    {
        result = Err(KmsError::Internal(format!(
            "the audit trail cannot record the request ({e})"
        ))
        .into());
    }
    match result {
        Ok((status, value)) => {
            tracing::info!(request_id = %meta.request_id, %method, path, status = status.as_u16(), "rest request");
            (
                status,
                [(header::CONTENT_TYPE, "application/json")],
                value.to_string(),
            )
                .into_response()
        }
        Err(err) => {
            if err.is_server_fault() {
                // The details stay here; the client sees only that it failed.
                tracing::error!(request_id = %meta.request_id, %method, path, error = %err, "rest request failed");
            } else {
                tracing::info!(request_id = %meta.request_id, %method, path, error = %err.parts().1, "rest request refused");
            }
            rest_error_response(&err, &meta.request_id)
        }
    }
}

/// The replay form of an answer of a handler not yet on the framework:
/// without the members that show a secret once (the framework's endpoints
/// say so by type instead, [`crate::rest::Replayable`]).
fn without_secrets(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("secret_access_key");
    }
    v
}

pub(crate) fn string_field(v: &Value, name: &str) -> Result<Option<String>, ApiError> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(KmsError::Serialization(format!("'{name}' must be a string")).into()),
    }
}

pub(crate) fn required_field(v: &Value, name: &str) -> Result<String, ApiError> {
    string_field(v, name)?
        .ok_or_else(|| KmsError::Validation(format!("'{name}' is required")).into())
}

/// `POST /v1/accounts` (admins): the body. With no `id`, a fresh
/// 12-digit id is chosen.
#[derive(Deserialize, ToSchema)]
#[allow(
    dead_code,
    reason = "documents the body, which is read member by member"
)]
pub(crate) struct CreateAccountRequest {
    /// The new account's id (12 digits).
    #[schema(pattern = "^[0-9]{12}$")]
    id: Option<String>,
    /// Whether the account's root is an administrator (default false).
    admin: Option<bool>,
}

/// A created account.
#[derive(Serialize, ToSchema)]
pub(crate) struct AccountCreated {
    /// The account id.
    id: String,
    /// Whether its root is an administrator.
    admin: bool,
}

/// One account of a listing.
#[derive(Serialize, ToSchema)]
pub(crate) struct AccountSummary {
    /// The account id.
    id: String,
    /// Whether its root is an administrator.
    admin: bool,
    /// Whether it is suspended.
    suspended: bool,
    /// Creation time, epoch seconds.
    created: f64,
}

/// Every account.
#[derive(Serialize, ToSchema)]
pub(crate) struct AccountList {
    /// The accounts.
    accounts: Vec<AccountSummary>,
}

/// The answer of a deletion.
#[derive(Serialize, ToSchema)]
pub(crate) struct Deleted {
    /// What was deleted (its id or name).
    pub deleted: String,
}

/// The JSON answer of a REST handler, with its status.
pub(crate) fn reply<T: Serialize>(
    status: StatusCode,
    v: &T,
) -> Result<(StatusCode, Value), ApiError> {
    let v = serde_json::to_value(v)
        .map_err(|e| KmsError::Internal(format!("encoding a response: {e}")))?;
    Ok((status, v))
}

#[utoipa::path(
    post,
    path = "/v1/accounts",
    tag = "admin",
    operation_id = "CreateAccount",
    request_body(content = CreateAccountRequest, description = "The account; `{}` or no body for a fresh id"),
    responses(
        (status = 201, description = "Created", body = AccountCreated),
        (status = "4XX", description = "Refused (`AlreadyExistsException`, `AccessDeniedException`, `ValidationException`, ...)", body = ErrorBody),
        (status = "5XX", description = "Server fault", body = ErrorBody),
    )
)]
pub(crate) async fn create_account(State(st): State<Arc<AppState>>, req: Request) -> Response {
    rest(st, req, "admin:CreateAccount", |st, call, body| {
        let id = string_field(&body, "id")?;
        let admin = match body.get("admin") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(KmsError::Serialization("'admin' must be a boolean".into()).into());
            }
        };
        let account = st.kms.create_account(call, id.as_deref(), admin)?;
        reply(
            StatusCode::CREATED,
            &AccountCreated {
                id: account.as_str().to_owned(),
                admin,
            },
        )
    })
    .await
}

#[utoipa::path(
    get,
    path = "/v1/accounts",
    tag = "admin",
    operation_id = "ListAccounts",
    responses(
        (status = 200, description = "Every account (admins only)", body = AccountList),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Server fault", body = ErrorBody),
    )
)]
pub(crate) async fn list_accounts(State(st): State<Arc<AppState>>, req: Request) -> Response {
    rest(st, req, "admin:ListAccounts", |st, call, _| {
        let accounts = st
            .kms
            .list_accounts(call.caller)?
            .into_iter()
            .map(|(id, admin, suspended, created)| AccountSummary {
                id,
                admin,
                suspended,
                created,
            })
            .collect();
        reply(StatusCode::OK, &AccountList { accounts })
    })
    .await
}

/// `POST /v1/accounts/{account}/access-keys`: the body. With no
/// `access_key_id`, a key is created; with `access_key_id` and
/// `secret_access_key`, they are imported.
#[derive(Deserialize, ToSchema)]
#[allow(
    dead_code,
    reason = "documents the body, which is read member by member"
)]
pub(crate) struct CreateAccessKeyRequest {
    /// The user the key is for (default: the account's root).
    user: Option<String>,
    /// An access key id to import.
    access_key_id: Option<String>,
    /// Its secret (with `access_key_id`).
    secret_access_key: Option<String>,
}

/// A created or imported access key, with its secret (answered once).
#[derive(Serialize, ToSchema)]
pub(crate) struct AccessKeyCreated {
    /// The account.
    account: String,
    /// The user it belongs to; null for the account's root.
    user: Option<String>,
    /// The access key id.
    access_key_id: String,
    /// The secret access key.
    secret_access_key: String,
}

/// An account's access keys (no secrets).
#[derive(Serialize, ToSchema)]
pub(crate) struct AccessKeyList {
    /// The keys.
    access_keys: Vec<atrest_kms::AccessKeyInfo>,
}

/// `POST /v1/accounts/{account}/access-keys`: with no `access_key_id`,
/// creates a key (for the account's root, or for `user`) and returns its
/// secret once; with `access_key_id` and `secret_access_key`, imports them.
#[utoipa::path(
    post,
    path = "/v1/accounts/{account}/access-keys",
    tag = "admin",
    operation_id = "CreateAccessKey",
    params(("account" = String, Path, description = "Account id (12 digits)")),
    request_body(content = CreateAccessKeyRequest, description = "`{}` or no body to create a root key"),
    responses(
        (status = 201, description = "Created", body = AccessKeyCreated),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Server fault", body = ErrorBody),
    )
)]
pub(crate) async fn create_access_key(
    State(st): State<Arc<AppState>>,
    RestPath(account): RestPath<String>,
    req: Request,
) -> Response {
    rest(st, req, "admin:CreateAccessKey", move |st, call, body| {
        let user = string_field(&body, "user")?;
        let id = string_field(&body, "access_key_id")?;
        let secret = string_field(&body, "secret_access_key")?.map(Zeroizing::new);
        let key = match (id, secret) {
            (None, None) => st.kms.create_access_key(call, &account, user.as_deref())?,
            (Some(id), Some(secret)) => st.kms.import_access_key(
                call,
                &account,
                user.as_deref(),
                &id,
                atrest_crypto::SecretBytes::new(secret.as_bytes().to_vec()),
            )?,
            _ => {
                return Err(KmsError::Validation(
                    "Give both access_key_id and secret_access_key to import a key, or neither to create one.".into(),
                )
                .into());
            }
        };
        let created = AccessKeyCreated {
            account: key.account.as_str().to_owned(),
            user,
            access_key_id: key.access_key_id.clone(),
            secret_access_key: String::from_utf8_lossy(key.secret_access_key.expose()).into_owned(),
        };
        let answer = reply(StatusCode::CREATED, &created);
        // The secret's copy is wiped; the answer's is sent once.
        drop(Zeroizing::new(created.secret_access_key));
        answer
    })
    .await
}

#[utoipa::path(
    get,
    path = "/v1/accounts/{account}/access-keys",
    tag = "admin",
    operation_id = "ListAccessKeys",
    params(("account" = String, Path, description = "Account id (12 digits)")),
    responses(
        (status = 200, description = "The account's access keys", body = AccessKeyList),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Server fault", body = ErrorBody),
    )
)]
pub(crate) async fn list_access_keys(
    State(st): State<Arc<AppState>>,
    RestPath(account): RestPath<String>,
    req: Request,
) -> Response {
    rest(st, req, "admin:ListAccessKeys", move |st, call, _| {
        let access_keys = st.kms.list_access_keys(call, &account)?;
        reply(StatusCode::OK, &AccessKeyList { access_keys })
    })
    .await
}

/// `POST /v1/accounts/{account}/users`: the body.
#[derive(Deserialize, ToSchema)]
#[allow(
    dead_code,
    reason = "documents the body, which is read member by member"
)]
pub(crate) struct CreateUserRequest {
    /// The user name: 1 to 64 of letters, digits and `+=,.@_-`.
    #[schema(pattern = "^[A-Za-z0-9+=,.@_-]{1,64}$")]
    name: String,
}

/// An account's users.
#[derive(Serialize, ToSchema)]
pub(crate) struct UserList {
    /// The users.
    users: Vec<atrest_kms::UserInfo>,
}

#[utoipa::path(
    post,
    path = "/v1/accounts/{account}/users",
    tag = "admin",
    operation_id = "CreateUser",
    params(("account" = String, Path, description = "Account id (12 digits)")),
    request_body = CreateUserRequest,
    responses(
        (status = 201, description = "Created", body = atrest_kms::UserInfo),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Server fault", body = ErrorBody),
    )
)]
pub(crate) async fn create_user(
    State(st): State<Arc<AppState>>,
    RestPath(account): RestPath<String>,
    req: Request,
) -> Response {
    rest(st, req, "admin:CreateUser", move |st, call, body| {
        let name = required_field(&body, "name")?;
        let user = st.kms.create_user(call, &account, &name)?;
        reply(StatusCode::CREATED, &user)
    })
    .await
}

#[utoipa::path(
    get,
    path = "/v1/accounts/{account}/users",
    tag = "admin",
    operation_id = "ListUsers",
    params(("account" = String, Path, description = "Account id (12 digits)")),
    responses(
        (status = 200, description = "The account's users", body = UserList),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Server fault", body = ErrorBody),
    )
)]
pub(crate) async fn list_users(
    State(st): State<Arc<AppState>>,
    RestPath(account): RestPath<String>,
    req: Request,
) -> Response {
    rest(st, req, "admin:ListUsers", move |st, call, _| {
        let users = st.kms.list_users(call, &account)?;
        reply(StatusCode::OK, &UserList { users })
    })
    .await
}

/// A policy document: an IAM-style JSON object, or that object as a
/// string.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
#[allow(
    dead_code,
    reason = "documents the body, which is read member by member"
)]
pub(crate) enum PolicyDocument {
    /// The document as a JSON string.
    Text(String),
    /// The document as a JSON object.
    Object(std::collections::BTreeMap<String, Value>),
}

/// `PUT /v1/accounts/{account}/users/{user}/policies/{policy}`: the body.
#[derive(Deserialize, ToSchema)]
#[allow(
    dead_code,
    reason = "documents the body, which is read member by member"
)]
pub(crate) struct PutUserPolicyRequest {
    /// The policy.
    document: PolicyDocument,
}

/// A user policy, named.
#[derive(Serialize, ToSchema)]
pub(crate) struct UserPolicyRef {
    /// The account.
    account: String,
    /// The user.
    user: String,
    /// The policy name.
    policy: String,
}

/// A user policy and its document.
#[derive(Serialize, ToSchema)]
pub(crate) struct UserPolicy {
    /// The account.
    account: String,
    /// The user.
    user: String,
    /// The policy name.
    policy: String,
    /// The policy document (JSON text).
    document: String,
}

#[utoipa::path(
    put,
    path = "/v1/accounts/{account}/users/{user}/policies/{policy}",
    tag = "admin",
    operation_id = "PutUserPolicy",
    params(
        ("account" = String, Path, description = "Account id (12 digits)"),
        ("user" = String, Path, description = "User name"),
        ("policy" = String, Path, description = "Policy name"),
    ),
    request_body = PutUserPolicyRequest,
    responses(
        (status = 200, description = "Stored", body = UserPolicyRef),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Server fault", body = ErrorBody),
    )
)]
pub(crate) async fn put_user_policy(
    State(st): State<Arc<AppState>>,
    RestPath((account, user, policy)): RestPath<(String, String, String)>,
    req: Request,
) -> Response {
    rest(st, req, "admin:PutUserPolicy", move |st, call, body| {
        let document = match body.get("document") {
            Some(Value::String(s)) => s.clone(),
            Some(v @ Value::Object(_)) => v.to_string(),
            _ => {
                return Err(KmsError::Validation(
                    "'document' (the policy, as a JSON object or string) is required".into(),
                )
                .into());
            }
        };
        st.kms
            .put_user_policy(call, &account, &user, &policy, &document)?;
        reply(
            StatusCode::OK,
            &UserPolicyRef {
                account,
                user,
                policy,
            },
        )
    })
    .await
}

#[utoipa::path(
    get,
    path = "/v1/accounts/{account}/users/{user}/policies/{policy}",
    tag = "admin",
    operation_id = "GetUserPolicy",
    params(
        ("account" = String, Path, description = "Account id (12 digits)"),
        ("user" = String, Path, description = "User name"),
        ("policy" = String, Path, description = "Policy name"),
    ),
    responses(
        (status = 200, description = "The policy", body = UserPolicy),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Server fault", body = ErrorBody),
    )
)]
pub(crate) async fn get_user_policy(
    State(st): State<Arc<AppState>>,
    RestPath((account, user, policy)): RestPath<(String, String, String)>,
    req: Request,
) -> Response {
    rest(st, req, "admin:GetUserPolicy", move |st, call, _| {
        let document = st.kms.get_user_policy(call, &account, &user, &policy)?;
        reply(
            StatusCode::OK,
            &UserPolicy {
                account,
                user,
                policy,
                document,
            },
        )
    })
    .await
}

#[utoipa::path(
    delete,
    path = "/v1/accounts/{account}/users/{user}/policies/{policy}",
    tag = "admin",
    operation_id = "DeleteUserPolicy",
    params(
        ("account" = String, Path, description = "Account id (12 digits)"),
        ("user" = String, Path, description = "User name"),
        ("policy" = String, Path, description = "Policy name"),
    ),
    responses(
        (status = 200, description = "Deleted (answers the policy name)", body = Deleted),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Server fault", body = ErrorBody),
    )
)]
pub(crate) async fn delete_user_policy(
    State(st): State<Arc<AppState>>,
    RestPath((account, user, policy)): RestPath<(String, String, String)>,
    req: Request,
) -> Response {
    rest(st, req, "admin:DeleteUserPolicy", move |st, call, _| {
        st.kms.delete_user_policy(call, &account, &user, &policy)?;
        reply(StatusCode::OK, &Deleted { deleted: policy })
    })
    .await
}

/// Whether an account is suspended.
#[derive(Serialize, ToSchema)]
pub(crate) struct AccountSuspension {
    /// The account id.
    id: String,
    /// Whether it is now suspended.
    suspended: bool,
}

#[utoipa::path(
    post,
    path = "/v1/accounts/{account}/suspend",
    tag = "admin",
    operation_id = "SuspendAccount",
    params(("account" = String, Path, description = "Account id (12 digits)")),
    responses(
        (status = 200, description = "Suspended", body = AccountSuspension),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Server fault", body = ErrorBody),
    )
)]
pub(crate) async fn suspend_account(
    State(st): State<Arc<AppState>>,
    RestPath(account): RestPath<String>,
    req: Request,
) -> Response {
    rest(st, req, "admin:SuspendAccount", move |st, call, _| {
        st.kms.set_suspended(call, &account, true)?;
        reply(
            StatusCode::OK,
            &AccountSuspension {
                id: account,
                suspended: true,
            },
        )
    })
    .await
}

#[utoipa::path(
    post,
    path = "/v1/accounts/{account}/resume",
    tag = "admin",
    operation_id = "ResumeAccount",
    params(("account" = String, Path, description = "Account id (12 digits)")),
    responses(
        (status = 200, description = "Resumed", body = AccountSuspension),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Server fault", body = ErrorBody),
    )
)]
pub(crate) async fn resume_account(
    State(st): State<Arc<AppState>>,
    RestPath(account): RestPath<String>,
    req: Request,
) -> Response {
    rest(st, req, "admin:ResumeAccount", move |st, call, _| {
        st.kms.set_suspended(call, &account, false)?;
        reply(
            StatusCode::OK,
            &AccountSuspension {
                id: account,
                suspended: false,
            },
        )
    })
    .await
}

/// `GET /v1/audit`: the filters (every one that is given must match); the
/// operation's `params` document them.
#[derive(Deserialize)]
pub(crate) struct AuditQuery {
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
    /// At most this many records, the latest (default 1000, at most 100000).
    limit: Option<String>,
}

/// Audit records.
#[derive(Serialize, ToSchema)]
pub(crate) struct AuditRecords {
    /// The records, oldest first.
    records: Vec<atrest_audit::Record>,
}

/// `GET /v1/audit`: records by key, principal, operation and time. An
/// admin sees every account's; anyone else only their own account's.
#[utoipa::path(
    get,
    path = "/v1/audit",
    tag = "audit",
    operation_id = "QueryAudit",
    params(
        ("key" = Option<String>, Query, description = "A key ARN"),
        ("principal" = Option<String>, Query, description = "A principal ARN"),
        ("operation" = Option<String>, Query, description = "An operation (`Encrypt`, `disk:CreateDisk`, ...)"),
        ("since" = Option<String>, Query, description = "Records at or after this time (RFC 3339)"),
        ("until" = Option<String>, Query, description = "Records before this time (RFC 3339)"),
        ("limit" = Option<i64>, Query, minimum = 0, description = "At most this many records, the latest (default 1000; more than 100000 means 100000)"),
    ),
    responses(
        (status = 200, description = "Matching records", body = AuditRecords),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Server fault", body = ErrorBody),
    )
)]
pub(crate) async fn query_audit(
    State(st): State<Arc<AppState>>,
    RestQuery(q): RestQuery<AuditQuery>,
    req: Request,
) -> Response {
    rest(st, req, "admin:QueryAudit", move |st, call, _| {
        let limit = match &q.limit {
            None => Some(1000),
            // An int64 as documented; above 100000 means 100000.
            Some(l) => Some(
                l.parse::<i64>()
                    .ok()
                    .and_then(|l| usize::try_from(l).ok())
                    .ok_or_else(|| {
                        KmsError::Validation("'limit' must be a non-negative number".into())
                    })?
                    .min(100_000),
            ),
        };
        let filter = atrest_audit::Filter {
            key_arn: q.key,
            principal: q.principal,
            operation: q.operation,
            since: q.since,
            until: q.until,
            limit: None,
        };
        let mine = call.caller.account.as_str().to_owned();
        let admin = call.caller.admin;
        let mut records: Vec<atrest_audit::Record> = atrest_audit::query(&st.audit_dir, &filter)
            .map_err(|e| KmsError::Internal(e.to_string()))?
            .into_iter()
            .filter(|r| admin || r.entry.account.as_deref() == Some(mine.as_str()))
            .collect();
        if let Some(l) = limit
            && records.len() > l
        {
            records.drain(..records.len() - l);
        }
        reply(StatusCode::OK, &AuditRecords { records })
    })
    .await
}

/// The first record that failed verification.
#[derive(Serialize, ToSchema)]
pub(crate) struct BadRecord {
    /// Its line number (from 1).
    record: u64,
    /// What is wrong with it.
    reason: String,
}

/// The result of verifying the audit chain.
#[derive(Serialize, ToSchema)]
pub(crate) struct AuditVerification {
    /// Whether the whole log verified.
    verified: bool,
    /// Records that verified, before the first bad one.
    good_records: u64,
    /// The first bad record, if any.
    first_bad: Option<BadRecord>,
}

/// `POST /v1/audit/verify` (admins): checks the whole chain.
#[utoipa::path(
    post,
    path = "/v1/audit/verify",
    tag = "audit",
    operation_id = "VerifyAudit",
    responses(
        (status = 200, description = "The verification's result", body = AuditVerification),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Server fault", body = ErrorBody),
    )
)]
pub(crate) async fn verify_audit(State(st): State<Arc<AppState>>, req: Request) -> Response {
    rest(st, req, "admin:VerifyAudit", move |st, call, _| {
        KeyService::require_admin_caller(call.caller)?;
        let key = st.kms.audit_key()?;
        let report = atrest_audit::verify(&st.audit_dir, &key)
            .map_err(|e| KmsError::Internal(e.to_string()))?;
        let first_bad = report
            .first_bad
            .map(|(record, reason)| BadRecord { record, reason });
        reply(
            StatusCode::OK,
            &AuditVerification {
                verified: first_bad.is_none(),
                good_records: report.good,
                first_bad,
            },
        )
    })
    .await
}

/// `GET /v1/metering`: the account to report on.
#[derive(Deserialize)]
pub(crate) struct MeteringQuery {
    /// The account (admins: default every account; others: only their own).
    account: Option<String>,
}

/// Request counts.
#[derive(Serialize, ToSchema)]
pub(crate) struct MeteringReport {
    /// One row per account, region and operation.
    usage: Vec<crate::trail::Usage>,
}

/// `GET /v1/metering[?account=ID]`: request counts. Admins may see every
/// account; anyone else only their own.
#[utoipa::path(
    get,
    path = "/v1/metering",
    tag = "audit",
    operation_id = "Metering",
    params(("account" = Option<String>, Query, description = "The account (admins: default every account; others: only their own)")),
    responses(
        (status = 200, description = "Request counts", body = MeteringReport),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Server fault", body = ErrorBody),
    )
)]
pub(crate) async fn metering(
    State(st): State<Arc<AppState>>,
    RestQuery(q): RestQuery<MeteringQuery>,
    req: Request,
) -> Response {
    rest(st, req, "admin:Metering", move |st, call, _| {
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
        reply(
            StatusCode::OK,
            &MeteringReport {
                usage: st.trail.metering.usage(account.as_deref()),
            },
        )
    })
    .await
}

/// A service key of the caller's account.
#[derive(Serialize, ToSchema)]
pub(crate) struct ServiceKey {
    /// The service.
    service: String,
    /// The key's ARN.
    key_arn: String,
    /// Its alias (`alias/atrest/<service>`).
    alias: String,
}

/// `PUT /v1/service-keys/{service}`: makes sure the caller's account has
/// the service key of `service` in the signed region, creating it the first
/// time, as a service does when it first needs one. Returns its ARN.
#[utoipa::path(
    put,
    path = "/v1/service-keys/{service}",
    tag = "admin",
    operation_id = "EnsureServiceKey",
    params(("service" = String, Path, description = "The service's name")),
    responses(
        (status = 200, description = "The service key", body = ServiceKey),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Server fault", body = ErrorBody),
    )
)]
pub(crate) async fn ensure_service_key(
    State(st): State<Arc<AppState>>,
    RestPath(service): RestPath<String>,
    req: Request,
) -> Response {
    rest(st, req, "admin:EnsureServiceKey", move |st, call, _| {
        let session = st.kms.service_session(&service, &call.caller.region)?;
        let key_arn = session.service_key(&call.caller.account)?;
        let alias = format!("alias/atrest/{service}");
        reply(
            StatusCode::OK,
            &ServiceKey {
                service,
                key_arn,
                alias,
            },
        )
    })
    .await
}

/// A path extractor whose rejection (a segment that is not valid
/// percent-encoded UTF-8, say) is answered in the REST error shape and
/// recorded in the audit trail, like every other refusal.
pub(crate) struct RestPath<T>(pub T);

impl<T> FromRequestParts<Arc<AppState>> for RestPath<T>
where
    T: serde::de::DeserializeOwned + Send,
{
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        st: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, st).await {
            Ok(Path(v)) => Ok(Self(v)),
            Err(e) => Err(refuse_parts(st, parts, ApiError::BadRequestParts(e.body_text())).await),
        }
    }
}

/// A query-string extractor, answering its rejections like [`RestPath`].
pub(crate) struct RestQuery<T>(pub T);

impl<T> FromRequestParts<Arc<AppState>> for RestQuery<T>
where
    T: serde::de::DeserializeOwned + Send,
{
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        st: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, st).await {
            Ok(Query(v)) => Ok(Self(v)),
            Err(e) => Err(refuse_parts(st, parts, ApiError::BadRequestParts(e.body_text())).await),
        }
    }
}

async fn no_route(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let err = ApiError::NoRoute(req.uri().path().to_owned());
    unrouted(&st, req, err).await
}

async fn wrong_method(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let err = ApiError::WrongMethod(req.method().to_string(), req.uri().path().to_owned());
    unrouted(&st, req, err).await
}

/// Answers a request no handler takes, after recording it in the audit
/// trail (probing unknown paths is worth seeing there).
async fn unrouted(st: &AppState, req: Request, err: ApiError) -> Response {
    let (parts, body) = req.into_parts();
    drop(body);
    refuse_parts(st, &parts, err).await
}

/// Refuses a request before its handler runs (no route, wrong method, a
/// path or query the route cannot read): records it in the audit trail and
/// answers the REST error shape.
async fn refuse_parts(st: &AppState, parts: &Parts, err: ApiError) -> Response {
    let mut meta = RequestMeta::in_process();
    meta.source = parts
        .extensions
        .get::<Peer>()
        .map_or_else(|| "unknown".into(), |p| p.0.to_string());
    let method: String = parts.method.as_str().chars().take(16).collect();
    let path = parts.uri.path();
    let entry = refused_entry(&meta, &format!("http:{method}"), None, &err);
    if let Err(e) = st.trail.record(entry).await {
        tracing::error!(request_id = %meta.request_id, error = %e, "audit trail unavailable");
    }
    tracing::info!(request_id = %meta.request_id, source = %meta.source, path = %path, status = err.rest_parts().0.as_u16(), "request refused before its handler");
    rest_error_response(&err, &meta.request_id)
}
