//! atrest's own key service as a [`KeyProvider`] (the default provider): a
//! key of this service wraps data keys, in-process, through the same
//! evaluation path as any caller. It passes the same conformance suite as
//! the external providers (`kms/tests/service/external.rs`), and lets code
//! that holds "a key in some provider" treat local and external keys alike.

use atrest_crypto::SecretBytes;
use atrest_keyprovider::aws::{CONTEXT_KEY, CONTEXT_VALUE, from_aws_error};
use atrest_keyprovider::{KeyProvider, ProviderError, RemoteKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use super::{Call, Caller, KeyService, RequestMeta};
use crate::Operation;

/// atrest's key service, used as `caller`.
pub struct LocalKeyService<'a> {
    kms: &'a KeyService,
    caller: Caller,
}

impl<'a> LocalKeyService<'a> {
    /// The key service as a provider acting as `caller`.
    #[must_use]
    pub fn new(kms: &'a KeyService, caller: Caller) -> Self {
        Self { kms, caller }
    }

    fn call(&self, op: Operation, body: &Value) -> Result<Value, ProviderError> {
        let meta = RequestMeta::in_process();
        let call = Call::new(&self.caller, &meta);
        let out = self
            .kms
            .call(&call, op, body.to_string().as_bytes())
            .map_err(|e| from_aws_error(op.name(), e.aws_type(), &e.to_string()))?;
        serde_json::from_slice(&out).map_err(|e| ProviderError::Protocol(e.to_string()))
    }
}

fn blob(v: &Value, field: &str) -> Result<Vec<u8>, ProviderError> {
    v.get(field)
        .and_then(Value::as_str)
        .and_then(|s| B64.decode(s).ok())
        .ok_or_else(|| ProviderError::Protocol(format!("no {field}")))
}

impl KeyProvider for LocalKeyService<'_> {
    fn kind(&self) -> &'static str {
        "atrest"
    }

    fn endpoint(&self) -> String {
        "in-process".into()
    }

    fn wrap(&self, key: &str, data_key: &[u8]) -> Result<Vec<u8>, ProviderError> {
        if data_key.is_empty() || data_key.len() > atrest_keyprovider::MAX_DATA_KEY {
            return Err(ProviderError::Config(format!(
                "a data key must be 1 to {} bytes, not {}",
                atrest_keyprovider::MAX_DATA_KEY,
                data_key.len()
            )));
        }
        let out = self.call(
            Operation::Encrypt,
            &json!({"KeyId": key, "Plaintext": B64.encode(data_key),
                    "EncryptionContext": {CONTEXT_KEY: CONTEXT_VALUE}}),
        )?;
        blob(&out, "CiphertextBlob")
    }

    fn unwrap(&self, key: &str, wrapped: &[u8]) -> Result<SecretBytes, ProviderError> {
        if wrapped.is_empty() {
            return Err(ProviderError::InvalidCiphertext(
                "an empty wrapped key".into(),
            ));
        }
        let out = self.call(
            Operation::Decrypt,
            &json!({"KeyId": key, "CiphertextBlob": B64.encode(wrapped),
                    "EncryptionContext": {CONTEXT_KEY: CONTEXT_VALUE}}),
        )?;
        Ok(SecretBytes::new(blob(&out, "Plaintext")?))
    }

    fn describe(&self, key: &str) -> Result<RemoteKey, ProviderError> {
        let out = self.call(Operation::DescribeKey, &json!({"KeyId": key}))?;
        let m = &out["KeyMetadata"];
        let state = m["KeyState"].as_str().unwrap_or("Unknown").to_owned();
        Ok(RemoteKey {
            id: m["Arn"].as_str().unwrap_or(key).to_owned(),
            enabled: state == "Enabled",
            state,
            version: m["CurrentKeyMaterialId"].as_str().map(str::to_owned),
            details: std::collections::BTreeMap::new(),
        })
    }
}
