//! Blocking access to an object store: S3-compatible storage (AWS S3,
//! Garage, MinIO...) or a directory of the local file system.
//!
//! Owns: parsing a store's URL ([`StoreConfig`]), checking object names,
//! the blocking calls ([`Objects`]: put, get, head, list, delete, and their
//! concurrent batches), bounded timeouts and retries, and the mapping of
//! the backends' errors to [`ObjError`] (in `error.rs`, one place).
//! Must not know: what the objects hold (snapshots, blocks, manifests) or
//! how they are named beyond the name rules; objects are opaque bytes.
//!
//! The S3 protocol and SigV4 come from the `object_store` crate (reqwest
//! with rustls). Writes are plain PUTs: no conditional headers (Garage
//! ignores them), so callers must not rely on put-if-absent.
//!
//! Calls block the calling thread and are safe from any thread, inside a
//! tokio runtime or not: they run on a small private runtime (2 workers)
//! and the caller waits on a channel. An unreachable store fails within
//! seconds (connect timeout 5 s, request timeout 60 s, at most 3 retries
//! within 10 s). No credential ever appears in an [`ObjError`] or in
//! `Debug` output.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod config;
mod error;
mod stream;

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3Builder, AwsCredential};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::prefix::PrefixStore;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, RetryConfig,
    StaticCredentialProvider,
};

pub use config::{S3Credentials, StoreConfig};
use config::{Target, valid_name};
pub use error::ObjError;
use error::Redact;
pub use stream::{ObjectReader, ObjectWriter, PART};

/// Connect timeout of one HTTP request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Whole-request timeout of one HTTP request (a 64 MiB object at ~1 MiB/s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Retries of one request (transport errors, 5xx, 429) and their deadline.
const MAX_RETRIES: usize = 3;
const RETRY_TIMEOUT: Duration = Duration::from_secs(10);

/// The private runtime every call runs on.
fn runtime() -> Result<&'static tokio::runtime::Runtime, ObjError> {
    static RT: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("atrest-objstore")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| ObjError::Config(format!("starting the object store runtime: {e}")))
}

/// Runs `fut` on the private runtime and waits for it.
fn run<T, F>(what: &str, fut: F) -> Result<T, ObjError>
where
    T: Send + 'static,
    F: Future<Output = Result<T, ObjError>> + Send + 'static,
{
    let rt = runtime()?;
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    rt.spawn(async move {
        // The receiver waits until this sends; it cannot be gone.
        let _ = tx.send(fut.await);
    });
    rx.recv().unwrap_or_else(|_| {
        Err(ObjError::Other {
            object: what.to_owned(),
            detail: "the object store task ended without an answer".to_owned(),
        })
    })
}

/// An object's name (relative to the store's prefix), size and time of
/// last modification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    /// The name, relative to the store's prefix.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// When the object was last written (the store's clock).
    pub last_modified: time::OffsetDateTime,
}

struct Inner {
    store: Arc<dyn ObjectStore>,
    location: String,
    /// The local backend (its canonical directory and the store): puts are
    /// made durable (fsync of the file and its directories), which
    /// `LocalFileSystem` does not do.
    local: Option<(PathBuf, Arc<LocalFileSystem>)>,
    /// The S3 key prefix with a trailing "/" ("" for none): `PrefixStore`
    /// strips it from listings but not from a HEAD's answer.
    prefix: String,
    redact: Redact,
}

/// An open object store. Cheap to clone (shared inside); `Debug` shows the
/// location only.
#[derive(Clone)]
pub struct Objects {
    inner: Arc<Inner>,
}

impl core::fmt::Debug for Objects {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Objects")
            .field("location", &self.inner.location)
            .finish()
    }
}

impl Objects {
    /// Parses `cfg` and builds the client; no network access. S3
    /// credentials come from the AWS environment: `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY` and optionally `AWS_SESSION_TOKEN`, or a web
    /// identity (`AWS_WEB_IDENTITY_TOKEN_FILE` with `AWS_ROLE_ARN`) or
    /// container credentials (`AWS_CONTAINER_CREDENTIALS_*`); without any of
    /// these, opening an S3 store is a [`ObjError::Config`] (the EC2
    /// instance metadata service is not tried).
    pub fn open(cfg: &StoreConfig) -> Result<Objects, ObjError> {
        Self::open_inner(cfg, None)
    }

    /// Like [`Objects::open`] with explicit S3 credentials instead of the
    /// environment's.
    pub fn open_with_credentials(
        cfg: &StoreConfig,
        credentials: &S3Credentials,
    ) -> Result<Objects, ObjError> {
        Self::open_inner(cfg, Some(credentials))
    }

    fn open_inner(cfg: &StoreConfig, creds: Option<&S3Credentials>) -> Result<Objects, ObjError> {
        let target = Target::parse(&cfg.url)?;
        match target {
            Target::Local { dir } => {
                if cfg.endpoint.is_some() || cfg.region.is_some() {
                    return Err(ObjError::Config(format!(
                        "{}: endpoint and region apply to s3:// stores only",
                        cfg.url
                    )));
                }
                open_local(dir)
            }
            Target::S3 { bucket, prefix } => open_s3(cfg, creds, &bucket, &prefix),
        }
    }

    /// Where the store is: `s3://bucket/prefix (endpoint http://...)` or
    /// `file:///dir`.
    #[must_use]
    pub fn location(&self) -> String {
        self.inner.location.clone()
    }

    /// Writes `data` as object `name` (relative to the prefix, e.g.
    /// `blocks/ab/cdef`), replacing any object of that name. One plain PUT.
    pub fn put(&self, name: &str, data: Bytes) -> Result<(), ObjError> {
        valid_name(name)?;
        let inner = Arc::clone(&self.inner);
        let name = name.to_owned();
        run(&name.clone(), async move { inner.put(name, data).await })
    }

    /// Writes every `(name, data)` with up to `concurrency` requests in
    /// flight; the first error is returned (writes already started may
    /// still complete).
    pub fn put_many(
        &self,
        items: Vec<(String, Bytes)>,
        concurrency: usize,
    ) -> Result<(), ObjError> {
        for (name, _) in &items {
            valid_name(name)?;
        }
        let inner = Arc::clone(&self.inner);
        run("*", async move {
            futures::stream::iter(items)
                .map(|(name, data)| {
                    let inner = Arc::clone(&inner);
                    async move { inner.put(name, data).await }
                })
                .buffer_unordered(concurrency.max(1))
                .try_collect::<Vec<()>>()
                .await
                .map(drop)
        })
    }

    /// A writer of object `name`, for objects too large to hold in memory:
    /// uploaded in parts of [`PART`] bytes as they fill (one plain PUT if
    /// the object is smaller), the object made whole, and visible, by
    /// [`ObjectWriter::finish`] only.
    pub fn writer(&self, name: &str) -> Result<ObjectWriter, ObjError> {
        valid_name(name)?;
        Ok(ObjectWriter::new(Arc::clone(&self.inner), name.to_owned()))
    }

    /// A reader of object `name`'s bytes as they arrive (one GET).
    pub fn reader(&self, name: &str) -> Result<ObjectReader, ObjError> {
        valid_name(name)?;
        ObjectReader::open(Arc::clone(&self.inner), name.to_owned())
    }

    /// Reads object `name` whole.
    pub fn get(&self, name: &str) -> Result<Bytes, ObjError> {
        valid_name(name)?;
        let inner = Arc::clone(&self.inner);
        let name = name.to_owned();
        run(&name.clone(), async move { inner.get(name).await })
    }

    /// Reads every object of `names`, up to `concurrency` at a time; the
    /// contents come back in the order of `names`. The first error is
    /// returned.
    pub fn get_many(&self, names: Vec<String>, concurrency: usize) -> Result<Vec<Bytes>, ObjError> {
        for name in &names {
            valid_name(name)?;
        }
        let inner = Arc::clone(&self.inner);
        run("*", async move {
            futures::stream::iter(names)
                .map(|name| {
                    let inner = Arc::clone(&inner);
                    async move { inner.get(name).await }
                })
                .buffered(concurrency.max(1))
                .try_collect()
                .await
        })
    }

    /// Object `name`'s metadata, or `None` if it does not exist. A HEAD
    /// answer has no body, so on S3 a missing bucket also reads as `None`
    /// here; [`Objects::check`] tells them apart.
    pub fn head(&self, name: &str) -> Result<Option<ObjectMeta>, ObjError> {
        valid_name(name)?;
        let inner = Arc::clone(&self.inner);
        let name = name.to_owned();
        run(&name.clone(), async move {
            match inner.store.head(&ObjPath::from(name.as_str())).await {
                Ok(m) => Ok(Some(inner.meta(m))),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(inner.err(e, &name)),
            }
        })
    }

    /// Every object under `prefix` (a name prefix made of whole segments:
    /// `blocks` lists `blocks/...`; "" lists the whole store), recursively,
    /// names relative to the store's prefix, in no particular order.
    pub fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, ObjError> {
        let prefix = prefix.trim_end_matches('/');
        if !prefix.is_empty() {
            valid_name(prefix)?;
        }
        let inner = Arc::clone(&self.inner);
        let prefix = prefix.to_owned();
        run("*", async move {
            let p = (!prefix.is_empty()).then(|| ObjPath::from(prefix.as_str()));
            let what = if prefix.is_empty() {
                "*".to_owned()
            } else {
                format!("{prefix}/*")
            };
            let mut out = Vec::new();
            let mut stream = inner.store.list(p.as_ref());
            while let Some(item) = stream.next().await {
                match item {
                    Ok(m) => out.push(inner.meta(m)),
                    // A local directory that does not exist lists as empty.
                    Err(object_store::Error::NotFound { .. }) if inner.local.is_some() => {}
                    Err(e) => return Err(inner.err(e, &what)),
                }
            }
            Ok(out)
        })
    }

    /// Deletes object `name`; deleting an absent object succeeds.
    pub fn delete(&self, name: &str) -> Result<(), ObjError> {
        valid_name(name)?;
        let inner = Arc::clone(&self.inner);
        let name = name.to_owned();
        run(&name.clone(), async move {
            match inner.store.delete(&ObjPath::from(name.as_str())).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(inner.err(e, &name)),
            }
        })
    }

    /// Proves the store is usable: writes `probe/<random hex>`, reads it
    /// back and compares, then deletes it. Fails with
    /// [`ObjError::NoSuchBucket`], [`ObjError::AccessDenied`] or
    /// [`ObjError::Unreachable`] when the store is not.
    pub fn check(&self) -> Result<(), ObjError> {
        let rand = atrest_crypto::rand::array::<16>().map_err(|e| ObjError::Other {
            object: "probe".to_owned(),
            detail: e.to_string(),
        })?;
        let name = format!("probe/{}", hex::encode(rand));
        let data = Bytes::from(format!("atrest object store probe {name}\n"));
        self.put(&name, data.clone())?;
        let back = self.get(&name)?;
        let deleted = self.delete(&name);
        if back != data {
            return Err(ObjError::Other {
                object: name,
                detail: "read back different bytes than were written".to_owned(),
            });
        }
        deleted
    }
}

impl Inner {
    fn err(&self, e: object_store::Error, object: &str) -> ObjError {
        error::map(e, object, &self.location, &self.redact)
    }

    fn meta(&self, m: object_store::ObjectMeta) -> ObjectMeta {
        let last_modified = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(
            m.last_modified.timestamp_nanos_opt().unwrap_or(0),
        ))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        let full = m.location.to_string();
        let name = full
            .strip_prefix(self.prefix.as_str())
            .map_or_else(|| full.clone(), str::to_owned);
        ObjectMeta {
            name,
            size: m.size,
            last_modified,
        }
    }

    async fn put(&self, name: String, data: Bytes) -> Result<(), ObjError> {
        let path = ObjPath::from(name.as_str());
        self.store
            .put(&path, data.into())
            .await
            .map_err(|e| self.err(e, &name))?;
        self.sync_if_local(&name).await
    }

    /// On the local backend, makes object `name` durable.
    async fn sync_if_local(&self, name: &str) -> Result<(), ObjError> {
        let path = ObjPath::from(name);
        if let Some((dir, fs)) = &self.local {
            let name = name.to_owned();
            let file = fs
                .path_to_filesystem(&path)
                .map_err(|e| self.err(e, &name))?;
            let dir = dir.clone();
            let synced = tokio::task::spawn_blocking(move || sync_local(&dir, &file))
                .await
                .map_err(|e| ObjError::Other {
                    object: name.clone(),
                    detail: e.to_string(),
                })?;
            synced.map_err(|e| error::io(&e, &name))?;
        }
        Ok(())
    }

    async fn get(&self, name: String) -> Result<Bytes, ObjError> {
        let path = ObjPath::from(name.as_str());
        let got = self
            .store
            .get(&path)
            .await
            .map_err(|e| self.err(e, &name))?;
        got.bytes().await.map_err(|e| self.err(e, &name))
    }
}

/// Makes a freshly renamed file durable: fsync the file, then every
/// directory from its parent up to the store's root (a put may have created
/// them).
fn sync_local(root: &std::path::Path, file: &std::path::Path) -> std::io::Result<()> {
    std::fs::File::open(file)?.sync_all()?;
    let mut dir = file.parent();
    while let Some(d) = dir {
        std::fs::File::open(d)?.sync_all()?;
        if d == root {
            break;
        }
        dir = d.parent();
    }
    Ok(())
}

fn open_local(dir: PathBuf) -> Result<Objects, ObjError> {
    use std::os::unix::fs::DirBuilderExt;
    let location = format!("file://{}", dir.display());
    let bad = |e: &dyn std::fmt::Display| ObjError::Config(format!("{location}: {e}"));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| bad(&e))?;
    let fs = Arc::new(LocalFileSystem::new_with_prefix(&dir).map_err(|e| bad(&e))?);
    // The canonical directory, where LocalFileSystem writes.
    let canonical = std::fs::canonicalize(&dir).map_err(|e| bad(&e))?;
    Ok(Objects {
        inner: Arc::new(Inner {
            store: Arc::clone(&fs) as Arc<dyn ObjectStore>,
            location,
            local: Some((canonical, fs)),
            prefix: String::new(),
            redact: Redact::default(),
        }),
    })
}

fn open_s3(
    cfg: &StoreConfig,
    creds: Option<&S3Credentials>,
    bucket: &str,
    prefix: &str,
) -> Result<Objects, ObjError> {
    let mut location = format!("s3://{bucket}");
    if !prefix.is_empty() {
        location.push('/');
        location.push_str(prefix);
    }
    let client = ClientOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT);
    let retry = RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: MAX_RETRIES,
        retry_timeout: RETRY_TIMEOUT,
    };
    let mut b = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_virtual_hosted_style_request(!cfg.path_style)
        .with_retry(retry);
    let mut client = client;
    if let Some(ep) = &cfg.endpoint {
        let ep = ep.trim_end_matches('/');
        if let Some(rest) = ep.strip_prefix("http://") {
            check_host(rest, ep)?;
            client = client.with_allow_http(true);
        } else if let Some(rest) = ep.strip_prefix("https://") {
            check_host(rest, ep)?;
        } else {
            return Err(ObjError::Config(format!(
                "endpoint {ep:?}: expected http://host[:port] or https://host[:port]"
            )));
        }
        b = b.with_endpoint(ep);
        location.push_str(&format!(" (endpoint {ep})"));
    }
    if let Some(region) = &cfg.region {
        b = b.with_region(region);
    }
    b = b.with_client_options(client);

    let redact = match creds {
        Some(c) => {
            let mut secrets = vec![c.access_key_id.clone(), c.secret_access_key.to_string()];
            secrets.extend(c.session_token.iter().map(|t| t.to_string()));
            b = b.with_credentials(Arc::new(StaticCredentialProvider::new(AwsCredential {
                key_id: c.access_key_id.clone(),
                secret_key: c.secret_access_key.to_string(),
                token: c.session_token.as_ref().map(|t| t.to_string()),
            })));
            Redact::new(secrets)
        }
        None => {
            let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
            let static_keys =
                var("AWS_ACCESS_KEY_ID").is_some() || var("AWS_SECRET_ACCESS_KEY").is_some();
            let web_identity =
                var("AWS_WEB_IDENTITY_TOKEN_FILE").is_some() && var("AWS_ROLE_ARN").is_some();
            let container = var("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI").is_some()
                || var("AWS_CONTAINER_CREDENTIALS_FULL_URI").is_some();
            if static_keys
                && (var("AWS_ACCESS_KEY_ID").is_none() || var("AWS_SECRET_ACCESS_KEY").is_none())
            {
                return Err(ObjError::Config(format!(
                    "{location}: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set together"
                )));
            }
            if !(static_keys || web_identity || container) {
                return Err(ObjError::Config(format!(
                    "{location}: no S3 credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
                )));
            }
            Redact::new(
                [
                    "AWS_ACCESS_KEY_ID",
                    "AWS_SECRET_ACCESS_KEY",
                    "AWS_SESSION_TOKEN",
                ]
                .into_iter()
                .filter_map(var),
            )
        }
    };
    let s3 = b.build().map_err(|e| {
        // Builder errors name settings, never their values; still redacted.
        let r = Redact::default();
        ObjError::Config(format!("{location}: {}", error::map(e, "*", &location, &r)))
    })?;
    let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
        Arc::new(s3)
    } else {
        Arc::new(PrefixStore::new(s3, prefix))
    };
    Ok(Objects {
        inner: Arc::new(Inner {
            store,
            location,
            local: None,
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
            redact,
        }),
    })
}

/// An endpoint's authority: a host with an optional port, nothing else (no
/// user info, path or query).
fn check_host(authority: &str, endpoint: &str) -> Result<(), ObjError> {
    let ok = !authority.is_empty()
        && authority
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    if ok {
        Ok(())
    } else {
        Err(ObjError::Config(format!(
            "endpoint {endpoint:?}: expected scheme://host[:port] without user, path or query"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(url: &str, endpoint: Option<&str>) -> StoreConfig {
        StoreConfig {
            url: url.into(),
            endpoint: endpoint.map(Into::into),
            region: Some("garage".into()),
            path_style: true,
        }
    }

    #[test]
    fn s3_location_and_debug() {
        let creds = S3Credentials::new("GKakid0001", "supersecretvalue", None);
        let o = Objects::open_with_credentials(
            &cfg("s3://snap/a/b", Some("http://127.0.0.1:3900/")),
            &creds,
        )
        .unwrap();
        assert_eq!(
            o.location(),
            "s3://snap/a/b (endpoint http://127.0.0.1:3900)"
        );
        let d = format!("{o:?}");
        assert!(d.contains("s3://snap/a/b"));
        assert!(!d.contains("GKakid0001") && !d.contains("supersecretvalue"));
    }

    #[test]
    fn bad_endpoints() {
        let creds = S3Credentials::new("GKakid0001", "supersecretvalue", None);
        for ep in [
            "127.0.0.1:3900",
            "ftp://x",
            "http://u:p@host",
            "http://h/path",
            "http://",
        ] {
            let r = Objects::open_with_credentials(&cfg("s3://b", Some(ep)), &creds);
            assert!(matches!(r, Err(ObjError::Config(_))), "{ep}");
        }
        let r = Objects::open(&cfg("/tmp/x", Some("http://h")));
        assert!(matches!(r, Err(ObjError::Config(_))));
    }

    #[test]
    fn invalid_names_are_config_errors() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let o = Objects::open(&StoreConfig {
            url,
            ..StoreConfig::default()
        })
        .unwrap();
        for bad in ["", "/a", "a/../b", "a//b"] {
            assert!(matches!(o.put(bad, Bytes::new()), Err(ObjError::Config(_))));
            assert!(matches!(o.get(bad), Err(ObjError::Config(_))));
            assert!(matches!(o.head(bad), Err(ObjError::Config(_))));
            assert!(matches!(o.delete(bad), Err(ObjError::Config(_))));
        }
        assert!(matches!(o.list("../x"), Err(ObjError::Config(_))));
    }

    #[test]
    fn local_dir_is_created_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("a/b");
        let o = Objects::open(&StoreConfig {
            url: sub.display().to_string(),
            ..StoreConfig::default()
        })
        .unwrap();
        assert_eq!(o.location(), format!("file://{}", sub.display()));
        let mode = std::fs::metadata(&sub).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
