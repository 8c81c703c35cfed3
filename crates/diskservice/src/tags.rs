//! A disk's tags: the customer's key-value pairs, shown with the disk and
//! given to identity policies as condition keys (`aws:ResourceTag/<key>`;
//! a creation's as `aws:RequestTag/<key>` and `aws:TagKeys`). Stored as the
//! disk's labels under [`PREFIX`], beside the service's own labels, which
//! no tag can name.
//!
//! The rules are EC2's: at most 50 tags; a key of 1 to 128 characters and a
//! value of at most 256, of letters, digits, spaces and `_ . : / = + - @`;
//! no key starts with `aws:` (reserved).

use std::collections::BTreeMap;

use crate::DiskError;

/// The labels' prefix of a tag.
pub(crate) const PREFIX: &str = "tag:";

/// At most this many tags on a disk.
pub const MAX_TAGS: usize = 50;

fn allowed(c: char) -> bool {
    c.is_alphanumeric() || c == ' ' || "_.:/=+-@".contains(c)
}

/// Refuses tags that break the rules (see the module doc), naming the first
/// that does.
pub fn validate(tags: &BTreeMap<String, String>) -> Result<(), DiskError> {
    if tags.len() > MAX_TAGS {
        return Err(DiskError::Invalid(format!(
            "a disk has at most {MAX_TAGS} tags, not {}",
            tags.len()
        )));
    }
    for (k, v) in tags {
        let shown: String = k.chars().take(32).collect();
        if k.is_empty() || k.chars().count() > 128 || !k.chars().all(allowed) {
            return Err(DiskError::Invalid(format!(
                "tag key '{}' must be 1 to 128 letters, digits, spaces or _ . : / = + - @",
                shown.escape_default()
            )));
        }
        if k.to_ascii_lowercase().starts_with("aws:") {
            return Err(DiskError::Invalid(format!(
                "tag key '{shown}' starts with aws:, which is reserved"
            )));
        }
        if v.chars().count() > 256 || !v.chars().all(allowed) {
            return Err(DiskError::Invalid(format!(
                "the value of tag '{shown}' must be at most 256 letters, digits, spaces or _ . : / = + - @"
            )));
        }
    }
    Ok(())
}

/// The tags among `labels`.
pub(crate) fn of(labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    labels
        .iter()
        .filter_map(|(k, v)| k.strip_prefix(PREFIX).map(|k| (k.to_owned(), v.clone())))
        .collect()
}

/// `tags` as labels.
pub(crate) fn labels(
    tags: &BTreeMap<String, String>,
) -> impl Iterator<Item = (String, String)> + '_ {
    tags.iter()
        .map(|(k, v)| (format!("{PREFIX}{k}"), v.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(k: &str, v: &str) -> BTreeMap<String, String> {
        BTreeMap::from([(k.to_owned(), v.to_owned())])
    }

    #[test]
    fn rules() {
        assert!(validate(&one("team", "blue")).is_ok());
        assert!(validate(&one("cost-center/eu", "a b_c.d:e=f+g@h")).is_ok());
        assert!(validate(&one("", "x")).is_err());
        assert!(validate(&one(&"k".repeat(129), "x")).is_err());
        assert!(validate(&one("k", &"v".repeat(257))).is_err());
        assert!(validate(&one("AWS:thing", "x")).is_err());
        assert!(validate(&one("k\n", "x")).is_err());
        assert!(validate(&one("k", "x\u{0}")).is_err());
        let many: BTreeMap<_, _> = (0..51).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(validate(&many).is_err());
        let labels: BTreeMap<_, _> = labels(&one("team", "blue"))
            .chain([("account".to_owned(), "1".to_owned())])
            .collect();
        assert_eq!(of(&labels), one("team", "blue"));
    }
}
