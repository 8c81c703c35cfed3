//! The life cycle of access keys (deactivate, activate, delete): who may
//! change it, that every change reaches the lookup authentication uses at
//! once, that the operator cannot be locked out, and that last use costs no
//! store write per request.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use atrest_crypto::Aes256Key;
use atrest_kms::clock::ManualClock;
use atrest_kms::names::AccountId;
use atrest_kms::root::RootKey;
use atrest_kms::{AccessKeyUse, Caller, KeyService, KmsError};
use atrest_store::{MemoryStore, ReadTx, Store, StoreError, WriteTx};
use time::{Duration, OffsetDateTime};

use super::with_call;

/// A store that counts the write transactions begun on it.
#[derive(Default)]
struct CountingStore {
    inner: MemoryStore,
    writes: AtomicUsize,
}

impl Store for CountingStore {
    fn read(&self) -> Result<Box<dyn ReadTx + '_>, StoreError> {
        self.inner.read()
    }

    fn write(&self) -> Result<Box<dyn WriteTx + '_>, StoreError> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.write()
    }

    fn tables(&self) -> Result<Vec<atrest_store::Table>, StoreError> {
        self.inner.tables()
    }
}

struct Fixture {
    kms: KeyService,
    store: Arc<CountingStore>,
    clock: Arc<ManualClock>,
    admin: Caller,
    admin_key: String,
    /// A customer account, with users alice and bob.
    acct: AccountId,
    root: Caller,
    alice: Caller,
    bob: Caller,
}

const ACCT: &str = "123456789012";
const OTHER: &str = "444455556666";

fn fixture() -> Fixture {
    let store = Arc::new(CountingStore::default());
    let clock = Arc::new(ManualClock::new(
        OffsetDateTime::from_unix_timestamp(1_750_000_000).unwrap(),
    ));
    let kms = KeyService::open(
        store.clone(),
        RootKey::from_key(Aes256Key::generate().unwrap()),
        vec!["us-east-1".into(), "eu-west-1".into()],
        clock.clone(),
    )
    .unwrap();
    let boot = kms.bootstrap_admin().unwrap().unwrap();
    kms.finish_bootstrap().unwrap();
    let mut admin = Caller::root(boot.key.account.clone(), "us-east-1");
    admin.admin = true;
    let acct = with_call(&admin, |c| kms.create_account(c, Some(ACCT), false)).unwrap();
    with_call(&admin, |c| kms.create_account(c, Some(OTHER), false)).unwrap();
    let root = Caller::root(acct.clone(), "us-east-1");
    for u in ["alice", "bob"] {
        with_call(&root, |c| kms.create_user(c, ACCT, u)).unwrap();
    }
    Fixture {
        alice: Caller::user(acct.clone(), "us-east-1", "alice"),
        bob: Caller::user(acct.clone(), "us-east-1", "bob"),
        admin_key: boot.key.access_key_id,
        kms,
        store,
        clock,
        admin,
        acct,
        root,
    }
}

impl Fixture {
    fn key_for(&self, user: Option<&str>) -> String {
        with_call(&self.admin, |c| {
            self.kms.create_access_key(c, self.acct.as_str(), user)
        })
        .unwrap()
        .access_key_id
    }

    /// Whether authentication would accept `id` now (what the server's
    /// SigV4 check and NBD's PSK lookup ask).
    fn usable(&self, id: &str) -> bool {
        self.kms.access_key(id).unwrap().is_some_and(|k| k.active)
    }

    fn deactivate(&self, who: &Caller, account: &str, id: &str) -> Result<(), KmsError> {
        with_call(who, |c| self.kms.deactivate_access_key(c, account, id)).map(|_| ())
    }

    fn activate(&self, who: &Caller, account: &str, id: &str) -> Result<(), KmsError> {
        with_call(who, |c| self.kms.activate_access_key(c, account, id)).map(|_| ())
    }

    fn delete(&self, who: &Caller, account: &str, id: &str) -> Result<(), KmsError> {
        with_call(who, |c| self.kms.delete_access_key(c, account, id))
    }
}

fn aws_type(r: Result<(), KmsError>) -> &'static str {
    r.unwrap_err().aws_type()
}

#[test]
fn deactivate_activate_delete_reach_the_lookup_at_once() {
    let f = fixture();
    let id = f.key_for(None);
    // Looked up (and cached) before the change, as a busy key is.
    assert!(f.usable(&id));

    let info = with_call(&f.admin, |c| f.kms.deactivate_access_key(c, ACCT, &id)).unwrap();
    assert!(!info.active);
    assert_eq!(info.status, "Inactive");
    let k = f.kms.access_key(&id).unwrap().unwrap();
    assert!(!k.active, "the cached entry was dropped at the change");
    // Deactivating again is no error (AWS's UpdateAccessKey is idempotent).
    f.deactivate(&f.admin, ACCT, &id).unwrap();

    f.activate(&f.admin, ACCT, &id).unwrap();
    assert!(f.usable(&id));

    f.delete(&f.admin, ACCT, &id).unwrap();
    assert!(f.kms.access_key(&id).unwrap().is_none(), "deleted: unknown");
    let keys = with_call(&f.admin, |c| f.kms.list_access_keys(c, ACCT)).unwrap();
    assert!(keys.iter().all(|k| k.access_key_id != id));
    assert_eq!(aws_type(f.delete(&f.admin, ACCT, &id)), "NotFoundException");
    assert_eq!(
        aws_type(f.activate(&f.admin, ACCT, &id)),
        "NotFoundException"
    );
}

#[test]
fn a_key_is_changed_only_through_its_own_account() {
    let f = fixture();
    let id = f.key_for(None);
    // Named under another account, even by an admin: not found there.
    assert_eq!(
        aws_type(f.deactivate(&f.admin, OTHER, &id)),
        "NotFoundException"
    );
    assert!(f.usable(&id));
}

#[test]
fn users_manage_their_own_keys_only() {
    let f = fixture();
    let alices = f.key_for(Some("alice"));
    let bobs = f.key_for(Some("bob"));
    let roots = f.key_for(None);

    f.deactivate(&f.alice, ACCT, &alices).unwrap();
    assert!(!f.usable(&alices));
    f.activate(&f.alice, ACCT, &alices).unwrap();
    assert!(f.usable(&alices));

    for id in [&bobs, &roots] {
        assert_eq!(
            aws_type(f.deactivate(&f.alice, ACCT, id)),
            "AccessDeniedException"
        );
        assert_eq!(
            aws_type(f.delete(&f.alice, ACCT, id)),
            "AccessDeniedException"
        );
        assert!(f.usable(id));
    }
    // A user lists its own keys only.
    let listed = with_call(&f.alice, |c| f.kms.list_access_keys(c, ACCT)).unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|k| k.access_key_id.as_str())
            .collect::<Vec<_>>(),
        [alices.as_str()]
    );
    // The account's root manages every key of its account.
    f.deactivate(&f.root, ACCT, &bobs).unwrap();
    assert!(!f.usable(&bobs));
    f.delete(&f.root, ACCT, &bobs).unwrap();
    assert!(f.kms.access_key(&bobs).unwrap().is_none());
    // A user deletes its own.
    f.delete(&f.alice, ACCT, &alices).unwrap();
    assert!(f.kms.access_key(&alices).unwrap().is_none());
    assert_eq!(
        aws_type(f.delete(&f.bob, ACCT, &roots)),
        "AccessDeniedException"
    );
}

#[test]
fn one_accounts_root_cannot_touch_anothers_keys() {
    let f = fixture();
    let id = f.key_for(None);
    let other_root = Caller::root(AccountId::parse(OTHER).unwrap(), "us-east-1");
    for r in [
        f.deactivate(&other_root, ACCT, &id),
        f.activate(&other_root, ACCT, &id),
        f.delete(&other_root, ACCT, &id),
    ] {
        assert_eq!(aws_type(r), "AccessDeniedException");
    }
    let list = with_call(&other_root, |c| f.kms.list_access_keys(c, ACCT));
    assert_eq!(list.unwrap_err().aws_type(), "AccessDeniedException");
    // Nor through its own account's name.
    assert_eq!(
        aws_type(f.delete(&other_root, OTHER, &id)),
        "NotFoundException"
    );
    // Nor does an admin account's user (admin rights are its root's).
    let admin_user_account = f.admin.account.clone();
    with_call(&f.admin, |c| {
        f.kms.create_user(c, admin_user_account.as_str(), "ops")
    })
    .unwrap();
    let ops = Caller::user(admin_user_account, "us-east-1", "ops");
    assert_eq!(
        aws_type(f.deactivate(&ops, ACCT, &id)),
        "AccessDeniedException"
    );
    // A service acting for the root may not either.
    let via = f.root.clone().via("disk");
    assert_eq!(
        aws_type(f.deactivate(&via, ACCT, &id)),
        "AccessDeniedException"
    );
    assert!(f.usable(&id));
}

#[test]
fn the_last_active_admin_key_cannot_be_taken_away() {
    let f = fixture();
    let account = f.admin.account.as_str().to_owned();
    for r in [
        f.delete(&f.admin, &account, &f.admin_key),
        f.deactivate(&f.admin, &account, &f.admin_key),
    ] {
        let e = r.unwrap_err();
        assert_eq!(e.aws_type(), "ConflictException", "{e}");
        assert!(e.to_string().contains("lock the operator out"), "{e}");
    }
    assert!(f.usable(&f.admin_key));

    // With a second active root key, the first can go.
    let second = with_call(&f.admin, |c| f.kms.create_access_key(c, &account, None))
        .unwrap()
        .access_key_id;
    f.deactivate(&f.admin, &account, &second).unwrap();
    assert_eq!(
        aws_type(f.delete(&f.admin, &account, &f.admin_key)),
        "ConflictException",
        "an inactive second key does not count"
    );
    // An inactive key is not the last active one: it may be deleted.
    f.delete(&f.admin, &account, &second).unwrap();
    let third = with_call(&f.admin, |c| f.kms.create_access_key(c, &account, None))
        .unwrap()
        .access_key_id;
    f.delete(&f.admin, &account, &f.admin_key).unwrap();
    assert!(f.kms.access_key(&f.admin_key).unwrap().is_none());
    assert_eq!(
        aws_type(f.delete(&f.admin, &account, &third)),
        "ConflictException"
    );

    // A customer account's root may remove its own last key: an admin can
    // give it another.
    let own = f.key_for(None);
    f.delete(&f.root, ACCT, &own).unwrap();
}

#[test]
fn last_use_is_noted_in_memory_and_flushed_once_per_interval() {
    let f = fixture();
    let id = f.key_for(Some("alice"));
    let writes = || f.store.writes.load(Ordering::SeqCst);
    let listed = || {
        with_call(&f.admin, |c| f.kms.list_access_keys(c, ACCT))
            .unwrap()
            .into_iter()
            .find(|k| k.access_key_id == id)
            .unwrap()
    };
    assert_eq!(listed().last_used, None);

    let before = writes();
    for _ in 0..1000 {
        f.kms
            .note_access_key_use(&id, AccessKeyUse::Kms, "eu-west-1");
    }
    assert_eq!(writes(), before, "noting a use never writes");
    // Listings show the use at once, from memory.
    let last = listed().last_used.unwrap();
    assert_eq!(
        (last.service.as_str(), last.region.as_str()),
        ("kms", "eu-west-1")
    );
    assert!((last.time - 1_750_000_000.0).abs() < 1.0);

    // The first flush writes it (one transaction); a second one at once has
    // nothing due.
    assert_eq!(f.kms.flush_access_key_use(false).unwrap(), 1);
    assert_eq!(writes(), before + 1);
    assert_eq!(f.kms.flush_access_key_use(false).unwrap(), 0);
    assert_eq!(writes(), before + 1, "nothing due: no transaction at all");

    // Used again within the interval: kept in memory until it is over.
    f.clock.advance(Duration::seconds(10));
    f.kms
        .note_access_key_use(&id, AccessKeyUse::Nbd, "us-east-1");
    assert_eq!(f.kms.flush_access_key_use(false).unwrap(), 0);
    assert_eq!(writes(), before + 1);
    assert_eq!(listed().last_used.unwrap().service, "nbd");
    f.clock.advance(Duration::seconds(50));
    assert_eq!(f.kms.flush_access_key_use(false).unwrap(), 1);
    assert_eq!(writes(), before + 2);

    // At shutdown everything goes, however recent.
    f.clock.advance(Duration::seconds(1));
    f.kms
        .note_access_key_use(&id, AccessKeyUse::Rest, "us-east-1");
    assert_eq!(f.kms.flush_access_key_use(false).unwrap(), 0);
    assert_eq!(f.kms.flush_access_key_use(true).unwrap(), 1);

    // The interval can be set; a deleted key's noted use is dropped.
    f.kms
        .set_access_key_use_flush_interval(std::time::Duration::from_secs(1));
    f.clock.advance(Duration::seconds(2));
    f.kms
        .note_access_key_use(&id, AccessKeyUse::Kms, "us-east-1");
    f.delete(&f.alice, ACCT, &id).unwrap();
    let before = writes();
    assert_eq!(f.kms.flush_access_key_use(true).unwrap(), 0);
    assert_eq!(writes(), before, "nothing noted of a deleted key");
}

#[test]
fn flushed_last_use_survives_the_memory() {
    // What a restart sees: the stored last use, through a new service over
    // the same store.
    let store = Arc::new(CountingStore::default());
    let clock = Arc::new(ManualClock::new(
        OffsetDateTime::from_unix_timestamp(1_750_000_000).unwrap(),
    ));
    let root = atrest_crypto::SecretBytes::random(32).unwrap();
    let open = || {
        KeyService::open(
            store.clone(),
            RootKey::from_key(Aes256Key::from_secret_bytes(&root).unwrap()),
            vec!["us-east-1".into()],
            clock.clone(),
        )
        .unwrap()
    };
    let first = open();
    let boot = first.bootstrap_admin().unwrap().unwrap();
    first.finish_bootstrap().unwrap();
    let id = boot.key.access_key_id.clone();
    first.note_access_key_use(&id, AccessKeyUse::Rest, "us-east-1");
    first.flush_access_key_use(true).unwrap();
    drop(first);

    let second = open();
    let mut admin = Caller::root(boot.key.account.clone(), "us-east-1");
    admin.admin = true;
    let keys = with_call(&admin, |c| {
        second.list_access_keys(c, boot.key.account.as_str())
    })
    .unwrap();
    let last = keys[0].last_used.clone().unwrap();
    assert_eq!(last.service, "atrest");
    assert_eq!(keys[0].status, "Active");
}
