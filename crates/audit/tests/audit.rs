//! The audit log end to end: concurrency, tamper detection, crash recovery,
//! failing closed, queries.

#![allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use atrest_audit::{
    AuditError, AuditLog, Dir, Entry, Faults, Faulty, FileStorage, Filter, HEAD_FILE, LOG_FILE,
    Options, Record, Storage, VerifyReport, query_newest, verify, visit_oldest,
};
use atrest_crypto::SecretKey;

fn key() -> SecretKey<32> {
    SecretKey::from_slice(&[0x42; 32]).unwrap()
}

const OPS: [&str; 4] = ["Encrypt", "Decrypt", "GenerateDataKey", "CreateGrant"];

fn entry(i: usize) -> Entry {
    Entry {
        time: format!(
            "2026-11-22T07:{:02}:{:02}.{:03}Z",
            (i / 60) % 60,
            i % 60,
            i % 1000
        ),
        request_id: format!("req-{i}"),
        region: Some("us-east-1".into()),
        account: Some("111122223333".into()),
        principal: Some(format!("arn:aws:iam::111122223333:user/u{}", i % 3)),
        access_key_id: Some("AKIAIOSFODNN7EXAMPLE".into()),
        source: Some(format!("127.0.0.1:{}", 40000 + i % 1000)),
        operation: OPS[i % 4].into(),
        key_arn: (!i.is_multiple_of(6))
            .then(|| format!("arn:aws:kms:us-east-1:111122223333:key/k{}", i % 5)),
        via_service: (i.is_multiple_of(9)).then(|| "disk.atrest".into()),
        grant_id: None,
        context_keys: if i.is_multiple_of(2) {
            vec!["app".into(), "tenant".into()]
        } else {
            vec![]
        },
        result: if i.is_multiple_of(7) {
            "AccessDeniedException".into()
        } else {
            "Success".into()
        },
        ..Entry::default()
    }
}

/// A short entry, for tests that try every byte.
fn small(i: usize) -> Entry {
    Entry {
        time: format!("2026-11-22T07:00:{:02}.000Z", i % 60),
        request_id: format!("req-{i}"),
        operation: OPS[i % 4].into(),
        context_keys: vec!["app".into()],
        result: "Success".into(),
        ..Entry::default()
    }
}

/// The head synced before every acknowledgement, no commit pacing.
fn strict() -> Options {
    Options {
        commit_interval: Duration::ZERO,
        sync_interval: Duration::from_millis(1),
        head_sync_interval: Duration::ZERO,
        segment_bytes: 0,
        preallocate: 4096,
        faults: None,
    }
}

fn ok_report(good: u64) -> VerifyReport {
    VerifyReport {
        good,
        first_bad: None,
    }
}

fn lines(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join(LOG_FILE))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn write_lines(dir: &Path, lines: &[String]) {
    let mut s = lines.join("\n");
    if !lines.is_empty() {
        s.push('\n');
    }
    std::fs::write(dir.join(LOG_FILE), s).unwrap();
}

/// A log of `n` records in a fresh temp dir, closed.
fn make_log(n: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), &key()).unwrap();
    for i in 0..n {
        assert_eq!(log.append_blocking(entry(i)).unwrap(), i as u64 + 1);
    }
    drop(log);
    dir
}

/// The matching records, oldest first (`query_newest` reversed).
fn query(dir: &Path, filter: &Filter) -> Result<Vec<Record>, AuditError> {
    let mut out = query_newest(dir, filter)?;
    out.reverse();
    Ok(out)
}

fn mac_of(line: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    v["mac"].as_str().unwrap().to_string()
}

/// `line` with its mac replaced.
fn with_mac(line: &str, mac: &str) -> String {
    line.replace(&mac_of(line), mac)
}

fn seq_of(line: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    v["seq"].as_u64().unwrap()
}

#[test]
fn concurrent_appends_from_tasks_and_threads() {
    const TASKS: usize = 64;
    const PER_TASK: usize = 100;
    const THREADS: usize = 16;
    const PER_THREAD: usize = 225;
    const TOTAL: usize = TASKS * PER_TASK + THREADS * PER_THREAD;
    assert_eq!(TOTAL, 10_000);

    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(AuditLog::open(dir.path(), &key()).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();

    // Every append's (seq, request id), per appender in the order it ran.
    let results: Vec<Vec<(u64, String)>> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let log = Arc::clone(&log);
                s.spawn(move || {
                    (0..PER_THREAD)
                        .map(|k| {
                            let mut e = entry(k);
                            e.request_id = format!("thread-{t}-{k}");
                            let seq = log.append_blocking(e.clone()).unwrap();
                            (seq, e.request_id)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let tasks: Vec<Vec<(u64, String)>> = rt.block_on(async {
            let handles: Vec<_> = (0..TASKS)
                .map(|t| {
                    let log = Arc::clone(&log);
                    tokio::spawn(async move {
                        let mut out = Vec::new();
                        for k in 0..PER_TASK {
                            let mut e = entry(k);
                            e.request_id = format!("task-{t}-{k}");
                            let seq = log.append(e.clone()).await.unwrap();
                            out.push((seq, e.request_id));
                        }
                        out
                    })
                })
                .collect();
            let mut all = Vec::new();
            for h in handles {
                all.push(h.await.unwrap());
            }
            all
        });
        let mut all = tasks;
        for t in threads {
            all.push(t.join().unwrap());
        }
        all
    });

    // Each appender saw its own seqs increase: file order = ack order.
    for r in &results {
        assert!(r.windows(2).all(|w| w[0].0 < w[1].0));
    }
    let by_seq: BTreeMap<u64, String> = results.into_iter().flatten().collect();
    assert_eq!(by_seq.len(), TOTAL, "a seq was given twice");
    assert_eq!(
        by_seq.keys().copied().collect::<Vec<_>>(),
        (1..=TOTAL as u64).collect::<Vec<_>>()
    );

    let stats = log.stats();
    assert_eq!(stats.records, TOTAL as u64);
    assert_eq!(stats.last_seq, TOTAL as u64);
    assert!(stats.batches < TOTAL as u64, "no group commit: {stats:?}");
    eprintln!(
        "10,000 appends in {} batches (mean {:.1}, max {})",
        stats.batches,
        TOTAL as f64 / stats.batches as f64,
        stats.max_batch
    );
    drop(log);

    let file = lines(dir.path());
    assert_eq!(file.len(), TOTAL);
    for (i, line) in file.iter().enumerate() {
        let rec: Record = serde_json::from_str(line).unwrap();
        assert_eq!(rec.seq, i as u64 + 1);
        assert_eq!(by_seq[&rec.seq], rec.entry.request_id);
    }
    assert_eq!(verify(dir.path(), &key()).unwrap(), ok_report(TOTAL as u64));
    // And it reopens and continues the chain.
    let log = AuditLog::open(dir.path(), &key()).unwrap();
    assert_eq!(log.append_blocking(entry(0)).unwrap(), TOTAL as u64 + 1);
    drop(log);
    assert_eq!(
        verify(dir.path(), &key()).unwrap(),
        ok_report(TOTAL as u64 + 1)
    );
}

#[test]
fn verify_and_query_beside_a_live_writer() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(AuditLog::open(dir.path(), &key()).unwrap());
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        for t in 0..8 {
            let log = Arc::clone(&log);
            let done = &done;
            s.spawn(move || {
                for k in 0..300 {
                    log.append_blocking(entry(t * 1000 + k)).unwrap();
                }
                done.store(true, std::sync::atomic::Ordering::SeqCst);
            });
        }
        let mut runs = 0;
        let mut last = 0;
        while !done.load(std::sync::atomic::Ordering::SeqCst) || runs < 3 {
            let r = verify(dir.path(), &key()).unwrap();
            assert_eq!(r.first_bad, None, "live verify: {r:?}");
            assert!(r.good >= last);
            last = r.good;
            let q = query(dir.path(), &Filter::default()).unwrap();
            assert!(!q.is_empty() || last == 0);
            assert!(q.iter().enumerate().all(|(i, r)| r.seq == i as u64 + 1));
            runs += 1;
        }
    });
    drop(log);
    assert_eq!(verify(dir.path(), &key()).unwrap(), ok_report(2400));
}

#[test]
fn reopen_continues_and_a_second_writer_is_refused() {
    let dir = make_log(3);
    let log = AuditLog::open(dir.path(), &key()).unwrap();
    assert_eq!(log.stats().last_seq, 3);
    match AuditLog::open(dir.path(), &key()) {
        Err(AuditError::Io { reason, .. }) => assert!(reason.contains("already open"), "{reason}"),
        other => panic!("second writer: {other:?}"),
    }
    assert_eq!(log.append_blocking(entry(3)).unwrap(), 4);
    drop(log);
    assert_eq!(verify(dir.path(), &key()).unwrap(), ok_report(4));

    use std::os::unix::fs::PermissionsExt;
    for f in [LOG_FILE, HEAD_FILE] {
        let mode = std::fs::metadata(dir.path().join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    // A fresh, empty log verifies and queries empty.
    let empty = tempfile::tempdir().unwrap();
    drop(AuditLog::open(empty.path(), &key()).unwrap());
    assert_eq!(verify(empty.path(), &key()).unwrap(), ok_report(0));
    assert!(query(empty.path(), &Filter::default()).unwrap().is_empty());
    // No log at all is an error, not an empty report.
    let none = tempfile::tempdir().unwrap();
    assert!(verify(none.path(), &key()).is_err());
    assert!(query(none.path(), &Filter::default()).is_err());
}

// ---------------------------------------------------------------------------
// Tampering.

/// Applies `edit` to the files of a 20-record log and checks that verify
/// names line `bad` (0: the head file) with a reason containing `why`, and
/// that open refuses the log with the same line.
fn tamper_raw(name: &str, edit: impl FnOnce(&Path), bad: u64, why: &str) {
    let dir = make_log(20);
    edit(dir.path());
    let report = verify(dir.path(), &key()).unwrap();
    let Some((line, reason)) = &report.first_bad else {
        panic!("{name}: not detected: {report:?}");
    };
    assert_eq!(*line, bad, "{name}: {reason}");
    assert!(reason.contains(why), "{name}: {reason}");
    if bad > 0 {
        assert_eq!(report.good, bad - 1, "{name}");
    }
    match AuditLog::open(dir.path(), &key()) {
        Err(AuditError::Damaged { seq, reason, .. }) => {
            assert_eq!(seq, bad, "{name}: {reason}");
            assert!(reason.contains(why), "{name}: {reason}");
        }
        other => panic!("{name}: open did not refuse: {other:?}"),
    }
}

/// [`tamper_raw`] with an edit of the log's lines.
fn tamper(name: &str, edit: impl FnOnce(&Path, &mut Vec<String>), bad: u64, why: &str) {
    tamper_raw(
        name,
        |d| {
            let mut l = lines(d);
            edit(d, &mut l);
            write_lines(d, &l);
        },
        bad,
        why,
    );
}

#[test]
fn tampering_is_detected_by_verify_and_open() {
    const BAD_MAC: &str = "bad MAC";
    tamper(
        "edit a value",
        |_, l| l[6] = l[6].replace("Success", "Failure"),
        7,
        BAD_MAC,
    );
    tamper(
        "edit an error into success",
        |_, l| {
            assert!(l[7].contains("AccessDeniedException"));
            l[7] = l[7].replace("AccessDeniedException", "Success");
        },
        8,
        BAD_MAC,
    );
    tamper(
        "add whitespace",
        |_, l| l[4] = l[4].replace(",\"time\"", ", \"time\""),
        5,
        BAD_MAC,
    );
    tamper(
        "reorder fields",
        |_, l| {
            // Swap `"time":...,` and `"request_id":...,`: same JSON value.
            let t = l[9].find("\"time\":").unwrap();
            let r = l[9].find("\"request_id\":").unwrap();
            let a = l[9].find("\"region\":").unwrap();
            let swapped = format!("{}{}{}{}", &l[9][..t], &l[9][r..a], &l[9][t..r], &l[9][a..]);
            let before: serde_json::Value = serde_json::from_str(&l[9]).unwrap();
            let after: serde_json::Value = serde_json::from_str(&swapped).unwrap();
            assert_eq!(before, after);
            l[9] = swapped;
        },
        10,
        BAD_MAC,
    );
    tamper(
        "change seq",
        |_, l| l[11] = l[11].replacen("\"seq\":12", "\"seq\":13", 1),
        12,
        BAD_MAC,
    );
    tamper(
        "edit the first",
        |_, l| l[0] = l[0].replace("req-0", "req-x"),
        1,
        BAD_MAC,
    );
    tamper(
        "edit the last",
        |_, l| l[19] = l[19].replace("req-19", "req-x"),
        20,
        BAD_MAC,
    );
    tamper(
        "delete the first",
        |_, l| drop(l.remove(0)),
        1,
        "expected seq 1, found 2",
    );
    tamper(
        "delete one in the middle",
        |_, l| drop(l.remove(9)),
        10,
        "expected seq 10, found 11",
    );
    tamper("delete the last", |_, l| drop(l.pop()), 20, "missing");
    tamper(
        "delete the last three",
        |_, l| l.truncate(17),
        18,
        "missing",
    );
    tamper("delete them all", |_, l| l.clear(), 1, "missing");
    tamper(
        "swap two",
        |_, l| l.swap(4, 5),
        5,
        "expected seq 5, found 6",
    );
    tamper(
        "swap the last two",
        |_, l| l.swap(18, 19),
        19,
        "expected seq 19, found 20",
    );
    tamper(
        "duplicate one",
        |_, l| {
            let d = l[7].clone();
            l.insert(8, d);
        },
        9,
        "expected seq 9, found 8",
    );
    tamper(
        "insert a forged record",
        |_, l| {
            // Well formed, right seq and prev, but a MAC made up without the key.
            let genuine = l[8].clone();
            let forged = with_mac(&genuine.replace("req-8", "forged"), &"ab".repeat(32));
            l.insert(8, forged);
        },
        9,
        BAD_MAC,
    );
    tamper(
        "splice in a record from another log with the same key",
        |_, l| {
            let other = tempfile::tempdir().unwrap();
            let log = AuditLog::open(other.path(), &key()).unwrap();
            for i in 100..120 {
                log.append_blocking(entry(i)).unwrap();
            }
            drop(log);
            l[8] = lines(other.path())[8].clone();
        },
        9,
        "prev does not match",
    );
    tamper(
        "cut the last line short",
        |_, l| {
            let last = l.pop().unwrap();
            l.push(last[..last.len() - 1].to_string());
        },
        20,
        "unparsable",
    );
    tamper_raw(
        "remove the final newline",
        |d| {
            let mut b = std::fs::read(d.join(LOG_FILE)).unwrap();
            assert_eq!(b.pop(), Some(b'\n'));
            std::fs::write(d.join(LOG_FILE), &b).unwrap();
        },
        20,
        "incomplete line",
    );
    tamper(
        "garbage line",
        |_, l| l[3] = "hello".into(),
        4,
        "unparsable",
    );
    tamper(
        "blank line",
        |_, l| l.insert(3, String::new()),
        4,
        "unparsable",
    );
    tamper(
        "append a forged record after the head",
        |_, l| {
            let last = l[19].clone();
            let mac20 = mac_of(&last);
            let prev20 = serde_json::from_str::<serde_json::Value>(&last).unwrap()["prev"]
                .as_str()
                .unwrap()
                .to_string();
            let next = last
                .replacen("\"seq\":20,", "\"seq\":21,", 1)
                .replace(&prev20, &mac20);
            l.push(with_mac(&next, &"cd".repeat(32)));
        },
        21,
        BAD_MAC,
    );
    tamper(
        "append a copy of a record after the head",
        |_, l| l.push(l[19].clone()),
        21,
        "expected seq 21, found 20",
    );

    // The head file.
    tamper(
        "edit the head",
        |d, _| {
            let p = d.join(HEAD_FILE);
            let h = std::fs::read_to_string(&p).unwrap();
            let edited = h.replace("00000000000000000020", "00000000000000000019");
            assert_ne!(h, edited);
            std::fs::write(&p, edited).unwrap();
        },
        0,
        "bad tag",
    );
    tamper(
        "delete the head",
        |d, _| std::fs::remove_file(d.join(HEAD_FILE)).unwrap(),
        0,
        "missing",
    );
    tamper(
        "head from another log",
        |d, _| {
            let other = tempfile::tempdir().unwrap();
            let log = AuditLog::open(other.path(), &key()).unwrap();
            for i in 100..120 {
                log.append_blocking(entry(i)).unwrap();
            }
            drop(log);
            std::fs::copy(other.path().join(HEAD_FILE), d.join(HEAD_FILE)).unwrap();
        },
        20,
        "differs from the one audit.head names",
    );
    tamper(
        "delete the last record and rewind the head (without the key)",
        |d, l| {
            l.pop();
            let p = d.join(HEAD_FILE);
            let h = std::fs::read_to_string(&p).unwrap();
            let mac19 = mac_of(&l[18]);
            let parts: Vec<&str> = h.trim_end().split(' ').collect();
            let forged = format!(
                "{} {} {:020} {} {}\n",
                parts[0], parts[1], 19, mac19, parts[4]
            );
            std::fs::write(&p, forged).unwrap();
        },
        0,
        "bad tag",
    );

    // The wrong key finds the very first record bad.
    let dir = make_log(3);
    let other = SecretKey::from_slice(&[1; 32]).unwrap();
    let r = verify(dir.path(), &other).unwrap();
    assert_eq!(r.good, 0);
    assert_eq!(r.first_bad.unwrap().0, 1);
}

// ---------------------------------------------------------------------------
// An in-memory storage with a power switch, to simulate crashes.

#[derive(Clone)]
enum Op {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

fn apply(buf: &mut Vec<u8>, op: &Op) {
    match op {
        Op::Write(off, data) => {
            let off = *off as usize;
            if buf.len() < off + data.len() {
                buf.resize(off + data.len(), 0);
            }
            buf[off..off + data.len()].copy_from_slice(data);
        }
        Op::SetLen(len) => buf.resize(*len as usize, 0),
    }
}

#[derive(Default)]
struct Power {
    ops: u64,
    cut_at: Option<u64>,
    dead: bool,
}

#[derive(Default)]
struct MemState {
    durable: Vec<u8>,
    current: Vec<u8>,
    unsynced: Vec<Op>,
    writes: Vec<(u64, Vec<u8>)>,
    synced_images: Vec<Vec<u8>>,
    hold_sync: bool,
    /// Whether a sync is waiting on `hold_sync` now.
    held: bool,
}

/// How a write is mangled by a power cut.
type Tear<'a> = &'a dyn Fn(&[u8]) -> Vec<u8>;

#[derive(Clone)]
struct Mem {
    name: String,
    state: Arc<(Mutex<MemState>, Condvar)>,
    power: Arc<Mutex<Power>>,
}

impl Mem {
    fn new(name: &str, power: &Arc<Mutex<Power>>, content: Vec<u8>) -> Self {
        let state = MemState {
            durable: content.clone(),
            current: content,
            ..MemState::default()
        };
        Self {
            name: name.to_owned(),
            state: Arc::new((Mutex::new(state), Condvar::new())),
            power: Arc::clone(power),
        }
    }

    /// Counts a mutating operation; false once the power is off.
    fn tick(&self) -> bool {
        let mut p = self.power.lock().unwrap();
        if p.dead {
            return false;
        }
        p.ops += 1;
        if p.cut_at == Some(p.ops) {
            p.dead = true;
        }
        true
    }

    fn dead(&self) -> bool {
        self.power.lock().unwrap().dead
    }

    fn current(&self) -> Vec<u8> {
        self.state.0.lock().unwrap().current.clone()
    }

    fn set_hold(&self, on: bool) {
        self.state.0.lock().unwrap().hold_sync = on;
        self.state.1.notify_all();
    }

    /// What survives a power cut: the durable bytes, then the first `keep`
    /// unsynced operations, then (if `torn`) the next write mangled by it.
    fn crash_image(&self, keep: usize, torn: Option<Tear<'_>>) -> Vec<u8> {
        let s = self.state.0.lock().unwrap();
        let mut img = s.durable.clone();
        for op in s.unsynced.iter().take(keep) {
            apply(&mut img, op);
        }
        if let (Some(tear), Some(Op::Write(off, data))) = (torn, s.unsynced.get(keep)) {
            apply(&mut img, &Op::Write(*off, tear(data)));
        }
        img
    }

    fn unsynced_ops(&self) -> usize {
        self.state.0.lock().unwrap().unsynced.len()
    }
}

fn power_off() -> io::Error {
    io::Error::other("power is off")
}

impl Storage for Mem {
    fn len(&self) -> io::Result<u64> {
        Ok(self.state.0.lock().unwrap().current.len() as u64)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let s = self.state.0.lock().unwrap();
        let off = (offset as usize).min(s.current.len());
        let n = buf.len().min(s.current.len() - off);
        buf[..n].copy_from_slice(&s.current[off..off + n]);
        Ok(n)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        if !self.tick() {
            return Err(power_off());
        }
        let mut s = self.state.0.lock().unwrap();
        let op = Op::Write(offset, data.to_vec());
        apply(&mut s.current, &op);
        s.unsynced.push(op);
        s.writes.push((offset, data.to_vec()));
        drop(s);
        // The write at the cut reached the page cache (and maybe, torn, the
        // disk), but the process dies before it learns so.
        if self.dead() {
            Err(power_off())
        } else {
            Ok(())
        }
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        if !self.tick() || self.dead() {
            return Err(power_off());
        }
        let mut s = self.state.0.lock().unwrap();
        let op = Op::SetLen(len);
        apply(&mut s.current, &op);
        s.unsynced.push(op);
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        {
            let (lock, cvar) = &*self.state;
            let mut s = lock.lock().unwrap();
            while s.hold_sync {
                s.held = true;
                s = cvar.wait(s).unwrap();
            }
            s.held = false;
        }
        if !self.tick() || self.dead() {
            return Err(power_off());
        }
        let mut s = self.state.0.lock().unwrap();
        s.durable = s.current.clone();
        s.unsynced.clear();
        let img = s.durable.clone();
        s.synced_images.push(img);
        Ok(())
    }

    fn name(&self) -> String {
        self.name.clone()
    }
}

fn fresh_power() -> Arc<Mutex<Power>> {
    Arc::new(Mutex::new(Power::default()))
}

/// Opens a log on copies of `log` and `head`.
fn open_images(log: &[u8], head: &[u8]) -> Result<(AuditLog, Mem, Mem), AuditError> {
    let p = fresh_power();
    let l = Mem::new("audit.log", &p, log.to_vec());
    let h = Mem::new("audit.head", &p, head.to_vec());
    AuditLog::open_with(l.clone(), h.clone(), &key(), &Options::default()).map(|a| (a, l, h))
}

/// Writes images to a temp dir and runs `verify` on them.
fn verify_images(log: &[u8], head: &[u8]) -> VerifyReport {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(LOG_FILE), log).unwrap();
    std::fs::write(dir.path().join(HEAD_FILE), head).unwrap();
    verify(dir.path(), &key()).unwrap()
}

fn count_lines(b: &[u8]) -> u64 {
    b.iter().filter(|&&c| c == b'\n').count() as u64
}

#[test]
fn torn_last_write_at_every_byte_recovers_every_acknowledged_record() {
    let p = fresh_power();
    let log_mem = Mem::new("audit.log", &p, Vec::new());
    let head_mem = Mem::new("audit.head", &p, Vec::new());
    let log = Arc::new(
        AuditLog::open_with(log_mem.clone(), head_mem.clone(), &key(), &strict()).unwrap(),
    );
    for i in 0..3 {
        log.append_blocking(small(i)).unwrap();
    }
    // Hold the syncer in the log sync of record 4, append five more,
    // release: the five, written one after the other meanwhile, form the
    // last batch, made durable by one sync.
    log_mem.set_hold(true);
    let writes_before = log_mem.state.0.lock().unwrap().writes.len();
    std::thread::scope(|s| {
        let l = Arc::clone(&log);
        s.spawn(move || assert_eq!(l.append_blocking(small(3)).unwrap(), 4));
        // Once the syncer waits in record 4's sync, its batch is record 4
        // alone (waiting for the write only let a quick sixth append slip
        // into that batch, and the head then named record 5).
        while !log_mem.state.0.lock().unwrap().held {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(log_mem.state.0.lock().unwrap().writes.len() > writes_before);
        for i in 4..9 {
            let l = Arc::clone(&log);
            s.spawn(move || l.append_blocking(small(i)).unwrap());
        }
        // Release only once the five are written (on a loaded machine a
        // fixed pause let the batch split, and the head then named one of
        // them).
        let records_written = || {
            let st = log_mem.state.0.lock().unwrap();
            st.writes[writes_before..]
                .iter()
                .filter(|(_, d)| d.first() == Some(&b'{'))
                .count()
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while records_written() < 6 {
            assert!(
                Instant::now() < deadline,
                "the five appends were not written"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        log_mem.set_hold(false);
    });
    assert_eq!(log.stats().last_seq, 9);
    drop(log);

    // The bytes the last five record writes put down, one after the other
    // (a crash keeps a prefix of them, or tears a hole in them).
    let (pre, last) = {
        let s = log_mem.state.0.lock().unwrap();
        let records: Vec<&(u64, Vec<u8>)> = s
            .writes
            .iter()
            .filter(|(_, d)| d.first() == Some(&b'{'))
            .collect();
        let five = &records[records.len() - 5..];
        for w in five.windows(2) {
            assert_eq!(w[0].0 + w[0].1.len() as u64, w[1].0, "not contiguous");
        }
        let off = five[0].0 as usize;
        let last: Vec<u8> = five.iter().flat_map(|(_, d)| d.clone()).collect();
        (s.current[..off].to_vec(), last)
    };
    assert_eq!(
        count_lines(&last),
        5,
        "the last batch is not the five queued records"
    );
    assert_eq!(count_lines(&pre), 4);
    // The heads naming record 4 and record 9, as synced. Chosen by the seq
    // they name (bytes 21..41 of the head), not by their place: on a loaded
    // machine the syncer may write a head more between them (record 4's
    // sync returning after some of the five were written), and the
    // scenario is "the head still names record 4".
    let head_naming = |seq: u64| {
        let s = head_mem.state.0.lock().unwrap();
        s.synced_images
            .iter()
            .rev()
            .find(|img| img.get(21..41) == Some(format!("{seq:020}").as_bytes()))
            .unwrap_or_else(|| {
                let named: Vec<String> = s
                    .synced_images
                    .iter()
                    .map(|i| {
                        String::from_utf8_lossy(i.get(21..41).unwrap_or_default()).into_owned()
                    })
                    .collect();
                panic!("no head names record {seq}: {named:?}")
            })
            .clone()
    };
    let (head_prev, head_last) = (head_naming(4), head_naming(9));

    // On disk, the live log ends in zeros preallocated up to 4 KiB (closing
    // the log cut them away, so put them back).
    let tail = 4096 - pre.len() - last.len();
    let image = |cut: &[u8], _full: bool| {
        let mut img = pre.clone();
        img.extend_from_slice(cut);
        img.resize(pre.len() + last.len() + tail, 0);
        img
    };

    // Appending after recovery and verifying through files are the slow
    // parts: do them at every line end and every 8th byte.
    let check = |img: &[u8], head: &[u8], expect: u64, what: &str, full: bool| {
        let (log, l, h) = open_images(img, head).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(log.stats().last_seq, expect, "{what}");
        // Nothing acknowledged is lost: the first four records are intact.
        assert_eq!(&l.current()[..pre.len()], &pre[..], "{what}");
        if full {
            assert_eq!(
                log.append_blocking(entry(99)).unwrap(),
                expect + 1,
                "{what}"
            );
            drop(log);
            assert_eq!(
                verify_images(&l.current(), &h.current()),
                ok_report(expect + 1),
                "{what}"
            );
        }
    };

    for cut in 0..=last.len() {
        let complete = count_lines(&last[..cut]);
        let full = cut.is_multiple_of(8) || cut == 0 || last[cut - 1] == b'\n';
        // The write cut short: the head still names record 4.
        let img = image(&last[..cut], full);
        check(
            &img,
            &head_prev,
            4 + complete,
            &format!("cut at {cut}"),
            full,
        );
        // Before open repairs it, verify passes (an incomplete last line after
        // the head is a write in progress).
        if full {
            assert_eq!(
                verify_images(&img, &head_prev),
                ok_report(4 + complete),
                "cut {cut}"
            );
        }
        // A hole of zeros inside the write (blocks written out of order):
        // the line holding it and everything after are cut.
        if cut < last.len() && full {
            let mut torn = last.clone();
            let end = (cut + 37).min(last.len());
            torn[cut..end].fill(0);
            check(
                &image(&torn, full),
                &head_prev,
                4 + complete,
                &format!("hole at {cut}"),
                full,
            );
        }
    }
    // Synced log, head not yet updated: the durable records are kept.
    check(&image(&last, true), &head_prev, 9, "head not updated", true);
    check(&image(&last, true), &head_last, 9, "clean", true);
    // Without the zero tail (a log closed cleanly) too.
    let mut full = pre.clone();
    full.extend_from_slice(&last);
    check(&full, &head_last, 9, "trimmed", true);
    // A head naming records the log lacks is damage, not a crash.
    let mut img = pre.clone();
    img.extend_from_slice(&last[..last.len() - 1]);
    assert!(matches!(
        open_images(&img, &head_last),
        Err(AuditError::Damaged { seq: 9, .. })
    ));
}

/// A tiny deterministic PRNG (xorshift64*).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

#[test]
fn power_cut_at_any_operation_loses_no_acknowledged_record() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for trial in 0..150u64 {
        let p = fresh_power();
        // Each batch is 4 operations (write, sync, head write, head sync),
        // plus 2 at open; 40 appends make at most 162.
        p.lock().unwrap().cut_at = Some(1 + rng.below(120));
        let log_mem = Mem::new("audit.log", &p, Vec::new());
        let head_mem = Mem::new("audit.head", &p, Vec::new());
        // Half the trials sync the head before acknowledging; the others
        // sync it lazily (soon, so that it happens during the trial) and
        // sometimes pace commits. In those, half the appenders are answered
        // once their record is written, before it is durable.
        let lazy = trial % 2 == 1;
        let options = if !lazy {
            strict()
        } else {
            Options {
                commit_interval: Duration::from_micros(rng.below(2) * 500),
                sync_interval: Duration::from_micros(100 + rng.below(2000)),
                head_sync_interval: Duration::from_micros(100 + rng.below(1000)),
                segment_bytes: 0,
                preallocate: [0, 512, 4096][rng.below(3) as usize],
                faults: None,
            }
        };
        // (seq, request id, answered only once durable)
        let acked: Vec<(u64, String, bool)> =
            match AuditLog::open_with(log_mem.clone(), head_mem.clone(), &key(), &options) {
                Err(_) => Vec::new(),
                Ok(log) => {
                    let log = Arc::new(log);
                    let acked = std::thread::scope(|s| {
                        let hs: Vec<_> = (0..4)
                            .map(|t| {
                                let log = Arc::clone(&log);
                                s.spawn(move || {
                                    let mut ok = Vec::new();
                                    let mut failed = false;
                                    let durable = !lazy || t % 2 == 0;
                                    for k in 0..10 {
                                        let mut e = entry(k);
                                        e.request_id = format!("t{t}-{k}");
                                        let r = if durable {
                                            log.append_blocking(e.clone())
                                        } else {
                                            log.append_written(&e)
                                        };
                                        match r {
                                            Ok(seq) => {
                                                assert!(!failed, "Ok after an error");
                                                ok.push((seq, e.request_id, durable));
                                            }
                                            Err(_) => failed = true,
                                        }
                                    }
                                    ok
                                })
                            })
                            .collect();
                        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
                    });
                    drop(log);
                    acked
                }
            };

        // What the disks hold after the cut.
        let keep = rng.below(log_mem.unsynced_ops() as u64 + 1) as usize;
        let tear_at = rng.next();
        let hole = rng.next().is_multiple_of(2);
        let tear = move |d: &[u8]| -> Vec<u8> {
            let cut = (tear_at % (d.len() as u64 + 1)) as usize;
            if hole {
                let mut v = d.to_vec();
                let end = (cut + 100).min(v.len());
                v[cut..end].fill(0);
                v
            } else {
                d[..cut].to_vec()
            }
        };
        let log_img = log_mem.crash_image(keep, Some(&tear));
        let head_keep = rng.below(head_mem.unsynced_ops() as u64 + 1) as usize;
        let head_img = head_mem.crash_image(head_keep, None);

        let (log, l, h) = open_images(&log_img, &head_img)
            .unwrap_or_else(|e| panic!("trial {trial}: reopen failed: {e}"));
        let last = log.stats().last_seq;
        // No record answered as durable is lost; records answered once
        // written may be, but only from the end: every record before a
        // durable one was durable with it.
        let max_acked = acked.iter().filter(|a| a.2).map(|a| a.0).max().unwrap_or(0);
        assert!(
            last >= max_acked,
            "trial {trial}: lost records: {last} < {max_acked}"
        );
        let recovered = String::from_utf8(l.current()).unwrap();
        let ids: Vec<String> = recovered
            .lines()
            .map(|line| {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                v["request_id"].as_str().unwrap().to_string()
            })
            .collect();
        for (seq, id, _) in acked.iter().filter(|a| a.0 <= last) {
            assert_eq!(&ids[*seq as usize - 1], id, "trial {trial}: record {seq}");
        }
        assert_eq!(log.append_blocking(entry(0)).unwrap(), last + 1);
        let (lb, hb) = (l.current(), h.current());
        drop(log);
        assert_eq!(
            verify_images(&lb, &hb),
            ok_report(last + 1),
            "trial {trial}"
        );
    }
}

// ---------------------------------------------------------------------------
// Failing closed.

/// A log file's bytes without a tail of zeros.
fn records_part(mut b: Vec<u8>) -> Vec<u8> {
    while b.last() == Some(&0) {
        b.pop();
    }
    b
}

fn fail_closed(options: &Options, fail: impl Fn(&Faults, bool)) {
    let dir = make_log(5);
    let faults = Faults::new();
    let options = Options {
        faults: Some(faults.clone()),
        ..options.clone()
    };
    let log = Arc::new(AuditLog::open_with_options(dir.path(), &key(), &options).unwrap());
    assert_eq!(log.append_blocking(entry(5)).unwrap(), 6);
    // The live log ends in preallocated zeros: compare what precedes them.
    let before_log = records_part(std::fs::read(dir.path().join(LOG_FILE)).unwrap());
    let before_head = std::fs::read(dir.path().join(HEAD_FILE)).unwrap();

    fail(&faults, true);
    // Several appenders at once: every one fails.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let results = rt.block_on(async {
        let hs: Vec<_> = (0..20)
            .map(|i| {
                let log = Arc::clone(&log);
                tokio::spawn(async move { log.append(entry(100 + i)).await })
            })
            .collect();
        let mut out = Vec::new();
        for h in hs {
            out.push(h.await.unwrap());
        }
        out
    });
    assert!(results.iter().all(Result::is_err), "{results:?}");
    assert!(
        results
            .iter()
            .any(|r| matches!(r, Err(AuditError::Io { .. }))),
        "{results:?}"
    );
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Err(AuditError::Io { .. } | AuditError::Closed(_)))),
        "{results:?}"
    );
    // The storage works again, but the log stays closed.
    fail(&faults, false);
    assert!(matches!(
        log.append_blocking(entry(200)),
        Err(AuditError::Closed(_))
    ));
    assert!(matches!(
        rt.block_on(log.append(entry(201))),
        Err(AuditError::Closed(_))
    ));
    assert!(log.stats().failed.is_some());
    assert_eq!(log.stats().last_seq, 6);
    // Nothing was added.
    let after_log = records_part(std::fs::read(dir.path().join(LOG_FILE)).unwrap());
    assert!(after_log == before_log, "the log changed");
    assert!(
        std::fs::read(dir.path().join(HEAD_FILE)).unwrap() == before_head,
        "the head changed"
    );
    drop(log);
    assert_eq!(verify(dir.path(), &key()).unwrap(), ok_report(6));
    // Reopened, it carries on.
    let log = AuditLog::open(dir.path(), &key()).unwrap();
    assert_eq!(log.append_blocking(entry(6)).unwrap(), 7);
}

#[test]
fn a_failed_write_fails_closed() {
    fail_closed(&strict(), |f, on| f.fail_writes(on));
    fail_closed(&Options::default(), |f, on| f.fail_writes(on));
}

#[test]
fn a_failed_sync_fails_closed() {
    fail_closed(&strict(), |f, on| f.fail_syncs(on));
    fail_closed(&Options::default(), |f, on| f.fail_syncs(on));
}

#[test]
fn a_failed_head_update_fails_closed_and_reopen_keeps_the_durable_record() {
    let dir = make_log(2);
    let (log_file, _) = FileStorage::open(&dir.path().join(LOG_FILE)).unwrap();
    let (head_file, _) = FileStorage::open(&dir.path().join(HEAD_FILE)).unwrap();
    let faults = Faults::new();
    let log = AuditLog::open_with(
        log_file,
        Faulty::new(head_file, faults.clone()),
        &key(),
        &strict(),
    )
    .unwrap();
    faults.fail_syncs(true);
    assert!(matches!(
        log.append_blocking(entry(2)),
        Err(AuditError::Io { .. })
    ));
    assert!(matches!(
        log.append_blocking(entry(3)),
        Err(AuditError::Closed(_))
    ));
    drop(log);
    // The record reached the log (synced) but was not acknowledged; reopening
    // keeps it and moves the head to it.
    let log = AuditLog::open(dir.path(), &key()).unwrap();
    assert_eq!(log.stats().last_seq, 3);
    drop(log);
    assert_eq!(verify(dir.path(), &key()).unwrap(), ok_report(3));
}

#[test]
fn a_failed_write_during_a_sync_keeps_what_the_head_may_name() {
    let p = fresh_power();
    let log_mem = Mem::new("audit.log", &p, Vec::new());
    let head_mem = Mem::new("audit.head", &p, Vec::new());
    let faults = Faults::new();
    let log = AuditLog::open_with(
        Faulty::new(log_mem.clone(), faults.clone()),
        head_mem.clone(),
        &key(),
        &strict(),
    )
    .unwrap();
    // The syncer is held in the log sync of record 1 when another append's
    // write fails (a full disk: the cut back still works).
    log_mem.set_hold(true);
    std::thread::scope(|s| {
        let h = s.spawn(|| log.append_blocking(entry(0)));
        while log_mem.state.0.lock().unwrap().writes.is_empty() {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(50));
        faults.fail_data_writes(true);
        // The failing append's cut syncs the log too: release the hold soon.
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(100));
            log_mem.set_hold(false);
        });
        assert!(matches!(
            log.append_written(&entry(1)),
            Err(AuditError::Io { .. })
        ));
        faults.fail_data_writes(false);
        assert!(h.join().unwrap().is_err());
    });
    drop(log);
    // The sync went on and the head names record 1: the cut kept it, so the
    // log reopens (a head naming a missing record would be damage).
    let (again, _, _) = open_images(&log_mem.current(), &head_mem.current()).unwrap();
    assert_eq!(again.stats().last_seq, 1);
}

#[test]
fn a_failed_lazy_head_sync_stops_the_log() {
    let dir = make_log(2);
    let (log_file, _) = FileStorage::open(&dir.path().join(LOG_FILE)).unwrap();
    let (head_file, _) = FileStorage::open(&dir.path().join(HEAD_FILE)).unwrap();
    let faults = Faults::new();
    let options = Options {
        head_sync_interval: Duration::from_millis(20),
        ..Options::default()
    };
    let log = AuditLog::open_with(
        log_file,
        Faulty::new(head_file, faults.clone()),
        &key(),
        &options,
    )
    .unwrap();
    faults.fail_syncs(true);
    // The record is durable in the log and the head is written: acknowledged.
    assert_eq!(log.append_blocking(entry(2)).unwrap(), 3);
    // The head's sync, due 20 ms later, fails: the log stops.
    std::thread::sleep(Duration::from_millis(200));
    assert!(log.stats().failed.is_some());
    assert!(matches!(
        log.append_blocking(entry(3)),
        Err(AuditError::Closed(_))
    ));
    drop(log);
    assert_eq!(verify(dir.path(), &key()).unwrap(), ok_report(3));
}

#[test]
fn the_head_is_synced_lazily_and_at_close() {
    let p = fresh_power();
    let log_mem = Mem::new("audit.log", &p, Vec::new());
    let head_mem = Mem::new("audit.head", &p, Vec::new());
    let options = Options {
        commit_interval: Duration::ZERO,
        sync_interval: Duration::from_millis(10),
        head_sync_interval: Duration::from_secs(3600),
        segment_bytes: 0,
        preallocate: 4096,
        faults: None,
    };
    let log = AuditLog::open_with(log_mem.clone(), head_mem.clone(), &key(), &options).unwrap();
    for i in 0..5 {
        log.append_blocking(entry(i)).unwrap();
    }
    // Written for every batch, synced only at open so far.
    let synced = head_mem.state.0.lock().unwrap().synced_images.len();
    assert_eq!(synced, 1);
    assert_eq!(head_mem.unsynced_ops(), 5);
    // A power loss now leaves the head naming no record, and all five
    // records, durable in the log, are recovered.
    let (again, _, _) = open_images(
        &log_mem.crash_image(0, None),
        &head_mem.crash_image(0, None),
    )
    .unwrap();
    assert_eq!(again.stats().last_seq, 5);
    drop(again);
    // Closing syncs it.
    drop(log);
    assert_eq!(head_mem.unsynced_ops(), 0);
    let (again, _, _) = open_images(
        &log_mem.crash_image(0, None),
        &head_mem.crash_image(0, None),
    )
    .unwrap();
    assert_eq!(again.stats().last_seq, 5);
}

#[test]
fn commits_are_paced() {
    let dir = tempfile::tempdir().unwrap();
    let interval = Duration::from_millis(50);
    let options = Options {
        commit_interval: interval,
        ..Options::default()
    };
    let log = Arc::new(AuditLog::open_with_options(dir.path(), &key(), &options).unwrap());
    // The first append after idle does not wait; the next ones wait for the
    // interval since the last sync began.
    let t = Instant::now();
    log.append_blocking(entry(0)).unwrap();
    assert!(t.elapsed() < interval, "{:?}", t.elapsed());
    for k in 1..4 {
        log.append_blocking(entry(k)).unwrap();
    }
    assert!(t.elapsed() >= interval * 3, "{:?}", t.elapsed());
    // 32 appenders at once share the syncs.
    let before = log.stats().batches;
    std::thread::scope(|s| {
        for i in 0..32 {
            let log = Arc::clone(&log);
            s.spawn(move || {
                for k in 0..5 {
                    log.append_blocking(entry(100 + i * 10 + k)).unwrap();
                }
            });
        }
    });
    let stats = log.stats();
    assert_eq!(stats.records, 4 + 160);
    assert!(stats.batches - before <= 12, "{stats:?}");
}

/// Opens a log on fresh memory storages with `options`.
fn mem_log(options: &Options) -> (AuditLog, Mem, Mem) {
    let p = fresh_power();
    let log_mem = Mem::new("audit.log", &p, Vec::new());
    let head_mem = Mem::new("audit.head", &p, Vec::new());
    let log = AuditLog::open_with(log_mem.clone(), head_mem.clone(), &key(), options).unwrap();
    (log, log_mem, head_mem)
}

#[test]
fn written_appends_are_answered_before_the_sync_and_synced_within_the_interval() {
    let options = Options {
        sync_interval: Duration::from_millis(30),
        ..strict()
    };
    let (log, log_mem, head_mem) = mem_log(&options);
    // With syncs held, written appends are still answered, in order...
    log_mem.set_hold(true);
    for i in 0..5 {
        assert_eq!(log.append_written(&entry(i)).unwrap(), i as u64 + 1);
    }
    assert_eq!(log.stats().synced_seq, 0);
    // ... and a killed process loses none of them: the page cache holds them.
    let (again, _, _) = open_images(&log_mem.current(), &head_mem.current()).unwrap();
    assert_eq!(again.stats().last_seq, 5);
    drop(again);
    // A power loss before their sync may lose them, and recovery copes.
    let (again, _, _) = open_images(
        &log_mem.crash_image(0, None),
        &head_mem.crash_image(0, None),
    )
    .unwrap();
    assert_eq!(again.stats().last_seq, 0);
    drop(again);
    // A durable append behind them waits for the sync, which covers them
    // all.
    let t = Instant::now();
    std::thread::scope(|s| {
        let h = s.spawn(|| log.append_blocking(entry(5)).unwrap());
        std::thread::sleep(Duration::from_millis(20));
        assert!(!h.is_finished());
        log_mem.set_hold(false);
        assert_eq!(h.join().unwrap(), 6);
    });
    assert!(t.elapsed() >= Duration::from_millis(20));
    assert_eq!(log.stats().synced_seq, 6);
    // Written appends alone are synced within the interval.
    for i in 6..9 {
        log.append_written(&entry(i)).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(log.stats().synced_seq, 9);
    let (again, _, _) = open_images(
        &log_mem.crash_image(0, None),
        &head_mem.crash_image(0, None),
    )
    .unwrap();
    assert_eq!(again.stats().last_seq, 9);
    drop(again);
    // Closing syncs what is written.
    log.append_written(&entry(9)).unwrap();
    drop(log);
    let (lb, hb) = (log_mem.crash_image(0, None), head_mem.crash_image(0, None));
    assert_eq!(verify_images(&lb, &hb), ok_report(10));
}

#[test]
fn a_failed_write_refuses_a_written_append_and_stops_the_log() {
    let dir = make_log(3);
    let faults = Faults::new();
    let options = Options {
        faults: Some(faults.clone()),
        ..Options::default()
    };
    let log = AuditLog::open_with_options(dir.path(), &key(), &options).unwrap();
    assert_eq!(log.append_written(&entry(3)).unwrap(), 4);
    faults.fail_writes(true);
    assert!(matches!(
        log.append_written(&entry(4)),
        Err(AuditError::Io { .. })
    ));
    faults.fail_writes(false);
    assert!(matches!(
        log.append_written(&entry(5)),
        Err(AuditError::Closed(_))
    ));
    assert!(matches!(
        log.append_blocking(entry(5)),
        Err(AuditError::Closed(_))
    ));
    drop(log);
    // The record answered before the failure stays.
    assert_eq!(verify(dir.path(), &key()).unwrap(), ok_report(4));
}

#[test]
fn a_failed_sync_after_written_appends_stops_the_log_and_keeps_what_was_answered() {
    let dir = make_log(3);
    let faults = Faults::new();
    let options = Options {
        faults: Some(faults.clone()),
        sync_interval: Duration::from_millis(5),
        ..Options::default()
    };
    let log = AuditLog::open_with_options(dir.path(), &key(), &options).unwrap();
    faults.fail_syncs(true);
    assert_eq!(log.append_written(&entry(3)).unwrap(), 4);
    // The sync due 5 ms later fails: the log stops.
    let t = Instant::now();
    while log.stats().failed.is_none() {
        assert!(t.elapsed() < Duration::from_secs(5), "the sync never ran");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(matches!(
        log.append_written(&entry(4)),
        Err(AuditError::Closed(_))
    ));
    faults.fail_syncs(false);
    drop(log);
    // The answered record was not cut away.
    let log = AuditLog::open(dir.path(), &key()).unwrap();
    assert_eq!(log.stats().last_seq, 4);
}

#[test]
fn append_blocking_on_a_runtime_thread_works() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), &key()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    // append_blocking on a runtime thread blocks it briefly but works.
    let seq = rt
        .block_on(async { log.append_blocking(entry(0)) })
        .unwrap();
    assert_eq!(seq, 1);
}

// ---------------------------------------------------------------------------
// Queries.

#[test]
fn query_filters() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), &key()).unwrap();
    let entries: Vec<Entry> = (0..120).map(entry).collect();
    for e in &entries {
        log.append_blocking(e.clone()).unwrap();
    }
    drop(log);

    let run = |f: Filter| -> Vec<String> {
        query(dir.path(), &f)
            .unwrap()
            .into_iter()
            .map(|r| r.entry.request_id)
            .collect()
    };
    let expect = |pred: &dyn Fn(&Entry) -> bool| -> Vec<String> {
        entries
            .iter()
            .filter(|e| pred(e))
            .map(|e| e.request_id.clone())
            .collect()
    };

    assert_eq!(run(Filter::default()).len(), 120);
    let k = "arn:aws:kms:us-east-1:111122223333:key/k2".to_string();
    let by_key = run(Filter {
        key_arn: Some(k.clone()),
        ..Filter::default()
    });
    assert!(!by_key.is_empty());
    assert_eq!(by_key, expect(&|e| e.key_arn.as_ref() == Some(&k)));
    let p = "arn:aws:iam::111122223333:user/u1".to_string();
    assert_eq!(
        run(Filter {
            principal: Some(p.clone()),
            operation: Some("Decrypt".into()),
            ..Filter::default()
        }),
        expect(&|e| e.principal.as_ref() == Some(&p) && e.operation == "Decrypt")
    );
    // Times: entry i is at 07:MM:SS where MM:SS = i / 60, i % 60.
    let since = "2026-11-22T07:00:30".to_string();
    let until = "2026-11-22T07:01:10.000Z".to_string();
    let window = run(Filter {
        since: Some(since.clone()),
        until: Some(until.clone()),
        ..Filter::default()
    });
    assert_eq!(window, expect(&|e| e.time >= since && e.time < until));
    assert_eq!(window.first().unwrap(), "req-30");
    assert_eq!(window.last().unwrap(), "req-69");
    // limit keeps the most recent, oldest first.
    assert_eq!(
        run(Filter {
            operation: Some("Encrypt".into()),
            limit: Some(3),
            ..Filter::default()
        }),
        vec!["req-108", "req-112", "req-116"]
    );
    assert!(
        run(Filter {
            limit: Some(0),
            ..Filter::default()
        })
        .is_empty()
    );
    assert!(
        run(Filter {
            key_arn: Some("nope".into()),
            ..Filter::default()
        })
        .is_empty()
    );
    // Records carry exactly what was appended.
    let all = query(dir.path(), &Filter::default()).unwrap();
    for (i, r) in all.iter().enumerate() {
        assert_eq!(r.seq, i as u64 + 1);
        assert_eq!(r.entry, entries[i]);
    }

    // An incomplete last line (a write in progress) is skipped.
    let mut bytes = std::fs::read(dir.path().join(LOG_FILE)).unwrap();
    bytes.extend_from_slice(b"{\"seq\":121,\"time\":\"2026");
    std::fs::write(dir.path().join(LOG_FILE), &bytes).unwrap();
    assert_eq!(run(Filter::default()).len(), 120);
}

#[test]
fn entries_hold_only_what_the_caller_gave() {
    let dir = make_log(0);
    let log = AuditLog::open(dir.path(), &key()).unwrap();
    let e = Entry {
        time: "2026-11-22T07:00:00.000Z".into(),
        request_id: "r".into(),
        operation: "Encrypt".into(),
        result: "Success".into(),
        ..Entry::default()
    };
    log.append_blocking(e).unwrap();
    drop(log);
    let l = lines(dir.path());
    assert_eq!(l.len(), 1);
    // Exactly these fields, in this order.
    let v: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&l[0]).unwrap();
    assert_eq!(v.len(), 7);
    let order = [
        "seq",
        "time",
        "request_id",
        "operation",
        "result",
        "prev",
        "mac",
    ];
    let at: Vec<usize> = order
        .iter()
        .map(|k| l[0].find(&format!("\"{k}\":")).unwrap())
        .collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "{}", l[0]);
    assert_eq!(seq_of(&l[0]), 1);
}

// ---------------------------------------------------------------------------
// Segments: an in-memory directory with the power switch, to simulate
// crashes while the active segment is sealed.

#[derive(Clone)]
enum DirOp {
    Create(String, Mem),
    Rename(String, String),
}

#[derive(Default)]
struct DirState {
    current: BTreeMap<String, Mem>,
    durable: BTreeMap<String, Mem>,
    unsynced: Vec<DirOp>,
    /// Bytes read from each file since the last reset.
    reads: BTreeMap<String, u64>,
}

/// A directory of [`Mem`] files. Renames and creations are durable once the
/// directory is synced; a power cut keeps any subset of those made since.
#[derive(Clone)]
struct MemDir {
    state: Arc<Mutex<DirState>>,
    power: Arc<Mutex<Power>>,
}

/// Counts the bytes read from a file of a [`MemDir`].
struct Counted {
    inner: Mem,
    dir: Arc<Mutex<DirState>>,
}

impl Storage for Counted {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read_at(offset, buf)?;
        *self
            .dir
            .lock()
            .unwrap()
            .reads
            .entry(self.inner.name.clone())
            .or_default() += n as u64;
        Ok(n)
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.inner.write_at(offset, data)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn sync(&self) -> io::Result<()> {
        self.inner.sync()
    }
    fn name(&self) -> String {
        self.inner.name()
    }
}

impl MemDir {
    fn new(power: &Arc<Mutex<Power>>) -> Self {
        Self {
            state: Arc::default(),
            power: Arc::clone(power),
        }
    }

    /// A directory holding `files` (all durable), with a power switch of
    /// its own.
    fn with(files: &BTreeMap<String, Vec<u8>>) -> Self {
        let d = Self::new(&fresh_power());
        {
            let mut s = d.state.lock().unwrap();
            for (name, bytes) in files {
                let m = Mem::new(name, &d.power, bytes.clone());
                s.current.insert(name.clone(), m.clone());
                s.durable.insert(name.clone(), m);
            }
        }
        d
    }

    fn tick(&self) -> bool {
        let mut p = self.power.lock().unwrap();
        if p.dead {
            return false;
        }
        p.ops += 1;
        if p.cut_at == Some(p.ops) {
            p.dead = true;
        }
        true
    }

    fn dead(&self) -> bool {
        self.power.lock().unwrap().dead
    }

    fn file(&self, name: &str) -> Box<dyn Storage> {
        let m = self.state.lock().unwrap().current[name].clone();
        Box::new(Counted {
            inner: m,
            dir: Arc::clone(&self.state),
        })
    }

    /// What a killed process leaves: every file as the page cache has it.
    fn current(&self) -> BTreeMap<String, Vec<u8>> {
        let s = self.state.lock().unwrap();
        s.current
            .iter()
            .map(|(n, m)| (n.clone(), m.current()))
            .collect()
    }

    /// What a power cut leaves: the durable names, and of the renames and
    /// creations since, those `keep_op` says; in each file, its durable
    /// bytes and then as many of its unsynced operations as `keep` says,
    /// and the next one mangled by `tear`.
    fn crash(
        &self,
        keep_op: &mut dyn FnMut() -> bool,
        keep: &mut dyn FnMut(usize) -> usize,
        tear: Option<Tear<'_>>,
    ) -> BTreeMap<String, Vec<u8>> {
        let s = self.state.lock().unwrap();
        let mut names = s.durable.clone();
        for op in &s.unsynced {
            if !keep_op() {
                continue;
            }
            match op {
                DirOp::Create(n, m) => {
                    names.insert(n.clone(), m.clone());
                }
                DirOp::Rename(a, b) => {
                    if let Some(m) = names.remove(a) {
                        names.insert(b.clone(), m);
                    }
                }
            }
        }
        // The head is rewritten in place within one sector: never torn.
        names
            .into_iter()
            .map(|(n, m)| {
                let k = keep(m.unsynced_ops());
                let tear = if n == HEAD_FILE { None } else { tear };
                (n, m.crash_image(k, tear))
            })
            .collect()
    }

    fn reset_reads(&self) {
        self.state.lock().unwrap().reads.clear();
    }

    fn reads(&self) -> BTreeMap<String, u64> {
        self.state.lock().unwrap().reads.clone()
    }
}

impl Dir for MemDir {
    fn open_file(&self, name: &str, create: bool) -> io::Result<Option<(Box<dyn Storage>, bool)>> {
        if self.state.lock().unwrap().current.contains_key(name) {
            return Ok(Some((self.file(name), false)));
        }
        if !create {
            return Ok(None);
        }
        Ok(Some((self.create_new(name)?, true)))
    }

    fn create_new(&self, name: &str) -> io::Result<Box<dyn Storage>> {
        if !self.tick() {
            return Err(power_off());
        }
        {
            let mut s = self.state.lock().unwrap();
            if s.current.contains_key(name) {
                return Err(io::Error::new(io::ErrorKind::AlreadyExists, name));
            }
            let m = Mem::new(name, &self.power, Vec::new());
            s.current.insert(name.to_owned(), m.clone());
            s.unsynced.push(DirOp::Create(name.to_owned(), m));
        }
        if self.dead() {
            return Err(power_off());
        }
        Ok(self.file(name))
    }

    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.state.lock().unwrap().current.keys().cloned().collect())
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        if !self.tick() {
            return Err(power_off());
        }
        {
            let mut s = self.state.lock().unwrap();
            if s.current.contains_key(to) {
                return Err(io::Error::new(io::ErrorKind::AlreadyExists, to.to_owned()));
            }
            let Some(m) = s.current.remove(from) else {
                return Err(io::Error::new(io::ErrorKind::NotFound, from.to_owned()));
            };
            s.current.insert(to.to_owned(), m);
            s.unsynced
                .push(DirOp::Rename(from.to_owned(), to.to_owned()));
        }
        // The rename at the cut happened, but the process dies before it
        // learns so.
        if self.dead() {
            Err(power_off())
        } else {
            Ok(())
        }
    }

    fn sync(&self) -> io::Result<()> {
        if !self.tick() || self.dead() {
            return Err(power_off());
        }
        let mut s = self.state.lock().unwrap();
        s.durable = s.current.clone();
        s.unsynced.clear();
        Ok(())
    }

    fn name(&self) -> String {
        "mem".into()
    }
}

/// Segments of about four records of [`small`].
fn sealing(options: Options) -> Options {
    Options {
        segment_bytes: 1000,
        ..options
    }
}

/// The sealed segments' names in `files`, in order.
fn segment_names(files: &BTreeMap<String, Vec<u8>>) -> Vec<String> {
    files
        .keys()
        .filter(|n| n.starts_with("audit-"))
        .cloned()
        .collect()
}

/// Every record line of `files`: the sealed segments in order, then the
/// active one (without a torn tail or zeros).
fn all_lines(files: &BTreeMap<String, Vec<u8>>) -> Vec<String> {
    let mut out = Vec::new();
    let names = segment_names(files);
    for n in names.iter().chain(std::iter::once(&LOG_FILE.to_owned())) {
        let Some(b) = files.get(n) else { continue };
        let end = b.iter().rposition(|&c| c == b'\n').map_or(0, |i| i + 1);
        for l in String::from_utf8_lossy(&b[..end]).lines() {
            out.push(l.to_owned());
        }
    }
    out
}

fn write_dir(dir: &Path, files: &BTreeMap<String, Vec<u8>>) {
    for (n, b) in files {
        std::fs::write(dir.join(n), b).unwrap();
    }
}

/// Writes `files` to a temp dir and runs `verify` on them.
fn verify_files(files: &BTreeMap<String, Vec<u8>>) -> VerifyReport {
    let dir = tempfile::tempdir().unwrap();
    write_dir(dir.path(), files);
    verify(dir.path(), &key()).unwrap()
}

/// Opens a log in a [`MemDir`] holding `files`.
fn open_files(
    files: &BTreeMap<String, Vec<u8>>,
    options: &Options,
) -> Result<(AuditLog, MemDir), AuditError> {
    let d = MemDir::with(files);
    AuditLog::open_in(d.clone(), &key(), options).map(|l| (l, d))
}

/// After a crash that left `files`: the log opens, holds every record
/// acknowledged as durable (`acked`: seq, request id, durable), the same
/// records where they were, takes a new record after them, and verifies.
fn check_recovery(
    files: &BTreeMap<String, Vec<u8>>,
    acked: &[(u64, String, bool)],
    options: &Options,
    what: &str,
) -> u64 {
    let (log, d) =
        open_files(files, options).unwrap_or_else(|e| panic!("{what}: reopen failed: {e}"));
    let last = log.stats().last_seq;
    let max_durable = acked.iter().filter(|a| a.2).map(|a| a.0).max().unwrap_or(0);
    assert!(
        last >= max_durable,
        "{what}: lost records: {last} < {max_durable}"
    );
    let lines = all_lines(&d.current());
    assert_eq!(lines.len() as u64, last, "{what}");
    for (seq, id, _) in acked.iter().filter(|a| a.0 <= last) {
        let v: serde_json::Value = serde_json::from_str(&lines[*seq as usize - 1]).unwrap();
        assert_eq!(
            v["request_id"].as_str().unwrap(),
            id,
            "{what}: record {seq}"
        );
    }
    assert_eq!(log.append_blocking(small(99)).unwrap(), last + 1, "{what}");
    drop(log);
    assert_eq!(verify_files(&d.current()), ok_report(last + 1), "{what}");
    last
}

/// Runs `appends` appends of [`small`] records from one thread on a fresh
/// [`MemDir`] whose power is cut at operation `cut` (if any); returns the
/// directory and what was acknowledged.
fn sealing_run(
    cut: Option<u64>,
    options: &Options,
    appends: usize,
) -> (MemDir, Vec<(u64, String, bool)>, u64) {
    let p = fresh_power();
    p.lock().unwrap().cut_at = cut;
    let d = MemDir::new(&p);
    let mut acked = Vec::new();
    if let Ok(log) = AuditLog::open_in(d.clone(), &key(), options) {
        for i in 0..appends {
            let e = small(i);
            match log.append_blocking(e.clone()) {
                Ok(seq) => acked.push((seq, e.request_id, true)),
                Err(_) => break,
            }
        }
        drop(log);
    }
    let ops = p.lock().unwrap().ops;
    (d, acked, ops)
}

#[test]
fn sealing_segments_continues_the_chain_and_reopens() {
    let (d, acked, _) = sealing_run(None, &sealing(strict()), 30);
    assert_eq!(acked.len(), 30);
    let files = d.current();
    let names = segment_names(&files);
    assert!(names.len() >= 5, "{names:?}");
    // Each sealed segment holds segment_bytes and a record or two more
    // (written while the syncer came to seal it), whole records, in
    // seq order, and its name says which and when.
    let mut next = 1;
    for n in &names {
        let b = &files[n];
        assert_eq!(b.last(), Some(&b'\n'), "{n}");
        assert!(b.len() >= 1000 && b.len() < 1800, "{n}: {}", b.len());
        let lines: Vec<serde_json::Value> = String::from_utf8_lossy(b)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let first = lines[0]["seq"].as_u64().unwrap();
        let last = lines[lines.len() - 1]["seq"].as_u64().unwrap();
        assert_eq!(first, next);
        let min = lines
            .iter()
            .map(|v| v["time"].as_str().unwrap())
            .min()
            .unwrap();
        let max = lines
            .iter()
            .map(|v| v["time"].as_str().unwrap())
            .max()
            .unwrap();
        let compact = |t: &str| t.replace(['-', ':', '.'], "");
        assert_eq!(
            *n,
            format!(
                "audit-{first:020}-{last:020}-{}-{}.log",
                compact(min),
                compact(max)
            )
        );
        next = last + 1;
    }
    assert_eq!(all_lines(&files).len(), 30);
    assert_eq!(verify_files(&files), ok_report(30));
    // The head names the last record, wherever it is.
    let last = check_recovery(&files, &acked, &sealing(strict()), "reopen");
    assert_eq!(last, 30);
    // Opening reads the active segment and the end of the last sealed one
    // (its last record), nothing more.
    let d = MemDir::with(&files);
    d.reset_reads();
    let log = AuditLog::open_in(d.clone(), &key(), &sealing(strict())).unwrap();
    assert_eq!(log.stats().last_seq, 30);
    drop(log);
    let reads = d.reads();
    for n in &names[..names.len() - 1] {
        assert_eq!(reads.get(n), None, "{n} was read at open: {reads:?}");
    }
    assert!(reads[names.last().unwrap()] <= 2 * 64 * 1024, "{reads:?}");
}

#[test]
fn a_seal_at_every_crash_point_loses_no_acknowledged_record() {
    let options = sealing(strict());
    let (_, _, total) = sealing_run(None, &options, 14);
    let mut rng = Rng(0x5eed_5eed_5eed_5eed);
    for cut in 1..=total {
        let (d, acked, _) = sealing_run(Some(cut), &options, 14);
        // A killed process: the page cache survives, and every rename or
        // creation that returned.
        check_recovery(
            &d.current(),
            &acked,
            &options,
            &format!("cut {cut}, killed"),
        );
        // A power cut keeping nothing unsynced, everything, and mixes.
        let nothing = d.crash(&mut || false, &mut |_| 0, None);
        check_recovery(&nothing, &acked, &options, &format!("cut {cut}, nothing"));
        let all = d.crash(&mut || true, &mut |n| n, None);
        check_recovery(&all, &acked, &options, &format!("cut {cut}, all"));
        for k in 0..3 {
            let seed = rng.next();
            let mut r1 = Rng(seed | 1);
            let mut r2 = Rng(seed.rotate_left(17) | 1);
            let mixed = d.crash(
                &mut || r1.below(2) == 0,
                &mut |n| r2.below(n as u64 + 1) as usize,
                Some(&|w: &[u8]| w[..w.len() / 2].to_vec()),
            );
            check_recovery(&mixed, &acked, &options, &format!("cut {cut}, mix {k}"));
        }
    }
}

#[test]
fn power_cut_at_any_operation_with_sealing_loses_no_acknowledged_record() {
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    for trial in 0..120u64 {
        let p = fresh_power();
        p.lock().unwrap().cut_at = Some(1 + rng.below(260));
        let d = MemDir::new(&p);
        let lazy = trial % 2 == 1;
        let options = if lazy {
            Options {
                commit_interval: Duration::from_micros(rng.below(2) * 500),
                sync_interval: Duration::from_micros(100 + rng.below(2000)),
                head_sync_interval: Duration::from_micros(100 + rng.below(1000)),
                segment_bytes: 600 + rng.below(3000),
                preallocate: [0, 512, 4096][rng.below(3) as usize],
                faults: None,
            }
        } else {
            Options {
                segment_bytes: 600 + rng.below(3000),
                ..strict()
            }
        };
        let acked: Vec<(u64, String, bool)> = match AuditLog::open_in(d.clone(), &key(), &options) {
            Err(_) => Vec::new(),
            Ok(log) => {
                let log = Arc::new(log);
                let acked = std::thread::scope(|s| {
                    let hs: Vec<_> = (0..4)
                        .map(|t| {
                            let log = Arc::clone(&log);
                            s.spawn(move || {
                                let mut ok = Vec::new();
                                let durable = !lazy || t % 2 == 0;
                                for k in 0..12 {
                                    let mut e = small(k);
                                    e.request_id = format!("t{t}-{k}");
                                    let r = if durable {
                                        log.append_blocking(e.clone())
                                    } else {
                                        log.append_written(&e)
                                    };
                                    match r {
                                        Ok(seq) => ok.push((seq, e.request_id, durable)),
                                        Err(_) => break,
                                    }
                                }
                                ok
                            })
                        })
                        .collect();
                    hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
                });
                drop(log);
                acked
            }
        };
        let (seed1, seed2, tear_at) = (rng.next() | 1, rng.next() | 1, rng.next());
        let (mut r1, mut r2) = (Rng(seed1), Rng(seed2));
        let hole = rng.next().is_multiple_of(2);
        let tear = move |w: &[u8]| -> Vec<u8> {
            let cut = (tear_at % (w.len() as u64 + 1)) as usize;
            if hole {
                let mut v = w.to_vec();
                let end = (cut + 100).min(v.len());
                v[cut..end].fill(0);
                v
            } else {
                w[..cut].to_vec()
            }
        };
        let files = d.crash(
            &mut || r1.below(2) == 0,
            &mut |n| r2.below(n as u64 + 1) as usize,
            Some(&tear),
        );
        check_recovery(
            &files,
            &acked,
            &sealing(strict()),
            &format!("trial {trial}"),
        );
    }
}

// ---------------------------------------------------------------------------
// Segments on a real directory: failures while sealing, and the states a
// crash leaves there.

/// A log in a fresh temp dir with segments of about four [`small`]
/// records, holding records 1..=`n`, closed.
fn make_sealed_log(n: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open_with_options(dir.path(), &key(), &sealing(strict())).unwrap();
    for i in 0..n {
        assert_eq!(log.append_blocking(small(i)).unwrap(), i as u64 + 1);
    }
    drop(log);
    dir
}

fn dir_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn a_failure_while_sealing_fails_closed_and_reopen_carries_on() {
    // A failing sync (before the rename) and a failing rename.
    for what in ["sync", "rename"] {
        let dir = make_sealed_log(2);
        let faults = Faults::new();
        // Written appends, synced only when the segment is due to be
        // sealed: the failure comes in the seal.
        let options = Options {
            faults: Some(faults.clone()),
            sync_interval: Duration::from_secs(30),
            head_sync_interval: Duration::from_secs(30),
            ..sealing(Options::default())
        };
        let log = AuditLog::open_with_options(dir.path(), &key(), &options).unwrap();
        let before = segment_names(&dir_files(dir.path()));
        match what {
            "sync" => faults.fail_syncs(true),
            _ => faults.fail_dir_ops(true),
        }
        let mut answered = 2;
        let t = Instant::now();
        while log.stats().failed.is_none() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{what}: never sealed"
            );
            if let Ok(seq) = log.append_written(&small(answered as usize)) {
                answered = seq;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(answered >= 3, "{what}");
        faults.fail_syncs(false);
        faults.fail_dir_ops(false);
        assert!(matches!(
            log.append_written(&small(50)),
            Err(AuditError::Closed(_))
        ));
        assert!(matches!(
            log.append_blocking(small(50)),
            Err(AuditError::Closed(_))
        ));
        drop(log);
        assert_eq!(segment_names(&dir_files(dir.path())), before, "{what}");
        // Nothing answered is lost (the process lives on).
        assert_eq!(
            verify(dir.path(), &key()).unwrap(),
            ok_report(answered),
            "{what}"
        );
        // Reopened, the log seals what is due and carries on.
        let log = AuditLog::open_with_options(dir.path(), &key(), &sealing(strict())).unwrap();
        assert_eq!(
            log.append_blocking(small(60)).unwrap(),
            answered + 1,
            "{what}"
        );
        // The syncer seals after it answers (an append never waits for a
        // seal): wait for it, as a loaded machine may take a while.
        let t = Instant::now();
        while segment_names(&dir_files(dir.path())).len() <= before.len() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{what}: never sealed"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(log);
        assert_eq!(
            verify(dir.path(), &key()).unwrap(),
            ok_report(answered + 1),
            "{what}"
        );
    }
}

#[test]
fn the_states_a_crash_while_sealing_leaves_all_open() {
    let dir = make_sealed_log(16);
    // Two more records in the active segment, whatever it held.
    let log = AuditLog::open_with_options(dir.path(), &key(), &strict()).unwrap();
    log.append_blocking(small(16)).unwrap();
    log.append_blocking(small(17)).unwrap();
    drop(log);
    let files = dir_files(dir.path());
    let names = segment_names(&files);
    assert!(names.len() >= 3);
    let last = names.last().unwrap().clone();
    let active = files[LOG_FILE].clone();
    let lines = all_lines(&files);
    assert_eq!(lines.len(), 18);
    let head_of = |seq: usize| -> Vec<u8> {
        // A genuine head naming record `seq`: from a log holding exactly
        // records 1..=seq.
        let d = make_sealed_log(seq);
        std::fs::read(d.path().join(HEAD_FILE)).unwrap()
    };
    let reopen = |files: &BTreeMap<String, Vec<u8>>, expect: u64, what: &str| {
        let d = tempfile::tempdir().unwrap();
        write_dir(d.path(), files);
        let log = AuditLog::open_with_options(d.path(), &key(), &sealing(strict()))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(log.stats().last_seq, expect, "{what}");
        assert_eq!(
            log.append_blocking(small(77)).unwrap(),
            expect + 1,
            "{what}"
        );
        drop(log);
        assert_eq!(
            verify(d.path(), &key()).unwrap(),
            ok_report(expect + 1),
            "{what}"
        );
    };
    let last_sealed = lines.len() - count_lines(&active) as usize;
    // After the rename, before the new active file was made (or made
    // durable): no audit.log.
    let mut f = files.clone();
    f.remove(LOG_FILE);
    f.insert(HEAD_FILE.into(), head_of(last_sealed));
    reopen(&f, last_sealed as u64, "no active file");
    // The same, with a head older than the sealed segment's last record (a
    // lazy head sync lost to the power cut).
    f.insert(HEAD_FILE.into(), head_of(last_sealed - 2));
    reopen(&f, last_sealed as u64, "old head, no active file");
    f.insert(HEAD_FILE.into(), head_of(2));
    reopen(&f, last_sealed as u64, "older head");
    // Before the rename was durable: the sealed records still in
    // audit.log, synced whole and past the segment size (sealed at open).
    let mut f = files.clone();
    f.remove(&last);
    let mut merged = files[&last].clone();
    merged.extend_from_slice(&active);
    f.insert(LOG_FILE.into(), merged);
    reopen(&f, 18, "rename not durable");
    // A new, empty active file.
    let mut f = files.clone();
    f.insert(LOG_FILE.into(), Vec::new());
    f.insert(HEAD_FILE.into(), head_of(last_sealed));
    reopen(&f, last_sealed as u64, "empty active file");
    // A head naming a record the sealed segments hold, with another mac:
    // damage, not a crash.
    let other = tempfile::tempdir().unwrap();
    let log = AuditLog::open_with_options(other.path(), &key(), &sealing(strict())).unwrap();
    for i in 0..4 {
        log.append_blocking(small(i + 100)).unwrap();
    }
    drop(log);
    let mut f = files.clone();
    f.insert(
        HEAD_FILE.into(),
        std::fs::read(other.path().join(HEAD_FILE)).unwrap(),
    );
    match open_files(&f, &sealing(strict())).map(|(l, _)| l) {
        Err(AuditError::Damaged { seq: 4, reason, .. }) => {
            assert!(
                reason.contains("differs from the one audit.head names"),
                "{reason}"
            );
        }
        other => panic!("a foreign head: {other:?}"),
    }
    // A head naming records after the last sealed one, with no active
    // file: records were deleted.
    let mut f = files;
    f.remove(LOG_FILE);
    assert!(matches!(
        open_files(&f, &sealing(strict())).map(|(l, _)| l),
        Err(AuditError::Damaged { .. })
    ));
}

/// The sealed segments of a log: their names, first and last seqs.
struct Layout {
    names: Vec<String>,
    firsts: Vec<u64>,
    lasts: Vec<u64>,
}

fn layout(files: &BTreeMap<String, Vec<u8>>) -> Layout {
    let names = segment_names(files);
    let firsts = names.iter().map(|n| n[6..26].parse().unwrap()).collect();
    let lasts = names.iter().map(|n| n[27..47].parse().unwrap()).collect();
    Layout {
        names,
        firsts,
        lasts,
    }
}

/// What open does with a tampered log.
enum AtOpen {
    /// Opening reads only the active segment and the end of the last
    /// sealed one: damage elsewhere is for `verify` to find.
    Opens,
    /// Refuses it, naming this record.
    Refuses(u64),
}

/// Applies `edit` to the files of a sealed log of 18 records; `edit`
/// returns the record verify must name (0: a file, not a record), words of
/// its reason, and what open does.
fn tamper_sealed(
    name: &str,
    edit: impl FnOnce(&mut BTreeMap<String, Vec<u8>>, &Layout) -> (u64, String, AtOpen),
) {
    let dir = make_sealed_log(18);
    let mut files = dir_files(dir.path());
    let l = layout(&files);
    assert!(l.names.len() >= 3, "{:?}", l.names);
    let (bad, why, at_open) = edit(&mut files, &l);
    let d = tempfile::tempdir().unwrap();
    write_dir(d.path(), &files);
    let report = verify(d.path(), &key()).unwrap();
    let Some((line, reason)) = &report.first_bad else {
        panic!("{name}: not detected: {report:?}");
    };
    assert_eq!(*line, bad, "{name}: {reason}");
    assert!(reason.contains(&why), "{name}: {reason}");
    assert_eq!(report.good, bad.saturating_sub(1), "{name}");
    match (
        AuditLog::open_with_options(d.path(), &key(), &sealing(strict())),
        at_open,
    ) {
        (Ok(_), AtOpen::Opens) => {}
        (Err(AuditError::Damaged { seq, reason, .. }), AtOpen::Refuses(b)) => {
            assert_eq!(seq, b, "{name}: {reason}");
        }
        (other, _) => panic!("{name}: at open: {other:?}"),
    }
}

fn lines_of_file(b: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(b)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn file_of_lines(l: &[String]) -> Vec<u8> {
    let mut s = l.join("\n");
    s.push('\n');
    s.into_bytes()
}

#[test]
fn tampering_with_sealed_segments_is_detected() {
    use AtOpen::{Opens, Refuses};
    tamper_sealed("edit a record of a middle segment", |f, l| {
        let n = &l.names[1];
        let mut lines = lines_of_file(&f[n]);
        lines[1] = lines[1].replace("Success", "Failure");
        f.insert(n.clone(), file_of_lines(&lines));
        (l.firsts[1] + 1, "bad MAC".into(), Opens)
    });
    tamper_sealed("delete the first segment", |f, l| {
        f.remove(&l.names[0]);
        (1, "expected seq 1".into(), Refuses(1))
    });
    tamper_sealed("delete a middle segment", |f, l| {
        f.remove(&l.names[1]);
        let (f1, l1) = (l.firsts[1], l.lasts[1]);
        (
            f1,
            format!("expected seq {f1}, found {}", l1 + 1),
            Refuses(f1),
        )
    });
    tamper_sealed("delete the last segment", |f, l| {
        let last = l.names.len() - 1;
        f.remove(&l.names[last]);
        let first = l.firsts[last];
        let found = l.lasts[last] + 1;
        if f[LOG_FILE].is_empty() {
            // The head names a record that is gone.
            (first, "missing".into(), Refuses(first))
        } else {
            (
                first,
                format!("expected seq {first}, found {found}"),
                Refuses(first),
            )
        }
    });
    tamper_sealed("swap two segments' names", |f, l| {
        let (a, b) = (&l.names[0], &l.names[1]);
        let (ba, bb) = (f.remove(a).unwrap(), f.remove(b).unwrap());
        f.insert(a.clone(), bb);
        f.insert(b.clone(), ba);
        (1, "expected seq 1".into(), Opens)
    });
    tamper_sealed("widen a segment's time range", |f, l| {
        let n = &l.names[1];
        let b = f.remove(n).unwrap();
        let renamed = format!("{}20000101T000000000Z{}", &n[..48], &n[67..]);
        assert_ne!(&renamed, n);
        f.insert(renamed, b);
        (l.firsts[1], "its name says other times".into(), Opens)
    });
    tamper_sealed("remove a segment's last record", |f, l| {
        let n = &l.names[1];
        let mut lines = lines_of_file(&f[n]);
        lines.pop();
        f.insert(n.clone(), file_of_lines(&lines));
        let l1 = l.lasts[1];
        (l1, "records were deleted from its end".into(), Opens)
    });
    tamper_sealed("empty a segment", |f, l| {
        f.insert(l.names[1].clone(), Vec::new());
        (l.firsts[1], "holds no records".into(), Opens)
    });
    tamper_sealed("append a record to a sealed segment", |f, l| {
        // Record lasts[1] + 1, moved from the next segment to this one.
        let (a, b) = (&l.names[1], &l.names[2]);
        let mut next = lines_of_file(&f[b]);
        let moved = next.remove(0);
        let mut this = lines_of_file(&f[a]);
        this.push(moved);
        f.insert(a.clone(), file_of_lines(&this));
        f.insert(b.clone(), file_of_lines(&next));
        (l.lasts[1] + 1, "records were added".into(), Opens)
    });
    tamper_sealed("cut the last segment's last line short", |f, l| {
        let last = l.names.len() - 1;
        let b = f.get_mut(&l.names[last]).unwrap();
        b.truncate(b.len() - 5);
        (
            l.lasts[last],
            "incomplete line".into(),
            Refuses(l.lasts[last]),
        )
    });
    tamper_sealed("a file named like a segment", |f, _| {
        f.insert("audit-backup.log".into(), b"x\n".to_vec());
        (0, "audit-backup.log".into(), Refuses(0))
    });
}

// ---------------------------------------------------------------------------
// Queries across segments.

/// Entry `i` of a trail with three accounts whose times are nearly in
/// order: every seventh record is a little late (up to 3 s).
fn varied(i: usize) -> Entry {
    let secs = i as u64 * 2 - if i % 7 == 3 { 3 } else { 0 };
    Entry {
        time: format!(
            "2026-11-22T{:02}:{:02}:{:02}.{:03}Z",
            8 + secs / 3600,
            (secs / 60) % 60,
            secs % 60,
            i % 1000
        ),
        account: Some(["111122223333", "444455556666", "777788889999"][i % 3].into()),
        ..entry(i)
    }
}

#[test]
fn queries_across_segments_match_a_full_scan() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        segment_bytes: 4000,
        ..Options::default()
    };
    let log = AuditLog::open_with_options(dir.path(), &key(), &options).unwrap();
    let n = 700;
    let entries: Vec<Entry> = (0..n).map(varied).collect();
    for e in &entries {
        log.append_written_batch(std::slice::from_ref(e)).unwrap();
    }
    drop(log);
    let segs = segment_names(&dir_files(dir.path()));
    assert!(segs.len() > 50, "{}", segs.len());
    assert_eq!(verify(dir.path(), &key()).unwrap(), ok_report(n as u64));

    // Every record, oldest first, as a visit sees them.
    let mut all: Vec<Record> = Vec::new();
    assert_eq!(
        visit_oldest(dir.path(), |r| all.push(r.clone())).unwrap(),
        n as u64
    );
    assert!(
        all.iter()
            .enumerate()
            .all(|(i, r)| r.seq == i as u64 + 1 && r.entry == entries[i])
    );

    let check = |f: Filter| {
        let got = query_newest(dir.path(), &f).unwrap();
        let mut want: Vec<&Record> = all
            .iter()
            .rev()
            .filter(|r| {
                f.account
                    .as_ref()
                    .is_none_or(|a| r.entry.account.as_ref() == Some(a))
                    && f.key_arn
                        .as_ref()
                        .is_none_or(|k| r.entry.key_arn.as_ref() == Some(k))
                    && f.principal
                        .as_ref()
                        .is_none_or(|p| r.entry.principal.as_ref() == Some(p))
                    && f.operation.as_ref().is_none_or(|o| &r.entry.operation == o)
                    && f.since.as_ref().is_none_or(|s| &r.entry.time >= s)
                    && f.until.as_ref().is_none_or(|u| &r.entry.time < u)
                    && f.before.is_none_or(|b| r.seq < b)
            })
            .collect();
        want.truncate(f.limit.unwrap_or(usize::MAX));
        let got_seqs: Vec<u64> = got.iter().map(|r| r.seq).collect();
        let want_seqs: Vec<u64> = want.iter().map(|r| r.seq).collect();
        assert_eq!(got_seqs, want_seqs, "{f:?}");
        assert!(got.iter().zip(&want).all(|(g, w)| g == *w));
        got_seqs.len()
    };
    let t = |i: usize| all[i].entry.time.clone();
    let mut nonempty = 0;
    for limit in [None, Some(1), Some(7), Some(1000)] {
        for (since, until) in [
            (None, None),
            (Some(t(100)), None),
            (None, Some(t(333))),
            (Some(t(200)), Some(t(205))),
            (Some(t(10)), Some(t(10))),
            (
                Some("2026-11-22T08:10".to_owned()),
                Some("2026-11-22T08:12".to_owned()),
            ),
            (Some("2027".to_owned()), None),
            (None, Some("2026".to_owned())),
        ] {
            for before in [None, Some(1), Some(2), Some(350), Some(n as u64 + 5)] {
                for (account, key_arn, operation) in [
                    (None, None, None),
                    (Some("444455556666"), None, None),
                    (
                        Some("111122223333"),
                        Some("arn:aws:kms:us-east-1:111122223333:key/k2"),
                        None,
                    ),
                    (None, None, Some("Decrypt")),
                    (Some("nobody"), None, None),
                ] {
                    let f = Filter {
                        account: account.map(str::to_owned),
                        key_arn: key_arn.map(str::to_owned),
                        operation: operation.map(str::to_owned),
                        since: since.clone(),
                        until: until.clone(),
                        before,
                        limit,
                        ..Filter::default()
                    };
                    if check(f) > 0 {
                        nonempty += 1;
                    }
                }
            }
        }
    }
    assert!(nonempty > 100, "{nonempty}");
    check(Filter {
        principal: Some("arn:aws:iam::111122223333:user/u1".into()),
        ..Filter::default()
    });

    // Paging with `before` yields every record exactly once.
    for (page, account) in [(1, None), (13, None), (50, Some("777788889999"))] {
        let mut seen = Vec::new();
        let mut before = None;
        loop {
            let got = query_newest(
                dir.path(),
                &Filter {
                    account: account.map(str::to_owned),
                    before,
                    limit: Some(page),
                    ..Filter::default()
                },
            )
            .unwrap();
            let Some(oldest) = got.last() else { break };
            before = Some(oldest.seq);
            seen.extend(got.iter().map(|r| r.seq));
        }
        seen.reverse();
        let want: Vec<u64> = all
            .iter()
            .filter(|r| account.is_none_or(|a| r.entry.account.as_deref() == Some(a)))
            .map(|r| r.seq)
            .collect();
        assert_eq!(seen, want, "page {page}");
    }
}

#[test]
fn queries_skip_segments_outside_their_time_window() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        segment_bytes: 4000,
        ..Options::default()
    };
    let log = AuditLog::open_with_options(dir.path(), &key(), &options).unwrap();
    for i in 0..300 {
        log.append_written_batch(&[varied(i)]).unwrap();
    }
    drop(log);
    let names = segment_names(&dir_files(dir.path()));
    let range = |n: &String| (n[48..67].to_owned(), n[68..87].to_owned());
    let canonical = |c: &str| {
        format!(
            "{}-{}-{}T{}:{}:{}.{}Z",
            &c[0..4],
            &c[4..6],
            &c[6..8],
            &c[9..11],
            &c[11..13],
            &c[13..15],
            &c[15..18]
        )
    };
    let mid = &names[names.len() / 2];
    let (lo, hi) = range(mid);
    let (since, until) = (canonical(&lo), format!("{}~", canonical(&hi)));
    let f = Filter {
        since: Some(since.clone()),
        until: Some(until.clone()),
        ..Filter::default()
    };
    let want: Vec<u64> = query_newest(dir.path(), &f)
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    let brute: Vec<u64> = (0..300)
        .rev()
        .filter(|&i| {
            let t = varied(i).time;
            t >= since && t < until
        })
        .map(|i| i as u64 + 1)
        .collect();
    assert_eq!(want, brute);
    // Replace every segment whose range lies outside the window with a
    // directory, which cannot be read: the query still answers, the same.
    let mut hidden = 0;
    for n in &names {
        let (a, b) = range(n);
        let (a, b) = (canonical(&a), canonical(&b));
        if b < since || a >= until {
            let p = dir.path().join(n);
            std::fs::remove_file(&p).unwrap();
            std::fs::create_dir(&p).unwrap();
            hidden += 1;
        }
    }
    assert!(
        hidden + 3 >= names.len() && hidden > 10,
        "{hidden} of {}",
        names.len()
    );
    let got: Vec<u64> = query_newest(dir.path(), &f)
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(got, want);
    // A query that needs them fails.
    assert!(query_newest(dir.path(), &Filter::default()).is_err());
}

#[test]
fn query_and_verify_beside_a_live_writer_that_seals() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        segment_bytes: 3000,
        ..Options::default()
    };
    let log = Arc::new(AuditLog::open_with_options(dir.path(), &key(), &options).unwrap());
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        for t in 0..4 {
            let log = Arc::clone(&log);
            let done = &done;
            s.spawn(move || {
                for k in 0..400 {
                    if k % 3 == 0 {
                        log.append_blocking(entry(t * 1000 + k)).unwrap();
                    } else {
                        log.append_written(&entry(t * 1000 + k)).unwrap();
                    }
                }
                done.store(true, std::sync::atomic::Ordering::SeqCst);
            });
        }
        let mut runs = 0;
        while !done.load(std::sync::atomic::Ordering::SeqCst) || runs < 3 {
            let r = verify(dir.path(), &key()).unwrap();
            assert_eq!(r.first_bad, None, "live verify: {r:?}");
            // Newest first, without a gap: a query sees one consistent
            // moment of the trail, whatever seals meanwhile.
            let q = query_newest(dir.path(), &Filter::default()).unwrap();
            assert!(q.windows(2).all(|w| w[0].seq == w[1].seq + 1));
            assert_eq!(q.last().map_or(1, |r| r.seq), 1);
            let mut n = 0;
            visit_oldest(dir.path(), |r| {
                n += 1;
                assert_eq!(r.seq, n);
            })
            .unwrap();
            let page = query_newest(
                dir.path(),
                &Filter {
                    limit: Some(5),
                    before: Some(40),
                    ..Filter::default()
                },
            )
            .unwrap();
            if q.len() >= 40 {
                assert_eq!(
                    page.iter().map(|r| r.seq).collect::<Vec<_>>(),
                    [39, 38, 37, 36, 35]
                );
            }
            runs += 1;
        }
    });
    assert!(log.stats().sealed > 20, "{:?}", log.stats());
    drop(log);
    assert_eq!(verify(dir.path(), &key()).unwrap(), ok_report(1600));
}

// ---------------------------------------------------------------------------
// Records without a node (written before nodes were named).

/// A trail written before records named their node (lines and head built
/// here by hand, as the earlier release wrote them) verifies, queries and
/// opens; records appended after it carry the node and the chain runs on.
#[test]
fn a_trail_without_node_ids_verifies_queries_and_continues() {
    use atrest_crypto::hash::HmacSha256Key;
    let mac_key = HmacSha256Key::new(key().expose());
    let hex = |b: [u8; 32]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let dir = tempfile::tempdir().unwrap();
    let mut prev = "0".repeat(64);
    let mut text = String::new();
    for seq in 1..=3u64 {
        let signed = format!(
            "{{\"seq\":{seq},\"time\":\"2026-01-0{seq}T00:00:00.000Z\",\"request_id\":\"old-{seq}\",\
             \"region\":\"us-east-1\",\"account\":\"111122223333\",\"operation\":\"Decrypt\",\
             \"result\":\"Success\",\"prev\":\"{prev}\""
        );
        let mac = hex(mac_key.sign(signed.as_bytes()));
        text.push_str(&format!("{signed},\"mac\":\"{mac}\"}}\n"));
        prev = mac;
    }
    std::fs::write(dir.path().join(LOG_FILE), &text).unwrap();
    let head = format!("atrest-audit-head v1 {:020} {prev}", 3);
    let tag = hex(mac_key.sign(head.as_bytes()));
    std::fs::write(dir.path().join(HEAD_FILE), format!("{head} {tag}\n")).unwrap();

    assert_eq!(verify(dir.path(), &key()).unwrap(), ok_report(3));
    let old = query(dir.path(), &Filter::default()).unwrap();
    assert_eq!(old.len(), 3);
    assert!(old.iter().all(|r| r.entry.node.is_none()));
    assert_eq!(
        atrest_audit::mac_at(dir.path(), 3).unwrap().as_deref(),
        Some(prev.as_str())
    );
    assert_eq!(atrest_audit::mac_at(dir.path(), 4).unwrap(), None);

    let log = AuditLog::open(dir.path(), &key()).unwrap();
    assert_eq!(log.head().seq, 3);
    assert_eq!(log.head().mac, prev);
    let mut e = entry(4);
    e.node = Some("5d0c6a1e-0000-4000-8000-000000000001".into());
    assert_eq!(log.append_blocking(e).unwrap(), 4);
    assert_eq!(log.head().seq, 4, "the head follows a durable append");
    let head = log.head();
    drop(log);
    assert_eq!(verify(dir.path(), &key()).unwrap(), ok_report(4));
    let all = query(dir.path(), &Filter::default()).unwrap();
    assert_eq!(all.len(), 4);
    assert_eq!(
        all[3].entry.node.as_deref(),
        Some("5d0c6a1e-0000-4000-8000-000000000001")
    );
    assert_eq!(all[3].mac, head.mac);
    assert!(lines(dir.path())[3].contains(",\"node\":\"5d0c6a1e"));
    assert!(!lines(dir.path())[2].contains("node"));
    // The old lines are untouched: byte for byte what was written.
    assert!(
        std::fs::read_to_string(dir.path().join(LOG_FILE))
            .unwrap()
            .starts_with(&text)
    );
}
