//! [`ObjError`] and the one place `object_store`'s errors are mapped to it.

use object_store::client::{HttpError, HttpErrorKind};
use zeroize::Zeroizing;

/// What went wrong with a store operation. Every message names the object
/// (or the store's location) and never a credential.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ObjError {
    /// The object does not exist.
    #[error("object {object} not found")]
    NotFound {
        /// The object's name (relative to the store's prefix).
        object: String,
    },
    /// The store refused the credentials or the operation (HTTP 401/403:
    /// an unknown access key, a wrong secret, a missing permission).
    #[error("access to object {object} denied: {detail}")]
    AccessDenied {
        /// The object's name, or `*` for a listing.
        object: String,
        /// The store's error code and message.
        detail: String,
    },
    /// The bucket does not exist.
    #[error("bucket of {location} does not exist: {detail}")]
    NoSuchBucket {
        /// The store's location (see [`crate::Objects::location`]).
        location: String,
        /// The store's error code and message.
        detail: String,
    },
    /// The store could not be reached: connection refused, a name that does
    /// not resolve, a timeout.
    #[error("object store {location} unreachable: {detail}")]
    Unreachable {
        /// The store's location.
        location: String,
        /// What the transport reported.
        detail: String,
    },
    /// A bad URL, object name or setting, or missing S3 credentials.
    #[error("object store configuration: {0}")]
    Config(String),
    /// Anything else the store answered.
    #[error("object {object}: {detail}")]
    Other {
        /// The object's name, or `*` for a listing.
        object: String,
        /// What the store reported.
        detail: String,
    },
}

impl ObjError {
    /// Whether retrying later may succeed (the store was unreachable or
    /// answered with a server error).
    #[must_use]
    pub fn is_transient(&self) -> bool {
        matches!(self, ObjError::Unreachable { .. })
    }
}

/// Strings that must never appear in an error: the credentials a store was
/// opened with. Every detail passes through [`Redact::clean`].
#[derive(Clone, Default)]
pub(crate) struct Redact(Vec<Zeroizing<String>>);

impl Redact {
    pub(crate) fn new(secrets: impl IntoIterator<Item = String>) -> Self {
        Redact(
            secrets
                .into_iter()
                .filter(|s| s.len() >= 4)
                .map(Zeroizing::new)
                .collect(),
        )
    }

    fn clean(&self, mut text: String) -> String {
        for s in &self.0 {
            if text.contains(s.as_str()) {
                text = text.replace(s.as_str(), "[redacted]");
            }
        }
        text
    }
}

/// Maps an `object_store` error for `object` (its name relative to the
/// prefix, `*` for a listing) in the store at `location`.
///
/// object_store sorts HTTP statuses (404 NotFound, 403 PermissionDenied,
/// 401 Unauthenticated, the rest Generic) but keeps the S3 error body only
/// as text in its source chain; the S3 error code (`<Code>`) is read from
/// there to tell a missing bucket from a missing object and bad keys from
/// other errors. Transport failures are found by their
/// [`HttpErrorKind`] in the chain.
pub(crate) fn map(
    e: object_store::Error,
    object: &str,
    location: &str,
    redact: &Redact,
) -> ObjError {
    let chain = redact.clean(chain_text(&e));
    let code = xml_field(&chain, "Code");
    let detail = || match &code {
        Some(c) => match xml_field(&chain, "Message") {
            Some(m) if !m.is_empty() => format!("{c}: {m}"),
            _ => c.clone(),
        },
        // A status without an S3 error body (a HEAD's answer).
        None => match http_status(&chain) {
            Some(status) => format!("HTTP {status}"),
            None => innermost(&e, redact),
        },
    };
    let object = object.to_owned();
    let location = location.to_owned();
    if code.as_deref() == Some("NoSuchBucket") {
        return ObjError::NoSuchBucket {
            location,
            detail: detail(),
        };
    }
    match &e {
        object_store::Error::NotFound { .. } => return ObjError::NotFound { object },
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => {
            return ObjError::AccessDenied {
                object,
                detail: detail(),
            };
        }
        object_store::Error::InvalidPath { .. } => {
            return ObjError::Config(format!("object name {object:?}: {}", detail()));
        }
        _ => {}
    }
    if matches!(
        code.as_deref(),
        Some(
            "AccessDenied"
                | "InvalidAccessKeyId"
                | "SignatureDoesNotMatch"
                | "InvalidSignature"
                | "AuthorizationHeaderMalformed"
                | "ExpiredToken"
                | "InvalidToken"
        )
    ) {
        return ObjError::AccessDenied {
            object,
            detail: detail(),
        };
    }
    if matches!(
        transport_kind(&e),
        Some(
            HttpErrorKind::Connect
                | HttpErrorKind::Timeout
                | HttpErrorKind::Request
                | HttpErrorKind::Interrupted
        )
    ) {
        return ObjError::Unreachable {
            location,
            detail: detail(),
        };
    }
    ObjError::Other {
        object,
        detail: detail(),
    }
}

/// An I/O error of the local backend.
pub(crate) fn io(e: &std::io::Error, object: &str) -> ObjError {
    ObjError::Other {
        object: object.to_owned(),
        detail: e.to_string(),
    }
}

/// The whole source chain as one string.
fn chain_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        cur = s.source();
    }
    out
}

/// The transport error kind, if a transport error is in the chain.
fn transport_kind(e: &(dyn std::error::Error + 'static)) -> Option<HttpErrorKind> {
    let mut cur = Some(e);
    while let Some(s) = cur {
        if let Some(h) = s.downcast_ref::<HttpError>() {
            return Some(h.kind());
        }
        cur = s.source();
    }
    None
}

/// The innermost causes (what a person needs: "Connection refused", "no
/// answer within 60s"), without object_store's outer wrapping that repeats
/// the request line.
fn innermost(e: &(dyn std::error::Error + 'static), redact: &Redact) -> String {
    let mut msgs = Vec::new();
    let mut cur = Some(e);
    while let Some(s) = cur {
        msgs.push(s.to_string());
        cur = s.source();
    }
    // The last two levels carry the cause (e.g. reqwest's "error sending
    // request" and the OS error under it).
    let start = msgs.len().saturating_sub(2);
    let mut out: Vec<String> = Vec::new();
    for m in &msgs[start..] {
        if !out.iter().any(|o| o.contains(m.as_str())) {
            out.push(m.clone());
        }
    }
    redact.clean(out.join(": "))
}

/// "404 Not Found" from object_store's "...non-2xx status code: 404 Not
/// Found: <body>".
fn http_status(text: &str) -> Option<String> {
    const MARK: &str = "status code: ";
    let start = text.find(MARK)? + MARK.len();
    let rest = &text[start..];
    let end = rest.find(':').unwrap_or(rest.len());
    let status = rest[..end].trim();
    (!status.is_empty()).then(|| status.to_owned())
}

/// The text of the first `<field>...</field>` of an S3 XML error body.
fn xml_field(text: &str, field: &str) -> Option<String> {
    let open = format!("<{field}>");
    let close = format!("</{field}>");
    let start = text.find(&open)? + open.len();
    let len = text[start..].find(&close)?;
    Some(text[start..start + len].trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_fields() {
        let body = "Server returned non-2xx status code: 404 Not Found: <?xml version=\"1.0\"?>\
            <Error><Code>NoSuchBucket</Code><Message>Bucket not found: nope</Message>\
            <Resource>/nope/x</Resource></Error>";
        assert_eq!(xml_field(body, "Code").as_deref(), Some("NoSuchBucket"));
        assert_eq!(
            xml_field(body, "Message").as_deref(),
            Some("Bucket not found: nope")
        );
        assert_eq!(xml_field(body, "Region"), None);
        assert_eq!(xml_field("<Code>unterminated", "Code"), None);
        assert_eq!(
            http_status("Error performing HEAD http://h/b/k in 2ms - Server returned non-2xx status code: 403 Forbidden: ")
                .as_deref(),
            Some("403 Forbidden")
        );
    }

    #[test]
    fn redaction() {
        let r = Redact::new(["GK1234".to_owned(), "s3cr3t".to_owned(), String::new()]);
        assert_eq!(
            r.clean("key GK1234 with s3cr3t".into()),
            "key [redacted] with [redacted]"
        );
    }

    #[test]
    fn generic_body_codes_map() {
        let e = |body: &str| object_store::Error::Generic {
            store: "S3",
            source: body.to_owned().into(),
        };
        let r = Redact::default();
        assert!(matches!(
            map(
                e("400: <Error><Code>NoSuchBucket</Code></Error>"),
                "a",
                "s3://b",
                &r
            ),
            ObjError::NoSuchBucket { .. }
        ));
        assert!(matches!(
            map(
                e("400: <Error><Code>InvalidAccessKeyId</Code></Error>"),
                "a",
                "s3://b",
                &r
            ),
            ObjError::AccessDenied { object, .. } if object == "a"
        ));
        assert!(matches!(
            map(e("boom"), "a", "s3://b", &r),
            ObjError::Other { .. }
        ));
    }
}
