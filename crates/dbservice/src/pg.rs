//! PostgreSQL itself: finding its programs, the layout of an instance on
//! the host, initdb, the configuration atrest owns, starting, stopping and
//! querying.
//!
//! # Who runs what
//!
//! PostgreSQL's programs (`initdb`, `pg_ctl`, the postmaster,
//! `pg_basebackup`, `pg_controldata`, `tar` of a restore) run as the
//! instance's own OS user, with no supplementary groups and
//! `no_new_privs`. atrest's own SQL runs as root's `psql` over the
//! instance's Unix socket, as the role `atrest_admin` (the bootstrap
//! superuser), which only root may become (peer authentication): no
//! password exists for it and TCP refuses it.
//!
//! # The configuration
//!
//! The configuration lives outside the data directory, in `conf/` of the
//! instance's run directory (root's, readable by the instance's group):
//! the server starts with `-c config_file=<conf>/postgresql.conf`, which
//! names `pg_hba.conf` and `pg_ident.conf` beside it. So nothing the
//! instance's user can write (its data directory) says who may connect,
//! where the server listens, or what programs it runs; and
//! `postgresql.auto.conf` is reset at every start, so nothing set with
//! `ALTER SYSTEM` survives (and only atrest's superuser could set it).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::host::run;
use crate::tree::{Owner, Tree};
use crate::users::OsUser;
use crate::{DbError, Result};

/// atrest's superuser role in every instance (the bootstrap superuser).
pub(crate) const ADMIN_ROLE: &str = "atrest_admin";
/// atrest's database in every instance, which only its superuser may
/// connect to (the customer's databases are never atrest's sessions').
pub(crate) const ADMIN_DB: &str = "atrest";
/// The role standbys and base backups connect as.
pub(crate) const REPLICATION_ROLE: &str = "atrest_replication";

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

    /// PostgreSQL's major version (`postgres -V`, which runs as root).
    pub(crate) fn major(&self) -> Result<u32> {
        let out = run(
            Command::new(self.program("postgres"))
                .arg("-V")
                .env_clear()
                .env("PATH", "/usr/bin:/bin"),
            "postgres -V",
        )?;
        // "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
        out.split_whitespace()
            .nth(2)
            .and_then(|v| v.split(['.', 'b', 'r']).next())
            .and_then(|m| m.parse().ok())
            .ok_or_else(|| {
                DbError::Failed(format!(
                    "cannot read PostgreSQL's version from '{}'",
                    out.trim()
                ))
            })
    }

    /// A command for `name`, run as `user` (with no supplementary groups
    /// and no way to gain privileges, through util-linux's `setpriv`) from
    /// `cwd`, with a clean environment.
    pub(crate) fn command(&self, name: &str, user: &OsUser, cwd: &Path) -> Command {
        as_user(&self.program(name), user, cwd)
    }

    /// A command for `name`, run as root (atrest's own clients of the
    /// instance), with a clean environment: no psqlrc, no service or
    /// password file, and a search path of `pg_catalog` only, so that
    /// nothing a customer created in a schema is ever found by atrest's
    /// SQL.
    pub(crate) fn root_command(&self, name: &str) -> Command {
        let mut c = Command::new(self.program(name));
        c.current_dir("/")
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("LANG", "C.UTF-8")
            .env("PGTZ", "UTC")
            .env("HOME", "/nonexistent")
            .env("PGPASSFILE", "/nonexistent")
            .env("PGSYSCONFDIR", "/nonexistent")
            .env("PGOPTIONS", "-c search_path=pg_catalog,pg_temp");
        c
    }
}

/// `program` as `user` (see [`PgBin::command`]).
pub(crate) fn as_user(program: &Path, user: &OsUser, cwd: &Path) -> Command {
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={}", user.uid))
        .arg(format!("--regid={}", user.gid))
        .args(["--clear-groups", "--no-new-privs", "--"])
        .arg(program)
        .current_dir(cwd)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("LANG", "C.UTF-8")
        .env("PGTZ", "UTC")
        .env("HOME", cwd);
    c
}

/// An instance on the host:
///
/// ```text
/// <run>/<id>/          root:<instance>  0750
///   conf/              root:<instance>  0750  postgresql.conf, pg_hba.conf, pg_ident.conf (0640),
///                                             replication.pgpass (the instance's, 0600; a standby's)
///   sock/              <instance>       0700  the server's Unix socket
///   mnt/               root:<instance>  0750  the root of the file system on the instance's disk
///     pgdata/          <instance>       0700  PostgreSQL's data directory
///     agent/           <instance>       0700  agent.token, postgres.log
///     atrest/          root             0700  replication.pw
///   postmaster.pid     root             0644  "<pid> <uid>", for the cleanup after a crash of atrest
/// ```
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    /// The instance's run directory.
    pub dir: PathBuf,
    /// The mount point.
    pub mnt: PathBuf,
    /// Where the instance's sockets are (outside the disk: no data).
    pub sock: PathBuf,
    /// atrest's configuration of the server.
    pub conf: PathBuf,
}

/// Names inside the mounted file system ([`Layout`]).
pub(crate) const PGDATA: &str = "pgdata";
pub(crate) const AGENT_DIR: &str = "agent";
pub(crate) const SECRETS_DIR: &str = "atrest";
pub(crate) const LOG: &str = "agent/postgres.log";
pub(crate) const TOKEN: &str = "agent/agent.token";

impl Layout {
    pub(crate) fn new(dir: PathBuf) -> Self {
        Self {
            mnt: dir.join("mnt"),
            sock: dir.join("sock"),
            conf: dir.join("conf"),
            dir,
        }
    }

    pub(crate) fn pgdata(&self) -> PathBuf {
        self.mnt.join(PGDATA)
    }

    pub(crate) fn log(&self) -> PathBuf {
        self.mnt.join(LOG)
    }

    pub(crate) fn config_file(&self) -> PathBuf {
        self.conf.join("postgresql.conf")
    }

    /// The mounted file system as a [`Tree`].
    pub(crate) fn tree(&self) -> Result<Tree> {
        Tree::open(&self.mnt)
            .map_err(|e| DbError::Failed(format!("opening {}: {e}", self.mnt.display())))
    }

    /// The data directory as a [`Tree`].
    pub(crate) fn pgdata_tree(&self) -> Result<Tree> {
        self.tree()?
            .subtree(PGDATA)
            .map_err(|e| DbError::Failed(format!("opening {}: {e}", self.pgdata().display())))
    }

    /// Makes the run directory, its `conf/` and `sock/`, for `user`.
    pub(crate) fn prepare_run_dir(&self, user: &OsUser) -> Result<()> {
        let err =
            |e: std::io::Error| DbError::Failed(format!("preparing {}: {e}", self.dir.display()));
        let parent = self
            .dir
            .parent()
            .ok_or_else(|| DbError::Failed(format!("{} has no parent", self.dir.display())))?;
        std::fs::create_dir_all(parent).map_err(err)?;
        let name = self
            .dir
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| DbError::Failed(format!("{} has no name", self.dir.display())))?;
        let run = Tree::open(parent).map_err(err)?;
        let group = Owner {
            uid: 0,
            gid: user.gid,
        };
        run.ensure_dir(name, group, 0o750).map_err(err)?;
        let dir = run.subtree(name).map_err(err)?;
        dir.ensure_dir("conf", group, 0o750).map_err(err)?;
        dir.ensure_dir("sock", user.owner(), 0o700).map_err(err)?;
        match dir.stat("mnt").map_err(err)? {
            // The mount point's own mode is the file system root's once
            // mounted; unmounted it is root's.
            Some(_) => Ok(()),
            None => dir.ensure_dir("mnt", Owner::ROOT, 0o700).map_err(err),
        }
    }

    /// Gives the mounted file system its shape: the root root's (readable
    /// by the instance's group), the data and agent directories the
    /// instance's, atrest's secrets directory root's alone.
    pub(crate) fn prepare_fs(&self, user: &OsUser) -> Result<()> {
        let err =
            |e: std::io::Error| DbError::Failed(format!("preparing {}: {e}", self.mnt.display()));
        let t = self.tree()?;
        t.set_root(
            Owner {
                uid: 0,
                gid: user.gid,
            },
            0o750,
        )
        .map_err(err)?;
        t.ensure_dir(PGDATA, user.owner(), 0o700).map_err(err)?;
        t.ensure_dir(AGENT_DIR, user.owner(), 0o700).map_err(err)?;
        t.ensure_dir(SECRETS_DIR, Owner::ROOT, 0o700).map_err(err)
    }
}

/// What atrest writes into the instance's `postgresql.conf` at every
/// start.
#[derive(Debug, Clone, Default)]
pub(crate) struct Settings {
    pub port: u16,
    /// The guard library (see [`crate::guard`]), preloaded first.
    pub guard: Option<PathBuf>,
    /// The customer's parameters (allow-listed, see [`crate::params`]),
    /// written first so that atrest's own settings come after them.
    pub params: Vec<(String, String)>,
    /// atrest's settings beyond port and sockets (WAL, archiving,
    /// recovery, replication), already quoted.
    pub extra: Vec<(String, String)>,
}

pub(crate) fn quote(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "''"))
}

/// `initdb` into the layout's data directory, as the instance's user, with
/// atrest's superuser as the bootstrap superuser (no password: only peer
/// authentication over the socket reaches it).
pub(crate) fn initdb(bin: &PgBin, user: &OsUser, layout: &Layout) -> Result<()> {
    layout.prepare_fs(user)?;
    run(
        bin.command("initdb", user, &layout.pgdata())
            .arg("-D")
            .arg(layout.pgdata())
            .args([
                "-U",
                ADMIN_ROLE,
                "-E",
                "UTF8",
                "--no-locale",
                "--data-checksums",
            ])
            .args(["--auth-local=peer", "--auth-host=scram-sha-256"]),
        "initdb",
    )
    .map(drop)
}

/// Writes the configuration (`postgresql.conf`, `pg_hba.conf`,
/// `pg_ident.conf`) into the run directory's `conf/`, root's and readable
/// by the instance's group only.
pub(crate) fn write_config(
    user: &OsUser,
    layout: &Layout,
    master: &str,
    s: &Settings,
) -> Result<()> {
    let err =
        |e: std::io::Error| DbError::Failed(format!("writing {}: {e}", layout.conf.display()));
    let conf = Tree::open(&layout.conf).map_err(err)?;
    let group = Owner {
        uid: 0,
        gid: user.gid,
    };
    conf.write(
        "postgresql.conf",
        settings_text(layout, s).as_bytes(),
        group,
        0o640,
    )
    .map_err(err)?;
    conf.write("pg_hba.conf", hba_text(master).as_bytes(), group, 0o640)
        .map_err(err)?;
    conf.write(
        "pg_ident.conf",
        ident_text(user, master).as_bytes(),
        group,
        0o640,
    )
    .map_err(err)?;
    // What `ALTER SYSTEM` would have written is never read.
    layout
        .pgdata_tree()?
        .write(
            "postgresql.auto.conf",
            b"# Do not edit this file manually!\n# It will be overwritten by the ALTER SYSTEM command.\n",
            user.owner(),
            0o600,
        )
        .map_err(|e| DbError::Failed(format!("resetting postgresql.auto.conf: {e}")))
}

/// What `initdb` would have written into the data directory's
/// `postgresql.conf` (which is not read): the instance's defaults, before
/// the customer's parameters. Without them PostgreSQL's compiled-in values
/// apply, `shared_buffers = 8MB` among them.
const DEFAULTS: [(&str, &str); 8] = [
    ("shared_buffers", "'128MB'"),
    ("dynamic_shared_memory_type", "posix"),
    ("max_wal_size", "'1GB'"),
    ("min_wal_size", "'80MB'"),
    ("timezone", "'UTC'"),
    ("log_timezone", "'UTC'"),
    ("datestyle", "'iso, mdy'"),
    ("default_text_search_config", "'pg_catalog.english'"),
];

fn settings_text(layout: &Layout, s: &Settings) -> String {
    let mut text = String::from(
        "# Written by atrest at every start; edits are lost. The data directory's\n# postgresql.conf is not read.\n",
    );
    let mut line = |k: &str, v: &str| {
        let _ = writeln!(text, "{k} = {v}");
    };
    for (k, v) in DEFAULTS {
        line(k, v);
    }
    let mut libraries: Vec<String> = s.guard.iter().map(|g| g.display().to_string()).collect();
    for (k, v) in &s.params {
        if k == "shared_preload_libraries" {
            libraries.extend(
                v.split(',')
                    .map(|l| l.trim().to_owned())
                    .filter(|l| !l.is_empty()),
            );
        } else {
            line(k, &quote(v));
        }
    }
    // atrest's own settings come last: the last value of a name wins.
    line("shared_preload_libraries", &quote(&libraries.join(",")));
    line(
        "hba_file",
        &quote(&layout.conf.join("pg_hba.conf").display().to_string()),
    );
    line(
        "ident_file",
        &quote(&layout.conf.join("pg_ident.conf").display().to_string()),
    );
    line("port", &s.port.to_string());
    line("listen_addresses", &quote("127.0.0.1"));
    line(
        "unix_socket_directories",
        &quote(&layout.sock.display().to_string()),
    );
    line("unix_socket_permissions", "0700");
    line("logging_collector", "off");
    for (k, v) in &s.extra {
        line(k, v);
    }
    text
}

/// Who may connect: root (peer) as atrest's superuser, and as the master
/// while an instance of an earlier release is migrated; the instance's own
/// user (peer) as the replication role, for base backups; over TCP, the
/// replication role for replication only and everyone else for databases
/// only, with a password (SCRAM). Nothing else reaches the socket, and
/// atrest's superuser is refused over TCP.
fn hba_text(master: &str) -> String {
    format!(
        "# Managed by atrest; the data directory's pg_hba.conf is not read.\n\
local   all          {ADMIN_ROLE},\"{master}\"          peer map=atrest\n\
local   replication  {REPLICATION_ROLE}           peer map=atrest\n\
local   all          all                          reject\n\
local   replication  all                          reject\n\
host    all          {ADMIN_ROLE}       all       reject\n\
host    replication  {REPLICATION_ROLE} 127.0.0.1/32 scram-sha-256\n\
host    replication  {REPLICATION_ROLE} ::1/128   scram-sha-256\n\
host    all          {REPLICATION_ROLE} all       reject\n\
host    replication  all                all       reject\n\
host    all          all                127.0.0.1/32 scram-sha-256\n\
host    all          all                ::1/128   scram-sha-256\n"
    )
}

fn ident_text(user: &OsUser, master: &str) -> String {
    format!(
        "# Managed by atrest.\n\
atrest  root  {ADMIN_ROLE}\n\
atrest  root  {master}\n\
atrest  {}  {REPLICATION_ROLE}\n",
        user.name
    )
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
    clear_stale_pid(layout, user, port);
    let log_start = layout.tree().map_or(0, |t| t.len(LOG));
    // pg_ctl hands -o to sh -c: the path is atrest's and quoted.
    let opts = format!(
        "-c config_file={}",
        sh_quote(&layout.config_file().display().to_string())
    );
    let r = run(
        bin.command("pg_ctl", user, &layout.pgdata())
            .arg("start")
            .arg("-D")
            .arg(layout.pgdata())
            .arg("-l")
            .arg(layout.log())
            .arg("-o")
            .arg(opts)
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

/// A word for `sh -c`.
pub(crate) fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The last lines of the instance's log (for errors; it lives on the
/// encrypted disk and is read only while it is mounted).
pub(crate) fn log_tail(layout: &Layout) -> String {
    log_tail_since(layout, 0)
}

/// [`log_tail`] of what was written from byte `offset` on (one start's
/// lines: earlier ones may quote user data, which must not reach atrest's
/// own log). The log is the instance user's file: read through
/// [`Tree::read_tail`] (no link followed, at most 64 KiB).
pub(crate) fn log_tail_since(layout: &Layout, offset: u64) -> String {
    let bytes = layout
        .tree()
        .ok()
        .and_then(|t| t.read_tail(LOG, offset, 64 * 1024).ok())
        .unwrap_or_default();
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

/// Before a start: removes `postmaster.pid` and the socket's lock and
/// socket unless they name the instance's running postmaster (a killed
/// postmaster can linger as a zombie that its new parent has not reaped
/// yet, which PostgreSQL would take for a running server; and the
/// instance's user may have put anything at those names, which PostgreSQL
/// would read), and a log that is not a regular file of one name (which
/// `pg_ctl` could not append to).
pub(crate) fn clear_stale_pid(layout: &Layout, user: &OsUser, port: u16) {
    if postmaster_pid(layout).is_some_and(|pid| crate::host::is_postgres(pid, user.uid)) {
        return;
    }
    if let Ok(t) = layout.pgdata_tree() {
        let _ = t.remove("postmaster.pid");
    }
    if let Ok(t) = Tree::open(&layout.sock) {
        let _ = t.remove(&format!(".s.PGSQL.{port}.lock"));
        let _ = t.remove(&format!(".s.PGSQL.{port}"));
    }
    if let Ok(t) = layout.tree()
        && let Ok(Some(s)) = t.stat(LOG)
        && !crate::tree::is_single_file(&s)
    {
        let _ = t.remove(LOG);
    }
}

/// The postmaster's pid, from `postmaster.pid` (the instance's file: read
/// through [`Tree`]; check the process before acting on it).
pub(crate) fn postmaster_pid(layout: &Layout) -> Option<u32> {
    let bytes = layout
        .pgdata_tree()
        .ok()?
        .read("postmaster.pid", 4096)
        .ok()??;
    let text = String::from_utf8_lossy(&bytes);
    text.lines().next()?.trim().parse().ok()
}

/// Stops the server: `fast` (clients disconnected, a clean checkpoint),
/// then `immediate`, then SIGKILL.
pub(crate) fn stop(bin: &PgBin, user: &OsUser, layout: &Layout, pid: Option<u32>) {
    for (mode, wait) in [("fast", "30"), ("immediate", "10")] {
        let r = run(
            bin.command("pg_ctl", user, &layout.pgdata())
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
        crate::host::kill_postgres(pid, user.uid);
    }
}

/// A connection of atrest's to an instance: root over the socket, as
/// `role`, to `db`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Conn<'a> {
    pub bin: &'a PgBin,
    pub layout: &'a Layout,
    pub port: u16,
    pub role: &'a str,
    pub db: &'a str,
}

impl Conn<'_> {
    fn psql(&self) -> Command {
        let mut c = self.bin.root_command("psql");
        c.arg("-h")
            .arg(&self.layout.sock)
            .args(["-p", &self.port.to_string(), "-U", self.role, "-d", self.db])
            .args(["-X", "-v", "ON_ERROR_STOP=1"]);
        c
    }

    /// Runs one SQL statement; returns the unaligned, tuples-only output.
    pub(crate) fn query(&self, sql: &str) -> Result<String> {
        run(self.psql().args(["-A", "-t", "-q", "-c", sql]), "psql").map(|s| s.trim().to_owned())
    }

    /// Runs SQL given on stdin (for statements that carry a secret, which
    /// must not appear in a process's arguments).
    pub(crate) fn query_stdin(&self, sql: &str) -> Result<String> {
        use std::io::Write;
        use std::process::Stdio;
        let mut child = self
            .psql()
            .args(["-A", "-t", "-q", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
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
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            // psql quotes the failing statement ("LINE 1: ..."), which
            // carries the secret: only the error lines themselves are kept.
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
}

/// Promotes a standby and waits until it accepts writes.
pub(crate) fn promote(bin: &PgBin, user: &OsUser, layout: &Layout) -> Result<()> {
    run(
        bin.command("pg_ctl", user, &layout.pgdata())
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
        bin.command("pg_controldata", user, &layout.pgdata())
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

/// An SQL identifier, quoted.
pub(crate) fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// An SQL string literal.
pub(crate) fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> OsUser {
        OsUser {
            name: "atrest-db-0123456789abcdef".into(),
            uid: 70001,
            gid: 70001,
        }
    }

    #[test]
    fn atrest_settings_come_after_the_customers() {
        let layout = Layout::new(PathBuf::from("/run/atrest/x/db/db-1"));
        let s = Settings {
            port: 5432,
            guard: Some(PathBuf::from("/run/atrest/x/db/lib/atrest_guard.so")),
            params: vec![
                ("work_mem".into(), "64MB".into()),
                (
                    "shared_preload_libraries".into(),
                    "pg_stat_statements".into(),
                ),
            ],
            extra: vec![("wal_level".into(), "replica".into())],
        };
        let text = settings_text(&layout, &s);
        let pos = |k: &str| text.find(&format!("\n{k} = ")).unwrap();
        assert!(pos("shared_buffers") < pos("work_mem"));
        assert!(pos("work_mem") < pos("listen_addresses"));
        assert!(text.contains(
            "shared_preload_libraries = '/run/atrest/x/db/lib/atrest_guard.so,pg_stat_statements'"
        ));
        assert_eq!(text.matches("shared_preload_libraries").count(), 1);
        assert!(text.contains("listen_addresses = '127.0.0.1'"));
        assert!(text.contains("hba_file = '/run/atrest/x/db/db-1/conf/pg_hba.conf'"));
        assert!(text.contains("unix_socket_directories = '/run/atrest/x/db/db-1/sock'"));
    }

    #[test]
    fn only_root_reaches_the_superuser() {
        let hba = hba_text("postgres");
        let local: Vec<&str> = hba.lines().filter(|l| l.starts_with("local")).collect();
        assert!(local[0].contains(ADMIN_ROLE) && local[0].ends_with("peer map=atrest"));
        assert!(
            local
                .iter()
                .any(|l| l.contains("all          all") && l.ends_with("reject"))
        );
        let host: Vec<&str> = hba.lines().filter(|l| l.starts_with("host")).collect();
        assert!(host[0].contains(ADMIN_ROLE) && host[0].ends_with("reject"));
        assert!(!hba.contains("trust") && !hba.contains("0.0.0.0"));
        let ident = ident_text(&user(), "postgres");
        assert!(ident.contains("atrest  root  atrest_admin"));
        assert!(ident.contains("atrest  atrest-db-0123456789abcdef  atrest_replication"));
        assert!(!ident.contains("atrest-db-0123456789abcdef  atrest_admin"));
    }

    #[test]
    fn quoting() {
        assert_eq!(quote("it's"), "'it''s'");
        assert_eq!(sh_quote("/a b/it's"), "'/a b/it'\\''s'");
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(literal("o'k"), "'o''k'");
    }
}
