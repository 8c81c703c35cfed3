//! A KMIP server over mutual TLS (KMIP 1.2 requests, TTLV on TCP).
//!
//! The remote key is a KMIP AES-256 symmetric key named by its Unique
//! Identifier. For each wrap or unwrap, atrest opens a TLS connection (its
//! client certificate authenticates it), asks Get Attributes for the key's
//! State, Object Type, Cryptographic Algorithm and Cryptographic Length,
//! refuses the key unless it is an Active AES-256 symmetric key, and Gets
//! its key material. The 32 bytes live only in memory, in a zeroizing
//! [`Aes256Key`], for the one operation: nothing is cached, so a key revoked
//! or destroyed at the server is refused on the next call. The data key is
//! sealed locally with AES-256-GCM, with the Unique Identifier bound in the
//! additional data:
//!
//! ```text
//! wrapped = 0x01 || nonce (12) || AES-256-GCM(kmip key, data key) || tag (16)
//! aad     = "atrest-kmip-wrap-v1" || 0x00 || unique identifier
//! ```
//!
//! (Get of a key held in memory is what every KMIP server offers; Encrypt
//! and Decrypt are optional and PyKMIP's are limited.)
//!
//! Failures: a KMIP "Item Not Found" is [`ProviderError::NotFound`];
//! "Permission Denied", "Authentication Not Successful", a key that is not
//! Active, or a server refusing atrest's client certificate in the TLS
//! handshake is [`ProviderError::Refused`]; no connection, a timeout or a
//! broken connection is [`ProviderError::Unavailable`] (retried with
//! backoff); a server certificate atrest does not trust is a
//! [`ProviderError::Config`]; any other failure is a
//! [`ProviderError::Protocol`] carrying the server's Result Message.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use atrest_crypto::{Aes256Key, SecretBytes, aead};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls_pki_types::pem::PemObject;

use crate::config::{KmipConfig, Transport};
use crate::ttlv::{Item, Value};
use crate::{KeyProvider, ProviderError, RemoteKey, check_data_key};

/// KMIP's tags (KMIP 1.2, section 9.1.3.1).
mod tag {
    pub const ATTRIBUTE: u32 = 0x42_0008;
    pub const ATTRIBUTE_NAME: u32 = 0x42_000A;
    pub const ATTRIBUTE_VALUE: u32 = 0x42_000B;
    pub const BATCH_COUNT: u32 = 0x42_000D;
    pub const BATCH_ITEM: u32 = 0x42_000F;
    pub const KEY: u32 = 0x42_003F;
    pub const KEY_BLOCK: u32 = 0x42_0040;
    pub const KEY_FORMAT_TYPE: u32 = 0x42_0042;
    pub const KEY_MATERIAL: u32 = 0x42_0043;
    pub const KEY_VALUE: u32 = 0x42_0045;
    pub const KEY_WRAPPING_DATA: u32 = 0x42_0046;
    pub const OBJECT_TYPE: u32 = 0x42_0057;
    pub const OPERATION: u32 = 0x42_005C;
    pub const PROTOCOL_VERSION: u32 = 0x42_0069;
    pub const PROTOCOL_VERSION_MAJOR: u32 = 0x42_006A;
    pub const PROTOCOL_VERSION_MINOR: u32 = 0x42_006B;
    pub const REQUEST_HEADER: u32 = 0x42_0077;
    pub const REQUEST_MESSAGE: u32 = 0x42_0078;
    pub const REQUEST_PAYLOAD: u32 = 0x42_0079;
    pub const RESPONSE_HEADER: u32 = 0x42_007A;
    pub const RESPONSE_MESSAGE: u32 = 0x42_007B;
    pub const RESPONSE_PAYLOAD: u32 = 0x42_007C;
    pub const RESULT_MESSAGE: u32 = 0x42_007D;
    pub const RESULT_REASON: u32 = 0x42_007E;
    pub const RESULT_STATUS: u32 = 0x42_007F;
    pub const SYMMETRIC_KEY: u32 = 0x42_008F;
    pub const UNIQUE_IDENTIFIER: u32 = 0x42_0094;
}

/// Operations.
mod op {
    pub const GET: u32 = 0x0A;
    pub const GET_ATTRIBUTES: u32 = 0x0B;
}

const OBJECT_SYMMETRIC_KEY: u32 = 2;
const ALGORITHM_AES: u32 = 3;
const STATE_ACTIVE: u32 = 2;
const FORMAT_RAW: u32 = 1;
const FORMAT_TRANSPARENT_SYMMETRIC: u32 = 7;

const DEFAULT_PORT: u16 = 5696;
const FORMAT_V1: u8 = 1;
const AAD_LABEL: &[u8] = b"atrest-kmip-wrap-v1";
const MAX_ID: usize = 256;

/// A KMIP server.
pub struct Kmip {
    address: String,
    server_name: ServerName<'static>,
    tls: Arc<rustls::ClientConfig>,
    transport: Transport,
}

impl core::fmt::Debug for Kmip {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Kmip")
            .field("address", &self.address)
            .field("server_name", &self.server_name)
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
}

/// The host part of `host:port`, `[v6]:port`, `host` or `[v6]`.
fn split_address(address: &str) -> Result<(String, u16), ProviderError> {
    let bad = || ProviderError::Config(format!("KMIP address {address:?} is not host:port"));
    let (host, port) = if let Some(rest) = address.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(bad)?;
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':').ok_or_else(bad)?)),
        }
    } else {
        match address.split_once(':') {
            Some((h, p)) if !p.contains(':') => (h, Some(p)),
            Some(_) => return Err(bad()),
            None => (address, None),
        }
    };
    if host.is_empty() {
        return Err(bad());
    }
    let port = match port {
        Some(p) => p.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(bad)?,
        None => DEFAULT_PORT,
    };
    Ok((host.to_owned(), port))
}

impl Kmip {
    /// A client for the server `c` describes. Reads the CA, the client
    /// certificate and its key now: a bad file is a [`ProviderError::Config`].
    pub fn new(c: &KmipConfig) -> Result<Self, ProviderError> {
        let (host, port) = split_address(&c.address)?;
        let name = c.server_name.clone().unwrap_or_else(|| host.clone());
        let server_name = ServerName::try_from(name.clone())
            .map_err(|_| ProviderError::Config(format!("{name:?} is not a valid server name")))?;
        let roots = crate::http::root_store(Some(&c.ca_file))?;
        let bad = |path: &std::path::Path, e: String| {
            ProviderError::Config(format!("{}: {e}", path.display()))
        };
        let chain = CertificateDer::pem_file_iter(&c.client_cert)
            .map_err(|e| bad(&c.client_cert, e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(&c.client_cert, e.to_string()))?;
        if chain.is_empty() {
            return Err(bad(&c.client_cert, "no certificate in the file".into()));
        }
        // Never print the key file's content, only why it failed.
        let key = PrivateKeyDer::from_pem_file(&c.client_key)
            .map_err(|e| bad(&c.client_key, format!("no usable private key ({e})")))?;
        let tls = rustls::ClientConfig::builder_with_provider(crate::http::crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| ProviderError::Config(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| {
                ProviderError::Config(format!(
                    "client certificate {} and key {}: {e}",
                    c.client_cert.display(),
                    c.client_key.display()
                ))
            })?;
        let address = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Ok(Self {
            address,
            server_name,
            tls: Arc::new(tls),
            transport: c.transport(),
        })
    }

    /// Runs `f` on a fresh connection, retrying transient failures (no
    /// connection, timeouts, a broken connection) with backoff.
    fn call<T>(
        &self,
        f: impl Fn(&mut Session) -> Result<T, ProviderError>,
    ) -> Result<T, ProviderError> {
        let mut attempt = 0u32;
        loop {
            let result = self.connect().and_then(|mut s| {
                let out = f(&mut s);
                s.close();
                out
            });
            match result {
                Err(e) if e.is_transient() && attempt < self.transport.retries => {
                    tracing::debug!(
                        address = %self.address,
                        attempt,
                        error = %e,
                        "KMIP call failed; retrying"
                    );
                    std::thread::sleep(crate::http::backoff(attempt));
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    fn connect(&self) -> Result<Session, ProviderError> {
        let timeout = Duration::from_millis(self.transport.timeout_ms.max(1));
        let deadline = Instant::now() + timeout;
        let unavailable = |what: &str, e: &dyn std::fmt::Display| {
            ProviderError::Unavailable(format!("KMIP server {}: {what}: {e}", self.address))
        };
        let addrs: Vec<SocketAddr> = self
            .address
            .to_socket_addrs()
            .map_err(|e| unavailable("resolving", &e))?
            .collect();
        let mut last: Option<std::io::Error> = None;
        let mut tcp = None;
        for addr in addrs {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match TcpStream::connect_timeout(&addr, left) {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let Some(tcp) = tcp else {
            return Err(match last {
                Some(e) => unavailable("connecting", &e),
                None => unavailable("connecting", &"no address answered in time"),
            });
        };
        let _ = tcp.set_nodelay(true);
        let conn = rustls::ClientConnection::new(self.tls.clone(), self.server_name.clone())
            .map_err(|e| ProviderError::Config(format!("TLS: {e}")))?;
        let mut session = Session {
            stream: rustls::StreamOwned::new(conn, tcp),
            deadline,
            timeout,
            address: self.address.clone(),
        };
        session.handshake()?;
        Ok(session)
    }

    /// The key's State, Object Type, algorithm and length.
    fn attributes(s: &mut Session, key: &str) -> Result<Attributes, ProviderError> {
        let mut payload = vec![Item::text(tag::UNIQUE_IDENTIFIER, key)];
        for name in [
            "State",
            "Object Type",
            "Cryptographic Algorithm",
            "Cryptographic Length",
        ] {
            payload.push(Item::text(tag::ATTRIBUTE_NAME, name));
        }
        let resp = s.request(op::GET_ATTRIBUTES, payload, key)?;
        check_uid(&resp, key)?;
        let mut a = Attributes::default();
        for attr in resp.children(tag::ATTRIBUTE) {
            let name = attr
                .need(tag::ATTRIBUTE_NAME, "Attribute Name")?
                .as_text()?;
            let value = attr.need(tag::ATTRIBUTE_VALUE, "Attribute Value")?;
            match name {
                "State" => a.state = Some(value.as_enumeration()?),
                "Object Type" => a.object_type = Some(value.as_enumeration()?),
                "Cryptographic Algorithm" => a.algorithm = Some(value.as_enumeration()?),
                "Cryptographic Length" => a.length = Some(value.as_integer()?),
                _ => {}
            }
        }
        if a.state.is_none() {
            return Err(ProviderError::Protocol(format!(
                "the KMIP server gave no State for key {key}"
            )));
        }
        Ok(a)
    }

    /// Checks that `key` is an Active AES-256 symmetric key and fetches its
    /// material.
    fn usable_key(&self, key: &str) -> Result<Aes256Key, ProviderError> {
        valid_id(key)?;
        self.call(|s| {
            let a = Self::attributes(s, key)?;
            a.require_usable(key)?;
            fetch_key(s, key)
        })
    }
}

/// The attributes atrest asks for.
#[derive(Debug, Default, Clone, Copy)]
struct Attributes {
    state: Option<u32>,
    object_type: Option<u32>,
    algorithm: Option<u32>,
    length: Option<i32>,
}

impl Attributes {
    fn state_name(&self) -> String {
        self.state.map_or_else(|| "Unknown".into(), state_name)
    }

    fn require_usable(&self, key: &str) -> Result<(), ProviderError> {
        if self.state != Some(STATE_ACTIVE) {
            return Err(ProviderError::Refused(format!(
                "KMIP key {key} is {}",
                self.state_name()
            )));
        }
        if self.object_type.is_some_and(|t| t != OBJECT_SYMMETRIC_KEY)
            || self.algorithm != Some(ALGORITHM_AES)
            || self.length != Some(256)
        {
            return Err(ProviderError::Config(format!(
                "KMIP key {key} is {} {} of {} bits; atrest needs an AES-256 symmetric key",
                self.object_type
                    .map_or_else(|| "an object".into(), object_type_name),
                self.algorithm
                    .map_or_else(|| "with no algorithm".into(), algorithm_name),
                self.length
                    .map_or_else(|| "unknown".into(), |l| l.to_string()),
            )));
        }
        Ok(())
    }
}

fn state_name(s: u32) -> String {
    match s {
        1 => "PreActive".into(),
        2 => "Active".into(),
        3 => "Deactivated".into(),
        4 => "Compromised".into(),
        5 => "Destroyed".into(),
        6 => "DestroyedCompromised".into(),
        other => format!("State({other})"),
    }
}

fn object_type_name(t: u32) -> String {
    match t {
        1 => "Certificate".into(),
        2 => "SymmetricKey".into(),
        3 => "PublicKey".into(),
        4 => "PrivateKey".into(),
        5 => "SplitKey".into(),
        6 => "Template".into(),
        7 => "SecretData".into(),
        8 => "OpaqueObject".into(),
        9 => "PGPKey".into(),
        other => format!("ObjectType({other})"),
    }
}

fn algorithm_name(a: u32) -> String {
    match a {
        1 => "DES".into(),
        2 => "3DES".into(),
        3 => "AES".into(),
        4 => "RSA".into(),
        5 => "DSA".into(),
        6 => "ECDSA".into(),
        7..=12 => "HMAC".into(),
        other => format!("Algorithm({other})"),
    }
}

fn result_reason_name(r: u32) -> String {
    match r {
        0x01 => "Item Not Found".into(),
        0x02 => "Response Too Large".into(),
        0x03 => "Authentication Not Successful".into(),
        0x04 => "Invalid Message".into(),
        0x05 => "Operation Not Supported".into(),
        0x06 => "Missing Data".into(),
        0x07 => "Invalid Field".into(),
        0x08 => "Feature Not Supported".into(),
        0x09 => "Operation Canceled By Requester".into(),
        0x0A => "Cryptographic Failure".into(),
        0x0B => "Illegal Operation".into(),
        0x0C => "Permission Denied".into(),
        0x0D => "Object Archived".into(),
        0x0E => "Index Out Of Bounds".into(),
        0x10 => "Key Format Type Not Supported".into(),
        0x100 => "General Failure".into(),
        other => format!("Result Reason {other:#x}"),
    }
}

/// A Unique Identifier atrest sends: 1 to 256 printable characters.
fn valid_id(key: &str) -> Result<(), ProviderError> {
    if key.is_empty() || key.len() > MAX_ID || key.chars().any(char::is_control) {
        return Err(ProviderError::Config(format!(
            "a KMIP unique identifier must be 1 to {MAX_ID} printable characters"
        )));
    }
    Ok(())
}

fn check_uid(payload: &Item, key: &str) -> Result<(), ProviderError> {
    if let Some(uid) = payload.child(tag::UNIQUE_IDENTIFIER)
        && uid.as_text()? != key
    {
        return Err(ProviderError::Protocol(format!(
            "asked about KMIP key {key}, the server answered about {}",
            printable(uid.as_text()?)
        )));
    }
    Ok(())
}

/// Gets the key's material (Raw or Transparent Symmetric Key format).
fn fetch_key(s: &mut Session, key: &str) -> Result<Aes256Key, ProviderError> {
    let resp = s.request(op::GET, vec![Item::text(tag::UNIQUE_IDENTIFIER, key)], key)?;
    key_material(&resp, key)
}

/// The key material in a Get response payload.
fn key_material(resp: &Item, key: &str) -> Result<Aes256Key, ProviderError> {
    check_uid(resp, key)?;
    let object_type = resp
        .need(tag::OBJECT_TYPE, "Object Type")?
        .as_enumeration()?;
    if object_type != OBJECT_SYMMETRIC_KEY {
        return Err(ProviderError::Config(format!(
            "KMIP key {key} is a {}, not a symmetric key",
            object_type_name(object_type)
        )));
    }
    let block = resp
        .need(tag::SYMMETRIC_KEY, "Symmetric Key")?
        .need(tag::KEY_BLOCK, "Key Block")?;
    if block.child(tag::KEY_WRAPPING_DATA).is_some() {
        return Err(ProviderError::Protocol(format!(
            "the KMIP server returned key {key} wrapped; atrest asked for it in the clear"
        )));
    }
    let format = block
        .need(tag::KEY_FORMAT_TYPE, "Key Format Type")?
        .as_enumeration()?;
    let material = block
        .need(tag::KEY_VALUE, "Key Value")?
        .need(tag::KEY_MATERIAL, "Key Material")?;
    let bytes = match format {
        FORMAT_RAW => material.as_bytes()?,
        FORMAT_TRANSPARENT_SYMMETRIC => material.need(tag::KEY, "Key")?.as_bytes()?,
        other => {
            return Err(ProviderError::Protocol(format!(
                "KMIP key {key} came in key format {other:#x}, not Raw"
            )));
        }
    };
    Aes256Key::from_slice(bytes.expose()).map_err(|_| {
        ProviderError::Config(format!(
            "KMIP key {key} has {} bytes of key material, not 32",
            bytes.len()
        ))
    })
}

/// Keeps at most 300 printable characters of a server's text.
fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(300).collect()
}

fn aad(key: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(AAD_LABEL.len() + 1 + key.len());
    aad.extend_from_slice(AAD_LABEL);
    aad.push(0);
    aad.extend_from_slice(key.as_bytes());
    aad
}

/// One TLS connection to the server, bounded by one attempt's deadline.
struct Session {
    stream: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    deadline: Instant,
    timeout: Duration,
    address: String,
}

impl Session {
    /// Sets the socket's timeouts to what is left of the attempt.
    fn arm(&mut self) -> Result<(), ProviderError> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(self.timed_out());
        }
        let sock = &self.stream.sock;
        sock.set_read_timeout(Some(left))
            .and_then(|()| sock.set_write_timeout(Some(left)))
            .map_err(|e| self.io_error("setting timeouts", &e))
    }

    fn timed_out(&self) -> ProviderError {
        ProviderError::Unavailable(format!(
            "KMIP server {}: no answer within {} ms",
            self.address,
            self.timeout.as_millis()
        ))
    }

    /// Classifies an I/O error: TLS failures by their cause, anything else
    /// (reset, closed, timed out) as unavailable.
    fn io_error(&self, what: &str, e: &std::io::Error) -> ProviderError {
        use rustls::AlertDescription as A;
        let tls = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        match tls {
            Some(rustls::Error::InvalidCertificate(c)) => ProviderError::Config(format!(
                "KMIP server {}: its certificate is not trusted: {c:?}",
                self.address
            )),
            Some(rustls::Error::AlertReceived(
                alert @ (A::BadCertificate
                | A::UnsupportedCertificate
                | A::CertificateRevoked
                | A::CertificateExpired
                | A::CertificateUnknown
                | A::UnknownCA
                | A::AccessDenied
                | A::CertificateRequired),
            )) => ProviderError::Refused(format!(
                "KMIP server {} refused atrest's client certificate (TLS alert {alert:?})",
                self.address
            )),
            Some(other) => ProviderError::Protocol(format!(
                "KMIP server {}: TLS {what}: {other}",
                self.address
            )),
            None if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
            {
                self.timed_out()
            }
            None => {
                ProviderError::Unavailable(format!("KMIP server {}: {what}: {e}", self.address))
            }
        }
    }

    fn handshake(&mut self) -> Result<(), ProviderError> {
        while self.stream.conn.is_handshaking() {
            self.arm()?;
            let Self { stream, .. } = self;
            if let Err(e) = stream.conn.complete_io(&mut stream.sock) {
                return Err(self.io_error("handshake", &e));
            }
        }
        Ok(())
    }

    /// Sends one request (one batch item) and returns its response
    /// payload, or the server's failure mapped to an error about `key`.
    fn request(
        &mut self,
        operation: u32,
        payload: Vec<Item>,
        key: &str,
    ) -> Result<Item, ProviderError> {
        let message = Item::structure(
            tag::REQUEST_MESSAGE,
            vec![
                Item::structure(
                    tag::REQUEST_HEADER,
                    vec![
                        Item::structure(
                            tag::PROTOCOL_VERSION,
                            vec![
                                Item::integer(tag::PROTOCOL_VERSION_MAJOR, 1),
                                Item::integer(tag::PROTOCOL_VERSION_MINOR, 2),
                            ],
                        ),
                        Item::integer(tag::BATCH_COUNT, 1),
                    ],
                ),
                Item::structure(
                    tag::BATCH_ITEM,
                    vec![
                        Item::enumeration(tag::OPERATION, operation),
                        Item::structure(tag::REQUEST_PAYLOAD, payload),
                    ],
                ),
            ],
        )
        .encode()?;
        self.arm()?;
        if let Err(e) = self
            .stream
            .write_all(&message)
            .and_then(|()| self.stream.flush())
        {
            return Err(self.io_error("sending", &e));
        }
        let raw = {
            let mut reader = DeadlineReader(self);
            match crate::ttlv::read_message(&mut reader) {
                Ok(r) => r?,
                Err(e) => {
                    return Err(
                        match e.get_ref().and_then(|i| i.downcast_ref::<ProviderError>()) {
                            Some(p) => p.clone(),
                            None => self.io_error("reading the answer", &e),
                        },
                    );
                }
            }
        };
        let response = Item::decode(raw.expose())?;
        drop(raw);
        parse_response(response, operation, key)
    }

    /// Ends the TLS session politely; errors do not matter any more.
    fn close(&mut self) {
        self.stream.conn.send_close_notify();
        if self.arm().is_ok() {
            let _ = self.stream.flush();
        }
    }
}

/// Reads from the session, re-arming the socket's timeouts before each read
/// so a slow server cannot stretch the attempt past its deadline.
struct DeadlineReader<'a>(&'a mut Session);

impl Read for DeadlineReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.arm().map_err(std::io::Error::other)?;
        self.0.stream.read(buf)
    }
}

fn parse_response(response: Item, operation: u32, key: &str) -> Result<Item, ProviderError> {
    if response.tag != tag::RESPONSE_MESSAGE {
        return Err(ProviderError::Protocol(format!(
            "expected a KMIP Response Message, got tag {:#08x}",
            response.tag
        )));
    }
    response.need(tag::RESPONSE_HEADER, "Response Header")?;
    let Value::Structure(items) = response.value else {
        return Err(ProviderError::Protocol(
            "a Response Message is not a structure".into(),
        ));
    };
    let mut batch = items.into_iter().filter(|i| i.tag == tag::BATCH_ITEM);
    let (Some(item), None) = (batch.next(), batch.next()) else {
        return Err(ProviderError::Protocol(
            "the KMIP response does not hold exactly one batch item".into(),
        ));
    };
    if let Some(op) = item.child(tag::OPERATION)
        && op.as_enumeration()? != operation
    {
        return Err(ProviderError::Protocol(format!(
            "asked for KMIP operation {operation:#x}, the answer is for {:#x}",
            op.as_enumeration()?
        )));
    }
    let status = item
        .need(tag::RESULT_STATUS, "Result Status")?
        .as_enumeration()?;
    if status != 0 {
        let reason = item
            .child(tag::RESULT_REASON)
            .map(Item::as_enumeration)
            .transpose()?;
        let message = item
            .child(tag::RESULT_MESSAGE)
            .map(Item::as_text)
            .transpose()?
            .map(printable)
            .unwrap_or_default();
        let reason_name = reason.map_or_else(|| "no reason given".into(), result_reason_name);
        let text = format!("KMIP key {key}: {reason_name}: {message}");
        return Err(match reason {
            Some(0x01) => ProviderError::NotFound(text),
            Some(0x03 | 0x0C) => ProviderError::Refused(text),
            _ if status == 2 => ProviderError::Protocol(format!(
                "KMIP key {key}: the server answered asynchronously (Operation Pending)"
            )),
            _ => ProviderError::Protocol(text),
        });
    }
    let Value::Structure(items) = item.value else {
        return Err(ProviderError::Protocol(
            "a Batch Item is not a structure".into(),
        ));
    };
    items
        .into_iter()
        .find(|i| i.tag == tag::RESPONSE_PAYLOAD)
        .ok_or_else(|| ProviderError::Protocol("the KMIP response has no payload".into()))
}

impl KeyProvider for Kmip {
    fn kind(&self) -> &'static str {
        "kmip"
    }

    fn endpoint(&self) -> String {
        self.address.clone()
    }

    fn wrap(&self, key: &str, data_key: &[u8]) -> Result<Vec<u8>, ProviderError> {
        check_data_key(data_key)?;
        let kek = self.usable_key(key)?;
        let sealed = aead::seal_random_nonce(&kek, &aad(key), data_key)
            .map_err(|e| ProviderError::Protocol(format!("sealing: {e}")))?;
        let mut out = Vec::with_capacity(1 + sealed.len());
        out.push(FORMAT_V1);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    fn unwrap(&self, key: &str, wrapped: &[u8]) -> Result<SecretBytes, ProviderError> {
        let shortest = 1 + aead::NONCE_LEN + 1 + aead::TAG_LEN;
        let longest = 1 + aead::NONCE_LEN + crate::MAX_DATA_KEY + aead::TAG_LEN;
        let sealed = match wrapped.split_first() {
            Some((&FORMAT_V1, rest)) if (shortest..=longest).contains(&wrapped.len()) => rest,
            _ => {
                return Err(ProviderError::InvalidCiphertext(format!(
                    "not a key wrapped by atrest under KMIP key {key}"
                )));
            }
        };
        let kek = self.usable_key(key)?;
        aead::open_random_nonce(&kek, &aad(key), sealed).map_err(|_| {
            ProviderError::InvalidCiphertext(format!(
                "the wrapped key was not made by KMIP key {key}, or was altered"
            ))
        })
    }

    fn describe(&self, key: &str) -> Result<RemoteKey, ProviderError> {
        valid_id(key)?;
        let a = self.call(|s| Self::attributes(s, key))?;
        let mut details = std::collections::BTreeMap::new();
        if let Some(alg) = a.algorithm {
            details.insert("algorithm".into(), algorithm_name(alg));
        }
        if let Some(len) = a.length {
            details.insert("length".into(), len.to_string());
        }
        if let Some(t) = a.object_type {
            details.insert("object_type".into(), object_type_name(t));
        }
        Ok(RemoteKey {
            id: key.to_owned(),
            enabled: a.state == Some(STATE_ACTIVE),
            state: a.state_name(),
            version: None,
            details,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            split_address("kmip.corp:5696").unwrap(),
            ("kmip.corp".into(), 5696)
        );
        assert_eq!(
            split_address("kmip.corp").unwrap(),
            ("kmip.corp".into(), 5696)
        );
        assert_eq!(split_address("[::1]:7000").unwrap(), ("::1".into(), 7000));
        assert_eq!(split_address("[::1]").unwrap(), ("::1".into(), 5696));
        for bad in ["", ":5696", "h:0", "h:x", "::1", "[::1]x", "h:1:2"] {
            assert!(
                matches!(split_address(bad), Err(ProviderError::Config(_))),
                "{bad}"
            );
        }
    }

    fn header() -> Item {
        Item::structure(
            tag::RESPONSE_HEADER,
            vec![Item::integer(tag::BATCH_COUNT, 1)],
        )
    }

    fn failure(reason: u32, message: &str) -> Item {
        Item::structure(
            tag::RESPONSE_MESSAGE,
            vec![
                header(),
                Item::structure(
                    tag::BATCH_ITEM,
                    vec![
                        Item::enumeration(tag::OPERATION, op::GET),
                        Item::enumeration(tag::RESULT_STATUS, 1),
                        Item::enumeration(tag::RESULT_REASON, reason),
                        Item::text(tag::RESULT_MESSAGE, message),
                    ],
                ),
            ],
        )
    }

    #[test]
    fn maps_result_reasons() {
        let r = parse_response(failure(0x01, "Could not locate object: 7"), op::GET, "7");
        assert!(
            matches!(&r, Err(ProviderError::NotFound(m)) if m.contains("Could not locate")),
            "{r:?}"
        );
        let r = parse_response(failure(0x0C, "no"), op::GET, "7");
        assert!(matches!(&r, Err(ProviderError::Refused(_))), "{r:?}");
        let r = parse_response(failure(0x03, "who?"), op::GET, "7");
        assert!(matches!(&r, Err(ProviderError::Refused(_))), "{r:?}");
        let r = parse_response(failure(0x100, "bad\nthing"), op::GET, "7");
        assert!(
            matches!(&r, Err(ProviderError::Protocol(m)) if m.ends_with("Failure: badthing")),
            "{r:?}"
        );
        // Wrong operation echoed, wrong top-level tag, no batch item.
        let r = parse_response(failure(0x01, "x"), op::GET_ATTRIBUTES, "7");
        assert!(matches!(&r, Err(ProviderError::Protocol(_))), "{r:?}");
        let r = parse_response(header(), op::GET, "7");
        assert!(matches!(&r, Err(ProviderError::Protocol(_))), "{r:?}");
        let r = parse_response(
            Item::structure(tag::RESPONSE_MESSAGE, vec![header()]),
            op::GET,
            "7",
        );
        assert!(matches!(&r, Err(ProviderError::Protocol(_))), "{r:?}");
    }

    #[test]
    fn checks_attributes() {
        let good = Attributes {
            state: Some(STATE_ACTIVE),
            object_type: Some(OBJECT_SYMMETRIC_KEY),
            algorithm: Some(ALGORITHM_AES),
            length: Some(256),
        };
        assert!(good.require_usable("1").is_ok());
        let r = Attributes {
            state: Some(3),
            ..good
        }
        .require_usable("1");
        assert!(
            matches!(&r, Err(ProviderError::Refused(m)) if m == "KMIP key 1 is Deactivated"),
            "{r:?}"
        );
        let r = Attributes {
            length: Some(128),
            ..good
        }
        .require_usable("1");
        assert!(
            matches!(&r, Err(ProviderError::Config(m)) if m.contains("128")),
            "{r:?}"
        );
        let r = Attributes {
            algorithm: Some(4),
            ..good
        }
        .require_usable("1");
        assert!(
            matches!(&r, Err(ProviderError::Config(m)) if m.contains("RSA")),
            "{r:?}"
        );
    }

    fn get_response(format: u32, material: Item) -> Item {
        Item::structure(
            tag::RESPONSE_PAYLOAD,
            vec![
                Item::enumeration(tag::OBJECT_TYPE, OBJECT_SYMMETRIC_KEY),
                Item::text(tag::UNIQUE_IDENTIFIER, "1"),
                Item::structure(
                    tag::SYMMETRIC_KEY,
                    vec![Item::structure(
                        tag::KEY_BLOCK,
                        vec![
                            Item::enumeration(tag::KEY_FORMAT_TYPE, format),
                            Item::structure(tag::KEY_VALUE, vec![material]),
                        ],
                    )],
                ),
            ],
        )
    }

    #[test]
    fn aad_binds_the_identifier() {
        assert_ne!(aad("1"), aad("12"));
        assert!(aad("1").starts_with(AAD_LABEL));
    }

    #[test]
    fn identifiers() {
        assert!(valid_id("1").is_ok());
        assert!(valid_id("").is_err());
        assert!(valid_id("a\nb").is_err());
        assert!(valid_id(&"x".repeat(MAX_ID + 1)).is_err());
    }

    /// A provider for `127.0.0.1:port` that trusts nothing and has no
    /// client certificate: enough to see how failures before and during
    /// the TLS handshake are classified (PyKMIP proves the rest).
    fn provider(port: u16, timeout_ms: u64, retries: u32) -> Kmip {
        let tls = rustls::ClientConfig::builder_with_provider(crate::http::crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        Kmip {
            address: format!("127.0.0.1:{port}"),
            server_name: ServerName::try_from("127.0.0.1").unwrap(),
            tls: Arc::new(tls),
            transport: Transport {
                timeout_ms,
                retries,
            },
        }
    }

    #[test]
    fn unreachable_is_unavailable_after_retries_and_bounded_in_time() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let p = provider(port, 500, 2);
        let started = Instant::now();
        let r = p.describe("1");
        assert!(matches!(&r, Err(ProviderError::Unavailable(_))), "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(p.kind(), "kmip");
        assert_eq!(p.endpoint(), format!("127.0.0.1:{port}"));
    }

    #[test]
    fn a_silent_server_times_out() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let p = provider(port, 300, 0);
        let started = Instant::now();
        let r = p.wrap("1", &[7; 32]);
        assert!(
            matches!(&r, Err(ProviderError::Unavailable(m)) if m.contains("300 ms")),
            "{r:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(3));
        drop(listener);
    }

    #[test]
    fn a_server_that_is_not_tls_is_a_protocol_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
        });
        let r = provider(port, 2_000, 0).describe("1");
        assert!(matches!(&r, Err(ProviderError::Protocol(_))), "{r:?}");
        server.join().unwrap();
    }

    #[test]
    fn refuses_bad_input_before_any_call() {
        // Port 9 on loopback: nothing is reached, and nothing needs to be.
        let p = provider(9, 200, 0);
        assert!(matches!(p.wrap("1", &[]), Err(ProviderError::Config(_))));
        assert!(matches!(
            p.wrap("1", &[0; 65]),
            Err(ProviderError::Config(_))
        ));
        assert!(matches!(p.describe(""), Err(ProviderError::Config(_))));
        for bad in [
            vec![],
            vec![FORMAT_V1],
            vec![2; 61],
            vec![FORMAT_V1; 1 + aead::NONCE_LEN + aead::TAG_LEN],
            vec![FORMAT_V1; 1 + aead::NONCE_LEN + crate::MAX_DATA_KEY + aead::TAG_LEN + 1],
        ] {
            let r = p.unwrap("1", &bad);
            assert!(
                matches!(&r, Err(ProviderError::InvalidCiphertext(_))),
                "{r:?}"
            );
        }
    }

    #[test]
    fn reads_raw_and_transparent_key_material_and_never_prints_it() {
        let raw = get_response(
            FORMAT_RAW,
            Item {
                tag: tag::KEY_MATERIAL,
                value: Value::ByteString(SecretBytes::new(vec![0xAB; 32])),
            },
        );
        assert!(!format!("{raw:?}").contains("171"));
        let transparent = get_response(
            FORMAT_TRANSPARENT_SYMMETRIC,
            Item::structure(
                tag::KEY_MATERIAL,
                vec![Item {
                    tag: tag::KEY,
                    value: Value::ByteString(SecretBytes::new(vec![0xAB; 32])),
                }],
            ),
        );
        let short = get_response(
            FORMAT_RAW,
            Item {
                tag: tag::KEY_MATERIAL,
                value: Value::ByteString(SecretBytes::new(vec![0xAB; 16])),
            },
        );
        let want = Aes256Key::from_slice(&[0xAB; 32]).unwrap();
        assert!(key_material(&raw, "1").unwrap() == want);
        assert!(key_material(&transparent, "1").unwrap() == want);
        let r = key_material(&short, "1");
        assert!(
            matches!(&r, Err(ProviderError::Config(m)) if m.contains("16 bytes")),
            "{r:?}"
        );
        let r = key_material(&get_response(5, Item::text(tag::KEY_MATERIAL, "x")), "1");
        assert!(matches!(&r, Err(ProviderError::Protocol(_))), "{r:?}");
        let r = key_material(
            &get_response(FORMAT_RAW, Item::text(tag::KEY_MATERIAL, "x")),
            "1",
        );
        assert!(matches!(&r, Err(ProviderError::Protocol(_))), "{r:?}");
    }
}
