//! Idempotency keys: a `POST` with an `Idempotency-Key` header (1 to 64
//! visible ASCII characters) is answered once; a retry by the same
//! principal, with the same key and path, within 24 hours gets the first
//! answer again without anything being done, and a retry whose body
//! differs is refused (409 ConflictException). Only successful answers are
//! kept, in memory (at most 10,000, oldest first out), and only in their
//! replay form ([`crate::rest::Endpoint::replay`], a [`Replayable`] type):
//! the cache cannot hold a secret an answer shows once. A restart forgets
//! the keys.
//!
//! [`Replayable`]: crate::rest::Replayable

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::Value;

use crate::error::ApiError;

const TTL: Duration = Duration::from_secs(24 * 3600);
const CAPACITY: usize = 10_000;

/// Whose key, for what: two principals of one account never share a slot.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Slot {
    /// The principal's ARN.
    pub principal: String,
    /// The request's path.
    pub path: String,
    /// The key.
    pub key: String,
}

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

/// The key of a request, if it has one; refuses a malformed one.
pub(crate) fn key(headers: &http::HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match v.to_str() {
        Ok(s) if (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(Some(s.to_owned()))
        }
        _ => Err(ApiError::Invalid(
            "the Idempotency-Key header must be 1 to 64 visible ASCII characters".into(),
        )),
    }
}

impl Idempotency {
    fn lock(&self) -> std::sync::MutexGuard<'_, (HashMap<Slot, Kept>, VecDeque<Slot>)> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The first answer to `slot`, if it had one; refuses another body.
    pub(crate) fn seen(
        &self,
        slot: &Slot,
        body: &[u8],
    ) -> Result<Option<(StatusCode, Value)>, ApiError> {
        let g = self.lock();
        match g.0.get(slot) {
            Some(k) if k.at.elapsed() < TTL => {
                if k.body != atrest_crypto::hash::sha256(body) {
                    return Err(ApiError::Conflict(format!(
                        "the Idempotency-Key '{}' was used for another request to {}",
                        slot.key, slot.path
                    )));
                }
                Ok(Some((k.status, k.value.clone())))
            }
            _ => Ok(None),
        }
    }

    /// Keeps a successful answer's replay form.
    pub(crate) fn keep(&self, slot: Slot, body: &[u8], status: StatusCode, replay: Value) {
        if !status.is_success() {
            return;
        }
        let mut g = self.lock();
        let (map, order) = &mut *g;
        let kept = Kept {
            body: atrest_crypto::hash::sha256(body),
            status,
            value: replay,
            at: Instant::now(),
        };
        if map.insert(slot.clone(), kept).is_none() {
            order.push_back(slot);
        }
        while order.len() > CAPACITY {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn slot(principal: &str, key: &str) -> Slot {
        Slot {
            principal: principal.into(),
            path: "/v1/disks".into(),
            key: key.into(),
        }
    }

    #[test]
    fn keys_are_the_principals_own() {
        let c = Idempotency::default();
        let root = slot("arn:aws:iam::111122223333:root", "k");
        c.keep(
            root.clone(),
            b"{}",
            StatusCode::CREATED,
            json!({"id": "d1"}),
        );
        assert_eq!(
            c.seen(&root, b"{}").unwrap(),
            Some((StatusCode::CREATED, json!({"id": "d1"})))
        );
        // Another principal of the same account, same key and path: new.
        let user = slot("arn:aws:iam::111122223333:user/alice", "k");
        assert_eq!(c.seen(&user, b"{}").unwrap(), None);
        // Another body under the same key: refused.
        assert!(matches!(
            c.seen(&root, b"{\"size\":1}"),
            Err(ApiError::Conflict(_))
        ));
        // Failures are not kept.
        c.keep(slot("p", "f"), b"", StatusCode::BAD_REQUEST, json!({}));
        assert_eq!(c.seen(&slot("p", "f"), b"").unwrap(), None);
    }

    #[test]
    fn malformed_keys_are_refused() {
        let mut h = http::HeaderMap::new();
        assert_eq!(key(&h).unwrap(), None);
        h.insert("idempotency-key", "ok-1".parse().unwrap());
        assert_eq!(key(&h).unwrap().as_deref(), Some("ok-1"));
        h.insert("idempotency-key", "has space".parse().unwrap());
        assert!(key(&h).is_err());
        h.insert("idempotency-key", "x".repeat(65).parse().unwrap());
        assert!(key(&h).is_err());
    }
}
