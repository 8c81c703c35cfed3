//! A request's JSON body and query string, read into the endpoint's types,
//! with errors that say which member and what it must be:
//!
//! * not JSON, or not an object: `SerializationException`;
//! * a member of the wrong type (`"port": "5432"`): `SerializationException`
//!   "'port' must be a number";
//! * a member the operation does not take (a misspelt option must not be
//!   silently ignored): `ValidationException` "unknown member 'colour'; this
//!   operation takes: ...";
//! * a required member missing, or a value out of its range:
//!   `ValidationException` (a member's type may say what it must be:
//!   "'port' must be 1024 to 65535");
//! * a query parameter the operation does not take: `ValidationException`
//!   "unknown query parameter 'colour'; this operation takes: instance".

use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// What serde's `expected ...` says, in the words of the API.
fn expected(what: &str) -> String {
    let w = what.trim();
    // A type that lists its alternatives ("a string, number, boolean or
    // null") says it best itself.
    if w.contains(" or ") {
        return w.to_owned();
    }
    let number = [
        "u8", "u16", "u32", "u64", "usize", "i8", "i16", "i32", "i64", "isize", "f32", "f64",
    ];
    if number.contains(&w) || w.contains("integer") || w.contains("number") {
        "a number".into()
    } else if w == "a boolean" || w == "bool" {
        "a boolean".into()
    } else if w.contains("string") {
        "a string".into()
    } else if w.starts_with("struct") || w.contains("map") {
        "an object".into()
    } else if w.contains("sequence") {
        "a list".into()
    } else {
        w.to_owned()
    }
}

/// `a`, `b` from serde's "`a`, `b`".
fn names(list: &str) -> String {
    list.split(',')
        .map(|n| n.trim().trim_matches('`'))
        .filter(|n| !n.is_empty())
        .collect::<Vec<_>>()
        .join(", ")
}

fn member_error(path: &str, e: &serde_json::Error) -> ApiError {
    let msg = e.to_string();
    // serde_json appends " at line L column C".
    let msg = msg
        .rsplit_once(" at line ")
        .map_or(msg.as_str(), |(m, _)| m);
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        let (field, tail) = rest.split_once('`').unwrap_or((rest, ""));
        let takes = tail
            .strip_prefix(", expected one of ")
            .or_else(|| tail.strip_prefix(", expected "))
            .map(names)
            .unwrap_or_default();
        // The path already ends with the unknown member (the tracker
        // entered it before its name was refused).
        let member = if path.is_empty() || path == "." {
            field.to_owned()
        } else if path == field || path.ends_with(&format!(".{field}")) {
            path.to_owned()
        } else {
            format!("{path}.{field}")
        };
        let takes = if takes.is_empty() || tail.contains("there are no fields") {
            "this operation takes no members".to_owned()
        } else {
            format!("this operation takes: {takes}")
        };
        return ApiError::Invalid(format!("unknown member '{member}'; {takes}"));
    }
    if let Some(rest) = msg.strip_prefix("missing field `") {
        let field = rest.split('`').next().unwrap_or(rest);
        let member = if path.is_empty() || path == "." {
            field.to_owned()
        } else {
            format!("{path}.{field}")
        };
        return ApiError::Invalid(format!("'{member}' is required"));
    }
    if path.is_empty() || path == "." {
        return ApiError::Malformed("The request body must be a JSON object.".into());
    }
    if msg.starts_with("invalid type:") {
        let what = msg.rsplit_once(", expected ").map_or("", |(_, w)| w);
        return ApiError::Malformed(format!("'{path}' must be {}", expected(what)));
    }
    // A member's own type says what its value must be ("must be 1024 to
    // 65535"): said of the member.
    if let Some(what) = msg.strip_prefix("must be ") {
        return ApiError::Invalid(format!("'{path}' must be {what}"));
    }
    ApiError::Invalid(format!("'{path}': {msg}"))
}

/// The body as `T` (an empty body is `{}`).
pub(crate) fn json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    // serde reads a struct from an array too (its members in order); a
    // body is an object.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
                Ok(_) => ApiError::Malformed("The request body must be a JSON object.".into()),
                Err(e) => ApiError::Malformed(format!("The request body is not valid JSON: {e}")),
            },
        );
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => member_error(&path, &inner),
            _ => ApiError::Malformed(format!("The request body is not valid JSON: {inner}")),
        }
    })?;
    de.end()
        .map_err(|e| ApiError::Malformed(format!("The request body is not valid JSON: {e}")))?;
    Ok(value)
}

/// The query string as `T`; a paged list's `limit` and `next_token` are
/// the layer's ([`super::paging`]) and left out.
pub(crate) fn query<T: DeserializeOwned>(qs: &str, paged: bool) -> Result<T, ApiError> {
    let own: Vec<&str> = qs
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| {
            let k = p.split_once('=').map_or(*p, |(k, _)| k);
            !(paged && (k == "limit" || k == "next_token"))
        })
        .collect();
    let joined = own.join("&");
    serde_urlencoded::from_str(&joined).map_err(|e| {
        let msg = e.to_string();
        let err = match msg.strip_prefix("unknown field `") {
            Some(rest) => {
                let (field, tail) = rest.split_once('`').unwrap_or((rest, ""));
                let mut takes: Vec<String> = tail
                    .strip_prefix(", expected one of ")
                    .or_else(|| tail.strip_prefix(", expected "))
                    .map(names)
                    .into_iter()
                    .filter(|n| !n.is_empty())
                    .collect();
                if paged {
                    takes.push("limit, next_token".into());
                }
                if takes.is_empty() {
                    format!("unknown query parameter '{field}'; this operation takes none")
                } else {
                    format!(
                        "unknown query parameter '{field}'; this operation takes: {}",
                        takes.join(", ")
                    )
                }
            }
            None => format!("the query string is not valid: {msg}"),
        };
        ApiError::Invalid(err)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct New {
        name: String,
        port: Option<u16>,
        #[serde(default)]
        shareable: bool,
    }

    fn err(body: &str) -> (String, String) {
        let e = json::<New>(body.as_bytes()).unwrap_err();
        let (_, code, msg) = e.parts();
        (code.to_owned(), msg)
    }

    #[test]
    fn bodies_are_typed_with_clear_errors() {
        let ok: New = json(br#"{"name": "a", "port": 5432}"#).unwrap();
        assert_eq!(
            (ok.name.as_str(), ok.port, ok.shareable),
            ("a", Some(5432), false)
        );
        let (code, msg) = err(r#"{"name": "a", "colour": "red"}"#);
        assert_eq!(code, "ValidationException");
        assert!(
            msg.starts_with("unknown member 'colour'; this operation takes: name, port, shareable"),
            "{msg}"
        );
        let (code, msg) = err(r#"{"name": "a", "port": "5432"}"#);
        assert_eq!(
            (code.as_str(), msg.as_str()),
            ("SerializationException", "'port' must be a number")
        );
        let (code, msg) = err(r#"{"name": "a", "shareable": 1}"#);
        assert_eq!(
            (code.as_str(), msg.as_str()),
            ("SerializationException", "'shareable' must be a boolean")
        );
        let (code, msg) = err(r#"{"port": 1}"#);
        assert_eq!(
            (code.as_str(), msg.as_str()),
            ("ValidationException", "'name' is required")
        );
        let (code, _) = err(r#"{"name": "a", "port": 70000}"#);
        assert_eq!(code, "ValidationException");
        let (code, msg) = err("[1, 2]");
        assert_eq!(
            (code.as_str(), msg.as_str()),
            (
                "SerializationException",
                "The request body must be a JSON object."
            )
        );
        let (code, _) = err("{not json");
        assert_eq!(code, "SerializationException");
        let (code, _) = err(r#"{"name": "a"} trailing"#);
        assert_eq!(code, "SerializationException");
        // An empty body is an empty object.
        assert!(json::<crate::rest::NoBody>(b"").is_ok());
        assert!(json::<crate::rest::NoBody>(b" {} ").is_ok());
        assert!(json::<crate::rest::NoBody>(br#"{"x": 1}"#).is_err());
    }

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Q {
        instance: Option<String>,
    }

    #[test]
    fn queries_are_typed() {
        let q: Q = query("instance=a%20b&limit=5&next_token=x", true).unwrap();
        assert_eq!(q.instance.as_deref(), Some("a b"));
        assert!(query::<Q>("limit=5", false).is_err());
        assert!(query::<Q>("colour=red", true).is_err());
        let q: Q = query("", true).unwrap();
        assert!(q.instance.is_none());
    }
}
