//! Routes and handlers: the KMS JSON endpoint, the admin REST API, health.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use atrest_kms::{Caller, KeyService, KmsError, Operation};
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, Method, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use serde_json::json;
use zeroize::Zeroizing;

use crate::error::ApiError;

/// The peer of a connection, inserted by the accept loop.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Peer(pub SocketAddr);

pub(crate) struct AppState {
    pub kms: Arc<KeyService>,
    pub max_body: usize,
    /// Access keys' secrets never change, so their derived signing keys can
    /// be cached per scope.
    pub signing_keys: atrest_sigv4::SigningKeyCache,
}

pub(crate) fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", any(kms_endpoint))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/v1/accounts", get(list_accounts).post(create_account))
        .route(
            "/v1/accounts/{account}/access-keys",
            get(list_access_keys).post(create_access_key),
        )
        .fallback(no_route)
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

/// A random request id. From AWS-LC's userspace DRBG rather than a
/// `getrandom` system call per request.
fn request_id() -> String {
    let bytes = atrest_crypto::rand::array::<16>().unwrap_or_default();
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
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

fn rest_error_response(err: &ApiError, request_id: &str) -> Response {
    let (status, ty, message) = err.parts();
    let body = json!({"code": ty, "message": message, "requestId": request_id}).to_string();
    let resp = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
    close_if_body_unread(err, resp)
}

async fn read_body(body: Body, headers: &http::HeaderMap, max: usize) -> Result<Bytes, ApiError> {
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

/// Verifies the request's SigV4 signature for `service`; returns the caller.
fn authenticate(
    st: &AppState,
    parts: &Parts,
    body: &[u8],
    service: &str,
) -> Result<Caller, ApiError> {
    let kms = &st.kms;
    let parsed = atrest_sigv4::parse_request(
        &parts.method,
        &parts.uri,
        &parts.headers,
        body,
        &atrest_sigv4::Policy {
            service,
            regions: kms.regions(),
            now: time::OffsetDateTime::now_utc(),
        },
    )?;
    let Some(key) = kms.access_key(parsed.access_key_id())? else {
        return Err(atrest_sigv4::AuthError::UnrecognizedClient.into());
    };
    parsed.verify_cached(key.secret(), Some(&st.signing_keys))?;
    if !key.active {
        return Err(ApiError::InactiveKey);
    }
    Ok(Caller {
        account: key.account.clone(),
        region: parsed.region().to_owned(),
        admin: key.admin,
    })
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

async fn kms_endpoint(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let id = request_id();
    let started = Instant::now();
    let peer = req.extensions().get::<Peer>().map(|p| p.0);
    let (parts, body) = req.into_parts();
    let target = parts
        .headers
        .get("x-amz-target")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let result = handle_kms(&st, &parts, body).await;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    match result {
        Ok((op, caller, out)) => {
            // Data-plane calls can number tens of thousands a second: they
            // are logged at debug (the audit trail will record every call).
            if op.is_read_only() {
                tracing::debug!(request_id = %id, peer = ?peer, operation = op.name(), account = %caller.account, region = %caller.region, status = 200, ms, "kms request");
            } else {
                tracing::info!(request_id = %id, peer = ?peer, operation = op.name(), account = %caller.account, region = %caller.region, status = 200, ms, "kms request");
            }
            let mut resp = Response::new(Body::from(Bytes::from_owner(Wipe(out))));
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-amz-json-1.1"),
            );
            if let Ok(v) = HeaderValue::from_str(&id) {
                h.insert("x-amzn-requestid", v);
            }
            resp
        }
        Err(err) => {
            let (status, ty, _) = err.parts();
            if err.is_server_fault() {
                tracing::error!(request_id = %id, peer = ?peer, target = ?target, error = ?err, "kms request failed (server fault)");
            } else {
                tracing::info!(request_id = %id, peer = ?peer, target = ?target, status = status.as_u16(), error_type = ty, ms, "kms request refused");
            }
            kms_error_response(&err, &id)
        }
    }
}

async fn handle_kms(
    st: &Arc<AppState>,
    parts: &Parts,
    body: Body,
) -> Result<(Operation, Caller, Zeroizing<Vec<u8>>), ApiError> {
    if parts.method != Method::POST {
        return Err(ApiError::Method);
    }
    let body = read_body(body, &parts.headers, st.max_body).await?;
    let caller = authenticate(st, parts, &body, "kms")?;
    let target = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let op = Operation::from_target(target).ok_or_else(|| {
        KmsError::UnknownOperation(if target.is_empty() {
            "The request has no X-Amz-Target header naming an operation.".into()
        } else {
            format!("Unknown operation {target}")
        })
    })?;
    content_type_ok(parts)?;
    let out = if op.is_read_only() {
        st.kms.call(&caller, op, &body)?
    } else {
        // Writes wait for an fsync; keep them off the reactor threads.
        let (kms, c) = (Arc::clone(&st.kms), caller.clone());
        tokio::task::spawn_blocking(move || kms.call(&c, op, &body))
            .await
            .map_err(|e| KmsError::Internal(format!("worker failed: {e}")))??
    };
    Ok((op, caller, out))
}

/// Runs an admin REST handler: authenticates (service `atrest`), reads the
/// JSON body, runs `f` off the reactor, and shapes the answer.
async fn rest<F>(st: Arc<AppState>, req: Request, f: F) -> Response
where
    F: FnOnce(
            &KeyService,
            &Caller,
            serde_json::Value,
        ) -> Result<(StatusCode, serde_json::Value), ApiError>
        + Send
        + 'static,
{
    let id = request_id();
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let method = parts.method.clone();
    let result = async {
        let body = read_body(body, &parts.headers, st.max_body).await?;
        let caller = authenticate(&st, &parts, &body, atrest_rest_service())?;
        let value: serde_json::Value = if body.iter().all(u8::is_ascii_whitespace) {
            json!({})
        } else {
            serde_json::from_slice(&body).map_err(|e| {
                KmsError::Serialization(format!("The request body is not valid JSON: {e}"))
            })?
        };
        let kms = Arc::clone(&st.kms);
        tokio::task::spawn_blocking(move || f(&kms, &caller, value))
            .await
            .map_err(|e| ApiError::Kms(KmsError::Internal(format!("worker failed: {e}"))))?
    }
    .await;
    match result {
        Ok((status, value)) => {
            tracing::info!(request_id = %id, %method, path, status = status.as_u16(), "rest request");
            (
                status,
                [(header::CONTENT_TYPE, "application/json")],
                value.to_string(),
            )
                .into_response()
        }
        Err(err) => {
            tracing::info!(request_id = %id, %method, path, error = %err.parts().1, "rest request refused");
            rest_error_response(&err, &id)
        }
    }
}

const fn atrest_rest_service() -> &'static str {
    "atrest"
}

fn string_field(v: &serde_json::Value, name: &str) -> Result<Option<String>, ApiError> {
    match v.get(name) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(KmsError::Serialization(format!("'{name}' must be a string")).into()),
    }
}

async fn create_account(State(st): State<Arc<AppState>>, req: Request) -> Response {
    rest(st, req, |kms, caller, body| {
        let id = string_field(&body, "id")?;
        let admin = match body.get("admin") {
            None | Some(serde_json::Value::Null) => false,
            Some(serde_json::Value::Bool(b)) => *b,
            Some(_) => {
                return Err(KmsError::Serialization("'admin' must be a boolean".into()).into());
            }
        };
        let account = kms.create_account(caller, id.as_deref(), admin)?;
        Ok((
            StatusCode::CREATED,
            json!({"id": account.as_str(), "admin": admin}),
        ))
    })
    .await
}

async fn list_accounts(State(st): State<Arc<AppState>>, req: Request) -> Response {
    rest(st, req, |kms, caller, _| {
        let accounts: Vec<_> = kms
            .list_accounts(caller)?
            .into_iter()
            .map(|(id, admin, created)| json!({"id": id, "admin": admin, "created": created}))
            .collect();
        Ok((StatusCode::OK, json!({"accounts": accounts})))
    })
    .await
}

/// `POST /v1/accounts/{account}/access-keys`: with an empty body, creates a
/// key and returns its secret once; with `access_key_id` and
/// `secret_access_key`, imports that pair.
async fn create_access_key(
    State(st): State<Arc<AppState>>,
    Path(account): Path<String>,
    req: Request,
) -> Response {
    rest(st, req, move |kms, caller, body| {
        let id = string_field(&body, "access_key_id")?;
        let secret = string_field(&body, "secret_access_key")?.map(Zeroizing::new);
        let key = match (id, secret) {
            (None, None) => kms.create_access_key(caller, &account)?,
            (Some(id), Some(secret)) => kms.import_access_key(
                caller,
                &account,
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
        let secret = Zeroizing::new(String::from_utf8_lossy(key.secret_access_key.expose()).into_owned());
        Ok((
            StatusCode::CREATED,
            json!({"account": key.account.as_str(), "access_key_id": key.access_key_id, "secret_access_key": secret.as_str()}),
        ))
    })
    .await
}

async fn list_access_keys(
    State(st): State<Arc<AppState>>,
    Path(account): Path<String>,
    req: Request,
) -> Response {
    rest(st, req, move |kms, caller, _| {
        let keys = kms.list_access_keys(caller, &account)?;
        Ok((StatusCode::OK, json!({"access_keys": keys})))
    })
    .await
}

async fn no_route(req: Request) -> Response {
    let id = request_id();
    rest_error_response(&ApiError::NoRoute(req.uri().path().to_owned()), &id)
}
