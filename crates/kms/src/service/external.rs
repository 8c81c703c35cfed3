//! Keys held in another KMS (origin `EXTERNAL_KMS`), through the key
//! providers of `atrest-keyprovider`.
//!
//! A provider is configured by the operator under a name, shown to
//! customers as a custom key store id (`DescribeCustomKeyStores`). A
//! customer creates a key with `Origin: EXTERNAL_KMS`, `CustomKeyStoreId`
//! (the provider) and `XksKeyId` (the remote key). Every Encrypt,
//! GenerateDataKey and ReEncrypt wraps a fresh data key with the provider;
//! every Decrypt unwraps it there (see the version-2 blob in `blob.rs`), so
//! the provider sees and can refuse every use, and atrest never holds the
//! remote key.
//!
//! The health check ([`KeyService::check_external_keys`]) asks the provider
//! about every enabled external key on a period. A refusal (disabled,
//! revoked, access removed, deleted) marks the key unusable:
//! [`super::ServiceSession::key_unusable`] reports it, so disks and instances
//! follow their key-loss policy; the reason is audited and shown by
//! DescribeKey. When the provider accepts again, the key is usable again. An
//! unreachable provider marks the key store FAILED but revokes nothing: new
//! operations fail with DependencyTimeoutException until it answers.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use atrest_keyprovider::{KeyProvider, ProviderError};
use serde::Serialize;
use uuid::Uuid;

use super::KeyService;
use crate::KmsError;
use crate::records::{self, ExternalKey, KeyRecord, KeyState};

/// What the last use or check of an external key said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExternalHealth {
    /// The provider wrapped and unwrapped with it.
    Usable,
    /// The provider refused it (the customer took it away).
    Refused(String),
    /// The provider could not be reached; nothing is known of the key.
    Unreachable(String),
}

#[derive(Debug, Clone)]
struct Status {
    health: ExternalHealth,
    checked_ms: i64,
}

/// The configured providers and what is known of their keys.
#[derive(Default)]
pub struct Providers {
    by_name: BTreeMap<String, Arc<dyn KeyProvider>>,
    keys: Mutex<HashMap<Uuid, Status>>,
}

impl core::fmt::Debug for Providers {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Providers")
            .field("names", &self.by_name.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Providers {
    /// Providers by name.
    #[must_use]
    pub fn new(by_name: BTreeMap<String, Arc<dyn KeyProvider>>) -> Self {
        Self {
            by_name,
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// Whether any provider is configured.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    fn get(&self, name: &str) -> Option<&Arc<dyn KeyProvider>> {
        self.by_name.get(name)
    }

    fn status(&self, id: &Uuid) -> Option<Status> {
        self.lock().get(id).cloned()
    }

    /// Records `health` for `id`; returns the previous health.
    fn set(&self, id: Uuid, health: ExternalHealth, now: i64) -> Option<ExternalHealth> {
        self.lock()
            .insert(
                id,
                Status {
                    health,
                    checked_ms: now,
                },
            )
            .map(|s| s.health)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Status>> {
        self.keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The provider's view of an external key, for DescribeKey.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExternalKeyStatus {
    /// `USABLE`, `REFUSED` or `UNREACHABLE` (`UNKNOWN` before the first use
    /// or check).
    pub state: &'static str,
    /// The provider's words, when it refused or could not be reached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When this was learnt, epoch seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checked_at: Option<f64>,
}

/// One custom key store of DescribeCustomKeyStores.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CustomKeyStore {
    /// The provider's name.
    pub custom_key_store_id: String,
    /// The provider's name.
    pub custom_key_store_name: String,
    /// Always `EXTERNAL_KEY_STORE`.
    pub custom_key_store_type: &'static str,
    /// `CONNECTED`, or `FAILED` when the last check could not reach it.
    pub connection_state: &'static str,
    /// Why it failed (AWS's codes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_error_code: Option<&'static str>,
    /// Where the provider is.
    pub xks_proxy_configuration: XksProxyConfiguration,
    /// atrest's provider type (`aws-kms`, `kmip`, `azure-key-vault`,
    /// `vault-transit`).
    pub provider_type: &'static str,
}

/// The endpoint part of a custom key store.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct XksProxyConfiguration {
    /// Always `PUBLIC_ENDPOINT`.
    pub connectivity: &'static str,
    /// The provider's endpoint.
    pub uri_endpoint: String,
}

/// What one health check round found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ExternalReport {
    /// Keys checked.
    pub checked: usize,
    /// Keys that became unusable (the provider refused them).
    pub refused: Vec<Uuid>,
    /// Keys that became usable again.
    pub restored: Vec<Uuid>,
    /// Keys whose provider could not be reached.
    pub unreachable: Vec<Uuid>,
}

/// Maps a provider's answer to the error a KMS caller sees.
fn kms_error(store: &str, remote: &str, e: &ProviderError) -> KmsError {
    let what = format!("external key {remote} in custom key store {store}");
    match e {
        ProviderError::Refused(_) | ProviderError::NotFound(_) => {
            KmsError::InvalidState(format!("The {what} cannot be used: {e}"))
        }
        // As AWS: InvalidCiphertextException carries no message.
        ProviderError::InvalidCiphertext(_) => KmsError::InvalidCiphertext(String::new()),
        ProviderError::Unavailable(_) => {
            KmsError::DependencyTimeout(format!("The custom key store {store} did not answer: {e}"))
        }
        _ => KmsError::CustomKeyStoreInvalidState(format!("The custom key store {store}: {e}")),
    }
}

impl KeyService {
    /// Decrypts, at the key service behind `provider` (an `aws-kms`
    /// provider: another atrest, or AWS KMS), a ciphertext blob that key
    /// service made under `key_arn` for `context`: the data key of a
    /// snapshot or backup that another server stored in shared object
    /// storage. The remote key service authorizes the provider's
    /// principal (its key policy and grants), so the key's owner decides
    /// which servers may restore its data. The plaintext is returned only
    /// to services in this process, never to a client.
    pub fn decrypt_at_provider(
        &self,
        provider: &str,
        key_arn: &str,
        blob: &[u8],
        context: &BTreeMap<String, String>,
    ) -> Result<atrest_crypto::SecretBytes, KmsError> {
        let p = self.providers().get(provider).cloned().ok_or_else(|| {
            KmsError::CustomKeyStoreNotFound(format!(
                "No key provider named {provider} is configured on this server."
            ))
        })?;
        p.decrypt_blob(key_arn, blob, context)
            .map_err(|e| kms_error(provider, key_arn, &e))
    }

    /// Uses these providers from now on (set by the server at start).
    pub fn set_providers(&self, providers: Providers) {
        *super::write_lock(&self.providers) = Arc::new(providers);
    }

    fn providers(&self) -> Arc<Providers> {
        Arc::clone(&super::read_lock(&self.providers))
    }

    /// The provider of an external key, or the error a caller sees.
    fn provider_of(&self, ext: &ExternalKey) -> Result<Arc<dyn KeyProvider>, KmsError> {
        self.providers().get(&ext.store).cloned().ok_or_else(|| {
            KmsError::CustomKeyStoreInvalidState(format!(
                "The custom key store {} is not configured on this server.",
                ext.store
            ))
        })
    }

    /// Runs `op` against the key's provider. A refusal here does not mark
    /// the key: the input may be a caller's (an altered ciphertext can make
    /// a provider answer "access denied"), so only the health check, which
    /// uses its own probe, changes what is known of the key.
    pub(crate) fn with_provider<T>(
        &self,
        ext: &ExternalKey,
        op: impl FnOnce(&dyn KeyProvider) -> Result<T, ProviderError>,
    ) -> Result<T, KmsError> {
        let p = self.provider_of(ext)?;
        op(&*p).map_err(|e| kms_error(&ext.store, &ext.key, &e))
    }

    /// Checks a new external key at its provider (CreateKey): it must
    /// exist and wrap and unwrap.
    pub(crate) fn check_new_external(&self, store: &str, remote: &str) -> Result<(), KmsError> {
        let p = self.providers().get(store).cloned().ok_or_else(|| {
            KmsError::CustomKeyStoreNotFound(format!(
                "No custom key store named {store} is configured on this server."
            ))
        })?;
        match p.check(remote) {
            Ok(_) => Ok(()),
            Err(ProviderError::NotFound(m)) => Err(KmsError::XksKeyNotFound(format!(
                "The custom key store {store} has no key {remote}: {m}"
            ))),
            Err(e @ ProviderError::Refused(_)) => Err(KmsError::XksKeyInvalidConfiguration(
                format!("The key {remote} in custom key store {store} cannot be used: {e}"),
            )),
            Err(e) => Err(KmsError::CustomKeyStoreInvalidState(format!(
                "The custom key store {store} cannot check the key {remote}: {e}"
            ))),
        }
    }

    /// Marks a new external key usable.
    pub(crate) fn note_usable(&self, id: Uuid) {
        self.providers()
            .set(id, ExternalHealth::Usable, self.now_ms());
    }

    /// What is known of an external key (DescribeKey).
    pub(crate) fn external_status(&self, key: &KeyRecord) -> Option<ExternalKeyStatus> {
        key.external.as_ref()?;
        let s = self.providers().status(&key.id);
        let (state, reason) = match s.as_ref().map(|s| &s.health) {
            None => ("UNKNOWN", None),
            Some(ExternalHealth::Usable) => ("USABLE", None),
            Some(ExternalHealth::Refused(r)) => ("REFUSED", Some(r.clone())),
            Some(ExternalHealth::Unreachable(r)) => ("UNREACHABLE", Some(r.clone())),
        };
        Some(ExternalKeyStatus {
            state,
            reason,
            checked_at: s.map(|s| crate::clock::epoch_seconds(s.checked_ms)),
        })
    }

    /// The provider's words, if its last check refused the key.
    pub(crate) fn external_refusal(&self, key: &KeyRecord) -> Option<String> {
        key.external.as_ref()?;
        match self.providers().status(&key.id)?.health {
            ExternalHealth::Refused(why) => Some(why),
            _ => None,
        }
    }

    /// The configured providers as custom key stores.
    #[must_use]
    pub fn custom_key_stores(&self) -> Vec<CustomKeyStore> {
        let providers = self.providers();
        let statuses = providers.lock().clone();
        let keys = self.external_keys().unwrap_or_default();
        providers
            .by_name
            .iter()
            .map(|(name, p)| {
                let unreachable = keys.iter().any(|k| {
                    k.external.as_ref().is_some_and(|e| &e.store == name)
                        && matches!(
                            statuses.get(&k.id).map(|s| &s.health),
                            Some(ExternalHealth::Unreachable(_))
                        )
                });
                CustomKeyStore {
                    custom_key_store_id: name.clone(),
                    custom_key_store_name: name.clone(),
                    custom_key_store_type: "EXTERNAL_KEY_STORE",
                    connection_state: if unreachable { "FAILED" } else { "CONNECTED" },
                    connection_error_code: unreachable.then_some("XKS_PROXY_NOT_REACHABLE"),
                    xks_proxy_configuration: XksProxyConfiguration {
                        connectivity: "PUBLIC_ENDPOINT",
                        uri_endpoint: p.endpoint(),
                    },
                    provider_type: p.kind(),
                }
            })
            .collect()
    }

    /// DescribeCustomKeyStores: the configured providers, optionally one by
    /// id or name.
    pub fn describe_custom_key_stores(
        &self,
        call: &super::Call<'_>,
        req: serde_json::Map<String, serde_json::Value>,
    ) -> Result<serde_json::Value, KmsError> {
        let field = |name: &str| -> Result<Option<String>, KmsError> {
            match req.get(name) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(KmsError::Serialization(format!("{name} must be a string"))),
            }
        };
        let (id, name) = (field("CustomKeyStoreId")?, field("CustomKeyStoreName")?);
        {
            let tx = self.store.read()?;
            self.authorize_identity(&*tx, call, "DescribeCustomKeyStores", "*")?;
        }
        let stores: Vec<CustomKeyStore> = self
            .custom_key_stores()
            .into_iter()
            .filter(|s| id.as_ref().is_none_or(|i| *i == s.custom_key_store_id))
            .filter(|s| name.as_ref().is_none_or(|n| *n == s.custom_key_store_name))
            .collect();
        if stores.is_empty() && (id.is_some() || name.is_some()) {
            return Err(KmsError::CustomKeyStoreNotFound(format!(
                "No custom key store {} is configured on this server.",
                id.or(name).unwrap_or_default()
            )));
        }
        Ok(serde_json::json!({ "CustomKeyStores": stores, "Truncated": false }))
    }

    /// Whether any key provider is configured (crypto operations then run
    /// off the reactor, as they may wait on the network).
    #[must_use]
    pub fn has_providers(&self) -> bool {
        !super::read_lock(&self.providers).is_empty()
    }

    /// Every key whose material is in another KMS.
    fn external_keys(&self) -> Result<Vec<KeyRecord>, KmsError> {
        let tx = self.store.read()?;
        let mut out = Vec::new();
        for (_, v) in tx.scan(records::KEYS, b"", None, usize::MAX)? {
            let k: KeyRecord = records::decode(records::KEYS, &v)?;
            if k.external.is_some() {
                out.push(k);
            }
        }
        Ok(out)
    }

    /// Asks each provider about each of its enabled keys; records and
    /// audits every change of a key's usability. Runs on a period.
    pub fn check_external_keys(&self) -> Result<ExternalReport, KmsError> {
        let providers = self.providers();
        let mut report = ExternalReport::default();
        if providers.is_empty() {
            return Ok(report);
        }
        for key in self.external_keys()? {
            let Some(ext) = &key.external else { continue };
            if key.state != KeyState::Enabled {
                continue;
            }
            let Some(p) = providers.get(&ext.store) else {
                continue;
            };
            report.checked += 1;
            let health = match p.check(&ext.key) {
                Ok(_) => ExternalHealth::Usable,
                Err(e) if e.revokes() => ExternalHealth::Refused(e.to_string()),
                Err(e) => ExternalHealth::Unreachable(e.to_string()),
            };
            let before = providers.set(key.id, health.clone(), self.now_ms());
            let was_refused = matches!(before, Some(ExternalHealth::Refused(_)));
            match &health {
                ExternalHealth::Refused(reason) if !was_refused => {
                    tracing::warn!(key = %Self::arn(&key), store = %ext.store, %reason, "external key refused by its provider: key unusable");
                    report.refused.push(key.id);
                    self.audit_external(&key, &format!("ExternalKeyRefused: {reason}"));
                }
                ExternalHealth::Usable if was_refused => {
                    tracing::info!(key = %Self::arn(&key), store = %ext.store, "external key accepted by its provider again: key usable");
                    report.restored.push(key.id);
                    self.audit_external(&key, "ExternalKeyRestored");
                }
                ExternalHealth::Unreachable(reason) => {
                    if !matches!(before, Some(ExternalHealth::Unreachable(_))) {
                        tracing::warn!(key = %Self::arn(&key), store = %ext.store, %reason, "key provider unreachable");
                    }
                    report.unreachable.push(key.id);
                }
                _ => {}
            }
        }
        Ok(report)
    }

    fn audit_external(&self, key: &KeyRecord, result: &str) {
        let sys = self.system_call(key, "ExternalKeyCheck");
        if let Err(e) = self.record_event(self.audit_entry(&sys.call(), result)) {
            tracing::error!(error = %e, "cannot audit an external key's change of state");
        }
    }
}
