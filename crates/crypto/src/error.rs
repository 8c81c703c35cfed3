use thiserror::Error;

/// Errors from the cryptographic core. None of them carries secret bytes.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CryptoError {
    /// Key bytes of the wrong length were supplied.
    #[error("key must be {expected} bytes, got {actual}")]
    KeyLength {
        /// The length the key type needs.
        expected: usize,
        /// The length supplied.
        actual: usize,
    },
    /// An XTS key whose two halves are equal (refused, as SP 800-38E requires).
    #[error("the two halves of an XTS key must differ")]
    XtsKeyHalvesEqual,
    /// Authenticated decryption failed: wrong key, wrong associated data, or
    /// modified ciphertext. Deliberately says nothing more.
    #[error("authentication failed")]
    Authentication,
    /// Input of a length the operation cannot take.
    #[error("invalid input length {len}: {reason}")]
    InputLength {
        /// The length supplied.
        len: usize,
        /// What the operation needs.
        reason: &'static str,
    },
    /// The system random number generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// A KDF was given parameters it cannot use.
    #[error("invalid key-derivation parameters: {0}")]
    KdfParams(String),
    /// Key bytes that are not a key of the kind the operation needs.
    #[error("invalid key: {0}")]
    InvalidKey(&'static str),
    /// An algorithm or mode atrest does not offer (see the operation's docs).
    #[error("not supported: {0}")]
    Unsupported(&'static str),
    /// The underlying library reported an internal failure.
    #[error("cryptographic library failure in {0}")]
    Library(&'static str),
}
