//! Helpers the REST handlers not yet on the framework ([`crate::rest`])
//! share: members read one by one from a JSON body.

use atrest_kms::{Call, KmsError};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::error::ApiError;

pub(crate) fn u64_field(v: &Value, name: &str) -> Result<Option<u64>, ApiError> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| {
            KmsError::Validation(format!("'{name}' must be a non-negative integer")).into()
        }),
        Some(_) => Err(KmsError::Serialization(format!("'{name}' must be a number")).into()),
    }
}

/// `block_size` of a new disk (its value is checked by the disk service).
pub(crate) fn block_size_field(v: &Value) -> Result<Option<u32>, ApiError> {
    u64_field(v, "block_size")?
        .map(|b| {
            u32::try_from(b)
                .map_err(|_| KmsError::Validation("'block_size' must be 512 or 4096".into()).into())
        })
        .transpose()
}

pub(crate) fn bool_field(v: &Value, name: &str) -> Result<Option<bool>, ApiError> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(KmsError::Serialization(format!("'{name}' must be a boolean")).into()),
    }
}

/// Refuses members the operation does not know (a misspelt option must not
/// be silently ignored).
pub(crate) fn known_fields(v: &Value, known: &[&str]) -> Result<(), ApiError> {
    let Some(obj) = v.as_object() else {
        return Err(
            KmsError::Serialization("the request body must be a JSON object".into()).into(),
        );
    };
    match obj.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(KmsError::Validation(format!(
            "unknown member '{k}'; this operation takes: {}",
            known.join(", ")
        ))
        .into()),
        None => Ok(()),
    }
}

/// Refuses members the operation's body type `T` does not declare.
pub(crate) fn known_fields_of<T: utoipa::PartialSchema>(v: &Value) -> Result<(), ApiError> {
    let names = crate::openapi::property_names::<T>();
    let known: Vec<&str> = names.iter().map(String::as_str).collect();
    known_fields(v, &known)
}

/// The answer, with the acted-on key named in the audit record.
pub(crate) fn answer<T: Serialize>(
    call: &Call<'_>,
    status: StatusCode,
    key_arn: Option<&String>,
    v: &T,
) -> Result<(StatusCode, Value), ApiError> {
    if let Some(k) = key_arn {
        call.set_key(k.clone());
    }
    let v = serde_json::to_value(v)
        .map_err(|e| KmsError::Internal(format!("encoding a response: {e}")))?;
    Ok((status, v))
}

/// A body that must be empty or `{}`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EmptyRequest {}

