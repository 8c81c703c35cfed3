//! The encrypted artifact format of backups and WAL archives.
//!
//! Every file atrest writes into backup storage (a base backup, a WAL
//! segment, a `.history` or `.backup` file) is one artifact, encrypted
//! under its own data key:
//!
//! ```text
//! header  = magic "ATRBKUP\0" (8) | version 1 (1)
//!           | u32 BE len | wrapped data key (the key service's blob)
//!           | u32 BE len | key ARN (UTF-8)
//!           | u32 BE len | instance id (UTF-8)
//!           | u32 BE len | artifact name (UTF-8)
//! chunk i = AES-256-GCM(data key, nonce_i, aad_i, plaintext_i) | tag (16)
//! ```
//!
//! The plaintext is cut into chunks of [`CHUNK`] bytes; the last chunk is
//! shorter (possibly empty) and is the only one whose final flag is set,
//! so a file whose length is a whole number of chunks still ends with an
//! (empty) final chunk. `nonce_i` is four zero bytes and `i` as a u64 BE:
//! unique because every artifact has a key of its own. `aad_i` is the
//! domain `atrest-backup-chunk-v1`, the SHA-256 of the header bytes, the
//! artifact name (u32 BE length and bytes), `i` (u64 BE) and the final flag
//! (one byte, 0 or 1). Truncation (at or between chunk boundaries),
//! reordered or repeated chunks, a chunk or header from another artifact,
//! and any changed byte all fail authentication when the artifact is
//! opened.

use std::io::{Read, Write};

use atrest_crypto::Aes256Key;
use atrest_crypto::aead::{Aes256Gcm, NONCE_LEN, TAG_LEN};
use atrest_crypto::hash::sha256;

/// Plaintext bytes in every chunk but the last.
pub(crate) const CHUNK: usize = 1 << 20;

const MAGIC: &[u8; 8] = b"ATRBKUP\0";
const VERSION: u8 = 1;
const DOMAIN: &[u8] = b"atrest-backup-chunk-v1";
/// Longest header field accepted when reading (a blob, an ARN, a name).
const MAX_FIELD: usize = 8192;

/// Why an artifact cannot be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ArtifactError {
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Not an artifact, damaged, truncated or tampered with.
    #[error("{0}")]
    Damaged(String),
    /// The crypto library failed.
    #[error("{0}")]
    Crypto(#[from] atrest_crypto::CryptoError),
}

type Result<T, E = ArtifactError> = std::result::Result<T, E>;

/// What an artifact's header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    /// The data key, wrapped by the key service.
    pub wrapped_key: Vec<u8>,
    /// The key it is wrapped under.
    pub key_arn: String,
    /// The instance whose data it holds (its encryption context).
    pub instance: String,
    /// The artifact's name, such as `db-…/wal/000000010000000000000003`.
    pub name: String,
}

impl Header {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.wrapped_key.len() + self.name.len());
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        for f in [
            self.wrapped_key.as_slice(),
            self.key_arn.as_bytes(),
            self.instance.as_bytes(),
            self.name.as_bytes(),
        ] {
            out.extend_from_slice(&u32::try_from(f.len()).unwrap_or(u32::MAX).to_be_bytes());
            out.extend_from_slice(f);
        }
        out
    }

    /// Reads a header; answers it and its bytes.
    pub(crate) fn read(r: &mut impl Read) -> Result<(Self, Vec<u8>)> {
        let mut raw = vec![0u8; MAGIC.len() + 1];
        read_exact(r, &mut raw, "header")?;
        if &raw[..MAGIC.len()] != MAGIC {
            return Err(ArtifactError::Damaged(
                "not an atrest backup artifact".into(),
            ));
        }
        if raw[MAGIC.len()] != VERSION {
            return Err(ArtifactError::Damaged(format!(
                "artifact version {} is not supported",
                raw[MAGIC.len()]
            )));
        }
        let mut fields = Vec::with_capacity(4);
        for _ in 0..4 {
            let mut len = [0u8; 4];
            read_exact(r, &mut len, "header")?;
            raw.extend_from_slice(&len);
            let n = usize::try_from(u32::from_be_bytes(len)).unwrap_or(usize::MAX);
            if n > MAX_FIELD {
                return Err(ArtifactError::Damaged("a header field is too long".into()));
            }
            let mut f = vec![0u8; n];
            read_exact(r, &mut f, "header")?;
            raw.extend_from_slice(&f);
            fields.push(f);
        }
        let text = |f: Vec<u8>| {
            String::from_utf8(f)
                .map_err(|_| ArtifactError::Damaged("a header field is not UTF-8".into()))
        };
        let mut it = fields.into_iter();
        let mut next = || it.next().unwrap_or_default();
        let wrapped_key = next();
        let h = Self {
            wrapped_key,
            key_arn: text(next())?,
            instance: text(next())?,
            name: text(next())?,
        };
        Ok((h, raw))
    }
}

fn read_exact(r: &mut impl Read, buf: &mut [u8], what: &str) -> Result<()> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            ArtifactError::Damaged(format!("the artifact is truncated in its {what}"))
        } else {
            ArtifactError::Io(e)
        }
    })
}

/// Reads until `buf` is full or the input ends; answers how much was read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(n)
}

fn nonce(index: u64) -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    n[NONCE_LEN - 8..].copy_from_slice(&index.to_be_bytes());
    n
}

/// The fixed part of every chunk's AAD.
fn aad_prefix(header_bytes: &[u8], name: &str) -> Vec<u8> {
    let mut a = Vec::with_capacity(DOMAIN.len() + 32 + 4 + name.len() + 9);
    a.extend_from_slice(DOMAIN);
    a.extend_from_slice(&sha256(header_bytes));
    a.extend_from_slice(&u32::try_from(name.len()).unwrap_or(u32::MAX).to_be_bytes());
    a.extend_from_slice(name.as_bytes());
    a
}

fn aad(prefix: &[u8], index: u64, last: bool) -> Vec<u8> {
    let mut a = Vec::with_capacity(prefix.len() + 9);
    a.extend_from_slice(prefix);
    a.extend_from_slice(&index.to_be_bytes());
    a.push(u8::from(last));
    a
}

/// Encrypts a stream into an artifact.
pub(crate) struct Sealer<W: Write> {
    out: W,
    gcm: Aes256Gcm,
    prefix: Vec<u8>,
    buf: zeroize::Zeroizing<Vec<u8>>,
    sealed: Vec<u8>,
    index: u64,
    /// Plaintext bytes taken.
    pub plain_len: u64,
}

impl<W: Write> Sealer<W> {
    /// Writes `header` to `out`; the plaintext follows through
    /// [`Sealer::write_all`].
    pub(crate) fn new(mut out: W, key: &Aes256Key, header: &Header) -> Result<Self> {
        let h = header.encode();
        out.write_all(&h)?;
        Ok(Self {
            out,
            gcm: Aes256Gcm::new(key)?,
            prefix: aad_prefix(&h, &header.name),
            buf: zeroize::Zeroizing::new(Vec::with_capacity(CHUNK)),
            sealed: Vec::with_capacity(CHUNK + TAG_LEN),
            index: 0,
            plain_len: 0,
        })
    }

    fn seal(&mut self, last: bool) -> Result<()> {
        self.sealed.clear();
        self.gcm.seal_append(
            &nonce(self.index),
            &aad(&self.prefix, self.index, last),
            &self.buf,
            &mut self.sealed,
        )?;
        self.out.write_all(&self.sealed)?;
        self.buf.clear();
        self.index += 1;
        Ok(())
    }

    /// Takes more plaintext.
    pub(crate) fn write_all(&mut self, mut data: &[u8]) -> Result<()> {
        self.plain_len += data.len() as u64;
        while !data.is_empty() {
            let take = (CHUNK - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == CHUNK {
                self.seal(false)?;
            }
        }
        Ok(())
    }

    /// Seals the final chunk; answers the output.
    pub(crate) fn finish(mut self) -> Result<W> {
        self.seal(true)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Decrypts an artifact chunk by chunk; every chunk is authenticated
/// before its plaintext is answered.
pub(crate) struct Opener<R: Read> {
    input: R,
    gcm: Aes256Gcm,
    prefix: Vec<u8>,
    buf: Vec<u8>,
    index: u64,
    done: bool,
}

impl<R: Read> Opener<R> {
    /// Continues after [`Header::read`] with the artifact's data key.
    pub(crate) fn new(
        input: R,
        key: &Aes256Key,
        header: &Header,
        header_bytes: &[u8],
    ) -> Result<Self> {
        Ok(Self {
            input,
            gcm: Aes256Gcm::new(key)?,
            prefix: aad_prefix(header_bytes, &header.name),
            buf: vec![0u8; CHUNK + TAG_LEN],
            index: 0,
            done: false,
        })
    }

    /// The next chunk's plaintext; `None` after the final chunk (and only
    /// if nothing follows it).
    pub(crate) fn next_chunk(&mut self) -> Result<Option<atrest_crypto::SecretBytes>> {
        if self.done {
            return Ok(None);
        }
        let n = read_full(&mut self.input, &mut self.buf)?;
        if n < TAG_LEN {
            return Err(ArtifactError::Damaged(format!(
                "the artifact is truncated (chunk {} is missing or short)",
                self.index
            )));
        }
        let last = n < self.buf.len();
        let plain = self
            .gcm
            .open(
                &nonce(self.index),
                &aad(&self.prefix, self.index, last),
                &self.buf[..n],
            )
            .map_err(|_| {
                ArtifactError::Damaged(format!(
                    "chunk {} fails authentication: the artifact was truncated, reordered, swapped or changed",
                    self.index
                ))
            })?;
        self.index += 1;
        if last {
            self.done = true;
            let mut extra = [0u8; 1];
            if read_full(&mut self.input, &mut extra)? != 0 {
                return Err(ArtifactError::Damaged(
                    "data follows the artifact's final chunk".into(),
                ));
            }
        }
        Ok(Some(plain))
    }

    /// The whole plaintext (tests).
    #[cfg(test)]
    pub(crate) fn read_all(mut self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(c) = self.next_chunk()? {
            out.extend_from_slice(c.expose());
        }
        Ok(out)
    }
}

/// Re-seals an opened artifact: every chunk of `from` is authenticated
/// and decrypted, then encrypted under `key` into a new artifact with
/// `header` written to `out`. Nothing of the plaintext is kept beyond one
/// chunk (zeroized when dropped). Answers the output and the plaintext
/// length.
pub(crate) fn reseal<R: Read, W: Write>(
    mut from: Opener<R>,
    out: W,
    key: &Aes256Key,
    header: &Header,
) -> Result<(W, u64)> {
    let mut s = Sealer::new(out, key, header)?;
    while let Some(c) = from.next_chunk()? {
        s.write_all(c.expose())?;
    }
    let plain = s.plain_len;
    Ok((s.finish()?, plain))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str) -> Header {
        Header {
            wrapped_key: vec![7; 40],
            key_arn: "arn:aws:kms:us-east-1:111122223333:key/k".into(),
            instance: "db-0123456789abcdef".into(),
            name: name.into(),
        }
    }

    fn seal(key: &Aes256Key, h: &Header, data: &[u8]) -> Vec<u8> {
        let mut s = Sealer::new(Vec::new(), key, h).unwrap();
        // Odd pieces, to cross chunk boundaries inside one call.
        for piece in data.chunks(333_333) {
            s.write_all(piece).unwrap();
        }
        s.finish().unwrap()
    }

    fn open(key: &Aes256Key, bytes: &[u8]) -> Result<(Header, Vec<u8>)> {
        let mut r = bytes;
        let (h, raw) = Header::read(&mut r)?;
        let data = Opener::new(r, key, &h, &raw)?.read_all()?;
        Ok((h, data))
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn round_trips_at_every_boundary() {
        let key = Aes256Key::generate().unwrap();
        for n in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 2 * CHUNK + 5] {
            let h = header("db-0123456789abcdef/wal/000000010000000000000001");
            let d = data(n);
            let sealed = seal(&key, &h, &d);
            let chunks = n / CHUNK + 1;
            assert_eq!(
                sealed.len(),
                h.encode().len() + n + chunks * TAG_LEN,
                "n {n}"
            );
            let (h2, back) = open(&key, &sealed).unwrap();
            assert_eq!(h2, h);
            assert_eq!(back, d, "n {n}");
        }
    }

    #[test]
    fn truncation_is_detected() {
        let key = Aes256Key::generate().unwrap();
        let h = header("db-0123456789abcdef/base/bk-1.tar");
        let sealed = seal(&key, &h, &data(2 * CHUNK + 100));
        let hlen = h.encode().len();
        let cuts = [
            sealed.len() - 1,
            // Exactly at chunk boundaries: the final chunk, or the last two,
            // gone.
            hlen + 2 * (CHUNK + TAG_LEN),
            hlen + CHUNK + TAG_LEN,
            hlen,
            hlen - 1,
            5,
        ];
        for cut in cuts {
            assert!(
                matches!(open(&key, &sealed[..cut]), Err(ArtifactError::Damaged(_))),
                "cut at {cut}"
            );
        }
        // A whole number of chunks, the final (empty) one cut off.
        let sealed = seal(&key, &h, &data(CHUNK));
        assert!(open(&key, &sealed[..sealed.len() - TAG_LEN]).is_err());
        // Something appended.
        let mut longer = sealed;
        longer.push(0);
        assert!(open(&key, &longer).is_err());
    }

    #[test]
    fn reordered_chunks_are_detected() {
        let key = Aes256Key::generate().unwrap();
        let h = header("db-0123456789abcdef/base/bk-2.tar");
        let sealed = seal(&key, &h, &data(3 * CHUNK + 10));
        let hlen = h.encode().len();
        let c = CHUNK + TAG_LEN;
        let mut swapped = sealed[..hlen].to_vec();
        swapped.extend_from_slice(&sealed[hlen + c..hlen + 2 * c]);
        swapped.extend_from_slice(&sealed[hlen..hlen + c]);
        swapped.extend_from_slice(&sealed[hlen + 2 * c..]);
        assert_eq!(swapped.len(), sealed.len());
        assert!(matches!(
            open(&key, &swapped),
            Err(ArtifactError::Damaged(_))
        ));
        // A chunk repeated in place of another.
        let mut repeated = sealed[..hlen + c].to_vec();
        repeated.extend_from_slice(&sealed[hlen..hlen + c]);
        repeated.extend_from_slice(&sealed[hlen + 2 * c..]);
        assert!(open(&key, &repeated).is_err());
    }

    #[test]
    fn resealing_changes_key_and_header_and_keeps_the_plaintext() {
        let (k1, k2) = (
            Aes256Key::generate().unwrap(),
            Aes256Key::generate().unwrap(),
        );
        let src = header("db-0123456789abcdef/base/bk-0000000000000001.tar");
        let dst = Header {
            wrapped_key: vec![9; 48],
            key_arn: "arn:aws:kms:eu-west-1:111122223333:key/d".into(),
            instance: "bk-0000000000000002".into(),
            name: "bk-0000000000000002/base/bk-0000000000000002.tar".into(),
        };
        for n in [0, 10, CHUNK, 2 * CHUNK + 7] {
            let d = data(n);
            let sealed = seal(&k1, &src, &d);
            let mut r = sealed.as_slice();
            let (h, raw) = Header::read(&mut r).unwrap();
            let opener = Opener::new(r, &k1, &h, &raw).unwrap();
            let (copy, plain) = reseal(opener, Vec::new(), &k2, &dst).unwrap();
            assert_eq!(plain, n as u64);
            let (h2, back) = open(&k2, &copy).unwrap();
            assert_eq!((h2, back), (dst.clone(), d), "n {n}");
            // The source's key opens nothing of the copy.
            assert!(open(&k1, &copy).is_err());
        }
        // A damaged source is not re-sealed.
        let mut bad = seal(&k1, &src, &data(CHUNK + 3));
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let mut r = bad.as_slice();
        let (h, raw) = Header::read(&mut r).unwrap();
        let opener = Opener::new(r, &k1, &h, &raw).unwrap();
        assert!(matches!(
            reseal(opener, Vec::new(), &k2, &dst),
            Err(ArtifactError::Damaged(_))
        ));
    }

    #[test]
    fn another_name_or_header_is_detected() {
        let key = Aes256Key::generate().unwrap();
        let a = header("db-0123456789abcdef/wal/000000010000000000000001");
        let b = header("db-0123456789abcdef/wal/000000010000000000000002");
        let sa = seal(&key, &a, &data(1000));
        let sb = seal(&key, &b, &data(1000));
        // b's chunks behind a's header (the same key, as if one key had
        // been reused): the name in the AAD differs.
        let hlen = a.encode().len();
        let mut mixed = sa[..hlen].to_vec();
        mixed.extend_from_slice(&sb[hlen..]);
        assert!(matches!(open(&key, &mixed), Err(ArtifactError::Damaged(_))));
        // Any changed header byte (the wrapped key, the ARN, the instance).
        for i in [9, 20, 60, hlen - 1] {
            let mut bad = sa.clone();
            bad[i] ^= 1;
            assert!(open(&key, &bad).is_err(), "byte {i}");
        }
        // Any changed ciphertext or tag byte.
        for i in [hlen, hlen + 500, sa.len() - 1] {
            let mut bad = sa.clone();
            bad[i] ^= 0x80;
            assert!(open(&key, &bad).is_err(), "byte {i}");
        }
        // Another key.
        let other = Aes256Key::generate().unwrap();
        assert!(open(&other, &sa).is_err());
        assert!(matches!(
            open(&key, b"not an artifact at all"),
            Err(ArtifactError::Damaged(_))
        ));
    }
}
