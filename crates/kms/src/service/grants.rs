//! Grants: CreateGrant, ListGrants, ListRetirableGrants, RetireGrant,
//! RevokeGrant; grant tokens; and the lookup authorization uses.
//!
//! A grant lets its grantee principal perform the listed operations on one
//! key, optionally only when the request's encryption context equals, or
//! contains, the grant's. Grants take effect at once (the store is
//! consistent), so grant tokens are only checked for authenticity: a token
//! is `base64url(1 ‖ key id ‖ grant id ‖ HMAC[..16])` under a key derived
//! from the root key.

use std::collections::BTreeMap;

use atrest_store::ReadTx;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::authz::{Allowed, Facts};
use super::pagination::{self, Listing};
use super::{Call, KeyService};
use crate::KmsError;
use crate::api::{self, Page};
use crate::clock::epoch_seconds;
use crate::names::KeyRef;
use crate::records::{self, GrantRecord, KeyRecord, KeyState};

/// Operations a grant on a symmetric encryption key may allow.
pub const GRANT_OPERATIONS: [&str; 11] = [
    "Decrypt",
    "Encrypt",
    "GenerateDataKey",
    "GenerateDataKeyWithoutPlaintext",
    "GenerateDataKeyPair",
    "GenerateDataKeyPairWithoutPlaintext",
    "ReEncryptFrom",
    "ReEncryptTo",
    "CreateGrant",
    "RetireGrant",
    "DescribeKey",
];

/// Operations a grant on an asymmetric ENCRYPT_DECRYPT (RSA) key may allow.
pub const ASYMMETRIC_ENCRYPTION_GRANT_OPERATIONS: [&str; 8] = [
    "Decrypt",
    "Encrypt",
    "ReEncryptFrom",
    "ReEncryptTo",
    "GetPublicKey",
    "CreateGrant",
    "RetireGrant",
    "DescribeKey",
];

/// Operations a grant on a SIGN_VERIFY key may allow.
pub const SIGNING_GRANT_OPERATIONS: [&str; 6] = [
    "Sign",
    "Verify",
    "GetPublicKey",
    "CreateGrant",
    "RetireGrant",
    "DescribeKey",
];

/// Operations a grant on a KEY_AGREEMENT key may allow.
pub const KEY_AGREEMENT_GRANT_OPERATIONS: [&str; 5] = [
    "DeriveSharedSecret",
    "GetPublicKey",
    "CreateGrant",
    "RetireGrant",
    "DescribeKey",
];

/// Operations a grant on an HMAC (GENERATE_VERIFY_MAC) key may allow.
pub const MAC_GRANT_OPERATIONS: [&str; 5] = [
    "GenerateMac",
    "VerifyMac",
    "CreateGrant",
    "RetireGrant",
    "DescribeKey",
];

/// AWS's `GrantOperation` enum, in AWS's order (for its validation message).
const ALL_GRANT_OPERATIONS: [&str; 17] = [
    "Decrypt",
    "Encrypt",
    "GenerateDataKey",
    "GenerateDataKeyWithoutPlaintext",
    "ReEncryptFrom",
    "ReEncryptTo",
    "Sign",
    "Verify",
    "GetPublicKey",
    "CreateGrant",
    "RetireGrant",
    "DescribeKey",
    "GenerateDataKeyPair",
    "GenerateDataKeyPairWithoutPlaintext",
    "GenerateMac",
    "VerifyMac",
    "DeriveSharedSecret",
];

/// The operations a grant on a key of `spec` and `usage` may allow (AWS's
/// table), and how AWS names the kind of key in its refusal.
#[must_use]
pub fn grant_operations(
    spec: records::KeySpec,
    usage: records::KeyUsage,
) -> (&'static [&'static str], &'static str) {
    use records::KeyUsage as U;
    match usage {
        U::EncryptDecrypt if spec == records::KeySpec::SymmetricDefault => {
            (&GRANT_OPERATIONS, "a symmetric encryption key")
        }
        U::EncryptDecrypt => (
            &ASYMMETRIC_ENCRYPTION_GRANT_OPERATIONS,
            "an asymmetric encryption key",
        ),
        U::SignVerify => (&SIGNING_GRANT_OPERATIONS, "an asymmetric signing key"),
        U::KeyAgreement => (&KEY_AGREEMENT_GRANT_OPERATIONS, "a key agreement key"),
        U::GenerateVerifyMac => (&MAC_GRANT_OPERATIONS, "an HMAC key"),
    }
}

fn known_operation(op: &str) -> bool {
    ALL_GRANT_OPERATIONS.contains(&op)
}

/// Grants one key may have (AWS's quota).
pub const MAX_GRANTS_PER_KEY: usize = 50_000;

/// Constraints as AWS sends them.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct GrantConstraints {
    /// The request's context must equal this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption_context_equals: Option<BTreeMap<String, String>>,
    /// The request's context must contain this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption_context_subset: Option<BTreeMap<String, String>>,
}

/// CreateGrant.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateGrantRequest {
    /// Key id or key ARN.
    pub key_id: Option<String>,
    /// Who may use the grant.
    pub grantee_principal: Option<String>,
    /// Who may retire it.
    pub retiring_principal: Option<String>,
    /// What it allows.
    pub operations: Option<Vec<String>>,
    /// Context constraints.
    pub constraints: Option<GrantConstraints>,
    /// Grant tokens.
    pub grant_tokens: Option<Vec<String>>,
    /// Name, for idempotency.
    pub name: Option<String>,
    /// Check only.
    pub dry_run: Option<bool>,
}

/// CreateGrant's response.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateGrantResponse {
    /// The grant token.
    pub grant_token: String,
    /// The grant id.
    pub grant_id: String,
}

/// ListGrants.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListGrantsRequest {
    /// Key id or key ARN.
    pub key_id: Option<String>,
    /// Page size.
    pub limit: Option<i64>,
    /// Where to continue.
    pub marker: Option<String>,
    /// Only this grant.
    pub grant_id: Option<String>,
    /// Only grants to this principal.
    pub grantee_principal: Option<String>,
}

/// ListRetirableGrants.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListRetirableGrantsRequest {
    /// The retiring principal.
    pub retiring_principal: Option<String>,
    /// Page size.
    pub limit: Option<i64>,
    /// Where to continue.
    pub marker: Option<String>,
}

/// RetireGrant and RevokeGrant.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RetireGrantRequest {
    /// A grant token (RetireGrant).
    pub grant_token: Option<String>,
    /// Key id or key ARN.
    pub key_id: Option<String>,
    /// Grant id.
    pub grant_id: Option<String>,
    /// Check only.
    pub dry_run: Option<bool>,
}

/// One grant as listings show it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GrantEntry {
    /// Key ARN.
    pub key_id: String,
    /// Grant id.
    pub grant_id: String,
    /// Name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Creation, epoch seconds.
    pub creation_date: f64,
    /// Grantee.
    pub grantee_principal: String,
    /// Retiring principal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retiring_principal: Option<String>,
    /// Issuing account (its root ARN, as AWS shows it).
    pub issuing_account: String,
    /// Operations.
    pub operations: Vec<String>,
    /// Constraints.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub constraints: Option<GrantConstraints>,
}

/// `{"Grants": [...]}`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Grants {
    /// Grants.
    pub grants: Vec<GrantEntry>,
}

/// Whether `p` is a principal a grant can name: an IAM principal ARN of
/// this partition, or a service principal name such as `disk.atrest`.
fn valid_principal(p: &str) -> bool {
    if let Some(rest) = p.strip_prefix("arn:aws:iam::") {
        let Some((account, resource)) = rest.split_once(':') else {
            return false;
        };
        return crate::names::AccountId::parse(account).is_some()
            && (resource == "root"
                || resource
                    .strip_prefix("user/")
                    .is_some_and(|n| !n.is_empty())
                || resource
                    .strip_prefix("role/")
                    .is_some_and(|n| !n.is_empty()));
    }
    !p.is_empty()
        && p.len() <= 256
        && p.contains('.')
        && p.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
}

fn grant_to_entry(key_arn: &str, g: GrantRecord) -> GrantEntry {
    let constraints =
        (g.context_equals.is_some() || g.context_subset.is_some()).then(|| GrantConstraints {
            encryption_context_equals: g.context_equals.clone(),
            encryption_context_subset: g.context_subset.clone(),
        });
    GrantEntry {
        key_id: key_arn.to_owned(),
        grant_id: g.id,
        name: g.name,
        creation_date: epoch_seconds(g.created),
        grantee_principal: g.grantee,
        retiring_principal: g.retiring,
        issuing_account: crate::names::account_root_arn(&g.issuing_account),
        operations: g.operations,
        constraints,
    }
}

/// Whether the grant's constraints hold for an operation on `ctx`.
fn constraints_hold(g: &GrantRecord, ctx: Option<&BTreeMap<String, String>>) -> bool {
    let empty = BTreeMap::new();
    let ctx = ctx.unwrap_or(&empty);
    if let Some(eq) = &g.context_equals
        && eq != ctx
    {
        return false;
    }
    if let Some(sub) = &g.context_subset
        && !sub.iter().all(|(k, v)| ctx.get(k) == Some(v))
    {
        return false;
    }
    true
}

/// Operations whose requests carry an encryption context, to which grant
/// constraints apply.
fn takes_context(op: &str) -> bool {
    matches!(
        op,
        "Encrypt"
            | "Decrypt"
            | "ReEncryptFrom"
            | "ReEncryptTo"
            | "GenerateDataKey"
            | "GenerateDataKeyWithoutPlaintext"
            | "GenerateDataKeyPair"
            | "GenerateDataKeyPairWithoutPlaintext"
    )
}

impl KeyService {
    fn token_mac(&self, key_id: &Uuid, grant_id: &[u8]) -> [u8; 32] {
        atrest_crypto::hash::hmac_sha256_parts(
            self.derived.grant_tokens.expose(),
            &[key_id.as_bytes(), grant_id],
        )
    }

    fn grant_token(&self, key_id: &Uuid, grant_id: &str) -> String {
        let gid = hex::decode(grant_id).unwrap_or_default();
        let mut raw = vec![1u8];
        raw.extend_from_slice(key_id.as_bytes());
        raw.extend_from_slice(&gid);
        raw.extend_from_slice(&self.token_mac(key_id, &gid)[..16]);
        B64URL.encode(raw)
    }

    /// The key and grant a token names, if it is authentic.
    fn parse_grant_token(&self, token: &str) -> Option<(Uuid, String)> {
        let raw = B64URL.decode(token.as_bytes()).ok()?;
        if raw.len() != 1 + 16 + 32 + 16 || raw[0] != 1 {
            return None;
        }
        let key_id = Uuid::from_slice(&raw[1..17]).ok()?;
        let gid = &raw[17..49];
        let mac = self.token_mac(&key_id, gid);
        atrest_crypto::ct_eq(&mac[..16], &raw[49..]).then(|| (key_id, hex::encode(gid)))
    }

    /// Checks grant tokens (at most 10, each authentic); returns their grant
    /// ids. A token is not needed for a grant to work; a forged one is refused.
    pub(crate) fn check_grant_tokens(
        &self,
        tokens: Option<&[String]>,
    ) -> Result<Vec<String>, KmsError> {
        let Some(tokens) = tokens else {
            return Ok(Vec::new());
        };
        if tokens.len() > 10 {
            return Err(KmsError::constraint(
                "grantTokens",
                format!("[{}]", tokens.join(", ")),
                "Member must have length less than or equal to 10",
            ));
        }
        tokens
            .iter()
            .map(|t| {
                self.parse_grant_token(t).map(|(_, g)| g).ok_or_else(|| {
                    KmsError::InvalidGrantToken("The grant token is not valid.".into())
                })
            })
            .collect()
    }

    /// The grant, if any, that lets the caller perform `action` on `key`.
    pub(crate) fn grant_allowing(
        &self,
        tx: &dyn ReadTx,
        call: &Call<'_>,
        action: &str,
        key: &KeyRecord,
        facts: &Facts<'_>,
    ) -> Result<Option<String>, KmsError> {
        if !grant_operations(key.spec, key.usage).0.contains(&action) {
            return Ok(None);
        }
        let me = call.caller.principal_arn();
        for (_, v) in tx.scan(records::GRANTS, key.id.as_bytes(), None, usize::MAX)? {
            let g: GrantRecord = records::decode(records::GRANTS, &v)?;
            if g.grantee == me
                && g.operations.iter().any(|o| o == action)
                && (!takes_context(action) || constraints_hold(&g, facts.context))
            {
                return Ok(Some(g.id));
            }
        }
        Ok(None)
    }

    fn grant_record(
        tx: &dyn ReadTx,
        key: &KeyRecord,
        grant_id: &str,
    ) -> Result<Option<GrantRecord>, KmsError> {
        records::get(tx, records::GRANTS, &records::grant_key(&key.id, grant_id))
    }

    /// CreateGrant.
    pub fn create_grant(
        &self,
        call: &Call<'_>,
        req: CreateGrantRequest,
    ) -> Result<CreateGrantResponse, KmsError> {
        let key_raw = api::required(req.key_id, "keyId")?;
        let grantee = api::required(req.grantee_principal, "granteePrincipal")?;
        let operations = api::required(req.operations, "operations")?;
        if !valid_principal(&grantee) {
            return Err(KmsError::Validation(format!(
                "GranteePrincipal '{grantee}' must be an IAM principal ARN or a service principal name."
            )));
        }
        if let Some(r) = &req.retiring_principal
            && !valid_principal(r)
        {
            return Err(KmsError::Validation(format!(
                "RetiringPrincipal '{r}' must be an IAM principal ARN or a service principal name."
            )));
        }
        if operations.is_empty() {
            return Err(KmsError::constraint(
                "operations",
                "[]",
                "Member must have length greater than or equal to 1",
            ));
        }
        for op in &operations {
            if !known_operation(op) {
                return Err(KmsError::constraint(
                    "operations",
                    format!("[{}]", operations.join(", ")),
                    &format!(
                        "Member must satisfy constraint: [Member must satisfy enum value set: [{}]]",
                        ALL_GRANT_OPERATIONS.join(", ")
                    ),
                ));
            }
        }
        let mut operations = operations;
        operations.sort();
        operations.dedup();
        // An empty constraint constrains nothing: store it as none.
        let mut constraints = req.constraints.unwrap_or_default();
        if constraints
            .encryption_context_equals
            .as_ref()
            .is_some_and(BTreeMap::is_empty)
        {
            constraints.encryption_context_equals = None;
        }
        if constraints
            .encryption_context_subset
            .as_ref()
            .is_some_and(BTreeMap::is_empty)
        {
            constraints.encryption_context_subset = None;
        }
        if constraints.encryption_context_equals.is_some()
            && constraints.encryption_context_subset.is_some()
        {
            return Err(KmsError::Validation(
                "Specify at most one of EncryptionContextEquals and EncryptionContextSubset."
                    .into(),
            ));
        }
        for c in [
            &constraints.encryption_context_equals,
            &constraints.encryption_context_subset,
        ]
        .into_iter()
        .flatten()
        {
            crate::blob::canonical_context(c)?;
        }
        if let Some(n) = &req.name {
            api::length(n, "name", 1, 256)?;
            if !n
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'/' | b'_' | b'-'))
            {
                return Err(KmsError::constraint(
                    "name",
                    n,
                    "Member must satisfy regular expression pattern: ^[a-zA-Z0-9:/_-]+$",
                ));
            }
        }
        self.check_grant_tokens(req.grant_tokens.as_deref())?;
        let key_ref = KeyRef::parse(&key_raw)?;
        if key_ref.is_alias() {
            return Err(KmsError::NotFound(format!(
                "Invalid keyId '{key_raw}': CreateGrant takes a key ID or key ARN, not an alias"
            )));
        }
        let mut tx = self.store.write()?;
        let key = self.resolve(&*tx, call, &key_ref)?;
        let allowed = self.authorize_key(
            &*tx,
            call,
            "CreateGrant",
            &key,
            &Facts {
                grant_operations: Some(&operations),
                grantee: Some(&grantee),
                retiring: req.retiring_principal.as_deref(),
                ..Facts::default()
            },
        )?;
        if matches!(
            key.state,
            KeyState::PendingDeletion | KeyState::PendingReplicaDeletion
        ) {
            return Err(Self::pending_deletion(&key));
        }
        // Only the operations AWS allows for this kind of key, checked once
        // the caller may create grants on it (the kind is not told to others).
        let (valid, kind) = grant_operations(key.spec, key.usage);
        if let Some(op) = operations.iter().find(|o| !valid.contains(&o.as_str())) {
            return Err(KmsError::Validation(format!(
                "Grant operation {op} is not valid for {kind}."
            )));
        }
        // A grant that allows CreateGrant may create only narrower grants.
        if let Allowed::Grant(parent_id) = &allowed {
            let parent = Self::grant_record(&*tx, &key, parent_id)?
                .ok_or_else(|| KmsError::Internal("allowing grant vanished".into()))?;
            let narrower = operations.iter().all(|o| parent.operations.contains(o))
                && parent
                    .context_equals
                    .as_ref()
                    .is_none_or(|e| constraints.encryption_context_equals.as_ref() == Some(e))
                && parent.context_subset.as_ref().is_none_or(|s| {
                    let child = constraints
                        .encryption_context_equals
                        .as_ref()
                        .or(constraints.encryption_context_subset.as_ref());
                    child.is_some_and(|c| s.iter().all(|(k, v)| c.get(k) == Some(v)))
                });
            if !narrower {
                return Err(KmsError::AccessDenied(format!(
                    "User: {} is not authorized to perform: kms:CreateGrant on resource: {} because grant {parent_id} allows only narrower grants (a subset of its operations, with its constraints)",
                    call.caller.principal_arn(),
                    Self::arn(&key)
                )));
            }
        }
        // DryRun answers once authorization and the key's state pass, even
        // when the grant exists already (nothing is returned or changed).
        if req.dry_run == Some(true) {
            return Err(KmsError::DryRun);
        }
        // Idempotency: the same name and parameters return the same grant.
        if let Some(name) = &req.name {
            for (_, v) in tx.scan(records::GRANTS, key.id.as_bytes(), None, usize::MAX)? {
                let g: GrantRecord = records::decode(records::GRANTS, &v)?;
                if g.name.as_deref() == Some(name)
                    && g.grantee == grantee
                    && g.retiring == req.retiring_principal
                    && g.operations == operations
                    && g.context_equals == constraints.encryption_context_equals
                    && g.context_subset == constraints.encryption_context_subset
                {
                    call.set_grant(g.id.clone());
                    return Ok(CreateGrantResponse {
                        grant_token: self.grant_token(&key.id, &g.id),
                        grant_id: g.id,
                    });
                }
            }
        }
        if tx
            .scan(records::GRANTS, key.id.as_bytes(), None, MAX_GRANTS_PER_KEY)?
            .len()
            >= MAX_GRANTS_PER_KEY
        {
            return Err(KmsError::LimitExceeded(format!(
                "{} already has {MAX_GRANTS_PER_KEY} grants, the most a key may have.",
                Self::arn(&key)
            )));
        }
        let grant_id = hex::encode(atrest_crypto::rand::array::<32>()?);
        let g = GrantRecord {
            v: 1,
            id: grant_id.clone(),
            key_id: key.id,
            name: req.name,
            grantee,
            retiring: req.retiring_principal,
            operations,
            context_equals: constraints.encryption_context_equals,
            context_subset: constraints.encryption_context_subset,
            issuing_account: call.caller.account.as_str().to_owned(),
            created: self.now_ms(),
        };
        records::put(
            &mut *tx,
            records::GRANTS,
            &records::grant_key(&key.id, &grant_id),
            &g,
        )?;
        if let Some(r) = &g.retiring {
            tx.put(
                records::GRANTS_BY_RETIREE,
                &retiree_key(r, &key.id, &grant_id),
                b"",
            )?;
        }
        call.set_grant(grant_id.clone());
        self.commit(tx, call)?;
        Ok(CreateGrantResponse {
            grant_token: self.grant_token(&key.id, &grant_id),
            grant_id,
        })
    }

    /// ListGrants.
    pub fn list_grants(
        &self,
        call: &Call<'_>,
        req: ListGrantsRequest,
    ) -> Result<Page<Grants>, KmsError> {
        let size = pagination::page_size(req.limit, 50, 100)?;
        let after = pagination::decode(Listing::Grants, req.marker.as_deref())?;
        let tx = self.store.read()?;
        let key = self.resolve_for_management(&*tx, call, req.key_id)?;
        self.authorize_key(&*tx, call, "ListGrants", &key, &Facts::default())?;
        let cursor = after.map(|a| records::grant_key(&key.id, &String::from_utf8_lossy(&a)));
        let mut out = Vec::new();
        for (_, v) in tx.scan(
            records::GRANTS,
            key.id.as_bytes(),
            cursor.as_deref(),
            usize::MAX,
        )? {
            let g: GrantRecord = records::decode(records::GRANTS, &v)?;
            if req.grant_id.as_ref().is_some_and(|id| *id != g.id)
                || req
                    .grantee_principal
                    .as_ref()
                    .is_some_and(|p| *p != g.grantee)
            {
                continue;
            }
            out.push(g);
            if out.len() > size {
                break;
            }
        }
        let arn = Self::arn(&key);
        let (grants, next) =
            pagination::finish(Listing::Grants, out, size, |g| g.id.as_bytes().to_vec());
        Ok(Page {
            truncated: next.is_some(),
            next_marker: next,
            items: Grants {
                grants: grants
                    .into_iter()
                    .map(|g| grant_to_entry(&arn, g))
                    .collect(),
            },
        })
    }

    /// ListRetirableGrants: grants in the caller's region whose retiring
    /// principal is the one given. An identity-level permission.
    pub fn list_retirable_grants(
        &self,
        call: &Call<'_>,
        req: ListRetirableGrantsRequest,
    ) -> Result<Page<Grants>, KmsError> {
        let retiring = api::required(req.retiring_principal, "retiringPrincipal")?;
        let size = pagination::page_size(req.limit, 50, 100)?;
        let after = pagination::decode(Listing::Grants, req.marker.as_deref())?;
        let tx = self.store.read()?;
        self.authorize_identity(&*tx, call, "ListRetirableGrants", "*")?;
        // As in AWS, only a principal of the caller's own account may be
        // asked about. A service principal (`disk.atrest`) belongs to no
        // account: asked by anyone but itself, the answer holds only the
        // grants on the caller's own keys.
        let (own, own_keys_only) = match retiring.strip_prefix("arn:aws:iam::") {
            Some(rest) => (
                rest.split(':').next() == Some(call.caller.account.as_str()),
                false,
            ),
            None if retiring.starts_with("arn:") => (false, false),
            None => (true, retiring != call.caller.principal_arn()),
        };
        if !own {
            return Err(KmsError::AccessDenied(format!(
                "User: {} is not authorized to perform: kms:ListRetirableGrants for retiring principal {retiring}: it is not a principal of account {}",
                call.caller.principal_arn(),
                call.caller.account
            )));
        }
        let mut prefix = retiring.as_bytes().to_vec();
        prefix.push(0);
        let cursor = after.map(|a| {
            let mut k = prefix.clone();
            k.extend_from_slice(&a);
            k
        });
        let mut out = Vec::new();
        for (k, _) in tx.scan(
            records::GRANTS_BY_RETIREE,
            &prefix,
            cursor.as_deref(),
            usize::MAX,
        )? {
            let rest = &k[prefix.len()..];
            if rest.len() < 16 {
                continue;
            }
            let (kid, gid) = rest.split_at(16);
            let Ok(key_id) = Uuid::from_slice(kid) else {
                continue;
            };
            let Some(key) = records::get::<KeyRecord>(&*tx, records::KEYS, key_id.as_bytes())?
            else {
                continue;
            };
            if key.region != call.caller.region
                || (own_keys_only && key.account != call.caller.account.as_str())
            {
                continue;
            }
            let gid = String::from_utf8_lossy(gid).into_owned();
            if let Some(g) = Self::grant_record(&*tx, &key, &gid)? {
                out.push((rest.to_vec(), Self::arn(&key), g));
            }
            if out.len() > size {
                break;
            }
        }
        let (rows, next) =
            pagination::finish(Listing::Grants, out, size, |(pos, _, _)| pos.clone());
        Ok(Page {
            truncated: next.is_some(),
            next_marker: next,
            items: Grants {
                grants: rows
                    .into_iter()
                    .map(|(_, arn, g)| grant_to_entry(&arn, g))
                    .collect(),
            },
        })
    }

    fn remove_grant(tx: &mut dyn atrest_store::WriteTx, g: &GrantRecord) -> Result<(), KmsError> {
        tx.delete(records::GRANTS, &records::grant_key(&g.key_id, &g.id))?;
        if let Some(r) = &g.retiring {
            tx.delete(
                records::GRANTS_BY_RETIREE,
                &retiree_key(r, &g.key_id, &g.id),
            )?;
        }
        Ok(())
    }

    /// Removes every grant of a key (when the key is deleted).
    pub(crate) fn remove_all_grants(
        tx: &mut dyn atrest_store::WriteTx,
        key_id: &Uuid,
    ) -> Result<(), KmsError> {
        for (_, v) in tx.scan(records::GRANTS, key_id.as_bytes(), None, usize::MAX)? {
            let g: GrantRecord = records::decode(records::GRANTS, &v)?;
            Self::remove_grant(tx, &g)?;
        }
        Ok(())
    }

    /// RetireGrant: by the retiring principal, by the grantee when the grant
    /// includes RetireGrant, or by the root of the account that issued it.
    pub fn retire_grant(
        &self,
        call: &Call<'_>,
        req: RetireGrantRequest,
    ) -> Result<api::Empty, KmsError> {
        let (key_id, grant_id) = match (&req.grant_token, &req.key_id, &req.grant_id) {
            (Some(t), _, _) => {
                let (k, g) = self.parse_grant_token(t).ok_or_else(|| {
                    KmsError::InvalidGrantToken("The grant token is not valid.".into())
                })?;
                (KeyRef::Id(k), g)
            }
            (None, Some(k), Some(g)) => (KeyRef::parse(k)?, g.clone()),
            _ => {
                return Err(KmsError::Validation(
                    "Specify either GrantToken, or KeyId and GrantId.".into(),
                ));
            }
        };
        let mut tx = self.store.write()?;
        let key = match &key_id {
            KeyRef::Id(id) => records::get::<KeyRecord>(&*tx, records::KEYS, id.as_bytes())?
                .filter(|k| k.region == call.caller.region)
                .ok_or_else(|| {
                    KmsError::NotFound(format!(
                        "Key '{}' does not exist",
                        crate::names::key_arn(
                            &call.caller.region,
                            call.caller.account.as_str(),
                            id
                        )
                    ))
                })?,
            other => self.resolve(&*tx, call, other)?,
        };
        call.set_key(Self::arn(&key));
        let g = Self::grant_record(&*tx, &key, &grant_id)?.ok_or_else(|| {
            KmsError::InvalidGrantId(format!(
                "Grant {grant_id} does not exist on {}.",
                Self::arn(&key)
            ))
        })?;
        let me = call.caller.principal_arn();
        let may = g.retiring.as_deref() == Some(me.as_str())
            || (g.grantee == me && g.operations.iter().any(|o| o == "RetireGrant"))
            || (call.caller.is_root() && call.caller.account.as_str() == g.issuing_account);
        if !may {
            return Err(KmsError::AccessDenied(format!(
                "User: {me} is not authorized to perform: kms:RetireGrant on resource: {} because it is neither the grant's retiring principal, its grantee with RetireGrant, nor the issuing account",
                Self::arn(&key)
            )));
        }
        call.set_grant(g.id.clone());
        if req.dry_run == Some(true) {
            return Err(KmsError::DryRun);
        }
        Self::remove_grant(&mut *tx, &g)?;
        self.commit(tx, call)?;
        Ok(api::Empty {})
    }

    /// RevokeGrant: needs kms:RevokeGrant on the key.
    pub fn revoke_grant(
        &self,
        call: &Call<'_>,
        req: RetireGrantRequest,
    ) -> Result<api::Empty, KmsError> {
        let grant_id = api::required(req.grant_id, "grantId")?;
        let mut tx = self.store.write()?;
        let key = self.resolve_for_management(&*tx, call, req.key_id)?;
        self.authorize_key(&*tx, call, "RevokeGrant", &key, &Facts::default())?;
        let g = Self::grant_record(&*tx, &key, &grant_id)?.ok_or_else(|| {
            KmsError::InvalidGrantId(format!(
                "Grant {grant_id} does not exist on {}.",
                Self::arn(&key)
            ))
        })?;
        call.set_grant(g.id.clone());
        if req.dry_run == Some(true) {
            return Err(KmsError::DryRun);
        }
        Self::remove_grant(&mut *tx, &g)?;
        self.commit(tx, call)?;
        Ok(api::Empty {})
    }
}

fn retiree_key(retiring: &str, key_id: &Uuid, grant_id: &str) -> Vec<u8> {
    let mut k = retiring.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(key_id.as_bytes());
    k.extend_from_slice(grant_id.as_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_a_grant_can_name() {
        for ok in [
            "arn:aws:iam::111122223333:root",
            "arn:aws:iam::111122223333:user/alice",
            "arn:aws:iam::111122223333:role/app",
            "disk.atrest",
            "rds.atrest",
        ] {
            assert!(valid_principal(ok), "{ok}");
        }
        for bad in [
            "",
            "alice",
            "arn:aws:iam::1:root",
            "arn:aws:iam::111122223333:user/",
            "Disk.Atrest",
            "arn:aws:s3:::b",
        ] {
            assert!(!valid_principal(bad), "{bad}");
        }
    }

    #[test]
    fn constraints() {
        let ctx = |p: &[(&str, &str)]| -> BTreeMap<String, String> {
            p.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()
        };
        let mut g = GrantRecord {
            v: 1,
            id: "x".into(),
            key_id: Uuid::nil(),
            name: None,
            grantee: "g".into(),
            retiring: None,
            operations: vec![],
            context_equals: Some(ctx(&[("a", "1")])),
            context_subset: None,
            issuing_account: "111122223333".into(),
            created: 0,
        };
        assert!(constraints_hold(&g, Some(&ctx(&[("a", "1")]))));
        assert!(!constraints_hold(&g, Some(&ctx(&[("a", "1"), ("b", "2")]))));
        assert!(!constraints_hold(&g, None));
        g.context_equals = None;
        g.context_subset = Some(ctx(&[("a", "1")]));
        assert!(constraints_hold(&g, Some(&ctx(&[("a", "1"), ("b", "2")]))));
        assert!(!constraints_hold(&g, Some(&ctx(&[("a", "2")]))));
        assert!(!constraints_hold(&g, None));
    }
}
