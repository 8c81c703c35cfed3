//! Who is calling and what a call did: the caller, the request's metadata,
//! and the facts the audit record needs.

use std::cell::{Cell, RefCell};

use atrest_policy::{Principal, PrincipalKind};
use time::OffsetDateTime;

use crate::names::AccountId;

/// Who is calling, established by authentication (or, for in-process
/// services, by the service itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The caller's account (for a service principal, the service account).
    pub account: AccountId,
    /// The region the request is for.
    pub region: String,
    /// Whether the account may use the admin API.
    pub admin: bool,
    /// The principal: the account's root, a user, or a service.
    pub principal: Principal,
    /// Set when an atrest service makes the call on the principal's behalf
    /// (`kms:ViaService`, for example `disk.us-east-1.atrest`).
    pub via_service: Option<String>,
}

impl Caller {
    /// The root principal of `account`.
    #[must_use]
    pub fn root(account: AccountId, region: &str) -> Self {
        Self {
            principal: Principal {
                account: account.as_str().to_owned(),
                kind: PrincipalKind::Root,
            },
            account,
            region: region.to_owned(),
            admin: false,
            via_service: None,
        }
    }

    /// A user of `account`.
    #[must_use]
    pub fn user(account: AccountId, region: &str, name: &str) -> Self {
        let mut c = Self::root(account, region);
        c.principal.kind = PrincipalKind::User(name.to_owned());
        c
    }

    /// The same caller, acting through an atrest service.
    #[must_use]
    pub fn via(mut self, service: &str) -> Self {
        self.via_service = Some(format!("{service}.{}.atrest", self.region));
        self
    }

    /// The caller's principal ARN (a service principal's name).
    #[must_use]
    pub fn principal_arn(&self) -> String {
        self.principal.arn()
    }

    /// Whether the caller is its account's root.
    #[must_use]
    pub fn is_root(&self) -> bool {
        self.principal.kind == PrincipalKind::Root
    }
}

/// Facts about the request that did not come from the caller's signature.
#[derive(Debug, Clone)]
pub struct RequestMeta {
    /// The id returned to the client.
    pub request_id: String,
    /// The client's address, or `in-process`.
    pub source: String,
    /// The access key that signed the request.
    pub access_key_id: Option<String>,
    /// When the request arrived.
    pub time: OffsetDateTime,
}

impl RequestMeta {
    /// Metadata for a call made inside the process (services, tests).
    #[must_use]
    pub fn in_process() -> Self {
        Self {
            request_id: new_request_id(),
            source: "in-process".into(),
            access_key_id: None,
            time: OffsetDateTime::now_utc(),
        }
    }
}

/// A random request id from AWS-LC's userspace DRBG.
#[must_use]
pub fn new_request_id() -> String {
    let bytes = atrest_crypto::rand::array::<16>().unwrap_or_default();
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// What the audit record of a call needs beyond the caller: filled in by the
/// operation as it runs.
#[derive(Debug, Clone, Default)]
pub struct AuditFacts {
    /// The key acted on.
    pub key_arn: Option<String>,
    /// The names of the encryption-context keys.
    pub context_keys: Vec<String>,
    /// The grant that allowed the call.
    pub grant_id: Option<String>,
    /// The account the call is metered to, when it is not the caller's
    /// (a service acting for a customer).
    pub billed_account: Option<String>,
}

/// One call into the key service.
pub struct Call<'a> {
    /// Who.
    pub caller: &'a Caller,
    /// Request metadata.
    pub meta: &'a RequestMeta,
    pub(crate) facts: RefCell<AuditFacts>,
    /// The operation's name, for the audit record.
    pub(crate) operation: Cell<&'static str>,
    /// Set once the call's success record has been made durable inside the
    /// operation (writes record before they commit).
    pub(crate) recorded: Cell<bool>,
}

impl<'a> Call<'a> {
    /// A call by `caller`.
    #[must_use]
    pub fn new(caller: &'a Caller, meta: &'a RequestMeta) -> Self {
        Self {
            caller,
            meta,
            facts: RefCell::new(AuditFacts::default()),
            operation: Cell::new(""),
            recorded: Cell::new(false),
        }
    }

    /// The facts gathered so far.
    #[must_use]
    pub fn facts(&self) -> AuditFacts {
        self.facts.borrow().clone()
    }

    /// Names the operation (for calls that do not go through
    /// [`crate::KeyService::call`]).
    pub fn set_operation(&self, name: &'static str) {
        self.operation.set(name);
    }

    /// The operation's name.
    #[must_use]
    pub fn operation(&self) -> &'static str {
        self.operation.get()
    }

    /// Whether the operation already recorded its success durably.
    #[must_use]
    pub fn recorded(&self) -> bool {
        self.recorded.get()
    }

    /// Names the key the call acted on (for its audit record).
    pub fn set_key(&self, arn: String) {
        self.facts.borrow_mut().key_arn = Some(arn);
    }

    pub(crate) fn set_context_keys(&self, keys: Vec<String>) {
        self.facts.borrow_mut().context_keys = keys;
    }

    pub(crate) fn set_grant(&self, grant_id: String) {
        self.facts.borrow_mut().grant_id = Some(grant_id);
    }
}
