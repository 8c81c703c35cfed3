//! Identifiers: account ids, regions, key ids, ARNs and alias names, with the
//! parsing rules AWS applies to them.

use core::fmt;

use uuid::Uuid;

use crate::KmsError;

/// A 12-digit account id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountId(String);

impl AccountId {
    /// Parses an account id: exactly 12 ASCII digits.
    pub fn parse(s: &str) -> Option<Self> {
        (s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())).then(|| Self(s.to_owned()))
    }

    /// A random account id.
    pub fn random() -> Result<Self, KmsError> {
        let bytes = atrest_crypto::rand::array::<8>()?;
        let n = u64::from_le_bytes(bytes) % 1_000_000_000_000;
        Ok(Self(format!("{n:012}")))
    }

    /// The digits.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether `s` is a usable region name: 1 to 32 of `[a-z0-9-]`, starting with
/// a letter (the shape of AWS region names, which SDKs put in hostnames).
#[must_use]
pub fn valid_region(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.as_bytes()[0].is_ascii_lowercase()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The ARN of a key.
#[must_use]
pub fn key_arn(region: &str, account: &str, id: &Uuid) -> String {
    // Built piece by piece: every request names its key's ARN at least once,
    // and this is several times cheaper than `format!`.
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let id = id.hyphenated().encode_lower(&mut buf);
    let mut arn = String::with_capacity(27 + region.len() + account.len() + id.len());
    for part in ["arn:aws:kms:", region, ":", account, ":key/", id] {
        arn.push_str(part);
    }
    arn
}

/// The key id of a multi-Region key: `mrk-` and 32 lower-case hex digits.
#[must_use]
pub fn mrk_key_id(id: &Uuid) -> String {
    format!("mrk-{}", id.simple())
}

/// The ARN of a multi-Region key in `region`.
#[must_use]
pub fn mrk_arn(region: &str, account: &str, id: &Uuid) -> String {
    format!("arn:aws:kms:{region}:{account}:key/{}", mrk_key_id(id))
}

/// The ARN of an alias (`name` includes the `alias/` prefix).
#[must_use]
pub fn alias_arn(region: &str, account: &str, name: &str) -> String {
    format!("arn:aws:kms:{region}:{account}:{name}")
}

/// The ARN of an account's root principal.
#[must_use]
pub fn account_root_arn(account: &str) -> String {
    format!("arn:aws:iam::{account}:root")
}

/// How a request names a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyRef {
    /// A bare key id, in the caller's account and region.
    Id(Uuid),
    /// A key ARN.
    KeyArn {
        /// Region in the ARN.
        region: String,
        /// Account in the ARN.
        account: String,
        /// Key id in the ARN.
        id: Uuid,
    },
    /// An alias name (`alias/...`), in the caller's account and region.
    Alias(String),
    /// A multi-Region key id (`mrk-...`), in the caller's account and region.
    MultiRegionId(Uuid),
    /// A multi-Region key's ARN.
    MultiRegionArn {
        /// Region in the ARN.
        region: String,
        /// Account in the ARN.
        account: String,
        /// Multi-Region key id in the ARN.
        id: Uuid,
    },
    /// An alias ARN.
    AliasArn {
        /// Region in the ARN.
        region: String,
        /// Account in the ARN.
        account: String,
        /// Alias name, with its `alias/` prefix.
        name: String,
    },
}

impl KeyRef {
    /// Parses a `KeyId` parameter.
    pub fn parse(s: &str) -> Result<Self, KmsError> {
        if let Some(e) = KmsError::length("keyId", Some(s), s.chars().count(), 1, 2048) {
            return Err(e);
        }
        if let Some(rest) = s.strip_prefix("arn:") {
            return parse_arn(s, rest);
        }
        if s.starts_with("alias/") {
            return Ok(Self::Alias(s.to_owned()));
        }
        if let Some(id) = parse_mrk_id(s) {
            return Ok(Self::MultiRegionId(id));
        }
        parse_key_uuid(s)
            .map(Self::Id)
            .ok_or_else(|| KmsError::NotFound(format!("Invalid keyId '{s}'")))
    }

    /// The alias name (`alias/...`) if this names an alias.
    #[must_use]
    pub fn alias_name(&self) -> Option<String> {
        match self {
            Self::Alias(n) | Self::AliasArn { name: n, .. } => Some(n.clone()),
            _ => None,
        }
    }

    /// Whether this names an alias rather than a key.
    #[must_use]
    pub fn is_alias(&self) -> bool {
        matches!(self, Self::Alias(_) | Self::AliasArn { .. })
    }
}

/// Multi-Region key ids are `mrk-` and 32 lower-case hex digits (AWS's
/// form); the digits are a UUID's 16 bytes.
fn parse_mrk_id(s: &str) -> Option<Uuid> {
    let hex = s.strip_prefix("mrk-")?;
    if hex.len() != 32
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    Uuid::try_parse(hex).ok()
}

/// Key ids are UUIDs in their canonical lower-case hyphenated form, which is
/// the only form AWS issues and accepts.
fn parse_key_uuid(s: &str) -> Option<Uuid> {
    if s.len() != 36 {
        return None;
    }
    let id = Uuid::try_parse(s).ok()?;
    (id.hyphenated().to_string() == s).then_some(id)
}

fn parse_arn(full: &str, rest: &str) -> Result<KeyRef, KmsError> {
    let invalid = || KmsError::InvalidArn(format!("Invalid arn '{full}'"));
    // arn:partition:service:region:account:resource
    let mut parts = rest.splitn(5, ':');
    let (Some(partition), Some(service), Some(region), Some(account), Some(resource)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(invalid());
    };
    if partition != "aws" || service != "kms" || !valid_region(region) {
        return Err(invalid());
    }
    if AccountId::parse(account).is_none() {
        return Err(invalid());
    }
    if let Some(id) = resource.strip_prefix("key/") {
        if let Some(id) = parse_mrk_id(id) {
            return Ok(KeyRef::MultiRegionArn {
                region: region.to_owned(),
                account: account.to_owned(),
                id,
            });
        }
        let id = parse_key_uuid(id)
            .ok_or_else(|| KmsError::NotFound(format!("Invalid arn '{full}'")))?;
        return Ok(KeyRef::KeyArn {
            region: region.to_owned(),
            account: account.to_owned(),
            id,
        });
    }
    if resource.starts_with("alias/") {
        return Ok(KeyRef::AliasArn {
            region: region.to_owned(),
            account: account.to_owned(),
            name: resource.to_owned(),
        });
    }
    Err(invalid())
}

/// Prefixes no customer alias may use: AWS's and atrest's service keys.
pub const RESERVED_ALIAS_PREFIXES: [&str; 2] = ["alias/aws/", "alias/atrest/"];

/// Checks an alias name given to CreateAlias, UpdateAlias or DeleteAlias,
/// in AWS's order: the member's length and pattern (`ValidationException`),
/// the `alias/` prefix (`InvalidAliasNameException`), then the reserved
/// prefixes (`NotAuthorizedException`, which AWS sends with no message).
pub fn validate_alias_name(name: &str) -> Result<(), KmsError> {
    if let Some(e) = KmsError::length("aliasName", Some(name), name.chars().count(), 1, 256) {
        return Err(e);
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'/' | b'_' | b'-'))
    {
        return Err(KmsError::constraint(
            "aliasName",
            name,
            "Member must satisfy regular expression pattern: ^[a-zA-Z0-9:/_-]+$",
        ));
    }
    let Some(suffix) = name.strip_prefix("alias/") else {
        return Err(KmsError::InvalidAliasName(
            "Alias must start with the prefix \"alias/\". Please see https://docs.aws.amazon.com/kms/latest/developerguide/kms-alias.html".into(),
        ));
    };
    if suffix.is_empty() || name.contains(':') {
        return Err(KmsError::InvalidAliasName(format!(
            "Alias name '{name}' is not valid: after \"alias/\" it needs at least one of [a-zA-Z0-9/_-]."
        )));
    }
    if RESERVED_ALIAS_PREFIXES.iter().any(|p| name.starts_with(p)) {
        return Err(KmsError::NotAuthorized(String::new()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_ids() {
        assert!(AccountId::parse("123456789012").is_some());
        assert!(AccountId::parse("12345678901").is_none());
        assert!(AccountId::parse("12345678901a").is_none());
        assert!(AccountId::parse("１23456789012").is_none());
        let r = AccountId::random().unwrap();
        assert!(AccountId::parse(r.as_str()).is_some());
    }

    #[test]
    fn key_refs() {
        let id = "1234abcd-12ab-34cd-56ef-1234567890ab";
        assert_eq!(
            KeyRef::parse(id).unwrap(),
            KeyRef::Id(Uuid::parse_str(id).unwrap())
        );
        assert!(matches!(
            KeyRef::parse(&format!("arn:aws:kms:us-east-1:111122223333:key/{id}")).unwrap(),
            KeyRef::KeyArn { .. }
        ));
        assert_eq!(
            KeyRef::parse("alias/x").unwrap(),
            KeyRef::Alias("alias/x".into())
        );
        assert!(matches!(
            KeyRef::parse("arn:aws:kms:us-east-1:111122223333:alias/x").unwrap(),
            KeyRef::AliasArn { .. }
        ));
        // Upper-case or braced UUIDs are not key ids.
        assert!(matches!(
            KeyRef::parse(&id.to_uppercase()),
            Err(KmsError::NotFound(_))
        ));
        assert!(matches!(
            KeyRef::parse("nonsense"),
            Err(KmsError::NotFound(_))
        ));
        assert!(matches!(KeyRef::parse(""), Err(KmsError::Validation(_))));
        for bad in [
            "arn:aws:s3:::bucket",
            "arn:aws:kms:us-east-1:1111:key/x",
            "arn:aws:kms:us-east-1:111122223333:thing/x",
            "arn:aws:kms:US_EAST:111122223333:key/x",
            "arn:aws",
        ] {
            assert!(
                matches!(KeyRef::parse(bad), Err(KmsError::InvalidArn(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            KeyRef::parse("arn:aws:kms:us-east-1:111122223333:key/not-a-uuid"),
            Err(KmsError::NotFound(_))
        ));
        // Multi-Region key ids: `mrk-` and 32 lower-case hex digits.
        let mrk = "mrk-1234abcd12ab34cd56ef1234567890ab";
        let mrk_id = Uuid::try_parse("1234abcd12ab34cd56ef1234567890ab").unwrap();
        assert_eq!(KeyRef::parse(mrk).unwrap(), KeyRef::MultiRegionId(mrk_id));
        assert_eq!(
            KeyRef::parse(&format!("arn:aws:kms:us-east-1:111122223333:key/{mrk}")).unwrap(),
            KeyRef::MultiRegionArn {
                region: "us-east-1".into(),
                account: "111122223333".into(),
                id: mrk_id
            }
        );
        for bad in [
            "mrk-1234ABCD12ab34cd56ef1234567890ab",
            "mrk-1234abcd12ab34cd56ef1234567890a",
            "mrk-1234abcd12ab34cd56ef1234567890abc",
            "mrk-",
        ] {
            assert!(
                matches!(KeyRef::parse(bad), Err(KmsError::NotFound(_))),
                "{bad}"
            );
        }
        assert_eq!(
            KeyRef::parse("").unwrap_err().to_string(),
            "1 validation error detected: Value '' at 'keyId' failed to satisfy constraint: Member must have length greater than or equal to 1"
        );
    }

    #[test]
    fn multi_region_key_refs() {
        let hex = "1234abcd12ab34cd56ef1234567890ab";
        let id = Uuid::try_parse(hex).unwrap();
        assert_eq!(mrk_key_id(&id), format!("mrk-{hex}"));
        assert_eq!(
            KeyRef::parse(&format!("mrk-{hex}")).unwrap(),
            KeyRef::MultiRegionId(id)
        );
        let arn = format!("arn:aws:kms:eu-west-1:111122223333:key/mrk-{hex}");
        assert_eq!(arn, mrk_arn("eu-west-1", "111122223333", &id));
        assert_eq!(
            KeyRef::parse(&arn).unwrap(),
            KeyRef::MultiRegionArn {
                region: "eu-west-1".into(),
                account: "111122223333".into(),
                id
            }
        );
        for bad in [
            "mrk-",
            "mrk-1234",
            "mrk-1234ABCD12AB34CD56EF1234567890AB",
            "mrk-1234abcd-12ab-34cd-56ef-1234567890ab",
            "mrk-1234abcd12ab34cd56ef1234567890abc",
            "mrk-1234abcd12ab34cd56ef1234567890ag",
        ] {
            assert!(
                matches!(KeyRef::parse(bad), Err(KmsError::NotFound(_))),
                "{bad}"
            );
            assert!(
                matches!(
                    KeyRef::parse(&format!("arn:aws:kms:us-east-1:111122223333:key/{bad}")),
                    Err(KmsError::NotFound(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn alias_names() {
        validate_alias_name("alias/my-key_1/a").unwrap();
        assert!(matches!(
            validate_alias_name("my-key"),
            Err(KmsError::InvalidAliasName(_))
        ));
        assert!(matches!(
            validate_alias_name("alias/"),
            Err(KmsError::InvalidAliasName(_))
        ));
        assert!(matches!(
            validate_alias_name("alias/aws/ebs"),
            Err(KmsError::NotAuthorized(_))
        ));
        assert!(matches!(
            validate_alias_name("alias/atrest/disk"),
            Err(KmsError::NotAuthorized(_))
        ));
        assert_eq!(
            validate_alias_name("alias/x y").unwrap_err().to_string(),
            "1 validation error detected: Value 'alias/x y' at 'aliasName' failed to satisfy constraint: Member must satisfy regular expression pattern: ^[a-zA-Z0-9:/_-]+$"
        );
        assert_eq!(
            validate_alias_name("").unwrap_err().to_string(),
            "1 validation error detected: Value '' at 'aliasName' failed to satisfy constraint: Member must have length greater than or equal to 1"
        );
        assert!(matches!(
            validate_alias_name("alias/a b"),
            Err(KmsError::Validation(_))
        ));
        assert!(matches!(
            validate_alias_name(&"a".repeat(257)),
            Err(KmsError::Validation(_))
        ));
    }

    #[test]
    fn regions() {
        assert!(valid_region("us-east-1"));
        assert!(valid_region("local"));
        assert!(!valid_region(""));
        assert!(!valid_region("1abc"));
        assert!(!valid_region("US-EAST-1"));
        assert!(!valid_region(&"a".repeat(33)));
    }
}
