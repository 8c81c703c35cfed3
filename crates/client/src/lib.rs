//! A small client for atrest: signs requests with SigV4 and sends them over
//! HTTP/1.1 keep-alive (plain or TLS).
//!
//! Owns: request signing for the KMS JSON API (service `kms`) and the REST
//! API (service `atrest`), connection pooling, and reading AWS shared
//! credentials files. Used by the CLI, the load generator and the tests.

#![forbid(unsafe_code)]

mod credentials;

use std::path::Path;
use std::sync::Arc;

use atrest_crypto::SecretBytes;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub use credentials::{Credentials, load_shared_credentials};

/// The service name atrest's REST API is signed for.
pub const REST_SERVICE: &str = "atrest";

/// Client errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The endpoint or a path is not a valid URI.
    #[error("invalid URL: {0}")]
    Url(String),
    /// TLS set-up failed (for example an unreadable CA file).
    #[error("TLS: {0}")]
    Tls(String),
    /// Sending the request or reading the response failed.
    #[error("request to {endpoint} failed: {reason}")]
    Transport {
        /// The endpoint.
        endpoint: String,
        /// What went wrong.
        reason: String,
    },
    /// The credentials could not be read.
    #[error("credentials: {0}")]
    Credentials(String),
    /// Signing failed.
    #[error("signing: {0}")]
    Sign(String),
}

/// A response: status and body.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status.
    pub status: StatusCode,
    /// Body bytes.
    pub body: Bytes,
}

impl Response {
    /// The body as JSON (`Null` if it is not JSON).
    #[must_use]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// AWS's `__type` of an error response, if any.
    #[must_use]
    pub fn error_type(&self) -> Option<String> {
        self.json()
            .get("__type")
            .and_then(|t| t.as_str())
            .map(str::to_owned)
    }
}

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// A signing client bound to one endpoint, identity and region.
#[derive(Clone)]
pub struct Client {
    http: HyperClient<Connector, Full<Bytes>>,
    endpoint: Uri,
    host: HeaderValue,
    creds: Arc<Credentials>,
    region: String,
    signing_keys: Arc<atrest_sigv4::SigningKeyCache>,
}

impl core::fmt::Debug for Client {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.endpoint)
            .field("access_key_id", &self.creds.access_key_id)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client for `endpoint` (`http://` or `https://`). `ca_file`, when
    /// given, is a PEM file of the CA certificates to trust (for a server with
    /// a private CA); otherwise Mozilla's public roots are trusted.
    pub fn new(
        endpoint: &str,
        creds: Credentials,
        region: &str,
        ca_file: Option<&Path>,
    ) -> Result<Self, ClientError> {
        let endpoint: Uri = endpoint
            .trim_end_matches('/')
            .parse()
            .map_err(|e| ClientError::Url(format!("{endpoint}: {e}")))?;
        let authority = endpoint
            .authority()
            .ok_or_else(|| ClientError::Url(format!("{endpoint} has no host")))?;
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|e| ClientError::Url(e.to_string()))?;
        let mut roots = rustls::RootCertStore::empty();
        if let Some(path) = ca_file {
            use rustls_pki_types::CertificateDer;
            use rustls_pki_types::pem::PemObject;
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| ClientError::Tls(format!("{}: {e}", path.display())))?;
            for cert in certs {
                let cert =
                    cert.map_err(|e| ClientError::Tls(format!("{}: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| ClientError::Tls(format!("{}: {e}", path.display())))?;
            }
        } else {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let http = HyperClient::builder(TokioExecutor::new())
            .pool_max_idle_per_host(1024)
            .build(connector);
        Ok(Self {
            http,
            endpoint,
            host,
            creds: Arc::new(creds),
            region: region.to_owned(),
            signing_keys: Arc::new(atrest_sigv4::SigningKeyCache::new()),
        })
    }

    /// The same client with another region.
    #[must_use]
    pub fn with_region(&self, region: &str) -> Self {
        let mut c = self.clone();
        region.clone_into(&mut c.region);
        c
    }

    /// Calls a KMS operation (`TrentService.<op>`) with a JSON body.
    pub async fn kms(&self, op: &str, body: &serde_json::Value) -> Result<Response, ClientError> {
        self.kms_raw(op, Bytes::from(body.to_string())).await
    }

    /// Calls a KMS operation with raw body bytes.
    pub async fn kms_raw(&self, op: &str, body: Bytes) -> Result<Response, ClientError> {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(self.endpoint.clone())
            .header("content-type", "application/x-amz-json-1.1")
            .header("x-amz-target", format!("TrentService.{op}"))
            .body(())
            .map_err(|e| ClientError::Url(e.to_string()))?;
        self.sign(&mut req, &body, "kms")?;
        self.send(req, body).await
    }

    /// Calls the REST API: `method` on `path` (for example `/v1/accounts`)
    /// with an optional JSON body.
    pub async fn rest(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Response, ClientError> {
        let scheme = self.endpoint.scheme_str().unwrap_or("http");
        let uri: Uri = format!(
            "{scheme}://{}{path}",
            self.host.to_str().unwrap_or_default()
        )
        .parse()
        .map_err(|e| ClientError::Url(format!("{path}: {e}")))?;
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let mut builder = Request::builder().method(method).uri(uri);
        if !body.is_empty() {
            builder = builder.header("content-type", "application/json");
        }
        let mut req = builder
            .body(())
            .map_err(|e| ClientError::Url(e.to_string()))?;
        self.sign(&mut req, &body, REST_SERVICE)?;
        self.send(req, body).await
    }

    fn sign(&self, req: &mut Request<()>, body: &[u8], service: &str) -> Result<(), ClientError> {
        req.headers_mut().insert("host", self.host.clone());
        let (method, uri) = (req.method().clone(), req.uri().clone());
        atrest_sigv4::sign_cached(
            &method,
            &uri,
            req.headers_mut(),
            body,
            &atrest_sigv4::Credentials {
                access_key_id: &self.creds.access_key_id,
                secret_access_key: self.creds.secret_access_key.expose(),
            },
            &atrest_sigv4::Scope {
                region: &self.region,
                service,
                time: time::OffsetDateTime::now_utc(),
            },
            Some(&self.signing_keys),
        )
        .map_err(|e| ClientError::Sign(e.to_string()))
    }

    async fn send(&self, req: Request<()>, body: Bytes) -> Result<Response, ClientError> {
        let (parts, ()) = req.into_parts();
        let req = Request::from_parts(parts, Full::new(body));
        let transport = |reason: String| ClientError::Transport {
            endpoint: self.endpoint.to_string(),
            reason,
        };
        let resp = self
            .http
            .request(req)
            .await
            .map_err(|e| transport(error_chain(&e)))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| transport(e.to_string()))?
            .to_bytes();
        Ok(Response { status, body })
    }
}

/// An error with its sources, `: `-separated (hyper's errors say little
/// without them).
#[must_use]
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Secret bytes helper for callers that read a secret from a string.
#[must_use]
pub fn secret(s: &str) -> SecretBytes {
    SecretBytes::new(s.as_bytes().to_vec())
}
