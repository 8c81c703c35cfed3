//! `kms-load`: a SigV4 load generator for atrest's KMS API.
//!
//! By default it starts `target/release/atrest serve` on a free loopback port
//! with a fresh data dir, creates a key, and measures GenerateDataKey
//! (AES_256) and Decrypt at several concurrencies over HTTP/1.1 keep-alive,
//! then stops the server and removes the data dir. With `--endpoint` and
//! `--credentials-file` it targets a running server instead.
//!
//! ```text
//! cargo build --release -p atrest
//! cargo run --release -p atrest-bench --bin kms-load
//! ```

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use atrest_bench::{Table, clock_ticks, machine_busy_ticks, machine_description, percentile};
use atrest_client::{Client, load_shared_credentials};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use http::{StatusCode, Uri};
use http_body_util::{BodyExt, Empty};

/// Load generator for atrest's KMS API: ops/s and exact p50/p99 latency per
/// operation and concurrency.
#[derive(Debug, Parser)]
struct Args {
    /// The atrest binary to start [default: target/release/atrest of this
    /// workspace]. Ignored with --endpoint.
    #[arg(long)]
    atrest_bin: Option<PathBuf>,
    /// Target a running server at this URL instead of starting one.
    #[arg(long, requires = "credentials_file")]
    endpoint: Option<String>,
    /// AWS shared-credentials file for --endpoint.
    #[arg(long, requires = "endpoint")]
    credentials_file: Option<PathBuf>,
    /// Profile in the credentials file.
    #[arg(long, default_value = "default")]
    profile: String,
    /// Region to sign for.
    #[arg(long, default_value = "us-east-1")]
    region: String,
    /// KMS key to use [default: create one with CreateKey].
    #[arg(long)]
    key_id: Option<String>,
    /// Operations to measure, in order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "generate-data-key,decrypt"
    )]
    ops: Vec<Op>,
    /// Concurrencies (requests in flight, one connection each) to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    concurrency: Vec<usize>,
    /// Seconds measured per step.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Seconds of warm-up per step, not measured.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Worker threads of the load generator's tokio runtime (2 measured
    /// 10-15% more ops/s than 1 on a 2-core machine shared with the server).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Use a current-thread runtime (one thread) for the load generator.
    #[arg(long, conflicts_with = "threads")]
    current_thread: bool,
    /// Keep the started server's log (stdout and stderr) at this path.
    #[arg(long)]
    server_log: Option<PathBuf>,
    /// Who sends the measured requests. Not `owner` needs the credentials
    /// to be an account root that may create users (the admin's are), and
    /// a key created by kms-load (no --key-id).
    #[arg(long, value_enum, default_value = "owner")]
    caller: CallerKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum CallerKind {
    /// The account root, on a key with the default key policy.
    Owner,
    /// A user of the same account allowed by an identity policy with a
    /// condition, on a key whose policy adds a conditional Deny: both
    /// policies are evaluated on every request.
    User,
    /// A user with no identity policy for the key, allowed only by a grant
    /// (its token is sent with every request), on the same key policy.
    Grantee,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Op {
    /// GenerateDataKey with KeySpec AES_256.
    GenerateDataKey,
    /// Decrypt of a blob made by GenerateDataKey.
    Decrypt,
    /// Encrypt of 32 bytes.
    Encrypt,
    /// GenerateRandom of 32 bytes: SigV4 and HTTP, no key lookup.
    GenerateRandom,
    /// GET /healthz, unsigned: HTTP/1.1 and routing only.
    Healthz,
    /// `GET /v1/disks/{id}` on the REST API: SigV4 (service `atrest`), the
    /// REST framework, authorization of `disk:DescribeDisk` by identity
    /// policy (the root's, or the `user` caller's policy), a disk lookup.
    DescribeDisk,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::GenerateDataKey => "GenerateDataKey",
            Op::Decrypt => "Decrypt",
            Op::Encrypt => "Encrypt",
            Op::GenerateRandom => "GenerateRandom",
            Op::Healthz => "GET /healthz",
            Op::DescribeDisk => "GET /v1/disks/{id}",
        }
    }
}

/// A plain (unsigned) HTTP/1.1 keep-alive client, for `GET /healthz`.
type PlainClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Empty<Bytes>,
>;

fn plain_client() -> PlainClient {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(1024)
        .build_http()
}

/// `GET <endpoint>/healthz`: the status and body.
async fn healthz(plain: &PlainClient, url: &Uri) -> Result<(StatusCode, Bytes), String> {
    let resp = plain
        .get(url.clone())
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?
        .to_bytes();
    Ok((status, body))
}

/// Where requests go: the signing KMS client, and a plain client for
/// `/healthz`.
#[derive(Debug, Clone)]
struct Target {
    kms: Client,
    plain: PlainClient,
    healthz: Uri,
}

/// A prepared request: the operation and its body, built once.
#[derive(Debug, Clone)]
struct Prepared {
    op: Op,
    body: Bytes,
}

impl Prepared {
    async fn send(&self, target: &Target) -> Result<(), String> {
        let (status, body) = match self.op {
            Op::Healthz => healthz(&target.plain, &target.healthz).await?,
            Op::DescribeDisk => {
                let path = std::str::from_utf8(&self.body).map_err(|e| e.to_string())?;
                let r = target
                    .kms
                    .rest(http::Method::GET, path, None)
                    .await
                    .map_err(|e| e.to_string())?;
                (r.status, r.body)
            }
            op => {
                let r = target
                    .kms
                    .kms_raw(op.name(), self.body.clone())
                    .await
                    .map_err(|e| e.to_string())?;
                (r.status, r.body)
            }
        };
        if status == StatusCode::OK {
            Ok(())
        } else {
            Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&body)))
        }
    }
}

/// A server this program started; stopped (SIGTERM, then SIGKILL after 10 s)
/// when dropped.
struct StartedServer {
    child: Child,
}

impl StartedServer {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for StartedServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// CPU time (user + system) of a process so far, from /proc.
fn cpu_time(pid: &str, ticks_per_s: f64) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 here.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(Duration::from_secs_f64(ticks / ticks_per_s))
}

fn default_atrest_bin() -> PathBuf {
    let local = PathBuf::from("target/release/atrest");
    if local.exists() {
        return local;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/release/atrest")
}

fn free_loopback_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Waits for `GET /healthz` to answer 200, or the server to exit.
async fn wait_healthy(
    plain: &PlainClient,
    url: &Uri,
    mut server: Option<&mut StartedServer>,
    log: &Path,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let last = match healthz(plain, url).await {
            Ok((StatusCode::OK, _)) => return Ok(()),
            Ok((status, _)) => format!("HTTP {status}"),
            Err(e) => e,
        };
        if let Some(s) = server.as_deref_mut()
            && let Ok(Some(status)) = s.child.try_wait()
        {
            bail!(
                "atrest exited ({status}) before it was healthy:\n{}",
                log_tail(log)
            );
        }
        if Instant::now() > deadline {
            bail!("{url} did not answer 200 within 60 s (last: {last})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn kms_json(
    client: &Client,
    op: &str,
    body: &serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let r = client.kms(op, body).await?;
    ensure!(
        r.status == StatusCode::OK,
        "{op} failed: HTTP {}: {}",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
    Ok(r.json())
}

fn str_field<'a>(v: &'a serde_json::Value, path: &[&str]) -> anyhow::Result<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur
            .get(p)
            .with_context(|| format!("response has no {}: {v}", path.join(".")))?;
    }
    cur.as_str()
        .with_context(|| format!("{} is not a string", path.join(".")))
}

/// The benchmark user's name, for `--caller user` and `grantee`.
const USER: &str = "kms-load";

/// Creates the benchmark key and returns its id and account. For a user or
/// grantee, its policy then becomes the default statement plus a Deny of
/// every call from another account (never matches here, always evaluated).
async fn create_key(owner: &Client, caller: CallerKind) -> anyhow::Result<(String, String)> {
    let created = kms_json(
        owner,
        "CreateKey",
        &serde_json::json!({"Description": "kms-load benchmark key"}),
    )
    .await?;
    let key_id = str_field(&created, &["KeyMetadata", "KeyId"])?.to_owned();
    let account = str_field(&created, &["KeyMetadata", "AWSAccountId"])?.to_owned();
    if caller != CallerKind::Owner {
        let policy = serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "Enable IAM User Permissions",
                    "Effect": "Allow",
                    "Principal": {"AWS": format!("arn:aws:iam::{account}:root")},
                    "Action": "kms:*",
                    "Resource": "*"
                },
                {
                    "Sid": "Only this account",
                    "Effect": "Deny",
                    "Principal": "*",
                    "Action": "kms:*",
                    "Resource": "*",
                    "Condition": {"StringNotEquals": {"kms:CallerAccount": account}}
                }
            ]
        });
        kms_json(
            owner,
            "PutKeyPolicy",
            &serde_json::json!({"KeyId": key_id, "PolicyName": "default", "Policy": policy.to_string()}),
        )
        .await?;
    }
    Ok((key_id, account))
}

async fn rest_json(
    client: &Client,
    method: http::Method,
    path: &str,
    body: &serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let r = client.rest(method.clone(), path, Some(body)).await?;
    ensure!(
        r.status.is_success(),
        "{method} {path} failed: HTTP {}: {}",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
    Ok(r.json())
}

/// The client that sends the measured requests, and the grant token to send.
async fn caller_client(
    owner: &Client,
    endpoint: &str,
    args: &Args,
    key_id: &str,
    account: &str,
) -> anyhow::Result<(Client, Option<String>)> {
    if args.caller == CallerKind::Owner {
        return Ok((owner.clone(), None));
    }
    let users = format!("/v1/accounts/{account}/users");
    rest_json(
        owner,
        http::Method::POST,
        &users,
        &serde_json::json!({"name": USER}),
    )
    .await?;
    let key_arn = format!("arn:aws:kms:{}:{account}:key/{key_id}", args.region);
    let mut token = None;
    match args.caller {
        CallerKind::Owner => {}
        CallerKind::User => {
            let policy = serde_json::json!({
                "Version": "2012-10-17",
                "Statement": [{
                    "Effect": "Allow",
                    "Action": ["kms:GenerateDataKey", "kms:Decrypt", "kms:Encrypt"],
                    "Resource": key_arn,
                    "Condition": {"StringEquals": {"kms:CallerAccount": account}}
                }, {
                    "Effect": "Allow",
                    "Action": "kms:GenerateRandom",
                    "Resource": "*"
                }, {
                    "Effect": "Allow",
                    "Action": "disk:DescribeDisk",
                    "Resource": format!("arn:aws:disk:{}:{account}:disk/*", args.region),
                    "Condition": {"StringEquals": {"aws:PrincipalAccount": account}}
                }]
            });
            rest_json(
                owner,
                http::Method::PUT,
                &format!("{users}/{USER}/policies/main"),
                &serde_json::json!({"document": policy}),
            )
            .await?;
        }
        CallerKind::Grantee => {
            // GenerateRandom takes no key, so no grant can allow it.
            ensure!(
                !args.ops.contains(&Op::GenerateRandom),
                "a grantee cannot call GenerateRandom (it names no key)"
            );
            let grant = kms_json(
                owner,
                "CreateGrant",
                &serde_json::json!({
                    "KeyId": key_id,
                    "GranteePrincipal": format!("arn:aws:iam::{account}:user/{USER}"),
                    "Operations": ["GenerateDataKey", "Decrypt", "Encrypt"],
                }),
            )
            .await?;
            token = Some(str_field(&grant, &["GrantToken"])?.to_owned());
        }
    }
    let key = rest_json(
        owner,
        http::Method::POST,
        &format!("/v1/accounts/{account}/access-keys"),
        &serde_json::json!({"user": USER}),
    )
    .await?;
    let creds = atrest_client::Credentials {
        access_key_id: str_field(&key, &["access_key_id"])?.to_owned(),
        secret_access_key: atrest_client::secret(str_field(&key, &["secret_access_key"])?),
    };
    Ok((Client::new(endpoint, creds, &args.region, None)?, token))
}

/// Builds the request bodies, checking along the way that GenerateDataKey's
/// blob decrypts to its plaintext.
async fn prepare(
    client: &Client,
    key_id: &str,
    ops: &[Op],
    grant_token: Option<&str>,
    disk_path: Option<&str>,
) -> anyhow::Result<Vec<Prepared>> {
    let tokens = |mut v: serde_json::Value| {
        if let Some(t) = grant_token {
            v["GrantTokens"] = serde_json::json!([t]);
        }
        v
    };
    let gdk_body = tokens(serde_json::json!({"KeyId": key_id, "KeySpec": "AES_256"}));
    let gdk = kms_json(client, "GenerateDataKey", &gdk_body).await?;
    let blob = str_field(&gdk, &["CiphertextBlob"])?;
    let plaintext = str_field(&gdk, &["Plaintext"])?;
    let decrypt_body = tokens(serde_json::json!({ "CiphertextBlob": blob }));
    let dec = kms_json(client, "Decrypt", &decrypt_body).await?;
    ensure!(
        str_field(&dec, &["Plaintext"])? == plaintext,
        "Decrypt did not return GenerateDataKey's plaintext"
    );
    let encrypt_body =
        tokens(serde_json::json!({"KeyId": key_id, "Plaintext": B64.encode([7u8; 32])}));
    Ok(ops
        .iter()
        .map(|&op| Prepared {
            op,
            body: Bytes::from(
                match op {
                    Op::GenerateDataKey => gdk_body.to_string(),
                    Op::Decrypt => decrypt_body.to_string(),
                    Op::Encrypt => encrypt_body.to_string(),
                    Op::GenerateRandom => r#"{"NumberOfBytes":32}"#.to_owned(),
                    Op::Healthz => String::new(),
                    Op::DescribeDisk => disk_path.unwrap_or_default().to_owned(),
                }
                .into_bytes(),
            ),
        })
        .collect())
}

/// What one worker saw in the measured window.
#[derive(Default)]
struct WorkerResult {
    latencies: Vec<Duration>,
    errors: u64,
    first_error: Option<String>,
}

async fn worker(
    target: Target,
    req: Arc<Prepared>,
    measure_from: Instant,
    end: Instant,
) -> WorkerResult {
    let mut r = WorkerResult {
        latencies: Vec::with_capacity(65_536),
        ..WorkerResult::default()
    };
    loop {
        let start = Instant::now();
        if start >= end {
            break;
        }
        let outcome = req.send(&target).await;
        let took = start.elapsed();
        if start < measure_from {
            continue;
        }
        match outcome {
            Ok(()) => r.latencies.push(took),
            Err(e) => {
                r.errors += 1;
                r.first_error.get_or_insert(e);
            }
        }
    }
    r
}

/// One measured step.
struct Step {
    op: Op,
    concurrency: usize,
    ops_per_s: f64,
    p50: Option<Duration>,
    p99: Option<Duration>,
    max: Option<Duration>,
    errors: u64,
    first_error: Option<String>,
    server_cpu_us: Option<f64>,
    client_cpu_us: Option<f64>,
    /// Cores used by processes other than the server and the load generator
    /// during the step (a competing build skews the numbers).
    other_cores: Option<f64>,
}

struct CpuProbe {
    server_pid: Option<String>,
    ticks: f64,
}

impl CpuProbe {
    /// CPU time so far of the server, this process and the whole machine.
    fn read(&self) -> [Option<Duration>; 3] {
        [
            self.server_pid
                .as_deref()
                .and_then(|p| cpu_time(p, self.ticks)),
            cpu_time("self", self.ticks),
            machine_busy_ticks().map(|t| Duration::from_secs_f64(t as f64 / self.ticks)),
        ]
    }
}

async fn run_step(
    target: &Target,
    req: &Prepared,
    concurrency: usize,
    args: &Args,
    cpu: &CpuProbe,
) -> anyhow::Result<Step> {
    let req = Arc::new(req.clone());
    let now = Instant::now();
    let measure_from = now + Duration::from_secs_f64(args.warmup);
    let end = measure_from + Duration::from_secs_f64(args.duration);
    let handles: Vec<_> = (0..concurrency)
        .map(|_| tokio::spawn(worker(target.clone(), Arc::clone(&req), measure_from, end)))
        .collect();
    tokio::time::sleep_until(measure_from.into()).await;
    let cpu_start = cpu.read();
    tokio::time::sleep_until(end.into()).await;
    let cpu_end = cpu.read();
    let mut latencies = Vec::new();
    let (mut errors, mut first_error) = (0, None);
    for h in handles {
        let r = h.await.context("a load worker panicked")?;
        latencies.extend(r.latencies);
        errors += r.errors;
        if first_error.is_none() {
            first_error = r.first_error;
        }
    }
    latencies.sort_unstable();
    let n = latencies.len();
    let used = |i: usize| match (cpu_start[i], cpu_end[i]) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a).as_secs_f64()),
        _ => None,
    };
    let per_op = |i: usize| used(i).filter(|_| n > 0).map(|t| t * 1e6 / n as f64);
    // Without a server pid (external server) the server counts as "other".
    let other = used(2).map(|all| {
        (all - used(0).unwrap_or(0.0) - used(1).unwrap_or(0.0)).max(0.0) / args.duration
    });
    Ok(Step {
        op: req.op,
        concurrency,
        ops_per_s: n as f64 / args.duration,
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        max: latencies.last().copied(),
        errors,
        first_error,
        server_cpu_us: per_op(0),
        client_cpu_us: per_op(1),
        other_cores: other.filter(|_| cpu.server_pid.is_some()),
    })
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(
        || "n/a".to_owned(),
        |d| format!("{:.3}", d.as_secs_f64() * 1e3),
    )
}

fn us(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.1}"))
}

async fn run(args: Args) -> anyhow::Result<()> {
    ensure!(
        args.duration > 0.0 && args.warmup >= 0.0,
        "--duration must be positive and --warmup not negative"
    );
    ensure!(
        !args.concurrency.is_empty() && args.concurrency.iter().all(|&c| c > 0),
        "--concurrency needs positive numbers"
    );

    // Keep the temp dir alive (declared first, dropped last) until the
    // server has stopped.
    let tmp = tempfile::Builder::new()
        .prefix("atrest-kms-load-")
        .tempdir()
        .context("creating a temp dir")?;
    let mut server: Option<StartedServer> = None;
    let (endpoint, creds_file, log) = match (&args.endpoint, &args.credentials_file) {
        (Some(e), Some(c)) => (e.clone(), c.clone(), tmp.path().join("unused.log")),
        _ => {
            let bin = args.atrest_bin.clone().unwrap_or_else(default_atrest_bin);
            ensure!(
                bin.exists(),
                "{} not found: build it with `cargo build --release -p atrest`, or give --atrest-bin",
                bin.display()
            );
            let port = free_loopback_port()?;
            let data_dir = tmp.path().join("data");
            let log = args
                .server_log
                .clone()
                .unwrap_or_else(|| tmp.path().join("server.log"));
            let out = std::fs::File::create(&log)
                .with_context(|| format!("creating {}", log.display()))?;
            let child = Command::new(&bin)
                .arg("serve")
                .arg("--listen")
                .arg(format!("127.0.0.1:{port}"))
                .arg("--data-dir")
                .arg(&data_dir)
                .arg("--root-key-file")
                .arg(tmp.path().join("root.key"))
                .arg("--region")
                .arg(&args.region)
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out)
                .spawn()
                .with_context(|| format!("starting {}", bin.display()))?;
            println!(
                "started {} (pid {}) on 127.0.0.1:{port}, data dir {}",
                bin.display(),
                child.id(),
                data_dir.display()
            );
            server = Some(StartedServer { child });
            (
                format!("http://127.0.0.1:{port}"),
                // Beside the data dir, where the first start writes them.
                tmp.path().join("data.admin-credentials"),
                log,
            )
        }
    };
    let healthz_url: Uri = format!("{}/healthz", endpoint.trim_end_matches('/'))
        .parse()
        .with_context(|| format!("bad endpoint {endpoint}"))?;
    let plain = plain_client();
    wait_healthy(&plain, &healthz_url, server.as_mut(), &log).await?;

    // A server of an earlier release (a baseline) wrote them inside its
    // data dir.
    let legacy = tmp.path().join("data/admin-credentials");
    let creds_file = if args.endpoint.is_none() && !creds_file.exists() && legacy.exists() {
        legacy
    } else {
        creds_file
    };
    let creds = load_shared_credentials(&creds_file, &args.profile)?;
    let owner = Client::new(&endpoint, creds, &args.region, None)?;
    ensure!(
        args.caller == CallerKind::Owner || args.key_id.is_none(),
        "--caller {:?} sets up its own key; leave out --key-id",
        args.caller
    );
    // The disk GET /v1/disks/{id} describes: the owner's, under the
    // account's disk service key.
    let disk_path = if args.ops.contains(&Op::DescribeDisk) {
        ensure!(
            args.caller != CallerKind::Grantee,
            "a grantee cannot describe a disk (no grant allows a REST action)"
        );
        let d = rest_json(
            &owner,
            http::Method::POST,
            "/v1/disks",
            &serde_json::json!({"size": 1 << 20}),
        )
        .await?;
        Some(format!("/v1/disks/{}", str_field(&d, &["id"])?))
    } else {
        None
    };
    let (client, key_id, grant_token) = match &args.key_id {
        Some(k) => (owner, k.clone(), None),
        None => {
            let (key_id, account) = create_key(&owner, args.caller).await?;
            let (client, token) =
                caller_client(&owner, &endpoint, &args, &key_id, &account).await?;
            (client, key_id, token)
        }
    };
    let prepared = prepare(
        &client,
        &key_id,
        &args.ops,
        grant_token.as_deref(),
        disk_path.as_deref(),
    )
    .await?;
    let target = Target {
        kms: client,
        plain,
        healthz: healthz_url,
    };

    let cpu = CpuProbe {
        server_pid: server.as_ref().map(|s| s.pid().to_string()),
        ticks: clock_ticks(),
    };
    println!("# kms-load");
    println!();
    println!("machine: {}", machine_description());
    println!(
        "endpoint: {endpoint} ({}); key {key_id}; caller: {}",
        if server.is_some() {
            "started by kms-load"
        } else {
            "external"
        },
        match args.caller {
            CallerKind::Owner => "the account root (default key policy)",
            CallerKind::User =>
                "a user allowed by a conditional identity policy (key policy with a conditional Deny)",
            CallerKind::Grantee =>
                "a user allowed by a grant, token sent (key policy with a conditional Deny)",
        }
    );
    println!(
        "load generator: {}; {} s warm-up + {} s measured per step; one keep-alive connection per concurrent request",
        if args.current_thread {
            "tokio current-thread runtime".to_owned()
        } else {
            format!("tokio multi-thread runtime, {} worker(s)", args.threads)
        },
        args.warmup,
        args.duration
    );
    if server.is_some() {
        println!(
            "server log level: ATREST_LOG={} (log written to a file)",
            std::env::var("ATREST_LOG").unwrap_or_else(|_| {
                "unset, so info (successful data-plane calls are logged at debug)".into()
            })
        );
    }
    println!();

    let mut steps = Vec::new();
    for req in &prepared {
        for &c in &args.concurrency {
            let s = run_step(&target, req, c, &args, &cpu).await?;
            println!(
                "  {:<16} c={:<4} {:>9.0} ops/s  p50 {} ms  p99 {} ms  errors {}  other processes {} cores",
                s.op.name(),
                s.concurrency,
                s.ops_per_s,
                ms(s.p50),
                ms(s.p99),
                s.errors,
                s.other_cores
                    .map_or_else(|| "n/a".to_owned(), |c| format!("{c:.2}"))
            );
            steps.push(s);
        }
    }
    println!();

    let mut table = Table::new(&[
        "operation",
        ">concurrency",
        ">ops/s",
        ">p50 ms",
        ">p99 ms",
        ">max ms",
        ">errors",
        ">server CPU µs/op",
        ">loadgen CPU µs/op",
    ]);
    for s in &steps {
        table.row(vec![
            s.op.name().to_owned(),
            s.concurrency.to_string(),
            format!("{:.0}", s.ops_per_s),
            ms(s.p50),
            ms(s.p99),
            ms(s.max),
            s.errors.to_string(),
            us(s.server_cpu_us),
            us(s.client_cpu_us),
        ]);
    }
    print!("{}", table.render());
    println!();

    let busy: Vec<&Step> = steps
        .iter()
        .filter(|s| s.other_cores.is_some_and(|c| c > 0.10))
        .collect();
    if !busy.is_empty() {
        println!("WARNING: other processes competed for the CPU; these steps are skewed:");
        for s in busy {
            println!(
                "  {} c={}: other processes used {:.2} cores",
                s.op.name(),
                s.concurrency,
                s.other_cores.unwrap_or(0.0)
            );
        }
        println!();
    }

    let total_errors: u64 = steps.iter().map(|s| s.errors).sum();
    if total_errors > 0 {
        println!("ERRORS: {total_errors} requests failed. First error of each failing step:");
        for s in steps.iter().filter(|s| s.errors > 0) {
            println!(
                "  {} c={}: {} errors; first: {}",
                s.op.name(),
                s.concurrency,
                s.errors,
                s.first_error.as_deref().unwrap_or("?")
            );
        }
        println!();
    }

    // The target: >= 20,000 ops/s with p99 < 5 ms, at some concurrency.
    for op in [Op::GenerateDataKey, Op::Decrypt] {
        let of_op: Vec<&Step> = steps.iter().filter(|s| s.op == op).collect();
        if of_op.is_empty() {
            continue;
        }
        let best = of_op
            .iter()
            .filter(|s| s.errors == 0 && s.p99.is_some_and(|p| p < Duration::from_millis(5)))
            .max_by(|a, b| a.ops_per_s.total_cmp(&b.ops_per_s));
        match best {
            Some(s) => println!(
                "target ({}: >= 20000 ops/s with p99 < 5 ms): best {:.0} ops/s at concurrency {} (p99 {} ms), {}",
                op.name(),
                s.ops_per_s,
                s.concurrency,
                ms(s.p99),
                if s.ops_per_s >= 20_000.0 {
                    "MET"
                } else {
                    "NOT MET"
                }
            ),
            None => println!(
                "target ({}: >= 20000 ops/s with p99 < 5 ms): NOT MET (no error-free step with p99 < 5 ms)",
                op.name()
            ),
        }
    }

    if let Some(mut s) = server.take() {
        s.stop();
        if let Some(keep) = &args.server_log {
            println!("server log kept at {}", keep.display());
        }
    }
    drop(tmp);
    if total_errors > 0 {
        bail!("{total_errors} requests failed");
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = if args.current_thread {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads.max(1))
            .enable_all()
            .build()
    }
    .context("starting the tokio runtime")?;
    runtime.block_on(run(args))
}
