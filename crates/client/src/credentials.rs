//! AWS shared-credentials files (`[profile]` sections of `key = value`).

use std::path::Path;

use atrest_crypto::SecretBytes;

use crate::ClientError;

/// An access key id and its secret.
pub struct Credentials {
    /// The access key id.
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: SecretBytes,
}

impl core::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

/// Reads `profile` from an AWS shared-credentials file.
pub fn load_shared_credentials(path: &Path, profile: &str) -> Result<Credentials, ClientError> {
    let text = SecretBytes::new(
        std::fs::read(path)
            .map_err(|e| ClientError::Credentials(format!("{}: {e}", path.display())))?,
    );
    let text = std::str::from_utf8(text.expose())
        .map_err(|_| ClientError::Credentials(format!("{} is not UTF-8", path.display())))?;
    let mut in_profile = false;
    let (mut id, mut secret) = (None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_profile = name.trim() == profile;
            continue;
        }
        if !in_profile {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            match k.trim() {
                "aws_access_key_id" => id = Some(v.trim().to_owned()),
                "aws_secret_access_key" => {
                    secret = Some(SecretBytes::new(v.trim().as_bytes().to_vec()));
                }
                _ => {}
            }
        }
    }
    match (id, secret) {
        (Some(access_key_id), Some(secret_access_key)) => Ok(Credentials {
            access_key_id,
            secret_access_key,
        }),
        _ => Err(ClientError::Credentials(format!(
            "profile [{profile}] in {} has no aws_access_key_id and aws_secret_access_key",
            path.display()
        ))),
    }
}
