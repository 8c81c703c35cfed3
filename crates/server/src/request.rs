//! What the AWS endpoint and the REST framework share about a request: its
//! peer, its bounded body, its SigV4 authentication, the audit record of a
//! refusal, and the REST error answer. Knows neither endpoint.

use std::net::SocketAddr;

use atrest_kms::{Caller, KeyService, RequestMeta};
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, StatusCode, header};
use http_body_util::{BodyExt, Limited};

use crate::error::{ApiError, ErrorBody};

/// The peer of a connection, inserted by the accept loop.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Peer(pub SocketAddr);

/// The outcome of a call, with what its audit record needs.
pub(crate) struct Outcome<T> {
    pub result: Result<T, ApiError>,
    pub entry: Option<atrest_audit::Entry>,
}

/// A request refused before its body was read leaves bytes on the
/// connection; close it rather than let a client reuse it.
pub(crate) fn close_if_body_unread(err: &ApiError, mut resp: Response) -> Response {
    if matches!(
        err,
        ApiError::BodyTooLarge(_) | ApiError::BodyRead(_) | ApiError::BodyTimeout(_)
    ) {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// The REST error answer (`{"code", "message", "requestId"}`).
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

/// How much of a body is read, and how long it may take.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyLimits {
    /// The most bytes.
    pub max: usize,
    /// The most time from the request's head to the body's last byte.
    pub timeout: std::time::Duration,
}

/// The body, at most `limits.max` bytes (a larger declared length is
/// refused before a byte is read), arrived within `limits.timeout` (else
/// 408, and the connection is closed).
pub(crate) async fn read_body(
    body: Body,
    headers: &http::HeaderMap,
    limits: BodyLimits,
) -> Result<Bytes, ApiError> {
    match tokio::time::timeout(limits.timeout, read_body_within(body, headers, limits.max)).await {
        Ok(r) => r,
        Err(_) => Err(ApiError::BodyTimeout(limits.timeout.as_secs())),
    }
}

async fn read_body_within(
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
/// and the access key id. The key's state is the key service's current one
/// (an in-memory lookup, invalidated by every change), so a deactivated or
/// deleted key is refused from the request after the change on. Notes the
/// key's use, in memory.
pub(crate) fn authenticate(
    kms: &KeyService,
    signing_keys: &atrest_sigv4::SigningKeyCache,
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
            regions: kms.regions(),
            now: time::OffsetDateTime::now_utc(),
        },
    )?;
    let Some(key) = kms.access_key(parsed.access_key_id())? else {
        return Err(atrest_sigv4::AuthError::UnrecognizedClient.into());
    };
    parsed.verify_cached(key.secret(), Some(signing_keys))?;
    if !key.active {
        return Err(ApiError::InactiveKey);
    }
    let used = if service == crate::REST_SERVICE {
        atrest_kms::AccessKeyUse::Rest
    } else {
        atrest_kms::AccessKeyUse::Kms
    };
    kms.note_access_key_use(parsed.access_key_id(), used, parsed.region());
    Ok((
        key.caller(parsed.region()),
        parsed.access_key_id().to_owned(),
    ))
}

/// The outcome of a request refused before its caller was known (no
/// signature, one that does not verify, an unknown access key; a body too
/// large, late or unreadable; a method or path nothing serves): counted in
/// the trail's refusals of its address, not recorded on its own (see
/// `crate::trail::Refusals`). An inactive access key's request is the
/// exception: its signature verified, so its sender holds a deactivated
/// key, which is worth a record of its own.
pub(crate) fn refused_unauthenticated<T>(
    trail: &crate::trail::Trail,
    meta: &RequestMeta,
    operation: &str,
    err: ApiError,
) -> Outcome<T> {
    if matches!(err, ApiError::InactiveKey) {
        return Outcome {
            entry: Some(refused_entry(meta, operation, None, &err)),
            result: Err(err),
        };
    }
    let ip = meta.source.parse::<SocketAddr>().ok().map(|a| a.ip());
    trail.note_refusal(ip, err.parts().1);
    Outcome {
        entry: None,
        result: Err(err),
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
