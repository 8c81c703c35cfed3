//! TagResource, UntagResource, ListResourceTags.

use super::authz::Facts;
use super::pagination::{self, Listing};
use super::{Call, KeyService};
use crate::KmsError;
use crate::api::{
    self, Empty, ListForKeyRequest, Page, Tag, TagResourceRequest, Tags, UntagResourceRequest,
};

/// Tags one key may have (AWS's quota).
pub const MAX_TAGS: usize = 50;

fn tag_chars_ok(s: &str) -> bool {
    s.chars()
        .all(|c| c.is_alphanumeric() || c.is_whitespace() || "_.:/=+-@".contains(c))
}

/// Checks one tag key; `member` is where it sits in the request
/// (`tags.1.member.tagKey`, `tagKeys.1.member`), for AWS's message.
fn check_key(k: &str, member: &str) -> Result<(), KmsError> {
    if let Some(e) = KmsError::length(member, Some(k), k.chars().count(), 1, 128) {
        return Err(e);
    }
    if !tag_chars_ok(k) {
        return Err(KmsError::Tag(format!(
            "Tag key '{k}' may contain only letters, digits, spaces and _ . : / = + - @."
        )));
    }
    // AWS refuses the prefix in any case (`AWS:`, `Aws:`).
    if k.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("aws:")) {
        return Err(KmsError::Tag(
            "Tags beginning with aws: are reserved".into(),
        ));
    }
    Ok(())
}

/// Merges `new` tags into `existing` (sorted by key), checking AWS's rules.
pub(crate) fn validate_tags(
    new: Vec<Tag>,
    mut existing: Vec<(String, String)>,
) -> Result<Vec<(String, String)>, KmsError> {
    let mut seen = std::collections::BTreeSet::new();
    for (i, t) in new.into_iter().enumerate() {
        let at = |field: &str| format!("tags.{}.member.{field}", i + 1);
        let k = api::required(t.tag_key, &at("tagKey"))?;
        let v = api::required(t.tag_value, &at("tagValue"))?;
        check_key(&k, &at("tagKey"))?;
        if let Some(e) = KmsError::length(&at("tagValue"), Some(&v), v.chars().count(), 0, 256) {
            return Err(e);
        }
        if !tag_chars_ok(&v) {
            return Err(KmsError::Tag(format!(
                "Tag value for '{k}' may contain only letters, digits, spaces and _ . : / = + - @."
            )));
        }
        if !seen.insert(k.clone()) {
            return Err(KmsError::Tag(format!(
                "Tag key '{k}' appears more than once in the request."
            )));
        }
        match existing.iter_mut().find(|(ek, _)| *ek == k) {
            Some(slot) => slot.1 = v,
            None => existing.push((k, v)),
        }
    }
    // AWS answers TagException here, not LimitExceededException.
    if existing.len() > MAX_TAGS {
        return Err(KmsError::Tag(format!(
            "A key may have at most {MAX_TAGS} tags."
        )));
    }
    existing.sort();
    Ok(existing)
}

impl KeyService {
    /// TagResource: adds tags or replaces their values.
    pub fn tag_resource(
        &self,
        call: &Call<'_>,
        req: TagResourceRequest,
    ) -> Result<Empty, KmsError> {
        let new = api::required(req.tags, "tags")?;
        self.update_key(call, req.key_id, "TagResource", |_, key, _, _| {
            Self::require_not_pending_deletion(key)?;
            Self::require_customer_managed(key, "tag or untag")?;
            key.tags = validate_tags(new, std::mem::take(&mut key.tags))?;
            Ok(Empty {})
        })
    }

    /// UntagResource: removes tags; keys that are absent are ignored.
    pub fn untag_resource(
        &self,
        call: &Call<'_>,
        req: UntagResourceRequest,
    ) -> Result<Empty, KmsError> {
        let keys = api::required(req.tag_keys, "tagKeys")?;
        for (i, k) in keys.iter().enumerate() {
            check_key(k, &format!("tagKeys.{}.member", i + 1))?;
        }
        self.update_key(call, req.key_id, "UntagResource", |_, key, _, _| {
            Self::require_not_pending_deletion(key)?;
            Self::require_customer_managed(key, "tag or untag")?;
            key.tags.retain(|(k, _)| !keys.contains(k));
            Ok(Empty {})
        })
    }

    /// ListResourceTags.
    pub fn list_resource_tags(
        &self,
        call: &Call<'_>,
        req: ListForKeyRequest,
    ) -> Result<Page<Tags>, KmsError> {
        let size = pagination::page_size(req.limit, 50, 50)?;
        let after = pagination::decode(Listing::Tags, req.marker.as_deref())?;
        let tx = self.store.read()?;
        let key = self.resolve_for_management(&*tx, call, req.key_id)?;
        self.authorize_key(&*tx, call, "ListResourceTags", &key, &Facts::default())?;
        let tags: Vec<(String, String)> = key
            .tags
            .into_iter()
            .filter(|(k, _)| after.as_ref().is_none_or(|a| k.as_bytes() > a.as_slice()))
            .take(size + 1)
            .collect();
        let (tags, next) =
            pagination::finish(Listing::Tags, tags, size, |(k, _)| k.as_bytes().to_vec());
        Ok(Page {
            truncated: next.is_some(),
            next_marker: next,
            items: Tags {
                tags: tags
                    .into_iter()
                    .map(|(k, v)| Tag {
                        tag_key: Some(k),
                        tag_value: Some(v),
                    })
                    .collect(),
            },
        })
    }
}
