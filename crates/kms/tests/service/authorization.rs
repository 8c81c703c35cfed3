//! The authorization matrix of issue 3: every operation below, for every
//! kind of caller, on a key in every state; each cell asserted. Plus key
//! policies (lockout check, explicit deny, conditions) and suspension.

use std::collections::BTreeMap;

use atrest_kms::names::AccountId;
use atrest_kms::{Caller, Operation};
use serde_json::{Value, json};

use super::{Env, b64, env, unb64, with_call};

const A: &str = "111122223333";
const B: &str = "444455556666";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Enabled,
    Disabled,
    PendingDeletion,
    PendingImport,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Who {
    Owner,
    UserByIdentity,
    UserByKeyPolicy,
    UserWithout,
    OtherAccountWithPolicy,
    OtherAccountWithout,
    ServiceWithGrant,
    ServiceWithout,
}

const WHO: [Who; 8] = [
    Who::Owner,
    Who::UserByIdentity,
    Who::UserByKeyPolicy,
    Who::UserWithout,
    Who::OtherAccountWithPolicy,
    Who::OtherAccountWithout,
    Who::ServiceWithGrant,
    Who::ServiceWithout,
];

/// The key policy of every matrix key: the account's root (so identity
/// policies apply), one user named directly, and, when `cross`, account B
/// for use.
fn policy(cross: bool) -> String {
    let mut statements = vec![
        json!({"Sid": "root", "Effect": "Allow", "Principal": {"AWS": format!("arn:aws:iam::{A}:root")}, "Action": "kms:*", "Resource": "*"}),
        json!({"Sid": "direct", "Effect": "Allow", "Principal": {"AWS": format!("arn:aws:iam::{A}:user/kp")}, "Action": "kms:*", "Resource": "*"}),
    ];
    if cross {
        statements.push(json!({"Sid": "other account", "Effect": "Allow", "Principal": {"AWS": format!("arn:aws:iam::{B}:root")},
            "Action": ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey", "kms:CreateGrant"], "Resource": "*"}));
    }
    json!({"Version": "2012-10-17", "Statement": statements}).to_string()
}

const ALL_KMS: &str =
    r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:*","Resource":"*"}]}"#;

const GRANT_OPS: [&str; 9] = [
    "DescribeKey",
    "Encrypt",
    "Decrypt",
    "GenerateDataKey",
    "GenerateDataKeyWithoutPlaintext",
    "ReEncryptFrom",
    "ReEncryptTo",
    "CreateGrant",
    "RetireGrant",
];

struct World {
    e: Env,
    callers: BTreeMap<&'static str, Caller>,
}

fn admin(e: &Env) -> Caller {
    let mut a = Caller::root(AccountId::parse("999999999999").unwrap(), "us-east-1");
    a.admin = true;
    let _ = e;
    a
}

fn world() -> World {
    let e = env();
    let adm = admin(&e);
    with_call(&adm, |c| e.kms.create_account(c, Some(A), false)).unwrap();
    with_call(&adm, |c| e.kms.create_account(c, Some(B), false)).unwrap();
    let root_a = Caller::root(AccountId::parse(A).unwrap(), "us-east-1");
    let root_b = Caller::root(AccountId::parse(B).unwrap(), "us-east-1");
    for u in ["idp", "kp", "none"] {
        with_call(&root_a, |c| e.kms.create_user(c, A, u)).unwrap();
    }
    with_call(&root_a, |c| {
        e.kms.put_user_policy(c, A, "idp", "all-kms", ALL_KMS)
    })
    .unwrap();
    with_call(&root_b, |c| e.kms.create_user(c, B, "x")).unwrap();
    with_call(&root_b, |c| {
        e.kms.put_user_policy(c, B, "x", "all-kms", ALL_KMS)
    })
    .unwrap();
    let a = AccountId::parse(A).unwrap();
    let b = AccountId::parse(B).unwrap();
    let mut callers = BTreeMap::new();
    callers.insert("owner", root_a);
    callers.insert("idp", Caller::user(a.clone(), "us-east-1", "idp"));
    callers.insert("kp", Caller::user(a.clone(), "us-east-1", "kp"));
    callers.insert("none", Caller::user(a, "us-east-1", "none"));
    callers.insert("x", Caller::user(b, "us-east-1", "x"));
    callers.insert(
        "disk",
        e.kms
            .service_session("disk", "us-east-1")
            .unwrap()
            .caller()
            .clone(),
    );
    callers.insert(
        "rds",
        e.kms
            .service_session("rds", "us-east-1")
            .unwrap()
            .caller()
            .clone(),
    );
    World { e, callers }
}

impl World {
    fn owner(&self) -> &Caller {
        &self.callers["owner"]
    }

    fn as_owner(&self, op: &str, body: Value) -> Value {
        self.e
            .call(self.owner(), op, body.clone())
            .unwrap_or_else(|err| panic!("{op} {body}: {err}"))
    }

    /// A key in `state`, its ARN and a ciphertext blob under it; the disk
    /// service holds a grant for GRANT_OPS on it.
    fn key(&self, state: State, cross: bool) -> (String, Value) {
        let external = state == State::PendingImport;
        let meta = self.as_owner(
            "CreateKey",
            json!({"Policy": policy(cross), "Origin": if external { "EXTERNAL" } else { "AWS_KMS" }}),
        )["KeyMetadata"]
            .clone();
        let arn = meta["Arn"].as_str().unwrap().to_owned();
        if external {
            super::byok::import(&self.e, self.owner(), &arn, &[5u8; 32]);
        }
        let blob = self.as_owner("Encrypt", json!({"KeyId": arn, "Plaintext": b64(b"x")}))["CiphertextBlob"].clone();
        let disk = self.e.kms.service_session("disk", "us-east-1").unwrap();
        disk.grant_for(self.owner(), &arn, &GRANT_OPS, &BTreeMap::new())
            .unwrap();
        match state {
            State::Enabled => {}
            State::Disabled => {
                self.as_owner("DisableKey", json!({"KeyId": arn}));
            }
            State::PendingDeletion => {
                self.as_owner(
                    "ScheduleKeyDeletion",
                    json!({"KeyId": arn, "PendingWindowInDays": 7}),
                );
            }
            State::PendingImport => {
                self.as_owner("DeleteImportedKeyMaterial", json!({"KeyId": arn}));
            }
        }
        (arn, blob)
    }

    fn caller(&self, who: Who) -> &Caller {
        &self.callers[match who {
            Who::Owner => "owner",
            Who::UserByIdentity => "idp",
            Who::UserByKeyPolicy => "kp",
            Who::UserWithout => "none",
            Who::OtherAccountWithPolicy | Who::OtherAccountWithout => "x",
            Who::ServiceWithGrant => "disk",
            Who::ServiceWithout => "rds",
        }]
    }
}

/// Whether `who` may perform `op` (authorization only, whatever the state).
fn may(who: Who, op: &str) -> bool {
    match who {
        Who::Owner | Who::UserByIdentity | Who::UserByKeyPolicy => true,
        Who::UserWithout | Who::OtherAccountWithout | Who::ServiceWithout => false,
        Who::OtherAccountWithPolicy => matches!(
            op,
            "Encrypt"
                | "Decrypt"
                | "ReEncrypt"
                | "GenerateDataKey"
                | "GenerateDataKeyWithoutPlaintext"
                | "DescribeKey"
                | "CreateGrant"
        ),
        Who::ServiceWithGrant => GRANT_OPS.contains(&op) || op == "ReEncrypt",
    }
}

const CRYPTO: [&str; 6] = [
    "Encrypt",
    "Decrypt",
    "ReEncrypt",
    "GenerateDataKey",
    "GenerateDataKeyWithoutPlaintext",
    "CreateGrant",
];

/// What an allowed caller gets in `state`: `None` for success, or the error.
fn in_state(op: &str, state: State) -> Option<&'static str> {
    use State::*;
    let crypto = CRYPTO[..5].contains(&op);
    match (state, op) {
        (Enabled, _) => None,
        (_, "DescribeKey" | "ListGrants" | "GetKeyPolicy" | "GetKeyRotationStatus") => None,
        (Disabled, _) if crypto => Some("DisabledException"),
        (Disabled, _) => None,
        (PendingDeletion, _) => Some("KMSInvalidStateException"),
        (PendingImport, "DisableKey" | "EnableKey") => Some("KMSInvalidStateException"),
        (PendingImport, _) if crypto => Some("KMSInvalidStateException"),
        (PendingImport, _) => None,
    }
}

fn body(op: &str, arn: &str, blob: &Value) -> Value {
    match op {
        "Encrypt" => json!({"KeyId": arn, "Plaintext": b64(b"y")}),
        "Decrypt" => json!({"CiphertextBlob": blob}),
        "ReEncrypt" => json!({"CiphertextBlob": blob, "DestinationKeyId": arn}),
        "GenerateDataKey" | "GenerateDataKeyWithoutPlaintext" => {
            json!({"KeyId": arn, "KeySpec": "AES_256"})
        }
        "CreateGrant" => {
            json!({"KeyId": arn, "GranteePrincipal": "arn:aws:iam::111122223333:user/idp", "Operations": ["Decrypt"]})
        }
        "UpdateKeyDescription" => json!({"KeyId": arn, "Description": "d"}),
        "TagResource" => json!({"KeyId": arn, "Tags": [{"TagKey": "k", "TagValue": "v"}]}),
        "ScheduleKeyDeletion" => json!({"KeyId": arn, "PendingWindowInDays": 7}),
        _ => json!({"KeyId": arn}),
    }
}

const OPS: [&str; 15] = [
    "DescribeKey",
    "Encrypt",
    "Decrypt",
    "ReEncrypt",
    "GenerateDataKey",
    "GenerateDataKeyWithoutPlaintext",
    "CreateGrant",
    "ListGrants",
    "DisableKey",
    "EnableKey",
    "UpdateKeyDescription",
    "TagResource",
    "GetKeyPolicy",
    "GetKeyRotationStatus",
    "ScheduleKeyDeletion",
];

#[test]
fn authorization_matrix() {
    let w = world();
    let mut cells = 0;
    for state in [
        State::Enabled,
        State::Disabled,
        State::PendingDeletion,
        State::PendingImport,
    ] {
        for who in WHO {
            for op in OPS {
                // A fresh key per cell: operations change state.
                let (arn, blob) = w.key(state, who != Who::OtherAccountWithout);
                let result = w.e.call(w.caller(who), op, body(op, &arn, &blob));
                let expected = if may(who, op) {
                    in_state(op, state)
                } else {
                    Some("AccessDeniedException")
                };
                match (expected, &result) {
                    (None, Ok(_)) => {}
                    (Some(want), Err(err)) => {
                        assert_eq!(err.aws_type(), want, "{op} by {who:?} on {state:?}: {err}");
                        if want == "AccessDeniedException" {
                            let msg = err.to_string();
                            assert!(
                                msg.starts_with(&format!(
                                    "User: {} is not authorized to perform: kms:",
                                    w.caller(who).principal_arn()
                                )),
                                "{msg}"
                            );
                            assert!(msg.contains(&arn), "names the key: {msg}");
                        }
                    }
                    _ => panic!(
                        "{op} by {who:?} on {state:?}: expected {expected:?}, got {result:?}"
                    ),
                }
                cells += 1;
            }
        }
    }
    assert_eq!(cells, 4 * 8 * OPS.len());
}

#[test]
fn lockout_check_and_policy_operations() {
    let w = world();
    let arn = w.as_owner("CreateKey", json!({}))["KeyMetadata"]["Arn"]
        .as_str()
        .unwrap()
        .to_owned();
    let p = w.as_owner(
        "GetKeyPolicy",
        json!({"KeyId": arn, "PolicyName": "default"}),
    );
    assert_eq!(p["PolicyName"], "default");
    let doc: Value = serde_json::from_str(p["Policy"].as_str().unwrap()).unwrap();
    assert_eq!(
        doc["Statement"][0]["Principal"]["AWS"],
        format!("arn:aws:iam::{A}:root")
    );
    assert_eq!(
        w.as_owner("ListKeyPolicies", json!({"KeyId": arn}))["PolicyNames"],
        json!(["default"])
    );
    assert_eq!(
        w.e.call(
            w.owner(),
            "GetKeyPolicy",
            json!({"KeyId": arn, "PolicyName": "other"})
        )
        .unwrap_err()
        .aws_type(),
        "NotFoundException"
    );

    // A policy that would lock the caller out is refused...
    let lockout = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": format!("arn:aws:iam::{A}:user/kp")}, "Action": "kms:*", "Resource": "*"}]}).to_string();
    let err =
        w.e.call(
            w.owner(),
            "PutKeyPolicy",
            json!({"KeyId": arn, "Policy": lockout}),
        )
        .unwrap_err();
    assert_eq!(err.aws_type(), "MalformedPolicyDocumentException");
    assert!(
        err.to_string()
            .contains("will not allow you to update the key policy"),
        "{err}"
    );
    let err =
        w.e.call(w.owner(), "CreateKey", json!({"Policy": lockout}))
            .unwrap_err();
    assert_eq!(err.aws_type(), "MalformedPolicyDocumentException");
    // ...unless bypassed; then the owner has indeed lost access and kp has it.
    w.as_owner(
        "PutKeyPolicy",
        json!({"KeyId": arn, "Policy": lockout, "BypassPolicyLockoutSafetyCheck": true}),
    );
    assert_eq!(
        w.e.call(w.owner(), "DescribeKey", json!({"KeyId": arn}))
            .unwrap_err()
            .aws_type(),
        "AccessDeniedException"
    );
    w.e.call(&w.callers["kp"], "DescribeKey", json!({"KeyId": arn}))
        .unwrap();

    // Malformed documents say what is wrong.
    let err = w.e.call(&w.callers["kp"], "PutKeyPolicy", json!({"KeyId": arn, "Policy": r#"{"Statement":[{"Effect":"Permit","Principal":"*","Action":"kms:*","Resource":"*"}]}"#})).unwrap_err();
    assert_eq!(err.aws_type(), "MalformedPolicyDocumentException");
    assert!(err.to_string().contains("Effect"), "{err}");
    assert_eq!(
        w.e.call(
            &w.callers["kp"],
            "PutKeyPolicy",
            json!({"KeyId": arn, "Policy": "x".repeat(40_000)})
        )
        .unwrap_err()
        .aws_type(),
        "MalformedPolicyDocumentException"
    );
}

#[test]
fn explicit_deny_wins_everywhere() {
    let w = world();
    let deny_encrypt = json!({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": format!("arn:aws:iam::{A}:root")}, "Action": "kms:*", "Resource": "*"},
        {"Effect": "Allow", "Principal": {"AWS": format!("arn:aws:iam::{A}:user/kp")}, "Action": "kms:*", "Resource": "*"},
        {"Effect": "Deny", "Principal": {"AWS": format!("arn:aws:iam::{A}:user/kp")}, "Action": "kms:Encrypt", "Resource": "*"}
    ]}).to_string();
    let arn = w.as_owner("CreateKey", json!({"Policy": deny_encrypt}))["KeyMetadata"]["Arn"]
        .as_str()
        .unwrap()
        .to_owned();
    let err =
        w.e.call(
            &w.callers["kp"],
            "Encrypt",
            json!({"KeyId": arn, "Plaintext": b64(b"x")}),
        )
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("explicit deny in a resource-based policy"),
        "{err}"
    );
    w.e.call(
        &w.callers["kp"],
        "GenerateDataKey",
        json!({"KeyId": arn, "KeySpec": "AES_256"}),
    )
    .unwrap();

    // A Deny in an identity policy beats the key policy naming the user.
    let root_a = w.owner().clone();
    with_call(&root_a, |c| w.e.kms.put_user_policy(c, A, "kp", "no-decrypt", r#"{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Action":"kms:GenerateDataKey","Resource":"*"}]}"#)).unwrap();
    let err =
        w.e.call(
            &w.callers["kp"],
            "GenerateDataKey",
            json!({"KeyId": arn, "KeySpec": "AES_256"}),
        )
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("explicit deny in an identity-based policy"),
        "{err}"
    );
    // A grant cannot override a Deny either.
    let g = w.as_owner("CreateGrant", json!({"KeyId": arn, "GranteePrincipal": format!("arn:aws:iam::{A}:user/kp"), "Operations": ["Encrypt"]}));
    assert!(g["GrantId"].is_string());
    assert_eq!(
        w.e.call(
            &w.callers["kp"],
            "Encrypt",
            json!({"KeyId": arn, "Plaintext": b64(b"x")})
        )
        .unwrap_err()
        .aws_type(),
        "AccessDeniedException"
    );
}

#[test]
fn conditions_on_context_via_service_and_caller_account() {
    let w = world();
    // The CMEK pattern: anyone in account A, but only through the disk service.
    let cmek = json!({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": format!("arn:aws:iam::{A}:root")}, "Action": ["kms:Describe*", "kms:Get*", "kms:List*", "kms:PutKeyPolicy"], "Resource": "*"},
        {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": ["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey*", "kms:CreateGrant", "kms:DescribeKey"], "Resource": "*",
         "Condition": {"StringEquals": {"kms:CallerAccount": A, "kms:ViaService": "disk.us-east-1.atrest"}}},
        {"Effect": "Allow", "Principal": {"AWS": format!("arn:aws:iam::{A}:root")}, "Action": "kms:Decrypt", "Resource": "*",
         "Condition": {"StringEquals": {"kms:EncryptionContext:app": "billing"}}}
    ]}).to_string();
    let arn = w.as_owner("CreateKey", json!({"Policy": cmek}))["KeyMetadata"]["Arn"]
        .as_str()
        .unwrap()
        .to_owned();
    // Directly: no.
    let err =
        w.e.call(
            w.owner(),
            "Encrypt",
            json!({"KeyId": arn, "Plaintext": b64(b"x")}),
        )
        .unwrap_err();
    assert_eq!(err.aws_type(), "AccessDeniedException");
    // Through the disk service: yes; through another service: no.
    let disk = w.e.kms.service_session("disk", "us-east-1").unwrap();
    let rds = w.e.kms.service_session("rds", "us-east-1").unwrap();
    let blob = disk
        .call_for(
            w.owner(),
            Operation::Encrypt,
            &json!({"KeyId": arn, "Plaintext": b64(b"x"), "EncryptionContext": {"app": "billing"}}),
        )
        .unwrap()["CiphertextBlob"]
        .clone();
    assert_eq!(
        rds.call_for(
            w.owner(),
            Operation::Encrypt,
            &json!({"KeyId": arn, "Plaintext": b64(b"x")})
        )
        .unwrap_err()
        .aws_type(),
        "AccessDeniedException"
    );
    // Another account through the disk service: CallerAccount does not match.
    assert_eq!(
        disk.call_for(
            &w.callers["x"],
            Operation::Encrypt,
            &json!({"KeyId": arn, "Plaintext": b64(b"x")})
        )
        .unwrap_err()
        .aws_type(),
        "AccessDeniedException"
    );
    // Decrypt directly only with the right context value.
    let d =
        w.e.call(
            w.owner(),
            "Decrypt",
            json!({"CiphertextBlob": blob, "EncryptionContext": {"app": "billing"}}),
        )
        .unwrap();
    assert_eq!(unb64(&d["Plaintext"]), b"x");
    let blob2 = disk
        .call_for(
            w.owner(),
            Operation::Encrypt,
            &json!({"KeyId": arn, "Plaintext": b64(b"x"), "EncryptionContext": {"app": "other"}}),
        )
        .unwrap()["CiphertextBlob"]
        .clone();
    assert_eq!(
        w.e.call(
            w.owner(),
            "Decrypt",
            json!({"CiphertextBlob": blob2, "EncryptionContext": {"app": "other"}})
        )
        .unwrap_err()
        .aws_type(),
        "AccessDeniedException"
    );
}

#[test]
fn suspension_stops_crypto_and_loses_nothing() {
    let w = world();
    let adm = admin(&w.e);
    let arn = w.as_owner("CreateKey", json!({"Policy": policy(true)}))["KeyMetadata"]["Arn"]
        .as_str()
        .unwrap()
        .to_owned();
    let blobs: Vec<Value> = (0..5)
        .map(|i| {
            w.as_owner("Encrypt", json!({"KeyId": arn, "Plaintext": b64(&[i])}))["CiphertextBlob"]
                .clone()
        })
        .collect();
    with_call(&adm, |c| w.e.kms.set_suspended(c, A, true)).unwrap();
    for (op, b) in [
        ("Encrypt", json!({"KeyId": arn, "Plaintext": b64(b"x")})),
        ("Decrypt", json!({"CiphertextBlob": blobs[0]})),
        (
            "GenerateDataKey",
            json!({"KeyId": arn, "KeySpec": "AES_256"}),
        ),
        (
            "GenerateDataKeyWithoutPlaintext",
            json!({"KeyId": arn, "KeySpec": "AES_256"}),
        ),
        (
            "ReEncrypt",
            json!({"CiphertextBlob": blobs[0], "DestinationKeyId": arn}),
        ),
        ("GenerateRandom", json!({"NumberOfBytes": 8})),
        ("CreateKey", json!({})),
    ] {
        let err = w.e.call(w.owner(), op, b).unwrap_err();
        assert_eq!(err.aws_type(), "AccountSuspendedException", "{op}");
        assert!(err.to_string().contains(A), "{err}");
    }
    // For the account too: another account using its key is refused.
    let err =
        w.e.call(
            &w.callers["x"],
            "Encrypt",
            json!({"KeyId": arn, "Plaintext": b64(b"x")}),
        )
        .unwrap_err();
    assert_eq!(err.aws_type(), "AccountSuspendedException");
    // No service key is made for it either.
    let disk = w.e.kms.service_session("disk", "us-east-1").unwrap();
    let err = disk.service_key(&AccountId::parse(A).unwrap()).unwrap_err();
    assert_eq!(err.aws_type(), "AccountSuspendedException");
    // Management reads still work; nothing was lost.
    w.as_owner("DescribeKey", json!({"KeyId": arn}));
    let non_admin = w.owner().clone();
    assert_eq!(
        with_call(&non_admin, |c| w.e.kms.set_suspended(c, A, false))
            .unwrap_err()
            .aws_type(),
        "AccessDeniedException"
    );
    with_call(&adm, |c| w.e.kms.set_suspended(c, A, false)).unwrap();
    for (i, b) in blobs.iter().enumerate() {
        assert_eq!(
            unb64(&w.as_owner("Decrypt", json!({"CiphertextBlob": b}))["Plaintext"]),
            vec![i as u8]
        );
    }
}

/// The key policy of an HMAC matrix key: as [`policy`], account B allowed
/// GenerateMac and VerifyMac when `cross`.
fn mac_policy(cross: bool) -> String {
    let mut statements = vec![
        json!({"Sid": "root", "Effect": "Allow", "Principal": {"AWS": format!("arn:aws:iam::{A}:root")}, "Action": "kms:*", "Resource": "*"}),
        json!({"Sid": "direct", "Effect": "Allow", "Principal": {"AWS": format!("arn:aws:iam::{A}:user/kp")}, "Action": "kms:*", "Resource": "*"}),
    ];
    if cross {
        statements.push(json!({"Sid": "other account", "Effect": "Allow", "Principal": {"AWS": format!("arn:aws:iam::{B}:root")},
            "Action": ["kms:GenerateMac", "kms:VerifyMac", "kms:DescribeKey"], "Resource": "*"}));
    }
    json!({"Version": "2012-10-17", "Statement": statements}).to_string()
}

/// GenerateMac and VerifyMac on an HMAC key (imported, so that every state
/// including PendingImport exists), for every caller and state; the disk
/// service holds a grant for both.
#[test]
fn mac_authorization_matrix() {
    let w = world();
    let material = [0x33u8; 32];
    let tag = atrest_crypto::mac::generate(
        atrest_crypto::mac::MacAlgorithm::HmacSha256,
        &material,
        b"m",
    );
    let mut cells = 0;
    for state in [
        State::Enabled,
        State::Disabled,
        State::PendingDeletion,
        State::PendingImport,
    ] {
        for who in WHO {
            for op in ["GenerateMac", "VerifyMac"] {
                let arn = w.as_owner(
                    "CreateKey",
                    json!({"Policy": mac_policy(who != Who::OtherAccountWithout), "Origin": "EXTERNAL",
                        "KeySpec": "HMAC_256", "KeyUsage": "GENERATE_VERIFY_MAC"}),
                )["KeyMetadata"]["Arn"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                super::byok::import(&w.e, w.owner(), &arn, &material);
                let disk = w.e.kms.service_session("disk", "us-east-1").unwrap();
                disk.grant_for(
                    w.owner(),
                    &arn,
                    &["GenerateMac", "VerifyMac"],
                    &BTreeMap::new(),
                )
                .unwrap();
                match state {
                    State::Enabled => {}
                    State::Disabled => {
                        w.as_owner("DisableKey", json!({"KeyId": arn}));
                    }
                    State::PendingDeletion => {
                        w.as_owner(
                            "ScheduleKeyDeletion",
                            json!({"KeyId": arn, "PendingWindowInDays": 7}),
                        );
                    }
                    State::PendingImport => {
                        w.as_owner("DeleteImportedKeyMaterial", json!({"KeyId": arn}));
                    }
                }
                let allowed = match who {
                    Who::Owner
                    | Who::UserByIdentity
                    | Who::UserByKeyPolicy
                    | Who::OtherAccountWithPolicy
                    | Who::ServiceWithGrant => true,
                    Who::UserWithout | Who::OtherAccountWithout | Who::ServiceWithout => false,
                };
                let expected = if !allowed {
                    Some("AccessDeniedException")
                } else {
                    match state {
                        State::Enabled => None,
                        State::Disabled => Some("DisabledException"),
                        State::PendingDeletion | State::PendingImport => {
                            Some("KMSInvalidStateException")
                        }
                    }
                };
                let result = w.e.call(
                    w.caller(who),
                    op,
                    json!({"KeyId": arn, "MacAlgorithm": "HMAC_SHA_256", "Message": b64(b"m"), "Mac": b64(&tag)}),
                );
                match (expected, &result) {
                    (None, Ok(v)) if op == "GenerateMac" => assert_eq!(unb64(&v["Mac"]), tag),
                    (None, Ok(v)) => assert_eq!(v["MacValid"], true),
                    (Some(want), Err(err)) => {
                        assert_eq!(err.aws_type(), want, "{op} by {who:?} on {state:?}: {err}");
                        assert!(err.to_string().contains(&arn), "names the key: {err}");
                    }
                    _ => panic!(
                        "{op} by {who:?} on {state:?}: expected {expected:?}, got {result:?}"
                    ),
                }
                cells += 1;
            }
        }
    }
    assert_eq!(cells, 4 * 8 * 2);
}

/// The states a multi-Region primary key is put in for the matrix below.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MrkState {
    Enabled,
    Disabled,
    /// Scheduled for deletion: `PendingDeletion` without replicas (the
    /// ReplicateKey cells), `PendingReplicaDeletion` with one (the
    /// UpdatePrimaryRegion cells).
    BeingDeleted,
}

impl World {
    /// A multi-Region primary key in us-east-1 (with a replica in
    /// eu-west-1 when `replica`), in `state`; the disk service holds a
    /// grant for GRANT_OPS on it.
    fn mrk(&self, state: MrkState, cross: bool, replica: bool) -> String {
        let arn = self.as_owner(
            "CreateKey",
            json!({"Policy": policy(cross), "MultiRegion": true}),
        )["KeyMetadata"]["Arn"]
            .as_str()
            .unwrap()
            .to_owned();
        if replica {
            self.as_owner(
                "ReplicateKey",
                json!({"KeyId": arn, "ReplicaRegion": "eu-west-1", "Policy": policy(cross)}),
            );
        }
        let disk = self.e.kms.service_session("disk", "us-east-1").unwrap();
        disk.grant_for(self.owner(), &arn, &GRANT_OPS, &BTreeMap::new())
            .unwrap();
        match state {
            MrkState::Enabled => {}
            MrkState::Disabled => {
                self.as_owner("DisableKey", json!({"KeyId": arn}));
            }
            MrkState::BeingDeleted => {
                let r = self.as_owner(
                    "ScheduleKeyDeletion",
                    json!({"KeyId": arn, "PendingWindowInDays": 7}),
                );
                let want = if replica {
                    "PendingReplicaDeletion"
                } else {
                    "PendingDeletion"
                };
                assert_eq!(r["KeyState"], want);
            }
        }
        arn
    }
}

/// ReplicateKey and UpdatePrimaryRegion, for every kind of caller, on a
/// primary key in every state; each cell asserted. ReplicateKey also needs
/// kms:CreateKey in an identity policy (AWS): a user only the key policy
/// names is denied that.
#[test]
fn multi_region_authorization_matrix() {
    let w = world();
    let mut cells = 0;
    for state in [
        MrkState::Enabled,
        MrkState::Disabled,
        MrkState::BeingDeleted,
    ] {
        for who in WHO {
            for op in ["ReplicateKey", "UpdatePrimaryRegion"] {
                let replicate = op == "ReplicateKey";
                let arn = w.mrk(state, who != Who::OtherAccountWithout, !replicate);
                let body = if replicate {
                    json!({"KeyId": arn, "ReplicaRegion": "eu-west-1"})
                } else {
                    json!({"KeyId": arn, "PrimaryRegion": "eu-west-1"})
                };
                let result = w.e.call(w.caller(who), op, body);
                let (expected, denied_on) = match who {
                    Who::Owner | Who::UserByIdentity => (None, None),
                    Who::UserByKeyPolicy if replicate => (
                        Some("AccessDeniedException"),
                        Some("kms:CreateKey on resource: *"),
                    ),
                    Who::UserByKeyPolicy => (None, None),
                    _ => (Some("AccessDeniedException"), Some(arn.as_str())),
                };
                let expected = expected.or(match state {
                    MrkState::BeingDeleted => Some("KMSInvalidStateException"),
                    MrkState::Enabled | MrkState::Disabled => None,
                });
                match (expected, &result) {
                    (None, Ok(_)) => {}
                    (Some(want), Err(err)) => {
                        assert_eq!(err.aws_type(), want, "{op} by {who:?} on {state:?}: {err}");
                        let msg = err.to_string();
                        if let Some(what) = denied_on {
                            assert!(
                                msg.starts_with(&format!(
                                    "User: {} is not authorized to perform: kms:",
                                    w.caller(who).principal_arn()
                                )),
                                "{msg}"
                            );
                            assert!(msg.contains(what), "{op} by {who:?}: {msg}");
                        } else {
                            assert!(msg.contains(&arn), "names the key: {msg}");
                        }
                    }
                    _ => panic!(
                        "{op} by {who:?} on {state:?}: expected {expected:?}, got {result:?}"
                    ),
                }
                if expected.is_none() {
                    // It happened: the replica exists, or is the primary.
                    let md =
                        w.as_owner("DescribeKey", json!({"KeyId": arn}))["KeyMetadata"].clone();
                    assert_eq!(
                        md["MultiRegionConfiguration"]["MultiRegionKeyType"],
                        if replicate { "PRIMARY" } else { "REPLICA" },
                        "{op} by {who:?} on {state:?}"
                    );
                    assert_eq!(
                        md["MultiRegionConfiguration"]["ReplicaKeys"]
                            .as_array()
                            .unwrap()
                            .len(),
                        1
                    );
                }
                cells += 1;
            }
        }
    }
    assert_eq!(cells, 3 * 8 * 2);
}

/// The asymmetric operations' matrix: every operation of issue 20's
/// asymmetric keys (Sign, Verify, GetPublicKey, DeriveSharedSecret, RSA
/// Encrypt/Decrypt/ReEncrypt, GenerateDataKeyPair*), for every kind of
/// caller, on a key in every state it can be in; each cell asserted.
mod asymmetric_matrix {
    use super::*;

    /// The disk service's grant on each kind of key (AWS's per-kind table).
    fn grant_ops(kind: &str) -> &'static [&'static str] {
        match kind {
            "sign" => &["Sign", "Verify", "GetPublicKey"],
            "agree" => &["DeriveSharedSecret", "GetPublicKey"],
            "rsa" => &[
                "Encrypt",
                "Decrypt",
                "ReEncryptFrom",
                "ReEncryptTo",
                "GetPublicKey",
            ],
            _ => &["GenerateDataKeyPair", "GenerateDataKeyPairWithoutPlaintext"],
        }
    }

    /// (operation, kind of key it runs on).
    const OPS: [(&str, &str); 10] = [
        ("Sign", "sign"),
        ("Verify", "sign"),
        ("GetPublicKey", "sign"),
        ("GetPublicKey", "agree"),
        ("DeriveSharedSecret", "agree"),
        ("Encrypt", "rsa"),
        ("Decrypt", "rsa"),
        ("ReEncrypt", "rsa"),
        ("GenerateDataKeyPair", "sym"),
        ("GenerateDataKeyPairWithoutPlaintext", "sym"),
    ];

    struct Keys {
        arn: BTreeMap<&'static str, String>,
        signature: Value,
        ciphertext: Value,
        peer: Value,
    }

    fn keys(w: &World, state: State) -> Keys {
        let mut arn = BTreeMap::new();
        for (kind, create) in [
            (
                "sign",
                json!({"KeySpec": "ECC_NIST_P256", "KeyUsage": "SIGN_VERIFY"}),
            ),
            (
                "agree",
                json!({"KeySpec": "ECC_NIST_P256", "KeyUsage": "KEY_AGREEMENT"}),
            ),
            (
                "rsa",
                json!({"KeySpec": "RSA_2048", "KeyUsage": "ENCRYPT_DECRYPT"}),
            ),
            ("sym", json!({})),
        ] {
            // AWS has no asymmetric key without material here: only the
            // symmetric key is EXTERNAL in PendingImport.
            if state == State::PendingImport && kind != "sym" {
                continue;
            }
            let mut body = create;
            body["Policy"] = json!(policy(true));
            if state == State::PendingImport {
                body["Origin"] = json!("EXTERNAL");
            }
            let a = w.as_owner("CreateKey", body)["KeyMetadata"]["Arn"]
                .as_str()
                .unwrap()
                .to_owned();
            let disk = w.e.kms.service_session("disk", "us-east-1").unwrap();
            disk.grant_for(w.owner(), &a, grant_ops(kind), &BTreeMap::new())
                .unwrap();
            arn.insert(kind, a);
        }
        let (mut signature, mut ciphertext, mut peer) = (json!(""), json!(""), json!(""));
        if state != State::PendingImport {
            signature = w.as_owner(
                "Sign",
                json!({"KeyId": arn["sign"], "Message": b64(b"m"), "SigningAlgorithm": "ECDSA_SHA_256"}),
            )["Signature"]
                .clone();
            ciphertext = w.as_owner(
                "Encrypt",
                json!({"KeyId": arn["rsa"], "Plaintext": b64(b"p"), "EncryptionAlgorithm": "RSAES_OAEP_SHA_256"}),
            )["CiphertextBlob"]
                .clone();
            peer = w.as_owner("GetPublicKey", json!({"KeyId": arn["agree"]}))["PublicKey"].clone();
        }
        for a in arn.values() {
            match state {
                State::Enabled | State::PendingImport => {}
                State::Disabled => {
                    w.as_owner("DisableKey", json!({"KeyId": a}));
                }
                State::PendingDeletion => {
                    w.as_owner(
                        "ScheduleKeyDeletion",
                        json!({"KeyId": a, "PendingWindowInDays": 7}),
                    );
                }
            }
        }
        Keys {
            arn,
            signature,
            ciphertext,
            peer,
        }
    }

    fn body(op: &str, arn: &str, k: &Keys) -> Value {
        match op {
            "Sign" => {
                json!({"KeyId": arn, "Message": b64(b"m"), "SigningAlgorithm": "ECDSA_SHA_256"})
            }
            "Verify" => {
                json!({"KeyId": arn, "Message": b64(b"m"), "Signature": k.signature, "SigningAlgorithm": "ECDSA_SHA_256"})
            }
            "DeriveSharedSecret" => {
                json!({"KeyId": arn, "KeyAgreementAlgorithm": "ECDH", "PublicKey": k.peer})
            }
            "Encrypt" => {
                json!({"KeyId": arn, "Plaintext": b64(b"q"), "EncryptionAlgorithm": "RSAES_OAEP_SHA_1"})
            }
            "Decrypt" => {
                json!({"KeyId": arn, "CiphertextBlob": k.ciphertext, "EncryptionAlgorithm": "RSAES_OAEP_SHA_256"})
            }
            "ReEncrypt" => json!({
                "CiphertextBlob": k.ciphertext, "SourceKeyId": arn,
                "SourceEncryptionAlgorithm": "RSAES_OAEP_SHA_256",
                "DestinationKeyId": arn, "DestinationEncryptionAlgorithm": "RSAES_OAEP_SHA_256"}),
            "GenerateDataKeyPair" | "GenerateDataKeyPairWithoutPlaintext" => {
                json!({"KeyId": arn, "KeyPairSpec": "ECC_NIST_P256"})
            }
            _ => json!({"KeyId": arn}),
        }
    }

    /// Whether `who` may perform `op`: the cross-account statement allows
    /// `kms:Encrypt`, `kms:Decrypt`, `kms:ReEncrypt*`, `kms:GenerateDataKey*`
    /// (which takes in GenerateDataKeyPair*), DescribeKey and CreateGrant;
    /// the disk service holds the kind's grant.
    fn may(who: Who, op: &str) -> bool {
        match who {
            Who::Owner | Who::UserByIdentity | Who::UserByKeyPolicy => true,
            Who::UserWithout | Who::OtherAccountWithout | Who::ServiceWithout => false,
            Who::OtherAccountWithPolicy => matches!(
                op,
                "Encrypt"
                    | "Decrypt"
                    | "ReEncrypt"
                    | "GenerateDataKeyPair"
                    | "GenerateDataKeyPairWithoutPlaintext"
            ),
            Who::ServiceWithGrant => true,
        }
    }

    fn in_state(state: State) -> Option<&'static str> {
        match state {
            State::Enabled => None,
            State::Disabled => Some("DisabledException"),
            State::PendingDeletion | State::PendingImport => Some("KMSInvalidStateException"),
        }
    }

    #[test]
    fn asymmetric_authorization_and_key_state_matrix() {
        let w = world();
        let mut cells = 0;
        for state in [
            State::Enabled,
            State::Disabled,
            State::PendingDeletion,
            State::PendingImport,
        ] {
            let k = keys(&w, state);
            // The other account without a policy: a key whose policy does
            // not name account B.
            let mut plain = BTreeMap::new();
            for kind in k.arn.keys() {
                let body = match *kind {
                    "sign" => json!({"KeySpec": "ECC_NIST_P256", "KeyUsage": "SIGN_VERIFY"}),
                    "agree" => json!({"KeySpec": "ECC_NIST_P256", "KeyUsage": "KEY_AGREEMENT"}),
                    "rsa" => json!({"KeySpec": "RSA_2048", "KeyUsage": "ENCRYPT_DECRYPT"}),
                    _ => json!({}),
                };
                let mut body = body;
                body["Policy"] = json!(policy(false));
                let arn = w.as_owner("CreateKey", body)["KeyMetadata"]["Arn"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                plain.insert(*kind, arn);
            }
            for who in WHO {
                for (op, kind) in OPS {
                    let Some(key) = (if who == Who::OtherAccountWithout {
                        plain.get(kind)
                    } else {
                        k.arn.get(kind)
                    }) else {
                        continue;
                    };
                    let result = w.e.call(w.caller(who), op, body(op, key, &k));
                    let expected = if may(who, op) {
                        in_state(state)
                    } else {
                        Some("AccessDeniedException")
                    };
                    match (expected, &result) {
                        (None, Ok(v)) => {
                            assert!(
                                v["KeyId"]
                                    .as_str()
                                    .is_some_and(|a| a.starts_with("arn:aws:kms:")),
                                "{op} by {who:?}: {v}"
                            );
                        }
                        (Some(want), Err(err)) => {
                            assert_eq!(
                                err.aws_type(),
                                want,
                                "{op} on {kind} by {who:?} in {state:?}: {err}"
                            );
                            if want == "AccessDeniedException" {
                                assert!(
                                    err.to_string().contains(&format!(
                                        "kms:{}",
                                        if op == "ReEncrypt" {
                                            "ReEncryptFrom"
                                        } else {
                                            op
                                        }
                                    )),
                                    "{err}"
                                );
                                assert!(err.to_string().contains(key.as_str()), "{err}");
                            }
                        }
                        _ => panic!(
                            "{op} on {kind} by {who:?} in {state:?}: expected {expected:?}, got {result:?}"
                        ),
                    }
                    cells += 1;
                }
            }
        }
        // 3 states × 8 callers × 10 cells, and PendingImport's 8 × 2.
        assert_eq!(cells, 3 * 8 * OPS.len() + 8 * 2);
    }

    /// `kms:SigningAlgorithm`, `kms:MessageType`, `kms:EncryptionAlgorithm`,
    /// `kms:KeyAgreementAlgorithm` and `kms:DataKeyPairSpec` are condition
    /// keys of the requests that carry them.
    #[test]
    fn asymmetric_condition_keys() {
        let w = world();
        let kp = &w.callers["kp"];
        let key = |spec: &str, usage: Option<&str>, condition: Value, action: &str| {
            let doc = json!({"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Principal": {"AWS": format!("arn:aws:iam::{A}:root")}, "Action": "kms:*", "Resource": "*"},
                {"Effect": "Allow", "Principal": {"AWS": format!("arn:aws:iam::{A}:user/kp")}, "Action": action, "Resource": "*",
                 "Condition": condition},
            ]});
            let mut body = json!({"KeySpec": spec, "Policy": doc.to_string()});
            if let Some(u) = usage {
                body["KeyUsage"] = json!(u);
            }
            w.as_owner("CreateKey", body)["KeyMetadata"]["Arn"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        let denied = |r: Result<Value, atrest_kms::KmsError>| {
            assert_eq!(r.unwrap_err().aws_type(), "AccessDeniedException");
        };
        let rsa_sign = key(
            "RSA_2048",
            Some("SIGN_VERIFY"),
            json!({"StringEquals": {"kms:SigningAlgorithm": "RSASSA_PSS_SHA_256", "kms:MessageType": "RAW"}}),
            "kms:Sign",
        );
        let sign = |alg: &str, kind: &str, m: &[u8]| {
            w.e.call(
                kp,
                "Sign",
                json!({"KeyId": rsa_sign, "Message": b64(m), "SigningAlgorithm": alg, "MessageType": kind}),
            )
        };
        sign("RSASSA_PSS_SHA_256", "RAW", b"m").unwrap();
        denied(sign("RSASSA_PKCS1_V1_5_SHA_256", "RAW", b"m"));
        denied(sign("RSASSA_PSS_SHA_256", "DIGEST", &[0; 32]));
        // A policy may allow ML-DSA signing of an external mu only.
        let ml = key(
            "ML_DSA_65",
            Some("SIGN_VERIFY"),
            json!({"StringEquals": {"kms:MessageType": "EXTERNAL_MU"}}),
            "kms:Sign",
        );
        let ml_sign = |kind: &str, m: &[u8]| {
            w.e.call(
                kp,
                "Sign",
                json!({"KeyId": ml, "Message": b64(m), "SigningAlgorithm": "ML_DSA_SHAKE_256", "MessageType": kind}),
            )
        };
        ml_sign("EXTERNAL_MU", &[7; 64]).unwrap();
        denied(ml_sign("RAW", b"m"));

        let rsa_enc = key(
            "RSA_2048",
            Some("ENCRYPT_DECRYPT"),
            json!({"StringEquals": {"kms:EncryptionAlgorithm": "RSAES_OAEP_SHA_256"}}),
            "kms:Encrypt",
        );
        let enc = |alg: &str| {
            w.e.call(
                kp,
                "Encrypt",
                json!({"KeyId": rsa_enc, "Plaintext": b64(b"p"), "EncryptionAlgorithm": alg}),
            )
        };
        enc("RSAES_OAEP_SHA_256").unwrap();
        denied(enc("RSAES_OAEP_SHA_1"));

        let agree = key(
            "ECC_NIST_P384",
            Some("KEY_AGREEMENT"),
            json!({"StringEquals": {"kms:KeyAgreementAlgorithm": "ECDH"}}),
            "kms:DeriveSharedSecret",
        );
        let peer = w.as_owner("GetPublicKey", json!({"KeyId": agree}))["PublicKey"].clone();
        w.e.call(
            kp,
            "DeriveSharedSecret",
            json!({"KeyId": agree, "KeyAgreementAlgorithm": "ECDH", "PublicKey": peer}),
        )
        .unwrap();
        let agree_denied = key(
            "ECC_NIST_P384",
            Some("KEY_AGREEMENT"),
            json!({"StringEquals": {"kms:KeyAgreementAlgorithm": "NOT_ECDH"}}),
            "kms:DeriveSharedSecret",
        );
        denied(w.e.call(
            kp,
            "DeriveSharedSecret",
            json!({"KeyId": agree_denied, "KeyAgreementAlgorithm": "ECDH", "PublicKey": peer}),
        ));

        let sym = key(
            "SYMMETRIC_DEFAULT",
            None,
            json!({"StringEquals": {"kms:DataKeyPairSpec": "ECC_NIST_P256"}}),
            "kms:GenerateDataKeyPair*",
        );
        let pair = |spec: &str| {
            w.e.call(
                kp,
                "GenerateDataKeyPairWithoutPlaintext",
                json!({"KeyId": sym, "KeyPairSpec": spec}),
            )
        };
        pair("ECC_NIST_P256").unwrap();
        denied(pair("ECC_NIST_P384"));
    }
}
