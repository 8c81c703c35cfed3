//! The PKCS#11 root-of-trust source: the root key is random, as with a
//! passphrase, and `root.json` holds it encrypted (CKM_AES_GCM, 12-byte
//! random IV, 128-bit tag, AAD `atrest/root/pkcs11/v1`) under an AES-256
//! **wrapping key** that lives in a PKCS#11 token (an HSM, or SoftHSM2) and
//! never leaves it: it is generated there (`CKA_SENSITIVE`, not
//! `CKA_EXTRACTABLE`) and used through `C_Encrypt` and `C_Decrypt`.
//!
//! The module is loaded, initialised, logged into with the user PIN, used and
//! finalised within one call of [`super::RootKey::open_or_create`]; afterwards
//! only the unsealed root key remains, in atrest's memory, in zeroizing types.

use std::path::Path;

use atrest_crypto::{Aes256Key, SecretBytes};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::{RawAuthPin, Ulong};
use serde::{Deserialize, Serialize};

use super::RootError;

/// The AAD of the wrapped root key.
const AAD: &[u8] = b"atrest/root/pkcs11/v1";
/// GCM IV length in bytes.
const IV_LEN: usize = 12;
/// GCM tag length in bits.
const TAG_BITS: u64 = 128;

/// The `pkcs11` section of `root.json`: where the wrapping key is and the
/// root key wrapped under it. Nothing in it is secret.
#[derive(Serialize, Deserialize)]
pub(super) struct Pkcs11Wrap {
    token_label: String,
    key_label: String,
    /// The GCM IV, hex.
    iv: String,
    /// The root key encrypted under the wrapping key, with its tag, base64.
    wrapped: String,
}

impl Pkcs11Wrap {
    fn recorded(&self) -> String {
        format!("key '{}' in token '{}'", self.key_label, self.token_label)
    }
}

/// Where the wrapping key is, and how to log in.
pub(super) struct Config<'a> {
    pub(super) module: &'a Path,
    pub(super) token_label: &'a str,
    pub(super) pin: &'a SecretBytes,
    pub(super) key_label: &'a str,
}

/// Why the PKCS#11 token could not open (or create) the root of trust.
/// Messages say what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Pkcs11Error {
    /// The module (shared library) could not be loaded.
    #[error(
        "cannot load the PKCS#11 module {path} (for token '{token}'): {reason}; give the path of the token vendor's PKCS#11 library (SoftHSM2: /usr/lib/softhsm/libsofthsm2.so, from the softhsm2 package)"
    )]
    Module {
        /// The module path.
        path: String,
        /// The token asked for.
        token: String,
        /// The loader's error.
        reason: String,
    },
    /// `C_Initialize` failed.
    #[error(
        "cannot open PKCS#11 token '{token}': the module {path} failed to initialise ({code}); check its configuration (SoftHSM2: the file SOFTHSM2_CONF names, and that its tokendir exists)"
    )]
    Initialize {
        /// The module path.
        path: String,
        /// The token asked for.
        token: String,
        /// The PKCS#11 return code.
        code: String,
    },
    /// No initialised token carries the label.
    #[error("no PKCS#11 token labelled '{token}' in module {path}; {detail}")]
    TokenNotFound {
        /// The label asked for.
        token: String,
        /// The module path.
        path: String,
        /// The labels present and what to do.
        detail: String,
    },
    /// Several tokens carry the label.
    #[error(
        "{count} PKCS#11 tokens are labelled '{token}' in module {path}; give the token atrest uses a label of its own"
    )]
    AmbiguousToken {
        /// The label.
        token: String,
        /// The module path.
        path: String,
        /// How many tokens carry it.
        count: usize,
    },
    /// The token refused the PIN.
    #[error("the PIN for PKCS#11 token '{token}' was refused ({code}): {advice}")]
    Pin {
        /// The token.
        token: String,
        /// The PKCS#11 return code, `CKR_PIN_INCORRECT` for a wrong PIN.
        code: String,
        /// What to do.
        advice: &'static str,
    },
    /// The wrapping key of an existing data dir is not in the token.
    #[error(
        "PKCS#11 token '{token}' holds no AES key labelled '{key}' (searched after logging in with the user PIN), but this data dir's root key is wrapped by {recorded}; without that key the data cannot be unsealed: start with the token and key label that hold it, or restore the key from the token's backup if it was deleted (atrest creates a wrapping key only for a new data dir)"
    )]
    KeyMissing {
        /// The token searched.
        token: String,
        /// The label searched for.
        key: String,
        /// The token and key recorded in `root.json`.
        recorded: String,
    },
    /// Several keys carry the label.
    #[error(
        "PKCS#11 token '{token}' holds {count} AES keys labelled '{key}'; atrest needs exactly one: give it a label of its own"
    )]
    AmbiguousKey {
        /// The token.
        token: String,
        /// The label.
        key: String,
        /// How many keys carry it.
        count: usize,
    },
    /// The key found does not decrypt the wrapped root key.
    #[error(
        "key '{key}' in PKCS#11 token '{token}' does not open this data dir (unwrapping the root key failed: {code}); it was sealed with {recorded}: start with that token and key (a key with the same label in another token is a different key)"
    )]
    Unwrap {
        /// The token used.
        token: String,
        /// The key label used.
        key: String,
        /// The PKCS#11 return code.
        code: String,
        /// The token and key recorded in `root.json`.
        recorded: String,
    },
    /// Any other failure of the token.
    #[error("PKCS#11 token '{token}': {operation} failed: {reason}")]
    Token {
        /// The token.
        token: String,
        /// What atrest was doing.
        operation: &'static str,
        /// The error.
        reason: String,
    },
}

/// `CKR_PIN_INCORRECT` from `RvError::PinIncorrect`.
fn ckr_name(rv: RvError) -> String {
    let debug = format!("{rv:?}");
    if !debug.chars().all(|c| c.is_ascii_alphanumeric()) {
        return debug;
    }
    let mut out = String::from("CKR");
    for c in debug.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// A short description of a cryptoki error: the CKR_ code and the function.
fn describe(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(rv, function) => format!("{} from C_{function:?}", ckr_name(*rv)),
        other => other.to_string(),
    }
}

/// The loaded and initialised module; finalised when dropped (unless it was
/// already initialised by someone else in this process).
struct Module {
    ctx: Option<Pkcs11>,
    finalize: bool,
}

impl Drop for Module {
    fn drop(&mut self) {
        if let Some(ctx) = self.ctx.take()
            && self.finalize
            && let Err(e) = ctx.finalize()
        {
            tracing::warn!("C_Finalize of the PKCS#11 module failed: {e}");
        }
    }
}

/// A logged-in session on the token. Fields drop in order: the session
/// closes before the module is finalised.
struct Token {
    session: Session,
    _module: Module,
    label: String,
}

impl Drop for Token {
    fn drop(&mut self) {
        // Closing the last session logs out too; say it explicitly anyway.
        let _ = self.session.logout();
    }
}

impl Token {
    /// Loads the module, finds the token and logs in. `recorded` names the
    /// token and key of an existing data dir, for the messages.
    fn open(
        cfg: &Config<'_>,
        read_write: bool,
        recorded: Option<&str>,
    ) -> Result<Self, Pkcs11Error> {
        let path = cfg.module.display().to_string();
        let token = cfg.token_label.to_owned();
        let ctx = Pkcs11::new(cfg.module).map_err(|e| Pkcs11Error::Module {
            path: path.clone(),
            token: token.clone(),
            reason: match e {
                CkError::LibraryLoading(l) => l.to_string(),
                other => describe(&other),
            },
        })?;
        let finalize = match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) => true,
            Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => false,
            Err(e) => {
                return Err(Pkcs11Error::Initialize {
                    path,
                    token,
                    code: describe(&e),
                });
            }
        };
        let module = Module {
            ctx: Some(ctx.clone()),
            finalize,
        };
        let fail = |operation: &'static str| {
            let token = token.clone();
            move |e: CkError| Pkcs11Error::Token {
                token,
                operation,
                reason: describe(&e),
            }
        };
        let slots = ctx
            .get_slots_with_token()
            .map_err(fail("listing the slots"))?;
        let mut present = Vec::new();
        let mut matching = Vec::new();
        for slot in slots {
            let info = ctx
                .get_token_info(slot)
                .map_err(fail("reading token information"))?;
            if !info.token_initialized() {
                continue;
            }
            let label = info.label().trim_end().to_owned();
            if label == cfg.token_label {
                matching.push(slot);
            }
            present.push(format!("'{label}'"));
        }
        let slot = match matching.as_slice() {
            [slot] => *slot,
            [] => {
                let seen = if present.is_empty() {
                    "the module shows no initialised token".to_owned()
                } else {
                    format!("the tokens present are labelled {}", present.join(", "))
                };
                let advice = match recorded {
                    Some(r) => format!(
                        "this data dir's root key is wrapped by {r}, and cannot be unsealed without it: give that token's label, or make the token available if it is missing (SoftHSM2: check the tokendir in SOFTHSM2_CONF)"
                    ),
                    None if present.is_empty() => "initialise a token with the token's tools (SoftHSM2: softhsm2-util --init-token --free --label LABEL)".to_owned(),
                    None => "give one of these labels".to_owned(),
                };
                return Err(Pkcs11Error::TokenNotFound {
                    token,
                    path,
                    detail: format!("{seen}; {advice}"),
                });
            }
            several => {
                return Err(Pkcs11Error::AmbiguousToken {
                    token,
                    path,
                    count: several.len(),
                });
            }
        };
        let session = if read_write {
            ctx.open_rw_session(slot)
        } else {
            ctx.open_ro_session(slot)
        }
        .map_err(fail("opening a session"))?;
        let pin = RawAuthPin::new(Box::new(cfg.pin.expose().to_vec()));
        match session.login_with_raw(UserType::User, &pin) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(e) => {
                if let CkError::Pkcs11(rv, _) = e
                    && let Some(advice) = pin_advice(rv)
                {
                    return Err(Pkcs11Error::Pin {
                        token,
                        code: ckr_name(rv),
                        advice,
                    });
                }
                return Err(fail("logging in with the user PIN")(e));
            }
        }
        Ok(Self {
            session,
            _module: module,
            label: token,
        })
    }

    fn fail(&self, operation: &'static str) -> impl FnOnce(CkError) -> Pkcs11Error + '_ {
        move |e| Pkcs11Error::Token {
            token: self.label.clone(),
            operation,
            reason: describe(&e),
        }
    }

    /// The one AES secret key labelled `label`, if any.
    fn find_key(&self, label: &str) -> Result<Option<ObjectHandle>, Pkcs11Error> {
        let found = self
            .session
            .find_objects(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::Label(label.as_bytes().to_vec()),
            ])
            .map_err(self.fail("searching for the wrapping key"))?;
        match found.as_slice() {
            [] => Ok(None),
            [key] => Ok(Some(*key)),
            several => Err(Pkcs11Error::AmbiguousKey {
                token: self.label.clone(),
                key: label.to_owned(),
                count: several.len(),
            }),
        }
    }

    /// Generates a non-extractable AES-256 wrapping key in the token.
    fn generate_key(&self, label: &str) -> Result<ObjectHandle, Pkcs11Error> {
        self.session
            .generate_key(
                &Mechanism::AesKeyGen,
                &[
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                    Attribute::Encrypt(true),
                    Attribute::Decrypt(true),
                    Attribute::ValueLen(Ulong::new(32)),
                    Attribute::Label(label.as_bytes().to_vec()),
                ],
            )
            .map_err(self.fail("generating the AES-256 wrapping key (CKM_AES_KEY_GEN)"))
    }

    /// Warns when a key found at first start could leave the token.
    fn warn_if_exportable(&self, key: ObjectHandle, label: &str) {
        let Ok(attrs) = self
            .session
            .get_attributes(key, &[AttributeType::Sensitive, AttributeType::Extractable])
        else {
            return;
        };
        for a in attrs {
            if matches!(
                a,
                Attribute::Sensitive(false) | Attribute::Extractable(true)
            ) {
                tracing::warn!(
                    token = %self.label,
                    key = label,
                    "the PKCS#11 wrapping key is not sensitive or is extractable: whoever holds the PIN could copy it out of the token"
                );
                return;
            }
        }
    }

    fn encrypt(
        &self,
        key: ObjectHandle,
        root: &Aes256Key,
    ) -> Result<([u8; IV_LEN], Vec<u8>), RootError> {
        let mut iv = atrest_crypto::rand::array::<IV_LEN>()?;
        let wrapped = {
            let params = GcmParams::new(&mut iv, AAD, Ulong::new(TAG_BITS))
                .map_err(self.fail("preparing CKM_AES_GCM"))?;
            self.session
                .encrypt(&Mechanism::AesGcm(params), key, root.expose())
                .map_err(self.fail("wrapping the root key (C_Encrypt, CKM_AES_GCM)"))?
        };
        Ok((iv, wrapped))
    }

    fn decrypt(
        &self,
        key: ObjectHandle,
        iv: &[u8],
        wrapped: &[u8],
    ) -> Result<SecretBytes, CkError> {
        let mut iv = iv.to_vec();
        let params = GcmParams::new(&mut iv, AAD, Ulong::new(TAG_BITS))?;
        // Straight into a zeroizing type: the Vec's allocation is the one
        // that is wiped on drop.
        Ok(SecretBytes::new(self.session.decrypt(
            &Mechanism::AesGcm(params),
            key,
            wrapped,
        )?))
    }
}

/// What to tell the operator for a refused PIN; `None` when `rv` is not
/// about the PIN.
fn pin_advice(rv: RvError) -> Option<&'static str> {
    Some(match rv {
        RvError::PinIncorrect => {
            "the PIN is wrong; give the token's user PIN (tokens may lock the PIN after several wrong attempts)"
        }
        RvError::PinLocked => {
            "the user PIN is locked after too many wrong attempts; the token's security officer must unlock it (set a new user PIN)"
        }
        RvError::PinExpired => "the user PIN has expired; set a new one with the token's tools",
        RvError::PinInvalid | RvError::PinLenRange => {
            "this is not a valid PIN for the token (wrong length or characters); give the token's user PIN"
        }
        RvError::UserPinNotInitialized => {
            "the token has no user PIN yet; set one with the token's tools (SoftHSM2: softhsm2-util --init-token sets it)"
        }
        _ => return None,
    })
}

/// First start: find (or generate) the wrapping key, generate the root key
/// and wrap it. Checks that the token unwraps it before returning, so a
/// `root.json` is never written that the token cannot open.
pub(super) fn create(cfg: &Config<'_>) -> Result<(Aes256Key, Pkcs11Wrap), RootError> {
    let token = Token::open(cfg, true, None)?;
    let key = match token.find_key(cfg.key_label)? {
        Some(key) => {
            token.warn_if_exportable(key, cfg.key_label);
            tracing::info!(
                token = cfg.token_label,
                key = cfg.key_label,
                "wrapping the new root key with the existing PKCS#11 key"
            );
            key
        }
        None => {
            let key = token.generate_key(cfg.key_label)?;
            tracing::info!(
                token = cfg.token_label,
                key = cfg.key_label,
                "generated a non-extractable AES-256 wrapping key in the PKCS#11 token"
            );
            key
        }
    };
    let root = Aes256Key::generate()?;
    let (iv, wrapped) = token.encrypt(key, &root)?;
    let back = token
        .decrypt(key, &iv, &wrapped)
        .map_err(token.fail("unwrapping the new root key to check it"))?;
    if !atrest_crypto::ct_eq(back.expose(), root.expose()) {
        return Err(Pkcs11Error::Token {
            token: cfg.token_label.to_owned(),
            operation: "checking the wrapped root key",
            reason: "the token decrypted it to different bytes".to_owned(),
        }
        .into());
    }
    Ok((
        root,
        Pkcs11Wrap {
            token_label: cfg.token_label.to_owned(),
            key_label: cfg.key_label.to_owned(),
            iv: hex::encode(iv),
            wrapped: B64.encode(wrapped),
        },
    ))
}

/// Later starts: unwrap the root key recorded in `root.json`.
pub(super) fn open(
    cfg: &Config<'_>,
    w: &Pkcs11Wrap,
    desc_path: &Path,
) -> Result<Aes256Key, RootError> {
    let corrupt = |what: &str| RootError::Corrupt(desc_path.display().to_string(), what.to_owned());
    let iv = hex::decode(&w.iv).map_err(|_| corrupt("bad pkcs11.iv"))?;
    if iv.len() != IV_LEN {
        return Err(corrupt("pkcs11.iv must be 12 bytes"));
    }
    let wrapped = B64
        .decode(&w.wrapped)
        .map_err(|_| corrupt("bad pkcs11.wrapped"))?;
    let token = Token::open(cfg, false, Some(&w.recorded()))?;
    let Some(key) = token.find_key(cfg.key_label)? else {
        return Err(Pkcs11Error::KeyMissing {
            token: cfg.token_label.to_owned(),
            key: cfg.key_label.to_owned(),
            recorded: w.recorded(),
        }
        .into());
    };
    let root = token
        .decrypt(key, &iv, &wrapped)
        .map_err(|e| Pkcs11Error::Unwrap {
            token: cfg.token_label.to_owned(),
            key: cfg.key_label.to_owned(),
            code: describe(&e),
            recorded: w.recorded(),
        })?;
    Ok(Aes256Key::from_secret_bytes(&root)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_codes_are_named_as_in_the_standard() {
        assert_eq!(ckr_name(RvError::PinIncorrect), "CKR_PIN_INCORRECT");
        assert_eq!(
            ckr_name(RvError::EncryptedDataInvalid),
            "CKR_ENCRYPTED_DATA_INVALID"
        );
        assert!(pin_advice(RvError::PinIncorrect).is_some());
        assert!(pin_advice(RvError::GeneralError).is_none());
    }
}
