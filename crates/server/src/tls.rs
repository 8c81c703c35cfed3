//! TLS server configuration from PEM files.

use std::path::PathBuf;
use std::sync::Arc;

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A PEM certificate chain and its private key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Why a listener's TLS configuration cannot be built from its files.
/// Each message names the file and the underlying error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The certificate file cannot be read.
    #[error("reading certificate {}: {error}", path.display())]
    ReadCertificate {
        /// The certificate file.
        path: PathBuf,
        /// The error (an I/O error for a missing or unreadable file).
        error: pem::Error,
    },
    /// The certificate file holds a malformed PEM section.
    #[error("parsing certificate {}: {error}", path.display())]
    ParseCertificate {
        /// The certificate file.
        path: PathBuf,
        /// The error.
        error: pem::Error,
    },
    /// The certificate file holds no certificate.
    #[error("{} holds no certificate", path.display())]
    NoCertificate {
        /// The certificate file.
        path: PathBuf,
    },
    /// The private key file cannot be read, or holds no private key.
    #[error("reading private key {}: {error}", path.display())]
    ReadKey {
        /// The key file.
        path: PathBuf,
        /// The error.
        error: pem::Error,
    },
    /// The client CA file cannot be read.
    #[error("reading client CA {}: {error}", path.display())]
    ReadClientCa {
        /// The client CA file.
        path: PathBuf,
        /// The error.
        error: pem::Error,
    },
    /// The client CA file holds a malformed PEM section.
    #[error("parsing client CA {}: {error}", path.display())]
    ParseClientCa {
        /// The client CA file.
        path: PathBuf,
        /// The error.
        error: pem::Error,
    },
    /// A client CA certificate is not usable as a trust anchor.
    #[error("client CA {}: {error}", path.display())]
    ClientCa {
        /// The client CA file.
        path: PathBuf,
        /// The error.
        error: rustls::Error,
    },
    /// No client certificate verifier can be built on the client CAs
    /// (none at all, say).
    #[error("client CA {}: {error}", path.display())]
    ClientVerifier {
        /// The client CA file.
        path: PathBuf,
        /// The error.
        error: rustls::server::VerifierBuilderError,
    },
    /// The private key is not the certificate's (or not usable at all).
    #[error("certificate and key do not match: {0}")]
    KeyMismatch(rustls::Error),
    /// The crypto provider refused the protocol versions.
    #[error("TLS protocol versions: {0}")]
    Versions(rustls::Error),
    /// OpenSSL refused the TLS-PSK configuration.
    #[error("TLS-PSK: {0}")]
    Psk(atrest_tlspsk::Error),
}

/// Reads a PEM certificate chain and its private key.
pub(crate) fn load(
    files: &TlsFiles,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let path = || files.cert.clone();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|error| TlsError::ReadCertificate {
            path: path(),
            error,
        })?
        .collect::<Result<_, _>>()
        .map_err(|error| TlsError::ParseCertificate {
            path: path(),
            error,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: path() });
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|error| TlsError::ReadKey {
        path: files.key.clone(),
        error,
    })?;
    Ok((certs, key))
}

/// Builds a rustls server config (TLS 1.2 and 1.3, AWS-LC provider).
pub(crate) fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let (certs, key) = load(files)?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(TlsError::Versions)?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(TlsError::KeyMismatch)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
