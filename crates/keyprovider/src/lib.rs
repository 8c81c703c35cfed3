//! Key providers: a key held in another KMS wraps and unwraps atrest's keys.
//!
//! Owns: the [`KeyProvider`] trait (wrap a data key, unwrap it, describe the
//! remote key, check it), the providers' configuration file, the transport
//! each provider needs (blocking calls with timeouts and retries with
//! backoff), and the [`conformance`] suite every provider passes.
//!
//! Providers:
//! * [`aws::AwsKms`]: AWS KMS, or any AWS-KMS-compatible server (a second
//!   atrest among them), with SigV4 and static credentials or a profile.
//! * [`kmip::Kmip`]: a KMIP 1.2+ server over mutual TLS.
//! * [`azure::AzureKeyVault`]: Azure Key Vault's keys REST API.
//! * [`vault::VaultTransit`]: HashiCorp Vault / OpenBao transit.
//!
//! atrest's own key service is the default and needs no provider: a key
//! whose origin is not `EXTERNAL_KMS` never reaches this crate.
//!
//! Calls block the calling thread (the key service is synchronous and runs
//! on blocking threads); HTTP providers run their requests on a small private
//! runtime, so calling from anywhere is safe. No secret (credentials, tokens,
//! key material) is ever part of a [`ProviderError`] or a log line.

#![forbid(unsafe_code)]

pub mod aws;
pub mod azure;
pub mod config;
pub mod conformance;
pub mod http;
pub mod kmip;
pub mod ttlv;
pub mod vault;

use std::collections::BTreeMap;
use std::sync::Arc;

use atrest_crypto::SecretBytes;

pub use config::{ProviderConfig, ProvidersFile, Secret};

/// Why a provider call failed. Messages carry the provider's own words
/// (never a secret) so operators can act on them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProviderError {
    /// The provider refused to use the key: it is disabled, revoked, or our
    /// access to it was removed. atrest treats the key as revoked.
    #[error("the provider refused the key: {0}")]
    Refused(String),
    /// The remote key does not exist (or no longer does).
    #[error("the provider has no such key: {0}")]
    NotFound(String),
    /// The wrapped key was not produced by this key (or was altered).
    #[error("the provider could not unwrap the key: {0}")]
    InvalidCiphertext(String),
    /// The provider could not be reached or did not answer in time, after
    /// retries. Says nothing about the key.
    #[error("the provider is unavailable: {0}")]
    Unavailable(String),
    /// The provider answered something this client does not understand.
    #[error("unexpected answer from the provider: {0}")]
    Protocol(String),
    /// The provider's configuration is wrong (a file, a URL, a certificate),
    /// or the provider does not meet a requirement (for example an Azure
    /// vault without purge protection).
    #[error("provider configuration: {0}")]
    Config(String),
}

impl ProviderError {
    /// Whether this answer means the customer took the key away (disabled,
    /// revoked, access removed, deleted): keys under it lock. An unreachable
    /// provider does not revoke anything by itself.
    #[must_use]
    pub fn revokes(&self) -> bool {
        matches!(self, Self::Refused(_) | Self::NotFound(_))
    }

    /// Whether retrying the same call may succeed.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// What a provider says about a remote key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteKey {
    /// The key's id as the provider names it (an ARN, a KMIP unique
    /// identifier, a key URL, a transit key name).
    pub id: String,
    /// Whether the provider lets the key wrap and unwrap now.
    pub enabled: bool,
    /// The provider's own name for the key's state.
    pub state: String,
    /// The key's current version, where the provider versions keys.
    pub version: Option<String>,
    /// Other public facts (algorithm, region, recovery level...).
    pub details: BTreeMap<String, String>,
}

/// A key held in another KMS. Every method names the remote key; one
/// provider (one connection configuration) serves many keys.
pub trait KeyProvider: Send + Sync {
    /// The provider type, as in the configuration file (`aws-kms`, `kmip`,
    /// `azure-key-vault`, `vault-transit`).
    fn kind(&self) -> &'static str;

    /// Where the provider is (a URL or address), for display; no secrets.
    fn endpoint(&self) -> String;

    /// Wraps `data_key` (at most 64 bytes) under the remote key. The result
    /// is opaque and only [`KeyProvider::unwrap`] with the same key opens it.
    fn wrap(&self, key: &str, data_key: &[u8]) -> Result<Vec<u8>, ProviderError>;

    /// Unwraps what [`KeyProvider::wrap`] returned.
    fn unwrap(&self, key: &str, wrapped: &[u8]) -> Result<SecretBytes, ProviderError>;

    /// Describes the remote key.
    fn describe(&self, key: &str) -> Result<RemoteKey, ProviderError>;

    /// Decrypts a ciphertext blob that the remote key service made itself
    /// under `key` for `context` (AWS KMS `Decrypt`): the data key of a
    /// snapshot or backup another server (whose key service this is) put
    /// in shared object storage. Only providers that speak the KMS API
    /// can; the others answer [`ProviderError::Config`].
    fn decrypt_blob(
        &self,
        key: &str,
        blob: &[u8],
        context: &BTreeMap<String, String>,
    ) -> Result<SecretBytes, ProviderError> {
        let _ = (key, blob, context);
        Err(ProviderError::Config(format!(
            "a {} provider cannot decrypt another key service's ciphertexts; an aws-kms provider can",
            self.kind()
        )))
    }

    /// Whether the key can be used now: it is described as enabled, and a
    /// random data key survives a wrap and an unwrap (which catches access
    /// removed for one operation only). The health check calls this.
    fn check(&self, key: &str) -> Result<RemoteKey, ProviderError> {
        let described = self.describe(key)?;
        if !described.enabled {
            return Err(ProviderError::Refused(format!(
                "key {} is {}",
                described.id, described.state
            )));
        }
        let probe =
            SecretBytes::random(32).map_err(|e| ProviderError::Protocol(format!("random: {e}")))?;
        let wrapped = self.wrap(key, probe.expose())?;
        let back = self.unwrap(key, &wrapped)?;
        if back != probe {
            return Err(ProviderError::Protocol(
                "a probe data key did not survive wrap and unwrap".into(),
            ));
        }
        Ok(described)
    }
}

/// Opens the provider a configuration describes.
pub fn open(config: &ProviderConfig) -> Result<Arc<dyn KeyProvider>, ProviderError> {
    Ok(match config {
        ProviderConfig::AwsKms(c) => Arc::new(aws::AwsKms::new(c)?),
        ProviderConfig::Kmip(c) => Arc::new(kmip::Kmip::new(c)?),
        ProviderConfig::AzureKeyVault(c) => Arc::new(azure::AzureKeyVault::new(c)?),
        ProviderConfig::VaultTransit(c) => Arc::new(vault::VaultTransit::new(c)?),
    })
}

/// A configuration error from anything printable.
pub(crate) fn cfg_err(e: impl core::fmt::Display) -> ProviderError {
    ProviderError::Config(e.to_string())
}

/// The longest data key a provider must wrap.
pub const MAX_DATA_KEY: usize = 64;

/// Refuses a data key longer than [`MAX_DATA_KEY`] or empty.
pub(crate) fn check_data_key(data_key: &[u8]) -> Result<(), ProviderError> {
    if data_key.is_empty() || data_key.len() > MAX_DATA_KEY {
        return Err(ProviderError::Config(format!(
            "a data key must be 1 to {MAX_DATA_KEY} bytes, not {}",
            data_key.len()
        )));
    }
    Ok(())
}
