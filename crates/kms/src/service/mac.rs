//! HMAC keys: GenerateMac and VerifyMac.

use super::{Call, KeyService};
use crate::KmsError;

impl KeyService {
    /// generate_mac: not yet implemented.
    pub fn generate_mac(
        &self,
        _call: &Call<'_>,
        _req: serde_json::Value,
    ) -> Result<serde_json::Value, KmsError> {
        Err(KmsError::UnsupportedOperation("not yet implemented".into()))
    }

    /// verify_mac: not yet implemented.
    pub fn verify_mac(
        &self,
        _call: &Call<'_>,
        _req: serde_json::Value,
    ) -> Result<serde_json::Value, KmsError> {
        Err(KmsError::UnsupportedOperation("not yet implemented".into()))
    }
}
