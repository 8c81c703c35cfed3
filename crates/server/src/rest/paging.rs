//! Pages of a list answer: every paged endpoint takes `?limit=` (1 to
//! 1000, default 1000) and `?next_token=`; its answer's one list is in id
//! (or name) order and carries `next_token` when more follow.

use serde_json::Value;

use crate::error::ApiError;

/// `?limit=` and `?next_token=` of a list request (other parameters are
/// the operation's own).
pub(crate) fn page(uri: &http::Uri) -> Result<(usize, Option<String>), ApiError> {
    let mut at_most = limit(None)?;
    let mut next = None;
    for pair in uri.query().unwrap_or("").split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "limit" => at_most = limit(Some(v.parse().map_err(|_| bad_limit())?))?,
            "next_token" if !v.is_empty() => next = Some(v.to_owned()),
            _ => {}
        }
    }
    Ok((at_most, next))
}

/// A page's `limit`: 1 to 1000, default 1000 (a list that pages itself,
/// as the control plane's does, checks its own with this).
pub(crate) fn limit(given: Option<usize>) -> Result<usize, ApiError> {
    match given {
        None => Ok(1000),
        Some(n) if (1..=1000).contains(&n) => Ok(n),
        Some(_) => Err(bad_limit()),
    }
}

fn bad_limit() -> ApiError {
    ApiError::Invalid("'limit' must be an integer from 1 to 1000".into())
}

fn sort_key(item: &Value) -> String {
    ["id", "name", "access_key_id"]
        .iter()
        .find_map(|k| item.get(*k).and_then(Value::as_str))
        .unwrap_or_default()
        .to_owned()
}

/// Cuts the one list of a `List*` answer to a page, in key order.
pub(crate) fn paginate(mut value: Value, limit: usize, after: Option<&str>) -> Value {
    let Some(obj) = value.as_object_mut() else {
        return value;
    };
    let lists: Vec<String> = obj
        .iter()
        .filter(|(_, v)| v.is_array())
        .map(|(k, _)| k.clone())
        .collect();
    let [name] = lists.as_slice() else {
        return value;
    };
    let Some(items) = obj.get_mut(name).and_then(Value::as_array_mut) else {
        return value;
    };
    items.sort_by_key(sort_key);
    if let Some(a) = after {
        items.retain(|i| sort_key(i).as_str() > a);
    }
    let more = items.len() > limit;
    items.truncate(limit);
    let next = more.then(|| items.last().map(sort_key)).flatten();
    if let Some(n) = next {
        obj.insert("next_token".into(), Value::String(n));
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pages_follow_each_other() {
        let v = json!({"disks": [{"id": "d3"}, {"id": "d1"}, {"id": "d2"}]});
        let p1 = paginate(v.clone(), 2, None);
        assert_eq!(
            p1,
            json!({"disks": [{"id": "d1"}, {"id": "d2"}], "next_token": "d2"})
        );
        let p2 = paginate(v, 2, Some("d2"));
        assert_eq!(p2, json!({"disks": [{"id": "d3"}]}));
        let uri: http::Uri = "/v1/disks?limit=0".parse().unwrap();
        assert!(page(&uri).is_err());
        let uri: http::Uri = "/v1/backups?instance=x&limit=5&next_token=a"
            .parse()
            .unwrap();
        assert_eq!(page(&uri).unwrap(), (5, Some("a".into())));
    }
}
