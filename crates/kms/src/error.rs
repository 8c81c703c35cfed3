//! The key service's errors: one variant per AWS KMS error type.

use thiserror::Error;

/// An error from the key service. [`KmsError::aws_type`] gives AWS's
/// `__type`; the message follows AWS's wording where AWS has one.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KmsError {
    /// The key, alias or other resource does not exist (here).
    #[error("{0}")]
    NotFound(String),
    /// The key is disabled.
    #[error("{0}")]
    Disabled(String),
    /// The key's state does not allow the operation.
    #[error("{0}")]
    InvalidState(String),
    /// A ciphertext blob that is malformed, tampered with, or whose
    /// encryption context does not match.
    #[error("{0}")]
    InvalidCiphertext(String),
    /// The key named in the request is not the key of the ciphertext.
    #[error("{0}")]
    IncorrectKey(String),
    /// The resource already exists.
    #[error("{0}")]
    AlreadyExists(String),
    /// A parameter breaks a constraint.
    #[error("{0}")]
    Validation(String),
    /// The request body is not valid JSON of the expected shape.
    #[error("{0}")]
    Serialization(String),
    /// An alias name that is malformed.
    #[error("{0}")]
    InvalidAliasName(String),
    /// A reserved name (`alias/aws/...`): AWS answers this type with no
    /// message.
    #[error("{0}")]
    NotAuthorized(String),
    /// An ARN that is malformed.
    #[error("{0}")]
    InvalidArn(String),
    /// A pagination marker that this server did not issue.
    #[error("{0}")]
    InvalidMarker(String),
    /// A quota is exhausted.
    #[error("{0}")]
    LimitExceeded(String),
    /// Tags that break a rule.
    #[error("{0}")]
    Tag(String),
    /// An operation or parameter value atrest does not support.
    #[error("{0}")]
    UnsupportedOperation(String),
    /// An algorithm or usage that the key does not have.
    #[error("{0}")]
    InvalidKeyUsage(String),
    /// A grant token that is not valid.
    #[error("{0}")]
    InvalidGrantToken(String),
    /// The caller may not do this.
    #[error("{0}")]
    AccessDenied(String),
    /// `X-Amz-Target` names no operation.
    #[error("{0}")]
    UnknownOperation(String),
    /// A policy document that is not valid; the message says what is wrong.
    #[error("{0}")]
    MalformedPolicyDocument(String),
    /// Imported key material that is not the key's.
    #[error("{0}")]
    IncorrectKeyMaterial(String),
    /// An import token past its 24 hours.
    #[error("{0}")]
    ExpiredImportToken(String),
    /// An import token that is not valid for this key.
    #[error("{0}")]
    InvalidImportToken(String),
    /// A grant id that names no grant.
    #[error("{0}")]
    InvalidGrantId(String),
    /// The account's use of keys is suspended.
    #[error("{0}")]
    AccountSuspended(String),
    /// No key provider (custom key store) has this name.
    #[error("{0}")]
    CustomKeyStoreNotFound(String),
    /// The key provider cannot be used now (unreachable, misconfigured).
    #[error("{0}")]
    CustomKeyStoreInvalidState(String),
    /// The key provider has no such key.
    #[error("{0}")]
    XksKeyNotFound(String),
    /// The key provider's key cannot serve (disabled, access refused).
    #[error("{0}")]
    XksKeyInvalidConfiguration(String),
    /// A key provider did not answer in time; retry later.
    #[error("{0}")]
    DependencyTimeout(String),
    /// The request conflicts with the state of a resource (for example,
    /// deleting the last active access key of an admin account's root).
    #[error("{0}")]
    Conflict(String),
    /// A MAC that is not the MAC of the message under the key and algorithm
    /// (VerifyMac).
    #[error("{0}")]
    InvalidMac(String),
    /// Verify: the signature is not valid for the message, key and
    /// algorithm.
    #[error("{0}")]
    InvalidSignature(String),
    /// The request would have succeeded; `DryRun` was set.
    #[error("The request would have succeeded, but the DryRun parameter was set.")]
    DryRun,
    /// A fault of the server, never of the client. The message is generic;
    /// details go to the log only.
    #[error("An internal error occurred.")]
    Internal(String),
}

impl KmsError {
    /// AWS's `__type` for this error.
    #[must_use]
    pub fn aws_type(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "NotFoundException",
            Self::Disabled(_) => "DisabledException",
            Self::InvalidState(_) => "KMSInvalidStateException",
            Self::InvalidCiphertext(_) => "InvalidCiphertextException",
            Self::IncorrectKey(_) => "IncorrectKeyException",
            Self::AlreadyExists(_) => "AlreadyExistsException",
            Self::Validation(_) => "ValidationException",
            Self::Serialization(_) => "SerializationException",
            Self::InvalidAliasName(_) => "InvalidAliasNameException",
            Self::NotAuthorized(_) => "NotAuthorizedException",
            Self::InvalidArn(_) => "InvalidArnException",
            Self::InvalidMarker(_) => "InvalidMarkerException",
            Self::LimitExceeded(_) => "LimitExceededException",
            Self::Tag(_) => "TagException",
            Self::UnsupportedOperation(_) => "UnsupportedOperationException",
            Self::InvalidKeyUsage(_) => "InvalidKeyUsageException",
            Self::InvalidGrantToken(_) => "InvalidGrantTokenException",
            Self::AccessDenied(_) => "AccessDeniedException",
            Self::UnknownOperation(_) => "UnknownOperationException",
            Self::MalformedPolicyDocument(_) => "MalformedPolicyDocumentException",
            Self::IncorrectKeyMaterial(_) => "IncorrectKeyMaterialException",
            Self::ExpiredImportToken(_) => "ExpiredImportTokenException",
            Self::InvalidImportToken(_) => "InvalidImportTokenException",
            Self::InvalidGrantId(_) => "InvalidGrantIdException",
            Self::AccountSuspended(_) => "AccountSuspendedException",
            Self::CustomKeyStoreNotFound(_) => "CustomKeyStoreNotFoundException",
            Self::CustomKeyStoreInvalidState(_) => "CustomKeyStoreInvalidStateException",
            Self::XksKeyNotFound(_) => "XksKeyNotFoundException",
            Self::XksKeyInvalidConfiguration(_) => "XksKeyInvalidConfigurationException",
            Self::DependencyTimeout(_) => "DependencyTimeoutException",
            Self::Conflict(_) => "ConflictException",
            Self::InvalidMac(_) => "KMSInvalidMacException",
            Self::InvalidSignature(_) => "KMSInvalidSignatureException",
            Self::DryRun => "DryRunOperationException",
            Self::Internal(_) => "KMSInternalException",
        }
    }

    /// Whether the server, not the client, is at fault.
    #[must_use]
    pub fn is_server_fault(&self) -> bool {
        matches!(self, Self::Internal(_))
    }

    /// AWS's message for a constraint violation on one member.
    pub(crate) fn constraint(member: &str, value: impl std::fmt::Display, rule: &str) -> Self {
        Self::Validation(format!(
            "1 validation error detected: Value '{value}' at '{member}' failed to satisfy constraint: {rule}"
        ))
    }

    /// AWS's message for a constraint violation on a member whose value AWS
    /// does not repeat (sensitive or binary members: `plaintext`,
    /// `ciphertextBlob`): `Value at 'plaintext' failed to satisfy ...`.
    pub(crate) fn constraint_unquoted(member: &str, rule: &str) -> Self {
        Self::Validation(format!(
            "1 validation error detected: Value at '{member}' failed to satisfy constraint: {rule}"
        ))
    }

    /// AWS's message for a length constraint on one member: AWS names the
    /// bound that is broken, never both.
    pub(crate) fn length(
        member: &str,
        value: Option<&str>,
        len: usize,
        lo: usize,
        hi: usize,
    ) -> Option<Self> {
        let rule = if len < lo {
            format!("Member must have length greater than or equal to {lo}")
        } else if len > hi {
            format!("Member must have length less than or equal to {hi}")
        } else {
            return None;
        };
        Some(match value {
            Some(v) => Self::constraint(member, v, &rule),
            None => Self::constraint_unquoted(member, &rule),
        })
    }

    /// AWS's message for a required member that is absent.
    pub(crate) fn required(member: &str) -> Self {
        Self::Validation(format!(
            "1 validation error detected: Value null at '{member}' failed to satisfy constraint: Member must not be null"
        ))
    }
}

impl From<atrest_store::StoreError> for KmsError {
    fn from(e: atrest_store::StoreError) -> Self {
        Self::Internal(e.to_string())
    }
}

impl From<atrest_crypto::CryptoError> for KmsError {
    fn from(e: atrest_crypto::CryptoError) -> Self {
        Self::Internal(e.to_string())
    }
}
