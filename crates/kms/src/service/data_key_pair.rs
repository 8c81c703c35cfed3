//! GenerateDataKeyPair and GenerateDataKeyPairWithoutPlaintext.

use super::{Call, KeyService};
use crate::KmsError;

impl KeyService {
    /// generate_data_key_pair: not yet implemented.
    pub fn generate_data_key_pair(
        &self,
        _call: &Call<'_>,
        _req: serde_json::Value,
        _with_plaintext: bool,
    ) -> Result<serde_json::Value, KmsError> {
        Err(KmsError::UnsupportedOperation("not yet implemented".into()))
    }
}
