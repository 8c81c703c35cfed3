//! Connections to PostgreSQL: the private runtime, the URL (with the libpq
//! TLS parameters tokio-postgres does not know), TLS over rustls, the pool,
//! retries of transient errors, and the mapping of driver errors to
//! [`StoreError`] (naming the server, never the password).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use atrest_store::StoreError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio_postgres::{Client, Config};

/// The private runtime every call runs on.
fn runtime() -> Result<&'static tokio::runtime::Runtime, StoreError> {
    static RT: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("atrest-pgstore")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| StoreError::Backend(format!("starting the PostgreSQL store runtime: {e}")))
}

/// Spawns `fut` on the private runtime (the listener, a rollback).
pub(crate) fn spawn<F>(fut: F) -> Result<(), StoreError>
where
    F: Future<Output = ()> + Send + 'static,
{
    runtime()?.spawn(fut);
    Ok(())
}

/// Runs `fut` on the private runtime and waits for it, at most `limit`.
/// Safe from any thread, a tokio worker included (the caller blocks on a
/// channel, never on a nested runtime).
pub(crate) fn run<T, F>(server: &str, limit: Duration, fut: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: Future<Output = Result<T, StoreError>> + Send + 'static,
{
    let rt = runtime()?;
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let shown = server.to_owned();
    rt.spawn(async move {
        let out = match tokio::time::timeout(limit, fut).await {
            Ok(out) => out,
            Err(_) => Err(StoreError::Backend(format!(
                "PostgreSQL at {shown}: no answer within {limit:?}"
            ))),
        };
        let _ = tx.send(out);
    });
    rx.recv().unwrap_or_else(|_| {
        Err(StoreError::Backend(format!(
            "PostgreSQL at {server}: the store task ended without an answer"
        )))
    })
}

/// How the connection is protected (libpq's `sslmode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS if the server offers it, unverified (libpq's default).
    Prefer,
    /// TLS or fail; the certificate is not checked (as libpq, unless
    /// `sslrootcert` is given, then it is checked against that CA).
    Require,
    /// TLS, the certificate chain checked against `sslrootcert` (else the
    /// public web roots) and the host name against the certificate.
    VerifyFull,
}

/// A parsed store URL.
#[derive(Clone)]
pub(crate) struct Target {
    pub config: Config,
    pub tls: MakeRustls,
    /// `host:port/dbname as user`, for messages: never the password.
    pub shown: String,
}

/// Gives `config` the password `env` (PGPASSWORD's value) unless the URL
/// had one.
fn password_from_env(config: &mut Config, env: Option<std::ffi::OsString>) {
    if config.get_password().is_none()
        && let Some(pw) = env
    {
        config.password(pw.as_encoded_bytes());
    }
}

/// Parses `postgres://user:password@host:port/db?sslmode=...&sslrootcert=FILE`.
pub(crate) fn parse_url(url: &str, connect_timeout: Duration) -> Result<Target, StoreError> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut mode = SslMode::Prefer;
    let mut root: Option<String> = None;
    let mut rest = Vec::new();
    for pair in query.into_iter().flat_map(|q| q.split('&')) {
        match pair.split_once('=') {
            Some(("sslmode", v)) => {
                mode = match v {
                    "disable" => SslMode::Disable,
                    "prefer" | "allow" => SslMode::Prefer,
                    "require" => SslMode::Require,
                    "verify-full" => SslMode::VerifyFull,
                    "verify-ca" => {
                        return Err(StoreError::Backend(
                            "PostgreSQL store URL: sslmode=verify-ca is not supported; \
                             use verify-full (checks the host name too) or require"
                                .into(),
                        ));
                    }
                    other => {
                        return Err(StoreError::Backend(format!(
                            "PostgreSQL store URL: unknown sslmode {other:?} \
                             (disable, prefer, require, verify-full)"
                        )));
                    }
                }
            }
            Some(("sslrootcert", v)) => root = Some(v.to_owned()),
            _ if pair.is_empty() => {}
            _ => rest.push(pair),
        }
    }
    let stripped = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    let mut config: Config = stripped.parse().map_err(|e| {
        // The driver's parse errors do not echo the URL; say what is expected.
        StoreError::Backend(format!(
            "PostgreSQL store URL is not valid ({e}); expected \
             postgres://USER:PASSWORD@HOST:PORT/DATABASE[?sslmode=...]"
        ))
    })?;
    config.ssl_mode(match mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        SslMode::Require | SslMode::VerifyFull => tokio_postgres::config::SslMode::Require,
    });
    // As libpq does: a URL without a password takes PGPASSWORD's (so the
    // password need not be in a command line or a unit file's URL).
    password_from_env(&mut config, std::env::var_os("PGPASSWORD"));
    config.connect_timeout(connect_timeout);
    config.keepalives(true);
    config.keepalives_idle(Duration::from_secs(10));
    if config.get_application_name().is_none() {
        config.application_name("atrest");
    }
    let shown = describe_server(&config);
    let tls = MakeRustls::new(mode, root.as_deref()).map_err(|e| {
        StoreError::Backend(format!("PostgreSQL at {shown}: TLS configuration: {e}"))
    })?;
    Ok(Target { config, tls, shown })
}

fn describe_server(config: &Config) -> String {
    use tokio_postgres::config::Host;
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let port = config
                .get_ports()
                .get(i)
                .or_else(|| config.get_ports().first())
                .copied()
                .unwrap_or(5432);
            match h {
                Host::Tcp(name) => format!("{name}:{port}"),
                Host::Unix(path) => format!("{}:{port}", path.display()),
            }
        })
        .collect();
    let hosts = if hosts.is_empty() {
        "localhost:5432".to_owned()
    } else {
        hosts.join(",")
    };
    format!(
        "{hosts} (database {}, user {})",
        config.get_dbname().unwrap_or("?"),
        config.get_user().unwrap_or("?")
    )
}

/// A driver error as text: the server's own message for a database error,
/// else the error and its causes. tokio-postgres never echoes the password.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    use std::error::Error as _;
    if let Some(db) = e.as_db_error() {
        return format!("{}: {} ({})", db.severity(), db.message(), db.code().code());
    }
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

/// Whether beginning a transaction again may succeed: the connection was
/// refused, reset or closed, the server is shutting down or starting, or
/// the transaction lost a serialization race.
pub(crate) fn transient(e: &tokio_postgres::Error) -> bool {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        return code.starts_with("08")
            || matches!(
                code,
                "57P01" | "57P02" | "57P03" | "40001" | "40P01" | "53300"
            );
    }
    // Not a database error: I/O, a closed connection, a timeout.
    true
}

/// A failed call: transient or not, with its message.
#[derive(Debug)]
pub(crate) struct Failure {
    pub transient: bool,
    pub message: String,
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Self {
        Failure {
            transient: transient(&e),
            message: describe(&e),
        }
    }
}

impl Failure {
    pub fn fatal(message: impl Into<String>) -> Self {
        Failure {
            transient: false,
            message: message.into(),
        }
    }
}

/// Idle connections, reused.
pub(crate) struct Pool {
    target: Target,
    idle: Mutex<Vec<Arc<Client>>>,
    max_idle: usize,
}

impl Pool {
    pub fn new(target: Target, max_idle: usize) -> Self {
        Pool {
            target,
            idle: Mutex::new(Vec::new()),
            max_idle,
        }
    }

    pub fn shown(&self) -> &str {
        &self.target.shown
    }

    /// An open connection: an idle one, or a new one.
    pub async fn get(&self) -> Result<Arc<Client>, Failure> {
        loop {
            let popped = match self.idle.lock() {
                Ok(mut idle) => idle.pop(),
                Err(p) => p.into_inner().pop(),
            };
            match popped {
                Some(c) if !c.is_closed() => return Ok(c),
                Some(_) => {}
                None => break,
            }
        }
        self.connect().await.map(Arc::new)
    }

    /// A new connection, driven by a task on the private runtime.
    pub async fn connect(&self) -> Result<Client, Failure> {
        let (client, conn) = self.target.config.connect(self.target.tls.clone()).await?;
        tokio::spawn(async move {
            // Ends when the connection closes; the client then reports
            // `is_closed` and its calls fail.
            let _ = conn.await;
        });
        Ok(client)
    }

    /// A new connection whose notifications are forwarded to the returned
    /// channel (which closes when the connection does).
    pub async fn connect_listening(
        &self,
    ) -> Result<(Client, tokio::sync::mpsc::UnboundedReceiver<()>), Failure> {
        use futures::StreamExt;
        let (client, mut conn) = self.target.config.connect(self.target.tls.clone()).await?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
            while let Some(m) = messages.next().await {
                match m {
                    Ok(tokio_postgres::AsyncMessage::Notification(_)) => {
                        if tx.send(()).is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        });
        Ok((client, rx))
    }

    /// Returns a connection that is idle (no transaction open).
    pub fn put(&self, client: Arc<Client>) {
        if client.is_closed() {
            return;
        }
        let mut idle = match self.idle.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if idle.len() < self.max_idle {
            idle.push(client);
        }
    }
}

/// Backoff between attempts to begin: 50, 100, 200, 400 ms.
pub(crate) const BACKOFF: [Duration; 4] = [
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(200),
    Duration::from_millis(400),
];

// ---- TLS over rustls -------------------------------------------------------

/// Makes rustls connections for tokio-postgres.
#[derive(Clone)]
pub(crate) struct MakeRustls {
    config: Arc<rustls::ClientConfig>,
}

impl MakeRustls {
    fn new(mode: SslMode, root: Option<&str>) -> Result<Self, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let roots = || -> Result<rustls::RootCertStore, String> {
            let mut store = rustls::RootCertStore::empty();
            match root {
                Some(path) => {
                    use rustls_pki_types::pem::PemObject;
                    let certs = CertificateDer::pem_file_iter(path)
                        .map_err(|e| format!("reading sslrootcert {path}: {e}"))?;
                    for c in certs {
                        let c = c.map_err(|e| format!("reading sslrootcert {path}: {e}"))?;
                        store
                            .add(c)
                            .map_err(|e| format!("sslrootcert {path}: {e}"))?;
                    }
                    if store.is_empty() {
                        return Err(format!("sslrootcert {path} holds no certificate"));
                    }
                }
                None => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            }
            Ok(store)
        };
        let config = match (mode, root) {
            (SslMode::VerifyFull, _) | (SslMode::Require, Some(_)) => builder
                .with_root_certificates(roots()?)
                .with_no_client_auth(),
            _ => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
                .with_no_client_auth(),
        };
        Ok(MakeRustls {
            config: Arc::new(config),
        })
    }
}

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = rustls::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, rustls::Error> {
        let name = ServerName::try_from(domain.to_owned())
            .map_err(|_| rustls::Error::General(format!("invalid server name {domain:?}")))?;
        Ok(RustlsConnect {
            name,
            config: Arc::clone(&self.config),
        })
    }
}

pub(crate) struct RustlsConnect {
    name: ServerName<'static>,
    config: Arc<rustls::ClientConfig>,
}

type TlsFuture<S> = Pin<Box<dyn Future<Output = std::io::Result<RustlsStream<S>>> + Send>>;

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = std::io::Error;
    type Future = TlsFuture<S>;

    fn connect(self, stream: S) -> TlsFuture<S> {
        Box::pin(async move {
            let s = tokio_rustls::TlsConnector::from(self.config)
                .connect(self.name, stream)
                .await?;
            Ok(RustlsStream(s))
        })
    }
}

pub(crate) struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

/// `sslmode=require` without a CA: encryption, no authentication of the
/// server (libpq's meaning). Handshake signatures are still checked.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn parse(url: &str) -> Result<Target, String> {
        parse_url(url, Duration::from_secs(1)).map_err(|e| e.to_string())
    }

    #[test]
    fn pgpassword_is_used_only_when_the_url_has_no_password() {
        let mut c: Config = "postgres://u@h/d".parse().unwrap();
        password_from_env(&mut c, Some("from-env".into()));
        assert_eq!(c.get_password(), Some(&b"from-env"[..]));
        let mut c: Config = "postgres://u:in-url@h/d".parse().unwrap();
        password_from_env(&mut c, Some("from-env".into()));
        assert_eq!(c.get_password(), Some(&b"in-url"[..]));
        let mut c: Config = "postgres://u@h/d".parse().unwrap();
        password_from_env(&mut c, None);
        assert_eq!(c.get_password(), None);
    }

    #[test]
    fn the_url_takes_libpq_tls_parameters_and_is_shown_without_the_password() {
        let t = parse(
            "postgres://u:hunter2@db.example:6543/atrest?sslmode=verify-full&application_name=x",
        )
        .unwrap();
        assert_eq!(t.shown, "db.example:6543 (database atrest, user u)");
        assert_eq!(
            t.config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
        assert_eq!(t.config.get_application_name(), Some("x"));
        let t = parse("postgres://u:hunter2@h/d?sslmode=disable").unwrap();
        assert_eq!(t.shown, "h:5432 (database d, user u)");
        assert_eq!(
            t.config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Disable
        );
        let t = parse("postgres://u:hunter2@h/d").unwrap();
        assert_eq!(
            t.config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Prefer
        );
    }

    #[test]
    fn bad_urls_are_refused_without_echoing_them() {
        for (url, want) in [
            (
                "postgres://u:hunter2@h/d?sslmode=verify-ca",
                "verify-ca is not supported",
            ),
            ("postgres://u:hunter2@h/d?sslmode=nope", "unknown sslmode"),
            ("postgres://u:hunter2@h:notaport/d", "not valid"),
            (
                "postgres://u:hunter2@h/d?sslmode=require&sslrootcert=/nonexistent",
                "sslrootcert /nonexistent",
            ),
        ] {
            let e = parse(url).err().unwrap();
            assert!(e.contains(want), "{url}: {e}");
            assert!(!e.contains("hunter2"), "{url}: {e}");
        }
    }
}
