//! The bytes on disk: one record line, the head file, and the chain check.
//!
//! A record line is the compact JSON of [`Record`] (fields in declaration
//! order, absent options and an empty `context_keys` left out) followed by
//! `\n`. Its MAC is HMAC-SHA256 under the audit key of the line's exact bytes
//! before `,"mac":"`, which are `{"seq":N,...,"prev":"<64 hex>"`. Checking
//! the MAC over the exact bytes (rather than over a re-serialisation) means
//! any change to a line, even one that keeps the JSON valid and its meaning
//! (whitespace, field order, escapes, hex case), fails the check.

use atrest_crypto::SecretKey;
use atrest_crypto::ct_eq;
use atrest_crypto::hash::HmacSha256Key;
use serde::Deserialize;

use crate::{Entry, Record};

/// The `prev` of the first record, and the head's mac of an empty log.
pub(crate) const ZERO_MAC: [u8; 64] = [b'0'; 64];

/// `,"mac":"` + 64 hex + `"}`.
const MAC_TAIL: &[u8] = b",\"mac\":\"";
const MAC_TAIL_LEN: usize = 8 + 64 + 2;
/// `,"prev":"` + 64 hex + `"`.
const PREV_TAIL: &[u8] = b",\"prev\":\"";
const PREV_TAIL_LEN: usize = 9 + 64 + 1;
const SEQ_HEAD: &[u8] = b"{\"seq\":";

/// The JSON of an entry's fields, without the braces: the middle of its
/// record line. Done by the appender before it takes the tail lock.
///
/// Written by hand, field by field in declaration order with absent options
/// and an empty `context_keys` left out, and strings escaped exactly as
/// `serde_json` escapes them, so that the line is the compact serde form of
/// [`Record`] (a test holds it to that). Every request writes one record,
/// and this is several times cheaper than going through serde.
pub(crate) fn encode_body(entry: &Entry) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    let mut field = |name: &str, value: Option<&str>| {
        if let Some(value) = value {
            if !out.is_empty() {
                out.push(b',');
            }
            out.push(b'"');
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\":");
            json_string(&mut out, value);
        }
    };
    field("time", Some(&entry.time));
    field("request_id", Some(&entry.request_id));
    field("region", entry.region.as_deref());
    field("account", entry.account.as_deref());
    field("principal", entry.principal.as_deref());
    field("access_key_id", entry.access_key_id.as_deref());
    field("source", entry.source.as_deref());
    field("operation", Some(&entry.operation));
    field("key_arn", entry.key_arn.as_deref());
    field("via_service", entry.via_service.as_deref());
    field("grant_id", entry.grant_id.as_deref());
    if !entry.context_keys.is_empty() {
        out.extend_from_slice(b",\"context_keys\":[");
        for (i, k) in entry.context_keys.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            json_string(&mut out, k);
        }
        out.push(b']');
    }
    out.extend_from_slice(b",\"result\":");
    json_string(&mut out, &entry.result);
    if let Some(count) = entry.count {
        out.extend_from_slice(b",\"count\":");
        out.extend_from_slice(count.to_string().as_bytes());
    }
    if !entry.kinds.is_empty() {
        out.extend_from_slice(b",\"kinds\":{");
        for (i, (k, n)) in entry.kinds.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            json_string(&mut out, k);
            out.push(b':');
            out.extend_from_slice(n.to_string().as_bytes());
        }
        out.push(b'}');
    }
    if let Some(node) = &entry.node {
        out.extend_from_slice(b",\"node\":");
        json_string(&mut out, node);
    }
    out
}

/// Appends `s` as a JSON string, escaped as `serde_json` does: `"` and `\`
/// and the control characters below U+0020 (the short forms where JSON has
/// them, else `\u00xx` in lower-case hex); everything else as is.
pub(crate) fn json_string(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    // Nearly every field needs no escape: test all bytes at once (a fold
    // without early exit, which the compiler vectorises) and copy.
    let plain = bytes
        .iter()
        .fold(true, |ok, &b| ok & (b >= 0x20) & (b != b'"') & (b != b'\\'));
    if plain {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short = match b {
            b'"' => b'"',
            b'\\' => b'\\',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            0x08 => b'b',
            0x0c => b'f',
            0x00..=0x1f => 0,
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        start = i + 1;
        if short == 0 {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.push(b'\\');
            out.push(short);
        }
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Appends the line of record `seq` with the entry `body` (from
/// [`encode_body`]) to `out`, `\n` included, and returns its MAC in hex.
pub(crate) fn encode_line(
    key: &HmacSha256Key,
    seq: u64,
    body: &[u8],
    prev: &[u8; 64],
    out: &mut Vec<u8>,
) -> [u8; 64] {
    let start = out.len();
    out.extend_from_slice(SEQ_HEAD);
    out.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
    out.push(b',');
    out.extend_from_slice(body);
    out.extend_from_slice(PREV_TAIL);
    out.extend_from_slice(prev);
    out.push(b'"');
    let mac = mac_hex(key, &out[start..]);
    out.extend_from_slice(MAC_TAIL);
    out.extend_from_slice(&mac);
    out.extend_from_slice(b"\"}\n");
    mac
}

fn mac_hex(key: &HmacSha256Key, data: &[u8]) -> [u8; 64] {
    let tag = key.sign(data);
    let mut out = [0u8; 64];
    // 32 bytes always encode to 64 hex digits.
    if hex::encode_to_slice(tag, &mut out).is_err() {
        out = [0u8; 64];
    }
    out
}

fn is_lower_hex(b: &[u8]) -> bool {
    b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

/// The chain state while reading a log: what the next line must be.
pub(crate) struct Chain {
    key: HmacSha256Key,
    /// The seq the next record must have.
    pub(crate) next_seq: u64,
    /// The mac of the last good record (`ZERO_MAC` before the first).
    pub(crate) prev: [u8; 64],
}

impl Chain {
    pub(crate) fn new(key: &SecretKey<32>) -> Self {
        Self {
            key: HmacSha256Key::new(key.expose()),
            next_seq: 1,
            prev: ZERO_MAC,
        }
    }

    /// The chain state after a record `seq` whose mac is `prev` (for a
    /// segment that continues the chain of those before it).
    pub(crate) fn resume(key: &SecretKey<32>, seq: u64, prev: [u8; 64]) -> Self {
        Self {
            key: HmacSha256Key::new(key.expose()),
            next_seq: seq + 1,
            prev,
        }
    }

    /// Checks one line (without its `\n`) and, if good, advances. The error
    /// says what is wrong.
    pub(crate) fn check(&mut self, line: &[u8]) -> Result<(), String> {
        let (seq, prev, mac) = check_mac(&self.key, line)?;
        if seq != self.next_seq {
            let why = if seq > self.next_seq {
                "a record is missing or out of order"
            } else {
                "a record is duplicated or out of order"
            };
            return Err(format!(
                "expected seq {}, found {seq} ({why})",
                self.next_seq
            ));
        }
        if prev != self.prev {
            return Err("prev does not match the previous record's mac".into());
        }
        self.next_seq += 1;
        self.prev = mac;
        Ok(())
    }
}

/// Checks one line's shape and MAC (not its place in the chain); returns
/// its seq, prev and mac.
pub(crate) fn check_mac(
    key: &HmacSha256Key,
    line: &[u8],
) -> Result<(u64, [u8; 64], [u8; 64]), String> {
    let n = line.len();
    let shape_err = || "unparsable line (not a record)".to_string();
    if n < SEQ_HEAD.len() + 2 + PREV_TAIL_LEN + MAC_TAIL_LEN || !line.ends_with(b"\"}") {
        return Err(shape_err());
    }
    let (signed, tail) = line.split_at(n - MAC_TAIL_LEN);
    let mac = &tail[MAC_TAIL.len()..MAC_TAIL.len() + 64];
    if !tail.starts_with(MAC_TAIL) || !is_lower_hex(mac) {
        return Err(shape_err());
    }
    let prev_tail = &signed[signed.len() - PREV_TAIL_LEN..];
    let prev = &prev_tail[PREV_TAIL.len()..PREV_TAIL.len() + 64];
    if !prev_tail.starts_with(PREV_TAIL) || !prev_tail.ends_with(b"\"") || !is_lower_hex(prev) {
        return Err(shape_err());
    }
    let Some(seq) = raw_seq(signed) else {
        return Err(shape_err());
    };
    if !ct_eq(&mac_hex(key, signed), mac) {
        return Err("bad MAC (the record was edited, or forged without the key)".into());
    }
    let (mut p, mut m) = ([0u8; 64], [0u8; 64]);
    p.copy_from_slice(prev);
    m.copy_from_slice(mac);
    Ok((seq, p, m))
}

/// The seq of a line that begins `{"seq":<digits>,` (no leading zero), read
/// without parsing the rest.
pub(crate) fn raw_seq(line: &[u8]) -> Option<u64> {
    let digits = line.strip_prefix(SEQ_HEAD)?;
    let len = digits.iter().take_while(|c| c.is_ascii_digit()).count();
    if len == 0 || digits[0] == b'0' || digits.get(len) != Some(&b',') {
        return None;
    }
    std::str::from_utf8(&digits[..len]).ok()?.parse().ok()
}

/// The bytes of a line's `time` value, read without parsing the line: it
/// must begin `{"seq":<digits>,"time":"` (as every record does) and the
/// value must hold no escape. `None` otherwise.
pub(crate) fn raw_time(line: &[u8]) -> Option<&[u8]> {
    const TIME: &[u8] = b"\"time\":\"";
    let digits = line.strip_prefix(SEQ_HEAD)?;
    let len = digits.iter().take_while(|c| c.is_ascii_digit()).count();
    let rest = digits.get(len..)?.strip_prefix(b",")?.strip_prefix(TIME)?;
    let end = memchr::memchr(b'"', rest)?;
    let value = &rest[..end];
    (!value.contains(&b'\\')).then_some(value)
}

/// Whether `t` is a time in the one form the server writes,
/// `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC, milliseconds): the form in which string
/// order is time order, and which a segment's name can carry.
pub(crate) fn is_canonical_time(t: &[u8]) -> bool {
    const SHAPE: &[u8; 24] = b"dddd-dd-ddTdd:dd:dd.dddZ";
    t.len() == SHAPE.len()
        && t.iter().zip(SHAPE).all(|(&c, &s)| {
            if s == b'd' {
                c.is_ascii_digit()
            } else {
                c == s
            }
        })
}

/// `audit.head`: `atrest-audit-head v1 <seq, 20 digits> <mac> <tag>\n`, with
/// tag = hex HMAC-SHA256(key, the bytes before ` <tag>`). Fixed length so it
/// is rewritten in place within one disk sector.
const HEAD_MAGIC: &[u8] = b"atrest-audit-head v1 ";
const HEAD_SIGNED_LEN: usize = 21 + 20 + 1 + 64;
pub(crate) const HEAD_LEN: usize = HEAD_SIGNED_LEN + 1 + 64 + 1;

pub(crate) fn encode_head(key: &HmacSha256Key, seq: u64, mac: &[u8; 64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEAD_LEN);
    out.extend_from_slice(HEAD_MAGIC);
    out.extend_from_slice(format!("{seq:020}").as_bytes());
    out.push(b' ');
    out.extend_from_slice(mac);
    let tag = mac_hex(key, &out);
    out.push(b' ');
    out.extend_from_slice(&tag);
    out.push(b'\n');
    out
}

/// The head's (seq, mac), or what is wrong with it.
pub(crate) fn decode_head(key: &SecretKey<32>, bytes: &[u8]) -> Result<(u64, [u8; 64]), String> {
    if bytes.len() != HEAD_LEN
        || !bytes.starts_with(HEAD_MAGIC)
        || bytes[HEAD_SIGNED_LEN] != b' '
        || bytes[HEAD_MAGIC.len() + 20] != b' '
        || bytes[HEAD_LEN - 1] != b'\n'
    {
        return Err("audit.head is not a head record".into());
    }
    let seq = &bytes[HEAD_MAGIC.len()..HEAD_MAGIC.len() + 20];
    let mac = &bytes[HEAD_MAGIC.len() + 21..HEAD_SIGNED_LEN];
    let tag = &bytes[HEAD_SIGNED_LEN + 1..HEAD_LEN - 1];
    let seq = std::str::from_utf8(seq)
        .ok()
        .filter(|s| s.bytes().all(|c| c.is_ascii_digit()))
        .and_then(|s| s.parse::<u64>().ok());
    let Some(seq) = seq.filter(|_| is_lower_hex(mac) && is_lower_hex(tag)) else {
        return Err("audit.head is not a head record".into());
    };
    if !ct_eq(
        &mac_hex(&HmacSha256Key::new(key.expose()), &bytes[..HEAD_SIGNED_LEN]),
        tag,
    ) {
        return Err("audit.head has a bad tag (it was edited)".into());
    }
    let mut out = [0u8; 64];
    out.copy_from_slice(mac);
    Ok((seq, out))
}

/// A record line as parsed for queries; field names and order as
/// [`Record`], without `flatten` (which buffers and is slow).
#[derive(Deserialize)]
struct Parsed {
    seq: u64,
    time: String,
    request_id: String,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    account: Option<String>,
    #[serde(default)]
    principal: Option<String>,
    #[serde(default)]
    access_key_id: Option<String>,
    #[serde(default)]
    source: Option<String>,
    operation: String,
    #[serde(default)]
    key_arn: Option<String>,
    #[serde(default)]
    via_service: Option<String>,
    #[serde(default)]
    grant_id: Option<String>,
    #[serde(default)]
    context_keys: Vec<String>,
    result: String,
    #[serde(default)]
    count: Option<u64>,
    #[serde(default)]
    kinds: std::collections::BTreeMap<String, u64>,
    #[serde(default)]
    node: Option<String>,
    prev: String,
    mac: String,
}

/// Parses a record line (without its `\n`); does not check the MAC.
pub(crate) fn parse_record(line: &[u8]) -> Result<Record, serde_json::Error> {
    let p: Parsed = serde_json::from_slice(line)?;
    Ok(Record {
        seq: p.seq,
        entry: Entry {
            time: p.time,
            request_id: p.request_id,
            region: p.region,
            account: p.account,
            principal: p.principal,
            access_key_id: p.access_key_id,
            source: p.source,
            operation: p.operation,
            key_arn: p.key_arn,
            via_service: p.via_service,
            grant_id: p.grant_id,
            context_keys: p.context_keys,
            result: p.result,
            count: p.count,
            kinds: p.kinds,
            node: p.node,
        },
        prev: p.prev,
        mac: p.mac,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn mac_key() -> HmacSha256Key {
        HmacSha256Key::new(key().expose())
    }

    fn key() -> SecretKey<32> {
        SecretKey::from_slice(&[7u8; 32]).unwrap()
    }

    fn full_entry() -> Entry {
        Entry {
            time: "2026-11-22T07:12:00.123Z".into(),
            request_id: "r-1".into(),
            region: Some("us-east-1".into()),
            account: Some("111122223333".into()),
            principal: Some("arn:aws:iam::111122223333:user/a\"b\n".into()),
            access_key_id: Some("AKIA".into()),
            source: Some("127.0.0.1:5000".into()),
            operation: "Decrypt".into(),
            key_arn: Some("arn:aws:kms:us-east-1:111122223333:key/k".into()),
            via_service: Some("disk.atrest".into()),
            grant_id: Some("g".into()),
            context_keys: vec!["app".into(), "tenant\u{1}é".into()],
            result: "Success".into(),
            count: Some(3),
            kinds: [
                ("InvalidSignatureException".to_owned(), 2),
                ("x\"y".to_owned(), 1),
            ]
            .into_iter()
            .collect(),
            node: Some("2f6c0d3e-node".into()),
        }
    }

    fn line_of(entry: &Entry, seq: u64, prev: &[u8; 64]) -> (Vec<u8>, [u8; 64]) {
        let mut out = Vec::new();
        let body = encode_body(entry);
        let mac = encode_line(&mac_key(), seq, &body, prev, &mut out);
        (out, mac)
    }

    #[test]
    fn line_is_the_serde_form_of_record_and_parses_back() {
        for entry in [full_entry(), Entry::default()] {
            let (line, mac) = line_of(&entry, 1, &ZERO_MAC);
            assert_eq!(line.last(), Some(&b'\n'));
            let body = &line[..line.len() - 1];
            assert!(!body.contains(&b'\n'));
            let rec = parse_record(body).unwrap();
            assert_eq!(rec.entry, entry);
            assert_eq!(rec.seq, 1);
            assert_eq!(rec.mac.as_bytes(), &mac);
            assert_eq!(rec.prev.as_bytes(), &ZERO_MAC);
            // The public type's serde gives the very same bytes, both ways.
            assert_eq!(serde_json::to_vec(&rec).unwrap(), body);
            let via_public: Record = serde_json::from_slice(body).unwrap();
            assert_eq!(via_public, rec);
            // And the MAC is over exactly the bytes before `,"mac":"`.
            let cut = body.len() - MAC_TAIL_LEN;
            assert_eq!(mac, mac_hex(&mac_key(), &body[..cut]));
        }
    }

    fn opt() -> impl Strategy<Value = Option<String>> {
        proptest::option::of(any::<String>())
    }

    proptest! {
        /// The hand-written body is the serde form of the public `Entry`,
        /// byte for byte, for any strings (quotes, backslashes, control
        /// characters, any Unicode).
        #[test]
        fn body_is_the_serde_form_of_the_entry(
            time in any::<String>(),
            request_id in "[ -~]{0,40}",
            (region, account, principal, access_key_id) in (opt(), opt(), opt(), opt()),
            (source, key_arn, via_service, grant_id) in (opt(), opt(), opt(), opt()),
            operation in any::<String>(),
            context_keys in proptest::collection::vec(any::<String>(), 0..4),
            result in "\\PC{0,20}",
            count in proptest::option::of(any::<u64>()),
            kinds in proptest::collection::btree_map(any::<String>(), any::<u64>(), 0..4),
            node in opt(),
        ) {
            let entry = Entry {
                time, request_id, region, account, principal, access_key_id, source,
                operation, key_arn, via_service, grant_id, context_keys, result, count, kinds,
                node,
            };
            let body = encode_body(&entry);
            let framed = [&b"{"[..], &body, b"}"].concat();
            prop_assert_eq!(framed, serde_json::to_vec(&entry).unwrap());
        }
    }

    #[test]
    fn every_control_character_is_escaped_as_serde_does() {
        let all: String = (0u8..0x80).map(char::from).collect();
        let mut out = Vec::new();
        json_string(&mut out, &all);
        assert_eq!(out, serde_json::to_vec(&all).unwrap());
    }

    #[test]
    fn chain_accepts_a_good_chain() {
        let k = key();
        let mut chain = Chain::new(&k);
        let mut prev = ZERO_MAC;
        for seq in 1..=5 {
            let (line, mac) = line_of(&full_entry(), seq, &prev);
            chain.check(&line[..line.len() - 1]).unwrap();
            prev = mac;
        }
        assert_eq!(chain.next_seq, 6);
        assert_eq!(chain.prev, prev);
    }

    fn check_one(line: &[u8]) -> Result<(), String> {
        let k = key();
        Chain::new(&k).check(line)
    }

    #[test]
    fn edits_that_keep_the_json_valid_are_caught() {
        let (line, _) = line_of(&full_entry(), 1, &ZERO_MAC);
        let body = std::str::from_utf8(&line[..line.len() - 1]).unwrap();
        check_one(body.as_bytes()).unwrap();
        let edits = [
            body.replace("Decrypt", "Encrypt"),
            body.replace("\"result\":\"Success\"", "\"result\" : \"Success\""),
            body.replace("{\"seq\":1,", "{\"seq\":1, "),
            body.replace("\"app\"", "\"\\u0061pp\""),
            body.replace(
                "\"region\":\"us-east-1\",\"account\":\"111122223333\"",
                "\"account\":\"111122223333\",\"region\":\"us-east-1\"",
            ),
            body.replace(",\"grant_id\":\"g\"", ""),
            body.replace("\"result\"", "\"extra\":1,\"result\""),
        ];
        for e in &edits {
            assert_ne!(e, body);
            assert_eq!(
                check_one(e.as_bytes()).unwrap_err(),
                "bad MAC (the record was edited, or forged without the key)",
                "{e}"
            );
        }
        // Changing the seq is caught by the MAC too.
        let e = body.replacen("{\"seq\":1,", "{\"seq\":2,", 1);
        let k = key();
        let mut chain = Chain::new(&k);
        chain.next_seq = 2;
        assert!(
            chain
                .check(e.as_bytes())
                .unwrap_err()
                .starts_with("bad MAC")
        );
        // Upper-case hex in the mac is a change too.
        let mac_at = body.len() - 66;
        let upper = format!("{}{}", &body[..mac_at], body[mac_at..].to_uppercase());
        assert!(check_one(upper.as_bytes()).is_err());
    }

    #[test]
    fn other_keys_and_garbage_are_refused() {
        let (line, _) = line_of(&full_entry(), 1, &ZERO_MAC);
        let other = SecretKey::from_slice(&[8u8; 32]).unwrap();
        assert!(
            Chain::new(&other)
                .check(&line[..line.len() - 1])
                .unwrap_err()
                .starts_with("bad MAC")
        );
        for bad in [
            &b""[..],
            b"{}",
            b"\0\0\0\0",
            &line[..line.len() - 2],
            &line[1..line.len() - 1],
        ] {
            assert_eq!(
                check_one(bad).unwrap_err(),
                "unparsable line (not a record)"
            );
        }
        assert!(check_one(&[b'x'; 400]).is_err());
    }

    #[test]
    fn seq_and_prev_rules() {
        let (l1, m1) = line_of(&full_entry(), 1, &ZERO_MAC);
        let (l2, m2) = line_of(&full_entry(), 2, &m1);
        let (l3, _) = line_of(&full_entry(), 3, &m2);
        let strip = |l: &[u8]| l[..l.len() - 1].to_vec();
        let k = key();
        let mut c = Chain::new(&k);
        assert_eq!(
            c.check(&strip(&l2)).unwrap_err(),
            "expected seq 1, found 2 (a record is missing or out of order)"
        );
        c.check(&strip(&l1)).unwrap();
        assert_eq!(
            c.check(&strip(&l1)).unwrap_err(),
            "expected seq 2, found 1 (a record is duplicated or out of order)"
        );
        // Right seq, wrong predecessor: a record 2 from another chain.
        let (other2, _) = line_of(&Entry::default(), 2, &m2);
        assert_eq!(
            c.check(&strip(&other2)).unwrap_err(),
            "prev does not match the previous record's mac"
        );
        c.check(&strip(&l2)).unwrap();
        c.check(&strip(&l3)).unwrap();
    }

    #[test]
    fn head_round_trip_and_tamper() {
        let mac = [b'a'; 64];
        let h = encode_head(&mac_key(), 42, &mac);
        assert_eq!(h.len(), HEAD_LEN);
        assert_eq!(decode_head(&key(), &h).unwrap(), (42, mac));
        assert_eq!(
            decode_head(&key(), &encode_head(&mac_key(), 0, &ZERO_MAC))
                .unwrap()
                .0,
            0
        );
        let mut t = h.clone();
        t[HEAD_MAGIC.len() + 19] = b'1';
        assert!(decode_head(&key(), &t).unwrap_err().contains("bad tag"));
        let mut t = h.clone();
        t[HEAD_MAGIC.len() + 21] = b'b';
        assert!(decode_head(&key(), &t).unwrap_err().contains("bad tag"));
        assert!(decode_head(&key(), &h[..HEAD_LEN - 1]).is_err());
        assert!(decode_head(&key(), b"").is_err());
        let other = SecretKey::from_slice(&[8u8; 32]).unwrap();
        assert!(decode_head(&other, &h).is_err());
        assert_eq!(
            decode_head(&key(), &encode_head(&mac_key(), u64::MAX, &mac))
                .unwrap()
                .0,
            u64::MAX
        );
    }
}
