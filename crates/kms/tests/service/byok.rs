//! BYOK (K3): import, expiry, deletion, re-import, and every refusal.

use atrest_kms::Caller;
use aws_lc_rs::key_wrap::{AES_256, AesKek, KeyWrapPadded};
use aws_lc_rs::rsa::{
    OAEP_SHA1_MGF1SHA1, OAEP_SHA256_MGF1SHA256, OaepAlgorithm, OaepPublicEncryptingKey,
    PublicEncryptingKey,
};
use serde_json::{Value, json};
use time::Duration;

use super::{Env, b64, env, unb64};

fn rsa_encrypt(public_der: &[u8], alg: &'static OaepAlgorithm, pt: &[u8]) -> Vec<u8> {
    let enc =
        OaepPublicEncryptingKey::new(PublicEncryptingKey::from_der(public_der).unwrap()).unwrap();
    let mut out = vec![0u8; enc.ciphertext_size()];
    enc.encrypt(alg, pt, &mut out, None).unwrap().to_vec()
}

/// Wraps `material` as the AWS documentation describes for `algorithm`.
pub(super) fn wrap(public_der: &[u8], algorithm: &str, material: &[u8]) -> Vec<u8> {
    match algorithm {
        "RSAES_OAEP_SHA_1" => rsa_encrypt(public_der, &OAEP_SHA1_MGF1SHA1, material),
        "RSAES_OAEP_SHA_256" => rsa_encrypt(public_der, &OAEP_SHA256_MGF1SHA256, material),
        "RSA_AES_KEY_WRAP_SHA_1" | "RSA_AES_KEY_WRAP_SHA_256" => {
            let aes = [0x5au8; 32];
            let alg = if algorithm.ends_with("SHA_1") {
                &OAEP_SHA1_MGF1SHA1
            } else {
                &OAEP_SHA256_MGF1SHA256
            };
            let mut out = rsa_encrypt(public_der, alg, &aes);
            let mut kwp = vec![0u8; material.len() + 16];
            out.extend_from_slice(
                AesKek::new(&AES_256, &aes)
                    .unwrap()
                    .wrap_with_padding(material, &mut kwp)
                    .unwrap(),
            );
            out
        }
        other => panic!("{other}"),
    }
}

pub(super) fn params(e: &Env, who: &Caller, arn: &str, alg: &str, spec: &str) -> Value {
    e.call(
        who,
        "GetParametersForImport",
        json!({"KeyId": arn, "WrappingAlgorithm": alg, "WrappingKeySpec": spec}),
    )
    .unwrap()
}

/// Imports `material` into `arn` (RSAES_OAEP_SHA_256, RSA 2048, no expiry).
pub(super) fn import(e: &Env, who: &Caller, arn: &str, material: &[u8]) {
    let p = params(e, who, arn, "RSAES_OAEP_SHA_256", "RSA_2048");
    let wrapped = wrap(&unb64(&p["PublicKey"]), "RSAES_OAEP_SHA_256", material);
    e.call(who, "ImportKeyMaterial", json!({"KeyId": arn, "ImportToken": p["ImportToken"], "EncryptedKeyMaterial": b64(&wrapped), "ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE"})).unwrap();
}

fn external_key(e: &Env) -> String {
    let meta = e.ok("CreateKey", json!({"Origin": "EXTERNAL"}))["KeyMetadata"].clone();
    assert_eq!(meta["KeyState"], "PendingImport");
    assert_eq!(meta["Origin"], "EXTERNAL");
    assert_eq!(meta["Enabled"], false);
    assert!(meta.get("CurrentKeyMaterialId").is_none());
    meta["Arn"].as_str().unwrap().to_owned()
}

#[test]
fn every_wrapping_algorithm_and_key_size_imports() {
    let e = env();
    for (alg, spec) in [
        ("RSAES_OAEP_SHA_1", "RSA_2048"),
        ("RSAES_OAEP_SHA_256", "RSA_3072"),
        ("RSA_AES_KEY_WRAP_SHA_1", "RSA_2048"),
        ("RSA_AES_KEY_WRAP_SHA_256", "RSA_4096"),
    ] {
        let arn = external_key(&e);
        assert_eq!(
            e.err("Encrypt", json!({"KeyId": arn, "Plaintext": b64(b"x")}))
                .aws_type(),
            "KMSInvalidStateException"
        );
        let p = params(&e, &e.alice, &arn, alg, spec);
        assert_eq!(p["KeyId"], arn.as_str());
        let now = e.kms.now().unix_timestamp() as f64;
        assert!((p["ParametersValidTo"].as_f64().unwrap() - (now + 86_400.0)).abs() < 2.0);
        let material = [0x42u8; 32];
        let wrapped = wrap(&unb64(&p["PublicKey"]), alg, &material);
        let out = e.ok("ImportKeyMaterial", json!({"KeyId": arn, "ImportToken": p["ImportToken"], "EncryptedKeyMaterial": b64(&wrapped), "ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE"}));
        assert_eq!(out["KeyId"], arn.as_str());
        let meta = e.ok("DescribeKey", json!({"KeyId": arn}))["KeyMetadata"].clone();
        assert_eq!(meta["KeyState"], "Enabled", "{alg}");
        assert_eq!(meta["ExpirationModel"], "KEY_MATERIAL_DOES_NOT_EXPIRE");
        let blob =
            e.ok("Encrypt", json!({"KeyId": arn, "Plaintext": b64(b"byok")}))["CiphertextBlob"]
                .clone();
        assert_eq!(
            unb64(&e.ok("Decrypt", json!({"CiphertextBlob": blob}))["Plaintext"]),
            b"byok"
        );
    }
}

#[test]
fn delete_reimport_same_and_different_material() {
    let e = env();
    let arn = external_key(&e);
    import(&e, &e.alice, &arn, &[1u8; 32]);
    let id1 =
        e.ok("DescribeKey", json!({"KeyId": arn}))["KeyMetadata"]["CurrentKeyMaterialId"].clone();
    let blob =
        e.ok("Encrypt", json!({"KeyId": arn, "Plaintext": b64(b"keep")}))["CiphertextBlob"].clone();
    e.ok("DeleteImportedKeyMaterial", json!({"KeyId": arn}));
    assert_eq!(e.state(&arn), "PendingImport");
    assert_eq!(
        e.err("Decrypt", json!({"CiphertextBlob": blob})).aws_type(),
        "KMSInvalidStateException"
    );
    // Different material is refused; the same restores the key.
    let p = params(&e, &e.alice, &arn, "RSAES_OAEP_SHA_256", "RSA_2048");
    let other = wrap(&unb64(&p["PublicKey"]), "RSAES_OAEP_SHA_256", &[2u8; 32]);
    let err = e.err(
        "ImportKeyMaterial",
        json!({"KeyId": arn, "ImportToken": p["ImportToken"], "EncryptedKeyMaterial": b64(&other), "ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE"}),
    );
    assert_eq!(err.aws_type(), "IncorrectKeyMaterialException");
    assert_eq!(e.state(&arn), "PendingImport");
    import(&e, &e.alice, &arn, &[1u8; 32]);
    assert_eq!(
        e.ok("DescribeKey", json!({"KeyId": arn}))["KeyMetadata"]["CurrentKeyMaterialId"],
        id1
    );
    assert_eq!(
        unb64(&e.ok("Decrypt", json!({"CiphertextBlob": blob}))["Plaintext"]),
        b"keep"
    );
}

#[test]
fn expiry_returns_the_key_to_pending_import() {
    let e = env();
    let arn = external_key(&e);
    let p = params(&e, &e.alice, &arn, "RSAES_OAEP_SHA_256", "RSA_2048");
    let wrapped = wrap(&unb64(&p["PublicKey"]), "RSAES_OAEP_SHA_256", &[3u8; 32]);
    let valid_to = (e.kms.now() + Duration::days(2)).unix_timestamp();
    e.ok("ImportKeyMaterial", json!({"KeyId": arn, "ImportToken": p["ImportToken"], "EncryptedKeyMaterial": b64(&wrapped), "ExpirationModel": "KEY_MATERIAL_EXPIRES", "ValidTo": valid_to}));
    let meta = e.ok("DescribeKey", json!({"KeyId": arn}))["KeyMetadata"].clone();
    assert_eq!(meta["ExpirationModel"], "KEY_MATERIAL_EXPIRES");
    assert_eq!(meta["ValidTo"].as_f64().unwrap() as i64, valid_to);
    let blob =
        e.ok("Encrypt", json!({"KeyId": arn, "Plaintext": b64(b"x")}))["CiphertextBlob"].clone();
    e.clock.advance(Duration::days(1));
    assert!(e.kms.run_due().unwrap().expired.is_empty());
    e.clock.advance(Duration::days(1) + Duration::seconds(1));
    assert_eq!(e.kms.run_due().unwrap().expired.len(), 1);
    assert_eq!(e.state(&arn), "PendingImport");
    assert_eq!(
        e.err("Decrypt", json!({"CiphertextBlob": blob})).aws_type(),
        "KMSInvalidStateException"
    );
    import(&e, &e.alice, &arn, &[3u8; 32]);
    assert_eq!(
        unb64(&e.ok("Decrypt", json!({"CiphertextBlob": blob}))["Plaintext"]),
        b"x"
    );
}

#[test]
fn import_refusals() {
    let e = env();
    let arn = external_key(&e);
    let other = external_key(&e);
    let p = params(&e, &e.alice, &arn, "RSAES_OAEP_SHA_256", "RSA_2048");
    let good = wrap(&unb64(&p["PublicKey"]), "RSAES_OAEP_SHA_256", &[4u8; 32]);
    // A token for another key.
    let err = e.err("ImportKeyMaterial", json!({"KeyId": other, "ImportToken": p["ImportToken"], "EncryptedKeyMaterial": b64(&good), "ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE"}));
    assert_eq!(err.aws_type(), "InvalidImportTokenException");
    // A tampered token.
    let mut t = unb64(&p["ImportToken"]);
    t[20] ^= 1;
    assert_eq!(
        e.err(
            "ImportKeyMaterial",
            json!({"KeyId": arn, "ImportToken": b64(&t), "EncryptedKeyMaterial": b64(&good), "ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE"})
        )
        .aws_type(),
        "InvalidImportTokenException"
    );
    // Material wrapped for another key pair, or garbage.
    let p2 = params(&e, &e.alice, &arn, "RSAES_OAEP_SHA_256", "RSA_2048");
    let foreign = wrap(&unb64(&p2["PublicKey"]), "RSAES_OAEP_SHA_256", &[4u8; 32]);
    assert_eq!(e.err("ImportKeyMaterial", json!({"KeyId": arn, "ImportToken": p["ImportToken"], "EncryptedKeyMaterial": b64(&foreign), "ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE"})).aws_type(), "InvalidCiphertextException");
    // Material of the wrong size.
    let short = wrap(&unb64(&p["PublicKey"]), "RSAES_OAEP_SHA_256", &[4u8; 16]);
    assert_eq!(e.err("ImportKeyMaterial", json!({"KeyId": arn, "ImportToken": p["ImportToken"], "EncryptedKeyMaterial": b64(&short), "ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE"})).aws_type(), "IncorrectKeyMaterialException");
    // Expiry rules.
    for (model, valid_to) in [
        (json!("KEY_MATERIAL_EXPIRES"), Value::Null),
        (
            json!("KEY_MATERIAL_DOES_NOT_EXPIRE"),
            json!(e.kms.now().unix_timestamp() + 3600),
        ),
        (
            json!("KEY_MATERIAL_EXPIRES"),
            json!(e.kms.now().unix_timestamp() - 10),
        ),
        (
            json!("KEY_MATERIAL_EXPIRES"),
            json!(e.kms.now().unix_timestamp() + 400 * 86_400),
        ),
        (json!("SOMETIMES"), Value::Null),
    ] {
        let mut req = json!({"KeyId": arn, "ImportToken": p["ImportToken"], "EncryptedKeyMaterial": b64(&good), "ExpirationModel": model});
        if !valid_to.is_null() {
            req["ValidTo"] = valid_to;
        }
        assert_eq!(
            e.err("ImportKeyMaterial", req.clone()).aws_type(),
            "ValidationException",
            "{req}"
        );
    }
    // An expired token.
    e.clock.advance(Duration::hours(25));
    assert_eq!(e.err("ImportKeyMaterial", json!({"KeyId": arn, "ImportToken": p["ImportToken"], "EncryptedKeyMaterial": b64(&good), "ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE"})).aws_type(), "ExpiredImportTokenException");
    // Parameters and operations that do not apply.
    for (alg, spec, want) in [
        (
            "RSAES_PKCS1_V1_5",
            "RSA_2048",
            "UnsupportedOperationException",
        ),
        ("RSAES_OAEP_SHA_256", "SM2", "UnsupportedOperationException"),
        ("ROT13", "RSA_2048", "ValidationException"),
        ("RSAES_OAEP_SHA_256", "RSA_1024", "ValidationException"),
    ] {
        assert_eq!(
            e.err(
                "GetParametersForImport",
                json!({"KeyId": arn, "WrappingAlgorithm": alg, "WrappingKeySpec": spec})
            )
            .aws_type(),
            want
        );
    }
    let generated = e.new_key();
    assert_eq!(e.err("GetParametersForImport", json!({"KeyId": generated, "WrappingAlgorithm": "RSAES_OAEP_SHA_256", "WrappingKeySpec": "RSA_2048"})).aws_type(), "UnsupportedOperationException");
    assert_eq!(
        e.err("DeleteImportedKeyMaterial", json!({"KeyId": generated}))
            .aws_type(),
        "UnsupportedOperationException"
    );
    import(&e, &e.alice, &arn, &[4u8; 32]);
    assert_eq!(
        e.err("EnableKeyRotation", json!({"KeyId": arn})).aws_type(),
        "UnsupportedOperationException"
    );
    // Imported material rotates on demand only to imported new material.
    assert_eq!(
        e.err("RotateKeyOnDemand", json!({"KeyId": arn})).aws_type(),
        "KMSInvalidStateException"
    );
}

fn create(e: &Env, body: Value) -> String {
    e.ok("CreateKey", body)["KeyMetadata"]["Arn"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn import_with(
    e: &Env,
    arn: &str,
    alg: &str,
    spec: &str,
    material: &[u8],
    extra: Value,
) -> Result<Value, atrest_kms::KmsError> {
    let p = params(e, &e.alice, arn, alg, spec);
    let wrapped = wrap(&unb64(&p["PublicKey"]), alg, material);
    let mut body = json!({"KeyId": arn, "ImportToken": p["ImportToken"], "EncryptedKeyMaterial": b64(&wrapped), "ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE"});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    e.call(&e.alice, "ImportKeyMaterial", body)
}

#[test]
fn asymmetric_material_imports_as_pkcs8_of_the_keys_spec() {
    use atrest_crypto::keypair::{self, KeyPairSpec};
    let e = env();
    for (spec, usage, pair) in [
        ("ECC_NIST_P256", "SIGN_VERIFY", KeyPairSpec::EccNistP256),
        ("ECC_NIST_P384", "KEY_AGREEMENT", KeyPairSpec::EccNistP384),
        ("ECC_NIST_P521", "SIGN_VERIFY", KeyPairSpec::EccNistP521),
        ("ECC_SECG_P256K1", "SIGN_VERIFY", KeyPairSpec::EccSecgP256k1),
        ("RSA_2048", "ENCRYPT_DECRYPT", KeyPairSpec::Rsa2048),
        ("RSA_3072", "SIGN_VERIFY", KeyPairSpec::Rsa3072),
    ] {
        let arn = create(
            &e,
            json!({"KeySpec": spec, "KeyUsage": usage, "Origin": "EXTERNAL"}),
        );
        assert_eq!(e.state(&arn), "PendingImport");
        let private = keypair::generate(pair).unwrap();
        // Material of another spec, or not a key at all.
        let other = keypair::generate(if spec == "ECC_NIST_P256" {
            KeyPairSpec::EccNistP384
        } else {
            KeyPairSpec::EccNistP256
        })
        .unwrap();
        for bad in [
            other.expose(),
            &[0x30, 0x03, 0x02, 0x01, 0x00][..],
            &[7u8; 32],
        ] {
            assert_eq!(
                import_with(
                    &e,
                    &arn,
                    "RSA_AES_KEY_WRAP_SHA_256",
                    "RSA_2048",
                    bad,
                    json!({})
                )
                .unwrap_err()
                .aws_type(),
                "IncorrectKeyMaterialException",
                "{spec}"
            );
        }
        assert_eq!(e.state(&arn), "PendingImport");
        // RSA private keys only with RSA_AES_KEY_WRAP; P-521 not with
        // RSA-OAEP under an RSA 2048 wrapping key.
        for alg in ["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"] {
            let r = e.call(
                &e.alice,
                "GetParametersForImport",
                json!({"KeyId": arn, "WrappingAlgorithm": alg, "WrappingKeySpec": "RSA_2048"}),
            );
            if spec.starts_with("RSA") || spec == "ECC_NIST_P521" {
                assert_eq!(
                    r.unwrap_err().aws_type(),
                    "ValidationException",
                    "{spec} {alg}"
                );
            } else {
                r.unwrap();
            }
        }
        let out = import_with(
            &e,
            &arn,
            "RSA_AES_KEY_WRAP_SHA_1",
            "RSA_3072",
            private.expose(),
            json!({}),
        )
        .unwrap();
        assert_eq!(e.state(&arn), "Enabled", "{spec}");
        let id = uuid::Uuid::parse_str(arn.rsplit('/').next().unwrap()).unwrap();
        assert_eq!(
            e.kms.material_for_tests(&id).unwrap(),
            vec![private.expose().to_vec()]
        );
        let meta = e.ok("DescribeKey", json!({"KeyId": arn}))["KeyMetadata"].clone();
        assert_eq!(meta["CurrentKeyMaterialId"], out["KeyMaterialId"]);
        // The same material again, and nothing else; no new material.
        import_with(
            &e,
            &arn,
            "RSA_AES_KEY_WRAP_SHA_256",
            "RSA_4096",
            private.expose(),
            json!({}),
        )
        .unwrap();
        let another = keypair::generate(pair).unwrap();
        assert_eq!(
            import_with(
                &e,
                &arn,
                "RSA_AES_KEY_WRAP_SHA_256",
                "RSA_2048",
                another.expose(),
                json!({})
            )
            .unwrap_err()
            .aws_type(),
            "IncorrectKeyMaterialException"
        );
        assert_eq!(
            import_with(
                &e,
                &arn,
                "RSA_AES_KEY_WRAP_SHA_256",
                "RSA_2048",
                another.expose(),
                json!({"ImportType": "NEW_KEY_MATERIAL"})
            )
            .unwrap_err()
            .aws_type(),
            "UnsupportedOperationException"
        );
    }
    // Keys whose material AWS never imports, and custom key stores.
    for body in [
        json!({"KeySpec": "ECC_NIST_EDWARDS25519", "KeyUsage": "SIGN_VERIFY", "Origin": "EXTERNAL"}),
        json!({"KeySpec": "ML_DSA_65", "KeyUsage": "SIGN_VERIFY", "Origin": "EXTERNAL"}),
        json!({"KeySpec": "HMAC_256", "KeyUsage": "GENERATE_VERIFY_MAC", "Origin": "EXTERNAL_KMS", "CustomKeyStoreId": "p", "XksKeyId": "k"}),
    ] {
        assert_eq!(
            e.err("CreateKey", body.clone()).aws_type(),
            "UnsupportedOperationException",
            "{body}"
        );
    }
}

fn rotations(e: &Env, arn: &str, all: bool) -> Vec<Value> {
    let mut body = json!({"KeyId": arn});
    if all {
        body["IncludeKeyMaterial"] = json!("ALL_KEY_MATERIAL");
    }
    e.ok("ListKeyRotations", body)["Rotations"]
        .as_array()
        .unwrap()
        .clone()
}

fn decrypt_material(e: &Env, blob: &Value) -> Result<String, String> {
    e.call(&e.alice, "Decrypt", json!({"CiphertextBlob": blob}))
        .map(|v| {
            assert_eq!(unb64(&v["Plaintext"]), b"data");
            v["KeyMaterialId"].as_str().unwrap().to_owned()
        })
        .map_err(|err| err.aws_type().to_owned())
}

#[test]
fn new_imported_material_rotates_on_demand_and_old_ciphertexts_decrypt() {
    let e = env();
    let arn = external_key(&e);
    let alg = "RSAES_OAEP_SHA_256";
    let m1 = [1u8; 32];
    let m2 = [2u8; 32];
    let id1 = import_with(
        &e,
        &arn,
        alg,
        "RSA_2048",
        &m1,
        json!({"KeyMaterialDescription": "first one"}),
    )
    .unwrap()["KeyMaterialId"]
        .as_str()
        .unwrap()
        .to_owned();
    let c1 =
        e.ok("Encrypt", json!({"KeyId": arn, "Plaintext": b64(b"data")}))["CiphertextBlob"].clone();
    assert!(rotations(&e, &arn, false).is_empty());
    let all = rotations(&e, &arn, true);
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["KeyMaterialId"], id1.as_str());
    assert_eq!(all[0]["KeyMaterialState"], "CURRENT");
    assert_eq!(all[0]["ImportState"], "IMPORTED");
    assert_eq!(all[0]["ExpirationModel"], "KEY_MATERIAL_DOES_NOT_EXPIRE");
    assert_eq!(all[0]["KeyMaterialDescription"], "first one");
    assert!(all[0].get("RotationDate").is_none());
    // Nothing pending: no rotation.
    assert_eq!(
        e.err("RotateKeyOnDemand", json!({"KeyId": arn})).aws_type(),
        "KMSInvalidStateException"
    );
    // Bad requests.
    for (extra, want) in [
        (json!({"ImportType": "SOMETIMES"}), "ValidationException"),
        (
            json!({"ImportType": "NEW_KEY_MATERIAL", "KeyMaterialDescription": "no!"}),
            "ValidationException",
        ),
        (
            json!({"ImportType": "NEW_KEY_MATERIAL", "KeyMaterialDescription": "x".repeat(257)}),
            "ValidationException",
        ),
        (json!({"KeyMaterialId": "abc"}), "ValidationException"),
        (
            json!({"ImportType": "NEW_KEY_MATERIAL", "ExpirationModel": "KEY_MATERIAL_EXPIRES"}),
            "ValidationException",
        ),
        // Existing material that the key never had.
        (json!({}), "IncorrectKeyMaterialException"),
        (
            json!({"ImportType": "EXISTING_KEY_MATERIAL"}),
            "IncorrectKeyMaterialException",
        ),
        // Existing material named by another material's id.
        (
            json!({"KeyMaterialId": id1}),
            "IncorrectKeyMaterialException",
        ),
    ] {
        assert_eq!(
            import_with(&e, &arn, alg, "RSA_2048", &m2, extra.clone())
                .unwrap_err()
                .aws_type(),
            want,
            "{extra}"
        );
    }
    // The key's own material is not new.
    assert_eq!(
        import_with(
            &e,
            &arn,
            alg,
            "RSA_2048",
            &m1,
            json!({"ImportType": "NEW_KEY_MATERIAL"})
        )
        .unwrap_err()
        .aws_type(),
        "IncorrectKeyMaterialException"
    );
    // New material: pending rotation, not used yet.
    let valid_to = e.kms.now().unix_timestamp() + 30 * 86_400;
    let id2 = import_with(&e, &arn, alg, "RSA_2048", &m2, json!({"ImportType": "NEW_KEY_MATERIAL", "KeyMaterialDescription": "second: 2025/q3", "ExpirationModel": "KEY_MATERIAL_EXPIRES", "ValidTo": valid_to}))
        .unwrap()["KeyMaterialId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(id1, id2);
    assert!(rotations(&e, &arn, false).is_empty());
    let all = rotations(&e, &arn, true);
    assert_eq!(all.len(), 2);
    assert_eq!(all[1]["KeyMaterialId"], id2.as_str());
    assert_eq!(all[1]["KeyMaterialState"], "PENDING_ROTATION");
    assert_eq!(all[1]["ExpirationModel"], "KEY_MATERIAL_EXPIRES");
    assert_eq!(all[1]["ValidTo"].as_f64().unwrap() as i64, valid_to);
    let c =
        e.ok("Encrypt", json!({"KeyId": arn, "Plaintext": b64(b"data")}))["CiphertextBlob"].clone();
    assert_eq!(decrypt_material(&e, &c), Ok(id1.clone()));
    // One pending material at a time.
    assert_eq!(
        import_with(
            &e,
            &arn,
            alg,
            "RSA_2048",
            &[3u8; 32],
            json!({"ImportType": "NEW_KEY_MATERIAL"})
        )
        .unwrap_err()
        .aws_type(),
        "KMSInvalidStateException"
    );
    // Rotate: the new material is current, the old still decrypts.
    e.ok("RotateKeyOnDemand", json!({"KeyId": arn}));
    let meta = e.ok("DescribeKey", json!({"KeyId": arn}))["KeyMetadata"].clone();
    assert_eq!(meta["CurrentKeyMaterialId"], id2.as_str());
    assert_eq!(meta["ExpirationModel"], "KEY_MATERIAL_EXPIRES");
    let c2 =
        e.ok("Encrypt", json!({"KeyId": arn, "Plaintext": b64(b"data")}))["CiphertextBlob"].clone();
    assert_eq!(decrypt_material(&e, &c2), Ok(id2.clone()));
    assert_eq!(decrypt_material(&e, &c1), Ok(id1.clone()));
    let rot = rotations(&e, &arn, false);
    assert_eq!(rot.len(), 1);
    assert_eq!(rot[0]["KeyMaterialId"], id2.as_str());
    assert_eq!(rot[0]["RotationType"], "ON_DEMAND");
    assert_eq!(rot[0]["KeyMaterialState"], "CURRENT");
    assert_eq!(
        rot[0]["RotationDate"].as_f64().unwrap() as i64,
        e.kms.now().unix_timestamp()
    );
    let all = rotations(&e, &arn, true);
    assert_eq!(all[0]["KeyMaterialState"], "NON_CURRENT");
    assert_eq!(
        e.err("RotateKeyOnDemand", json!({"KeyId": arn})).aws_type(),
        "KMSInvalidStateException"
    );
    // Deleting non-current material: the key stays usable, its
    // ciphertexts wait for the same material.
    let out = e.ok(
        "DeleteImportedKeyMaterial",
        json!({"KeyId": arn, "KeyMaterialId": id1}),
    );
    assert_eq!(out["KeyMaterialId"], id1.as_str());
    assert_eq!(e.state(&arn), "Enabled");
    assert_eq!(
        decrypt_material(&e, &c1),
        Err("KMSInvalidStateException".into())
    );
    assert_eq!(decrypt_material(&e, &c2), Ok(id2.clone()));
    assert_eq!(
        rotations(&e, &arn, true)[0]["ImportState"],
        "PENDING_IMPORT"
    );
    assert_eq!(
        e.err(
            "DeleteImportedKeyMaterial",
            json!({"KeyId": arn, "KeyMaterialId": "f".repeat(64)})
        )
        .aws_type(),
        "NotFoundException"
    );
    import_with(
        &e,
        &arn,
        alg,
        "RSA_3072",
        &m1,
        json!({"KeyMaterialId": id1}),
    )
    .unwrap();
    assert_eq!(decrypt_material(&e, &c1), Ok(id1.clone()));
    let all = rotations(&e, &arn, true);
    assert_eq!(all[0]["ImportState"], "IMPORTED");
    assert_eq!(all[0]["KeyMaterialDescription"], "first one");
    // Deleting the current material: PendingImport until it comes back.
    e.ok("DeleteImportedKeyMaterial", json!({"KeyId": arn}));
    assert_eq!(e.state(&arn), "PendingImport");
    assert_eq!(
        decrypt_material(&e, &c1),
        Err("KMSInvalidStateException".into())
    );
    import_with(&e, &arn, alg, "RSA_2048", &m1, json!({})).unwrap();
    assert_eq!(
        e.state(&arn),
        "PendingImport",
        "m1 is not the current material"
    );
    import_with(&e, &arn, alg, "RSA_2048", &m2, json!({})).unwrap();
    assert_eq!(e.state(&arn), "Enabled");
    assert_eq!(decrypt_material(&e, &c2), Ok(id2));
    assert_eq!(decrypt_material(&e, &c1), Ok(id1));
    assert_eq!(
        e.err(
            "ListKeyRotations",
            json!({"KeyId": arn, "IncludeKeyMaterial": "SOME"})
        )
        .aws_type(),
        "ValidationException"
    );
}

#[test]
fn non_current_material_expires_alone() {
    let e = env();
    let arn = external_key(&e);
    let alg = "RSAES_OAEP_SHA_256";
    import_with(&e, &arn, alg, "RSA_2048", &[1u8; 32], json!({})).unwrap();
    let c1 =
        e.ok("Encrypt", json!({"KeyId": arn, "Plaintext": b64(b"data")}))["CiphertextBlob"].clone();
    let soon = e.kms.now().unix_timestamp() + 3600;
    import_with(&e, &arn, alg, "RSA_2048", &[2u8; 32], json!({"ImportType": "NEW_KEY_MATERIAL", "ExpirationModel": "KEY_MATERIAL_EXPIRES", "ValidTo": soon})).unwrap();
    e.ok("RotateKeyOnDemand", json!({"KeyId": arn}));
    let c2 =
        e.ok("Encrypt", json!({"KeyId": arn, "Plaintext": b64(b"data")}))["CiphertextBlob"].clone();
    // Re-import the first material with an expiry sooner than the second's.
    let sooner = soon - 1800;
    import_with(
        &e,
        &arn,
        alg,
        "RSA_2048",
        &[1u8; 32],
        json!({"ExpirationModel": "KEY_MATERIAL_EXPIRES", "ValidTo": sooner}),
    )
    .unwrap();
    e.clock.advance(Duration::seconds(1801));
    e.kms.run_due().unwrap();
    assert_eq!(e.state(&arn), "Enabled", "the non-current material expired");
    assert_eq!(
        decrypt_material(&e, &c1),
        Err("KMSInvalidStateException".into())
    );
    assert!(decrypt_material(&e, &c2).is_ok());
    e.clock.advance(Duration::seconds(1800));
    e.kms.run_due().unwrap();
    assert_eq!(
        e.state(&arn),
        "PendingImport",
        "the current material expired"
    );
    assert_eq!(
        decrypt_material(&e, &c2),
        Err("KMSInvalidStateException".into())
    );
}

#[test]
fn records_of_earlier_releases_load() {
    // A version record and a key's import state as 9b63b50 wrote them.
    let v: atrest_kms::records::VersionRecord = serde_json::from_value(json!({
        "v": 1, "version": 1, "created": 5, "origin": "Initial",
        "material_id": "ab", "sealed": "cd"
    }))
    .unwrap();
    assert!(v.import.is_none() && v.public.is_none());
}
