//! Reading the first flight of a TLS connection far enough to route it: a
//! ClientHello that offers an external PSK goes to [`crate::PskAcceptor`],
//! any other to the certificate (rustls) path.
//!
//! The parser takes untrusted bytes, never panics, never allocates more
//! than [`MAX_CLIENT_HELLO_LEN`] (plus a set of extension types), and
//! answers "need more bytes" only while the bytes seen so far could still
//! begin a ClientHello.

use std::collections::BTreeSet;

use crate::Error;

/// The longest ClientHello accepted, in bytes of handshake message body
/// (what a 16-bit-length world allows; real ones are well under 2 KiB).
pub const MAX_CLIENT_HELLO_LEN: usize = 0xffff;

/// The most plaintext a TLS record may carry (RFC 8446, section 5.1).
const MAX_FRAGMENT_LEN: usize = 1 << 14;
const RECORD_HEADER_LEN: usize = 5;
const HANDSHAKE_HEADER_LEN: usize = 4;
const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXT_SUPPORTED_VERSIONS: u16 = 43;
const EXT_PRE_SHARED_KEY: u16 = 41;
const EXT_PSK_KEY_EXCHANGE_MODES: u16 = 45;
const TLS13: u16 = 0x0304;
const PSK_DHE_KE: u8 = 1;

/// What a ClientHello offers, as far as routing it needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientHelloSummary {
    /// `supported_versions` lists TLS 1.3.
    pub offers_tls13: bool,
    /// The identities of the `pre_shared_key` extension whose
    /// `obfuscated_ticket_age` is 0, which RFC 8446 (section 4.2.11) asks of
    /// external PSKs; GnuTLS, OpenSSL and rustls all send 0 for them, and a
    /// resumption ticket's age is masked by a random 32-bit value.
    pub external_psk_identities: Vec<Vec<u8>>,
    /// `pre_shared_key` also (or only) holds resumption tickets.
    pub offers_resumption: bool,
    /// `psk_key_exchange_modes` lists `psk_dhe_ke`.
    pub offers_psk_dhe_ke: bool,
    /// Some offered cipher suite is a TLS 1.2 PSK suite (PSK, DHE-PSK,
    /// ECDHE-PSK or RSA-PSK). Certificate-only clients (rustls, browsers,
    /// OpenSSL or GnuTLS without PSK credentials) never offer one.
    pub offers_psk_suites: bool,
    /// Some offered cipher suite could run a certificate handshake: a TLS
    /// 1.3 suite or a TLS 1.2 suite that is not a PSK one.
    pub offers_certificate_suites: bool,
    /// How many bytes of the connection the ClientHello's records took.
    pub record_bytes: usize,
}

impl ClientHelloSummary {
    /// Whether the client asks for a PSK session: it offers an external PSK
    /// identity (TLS 1.3) or a TLS 1.2 PSK cipher suite.
    ///
    /// Such a client may list certificate suites as well (`gnutls-cli` with
    /// `--pskusername` does, and qemu and libnbd use GnuTLS's `NORMAL`
    /// priority plus the PSK key exchanges); a client only lists PSK
    /// suites or identities when it was given a key, so a PSK offer wins.
    pub fn offers_psk(&self) -> bool {
        !self.external_psk_identities.is_empty() || self.offers_psk_suites
    }
}

/// Given the first bytes of a TLS connection, says whether the ClientHello
/// offers a PSK ([`ClientHelloSummary::offers_psk`]): `None` if more bytes
/// are needed, an error if the bytes cannot begin a ClientHello.
///
/// Never panics, whatever the input.
pub fn client_hello_offers_psk(prefix: &[u8]) -> Option<Result<bool, Error>> {
    parse_client_hello(prefix).map(|summary| summary.map(|s| s.offers_psk()))
}

/// Parses the ClientHello at the start of a TLS connection: `None` if more
/// bytes are needed, an error if the bytes cannot begin a ClientHello.
///
/// The ClientHello may span several handshake records; bytes after its
/// last record are not looked at. Never panics, whatever the input.
pub fn parse_client_hello(prefix: &[u8]) -> Option<Result<ClientHelloSummary, Error>> {
    let mut message: Vec<u8> = Vec::new();
    let mut pos = 0;
    loop {
        let rest = prefix.get(pos..).unwrap_or_default();
        // Refuse as early as the bytes allow, so a non-TLS client (plain
        // NBD, HTTP) is told apart without waiting for a whole record.
        if let Some(&content_type) = rest.first()
            && content_type != CONTENT_HANDSHAKE
        {
            return Some(Err(malformed("not a TLS handshake record")));
        }
        if let Some(&major) = rest.get(1)
            && major != 3
        {
            return Some(Err(malformed("not a TLS record version")));
        }
        if message.is_empty()
            && let Some(&kind) = rest.get(RECORD_HEADER_LEN)
            && kind != HANDSHAKE_CLIENT_HELLO
        {
            return Some(Err(malformed(
                "first handshake message is not a ClientHello",
            )));
        }
        let header = rest.get(..RECORD_HEADER_LEN)?;
        let fragment_len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if fragment_len == 0 {
            return Some(Err(malformed("empty handshake record")));
        }
        if fragment_len > MAX_FRAGMENT_LEN {
            return Some(Err(malformed("record longer than 2^14 bytes")));
        }
        let fragment = rest.get(RECORD_HEADER_LEN..RECORD_HEADER_LEN + fragment_len)?;
        pos += RECORD_HEADER_LEN + fragment_len;
        message.extend_from_slice(fragment);

        let Some(length) = message.get(1..HANDSHAKE_HEADER_LEN) else {
            continue;
        };
        let body_len =
            usize::from(length[0]) << 16 | usize::from(length[1]) << 8 | usize::from(length[2]);
        if body_len > MAX_CLIENT_HELLO_LEN {
            return Some(Err(malformed("ClientHello longer than 64 KiB")));
        }
        let have = message.len() - HANDSHAKE_HEADER_LEN;
        if have < body_len {
            continue;
        }
        if have > body_len {
            return Some(Err(malformed("handshake data after the ClientHello")));
        }
        let body = message.get(HANDSHAKE_HEADER_LEN..).unwrap_or_default();
        return Some(parse_body(body).map(|mut summary| {
            summary.record_bytes = pos;
            summary
        }));
    }
}

fn malformed(reason: &'static str) -> Error {
    Error::MalformedClientHello(reason)
}

/// The body of a ClientHello (RFC 8446, section 4.1.2; RFC 5246, 7.4.1.2).
fn parse_body(body: &[u8]) -> Result<ClientHelloSummary, Error> {
    let mut summary = ClientHelloSummary::default();
    let mut r = Reader(body);
    let [major, _minor] = r.array::<2>()?;
    if major != 3 {
        return Err(malformed("ClientHello version is not TLS"));
    }
    r.array::<32>()?;
    if r.vec_u8()?.len() > 32 {
        return Err(malformed("session id longer than 32 bytes"));
    }
    let suites = r.vec_u16()?;
    if suites.is_empty() || !suites.len().is_multiple_of(2) {
        return Err(malformed("cipher suite list empty or of odd length"));
    }
    for suite in suites.chunks_exact(2) {
        let suite = u16::from_be_bytes([suite[0], suite[1]]);
        if is_psk_suite(suite) {
            summary.offers_psk_suites = true;
        } else if !is_signalling_suite(suite) {
            summary.offers_certificate_suites = true;
        }
    }
    if r.vec_u8()?.is_empty() {
        return Err(malformed("no compression method"));
    }
    if r.is_empty() {
        // A TLS 1.2 ClientHello may end here, without extensions.
        return Ok(summary);
    }
    let mut extensions = Reader(r.vec_u16()?);
    if !r.is_empty() {
        return Err(malformed("bytes after the extensions"));
    }
    let mut seen = BTreeSet::new();
    while !extensions.is_empty() {
        let kind = u16::from_be_bytes(extensions.array::<2>()?);
        let data = extensions.vec_u16()?;
        if !seen.insert(kind) {
            return Err(malformed("extension given twice"));
        }
        match kind {
            EXT_SUPPORTED_VERSIONS => parse_supported_versions(data, &mut summary)?,
            EXT_PSK_KEY_EXCHANGE_MODES => parse_psk_modes(data, &mut summary)?,
            EXT_PRE_SHARED_KEY => {
                if !extensions.is_empty() {
                    return Err(malformed("pre_shared_key is not the last extension"));
                }
                parse_pre_shared_key(data, &mut summary)?;
            }
            _ => {}
        }
    }
    Ok(summary)
}

fn parse_supported_versions(data: &[u8], summary: &mut ClientHelloSummary) -> Result<(), Error> {
    let mut r = Reader(data);
    let versions = r.vec_u8()?;
    if !r.is_empty() || versions.is_empty() || !versions.len().is_multiple_of(2) {
        return Err(malformed("bad supported_versions"));
    }
    summary.offers_tls13 = versions
        .chunks_exact(2)
        .any(|v| u16::from_be_bytes([v[0], v[1]]) == TLS13);
    Ok(())
}

fn parse_psk_modes(data: &[u8], summary: &mut ClientHelloSummary) -> Result<(), Error> {
    let mut r = Reader(data);
    let modes = r.vec_u8()?;
    if !r.is_empty() || modes.is_empty() {
        return Err(malformed("bad psk_key_exchange_modes"));
    }
    summary.offers_psk_dhe_ke = modes.contains(&PSK_DHE_KE);
    Ok(())
}

/// `OfferedPsks` (RFC 8446, section 4.2.11).
fn parse_pre_shared_key(data: &[u8], summary: &mut ClientHelloSummary) -> Result<(), Error> {
    let mut r = Reader(data);
    let mut identities = Reader(r.vec_u16()?);
    let mut binders = Reader(r.vec_u16()?);
    if !r.is_empty() {
        return Err(malformed("bytes after the PSK binders"));
    }
    let mut count = 0usize;
    while !identities.is_empty() {
        let identity = identities.vec_u16()?;
        let age = u32::from_be_bytes(identities.array::<4>()?);
        if identity.is_empty() {
            return Err(malformed("empty PSK identity"));
        }
        if age == 0 {
            summary.external_psk_identities.push(identity.to_vec());
        } else {
            summary.offers_resumption = true;
        }
        count += 1;
    }
    while !binders.is_empty() {
        if binders.vec_u8()?.len() < 32 {
            return Err(malformed("PSK binder shorter than 32 bytes"));
        }
        count = count
            .checked_sub(1)
            .ok_or(malformed("more PSK binders than identities"))?;
    }
    if count != 0 || summary.external_psk_identities.is_empty() && !summary.offers_resumption {
        return Err(malformed("PSK identities and binders do not pair up"));
    }
    Ok(())
}

/// The TLS 1.2 PSK cipher suites of the IANA registry: PSK, DHE-PSK,
/// RSA-PSK and ECDHE-PSK with every cipher (RFCs 4279, 4785, 5487, 5489,
/// 6209, 6367, 6655, 7905, 8442).
fn is_psk_suite(suite: u16) -> bool {
    matches!(
        suite,
        0x002C..=0x002E
            | 0x008A..=0x0095
            | 0x00A8..=0x00B9
            | 0xC033..=0xC03B
            | 0xC064..=0xC071
            | 0xC08E..=0xC09B
            | 0xC0A4..=0xC0AB
            | 0xCCAB..=0xCCAE
            | 0xD001..=0xD005
    )
}

/// Suites that name no key exchange: the renegotiation and fallback SCSVs
/// and GREASE (RFC 8701).
fn is_signalling_suite(suite: u16) -> bool {
    let [high, low] = suite.to_be_bytes();
    suite == 0x00FF || suite == 0x5600 || (high == low && high & 0x0f == 0x0a)
}

/// A cursor over untrusted bytes whose every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if n > self.0.len() {
            return Err(malformed("ClientHello field runs past its end"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let bytes = self.take(N)?;
        let mut out = [0; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn vec_u8(&mut self) -> Result<&'a [u8], Error> {
        let [len] = self.array::<1>()?;
        self.take(usize::from(len))
    }

    fn vec_u16(&mut self) -> Result<&'a [u8], Error> {
        let len = u16::from_be_bytes(self.array::<2>()?);
        self.take(usize::from(len))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A ClientHello built field by field: TLS 1.3 with one external PSK
    /// identity, listing a certificate suite as well.
    fn psk_hello(identity: &[u8], age: u32, suites: &[u16]) -> Vec<u8> {
        let mut ext = Vec::new();
        // supported_versions: TLS 1.3, TLS 1.2.
        ext.extend_from_slice(&[0, 43, 0, 5, 4, 3, 4, 3, 3]);
        // psk_key_exchange_modes: psk_dhe_ke.
        ext.extend_from_slice(&[0, 45, 0, 2, 1, 1]);
        // pre_shared_key, last.
        let mut ids = Vec::new();
        ids.extend_from_slice(&(identity.len() as u16).to_be_bytes());
        ids.extend_from_slice(identity);
        ids.extend_from_slice(&age.to_be_bytes());
        let mut psk = Vec::new();
        psk.extend_from_slice(&(ids.len() as u16).to_be_bytes());
        psk.extend_from_slice(&ids);
        psk.extend_from_slice(&33u16.to_be_bytes());
        psk.push(32);
        psk.extend_from_slice(&[0xbb; 32]);
        ext.extend_from_slice(&41u16.to_be_bytes());
        ext.extend_from_slice(&(psk.len() as u16).to_be_bytes());
        ext.extend_from_slice(&psk);
        hello(suites, Some(&ext))
    }

    fn hello(suites: &[u16], extensions: Option<&[u8]>) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend_from_slice(&[0xaa; 32]);
        body.push(0);
        body.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
        for s in suites {
            body.extend_from_slice(&s.to_be_bytes());
        }
        body.extend_from_slice(&[1, 0]);
        if let Some(ext) = extensions {
            body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
            body.extend_from_slice(ext);
        }
        let mut message = vec![1];
        message.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        message.extend_from_slice(&body);
        records(&message, MAX_FRAGMENT_LEN)
    }

    fn records(message: &[u8], fragment: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in message.chunks(fragment) {
            out.extend_from_slice(&[22, 3, 1]);
            out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    #[test]
    fn external_psk_is_psk() {
        let bytes = psk_hello(b"alice", 0, &[0x1301, 0xc02f]);
        let summary = parse_client_hello(&bytes).unwrap().unwrap();
        assert_eq!(summary.external_psk_identities, [b"alice".to_vec()]);
        assert!(summary.offers_tls13 && summary.offers_psk_dhe_ke);
        assert!(summary.offers_certificate_suites && !summary.offers_psk_suites);
        assert!(summary.offers_psk());
        assert_eq!(summary.record_bytes, bytes.len());
    }

    #[test]
    fn resumption_ticket_is_not_psk() {
        let bytes = psk_hello(&[7; 100], 0x1234_5678, &[0x1301]);
        let summary = parse_client_hello(&bytes).unwrap().unwrap();
        assert!(summary.offers_resumption);
        assert!(!summary.offers_psk());
    }

    #[test]
    fn tls12_psk_suites() {
        let bytes = hello(&[0xc02f, 0xccac, 0x00ff], None);
        assert!(client_hello_offers_psk(&bytes).unwrap().unwrap());
        let bytes = hello(&[0xc02f, 0x00ff, 0x0a0a], None);
        assert!(!client_hello_offers_psk(&bytes).unwrap().unwrap());
    }

    #[test]
    fn every_truncation_asks_for_more() {
        let bytes = psk_hello(b"alice", 0, &[0x1301]);
        for len in 0..bytes.len() {
            assert!(client_hello_offers_psk(&bytes[..len]).is_none(), "{len}");
        }
        // Trailing bytes after the ClientHello's records are not looked at.
        let mut longer = bytes;
        longer.extend_from_slice(b"garbage");
        assert!(client_hello_offers_psk(&longer).unwrap().unwrap());
    }

    #[test]
    fn fragmented_across_records() {
        let bytes = psk_hello(b"alice", 0, &[0x1301]);
        let message = bytes[5..].to_vec();
        let split = records(&message, 7);
        for len in 0..split.len() {
            assert!(client_hello_offers_psk(&split[..len]).is_none(), "{len}");
        }
        assert!(client_hello_offers_psk(&split).unwrap().unwrap());
    }

    #[test]
    fn refuses_non_tls_early() {
        for bytes in [
            &b"NBDMAGIC"[..],
            b"GET / HTTP/1.1\r\n",
            &[22, 4],
            &[22, 3, 1, 0, 5, 2],
        ] {
            assert!(
                matches!(
                    client_hello_offers_psk(bytes),
                    Some(Err(Error::MalformedClientHello(_)))
                ),
                "{bytes:?}"
            );
        }
        assert!(client_hello_offers_psk(&[22, 3, 1, 0, 0]).unwrap().is_err());
        assert!(
            client_hello_offers_psk(&[22, 3, 1, 0x40, 1])
                .unwrap()
                .is_err()
        );
        // Declares a 16 MiB ClientHello.
        assert!(
            client_hello_offers_psk(&[22, 3, 1, 0, 4, 1, 0xff, 0xff, 0xff])
                .unwrap()
                .is_err()
        );
    }

    #[test]
    fn refuses_inconsistent_lengths() {
        let good = psk_hello(b"alice", 0, &[0x1301]);
        // Every single-byte corruption parses or is refused, never panics;
        // most length corruptions are refused.
        let mut refused = 0;
        for i in 0..good.len() {
            for delta in [1u8, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[i] = bad[i].wrapping_add(delta);
                if let Some(Err(_)) = client_hello_offers_psk(&bad) {
                    refused += 1;
                }
            }
        }
        assert!(refused > 0);
    }

    /// ClientHellos captured from real clients (Debian 12 versions), with
    /// whether each offers a PSK.
    const CAPTURED: &[(&str, &[u8], bool)] = &[
        (
            "gnutls-cli --pskusername, qemu's priority",
            include_bytes!("../tests/data/gnutls-cli-3.7.9-psk.bin"),
            true,
        ),
        (
            "gnutls-cli --pskusername, TLS 1.2 only",
            include_bytes!("../tests/data/gnutls-cli-3.7.9-psk-tls12.bin"),
            true,
        ),
        (
            "libgnutls with PSK credentials only, as qemu and libnbd",
            include_bytes!("../tests/data/libgnutls-3.7.9-psk-only.bin"),
            true,
        ),
        (
            "openssl s_client -psk",
            include_bytes!("../tests/data/openssl-3.0-psk.bin"),
            true,
        ),
        (
            "gnutls-cli, certificate",
            include_bytes!("../tests/data/gnutls-cli-3.7.9-certificate.bin"),
            false,
        ),
        (
            "openssl s_client, certificate",
            include_bytes!("../tests/data/openssl-3.0-certificate.bin"),
            false,
        ),
    ];

    /// A rustls client's first flight.
    fn rustls_client_hello() -> Vec<u8> {
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn captured_client_hellos() {
        let rustls = rustls_client_hello();
        let all = CAPTURED
            .iter()
            .copied()
            .chain([("rustls", rustls.as_slice(), false)]);
        for (name, bytes, psk) in all {
            let summary = parse_client_hello(bytes).unwrap().unwrap();
            assert_eq!(summary.offers_psk(), psk, "{name}: {summary:?}");
            assert_eq!(summary.record_bytes, bytes.len(), "{name}");
            for len in 0..bytes.len() {
                assert!(parse_client_hello(&bytes[..len]).is_none(), "{name}: {len}");
            }
            // Single-byte corruptions parse or are refused; never panic.
            for i in 0..bytes.len() {
                let mut bad = bytes.to_vec();
                bad[i] ^= 0xff;
                let _ = parse_client_hello(&bad);
            }
        }
        let gnutls = parse_client_hello(CAPTURED[0].1).unwrap().unwrap();
        assert_eq!(gnutls.external_psk_identities, [b"alice".to_vec()]);
        assert!(gnutls.offers_tls13 && gnutls.offers_psk_dhe_ke && gnutls.offers_psk_suites);
        let psk_only = parse_client_hello(CAPTURED[2].1).unwrap().unwrap();
        assert!(psk_only.offers_tls13 && !psk_only.external_psk_identities.is_empty());
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = client_hello_offers_psk(&bytes);
        }

        #[test]
        fn never_panics_behind_a_valid_header(body in proptest::collection::vec(any::<u8>(), 0..600)) {
            // A record and handshake header that announce exactly `body`, so
            // the random bytes reach the body parser.
            let mut bytes = vec![22, 3, 1];
            bytes.extend_from_slice(&((body.len() + 4) as u16).to_be_bytes());
            bytes.push(1);
            bytes.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
            bytes.extend_from_slice(&body);
            prop_assert!(parse_client_hello(&bytes).is_some());
        }
    }
}
