//! The providers file: named provider configurations, JSON.
//!
//! ```json
//! {
//!   "corp-aws": {"type": "aws-kms", "region": "eu-west-1", "profile": "kms"},
//!   "corp-kmip": {"type": "kmip", "address": "kmip.corp:5696",
//!                 "ca_file": "/etc/atrest/kmip-ca.pem",
//!                 "client_cert": "/etc/atrest/kmip.pem", "client_key": "/etc/atrest/kmip.key"},
//!   "vault": {"type": "vault-transit", "address": "https://vault.corp:8200",
//!             "token": {"file": "/etc/atrest/vault-token"}}
//! }
//! ```
//!
//! A secret is given inline (`"secret"`) or, better, as `{"file": PATH}`,
//! read once when the file is loaded (one trailing newline is dropped).
//! Unknown fields are refused, so a misspelt option is not silently ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use atrest_crypto::SecretBytes;
use serde::{Deserialize, Deserializer};

use crate::ProviderError;

/// A secret from the configuration; never printed.
pub struct Secret(SecretBytes);

impl Secret {
    /// The secret's bytes.
    #[must_use]
    pub fn expose(&self) -> &[u8] {
        self.0.expose()
    }

    /// The secret as text (tokens, passwords).
    pub fn as_str(&self) -> Result<&str, ProviderError> {
        std::str::from_utf8(self.0.expose())
            .map_err(|_| ProviderError::Config("a secret is not UTF-8 text".into()))
    }

    /// A secret from memory (tests, and credentials read elsewhere).
    #[must_use]
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(SecretBytes::new(bytes))
    }
}

impl core::fmt::Debug for Secret {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Inline(String),
            File { file: PathBuf },
        }
        match Raw::deserialize(d)? {
            Raw::Inline(s) => Ok(Self(SecretBytes::new(s.into_bytes()))),
            Raw::File { file } => {
                let mut bytes = std::fs::read(&file).map_err(|e| {
                    serde::de::Error::custom(format!("reading {}: {e}", file.display()))
                })?;
                if bytes.last() == Some(&b'\n') {
                    bytes.pop();
                }
                Ok(Self(SecretBytes::new(bytes)))
            }
        }
    }
}

/// Timeouts and retries, shared by every provider type (each configuration
/// has `timeout_ms` and `retries`).
#[derive(Debug, Clone, Copy)]
pub struct Transport {
    /// How long one attempt may take, ms (connect, send, answer).
    pub timeout_ms: u64,
    /// How many times a transient failure is retried (with exponential
    /// backoff from 100 ms, doubled each time, with jitter).
    pub retries: u32,
}

impl Default for Transport {
    fn default() -> Self {
        Self {
            timeout_ms: default_timeout_ms(),
            retries: default_retries(),
        }
    }
}

fn default_timeout_ms() -> u64 {
    5_000
}
fn default_retries() -> u32 {
    2
}

/// AWS KMS, or any server that speaks its API.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsKmsConfig {
    /// The region requests are signed for.
    pub region: String,
    /// The endpoint (default `https://kms.<region>.amazonaws.com`).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Static credentials: the access key id...
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// ...and its secret.
    #[serde(default)]
    pub secret_access_key: Option<Secret>,
    /// Or a profile of an AWS shared credentials file.
    #[serde(default)]
    pub profile: Option<String>,
    /// The shared credentials file (default `~/.aws/credentials`, or
    /// `AWS_SHARED_CREDENTIALS_FILE`).
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// CA certificates to trust (PEM), for a private CA.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// How long one attempt may take, ms.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// How many times a transient failure is retried.
    #[serde(default = "default_retries")]
    pub retries: u32,
}

/// A KMIP server over mutual TLS.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KmipConfig {
    /// `host:port` (KMIP's port is 5696).
    pub address: String,
    /// The name the server's certificate must carry (default: the host).
    #[serde(default)]
    pub server_name: Option<String>,
    /// CA certificates that sign the server's certificate (PEM).
    pub ca_file: PathBuf,
    /// The client certificate chain (PEM).
    pub client_cert: PathBuf,
    /// The client's private key (PEM).
    pub client_key: PathBuf,
    /// How long one attempt may take, ms.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// How many times a transient failure is retried.
    #[serde(default = "default_retries")]
    pub retries: u32,
}

/// Azure Key Vault.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureKeyVaultConfig {
    /// The vault, `https://<name>.vault.azure.net`.
    pub vault_url: String,
    /// The Azure region the vault must be in (for example `westeurope`).
    pub region: String,
    /// The Entra ID tenant.
    pub tenant_id: String,
    /// The application (client) id.
    pub client_id: String,
    /// The client secret.
    pub client_secret: Secret,
    /// Token endpoint base (default `https://login.microsoftonline.com`).
    #[serde(default)]
    pub authority_url: Option<String>,
    /// Azure Resource Manager base (default `https://management.azure.com`).
    #[serde(default)]
    pub management_url: Option<String>,
    /// The vault's resource id in Resource Manager
    /// (`/subscriptions/.../providers/Microsoft.KeyVault/vaults/<name>`),
    /// to read its region and purge protection.
    pub vault_resource_id: String,
    /// `RSA-OAEP-256` (RSA keys) or `A256KW` (AES keys, Managed HSM).
    #[serde(default)]
    pub algorithm: Option<String>,
    /// CA certificates to trust (PEM), for a private CA.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// How long one attempt may take, ms.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// How many times a transient failure is retried.
    #[serde(default = "default_retries")]
    pub retries: u32,
}

/// HashiCorp Vault or OpenBao, transit secrets engine.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultTransitConfig {
    /// `https://vault.example:8200`.
    pub address: String,
    /// The Vault token.
    pub token: Secret,
    /// The transit engine's mount path (default `transit`).
    #[serde(default)]
    pub mount: Option<String>,
    /// Vault Enterprise / OpenBao namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// CA certificates to trust (PEM), for a private CA.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// How long one attempt may take, ms.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// How many times a transient failure is retried.
    #[serde(default = "default_retries")]
    pub retries: u32,
}

macro_rules! transport {
    ($($t:ty),*) => {$(
        impl $t {
            /// Its timeouts and retries.
            #[must_use]
            pub fn transport(&self) -> Transport {
                Transport { timeout_ms: self.timeout_ms, retries: self.retries }
            }
        }
    )*};
}
transport!(
    AwsKmsConfig,
    KmipConfig,
    AzureKeyVaultConfig,
    VaultTransitConfig
);

/// One provider.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ProviderConfig {
    /// AWS KMS or a compatible server.
    AwsKms(AwsKmsConfig),
    /// KMIP.
    Kmip(KmipConfig),
    /// Azure Key Vault.
    AzureKeyVault(AzureKeyVaultConfig),
    /// Vault / OpenBao transit.
    VaultTransit(VaultTransitConfig),
}

/// The providers file: name → configuration.
#[derive(Debug, Default)]
pub struct ProvidersFile {
    /// Providers by name.
    pub providers: BTreeMap<String, ProviderConfig>,
}

impl ProvidersFile {
    /// Reads and checks a providers file.
    pub fn load(path: &Path) -> Result<Self, ProviderError> {
        let bytes = std::fs::read(path)
            .map_err(|e| ProviderError::Config(format!("reading {}: {e}", path.display())))?;
        Self::parse(&bytes).map_err(|e| match e {
            ProviderError::Config(m) => ProviderError::Config(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Parses a providers file's bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, ProviderError> {
        let providers: BTreeMap<String, ProviderConfig> =
            serde_json::from_slice(bytes).map_err(|e| ProviderError::Config(e.to_string()))?;
        for name in providers.keys() {
            valid_name(name)?;
        }
        Ok(Self { providers })
    }
}

/// A provider name: 1 to 64 of `A-Za-z0-9_-` (it is shown as the custom key
/// store id of the keys under it).
pub fn valid_name(name: &str) -> Result<(), ProviderError> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(ProviderError::Config(format!(
            "provider name {name:?} must be 1 to 64 letters, digits, '-' or '_'"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_type_and_refuses_unknown_fields() {
        let f = ProvidersFile::parse(
            br#"{
              "a": {"type": "aws-kms", "region": "us-east-1", "endpoint": "http://127.0.0.1:1",
                    "access_key_id": "AK", "secret_access_key": "s3cret", "timeout_ms": 100},
              "k": {"type": "kmip", "address": "127.0.0.1:5696", "ca_file": "/ca",
                    "client_cert": "/c", "client_key": "/k"},
              "z": {"type": "azure-key-vault", "vault_url": "https://v.vault.azure.net",
                    "region": "westeurope", "tenant_id": "t", "client_id": "c",
                    "client_secret": "x", "vault_resource_id": "/subscriptions/s/v"},
              "v": {"type": "vault-transit", "address": "http://127.0.0.1:8200", "token": "t"}
            }"#,
        )
        .expect("parses");
        assert_eq!(f.providers.len(), 4);
        let ProviderConfig::AwsKms(a) = &f.providers["a"] else {
            panic!("aws-kms expected")
        };
        assert_eq!(a.timeout_ms, 100);
        assert_eq!(a.retries, 2);
        assert!(!format!("{a:?}").contains("s3cret"), "secret printed");

        let bad = ProvidersFile::parse(
            br#"{"a": {"type": "aws-kms", "region": "us-east-1", "endpont": "x"}}"#,
        );
        assert!(
            matches!(&bad, Err(ProviderError::Config(m)) if m.contains("endpont")),
            "{bad:?}"
        );
        let bad = ProvidersFile::parse(br#"{"a b": {"type": "kmip"}}"#);
        assert!(bad.is_err());
        let bad = ProvidersFile::parse(br#"{"a": {"type": "gcp-kms"}}"#);
        assert!(
            matches!(&bad, Err(ProviderError::Config(m)) if m.contains("gcp-kms")),
            "{bad:?}"
        );
    }

    #[test]
    fn secret_from_file_drops_one_newline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("tok");
        std::fs::write(&p, b"tok-123\n").expect("write");
        let json = format!(
            r#"{{"v": {{"type": "vault-transit", "address": "http://x", "token": {{"file": {:?}}}}}}}"#,
            p.display().to_string()
        );
        let f = ProvidersFile::parse(json.as_bytes()).expect("parses");
        let ProviderConfig::VaultTransit(v) = &f.providers["v"] else {
            panic!("vault expected")
        };
        assert_eq!(v.token.expose(), b"tok-123");
    }
}
