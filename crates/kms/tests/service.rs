//! The key service driven directly (no HTTP): every operation, its errors,
//! the key-state matrix, rotation and deletion schedules, pagination, and
//! robustness against arbitrary request bodies.

#![allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

use std::sync::Arc;

#[path = "service/access_keys.rs"]
mod access_keys;
#[path = "service/asymmetric.rs"]
mod asymmetric;
#[path = "service/authorization.rs"]
mod authorization;
#[path = "service/aws_errors.rs"]
mod aws_errors;
#[path = "service/byok.rs"]
mod byok;
#[path = "service/external.rs"]
mod external;
#[path = "service/grants_and_services.rs"]
mod grants_and_services;
#[path = "service/mac.rs"]
mod mac;
#[path = "service/multi_region.rs"]
mod multi_region;

use atrest_crypto::Aes256Key;
use atrest_kms::clock::ManualClock;
use atrest_kms::names::AccountId;
use atrest_kms::root::RootKey;
use atrest_kms::{Call, Caller, KeyService, KmsError, Operation, RequestMeta};
use atrest_store::MemoryStore;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use proptest::prelude::*;
use serde_json::{Value, json};
use time::{Duration, OffsetDateTime};

struct Env {
    kms: KeyService,
    clock: Arc<ManualClock>,
    alice: Caller,
}

fn env() -> Env {
    env_with_regions(&["us-east-1", "eu-west-1"])
}

fn env_with_regions(regions: &[&str]) -> Env {
    let clock = Arc::new(ManualClock::new(
        OffsetDateTime::from_unix_timestamp(1_750_000_000).unwrap(),
    ));
    let kms = KeyService::open(
        Arc::new(MemoryStore::new()),
        RootKey::from_key(Aes256Key::generate().unwrap()),
        regions.iter().map(|s| (*s).to_owned()).collect(),
        clock.clone(),
    )
    .unwrap();
    Env {
        kms,
        clock,
        alice: caller("111122223333", "us-east-1"),
    }
}

fn caller(account: &str, region: &str) -> Caller {
    Caller::root(AccountId::parse(account).unwrap(), region)
}

/// Runs `f` with a `Call` for `who`.
fn with_call<T>(who: &Caller, f: impl FnOnce(&Call<'_>) -> T) -> T {
    let meta = RequestMeta::in_process();
    f(&Call::new(who, &meta))
}

impl Env {
    fn call(&self, who: &Caller, op: &str, body: Value) -> Result<Value, KmsError> {
        let op = Operation::from_target(&format!("TrentService.{op}")).expect(op);
        let out = with_call(who, |c| self.kms.call(c, op, body.to_string().as_bytes()))?;
        Ok(serde_json::from_slice(&out).unwrap())
    }

    fn ok(&self, op: &str, body: Value) -> Value {
        self.call(&self.alice, op, body.clone())
            .unwrap_or_else(|e| panic!("{op} {body}: {} {e}", e.aws_type()))
    }

    fn err(&self, op: &str, body: Value) -> KmsError {
        match self.call(&self.alice, op, body.clone()) {
            Ok(v) => panic!("{op} {body} succeeded: {v}"),
            Err(e) => e,
        }
    }

    fn new_key(&self) -> String {
        self.ok("CreateKey", json!({"Description": "test"}))["KeyMetadata"]["KeyId"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn state(&self, key: &str) -> String {
        self.ok("DescribeKey", json!({"KeyId": key}))["KeyMetadata"]["KeyState"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

fn b64(v: &[u8]) -> String {
    B64.encode(v)
}

fn unb64(v: &Value) -> Vec<u8> {
    B64.decode(v.as_str().unwrap()).unwrap()
}

#[test]
fn create_describe_and_list_keys() {
    let e = env();
    let meta = &e.ok(
        "CreateKey",
        json!({"Description": "d", "KeyUsage": "ENCRYPT_DECRYPT", "KeySpec": "SYMMETRIC_DEFAULT",
               "Tags": [{"TagKey": "team", "TagValue": "storage"}]}),
    )["KeyMetadata"];
    let id = meta["KeyId"].as_str().unwrap();
    assert_eq!(meta["AWSAccountId"], "111122223333");
    assert_eq!(
        meta["Arn"],
        format!("arn:aws:kms:us-east-1:111122223333:key/{id}")
    );
    assert_eq!(meta["KeyState"], "Enabled");
    assert_eq!(meta["Enabled"], true);
    assert_eq!(meta["KeyManager"], "CUSTOMER");
    assert_eq!(meta["Origin"], "AWS_KMS");
    assert_eq!(meta["EncryptionAlgorithms"], json!(["SYMMETRIC_DEFAULT"]));
    assert!(meta["CreationDate"].as_f64().unwrap() > 1.7e9);
    let by_arn = e.ok("DescribeKey", json!({"KeyId": meta["Arn"]}));
    assert_eq!(by_arn["KeyMetadata"]["KeyId"], id);

    // Pagination: 7 keys in pages of 3.
    for _ in 0..6 {
        e.new_key();
    }
    let mut seen = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let mut req = json!({"Limit": 3});
        if let Some(m) = &marker {
            req["Marker"] = json!(m);
        }
        let page = e.ok("ListKeys", req);
        for k in page["Keys"].as_array().unwrap() {
            seen.push(k["KeyId"].as_str().unwrap().to_owned());
            assert!(
                k["KeyArn"]
                    .as_str()
                    .unwrap()
                    .ends_with(k["KeyId"].as_str().unwrap())
            );
        }
        if page["Truncated"] == false {
            assert!(page.get("NextMarker").is_none());
            break;
        }
        marker = Some(page["NextMarker"].as_str().unwrap().to_owned());
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 7);

    assert_eq!(
        e.err("ListKeys", json!({"Marker": "garbage"})).aws_type(),
        "InvalidMarkerException"
    );
    assert_eq!(
        e.err("ListKeys", json!({"Limit": 0})).aws_type(),
        "ValidationException"
    );
    assert_eq!(
        e.err("ListKeys", json!({"Limit": 1001})).aws_type(),
        "ValidationException"
    );

    // Another account and another region see none of them.
    let bob = caller("444455556666", "us-east-1");
    assert_eq!(
        e.call(&bob, "ListKeys", json!({})).unwrap()["Keys"],
        json!([])
    );
    let alice_eu = caller("111122223333", "eu-west-1");
    assert_eq!(
        e.call(&alice_eu, "ListKeys", json!({})).unwrap()["Keys"],
        json!([])
    );
}

#[test]
fn every_key_spec_and_usage_aws_allows_is_created_and_described() {
    let e = env();
    let combos: [(&str, &str, &str, &[&str]); 22] = [
        (
            "SYMMETRIC_DEFAULT",
            "ENCRYPT_DECRYPT",
            "EncryptionAlgorithms",
            &["SYMMETRIC_DEFAULT"],
        ),
        (
            "RSA_2048",
            "ENCRYPT_DECRYPT",
            "EncryptionAlgorithms",
            &["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"],
        ),
        (
            "RSA_3072",
            "ENCRYPT_DECRYPT",
            "EncryptionAlgorithms",
            &["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"],
        ),
        (
            "RSA_4096",
            "ENCRYPT_DECRYPT",
            "EncryptionAlgorithms",
            &["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"],
        ),
        (
            "RSA_2048",
            "SIGN_VERIFY",
            "SigningAlgorithms",
            &[
                "RSASSA_PSS_SHA_256",
                "RSASSA_PSS_SHA_384",
                "RSASSA_PSS_SHA_512",
                "RSASSA_PKCS1_V1_5_SHA_256",
                "RSASSA_PKCS1_V1_5_SHA_384",
                "RSASSA_PKCS1_V1_5_SHA_512",
            ],
        ),
        (
            "RSA_3072",
            "SIGN_VERIFY",
            "SigningAlgorithms",
            &[
                "RSASSA_PSS_SHA_256",
                "RSASSA_PSS_SHA_384",
                "RSASSA_PSS_SHA_512",
                "RSASSA_PKCS1_V1_5_SHA_256",
                "RSASSA_PKCS1_V1_5_SHA_384",
                "RSASSA_PKCS1_V1_5_SHA_512",
            ],
        ),
        (
            "RSA_4096",
            "SIGN_VERIFY",
            "SigningAlgorithms",
            &[
                "RSASSA_PSS_SHA_256",
                "RSASSA_PSS_SHA_384",
                "RSASSA_PSS_SHA_512",
                "RSASSA_PKCS1_V1_5_SHA_256",
                "RSASSA_PKCS1_V1_5_SHA_384",
                "RSASSA_PKCS1_V1_5_SHA_512",
            ],
        ),
        (
            "ECC_NIST_P256",
            "SIGN_VERIFY",
            "SigningAlgorithms",
            &["ECDSA_SHA_256"],
        ),
        (
            "ECC_NIST_P384",
            "SIGN_VERIFY",
            "SigningAlgorithms",
            &["ECDSA_SHA_384"],
        ),
        (
            "ECC_NIST_P521",
            "SIGN_VERIFY",
            "SigningAlgorithms",
            &["ECDSA_SHA_512"],
        ),
        (
            "ECC_SECG_P256K1",
            "SIGN_VERIFY",
            "SigningAlgorithms",
            &["ECDSA_SHA_256"],
        ),
        (
            "ECC_NIST_P256",
            "KEY_AGREEMENT",
            "KeyAgreementAlgorithms",
            &["ECDH"],
        ),
        (
            "ECC_NIST_P384",
            "KEY_AGREEMENT",
            "KeyAgreementAlgorithms",
            &["ECDH"],
        ),
        (
            "ECC_NIST_P521",
            "KEY_AGREEMENT",
            "KeyAgreementAlgorithms",
            &["ECDH"],
        ),
        (
            "ECC_NIST_EDWARDS25519",
            "SIGN_VERIFY",
            "SigningAlgorithms",
            &["ED25519_SHA_512", "ED25519_PH_SHA_512"],
        ),
        (
            "ML_DSA_44",
            "SIGN_VERIFY",
            "SigningAlgorithms",
            &["ML_DSA_SHAKE_256"],
        ),
        (
            "ML_DSA_65",
            "SIGN_VERIFY",
            "SigningAlgorithms",
            &["ML_DSA_SHAKE_256"],
        ),
        (
            "ML_DSA_87",
            "SIGN_VERIFY",
            "SigningAlgorithms",
            &["ML_DSA_SHAKE_256"],
        ),
        (
            "HMAC_224",
            "GENERATE_VERIFY_MAC",
            "MacAlgorithms",
            &["HMAC_SHA_224"],
        ),
        (
            "HMAC_256",
            "GENERATE_VERIFY_MAC",
            "MacAlgorithms",
            &["HMAC_SHA_256"],
        ),
        (
            "HMAC_384",
            "GENERATE_VERIFY_MAC",
            "MacAlgorithms",
            &["HMAC_SHA_384"],
        ),
        (
            "HMAC_512",
            "GENERATE_VERIFY_MAC",
            "MacAlgorithms",
            &["HMAC_SHA_512"],
        ),
    ];
    let lists = [
        "EncryptionAlgorithms",
        "SigningAlgorithms",
        "MacAlgorithms",
        "KeyAgreementAlgorithms",
    ];
    for (spec, usage, list, algorithms) in combos {
        let made = e.ok("CreateKey", json!({"KeySpec": spec, "KeyUsage": usage}));
        let id = made["KeyMetadata"]["KeyId"].as_str().unwrap();
        let m = &e.ok("DescribeKey", json!({"KeyId": id}))["KeyMetadata"];
        assert_eq!(m, &made["KeyMetadata"], "{spec}");
        assert_eq!(m["KeySpec"], spec);
        assert_eq!(m["CustomerMasterKeySpec"], spec);
        assert_eq!(m["KeyUsage"], usage);
        assert_eq!(m["KeyState"], "Enabled");
        assert_eq!(m[list], json!(algorithms), "{spec} {usage}");
        for other in lists.iter().filter(|l| **l != list) {
            assert!(m.get(*other).is_none(), "{spec} {usage} has {other}");
        }
    }
    // Only the spec: its usage defaults to ENCRYPT_DECRYPT, as in AWS.
    let rsa = e.ok("CreateKey", json!({"KeySpec": "RSA_2048"}));
    assert_eq!(rsa["KeyMetadata"]["KeyUsage"], "ENCRYPT_DECRYPT");
    // The deprecated twin of KeySpec works alone.
    let twin = e.ok(
        "CreateKey",
        json!({"CustomerMasterKeySpec": "ECC_NIST_P384", "KeyUsage": "SIGN_VERIFY"}),
    );
    assert_eq!(twin["KeyMetadata"]["KeySpec"], "ECC_NIST_P384");
}

#[test]
fn keys_that_are_not_symmetric_refuse_symmetric_operations_and_rotation() {
    let e = env();
    let sign = e.ok(
        "CreateKey",
        json!({"KeySpec": "ECC_NIST_P256", "KeyUsage": "SIGN_VERIFY"}),
    );
    let sign = sign["KeyMetadata"]["KeyId"].as_str().unwrap().to_owned();
    let mac = e.ok(
        "CreateKey",
        json!({"KeySpec": "HMAC_256", "KeyUsage": "GENERATE_VERIFY_MAC"}),
    );
    let mac = mac["KeyMetadata"]["KeyId"].as_str().unwrap().to_owned();
    for key in [&sign, &mac] {
        for (op, body) in [
            ("Encrypt", json!({"KeyId": key, "Plaintext": b64(b"x")})),
            (
                "GenerateDataKey",
                json!({"KeyId": key, "KeySpec": "AES_256"}),
            ),
            (
                "GenerateDataKeyWithoutPlaintext",
                json!({"KeyId": key, "NumberOfBytes": 32}),
            ),
        ] {
            assert_eq!(
                e.err(op, body).aws_type(),
                "InvalidKeyUsageException",
                "{op} {key}"
            );
        }
        for op in [
            "EnableKeyRotation",
            "DisableKeyRotation",
            "RotateKeyOnDemand",
            "GetKeyRotationStatus",
            "ListKeyRotations",
        ] {
            assert_eq!(
                e.err(op, json!({"KeyId": key})).aws_type(),
                "UnsupportedOperationException",
                "{op} {key}"
            );
        }
    }
    // A ciphertext made by a symmetric key, its key id swapped for the
    // signing key's, is not a ciphertext of that key.
    let sym = e.new_key();
    let blob =
        unb64(&e.ok("Encrypt", json!({"KeyId": sym, "Plaintext": b64(b"x")}))["CiphertextBlob"]);
    let sym_id = uuid::Uuid::parse_str(&sym).unwrap();
    let sign_id = uuid::Uuid::parse_str(&sign).unwrap();
    let at = blob
        .windows(16)
        .position(|w| w == sym_id.as_bytes())
        .expect("the blob names its key");
    let mut forged = blob;
    forged[at..at + 16].copy_from_slice(sign_id.as_bytes());
    assert_eq!(
        e.err("Decrypt", json!({"CiphertextBlob": b64(&forged)}))
            .aws_type(),
        "InvalidCiphertextException"
    );
}

#[test]
fn create_key_refuses_what_it_does_not_support() {
    let e = env();
    for (body, want) in [
        (json!({"KeySpec": "SM2"}), "UnsupportedOperationException"),
        (json!({"KeySpec": "NOPE"}), "ValidationException"),
        (json!({"KeyUsage": "NOPE"}), "ValidationException"),
        // AWS's valid combinations of KeySpec and KeyUsage, and nothing else.
        (json!({"KeyUsage": "SIGN_VERIFY"}), "ValidationException"),
        (json!({"KeySpec": "HMAC_256"}), "ValidationException"),
        (
            json!({"KeySpec": "ECC_SECG_P256K1", "KeyUsage": "KEY_AGREEMENT"}),
            "ValidationException",
        ),
        (
            json!({"KeySpec": "RSA_2048", "KeyUsage": "KEY_AGREEMENT"}),
            "ValidationException",
        ),
        (
            json!({"KeySpec": "ECC_NIST_P256", "KeyUsage": "ENCRYPT_DECRYPT"}),
            "ValidationException",
        ),
        (
            json!({"KeySpec": "HMAC_512", "KeyUsage": "SIGN_VERIFY"}),
            "ValidationException",
        ),
        (
            json!({"KeySpec": "RSA_2048", "CustomerMasterKeySpec": "RSA_2048"}),
            "ValidationException",
        ),
        (
            json!({"Origin": "AWS_CLOUDHSM"}),
            "UnsupportedOperationException",
        ),
        (json!({"Origin": "MOON"}), "ValidationException"),
        (
            json!({"MultiRegion": true, "Origin": "EXTERNAL"}),
            "UnsupportedOperationException",
        ),
        (json!({"Policy": "{}"}), "MalformedPolicyDocumentException"),
        (
            json!({"Policy": "not json"}),
            "MalformedPolicyDocumentException",
        ),
        (
            json!({"CustomKeyStoreId": "cks-1"}),
            "UnsupportedOperationException",
        ),
        (
            json!({"Description": "x".repeat(8193)}),
            "ValidationException",
        ),
        (
            json!({"Tags": [{"TagKey": "aws:x", "TagValue": "v"}]}),
            "TagException",
        ),
        (json!({"Tags": [{"TagKey": "k"}]}), "ValidationException"),
        (json!({"Description": 5}), "SerializationException"),
        (json!({"Tags": "not a list"}), "SerializationException"),
    ] {
        assert_eq!(e.err("CreateKey", body.clone()).aws_type(), want, "{body}");
    }
    assert_eq!(
        e.ok("ListKeys", json!({}))["Keys"],
        json!([]),
        "nothing was created"
    );
}

#[test]
fn key_ids_that_name_nothing() {
    let e = env();
    let key = e.new_key();
    for (id, want) in [
        ("nonsense", "NotFoundException"),
        ("00000000-0000-4000-8000-000000000000", "NotFoundException"),
        (
            "arn:aws:kms:us-east-1:111122223333:key/00000000-0000-4000-8000-000000000000",
            "NotFoundException",
        ),
        ("alias/none", "NotFoundException"),
        (
            "arn:aws:kms:us-east-1:111122223333:alias/none",
            "NotFoundException",
        ),
        ("arn:aws:s3:::bucket", "InvalidArnException"),
        ("arn:aws:kms:us-east-1:bad:key/x", "InvalidArnException"),
        ("", "ValidationException"),
    ] {
        assert_eq!(
            e.err("DescribeKey", json!({"KeyId": id})).aws_type(),
            want,
            "{id}"
        );
    }
    // A key of this account addressed in another region does not exist there.
    let arn_eu = format!("arn:aws:kms:eu-west-1:111122223333:key/{key}");
    assert_eq!(
        e.err("DescribeKey", json!({"KeyId": arn_eu})).aws_type(),
        "NotFoundException"
    );
    let alice_eu = caller("111122223333", "eu-west-1");
    let err = e
        .call(&alice_eu, "DescribeKey", json!({"KeyId": key}))
        .unwrap_err();
    assert_eq!(err.aws_type(), "NotFoundException");
    assert!(err.to_string().contains("does not exist"), "{err}");
    // Management operations refuse aliases.
    e.ok(
        "CreateAlias",
        json!({"AliasName": "alias/k", "TargetKeyId": key}),
    );
    assert_eq!(
        e.err("DisableKey", json!({"KeyId": "alias/k"})).aws_type(),
        "NotFoundException"
    );
    assert_eq!(
        e.err("EnableKey", json!({})).aws_type(),
        "ValidationException"
    );
}

#[test]
fn another_account_is_denied() {
    let e = env();
    let key = e.new_key();
    let arn = format!("arn:aws:kms:us-east-1:111122223333:key/{key}");
    let blob =
        e.ok("Encrypt", json!({"KeyId": key, "Plaintext": b64(b"x")}))["CiphertextBlob"].clone();
    let bob = caller("444455556666", "us-east-1");
    for (op, body) in [
        ("DescribeKey", json!({"KeyId": arn})),
        ("Encrypt", json!({"KeyId": arn, "Plaintext": b64(b"x")})),
        ("Decrypt", json!({"CiphertextBlob": blob})),
        (
            "GenerateDataKey",
            json!({"KeyId": arn, "KeySpec": "AES_256"}),
        ),
        ("DisableKey", json!({"KeyId": arn})),
        ("ScheduleKeyDeletion", json!({"KeyId": arn})),
    ] {
        let err = e.call(&bob, op, body).unwrap_err();
        assert_eq!(err.aws_type(), "AccessDeniedException", "{op}");
        assert!(
            err.to_string().contains("arn:aws:iam::444455556666:root"),
            "{err}"
        );
    }
    // Bob's bare key id is looked up in Bob's account, where it does not exist.
    assert_eq!(
        e.call(&bob, "DescribeKey", json!({"KeyId": key}))
            .unwrap_err()
            .aws_type(),
        "NotFoundException"
    );
    assert_eq!(e.state(&key), "Enabled");
}

#[test]
fn envelope_encryption_round_trips() {
    let e = env();
    let key = e.new_key();
    let ctx = json!({"purpose": "test", "tenant": "t1"});

    let enc = e.ok(
        "Encrypt",
        json!({"KeyId": key, "Plaintext": b64(b"hello"), "EncryptionContext": ctx}),
    );
    assert!(
        enc["KeyId"]
            .as_str()
            .unwrap()
            .starts_with("arn:aws:kms:us-east-1:111122223333:key/")
    );
    assert_eq!(enc["EncryptionAlgorithm"], "SYMMETRIC_DEFAULT");
    let blob = enc["CiphertextBlob"].clone();
    // Context order does not matter; the key is found from the blob.
    let dec = e.ok(
        "Decrypt",
        json!({"CiphertextBlob": blob, "EncryptionContext": {"tenant": "t1", "purpose": "test"}}),
    );
    assert_eq!(unb64(&dec["Plaintext"]), b"hello");
    assert_eq!(dec["KeyId"], enc["KeyId"]);

    for bad_ctx in [
        json!({}),
        json!({"purpose": "test"}),
        json!({"purpose": "test", "tenant": "t2"}),
        json!({"purpose": "test", "tenant": "t1", "extra": "x"}),
    ] {
        let err = e.err(
            "Decrypt",
            json!({"CiphertextBlob": blob, "EncryptionContext": bad_ctx}),
        );
        assert_eq!(err.aws_type(), "InvalidCiphertextException", "{bad_ctx}");
    }

    // KeyId on Decrypt must name the blob's key.
    let other = e.new_key();
    assert_eq!(
        e.err(
            "Decrypt",
            json!({"CiphertextBlob": blob, "EncryptionContext": ctx, "KeyId": other})
        )
        .aws_type(),
        "IncorrectKeyException"
    );
    e.ok(
        "CreateAlias",
        json!({"AliasName": "alias/main", "TargetKeyId": key}),
    );
    e.ok(
        "Decrypt",
        json!({"CiphertextBlob": blob, "EncryptionContext": ctx, "KeyId": "alias/main"}),
    );

    // GenerateDataKey: the plaintext and the blob agree.
    let dk = e.ok(
        "GenerateDataKey",
        json!({"KeyId": "alias/main", "KeySpec": "AES_256", "EncryptionContext": ctx}),
    );
    let plain = unb64(&dk["Plaintext"]);
    assert_eq!(plain.len(), 32);
    let back = e.ok(
        "Decrypt",
        json!({"CiphertextBlob": dk["CiphertextBlob"], "EncryptionContext": ctx}),
    );
    assert_eq!(unb64(&back["Plaintext"]), plain);
    assert_eq!(
        unb64(
            &e.ok(
                "GenerateDataKey",
                json!({"KeyId": key, "KeySpec": "AES_128"})
            )["Plaintext"]
        )
        .len(),
        16
    );
    assert_eq!(
        unb64(
            &e.ok(
                "GenerateDataKey",
                json!({"KeyId": key, "NumberOfBytes": 1024})
            )["Plaintext"]
        )
        .len(),
        1024
    );
    let wp = e.ok(
        "GenerateDataKeyWithoutPlaintext",
        json!({"KeyId": key, "NumberOfBytes": 64}),
    );
    assert!(wp.get("Plaintext").is_none());
    assert_eq!(
        unb64(&e.ok("Decrypt", json!({"CiphertextBlob": wp["CiphertextBlob"]}))["Plaintext"]).len(),
        64
    );

    // ReEncrypt moves a ciphertext to another key and context.
    let re = e.ok("ReEncrypt", json!({"CiphertextBlob": blob, "SourceEncryptionContext": ctx,
                                       "DestinationKeyId": other, "DestinationEncryptionContext": {"new": "ctx"}}));
    assert_eq!(re["SourceKeyId"], enc["KeyId"]);
    assert!(re["KeyId"].as_str().unwrap().ends_with(&other));
    let moved = e.ok(
        "Decrypt",
        json!({"CiphertextBlob": re["CiphertextBlob"], "EncryptionContext": {"new": "ctx"}}),
    );
    assert_eq!(unb64(&moved["Plaintext"]), b"hello");
    assert_eq!(
        e.err(
            "ReEncrypt",
            json!({"CiphertextBlob": blob, "DestinationKeyId": other})
        )
        .aws_type(),
        "InvalidCiphertextException"
    );
    assert_eq!(
        e.err(
            "ReEncrypt",
            json!({"CiphertextBlob": blob, "SourceEncryptionContext": ctx, "SourceKeyId": other,
                                         "DestinationKeyId": other})
        )
        .aws_type(),
        "IncorrectKeyException"
    );
    assert_eq!(
        e.err("ReEncrypt", json!({"CiphertextBlob": blob}))
            .aws_type(),
        "ValidationException"
    );

    // GenerateRandom.
    assert_eq!(
        unb64(&e.ok("GenerateRandom", json!({"NumberOfBytes": 1024}))["Plaintext"]).len(),
        1024
    );
    for n in [0, 1025, -1] {
        assert_eq!(
            e.err("GenerateRandom", json!({"NumberOfBytes": n}))
                .aws_type(),
            "ValidationException"
        );
    }
    assert_eq!(
        e.err("GenerateRandom", json!({})).aws_type(),
        "ValidationException"
    );
}

#[test]
fn crypto_parameter_errors() {
    let e = env();
    let key = e.new_key();
    for (op, body, want) in [
        ("Encrypt", json!({"KeyId": key}), "ValidationException"),
        (
            "Encrypt",
            json!({"Plaintext": b64(b"x")}),
            "ValidationException",
        ),
        (
            "Encrypt",
            json!({"KeyId": key, "Plaintext": b64(&[0u8; 4097])}),
            "ValidationException",
        ),
        (
            "Encrypt",
            json!({"KeyId": key, "Plaintext": ""}),
            "ValidationException",
        ),
        (
            "Encrypt",
            json!({"KeyId": key, "Plaintext": "%%%"}),
            "SerializationException",
        ),
        (
            "Encrypt",
            json!({"KeyId": key, "Plaintext": b64(b"x"), "EncryptionAlgorithm": "RSAES_OAEP_SHA_256"}),
            "InvalidKeyUsageException",
        ),
        (
            "Encrypt",
            json!({"KeyId": key, "Plaintext": b64(b"x"), "EncryptionAlgorithm": "ROT13"}),
            "ValidationException",
        ),
        (
            "Encrypt",
            json!({"KeyId": key, "Plaintext": b64(b"x"), "EncryptionContext": {"": "v"}}),
            "ValidationException",
        ),
        (
            "Encrypt",
            json!({"KeyId": key, "Plaintext": b64(b"x"), "EncryptionContext": {"k": 1}}),
            "SerializationException",
        ),
        (
            "Encrypt",
            json!({"KeyId": key, "Plaintext": b64(b"x"), "GrantTokens": ["t"]}),
            "InvalidGrantTokenException",
        ),
        (
            "Encrypt",
            json!({"KeyId": key, "Plaintext": b64(b"x"), "DryRun": true}),
            "DryRunOperationException",
        ),
        (
            "GenerateDataKey",
            json!({"KeyId": key}),
            "ValidationException",
        ),
        (
            "GenerateDataKey",
            json!({"KeyId": key, "KeySpec": "AES_256", "NumberOfBytes": 32}),
            "ValidationException",
        ),
        (
            "GenerateDataKey",
            json!({"KeyId": key, "KeySpec": "AES_512"}),
            "ValidationException",
        ),
        (
            "GenerateDataKey",
            json!({"KeyId": key, "NumberOfBytes": 0}),
            "ValidationException",
        ),
        (
            "GenerateDataKey",
            json!({"KeyId": key, "NumberOfBytes": 1025}),
            "ValidationException",
        ),
        (
            "GenerateDataKey",
            json!({"KeyId": key, "NumberOfBytes": "32"}),
            "SerializationException",
        ),
        (
            "GenerateDataKey",
            json!({"KeyId": key, "NumberOfBytes": 32.5}),
            "SerializationException",
        ),
        ("Decrypt", json!({}), "ValidationException"),
        (
            "Decrypt",
            json!({"CiphertextBlob": b64(b"short")}),
            "InvalidCiphertextException",
        ),
        (
            "Decrypt",
            json!({"CiphertextBlob": b64(&[1u8; 200])}),
            "InvalidCiphertextException",
        ),
        (
            "Decrypt",
            json!({"CiphertextBlob": b64(&[1u8; 6145])}),
            "ValidationException",
        ),
        (
            "Decrypt",
            json!({"CiphertextBlob": "", }),
            "ValidationException",
        ),
    ] {
        let err = e.err(op, body.clone());
        assert_eq!(err.aws_type(), want, "{op} {body}: {err}");
    }
    let missing = e.err("Encrypt", json!({"KeyId": key})).to_string();
    assert!(
        missing.contains("'plaintext'") && missing.contains("must not be null"),
        "{missing}"
    );
}

#[test]
fn every_single_byte_change_of_a_blob_is_rejected() {
    let e = env();
    let key = e.new_key();
    let blob = unb64(
        &e.ok(
            "Encrypt",
            json!({"KeyId": key, "Plaintext": b64(b"0123456789abcdef")}),
        )["CiphertextBlob"],
    );
    for i in 0..blob.len() {
        for delta in [0x01u8, 0xff] {
            let mut bad = blob.clone();
            bad[i] = bad[i].wrapping_add(delta);
            let err = e.err("Decrypt", json!({"CiphertextBlob": b64(&bad)}));
            assert_eq!(err.aws_type(), "InvalidCiphertextException", "byte {i}");
        }
    }
    assert_eq!(
        e.err(
            "Decrypt",
            json!({"CiphertextBlob": b64(&blob[..blob.len() - 1])})
        )
        .aws_type(),
        "InvalidCiphertextException"
    );
    let mut longer = blob;
    longer.push(0);
    assert_eq!(
        e.err("Decrypt", json!({"CiphertextBlob": b64(&longer)}))
            .aws_type(),
        "InvalidCiphertextException"
    );
}

/// Every operation against a key in each state: AWS's key-state table.
#[test]
fn key_state_matrix() {
    let e = env();
    #[derive(Clone, Copy, Debug)]
    enum S {
        Enabled,
        Disabled,
        PendingDeletion,
        /// A multi-Region primary key with a replica, scheduled for deletion.
        PendingReplicaDeletion,
    }
    let setup = |s: S| -> (String, Value) {
        let key = if matches!(s, S::PendingReplicaDeletion) {
            let key = e.ok("CreateKey", json!({"MultiRegion": true}))["KeyMetadata"]["KeyId"]
                .as_str()
                .unwrap()
                .to_owned();
            e.ok(
                "ReplicateKey",
                json!({"KeyId": key, "ReplicaRegion": "eu-west-1"}),
            );
            key
        } else {
            e.new_key()
        };
        let blob = e.ok("Encrypt", json!({"KeyId": key, "Plaintext": b64(b"x")}))["CiphertextBlob"]
            .clone();
        match s {
            S::Enabled => {}
            S::Disabled => {
                e.ok("DisableKey", json!({"KeyId": key}));
            }
            S::PendingDeletion | S::PendingReplicaDeletion => {
                e.ok(
                    "ScheduleKeyDeletion",
                    json!({"KeyId": key, "PendingWindowInDays": 7}),
                );
            }
        }
        (key, blob)
    };
    let other = e.new_key();
    type Case = (
        &'static str,
        fn(&str, &Value, &str) -> Value,
        [Option<&'static str>; 4],
    );
    let ok = None;
    let dis = Some("DisabledException");
    let inv = Some("KMSInvalidStateException");
    let cases: Vec<Case> = vec![
        (
            "DescribeKey",
            |k, _, _| json!({"KeyId": k}),
            [ok, ok, ok, ok],
        ),
        (
            "Encrypt",
            |k, _, _| json!({"KeyId": k, "Plaintext": "eA=="}),
            [ok, dis, inv, inv],
        ),
        (
            "Decrypt",
            |_, b, _| json!({"CiphertextBlob": b}),
            [ok, dis, inv, inv],
        ),
        (
            "ReEncrypt",
            |_, b, o| json!({"CiphertextBlob": b, "DestinationKeyId": o}),
            [ok, dis, inv, inv],
        ),
        (
            "GenerateDataKey",
            |k, _, _| json!({"KeyId": k, "KeySpec": "AES_256"}),
            [ok, dis, inv, inv],
        ),
        (
            "GenerateDataKeyWithoutPlaintext",
            |k, _, _| json!({"KeyId": k, "KeySpec": "AES_256"}),
            [ok, dis, inv, inv],
        ),
        (
            "GenerateDataKeyPair",
            |k, _, _| json!({"KeyId": k, "KeyPairSpec": "ECC_NIST_P256"}),
            [ok, dis, inv, inv],
        ),
        (
            "GenerateDataKeyPairWithoutPlaintext",
            |k, _, _| json!({"KeyId": k, "KeyPairSpec": "ECC_NIST_P256"}),
            [ok, dis, inv, inv],
        ),
        (
            "UpdateKeyDescription",
            |k, _, _| json!({"KeyId": k, "Description": "n"}),
            [ok, ok, inv, inv],
        ),
        (
            "EnableKey",
            |k, _, _| json!({"KeyId": k}),
            [ok, ok, inv, inv],
        ),
        (
            "DisableKey",
            |k, _, _| json!({"KeyId": k}),
            [ok, ok, inv, inv],
        ),
        (
            "ScheduleKeyDeletion",
            |k, _, _| json!({"KeyId": k}),
            [ok, ok, inv, inv],
        ),
        (
            "CancelKeyDeletion",
            |k, _, _| json!({"KeyId": k}),
            [inv, inv, ok, ok],
        ),
        (
            "EnableKeyRotation",
            |k, _, _| json!({"KeyId": k}),
            [ok, dis, inv, inv],
        ),
        (
            "DisableKeyRotation",
            |k, _, _| json!({"KeyId": k}),
            [ok, dis, inv, inv],
        ),
        (
            "GetKeyRotationStatus",
            |k, _, _| json!({"KeyId": k}),
            [ok, ok, ok, ok],
        ),
        (
            "RotateKeyOnDemand",
            |k, _, _| json!({"KeyId": k}),
            [ok, dis, inv, inv],
        ),
        (
            "ListKeyRotations",
            |k, _, _| json!({"KeyId": k}),
            [ok, ok, ok, ok],
        ),
        (
            "TagResource",
            |k, _, _| json!({"KeyId": k, "Tags": [{"TagKey": "a", "TagValue": "b"}]}),
            [ok, ok, inv, inv],
        ),
        (
            "UntagResource",
            |k, _, _| json!({"KeyId": k, "TagKeys": ["a"]}),
            [ok, ok, inv, inv],
        ),
        (
            "ListResourceTags",
            |k, _, _| json!({"KeyId": k}),
            [ok, ok, ok, ok],
        ),
        (
            "CreateAlias",
            |k, _, _| json!({"AliasName": format!("alias/{}", &k[k.len() - 12..]), "TargetKeyId": k}),
            [ok, ok, inv, inv],
        ),
    ];
    let mut cells = 0;
    for (op, body, expect) in &cases {
        for (i, s) in [
            S::Enabled,
            S::Disabled,
            S::PendingDeletion,
            S::PendingReplicaDeletion,
        ]
        .into_iter()
        .enumerate()
        {
            let (key, blob) = setup(s);
            let r = e.call(&e.alice, op, body(&key, &blob, &other));
            match (expect[i], r) {
                (None, Ok(_)) => {}
                (Some(want), Err(err)) => {
                    assert_eq!(err.aws_type(), want, "{op} on {s:?}: {err}");
                    assert!(
                        err.to_string().contains(&key),
                        "{op} on {s:?}: message names the key: {err}"
                    );
                }
                (want, got) => panic!("{op} on {s:?}: expected {want:?}, got {got:?}"),
            }
            cells += 1;
        }
    }
    assert_eq!(cells, cases.len() * 4);
    // ListAliases and ListKeys work whatever the states.
    e.ok("ListAliases", json!({}));
    e.ok("ListKeys", json!({}));
}

#[test]
fn enable_disable_and_deletion_lifecycle() {
    let e = env();
    let key = e.new_key();
    let blob =
        e.ok("Encrypt", json!({"KeyId": key, "Plaintext": b64(b"kept")}))["CiphertextBlob"].clone();
    e.ok(
        "CreateAlias",
        json!({"AliasName": "alias/doomed", "TargetKeyId": key}),
    );
    e.ok("DisableKey", json!({"KeyId": key}));
    assert_eq!(e.state(&key), "Disabled");
    let err = e.err("Decrypt", json!({"CiphertextBlob": blob}));
    assert_eq!(
        err.to_string(),
        format!("arn:aws:kms:us-east-1:111122223333:key/{key} is disabled.")
    );
    e.ok("EnableKey", json!({"KeyId": key}));
    assert_eq!(
        unb64(&e.ok("Decrypt", json!({"CiphertextBlob": blob}))["Plaintext"]),
        b"kept"
    );

    for d in [6, 31] {
        assert_eq!(
            e.err(
                "ScheduleKeyDeletion",
                json!({"KeyId": key, "PendingWindowInDays": d})
            )
            .aws_type(),
            "ValidationException"
        );
    }
    let s = e.ok("ScheduleKeyDeletion", json!({"KeyId": key}));
    assert_eq!(s["PendingWindowInDays"], 30);
    assert_eq!(s["KeyState"], "PendingDeletion");
    let now = e.kms.now().unix_timestamp() as f64;
    assert!((s["DeletionDate"].as_f64().unwrap() - (now + 30.0 * 86400.0)).abs() < 1.0);
    let meta = e.ok("DescribeKey", json!({"KeyId": key}))["KeyMetadata"].clone();
    assert_eq!(meta["DeletionDate"], s["DeletionDate"]);
    assert_eq!(
        e.ok("CancelKeyDeletion", json!({"KeyId": key}))["KeyId"],
        meta["Arn"]
    );
    assert_eq!(e.state(&key), "Disabled");
    assert!(
        e.ok("DescribeKey", json!({"KeyId": key}))["KeyMetadata"]
            .get("DeletionDate")
            .is_none()
    );

    // A cancelled deletion never fires.
    e.clock.advance(Duration::days(31));
    assert!(e.kms.run_due().unwrap().deleted.is_empty());
    assert_eq!(e.state(&key), "Disabled");

    e.ok(
        "ScheduleKeyDeletion",
        json!({"KeyId": key, "PendingWindowInDays": 7}),
    );
    e.clock.advance(Duration::days(6));
    assert!(e.kms.run_due().unwrap().deleted.is_empty());
    assert_eq!(e.state(&key), "PendingDeletion");
    e.clock.advance(Duration::days(1) + Duration::seconds(1));
    let report = e.kms.run_due().unwrap();
    assert_eq!(report.deleted.len(), 1);
    assert_eq!(report.deleted[0].to_string(), key);
    // The key, its aliases and its material are gone.
    assert_eq!(
        e.err("DescribeKey", json!({"KeyId": key})).aws_type(),
        "NotFoundException"
    );
    assert_eq!(
        e.err("DescribeKey", json!({"KeyId": "alias/doomed"}))
            .aws_type(),
        "NotFoundException"
    );
    assert_eq!(e.ok("ListAliases", json!({}))["Aliases"], json!([]));
    assert_eq!(
        e.err("Decrypt", json!({"CiphertextBlob": blob})).aws_type(),
        "InvalidCiphertextException"
    );
    assert!(
        e.ok("ListKeys", json!({}))["Keys"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(e.kms.material_for_tests(&key.parse().unwrap()).is_err());
    assert!(
        e.kms.run_due().unwrap().deleted.is_empty(),
        "nothing left to do"
    );
}

#[test]
fn rotation_on_demand_and_automatic() {
    let e = env();
    let key = e.new_key();
    let before =
        e.ok("Encrypt", json!({"KeyId": key, "Plaintext": b64(b"v1")}))["CiphertextBlob"].clone();
    let m1 =
        e.ok("DescribeKey", json!({"KeyId": key}))["KeyMetadata"]["CurrentKeyMaterialId"].clone();

    let st = e.ok("GetKeyRotationStatus", json!({"KeyId": key}));
    assert_eq!(st["KeyRotationEnabled"], false);
    assert_eq!(st["KeyId"], key, "the bare key id, as AWS answers");
    assert!(st.get("NextRotationDate").is_none());
    assert_eq!(
        e.ok("ListKeyRotations", json!({"KeyId": key}))["Rotations"],
        json!([])
    );

    assert_eq!(
        e.ok("RotateKeyOnDemand", json!({"KeyId": key}))["KeyId"],
        format!("arn:aws:kms:us-east-1:111122223333:key/{key}"),
        "the key ARN, as AWS answers"
    );
    let m2 =
        e.ok("DescribeKey", json!({"KeyId": key}))["KeyMetadata"]["CurrentKeyMaterialId"].clone();
    assert_ne!(m1, m2);
    let after =
        e.ok("Encrypt", json!({"KeyId": key, "Plaintext": b64(b"v2")}))["CiphertextBlob"].clone();
    assert_eq!(
        unb64(&e.ok("Decrypt", json!({"CiphertextBlob": before}))["Plaintext"]),
        b"v1"
    );
    let d2 = e.ok("Decrypt", json!({"CiphertextBlob": after}));
    assert_eq!(unb64(&d2["Plaintext"]), b"v2");
    assert_eq!(d2["KeyMaterialId"], m2);
    let rotations = e.ok("ListKeyRotations", json!({"KeyId": key}));
    assert_eq!(rotations["Rotations"].as_array().unwrap().len(), 1);
    assert_eq!(rotations["Rotations"][0]["RotationType"], "ON_DEMAND");

    // Automatic rotation.
    for p in [89, 2561] {
        assert_eq!(
            e.err(
                "EnableKeyRotation",
                json!({"KeyId": key, "RotationPeriodInDays": p})
            )
            .aws_type(),
            "ValidationException"
        );
    }
    e.ok(
        "EnableKeyRotation",
        json!({"KeyId": key, "RotationPeriodInDays": 90}),
    );
    let st = e.ok("GetKeyRotationStatus", json!({"KeyId": key}));
    assert_eq!(st["KeyRotationEnabled"], true);
    assert_eq!(st["RotationPeriodInDays"], 90);
    let now = e.kms.now().unix_timestamp() as f64;
    assert!((st["NextRotationDate"].as_f64().unwrap() - (now + 90.0 * 86400.0)).abs() < 1.0);
    e.clock.advance(Duration::days(89));
    assert!(e.kms.run_due().unwrap().rotated.is_empty());
    e.clock.advance(Duration::days(1));
    assert_eq!(e.kms.run_due().unwrap().rotated.len(), 1);
    let rot = e.ok("ListKeyRotations", json!({"KeyId": key}));
    assert_eq!(rot["Rotations"].as_array().unwrap().len(), 2);
    assert_eq!(rot["Rotations"][1]["RotationType"], "AUTOMATIC");
    // A disabled key is not rotated while disabled, and is once re-enabled.
    e.ok("DisableKey", json!({"KeyId": key}));
    e.clock.advance(Duration::days(91));
    assert!(e.kms.run_due().unwrap().rotated.is_empty());
    e.ok("EnableKey", json!({"KeyId": key}));
    assert_eq!(e.kms.run_due().unwrap().rotated.len(), 1);
    // Every version still decrypts.
    assert_eq!(
        unb64(&e.ok("Decrypt", json!({"CiphertextBlob": before}))["Plaintext"]),
        b"v1"
    );
    assert_eq!(
        unb64(&e.ok("Decrypt", json!({"CiphertextBlob": after}))["Plaintext"]),
        b"v2"
    );
    // Disabling stops the schedule.
    e.ok("DisableKeyRotation", json!({"KeyId": key}));
    e.clock.advance(Duration::days(365));
    assert!(e.kms.run_due().unwrap().rotated.is_empty());

    // ListKeyRotations pages.
    let page = e.ok("ListKeyRotations", json!({"KeyId": key, "Limit": 2}));
    assert_eq!(page["Truncated"], true);
    let rest = e.ok(
        "ListKeyRotations",
        json!({"KeyId": key, "Marker": page["NextMarker"]}),
    );
    assert_eq!(rest["Rotations"].as_array().unwrap().len(), 1);
    assert_eq!(rest["Truncated"], false);

    // The on-demand quota.
    let k2 = e.new_key();
    for _ in 0..25 {
        e.ok("RotateKeyOnDemand", json!({"KeyId": k2}));
    }
    assert_eq!(
        e.err("RotateKeyOnDemand", json!({"KeyId": k2})).aws_type(),
        "LimitExceededException"
    );
}

#[test]
fn aliases() {
    let e = env();
    let a = e.new_key();
    let b = e.new_key();
    e.ok(
        "CreateAlias",
        json!({"AliasName": "alias/app", "TargetKeyId": a}),
    );
    assert_eq!(
        e.err(
            "CreateAlias",
            json!({"AliasName": "alias/app", "TargetKeyId": b})
        )
        .aws_type(),
        "AlreadyExistsException"
    );
    for (name, want) in [
        ("app", "InvalidAliasNameException"),
        ("alias/aws/ebs", "NotAuthorizedException"),
        ("alias/atrest/disk", "NotAuthorizedException"),
        ("alias/sp ace", "ValidationException"),
    ] {
        assert_eq!(
            e.err("CreateAlias", json!({"AliasName": name, "TargetKeyId": a}))
                .aws_type(),
            want,
            "{name}"
        );
    }
    assert_eq!(
        e.err(
            "CreateAlias",
            json!({"AliasName": "alias/x", "TargetKeyId": "alias/app"})
        )
        .aws_type(),
        "ValidationException"
    );
    assert_eq!(
        e.err("CreateAlias", json!({"AliasName": "alias/x"}))
            .aws_type(),
        "ValidationException"
    );

    let enc = e.ok(
        "Encrypt",
        json!({"KeyId": "alias/app", "Plaintext": b64(b"x")}),
    );
    assert!(enc["KeyId"].as_str().unwrap().ends_with(&a));
    let alias_arn = "arn:aws:kms:us-east-1:111122223333:alias/app";
    assert!(e.ok("DescribeKey", json!({"KeyId": alias_arn}))["KeyMetadata"]["KeyId"] == a.as_str());

    e.ok(
        "UpdateAlias",
        json!({"AliasName": "alias/app", "TargetKeyId": b}),
    );
    assert_eq!(
        e.ok("DescribeKey", json!({"KeyId": "alias/app"}))["KeyMetadata"]["KeyId"],
        b.as_str()
    );
    assert_eq!(
        e.err(
            "UpdateAlias",
            json!({"AliasName": "alias/none", "TargetKeyId": b})
        )
        .aws_type(),
        "NotFoundException"
    );

    e.ok(
        "CreateAlias",
        json!({"AliasName": "alias/other", "TargetKeyId": a}),
    );
    let all = e.ok("ListAliases", json!({}));
    assert_eq!(all["Aliases"].as_array().unwrap().len(), 2);
    assert_eq!(all["Aliases"][0]["AliasArn"], alias_arn);
    let of_a = e.ok("ListAliases", json!({"KeyId": a}));
    assert_eq!(of_a["Aliases"].as_array().unwrap().len(), 1);
    assert_eq!(of_a["Aliases"][0]["AliasName"], "alias/other");
    let page = e.ok("ListAliases", json!({"Limit": 1}));
    assert_eq!(page["Truncated"], true);
    let page2 = e.ok(
        "ListAliases",
        json!({"Limit": 1, "Marker": page["NextMarker"]}),
    );
    assert_eq!(page2["Aliases"][0]["AliasName"], "alias/other");
    assert_eq!(page2["Truncated"], false);

    e.ok("DeleteAlias", json!({"AliasName": "alias/app"}));
    assert_eq!(
        e.err("DeleteAlias", json!({"AliasName": "alias/app"}))
            .aws_type(),
        "NotFoundException"
    );
    assert_eq!(
        e.err(
            "Encrypt",
            json!({"KeyId": "alias/app", "Plaintext": b64(b"x")})
        )
        .aws_type(),
        "NotFoundException"
    );

    // Another account's alias of the same name is independent.
    let bob = caller("444455556666", "us-east-1");
    let bk = e.call(&bob, "CreateKey", json!({})).unwrap()["KeyMetadata"]["KeyId"]
        .as_str()
        .unwrap()
        .to_owned();
    e.call(
        &bob,
        "CreateAlias",
        json!({"AliasName": "alias/other", "TargetKeyId": bk}),
    )
    .unwrap();
    assert_eq!(
        e.ok("DescribeKey", json!({"KeyId": "alias/other"}))["KeyMetadata"]["KeyId"],
        a.as_str()
    );
    // Aliases of another account cannot be used.
    assert_eq!(
        e.err(
            "DescribeKey",
            json!({"KeyId": "arn:aws:kms:us-east-1:444455556666:alias/other"})
        )
        .aws_type(),
        "NotFoundException"
    );
    // Another account cannot point an alias at our key.
    assert_eq!(
        e.call(&bob, "CreateAlias", json!({"AliasName": "alias/steal", "TargetKeyId": format!("arn:aws:kms:us-east-1:111122223333:key/{a}")})).unwrap_err().aws_type(),
        "AccessDeniedException"
    );
}

#[test]
fn tags() {
    let e = env();
    let key = e.new_key();
    e.ok("TagResource", json!({"KeyId": key, "Tags": [{"TagKey": "b", "TagValue": "2"}, {"TagKey": "a", "TagValue": "1"}]}));
    e.ok("TagResource", json!({"KeyId": key, "Tags": [{"TagKey": "a", "TagValue": "one"}, {"TagKey": "empty", "TagValue": ""}]}));
    let tags = e.ok("ListResourceTags", json!({"KeyId": key}));
    assert_eq!(
        tags["Tags"],
        json!([{"TagKey": "a", "TagValue": "one"}, {"TagKey": "b", "TagValue": "2"}, {"TagKey": "empty", "TagValue": ""}])
    );
    let page = e.ok("ListResourceTags", json!({"KeyId": key, "Limit": 2}));
    assert_eq!(page["Tags"].as_array().unwrap().len(), 2);
    let rest = e.ok(
        "ListResourceTags",
        json!({"KeyId": key, "Marker": page["NextMarker"]}),
    );
    assert_eq!(rest["Tags"], json!([{"TagKey": "empty", "TagValue": ""}]));
    e.ok(
        "UntagResource",
        json!({"KeyId": key, "TagKeys": ["a", "missing"]}),
    );
    assert_eq!(
        e.ok("ListResourceTags", json!({"KeyId": key}))["Tags"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    for (tags, want) in [
        (
            json!([{"TagKey": "aws:x", "TagValue": "v"}]),
            "TagException",
        ),
        (
            json!([{"TagKey": "", "TagValue": "v"}]),
            "ValidationException",
        ),
        (
            json!([{"TagKey": "k".repeat(129), "TagValue": "v"}]),
            "ValidationException",
        ),
        (
            json!([{"TagKey": "k", "TagValue": "v".repeat(257)}]),
            "ValidationException",
        ),
        (
            json!([{"TagKey": "k", "TagValue": "a"}, {"TagKey": "k", "TagValue": "b"}]),
            "TagException",
        ),
        (json!([{"TagKey": "k<", "TagValue": "v"}]), "TagException"),
    ] {
        assert_eq!(
            e.err("TagResource", json!({"KeyId": key, "Tags": tags}))
                .aws_type(),
            want,
            "{tags}"
        );
    }
    let many: Vec<Value> = (0..49)
        .map(|i| json!({"TagKey": format!("t{i}"), "TagValue": "v"}))
        .collect();
    assert_eq!(
        e.err("TagResource", json!({"KeyId": key, "Tags": many}))
            .aws_type(),
        "TagException"
    );
    assert_eq!(
        e.ok("ListResourceTags", json!({"KeyId": key}))["Tags"]
            .as_array()
            .unwrap()
            .len(),
        2,
        "nothing changed"
    );
    assert_eq!(
        e.err("ListResourceTags", json!({"KeyId": key, "Limit": 51}))
            .aws_type(),
        "ValidationException"
    );
}

#[test]
fn request_bodies_that_are_not_requests() {
    let e = env();
    for body in [
        "{",
        "[]",
        "[\"1234abcd-12ab-34cd-56ef-1234567890ab\", null]",
        "  [null, null]",
        "null",
        "\"s\"",
        "{\"KeyId\": }",
        "{\"KeyId\": \"a\", \"KeyId\": \"b\"}",
        "\u{0}",
    ] {
        let err = with_call(&e.alice, |c| {
            e.kms.call(c, Operation::DescribeKey, body.as_bytes())
        })
        .unwrap_err();
        assert_eq!(err.aws_type(), "SerializationException", "{body:?}");
    }
    // A nested struct given as a positional array is refused too.
    let key = e.new_key();
    let body = format!(r#"{{"KeyId": "{key}", "Tags": [["k", "v"]]}}"#);
    let err = with_call(&e.alice, |c| {
        e.kms.call(c, Operation::TagResource, body.as_bytes())
    })
    .unwrap_err();
    assert_eq!(err.aws_type(), "SerializationException");
    // Unknown members are ignored; an empty body is an empty object.
    let future = b"{\"FutureMember\": [1, {\"x\": null}]}";
    assert!(with_call(&e.alice, |c| e.kms.call(c, Operation::ListKeys, future)).is_ok());
    assert!(with_call(&e.alice, |c| e.kms.call(c, Operation::ListKeys, b"")).is_ok());
    assert_eq!(Operation::from_target("TrentService.Nope"), None);
    assert_eq!(Operation::from_target("Other.ListKeys"), None);
    assert_eq!(Operation::ALL.len(), 53);
}

#[test]
fn store_sealed_by_another_root_is_refused() {
    let store: Arc<dyn atrest_store::Store> = Arc::new(MemoryStore::new());
    let clock = Arc::new(ManualClock::new(OffsetDateTime::now_utc()));
    KeyService::open(
        store.clone(),
        RootKey::from_key(Aes256Key::generate().unwrap()),
        vec!["r".into()],
        clock.clone(),
    )
    .unwrap();
    let err = KeyService::open(
        store,
        RootKey::from_key(Aes256Key::generate().unwrap()),
        vec!["r".into()],
        clock,
    )
    .unwrap_err();
    assert!(err.to_string().contains("different root key") || matches!(err, KmsError::Internal(_)));
    assert!(matches!(err, KmsError::Internal(m) if m.contains("different root key")));
}

#[test]
fn accounts_and_access_keys() {
    let e = env();
    let boot = e
        .kms
        .bootstrap_admin()
        .unwrap()
        .expect("first bootstrap creates the admin");
    // Until it is marked finished (the credentials reached the operator), a
    // restart gets the same admin key back rather than a second admin.
    let again = e
        .kms
        .bootstrap_admin()
        .unwrap()
        .expect("unfinished bootstrap resumes");
    assert_eq!(again.key.access_key_id, boot.key.access_key_id);
    assert_eq!(again.key.secret_access_key, boot.key.secret_access_key);
    e.kms.finish_bootstrap().unwrap();
    assert!(e.kms.bootstrap_admin().unwrap().is_none(), "only once");
    let mut admin = Caller::root(boot.key.account.clone(), "us-east-1");
    admin.admin = true;
    let found = e.kms.access_key(&boot.key.access_key_id).unwrap().unwrap();
    assert_eq!(found.secret(), boot.key.secret_access_key.expose());
    assert!(found.admin);
    assert!(found.caller("us-east-1").admin);
    assert!(boot.key.access_key_id.starts_with("AKIA") && boot.key.access_key_id.len() == 20);
    assert_eq!(boot.key.secret_access_key.len(), 40);

    let acct = with_call(&admin, |c| {
        e.kms.create_account(c, Some("123456789012"), false)
    })
    .unwrap();
    let dup = with_call(&admin, |c| {
        e.kms.create_account(c, Some("123456789012"), false)
    });
    assert_eq!(dup.unwrap_err().aws_type(), "AlreadyExistsException");
    let bad = with_call(&admin, |c| e.kms.create_account(c, Some("12345"), false));
    assert_eq!(bad.unwrap_err().aws_type(), "ValidationException");
    let k = with_call(&admin, |c| e.kms.create_access_key(c, acct.as_str(), None)).unwrap();
    let user = e.kms.access_key(&k.access_key_id).unwrap().unwrap();
    assert_eq!(user.account, acct);
    assert!(!user.admin);
    let missing = with_call(&admin, |c| e.kms.create_access_key(c, "999999999999", None));
    assert_eq!(missing.unwrap_err().aws_type(), "NotFoundException");

    let imported =
        atrest_crypto::SecretBytes::new(b"wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".to_vec());
    with_call(&admin, |c| {
        e.kms
            .import_access_key(c, acct.as_str(), None, "AKIAIOSFODNN7EXAMPLE", imported)
    })
    .unwrap();
    assert_eq!(
        e.kms
            .access_key("AKIAIOSFODNN7EXAMPLE")
            .unwrap()
            .unwrap()
            .secret(),
        b"wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
    );
    let again = atrest_crypto::SecretBytes::new(b"0123456789abcdef0123".to_vec());
    let dup = with_call(&admin, |c| {
        e.kms
            .import_access_key(c, acct.as_str(), None, "AKIAIOSFODNN7EXAMPLE", again)
    });
    assert_eq!(dup.unwrap_err().aws_type(), "AlreadyExistsException");
    for (id, secret) in [
        ("short", "0123456789abcdef"),
        ("AKIA-BAD-CHARS-HERE", "0123456789abcdef"),
        ("AKIAIOSFODNN7EXAMPL2", "short"),
        ("AKIAIOSFODNN7EXAMPL3", "has space 0123456789"),
    ] {
        let s = atrest_crypto::SecretBytes::new(secret.as_bytes().to_vec());
        let err = with_call(&admin, |c| {
            e.kms.import_access_key(c, acct.as_str(), None, id, s)
        })
        .unwrap_err();
        assert_eq!(err.aws_type(), "ValidationException", "{id}");
    }
    assert!(e.kms.access_key("AKIANOTKNOWN00000000").unwrap().is_none());
    let keys = with_call(&admin, |c| e.kms.list_access_keys(c, acct.as_str())).unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(e.kms.list_accounts(&admin).unwrap().len(), 2);

    // Non-admins may not administer; an account's root may manage its users.
    let plain = Caller::root(acct.clone(), "us-east-1");
    let denied = with_call(&plain, |c| e.kms.create_account(c, None, false));
    assert_eq!(denied.unwrap_err().aws_type(), "AccessDeniedException");
    let denied = with_call(&plain, |c| e.kms.create_access_key(c, acct.as_str(), None));
    assert_eq!(denied.unwrap_err().aws_type(), "AccessDeniedException");
    with_call(&plain, |c| e.kms.create_user(c, acct.as_str(), "alice")).unwrap();
    let uk = with_call(&plain, |c| {
        e.kms.create_access_key(c, acct.as_str(), Some("alice"))
    })
    .unwrap();
    let alice = e
        .kms
        .access_key(&uk.access_key_id)
        .unwrap()
        .unwrap()
        .caller("us-east-1");
    assert_eq!(
        alice.principal_arn(),
        "arn:aws:iam::123456789012:user/alice"
    );
    assert!(!alice.admin);
    let other = Caller::root(AccountId::parse("444455556666").unwrap(), "us-east-1");
    let denied = with_call(&other, |c| e.kms.create_user(c, acct.as_str(), "mallory"));
    assert_eq!(denied.unwrap_err().aws_type(), "AccessDeniedException");
    let nobody = with_call(&plain, |c| {
        e.kms.create_access_key(c, acct.as_str(), Some("ghost"))
    });
    assert_eq!(nobody.unwrap_err().aws_type(), "NotFoundException");
}

#[test]
fn regions_are_validated() {
    let store = Arc::new(MemoryStore::new());
    let clock = Arc::new(ManualClock::new(OffsetDateTime::now_utc()));
    for bad in [vec![], vec!["Bad_Region".to_owned()]] {
        let r = KeyService::open(
            store.clone(),
            RootKey::from_key(Aes256Key::generate().unwrap()),
            bad,
            clock.clone(),
        );
        assert_eq!(r.unwrap_err().aws_type(), "ValidationException");
    }
    let e = env_with_regions(&["local"]);
    assert_eq!(e.kms.regions(), ["local".to_owned()]);
}

fn arbitrary_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        "\\PC{0,40}".prop_map(Value::String),
        prop_oneof![
            Just("alias/x"),
            Just("AES_256"),
            Just("SYMMETRIC_DEFAULT"),
            Just("AQIDBA=="),
            Just("00000000-0000-4000-8000-000000000000")
        ]
        .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("KeyId".to_owned()),
                    Just("Plaintext".to_owned()),
                    Just("CiphertextBlob".to_owned()),
                    Just("EncryptionContext".to_owned()),
                    Just("NumberOfBytes".to_owned()),
                    Just("KeySpec".to_owned()),
                    Just("Limit".to_owned()),
                    Just("Marker".to_owned()),
                    Just("Tags".to_owned()),
                    Just("AliasName".to_owned()),
                    Just("TargetKeyId".to_owned()),
                    Just("DestinationKeyId".to_owned()),
                    Just("PendingWindowInDays".to_owned()),
                    Just("RotationPeriodInDays".to_owned()),
                    Just("TagKeys".to_owned()),
                    Just("Description".to_owned()),
                    "[A-Za-z]{1,12}",
                ],
                inner,
                0..6,
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Whatever a client sends, the answer is a result or a client error:
    /// never a panic, never a server fault.
    #[test]
    fn arbitrary_requests_never_fault(op_index in 0usize..26, body in arbitrary_json(), raw in proptest::collection::vec(any::<u8>(), 0..64)) {
        let e = env();
        let key = e.new_key();
        let op = Operation::ALL[op_index];
        let mut body = body;
        if let Value::Object(m) = &mut body
            && m.get("KeyId").is_some_and(|v| v == "alias/x")
        {
            m.insert("KeyId".into(), json!(key));
        }
        for input in [body.to_string().into_bytes(), raw] {
            if let Err(err) = with_call(&e.alice, |c| e.kms.call(c, op, &input)) {
                prop_assert!(!err.is_server_fault(), "{op:?} {}: {err:?}", String::from_utf8_lossy(&input));
            }
        }
    }
}

/// A valid key policy document (for refusals that must not be about the policy).
fn authorization_policy_for_tests() -> String {
    r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:root"},"Action":"kms:*","Resource":"*"}]}"#.to_owned()
}
