//! BYOK (K3): GetParametersForImport, ImportKeyMaterial,
//! DeleteImportedKeyMaterial, and expiry of imported material.
//!
//! Import tokens are stateless: the token itself carries the wrapping
//! private key, the key id, the algorithm and the expiry, sealed
//! (AES-256-GCM) under a key derived from the root key, so nothing about a
//! pending import is stored and the client cannot read the private key.
//! Imported material is checked against an HMAC fingerprint of the first
//! import, so only the same material can ever be imported again.

use atrest_crypto::SecretBytes;
use atrest_crypto::wrap::{WrappingAlgorithm, WrappingKey, WrappingSpec};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use time::Duration;

use super::{Call, KeyService};
use crate::KmsError;
use crate::api::{self, Blob};
use crate::clock::{epoch_seconds, from_millis, to_millis};
use crate::records::{
    self, DueKind, ImportState, KeyOrigin, KeyRecord, KeyState, VersionImport, VersionOrigin,
    VersionRecord,
};

/// How long an import token is valid.
pub const IMPORT_TOKEN_LIFETIME: Duration = Duration::hours(24);
/// The latest `ValidTo` accepted: a year ahead.
pub const MAX_VALID_TO: Duration = Duration::days(365);

/// GetParametersForImport.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GetParametersForImportRequest {
    /// Key id or key ARN.
    pub key_id: Option<String>,
    /// How the material will be wrapped.
    pub wrapping_algorithm: Option<String>,
    /// The RSA key size.
    pub wrapping_key_spec: Option<String>,
}

/// GetParametersForImport's response.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GetParametersForImportResponse {
    /// Key ARN.
    pub key_id: String,
    /// The token to pass to ImportKeyMaterial.
    pub import_token: Blob,
    /// The RSA public key, DER SubjectPublicKeyInfo.
    pub public_key: Blob,
    /// When the token and key expire, epoch seconds.
    pub parameters_valid_to: f64,
}

/// ImportKeyMaterial.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImportKeyMaterialRequest {
    /// Key id or key ARN.
    pub key_id: Option<String>,
    /// From GetParametersForImport.
    pub import_token: Option<Blob>,
    /// The wrapped material.
    pub encrypted_key_material: Option<Blob>,
    /// When the material expires (epoch seconds).
    pub valid_to: Option<f64>,
    /// `KEY_MATERIAL_EXPIRES` (the default) or `KEY_MATERIAL_DOES_NOT_EXPIRE`.
    pub expiration_model: Option<String>,
    /// `EXISTING_KEY_MATERIAL` (the default: material the key has had) or
    /// `NEW_KEY_MATERIAL` (for an on-demand rotation; symmetric keys only).
    pub import_type: Option<String>,
    /// The customer's description of the material.
    pub key_material_description: Option<String>,
    /// For EXISTING_KEY_MATERIAL: the id of the material being imported again.
    pub key_material_id: Option<String>,
}

/// DeleteImportedKeyMaterial.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DeleteImportedKeyMaterialRequest {
    /// Key id or key ARN.
    pub key_id: Option<String>,
    /// The material to delete; the current material when absent.
    pub key_material_id: Option<String>,
}

/// DeleteImportedKeyMaterial's response.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DeleteImportedKeyMaterialResponse {
    /// Key ARN.
    pub key_id: String,
    /// The deleted material.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_material_id: Option<String>,
}

/// ImportKeyMaterial's response.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImportKeyMaterialResponse {
    /// Key ARN.
    pub key_id: String,
    /// The imported material's id.
    pub key_material_id: String,
}

#[derive(Serialize, Deserialize)]
struct TokenPayload {
    v: u32,
    key: uuid::Uuid,
    alg: String,
    exp: i64,
    pkcs8: String,
}

fn token_aad(key: &uuid::Uuid) -> Vec<u8> {
    let mut aad = b"atrest/kms/import-token/v1".to_vec();
    aad.extend_from_slice(key.as_bytes());
    aad
}

fn parse_algorithm(v: &str) -> Result<WrappingAlgorithm, KmsError> {
    match v {
        "RSAES_OAEP_SHA_1" => Ok(WrappingAlgorithm::OaepSha1),
        "RSAES_OAEP_SHA_256" => Ok(WrappingAlgorithm::OaepSha256),
        "RSA_AES_KEY_WRAP_SHA_1" => Ok(WrappingAlgorithm::RsaAesKeyWrapSha1),
        "RSA_AES_KEY_WRAP_SHA_256" => Ok(WrappingAlgorithm::RsaAesKeyWrapSha256),
        "RSAES_PKCS1_V1_5" | "SM2PKE" => Err(KmsError::UnsupportedOperation(format!(
            "Wrapping algorithm {v} is not supported; use RSAES_OAEP_SHA_256 or RSA_AES_KEY_WRAP_SHA_256."
        ))),
        other => Err(KmsError::constraint(
            "wrappingAlgorithm",
            other,
            "Member must satisfy enum value set: [RSAES_OAEP_SHA_1, RSAES_OAEP_SHA_256, RSA_AES_KEY_WRAP_SHA_1, RSA_AES_KEY_WRAP_SHA_256]",
        )),
    }
}

fn parse_spec(v: &str) -> Result<WrappingSpec, KmsError> {
    match v {
        "RSA_2048" => Ok(WrappingSpec::Rsa2048),
        "RSA_3072" => Ok(WrappingSpec::Rsa3072),
        "RSA_4096" => Ok(WrappingSpec::Rsa4096),
        "SM2" => Err(KmsError::UnsupportedOperation(
            "Wrapping key spec SM2 is not supported.".into(),
        )),
        other => Err(KmsError::constraint(
            "wrappingKeySpec",
            other,
            "Member must satisfy enum value set: [RSA_2048, RSA_3072, RSA_4096]",
        )),
    }
}

/// AWS's rules for wrapping algorithms by the material they carry: an RSA
/// private key only with RSA_AES_KEY_WRAP (it is larger than RSA-OAEP
/// takes), and a P-521 private key not with RSA-OAEP under RSA_2048.
fn check_wrapping(
    key: &KeyRecord,
    alg: WrappingAlgorithm,
    alg_name: &str,
    spec_name: &str,
) -> Result<(), KmsError> {
    let oaep = matches!(
        alg,
        WrappingAlgorithm::OaepSha1 | WrappingAlgorithm::OaepSha256
    );
    let refused = oaep
        && (key.spec.is_rsa()
            || (key.spec == records::KeySpec::EccNistP521 && spec_name == "RSA_2048"));
    if refused {
        return Err(KmsError::Validation(format!(
            "Wrapping algorithm {alg_name} with wrapping key spec {spec_name} cannot carry {} key material; use RSA_AES_KEY_WRAP_SHA_256.",
            key.spec.as_str()
        )));
    }
    Ok(())
}

fn require_external(key: &KeyRecord) -> Result<(), KmsError> {
    if key.origin != KeyOrigin::External {
        return Err(KmsError::UnsupportedOperation(format!(
            "{} does not have origin EXTERNAL; key material can be imported only into keys created with Origin EXTERNAL.",
            KeyService::arn(key)
        )));
    }
    if key.state == KeyState::PendingDeletion {
        return Err(KeyService::pending_deletion(key));
    }
    Ok(())
}

impl KeyService {
    /// GetParametersForImport.
    pub fn get_parameters_for_import(
        &self,
        call: &Call<'_>,
        req: GetParametersForImportRequest,
    ) -> Result<GetParametersForImportResponse, KmsError> {
        let alg_name = api::required(req.wrapping_algorithm, "wrappingAlgorithm")?;
        let alg = parse_algorithm(&alg_name)?;
        let spec_name = api::required(req.wrapping_key_spec, "wrappingKeySpec")?;
        let spec = parse_spec(&spec_name)?;
        let key = {
            let tx = self.store.read()?;
            let key = self.resolve_for_management(&*tx, call, req.key_id)?;
            self.authorize_key(
                &*tx,
                call,
                "GetParametersForImport",
                &key,
                &super::authz::Facts::default(),
            )?;
            require_external(&key)?;
            check_wrapping(&key, alg, &alg_name, &spec_name)?;
            self.require_not_suspended(&*tx, &key.account)?;
            key
        };
        let wrapping = WrappingKey::generate(spec)?;
        let exp = to_millis(self.now() + IMPORT_TOKEN_LIFETIME);
        let pkcs8 = wrapping.to_pkcs8()?;
        let payload = zeroize::Zeroizing::new(
            serde_json::to_vec(&TokenPayload {
                v: 1,
                key: key.id,
                alg: alg_name,
                exp,
                pkcs8: B64.encode(pkcs8.expose()),
            })
            .map_err(|e| KmsError::Internal(e.to_string()))?,
        );
        let token = atrest_crypto::aead::seal_random_nonce(
            &self.derived.import_tokens,
            &token_aad(&key.id),
            &payload,
        )?;
        Ok(GetParametersForImportResponse {
            key_id: Self::arn(&key),
            import_token: Blob(token),
            public_key: Blob(wrapping.public_key_der()?),
            parameters_valid_to: epoch_seconds(exp),
        })
    }

    fn fingerprint(&self, key: &KeyRecord, material: &[u8]) -> String {
        hex::encode(atrest_crypto::hash::hmac_sha256_parts(
            self.derived.import_fingerprint.expose(),
            &[b"fingerprint", key.id.as_bytes(), material],
        ))
    }

    /// The id of imported material: the same material always has the same
    /// id in the same key, so a re-import finds its version by it.
    fn imported_material_id(&self, key: &KeyRecord, material: &[u8]) -> String {
        hex::encode(atrest_crypto::hash::hmac_sha256_parts(
            self.derived.import_fingerprint.expose(),
            &[b"material-id", key.id.as_bytes(), material],
        ))
    }

    /// ImportKeyMaterial.
    pub fn import_key_material(
        &self,
        call: &Call<'_>,
        req: ImportKeyMaterialRequest,
    ) -> Result<ImportKeyMaterialResponse, KmsError> {
        let token = api::required(req.import_token, "importToken")?;
        let wrapped = api::required(req.encrypted_key_material, "encryptedKeyMaterial")?;
        let now = self.now_ms();
        let valid_to = parse_expiry(req.expiration_model.as_deref(), req.valid_to, now)?;
        let new_material = match req.import_type.as_deref() {
            None | Some("EXISTING_KEY_MATERIAL") => false,
            Some("NEW_KEY_MATERIAL") => true,
            Some(other) => {
                return Err(KmsError::constraint(
                    "importType",
                    other,
                    "Member must satisfy enum value set: [NEW_KEY_MATERIAL, EXISTING_KEY_MATERIAL]",
                ));
            }
        };
        if let Some(d) = &req.key_material_description {
            check_description(d)?;
        }
        if let Some(id) = &req.key_material_id
            && (id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(KmsError::constraint(
                "keyMaterialId",
                id,
                "Member must have length equal to 64",
            ));
        }
        let mut tx = self.store.write()?;
        let mut key = self.resolve_for_management(&*tx, call, req.key_id)?;
        self.authorize_key(
            &*tx,
            call,
            "ImportKeyMaterial",
            &key,
            &super::authz::Facts::default(),
        )?;
        require_external(&key)?;
        self.require_not_suspended(&*tx, &key.account)?;
        let invalid =
            || KmsError::InvalidImportToken("The import token is not valid for this key.".into());
        let payload = atrest_crypto::aead::open_random_nonce(
            &self.derived.import_tokens,
            &token_aad(&key.id),
            &token.0,
        )
        .map_err(|_| invalid())?;
        let payload: TokenPayload =
            serde_json::from_slice(payload.expose()).map_err(|_| invalid())?;
        if payload.key != key.id {
            return Err(invalid());
        }
        if payload.exp <= now {
            return Err(KmsError::ExpiredImportToken(
                "The import token has expired; call GetParametersForImport again.".into(),
            ));
        }
        let alg = parse_algorithm(&payload.alg)?;
        let pkcs8 = SecretBytes::new(
            B64.decode(payload.pkcs8.as_bytes())
                .map_err(|_| invalid())?,
        );
        let wrapping = WrappingKey::from_pkcs8(pkcs8.expose()).map_err(|_| invalid())?;
        let material = wrapping.unwrap(alg, &wrapped.0).map_err(|_| {
            KmsError::InvalidCiphertext(
                "The encrypted key material could not be unwrapped with this import token's wrapping key and algorithm.".into(),
            )
        })?;
        let public = check_material(&key, material.expose())?;
        let material_id = self.imported_material_id(&key, material.expose());
        if let Some(asked) = &req.key_material_id
            && !asked.eq_ignore_ascii_case(&material_id)
        {
            return Err(KmsError::IncorrectKeyMaterial(format!(
                "The key material in the request is not the key material {asked}."
            )));
        }
        let mut versions = Vec::new();
        for (_, v) in tx.scan(records::VERSIONS, key.id.as_bytes(), None, usize::MAX)? {
            versions.push(records::decode::<VersionRecord>(records::VERSIONS, &v)?);
        }
        let existing = versions.iter().find(|v| v.material_id == material_id);
        let pending = versions
            .iter()
            .find(|v| v.import.as_ref().is_some_and(|i| i.pending_rotation));
        // Which version the material goes to, and whether it is new.
        let (version, origin, created, pending_rotation) = if versions.is_empty() {
            // The first import (or, in records of earlier releases, a
            // re-import after the one material was deleted).
            if let Some(prev) = &key.import {
                let fingerprint = self.fingerprint(&key, material.expose());
                if !atrest_crypto::ct_eq(prev.fingerprint.as_bytes(), fingerprint.as_bytes()) {
                    return Err(not_previous());
                }
            }
            (1, VersionOrigin::Initial, now, false)
        } else if !new_material {
            let Some(v) = existing else {
                return Err(not_previous());
            };
            let pending = v.import.as_ref().is_some_and(|i| i.pending_rotation);
            (v.version, v.origin, v.created, pending)
        } else {
            if key.spec != records::KeySpec::SymmetricDefault {
                return Err(KmsError::UnsupportedOperation(format!(
                    "{} has KeySpec {}; only symmetric encryption keys take new key material (ImportType NEW_KEY_MATERIAL).",
                    Self::arn(&key),
                    key.spec.as_str()
                )));
            }
            if existing.is_some() {
                return Err(KmsError::IncorrectKeyMaterial(format!(
                    "The key material in the request is already associated with {}; import it with ImportType EXISTING_KEY_MATERIAL.",
                    Self::arn(&key)
                )));
            }
            match pending {
                // Deleted material pending rotation may be replaced.
                Some(p) if p.import.as_ref().is_some_and(|i| i.deleted) => {
                    (p.version, VersionOrigin::OnDemand, now, true)
                }
                Some(p) => {
                    return Err(KmsError::InvalidState(format!(
                        "{} already has key material {} pending rotation; rotate the key (RotateKeyOnDemand) or delete that material first.",
                        Self::arn(&key),
                        p.material_id
                    )));
                }
                None => {
                    let last = versions.iter().map(|v| v.version).max().unwrap_or(0);
                    let next = last.checked_add(1).ok_or_else(|| {
                        KmsError::LimitExceeded(format!("{} has no more versions", Self::arn(&key)))
                    })?;
                    (next, VersionOrigin::OnDemand, now, true)
                }
            }
        };
        let description = req.key_material_description.or_else(|| {
            existing.and_then(|v| v.import.as_ref().and_then(|i| i.description.clone()))
        });
        let sealed = self
            .root
            .seal(&super::material_aad(&key.id, version), material.expose())?;
        records::put(
            &mut *tx,
            records::VERSIONS,
            &records::version_key(&key.id, version),
            &VersionRecord {
                v: 1,
                version,
                created,
                origin,
                material_id: material_id.clone(),
                sealed,
                public: public.map(|p| B64.encode(p)),
                import: Some(VersionImport {
                    valid_to,
                    description,
                    pending_rotation,
                    deleted: false,
                }),
            },
        )?;
        if key.current_version == 0 {
            key.current_version = version;
            key.current_material_id = material_id.clone();
        }
        if key.import.is_none() {
            key.import = Some(ImportState {
                fingerprint: self.fingerprint(&key, material.expose()),
                valid_to: None,
            });
        }
        if version == key.current_version {
            if let Some(i) = key.import.as_mut() {
                i.valid_to = valid_to;
            }
            if key.state == KeyState::PendingImport {
                key.state = key.state_after_import.take().unwrap_or(KeyState::Enabled);
            }
        }
        if let Some(t) = valid_to {
            tx.put(
                records::DUE,
                &records::due_key(t, DueKind::Expiry, &key.id),
                b"",
            )?;
        }
        records::put(&mut *tx, records::KEYS, key.id.as_bytes(), &key)?;
        self.commit(tx, call)?;
        self.forget_key(&key.id);
        Ok(ImportKeyMaterialResponse {
            key_id: Self::arn(&key),
            key_material_id: material_id,
        })
    }

    /// Deletes imported material: the version `which` of `key` (every
    /// version when `None`). Deleting the current material makes the key
    /// PendingImport; only the same material can restore a version.
    pub(crate) fn drop_imported_material(
        &self,
        tx: &mut dyn atrest_store::WriteTx,
        key: &mut KeyRecord,
        which: Option<u32>,
    ) -> Result<(), KmsError> {
        let legacy_valid_to = key.import.as_ref().and_then(|i| i.valid_to);
        let mut current_dropped = false;
        for (vk, v) in tx.scan(records::VERSIONS, key.id.as_bytes(), None, usize::MAX)? {
            let mut rec: VersionRecord = records::decode(records::VERSIONS, &v)?;
            if which.is_some_and(|w| w != rec.version) {
                continue;
            }
            let import = rec.import.get_or_insert_with(|| VersionImport {
                valid_to: legacy_valid_to,
                ..VersionImport::default()
            });
            import.deleted = true;
            import.valid_to = None;
            rec.sealed = String::new();
            records::put(tx, records::VERSIONS, &vk, &rec)?;
            current_dropped |= rec.version == key.current_version;
        }
        if which.is_none() || current_dropped {
            if let Some(i) = key.import.as_mut() {
                i.valid_to = None;
            }
            if key.state != KeyState::PendingImport && key.state != KeyState::PendingDeletion {
                key.state_after_import = Some(KeyState::Enabled);
                key.state = KeyState::PendingImport;
            }
        }
        Ok(())
    }

    /// Expires the imported material of `key` whose `ValidTo` is `at`;
    /// whether any expired.
    pub(crate) fn expire_imported_material(
        &self,
        tx: &mut dyn atrest_store::WriteTx,
        key: &mut KeyRecord,
        at: i64,
    ) -> Result<bool, KmsError> {
        let legacy_valid_to = key.import.as_ref().and_then(|i| i.valid_to);
        let mut due = Vec::new();
        for (_, v) in tx.scan(records::VERSIONS, key.id.as_bytes(), None, usize::MAX)? {
            let rec: VersionRecord = records::decode(records::VERSIONS, &v)?;
            let valid_to = match &rec.import {
                Some(i) if i.deleted => None,
                Some(i) => i.valid_to,
                None => legacy_valid_to,
            };
            if valid_to == Some(at) {
                due.push(rec.version);
            }
        }
        for v in &due {
            self.drop_imported_material(tx, key, Some(*v))?;
        }
        Ok(!due.is_empty())
    }

    /// DeleteImportedKeyMaterial: the current material, or the one
    /// `KeyMaterialId` names.
    pub fn delete_imported_key_material(
        &self,
        call: &Call<'_>,
        req: DeleteImportedKeyMaterialRequest,
    ) -> Result<DeleteImportedKeyMaterialResponse, KmsError> {
        let out = self.update_key(
            call,
            req.key_id,
            "DeleteImportedKeyMaterial",
            |svc, key, tx, _| {
                require_external(key)?;
                let wanted = req
                    .key_material_id
                    .clone()
                    .unwrap_or_else(|| key.current_material_id.clone());
                let mut found = None;
                for (_, v) in tx.scan(records::VERSIONS, key.id.as_bytes(), None, usize::MAX)? {
                    let rec: VersionRecord = records::decode(records::VERSIONS, &v)?;
                    if rec.material_id.eq_ignore_ascii_case(&wanted) {
                        found = Some(rec);
                    }
                }
                let Some(rec) = found else {
                    if req.key_material_id.is_none() {
                        // No current material (already deleted): nothing to do.
                        return Ok(DeleteImportedKeyMaterialResponse {
                            key_id: Self::arn(key),
                            key_material_id: None,
                        });
                    }
                    return Err(KmsError::NotFound(format!(
                        "{} has no key material {wanted}.",
                        Self::arn(key)
                    )));
                };
                svc.drop_imported_material(tx, key, Some(rec.version))?;
                Ok(DeleteImportedKeyMaterialResponse {
                    key_id: Self::arn(key),
                    key_material_id: Some(rec.material_id),
                })
            },
        )?;
        if let Some(arn) = call.facts().key_arn
            && let Some(id) = arn.rsplit('/').next().and_then(|s| s.parse().ok())
        {
            self.forget_key(&id);
        }
        Ok(out)
    }
}

fn not_previous() -> KmsError {
    KmsError::IncorrectKeyMaterial(
        "The key material in the request is not the key material previously imported into this key.".into(),
    )
}

/// `ValidTo` from `ExpirationModel` and `ValidTo`, checked.
fn parse_expiry(
    model: Option<&str>,
    valid_to: Option<f64>,
    now: i64,
) -> Result<Option<i64>, KmsError> {
    match (model, valid_to) {
        (Some("KEY_MATERIAL_DOES_NOT_EXPIRE"), None) => Ok(None),
        (Some("KEY_MATERIAL_DOES_NOT_EXPIRE"), Some(_)) => Err(KmsError::Validation(
            "ValidTo must be omitted when ExpirationModel is KEY_MATERIAL_DOES_NOT_EXPIRE.".into(),
        )),
        // AWS: "The default is KEY_MATERIAL_EXPIRES", which needs ValidTo.
        (Some("KEY_MATERIAL_EXPIRES") | None, None) => Err(KmsError::Validation(
            "A validTo date must be set if the ExpirationModel is KEY_MATERIAL_EXPIRES".into(),
        )),
        (Some("KEY_MATERIAL_EXPIRES") | None, Some(t)) => {
            #[allow(
                clippy::cast_possible_truncation,
                reason = "epoch seconds fit in i64 milliseconds"
            )]
            let ms = (t * 1000.0) as i64;
            let latest = to_millis(from_millis(now) + MAX_VALID_TO);
            if !t.is_finite() || ms <= now || ms > latest {
                return Err(KmsError::Validation(
                    "ValidTo must be in the future and at most 365 days from now.".into(),
                ));
            }
            Ok(Some(ms))
        }
        (Some(other), _) => Err(KmsError::constraint(
            "expirationModel",
            other,
            "Member must satisfy enum value set: [KEY_MATERIAL_EXPIRES, KEY_MATERIAL_DOES_NOT_EXPIRE]",
        )),
    }
}

/// AWS's rule for `KeyMaterialDescription`: 0 to 256 characters of
/// `[a-zA-Z0-9:/_\s.-]`.
fn check_description(d: &str) -> Result<(), KmsError> {
    let ok = d.chars().count() <= 256
        && d.chars()
            .all(|c| c.is_ascii_alphanumeric() || c.is_whitespace() || ":/_.-".contains(c));
    if !ok {
        return Err(KmsError::constraint(
            "keyMaterialDescription",
            d,
            "Member must have length less than or equal to 256 and satisfy regular expression pattern: ^[a-zA-Z0-9:/_\\s.-]+$",
        ));
    }
    Ok(())
}

/// The lengths of HMAC material AWS accepts, in bytes, by spec.
#[must_use]
pub fn hmac_import_bounds(spec: records::KeySpec) -> Option<(usize, usize)> {
    use records::KeySpec as S;
    match spec {
        S::Hmac224 => Some((28, 64)),
        S::Hmac256 => Some((32, 64)),
        S::Hmac384 => Some((48, 128)),
        S::Hmac512 => Some((64, 128)),
        _ => None,
    }
}

/// Checks unwrapped material against the key's spec; for an asymmetric
/// key, returns its public key.
fn check_material(key: &KeyRecord, material: &[u8]) -> Result<Option<Vec<u8>>, KmsError> {
    if let Some(pair) = key.spec.key_pair() {
        let public = atrest_crypto::keypair::public_key_der(pair, material).map_err(|_| {
            KmsError::IncorrectKeyMaterial(format!(
                "The key material is not a PKCS #8 DER private key of KeySpec {}.",
                key.spec.as_str()
            ))
        })?;
        return Ok(Some(public));
    }
    if let Some((lo, hi)) = hmac_import_bounds(key.spec) {
        if material.len() < lo || material.len() > hi {
            return Err(KmsError::IncorrectKeyMaterial(format!(
                "Key material for a {} key must be {} to {} bits; this is {} bits.",
                key.spec.as_str(),
                lo * 8,
                hi * 8,
                material.len() * 8
            )));
        }
        return Ok(None);
    }
    if material.len() != 32 {
        return Err(KmsError::IncorrectKeyMaterial(format!(
            "Key material for a symmetric key must be 256 bits; this is {} bits.",
            material.len() * 8
        )));
    }
    Ok(None)
}
