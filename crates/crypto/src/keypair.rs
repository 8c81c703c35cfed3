//! Asymmetric key pairs: generation and public keys.
//!
//! A private key is held as its PKCS#8 DER encoding in a [`SecretBytes`],
//! the form the key service seals under the root key. The public key is its
//! DER `SubjectPublicKeyInfo` (X.509), the form AWS KMS's `GetPublicKey`
//! returns. RSA keys serve both encryption and signing, and NIST curve keys
//! both signing and key agreement: the operation picks the use, the
//! encoding is the same.

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{
    self, EcdsaKeyPair, EcdsaSigningAlgorithm, Ed25519KeyPair, KeyPair, PqdsaKeyPair,
    PqdsaSigningAlgorithm,
};

use crate::{CryptoError, SecretBytes};

/// The kinds of key pair atrest makes (AWS KMS's asymmetric key specs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyPairSpec {
    /// RSA, 2048-bit modulus, e = 65537.
    Rsa2048,
    /// RSA, 3072-bit modulus.
    Rsa3072,
    /// RSA, 4096-bit modulus.
    Rsa4096,
    /// NIST P-256 (secp256r1).
    EccNistP256,
    /// NIST P-384 (secp384r1).
    EccNistP384,
    /// NIST P-521 (secp521r1).
    EccNistP521,
    /// SECG secp256k1.
    EccSecgP256k1,
    /// Ed25519.
    Ed25519,
    /// ML-DSA-44 (FIPS 204).
    MlDsa44,
    /// ML-DSA-65.
    MlDsa65,
    /// ML-DSA-87.
    MlDsa87,
}

impl KeyPairSpec {
    /// Every spec.
    pub const ALL: [KeyPairSpec; 11] = [
        Self::Rsa2048,
        Self::Rsa3072,
        Self::Rsa4096,
        Self::EccNistP256,
        Self::EccNistP384,
        Self::EccNistP521,
        Self::EccSecgP256k1,
        Self::Ed25519,
        Self::MlDsa44,
        Self::MlDsa65,
        Self::MlDsa87,
    ];

    fn ecdsa(self) -> Option<&'static EcdsaSigningAlgorithm> {
        match self {
            Self::EccNistP256 => Some(&signature::ECDSA_P256_SHA256_ASN1_SIGNING),
            Self::EccNistP384 => Some(&signature::ECDSA_P384_SHA384_ASN1_SIGNING),
            Self::EccNistP521 => Some(&signature::ECDSA_P521_SHA512_ASN1_SIGNING),
            Self::EccSecgP256k1 => Some(&signature::ECDSA_P256K1_SHA256_ASN1_SIGNING),
            _ => None,
        }
    }

    fn ml_dsa(self) -> Option<&'static PqdsaSigningAlgorithm> {
        match self {
            Self::MlDsa44 => Some(&signature::ML_DSA_44_SIGNING),
            Self::MlDsa65 => Some(&signature::ML_DSA_65_SIGNING),
            Self::MlDsa87 => Some(&signature::ML_DSA_87_SIGNING),
            _ => None,
        }
    }

    fn rsa(self) -> Option<KeySize> {
        match self {
            Self::Rsa2048 => Some(KeySize::Rsa2048),
            Self::Rsa3072 => Some(KeySize::Rsa3072),
            Self::Rsa4096 => Some(KeySize::Rsa4096),
            _ => None,
        }
    }
}

fn lib(what: &'static str) -> impl Fn(aws_lc_rs::error::Unspecified) -> CryptoError {
    move |_| CryptoError::Library(what)
}

fn secret(der: &Pkcs8V1Der<'_>) -> SecretBytes {
    SecretBytes::new(der.as_ref().to_vec())
}

/// Generates a private key of `spec`, as PKCS#8 DER.
///
/// # Errors
/// [`CryptoError::Library`] if AWS-LC fails.
pub fn generate(spec: KeyPairSpec) -> Result<SecretBytes, CryptoError> {
    if let Some(size) = spec.rsa() {
        let pair = RsaKeyPair::generate(size).map_err(lib("RSA key generation"))?;
        let der: Pkcs8V1Der<'_> = pair.as_der().map_err(lib("RSA key encoding"))?;
        return Ok(secret(&der));
    }
    if let Some(alg) = spec.ecdsa() {
        let pair = EcdsaKeyPair::generate(alg).map_err(lib("EC key generation"))?;
        let der = pair.to_pkcs8v1().map_err(lib("EC key encoding"))?;
        return Ok(SecretBytes::new(der.as_ref().to_vec()));
    }
    if let Some(alg) = spec.ml_dsa() {
        let pair = PqdsaKeyPair::generate(alg).map_err(lib("ML-DSA key generation"))?;
        let der = pair.to_pkcs8v1().map_err(lib("ML-DSA key encoding"))?;
        return Ok(SecretBytes::new(der.as_ref().to_vec()));
    }
    let pair = Ed25519KeyPair::generate().map_err(lib("Ed25519 key generation"))?;
    let der = pair.to_pkcs8v1().map_err(lib("Ed25519 key encoding"))?;
    Ok(SecretBytes::new(der.as_ref().to_vec()))
}

/// The DER `SubjectPublicKeyInfo` of the private key `pkcs8` of `spec`.
///
/// # Errors
/// [`CryptoError::InvalidKey`] if `pkcs8` is not a private key of `spec`.
pub fn public_key_der(spec: KeyPairSpec, pkcs8: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let bad = |_| CryptoError::InvalidKey("not a private key of this key spec");
    let der: PublicKeyX509Der<'_> = if let Some(size) = spec.rsa() {
        let pair = RsaKeyPair::from_pkcs8(pkcs8).map_err(bad)?;
        if pair.public_modulus_len() * 8 != size_bits(size) {
            return Err(CryptoError::InvalidKey("RSA modulus of another size"));
        }
        pair.public_key()
            .as_der()
            .map_err(lib("RSA key encoding"))?
    } else if let Some(alg) = spec.ecdsa() {
        let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8).map_err(bad)?;
        pair.public_key().as_der().map_err(lib("EC key encoding"))?
    } else if let Some(alg) = spec.ml_dsa() {
        let pair = PqdsaKeyPair::from_pkcs8(alg, pkcs8).map_err(bad)?;
        pair.public_key()
            .as_der()
            .map_err(lib("ML-DSA key encoding"))?
    } else {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(bad)?;
        pair.public_key()
            .as_der()
            .map_err(lib("Ed25519 key encoding"))?
    };
    Ok(der.as_ref().to_vec())
}

fn size_bits(size: KeySize) -> usize {
    match size {
        KeySize::Rsa2048 => 2048,
        KeySize::Rsa3072 => 3072,
        KeySize::Rsa4096 => 4096,
        _ => 8192,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spec_generates_a_key_whose_public_key_encodes() {
        for spec in KeyPairSpec::ALL {
            let private = generate(spec).unwrap();
            let public = public_key_der(spec, private.expose()).unwrap();
            // A SubjectPublicKeyInfo is a DER SEQUENCE.
            assert_eq!(public[0], 0x30, "{spec:?}");
            assert!(public.len() > 40, "{spec:?}");
            // Two generations differ.
            assert_ne!(generate(spec).unwrap(), private, "{spec:?}");
        }
    }

    #[test]
    fn a_key_of_another_spec_is_refused() {
        let p256 = generate(KeyPairSpec::EccNistP256).unwrap();
        assert!(public_key_der(KeyPairSpec::EccNistP384, p256.expose()).is_err());
        assert!(public_key_der(KeyPairSpec::Rsa2048, p256.expose()).is_err());
        let rsa = generate(KeyPairSpec::Rsa2048).unwrap();
        assert!(public_key_der(KeyPairSpec::Rsa3072, rsa.expose()).is_err());
        assert!(public_key_der(KeyPairSpec::Ed25519, b"\x30\x00").is_err());
    }
}
