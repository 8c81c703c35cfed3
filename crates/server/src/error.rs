//! Every error a client can see, and the one function that maps each to an
//! HTTP status, an AWS error type and a message.

use atrest_kms::KmsError;
use atrest_sigv4::AuthError;
use http::StatusCode;

/// An error answered to a client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// From the key service.
    #[error(transparent)]
    Kms(#[from] KmsError),
    /// From authentication.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The body is larger than the limit.
    #[error("The request body exceeds the limit of {0} bytes.")]
    BodyTooLarge(usize),
    /// The body could not be read.
    #[error("The request body could not be read: {0}")]
    BodyRead(String),
    /// The body did not arrive within the body deadline.
    #[error("The request body did not arrive within {0} seconds.")]
    BodyTimeout(u64),
    /// A content type the endpoint does not speak.
    #[error("Content-Type must be application/x-amz-json-1.1 (or application/json), not '{0}'.")]
    ContentType(String),
    /// Not `POST`.
    #[error("The KMS API accepts only POST requests.")]
    Method,
    /// No such REST route.
    #[error("No such resource: {0}")]
    NoRoute(String),
    /// The route exists but not with this method.
    #[error("{1} does not accept {0} requests.")]
    WrongMethod(String, String),
    /// The access key exists but is inactive.
    #[error("The security token included in the request is invalid.")]
    InactiveKey,
    /// A path segment or the query string of a REST request could not be
    /// read as the route declares it (bad percent-encoding, wrong type).
    #[error("{0}")]
    BadRequestParts(String),
    /// From the disk service.
    #[error(transparent)]
    Disk(#[from] atrest_diskservice::ServiceError),
    /// From the database service.
    #[error(transparent)]
    Db(#[from] atrest_dbservice::DbError),
    /// From the control plane (projects).
    #[error(transparent)]
    Control(#[from] atrest_control::ControlError),
    /// The request conflicts with an earlier one (an idempotency key reused
    /// for another request).
    #[error("{0}")]
    Conflict(String),
    /// A REST request's members break a rule of the endpoint (a missing
    /// member, members that exclude each other, a value out of range).
    #[error("{0}")]
    Invalid(String),
    /// A REST request's body or query is not what the endpoint reads (not
    /// JSON, a member of the wrong type, an unknown member).
    #[error("{0}")]
    Malformed(String),
    /// The resource is hosted by another node (a disk in its pool, an
    /// instance it runs): the message names it and its addresses.
    #[error("{0}")]
    WrongNode(String),
    /// The REST layer itself failed (encoding an answer, a worker): a
    /// server fault, with details in the log only.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// Status, `__type` and message. Only a server fault is a 5xx.
    #[must_use]
    pub fn parts(&self) -> (StatusCode, &'static str, String) {
        match self {
            Self::Kms(e) => {
                let status = match e {
                    KmsError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
                    KmsError::DryRun => StatusCode::PRECONDITION_FAILED,
                    // Only the REST API's admin operations answer it.
                    KmsError::Conflict(_) => StatusCode::CONFLICT,
                    // AWS answers 503 when a dependency times out: retry.
                    KmsError::DependencyTimeout(_) => StatusCode::SERVICE_UNAVAILABLE,
                    _ => StatusCode::BAD_REQUEST,
                };
                (status, e.aws_type(), e.to_string())
            }
            Self::Auth(e) => (StatusCode::BAD_REQUEST, e.aws_type(), e.to_string()),
            Self::InactiveKey => (
                StatusCode::BAD_REQUEST,
                "UnrecognizedClientException",
                self.to_string(),
            ),
            Self::BodyTooLarge(_) | Self::BodyRead(_) => (
                StatusCode::BAD_REQUEST,
                "ValidationException",
                self.to_string(),
            ),
            Self::BodyTimeout(_) => (
                StatusCode::REQUEST_TIMEOUT,
                "RequestTimeoutException",
                self.to_string(),
            ),
            Self::ContentType(_) => (
                StatusCode::BAD_REQUEST,
                "SerializationException",
                self.to_string(),
            ),
            Self::Method => (
                StatusCode::METHOD_NOT_ALLOWED,
                "UnknownOperationException",
                self.to_string(),
            ),
            Self::BadRequestParts(_) => (
                StatusCode::BAD_REQUEST,
                "ValidationException",
                self.to_string(),
            ),
            Self::NoRoute(_) => (StatusCode::NOT_FOUND, "NotFoundException", self.to_string()),
            Self::WrongNode(m) => (
                StatusCode::MISDIRECTED_REQUEST,
                "WrongNodeException",
                m.clone(),
            ),
            Self::WrongMethod(..) => (
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowedException",
                self.to_string(),
            ),
            Self::Disk(e) => disk_parts(e),
            Self::Db(e) => db_parts(e),
            Self::Control(e) => control_parts(e),
            Self::Conflict(_) => (StatusCode::CONFLICT, "ConflictException", self.to_string()),
            Self::Invalid(_) => (
                StatusCode::BAD_REQUEST,
                "ValidationException",
                self.to_string(),
            ),
            Self::Malformed(_) => (
                StatusCode::BAD_REQUEST,
                "SerializationException",
                self.to_string(),
            ),
            // As the key service's own internal error: one generic message.
            Self::Internal(m) => ApiError::Kms(KmsError::Internal(m.clone())).parts(),
        }
    }

    /// Status, code and message as the REST API answers them: as
    /// [`Self::parts`], except that a request that failed authentication
    /// (no, malformed or wrong signature; unknown or inactive access key) is
    /// 401 and one whose principal may not do it is 403, as HTTP means
    /// them; the KMS endpoint keeps AWS KMS's 400 for both.
    #[must_use]
    pub fn rest_parts(&self) -> (StatusCode, &'static str, String) {
        let (status, code, message) = self.parts();
        match self {
            Self::Auth(_) | Self::InactiveKey => (StatusCode::UNAUTHORIZED, code, message),
            // Authenticated, not allowed: HTTP's 403 (the KMS endpoint
            // keeps AWS KMS's 400).
            _ if code == "AccessDeniedException" => (StatusCode::FORBIDDEN, code, message),
            _ => (status, code, message),
        }
    }

    /// Whether the request was refused before its caller was known (see
    /// `crate::request::refused_unauthenticated`).
    #[must_use]
    pub fn before_authentication(&self) -> bool {
        matches!(
            self,
            Self::Auth(_)
                | Self::BodyTooLarge(_)
                | Self::BodyRead(_)
                | Self::BodyTimeout(_)
                | Self::Method
                | Self::NoRoute(_)
                | Self::WrongMethod(..)
        )
    }

    /// Whether the server is at fault.
    #[must_use]
    pub fn is_server_fault(&self) -> bool {
        match self {
            Self::Kms(KmsError::Internal(_)) | Self::Internal(_) => true,
            Self::Disk(e) => e.is_server_fault(),
            Self::Db(e) => e.is_server_fault(),
            Self::Control(atrest_control::ControlError::Store(_)) => true,
            Self::Control(atrest_control::ControlError::Disk(e)) => e.is_server_fault(),
            Self::Control(atrest_control::ControlError::Db(e)) => e.is_server_fault(),
            Self::Control(atrest_control::ControlError::Kms(KmsError::Internal(_))) => true,
            _ => false,
        }
    }
}

/// The disk service's errors: 404 for what does not exist (or is another
/// account's), 409 for state conflicts, locked keys and what a service of
/// atrest manages (an instance's disk), 400 for bad input,
/// key-service errors as the key service answers them; engine failures are
/// server faults, with details in the log only.
fn disk_parts(e: &atrest_diskservice::ServiceError) -> (StatusCode, &'static str, String) {
    use atrest_disk::DiskError;
    use atrest_diskservice::ServiceError as S;
    match e {
        S::Kms(k) => ApiError::Kms(k.clone()).parts(),
        S::Disk(DiskError::NotFound { .. }) | S::NoJob(_) => {
            (StatusCode::NOT_FOUND, "NotFoundException", e.to_string())
        }
        S::Disk(DiskError::Exists { .. }) => (
            StatusCode::CONFLICT,
            "AlreadyExistsException",
            e.to_string(),
        ),
        S::Disk(DiskError::Conflict(_)) => {
            (StatusCode::CONFLICT, "ConflictException", e.to_string())
        }
        S::Disk(DiskError::Invalid(_)) => (
            StatusCode::BAD_REQUEST,
            "ValidationException",
            e.to_string(),
        ),
        S::Locked { .. } | S::Closed { .. } => {
            (StatusCode::CONFLICT, "DiskLockedException", e.to_string())
        }
        S::Managed { .. } => (
            StatusCode::CONFLICT,
            "ManagedResourceException",
            e.to_string(),
        ),
        // The object store is a dependency: its refusals and its corrupt
        // objects are named (object or store, never a credential).
        S::ObjectStore(_) | S::Corrupt(_) => (
            StatusCode::BAD_GATEWAY,
            "ObjectStoreException",
            e.to_string(),
        ),
        _ => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalFailure",
            "The disk service failed; see the server log.".into(),
        ),
    }
}

/// The database service's errors: as the disk service's, plus 503 when
/// this host cannot run PostgreSQL (a configuration fault, named), and 400
/// `InvalidParameterException` for a PostgreSQL parameter off the
/// allow-list (a bad value or name is a `ValidationException`).
fn db_parts(e: &atrest_dbservice::DbError) -> (StatusCode, &'static str, String) {
    use atrest_dbservice::{DbError as D, ParamError};
    match e {
        D::NotFound { .. } => (StatusCode::NOT_FOUND, "NotFoundException", e.to_string()),
        D::Invalid(_) => (
            StatusCode::BAD_REQUEST,
            "ValidationException",
            e.to_string(),
        ),
        D::ParameterRefused(ParamError::NotAllowed { .. }) => (
            StatusCode::BAD_REQUEST,
            "InvalidParameterException",
            e.to_string(),
        ),
        D::ParameterRefused(ParamError::BadValue { .. } | ParamError::BadName { .. }) => (
            StatusCode::BAD_REQUEST,
            "ValidationException",
            e.to_string(),
        ),
        D::Conflict(_) => (StatusCode::CONFLICT, "ConflictException", e.to_string()),
        D::Locked { .. } => (
            StatusCode::CONFLICT,
            "InstanceLockedException",
            e.to_string(),
        ),
        D::Disk(d) => disk_parts(d),
        D::Kms(k) => ApiError::Kms(k.clone()).parts(),
        // Backup storage is a dependency: its refusals are named (the
        // store and the object, never a credential).
        D::ObjectStore { .. } => (
            StatusCode::BAD_GATEWAY,
            "ObjectStoreException",
            e.to_string(),
        ),
        D::Unavailable(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailableException",
            e.to_string(),
        ),
        // The file system failed its check and was not mounted: the
        // instance cannot start until an operator looks (not a fault of
        // the request, nor one a retry fixes).
        D::Damaged(_) => (
            StatusCode::CONFLICT,
            "InstanceDamagedException",
            e.to_string(),
        ),
        _ => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalFailure",
            "The database service failed; see the server log.".into(),
        ),
    }
}

/// The control plane's errors: 404 for an unknown project, 409 for state
/// conflicts and unconfigured regions, 400 for bad input and for a key the
/// services may not use (the customer's configuration).
fn control_parts(e: &atrest_control::ControlError) -> (StatusCode, &'static str, String) {
    use atrest_control::ControlError as C;
    match e {
        C::NotFound(_) => (StatusCode::NOT_FOUND, "NotFoundException", e.to_string()),
        C::Invalid(_) => (
            StatusCode::BAD_REQUEST,
            "ValidationException",
            e.to_string(),
        ),
        C::Conflict(_) => (StatusCode::CONFLICT, "ConflictException", e.to_string()),
        C::RegionNotConfigured { .. } => (
            StatusCode::CONFLICT,
            "RegionNotConfiguredException",
            e.to_string(),
        ),
        C::KeyAccess { .. } => (
            StatusCode::BAD_REQUEST,
            "KeyAccessDeniedException",
            e.to_string(),
        ),
        C::Kms(k) => ApiError::Kms(k.clone()).parts(),
        C::Disk(d) => disk_parts(d),
        C::Db(d) => db_parts(d),
        _ => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalFailure",
            "The control plane failed; see the server log.".into(),
        ),
    }
}

/// The body of every REST API error (4xx and 5xx): a stable code (an AWS
/// error type such as `ValidationException`), a message for humans, and
/// the request id (also in the audit trail).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    /// Stable error code, e.g. `ValidationException`, `NotFoundException`,
    /// `AccessDeniedException`, `InternalFailure`.
    #[schema(example = "ValidationException")]
    pub code: String,
    /// What went wrong.
    pub message: String,
    /// The request's id, as recorded in the audit trail.
    pub request_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_internal_errors_are_5xx() {
        let client_errors = [
            ApiError::Kms(KmsError::NotFound("x".into())),
            ApiError::Kms(KmsError::Validation("x".into())),
            ApiError::Kms(KmsError::Serialization("x".into())),
            ApiError::Kms(KmsError::UnknownOperation("x".into())),
            ApiError::Kms(KmsError::AccessDenied("x".into())),
            ApiError::Kms(KmsError::DryRun),
            ApiError::Auth(AuthError::MissingAuthenticationToken),
            ApiError::Auth(AuthError::UnrecognizedClient),
            ApiError::Auth(AuthError::UnsignedHeader("x-amz-target".into())),
            ApiError::BodyTooLarge(1),
            ApiError::BodyTimeout(10),
            ApiError::ContentType("text/plain".into()),
            ApiError::Method,
            ApiError::NoRoute("/x".into()),
            ApiError::WrongMethod("GET".into(), "/v1/metering".into()),
            ApiError::InactiveKey,
            ApiError::BadRequestParts("x".into()),
        ];
        for e in client_errors {
            let (status, ty, msg) = e.parts();
            assert!(status.is_client_error(), "{e:?}");
            assert!(!ty.is_empty() && !msg.is_empty());
        }
        let (status, ty, msg) =
            ApiError::Kms(KmsError::Internal("disk on fire at /secret/path".into())).parts();
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(ty, "KMSInternalException");
        assert!(
            !msg.contains("/secret/path"),
            "internal details stay in the log"
        );
    }

    /// A header left out of the signature is refused like any other bad
    /// signature: 400 on the KMS endpoint, 401 on the REST API, as
    /// InvalidSignatureException naming the header.
    #[test]
    fn an_unsigned_header_is_an_invalid_signature() {
        let e = ApiError::Auth(AuthError::UnsignedHeader("x-amz-target".into()));
        let (status, code, msg) = e.parts();
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(code, "InvalidSignatureException");
        assert!(msg.contains("x-amz-target header is not signed"), "{msg}");
        let (status, code, rest_msg) = e.rest_parts();
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(code, "InvalidSignatureException");
        assert_eq!(rest_msg, msg);
        assert!(!e.is_server_fault());
    }

    #[test]
    fn a_managed_disk_is_409_managed_resource_with_its_message() {
        let e = atrest_diskservice::ServiceError::Managed {
            resource: "disk disk-0123456789abcdef".into(),
            service: "db".into(),
            managed_for: "instance orders (db-0123456789abcdef)".into(),
        };
        let expected = e.to_string();
        let api = ApiError::Disk(e);
        assert!(!api.is_server_fault());
        for (status, code, msg) in [api.parts(), api.rest_parts()] {
            assert_eq!(status, StatusCode::CONFLICT);
            assert_eq!(code, "ManagedResourceException");
            assert_eq!(msg, expected);
        }
        assert_eq!(
            expected,
            "disk disk-0123456789abcdef is managed by atrest's db service for instance orders (db-0123456789abcdef) and cannot be used directly"
        );
        // The same through the database service, which passes disk errors
        // on.
        let db = ApiError::Db(atrest_dbservice::DbError::Disk(
            atrest_diskservice::ServiceError::Managed {
                resource: "snapshot snap-0123456789abcdef".into(),
                service: "db".into(),
                managed_for: "x".into(),
            },
        ));
        assert_eq!(db.parts().0, StatusCode::CONFLICT);
        assert_eq!(db.parts().1, "ManagedResourceException");
    }

    #[test]
    fn refused_parameters_are_400_with_their_own_code() {
        use atrest_dbservice::{DbError, ParamError};
        let parts = |p: ParamError| ApiError::Db(DbError::from(p)).parts();
        let (status, ty, msg) = parts(ParamError::NotAllowed {
            name: "archive_cleanup_command".into(),
        });
        assert_eq!(
            (status, ty),
            (StatusCode::BAD_REQUEST, "InvalidParameterException")
        );
        assert!(msg.contains("'archive_cleanup_command'"), "{msg}");
        let (status, ty, msg) = parts(ParamError::BadValue {
            name: "work_mem",
            expected: "a whole number".into(),
        });
        assert_eq!(
            (status, ty),
            (StatusCode::BAD_REQUEST, "ValidationException")
        );
        assert!(msg.contains("'work_mem'"), "{msg}");
        let (status, ty, _) = parts(ParamError::BadName { name: "a b".into() });
        assert_eq!(
            (status, ty),
            (StatusCode::BAD_REQUEST, "ValidationException")
        );
    }
}
