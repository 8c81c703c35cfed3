//! How the audit writer behaves under load, on a real disk: appends per
//! second, batch sizes, latency and CPU per append, with N concurrent
//! appenders on a 2-worker tokio runtime. With `--work US`, each appender
//! first burns US microseconds of CPU per operation, emulating the key
//! service (about 58 µs per request of server plus load-generator CPU on the
//! reference machine, where both share 2 cores); compare with `--no-audit`
//! to see what the audit trail costs. With `--written`, appends are
//! answered once written ([`AuditLog::append_written`]) instead of once
//! durable.
//!
//! ```sh
//! cargo run --release -p atrest-audit --example append_rate -- \
//!     [--appenders 64] [--seconds 5] [--work 0 | --units N] [--no-audit] \
//!     [--written] [--commit-us 0] [--sync-us 10000] [--head-sync-ms 1000] [--dir DIR]
//! ```
//!
//! DIR defaults to a fresh temporary directory under `target/tmp` (on the
//! disk a data dir would be on); it is removed afterwards.

#![allow(clippy::unwrap_used, clippy::print_stderr, reason = "a measuring tool")]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use atrest_audit::{AuditLog, Entry, Options};
use atrest_crypto::SecretKey;

fn entry(i: u64) -> Entry {
    Entry {
        time: "2026-11-22T07:12:00.123Z".into(),
        request_id: format!("b6f1c2de-{i:08x}-4c1e-9a55-2f0d8c3b7e11"),
        region: Some("us-east-1".into()),
        account: Some("111122223333".into()),
        principal: Some("arn:aws:iam::111122223333:user/app".into()),
        access_key_id: Some("AKIAIOSFODNN7EXAMPLE".into()),
        source: Some("127.0.0.1:53412".into()),
        operation: "Decrypt".into(),
        key_arn: Some(
            "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab".into(),
        ),
        via_service: None,
        grant_id: None,
        context_keys: vec!["app".into()],
        result: "Success".into(),
        ..Default::default()
    }
}

/// User + system CPU time of this process, from /proc/self/stat.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

/// CPU time of this process's thread named `name`.
fn thread_cpu(name: &str) -> Duration {
    let mut total = Duration::ZERO;
    for t in std::fs::read_dir("/proc/self/task").unwrap() {
        let t = t.unwrap().path();
        let comm = std::fs::read_to_string(t.join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(t.join("stat")).unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = after.split(' ').collect();
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        total += Duration::from_millis(ticks * 10);
    }
    total
}

/// Burns a fixed amount of CPU: `units` rounds of a small loop.
fn burn(units: u64) -> u64 {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..units {
        for _ in 0..100 {
            x = black_box(x.rotate_left(5) ^ 0x2545_f491_4f6c_dd1d).wrapping_mul(3);
        }
    }
    x
}

/// Rounds of `burn` per microsecond of CPU on this machine.
fn calibrate() -> f64 {
    let n = 20_000;
    let t = Instant::now();
    black_box(burn(n));
    n as f64 / (t.elapsed().as_secs_f64() * 1e6)
}

struct Args {
    appenders: u64,
    seconds: u64,
    work_us: f64,
    units: Option<u64>,
    audit: bool,
    written: bool,
    options: Options,
    dir: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        appenders: 64,
        seconds: 5,
        work_us: 0.0,
        units: None,
        audit: true,
        written: false,
        options: Options::default(),
        dir: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap();
        match flag.as_str() {
            "--appenders" => a.appenders = val().parse().unwrap(),
            "--seconds" => a.seconds = val().parse().unwrap(),
            "--work" => a.work_us = val().parse().unwrap(),
            "--units" => a.units = Some(val().parse().unwrap()),
            "--no-audit" => a.audit = false,
            "--commit-us" => {
                a.options.commit_interval = Duration::from_micros(val().parse().unwrap());
            }
            "--sync-us" => {
                a.options.sync_interval = Duration::from_micros(val().parse().unwrap());
            }
            "--written" => a.written = true,
            "--head-sync-ms" => {
                a.options.head_sync_interval = Duration::from_millis(val().parse().unwrap());
            }
            "--dir" => a.dir = Some(val()),
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn main() {
    let a = args();
    let tmp;
    let dir = match &a.dir {
        Some(d) => std::path::PathBuf::from(d),
        None => {
            std::fs::create_dir_all("target/tmp").unwrap();
            tmp = tempfile::tempdir_in("target/tmp").unwrap();
            tmp.path().to_path_buf()
        }
    };
    let key = SecretKey::generate().unwrap();
    let log = Arc::new(AuditLog::open_with_options(&dir, &key, &a.options).unwrap());
    // `--units` fixes the work exactly, for comparing runs.
    let units = a
        .units
        .unwrap_or_else(|| (a.work_us * calibrate()).round() as u64);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let run = |secs: u64| {
        let start_stats = log.stats();
        let cpu0 = cpu_time();
        let writer0 = thread_cpu("atrest-audit");
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(secs);
        let mut lat: Vec<Duration> = rt.block_on(async {
            let hs: Vec<_> = (0..a.appenders)
                .map(|n| {
                    let log = Arc::clone(&log);
                    let audit = a.audit;
                    let written = a.written;
                    tokio::spawn(async move {
                        let mut lat = Vec::new();
                        let mut i = n << 32;
                        while Instant::now() < deadline {
                            let t = Instant::now();
                            black_box(burn(units));
                            if audit && written {
                                log.append_written(&entry(i)).unwrap();
                                tokio::task::yield_now().await;
                            } else if audit {
                                log.append(entry(i)).await.unwrap();
                            } else {
                                black_box(entry(i));
                                tokio::task::yield_now().await;
                            }
                            lat.push(t.elapsed());
                            i += 1;
                        }
                        lat
                    })
                })
                .collect();
            let mut all = Vec::new();
            for h in hs {
                all.extend(h.await.unwrap());
            }
            all
        });
        let elapsed = t0.elapsed();
        let cpu = cpu_time() - cpu0;
        let writer = thread_cpu("atrest-audit") - writer0;
        let s = log.stats();
        let batches = s.batches - start_stats.batches;
        let n = lat.len() as u64;
        lat.sort();
        let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
        (
            n,
            batches,
            elapsed,
            cpu,
            writer,
            pct(0.5),
            pct(0.99),
            s.max_batch,
        )
    };

    run(1); // warm-up
    let (n, batches, elapsed, cpu, writer, p50, p99, max_batch) = run(a.seconds);
    let batch = if batches > 0 {
        format!(
            "{batches} batches ({:.0}/s), mean batch {:.1}, max {max_batch}, syncer thread CPU \
             {:.1} µs/op {:.0} µs/batch",
            batches as f64 / elapsed.as_secs_f64(),
            n as f64 / batches as f64,
            writer.as_secs_f64() * 1e6 / n as f64,
            writer.as_secs_f64() * 1e6 / batches as f64,
        )
    } else {
        "no audit".to_string()
    };
    eprintln!(
        "{} appenders, work {} µs ({units} units), {}, commit {:?}, sync {:?}, head sync {:?}: {:.0} ops/s, {batch}, \
         latency p50 {:.3} ms p99 {:.3} ms, CPU {:.1} µs/op",
        a.appenders,
        a.work_us,
        if a.written {
            "answered once written"
        } else {
            "answered once durable"
        },
        a.options.commit_interval,
        a.options.sync_interval,
        a.options.head_sync_interval,
        n as f64 / elapsed.as_secs_f64(),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        cpu.as_secs_f64() * 1e6 / n as f64,
    );
    drop(log);
}
