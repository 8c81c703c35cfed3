//! Node-to-node calls: `/internal/v1/...`, outside the customer API.
//!
//! Nodes sharing a store share the root of trust, so they share the key
//! derived from it for this purpose (`KeyService::cluster_key`,
//! `atrest/cluster/v1`). Every call is authenticated both ways with
//! HMAC-SHA256 under that key; a customer's credentials are never looked at
//! here, and no access key opens these routes.
//!
//! * A request carries `x-atrest-node` (the caller's node id),
//!   `x-atrest-time` (milliseconds since the epoch, within
//!   [`MAX_SKEW_MS`] of the callee's clock), `x-atrest-nonce` (32 hex
//!   digits, never accepted twice while its time is acceptable) and
//!   `x-atrest-mac`, the hex HMAC of
//!   `atrest-internal-request-v1\n<method>\n<path?query>\n<time>\n<nonce>\n<node>\n<hex sha256 of the body>`.
//!   Anything else (no MAC, a bad one, a time outside the window, a nonce
//!   seen before) is refused with 403 and counted with the refusals before
//!   authentication.
//! * The answer carries `x-atrest-mac`, the hex HMAC of
//!   `atrest-internal-response-v1\n<the request's nonce>\n<status>\n<hex sha256 of the body>`,
//!   which the caller checks before it believes a byte of it.
//!
//! Routes: `POST /internal/v1/audit/verify` (this node's chain verified,
//! and the mac of the record the caller names), `GET
//! /internal/v1/audit/records?...` (this node's records, newest first, as
//! `atrest_audit::query_newest` finds them).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use atrest_crypto::SecretKey;
use atrest_crypto::hash::{HmacSha256Key, sha256};
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};

use crate::state::AppState;

const H_NODE: &str = "x-atrest-node";
const H_TIME: &str = "x-atrest-time";
const H_NONCE: &str = "x-atrest-nonce";
const H_MAC: &str = "x-atrest-mac";
/// How far a request's time may be from the callee's clock.
pub(crate) const MAX_SKEW_MS: i64 = 60_000;
/// The largest request body an internal route reads.
const MAX_BODY: usize = 64 << 10;
/// Nonces remembered at most (only requests with a good MAC add one).
const MAX_NONCES: usize = 200_000;
/// How long a connection to another node may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a call to another node may take, all in.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(10);

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

pub(crate) fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(i64::MAX)
}

/// Why an internal request is refused (never told apart to the caller).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    /// A header is missing or malformed.
    #[error("missing or malformed {0}")]
    Header(&'static str),
    /// The MAC does not verify.
    #[error("the request's MAC does not verify")]
    Mac,
    /// The time is outside the window.
    #[error("the request's time is {0} ms from this node's clock")]
    Time(i64),
    /// The nonce was used before.
    #[error("the request's nonce was used before (a replay)")]
    Replay,
    /// Too many nonces to remember.
    #[error("too many internal requests to remember their nonces")]
    Busy,
}

/// The MAC scheme and the nonces seen.
pub(crate) struct ClusterAuth {
    key: HmacSha256Key,
    /// Nonce -> the request time it came with (forgotten once outside the
    /// window: a replay then fails the time check).
    seen: Mutex<HashMap<String, i64>>,
}

impl ClusterAuth {
    /// The scheme under `key` (the cluster key).
    pub(crate) fn new(key: &SecretKey<32>) -> Self {
        Self {
            key: HmacSha256Key::new(key.expose()),
            seen: Mutex::new(HashMap::new()),
        }
    }

    fn sign(&self, parts: &[&str]) -> String {
        hex(&self.key.sign(parts.join("\n").as_bytes()))
    }

    /// The MAC of a request.
    pub(crate) fn request_mac(
        &self,
        method: &str,
        path_and_query: &str,
        time: &str,
        nonce: &str,
        node: &str,
        body: &[u8],
    ) -> String {
        self.sign(&[
            "atrest-internal-request-v1",
            method,
            path_and_query,
            time,
            nonce,
            node,
            &hex(&sha256(body)),
        ])
    }

    /// The MAC of an answer to the request with `nonce`.
    pub(crate) fn response_mac(&self, nonce: &str, status: u16, body: &[u8]) -> String {
        self.sign(&[
            "atrest-internal-response-v1",
            nonce,
            &status.to_string(),
            &hex(&sha256(body)),
        ])
    }

    /// The headers of a request made now.
    pub(crate) fn request_headers(
        &self,
        node: &str,
        method: &str,
        path_and_query: &str,
        body: &[u8],
        time_ms: i64,
    ) -> Vec<(&'static str, String)> {
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        let time = time_ms.to_string();
        let mac = self.request_mac(method, path_and_query, &time, &nonce, node, body);
        vec![
            (H_NODE, node.to_owned()),
            (H_TIME, time),
            (H_NONCE, nonce),
            (H_MAC, mac),
        ]
    }

    /// Checks a request at `now_ms`; answers its nonce (and the caller's
    /// node id) if it is authentic, fresh and new.
    pub(crate) fn check_request(
        &self,
        now_ms: i64,
        method: &str,
        path_and_query: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(String, String), Refusal> {
        let get = |name: &'static str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .ok_or(Refusal::Header(name))
        };
        let (node, time, nonce, mac) = (get(H_NODE)?, get(H_TIME)?, get(H_NONCE)?, get(H_MAC)?);
        if nonce.len() != 32 || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Refusal::Header(H_NONCE));
        }
        let t: i64 = time.parse().map_err(|_| Refusal::Header(H_TIME))?;
        let want = self.request_mac(method, path_and_query, time, nonce, node, body);
        if !atrest_crypto::ct_eq(want.as_bytes(), mac.as_bytes()) {
            return Err(Refusal::Mac);
        }
        let skew = now_ms.saturating_sub(t);
        if skew.abs() > MAX_SKEW_MS {
            return Err(Refusal::Time(skew));
        }
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.contains_key(nonce) {
            return Err(Refusal::Replay);
        }
        if seen.len() >= MAX_NONCES {
            seen.retain(|_, at| now_ms.saturating_sub(*at).abs() <= MAX_SKEW_MS);
            if seen.len() >= MAX_NONCES {
                return Err(Refusal::Busy);
            }
        }
        seen.insert(nonce.to_owned(), t);
        Ok((nonce.to_owned(), node.to_owned()))
    }
}

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// This node's client to the others.
pub(crate) struct Peers {
    pub(crate) auth: ClusterAuth,
    me: String,
    client: HyperClient<Connector, Full<Bytes>>,
}

impl core::fmt::Debug for Peers {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Peers")
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

impl Peers {
    /// A client for node `me`, under the cluster key. Over HTTPS it trusts
    /// the public roots and the certificates in `ca_file` (this node's own
    /// certificate chain: nodes usually share a CA).
    pub(crate) fn new(
        key: &SecretKey<32>,
        me: String,
        ca_file: Option<&Path>,
    ) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = ca_file {
            use rustls_pki_types::CertificateDer;
            use rustls_pki_types::pem::PemObject;
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            for cert in certs.flatten() {
                // A leaf that is no CA is not a trust anchor; skip it.
                let _ = roots.add(cert);
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = HyperClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Self {
            auth: ClusterAuth::new(key),
            me,
            client,
        })
    }

    /// Calls `path_and_query` (under `/internal/v1/`) on the node at `api_url`;
    /// answers the body of a 200 whose MAC verifies, within `timeout`.
    pub(crate) async fn call(
        &self,
        api_url: &str,
        method: Method,
        path_and_query: &str,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, String> {
        let uri: http::Uri = format!("{}{path_and_query}", api_url.trim_end_matches('/'))
            .parse()
            .map_err(|e| format!("{api_url}: {e}"))?;
        let headers =
            self.auth
                .request_headers(&self.me, method.as_str(), path_and_query, &body, now_ms());
        let nonce = headers
            .iter()
            .find(|(n, _)| *n == H_NONCE)
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let mut req = http::Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            req = req.header(name, value);
        }
        let req = req
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let answer = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| atrest_client_error(&e))?;
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            Ok::<_, String>((parts, body))
        };
        let (parts, body) = tokio::time::timeout(timeout, answer)
            .await
            .map_err(|_| format!("no answer within {} s", timeout.as_secs()))??;
        let mac = parts
            .headers
            .get(H_MAC)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let want = self.auth.response_mac(&nonce, parts.status.as_u16(), &body);
        if !atrest_crypto::ct_eq(want.as_bytes(), mac.as_bytes()) {
            return Err(format!(
                "its answer (HTTP {}) is not authenticated by the cluster key: {}",
                parts.status.as_u16(),
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ));
        }
        if parts.status != StatusCode::OK {
            return Err(format!(
                "it answered HTTP {}: {}",
                parts.status.as_u16(),
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ));
        }
        Ok(body)
    }
}

/// An error's whole chain, on one line.
fn atrest_client_error(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// `POST /internal/v1/audit/verify`'s body.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct VerifyRequest {
    /// The seq whose mac the caller wants (the head this node published).
    #[serde(default)]
    pub check_seq: Option<u64>,
}

/// `POST /internal/v1/audit/verify`'s answer.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct VerifyAnswer {
    /// Records that verified.
    pub good: u64,
    /// The first bad one and why.
    pub first_bad: Option<(u64, String)>,
    /// The mac of record `check_seq`, if the log holds it.
    pub mac_at: Option<String>,
}

/// `GET /internal/v1/audit/records`' query.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct RecordsQuery {
    pub account: Option<String>,
    pub key: Option<String>,
    pub principal: Option<String>,
    pub operation: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub before: Option<u64>,
    pub limit: Option<usize>,
}

impl RecordsQuery {
    pub(crate) fn filter(&self) -> atrest_audit::Filter {
        atrest_audit::Filter {
            account: self.account.clone(),
            key_arn: self.key.clone(),
            principal: self.principal.clone(),
            operation: self.operation.clone(),
            since: self.since.clone(),
            until: self.until.clone(),
            before: self.before,
            limit: Some(self.limit.unwrap_or(1001).min(1001)),
        }
    }
}

/// `GET /internal/v1/audit/records`' answer.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct RecordsAnswer {
    /// Newest first.
    pub records: Vec<atrest_audit::Record>,
}

/// This node's verification of its own chain, and the mac at `check_seq`.
pub(crate) fn verify_here(st: &AppState, check_seq: Option<u64>) -> Result<VerifyAnswer, String> {
    let key = st.kms.audit_key().map_err(|e| e.to_string())?;
    let report = atrest_audit::verify(&st.audit_dir, &key).map_err(|e| e.to_string())?;
    let mac_at = match check_seq {
        Some(seq) if seq <= report.good => {
            atrest_audit::mac_at(&st.audit_dir, seq).map_err(|e| e.to_string())?
        }
        _ => None,
    };
    Ok(VerifyAnswer {
        good: report.good,
        first_bad: report.first_bad,
        mac_at,
    })
}

/// The handler of every route under `/internal/v1/`.
pub(crate) async fn handle(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let peer = parts
        .extensions
        .get::<crate::request::Peer>()
        .map(|p| p.0.ip());
    let refuse = |why: String| {
        st.trail.note_refusal(peer, "InternalAuthenticationFailure");
        tracing::info!(source = ?peer, path = %parts.uri.path(), reason = %why, "internal call refused");
        (
            StatusCode::FORBIDDEN,
            [(http::header::CONTENT_TYPE, "application/json")],
            r#"{"error":"Forbidden","message":"not an authenticated node-to-node call"}"#,
        )
            .into_response()
    };
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return refuse(format!("reading the body: {e}")),
    };
    let pq = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned());
    let (nonce, caller) = match st.peers.auth.check_request(
        now_ms(),
        parts.method.as_str(),
        &pq,
        &parts.headers,
        &body,
    ) {
        Ok(x) => x,
        Err(e) => return refuse(e.to_string()),
    };
    let st2 = Arc::clone(&st);
    let (method, path, query) = (
        parts.method.clone(),
        parts.uri.path().to_owned(),
        parts.uri.query().unwrap_or("").to_owned(),
    );
    tracing::debug!(%caller, %method, %path, "internal call");
    let answer = tokio::task::spawn_blocking(move || -> (StatusCode, String) {
        let json = |v: Result<String, String>| match v {
            Ok(s) => (StatusCode::OK, s),
            Err(e) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                serde_json::json!({ "error": "InternalFailure", "message": e }).to_string(),
            ),
        };
        match (method, path.as_str()) {
            (Method::POST, "/internal/v1/audit/verify") => {
                let req: VerifyRequest = match serde_json::from_slice(&body) {
                    Ok(r) => r,
                    Err(e) => {
                        return (
                            StatusCode::BAD_REQUEST,
                            serde_json::json!({ "error": "ValidationException", "message": e.to_string() }).to_string(),
                        );
                    }
                };
                json(verify_here(&st2, req.check_seq).and_then(|a| {
                    serde_json::to_string(&a).map_err(|e| e.to_string())
                }))
            }
            (Method::GET, "/internal/v1/audit/records") => {
                let q: RecordsQuery = match serde_urlencoded::from_str(&query) {
                    Ok(q) => q,
                    Err(e) => {
                        return (
                            StatusCode::BAD_REQUEST,
                            serde_json::json!({ "error": "ValidationException", "message": e.to_string() }).to_string(),
                        );
                    }
                };
                json(
                    atrest_audit::query_newest(&st2.audit_dir, &q.filter())
                        .map_err(|e| e.to_string())
                        .and_then(|records| {
                            serde_json::to_string(&RecordsAnswer { records })
                                .map_err(|e| e.to_string())
                        }),
                )
            }
            (m, p) => (
                StatusCode::NOT_FOUND,
                serde_json::json!({ "error": "NotFound", "message": format!("no internal route {m} {p}") }).to_string(),
            ),
        }
    })
    .await
    .unwrap_or_else(|e| {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({ "error": "InternalFailure", "message": e.to_string() }).to_string(),
        )
    });
    let (status, text) = answer;
    let mac = st
        .peers
        .auth
        .response_mac(&nonce, status.as_u16(), text.as_bytes());
    let mut resp = (
        status,
        [(http::header::CONTENT_TYPE, "application/json")],
        text,
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&mac) {
        resp.headers_mut().insert(H_MAC, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(byte: u8) -> ClusterAuth {
        ClusterAuth::new(&SecretKey::from_slice(&[byte; 32]).unwrap())
    }

    fn headers(h: &[(&'static str, String)]) -> HeaderMap {
        let mut out = HeaderMap::new();
        for (n, v) in h {
            out.insert(*n, HeaderValue::from_str(v).unwrap());
        }
        out
    }

    const PQ: &str = "/internal/v1/audit/records?limit=5";

    #[test]
    fn a_signed_request_passes_once_and_its_answer_verifies() {
        let a = auth(1);
        let now = 1_800_000_000_000;
        let h = a.request_headers("node-a", "GET", PQ, b"", now);
        let (nonce, node) = a
            .check_request(now + 1000, "GET", PQ, &headers(&h), b"")
            .unwrap();
        assert_eq!(node, "node-a");
        // The same request again is a replay.
        assert_eq!(
            a.check_request(now + 2000, "GET", PQ, &headers(&h), b""),
            Err(Refusal::Replay)
        );
        // The answer's MAC binds the nonce, the status and the body.
        let mac = a.response_mac(&nonce, 200, b"{}");
        assert_eq!(mac, a.response_mac(&nonce, 200, b"{}"));
        assert_ne!(mac, a.response_mac(&nonce, 200, b"{ }"));
        assert_ne!(mac, a.response_mac(&nonce, 500, b"{}"));
        assert_ne!(mac, a.response_mac(&"0".repeat(32), 200, b"{}"));
        assert_ne!(mac, auth(2).response_mac(&nonce, 200, b"{}"));
    }

    #[test]
    fn forged_altered_and_stale_requests_are_refused() {
        let a = auth(1);
        let now = 1_800_000_000_000;
        let fresh = |body: &[u8]| a.request_headers("node-a", "POST", PQ, body, now);
        // Another key (a forger without the root).
        let forged = auth(9).request_headers("node-a", "POST", PQ, b"{}", now);
        assert_eq!(
            a.check_request(now, "POST", PQ, &headers(&forged), b"{}"),
            Err(Refusal::Mac)
        );
        // Altered: method, path, query, body, node, time.
        let h = fresh(b"{}");
        for (method, pq, body) in [
            ("GET", PQ, &b"{}"[..]),
            ("POST", "/internal/v1/audit/verify", b"{}"),
            ("POST", "/internal/v1/audit/records?limit=6", b"{}"),
            ("POST", PQ, b"{\"check_seq\":1}"),
        ] {
            assert_eq!(
                a.check_request(now, method, pq, &headers(&h), body),
                Err(Refusal::Mac),
                "{method} {pq}"
            );
        }
        for (name, value) in [(H_NODE, "node-b"), (H_TIME, "1800000000001")] {
            let mut changed = headers(&h);
            changed.insert(name, HeaderValue::from_static(value));
            assert_eq!(
                a.check_request(now, "POST", PQ, &changed, b"{}"),
                Err(Refusal::Mac),
                "{name}"
            );
        }
        // Missing headers.
        for name in [H_NODE, H_TIME, H_NONCE, H_MAC] {
            let mut less = headers(&h);
            less.remove(name);
            assert_eq!(
                a.check_request(now, "POST", PQ, &less, b"{}"),
                Err(Refusal::Header(name))
            );
        }
        // Genuine, but too old or too far in the future.
        let old = a.request_headers("node-a", "POST", PQ, b"{}", now - MAX_SKEW_MS - 1);
        assert!(matches!(
            a.check_request(now, "POST", PQ, &headers(&old), b"{}"),
            Err(Refusal::Time(_))
        ));
        let early = a.request_headers("node-a", "POST", PQ, b"{}", now + MAX_SKEW_MS + 1);
        assert!(matches!(
            a.check_request(now, "POST", PQ, &headers(&early), b"{}"),
            Err(Refusal::Time(_))
        ));
        // And the untouched one passes.
        assert!(
            a.check_request(now, "POST", PQ, &headers(&h), b"{}")
                .is_ok()
        );
    }
}
