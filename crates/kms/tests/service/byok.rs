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
        json!({"KeyId": arn, "ImportToken": p["ImportToken"], "EncryptedKeyMaterial": b64(&other)}),
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
    let err = e.err("ImportKeyMaterial", json!({"KeyId": other, "ImportToken": p["ImportToken"], "EncryptedKeyMaterial": b64(&good)}));
    assert_eq!(err.aws_type(), "InvalidImportTokenException");
    // A tampered token.
    let mut t = unb64(&p["ImportToken"]);
    t[20] ^= 1;
    assert_eq!(
        e.err(
            "ImportKeyMaterial",
            json!({"KeyId": arn, "ImportToken": b64(&t), "EncryptedKeyMaterial": b64(&good)})
        )
        .aws_type(),
        "InvalidImportTokenException"
    );
    // Material wrapped for another key pair, or garbage.
    let p2 = params(&e, &e.alice, &arn, "RSAES_OAEP_SHA_256", "RSA_2048");
    let foreign = wrap(&unb64(&p2["PublicKey"]), "RSAES_OAEP_SHA_256", &[4u8; 32]);
    assert_eq!(e.err("ImportKeyMaterial", json!({"KeyId": arn, "ImportToken": p["ImportToken"], "EncryptedKeyMaterial": b64(&foreign)})).aws_type(), "InvalidCiphertextException");
    // Material of the wrong size.
    let short = wrap(&unb64(&p["PublicKey"]), "RSAES_OAEP_SHA_256", &[4u8; 16]);
    assert_eq!(e.err("ImportKeyMaterial", json!({"KeyId": arn, "ImportToken": p["ImportToken"], "EncryptedKeyMaterial": b64(&short)})).aws_type(), "IncorrectKeyMaterialException");
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
    assert_eq!(e.err("ImportKeyMaterial", json!({"KeyId": arn, "ImportToken": p["ImportToken"], "EncryptedKeyMaterial": b64(&good)})).aws_type(), "ExpiredImportTokenException");
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
