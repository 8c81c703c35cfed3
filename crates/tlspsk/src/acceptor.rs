//! The server side of a PSK handshake, on OpenSSL.

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use openssl::dh::Dh;
use openssl::error::ErrorStack;
use openssl::ex_data::Index;
use openssl::ssl::{
    self, Ssl, SslContext, SslMethod, SslOptions, SslRef, SslSessionCacheMode, SslVerifyMode,
    SslVersion,
};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::Error;
use crate::keys::{MAX_KEY_LEN, MIN_KEY_LEN, PskLookup};

/// A TLS session on `S` whose peer proved a pre-shared key. Read and write
/// it as any tokio stream; [`tokio_openssl::SslStream::ssl`] tells the
/// version and suite.
pub type PskStream<S> = tokio_openssl::SslStream<S>;

/// TLS 1.2 suites, best first (see the crate doc for the choice).
const TLS12_CIPHER_LIST: &str =
    "ECDHE-PSK-CHACHA20-POLY1305:DHE-PSK-AES256-GCM-SHA384:DHE-PSK-AES128-GCM-SHA256";
/// TLS 1.3 suites: SHA-256 only, the hash an external PSK is bound to.
const TLS13_CIPHERSUITES: &str = "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256";
/// Key-exchange groups for TLS 1.3 and ECDHE-PSK.
const GROUPS: &str = "X25519:P-256:P-384";
/// RFC 7919 ffdhe3072, for DHE-PSK (`openssl genpkey -genparam -algorithm
/// DH -pkeyopt group:ffdhe3072`).
const FFDHE3072_PEM: &[u8] = b"-----BEGIN DH PARAMETERS-----
MIIBiAKCAYEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEfz9zeNVs7ZRkDW7w09N75nAI4YbRvydbmyQd62R0mkff3
7lmMsPrBhtkcrv4TCYUTknC0EwyTvEN5RPT9RFLi103TZPLiHnH1S/9croKrnJ32
nuhtK8UiNjoNq8Uhl5sN6todv5pC1cRITgq80Gv6U93vPBsg7j/VnXwl5B0rZsYu
N///////////AgEC
-----END DH PARAMETERS-----
";

/// What the PSK callback saw during one handshake, kept on the `Ssl` so
/// the failure can be told apart afterwards. Identities only, never keys.
#[derive(Default)]
struct Offered {
    /// The last identity whose key was handed to OpenSSL. OpenSSL stops at
    /// the first identity it can use, so after a completed handshake this
    /// is the one the peer proved.
    accepted: Option<String>,
    /// The last identity the lookup did not know.
    unknown: Option<String>,
    /// The last identity whose configured key had an unusable length.
    bad_length: Option<(String, usize)>,
}

/// Accepts TLS sessions authenticated by an external pre-shared key.
///
/// Cheap to clone (the OpenSSL context is reference-counted). Run
/// [`PskAcceptor::accept`] under a timeout: a silent peer keeps it waiting.
#[derive(Clone)]
pub struct PskAcceptor {
    ctx: SslContext,
    offered: Index<Ssl, Offered>,
}

impl fmt::Debug for PskAcceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PskAcceptor")
            .field("tls13_suites", &TLS13_CIPHERSUITES)
            .field("tls12_suites", &TLS12_CIPHER_LIST)
            .finish_non_exhaustive()
    }
}

impl PskAcceptor {
    /// An acceptor that asks `lookup` for the key of each identity a client
    /// offers.
    pub fn new(lookup: Arc<dyn PskLookup>) -> Result<Self, Error> {
        let offered = offered_index().map_err(Error::Config)?;
        let mut builder = SslContext::builder(SslMethod::tls_server()).map_err(Error::Config)?;
        configure(&mut builder).map_err(Error::Config)?;
        builder.set_psk_server_callback(move |ssl, identity, out| {
            Ok(find_key(&*lookup, offered, ssl, identity, out))
        });
        Ok(Self {
            ctx: builder.build(),
            offered,
        })
    }

    /// Runs the server handshake on `stream` (which may be a [`crate::Rewind`]
    /// replaying a sniffed ClientHello) and returns the TLS stream and the
    /// identity whose key the client proved.
    pub async fn accept<S>(&self, stream: S) -> Result<(PskStream<S>, String), Error>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let mut ssl = Ssl::new(&self.ctx).map_err(Error::Config)?;
        ssl.set_ex_data(self.offered, Offered::default());
        let mut tls = PskStream::new(ssl, stream).map_err(Error::Config)?;
        let result = Pin::new(&mut tls).accept().await;
        let offered = tls.ssl().ex_data(self.offered);
        match result {
            Ok(()) => {
                let identity = offered
                    .and_then(|o| o.accepted.clone())
                    .ok_or(Error::NotPsk)?;
                // With no certificate configured a completed handshake has
                // used the PSK; check rather than trust the configuration.
                // In TLS 1.3 an external PSK handshake is a "resumption".
                let ssl = tls.ssl();
                let tls13 = ssl.version2() == Some(SslVersion::TLS1_3);
                let psk_suite = ssl
                    .current_cipher()
                    .is_some_and(|c| c.name().contains("PSK"));
                if (tls13 && !ssl.session_reused()) || (!tls13 && !psk_suite) {
                    return Err(Error::NotPsk);
                }
                Ok((tls, identity))
            }
            Err(error) => Err(classify(error, offered)),
        }
    }
}

fn configure(builder: &mut ssl::SslContextBuilder) -> Result<(), ErrorStack> {
    builder.set_min_proto_version(Some(SslVersion::TLS1_2))?;
    builder.set_cipher_list(TLS12_CIPHER_LIST)?;
    builder.set_ciphersuites(TLS13_CIPHERSUITES)?;
    builder.set_groups_list(GROUPS)?;
    let dh = Dh::params_from_pem(FFDHE3072_PEM)?;
    builder.set_tmp_dh(&dh)?;
    // No tickets and no cache: a resumed session would carry no identity
    // through the callback. OpenSSL's default (no SSL_OP_ALLOW_NO_DHE_KEX)
    // already refuses the psk_ke mode, so TLS 1.3 is always psk_dhe_ke.
    builder.set_options(
        SslOptions::CIPHER_SERVER_PREFERENCE
            | SslOptions::NO_TICKET
            | SslOptions::NO_RENEGOTIATION
            | SslOptions::NO_COMPRESSION,
    );
    builder.set_num_tickets(0)?;
    builder.set_session_cache_mode(SslSessionCacheMode::OFF);
    builder.set_verify(SslVerifyMode::NONE);
    Ok(())
}

/// One ex-data slot for all acceptors: OpenSSL never frees slots.
fn offered_index() -> Result<Index<Ssl, Offered>, ErrorStack> {
    static INDEX: OnceLock<Index<Ssl, Offered>> = OnceLock::new();
    if let Some(index) = INDEX.get() {
        return Ok(*index);
    }
    let index = Ssl::new_ex_index()?;
    Ok(*INDEX.get_or_init(|| index))
}

/// The PSK callback: writes the key for `identity` into OpenSSL's buffer
/// (which OpenSSL cleanses) and returns its length, or 0 to refuse.
fn find_key(
    lookup: &dyn PskLookup,
    index: Index<Ssl, Offered>,
    ssl: &mut SslRef,
    identity: Option<&[u8]>,
    out: &mut [u8],
) -> usize {
    let raw = identity.unwrap_or_default();
    let name = String::from_utf8_lossy(raw).into_owned();
    // A non-UTF-8 identity cannot be one of ours: never look up its lossy
    // decoding, which could collide with a configured name.
    let key = std::str::from_utf8(raw).ok().and_then(|id| lookup.key(id));
    let Some(offered) = ssl.ex_data_mut(index) else {
        return 0;
    };
    let Some(key) = key else {
        offered.unknown = Some(name);
        return 0;
    };
    let len = key.len();
    let slot = (MIN_KEY_LEN..=MAX_KEY_LEN)
        .contains(&len)
        .then(|| out.get_mut(..len))
        .flatten();
    let Some(slot) = slot else {
        offered.bad_length = Some((name, len));
        return 0;
    };
    slot.copy_from_slice(&key);
    offered.accepted = Some(name);
    len
}

/// OpenSSL's reasons for a handshake that failed because the two sides'
/// keys differ: a TLS 1.3 binder, or a TLS 1.2 Finished message that does
/// not decrypt or verify.
const KEY_MISMATCH_REASONS: &[&str] = &[
    "binder does not verify",
    "bad record mac",
    "decryption failed or bad record mac",
    "digest check failed",
];

fn classify(error: ssl::Error, offered: Option<&Offered>) -> Error {
    let reasons: Vec<&str> = error
        .ssl_error()
        .map(|stack| stack.errors().iter().filter_map(|e| e.reason()).collect())
        .unwrap_or_default();
    let accepted = offered.and_then(|o| o.accepted.clone());
    if let Some((identity, len)) = offered.and_then(|o| o.bad_length.clone()) {
        return Error::BadKeyLength { identity, len };
    }
    if let Some(identity) = &accepted
        && reasons.iter().any(|r| KEY_MISMATCH_REASONS.contains(r))
    {
        return Error::KeyMismatch {
            identity: identity.clone(),
        };
    }
    if accepted.is_none()
        && let Some(identity) = offered.and_then(|o| o.unknown.clone())
    {
        return Error::UnknownIdentity { identity };
    }
    match error.into_io_error() {
        Ok(io) => Error::Io(io),
        Err(error) => Error::Handshake {
            identity: accepted,
            reason: if reasons.is_empty() {
                error.to_string()
            } else {
                reasons.join("; ")
            },
        },
    }
}

#[cfg(test)]
mod tests {
    //! In-process handshakes against an OpenSSL PSK client; the GnuTLS
    //! interop lives in `tests/interop.rs`.

    use std::sync::Mutex;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use zeroize::Zeroizing;

    use super::*;

    const KEY: [u8; 32] = [0x5a; 32];

    /// One identity with a key of any length, remembering what was asked.
    struct Fixed {
        identity: &'static str,
        key: Vec<u8>,
        asked: Mutex<Vec<String>>,
    }

    impl PskLookup for Fixed {
        fn key(&self, identity: &str) -> Option<Zeroizing<Vec<u8>>> {
            self.asked.lock().unwrap().push(identity.to_owned());
            (identity == self.identity).then(|| Zeroizing::new(self.key.clone()))
        }
    }

    fn lookup(key: &[u8]) -> Arc<Fixed> {
        Arc::new(Fixed {
            identity: "alice",
            key: key.to_vec(),
            asked: Mutex::new(Vec::new()),
        })
    }

    /// An OpenSSL client offering `identity` with `key`, over an in-memory
    /// pipe; `psk: false` makes it a certificate client.
    async fn handshake(
        lookup: Arc<Fixed>,
        identity: &'static [u8],
        key: &'static [u8],
        version: SslVersion,
        psk: bool,
    ) -> Result<(String, String, String), Error> {
        let (server_io, client_io) = tokio::io::duplex(64 * 1024);
        let acceptor = PskAcceptor::new(lookup).unwrap();
        let mut client = SslContext::builder(SslMethod::tls_client()).unwrap();
        client.set_min_proto_version(Some(version)).unwrap();
        client.set_max_proto_version(Some(version)).unwrap();
        client.set_verify(SslVerifyMode::NONE);
        if psk {
            client.set_psk_client_callback(move |_, _hint, id_out, psk_out| {
                id_out[..identity.len()].copy_from_slice(identity);
                id_out[identity.len()] = 0;
                psk_out[..key.len()].copy_from_slice(key);
                Ok(key.len())
            });
        }
        let ssl = Ssl::new(&client.build()).unwrap();
        let mut client = tokio_openssl::SslStream::new(ssl, client_io).unwrap();
        let client = async move {
            Pin::new(&mut client).connect().await.ok()?;
            client.write_all(b"ping").await.ok()?;
            let mut reply = [0; 4];
            client.read_exact(&mut reply).await.ok()?;
            Some(reply)
        };
        let server = async {
            let (mut tls, identity) = acceptor.accept(server_io).await?;
            let mut ping = [0; 4];
            tls.read_exact(&mut ping).await?;
            tls.write_all(b"pong").await?;
            assert_eq!(&ping, b"ping");
            let ssl = tls.ssl();
            let suite = ssl.current_cipher().map(|c| c.name()).unwrap_or_default();
            Ok((identity, ssl.version_str().to_owned(), suite.to_owned()))
        };
        let (client, server) = tokio::join!(client, server);
        if server.is_ok() {
            assert_eq!(client, Some(*b"pong"));
        } else {
            assert_eq!(client, None);
        }
        server
    }

    #[tokio::test]
    async fn tls13_and_tls12_sessions() {
        let (id, version, suite) =
            handshake(lookup(&KEY), b"alice", &KEY, SslVersion::TLS1_3, true)
                .await
                .unwrap();
        assert_eq!((id.as_str(), version.as_str()), ("alice", "TLSv1.3"));
        assert_eq!(suite, "TLS_AES_128_GCM_SHA256");
        let (id, version, suite) =
            handshake(lookup(&KEY), b"alice", &KEY, SslVersion::TLS1_2, true)
                .await
                .unwrap();
        assert_eq!((id.as_str(), version.as_str()), ("alice", "TLSv1.2"));
        assert_eq!(suite, "ECDHE-PSK-CHACHA20-POLY1305");
    }

    #[tokio::test]
    async fn wrong_key_and_unknown_identity() {
        for version in [SslVersion::TLS1_3, SslVersion::TLS1_2] {
            let err = handshake(lookup(&KEY), b"alice", &[0xa5; 32], version, true)
                .await
                .unwrap_err();
            assert!(
                matches!(&err, Error::KeyMismatch { identity } if identity == "alice"),
                "{err:?}"
            );
            let err = handshake(lookup(&KEY), b"bob", &KEY, version, true)
                .await
                .unwrap_err();
            assert!(
                matches!(&err, Error::UnknownIdentity { identity } if identity == "bob"),
                "{err:?}"
            );
        }
    }

    #[tokio::test]
    async fn unusable_configured_key_is_refused() {
        for len in [8, 15, 65, 300] {
            let key = vec![1; len];
            let err = handshake(lookup(&key), b"alice", &KEY, SslVersion::TLS1_3, true)
                .await
                .unwrap_err();
            assert!(
                matches!(err, Error::BadKeyLength { len: l, .. } if l == len),
                "{err:?}"
            );
        }
    }

    #[tokio::test]
    async fn non_utf8_identity_is_never_looked_up() {
        let lookup = lookup(&KEY);
        let err = handshake(lookup.clone(), b"al\xffice", &KEY, SslVersion::TLS1_3, true)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::UnknownIdentity { .. }), "{err:?}");
        assert!(lookup.asked.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn certificate_client_is_refused() {
        for version in [SslVersion::TLS1_3, SslVersion::TLS1_2] {
            let err = handshake(lookup(&KEY), b"", &[], version, false)
                .await
                .unwrap_err();
            assert!(
                matches!(err, Error::Handshake { identity: None, .. }),
                "{err:?}"
            );
        }
    }

    #[test]
    fn debug_shows_no_secret() {
        let acceptor = PskAcceptor::new(lookup(&KEY)).unwrap();
        let debug = format!("{acceptor:?}");
        assert!(debug.contains("PskAcceptor"), "{debug}");
        assert!(!debug.contains("5a") && !debug.contains("90"), "{debug}");
    }
}
