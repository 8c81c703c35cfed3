//! The cryptographic core of atrest.
//!
//! This crate owns every primitive atrest uses and the types that hold secret
//! keys. It knows nothing of keys' lifecycles, storage or the network: callers
//! hand it keys and bytes and get bytes back.
//!
//! * [`secret`]: [`SecretKey`] and [`SecretBytes`], which zeroize on drop, never
//!   print, and compare in constant time.
//! * [`aead`]: AES-256-GCM, used to seal key material under the root key and for
//!   the key service's ciphertext blobs.
//! * [`xts`]: AES-256-XTS sector encryption for disks.
//! * [`kdf`]: HKDF-SHA256 and the argon2id passphrase KDF.
//! * [`hash`]: SHA-256 and HMAC-SHA256 (SigV4, check values).
//! * [`rand`]: the system CSPRNG.
//! * [`keypair`]: asymmetric key pairs (RSA, ECC, Ed25519, ML-DSA).
//! * [`mac`]: HMAC-SHA-224/256/384/512 (the key service's HMAC keys).
//! * [`asymmetric`]: signing and verifying, RSA-OAEP and ECDH with them.
//! * [`wrap`]: unwrapping imported key material (RSA-OAEP, RSA + AES-KWP).
//!
//! Every primitive comes from AWS-LC (through `aws-lc-rs`, and `aws-lc-sys` for
//! XTS, Ed25519ph and ML-DSA signing of an external μ, which `aws-lc-rs` does
//! not expose); argon2id comes from RustCrypto's
//! `argon2`. The choice was made by measurement and validation record; see
//! `docs/design.md`.

#![warn(missing_docs)]

pub mod aead;
pub mod asymmetric;
pub mod hash;
pub mod kdf;
pub mod keypair;
mod lcsig;
pub mod mac;
pub mod memlock;
pub mod rand;
pub mod secret;
pub mod wrap;
pub mod xts;

mod error;

pub use error::CryptoError;
pub use secret::{SecretBytes, SecretKey};

/// A 256-bit AES key.
pub type Aes256Key = SecretKey<32>;

/// A 512-bit AES-256-XTS key: two independent AES-256 keys (data, tweak).
pub type XtsKey = SecretKey<64>;

/// Compares two byte strings in time that depends only on their lengths.
#[must_use]
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}
