//! PostgreSQL itself: finding its programs, initdb, the configuration
//! atrest owns, starting, stopping and querying, always as the OS user it
//! runs as.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::host::{OsUser, run};
use crate::{DbError, Result};

/// Where PostgreSQL's programs are.
#[derive(Debug, Clone)]
pub(crate) struct PgBin {
    dir: PathBuf,
}

const PROGRAMS: [&str; 5] = ["initdb", "pg_ctl", "postgres", "pg_basebackup", "psql"];

impl PgBin {
    /// `configured`, or the directory of `initdb` on PATH, or the newest
    /// `/usr/lib/postgresql/*/bin`. Every program atrest runs must be there.
    pub(crate) fn find(configured: Option<&Path>) -> Result<Self> {
        let dir = match configured {
            Some(d) => d.to_path_buf(),
            None => Self::search().ok_or_else(|| {
                DbError::Unavailable(
                    "PostgreSQL was not found: no initdb on PATH or under /usr/lib/postgresql; install PostgreSQL or start the server with --db-pg-bin DIR".into(),
                )
            })?,
        };
        for p in PROGRAMS {
            // psql may come from a client package elsewhere on PATH.
            if !dir.join(p).is_file() && p != "psql" {
                return Err(DbError::Unavailable(format!(
                    "PostgreSQL's {p} was not found in {}; install PostgreSQL or start the server with --db-pg-bin DIR",
                    dir.display()
                )));
            }
        }
        Ok(Self { dir })
    }

    fn search() -> Option<PathBuf> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        for d in std::env::split_paths(&path) {
            let initdb = d.join("initdb");
            if initdb.is_file() {
                let real = std::fs::canonicalize(&initdb).unwrap_or(initdb);
                return real.parent().map(Path::to_path_buf);
            }
        }
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let v = e.file_name().to_str()?.parse::<u32>().ok()?;
                let bin = e.path().join("bin");
                bin.join("initdb").is_file().then_some((v, bin))
            })
            .collect();
        versions.sort();
        versions.pop().map(|(_, b)| b)
    }

    pub(crate) fn program(&self, name: &str) -> PathBuf {
        let p = self.dir.join(name);
        if p.is_file() { p } else { PathBuf::from(name) }
    }

    /// A command for `name`, run as `user` (with no supplementary groups,
    /// through util-linux's `setpriv`) from `cwd`, with a clean
    /// environment.
    pub(crate) fn command(&self, name: &str, user: &OsUser, cwd: &Path) -> Command {
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={}", user.uid))
            .arg(format!("--regid={}", user.gid))
            .args(["--clear-groups", "--"])
            .arg(self.program(name))
            .current_dir(cwd)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("LANG", "C.UTF-8")
            .env("PGTZ", "UTC")
            .env("HOME", cwd);
        c
    }
}

/// The files of one instance on its mounted file system.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    /// The mount point.
    pub mnt: PathBuf,
    /// Where the instance's sockets are (outside the disk: no data).
    pub sock: PathBuf,
}

impl Layout {
    pub(crate) fn pgdata(&self) -> PathBuf {
        self.mnt.join("pgdata")
    }

    /// atrest's own files on the disk (logs, secrets for agents).
    pub(crate) fn own(&self) -> PathBuf {
        self.mnt.join("atrest")
    }

    pub(crate) fn log(&self) -> PathBuf {
        self.own().join("postgres.log")
    }
}

/// What atrest writes into `atrest.conf`, included last by
/// `postgresql.conf`, at every start.
#[derive(Debug, Clone, Default)]
pub(crate) struct Settings {
    pub port: u16,
    /// Extra `name = value` lines (archiving, recovery, replication).
    pub extra: Vec<(String, String)>,
}

pub(crate) fn quote(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "''"))
}

/// `initdb` into the layout's pgdata, with `superuser` whose password is
/// in `pwfile` (on the encrypted disk, removed afterwards).
pub(crate) fn initdb(
    bin: &PgBin,
    user: &OsUser,
    layout: &Layout,
    superuser: &str,
    password: &str,
) -> Result<()> {
    let own = layout.own();
    std::fs::create_dir_all(&own)
        .map_err(|e| DbError::Failed(format!("creating {}: {e}", own.display())))?;
    user.chown(&layout.mnt)?;
    user.chown(&own)?;
    let pwfile = own.join("initdb.pw");
    write_private(user, &pwfile, password.as_bytes())?;
    let r = run(
        bin.command("initdb", user, &layout.mnt)
            .arg("-D")
            .arg(layout.pgdata())
            .args([
                "-U",
                superuser,
                "-E",
                "UTF8",
                "--no-locale",
                "--data-checksums",
            ])
            .args(["--auth-local=peer", "--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", pwfile.display())),
        "initdb",
    );
    let _ = std::fs::remove_file(&pwfile);
    r?;
    write_hba(user, layout, superuser)?;
    let conf = layout.pgdata().join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf)
        .map_err(|e| DbError::Failed(format!("reading postgresql.conf: {e}")))?;
    text.push_str("\n# Written by atrest at every start: port, sockets, archiving, recovery.\ninclude_if_exists = 'atrest.conf'\n");
    std::fs::write(&conf, text)
        .map_err(|e| DbError::Failed(format!("writing postgresql.conf: {e}")))?;
    Ok(())
}

/// The access rules: the OS user PostgreSQL runs as may connect over the
/// instance's socket as the superuser (atrest's own connections, base
/// backups included); every TCP connection, replication included, needs a
/// password (SCRAM).
pub(crate) fn write_hba(user: &OsUser, layout: &Layout, superuser: &str) -> Result<()> {
    let data = layout.pgdata();
    let hba = "# Managed by atrest.\n\
local   all          all                     peer map=atrest\n\
local   replication  all                     peer map=atrest\n\
host    all          all        127.0.0.1/32 scram-sha-256\n\
host    all          all        ::1/128      scram-sha-256\n\
host    replication  all        127.0.0.1/32 scram-sha-256\n\
host    replication  all        ::1/128      scram-sha-256\n";
    let ident = format!("# Managed by atrest.\natrest  {}  {superuser}\n", user.name);
    for (name, text) in [("pg_hba.conf", hba.to_owned()), ("pg_ident.conf", ident)] {
        write_private(user, &data.join(name), text.as_bytes())?;
    }
    Ok(())
}

/// Writes a file only `user` can read.
pub(crate) fn write_private(user: &OsUser, path: &Path, bytes: &[u8]) -> Result<()> {
    write_file_0600(path, bytes)?;
    user.chown(path)
}

/// Writes (and syncs) a file of mode 0600, owned by whoever runs atrest.
pub(crate) fn write_file_0600(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| DbError::Failed(format!("writing {}: {e}", path.display())))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| DbError::Failed(format!("writing {}: {e}", path.display())))
}

/// Writes `atrest.conf` for this start.
pub(crate) fn write_settings(user: &OsUser, layout: &Layout, s: &Settings) -> Result<()> {
    let mut text = String::from("# Written by atrest at every start; edits are lost.\n");
    let mut line = |k: &str, v: String| {
        text.push_str(k);
        text.push_str(" = ");
        text.push_str(&v);
        text.push('\n');
    };
    line("port", s.port.to_string());
    line("listen_addresses", quote("127.0.0.1"));
    line(
        "unix_socket_directories",
        quote(&layout.sock.display().to_string()),
    );
    line("unix_socket_permissions", "0700".into());
    line("logging_collector", "off".into());
    for (k, v) in &s.extra {
        line(k, v.clone());
    }
    write_private(user, &layout.pgdata().join("atrest.conf"), text.as_bytes())
}

/// Starts the server and waits until it accepts connections; returns the
/// postmaster's pid. On failure the message carries the end of the log.
pub(crate) fn start(
    bin: &PgBin,
    user: &OsUser,
    layout: &Layout,
    port: u16,
    wait: Duration,
) -> Result<u32> {
    std::fs::create_dir_all(&layout.sock)
        .map_err(|e| DbError::Failed(format!("creating {}: {e}", layout.sock.display())))?;
    user.chown(&layout.sock)?;
    clear_stale_pid(layout, port);
    let log_start = std::fs::metadata(layout.log()).map_or(0, |m| m.len());
    let r = run(
        bin.command("pg_ctl", user, &layout.mnt)
            .arg("start")
            .arg("-D")
            .arg(layout.pgdata())
            .arg("-l")
            .arg(layout.log())
            .args(["-w", "-t", &wait.as_secs().max(1).to_string(), "-s"]),
        "pg_ctl start",
    );
    if let Err(e) = r {
        return Err(DbError::Failed(format!(
            "{e}; log: {}",
            log_tail_since(layout, log_start)
        )));
    }
    postmaster_pid(layout)
        .ok_or_else(|| DbError::Failed("PostgreSQL started but wrote no postmaster.pid".into()))
}

/// The last lines of the instance's log (for errors; it lives on the
/// encrypted disk and is read only while it is mounted).
pub(crate) fn log_tail(layout: &Layout) -> String {
    log_tail_since(layout, 0)
}

/// [`log_tail`] of what was written from byte `offset` on (one start's
/// lines: earlier ones may quote user data, which must not reach atrest's
/// own log).
pub(crate) fn log_tail_since(layout: &Layout, offset: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut bytes = Vec::new();
    if let Ok(mut f) = std::fs::File::open(layout.log()) {
        let _ = f
            .seek(SeekFrom::Start(offset))
            .and_then(|_| f.read_to_end(&mut bytes));
    }
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(5);
    // The last FATAL or PANIC says why the server stopped, even when the
    // lines of its shutdown follow it.
    let why = lines[..from]
        .iter()
        .rev()
        .take(20)
        .find(|l| l.contains("FATAL:") || l.contains("PANIC:"));
    why.into_iter()
        .chain(&lines[from..])
        .copied()
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Removes `postmaster.pid` (and the socket lock) when the process it
/// names is gone. A killed postmaster can linger as a zombie that its new
/// parent has not reaped yet, which PostgreSQL would take for a running
/// server.
pub(crate) fn clear_stale_pid(layout: &Layout, port: u16) {
    if let Some(pid) = postmaster_pid(layout)
        && !crate::host::is_postgres(pid)
    {
        let _ = std::fs::remove_file(layout.pgdata().join("postmaster.pid"));
        let _ = std::fs::remove_file(layout.sock.join(format!(".s.PGSQL.{port}.lock")));
        let _ = std::fs::remove_file(layout.sock.join(format!(".s.PGSQL.{port}")));
    }
}

/// The running postmaster's pid, from `postmaster.pid`.
pub(crate) fn postmaster_pid(layout: &Layout) -> Option<u32> {
    let text = std::fs::read_to_string(layout.pgdata().join("postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok()
}

/// Stops the server: `fast` (clients disconnected, a clean checkpoint),
/// then `immediate`, then SIGKILL.
pub(crate) fn stop(bin: &PgBin, user: &OsUser, layout: &Layout, pid: Option<u32>) {
    for (mode, wait) in [("fast", "30"), ("immediate", "10")] {
        let r = run(
            bin.command("pg_ctl", user, &layout.mnt)
                .arg("stop")
                .arg("-D")
                .arg(layout.pgdata())
                .args(["-m", mode, "-w", "-t", wait, "-s"]),
            "pg_ctl stop",
        );
        match r {
            Ok(_) => break,
            Err(e) => tracing::warn!(mode, error = %e, "pg_ctl stop failed"),
        }
    }
    if let Some(pid) = pid {
        crate::host::kill_postgres(pid);
    }
}

/// Runs one SQL statement as the superuser over the socket; returns the
/// unaligned, tuples-only output.
#[allow(dead_code, reason = "used by backups and replicas")]
pub(crate) fn query(
    bin: &PgBin,
    user: &OsUser,
    layout: &Layout,
    port: u16,
    superuser: &str,
    sql: &str,
) -> Result<String> {
    run(
        bin.command("psql", user, &layout.mnt)
            .arg("-h")
            .arg(&layout.sock)
            .args(["-p", &port.to_string(), "-U", superuser, "-d", "postgres"])
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql]),
        "psql",
    )
    .map(|s| s.trim().to_owned())
}

/// Runs SQL given on stdin as the superuser over the socket (for
/// statements that carry a secret, which must not appear in a process's
/// arguments).
pub(crate) fn query_stdin(
    bin: &PgBin,
    user: &OsUser,
    layout: &Layout,
    port: u16,
    superuser: &str,
    sql: &str,
) -> Result<()> {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = bin
        .command("psql", user, &layout.mnt)
        .arg("-h")
        .arg(&layout.sock)
        .args(["-p", &port.to_string(), "-U", superuser, "-d", "postgres"])
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| DbError::Failed(format!("cannot run psql: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(sql.as_bytes())
            .map_err(|e| DbError::Failed(format!("writing to psql: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| DbError::Failed(format!("psql: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        // psql quotes the failing statement ("LINE 1: ..."), which carries
        // the secret: only the error lines themselves are kept.
        let stderr = String::from_utf8_lossy(&out.stderr);
        let errors: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains("ERROR:") || l.contains("FATAL:"))
            .filter(|l| !l.to_ascii_uppercase().contains("PASSWORD '"))
            .collect();
        Err(DbError::Failed(format!(
            "psql failed ({}): {}",
            out.status,
            errors.join(" | ")
        )))
    }
}

/// Promotes a standby and waits until it accepts writes.
pub(crate) fn promote(bin: &PgBin, user: &OsUser, layout: &Layout) -> Result<()> {
    run(
        bin.command("pg_ctl", user, &layout.mnt)
            .arg("promote")
            .arg("-D")
            .arg(layout.pgdata())
            .args(["-w", "-t", "120", "-s"]),
        "pg_ctl promote",
    )
    .map(drop)
}

/// The latest checkpoint's location of a stopped server (pg_controldata).
pub(crate) fn checkpoint_lsn(bin: &PgBin, user: &OsUser, layout: &Layout) -> Result<String> {
    let out = run(
        bin.command("pg_controldata", user, &layout.mnt)
            .arg("-D")
            .arg(layout.pgdata()),
        "pg_controldata",
    )?;
    out.lines()
        .find_map(|l| l.strip_prefix("Latest checkpoint location:"))
        .map(|v| v.trim().to_owned())
        .ok_or_else(|| DbError::Failed("pg_controldata shows no checkpoint location".into()))
}

/// [`run`] with extra environment variables (secrets for the child only).
pub(crate) fn run_with_env(cmd: &mut Command, env: &[(&str, &str)], what: &str) -> Result<String> {
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(cmd, what)
}
