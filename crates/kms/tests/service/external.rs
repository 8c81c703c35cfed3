//! Keys held in another KMS (EXTERNAL_KMS), driven through the service with
//! an in-memory test double of a key provider. The double stands in for a
//! remote KMS only here; the real providers (a second atrest, moto, PyKMIP
//! and the Azure and Vault fakes) are proven in tests/interop.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use atrest_crypto::{Aes256Key, SecretBytes, aead};
use atrest_keyprovider::{KeyProvider, ProviderError, RemoteKey};
use atrest_kms::{KmsError, Providers};
use serde_json::json;

use super::{b64, env, unb64};

/// A TEST DOUBLE of a remote KMS: named keys that can be disabled, and a
/// switch that makes it unreachable.
#[derive(Default)]
struct MemoryProvider {
    keys: Mutex<HashMap<String, (Arc<Aes256Key>, bool)>>,
    down: Mutex<bool>,
    wraps: Mutex<usize>,
}

impl MemoryProvider {
    fn add(&self, name: &str) {
        self.keys.lock().unwrap().insert(
            name.to_owned(),
            (Arc::new(Aes256Key::generate().unwrap()), true),
        );
    }
    fn set_enabled(&self, name: &str, on: bool) {
        self.keys.lock().unwrap().get_mut(name).unwrap().1 = on;
    }
    fn usable(&self, name: &str) -> Result<Arc<Aes256Key>, ProviderError> {
        if *self.down.lock().unwrap() {
            return Err(ProviderError::Unavailable("connection refused".into()));
        }
        match self.keys.lock().unwrap().get(name) {
            None => Err(ProviderError::NotFound(format!("no key {name}"))),
            Some((_, false)) => Err(ProviderError::Refused(format!("key {name} is disabled"))),
            Some((k, true)) => Ok(Arc::clone(k)),
        }
    }
}

impl KeyProvider for MemoryProvider {
    fn kind(&self) -> &'static str {
        "memory-test-double"
    }
    fn endpoint(&self) -> String {
        "memory://".into()
    }
    fn wrap(&self, key: &str, data_key: &[u8]) -> Result<Vec<u8>, ProviderError> {
        let k = self.usable(key)?;
        *self.wraps.lock().unwrap() += 1;
        Ok(aead::seal_random_nonce(&k, b"double", data_key).unwrap())
    }
    fn unwrap(&self, key: &str, wrapped: &[u8]) -> Result<SecretBytes, ProviderError> {
        let k = self.usable(key)?;
        aead::open_random_nonce(&k, b"double", wrapped)
            .map_err(|_| ProviderError::InvalidCiphertext("does not open".into()))
    }
    fn describe(&self, key: &str) -> Result<RemoteKey, ProviderError> {
        self.usable(key).map(|_| RemoteKey {
            id: key.to_owned(),
            enabled: true,
            state: "Enabled".into(),
            version: None,
            details: BTreeMap::new(),
        })
    }
}

fn with_provider() -> (super::Env, Arc<MemoryProvider>) {
    let e = env();
    let p = Arc::new(MemoryProvider::default());
    p.add("remote-1");
    let mut map: BTreeMap<String, Arc<dyn KeyProvider>> = BTreeMap::new();
    map.insert("corp".into(), p.clone());
    e.kms.set_providers(Providers::new(map));
    (e, p)
}

fn external_key(e: &super::Env) -> String {
    let meta = e.ok(
        "CreateKey",
        json!({"Origin": "EXTERNAL_KMS", "CustomKeyStoreId": "corp", "XksKeyId": "remote-1"}),
    )["KeyMetadata"]
        .clone();
    assert_eq!(meta["Origin"], "EXTERNAL_KMS");
    assert_eq!(meta["CustomKeyStoreId"], "corp");
    assert_eq!(meta["XksKeyConfiguration"]["Id"], "remote-1");
    assert_eq!(meta["ExternalKeyStatus"]["State"], "USABLE");
    meta["KeyId"].as_str().unwrap().to_owned()
}

#[test]
fn create_refuses_what_the_provider_cannot_serve() {
    let (e, p) = with_provider();
    let cases = [
        (
            json!({"Origin": "EXTERNAL_KMS", "CustomKeyStoreId": "nope", "XksKeyId": "remote-1"}),
            "CustomKeyStoreNotFoundException",
        ),
        (
            json!({"Origin": "EXTERNAL_KMS", "CustomKeyStoreId": "corp", "XksKeyId": "missing"}),
            "XksKeyNotFoundException",
        ),
        (
            json!({"Origin": "EXTERNAL_KMS", "XksKeyId": "remote-1"}),
            "ValidationException",
        ),
        (
            json!({"Origin": "EXTERNAL_KMS", "CustomKeyStoreId": "corp"}),
            "ValidationException",
        ),
        (
            json!({"CustomKeyStoreId": "corp", "XksKeyId": "remote-1"}),
            "UnsupportedOperationException",
        ),
        (
            json!({"Origin": "EXTERNAL", "CustomKeyStoreId": "corp", "XksKeyId": "remote-1"}),
            "UnsupportedOperationException",
        ),
    ];
    for (body, want) in cases {
        assert_eq!(e.err("CreateKey", body.clone()).aws_type(), want, "{body}");
    }
    p.set_enabled("remote-1", false);
    let err = e.err(
        "CreateKey",
        json!({"Origin": "EXTERNAL_KMS", "CustomKeyStoreId": "corp", "XksKeyId": "remote-1"}),
    );
    assert_eq!(err.aws_type(), "XksKeyInvalidConfigurationException");
    assert!(err.to_string().contains("disabled"), "{err}");
    *p.down.lock().unwrap() = true;
    let err = e.err(
        "CreateKey",
        json!({"Origin": "EXTERNAL_KMS", "CustomKeyStoreId": "corp", "XksKeyId": "remote-1"}),
    );
    assert_eq!(err.aws_type(), "CustomKeyStoreInvalidStateException");
    // Nothing was created by the refusals.
    assert_eq!(
        e.ok("ListKeys", json!({}))["Keys"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

#[test]
fn every_use_goes_through_the_provider_and_needs_both_keys() {
    let (e, p) = with_provider();
    let key = external_key(&e);
    let before = *p.wraps.lock().unwrap();
    let ct = unb64(
        &e.ok(
            "Encrypt",
            json!({"KeyId": key, "Plaintext": b64(b"hello"), "EncryptionContext": {"a": "b"}}),
        )["CiphertextBlob"],
    );
    assert_eq!(ct[0], 2, "a version-2 blob");
    assert_eq!(*p.wraps.lock().unwrap(), before + 1);
    let out = e.ok(
        "Decrypt",
        json!({"CiphertextBlob": b64(&ct), "EncryptionContext": {"a": "b"}}),
    );
    assert_eq!(unb64(&out["Plaintext"]), b"hello");
    let dk = e.ok(
        "GenerateDataKey",
        json!({"KeyId": key, "KeySpec": "AES_256"}),
    );
    let back = e.ok("Decrypt", json!({"CiphertextBlob": dk["CiphertextBlob"]}));
    assert_eq!(back["Plaintext"], dk["Plaintext"]);
    // ReEncrypt to a local key and back.
    let local = e.new_key();
    let re = e.ok("ReEncrypt", json!({"CiphertextBlob": b64(&ct), "SourceEncryptionContext": {"a": "b"}, "DestinationKeyId": local}));
    assert_eq!(unb64(&re["CiphertextBlob"])[0], 1);
    // The wrong context, an altered wrapped key, a version-1 header for an
    // external key: InvalidCiphertextException, and the key stays usable.
    assert_eq!(
        e.err("Decrypt", json!({"CiphertextBlob": b64(&ct)}))
            .aws_type(),
        "InvalidCiphertextException"
    );
    let mut bad = ct.clone();
    bad[30] ^= 1;
    assert_eq!(
        e.err("Decrypt", json!({"CiphertextBlob": b64(&bad)}))
            .aws_type(),
        "InvalidCiphertextException"
    );
    let mut v1 = ct;
    v1[0] = 1;
    assert_eq!(
        e.err("Decrypt", json!({"CiphertextBlob": b64(&v1)}))
            .aws_type(),
        "InvalidCiphertextException"
    );
    assert_eq!(
        e.ok("DescribeKey", json!({"KeyId": key}))["KeyMetadata"]["ExternalKeyStatus"]["State"],
        "USABLE"
    );
    // Rotation is the provider's.
    assert_eq!(
        e.err("EnableKeyRotation", json!({"KeyId": key})).aws_type(),
        "UnsupportedOperationException"
    );
    assert_eq!(
        e.err("RotateKeyOnDemand", json!({"KeyId": key})).aws_type(),
        "UnsupportedOperationException"
    );
}

#[test]
fn the_health_check_follows_the_provider() {
    let (e, p) = with_provider();
    let key = external_key(&e);
    let ct =
        e.ok("Encrypt", json!({"KeyId": key, "Plaintext": b64(b"x")}))["CiphertextBlob"].clone();
    let r = e.kms.check_external_keys().unwrap();
    assert_eq!((r.checked, r.refused.len(), r.restored.len()), (1, 0, 0));

    p.set_enabled("remote-1", false);
    let r = e.kms.check_external_keys().unwrap();
    assert_eq!(r.refused.len(), 1);
    let meta = e.ok("DescribeKey", json!({"KeyId": key}))["KeyMetadata"].clone();
    assert_eq!(meta["ExternalKeyStatus"]["State"], "REFUSED");
    assert!(
        meta["ExternalKeyStatus"]["Reason"]
            .as_str()
            .unwrap()
            .contains("disabled"),
        "{meta}"
    );
    assert_eq!(
        meta["KeyState"], "Enabled",
        "atrest's own state is the customer's to change"
    );
    let err = e.err("Encrypt", json!({"KeyId": key, "Plaintext": b64(b"x")}));
    assert!(matches!(err, KmsError::InvalidState(_)), "{err:?}");
    assert!(err.to_string().contains("corp"), "{err}");
    // A second round reports no new change.
    assert!(e.kms.check_external_keys().unwrap().refused.is_empty());

    p.set_enabled("remote-1", true);
    let r = e.kms.check_external_keys().unwrap();
    assert_eq!(r.restored.len(), 1);
    assert_eq!(
        e.ok("DescribeKey", json!({"KeyId": key}))["KeyMetadata"]["ExternalKeyStatus"]["State"],
        "USABLE"
    );
    e.ok("Decrypt", json!({"CiphertextBlob": ct}));

    // Unreachable: not a revocation; the store is FAILED; operations time out.
    *p.down.lock().unwrap() = true;
    let r = e.kms.check_external_keys().unwrap();
    assert_eq!((r.unreachable.len(), r.refused.len()), (1, 0));
    let stores = e.ok("DescribeCustomKeyStores", json!({}))["CustomKeyStores"].clone();
    assert_eq!(stores[0]["ConnectionState"], "FAILED");
    assert_eq!(stores[0]["ConnectionErrorCode"], "XKS_PROXY_NOT_REACHABLE");
    assert_eq!(
        e.err("Decrypt", json!({"CiphertextBlob": ct})).aws_type(),
        "DependencyTimeoutException"
    );
    // A local key is not affected.
    let local = e.new_key();
    e.ok("Encrypt", json!({"KeyId": local, "Plaintext": b64(b"x")}));
    *p.down.lock().unwrap() = false;
    e.kms.check_external_keys().unwrap();
    let stores = e.ok(
        "DescribeCustomKeyStores",
        json!({"CustomKeyStoreId": "corp"}),
    )["CustomKeyStores"]
        .clone();
    assert_eq!(stores[0]["ConnectionState"], "CONNECTED");
    assert_eq!(
        e.err("DescribeCustomKeyStores", json!({"CustomKeyStoreId": "x"}))
            .aws_type(),
        "CustomKeyStoreNotFoundException"
    );
    assert_eq!(
        e.err("CreateCustomKeyStore", json!({"CustomKeyStoreName": "x"}))
            .aws_type(),
        "UnsupportedOperationException"
    );
}

#[test]
fn a_provider_holds_the_root_of_trust() {
    use atrest_kms::root::{RootError, RootKey, RootSource};
    let dir = tempfile::tempdir().unwrap();
    let p = Arc::new(MemoryProvider::default());
    p.add("root-wrapper");
    let source = |key: &str| RootSource::Provider {
        provider: p.clone(),
        name: "corp".into(),
        key: key.into(),
    };
    let first = RootKey::open_or_create(dir.path(), source("root-wrapper")).unwrap();
    let desc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("root.json")).unwrap()).unwrap();
    assert_eq!(desc["kind"], "provider");
    assert_eq!(desc["provider"]["key"], "root-wrapper");
    // Reopening unwraps at the provider, with the key root.json names.
    let again = RootKey::open_or_create(dir.path(), source("ignored-after-first-start")).unwrap();
    assert_eq!(first.check_value(), again.check_value());
    // Disabled at the provider: the data dir does not open, saying why.
    p.set_enabled("root-wrapper", false);
    match RootKey::open_or_create(dir.path(), source("root-wrapper")) {
        Err(e @ RootError::Provider { .. }) => assert!(e.to_string().contains("disabled"), "{e}"),
        other => panic!("{other:?}"),
    }
    // Another kind of root source is refused.
    p.set_enabled("root-wrapper", true);
    let err = RootKey::open_or_create(
        dir.path(),
        RootSource::Passphrase(SecretBytes::new(b"pw".to_vec())),
    );
    assert!(matches!(err, Err(RootError::WrongKind { .. })), "{err:?}");
}

#[test]
fn atrest_itself_passes_the_provider_conformance_suite() {
    let e = env();
    let key = e.new_key();
    let p = atrest_kms::LocalKeyService::new(&e.kms, e.alice.clone());
    let missing = atrest_keyprovider::conformance::missing_key("aws-kms");
    let checks = atrest_keyprovider::conformance::run(&p, &key, &missing);
    assert!(checks.len() >= 9);
    for c in &checks {
        assert!(c.passed, "{}: {}", c.name, c.detail);
    }
    // A disabled key is refused, as at any provider.
    e.ok("DisableKey", json!({"KeyId": key}));
    assert!(matches!(p.check(&key), Err(ProviderError::Refused(_))));
}
