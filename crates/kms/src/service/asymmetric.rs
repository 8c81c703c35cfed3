//! Asymmetric keys: Sign, Verify, GetPublicKey, DeriveSharedSecret, and
//! (called from `crypto.rs`) Encrypt, Decrypt and ReEncrypt with RSA keys.
//!
//! The cryptography is `atrest_crypto::asymmetric`; this module adds AWS's
//! request shapes, validation order and errors:
//!
//! * an algorithm name AWS does not know is a `ValidationException`; one
//!   AWS knows but the key's spec does not offer is an
//!   `InvalidKeyUsageException` ("Algorithm X is incompatible with key spec
//!   Y."), as is a key of another usage;
//! * a RAW message over 4096 bytes, a DIGEST of the wrong length, DIGEST
//!   with `ED25519_SHA_512` or ML-DSA, `EXTERNAL_MU` with anything but
//!   `ML_DSA_SHAKE_256` or of another length than 64 bytes, and a public
//!   key for DeriveSharedSecret that is not a DER SubjectPublicKeyInfo on
//!   the key's curve are `ValidationException`s;
//! * a signature that does not verify (of any length) is a
//!   `KMSInvalidSignatureException`; a Decrypt that fails is an
//!   `InvalidCiphertextException`;
//! * `ED25519_PH_SHA_512` takes RAW (hashed with SHA-512, then Ed25519ph)
//!   and a 64-byte SHA-512 DIGEST; `ML_DSA_SHAKE_256` takes RAW and a
//!   64-byte `EXTERNAL_MU` (FIPS 204's μ), whose signature is the message's.
//!
//! The private key is parsed once per key version and kept with the
//! unsealed material (`Material::parsed`).

use atrest_crypto::asymmetric::{
    self as asym, EncryptionAlgorithm, MessageType, PrivateKey, SigningAlgorithm,
};
use atrest_crypto::keypair::KeyPairSpec;
use atrest_crypto::{CryptoError, SecretBytes};
use atrest_store::ReadTx;
use serde::{Deserialize, Serialize};

use super::authz::Facts;
use super::{Call, KeyService, Material};
use crate::KmsError;
use crate::api::{self, Blob, KeyIdRequest, SecretBlob};
use crate::names::KeyRef;
use crate::records::{self, KeyRecord, KeySpec, KeyUsage};

/// AWS's signing algorithm names, for the enum constraint message.
const SIGNING_ALGORITHMS: &str = "[RSASSA_PSS_SHA_256, RSASSA_PSS_SHA_384, RSASSA_PSS_SHA_512, RSASSA_PKCS1_V1_5_SHA_256, RSASSA_PKCS1_V1_5_SHA_384, RSASSA_PKCS1_V1_5_SHA_512, ECDSA_SHA_256, ECDSA_SHA_384, ECDSA_SHA_512, SM2DSA, ML_DSA_SHAKE_256, ED25519_SHA_512, ED25519_PH_SHA_512]";

/// The largest signature Verify takes (AWS's limit).
const MAX_SIGNATURE: usize = 6144;

/// Sign.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SignRequest {
    /// The signing key.
    pub key_id: Option<String>,
    /// The message or digest.
    pub message: Option<SecretBlob>,
    /// `RAW` (default), `DIGEST` or `EXTERNAL_MU`.
    pub message_type: Option<String>,
    /// Grant tokens.
    pub grant_tokens: Option<Vec<String>>,
    /// The signing algorithm.
    pub signing_algorithm: Option<String>,
    /// Check authorization only.
    pub dry_run: Option<bool>,
}

/// Sign's response.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SignResponse {
    /// Key ARN.
    pub key_id: String,
    /// The signature (DER for ECDSA).
    pub signature: Blob,
    /// The algorithm used.
    pub signing_algorithm: &'static str,
}

/// Verify.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct VerifyRequest {
    /// The key that signed.
    pub key_id: Option<String>,
    /// The message or digest.
    pub message: Option<Blob>,
    /// `RAW` (default), `DIGEST` or `EXTERNAL_MU`.
    pub message_type: Option<String>,
    /// The signature.
    pub signature: Option<Blob>,
    /// The signing algorithm.
    pub signing_algorithm: Option<String>,
    /// Grant tokens.
    pub grant_tokens: Option<Vec<String>>,
    /// Check authorization only.
    pub dry_run: Option<bool>,
}

/// Verify's response (only ever with `SignatureValid: true`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct VerifyResponse {
    /// Key ARN.
    pub key_id: String,
    /// Always `true`: an invalid signature is an error.
    pub signature_valid: bool,
    /// The algorithm used.
    pub signing_algorithm: &'static str,
}

/// GetPublicKey's response.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GetPublicKeyResponse {
    /// Key ARN.
    pub key_id: String,
    /// DER SubjectPublicKeyInfo.
    pub public_key: Blob,
    /// The key spec (AWS's deprecated name).
    pub customer_master_key_spec: &'static str,
    /// The key spec.
    pub key_spec: &'static str,
    /// The key usage.
    pub key_usage: &'static str,
    /// For ENCRYPT_DECRYPT keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption_algorithms: Option<&'static [&'static str]>,
    /// For SIGN_VERIFY keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing_algorithms: Option<&'static [&'static str]>,
    /// For KEY_AGREEMENT keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_agreement_algorithms: Option<&'static [&'static str]>,
}

/// DeriveSharedSecret.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DeriveSharedSecretRequest {
    /// The KEY_AGREEMENT key.
    pub key_id: Option<String>,
    /// `ECDH`.
    pub key_agreement_algorithm: Option<String>,
    /// The other side's public key, DER SubjectPublicKeyInfo.
    pub public_key: Option<Blob>,
    /// Grant tokens.
    pub grant_tokens: Option<Vec<String>>,
    /// Check authorization only.
    pub dry_run: Option<bool>,
    /// Nitro Enclaves attestation: refused.
    pub recipient: Option<serde_json::Value>,
}

/// DeriveSharedSecret's response.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DeriveSharedSecretResponse {
    /// Key ARN.
    pub key_id: String,
    /// The raw shared secret.
    pub shared_secret: SecretBlob,
    /// `ECDH`.
    pub key_agreement_algorithm: &'static str,
    /// The key's origin.
    pub key_origin: &'static str,
}

fn signing_algorithm(name: Option<String>) -> Result<SigningAlgorithm, KmsError> {
    let name = api::required(name, "signingAlgorithm")?;
    SigningAlgorithm::parse(&name).ok_or_else(|| {
        KmsError::constraint(
            "signingAlgorithm",
            &name,
            &format!("Member must satisfy enum value set: {SIGNING_ALGORITHMS}"),
        )
    })
}

fn message_type(name: Option<&str>) -> Result<MessageType, KmsError> {
    match name {
        None => Ok(MessageType::Raw),
        Some(n) => MessageType::parse(n).ok_or_else(|| {
            KmsError::constraint(
                "messageType",
                n,
                "Member must satisfy enum value set: [RAW, DIGEST, EXTERNAL_MU]",
            )
        }),
    }
}

fn message_length(n: usize) -> Result<(), KmsError> {
    KmsError::length("message", None, n, 1, asym::MAX_MESSAGE).map_or(Ok(()), Err)
}

/// An RSA encryption algorithm named in a request, for a key of `spec`:
/// an unknown name is a validation error (the caller checked that), one
/// that is not RSA-OAEP is incompatible with the key.
pub(super) fn rsa_algorithm(
    spec: KeySpec,
    name: Option<&str>,
) -> Result<EncryptionAlgorithm, KmsError> {
    let name = name.unwrap_or("SYMMETRIC_DEFAULT");
    EncryptionAlgorithm::parse(name).ok_or_else(|| incompatible(name, spec))
}

pub(super) fn incompatible(algorithm: &str, spec: KeySpec) -> KmsError {
    KmsError::InvalidKeyUsage(format!(
        "Algorithm {algorithm} is incompatible with key spec {}.",
        spec.as_str()
    ))
}

/// The key pair kind of an asymmetric key.
fn pair_spec(key: &KeyRecord) -> Result<KeyPairSpec, KmsError> {
    key.spec.key_pair().ok_or_else(|| {
        KmsError::InvalidKeyUsage(format!(
            "{} is not an asymmetric key.",
            KeyService::arn(key)
        ))
    })
}

/// The parsed private key of `material`, parsed on first use.
pub(super) fn private_key<'m>(
    key: &KeyRecord,
    material: &'m Material,
) -> Result<&'m PrivateKey, KmsError> {
    if let Some(p) = material.parsed.get() {
        return Ok(p);
    }
    let parsed =
        PrivateKey::from_pkcs8(pair_spec(key)?, material.secret.expose()).map_err(|e| {
            KmsError::Internal(format!(
                "private key of {} does not parse: {e}",
                KeyService::arn(key)
            ))
        })?;
    let _ = material.parsed.set(parsed);
    material
        .parsed
        .get()
        .ok_or_else(|| KmsError::Internal("parsed private key vanished".into()))
}

fn public_key<'m>(key: &KeyRecord, material: &'m Material) -> Result<&'m [u8], KmsError> {
    material.public.as_deref().ok_or_else(|| {
        KmsError::Internal(format!("public key of {} is missing", KeyService::arn(key)))
    })
}

/// A client's bad input as AWS's error; anything else is ours.
fn client_error(e: CryptoError, alg: &str) -> KmsError {
    match e {
        CryptoError::InputLength { .. } => {
            KmsError::Validation(format!("Digest is invalid length for algorithm {alg}."))
        }
        CryptoError::Unsupported(what) => {
            KmsError::UnsupportedOperation(format!("{what}; atrest does not support it."))
        }
        other => KmsError::Internal(other.to_string()),
    }
}

/// The length of ML-DSA's external μ.
const EXTERNAL_MU_LEN: usize = 64;

/// The AWS rules on message types, before any cryptography.
fn check_message(alg: SigningAlgorithm, kind: MessageType, message: &[u8]) -> Result<(), KmsError> {
    match kind {
        MessageType::ExternalMu if alg != SigningAlgorithm::MlDsaShake256 => {
            Err(KmsError::Validation(format!(
                "The EXTERNAL_MU message type is valid only with ML_DSA_SHAKE_256, not {}.",
                alg.as_str()
            )))
        }
        MessageType::ExternalMu if message.len() != EXTERNAL_MU_LEN => {
            Err(KmsError::Validation(format!(
                "The EXTERNAL_MU message must be {EXTERNAL_MU_LEN} bytes long for algorithm {}.",
                alg.as_str()
            )))
        }
        MessageType::ExternalMu => Ok(()),
        MessageType::Digest => match alg.digest_len() {
            None => Err(KmsError::Validation(format!(
                "The DIGEST message type is not valid with {}.",
                alg.as_str()
            ))),
            Some(n) if n != message.len() => Err(KmsError::Validation(format!(
                "Digest is invalid length for algorithm {}.",
                alg.as_str()
            ))),
            Some(_) => Ok(()),
        },
        MessageType::Raw => Ok(()),
    }
}

impl KeyService {
    /// Resolves, authorizes and checks a key for an asymmetric operation,
    /// and returns it with its current material.
    pub(super) fn asymmetric_key(
        &self,
        tx: &dyn ReadTx,
        call: &Call<'_>,
        key_id: Option<String>,
        action: &str,
        usage: KeyUsage,
        more: &[(&str, &str)],
    ) -> Result<(KeyRecord, std::sync::Arc<Material>), KmsError> {
        let facts = Facts {
            more,
            ..Facts::default()
        };
        self.usable_key(tx, call, key_id, "keyId", action, facts, |key| {
            Self::require_usage(key, usage, false, action)?;
            pair_spec(key).map(|_| ())
        })
    }

    /// Sign.
    pub fn sign(&self, call: &Call<'_>, req: SignRequest) -> Result<SignResponse, KmsError> {
        let message = api::required(req.message, "message")?;
        message_length(message.0.len())?;
        let kind = message_type(req.message_type.as_deref())?;
        let alg = signing_algorithm(req.signing_algorithm)?;
        self.check_grant_tokens(req.grant_tokens.as_deref())?;
        let tx = self.store.read()?;
        let (key, material) = self.asymmetric_key(
            &*tx,
            call,
            req.key_id,
            "Sign",
            KeyUsage::SignVerify,
            &[
                ("kms:SigningAlgorithm", alg.as_str()),
                ("kms:MessageType", kind.as_str()),
            ],
        )?;
        drop(tx);
        let spec = pair_spec(&key)?;
        if !alg.fits(spec) {
            return Err(incompatible(alg.as_str(), key.spec));
        }
        check_message(alg, kind, message.0.expose())?;
        super::crypto::dry_run(req.dry_run)?;
        let signature = private_key(&key, &material)?
            .sign(alg, kind, message.0.expose())
            .map_err(|e| client_error(e, alg.as_str()))?;
        Ok(SignResponse {
            key_id: Self::arn(&key),
            signature: Blob(signature),
            signing_algorithm: alg.as_str(),
        })
    }

    /// Verify.
    pub fn verify(&self, call: &Call<'_>, req: VerifyRequest) -> Result<VerifyResponse, KmsError> {
        let message = api::required(req.message, "message")?;
        message_length(message.0.len())?;
        let signature = api::required(req.signature, "signature")?;
        if let Some(e) = KmsError::length("signature", None, signature.0.len(), 1, MAX_SIGNATURE) {
            return Err(e);
        }
        let kind = message_type(req.message_type.as_deref())?;
        let alg = signing_algorithm(req.signing_algorithm)?;
        self.check_grant_tokens(req.grant_tokens.as_deref())?;
        let tx = self.store.read()?;
        let (key, material) = self.asymmetric_key(
            &*tx,
            call,
            req.key_id,
            "Verify",
            KeyUsage::SignVerify,
            &[
                ("kms:SigningAlgorithm", alg.as_str()),
                ("kms:MessageType", kind.as_str()),
            ],
        )?;
        drop(tx);
        let spec = pair_spec(&key)?;
        if !alg.fits(spec) {
            return Err(incompatible(alg.as_str(), key.spec));
        }
        check_message(alg, kind, &message.0)?;
        super::crypto::dry_run(req.dry_run)?;
        let valid = asym::verify(
            spec,
            alg,
            kind,
            public_key(&key, &material)?,
            &message.0,
            &signature.0,
        )
        .map_err(|e| client_error(e, alg.as_str()))?;
        if !valid {
            return Err(KmsError::InvalidSignature(
                "The signature is not valid for this message, key and signing algorithm.".into(),
            ));
        }
        Ok(VerifyResponse {
            key_id: Self::arn(&key),
            signature_valid: true,
            signing_algorithm: alg.as_str(),
        })
    }

    /// GetPublicKey.
    pub fn get_public_key(
        &self,
        call: &Call<'_>,
        req: KeyIdRequest,
    ) -> Result<GetPublicKeyResponse, KmsError> {
        self.check_grant_tokens(req.grant_tokens.as_deref())?;
        let tx = self.store.read()?;
        let key_ref = KeyRef::parse(&api::required(req.key_id, "keyId")?)?;
        let key = self.resolve(&*tx, call, &key_ref)?;
        let alias = key_ref.alias_name();
        self.authorize_key(
            &*tx,
            call,
            "GetPublicKey",
            &key,
            &Facts {
                request_alias: alias.as_deref(),
                ..Facts::default()
            },
        )?;
        Self::require_enabled(&key)?;
        if key.spec.key_pair().is_none() {
            return Err(KmsError::UnsupportedOperation(format!(
                "{} is not an asymmetric key: it has no public key.",
                Self::arn(&key)
            )));
        }
        self.require_not_suspended(&*tx, &key.account)?;
        self.require_not_suspended(&*tx, call.caller.account.as_str())?;
        let material = self
            .material(&*tx, &key, key.current_version)?
            .ok_or_else(|| {
                KmsError::Internal(format!("current version of {} is missing", Self::arn(&key)))
            })?;
        let (enc, sign, _, agree) = records::algorithms(key.spec, key.usage);
        Ok(GetPublicKeyResponse {
            key_id: Self::arn(&key),
            public_key: Blob(public_key(&key, &material)?.to_vec()),
            customer_master_key_spec: key.spec.as_str(),
            key_spec: key.spec.as_str(),
            key_usage: key.usage.as_str(),
            encryption_algorithms: (!enc.is_empty()).then_some(enc),
            signing_algorithms: (!sign.is_empty()).then_some(sign),
            key_agreement_algorithms: (!agree.is_empty()).then_some(agree),
        })
    }

    /// DeriveSharedSecret.
    pub fn derive_shared_secret(
        &self,
        call: &Call<'_>,
        req: DeriveSharedSecretRequest,
    ) -> Result<DeriveSharedSecretResponse, KmsError> {
        let algorithm = api::required(req.key_agreement_algorithm, "keyAgreementAlgorithm")?;
        if algorithm != "ECDH" {
            return Err(KmsError::constraint(
                "keyAgreementAlgorithm",
                &algorithm,
                "Member must satisfy enum value set: [ECDH]",
            ));
        }
        let peer = api::required(req.public_key, "publicKey")?;
        if let Some(e) = KmsError::length("publicKey", None, peer.0.len(), 1, 8192) {
            return Err(e);
        }
        if req.recipient.is_some() {
            return Err(KmsError::UnsupportedOperation(
                "Recipient (Nitro Enclaves attestation) is not supported by atrest.".into(),
            ));
        }
        self.check_grant_tokens(req.grant_tokens.as_deref())?;
        let tx = self.store.read()?;
        let (key, material) = self.asymmetric_key(
            &*tx,
            call,
            req.key_id,
            "DeriveSharedSecret",
            KeyUsage::KeyAgreement,
            &[("kms:KeyAgreementAlgorithm", "ECDH")],
        )?;
        drop(tx);
        super::crypto::dry_run(req.dry_run)?;
        let secret = private_key(&key, &material)?
            .shared_secret(&peer.0)
            .map_err(|e| match e {
                CryptoError::InvalidKey(_) => KmsError::Validation(format!(
                    "PublicKey is not a DER-encoded X.509 SubjectPublicKeyInfo of a point on the key's curve ({}).",
                    key.spec.as_str()
                )),
                other => KmsError::Internal(other.to_string()),
            })?;
        Ok(DeriveSharedSecretResponse {
            key_id: Self::arn(&key),
            shared_secret: SecretBlob(secret),
            key_agreement_algorithm: "ECDH",
            key_origin: key.origin.as_str(),
        })
    }

    /// Encrypts `plaintext` with an RSA key's public key (Encrypt,
    /// ReEncrypt's destination): AWS returns the raw RSA-OAEP ciphertext.
    pub(super) fn rsa_encrypt(
        key: &KeyRecord,
        material: &Material,
        alg: EncryptionAlgorithm,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, KmsError> {
        let spec = pair_spec(key)?;
        let max = alg.max_plaintext(spec).unwrap_or(0);
        asym::encrypt(spec, alg, public_key(key, material)?, plaintext).map_err(|e| match e {
            CryptoError::InputLength { len, .. } => KmsError::Validation(format!(
                "Plaintext of {len} bytes is too long: {} with {} takes at most {max} bytes.",
                key.spec.as_str(),
                alg.as_str()
            )),
            other => KmsError::Internal(other.to_string()),
        })
    }

    /// Decrypts an RSA-OAEP ciphertext with an RSA key (Decrypt, ReEncrypt's
    /// source).
    pub(super) fn rsa_decrypt(
        key: &KeyRecord,
        material: &Material,
        alg: EncryptionAlgorithm,
        ciphertext: &[u8],
    ) -> Result<SecretBytes, KmsError> {
        private_key(key, material)?
            .decrypt(alg, ciphertext)
            .map_err(|_| {
                KmsError::InvalidCiphertext(
                    "The ciphertext does not decrypt with this key and encryption algorithm."
                        .into(),
                )
            })
    }
}
