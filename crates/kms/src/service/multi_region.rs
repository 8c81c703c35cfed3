//! Multi-Region keys: ReplicateKey, UpdatePrimaryRegion.

use super::{Call, KeyService};
use crate::KmsError;

impl KeyService {
    /// replicate_key: not yet implemented.
    pub fn replicate_key(
        &self,
        _call: &Call<'_>,
        _req: serde_json::Value,
    ) -> Result<serde_json::Value, KmsError> {
        Err(KmsError::UnsupportedOperation("not yet implemented".into()))
    }

    /// update_primary_region: not yet implemented.
    pub fn update_primary_region(
        &self,
        _call: &Call<'_>,
        _req: serde_json::Value,
    ) -> Result<serde_json::Value, KmsError> {
        Err(KmsError::UnsupportedOperation("not yet implemented".into()))
    }
}
