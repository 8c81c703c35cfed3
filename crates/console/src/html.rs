//! The page shell, the security headers and small rendering helpers.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use maud::{DOCTYPE, Markup, html};
use serde_json::Value;

/// The Content-Security-Policy of every answer: nothing from elsewhere, no
/// inline script or style, no framing, forms only to the console.
pub(crate) const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; object-src 'none'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'";

/// Adds the headers every console answer carries.
pub(crate) fn secure(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

/// An HTML answer.
pub(crate) fn page_response(status: StatusCode, body: Markup) -> Response {
    secure(
        (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            body.into_string(),
        )
            .into_response(),
    )
}

/// A `303 See Other` to `location` (after a form, and to sign in).
pub(crate) fn redirect(location: &str) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    secure(resp)
}

/// The navigation's sections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nav {
    Keys,
    Disks,
    Databases,
    Projects,
    Audit,
    Metering,
    Nodes,
    Admin,
    None,
}

const SECTIONS: [(Nav, &str, &str); 8] = [
    (Nav::Keys, "/console/keys", "Keys"),
    (Nav::Disks, "/console/disks", "Disks"),
    (Nav::Databases, "/console/databases", "Databases"),
    (Nav::Projects, "/console/projects", "Projects"),
    (Nav::Audit, "/console/audit", "Audit"),
    (Nav::Metering, "/console/metering", "Metering"),
    (Nav::Nodes, "/console/nodes", "Nodes"),
    (Nav::Admin, "/console/admin", "Admin"),
];

/// What the shell shows of the signed-in principal.
pub(crate) struct Shell<'a> {
    pub principal: Option<&'a str>,
    pub csrf: Option<&'a str>,
    pub flash: Option<&'a str>,
    pub nav: Nav,
}

/// The whole page: head, header with the principal and sign-out, the
/// navigation, the title, the flash message and `body`.
pub(crate) fn shell(s: &Shell<'_>, title: &str, body: &Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · atrest" }
                link rel="stylesheet" href="/console/static/console.css";
                script src="/console/static/console.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/console/" { "atrest" }
                    @if let Some(p) = s.principal {
                        nav aria-label="Sections" {
                            ul {
                                @for (n, href, label) in SECTIONS {
                                    li {
                                        @if n == s.nav {
                                            a href=(href) aria-current="page" { (label) }
                                        } @else {
                                            a href=(href) { (label) }
                                        }
                                    }
                                }
                            }
                        }
                        div.who {
                            span.principal title="Signed in as" { (p) }
                            @if let Some(csrf) = s.csrf {
                                form method="post" action="/console/sign-out" {
                                    input type="hidden" name="csrf" value=(csrf);
                                    button type="submit" { "Sign out" }
                                }
                            }
                        }
                    }
                }
                main id="main" {
                    h1 { (title) }
                    @if let Some(f) = s.flash {
                        p.flash role="status" { (f) }
                    }
                    (body)
                }
            }
        }
    }
}

/// An error box (an API refusal, in the API's words).
pub(crate) fn error(message: &str) -> Markup {
    html! { p.error role="alert" { (message) } }
}

/// The hidden CSRF field of a form.
pub(crate) fn csrf(token: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(token); }
}

/// A labelled text field.
pub(crate) fn field(id: &str, label: &str, value: &str, hint: Option<&str>) -> Markup {
    html! {
        div.field {
            label for=(id) { (label) }
            input type="text" id=(id) name=(id) value=(value);
            @if let Some(h) = hint { small { (h) } }
        }
    }
}

/// A labelled select of `(value, label)` options.
pub(crate) fn select(id: &str, label: &str, options: &[(String, String)], chosen: &str) -> Markup {
    html! {
        div.field {
            label for=(id) { (label) }
            select id=(id) name=(id) {
                @for (v, l) in options {
                    option value=(v) selected[v == chosen] { (l) }
                }
            }
        }
    }
}

/// A form of one button that posts to `action` (with hidden fields).
pub(crate) fn button(
    action: &str,
    csrf_token: &str,
    label: &str,
    hidden: &[(&str, &str)],
) -> Markup {
    html! {
        form.inline method="post" action=(action) {
            (csrf(csrf_token))
            @for (k, v) in hidden { input type="hidden" name=(k) value=(v); }
            button type="submit" { (label) }
        }
    }
}

/// A JSON value as short text (strings unquoted).
pub(crate) fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A size in binary units, rounded down (`1 GiB`, `1.5 KiB`); the exact
/// byte count goes in the element's title.
pub(crate) fn bytes(n: u64) -> Markup {
    html! { span title=(format!("{n} bytes")) { (human_bytes(n)) } }
}

/// `n` bytes in binary units, rounded down to one decimal.
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 7] = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    let mut unit = 0;
    let mut scaled = u128::from(n);
    while scaled >= 1024 * 1024 && unit < UNITS.len() - 2 {
        scaled /= 1024;
        unit += 1;
    }
    // `scaled` is in units of UNITS[unit]; show it in UNITS[unit + 1].
    let tenths = scaled * 10 / 1024;
    let (whole, frac) = (tenths / 10, tenths % 10);
    if frac == 0 {
        format!("{whole} {}", UNITS[unit + 1])
    } else {
        format!("{whole}.{frac} {}", UNITS[unit + 1])
    }
}

/// A read-only text with a copy button (the script copies it).
pub(crate) fn copyable(id: &str, label: &str, value: &str, rows: usize) -> Markup {
    html! {
        div.field.copyable {
            label for=(id) { (label) }
            textarea id=(id) readonly rows=(rows) { (value) }
            button type="button" class="copy" data-copy=(id) { "Copy" }
        }
    }
}

/// Percent-encodes a query value or path segment.
pub(crate) fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Pretty JSON for an editor: a document already on several lines is shown
/// as written (re-encoding would sort its members); a one-line document is
/// laid out.
pub(crate) fn pretty(text: &str) -> String {
    if text.contains('\n') {
        return text.to_owned();
    }
    serde_json::from_str::<Value>(text)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|_| text.to_owned())
}

/// A definition list of `(term, value)` rows.
pub(crate) fn facts(rows: &[(&str, Markup)]) -> Markup {
    html! {
        dl.facts {
            @for (k, v) in rows { dt { (k) } dd { (v) } }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::human_bytes;

    #[test]
    fn sizes_are_binary_and_rounded_down() {
        assert_eq!(human_bytes(0), "0 bytes");
        assert_eq!(human_bytes(1023), "1023 bytes");
        assert_eq!(human_bytes(1024), "1 KiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(1024 * 1024 - 1), "1023.9 KiB");
        assert_eq!(human_bytes(1 << 30), "1 GiB");
        assert_eq!(human_bytes((1 << 30) + (1 << 29) + 1), "1.5 GiB");
        assert_eq!(human_bytes(u64::MAX), "15.9 EiB");
    }
}
