//! Policy documents through the public interface: parsing and validation,
//! the key policy examples of the AWS KMS Developer Guide, and properties
//! of evaluation.

use atrest_policy::{
    Context, Evaluation, PolicyDocument, PolicyError, PolicyKind, Principal, PrincipalKind, Request,
};
use proptest::prelude::*;

const ACCOUNT: &str = "111122223333";
const OTHER: &str = "444455556666";
const KEY: &str = "arn:aws:kms:us-west-2:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";

const NONE: Evaluation = Evaluation {
    denied: false,
    allowed_directly: false,
    allowed_via_account: false,
};
const DIRECT: Evaluation = Evaluation {
    denied: false,
    allowed_directly: true,
    allowed_via_account: false,
};
const VIA_ACCOUNT: Evaluation = Evaluation {
    denied: false,
    allowed_directly: false,
    allowed_via_account: true,
};
const DENIED: Evaluation = Evaluation {
    denied: true,
    allowed_directly: false,
    allowed_via_account: false,
};

fn root(account: &str) -> Principal {
    Principal {
        account: account.into(),
        kind: PrincipalKind::Root,
    }
}

fn user(account: &str, name: &str) -> Principal {
    Principal {
        account: account.into(),
        kind: PrincipalKind::User(name.into()),
    }
}

fn role(account: &str, name: &str) -> Principal {
    Principal {
        account: account.into(),
        kind: PrincipalKind::Role(name.into()),
    }
}

fn service(account: &str, name: &str) -> Principal {
    Principal {
        account: account.into(),
        kind: PrincipalKind::Service(name.into()),
    }
}

/// A context from (key, values) pairs.
fn ctx(pairs: &[(&str, &[&str])]) -> Context {
    let mut c = Context::new();
    for (k, vs) in pairs {
        c.set_many(k, vs.iter().map(|v| (*v).to_owned()).collect());
    }
    c
}

/// A key policy from statements.
fn key_policy(statements: &str) -> PolicyDocument {
    let text = format!(r#"{{"Version": "2012-10-17", "Statement": [{statements}]}}"#);
    match PolicyDocument::parse(&text, PolicyKind::Resource) {
        Ok(doc) => doc,
        Err(e) => panic!("{e}\n{text}"),
    }
}

/// An identity policy from statements.
fn identity_policy(statements: &str) -> PolicyDocument {
    let text = format!(r#"{{"Version": "2012-10-17", "Statement": [{statements}]}}"#);
    match PolicyDocument::parse(&text, PolicyKind::Identity) {
        Ok(doc) => doc,
        Err(e) => panic!("{e}\n{text}"),
    }
}

fn eval(doc: &PolicyDocument, who: &Principal, action: &str, context: &Context) -> Evaluation {
    eval_on(doc, who, action, KEY, context)
}

fn eval_on(
    doc: &PolicyDocument,
    who: &Principal,
    action: &str,
    resource: &str,
    context: &Context,
) -> Evaluation {
    doc.evaluate(&Request {
        principal: who,
        action,
        resource,
        context,
    })
}

fn error(text: &str, kind: PolicyKind) -> String {
    match PolicyDocument::parse(text, kind) {
        Ok(_) => panic!("parsed, but should not have:\n{text}"),
        Err(PolicyError(msg)) => msg,
    }
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

/// A statement with `extra` members added to a valid key policy statement.
fn resource_doc(statement_members: &str) -> String {
    format!(r#"{{"Version": "2012-10-17", "Statement": [{{{statement_members}}}]}}"#)
}

const OK_MEMBERS: &str = r#""Effect": "Allow", "Principal": {"AWS": "111122223333"}, "Action": "kms:*", "Resource": "*""#;

#[test]
fn valid_documents_of_both_kinds_parse() {
    let resource = r#"{
        "Version": "2012-10-17",
        "Id": "key-default-1",
        "Statement": [
            {"Sid": "Enable IAM policies", "Effect": "Allow",
             "Principal": {"AWS": "arn:aws:iam::111122223333:root"}, "Action": "kms:*", "Resource": "*"},
            {"Sid": "Deny others", "Effect": "Deny",
             "NotPrincipal": {"AWS": ["arn:aws:iam::111122223333:role/Admin", "111122223333"]},
             "NotAction": ["kms:Describe*"], "NotResource": "arn:aws:kms:*:111122223333:key/public",
             "Condition": {"Bool": {"aws:SecureTransport": false}}},
            {"Effect": "Allow", "Principal": {"Service": ["disk.atrest", "pg.atrest"]},
             "Action": ["kms:Decrypt", "kms:GenerateDataKey*"], "Resource": ["*"]},
            {"Effect": "Allow", "Principal": "*", "Action": "*", "Resource": "*",
             "Condition": {"StringEquals": {"kms:CallerAccount": "111122223333"}}}
        ]
    }"#;
    let doc = PolicyDocument::parse(resource, PolicyKind::Resource).unwrap();
    assert_eq!(doc.kind(), PolicyKind::Resource);

    let identity = r#"{"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["kms:Encrypt", "kms:Decrypt"],
         "Resource": "arn:aws:kms:*:111122223333:key/*"},
        {"Effect": "Deny", "NotAction": "kms:Describe*", "Resource": "*",
         "Condition": {"NumericGreaterThan": {"kms:ValidTo": 1546257599}}}
    ]}"#;
    let doc = PolicyDocument::parse(identity, PolicyKind::Identity).unwrap();
    assert_eq!(doc.kind(), PolicyKind::Identity);

    // Version is optional, and 2008-10-17 is accepted.
    for version in ["", r#""Version": "2008-10-17","#] {
        let text = format!(r#"{{{version} "Statement": {{{OK_MEMBERS}}}}}"#);
        PolicyDocument::parse(&text, PolicyKind::Resource).unwrap();
    }
}

#[test]
fn a_single_statement_object_works_like_a_one_element_array() {
    let single = format!(r#"{{"Version": "2012-10-17", "Statement": {{{OK_MEMBERS}}}}}"#);
    let array = format!(r#"{{"Version": "2012-10-17", "Statement": [{{{OK_MEMBERS}}}]}}"#);
    let single = PolicyDocument::parse(&single, PolicyKind::Resource).unwrap();
    let array = PolicyDocument::parse(&array, PolicyKind::Resource).unwrap();
    assert_eq!(single, array);
    let c = Context::new();
    for who in [root(ACCOUNT), user(ACCOUNT, "u"), root(OTHER)] {
        assert_eq!(
            eval(&single, &who, "kms:Encrypt", &c),
            eval(&array, &who, "kms:Encrypt", &c)
        );
    }
    // Errors in a single statement are reported as Statement[0].
    let bad =
        r#"{"Statement": {"Effect": "Permit", "Principal": "*", "Action": "*", "Resource": "*"}}"#;
    assert_eq!(
        error(bad, PolicyKind::Resource),
        r#"Statement[0]: "Effect" must be "Allow" or "Deny", got "Permit""#
    );
}

#[test]
fn malformed_documents() {
    use PolicyKind::{Identity, Resource};
    let big = format!(
        r#"{{"Statement": {{{OK_MEMBERS}}}, "Id": "{}"}}"#,
        "x".repeat(40_000)
    );
    let cases: Vec<(String, PolicyKind, &str)> = vec![
        // Document level.
        ("not json".into(), Resource, "policy is not valid JSON: "),
        ("".into(), Resource, "policy is not valid JSON: "),
        (
            r#"["Statement"]"#.into(),
            Resource,
            "policy must be a JSON object, got an array",
        ),
        (
            "42".into(),
            Identity,
            "policy must be a JSON object, got a number",
        ),
        (
            r#"{"Version": "2012-10-17"}"#.into(),
            Resource,
            "Statement: missing",
        ),
        (
            r#"{"Statement": []}"#.into(),
            Resource,
            "Statement: must list at least one statement",
        ),
        (
            r#"{"Statement": "x"}"#.into(),
            Resource,
            "Statement: must be an object or an array of objects, got a string",
        ),
        (
            r#"{"Statement": ["x"]}"#.into(),
            Resource,
            "Statement[0]: must be an object, got a string",
        ),
        (
            format!(r#"{{"Version": "2010-01-01", "Statement": {{{OK_MEMBERS}}}}}"#),
            Resource,
            r#"Version: must be "2012-10-17" or "2008-10-17", got "2010-01-01""#,
        ),
        (
            format!(r#"{{"Version": 2012, "Statement": {{{OK_MEMBERS}}}}}"#),
            Resource,
            r#"Version: must be "2012-10-17" or "2008-10-17", got a number"#,
        ),
        (
            format!(r#"{{"Id": 7, "Statement": {{{OK_MEMBERS}}}}}"#),
            Resource,
            "Id: must be a string, got a number",
        ),
        (
            format!(r#"{{"Statement": {{{OK_MEMBERS}}}, "Extra": 1}}"#),
            Resource,
            r#"policy: unknown member "Extra"; expected one of "Version", "Id", "Statement""#,
        ),
        (
            format!(r#"{{"Statement": {{{OK_MEMBERS}}}, "Statement": {{{OK_MEMBERS}}}}}"#),
            Resource,
            r#"policy: duplicate member "Statement""#,
        ),
        (big, Resource, "policy is 40"),
        // Statement members.
        (
            resource_doc(r#""Effect": "Permit", "Principal": "*", "Action": "*", "Resource": "*""#),
            Resource,
            r#"Statement[0]: "Effect" must be "Allow" or "Deny", got "Permit""#,
        ),
        (
            resource_doc(r#""Effect": "allow", "Principal": "*", "Action": "*", "Resource": "*""#),
            Resource,
            r#"Statement[0]: "Effect" must be "Allow" or "Deny", got "allow""#,
        ),
        (
            resource_doc(r#""Effect": true, "Principal": "*", "Action": "*", "Resource": "*""#),
            Resource,
            r#"Statement[0]: "Effect" must be "Allow" or "Deny", got a boolean"#,
        ),
        (
            resource_doc(r#""Principal": "*", "Action": "*", "Resource": "*""#),
            Resource,
            r#"Statement[0]: missing "Effect""#,
        ),
        (
            resource_doc(&format!(r#"{OK_MEMBERS}, "Effect": "Deny""#)),
            Resource,
            r#"Statement[0]: duplicate member "Effect""#,
        ),
        (
            resource_doc(&format!(r#"{OK_MEMBERS}, "Actions": "kms:*""#)),
            Resource,
            r#"Statement[0]: unknown member "Actions""#,
        ),
        (
            resource_doc(&format!(r#"{OK_MEMBERS}, "Sid": 5"#)),
            Resource,
            "Statement[0].Sid: must be a string, got a number",
        ),
        (
            format!(
                r#"{{"Statement": [{{"Sid": "A", {OK_MEMBERS}}}, {{"Sid": "B", {OK_MEMBERS}}}, {{"Sid": "A", {OK_MEMBERS}}}]}}"#
            ),
            Resource,
            r#"Statement[2].Sid: "A" is also the Sid of Statement[0]; Sids must be unique"#,
        ),
        // Principal.
        (
            resource_doc(r#""Effect": "Allow", "Action": "*", "Resource": "*""#),
            Resource,
            r#"Statement[0]: missing "Principal" or "NotPrincipal""#,
        ),
        (
            resource_doc(
                r#""Effect": "Allow", "Principal": "*", "NotPrincipal": "*", "Action": "*", "Resource": "*""#,
            ),
            Resource,
            r#"Statement[0]: has both "Principal" and "NotPrincipal"; use one"#,
        ),
        (
            resource_doc(r#""Effect": "Allow", "Principal": "*", "Action": "*", "Resource": "*""#),
            Identity,
            r#"Statement[0]: "Principal" is not allowed in an identity policy"#,
        ),
        (
            resource_doc(
                r#""Effect": "Allow", "NotPrincipal": "*", "Action": "*", "Resource": "*""#,
            ),
            Identity,
            r#"Statement[0]: "NotPrincipal" is not allowed in an identity policy"#,
        ),
        (
            format!(
                r#"{{"Statement": [{{{OK_MEMBERS}}}, {{{OK_MEMBERS}}}, {{"Effect": "Allow", "Principal": {{"AWS": "arn:aws:iam::12:root"}}, "Action": "*", "Resource": "*"}}]}}"#
            ),
            Resource,
            r#"Statement[2].Principal.AWS: "arn:aws:iam::12:root" is not a valid principal"#,
        ),
        (
            resource_doc(
                r#""Effect": "Allow", "Principal": {"AWS": ["111122223333", "arn:aws:iam::111122223333:group/G"]}, "Action": "*", "Resource": "*""#,
            ),
            Resource,
            r#"Statement[0].Principal.AWS: "arn:aws:iam::111122223333:group/G" is not a valid principal"#,
        ),
        (
            resource_doc(
                r#""Effect": "Allow", "Principal": {"Robot": "r2"}, "Action": "*", "Resource": "*""#,
            ),
            Resource,
            r#"Statement[0].Principal: unknown principal type "Robot"; use "AWS" or "Service""#,
        ),
        (
            resource_doc(
                r#""Effect": "Deny", "NotPrincipal": {"Service": "*"}, "Action": "*", "Resource": "*""#,
            ),
            Resource,
            r#"Statement[0].NotPrincipal.Service: "*" is not a valid principal"#,
        ),
        (
            resource_doc(
                r#""Effect": "Allow", "Principal": ["*"], "Action": "*", "Resource": "*""#,
            ),
            Resource,
            r#"Statement[0].Principal: must be "*" or an object, got an array"#,
        ),
        // Action.
        (
            resource_doc(r#""Effect": "Allow", "Principal": "*", "Resource": "*""#),
            Resource,
            r#"Statement[0]: missing "Action" or "NotAction""#,
        ),
        (
            resource_doc(
                r#""Effect": "Allow", "Principal": "*", "Action": "*", "NotAction": "kms:Encrypt", "Resource": "*""#,
            ),
            Resource,
            r#"Statement[0]: has both "Action" and "NotAction"; use one"#,
        ),
        (
            resource_doc(
                r#""Effect": "Allow", "Principal": "*", "Action": ["kms:Encrypt", "Decrypt"], "Resource": "*""#,
            ),
            Resource,
            r#"Statement[0].Action[1]: "Decrypt" is not a valid action; expected "*" or "service:action", such as "kms:Encrypt""#,
        ),
        (
            resource_doc(
                r#""Effect": "Allow", "Principal": "*", "NotAction": "Decrypt", "Resource": "*""#,
            ),
            Resource,
            r#"Statement[0].NotAction: "Decrypt" is not a valid action"#,
        ),
        (
            resource_doc(r#""Effect": "Allow", "Principal": "*", "Action": [], "Resource": "*""#),
            Resource,
            "Statement[0].Action: must list at least one value",
        ),
        (
            resource_doc(
                r#""Effect": "Allow", "Principal": "*", "Action": {"kms": "*"}, "Resource": "*""#,
            ),
            Resource,
            "Statement[0].Action: must be a string or an array of strings, got an object",
        ),
        (
            resource_doc(
                r#""Effect": "Allow", "Principal": "*", "Action": ["kms:*", 3], "Resource": "*""#,
            ),
            Resource,
            "Statement[0].Action[1]: must be a string, got a number",
        ),
        // Resource.
        (
            resource_doc(r#""Effect": "Allow", "Principal": "*", "Action": "*""#),
            Resource,
            r#"Statement[0]: missing "Resource" or "NotResource""#,
        ),
        (
            resource_doc(r#""Effect": "Allow", "Action": "*""#),
            Identity,
            r#"Statement[0]: missing "Resource" or "NotResource""#,
        ),
        (
            resource_doc(
                r#""Effect": "Allow", "Principal": "*", "Action": "*", "Resource": "*", "NotResource": "*""#,
            ),
            Resource,
            r#"Statement[0]: has both "Resource" and "NotResource"; use one"#,
        ),
        (
            resource_doc(
                r#""Effect": "Allow", "Principal": "*", "Action": "*", "Resource": ["*", "my-key"]"#,
            ),
            Resource,
            r#"Statement[0].Resource[1]: "my-key" is not a valid resource"#,
        ),
        // Condition.
        (
            resource_doc(&format!(
                r#"{OK_MEMBERS}, "Condition": {{"StringEqualz": {{"k": "v"}}}}"#
            )),
            Resource,
            r#"Statement[0].Condition: unknown operator "StringEqualz""#,
        ),
        (
            resource_doc(&format!(
                r#"{OK_MEMBERS}, "Condition": {{"StringEquals": {{"kms:CallerAccount": {{"a": 1}}}}}}"#
            )),
            Resource,
            "Statement[0].Condition.StringEquals.kms:CallerAccount: a condition value must be a string, number or boolean, got an object",
        ),
        (
            resource_doc(&format!(
                r#"{OK_MEMBERS}, "Condition": {{"StringEquals": ["k"]}}"#
            )),
            Resource,
            "Statement[0].Condition.StringEquals: must be an object of condition keys, got an array",
        ),
        (
            resource_doc(&format!(r#"{OK_MEMBERS}, "Condition": "StringEquals""#)),
            Resource,
            "Statement[0].Condition: must be an object of condition operators, got a string",
        ),
        (
            resource_doc(&format!(
                r#"{OK_MEMBERS}, "Condition": {{"ForAllValues:Null": {{"k": true}}}}"#
            )),
            Resource,
            r#"Statement[0].Condition: operator "ForAllValues:Null": Null does not take ForAnyValue: or ForAllValues:"#,
        ),
        (
            resource_doc(&format!(
                r#"{OK_MEMBERS}, "Condition": {{"Null": {{"k": "sometimes"}}}}"#
            )),
            Resource,
            r#"Statement[0].Condition.Null.k: "sometimes" is not true or false"#,
        ),
    ];
    for (text, kind, expected) in cases {
        let msg = error(&text, kind);
        assert!(
            msg.starts_with(expected),
            "expected a message starting with\n  {expected}\ngot\n  {msg}\nfor\n  {}",
            &text[..text.len().min(300)]
        );
    }
}

#[test]
fn size_limit() {
    let pad = |n: usize| {
        let base = format!(r#"{{"Statement": {{{OK_MEMBERS}}}, "Id": ""}}"#);
        format!(
            r#"{{"Statement": {{{OK_MEMBERS}}}, "Id": "{}"}}"#,
            "x".repeat(n - base.len())
        )
    };
    let at_limit = pad(PolicyDocument::MAX_LEN);
    assert_eq!(at_limit.len(), PolicyDocument::MAX_LEN);
    PolicyDocument::parse(&at_limit, PolicyKind::Resource).unwrap();
    let over = pad(PolicyDocument::MAX_LEN + 1);
    assert_eq!(
        error(&over, PolicyKind::Resource),
        "policy is 32769 bytes; the limit is 32768"
    );
}

// ---------------------------------------------------------------------------
// The AWS KMS Developer Guide's key policy examples
// ---------------------------------------------------------------------------

/// Default key policy: "Allows access to the AWS account and enables IAM
/// policies" (the whole default policy of keys created through the API).
const ENABLE_IAM_POLICIES: &str = r#"{
    "Sid": "Enable IAM policies",
    "Effect": "Allow",
    "Principal": {"AWS": "arn:aws:iam::111122223333:root"},
    "Action": "kms:*",
    "Resource": "*"
}"#;

/// Default key policy: "Allow access for Key Administrators".
const KEY_ADMINISTRATORS: &str = r#"{
    "Sid": "Allow access for Key Administrators",
    "Effect": "Allow",
    "Principal": {"AWS": [
        "arn:aws:iam::111122223333:user/KMSAdminUser",
        "arn:aws:iam::111122223333:role/KMSAdminRole"
    ]},
    "Action": [
        "kms:Create*", "kms:Describe*", "kms:Enable*", "kms:List*", "kms:Put*",
        "kms:Update*", "kms:Revoke*", "kms:Disable*", "kms:Get*", "kms:Delete*",
        "kms:TagResource", "kms:UntagResource", "kms:ScheduleKeyDeletion", "kms:CancelKeyDeletion"
    ],
    "Resource": "*"
}"#;

/// Default key policy: "Allow use of the key", with an external account.
const KEY_USERS: &str = r#"{
    "Sid": "Allow use of the key",
    "Effect": "Allow",
    "Principal": {"AWS": [
        "arn:aws:iam::111122223333:user/ExampleUser",
        "arn:aws:iam::111122223333:role/ExampleRole",
        "arn:aws:iam::444455556666:root"
    ]},
    "Action": ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey"],
    "Resource": "*"
}"#;

/// Default key policy: "Allow attachment of persistent resources".
const PERSISTENT_RESOURCES: &str = r#"{
    "Sid": "Allow attachment of persistent resources",
    "Effect": "Allow",
    "Principal": {"AWS": [
        "arn:aws:iam::111122223333:user/ExampleUser",
        "arn:aws:iam::111122223333:role/ExampleRole",
        "arn:aws:iam::444455556666:root"
    ]},
    "Action": ["kms:CreateGrant", "kms:ListGrants", "kms:RevokeGrant"],
    "Resource": "*",
    "Condition": {"Bool": {"kms:GrantIsForAWSResource": true}}
}"#;

#[test]
fn default_key_policy_enable_iam_policies() {
    let doc = key_policy(ENABLE_IAM_POLICIES);
    let c = Context::new();
    // The account's root is the listed principal itself.
    assert_eq!(eval(&doc, &root(ACCOUNT), "kms:PutKeyPolicy", &c), DIRECT);
    // Users and roles of the account are allowed only through the account:
    // an IAM policy must allow them too.
    assert_eq!(
        eval(&doc, &user(ACCOUNT, "Alice"), "kms:Encrypt", &c),
        VIA_ACCOUNT
    );
    assert_eq!(
        eval(&doc, &role(ACCOUNT, "Ops"), "kms:ScheduleKeyDeletion", &c),
        VIA_ACCOUNT
    );
    // Another account, and a non-KMS action, are not matched.
    assert_eq!(eval(&doc, &root(OTHER), "kms:Encrypt", &c), NONE);
    assert_eq!(eval(&doc, &user(OTHER, "Alice"), "kms:Encrypt", &c), NONE);
    assert_eq!(eval(&doc, &root(ACCOUNT), "s3:GetObject", &c), NONE);
}

#[test]
fn default_key_policy_allows_access_for_key_administrators() {
    let doc = key_policy(KEY_ADMINISTRATORS);
    let admin = user(ACCOUNT, "KMSAdminUser");
    let admin_role = role(ACCOUNT, "KMSAdminRole");
    let c = Context::new();
    for action in [
        "kms:CreateAlias",
        "kms:CreateGrant",
        "kms:DescribeKey",
        "kms:EnableKeyRotation",
        "kms:ListGrants",
        "kms:PutKeyPolicy",
        "kms:UpdateKeyDescription",
        "kms:RevokeGrant",
        "kms:DisableKey",
        "kms:GetKeyPolicy",
        "kms:DeleteAlias",
        "kms:TagResource",
        "kms:ScheduleKeyDeletion",
        "kms:CancelKeyDeletion",
        // Actions match case-insensitively.
        "KMS:describekey",
    ] {
        assert_eq!(eval(&doc, &admin, action, &c), DIRECT, "{action}");
        assert_eq!(eval(&doc, &admin_role, action, &c), DIRECT, "{action}");
    }
    // Administrators cannot use the key.
    for action in [
        "kms:Encrypt",
        "kms:Decrypt",
        "kms:GenerateDataKey",
        "kms:ReEncryptFrom",
    ] {
        assert_eq!(eval(&doc, &admin, action, &c), NONE, "{action}");
    }
    // Others are not administrators: a user named like the role, the root.
    assert_eq!(
        eval(&doc, &user(ACCOUNT, "KMSAdminRole"), "kms:DescribeKey", &c),
        NONE
    );
    assert_eq!(eval(&doc, &root(ACCOUNT), "kms:DescribeKey", &c), NONE);
    assert_eq!(
        eval(&doc, &user(OTHER, "KMSAdminUser"), "kms:DescribeKey", &c),
        NONE
    );
}

#[test]
fn default_key_policy_allow_use_of_the_key() {
    let doc = key_policy(KEY_USERS);
    let c = Context::new();
    let example_user = user(ACCOUNT, "ExampleUser");
    for action in [
        "kms:Encrypt",
        "kms:Decrypt",
        "kms:ReEncryptFrom",
        "kms:ReEncryptTo",
        "kms:GenerateDataKey",
        "kms:GenerateDataKeyWithoutPlaintext",
        "kms:GenerateDataKeyPair",
        "kms:DescribeKey",
    ] {
        assert_eq!(eval(&doc, &example_user, action, &c), DIRECT, "{action}");
    }
    assert_eq!(
        eval(&doc, &role(ACCOUNT, "ExampleRole"), "kms:Decrypt", &c),
        DIRECT
    );
    // Key users cannot manage the key.
    assert_eq!(
        eval(&doc, &example_user, "kms:ScheduleKeyDeletion", &c),
        NONE
    );
    assert_eq!(eval(&doc, &example_user, "kms:CreateGrant", &c), NONE);
    // The external account: its root directly, its users via the account.
    assert_eq!(eval(&doc, &root(OTHER), "kms:Encrypt", &c), DIRECT);
    assert_eq!(
        eval(&doc, &user(OTHER, "Carol"), "kms:Encrypt", &c),
        VIA_ACCOUNT
    );
    // The key's own account is not listed.
    assert_eq!(
        eval(&doc, &user(ACCOUNT, "Mallory"), "kms:Encrypt", &c),
        NONE
    );
    assert_eq!(eval(&doc, &root(ACCOUNT), "kms:Encrypt", &c), NONE);
}

#[test]
fn default_key_policy_allow_attachment_of_persistent_resources() {
    let doc = key_policy(PERSISTENT_RESOURCES);
    let example_user = user(ACCOUNT, "ExampleUser");
    let for_resource = ctx(&[("kms:GrantIsForAWSResource", &["true"])]);
    let direct_call = ctx(&[("kms:GrantIsForAWSResource", &["false"])]);
    for action in ["kms:CreateGrant", "kms:ListGrants", "kms:RevokeGrant"] {
        assert_eq!(
            eval(&doc, &example_user, action, &for_resource),
            DIRECT,
            "{action}"
        );
        // The user calling the grant operations directly is not allowed.
        assert_eq!(
            eval(&doc, &example_user, action, &direct_call),
            NONE,
            "{action}"
        );
        assert_eq!(
            eval(&doc, &example_user, action, &Context::new()),
            NONE,
            "{action}"
        );
    }
    assert_eq!(
        eval(
            &doc,
            &user(OTHER, "Carol"),
            "kms:CreateGrant",
            &for_resource
        ),
        VIA_ACCOUNT
    );
    assert_eq!(
        eval(&doc, &example_user, "kms:Encrypt", &for_resource),
        NONE
    );
}

#[test]
fn default_console_key_policy_combined() {
    let doc = key_policy(
        &[
            ENABLE_IAM_POLICIES,
            KEY_ADMINISTRATORS,
            KEY_USERS,
            PERSISTENT_RESOURCES,
        ]
        .join(","),
    );
    let c = Context::new();
    // An administrator uses the key only if an IAM policy allows it.
    assert_eq!(
        eval(&doc, &user(ACCOUNT, "KMSAdminUser"), "kms:Encrypt", &c),
        VIA_ACCOUNT
    );
    assert_eq!(
        eval(&doc, &user(ACCOUNT, "KMSAdminUser"), "kms:DisableKey", &c),
        Evaluation {
            denied: false,
            allowed_directly: true,
            allowed_via_account: true
        }
    );
    assert!(eval(&doc, &user(ACCOUNT, "ExampleUser"), "kms:Decrypt", &c).allowed_directly);
    assert_eq!(eval(&doc, &root(ACCOUNT), "kms:Decrypt", &c), DIRECT);
    assert_eq!(eval(&doc, &root("999999999999"), "kms:Decrypt", &c), NONE);
}

/// kms:CallerAccount: "Allow access through EBS for all principals in the
/// account that are authorized to use EBS" (the AWS managed key for EBS).
#[test]
fn caller_account_and_via_service_for_ebs() {
    let doc = key_policy(
        r#"{
        "Sid": "Allow access through EBS for all principals in the account that are authorized to use EBS",
        "Effect": "Allow",
        "Principal": {"AWS": "*"},
        "Condition": {"StringEquals": {
            "kms:CallerAccount": "111122223333",
            "kms:ViaService": "ec2.us-west-2.amazonaws.com"
        }},
        "Action": ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:CreateGrant", "kms:DescribeKey"],
        "Resource": "*"
    }"#,
    );
    let via_ebs = ctx(&[
        ("kms:CallerAccount", &[ACCOUNT]),
        ("kms:ViaService", &["ec2.us-west-2.amazonaws.com"]),
    ]);
    let via_rds = ctx(&[
        ("kms:CallerAccount", &[ACCOUNT]),
        ("kms:ViaService", &["rds.us-west-2.amazonaws.com"]),
    ]);
    let direct = ctx(&[("kms:CallerAccount", &[ACCOUNT])]);
    let other_account = ctx(&[
        ("kms:CallerAccount", &[OTHER]),
        ("kms:ViaService", &["ec2.us-west-2.amazonaws.com"]),
    ]);
    let alice = user(ACCOUNT, "Alice");
    // `"AWS": "*"` names the caller itself.
    assert_eq!(eval(&doc, &alice, "kms:CreateGrant", &via_ebs), DIRECT);
    assert_eq!(
        eval(
            &doc,
            &alice,
            "kms:GenerateDataKeyWithoutPlaintext",
            &via_ebs
        ),
        DIRECT
    );
    assert_eq!(eval(&doc, &alice, "kms:Decrypt", &via_rds), NONE);
    assert_eq!(eval(&doc, &alice, "kms:Decrypt", &direct), NONE);
    assert_eq!(
        eval(&doc, &user(OTHER, "Bob"), "kms:Decrypt", &other_account),
        NONE
    );
    assert_eq!(
        eval(&doc, &alice, "kms:ScheduleKeyDeletion", &via_ebs),
        NONE
    );
}

/// kms:ViaService: allow use only through EC2 or RDS; deny Encrypt through
/// Lambda.
#[test]
fn via_service_allow_ec2_and_rds_deny_lambda() {
    let doc = key_policy(
        r#"{
        "Effect": "Allow",
        "Principal": {"AWS": "arn:aws:iam::111122223333:user/ExampleUser"},
        "Action": ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*",
                   "kms:CreateGrant", "kms:ListGrants", "kms:DescribeKey"],
        "Resource": "*",
        "Condition": {"StringEquals": {"kms:ViaService": ["ec2.us-west-2.amazonaws.com", "rds.us-west-2.amazonaws.com"]}}
    }, {
        "Effect": "Deny",
        "Principal": {"AWS": "arn:aws:iam::111122223333:user/ExampleUser"},
        "Action": ["kms:Encrypt"],
        "Resource": "*",
        "Condition": {"StringEquals": {"kms:ViaService": ["lambda.us-west-2.amazonaws.com"]}}
    }"#,
    );
    let example_user = user(ACCOUNT, "ExampleUser");
    let via = |svc: &str| ctx(&[("kms:ViaService", &[svc])]);
    assert_eq!(
        eval(
            &doc,
            &example_user,
            "kms:Encrypt",
            &via("ec2.us-west-2.amazonaws.com")
        ),
        DIRECT
    );
    assert_eq!(
        eval(
            &doc,
            &example_user,
            "kms:Decrypt",
            &via("rds.us-west-2.amazonaws.com")
        ),
        DIRECT
    );
    assert_eq!(
        eval(
            &doc,
            &example_user,
            "kms:Encrypt",
            &via("lambda.us-west-2.amazonaws.com")
        ),
        DENIED
    );
    assert_eq!(
        eval(
            &doc,
            &example_user,
            "kms:Decrypt",
            &via("lambda.us-west-2.amazonaws.com")
        ),
        NONE
    );
    assert_eq!(
        eval(&doc, &example_user, "kms:Encrypt", &Context::new()),
        NONE
    );
    assert_eq!(
        eval(
            &doc,
            &user(ACCOUNT, "Other"),
            "kms:Encrypt",
            &via("lambda.us-west-2.amazonaws.com")
        ),
        NONE
    );
}

/// kms:EncryptionContext:context-key: require `AppName=ExampleApp`; other
/// pairs are permitted; the key name is case-insensitive, the value is not.
#[test]
fn encryption_context_require_a_pair() {
    let doc = key_policy(
        r#"{
        "Effect": "Allow",
        "Principal": {"AWS": "arn:aws:iam::111122223333:role/RoleForExampleApp"},
        "Action": "kms:GenerateDataKey",
        "Resource": "*",
        "Condition": {"StringEquals": {"kms:EncryptionContext:AppName": "ExampleApp"}}
    }"#,
    );
    let app = role(ACCOUNT, "RoleForExampleApp");
    let with = |pairs: &[(&str, &str)]| {
        let mut c = Context::new();
        for (k, v) in pairs {
            c.set(&format!("kms:EncryptionContext:{k}"), *v);
        }
        c.set_many(
            "kms:EncryptionContextKeys",
            pairs.iter().map(|(k, _)| (*k).to_owned()).collect(),
        );
        c
    };
    assert_eq!(
        eval(
            &doc,
            &app,
            "kms:GenerateDataKey",
            &with(&[("AppName", "ExampleApp")])
        ),
        DIRECT
    );
    assert_eq!(
        eval(
            &doc,
            &app,
            "kms:GenerateDataKey",
            &with(&[("AppName", "ExampleApp"), ("Project", "Alpha")])
        ),
        DIRECT
    );
    // The context key's case does not matter ...
    assert_eq!(
        eval(
            &doc,
            &app,
            "kms:GenerateDataKey",
            &with(&[("appname", "ExampleApp")])
        ),
        DIRECT
    );
    // ... the value's does.
    assert_eq!(
        eval(
            &doc,
            &app,
            "kms:GenerateDataKey",
            &with(&[("AppName", "exampleapp")])
        ),
        NONE
    );
    assert_eq!(eval(&doc, &app, "kms:GenerateDataKey", &with(&[])), NONE);
    assert_eq!(
        eval(
            &doc,
            &app,
            "kms:GenerateDataKey",
            &with(&[("Project", "Alpha")])
        ),
        NONE
    );
}

/// kms:EncryptionContext with kms:EncryptionContextKeys and ForAllValues:
/// require `AppName=ExampleApp` and forbid every other pair.
#[test]
fn encryption_context_require_a_pair_and_forbid_others() {
    let doc = key_policy(
        r#"{
        "Effect": "Allow",
        "Principal": {"AWS": "arn:aws:iam::712816755609:user/alice"},
        "Action": "kms:GenerateDataKey",
        "Resource": "*",
        "Condition": {
            "StringEquals": {"kms:EncryptionContext:AppName": "ExampleApp"},
            "ForAllValues:StringEquals": {"kms:EncryptionContextKeys": ["AppName"]}
        }
    }"#,
    );
    let alice = user("712816755609", "alice");
    let only = ctx(&[
        ("kms:EncryptionContext:AppName", &["ExampleApp"]),
        ("kms:EncryptionContextKeys", &["AppName"]),
    ]);
    let extra = ctx(&[
        ("kms:EncryptionContext:AppName", &["ExampleApp"]),
        ("kms:EncryptionContext:Project", &["Alpha"]),
        ("kms:EncryptionContextKeys", &["AppName", "Project"]),
    ]);
    let none = ctx(&[("kms:EncryptionContextKeys", &[])]);
    assert_eq!(eval(&doc, &alice, "kms:GenerateDataKey", &only), DIRECT);
    assert_eq!(eval(&doc, &alice, "kms:GenerateDataKey", &extra), NONE);
    // ForAllValues alone would allow no context; the pair condition fails.
    assert_eq!(eval(&doc, &alice, "kms:GenerateDataKey", &none), NONE);
}

/// kms:EncryptionContext: require `Department=IT` AND `Project=Alpha` (one
/// block); or either of them (two statements).
#[test]
fn encryption_context_multiple_pairs() {
    let both = key_policy(
        r#"{
        "Effect": "Allow",
        "Principal": {"AWS": "arn:aws:iam::111122223333:role/RoleForExampleApp"},
        "Action": "kms:Decrypt",
        "Resource": "*",
        "Condition": {"StringEquals": {
            "kms:EncryptionContext:Department": "IT",
            "kms:EncryptionContext:Project": "Alpha"
        }}
    }"#,
    );
    let either = key_policy(
        r#"{
        "Effect": "Allow",
        "Principal": {"AWS": "arn:aws:iam::111122223333:role/RoleForExampleApp"},
        "Action": "kms:GenerateDataKey",
        "Resource": "*",
        "Condition": {"StringEquals": {"kms:EncryptionContext:Department": "IT"}}
    }, {
        "Effect": "Allow",
        "Principal": {"AWS": "arn:aws:iam::111122223333:role/RoleForExampleApp"},
        "Action": "kms:GenerateDataKey",
        "Resource": "*",
        "Condition": {"StringEquals": {"kms:EncryptionContext:Project": "Alpha"}}
    }"#,
    );
    let app = role(ACCOUNT, "RoleForExampleApp");
    let it = ctx(&[("kms:EncryptionContext:Department", &["IT"])]);
    let alpha = ctx(&[("kms:EncryptionContext:Project", &["Alpha"])]);
    let it_alpha = ctx(&[
        ("kms:EncryptionContext:Department", &["IT"]),
        ("kms:EncryptionContext:Project", &["Alpha"]),
    ]);
    assert_eq!(eval(&both, &app, "kms:Decrypt", &it_alpha), DIRECT);
    assert_eq!(eval(&both, &app, "kms:Decrypt", &it), NONE);
    assert_eq!(eval(&both, &app, "kms:Decrypt", &alpha), NONE);
    assert_eq!(eval(&either, &app, "kms:GenerateDataKey", &it), DIRECT);
    assert_eq!(eval(&either, &app, "kms:GenerateDataKey", &alpha), DIRECT);
    assert_eq!(
        eval(&either, &app, "kms:GenerateDataKey", &it_alpha),
        DIRECT
    );
    assert_eq!(
        eval(&either, &app, "kms:GenerateDataKey", &Context::new()),
        NONE
    );
}

/// kms:EncryptionContext with Deny: forbid `Stage=Restricted` or
/// `Stage=Production`; other stages are not denied.
#[test]
fn encryption_context_deny_restricted_stages() {
    let doc = key_policy(
        r#"{
        "Effect": "Allow",
        "Principal": {"AWS": "arn:aws:iam::111122223333:role/RoleForExampleApp"},
        "Action": "kms:GenerateDataKey",
        "Resource": "*"
    }, {
        "Effect": "Deny",
        "Principal": {"AWS": "arn:aws:iam::111122223333:role/RoleForExampleApp"},
        "Action": "kms:GenerateDataKey",
        "Resource": "*",
        "Condition": {"StringEquals": {"kms:EncryptionContext:Stage": ["Restricted", "Production"]}}
    }"#,
    );
    let app = role(ACCOUNT, "RoleForExampleApp");
    let stage = |s: &str| ctx(&[("kms:EncryptionContext:Stage", &[s])]);
    let denied_and_allowed = Evaluation {
        denied: true,
        allowed_directly: true,
        allowed_via_account: false,
    };
    assert_eq!(
        eval(&doc, &app, "kms:GenerateDataKey", &stage("Restricted")),
        denied_and_allowed
    );
    assert_eq!(
        eval(&doc, &app, "kms:GenerateDataKey", &stage("Production")),
        denied_and_allowed
    );
    assert_eq!(
        eval(&doc, &app, "kms:GenerateDataKey", &stage("Test")),
        DIRECT
    );
    assert_eq!(
        eval(&doc, &app, "kms:GenerateDataKey", &Context::new()),
        DIRECT
    );
}

/// kms:EncryptionContextKeys with ForAnyValue: some pair must have the key
/// `AppName` (case-sensitive with StringEquals).
#[test]
fn encryption_context_keys_for_any_value() {
    let doc = key_policy(
        r#"{
        "Effect": "Allow",
        "Principal": {"AWS": "arn:aws:iam::111122223333:role/RoleForExampleApp"},
        "Action": ["kms:Encrypt", "kms:GenerateDataKey*"],
        "Resource": "*",
        "Condition": {"ForAnyValue:StringEquals": {"kms:EncryptionContextKeys": "AppName"}}
    }"#,
    );
    let app = role(ACCOUNT, "RoleForExampleApp");
    let keys = |ks: &[&str]| ctx(&[("kms:EncryptionContextKeys", ks)]);
    assert_eq!(
        eval(
            &doc,
            &app,
            "kms:GenerateDataKey",
            &keys(&["AppName", "Project"])
        ),
        DIRECT
    );
    assert_eq!(eval(&doc, &app, "kms:Encrypt", &keys(&["AppName"])), DIRECT);
    assert_eq!(
        eval(&doc, &app, "kms:GenerateDataKey", &keys(&["Project"])),
        NONE
    );
    assert_eq!(
        eval(&doc, &app, "kms:GenerateDataKey", &keys(&["appname"])),
        NONE
    );
    assert_eq!(eval(&doc, &app, "kms:GenerateDataKey", &keys(&[])), NONE);
    assert_eq!(
        eval(&doc, &app, "kms:GenerateDataKey", &Context::new()),
        NONE
    );
}

/// kms:EncryptionContextKeys with Null: false: require some encryption
/// context.
#[test]
fn encryption_context_keys_null_requires_a_context() {
    let doc = key_policy(
        r#"{
        "Effect": "Allow",
        "Principal": {"AWS": "arn:aws:iam::111122223333:role/RoleForExampleApp"},
        "Action": ["kms:Encrypt", "kms:GenerateDataKey*"],
        "Resource": "*",
        "Condition": {"Null": {"kms:EncryptionContextKeys": false}}
    }"#,
    );
    let app = role(ACCOUNT, "RoleForExampleApp");
    let any = ctx(&[("kms:EncryptionContextKeys", &["Anything"])]);
    let empty = ctx(&[("kms:EncryptionContextKeys", &[])]);
    assert_eq!(eval(&doc, &app, "kms:Encrypt", &any), DIRECT);
    assert_eq!(eval(&doc, &app, "kms:Encrypt", &empty), NONE);
    assert_eq!(eval(&doc, &app, "kms:Encrypt", &Context::new()), NONE);
}

/// kms:RequestAlias: "Key policy using a request alias condition".
#[test]
fn request_alias_condition() {
    let doc = key_policy(
        r#"{
        "Sid": "Key policy using a request alias condition",
        "Effect": "Allow",
        "Principal": {"AWS": "arn:aws:iam::111122223333:role/developer"},
        "Action": "kms:GenerateDataKey",
        "Resource": "*",
        "Condition": {"StringEquals": {"kms:RequestAlias": "alias/finance-key"}}
    }"#,
    );
    let dev = role(ACCOUNT, "developer");
    let alias = |a: &str| ctx(&[("kms:RequestAlias", &[a])]);
    assert_eq!(
        eval(
            &doc,
            &dev,
            "kms:GenerateDataKey",
            &alias("alias/finance-key")
        ),
        DIRECT
    );
    assert_eq!(
        eval(&doc, &dev, "kms:GenerateDataKey", &alias("alias/other-key")),
        NONE
    );
    // Identified by key id or ARN: no alias in the request.
    assert_eq!(
        eval(&doc, &dev, "kms:GenerateDataKey", &Context::new()),
        NONE
    );
    assert_eq!(
        eval(&doc, &dev, "kms:Decrypt", &alias("alias/finance-key")),
        NONE
    );
}

/// kms:GrantOperations with ForAllValues: grants for Encrypt and
/// ReEncryptTo only; with ForAnyValue, at least one of them.
#[test]
fn grant_operations_for_all_values_and_for_any_value() {
    let statement = |set: &str| {
        key_policy(&format!(
            r#"{{
            "Effect": "Allow",
            "Principal": {{"AWS": "arn:aws:iam::111122223333:user/ExampleUser"}},
            "Action": "kms:CreateGrant",
            "Resource": "*",
            "Condition": {{"{set}:StringEquals": {{"kms:GrantOperations": ["Encrypt", "ReEncryptTo"]}}}}
        }}"#
        ))
    };
    let all = statement("ForAllValues");
    let any = statement("ForAnyValue");
    let who = user(ACCOUNT, "ExampleUser");
    let ops = |o: &[&str]| ctx(&[("kms:GrantOperations", o)]);
    assert_eq!(
        eval(&all, &who, "kms:CreateGrant", &ops(&["Encrypt"])),
        DIRECT
    );
    assert_eq!(
        eval(
            &all,
            &who,
            "kms:CreateGrant",
            &ops(&["Encrypt", "ReEncryptTo"])
        ),
        DIRECT
    );
    assert_eq!(
        eval(&all, &who, "kms:CreateGrant", &ops(&["Encrypt", "Decrypt"])),
        NONE
    );
    assert_eq!(
        eval(&all, &who, "kms:CreateGrant", &ops(&["Decrypt"])),
        NONE
    );
    assert_eq!(
        eval(&any, &who, "kms:CreateGrant", &ops(&["Encrypt", "Decrypt"])),
        DIRECT
    );
    assert_eq!(
        eval(
            &any,
            &who,
            "kms:CreateGrant",
            &ops(&["Decrypt", "ReEncryptFrom"])
        ),
        NONE
    );
    // No operations at all: ForAllValues matches, ForAnyValue does not.
    assert_eq!(eval(&all, &who, "kms:CreateGrant", &ops(&[])), DIRECT);
    assert_eq!(eval(&any, &who, "kms:CreateGrant", &ops(&[])), NONE);
}

/// kms:EncryptionAlgorithm: "Allow only one encryption algorithm with this
/// asymmetric KMS key" (Deny with StringNotEquals).
#[test]
fn encryption_algorithm_deny_all_but_one() {
    let doc = key_policy(&format!(
        r#"{ENABLE_IAM_POLICIES}, {{
        "Sid": "Allow only one encryption algorithm with this asymmetric KMS key",
        "Effect": "Deny",
        "Principal": {{"AWS": "arn:aws:iam::111122223333:role/ExampleRole"}},
        "Action": ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*"],
        "Resource": "*",
        "Condition": {{"StringNotEquals": {{"kms:EncryptionAlgorithm": "RSAES_OAEP_SHA_256"}}}}
    }}"#
    ));
    let example_role = role(ACCOUNT, "ExampleRole");
    let alg = |a: &str| ctx(&[("kms:EncryptionAlgorithm", &[a])]);
    assert_eq!(
        eval(
            &doc,
            &example_role,
            "kms:Encrypt",
            &alg("RSAES_OAEP_SHA_256")
        ),
        VIA_ACCOUNT
    );
    assert_eq!(
        eval(&doc, &example_role, "kms:Decrypt", &alg("RSAES_OAEP_SHA_1")),
        Evaluation {
            denied: true,
            allowed_directly: false,
            allowed_via_account: true
        }
    );
    // No algorithm in the context: StringNotEquals matches an absent key.
    assert!(eval(&doc, &example_role, "kms:Encrypt", &Context::new()).denied);
    // Other principals and actions are not denied.
    assert!(
        !eval(
            &doc,
            &role(ACCOUNT, "Other"),
            "kms:Decrypt",
            &alg("RSAES_OAEP_SHA_1")
        )
        .denied
    );
    assert!(!eval(&doc, &example_role, "kms:Sign", &alg("RSAES_OAEP_SHA_1")).denied);
}

/// kms:EncryptionAlgorithm in an IAM policy: "AllowOnlySymmetricAlgorithm"
/// denies other algorithms on the account's keys.
#[test]
fn encryption_algorithm_identity_policy_only_symmetric() {
    let doc = identity_policy(
        r#"{
        "Sid": "AllowOnlySymmetricAlgorithm",
        "Effect": "Deny",
        "Action": ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*"],
        "Resource": "arn:aws:kms:us-west-2:111122223333:key/*",
        "Condition": {"StringNotEquals": {"kms:EncryptionAlgorithm": "SYMMETRIC_DEFAULT"}}
    }"#,
    );
    let me = user(ACCOUNT, "Alice");
    let alg = |a: &str| ctx(&[("kms:EncryptionAlgorithm", &[a])]);
    assert_eq!(
        eval(&doc, &me, "kms:Encrypt", &alg("SYMMETRIC_DEFAULT")),
        NONE
    );
    assert_eq!(
        eval(&doc, &me, "kms:Encrypt", &alg("RSAES_OAEP_SHA_256")),
        DENIED
    );
    // Keys in another region or account are not covered.
    let other_region = "arn:aws:kms:eu-west-1:111122223333:key/1";
    assert_eq!(
        eval_on(
            &doc,
            &me,
            "kms:Encrypt",
            other_region,
            &alg("RSAES_OAEP_SHA_256")
        ),
        NONE
    );
    let other_account = "arn:aws:kms:us-west-2:444455556666:key/1";
    assert_eq!(
        eval_on(
            &doc,
            &me,
            "kms:Encrypt",
            other_account,
            &alg("RSAES_OAEP_SHA_256")
        ),
        NONE
    );
}

/// kms:ResourceAliases in an IAM policy: ForAllValues and ForAnyValue
/// together require at least one alias and only aliases containing "Test".
#[test]
fn resource_aliases_identity_policy() {
    let doc = identity_policy(
        r#"{
        "Sid": "AliasBasedIAMPolicy",
        "Effect": "Allow",
        "Action": ["kms:EnableKey", "kms:DisableKey"],
        "Resource": "arn:aws:kms:*:111122223333:key/*",
        "Condition": {
            "ForAllValues:StringLike": {"kms:ResourceAliases": ["alias/*Test*"]},
            "ForAnyValue:StringLike": {"kms:ResourceAliases": ["alias/*Test*"]}
        }
    }"#,
    );
    let me = user(ACCOUNT, "Alice");
    let aliases = |a: &[&str]| ctx(&[("kms:ResourceAliases", a)]);
    assert_eq!(
        eval(
            &doc,
            &me,
            "kms:EnableKey",
            &aliases(&["alias/Test1", "alias/MyTestKey"])
        ),
        DIRECT
    );
    assert_eq!(
        eval(
            &doc,
            &me,
            "kms:DisableKey",
            &aliases(&["alias/Test1", "alias/prod"])
        ),
        NONE
    );
    assert_eq!(eval(&doc, &me, "kms:DisableKey", &aliases(&[])), NONE);
    assert_eq!(eval(&doc, &me, "kms:DisableKey", &Context::new()), NONE);
    assert_eq!(
        eval(&doc, &me, "kms:Encrypt", &aliases(&["alias/Test1"])),
        NONE
    );
    assert_eq!(
        eval_on(
            &doc,
            &me,
            "kms:EnableKey",
            "arn:aws:kms:us-east-1:444455556666:key/1",
            &aliases(&["alias/Test1"])
        ),
        NONE
    );
}

/// kms:BypassPolicyLockoutSafetyCheck: Deny with Bool true (IAM policy);
/// Allow with Null true (key policy).
#[test]
fn bypass_policy_lockout_safety_check() {
    let deny = identity_policy(
        r#"{
        "Effect": "Deny",
        "Action": ["kms:CreateKey", "kms:PutKeyPolicy"],
        "Resource": "*",
        "Condition": {"Bool": {"kms:BypassPolicyLockoutSafetyCheck": true}}
    }"#,
    );
    let allow = key_policy(
        r#"{
        "Effect": "Allow",
        "Principal": {"AWS": "arn:aws:iam::111122223333:user/ExampleUser"},
        "Action": "kms:PutKeyPolicy",
        "Resource": "*",
        "Condition": {"Null": {"kms:BypassPolicyLockoutSafetyCheck": true}}
    }"#,
    );
    let who = user(ACCOUNT, "ExampleUser");
    let bypass = ctx(&[("kms:BypassPolicyLockoutSafetyCheck", &["true"])]);
    let no_bypass = ctx(&[("kms:BypassPolicyLockoutSafetyCheck", &["false"])]);
    assert_eq!(eval(&deny, &who, "kms:PutKeyPolicy", &bypass), DENIED);
    assert_eq!(eval_on(&deny, &who, "kms:CreateKey", "*", &bypass), DENIED);
    assert_eq!(eval(&deny, &who, "kms:PutKeyPolicy", &no_bypass), NONE);
    assert_eq!(eval(&deny, &who, "kms:PutKeyPolicy", &Context::new()), NONE);
    assert_eq!(
        eval(&allow, &who, "kms:PutKeyPolicy", &Context::new()),
        DIRECT
    );
    assert_eq!(eval(&allow, &who, "kms:PutKeyPolicy", &no_bypass), NONE);
}

/// kms:ValidTo: ImportKeyMaterial only with expirations up to
/// 1546257599.0 (NumericLessThanEquals).
#[test]
fn valid_to_numeric_less_than_equals() {
    let doc = key_policy(
        r#"{
        "Effect": "Allow",
        "Principal": {"AWS": "arn:aws:iam::111122223333:user/ExampleUser"},
        "Action": "kms:ImportKeyMaterial",
        "Resource": "*",
        "Condition": {"NumericLessThanEquals": {"kms:ValidTo": "1546257599.0"}}
    }"#,
    );
    let who = user(ACCOUNT, "ExampleUser");
    let valid_to = |v: &str| ctx(&[("kms:ValidTo", &[v])]);
    assert_eq!(
        eval(&doc, &who, "kms:ImportKeyMaterial", &valid_to("1546257599")),
        DIRECT
    );
    assert_eq!(
        eval(&doc, &who, "kms:ImportKeyMaterial", &valid_to("1500000000")),
        DIRECT
    );
    assert_eq!(
        eval(&doc, &who, "kms:ImportKeyMaterial", &valid_to("1546257600")),
        NONE
    );
    assert_eq!(
        eval(&doc, &who, "kms:ImportKeyMaterial", &valid_to("soon")),
        NONE
    );
    assert_eq!(
        eval(&doc, &who, "kms:ImportKeyMaterial", &Context::new()),
        NONE
    );
}

/// kms:KeySpec in an IAM policy: CreateKey only for RSA key specs.
#[test]
fn key_spec_identity_policy_rsa_only() {
    let doc = identity_policy(
        r#"{"Effect": "Allow", "Action": "kms:CreateKey", "Resource": "*",
            "Condition": {"StringLike": {"kms:KeySpec": "RSA_*"}}}"#,
    );
    let me = role(ACCOUNT, "Builder");
    let spec = |s: &str| ctx(&[("kms:KeySpec", &[s])]);
    assert_eq!(
        eval_on(&doc, &me, "kms:CreateKey", "*", &spec("RSA_4096")),
        DIRECT
    );
    assert_eq!(
        eval_on(&doc, &me, "kms:CreateKey", "*", &spec("SYMMETRIC_DEFAULT")),
        NONE
    );
    // Resource "*" covers key ARNs too.
    assert_eq!(eval(&doc, &me, "kms:CreateKey", &spec("RSA_2048")), DIRECT);
}

/// Service principals: `{"Service": ...}` names the service; `"*"` covers
/// it; account entries cover it only in its own account.
#[test]
fn service_principals() {
    let doc = key_policy(
        r#"{"Effect": "Allow", "Principal": {"Service": "disk.atrest"}, "Action": ["kms:Decrypt", "kms:GenerateDataKey*"], "Resource": "*"}"#,
    );
    let disk = service(ACCOUNT, "disk.atrest");
    let c = Context::new();
    assert_eq!(eval(&doc, &disk, "kms:Decrypt", &c), DIRECT);
    assert_eq!(eval(&doc, &disk, "kms:Encrypt", &c), NONE);
    assert_eq!(
        eval(&doc, &service(ACCOUNT, "pg.atrest"), "kms:Decrypt", &c),
        NONE
    );
    assert_eq!(
        eval(&doc, &user(ACCOUNT, "disk.atrest"), "kms:Decrypt", &c),
        NONE
    );
    let account = key_policy(ENABLE_IAM_POLICIES);
    assert_eq!(eval(&account, &disk, "kms:Decrypt", &c), VIA_ACCOUNT);
    assert_eq!(
        eval(&account, &service(OTHER, "disk.atrest"), "kms:Decrypt", &c),
        NONE
    );
    let everyone = key_policy(
        r#"{"Effect": "Allow", "Principal": "*", "Action": "kms:Decrypt", "Resource": "*"}"#,
    );
    assert_eq!(eval(&everyone, &disk, "kms:Decrypt", &c), DIRECT);
}

/// NotPrincipal with Deny, as in the IAM guide: deny everyone except Bob
/// (and Bob's account principal).
#[test]
fn not_principal_deny_everyone_except_bob() {
    let doc = key_policy(
        r#"{"Effect": "Deny",
            "NotPrincipal": {"AWS": ["arn:aws:iam::444455556666:user/Bob", "arn:aws:iam::444455556666:root"]},
            "Action": "kms:*", "Resource": "*"}"#,
    );
    let c = Context::new();
    assert_eq!(eval(&doc, &user(OTHER, "Bob"), "kms:Decrypt", &c), NONE);
    assert_eq!(eval(&doc, &root(OTHER), "kms:Decrypt", &c), NONE);
    assert_eq!(eval(&doc, &user(OTHER, "Carol"), "kms:Decrypt", &c), DENIED);
    assert_eq!(eval(&doc, &root(ACCOUNT), "kms:Decrypt", &c), DENIED);
    assert_eq!(
        eval(&doc, &service(OTHER, "disk.atrest"), "kms:Decrypt", &c),
        DENIED
    );
}

/// Policy variables resolve in 2012-10-17 documents and stay literal in
/// 2008-10-17 ones.
#[test]
fn policy_variables_depend_on_version() {
    let statement = r#"{"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:role/TestTeam"},
        "Action": ["kms:Decrypt", "kms:Encrypt"], "Resource": "*",
        "Condition": {"StringEquals": {"kms:EncryptionContext:user": "${aws:username}"}}}"#;
    let new = PolicyDocument::parse(
        &format!(r#"{{"Version": "2012-10-17", "Statement": {statement}}}"#),
        PolicyKind::Resource,
    )
    .unwrap();
    let old = PolicyDocument::parse(
        &format!(r#"{{"Version": "2008-10-17", "Statement": {statement}}}"#),
        PolicyKind::Resource,
    )
    .unwrap();
    let team = role(ACCOUNT, "TestTeam");
    let bob = ctx(&[
        ("aws:username", &["bob"]),
        ("kms:EncryptionContext:user", &["bob"]),
    ]);
    let alice_as_bob = ctx(&[
        ("aws:username", &["alice"]),
        ("kms:EncryptionContext:user", &["bob"]),
    ]);
    let literal = ctx(&[("kms:EncryptionContext:user", &["${aws:username}"])]);
    assert_eq!(eval(&new, &team, "kms:Decrypt", &bob), DIRECT);
    assert_eq!(eval(&new, &team, "kms:Decrypt", &alice_as_bob), NONE);
    assert_eq!(eval(&new, &team, "kms:Decrypt", &literal), NONE);
    assert_eq!(eval(&old, &team, "kms:Decrypt", &bob), NONE);
    assert_eq!(eval(&old, &team, "kms:Decrypt", &literal), DIRECT);
}

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

/// Statement parts, combined at random. Keys `t:a` and `t:b` are the
/// condition keys of the random contexts.
const PRINCIPALS: &[&str] = &[
    r#""Principal": "*""#,
    r#""Principal": {"AWS": "*"}"#,
    r#""Principal": {"AWS": "111122223333"}"#,
    r#""Principal": {"AWS": "arn:aws:iam::111122223333:root"}"#,
    r#""Principal": {"AWS": ["444455556666", "arn:aws:iam::111122223333:root"]}"#,
    r#""Principal": {"AWS": "arn:aws:iam::444455556666:root"}"#,
    r#""Principal": {"AWS": "arn:aws:iam::111122223333:user/alice"}"#,
    r#""Principal": {"AWS": ["arn:aws:iam::111122223333:role/ops", "444455556666"]}"#,
    r#""Principal": {"Service": "disk.atrest"}"#,
    r#""NotPrincipal": {"AWS": "arn:aws:iam::111122223333:user/alice"}"#,
    r#""NotPrincipal": {"AWS": ["111122223333"], "Service": "disk.atrest"}"#,
];
const ACTIONS: &[&str] = &[
    r#""Action": "*""#,
    r#""Action": "kms:*""#,
    r#""Action": "kms:Encrypt""#,
    r#""Action": ["kms:Generate*", "kms:Decrypt"]"#,
    r#""Action": "KMS:re?ncrypt*""#,
    r#""NotAction": "kms:Describe*""#,
    r#""NotAction": ["kms:Encrypt", "kms:Decrypt"]"#,
];
const RESOURCES: &[&str] = &[
    r#""Resource": "*""#,
    r#""Resource": "arn:aws:kms:us-west-2:111122223333:key/1""#,
    r#""Resource": "arn:aws:kms:*:111122223333:key/*""#,
    r#""Resource": ["arn:aws:kms:*:444455556666:*", "arn:aws:kms:us-west-2:111122223333:key/2"]"#,
    r#""NotResource": "arn:aws:kms:us-west-2:111122223333:key/1""#,
];
const CONDITIONS: &[&str] = &[
    "",
    r#", "Condition": {"StringEquals": {"t:a": "x"}}"#,
    r#", "Condition": {"StringNotEquals": {"t:a": ["x", "y"]}}"#,
    r#", "Condition": {"StringLike": {"t:a": "*y*"}, "Null": {"t:b": false}}"#,
    r#", "Condition": {"StringEqualsIfExists": {"t:b": "1"}}"#,
    r#", "Condition": {"NumericLessThan": {"t:b": 5}}"#,
    r#", "Condition": {"NumericNotEquals": {"t:b": "3"}}"#,
    r#", "Condition": {"DateGreaterThan": {"t:b": "1970-01-01T00:00:03Z"}}"#,
    r#", "Condition": {"Bool": {"t:a": true}}"#,
    r#", "Condition": {"Null": {"t:a": true}}"#,
    r#", "Condition": {"ForAllValues:StringEquals": {"t:a": ["x", "true"]}}"#,
    r#", "Condition": {"ForAnyValue:StringNotLike": {"t:a": "x*"}}"#,
    r#", "Condition": {"ArnLike": {"t:a": "arn:aws:kms:*:*:key/*"}}"#,
];

/// One random statement's JSON; `identity`: without a principal.
fn statement(identity: bool) -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec!["Allow", "Deny"]),
        prop::sample::select(PRINCIPALS.to_vec()),
        prop::sample::select(ACTIONS.to_vec()),
        prop::sample::select(RESOURCES.to_vec()),
        prop::sample::select(CONDITIONS.to_vec()),
    )
        .prop_map(move |(effect, principal, action, resource, condition)| {
            let principal = if identity {
                String::new()
            } else {
                format!("{principal}, ")
            };
            format!(r#"{{"Effect": "{effect}", {principal}{action}, {resource}{condition}}}"#)
        })
}

fn document(statements: &[String]) -> String {
    format!(
        r#"{{"Version": "2012-10-17", "Statement": [{}]}}"#,
        statements.join(",")
    )
}

fn kind_of(identity: bool) -> PolicyKind {
    if identity {
        PolicyKind::Identity
    } else {
        PolicyKind::Resource
    }
}

/// A random request, owned.
#[derive(Debug, Clone)]
struct Req {
    principal: Principal,
    action: String,
    resource: String,
    context: Context,
}

impl Req {
    fn eval(&self, doc: &PolicyDocument) -> Evaluation {
        doc.evaluate(&Request {
            principal: &self.principal,
            action: &self.action,
            resource: &self.resource,
            context: &self.context,
        })
    }
}

fn principal_strategy() -> impl Strategy<Value = Principal> {
    let account = prop::sample::select(vec![ACCOUNT, OTHER, "999999999999"]);
    let kind = prop_oneof![
        Just(PrincipalKind::Root),
        prop::sample::select(vec!["alice", "bob"]).prop_map(|n| PrincipalKind::User(n.into())),
        prop::sample::select(vec!["ops", "alice"]).prop_map(|n| PrincipalKind::Role(n.into())),
        prop::sample::select(vec!["disk.atrest", "pg.atrest"])
            .prop_map(|n| PrincipalKind::Service(n.into())),
    ];
    (account, kind).prop_map(|(account, kind)| Principal {
        account: account.into(),
        kind,
    })
}

/// Absent, or zero to three values from a small set (so conditions match
/// sometimes).
fn values_strategy() -> impl Strategy<Value = Option<Vec<String>>> {
    let value = prop::sample::select(vec![
        "x",
        "y",
        "xy",
        "true",
        "1",
        "3",
        "7",
        "1970-01-01T00:00:05Z",
        "arn:aws:kms:us-west-2:111122223333:key/1",
        "",
    ])
    .prop_map(String::from);
    prop::option::of(prop::collection::vec(value, 0..3))
}

fn request_strategy() -> impl Strategy<Value = Req> {
    (
        principal_strategy(),
        prop::sample::select(vec![
            "kms:Encrypt",
            "kms:Decrypt",
            "kms:GenerateDataKey",
            "kms:ReEncryptFrom",
            "kms:DescribeKey",
            "s3:GetObject",
        ]),
        prop::sample::select(vec![
            "arn:aws:kms:us-west-2:111122223333:key/1",
            "arn:aws:kms:us-west-2:111122223333:key/2",
            "arn:aws:kms:eu-west-1:444455556666:key/9",
            "*",
        ]),
        values_strategy(),
        values_strategy(),
    )
        .prop_map(|(principal, action, resource, a, b)| {
            let mut context = Context::new();
            if let Some(a) = a {
                context.set_many("t:a", a);
            }
            if let Some(b) = b {
                context.set_many("T:B", b);
            }
            Req {
                principal,
                action: action.into(),
                resource: resource.into(),
                context,
            }
        })
}

/// A random kind with 1 to 6 statements of that kind.
fn statements_strategy() -> impl Strategy<Value = (bool, Vec<String>)> {
    any::<bool>().prop_flat_map(|identity| {
        (
            Just(identity),
            prop::collection::vec(statement(identity), 1..7),
        )
    })
}

fn parse_ok(text: &str, kind: PolicyKind) -> PolicyDocument {
    match PolicyDocument::parse(text, kind) {
        Ok(doc) => doc,
        Err(e) => panic!("{e}\n{text}"),
    }
}

proptest! {
    /// An explicit Deny always wins: if any Deny statement matches on its
    /// own, the whole document denies, whatever the other statements. And
    /// each flag of a document is the OR of its statements' flags.
    #[test]
    fn deny_wins_and_flags_are_per_statement((identity, statements) in statements_strategy(), req in request_strategy()) {
        let kind = kind_of(identity);
        let whole = req.eval(&parse_ok(&document(&statements), kind));
        let singles: Vec<Evaluation> = statements
            .iter()
            .map(|s| req.eval(&parse_ok(&document(std::slice::from_ref(s)), kind)))
            .collect();
        for (s, single) in statements.iter().zip(&singles) {
            if s.contains(r#""Effect": "Deny""#) && single.denied {
                prop_assert!(whole.denied, "statement {s} denies alone but not in the document");
            }
        }
        prop_assert_eq!(whole.denied, singles.iter().any(|e| e.denied));
        prop_assert_eq!(whole.allowed_directly, singles.iter().any(|e| e.allowed_directly));
        prop_assert_eq!(whole.allowed_via_account, singles.iter().any(|e| e.allowed_via_account));
    }

    /// Adding an Allow statement never turns a denied request into a
    /// non-denied one.
    #[test]
    fn adding_an_allow_never_undenies(
        (identity, statements, extra) in statements_strategy()
            .prop_flat_map(|(identity, s)| (Just(identity), Just(s), statement(identity))),
        req in request_strategy(),
    ) {
        let kind = kind_of(identity);
        let extra = extra.replace(r#""Effect": "Deny""#, r#""Effect": "Allow""#);
        let before = req.eval(&parse_ok(&document(&statements), kind));
        let mut more = statements;
        more.push(extra);
        let after = req.eval(&parse_ok(&document(&more), kind));
        if before.denied {
            prop_assert!(after.denied);
        }
        prop_assert!(after.allowed_directly >= before.allowed_directly);
        prop_assert!(after.allowed_via_account >= before.allowed_via_account);
    }

    /// Statement order does not matter.
    #[test]
    fn statement_order_does_not_matter(
        (identity, statements, shuffled) in statements_strategy().prop_flat_map(|(identity, s)| {
            let shuffled = Just(s.clone()).prop_shuffle();
            (Just(identity), Just(s), shuffled)
        }),
        req in request_strategy(),
    ) {
        let kind = kind_of(identity);
        let a = req.eval(&parse_ok(&document(&statements), kind));
        let b = req.eval(&parse_ok(&document(&shuffled), kind));
        prop_assert_eq!(a, b);
    }

    /// Parsing then evaluating is deterministic.
    #[test]
    fn parse_and_evaluate_are_deterministic((identity, statements) in statements_strategy(), req in request_strategy()) {
        let kind = kind_of(identity);
        let text = document(&statements);
        let first = parse_ok(&text, kind);
        let second = parse_ok(&text, kind);
        prop_assert_eq!(&first, &second);
        prop_assert_eq!(req.eval(&first), req.eval(&second));
        prop_assert_eq!(req.eval(&first), req.eval(&first));
    }

    /// Evaluation never panics, whatever the request's strings.
    #[test]
    fn evaluation_never_panics(
        (identity, statements) in statements_strategy(),
        account in ".{0,14}",
        name in ".{0,10}",
        action in ".{0,20}",
        resource in prop_oneof![".{0,40}".boxed(), "arn:[a-z:*]{0,30}".boxed()],
        values in prop::collection::vec(".{0,12}", 0..4),
    ) {
        let doc = parse_ok(&document(&statements), kind_of(identity));
        let mut context = Context::new();
        context.set_many("t:a", values.clone());
        context.set_many("t:b", values);
        for kind in [
            PrincipalKind::Root,
            PrincipalKind::User(name.clone()),
            PrincipalKind::Role(name.clone()),
            PrincipalKind::Service(name),
        ] {
            let principal = Principal { account: account.clone(), kind };
            let _ = doc.evaluate(&Request { principal: &principal, action: &action, resource: &resource, context: &context });
        }
    }

    /// Parsing never panics on arbitrary strings.
    #[test]
    fn parse_never_panics_on_arbitrary_strings(text in "\\PC{0,200}") {
        let _ = PolicyDocument::parse(&text, PolicyKind::Resource);
        let _ = PolicyDocument::parse(&text, PolicyKind::Identity);
    }

    /// Parsing never panics on JSON built from the policy vocabulary, nor
    /// on valid documents with a byte range replaced.
    #[test]
    fn parse_never_panics_on_policy_shaped_json(
        json in policy_shaped_json(),
        (identity, statements) in statements_strategy(),
        cut in any::<prop::sample::Index>(),
        len in 0usize..8,
        junk in "[\\[\\]{}\":,*a-zA-Z0-9 ]{0,6}",
    ) {
        let text = json.to_string();
        let _ = PolicyDocument::parse(&text, PolicyKind::Resource);
        let _ = PolicyDocument::parse(&text, PolicyKind::Identity);
        let mut doc = document(&statements).into_bytes();
        let at = cut.index(doc.len());
        let end = (at + len).min(doc.len());
        doc.splice(at..end, junk.bytes());
        let mutated = String::from_utf8_lossy(&doc);
        let _ = PolicyDocument::parse(&mutated, kind_of(identity));
    }
}

/// Random JSON whose names and strings come mostly from the policy
/// language, so that it reaches the deeper validation paths.
fn policy_shaped_json() -> impl Strategy<Value = serde_json::Value> {
    let words = vec![
        "Version",
        "2012-10-17",
        "2008-10-17",
        "Id",
        "Statement",
        "Sid",
        "Effect",
        "Allow",
        "Deny",
        "Principal",
        "NotPrincipal",
        "AWS",
        "Service",
        "Federated",
        "*",
        "111122223333",
        "arn:aws:iam::111122223333:root",
        "arn:aws:iam::111122223333:user/u",
        "disk.atrest",
        "Action",
        "NotAction",
        "kms:*",
        "kms:Encrypt",
        "Resource",
        "NotResource",
        "arn:aws:kms:*:111122223333:key/*",
        "Condition",
        "StringEquals",
        "StringLike",
        "ForAllValues:StringNotEquals",
        "ForAnyValue:NumericLessThanIfExists",
        "Null",
        "Bool",
        "DateGreaterThan",
        "ArnLike",
        "IpAddress",
        "t:a",
        "${aws:username}",
        "${",
        "x",
    ];
    let word = prop::sample::select(words).prop_map(String::from);
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i32>().prop_map(serde_json::Value::from),
        word.clone().prop_map(serde_json::Value::String),
        ".{0,8}".prop_map(serde_json::Value::String),
    ];
    leaf.prop_recursive(5, 64, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::vec((word.clone(), inner), 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// The random documents and requests above reach every outcome, so the
/// properties are not vacuous.
#[test]
fn random_cases_reach_every_outcome() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let (mut denied, mut direct, mut via, mut none) = (0, 0, 0, 0);
    for _ in 0..4000 {
        let (identity, statements) = statements_strategy()
            .new_tree(&mut runner)
            .unwrap()
            .current();
        let req = request_strategy().new_tree(&mut runner).unwrap().current();
        let e = req.eval(&parse_ok(&document(&statements), kind_of(identity)));
        denied += usize::from(e.denied);
        direct += usize::from(e.allowed_directly);
        via += usize::from(e.allowed_via_account);
        none += usize::from(e == NONE);
    }
    for (name, n) in [
        ("denied", denied),
        ("direct", direct),
        ("via account", via),
        ("none", none),
    ] {
        assert!(n >= 20, "only {n} of 4000 random cases were {name}");
    }
}
