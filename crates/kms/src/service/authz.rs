//! Authorization: the key policy, the caller's identity policies and the
//! key's grants, combined as AWS KMS does.
//!
//! * An explicit `Deny` in the key policy or in an identity policy wins.
//! * Same account: allowed if the key policy names the caller directly
//!   (its ARN, `*`, a service principal), or names the caller's account and
//!   an identity policy allows the action (the account's root needs none).
//! * Another account: allowed only if the key policy allows the caller (by
//!   name or by account) and an identity policy of the caller allows it too.
//! * Otherwise a grant allows it, if one names the caller as grantee, lists
//!   the operation, and its constraints hold for the request's context.

use std::cell::LazyCell;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use atrest_policy::{Context, Evaluation, PolicyDocument, PolicyKind, PrincipalKind, Request};
use atrest_store::ReadTx;

use super::{Call, KeyService, read_lock, write_lock};
use crate::KmsError;
use crate::blob::EncryptionContext;
use crate::records::{self, KeyRecord};

/// Parsed policies, by a key that changes whenever the text does.
#[derive(Default)]
pub(crate) struct PolicyCache {
    docs: RwLock<HashMap<PolicyId, Arc<PolicyDocument>>>,
}

/// Which policy text a cached document was parsed from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum PolicyId {
    /// A key policy: the key and its policy version.
    Key(uuid::Uuid, u64),
    /// An identity policy: account, user, the user's policy version, name.
    Identity(String),
}

/// Actions besides `admin:*` that only an admin account's principals take.
pub const ADMIN_ACTIONS: &[&str] = &["audit:VerifyAudit"];

/// Actions only an account's root (or an admin) takes, whatever a user's
/// policy says: managing users, their policies, and making access keys (a
/// user's key cannot mint more keys). A user lists, deactivates, activates
/// and deletes its own access keys where its policy allows.
pub const ROOT_ACTIONS: &[&str] = &[
    "iam:CreateAccessKey",
    "iam:CreateUser",
    "iam:ListUsers",
    "iam:PutUserPolicy",
    "iam:GetUserPolicy",
    "iam:DeleteUserPolicy",
];

impl PolicyCache {
    fn get(
        &self,
        id: PolicyId,
        load: impl FnOnce() -> Result<PolicyDocument, KmsError>,
    ) -> Result<Arc<PolicyDocument>, KmsError> {
        if let Some(d) = read_lock(&self.docs).get(&id) {
            return Ok(Arc::clone(d));
        }
        let doc = Arc::new(load()?);
        let mut map = write_lock(&self.docs);
        if map.len() > 100_000 {
            map.clear();
        }
        map.insert(id, Arc::clone(&doc));
        Ok(doc)
    }
}

/// What a request brings to the condition keys, beyond the caller.
#[derive(Default)]
pub(crate) struct Facts<'a> {
    /// The request's encryption context.
    pub context: Option<&'a EncryptionContext>,
    /// The alias the request named the key by.
    pub request_alias: Option<&'a str>,
    /// For CreateGrant: the operations of the new grant.
    pub grant_operations: Option<&'a [String]>,
    /// For CreateGrant: the grantee and retiring principals.
    pub grantee: Option<&'a str>,
    /// For CreateGrant.
    pub retiring: Option<&'a str>,
    /// Other condition keys of the request and their values, such as
    /// `kms:SigningAlgorithm`, `kms:MacAlgorithm`, `kms:EncryptionAlgorithm`,
    /// `kms:KeyAgreementAlgorithm`, `kms:MessageType`.
    pub more: &'a [(&'a str, &'a str)],
}

/// How a request was allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Allowed {
    /// By the key policy (and identity policies where needed).
    Policy,
    /// By this grant.
    Grant(String),
}

fn deny(call: &Call<'_>, action: &str, resource: &str, why: &str) -> KmsError {
    KmsError::AccessDenied(format!(
        "User: {} is not authorized to perform: kms:{action} on resource: {resource} {why}",
        call.caller.principal_arn()
    ))
}

impl KeyService {
    /// The condition-key values of a request. Built lazily (see
    /// [`atrest_policy::ConditionKeys`]): only a policy with a condition or a
    /// policy variable asks for them.
    fn condition_context(
        &self,
        call: &Call<'_>,
        key: Option<&KeyRecord>,
        facts: &Facts<'_>,
    ) -> Context {
        let c = call.caller;
        let mut ctx = Context::new();
        ctx.set("kms:CallerAccount", c.account.as_str());
        ctx.set("aws:PrincipalAccount", c.account.as_str());
        ctx.set("aws:PrincipalArn", c.principal_arn());
        if let PrincipalKind::User(name) = &c.principal.kind {
            ctx.set("aws:username", name.clone());
        }
        if let Some(v) = &c.via_service {
            ctx.set("kms:ViaService", v.clone());
        }
        if let Some(k) = key {
            ctx.set("kms:KeyOrigin", k.origin.as_str());
            ctx.set("kms:KeySpec", k.spec.as_str());
            ctx.set("kms:KeyUsage", k.usage.as_str());
            ctx.set(
                "kms:MultiRegion",
                if k.multi_region.is_some() {
                    "true"
                } else {
                    "false"
                },
            );
            if k.multi_region.is_some() {
                ctx.set(
                    "kms:MultiRegionKeyType",
                    if k.is_replica() { "REPLICA" } else { "PRIMARY" },
                );
            }
        }
        if let Some(ec) = facts.context {
            for (k, v) in ec {
                ctx.set(&format!("kms:EncryptionContext:{k}"), v.clone());
            }
            ctx.set_many("kms:EncryptionContextKeys", ec.keys().cloned().collect());
        }
        if let Some(a) = facts.request_alias {
            ctx.set("kms:RequestAlias", a);
        }
        if let Some(ops) = facts.grant_operations {
            ctx.set_many("kms:GrantOperations", ops.to_vec());
            ctx.set(
                "kms:GrantIsForAWSResource",
                if c.via_service.is_some() {
                    "true"
                } else {
                    "false"
                },
            );
        }
        if let Some(g) = facts.grantee {
            ctx.set("kms:GranteePrincipal", g);
        }
        if let Some(r) = facts.retiring {
            ctx.set("kms:RetiringPrincipal", r);
        }
        for (k, v) in facts.more {
            ctx.set(k, *v);
        }
        ctx
    }

    /// The key policy of `key`, parsed (cached by key and policy version).
    pub(crate) fn key_policy(
        &self,
        tx: &dyn ReadTx,
        key: &KeyRecord,
    ) -> Result<Arc<PolicyDocument>, KmsError> {
        let cache_id = PolicyId::Key(key.id, key.policy_version);
        self.policies.get(cache_id, || {
            let text = tx
                .get(records::KEY_POLICIES, key.id.as_bytes())?
                .ok_or_else(|| {
                    KmsError::Internal(format!("{} has no key policy", Self::arn(key)))
                })?;
            let text = String::from_utf8(text).map_err(|_| {
                KmsError::Internal(format!("key policy of {} is not UTF-8", Self::arn(key)))
            })?;
            PolicyDocument::parse(&text, PolicyKind::Resource).map_err(|e| {
                KmsError::Internal(format!(
                    "stored key policy of {} does not parse: {e}",
                    Self::arn(key)
                ))
            })
        })
    }

    /// What the caller's identity policies say. The root of an account and
    /// service principals are allowed everything by their own side.
    pub(crate) fn identity(
        &self,
        tx: &dyn ReadTx,
        call: &Call<'_>,
        request: &Request<'_>,
    ) -> Result<Evaluation, KmsError> {
        let c = call.caller;
        let name = match &c.principal.kind {
            PrincipalKind::Root | PrincipalKind::Service(_) => {
                return Ok(Evaluation {
                    allowed_directly: true,
                    ..Evaluation::default()
                });
            }
            PrincipalKind::User(n) | PrincipalKind::Role(n) => n,
        };
        let user = self
            .user_records
            .get_shared(tx, &records::user_key(c.account.as_str(), name))?
            .ok_or_else(|| {
                KmsError::AccessDenied(format!("User: {} no longer exists", c.principal_arn()))
            })?;
        let mut out = Evaluation::default();
        for (policy_name, text) in &user.policies {
            let cache_id = PolicyId::Identity(format!(
                "{}/{name}/{}/{policy_name}",
                c.account, user.policy_version
            ));
            let doc = self.policies.get(cache_id, || {
                PolicyDocument::parse(text, PolicyKind::Identity).map_err(|e| {
                    KmsError::Internal(format!(
                        "stored identity policy {policy_name} does not parse: {e}"
                    ))
                })
            })?;
            let e = doc.evaluate(request);
            out.denied |= e.denied;
            out.allowed_directly |= e.allowed_directly || e.allowed_via_account;
        }
        Ok(out)
    }

    /// Authorizes `action` on `key` for the call, or says why not in AWS's
    /// words. Records the key (and the grant, if one allowed it) in the
    /// call's audit facts.
    pub(crate) fn authorize_key(
        &self,
        tx: &dyn ReadTx,
        call: &Call<'_>,
        action: &str,
        key: &KeyRecord,
        facts: &Facts<'_>,
    ) -> Result<Allowed, KmsError> {
        let arn = Self::arn(key);
        call.set_key(arn.clone());
        let full_action = ["kms:", action].concat();
        let ctx = LazyCell::new(|| self.condition_context(call, Some(key), facts));
        let request = Request {
            principal: &call.caller.principal,
            action: &full_action,
            resource: &arn,
            context: &ctx,
        };
        let kp = self.key_policy(tx, key)?.evaluate(&request);
        if kp.denied {
            return Err(deny(
                call,
                action,
                &arn,
                "with an explicit deny in a resource-based policy",
            ));
        }
        let id = self.identity(tx, call, &request)?;
        if id.denied {
            return Err(deny(
                call,
                action,
                &arn,
                "with an explicit deny in an identity-based policy",
            ));
        }
        let same_account = key.account == call.caller.account.as_str();
        let by_policy = if same_account {
            kp.allowed_directly || (kp.allowed_via_account && id.allowed_directly)
        } else {
            (kp.allowed_directly || kp.allowed_via_account) && id.allowed_directly
        };
        if by_policy {
            return Ok(Allowed::Policy);
        }
        if let Some(grant_id) = self.grant_allowing(tx, call, action, key, facts)? {
            call.set_grant(grant_id.clone());
            return Ok(Allowed::Grant(grant_id));
        }
        if kp.allowed_directly || kp.allowed_via_account {
            Err(deny(
                call,
                action,
                &arn,
                &format!("because no identity-based policy allows the kms:{action} action"),
            ))
        } else {
            Err(deny(
                call,
                action,
                &arn,
                &format!("because no resource-based policy allows the kms:{action} action"),
            ))
        }
    }

    /// Authorizes an action that is not on one key (CreateKey, ListKeys,
    /// ListAliases, GenerateRandom, alias resources): identity policies only.
    pub(crate) fn authorize_identity(
        &self,
        tx: &dyn ReadTx,
        call: &Call<'_>,
        action: &str,
        resource: &str,
    ) -> Result<(), KmsError> {
        let full_action = ["kms:", action].concat();
        let ctx = LazyCell::new(|| self.condition_context(call, None, &Facts::default()));
        let request = Request {
            principal: &call.caller.principal,
            action: &full_action,
            resource,
            context: &ctx,
        };
        let id = self.identity(tx, call, &request)?;
        if id.denied {
            return Err(deny(
                call,
                action,
                resource,
                "with an explicit deny in an identity-based policy",
            ));
        }
        if id.allowed_directly {
            return Ok(());
        }
        Err(deny(
            call,
            action,
            resource,
            &format!("because no identity-based policy allows the kms:{action} action"),
        ))
    }

    /// Authorizes an action of another atrest service (`disk:DeleteDisk`,
    /// `db:StopInstance`, `iam:CreateAccessKey`, ...) on `resource` (an ARN,
    /// or `*`) for the call's principal, with the caller's identity policies
    /// and the same engine and rules as a key's: the account's root may do
    /// everything in its account, a user only what a policy allows, and an
    /// explicit Deny wins. `context` adds condition keys (the resource's
    /// tags as `aws:ResourceTag/<key>`, a create's as `aws:RequestTag/<key>`
    /// and `aws:TagKeys`).
    ///
    /// Before the policies: `admin:*` actions (and [`ADMIN_ACTIONS`]) are an
    /// admin account's only; a resource of another account is refused (no
    /// atrest resource has a resource policy that could let another account
    /// in); [`ROOT_ACTIONS`] are an account root's only.
    pub fn authorize_action(
        &self,
        call: &Call<'_>,
        action: &str,
        resource: &str,
        context: &[(String, Vec<String>)],
    ) -> Result<(), KmsError> {
        let tx = self.store.read()?;
        let ctx = LazyCell::new(|| {
            let mut ctx = self.condition_context(call, None, &Facts::default());
            for (k, v) in context {
                ctx.set_many(k, v.clone());
            }
            ctx
        });
        let request = Request {
            principal: &call.caller.principal,
            action,
            resource,
            context: &ctx,
        };
        let refuse = |why: &str| {
            KmsError::AccessDenied(format!(
                "User: {} is not authorized to perform: {action} on resource: {resource} {why}",
                call.caller.principal_arn()
            ))
        };
        let c = call.caller;
        if !c.admin {
            if action.starts_with("admin:") || ADMIN_ACTIONS.contains(&action) {
                return Err(refuse(
                    "because only an admin account's principals may take it",
                ));
            }
            // atrest's resources have no resource policies: another
            // account's are out of reach, whatever the caller's policy says.
            if let Some(owner) = resource.split(':').nth(4).filter(|a| !a.is_empty())
                && owner != c.account.as_str()
            {
                return Err(refuse("because the resource belongs to another account"));
            }
            if ROOT_ACTIONS.contains(&action) && !c.is_root() {
                return Err(refuse(
                    "because only the account's root manages its users, their policies and their access keys",
                ));
            }
        }
        let id = self.identity(&*tx, call, &request)?;
        if id.denied {
            return Err(refuse("with an explicit deny in an identity-based policy"));
        }
        if id.allowed_directly {
            return Ok(());
        }
        Err(refuse(&format!(
            "because no identity-based policy allows the {action} action"
        )))
    }

    /// Authorizes each of `actions` on the key `key_id` names for the call
    /// (see [`crate::ServiceSession::check_customer`]).
    pub(crate) fn authorize_use(
        &self,
        call: &Call<'_>,
        key_id: &str,
        actions: &[&str],
    ) -> Result<(), KmsError> {
        let tx = self.store.read()?;
        let key_ref = crate::names::KeyRef::parse(key_id)?;
        let key = self.resolve(&*tx, call, &key_ref)?;
        for action in actions {
            self.authorize_key(&*tx, call, action, &key, &Facts::default())?;
        }
        Ok(())
    }

    /// Checks that `doc` would let the caller change the key policy again
    /// (AWS's lockout safety check).
    pub(crate) fn lockout_check(
        &self,
        tx: &dyn ReadTx,
        call: &Call<'_>,
        key_arn: &str,
        doc: &PolicyDocument,
    ) -> Result<(), KmsError> {
        let ctx = LazyCell::new(|| self.condition_context(call, None, &Facts::default()));
        let request = Request {
            principal: &call.caller.principal,
            action: "kms:PutKeyPolicy",
            resource: key_arn,
            context: &ctx,
        };
        let kp = doc.evaluate(&request);
        let id = self.identity(tx, call, &request)?;
        let ok = !kp.denied
            && !id.denied
            && (kp.allowed_directly || (kp.allowed_via_account && id.allowed_directly));
        if ok {
            Ok(())
        } else {
            Err(KmsError::MalformedPolicyDocument(
                "The new key policy will not allow you to update the key policy in the future."
                    .into(),
            ))
        }
    }
}
