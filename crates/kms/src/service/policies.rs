//! PutKeyPolicy, GetKeyPolicy, ListKeyPolicies.

use serde::{Deserialize, Serialize};

use super::authz::Facts;
use super::{Call, KeyService};
use crate::KmsError;
use crate::api::{self, Empty};
use crate::records;

/// The only key policy name AWS KMS has.
pub const POLICY_NAME: &str = "default";

/// PutKeyPolicy.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PutKeyPolicyRequest {
    /// Key id or key ARN.
    pub key_id: Option<String>,
    /// Always `default` (optional).
    pub policy_name: Option<String>,
    /// The policy document.
    pub policy: Option<String>,
    /// Skip the lockout safety check.
    pub bypass_policy_lockout_safety_check: Option<bool>,
}

/// GetKeyPolicy.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GetKeyPolicyRequest {
    /// Key id or key ARN.
    pub key_id: Option<String>,
    /// Always `default` (optional).
    pub policy_name: Option<String>,
}

/// GetKeyPolicy's response.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GetKeyPolicyResponse {
    /// The document.
    pub policy: String,
    /// `default`.
    pub policy_name: &'static str,
}

/// ListKeyPolicies' response.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListKeyPoliciesResponse {
    /// `["default"]`.
    pub policy_names: [&'static str; 1],
    /// Always false.
    pub truncated: bool,
}

fn check_name(name: Option<&str>) -> Result<(), KmsError> {
    if let Some(n) = name {
        api::length(n, "policyName", 1, 128)?;
        if !n.chars().all(|c| c.is_alphanumeric() || c == '_') {
            return Err(KmsError::constraint(
                "policyName",
                n,
                "Member must satisfy regular expression pattern: [\\w]+",
            ));
        }
    }
    match name {
        None | Some(POLICY_NAME) => Ok(()),
        Some(_) => Err(KmsError::NotFound("No such policy exists".into())),
    }
}

impl KeyService {
    /// PutKeyPolicy: replaces the key policy, after the lockout safety check
    /// unless bypassed.
    pub fn put_key_policy(
        &self,
        call: &Call<'_>,
        req: PutKeyPolicyRequest,
    ) -> Result<Empty, KmsError> {
        check_name(req.policy_name.as_deref())?;
        let text = api::required(req.policy, "policy")?;
        let doc = super::keys::parse_key_policy(&text)?;
        let bypass = req.bypass_policy_lockout_safety_check == Some(true);
        self.update_key(call, req.key_id, "PutKeyPolicy", |svc, key, tx, _| {
            Self::require_customer_managed(key, "change the key policy of")?;
            Self::require_not_pending_deletion(key)?;
            if !bypass {
                svc.lockout_check(&*tx, call, &Self::arn(key), &doc)?;
            }
            tx.put(records::KEY_POLICIES, key.id.as_bytes(), text.as_bytes())?;
            key.policy_version += 1;
            Ok(Empty {})
        })
    }

    /// GetKeyPolicy.
    pub fn get_key_policy(
        &self,
        call: &Call<'_>,
        req: GetKeyPolicyRequest,
    ) -> Result<GetKeyPolicyResponse, KmsError> {
        check_name(req.policy_name.as_deref())?;
        let tx = self.store.read()?;
        let key = self.resolve_for_management(&*tx, call, req.key_id)?;
        self.authorize_key(&*tx, call, "GetKeyPolicy", &key, &Facts::default())?;
        let text = tx
            .get(records::KEY_POLICIES, key.id.as_bytes())?
            .ok_or_else(|| KmsError::Internal(format!("{} has no key policy", Self::arn(&key))))?;
        Ok(GetKeyPolicyResponse {
            policy: String::from_utf8_lossy(&text).into_owned(),
            policy_name: POLICY_NAME,
        })
    }

    /// ListKeyPolicies.
    pub fn list_key_policies(
        &self,
        call: &Call<'_>,
        req: api::ListForKeyRequest,
    ) -> Result<ListKeyPoliciesResponse, KmsError> {
        if let Some(l) = req.limit {
            api::in_range(l, "limit", 1, 1000)?;
        }
        let tx = self.store.read()?;
        let key = self.resolve_for_management(&*tx, call, req.key_id)?;
        self.authorize_key(&*tx, call, "ListKeyPolicies", &key, &Facts::default())?;
        Ok(ListKeyPoliciesResponse {
            policy_names: [POLICY_NAME],
            truncated: false,
        })
    }
}
