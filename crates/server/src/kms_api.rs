//! The AWS KMS endpoint: `POST /` with `X-Amz-Target: TrentService.*`
//! and a JSON 1.1 body, dispatched to the key service's typed operations.

use std::sync::Arc;
use std::time::Instant;

use atrest_kms::{Call, Caller, KeyService, KmsError, Operation, RequestMeta};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, Method, header};
use serde_json::json;
use zeroize::Zeroizing;

use crate::error::ApiError;
use crate::request::{
    Outcome, Peer, authenticate, close_if_body_unread, read_body, refused_entry,
    refused_unauthenticated,
};
use crate::state::AppState;

/// A response body that is wiped from memory once sent (it may hold
/// plaintext data keys).
struct Wipe(Zeroizing<Vec<u8>>);

impl AsRef<[u8]> for Wipe {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// The JSON body of an error. AWS sends some errors
/// (InvalidCiphertextException, NotAuthorizedException) with no message at
/// all, as `{"__type":"InvalidCiphertextException"}`: so does atrest.
fn kms_error_body(ty: &str, message: &str) -> String {
    if message.is_empty() {
        json!({ "__type": ty })
    } else {
        json!({"__type": ty, "message": message})
    }
    .to_string()
}

fn kms_error_response(err: &ApiError, request_id: &str) -> Response {
    let (status, ty, message) = err.parts();
    let body = kms_error_body(ty, &message);
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

pub(crate) async fn kms_endpoint(State(st): State<Arc<AppState>>, req: Request) -> Response {
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
            if op.is_data_plane() {
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
            } else if err.before_authentication() {
                // Counted per address, logged with the aggregate record.
                tracing::debug!(request_id = %id, peer = ?peer, target = ?target, status = status.as_u16(), error_type = ty, ms, "kms request refused");
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
    let unauthenticated = |meta: &RequestMeta, err: ApiError| {
        let operation = refused_operation(target_header(&parts.headers).as_deref());
        refused_unauthenticated(&st.trail, meta, &operation, err)
    };
    if parts.method != Method::POST {
        return unauthenticated(meta, ApiError::Method);
    }
    let body = match read_body(body, &parts.headers, st.body).await {
        Ok(b) => b,
        Err(e) => return unauthenticated(meta, e),
    };
    let (caller, akid) = match authenticate(&st.kms, &st.signing_keys, parts, &body, "kms") {
        Ok(x) => x,
        Err(e) => return unauthenticated(meta, e),
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
    // Reads run on the reactor while they cannot block: a shared store
    // that is not confirmed current reads through to PostgreSQL, which may.
    let (result, entry) = if op.is_read_only()
        && !(op.may_call_provider() && st.kms.has_providers())
        && st.kms.store_is_current()
    {
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
    let mut call = Call::new(caller, meta);
    let mut result = kms.call(&call, op, body);
    if op.is_read_only()
        && matches!(result, Err(KmsError::NotFound(_)))
        && !kms.store_is_local()
        && kms.catch_up().is_ok()
    {
        // A key another node made a moment ago: once more, caught up.
        call = Call::new(caller, meta);
        result = kms.call(&call, op, body);
    }
    let entry = (!call.recorded()).then(|| {
        let outcome = match &result {
            Ok(_) => "Success",
            Err(e) => e.aws_type(),
        };
        kms.audit_entry(&call, outcome)
    });
    (result, entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_without_a_message_has_only_its_type() {
        assert_eq!(
            kms_error_body("InvalidCiphertextException", ""),
            r#"{"__type":"InvalidCiphertextException"}"#
        );
        let with: serde_json::Value = serde_json::from_str(&kms_error_body(
            "NotFoundException",
            "Key 'k' does not exist",
        ))
        .unwrap();
        assert_eq!(
            with,
            json!({"__type": "NotFoundException", "message": "Key 'k' does not exist"})
        );
    }
}
