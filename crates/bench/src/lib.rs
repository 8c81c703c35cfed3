//! Benchmarks for atrest.
//!
//! Three binaries use this library:
//!
//! * `xts-bench`: AES-256-XTS (and AES-256-GCM) throughput per core of
//!   [`atrest_crypto::xts::Xts256`] next to `openssl speed` and the rejected
//!   RustCrypto candidates ([`candidates`]).
//! * `kms-load`: a SigV4 load generator for the KMS API.
//! * `disk-bench`: the disk engine against an unencrypted disk and a plain
//!   file, and snapshot/clone time by disk size.
//!
//! This library holds what they share and what is worth a unit test: the
//! timing harness, the parser of `openssl speed` output, exact percentiles and
//! the markdown tables. See `docs/benchmarks.md` for the results.

pub mod candidates;

use std::hint::black_box;
use std::process::Command;
use std::time::{Duration, Instant};

/// How the timing harness runs one row: a warm-up, then the best of `runs`
/// runs of at least `run_time` each.
#[derive(Debug, Clone, Copy)]
pub struct Harness {
    /// Time spent running the code before measuring (caches, clocks, lazy
    /// CPU-feature detection).
    pub warm_up: Duration,
    /// Least length of one run.
    pub run_time: Duration,
    /// Number of runs; the fastest is reported.
    pub runs: u32,
}

impl Default for Harness {
    fn default() -> Self {
        Self {
            warm_up: Duration::from_millis(300),
            run_time: Duration::from_millis(500),
            runs: 5,
        }
    }
}

impl Harness {
    /// Calls `f` repeatedly; each call processes `bytes_per_call` bytes.
    /// Returns the best throughput in GB/s (10^9 bytes per second, the unit
    /// `openssl speed` reports in, times 10^-6).
    pub fn gb_per_s<E>(
        &self,
        bytes_per_call: usize,
        mut f: impl FnMut() -> Result<(), E>,
    ) -> Result<f64, E> {
        let start = Instant::now();
        while start.elapsed() < self.warm_up {
            f()?;
        }
        let mut best = 0.0_f64;
        for _ in 0..self.runs {
            let mut calls = 0_u64;
            let start = Instant::now();
            let elapsed = loop {
                f()?;
                calls += 1;
                let elapsed = start.elapsed();
                if elapsed >= self.run_time {
                    break elapsed;
                }
            };
            let rate = (calls as f64 * bytes_per_call as f64) / elapsed.as_secs_f64() / 1e9;
            best = best.max(rate);
        }
        black_box(&mut f);
        Ok(best)
    }
}

/// What to ask `openssl speed` for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpensslSpeed<'a> {
    /// EVP cipher name, for example `aes-256-xts`.
    pub cipher: &'a str,
    /// Message size in bytes (`-bytes`).
    pub bytes: usize,
    /// Time decryption (`-decrypt`).
    pub decrypt: bool,
    /// Benchmark an AEAD in its TLS-like sequence (`-aead`): a fresh IV, the
    /// AAD and the tag for every message.
    pub aead: bool,
    /// Seconds to run (`-seconds`).
    pub seconds: u32,
}

impl OpensslSpeed<'_> {
    /// The arguments after `openssl`.
    #[must_use]
    pub fn args(&self) -> Vec<String> {
        let mut a = vec![
            "speed".to_owned(),
            "-elapsed".to_owned(),
            "-seconds".to_owned(),
            self.seconds.to_string(),
            "-bytes".to_owned(),
            self.bytes.to_string(),
        ];
        if self.decrypt {
            a.push("-decrypt".to_owned());
        }
        if self.aead {
            a.push("-aead".to_owned());
        }
        a.push("-evp".to_owned());
        a.push(self.cipher.to_owned());
        a
    }

    /// The command line, for the record.
    #[must_use]
    pub fn command_line(&self) -> String {
        format!("openssl {}", self.args().join(" "))
    }

    /// Runs `openssl speed` (single process, so one core) and returns GB/s.
    /// `Ok(None)` when `openssl` is not installed.
    pub fn run(&self) -> anyhow::Result<Option<f64>> {
        let out = match Command::new("openssl").args(self.args()).output() {
            Ok(o) => o,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(anyhow::anyhow!("running {}: {e}", self.command_line())),
        };
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            anyhow::bail!(
                "{} failed ({}): {}{}",
                self.command_line(),
                out.status,
                stdout,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        parse_openssl_speed(&stdout, self.bytes)
            .map(Some)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "could not find the {}-byte column in the output of {}:\n{stdout}",
                    self.bytes,
                    self.command_line()
                )
            })
    }
}

/// Reads the `bytes`-byte column of `openssl speed`'s table, which is in
/// 1000s of bytes per second (`1865221.07k`), and returns GB/s.
#[must_use]
pub fn parse_openssl_speed(output: &str, bytes: usize) -> Option<f64> {
    let want = bytes.to_string();
    let mut lines = output.lines();
    while let Some(line) = lines.next() {
        let mut words = line.split_whitespace();
        if words.next() != Some("type") {
            continue;
        }
        // "type  16 bytes  64 bytes ... 4096 bytes": sizes are every other word.
        let sizes: Vec<&str> = words.step_by(2).collect();
        let col = sizes.iter().position(|s| *s == want)?;
        let row = lines.next()?;
        // The cipher's name may contain spaces; the values are the last words.
        let values: Vec<&str> = row.split_whitespace().collect();
        let value = values.get(values.len().checked_sub(sizes.len())? + col)?;
        let thousands: f64 = value.strip_suffix('k')?.parse().ok()?;
        return Some(thousands * 1000.0 / 1e9);
    }
    None
}

/// The `q`-quantile (0 < q <= 1) of sorted samples by the nearest-rank
/// method: the smallest sample with at least `q` of all samples at or below
/// it. `None` for no samples.
#[must_use]
pub fn percentile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len();
    // Rank ceil(q * n), 1-based; the epsilon keeps 0.99 * 100 (which is not
    // exact in binary) at rank 99.
    let rank = ((q * n as f64 - 1e-9).ceil() as usize).clamp(1, n);
    Some(sorted[rank - 1])
}

/// A markdown table, columns padded for reading in a terminal.
#[derive(Debug, Clone)]
pub struct Table {
    header: Vec<String>,
    right_aligned: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles. A title starting with `>` is
    /// right-aligned (the `>` is not shown).
    #[must_use]
    pub fn new(header: &[&str]) -> Self {
        Self {
            right_aligned: header.iter().map(|h| h.starts_with('>')).collect(),
            header: header
                .iter()
                .map(|h| h.trim_start_matches('>').to_owned())
                .collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row (missing cells are empty).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as markdown.
    #[must_use]
    pub fn render(&self) -> String {
        let cols = self.header.len();
        let cell = |r: &Vec<String>, i: usize| r.get(i).cloned().unwrap_or_default();
        let width: Vec<usize> = (0..cols)
            .map(|i| {
                self.rows
                    .iter()
                    .map(|r| cell(r, i).chars().count())
                    .chain([self.header[i].chars().count(), 3])
                    .max()
                    .unwrap_or(3)
            })
            .collect();
        let line = |cells: Vec<String>| {
            let padded: Vec<String> = cells
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    if self.right_aligned[i] {
                        format!("{c:>w$}", w = width[i])
                    } else {
                        format!("{c:<w$}", w = width[i])
                    }
                })
                .collect();
            format!("| {} |\n", padded.join(" | "))
        };
        let mut s = line(self.header.clone());
        // Each rule cell spans the cell and its two padding spaces.
        let rule: Vec<String> = (0..cols)
            .map(|i| {
                if self.right_aligned[i] {
                    format!("{}:", "-".repeat(width[i] + 1))
                } else {
                    "-".repeat(width[i] + 2)
                }
            })
            .collect();
        s.push_str(&format!("|{}|\n", rule.join("|")));
        for r in &self.rows {
            s.push_str(&line((0..cols).map(|i| cell(r, i)).collect()));
        }
        s
    }
}

/// CPU time used by all processes of the machine so far (user, nice,
/// system, irq, softirq and steal from the first line of /proc/stat), in
/// clock ticks.
#[must_use]
pub fn machine_busy_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let f: Vec<u64> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    // user nice system idle iowait irq softirq steal ...
    Some(f.get(..3)?.iter().sum::<u64>() + f.get(5..8)?.iter().sum::<u64>())
}

/// Cores busy on the whole machine while `f` runs (for example another
/// build competing with a benchmark), from /proc/stat.
pub fn cores_busy_during<T>(ticks_per_s: f64, f: impl FnOnce() -> T) -> (T, Option<f64>) {
    let start = (Instant::now(), machine_busy_ticks());
    let out = f();
    let busy = match (start.1, machine_busy_ticks()) {
        (Some(a), Some(b)) => {
            Some(b.saturating_sub(a) as f64 / ticks_per_s / start.0.elapsed().as_secs_f64())
        }
        _ => None,
    };
    (out, busy)
}

/// Clock ticks per second of /proc's CPU times (`getconf CLK_TCK`, else 100).
#[must_use]
pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// The CPU's model name and the number of cores this process may use.
#[must_use]
pub fn machine_description() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    format!("{model}, {cores} cores")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEED_4096: &str = "\
version: 3.0.19
The 'numbers' are in 1000s of bytes per second processed.
type           4096 bytes
AES-256-XTS    1865221.07k
";

    const SPEED_ALL: &str = "\
The 'numbers' are in 1000s of bytes per second processed.
type             16 bytes     64 bytes    256 bytes   1024 bytes   8192 bytes  16384 bytes
AES-256 GCM     512345.12k  1534567.89k  3456789.01k  5678901.23k  7000000.00k  7100000.00k
";

    #[test]
    fn parses_the_single_column_table() {
        let g = parse_openssl_speed(SPEED_4096, 4096).unwrap();
        assert!((g - 1.865_221_07).abs() < 1e-9, "{g}");
        assert_eq!(parse_openssl_speed(SPEED_4096, 512), None);
    }

    #[test]
    fn parses_a_column_of_the_full_table_with_spaces_in_the_name() {
        let g = parse_openssl_speed(SPEED_ALL, 8192).unwrap();
        assert!((g - 7.0).abs() < 1e-9, "{g}");
        let g = parse_openssl_speed(SPEED_ALL, 16).unwrap();
        assert!((g - 0.512_345_12).abs() < 1e-9, "{g}");
        assert_eq!(parse_openssl_speed("garbage\n", 16), None);
    }

    #[test]
    fn openssl_arguments() {
        let s = OpensslSpeed {
            cipher: "aes-256-xts",
            bytes: 4096,
            decrypt: true,
            aead: false,
            seconds: 3,
        };
        assert_eq!(
            s.command_line(),
            "openssl speed -elapsed -seconds 3 -bytes 4096 -decrypt -evp aes-256-xts"
        );
    }

    #[test]
    fn nearest_rank_percentiles() {
        let ms = |v: u64| Duration::from_millis(v);
        let samples: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(percentile(&samples, 0.50), Some(ms(50)));
        assert_eq!(percentile(&samples, 0.99), Some(ms(99)));
        assert_eq!(percentile(&samples, 1.0), Some(ms(100)));
        assert_eq!(percentile(&[ms(7)], 0.99), Some(ms(7)));
        assert_eq!(percentile(&[ms(1), ms(2), ms(3)], 0.5), Some(ms(2)));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn tables_render_as_markdown() {
        let mut t = Table::new(&["name", ">GB/s"]);
        t.row(vec!["a".into(), "1.00".into()]);
        t.row(vec!["longer".into(), "12.50".into()]);
        assert_eq!(
            t.render(),
            "| name   |  GB/s |\n|--------|------:|\n| a      |  1.00 |\n| longer | 12.50 |\n"
        );
    }

    #[test]
    fn harness_reports_a_rate() {
        let h = Harness {
            warm_up: Duration::from_millis(1),
            run_time: Duration::from_millis(5),
            runs: 2,
        };
        let mut buf = vec![0u8; 4096];
        let rate = h
            .gb_per_s(buf.len(), || {
                buf.iter_mut().for_each(|b| *b = b.wrapping_add(1));
                Ok::<(), ()>(())
            })
            .unwrap();
        assert!(rate > 0.0);
    }
}
