//! The system CSPRNG (AWS-LC's, seeded from the operating system).

use crate::CryptoError;

/// Fills `buf` with cryptographically secure random bytes.
pub fn fill(buf: &mut [u8]) -> Result<(), CryptoError> {
    aws_lc_rs::rand::fill(buf).map_err(|_| CryptoError::Random)
}

/// A random array of `N` bytes (not for secrets: the array is not wiped).
pub fn array<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut out = [0u8; N];
    fill(&mut out)?;
    Ok(out)
}
