//! atrest services (the disk service, the database service) acting on
//! customers' keys, in process, through the same authorization as external
//! callers (K2, K7).
//!
//! A service has a principal, `<service>.atrest`, in atrest's own *service
//! account*. It acts in two ways:
//! * **for a customer**: as the customer's principal, with `kms:ViaService`
//!   set to `<service>.<region>.atrest`. This is how it creates a grant for
//!   itself on the customer's key: the customer must be allowed
//!   `kms:CreateGrant` (through that service), which is the PassRole of the
//!   mission;
//! * **as itself**: as the service principal, allowed by the grants the
//!   customer let it create, or by a key policy that names it.
//!
//! Service keys: `alias/atrest/<service>` in the customer's account and
//! region, created the first time the service needs one, KeyManager `AWS`,
//! with a policy like AWS managed keys': principals of the account may use it
//! through the service, and read it directly.

use std::collections::BTreeMap;

use atrest_policy::{Principal, PrincipalKind};
use serde_json::Value;
use zeroize::Zeroizing;

use super::{Call, Caller, KeyService, RequestMeta};
use crate::KmsError;
use crate::Operation;
use crate::names::{AccountId, alias_arn};
use crate::records::{self, AccountRecord, AliasRecord, KeyManager, KeyOrigin, VersionOrigin};

/// `kms.meta` entry naming the service account.
const SERVICE_ACCOUNT: &[u8] = b"service_account";

/// Whether `s` is a usable service name (`disk`, `rds`, ...).
fn valid_service(s: &str) -> bool {
    (1..=32).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// The services a service key is usable through: its own, and those that
/// store its service's data (a database's data is on a disk, so the
/// database service key is usable through the disk service too).
fn service_key_via(service: &str, region: &str) -> String {
    let through: &[&str] = match service {
        "db" => &["db", "disk"],
        _ => &[service],
    };
    let names: Vec<String> = through
        .iter()
        .map(|s| format!("\"{s}.{region}.atrest\""))
        .collect();
    format!("[{}]", names.join(","))
}

/// The key policy of a service key.
fn service_key_policy(account: &str, service: &str, region: &str) -> String {
    let via = service_key_via(service, region);
    format!(
        r#"{{"Version":"2012-10-17","Id":"atrest-service-key-{service}","Statement":[{{"Sid":"Allow access through {service} for all principals in the account that are authorized to use {service}","Effect":"Allow","Principal":{{"AWS":"*"}},"Action":["kms:Encrypt","kms:Decrypt","kms:ReEncrypt*","kms:GenerateDataKey*","kms:CreateGrant","kms:DescribeKey"],"Resource":"*","Condition":{{"StringEquals":{{"kms:CallerAccount":"{account}","kms:ViaService":{via}}}}}}},{{"Sid":"Allow direct access to key metadata to the account","Effect":"Allow","Principal":{{"AWS":"arn:aws:iam::{account}:root"}},"Action":["kms:Describe*","kms:Get*","kms:List*","kms:RevokeGrant","kms:EnableKeyRotation","kms:DisableKeyRotation"],"Resource":"*"}}]}}"#
    )
}

/// One service acting in one region.
pub struct ServiceSession<'a> {
    kms: &'a KeyService,
    service: String,
    caller: Caller,
}

impl KeyService {
    /// The account atrest's service principals live in, created on first use.
    pub fn service_account(&self) -> Result<AccountId, KmsError> {
        {
            let tx = self.store.read()?;
            if let Some(id) = tx.get(records::META, SERVICE_ACCOUNT)? {
                return AccountId::parse(&String::from_utf8_lossy(&id))
                    .ok_or_else(|| KmsError::Internal("corrupt service account id".into()));
            }
        }
        let mut tx = self.store.write()?;
        if let Some(id) = tx.get(records::META, SERVICE_ACCOUNT)? {
            return AccountId::parse(&String::from_utf8_lossy(&id))
                .ok_or_else(|| KmsError::Internal("corrupt service account id".into()));
        }
        let id = self.insert_account(&mut *tx, None, false)?;
        let mut rec: AccountRecord = records::get(&*tx, records::ACCOUNTS, id.as_str().as_bytes())?
            .ok_or_else(|| KmsError::Internal("service account vanished".into()))?;
        rec.service = true;
        records::put(&mut *tx, records::ACCOUNTS, id.as_str().as_bytes(), &rec)?;
        tx.put(records::META, SERVICE_ACCOUNT, id.as_str().as_bytes())?;
        tx.commit()?;
        Ok(id)
    }

    /// A session for `service` (such as `disk`) in `region`.
    pub fn service_session(
        &self,
        service: &str,
        region: &str,
    ) -> Result<ServiceSession<'_>, KmsError> {
        if !valid_service(service) {
            return Err(KmsError::Validation(format!(
                "'{service}' is not a service name"
            )));
        }
        if !self.regions.iter().any(|r| r == region) {
            return Err(KmsError::Validation(format!(
                "Region '{region}' has no key service here; this server serves: {}",
                self.regions.join(", ")
            )));
        }
        let account = self.service_account()?;
        let caller = Caller {
            principal: Principal {
                account: account.as_str().to_owned(),
                kind: PrincipalKind::Service(format!("{service}.atrest")),
            },
            account,
            region: region.to_owned(),
            admin: false,
            via_service: Some(format!("{service}.{region}.atrest")),
        };
        Ok(ServiceSession {
            kms: self,
            service: service.to_owned(),
            caller,
        })
    }

    /// Runs an operation in process for `call`, and records it in the audit
    /// trail like an external request (fail closed: if the record cannot be
    /// written, the result is not returned).
    pub fn call_in_process(
        &self,
        call: &Call<'_>,
        op: Operation,
        body: &Value,
    ) -> Result<Value, KmsError> {
        let out = self.call_in_process_raw(call, op, body)?;
        serde_json::from_slice(&out)
            .map_err(|e| KmsError::Internal(format!("decoding response: {e}")))
    }

    /// [`KeyService::call_in_process`], answering the response's JSON bytes
    /// in a zeroizing buffer (for responses that hold plaintext).
    pub fn call_in_process_raw(
        &self,
        call: &Call<'_>,
        op: Operation,
        body: &Value,
    ) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let result = self.call(call, op, body.to_string().as_bytes());
        if !call.recorded()
            && let Some(sink) = self.audit.get()
        {
            let outcome = match &result {
                Ok(_) => "Success",
                Err(e) => e.aws_type(),
            };
            sink.record_blocking(self.audit_entry(call, outcome))
                .map_err(|e| {
                    KmsError::Internal(format!("the audit trail cannot record the request ({e})"))
                })?;
        }
        result
    }
}

impl ServiceSession<'_> {
    /// The service principal's name, such as `disk.atrest`.
    #[must_use]
    pub fn principal(&self) -> String {
        self.caller.principal_arn()
    }

    /// The service principal as a caller.
    #[must_use]
    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    /// `kms:ViaService` for this service and region.
    #[must_use]
    pub fn via_service(&self) -> String {
        format!("{}.{}.atrest", self.service, self.caller.region)
    }

    /// Calls `op` as the service principal.
    pub fn call(&self, op: Operation, body: &Value) -> Result<Value, KmsError> {
        let meta = RequestMeta::in_process();
        let call = Call::new(&self.caller, &meta);
        self.kms.call_in_process(&call, op, body)
    }

    /// Calls `op` as the service principal; the response's JSON bytes, in a
    /// zeroizing buffer (for Decrypt and other answers with plaintext).
    pub fn call_raw(&self, op: Operation, body: &Value) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let meta = RequestMeta::in_process();
        let call = Call::new(&self.caller, &meta);
        self.kms.call_in_process_raw(&call, op, body)
    }

    /// Calls `op` as `customer` through this service (`kms:ViaService` set).
    pub fn call_for(
        &self,
        customer: &Caller,
        op: Operation,
        body: &Value,
    ) -> Result<Value, KmsError> {
        let mut c = customer.clone();
        c.via_service = Some(self.via_service());
        let meta = RequestMeta::in_process();
        let call = Call::new(&c, &meta);
        self.kms.call_in_process(&call, op, body)
    }

    /// Whether `customer` may use `key_id` through this service for each of
    /// `actions` (`Decrypt`, `CreateGrant`, ...), by the key policy, its
    /// identity policies and its grants, evaluated as for a request it made
    /// through the service (`kms:ViaService` set), without doing anything.
    /// The service itself works under its own grant; this is what makes the
    /// customer's own rights to the key count too, as EBS asks for
    /// `kms:CreateGrant` and `kms:Decrypt` of the person attaching a volume.
    /// Refuses with `AccessDeniedException` naming the principal, the action
    /// and the key.
    pub fn check_customer(
        &self,
        customer: &Caller,
        key_id: &str,
        actions: &[&str],
    ) -> Result<(), KmsError> {
        let mut c = customer.clone();
        c.via_service = Some(self.via_service());
        let meta = RequestMeta::in_process();
        let call = Call::new(&c, &meta);
        self.kms.authorize_use(&call, key_id, actions)
    }

    /// Lets this service use `key_id` for `customer`: creates, as the
    /// customer through the service, a grant to the service principal for
    /// `operations`, constrained to requests whose encryption context
    /// contains `context`. Fails (AccessDeniedException) unless the customer
    /// may create grants on the key. Returns (grant id, grant token).
    pub fn grant_for(
        &self,
        customer: &Caller,
        key_id: &str,
        operations: &[&str],
        context: &BTreeMap<String, String>,
    ) -> Result<(String, String), KmsError> {
        let body = serde_json::json!({
            "KeyId": key_id,
            "GranteePrincipal": self.principal(),
            "RetiringPrincipal": self.principal(),
            "Operations": operations,
            "Constraints": {"EncryptionContextSubset": context},
        });
        let out = self.call_for(customer, Operation::CreateGrant, &body)?;
        let field = |n: &str| {
            out.get(n)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| KmsError::Internal(format!("CreateGrant response lacks {n}")))
        };
        Ok((field("GrantId")?, field("GrantToken")?))
    }

    /// The service key of `account` in this session's region
    /// (`alias/atrest/<service>`), created on first use. Returns its ARN.
    pub fn service_key(&self, account: &AccountId) -> Result<String, KmsError> {
        let kms = self.kms;
        let region = self.caller.region.clone();
        let index = records::service_key_key(&region, account.as_str(), &self.service);
        {
            let tx = kms.store.read()?;
            if let Some(id) = tx.get(records::SERVICE_KEYS, &index)? {
                let id = uuid::Uuid::from_slice(&id)
                    .map_err(|_| KmsError::Internal("corrupt service key index".into()))?;
                return Ok(crate::names::key_arn(&region, account.as_str(), &id));
            }
        }
        let meta = RequestMeta::in_process();
        let call = Call::new(&self.caller, &meta);
        call.set_operation("CreateKey");
        let mut tx = kms.store.write()?;
        if let Some(id) = tx.get(records::SERVICE_KEYS, &index)? {
            let id = uuid::Uuid::from_slice(&id)
                .map_err(|_| KmsError::Internal("corrupt service key index".into()))?;
            return Ok(crate::names::key_arn(&region, account.as_str(), &id));
        }
        if tx
            .get(records::ACCOUNTS, account.as_str().as_bytes())?
            .is_none()
        {
            return Err(KmsError::NotFound(format!(
                "Account {account} does not exist"
            )));
        }
        kms.require_not_suspended(&*tx, account.as_str())?;
        let alias = format!("alias/atrest/{}", self.service);
        let mut key = kms.new_key_record(
            account.as_str(),
            &region,
            format!(
                "Default key that protects my {} resources when no other key is defined",
                self.service
            ),
            KeyOrigin::AwsKms,
            Vec::new(),
        );
        key.manager = KeyManager::Service;
        key.service = Some(self.service.clone());
        key.current_material_id = kms.add_version(
            &mut *tx,
            &key.id,
            key.spec,
            1,
            VersionOrigin::Initial,
            key.created,
        )?;
        key.current_version = 1;
        let arn = KeyService::arn(&key);
        call.set_key(arn.clone());
        call.facts.borrow_mut().billed_account = Some(account.as_str().to_owned());
        KeyService::insert_key(
            &mut *tx,
            &key,
            &service_key_policy(account.as_str(), &self.service, &region),
        )?;
        records::put(
            &mut *tx,
            records::ALIASES,
            &records::alias_key(&region, account.as_str(), &alias),
            &AliasRecord {
                v: 1,
                target: key.id,
                created: key.created,
                updated: key.created,
            },
        )?;
        tx.put(records::SERVICE_KEYS, &index, key.id.as_bytes())?;
        kms.commit(tx, &call)?;
        tracing::info!(key = %arn, alias = %alias_arn(&region, account.as_str(), &alias), "created service key");
        Ok(arn)
    }
}

/// Why a key a service holds a grant on cannot be used now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyUnusable {
    /// The key is disabled.
    Disabled,
    /// The key is scheduled for deletion.
    PendingDeletion,
    /// The key waits for imported material (or its material expired).
    PendingImport,
    /// The key no longer exists.
    Deleted,
    /// The grant that let the service use the key was revoked or retired.
    GrantRevoked,
    /// The key is held in another KMS, which refused it (disabled, revoked,
    /// access removed, deleted there): the provider's words.
    ExternalKeyRefused(String),
}

impl KeyUnusable {
    /// The reason in words, for error messages (without the provider's
    /// words, which [`std::fmt::Display`] adds).
    #[must_use]
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Disabled => "the key is disabled",
            Self::PendingDeletion => "the key is pending deletion",
            Self::PendingImport => "the key has no key material (pending import)",
            Self::Deleted => "the key was deleted",
            Self::GrantRevoked => "the grant that let the service use the key was revoked",
            Self::ExternalKeyRefused(_) => "the key's provider (custom key store) refused it",
        }
    }
}

impl std::fmt::Display for KeyUnusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ExternalKeyRefused(why) => write!(f, "{} ({why})", self.as_str()),
            other => f.write_str(other.as_str()),
        }
    }
}

impl ServiceSession<'_> {
    /// Why `key_arn` cannot be used by this service through `grant_id` now,
    /// or `None` if its state and the grant allow use. A diagnosis for the
    /// service's own records, read without authorization and without
    /// touching key material; the operations themselves still go through
    /// the full evaluation path.
    pub fn key_unusable(
        &self,
        key_arn: &str,
        grant_id: Option<&str>,
    ) -> Result<Option<KeyUnusable>, KmsError> {
        use crate::names::KeyRef;
        let tx = self.kms.store.read()?;
        let key: Option<records::KeyRecord> = match KeyRef::parse(key_arn)? {
            KeyRef::KeyArn { id, .. } | KeyRef::Id(id) => {
                records::get(&*tx, records::KEYS, id.as_bytes())?
            }
            // A multi-Region key: its record in the ARN's region.
            KeyRef::MultiRegionArn { region, id, .. } => {
                self.kms.multi_region_record(&*tx, &id, &region)?
            }
            KeyRef::MultiRegionId(id) => {
                self.kms
                    .multi_region_record(&*tx, &id, &self.caller.region)?
            }
            _ => {
                return Err(KmsError::Validation(format!(
                    "'{key_arn}' is not a key ARN"
                )));
            }
        };
        let Some(key) = key else {
            return Ok(Some(KeyUnusable::Deleted));
        };
        let state = match key.state {
            records::KeyState::Enabled => None,
            records::KeyState::Disabled => Some(KeyUnusable::Disabled),
            records::KeyState::PendingDeletion | records::KeyState::PendingReplicaDeletion => {
                Some(KeyUnusable::PendingDeletion)
            }
            records::KeyState::PendingImport => Some(KeyUnusable::PendingImport),
        };
        if state.is_some() {
            return Ok(state);
        }
        if let Some(why) = self.kms.external_refusal(&key) {
            return Ok(Some(KeyUnusable::ExternalKeyRefused(why)));
        }
        if let Some(g) = grant_id
            && tx
                .get(records::GRANTS, &records::grant_key(&key.id, g))?
                .is_none()
        {
            return Ok(Some(KeyUnusable::GrantRevoked));
        }
        Ok(None)
    }
}
