//! Routing inside `/console/`, the request context, sign-in and sign-out.
//! Each section's pages live in their own module.

mod admin;
mod audit;
mod databases;
mod disks;
mod keys;
mod ops;
mod projects;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, Method, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use maud::{Markup, html};
use serde_json::Value;

use crate::html::{self, Nav, Shell};
use crate::session::{self, Ended};
use crate::{Answer, Backend, Call, Console, Principal, SignInRefused};

/// The largest form body read (a key policy is at most 32 KiB; imported
/// key material and its token in base64 fit easily).
const MAX_FORM: usize = 256 * 1024;

const CSS: &str = include_str!("../../static/console.css");
const JS: &str = include_str!("../../static/console.js");

/// A form's fields, in order.
#[derive(Debug, Default)]
pub(crate) struct Form(Vec<(String, String)>);

impl Form {
    /// The first value of `name`, or `""`.
    pub(crate) fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    }

    /// The trimmed value of `name`.
    pub(crate) fn trimmed(&self, name: &str) -> &str {
        self.get(name).trim()
    }

    /// Whether `name` is present (a checked checkbox).
    pub(crate) fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(k, _)| k == name)
    }
}

/// A query string's parameters.
pub(crate) fn query(uri: &http::Uri) -> Form {
    Form(serde_urlencoded::from_str(uri.query().unwrap_or("")).unwrap_or_default())
}

/// What a page of a signed-in principal works with.
pub(crate) struct Ctx<'a, B: Backend> {
    pub console: &'a Console<B>,
    pub principal: Principal,
    pub access_key_id: String,
    pub csrf: String,
    pub source: SocketAddr,
    pub flash: Option<String>,
    cookie: Option<String>,
}

impl<B: Backend> Ctx<'_, B> {
    /// Calls a KMS operation as the principal.
    pub(crate) async fn kms(&self, op: &'static str, body: Value) -> Answer {
        self.console
            .backend
            .call(&self.access_key_id, self.source, Call::Kms { op, body })
            .await
    }

    /// Calls the REST API as the principal.
    pub(crate) async fn rest(&self, method: Method, path: String, body: Option<Value>) -> Answer {
        self.console
            .backend
            .call(
                &self.access_key_id,
                self.source,
                Call::Rest { method, path, body },
            )
            .await
    }

    /// The members `member` of every page of the KMS list operation `op`
    /// (`ListKeys` / `Keys`, `ListAliases` / `Aliases`), `limit` a page,
    /// until the list ends or `max` are read.
    pub(crate) async fn kms_list(
        &self,
        op: &'static str,
        member: &str,
        limit: u32,
        max: usize,
    ) -> Result<Vec<Value>, String> {
        let mut out = Vec::new();
        let mut marker: Option<String> = None;
        while out.len() < max {
            let mut body = serde_json::json!({ "Limit": limit });
            if let Some(m) = &marker {
                body["Marker"] = Value::from(m.as_str());
            }
            let a = self.kms(op, body).await;
            if !a.ok() {
                return Err(a.error());
            }
            out.extend(a.get(member).as_array().into_iter().flatten().cloned());
            match (a.get("Truncated"), a.get("NextMarker")) {
                (Value::Bool(true), Value::String(m)) => marker = Some(m.clone()),
                _ => break,
            }
        }
        out.truncate(max);
        Ok(out)
    }

    /// `GET` on the REST API.
    pub(crate) async fn get(&self, path: String) -> Answer {
        self.rest(Method::GET, path, None).await
    }

    /// A page in the shell.
    pub(crate) fn page(&self, nav: Nav, title: &str, body: &Markup) -> Response {
        self.page_status(StatusCode::OK, nav, title, body)
    }

    /// A page in the shell, with its status.
    pub(crate) fn page_status(
        &self,
        status: StatusCode,
        nav: Nav,
        title: &str,
        body: &Markup,
    ) -> Response {
        let shell = Shell {
            principal: Some(&self.principal.arn),
            csrf: Some(&self.csrf),
            flash: self.flash.as_deref(),
            nav,
        };
        html::page_response(status, html::shell(&shell, title, body))
    }

    /// Redirects to `location`, leaving `message` for the next page.
    pub(crate) fn done(&self, location: &str, message: impl Into<String>) -> Response {
        self.console
            .sessions
            .flash(self.cookie.as_deref(), message.into());
        html::redirect(location)
    }

    /// The CSRF field of a form.
    pub(crate) fn csrf_field(&self) -> Markup {
        html::csrf(&self.csrf)
    }

    /// A one-button form.
    pub(crate) fn button(&self, action: &str, label: &str, hidden: &[(&str, &str)]) -> Markup {
        html::button(action, &self.csrf, label, hidden)
    }

    /// The API's URL.
    pub(crate) fn api_url(&self) -> String {
        self.console.backend.api_url()
    }
}

/// A request inside `/console/`.
pub(crate) async fn dispatch<B: Backend>(console: &Console<B>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let source = console
        .backend
        .source(&parts)
        .unwrap_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0));
    let path = parts.uri.path().strip_prefix("/console").unwrap_or("/");
    let segments: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let method = parts.method.clone();
    match (&method, segs.as_slice()) {
        (&Method::GET, ["static", "console.css"]) => return asset(CSS, "text/css; charset=utf-8"),
        (&Method::GET, ["static", "console.js"]) => {
            return asset(JS, "text/javascript; charset=utf-8");
        }
        (&Method::GET, ["sign-in"]) => return sign_in_page(console, &query(&parts.uri), None),
        _ => {}
    }
    let form = if method == Method::POST {
        let bytes = match read_form(body, &parts.headers).await {
            Ok(b) => b,
            Err(status) => return plain(status, "The form could not be read."),
        };
        Form(serde_urlencoded::from_bytes(&bytes).unwrap_or_default())
    } else if method == Method::GET || method == Method::HEAD {
        Form::default()
    } else {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed.");
    };
    if method == Method::POST && segs.as_slice() == ["sign-in"] {
        return sign_in(console, &parts.headers, &form, source).await;
    }
    let cookie = session::cookie(&parts.headers, session::COOKIE).map(str::to_owned);
    let live = match console.sessions.get(cookie.as_deref()) {
        Ok(l) => l,
        Err(ended) => {
            if method != Method::GET {
                return plain(
                    StatusCode::UNAUTHORIZED,
                    "Your session has ended: sign in again.",
                );
            }
            let next = parts
                .uri
                .path_and_query()
                .map_or("/console/", |p| p.as_str());
            let why = if ended == Ended::Expired {
                "&why=expired"
            } else {
                ""
            };
            return html::redirect(&format!("/console/sign-in?next={}{why}", html::enc(next)));
        }
    };
    // The principal now: a key deactivated or deleted since sign-in ends
    // the session at once.
    let Some(principal) = console.backend.principal(&live.access_key_id) else {
        console.sessions.end(cookie.as_deref());
        if method != Method::GET {
            return plain(
                StatusCode::UNAUTHORIZED,
                "Your access key is no longer active: sign in again.",
            );
        }
        return html::redirect("/console/sign-in?why=inactive");
    };
    if method == Method::POST && !session::same(form.get("csrf"), &live.csrf) {
        tracing::info!(source = %source, path = %parts.uri.path(), "console form without its CSRF token refused");
        return plain(
            StatusCode::FORBIDDEN,
            "This form has no valid CSRF token: reload the page and try again.",
        );
    }
    let ctx = Ctx {
        console,
        principal,
        access_key_id: live.access_key_id,
        csrf: live.csrf,
        source,
        flash: live.flash,
        cookie,
    };
    if method == Method::POST && segs.as_slice() == ["sign-out"] {
        console.sessions.end(ctx.cookie.as_deref());
        console.backend.signed_out(&ctx.access_key_id, source).await;
        let mut resp = html::redirect("/console/sign-in?why=signed-out");
        if let Ok(v) =
            HeaderValue::from_str(&console.sessions.removal(session::COOKIE, "/console/"))
        {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
        return resp;
    }
    let q = query(&parts.uri);
    let post = method == Method::POST;
    match segs.first().copied() {
        None => html::redirect("/console/keys"),
        Some("keys") => keys::route(&ctx, &segs[1..], post, &q, &form).await,
        Some("disks" | "snapshots" | "jobs") => disks::route(&ctx, &segs, post, &q, &form).await,
        Some("databases" | "backups") => databases::route(&ctx, &segs, post, &q, &form).await,
        Some("projects") => projects::route(&ctx, &segs[1..], post, &q, &form).await,
        Some("audit") => audit::route(&ctx, &segs[1..], post, &q, &form).await,
        Some("metering" | "nodes") => ops::route(&ctx, &segs, post, &q, &form).await,
        Some("admin") => admin::route(&ctx, &segs[1..], post, &q, &form).await,
        Some(_) => not_found(&ctx),
    }
}

/// The page for a path nothing serves.
pub(crate) fn not_found<B: Backend>(ctx: &Ctx<'_, B>) -> Response {
    ctx.page_status(
        StatusCode::NOT_FOUND,
        Nav::None,
        "Not found",
        &html! { p { "Nothing is here. " a href="/console/" { "Back to the console" } } },
    )
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(h) = s.get(i + 1..i + 3)
            && let Ok(v) = u8::from_str_radix(h, 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn asset(body: &'static str, ty: &'static str) -> Response {
    let mut resp = ([(header::CONTENT_TYPE, ty)], body).into_response();
    resp = html::secure(resp);
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    resp
}

fn plain(status: StatusCode, message: &'static str) -> Response {
    html::secure(
        (
            status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            message,
        )
            .into_response(),
    )
}

async fn read_form(
    body: axum::body::Body,
    headers: &http::HeaderMap,
) -> Result<Vec<u8>, StatusCode> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_FORM) {
        return Err(StatusCode::PAYLOAD_TOO_LARGE);
    }
    match tokio::time::timeout(
        std::time::Duration::from_secs(30),
        Limited::new(body, MAX_FORM).collect(),
    )
    .await
    {
        Ok(Ok(c)) => Ok(c.to_bytes().to_vec()),
        Ok(Err(_)) => Err(StatusCode::PAYLOAD_TOO_LARGE),
        Err(_) => Err(StatusCode::REQUEST_TIMEOUT),
    }
}

/// A `next` that stays inside the console (no open redirect).
fn safe_next(next: &str) -> &str {
    if next.starts_with("/console/") && !next.starts_with("//") && !next.contains('\\') {
        next
    } else {
        "/console/keys"
    }
}

fn sign_in_page<B: Backend>(console: &Console<B>, q: &Form, error: Option<&str>) -> Response {
    let token = session::token();
    let why = match q.get("why") {
        "expired" => Some("Your session expired: sign in again."),
        "inactive" => Some("Your access key is no longer active."),
        "signed-out" => Some("You are signed out."),
        _ => None,
    };
    let body = html! {
        @if let Some(w) = why { p.flash role="status" { (w) } }
        @if let Some(e) = error { (html::error(e)) }
        form.signin method="post" action="/console/sign-in" {
            (html::csrf(&token))
            input type="hidden" name="next" value=(safe_next(q.get("next")));
            div.field {
                label for="access_key_id" { "Access key ID" }
                input type="text" id="access_key_id" name="access_key_id" autocomplete="username" required autofocus;
            }
            div.field {
                label for="secret_access_key" { "Secret access key" }
                input type="password" id="secret_access_key" name="secret_access_key" autocomplete="current-password" required;
            }
            button type="submit" { "Sign in" }
        }
        p.hint { "Sign in with an access key of the API: the console acts with its principal's permissions." }
    };
    let shell = Shell {
        principal: None,
        csrf: None,
        flash: None,
        nav: Nav::None,
    };
    let status = if error.is_some() {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::OK
    };
    let mut resp = html::page_response(status, html::shell(&shell, "Sign in", &body));
    if let Ok(v) = HeaderValue::from_str(&console.sessions.sign_in_cookie(&token)) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

async fn sign_in<B: Backend>(
    console: &Console<B>,
    headers: &http::HeaderMap,
    form: &Form,
    source: SocketAddr,
) -> Response {
    let expected = session::cookie(headers, session::SIGN_IN_COOKIE).unwrap_or("");
    if expected.is_empty() || !session::same(form.get("csrf"), expected) {
        return plain(
            StatusCode::FORBIDDEN,
            "This sign-in form has no valid CSRF token: reload the page and try again.",
        );
    }
    if let Err(wait) = console.sessions.may_try(source.ip()) {
        let body = html! {
            (html::error(&format!(
                "Too many failed sign-ins from your address: try again in {} s.",
                wait.as_secs().max(1)
            )))
        };
        let shell = Shell {
            principal: None,
            csrf: None,
            flash: None,
            nav: Nav::None,
        };
        return html::page_response(
            StatusCode::TOO_MANY_REQUESTS,
            html::shell(&shell, "Sign in", &body),
        );
    }
    let akid = form.trimmed("access_key_id");
    let secret = form.trimmed("secret_access_key");
    let q = Form(vec![("next".into(), form.get("next").to_owned())]);
    if akid.is_empty() || secret.is_empty() || akid.len() > 128 || secret.len() > 256 {
        return sign_in_page(console, &q, Some("Give an access key ID and its secret."));
    }
    match console.backend.sign_in(akid, secret, source).await {
        Ok(_) => {
            let token = console.sessions.start(akid);
            let mut resp = html::redirect(safe_next(form.get("next")));
            if let Ok(v) = HeaderValue::from_str(&console.sessions.cookie(&token)) {
                resp.headers_mut().append(header::SET_COOKIE, v);
            }
            if let Ok(v) = HeaderValue::from_str(
                &console
                    .sessions
                    .removal(session::SIGN_IN_COOKIE, "/console/sign-in"),
            ) {
                resp.headers_mut().append(header::SET_COOKIE, v);
            }
            resp
        }
        Err(SignInRefused::BadCredentials) => {
            console.sessions.failed(source.ip());
            sign_in_page(
                console,
                &q,
                Some("The access key ID or secret is wrong, or the key is not active."),
            )
        }
    }
}
