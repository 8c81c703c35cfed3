//! KMIP's Tag-Type-Length-Value encoding (KMIP 1.x, section 9.1).
//!
//! An item is a 3-byte tag, a 1-byte type, a 4-byte big-endian length and
//! the value, padded with zeros to a multiple of 8 bytes. A structure's value
//! is its items, one after the other.
//!
//! Decoding takes bytes from the network and never panics: a length beyond
//! the buffer, a wrong fixed length, non-zero padding, an unknown type,
//! nesting deeper than [`MAX_DEPTH`] or a message larger than
//! [`MAX_MESSAGE`] is a [`ProviderError::Protocol`]. Byte strings (which
//! carry key material) are held in [`SecretBytes`]: wiped on drop, never
//! printed.

use std::io::Read;

use atrest_crypto::SecretBytes;

use crate::ProviderError;

/// The largest message read or decoded (header included).
pub const MAX_MESSAGE: usize = 1 << 20;
/// The deepest nesting of structures decoded (the top-level item is depth 1).
pub const MAX_DEPTH: usize = 16;

const HEADER: usize = 8;

/// KMIP's item types (the byte after the tag).
pub mod types {
    /// Structure.
    pub const STRUCTURE: u8 = 0x01;
    /// Integer (32-bit signed).
    pub const INTEGER: u8 = 0x02;
    /// Long Integer (64-bit signed).
    pub const LONG_INTEGER: u8 = 0x03;
    /// Big Integer (two's complement, a multiple of 8 bytes).
    pub const BIG_INTEGER: u8 = 0x04;
    /// Enumeration (32-bit unsigned).
    pub const ENUMERATION: u8 = 0x05;
    /// Boolean (64-bit, 0 or 1).
    pub const BOOLEAN: u8 = 0x06;
    /// Text String (UTF-8).
    pub const TEXT_STRING: u8 = 0x07;
    /// Byte String.
    pub const BYTE_STRING: u8 = 0x08;
    /// Date-Time (64-bit signed seconds since the epoch).
    pub const DATE_TIME: u8 = 0x09;
    /// Interval (32-bit unsigned seconds).
    pub const INTERVAL: u8 = 0x0A;
}

/// A value.
#[derive(Debug, PartialEq, Eq)]
pub enum Value {
    /// Items, in order.
    Structure(Vec<Item>),
    /// 32-bit signed.
    Integer(i32),
    /// 64-bit signed.
    LongInteger(i64),
    /// Big-endian two's complement, a multiple of 8 bytes.
    BigInteger(Vec<u8>),
    /// 32-bit unsigned.
    Enumeration(u32),
    /// A boolean.
    Boolean(bool),
    /// UTF-8 text.
    TextString(String),
    /// Bytes (possibly key material: wiped on drop, never printed).
    ByteString(SecretBytes),
    /// Seconds since the epoch.
    DateTime(i64),
    /// Seconds.
    Interval(u32),
}

impl Value {
    fn type_byte(&self) -> u8 {
        match self {
            Self::Structure(_) => types::STRUCTURE,
            Self::Integer(_) => types::INTEGER,
            Self::LongInteger(_) => types::LONG_INTEGER,
            Self::BigInteger(_) => types::BIG_INTEGER,
            Self::Enumeration(_) => types::ENUMERATION,
            Self::Boolean(_) => types::BOOLEAN,
            Self::TextString(_) => types::TEXT_STRING,
            Self::ByteString(_) => types::BYTE_STRING,
            Self::DateTime(_) => types::DATE_TIME,
            Self::Interval(_) => types::INTERVAL,
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            Self::Structure(_) => "Structure",
            Self::Integer(_) => "Integer",
            Self::LongInteger(_) => "Long Integer",
            Self::BigInteger(_) => "Big Integer",
            Self::Enumeration(_) => "Enumeration",
            Self::Boolean(_) => "Boolean",
            Self::TextString(_) => "Text String",
            Self::ByteString(_) => "Byte String",
            Self::DateTime(_) => "Date-Time",
            Self::Interval(_) => "Interval",
        }
    }
}

/// A tagged value.
#[derive(Debug, PartialEq, Eq)]
pub struct Item {
    /// The tag (24 bits; KMIP's own tags are 0x42xxxx).
    pub tag: u32,
    /// The value.
    pub value: Value,
}

fn protocol(m: impl Into<String>) -> ProviderError {
    ProviderError::Protocol(format!("KMIP TTLV: {}", m.into()))
}

fn padded(len: usize) -> usize {
    len.div_ceil(8) * 8
}

impl Item {
    /// A structure.
    #[must_use]
    pub fn structure(tag: u32, items: Vec<Item>) -> Self {
        Self {
            tag,
            value: Value::Structure(items),
        }
    }
    /// An integer.
    #[must_use]
    pub fn integer(tag: u32, v: i32) -> Self {
        Self {
            tag,
            value: Value::Integer(v),
        }
    }
    /// An enumeration.
    #[must_use]
    pub fn enumeration(tag: u32, v: u32) -> Self {
        Self {
            tag,
            value: Value::Enumeration(v),
        }
    }
    /// A text string.
    #[must_use]
    pub fn text(tag: u32, v: &str) -> Self {
        Self {
            tag,
            value: Value::TextString(v.to_owned()),
        }
    }

    // -- encoding -----------------------------------------------------------

    /// The encoding of this item.
    pub fn encode(&self) -> Result<Vec<u8>, ProviderError> {
        let mut out = Vec::new();
        self.encode_into(&mut out)?;
        Ok(out)
    }

    fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), ProviderError> {
        if self.tag > 0x00FF_FFFF {
            return Err(protocol(format!(
                "tag {:#x} is wider than 24 bits",
                self.tag
            )));
        }
        out.extend_from_slice(&self.tag.to_be_bytes()[1..]);
        out.push(self.value.type_byte());
        let len_at = out.len();
        out.extend_from_slice(&[0; 4]);
        let start = out.len();
        let length = match &self.value {
            Value::Structure(items) => {
                for item in items {
                    item.encode_into(out)?;
                }
                out.len() - start
            }
            Value::Integer(v) => {
                out.extend_from_slice(&v.to_be_bytes());
                4
            }
            Value::Enumeration(v) | Value::Interval(v) => {
                out.extend_from_slice(&v.to_be_bytes());
                4
            }
            Value::LongInteger(v) | Value::DateTime(v) => {
                out.extend_from_slice(&v.to_be_bytes());
                8
            }
            Value::Boolean(b) => {
                out.extend_from_slice(&u64::from(*b).to_be_bytes());
                8
            }
            Value::BigInteger(b) => {
                if b.is_empty() || b.len() % 8 != 0 {
                    return Err(protocol(
                        "a Big Integer must be a non-zero multiple of 8 bytes",
                    ));
                }
                out.extend_from_slice(b);
                b.len()
            }
            Value::TextString(s) => {
                out.extend_from_slice(s.as_bytes());
                s.len()
            }
            Value::ByteString(b) => {
                out.extend_from_slice(b.expose());
                b.len()
            }
        };
        let length32 = u32::try_from(length)
            .ok()
            .filter(|_| start + padded(length) <= MAX_MESSAGE)
            .ok_or_else(|| protocol("an item is too large"))?;
        out[len_at..start].copy_from_slice(&length32.to_be_bytes());
        out.resize(start + padded(length), 0);
        Ok(())
    }

    // -- decoding -----------------------------------------------------------

    /// Decodes exactly one item filling `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Self, ProviderError> {
        if bytes.len() > MAX_MESSAGE {
            return Err(protocol(format!(
                "a message of {} bytes is larger than {MAX_MESSAGE}",
                bytes.len()
            )));
        }
        let (item, used) = decode_one(bytes, 1)?;
        if used != bytes.len() {
            return Err(protocol(format!(
                "{} bytes follow the message",
                bytes.len() - used
            )));
        }
        Ok(item)
    }

    // -- reading ------------------------------------------------------------

    /// The first child with `tag`, if this is a structure.
    #[must_use]
    pub fn child(&self, tag: u32) -> Option<&Item> {
        self.children(tag).next()
    }

    /// Every child with `tag`, if this is a structure.
    pub fn children(&self, tag: u32) -> impl Iterator<Item = &Item> {
        let items: &[Item] = match &self.value {
            Value::Structure(items) => items,
            _ => &[],
        };
        items.iter().filter(move |i| i.tag == tag)
    }

    /// The child with `tag`, or a Protocol error naming `what`.
    pub fn need(&self, tag: u32, what: &str) -> Result<&Item, ProviderError> {
        self.child(tag)
            .ok_or_else(|| protocol(format!("no {what} ({tag:#08x}) in {:#08x}", self.tag)))
    }

    fn wrong(&self, want: &str) -> ProviderError {
        protocol(format!(
            "item {:#08x} is a {}, not a {want}",
            self.tag,
            self.value.type_name()
        ))
    }

    /// The items of a structure.
    pub fn as_structure(&self) -> Result<&[Item], ProviderError> {
        match &self.value {
            Value::Structure(items) => Ok(items),
            _ => Err(self.wrong("Structure")),
        }
    }
    /// An integer's value.
    pub fn as_integer(&self) -> Result<i32, ProviderError> {
        match self.value {
            Value::Integer(v) => Ok(v),
            _ => Err(self.wrong("Integer")),
        }
    }
    /// An enumeration's value.
    pub fn as_enumeration(&self) -> Result<u32, ProviderError> {
        match self.value {
            Value::Enumeration(v) => Ok(v),
            _ => Err(self.wrong("Enumeration")),
        }
    }
    /// A text string's value.
    pub fn as_text(&self) -> Result<&str, ProviderError> {
        match &self.value {
            Value::TextString(s) => Ok(s),
            _ => Err(self.wrong("Text String")),
        }
    }
    /// A byte string's value.
    pub fn as_bytes(&self) -> Result<&SecretBytes, ProviderError> {
        match &self.value {
            Value::ByteString(b) => Ok(b),
            _ => Err(self.wrong("Byte String")),
        }
    }
}

fn fixed<const N: usize>(value: &[u8], tag: u32, len: usize) -> Result<[u8; N], ProviderError> {
    if len != N {
        return Err(protocol(format!(
            "item {tag:#08x}: length {len}, expected {N}"
        )));
    }
    value
        .get(..N)
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| protocol(format!("item {tag:#08x} is truncated")))
}

/// Decodes the item at the start of `bytes`; returns it and the bytes used
/// (padding included).
fn decode_one(bytes: &[u8], depth: usize) -> Result<(Item, usize), ProviderError> {
    if depth > MAX_DEPTH {
        return Err(protocol(format!(
            "structures nested deeper than {MAX_DEPTH}"
        )));
    }
    let Some(header) = bytes.first_chunk::<HEADER>() else {
        return Err(protocol(format!(
            "{} bytes cannot hold an item header",
            bytes.len()
        )));
    };
    let tag = u32::from_be_bytes([0, header[0], header[1], header[2]]);
    let ty = header[3];
    let len = usize::try_from(u32::from_be_bytes([
        header[4], header[5], header[6], header[7],
    ]))
    .map_err(|_| protocol("length does not fit"))?;
    let total = len
        .checked_add(7)
        .map(|l| l / 8 * 8)
        .and_then(|l| l.checked_add(HEADER))
        .filter(|&t| t <= bytes.len())
        .ok_or_else(|| {
            protocol(format!(
                "item {tag:#08x}: length {len} runs past the {} bytes left",
                bytes.len().saturating_sub(HEADER)
            ))
        })?;
    let (value, padding) = bytes
        .get(HEADER..total)
        .map(|v| v.split_at(len.min(v.len())))
        .ok_or_else(|| protocol(format!("item {tag:#08x} is truncated")))?;
    if padding.iter().any(|&b| b != 0) {
        return Err(protocol(format!("item {tag:#08x}: non-zero padding")));
    }
    let value = match ty {
        types::STRUCTURE => {
            if len % 8 != 0 {
                return Err(protocol(format!(
                    "structure {tag:#08x}: length {len} is not a multiple of 8"
                )));
            }
            let mut items = Vec::new();
            let mut at = 0;
            while at < value.len() {
                let rest = value
                    .get(at..)
                    .ok_or_else(|| protocol(format!("structure {tag:#08x} is truncated")))?;
                let (item, used) = decode_one(rest, depth + 1)?;
                items.push(item);
                at += used;
            }
            Value::Structure(items)
        }
        types::INTEGER => Value::Integer(i32::from_be_bytes(fixed(value, tag, len)?)),
        types::LONG_INTEGER => Value::LongInteger(i64::from_be_bytes(fixed(value, tag, len)?)),
        types::BIG_INTEGER => {
            if len == 0 || len % 8 != 0 {
                return Err(protocol(format!(
                    "big integer {tag:#08x}: length {len} is not a non-zero multiple of 8"
                )));
            }
            Value::BigInteger(value.to_vec())
        }
        types::ENUMERATION => Value::Enumeration(u32::from_be_bytes(fixed(value, tag, len)?)),
        types::BOOLEAN => match u64::from_be_bytes(fixed(value, tag, len)?) {
            0 => Value::Boolean(false),
            1 => Value::Boolean(true),
            other => {
                return Err(protocol(format!(
                    "boolean {tag:#08x}: value {other} is neither 0 nor 1"
                )));
            }
        },
        types::TEXT_STRING => Value::TextString(
            std::str::from_utf8(value)
                .map_err(|_| protocol(format!("text string {tag:#08x} is not UTF-8")))?
                .to_owned(),
        ),
        types::BYTE_STRING => Value::ByteString(SecretBytes::new(value.to_vec())),
        types::DATE_TIME => Value::DateTime(i64::from_be_bytes(fixed(value, tag, len)?)),
        types::INTERVAL => Value::Interval(u32::from_be_bytes(fixed(value, tag, len)?)),
        other => {
            return Err(protocol(format!(
                "item {tag:#08x}: unknown type {other:#04x}"
            )));
        }
    };
    Ok((Item { tag, value }, total))
}

/// Reads one message (a top-level structure) from `r`: its header, then the
/// length the header gives, at most [`MAX_MESSAGE`] in all. The bytes are
/// held in [`SecretBytes`] (a response may carry key material). I/O errors
/// are returned as they are, for the caller to classify.
pub fn read_message(
    r: &mut impl Read,
) -> Result<Result<SecretBytes, ProviderError>, std::io::Error> {
    let mut header = [0u8; HEADER];
    r.read_exact(&mut header)?;
    if header[3] != types::STRUCTURE {
        return Ok(Err(protocol(format!(
            "a message must be a structure, not type {:#04x}",
            header[3]
        ))));
    }
    let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    let total = usize::try_from(len)
        .ok()
        .and_then(|l| l.checked_add(HEADER))
        .filter(|&t| t <= MAX_MESSAGE);
    let Some(total) = total else {
        return Ok(Err(protocol(format!(
            "a message of {len} bytes is larger than {MAX_MESSAGE}"
        ))));
    };
    let mut buf = SecretBytes::new(vec![0u8; total]);
    buf.expose_mut()[..HEADER].copy_from_slice(&header);
    r.read_exact(&mut buf.expose_mut()[HEADER..])?;
    Ok(Ok(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Item {
        Item::structure(
            0x42_0078,
            vec![
                Item::structure(
                    0x42_0077,
                    vec![
                        Item::integer(0x42_006A, 1),
                        Item::integer(0x42_006B, -2),
                        Item {
                            tag: 0x42_0001,
                            value: Value::LongInteger(-1_234_567_890_123),
                        },
                        Item {
                            tag: 0x42_0002,
                            value: Value::BigInteger(vec![0xFF; 16]),
                        },
                    ],
                ),
                Item::enumeration(0x42_005C, 0x0A),
                Item {
                    tag: 0x42_0003,
                    value: Value::Boolean(true),
                },
                Item {
                    tag: 0x42_0004,
                    value: Value::Boolean(false),
                },
                Item::text(0x42_0094, "héllo"),
                Item::text(0x42_0095, ""),
                Item {
                    tag: 0x42_0043,
                    value: Value::ByteString(SecretBytes::new(vec![1, 2, 3, 4, 5, 6, 7, 8, 9])),
                },
                Item {
                    tag: 0x42_0092,
                    value: Value::DateTime(1_700_000_000),
                },
                Item {
                    tag: 0x42_0005,
                    value: Value::Interval(86_400),
                },
                Item::structure(0x42_0006, vec![]),
            ],
        )
    }

    #[test]
    fn round_trips_every_type() {
        let item = sample();
        let bytes = item.encode().unwrap();
        assert_eq!(bytes.len() % 8, 0);
        assert_eq!(Item::decode(&bytes).unwrap(), item);
        // Read through read_message too.
        let read = read_message(&mut &bytes[..]).unwrap().unwrap();
        assert_eq!(read.expose(), &bytes[..]);
    }

    #[test]
    fn matches_the_specification_examples() {
        // KMIP 1.2 section 9.1.2 examples.
        let int = Item::integer(0x42_0020, 8).encode().unwrap();
        assert_eq!(hex::encode(int), "42002002000000040000000800000000");
        let long = Item {
            tag: 0x42_0020,
            value: Value::LongInteger(123_456_789_000_000_000),
        }
        .encode()
        .unwrap();
        assert_eq!(hex::encode(long), "420020030000000801b69b4ba5749200");
        let e = Item::enumeration(0x42_0020, 255).encode().unwrap();
        assert_eq!(hex::encode(e), "4200200500000004000000ff00000000");
        let t = Item::text(0x42_0020, "Hello World").encode().unwrap();
        assert_eq!(
            hex::encode(t),
            "420020070000000b48656c6c6f20576f726c640000000000"
        );
        let s = Item::structure(
            0x42_0020,
            vec![
                Item::enumeration(0x42_0004, 254),
                Item::integer(0x42_0005, 255),
            ],
        )
        .encode()
        .unwrap();
        assert_eq!(
            hex::encode(s),
            "42002001000000204200040500000004000000fe000000004200050200000004000000ff00000000"
        );
    }

    #[test]
    fn accessors() {
        let item = sample();
        assert_eq!(
            item.need(0x42_005C, "op")
                .unwrap()
                .as_enumeration()
                .unwrap(),
            10
        );
        assert_eq!(item.child(0x42_0094).unwrap().as_text().unwrap(), "héllo");
        assert_eq!(item.child(0x42_0043).unwrap().as_bytes().unwrap().len(), 9);
        assert!(item.child(0x42_0094).unwrap().as_integer().is_err());
        assert!(item.need(0x42_9999, "nothing").is_err());
        assert_eq!(item.children(0x42_0094).count(), 1);
        // Byte strings never print.
        assert!(!format!("{item:?}").contains("[1, 2, 3"));
    }

    fn is_protocol<T: std::fmt::Debug>(r: &Result<T, ProviderError>) -> bool {
        matches!(r, Err(ProviderError::Protocol(_)))
    }

    #[test]
    fn refuses_malformed_input_without_panicking() {
        let good = sample().encode().unwrap();
        // Every truncation.
        for n in 0..good.len() {
            assert!(is_protocol(&Item::decode(&good[..n])), "truncated to {n}");
        }
        // Trailing bytes.
        let mut long = good.clone();
        long.extend_from_slice(&[0; 8]);
        assert!(is_protocol(&Item::decode(&long)));
        // A length far past the buffer.
        let mut big = good.clone();
        big[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(is_protocol(&Item::decode(&big)));
        // An unknown type.
        let mut bad = Item::integer(0x42_0020, 8).encode().unwrap();
        bad[3] = 0x0B;
        assert!(is_protocol(&Item::decode(&bad)));
        bad[3] = 0x00;
        assert!(is_protocol(&Item::decode(&bad)));
        // A wrong fixed length.
        let mut bad = Item::integer(0x42_0020, 8).encode().unwrap();
        bad[7] = 8;
        assert!(is_protocol(&Item::decode(&bad)));
        // Non-zero padding.
        let mut bad = Item::integer(0x42_0020, 8).encode().unwrap();
        bad[15] = 1;
        assert!(is_protocol(&Item::decode(&bad)));
        let mut bad = Item::text(0x42_0020, "abc").encode().unwrap();
        bad[12] = b'x';
        assert!(is_protocol(&Item::decode(&bad)));
        // A boolean that is neither 0 nor 1.
        let mut bad = Item {
            tag: 1,
            value: Value::Boolean(true),
        }
        .encode()
        .unwrap();
        bad[15] = 2;
        assert!(is_protocol(&Item::decode(&bad)));
        // Text that is not UTF-8.
        let mut bad = Item::text(0x42_0020, "ab").encode().unwrap();
        bad[8] = 0xFF;
        assert!(is_protocol(&Item::decode(&bad)));
        // A structure whose child runs past the structure's own length.
        let mut bad = Item::structure(0x42_0020, vec![Item::integer(0x42_0021, 1)])
            .encode()
            .unwrap();
        bad[15] = 24; // the child claims 24 bytes inside a 16-byte structure
        assert!(is_protocol(&Item::decode(&bad)));
        // A structure whose length is not a multiple of 8.
        let mut bad = Item::structure(0x42_0020, vec![Item::integer(0x42_0021, 1)])
            .encode()
            .unwrap();
        bad[7] = 15;
        assert!(is_protocol(&Item::decode(&bad)));
        // Every single flipped bit of a good message either decodes or is a
        // Protocol error; nothing panics.
        for i in 0..good.len() {
            for bit in 0..8 {
                let mut m = good.clone();
                m[i] ^= 1 << bit;
                match Item::decode(&m) {
                    Ok(_) | Err(ProviderError::Protocol(_)) => {}
                    Err(e) => panic!("byte {i} bit {bit}: {e:?}"),
                }
            }
        }
    }

    #[test]
    fn refuses_deep_nesting_and_oversized_messages() {
        let mut item = Item::integer(0x42_0001, 1);
        for _ in 0..MAX_DEPTH {
            item = Item::structure(0x42_0002, vec![item]);
        }
        // MAX_DEPTH structures around an integer: one level too deep.
        let bytes = item.encode().unwrap();
        assert!(is_protocol(&Item::decode(&bytes)));
        let Value::Structure(mut inner) = item.value else {
            panic!()
        };
        let ok = inner.pop().unwrap().encode().unwrap();
        assert!(Item::decode(&ok).is_ok());

        // A header announcing more than MAX_MESSAGE: refused before reading.
        let mut header = vec![0x42, 0x00, 0x7B, types::STRUCTURE];
        header.extend_from_slice(&u32::try_from(MAX_MESSAGE).unwrap().to_be_bytes());
        assert!(is_protocol(&read_message(&mut &header[..]).unwrap()));
        // A first item that is not a structure.
        let int = Item::integer(0x42_0001, 1).encode().unwrap();
        assert!(is_protocol(&read_message(&mut &int[..]).unwrap()));
        // A short read is an I/O error (the caller classifies it).
        let good = sample().encode().unwrap();
        assert!(read_message(&mut &good[..good.len() - 1]).is_err());
        // Decoding more than MAX_MESSAGE bytes is refused.
        assert!(is_protocol(&Item::decode(&vec![0u8; MAX_MESSAGE + 8])));
        // Encoding a too-large item is refused.
        let huge = Item {
            tag: 1,
            value: Value::ByteString(SecretBytes::new(vec![0; MAX_MESSAGE])),
        };
        assert!(huge.encode().is_err());
        let wide = Item::integer(0x0100_0000, 1);
        assert!(wide.encode().is_err());
    }
}
