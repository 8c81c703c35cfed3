//! Where a store is: its URL parsed into a [`Target`], and object names
//! checked before they reach a backend.

use std::path::PathBuf;

use zeroize::Zeroizing;

use crate::ObjError;

/// How to reach an object store.
///
/// `url` is `s3://bucket` or `s3://bucket/some/prefix` for S3-compatible
/// storage, or `file:///abs/dir` (or just `/abs/dir`) for a directory of the
/// local file system, created (mode 0700) if missing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreConfig {
    /// The store's URL (see above).
    pub url: String,
    /// S3 only: the endpoint, e.g. `http://127.0.0.1:3900`; plain `http://`
    /// is allowed because it is given explicitly. `None`: AWS, or the
    /// endpoint of the environment (`AWS_ENDPOINT_URL`).
    pub endpoint: Option<String>,
    /// S3 only: the signing region. `None`: `AWS_REGION` /
    /// `AWS_DEFAULT_REGION`, else `us-east-1`.
    pub region: Option<String>,
    /// S3 only: path-style requests (`endpoint/bucket/key`, what Garage and
    /// MinIO expect) rather than virtual-hosted ones (`bucket.endpoint/key`).
    pub path_style: bool,
}

/// Static S3 credentials given explicitly rather than through the AWS
/// environment. `Debug` never shows them; the secret is wiped on drop.
#[derive(Clone)]
pub struct S3Credentials {
    pub(crate) access_key_id: String,
    pub(crate) secret_access_key: Zeroizing<String>,
    pub(crate) session_token: Option<Zeroizing<String>>,
}

impl S3Credentials {
    /// An access key id and its secret, with an optional session token.
    #[must_use]
    pub fn new(access_key_id: &str, secret_access_key: &str, session_token: Option<&str>) -> Self {
        Self {
            access_key_id: access_key_id.to_owned(),
            secret_access_key: Zeroizing::new(secret_access_key.to_owned()),
            session_token: session_token.map(|t| Zeroizing::new(t.to_owned())),
        }
    }
}

impl core::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("S3Credentials(redacted)")
    }
}

/// A parsed store URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// A bucket and a prefix inside it ("" for the whole bucket, else
    /// segments joined by "/" without leading or trailing "/").
    S3 { bucket: String, prefix: String },
    /// An absolute directory.
    Local { dir: PathBuf },
}

impl Target {
    pub(crate) fn parse(url: &str) -> Result<Target, ObjError> {
        let bad = |why: &str| ObjError::Config(format!("store URL {url:?}: {why}"));
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            check_bucket(bucket).map_err(|why| bad(&why))?;
            let prefix = prefix.trim_end_matches('/');
            if !prefix.is_empty() {
                check_name(prefix).map_err(|why| bad(&format!("prefix: {why}")))?;
            }
            return Ok(Target::S3 {
                bucket: bucket.to_owned(),
                prefix: prefix.to_owned(),
            });
        }
        let path = if let Some(rest) = url.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(bad("a file URL needs an absolute path (file:///dir)"));
            }
            rest
        } else if url.starts_with('/') {
            url
        } else {
            return Err(bad("expected s3://bucket[/prefix], file:///dir or /dir"));
        };
        if path.split('/').any(|s| s == "..") {
            return Err(bad("\"..\" is not allowed in the directory"));
        }
        if path.chars().any(char::is_control) {
            return Err(bad("control characters are not allowed"));
        }
        let trimmed = path.trim_end_matches('/');
        let dir = if trimmed.is_empty() { "/" } else { trimmed };
        Ok(Target::Local {
            dir: PathBuf::from(dir),
        })
    }
}

/// S3 bucket names: 1 to 255 characters of letters, digits, '.', '-', '_'
/// (stricter rules, such as AWS's 3 to 63 lowercase ones, are the server's
/// to enforce).
fn check_bucket(bucket: &str) -> Result<(), String> {
    if bucket.is_empty() {
        return Err("no bucket name".to_owned());
    }
    if bucket.len() > 255 {
        return Err("bucket name longer than 255 characters".to_owned());
    }
    if !bucket
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(format!(
            "bucket name {bucket:?} may hold only letters, digits, '.', '-' and '_'"
        ));
    }
    Ok(())
}

/// Checks an object name (or a store prefix): non-empty, relative (no
/// leading "/"), segments separated by single "/", none of them "." or
/// "..", no trailing "/", no control characters, and at most 1024 bytes
/// (S3's key limit).
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty name".to_owned());
    }
    if name.len() > 1024 {
        return Err("name longer than 1024 bytes".to_owned());
    }
    if name.starts_with('/') {
        return Err(format!("{name:?} starts with \"/\""));
    }
    if name.chars().any(char::is_control) {
        return Err(format!("{name:?} holds a control character"));
    }
    for seg in name.split('/') {
        match seg {
            "" => return Err(format!("{name:?} has an empty segment")),
            "." | ".." => return Err(format!("{name:?} has a {seg:?} segment")),
            _ => {}
        }
    }
    Ok(())
}

/// [`check_name`] as a [`ObjError::Config`].
pub(crate) fn valid_name(name: &str) -> Result<(), ObjError> {
    check_name(name).map_err(|why| ObjError::Config(format!("object name: {why}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3(bucket: &str, prefix: &str) -> Target {
        Target::S3 {
            bucket: bucket.into(),
            prefix: prefix.into(),
        }
    }

    #[test]
    fn s3_urls() {
        assert_eq!(Target::parse("s3://snap").unwrap(), s3("snap", ""));
        assert_eq!(Target::parse("s3://snap/").unwrap(), s3("snap", ""));
        assert_eq!(Target::parse("s3://snap/a/b").unwrap(), s3("snap", "a/b"));
        assert_eq!(Target::parse("s3://snap/a/b/").unwrap(), s3("snap", "a/b"));
        assert_eq!(
            Target::parse("s3://my.bucket-1_x/p").unwrap(),
            s3("my.bucket-1_x", "p")
        );
        for bad in [
            "s3://",
            "s3:///x",
            "s3://b/../x",
            "s3://b/a//c",
            "s3://b/./c",
            "s3://user:pw@bucket",
            "s3://b?x=1",
            "s3://b c",
        ] {
            assert!(
                matches!(Target::parse(bad), Err(ObjError::Config(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn local_urls() {
        let local = |d: &str| Target::Local { dir: d.into() };
        assert_eq!(
            Target::parse("file:///var/snap").unwrap(),
            local("/var/snap")
        );
        assert_eq!(
            Target::parse("file:///var/snap/").unwrap(),
            local("/var/snap")
        );
        assert_eq!(Target::parse("/var/snap").unwrap(), local("/var/snap"));
        assert_eq!(Target::parse("/").unwrap(), local("/"));
        for bad in [
            "file://host/x",
            "file://rel",
            "relative/dir",
            "",
            "/a/../b",
            "http://x/y",
            "gs://b",
        ] {
            assert!(
                matches!(Target::parse(bad), Err(ObjError::Config(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn names() {
        for good in ["a", "blocks/abc/def", "probe/00ff", "a.b/c-d_e", "x/.y"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        let long = "a".repeat(1025);
        for bad in [
            "",
            "/abs",
            "a/",
            "a//b",
            "..",
            "a/../b",
            "./a",
            "a/.",
            "a\nb",
            long.as_str(),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
            assert!(matches!(valid_name(bad), Err(ObjError::Config(_))));
        }
    }

    #[test]
    fn credentials_debug_is_redacted() {
        let c = S3Credentials::new("GKvisible", "topsecret", Some("tok"));
        let s = format!("{c:?}");
        assert!(!s.contains("GKvisible") && !s.contains("topsecret") && !s.contains("tok"));
    }
}
