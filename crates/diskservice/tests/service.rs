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
    // With kms:CreateGrant it works.
    allow(&["kms:DescribeKey", "kms:CreateGrant"]);
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
    assert_eq!(svc.list_disks(&e.alice).unwrap().len(), 1);
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
