//! AWS KMS, or any server that speaks its JSON API (a second atrest,
//! moto's server, LocalStack...).
//!
//! A data key is wrapped with `Encrypt` under the remote key and unwrapped
//! with `Decrypt`, both with the encryption context
//! `{"atrest:purpose": "external-key-wrap"}`, so the provider's own audit
//! trail shows what the calls were for and a ciphertext made for another
//! purpose does not unwrap here. `DescribeKey` reports the key's state.
//! Requests are signed with SigV4 for the configured region.

use std::path::PathBuf;

use atrest_client::Credentials;
use atrest_crypto::SecretBytes;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Uri};
use http_body_util::Full;
use serde_json::{Value, json};

use crate::config::AwsKmsConfig;
use crate::http::{HttpClient, HttpResponse};
use crate::{KeyProvider, ProviderError, RemoteKey, check_data_key};

/// The encryption context of every wrap.
pub const CONTEXT_KEY: &str = "atrest:purpose";
/// Its value.
pub const CONTEXT_VALUE: &str = "external-key-wrap";

/// An AWS KMS provider.
pub struct AwsKms {
    http: HttpClient,
    endpoint: Uri,
    host: HeaderValue,
    region: String,
    creds: Credentials,
}

impl AwsKms {
    /// A provider for `c`; reads a profile's credentials now.
    pub fn new(c: &AwsKmsConfig) -> Result<Self, ProviderError> {
        let endpoint_text = c
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("https://kms.{}.amazonaws.com", c.region));
        let endpoint: Uri = endpoint_text
            .trim_end_matches('/')
            .parse()
            .map_err(|e| ProviderError::Config(format!("endpoint {endpoint_text}: {e}")))?;
        if !matches!(endpoint.scheme_str(), Some("http" | "https")) {
            return Err(ProviderError::Config(format!(
                "endpoint {endpoint_text} must be an http:// or https:// URL"
            )));
        }
        let host = endpoint
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            .ok_or_else(|| {
                ProviderError::Config(format!("endpoint {endpoint_text} has no host"))
            })?;
        let creds = match (&c.access_key_id, &c.secret_access_key, &c.profile) {
            (Some(id), Some(secret), None) => Credentials {
                access_key_id: id.clone(),
                secret_access_key: SecretBytes::new(secret.expose().to_vec()),
            },
            (None, None, profile) => {
                let path = c
                    .credentials_file
                    .clone()
                    .or_else(default_credentials_file)
                    .ok_or_else(|| {
                        ProviderError::Config("no credentials file (set credentials_file)".into())
                    })?;
                atrest_client::load_shared_credentials(
                    &path,
                    profile.as_deref().unwrap_or("default"),
                )
                .map_err(|e| ProviderError::Config(e.to_string()))?
            }
            _ => {
                return Err(ProviderError::Config(
                    "give either access_key_id and secret_access_key, or a profile".into(),
                ));
            }
        };
        Ok(Self {
            http: HttpClient::new(c.ca_file.as_deref(), c.transport())?,
            endpoint,
            host,
            region: c.region.clone(),
            creds,
        })
    }

    /// Calls `TrentService.<op>`; maps AWS error types to provider errors.
    fn call(&self, op: &str, body: &Value) -> Result<Value, ProviderError> {
        let body = Bytes::from(body.to_string());
        let resp = self.http.send(|| {
            let mut req = Request::builder()
                .method(Method::POST)
                .uri(self.endpoint.clone())
                .header("host", self.host.clone())
                .header("content-type", "application/x-amz-json-1.1")
                .header("x-amz-target", format!("TrentService.{op}"))
                .body(())
                .map_err(|e| ProviderError::Config(e.to_string()))?;
            let (method, uri) = (req.method().clone(), req.uri().clone());
            atrest_sigv4::sign(
                &method,
                &uri,
                req.headers_mut(),
                &body,
                &atrest_sigv4::Credentials {
                    access_key_id: &self.creds.access_key_id,
                    secret_access_key: self.creds.secret_access_key.expose(),
                },
                &atrest_sigv4::Scope {
                    region: &self.region,
                    service: "kms",
                    time: time::OffsetDateTime::now_utc(),
                },
            )
            .map_err(|e| ProviderError::Config(format!("signing: {e}")))?;
            let (parts, ()) = req.into_parts();
            Ok(Request::from_parts(parts, Full::new(body.clone())))
        })?;
        if resp.status == 200 {
            return serde_json::from_slice(&resp.body)
                .map_err(|e| ProviderError::Protocol(format!("{op}: {e}")));
        }
        Err(map_error(op, &resp))
    }

    fn context() -> Value {
        json!({ CONTEXT_KEY: CONTEXT_VALUE })
    }
}

fn default_credentials_file() -> Option<PathBuf> {
    std::env::var_os("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".aws/credentials")))
}

/// AWS's error type without a namespace prefix (`com.amazonaws.kms#X`).
fn error_type(resp: &HttpResponse) -> (String, String) {
    let v = resp.json();
    let t = v.get("__type").and_then(Value::as_str).unwrap_or_default();
    let t = t.rsplit('#').next().unwrap_or(t).to_owned();
    let msg = v
        .get("message")
        .or_else(|| v.get("Message"))
        .and_then(Value::as_str)
        .map_or_else(|| resp.excerpt(), str::to_owned);
    (t, msg)
}

fn map_error(op: &str, resp: &HttpResponse) -> ProviderError {
    let (t, msg) = error_type(resp);
    if t.is_empty() {
        return if resp.is_transient() {
            ProviderError::Unavailable(format!("{op}: {}", resp.excerpt()))
        } else {
            ProviderError::Protocol(format!("{op}: {}", resp.excerpt()))
        };
    }
    let e = from_aws_error(op, &t, &msg);
    match e {
        ProviderError::Protocol(text) if resp.is_transient() => ProviderError::Unavailable(text),
        e => e,
    }
}

/// What an AWS KMS error type means for a provider (shared with atrest's
/// in-process key service provider).
#[must_use]
pub fn from_aws_error(op: &str, aws_type: &str, message: &str) -> ProviderError {
    let text = format!("{op}: {aws_type}: {message}");
    match aws_type {
        "NotFoundException" => ProviderError::NotFound(text),
        "DisabledException"
        | "KMSInvalidStateException"
        | "AccessDeniedException"
        | "KeyUnavailableException"
        | "UnrecognizedClientException"
        | "InvalidSignatureException"
        | "IncompleteSignatureException"
        | "InvalidGrantTokenException"
        | "ExpiredTokenException" => ProviderError::Refused(text),
        "InvalidCiphertextException" | "IncorrectKeyException" => {
            ProviderError::InvalidCiphertext(text)
        }
        "ThrottlingException"
        | "KMSInternalException"
        | "DependencyTimeoutException"
        | "LimitExceededException" => ProviderError::Unavailable(text),
        _ => ProviderError::Protocol(text),
    }
}

fn b64_field(v: &Value, field: &str, op: &str) -> Result<Vec<u8>, ProviderError> {
    let s = v
        .get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| ProviderError::Protocol(format!("{op}: no {field} in the answer")))?;
    B64.decode(s)
        .map_err(|e| ProviderError::Protocol(format!("{op}: {field}: {e}")))
}

impl KeyProvider for AwsKms {
    fn kind(&self) -> &'static str {
        "aws-kms"
    }

    fn endpoint(&self) -> String {
        self.endpoint.to_string()
    }

    fn wrap(&self, key: &str, data_key: &[u8]) -> Result<Vec<u8>, ProviderError> {
        check_data_key(data_key)?;
        let out = self.call(
            "Encrypt",
            &json!({
                "KeyId": key,
                "Plaintext": B64.encode(data_key),
                "EncryptionContext": Self::context(),
            }),
        )?;
        b64_field(&out, "CiphertextBlob", "Encrypt")
    }

    fn unwrap(&self, key: &str, wrapped: &[u8]) -> Result<SecretBytes, ProviderError> {
        // AWS KMS ciphertexts are at most 6144 bytes; an empty one is a
        // request AWS refuses as malformed, not as an invalid ciphertext.
        if wrapped.is_empty() || wrapped.len() > 6144 {
            return Err(ProviderError::InvalidCiphertext(format!(
                "a wrapped key of {} bytes",
                wrapped.len()
            )));
        }
        let out = self.call(
            "Decrypt",
            &json!({
                "KeyId": key,
                "CiphertextBlob": B64.encode(wrapped),
                "EncryptionContext": Self::context(),
            }),
        )?;
        Ok(SecretBytes::new(b64_field(&out, "Plaintext", "Decrypt")?))
    }

    fn decrypt_blob(
        &self,
        key: &str,
        blob: &[u8],
        context: &std::collections::BTreeMap<String, String>,
    ) -> Result<SecretBytes, ProviderError> {
        if blob.is_empty() || blob.len() > 6144 {
            return Err(ProviderError::InvalidCiphertext(format!(
                "a ciphertext of {} bytes",
                blob.len()
            )));
        }
        let out = self.call(
            "Decrypt",
            &json!({
                "KeyId": key,
                "CiphertextBlob": B64.encode(blob),
                "EncryptionContext": context,
            }),
        )?;
        Ok(SecretBytes::new(b64_field(&out, "Plaintext", "Decrypt")?))
    }

    fn describe(&self, key: &str) -> Result<RemoteKey, ProviderError> {
        let out = self.call("DescribeKey", &json!({ "KeyId": key }))?;
        let m = out
            .get("KeyMetadata")
            .ok_or_else(|| ProviderError::Protocol("DescribeKey: no KeyMetadata".into()))?;
        let s = |f: &str| m.get(f).and_then(Value::as_str).map(str::to_owned);
        let state = s("KeyState").unwrap_or_else(|| "Unknown".into());
        let mut details = std::collections::BTreeMap::new();
        for f in ["KeySpec", "KeyUsage", "Origin", "KeyManager", "KeyId"] {
            if let Some(v) = s(f) {
                details.insert(f.to_owned(), v);
            }
        }
        Ok(RemoteKey {
            id: s("Arn")
                .or_else(|| s("KeyId"))
                .unwrap_or_else(|| key.to_owned()),
            enabled: state == "Enabled",
            state,
            version: s("CurrentKeyMaterialId"),
            details,
        })
    }
}
