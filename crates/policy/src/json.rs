//! A JSON tree that keeps every object member in order, duplicates included.
//!
//! `serde_json::Value` keeps only the last of two members with the same
//! name, but the IAM grammar says "individual elements must not contain
//! multiple instances of the same key" (`{"Effect": "Allow", "Effect":
//! "Deny"}` is malformed), so the grammar checks need to see duplicates.
//! Parsing still goes through `serde_json`, whose recursion limit keeps
//! deeply nested input from exhausting the stack.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// One JSON value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Json {
    Null,
    Bool(bool),
    /// A number, kept in the text form `serde_json` prints for it.
    Number(String),
    String(String),
    Array(Vec<Json>),
    /// Members in document order; names may repeat.
    Object(Vec<(String, Json)>),
}

impl Json {
    /// Parses `text` as one JSON value.
    pub(crate) fn parse(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// "a string", "an object", ... for error messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool(_) => "a boolean",
            Json::Number(_) => "a number",
            Json::String(_) => "a string",
            Json::Array(_) => "an array",
            Json::Object(_) => "an object",
        }
    }

    /// The string form of a scalar (string, number or boolean), as AWS
    /// compares condition values; `None` for null, arrays and objects.
    pub(crate) fn scalar_text(&self) -> Option<String> {
        match self {
            Json::String(s) | Json::Number(s) => Some(s.clone()),
            Json::Bool(b) => Some(b.to_string()),
            Json::Null | Json::Array(_) | Json::Object(_) => None,
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Json, E> {
        Ok(Json::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Json, E> {
        Ok(Json::Number(v.to_string()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Json, E> {
        Ok(Json::Number(v.to_string()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Json, E> {
        // The same text serde_json prints (`1.0`, `10103.5`, `1e300`).
        match serde_json::Number::from_f64(v) {
            Some(n) => Ok(Json::Number(n.to_string())),
            None => Err(E::custom("number is not finite")),
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Json, E> {
        Ok(Json::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Json, E> {
        Ok(Json::String(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut members = Vec::new();
        while let Some((name, value)) = map.next_entry::<String, Json>()? {
            members.push((name, value));
        }
        Ok(Json::Object(members))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_duplicate_members_in_order() {
        let j = Json::parse(r#"{"a": 1, "b": [true, null, "x"], "a": 2.5}"#).unwrap();
        assert_eq!(
            j,
            Json::Object(vec![
                ("a".into(), Json::Number("1".into())),
                (
                    "b".into(),
                    Json::Array(vec![Json::Bool(true), Json::Null, Json::String("x".into())])
                ),
                ("a".into(), Json::Number("2.5".into())),
            ])
        );
    }

    #[test]
    fn numbers_keep_their_printed_form() {
        let j = Json::parse("[10103.0, -7, 18446744073709551615]").unwrap();
        let Json::Array(items) = j else {
            panic!("not an array")
        };
        let texts: Vec<_> = items.iter().filter_map(Json::scalar_text).collect();
        assert_eq!(texts, ["10103.0", "-7", "18446744073709551615"]);
    }

    #[test]
    fn rejects_bad_json_and_deep_nesting_without_panicking() {
        assert!(Json::parse("{").is_err());
        assert!(Json::parse("").is_err());
        assert!(Json::parse("1e400").is_err());
        let deep = "[".repeat(100_000);
        assert!(Json::parse(&deep).is_err());
    }
}
