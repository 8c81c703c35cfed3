//! HMAC keys: GenerateMac and VerifyMac.
//!
//! An HMAC key has one version (HMAC keys do not rotate); its material is
//! the raw HMAC key, generated (28, 32, 48 or 64 bytes by spec) or imported
//! (see `import.rs` for the lengths AWS accepts). A MAC is RFC 2104's, full
//! length, so any HMAC implementation given the same key computes it.

use atrest_crypto::mac::{self, MacAlgorithm};
use serde::{Deserialize, Serialize};

use super::authz::Facts;
use super::{Call, KeyService};
use crate::KmsError;
use crate::api::{self, Blob, SecretBlob};
use crate::records::{KeySpec, KeyUsage};

/// The longest message GenerateMac and VerifyMac take, in bytes.
pub const MAX_MESSAGE: usize = 4096;

const ALGORITHMS: [&str; 4] = [
    "HMAC_SHA_224",
    "HMAC_SHA_256",
    "HMAC_SHA_384",
    "HMAC_SHA_512",
];

/// GenerateMac.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GenerateMacRequest {
    /// The HMAC key: key id, key ARN, alias name or alias ARN.
    pub key_id: Option<String>,
    /// The message, 1 to 4096 bytes.
    pub message: Option<SecretBlob>,
    /// `HMAC_SHA_224`, `HMAC_SHA_256`, `HMAC_SHA_384` or `HMAC_SHA_512`.
    pub mac_algorithm: Option<String>,
    /// Grant tokens.
    pub grant_tokens: Option<Vec<String>>,
    /// Check authorization only.
    pub dry_run: Option<bool>,
}

/// GenerateMac's response.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GenerateMacResponse {
    /// Key ARN.
    pub key_id: String,
    /// The MAC.
    pub mac: Blob,
    /// The algorithm.
    pub mac_algorithm: &'static str,
}

/// VerifyMac.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct VerifyMacRequest {
    /// The HMAC key.
    pub key_id: Option<String>,
    /// The message, 1 to 4096 bytes.
    pub message: Option<SecretBlob>,
    /// The algorithm the MAC was made with.
    pub mac_algorithm: Option<String>,
    /// The MAC to check.
    pub mac: Option<Blob>,
    /// Grant tokens.
    pub grant_tokens: Option<Vec<String>>,
    /// Check authorization only.
    pub dry_run: Option<bool>,
}

/// VerifyMac's response (only when the MAC is valid).
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct VerifyMacResponse {
    /// Key ARN.
    pub key_id: String,
    /// Always true: an invalid MAC is `KMSInvalidMacException`.
    pub mac_valid: bool,
    /// The algorithm.
    pub mac_algorithm: &'static str,
}

/// The algorithm of AWS's name (ValidationException for any other name).
fn parse_algorithm(name: Option<String>) -> Result<(&'static str, MacAlgorithm), KmsError> {
    let name = api::required(name, "macAlgorithm")?;
    let alg = match name.as_str() {
        "HMAC_SHA_224" => MacAlgorithm::HmacSha224,
        "HMAC_SHA_256" => MacAlgorithm::HmacSha256,
        "HMAC_SHA_384" => MacAlgorithm::HmacSha384,
        "HMAC_SHA_512" => MacAlgorithm::HmacSha512,
        other => {
            return Err(KmsError::constraint(
                "macAlgorithm",
                other,
                &format!(
                    "Member must satisfy enum value set: [{}]",
                    ALGORITHMS.join(", ")
                ),
            ));
        }
    };
    let idx = MacAlgorithm::ALL
        .iter()
        .position(|a| *a == alg)
        .unwrap_or_default();
    Ok((ALGORITHMS[idx], alg))
}

/// The message, checked for AWS's length bounds.
fn message(m: Option<SecretBlob>) -> Result<SecretBlob, KmsError> {
    let m = api::required(m, "message")?;
    if let Some(e) = KmsError::length("message", None, m.0.len(), 1, MAX_MESSAGE) {
        return Err(e);
    }
    Ok(m)
}

/// The one MAC algorithm of an HMAC key spec.
fn key_algorithm(spec: KeySpec) -> Option<MacAlgorithm> {
    match spec {
        KeySpec::Hmac224 => Some(MacAlgorithm::HmacSha224),
        KeySpec::Hmac256 => Some(MacAlgorithm::HmacSha256),
        KeySpec::Hmac384 => Some(MacAlgorithm::HmacSha384),
        KeySpec::Hmac512 => Some(MacAlgorithm::HmacSha512),
        _ => None,
    }
}

impl KeyService {
    /// Resolves, authorizes and checks an HMAC key for `action`, and
    /// returns its key ARN and material.
    #[allow(clippy::too_many_arguments, reason = "two call sites")]
    fn mac_key(
        &self,
        call: &Call<'_>,
        key_id: Option<String>,
        action: &str,
        alg_name: &str,
        alg: MacAlgorithm,
        grant_tokens: Option<&[String]>,
        dry_run: Option<bool>,
    ) -> Result<(String, std::sync::Arc<super::Material>), KmsError> {
        self.check_grant_tokens(grant_tokens)?;
        let tx = self.store.read()?;
        let more = [("kms:MacAlgorithm", alg_name)];
        let facts = Facts {
            more: &more,
            ..Facts::default()
        };
        let (key, material) =
            self.usable_key(&*tx, call, key_id, "keyId", action, facts, |key| {
                Self::require_usage(key, KeyUsage::GenerateVerifyMac, false, action)?;
                if key_algorithm(key.spec) != Some(alg) {
                    return Err(KmsError::InvalidKeyUsage(format!(
                        "{} has KeySpec {}, which does not support MacAlgorithm {alg_name}.",
                        Self::arn(key),
                        key.spec.as_str()
                    )));
                }
                Ok(())
            })?;
        if dry_run == Some(true) {
            return Err(KmsError::DryRun);
        }
        Ok((Self::arn(&key), material))
    }

    /// GenerateMac.
    pub fn generate_mac(
        &self,
        call: &Call<'_>,
        req: GenerateMacRequest,
    ) -> Result<GenerateMacResponse, KmsError> {
        let msg = message(req.message)?;
        let (alg_name, alg) = parse_algorithm(req.mac_algorithm)?;
        let (arn, material) = self.mac_key(
            call,
            req.key_id,
            "GenerateMac",
            alg_name,
            alg,
            req.grant_tokens.as_deref(),
            req.dry_run,
        )?;
        Ok(GenerateMacResponse {
            key_id: arn,
            mac: Blob(mac::generate(alg, material.secret.expose(), msg.0.expose())),
            mac_algorithm: alg_name,
        })
    }

    /// VerifyMac.
    pub fn verify_mac(
        &self,
        call: &Call<'_>,
        req: VerifyMacRequest,
    ) -> Result<VerifyMacResponse, KmsError> {
        let msg = message(req.message)?;
        let (alg_name, alg) = parse_algorithm(req.mac_algorithm)?;
        let tag = api::required(req.mac, "mac")?;
        if let Some(e) = KmsError::length("mac", None, tag.0.len(), 1, 6144) {
            return Err(e);
        }
        let (arn, material) = self.mac_key(
            call,
            req.key_id,
            "VerifyMac",
            alg_name,
            alg,
            req.grant_tokens.as_deref(),
            req.dry_run,
        )?;
        if !mac::verify(alg, material.secret.expose(), msg.0.expose(), &tag.0) {
            return Err(KmsError::InvalidMac(
                "The MAC is not valid for this message, KMS key and MAC algorithm.".into(),
            ));
        }
        Ok(VerifyMacResponse {
            key_id: arn,
            mac_valid: true,
            mac_algorithm: alg_name,
        })
    }
}
