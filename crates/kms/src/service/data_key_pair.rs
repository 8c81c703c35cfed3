//! GenerateDataKeyPair and GenerateDataKeyPairWithoutPlaintext.
//!
//! A fresh key pair of the requested spec; its PKCS#8 private key is
//! encrypted under a symmetric encryption key exactly as Encrypt would
//! (the same blob, the encryption context bound), so Decrypt of
//! `PrivateKeyCiphertextBlob` gives the PKCS#8 back. The public key is DER
//! SubjectPublicKeyInfo. AWS's `SM2` spec (China Regions only) and its
//! `ML_KEM_*` specs (aws-lc-rs encodes no ML-KEM private key as PKCS#8) are
//! refused with `UnsupportedOperationException`.

use atrest_crypto::keypair::{self, KeyPairSpec};
use serde::{Deserialize, Serialize};

use super::{Call, KeyService};
use crate::KmsError;
use crate::api::{self, Blob, Context, SecretBlob};

const SPECS: &str = "[RSA_2048, RSA_3072, RSA_4096, ECC_NIST_P256, ECC_NIST_P384, ECC_NIST_P521, ECC_SECG_P256K1, SM2, ECC_NIST_EDWARDS25519, ML_KEM_512, ML_KEM_768, ML_KEM_1024]";

/// GenerateDataKeyPair and GenerateDataKeyPairWithoutPlaintext.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GenerateDataKeyPairRequest {
    /// The symmetric encryption key that encrypts the private key.
    pub key_id: Option<String>,
    /// The kind of key pair.
    pub key_pair_spec: Option<String>,
    /// Bound to the encrypted private key.
    pub encryption_context: Option<Context>,
    /// Grant tokens.
    pub grant_tokens: Option<Vec<String>>,
    /// Nitro Enclaves attestation: refused.
    pub recipient: Option<serde_json::Value>,
    /// Check authorization only.
    pub dry_run: Option<bool>,
}

/// GenerateDataKeyPair's response (without `PrivateKeyPlaintext`,
/// GenerateDataKeyPairWithoutPlaintext's).
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GenerateDataKeyPairResponse {
    /// The PKCS#8 private key, encrypted as Encrypt would.
    pub private_key_ciphertext_blob: Blob,
    /// The PKCS#8 private key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_key_plaintext: Option<SecretBlob>,
    /// DER SubjectPublicKeyInfo.
    pub public_key: Blob,
    /// ARN of the key that encrypted the private key.
    pub key_id: String,
    /// The spec asked for.
    pub key_pair_spec: &'static str,
    /// The material that encrypted the private key.
    pub key_material_id: String,
}

fn pair_spec(name: &str) -> Result<(KeyPairSpec, &'static str), KmsError> {
    Ok(match name {
        "RSA_2048" => (KeyPairSpec::Rsa2048, "RSA_2048"),
        "RSA_3072" => (KeyPairSpec::Rsa3072, "RSA_3072"),
        "RSA_4096" => (KeyPairSpec::Rsa4096, "RSA_4096"),
        "ECC_NIST_P256" => (KeyPairSpec::EccNistP256, "ECC_NIST_P256"),
        "ECC_NIST_P384" => (KeyPairSpec::EccNistP384, "ECC_NIST_P384"),
        "ECC_NIST_P521" => (KeyPairSpec::EccNistP521, "ECC_NIST_P521"),
        "ECC_SECG_P256K1" => (KeyPairSpec::EccSecgP256k1, "ECC_SECG_P256K1"),
        "ECC_NIST_EDWARDS25519" => (KeyPairSpec::Ed25519, "ECC_NIST_EDWARDS25519"),
        "SM2" => {
            return Err(KmsError::UnsupportedOperation(
                "The SM2 key pair spec is offered by AWS only in China Regions; atrest does not support it."
                    .into(),
            ));
        }
        "ML_KEM_512" | "ML_KEM_768" | "ML_KEM_1024" => {
            return Err(KmsError::UnsupportedOperation(format!(
                "The {name} key pair spec is not supported by atrest: its cryptographic library (aws-lc-rs) does not encode ML-KEM private keys as PKCS#8."
            )));
        }
        other => {
            return Err(KmsError::constraint(
                "keyPairSpec",
                other,
                &format!("Member must satisfy enum value set: {SPECS}"),
            ));
        }
    })
}

impl KeyService {
    /// GenerateDataKeyPair (`with_plaintext`) and
    /// GenerateDataKeyPairWithoutPlaintext.
    pub fn generate_data_key_pair(
        &self,
        call: &Call<'_>,
        req: GenerateDataKeyPairRequest,
        with_plaintext: bool,
    ) -> Result<GenerateDataKeyPairResponse, KmsError> {
        let name = api::required(req.key_pair_spec, "keyPairSpec")?;
        let (spec, spec_name) = pair_spec(&name)?;
        super::crypto::no_recipient(req.recipient.as_ref())?;
        super::crypto::note_context(call, req.encryption_context.as_ref());
        let ctx = super::crypto::context(req.encryption_context.as_ref())?;
        self.check_grant_tokens(req.grant_tokens.as_deref())?;
        let action = if with_plaintext {
            "GenerateDataKeyPair"
        } else {
            "GenerateDataKeyPairWithoutPlaintext"
        };
        let tx = self.store.read()?;
        let (key, material) = self.encrypting_key(
            &*tx,
            call,
            req.key_id,
            "keyId",
            action,
            req.encryption_context.as_ref(),
            false,
            &[("kms:DataKeyPairSpec", spec_name)],
        )?;
        drop(tx);
        super::crypto::dry_run(req.dry_run)?;
        let private = keypair::generate(spec)?;
        let public = keypair::public_key_der(spec, private.expose())?;
        let sealed = self.seal_with(&key, &material, &ctx, private.expose())?;
        Ok(GenerateDataKeyPairResponse {
            private_key_ciphertext_blob: Blob(sealed),
            private_key_plaintext: with_plaintext.then_some(SecretBlob(private)),
            public_key: Blob(public),
            key_id: Self::arn(&key),
            key_pair_spec: spec_name,
            key_material_id: material.id.clone(),
        })
    }
}
