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
//!
//! Version 2 is the blob of an `EXTERNAL_KMS` key: after the key version
//! comes a u16 length and the data key the key provider wrapped (1 to
//! [`MAX_WRAPPED`] bytes), then salt and nonce as above. The message key is
//! derived from both the key version's material and the unwrapped data key
//! ([`combine`]), so opening a blob needs atrest *and* the provider (double
//! encryption, as AWS KMS does for external key stores). The whole header,
//! wrapped key included, is authenticated.

use std::collections::BTreeMap;

use atrest_crypto::aead::{Aes256Gcm, NONCE_LEN, TAG_LEN};
use atrest_crypto::{Aes256Key, SecretBytes};
use uuid::Uuid;

use crate::KmsError;

/// The format version this code writes.
pub const VERSION: u8 = 1;
/// The format version of blobs of keys held in another KMS.
pub const VERSION_EXTERNAL: u8 = 2;
/// The largest wrapped data key a version-2 blob carries.
pub const MAX_WRAPPED: usize = 1024;
/// Header length (version 1).
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
    /// The provider-wrapped data key (version 2 blobs only).
    pub wrapped: Option<&'a [u8]>,
    bytes: &'a [u8],
}

/// Splits a blob into its header and the ciphertext with tag, checking only
/// its shape. Never panics on any input.
pub fn parse(blob: &[u8]) -> Result<(Header<'_>, &[u8]), KmsError> {
    // AWS's InvalidCiphertextException carries no message.
    let invalid = || KmsError::InvalidCiphertext(String::new());
    if blob.len() < OVERHEAD {
        return Err(invalid());
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&blob[1..17]);
    let mut ver = [0u8; 4];
    ver.copy_from_slice(&blob[17..21]);
    let (header_len, wrapped) = match blob[0] {
        VERSION => (HEADER_LEN, None),
        VERSION_EXTERNAL => {
            let n = usize::from(u16::from_be_bytes([blob[21], blob[22]]));
            let len = HEADER_LEN + 2 + n;
            if n == 0 || n > MAX_WRAPPED || blob.len() < len + TAG_LEN {
                return Err(invalid());
            }
            (len, Some(&blob[23..23 + n]))
        }
        _ => return Err(invalid()),
    };
    let (header, body) = blob.split_at(header_len);
    Ok((
        Header {
            key_id: Uuid::from_bytes(id),
            version: u32::from_be_bytes(ver),
            wrapped,
            bytes: header,
        },
        body,
    ))
}

/// The message-key material of an external key's blob: HKDF-SHA256 over the
/// key version's material and the provider-unwrapped data key.
pub fn combine(material: &Aes256Key, data_key: &[u8]) -> Result<Aes256Key, KmsError> {
    Ok(atrest_crypto::kdf::hkdf_sha256(
        material.expose(),
        data_key,
        &[b"atrest/kms/blob/external/v2"],
    )?)
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
    seal_wrapped(key_id, version, material, None, context, plaintext)
}

/// [`seal`], writing a version-2 blob when `wrapped` (the provider-wrapped
/// data key) is given; `material` is then [`combine`]'s output.
pub fn seal_wrapped(
    key_id: &Uuid,
    version: u32,
    material: &Aes256Key,
    wrapped: Option<&[u8]>,
    context: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, KmsError> {
    // One call to the DRBG for both (each call costs about a microsecond,
    // most of it fixed: locking and reseeding checks).
    let random = atrest_crypto::rand::array::<{ 16 + NONCE_LEN }>()?;
    let (salt, nonce) = random.split_at(16);
    let nonce: &[u8; NONCE_LEN] = nonce
        .try_into()
        .map_err(|_| KmsError::Internal("nonce length".into()))?;
    let extra = wrapped.map_or(0, |w| 2 + w.len());
    let mut out = Vec::with_capacity(OVERHEAD + extra + plaintext.len());
    out.push(if wrapped.is_some() {
        VERSION_EXTERNAL
    } else {
        VERSION
    });
    out.extend_from_slice(key_id.as_bytes());
    out.extend_from_slice(&version.to_be_bytes());
    if let Some(w) = wrapped {
        let n = u16::try_from(w.len())
            .ok()
            .filter(|n| *n > 0 && usize::from(*n) <= MAX_WRAPPED)
            .ok_or_else(|| {
                KmsError::Internal(format!("a wrapped data key of {} bytes", w.len()))
            })?;
        out.extend_from_slice(&n.to_be_bytes());
        out.extend_from_slice(w);
    }
    out.extend_from_slice(salt);
    out.extend_from_slice(nonce);
    let mut aad = Vec::with_capacity(out.len() + context.len());
    aad.extend_from_slice(&out);
    aad.extend_from_slice(context);
    let gcm = Aes256Gcm::new(&message_key(material, salt)?)?;
    gcm.seal_append(nonce, &aad, plaintext, &mut out)?;
    Ok(out)
}

/// Authenticates and decrypts the body of a parsed blob.
pub fn open(
    header: &Header<'_>,
    body: &[u8],
    material: &Aes256Key,
    context: &[u8],
) -> Result<SecretBytes, KmsError> {
    // Salt and nonce are the header's last 28 bytes in both versions.
    let n = header.bytes.len();
    let salt = &header.bytes[n - 16 - NONCE_LEN..n - NONCE_LEN];
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&header.bytes[n - NONCE_LEN..]);
    let mut aad = Vec::with_capacity(n + context.len());
    aad.extend_from_slice(header.bytes);
    aad.extend_from_slice(context);
    let gcm = Aes256Gcm::new(&message_key(material, salt)?)?;
    gcm.open(&nonce, &aad, body)
        .map_err(|_| KmsError::InvalidCiphertext(String::new()))
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

    #[test]
    fn external_blobs_carry_and_authenticate_the_wrapped_key() {
        let id = Uuid::new_v4();
        let material = Aes256Key::generate().unwrap();
        let dk = [9u8; 32];
        let k = combine(&material, &dk).unwrap();
        let wrapped = vec![0xAB; 300];
        let blob = seal_wrapped(&id, 1, &k, Some(&wrapped), b"ctx", b"secret").unwrap();
        assert_eq!(blob[0], VERSION_EXTERNAL);
        let (h, body) = parse(&blob).unwrap();
        assert_eq!(
            (h.key_id, h.version, h.wrapped),
            (id, 1, Some(&wrapped[..]))
        );
        assert_eq!(open(&h, body, &k, b"ctx").unwrap().expose(), b"secret");
        // Another data key (or material alone) does not open it.
        let other = combine(&material, &[8u8; 32]).unwrap();
        assert!(open(&h, body, &other, b"ctx").is_err());
        assert!(open(&h, body, &material, b"ctx").is_err());
        // The wrapped key is authenticated.
        let mut t = blob.clone();
        t[40] ^= 1;
        let (h, body) = parse(&t).unwrap();
        assert!(open(&h, body, &k, b"ctx").is_err());
        // Lengths that do not fit are refused, never a panic.
        for n in [0u16, 1025, 400] {
            let mut b = blob.clone();
            b[21..23].copy_from_slice(&n.to_be_bytes());
            assert!(parse(&b).is_err(), "length {n}");
        }
        assert!(parse(&blob[..HEADER_LEN + 2 + 300 + TAG_LEN - 1]).is_err());
    }
}
