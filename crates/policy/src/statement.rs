//! The document and statement grammar, and evaluation of a request.

use crate::condition::{self, Condition};
use crate::json::Json;
use crate::pattern::Pattern;
use crate::principal::{self, Match, PrincipalSpec};
use crate::{Evaluation, PolicyDocument, PolicyError, PolicyKind, Request};

/// The policy language versions.
const VERSIONS: [&str; 2] = ["2012-10-17", "2008-10-17"];

/// The members a statement may have.
const STATEMENT_MEMBERS: [&str; 9] = [
    "Sid",
    "Effect",
    "Principal",
    "NotPrincipal",
    "Action",
    "NotAction",
    "Resource",
    "NotResource",
    "Condition",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    Allow,
    Deny,
}

/// `Action`/`NotAction` or `Resource`/`NotResource`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Patterns {
    /// The `Not...` form: the statement applies to what is not listed.
    not: bool,
    list: Vec<Pattern>,
}

/// One validated statement.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Statement {
    sid: Option<String>,
    effect: Effect,
    /// `None` in identity policies.
    principal: Option<PrincipalSpec>,
    actions: Patterns,
    resources: Patterns,
    conditions: Vec<Condition>,
}

fn err(msg: String) -> PolicyError {
    PolicyError(msg)
}

pub(crate) fn parse(text: &str, kind: PolicyKind) -> Result<PolicyDocument, PolicyError> {
    if text.len() > PolicyDocument::MAX_LEN {
        return Err(err(format!(
            "policy is {} bytes; the limit is {}",
            text.len(),
            PolicyDocument::MAX_LEN
        )));
    }
    let json = Json::parse(text).map_err(|e| err(format!("policy is not valid JSON: {e}")))?;
    let Json::Object(members) = json else {
        return Err(err(format!(
            "policy must be a JSON object, got {}",
            json.kind()
        )));
    };
    check_members(&members, "policy", &["Version", "Id", "Statement"])?;

    let mut version = None;
    let mut statements_json = None;
    for (name, value) in &members {
        match name.as_str() {
            "Version" => match value {
                Json::String(v) if VERSIONS.contains(&v.as_str()) => version = Some(v.as_str()),
                Json::String(v) => {
                    return Err(err(format!(
                        "Version: must be \"2012-10-17\" or \"2008-10-17\", got \"{v}\""
                    )));
                }
                other => {
                    return Err(err(format!(
                        "Version: must be \"2012-10-17\" or \"2008-10-17\", got {}",
                        other.kind()
                    )));
                }
            },
            "Id" => {
                if !matches!(value, Json::String(_)) {
                    return Err(err(format!("Id: must be a string, got {}", value.kind())));
                }
            }
            _ => statements_json = Some(value),
        }
    }
    // Policy variables exist from version 2012-10-17; before it (or without
    // a Version) `${...}` is literal text.
    let variables = version == Some("2012-10-17");

    let items: Vec<&Json> = match statements_json {
        None => return Err(err("Statement: missing".into())),
        Some(Json::Array(items)) if items.is_empty() => {
            return Err(err("Statement: must list at least one statement".into()));
        }
        Some(Json::Array(items)) => items.iter().collect(),
        Some(obj @ Json::Object(_)) => vec![obj],
        Some(other) => {
            return Err(err(format!(
                "Statement: must be an object or an array of objects, got {}",
                other.kind()
            )));
        }
    };
    let mut statements: Vec<Statement> = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let path = format!("Statement[{i}]");
        let statement = parse_statement(item, &path, kind, variables)?;
        if let Some(sid) = &statement.sid
            && let Some(first) = statements.iter().position(|s| s.sid.as_ref() == Some(sid))
        {
            return Err(err(format!(
                "{path}.Sid: \"{sid}\" is also the Sid of Statement[{first}]; Sids must be unique"
            )));
        }
        statements.push(statement);
    }
    Ok(PolicyDocument { kind, statements })
}

/// Rejects duplicate and unknown members of an object.
fn check_members(
    members: &[(String, Json)],
    path: &str,
    known: &[&str],
) -> Result<(), PolicyError> {
    for (i, (name, _)) in members.iter().enumerate() {
        if members[..i].iter().any(|(n, _)| n == name) {
            return Err(err(format!("{path}: duplicate member \"{name}\"")));
        }
        if !known.contains(&name.as_str()) {
            let expected = known
                .iter()
                .map(|k| format!("\"{k}\""))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(err(format!(
                "{path}: unknown member \"{name}\"; expected one of {expected}"
            )));
        }
    }
    Ok(())
}

fn member<'a>(members: &'a [(String, Json)], name: &str) -> Option<&'a Json> {
    members.iter().find(|(n, _)| n == name).map(|(_, v)| v)
}

/// Exactly one of `name` and `not_name`; `Ok(None)` when neither is there.
fn one_of<'a>(
    members: &'a [(String, Json)],
    path: &str,
    name: &str,
    not_name: &str,
) -> Result<Option<(bool, &'a Json)>, PolicyError> {
    match (member(members, name), member(members, not_name)) {
        (Some(_), Some(_)) => Err(err(format!(
            "{path}: has both \"{name}\" and \"{not_name}\"; use one"
        ))),
        (Some(v), None) => Ok(Some((false, v))),
        (None, Some(v)) => Ok(Some((true, v))),
        (None, None) => Ok(None),
    }
}

fn parse_statement(
    json: &Json,
    path: &str,
    kind: PolicyKind,
    variables: bool,
) -> Result<Statement, PolicyError> {
    let Json::Object(members) = json else {
        return Err(err(format!(
            "{path}: must be an object, got {}",
            json.kind()
        )));
    };
    check_members(members, path, &STATEMENT_MEMBERS)?;

    let sid = match member(members, "Sid") {
        None => None,
        Some(Json::String(s)) => Some(s.clone()),
        Some(other) => {
            return Err(err(format!(
                "{path}.Sid: must be a string, got {}",
                other.kind()
            )));
        }
    };

    let effect = match member(members, "Effect") {
        None => return Err(err(format!("{path}: missing \"Effect\""))),
        Some(Json::String(e)) if e == "Allow" => Effect::Allow,
        Some(Json::String(e)) if e == "Deny" => Effect::Deny,
        Some(Json::String(e)) => {
            return Err(err(format!(
                "{path}: \"Effect\" must be \"Allow\" or \"Deny\", got \"{e}\""
            )));
        }
        Some(other) => {
            return Err(err(format!(
                "{path}: \"Effect\" must be \"Allow\" or \"Deny\", got {}",
                other.kind()
            )));
        }
    };

    let principal = match (kind, one_of(members, path, "Principal", "NotPrincipal")?) {
        (PolicyKind::Resource, None) => {
            return Err(err(format!(
                "{path}: missing \"Principal\" or \"NotPrincipal\"; a key policy statement must name a principal"
            )));
        }
        (PolicyKind::Resource, Some((not, value))) => {
            let name = if not { "NotPrincipal" } else { "Principal" };
            let entries = principal::parse(value, &format!("{path}.{name}"))?;
            Some(if not {
                PrincipalSpec::AllBut(entries)
            } else {
                PrincipalSpec::Listed(entries)
            })
        }
        (PolicyKind::Identity, None) => None,
        (PolicyKind::Identity, Some((not, _))) => {
            let name = if not { "NotPrincipal" } else { "Principal" };
            return Err(err(format!(
                "{path}: \"{name}\" is not allowed in an identity policy"
            )));
        }
    };

    let actions = match one_of(members, path, "Action", "NotAction")? {
        None => return Err(err(format!("{path}: missing \"Action\" or \"NotAction\""))),
        Some((not, value)) => {
            let name = if not { "NotAction" } else { "Action" };
            let list = strings(value, &format!("{path}.{name}"))?
                .into_iter()
                .map(|(p, text)| {
                    if is_action(&text) {
                        Ok(Pattern::compile(&text, true, false))
                    } else {
                        Err(err(format!(
                            "{p}: \"{text}\" is not a valid action; expected \"*\" or \"service:action\", such as \"kms:Encrypt\""
                        )))
                    }
                })
                .collect::<Result<_, _>>()?;
            Patterns { not, list }
        }
    };

    let resources = match one_of(members, path, "Resource", "NotResource")? {
        None => {
            return Err(err(format!(
                "{path}: missing \"Resource\" or \"NotResource\""
            )));
        }
        Some((not, value)) => {
            let name = if not { "NotResource" } else { "Resource" };
            let list = strings(value, &format!("{path}.{name}"))?
                .into_iter()
                .map(|(p, text)| {
                    let pattern = Pattern::compile(&text, true, variables);
                    if text == "*" || (text.starts_with("arn:") && pattern.literal_colons() >= 5) {
                        Ok(pattern)
                    } else {
                        Err(err(format!(
                            "{p}: \"{text}\" is not a valid resource; expected \"*\" or an ARN (arn:partition:service:region:account:resource)"
                        )))
                    }
                })
                .collect::<Result<_, _>>()?;
            Patterns { not, list }
        }
    };

    let conditions = match member(members, "Condition") {
        None => Vec::new(),
        Some(value) => condition::parse_block(value, &format!("{path}.Condition"), variables)?,
    };

    Ok(Statement {
        sid,
        effect,
        principal,
        actions,
        resources,
        conditions,
    })
}

/// A string or a non-empty array of strings, each with its path.
fn strings(json: &Json, path: &str) -> Result<Vec<(String, String)>, PolicyError> {
    match json {
        Json::String(s) => Ok(vec![(path.to_owned(), s.clone())]),
        Json::Array(items) if items.is_empty() => {
            Err(err(format!("{path}: must list at least one value")))
        }
        Json::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Json::String(s) => Ok((format!("{path}[{i}]"), s.clone())),
                other => Err(err(format!(
                    "{path}[{i}]: must be a string, got {}",
                    other.kind()
                ))),
            })
            .collect(),
        other => Err(err(format!(
            "{path}: must be a string or an array of strings, got {}",
            other.kind()
        ))),
    }
}

/// `*`, or `service:action` with a non-empty service prefix and action
/// (either may hold wildcards), no spaces and one colon.
fn is_action(text: &str) -> bool {
    if text == "*" {
        return true;
    }
    let Some((service, action)) = text.split_once(':') else {
        return false;
    };
    let ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '*' | '?'))
    };
    ok(service) && ok(action)
}

impl Statement {
    /// How the statement applies to `request`: `None` if it does not, else
    /// how its principal matched (identity statements match directly).
    fn applies(&self, request: &Request<'_>) -> Option<Match> {
        let how = match &self.principal {
            Some(spec) => spec.matches(request.principal)?,
            None => Match::Direct,
        };
        let ctx = request.context;
        let action = self
            .actions
            .list
            .iter()
            .any(|p| p.matches(request.action, true, ctx));
        let resource = self
            .resources
            .list
            .iter()
            .any(|p| p.matches_arn(request.resource, ctx));
        if action == self.actions.not || resource == self.resources.not {
            return None;
        }
        self.conditions
            .iter()
            .all(|c| c.matches(ctx))
            .then_some(how)
    }
}

pub(crate) fn evaluate(doc: &PolicyDocument, request: &Request<'_>) -> Evaluation {
    let mut out = Evaluation::default();
    for statement in &doc.statements {
        match (statement.effect, statement.applies(request)) {
            (_, None) => {}
            (Effect::Deny, Some(_)) => out.denied = true,
            (Effect::Allow, Some(Match::Direct)) => out.allowed_directly = true,
            (Effect::Allow, Some(Match::ViaAccount)) => out.allowed_via_account = true,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Context, Principal, PrincipalKind};

    fn msg(json: &str, kind: PolicyKind) -> String {
        parse(json, kind).unwrap_err().0
    }

    fn key_policy(statement: &str) -> String {
        format!(r#"{{"Version": "2012-10-17", "Statement": [{statement}]}}"#)
    }

    #[test]
    fn actions() {
        for ok in [
            "*",
            "kms:*",
            "kms:Generate*",
            "kms:ReEncrypt?rom",
            "s3:Get*",
        ] {
            assert!(is_action(ok), "{ok}");
        }
        for bad in [
            "",
            "Encrypt",
            "kms:",
            ":Encrypt",
            "kms:a:b",
            "kms:En crypt",
            "**",
        ] {
            assert!(!is_action(bad), "{bad}");
        }
    }

    #[test]
    fn resource_must_be_star_or_arn() {
        let stmt = |r: &str| {
            key_policy(&format!(
                r#"{{"Effect": "Allow", "Principal": "*", "Action": "kms:*", "Resource": "{r}"}}"#
            ))
        };
        assert!(parse(&stmt("*"), PolicyKind::Resource).is_ok());
        assert!(
            parse(
                &stmt("arn:aws:kms:*:111122223333:key/*"),
                PolicyKind::Resource
            )
            .is_ok()
        );
        assert!(
            parse(
                &stmt("arn:aws:s3:::bucket/${aws:username}/*"),
                PolicyKind::Resource
            )
            .is_ok()
        );
        assert_eq!(
            msg(&stmt("key/1"), PolicyKind::Resource),
            "Statement[0].Resource: \"key/1\" is not a valid resource; expected \"*\" or an ARN \
             (arn:partition:service:region:account:resource)"
        );
        assert!(msg(&stmt("arn:aws:kms:*"), PolicyKind::Resource).contains("not a valid resource"));
    }

    #[test]
    fn not_action_and_not_resource() {
        let doc = PolicyDocument::parse(
            &key_policy(
                r#"{"Effect": "Deny", "Principal": "*", "NotAction": ["kms:Describe*", "kms:List*"],
                    "NotResource": "arn:aws:kms:*:111122223333:key/public"}"#,
            ),
            PolicyKind::Resource,
        )
        .unwrap();
        let who = Principal {
            account: "111122223333".into(),
            kind: PrincipalKind::Root,
        };
        let ctx = Context::new();
        let eval = |action: &str, resource: &str| {
            doc.evaluate(&Request {
                principal: &who,
                action,
                resource,
                context: &ctx,
            })
            .denied
        };
        let key = "arn:aws:kms:us-east-1:111122223333:key/secret";
        let public = "arn:aws:kms:us-east-1:111122223333:key/public";
        assert!(eval("kms:Decrypt", key));
        assert!(!eval("kms:DescribeKey", key));
        assert!(!eval("kms:listgrants", key));
        assert!(!eval("kms:Decrypt", public));
    }
}
