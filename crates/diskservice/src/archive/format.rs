//! The byte formats of snapshots in object storage: block objects and
//! manifests. Documented in `docs/design.md` ("4N. Snapshots in object
//! storage"), so that a snapshot can be read back without atrest.
//!
//! A **block** is [`BLOCK_CHUNKS`] consecutive engine chunks (512 KiB) of a
//! snapshot, as the engine stores them (ciphertext of an encrypted disk):
//!
//! ```text
//! "ATRB" | version (1) | n: chunk count, 1..=8 | 0x00 0x00
//!        | n × u32 big-endian: stored length of each chunk (0: reads as zeros)
//!        | the chunks' stored bytes, in order
//! ```
//!
//! A chunk's stored bytes are its first `length` bytes; the rest of the
//! chunk reads as zeros. Its object is named by the SHA-256 of the whole
//! object (`blocks/<lineage>/<hex>`), so a block is written once whatever
//! number of snapshots share it, and every read checks the name.
//!
//! A **manifest** (`snapshots/<id>/manifest`, JSON) says what a snapshot
//! is: its size, block size, wrapped data key, and for every block index
//! that holds data, the block's digest. Indexes it leaves out read as
//! zeros. The metadata store keeps the manifest's SHA-256 with the
//! snapshot's record, the commit point.

use std::collections::BTreeMap;

use atrest_disk::{CHUNK, RawChunk};
use serde::{Deserialize, Serialize};

/// Engine chunks per block.
pub const BLOCK_CHUNKS: u64 = 8;
/// Bytes of disk per block (512 KiB, as EBS).
pub const BLOCK_BYTES: u64 = BLOCK_CHUNKS * CHUNK;
/// The manifest format's name and version.
pub const MANIFEST_FORMAT: &str = "atrest-snapshot-manifest/1";

const MAGIC: &[u8; 4] = b"ATRB";
const VERSION: u8 = 1;
const HEADER: usize = 8;

/// A format error: the object's bytes are not what its name or the format
/// says.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("object {object} is corrupt: {detail}")]
pub struct Corrupt {
    /// The object's name.
    pub object: String,
    /// What is wrong.
    pub detail: String,
}

fn corrupt(object: &str, detail: impl Into<String>) -> Corrupt {
    Corrupt {
        object: object.to_owned(),
        detail: detail.into(),
    }
}

/// Encodes the chunks of one block (1 to [`BLOCK_CHUNKS`] of them), or
/// `None` when all read as zeros (nothing is stored for such a block).
#[must_use]
pub fn encode_block(chunks: &[RawChunk]) -> Option<Vec<u8>> {
    debug_assert!(!chunks.is_empty() && chunks.len() as u64 <= BLOCK_CHUNKS);
    if chunks.iter().all(|c| matches!(c, RawChunk::Zero)) {
        return None;
    }
    let data: usize = chunks
        .iter()
        .map(|c| match c {
            RawChunk::Zero => 0,
            RawChunk::Data { bytes } => bytes.len(),
        })
        .sum();
    let mut out = Vec::with_capacity(HEADER + 4 * chunks.len() + data);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(u8::try_from(chunks.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(&[0, 0]);
    for c in chunks {
        let len = match c {
            RawChunk::Zero => 0,
            RawChunk::Data { bytes } => bytes.len(),
        };
        out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    }
    for c in chunks {
        if let RawChunk::Data { bytes } = c {
            out.extend_from_slice(bytes);
        }
    }
    Some(out)
}

/// The digest that names a block object (lowercase hex SHA-256).
#[must_use]
pub fn digest(object: &[u8]) -> String {
    hex::encode(atrest_crypto::hash::sha256(object))
}

/// The object name of the block with `digest` in `lineage`.
#[must_use]
pub fn block_name(lineage: &str, digest: &str) -> String {
    format!("blocks/{lineage}/{digest}")
}

/// The object name of snapshot `id`'s manifest.
#[must_use]
pub fn manifest_name(id: &str) -> String {
    format!("snapshots/{id}/manifest")
}

/// Decodes a block object read from `name`, checking that its SHA-256 is
/// `expect` (the digest its manifest names) and that every chunk is a
/// whole number of `block_size` sectors of at most [`CHUNK`] bytes.
pub fn decode_block(
    name: &str,
    bytes: &[u8],
    expect: &str,
    block_size: u32,
) -> Result<Vec<RawChunk>, Corrupt> {
    let got = digest(bytes);
    if got != expect {
        return Err(corrupt(
            name,
            format!("its SHA-256 is {got}, not the {expect} its manifest names"),
        ));
    }
    if bytes.len() < HEADER || &bytes[..4] != MAGIC {
        return Err(corrupt(name, "not a block object (bad magic)"));
    }
    if bytes[4] != VERSION {
        return Err(corrupt(name, format!("unknown block version {}", bytes[4])));
    }
    let n = usize::from(bytes[5]);
    if n == 0 || n as u64 > BLOCK_CHUNKS || bytes[6..8] != [0, 0] {
        return Err(corrupt(name, "bad block header"));
    }
    let lens_end = HEADER + 4 * n;
    let Some(lens) = bytes.get(HEADER..lens_end) else {
        return Err(corrupt(name, "truncated block header"));
    };
    let mut at = lens_end;
    let mut out = Vec::with_capacity(n);
    for l in lens.chunks_exact(4) {
        let len = u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize;
        if len == 0 {
            out.push(RawChunk::Zero);
            continue;
        }
        if len as u64 > CHUNK || !len.is_multiple_of(block_size as usize) {
            return Err(corrupt(name, format!("a chunk of {len} bytes")));
        }
        let Some(data) = bytes.get(at..at + len) else {
            return Err(corrupt(name, "truncated block data"));
        };
        out.push(RawChunk::Data {
            bytes: data.to_vec(),
        });
        at += len;
    }
    if at != bytes.len() {
        return Err(corrupt(name, "trailing bytes after the block data"));
    }
    Ok(out)
}

/// The wrapped data key in a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestKey {
    /// The master key (ARN).
    pub key_arn: String,
    /// The key service's ciphertext blob of the 64-byte XTS key (base64).
    pub wrapped: String,
    /// The encryption context it was wrapped for.
    pub context: BTreeMap<String, String>,
}

/// A snapshot's manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`].
    pub format: String,
    /// The snapshot's id.
    pub id: String,
    /// The lineage its blocks are stored under.
    pub lineage: String,
    /// The disk it was taken of.
    pub disk: String,
    /// Size in bytes.
    pub size: u64,
    /// Logical block size (the XTS data unit).
    pub block_size: u32,
    /// Engine chunk size ([`CHUNK`]).
    pub chunk_size: u64,
    /// Chunks per block ([`BLOCK_CHUNKS`]).
    pub block_chunks: u64,
    /// The cipher: `AES-256-XTS` (tweak: the logical sector number,
    /// little-endian, in the first 8 bytes of the 16) or `none`.
    pub cipher: String,
    /// The wrapped data key (absent: unencrypted).
    pub key: Option<ManifestKey>,
    /// Owning account and region, creation time.
    pub account: String,
    /// Region.
    pub region: String,
    /// Creation time (RFC 3339).
    pub created: String,
    /// Block index → digest, for every block that holds data.
    pub blocks: BTreeMap<u64, String>,
    /// For an encrypted snapshot: HMAC-SHA256 (hex) of the manifest's
    /// bytes without this member, under a key derived from the data key
    /// ([`Manifest::seal`]), so that whoever can unwrap the data key can
    /// trust the manifest without atrest's metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

impl Manifest {
    /// Parses and checks a manifest read from `name`.
    pub fn decode(name: &str, bytes: &[u8]) -> Result<Self, Corrupt> {
        let m: Self = serde_json::from_slice(bytes)
            .map_err(|e| corrupt(name, format!("not a manifest: {e}")))?;
        if m.format != MANIFEST_FORMAT {
            return Err(corrupt(name, format!("unknown format {:?}", m.format)));
        }
        if m.chunk_size != CHUNK || m.block_chunks != BLOCK_CHUNKS {
            return Err(corrupt(name, "unsupported chunk or block size"));
        }
        if m.block_size != 512 && m.block_size != 4096 {
            return Err(corrupt(name, format!("block size {}", m.block_size)));
        }
        atrest_disk::check_size(m.size).map_err(|e| corrupt(name, e.to_string()))?;
        let nblocks = m.size.div_ceil(BLOCK_BYTES);
        if let Some((&last, _)) = m.blocks.last_key_value()
            && last >= nblocks
        {
            return Err(corrupt(name, format!("block {last} is past the end")));
        }
        if m.blocks
            .values()
            .any(|d| d.len() != 64 || !d.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(corrupt(name, "a block digest is not SHA-256 hex"));
        }
        if !valid_id(&m.lineage) || !valid_id(&m.id) {
            return Err(corrupt(name, "bad id or lineage"));
        }
        Ok(m)
    }

    /// The manifest's bytes (deterministic: maps are ordered).
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The MAC of this manifest under `data_key`.
    fn tag(&self, data_key: &[u8]) -> Option<String> {
        let unsealed = Self {
            mac: None,
            ..self.clone()
        };
        let key = atrest_crypto::kdf::hkdf_sha256(
            data_key,
            b"",
            &[b"atrest snapshot manifest v1\0", self.id.as_bytes()],
        )
        .ok()?;
        Some(hex::encode(atrest_crypto::hash::hmac_sha256(
            key.expose(),
            &unsealed.encode(),
        )))
    }

    /// Sets [`Manifest::mac`] under the snapshot's data key: HMAC-SHA256
    /// with the key HKDF-SHA256(data key, salt empty, info
    /// `"atrest snapshot manifest v1\0" || id`).
    pub fn seal(&mut self, data_key: &atrest_crypto::XtsKey) {
        self.mac = self.tag(data_key.expose());
    }

    /// Checks [`Manifest::mac`] under `data_key` (constant time).
    pub fn verify(&self, name: &str, data_key: &atrest_crypto::XtsKey) -> Result<(), Corrupt> {
        let (Some(got), Some(want)) = (&self.mac, self.tag(data_key.expose())) else {
            return Err(corrupt(name, "it is not authenticated (no MAC)"));
        };
        if subtle::ConstantTimeEq::ct_eq(got.as_bytes(), want.as_bytes()).into() {
            Ok(())
        } else {
            Err(corrupt(name, "its MAC does not match its data key"))
        }
    }
}

/// An id usable in an object name: `[a-z0-9-]`, 1 to 64 characters.
#[must_use]
pub fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, v: u8) -> RawChunk {
        RawChunk::Data { bytes: vec![v; n] }
    }

    #[test]
    fn blocks_round_trip_and_zero_blocks_are_not_stored() {
        assert!(encode_block(&[RawChunk::Zero, RawChunk::Zero]).is_none());
        let chunks = vec![
            data(CHUNK as usize, 1),
            RawChunk::Zero,
            data(4096, 2),
            data(512, 3),
        ];
        let obj = encode_block(&chunks).unwrap();
        let d = digest(&obj);
        assert_eq!(decode_block("b", &obj, &d, 512).unwrap(), chunks);
        // 4096-byte sectors: a 512-byte chunk is not a whole sector.
        assert!(decode_block("b", &obj, &d, 4096).is_err());
    }

    #[test]
    fn tampered_truncated_or_misnamed_blocks_are_refused_naming_the_object() {
        let obj = encode_block(&[data(8192, 7)]).unwrap();
        let d = digest(&obj);
        let mut bad = obj.clone();
        bad[20] ^= 1;
        let e = decode_block("blocks/x/y", &bad, &d, 512).unwrap_err();
        assert_eq!(e.object, "blocks/x/y");
        assert!(e.detail.contains("SHA-256"), "{e}");
        let short = &obj[..obj.len() - 512];
        assert!(decode_block("o", short, &d, 512).is_err());
        // A well-formed object whose own digest matches but whose header lies.
        for (at, v) in [(0usize, b'X'), (4, 9), (5, 0), (5, 9), (6, 1)] {
            let mut o = obj.clone();
            o[at] = v;
            let e = decode_block("o", &o, &digest(&o), 512).unwrap_err();
            assert_eq!(e.object, "o");
        }
        let mut long = obj.clone();
        long.push(0);
        assert!(decode_block("o", &long, &digest(&long), 512).is_err());
        let mut lens = obj.clone();
        lens[8..12].copy_from_slice(&(CHUNK as u32 + 512).to_be_bytes());
        assert!(decode_block("o", &lens, &digest(&lens), 512).is_err());
        assert!(decode_block("o", b"", &digest(b""), 512).is_err());
    }

    fn manifest() -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT.into(),
            id: "snap-0011223344556677".into(),
            lineage: "disk-0011223344556677".into(),
            disk: "disk-0011223344556677".into(),
            size: 3 * BLOCK_BYTES,
            block_size: 512,
            chunk_size: CHUNK,
            block_chunks: BLOCK_CHUNKS,
            cipher: "AES-256-XTS".into(),
            key: None,
            account: "123456789012".into(),
            region: "us-east-1".into(),
            created: "2026-12-06T00:00:00Z".into(),
            blocks: BTreeMap::from([(2, "ab".repeat(32))]),
            mac: None,
        }
    }

    #[test]
    fn a_sealed_manifest_verifies_under_its_key_only() {
        let k = atrest_crypto::XtsKey::from_slice(&[7u8; 64]).unwrap();
        let other = atrest_crypto::XtsKey::from_slice(&[8u8; 64]).unwrap();
        let mut m = manifest();
        assert!(m.verify("m", &k).is_err(), "unsealed");
        m.seal(&k);
        let back = Manifest::decode("m", &m.encode()).unwrap();
        back.verify("m", &k).unwrap();
        assert!(back.verify("m", &other).is_err());
        let mut changed = back.clone();
        changed.blocks.insert(1, "cd".repeat(32));
        let e = changed.verify("snapshots/x/manifest", &k).unwrap_err();
        assert_eq!(e.object, "snapshots/x/manifest");
        let mut renamed = back;
        renamed.id = "snap-ffffffffffffffff".into();
        assert!(renamed.verify("m", &k).is_err());
    }

    #[test]
    fn manifests_round_trip_and_bad_ones_are_refused() {
        let m = manifest();
        assert_eq!(Manifest::decode("m", &m.encode()).unwrap(), m);
        let mut past = m.clone();
        past.blocks.insert(3, "ab".repeat(32));
        let e = Manifest::decode("m", &past.encode()).unwrap_err();
        assert!(e.detail.contains("past the end"), "{e}");
        let mut digest = m.clone();
        digest.blocks.insert(0, "zz".into());
        assert!(Manifest::decode("m", &digest.encode()).is_err());
        let mut lineage = m.clone();
        lineage.lineage = "../x".into();
        assert!(Manifest::decode("m", &lineage.encode()).is_err());
        let mut format = m;
        format.format = "other/1".into();
        assert!(Manifest::decode("m", &format.encode()).is_err());
        assert!(Manifest::decode("m", b"{").is_err());
        assert!(
            Manifest::decode("m", br#"{"format":"atrest-snapshot-manifest/1","x":1}"#).is_err()
        );
    }
}
