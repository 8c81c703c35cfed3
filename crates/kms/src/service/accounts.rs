//! Accounts and access keys: creation, import, the life cycle of a key
//! (deactivate, activate, delete), and the lookup that authentication uses.
//!
//! A key's state reaches every authentication at once: the KMS and REST
//! APIs and NBD's pre-shared keys all go through [`KeyService::access_key`]
//! on every request or connection, an in-memory lookup in `secrets`, and
//! every change removes the key's entry there after it commits.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use atrest_crypto::SecretBytes;
use atrest_store::WriteTx;

use super::{Call, Caller, KeyService, read_lock, write_lock};
use crate::KmsError;
use crate::names::AccountId;
use crate::records::{self, AccessKeyRecord, AccountRecord, LastUsedRecord};

/// A new access key; the secret is shown once, then only its sealed form is
/// kept. `Debug` redacts the secret.
#[derive(Debug)]
pub struct NewAccessKey {
    /// The account it belongs to.
    pub account: AccountId,
    /// The access key id.
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: SecretBytes,
}

/// The first admin account and its key, created on first start.
pub struct AdminBootstrap {
    /// The admin account and its access key.
    pub key: NewAccessKey,
}

/// What authentication needs to know about an access key.
pub struct CachedAccessKey {
    /// The owning account.
    pub account: AccountId,
    /// The user it belongs to (`None`: the account's root).
    pub user: Option<String>,
    /// Whether the account is an admin account.
    pub admin: bool,
    /// Whether the key is active.
    pub active: bool,
    secret: SecretBytes,
}

impl CachedAccessKey {
    /// The caller this key authenticates, in `region`.
    #[must_use]
    pub fn caller(&self, region: &str) -> Caller {
        let mut c = match &self.user {
            Some(u) => Caller::user(self.account.clone(), region, u),
            None => Caller::root(self.account.clone(), region),
        };
        // Admin rights belong to the admin account's root, not its users.
        c.admin = self.admin && self.user.is_none();
        c
    }

    /// The secret access key, for verifying a signature.
    #[must_use]
    pub fn secret(&self) -> &[u8] {
        self.secret.expose()
    }
}

/// An access key as listings show it (no secret).
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct AccessKeyInfo {
    /// The access key id.
    pub access_key_id: String,
    /// The owning account.
    pub account: String,
    /// The user it belongs to, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Creation time, epoch seconds.
    pub created: f64,
    /// Whether it may sign requests.
    pub active: bool,
    /// `Active` or `Inactive`, as AWS IAM names it.
    pub status: &'static str,
    /// The last authenticated use; null if never (or not since last_used
    /// was recorded). Exact while the server runs; the stored time, which a
    /// restart shows, is at most one flush interval (a minute) old.
    pub last_used: Option<AccessKeyLastUsed>,
}

/// When and where an access key was last used.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct AccessKeyLastUsed {
    /// When, epoch seconds.
    pub time: f64,
    /// Through which service: `kms` (the KMS API), `atrest` (the REST API)
    /// or `nbd` (a disk over NBD, by the key's pre-shared key).
    pub service: String,
    /// The region of the request.
    pub region: String,
}

impl From<LastUsedRecord> for AccessKeyLastUsed {
    fn from(r: LastUsedRecord) -> Self {
        Self {
            time: crate::clock::epoch_seconds(r.time),
            service: r.service,
            region: r.region,
        }
    }
}

/// A change of an access key's life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyChange {
    Deactivate,
    Activate,
    Delete,
}

/// `kms.meta` entry naming the admin access key of an unfinished bootstrap.
const BOOTSTRAP: &[u8] = b"bootstrap";

fn secret_aad(akid: &str) -> Vec<u8> {
    let mut aad = b"atrest/auth/secret/v1".to_vec();
    aad.extend_from_slice(akid.as_bytes());
    aad
}

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

fn new_access_key_id() -> Result<String, KmsError> {
    let bytes = atrest_crypto::rand::array::<16>()?;
    let mut s = String::from("AKIA");
    s.extend(
        bytes
            .iter()
            .map(|b| char::from(BASE32[usize::from(b % 32)])),
    );
    Ok(s)
}

fn new_secret() -> Result<SecretBytes, KmsError> {
    use base64::Engine;
    let raw = SecretBytes::random(30)?;
    let encoded =
        zeroize::Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(raw.expose()));
    Ok(SecretBytes::new(encoded.as_bytes().to_vec()))
}

/// Rules for imported access key ids: AWS's (16 to 128 word characters).
fn valid_access_key_id(s: &str) -> bool {
    (16..=128).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Rules for imported secrets: 16 to 128 printable ASCII characters.
fn valid_secret(s: &[u8]) -> bool {
    (16..=128).contains(&s.len()) && s.iter().all(|b| b.is_ascii_graphic())
}

impl KeyService {
    /// Fails unless `caller` is an admin.
    pub fn require_admin_caller(caller: &Caller) -> Result<(), KmsError> {
        Self::require_admin(caller)
    }

    pub(crate) fn require_admin(caller: &Caller) -> Result<(), KmsError> {
        if caller.admin {
            Ok(())
        } else {
            Err(KmsError::AccessDenied(format!(
                "User: {} is not authorized to perform admin operations; only an admin account may",
                caller.principal_arn()
            )))
        }
    }

    /// On an empty store, creates the admin account and its first access key
    /// in one transaction, marked as an unfinished bootstrap; returns them so
    /// the caller can hand the secret to the operator, after which it calls
    /// [`KeyService::finish_bootstrap`]. If a previous start crashed before
    /// finishing, returns the same account and key again. Otherwise `None`.
    pub fn bootstrap_admin(&self) -> Result<Option<AdminBootstrap>, KmsError> {
        let mut tx = self.store.write()?;
        if let Some(akid) = tx.get(records::META, BOOTSTRAP)? {
            drop(tx);
            let akid = String::from_utf8_lossy(&akid).into_owned();
            let key = self.access_key(&akid)?.ok_or_else(|| {
                KmsError::Internal(format!("bootstrap access key {akid} is missing"))
            })?;
            return Ok(Some(AdminBootstrap {
                key: NewAccessKey {
                    account: key.account.clone(),
                    access_key_id: akid,
                    secret_access_key: SecretBytes::new(key.secret().to_vec()),
                },
            }));
        }
        if !tx.scan(records::ACCOUNTS, b"", None, 1)?.is_empty() {
            return Ok(None);
        }
        let account = self.insert_account(&mut *tx, None, true)?;
        let key = self.insert_access_key(&mut *tx, &account, None, None)?;
        tx.put(records::META, BOOTSTRAP, key.access_key_id.as_bytes())?;
        tx.commit()?;
        Ok(Some(AdminBootstrap { key }))
    }

    /// Marks the bootstrap done: the operator has the admin credentials.
    pub fn finish_bootstrap(&self) -> Result<(), KmsError> {
        let mut tx = self.store.write()?;
        tx.delete(records::META, BOOTSTRAP)?;
        tx.commit()?;
        Ok(())
    }

    pub(crate) fn insert_account(
        &self,
        tx: &mut dyn WriteTx,
        id: Option<AccountId>,
        admin: bool,
    ) -> Result<AccountId, KmsError> {
        let id = match id {
            Some(id) => {
                if tx.get(records::ACCOUNTS, id.as_str().as_bytes())?.is_some() {
                    return Err(KmsError::AlreadyExists(format!(
                        "Account {id} already exists"
                    )));
                }
                id
            }
            None => loop {
                let id = AccountId::random()?;
                if tx.get(records::ACCOUNTS, id.as_str().as_bytes())?.is_none() {
                    break id;
                }
            },
        };
        records::put(
            tx,
            records::ACCOUNTS,
            id.as_str().as_bytes(),
            &AccountRecord {
                v: 1,
                id: id.as_str().to_owned(),
                created: self.now_ms(),
                admin,
                suspended: false,
                service: false,
            },
        )?;
        Ok(id)
    }

    fn insert_access_key(
        &self,
        tx: &mut dyn WriteTx,
        account: &AccountId,
        user: Option<&str>,
        imported: Option<(String, SecretBytes)>,
    ) -> Result<NewAccessKey, KmsError> {
        if let Some(u) = user
            && tx
                .get(records::USERS, &records::user_key(account.as_str(), u))?
                .is_none()
        {
            return Err(KmsError::NotFound(format!(
                "User arn:aws:iam::{account}:user/{u} does not exist"
            )));
        }
        if tx
            .get(records::ACCOUNTS, account.as_str().as_bytes())?
            .is_none()
        {
            return Err(KmsError::NotFound(format!(
                "Account {account} does not exist"
            )));
        }
        let (id, secret) = match imported {
            Some((id, secret)) => {
                if tx.get(records::ACCESS_KEYS, id.as_bytes())?.is_some() {
                    return Err(KmsError::AlreadyExists(format!(
                        "Access key {id} already exists"
                    )));
                }
                (id, secret)
            }
            None => loop {
                let id = new_access_key_id()?;
                if tx.get(records::ACCESS_KEYS, id.as_bytes())?.is_none() {
                    break (id, new_secret()?);
                }
            },
        };
        let sealed_secret = self.root.seal(&secret_aad(&id), secret.expose())?;
        records::put(
            tx,
            records::ACCESS_KEYS,
            id.as_bytes(),
            &AccessKeyRecord {
                v: 1,
                id: id.clone(),
                account: account.as_str().to_owned(),
                user: user.map(str::to_owned),
                created: self.now_ms(),
                active: true,
                sealed_secret,
                last_used: None,
            },
        )?;
        // An imported id may have been looked up (and found unknown) before.
        self.forget_access_key(&id);
        Ok(NewAccessKey {
            account: account.clone(),
            access_key_id: id,
            secret_access_key: secret,
        })
    }

    fn in_transaction<T>(
        &self,
        call: &Call<'_>,
        f: impl FnOnce(&mut dyn WriteTx) -> Result<T, KmsError>,
    ) -> Result<T, KmsError> {
        let mut tx = self.store.write()?;
        let out = f(&mut *tx)?;
        self.commit(tx, call)?;
        Ok(out)
    }

    /// Admin: creates an account, with the given id or a random one.
    pub fn create_account(
        &self,
        call: &Call<'_>,
        id: Option<&str>,
        admin: bool,
    ) -> Result<AccountId, KmsError> {
        call.set_operation("admin:CreateAccount");
        Self::require_admin(call.caller)?;
        let id = id
            .map(|s| {
                AccountId::parse(s).ok_or_else(|| {
                    KmsError::Validation(format!("Account id '{s}' is not 12 digits"))
                })
            })
            .transpose()?;
        self.in_transaction(call, |tx| self.insert_account(tx, id, admin))
    }

    /// The admin account made first (the one the first start created,
    /// unless an operator has since removed it): what `admin` names where
    /// the server's flags take a principal (`--nbd-plaintext-principal
    /// admin`). `None` without an admin account.
    pub fn first_admin_account(&self) -> Result<Option<AccountId>, KmsError> {
        let tx = self.store.read()?;
        let mut first: Option<(i64, String)> = None;
        for (_, v) in tx.scan(records::ACCOUNTS, b"", None, usize::MAX)? {
            let a: AccountRecord = records::decode(records::ACCOUNTS, &v)?;
            if a.admin
                && !a.service
                && first
                    .as_ref()
                    .is_none_or(|f| (a.created, &a.id) < (f.0, &f.1))
            {
                first = Some((a.created, a.id));
            }
        }
        Ok(first.and_then(|(_, id)| AccountId::parse(&id)))
    }

    /// Admin: lists accounts as (id, admin, suspended, created).
    pub fn list_accounts(
        &self,
        caller: &Caller,
    ) -> Result<Vec<(String, bool, bool, f64)>, KmsError> {
        Self::require_admin(caller)?;
        let tx = self.store.read()?;
        let mut out = Vec::new();
        for (_, v) in tx.scan(records::ACCOUNTS, b"", None, usize::MAX)? {
            let a: AccountRecord = records::decode(records::ACCOUNTS, &v)?;
            out.push((
                a.id,
                a.admin,
                a.suspended,
                crate::clock::epoch_seconds(a.created),
            ));
        }
        Ok(out)
    }

    /// Creates an access key for `account` (its root) or for one of its
    /// users. Admins may do it for any account; an account's root for its own.
    pub fn create_access_key(
        &self,
        call: &Call<'_>,
        account: &str,
        user: Option<&str>,
    ) -> Result<NewAccessKey, KmsError> {
        call.set_operation("admin:CreateAccessKey");
        let account = Self::access_key_manager(call, account, user)?;
        self.in_transaction(call, |tx| self.insert_access_key(tx, &account, user, None))
    }

    /// Who may create an access key: an admin; or an account's root, for one
    /// of its users (not for the root itself, which would be a second root key).
    fn access_key_manager(
        call: &Call<'_>,
        account: &str,
        user: Option<&str>,
    ) -> Result<AccountId, KmsError> {
        if call.caller.admin {
            return AccountId::parse(account).ok_or_else(|| {
                KmsError::Validation(format!("Account id '{account}' is not 12 digits"))
            });
        }
        match user {
            Some(_) => Self::require_manager(call, account),
            None => Err(KmsError::AccessDenied(format!(
                "User: {} is not authorized to create root access keys; only an admin may",
                call.caller.principal_arn()
            ))),
        }
    }

    /// Admin: imports an existing access key pair into `account` (or one of
    /// its users), for users moving from another KMS.
    pub fn import_access_key(
        &self,
        call: &Call<'_>,
        account: &str,
        user: Option<&str>,
        access_key_id: &str,
        secret: SecretBytes,
    ) -> Result<NewAccessKey, KmsError> {
        call.set_operation("admin:ImportAccessKey");
        let account = Self::access_key_manager(call, account, user)?;
        if !valid_access_key_id(access_key_id) {
            return Err(KmsError::Validation(
                "An access key id is 16 to 128 characters of [A-Za-z0-9_]".into(),
            ));
        }
        if !valid_secret(secret.expose()) {
            return Err(KmsError::Validation(
                "A secret access key is 16 to 128 printable ASCII characters".into(),
            ));
        }
        self.in_transaction(call, |tx| {
            self.insert_access_key(tx, &account, user, Some((access_key_id.to_owned(), secret)))
        })
    }

    /// Lists the access keys of `account`, with their status and last use:
    /// all of them for an admin or the account's root, a user's own for a
    /// user of the account.
    pub fn list_access_keys(
        &self,
        call: &Call<'_>,
        account: &str,
    ) -> Result<Vec<AccessKeyInfo>, KmsError> {
        let account = Self::access_key_scope(call, account)?;
        let own = Self::caller_user(call);
        let tx = self.store.read()?;
        if tx
            .get(records::ACCOUNTS, account.as_str().as_bytes())?
            .is_none()
        {
            return Err(KmsError::NotFound(format!(
                "Account {account} does not exist"
            )));
        }
        let mut out = Vec::new();
        for (_, v) in tx.scan(records::ACCESS_KEYS, b"", None, usize::MAX)? {
            let k: AccessKeyRecord = records::decode(records::ACCESS_KEYS, &v)?;
            if k.account == account.as_str() && own.is_none_or(|u| k.user.as_deref() == Some(u)) {
                out.push(self.access_key_info(k));
            }
        }
        Ok(out)
    }

    /// A key as listings show it: the stored last use, or the one noted in
    /// memory since, whichever is later.
    fn access_key_info(&self, k: AccessKeyRecord) -> AccessKeyInfo {
        let last_used = match (k.last_used, self.key_use.noted(&k.id)) {
            (Some(stored), Some(noted)) if noted.time > stored.time => Some(noted),
            (Some(stored), _) => Some(stored),
            (None, noted) => noted,
        };
        AccessKeyInfo {
            access_key_id: k.id,
            account: k.account,
            user: k.user,
            created: crate::clock::epoch_seconds(k.created),
            active: k.active,
            status: if k.active { "Active" } else { "Inactive" },
            last_used: last_used.map(AccessKeyLastUsed::from),
        }
    }

    /// The user a caller is, or `None` for a root or an admin (who see and
    /// manage every key of the account).
    fn caller_user<'c>(call: &'c Call<'_>) -> Option<&'c str> {
        if call.caller.admin {
            return None;
        }
        match &call.caller.principal.kind {
            atrest_policy::PrincipalKind::User(u) => Some(u.as_str()),
            _ => None,
        }
    }

    /// Whose keys of `account` a caller may list and manage, before any key
    /// is read: an admin any account's, anyone else only their own
    /// account's, and never through a service. Which keys within the
    /// account is [`Self::require_key_owner`]'s answer.
    fn access_key_scope(call: &Call<'_>, account: &str) -> Result<AccountId, KmsError> {
        let id = AccountId::parse(account).ok_or_else(|| {
            KmsError::Validation(format!("Account id '{account}' is not 12 digits"))
        })?;
        let c = call.caller;
        if c.admin {
            return Ok(id);
        }
        let user_or_root = matches!(
            c.principal.kind,
            atrest_policy::PrincipalKind::Root | atrest_policy::PrincipalKind::User(_)
        );
        if c.account == id && c.via_service.is_none() && user_or_root {
            Ok(id)
        } else {
            Err(KmsError::AccessDenied(format!(
                "User: {} is not authorized to manage the access keys of account {account}; only an admin, that account's root, or its users for their own keys may",
                c.principal_arn()
            )))
        }
    }

    /// A user may manage only its own keys (as in AWS IAM, without a
    /// policy); an admin or the account's root any of the account's.
    fn require_key_owner(call: &Call<'_>, key: &AccessKeyRecord) -> Result<(), KmsError> {
        match Self::caller_user(call) {
            Some(u) if key.user.as_deref() != Some(u) => Err(KmsError::AccessDenied(format!(
                "User: {} is not authorized to manage access key {}, which is not its own",
                call.caller.principal_arn(),
                key.id
            ))),
            _ => Ok(()),
        }
    }

    /// Deactivates an access key: from the commit on, it signs nothing and
    /// its NBD pre-shared key opens no connection (AWS IAM's
    /// `UpdateAccessKey ... Inactive`).
    pub fn deactivate_access_key(
        &self,
        call: &Call<'_>,
        account: &str,
        access_key_id: &str,
    ) -> Result<AccessKeyInfo, KmsError> {
        call.set_operation("admin:DeactivateAccessKey");
        let rec = self.change_access_key(call, account, access_key_id, KeyChange::Deactivate)?;
        Ok(self.access_key_info(rec))
    }

    /// Activates an access key again.
    pub fn activate_access_key(
        &self,
        call: &Call<'_>,
        account: &str,
        access_key_id: &str,
    ) -> Result<AccessKeyInfo, KmsError> {
        call.set_operation("admin:ActivateAccessKey");
        let rec = self.change_access_key(call, account, access_key_id, KeyChange::Activate)?;
        Ok(self.access_key_info(rec))
    }

    /// Deletes an access key: its sealed secret is gone from the store, and
    /// requests signed with it are answered as for an unknown key.
    pub fn delete_access_key(
        &self,
        call: &Call<'_>,
        account: &str,
        access_key_id: &str,
    ) -> Result<(), KmsError> {
        call.set_operation("admin:DeleteAccessKey");
        self.change_access_key(call, account, access_key_id, KeyChange::Delete)?;
        Ok(())
    }

    /// Applies `change` in one audited transaction; returns the key as it
    /// is after it (for a deletion, as it was).
    fn change_access_key(
        &self,
        call: &Call<'_>,
        account: &str,
        access_key_id: &str,
        change: KeyChange,
    ) -> Result<AccessKeyRecord, KmsError> {
        let account = Self::access_key_scope(call, account)?;
        let result = self.in_transaction(call, |tx| {
            let not_found = || {
                KmsError::NotFound(format!(
                    "The Access Key with id {access_key_id} cannot be found in account {account}."
                ))
            };
            let mut rec: AccessKeyRecord =
                records::get(&*tx, records::ACCESS_KEYS, access_key_id.as_bytes())?
                    .filter(|r: &AccessKeyRecord| r.account == account.as_str())
                    .ok_or_else(not_found)?;
            Self::require_key_owner(call, &rec)?;
            if rec.active && change != KeyChange::Activate && rec.user.is_none() {
                Self::require_other_admin_key(tx, &rec, change)?;
            }
            match change {
                KeyChange::Deactivate | KeyChange::Activate => {
                    let active = change == KeyChange::Activate;
                    if rec.active != active {
                        rec.active = active;
                        records::put(tx, records::ACCESS_KEYS, access_key_id.as_bytes(), &rec)?;
                    }
                }
                KeyChange::Delete => {
                    tx.delete(records::ACCESS_KEYS, access_key_id.as_bytes())?;
                }
            }
            Ok(rec)
        })?;
        // Only after the commit: a lookup from now on reads the new state.
        self.forget_access_key(access_key_id);
        if change == KeyChange::Delete {
            self.key_use.forget(access_key_id);
        }
        Ok(result)
    }

    /// Refuses to take away the last active root key of an admin account:
    /// that would lock its operator out of the admin API for good.
    fn require_other_admin_key(
        tx: &dyn WriteTx,
        key: &AccessKeyRecord,
        change: KeyChange,
    ) -> Result<(), KmsError> {
        let admin = records::get::<AccountRecord>(tx, records::ACCOUNTS, key.account.as_bytes())?
            .is_some_and(|a| a.admin);
        if !admin {
            return Ok(());
        }
        for (_, v) in tx.scan(records::ACCESS_KEYS, b"", None, usize::MAX)? {
            let k: AccessKeyRecord = records::decode(records::ACCESS_KEYS, &v)?;
            if k.account == key.account && k.user.is_none() && k.active && k.id != key.id {
                return Ok(());
            }
        }
        let what = if change == KeyChange::Delete {
            "deleted"
        } else {
            "deactivated"
        };
        Err(KmsError::Conflict(format!(
            "Access key {} is the last active access key of admin account {}'s root and cannot be {what}: that would lock the operator out. Create another root access key for it first.",
            key.id, key.account
        )))
    }

    /// Drops the cached state of `access_key_id`, so that the next lookup
    /// reads the store. Called after every committed change of the key.
    pub(crate) fn forget_access_key(&self, access_key_id: &str) {
        let mut cached = write_lock(&self.secrets);
        cached.remove(access_key_id);
        // Under the lock, so that a lookup that read the store before the
        // change sees the new generation when it comes to insert.
        self.secrets_generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Looks up an access key for authentication. `None` if unknown.
    pub fn access_key(
        &self,
        access_key_id: &str,
    ) -> Result<Option<Arc<CachedAccessKey>>, KmsError> {
        // Cached only while the store is confirmed current: another node
        // may have deactivated the key (see `follow_store`).
        let current = self.store.is_current();
        if current && let Some(k) = read_lock(&self.secrets).get(access_key_id) {
            return Ok(Some(Arc::clone(k)));
        }
        // Read before the store, so a change committed after this point
        // keeps what is read below out of the cache.
        let generation = self.secrets_generation.load(Ordering::Acquire);
        let mut tx = self.store.read()?;
        let mut found: Option<AccessKeyRecord> =
            records::get(&*tx, records::ACCESS_KEYS, access_key_id.as_bytes())?;
        if found.is_none() {
            // Perhaps made on another node a moment ago: catch up once.
            drop(tx);
            self.store.refresh()?;
            tx = self.store.read()?;
            found = records::get(&*tx, records::ACCESS_KEYS, access_key_id.as_bytes())?;
        }
        let Some(rec) = found else {
            return Ok(None);
        };
        let account: AccountRecord = records::get(&*tx, records::ACCOUNTS, rec.account.as_bytes())?
            .ok_or_else(|| {
                KmsError::Internal(format!("access key {access_key_id} has no account"))
            })?;
        let secret = self
            .root
            .open(&secret_aad(&rec.id), &rec.sealed_secret)
            .map_err(|_| {
                KmsError::Internal(format!(
                    "secret of access key {access_key_id} does not unseal"
                ))
            })?;
        let account_id = AccountId::parse(&account.id)
            .ok_or_else(|| KmsError::Internal(format!("corrupt account id {}", account.id)))?;
        let cached = Arc::new(CachedAccessKey {
            account: account_id,
            user: rec.user.clone(),
            admin: account.admin,
            active: rec.active,
            secret,
        });
        let mut secrets = write_lock(&self.secrets);
        if current && self.secrets_generation.load(Ordering::Acquire) == generation {
            secrets.insert(access_key_id.to_owned(), Arc::clone(&cached));
        }
        Ok(Some(cached))
    }
}
