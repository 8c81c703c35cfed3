//! Asymmetric operations: signatures, RSA-OAEP encryption and ECDH, with
//! AWS KMS's algorithm names and rules.
//!
//! A [`PrivateKey`] is parsed once from the PKCS#8 DER that
//! [`crate::keypair`] makes (RSA parsing costs a modular check) and then
//! signs, decrypts or agrees as often as asked. Everything done with the
//! public key ([`verify`], [`encrypt`]) takes its DER `SubjectPublicKeyInfo`.
//!
//! Signatures are AWS's: ECDSA is DER-encoded (`Ecdsa-Sig-Value`), RSA-PSS
//! uses MGF1 with the message hash and a salt as long as the hash, Ed25519
//! is RFC 8032's PureEdDSA, ML-DSA is FIPS 204 with an empty context.
//!
//! Not offered, because `aws-lc-rs` has no safe interface for them:
//! `ED25519_PH_SHA_512` (RFC 8032 Ed25519ph; AWS-LC has `ED25519ph_sign_digest`
//! but only `aws-lc-sys` exposes it) and ML-DSA's `EXTERNAL_MU` message type
//! (AWS-LC signs an external μ through `EVP_PKEY_sign`, which `aws-lc-rs`
//! does not reach; its `verify_digest` refuses ML-DSA). Both would need new
//! FFI, which this crate keeps to one module; [`PrivateKey::sign`] returns
//! [`CryptoError::Unsupported`] for them.

use aws_lc_rs::agreement;
use aws_lc_rs::digest::{self, Digest};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{
    OAEP_SHA1_MGF1SHA1, OAEP_SHA256_MGF1SHA256, OaepAlgorithm, OaepPrivateDecryptingKey,
    OaepPublicEncryptingKey, PrivateDecryptingKey, PublicEncryptingKey,
};
use aws_lc_rs::signature::{
    self, EcdsaKeyPair, Ed25519KeyPair, PqdsaKeyPair, RsaEncoding, RsaKeyPair, UnparsedPublicKey,
    VerificationAlgorithm,
};

use crate::keypair::KeyPairSpec;
use crate::{CryptoError, SecretBytes};

/// The largest message AWS KMS signs or verifies (RAW), in bytes.
pub const MAX_MESSAGE: usize = 4096;

/// AWS KMS's signing algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SigningAlgorithm {
    /// RSASSA-PSS, SHA-256, MGF1 SHA-256, 32-byte salt.
    RsaPssSha256,
    /// RSASSA-PSS, SHA-384.
    RsaPssSha384,
    /// RSASSA-PSS, SHA-512.
    RsaPssSha512,
    /// RSASSA-PKCS1-v1_5, SHA-256.
    RsaPkcs1Sha256,
    /// RSASSA-PKCS1-v1_5, SHA-384.
    RsaPkcs1Sha384,
    /// RSASSA-PKCS1-v1_5, SHA-512.
    RsaPkcs1Sha512,
    /// ECDSA with SHA-256 (P-256, secp256k1).
    EcdsaSha256,
    /// ECDSA with SHA-384 (P-384).
    EcdsaSha384,
    /// ECDSA with SHA-512 (P-521).
    EcdsaSha512,
    /// Ed25519 (PureEdDSA, RFC 8032).
    Ed25519Sha512,
    /// Ed25519ph (HashEdDSA, RFC 8032): not offered, see the module docs.
    Ed25519PhSha512,
    /// ML-DSA (FIPS 204), which hashes with SHAKE256.
    MlDsaShake256,
}

impl SigningAlgorithm {
    /// Every algorithm, in AWS's order.
    pub const ALL: [SigningAlgorithm; 12] = [
        Self::RsaPssSha256,
        Self::RsaPssSha384,
        Self::RsaPssSha512,
        Self::RsaPkcs1Sha256,
        Self::RsaPkcs1Sha384,
        Self::RsaPkcs1Sha512,
        Self::EcdsaSha256,
        Self::EcdsaSha384,
        Self::EcdsaSha512,
        Self::Ed25519Sha512,
        Self::Ed25519PhSha512,
        Self::MlDsaShake256,
    ];

    /// AWS's name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RsaPssSha256 => "RSASSA_PSS_SHA_256",
            Self::RsaPssSha384 => "RSASSA_PSS_SHA_384",
            Self::RsaPssSha512 => "RSASSA_PSS_SHA_512",
            Self::RsaPkcs1Sha256 => "RSASSA_PKCS1_V1_5_SHA_256",
            Self::RsaPkcs1Sha384 => "RSASSA_PKCS1_V1_5_SHA_384",
            Self::RsaPkcs1Sha512 => "RSASSA_PKCS1_V1_5_SHA_512",
            Self::EcdsaSha256 => "ECDSA_SHA_256",
            Self::EcdsaSha384 => "ECDSA_SHA_384",
            Self::EcdsaSha512 => "ECDSA_SHA_512",
            Self::Ed25519Sha512 => "ED25519_SHA_512",
            Self::Ed25519PhSha512 => "ED25519_PH_SHA_512",
            Self::MlDsaShake256 => "ML_DSA_SHAKE_256",
        }
    }

    /// The algorithm of AWS's name.
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == name)
    }

    /// Whether a key of `spec` signs with this algorithm.
    #[must_use]
    pub fn fits(self, spec: KeyPairSpec) -> bool {
        use KeyPairSpec as S;
        match self {
            Self::RsaPssSha256
            | Self::RsaPssSha384
            | Self::RsaPssSha512
            | Self::RsaPkcs1Sha256
            | Self::RsaPkcs1Sha384
            | Self::RsaPkcs1Sha512 => matches!(spec, S::Rsa2048 | S::Rsa3072 | S::Rsa4096),
            Self::EcdsaSha256 => matches!(spec, S::EccNistP256 | S::EccSecgP256k1),
            Self::EcdsaSha384 => spec == S::EccNistP384,
            Self::EcdsaSha512 => spec == S::EccNistP521,
            Self::Ed25519Sha512 | Self::Ed25519PhSha512 => spec == S::Ed25519,
            Self::MlDsaShake256 => matches!(spec, S::MlDsa44 | S::MlDsa65 | S::MlDsa87),
        }
    }

    /// The hash whose digest a `DIGEST` message must be, if the algorithm
    /// takes digests.
    fn digest(self) -> Option<&'static digest::Algorithm> {
        match self {
            Self::RsaPssSha256 | Self::RsaPkcs1Sha256 | Self::EcdsaSha256 => Some(&digest::SHA256),
            Self::RsaPssSha384 | Self::RsaPkcs1Sha384 | Self::EcdsaSha384 => Some(&digest::SHA384),
            Self::RsaPssSha512
            | Self::RsaPkcs1Sha512
            | Self::EcdsaSha512
            | Self::Ed25519PhSha512 => Some(&digest::SHA512),
            Self::Ed25519Sha512 | Self::MlDsaShake256 => None,
        }
    }

    /// The length of a `DIGEST` message for this algorithm, or `None` if the
    /// algorithm signs no digests (Ed25519, ML-DSA).
    #[must_use]
    pub fn digest_len(self) -> Option<usize> {
        self.digest().map(|d| d.output_len())
    }

    fn rsa_signing(self) -> Option<&'static dyn RsaEncoding> {
        Some(match self {
            Self::RsaPssSha256 => &signature::RSA_PSS_SHA256,
            Self::RsaPssSha384 => &signature::RSA_PSS_SHA384,
            Self::RsaPssSha512 => &signature::RSA_PSS_SHA512,
            Self::RsaPkcs1Sha256 => &signature::RSA_PKCS1_SHA256,
            Self::RsaPkcs1Sha384 => &signature::RSA_PKCS1_SHA384,
            Self::RsaPkcs1Sha512 => &signature::RSA_PKCS1_SHA512,
            _ => return None,
        })
    }

    fn verification(self, spec: KeyPairSpec) -> Option<&'static dyn VerificationAlgorithm> {
        use KeyPairSpec as S;
        Some(match (self, spec) {
            (Self::RsaPssSha256, _) => &signature::RSA_PSS_2048_8192_SHA256,
            (Self::RsaPssSha384, _) => &signature::RSA_PSS_2048_8192_SHA384,
            (Self::RsaPssSha512, _) => &signature::RSA_PSS_2048_8192_SHA512,
            (Self::RsaPkcs1Sha256, _) => &signature::RSA_PKCS1_2048_8192_SHA256,
            (Self::RsaPkcs1Sha384, _) => &signature::RSA_PKCS1_2048_8192_SHA384,
            (Self::RsaPkcs1Sha512, _) => &signature::RSA_PKCS1_2048_8192_SHA512,
            (Self::EcdsaSha256, S::EccNistP256) => &signature::ECDSA_P256_SHA256_ASN1,
            (Self::EcdsaSha256, S::EccSecgP256k1) => &signature::ECDSA_P256K1_SHA256_ASN1,
            (Self::EcdsaSha384, _) => &signature::ECDSA_P384_SHA384_ASN1,
            (Self::EcdsaSha512, _) => &signature::ECDSA_P521_SHA512_ASN1,
            (Self::Ed25519Sha512, _) => &signature::ED25519,
            (Self::MlDsaShake256, S::MlDsa44) => &signature::ML_DSA_44,
            (Self::MlDsaShake256, S::MlDsa65) => &signature::ML_DSA_65,
            (Self::MlDsaShake256, S::MlDsa87) => &signature::ML_DSA_87,
            _ => return None,
        })
    }
}

/// What a message to sign or verify is (AWS's `MessageType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// The message itself; the algorithm hashes it.
    Raw,
    /// A digest made with the algorithm's hash.
    Digest,
    /// ML-DSA's 64-byte message representative μ: not offered (module docs).
    ExternalMu,
}

impl MessageType {
    /// AWS's name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Raw => "RAW",
            Self::Digest => "DIGEST",
            Self::ExternalMu => "EXTERNAL_MU",
        }
    }

    /// The type of AWS's name.
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        [Self::Raw, Self::Digest, Self::ExternalMu]
            .into_iter()
            .find(|t| t.as_str() == name)
    }
}

/// AWS KMS's asymmetric encryption algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EncryptionAlgorithm {
    /// RSAES-OAEP with SHA-1 and MGF1 SHA-1, empty label.
    OaepSha1,
    /// RSAES-OAEP with SHA-256 and MGF1 SHA-256, empty label.
    OaepSha256,
}

impl EncryptionAlgorithm {
    /// AWS's name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OaepSha1 => "RSAES_OAEP_SHA_1",
            Self::OaepSha256 => "RSAES_OAEP_SHA_256",
        }
    }

    /// The algorithm of AWS's name.
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        [Self::OaepSha1, Self::OaepSha256]
            .into_iter()
            .find(|a| a.as_str() == name)
    }

    fn oaep(self) -> &'static OaepAlgorithm {
        match self {
            Self::OaepSha1 => &OAEP_SHA1_MGF1SHA1,
            Self::OaepSha256 => &OAEP_SHA256_MGF1SHA256,
        }
    }

    /// The largest plaintext a key of `spec` encrypts with this algorithm
    /// (modulus length − 2 × hash length − 2: AWS's 214/190 bytes for
    /// RSA_2048, 342/318 for RSA_3072, 470/446 for RSA_4096), or `None` for
    /// a spec that does not encrypt.
    #[must_use]
    pub fn max_plaintext(self, spec: KeyPairSpec) -> Option<usize> {
        let modulus = match spec {
            KeyPairSpec::Rsa2048 => 256,
            KeyPairSpec::Rsa3072 => 384,
            KeyPairSpec::Rsa4096 => 512,
            _ => return None,
        };
        let hash = match self {
            Self::OaepSha1 => 20,
            Self::OaepSha256 => 32,
        };
        Some(modulus - 2 * hash - 2)
    }
}

fn rsa_spec(spec: KeyPairSpec) -> bool {
    matches!(
        spec,
        KeyPairSpec::Rsa2048 | KeyPairSpec::Rsa3072 | KeyPairSpec::Rsa4096
    )
}

fn ecdh_curve(spec: KeyPairSpec) -> Option<&'static agreement::Algorithm> {
    match spec {
        KeyPairSpec::EccNistP256 => Some(&agreement::ECDH_P256),
        KeyPairSpec::EccNistP384 => Some(&agreement::ECDH_P384),
        KeyPairSpec::EccNistP521 => Some(&agreement::ECDH_P521),
        _ => None,
    }
}

enum Inner {
    Rsa {
        sign: RsaKeyPair,
        decrypt: OaepPrivateDecryptingKey,
    },
    Ecdsa {
        sign: EcdsaKeyPair,
        agree: Option<agreement::PrivateKey>,
    },
    Ed25519(Ed25519KeyPair),
    MlDsa(PqdsaKeyPair),
}

/// A parsed private key of one [`KeyPairSpec`]. Never printed; AWS-LC frees
/// (and clears) the key when it is dropped.
pub struct PrivateKey {
    spec: KeyPairSpec,
    inner: Inner,
}

impl core::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "PrivateKey({:?}, <redacted>)", self.spec)
    }
}

const NOT_THIS_SPEC: CryptoError = CryptoError::InvalidKey("not a private key of this key spec");

fn bad_signature_input(len: usize) -> CryptoError {
    CryptoError::InputLength {
        len,
        reason: "a message digest must be as long as the signing algorithm's hash",
    }
}

impl PrivateKey {
    /// Parses the PKCS#8 DER private key `pkcs8` of `spec`.
    ///
    /// # Errors
    /// [`CryptoError::InvalidKey`] if `pkcs8` is not a private key of `spec`.
    pub fn from_pkcs8(spec: KeyPairSpec, pkcs8: &[u8]) -> Result<Self, CryptoError> {
        let inner = if rsa_spec(spec) {
            let sign = RsaKeyPair::from_pkcs8(pkcs8).map_err(|_| NOT_THIS_SPEC)?;
            let bits = match spec {
                KeyPairSpec::Rsa2048 => 2048,
                KeyPairSpec::Rsa3072 => 3072,
                _ => 4096,
            };
            if sign.public_modulus_len() * 8 != bits {
                return Err(CryptoError::InvalidKey("RSA modulus of another size"));
            }
            let decrypt = PrivateDecryptingKey::from_pkcs8(pkcs8)
                .ok()
                .and_then(|k| OaepPrivateDecryptingKey::new(k).ok())
                .ok_or(NOT_THIS_SPEC)?;
            Inner::Rsa { sign, decrypt }
        } else if let Some(alg) = ecdsa_signing(spec) {
            let sign = EcdsaKeyPair::from_pkcs8(alg, pkcs8).map_err(|_| NOT_THIS_SPEC)?;
            let agree = match ecdh_curve(spec) {
                Some(curve) => Some(
                    agreement::PrivateKey::from_private_key_der(curve, pkcs8)
                        .map_err(|_| NOT_THIS_SPEC)?,
                ),
                None => None,
            };
            Inner::Ecdsa { sign, agree }
        } else if let Some(alg) = ml_dsa_signing(spec) {
            Inner::MlDsa(PqdsaKeyPair::from_pkcs8(alg, pkcs8).map_err(|_| NOT_THIS_SPEC)?)
        } else {
            Inner::Ed25519(Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|_| NOT_THIS_SPEC)?)
        };
        Ok(Self { spec, inner })
    }

    /// The key's spec.
    #[must_use]
    pub fn spec(&self) -> KeyPairSpec {
        self.spec
    }

    /// Signs `message` (of `kind`) with `alg`.
    ///
    /// # Errors
    /// [`CryptoError::InvalidKey`] if `alg` is not an algorithm of this
    /// key's spec; [`CryptoError::InputLength`] for a `DIGEST` of the wrong
    /// length or a `RAW` message over [`MAX_MESSAGE`] bytes;
    /// [`CryptoError::Unsupported`] for Ed25519ph, `EXTERNAL_MU`, and a
    /// `DIGEST` with Ed25519 or ML-DSA.
    pub fn sign(
        &self,
        alg: SigningAlgorithm,
        kind: MessageType,
        message: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        check(self.spec, alg, kind, message)?;
        let lib = |what| move |_| CryptoError::Library(what);
        match &self.inner {
            Inner::Rsa { sign, .. } => {
                let padding = alg.rsa_signing().ok_or(NOT_THIS_SPEC)?;
                let mut sig = vec![0u8; sign.public_modulus_len()];
                match kind {
                    MessageType::Raw => sign
                        .sign(padding, &SystemRandom::new(), message, &mut sig)
                        .map_err(lib("RSA signing"))?,
                    _ => {
                        let d = import_digest(alg, message)?;
                        sign.sign_digest(padding, &d, &mut sig)
                            .map_err(lib("RSA signing"))?;
                    }
                }
                Ok(sig)
            }
            Inner::Ecdsa { sign, .. } => {
                let sig = match kind {
                    MessageType::Raw => sign
                        .sign(&SystemRandom::new(), message)
                        .map_err(lib("ECDSA signing"))?,
                    _ => sign
                        .sign_digest(&import_digest(alg, message)?)
                        .map_err(lib("ECDSA signing"))?,
                };
                Ok(sig.as_ref().to_vec())
            }
            Inner::Ed25519(pair) => Ok(pair.sign(message).as_ref().to_vec()),
            Inner::MlDsa(pair) => {
                let mut sig = vec![0u8; pair.algorithm().signature_len()];
                let n = pair
                    .sign(message, &mut sig)
                    .map_err(lib("ML-DSA signing"))?;
                sig.truncate(n);
                Ok(sig)
            }
        }
    }

    /// Decrypts an RSA-OAEP `ciphertext` made with `alg`.
    ///
    /// # Errors
    /// [`CryptoError::InvalidKey`] for a key that is not RSA;
    /// [`CryptoError::Authentication`] for a ciphertext that does not decrypt.
    pub fn decrypt(
        &self,
        alg: EncryptionAlgorithm,
        ciphertext: &[u8],
    ) -> Result<SecretBytes, CryptoError> {
        let Inner::Rsa { decrypt, .. } = &self.inner else {
            return Err(CryptoError::InvalidKey("only RSA keys decrypt"));
        };
        if ciphertext.len() != decrypt.key_size_bytes() {
            return Err(CryptoError::Authentication);
        }
        let mut out = SecretBytes::new(vec![0u8; decrypt.min_output_size()]);
        let n = decrypt
            .decrypt(alg.oaep(), ciphertext, out.expose_mut(), None)
            .map_err(|_| CryptoError::Authentication)?
            .len();
        out.expose_mut().truncate(n);
        Ok(out)
    }

    /// The raw ECDH shared secret (the x coordinate of the shared point)
    /// with the holder of `peer_spki`, a DER `SubjectPublicKeyInfo` on this
    /// key's curve.
    ///
    /// # Errors
    /// [`CryptoError::InvalidKey`] if this key is not a NIST curve key or
    /// `peer_spki` is not a public key on its curve, DER SPKI encoded.
    pub fn shared_secret(&self, peer_spki: &[u8]) -> Result<SecretBytes, CryptoError> {
        let (
            Inner::Ecdsa {
                agree: Some(mine), ..
            },
            Some(curve),
        ) = (&self.inner, ecdh_curve(self.spec))
        else {
            return Err(CryptoError::InvalidKey("only NIST curve keys agree"));
        };
        // A SubjectPublicKeyInfo is a DER SEQUENCE; AWS takes nothing else
        // (aws-lc-rs would also take a bare SEC1 point).
        if peer_spki.first() != Some(&0x30) {
            return Err(CryptoError::InvalidKey(
                "the public key is not a DER SubjectPublicKeyInfo",
            ));
        }
        let peer = agreement::UnparsedPublicKey::new(curve, peer_spki);
        agreement::agree(
            mine,
            peer,
            CryptoError::InvalidKey("the public key is not a point on the key's curve"),
            |secret| Ok(SecretBytes::new(secret.to_vec())),
        )
    }
}

fn ecdsa_signing(spec: KeyPairSpec) -> Option<&'static signature::EcdsaSigningAlgorithm> {
    match spec {
        KeyPairSpec::EccNistP256 => Some(&signature::ECDSA_P256_SHA256_ASN1_SIGNING),
        KeyPairSpec::EccNistP384 => Some(&signature::ECDSA_P384_SHA384_ASN1_SIGNING),
        KeyPairSpec::EccNistP521 => Some(&signature::ECDSA_P521_SHA512_ASN1_SIGNING),
        KeyPairSpec::EccSecgP256k1 => Some(&signature::ECDSA_P256K1_SHA256_ASN1_SIGNING),
        _ => None,
    }
}

fn ml_dsa_signing(spec: KeyPairSpec) -> Option<&'static signature::PqdsaSigningAlgorithm> {
    match spec {
        KeyPairSpec::MlDsa44 => Some(&signature::ML_DSA_44_SIGNING),
        KeyPairSpec::MlDsa65 => Some(&signature::ML_DSA_65_SIGNING),
        KeyPairSpec::MlDsa87 => Some(&signature::ML_DSA_87_SIGNING),
        _ => None,
    }
}

fn import_digest(alg: SigningAlgorithm, message: &[u8]) -> Result<Digest, CryptoError> {
    let d = alg.digest().ok_or(CryptoError::Unsupported(
        "this signing algorithm signs no digests",
    ))?;
    Digest::import_less_safe(message, d).map_err(|_| bad_signature_input(message.len()))
}

/// The checks common to signing and verifying.
fn check(
    spec: KeyPairSpec,
    alg: SigningAlgorithm,
    kind: MessageType,
    message: &[u8],
) -> Result<(), CryptoError> {
    if !alg.fits(spec) {
        return Err(CryptoError::InvalidKey(
            "the signing algorithm is not one of the key spec's",
        ));
    }
    if alg == SigningAlgorithm::Ed25519PhSha512 {
        return Err(CryptoError::Unsupported(
            "ED25519_PH_SHA_512 (Ed25519ph): aws-lc-rs offers no Ed25519ph",
        ));
    }
    match kind {
        MessageType::ExternalMu => Err(CryptoError::Unsupported(
            "EXTERNAL_MU: aws-lc-rs offers no ML-DSA signing of an external mu",
        )),
        MessageType::Raw if message.len() > MAX_MESSAGE => Err(CryptoError::InputLength {
            len: message.len(),
            reason: "a RAW message is at most 4096 bytes",
        }),
        MessageType::Raw => Ok(()),
        MessageType::Digest => match alg.digest_len() {
            None => Err(CryptoError::Unsupported(
                "this signing algorithm signs no digests",
            )),
            Some(n) if n != message.len() => Err(bad_signature_input(message.len())),
            Some(_) => Ok(()),
        },
    }
}

/// Whether `sig` is a valid `alg` signature of `message` (of `kind`) by the
/// key whose public key is `public_spki` (DER SubjectPublicKeyInfo) of
/// `spec`.
///
/// # Errors
/// As [`PrivateKey::sign`] for an algorithm, message type or message the
/// key cannot take. A signature that does not verify, of any length, is
/// `Ok(false)`.
pub fn verify(
    spec: KeyPairSpec,
    alg: SigningAlgorithm,
    kind: MessageType,
    public_spki: &[u8],
    message: &[u8],
    sig: &[u8],
) -> Result<bool, CryptoError> {
    check(spec, alg, kind, message)?;
    let v = alg.verification(spec).ok_or(NOT_THIS_SPEC)?;
    let key = UnparsedPublicKey::new(v, public_spki);
    Ok(match kind {
        MessageType::Raw => key.verify(message, sig).is_ok(),
        _ => key
            .verify_digest(&import_digest(alg, message)?, sig)
            .is_ok(),
    })
}

/// Encrypts `plaintext` with RSA-OAEP `alg` under the RSA public key
/// `public_spki` (DER SubjectPublicKeyInfo) of `spec`.
///
/// # Errors
/// [`CryptoError::InvalidKey`] for a spec that is not RSA or a public key
/// that is not one; [`CryptoError::InputLength`] for a plaintext that is
/// empty or longer than [`EncryptionAlgorithm::max_plaintext`].
pub fn encrypt(
    spec: KeyPairSpec,
    alg: EncryptionAlgorithm,
    public_spki: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let max = alg
        .max_plaintext(spec)
        .ok_or(CryptoError::InvalidKey("only RSA keys encrypt"))?;
    if plaintext.is_empty() || plaintext.len() > max {
        return Err(CryptoError::InputLength {
            len: plaintext.len(),
            reason: "longer than RSA-OAEP takes with this key size and hash",
        });
    }
    let key = PublicEncryptingKey::from_der(public_spki)
        .ok()
        .and_then(|k| OaepPublicEncryptingKey::new(k).ok())
        .ok_or(CryptoError::InvalidKey("not an RSA public key"))?;
    let mut out = vec![0u8; key.ciphertext_size()];
    let n = key
        .encrypt(alg.oaep(), plaintext, &mut out, None)
        .map_err(|_| CryptoError::Library("RSA-OAEP encryption"))?
        .len();
    out.truncate(n);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keypair::{generate, public_key_der};

    fn pair(spec: KeyPairSpec) -> (PrivateKey, Vec<u8>) {
        let der = generate(spec).unwrap();
        let public = public_key_der(spec, der.expose()).unwrap();
        (PrivateKey::from_pkcs8(spec, der.expose()).unwrap(), public)
    }

    fn sha(alg: SigningAlgorithm, m: &[u8]) -> Vec<u8> {
        digest::digest(alg.digest().unwrap(), m).as_ref().to_vec()
    }

    #[test]
    fn every_algorithm_and_message_type_round_trips() {
        let message = b"atrest signs this".as_slice();
        let mut combos = 0;
        for spec in KeyPairSpec::ALL {
            let (key, public) = pair(spec);
            for alg in SigningAlgorithm::ALL
                .into_iter()
                .filter(|a| a.fits(spec) && *a != SigningAlgorithm::Ed25519PhSha512)
            {
                let mut kinds = vec![(MessageType::Raw, message.to_vec())];
                if alg.digest_len().is_some() {
                    kinds.push((MessageType::Digest, sha(alg, message)));
                }
                for (kind, m) in kinds {
                    let sig = key.sign(alg, kind, &m).unwrap();
                    assert!(verify(spec, alg, kind, &public, &m, &sig).unwrap());
                    // A digest signature is the signature of the message.
                    if kind == MessageType::Digest {
                        assert!(
                            verify(spec, alg, MessageType::Raw, &public, message, &sig).unwrap(),
                            "{spec:?} {alg:?}"
                        );
                    }
                    let mut bad = sig.clone();
                    let last = bad.len() - 1;
                    bad[last] ^= 1;
                    assert!(!verify(spec, alg, kind, &public, &m, &bad).unwrap());
                    assert!(!verify(spec, alg, kind, &public, &m, &sig[..last]).unwrap());
                    let mut other = m.clone();
                    other[0] ^= 1;
                    assert!(!verify(spec, alg, kind, &public, &other, &sig).unwrap());
                    combos += 1;
                }
            }
        }
        // 3 RSA sizes × 6 algorithms × 2 types, 4 ECDSA × 2, Ed25519, 3 ML-DSA.
        assert_eq!(combos, 36 + 8 + 1 + 3);
    }

    #[test]
    fn ecdsa_signatures_are_der() {
        let (key, _) = pair(KeyPairSpec::EccNistP384);
        let sig = key
            .sign(SigningAlgorithm::EcdsaSha384, MessageType::Raw, b"m")
            .unwrap();
        assert_eq!(sig[0], 0x30);
        assert_eq!(usize::from(sig[1]) + 2, sig.len());
    }

    #[test]
    fn wrong_inputs_are_refused() {
        let (key, public) = pair(KeyPairSpec::EccNistP256);
        let spec = KeyPairSpec::EccNistP256;
        let e = key.sign(SigningAlgorithm::EcdsaSha256, MessageType::Raw, &[0; 4097]);
        assert!(matches!(e, Err(CryptoError::InputLength { len: 4097, .. })));
        assert!(
            key.sign(SigningAlgorithm::EcdsaSha256, MessageType::Raw, &[0; 4096])
                .is_ok()
        );
        let e = key.sign(SigningAlgorithm::EcdsaSha256, MessageType::Digest, &[0; 31]);
        assert!(matches!(e, Err(CryptoError::InputLength { len: 31, .. })));
        let e = verify(
            spec,
            SigningAlgorithm::EcdsaSha256,
            MessageType::Digest,
            &public,
            &[0; 48],
            b"x",
        );
        assert!(matches!(e, Err(CryptoError::InputLength { len: 48, .. })));
        let e = key.sign(SigningAlgorithm::RsaPssSha256, MessageType::Raw, b"m");
        assert!(matches!(e, Err(CryptoError::InvalidKey(_))));
        let e = key.sign(SigningAlgorithm::EcdsaSha384, MessageType::Raw, b"m");
        assert!(matches!(e, Err(CryptoError::InvalidKey(_))));
        let (ed, _) = pair(KeyPairSpec::Ed25519);
        for (alg, kind) in [
            (SigningAlgorithm::Ed25519PhSha512, MessageType::Digest),
            (SigningAlgorithm::Ed25519Sha512, MessageType::Digest),
        ] {
            let e = ed.sign(alg, kind, &[0; 64]);
            assert!(matches!(e, Err(CryptoError::Unsupported(_))), "{alg:?}");
        }
        let (ml, _) = pair(KeyPairSpec::MlDsa44);
        for kind in [MessageType::Digest, MessageType::ExternalMu] {
            let e = ml.sign(SigningAlgorithm::MlDsaShake256, kind, &[0; 64]);
            assert!(matches!(e, Err(CryptoError::Unsupported(_))), "{kind:?}");
        }
        assert!(
            key.decrypt(EncryptionAlgorithm::OaepSha1, &[0; 256])
                .is_err()
        );
        assert!(ed.shared_secret(&public).is_err());
        assert!(PrivateKey::from_pkcs8(KeyPairSpec::EccNistP384, b"\x30\x00").is_err());
        let rsa = generate(KeyPairSpec::Rsa2048).unwrap();
        assert!(PrivateKey::from_pkcs8(KeyPairSpec::Rsa3072, rsa.expose()).is_err());
    }

    #[test]
    fn oaep_round_trips_at_aws_limits() {
        for (spec, limits) in [
            (KeyPairSpec::Rsa2048, [214, 190]),
            (KeyPairSpec::Rsa3072, [342, 318]),
            (KeyPairSpec::Rsa4096, [470, 446]),
        ] {
            let (key, public) = pair(spec);
            for (alg, max) in [
                EncryptionAlgorithm::OaepSha1,
                EncryptionAlgorithm::OaepSha256,
            ]
            .into_iter()
            .zip(limits)
            {
                assert_eq!(alg.max_plaintext(spec), Some(max));
                let pt = vec![7u8; max];
                let ct = encrypt(spec, alg, &public, &pt).unwrap();
                assert_eq!(ct.len() * 8, spec_bits(spec));
                assert_eq!(key.decrypt(alg, &ct).unwrap().expose(), pt.as_slice());
                assert!(matches!(
                    encrypt(spec, alg, &public, &vec![7u8; max + 1]),
                    Err(CryptoError::InputLength { .. })
                ));
                assert!(encrypt(spec, alg, &public, b"").is_err());
                // The other hash does not decrypt it.
                let other = if alg == EncryptionAlgorithm::OaepSha1 {
                    EncryptionAlgorithm::OaepSha256
                } else {
                    EncryptionAlgorithm::OaepSha1
                };
                assert_eq!(key.decrypt(other, &ct), Err(CryptoError::Authentication));
                let mut bad = ct.clone();
                bad[5] ^= 1;
                assert_eq!(key.decrypt(alg, &bad), Err(CryptoError::Authentication));
                assert_eq!(key.decrypt(alg, &ct[1..]), Err(CryptoError::Authentication));
            }
        }
    }

    fn spec_bits(spec: KeyPairSpec) -> usize {
        match spec {
            KeyPairSpec::Rsa2048 => 2048,
            KeyPairSpec::Rsa3072 => 3072,
            _ => 4096,
        }
    }

    #[test]
    fn ecdh_agrees_on_every_nist_curve() {
        for spec in [
            KeyPairSpec::EccNistP256,
            KeyPairSpec::EccNistP384,
            KeyPairSpec::EccNistP521,
        ] {
            let (a, a_pub) = pair(spec);
            let (b, b_pub) = pair(spec);
            let ab = a.shared_secret(&b_pub).unwrap();
            assert_eq!(ab, b.shared_secret(&a_pub).unwrap());
            assert_eq!(
                ab.len(),
                match spec {
                    KeyPairSpec::EccNistP256 => 32,
                    KeyPairSpec::EccNistP384 => 48,
                    _ => 66,
                }
            );
            // Another curve's key, a bare point, and garbage are refused.
            let (_, other) = pair(if spec == KeyPairSpec::EccNistP256 {
                KeyPairSpec::EccNistP384
            } else {
                KeyPairSpec::EccNistP256
            });
            assert!(a.shared_secret(&other).is_err());
            assert!(a.shared_secret(&b_pub[b_pub.len() - 65..]).is_err());
            assert!(a.shared_secret(b"\x30\x03\x02\x01\x01").is_err());
        }
        let (k1, k1_pub) = pair(KeyPairSpec::EccSecgP256k1);
        assert!(k1.shared_secret(&k1_pub).is_err());
    }
}
