//! Accounts (admins), and an account's users, identity policies and access
//! keys: `/v1/accounts/...`. Actions `admin:*` on `*` (accounts are an
//! admin's), and `iam:*` on `arn:aws:iam::ACCOUNT:user/NAME` (or
//! `arn:aws:iam::ACCOUNT:root` for the root's keys), as IAM names them.
#![allow(
    unused_qualifications,
    reason = "utoipa's expansion of the declared parameters names their types in full"
)]

use std::collections::BTreeMap;

use atrest_kms::{AccessKeyInfo, UserInfo};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use zeroize::Zeroizing;

use crate::error::ApiError;
use crate::rest::{Replayable, Resource, endpoint};
use crate::routes::Deleted;
use crate::state::AppState;

/// The routes of this module.
pub(crate) fn routes() -> OpenApiRouter<std::sync::Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(list_accounts, create_account))
        .routes(routes!(suspend_account))
        .routes(routes!(resume_account))
        .routes(routes!(list_access_keys, create_access_key))
        .routes(routes!(deactivate_access_key))
        .routes(routes!(activate_access_key))
        .routes(routes!(delete_access_key))
        .routes(routes!(list_users, create_user))
        .routes(routes!(
            get_user_policy,
            put_user_policy,
            delete_user_policy
        ))
}

/// An account in a path.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct AccountPath {
    /// Account id (12 digits).
    account: String,
}

/// An access key in a path.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct AccessKeyPath {
    /// Account id (12 digits).
    account: String,
    /// Access key id.
    id: String,
}

/// A user's policy in a path.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct UserPolicyPath {
    /// Account id (12 digits).
    account: String,
    /// User name.
    user: String,
    /// Policy name.
    policy: String,
}

/// `POST /v1/accounts` (admins). With no `id`, a fresh 12-digit id is
/// chosen.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateAccountRequest {
    /// The new account's id (12 digits).
    #[schema(pattern = "^[0-9]{12}$")]
    id: Option<String>,
    /// Whether the account's root is an administrator (default false).
    admin: Option<bool>,
}

/// A created account.
#[derive(Serialize, ToSchema, Clone)]
pub(crate) struct AccountCreated {
    /// The account id.
    id: String,
    /// Whether its root is an administrator.
    admin: bool,
}

/// One account of a listing.
#[derive(Serialize, ToSchema, Clone)]
pub(crate) struct AccountSummary {
    /// The account id.
    id: String,
    /// Whether its root is an administrator.
    admin: bool,
    /// Whether it is suspended.
    suspended: bool,
    /// Creation time, epoch seconds.
    created: f64,
}

/// Every account.
#[derive(Serialize, ToSchema, Clone)]
pub(crate) struct AccountList {
    /// The accounts.
    accounts: Vec<AccountSummary>,
}

/// Whether an account is suspended.
#[derive(Serialize, ToSchema, Clone)]
pub(crate) struct AccountSuspension {
    /// The account id.
    id: String,
    /// Whether it is now suspended.
    suspended: bool,
}

/// `POST /v1/accounts/{account}/access-keys`. With no `access_key_id`, a
/// key is created; with `access_key_id` and `secret_access_key`, they are
/// imported.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateAccessKeyRequest {
    /// The user the key is for (default: the account's root).
    user: Option<String>,
    /// An access key id to import.
    access_key_id: Option<String>,
    /// Its secret (with `access_key_id`).
    #[serde(default, deserialize_with = "zeroizing")]
    #[schema(value_type = Option<String>)]
    secret_access_key: Option<Zeroizing<String>>,
}

fn zeroizing<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Zeroizing<String>>, D::Error> {
    <Option<String> as Deserialize>::deserialize(d).map(|o| o.map(Zeroizing::new))
}

/// A created or imported access key, with its secret (answered once, never
/// kept for a replay: see [`AccessKeyReplay`]).
#[derive(Serialize, ToSchema)]
pub(crate) struct AccessKeyCreated {
    /// The account.
    account: String,
    /// The user it belongs to; null for the account's root.
    user: Option<String>,
    /// The access key id.
    access_key_id: String,
    /// The secret access key.
    #[schema(value_type = String)]
    #[serde(serialize_with = "expose")]
    secret_access_key: Zeroizing<String>,
}

/// The secret, in the one answer that shows it.
fn expose<S: serde::Serializer>(s: &Zeroizing<String>, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(s)
}

/// What a replay of a key's creation answers: the key, not its secret.
#[derive(Serialize, Clone)]
pub(crate) struct AccessKeyReplay {
    account: String,
    user: Option<String>,
    access_key_id: String,
}

impl From<&AccessKeyCreated> for AccessKeyReplay {
    fn from(a: &AccessKeyCreated) -> Self {
        Self {
            account: a.account.clone(),
            user: a.user.clone(),
            access_key_id: a.access_key_id.clone(),
        }
    }
}

/// An account's access keys (no secrets), each with its status and last use.
#[derive(Serialize, ToSchema, Clone)]
pub(crate) struct AccessKeyList {
    /// The keys.
    access_keys: Vec<AccessKeyInfo>,
}

/// `POST /v1/accounts/{account}/users`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateUserRequest {
    /// The user name: 1 to 64 of letters, digits and `+=,.@_-`.
    #[schema(pattern = "^[A-Za-z0-9+=,.@_-]{1,64}$")]
    name: String,
}

/// An account's users.
#[derive(Serialize, ToSchema, Clone)]
pub(crate) struct UserList {
    /// The users.
    users: Vec<UserInfo>,
}

/// A policy document: an IAM-style JSON object, or that object as a string.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub(crate) enum PolicyDocument {
    /// The document as a JSON string.
    Text(String),
    /// The document as a JSON object.
    Object(BTreeMap<String, Value>),
}

/// `PUT /v1/accounts/{account}/users/{user}/policies/{policy}`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PutUserPolicyRequest {
    /// The policy.
    document: PolicyDocument,
}

/// A user policy, named.
#[derive(Serialize, ToSchema, Clone)]
pub(crate) struct UserPolicyRef {
    /// The account.
    account: String,
    /// The user.
    user: String,
    /// The policy name.
    policy: String,
}

/// A user policy and its document.
#[derive(Serialize, ToSchema, Clone)]
pub(crate) struct UserPolicy {
    /// The account.
    account: String,
    /// The user.
    user: String,
    /// The policy name.
    policy: String,
    /// The policy document (JSON text).
    document: String,
}

impl Replayable for AccountCreated {}
impl Replayable for AccountList {}
impl Replayable for AccountSuspension {}
impl Replayable for AccessKeyReplay {}
impl Replayable for AccessKeyList {}
impl Replayable for AccessKeyInfo {}
impl Replayable for UserInfo {}
impl Replayable for UserList {}
impl Replayable for UserPolicyRef {}
impl Replayable for UserPolicy {}

/// The IAM ARN of a user of `account` (`None`: its root).
fn iam_arn(account: &str, user: Option<&str>) -> Resource {
    Resource::arn(match user {
        Some(u) => format!("arn:aws:iam::{account}:user/{u}"),
        None => format!("arn:aws:iam::{account}:root"),
    })
}

/// The IAM ARN of the owner of access key `id` (an unknown key is named by
/// the account's root: refused or not found after).
fn key_owner(st: &AppState, account: &str, id: &str) -> Result<Resource, crate::error::ApiError> {
    let user = st.kms.access_key(id)?.and_then(|k| k.user.clone());
    Ok(iam_arn(account, user.as_deref()))
}

endpoint! {
    /// Create an account (admins).
    create_account: post "/v1/accounts" => "admin:CreateAccount",
    tag: "admin", status: CREATED, paged: false, idempotent: true,
    body: CreateAccountRequest,
    answer: AccountCreated,
    resource: |_, _, _, _, _| Ok(Resource::any()),
    run: |st, call, _, _, b| {
        let admin = b.admin.unwrap_or(false);
        let account = st.kms.create_account(call, b.id.as_deref(), admin)?;
        Ok(AccountCreated { id: account.as_str().to_owned(), admin })
    },
}

endpoint! {
    /// Every account (admins).
    list_accounts: get "/v1/accounts" => "admin:ListAccounts",
    tag: "admin", status: OK, paged: true, idempotent: false,
    answer: AccountList,
    resource: |_, _, _, _, _| Ok(Resource::any()),
    run: |st, call, _, _, _| Ok(AccountList {
        accounts: st.kms.list_accounts(call.caller)?
            .into_iter()
            .map(|(id, admin, suspended, created)| AccountSummary { id, admin, suspended, created })
            .collect(),
    }),
}

endpoint! {
    /// Suspend an account's use of keys (admins): every cryptographic
    /// operation by or for it fails until it is resumed; nothing is lost.
    suspend_account: post "/v1/accounts/{account}/suspend" => "admin:SuspendAccount",
    tag: "admin", status: OK, paged: false, idempotent: true,
    path: AccountPath,
    answer: AccountSuspension,
    resource: |_, _, _, _, _| Ok(Resource::any()),
    run: |st, call, p, _, _| {
        st.kms.set_suspended(call, &p.account, true)?;
        Ok(AccountSuspension { id: p.account, suspended: true })
    },
}

endpoint! {
    /// Resume a suspended account (admins).
    resume_account: post "/v1/accounts/{account}/resume" => "admin:ResumeAccount",
    tag: "admin", status: OK, paged: false, idempotent: true,
    path: AccountPath,
    answer: AccountSuspension,
    resource: |_, _, _, _, _| Ok(Resource::any()),
    run: |st, call, p, _, _| {
        st.kms.set_suspended(call, &p.account, false)?;
        Ok(AccountSuspension { id: p.account, suspended: false })
    },
}

endpoint! {
    /// With no `access_key_id`, create a key (for the account's root, or
    /// for `user`) and answer its secret once; with `access_key_id` and
    /// `secret_access_key`, import them.
    create_access_key: post "/v1/accounts/{account}/access-keys" => "iam:CreateAccessKey",
    tag: "admin", status: CREATED, paged: false, idempotent: true,
    path: AccountPath,
    body: CreateAccessKeyRequest,
    answer: AccessKeyCreated,
    replay: AccessKeyReplay = AccessKeyReplay::from,
    resource: |_, _, p, _, b| Ok(iam_arn(&p.account, b.user.as_deref())),
    run: |st, call, p, _, b| {
        let key = match (b.access_key_id, b.secret_access_key) {
            (None, None) => st.kms.create_access_key(call, &p.account, b.user.as_deref())?,
            (Some(id), Some(secret)) => st.kms.import_access_key(
                call,
                &p.account,
                b.user.as_deref(),
                &id,
                atrest_crypto::SecretBytes::new(secret.as_bytes().to_vec()),
            )?,
            _ => {
                return Err(ApiError::Invalid(
                    "Give both access_key_id and secret_access_key to import a key, or neither to create one.".into(),
                ));
            }
        };
        Ok(AccessKeyCreated {
            account: key.account.as_str().to_owned(),
            user: b.user,
            access_key_id: key.access_key_id.clone(),
            secret_access_key: Zeroizing::new(
                String::from_utf8_lossy(key.secret_access_key.expose()).into_owned(),
            ),
        })
    },
}

endpoint! {
    /// The account's access keys (a user's own, for a user), with their
    /// status and last use.
    list_access_keys: get "/v1/accounts/{account}/access-keys" => "iam:ListAccessKeys",
    tag: "admin", status: OK, paged: true, idempotent: false,
    path: AccountPath,
    answer: AccessKeyList,
    // As IAM's ListAccessKeys: the user whose keys are listed (a user lists
    // its own; a root or an admin the account's).
    resource: |_, c, p, _, _| Ok(match &c.principal.kind {
        atrest_policy::PrincipalKind::User(u) => iam_arn(&p.account, Some(u)),
        _ => iam_arn(&p.account, None),
    }),
    run: |st, call, p, _, _| Ok(AccessKeyList { access_keys: st.kms.list_access_keys(call, &p.account)? }),
}

endpoint! {
    /// Deactivate an access key: from now on it signs no request and its
    /// NBD pre-shared key opens no connection.
    deactivate_access_key: post "/v1/accounts/{account}/access-keys/{id}/deactivate" => "iam:UpdateAccessKey",
    tag: "admin", status: OK, paged: false, idempotent: true,
    path: AccessKeyPath,
    answer: AccessKeyInfo,
    resource: |st, _, p, _, _| key_owner(st, &p.account, &p.id),
    run: |st, call, p, _, _| {
        let key = st.kms.deactivate_access_key(call, &p.account, &p.id)?;
        // Its derived signing keys have no use any more.
        st.signing_keys.forget(&p.id);
        Ok(key)
    },
}

endpoint! {
    /// Activate an access key again.
    activate_access_key: post "/v1/accounts/{account}/access-keys/{id}/activate" => "iam:UpdateAccessKey",
    tag: "admin", status: OK, paged: false, idempotent: true,
    path: AccessKeyPath,
    answer: AccessKeyInfo,
    resource: |st, _, p, _, _| key_owner(st, &p.account, &p.id),
    run: |st, call, p, _, _| Ok(st.kms.activate_access_key(call, &p.account, &p.id)?),
}

endpoint! {
    /// Delete an access key: requests signed with it are answered as for an
    /// unknown key.
    delete_access_key: delete "/v1/accounts/{account}/access-keys/{id}" => "iam:DeleteAccessKey",
    tag: "admin", status: OK, paged: false, idempotent: false,
    path: AccessKeyPath,
    answer: Deleted,
    resource: |st, _, p, _, _| key_owner(st, &p.account, &p.id),
    run: |st, call, p, _, _| {
        st.kms.delete_access_key(call, &p.account, &p.id)?;
        st.signing_keys.forget(&p.id);
        Ok(Deleted { deleted: p.id })
    },
}

endpoint! {
    /// Create a user.
    create_user: post "/v1/accounts/{account}/users" => "iam:CreateUser",
    tag: "admin", status: CREATED, paged: false, idempotent: true,
    path: AccountPath,
    body: CreateUserRequest,
    answer: UserInfo,
    resource: |_, _, p, _, b| Ok(iam_arn(&p.account, Some(&b.name))),
    run: |st, call, p, _, b| Ok(st.kms.create_user(call, &p.account, &b.name)?),
}

endpoint! {
    /// The account's users.
    list_users: get "/v1/accounts/{account}/users" => "iam:ListUsers",
    tag: "admin", status: OK, paged: true, idempotent: false,
    path: AccountPath,
    answer: UserList,
    resource: |_, _, p, _, _| Ok(Resource::arn(format!("arn:aws:iam::{}:user/*", p.account))),
    run: |st, call, p, _, _| Ok(UserList { users: st.kms.list_users(call, &p.account)? }),
}

endpoint! {
    /// Store a user's identity policy (validated first).
    put_user_policy: put "/v1/accounts/{account}/users/{user}/policies/{policy}" => "iam:PutUserPolicy",
    tag: "admin", status: OK, paged: false, idempotent: false,
    path: UserPolicyPath,
    body: PutUserPolicyRequest,
    answer: UserPolicyRef,
    resource: |_, _, p, _, _| Ok(iam_arn(&p.account, Some(&p.user))),
    run: |st, call, p, _, b| {
        let document = match b.document {
            PolicyDocument::Text(s) => s,
            PolicyDocument::Object(o) => serde_json::to_string(&o)
                .map_err(|e| ApiError::Internal(format!("encoding a policy: {e}")))?,
        };
        st.kms.put_user_policy(call, &p.account, &p.user, &p.policy, &document)?;
        Ok(UserPolicyRef { account: p.account, user: p.user, policy: p.policy })
    },
}

endpoint! {
    /// A user's identity policy.
    get_user_policy: get "/v1/accounts/{account}/users/{user}/policies/{policy}" => "iam:GetUserPolicy",
    tag: "admin", status: OK, paged: false, idempotent: false,
    path: UserPolicyPath,
    answer: UserPolicy,
    resource: |_, _, p, _, _| Ok(iam_arn(&p.account, Some(&p.user))),
    run: |st, call, p, _, _| {
        let document = st.kms.get_user_policy(call, &p.account, &p.user, &p.policy)?;
        Ok(UserPolicy { account: p.account, user: p.user, policy: p.policy, document })
    },
}

endpoint! {
    /// Delete a user's identity policy (answers the policy's name).
    delete_user_policy: delete "/v1/accounts/{account}/users/{user}/policies/{policy}" => "iam:DeleteUserPolicy",
    tag: "admin", status: OK, paged: false, idempotent: false,
    path: UserPolicyPath,
    answer: Deleted,
    resource: |_, _, p, _, _| Ok(iam_arn(&p.account, Some(&p.user))),
    run: |st, call, p, _, _| {
        st.kms.delete_user_policy(call, &p.account, &p.user, &p.policy)?;
        Ok(Deleted { deleted: p.policy })
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replay_holds_no_secret() {
        let created = AccessKeyCreated {
            account: "111122223333".into(),
            user: None,
            access_key_id: "AKIAEXAMPLE".into(),
            secret_access_key: Zeroizing::new("s3cr3t".into()),
        };
        let replay = serde_json::to_string(&AccessKeyReplay::from(&created)).unwrap();
        assert!(
            replay.contains("AKIAEXAMPLE") && !replay.contains("s3cr3t"),
            "{replay}"
        );
    }
}
