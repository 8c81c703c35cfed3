//! The web console's backend: sign-in against the key service's access
//! keys, and every console call made through this server's own router,
//! signed with the principal's access key (so authentication,
//! authorization, the audit record and metering are the API's own).

use std::net::SocketAddr;
use std::sync::Arc;

use atrest_console::{Answer, Call, Principal, SignInRefused};
use atrest_kms::RequestMeta;
use axum::Router;
use axum::body::Body;
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

use crate::request::Peer;
use crate::state::AppState;

/// The host name console calls are signed for (they never leave the
/// process).
const HOST: &str = "console.atrest.internal";

/// atrest's [`atrest_console::Backend`].
pub(crate) struct Backend {
    state: Arc<AppState>,
    /// The API's router (without the console) console calls go through.
    router: Router,
}

impl Backend {
    pub(crate) fn new(state: Arc<AppState>, router: Router) -> Self {
        Self { state, router }
    }

    fn region(&self) -> String {
        self.state
            .kms
            .regions()
            .first()
            .cloned()
            .unwrap_or_default()
    }

    fn principal_of(&self, key: &atrest_kms::CachedAccessKey) -> Principal {
        let region = self.region();
        let caller = key.caller(&region);
        Principal {
            account: caller.account.as_str().to_owned(),
            arn: caller.principal_arn(),
            admin: caller.admin,
            region,
        }
    }

    /// Records a console event (sign-in, sign-out) in the audit trail.
    async fn record(
        &self,
        operation: &'static str,
        access_key_id: &str,
        source: SocketAddr,
        key: Option<&atrest_kms::CachedAccessKey>,
        result: &str,
    ) {
        let mut meta = RequestMeta::in_process();
        meta.source = source.to_string();
        meta.access_key_id = Some(access_key_id.chars().take(128).collect());
        let entry = match key {
            Some(k) => {
                let caller = k.caller(&self.region());
                let call = atrest_kms::Call::new(&caller, &meta);
                call.set_operation(operation);
                self.state.kms.audit_entry(&call, result)
            }
            None => atrest_audit::Entry {
                time: atrest_kms::audit_time(meta.time),
                request_id: meta.request_id.clone(),
                access_key_id: meta.access_key_id.clone(),
                source: Some(meta.source.clone()),
                operation: operation.to_owned(),
                result: result.to_owned(),
                ..atrest_audit::Entry::default()
            },
        };
        if let Err(e) = self.state.trail.record(entry).await {
            tracing::error!(error = %e, operation, "the audit trail cannot record a console event");
        }
    }
}

impl atrest_console::Backend for Backend {
    async fn sign_in(
        &self,
        access_key_id: &str,
        secret: &str,
        source: SocketAddr,
    ) -> Result<Principal, SignInRefused> {
        let Ok(Some(key)) = self.state.kms.access_key(access_key_id) else {
            // An unknown key: counted per address, like an unsigned
            // API request (not one record each).
            self.state
                .trail
                .note_refusal(Some(source.ip()), "UnrecognizedClientException");
            return Err(SignInRefused::BadCredentials);
        };
        let matches = key.secret().len() == secret.len()
            && aws_lc_rs::constant_time::verify_slices_are_equal(key.secret(), secret.as_bytes())
                .is_ok();
        if !matches {
            self.record(
                "console:SignIn",
                access_key_id,
                source,
                Some(&key),
                "IncorrectSecret",
            )
            .await;
            return Err(SignInRefused::BadCredentials);
        }
        if !key.active {
            self.record(
                "console:SignIn",
                access_key_id,
                source,
                Some(&key),
                "InactiveAccessKey",
            )
            .await;
            return Err(SignInRefused::BadCredentials);
        }
        self.record(
            "console:SignIn",
            access_key_id,
            source,
            Some(&key),
            "Success",
        )
        .await;
        Ok(self.principal_of(&key))
    }

    fn principal(&self, access_key_id: &str) -> Option<Principal> {
        match self.state.kms.access_key(access_key_id) {
            Ok(Some(k)) if k.active => Some(self.principal_of(&k)),
            _ => None,
        }
    }

    async fn call(&self, access_key_id: &str, source: SocketAddr, call: Call) -> Answer {
        let refused = |status: StatusCode, message: String| Answer {
            status,
            body: serde_json::json!({ "code": "ConsoleError", "message": message }),
        };
        let Ok(Some(key)) = self.state.kms.access_key(access_key_id) else {
            return refused(StatusCode::UNAUTHORIZED, "The access key is gone.".into());
        };
        let (method, uri, body, service, target, content_type) = match call {
            Call::Kms { op, body } => (
                Method::POST,
                "/".to_owned(),
                body.to_string().into_bytes(),
                "kms",
                Some(format!("TrentService.{op}")),
                Some("application/x-amz-json-1.1"),
            ),
            Call::Rest { method, path, body } => {
                let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
                let ct = (!bytes.is_empty()).then_some("application/json");
                (method, path, bytes, crate::REST_SERVICE, None, ct)
            }
        };
        let Ok(uri) = uri.parse::<http::Uri>() else {
            return refused(StatusCode::BAD_REQUEST, "A bad path.".into());
        };
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::HOST, HeaderValue::from_static(HOST));
        if let Some(ct) = content_type {
            headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(ct));
        }
        if let Some(t) = target
            && let Ok(v) = HeaderValue::from_str(&t)
        {
            headers.insert("x-amz-target", v);
        }
        let region = self.region();
        if let Err(e) = atrest_sigv4::sign_cached(
            &method,
            &uri,
            &mut headers,
            &body,
            &atrest_sigv4::Credentials {
                access_key_id,
                secret_access_key: key.secret(),
            },
            &atrest_sigv4::Scope {
                region: &region,
                service,
                time: time::OffsetDateTime::now_utc(),
            },
            Some(&self.state.signing_keys),
        ) {
            return refused(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
        }
        let mut req = Request::new(Body::from(body));
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        req.extensions_mut().insert(Peer(source));
        let resp = match self.router.clone().oneshot(req).await {
            Ok(r) => r,
            Err(e) => match e {},
        };
        let status = resp.status();
        let bytes = match resp.into_body().collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) => return refused(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        };
        let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        Answer { status, body }
    }

    async fn signed_out(&self, access_key_id: &str, source: SocketAddr) {
        let key = self.state.kms.access_key(access_key_id).ok().flatten();
        self.record(
            "console:SignOut",
            access_key_id,
            source,
            key.as_deref(),
            "Success",
        )
        .await;
    }

    fn source(&self, request: &http::request::Parts) -> Option<SocketAddr> {
        request.extensions.get::<Peer>().map(|p| p.0)
    }

    fn api_url(&self) -> String {
        self.state.cluster.api_url()
    }

    fn nbd_addr(&self) -> Option<String> {
        self.state.cluster.nbd_addr()
    }
}
