//! The ciphertext blob that Encrypt, GenerateDataKey and ReEncrypt return.
//!
//! Layout, version 1 (all integers big-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | format version, `0x01` |
//! | 1 | 16 | key id (UUID bytes) |
//! | 17 | 4 | key version (u32) |
//! | 21 | 16 | salt (random) |
//! | 37 | 12 | nonce (random) |
//! | 49 | n | AES-256-GCM ciphertext |
//! | 49+n | 16 | GCM tag |
//!
//! The message key is HKDF-SHA256(ikm = key-version material, salt = salt,
//! info = [`HKDF_INFO`]), so every blob has its own key and the GCM
//! random-nonce bound applies per blob rather than per key version. The
//! additional authenticated data is the 49-byte header followed by the
//! canonical encryption context ([`canonical_context`]), so neither the header
//! nor the context can be changed without failing authentication.

use std::collections::BTreeMap;

use atrest_crypto::aead::{Aes256Gcm, NONCE_LEN, TAG_LEN};
use atrest_crypto::{Aes256Key, SecretBytes};
use uuid::Uuid;

use crate::KmsError;

/// The format version this code writes.
pub const VERSION: u8 = 1;
/// Header length.
pub const HEADER_LEN: usize = 1 + 16 + 4 + 16 + NONCE_LEN;
/// Bytes a blob adds to its plaintext.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// HKDF `info` for message keys.
pub const HKDF_INFO: &[u8] = b"atrest/kms/blob/v1";
/// Largest canonical encryption context accepted, in bytes.
pub const MAX_CONTEXT_LEN: usize = 8192;

/// An encryption context: string keys and values, order-insensitive.
pub type EncryptionContext = BTreeMap<String, String>;

/// The canonical, length-prefixed encoding of an encryption context, sorted
/// by key (`BTreeMap` order is byte order for `String`).
pub fn canonical_context(ctx: &EncryptionContext) -> Result<Vec<u8>, KmsError> {
    let mut out = Vec::new();
    let count = u16::try_from(ctx.len()).map_err(|_| too_large())?;
    out.extend_from_slice(&count.to_be_bytes());
    for (k, v) in ctx {
        if k.is_empty() {
            return Err(KmsError::Validation(
                "1 validation error detected: Value at 'encryptionContext' failed to satisfy constraint: Map keys must have length at least 1".into(),
            ));
        }
        for s in [k, v] {
            let len = u16::try_from(s.len()).map_err(|_| too_large())?;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
    }
    if out.len() > MAX_CONTEXT_LEN {
        return Err(too_large());
    }
    Ok(out)
}

fn too_large() -> KmsError {
    KmsError::Validation(format!(
        "1 validation error detected: Value at 'encryptionContext' failed to satisfy constraint: Encryption context must encode to at most {MAX_CONTEXT_LEN} bytes"
    ))
}

/// The fields of a parsed blob.
#[derive(Debug, Clone, Copy)]
pub struct Header<'a> {
    /// The key the blob was made under.
    pub key_id: Uuid,
    /// The key version.
    pub version: u32,
    bytes: &'a [u8],
}

/// Splits a blob into its header and the ciphertext with tag, checking only
/// its shape. Never panics on any input.
pub fn parse(blob: &[u8]) -> Result<(Header<'_>, &[u8]), KmsError> {
    let invalid = || {
        KmsError::InvalidCiphertext("The ciphertext is not a valid atrest ciphertext blob.".into())
    };
    if blob.len() < OVERHEAD {
        return Err(invalid());
    }
    let (header, body) = blob.split_at(HEADER_LEN);
    if header[0] != VERSION {
        return Err(invalid());
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&header[1..17]);
    let mut ver = [0u8; 4];
    ver.copy_from_slice(&header[17..21]);
    Ok((
        Header {
            key_id: Uuid::from_bytes(id),
            version: u32::from_be_bytes(ver),
            bytes: header,
        },
        body,
    ))
}

fn message_key(material: &Aes256Key, salt: &[u8]) -> Result<Aes256Key, KmsError> {
    Ok(atrest_crypto::kdf::hkdf_sha256(
        material.expose(),
        salt,
        &[HKDF_INFO],
    )?)
}

/// Encrypts `plaintext` under one version of a key.
pub fn seal(
    key_id: &Uuid,
    version: u32,
    material: &Aes256Key,
    context: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, KmsError> {
    let salt = atrest_crypto::rand::array::<16>()?;
    let nonce = atrest_crypto::rand::array::<NONCE_LEN>()?;
    let mut out = Vec::with_capacity(OVERHEAD + plaintext.len());
    out.push(VERSION);
    out.extend_from_slice(key_id.as_bytes());
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&salt);
    out.extend_from_slice(&nonce);
    let mut aad = Vec::with_capacity(HEADER_LEN + context.len());
    aad.extend_from_slice(&out);
    aad.extend_from_slice(context);
    let gcm = Aes256Gcm::new(&message_key(material, &salt)?)?;
    gcm.seal_append(&nonce, &aad, plaintext, &mut out)?;
    Ok(out)
}

/// Authenticates and decrypts the body of a parsed blob.
pub fn open(
    header: &Header<'_>,
    body: &[u8],
    material: &Aes256Key,
    context: &[u8],
) -> Result<SecretBytes, KmsError> {
    let salt = &header.bytes[21..37];
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&header.bytes[37..HEADER_LEN]);
    let mut aad = Vec::with_capacity(HEADER_LEN + context.len());
    aad.extend_from_slice(header.bytes);
    aad.extend_from_slice(context);
    let gcm = Aes256Gcm::new(&message_key(material, salt)?)?;
    gcm.open(&nonce, &aad, body).map_err(|_| {
        KmsError::InvalidCiphertext(
            "The ciphertext could not be authenticated: it was modified, or the encryption context differs from the one used to encrypt.".into(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(pairs: &[(&str, &str)]) -> EncryptionContext {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn context_is_canonical_and_unambiguous() {
        let a = canonical_context(&ctx(&[("b", "2"), ("a", "1")])).unwrap();
        let b = canonical_context(&ctx(&[("a", "1"), ("b", "2")])).unwrap();
        assert_eq!(a, b);
        // Length prefixes keep ("ab","c") and ("a","bc") apart.
        assert_ne!(
            canonical_context(&ctx(&[("ab", "c")])).unwrap(),
            canonical_context(&ctx(&[("a", "bc")])).unwrap()
        );
        assert_ne!(
            canonical_context(&ctx(&[])).unwrap(),
            canonical_context(&ctx(&[("", "")])).unwrap_or_default()
        );
        assert!(canonical_context(&ctx(&[("", "v")])).is_err());
        let big = ctx(&[("k", &"v".repeat(MAX_CONTEXT_LEN))]);
        assert!(matches!(
            canonical_context(&big),
            Err(KmsError::Validation(_))
        ));
    }

    #[test]
    fn round_trip_and_every_byte_is_authenticated() {
        let key = Aes256Key::generate().unwrap();
        let id = Uuid::new_v4();
        let c = canonical_context(&ctx(&[("purpose", "test")])).unwrap();
        let blob = seal(&id, 7, &key, &c, b"the plaintext").unwrap();
        assert_eq!(blob.len(), OVERHEAD + 13);
        let (h, body) = parse(&blob).unwrap();
        assert_eq!((h.key_id, h.version), (id, 7));
        assert_eq!(open(&h, body, &key, &c).unwrap().expose(), b"the plaintext");
        let other = canonical_context(&ctx(&[("purpose", "other")])).unwrap();
        assert!(open(&h, body, &key, &other).is_err());
        assert!(open(&h, body, &key, &canonical_context(&ctx(&[])).unwrap()).is_err());
        for i in 0..blob.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = blob.clone();
                bad[i] ^= bit;
                let r = parse(&bad).and_then(|(h, b)| open(&h, b, &key, &c));
                assert!(matches!(r, Err(KmsError::InvalidCiphertext(_))), "byte {i}");
            }
        }
    }

    #[test]
    fn short_or_foreign_blobs_are_invalid() {
        assert!(parse(&[]).is_err());
        assert!(parse(&[1u8; OVERHEAD - 1]).is_err());
        let mut v2 = vec![2u8; OVERHEAD + 4];
        v2[0] = 2;
        assert!(parse(&v2).is_err());
    }
}
