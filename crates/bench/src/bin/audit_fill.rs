//! `audit-fill`: grows a stopped server's audit trail with synthetic but
//! realistic records, correctly chained under the data dir's audit key,
//! until the trail holds a given number of bytes. For tests and benchmarks
//! of what a large trail costs (opening, queries, metering at start).
//!
//! ```text
//! cargo build -p atrest-bench --bin audit-fill
//! target/debug/audit-fill --data-dir D --bytes 1G
//! ```
//!
//! The key is derived from the data dir's root of trust as the server
//! derives it (`atrest_server::datadir::audit_key`): the root key file
//! beside the data dir by default, or `--root-key-file`, or a passphrase
//! (`--root-passphrase-file`, `ATREST_ROOT_PASSPHRASE`). The records go
//! through the audit crate's own writer (`AuditLog::append_written_batch`),
//! so the segments are sealed as the server seals them, at
//! `--segment-bytes` (use the server's `--audit-segment-bytes`).
//!
//! Records: requests of a few accounts (`--account`, repeatable; default
//! three) by their root and users, on a few keys each, mostly Encrypt,
//! Decrypt, GenerateDataKey and DescribeKey, some refused; their times
//! spread evenly from the trail's last record (or a day ago) to now, so the
//! trail stays in time order.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use atrest_audit::{AuditLog, Entry, Filter, Options};
use atrest_crypto::SecretBytes;
use atrest_kms::root::RootSource;
use clap::Parser;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Grows a stopped server's audit trail to a given size.
#[derive(Debug, Parser)]
struct Args {
    /// The server's data dir (the server must be stopped).
    #[arg(long)]
    data_dir: PathBuf,
    /// The root key file [default: <data-dir>.root.key, as the server's].
    #[arg(long)]
    root_key_file: Option<PathBuf>,
    /// A file holding the root passphrase (instead of a root key file); or
    /// set ATREST_ROOT_PASSPHRASE.
    #[arg(long)]
    root_passphrase_file: Option<PathBuf>,
    /// Stop once the trail (sealed segments and the active file) holds this
    /// many bytes: a number with an optional K, M or G (powers of 1024).
    #[arg(long, value_parser = parse_size)]
    bytes: u64,
    /// Seal segments at this size, as the server's --audit-segment-bytes
    /// [default: the server's default].
    #[arg(long, default_value_t = atrest_audit::DEFAULT_SEGMENT_BYTES)]
    segment_bytes: u64,
    /// An account whose requests the records are (repeatable) [default:
    /// 111122223333, 444455556666, 777788889999].
    #[arg(long = "account")]
    accounts: Vec<String>,
    /// The region of the requests.
    #[arg(long, default_value = "us-east-1")]
    region: String,
    /// Records per write.
    #[arg(long, default_value_t = 2000)]
    batch: usize,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, ""),
    };
    let n: u64 = digits.parse().map_err(|_| format!("not a size: {s}"))?;
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        _ => return Err(format!("not a size: {s} (use K, M or G)")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("too large: {s}"))
}

fn root_source(args: &Args) -> anyhow::Result<RootSource> {
    let passphrase = match (
        &args.root_passphrase_file,
        std::env::var_os("ATREST_ROOT_PASSPHRASE"),
    ) {
        (Some(path), _) => Some(
            std::fs::read(path)
                .with_context(|| format!("reading {}", path.display()))?
                .trim_ascii_end()
                .to_vec(),
        ),
        (None, Some(p)) if args.root_key_file.is_none() => Some(p.into_encoded_bytes()),
        _ => None,
    };
    Ok(match passphrase {
        Some(p) if p.is_empty() => bail!("the root passphrase is empty"),
        Some(p) => RootSource::Passphrase(SecretBytes::new(p)),
        None => RootSource::KeyFile(
            args.root_key_file
                .clone()
                .unwrap_or_else(|| atrest_server::datadir::default_root_key_file(&args.data_dir)),
        ),
    })
}

/// Bytes of the trail: every segment file and the active file.
fn trail_bytes(dir: &std::path::Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let e = e?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".log") && name.starts_with("audit") {
            total += e.metadata()?.len();
        }
    }
    Ok(total)
}

/// Unix milliseconds → `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn format_ms(ms: i128) -> anyhow::Result<String> {
    let t = OffsetDateTime::from_unix_timestamp_nanos(ms * 1_000_000)?;
    Ok(format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    ))
}

/// The records' shapes: what a busy key service sees.
struct Shapes {
    accounts: Vec<String>,
    region: String,
}

const OPERATIONS: [(&str, bool); 10] = [
    ("Encrypt", true),
    ("Decrypt", true),
    ("GenerateDataKey", true),
    ("Decrypt", true),
    ("GenerateDataKey", true),
    ("DescribeKey", true),
    ("Encrypt", true),
    ("ListKeys", false),
    ("GenerateRandom", false),
    ("Decrypt", true),
];

impl Shapes {
    /// Record `i`'s entry (without its time).
    fn entry(&self, i: u64, out: &mut Entry) {
        let account = &self.accounts[(i % self.accounts.len() as u64) as usize];
        let user = (i / 7) % 5;
        let (principal, akid) = if user == 0 {
            (
                format!("arn:aws:iam::{account}:root"),
                format!("AKIA{account}ROOT"),
            )
        } else {
            (
                format!("arn:aws:iam::{account}:user/app-{user}"),
                format!("AKIA{account}USR{user}"),
            )
        };
        let (operation, on_key) = OPERATIONS[(i % 10) as usize];
        let refused = i % 23 == 5;
        out.request_id = format!(
            "{:08x}-fill-4{:03x}-8{:03x}-{:012x}",
            i as u32,
            (i >> 32) & 0xfff,
            i % 4093,
            i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 16
        );
        out.region = Some(self.region.clone());
        out.account = Some(account.clone());
        out.principal = Some(principal);
        out.access_key_id = Some(akid);
        out.source = Some(format!(
            "10.0.{}.{}:{}",
            (i / 251) % 250,
            i % 251,
            30000 + i % 20000
        ));
        out.operation = operation.to_owned();
        out.key_arn = on_key.then(|| {
            format!(
                "arn:aws:kms:{}:{account}:key/0000{:04x}-fill-4000-8000-{:012x}",
                self.region,
                (i / 3) % 8,
                (i / 3) % 8
            )
        });
        out.via_service = i.is_multiple_of(17).then(|| "disk.atrest".to_owned());
        out.grant_id = None;
        out.context_keys = if on_key && operation != "DescribeKey" {
            vec!["tenant".to_owned(), "purpose".to_owned()]
        } else {
            Vec::new()
        };
        out.result = if refused {
            "AccessDeniedException".to_owned()
        } else {
            "Success".to_owned()
        };
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = atrest_server::datadir::audit_dir(&args.data_dir);
    let key = atrest_server::datadir::audit_key(&args.data_dir, root_source(&args)?)
        .context("deriving the audit key from the data dir's root of trust")?;
    let options = Options {
        segment_bytes: args.segment_bytes,
        // Written in bulk: the syncer syncs what is written about twice a
        // second (and every segment as it seals it), without zero tails.
        sync_interval: std::time::Duration::from_millis(500),
        preallocate: 0,
        ..Options::default()
    };
    let started = Instant::now();
    let log = AuditLog::open_with_options(&dir, &key, &options)
        .context("opening the audit trail (is the server stopped?)")?;
    let last = atrest_audit::query_newest(
        &dir,
        &Filter {
            limit: Some(1),
            ..Filter::default()
        },
    )?;
    let now_ms = OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    let from_ms = match last.first() {
        Some(r) => OffsetDateTime::parse(&r.entry.time, &Rfc3339)
            .map(|t| t.unix_timestamp_nanos() / 1_000_000)
            .unwrap_or(now_ms - 86_400_000),
        None => now_ms - 86_400_000,
    };
    let start_bytes = trail_bytes(&dir)?;
    if start_bytes >= args.bytes {
        println!("the trail already holds {start_bytes} bytes");
        return Ok(());
    }
    // About 520 bytes a record: spread the times over as many.
    let expected = ((args.bytes - start_bytes) / 520).max(1);
    let span = (now_ms - from_ms).max(0);
    let shapes = Shapes {
        accounts: if args.accounts.is_empty() {
            vec![
                "111122223333".into(),
                "444455556666".into(),
                "777788889999".into(),
            ]
        } else {
            args.accounts.clone()
        },
        region: args.region.clone(),
    };
    let batch_size = args.batch.max(1);
    let mut batch: Vec<Entry> = (0..batch_size).map(|_| Entry::default()).collect();
    let first_seq = log.stats().last_seq + 1;
    let mut i: u64 = 0;
    let mut bytes = start_bytes;
    while bytes < args.bytes {
        for e in &mut batch {
            let at = from_ms + span * i128::from(i.min(expected)) / i128::from(expected);
            e.time = format_ms(at)?;
            shapes.entry(first_seq + i, e);
            i += 1;
        }
        log.append_written_batch(&batch)?;
        bytes = trail_bytes(&dir)?;
    }
    let stats = log.stats();
    drop(log);
    let secs = started.elapsed().as_secs_f64();
    println!(
        "appended {i} records (seq {first_seq} to {}), sealed {} segments: the trail holds {} bytes ({:.1} MiB/s, {:.1} s)",
        stats.last_seq,
        stats.sealed,
        trail_bytes(&dir)?,
        (bytes - start_bytes) as f64 / 1048576.0 / secs,
        secs
    );
    Ok(())
}
