//! Grants (K7), services acting for customers with the PassRole check,
//! service keys (K2), and the audit hook's fail-closed behaviour (K8).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use atrest_kms::names::AccountId;
use atrest_kms::{AuditSink, Caller, Operation};
use serde_json::json;

use super::{b64, env, unb64, with_call};

fn ctx(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect()
}

#[test]
fn grants_allow_exactly_what_they_say() {
    let e = env();
    let key = e.new_key();
    let bob = Caller::root(AccountId::parse("444455556666").unwrap(), "us-east-1");
    let arn = format!("arn:aws:kms:us-east-1:111122223333:key/{key}");
    let blob = e.ok(
        "Encrypt",
        json!({"KeyId": key, "Plaintext": b64(b"g"), "EncryptionContext": {"t": "1"}}),
    )["CiphertextBlob"]
        .clone();
    assert_eq!(
        e.call(
            &bob,
            "Decrypt",
            json!({"CiphertextBlob": blob, "EncryptionContext": {"t": "1"}})
        )
        .unwrap_err()
        .aws_type(),
        "AccessDeniedException"
    );

    let g = e.ok("CreateGrant", json!({"KeyId": key, "GranteePrincipal": "arn:aws:iam::444455556666:root", "RetiringPrincipal": "arn:aws:iam::111122223333:root",
        "Operations": ["Decrypt", "DescribeKey"], "Constraints": {"EncryptionContextSubset": {"t": "1"}}, "Name": "bob-reads"}));
    let (gid, token) = (
        g["GrantId"].as_str().unwrap().to_owned(),
        g["GrantToken"].clone(),
    );
    assert_eq!(gid.len(), 64);
    // Same name and parameters: the same grant (idempotent).
    let again = e.ok("CreateGrant", json!({"KeyId": key, "GranteePrincipal": "arn:aws:iam::444455556666:root", "RetiringPrincipal": "arn:aws:iam::111122223333:root",
        "Operations": ["DescribeKey", "Decrypt"], "Constraints": {"EncryptionContextSubset": {"t": "1"}}, "Name": "bob-reads"}));
    assert_eq!(again["GrantId"], gid.as_str());

    // The grantee may Decrypt with a context containing t=1, and nothing else.
    let d = e.call(&bob, "Decrypt", json!({"CiphertextBlob": blob, "EncryptionContext": {"t": "1"}, "GrantTokens": [token]})).unwrap();
    assert_eq!(unb64(&d["Plaintext"]), b"g");
    let blob2 = e.ok(
        "Encrypt",
        json!({"KeyId": key, "Plaintext": b64(b"h"), "EncryptionContext": {"t": "2"}}),
    )["CiphertextBlob"]
        .clone();
    assert_eq!(
        e.call(
            &bob,
            "Decrypt",
            json!({"CiphertextBlob": blob2, "EncryptionContext": {"t": "2"}})
        )
        .unwrap_err()
        .aws_type(),
        "AccessDeniedException"
    );
    assert_eq!(
        e.call(
            &bob,
            "Encrypt",
            json!({"KeyId": arn, "Plaintext": b64(b"x")})
        )
        .unwrap_err()
        .aws_type(),
        "AccessDeniedException"
    );
    e.call(&bob, "DescribeKey", json!({"KeyId": arn})).unwrap();
    // A forged token is refused.
    assert_eq!(
        e.call(
            &bob,
            "DescribeKey",
            json!({"KeyId": arn, "GrantTokens": ["AAAA"]})
        )
        .unwrap_err()
        .aws_type(),
        "InvalidGrantTokenException"
    );

    // Listings.
    let list = e.ok("ListGrants", json!({"KeyId": key}));
    assert_eq!(list["Grants"].as_array().unwrap().len(), 1);
    assert_eq!(
        list["Grants"][0]["Operations"],
        json!(["Decrypt", "DescribeKey"])
    );
    assert_eq!(
        list["Grants"][0]["Constraints"]["EncryptionContextSubset"],
        json!({"t": "1"})
    );
    assert_eq!(
        list["Grants"][0]["IssuingAccount"],
        "arn:aws:iam::111122223333:root"
    );
    let retirable = e.ok(
        "ListRetirableGrants",
        json!({"RetiringPrincipal": "arn:aws:iam::111122223333:root"}),
    );
    assert_eq!(retirable["Grants"][0]["GrantId"], gid.as_str());

    // Bob (the grantee, without RetireGrant) may not retire it; the retiring principal may.
    assert_eq!(
        e.call(&bob, "RetireGrant", json!({"KeyId": arn, "GrantId": gid}))
            .unwrap_err()
            .aws_type(),
        "AccessDeniedException"
    );
    e.ok("RetireGrant", json!({"GrantToken": g["GrantToken"]}));
    assert_eq!(
        e.call(&bob, "DescribeKey", json!({"KeyId": arn}))
            .unwrap_err()
            .aws_type(),
        "AccessDeniedException"
    );
    assert_eq!(
        e.err("RevokeGrant", json!({"KeyId": key, "GrantId": gid}))
            .aws_type(),
        "InvalidGrantIdException"
    );

    // EncryptionContextEquals; RevokeGrant; grantee with RetireGrant.
    let g2 = e.ok("CreateGrant", json!({"KeyId": key, "GranteePrincipal": "arn:aws:iam::444455556666:root", "Operations": ["Encrypt", "RetireGrant"], "Constraints": {"EncryptionContextEquals": {"a": "b"}}}));
    e.call(
        &bob,
        "Encrypt",
        json!({"KeyId": arn, "Plaintext": b64(b"x"), "EncryptionContext": {"a": "b"}}),
    )
    .unwrap();
    assert_eq!(
        e.call(
            &bob,
            "Encrypt",
            json!({"KeyId": arn, "Plaintext": b64(b"x"), "EncryptionContext": {"a": "b", "c": "d"}})
        )
        .unwrap_err()
        .aws_type(),
        "AccessDeniedException"
    );
    e.call(
        &bob,
        "RetireGrant",
        json!({"KeyId": arn, "GrantId": g2["GrantId"]}),
    )
    .unwrap();
    let g3 = e.ok("CreateGrant", json!({"KeyId": key, "GranteePrincipal": "arn:aws:iam::444455556666:root", "Operations": ["Encrypt"]}));
    e.ok(
        "RevokeGrant",
        json!({"KeyId": key, "GrantId": g3["GrantId"]}),
    );
    assert_eq!(
        e.call(
            &bob,
            "Encrypt",
            json!({"KeyId": arn, "Plaintext": b64(b"x")})
        )
        .unwrap_err()
        .aws_type(),
        "AccessDeniedException"
    );

    // Bad requests.
    for (body, want) in [
        (
            json!({"KeyId": key, "GranteePrincipal": "bob", "Operations": ["Decrypt"]}),
            "ValidationException",
        ),
        (
            json!({"KeyId": key, "GranteePrincipal": "arn:aws:iam::444455556666:root", "Operations": []}),
            "ValidationException",
        ),
        (
            json!({"KeyId": key, "GranteePrincipal": "arn:aws:iam::444455556666:root", "Operations": ["Sign"]}),
            "ValidationException",
        ),
        (
            json!({"KeyId": key, "GranteePrincipal": "arn:aws:iam::444455556666:root", "Operations": ["Fly"]}),
            "ValidationException",
        ),
        (
            json!({"KeyId": key, "GranteePrincipal": "arn:aws:iam::444455556666:root", "Operations": ["Decrypt"], "Constraints": {"EncryptionContextEquals": {"a": "b"}, "EncryptionContextSubset": {"a": "b"}}}),
            "ValidationException",
        ),
        (
            json!({"KeyId": "alias/x", "GranteePrincipal": "arn:aws:iam::444455556666:root", "Operations": ["Decrypt"]}),
            "NotFoundException",
        ),
    ] {
        assert_eq!(
            e.err("CreateGrant", body.clone()).aws_type(),
            want,
            "{body}"
        );
    }
}

#[test]
fn a_grant_with_create_grant_only_makes_narrower_grants() {
    let e = env();
    let key = e.new_key();
    let arn = format!("arn:aws:kms:us-east-1:111122223333:key/{key}");
    let bob = Caller::root(AccountId::parse("444455556666").unwrap(), "us-east-1");
    e.ok("CreateGrant", json!({"KeyId": key, "GranteePrincipal": "arn:aws:iam::444455556666:root", "Operations": ["Decrypt", "CreateGrant"], "Constraints": {"EncryptionContextSubset": {"t": "1"}}}));
    let ok = json!({"KeyId": arn, "GranteePrincipal": "disk.atrest", "Operations": ["Decrypt"], "Constraints": {"EncryptionContextSubset": {"t": "1", "u": "2"}}});
    e.call(&bob, "CreateGrant", ok).unwrap();
    for wider in [
        json!({"KeyId": arn, "GranteePrincipal": "disk.atrest", "Operations": ["Encrypt"], "Constraints": {"EncryptionContextSubset": {"t": "1"}}}),
        json!({"KeyId": arn, "GranteePrincipal": "disk.atrest", "Operations": ["Decrypt"]}),
    ] {
        assert_eq!(
            e.call(&bob, "CreateGrant", wider.clone())
                .unwrap_err()
                .aws_type(),
            "AccessDeniedException",
            "{wider}"
        );
    }
}

#[test]
fn services_act_for_customers_only_as_customers_allow() {
    let e = env();
    let a = AccountId::parse("111122223333").unwrap();
    let root = Caller::root(a.clone(), "us-east-1");
    let mut adm = Caller::root(AccountId::parse("999999999999").unwrap(), "us-east-1");
    adm.admin = true;
    with_call(&adm, |c| {
        e.kms.create_account(c, Some("111122223333"), false)
    })
    .unwrap();
    with_call(&root, |c| e.kms.create_user(c, "111122223333", "may")).unwrap();
    with_call(&root, |c| e.kms.create_user(c, "111122223333", "maynot")).unwrap();
    with_call(&root, |c| e.kms.put_user_policy(c, "111122223333", "may", "p", r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["kms:CreateGrant","kms:DescribeKey"],"Resource":"*"}]}"#)).unwrap();
    with_call(&root, |c| e.kms.put_user_policy(c, "111122223333", "maynot", "p", r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["kms:DescribeKey","kms:Encrypt"],"Resource":"*"}]}"#)).unwrap();
    let key = format!("arn:aws:kms:us-east-1:111122223333:key/{}", e.new_key());
    let disk = e.kms.service_session("disk", "us-east-1").unwrap();
    assert_eq!(disk.principal(), "disk.atrest");
    assert_eq!(disk.via_service(), "disk.us-east-1.atrest");
    let context = ctx(&[("atrest:disk", "d-1")]);

    // Without a grant the service cannot use the key.
    let generate =
        json!({"KeyId": key, "KeySpec": "AES_256", "EncryptionContext": {"atrest:disk": "d-1"}});
    assert_eq!(
        disk.call(Operation::GenerateDataKeyWithoutPlaintext, &generate)
            .unwrap_err()
            .aws_type(),
        "AccessDeniedException"
    );
    // A user who may not create grants cannot let the service use the key (PassRole).
    let maynot = Caller::user(a.clone(), "us-east-1", "maynot");
    assert_eq!(
        disk.grant_for(
            &maynot,
            &key,
            &["GenerateDataKeyWithoutPlaintext", "Decrypt"],
            &context
        )
        .unwrap_err()
        .aws_type(),
        "AccessDeniedException"
    );
    // A user who may, can.
    let may = Caller::user(a, "us-east-1", "may");
    disk.grant_for(
        &may,
        &key,
        &["GenerateDataKeyWithoutPlaintext", "Decrypt"],
        &context,
    )
    .unwrap();
    let wrapped = disk
        .call(Operation::GenerateDataKeyWithoutPlaintext, &generate)
        .unwrap()["CiphertextBlob"]
        .clone();
    let dk = disk
        .call(
            Operation::Decrypt,
            &json!({"CiphertextBlob": wrapped, "EncryptionContext": {"atrest:disk": "d-1"}}),
        )
        .unwrap();
    assert_eq!(unb64(&dk["Plaintext"]).len(), 32);
    // Only within the grant's context constraint.
    let other =
        json!({"KeyId": key, "KeySpec": "AES_256", "EncryptionContext": {"atrest:disk": "d-2"}});
    assert_eq!(
        disk.call(Operation::GenerateDataKeyWithoutPlaintext, &other)
            .unwrap_err()
            .aws_type(),
        "AccessDeniedException"
    );
    // Another service gets nothing from it.
    let rds = e.kms.service_session("rds", "us-east-1").unwrap();
    assert_eq!(
        rds.call(Operation::GenerateDataKeyWithoutPlaintext, &generate)
            .unwrap_err()
            .aws_type(),
        "AccessDeniedException"
    );
    // Disabling the key locks the service out with the key named.
    e.ok("DisableKey", json!({"KeyId": key}));
    let err = disk
        .call(
            Operation::Decrypt,
            &json!({"CiphertextBlob": wrapped, "EncryptionContext": {"atrest:disk": "d-1"}}),
        )
        .unwrap_err();
    assert_eq!(err.aws_type(), "DisabledException");
    assert!(err.to_string().contains(&key));
    assert!(e.kms.service_session("Disk!", "us-east-1").is_err());
    assert!(e.kms.service_session("disk", "mars-1").is_err());
}

#[test]
fn service_keys() {
    let e = env();
    let a = AccountId::parse("111122223333").unwrap();
    let mut adm = Caller::root(AccountId::parse("999999999999").unwrap(), "us-east-1");
    adm.admin = true;
    with_call(&adm, |c| {
        e.kms.create_account(c, Some("111122223333"), false)
    })
    .unwrap();
    let disk = e.kms.service_session("disk", "us-east-1").unwrap();
    let arn = disk.service_key(&a).unwrap();
    assert_eq!(
        disk.service_key(&a).unwrap(),
        arn,
        "one per service and region"
    );
    let eu = e.kms.service_session("disk", "eu-west-1").unwrap();
    assert_ne!(
        eu.service_key(&a).unwrap(),
        arn,
        "another region, another key"
    );
    let rds_key = e
        .kms
        .service_session("rds", "us-east-1")
        .unwrap()
        .service_key(&a)
        .unwrap();
    assert_ne!(rds_key, arn);

    let meta = e.ok("DescribeKey", json!({"KeyId": "alias/atrest/disk"}))["KeyMetadata"].clone();
    assert_eq!(meta["Arn"], arn.as_str());
    assert_eq!(meta["KeyManager"], "AWS");
    assert!(
        e.ok("ListKeys", json!({}))["Keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["KeyArn"] == arn.as_str())
    );
    assert!(
        e.ok("ListAliases", json!({}))["Aliases"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["AliasName"] == "alias/atrest/disk")
    );
    assert_eq!(
        e.ok("GetKeyRotationStatus", json!({"KeyId": arn}))["KeyRotationEnabled"],
        false
    );
    e.ok("EnableKeyRotation", json!({"KeyId": arn}));
    assert_eq!(
        e.ok("GetKeyRotationStatus", json!({"KeyId": arn}))["KeyRotationEnabled"],
        true
    );
    // Its policy does not let the customer change it (as with AWS managed
    // keys), and the code refuses it besides.
    for (op, body) in [
        ("DisableKey", json!({"KeyId": arn})),
        ("ScheduleKeyDeletion", json!({"KeyId": arn})),
        (
            "PutKeyPolicy",
            json!({"KeyId": arn, "Policy": super::authorization_policy_for_tests()}),
        ),
        (
            "UpdateKeyDescription",
            json!({"KeyId": arn, "Description": "mine"}),
        ),
        (
            "TagResource",
            json!({"KeyId": arn, "Tags": [{"TagKey": "a", "TagValue": "b"}]}),
        ),
    ] {
        assert_eq!(e.err(op, body).aws_type(), "AccessDeniedException", "{op}");
    }
    let err = e.err(
        "CreateAlias",
        json!({"AliasName": "alias/mine", "TargetKeyId": arn}),
    );
    assert_eq!(err.aws_type(), "UnsupportedOperationException");
    assert!(err.to_string().contains("service key"), "{err}");
    assert_eq!(e.state(&arn), "Enabled");
    // Customers use it through the service, not directly.
    assert_eq!(
        e.err(
            "Encrypt",
            json!({"KeyId": "alias/atrest/disk", "Plaintext": b64(b"x")})
        )
        .aws_type(),
        "AccessDeniedException"
    );
    let root = Caller::root(a, "us-east-1");
    let blob = disk
        .call_for(
            &root,
            Operation::Encrypt,
            &json!({"KeyId": "alias/atrest/disk", "Plaintext": b64(b"x")}),
        )
        .unwrap()["CiphertextBlob"]
        .clone();
    let back = disk
        .call_for(&root, Operation::Decrypt, &json!({"CiphertextBlob": blob}))
        .unwrap();
    assert_eq!(unb64(&back["Plaintext"]), b"x");
    // The customer lets the service principal use it through a grant.
    disk.grant_for(&root, &arn, &["Decrypt"], &BTreeMap::new())
        .unwrap();
    disk.call(Operation::Decrypt, &json!({"CiphertextBlob": blob}))
        .unwrap();
}

/// An audit sink that records entries, or fails on demand.
#[derive(Default)]
struct Recorder {
    entries: Mutex<Vec<atrest_audit::Entry>>,
    failing: Mutex<bool>,
}

impl AuditSink for Recorder {
    fn record_blocking(&self, entry: atrest_audit::Entry) -> Result<(), String> {
        if *self.failing.lock().unwrap() {
            return Err("disk full".into());
        }
        self.entries.lock().unwrap().push(entry);
        Ok(())
    }
}

#[test]
fn writes_record_before_they_commit_and_fail_closed() {
    let e = env();
    let sink = Arc::new(Recorder::default());
    e.kms.set_audit_sink(sink.clone());
    let key = e.new_key();
    {
        let entries = sink.entries.lock().unwrap();
        let last = entries.last().unwrap();
        assert_eq!(last.operation, "CreateKey");
        assert_eq!(last.result, "Success");
        assert!(last.key_arn.as_deref().unwrap().ends_with(&key));
        assert_eq!(
            last.principal.as_deref(),
            Some("arn:aws:iam::111122223333:root")
        );
    }
    *sink.failing.lock().unwrap() = true;
    let before = e.ok("ListKeys", json!({}))["Keys"]
        .as_array()
        .unwrap()
        .len();
    let err = e.err("CreateKey", json!({}));
    assert_eq!(err.aws_type(), "KMSInternalException");
    assert!(matches!(err, atrest_kms::KmsError::Internal(ref m) if m.contains("audit")));
    assert_eq!(
        e.err("DisableKey", json!({"KeyId": key})).aws_type(),
        "KMSInternalException"
    );
    assert_eq!(e.state(&key), "Enabled", "nothing changed");
    assert_eq!(
        e.ok("ListKeys", json!({}))["Keys"]
            .as_array()
            .unwrap()
            .len(),
        before,
        "no key was created"
    );
    // In-process service calls are recorded too, and refused when they cannot be.
    let disk = e.kms.service_session("disk", "us-east-1").unwrap();
    let root = Caller::root(AccountId::parse("111122223333").unwrap(), "us-east-1");
    assert_eq!(
        disk.call_for(&root, Operation::DescribeKey, &json!({"KeyId": key}))
            .unwrap_err()
            .aws_type(),
        "KMSInternalException"
    );
    *sink.failing.lock().unwrap() = false;
    disk.call_for(&root, Operation::DescribeKey, &json!({"KeyId": key}))
        .unwrap();
    let entries = sink.entries.lock().unwrap();
    let last = entries.last().unwrap();
    assert_eq!(last.operation, "DescribeKey");
    assert_eq!(last.via_service.as_deref(), Some("disk.us-east-1.atrest"));
    assert_eq!(last.source.as_deref(), Some("in-process"));
}
