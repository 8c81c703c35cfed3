//! Blocking HTTP(S) for the HTTP providers: one attempt is bounded by the
//! provider's timeout, transient failures (no connection, a timeout, 429,
//! 5xx) are retried with exponential backoff and jitter, and TLS trusts
//! either Mozilla's roots or a private CA file.
//!
//! Requests run on one small private runtime shared by every provider, and
//! the calling thread waits on a channel: a caller may be a blocking thread
//! of another runtime, or no runtime at all.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::ProviderError;
use crate::config::Transport;

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// An answer: status and body.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// HTTP status.
    pub status: u16,
    /// Body bytes.
    pub body: Bytes,
}

impl HttpResponse {
    /// The body as JSON (`Null` if it is not JSON).
    #[must_use]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// Whether the status says "try again later".
    #[must_use]
    pub fn is_transient(&self) -> bool {
        self.status == 429 || self.status >= 500
    }

    /// A short, printable excerpt of the body for error messages.
    #[must_use]
    pub fn excerpt(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let text: String = text.chars().filter(|c| !c.is_control()).take(300).collect();
        format!("HTTP {}: {text}", self.status)
    }
}

fn runtime() -> Result<&'static tokio::runtime::Runtime, ProviderError> {
    static RT: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("atrest-provider")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| ProviderError::Unavailable(format!("starting the provider runtime: {e}")))
}

/// A blocking HTTP client for one provider.
#[derive(Clone)]
pub struct HttpClient {
    client: HyperClient<Connector, Full<Bytes>>,
    transport: Transport,
}

impl core::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HttpClient")
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
}

/// A rustls root store: the PEM CA file given, or Mozilla's roots.
pub fn root_store(ca_file: Option<&Path>) -> Result<rustls::RootCertStore, ProviderError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let bad = |e: String| ProviderError::Config(format!("{}: {e}", path.display()));
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))? {
                roots
                    .add(cert.map_err(|e| bad(e.to_string()))?)
                    .map_err(|e| bad(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(bad("no certificate in the file".into()));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(roots)
}

/// The rustls provider every client uses (AWS-LC, as the rest of atrest).
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

impl HttpClient {
    /// A client trusting `ca_file` (PEM) or Mozilla's roots.
    pub fn new(ca_file: Option<&Path>, transport: Transport) -> Result<Self, ProviderError> {
        let tls = rustls::ClientConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| ProviderError::Config(e.to_string()))?
            .with_root_certificates(root_store(ca_file)?)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_millis(transport.timeout_ms)));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = HyperClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Self { client, transport })
    }

    /// Sends the request `build` makes (called again for each attempt, so a
    /// signature can carry the attempt's time), retrying transient failures.
    /// Returns the first non-transient answer, or the last answer or error.
    pub fn send(
        &self,
        build: impl Fn() -> Result<Request<Full<Bytes>>, ProviderError>,
    ) -> Result<HttpResponse, ProviderError> {
        let mut attempt = 0u32;
        loop {
            let result = self.once(build()?);
            let transient = match &result {
                Ok(r) => r.is_transient(),
                Err(e) => e.is_transient(),
            };
            if !transient || attempt >= self.transport.retries {
                return result;
            }
            std::thread::sleep(backoff(attempt));
            attempt += 1;
        }
    }

    fn once(&self, req: Request<Full<Bytes>>) -> Result<HttpResponse, ProviderError> {
        let rt = runtime()?;
        let timeout = Duration::from_millis(self.transport.timeout_ms);
        let target = format!(
            "{}://{}",
            req.uri().scheme_str().unwrap_or("http"),
            req.uri()
                .authority()
                .map(|a| a.as_str())
                .unwrap_or_default()
        );
        let client = self.client.clone();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        rt.spawn(async move {
            let fut = async {
                let resp = client
                    .request(req)
                    .await
                    .map_err(|e| atrest_client::error_chain(&e))?;
                let status = resp.status().as_u16();
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| e.to_string())?
                    .to_bytes();
                Ok::<_, String>(HttpResponse { status, body })
            };
            let out = match tokio::time::timeout(timeout, fut).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
            };
            let _ = tx.send(out);
        });
        match rx.recv_timeout(timeout + Duration::from_secs(1)) {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(ProviderError::Unavailable(format!("{target}: {e}"))),
            Err(_) => Err(ProviderError::Unavailable(format!(
                "{target}: no answer within {} ms",
                timeout.as_millis()
            ))),
        }
    }
}

/// The pause before retry `attempt` (from 0): 100 ms doubled each time, at
/// most 5 s, with up to 50 % jitter.
#[must_use]
pub fn backoff(attempt: u32) -> Duration {
    let base = 100u64.saturating_mul(1 << attempt.min(6)).min(5_000);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::from(d.subsec_nanos()))
        .unwrap_or(0);
    Duration::from_millis(base + nanos % (base / 2 + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_is_unavailable_after_retries_and_bounded_in_time() {
        // A port nobody listens on: connection refused, retried twice.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let c = HttpClient::new(
            None,
            Transport {
                timeout_ms: 500,
                retries: 2,
            },
        )
        .expect("client");
        let started = std::time::Instant::now();
        let calls = std::sync::atomic::AtomicU32::new(0);
        let r = c.send(|| {
            calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Request::get(format!("http://127.0.0.1:{port}/"))
                .body(Full::new(Bytes::new()))
                .map_err(|e| ProviderError::Config(e.to_string()))
        });
        assert!(matches!(&r, Err(ProviderError::Unavailable(_))), "{r:?}");
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 3);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_silent_server_times_out() {
        // Accepts, never answers.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let c = HttpClient::new(
            None,
            Transport {
                timeout_ms: 300,
                retries: 0,
            },
        )
        .expect("client");
        let started = std::time::Instant::now();
        let r = c.send(|| {
            Request::get(format!("http://127.0.0.1:{port}/"))
                .body(Full::new(Bytes::new()))
                .map_err(|e| ProviderError::Config(e.to_string()))
        });
        assert!(
            matches!(&r, Err(ProviderError::Unavailable(m)) if m.contains("300 ms")),
            "{r:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(3));
        drop(listener);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(
            backoff(0) >= Duration::from_millis(100) && backoff(0) <= Duration::from_millis(151)
        );
        assert!(backoff(3) >= Duration::from_millis(800));
        assert!(backoff(30) <= Duration::from_millis(7_501));
    }
}
