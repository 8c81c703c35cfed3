//! Unwrapping imported key material (BYOK): RSA-OAEP, and RSA-OAEP of an
//! ephemeral AES key followed by AES key wrap with padding (RFC 5649), as
//! AWS KMS's `GetParametersForImport` / `ImportKeyMaterial` define them.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::key_wrap::{AES_256, AesKek, KeyWrapPadded};
use aws_lc_rs::rsa::{
    KeySize, OAEP_SHA1_MGF1SHA1, OAEP_SHA256_MGF1SHA256, OaepAlgorithm, OaepPrivateDecryptingKey,
    PrivateDecryptingKey,
};

use crate::{CryptoError, SecretBytes};

/// RSA wrapping key sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WrappingSpec {
    /// 2048-bit RSA.
    Rsa2048,
    /// 3072-bit RSA.
    Rsa3072,
    /// 4096-bit RSA.
    Rsa4096,
}

/// How the material is wrapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WrappingAlgorithm {
    /// RSA-OAEP with SHA-1 (and MGF1 with SHA-1).
    OaepSha1,
    /// RSA-OAEP with SHA-256 (and MGF1 with SHA-256).
    OaepSha256,
    /// An ephemeral AES-256 key wrapped with RSA-OAEP SHA-1, then the
    /// material wrapped with AES-KWP under it; concatenated.
    RsaAesKeyWrapSha1,
    /// The same with RSA-OAEP SHA-256.
    RsaAesKeyWrapSha256,
}

/// An RSA private key that unwraps imported material. Never printed.
pub struct WrappingKey(PrivateDecryptingKey);

impl core::fmt::Debug for WrappingKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("WrappingKey(<redacted>)")
    }
}

impl WrappingKey {
    /// Generates a key of `spec`.
    pub fn generate(spec: WrappingSpec) -> Result<Self, CryptoError> {
        let size = match spec {
            WrappingSpec::Rsa2048 => KeySize::Rsa2048,
            WrappingSpec::Rsa3072 => KeySize::Rsa3072,
            WrappingSpec::Rsa4096 => KeySize::Rsa4096,
        };
        PrivateDecryptingKey::generate(size)
            .map(Self)
            .map_err(|_| CryptoError::Library("RSA key generation"))
    }

    /// The public key, DER SubjectPublicKeyInfo (what AWS returns as `PublicKey`).
    pub fn public_key_der(&self) -> Result<Vec<u8>, CryptoError> {
        self.0
            .public_key()
            .as_der()
            .map(|d| d.as_ref().to_vec())
            .map_err(|_| CryptoError::Library("RSA public key encoding"))
    }

    /// The private key as PKCS#8 DER, in a zeroizing buffer.
    pub fn to_pkcs8(&self) -> Result<SecretBytes, CryptoError> {
        let der = self
            .0
            .as_der()
            .map_err(|_| CryptoError::Library("RSA private key encoding"))?;
        Ok(SecretBytes::new(der.as_ref().to_vec()))
    }

    /// A key from PKCS#8 DER.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, CryptoError> {
        PrivateDecryptingKey::from_pkcs8(der)
            .map(Self)
            .map_err(|_| CryptoError::Library("RSA private key decoding"))
    }

    /// The modulus length in bytes (the length of an RSA ciphertext).
    #[must_use]
    pub fn size_bytes(&self) -> usize {
        self.0.key_size_bytes()
    }

    fn oaep(
        &self,
        alg: &'static OaepAlgorithm,
        ciphertext: &[u8],
    ) -> Result<SecretBytes, CryptoError> {
        if ciphertext.len() != self.size_bytes() {
            return Err(CryptoError::Authentication);
        }
        let key = OaepPrivateDecryptingKey::new(
            PrivateDecryptingKey::from_pkcs8(self.to_pkcs8()?.expose())
                .map_err(|_| CryptoError::Library("RSA key"))?,
        )
        .map_err(|_| CryptoError::Library("RSA-OAEP key"))?;
        let mut out = SecretBytes::new(vec![0u8; self.size_bytes()]);
        let n = key
            .decrypt(alg, ciphertext, out.expose_mut(), None)
            .map_err(|_| CryptoError::Authentication)?
            .len();
        out.expose_mut().truncate(n);
        Ok(out)
    }

    /// Unwraps material wrapped with `alg` under this key's public key.
    /// Any malformed or foreign input is [`CryptoError::Authentication`].
    pub fn unwrap(
        &self,
        alg: WrappingAlgorithm,
        wrapped: &[u8],
    ) -> Result<SecretBytes, CryptoError> {
        match alg {
            WrappingAlgorithm::OaepSha1 => self.oaep(&OAEP_SHA1_MGF1SHA1, wrapped),
            WrappingAlgorithm::OaepSha256 => self.oaep(&OAEP_SHA256_MGF1SHA256, wrapped),
            WrappingAlgorithm::RsaAesKeyWrapSha1 | WrappingAlgorithm::RsaAesKeyWrapSha256 => {
                let n = self.size_bytes();
                if wrapped.len() <= n {
                    return Err(CryptoError::Authentication);
                }
                let (rsa_part, kwp_part) = wrapped.split_at(n);
                let oaep = if alg == WrappingAlgorithm::RsaAesKeyWrapSha1 {
                    &OAEP_SHA1_MGF1SHA1
                } else {
                    &OAEP_SHA256_MGF1SHA256
                };
                let aes_key = self.oaep(oaep, rsa_part)?;
                let kek = AesKek::new(&AES_256, aes_key.expose())
                    .map_err(|_| CryptoError::Authentication)?;
                let mut out = SecretBytes::new(vec![0u8; kwp_part.len()]);
                let len = kek
                    .unwrap_with_padding(kwp_part, out.expose_mut())
                    .map_err(|_| CryptoError::Authentication)?
                    .len();
                out.expose_mut().truncate(len);
                Ok(out)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::rsa::{OaepPublicEncryptingKey, PublicEncryptingKey};

    use super::*;

    fn encrypt(key: &WrappingKey, alg: &'static OaepAlgorithm, pt: &[u8]) -> Vec<u8> {
        let public = PublicEncryptingKey::from_der(&key.public_key_der().unwrap()).unwrap();
        let enc = OaepPublicEncryptingKey::new(public).unwrap();
        let mut out = vec![0u8; enc.ciphertext_size()];
        enc.encrypt(alg, pt, &mut out, None).unwrap().to_vec()
    }

    #[test]
    fn oaep_and_rsa_aes_key_wrap_round_trip() {
        let key = WrappingKey::generate(WrappingSpec::Rsa2048).unwrap();
        let material = [7u8; 32];
        let w1 = encrypt(&key, &OAEP_SHA1_MGF1SHA1, &material);
        assert_eq!(
            key.unwrap(WrappingAlgorithm::OaepSha1, &w1)
                .unwrap()
                .expose(),
            material
        );
        let w256 = encrypt(&key, &OAEP_SHA256_MGF1SHA256, &material);
        assert_eq!(
            key.unwrap(WrappingAlgorithm::OaepSha256, &w256)
                .unwrap()
                .expose(),
            material
        );
        // The hash must match: SHA-1 ciphertext under SHA-256 fails.
        assert!(key.unwrap(WrappingAlgorithm::OaepSha256, &w1).is_err());

        let aes = [9u8; 32];
        let kek = AesKek::new(&AES_256, &aes).unwrap();
        let mut kwp = vec![0u8; 48];
        let kwp = kek.wrap_with_padding(&material, &mut kwp).unwrap().to_vec();
        let mut both = encrypt(&key, &OAEP_SHA256_MGF1SHA256, &aes);
        both.extend_from_slice(&kwp);
        assert_eq!(
            key.unwrap(WrappingAlgorithm::RsaAesKeyWrapSha256, &both)
                .unwrap()
                .expose(),
            material
        );
        let mut bad = both.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(
            key.unwrap(WrappingAlgorithm::RsaAesKeyWrapSha256, &bad)
                .is_err()
        );
        assert!(
            key.unwrap(WrappingAlgorithm::RsaAesKeyWrapSha256, &both[..100])
                .is_err()
        );
        assert!(key.unwrap(WrappingAlgorithm::OaepSha256, &[]).is_err());

        // PKCS#8 round trip keeps the key.
        let again = WrappingKey::from_pkcs8(key.to_pkcs8().unwrap().expose()).unwrap();
        assert_eq!(
            again
                .unwrap(WrappingAlgorithm::OaepSha256, &w256)
                .unwrap()
                .expose(),
            material
        );
        assert!(format!("{key:?}").contains("redacted"));
    }
}
