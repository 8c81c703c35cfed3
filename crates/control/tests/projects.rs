//! The project rules (P1 to P5), in process: a real key service, disk
//! service and database service over a memory store and a temporary pool.
//! No instance is started here (that needs PostgreSQL and a block device:
//! `tests/interop/test_projects.py` does it); the database service's block
//! devices are a stand-in that refuses, named as such.

#![allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

use std::path::PathBuf;
use std::sync::Arc;

use atrest_control::{ControlError, NewProject, Projects, Revocation};
use atrest_crypto::Aes256Key;
use atrest_disk::{Engine, FileStorage};
use atrest_diskservice::{DiskService, NewDisk, ServiceError};
use atrest_kms::clock::SystemClock;
use atrest_kms::names::AccountId;
use atrest_kms::root::RootKey;
use atrest_kms::{Call, Caller, KeyService, Operation, RequestMeta};
use atrest_store::{MemoryStore, RedbStore, Store};
use serde_json::{Value, json};

const REGION: &str = "us-east-1";
const ACCOUNT: &str = "111122223333";
const OTHER: &str = "444455556666";

/// Block devices for the database service: a stand-in that refuses (no
/// instance is created in these tests).
struct NoVolumes;

impl atrest_dbservice::Volumes for NoVolumes {
    fn attach(&self, _: &Caller, disk: &str) -> Result<PathBuf, ServiceError> {
        Err(ServiceError::NoJob(format!(
            "no block devices in this test ({disk})"
        )))
    }

    fn detach(&self, _: &Caller, _: &str) -> Result<(), ServiceError> {
        Ok(())
    }
}

struct Env {
    kms: Arc<KeyService>,
    disks: Arc<DiskService>,
    projects: Projects,
    root: Caller,
    other: Caller,
    _dir: tempfile::TempDir,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let kms = Arc::new(
        KeyService::open(
            Arc::new(MemoryStore::new()),
            RootKey::from_key(Aes256Key::generate().unwrap()),
            vec![REGION.to_owned()],
            Arc::new(SystemClock),
        )
        .unwrap(),
    );
    let mut admin = Caller::root(AccountId::parse("999999999999").unwrap(), REGION);
    admin.admin = true;
    let meta = RequestMeta::in_process();
    for a in [ACCOUNT, OTHER] {
        kms.create_account(&Call::new(&admin, &meta), Some(a), false)
            .unwrap();
    }
    let meta_store: Arc<dyn Store> =
        Arc::new(RedbStore::open(&dir.path().join("meta.redb")).unwrap());
    let engine = Engine::open(
        meta_store,
        Arc::new(FileStorage::open(&dir.path().join("pool")).unwrap()),
    )
    .unwrap();
    let disks = DiskService::start(
        Arc::clone(&kms),
        engine,
        atrest_diskservice::Config::default(),
    )
    .unwrap();
    let db = atrest_dbservice::DbService::open(
        Arc::clone(&kms),
        Arc::clone(&disks),
        Arc::new(NoVolumes),
        atrest_dbservice::Config {
            pg_bin: None,
            uid_range: 70_000..=70_099,
            state_dir: dir.path().join("db"),
            run_dir: dir.path().join("run/db"),
            backups: atrest_objstore::Objects::open(&atrest_objstore::StoreConfig {
                url: format!("file://{}", dir.path().join("objects").display()),
                ..atrest_objstore::StoreConfig::default()
            })
            .unwrap(),
            legacy_backups: None,
            agent_program: dir.path().join("atrest"),
            on_key_loss: atrest_diskservice::Config::default().on_key_loss,
            check_interval: std::time::Duration::from_secs(3600),
            default_size: 1 << 30,
        },
    )
    .unwrap();
    let projects = Projects::new(
        Arc::new(MemoryStore::new()),
        Arc::clone(&kms),
        Arc::clone(&disks),
        db,
    );
    Env {
        kms,
        disks,
        projects,
        root: Caller::root(AccountId::parse(ACCOUNT).unwrap(), REGION),
        other: Caller::root(AccountId::parse(OTHER).unwrap(), REGION),
        _dir: dir,
    }
}

impl Env {
    fn kms(&self, who: &Caller, op: &str, body: Value) -> Value {
        let op = Operation::from_target(&format!("TrentService.{op}")).unwrap();
        let meta = RequestMeta::in_process();
        let out = self
            .kms
            .call(&Call::new(who, &meta), op, body.to_string().as_bytes())
            .unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    fn key(&self, policy: Option<Value>) -> String {
        let body = policy.map_or_else(|| json!({}), |p| json!({"Policy": p.to_string()}));
        self.kms(&self.root, "CreateKey", body)["KeyMetadata"]["Arn"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn project(&self, name: &str, cmek: bool) -> String {
        let (p, created) = self
            .projects
            .create(
                &self.root,
                &NewProject {
                    name: name.into(),
                    cmek,
                    ..NewProject::default()
                },
            )
            .unwrap();
        assert!(created);
        p.id
    }
}

fn small() -> NewDisk {
    NewDisk {
        size: 1 << 20,
        ..NewDisk::default()
    }
}

#[test]
fn names_tokens_and_accounts() {
    let e = env();
    for bad in ["", "Upper", "1st", "has space", &"x".repeat(65)] {
        let r = e.projects.create(
            &e.root,
            &NewProject {
                name: bad.into(),
                ..NewProject::default()
            },
        );
        assert!(matches!(r, Err(ControlError::Invalid(_))), "{bad:?}: {r:?}");
    }
    let long_stop = NewProject {
        name: "p".into(),
        revocation: Revocation::Stop {
            after_seconds: 30 * 86_400 + 1,
        },
        ..NewProject::default()
    };
    assert!(matches!(
        e.projects.create(&e.root, &long_stop),
        Err(ControlError::Invalid(_))
    ));
    // A client token makes creation idempotent, across the same account.
    let req = NewProject {
        name: "web".into(),
        cmek: true,
        client_token: Some("t-1".into()),
        ..NewProject::default()
    };
    let (a, made) = e.projects.create(&e.root, &req).unwrap();
    let (b, again) = e.projects.create(&e.root, &req).unwrap();
    assert!(made && !again);
    assert_eq!(a.id, b.id);
    // Another account sees none of it, and its own token is its own.
    assert!(matches!(
        e.projects.describe(&e.other, &a.id),
        Err(ControlError::NotFound(_))
    ));
    assert!(e.projects.list(&e.other, 10, None).unwrap().0.is_empty());
    let (c, made) = e.projects.create(&e.other, &req).unwrap();
    assert!(made && c.id != a.id);
    assert!(matches!(
        e.projects.delete(&e.other, &a.id),
        Err(ControlError::NotFound(_))
    ));
    // Paging in id order.
    let ids: Vec<String> = (0..3).map(|i| e.project(&format!("p{i}"), false)).collect();
    let (page, next) = e.projects.list(&e.root, 2, None).unwrap();
    assert_eq!(page.len(), 2);
    let (rest, end) = e.projects.list(&e.root, 2, next.as_deref()).unwrap();
    assert!(end.is_none());
    let mut all: Vec<String> = page.into_iter().chain(rest).map(|p| p.id).collect();
    assert!(all.windows(2).all(|w| w[0] < w[1]));
    all.retain(|id| id != &a.id);
    let mut want = ids;
    want.sort();
    assert_eq!(all, want);
}

#[test]
fn a_cmek_project_places_disks_under_its_key_only() {
    let e = env();
    let id = e.project("cmek", true);
    // No key in the region yet: nothing is created.
    let r = e.projects.create_disk(&e.root, &id, &small());
    assert!(
        matches!(&r, Err(ControlError::RegionNotConfigured { region, .. }) if region == REGION),
        "{r:?}"
    );
    // A disk's key is the project's, never the request's.
    let key = e.key(None);
    let mut with_key = small();
    with_key.key_id = Some(key.clone());
    assert!(matches!(
        e.projects.create_disk(&e.root, &id, &with_key),
        Err(ControlError::Invalid(_))
    ));
    let p = e.projects.set_key(&e.root, &id, REGION, &key).unwrap();
    assert_eq!(p.keys[REGION].key_arn, key);
    let d = e.projects.create_disk(&e.root, &id, &small()).unwrap();
    assert_eq!(d.key_arn.as_deref(), Some(key.as_str()));
    let p = e.projects.describe(&e.root, &id).unwrap();
    assert_eq!(p.resources.len(), 1);
    assert_eq!(p.resources[0].id, d.id);
    // Not deleted while it holds a disk; deleted once the disk is gone.
    assert!(matches!(
        e.projects.delete(&e.root, &id),
        Err(ControlError::Conflict(_))
    ));
    e.disks.delete_disk(&e.root, &d.id).unwrap();
    assert!(
        e.projects
            .describe(&e.root, &id)
            .unwrap()
            .resources
            .is_empty()
    );
    e.projects.delete(&e.root, &id).unwrap();
    assert!(matches!(
        e.projects.describe(&e.root, &id),
        Err(ControlError::NotFound(_))
    ));
}

#[test]
fn a_project_without_cmek_uses_the_service_keys_and_takes_no_key() {
    let e = env();
    let id = e.project("plain", false);
    let key = e.key(None);
    assert!(matches!(
        e.projects.set_key(&e.root, &id, REGION, &key),
        Err(ControlError::Conflict(_))
    ));
    let d = e.projects.create_disk(&e.root, &id, &small()).unwrap();
    let service_key = e.kms(
        &e.root,
        "DescribeKey",
        json!({"KeyId": "alias/atrest/disk"}),
    )["KeyMetadata"]["Arn"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(d.key_arn.as_deref(), Some(service_key.as_str()));
}

#[test]
fn set_key_tests_the_key_and_names_the_refused_permission() {
    let e = env();
    let id = e.project("strict", true);
    // A key whose policy lets the account do everything but create grants
    // through the services.
    let policy = json!({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": format!("arn:aws:iam::{ACCOUNT}:root")},
         "Action": "kms:*", "Resource": "*"},
        {"Effect": "Deny", "Principal": {"AWS": "*"}, "Action": "kms:CreateGrant", "Resource": "*"},
    ]});
    let key = e.key(Some(policy));
    let r = e.projects.set_key(&e.root, &id, REGION, &key);
    match r {
        Err(ControlError::KeyAccess {
            key_arn,
            permission,
            ..
        }) => {
            assert_eq!(key_arn, key);
            assert!(permission.contains("CreateGrant"), "{permission}");
        }
        other => panic!("{other:?}"),
    }
    assert!(e.projects.describe(&e.root, &id).unwrap().keys.is_empty());
    // Another account's key is refused too.
    let theirs = e.kms(&e.other, "CreateKey", json!({}))["KeyMetadata"]["Arn"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(e.projects.set_key(&e.root, &id, REGION, &theirs).is_err());
    // A region this server does not serve.
    let good = e.key(None);
    assert!(
        e.projects
            .set_key(&e.root, &id, "eu-west-9", &good)
            .is_err()
    );
    // A key that is not a symmetric encryption key: refused as invalid,
    // saying why.
    for (spec, usage) in [
        ("RSA_2048", "ENCRYPT_DECRYPT"),
        ("ECC_NIST_P256", "SIGN_VERIFY"),
    ] {
        let asym = e.kms(
            &e.root,
            "CreateKey",
            json!({"KeySpec": spec, "KeyUsage": usage}),
        )["KeyMetadata"]["Arn"]
            .as_str()
            .unwrap()
            .to_owned();
        match e.projects.set_key(&e.root, &id, REGION, &asym) {
            Err(ControlError::Invalid(msg)) => {
                assert!(msg.contains("not a symmetric encryption key"), "{msg}");
                assert!(msg.contains(spec), "{msg}");
            }
            other => panic!("{spec}: {other:?}"),
        }
    }
    assert!(e.projects.set_key(&e.root, &id, REGION, &good).is_ok());
}

#[test]
fn pause_refuses_creation_and_resume_tests_the_keys() {
    let e = env();
    let id = e.project("paused", true);
    let key = e.key(None);
    e.projects.set_key(&e.root, &id, REGION, &key).unwrap();
    // A disk of the project uses the key.
    e.projects.create_disk(&e.root, &id, &small()).unwrap();
    let p = e.projects.pause(&e.root, &id).unwrap();
    assert!(p.paused);
    assert!(matches!(
        e.projects.create_disk(&e.root, &id, &small()),
        Err(ControlError::Conflict(_))
    ));
    // The key its disk uses is disabled: resume refuses, naming it, and
    // the project stays paused.
    e.kms(&e.root, "DisableKey", json!({"KeyId": key}));
    let r = e.projects.resume(&e.root, &id);
    let msg = format!("{:?}", r.as_ref().unwrap_err());
    assert!(msg.contains(&key), "{msg}");
    assert!(e.projects.describe(&e.root, &id).unwrap().paused);
    e.kms(&e.root, "EnableKey", json!({"KeyId": key}));
    assert!(!e.projects.resume(&e.root, &id).unwrap().paused);
    e.projects.create_disk(&e.root, &id, &small()).unwrap();
}
