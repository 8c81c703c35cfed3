//! Users inside an account, their identity policies, and account
//! suspension (K7, K13). Managed by admins, or by an account's root for its
//! own users.

use atrest_policy::{PolicyDocument, PolicyKind};
use atrest_store::ReadTx;

use super::{Call, KeyService};
use crate::KmsError;
use crate::names::AccountId;
use crate::records::{self, AccountRecord, UserRecord};

/// A user as listings show it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct UserInfo {
    /// The account.
    pub account: String,
    /// The user name.
    pub name: String,
    /// The user's ARN.
    pub arn: String,
    /// Names of its identity policies.
    pub policies: Vec<String>,
}

fn valid_user_name(n: &str) -> bool {
    (1..=64).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b))
}

fn valid_policy_name(n: &str) -> bool {
    (1..=128).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b))
}

impl KeyService {
    /// Admins may manage any account; an account's root its own.
    pub(crate) fn require_manager(call: &Call<'_>, account: &str) -> Result<AccountId, KmsError> {
        let id = AccountId::parse(account).ok_or_else(|| {
            KmsError::Validation(format!("Account id '{account}' is not 12 digits"))
        })?;
        let c = call.caller;
        if c.admin || (c.is_root() && c.account == id && c.via_service.is_none()) {
            Ok(id)
        } else {
            Err(KmsError::AccessDenied(format!(
                "User: {} is not authorized to manage the users of account {account}; only an admin or that account's root may",
                c.principal_arn()
            )))
        }
    }

    fn load_user(tx: &dyn ReadTx, account: &AccountId, name: &str) -> Result<UserRecord, KmsError> {
        records::get(
            tx,
            records::USERS,
            &records::user_key(account.as_str(), name),
        )?
        .ok_or_else(|| {
            KmsError::NotFound(format!(
                "User arn:aws:iam::{account}:user/{name} does not exist"
            ))
        })
    }

    /// Stores a user whose policies changed, under a new policy version (so
    /// cached evaluations of the old ones are not used again), and commits.
    fn save_user_policies(
        &self,
        mut tx: Box<dyn atrest_store::WriteTx + '_>,
        call: &Call<'_>,
        account: &AccountId,
        user: &str,
        mut u: UserRecord,
    ) -> Result<(), KmsError> {
        u.policy_version += 1;
        records::put(
            &mut *tx,
            records::USERS,
            &records::user_key(account.as_str(), user),
            &u,
        )?;
        self.commit(tx, call)
    }

    /// Creates a user.
    pub fn create_user(
        &self,
        call: &Call<'_>,
        account: &str,
        name: &str,
    ) -> Result<UserInfo, KmsError> {
        call.set_operation("admin:CreateUser");
        let account = Self::require_manager(call, account)?;
        if !valid_user_name(name) {
            return Err(KmsError::Validation(format!(
                "User name '{name}' must be 1 to 64 characters of [A-Za-z0-9+=,.@_-]"
            )));
        }
        let mut tx = self.store.write()?;
        if tx
            .get(records::ACCOUNTS, account.as_str().as_bytes())?
            .is_none()
        {
            return Err(KmsError::NotFound(format!(
                "Account {account} does not exist"
            )));
        }
        let k = records::user_key(account.as_str(), name);
        if tx.get(records::USERS, &k)?.is_some() {
            return Err(KmsError::AlreadyExists(format!(
                "User arn:aws:iam::{account}:user/{name} already exists"
            )));
        }
        let user = UserRecord {
            v: 1,
            account: account.as_str().to_owned(),
            name: name.to_owned(),
            created: self.now_ms(),
            policies: Default::default(),
            policy_version: 0,
        };
        records::put(&mut *tx, records::USERS, &k, &user)?;
        self.commit(tx, call)?;
        Ok(Self::user_info(user))
    }

    fn user_info(u: UserRecord) -> UserInfo {
        UserInfo {
            arn: format!("arn:aws:iam::{}:user/{}", u.account, u.name),
            account: u.account,
            name: u.name,
            policies: u.policies.into_keys().collect(),
        }
    }

    /// Lists the users of an account.
    pub fn list_users(&self, call: &Call<'_>, account: &str) -> Result<Vec<UserInfo>, KmsError> {
        let account = Self::require_manager(call, account)?;
        let tx = self.store.read()?;
        let mut prefix = account.as_str().as_bytes().to_vec();
        prefix.push(0);
        let mut out = Vec::new();
        for (_, v) in tx.scan(records::USERS, &prefix, None, usize::MAX)? {
            out.push(Self::user_info(records::decode(records::USERS, &v)?));
        }
        Ok(out)
    }

    /// Attaches (or replaces) an identity policy of a user.
    pub fn put_user_policy(
        &self,
        call: &Call<'_>,
        account: &str,
        user: &str,
        policy_name: &str,
        document: &str,
    ) -> Result<(), KmsError> {
        call.set_operation("admin:PutUserPolicy");
        let account = Self::require_manager(call, account)?;
        if !valid_policy_name(policy_name) {
            return Err(KmsError::Validation(format!(
                "Policy name '{policy_name}' must be 1 to 128 characters of [A-Za-z0-9+=,.@_-]"
            )));
        }
        PolicyDocument::parse(document, PolicyKind::Identity)
            .map_err(|e| KmsError::MalformedPolicyDocument(e.to_string()))?;
        let tx = self.store.write()?;
        let mut u = Self::load_user(&*tx, &account, user)?;
        u.policies
            .insert(policy_name.to_owned(), document.to_owned());
        self.save_user_policies(tx, call, &account, user, u)
    }

    /// Removes an identity policy of a user.
    pub fn delete_user_policy(
        &self,
        call: &Call<'_>,
        account: &str,
        user: &str,
        policy_name: &str,
    ) -> Result<(), KmsError> {
        call.set_operation("admin:DeleteUserPolicy");
        let account = Self::require_manager(call, account)?;
        let tx = self.store.write()?;
        let mut u = Self::load_user(&*tx, &account, user)?;
        if u.policies.remove(policy_name).is_none() {
            return Err(KmsError::NotFound(format!(
                "User {user} has no policy named {policy_name}"
            )));
        }
        self.save_user_policies(tx, call, &account, user, u)
    }

    /// An identity policy of a user.
    pub fn get_user_policy(
        &self,
        call: &Call<'_>,
        account: &str,
        user: &str,
        policy_name: &str,
    ) -> Result<String, KmsError> {
        let account = Self::require_manager(call, account)?;
        let tx = self.store.read()?;
        let u = Self::load_user(&*tx, &account, user)?;
        u.policies.get(policy_name).cloned().ok_or_else(|| {
            KmsError::NotFound(format!("User {user} has no policy named {policy_name}"))
        })
    }

    /// Admin: suspends (or resumes) an account's use of keys (K13). Nothing
    /// is lost: keys, grants and ciphertexts stay as they are.
    pub fn set_suspended(
        &self,
        call: &Call<'_>,
        account: &str,
        suspended: bool,
    ) -> Result<(), KmsError> {
        call.set_operation(if suspended {
            "admin:SuspendAccount"
        } else {
            "admin:ResumeAccount"
        });
        Self::require_admin(call.caller)?;
        let id = AccountId::parse(account).ok_or_else(|| {
            KmsError::Validation(format!("Account id '{account}' is not 12 digits"))
        })?;
        let mut tx = self.store.write()?;
        let mut rec: AccountRecord = records::get(&*tx, records::ACCOUNTS, id.as_str().as_bytes())?
            .ok_or_else(|| KmsError::NotFound(format!("Account {id} does not exist")))?;
        if rec.service {
            return Err(KmsError::Validation(
                "The atrest service account cannot be suspended.".into(),
            ));
        }
        rec.suspended = suspended;
        records::put(&mut *tx, records::ACCOUNTS, id.as_str().as_bytes(), &rec)?;
        self.commit(tx, call)?;
        let mut set = super::write_lock(&self.suspended);
        if suspended {
            set.insert(id.as_str().to_owned());
        } else {
            set.remove(id.as_str());
        }
        Ok(())
    }

    /// Fails if `account`'s use of keys is suspended.
    pub(crate) fn require_not_suspended(
        &self,
        tx: &dyn ReadTx,
        account: &str,
    ) -> Result<(), KmsError> {
        use std::sync::atomic::Ordering;
        let suspended = if !self.store.is_current() {
            // The in-memory set may miss another node's change: the record.
            records::get::<AccountRecord>(tx, records::ACCOUNTS, account.as_bytes())?
                .is_some_and(|a| a.suspended)
        } else {
            if self.suspended_stale.swap(false, Ordering::AcqRel) {
                // Another node changed an account: read the set again (a
                // change during the scan sets the flag again).
                let mut set = std::collections::HashSet::new();
                for (_, v) in tx.scan(records::ACCOUNTS, b"", None, usize::MAX)? {
                    let a: AccountRecord = records::decode(records::ACCOUNTS, &v)?;
                    if a.suspended {
                        set.insert(a.id);
                    }
                }
                *super::write_lock(&self.suspended) = set;
            }
            super::read_lock(&self.suspended).contains(account)
        };
        if suspended {
            return Err(KmsError::AccountSuspended(format!(
                "Account {account}'s use of keys is suspended by the administrator; cryptographic operations by or for it fail until it is resumed."
            )));
        }
        Ok(())
    }
}
