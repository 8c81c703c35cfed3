//! What every REST create and list shares: idempotency keys on `POST` and
//! pagination of `List*` answers.
//!
//! * **Idempotency.** A `POST` with an `Idempotency-Key` header (1 to 64
//!   visible ASCII characters) is answered once; a retry with the same key,
//!   account and path within 24 hours gets the first answer again without
//!   doing anything, and a retry whose body differs is refused (409
//!   ConflictException). Only successful answers are kept, in memory (at most
//!   10,000, oldest first out), and without the secrets an answer shows once
//!   (`secret_access_key`, `master_password`): a replay does not repeat a
//!   secret. A restart forgets the keys.
//! * **Pagination.** Every `List*` operation takes `?limit=` (1 to 1000,
//!   default 1000) and `?next_token=`; its answer's list is in id (or name)
//!   order and carries `next_token` when more follow.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use atrest_kms::KmsError;
use http::StatusCode;
use serde_json::Value;

use crate::error::ApiError;

const TTL: Duration = Duration::from_secs(24 * 3600);
const CAPACITY: usize = 10_000;
/// Members an answer shows once and a replay leaves out.
const SECRETS: [&str; 2] = ["secret_access_key", "master_password"];

type Slot = (String, String, String);

struct Kept {
    body: [u8; 32],
    status: StatusCode,
    value: Value,
    at: Instant,
}

/// The answers of recent `POST`s that carried an idempotency key.
#[derive(Default)]
pub(crate) struct Idempotency {
    inner: Mutex<(HashMap<Slot, Kept>, VecDeque<Slot>)>,
}

/// What a key says about a request.
pub(crate) enum Seen {
    /// First time: do it, then [`Idempotency::keep`] the answer.
    New,
    /// Done before: this was the answer.
    Replay(StatusCode, Value),
}

/// The key of a request, if it has one; refuses a malformed one.
pub(crate) fn idempotency_key(headers: &http::HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match v.to_str() {
        Ok(s) if (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(Some(s.to_owned()))
        }
        _ => Err(KmsError::Validation(
            "the Idempotency-Key header must be 1 to 64 visible ASCII characters".into(),
        )
        .into()),
    }
}

impl Idempotency {
    fn lock(&self) -> std::sync::MutexGuard<'_, (HashMap<Slot, Kept>, VecDeque<Slot>)> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `key` was used for this account and path, and with the same
    /// body.
    pub(crate) fn seen(
        &self,
        account: &str,
        path: &str,
        key: &str,
        body: &[u8],
    ) -> Result<Seen, ApiError> {
        let slot = (account.to_owned(), path.to_owned(), key.to_owned());
        let g = self.lock();
        match g.0.get(&slot) {
            Some(k) if k.at.elapsed() < TTL => {
                if k.body != atrest_crypto::hash::sha256(body) {
                    return Err(ApiError::Conflict(format!(
                        "the Idempotency-Key '{key}' was used for another request to {path}"
                    )));
                }
                Ok(Seen::Replay(k.status, k.value.clone()))
            }
            _ => Ok(Seen::New),
        }
    }

    /// Keeps a successful answer for replays.
    pub(crate) fn keep(
        &self,
        account: &str,
        path: &str,
        key: &str,
        body: &[u8],
        status: StatusCode,
        value: &Value,
    ) {
        if !status.is_success() {
            return;
        }
        let mut value = value.clone();
        if let Some(o) = value.as_object_mut() {
            for s in SECRETS {
                o.remove(s);
            }
        }
        let slot = (account.to_owned(), path.to_owned(), key.to_owned());
        let mut g = self.lock();
        let (map, order) = &mut *g;
        if map
            .insert(
                slot.clone(),
                Kept {
                    body: atrest_crypto::hash::sha256(body),
                    status,
                    value,
                    at: Instant::now(),
                },
            )
            .is_none()
        {
            order.push_back(slot);
        }
        while order.len() > CAPACITY {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
    }
}

/// `?limit=` and `?next_token=` of a list request (other parameters are
/// the operation's own).
pub(crate) fn page(uri: &http::Uri) -> Result<(usize, Option<String>), ApiError> {
    let mut limit = 1000usize;
    let mut next = None;
    for pair in uri.query().unwrap_or("").split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "limit" => {
                limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| {
                        ApiError::from(KmsError::Validation(
                            "'limit' must be an integer from 1 to 1000".into(),
                        ))
                    })?;
            }
            "next_token" if !v.is_empty() => next = Some(v.to_owned()),
            _ => {}
        }
    }
    Ok((limit, next))
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

    #[test]
    fn replays_leave_secrets_out_and_refuse_another_body() {
        let c = Idempotency::default();
        assert!(matches!(c.seen("a", "/p", "k", b"{}").unwrap(), Seen::New));
        c.keep(
            "a",
            "/p",
            "k",
            b"{}",
            StatusCode::CREATED,
            &json!({"id": "x", "secret_access_key": "s"}),
        );
        match c.seen("a", "/p", "k", b"{}").unwrap() {
            Seen::Replay(s, v) => assert_eq!((s, v), (StatusCode::CREATED, json!({"id": "x"}))),
            Seen::New => panic!("not kept"),
        }
        assert!(c.seen("a", "/p", "k", b"{\"x\":1}").is_err());
        assert!(matches!(c.seen("b", "/p", "k", b"{}").unwrap(), Seen::New));
    }
}
