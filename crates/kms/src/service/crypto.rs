//! Encrypt, Decrypt, ReEncrypt, GenerateDataKey(WithoutPlaintext),
//! GenerateRandom.

use atrest_crypto::SecretBytes;
use atrest_store::ReadTx;

use atrest_crypto::asymmetric::EncryptionAlgorithm;

use super::authz::Facts;
use super::{Call, KeyService, Material, asymmetric};
use crate::KmsError;
use crate::api::{
    self, Blob, Context, DataKeyResponse, DecryptRequest, DecryptResponse, EncryptRequest,
    EncryptResponse, GenerateDataKeyRequest, GenerateRandomRequest, RandomResponse,
    ReEncryptRequest, ReEncryptResponse, SecretBlob,
};
use crate::blob;
use crate::blob::EncryptionContext;
use crate::names::KeyRef;
use crate::records::{KeyRecord, KeyUsage};

const ALGORITHM: &str = "SYMMETRIC_DEFAULT";
const ALGORITHMS: [&str; 4] = [
    "SYMMETRIC_DEFAULT",
    "RSAES_OAEP_SHA_1",
    "RSAES_OAEP_SHA_256",
    "SM2PKE",
];

/// The largest plaintext Encrypt takes.
pub const MAX_PLAINTEXT: usize = 4096;
/// The largest ciphertext blob Decrypt takes.
pub const MAX_CIPHERTEXT: usize = 6144;

fn algorithm(value: Option<&str>, member: &str) -> Result<(), KmsError> {
    match value {
        None | Some(ALGORITHM) => Ok(()),
        Some(v) if ALGORITHMS.contains(&v) => Err(KmsError::InvalidKeyUsage(format!(
            "Symmetric keys support only the {ALGORITHM} encryption algorithm, not {v}."
        ))),
        Some(v) => Err(KmsError::constraint(
            member,
            v,
            &format!(
                "Member must satisfy enum value set: [{}]",
                ALGORITHMS.join(", ")
            ),
        )),
    }
}

/// Fails for an encryption algorithm name AWS does not know.
fn known_algorithm(value: Option<&str>, member: &str) -> Result<(), KmsError> {
    match value {
        Some(v) if !ALGORITHMS.contains(&v) => algorithm(Some(v), member),
        _ => Ok(()),
    }
}

/// Asymmetric keys take no encryption context (it is not bound to an
/// RSA-OAEP ciphertext): refused rather than silently ignored.
fn no_context_for_rsa(ctx: Option<&Context>) -> Result<(), KmsError> {
    if ctx.is_some_and(|c| !c.is_empty()) {
        return Err(KmsError::Validation(
            "EncryptionContext is not supported with asymmetric KMS keys.".into(),
        ));
    }
    Ok(())
}

pub(super) fn context(ctx: Option<&Context>) -> Result<Vec<u8>, KmsError> {
    let empty = Context::new();
    blob::canonical_context(ctx.unwrap_or(&empty))
}

/// Records the names of the context's keys for the audit trail.
pub(super) fn note_context(call: &Call<'_>, ctx: Option<&Context>) {
    if let Some(c) = ctx {
        call.set_context_keys(c.keys().cloned().collect());
    }
}

pub(super) fn no_recipient(recipient: Option<&serde_json::Value>) -> Result<(), KmsError> {
    if recipient.is_some() {
        return Err(KmsError::UnsupportedOperation(
            "Recipient (Nitro Enclaves attestation) is not supported by atrest.".into(),
        ));
    }
    Ok(())
}

pub(super) fn dry_run(flag: Option<bool>) -> Result<(), KmsError> {
    if flag == Some(true) {
        return Err(KmsError::DryRun);
    }
    Ok(())
}

/// A ciphertext that has been authenticated and decrypted.
struct Opened {
    key: std::sync::Arc<KeyRecord>,
    plaintext: SecretBytes,
    material_id: String,
}

impl KeyService {
    /// A key that can encrypt now, and its current material. `rsa`: an
    /// RSA ENCRYPT_DECRYPT key will do too (Encrypt, ReEncrypt's
    /// destination), and `more` holds the request's encryption algorithm
    /// (the `kms:EncryptionAlgorithm` condition key).
    #[allow(clippy::too_many_arguments, reason = "one call site per operation")]
    pub(super) fn encrypting_key(
        &self,
        tx: &dyn ReadTx,
        call: &Call<'_>,
        key_id: Option<String>,
        member: &str,
        action: &str,
        ctx: Option<&EncryptionContext>,
        rsa: bool,
        more: &[(&str, &str)],
    ) -> Result<(KeyRecord, std::sync::Arc<Material>), KmsError> {
        let facts = Facts {
            context: ctx,
            more,
            ..Facts::default()
        };
        self.usable_key(tx, call, key_id, member, action, facts, |key| {
            Self::require_usage(
                key,
                KeyUsage::EncryptDecrypt,
                !(rsa && key.spec.is_rsa()),
                action,
            )
        })
    }

    /// Seals under the key's current material; for a key held in another
    /// KMS, also under a fresh data key the provider wraps.
    pub(super) fn seal_with(
        &self,
        key: &KeyRecord,
        material: &Material,
        ctx: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, KmsError> {
        let Some(ext) = &key.external else {
            return blob::seal(
                &key.blob_id(),
                key.current_version,
                material.aes()?,
                ctx,
                plaintext,
            );
        };
        let data_key = SecretBytes::random(32)?;
        let wrapped = self.with_provider(ext, |p| p.wrap(&ext.key, data_key.expose()))?;
        if wrapped.is_empty() || wrapped.len() > blob::MAX_WRAPPED {
            return Err(KmsError::CustomKeyStoreInvalidState(format!(
                "The custom key store {} returned a wrapped key of {} bytes (at most {} fit a ciphertext).",
                ext.store,
                wrapped.len(),
                blob::MAX_WRAPPED
            )));
        }
        let k = blob::combine(material.aes()?, data_key.expose())?;
        blob::seal_wrapped(
            &key.blob_id(),
            key.current_version,
            &k,
            Some(&wrapped),
            ctx,
            plaintext,
        )
    }

    /// Authenticates and decrypts `ciphertext` for `caller`. `key_id`, when
    /// given, must name the ciphertext's key.
    #[allow(clippy::too_many_arguments, reason = "one call site per operation")]
    fn open_blob(
        &self,
        tx: &dyn ReadTx,
        call: &Call<'_>,
        ciphertext: &[u8],
        key_id: Option<String>,
        ctx: &[u8],
        ctx_map: Option<&EncryptionContext>,
        action: &str,
    ) -> Result<Opened, KmsError> {
        let caller = call.caller;
        // AWS does not repeat a blob's value in the message.
        if let Some(e) =
            KmsError::length("ciphertextBlob", None, ciphertext.len(), 1, MAX_CIPHERTEXT)
        {
            return Err(e);
        }
        let (header, body) = blob::parse(ciphertext)?;
        // AWS's InvalidCiphertextException carries no message.
        let unknown = || KmsError::InvalidCiphertext(String::new());
        let key = match self.key_records.get_shared(tx, header.key_id.as_bytes())? {
            Some(k) => Some(k),
            // A multi-Region key's blob names the key's shared id: this
            // region's copy decrypts it.
            None => self
                .multi_region_record(tx, &header.key_id, &caller.region)?
                .map(std::sync::Arc::new),
        }
        .filter(|k| k.region == caller.region && k.blob_id() == header.key_id)
        .ok_or_else(unknown)?;
        if key.spec != crate::records::KeySpec::SymmetricDefault {
            // Only symmetric keys make blobs: this one is forged.
            return Err(KmsError::InvalidCiphertext(
                "The ciphertext names a key that does not make such ciphertexts.".into(),
            ));
        }
        let mut alias = None;
        if let Some(raw) = key_id {
            let key_ref = KeyRef::parse(&raw)?;
            let named = self.resolve(tx, call, &key_ref)?;
            if named.id != key.id {
                return Err(KmsError::IncorrectKey(
                    "The key ID in the request does not identify a CMK that can perform this operation."
                        .into(),
                ));
            }
            alias = key_ref.alias_name();
        }
        self.authorize_key(
            tx,
            call,
            action,
            &key,
            &Facts {
                context: ctx_map,
                request_alias: alias.as_deref(),
                ..Facts::default()
            },
        )?;
        Self::require_enabled(&key)?;
        self.require_not_suspended(tx, &key.account)?;
        self.require_not_suspended(tx, caller.account.as_str())?;
        let material = self
            .material(tx, &key, header.version)?
            .ok_or_else(unknown)?;
        let plaintext = match (&key.external, header.wrapped) {
            (None, None) => blob::open(&header, body, material.aes()?, ctx)?,
            (Some(ext), Some(wrapped)) => {
                let data_key = self.with_provider(ext, |p| p.unwrap(&ext.key, wrapped))?;
                let k = blob::combine(material.aes()?, data_key.expose())?;
                blob::open(&header, body, &k, ctx)?
            }
            _ => return Err(unknown()),
        };
        Ok(Opened {
            key,
            plaintext,
            material_id: material.id.clone(),
        })
    }

    /// The RSA key that is to decrypt a ciphertext made with `alg` (Decrypt,
    /// ReEncrypt's source), authorized and checked, with its material.
    #[allow(clippy::too_many_arguments, reason = "one call site per operation")]
    fn rsa_open(
        &self,
        tx: &dyn ReadTx,
        call: &Call<'_>,
        key_id: Option<String>,
        alg: EncryptionAlgorithm,
        ctx: Option<&Context>,
        action: &str,
    ) -> Result<(std::sync::Arc<KeyRecord>, std::sync::Arc<Material>), KmsError> {
        let raw = key_id.ok_or_else(|| {
            KmsError::Validation(format!(
                "KeyId is required to decrypt with the {} encryption algorithm (an asymmetric KMS key).",
                alg.as_str()
            ))
        })?;
        let key_ref = KeyRef::parse(&raw)?;
        let key = self.resolve(tx, call, &key_ref)?;
        let alias = key_ref.alias_name();
        self.authorize_key(
            tx,
            call,
            action,
            &key,
            &Facts {
                request_alias: alias.as_deref(),
                more: &[("kms:EncryptionAlgorithm", alg.as_str())],
                ..Facts::default()
            },
        )?;
        Self::require_enabled(&key)?;
        Self::require_usage(&key, KeyUsage::EncryptDecrypt, false, action)?;
        if !key.spec.is_rsa() {
            return Err(asymmetric::incompatible(alg.as_str(), key.spec));
        }
        no_context_for_rsa(ctx)?;
        self.require_not_suspended(tx, &key.account)?;
        self.require_not_suspended(tx, call.caller.account.as_str())?;
        let material = self
            .material(tx, &key, key.current_version)?
            .ok_or_else(|| {
                KmsError::Internal(format!("current version of {} is missing", Self::arn(&key)))
            })?;
        Ok((std::sync::Arc::new(key), material))
    }

    /// Encrypt.
    pub fn encrypt(
        &self,
        call: &Call<'_>,
        req: EncryptRequest,
    ) -> Result<EncryptResponse, KmsError> {
        let plaintext = api::required(req.plaintext, "plaintext")?;
        // A sensitive member: AWS does not repeat its value in the message.
        if let Some(e) = KmsError::length("plaintext", None, plaintext.0.len(), 1, MAX_PLAINTEXT) {
            return Err(e);
        }
        let alg_name = req.encryption_algorithm.as_deref();
        known_algorithm(alg_name, "encryptionAlgorithm")?;
        note_context(call, req.encryption_context.as_ref());
        let ctx = context(req.encryption_context.as_ref())?;
        self.check_grant_tokens(req.grant_tokens.as_deref())?;
        let tx = self.store.read()?;
        let (key, material) = self.encrypting_key(
            &*tx,
            call,
            req.key_id,
            "keyId",
            "Encrypt",
            req.encryption_context.as_ref(),
            true,
            &[("kms:EncryptionAlgorithm", alg_name.unwrap_or(ALGORITHM))],
        )?;
        drop(tx);
        if key.spec.is_rsa() {
            let alg = asymmetric::rsa_algorithm(key.spec, alg_name)?;
            no_context_for_rsa(req.encryption_context.as_ref())?;
            dry_run(req.dry_run)?;
            let ciphertext = Self::rsa_encrypt(&key, &material, alg, plaintext.0.expose())?;
            return Ok(EncryptResponse {
                ciphertext_blob: Blob(ciphertext),
                key_id: Self::arn(&key),
                encryption_algorithm: alg.as_str(),
            });
        }
        algorithm(alg_name, "encryptionAlgorithm")?;
        dry_run(req.dry_run)?;
        let blob = self.seal_with(&key, &material, &ctx, plaintext.0.expose())?;
        Ok(EncryptResponse {
            ciphertext_blob: Blob(blob),
            key_id: Self::arn(&key),
            encryption_algorithm: ALGORITHM,
        })
    }

    /// Decrypt.
    pub fn decrypt(
        &self,
        call: &Call<'_>,
        req: DecryptRequest,
    ) -> Result<DecryptResponse, KmsError> {
        let ciphertext = api::required(req.ciphertext_blob, "ciphertextBlob")?;
        known_algorithm(req.encryption_algorithm.as_deref(), "encryptionAlgorithm")?;
        no_recipient(req.recipient.as_ref())?;
        if let Some(alg) = req
            .encryption_algorithm
            .as_deref()
            .and_then(EncryptionAlgorithm::parse)
        {
            note_context(call, req.encryption_context.as_ref());
            self.check_grant_tokens(req.grant_tokens.as_deref())?;
            let tx = self.store.read()?;
            let (key, material) = self.rsa_open(
                &*tx,
                call,
                req.key_id,
                alg,
                req.encryption_context.as_ref(),
                "Decrypt",
            )?;
            drop(tx);
            dry_run(req.dry_run)?;
            let plaintext = Self::rsa_decrypt(&key, &material, alg, &ciphertext.0)?;
            return Ok(DecryptResponse {
                key_id: Self::arn(&key),
                plaintext: SecretBlob(plaintext),
                encryption_algorithm: alg.as_str(),
                key_material_id: material.id.clone(),
            });
        }
        algorithm(req.encryption_algorithm.as_deref(), "encryptionAlgorithm")?;
        note_context(call, req.encryption_context.as_ref());
        let ctx = context(req.encryption_context.as_ref())?;
        self.check_grant_tokens(req.grant_tokens.as_deref())?;
        let tx = self.store.read()?;
        let opened = self.open_blob(
            &*tx,
            call,
            &ciphertext.0,
            req.key_id,
            &ctx,
            req.encryption_context.as_ref(),
            "Decrypt",
        )?;
        dry_run(req.dry_run)?;
        Ok(DecryptResponse {
            key_id: Self::arn(&opened.key),
            plaintext: SecretBlob(opened.plaintext),
            encryption_algorithm: ALGORITHM,
            key_material_id: opened.material_id,
        })
    }

    /// ReEncrypt: decrypt under the source key and context, encrypt under the
    /// destination key and context, without the plaintext leaving the service.
    pub fn re_encrypt(
        &self,
        call: &Call<'_>,
        req: ReEncryptRequest,
    ) -> Result<ReEncryptResponse, KmsError> {
        let ciphertext = api::required(req.ciphertext_blob, "ciphertextBlob")?;
        let destination = api::required(req.destination_key_id, "destinationKeyId")?;
        let source_rsa = req
            .source_encryption_algorithm
            .as_deref()
            .and_then(EncryptionAlgorithm::parse);
        if source_rsa.is_none() {
            algorithm(
                req.source_encryption_algorithm.as_deref(),
                "sourceEncryptionAlgorithm",
            )?;
        }
        let dest_alg = req.destination_encryption_algorithm.as_deref();
        known_algorithm(dest_alg, "destinationEncryptionAlgorithm")?;
        let mut names: Vec<String> = req
            .source_encryption_context
            .iter()
            .chain(req.destination_encryption_context.iter())
            .flat_map(|c| c.keys().cloned())
            .collect();
        names.sort();
        names.dedup();
        call.set_context_keys(names);
        let source_ctx = context(req.source_encryption_context.as_ref())?;
        let dest_ctx = context(req.destination_encryption_context.as_ref())?;
        self.check_grant_tokens(req.grant_tokens.as_deref())?;
        let tx = self.store.read()?;
        let opened = match source_rsa {
            None => self.open_blob(
                &*tx,
                call,
                &ciphertext.0,
                req.source_key_id,
                &source_ctx,
                req.source_encryption_context.as_ref(),
                "ReEncryptFrom",
            )?,
            Some(alg) => {
                let (key, material) = self.rsa_open(
                    &*tx,
                    call,
                    req.source_key_id,
                    alg,
                    req.source_encryption_context.as_ref(),
                    "ReEncryptFrom",
                )?;
                Opened {
                    plaintext: Self::rsa_decrypt(&key, &material, alg, &ciphertext.0)?,
                    key,
                    material_id: material.id.clone(),
                }
            }
        };
        let (dest, material) = self.encrypting_key(
            &*tx,
            call,
            Some(destination),
            "destinationKeyId",
            "ReEncryptTo",
            req.destination_encryption_context.as_ref(),
            true,
            &[("kms:EncryptionAlgorithm", dest_alg.unwrap_or(ALGORITHM))],
        )?;
        drop(tx);
        let (blob, dest_alg_name) = if dest.spec.is_rsa() {
            let alg = asymmetric::rsa_algorithm(dest.spec, dest_alg)?;
            no_context_for_rsa(req.destination_encryption_context.as_ref())?;
            dry_run(req.dry_run)?;
            let ct = Self::rsa_encrypt(&dest, &material, alg, opened.plaintext.expose())?;
            (ct, alg.as_str())
        } else {
            algorithm(dest_alg, "destinationEncryptionAlgorithm")?;
            dry_run(req.dry_run)?;
            let blob = self.seal_with(&dest, &material, &dest_ctx, opened.plaintext.expose())?;
            (blob, ALGORITHM)
        };
        Ok(ReEncryptResponse {
            ciphertext_blob: Blob(blob),
            source_key_id: Self::arn(&opened.key),
            key_id: Self::arn(&dest),
            source_encryption_algorithm: source_rsa.map_or(ALGORITHM, EncryptionAlgorithm::as_str),
            destination_encryption_algorithm: dest_alg_name,
            source_key_material_id: opened.material_id,
            destination_key_material_id: material.id.clone(),
        })
    }

    /// GenerateDataKey (`with_plaintext`) and GenerateDataKeyWithoutPlaintext.
    pub fn generate_data_key(
        &self,
        call: &Call<'_>,
        req: GenerateDataKeyRequest,
        with_plaintext: bool,
    ) -> Result<DataKeyResponse, KmsError> {
        let len = match (req.key_spec.as_deref(), req.number_of_bytes) {
            // One message for both and neither (as moto records AWS).
            (Some(_), Some(_)) | (None, None) => {
                return Err(KmsError::Validation(
                    "Please specify either number of bytes or key spec.".into(),
                ));
            }
            (Some("AES_256"), None) => 32,
            (Some("AES_128"), None) => 16,
            (Some(other), None) => {
                return Err(KmsError::constraint(
                    "keySpec",
                    other,
                    "Member must satisfy enum value set: [AES_256, AES_128]",
                ));
            }
            (None, Some(n)) => api::in_range(n, "numberOfBytes", 1, 1024)? as usize,
        };
        if with_plaintext {
            no_recipient(req.recipient.as_ref())?;
        }
        note_context(call, req.encryption_context.as_ref());
        let ctx = context(req.encryption_context.as_ref())?;
        self.check_grant_tokens(req.grant_tokens.as_deref())?;
        let action = if with_plaintext {
            "GenerateDataKey"
        } else {
            "GenerateDataKeyWithoutPlaintext"
        };
        let tx = self.store.read()?;
        let (key, material) = self.encrypting_key(
            &*tx,
            call,
            req.key_id,
            "keyId",
            action,
            req.encryption_context.as_ref(),
            false,
            &[],
        )?;
        dry_run(req.dry_run)?;
        let data_key = SecretBytes::random(len)?;
        let blob = self.seal_with(&key, &material, &ctx, data_key.expose())?;
        Ok(DataKeyResponse {
            ciphertext_blob: Blob(blob),
            plaintext: with_plaintext.then_some(SecretBlob(data_key)),
            key_id: Self::arn(&key),
            key_material_id: material.id.clone(),
        })
    }

    /// GenerateRandom.
    pub fn generate_random(
        &self,
        call: &Call<'_>,
        req: GenerateRandomRequest,
    ) -> Result<RandomResponse, KmsError> {
        if req.custom_key_store_id.is_some() {
            return Err(KmsError::UnsupportedOperation(
                "Custom key stores are not supported by this atrest version.".into(),
            ));
        }
        no_recipient(req.recipient.as_ref())?;
        let n = api::in_range(
            api::required(req.number_of_bytes, "numberOfBytes")?,
            "numberOfBytes",
            1,
            1024,
        )?;
        let tx = self.store.read()?;
        self.authorize_identity(&*tx, call, "GenerateRandom", "*")?;
        self.require_not_suspended(&*tx, call.caller.account.as_str())?;
        Ok(RandomResponse {
            plaintext: SecretBlob(SecretBytes::random(n as usize)?),
        })
    }
}
