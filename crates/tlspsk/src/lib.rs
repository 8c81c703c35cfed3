//! Server-side TLS authenticated by an external pre-shared key (PSK), the
//! way qemu (`tls-creds-psk`) and libnbd (`nbd_set_tls_psk_file`) use it,
//! and the routing decision in front of it: does a ClientHello ask for a
//! PSK session or for a certificate one?
//!
//! Owns: the PSK handshake ([`PskAcceptor`]), the identity-to-key map and
//! its `keys.psk` file format ([`PskLookup`], [`PskFile`]), the ClientHello
//! sniffer ([`client_hello_offers_psk`], [`read_client_hello`]) and the
//! stream that replays the sniffed bytes ([`Rewind`]). Knows nothing of NBD,
//! disks or where keys come from beyond the lookup trait.
//!
//! rustls has no external PSKs (rustls issue #174), so this crate runs the
//! handshake with the system OpenSSL through the `openssl` crate. What it
//! accepts, and why:
//!
//! * **TLS 1.3** with an external PSK in the `psk_dhe_ke` mode only (an
//!   (EC)DHE exchange on top of the key, so a stolen PSK does not decrypt
//!   recorded sessions): OpenSSL refuses `psk_ke` unless told otherwise and
//!   we never tell it. The suites are the SHA-256 ones,
//!   `TLS_AES_128_GCM_SHA256` and `TLS_CHACHA20_POLY1305_SHA256`, because
//!   an external PSK is bound to SHA-256 (GnuTLS's default, and what
//!   OpenSSL assumes for a key from the PSK callback): a SHA-384 suite
//!   would make OpenSSL drop the PSK.
//! * **TLS 1.2** with `ECDHE-PSK-CHACHA20-POLY1305` first, then
//!   `DHE-PSK-AES256-GCM-SHA384` and `DHE-PSK-AES128-GCM-SHA256` (RFC 7919
//!   ffdhe3072). Neither OpenSSL nor GnuTLS implements ECDHE-PSK with
//!   AES-GCM (RFC 8442), so DHE-PSK is the only forward-secret AEAD choice
//!   for a TLS 1.2 peer without ChaCha20 (GnuTLS before 3.4.8, or in FIPS
//!   mode). No plain `PSK-*` (no forward secrecy), no RSA-PSK, no CBC, no
//!   NULL.
//! * Nothing below TLS 1.2, no session tickets or session cache (a resumed
//!   session would skip the identity check), no renegotiation, no
//!   certificate: a handshake that does not prove a PSK cannot complete.
//!
//! Routing a connection (run it under a timeout: a silent client keeps
//! both steps waiting):
//!
//! ```no_run
//! # async fn serve(
//! #     tcp: tokio::net::TcpStream,
//! #     psk: atrest_tlspsk::PskAcceptor,
//! # ) -> Result<(), atrest_tlspsk::Error> {
//! let (hello, stream) = atrest_tlspsk::read_client_hello(tcp).await?;
//! if hello.offers_psk() {
//!     let (tls, identity) = psk.accept(stream).await?;
//!     // Serve `tls` to `identity`.
//! } else {
//!     // Hand `stream` (which replays the ClientHello) to rustls.
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Interop is tested against GnuTLS 3.7.9 (`gnutls-cli`, and libgnutls with
//! PSK credentials only), qemu-img 10.0 `tls-creds-psk` and libnbd 1.14
//! `tls-psk-file` (`tests/interop.rs`). Limits: an external PSK bound to
//! SHA-384 (which GnuTLS 3.8.10+ can be asked for) is not accepted, since
//! OpenSSL's PSK callback binds keys to SHA-256; identities are at most
//! 256 bytes (OpenSSL's `PSK_MAX_IDENTITY_LEN`).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod acceptor;
mod hello;
mod keys;
mod rewind;

pub use acceptor::{PskAcceptor, PskStream};
pub use hello::{
    ClientHelloSummary, MAX_CLIENT_HELLO_LEN, client_hello_offers_psk, parse_client_hello,
};
pub use keys::{MAX_KEY_LEN, MIN_KEY_LEN, PskFile, PskLookup};
pub use rewind::{Rewind, read_client_hello};

/// Why a PSK handshake, a ClientHello or a PSK file was refused.
///
/// No variant ever holds key bytes; identities are the peer's (or the
/// file's) and are printed escaped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The linked OpenSSL refused the server configuration (for example a
    /// build without PSK or without the ciphers above).
    #[error("TLS-PSK configuration refused by OpenSSL: {0}")]
    Config(#[source] openssl::error::ErrorStack),
    /// The client offered only identities the lookup does not know.
    #[error("unknown PSK identity {identity:?}")]
    UnknownIdentity {
        /// The (last) identity the client offered, lossily decoded as UTF-8.
        identity: String,
    },
    /// The identity is known but the client did not prove the same key.
    #[error("the client's key for PSK identity {identity:?} does not match")]
    KeyMismatch {
        /// The identity whose key did not match.
        identity: String,
    },
    /// The lookup returned a key of a length outside
    /// [`MIN_KEY_LEN`]`..=`[`MAX_KEY_LEN`]; the handshake was refused.
    #[error("the key configured for PSK identity {identity:?} is {len} bytes, not 16..=64")]
    BadKeyLength {
        /// The identity whose key is unusable.
        identity: String,
        /// The key's length in bytes.
        len: usize,
    },
    /// The handshake failed for another reason: no shared version, suite or
    /// group, no PSK offered at all, a malformed message, or an alert.
    #[error("TLS-PSK handshake failed: {reason}")]
    Handshake {
        /// The identity whose key was accepted before the failure, if any.
        identity: Option<String>,
        /// OpenSSL's description of the failure (never holds key bytes).
        reason: String,
    },
    /// The handshake completed without a PSK proof. Cannot happen with the
    /// configuration this crate builds; checked all the same.
    #[error("TLS handshake completed without a pre-shared key")]
    NotPsk,
    /// The transport failed (including the peer closing mid-handshake), or
    /// a PSK file could not be read.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The first bytes of the connection are not a well-formed TLS
    /// ClientHello.
    #[error("malformed ClientHello: {0}")]
    MalformedClientHello(&'static str),
    /// A line of a PSK file is not `identity:hexkey`.
    #[error("PSK file line {line}: {reason}")]
    PskFile {
        /// The 1-based line number.
        line: usize,
        /// What is wrong with it (never the key text).
        reason: &'static str,
    },
}
