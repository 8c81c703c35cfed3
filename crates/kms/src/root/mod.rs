//! The root of trust: the one key that seals every secret the key service
//! stores (key material, secret access keys).
//!
//! Sources (chosen at first start, recorded in `<data-dir>/root.json`):
//! * a **key file**: 32 random bytes, mode 0600, kept outside the data dir
//!   (default: beside it, `<data-dir>.root.key`), created on first start;
//! * a **passphrase**: the root key is random and stored in `root.json`
//!   sealed under an argon2id key derived from the passphrase;
//! * a **PKCS#11 token** (an HSM, or SoftHSM2): the root key is random and
//!   stored in `root.json` encrypted by a non-extractable AES-256 wrapping
//!   key that never leaves the token (see [`pkcs11`]).
//! * a **key provider** (a key in another KMS: AWS KMS, KMIP, Azure Key
//!   Vault, Vault transit; auto-unseal): the root key is random and stored
//!   in `root.json` wrapped by the provider's key, unwrapped there at every
//!   start. Revoking that key at the provider stops the server from
//!   starting.
//!
//! `root.json` also holds a check value, HMAC-SHA256(root, "atrest root key
//! check v1"), which reveals nothing about the key but lets a start with the
//! wrong key fail clearly instead of failing later on every unseal. The same
//! value is kept in the store, so a data dir whose `root.json` was removed is
//! not silently re-keyed.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use atrest_crypto::kdf::Argon2Params;
use atrest_crypto::{Aes256Key, SecretBytes, aead};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

pub mod pkcs11;

pub use pkcs11::Pkcs11Error;

/// Where the root key comes from.
pub enum RootSource {
    /// A key file at this path (created if absent).
    KeyFile(PathBuf),
    /// A passphrase.
    Passphrase(SecretBytes),
    /// A wrapping key in a PKCS#11 token, created there on first start.
    Pkcs11 {
        /// The token vendor's PKCS#11 module (shared library).
        module: PathBuf,
        /// The label of the token.
        token_label: String,
        /// The token's user PIN.
        pin: SecretBytes,
        /// The label of the AES-256 wrapping key in the token.
        key_label: String,
    },
    /// A key in another KMS.
    Provider {
        /// The provider.
        provider: std::sync::Arc<dyn atrest_keyprovider::KeyProvider>,
        /// Its name in the providers file.
        name: String,
        /// The remote key that wraps the root key.
        key: String,
    },
}

impl RootSource {
    /// The kind recorded in `root.json`.
    fn kind(&self) -> &'static str {
        match self {
            Self::KeyFile(_) => KIND_KEY_FILE,
            Self::Passphrase(_) => KIND_PASSPHRASE,
            Self::Pkcs11 { .. } => KIND_PKCS11,
            Self::Provider { .. } => KIND_PROVIDER,
        }
    }
}

const KIND_KEY_FILE: &str = "key-file";
const KIND_PASSPHRASE: &str = "passphrase";
const KIND_PKCS11: &str = "pkcs11";
const KIND_PROVIDER: &str = "provider";

/// How a kind is named in messages.
fn kind_name(kind: &str) -> Option<&'static str> {
    match kind {
        KIND_KEY_FILE => Some("key-file"),
        KIND_PASSPHRASE => Some("passphrase"),
        KIND_PKCS11 => Some("PKCS#11 token"),
        KIND_PROVIDER => Some("key provider"),
        _ => None,
    }
}

/// Why the root of trust could not be opened. Messages say what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RootError {
    /// I/O on the key file or `root.json`.
    #[error("{0}")]
    Io(String),
    /// The key file exists but is unusable.
    #[error("root key file {path}: {reason}")]
    KeyFile {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The data dir was sealed with another kind of root key.
    #[error(
        "this data dir is sealed with a {found} root key, but the server was started with a {given}; start it with the {found} it was created with"
    )]
    WrongKind {
        /// Kind recorded in the data dir.
        found: &'static str,
        /// Kind given.
        given: &'static str,
    },
    /// The key or passphrase does not open this data dir.
    #[error("the {0} does not open this data dir (its check value does not match)")]
    Mismatch(&'static str),
    /// `root.json` is malformed.
    #[error("{0}: {1}")]
    Corrupt(String, String),
    /// A cryptographic failure.
    #[error("{0}")]
    Crypto(#[from] atrest_crypto::CryptoError),
    /// The PKCS#11 token could not open (or create) the root of trust.
    #[error(transparent)]
    Pkcs11(#[from] Pkcs11Error),
    /// The key provider could not wrap or unwrap the root key.
    #[error("key provider {name}: {error}")]
    Provider {
        /// The provider's name.
        name: String,
        /// What it said.
        error: atrest_keyprovider::ProviderError,
    },
}

/// The unsealed root key, held only in memory.
pub struct RootKey {
    key: Aes256Key,
    check: String,
}

impl core::fmt::Debug for RootKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("RootKey(<redacted>)")
    }
}

const CHECK_LABEL: &[u8] = b"atrest root key check v1";
const PASSPHRASE_AAD: &[u8] = b"atrest/root/passphrase/v1";

#[derive(Serialize, Deserialize)]
struct Descriptor {
    v: u32,
    kind: String,
    check: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    passphrase: Option<PassphraseWrap>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pkcs11: Option<pkcs11::Pkcs11Wrap>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    provider: Option<ProviderWrap>,
}

/// The root key as a key provider wrapped it.
#[derive(Serialize, Deserialize)]
struct ProviderWrap {
    /// The provider's name and type when it was wrapped (informative).
    name: String,
    kind: String,
    /// The remote key.
    key: String,
    /// The wrapped root key (base64).
    wrapped: String,
}

#[derive(Serialize, Deserialize)]
struct PassphraseWrap {
    salt: String,
    m_cost_kib: u32,
    t_cost: u32,
    p_cost: u32,
    wrapped: String,
}

fn io(what: &str, path: &Path, e: std::io::Error) -> RootError {
    RootError::Io(format!("{what} {}: {e}", path.display()))
}

impl RootKey {
    /// Wraps an existing key (tests).
    #[must_use]
    pub fn from_key(key: Aes256Key) -> Self {
        let check = hex::encode(atrest_crypto::hash::hmac_sha256(key.expose(), CHECK_LABEL));
        Self { key, check }
    }

    /// A key derived from the root key for one purpose (HKDF-SHA256 with
    /// `info` naming the purpose, for example `atrest/audit/v1`).
    pub fn derive(&self, info: &[u8]) -> Result<Aes256Key, atrest_crypto::CryptoError> {
        atrest_crypto::kdf::hkdf_sha256(self.key.expose(), b"atrest root derivation", &[info])
    }

    /// The check value (public).
    #[must_use]
    pub fn check_value(&self) -> &str {
        &self.check
    }

    /// Seals `secret` with `aad` naming what it is and where it belongs.
    pub fn seal(&self, aad: &[u8], secret: &[u8]) -> Result<String, atrest_crypto::CryptoError> {
        Ok(B64.encode(aead::seal_random_nonce(&self.key, aad, secret)?))
    }

    /// Opens what [`RootKey::seal`] sealed with the same `aad`.
    pub fn open(
        &self,
        aad: &[u8],
        sealed_b64: &str,
    ) -> Result<SecretBytes, atrest_crypto::CryptoError> {
        let sealed = B64
            .decode(sealed_b64)
            .map_err(|_| atrest_crypto::CryptoError::Authentication)?;
        aead::open_random_nonce(&self.key, aad, &sealed)
    }

    /// The root key's bytes, for tests that scan for key material.
    #[cfg(feature = "test-support")]
    #[must_use]
    pub fn expose_for_tests(&self) -> &[u8; 32] {
        self.key.expose()
    }

    /// Opens the root of trust of an existing data dir; never creates one.
    pub fn open_existing(data_dir: &Path, source: RootSource) -> Result<Self, RootError> {
        if !data_dir.join("root.json").exists() {
            return Err(RootError::Io(format!(
                "{} is not an atrest data dir (it has no root.json)",
                data_dir.display()
            )));
        }
        Self::open_or_create(data_dir, source)
    }

    /// Opens the root of trust of `data_dir`, creating it on first start.
    pub fn open_or_create(data_dir: &Path, source: RootSource) -> Result<Self, RootError> {
        let desc_path = data_dir.join("root.json");
        let existing =
            match fs::read(&desc_path) {
                Ok(b) => Some(serde_json::from_slice::<Descriptor>(&b).map_err(|e| {
                    RootError::Corrupt(desc_path.display().to_string(), e.to_string())
                })?),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(io("reading", &desc_path, e)),
            };
        let given = source.kind();
        if let Some(d) = &existing
            && d.kind != given
        {
            let found = kind_name(&d.kind).ok_or_else(|| {
                RootError::Corrupt(
                    desc_path.display().to_string(),
                    format!(
                        "unknown root kind {:?} (written by a newer atrest?)",
                        d.kind
                    ),
                )
            })?;
            return Err(RootError::WrongKind {
                found,
                given: kind_name(given).unwrap_or(given),
            });
        }
        let mut provider_wrap = None;
        let (root, wrap, pkcs11_wrap) = match source {
            RootSource::KeyFile(path) => (
                Self::from_key(load_or_create_key_file(&path, existing.is_none())?),
                None,
                None,
            ),
            RootSource::Provider {
                provider,
                name,
                key,
            } => {
                let failed = |error| RootError::Provider {
                    name: name.clone(),
                    error,
                };
                match existing.as_ref() {
                    Some(d) => {
                        let w = d.provider.as_ref().ok_or_else(|| {
                            RootError::Corrupt(
                                desc_path.display().to_string(),
                                "kind provider without its provider section".to_owned(),
                            )
                        })?;
                        let wrapped = B64.decode(&w.wrapped).map_err(|e| {
                            RootError::Corrupt(desc_path.display().to_string(), e.to_string())
                        })?;
                        // The key recorded at first start wraps the root key;
                        // a different --root-provider-key would not open it.
                        let secret = provider.unwrap(&w.key, &wrapped).map_err(failed)?;
                        (
                            Self::from_key(Aes256Key::from_secret_bytes(&secret)?),
                            None,
                            None,
                        )
                    }
                    None => {
                        let k = Aes256Key::generate()?;
                        let wrapped = provider.wrap(&key, k.expose()).map_err(failed)?;
                        provider_wrap = Some(ProviderWrap {
                            name: name.clone(),
                            kind: provider.kind().to_owned(),
                            key,
                            wrapped: B64.encode(wrapped),
                        });
                        (Self::from_key(k), None, None)
                    }
                }
            }
            RootSource::Passphrase(pass) => {
                match existing.as_ref().and_then(|d| d.passphrase.as_ref()) {
                    Some(w) => (
                        Self::from_key(unwrap_with_passphrase(&pass, w, &desc_path)?),
                        None,
                        None,
                    ),
                    None => {
                        let key = Aes256Key::generate()?;
                        let w = wrap_with_passphrase(&pass, &key)?;
                        (Self::from_key(key), Some(w), None)
                    }
                }
            }
            RootSource::Pkcs11 {
                module,
                token_label,
                pin,
                key_label,
            } => {
                let cfg = pkcs11::Config {
                    module: &module,
                    token_label: &token_label,
                    pin: &pin,
                    key_label: &key_label,
                };
                match &existing {
                    // Never create a wrapping key for an existing data dir:
                    // its root key is wrapped by the old one.
                    Some(d) => {
                        let w = d.pkcs11.as_ref().ok_or_else(|| {
                            RootError::Corrupt(
                                desc_path.display().to_string(),
                                "kind pkcs11 without its pkcs11 section".to_owned(),
                            )
                        })?;
                        (
                            Self::from_key(pkcs11::open(&cfg, w, &desc_path)?),
                            None,
                            None,
                        )
                    }
                    None => {
                        let (key, w) = pkcs11::create(&cfg)?;
                        (Self::from_key(key), None, Some(w))
                    }
                }
            }
        };
        match existing {
            Some(d) => {
                if !atrest_crypto::ct_eq(d.check.as_bytes(), root.check.as_bytes()) {
                    return Err(RootError::Mismatch(match given {
                        KIND_PASSPHRASE => "passphrase",
                        KIND_PKCS11 => "PKCS#11 wrapping key",
                        KIND_PROVIDER => "key provider's key",
                        _ => "root key file",
                    }));
                }
            }
            None => {
                let d = Descriptor {
                    v: 1,
                    kind: given.to_owned(),
                    check: root.check.clone(),
                    passphrase: wrap,
                    pkcs11: pkcs11_wrap,
                    provider: provider_wrap,
                };
                let bytes = serde_json::to_vec_pretty(&d)
                    .map_err(|e| RootError::Io(format!("encoding root.json: {e}")))?;
                write_atomically(&desc_path, &bytes, 0o600)?;
            }
        }
        Ok(root)
    }
}

fn load_or_create_key_file(path: &Path, may_create: bool) -> Result<Aes256Key, RootError> {
    let bad = |reason: String| RootError::KeyFile {
        path: path.display().to_string(),
        reason,
    };
    match fs::metadata(path) {
        Ok(meta) => {
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(bad(format!(
                    "permissions {:o} let other users read it; run chmod 600 on it",
                    meta.permissions().mode() & 0o777
                )));
            }
            let bytes = SecretBytes::new(fs::read(path).map_err(|e| io("reading", path, e))?);
            if bytes.len() != 32 {
                return Err(bad(format!(
                    "must hold exactly 32 bytes, holds {}",
                    bytes.len()
                )));
            }
            Ok(Aes256Key::from_secret_bytes(&bytes)?)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !may_create {
                return Err(bad(
                    "is missing, but this data dir was sealed with a key file; without it the data cannot be unsealed".into(),
                ));
            }
            let key = Aes256Key::generate()?;
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).map_err(|e| io("creating", parent, e))?;
            }
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| io("creating", path, e))?;
            f.write_all(key.expose())
                .map_err(|e| io("writing", path, e))?;
            f.sync_all().map_err(|e| io("syncing", path, e))?;
            sync_parent(path)?;
            Ok(key)
        }
        Err(e) => Err(io("reading", path, e)),
    }
}

fn wrap_with_passphrase(pass: &SecretBytes, root: &Aes256Key) -> Result<PassphraseWrap, RootError> {
    let params = Argon2Params::default();
    let salt = atrest_crypto::rand::array::<16>()?;
    let kek = atrest_crypto::kdf::argon2id(pass.expose(), &salt, params)?;
    let wrapped = aead::seal_random_nonce(&kek, PASSPHRASE_AAD, root.expose())?;
    Ok(PassphraseWrap {
        salt: hex::encode(salt),
        m_cost_kib: params.m_cost_kib,
        t_cost: params.t_cost,
        p_cost: params.p_cost,
        wrapped: B64.encode(wrapped),
    })
}

fn unwrap_with_passphrase(
    pass: &SecretBytes,
    w: &PassphraseWrap,
    desc_path: &Path,
) -> Result<Aes256Key, RootError> {
    let corrupt = |what: &str| RootError::Corrupt(desc_path.display().to_string(), what.to_owned());
    let salt = hex::decode(&w.salt).map_err(|_| corrupt("bad salt"))?;
    let wrapped = B64
        .decode(&w.wrapped)
        .map_err(|_| corrupt("bad wrapped key"))?;
    let params = Argon2Params {
        m_cost_kib: w.m_cost_kib,
        t_cost: w.t_cost,
        p_cost: w.p_cost,
    };
    let kek = atrest_crypto::kdf::argon2id(pass.expose(), &salt, params)?;
    let root = aead::open_random_nonce(&kek, PASSPHRASE_AAD, &wrapped)
        .map_err(|_| RootError::Mismatch("passphrase"))?;
    Ok(Aes256Key::from_secret_bytes(&root)?)
}

fn sync_parent(path: &Path) -> Result<(), RootError> {
    if let Some(parent) = path.parent() {
        let dir = fs::File::open(parent).map_err(|e| io("opening", parent, e))?;
        dir.sync_all().map_err(|e| io("syncing", parent, e))?;
    }
    Ok(())
}

/// Writes `bytes` to `path` so that a crash leaves either the old file or the
/// new one: write a temporary file, fsync it, rename, fsync the directory.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), RootError> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| io("creating", &tmp, e))?;
    f.write_all(bytes).map_err(|e| io("writing", &tmp, e))?;
    f.sync_all().map_err(|e| io("syncing", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| io("renaming", &tmp, e))?;
    sync_parent(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_is_created_reused_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        fs::create_dir(&data).unwrap();
        let kf = dir.path().join("data.root.key");
        let a = RootKey::open_or_create(&data, RootSource::KeyFile(kf.clone())).unwrap();
        assert_eq!(
            fs::metadata(&kf).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let b = RootKey::open_or_create(&data, RootSource::KeyFile(kf.clone())).unwrap();
        assert_eq!(a.check_value(), b.check_value());
        let sealed = a.seal(b"aad", b"secret").unwrap();
        assert_eq!(b.open(b"aad", &sealed).unwrap().expose(), b"secret");
        assert!(b.open(b"other aad", &sealed).is_err());

        // A different key file is refused by the check value.
        fs::write(&kf, [9u8; 32]).unwrap();
        assert!(matches!(
            RootKey::open_or_create(&data, RootSource::KeyFile(kf.clone())),
            Err(RootError::Mismatch(_))
        ));
        // A world-readable key file is refused.
        fs::set_permissions(&kf, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            RootKey::open_or_create(&data, RootSource::KeyFile(kf.clone())),
            Err(RootError::KeyFile { .. })
        ));
        // A missing key file for an existing data dir is not re-created.
        fs::remove_file(&kf).unwrap();
        assert!(matches!(
            RootKey::open_or_create(&data, RootSource::KeyFile(kf.clone())),
            Err(RootError::KeyFile { .. })
        ));
        assert!(!kf.exists());
        // The wrong kind is refused with a message naming the right one.
        let e = RootKey::open_or_create(
            &data,
            RootSource::Passphrase(SecretBytes::new(b"x".to_vec())),
        )
        .unwrap_err();
        assert!(e.to_string().contains("key-file"), "{e}");
    }

    #[test]
    fn kinds_are_named_and_unknown_kinds_refused() {
        let dir = tempfile::tempdir().unwrap();
        let desc = dir.path().join("root.json");
        let kf = dir.path().join("root.key");
        fs::write(&desc, br#"{"v":1,"kind":"pkcs11","check":"00"}"#).unwrap();
        let e = RootKey::open_or_create(dir.path(), RootSource::KeyFile(kf.clone())).unwrap_err();
        assert!(
            e.to_string().contains(
                "sealed with a PKCS#11 token root key, but the server was started with a key-file"
            ),
            "{e}"
        );
        assert!(!kf.exists());
        // A PKCS#11 data dir without its pkcs11 section is corrupt (checked
        // before the module is loaded).
        let e = RootKey::open_or_create(
            dir.path(),
            RootSource::Pkcs11 {
                module: dir.path().join("no-module.so"),
                token_label: "T".into(),
                pin: SecretBytes::new(b"1234".to_vec()),
                key_label: "atrest-root".into(),
            },
        )
        .unwrap_err();
        assert!(matches!(e, RootError::Corrupt(..)), "{e}");
        fs::write(&desc, br#"{"v":1,"kind":"cloud-kms","check":"00"}"#).unwrap();
        let e = RootKey::open_or_create(dir.path(), RootSource::KeyFile(kf)).unwrap_err();
        assert!(matches!(e, RootError::Corrupt(..)), "{e}");
        assert!(e.to_string().contains("cloud-kms"), "{e}");
    }

    #[test]
    fn passphrase_wraps_a_random_root_key() {
        let dir = tempfile::tempdir().unwrap();
        let pass = || RootSource::Passphrase(SecretBytes::new(b"correct horse battery".to_vec()));
        let a = RootKey::open_or_create(dir.path(), pass()).unwrap();
        let b = RootKey::open_or_create(dir.path(), pass()).unwrap();
        assert_eq!(a.check_value(), b.check_value());
        let text = fs::read_to_string(dir.path().join("root.json")).unwrap();
        assert!(!text.contains("correct horse"));
        let e = RootKey::open_or_create(
            dir.path(),
            RootSource::Passphrase(SecretBytes::new(b"wrong".to_vec())),
        )
        .unwrap_err();
        assert!(matches!(e, RootError::Mismatch("passphrase")), "{e}");
    }
}
