//! Asymmetric keys (issue 20): Sign and Verify with every spec and
//! algorithm, GetPublicKey, RSA Encrypt/Decrypt/ReEncrypt,
//! DeriveSharedSecret, GenerateDataKeyPair*, grants per kind of key, and
//! each error AWS names. Signatures and ciphertexts are also checked with
//! the public key alone, as a client outside atrest would.

use atrest_crypto::asymmetric::{self, EncryptionAlgorithm, MessageType, SigningAlgorithm};
use atrest_crypto::keypair::{self, KeyPairSpec};
use aws_lc_rs::digest;
use serde_json::{Value, json};

use super::{Env, b64, env, unb64};

fn create(e: &Env, spec: &str, usage: &str) -> String {
    e.ok("CreateKey", json!({"KeySpec": spec, "KeyUsage": usage}))["KeyMetadata"]["Arn"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn pair_spec(spec: &str) -> KeyPairSpec {
    atrest_kms::records::KeySpec::parse(spec)
        .unwrap()
        .key_pair()
        .unwrap()
}

fn digest_of(alg: &str, m: &[u8]) -> Vec<u8> {
    let d = if alg.ends_with("256") {
        &digest::SHA256
    } else if alg.ends_with("384") {
        &digest::SHA384
    } else {
        &digest::SHA512
    };
    digest::digest(d, m).as_ref().to_vec()
}

#[test]
fn sign_and_verify_with_every_spec_algorithm_and_message_type() {
    let e = env();
    let message = b"issue 20 signs this".as_slice();
    let mut signed = 0;
    for spec in [
        "RSA_2048",
        "RSA_3072",
        "RSA_4096",
        "ECC_NIST_P256",
        "ECC_NIST_P384",
        "ECC_NIST_P521",
        "ECC_SECG_P256K1",
        "ECC_NIST_EDWARDS25519",
        "ML_DSA_44",
        "ML_DSA_65",
        "ML_DSA_87",
    ] {
        let arn = create(&e, spec, "SIGN_VERIFY");
        let public = e.ok("GetPublicKey", json!({"KeyId": arn}));
        assert_eq!(public["KeyId"], arn.as_str());
        assert_eq!(public["KeySpec"], spec);
        assert_eq!(public["CustomerMasterKeySpec"], spec);
        assert_eq!(public["KeyUsage"], "SIGN_VERIFY");
        assert!(public.get("EncryptionAlgorithms").is_none());
        assert!(public.get("KeyAgreementAlgorithms").is_none());
        let described = e.ok("DescribeKey", json!({"KeyId": arn}));
        assert_eq!(
            public["SigningAlgorithms"],
            described["KeyMetadata"]["SigningAlgorithms"]
        );
        let der = unb64(&public["PublicKey"]);
        assert_eq!(der[0], 0x30, "DER SubjectPublicKeyInfo");
        for alg in public["SigningAlgorithms"].as_array().unwrap() {
            let alg = alg.as_str().unwrap();
            let sa = SigningAlgorithm::parse(alg).unwrap();
            let mut kinds = vec![("RAW", message.to_vec())];
            if sa.digest_len().is_some() {
                kinds.push(("DIGEST", digest_of(alg, message)));
            }
            if alg == "ML_DSA_SHAKE_256" {
                let mu = asymmetric::external_mu(pair_spec(spec), &der, message).unwrap();
                kinds.push(("EXTERNAL_MU", mu.to_vec()));
            }
            for (kind, m) in kinds {
                let out = e.ok(
                    "Sign",
                    json!({"KeyId": arn, "Message": b64(&m), "MessageType": kind, "SigningAlgorithm": alg}),
                );
                assert_eq!(out["KeyId"], arn.as_str());
                assert_eq!(out["SigningAlgorithm"], alg);
                let sig = unb64(&out["Signature"]);
                if spec.starts_with("ECC_NIST_P") || spec == "ECC_SECG_P256K1" {
                    assert_eq!(sig[0], 0x30, "ECDSA signatures are DER");
                }
                // Outside atrest, with the public key only: the signature
                // of a digest (or of ML-DSA's μ) is the signature of the
                // message.
                assert!(
                    asymmetric::verify(pair_spec(spec), sa, MessageType::Raw, &der, message, &sig)
                        .unwrap(),
                    "{spec} {alg} {kind}"
                );
                let ok = e.ok(
                    "Verify",
                    json!({"KeyId": arn, "Message": b64(&m), "MessageType": kind,
                           "Signature": b64(&sig), "SigningAlgorithm": alg}),
                );
                assert_eq!(ok["SignatureValid"], true);
                assert_eq!(ok["KeyId"], arn.as_str());
                assert_eq!(ok["SigningAlgorithm"], alg);
                // Tampered, truncated, or of another message: invalid.
                let mut bad = sig.clone();
                let last = bad.len() - 1;
                bad[last] ^= 1;
                let mut other = m.clone();
                other[0] ^= 1;
                for (s, msg) in [
                    (&bad[..], &m[..]),
                    (&sig[..last], &m[..]),
                    (&sig[..], &other[..]),
                ] {
                    let err = e.err(
                        "Verify",
                        json!({"KeyId": arn, "Message": b64(msg), "MessageType": kind,
                               "Signature": b64(s), "SigningAlgorithm": alg}),
                    );
                    assert_eq!(
                        err.aws_type(),
                        "KMSInvalidSignatureException",
                        "{spec} {alg}"
                    );
                }
                signed += 1;
            }
        }
    }
    // RSA 3 × 6 × 2, ECDSA 4 × 2, Ed25519, Ed25519ph × 2, ML-DSA 3 × 2.
    assert_eq!(signed, 36 + 8 + 1 + 2 + 6);
}

/// Ed25519ph through the key service: RAW is hashed with SHA-512 and then
/// signed as its DIGEST is (Ed25519 is deterministic, so the two signatures
/// are equal), and PureEdDSA and Ed25519ph signatures do not stand in for
/// each other. RFC 8032's own vector is in `atrest_crypto::asymmetric`.
#[test]
fn ed25519ph_raw_is_the_sha512_digest() {
    let e = env();
    let ed = create(&e, "ECC_NIST_EDWARDS25519", "SIGN_VERIFY");
    let m = b"Ed25519ph through KMS".as_slice();
    let sign = |m: &[u8], kind: &str, alg: &str| {
        unb64(&e.ok(
            "Sign",
            json!({"KeyId": ed, "Message": b64(m), "MessageType": kind, "SigningAlgorithm": alg}),
        )["Signature"])
    };
    let raw = sign(m, "RAW", "ED25519_PH_SHA_512");
    let digest = digest_of("SHA_512", m);
    assert_eq!(raw.len(), 64);
    assert_eq!(sign(&digest, "DIGEST", "ED25519_PH_SHA_512"), raw);
    let pure = sign(m, "RAW", "ED25519_SHA_512");
    assert_ne!(pure, raw);
    let verify = |m: &[u8], kind: &str, sig: &[u8], alg: &str| {
        e.call(
            &e.alice,
            "Verify",
            json!({"KeyId": ed, "Message": b64(m), "MessageType": kind,
                   "Signature": b64(sig), "SigningAlgorithm": alg}),
        )
        .map(|v| v["SignatureValid"].as_bool())
        .map_err(|err| err.aws_type().to_owned())
    };
    assert_eq!(verify(m, "RAW", &raw, "ED25519_PH_SHA_512"), Ok(Some(true)));
    assert_eq!(
        verify(&digest, "DIGEST", &raw, "ED25519_PH_SHA_512"),
        Ok(Some(true))
    );
    let invalid = Err("KMSInvalidSignatureException".to_owned());
    assert_eq!(verify(m, "RAW", &pure, "ED25519_PH_SHA_512"), invalid);
    assert_eq!(verify(m, "RAW", &raw, "ED25519_SHA_512"), invalid);
    // A RAW message that is itself a digest is hashed again.
    assert_eq!(verify(&digest, "RAW", &raw, "ED25519_PH_SHA_512"), invalid);
    let refused = Err("ValidationException".to_owned());
    assert_eq!(verify(&digest, "DIGEST", &pure, "ED25519_SHA_512"), refused);
    assert_eq!(
        verify(&digest[..63], "DIGEST", &raw, "ED25519_PH_SHA_512"),
        refused
    );
}

/// ML-DSA's EXTERNAL_MU through the key service: a signature over μ is the
/// RAW signature of the message and the other way round, checked both by
/// the key service and with the public key alone.
#[test]
fn ml_dsa_external_mu_signs_the_message() {
    let e = env();
    for spec in ["ML_DSA_44", "ML_DSA_65", "ML_DSA_87"] {
        let key = create(&e, spec, "SIGN_VERIFY");
        let der = unb64(&e.ok("GetPublicKey", json!({"KeyId": key}))["PublicKey"]);
        let m = b"a large document, hashed by the client".as_slice();
        let mu = asymmetric::external_mu(pair_spec(spec), &der, m).unwrap();
        let sign = |m: &[u8], kind: &str| {
            unb64(
                &e.ok(
                    "Sign",
                    json!({"KeyId": key, "Message": b64(m), "MessageType": kind,
                       "SigningAlgorithm": "ML_DSA_SHAKE_256"}),
                )["Signature"],
            )
        };
        let verify = |m: &[u8], kind: &str, sig: &[u8]| {
            e.call(
                &e.alice,
                "Verify",
                json!({"KeyId": key, "Message": b64(m), "MessageType": kind,
                       "Signature": b64(sig), "SigningAlgorithm": "ML_DSA_SHAKE_256"}),
            )
            .map(|v| v["SignatureValid"].as_bool())
            .map_err(|err| err.aws_type().to_owned())
        };
        let over_mu = sign(&mu, "EXTERNAL_MU");
        let over_m = sign(m, "RAW");
        for sig in [&over_mu, &over_m] {
            assert_eq!(verify(m, "RAW", sig), Ok(Some(true)), "{spec}");
            assert_eq!(verify(&mu, "EXTERNAL_MU", sig), Ok(Some(true)), "{spec}");
            assert!(
                asymmetric::verify(
                    pair_spec(spec),
                    SigningAlgorithm::MlDsaShake256,
                    MessageType::Raw,
                    &der,
                    m,
                    sig
                )
                .unwrap()
            );
        }
        // μ is not the message: signed RAW, it is another message.
        let invalid = Err("KMSInvalidSignatureException".to_owned());
        assert_eq!(verify(m, "RAW", &sign(&mu, "RAW")), invalid);
        let mut other = mu;
        other[0] ^= 1;
        assert_eq!(verify(&other, "EXTERNAL_MU", &over_mu), invalid);
        let short = Err("ValidationException".to_owned());
        assert_eq!(verify(&mu[..63], "EXTERNAL_MU", &over_mu), short);
    }
}

#[test]
fn sign_and_verify_refuse_as_aws_does() {
    let e = env();
    let p256 = create(&e, "ECC_NIST_P256", "SIGN_VERIFY");
    let ed = create(&e, "ECC_NIST_EDWARDS25519", "SIGN_VERIFY");
    let ml = create(&e, "ML_DSA_44", "SIGN_VERIFY");
    let rsa_enc = create(&e, "RSA_2048", "ENCRYPT_DECRYPT");
    let agree = create(&e, "ECC_NIST_P256", "KEY_AGREEMENT");
    let sym = e.new_key();
    let sign = |key: &str, m: &[u8], kind: &str, alg: &str| {
        e.call(
            &e.alice,
            "Sign",
            json!({"KeyId": key, "Message": b64(m), "MessageType": kind, "SigningAlgorithm": alg}),
        )
        .unwrap_err()
    };
    let cases: Vec<(atrest_kms::KmsError, &str)> = vec![
        // Keys of another usage.
        (
            sign(&rsa_enc, b"m", "RAW", "RSASSA_PSS_SHA_256"),
            "InvalidKeyUsageException",
        ),
        (
            sign(&agree, b"m", "RAW", "ECDSA_SHA_256"),
            "InvalidKeyUsageException",
        ),
        (
            sign(&sym, b"m", "RAW", "ECDSA_SHA_256"),
            "InvalidKeyUsageException",
        ),
        // An algorithm of another spec, and one AWS does not know.
        (
            sign(&p256, b"m", "RAW", "RSASSA_PSS_SHA_256"),
            "InvalidKeyUsageException",
        ),
        (
            sign(&p256, b"m", "RAW", "ECDSA_SHA_384"),
            "InvalidKeyUsageException",
        ),
        (
            sign(&p256, b"m", "RAW", "ECDSA_SHA_1"),
            "ValidationException",
        ),
        (
            sign(&p256, b"m", "HASHED", "ECDSA_SHA_256"),
            "ValidationException",
        ),
        // Sizes.
        (
            sign(&p256, &[1; 4097], "RAW", "ECDSA_SHA_256"),
            "ValidationException",
        ),
        (
            sign(&p256, b"", "RAW", "ECDSA_SHA_256"),
            "ValidationException",
        ),
        (
            sign(&p256, &[1; 31], "DIGEST", "ECDSA_SHA_256"),
            "ValidationException",
        ),
        (
            sign(&p256, &[1; 48], "DIGEST", "ECDSA_SHA_256"),
            "ValidationException",
        ),
        // Message types the algorithm does not take.
        (
            sign(&ed, &[1; 64], "DIGEST", "ED25519_SHA_512"),
            "ValidationException",
        ),
        (
            sign(&ml, &[1; 64], "DIGEST", "ML_DSA_SHAKE_256"),
            "ValidationException",
        ),
        (
            sign(&p256, &[1; 64], "EXTERNAL_MU", "ECDSA_SHA_256"),
            "ValidationException",
        ),
        (
            sign(&ed, &[1; 64], "EXTERNAL_MU", "ED25519_PH_SHA_512"),
            "ValidationException",
        ),
        // Ed25519ph's SHA-512 digest and ML-DSA's μ are 64 bytes.
        (
            sign(&ed, &[1; 63], "DIGEST", "ED25519_PH_SHA_512"),
            "ValidationException",
        ),
        (
            sign(&ed, &[1; 65], "DIGEST", "ED25519_PH_SHA_512"),
            "ValidationException",
        ),
        (
            sign(&ed, &[1; 4097], "RAW", "ED25519_PH_SHA_512"),
            "ValidationException",
        ),
        (
            sign(&ml, &[1; 63], "EXTERNAL_MU", "ML_DSA_SHAKE_256"),
            "ValidationException",
        ),
        (
            sign(&ml, &[1; 65], "EXTERNAL_MU", "ML_DSA_SHAKE_256"),
            "ValidationException",
        ),
    ];
    for (i, (err, want)) in cases.iter().enumerate() {
        assert_eq!(err.aws_type(), *want, "case {i}: {err}");
    }
    assert_eq!(
        cases[3].0.to_string(),
        "Algorithm RSASSA_PSS_SHA_256 is incompatible with key spec ECC_NIST_P256."
    );
    // 4096 bytes is the most a RAW message may be.
    e.ok(
        "Sign",
        json!({"KeyId": p256, "Message": b64(&[1; 4096]), "SigningAlgorithm": "ECDSA_SHA_256"}),
    );
    // Verify: the same checks, and signatures of no or too great length.
    let verify = |m: &[u8], s: &[u8], kind: &str| {
        e.call(
            &e.alice,
            "Verify",
            json!({"KeyId": p256, "Message": b64(m), "Signature": b64(s), "MessageType": kind, "SigningAlgorithm": "ECDSA_SHA_256"}),
        )
        .unwrap_err()
        .aws_type()
    };
    assert_eq!(verify(&[1; 4097], b"s", "RAW"), "ValidationException");
    assert_eq!(verify(&[1; 31], b"s", "DIGEST"), "ValidationException");
    assert_eq!(verify(b"m", b"", "RAW"), "ValidationException");
    assert_eq!(verify(b"m", &[0; 6145], "RAW"), "ValidationException");
    assert_eq!(
        verify(b"m", &[0; 72], "RAW"),
        "KMSInvalidSignatureException"
    );
    assert_eq!(
        verify(b"m", &[0; 6144], "RAW"),
        "KMSInvalidSignatureException"
    );
    // DryRun answers after authorization and the key checks.
    for op in ["Sign", "Verify"] {
        let err = e.err(
            op,
            json!({"KeyId": p256, "Message": b64(b"m"), "Signature": b64(b"s"), "SigningAlgorithm": "ECDSA_SHA_256", "DryRun": true}),
        );
        assert_eq!(err.aws_type(), "DryRunOperationException", "{op}");
        let err = e.err(
            op,
            json!({"KeyId": p256, "Message": b64(b"m"), "Signature": b64(b"s"), "SigningAlgorithm": "ECDSA_SHA_384", "DryRun": true}),
        );
        assert_eq!(err.aws_type(), "InvalidKeyUsageException", "{op}");
    }
    // GetPublicKey: symmetric and HMAC keys have none.
    let mac = create(&e, "HMAC_256", "GENERATE_VERIFY_MAC");
    for key in [&sym, &mac] {
        assert_eq!(
            e.err("GetPublicKey", json!({"KeyId": key})).aws_type(),
            "UnsupportedOperationException"
        );
    }
    // A disabled key signs nothing and shows no public key.
    e.ok("DisableKey", json!({"KeyId": p256}));
    assert_eq!(
        sign(&p256, b"m", "RAW", "ECDSA_SHA_256").aws_type(),
        "DisabledException"
    );
    assert_eq!(
        e.err("GetPublicKey", json!({"KeyId": p256})).aws_type(),
        "DisabledException"
    );
}

#[test]
fn rsa_encrypt_decrypt_and_re_encrypt() {
    let e = env();
    let sym = e.new_key();
    for (spec, limits) in [("RSA_2048", [214, 190]), ("RSA_4096", [470, 446])] {
        let arn = create(&e, spec, "ENCRYPT_DECRYPT");
        let public = e.ok("GetPublicKey", json!({"KeyId": arn}));
        assert_eq!(
            public["EncryptionAlgorithms"],
            json!(["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"])
        );
        assert!(public.get("SigningAlgorithms").is_none());
        let der = unb64(&public["PublicKey"]);
        for (alg, max) in ["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"]
            .into_iter()
            .zip(limits)
        {
            let pt = vec![9u8; max];
            let out = e.ok(
                "Encrypt",
                json!({"KeyId": arn, "Plaintext": b64(&pt), "EncryptionAlgorithm": alg}),
            );
            assert_eq!(out["EncryptionAlgorithm"], alg);
            assert_eq!(out["KeyId"], arn.as_str());
            let ct = unb64(&out["CiphertextBlob"]);
            assert_eq!(ct.len(), if spec == "RSA_2048" { 256 } else { 512 });
            let back = e.ok(
                "Decrypt",
                json!({"KeyId": arn, "CiphertextBlob": b64(&ct), "EncryptionAlgorithm": alg}),
            );
            assert_eq!(unb64(&back["Plaintext"]), pt);
            assert_eq!(back["EncryptionAlgorithm"], alg);
            assert!(back["KeyMaterialId"].as_str().is_some());
            // A ciphertext made outside with the public key decrypts.
            let outside = asymmetric::encrypt(
                pair_spec(spec),
                EncryptionAlgorithm::parse(alg).unwrap(),
                &der,
                b"from outside",
            )
            .unwrap();
            let back = e.ok(
                "Decrypt",
                json!({"KeyId": arn, "CiphertextBlob": b64(&outside), "EncryptionAlgorithm": alg}),
            );
            assert_eq!(unb64(&back["Plaintext"]), b"from outside");
            // One byte over AWS's limit.
            let err = e.err(
                "Encrypt",
                json!({"KeyId": arn, "Plaintext": b64(&vec![9u8; max + 1]), "EncryptionAlgorithm": alg}),
            );
            assert_eq!(err.aws_type(), "ValidationException", "{spec} {alg}");
            // ReEncrypt to a symmetric key and back.
            let sym_blob = e.ok(
                "ReEncrypt",
                json!({"CiphertextBlob": b64(&ct), "SourceKeyId": arn, "SourceEncryptionAlgorithm": alg,
                       "DestinationKeyId": sym}),
            );
            assert_eq!(sym_blob["SourceEncryptionAlgorithm"], alg);
            assert_eq!(
                sym_blob["DestinationEncryptionAlgorithm"],
                "SYMMETRIC_DEFAULT"
            );
            let rsa_again = e.ok(
                "ReEncrypt",
                json!({"CiphertextBlob": sym_blob["CiphertextBlob"], "DestinationKeyId": arn,
                       "DestinationEncryptionAlgorithm": alg}),
            );
            assert_eq!(rsa_again["DestinationEncryptionAlgorithm"], alg);
            let back = e.ok(
                "Decrypt",
                json!({"KeyId": arn, "CiphertextBlob": rsa_again["CiphertextBlob"], "EncryptionAlgorithm": alg}),
            );
            assert_eq!(unb64(&back["Plaintext"]), pt);
        }
        let ct = unb64(
            &e.ok(
                "Encrypt",
                json!({"KeyId": arn, "Plaintext": b64(b"x"), "EncryptionAlgorithm": "RSAES_OAEP_SHA_256"}),
            )["CiphertextBlob"],
        );
        let err = |op: &str, body: Value| e.err(op, body).aws_type();
        // Garbage, the other hash, a truncated ciphertext: not ciphertexts.
        for (bad, alg) in [
            (vec![7u8; ct.len()], "RSAES_OAEP_SHA_256"),
            (ct.clone(), "RSAES_OAEP_SHA_1"),
            (ct[1..].to_vec(), "RSAES_OAEP_SHA_256"),
        ] {
            assert_eq!(
                err(
                    "Decrypt",
                    json!({"KeyId": arn, "CiphertextBlob": b64(&bad), "EncryptionAlgorithm": alg})
                ),
                "InvalidCiphertextException"
            );
        }
        // Decrypt of an RSA ciphertext needs the KeyId.
        assert_eq!(
            err(
                "Decrypt",
                json!({"CiphertextBlob": b64(&ct), "EncryptionAlgorithm": "RSAES_OAEP_SHA_256"})
            ),
            "ValidationException"
        );
        // The symmetric algorithm (the default) and SM2 are not RSA's.
        for body in [
            json!({"KeyId": arn, "Plaintext": b64(b"x")}),
            json!({"KeyId": arn, "Plaintext": b64(b"x"), "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"}),
            json!({"KeyId": arn, "Plaintext": b64(b"x"), "EncryptionAlgorithm": "SM2PKE"}),
        ] {
            assert_eq!(err("Encrypt", body), "InvalidKeyUsageException");
        }
        assert_eq!(
            err(
                "Encrypt",
                json!({"KeyId": arn, "Plaintext": b64(b"x"), "EncryptionAlgorithm": "RSAES_PKCS1"})
            ),
            "ValidationException"
        );
        // An encryption context is not bound to RSA ciphertexts: refused.
        assert_eq!(
            err(
                "Encrypt",
                json!({"KeyId": arn, "Plaintext": b64(b"x"), "EncryptionAlgorithm": "RSAES_OAEP_SHA_1",
                       "EncryptionContext": {"a": "b"}})
            ),
            "ValidationException"
        );
        // RSA keys make no data keys; a symmetric key does no RSA-OAEP.
        assert_eq!(
            err(
                "GenerateDataKey",
                json!({"KeyId": arn, "KeySpec": "AES_256"})
            ),
            "InvalidKeyUsageException"
        );
        assert_eq!(
            err(
                "Encrypt",
                json!({"KeyId": sym, "Plaintext": b64(b"x"), "EncryptionAlgorithm": "RSAES_OAEP_SHA_1"})
            ),
            "InvalidKeyUsageException"
        );
        assert_eq!(
            err(
                "Decrypt",
                json!({"KeyId": sym, "CiphertextBlob": b64(&ct), "EncryptionAlgorithm": "RSAES_OAEP_SHA_1"})
            ),
            "InvalidKeyUsageException"
        );
        // A signing RSA key does not encrypt.
        let rsa_sign = create(&e, "RSA_2048", "SIGN_VERIFY");
        assert_eq!(
            err(
                "Encrypt",
                json!({"KeyId": rsa_sign, "Plaintext": b64(b"x"), "EncryptionAlgorithm": "RSAES_OAEP_SHA_1"})
            ),
            "InvalidKeyUsageException"
        );
        assert_eq!(
            err(
                "Decrypt",
                json!({"KeyId": arn, "CiphertextBlob": b64(&ct), "EncryptionAlgorithm": "RSAES_OAEP_SHA_256", "DryRun": true})
            ),
            "DryRunOperationException"
        );
    }
}

#[test]
fn derive_shared_secret_agrees_with_the_other_side() {
    let e = env();
    for (spec, len) in [
        ("ECC_NIST_P256", 32),
        ("ECC_NIST_P384", 48),
        ("ECC_NIST_P521", 66),
    ] {
        let a = create(&e, spec, "KEY_AGREEMENT");
        let b = create(&e, spec, "KEY_AGREEMENT");
        let a_pub = e.ok("GetPublicKey", json!({"KeyId": a}));
        assert_eq!(a_pub["KeyAgreementAlgorithms"], json!(["ECDH"]));
        assert_eq!(a_pub["KeyUsage"], "KEY_AGREEMENT");
        let a_pub = a_pub["PublicKey"].clone();
        let b_pub = e.ok("GetPublicKey", json!({"KeyId": b}))["PublicKey"].clone();
        let derive = |key: &str, public: &Value| {
            e.ok(
                "DeriveSharedSecret",
                json!({"KeyId": key, "KeyAgreementAlgorithm": "ECDH", "PublicKey": public}),
            )
        };
        let ab = derive(&a, &b_pub);
        assert_eq!(ab["KeyId"], a.as_str());
        assert_eq!(ab["KeyAgreementAlgorithm"], "ECDH");
        assert_eq!(ab["KeyOrigin"], "AWS_KMS");
        let secret = unb64(&ab["SharedSecret"]);
        assert_eq!(secret.len(), len);
        assert_eq!(secret, unb64(&derive(&b, &a_pub)["SharedSecret"]));
        // The other side outside atrest, with its own private key.
        let theirs = keypair::generate(pair_spec(spec)).unwrap();
        let their_pub = keypair::public_key_der(pair_spec(spec), theirs.expose()).unwrap();
        let theirs = asymmetric::PrivateKey::from_pkcs8(pair_spec(spec), theirs.expose()).unwrap();
        let outside = theirs.shared_secret(&unb64(&a_pub)).unwrap();
        assert_eq!(
            unb64(&derive(&a, &json!(b64(&their_pub)))["SharedSecret"]),
            outside.expose()
        );
        // Not DER SPKI, a bare point, another curve's key, garbage.
        let other_curve = if spec == "ECC_NIST_P256" {
            KeyPairSpec::EccNistP384
        } else {
            KeyPairSpec::EccNistP256
        };
        let other = keypair::generate(other_curve).unwrap();
        let other = keypair::public_key_der(other_curve, other.expose()).unwrap();
        let point = &their_pub[their_pub.len() - (2 * len + 1)..];
        for bad in [
            point.to_vec(),
            other,
            b"\x30\x03\x02\x01\x01".to_vec(),
            vec![0x30; 40],
        ] {
            let err = e.err(
                "DeriveSharedSecret",
                json!({"KeyId": a, "KeyAgreementAlgorithm": "ECDH", "PublicKey": b64(&bad)}),
            );
            assert_eq!(err.aws_type(), "ValidationException", "{spec}: {err}");
        }
    }
    let sign = create(&e, "ECC_NIST_P256", "SIGN_VERIFY");
    let agree = create(&e, "ECC_NIST_P256", "KEY_AGREEMENT");
    let peer = e.ok("GetPublicKey", json!({"KeyId": agree}))["PublicKey"].clone();
    let err = |key: &str, alg: &str, extra: Value| {
        let mut body = json!({"KeyId": key, "KeyAgreementAlgorithm": alg, "PublicKey": peer});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        e.err("DeriveSharedSecret", body).aws_type()
    };
    assert_eq!(err(&sign, "ECDH", json!({})), "InvalidKeyUsageException");
    assert_eq!(
        err(&e.new_key(), "ECDH", json!({})),
        "InvalidKeyUsageException"
    );
    assert_eq!(err(&agree, "X25519", json!({})), "ValidationException");
    assert_eq!(
        err(&agree, "ECDH", json!({"DryRun": true})),
        "DryRunOperationException"
    );
    assert_eq!(
        err(
            &agree,
            "ECDH",
            json!({"Recipient": {"KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256"}})
        ),
        "UnsupportedOperationException"
    );
    e.ok(
        "ScheduleKeyDeletion",
        json!({"KeyId": agree, "PendingWindowInDays": 7}),
    );
    assert_eq!(err(&agree, "ECDH", json!({})), "KMSInvalidStateException");
}

#[test]
fn generate_data_key_pair_for_every_spec() {
    let e = env();
    let sym = e.new_key();
    let ctx = json!({"purpose": "pair"});
    for spec in [
        "RSA_2048",
        "ECC_NIST_P256",
        "ECC_NIST_P384",
        "ECC_NIST_P521",
        "ECC_SECG_P256K1",
        "ECC_NIST_EDWARDS25519",
    ] {
        let out = e.ok(
            "GenerateDataKeyPair",
            json!({"KeyId": sym, "KeyPairSpec": spec, "EncryptionContext": ctx}),
        );
        assert_eq!(out["KeyPairSpec"], spec);
        assert!(out["KeyId"].as_str().unwrap().starts_with("arn:aws:kms:"));
        assert!(out["KeyMaterialId"].as_str().is_some());
        let private = unb64(&out["PrivateKeyPlaintext"]);
        let public = unb64(&out["PublicKey"]);
        let ps = pair_spec(spec);
        // The private key is PKCS#8 and matches the public key.
        assert_eq!(keypair::public_key_der(ps, &private).unwrap(), public);
        let key = asymmetric::PrivateKey::from_pkcs8(ps, &private).unwrap();
        let alg = SigningAlgorithm::ALL
            .into_iter()
            .find(|a| a.fits(ps))
            .unwrap();
        let sig = key.sign(alg, MessageType::Raw, b"m").unwrap();
        assert!(asymmetric::verify(ps, alg, MessageType::Raw, &public, b"m", &sig).unwrap());
        // Decrypt of the blob, with the context, gives the PKCS#8 back.
        let back = e.ok(
            "Decrypt",
            json!({"CiphertextBlob": out["PrivateKeyCiphertextBlob"], "EncryptionContext": ctx}),
        );
        assert_eq!(unb64(&back["Plaintext"]), private);
        assert_eq!(
            e.err(
                "Decrypt",
                json!({"CiphertextBlob": out["PrivateKeyCiphertextBlob"]})
            )
            .aws_type(),
            "InvalidCiphertextException"
        );
        let without = e.ok(
            "GenerateDataKeyPairWithoutPlaintext",
            json!({"KeyId": sym, "KeyPairSpec": spec}),
        );
        assert!(without.get("PrivateKeyPlaintext").is_none());
        let back = e.ok(
            "Decrypt",
            json!({"CiphertextBlob": without["PrivateKeyCiphertextBlob"]}),
        );
        assert_eq!(
            keypair::public_key_der(ps, &unb64(&back["Plaintext"])).unwrap(),
            unb64(&without["PublicKey"])
        );
    }
    let err = |key: &str, spec: &str, extra: Value| {
        let mut body = json!({"KeyId": key, "KeyPairSpec": spec});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        e.err("GenerateDataKeyPair", body).aws_type()
    };
    assert_eq!(err(&sym, "SM2", json!({})), "UnsupportedOperationException");
    assert_eq!(
        err(&sym, "ML_KEM_768", json!({})),
        "UnsupportedOperationException"
    );
    assert_eq!(err(&sym, "RSA_1024", json!({})), "ValidationException");
    assert_eq!(
        err(&sym, "ECC_NIST_P256", json!({"DryRun": true})),
        "DryRunOperationException"
    );
    let rsa = create(&e, "RSA_2048", "ENCRYPT_DECRYPT");
    let sign = create(&e, "ECC_NIST_P256", "SIGN_VERIFY");
    for key in [&rsa, &sign] {
        assert_eq!(
            err(key, "ECC_NIST_P256", json!({})),
            "InvalidKeyUsageException"
        );
    }
}

#[test]
fn grants_allow_what_aws_allows_per_kind_of_key() {
    let e = env();
    let grantee = "arn:aws:iam::111122223333:user/bob";
    let cases = [
        (
            create(&e, "ECC_NIST_P256", "SIGN_VERIFY"),
            vec!["Sign", "Verify", "GetPublicKey", "DescribeKey"],
            "Encrypt",
            "an asymmetric signing key",
        ),
        (
            create(&e, "RSA_2048", "ENCRYPT_DECRYPT"),
            vec!["Encrypt", "Decrypt", "ReEncryptFrom", "GetPublicKey"],
            "GenerateDataKey",
            "an asymmetric encryption key",
        ),
        (
            create(&e, "ECC_NIST_P256", "KEY_AGREEMENT"),
            vec!["DeriveSharedSecret", "GetPublicKey"],
            "Sign",
            "a key agreement key",
        ),
        (
            create(&e, "HMAC_256", "GENERATE_VERIFY_MAC"),
            vec!["GenerateMac", "VerifyMac", "RetireGrant"],
            "GetPublicKey",
            "an HMAC key",
        ),
        (
            e.new_key(),
            vec![
                "GenerateDataKeyPair",
                "GenerateDataKeyPairWithoutPlaintext",
                "Encrypt",
            ],
            "Sign",
            "a symmetric encryption key",
        ),
    ];
    for (key, good, bad, kind) in cases {
        e.ok(
            "CreateGrant",
            json!({"KeyId": key, "GranteePrincipal": grantee, "Operations": good}),
        );
        let err = e.err(
            "CreateGrant",
            json!({"KeyId": key, "GranteePrincipal": grantee, "Operations": [bad]}),
        );
        assert_eq!(err.aws_type(), "ValidationException");
        assert_eq!(
            err.to_string(),
            format!("Grant operation {bad} is not valid for {kind}.")
        );
    }
}
