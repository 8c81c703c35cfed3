//! Identities and their keys: the lookup the handshake asks, and the
//! `keys.psk` file that qemu, libnbd and GnuTLS's `psktool` share.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use zeroize::Zeroizing;

use crate::Error;

/// The shortest key accepted, in bytes (128 bits).
pub const MIN_KEY_LEN: usize = 16;
/// The longest key accepted, in bytes (`psktool -s` allows up to 64).
pub const MAX_KEY_LEN: usize = 64;

/// Looks up the key for a PSK identity.
///
/// Called from inside the handshake, on the task driving it: it must not
/// block for long. `None` means the identity is unknown and the handshake
/// fails with [`Error::UnknownIdentity`]; a key outside
/// [`MIN_KEY_LEN`]`..=`[`MAX_KEY_LEN`] fails it with
/// [`Error::BadKeyLength`].
pub trait PskLookup: Send + Sync + 'static {
    /// The key for `identity`, or `None` if the identity is unknown.
    fn key(&self, identity: &str) -> Option<Zeroizing<Vec<u8>>>;
}

/// The identities and keys of a PSK file: one `identity:hexkey` per line,
/// the format of qemu's `tls-creds-psk` `keys.psk`, libnbd's
/// `nbd_set_tls_psk_file` and GnuTLS's `psktool`.
///
/// Empty lines are skipped; anything else that is not an identity (not
/// empty, no `:`) followed by an even number of hex digits decoding to
/// 16..=64 bytes is refused, as is an identity given twice. Keys live only
/// in zeroizing buffers, and [`fmt::Debug`] lists identities, never keys.
#[derive(Clone, Default)]
pub struct PskFile {
    keys: BTreeMap<String, Zeroizing<Vec<u8>>>,
}

impl PskFile {
    /// Parses the text of a PSK file.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let mut keys = BTreeMap::new();
        for (index, line) in text.split('\n').enumerate() {
            let line_no = index + 1;
            let bad = |reason| Error::PskFile {
                line: line_no,
                reason,
            };
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.is_empty() {
                continue;
            }
            let (identity, hex) = line
                .split_once(':')
                .ok_or(bad("no ':' after the identity"))?;
            if identity.is_empty() {
                return Err(bad("empty identity"));
            }
            let key = decode_key(hex).map_err(bad)?;
            if keys.insert(identity.to_owned(), key).is_some() {
                return Err(bad("identity given twice"));
            }
        }
        Ok(Self { keys })
    }

    /// Reads and parses a PSK file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let bytes = Zeroizing::new(std::fs::read(path).map_err(Error::Io)?);
        let text = std::str::from_utf8(&bytes).map_err(|_| Error::PskFile {
            line: 0,
            reason: "not UTF-8",
        })?;
        Self::parse(text)
    }

    /// Adds (or replaces) one identity, checking the key's length.
    pub fn insert(&mut self, identity: &str, key: Zeroizing<Vec<u8>>) -> Result<(), Error> {
        if !(MIN_KEY_LEN..=MAX_KEY_LEN).contains(&key.len()) {
            return Err(Error::BadKeyLength {
                identity: identity.to_owned(),
                len: key.len(),
            });
        }
        self.keys.insert(identity.to_owned(), key);
        Ok(())
    }

    /// The identities, in order.
    pub fn identities(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// How many identities the file holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the file holds no identity.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl PskLookup for PskFile {
    fn key(&self, identity: &str) -> Option<Zeroizing<Vec<u8>>> {
        self.keys.get(identity).cloned()
    }
}

impl fmt::Debug for PskFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PskFile")
            .field("identities", &self.keys.keys().collect::<Vec<_>>())
            .field("keys", &"<redacted>")
            .finish()
    }
}

/// Decodes a hex key straight into a zeroizing buffer of its final size (no
/// reallocation leaves a copy behind) and checks its length.
fn decode_key(hex: &str) -> Result<Zeroizing<Vec<u8>>, &'static str> {
    let hex = hex.as_bytes();
    if !hex.len().is_multiple_of(2) {
        return Err("key is an odd number of hex digits");
    }
    let len = hex.len() / 2;
    if !(MIN_KEY_LEN..=MAX_KEY_LEN).contains(&len) {
        return Err("key is not 16 to 64 bytes");
    }
    let mut key = Zeroizing::new(Vec::with_capacity(len));
    for pair in hex.chunks_exact(2) {
        let (Some(high), Some(low)) = (nibble(pair[0]), nibble(pair[1])) else {
            return Err("key is not hex");
        };
        key.push(high << 4 | low);
    }
    Ok(key)
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_HEX: &str = "00112233445566778899aabbccddeeff";

    #[test]
    fn parses_psktool_format() {
        let text = format!("alice:{KEY_HEX}\r\n\nbob:{}\n", "AB".repeat(64));
        let file = PskFile::parse(&text).unwrap();
        assert_eq!(file.identities().collect::<Vec<_>>(), ["alice", "bob"]);
        assert_eq!(
            file.key("alice").unwrap().as_slice()[..4],
            [0, 0x11, 0x22, 0x33]
        );
        assert_eq!(file.key("bob").unwrap().len(), 64);
        assert!(file.key("carol").is_none());
    }

    #[test]
    fn refuses_bad_lines() {
        let cases = [
            (format!("alice{KEY_HEX}"), "no ':'"),
            (format!(":{KEY_HEX}"), "empty identity"),
            ("alice:0011".to_owned(), "16 to 64"),
            (format!("alice:{}", "00".repeat(65)), "16 to 64"),
            (format!("alice:{KEY_HEX}0"), "odd"),
            (format!("alice:{}zz", &KEY_HEX[2..]), "not hex"),
            (format!("alice:{KEY_HEX}\nalice:{KEY_HEX}"), "twice"),
            (format!("alice:{KEY_HEX} "), "odd"),
        ];
        for (text, want) in cases {
            let err = PskFile::parse(&text).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
            // The error never quotes the key text.
            assert!(!err.contains(&KEY_HEX[4..]), "{err}");
        }
    }

    #[test]
    fn debug_never_shows_keys() {
        let file = PskFile::parse(&format!("alice:{KEY_HEX}")).unwrap();
        let debug = format!("{file:?}");
        assert!(debug.contains("alice"), "{debug}");
        assert!(!debug.contains("112233"), "{debug}");
        assert!(!debug.contains("17, 34"), "{debug}");
    }

    #[test]
    fn insert_checks_length() {
        let mut file = PskFile::default();
        let err = file
            .insert("alice", Zeroizing::new(vec![0; 15]))
            .unwrap_err();
        assert!(matches!(err, Error::BadKeyLength { len: 15, .. }));
        file.insert("alice", Zeroizing::new(vec![7; 16])).unwrap();
        assert_eq!(file.len(), 1);
    }

    #[test]
    fn loads_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.psk");
        std::fs::write(&path, format!("alice:{KEY_HEX}\n")).unwrap();
        assert_eq!(PskFile::load(&path).unwrap().len(), 1);
        assert!(matches!(
            PskFile::load(&dir.path().join("missing")),
            Err(Error::Io(_))
        ));
    }
}
