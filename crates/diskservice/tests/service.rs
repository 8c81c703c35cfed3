//! The disk service over a real key service (in process) and a real engine
//! (redb metadata, a pool file): keys through grants, every locking reason
//! for every operation, unlocking, the key-loss policy, re-keying,
//! re-encryption resumed after a crash, conversion, and the audit records.

#![allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use atrest_crypto::Aes256Key;
use atrest_disk::{Engine, FileStorage, Storage};
use atrest_diskservice::{Config, DiskService, JobState, NewDisk, OnKeyLoss, ServiceError};
use atrest_kms::clock::ManualClock;
use atrest_kms::names::AccountId;
use atrest_kms::root::RootKey;
use atrest_kms::{AuditSink, Call, Caller, KeyService, KeyUnusable, Operation, RequestMeta};
use atrest_store::{MemoryStore, RedbStore, Store};
use serde_json::{Value, json};

const ACCOUNT: &str = "111122223333";
const REGION: &str = "us-east-1";

#[derive(Default)]
struct Records(Mutex<Vec<atrest_audit::Entry>>);

impl AuditSink for Records {
    fn record_blocking(&self, entry: atrest_audit::Entry) -> Result<(), String> {
        self.0.lock().unwrap().push(entry);
        Ok(())
    }
}

/// A pool file whose syncs start failing after a countdown (a crash
/// stand-in: the engine stops at the first failed sync, and what it had
/// committed before is what a restart finds).
struct Failing {
    inner: FileStorage,
    syncs_left: AtomicI64,
}

impl Storage for Failing {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.inner.write_at(offset, data)
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn sync(&self) -> io::Result<()> {
        if self.syncs_left.fetch_sub(1, Ordering::SeqCst) <= 0 {
            return Err(io::Error::other("injected sync failure"));
        }
        self.inner.sync()
    }
}

struct Env {
    kms: Arc<KeyService>,
    clock: Arc<ManualClock>,
    records: Arc<Records>,
    dir: tempfile::TempDir,
    alice: Caller,
}

fn kms_env() -> Env {
    let clock = Arc::new(ManualClock::new(
        time::OffsetDateTime::from_unix_timestamp(1_750_000_000).unwrap(),
    ));
    let kms = KeyService::open(
        Arc::new(MemoryStore::new()),
        RootKey::from_key(Aes256Key::generate().unwrap()),
        vec![REGION.to_owned()],
        clock.clone(),
    )
    .unwrap();
    let records = Arc::new(Records::default());
    kms.set_audit_sink(records.clone());
    let mut admin = Caller::root(AccountId::parse("999999999999").unwrap(), REGION);
    admin.admin = true;
    let meta = RequestMeta::in_process();
    kms.create_account(&Call::new(&admin, &meta), Some(ACCOUNT), false)
        .unwrap();
    Env {
        kms: Arc::new(kms),
        clock,
        records,
        dir: tempfile::tempdir().unwrap(),
        alice: Caller::root(AccountId::parse(ACCOUNT).unwrap(), REGION),
    }
}

impl Env {
    fn kms_call(&self, who: &Caller, op: &str, body: Value) -> Result<Value, atrest_kms::KmsError> {
        let op = Operation::from_target(&format!("TrentService.{op}")).unwrap();
        let meta = RequestMeta::in_process();
        let out = self
            .kms
            .call(&Call::new(who, &meta), op, body.to_string().as_bytes())?;
        Ok(serde_json::from_slice(&out).unwrap())
    }

    fn ok(&self, op: &str, body: Value) -> Value {
        self.kms_call(&self.alice, op, body).unwrap()
    }

    fn new_key(&self) -> String {
        self.ok("CreateKey", json!({}))["KeyMetadata"]["Arn"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn engine(&self, pool: Option<Arc<dyn Storage>>) -> Arc<Engine> {
        let store: Arc<dyn Store> =
            Arc::new(RedbStore::open(&self.dir.path().join("meta.redb")).unwrap());
        let pool = pool
            .unwrap_or_else(|| Arc::new(FileStorage::open(&self.dir.path().join("pool")).unwrap()));
        Engine::open(store, pool).unwrap()
    }

    fn service(&self, config: Config) -> Arc<DiskService> {
        DiskService::start(Arc::clone(&self.kms), self.engine(None), config).unwrap()
    }
}

fn config() -> Config {
    Config {
        on_key_loss: OnKeyLoss::KeepServing,
        check_interval: Duration::from_secs(3600),
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

fn encrypted(size: u64, key: Option<&str>) -> NewDisk {
    NewDisk {
        size,
        block_size: Some(512),
        encrypted: Some(true),
        key_id: key.map(str::to_owned),
        shareable: None,
        tags: Default::default(),
    }
}

fn read_all(svc: &Arc<DiskService>, who: &Caller, disk: &str) -> Vec<u8> {
    let a = svc.attach(who, disk).unwrap();
    let mut buf = vec![0u8; usize::try_from(a.size().unwrap()).unwrap()];
    a.read(0, &mut buf).unwrap();
    buf
}

fn wait_job(svc: &DiskService, who: &Caller, id: &str) -> atrest_diskservice::Job {
    let start = Instant::now();
    loop {
        let j = svc.job(who, id).unwrap();
        if j.state != JobState::Running {
            return j;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "job {id} hangs");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn disks_snapshots_clones_and_key_changes_keep_the_data() {
    let e = kms_env();
    let svc = e.service(config());
    let key = e.new_key();
    // Default: the account's disk service key.
    let d0 = svc
        .create_disk(&e.alice, &encrypted(1 << 20, None))
        .unwrap();
    assert!(d0.encrypted);
    let svc_key =
        e.ok("DescribeKey", json!({"KeyId": "alias/atrest/disk"}))["KeyMetadata"]["Arn"].clone();
    assert_eq!(d0.key_arn.as_deref(), svc_key.as_str());

    let d = svc
        .create_disk(&e.alice, &encrypted(4 << 20, Some(&key)))
        .unwrap();
    assert_eq!(d.key_arn.as_deref(), Some(key.as_str()));
    // The service holds a grant, constrained to the disk's context.
    let grants = e.ok("ListGrants", json!({"KeyId": key}));
    let g = &grants["Grants"][0];
    assert_eq!(g["GranteePrincipal"], "disk.atrest");
    assert_eq!(
        g["Constraints"]["EncryptionContextSubset"]["atrest:disk:id"],
        d.id.as_str()
    );
    let data = pattern(7, 3 << 20);
    {
        let a = svc.attach(&e.alice, &d.id).unwrap();
        a.write(4096, &data, false).unwrap();
        a.flush().unwrap();
    }
    let snap = svc.create_snapshot(&e.alice, &d.id).unwrap();
    assert_eq!(snap.key_arn.as_deref(), Some(key.as_str()));
    {
        let a = svc.attach(&e.alice, &d.id).unwrap();
        a.write(0, &[9u8; 8192], true).unwrap();
    }
    let clone = svc.clone_snapshot(&e.alice, &snap.id).unwrap();
    assert_eq!(clone.key_arn.as_deref(), Some(key.as_str()));
    let c = read_all(&svc, &e.alice, &clone.id);
    assert_eq!(&c[4096..4096 + data.len()], &data[..]);
    assert!(c[..4096].iter().all(|&b| b == 0));
    // Roll back: the disk reads as the snapshot.
    svc.rollback(&e.alice, &d.id, &snap.id).unwrap();
    assert_eq!(read_all(&svc, &e.alice, &d.id), c);

    // Another master key: O(1) re-wrap; the old grant is retired.
    let key2 = e.new_key();
    let moved = svc.change_key(&e.alice, &d.id, &key2).unwrap();
    assert_eq!(moved.key_arn.as_deref(), Some(key2.as_str()));
    assert_eq!(read_all(&svc, &e.alice, &d.id), c);
    let left: Vec<String> = e.ok("ListGrants", json!({"KeyId": key}))["Grants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["Constraints"]["EncryptionContextSubset"].to_string())
        .collect();
    assert!(
        left.iter().all(|g| !g.contains(&format!("\"{}\"", d.id))),
        "the disk's grant on the old key is retired: {left:?}"
    );
    // Rotating the master key changes nothing for the disk.
    e.ok("RotateKeyOnDemand", json!({"KeyId": key2}));
    assert_eq!(read_all(&svc, &e.alice, &d.id), c);

    // Re-encrypt under a fresh data key, online: a writer keeps going.
    let a = svc.attach(&e.alice, &d.id).unwrap();
    let job = svc.reencrypt(&e.alice, &d.id).unwrap();
    a.write(1 << 20, &[5u8; 4096], false).unwrap();
    let j = wait_job(&svc, &e.alice, &job.id);
    assert_eq!(j.state, JobState::Succeeded, "{j:?}");
    assert_eq!(j.progress.done, j.progress.total);
    let mut expect = c.clone();
    expect[1 << 20..(1 << 20) + 4096].fill(5);
    drop(a);
    assert_eq!(read_all(&svc, &e.alice, &d.id), expect);
    // The snapshot still clones and reads under the old data key.
    let clone2 = svc.clone_snapshot(&e.alice, &snap.id).unwrap();
    assert_eq!(read_all(&svc, &e.alice, &clone2.id), c);

    // Convert: to unencrypted and back, copies with progress.
    let job = svc.convert(&e.alice, &d.id, false, None).unwrap();
    let j = wait_job(&svc, &e.alice, &job.id);
    assert_eq!(j.state, JobState::Succeeded, "{j:?}");
    let plain = j.target.unwrap();
    assert!(!svc.describe_disk(&e.alice, &plain).unwrap().encrypted);
    assert_eq!(read_all(&svc, &e.alice, &plain), expect);
    let job = svc.convert(&e.alice, &plain, true, Some(&key)).unwrap();
    let j = wait_job(&svc, &e.alice, &job.id);
    assert_eq!(j.state, JobState::Succeeded, "{j:?}");
    let enc = j.target.unwrap();
    assert_eq!(
        svc.describe_disk(&e.alice, &enc)
            .unwrap()
            .key_arn
            .as_deref(),
        Some(key.as_str())
    );
    assert_eq!(read_all(&svc, &e.alice, &enc), expect);
    // Growing shows on the next attach.
    svc.resize(&e.alice, &enc, 8 << 20).unwrap();
    assert_eq!(svc.attach(&e.alice, &enc).unwrap().size().unwrap(), 8 << 20);

    // Another account sees none of it.
    let bob = Caller::root(AccountId::parse("444455556666").unwrap(), REGION);
    assert!(svc.list_disks(&bob).unwrap().is_empty());
    assert!(matches!(
        svc.attach(&bob, &d.id),
        Err(ServiceError::Disk(atrest_disk::DiskError::NotFound { .. }))
    ));

    // Delete: grants retired.
    svc.delete_disk(&e.alice, &enc).unwrap();
    let gs = e.ok("ListGrants", json!({"KeyId": key}))["Grants"].to_string();
    assert!(!gs.contains(&enc), "grant of a deleted disk retired");

    // The audit trail has the attaches and detaches, metered to the account.
    let recs = e.records.0.lock().unwrap();
    let attach = recs
        .iter()
        .filter(|r| r.operation == "disk:AttachDisk" && r.result == "Success")
        .count();
    let detach = recs
        .iter()
        .filter(|r| r.operation == "disk:DetachDisk")
        .count();
    assert!(
        attach >= 8 && attach == detach,
        "{attach} attaches, {detach} detaches"
    );
    assert!(
        recs.iter()
            .filter(|r| r.operation.starts_with("disk:"))
            .all(|r| r.account.as_deref() == Some(ACCOUNT))
    );
    // The service's own key-service calls are billed to the key's owner.
    let decrypts: Vec<_> = recs.iter().filter(|r| r.operation == "Decrypt").collect();
    assert!(
        decrypts
            .iter()
            .any(|r| r.principal.as_deref() == Some("disk.atrest")
                && r.account.as_deref() == Some(ACCOUNT)),
        "{decrypts:?}"
    );
}

/// How to unlock a key again.
type Unlock = Box<dyn Fn(&Env)>;

/// Locks `key` for `reason`; returns how to unlock it (None: cannot be).
fn lock_key(e: &Env, key: &str, reason: KeyUnusable, grant: &str) -> Option<Unlock> {
    let key = key.to_owned();
    match reason {
        KeyUnusable::Disabled => {
            e.ok("DisableKey", json!({"KeyId": key}));
            Some(Box::new(move |e: &Env| {
                e.ok("EnableKey", json!({"KeyId": key}));
            }))
        }
        KeyUnusable::PendingDeletion => {
            e.ok(
                "ScheduleKeyDeletion",
                json!({"KeyId": key, "PendingWindowInDays": 7}),
            );
            Some(Box::new(move |e: &Env| {
                e.ok("CancelKeyDeletion", json!({"KeyId": key}));
                e.ok("EnableKey", json!({"KeyId": key}));
            }))
        }
        KeyUnusable::Deleted => {
            e.ok(
                "ScheduleKeyDeletion",
                json!({"KeyId": key, "PendingWindowInDays": 7}),
            );
            e.clock.advance(time::Duration::days(8));
            e.kms.run_due().unwrap();
            None
        }
        KeyUnusable::GrantRevoked => {
            e.ok("RevokeGrant", json!({"KeyId": key, "GrantId": grant}));
            None
        }
        // Proven against real providers in tests/interop/test_external_keys.py.
        KeyUnusable::PendingImport | KeyUnusable::ExternalKeyRefused(_) => unreachable!(),
    }
}

fn grant_of(e: &Env, key: &str, name: &str, id: &str) -> String {
    let grants = e.ok("ListGrants", json!({"KeyId": key}));
    grants["Grants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["Constraints"]["EncryptionContextSubset"][name] == id)
        .unwrap()["GrantId"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn every_lock_reason_refuses_every_operation_and_naming_the_key() {
    let ops = [
        "attach",
        "snapshot",
        "clone",
        "rollback",
        "rekey",
        "reencrypt",
        "convert",
    ];
    let reasons = [
        KeyUnusable::Disabled,
        KeyUnusable::PendingDeletion,
        KeyUnusable::Deleted,
        KeyUnusable::GrantRevoked,
    ];
    for reason in reasons {
        let e = kms_env();
        let svc = e.service(config());
        let key = e.new_key();
        let other = e.new_key();
        let d = svc
            .create_disk(&e.alice, &encrypted(1 << 20, Some(&key)))
            .unwrap();
        {
            let a = svc.attach(&e.alice, &d.id).unwrap();
            a.write(0, &pattern(1, 65536), true).unwrap();
        }
        let snap = svc.create_snapshot(&e.alice, &d.id).unwrap();
        let disks_before = svc.list_disks(&e.alice).unwrap().len();
        let snaps_before = svc.list_snapshots(&e.alice).unwrap().len();
        // The grant that each operation needs: the snapshot's for clone,
        // the disk's for the rest.
        let disk_grant = grant_of(&e, &key, "atrest:disk:id", &d.id);
        let snap_grant = grant_of(&e, &key, "atrest:snapshot:id", &snap.id);
        let unlock = lock_key(&e, &key, reason.clone(), &disk_grant);
        if reason == KeyUnusable::GrantRevoked {
            e.ok("RevokeGrant", json!({"KeyId": key, "GrantId": snap_grant}));
        }
        for op in ops {
            let r: Result<(), ServiceError> = match op {
                "attach" => svc.attach(&e.alice, &d.id).map(drop),
                "snapshot" => svc.create_snapshot(&e.alice, &d.id).map(drop),
                "clone" => svc.clone_snapshot(&e.alice, &snap.id).map(drop),
                "rollback" => svc.rollback(&e.alice, &d.id, &snap.id).map(drop),
                "rekey" => svc.change_key(&e.alice, &d.id, &other).map(drop),
                "reencrypt" => svc.reencrypt(&e.alice, &d.id).map(drop),
                "convert" => svc.convert(&e.alice, &d.id, false, None).map(drop),
                _ => unreachable!(),
            };
            let msg = r
                .as_ref()
                .err()
                .map(ToString::to_string)
                .unwrap_or_default();
            match r {
                Err(ServiceError::Locked {
                    key_arn,
                    reason: got,
                    ref resource,
                }) => {
                    assert_eq!(key_arn, key, "{op} {reason:?}");
                    assert_eq!(got, reason, "{op}");
                    assert!(msg.contains(&key) && msg.contains(reason.as_str()), "{msg}");
                    assert!(resource.contains(if op == "clone" { &snap.id } else { &d.id }));
                }
                other => panic!("{op} with the key {reason:?}: {other:?}"),
            }
        }
        // Nothing changed.
        assert_eq!(svc.list_disks(&e.alice).unwrap().len(), disks_before);
        assert_eq!(svc.list_snapshots(&e.alice).unwrap().len(), snaps_before);
        assert_eq!(
            svc.describe_disk(&e.alice, &d.id)
                .unwrap()
                .key_arn
                .as_deref(),
            Some(key.as_str())
        );
        // Unlock: re-enabling the key (or granting again) opens it again.
        match unlock {
            Some(f) => f(&e),
            None if reason == KeyUnusable::GrantRevoked => {
                svc.regrant(&e.alice, &d.id).unwrap();
            }
            None => {
                // A deleted key is gone for good: the data is unrecoverable.
                assert!(matches!(
                    svc.regrant(&e.alice, &d.id),
                    Err(ServiceError::Kms(_))
                ));
                continue;
            }
        }
        let back = read_all(&svc, &e.alice, &d.id);
        assert_eq!(&back[..65536], &pattern(1, 65536)[..], "{reason:?}");
        svc.create_snapshot(&e.alice, &d.id).unwrap();
    }
}

#[test]
fn an_open_disk_closes_after_its_key_is_lost_or_keeps_serving() {
    for policy in [
        OnKeyLoss::CloseAfter(Duration::from_millis(100)),
        OnKeyLoss::KeepServing,
    ] {
        let e = kms_env();
        let svc = e.service(Config {
            on_key_loss: policy,
            check_interval: Duration::from_millis(20),
        });
        let key = e.new_key();
        let d = svc
            .create_disk(&e.alice, &encrypted(1 << 20, Some(&key)))
            .unwrap();
        let a = svc.attach(&e.alice, &d.id).unwrap();
        a.write(0, &[3u8; 4096], true).unwrap();
        e.ok("DisableKey", json!({"KeyId": key}));
        std::thread::sleep(Duration::from_millis(600));
        let mut buf = vec![0u8; 4096];
        match policy {
            OnKeyLoss::KeepServing => {
                a.read(0, &mut buf).unwrap();
                assert_eq!(buf, [3u8; 4096]);
            }
            OnKeyLoss::CloseAfter(_) => {
                let err = a.read(0, &mut buf).unwrap_err();
                assert!(matches!(err, ServiceError::Closed { .. }), "{err:?}");
                assert!(err.to_string().contains(&key), "{err}");
                assert!(
                    e.records
                        .0
                        .lock()
                        .unwrap()
                        .iter()
                        .any(|r| r.operation == "disk:CloseDisk")
                );
                // Re-enabled: attaching again works, the data is there.
                e.ok("EnableKey", json!({"KeyId": key}));
                drop(a);
                let b = svc.attach(&e.alice, &d.id).unwrap();
                b.read(0, &mut buf).unwrap();
                assert_eq!(buf, [3u8; 4096]);
                continue;
            }
        }
    }
}

#[test]
fn a_user_who_may_not_create_grants_cannot_put_a_disk_under_a_key() {
    let e = kms_env();
    let svc = e.service(config());
    let key = e.new_key();
    let user = Caller::user(AccountId::parse(ACCOUNT).unwrap(), REGION, "carol");
    let meta = RequestMeta::in_process();
    e.kms
        .create_user(&Call::new(&e.alice, &meta), ACCOUNT, "carol")
        .unwrap();
    let allow = |actions: &[&str]| {
        let policy = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]});
        e.kms
            .put_user_policy(
                &Call::new(&e.alice, &meta),
                ACCOUNT,
                "carol",
                "p",
                &policy.to_string(),
            )
            .unwrap();
    };
    allow(&["kms:DescribeKey", "kms:GenerateDataKey*"]);
    let err = svc
        .create_disk(&user, &encrypted(1 << 20, Some(&key)))
        .unwrap_err();
    assert!(
        matches!(&err, ServiceError::Kms(k) if k.aws_type() == "AccessDeniedException"),
        "{err:?}"
    );
    assert!(svc.list_disks(&user).unwrap().is_empty());
    // kms:CreateGrant alone is not enough either: as EBS asks, the user
    // must itself be allowed to generate the disk's data key.
    allow(&["kms:DescribeKey", "kms:CreateGrant"]);
    let err = svc
        .create_disk(&user, &encrypted(1 << 20, Some(&key)))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("kms:GenerateDataKeyWithoutPlaintext"),
        "{err}"
    );
    assert!(svc.list_disks(&user).unwrap().is_empty());
    // With both it works.
    allow(&[
        "kms:DescribeKey",
        "kms:CreateGrant",
        "kms:GenerateDataKeyWithoutPlaintext",
    ]);
    svc.create_disk(&user, &encrypted(1 << 20, Some(&key)))
        .unwrap();
}

#[test]
fn a_reencryption_cut_short_by_a_crash_resumes_at_the_next_start() {
    let e = kms_env();
    let size = 8u64 << 20;
    let data = pattern(42, size as usize);
    let disk;
    {
        let svc = e.service(config());
        disk = svc
            .create_disk(&e.alice, &encrypted(size, None))
            .unwrap()
            .id;
        let a = svc.attach(&e.alice, &disk).unwrap();
        a.write(0, &data, false).unwrap();
        a.flush().unwrap();
    }
    // Re-encrypt on a pool whose syncs fail after a few commits: the engine
    // stops part-way, as a crash would stop it.
    {
        let pool: Arc<dyn Storage> = Arc::new(Failing {
            inner: FileStorage::open(&e.dir.path().join("pool")).unwrap(),
            syncs_left: AtomicI64::new(4),
        });
        let svc = DiskService::start(Arc::clone(&e.kms), e.engine(Some(pool)), config()).unwrap();
        let job = svc.reencrypt(&e.alice, &disk).unwrap();
        let j = wait_job(&svc, &e.alice, &job.id);
        assert_eq!(j.state, JobState::Failed, "{j:?}");
        assert!(j.progress.done > 0 && j.progress.done < size, "{j:?}");
    }
    // Restart: the job resumes by itself and finishes; the data is intact.
    let svc = e.service(config());
    let view = svc.describe_disk(&e.alice, &disk).unwrap();
    let jobs = svc.list_jobs(&e.alice);
    assert_eq!(jobs.len(), 1, "{jobs:?} {view:?}");
    let j = wait_job(&svc, &e.alice, &jobs[0].id);
    assert_eq!(j.state, JobState::Succeeded, "{j:?}");
    assert!(
        svc.describe_disk(&e.alice, &disk)
            .unwrap()
            .reencrypt
            .is_none()
    );
    assert!(read_all(&svc, &e.alice, &disk) == data);
    no_secret_in(e.dir.path(), &data[..4096]);
}

fn no_secret_in(dir: &Path, needle: &[u8]) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            let bytes = std::fs::read(&p).unwrap();
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{} holds plaintext",
                p.display()
            );
        }
    }
}

#[test]
fn bad_requests_get_typed_errors() {
    let e = kms_env();
    let svc = e.service(config());
    for size in [0, 1000, (64u64 << 40) + 4096] {
        assert!(matches!(
            svc.create_disk(&e.alice, &encrypted(size, None)),
            Err(ServiceError::Disk(atrest_disk::DiskError::Invalid(_)))
        ));
    }
    let mut bad_bs = encrypted(1 << 20, None);
    bad_bs.block_size = Some(1024);
    assert!(matches!(
        svc.create_disk(&e.alice, &bad_bs),
        Err(ServiceError::Disk(atrest_disk::DiskError::Invalid(_)))
    ));
    // Unknown key, unknown ids.
    assert!(matches!(
        svc.create_disk(&e.alice, &encrypted(1 << 20, Some("alias/nope"))),
        Err(ServiceError::Kms(_))
    ));
    // A key that is not a symmetric encryption key: a client's error (4xx),
    // saying why, for creation and for a key change.
    let sym = svc
        .create_disk(&e.alice, &encrypted(1 << 20, None))
        .unwrap();
    for (spec, usage) in [
        ("RSA_2048", "ENCRYPT_DECRYPT"),
        ("ECC_NIST_P256", "SIGN_VERIFY"),
        ("HMAC_256", "GENERATE_VERIFY_MAC"),
    ] {
        let key =
            e.ok("CreateKey", json!({"KeySpec": spec, "KeyUsage": usage}))["KeyMetadata"]["Arn"]
                .as_str()
                .unwrap()
                .to_owned();
        for r in [
            svc.create_disk(&e.alice, &encrypted(1 << 20, Some(&key)))
                .map(|_| ()),
            svc.change_key(&e.alice, &sym.id, &key).map(|_| ()),
        ] {
            match r {
                Err(ServiceError::Kms(err @ atrest_kms::KmsError::Validation(_))) => {
                    assert!(
                        err.to_string().contains("not a symmetric encryption key"),
                        "{spec}: {err}"
                    );
                }
                other => panic!("{spec}: {other:?}"),
            }
        }
    }
    assert!(matches!(
        svc.create_snapshot(&e.alice, "disk-0000000000000000"),
        Err(ServiceError::Disk(atrest_disk::DiskError::NotFound { .. }))
    ));
    assert!(matches!(
        svc.job(&e.alice, "job-0"),
        Err(ServiceError::NoJob(_))
    ));
    let plain = svc
        .create_disk(
            &e.alice,
            &NewDisk {
                size: 1 << 20,
                encrypted: Some(false),
                ..NewDisk::default()
            },
        )
        .unwrap();
    assert!(!plain.encrypted);
    // An unencrypted disk has no key to change; shrinking is refused.
    let key = e.new_key();
    assert!(matches!(
        svc.change_key(&e.alice, &plain.id, &key),
        Err(ServiceError::Disk(atrest_disk::DiskError::Invalid(_)))
    ));
    assert!(matches!(
        svc.resize(&e.alice, &plain.id, 4096),
        Err(ServiceError::Disk(atrest_disk::DiskError::Invalid(_)))
    ));
    // Open disks cannot be deleted or rolled back.
    let a = svc.attach(&e.alice, &plain.id).unwrap();
    assert!(matches!(
        svc.delete_disk(&e.alice, &plain.id),
        Err(ServiceError::Disk(atrest_disk::DiskError::Conflict(_)))
    ));
    // I/O out of range, or crossing the end, is refused (unaligned I/O
    // within the disk is served: see one_client_at_a_time_...).
    assert!(a.write(1 << 20, &[0u8; 512], false).is_err());
    assert!(a.write((1 << 20) - 100, &[0u8; 512], false).is_err());
    let mut buf = [0u8; 512];
    assert!(a.read((1 << 20) - 1, &mut buf).is_err());
    drop(a);
    assert_eq!(svc.list_disks(&e.alice).unwrap().len(), 2);
}

#[test]
fn a_conversion_cut_short_by_a_crash_restarts_and_completes() {
    let e = kms_env();
    let size = 4u64 << 20;
    let mut data = vec![0u8; size as usize];
    // Data with holes, so the copy must keep them zero.
    data[..1 << 20].copy_from_slice(&pattern(9, 1 << 20));
    data[3 << 20..].copy_from_slice(&pattern(10, 1 << 20));
    let src;
    {
        let svc = e.service(config());
        src = svc
            .create_disk(
                &e.alice,
                &NewDisk {
                    size,
                    encrypted: Some(false),
                    ..NewDisk::default()
                },
            )
            .unwrap()
            .id;
        let a = svc.attach(&e.alice, &src).unwrap();
        a.write(0, &data, true).unwrap();
    }
    let target;
    {
        // The pool's syncs fail after the target is created: the copy's
        // flush fails, as if the power went during the copy.
        let pool: Arc<dyn Storage> = Arc::new(Failing {
            inner: FileStorage::open(&e.dir.path().join("pool")).unwrap(),
            syncs_left: AtomicI64::new(1),
        });
        let svc = DiskService::start(Arc::clone(&e.kms), e.engine(Some(pool)), config()).unwrap();
        let job = svc.convert(&e.alice, &src, true, None).unwrap();
        target = job.target.clone().unwrap();
        let j = wait_job(&svc, &e.alice, &job.id);
        assert_eq!(j.state, JobState::Failed, "{j:?}");
        // Meanwhile the source could not be attached, nor the target.
    }
    let svc = e.service(config());
    let view = svc.describe_disk(&e.alice, &target).unwrap();
    assert!(view.encrypted, "{view:?}");
    let jobs = svc.list_jobs(&e.alice);
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0].target.as_deref(), Some(target.as_str()));
    let j = wait_job(&svc, &e.alice, &jobs[0].id);
    assert_eq!(j.state, JobState::Succeeded, "{j:?}");
    assert_eq!(
        svc.describe_disk(&e.alice, &target).unwrap().state,
        "available"
    );
    assert!(read_all(&svc, &e.alice, &target) == data);
}

#[test]
fn a_disk_being_converted_cannot_be_attached_nor_its_target_used() {
    let e = kms_env();
    let svc = e.service(config());
    let src = svc
        .create_disk(
            &e.alice,
            &NewDisk {
                size: 64 << 20,
                encrypted: Some(false),
                ..NewDisk::default()
            },
        )
        .unwrap()
        .id;
    {
        let a = svc.attach(&e.alice, &src).unwrap();
        a.write(0, &pattern(3, 32 << 20), false).unwrap();
        a.flush().unwrap();
        // In use: no conversion.
        assert!(matches!(
            svc.convert(&e.alice, &src, true, None),
            Err(ServiceError::Disk(atrest_disk::DiskError::Conflict(_)))
        ));
    }
    let job = svc.convert(&e.alice, &src, true, None).unwrap();
    let target = job.target.clone().unwrap();
    // Until the copy's last commit, neither the source nor the target can
    // be attached and the target cannot be snapshotted. (An attach that
    // succeeds came after that commit, before the job's state changed.)
    let (mut refused, mut tries) = (0, 0);
    while svc.job(&e.alice, &job.id).unwrap().state == JobState::Running {
        tries += 1;
        for disk in [&src, &target] {
            match svc.attach(&e.alice, disk) {
                Err(ServiceError::Disk(atrest_disk::DiskError::Conflict(_))) => refused += 1,
                Ok(_) => assert_ne!(
                    svc.describe_disk(&e.alice, &target).unwrap().state,
                    "converting"
                ),
                Err(other) => panic!("{other:?}"),
            }
        }
        if let Err(e2) = svc.create_snapshot(&e.alice, &target) {
            assert!(matches!(
                e2,
                ServiceError::Disk(atrest_disk::DiskError::Conflict(_))
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(refused > 0, "{tries} tries while the job ran");
    assert_eq!(wait_job(&svc, &e.alice, &job.id).state, JobState::Succeeded);
    assert!(read_all(&svc, &e.alice, &target)[..32 << 20] == pattern(3, 32 << 20)[..]);
}

#[test]
fn one_client_at_a_time_unless_shareable_and_io_at_any_offset() {
    let e = kms_env();
    let svc = e.service(config());
    let d = svc
        .create_disk(&e.alice, &encrypted(1 << 20, None))
        .unwrap();
    assert!(!d.shareable);
    let a = svc.attach_as(&e.alice, &d.id, "client-1").unwrap();
    // The same client again (a second connection): shares.
    let a2 = svc.attach_as(&e.alice, &d.id, "client-1").unwrap();
    // Another client: refused, naming the holder; nothing changes.
    let err = svc.attach_as(&e.alice, &d.id, "client-2").unwrap_err();
    assert!(
        matches!(&err, ServiceError::Disk(atrest_disk::DiskError::Conflict(m)) if m.contains("client-1")),
        "{err}"
    );
    // I/O at any offset and length, read-modify-write underneath.
    a.write(0, &pattern(7, 8192), false).unwrap();
    a.write(513, b"hello, unaligned world", true).unwrap();
    let mut got = vec![0u8; 8192];
    a2.read(0, &mut got).unwrap();
    let mut want = pattern(7, 8192);
    want[513..513 + 22].copy_from_slice(b"hello, unaligned world");
    assert_eq!(got, want);
    let mut odd = vec![0u8; 22];
    a.read(513, &mut odd).unwrap();
    assert_eq!(odd, b"hello, unaligned world");
    a.trim(100, 5000).unwrap();
    a.read(0, &mut got).unwrap();
    want[100..5100].fill(0);
    assert_eq!(got, want);
    a.write_zeroes(6000, 10, false).unwrap();
    a.read(0, &mut got).unwrap();
    want[6000..6010].fill(0);
    assert_eq!(got, want);
    assert!(matches!(
        a.write((1 << 20) - 3, b"past the end", false),
        Err(ServiceError::Disk(atrest_disk::DiskError::Invalid(_)))
    ));
    drop((a, a2));
    // Once the first client detached, the second may attach.
    drop(svc.attach_as(&e.alice, &d.id, "client-2").unwrap());
    // The refused attach is audited as refused; every successful attach
    // has its detach.
    {
        let recs = e.records.0.lock().unwrap();
        let count = |op: &str, result: &str| {
            recs.iter()
                .filter(|r| r.operation == op && (result.is_empty() || r.result == result))
                .count()
        };
        assert_eq!(count("disk:AttachDisk", "ConflictException"), 1);
        assert_eq!(count("disk:AttachDisk", "Success"), 3);
        assert_eq!(count("disk:DetachDisk", ""), 3);
    }

    let shared = svc
        .create_disk(
            &e.alice,
            &NewDisk {
                shareable: Some(true),
                ..encrypted(1 << 20, None)
            },
        )
        .unwrap();
    assert!(shared.shareable);
    let x = svc.attach_as(&e.alice, &shared.id, "client-1").unwrap();
    let y = svc.attach_as(&e.alice, &shared.id, "client-2").unwrap();
    x.write(0, &pattern(3, 4096), true).unwrap();
    let mut buf = vec![0u8; 4096];
    y.read(0, &mut buf).unwrap();
    assert_eq!(buf, pattern(3, 4096));
}

const INSTANCE: &str = "instance orders (db-0123456789abcdef)";

/// Another account, in the same region.
fn bob(e: &Env) -> Caller {
    let mut admin = Caller::root(AccountId::parse("999999999999").unwrap(), REGION);
    admin.admin = true;
    let meta = RequestMeta::in_process();
    e.kms
        .create_account(&Call::new(&admin, &meta), Some("444455556666"), false)
        .unwrap();
    Caller::root(AccountId::parse("444455556666").unwrap(), REGION)
}

/// The manager's labels of a disk, or of a snapshot.
fn manager_of(svc: &DiskService, id: &str) -> (Option<String>, Option<String>) {
    let labels = if id.starts_with("snap-") {
        svc.engine().snapshot(id).unwrap().labels
    } else {
        svc.engine().disk(id).unwrap().labels
    };
    (
        labels.get("managed_by").cloned(),
        labels.get("managed_for").cloned(),
    )
}

fn db_labels(managed_for: &str) -> (Option<String>, Option<String>) {
    (Some("db".to_owned()), Some(managed_for.to_owned()))
}

/// `r` is the refusal of a customer operation on `resource`, managed by
/// the db service for `managed_for`, with a message that says so.
fn assert_managed(what: &str, r: Result<(), ServiceError>, resource: &str, managed_for: &str) {
    let msg = r
        .as_ref()
        .err()
        .map(ToString::to_string)
        .unwrap_or_default();
    match r {
        Err(
            ref e @ ServiceError::Managed {
                resource: ref got,
                ref service,
                managed_for: ref what_for,
            },
        ) => {
            assert_eq!(got, resource, "{what}");
            assert_eq!(service, "db", "{what}");
            assert_eq!(what_for, managed_for, "{what}");
            assert!(!e.is_server_fault(), "{what}");
            assert_eq!(
                msg,
                format!(
                    "{resource} is managed by atrest's db service for {managed_for} and cannot be used directly"
                ),
                "{what}"
            );
        }
        other => panic!("{what}: expected a refusal naming the manager, got {other:?}"),
    }
}

fn assert_not_found(what: &str, r: Result<(), ServiceError>) {
    match r {
        Err(
            ServiceError::Disk(atrest_disk::DiskError::NotFound { .. }) | ServiceError::NoJob(_),
        ) => {}
        other => panic!("{what}: another account must find nothing, got {other:?}"),
    }
}

#[test]
fn a_managed_disk_is_the_managers_alone() {
    let e = kms_env();
    let svc = e.service(config());
    let db = svc.managed("db");
    let alice = &e.alice;
    let key = e.new_key();
    let key2 = e.new_key();
    // The customer's own disk, snapshot and job: the lists below are not
    // empty for want of anything to list.
    let own = svc
        .create_disk(alice, &encrypted(1 << 20, Some(&key)))
        .unwrap();
    let own_snap = svc.create_snapshot(alice, &own.id).unwrap();
    let own_job = svc.reencrypt(alice, &own.id).unwrap();
    assert_eq!(
        wait_job(&svc, alice, &own_job.id).state,
        JobState::Succeeded
    );
    assert_eq!(manager_of(&svc, &own.id), (None, None));

    // The manager creates, writes, snapshots and converts its disk.
    let d = db
        .create_disk(alice, INSTANCE, &encrypted(2 << 20, Some(&key)))
        .unwrap();
    assert_eq!(d.account, ACCOUNT);
    assert_eq!(manager_of(&svc, &d.id), db_labels(INSTANCE));
    let data = pattern(3, 65536);
    {
        let a = db.attach_as(alice, &d.id, "atrest's db service").unwrap();
        a.write(4096, &data, true).unwrap();
    }
    let read = |disk: &str| {
        let a = db.attach_as(alice, disk, "atrest's db service").unwrap();
        let mut buf = vec![0u8; data.len()];
        a.read(4096, &mut buf).unwrap();
        buf
    };
    let snap = db.create_snapshot(alice, &d.id).unwrap();
    assert_eq!(snap.disk, d.id);
    assert_eq!(manager_of(&svc, &snap.id), db_labels(INSTANCE));
    let job = db.convert(alice, &d.id, true, Some(&key2)).unwrap();
    let start = Instant::now();
    let job = loop {
        let j = db.job(alice, &job.id).unwrap();
        if j.state != JobState::Running {
            break j;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the conversion hangs"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    let target = job.target.clone().unwrap();
    assert_eq!(manager_of(&svc, &target), db_labels(INSTANCE));
    assert!(
        !svc.engine()
            .disk(&target)
            .unwrap()
            .labels
            .contains_key("converting_from")
    );
    assert_eq!(read(&target), data);

    // The customer's lists leave all of it out.
    let disks: Vec<String> = svc
        .list_disks(alice)
        .unwrap()
        .into_iter()
        .map(|x| x.id)
        .collect();
    assert_eq!(disks, vec![own.id.clone()]);
    let snaps: Vec<String> = (svc.list_snapshots(alice).unwrap().into_iter())
        .map(|x| x.id)
        .collect();
    assert_eq!(snaps, vec![own_snap.id.clone()]);
    let jobs: Vec<String> = svc.list_jobs(alice).into_iter().map(|j| j.id).collect();
    assert_eq!(jobs, vec![own_job.id]);

    // Every customer operation on them is refused, naming the instance.
    let on_disk = format!("disk {}", d.id);
    let on_snap = format!("snapshot {}", snap.id);
    let on_target = format!("disk {target}");
    let on_job = format!("job {}", job.id);
    let refused: Vec<(&str, Result<(), ServiceError>, &str)> = vec![
        (
            "describe",
            svc.describe_disk(alice, &d.id).map(drop),
            &on_disk,
        ),
        ("check its key", svc.check_disk_key(alice, &d.id), &on_disk),
        ("attach", svc.attach(alice, &d.id).map(drop), &on_disk),
        (
            "attach as an NBD client",
            svc.attach_as(alice, &d.id, "nbd client at 10.0.0.9")
                .map(drop),
            &on_disk,
        ),
        (
            "snapshot",
            svc.create_snapshot(alice, &d.id).map(drop),
            &on_disk,
        ),
        (
            "rollback",
            svc.rollback(alice, &d.id, &snap.id).map(drop),
            &on_disk,
        ),
        (
            "rollback to its snapshot",
            svc.rollback(alice, &own.id, &snap.id).map(drop),
            &on_snap,
        ),
        (
            "resize",
            svc.resize(alice, &d.id, 4 << 20).map(drop),
            &on_disk,
        ),
        (
            "change its key",
            svc.change_key(alice, &d.id, &key2).map(drop),
            &on_disk,
        ),
        ("regrant", svc.regrant(alice, &d.id).map(drop), &on_disk),
        ("reencrypt", svc.reencrypt(alice, &d.id).map(drop), &on_disk),
        (
            "convert",
            svc.convert(alice, &d.id, false, None).map(drop),
            &on_disk,
        ),
        ("delete", svc.delete_disk(alice, &d.id), &on_disk),
        (
            "describe its snapshot",
            svc.describe_snapshot(alice, &snap.id).map(drop),
            &on_snap,
        ),
        (
            "clone its snapshot",
            svc.clone_snapshot(alice, &snap.id).map(drop),
            &on_snap,
        ),
        (
            "delete its snapshot",
            svc.delete_snapshot(alice, &snap.id),
            &on_snap,
        ),
        ("follow its job", svc.job(alice, &job.id).map(drop), &on_job),
        (
            "describe its copy",
            svc.describe_disk(alice, &target).map(drop),
            &on_target,
        ),
        (
            "attach its copy",
            svc.attach(alice, &target).map(drop),
            &on_target,
        ),
        (
            "delete its copy",
            svc.delete_disk(alice, &target),
            &on_target,
        ),
    ];
    for (what, r, resource) in refused {
        assert_managed(what, r, resource, INSTANCE);
    }
    // ... and changed nothing.
    let now = db.describe_disk(alice, &d.id).unwrap();
    assert_eq!(
        (now.size, now.key_arn.as_deref()),
        (2 << 20, Some(key.as_str()))
    );
    assert_eq!(now.state, "available");
    assert_eq!(read(&d.id), data);
    db.describe_disk(alice, &target).unwrap();
    assert_eq!(manager_of(&svc, &snap.id), db_labels(INSTANCE));

    // Another account finds nothing, on either path: not even that a
    // service manages it.
    let bob = bob(&e);
    let not_found: Vec<(&str, Result<(), ServiceError>)> = vec![
        ("describe", svc.describe_disk(&bob, &d.id).map(drop)),
        ("attach", svc.attach(&bob, &d.id).map(drop)),
        ("delete", svc.delete_disk(&bob, &d.id)),
        (
            "describe the snapshot",
            svc.describe_snapshot(&bob, &snap.id).map(drop),
        ),
        ("delete the snapshot", svc.delete_snapshot(&bob, &snap.id)),
        ("follow the job", svc.job(&bob, &job.id).map(drop)),
        ("manager: describe", db.describe_disk(&bob, &d.id).map(drop)),
        ("manager: attach", db.attach_as(&bob, &d.id, "x").map(drop)),
        ("manager: delete", db.delete_disk(&bob, &d.id)),
        ("manager: adopt", db.adopt(&bob, &d.id, INSTANCE).map(drop)),
        (
            "manager: delete the snapshot",
            db.delete_snapshot(&bob, &snap.id),
        ),
        ("manager: follow the job", db.job(&bob, &job.id).map(drop)),
    ];
    for (what, r) in not_found {
        assert_not_found(what, r);
    }
    // Another service is refused as the customer is.
    assert_managed(
        "another service",
        svc.managed("backup").describe_disk(alice, &d.id).map(drop),
        &on_disk,
        INSTANCE,
    );

    // The manager does each of its operations.
    db.check_disk_key(alice, &d.id).unwrap();
    assert_eq!(db.resize(alice, &d.id, 4 << 20).unwrap().size, 4 << 20);
    let moved = db.change_key(alice, &d.id, &key2).unwrap();
    assert_eq!(moved.key_arn.as_deref(), Some(key2.as_str()));
    assert_eq!(
        db.regrant(alice, &d.id).unwrap().key_arn.as_deref(),
        Some(key2.as_str())
    );
    assert_eq!(read(&d.id), data);
    let copy_for = "instance copy (db-00000000000000aa)";
    let copy = db.clone_snapshot(alice, &snap.id, copy_for).unwrap();
    assert_eq!(manager_of(&svc, &copy.id), db_labels(copy_for));
    assert_eq!(read(&copy.id), data);
    assert_managed(
        "describe the clone",
        svc.describe_disk(alice, &copy.id).map(drop),
        &format!("disk {}", copy.id),
        copy_for,
    );
    db.delete_snapshot(alice, &snap.id).unwrap();
    assert!(svc.engine().snapshot(&snap.id).is_err());
    for disk in [&copy.id, &target, &d.id] {
        db.delete_disk(alice, disk).unwrap();
        assert!(svc.engine().disk(disk).is_err(), "{disk}");
    }
    // The customer's own are untouched.
    assert_eq!(svc.list_disks(alice).unwrap().len(), 1);
    svc.describe_snapshot(alice, &own_snap.id).unwrap();
}

#[test]
fn a_previous_releases_disk_is_adopted_then_refused_to_the_customer() {
    let e = kms_env();
    let svc = e.service(config());
    let db = svc.managed("db");
    let alice = &e.alice;
    // A previous release's instance disk: an ordinary disk of the
    // customer's. Both paths use it until it is adopted.
    let legacy = svc.create_disk(alice, &encrypted(1 << 20, None)).unwrap();
    db.describe_disk(alice, &legacy.id).unwrap();
    db.check_disk_key(alice, &legacy.id).unwrap();
    svc.describe_disk(alice, &legacy.id).unwrap();

    // Not while the customer has it attached: the client is named.
    let a = svc
        .attach_as(alice, &legacy.id, "nbd client at 10.0.0.9")
        .unwrap();
    match db.adopt(alice, &legacy.id, INSTANCE) {
        Err(ServiceError::Disk(atrest_disk::DiskError::Conflict(m))) => {
            assert!(m.contains("nbd client at 10.0.0.9"), "{m}");
        }
        other => panic!("adopting a disk the customer holds: {other:?}"),
    }
    assert_eq!(manager_of(&svc, &legacy.id), (None, None));
    a.write(0, &pattern(4, 4096), true).unwrap();
    drop(a);
    // Bad descriptions are refused.
    for bad in ["", "a\nb", &"x".repeat(257)] {
        assert!(
            matches!(
                db.adopt(alice, &legacy.id, bad),
                Err(ServiceError::Disk(atrest_disk::DiskError::Invalid(_)))
            ),
            "{bad:?}"
        );
    }
    assert_eq!(manager_of(&svc, &legacy.id), (None, None));

    // The manager's own attachment does not stand in the way.
    let held = db
        .attach_as(alice, &legacy.id, "atrest's db service at this host")
        .unwrap();
    let v = db.adopt(alice, &legacy.id, INSTANCE).unwrap();
    assert_eq!(
        (v.id.as_str(), v.state.as_str()),
        (legacy.id.as_str(), "in-use")
    );
    assert_eq!(manager_of(&svc, &legacy.id), db_labels(INSTANCE));
    let mut buf = vec![0u8; 4096];
    held.read(0, &mut buf).unwrap();
    assert_eq!(buf, pattern(4, 4096));
    drop(held);

    // From now on the customer is refused and does not list it.
    let on_disk = format!("disk {}", legacy.id);
    assert_managed(
        "describe",
        svc.describe_disk(alice, &legacy.id).map(drop),
        &on_disk,
        INSTANCE,
    );
    assert_managed(
        "attach",
        svc.attach(alice, &legacy.id).map(drop),
        &on_disk,
        INSTANCE,
    );
    assert!(svc.list_disks(alice).unwrap().is_empty());
    // Adopting again renames what it is for.
    let renamed = "instance billing (db-0123456789abcdef)";
    db.adopt(alice, &legacy.id, renamed).unwrap();
    assert_managed(
        "describe after renaming",
        svc.describe_disk(alice, &legacy.id).map(drop),
        &on_disk,
        renamed,
    );
    // Another service cannot take it over.
    assert_managed(
        "adopt by another service",
        svc.managed("backup")
            .adopt(alice, &legacy.id, "x")
            .map(drop),
        &on_disk,
        renamed,
    );
    assert_eq!(manager_of(&svc, &legacy.id), db_labels(renamed));
}

// ----- snapshots in object storage (issue 21) ------------------------------

/// A service whose snapshots go to a local object store in `e.dir/objects`,
/// with their records in the engine's metadata file.
fn stored_service(e: &Env) -> Arc<DiskService> {
    stored_service_and_store(e).0
}

fn stored_service_and_store(e: &Env) -> (Arc<DiskService>, Arc<dyn Store>) {
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(&e.dir.path().join("meta.redb")).unwrap());
    let pool = Arc::new(FileStorage::open(&e.dir.path().join("pool")).unwrap());
    let engine = Engine::open(Arc::clone(&store), pool).unwrap();
    let svc = DiskService::start(Arc::clone(&e.kms), engine, config()).unwrap();
    svc.enable_object_store(
        atrest_diskservice::ObjectStores::one(objects(e)),
        Arc::clone(&store),
    )
    .unwrap();
    (svc, store)
}

fn objects(e: &Env) -> atrest_objstore::Objects {
    atrest_objstore::Objects::open(&atrest_objstore::StoreConfig {
        url: format!("file://{}", e.dir.path().join("objects").display()),
        endpoint: None,
        region: None,
        path_style: false,
    })
    .unwrap()
}

fn wait_stored(svc: &DiskService, who: &Caller, id: &str) -> atrest_diskservice::SnapshotView {
    let start = Instant::now();
    loop {
        let s = svc.describe_snapshot(who, id).unwrap();
        if s.state.as_deref() != Some("uploading") {
            return s;
        }
        if let Some(j) = &s.job {
            let job = svc.job(who, j).unwrap();
            if job.state == JobState::Failed {
                return s;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "upload of {id} hangs"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn restore_job(svc: &DiskService, who: &Caller, disk: &str) -> atrest_diskservice::Job {
    let j = svc
        .list_jobs(who)
        .into_iter()
        .find(|j| j.kind == atrest_diskservice::JobKind::Restore && j.disk == disk)
        .unwrap();
    wait_job(svc, who, &j.id)
}

fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in rd {
        let p = entry.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_snapshot_stored_in_object_storage_restores_and_its_objects_hold_no_plaintext() {
    let e = kms_env();
    let svc = stored_service(&e);
    let key = e.new_key();
    let size = 3 << 20; // not a multiple of the 512 KiB block
    let d = svc
        .create_disk(&e.alice, &encrypted(size + 4096, Some(&key)))
        .unwrap();
    let data = pattern(7, 1 << 20);
    let a = svc.attach(&e.alice, &d.id).unwrap();
    a.write(0, &data, false).unwrap();
    a.write(2 << 20, &data[..4096], false).unwrap();
    a.write(size, &data[..4096], false).unwrap(); // the last, partial block
    a.flush().unwrap();
    let want = {
        let mut b = vec![0u8; usize::try_from(a.size().unwrap()).unwrap()];
        a.read(0, &mut b).unwrap();
        b
    };
    drop(a);

    let s = svc.create_stored_snapshot(&e.alice, &d.id).unwrap();
    assert_eq!(s.storage, "object-store");
    let s = wait_stored(&svc, &e.alice, &s.id);
    assert_eq!(s.state.as_deref(), Some("available"), "{s:?}");
    // Three blocks, each sent once: 1 MiB; the chunk of the write at 2 MiB
    // (64 KiB: copy-on-write fills the rest with encrypted zeros); 4 KiB of
    // the last chunk (the disk ends there); headers and the manifest.
    let sent = s.uploaded_bytes.unwrap();
    let data_bytes = (1 << 20) + (64 << 10) + 4096;
    assert!(sent > data_bytes && sent < data_bytes + (8 << 10), "{sent}");
    // The upload's local snapshot is gone; only the stored one is listed.
    assert!(svc.engine().snapshots().unwrap().is_empty());
    let listed = svc.list_snapshots(&e.alice).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, s.id);

    svc.delete_disk(&e.alice, &d.id).unwrap();
    let r = svc.clone_snapshot(&e.alice, &s.id).unwrap();
    assert_eq!(r.state, "restoring");
    assert_eq!(
        restore_job(&svc, &e.alice, &r.id).state,
        JobState::Succeeded
    );
    assert_eq!(read_all(&svc, &e.alice, &r.id), want);

    // No plaintext in any object.
    let files = files_under(&e.dir.path().join("objects"));
    assert!(files.len() >= 4, "{files:?}"); // three blocks and a manifest
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        assert!(
            !bytes.windows(512).any(|w| w == &data[..512]),
            "{} holds plaintext",
            f.display()
        );
    }

    // The grant of the stored snapshot goes with it; its objects too.
    svc.delete_snapshot(&e.alice, &s.id).unwrap();
    let report = svc.collect_garbage().unwrap();
    assert!(matches!(
        svc.describe_snapshot(&e.alice, &s.id),
        Err(ServiceError::Disk(atrest_disk::DiskError::NotFound { .. }))
    ));
    let left = files_under(&e.dir.path().join("objects"));
    assert!(left.is_empty(), "{left:?} {report:?}");
}

#[test]
fn incremental_uploads_share_blocks_and_collection_keeps_what_a_snapshot_needs() {
    let e = kms_env();
    let svc = stored_service(&e);
    let d = svc
        .create_disk(&e.alice, &encrypted(8 << 20, None))
        .unwrap();
    let a = svc.attach(&e.alice, &d.id).unwrap();
    a.write(0, &pattern(1, 8 << 20), false).unwrap();
    a.flush().unwrap();
    let s1 = svc.create_stored_snapshot(&e.alice, &d.id).unwrap();
    let s1 = wait_stored(&svc, &e.alice, &s1.id);
    assert!(s1.uploaded_bytes.unwrap() >= 8 << 20);
    // One block changes: about one block is sent.
    a.write(3 << 20, &pattern(2, 4096), false).unwrap();
    a.flush().unwrap();
    let want = {
        let mut b = vec![0u8; 8 << 20];
        a.read(0, &mut b).unwrap();
        b
    };
    drop(a);
    let s2 = svc.create_stored_snapshot(&e.alice, &d.id).unwrap();
    let s2 = wait_stored(&svc, &e.alice, &s2.id);
    let sent = s2.uploaded_bytes.unwrap();
    assert!(sent > 512 << 10 && sent < 600 << 10, "{sent}");

    // Deleting the first keeps every block the second needs.
    svc.delete_snapshot(&e.alice, &s1.id).unwrap();
    let report = svc.collect_garbage().unwrap();
    assert_eq!(report.blocks_deleted, 1, "{report:?}");
    let r = svc.clone_snapshot(&e.alice, &s2.id).unwrap();
    assert_eq!(
        restore_job(&svc, &e.alice, &r.id).state,
        JobState::Succeeded
    );
    assert_eq!(read_all(&svc, &e.alice, &r.id), want);
    // A snapshot being restored from cannot be deleted meanwhile; after, it can.
    svc.delete_snapshot(&e.alice, &s2.id).unwrap();
    svc.collect_garbage().unwrap();
    assert!(files_under(&e.dir.path().join("objects/blocks")).is_empty());
}

#[test]
fn an_upload_cut_short_resumes_at_the_next_start() {
    let e = kms_env();
    let data = pattern(9, 4 << 20);
    let (disk, sid);
    {
        let svc = stored_service(&e);
        disk = svc
            .create_disk(&e.alice, &encrypted(4 << 20, None))
            .unwrap()
            .id;
        let a = svc.attach(&e.alice, &disk).unwrap();
        a.write(0, &data, false).unwrap();
        a.flush().unwrap();
        drop(a);
        // The store cannot take blocks: a file where their directory goes.
        std::fs::create_dir_all(e.dir.path().join("objects")).unwrap();
        std::fs::write(e.dir.path().join("objects/blocks"), b"in the way").unwrap();
        let s = svc.create_stored_snapshot(&e.alice, &disk).unwrap();
        sid = s.id;
        let s = wait_stored(&svc, &e.alice, &sid);
        assert_eq!(s.state.as_deref(), Some("uploading"), "{s:?}");
        let job = svc.job(&e.alice, s.job.as_deref().unwrap()).unwrap();
        assert_eq!(job.state, JobState::Failed);
        assert!(job.error.unwrap().contains("blocks/"), "names the object");
        // Not complete: a restore is refused.
        assert!(matches!(
            svc.clone_snapshot(&e.alice, &sid),
            Err(ServiceError::Disk(atrest_disk::DiskError::Conflict(_)))
        ));
    }
    std::fs::remove_file(e.dir.path().join("objects/blocks")).unwrap();
    let svc = stored_service(&e);
    let s = wait_stored(&svc, &e.alice, &sid);
    assert_eq!(s.state.as_deref(), Some("available"), "{s:?}");
    let r = svc.clone_snapshot(&e.alice, &sid).unwrap();
    assert_eq!(
        restore_job(&svc, &e.alice, &r.id).state,
        JobState::Succeeded
    );
    assert!(read_all(&svc, &e.alice, &r.id) == data);
}

#[test]
fn tampered_objects_fail_the_restore_naming_them_and_recovery_rebuilds_the_image() {
    let e = kms_env();
    let (svc, store) = stored_service_and_store(&e);
    let d = svc
        .create_disk(&e.alice, &encrypted(2 << 20, None))
        .unwrap();
    let data = pattern(5, 2 << 20);
    let a = svc.attach(&e.alice, &d.id).unwrap();
    a.write(0, &data, false).unwrap();
    a.flush().unwrap();
    drop(a);
    let s = svc.create_stored_snapshot(&e.alice, &d.id).unwrap();
    let s = wait_stored(&svc, &e.alice, &s.id);
    assert_eq!(s.state.as_deref(), Some("available"));

    // Recovery writes the plaintext image, from the objects, the records
    // and the key service; a store without the record knows nothing.
    let mut image = Vec::new();
    let n = svc
        .recover_stored(
            atrest_diskservice::ObjectStores::one(objects(&e)),
            Arc::clone(&store),
            &s.id,
            &mut image,
        )
        .unwrap();
    assert_eq!(n, 2 << 20);
    assert!(image == data);
    assert!(matches!(
        svc.recover_stored(
            atrest_diskservice::ObjectStores::one(objects(&e)),
            Arc::new(MemoryStore::new()),
            &s.id,
            &mut Vec::new()
        ),
        Err(ServiceError::Disk(atrest_disk::DiskError::NotFound { .. }))
    ));

    let blocks = files_under(&e.dir.path().join("objects/blocks"));
    let victim = &blocks[0];
    let mut bytes = std::fs::read(victim).unwrap();
    bytes[100] ^= 1;
    std::fs::write(victim, &bytes).unwrap();
    let r = svc.clone_snapshot(&e.alice, &s.id).unwrap();
    let j = restore_job(&svc, &e.alice, &r.id);
    assert_eq!(j.state, JobState::Failed);
    let name = victim.file_name().unwrap().to_str().unwrap();
    assert!(j.error.as_deref().unwrap().contains(name), "{j:?}");
    assert_eq!(
        svc.describe_disk(&e.alice, &r.id).unwrap().state,
        "restoring"
    );
    assert!(matches!(
        svc.attach(&e.alice, &r.id),
        Err(ServiceError::Disk(atrest_disk::DiskError::Conflict(_)))
    ));

    let manifest = e
        .dir
        .path()
        .join(format!("objects/snapshots/{}/manifest", s.id));
    let m = std::fs::read(&manifest).unwrap();
    std::fs::write(&manifest, &m[..m.len() / 2]).unwrap();
    match svc.clone_snapshot(&e.alice, &s.id) {
        Err(ServiceError::Corrupt(c)) => assert!(c.object.ends_with("manifest"), "{c}"),
        other => panic!("{other:?}"),
    }
}
