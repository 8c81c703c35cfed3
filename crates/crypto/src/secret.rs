//! Types that hold secrets.
//!
//! Both types keep their bytes on the heap (so moving the handle never leaves a
//! copy of the secret behind on the stack), overwrite them with zeros on drop,
//! print as a redaction, and compare in constant time. They implement neither
//! `Display`, `Clone` (use [`SecretKey::duplicate`] deliberately) nor serde.

use core::fmt;

use subtle::ConstantTimeEq;
use zeroize::Zeroize;

use crate::CryptoError;

/// A fixed-size secret key of `N` bytes.
pub struct SecretKey<const N: usize>(Box<[u8; N]>);

impl<const N: usize> SecretKey<N> {
    /// Generates a fresh key from the system CSPRNG.
    pub fn generate() -> Result<Self, CryptoError> {
        let mut key = Self(Box::new([0u8; N]));
        crate::rand::fill(key.0.as_mut_slice())?;
        Ok(key)
    }

    /// Copies key bytes into a new key. The caller remains responsible for
    /// wiping `bytes` if it owns them.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, CryptoError> {
        if bytes.len() != N {
            return Err(CryptoError::KeyLength {
                expected: N,
                actual: bytes.len(),
            });
        }
        let mut key = Self(Box::new([0u8; N]));
        key.0.copy_from_slice(bytes);
        Ok(key)
    }

    /// Copies key bytes held in a [`SecretBytes`].
    pub fn from_secret_bytes(bytes: &SecretBytes) -> Result<Self, CryptoError> {
        Self::from_slice(bytes.expose())
    }

    /// The key bytes. Keep the borrow short and never copy them into a type
    /// that does not zeroize.
    #[must_use]
    pub fn expose(&self) -> &[u8; N] {
        &self.0
    }

    /// An explicit copy of the key (a second zeroizing allocation).
    #[must_use]
    pub fn duplicate(&self) -> Self {
        Self(Box::new(*self.0))
    }
}

impl<const N: usize> Drop for SecretKey<N> {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl<const N: usize> fmt::Debug for SecretKey<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey<{N}>(<redacted>)")
    }
}

impl<const N: usize> ConstantTimeEq for SecretKey<N> {
    fn ct_eq(&self, other: &Self) -> subtle::Choice {
        self.0.as_slice().ct_eq(other.0.as_slice())
    }
}

impl<const N: usize> PartialEq for SecretKey<N> {
    fn eq(&self, other: &Self) -> bool {
        bool::from(self.ct_eq(other))
    }
}

impl<const N: usize> Eq for SecretKey<N> {}

/// A variable-length secret: a decrypted plaintext or a data key on its way to
/// a client.
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    /// Takes ownership of `bytes`; they are wiped when this value drops.
    #[must_use]
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// `len` fresh random bytes.
    pub fn random(len: usize) -> Result<Self, CryptoError> {
        let mut v = vec![0u8; len];
        crate::rand::fill(&mut v)?;
        Ok(Self(v))
    }

    /// The secret bytes.
    #[must_use]
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Mutable access, for in-place decryption.
    pub fn expose_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }

    /// The length in bytes (not secret).
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no bytes.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Drop for SecretBytes {
    fn drop(&mut self) {
        // `Vec::zeroize` wipes the full capacity, not just the length.
        self.0.zeroize();
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes(<{} bytes redacted>)", self.0.len())
    }
}

impl ConstantTimeEq for SecretBytes {
    fn ct_eq(&self, other: &Self) -> subtle::Choice {
        // Lengths are not secret; `subtle` returns false for unequal lengths.
        self.0.as_slice().ct_eq(other.0.as_slice())
    }
}

impl PartialEq for SecretBytes {
    fn eq(&self, other: &Self) -> bool {
        bool::from(self.ct_eq(other))
    }
}

impl Eq for SecretBytes {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_bytes() {
        let key = SecretKey::<32>::from_slice(&[0xAB; 32]).unwrap();
        let shown = format!("{key:?} {key:#?}");
        assert!(!shown.to_lowercase().contains("ab"), "{shown}");
        assert!(shown.contains("redacted"));
        let bytes = SecretBytes::new(b"hunter2-hunter2".to_vec());
        let shown = format!("{bytes:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("15 bytes"));
    }

    #[test]
    fn equality_is_by_value() {
        let a = SecretKey::<32>::from_slice(&[1; 32]).unwrap();
        let b = SecretKey::<32>::from_slice(&[1; 32]).unwrap();
        let c = SecretKey::<32>::from_slice(&[2; 32]).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.duplicate(), a);
        assert_ne!(
            SecretBytes::new(vec![1, 2]),
            SecretBytes::new(vec![1, 2, 3])
        );
    }

    #[test]
    fn wrong_length_is_refused() {
        assert_eq!(
            SecretKey::<32>::from_slice(&[0; 31]).unwrap_err(),
            CryptoError::KeyLength {
                expected: 32,
                actual: 31
            }
        );
    }

    #[test]
    fn generated_keys_differ() {
        let a = SecretKey::<32>::generate().unwrap();
        let b = SecretKey::<32>::generate().unwrap();
        assert_ne!(a, b);
    }
}
