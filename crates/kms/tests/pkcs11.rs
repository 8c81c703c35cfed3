//! The PKCS#11 root of trust against a real token: SoftHSM2.
//!
//! SoftHSM2 reads its configuration from the file `SOFTHSM2_CONF` names,
//! which is process-global (and setting a variable in a running process is
//! unsafe), so the test `pkcs11_root_of_trust` prepares a private token dir
//! and configuration, initialises two tokens with `softhsm2-util`, and runs
//! the steps in a child process of this test binary (the ignored test
//! `pkcs11_steps`) with `SOFTHSM2_CONF` set from the start. The steps run
//! serially within that one test.
//!
//! Without SoftHSM2 the test fails, saying to install `softhsm2`
//! (`scripts/test.sh` installs it).

#![allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use atrest_crypto::{Aes256Key, SecretBytes};
use atrest_kms::root::{Pkcs11Error, RootError, RootKey, RootSource};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;

const MODULE_CANDIDATES: &[&str] = &[
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib64/softhsm/libsofthsm2.so",
];
const TOKEN: &str = "T";
const PIN: &str = "1234";
const OTHER_TOKEN: &str = "U";
const OTHER_PIN: &str = "4321";
const KEY_LABEL: &str = "atrest-root";

const ENV_DIR: &str = "ATREST_PKCS11_TEST_DIR";
const ENV_MODULE: &str = "ATREST_PKCS11_TEST_MODULE";

fn softhsm_module() -> PathBuf {
    let found = MODULE_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    let util = Command::new("softhsm2-util").arg("--version").output();
    match (found, util) {
        (Some(module), Ok(out)) if out.status.success() => module,
        (module, util) => panic!(
            "SoftHSM2 is not installed (module found: {module:?}; softhsm2-util: {}): \
             install the softhsm2 package (apt-get install -y softhsm2); scripts/test.sh installs it",
            match util {
                Ok(out) => format!("exit {}", out.status),
                Err(e) => e.to_string(),
            }
        ),
    }
}

fn init_token(conf: &Path, label: &str, pin: &str) {
    let out = Command::new("softhsm2-util")
        .args([
            "--init-token",
            "--free",
            "--label",
            label,
            "--pin",
            pin,
            "--so-pin",
            "5678",
        ])
        .env("SOFTHSM2_CONF", conf)
        .output()
        .expect("running softhsm2-util");
    assert!(
        out.status.success(),
        "softhsm2-util --init-token failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn pkcs11_root_of_trust() {
    let module = softhsm_module();
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    fs::create_dir(&tokens).unwrap();
    let conf = dir.path().join("softhsm2.conf");
    fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
            tokens.display()
        ),
    )
    .unwrap();
    init_token(&conf, TOKEN, PIN);
    init_token(&conf, OTHER_TOKEN, OTHER_PIN);

    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "pkcs11_steps",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SOFTHSM2_CONF", &conf)
        .env(ENV_DIR, dir.path())
        .env(ENV_MODULE, &module)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "the PKCS#11 steps failed:\n{text}");
    assert!(
        text.contains("1 passed"),
        "the PKCS#11 steps did not run:\n{text}"
    );
}

/// A cryptoki session on `token`, logged in, for inspecting the token; the
/// module is finalised afterwards so that atrest can initialise it again.
fn with_token<R>(module: &Path, token: &str, pin: &str, f: impl FnOnce(&Session) -> R) -> R {
    let ctx = Pkcs11::new(module).unwrap();
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label() == token)
        .unwrap();
    let r = {
        let session = ctx.open_rw_session(slot).unwrap();
        session
            .login(UserType::User, Some(&AuthPin::from(pin.to_owned())))
            .unwrap();
        f(&session)
    };
    ctx.finalize().unwrap();
    r
}

fn keys_labelled(session: &Session, label: &str) -> Vec<cryptoki::object::ObjectHandle> {
    session
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .unwrap()
}

fn source(module: &Path, token: &str, pin: &str, key_label: &str) -> RootSource {
    RootSource::Pkcs11 {
        module: module.to_path_buf(),
        token_label: token.to_owned(),
        pin: SecretBytes::new(pin.as_bytes().to_vec()),
        key_label: key_label.to_owned(),
    }
}

#[test]
#[ignore = "a step of pkcs11_root_of_trust, which runs it with SOFTHSM2_CONF set"]
fn pkcs11_steps() {
    let (Some(dir), Some(module)) = (std::env::var_os(ENV_DIR), std::env::var_os(ENV_MODULE))
    else {
        println!("pkcs11_steps runs inside pkcs11_root_of_trust; nothing to do on its own");
        return;
    };
    let dir = PathBuf::from(dir);
    let module = PathBuf::from(module);
    let src = |key_label: &str| source(&module, TOKEN, PIN, key_label);

    println!("step: first start creates the wrapping key and root.json");
    let data = dir.join("data");
    fs::create_dir(&data).unwrap();
    with_token(&module, TOKEN, PIN, |s| {
        assert!(keys_labelled(s, KEY_LABEL).is_empty());
    });
    let a = RootKey::open_or_create(&data, src(KEY_LABEL)).unwrap();
    let desc_path = data.join("root.json");
    let desc_bytes = fs::read(&desc_path).unwrap();
    let desc: serde_json::Value = serde_json::from_slice(&desc_bytes).unwrap();
    assert_eq!(desc["kind"], "pkcs11", "{desc}");
    assert_eq!(desc["check"], a.check_value(), "{desc}");
    let p = &desc["pkcs11"];
    assert_eq!(p["token_label"], TOKEN, "{desc}");
    assert_eq!(p["key_label"], KEY_LABEL, "{desc}");
    let iv = hex::decode(p["iv"].as_str().unwrap()).unwrap();
    assert_eq!(iv.len(), 12);
    let wrapped = B64.decode(p["wrapped"].as_str().unwrap()).unwrap();
    assert_eq!(wrapped.len(), 32 + 16, "root key and a 128-bit tag");
    let text = String::from_utf8(desc_bytes.clone()).unwrap();
    assert!(!text.contains(PIN), "root.json must not hold the PIN");
    assert!(!text.contains("libsofthsm2"), "nor the module path");
    with_token(&module, TOKEN, PIN, |s| {
        let keys = keys_labelled(s, KEY_LABEL);
        assert_eq!(keys.len(), 1);
        let attrs = s
            .get_attributes(
                keys[0],
                &[
                    AttributeType::Token,
                    AttributeType::Private,
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                    AttributeType::Encrypt,
                    AttributeType::Decrypt,
                    AttributeType::ValueLen,
                ],
            )
            .unwrap();
        for attr in &attrs {
            match attr {
                Attribute::Token(v)
                | Attribute::Private(v)
                | Attribute::Sensitive(v)
                | Attribute::Encrypt(v)
                | Attribute::Decrypt(v) => assert!(*v, "{attr:?}"),
                Attribute::Extractable(v) => assert!(!*v, "{attr:?}"),
                Attribute::ValueLen(n) => assert_eq!(u64::from(*n), 32),
                other => panic!("unexpected {other:?}"),
            }
        }
        // The token refuses to reveal the wrapping key.
        let value = s.get_attributes(keys[0], &[AttributeType::Value]).unwrap();
        assert!(
            !value.iter().any(|a| matches!(a, Attribute::Value(_))),
            "the wrapping key's value must not be readable: {value:?}"
        );
    });

    println!("step: the second start opens the same root key");
    let b = RootKey::open_or_create(&data, src(KEY_LABEL)).unwrap();
    assert_eq!(a.check_value(), b.check_value());
    let sealed = a.seal(b"aad", b"sealed under the token").unwrap();
    assert_eq!(
        b.open(b"aad", &sealed).unwrap().expose(),
        b"sealed under the token"
    );
    assert!(b.open(b"other aad", &sealed).is_err());
    assert_eq!(
        a.derive(b"atrest/test/v1").unwrap().expose(),
        b.derive(b"atrest/test/v1").unwrap().expose()
    );
    assert_eq!(
        fs::read(&desc_path).unwrap(),
        desc_bytes,
        "a later start rewrites nothing"
    );

    println!("step: root.json holds no root key bytes");
    let key = a.expose_for_tests();
    for needle in [
        key.to_vec(),
        hex::encode(key).into_bytes(),
        B64.encode(key).into_bytes(),
    ] {
        assert!(
            !desc_bytes
                .windows(needle.len())
                .any(|w| w == needle.as_slice()),
            "root.json holds the root key"
        );
    }
    // No field of root.json, decoded, is (or contains) the root key, nor
    // opens what the root key sealed.
    for field in [
        p["iv"].as_str().unwrap(),
        p["wrapped"].as_str().unwrap(),
        desc["check"].as_str().unwrap(),
    ] {
        for decoded in [hex::decode(field).ok(), B64.decode(field).ok()]
            .into_iter()
            .flatten()
        {
            assert!(!decoded.windows(32).any(|w| w == key.as_slice()));
            for w in decoded.windows(32) {
                let candidate = RootKey::from_key(Aes256Key::from_slice(w).unwrap());
                assert!(candidate.open(b"aad", &sealed).is_err());
            }
        }
    }

    println!("step: a wrong PIN is refused with CKR_PIN_INCORRECT");
    let e = RootKey::open_or_create(&data, source(&module, TOKEN, "9999", KEY_LABEL)).unwrap_err();
    let msg = e.to_string();
    println!("  refused: {msg}");
    assert!(
        matches!(&e, RootError::Pkcs11(Pkcs11Error::Pin { code, .. }) if code == "CKR_PIN_INCORRECT"),
        "{msg}"
    );
    assert!(
        msg.contains("PIN") && msg.contains("'T'") && msg.contains("wrong"),
        "{msg}"
    );

    println!("step: a wrong token label is refused, listing the labels present");
    let e = RootKey::open_or_create(&data, source(&module, "nope", PIN, KEY_LABEL)).unwrap_err();
    let msg = e.to_string();
    println!("  refused: {msg}");
    assert!(
        matches!(&e, RootError::Pkcs11(Pkcs11Error::TokenNotFound { .. })),
        "{msg}"
    );
    assert!(
        msg.contains("'nope'") && msg.contains("'T'") && msg.contains("'U'"),
        "{msg}"
    );

    println!("step: a module that cannot be loaded is named");
    let missing = dir.join("no-such-module.so");
    let e = RootKey::open_or_create(&data, source(&missing, TOKEN, PIN, KEY_LABEL)).unwrap_err();
    let msg = e.to_string();
    println!("  refused: {msg}");
    assert!(
        matches!(&e, RootError::Pkcs11(Pkcs11Error::Module { .. })),
        "{msg}"
    );
    assert!(msg.contains(&missing.display().to_string()), "{msg}");

    println!("step: a key with the same label in another token does not open it");
    let other_data = dir.join("other-data");
    fs::create_dir(&other_data).unwrap();
    let c = RootKey::open_or_create(
        &other_data,
        source(&module, OTHER_TOKEN, OTHER_PIN, KEY_LABEL),
    )
    .unwrap();
    assert_ne!(
        c.check_value(),
        a.check_value(),
        "every data dir has its own root key"
    );
    let e = RootKey::open_or_create(&data, source(&module, OTHER_TOKEN, OTHER_PIN, KEY_LABEL))
        .unwrap_err();
    let msg = e.to_string();
    println!("  refused: {msg}");
    assert!(
        matches!(&e, RootError::Pkcs11(Pkcs11Error::Unwrap { .. })),
        "{msg}"
    );
    assert!(msg.contains("key 'atrest-root' in token 'T'"), "{msg}");

    println!("step: a key label that is not in the token is not created for an existing data dir");
    let e = RootKey::open_or_create(&data, src("some-other-key")).unwrap_err();
    let msg = e.to_string();
    println!("  refused: {msg}");
    assert!(
        matches!(&e, RootError::Pkcs11(Pkcs11Error::KeyMissing { .. })),
        "{msg}"
    );
    assert!(
        msg.contains("'some-other-key'") && msg.contains("key 'atrest-root' in token 'T'"),
        "{msg}"
    );
    with_token(&module, TOKEN, PIN, |s| {
        assert!(keys_labelled(s, "some-other-key").is_empty());
    });

    println!("step: a data dir sealed with a key file refuses the PKCS#11 source, and the reverse");
    let e =
        RootKey::open_or_create(&data, RootSource::KeyFile(dir.join("data.root.key"))).unwrap_err();
    let msg = e.to_string();
    println!("  refused: {msg}");
    assert!(matches!(&e, RootError::WrongKind { .. }), "{msg}");
    assert!(msg.contains("sealed with a PKCS#11 token"), "{msg}");
    assert!(
        !dir.join("data.root.key").exists(),
        "a refused start creates no key file"
    );
    let kf_data = dir.join("kf-data");
    fs::create_dir(&kf_data).unwrap();
    RootKey::open_or_create(&kf_data, RootSource::KeyFile(dir.join("kf-data.root.key"))).unwrap();
    let e = RootKey::open_or_create(&kf_data, src("kf-data-key")).unwrap_err();
    let msg = e.to_string();
    println!("  refused: {msg}");
    assert!(matches!(&e, RootError::WrongKind { .. }), "{msg}");
    assert!(msg.contains("sealed with a key-file"), "{msg}");
    with_token(&module, TOKEN, PIN, |s| {
        assert!(
            keys_labelled(s, "kf-data-key").is_empty(),
            "a refused start creates no token key"
        );
    });

    println!("step: the wrapping key deleted from the token: refused, root.json untouched");
    with_token(&module, TOKEN, PIN, |s| {
        let keys = keys_labelled(s, KEY_LABEL);
        assert_eq!(keys.len(), 1);
        s.destroy_object(keys[0]).unwrap();
    });
    let e = RootKey::open_or_create(&data, src(KEY_LABEL)).unwrap_err();
    let msg = e.to_string();
    println!("  refused: {msg}");
    assert!(
        matches!(&e, RootError::Pkcs11(Pkcs11Error::KeyMissing { .. })),
        "{msg}"
    );
    assert!(
        msg.contains("'atrest-root'") && msg.contains("cannot be unsealed"),
        "{msg}"
    );
    assert_eq!(
        fs::read(&desc_path).unwrap(),
        desc_bytes,
        "root.json untouched"
    );
    with_token(&module, TOKEN, PIN, |s| {
        assert!(
            keys_labelled(s, KEY_LABEL).is_empty(),
            "no new wrapping key was created"
        );
    });
}
