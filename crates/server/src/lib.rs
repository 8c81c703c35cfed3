//! atrest's network front.
//!
//! Owns: the listener (plain HTTP on loopback, or TLS with rustls), the AWS
//! KMS JSON 1.1 endpoint (`POST /` with `X-Amz-Target: TrentService.*`),
//! the REST API under `/v1`, the NBD listener for disks ([`nbd`]), SigV4
//! authentication of every request, the
//! mapping of every error to an HTTP status and AWS error type (one function,
//! [`error::ApiError::parts`]), the data dir, the background lifecycle
//! task, and the web console's backend (`atrest-console` owns its pages). Owns no key logic: that is `atrest-kms`.

#![forbid(unsafe_code)]

mod audit_nodes;
pub mod cluster;
pub mod config;
mod console;
pub mod datadir;
pub mod error;
mod internal;
mod kms_api;
mod local;
pub mod nbd;
mod openapi;
mod request;
mod rest;
mod router;
mod routes;
mod run;
mod start_error;
mod state;
mod tls;
pub mod trail;

pub use config::{ClusterSettings, DbSettings, ServerConfig, TlsFiles};

/// The SigV4 service name of the REST API.
pub const REST_SERVICE: &str = "atrest";
pub use run::{RunningServer, start};
pub use start_error::{Listener, StartError};
pub use tls::TlsError;
