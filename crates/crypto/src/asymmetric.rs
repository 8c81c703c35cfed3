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
//! is RFC 8032's PureEdDSA (`ED25519_SHA_512`, RAW only) or HashEdDSA
//! Ed25519ph with SHA-512 and an empty context (`ED25519_PH_SHA_512`: RAW,
//! which is hashed with SHA-512 first, or a 64-byte SHA-512 DIGEST), ML-DSA
//! is FIPS 204 with an empty context, over the message (RAW) or over a
//! 64-byte external message representative μ (`EXTERNAL_MU`, FIPS 204
//! section 6.2: μ = SHAKE256(SHAKE256(pk, 64) ‖ 0x00 ‖ 0x00 ‖ M, 64); see
//! [`external_mu`]).
//!
//! Ed25519ph and μ signing come from AWS-LC through `aws-lc-sys` (the
//! private module `lcsig`), because `aws-lc-rs` reaches neither; everything
//! else is `aws-lc-rs`.

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
use crate::lcsig::{self, Ed25519phKey, MlDsaMuKey};
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
    /// Ed25519ph (HashEdDSA, RFC 8032) with SHA-512 and an empty context.
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
    /// ML-DSA's 64-byte message representative μ (FIPS 204 section 6.2).
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
    Ed25519 {
        pure: Ed25519KeyPair,
        ph: Ed25519phKey,
    },
    MlDsa {
        pair: PqdsaKeyPair,
        mu: MlDsaMuKey,
    },
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
        } else if let (Some(alg), Some(nid)) = (ml_dsa_signing(spec), ml_dsa_nid(spec)) {
            Inner::MlDsa {
                pair: PqdsaKeyPair::from_pkcs8(alg, pkcs8).map_err(|_| NOT_THIS_SPEC)?,
                mu: MlDsaMuKey::from_pkcs8(nid, pkcs8).map_err(|_| NOT_THIS_SPEC)?,
            }
        } else {
            Inner::Ed25519 {
                pure: Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|_| NOT_THIS_SPEC)?,
                ph: Ed25519phKey::from_pkcs8(pkcs8).map_err(|_| NOT_THIS_SPEC)?,
            }
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
    /// length, an `EXTERNAL_MU` that is not 64 bytes, or a `RAW` message over
    /// [`MAX_MESSAGE`] bytes; [`CryptoError::Unsupported`] for a `DIGEST`
    /// with `ED25519_SHA_512` or ML-DSA and `EXTERNAL_MU` with anything but
    /// ML-DSA.
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
            Inner::Ed25519 { ph, .. } if alg == SigningAlgorithm::Ed25519PhSha512 => {
                ph.sign_digest(ed25519ph_digest(kind, message).as_ref())
            }
            Inner::Ed25519 { pure, .. } => Ok(pure.sign(message).as_ref().to_vec()),
            Inner::MlDsa { pair, mu } if kind == MessageType::ExternalMu => {
                mu.sign_mu(message, pair.algorithm().signature_len())
            }
            Inner::MlDsa { pair, .. } => {
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

fn ml_dsa_nid(spec: KeyPairSpec) -> Option<core::ffi::c_int> {
    match spec {
        KeyPairSpec::MlDsa44 => Some(aws_lc_sys::NID_MLDSA44),
        KeyPairSpec::MlDsa65 => Some(aws_lc_sys::NID_MLDSA65),
        KeyPairSpec::MlDsa87 => Some(aws_lc_sys::NID_MLDSA87),
        _ => None,
    }
}

/// The SHA-512 digest Ed25519ph signs: the message's (RAW) or the message
/// itself (DIGEST, whose length [`check`] has checked).
fn ed25519ph_digest(kind: MessageType, message: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    match kind {
        MessageType::Raw => digest::digest(&digest::SHA512, message)
            .as_ref()
            .to_vec()
            .into(),
        _ => message.into(),
    }
}

/// The FIPS 204 external μ of `message` for the ML-DSA public key
/// `public_spki` (DER SubjectPublicKeyInfo) of `spec`, with an empty
/// context: SHAKE256(SHAKE256(pk, 64) ‖ 0x00 ‖ 0x00 ‖ message, 64), pk the
/// raw public key. What a client computes to sign with `EXTERNAL_MU`; the
/// key service itself never needs it.
///
/// # Errors
/// [`CryptoError::InvalidKey`] if `spec` is not ML-DSA or `public_spki` is
/// not a public key of it.
pub fn external_mu(
    spec: KeyPairSpec,
    public_spki: &[u8],
    message: &[u8],
) -> Result<[u8; 64], CryptoError> {
    let (Some(nid), Some(alg)) = (ml_dsa_nid(spec), ml_dsa_signing(spec)) else {
        return Err(CryptoError::InvalidKey(
            "only ML-DSA keys have an external mu",
        ));
    };
    let len = alg.public_key_len();
    let pk = lcsig::ml_dsa_raw_public(nid, public_spki, len)?;
    let mut tr = [0u8; 64];
    lcsig::shake256(&[&pk], &mut tr)?;
    let mut mu = [0u8; 64];
    lcsig::shake256(&[&tr, &[0, 0], message], &mut mu)?;
    Ok(mu)
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
    match kind {
        MessageType::ExternalMu if alg != SigningAlgorithm::MlDsaShake256 => Err(
            CryptoError::Unsupported("EXTERNAL_MU is a message type of ML-DSA only"),
        ),
        MessageType::ExternalMu if message.len() != lcsig::ML_DSA_MU => {
            Err(CryptoError::InputLength {
                len: message.len(),
                reason: "an ML-DSA external mu is 64 bytes",
            })
        }
        MessageType::ExternalMu => Ok(()),
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
    if alg == SigningAlgorithm::Ed25519PhSha512 {
        let d = ed25519ph_digest(kind, message);
        return lcsig::ed25519ph_verify_digest(public_spki, &d, sig);
    }
    if kind == MessageType::ExternalMu {
        let nid = ml_dsa_nid(spec).ok_or(NOT_THIS_SPEC)?;
        return lcsig::ml_dsa_verify_mu(nid, public_spki, message, sig);
    }
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
            for alg in SigningAlgorithm::ALL.into_iter().filter(|a| a.fits(spec)) {
                let mut kinds = vec![(MessageType::Raw, message.to_vec())];
                if alg.digest_len().is_some() {
                    kinds.push((MessageType::Digest, sha(alg, message)));
                }
                if alg == SigningAlgorithm::MlDsaShake256 {
                    let mu = external_mu(spec, &public, message).unwrap();
                    kinds.push((MessageType::ExternalMu, mu.to_vec()));
                }
                for (kind, m) in kinds {
                    let sig = key.sign(alg, kind, &m).unwrap();
                    assert!(verify(spec, alg, kind, &public, &m, &sig).unwrap());
                    // A digest's (or μ's) signature is the signature of the
                    // message.
                    if kind != MessageType::Raw {
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
        // 3 RSA sizes × 6 algorithms × 2 types, 4 ECDSA × 2, Ed25519,
        // Ed25519ph × 2, 3 ML-DSA × 2 (RAW, EXTERNAL_MU).
        assert_eq!(combos, 36 + 8 + 1 + 2 + 6);
    }

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    /// RFC 8032 section 7.3, the Ed25519ph test vector ("abc"); Ed25519 is
    /// deterministic, so atrest must make exactly this signature.
    #[test]
    fn ed25519ph_matches_rfc_8032() {
        let seed = unhex("833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42");
        let public = unhex("ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf");
        let expected = unhex(concat!(
            "98a70222f0b8121aa9d30f813d683f809e462b469c7ff87639499bb94e6dae41",
            "31f85042463c2a355a2003d062adf5aaa10b8c61e636062aaad11c2a26083406"
        ));
        // PKCS#8 v1 (RFC 8410) of the seed, and the SPKI of the public key.
        let pkcs8 = [unhex("302e020100300506032b657004220420"), seed].concat();
        let spki = [unhex("302a300506032b6570032100"), public].concat();
        let spec = KeyPairSpec::Ed25519;
        assert_eq!(public_key_der(spec, &pkcs8).unwrap(), spki);
        let key = PrivateKey::from_pkcs8(spec, &pkcs8).unwrap();
        let ph = SigningAlgorithm::Ed25519PhSha512;
        let digest = digest::digest(&digest::SHA512, b"abc");
        assert_eq!(key.sign(ph, MessageType::Raw, b"abc").unwrap(), expected);
        assert_eq!(
            key.sign(ph, MessageType::Digest, digest.as_ref()).unwrap(),
            expected
        );
        assert!(verify(spec, ph, MessageType::Raw, &spki, b"abc", &expected).unwrap());
        assert!(
            verify(
                spec,
                ph,
                MessageType::Digest,
                &spki,
                digest.as_ref(),
                &expected
            )
            .unwrap()
        );
        // Tampered, truncated, another message, and PureEdDSA's signature
        // (the same key, the same message) do not verify: the domain
        // separation of RFC 8032 keeps the two apart.
        let mut bad = expected.clone();
        bad[10] ^= 0x40;
        assert!(!verify(spec, ph, MessageType::Raw, &spki, b"abc", &bad).unwrap());
        assert!(!verify(spec, ph, MessageType::Raw, &spki, b"abc", &expected[..63]).unwrap());
        assert!(!verify(spec, ph, MessageType::Raw, &spki, b"abd", &expected).unwrap());
        let pure = SigningAlgorithm::Ed25519Sha512;
        let pure_sig = key.sign(pure, MessageType::Raw, b"abc").unwrap();
        assert_ne!(pure_sig, expected);
        assert!(!verify(spec, ph, MessageType::Raw, &spki, b"abc", &pure_sig).unwrap());
        assert!(!verify(spec, pure, MessageType::Raw, &spki, b"abc", &expected).unwrap());
    }

    /// A signature over μ is the ML-DSA signature of the message, as
    /// `aws-lc-rs`'s own ML-DSA verifier (not this crate's μ code) sees it,
    /// and a signature of the message verifies as one over its μ.
    #[test]
    fn ml_dsa_external_mu_is_the_message_signature() {
        for (spec, v, sig_len) in [
            (KeyPairSpec::MlDsa44, &signature::ML_DSA_44, 2420),
            (KeyPairSpec::MlDsa65, &signature::ML_DSA_65, 3309),
            (KeyPairSpec::MlDsa87, &signature::ML_DSA_87, 4627),
        ] {
            let (key, public) = pair(spec);
            let alg = SigningAlgorithm::MlDsaShake256;
            let m = b"a message signed through its mu";
            let mu = external_mu(spec, &public, m).unwrap();
            let sig = key.sign(alg, MessageType::ExternalMu, &mu).unwrap();
            assert_eq!(sig.len(), sig_len);
            UnparsedPublicKey::new(v, &public).verify(m, &sig).unwrap();
            let raw = key.sign(alg, MessageType::Raw, m).unwrap();
            assert!(verify(spec, alg, MessageType::ExternalMu, &public, &mu, &raw).unwrap());
            // μ binds the public key and the message.
            let (_, other_public) = pair(spec);
            let other_mu = external_mu(spec, &other_public, m).unwrap();
            assert_ne!(mu, other_mu);
            assert!(!verify(spec, alg, MessageType::ExternalMu, &public, &other_mu, &sig).unwrap());
            assert_ne!(mu, external_mu(spec, &public, b"another message").unwrap());
            // Signing is hedged: two signatures of one μ differ, both verify.
            let again = key.sign(alg, MessageType::ExternalMu, &mu).unwrap();
            assert_ne!(again, sig);
            assert!(verify(spec, alg, MessageType::Raw, &public, m, &again).unwrap());
        }
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
        let (ed, ed_public) = pair(KeyPairSpec::Ed25519);
        for alg in [
            SigningAlgorithm::Ed25519Sha512,
            SigningAlgorithm::Ed25519PhSha512,
        ] {
            let e = ed.sign(alg, MessageType::ExternalMu, &[0; 64]);
            assert!(matches!(e, Err(CryptoError::Unsupported(_))), "{alg:?}");
        }
        let e = ed.sign(
            SigningAlgorithm::Ed25519Sha512,
            MessageType::Digest,
            &[0; 64],
        );
        assert!(matches!(e, Err(CryptoError::Unsupported(_))));
        for len in [0, 32, 63, 65] {
            let e = ed.sign(
                SigningAlgorithm::Ed25519PhSha512,
                MessageType::Digest,
                &vec![0; len],
            );
            assert!(matches!(e, Err(CryptoError::InputLength { .. })), "{len}");
            let e = verify(
                KeyPairSpec::Ed25519,
                SigningAlgorithm::Ed25519PhSha512,
                MessageType::Digest,
                &ed_public,
                &vec![0; len],
                &[0; 64],
            );
            assert!(matches!(e, Err(CryptoError::InputLength { .. })), "{len}");
        }
        let e = ed.sign(
            SigningAlgorithm::Ed25519PhSha512,
            MessageType::Raw,
            &[0; 4097],
        );
        assert!(matches!(e, Err(CryptoError::InputLength { len: 4097, .. })));
        let (ml, ml_public) = pair(KeyPairSpec::MlDsa44);
        let e = ml.sign(
            SigningAlgorithm::MlDsaShake256,
            MessageType::Digest,
            &[0; 64],
        );
        assert!(matches!(e, Err(CryptoError::Unsupported(_))));
        for len in [0, 32, 63, 65] {
            let e = ml.sign(
                SigningAlgorithm::MlDsaShake256,
                MessageType::ExternalMu,
                &vec![0; len],
            );
            assert!(matches!(e, Err(CryptoError::InputLength { .. })), "{len}");
            let e = verify(
                KeyPairSpec::MlDsa44,
                SigningAlgorithm::MlDsaShake256,
                MessageType::ExternalMu,
                &ml_public,
                &vec![0; len],
                &[0; 2420],
            );
            assert!(matches!(e, Err(CryptoError::InputLength { .. })), "{len}");
        }
        let e = key.sign(
            SigningAlgorithm::EcdsaSha256,
            MessageType::ExternalMu,
            &[0; 64],
        );
        assert!(matches!(e, Err(CryptoError::Unsupported(_))));
        assert!(external_mu(KeyPairSpec::Ed25519, &ed_public, b"m").is_err());
        assert!(external_mu(KeyPairSpec::MlDsa65, &ml_public, b"m").is_err());
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
