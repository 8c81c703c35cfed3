//! Interop with real GnuTLS clients (the library qemu and libnbd use for
//! TLS-PSK) and with a rustls certificate client, through one test server
//! that sniffs the ClientHello and routes it: PSK offers to `PskAcceptor`,
//! the rest to rustls, both over `Rewind`.
//!
//! Two GnuTLS clients: `gnutls-cli` itself, and `gnutls_psk_client.py`,
//! which drives libgnutls through ctypes with PSK credentials only, as
//! qemu and libnbd do. The second is needed for TLS 1.2: gnutls-cli 3.7.9
//! (Debian 12) segfaults after every TLS 1.2 PSK handshake, in its session
//! printout (`gnutls_psk_server_get_username` called on a client).

#![allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use atrest_tlspsk::{
    ClientHelloSummary, Error, PskAcceptor, PskFile, client_hello_offers_psk, read_client_hello,
};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;
use tokio::time::timeout;

const IDENTITY: &str = "alice";
const KEY_HEX: &str = "a21996535c97475d151a4e8fd12c2cd4e2358b8f51a67e8f8775fe62c190b763";
const WRONG_KEY_HEX: &str = "beb4c933abce8ba48794f8aa51418e6d6759b434b65f1297eeb8f14a00f4501c";
/// qemu's priority for `tls-creds-psk` (and libnbd's): GnuTLS's default
/// plus the PSK key exchanges.
const QEMU_PRIORITY: &str = "NORMAL:+ECDHE-PSK:+DHE-PSK:+PSK";
const TLS12_ONLY: &str = ":-VERS-TLS1.3";
const LINE: &str = "hello over TLS-PSK";
const LIMIT: Duration = Duration::from_secs(30);
const EXT_PRE_SHARED_KEY: u16 = 41;
const EXT_KEY_SHARE: u16 = 51;

// ---- Prerequisites ----

fn have(program: &str, arg: &str) -> bool {
    let found = std::process::Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        println!("SKIPPED: {program} not found (apt-get install gnutls-bin python3)");
    }
    found
}

fn gnutls_cli() -> bool {
    have("gnutls-cli", "--version")
}

/// gnutls-cli's package brings libgnutls; the ctypes client needs python3.
fn gnutls_lib() -> bool {
    gnutls_cli() && have("python3", "--version")
}

// ---- The test server ----

/// What the test server saw on one connection.
#[derive(Debug)]
struct Seen {
    hello: ClientHelloSummary,
    /// The ClientHello's records, as sniffed.
    hello_bytes: Vec<u8>,
    /// The extension types of the ServerHello the server sent.
    server_hello_extensions: Vec<u16>,
    outcome: Result<Session, Error>,
}

/// A completed session: which path took it, who, and what was negotiated.
#[derive(Debug)]
struct Session {
    path: &'static str,
    identity: Option<String>,
    version: String,
    suite: String,
    /// The line the server read and echoed (empty if the peer went away).
    line: String,
}

fn psk_acceptor() -> PskAcceptor {
    let file = PskFile::parse(&format!("{IDENTITY}:{KEY_HEX}\n")).unwrap();
    PskAcceptor::new(Arc::new(file)).unwrap()
}

/// A rustls acceptor with a self-signed certificate for localhost, made
/// once, and the certificate for a client to trust.
fn rustls_acceptor() -> &'static (
    tokio_rustls::TlsAcceptor,
    rustls_pki_types::CertificateDer<'static>,
) {
    static ACCEPTOR: std::sync::OnceLock<(
        tokio_rustls::TlsAcceptor,
        rustls_pki_types::CertificateDer<'static>,
    )> = std::sync::OnceLock::new();
    ACCEPTOR.get_or_init(|| {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = cert.der().clone();
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key)
        .unwrap();
        (tokio_rustls::TlsAcceptor::from(Arc::new(config)), der)
    })
}

/// How the test server talks before and after TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// TLS from the first byte; echo one line.
    Echo,
    /// NBD's STARTTLS preamble first; close right after the handshake
    /// (the NBD server is not this crate's: only the handshake is tested).
    NbdStartTls,
}

/// Serves one connection: sniff, route, echo one line.
async fn serve_one(listener: TcpListener, mode: Mode) -> Seen {
    let (mut tcp, _) = listener.accept().await.unwrap();
    if mode == Mode::NbdStartTls {
        nbd_starttls(&mut tcp).await;
    }
    let written = Arc::new(Mutex::new(Vec::new()));
    let tap = Tap {
        inner: tcp,
        written: written.clone(),
    };
    let (hello, rewind) = read_client_hello(tap).await.unwrap();
    let hello_bytes = rewind.pending()[..hello.record_bytes].to_vec();
    let outcome = if hello.offers_psk() {
        match psk_acceptor().accept(rewind).await {
            Ok((mut tls, identity)) => {
                let ssl = tls.ssl();
                let version = ssl.version_str().to_owned();
                let suite = ssl.current_cipher().unwrap().name().to_owned();
                let line = match mode {
                    Mode::Echo => echo_line(&mut tls).await.unwrap_or_default(),
                    Mode::NbdStartTls => String::new(),
                };
                Ok(Session {
                    path: "psk",
                    identity: Some(identity),
                    version,
                    suite,
                    line,
                })
            }
            Err(e) => Err(e),
        }
    } else {
        let mut tls = rustls_acceptor().0.accept(rewind).await.unwrap();
        let (_, conn) = tls.get_ref();
        let version = format!("{:?}", conn.protocol_version().unwrap());
        let suite = format!("{:?}", conn.negotiated_cipher_suite().unwrap().suite());
        Ok(Session {
            path: "rustls",
            identity: None,
            version,
            suite,
            line: echo_line(&mut tls).await.unwrap_or_default(),
        })
    };
    let server_hello_extensions = server_hello_extensions(&written.lock().unwrap());
    Seen {
        hello,
        hello_bytes,
        server_hello_extensions,
        outcome,
    }
}

/// The server side of NBD fixed-newstyle negotiation up to an acknowledged
/// `NBD_OPT_STARTTLS` (NBD's `doc/proto.md`); other options are answered
/// `NBD_REP_ERR_TLS_REQD`.
async fn nbd_starttls(tcp: &mut TcpStream) {
    use tokio::io::AsyncReadExt;
    const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
    const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
    const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
    const OPT_STARTTLS: u32 = 5;
    const REP_ACK: u32 = 1;
    const REP_ERR_TLS_REQD: u32 = (1 << 31) + 5;
    let mut greeting = Vec::new();
    greeting.extend_from_slice(&NBDMAGIC.to_be_bytes());
    greeting.extend_from_slice(&IHAVEOPT.to_be_bytes());
    greeting.extend_from_slice(&3u16.to_be_bytes()); // FIXED_NEWSTYLE | NO_ZEROES
    tcp.write_all(&greeting).await.unwrap();
    let _client_flags = tcp.read_u32().await.unwrap();
    loop {
        assert_eq!(tcp.read_u64().await.unwrap(), IHAVEOPT);
        let option = tcp.read_u32().await.unwrap();
        let len = tcp.read_u32().await.unwrap();
        let mut data = vec![0; usize::try_from(len).unwrap().min(4096)];
        tcp.read_exact(&mut data).await.unwrap();
        let reply = if option == OPT_STARTTLS {
            REP_ACK
        } else {
            REP_ERR_TLS_REQD
        };
        let mut out = Vec::new();
        out.extend_from_slice(&REPLY_MAGIC.to_be_bytes());
        out.extend_from_slice(&option.to_be_bytes());
        out.extend_from_slice(&reply.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes());
        tcp.write_all(&out).await.unwrap();
        if option == OPT_STARTTLS {
            return;
        }
    }
}

/// Reads one line, writes it back, closes; returns the line.
async fn echo_line<S: AsyncRead + AsyncWrite + Unpin>(tls: &mut S) -> io::Result<String> {
    let mut reader = BufReader::new(tls);
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let tls = reader.into_inner();
    tls.write_all(line.as_bytes()).await?;
    tls.flush().await?;
    tls.shutdown().await?;
    Ok(line)
}

/// A TCP stream that keeps a copy of what the server writes, to read the
/// ServerHello back.
struct Tap {
    inner: TcpStream,
    written: Arc<Mutex<Vec<u8>>>,
}

impl AsyncRead for Tap {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tap {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            let mut written = this.written.lock().unwrap();
            if written.len() < 64 * 1024 {
                written.extend_from_slice(&buf[..n]);
            }
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The extension types of the ServerHello at the start of `bytes` (empty
/// if the server sent no ServerHello, e.g. only an alert).
fn server_hello_extensions(bytes: &[u8]) -> Vec<u16> {
    // Record header, then handshake header; the ServerHello fits the first
    // record for every server here.
    if bytes.len() < 9 || bytes[0] != 22 || bytes[5] != 2 {
        return Vec::new();
    }
    let body = &bytes[9..];
    let sid_len = usize::from(body[34]);
    let mut at = 35 + sid_len + 3; // session id, suite, compression
    let ext_end = at + 2 + usize::from(u16::from_be_bytes([body[at], body[at + 1]]));
    at += 2;
    let mut types = Vec::new();
    while at < ext_end {
        types.push(u16::from_be_bytes([body[at], body[at + 1]]));
        at += 4 + usize::from(u16::from_be_bytes([body[at + 2], body[at + 3]]));
    }
    types
}

// ---- Clients ----

/// What a client printed, and whether it got the echo back.
#[derive(Debug)]
struct Client {
    status: std::process::ExitStatus,
    echoed: bool,
    description: String,
    stdout: String,
    stderr: String,
}

impl Client {
    /// Killed by SIGSEGV: gnutls-cli 3.7.9 after a TLS 1.2 PSK handshake.
    fn segfaulted(&self) -> bool {
        use std::os::unix::process::ExitStatusExt;
        self.status.signal() == Some(11)
    }
}

/// Starts a test server, runs the client `command` builds for its port,
/// and returns what both saw.
async fn session(command: impl FnOnce(&str) -> Command) -> (Seen, Client) {
    session_with(Mode::Echo, command).await
}

async fn session_with(mode: Mode, command: impl FnOnce(&str) -> Command) -> (Seen, Client) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let server = tokio::spawn(serve_one(listener, mode));

    let mut child = command(&port)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // gnutls-cli sends its standard input once connected, and exits when
    // the server closes or the handshake fails; stdin stays open until
    // then so it does not quit before the echo.
    stdin
        .write_all(format!("{LINE}\n").as_bytes())
        .await
        .unwrap();
    let output = timeout(LIMIT, child.wait_with_output())
        .await
        .expect("client timed out")
        .unwrap();
    drop(stdin);
    let seen = timeout(LIMIT, server)
        .await
        .expect("server timed out")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let client = Client {
        status: output.status,
        echoed: stdout
            .lines()
            .any(|l| l == LINE || l.strip_prefix("echo: ") == Some(LINE)),
        description: stdout
            .lines()
            .find_map(|l| {
                l.strip_prefix("- Description: ")
                    .or_else(|| l.strip_prefix("description: "))
            })
            .unwrap_or_default()
            .to_owned(),
        stdout,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    (seen, client)
}

/// `gnutls-cli --pskusername IDENTITY --pskkey KEY --priority PRIORITY`.
async fn gnutls_cli_session(identity: &str, key: &str, priority: &str) -> (Seen, Client) {
    let args = [
        "--pskusername",
        identity,
        "--pskkey",
        key,
        "--priority",
        priority,
    ]
    .map(str::to_owned);
    session(|port| {
        let mut cmd = Command::new("gnutls-cli");
        cmd.args(args).args(["-p", port, "127.0.0.1"]);
        cmd
    })
    .await
}

/// The libgnutls client with PSK credentials only, as qemu and libnbd.
async fn gnutls_lib_session(identity: &str, key: &str, priority: &str) -> (Seen, Client) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/gnutls_psk_client.py");
    let args = [identity, key, priority, LINE].map(str::to_owned);
    session(|port| {
        let mut cmd = Command::new("python3");
        cmd.arg(script).arg(port).args(args);
        cmd
    })
    .await
}

/// A session the PSK path completed for IDENTITY; returns it.
fn psk_session<'a>(seen: &'a Seen, client: &Client) -> &'a Session {
    let Ok(session) = &seen.outcome else {
        panic!("server: {:?}; client: {client:#?}", seen.outcome);
    };
    assert_eq!(session.path, "psk");
    assert_eq!(session.identity.as_deref(), Some(IDENTITY));
    println!(
        "server: {} {}; GnuTLS: {}; ServerHello extensions {:?}",
        session.version, session.suite, client.description, seen.server_hello_extensions
    );
    session
}

/// Both sides exchanged the line.
fn assert_echoed(session: &Session, client: &Client) {
    assert!(
        client.echoed,
        "no echo: {session:#?} {client:#?}\nclient stderr:\n{}",
        client.stderr
    );
    assert_eq!(session.line, format!("{LINE}\n"));
}

/// TLS 1.3 with the PSK in psk_dhe_ke mode: the ServerHello carries both
/// pre_shared_key and key_share (psk_ke would have no key_share).
fn assert_tls13_psk_dhe(seen: &Seen, session: &Session) {
    assert_eq!(session.version, "TLSv1.3");
    assert_eq!(session.suite, "TLS_AES_128_GCM_SHA256");
    assert!(
        seen.server_hello_extensions.contains(&EXT_PRE_SHARED_KEY)
            && seen.server_hello_extensions.contains(&EXT_KEY_SHARE),
        "{:?}",
        seen.server_hello_extensions
    );
}

fn assert_no_key(err: &Error) {
    let text = format!("{err} {err:?}").to_lowercase();
    for key in [KEY_HEX, WRONG_KEY_HEX] {
        assert!(!text.contains(&key[..12]), "{text}");
    }
}

// ---- gnutls-cli ----

#[tokio::test]
async fn gnutls_cli_tls13_psk() {
    if !gnutls_cli() {
        return;
    }
    let (seen, client) = gnutls_cli_session(IDENTITY, KEY_HEX, QEMU_PRIORITY).await;
    // The sniffer saw GnuTLS's external PSK, offered in psk_dhe_ke mode,
    // though gnutls-cli lists certificate suites as well.
    assert!(seen.hello.offers_psk());
    assert!(seen.hello.offers_tls13 && seen.hello.offers_psk_dhe_ke);
    assert!(seen.hello.offers_certificate_suites);
    assert_eq!(
        seen.hello.external_psk_identities,
        [IDENTITY.as_bytes().to_vec()]
    );
    assert!(client_hello_offers_psk(&seen.hello_bytes).unwrap().unwrap());
    let session = psk_session(&seen, &client);
    assert_echoed(session, &client);
    assert_tls13_psk_dhe(&seen, session);
    assert!(
        client
            .stdout
            .contains("PSK authentication. Connected as 'alice'"),
        "{client:#?}"
    );
}

/// gnutls-cli in TLS 1.2 completes the handshake, then 3.7.9 crashes
/// printing it; a fixed gnutls-cli must get the echo.
#[tokio::test]
async fn gnutls_cli_tls12_ecdhe_psk() {
    if !gnutls_cli() {
        return;
    }
    let priority = format!("{QEMU_PRIORITY}{TLS12_ONLY}");
    let (seen, client) = gnutls_cli_session(IDENTITY, KEY_HEX, &priority).await;
    assert!(seen.hello.offers_psk_suites && !seen.hello.offers_tls13);
    assert!(seen.hello.offers_psk());
    let session = psk_session(&seen, &client);
    assert_eq!(session.version, "TLSv1.2");
    assert_eq!(session.suite, "ECDHE-PSK-CHACHA20-POLY1305");
    if client.segfaulted() {
        println!("gnutls-cli segfaulted after the TLS 1.2 handshake (GnuTLS 3.7 bug)");
    } else {
        assert_echoed(session, &client);
    }
}

#[tokio::test]
async fn gnutls_cli_wrong_key_fails() {
    if !gnutls_cli() {
        return;
    }
    for priority in [
        QEMU_PRIORITY.to_owned(),
        format!("{QEMU_PRIORITY}{TLS12_ONLY}"),
    ] {
        let (seen, client) = gnutls_cli_session(IDENTITY, WRONG_KEY_HEX, &priority).await;
        assert!(!client.echoed && !client.status.success(), "{client:#?}");
        let err = seen.outcome.unwrap_err();
        assert!(
            matches!(&err, Error::KeyMismatch { identity } if identity == IDENTITY),
            "{priority}: {err:?}"
        );
        assert_no_key(&err);
        println!("{priority}: {err}");
    }
}

#[tokio::test]
async fn gnutls_cli_unknown_identity_fails() {
    if !gnutls_cli() {
        return;
    }
    for priority in [
        QEMU_PRIORITY.to_owned(),
        format!("{QEMU_PRIORITY}{TLS12_ONLY}"),
    ] {
        let (seen, client) = gnutls_cli_session("mallory", KEY_HEX, &priority).await;
        assert!(!client.echoed && !client.status.success(), "{client:#?}");
        let err = seen.outcome.unwrap_err();
        assert!(
            matches!(&err, Error::UnknownIdentity { identity } if identity == "mallory"),
            "{priority}: {err:?}"
        );
        assert_no_key(&err);
        println!("{priority}: {err}");
    }
}

/// What the acceptor refuses even with the right key: no forward secrecy
/// (TLS 1.2 plain PSK, TLS 1.3 psk_ke), CBC, versions below TLS 1.2.
#[tokio::test]
async fn gnutls_cli_weak_offers_are_refused() {
    if !gnutls_cli() {
        return;
    }
    for priority in [
        "NORMAL:-VERS-TLS1.3:-KX-ALL:+PSK",
        "NORMAL:-VERS-ALL:+VERS-TLS1.3:-KX-ALL:+PSK",
        "NORMAL:-VERS-TLS1.3:-KX-ALL:+ECDHE-PSK:+DHE-PSK:-CIPHER-ALL:+AES-128-CBC:+AES-256-CBC:+MAC-ALL",
        "NORMAL:+ECDHE-PSK:+DHE-PSK:-VERS-ALL:+VERS-TLS1.1:+VERS-TLS1.0",
    ] {
        let (seen, client) = gnutls_cli_session(IDENTITY, KEY_HEX, priority).await;
        assert!(
            !client.echoed && !client.status.success(),
            "{priority}: {client:#?}"
        );
        let err = seen.outcome.unwrap_err();
        assert!(
            matches!(err, Error::Handshake { .. }),
            "{priority}: {err:?}"
        );
        println!("{priority}: {err}");
    }
}

/// gnutls-cli without a PSK is a certificate client: routed to rustls.
#[tokio::test]
async fn gnutls_cli_certificate_client_goes_to_rustls() {
    if !gnutls_cli() {
        return;
    }
    let (seen, client) = session(|port| {
        let mut cmd = Command::new("gnutls-cli");
        cmd.args(["--insecure", "-p", port, "127.0.0.1"]);
        cmd
    })
    .await;
    assert!(!seen.hello.offers_psk(), "{:?}", seen.hello);
    let session = seen.outcome.unwrap();
    assert_eq!(session.path, "rustls");
    assert_echoed(&session, &client);
}

// ---- libgnutls with PSK credentials only (qemu, libnbd) ----

#[tokio::test]
async fn gnutls_lib_tls13_psk() {
    if !gnutls_lib() {
        return;
    }
    let (seen, client) = gnutls_lib_session(IDENTITY, KEY_HEX, QEMU_PRIORITY).await;
    // With PSK credentials only, GnuTLS offers no certificate suite for
    // TLS 1.2, but TLS 1.3 suites are not bound to a key exchange.
    assert!(seen.hello.offers_psk() && seen.hello.offers_psk_suites);
    assert_eq!(
        seen.hello.external_psk_identities,
        [IDENTITY.as_bytes().to_vec()]
    );
    let session = psk_session(&seen, &client);
    assert_echoed(session, &client);
    assert_tls13_psk_dhe(&seen, session);
}

#[tokio::test]
async fn gnutls_lib_tls12_ecdhe_psk() {
    if !gnutls_lib() {
        return;
    }
    let priority = format!("{QEMU_PRIORITY}{TLS12_ONLY}");
    let (seen, client) = gnutls_lib_session(IDENTITY, KEY_HEX, &priority).await;
    let session = psk_session(&seen, &client);
    assert_echoed(session, &client);
    assert_eq!(session.version, "TLSv1.2");
    assert_eq!(session.suite, "ECDHE-PSK-CHACHA20-POLY1305");
}

/// A TLS 1.2 peer without ChaCha20 (old or FIPS GnuTLS) gets DHE-PSK with
/// AES-GCM: no ECDHE-PSK AES-GCM suite exists in GnuTLS or OpenSSL.
#[tokio::test]
async fn gnutls_lib_tls12_dhe_psk_without_chacha20() {
    if !gnutls_lib() {
        return;
    }
    let priority = format!("{QEMU_PRIORITY}{TLS12_ONLY}:-CHACHA20-POLY1305");
    let (seen, client) = gnutls_lib_session(IDENTITY, KEY_HEX, &priority).await;
    let session = psk_session(&seen, &client);
    assert_echoed(session, &client);
    assert_eq!(session.version, "TLSv1.2");
    assert_eq!(session.suite, "DHE-PSK-AES256-GCM-SHA384");
}

#[tokio::test]
async fn gnutls_lib_wrong_key_and_unknown_identity_fail() {
    if !gnutls_lib() {
        return;
    }
    for priority in [
        QEMU_PRIORITY.to_owned(),
        format!("{QEMU_PRIORITY}{TLS12_ONLY}"),
    ] {
        let (seen, client) = gnutls_lib_session(IDENTITY, WRONG_KEY_HEX, &priority).await;
        assert_eq!(client.status.code(), Some(2), "{client:#?}");
        let err = seen.outcome.unwrap_err();
        assert!(
            matches!(err, Error::KeyMismatch { .. }),
            "{priority}: {err:?}"
        );

        let (seen, client) = gnutls_lib_session("mallory", KEY_HEX, &priority).await;
        assert_eq!(client.status.code(), Some(2), "{client:#?}");
        let err = seen.outcome.unwrap_err();
        assert!(
            matches!(err, Error::UnknownIdentity { .. }),
            "{priority}: {err:?}"
        );
    }
}

// ---- rustls ----

/// A rustls client's ClientHello is not a PSK one, and after sniffing it
/// the rustls handshake proceeds over `Rewind`.
#[tokio::test]
async fn rustls_client_goes_to_rustls() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve_one(listener, Mode::Echo));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls_acceptor().1.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(format!("{LINE}\n").as_bytes()).await.unwrap();
    let mut echoed = String::new();
    BufReader::new(&mut tls)
        .read_line(&mut echoed)
        .await
        .unwrap();
    assert_eq!(echoed.trim_end(), LINE);

    let seen = timeout(LIMIT, server).await.unwrap().unwrap();
    assert!(!seen.hello.offers_psk());
    assert!(!client_hello_offers_psk(&seen.hello_bytes).unwrap().unwrap());
    assert!(seen.hello.offers_tls13 && seen.hello.external_psk_identities.is_empty());
    assert_eq!(seen.outcome.unwrap().path, "rustls");
}

// ---- qemu and libnbd themselves (handshake only) ----

/// A `keys.psk` in a fresh directory, as qemu's `tls-creds-psk dir=`
/// and libnbd's `tls-psk-file` expect.
fn psk_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("keys.psk"),
        format!("{IDENTITY}:{KEY_HEX}\n"),
    )
    .unwrap();
    dir
}

/// A TLS-PSK handshake by a real NBD client, behind NBD's STARTTLS.
fn assert_nbd_client_handshake(seen: &Seen, client: &Client) {
    println!("{:?}", seen.hello);
    assert!(seen.hello.offers_psk(), "{:?}", seen.hello);
    let session = psk_session(seen, client);
    assert_tls13_psk_dhe(seen, session);
}

#[tokio::test]
async fn qemu_img_tls_creds_psk_handshake() {
    if !gnutls_cli() || !have("qemu-img", "--version") {
        return;
    }
    let dir = psk_dir();
    let object = format!(
        "tls-creds-psk,id=tls0,endpoint=client,dir={},username={IDENTITY}",
        dir.path().display()
    );
    let (seen, client) = session_with(Mode::NbdStartTls, |port| {
        let mut cmd = Command::new("qemu-img");
        cmd.args(["info", "--object", &object, "--image-opts"]).arg(format!(
            "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={port},export=disk,tls-creds=tls0"
        ));
        cmd
    })
    .await;
    assert_nbd_client_handshake(&seen, &client);
}

#[tokio::test]
async fn libnbd_tls_psk_file_handshake() {
    if !gnutls_cli() || !have("nbdinfo", "--version") {
        return;
    }
    let dir = psk_dir();
    let keys = dir.path().join("keys.psk");
    let (seen, client) = session_with(Mode::NbdStartTls, |port| {
        let mut cmd = Command::new("nbdinfo");
        cmd.arg(format!(
            "nbds://{IDENTITY}@127.0.0.1:{port}/disk?tls-psk-file={}",
            keys.display()
        ));
        cmd
    })
    .await;
    assert_nbd_client_handshake(&seen, &client);
}
