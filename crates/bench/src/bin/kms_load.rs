//! `kms-load`: a SigV4 load generator for atrest's KMS API.
//!
//! By default it starts `target/release/atrest serve` on a free loopback port
//! with a fresh data dir, creates a key, and measures GenerateDataKey
//! (AES_256) and Decrypt at several concurrencies over HTTP/1.1 keep-alive,
//! then stops the server and removes the data dir. With `--endpoint` and
//! `--credentials-file` it targets a running server instead. The signing
//! and MAC operations (`--ops sign-rsa2048,verify-rsa2048,sign-ecdsa-p256,
//! verify-ecdsa-p256,generate-mac,verify-mac`) each get a key of their kind,
//! and are reported beside `openssl speed` of the same primitive on one
//! core, run after them. `--ops create-key` measures CreateKey (a write of
//! the metadata store per request); `--server-pid` gives an external
//! server's pid so that its CPU time per request is measured too
//! (`scripts/bench-cluster.py` runs it so against a node on redb and a node
//! on PostgreSQL).
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
    /// With --endpoint: the pid of the server process, so that its CPU
    /// time per request is measured (and not counted as other processes').
    #[arg(long, requires = "endpoint")]
    server_pid: Option<u32>,
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
    /// Seconds `openssl speed` runs for each signing or MAC primitive
    /// measured (0: skip the side-by-side).
    #[arg(long, default_value_t = 3)]
    openssl_seconds: u32,
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
    /// CreateKey of a symmetric key: one write of the metadata store per
    /// request (each request makes a key that stays).
    CreateKey,
    /// GenerateRandom of 32 bytes: SigV4 and HTTP, no key lookup.
    GenerateRandom,
    /// GET /healthz, unsigned: HTTP/1.1 and routing only.
    Healthz,
    /// `GET /v1/disks/{id}` on the REST API: SigV4 (service `atrest`), the
    /// REST framework, authorization of `disk:DescribeDisk` by identity
    /// policy (the root's, or the `user` caller's policy), a disk lookup.
    DescribeDisk,
    /// Sign of a 32-byte SHA-256 digest with an RSA_2048 key,
    /// RSASSA_PKCS1_V1_5_SHA_256 (`openssl speed rsa2048`'s sign).
    SignRsa2048,
    /// Verify of that signature.
    VerifyRsa2048,
    /// Sign of a 32-byte SHA-256 digest with an ECC_NIST_P256 key,
    /// ECDSA_SHA_256 (`openssl speed ecdsap256`'s sign).
    SignEcdsaP256,
    /// Verify of that signature.
    VerifyEcdsaP256,
    /// GenerateMac of 32 bytes with an HMAC_256 key (`openssl speed -hmac
    /// sha256 -bytes 32`).
    GenerateMac,
    /// VerifyMac of that MAC.
    VerifyMac,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::GenerateDataKey => "GenerateDataKey",
            Op::Decrypt => "Decrypt",
            Op::Encrypt => "Encrypt",
            Op::CreateKey => "CreateKey",
            Op::GenerateRandom => "GenerateRandom",
            Op::Healthz => "GET /healthz",
            Op::DescribeDisk => "GET /v1/disks/{id}",
            Op::SignRsa2048 => "Sign RSA_2048",
            Op::VerifyRsa2048 => "Verify RSA_2048",
            Op::SignEcdsaP256 => "Sign ECC_NIST_P256",
            Op::VerifyEcdsaP256 => "Verify ECC_NIST_P256",
            Op::GenerateMac => "GenerateMac",
            Op::VerifyMac => "VerifyMac",
        }
    }

    /// The KMS operation it sends.
    fn target(self) -> &'static str {
        match self {
            Op::SignRsa2048 | Op::SignEcdsaP256 => "Sign",
            Op::VerifyRsa2048 | Op::VerifyEcdsaP256 => "Verify",
            op => op.name(),
        }
    }

    /// For the asymmetric and MAC operations: the key it needs (KeySpec,
    /// KeyUsage), and `openssl speed`'s measure of the same primitive.
    fn peer(self) -> Option<(&'static str, &'static str, Peer)> {
        Some(match self {
            Op::SignRsa2048 => ("RSA_2048", "SIGN_VERIFY", Peer::Rsa2048Sign),
            Op::VerifyRsa2048 => ("RSA_2048", "SIGN_VERIFY", Peer::Rsa2048Verify),
            Op::SignEcdsaP256 => ("ECC_NIST_P256", "SIGN_VERIFY", Peer::EcdsaP256Sign),
            Op::VerifyEcdsaP256 => ("ECC_NIST_P256", "SIGN_VERIFY", Peer::EcdsaP256Verify),
            Op::GenerateMac | Op::VerifyMac => {
                ("HMAC_256", "GENERATE_VERIFY_MAC", Peer::HmacSha256)
            }
            _ => return None,
        })
    }
}

/// What `openssl speed` measures for an operation's primitive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peer {
    Rsa2048Sign,
    Rsa2048Verify,
    EcdsaP256Sign,
    EcdsaP256Verify,
    HmacSha256,
}

impl Peer {
    /// `openssl speed`'s arguments for it.
    fn args(self) -> &'static [&'static str] {
        match self {
            Peer::Rsa2048Sign | Peer::Rsa2048Verify => &["rsa2048"],
            Peer::EcdsaP256Sign | Peer::EcdsaP256Verify => &["ecdsap256"],
            Peer::HmacSha256 => &["-bytes", "32", "-hmac", "sha256"],
        }
    }

    /// Operations per second from `openssl speed -mr`'s output: `+F2:i:2048:
    /// sign/s:verify/s` for RSA, `+F4:i:256:sign/s:verify/s` for ECDSA,
    /// `+R:count:hmac(sha256):seconds` for HMAC.
    fn parse(self, out: &str) -> Option<f64> {
        let field = |prefix: &str, index: usize| {
            out.lines()
                .find_map(|l| l.strip_prefix(prefix))
                .and_then(|l| l.split(':').nth(index))
                .and_then(|v| v.trim().parse::<f64>().ok())
        };
        match self {
            Peer::Rsa2048Sign => field("+F2:", 2),
            Peer::Rsa2048Verify => field("+F2:", 3),
            Peer::EcdsaP256Sign => field("+F4:", 2),
            Peer::EcdsaP256Verify => field("+F4:", 3),
            Peer::HmacSha256 => {
                let line = out.lines().find(|l| l.starts_with("+R:"))?;
                let parts: Vec<&str> = line.split(':').collect();
                let count: f64 = parts.get(1)?.parse().ok()?;
                let secs: f64 = parts.get(3)?.parse().ok()?;
                (secs > 0.0).then(|| count / secs)
            }
        }
    }

    /// The same primitive through `atrest-crypto`, in this process, as the
    /// server calls it (a cached parsed private key; the public key parsed
    /// from its DER on each Verify, as the server does): ops/s on one core
    /// over `seconds`.
    fn in_process(self, seconds: u32) -> anyhow::Result<f64> {
        use atrest_crypto::asymmetric::{self as asym, MessageType, PrivateKey, SigningAlgorithm};
        use atrest_crypto::keypair::{self, KeyPairSpec};
        use atrest_crypto::mac::{self, MacAlgorithm};
        let digest = [7u8; 32];
        let run = |f: &mut dyn FnMut() -> anyhow::Result<()>| -> anyhow::Result<f64> {
            let start = Instant::now();
            let limit = Duration::from_secs(seconds.into());
            let mut n = 0u64;
            while start.elapsed() < limit {
                f()?;
                n += 1;
            }
            Ok(n as f64 / start.elapsed().as_secs_f64())
        };
        let signer = |spec, alg| -> anyhow::Result<(PrivateKey, Vec<u8>, Vec<u8>)> {
            let pkcs8 = keypair::generate(spec)?;
            let public = keypair::public_key_der(spec, pkcs8.expose())?;
            let key = PrivateKey::from_pkcs8(spec, pkcs8.expose())?;
            let sig = key.sign(alg, MessageType::Digest, &digest)?;
            Ok((key, public, sig))
        };
        let (spec, alg) = match self {
            Peer::Rsa2048Sign | Peer::Rsa2048Verify => (
                KeyPairSpec::Rsa2048,
                SigningAlgorithm::parse("RSASSA_PKCS1_V1_5_SHA_256").context("algorithm")?,
            ),
            Peer::EcdsaP256Sign | Peer::EcdsaP256Verify => (
                KeyPairSpec::EccNistP256,
                SigningAlgorithm::parse("ECDSA_SHA_256").context("algorithm")?,
            ),
            Peer::HmacSha256 => {
                let key = [9u8; 32];
                return run(&mut || {
                    let tag = mac::generate(MacAlgorithm::HmacSha256, &key, &digest);
                    ensure!(mac::verify(MacAlgorithm::HmacSha256, &key, &digest, &tag));
                    Ok(())
                })
                // One generate and one verify per round: the time of one.
                .map(|r| r * 2.0);
            }
        };
        let (key, public, sig) = signer(spec, alg)?;
        match self {
            Peer::Rsa2048Sign | Peer::EcdsaP256Sign => run(&mut || {
                key.sign(alg, MessageType::Digest, &digest)?;
                Ok(())
            }),
            _ => run(&mut || {
                ensure!(asym::verify(
                    spec,
                    alg,
                    MessageType::Digest,
                    &public,
                    &digest,
                    &sig
                )?);
                Ok(())
            }),
        }
    }

    /// Runs `openssl speed` on one core for `seconds`: its output.
    fn run(self, seconds: u32) -> anyhow::Result<String> {
        let out = Command::new("openssl")
            .arg("speed")
            .arg("-mr")
            .arg("-seconds")
            .arg(seconds.to_string())
            .args(self.args())
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .context("running openssl speed (is the openssl CLI installed?)")?;
        Ok(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
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
                    .kms_raw(op.target(), self.body.clone())
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
    let mut signed = std::collections::HashMap::new();
    for &op in ops {
        if let Some((spec, usage, _)) = op.peer()
            && !signed.contains_key(spec)
        {
            signed.insert(spec, sign_bodies(client, spec, usage).await?);
        }
    }
    let signed_body = |op: Op, verify: bool| {
        op.peer()
            .and_then(|(spec, _, _)| signed.get(spec))
            .map(|b: &(String, String)| if verify { b.1.clone() } else { b.0.clone() })
            .unwrap_or_default()
    };
    Ok(ops
        .iter()
        .map(|&op| Prepared {
            op,
            body: Bytes::from(
                match op {
                    Op::SignRsa2048 | Op::SignEcdsaP256 | Op::GenerateMac => signed_body(op, false),
                    Op::VerifyRsa2048 | Op::VerifyEcdsaP256 | Op::VerifyMac => {
                        signed_body(op, true)
                    }
                    Op::GenerateDataKey => gdk_body.to_string(),
                    Op::Decrypt => decrypt_body.to_string(),
                    Op::Encrypt => encrypt_body.to_string(),
                    Op::CreateKey => r#"{"Description":"kms-load"}"#.to_owned(),
                    Op::GenerateRandom => r#"{"NumberOfBytes":32}"#.to_owned(),
                    Op::Healthz => String::new(),
                    Op::DescribeDisk => disk_path.unwrap_or_default().to_owned(),
                }
                .into_bytes(),
            ),
        })
        .collect())
}

/// For a key of `spec` and `usage` (created here): the body of its Sign or
/// GenerateMac of 32 bytes, and the body of the Verify or VerifyMac of the
/// result, checked once.
async fn sign_bodies(client: &Client, spec: &str, usage: &str) -> anyhow::Result<(String, String)> {
    let created = kms_json(
        client,
        "CreateKey",
        &serde_json::json!({"KeySpec": spec, "KeyUsage": usage, "Description": "kms-load"}),
    )
    .await?;
    let key_id = str_field(&created, &["KeyMetadata", "KeyId"])?.to_owned();
    let message = B64.encode([7u8; 32]);
    let (make, check, made_field, check_field, body) = if usage == "GENERATE_VERIFY_MAC" {
        (
            "GenerateMac",
            "VerifyMac",
            "Mac",
            "MacValid",
            serde_json::json!({"KeyId": key_id, "Message": message, "MacAlgorithm": "HMAC_SHA_256"}),
        )
    } else {
        let algorithm = if spec.starts_with("RSA") {
            "RSASSA_PKCS1_V1_5_SHA_256"
        } else {
            "ECDSA_SHA_256"
        };
        (
            "Sign",
            "Verify",
            "Signature",
            "SignatureValid",
            serde_json::json!({"KeyId": key_id, "Message": message, "MessageType": "DIGEST", "SigningAlgorithm": algorithm}),
        )
    };
    let made = kms_json(client, make, &body).await?;
    let mut verify = body.clone();
    verify[made_field] = serde_json::json!(str_field(&made, &[made_field])?);
    let checked = kms_json(client, check, &verify).await?;
    ensure!(
        checked.get(check_field) == Some(&serde_json::json!(true)),
        "{check} of {make}'s output failed: {checked}"
    );
    Ok((body.to_string(), verify.to_string()))
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
    ensure!(
        args.caller == CallerKind::Owner || !args.ops.contains(&Op::CreateKey),
        "CreateKey runs as --caller owner (the user's and grantee's policies allow only data-plane calls)"
    );
    ensure!(
        args.caller == CallerKind::Owner || args.ops.iter().all(|o| o.peer().is_none()),
        "the signing and MAC operations run as --caller owner (they create their own keys)"
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
        server_pid: server
            .as_ref()
            .map(StartedServer::pid)
            .or(args.server_pid)
            .map(|p| p.to_string()),
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

    // The asymmetric and MAC operations beside `openssl speed` of the same
    // primitive on one core, in the same run: the KMS call's server CPU
    // against the primitive's own time.
    let mut peers: Vec<(Op, Peer)> = Vec::new();
    for s in &steps {
        if let Some((_, _, peer)) = s.op.peer()
            && !peers.iter().any(|(o, _)| *o == s.op)
        {
            peers.push((s.op, peer));
        }
    }
    if !peers.is_empty() && args.openssl_seconds > 0 {
        let mut table = Table::new(&[
            "operation",
            ">openssl speed µs/op",
            ">atrest-crypto µs/op",
            ">server CPU µs/op (c=1)",
            ">(c=16)",
            ">server CPU − atrest-crypto (c=16)",
            ">server CPU / openssl (c=16)",
        ]);
        let mut measured = std::collections::HashMap::new();
        for (op, peer) in peers {
            // One run of `openssl speed` measures both sign and verify.
            if !measured.contains_key(peer.args()) {
                measured.insert(peer.args(), peer.run(args.openssl_seconds)?);
            }
            let out = &measured[peer.args()];
            let ops = peer.parse(out).with_context(|| {
                format!("openssl speed {:?} printed no result: {out}", peer.args())
            })?;
            let peer_us = 1e6 / ops;
            let lib_us = 1e6 / peer.in_process(args.openssl_seconds)?;
            let at = |c: usize| {
                steps
                    .iter()
                    .find(|s| s.op == op && s.errors == 0 && s.concurrency == c)
                    .and_then(|s| s.server_cpu_us)
            };
            let (one, many) = (at(1), at(16));
            table.row(vec![
                op.name().to_owned(),
                format!("{peer_us:.1}"),
                format!("{lib_us:.1}"),
                us(one),
                us(many),
                us(many.map(|s| s - lib_us)),
                many.map_or_else(|| "n/a".to_owned(), |s| format!("{:.2}×", s / peer_us)),
            ]);
        }
        println!(
            "openssl speed and atrest-crypto in this process, {} s each on one core, same machine, same run; server CPU at c=1 and c=16:",
            args.openssl_seconds
        );
        print!("{}", table.render());
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

#[cfg(test)]
mod tests {
    use super::Peer;

    #[test]
    fn openssl_speed_machine_readable_output_parses() {
        let rsa =
            "+DTP:2048:private:rsa:1\n+R1:2751:2048:1.00\n+F2:2:2048:2751.000000:52411.000000\n";
        assert_eq!(Peer::Rsa2048Sign.parse(rsa), Some(2751.0));
        assert_eq!(Peer::Rsa2048Verify.parse(rsa), Some(52411.0));
        let ec = "+R6:13176:256:1.00\n+F4:3:256:40693.000000:13176.000000\n";
        assert_eq!(Peer::EcdsaP256Sign.parse(ec), Some(40693.0));
        assert_eq!(Peer::EcdsaP256Verify.parse(ec), Some(13176.0));
        let mac = "+R:3642706:hmac(sha256):2.000000\n+H:32\n";
        assert_eq!(Peer::HmacSha256.parse(mac), Some(1_821_353.0));
        assert_eq!(Peer::HmacSha256.parse("garbage"), None);
        assert_eq!(Peer::EcdsaP256Sign.parse(rsa), None);
    }
}
