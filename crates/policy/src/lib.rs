//! The AWS policy language, as AWS KMS key policies and IAM identity
//! policies use it: parsing with validation, and evaluation of one request.
//!
//! Owns: the grammar (Version, Statement, Sid, Effect, Principal,
//! NotPrincipal, Action, NotAction, Resource, NotResource, Condition), the
//! condition operators, and the matching rules. Knows nothing of keys,
//! accounts or storage: a caller describes a request as a [`Request`] and
//! combines the [`Evaluation`]s of the policies that apply (key policy,
//! identity policies, grants) itself.
//!
//! INTERFACE CONTRACT (fixed; the implementation fills it in):
//! * [`PolicyDocument::parse`] validates completely and fails with
//!   [`PolicyError`] whose message says what is wrong and where
//!   (`Statement[1].Condition.StringEquals: ...`).
//! * [`PolicyDocument::evaluate`] never panics and returns which statements
//!   matched, by effect and by how the principal matched.
//!
//! # Grammar
//!
//! As the IAM policy grammar, with these choices: every object member must
//! be known and appear once (duplicate members are malformed, as the
//! grammar notes say); `Id` is accepted in both kinds; lists (`Action`,
//! `Resource`, principal lists, condition values) must not be empty;
//! `Resource` is `*` or an ARN with six colon-separated parts; principals
//! are `*`, account ids and `arn:aws:iam::ACCOUNT:root|user/NAME|role/NAME`
//! under `AWS`, and service names under `Service` (`Federated` and
//! `CanonicalUser` are refused as unsupported). Condition operator names
//! are case-sensitive; besides the string, numeric, date, `Bool`, `Null`
//! and ARN families, `IpAddress`/`NotIpAddress` are supported;
//! `BinaryEquals` is refused. Numeric, date and boolean condition values
//! are not checked at parse time (a value that does not parse simply never
//! matches). Policy variables (`${aws:username}`, `${key, 'default'}`,
//! `${*}`, `${?}`, `${$}`) are resolved from the [`Context`] in `Resource`
//! and in string and ARN condition values of `"Version": "2012-10-17"`
//! documents; other versions take them literally.
//!
//! # Evaluation
//!
//! A statement matches when its principal (resource policies), action,
//! resource and every condition match. Actions match case-insensitively,
//! resources as ArnLike (part by part, case-sensitively). Principal
//! matching and the condition rules are described on [`Evaluation`] and in
//! the condition module: a key with no values counts as absent; a negated
//! operator on an absent key matches; `IfExists` matches an absent key;
//! `ForAllValues:` matches an absent key, `ForAnyValue:` does not; without
//! a set operator, a positive operator needs any request value to match and
//! a negated one needs every request value to match none of the listed
//! values. In a `NotPrincipal` element an account names only the account
//! principal (its root), not its users and roles.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::collections::BTreeMap;

/// Which kind of policy a document is. Resource policies (key policies) must
/// name a principal in every statement; identity policies must not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyKind {
    /// A key policy: every statement has `Principal` or `NotPrincipal`.
    Resource,
    /// An identity policy attached to a user or role: no `Principal`.
    Identity,
}

/// A malformed policy document. The message says what is wrong and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(pub String);

/// Who is making a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The 12-digit account the principal belongs to.
    pub account: String,
    /// What the principal is.
    pub kind: PrincipalKind,
}

/// The kinds of principal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrincipalKind {
    /// The account's root: `arn:aws:iam::ACCOUNT:root`.
    Root,
    /// A user: `arn:aws:iam::ACCOUNT:user/NAME` (NAME may contain `/` paths).
    User(String),
    /// A role: `arn:aws:iam::ACCOUNT:role/NAME`.
    Role(String),
    /// A service principal, such as `disk.atrest`; matched by
    /// `"Principal": {"Service": "disk.atrest"}`. Its `account` is the
    /// account the service runs in.
    Service(String),
}

impl Principal {
    /// The principal's ARN (`arn:aws:iam::ACCOUNT:root`, `:user/NAME`,
    /// `:role/NAME`); a service principal's is its service name.
    #[must_use]
    pub fn arn(&self) -> String {
        match &self.kind {
            // Every audited request names its principal: `concat` is a
            // fraction of `format!`'s cost.
            PrincipalKind::Root => ["arn:aws:iam::", self.account.as_str(), ":root"].concat(),
            PrincipalKind::User(n) => {
                ["arn:aws:iam::", self.account.as_str(), ":user/", n].concat()
            }
            PrincipalKind::Role(n) => {
                ["arn:aws:iam::", self.account.as_str(), ":role/", n].concat()
            }
            PrincipalKind::Service(s) => s.clone(),
        }
    }
}

/// The values of the condition keys of one request. Keys are compared
/// case-insensitively (store them in any case); each key may have several
/// values (multivalued keys such as `kms:EncryptionContextKeys`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context {
    values: BTreeMap<String, Vec<String>>,
}

impl Context {
    /// An empty context.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a single-valued key.
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        self.values
            .insert(key.to_ascii_lowercase(), vec![value.into()]);
    }

    /// Sets a multivalued key (an empty list is present but has no values).
    pub fn set_many(&mut self, key: &str, values: Vec<String>) {
        self.values.insert(key.to_ascii_lowercase(), values);
    }

    /// The values of `key`, if present.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&[String]> {
        self.values
            .get(&key.to_ascii_lowercase())
            .map(Vec::as_slice)
    }
}

/// Where a request's condition keys get their values: a [`Context`], or one
/// built only when a policy first asks ([`std::cell::LazyCell`] of a
/// context). Most policies (the default key policy among them) have no
/// condition and no policy variable, so their requests never build one.
pub trait ConditionKeys: std::fmt::Debug {
    /// The values of `key` (compared case-insensitively), if present.
    fn values(&self, key: &str) -> Option<&[String]>;
}

impl ConditionKeys for Context {
    fn values(&self, key: &str) -> Option<&[String]> {
        self.get(key)
    }
}

impl<F: FnOnce() -> Context> ConditionKeys for std::cell::LazyCell<Context, F> {
    fn values(&self, key: &str) -> Option<&[String]> {
        std::cell::LazyCell::force(self).get(key)
    }
}

/// One request to evaluate.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// Who asks.
    pub principal: &'a Principal,
    /// The action, such as `kms:Encrypt`.
    pub action: &'a str,
    /// The resource ARN, such as a key ARN.
    pub resource: &'a str,
    /// Condition key values. The evaluator adds nothing itself: the caller
    /// sets `aws:PrincipalArn`, `aws:PrincipalAccount`, `kms:CallerAccount`
    /// and the request's own keys.
    pub context: &'a dyn ConditionKeys,
}

/// What one policy says about one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Evaluation {
    /// A `Deny` statement matched.
    pub denied: bool,
    /// An `Allow` statement matched whose principal names the caller itself
    /// (its user, role or service ARN, `*`, or by `NotPrincipal`). For
    /// identity policies, any matching `Allow` sets this.
    pub allowed_directly: bool,
    /// An `Allow` statement matched only because it names the caller's
    /// account (`arn:aws:iam::ACCOUNT:root` or `ACCOUNT`); AWS requires an
    /// identity policy as well, unless the caller is that account's root.
    pub allowed_via_account: bool,
}

/// A parsed, validated policy document.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyDocument {
    kind: PolicyKind,
    // Filled in by the implementation.
    statements: Vec<statement::Statement>,
}

mod condition;
mod json;
mod pattern;
mod principal;
mod statement;
mod values;

impl PolicyDocument {
    /// The largest document accepted, in bytes (AWS's key policy limit).
    pub const MAX_LEN: usize = 32 * 1024;

    /// Parses and validates a document of `kind`.
    pub fn parse(json: &str, kind: PolicyKind) -> Result<Self, PolicyError> {
        statement::parse(json, kind)
    }

    /// Evaluates `request` against every statement.
    #[must_use]
    pub fn evaluate(&self, request: &Request<'_>) -> Evaluation {
        statement::evaluate(self, request)
    }

    /// The kind of document.
    #[must_use]
    pub fn kind(&self) -> PolicyKind {
        self.kind
    }
}
