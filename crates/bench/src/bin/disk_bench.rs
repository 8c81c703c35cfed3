//! `disk-bench`: the disk engine's data path on an encrypted disk, on an
//! unencrypted one and on a plain file, side by side on one filesystem; and
//! the time of a snapshot and a clone on a small and a large disk. Prints
//! markdown tables; see `docs/benchmarks.md`.
//!
//! ```text
//! cargo build --release -p atrest-bench --bin disk-bench
//! target/release/disk-bench --dir /var/tmp
//! ```
//!
//! The engine runs as the server runs it: its pool in a [`FileStorage`] and
//! its metadata in a [`RedbStore`], in a temporary directory under `--dir`.
//! The plain file is written with `pwrite` and read with `pread`, with an
//! `fdatasync` where the engine flushes.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use atrest_bench::{Table, clock_ticks, cores_busy_during, machine_description};
use atrest_crypto::XtsKey;
use atrest_disk::{DiskSpec, Engine, FileStorage, KeyInfo, Labels, OpenDisk};
use atrest_store::RedbStore;
use clap::Parser;

/// Disk engine throughput (encrypted, unencrypted, plain file) and
/// snapshot/clone time.
#[derive(Debug, Parser)]
struct Args {
    /// Directory to work in (a temporary directory is made in it and
    /// removed at the end); it decides the filesystem and device measured.
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    dir: PathBuf,
    /// Size of each disk and of the plain file, in MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// Time each target gets in each case, in seconds (a fill and a cold
    /// sequential read stop after one pass).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Writes between two flushes (engine flush; `fdatasync` for the file).
    #[arg(long, default_value_t = 16)]
    flush_every: u64,
    /// Times each case is run (within a case the targets take turns in
    /// short slices; which one starts rotates from round to round).
    #[arg(long, default_value_t = 1)]
    rounds: u32,
    /// Snapshots and clones timed per disk size (the median is reported).
    #[arg(long, default_value_t = 20)]
    snapshot_runs: usize,
    /// Size of the large disk of the snapshot test, in GiB.
    #[arg(long, default_value_t = 64)]
    large_gib: u64,
    /// The cases to run after the first fill (which always runs), in this
    /// order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "seq-write,seq-read,rand-write,rand-read"
    )]
    cases: Vec<CaseArg>,
    /// Also run the read cases with the files' pages dropped from the page
    /// cache first (`dd iflag=nocache count=0`), so reads come from the
    /// device.
    #[arg(long)]
    cold: bool,
    /// Skip the throughput cases.
    #[arg(long)]
    no_io: bool,
    /// Skip the snapshot and clone timing.
    #[arg(long)]
    no_snapshots: bool,
}

const MIB: u64 = 1 << 20;
/// Bytes of random data that writes take their data from.
const NOISE: usize = 64 << 20;
const GIB: u64 = 1 << 30;

/// What is measured: a disk of the engine or the plain file.
trait Target {
    fn write(&self, offset: u64, data: &[u8]) -> anyhow::Result<()>;
    fn read(&self, offset: u64, buf: &mut [u8]) -> anyhow::Result<()>;
    fn flush(&self) -> anyhow::Result<()>;
    /// The files whose cached pages a cold read case drops.
    fn files(&self) -> Vec<PathBuf>;
}

struct EngineDisk {
    disk: OpenDisk,
    pool: PathBuf,
}

impl Target for EngineDisk {
    fn write(&self, offset: u64, data: &[u8]) -> anyhow::Result<()> {
        Ok(self.disk.write(offset, data, false)?)
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> anyhow::Result<()> {
        Ok(self.disk.read(offset, buf)?)
    }
    fn flush(&self) -> anyhow::Result<()> {
        Ok(self.disk.flush()?)
    }
    fn files(&self) -> Vec<PathBuf> {
        vec![self.pool.clone()]
    }
}

struct PlainFile {
    file: File,
    path: PathBuf,
}

impl Target for PlainFile {
    fn write(&self, offset: u64, data: &[u8]) -> anyhow::Result<()> {
        Ok(self.file.write_all_at(data, offset)?)
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> anyhow::Result<()> {
        Ok(self.file.read_exact_at(buf, offset)?)
    }
    fn flush(&self) -> anyhow::Result<()> {
        Ok(self.file.sync_data()?)
    }
    fn files(&self) -> Vec<PathBuf> {
        vec![self.path.clone()]
    }
}

/// Drops the clean cached pages of `path` (after a flush, all of them).
fn drop_cache(path: &Path) -> anyhow::Result<()> {
    let mut arg = std::ffi::OsString::from("if=");
    arg.push(path);
    let st = std::process::Command::new("dd")
        .arg(arg)
        .args(["iflag=nocache", "count=0", "status=none"])
        .status()
        .context("running dd")?;
    ensure!(
        st.success(),
        "dd iflag=nocache failed on {}",
        path.display()
    );
    Ok(())
}

/// A case as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum CaseArg {
    SeqWrite,
    SeqRead,
    RandWrite,
    RandRead,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    /// 1 MiB writes over the whole, empty disk: the engine allocates
    /// chunks, the filesystem blocks.
    FirstFill,
    SeqWrite,
    SeqRead {
        cold: bool,
    },
    RandWrite,
    RandRead {
        cold: bool,
    },
}

impl Case {
    fn name(self) -> String {
        let cold = |c: bool| {
            if c {
                ", from the device"
            } else {
                ", page cache"
            }
        };
        match self {
            Case::FirstFill => "1 MiB seq write, first fill (allocating)".into(),
            Case::SeqWrite => "1 MiB seq write (overwrite)".into(),
            Case::SeqRead { cold: c } => format!("1 MiB seq read{}", cold(c)),
            Case::RandWrite => "4 KiB random write (overwrite)".into(),
            Case::RandRead { cold: c } => format!("4 KiB random read{}", cold(c)),
        }
    }

    fn io_len(self) -> usize {
        match self {
            Case::FirstFill | Case::SeqWrite | Case::SeqRead { .. } => MIB as usize,
            Case::RandWrite | Case::RandRead { .. } => 4096,
        }
    }

    fn writes(self) -> bool {
        matches!(self, Case::FirstFill | Case::SeqWrite | Case::RandWrite)
    }

    fn cold(self) -> bool {
        matches!(
            self,
            Case::SeqRead { cold: true } | Case::RandRead { cold: true }
        )
    }
}

/// One run of one case on one target.
#[derive(Debug, Clone, Copy)]
struct Measure {
    ops: u64,
    bytes: u64,
    elapsed: Duration,
}

impl Measure {
    fn mib_s(&self) -> f64 {
        self.bytes as f64 / MIB as f64 / self.elapsed.as_secs_f64()
    }
    fn iops(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
}

/// xorshift64*: random offsets, the same sequence for every target.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// Where one target is in a case.
struct Progress {
    rng: Rng,
    ops: u64,
    elapsed: Duration,
    done: bool,
}

/// Runs `case` on the three targets, interleaved in short slices (one
/// flush group of writes, or 16 MiB of reads) and starting with
/// `targets[first]`, so that the device's stalls and the machine's drift
/// fall on all of them alike. Each target runs for `--seconds` of its own
/// time, or one pass over the disk for a fill and a cold sequential read.
fn run_case(
    targets: &[Box<dyn Target>; 3],
    first: usize,
    case: Case,
    args: &Args,
    size: u64,
    noise: &[u8],
) -> anyhow::Result<[Measure; 3]> {
    let len = case.io_len();
    let mut buf = vec![0u8; len];
    if case.cold() {
        for t in targets {
            t.flush()?;
        }
        for t in targets {
            for f in t.files() {
                drop_cache(&f)?;
            }
        }
    }
    let limit = Duration::from_secs_f64(args.seconds);
    let slots = size / len as u64;
    let sequential = matches!(
        case,
        Case::FirstFill | Case::SeqWrite | Case::SeqRead { .. }
    );
    // A second pass of a cold sequential read would come from the page
    // cache.
    let one_pass = case == Case::FirstFill || (sequential && case.cold());
    let slice = if case.writes() {
        args.flush_every
    } else {
        (16 * MIB / len as u64).max(1)
    };
    let mut p: [Progress; 3] = std::array::from_fn(|_| Progress {
        // The same offsets for every target.
        rng: Rng(0x9e37_79b9_7f4a_7c15),
        ops: 0,
        elapsed: Duration::ZERO,
        done: false,
    });
    while p.iter().any(|x| !x.done) {
        for k in 0..3 {
            let i = (first + k) % 3;
            let (t, p) = (&targets[i], &mut p[i]);
            if p.done {
                continue;
            }
            let start = Instant::now();
            for _ in 0..slice {
                if one_pass && p.ops == slots {
                    p.done = true;
                    break;
                }
                let slot = if sequential {
                    p.ops % slots
                } else {
                    p.rng.below(slots)
                };
                let offset = slot * len as u64;
                if case.writes() {
                    let from = (p.ops * 4096 * 67) % (noise.len() - len) as u64;
                    let from = (from - from % 4096) as usize;
                    t.write(offset, &noise[from..from + len])?;
                } else {
                    t.read(offset, &mut buf)?;
                }
                p.ops += 1;
                if case.writes() && p.ops.is_multiple_of(args.flush_every) {
                    t.flush()?;
                }
            }
            if case.writes() && p.done {
                t.flush()?;
            }
            p.elapsed += start.elapsed();
            if !one_pass && p.elapsed >= limit {
                p.done = true;
                if case.writes() {
                    let start = Instant::now();
                    t.flush()?;
                    p.elapsed += start.elapsed();
                }
            }
        }
    }
    Ok(p.map(|p| Measure {
        ops: p.ops,
        bytes: p.ops * len as u64,
        elapsed: p.elapsed,
    }))
}

fn key_info() -> KeyInfo {
    KeyInfo {
        key_arn: "arn:aws:kms:us-east-1:111122223333:key/bench".into(),
        wrapped: vec![0; 64],
        grant_id: None,
    }
}

fn spec(size: u64, encrypted: bool) -> DiskSpec {
    DiskSpec {
        size,
        block_size: 4096,
        key: encrypted.then(key_info),
        labels: Labels::new(),
    }
}

fn open_engine(dir: &Path) -> anyhow::Result<Arc<Engine>> {
    let store = Arc::new(RedbStore::open(&dir.join("meta.redb"))?);
    let pool = Arc::new(FileStorage::open(&dir.join("pool"))?);
    Ok(Engine::open(store, pool)?)
}

const TARGETS: [&str; 3] = ["encrypted disk", "unencrypted disk", "plain file"];

#[allow(
    clippy::print_stderr,
    reason = "progress on stderr, so that stdout is the tables alone"
)]
fn throughput(args: &Args, dir: &Path, key: &XtsKey) -> anyhow::Result<Vec<Row>> {
    let size = args.size_mib * MIB;
    let engine = open_engine(dir)?;
    engine.create_disk("enc", &spec(size, true))?;
    engine.create_disk("plain", &spec(size, false))?;
    let pool = dir.join("pool");
    let file_path = dir.join("plain.img");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&file_path)?;
    file.set_len(size)?;
    let targets: [Box<dyn Target>; 3] = [
        Box::new(EngineDisk {
            disk: engine.open_disk("enc", Some(key))?,
            pool: pool.clone(),
        }),
        Box::new(EngineDisk {
            disk: engine.open_disk("plain", None)?,
            pool,
        }),
        Box::new(PlainFile {
            file,
            path: file_path,
        }),
    ];
    let mut cases: Vec<Case> = args
        .cases
        .iter()
        .map(|c| match c {
            CaseArg::SeqWrite => Case::SeqWrite,
            CaseArg::SeqRead => Case::SeqRead { cold: false },
            CaseArg::RandWrite => Case::RandWrite,
            CaseArg::RandRead => Case::RandRead { cold: false },
        })
        .collect();
    if args.cold {
        let cold: Vec<Case> = args
            .cases
            .iter()
            .filter_map(|c| match c {
                CaseArg::SeqRead => Some(Case::SeqRead { cold: true }),
                CaseArg::RandRead => Some(Case::RandRead { cold: true }),
                _ => None,
            })
            .collect();
        cases.extend(cold);
    }
    // Every target is written once over before anything else, so that the
    // read cases read data.
    let mut plan = vec![(0, Case::FirstFill)];
    for round in 0..args.rounds {
        plan.extend(cases.iter().map(|c| (round, *c)));
    }
    // What is written: random bytes, as incompressible as ciphertext (the
    // storage under a virtual machine may compress or deduplicate, which
    // would favour plaintext patterns), taken at a different offset for
    // each write.
    let mut noise = vec![0u8; NOISE];
    atrest_crypto::rand::fill(&mut noise)?;
    let mut rows = Vec::new();
    for (round, case) in plan {
        // Rotate the order so that no target always runs first.
        let [enc, plain, file] = run_case(&targets, round as usize % 3, case, args, size, &noise)?;
        for (name, m) in TARGETS.iter().zip([enc, plain, file]) {
            eprintln!("  {} / {name}: {:.0} MiB/s", case.name(), m.mib_s());
        }
        rows.push(Row {
            round,
            case,
            m: [enc, plain, file],
        });
    }
    Ok(rows)
}

/// One case on the three targets in one round.
struct Row {
    round: u32,
    case: Case,
    m: [Measure; 3],
}

fn io_table(first: &str) -> Table {
    Table::new(&[
        "case",
        first,
        ">encrypted MiB/s (IOPS)",
        ">unencrypted MiB/s (IOPS)",
        ">plain file MiB/s (IOPS)",
        ">enc/unenc",
        ">enc/file",
        ">unenc/file",
    ])
}

/// A table row: (MiB/s, IOPS) per target and their ratios.
fn io_row(case: Case, first: String, v: [(f64, f64); 3]) -> Vec<String> {
    let cell = |(mib, iops): (f64, f64)| format!("{mib:.0} ({iops:.0})");
    let ratio = |a: (f64, f64), b: (f64, f64)| format!("{:.2}x", a.0 / b.0);
    vec![
        case.name(),
        first,
        cell(v[0]),
        cell(v[1]),
        cell(v[2]),
        ratio(v[0], v[1]),
        ratio(v[0], v[2]),
        ratio(v[1], v[2]),
    ]
}

fn median_f64(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => f64::midpoint(v[n / 2 - 1], v[n / 2]),
    }
}

/// Each round's figures, and the medians over the rounds.
fn io_tables(rows: &[Row]) -> (Table, Table) {
    let mut each = io_table(">round");
    for r in rows {
        let v = r.m.map(|m| (m.mib_s(), m.iops()));
        each.row(io_row(r.case, (r.round + 1).to_string(), v));
    }
    let mut medians = io_table(">rounds");
    let mut seen: Vec<Case> = Vec::new();
    for r in rows {
        if seen.contains(&r.case) {
            continue;
        }
        seen.push(r.case);
        let of: Vec<&Row> = rows.iter().filter(|x| x.case == r.case).collect();
        let v: [(f64, f64); 3] = std::array::from_fn(|i| {
            (
                median_f64(of.iter().map(|x| x.m[i].mib_s()).collect()),
                median_f64(of.iter().map(|x| x.m[i].iops()).collect()),
            )
        });
        medians.row(io_row(r.case, of.len().to_string(), v));
    }
    (each, medians)
}

/// The median, the lowest and the highest.
fn spread(mut v: Vec<Duration>) -> (Duration, Duration, Duration) {
    v.sort();
    let at = |i: usize| v.get(i).copied().unwrap_or_default();
    (at(v.len() / 2), at(0), at(v.len().saturating_sub(1)))
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

fn snapshots(args: &Args, dir: &Path, key: &XtsKey, table: &mut Table) -> anyhow::Result<()> {
    let engine = open_engine(dir)?;
    let sizes = [("small", GIB), ("large", args.large_gib * GIB)];
    for (id, size) in sizes {
        engine.create_disk(id, &spec(size, true))?;
        // 64 MiB of data spread over the disk.
        let d = engine.open_disk(id, Some(key))?;
        let data = vec![0x5a; MIB as usize];
        for i in 0..64 {
            d.write(i * (size / 64), &data, false)?;
        }
        d.flush()?;
    }
    let mut times: Vec<[Vec<Duration>; 2]> = vec![Default::default(), Default::default()];
    for run in 0..args.snapshot_runs {
        // Alternate the disks, so that drift touches both alike.
        for (k, (id, _)) in sizes.iter().enumerate() {
            let snap = format!("{id}-s{run}");
            let clone = format!("{id}-c{run}");
            let t = Instant::now();
            engine.snapshot_disk(id, &snap, None, Labels::new())?;
            times[0][k].push(t.elapsed());
            let t = Instant::now();
            engine.clone_snapshot(&snap, &clone, None, Labels::new())?;
            times[1][k].push(t.elapsed());
            engine.delete_disk(&clone)?;
            engine.delete_snapshot(&snap)?;
        }
    }
    for (name, [small, large]) in ["snapshot", "clone"].iter().zip(times) {
        let (s, l) = (spread(small), spread(large));
        let cell = |(m, lo, hi): (Duration, Duration, Duration)| {
            format!("{} ({}-{})", ms(m), ms(lo), ms(hi))
        };
        table.row(vec![
            (*name).to_owned(),
            cell(s),
            cell(l),
            format!("{:.2}x", l.0.as_secs_f64() / s.0.as_secs_f64()),
        ]);
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(args.size_mib >= 1, "--size-mib must be at least 1");
    ensure!(args.flush_every >= 1, "--flush-every must be at least 1");
    ensure!(
        args.snapshot_runs >= 1,
        "--snapshot-runs must be at least 1"
    );
    let key = XtsKey::generate()?;
    let work = tempfile::Builder::new()
        .prefix("disk-bench-")
        .tempdir_in(&args.dir)
        .with_context(|| format!("making a directory in {}", args.dir.display()))?;

    println!("# disk-bench");
    println!();
    println!("machine: {}", machine_description());
    println!(
        "directory: {} ; disks and file of {} MiB, block size 4096; one thread; \
         a flush every {} writes; {} s per case and target, the targets taking \
         turns in slices; {} round(s)",
        args.dir.display(),
        args.size_mib,
        args.flush_every,
        args.seconds,
        args.rounds
    );
    println!();

    let (result, busy) = cores_busy_during(clock_ticks(), || -> anyhow::Result<_> {
        let mut io = Vec::new();
        if !args.no_io {
            let dir = work.path().join("io");
            std::fs::create_dir(&dir)?;
            io = throughput(&args, &dir, &key)?;
            std::fs::remove_dir_all(&dir)?;
        }
        let mut snap = Table::new(&[
            "operation: ms, median (min-max)",
            ">1 GiB disk",
            &format!(">{} GiB disk", args.large_gib),
            &format!(">{} GiB / 1 GiB (medians)", args.large_gib),
        ]);
        if !args.no_snapshots {
            let dir = work.path().join("snap");
            std::fs::create_dir(&dir)?;
            snapshots(&args, &dir, &key, &mut snap)?;
        }
        Ok((io, snap))
    });
    let (io, snap) = result?;
    if !args.no_io {
        let (each, medians) = io_tables(&io);
        if args.rounds > 1 {
            println!("each round:");
            println!();
            print!("{}", each.render());
            println!();
            println!("median over the rounds (ratios of the medians):");
            println!();
        }
        print!("{}", medians.render());
        println!();
    }
    if !args.no_snapshots {
        println!(
            "snapshot and clone of an encrypted disk holding 64 MiB, each committed \
             (pool sync and a redb commit); median of {} runs",
            args.snapshot_runs
        );
        println!();
        print!("{}", snap.render());
        println!();
    }
    match busy {
        Some(b) => {
            println!("machine load during the run: {b:.2} cores busy");
            if b > 1.5 {
                println!("WARNING: other processes competed for the CPU; the figures may be low");
            }
        }
        None => println!("machine load: unknown"),
    }
    Ok(())
}
