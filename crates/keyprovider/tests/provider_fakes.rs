//! The Azure Key Vault and Vault transit providers against the FAKES of
//! tests/interop/fakes (Python; written from the services' public REST
//! docs, not the real services). Runs only when `ATREST_TEST_PYTHON` names
//! a Python with the `cryptography` package (the interop venv's):
//!
//! ```sh
//! ATREST_TEST_PYTHON=target/venv/bin/python cargo test -p atrest-keyprovider --test provider_fakes
//! ```
//!
//! Proves what the conformance suite cannot: rotation at the provider needs
//! no change (old wrapped keys unwrap, new ones use the new version), tokens
//! are cached and refreshed on a 401, a disabled / deleted key or removed
//! access is a refusal, and the Azure vault requirements.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use atrest_keyprovider::config::Transport;
use atrest_keyprovider::http::HttpClient;
use atrest_keyprovider::vault::VaultTransit;
use atrest_keyprovider::{KeyProvider, ProviderConfig, ProviderError, ProvidersFile, conformance};
use bytes::Bytes;
use http_body_util::Full;

struct Fake {
    child: Child,
    url: String,
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn python() -> Option<String> {
    std::env::var("ATREST_TEST_PYTHON")
        .ok()
        .filter(|p| !p.is_empty())
}

fn start(python: &str, module: &str, args: &[&str]) -> Fake {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop");
    let mut child = Command::new(python)
        .args(["-m", &format!("fakes.{module}"), "--port", "0"])
        .args(args)
        .current_dir(&dir)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONPATH", &dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the fake");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("stdout");
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the port");
    let v: serde_json::Value = serde_json::from_str(&line).expect("port line");
    let port = v["port"].as_u64().expect("port");
    Fake {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

impl Fake {
    fn control(&self, what: &str, body: serde_json::Value) -> serde_json::Value {
        let c = HttpClient::new(
            None,
            Transport {
                timeout_ms: 5000,
                retries: 0,
            },
        )
        .expect("client");
        let url = format!("{}/_fake/{what}", self.url);
        let method = if body.is_null() { "GET" } else { "POST" };
        let r = c
            .send(|| {
                http::Request::builder()
                    .method(method)
                    .uri(&url)
                    .body(Full::new(Bytes::from(body.to_string())))
                    .map_err(|e| ProviderError::Config(e.to_string()))
            })
            .expect("control call");
        assert_eq!(r.status, 200, "{what}: {}", r.excerpt());
        r.json()
    }
}

fn open(json: &str) -> Arc<dyn KeyProvider> {
    let f = ProvidersFile::parse(json.as_bytes()).expect("providers file");
    let c = f.providers.values().next().expect("one provider");
    match atrest_keyprovider::open(c) {
        Ok(p) => p,
        Err(e) => panic!("open: {e}"),
    }
}

fn assert_conformance(p: &dyn KeyProvider, key: &str) {
    let missing = conformance::missing_key(p.kind());
    let checks = conformance::run(p, key, &missing);
    let failed: Vec<_> = checks.iter().filter(|c| !c.passed).collect();
    assert!(failed.is_empty(), "{failed:#?}");
    assert_eq!(checks.len(), 9);
}

const SECRET: &str = "azure-Client~Secret.value-42";

fn azure_json(fake: &Fake, extra: &str) -> String {
    format!(
        r#"{{"az": {{"type": "azure-key-vault", "vault_url": "{u}", "authority_url": "{u}",
            "management_url": "{u}", "region": "West Europe", "tenant_id": "tenant-1",
            "client_id": "client-1", "client_secret": "{SECRET}",
            "vault_resource_id": "/subscriptions/sub-1/resourceGroups/rg-1/providers/Microsoft.KeyVault/vaults/vault-1",
            "timeout_ms": 2000, "retries": 2 {extra}}}}}"#,
        u = fake.url
    )
}

#[test]
fn azure_key_vault_against_the_fake() {
    let Some(py) = python() else {
        eprintln!("skipped: set ATREST_TEST_PYTHON to run the provider fakes");
        return;
    };
    let fake = start(
        &py,
        "azure_key_vault",
        &[
            "--client-secret",
            SECRET,
            "--key",
            "k1",
            "--oct-key",
            "hsm1",
        ],
    );
    let p = open(&azure_json(&fake, ""));
    assert_eq!(p.kind(), "azure-key-vault");
    assert_conformance(&*p, "k1");
    let hsm = open(&azure_json(&fake, r#", "algorithm": "A256KW""#));
    assert_conformance(&*hsm, "hsm1");
    // An RSA algorithm on an AES key is a configuration error.
    assert!(matches!(p.describe("hsm1"), Err(ProviderError::Config(_))));

    // Tokens are cached: one per scope for everything so far (per provider).
    let stats = fake.control("stats", serde_json::Value::Null);
    assert_eq!(
        stats["token issued https://vault.azure.net/.default"], 2,
        "{stats}"
    );
    assert_eq!(
        stats["token issued https://management.azure.com/.default"], 2,
        "{stats}"
    );

    // Rotation at the provider: old wrapped keys unwrap, new ones use the new version.
    let d1 = p.describe("k1").expect("describe");
    let v1 = d1.version.clone().expect("version");
    assert_eq!(d1.details["region"], "westeurope");
    assert_eq!(d1.details["recoveryLevel"], "Recoverable");
    let dk = [7u8; 32];
    let old = p.wrap("k1", &dk).expect("wrap");
    let v2 = fake.control("keys/k1/rotate", serde_json::json!({}))["version"]
        .as_str()
        .expect("version")
        .to_owned();
    assert_ne!(v1, v2);
    assert_eq!(
        p.describe("k1").expect("describe").version,
        Some(v2.clone())
    );
    let new = p.wrap("k1", &dk).expect("wrap");
    assert!(
        new.windows(v2.len()).any(|w| w == v2.as_bytes()),
        "new version recorded"
    );
    assert!(
        old.windows(v1.len()).any(|w| w == v1.as_bytes()),
        "old version recorded"
    );
    assert_eq!(p.unwrap("k1", &old).expect("old unwraps").expose(), &dk);
    assert_eq!(p.unwrap("k1", &new).expect("new unwraps").expose(), &dk);
    // A pinned version wraps under that version.
    let pinned = p.wrap(&format!("k1/{v1}"), &dk).expect("pinned wrap");
    assert!(pinned.windows(v1.len()).any(|w| w == v1.as_bytes()));
    assert_eq!(p.unwrap("k1", &pinned).expect("unwrap").expose(), &dk);

    // A revoked token: the vault answers 401, one fresh token, success.
    fake.control("revoke-tokens", serde_json::json!({}));
    assert_eq!(p.unwrap("k1", &old).expect("after refresh").expose(), &dk);
    let stats = fake.control("stats", serde_json::Value::Null);
    assert_eq!(
        stats["token issued https://vault.azure.net/.default"], 3,
        "{stats}"
    );

    // Disabled: described as such, wrap and unwrap refused, check refused.
    fake.control("keys/k1/disable", serde_json::json!({}));
    let d = p.describe("k1").expect("describe a disabled key");
    assert!(!d.enabled && d.state == "Disabled", "{d:?}");
    assert!(matches!(p.wrap("k1", &dk), Err(ProviderError::Refused(_))));
    assert!(
        matches!(p.unwrap("k1", &old), Err(ProviderError::Refused(m)) if m.contains("KeyDisabled"))
    );
    assert!(matches!(p.check("k1"), Err(ProviderError::Refused(_))));
    fake.control("keys/k1/enable", serde_json::json!({}));
    // Expired.
    fake.control("keys/k1/attributes", serde_json::json!({"exp": 1000}));
    assert_eq!(p.describe("k1").expect("describe").state, "Expired");
    assert!(matches!(p.wrap("k1", &dk), Err(ProviderError::Refused(_))));
    fake.control("keys/k1/attributes", serde_json::json!({"exp": null}));
    // Access removed.
    fake.control("deny", serde_json::json!({"ops": ["unwrapKey"]}));
    let e = p.unwrap("k1", &old).expect_err("denied");
    assert!(
        e.revokes() && matches!(e, ProviderError::Refused(_)),
        "{e:?}"
    );
    assert!(matches!(p.check("k1"), Err(ProviderError::Refused(_))));
    fake.control("deny", serde_json::json!({"ops": []}));
    // A key that can be purged is refused.
    fake.control(
        "keys/k1/attributes",
        serde_json::json!({"recoveryLevel": "Recoverable+Purgeable"}),
    );
    assert!(matches!(p.describe("k1"), Err(ProviderError::Config(m)) if m.contains("purged")));
    fake.control(
        "keys/k1/attributes",
        serde_json::json!({"recoveryLevel": "Recoverable"}),
    );
    // An altered version in the wrapped key is invalid, not "not found".
    let mut bad = old.clone();
    bad[3] = if bad[3] == b'a' { b'b' } else { b'a' };
    assert!(matches!(
        p.unwrap("k1", &bad),
        Err(ProviderError::InvalidCiphertext(_))
    ));

    // Transient failures: once is retried; always is unavailable, in bounded time.
    fake.control(
        "fail",
        serde_json::json!({"status": 503, "count": 1, "where": "vault"}),
    );
    p.describe("k1").expect("retried");
    fake.control(
        "fail",
        serde_json::json!({"status": 429, "count": 2, "where": "vault"}),
    );
    p.unwrap("k1", &new).expect("retried twice");
    fake.control("fail", serde_json::json!({"status": 503, "count": -1}));
    let t = Instant::now();
    let e = p.describe("k1").expect_err("unavailable");
    assert!(
        matches!(e, ProviderError::Unavailable(_)) && !e.revokes(),
        "{e:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(5));
    fake.control("fail", serde_json::json!({"count": 0}));

    // Deleted.
    fake.control("keys/k1/delete", serde_json::json!({}));
    assert!(matches!(p.describe("k1"), Err(ProviderError::NotFound(_))));
    assert!(matches!(
        p.unwrap("k1", &old),
        Err(ProviderError::NotFound(_))
    ));

    // The vault's requirements (fresh providers: a passed check is cached).
    fake.control("keys/k2", serde_json::json!({}));
    fake.control("vault", serde_json::json!({"purge_protection": false}));
    let e = open(&azure_json(&fake, ""))
        .check("k2")
        .expect_err("no purge protection");
    assert!(
        matches!(&e, ProviderError::Config(m) if m.contains("no purge protection")),
        "{e:?}"
    );
    let e = open(&azure_json(&fake, ""))
        .wrap("k2", &dk)
        .expect_err("wrap refused too");
    assert!(matches!(&e, ProviderError::Config(_)), "{e:?}");
    fake.control(
        "vault",
        serde_json::json!({"purge_protection": true, "location": "eastus"}),
    );
    let e = open(&azure_json(&fake, ""))
        .describe("k2")
        .expect_err("wrong region");
    assert!(
        matches!(&e, ProviderError::Config(m) if m.contains("is in eastus, not West Europe")),
        "{e:?}"
    );
    fake.control("vault", serde_json::json!({"location": "westeurope"}));
    open(&azure_json(&fake, "")).check("k2").expect("k2 passes");
    let e = open(&azure_json(&fake, "").replace("vaults/vault-1", "vaults/other"))
        .describe("k2")
        .expect_err("no such vault");
    assert!(
        matches!(&e, ProviderError::Config(m) if m.contains("vault_resource_id")),
        "{e:?}"
    );

    // Resource Manager refuses to show the vault: a configuration error.
    fake.control("deny", serde_json::json!({"ops": ["arm"]}));
    let e = open(&azure_json(&fake, ""))
        .describe("k2")
        .expect_err("no read access");
    assert!(
        matches!(&e, ProviderError::Config(m) if m.contains("AuthorizationFailed")),
        "{e:?}"
    );
    fake.control("deny", serde_json::json!({"ops": []}));

    // A wrong secret is refused, and never shown.
    let e = open(&azure_json(&fake, "").replace(SECRET, "wrong-secret-value"))
        .describe("k2")
        .expect_err("wrong secret");
    let shown = format!("{e} {e:?}");
    assert!(
        matches!(&e, ProviderError::Refused(m) if m.contains("invalid_client")),
        "{e:?}"
    );
    assert!(
        !shown.contains("wrong-secret-value") && !shown.contains(SECRET),
        "{shown}"
    );
    let e = open(&azure_json(&fake, "").replace("client-1", "client-2"))
        .describe("k2")
        .expect_err("unknown client");
    assert!(matches!(&e, ProviderError::Refused(_)), "{e:?}");
}

const TOKEN: &str = "hvs.fake-vault-token-0123";

fn vault_json(fake: &Fake, token: &str) -> String {
    format!(
        r#"{{"v": {{"type": "vault-transit", "address": "{}", "token": "{token}",
            "timeout_ms": 2000, "retries": 2}}}}"#,
        fake.url
    )
}

fn vault_provider(fake: &Fake) -> VaultTransit {
    let f = ProvidersFile::parse(vault_json(fake, TOKEN).as_bytes()).expect("parse");
    let Some(ProviderConfig::VaultTransit(c)) = f.providers.get("v") else {
        panic!("vault config")
    };
    VaultTransit::new(c).expect("provider")
}

#[test]
fn vault_transit_against_the_fake() {
    let Some(py) = python() else {
        eprintln!("skipped: set ATREST_TEST_PYTHON to run the provider fakes");
        return;
    };
    let fake = start(
        &py,
        "vault_transit",
        &["--token", TOKEN, "--key", "k1", "--key", "sig:ed25519"],
    );
    let p = vault_provider(&fake);
    assert_eq!(p.kind(), "vault-transit");
    assert_conformance(&p, "k1");
    // Encrypt would create a missing key (upsert): wrap must not.
    assert!(matches!(
        p.wrap("fresh", &[1u8; 32]),
        Err(ProviderError::NotFound(_))
    ));
    assert!(matches!(
        p.describe("fresh"),
        Err(ProviderError::NotFound(_))
    ));
    // A signing key cannot wrap.
    let d = p.describe("sig").expect("describe");
    assert!(!d.enabled, "{d:?}");
    assert!(matches!(
        p.wrap("sig", &[1u8; 32]),
        Err(ProviderError::Config(_))
    ));

    // Rotation: old wrapped keys still unwrap; rewrap upgrades them.
    let dk = [9u8; 48];
    let old = p.wrap("k1", &dk).expect("wrap");
    assert!(old.starts_with(b"vault:v1:"));
    let c = HttpClient::new(
        None,
        Transport {
            timeout_ms: 5000,
            retries: 0,
        },
    )
    .expect("client");
    let url = format!("{}/v1/transit/keys/k1/rotate", fake.url);
    let r = c
        .send(|| {
            http::Request::post(&url)
                .header("X-Vault-Token", TOKEN)
                .body(Full::new(Bytes::new()))
                .map_err(|e| ProviderError::Config(e.to_string()))
        })
        .expect("rotate");
    assert_eq!(r.status, 200);
    assert_eq!(
        p.describe("k1").expect("describe").version.as_deref(),
        Some("v2")
    );
    let new = p.wrap("k1", &dk).expect("wrap");
    assert!(new.starts_with(b"vault:v2:"));
    assert_eq!(p.unwrap("k1", &old).expect("old").expose(), &dk);
    let up = p.rewrap("k1", &old).expect("rewrap");
    assert!(up.starts_with(b"vault:v2:"));
    assert_eq!(p.unwrap("k1", &up).expect("rewrapped").expose(), &dk);
    // Under another key: invalid.
    let r = c
        .send(|| {
            http::Request::post(format!("{}/v1/transit/keys/k2", fake.url))
                .header("X-Vault-Token", TOKEN)
                .body(Full::new(Bytes::from_static(b"{}")))
                .map_err(|e| ProviderError::Config(e.to_string()))
        })
        .expect("create");
    assert_eq!(r.status, 200);
    assert!(matches!(
        p.unwrap("k2", &new),
        Err(ProviderError::InvalidCiphertext(_))
    ));

    // Access removed, then a wrong token: refusals.
    fake.control("deny", serde_json::json!({"ops": ["decrypt"]}));
    assert!(matches!(
        p.unwrap("k1", &new),
        Err(ProviderError::Refused(_))
    ));
    assert!(matches!(p.check("k1"), Err(ProviderError::Refused(_))));
    fake.control("deny", serde_json::json!({}));
    assert!(matches!(p.describe("k1"), Err(ProviderError::Refused(_))));
    fake.control("deny", serde_json::json!({"ops": []}));
    let f = ProvidersFile::parse(vault_json(&fake, "hvs.wrong").as_bytes()).expect("parse");
    let Some(ProviderConfig::VaultTransit(c2)) = f.providers.get("v") else {
        panic!("vault config")
    };
    let e = VaultTransit::new(c2)
        .expect("p")
        .describe("k1")
        .expect_err("wrong token");
    assert!(
        matches!(&e, ProviderError::Refused(m) if m.contains("permission denied")),
        "{e:?}"
    );
    assert!(!format!("{e}").contains("hvs.wrong"));

    // Sealed once: retried. Sealed: unavailable, in bounded time.
    fake.control("fail", serde_json::json!({"status": 503, "count": 1}));
    p.check("k1").expect("retried");
    fake.control("fail", serde_json::json!({"status": 503, "count": -1}));
    let t = Instant::now();
    let e = p.unwrap("k1", &new).expect_err("sealed");
    assert!(
        matches!(&e, ProviderError::Unavailable(m) if m.contains("sealed")),
        "{e:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(5));
    fake.control("fail", serde_json::json!({"count": 0}));

    // Old versions retired by the key's owner: refused.
    let url = format!("{}/v1/transit/keys/k1/config", fake.url);
    let r = c
        .send(|| {
            http::Request::post(&url)
                .header("X-Vault-Token", TOKEN)
                .body(Full::new(Bytes::from_static(
                    br#"{"min_decryption_version": 2}"#,
                )))
                .map_err(|e| ProviderError::Config(e.to_string()))
        })
        .expect("config");
    assert_eq!(r.status, 200);
    assert!(matches!(
        p.unwrap("k1", &old),
        Err(ProviderError::Refused(_))
    ));
    assert_eq!(p.unwrap("k1", &new).expect("v2").expose(), &dk);

    // Another mount: a configuration error, not a missing key.
    let json =
        vault_json(&fake, TOKEN).replace("\"timeout_ms\"", "\"mount\": \"nope\", \"timeout_ms\"");
    let e = open(&json).describe("k1").expect_err("no such mount");
    assert!(
        matches!(&e, ProviderError::Config(m) if m.contains("mounted")),
        "{e:?}"
    );
}
