//! Why a server did not start, naming the listener at fault.

use std::net::SocketAddr;

/// One of the server's listeners, as a [`StartError`] names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Listener {
    /// The API's (HTTP or HTTPS).
    Http,
    /// The metrics listener's.
    Metrics,
    /// The NBD listener's.
    Nbd,
}

impl std::fmt::Display for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Http => "HTTP",
            Self::Metrics => "metrics",
            Self::Nbd => "NBD",
        })
    }
}

/// Why [`start`] failed. Every message is whole: it says what failed,
/// where, and the underlying error's message (so the underlying error,
/// kept typed in the variant, is not also the
/// [`source`](std::error::Error::source), which would print it twice in a
/// chain).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// Plain HTTP was asked for off loopback, without
    /// `allow_plaintext_remote`. Nothing was created.
    #[error(
        "refusing to serve plain HTTP on {listen}, which is not a loopback address: give --tls-cert and --tls-key, or --allow-plaintext-remote if a proxy in front terminates TLS"
    )]
    PlaintextRemote {
        /// The address asked for.
        listen: SocketAddr,
    },
    /// Plaintext NBD was asked for off loopback.
    #[error(
        "refusing plaintext NBD on {listen}, which is not a loopback address: NBD off loopback needs TLS (--nbd-tls-cert, --nbd-tls-key) and no --nbd-plaintext-principal"
    )]
    NbdPlaintextRemote {
        /// The NBD address asked for.
        listen: SocketAddr,
    },
    /// The principal for plaintext NBD is not an atrest principal ARN.
    #[error(
        "--nbd-plaintext-principal {principal} is not arn:aws:iam::ACCOUNT:root, arn:aws:iam::ACCOUNT:user/NAME or admin (the root of the admin account made at first start)"
    )]
    NbdPrincipal {
        /// The principal given.
        principal: String,
    },
    /// NBD was configured with neither TLS nor a plaintext principal.
    #[error(
        "NBD needs TLS (--nbd-tls-cert and --nbd-tls-key), or --nbd-plaintext-principal for plaintext on loopback"
    )]
    NbdWithoutTls,
    /// A listener's TLS configuration cannot be built from its files.
    #[error("{listener} TLS: {error}")]
    Tls {
        /// Whose TLS.
        listener: Listener,
        /// Why.
        error: crate::tls::TlsError,
    },
    /// The data dir could not be opened: its lock (another server has
    /// it), its store, the root of trust, the audit trail or the disk
    /// service.
    #[error("{0}")]
    DataDir(crate::datadir::DataDirError),
    /// A listener could not be bound (the address is in use, say).
    #[error("binding {listener} listener {addr}: {error}")]
    Bind {
        /// Which listener.
        listener: Listener,
        /// The address asked for.
        addr: SocketAddr,
        /// The error ([`std::io::ErrorKind::AddrInUse`], ...).
        error: std::io::Error,
    },
    /// The path of the running program (the database service's agent) is
    /// not known.
    #[error("finding the atrest program: {0}")]
    CurrentExe(std::io::Error),
    /// The database service could not be opened.
    #[error("database service: {0}")]
    Db(atrest_dbservice::DbError),
    /// The projects' store could not be opened.
    #[error("project store: {0}")]
    ProjectStore(atrest_store::StoreError),
    /// A start-up step run on a blocking thread panicked.
    #[error("{step}: {error}")]
    Task {
        /// The step.
        step: &'static str,
        /// The panic, as the runtime reports it.
        error: tokio::task::JoinError,
    },
}
