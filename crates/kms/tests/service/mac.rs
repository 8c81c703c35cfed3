//! HMAC keys: GenerateMac and VerifyMac (every spec, RFC 2104 MACs of
//! imported material, every refusal, key states, grants, the
//! `kms:MacAlgorithm` condition) and the import of HMAC material.

use atrest_crypto::mac::{self, MacAlgorithm};
use serde_json::{Value, json};

use super::byok::{params, wrap};
use super::{Env, b64, env, unb64};

const SPECS: [(&str, &str, MacAlgorithm); 4] = [
    ("HMAC_224", "HMAC_SHA_224", MacAlgorithm::HmacSha224),
    ("HMAC_256", "HMAC_SHA_256", MacAlgorithm::HmacSha256),
    ("HMAC_384", "HMAC_SHA_384", MacAlgorithm::HmacSha384),
    ("HMAC_512", "HMAC_SHA_512", MacAlgorithm::HmacSha512),
];

fn hmac_key(e: &Env, spec: &str, origin: &str) -> String {
    e.ok(
        "CreateKey",
        json!({"KeySpec": spec, "KeyUsage": "GENERATE_VERIFY_MAC", "Origin": origin}),
    )["KeyMetadata"]["Arn"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Imports `material` into `arn` with RSAES_OAEP_SHA_256; the result.
fn import_hmac(e: &Env, arn: &str, material: &[u8]) -> Result<Value, atrest_kms::KmsError> {
    let p = params(e, &e.alice, arn, "RSAES_OAEP_SHA_256", "RSA_3072");
    let wrapped = wrap(&unb64(&p["PublicKey"]), "RSAES_OAEP_SHA_256", material);
    e.call(
        &e.alice,
        "ImportKeyMaterial",
        json!({"KeyId": arn, "ImportToken": p["ImportToken"], "EncryptedKeyMaterial": b64(&wrapped), "ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE"}),
    )
}

fn gen_mac(e: &Env, key: &str, alg: &str, msg: &[u8]) -> Vec<u8> {
    let out = e.ok(
        "GenerateMac",
        json!({"KeyId": key, "MacAlgorithm": alg, "Message": b64(msg)}),
    );
    assert_eq!(out["MacAlgorithm"], alg);
    unb64(&out["Mac"])
}

fn verify_err(e: &Env, key: &str, alg: &str, msg: &[u8], tag: &[u8]) -> String {
    e.err(
        "VerifyMac",
        json!({"KeyId": key, "MacAlgorithm": alg, "Message": b64(msg), "Mac": b64(tag)}),
    )
    .aws_type()
    .to_owned()
}

#[test]
fn every_hmac_spec_generates_and_verifies() {
    let e = env();
    for (spec, alg, a) in SPECS {
        let arn = hmac_key(&e, spec, "AWS_KMS");
        let meta = e.ok("DescribeKey", json!({"KeyId": arn}))["KeyMetadata"].clone();
        assert_eq!(meta["MacAlgorithms"], json!([alg]));
        let out = e.ok(
            "GenerateMac",
            json!({"KeyId": arn, "MacAlgorithm": alg, "Message": b64(b"hello")}),
        );
        assert_eq!(out["KeyId"], arn.as_str());
        let tag = unb64(&out["Mac"]);
        assert_eq!(tag.len(), a.mac_len(), "{spec}");
        // Deterministic, and by alias too.
        let alias = format!("alias/{}", spec.to_lowercase());
        e.ok(
            "CreateAlias",
            json!({"AliasName": alias, "TargetKeyId": arn}),
        );
        assert_eq!(gen_mac(&e, &alias, alg, b"hello"), tag);
        let v = e.ok(
            "VerifyMac",
            json!({"KeyId": alias, "MacAlgorithm": alg, "Message": b64(b"hello"), "Mac": b64(&tag)}),
        );
        assert_eq!(v["MacValid"], true);
        assert_eq!(v["KeyId"], arn.as_str());
        assert_eq!(v["MacAlgorithm"], alg);
        // The key's material is a key of the spec's length, and the MAC is
        // RFC 2104's under it.
        let id = uuid::Uuid::parse_str(arn.rsplit('/').next().unwrap()).unwrap();
        let material = e.kms.material_for_tests(&id).unwrap();
        assert_eq!(material.len(), 1);
        assert_eq!(material[0].len(), a.mac_len(), "{spec}");
        assert_eq!(mac::generate(a, &material[0], b"hello"), tag);
        // The longest message.
        let long = vec![7u8; 4096];
        let t = gen_mac(&e, &arn, alg, &long);
        assert_eq!(mac::generate(a, &material[0], &long), t);
    }
}

#[test]
fn imported_hmac_material_makes_rfc_2104_macs_within_aws_lengths() {
    let e = env();
    for (spec, alg, a) in SPECS {
        let (lo, hi) = match spec {
            "HMAC_224" => (28, 64),
            "HMAC_256" => (32, 64),
            "HMAC_384" => (48, 128),
            _ => (64, 128),
        };
        let arn = hmac_key(&e, spec, "EXTERNAL");
        assert_eq!(e.state(&arn), "PendingImport");
        assert_eq!(
            e.err(
                "GenerateMac",
                json!({"KeyId": arn, "MacAlgorithm": alg, "Message": b64(b"m")})
            )
            .aws_type(),
            "KMSInvalidStateException"
        );
        for bad in [lo - 1, hi + 1, 1] {
            assert_eq!(
                import_hmac(&e, &arn, &vec![3u8; bad])
                    .unwrap_err()
                    .aws_type(),
                "IncorrectKeyMaterialException",
                "{spec} {bad} bytes"
            );
        }
        for len in [lo, hi] {
            let arn = hmac_key(&e, spec, "EXTERNAL");
            let material: Vec<u8> = (0..len).map(|i| i as u8 ^ 0xa5).collect();
            let out = import_hmac(&e, &arn, &material).unwrap();
            assert_eq!(out["KeyMaterialId"].as_str().unwrap().len(), 64);
            assert_eq!(e.state(&arn), "Enabled");
            for msg in [&b"x"[..], b"The quick brown fox", &[0u8; 4096]] {
                let tag = gen_mac(&e, &arn, alg, msg);
                assert_eq!(tag, mac::generate(a, &material, msg), "{spec} {len}");
            }
            // Re-importing the same material is fine; other material is not;
            // HMAC keys take no new material.
            import_hmac(&e, &arn, &material).unwrap();
            let mut other = material.clone();
            other[0] ^= 1;
            assert_eq!(
                import_hmac(&e, &arn, &other).unwrap_err().aws_type(),
                "IncorrectKeyMaterialException"
            );
            let p = params(&e, &e.alice, &arn, "RSAES_OAEP_SHA_256", "RSA_2048");
            let wrapped = wrap(&unb64(&p["PublicKey"]), "RSAES_OAEP_SHA_256", &other);
            assert_eq!(
                e.err("ImportKeyMaterial", json!({"KeyId": arn, "ImportToken": p["ImportToken"], "EncryptedKeyMaterial": b64(&wrapped), "ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE", "ImportType": "NEW_KEY_MATERIAL"})).aws_type(),
                "UnsupportedOperationException"
            );
        }
    }
}

#[test]
fn mac_refusals() {
    let e = env();
    let k256 = hmac_key(&e, "HMAC_256", "AWS_KMS");
    let k384 = hmac_key(&e, "HMAC_384", "AWS_KMS");
    let other256 = hmac_key(&e, "HMAC_256", "AWS_KMS");
    let sym = e.new_key();
    let rsa = e.ok(
        "CreateKey",
        json!({"KeySpec": "RSA_2048", "KeyUsage": "SIGN_VERIFY"}),
    )["KeyMetadata"]["Arn"]
        .as_str()
        .unwrap()
        .to_owned();
    let tag = gen_mac(&e, &k256, "HMAC_SHA_256", b"msg");
    for op in ["GenerateMac", "VerifyMac"] {
        let body = |key: &str, alg: &str, msg: Value| json!({"KeyId": key, "MacAlgorithm": alg, "Message": msg, "Mac": b64(&tag)});
        for (b, want) in [
            // Keys that are not HMAC keys.
            (
                body(&sym, "HMAC_SHA_256", json!(b64(b"msg"))),
                "InvalidKeyUsageException",
            ),
            (
                body(&rsa, "HMAC_SHA_256", json!(b64(b"msg"))),
                "InvalidKeyUsageException",
            ),
            // An algorithm that is not the key's.
            (
                body(&k384, "HMAC_SHA_256", json!(b64(b"msg"))),
                "InvalidKeyUsageException",
            ),
            (
                body(&k256, "HMAC_SHA_512", json!(b64(b"msg"))),
                "InvalidKeyUsageException",
            ),
            // Not an algorithm.
            (
                body(&k256, "HMAC_MD5", json!(b64(b"msg"))),
                "ValidationException",
            ),
            (
                json!({"KeyId": k256, "Message": b64(b"msg"), "Mac": b64(&tag)}),
                "ValidationException",
            ),
            // Messages out of bounds.
            (
                body(&k256, "HMAC_SHA_256", json!("")),
                "ValidationException",
            ),
            (
                body(&k256, "HMAC_SHA_256", json!(b64(&[0u8; 4097]))),
                "ValidationException",
            ),
            (
                json!({"KeyId": k256, "MacAlgorithm": "HMAC_SHA_256", "Mac": b64(&tag)}),
                "ValidationException",
            ),
            // No such key.
            (
                body("alias/none", "HMAC_SHA_256", json!(b64(b"msg"))),
                "NotFoundException",
            ),
            (
                body(&"0".repeat(3), "HMAC_SHA_256", json!(b64(b"msg"))),
                "NotFoundException",
            ),
        ] {
            let err = e.err(op, b.clone());
            assert_eq!(err.aws_type(), want, "{op} {b}: {err}");
            assert!(!err.is_server_fault());
        }
        // DryRun: authorized and valid, but not done.
        assert_eq!(
            e.err(op, json!({"KeyId": k256, "MacAlgorithm": "HMAC_SHA_256", "Message": b64(b"msg"), "Mac": b64(&tag), "DryRun": true}))
                .aws_type(),
            "DryRunOperationException"
        );
        // DryRun does not hide another account's lack of permission.
        let stranger = super::caller("444455556666", "us-east-1");
        assert_eq!(
            e.call(&stranger, op, json!({"KeyId": k256, "MacAlgorithm": "HMAC_SHA_256", "Message": b64(b"msg"), "Mac": b64(&tag), "DryRun": true}))
                .unwrap_err()
                .aws_type(),
            "AccessDeniedException"
        );
    }
    // A MAC that is not this message's, key's or algorithm's.
    let mut tampered = tag.clone();
    tampered[31] ^= 0x80;
    assert_eq!(
        verify_err(&e, &k256, "HMAC_SHA_256", b"msg", &tampered),
        "KMSInvalidMacException"
    );
    assert_eq!(
        verify_err(&e, &k256, "HMAC_SHA_256", b"msh", &tag),
        "KMSInvalidMacException"
    );
    assert_eq!(
        verify_err(&e, &other256, "HMAC_SHA_256", b"msg", &tag),
        "KMSInvalidMacException"
    );
    assert_eq!(
        verify_err(&e, &k256, "HMAC_SHA_256", b"msg", &tag[..16]),
        "KMSInvalidMacException"
    );
    let mut longer = tag;
    longer.push(0);
    assert_eq!(
        verify_err(&e, &k256, "HMAC_SHA_256", b"msg", &longer),
        "KMSInvalidMacException"
    );
    assert_eq!(
        verify_err(&e, &k256, "HMAC_SHA_256", b"msg", &[]),
        "ValidationException"
    );
    // HMAC keys do not encrypt, and symmetric grants do not apply.
    assert_eq!(
        e.err("Encrypt", json!({"KeyId": k256, "Plaintext": b64(b"x")}))
            .aws_type(),
        "InvalidKeyUsageException"
    );
}

#[test]
fn mac_key_state_matrix() {
    let e = env();
    let states = ["Enabled", "Disabled", "PendingDeletion", "PendingImport"];
    let mut cells = 0;
    for (i, state) in states.into_iter().enumerate() {
        for op in ["GenerateMac", "VerifyMac"] {
            let arn = hmac_key(&e, "HMAC_256", "EXTERNAL");
            import_hmac(&e, &arn, &[9u8; 32]).unwrap();
            let tag = mac::generate(MacAlgorithm::HmacSha256, &[9u8; 32], b"m");
            match state {
                "Disabled" => {
                    e.ok("DisableKey", json!({"KeyId": arn}));
                }
                "PendingDeletion" => {
                    e.ok(
                        "ScheduleKeyDeletion",
                        json!({"KeyId": arn, "PendingWindowInDays": 7}),
                    );
                }
                "PendingImport" => {
                    e.ok("DeleteImportedKeyMaterial", json!({"KeyId": arn}));
                }
                _ => {}
            }
            assert_eq!(e.state(&arn), state);
            let r = e.call(
                &e.alice,
                op,
                json!({"KeyId": arn, "MacAlgorithm": "HMAC_SHA_256", "Message": b64(b"m"), "Mac": b64(&tag)}),
            );
            let want = [
                None,
                Some("DisabledException"),
                Some("KMSInvalidStateException"),
                Some("KMSInvalidStateException"),
            ][i];
            match (want, r) {
                (None, Ok(v)) if op == "GenerateMac" => assert_eq!(unb64(&v["Mac"]), tag),
                (None, Ok(v)) => assert_eq!(v["MacValid"], true),
                (Some(w), Err(err)) => {
                    assert_eq!(err.aws_type(), w, "{op} on {state}");
                    assert!(err.to_string().contains(&arn), "{err}");
                }
                (w, got) => panic!("{op} on {state}: expected {w:?}, got {got:?}"),
            }
            cells += 1;
        }
    }
    assert_eq!(cells, 8);
}

#[test]
fn grants_and_the_mac_algorithm_condition() {
    let e = env();
    let k256 = hmac_key(&e, "HMAC_256", "AWS_KMS");
    let sym = e.new_key();
    let disk = e.kms.service_session("disk", "us-east-1").unwrap();
    let dc = disk.caller().clone();
    let body = json!({"KeyId": k256, "MacAlgorithm": "HMAC_SHA_256", "Message": b64(b"m")});
    assert_eq!(
        e.call(&dc, "GenerateMac", body.clone())
            .unwrap_err()
            .aws_type(),
        "AccessDeniedException"
    );
    disk.grant_for(
        &e.alice,
        &k256,
        &["GenerateMac", "VerifyMac"],
        &Default::default(),
    )
    .unwrap();
    let tag = unb64(&e.call(&dc, "GenerateMac", body.clone()).unwrap()["Mac"]);
    let mut vb = body;
    vb["Mac"] = json!(b64(&tag));
    assert_eq!(e.call(&dc, "VerifyMac", vb).unwrap()["MacValid"], true);
    // Operations a grant may not allow on the key's kind.
    for (key, ops) in [
        (&k256, vec!["Encrypt"]),
        (&k256, vec!["GenerateMac", "Decrypt"]),
        (&sym, vec!["GenerateMac"]),
        (&sym, vec!["VerifyMac"]),
    ] {
        let err = e.err(
            "CreateGrant",
            json!({"KeyId": key, "GranteePrincipal": "arn:aws:iam::111122223333:user/u", "Operations": ops}),
        );
        assert_eq!(err.aws_type(), "ValidationException", "{ops:?}");
    }
    // kms:MacAlgorithm in a key policy.
    let policy = json!({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:root"}, "Action": "kms:*", "Resource": "*"},
        {"Effect": "Deny", "Principal": {"AWS": "arn:aws:iam::111122223333:root"}, "Action": "kms:GenerateMac", "Resource": "*",
         "Condition": {"StringEquals": {"kms:MacAlgorithm": "HMAC_SHA_384"}}}
    ]});
    for (spec, alg, denied) in [
        ("HMAC_384", "HMAC_SHA_384", true),
        ("HMAC_512", "HMAC_SHA_512", false),
    ] {
        let arn = e.ok(
            "CreateKey",
            json!({"KeySpec": spec, "KeyUsage": "GENERATE_VERIFY_MAC", "Policy": policy.to_string()}),
        )["KeyMetadata"]["Arn"]
            .as_str()
            .unwrap()
            .to_owned();
        let r = e.call(
            &e.alice,
            "GenerateMac",
            json!({"KeyId": arn, "MacAlgorithm": alg, "Message": b64(b"m")}),
        );
        if denied {
            assert_eq!(r.unwrap_err().aws_type(), "AccessDeniedException");
        } else {
            r.unwrap();
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..proptest::prelude::ProptestConfig::default() })]

    /// Whatever a client sends to the operations of this module, on an HMAC
    /// key or an EXTERNAL symmetric key, the answer is a result or a client
    /// error, never a server fault.
    #[test]
    fn arbitrary_mac_and_import_requests_never_fault(
        op_index in 0usize..6,
        body in super::arbitrary_json(),
        use_hmac in proptest::prelude::any::<bool>(),
    ) {
        use atrest_kms::Operation;
        let e = env();
        let key = if use_hmac {
            hmac_key(&e, "HMAC_256", "AWS_KMS")
        } else {
            let k = e.ok("CreateKey", json!({"Origin": "EXTERNAL"}))["KeyMetadata"]["Arn"].as_str().unwrap().to_owned();
            super::byok::import(&e, &e.alice, &k, &[1u8; 32]);
            k
        };
        let op = [
            Operation::GenerateMac,
            Operation::VerifyMac,
            Operation::ImportKeyMaterial,
            Operation::DeleteImportedKeyMaterial,
            Operation::ListKeyRotations,
            Operation::RotateKeyOnDemand,
        ][op_index];
        let mut body = body;
        if let Value::Object(m) = &mut body {
            m.insert("KeyId".into(), json!(key));
        }
        if let Err(err) = super::with_call(&e.alice, |c| e.kms.call(c, op, body.to_string().as_bytes())) {
            proptest::prop_assert!(!err.is_server_fault(), "{op:?} {body}: {err:?}");
        }
    }
}
