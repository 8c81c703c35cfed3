//! The `Condition` element: operators, their parsing and their evaluation.
//!
//! Evaluation rules (IAM User Guide, "Condition operators", "Creating a
//! condition with multiple keys or values", "Single-valued vs. multivalued
//! context keys"):
//!
//! * Every operator block of a statement, and every key within a block,
//!   must match (AND); for one key, any listed value may match (OR). A
//!   negated operator (`StringNotEquals`, `StringNotEqualsIgnoreCase`,
//!   `StringNotLike`, `NumericNotEquals`, `DateNotEquals`, `ArnNotEquals`,
//!   `ArnNotLike`, `NotIpAddress`) matches when the request value matches
//!   none of the listed values.
//! * A key is *absent* when the context does not have it or has it with no
//!   values. Absent: a plain operator does not match, a negated one does;
//!   `...IfExists` matches; `Null: true` matches (and `Null: false` matches a
//!   present key); `ForAllValues:` matches; `ForAnyValue:` does not (unless
//!   `IfExists`).
//! * Present with several values: `ForAnyValue:` needs one request value
//!   that matches, `ForAllValues:` needs every request value to match. With
//!   no set operator a positive operator needs any request value to match
//!   and a negated operator needs every request value to match none of the
//!   listed values, so a negated operator is exactly the negation of its
//!   positive form.
//! * Numbers, dates, booleans and IP addresses are compared by value. A
//!   request or policy value that does not parse as the operator's type
//!   never satisfies a comparison, positive or negated: `NumericNotEquals`
//!   with the request value `abc` does not match.

use std::net::IpAddr;

use crate::json::Json;
use crate::pattern::Pattern;
use crate::values::{self, Instant};
use crate::{ConditionKeys, PolicyError};

/// One condition: an operator applied to one key.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Condition {
    op: Op,
    set: Option<SetOp>,
    if_exists: bool,
    key: String,
    values: Values,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SetOp {
    ForAnyValue,
    ForAllValues,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmp {
    Eq,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Cmp {
    fn holds<T: PartialOrd>(self, request: T, policy: T) -> bool {
        match self {
            Cmp::Eq => request == policy,
            Cmp::Lt => request < policy,
            Cmp::Le => request <= policy,
            Cmp::Gt => request > policy,
            Cmp::Ge => request >= policy,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Base {
    StringEquals,
    StringEqualsIgnoreCase,
    StringLike,
    Numeric(Cmp),
    Date(Cmp),
    Bool,
    Null,
    Arn,
    IpAddress,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Op {
    base: Base,
    negated: bool,
}

/// The operator names, without set operator or `IfExists`.
const OPERATORS: &[(&str, Base, bool)] = &[
    ("StringEquals", Base::StringEquals, false),
    ("StringNotEquals", Base::StringEquals, true),
    (
        "StringEqualsIgnoreCase",
        Base::StringEqualsIgnoreCase,
        false,
    ),
    (
        "StringNotEqualsIgnoreCase",
        Base::StringEqualsIgnoreCase,
        true,
    ),
    ("StringLike", Base::StringLike, false),
    ("StringNotLike", Base::StringLike, true),
    ("NumericEquals", Base::Numeric(Cmp::Eq), false),
    ("NumericNotEquals", Base::Numeric(Cmp::Eq), true),
    ("NumericLessThan", Base::Numeric(Cmp::Lt), false),
    ("NumericLessThanEquals", Base::Numeric(Cmp::Le), false),
    ("NumericGreaterThan", Base::Numeric(Cmp::Gt), false),
    ("NumericGreaterThanEquals", Base::Numeric(Cmp::Ge), false),
    ("DateEquals", Base::Date(Cmp::Eq), false),
    ("DateNotEquals", Base::Date(Cmp::Eq), true),
    ("DateLessThan", Base::Date(Cmp::Lt), false),
    ("DateLessThanEquals", Base::Date(Cmp::Le), false),
    ("DateGreaterThan", Base::Date(Cmp::Gt), false),
    ("DateGreaterThanEquals", Base::Date(Cmp::Ge), false),
    ("Bool", Base::Bool, false),
    ("Null", Base::Null, false),
    ("ArnEquals", Base::Arn, false),
    ("ArnLike", Base::Arn, false),
    ("ArnNotEquals", Base::Arn, true),
    ("ArnNotLike", Base::Arn, true),
    ("IpAddress", Base::IpAddress, false),
    ("NotIpAddress", Base::IpAddress, true),
];

/// The policy's values, parsed for the operator.
#[derive(Debug, Clone, PartialEq)]
enum Values {
    /// String and ARN operators.
    Patterns(Vec<Pattern>),
    Numbers(Vec<Option<f64>>),
    Dates(Vec<Option<Instant>>),
    Bools(Vec<Option<bool>>),
    Nulls(Vec<bool>),
    Ips(Vec<Option<Cidr>>),
}

/// Parses a statement's `Condition` element. `variables`: whether `${...}`
/// is a policy variable (Version 2012-10-17).
pub(crate) fn parse_block(
    json: &Json,
    path: &str,
    variables: bool,
) -> Result<Vec<Condition>, PolicyError> {
    let Json::Object(operators) = json else {
        return Err(err(
            path,
            format!(
                "must be an object of condition operators, got {}",
                json.kind()
            ),
        ));
    };
    let mut out = Vec::new();
    for (i, (name, keys)) in operators.iter().enumerate() {
        if operators[..i].iter().any(|(n, _)| n == name) {
            return Err(err(path, format!("duplicate operator \"{name}\"")));
        }
        let (op, set, if_exists) = parse_operator(name, path)?;
        let op_path = format!("{path}.{name}");
        let Json::Object(keys) = keys else {
            return Err(err(
                &op_path,
                format!("must be an object of condition keys, got {}", keys.kind()),
            ));
        };
        for (j, (key, value)) in keys.iter().enumerate() {
            if keys[..j].iter().any(|(k, _)| k == key) {
                return Err(err(&op_path, format!("duplicate condition key \"{key}\"")));
            }
            if key.trim().is_empty() {
                return Err(err(&op_path, "a condition key is empty".into()));
            }
            let key_path = format!("{op_path}.{key}");
            let texts = value_texts(value, &key_path)?;
            let values = parse_values(op, &texts, &key_path, variables)?;
            out.push(Condition {
                op,
                set,
                if_exists,
                key: key.clone(),
                values,
            });
        }
    }
    Ok(out)
}

fn err(path: &str, msg: String) -> PolicyError {
    PolicyError(format!("{path}: {msg}"))
}

fn parse_operator(name: &str, path: &str) -> Result<(Op, Option<SetOp>, bool), PolicyError> {
    let (set, rest) = if let Some(rest) = name.strip_prefix("ForAnyValue:") {
        (Some(SetOp::ForAnyValue), rest)
    } else if let Some(rest) = name.strip_prefix("ForAllValues:") {
        (Some(SetOp::ForAllValues), rest)
    } else {
        (None, name)
    };
    let (base_name, if_exists) = match rest.strip_suffix("IfExists") {
        Some(b) => (b, true),
        None => (rest, false),
    };
    let Some(&(_, base, negated)) = OPERATORS.iter().find(|(n, _, _)| *n == base_name) else {
        let hint = match base_name {
            "BinaryEquals" => " (binary conditions are not supported)",
            _ => "",
        };
        return Err(err(path, format!("unknown operator \"{name}\"{hint}")));
    };
    if base == Base::Null && set.is_some() {
        return Err(err(
            path,
            format!("operator \"{name}\": Null does not take ForAnyValue: or ForAllValues:"),
        ));
    }
    if base == Base::Null && if_exists {
        return Err(err(
            path,
            format!("operator \"{name}\": Null does not take IfExists"),
        ));
    }
    Ok((Op { base, negated }, set, if_exists))
}

/// A key's values: one scalar or a non-empty array of scalars, as text.
fn value_texts(value: &Json, path: &str) -> Result<Vec<String>, PolicyError> {
    let scalar = |v: &Json| {
        v.scalar_text().ok_or_else(|| {
            err(
                path,
                format!(
                    "a condition value must be a string, number or boolean, got {}",
                    v.kind()
                ),
            )
        })
    };
    match value {
        Json::Array(items) if items.is_empty() => {
            Err(err(path, "must list at least one value".into()))
        }
        Json::Array(items) => items.iter().map(scalar).collect(),
        other => Ok(vec![scalar(other)?]),
    }
}

fn parse_values(
    op: Op,
    texts: &[String],
    path: &str,
    variables: bool,
) -> Result<Values, PolicyError> {
    let patterns = |wildcards: bool| {
        Values::Patterns(
            texts
                .iter()
                .map(|t| Pattern::compile(t, wildcards, variables))
                .collect(),
        )
    };
    Ok(match op.base {
        Base::StringEquals | Base::StringEqualsIgnoreCase => patterns(false),
        // ArnEquals and ArnLike behave identically: both take wildcards.
        Base::StringLike | Base::Arn => patterns(true),
        Base::Numeric(_) => Values::Numbers(texts.iter().map(|t| values::number(t)).collect()),
        Base::Date(_) => Values::Dates(texts.iter().map(|t| values::date(t)).collect()),
        Base::Bool => Values::Bools(texts.iter().map(|t| values::boolean(t)).collect()),
        Base::IpAddress => Values::Ips(texts.iter().map(|t| Cidr::parse(t)).collect()),
        Base::Null => Values::Nulls(
            texts
                .iter()
                .map(|t| {
                    values::boolean(t)
                        .ok_or_else(|| err(path, format!("\"{t}\" is not true or false")))
                })
                .collect::<Result<_, _>>()?,
        ),
    })
}

impl Condition {
    /// Whether the condition holds for `ctx`.
    pub(crate) fn matches(&self, ctx: &dyn ConditionKeys) -> bool {
        let request = ctx.values(&self.key).filter(|v| !v.is_empty());
        if let Values::Nulls(expected) = &self.values {
            let is_null = request.is_none();
            return expected.contains(&is_null);
        }
        let Some(request) = request else {
            return match self.set {
                Some(SetOp::ForAllValues) => true,
                Some(SetOp::ForAnyValue) => self.if_exists,
                None => self.if_exists || self.op.negated,
            };
        };
        let each = |r: &String| self.value_matches(r, ctx);
        match self.set {
            Some(SetOp::ForAllValues) => request.iter().all(each),
            Some(SetOp::ForAnyValue) => request.iter().any(each),
            None if self.op.negated => request.iter().all(each),
            None => request.iter().any(each),
        }
    }

    /// Whether one request value satisfies the operator: a positive
    /// operator needs one listed value to match, a negated one needs every
    /// listed value not to match.
    fn value_matches(&self, request: &str, ctx: &dyn ConditionKeys) -> bool {
        let negated = self.op.negated;
        match (&self.values, self.op.base) {
            (Values::Patterns(ps), base) => {
                let one = |p: &Pattern| match base {
                    Base::Arn => p.matches_arn(request, ctx),
                    Base::StringEqualsIgnoreCase => p.matches(request, true, ctx),
                    _ => p.matches(request, false, ctx),
                };
                if negated {
                    !ps.iter().any(one)
                } else {
                    ps.iter().any(one)
                }
            }
            (Values::Numbers(ps), Base::Numeric(cmp)) => {
                let Some(r) = values::number(request) else {
                    return false;
                };
                compare(ps, negated, |p| cmp.holds(r, p))
            }
            (Values::Dates(ps), Base::Date(cmp)) => {
                let Some(r) = values::date(request) else {
                    return false;
                };
                compare(ps, negated, |p| cmp.holds(r, p))
            }
            (Values::Bools(ps), _) => {
                let Some(r) = values::boolean(request) else {
                    return false;
                };
                ps.contains(&Some(r))
            }
            (Values::Ips(ps), _) => {
                let Ok(r) = request.trim().parse::<IpAddr>() else {
                    return false;
                };
                compare(ps, negated, |p: Cidr| p.contains(r))
            }
            // Null is handled by the caller; the other pairs cannot occur.
            _ => false,
        }
    }
}

/// Typed comparison against the listed values. Positive: some listed value
/// parses and `holds`. Negated: every listed value parses and does not
/// `hold` (an unparsable listed value makes the negated operator fail
/// rather than match).
fn compare<T: Copy>(listed: &[Option<T>], negated: bool, holds: impl Fn(T) -> bool) -> bool {
    if negated {
        listed.iter().all(|p| p.is_some_and(|p| !holds(p)))
    } else {
        listed.iter().any(|p| p.is_some_and(&holds))
    }
}

/// An IP address range: `203.0.113.0/24`, `2001:DB8::/32`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    fn parse(text: &str) -> Option<Self> {
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, Some(p)),
            None => (text.trim().parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().ok().filter(|&n| n <= max)?
            }
            Some(_) => return None,
        };
        Some(Self { addr, prefix })
    }

    fn contains(self, ip: IpAddr) -> bool {
        let (net, ip, bits) = match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => (
                u128::from(u32::from(n)) << 96,
                u128::from(u32::from(i)) << 96,
                self.prefix,
            ),
            (IpAddr::V6(n), IpAddr::V6(i)) => (u128::from(n), u128::from(i), self.prefix),
            _ => return false,
        };
        if bits == 0 {
            return true;
        }
        let mask = u128::MAX << (128 - u32::from(bits));
        net & mask == ip & mask
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Context;

    fn block(json: &str) -> Result<Vec<Condition>, PolicyError> {
        parse_block(&Json::parse(json).unwrap(), "Statement[0].Condition", true)
    }

    fn holds(json: &str, ctx: &dyn ConditionKeys) -> bool {
        block(json).unwrap().iter().all(|c| c.matches(ctx))
    }

    fn msg(json: &str) -> String {
        block(json).unwrap_err().0
    }

    #[test]
    fn operator_names() {
        for (name, _, _) in OPERATORS {
            let plain = format!(r#"{{"{name}": {{"k": "true"}}}}"#);
            assert!(block(&plain).is_ok(), "{name}");
            if *name != "Null" {
                for form in [
                    format!("{name}IfExists"),
                    format!("ForAnyValue:{name}"),
                    format!("ForAllValues:{name}IfExists"),
                ] {
                    assert!(
                        block(&format!(r#"{{"{form}": {{"k": "1"}}}}"#)).is_ok(),
                        "{form}"
                    );
                }
            }
        }
        assert_eq!(
            msg(r#"{"StringEqualz": {"k": "v"}}"#),
            r#"Statement[0].Condition: unknown operator "StringEqualz""#
        );
        assert!(msg(r#"{"stringequals": {"k": "v"}}"#).contains("unknown operator"));
        assert!(msg(r#"{"ForSomeValues:StringEquals": {"k": "v"}}"#).contains("unknown operator"));
        assert!(msg(r#"{"BinaryEquals": {"k": "dg=="}}"#).contains("not supported"));
        assert!(msg(r#"{"NullIfExists": {"k": true}}"#).contains("IfExists"));
        assert!(msg(r#"{"ForAnyValue:Null": {"k": true}}"#).contains("ForAnyValue"));
    }

    #[test]
    fn value_shapes() {
        assert_eq!(
            msg(r#"{"StringEquals": {"k": {"a": "b"}}}"#),
            "Statement[0].Condition.StringEquals.k: a condition value must be a string, \
             number or boolean, got an object"
        );
        assert!(msg(r#"{"StringEquals": {"k": [["a"]]}}"#).contains("got an array"));
        assert!(msg(r#"{"StringEquals": {"k": null}}"#).contains("got null"));
        assert!(msg(r#"{"StringEquals": {"k": []}}"#).contains("at least one value"));
        assert!(msg(r#"{"StringEquals": "k"}"#).contains("got a string"));
        assert!(msg(r#"["StringEquals"]"#).contains("got an array"));
        assert!(msg(r#"{"StringEquals": {"": "v"}}"#).contains("empty"));
        assert!(msg(r#"{"Null": {"k": "maybe"}}"#).contains(r#""maybe" is not true or false"#));
        assert!(
            msg(r#"{"StringEquals": {"k": "a", "k": "b"}}"#).contains("duplicate condition key")
        );
        assert!(
            msg(r#"{"StringEquals": {"k": "a"}, "StringEquals": {"j": "b"}}"#)
                .contains("duplicate operator")
        );
        // Numbers and booleans are compared by their string form.
        let mut ctx = Context::new();
        ctx.set("k", "10103.0");
        ctx.set("b", "true");
        assert!(holds(
            r#"{"StringEquals": {"k": 10103.0, "b": true}}"#,
            &ctx
        ));
    }

    fn ctx(pairs: &[(&str, &[&str])]) -> Context {
        let mut c = Context::new();
        for (k, vs) in pairs {
            c.set_many(k, vs.iter().map(|v| (*v).to_owned()).collect());
        }
        c
    }

    #[test]
    fn string_operators() {
        let c = ctx(&[
            ("aws:username", &["Alice"]),
            ("kms:ViaService", &["ec2.us-west-2.amazonaws.com"]),
        ]);
        // Case-sensitive values, case-insensitive keys.
        assert!(holds(r#"{"StringEquals": {"AWS:USERNAME": "Alice"}}"#, &c));
        assert!(!holds(r#"{"StringEquals": {"aws:username": "alice"}}"#, &c));
        assert!(holds(
            r#"{"StringEqualsIgnoreCase": {"aws:username": "aLICE"}}"#,
            &c
        ));
        assert!(!holds(
            r#"{"StringNotEqualsIgnoreCase": {"aws:username": "aLICE"}}"#,
            &c
        ));
        assert!(holds(
            r#"{"StringNotEquals": {"aws:username": "alice"}}"#,
            &c
        ));
        // StringEquals takes `*` literally; StringLike as a wildcard.
        assert!(!holds(r#"{"StringEquals": {"aws:username": "A*"}}"#, &c));
        assert!(holds(r#"{"StringLike": {"aws:username": "A*"}}"#, &c));
        assert!(holds(r#"{"StringLike": {"aws:username": "Al?ce"}}"#, &c));
        assert!(!holds(r#"{"StringLike": {"aws:username": "a*"}}"#, &c));
        assert!(holds(r#"{"StringNotLike": {"aws:username": "B*"}}"#, &c));
        assert!(!holds(
            r#"{"StringNotLike": {"aws:username": ["B*", "A*"]}}"#,
            &c
        ));
        // Several values: OR. Several keys: AND. Several operators: AND.
        assert!(holds(
            r#"{"StringEquals": {"aws:username": ["Bob", "Alice"]}}"#,
            &c
        ));
        assert!(holds(
            r#"{"StringEquals": {"aws:username": "Alice", "kms:ViaService": "ec2.us-west-2.amazonaws.com"}}"#,
            &c
        ));
        assert!(!holds(
            r#"{"StringEquals": {"aws:username": "Alice", "kms:ViaService": "rds.us-west-2.amazonaws.com"}}"#,
            &c
        ));
        assert!(!holds(
            r#"{"StringEquals": {"aws:username": "Alice"}, "StringLike": {"kms:ViaService": "rds.*"}}"#,
            &c
        ));
        // Absent key: positive operators fail, negated ones match.
        let empty = Context::new();
        for op in ["StringEquals", "StringEqualsIgnoreCase", "StringLike"] {
            assert!(
                !holds(&format!(r#"{{"{op}": {{"k": "v"}}}}"#), &empty),
                "{op}"
            );
        }
        for op in [
            "StringNotEquals",
            "StringNotEqualsIgnoreCase",
            "StringNotLike",
        ] {
            assert!(
                holds(&format!(r#"{{"{op}": {{"k": "v"}}}}"#), &empty),
                "{op}"
            );
        }
        // Policy variables (Version 2012-10-17).
        let v = ctx(&[
            ("aws:username", &["bob"]),
            ("kms:EncryptionContext:user", &["bob"]),
        ]);
        assert!(holds(
            r#"{"StringEquals": {"kms:EncryptionContext:user": "${aws:username}"}}"#,
            &v
        ));
        let w = ctx(&[
            ("aws:username", &["alice"]),
            ("kms:EncryptionContext:user", &["bob"]),
        ]);
        assert!(!holds(
            r#"{"StringEquals": {"kms:EncryptionContext:user": "${aws:username}"}}"#,
            &w
        ));
    }

    #[test]
    fn numeric_operators() {
        let c = ctx(&[("n", &["10"])]);
        let t = |op: &str, v: &str| holds(&format!(r#"{{"{op}": {{"n": {v}}}}}"#), &c);
        assert!(t("NumericEquals", "10"));
        assert!(t("NumericEquals", "\"10.0\""));
        assert!(t("NumericEquals", "\"1e1\""));
        assert!(!t("NumericEquals", "11"));
        assert!(t("NumericNotEquals", "11"));
        assert!(!t("NumericNotEquals", "[11, 10]"));
        assert!(t("NumericLessThan", "11"));
        assert!(!t("NumericLessThan", "10"));
        assert!(t("NumericLessThanEquals", "10"));
        assert!(t("NumericGreaterThan", "9.5"));
        assert!(!t("NumericGreaterThan", "10"));
        assert!(t("NumericGreaterThanEquals", "10"));
        assert!(t("NumericGreaterThanEquals", "[50, 10]"));
        // A policy value that is not a number matches nothing, even negated.
        assert!(!t("NumericEquals", "\"ten\""));
        assert!(!t("NumericNotEquals", "\"ten\""));
        assert!(!t("NumericLessThan", "\"\""));
        // Nor does a request value that is not a number.
        let bad = ctx(&[("n", &["ten"])]);
        for op in [
            "NumericEquals",
            "NumericNotEquals",
            "NumericLessThan",
            "NumericGreaterThanEquals",
        ] {
            assert!(!holds(&format!(r#"{{"{op}": {{"n": 10}}}}"#), &bad), "{op}");
        }
        // Absent: positive false, negated true, IfExists true.
        let empty = Context::new();
        assert!(!holds(r#"{"NumericLessThan": {"n": 10}}"#, &empty));
        assert!(holds(r#"{"NumericNotEquals": {"n": 10}}"#, &empty));
        assert!(holds(r#"{"NumericLessThanIfExists": {"n": 10}}"#, &empty));
        assert!(!holds(r#"{"NumericLessThanIfExists": {"n": 10}}"#, &c));
    }

    #[test]
    fn date_operators() {
        let c = ctx(&[("aws:CurrentTime", &["2020-06-01T12:00:00Z"])]);
        let t =
            |op: &str, v: &str| holds(&format!(r#"{{"{op}": {{"aws:CurrentTime": {v}}}}}"#), &c);
        assert!(t("DateEquals", "\"2020-06-01T12:00:00Z\""));
        assert!(t("DateEquals", "\"2020-06-01T14:00:00+02:00\""));
        assert!(t("DateEquals", "1591012800"));
        assert!(t("DateNotEquals", "\"2020-06-01\""));
        assert!(t("DateLessThan", "\"2021-01-01T00:00:00Z\""));
        assert!(!t("DateLessThan", "\"2020-06-01T12:00:00Z\""));
        assert!(t("DateLessThanEquals", "\"2020-06-01T12:00:00Z\""));
        assert!(t("DateGreaterThan", "\"2020-01-01T00:00:01Z\""));
        assert!(!t("DateGreaterThan", "\"2020-06-01T12:00:00Z\""));
        assert!(t("DateGreaterThanEquals", "\"2020-06-01T12:00:00Z\""));
        // Epoch seconds in the request compare with ISO dates in the policy.
        let epoch = ctx(&[("aws:EpochTime", &["1591012800"])]);
        assert!(holds(
            r#"{"DateGreaterThanEquals": {"aws:EpochTime": "2020-06-01T12:00:00Z"}}"#,
            &epoch
        ));
        // Unparsable dates never match.
        assert!(!t("DateLessThan", "\"tomorrow\""));
        assert!(!t("DateNotEquals", "\"tomorrow\""));
        let bad = ctx(&[("aws:CurrentTime", &["June 1st"])]);
        assert!(!holds(
            r#"{"DateGreaterThan": {"aws:CurrentTime": "2020-01-01"}}"#,
            &bad
        ));
        assert!(!holds(
            r#"{"DateNotEquals": {"aws:CurrentTime": "2020-01-01"}}"#,
            &bad
        ));
        // Absent.
        let empty = Context::new();
        assert!(!holds(
            r#"{"DateGreaterThan": {"aws:CurrentTime": "2020-01-01"}}"#,
            &empty
        ));
        assert!(holds(
            r#"{"DateNotEquals": {"aws:CurrentTime": "2020-01-01"}}"#,
            &empty
        ));
        assert!(holds(
            r#"{"DateGreaterThanIfExists": {"aws:CurrentTime": "2020-01-01"}}"#,
            &empty
        ));
    }

    #[test]
    fn bool_operator() {
        let c = ctx(&[("kms:GrantIsForAWSResource", &["true"])]);
        assert!(holds(
            r#"{"Bool": {"kms:GrantIsForAWSResource": true}}"#,
            &c
        ));
        assert!(holds(
            r#"{"Bool": {"kms:GrantIsForAWSResource": "TRUE"}}"#,
            &c
        ));
        assert!(!holds(
            r#"{"Bool": {"kms:GrantIsForAWSResource": false}}"#,
            &c
        ));
        assert!(!holds(
            r#"{"Bool": {"kms:GrantIsForAWSResource": "yes"}}"#,
            &c
        ));
        let odd = ctx(&[("kms:GrantIsForAWSResource", &["1"])]);
        assert!(!holds(
            r#"{"Bool": {"kms:GrantIsForAWSResource": true}}"#,
            &odd
        ));
        assert!(!holds(
            r#"{"Bool": {"kms:GrantIsForAWSResource": false}}"#,
            &odd
        ));
        let empty = Context::new();
        assert!(!holds(
            r#"{"Bool": {"kms:GrantIsForAWSResource": true}}"#,
            &empty
        ));
        assert!(!holds(
            r#"{"Bool": {"kms:GrantIsForAWSResource": false}}"#,
            &empty
        ));
        assert!(holds(
            r#"{"BoolIfExists": {"kms:GrantIsForAWSResource": false}}"#,
            &empty
        ));
        assert!(!holds(
            r#"{"BoolIfExists": {"kms:GrantIsForAWSResource": false}}"#,
            &c
        ));
    }

    #[test]
    fn null_operator() {
        let present = ctx(&[("k", &["v"])]);
        let empty_list = ctx(&[("k", &[])]);
        let absent = Context::new();
        assert!(holds(r#"{"Null": {"k": true}}"#, &absent));
        assert!(holds(r#"{"Null": {"k": "true"}}"#, &empty_list));
        assert!(!holds(r#"{"Null": {"k": true}}"#, &present));
        assert!(holds(r#"{"Null": {"k": false}}"#, &present));
        assert!(!holds(r#"{"Null": {"k": "False"}}"#, &absent));
        assert!(!holds(r#"{"Null": {"k": false}}"#, &empty_list));
        // Both values: true either way.
        assert!(holds(r#"{"Null": {"k": [true, false]}}"#, &absent));
        assert!(holds(r#"{"Null": {"k": [true, false]}}"#, &present));
    }

    #[test]
    fn arn_operators() {
        let c = ctx(&[(
            "aws:SourceArn",
            &["arn:aws:sns:us-east-1:123456789012:topic"],
        )]);
        assert!(holds(
            r#"{"ArnEquals": {"aws:SourceArn": "arn:aws:sns:us-east-1:123456789012:topic"}}"#,
            &c
        ));
        assert!(holds(
            r#"{"ArnLike": {"aws:SourceArn": "arn:aws:sns:*:123456789012:*"}}"#,
            &c
        ));
        assert!(holds(
            r#"{"ArnEquals": {"aws:SourceArn": "arn:aws:sns:*:123456789012:*"}}"#,
            &c
        ));
        assert!(!holds(
            r#"{"ArnLike": {"aws:SourceArn": "arn:aws:sns:*:999999999999:*"}}"#,
            &c
        ));
        assert!(!holds(
            r#"{"ArnLike": {"aws:SourceArn": "arn:aws:SNS:*:123456789012:*"}}"#,
            &c
        ));
        // `*` does not cross a colon before the resource part.
        assert!(!holds(
            r#"{"ArnLike": {"aws:SourceArn": "arn:aws:*:123456789012:topic"}}"#,
            &c
        ));
        assert!(holds(
            r#"{"ArnNotLike": {"aws:SourceArn": "arn:aws:sqs:*:*:*"}}"#,
            &c
        ));
        assert!(!holds(
            r#"{"ArnNotEquals": {"aws:SourceArn": "arn:aws:sns:*:*:*"}}"#,
            &c
        ));
        // A request value that is not an ARN matches no ARN pattern.
        let bad = ctx(&[("aws:SourceArn", &["topic"])]);
        assert!(!holds(
            r#"{"ArnLike": {"aws:SourceArn": "arn:aws:sns:*:*:*"}}"#,
            &bad
        ));
        let empty = Context::new();
        assert!(!holds(
            r#"{"ArnLike": {"aws:SourceArn": "arn:aws:sns:*:*:*"}}"#,
            &empty
        ));
        assert!(holds(
            r#"{"ArnNotLike": {"aws:SourceArn": "arn:aws:sns:*:*:*"}}"#,
            &empty
        ));
        assert!(holds(
            r#"{"ArnLikeIfExists": {"aws:SourceArn": "arn:aws:sqs:*:*:*"}}"#,
            &empty
        ));
    }

    #[test]
    fn if_exists_on_every_family() {
        let empty = Context::new();
        for op in [
            "StringEqualsIfExists",
            "StringNotEqualsIfExists",
            "StringLikeIfExists",
            "NumericEqualsIfExists",
            "DateEqualsIfExists",
            "BoolIfExists",
            "ArnLikeIfExists",
            "IpAddressIfExists",
        ] {
            assert!(
                holds(&format!(r#"{{"{op}": {{"k": "1"}}}}"#), &empty),
                "{op}"
            );
        }
        // Present: the operator decides.
        let c = ctx(&[("k", &["2"])]);
        assert!(!holds(r#"{"StringEqualsIfExists": {"k": "1"}}"#, &c));
        assert!(holds(r#"{"StringNotEqualsIfExists": {"k": "1"}}"#, &c));
        assert!(!holds(r#"{"NumericEqualsIfExists": {"k": "1"}}"#, &c));
    }

    #[test]
    fn set_operators() {
        let keys = |vs: &[&str]| ctx(&[("kms:EncryptionContextKeys", vs)]);
        let absent = Context::new();
        let empty = keys(&[]);
        let one = keys(&["AppName"]);
        let two = keys(&["AppName", "Project"]);
        let other = keys(&["Project"]);

        let any = r#"{"ForAnyValue:StringEquals": {"kms:EncryptionContextKeys": "AppName"}}"#;
        assert!(holds(any, &one));
        assert!(holds(any, &two));
        assert!(!holds(any, &other));
        assert!(!holds(any, &empty));
        assert!(!holds(any, &absent));

        let all =
            r#"{"ForAllValues:StringEquals": {"kms:EncryptionContextKeys": ["AppName", "Stage"]}}"#;
        assert!(holds(all, &one));
        assert!(!holds(all, &two));
        assert!(!holds(all, &other));
        assert!(holds(all, &empty));
        assert!(holds(all, &absent));

        // With IfExists, ForAnyValue matches an absent key too.
        let any_if =
            r#"{"ForAnyValue:StringEqualsIfExists": {"kms:EncryptionContextKeys": "AppName"}}"#;
        assert!(holds(any_if, &absent));
        assert!(!holds(any_if, &other));

        // Negated operators: each request value must match none of the listed values.
        let any_not = r#"{"ForAnyValue:StringNotEquals": {"kms:EncryptionContextKeys": ["AppName", "Stage"]}}"#;
        assert!(holds(any_not, &two));
        assert!(!holds(any_not, &one));
        assert!(!holds(any_not, &absent));
        let all_not = r#"{"ForAllValues:StringNotLike": {"kms:EncryptionContextKeys": ["App*"]}}"#;
        assert!(holds(all_not, &other));
        assert!(!holds(all_not, &two));
        assert!(holds(all_not, &absent));

        // Set operators with the other families.
        let nums = ctx(&[("n", &["1", "5"])]);
        assert!(holds(
            r#"{"ForAllValues:NumericLessThan": {"n": 10}}"#,
            &nums
        ));
        assert!(!holds(
            r#"{"ForAllValues:NumericLessThan": {"n": 3}}"#,
            &nums
        ));
        assert!(holds(r#"{"ForAnyValue:NumericLessThan": {"n": 3}}"#, &nums));
        let arns = ctx(&[("a", &["arn:aws:kms:us-east-1:111122223333:key/1", "nope"])]);
        assert!(holds(
            r#"{"ForAnyValue:ArnLike": {"a": "arn:aws:kms:*:*:key/*"}}"#,
            &arns
        ));
        assert!(!holds(
            r#"{"ForAllValues:ArnLike": {"a": "arn:aws:kms:*:*:key/*"}}"#,
            &arns
        ));
    }

    #[test]
    fn multivalued_key_without_set_operator() {
        // Documented choice: a positive operator needs any request value to
        // match; a negated one needs every request value to match none.
        let c = ctx(&[("k", &["a", "b"])]);
        assert!(holds(r#"{"StringEquals": {"k": "b"}}"#, &c));
        assert!(!holds(r#"{"StringEquals": {"k": "c"}}"#, &c));
        assert!(!holds(r#"{"StringNotEquals": {"k": "b"}}"#, &c));
        assert!(holds(r#"{"StringNotEquals": {"k": "c"}}"#, &c));
    }

    #[test]
    fn ip_ranges() {
        let mut ctx = Context::new();
        ctx.set("aws:SourceIp", "203.0.113.7");
        assert!(holds(
            r#"{"IpAddress": {"aws:SourceIp": "203.0.113.0/24"}}"#,
            &ctx
        ));
        assert!(!holds(
            r#"{"IpAddress": {"aws:SourceIp": "203.0.114.0/24"}}"#,
            &ctx
        ));
        assert!(holds(
            r#"{"IpAddress": {"aws:SourceIp": "203.0.113.7"}}"#,
            &ctx
        ));
        assert!(holds(
            r#"{"IpAddress": {"aws:SourceIp": "0.0.0.0/0"}}"#,
            &ctx
        ));
        assert!(!holds(
            r#"{"IpAddress": {"aws:SourceIp": "2001:db8::/32"}}"#,
            &ctx
        ));
        assert!(holds(
            r#"{"NotIpAddress": {"aws:SourceIp": "10.0.0.0/8"}}"#,
            &ctx
        ));
        assert!(!holds(
            r#"{"IpAddress": {"aws:SourceIp": "bogus/8"}}"#,
            &ctx
        ));
        assert!(!holds(
            r#"{"IpAddress": {"aws:SourceIp": "10.0.0.0/33"}}"#,
            &ctx
        ));
        ctx.set("aws:SourceIp", "2001:DB8:1234:5678::1");
        assert!(holds(
            r#"{"IpAddress": {"aws:SourceIp": "2001:DB8:1234:5678::/64"}}"#,
            &ctx
        ));
        ctx.set("aws:SourceIp", "not-an-ip");
        assert!(!holds(
            r#"{"IpAddress": {"aws:SourceIp": "0.0.0.0/0"}}"#,
            &ctx
        ));
        assert!(!holds(
            r#"{"NotIpAddress": {"aws:SourceIp": "10.0.0.0/8"}}"#,
            &ctx
        ));
    }
}
