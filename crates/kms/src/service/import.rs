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
    self, DueKind, ImportState, KeyOrigin, KeyRecord, KeyState, VersionOrigin, VersionRecord,
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
        parse_algorithm(&alg_name)?;
        let spec = parse_spec(&api::required(req.wrapping_key_spec, "wrappingKeySpec")?)?;
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

    /// ImportKeyMaterial.
    pub fn import_key_material(
        &self,
        call: &Call<'_>,
        req: ImportKeyMaterialRequest,
    ) -> Result<ImportKeyMaterialResponse, KmsError> {
        let token = api::required(req.import_token, "importToken")?;
        let wrapped = api::required(req.encrypted_key_material, "encryptedKeyMaterial")?;
        let now = self.now_ms();
        // AWS: "The default is KEY_MATERIAL_EXPIRES", which needs ValidTo.
        let valid_to = match (req.expiration_model.as_deref(), req.valid_to) {
            (Some("KEY_MATERIAL_DOES_NOT_EXPIRE"), None) => None,
            (Some("KEY_MATERIAL_DOES_NOT_EXPIRE"), Some(_)) => {
                return Err(KmsError::Validation(
                    "ValidTo must be omitted when ExpirationModel is KEY_MATERIAL_DOES_NOT_EXPIRE."
                        .into(),
                ));
            }
            (Some("KEY_MATERIAL_EXPIRES") | None, None) => {
                return Err(KmsError::Validation(
                    "A validTo date must be set if the ExpirationModel is KEY_MATERIAL_EXPIRES"
                        .into(),
                ));
            }
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
                Some(ms)
            }
            (Some(other), _) => {
                return Err(KmsError::constraint(
                    "expirationModel",
                    other,
                    "Member must satisfy enum value set: [KEY_MATERIAL_EXPIRES, KEY_MATERIAL_DOES_NOT_EXPIRE]",
                ));
            }
        };
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
        if material.len() != 32 {
            return Err(KmsError::IncorrectKeyMaterial(format!(
                "Key material for a symmetric key must be 256 bits; this is {} bits.",
                material.len() * 8
            )));
        }
        let fingerprint = self.fingerprint(&key, material.expose());
        if let Some(prev) = &key.import
            && !atrest_crypto::ct_eq(prev.fingerprint.as_bytes(), fingerprint.as_bytes())
        {
            return Err(KmsError::IncorrectKeyMaterial(
                "The key material in the request is not the key material previously imported into this key.".into(),
            ));
        }
        // Replace any earlier expiry.
        if let Some(ImportState {
            valid_to: Some(old),
            ..
        }) = &key.import
        {
            tx.delete(
                records::DUE,
                &records::due_key(*old, DueKind::Expiry, &key.id),
            )?;
        }
        let material_id = hex::encode(atrest_crypto::hash::hmac_sha256_parts(
            self.derived.import_fingerprint.expose(),
            &[b"material-id", key.id.as_bytes(), material.expose()],
        ));
        let sealed = self
            .root
            .seal(&super::material_aad(&key.id, 1), material.expose())?;
        records::put(
            &mut *tx,
            records::VERSIONS,
            &records::version_key(&key.id, 1),
            &VersionRecord {
                v: 1,
                version: 1,
                created: now,
                origin: VersionOrigin::Initial,
                material_id: material_id.clone(),
                sealed,
                public: None,
            },
        )?;
        key.current_version = 1;
        key.current_material_id = material_id.clone();
        key.import = Some(ImportState {
            fingerprint,
            valid_to,
        });
        if key.state == KeyState::PendingImport {
            key.state = key.state_after_import.take().unwrap_or(KeyState::Enabled);
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
        // The material may have changed since it was cached (a re-import
        // after deletion restores the same material, but be exact).
        self.forget_key(&key.id);
        Ok(ImportKeyMaterialResponse {
            key_id: Self::arn(&key),
            key_material_id: material_id,
        })
    }

    /// Removes a key's imported material: the key goes to PendingImport and
    /// can be restored only by importing the same material.
    pub(crate) fn drop_imported_material(
        &self,
        tx: &mut dyn atrest_store::WriteTx,
        key: &mut KeyRecord,
    ) -> Result<(), KmsError> {
        for (vk, _) in tx.scan(records::VERSIONS, key.id.as_bytes(), None, usize::MAX)? {
            tx.delete(records::VERSIONS, &vk)?;
        }
        if let Some(ImportState {
            valid_to: Some(t), ..
        }) = &key.import
        {
            tx.delete(
                records::DUE,
                &records::due_key(*t, DueKind::Expiry, &key.id),
            )?;
        }
        if let Some(i) = key.import.as_mut() {
            i.valid_to = None;
        }
        if key.state != KeyState::PendingImport && key.state != KeyState::PendingDeletion {
            key.state_after_import = Some(KeyState::Enabled);
            key.state = KeyState::PendingImport;
        }
        key.current_version = 0;
        key.current_material_id = String::new();
        Ok(())
    }

    /// DeleteImportedKeyMaterial.
    pub fn delete_imported_key_material(
        &self,
        call: &Call<'_>,
        req: api::KeyIdRequest,
    ) -> Result<api::Empty, KmsError> {
        let out = self.update_key(
            call,
            req.key_id,
            "DeleteImportedKeyMaterial",
            |svc, key, tx, _| {
                require_external(key)?;
                svc.drop_imported_material(tx, key)?;
                Ok(api::Empty {})
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
