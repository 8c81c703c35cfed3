//! A throwaway single-node Garage (S3-compatible object store) for tests.
//!
//! [`Garage::start`] writes a `garage.toml` in a fresh temp dir (SQLite
//! metadata, replication factor 1, RPC, S3 and admin APIs on free loopback
//! ports), runs `garage server` in the background, assigns and applies a
//! one-node layout, creates a bucket and a key allowed on it, and returns the
//! endpoint and credentials. Dropping the value stops the server by its pid
//! and removes the dir.
//!
//! The `garage` binary is `$ATREST_GARAGE_BIN`, else `garage` on `PATH`.
//! When it is missing, [`Garage::start`] returns `Ok(None)` (the caller
//! prints a notice and skips) unless `ATREST_REQUIRE_GARAGE` is set, in
//! which case it is an error.
//!
//! Only std and `tempfile` are used, so another crate's tests can include
//! this file by path:
//! `#[path = "../../objstore/tests/support/garage.rs"] mod garage;`
#![allow(
    dead_code,
    clippy::print_stderr,
    reason = "a test helper: not every user calls every function; it prints why it skips"
)]

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The S3 region the server is configured with (clients must sign with it).
pub const REGION: &str = "garage";
/// How long start-up (server ready, layout, bucket, key) may take.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// A running Garage node.
pub struct Garage {
    /// `http://127.0.0.1:PORT`, the S3 API.
    pub endpoint: String,
    /// The S3 region, [`REGION`].
    pub region: String,
    /// A bucket created at start.
    pub bucket: String,
    /// The access key id allowed on [`Garage::bucket`] (and on every bucket
    /// [`Garage::new_bucket`] makes).
    pub access_key_id: String,
    /// Its secret.
    pub secret: String,
    bin: PathBuf,
    config: PathBuf,
    key_name: String,
    child: std::sync::Mutex<Child>,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for Garage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Garage")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("pid", &self.pid())
            .finish_non_exhaustive()
    }
}

/// The `garage` binary, if there is one.
pub fn binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ATREST_GARAGE_BIN") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("garage"))
        .find(|p| p.is_file())
}

/// Whether the tests must fail rather than skip without garage.
pub fn required() -> bool {
    std::env::var_os("ATREST_REQUIRE_GARAGE").is_some_and(|v| !v.is_empty() && v != "0")
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("binding a free port: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("reading a free port: {e}"))
}

fn random_hex(n: usize) -> Result<String, String> {
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| format!("reading /dev/urandom: {e}"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

impl Garage {
    /// Starts a node with one bucket (`test-bucket`) and one key allowed on
    /// it. `Ok(None)`: no garage binary and `ATREST_REQUIRE_GARAGE` unset
    /// (a notice is printed).
    pub fn start() -> Result<Option<Garage>, String> {
        let Some(bin) = binary() else {
            if required() {
                return Err(
                    "ATREST_REQUIRE_GARAGE is set but no `garage` binary is on PATH \
                     (install it with `cargo install garage --locked`)"
                        .to_owned(),
                );
            }
            eprintln!("NOTICE: `garage` not on PATH; skipping the Garage tests");
            return Ok(None);
        };
        // A port picked free may be taken before garage binds it: retry.
        let mut last = String::new();
        for _ in 0..3 {
            match Self::start_once(&bin) {
                Ok(g) => return Ok(Some(g)),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn start_once(bin: &Path) -> Result<Garage, String> {
        let dir = tempfile::Builder::new()
            .prefix("atrest-garage-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let (s3, rpc, admin) = (free_port()?, free_port()?, free_port()?);
        let root = dir.path();
        let config = root.join("garage.toml");
        let toml = format!(
            r#"metadata_dir = "{meta}"
data_dir = "{data}"
db_engine = "sqlite"
metadata_fsync = false
data_fsync = false
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "{REGION}"
api_bind_addr = "127.0.0.1:{s3}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin}"
admin_token = "{admin_token}"
"#,
            meta = root.join("meta").display(),
            data = root.join("data").display(),
            secret = random_hex(32)?,
            admin_token = random_hex(16)?,
        );
        std::fs::write(&config, toml).map_err(|e| format!("writing {}: {e}", config.display()))?;
        let log = std::fs::File::create(root.join("garage.log"))
            .map_err(|e| format!("garage.log: {e}"))?;
        let log2 = log.try_clone().map_err(|e| format!("garage.log: {e}"))?;
        let child = Command::new(bin)
            .arg("-c")
            .arg(&config)
            .arg("server")
            .env("RUST_LOG", "garage=info")
            .env_remove("GARAGE_RPC_SECRET")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        let mut g = Garage {
            endpoint: format!("http://127.0.0.1:{s3}"),
            region: REGION.to_owned(),
            bucket: "test-bucket".to_owned(),
            access_key_id: String::new(),
            secret: String::new(),
            bin: bin.to_owned(),
            config,
            key_name: "test-key".to_owned(),
            child: std::sync::Mutex::new(child),
            dir,
        };
        // On error `g` drops here: the server is stopped, the dir removed.
        g.setup()
            .map_err(|e| format!("{e}\n--- garage log ---\n{}", g.log_tail()))?;
        Ok(g)
    }

    fn setup(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_DEADLINE;
        // The node id: `garage node id -q` prints `<hex id>@<addr>`.
        let id = self.retry(deadline, &["node", "id", "-q"])?;
        let id = id
            .trim()
            .split('@')
            .next()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("unexpected `garage node id` output: {id:?}"))?
            .to_owned();
        self.retry(
            deadline,
            &["layout", "assign", "-z", "dc1", "-c", "1G", &id],
        )?;
        self.retry(deadline, &["layout", "apply", "--version", "1"])?;
        let bucket = self.bucket.clone();
        self.retry(deadline, &["bucket", "create", &bucket])?;
        let key_name = self.key_name.clone();
        let out = self.retry(deadline, &["key", "create", &key_name])?;
        let (id, secret) = parse_key(&out)?;
        self.access_key_id = id;
        self.secret = secret;
        self.allow(&bucket, deadline)?;
        // The S3 API answers once the layout is live: wait for a 403/200 on
        // a bucket listing (anything HTTP) rather than a refused connection.
        let addr = self.endpoint.trim_start_matches("http://").to_owned();
        loop {
            if std::net::TcpStream::connect(&addr).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "garage's S3 API on {addr} never accepted a connection"
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn allow(&self, bucket: &str, deadline: Instant) -> Result<(), String> {
        self.retry(
            deadline,
            &[
                "bucket",
                "allow",
                "--read",
                "--write",
                "--owner",
                bucket,
                "--key",
                &self.key_name,
            ],
        )
        .map(drop)
    }

    /// Creates another bucket, allowed for [`Garage::access_key_id`].
    pub fn new_bucket(&self, name: &str) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        self.retry(deadline, &["bucket", "create", name])?;
        self.allow(name, deadline)
    }

    /// Runs `garage -c CONFIG ARGS...` once: its stdout, or an error with
    /// its output.
    pub fn cli(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.bin)
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .env_remove("GARAGE_RPC_SECRET")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running garage {}: {e}", args.join(" ")))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "garage {} failed ({}): {}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// [`Garage::cli`] until it succeeds or `deadline` passes (the server
    /// takes a moment to listen and to take a new layout). Fails at once
    /// if the server exited.
    fn retry(&self, deadline: Instant, args: &[&str]) -> Result<String, String> {
        loop {
            match self.cli(args) {
                Ok(out) => return Ok(out),
                Err(e) => {
                    if let Some(status) = self.exited() {
                        return Err(format!("garage server exited ({status}); last: {e}"));
                    }
                    if Instant::now() > deadline {
                        return Err(format!("gave up after {START_DEADLINE:?}: {e}"));
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("garage.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The temp dir (config, log, data).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self.child.lock().map_or(0, |c| c.id())
    }

    /// The server's exit status, if it has exited.
    fn exited(&self) -> Option<std::process::ExitStatus> {
        self.child.lock().ok()?.try_wait().ok()?
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        // Child::kill sends SIGKILL to this pid only; then reap it. The temp
        // dir is removed when `dir` drops after this.
        if let Ok(child) = self.child.get_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The key id and secret from `garage key create` output, which prints
/// `Key ID: GK...` and `Secret key: ...` lines.
fn parse_key(out: &str) -> Result<(String, String), String> {
    let field = |label: &str| {
        out.lines().find_map(|l| {
            let l = l.trim();
            let rest = l.strip_prefix(label)?;
            let v = rest.trim_start_matches(':').trim();
            (!v.is_empty()).then(|| v.to_owned())
        })
    };
    match (field("Key ID"), field("Secret key")) {
        (Some(id), Some(secret)) => Ok((id, secret)),
        _ => Err(format!(
            "could not find `Key ID` and `Secret key` in `garage key create` output:\n{out}"
        )),
    }
}
