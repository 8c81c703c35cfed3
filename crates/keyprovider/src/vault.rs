//! HashiCorp Vault / OpenBao, transit secrets engine.
//!
//! * Every request carries `X-Vault-Token` (and `X-Vault-Namespace` when a
//!   namespace is configured); the engine is mounted at `transit` unless
//!   `mount` says otherwise.
//! * describe: `GET /v1/{mount}/keys/{name}`. Vault has no "disabled" flag:
//!   a key is usable when it exists and its type supports encryption. Access
//!   removed (403, "permission denied") is a refusal; a missing key is not
//!   found.
//! * wrap: `POST /v1/{mount}/encrypt/{name}`; the wrapped key is Vault's
//!   ciphertext string (`vault:vN:...`), which records the key version, so a
//!   rotation in Vault needs no change in atrest: old wrapped keys still
//!   unwrap. Transit's encrypt creates a missing key when the token may
//!   (upsert), so wrap reads the key first and refuses a missing one.
//! * unwrap: `POST /v1/{mount}/decrypt/{name}`.
//! * [`VaultTransit::rewrap`]: `POST /v1/{mount}/rewrap/{name}` moves a
//!   wrapped key to the key's latest version without exposing it.

use std::collections::BTreeMap;

use atrest_crypto::SecretBytes;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderValue, Method, Request};
use http_body_util::Full;
use serde_json::{Value, json};

use crate::config::VaultTransitConfig;
use crate::http::{HttpClient, HttpResponse};
use crate::{KeyProvider, ProviderError, RemoteKey};

/// Which call an answer came from (errors map differently).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Describe,
    Wrap,
    Unwrap,
}

/// Vault / OpenBao transit.
pub struct VaultTransit {
    http: HttpClient,
    address: String,
    mount: String,
    namespace: Option<HeaderValue>,
    token: HeaderValue,
}

impl core::fmt::Debug for VaultTransit {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VaultTransit")
            .field("address", &self.address)
            .field("mount", &self.mount)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

use crate::cfg_err;

/// A transit key name: letters, digits, `-`, `_`, `.` (no `/`).
fn check_name(key: &str) -> Result<&str, ProviderError> {
    if key.is_empty()
        || key.len() > 256
        || key.starts_with('.')
        || !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(ProviderError::Config(format!(
            "{key:?} is not a transit key name (letters, digits, '-', '_' and '.')"
        )));
    }
    Ok(key)
}

/// Vault's `errors` list, joined.
fn vault_errors(resp: &HttpResponse) -> String {
    let v = resp.json();
    let text = match v["errors"].as_array() {
        Some(a) if !a.is_empty() => a
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join("; "),
        Some(_) => String::new(),
        None => resp.excerpt(),
    };
    text.chars().filter(|c| !c.is_control()).take(300).collect()
}

/// A ciphertext string as transit writes it: `vault:v<N>:<base64>`.
fn check_ciphertext(wrapped: &[u8]) -> Result<&str, ProviderError> {
    let bad =
        |why: &str| ProviderError::InvalidCiphertext(format!("not a transit ciphertext: {why}"));
    let s = std::str::from_utf8(wrapped).map_err(|_| bad("not text"))?;
    let rest = s
        .strip_prefix("vault:v")
        .ok_or_else(|| bad("no vault:v prefix"))?;
    let (version, body) = rest.split_once(':').ok_or_else(|| bad("no version"))?;
    if version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("malformed version"));
    }
    if body.is_empty()
        || !body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
    {
        return Err(bad("malformed body"));
    }
    Ok(s)
}

impl VaultTransit {
    /// A provider for one Vault and one transit mount. Makes no call.
    pub fn new(c: &VaultTransitConfig) -> Result<Self, ProviderError> {
        let address = c.address.trim().trim_end_matches('/');
        let rest = address
            .strip_prefix("https://")
            .or_else(|| address.strip_prefix("http://"))
            .ok_or_else(|| {
                ProviderError::Config(format!("address {address:?} is not an http(s) URL"))
            })?;
        if rest.is_empty() || rest.contains(['/', '?', '#', ' ']) {
            return Err(ProviderError::Config(format!(
                "address {address:?} must be scheme://host:port only"
            )));
        }
        address
            .parse::<http::Uri>()
            .map_err(|e| ProviderError::Config(format!("address {address:?}: {e}")))?;
        let mount = c.mount.as_deref().unwrap_or("transit").trim_matches('/');
        if mount.is_empty()
            || mount
                .split('/')
                .any(|seg| seg.is_empty() || seg == "." || seg == "..")
            || !mount
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
        {
            return Err(ProviderError::Config(format!(
                "mount {mount:?} is not a mount path"
            )));
        }
        let namespace = match c.namespace.as_deref().map(|n| n.trim_matches('/')) {
            None | Some("") => None,
            Some(n) => Some(
                HeaderValue::from_str(n)
                    .map_err(|_| ProviderError::Config(format!("namespace {n:?} is not valid")))?,
            ),
        };
        let token = c.token.as_str()?;
        if token.is_empty() {
            return Err(ProviderError::Config("the Vault token is empty".into()));
        }
        let mut token = HeaderValue::from_str(token).map_err(|_| {
            ProviderError::Config("the Vault token has characters a header cannot carry".into())
        })?;
        token.set_sensitive(true);
        Ok(Self {
            http: HttpClient::new(c.ca_file.as_deref(), c.transport())?,
            address: address.to_owned(),
            mount: mount.to_owned(),
            namespace,
            token,
        })
    }

    fn url(&self, op: &str, name: &str) -> String {
        format!("{}/v1/{}/{op}/{name}", self.address, self.mount)
    }

    fn call(
        &self,
        method: &Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<HttpResponse, ProviderError> {
        let body = body.map_or_else(Bytes::new, |v| Bytes::from(v.to_string()));
        self.http.send(|| {
            let mut b = Request::builder()
                .method(method.clone())
                .uri(url)
                .header("X-Vault-Token", self.token.clone())
                .header("X-Vault-Request", "true")
                .header(ACCEPT, "application/json");
            if let Some(ns) = &self.namespace {
                b = b.header("X-Vault-Namespace", ns.clone());
            }
            if !body.is_empty() {
                b = b.header(CONTENT_TYPE, "application/json");
            }
            b.body(Full::new(body.clone())).map_err(cfg_err)
        })
    }

    /// Maps an error answer.
    fn error(&self, resp: &HttpResponse, op: Op, what: &str) -> ProviderError {
        let errors = vault_errors(resp);
        let lower = errors.to_ascii_lowercase();
        let msg = format!("{what}: HTTP {}: {errors}", resp.status);
        match resp.status {
            403 => ProviderError::Refused(msg),
            404 if lower.contains("no handler for route") => ProviderError::Config(format!(
                "{msg} (is the transit engine mounted at {}?)",
                self.mount
            )),
            404 => ProviderError::NotFound(msg),
            400 if lower.contains("key not found") || lower.contains("no existing key") => {
                ProviderError::NotFound(msg)
            }
            400 if lower.contains("disallowed by policy") || lower.contains("too old") => {
                ProviderError::Refused(msg)
            }
            400 if op == Op::Unwrap
                && (lower.contains("invalid ciphertext")
                    || lower.contains("message authentication failed")
                    || lower.contains("decode")
                    || lower.contains("ciphertext")) =>
            {
                ProviderError::InvalidCiphertext(msg)
            }
            400 => ProviderError::Config(msg),
            _ if resp.is_transient() => ProviderError::Unavailable(msg),
            _ => ProviderError::Protocol(msg),
        }
    }

    /// Reads the key (`GET /v1/{mount}/keys/{name}`).
    fn read_key(&self, name: &str) -> Result<Value, ProviderError> {
        let resp = self.call(&Method::GET, &self.url("keys", name), None)?;
        if resp.status != 200 {
            return Err(self.error(&resp, Op::Describe, &format!("key {name}")));
        }
        let v = resp.json();
        if !v["data"].is_object() {
            return Err(ProviderError::Protocol(format!(
                "key {name}: the answer has no data"
            )));
        }
        Ok(v)
    }

    /// Upgrades a wrapped key to the key's latest version (transit's
    /// rewrap: the data key never leaves Vault). Unwrap accepts both.
    pub fn rewrap(&self, key: &str, wrapped: &[u8]) -> Result<Vec<u8>, ProviderError> {
        let name = check_name(key)?;
        let ct = check_ciphertext(wrapped)?;
        let resp = self.call(
            &Method::POST,
            &self.url("rewrap", name),
            Some(&json!({"ciphertext": ct})),
        )?;
        if resp.status != 200 {
            return Err(self.error(&resp, Op::Unwrap, &format!("rewrapping under key {name}")));
        }
        let v = resp.json();
        let out = v["data"]["ciphertext"].as_str().unwrap_or_default();
        check_ciphertext(out.as_bytes()).map_err(|_| {
            ProviderError::Protocol(format!(
                "rewrapping under key {name}: the answer has no ciphertext"
            ))
        })?;
        Ok(out.as_bytes().to_vec())
    }
}

impl KeyProvider for VaultTransit {
    fn kind(&self) -> &'static str {
        "vault-transit"
    }

    fn endpoint(&self) -> String {
        format!("{}/v1/{}", self.address, self.mount)
    }

    fn wrap(&self, key: &str, data_key: &[u8]) -> Result<Vec<u8>, ProviderError> {
        crate::check_data_key(data_key)?;
        let name = check_name(key)?;
        // Encrypt creates a missing key when the token may: read it first.
        let described = self.describe(name)?;
        if !described.enabled {
            return Err(ProviderError::Config(format!(
                "key {name} ({}) cannot be used: {}",
                described.details.get("type").map_or("", String::as_str),
                described.state
            )));
        }
        let body = json!({"plaintext": STANDARD.encode(data_key)});
        let resp = self.call(&Method::POST, &self.url("encrypt", name), Some(&body))?;
        if resp.status != 200 {
            return Err(self.error(&resp, Op::Wrap, &format!("wrapping under key {name}")));
        }
        let v = resp.json();
        let ct = v["data"]["ciphertext"].as_str().unwrap_or_default();
        check_ciphertext(ct.as_bytes()).map_err(|_| {
            ProviderError::Protocol(format!(
                "wrapping under key {name}: the answer has no ciphertext"
            ))
        })?;
        Ok(ct.as_bytes().to_vec())
    }

    fn unwrap(&self, key: &str, wrapped: &[u8]) -> Result<SecretBytes, ProviderError> {
        let name = check_name(key)?;
        let ct = check_ciphertext(wrapped)?;
        let resp = self.call(
            &Method::POST,
            &self.url("decrypt", name),
            Some(&json!({"ciphertext": ct})),
        )?;
        let what = format!("unwrapping under key {name}");
        if resp.status != 200 {
            return Err(self.error(&resp, Op::Unwrap, &what));
        }
        let v = resp.json();
        v["data"]["plaintext"]
            .as_str()
            .and_then(|p| STANDARD.decode(p).ok())
            .filter(|p| !p.is_empty())
            .map(SecretBytes::new)
            .ok_or_else(|| {
                ProviderError::Protocol(format!("{what}: the answer has no base64 plaintext"))
            })
    }

    fn describe(&self, key: &str) -> Result<RemoteKey, ProviderError> {
        let name = check_name(key)?;
        let v = self.read_key(name)?;
        let d = &v["data"];
        let ty = d["type"].as_str().unwrap_or_default();
        let supports_enc = d["supports_encryption"].as_bool().unwrap_or(false);
        let supports_dec = d["supports_decryption"].as_bool().unwrap_or(supports_enc);
        let derived = d["derived"].as_bool().unwrap_or(false);
        let (enabled, state) = if !(supports_enc && supports_dec) {
            (false, format!("type {ty} does not support encryption"))
        } else if derived {
            (
                false,
                "derived keys need a context atrest does not send".to_owned(),
            )
        } else {
            (true, "usable".to_owned())
        };
        let latest = d["latest_version"].as_u64();
        let mut details = BTreeMap::new();
        details.insert("type".to_owned(), ty.to_owned());
        for f in [
            "latest_version",
            "min_decryption_version",
            "min_encryption_version",
        ] {
            if let Some(n) = d[f].as_u64() {
                details.insert(f.to_owned(), n.to_string());
            }
        }
        for f in [
            "deletion_allowed",
            "exportable",
            "derived",
            "auto_rotate_period",
        ] {
            match &d[f] {
                Value::Bool(b) => {
                    details.insert(f.to_owned(), b.to_string());
                }
                Value::Number(n) => {
                    details.insert(f.to_owned(), n.to_string());
                }
                _ => {}
            }
        }
        Ok(RemoteKey {
            id: format!("{}/v1/{}/keys/{name}", self.address, self.mount),
            enabled,
            state,
            version: latest.map(|n| format!("v{n}")),
            details,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(json: &str) -> Result<VaultTransit, ProviderError> {
        let f = crate::ProvidersFile::parse(json.as_bytes())?;
        match f.providers.get("v") {
            Some(crate::ProviderConfig::VaultTransit(c)) => VaultTransit::new(c),
            _ => Err(ProviderError::Config("no v".into())),
        }
    }

    #[test]
    fn configuration_is_checked_and_the_token_never_printed() {
        let p = provider(
            r#"{"v": {"type": "vault-transit", "address": "http://127.0.0.1:9/",
                "token": "hvs.t0ken", "mount": "/kv/transit/", "namespace": "team-a"}}"#,
        )
        .expect("valid");
        assert_eq!(p.endpoint(), "http://127.0.0.1:9/v1/kv/transit");
        assert_eq!(p.kind(), "vault-transit");
        assert!(!format!("{p:?}").contains("t0ken"));
        for bad in [
            r#""address": "vault:8200", "token": "t""#,
            r#""address": "http://v:8200/x", "token": "t""#,
            r#""address": "http://v:8200", "token": """#,
            r#""address": "http://v:8200", "token": "a\nb""#,
            r#""address": "http://v:8200", "token": "t", "mount": "a/../b""#,
            r#""address": "http://v:8200", "token": "t", "mount": "a?b""#,
        ] {
            let r = provider(&format!(r#"{{"v": {{"type": "vault-transit", {bad}}}}}"#));
            assert!(matches!(r, Err(ProviderError::Config(_))), "{bad}: {r:?}");
        }
    }

    #[test]
    fn names_and_ciphertexts() {
        assert!(check_name("my-key_1.a").is_ok());
        for bad in ["", "a/b", "../x", ".x", "a b", "k?x"] {
            assert!(
                matches!(check_name(bad), Err(ProviderError::Config(_))),
                "{bad}"
            );
        }
        assert!(check_ciphertext(b"vault:v12:QUJD+/==").is_ok());
        for bad in [
            &b""[..],
            b"vault:v1:",
            b"vault:1:QUJD",
            b"vault:vx:QUJD",
            b"vault:v1:QU\x01JD",
            b"\xff",
            b"vault:v1:QUJD:x",
        ] {
            assert!(
                matches!(
                    check_ciphertext(bad),
                    Err(ProviderError::InvalidCiphertext(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_bad_data_key_or_wrapped_key_is_refused_before_any_call() {
        let p = provider(
            r#"{"v": {"type": "vault-transit", "address": "http://127.0.0.1:9",
                "token": "t", "timeout_ms": 200, "retries": 0}}"#,
        )
        .expect("valid");
        assert!(matches!(p.wrap("k", &[]), Err(ProviderError::Config(_))));
        assert!(matches!(
            p.wrap("k", &[0u8; 65]),
            Err(ProviderError::Config(_))
        ));
        assert!(matches!(
            p.unwrap("k", b""),
            Err(ProviderError::InvalidCiphertext(_))
        ));
        assert!(matches!(
            p.rewrap("k", b"x"),
            Err(ProviderError::InvalidCiphertext(_))
        ));
        assert!(matches!(
            p.describe("k"),
            Err(ProviderError::Unavailable(_))
        ));
    }

    #[test]
    fn errors_map_to_their_meaning() {
        let p =
            provider(r#"{"v": {"type": "vault-transit", "address": "http://v:1", "token": "t"}}"#)
                .expect("valid");
        let r = |status: u16, body: &str| HttpResponse {
            status,
            body: Bytes::from(body.to_owned()),
        };
        let cases = [
            (
                403,
                r#"{"errors":["permission denied"]}"#,
                Op::Wrap,
                "Refused",
            ),
            (404, r#"{"errors":[]}"#, Op::Describe, "NotFound"),
            (
                400,
                r#"{"errors":["encryption key not found"]}"#,
                Op::Unwrap,
                "NotFound",
            ),
            (
                400,
                r#"{"errors":["invalid ciphertext: no prefix"]}"#,
                Op::Unwrap,
                "InvalidCiphertext",
            ),
            (
                400,
                r#"{"errors":["cipher: message authentication failed"]}"#,
                Op::Unwrap,
                "InvalidCiphertext",
            ),
            (
                400,
                r#"{"errors":["invalid ciphertext: version is disallowed by policy (too old)"]}"#,
                Op::Unwrap,
                "Refused",
            ),
            (
                404,
                r#"{"errors":["no handler for route \"x/keys/k\". route entry not found."]}"#,
                Op::Describe,
                "Config",
            ),
            (
                503,
                r#"{"errors":["Vault is sealed"]}"#,
                Op::Describe,
                "Unavailable",
            ),
            (418, "teapot", Op::Describe, "Protocol"),
        ];
        for (status, body, op, want) in cases {
            let e = p.error(&r(status, body), op, "x");
            assert!(format!("{e:?}").starts_with(want), "{status} {body}: {e:?}");
        }
    }
}
