//! `xts-bench`: AES-256-XTS throughput per core of atrest's `Xts256` next to
//! `openssl speed`, the rejected RustCrypto candidates, and AES-256-GCM
//! sealing. Prints markdown tables; see `docs/benchmarks.md`.
//!
//! ```text
//! cargo run --release -p atrest-bench --bin xts-bench
//! ```

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use atrest_bench::candidates::{NaiveXtsAes09, XtsModeAes08};
use atrest_bench::{
    Harness, OpensslSpeed, Table, clock_ticks, cores_busy_during, machine_description,
};
use atrest_crypto::aead::{Aes256Gcm, NONCE_LEN, TAG_LEN};
use atrest_crypto::xts::Xts256;
use atrest_crypto::{Aes256Key, XtsKey};
use clap::Parser;

/// AES-256-XTS and AES-256-GCM throughput on one core, atrest against OpenSSL.
#[derive(Debug, Parser)]
struct Args {
    /// Bytes handed to one `encrypt_sectors`/`decrypt_sectors` call, as a
    /// disk engine would batch them (256 sectors of 4 KiB by default).
    #[arg(long, default_value_t = 1 << 20)]
    buffer_bytes: usize,
    /// Length of one timed run, in milliseconds.
    #[arg(long, default_value_t = 500)]
    run_ms: u64,
    /// Timed runs per row; the best is reported.
    #[arg(long, default_value_t = 5)]
    runs: u32,
    /// Seconds for each `openssl speed` run.
    #[arg(long, default_value_t = 3)]
    openssl_seconds: u32,
    /// `openssl speed` runs per row; the best is reported, as for atrest's
    /// rows (this machine's throughput drifts between runs).
    #[arg(long, default_value_t = 3)]
    openssl_runs: u32,
    /// Skip `openssl speed` (and the ratios).
    #[arg(long)]
    no_openssl: bool,
    /// Skip the rejected candidates.
    #[arg(long)]
    no_candidates: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Encrypt,
    Decrypt,
}

impl Dir {
    fn name(self) -> &'static str {
        match self {
            Dir::Encrypt => "encrypt",
            Dir::Decrypt => "decrypt",
        }
    }
}

/// One measured row.
struct Row {
    operation: String,
    implementation: String,
    gbps: Option<f64>,
    /// The OpenSSL reference of the same operation, for the ratio.
    reference: Option<f64>,
    note: String,
    /// `note` is the command that produced the row.
    command: bool,
}

fn fmt_gbps(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.2}"))
}

fn fmt_ratio(v: Option<f64>, reference: Option<f64>) -> String {
    match (v, reference) {
        (Some(v), Some(r)) if r > 0.0 => format!("{:.2}x", v / r),
        _ => "n/a".to_owned(),
    }
}

/// Runs `openssl speed` `runs` times and returns the best, reporting (not
/// failing on) a missing `openssl`.
fn openssl(spec: &OpensslSpeed<'_>, runs: u32, missing: &mut bool) -> anyhow::Result<Option<f64>> {
    let mut best: Option<f64> = None;
    for _ in 0..runs.max(1) {
        if *missing {
            return Ok(None);
        }
        match spec.run()? {
            Some(v) => best = Some(best.map_or(v, |b| b.max(v))),
            None => {
                println!("note: `openssl` is not installed; skipping OpenSSL rows and ratios.");
                *missing = true;
            }
        }
    }
    Ok(best)
}

/// Checks that both candidates produce Xts256's ciphertext (and invert it)
/// for a test buffer of sectors; fails loudly otherwise.
fn verify_candidates(key: &XtsKey, sector_len: usize) -> anyhow::Result<()> {
    let mut reference = Xts256::new(key)?;
    let xm = XtsModeAes08::new(key.expose())?;
    let mut naive = NaiveXtsAes09::new(key.expose())?;
    let first = 0x0123_4567_89ab_u64;
    let plain: Vec<u8> = (0..4 * sector_len)
        .map(|i| (i.wrapping_mul(131) % 251) as u8)
        .collect();
    let mut expected = plain.clone();
    reference.encrypt_sectors(first, sector_len, &mut expected)?;
    ensure!(expected != plain, "Xts256 left the plaintext unchanged");

    let mut a = plain.clone();
    xm.encrypt_sectors(first, sector_len, &mut a);
    ensure!(
        a == expected,
        "MISMATCH: xts-mode 0.5 + aes 0.8 ciphertext differs from Xts256 ({sector_len}-byte sectors)"
    );
    xm.decrypt_sectors(first, sector_len, &mut a);
    ensure!(
        a == plain,
        "MISMATCH: xts-mode 0.5 + aes 0.8 does not decrypt ({sector_len}-byte sectors)"
    );

    let mut b = plain.clone();
    naive.encrypt_sectors(first, sector_len, &mut b)?;
    ensure!(
        b == expected,
        "MISMATCH: naive XTS + aes 0.9 ciphertext differs from Xts256 ({sector_len}-byte sectors)"
    );
    naive.decrypt_sectors(first, sector_len, &mut b)?;
    ensure!(
        b == plain,
        "MISMATCH: naive XTS + aes 0.9 does not decrypt ({sector_len}-byte sectors)"
    );

    let mut c = expected;
    reference.decrypt_sectors(first, sector_len, &mut c)?;
    ensure!(c == plain, "Xts256 does not decrypt its own ciphertext");
    Ok(())
}

fn xts_rows(
    args: &Args,
    harness: &Harness,
    key: &XtsKey,
    sector_len: usize,
    openssl_missing: &mut bool,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let len = args.buffer_bytes / sector_len * sector_len;
    ensure!(len > 0, "--buffer-bytes must hold at least one sector");
    let sectors = len / sector_len;
    let mut buf: Vec<u8> = (0..len).map(|i| (i.wrapping_mul(31) % 251) as u8).collect();
    let mut xts = Xts256::new(key)?;
    let xm = XtsModeAes08::new(key.expose())?;
    let mut naive = NaiveXtsAes09::new(key.expose())?;

    for dir in [Dir::Encrypt, Dir::Decrypt] {
        let operation = format!("XTS {} {sector_len} B sectors", dir.name());
        let spec = OpensslSpeed {
            cipher: "aes-256-xts",
            bytes: sector_len,
            decrypt: dir == Dir::Decrypt,
            aead: false,
            seconds: args.openssl_seconds,
        };
        let reference = if args.no_openssl {
            None
        } else {
            openssl(&spec, args.openssl_runs, openssl_missing)?
        };

        let ours = harness.gb_per_s(len, || match dir {
            Dir::Encrypt => xts.encrypt_sectors(0, sector_len, &mut buf),
            Dir::Decrypt => xts.decrypt_sectors(0, sector_len, &mut buf),
        })?;
        rows.push(Row {
            operation: operation.clone(),
            implementation: "atrest `Xts256` (AWS-LC)".into(),
            gbps: Some(ours),
            reference,
            note: format!("{sectors} sectors per call"),
            command: false,
        });
        if reference.is_some() {
            rows.push(Row {
                operation: operation.clone(),
                implementation: "OpenSSL (`openssl speed`)".into(),
                gbps: reference,
                reference,
                note: format!("`{}`", spec.command_line()),
                command: true,
            });
        }
        if !args.no_candidates {
            let v = harness.gb_per_s(len, || {
                match dir {
                    Dir::Encrypt => xm.encrypt_sectors(0, sector_len, &mut buf),
                    Dir::Decrypt => xm.decrypt_sectors(0, sector_len, &mut buf),
                }
                Ok::<(), anyhow::Error>(())
            })?;
            rows.push(Row {
                operation: operation.clone(),
                implementation: "rejected: `xts-mode` 0.5 + `aes` 0.8".into(),
                gbps: Some(v),
                reference,
                note: String::new(),
                command: false,
            });
            let v = harness.gb_per_s(len, || match dir {
                Dir::Encrypt => naive.encrypt_sectors(0, sector_len, &mut buf),
                Dir::Decrypt => naive.decrypt_sectors(0, sector_len, &mut buf),
            })?;
            rows.push(Row {
                operation,
                implementation: "rejected: naive XTS + `aes` 0.9 (VAES)".into(),
                gbps: Some(v),
                reference,
                note: String::new(),
                command: false,
            });
        }
    }
    Ok(())
}

fn gcm_rows(
    args: &Args,
    harness: &Harness,
    openssl_missing: &mut bool,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    const MSG: usize = 4096;
    const BATCH: usize = 256;
    let key = Aes256Key::generate()?;
    let gcm = Aes256Gcm::new(&key)?;
    let plain: Vec<u8> = (0..MSG).map(|i| (i % 251) as u8).collect();
    let mut out = Vec::with_capacity(MSG + TAG_LEN);
    let mut counter = 0u64;
    let operation = "GCM seal 4096 B messages".to_owned();
    let (streaming, per_message) = if args.no_openssl {
        (None, None)
    } else {
        let stream = OpensslSpeed {
            cipher: "aes-256-gcm",
            bytes: MSG,
            decrypt: false,
            aead: false,
            seconds: args.openssl_seconds,
        };
        let aead = OpensslSpeed {
            aead: true,
            ..stream
        };
        (
            openssl(&stream, args.openssl_runs, openssl_missing)?
                .map(|v| (v, stream.command_line())),
            openssl(&aead, args.openssl_runs, openssl_missing)?.map(|v| (v, aead.command_line())),
        )
    };
    let reference = streaming.as_ref().map(|s| s.0);
    let ours = harness.gb_per_s(MSG * BATCH, || {
        for _ in 0..BATCH {
            counter += 1;
            let mut nonce = [0u8; NONCE_LEN];
            nonce[..8].copy_from_slice(&counter.to_le_bytes());
            out.clear();
            gcm.seal_append(&nonce, &[], &plain, &mut out)?;
        }
        Ok::<(), anyhow::Error>(())
    })?;
    ensure!(
        out.len() == MSG + TAG_LEN,
        "seal_append wrote {} bytes",
        out.len()
    );
    rows.push(Row {
        operation: operation.clone(),
        implementation: "atrest `Aes256Gcm::seal_append` (AWS-LC)".into(),
        gbps: Some(ours),
        reference,
        note: "fresh nonce and tag per message".into(),
        command: false,
    });
    if let Some((v, cmd)) = streaming {
        rows.push(Row {
            operation: operation.clone(),
            implementation: "OpenSSL (`openssl speed`), one stream".into(),
            gbps: Some(v),
            reference,
            note: format!("`{cmd}`"),
            command: true,
        });
    }
    if let Some((v, cmd)) = per_message {
        rows.push(Row {
            operation,
            implementation: "OpenSSL (`openssl speed -aead`), per message".into(),
            gbps: Some(v),
            reference,
            note: format!("`{cmd}`"),
            command: true,
        });
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let harness = Harness {
        warm_up: Duration::from_millis(300),
        run_time: Duration::from_millis(args.run_ms),
        runs: args.runs,
    };
    let key = XtsKey::generate().context("generating an XTS key")?;
    if !args.no_candidates {
        for sector_len in [4096, 512] {
            verify_candidates(&key, sector_len)?;
        }
    }

    println!("# xts-bench");
    println!();
    println!("machine: {}", machine_description());
    if !args.no_openssl {
        match std::process::Command::new("openssl")
            .arg("version")
            .output()
        {
            Ok(o) => println!("openssl: {}", String::from_utf8_lossy(&o.stdout).trim()),
            Err(_) => println!("openssl: not installed"),
        }
    }
    println!(
        "single thread; GB/s = 10^9 bytes/s; atrest and candidates: best of {} runs of {} ms \
         after a warm-up, {} bytes per call; OpenSSL: best of {} runs of `openssl speed` ({} s each)",
        args.runs, args.run_ms, args.buffer_bytes, args.openssl_runs, args.openssl_seconds
    );
    if !args.no_candidates {
        println!("candidates verified: same ciphertext as Xts256 on 4096 B and 512 B sectors");
    }
    println!();

    let mut openssl_missing = false;
    let mut rows = Vec::new();
    let (measured, busy) = cores_busy_during(clock_ticks(), || {
        for sector_len in [4096, 512] {
            xts_rows(
                &args,
                &harness,
                &key,
                sector_len,
                &mut openssl_missing,
                &mut rows,
            )?;
        }
        gcm_rows(&args, &harness, &mut openssl_missing, &mut rows)
    });
    measured?;

    let mut table = Table::new(&[
        "operation",
        "implementation",
        ">GB/s per core",
        ">vs OpenSSL",
        "notes",
    ]);
    let mut commands = Vec::new();
    for r in &rows {
        let note = if r.command {
            commands.push(r.note.clone());
            format!("command [{}]", commands.len())
        } else {
            r.note.clone()
        };
        table.row(vec![
            r.operation.clone(),
            r.implementation.clone(),
            fmt_gbps(r.gbps),
            fmt_ratio(r.gbps, r.reference),
            note,
        ]);
    }
    print!("{}", table.render());
    println!();
    for (i, c) in commands.iter().enumerate() {
        println!("[{}] {c}", i + 1);
    }
    if !commands.is_empty() {
        println!();
    }

    if let Some(busy) = busy {
        println!(
            "machine load during the run: {busy:.2} cores busy on average (this benchmark uses 1){}",
            if busy > 1.15 {
                "; WARNING: other processes competed, figures are skewed"
            } else {
                ""
            }
        );
    }

    // The target: atrest's XTS at least as fast as OpenSSL's on 4 KiB sectors.
    let ours = |op: &str| {
        rows.iter()
            .find(|r| r.operation == op && r.implementation.starts_with("atrest"))
    };
    for op in ["XTS encrypt 4096 B sectors", "XTS decrypt 4096 B sectors"] {
        let Some(r) = ours(op) else {
            bail!("no atrest row for {op}");
        };
        match (r.gbps, r.reference) {
            (Some(v), Some(reference)) => {
                let ratio = v / reference;
                println!(
                    "target ({op}: atrest >= 1.0x OpenSSL): {:.2}x, {}",
                    ratio,
                    if ratio >= 1.0 { "MET" } else { "NOT MET" }
                );
            }
            _ => println!("target ({op}): no OpenSSL figure, ratio not computed"),
        }
    }
    Ok(())
}
