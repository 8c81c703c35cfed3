//! The `Principal` and `NotPrincipal` elements of resource policies.

use crate::json::Json;
use crate::{PolicyError, Principal, PrincipalKind};

/// One listed principal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Entry {
    /// `"*"` or `{"AWS": "*"}`: everyone, service principals included.
    Everyone,
    /// `"111122223333"` or `"arn:aws:iam::111122223333:root"`.
    Account(String),
    /// `arn:aws:iam::ACCOUNT:user/NAME`.
    User { account: String, name: String },
    /// `arn:aws:iam::ACCOUNT:role/NAME`.
    Role { account: String, name: String },
    /// `{"Service": "disk.atrest"}`.
    Service(String),
}

/// How a listed principal matched the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Match {
    /// Through the caller's account (a non-root caller of a listed account).
    ViaAccount,
    /// The caller itself (its ARN, its service, `*`, or the root of a
    /// listed account).
    Direct,
}

impl Entry {
    /// How this entry matches `p`, in a `Principal` element.
    fn matches(&self, p: &Principal) -> Option<Match> {
        match (self, &p.kind) {
            (Entry::Everyone, _) => Some(Match::Direct),
            (Entry::Account(a), PrincipalKind::Root) if *a == p.account => Some(Match::Direct),
            (Entry::Account(a), _) if *a == p.account => Some(Match::ViaAccount),
            (Entry::User { account, name }, PrincipalKind::User(n))
                if *account == p.account && name == n =>
            {
                Some(Match::Direct)
            }
            (Entry::Role { account, name }, PrincipalKind::Role(n))
                if *account == p.account && name == n =>
            {
                Some(Match::Direct)
            }
            (Entry::Service(s), PrincipalKind::Service(n)) if s.eq_ignore_ascii_case(n) => {
                Some(Match::Direct)
            }
            _ => None,
        }
    }

    /// Whether this entry names exactly `p`, for `NotPrincipal`: an account
    /// entry names the account principal (its root) only, not the account's
    /// users and roles. The IAM guide's NotPrincipal examples list a user
    /// *and* its account so that "everyone except Bob" does not deny Bob's
    /// account itself, which only makes sense if the account entry leaves
    /// the account's other users and roles covered by the statement.
    fn names(&self, p: &Principal) -> bool {
        match (self, &p.kind) {
            (Entry::Account(a), PrincipalKind::Root) => *a == p.account,
            (Entry::Account(_), _) => false,
            _ => self.matches(p).is_some(),
        }
    }
}

/// A statement's principal element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PrincipalSpec {
    /// `Principal`: the statement applies to the listed principals.
    Listed(Vec<Entry>),
    /// `NotPrincipal`: the statement applies to everyone not listed.
    AllBut(Vec<Entry>),
}

impl PrincipalSpec {
    /// How the statement's principal element matches `p`: the best match of
    /// any listed entry, or `Direct` for a principal `NotPrincipal` does not
    /// name.
    pub(crate) fn matches(&self, p: &Principal) -> Option<Match> {
        match self {
            PrincipalSpec::Listed(entries) => entries.iter().filter_map(|e| e.matches(p)).max(),
            PrincipalSpec::AllBut(entries) => {
                if entries.iter().any(|e| e.names(p)) {
                    None
                } else {
                    Some(Match::Direct)
                }
            }
        }
    }
}

/// Parses the value of `Principal` or `NotPrincipal` at `path`.
pub(crate) fn parse(json: &Json, path: &str) -> Result<Vec<Entry>, PolicyError> {
    match json {
        Json::String(s) if s == "*" => Ok(vec![Entry::Everyone]),
        Json::String(s) => Err(PolicyError(format!(
            "{path}: \"{s}\" is not valid; use \"*\" or an object such as {{\"AWS\": \"{s}\"}}"
        ))),
        Json::Object(members) => {
            if members.is_empty() {
                return Err(PolicyError(format!(
                    "{path}: names no principal; use \"AWS\" or \"Service\""
                )));
            }
            let mut entries = Vec::new();
            for (i, (kind, value)) in members.iter().enumerate() {
                if members[..i].iter().any(|(k, _)| k == kind) {
                    return Err(PolicyError(format!("{path}: duplicate member \"{kind}\"")));
                }
                let member_path = format!("{path}.{kind}");
                let parse_one: fn(&str) -> Option<Entry> = match kind.as_str() {
                    "AWS" => aws_entry,
                    "Service" => service_entry,
                    "Federated" | "CanonicalUser" => {
                        return Err(PolicyError(format!(
                            "{path}: principal type \"{kind}\" is not supported; use \"AWS\" or \"Service\""
                        )));
                    }
                    _ => {
                        return Err(PolicyError(format!(
                            "{path}: unknown principal type \"{kind}\"; use \"AWS\" or \"Service\""
                        )));
                    }
                };
                for text in strings(value, &member_path)? {
                    match parse_one(&text) {
                        Some(e) => entries.push(e),
                        None => {
                            return Err(PolicyError(format!(
                                "{member_path}: \"{text}\" is not a valid principal"
                            )));
                        }
                    }
                }
            }
            Ok(entries)
        }
        other => Err(PolicyError(format!(
            "{path}: must be \"*\" or an object, got {}",
            other.kind()
        ))),
    }
}

/// A string or a non-empty array of strings.
fn strings(json: &Json, path: &str) -> Result<Vec<String>, PolicyError> {
    match json {
        Json::String(s) => Ok(vec![s.clone()]),
        Json::Array(items) if items.is_empty() => Err(PolicyError(format!(
            "{path}: must list at least one principal"
        ))),
        Json::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Json::String(s) => Ok(s.clone()),
                other => Err(PolicyError(format!(
                    "{path}[{i}]: must be a string, got {}",
                    other.kind()
                ))),
            })
            .collect(),
        other => Err(PolicyError(format!(
            "{path}: must be a string or an array of strings, got {}",
            other.kind()
        ))),
    }
}

fn is_account_id(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

/// IAM user and role names with their optional path: `name` or
/// `path/to/name`, of `A-Za-z0-9+=,.@_-`.
fn is_iam_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 512
        && s.split('/').all(|seg| {
            !seg.is_empty()
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b))
        })
}

fn aws_entry(text: &str) -> Option<Entry> {
    if text == "*" {
        return Some(Entry::Everyone);
    }
    if is_account_id(text) {
        return Some(Entry::Account(text.to_owned()));
    }
    let rest = text.strip_prefix("arn:aws:iam::")?;
    let (account, resource) = rest.split_once(':')?;
    if !is_account_id(account) {
        return None;
    }
    let account = account.to_owned();
    if resource == "root" {
        return Some(Entry::Account(account));
    }
    if let Some(name) = resource.strip_prefix("user/") {
        return is_iam_name(name).then(|| Entry::User {
            account,
            name: name.to_owned(),
        });
    }
    if let Some(name) = resource.strip_prefix("role/") {
        return is_iam_name(name).then(|| Entry::Role {
            account,
            name: name.to_owned(),
        });
    }
    None
}

/// Service principal names: DNS-like labels such as `disk.atrest` or
/// `ec2.amazonaws.com`. No wildcards.
fn service_entry(text: &str) -> Option<Entry> {
    let ok = !text.is_empty()
        && text.len() <= 256
        && text.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    ok.then(|| Entry::Service(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "111122223333";

    fn p(kind: PrincipalKind) -> Principal {
        Principal {
            account: A.into(),
            kind,
        }
    }

    fn entries(json: &str) -> Result<Vec<Entry>, PolicyError> {
        parse(&Json::parse(json).unwrap(), "Statement[0].Principal")
    }

    #[test]
    fn parses_principal_forms() {
        assert_eq!(entries(r#""*""#).unwrap(), [Entry::Everyone]);
        assert_eq!(entries(r#"{"AWS": "*"}"#).unwrap(), [Entry::Everyone]);
        assert_eq!(
            entries(r#"{"AWS": ["111122223333", "arn:aws:iam::444455556666:root"]}"#).unwrap(),
            [
                Entry::Account(A.into()),
                Entry::Account("444455556666".into())
            ]
        );
        assert_eq!(
            entries(r#"{"AWS": "arn:aws:iam::111122223333:user/division/Bob", "Service": "disk.atrest"}"#)
                .unwrap(),
            [
                Entry::User {
                    account: A.into(),
                    name: "division/Bob".into()
                },
                Entry::Service("disk.atrest".into())
            ]
        );
    }

    #[test]
    fn rejects_bad_principals() {
        let bad = |json: &str| entries(json).unwrap_err().0;
        assert_eq!(
            bad(r#"{"AWS": "arn:aws:iam::12:root"}"#),
            r#"Statement[0].Principal.AWS: "arn:aws:iam::12:root" is not a valid principal"#
        );
        for value in [
            "arn:aws:iam::111122223333:group/devs",
            "arn:aws:iam::111122223333:user/",
            "arn:aws:iam::111122223333:user/a//b",
            "arn:aws:iam::111122223333:user/*",
            "arn:aws:iam::*:root",
            "arn:aws:sts::111122223333:assumed-role/r/s",
            "arn:aws-cn:iam::111122223333:root",
            "11112222333",
            "1111222233334",
            "bob",
            "",
        ] {
            let m = bad(&format!(r#"{{"AWS": "{value}"}}"#));
            assert!(m.contains("is not a valid principal"), "{value}: {m}");
        }
        assert!(bad(r#"{"Service": "*"}"#).contains("not a valid principal"));
        assert!(bad(r#"{"Service": "a..b"}"#).contains("not a valid principal"));
        assert!(
            bad(r#"{"Federated": "cognito-identity.amazonaws.com"}"#).contains("not supported")
        );
        assert!(bad(r#"{"Users": "x"}"#).contains(r#"unknown principal type "Users""#));
        assert!(bad(r#"{}"#).contains("names no principal"));
        assert!(bad(r#"{"AWS": []}"#).contains("at least one"));
        assert!(bad(r#"{"AWS": [1]}"#).contains("Principal.AWS[0]: must be a string"));
        assert!(bad(r#"{"AWS": "*", "AWS": "*"}"#).contains("duplicate member"));
        assert!(bad(r#""111122223333""#).contains("use \"*\" or an object"));
        assert!(bad("7").contains("got a number"));
    }

    #[test]
    fn matching() {
        let root = p(PrincipalKind::Root);
        let bob = p(PrincipalKind::User("Bob".into()));
        let role = p(PrincipalKind::Role("R".into()));
        let svc = p(PrincipalKind::Service("disk.atrest".into()));
        let other_root = Principal {
            account: "444455556666".into(),
            kind: PrincipalKind::Root,
        };
        let listed = |json: &str| PrincipalSpec::Listed(entries(json).unwrap());
        let all_but = |json: &str| PrincipalSpec::AllBut(entries(json).unwrap());

        let star = listed(r#""*""#);
        for who in [&root, &bob, &role, &svc, &other_root] {
            assert_eq!(star.matches(who), Some(Match::Direct));
        }
        let account = listed(r#"{"AWS": "arn:aws:iam::111122223333:root"}"#);
        assert_eq!(account.matches(&root), Some(Match::Direct));
        assert_eq!(account.matches(&bob), Some(Match::ViaAccount));
        assert_eq!(account.matches(&role), Some(Match::ViaAccount));
        assert_eq!(account.matches(&svc), Some(Match::ViaAccount));
        assert_eq!(account.matches(&other_root), None);

        let user = listed(r#"{"AWS": ["arn:aws:iam::111122223333:user/Bob", "111122223333"]}"#);
        assert_eq!(user.matches(&bob), Some(Match::Direct));
        assert_eq!(user.matches(&role), Some(Match::ViaAccount));
        let role_arn = listed(r#"{"AWS": "arn:aws:iam::111122223333:role/Bob"}"#);
        assert_eq!(role_arn.matches(&bob), None);
        let service = listed(r#"{"Service": "DISK.atrest"}"#);
        assert_eq!(service.matches(&svc), Some(Match::Direct));
        assert_eq!(service.matches(&root), None);

        let not_bob = all_but(
            r#"{"AWS": ["arn:aws:iam::111122223333:user/Bob", "arn:aws:iam::111122223333:root"]}"#,
        );
        assert_eq!(not_bob.matches(&bob), None);
        assert_eq!(not_bob.matches(&root), None);
        assert_eq!(not_bob.matches(&role), Some(Match::Direct));
        assert_eq!(not_bob.matches(&other_root), Some(Match::Direct));
        assert_eq!(all_but(r#""*""#).matches(&svc), None);
    }
}
