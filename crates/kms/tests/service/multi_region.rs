//! Multi-Region keys (issue 20): CreateKey with MultiRegion, ReplicateKey,
//! UpdatePrimaryRegion, shared and independent properties, deletion of a
//! primary with replicas, condition keys, persistence.

use std::sync::Arc;

use atrest_crypto::Aes256Key;
use atrest_kms::clock::ManualClock;
use atrest_kms::root::RootKey;
use atrest_kms::{Caller, KeyService, KmsError};
use serde_json::{Value, json};
use time::{Duration, OffsetDateTime};

use super::{Env, b64, caller, env_with_regions, unb64, with_call};

const A: &str = "111122223333";

fn three() -> Env {
    env_with_regions(&["us-east-1", "eu-west-1", "ap-south-1"])
}

fn eu() -> Caller {
    caller(A, "eu-west-1")
}

fn ap() -> Caller {
    caller(A, "ap-south-1")
}

impl Env {
    fn ok_as(&self, who: &Caller, op: &str, body: Value) -> Value {
        self.call(who, op, body.clone())
            .unwrap_or_else(|e| panic!("{op} {body} in {}: {} {e}", who.region, e.aws_type()))
    }

    fn err_as(&self, who: &Caller, op: &str, body: Value) -> KmsError {
        match self.call(who, op, body.clone()) {
            Ok(v) => panic!("{op} {body} in {} succeeded: {v}", who.region),
            Err(e) => e,
        }
    }

    /// A multi-Region primary key in us-east-1: its metadata.
    fn new_mrk(&self) -> Value {
        self.ok(
            "CreateKey",
            json!({"MultiRegion": true, "Description": "primary"}),
        )["KeyMetadata"]
            .clone()
    }

    fn describe_as(&self, who: &Caller, key: &str) -> Value {
        self.ok_as(who, "DescribeKey", json!({"KeyId": key}))["KeyMetadata"].clone()
    }
}

fn arn(region: &str, id: &str) -> String {
    format!("arn:aws:kms:{region}:{A}:key/{id}")
}

fn is_mrk_id(id: &str) -> bool {
    id.len() == 36
        && id.starts_with("mrk-")
        && id[4..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn encrypt(e: &Env, who: &Caller, key: &str, pt: &[u8]) -> Value {
    e.ok_as(who, "Encrypt", json!({"KeyId": key, "Plaintext": b64(pt)}))["CiphertextBlob"].clone()
}

fn decrypt(e: &Env, who: &Caller, blob: &Value) -> (Vec<u8>, Value) {
    let out = e.ok_as(who, "Decrypt", json!({"CiphertextBlob": blob}));
    (unb64(&out["Plaintext"]), out)
}

#[test]
fn create_multi_region_keys_of_every_kind_aws_allows() {
    let e = three();
    let md = e.new_mrk();
    let id = md["KeyId"].as_str().unwrap();
    assert!(is_mrk_id(id), "{id}");
    assert_eq!(md["Arn"], arn("us-east-1", id));
    assert_eq!(md["MultiRegion"], true);
    assert_eq!(
        md["MultiRegionConfiguration"],
        json!({"MultiRegionKeyType": "PRIMARY",
               "PrimaryKey": {"Arn": arn("us-east-1", id), "Region": "us-east-1"},
               "ReplicaKeys": []})
    );
    assert_eq!(e.describe_as(&e.alice, id)["KeyId"], id);
    assert_eq!(e.describe_as(&e.alice, &arn("us-east-1", id))["KeyId"], id);
    let keys = e.ok("ListKeys", json!({}))["Keys"].clone();
    assert_eq!(keys, json!([{"KeyId": id, "KeyArn": arn("us-east-1", id)}]));
    // A single-region key says so.
    let plain = e.ok("CreateKey", json!({}))["KeyMetadata"].clone();
    assert_eq!(plain["MultiRegion"], false);
    assert!(plain.get("MultiRegionConfiguration").is_none());
    e.ok("CreateKey", json!({"MultiRegion": false}));

    // HMAC and asymmetric keys can be multi-Region too.
    for (spec, usage) in [
        ("HMAC_256", "GENERATE_VERIFY_MAC"),
        ("RSA_2048", "SIGN_VERIFY"),
        ("ECC_NIST_P256", "SIGN_VERIFY"),
    ] {
        let md = e.ok(
            "CreateKey",
            json!({"MultiRegion": true, "KeySpec": spec, "KeyUsage": usage}),
        )["KeyMetadata"]
            .clone();
        let id = md["KeyId"].as_str().unwrap();
        assert!(is_mrk_id(id));
        assert_eq!(md["KeySpec"], spec);
        let r = e.ok(
            "ReplicateKey",
            json!({"KeyId": id, "ReplicaRegion": "eu-west-1"}),
        );
        assert_eq!(r["ReplicaKeyMetadata"]["KeySpec"], spec);
        assert_eq!(r["ReplicaKeyMetadata"]["KeyUsage"], usage);
        assert_eq!(
            r["ReplicaKeyMetadata"]["CurrentKeyMaterialId"],
            md["CurrentKeyMaterialId"]
        );
    }

    // AWS: custom key stores cannot hold multi-Region keys; atrest does not
    // (yet) support imported material in them.
    for body in [
        json!({"MultiRegion": true, "Origin": "EXTERNAL_KMS", "CustomKeyStoreId": "p", "XksKeyId": "k"}),
        json!({"MultiRegion": true, "Origin": "EXTERNAL"}),
    ] {
        assert_eq!(
            e.err("CreateKey", body.clone()).aws_type(),
            "UnsupportedOperationException",
            "{body}"
        );
    }
}

#[test]
fn unknown_multi_region_ids_are_not_found() {
    let e = three();
    let id = "mrk-1234abcd12ab34cd56ef1234567890ab";
    let err = e.err("DescribeKey", json!({"KeyId": id}));
    assert_eq!(err.aws_type(), "NotFoundException");
    assert_eq!(
        err.to_string(),
        format!("Key '{}' does not exist", arn("us-east-1", id))
    );
    let err = e.err(
        "Encrypt",
        json!({"KeyId": arn("us-east-1", id), "Plaintext": "eA=="}),
    );
    assert_eq!(
        err.to_string(),
        format!("Key '{}' does not exist", arn("us-east-1", id))
    );
    // A key in one region only is not found by its ARN in another.
    let md = e.new_mrk();
    let real = md["KeyId"].as_str().unwrap();
    let err = e.err_as(&eu(), "DescribeKey", json!({"KeyId": real}));
    assert_eq!(
        err.to_string(),
        format!("Key '{}' does not exist", arn("eu-west-1", real))
    );
    let err = e.err_as(&eu(), "DescribeKey", json!({"KeyId": md["Arn"]}));
    assert_eq!(err.aws_type(), "NotFoundException");
    // Another account's id in the ARN.
    let err = e.err(
        "DescribeKey",
        json!({"KeyId": format!("arn:aws:kms:us-east-1:444455556666:key/{real}")}),
    );
    assert_eq!(err.aws_type(), "NotFoundException");
    // Malformed mrk ids are not key ids.
    for bad in ["mrk-123", "mrk-1234ABCD12AB34CD56EF1234567890AB"] {
        assert_eq!(
            e.err("DescribeKey", json!({"KeyId": bad})).aws_type(),
            "NotFoundException"
        );
    }
}

#[test]
fn replicate_encrypt_in_one_region_decrypt_in_another() {
    let e = three();
    let md = e.new_mrk();
    let id = md["KeyId"].as_str().unwrap().to_owned();
    let policy = super::authorization_policy_for_tests();
    let r = e.ok(
        "ReplicateKey",
        json!({"KeyId": id, "ReplicaRegion": "eu-west-1", "Description": "replica",
               "Policy": policy, "Tags": [{"TagKey": "team", "TagValue": "eu"}]}),
    );
    let rm = &r["ReplicaKeyMetadata"];
    assert_eq!(rm["KeyId"], id.as_str());
    assert_eq!(rm["Arn"], arn("eu-west-1", &id));
    assert_eq!(rm["Description"], "replica");
    assert_eq!(rm["KeyState"], "Enabled");
    assert_eq!(rm["MultiRegion"], true);
    assert_eq!(rm["Origin"], "AWS_KMS");
    assert_eq!(rm["CurrentKeyMaterialId"], md["CurrentKeyMaterialId"]);
    let config = json!({"MultiRegionKeyType": "REPLICA",
        "PrimaryKey": {"Arn": arn("us-east-1", &id), "Region": "us-east-1"},
        "ReplicaKeys": [{"Arn": arn("eu-west-1", &id), "Region": "eu-west-1"}]});
    assert_eq!(rm["MultiRegionConfiguration"], config);
    assert_eq!(r["ReplicaPolicy"], policy.as_str());
    assert_eq!(
        r["ReplicaTags"],
        json!([{"TagKey": "team", "TagValue": "eu"}])
    );
    // Both sides see the same configuration.
    assert_eq!(
        e.describe_as(&eu(), &id)["MultiRegionConfiguration"],
        config
    );
    let mut primary_config = config;
    primary_config["MultiRegionKeyType"] = json!("PRIMARY");
    assert_eq!(
        e.describe_as(&e.alice, &id)["MultiRegionConfiguration"],
        primary_config
    );
    // ListKeys in each region lists the key there.
    assert_eq!(
        e.ok_as(&eu(), "ListKeys", json!({}))["Keys"],
        json!([{"KeyId": id, "KeyArn": arn("eu-west-1", &id)}])
    );
    assert_eq!(e.ok_as(&ap(), "ListKeys", json!({}))["Keys"], json!([]));

    // Encrypt in one region, decrypt in the other, both ways.
    let us_blob = encrypt(&e, &e.alice, &id, b"from us");
    let (pt, out) = decrypt(&e, &eu(), &us_blob);
    assert_eq!(pt, b"from us");
    assert_eq!(out["KeyId"], arn("eu-west-1", &id));
    let eu_blob = encrypt(&e, &eu(), &arn("eu-west-1", &id), b"from eu");
    let (pt, out) = decrypt(&e, &e.alice, &eu_blob);
    assert_eq!(pt, b"from eu");
    assert_eq!(out["KeyId"], arn("us-east-1", &id));
    // Naming the key in the region of the call works; naming it in the
    // other region does not.
    e.ok_as(
        &eu(),
        "Decrypt",
        json!({"CiphertextBlob": us_blob, "KeyId": id}),
    );
    assert_eq!(
        e.err_as(
            &eu(),
            "Decrypt",
            json!({"CiphertextBlob": us_blob, "KeyId": arn("us-east-1", &id)})
        )
        .aws_type(),
        "NotFoundException"
    );
    // A region without a replica cannot decrypt.
    assert_eq!(
        e.err_as(&ap(), "Decrypt", json!({"CiphertextBlob": us_blob}))
            .aws_type(),
        "InvalidCiphertextException"
    );
    // Data keys and ReEncrypt across regions.
    let dk = e.ok(
        "GenerateDataKey",
        json!({"KeyId": id, "KeySpec": "AES_256", "EncryptionContext": {"a": "b"}}),
    );
    let out = e.ok_as(
        &eu(),
        "Decrypt",
        json!({"CiphertextBlob": dk["CiphertextBlob"], "EncryptionContext": {"a": "b"}}),
    );
    assert_eq!(out["Plaintext"], dk["Plaintext"]);
    let other_eu = e.ok_as(&eu(), "CreateKey", json!({}))["KeyMetadata"]["KeyId"]
        .as_str()
        .unwrap()
        .to_owned();
    let re = e.ok_as(
        &eu(),
        "ReEncrypt",
        json!({"CiphertextBlob": us_blob, "DestinationKeyId": other_eu}),
    );
    assert_eq!(re["SourceKeyId"], arn("eu-west-1", &id));

    // Independent properties: description, tags, aliases, state, policy.
    assert_eq!(e.describe_as(&e.alice, &id)["Description"], "primary");
    assert_eq!(
        e.ok("ListResourceTags", json!({"KeyId": id}))["Tags"],
        json!([])
    );
    e.ok_as(
        &eu(),
        "CreateAlias",
        json!({"AliasName": "alias/mr", "TargetKeyId": id}),
    );
    let aliases = e.ok_as(&eu(), "ListAliases", json!({}))["Aliases"].clone();
    assert_eq!(aliases[0]["TargetKeyId"], id.as_str());
    assert_eq!(e.ok("ListAliases", json!({}))["Aliases"], json!([]));
    assert_eq!(
        e.describe_as(&eu(), "alias/mr")["Arn"],
        arn("eu-west-1", &id)
    );
    e.ok_as(&eu(), "DisableKey", json!({"KeyId": id}));
    assert_eq!(e.describe_as(&eu(), &id)["KeyState"], "Disabled");
    assert_eq!(e.describe_as(&e.alice, &id)["KeyState"], "Enabled");
    assert_eq!(
        e.err_as(&eu(), "Decrypt", json!({"CiphertextBlob": us_blob}))
            .aws_type(),
        "DisabledException"
    );
    encrypt(&e, &e.alice, &id, b"still works in us");
    e.ok_as(&eu(), "EnableKey", json!({"KeyId": id}));
    let us_policy = e.ok("GetKeyPolicy", json!({"KeyId": id}))["Policy"].clone();
    assert_ne!(us_policy, json!(policy));
    assert_eq!(
        e.ok_as(&eu(), "GetKeyPolicy", json!({"KeyId": id}))["Policy"],
        json!(policy)
    );
    // Grants are per region.
    e.ok(
        "CreateGrant",
        json!({"KeyId": id, "GranteePrincipal": format!("arn:aws:iam::{A}:user/u"), "Operations": ["Decrypt"]}),
    );
    assert_eq!(
        e.ok_as(&eu(), "ListGrants", json!({"KeyId": id}))["Grants"],
        json!([])
    );
    assert_eq!(
        e.ok("ListGrants", json!({"KeyId": id}))["Grants"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // A third region.
    e.ok(
        "ReplicateKey",
        json!({"KeyId": arn("us-east-1", &id), "ReplicaRegion": "ap-south-1"}),
    );
    let regions: Vec<Value> = e.describe_as(&eu(), &id)["MultiRegionConfiguration"]["ReplicaKeys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["Region"].clone())
        .collect();
    assert_eq!(regions, vec![json!("eu-west-1"), json!("ap-south-1")]);
    assert_eq!(decrypt(&e, &ap(), &eu_blob).0, b"from eu");
    // Default policy and no tags when none are given.
    assert_eq!(
        e.ok_as(&ap(), "GetKeyPolicy", json!({"KeyId": id}))["Policy"],
        us_policy
    );
}

#[test]
fn replicate_key_errors() {
    let e = three();
    let id = e.new_mrk()["KeyId"].as_str().unwrap().to_owned();
    let plain = e.new_key();
    let rep = |key: &str, region: &str| json!({"KeyId": key, "ReplicaRegion": region});
    let cases: Vec<(Value, &str)> = vec![
        (rep(&plain, "eu-west-1"), "UnsupportedOperationException"),
        (rep(&id, "us-east-1"), "AlreadyExistsException"),
        (rep(&id, "sa-east-1"), "UnsupportedOperationException"),
        (rep(&id, "EU_WEST"), "ValidationException"),
        (json!({"KeyId": id}), "ValidationException"),
        (json!({"ReplicaRegion": "eu-west-1"}), "ValidationException"),
        (rep("alias/x", "eu-west-1"), "NotFoundException"),
        (
            rep("mrk-1234abcd12ab34cd56ef1234567890ab", "eu-west-1"),
            "NotFoundException",
        ),
        (
            json!({"KeyId": id, "ReplicaRegion": "eu-west-1", "Policy": "{}"}),
            "MalformedPolicyDocumentException",
        ),
        (
            json!({"KeyId": id, "ReplicaRegion": "eu-west-1", "Tags": [{"TagKey": "aws:x", "TagValue": "v"}]}),
            "TagException",
        ),
        (
            json!({"KeyId": id, "ReplicaRegion": "eu-west-1", "Description": "x".repeat(8193)}),
            "ValidationException",
        ),
        (
            json!({"KeyId": id, "ReplicaRegion": "eu-west-1", "Policy":
                r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:user/nobody"},"Action":"kms:*","Resource":"*"}]}"#}),
            "MalformedPolicyDocumentException",
        ),
        (
            json!({"KeyId": id, "ReplicaRegion": 5}),
            "SerializationException",
        ),
    ];
    for (body, want) in cases {
        let err = e.err("ReplicateKey", body.clone());
        assert_eq!(err.aws_type(), want, "{body}: {err}");
    }
    // Nothing was made by the refusals.
    assert_eq!(e.ok_as(&eu(), "ListKeys", json!({}))["Keys"], json!([]));
    let err = e.err("ReplicateKey", rep(&plain, "eu-west-1"));
    assert!(err.to_string().contains("not a multi-Region key"), "{err}");

    e.ok("ReplicateKey", rep(&id, "eu-west-1"));
    let err = e.err("ReplicateKey", rep(&id, "eu-west-1"));
    assert_eq!(err.aws_type(), "AlreadyExistsException");
    // Only primaries replicate.
    let err = e.err_as(&eu(), "ReplicateKey", rep(&id, "ap-south-1"));
    assert_eq!(err.aws_type(), "UnsupportedOperationException", "{err}");
    assert!(err.to_string().contains("replica"), "{err}");
    // A disabled primary still replicates; one being deleted does not.
    e.ok("DisableKey", json!({"KeyId": id}));
    let r = e.ok("ReplicateKey", rep(&id, "ap-south-1"));
    assert_eq!(r["ReplicaKeyMetadata"]["KeyState"], "Enabled");
    let other = e.new_mrk()["KeyId"].as_str().unwrap().to_owned();
    e.ok(
        "ScheduleKeyDeletion",
        json!({"KeyId": other, "PendingWindowInDays": 7}),
    );
    let err = e.err("ReplicateKey", rep(&other, "eu-west-1"));
    assert_eq!(err.aws_type(), "KMSInvalidStateException");
    // AWS needs kms:CreateKey in the replica region (an identity policy):
    // a user the key policy allows but no identity policy does is denied.
    let adm = {
        let mut a = Caller::root(
            atrest_kms::names::AccountId::parse("999999999999").unwrap(),
            "us-east-1",
        );
        a.admin = true;
        a
    };
    with_call(&adm, |c| e.kms.create_account(c, Some(A), false)).unwrap();
    with_call(&e.alice, |c| e.kms.create_user(c, A, "kp")).unwrap();
    let kp = Caller::user(
        atrest_kms::names::AccountId::parse(A).unwrap(),
        "us-east-1",
        "kp",
    );
    let by_kp = e.ok(
        "CreateKey",
        json!({"MultiRegion": true, "Policy": json!({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": format!("arn:aws:iam::{A}:root")}, "Action": "kms:*", "Resource": "*"},
            {"Effect": "Allow", "Principal": {"AWS": format!("arn:aws:iam::{A}:user/kp")}, "Action": "kms:*", "Resource": "*"}]}).to_string()}),
    )["KeyMetadata"]["KeyId"]
        .as_str()
        .unwrap()
        .to_owned();
    let err = e.err_as(&kp, "ReplicateKey", rep(&by_kp, "eu-west-1"));
    assert_eq!(err.aws_type(), "AccessDeniedException");
    assert!(err.to_string().contains("kms:CreateKey"), "{err}");
    with_call(&e.alice, |c| {
        e.kms.put_user_policy(
            c,
            A,
            "kp",
            "create",
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:CreateKey","Resource":"*"}]}"#,
        )
    })
    .unwrap();
    // Tags need kms:TagResource too.
    let err = e.err_as(
        &kp,
        "ReplicateKey",
        json!({"KeyId": by_kp, "ReplicaRegion": "eu-west-1", "Tags": [{"TagKey": "a", "TagValue": "b"}]}),
    );
    assert!(err.to_string().contains("kms:TagResource"), "{err}");
    e.ok_as(&kp, "ReplicateKey", rep(&by_kp, "eu-west-1"));
}

#[test]
fn rotation_is_shared_and_configured_on_the_primary() {
    let e = three();
    let md = e.new_mrk();
    let id = md["KeyId"].as_str().unwrap().to_owned();
    e.ok(
        "ReplicateKey",
        json!({"KeyId": id, "ReplicaRegion": "eu-west-1"}),
    );
    let old = encrypt(&e, &e.alice, &id, b"old");
    for op in [
        "EnableKeyRotation",
        "DisableKeyRotation",
        "RotateKeyOnDemand",
    ] {
        let err = e.err_as(&eu(), op, json!({"KeyId": id}));
        assert_eq!(err.aws_type(), "UnsupportedOperationException", "{op}");
        assert!(err.to_string().contains(&arn("us-east-1", &id)), "{err}");
    }
    let r = e.ok("RotateKeyOnDemand", json!({"KeyId": id}));
    // AWS's RotateKeyOnDemand answers with the key ARN.
    assert_eq!(r["KeyId"], arn("us-east-1", &id));
    let primary = e.describe_as(&e.alice, &id);
    let replica = e.describe_as(&eu(), &id);
    assert_ne!(primary["CurrentKeyMaterialId"], md["CurrentKeyMaterialId"]);
    assert_eq!(
        primary["CurrentKeyMaterialId"],
        replica["CurrentKeyMaterialId"]
    );
    let rotations = e.ok_as(&eu(), "ListKeyRotations", json!({"KeyId": id}))["Rotations"].clone();
    assert_eq!(rotations.as_array().unwrap().len(), 1);
    assert_eq!(rotations[0]["RotationType"], "ON_DEMAND");
    assert_eq!(rotations[0]["KeyId"], id.as_str());
    let new = encrypt(&e, &e.alice, &id, b"new");
    assert_eq!(decrypt(&e, &eu(), &old).0, b"old");
    assert_eq!(decrypt(&e, &eu(), &new).0, b"new");
    // The replica encrypts under the new version, which the primary reads.
    let from_eu = encrypt(&e, &eu(), &id, b"eu new");
    assert_eq!(decrypt(&e, &e.alice, &from_eu).0, b"eu new");

    // Automatic rotation: configured on the primary, shown on the replica,
    // and a rotation reaches the replica.
    e.ok(
        "EnableKeyRotation",
        json!({"KeyId": id, "RotationPeriodInDays": 90}),
    );
    let status = e.ok_as(&eu(), "GetKeyRotationStatus", json!({"KeyId": id}));
    assert_eq!(status["KeyRotationEnabled"], true);
    assert_eq!(status["RotationPeriodInDays"], 90);
    e.clock.advance(Duration::days(91));
    assert_eq!(e.kms.run_due().unwrap().rotated.len(), 1);
    let replica = e.describe_as(&eu(), &id);
    assert_eq!(
        replica["CurrentKeyMaterialId"],
        e.describe_as(&e.alice, &id)["CurrentKeyMaterialId"]
    );
    assert_eq!(
        e.ok_as(&eu(), "ListKeyRotations", json!({"KeyId": id}))["Rotations"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let auto = encrypt(&e, &e.alice, &id, b"auto");
    assert_eq!(decrypt(&e, &eu(), &auto).0, b"auto");
    // A replica made later gets every version.
    e.ok(
        "ReplicateKey",
        json!({"KeyId": id, "ReplicaRegion": "ap-south-1"}),
    );
    for blob in [&old, &new, &auto] {
        decrypt(&e, &ap(), blob);
    }
    e.ok("DisableKeyRotation", json!({"KeyId": id}));
    assert_eq!(
        e.ok_as(&ap(), "GetKeyRotationStatus", json!({"KeyId": id}))["KeyRotationEnabled"],
        false
    );
}

#[test]
fn update_primary_region() {
    let e = three();
    let id = e.new_mrk()["KeyId"].as_str().unwrap().to_owned();
    let plain = e.new_key();
    let upr = |key: &str, region: &str| json!({"KeyId": key, "PrimaryRegion": region});
    e.ok(
        "ReplicateKey",
        json!({"KeyId": id, "ReplicaRegion": "eu-west-1"}),
    );
    e.ok("EnableKeyRotation", json!({"KeyId": id}));
    for (who, body, want) in [
        (
            e.alice.clone(),
            upr(&plain, "eu-west-1"),
            "UnsupportedOperationException",
        ),
        (e.alice.clone(), upr(&id, "ap-south-1"), "NotFoundException"),
        (e.alice.clone(), upr(&id, "Nope"), "ValidationException"),
        (e.alice.clone(), json!({"KeyId": id}), "ValidationException"),
        (
            e.alice.clone(),
            upr("alias/a", "eu-west-1"),
            "NotFoundException",
        ),
        (eu(), upr(&id, "us-east-1"), "UnsupportedOperationException"),
    ] {
        let err = e.err_as(&who, "UpdatePrimaryRegion", body.clone());
        assert_eq!(err.aws_type(), want, "{body}: {err}");
    }
    // The current primary region: nothing changes.
    e.ok("UpdatePrimaryRegion", upr(&id, "us-east-1"));
    assert_eq!(
        e.describe_as(&e.alice, &id)["MultiRegionConfiguration"]["MultiRegionKeyType"],
        "PRIMARY"
    );

    let r = e.ok("UpdatePrimaryRegion", upr(&id, "eu-west-1"));
    assert_eq!(r, json!({}));
    let us = e.describe_as(&e.alice, &id);
    let eu_md = e.describe_as(&eu(), &id);
    assert_eq!(
        us["MultiRegionConfiguration"],
        json!({"MultiRegionKeyType": "REPLICA",
               "PrimaryKey": {"Arn": arn("eu-west-1", &id), "Region": "eu-west-1"},
               "ReplicaKeys": [{"Arn": arn("us-east-1", &id), "Region": "us-east-1"}]})
    );
    assert_eq!(
        eu_md["MultiRegionConfiguration"]["MultiRegionKeyType"],
        "PRIMARY"
    );
    // Rotation is now configured, and runs, on the new primary.
    assert_eq!(
        e.err("RotateKeyOnDemand", json!({"KeyId": id})).aws_type(),
        "UnsupportedOperationException"
    );
    e.ok_as(&eu(), "RotateKeyOnDemand", json!({"KeyId": id}));
    e.clock.advance(Duration::days(366));
    let report = e.kms.run_due().unwrap();
    assert_eq!(report.rotated.len(), 1, "{report:?}");
    let us = e.describe_as(&e.alice, &id);
    let eu_md = e.describe_as(&eu(), &id);
    assert_eq!(us["CurrentKeyMaterialId"], eu_md["CurrentKeyMaterialId"]);
    assert_eq!(
        e.ok("ListKeyRotations", json!({"KeyId": id}))["Rotations"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // The new primary replicates; the old one no longer does.
    assert_eq!(
        e.err(
            "ReplicateKey",
            json!({"KeyId": id, "ReplicaRegion": "ap-south-1"})
        )
        .aws_type(),
        "UnsupportedOperationException"
    );
    e.ok_as(
        &eu(),
        "ReplicateKey",
        json!({"KeyId": id, "ReplicaRegion": "ap-south-1"}),
    );
    assert_eq!(
        e.describe_as(&ap(), &id)["MultiRegionConfiguration"]["PrimaryKey"]["Region"],
        "eu-west-1"
    );
    // And back, naming the key by ARN.
    e.ok_as(
        &eu(),
        "UpdatePrimaryRegion",
        upr(&arn("eu-west-1", &id), "us-east-1"),
    );
    assert_eq!(
        e.describe_as(&ap(), &id)["MultiRegionConfiguration"]["PrimaryKey"]["Region"],
        "us-east-1"
    );
    // A replica being deleted cannot become the primary.
    e.ok_as(
        &ap(),
        "ScheduleKeyDeletion",
        json!({"KeyId": id, "PendingWindowInDays": 7}),
    );
    assert_eq!(
        e.err("UpdatePrimaryRegion", upr(&id, "ap-south-1"))
            .aws_type(),
        "KMSInvalidStateException"
    );
}

#[test]
fn deleting_a_primary_waits_for_its_replicas() {
    let e = three();
    let id = e.new_mrk()["KeyId"].as_str().unwrap().to_owned();
    e.ok(
        "ReplicateKey",
        json!({"KeyId": id, "ReplicaRegion": "eu-west-1"}),
    );
    e.ok(
        "ReplicateKey",
        json!({"KeyId": id, "ReplicaRegion": "ap-south-1"}),
    );
    let blob = encrypt(&e, &e.alice, &id, b"x");
    let r = e.ok(
        "ScheduleKeyDeletion",
        json!({"KeyId": id, "PendingWindowInDays": 10}),
    );
    assert_eq!(r["KeyState"], "PendingReplicaDeletion");
    assert_eq!(r["PendingWindowInDays"], 10);
    assert!(r.get("DeletionDate").is_none(), "{r}");
    let md = e.describe_as(&e.alice, &id);
    assert_eq!(md["KeyState"], "PendingReplicaDeletion");
    assert_eq!(md["Enabled"], false);
    assert!(md.get("DeletionDate").is_none());
    let err = e.err("Encrypt", json!({"KeyId": id, "Plaintext": "eA=="}));
    assert_eq!(err.aws_type(), "KMSInvalidStateException");
    assert!(
        err.to_string().contains("pending replica deletion"),
        "{err}"
    );
    assert_eq!(
        e.err("Decrypt", json!({"CiphertextBlob": blob})).aws_type(),
        "KMSInvalidStateException"
    );
    assert_eq!(
        e.err("ScheduleKeyDeletion", json!({"KeyId": id}))
            .aws_type(),
        "KMSInvalidStateException"
    );
    // Replicas stay usable.
    decrypt(&e, &eu(), &blob);
    // Cancel: Disabled, as from PendingDeletion.
    e.ok("CancelKeyDeletion", json!({"KeyId": id}));
    assert_eq!(e.state(&id), "Disabled");
    e.ok(
        "ScheduleKeyDeletion",
        json!({"KeyId": id, "PendingWindowInDays": 10}),
    );
    // Nothing happens to the primary while replicas exist.
    e.clock.advance(Duration::days(40));
    assert!(e.kms.run_due().unwrap().deleted.is_empty());
    assert_eq!(e.state(&id), "PendingReplicaDeletion");

    // Delete one replica: it leaves every ReplicaKeys list.
    e.ok_as(
        &eu(),
        "ScheduleKeyDeletion",
        json!({"KeyId": id, "PendingWindowInDays": 7}),
    );
    e.clock.advance(Duration::days(8));
    assert_eq!(e.kms.run_due().unwrap().deleted.len(), 1);
    assert_eq!(
        e.err_as(&eu(), "DescribeKey", json!({"KeyId": id}))
            .aws_type(),
        "NotFoundException"
    );
    assert_eq!(e.ok_as(&eu(), "ListKeys", json!({}))["Keys"], json!([]));
    let replicas = json!([{"Arn": arn("ap-south-1", &id), "Region": "ap-south-1"}]);
    assert_eq!(
        e.describe_as(&e.alice, &id)["MultiRegionConfiguration"]["ReplicaKeys"],
        replicas
    );
    assert_eq!(
        e.describe_as(&ap(), &id)["MultiRegionConfiguration"]["ReplicaKeys"],
        replicas
    );
    assert_eq!(e.state(&id), "PendingReplicaDeletion");

    // The last replica goes: the primary's waiting period starts.
    e.ok_as(
        &ap(),
        "ScheduleKeyDeletion",
        json!({"KeyId": id, "PendingWindowInDays": 7}),
    );
    e.clock.advance(Duration::days(8));
    let now = e.kms.now().unix_timestamp();
    assert_eq!(e.kms.run_due().unwrap().deleted.len(), 1);
    let md = e.describe_as(&e.alice, &id);
    assert_eq!(md["KeyState"], "PendingDeletion");
    let date = md["DeletionDate"].as_f64().unwrap();
    assert!(
        (date - (now + 10 * 86_400) as f64).abs() < 2.0,
        "{date} vs {now}"
    );
    assert_eq!(md["MultiRegionConfiguration"]["ReplicaKeys"], json!([]));
    // It can be cancelled again, now from PendingDeletion.
    e.ok("CancelKeyDeletion", json!({"KeyId": id}));
    e.ok(
        "ScheduleKeyDeletion",
        json!({"KeyId": id, "PendingWindowInDays": 7}),
    );
    e.clock.advance(Duration::days(8));
    assert_eq!(e.kms.run_due().unwrap().deleted.len(), 1);
    assert_eq!(
        e.err("DescribeKey", json!({"KeyId": id})).to_string(),
        format!("Key '{}' does not exist", arn("us-east-1", &id))
    );
}

#[test]
fn a_deleted_replica_can_be_made_again() {
    let e = three();
    let id = e.new_mrk()["KeyId"].as_str().unwrap().to_owned();
    e.ok(
        "ReplicateKey",
        json!({"KeyId": id, "ReplicaRegion": "eu-west-1"}),
    );
    let blob = encrypt(&e, &eu(), &id, b"kept");
    e.ok_as(
        &eu(),
        "ScheduleKeyDeletion",
        json!({"KeyId": id, "PendingWindowInDays": 7}),
    );
    // The primary alone can be scheduled as usual while its replica is
    // pending deletion? No: it still has a replica.
    assert_eq!(
        e.ok("ScheduleKeyDeletion", json!({"KeyId": id}))["KeyState"],
        "PendingReplicaDeletion"
    );
    e.ok("CancelKeyDeletion", json!({"KeyId": id}));
    e.ok("EnableKey", json!({"KeyId": id}));
    e.clock.advance(Duration::days(8));
    e.kms.run_due().unwrap();
    assert_eq!(
        e.describe_as(&e.alice, &id)["MultiRegionConfiguration"]["ReplicaKeys"],
        json!([])
    );
    assert_eq!(e.state(&id), "Enabled");
    e.ok(
        "ReplicateKey",
        json!({"KeyId": id, "ReplicaRegion": "eu-west-1"}),
    );
    assert_eq!(decrypt(&e, &eu(), &blob).0, b"kept");
    assert_eq!(decrypt(&e, &e.alice, &blob).0, b"kept");
}

#[test]
fn condition_keys_of_multi_region_keys() {
    let e = three();
    let root = format!("arn:aws:iam::{A}:root");
    let policy = |deny: Value| {
        json!({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": root}, "Action": "kms:*", "Resource": "*"},
            deny]})
        .to_string()
    };
    let key_policy = policy(json!({"Effect": "Deny", "Principal": {"AWS": root},
        "Action": ["kms:ReplicateKey", "kms:UpdatePrimaryRegion"], "Resource": "*",
        "Condition": {"StringEquals": {"kms:ReplicaRegion": "ap-south-1"}}}));
    let id = e.ok(
        "CreateKey",
        json!({"MultiRegion": true, "Policy": key_policy}),
    )["KeyMetadata"]["KeyId"]
        .as_str()
        .unwrap()
        .to_owned();
    let err = e.err(
        "ReplicateKey",
        json!({"KeyId": id, "ReplicaRegion": "ap-south-1"}),
    );
    assert_eq!(err.aws_type(), "AccessDeniedException");
    assert!(err.to_string().contains("kms:ReplicateKey"), "{err}");
    // The replica's policy denies Encrypt on replicas.
    let replica_policy = policy(json!({"Effect": "Deny", "Principal": {"AWS": root},
        "Action": "kms:Encrypt", "Resource": "*",
        "Condition": {"StringEquals": {"kms:MultiRegionKeyType": "REPLICA", "kms:MultiRegion": "true"}}}));
    e.ok(
        "ReplicateKey",
        json!({"KeyId": id, "ReplicaRegion": "eu-west-1", "Policy": replica_policy}),
    );
    assert_eq!(
        e.err_as(&eu(), "Encrypt", json!({"KeyId": id, "Plaintext": "eA=="}))
            .aws_type(),
        "AccessDeniedException"
    );
    encrypt(&e, &e.alice, &id, b"primary encrypts");
    e.ok(
        "UpdatePrimaryRegion",
        json!({"KeyId": id, "PrimaryRegion": "eu-west-1"}),
    );
    encrypt(&e, &eu(), &id, b"a primary now");
    // us-east-1's own policy has no such statement.
    encrypt(&e, &e.alice, &id, b"a replica now");

    // UpdatePrimaryRegion is authorized on the replica too, with
    // kms:PrimaryRegion.
    let other = e.new_mrk()["KeyId"].as_str().unwrap().to_owned();
    e.ok(
        "ReplicateKey",
        json!({"KeyId": other, "ReplicaRegion": "eu-west-1", "Policy": policy(json!({
            "Effect": "Deny", "Principal": {"AWS": root}, "Action": "kms:UpdatePrimaryRegion",
            "Resource": "*", "Condition": {"StringEquals": {"kms:PrimaryRegion": "eu-west-1"}}}))}),
    );
    let err = e.err(
        "UpdatePrimaryRegion",
        json!({"KeyId": other, "PrimaryRegion": "eu-west-1"}),
    );
    assert_eq!(err.aws_type(), "AccessDeniedException");
    assert!(err.to_string().contains(&arn("eu-west-1", &other)), "{err}");
    assert_eq!(
        e.describe_as(&e.alice, &other)["MultiRegionConfiguration"]["MultiRegionKeyType"],
        "PRIMARY"
    );
    // kms:MultiRegion is "false" for other keys.
    let single = e.ok(
        "CreateKey",
        json!({"Policy": policy(json!({"Effect": "Deny", "Principal": {"AWS": root},
            "Action": "kms:Encrypt", "Resource": "*",
            "Condition": {"StringEquals": {"kms:MultiRegion": "false"}}}))}),
    )["KeyMetadata"]["KeyId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        e.err("Encrypt", json!({"KeyId": single, "Plaintext": "eA=="}))
            .aws_type(),
        "AccessDeniedException"
    );
}

#[test]
fn audit_facts_name_the_key_in_the_region_acted_on() {
    let e = three();
    let id = e.new_mrk()["KeyId"].as_str().unwrap().to_owned();
    let body = json!({"KeyId": id, "ReplicaRegion": "eu-west-1"}).to_string();
    let op = atrest_kms::Operation::from_target("TrentService.ReplicateKey").unwrap();
    let arn_seen = with_call(&e.alice, |c| {
        e.kms.call(c, op, body.as_bytes()).unwrap();
        c.facts().key_arn
    });
    assert_eq!(arn_seen, Some(arn("us-east-1", &id)));
    let body = json!({"KeyId": id, "PrimaryRegion": "eu-west-1"}).to_string();
    let op = atrest_kms::Operation::from_target("TrentService.UpdatePrimaryRegion").unwrap();
    let arn_seen = with_call(&e.alice, |c| {
        e.kms.call(c, op, body.as_bytes()).unwrap();
        c.facts().key_arn
    });
    assert_eq!(arn_seen, Some(arn("us-east-1", &id)));
}

#[test]
fn replicas_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kms.redb");
    let root = atrest_crypto::SecretBytes::random(32).unwrap();
    let clock = Arc::new(ManualClock::new(
        OffsetDateTime::from_unix_timestamp(1_750_000_000).unwrap(),
    ));
    let open = || {
        let store = atrest_store::RedbStore::open(&path).unwrap();
        Env {
            kms: KeyService::open(
                Arc::new(store),
                RootKey::from_key(Aes256Key::from_secret_bytes(&root).unwrap()),
                vec!["us-east-1".into(), "eu-west-1".into()],
                clock.clone(),
            )
            .unwrap(),
            clock: clock.clone(),
            alice: caller(A, "us-east-1"),
        }
    };
    let (id, blob, config) = {
        let e = open();
        let id = e.new_mrk()["KeyId"].as_str().unwrap().to_owned();
        e.ok(
            "ReplicateKey",
            json!({"KeyId": id, "ReplicaRegion": "eu-west-1", "Description": "eu"}),
        );
        e.ok("RotateKeyOnDemand", json!({"KeyId": id}));
        let blob = encrypt(&e, &e.alice, &id, b"durable");
        let config = e.describe_as(&eu(), &id)["MultiRegionConfiguration"].clone();
        (id, blob, config)
    };
    let e = open();
    let md = e.describe_as(&eu(), &id);
    assert_eq!(md["Description"], "eu");
    assert_eq!(md["MultiRegionConfiguration"], config);
    assert_eq!(decrypt(&e, &eu(), &blob).0, b"durable");
    assert_eq!(
        e.ok_as(&eu(), "ListKeys", json!({}))["Keys"][0]["KeyId"],
        id.as_str()
    );
    e.ok_as(&eu(), "ListKeyRotations", json!({"KeyId": id}));
}

#[test]
fn services_diagnose_a_multi_region_key_in_its_region() {
    let e = three();
    let id = e.new_mrk()["KeyId"].as_str().unwrap().to_owned();
    e.ok(
        "ReplicateKey",
        json!({"KeyId": id, "ReplicaRegion": "eu-west-1"}),
    );
    let eu_arn = arn("eu-west-1", &id);
    let disk = e.kms.service_session("disk", "eu-west-1").unwrap();
    let (grant, _) = disk
        .grant_for(
            &eu(),
            &eu_arn,
            &["Encrypt", "Decrypt"],
            &std::collections::BTreeMap::new(),
        )
        .unwrap();
    assert_eq!(disk.key_unusable(&eu_arn, Some(&grant)).unwrap(), None);
    // The grant is the replica's: the primary has none.
    let us_arn = arn("us-east-1", &id);
    assert_eq!(
        disk.key_unusable(&us_arn, Some(&grant)).unwrap(),
        Some(atrest_kms::KeyUnusable::GrantRevoked)
    );
    e.ok_as(&eu(), "DisableKey", json!({"KeyId": id}));
    assert_eq!(
        disk.key_unusable(&eu_arn, Some(&grant)).unwrap(),
        Some(atrest_kms::KeyUnusable::Disabled)
    );
    assert_eq!(disk.key_unusable(&us_arn, None).unwrap(), None);
    assert_eq!(
        disk.key_unusable(&arn("ap-south-1", &id), None).unwrap(),
        Some(atrest_kms::KeyUnusable::Deleted)
    );
}
