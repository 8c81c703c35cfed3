//! STUB: being written.

use atrest_crypto::SecretBytes;

use crate::config::AwsKmsConfig;
use crate::{KeyProvider, ProviderError, RemoteKey};

/// STUB.
pub struct AwsKms;

impl AwsKms {
    /// STUB.
    pub fn new(_c: &AwsKmsConfig) -> Result<Self, ProviderError> {
        Err(ProviderError::Config("not built yet".into()))
    }
}

impl KeyProvider for AwsKms {
    fn kind(&self) -> &'static str {
        "stub"
    }
    fn endpoint(&self) -> String {
        String::new()
    }
    fn wrap(&self, _key: &str, _data_key: &[u8]) -> Result<Vec<u8>, ProviderError> {
        Err(ProviderError::Config("not built yet".into()))
    }
    fn unwrap(&self, _key: &str, _wrapped: &[u8]) -> Result<SecretBytes, ProviderError> {
        Err(ProviderError::Config("not built yet".into()))
    }
    fn describe(&self, _key: &str) -> Result<RemoteKey, ProviderError> {
        Err(ProviderError::Config("not built yet".into()))
    }
}
