//! AWS's errors, not approximations (issue 20, item 6): the error type and,
//! where AWS fixes it, the exact message of each refusal.

use serde_json::json;

use super::{b64, caller, env};

const ARN_PREFIX: &str = "arn:aws:kms:us-east-1:111122223333:key/";

#[test]
fn reserved_alias_names_are_not_authorized() {
    let e = env();
    let key = e.new_key();
    e.ok(
        "CreateAlias",
        json!({"AliasName": "alias/mine", "TargetKeyId": key}),
    );
    for (op, body) in [
        (
            "CreateAlias",
            json!({"AliasName": "alias/aws/ebs", "TargetKeyId": key}),
        ),
        (
            "UpdateAlias",
            json!({"AliasName": "alias/aws/s3", "TargetKeyId": key}),
        ),
        ("DeleteAlias", json!({"AliasName": "alias/aws/rds"})),
        (
            "CreateAlias",
            json!({"AliasName": "alias/atrest/disk", "TargetKeyId": key}),
        ),
    ] {
        let err = e.err(op, body.clone());
        assert_eq!(err.aws_type(), "NotAuthorizedException", "{op} {body}");
        // AWS sends this type with no message.
        assert_eq!(err.to_string(), "", "{op} {body}");
    }
}

#[test]
fn alias_names_outside_the_pattern_are_validation_errors() {
    let e = env();
    let key = e.new_key();
    for op in ["CreateAlias", "UpdateAlias"] {
        let err = e.err(op, json!({"AliasName": "alias/x y", "TargetKeyId": key}));
        assert_eq!(err.aws_type(), "ValidationException");
        assert_eq!(
            err.to_string(),
            "1 validation error detected: Value 'alias/x y' at 'aliasName' failed to satisfy constraint: Member must satisfy regular expression pattern: ^[a-zA-Z0-9:/_-]+$"
        );
    }
    let err = e.err("DeleteAlias", json!({"AliasName": "alias/é"}));
    assert_eq!(err.aws_type(), "ValidationException");
    let err = e.err(
        "CreateAlias",
        json!({"AliasName": "mine", "TargetKeyId": key}),
    );
    assert_eq!(err.aws_type(), "InvalidAliasNameException");
    assert_eq!(
        err.to_string(),
        "Alias must start with the prefix \"alias/\". Please see https://docs.aws.amazon.com/kms/latest/developerguide/kms-alias.html"
    );
}

#[test]
fn validation_messages_name_the_broken_bound() {
    let e = env();
    let key = e.new_key();
    // A sensitive member: AWS does not repeat its value.
    let err = e.err(
        "Encrypt",
        json!({"KeyId": key, "Plaintext": b64(&[7u8; 4097])}),
    );
    assert_eq!(err.aws_type(), "ValidationException");
    assert_eq!(
        err.to_string(),
        "1 validation error detected: Value at 'plaintext' failed to satisfy constraint: Member must have length less than or equal to 4096"
    );
    let err = e.err("Encrypt", json!({"KeyId": key, "Plaintext": ""}));
    assert_eq!(
        err.to_string(),
        "1 validation error detected: Value at 'plaintext' failed to satisfy constraint: Member must have length greater than or equal to 1"
    );
    let err = e.err("Decrypt", json!({"CiphertextBlob": b64(&[1u8; 6145])}));
    assert_eq!(
        err.to_string(),
        "1 validation error detected: Value at 'ciphertextBlob' failed to satisfy constraint: Member must have length less than or equal to 6144"
    );
    // Other members: AWS repeats the value.
    let err = e.err("DescribeKey", json!({"KeyId": ""}));
    assert_eq!(
        err.to_string(),
        "1 validation error detected: Value '' at 'keyId' failed to satisfy constraint: Member must have length greater than or equal to 1"
    );
    let err = e.err(
        "UpdateKeyDescription",
        json!({"KeyId": key, "Description": "d".repeat(8193)}),
    );
    assert!(
        err.to_string().ends_with(
            "at 'description' failed to satisfy constraint: Member must have length less than or equal to 8192"
        ),
        "{err}"
    );
    let err = e.err(
        "ScheduleKeyDeletion",
        json!({"KeyId": key, "PendingWindowInDays": 6}),
    );
    assert_eq!(
        err.to_string(),
        "1 validation error detected: Value '6' at 'pendingWindowInDays' failed to satisfy constraint: Member must have value greater than or equal to 7"
    );
    let err = e.err(
        "ScheduleKeyDeletion",
        json!({"KeyId": key, "PendingWindowInDays": 31}),
    );
    assert_eq!(err.aws_type(), "ValidationException");
    for days in [89, 2561] {
        let err = e.err(
            "EnableKeyRotation",
            json!({"KeyId": key, "RotationPeriodInDays": days}),
        );
        assert_eq!(err.aws_type(), "ValidationException", "{days}");
    }
    for n in [0, 1025] {
        assert_eq!(
            e.err("GenerateRandom", json!({"NumberOfBytes": n}))
                .aws_type(),
            "ValidationException"
        );
        assert_eq!(
            e.err("GenerateDataKey", json!({"KeyId": key, "NumberOfBytes": n}))
                .aws_type(),
            "ValidationException"
        );
    }
    for body in [
        json!({"KeyId": key}),
        json!({"KeyId": key, "NumberOfBytes": 32, "KeySpec": "AES_256"}),
    ] {
        let err = e.err("GenerateDataKey", body.clone());
        assert_eq!(err.aws_type(), "ValidationException", "{body}");
        assert_eq!(
            err.to_string(),
            "Please specify either number of bytes or key spec.",
            "{body}"
        );
    }
    let err = e.err(
        "CreateGrant",
        json!({"KeyId": key, "GranteePrincipal": "arn:aws:iam::111122223333:root", "Operations": ["Fly"]}),
    );
    assert_eq!(err.aws_type(), "ValidationException");
    assert!(
        err.to_string().starts_with(
            "1 validation error detected: Value '[Fly]' at 'operations' failed to satisfy constraint: Member must satisfy constraint: [Member must satisfy enum value set: [Decrypt, Encrypt,"
        ),
        "{err}"
    );
    let tokens: Vec<String> = (0..11).map(|i| format!("t{i}")).collect();
    let err = e.err(
        "Encrypt",
        json!({"KeyId": key, "Plaintext": b64(b"x"), "GrantTokens": tokens}),
    );
    assert_eq!(
        err.to_string(),
        "1 validation error detected: Value '[t0, t1, t2, t3, t4, t5, t6, t7, t8, t9, t10]' at 'grantTokens' failed to satisfy constraint: Member must have length less than or equal to 10"
    );
    // PolicyName: the pattern is a validation error; a well-formed name
    // other than `default` names no policy.
    let err = e.err(
        "GetKeyPolicy",
        json!({"KeyId": key, "PolicyName": "not valid"}),
    );
    assert_eq!(err.aws_type(), "ValidationException");
    assert_eq!(
        err.to_string(),
        "1 validation error detected: Value 'not valid' at 'policyName' failed to satisfy constraint: Member must satisfy regular expression pattern: [\\w]+"
    );
    for op in ["PutKeyPolicy", "GetKeyPolicy"] {
        let err = e.err(
            op,
            json!({"KeyId": key, "PolicyName": "other", "Policy": "{}"}),
        );
        assert_eq!(err.aws_type(), "NotFoundException", "{op}");
        assert_eq!(err.to_string(), "No such policy exists", "{op}");
    }
}

#[test]
fn tag_errors_are_aws_types() {
    let e = env();
    let key = e.new_key();
    let fifty_one: Vec<_> = (0..51)
        .map(|i| json!({"TagKey": format!("t{i}"), "TagValue": "v"}))
        .collect();
    let err = e.err("TagResource", json!({"KeyId": key, "Tags": fifty_one}));
    assert_eq!(err.aws_type(), "TagException");
    let err = e.err("CreateKey", json!({"Tags": fifty_one}));
    assert_eq!(err.aws_type(), "TagException");
    let long = "k".repeat(129);
    let err = e.err(
        "TagResource",
        json!({"KeyId": key, "Tags": [{"TagKey": "ok", "TagValue": "v"}, {"TagKey": long, "TagValue": "v"}]}),
    );
    assert_eq!(err.aws_type(), "ValidationException");
    assert_eq!(
        err.to_string(),
        format!(
            "1 validation error detected: Value '{long}' at 'tags.2.member.tagKey' failed to satisfy constraint: Member must have length less than or equal to 128"
        )
    );
    let err = e.err("UntagResource", json!({"KeyId": key, "TagKeys": [long]}));
    assert_eq!(err.aws_type(), "ValidationException");
    let err = e.err(
        "TagResource",
        json!({"KeyId": key, "Tags": [{"TagKey": "k"}]}),
    );
    assert_eq!(
        err.to_string(),
        "1 validation error detected: Value null at 'tags.1.member.tagValue' failed to satisfy constraint: Member must not be null"
    );
    for reserved in ["aws:x", "AWS:x", "Aws:x", "aWs:x"] {
        let err = e.err(
            "TagResource",
            json!({"KeyId": key, "Tags": [{"TagKey": reserved, "TagValue": "v"}]}),
        );
        assert_eq!(err.aws_type(), "TagException", "{reserved}");
        assert_eq!(err.to_string(), "Tags beginning with aws: are reserved");
    }
    assert_eq!(
        e.ok("ListResourceTags", json!({"KeyId": key}))["Tags"],
        json!([])
    );
}

#[test]
fn invalid_ciphertext_carries_no_message() {
    let e = env();
    let key = e.new_key();
    let blob = e.ok(
        "Encrypt",
        json!({"KeyId": key, "Plaintext": b64(b"x"), "EncryptionContext": {"a": "1"}}),
    )["CiphertextBlob"]
        .clone();
    for body in [
        json!({"CiphertextBlob": b64(b"not a blob at all")}),
        json!({"CiphertextBlob": blob, "EncryptionContext": {"a": "2"}}),
        json!({"CiphertextBlob": blob}),
    ] {
        let err = e.err("Decrypt", body.clone());
        assert_eq!(err.aws_type(), "InvalidCiphertextException", "{body}");
        assert_eq!(err.to_string(), "", "{body}");
    }
}

#[test]
fn rotation_answers_carry_aws_key_ids() {
    let e = env();
    let key = e.new_key();
    let arn = format!("{ARN_PREFIX}{key}");
    assert_eq!(
        e.ok("GetKeyRotationStatus", json!({"KeyId": arn}))["KeyId"],
        key
    );
    assert_eq!(
        e.ok("RotateKeyOnDemand", json!({"KeyId": key}))["KeyId"],
        arn
    );
}

#[test]
fn unknown_keys_are_not_found_with_their_arn() {
    let e = env();
    let mrk = "mrk-1234abcd12ab34cd56ef1234567890ab";
    for id in [mrk.to_owned(), format!("{ARN_PREFIX}{mrk}")] {
        for op in ["DescribeKey", "EnableKey", "GetKeyPolicy", "ListGrants"] {
            let err = e.err(op, json!({"KeyId": id}));
            assert_eq!(err.aws_type(), "NotFoundException", "{op} {id}");
            assert_eq!(
                err.to_string(),
                format!("Key '{ARN_PREFIX}{mrk}' does not exist"),
                "{op} {id}"
            );
        }
    }
    let err = e.err("Encrypt", json!({"KeyId": mrk, "Plaintext": b64(b"x")}));
    assert_eq!(
        err.to_string(),
        format!("Key '{ARN_PREFIX}{mrk}' does not exist")
    );
    let uuid = "1234abcd-12ab-34cd-56ef-1234567890ab";
    let err = e.err("DescribeKey", json!({"KeyId": uuid}));
    assert_eq!(
        err.to_string(),
        format!("Key '{ARN_PREFIX}{uuid}' does not exist")
    );
    // A key of another region does not exist here.
    let key = e.new_key();
    let eu = caller("111122223333", "eu-west-1");
    let err = e
        .call(&eu, "DescribeKey", json!({"KeyId": key}))
        .unwrap_err();
    assert_eq!(err.aws_type(), "NotFoundException");
    assert_eq!(
        err.to_string(),
        format!("Key 'arn:aws:kms:eu-west-1:111122223333:key/{key}' does not exist")
    );
    let err = e.err("DescribeKey", json!({"KeyId": "alias/none"}));
    assert_eq!(
        err.to_string(),
        "Alias arn:aws:kms:us-east-1:111122223333:alias/none is not found."
    );
}

#[test]
fn key_states_have_aws_messages() {
    let e = env();
    let key = e.new_key();
    let arn = format!("{ARN_PREFIX}{key}");
    e.ok("DisableKey", json!({"KeyId": key}));
    let err = e.err("Encrypt", json!({"KeyId": key, "Plaintext": b64(b"x")}));
    assert_eq!(err.aws_type(), "DisabledException");
    assert_eq!(err.to_string(), format!("{arn} is disabled."));
    e.ok(
        "ScheduleKeyDeletion",
        json!({"KeyId": key, "PendingWindowInDays": 7}),
    );
    let err = e.err("Encrypt", json!({"KeyId": key, "Plaintext": b64(b"x")}));
    assert_eq!(err.aws_type(), "KMSInvalidStateException");
    assert_eq!(err.to_string(), format!("{arn} is pending deletion."));
}

#[test]
fn import_without_valid_to_needs_does_not_expire() {
    let e = env();
    let arn = e.ok("CreateKey", json!({"Origin": "EXTERNAL"}))["KeyMetadata"]["Arn"]
        .as_str()
        .unwrap()
        .to_owned();
    // The checks on the expiry come before the token is read.
    for model in [json!("KEY_MATERIAL_EXPIRES"), serde_json::Value::Null] {
        let mut req = json!({"KeyId": arn, "ImportToken": b64(b"token"), "EncryptedKeyMaterial": b64(b"material")});
        if !model.is_null() {
            req["ExpirationModel"] = model;
        }
        let err = e.err("ImportKeyMaterial", req.clone());
        assert_eq!(err.aws_type(), "ValidationException", "{req}");
        assert_eq!(
            err.to_string(),
            "A validTo date must be set if the ExpirationModel is KEY_MATERIAL_EXPIRES",
            "{req}"
        );
    }
}

#[test]
fn dry_run_answers_after_authorization_and_key_state() {
    let e = env();
    let key = e.new_key();
    let blob =
        e.ok("Encrypt", json!({"KeyId": key, "Plaintext": b64(b"x")}))["CiphertextBlob"].clone();
    let grantee = "arn:aws:iam::444455556666:root";
    let grant = e.ok(
        "CreateGrant",
        json!({"KeyId": key, "GranteePrincipal": grantee, "Operations": ["Decrypt"], "Name": "g"}),
    );
    for (op, body) in [
        (
            "Encrypt",
            json!({"KeyId": key, "Plaintext": b64(b"x"), "DryRun": true}),
        ),
        ("Decrypt", json!({"CiphertextBlob": blob, "DryRun": true})),
        (
            "ReEncrypt",
            json!({"CiphertextBlob": blob, "DestinationKeyId": key, "DryRun": true}),
        ),
        (
            "GenerateDataKey",
            json!({"KeyId": key, "KeySpec": "AES_256", "DryRun": true}),
        ),
        (
            "GenerateDataKeyWithoutPlaintext",
            json!({"KeyId": key, "NumberOfBytes": 16, "DryRun": true}),
        ),
        // The same name and parameters as an existing grant: still a dry run.
        (
            "CreateGrant",
            json!({"KeyId": key, "GranteePrincipal": grantee, "Operations": ["Decrypt"], "Name": "g", "DryRun": true}),
        ),
        (
            "RetireGrant",
            json!({"KeyId": key, "GrantId": grant["GrantId"], "DryRun": true}),
        ),
        (
            "RevokeGrant",
            json!({"KeyId": key, "GrantId": grant["GrantId"], "DryRun": true}),
        ),
    ] {
        let err = e.err(op, body.clone());
        assert_eq!(err.aws_type(), "DryRunOperationException", "{op} {body}");
        assert_eq!(
            err.to_string(),
            "The request would have succeeded, but the DryRun parameter was set.",
            "{op}"
        );
    }
    assert_eq!(
        e.ok("ListGrants", json!({"KeyId": key}))["Grants"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "no dry run changed a grant"
    );
    // A dry run that would fail answers the failure.
    e.ok("DisableKey", json!({"KeyId": key}));
    assert_eq!(
        e.err(
            "Encrypt",
            json!({"KeyId": key, "Plaintext": b64(b"x"), "DryRun": true})
        )
        .aws_type(),
        "DisabledException"
    );
    let stranger = caller("999988887777", "us-east-1");
    assert_eq!(
        e.call(
            &stranger,
            "Encrypt",
            json!({"KeyId": format!("{ARN_PREFIX}{key}"), "Plaintext": b64(b"x"), "DryRun": true})
        )
        .unwrap_err()
        .aws_type(),
        "AccessDeniedException"
    );
}

#[test]
fn the_new_operations_name_the_broken_bound_without_the_value() {
    let e = env();
    let id = |spec: &str, usage: &str| {
        e.ok("CreateKey", json!({"KeySpec": spec, "KeyUsage": usage}))["KeyMetadata"]["KeyId"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let signer = id("ECC_NIST_P256", "SIGN_VERIFY");
    let agreer = id("ECC_NIST_P256", "KEY_AGREEMENT");
    let mac = id("HMAC_256", "GENERATE_VERIFY_MAC");
    let long = b64(&[b'q'; 4097]);
    let cases = [
        (
            "Sign",
            json!({"KeyId": signer, "Message": long, "SigningAlgorithm": "ECDSA_SHA_256"}),
            "message",
            "less than or equal to 4096",
        ),
        (
            "Verify",
            json!({"KeyId": signer, "Message": b64(b"m"), "Signature": b64(&[1u8; 6145]), "SigningAlgorithm": "ECDSA_SHA_256"}),
            "signature",
            "less than or equal to 6144",
        ),
        (
            "DeriveSharedSecret",
            json!({"KeyId": agreer, "KeyAgreementAlgorithm": "ECDH", "PublicKey": b64(&[0u8; 8193])}),
            "publicKey",
            "less than or equal to 8192",
        ),
        (
            "GenerateMac",
            json!({"KeyId": mac, "Message": long, "MacAlgorithm": "HMAC_SHA_256"}),
            "message",
            "less than or equal to 4096",
        ),
        (
            "VerifyMac",
            json!({"KeyId": mac, "Message": b64(b"m"), "Mac": b64(&[1u8; 6145]), "MacAlgorithm": "HMAC_SHA_256"}),
            "mac",
            "less than or equal to 6144",
        ),
    ];
    for (op, body, member, bound) in cases {
        let err = e.err(op, body);
        assert_eq!(err.aws_type(), "ValidationException", "{op}");
        assert_eq!(
            err.to_string(),
            format!(
                "1 validation error detected: Value at '{member}' failed to satisfy constraint: Member must have length {bound}"
            ),
            "{op}"
        );
    }
}
