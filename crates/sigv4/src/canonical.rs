//! The canonical request (SigV4, "Create a canonical request").

use http::{HeaderMap, Method, Uri};

use crate::AuthError;

/// Percent-encodes every byte except RFC 3986 unreserved characters (and `/`
/// when `keep_slash`), upper-case hex, as SigV4 requires.
#[must_use]
pub fn uri_encode(input: &[u8], keep_slash: bool) -> String {
    let mut out = String::with_capacity(input.len());
    for &b in input {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes `%XX` escapes; a `%` not followed by two hex digits stays as is.
fn percent_decode(input: &str) -> Vec<u8> {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex_val),
                bytes.get(i + 2).copied().and_then(hex_val),
            )
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// The canonical URI of a non-S3 service: empty and `.` segments dropped,
/// `..` segments resolved (as botocore does), then the already
/// percent-encoded path encoded once more, keeping `/`.
#[must_use]
pub fn canonical_uri(uri: &Uri) -> String {
    let path = uri.path();
    let mut segments: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut normalized = String::from("/");
    normalized.push_str(&segments.join("/"));
    if path.ends_with('/') && !segments.is_empty() {
        normalized.push('/');
    }
    uri_encode(normalized.as_bytes(), true)
}

/// The canonical query string: parameters decoded, re-encoded with SigV4's
/// rules, sorted by name then value.
#[must_use]
pub fn canonical_query(uri: &Uri) -> String {
    let Some(q) = uri.query() else {
        return String::new();
    };
    let mut pairs: Vec<(String, String)> = q
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                uri_encode(&percent_decode(k), false),
                uri_encode(&percent_decode(v), false),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Trims a header value and collapses runs of spaces, as SigV4 requires.
fn canonical_header_value(raw: &[u8], out: &mut Vec<u8>) {
    let trimmed = raw.trim_ascii();
    let mut prev_space = false;
    for &b in trimmed {
        let space = b == b' ' || b == b'\t';
        if space {
            if !prev_space {
                out.push(b' ');
            }
        } else {
            out.push(b);
        }
        prev_space = space;
    }
}

pub(crate) fn canonical_request(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    signed_headers: &str,
    payload_hash: &str,
) -> Result<Vec<u8>, AuthError> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b'\n');
    out.extend_from_slice(canonical_uri(uri).as_bytes());
    out.push(b'\n');
    out.extend_from_slice(canonical_query(uri).as_bytes());
    out.push(b'\n');
    for name in signed_headers.split(';') {
        let mut values = headers.get_all(name).iter().peekable();
        if values.peek().is_none() {
            return Err(AuthError::InvalidSignature(format!(
                "Header '{name}' is listed in SignedHeaders but absent from the request."
            )));
        }
        out.extend_from_slice(name.as_bytes());
        out.push(b':');
        let mut first = true;
        for v in values {
            if !first {
                out.push(b',');
            }
            first = false;
            canonical_header_value(v.as_bytes(), &mut out);
        }
        out.push(b'\n');
    }
    out.push(b'\n');
    out.extend_from_slice(signed_headers.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(payload_hash.as_bytes());
    Ok(out)
}
