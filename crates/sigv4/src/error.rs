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
    /// A header the signature must cover (`content-type`, or any
    /// `x-amz-*`) is present in the request but not among `SignedHeaders`.
    /// Left unsigned, it could be changed without breaking the signature: a
    /// captured `DescribeKey` would replay as a `DisableKey` by rewriting an
    /// unsigned `X-Amz-Target`. The name is the header's, lower-case.
    #[error(
        "The request's {0} header is not signed; every x-amz-* header present and \
         content-type must be among SignedHeaders."
    )]
    UnsignedHeader(String),
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
            // AWS's JSON services answer a required header missing from
            // SignedHeaders ("'Host' or ':authority' must be a 'SignedHeader'
            // in the AWS Authorization.") with InvalidSignatureException.
            Self::UnsignedHeader(_) => "InvalidSignatureException",
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
