//! atrest's web console, served at `/console/` on the API's listener.
//!
//! Owns: the pages (HTML rendered on the server, templates checked and
//! compiled into the binary with `maud`), the sign-in and its sessions, the
//! CSRF tokens, the security headers and the two static assets (one style
//! sheet, one small script: progress bars and copy buttons).
//!
//! Must not know: any service. The console acts only through [`Backend`]:
//! every page reads, and every form changes, by calling the same KMS and
//! REST API a client calls, as the signed-in principal (the server signs
//! each call with the principal's access key and sends it through its own
//! router, so that authentication, authorization, the audit record and the
//! metering are the API's own). The console holds no secret: a session
//! names an access key id; the secret typed at sign-in is checked and
//! dropped.
//!
//! Security (design 5C):
//! - the session cookie is a random 256-bit token, `HttpOnly`,
//!   `SameSite=Strict`, `Path=/console/`, `Secure` under TLS; the server
//!   keeps only its SHA-256, so a memory dump of the session table signs no
//!   one in;
//! - every change is a `POST` with the session's CSRF token, compared in
//!   constant time; the sign-in form has its own (a pre-session cookie);
//! - a session ends after an idle timeout, at an absolute lifetime, at
//!   sign-out, and as soon as its access key is deactivated or deleted (the
//!   principal is resolved again on every request);
//! - failed sign-ins are limited per client address and recorded in the
//!   audit trail;
//! - every answer carries a strict Content-Security-Policy (no inline
//!   script or style, nothing from elsewhere), `no-store`, `nosniff`,
//!   `frame-ancestors 'none'`.

mod html;
mod pages;
mod session;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::response::Response;
use http::{Method, StatusCode};
use serde_json::Value;

pub use session::Sessions;

/// How sessions behave.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// A session unused this long ends (default 15 minutes).
    pub idle_timeout: Duration,
    /// A session ends this long after sign-in, used or not (default 8 hours).
    pub lifetime: Duration,
    /// Mark the cookie `Secure` (the listener serves TLS).
    pub secure: bool,
    /// Failed sign-ins allowed per client address per 5 minutes.
    pub sign_in_failures: u32,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(15 * 60),
            lifetime: Duration::from_secs(8 * 3600),
            secure: false,
            sign_in_failures: 10,
        }
    }
}

/// Who is signed in, as the key service resolves the access key now.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The account.
    pub account: String,
    /// The principal's ARN (`arn:aws:iam::<account>:root`, `...:user/<name>`).
    pub arn: String,
    /// Whether the account is the admin account (the admin pages).
    pub admin: bool,
    /// The region calls are signed for.
    pub region: String,
}

/// A call the console makes for the signed-in principal.
#[derive(Debug, Clone)]
pub enum Call {
    /// A KMS operation (`TrentService.<op>`) with its JSON body.
    Kms {
        /// The operation, without `TrentService.`.
        op: &'static str,
        /// Its body.
        body: Value,
    },
    /// A REST call: method, path with its query, and JSON body.
    Rest {
        /// The method.
        method: Method,
        /// The path and query (`/v1/disks?limit=50`).
        path: String,
        /// The body, if any.
        body: Option<Value>,
    },
}

/// The API's answer to a [`Call`].
#[derive(Debug, Clone)]
pub struct Answer {
    /// Its status.
    pub status: StatusCode,
    /// Its JSON body (`Null` when it had none or was not JSON).
    pub body: Value,
}

impl Answer {
    /// Whether the call succeeded.
    #[must_use]
    pub fn ok(&self) -> bool {
        self.status.is_success()
    }

    /// The refusal as the API words it: `Code: message` (KMS's `__type` or
    /// REST's `code`).
    #[must_use]
    pub fn error(&self) -> String {
        let code = self
            .body
            .get("__type")
            .or_else(|| self.body.get("code"))
            .and_then(Value::as_str)
            .unwrap_or("Error");
        let code = code.rsplit('#').next().unwrap_or(code);
        match self.body.get("message").and_then(Value::as_str) {
            Some(m) if !m.is_empty() => format!("{code}: {m}"),
            _ => format!("{code} (HTTP {})", self.status.as_u16()),
        }
    }

    /// A member of the body.
    #[must_use]
    pub fn get(&self, name: &str) -> &Value {
        self.body.get(name).unwrap_or(&Value::Null)
    }
}

/// Why a sign-in was refused (the page says only that it was).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignInRefused {
    /// Unknown access key, wrong secret, or a deactivated key.
    BadCredentials,
}

/// What the console needs of the server. Implemented by atrest's server;
/// the console knows no service.
pub trait Backend: Send + Sync + 'static {
    /// Checks an access key id and its secret; records the sign-in (either
    /// way) in the audit trail.
    fn sign_in(
        &self,
        access_key_id: &str,
        secret: &str,
        source: SocketAddr,
    ) -> impl Future<Output = Result<Principal, SignInRefused>> + Send;

    /// The principal of an active access key now, `None` when the key is
    /// unknown, deleted or deactivated.
    fn principal(&self, access_key_id: &str) -> Option<Principal>;

    /// Makes `call` as the access key's principal, through the API's own
    /// path (authentication, authorization, audit, metering).
    fn call(
        &self,
        access_key_id: &str,
        source: SocketAddr,
        call: Call,
    ) -> impl Future<Output = Answer> + Send;

    /// Records a sign-out in the audit trail.
    fn signed_out(
        &self,
        access_key_id: &str,
        source: SocketAddr,
    ) -> impl Future<Output = ()> + Send;

    /// The client's address of a request (set by the accept loop).
    fn source(&self, request: &http::request::Parts) -> Option<SocketAddr>;

    /// The API's URL (shown where a command needs it: the NBD URI, the CLI).
    fn api_url(&self) -> String;

    /// The NBD listener's address, when NBD is served.
    fn nbd_addr(&self) -> Option<String>;
}

/// The console: its backend, options and sessions.
pub struct Console<B> {
    backend: B,
    sessions: Sessions,
}

impl<B: Backend> Console<B> {
    /// A console acting through `backend`.
    pub fn new(backend: B, options: Options) -> Arc<Self> {
        Arc::new(Self {
            backend,
            sessions: Sessions::new(options),
        })
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }
}

/// The console's routes: everything under `/console`.
pub fn router<B: Backend, S: Clone + Send + Sync + 'static>(
    console: Arc<Console<B>>,
) -> axum::Router<S> {
    axum::Router::new()
        .route("/console", axum::routing::any(redirect_root))
        .route("/console/", axum::routing::any(handle::<B>))
        .route("/console/{*rest}", axum::routing::any(handle::<B>))
        .with_state(console)
}

async fn redirect_root() -> Response {
    html::redirect("/console/")
}

async fn handle<B: Backend>(State(console): State<Arc<Console<B>>>, req: Request) -> Response {
    let started = std::time::Instant::now();
    let mut resp = pages::dispatch(&console, req).await;
    // The time the page took on the server (what the benchmarks measure).
    if let Ok(v) = http::HeaderValue::from_str(&format!(
        "app;dur={:.1}",
        started.elapsed().as_secs_f64() * 1000.0
    )) {
        resp.headers_mut().insert("server-timing", v);
    }
    resp
}

#[cfg(test)]
mod tests;
