//! Sessions, CSRF and the pages' security headers, against a backend that
//! stands in for the server (named as such: `Fake`). The browser tests
//! (`tests/interop/test_console.py`) run the same against the real server.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::json;
use tower::ServiceExt;

use crate::{Answer, Backend, Call, Console, Options, Principal, SignInRefused};

const AKID: &str = "AKIAFAKEFAKEFAKE0001";
const SECRET: &str = "fake/secret/0123456789abcdefghijklmnop";

/// Stands in for atrest's server: one access key, and a record of every
/// call and audit event.
#[derive(Default)]
struct Fake {
    inactive: AtomicBool,
    calls: Mutex<Vec<(String, String)>>,
    events: Mutex<Vec<String>>,
}

impl Backend for Arc<Fake> {
    async fn sign_in(
        &self,
        access_key_id: &str,
        secret: &str,
        _source: SocketAddr,
    ) -> Result<Principal, SignInRefused> {
        let ok = access_key_id == AKID && secret == SECRET && !self.inactive.load(Ordering::SeqCst);
        self.events
            .lock()
            .unwrap()
            .push(format!("SignIn {access_key_id} {ok}"));
        if ok {
            Ok(self.principal(access_key_id).unwrap())
        } else {
            Err(SignInRefused::BadCredentials)
        }
    }

    fn principal(&self, access_key_id: &str) -> Option<Principal> {
        (access_key_id == AKID && !self.inactive.load(Ordering::SeqCst)).then(|| Principal {
            account: "111122223333".into(),
            arn: "arn:aws:iam::111122223333:root".into(),
            admin: false,
            region: "us-east-1".into(),
        })
    }

    async fn call(&self, access_key_id: &str, _source: SocketAddr, call: Call) -> Answer {
        let what = match &call {
            Call::Kms { op, .. } => (*op).to_owned(),
            Call::Rest { method, path, .. } => format!("{method} {path}"),
        };
        self.calls
            .lock()
            .unwrap()
            .push((access_key_id.to_owned(), what));
        Answer {
            status: StatusCode::OK,
            body: json!({ "Keys": [], "Truncated": false }),
        }
    }

    async fn signed_out(&self, access_key_id: &str, _source: SocketAddr) {
        self.events
            .lock()
            .unwrap()
            .push(format!("SignOut {access_key_id}"));
    }

    fn source(&self, _request: &http::request::Parts) -> Option<SocketAddr> {
        Some("127.0.0.7:5000".parse().unwrap())
    }

    fn api_url(&self) -> String {
        "http://127.0.0.1:1".into()
    }

    fn nbd_addr(&self) -> Option<String> {
        None
    }
}

struct Harness {
    fake: Arc<Fake>,
    app: axum::Router,
}

struct Got {
    status: StatusCode,
    headers: http::HeaderMap,
    body: String,
}

impl Got {
    fn location(&self) -> &str {
        self.headers
            .get(header::LOCATION)
            .map_or("", |v| v.to_str().unwrap())
    }

    fn cookies(&self) -> Vec<String> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    /// The value of the first hidden `csrf` field.
    fn csrf(&self) -> String {
        let at = self
            .body
            .find(r#"name="csrf" value=""#)
            .expect("a csrf field");
        let rest = &self.body[at + r#"name="csrf" value=""#.len()..];
        rest[..rest.find('"').unwrap()].to_owned()
    }
}

impl Harness {
    fn new(options: Options) -> Self {
        let fake = Arc::new(Fake::default());
        let console = Console::new(Arc::clone(&fake), options);
        Self {
            fake,
            app: crate::router(console),
        }
    }

    async fn send(&self, method: &str, path: &str, cookie: &str, form: &[(&str, &str)]) -> Got {
        let mut req = Request::builder().method(method).uri(path);
        if !cookie.is_empty() {
            req = req.header(header::COOKIE, cookie);
        }
        let body = if form.is_empty() {
            Body::empty()
        } else {
            req = req.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
            Body::from(serde_urlencoded::to_string(form).unwrap())
        };
        let resp = self
            .app
            .clone()
            .oneshot(req.body(body).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = String::from_utf8(
            resp.into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
        .unwrap();
        Got {
            status,
            headers,
            body,
        }
    }

    /// Signs in through the form; returns the session cookie (`name=value`)
    /// and the answer.
    async fn sign_in(&self, secret: &str, next: &str) -> (String, Got) {
        let page = self.send("GET", "/console/sign-in", "", &[]).await;
        let pre = page.cookies()[0].split(';').next().unwrap().to_owned();
        let got = self
            .send(
                "POST",
                "/console/sign-in",
                &pre,
                &[
                    ("csrf", &page.csrf()),
                    ("access_key_id", AKID),
                    ("secret_access_key", secret),
                    ("next", next),
                ],
            )
            .await;
        let session = got
            .cookies()
            .iter()
            .find(|c| c.starts_with("atrest-console="))
            .map(|c| c.split(';').next().unwrap().to_owned())
            .unwrap_or_default();
        (session, got)
    }

    fn calls(&self) -> Vec<(String, String)> {
        self.fake.calls.lock().unwrap().clone()
    }
}

#[tokio::test]
async fn sign_in_sets_a_strict_http_only_cookie_and_stays_inside_the_console() {
    let h = Harness::new(Options::default());
    let (session, got) = h.sign_in(SECRET, "https://evil.example/").await;
    assert_eq!(got.status, StatusCode::SEE_OTHER);
    assert_eq!(got.location(), "/console/keys", "no open redirect");
    let cookie = got
        .cookies()
        .into_iter()
        .find(|c| c.starts_with("atrest-console="))
        .unwrap();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/console/"] {
        assert!(cookie.contains(attr), "{cookie} lacks {attr}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    // 256 random bits, URL-safe base64.
    assert_eq!(session.len() - "atrest-console=".len(), 43);
    let (_, got) = h.sign_in(SECRET, "/console/disks").await;
    assert_eq!(got.location(), "/console/disks");

    let tls = Harness::new(Options {
        secure: true,
        ..Options::default()
    });
    let (_, got) = tls.sign_in(SECRET, "").await;
    assert!(
        got.cookies().iter().all(|c| c.contains("; Secure")),
        "{:?}",
        got.cookies()
    );
    assert_eq!(
        h.fake.events.lock().unwrap().len(),
        2,
        "each sign-in is audited"
    );
}

#[tokio::test]
async fn a_form_without_its_csrf_token_is_refused_and_calls_nothing() {
    let h = Harness::new(Options::default());
    let (session, _) = h.sign_in(SECRET, "").await;
    let page = h.send("GET", "/console/keys/new", &session, &[]).await;
    assert_eq!(page.status, StatusCode::OK);
    let token = page.csrf();
    let before = h.calls().len();
    for form in [
        vec![("description", "x"), ("create", "1")],
        vec![("csrf", "not-the-token"), ("create", "1")],
        vec![("csrf", &token[..token.len() - 1]), ("create", "1")],
    ] {
        let got = h.send("POST", "/console/keys/new", &session, &form).await;
        assert_eq!(got.status, StatusCode::FORBIDDEN, "{form:?}");
        assert!(got.body.contains("CSRF"), "{}", got.body);
    }
    let got = h
        .send("POST", "/console/sign-out", &session, &[("csrf", "x")])
        .await;
    assert_eq!(got.status, StatusCode::FORBIDDEN);
    assert_eq!(h.calls().len(), before, "no call was made: {:?}", h.calls());
    // The session is still there: the refusal did not sign it out.
    let got = h.send("GET", "/console/keys", &session, &[]).await;
    assert_eq!(got.status, StatusCode::OK);
}

#[tokio::test]
async fn a_sign_in_without_its_csrf_cookie_is_refused() {
    let h = Harness::new(Options::default());
    let page = h.send("GET", "/console/sign-in", "", &[]).await;
    let got = h
        .send(
            "POST",
            "/console/sign-in",
            "",
            &[
                ("csrf", &page.csrf()),
                ("access_key_id", AKID),
                ("secret_access_key", SECRET),
            ],
        )
        .await;
    assert_eq!(got.status, StatusCode::FORBIDDEN);
    assert!(
        got.cookies()
            .iter()
            .all(|c| !c.starts_with("atrest-console="))
    );
    assert!(h.fake.events.lock().unwrap().is_empty());
}

#[tokio::test]
async fn pages_act_as_the_session_s_access_key_and_need_a_session() {
    let h = Harness::new(Options::default());
    let got = h.send("GET", "/console/keys?q=a", "", &[]).await;
    assert_eq!(got.status, StatusCode::SEE_OTHER);
    assert_eq!(
        got.location(),
        "/console/sign-in?next=%2Fconsole%2Fkeys%3Fq%3Da"
    );
    let got = h
        .send("POST", "/console/keys/new", "", &[("csrf", "")])
        .await;
    assert_eq!(got.status, StatusCode::UNAUTHORIZED);
    let forged = "atrest-console=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let got = h.send("GET", "/console/keys", forged, &[]).await;
    assert_eq!(got.status, StatusCode::SEE_OTHER);
    assert!(h.calls().is_empty());

    let (session, _) = h.sign_in(SECRET, "").await;
    let got = h.send("GET", "/console/keys", &session, &[]).await;
    assert_eq!(got.status, StatusCode::OK);
    let calls = h.calls();
    assert_eq!(calls, vec![(AKID.to_owned(), "ListKeys".to_owned())]);
}

#[tokio::test]
async fn an_idle_session_expires() {
    let h = Harness::new(Options {
        idle_timeout: Duration::from_millis(300),
        ..Options::default()
    });
    let (session, _) = h.sign_in(SECRET, "").await;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let got = h.send("GET", "/console/keys", &session, &[]).await;
        assert_eq!(got.status, StatusCode::OK, "used within the timeout");
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let got = h.send("GET", "/console/keys", &session, &[]).await;
    assert_eq!(got.status, StatusCode::SEE_OTHER);
    assert!(
        got.location().ends_with("&why=expired"),
        "{}",
        got.location()
    );
    let page = h.send("GET", got.location(), "", &[]).await;
    assert!(page.body.contains("Your session expired"));
}

#[tokio::test]
async fn a_session_ends_at_its_lifetime_even_when_used() {
    let h = Harness::new(Options {
        lifetime: Duration::from_millis(400),
        ..Options::default()
    });
    let (session, _) = h.sign_in(SECRET, "").await;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            h.send("GET", "/console/keys", &session, &[]).await.status,
            StatusCode::OK
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let got = h.send("GET", "/console/keys", &session, &[]).await;
    assert_eq!(got.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn a_deactivated_access_key_ends_the_session_at_once() {
    let h = Harness::new(Options::default());
    let (session, _) = h.sign_in(SECRET, "").await;
    h.fake.inactive.store(true, Ordering::SeqCst);
    let got = h.send("GET", "/console/keys", &session, &[]).await;
    assert_eq!(got.status, StatusCode::SEE_OTHER);
    assert_eq!(got.location(), "/console/sign-in?why=inactive");
    // Active again: the session stays ended.
    h.fake.inactive.store(false, Ordering::SeqCst);
    let got = h.send("GET", "/console/keys", &session, &[]).await;
    assert_eq!(got.status, StatusCode::SEE_OTHER);
    assert!(h.calls().is_empty());
}

#[tokio::test]
async fn sign_out_ends_the_session_and_is_audited() {
    let h = Harness::new(Options::default());
    let (session, _) = h.sign_in(SECRET, "").await;
    let page = h.send("GET", "/console/keys", &session, &[]).await;
    let got = h
        .send(
            "POST",
            "/console/sign-out",
            &session,
            &[("csrf", &page.csrf())],
        )
        .await;
    assert_eq!(got.status, StatusCode::SEE_OTHER);
    assert!(
        got.cookies()
            .iter()
            .any(|c| c.starts_with("atrest-console=;") && c.contains("Max-Age=0"))
    );
    let got = h.send("GET", "/console/keys", &session, &[]).await;
    assert_eq!(got.status, StatusCode::SEE_OTHER, "the old cookie is dead");
    let events = h.fake.events.lock().unwrap().clone();
    assert_eq!(
        events,
        vec![format!("SignIn {AKID} true"), format!("SignOut {AKID}")]
    );
}

#[tokio::test]
async fn failed_sign_ins_are_limited_per_address() {
    let h = Harness::new(Options {
        sign_in_failures: 3,
        ..Options::default()
    });
    for _ in 0..3 {
        let (session, got) = h.sign_in("wrong", "").await;
        assert_eq!(got.status, StatusCode::UNAUTHORIZED);
        assert!(session.is_empty());
        assert!(got.body.contains("is wrong"));
    }
    let (session, got) = h.sign_in(SECRET, "").await;
    assert_eq!(got.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(session.is_empty(), "not even the right secret gets in now");
    assert!(got.body.contains("Too many failed sign-ins"));
    assert_eq!(
        h.fake.events.lock().unwrap().len(),
        3,
        "refused before the check"
    );
}

#[tokio::test]
async fn every_answer_carries_the_security_headers_and_no_inline_script() {
    let h = Harness::new(Options::default());
    let (session, _) = h.sign_in(SECRET, "").await;
    for (path, cookie) in [
        ("/console/sign-in", ""),
        ("/console/keys", session.as_str()),
        ("/console/keys/new", session.as_str()),
        ("/console/nowhere", session.as_str()),
        ("/console/static/console.js", ""),
    ] {
        let got = h.send("GET", path, cookie, &[]).await;
        let csp = got.headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        for d in [
            "default-src 'self'",
            "script-src 'self'",
            "frame-ancestors 'none'",
            "form-action 'self'",
            "base-uri 'none'",
        ] {
            assert!(csp.contains(d), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe"), "{path}: {csp}");
        assert_eq!(got.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert!(got.headers.contains_key("server-timing"));
        if path.ends_with(".js") {
            continue;
        }
        assert_eq!(got.headers[header::CACHE_CONTROL], "no-store", "{path}");
        let scripts = got.body.matches("<script").count();
        let external = got
            .body
            .matches("<script src=\"/console/static/console.js\"")
            .count();
        assert_eq!(scripts, external, "{path}: inline script");
        assert!(!got.body.contains(" style="), "{path}: inline style");
        assert!(!got.body.contains(" onclick="), "{path}: inline handler");
    }
}

#[tokio::test]
async fn every_form_field_has_a_label() {
    let h = Harness::new(Options::default());
    let (session, _) = h.sign_in(SECRET, "").await;
    for path in ["/console/sign-in", "/console/keys", "/console/keys/new"] {
        let got = h.send("GET", path, &session, &[]).await;
        let mut rest = got.body.as_str();
        while let Some(at) = rest.find(" id=\"") {
            rest = &rest[at + 5..];
            let id = &rest[..rest.find('"').unwrap()];
            let tag_start = got.body[..got.body.len() - rest.len()].rfind('<').unwrap();
            let tag = &got.body[tag_start..got.body.len() - rest.len()];
            if ["<input", "<select", "<textarea"]
                .iter()
                .any(|t| tag.starts_with(t))
            {
                assert!(
                    got.body.contains(&format!("<label for=\"{id}\"")),
                    "{path}: #{id} has no label"
                );
            }
        }
    }
}
