/// Why a request's authentication was refused. Each variant is one of AWS's
/// error types; [`AuthError::aws_type`] names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No `Authorization` header at all.
    #[error("Missing Authentication Token")]
    MissingAuthenticationToken,
    /// The header is malformed or a required part is absent.
    #[error("{0}")]
    IncompleteSignature(String),
    /// The signature, scope or time is wrong.
    #[error("{0}")]
    InvalidSignature(String),
    /// The access key id is not known.
    #[error("The security token included in the request is invalid.")]
    UnrecognizedClient,
}

impl AuthError {
    /// AWS's `__type` for this error.
    #[must_use]
    pub fn aws_type(&self) -> &'static str {
        match self {
            Self::MissingAuthenticationToken => "MissingAuthenticationTokenException",
            Self::IncompleteSignature(_) => "IncompleteSignatureException",
            Self::InvalidSignature(_) => "InvalidSignatureException",
            Self::UnrecognizedClient => "UnrecognizedClientException",
        }
    }

    pub(crate) fn signature_mismatch() -> Self {
        Self::InvalidSignature(
            "The request signature we calculated does not match the signature you provided. \
             Check your AWS Secret Access Key and signing method. Consult the service \
             documentation for details."
                .into(),
        )
    }
}
