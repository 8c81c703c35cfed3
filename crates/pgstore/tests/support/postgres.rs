//! A throwaway PostgreSQL server for tests (Debian's packages).
//!
//! [`Postgres::start`] runs `initdb` in a fresh temp dir (a superuser
//! `atrest` with a random password, scram-sha-256 on loopback TCP), then
//! `postgres` on a free loopback port, and waits until it accepts
//! connections. [`Postgres::stop`] and [`Postgres::restart`] stop it by its
//! pid (SIGINT, PostgreSQL's fast shutdown) and start it again on the same
//! port and data. Dropping the value stops the server by its pid and removes
//! the dir.
//!
//! The binaries are in `$ATREST_POSTGRES_BIN`, else the newest
//! `/usr/lib/postgresql/*/bin`. initdb and postgres refuse to run as root:
//! as root, they run as the `postgres` OS user (`setpriv`), and the temp dir
//! is given to that user. When PostgreSQL is missing, [`Postgres::start`]
//! returns `Ok(None)` (the caller prints a notice and skips) unless
//! `ATREST_REQUIRE_POSTGRES` is set, in which case it is an error.
//!
//! Only std and `tempfile` are used, so another crate's tests can include
//! this file by path:
//! `#[path = "../../pgstore/tests/support/postgres.rs"] mod postgres;`
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

/// How long start-up may take.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// A running PostgreSQL server.
pub struct Postgres {
    /// The TCP port on 127.0.0.1.
    pub port: u16,
    /// The superuser's name.
    pub user: String,
    /// Its password.
    pub password: String,
    bin: PathBuf,
    /// `Some((uid, gid))`: run the binaries as this user (we are root).
    run_as: Option<(u32, u32)>,
    tls: bool,
    child: std::sync::Mutex<Option<Child>>,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres")
            .field("port", &self.port)
            .field("pid", &self.pid())
            .finish_non_exhaustive()
    }
}

/// The directory of PostgreSQL's binaries, if there is one.
pub fn bin_dir() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ATREST_POSTGRES_BIN") {
        return Some(PathBuf::from(p));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b)
}

/// Whether the tests must fail rather than skip without PostgreSQL.
pub fn required() -> bool {
    std::env::var_os("ATREST_REQUIRE_POSTGRES").is_some_and(|v| !v.is_empty() && v != "0")
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

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// The uid and gid of the `postgres` OS user.
fn postgres_user() -> Result<(u32, u32), String> {
    let id = |flag: &str| -> Result<u32, String> {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .map_err(|e| format!("running id: {e}"))?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| "there is no `postgres` OS user to run PostgreSQL as".to_owned())
    };
    Ok((id("-u")?, id("-g")?))
}

impl Postgres {
    /// Starts a server without TLS. `Ok(None)`: no PostgreSQL and
    /// `ATREST_REQUIRE_POSTGRES` unset (a notice is printed).
    pub fn start() -> Result<Option<Postgres>, String> {
        Self::start_with(false)
    }

    /// Starts a server; with `tls`, it also accepts TLS with a self-signed
    /// certificate for `localhost` and 127.0.0.1 signed by a test CA
    /// ([`Postgres::ca_file`]).
    pub fn start_with(tls: bool) -> Result<Option<Postgres>, String> {
        let Some(bin) = bin_dir() else {
            if required() {
                return Err(
                    "ATREST_REQUIRE_POSTGRES is set but PostgreSQL is not installed \
                     (apt-get install postgresql)"
                        .to_owned(),
                );
            }
            eprintln!("NOTICE: PostgreSQL not installed; skipping the PostgreSQL tests");
            return Ok(None);
        };
        let mut last = String::new();
        // A port picked free may be taken before postgres binds it: retry.
        for _ in 0..3 {
            match Self::start_once(&bin, tls) {
                Ok(p) => return Ok(Some(p)),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn command(&self, program: &Path) -> Command {
        command(self.run_as, program)
    }

    fn start_once(bin: &Path, tls: bool) -> Result<Postgres, String> {
        let run_as = if is_root() {
            Some(postgres_user()?)
        } else {
            None
        };
        let dir = tempfile::Builder::new()
            .prefix("atrest-postgres-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .map_err(|e| format!("chown {}: {e}", dir.path().display()))?;
        }
        let password = random_hex(16)?;
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, &password).map_err(|e| format!("writing pw: {e}"))?;
        let pg = Postgres {
            port: free_port()?,
            user: "atrest".to_owned(),
            password,
            bin: bin.to_owned(),
            run_as,
            tls,
            child: std::sync::Mutex::new(None),
            dir,
        };
        pg.chown(&pwfile)?;
        let out = pg
            .command(&bin.join("initdb"))
            .arg("-D")
            .arg(pg.data())
            .args([
                "-U",
                "atrest",
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running initdb: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "initdb failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let _ = std::fs::remove_file(&pwfile);
        if tls {
            pg.make_cert()?;
        }
        pg.start_server()?;
        Ok(pg)
    }

    fn chown(&self, path: &Path) -> Result<(), String> {
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .map_err(|e| format!("chown {}: {e}", path.display()))?;
        }
        Ok(())
    }

    /// A CA and a server certificate it signs (for `localhost` and
    /// 127.0.0.1), made with `openssl`.
    fn make_cert(&self) -> Result<(), String> {
        let d = self.dir.path();
        let openssl = |args: &[&str]| -> Result<(), String> {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(d)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("running openssl: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "openssl {} failed: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                ))
            }
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        ca.extend(["-days", "2", "-subj", "/CN=atrest test CA"]);
        ca.extend(["-keyout", "ca.key", "-out", "ca.crt"]);
        openssl(&ca)?;
        let mut csr = vec!["req"];
        csr.extend(ec);
        csr.extend([
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ]);
        openssl(&csr)?;
        std::fs::write(
            d.join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .map_err(|e| format!("server.ext: {e}"))?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.crt",
        ])?;
        let key = d.join("server.key");
        self.chown(&key)?;
        self.chown(&d.join("server.crt"))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("chmod server.key: {e}"))
    }

    /// The CA that signed a TLS server's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    fn start_server(&self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .map_err(|e| format!("postgres.log: {e}"))?;
        let log2 = log.try_clone().map_err(|e| format!("postgres.log: {e}"))?;
        let mut cmd = self.command(&self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(self.data())
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(self.dir.path())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=60"]);
        if self.tls {
            cmd.args(["-c", "ssl=on"])
                .arg("-c")
                .arg(format!(
                    "ssl_cert_file={}",
                    self.dir.path().join("server.crt").display()
                ))
                .arg("-c")
                .arg(format!(
                    "ssl_key_file={}",
                    self.dir.path().join("server.key").display()
                ));
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("starting postgres: {e}"))?;
        *self.child.lock().map_err(|_| "poisoned")? = Some(child);
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return Ok(());
            }
            if let Some(status) = self.exited() {
                return Err(format!(
                    "postgres exited ({status})\n--- log ---\n{}",
                    self.log_tail()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "postgres not ready after {START_DEADLINE:?}\n--- log ---\n{}",
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A URL for the superuser on database `postgres`; `params` is the
    /// query string (e.g. `sslmode=disable`).
    pub fn url(&self, params: &str) -> String {
        format!(
            "postgres://{}:{}@127.0.0.1:{}/postgres?{params}",
            self.user, self.password, self.port
        )
    }

    /// Runs `sql` with `psql` as the superuser on database `postgres`: its
    /// output (unaligned, tuples only), or an error with psql's message.
    pub fn psql(&self, sql: &str) -> Result<String, String> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", &self.user, "-d", "postgres", "-c", sql])
            .env("PGPASSWORD", &self.password)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running psql: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(format!(
                "psql failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Stops the server (fast shutdown by its pid) and waits for it.
    pub fn stop(&self) {
        let Ok(mut guard) = self.child.lock() else {
            return;
        };
        if let Some(mut child) = guard.take() {
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Starts the server again on the same port and data.
    pub fn start_again(&self) -> Result<(), String> {
        self.start_server()
    }

    /// Stops and starts the server.
    pub fn restart(&self) -> Result<(), String> {
        self.stop();
        self.start_server()
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The server's pid (0 when stopped).
    pub fn pid(&self) -> u32 {
        self.child
            .lock()
            .ok()
            .and_then(|c| c.as_ref().map(Child::id))
            .unwrap_or(0)
    }

    fn exited(&self) -> Option<std::process::ExitStatus> {
        self.child.lock().ok()?.as_mut()?.try_wait().ok()?
    }
}

fn command(run_as: Option<(u32, u32)>, program: &Path) -> Command {
    match run_as {
        Some((uid, gid)) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={gid}"))
                .arg("--clear-groups")
                .arg(program);
            c
        }
        None => Command::new(program),
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Stops the server by its pid; the temp dir is removed when `dir`
        // drops after this.
        self.stop();
    }
}
