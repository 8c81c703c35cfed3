//! Asymmetric keys: Sign, Verify, GetPublicKey, DeriveSharedSecret, and
//! Encrypt and Decrypt with RSA keys.

use super::{Call, KeyService};
use crate::KmsError;

impl KeyService {
    /// sign: not yet implemented.
    pub fn sign(
        &self,
        _call: &Call<'_>,
        _req: serde_json::Value,
    ) -> Result<serde_json::Value, KmsError> {
        Err(KmsError::UnsupportedOperation("not yet implemented".into()))
    }

    /// verify: not yet implemented.
    pub fn verify(
        &self,
        _call: &Call<'_>,
        _req: serde_json::Value,
    ) -> Result<serde_json::Value, KmsError> {
        Err(KmsError::UnsupportedOperation("not yet implemented".into()))
    }

    /// get_public_key: not yet implemented.
    pub fn get_public_key(
        &self,
        _call: &Call<'_>,
        _req: serde_json::Value,
    ) -> Result<serde_json::Value, KmsError> {
        Err(KmsError::UnsupportedOperation("not yet implemented".into()))
    }

    /// derive_shared_secret: not yet implemented.
    pub fn derive_shared_secret(
        &self,
        _call: &Call<'_>,
        _req: serde_json::Value,
    ) -> Result<serde_json::Value, KmsError> {
        Err(KmsError::UnsupportedOperation("not yet implemented".into()))
    }
}
