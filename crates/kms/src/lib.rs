//! The atrest key service: symmetric AES-256 keys that AWS KMS clients use
//! unchanged.
//!
//! Owns: accounts and access keys, keys and their versions, aliases, tags,
//! rotation and deletion schedules, the ciphertext blob format, and the root
//! of trust that seals every secret it stores. Speaks AWS KMS's JSON shapes
//! and error types ([`KeyService::call`]) but knows nothing of HTTP, SigV4 or
//! sockets: the server crate authenticates a request, builds a [`Caller`],
//! and calls in.
//!
//! * [`KeyService`]: every operation, over any [`atrest_store::Store`].
//! * [`root`]: the root of trust (key file or passphrase).
//! * [`blob`]: the ciphertext format.
//! * [`names`]: account ids, regions, ARNs, alias names.

#![forbid(unsafe_code)]

pub mod api;
pub mod blob;
pub mod clock;
mod dispatch;
mod error;
pub mod names;
pub mod records;
pub mod root;
mod service;

pub use dispatch::Operation;
pub use error::KmsError;
pub use service::{
    AUDIT_KEY_INFO, AccessKeyInfo, AccessKeyLastUsed, AccessKeyUse, AdminBootstrap, AuditFacts,
    AuditSink, CLUSTER_KEY_INFO, CachedAccessKey, Call, Caller, CustomKeyStore,
    DEFAULT_ACCESS_KEY_USE_FLUSH_INTERVAL, ExternalHealth, ExternalKeyStatus, ExternalReport,
    KeyService, KeyUnusable, LifecycleReport, LocalKeyService, NewAccessKey, Providers,
    RequestMeta, ServiceSession, UserInfo, XksProxyConfiguration, audit_time, new_request_id,
};
