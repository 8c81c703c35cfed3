//! `atrest_guard` against the real PostgreSQL it was built for: a
//! non-superuser CREATEROLE master user cannot reach the roles that run
//! programs and read or write the server's files, nor atrest's own
//! `atrest_*` roles, and can still manage its own roles and databases.
//!
//! The same cluster first runs without the guard, to show the attack works
//! there: the refusals below are the guard's, not PostgreSQL's.
//!
//! Needs root (PostgreSQL runs as the OS user `postgres`), PostgreSQL's
//! programs of the major version the guard was built for, and a build with
//! the guard; without any of them it says why and passes.

#![allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A throwaway cluster under a temporary directory, run as `postgres`.
/// Dropping it kills the server and removes the directory.
struct Cluster {
    root: tempfile::TempDir,
    bin: PathBuf,
    uid: u32,
    gid: u32,
    port: u16,
}

impl Cluster {
    fn data(&self) -> PathBuf {
        self.root.path().join("data")
    }

    /// The socket's directory, and the server's log: `postgres`'s.
    fn sock(&self) -> PathBuf {
        self.root.path().join("run")
    }

    fn log(&self) -> PathBuf {
        self.sock().join("postgres.log")
    }

    /// `program` from PostgreSQL's bin directory, run as `postgres`.
    fn as_postgres(&self, program: &str) -> Command {
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .args(["--clear-groups", "--"])
            .arg(self.bin.join(program))
            .current_dir(self.root.path())
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("LANG", "C.UTF-8")
            .env("HOME", self.root.path());
        c
    }

    /// initdb, with the bootstrap superuser `atrest_admin` and trust
    /// authentication (the socket is in a directory only root and
    /// `postgres` reach).
    fn init(bin: PathBuf, uid: u32, gid: u32) -> Self {
        let root = tempfile::tempdir().unwrap();
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = Self {
            root,
            bin,
            uid,
            gid,
            port,
        };
        for d in [c.data(), c.sock()] {
            std::fs::create_dir(&d).unwrap();
            std::os::unix::fs::chown(&d, Some(uid), Some(gid)).unwrap();
        }
        let out = c
            .as_postgres("initdb")
            .arg("-D")
            .arg(c.data())
            .args(["-U", "atrest_admin", "--auth=trust", "-E", "UTF8"])
            .args(["--no-locale", "--no-sync"])
            .output()
            .unwrap();
        assert!(out.status.success(), "initdb: {}", text(&out.stderr));
        c
    }

    /// Starts the server, loading `guard` if given.
    fn start(&self, guard: Option<&Path>) {
        let preload = guard.map(|g| g.display().to_string()).unwrap_or_default();
        // pg_ctl hands -o to a shell: keep the values plain.
        for v in [preload.as_str(), &self.sock().display().to_string()] {
            assert!(
                v.chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "/._-".contains(ch)),
                "{v}"
            );
        }
        let opts = format!(
            "-c port={} -c listen_addresses='' -c unix_socket_directories='{}' -c shared_preload_libraries='{preload}' -c fsync=off",
            self.port,
            self.sock().display(),
        );
        let out = self
            .as_postgres("pg_ctl")
            .args(["start", "-w", "-t", "60", "-D"])
            .arg(self.data())
            .arg("-l")
            .arg(self.log())
            .args(["-o", &opts])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start: {}\n{}",
            text(&out.stderr),
            std::fs::read_to_string(self.log()).unwrap_or_default()
        );
    }

    /// The postmaster's pid, while it runs.
    fn pid(&self) -> Option<Pid> {
        let s = std::fs::read_to_string(self.data().join("postmaster.pid")).ok()?;
        let pid = Pid::from_raw(s.lines().next()?.trim().parse().ok()?);
        alive(pid).then_some(pid)
    }

    /// Stops the server by its pid (SIGQUIT: immediate shutdown; SIGKILL
    /// if it lingers) and waits until it is gone.
    fn stop(&self) {
        let Some(pid) = self.pid() else { return };
        let _ = kill(pid, Signal::SIGQUIT);
        let deadline = Instant::now() + Duration::from_secs(20);
        while alive(pid) {
            if Instant::now() > deadline {
                let _ = kill(pid, Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // An immediate shutdown leaves the pid file; the next start would
        // wait on it otherwise.
        let _ = std::fs::remove_file(self.data().join("postmaster.pid"));
    }

    /// `sql` as `user` through psql (run as root, over the socket).
    fn psql(&self, user: &str, sql: &str) -> Output {
        Command::new(self.bin.join("psql"))
            .arg("-h")
            .arg(self.sock())
            .args(["-p", &self.port.to_string(), "-U", user, "-d", "postgres"])
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("LANG", "C.UTF-8")
            .output()
            .unwrap()
    }

    /// Runs `sql` as `user` and returns its output; it must succeed.
    fn ok(&self, user: &str, sql: &str) -> String {
        let out = self.psql(user, sql);
        assert!(
            out.status.success(),
            "{user}: {sql}: refused: {}",
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// Runs `sql` as `user`; it must fail with `reason` in the error.
    fn refused(&self, user: &str, sql: &str, reason: &str) {
        let out = self.psql(user, sql);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{user}: {sql}: allowed");
        assert!(
            err.contains(reason),
            "{user}: {sql}: {err}\nexpected: {reason}"
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
        // The TempDir is removed after this.
    }
}

/// Whether `pid` runs: exists and is not a zombie. The postmaster is not
/// our child, and an exited one waits for init to reap it.
fn alive(pid: Pid) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next())
        .is_some_and(|state| state != 'Z')
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_owned()
}

/// What the test needs (the guard, its PostgreSQL, root and the OS user
/// `postgres`), or why it cannot run here.
fn prerequisites() -> Result<(u32, &'static [u8], PathBuf, u32, u32), String> {
    let (major, object) = atrest_dbservice::guard_object()
        .ok_or("this build has no guard (no PostgreSQL server headers at build time)")?;
    if !nix::unistd::geteuid().is_root() {
        return Err("not running as root (PostgreSQL must run as the OS user postgres)".into());
    }
    let bin = PathBuf::from(format!("/usr/lib/postgresql/{major}/bin"));
    for p in ["initdb", "pg_ctl", "postgres", "psql"] {
        if !bin.join(p).is_file() {
            return Err(format!(
                "no {} (the guard is for PostgreSQL {major})",
                bin.join(p).display()
            ));
        }
    }
    let user = nix::unistd::User::from_name("postgres")
        .ok()
        .flatten()
        .ok_or("no OS user postgres")?;
    Ok((major, object, bin, user.uid.as_raw(), user.gid.as_raw()))
}

const SERVER_FILES: [&str; 3] = [
    "pg_execute_server_program",
    "pg_read_server_files",
    "pg_write_server_files",
];

/// Non-superuser members of the server-file roles.
const MEMBERS: &str = "SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member \
     WHERE m.roleid IN ('pg_execute_server_program'::regrole, 'pg_read_server_files'::regrole, \
     'pg_write_server_files'::regrole) AND NOT r.rolsuper";

#[test]
fn guard_keeps_createrole_master_inside_the_database() {
    let (major, object, bin, uid, gid) = match prerequisites() {
        Ok(v) => v,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let started = Instant::now();
    let c = Cluster::init(bin, uid, gid);
    let lib = c.root.path().join("lib");
    std::fs::create_dir(&lib).unwrap();
    std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(0o755)).unwrap();
    let guard = lib.join("atrest_guard.so");
    std::fs::write(&guard, object).unwrap();
    std::fs::set_permissions(&guard, std::fs::Permissions::from_mode(0o644)).unwrap();

    // Without the guard: the attack works.
    c.start(None);
    c.ok(
        "atrest_admin",
        "CREATE ROLE master LOGIN CREATEDB CREATEROLE; CREATE ROLE atrest_replication REPLICATION LOGIN",
    );
    c.ok("master", "GRANT pg_execute_server_program TO master");
    c.ok("master", "COPY (SELECT 1) TO PROGRAM 'cat > /dev/null'");
    c.ok(
        "atrest_admin",
        "REVOKE pg_execute_server_program FROM master",
    );
    assert_eq!(c.ok("atrest_admin", MEMBERS), "0");
    // Loaded into one session only, it would guard that session only.
    c.refused(
        "atrest_admin",
        &format!("LOAD '{}'", guard.display()),
        "atrest_guard must be loaded with shared_preload_libraries",
    );
    c.stop();

    // With it.
    c.start(Some(&guard));
    assert_eq!(
        c.ok("atrest_admin", "SHOW shared_preload_libraries"),
        guard.display().to_string()
    );
    let files = "it reaches the server's files and programs";
    let own = "roles whose names begin with \"atrest_\" belong to atrest";
    let refusals: [(&str, String); 15] = [
        (
            "GRANT pg_execute_server_program TO master",
            format!("role \"master\" may not grant \"pg_execute_server_program\": {files}"),
        ),
        (
            "GRANT pg_read_server_files TO master",
            format!("role \"master\" may not grant \"pg_read_server_files\": {files}"),
        ),
        (
            "GRANT pg_write_server_files TO master WITH ADMIN OPTION",
            format!("role \"master\" may not grant \"pg_write_server_files\": {files}"),
        ),
        (
            "CREATE ROLE x IN ROLE pg_execute_server_program",
            format!("role \"master\" may not grant \"pg_execute_server_program\": {files}"),
        ),
        (
            "ALTER GROUP pg_read_server_files ADD USER master",
            format!("role \"master\" may not grant \"pg_read_server_files\": {files}"),
        ),
        (
            "CREATE ROLE atrest_evil",
            format!("role \"master\" may not create role \"atrest_evil\": {own}"),
        ),
        (
            "DROP ROLE atrest_replication",
            format!("role \"master\" may not drop role \"atrest_replication\": {own}"),
        ),
        (
            "ALTER ROLE atrest_replication PASSWORD 'x'",
            format!("role \"master\" may not alter role \"atrest_replication\": {own}"),
        ),
        (
            "ALTER ROLE atrest_replication SET work_mem = '1MB'",
            format!("role \"master\" may not alter role \"atrest_replication\": {own}"),
        ),
        (
            "ALTER ROLE atrest_replication RENAME TO x",
            format!("role \"master\" may not rename role \"atrest_replication\": {own}"),
        ),
        (
            "CREATE ROLE y; ALTER ROLE y RENAME TO atrest_y",
            format!("role \"master\" may not rename a role to \"atrest_y\": {own}"),
        ),
        (
            "GRANT master TO atrest_replication",
            format!("role \"master\" may not grant a role to \"atrest_replication\": {own}"),
        ),
        (
            "GRANT atrest_replication TO master",
            format!("role \"master\" may not grant \"atrest_replication\": {own}"),
        ),
        (
            "ALTER SYSTEM SET work_mem = '1MB'",
            "role \"master\" may not use ALTER SYSTEM: only a superuser may change the server's configuration".to_owned(),
        ),
        (
            // PostgreSQL's own refusal, now that master cannot get the role.
            "COPY (SELECT 1) TO PROGRAM 'true'",
            "must be superuser or have privileges of the pg_execute_server_program role".to_owned(),
        ),
    ];
    for (sql, reason) in &refusals {
        c.refused("master", sql, reason);
    }
    // More ways in: through a new role's members, an existing group's,
    // and CURRENT_USER.
    c.refused(
        "master",
        "CREATE ROLE z ROLE atrest_replication",
        "may not grant a role to \"atrest_replication\"",
    );
    c.refused(
        "master",
        "ALTER GROUP master ADD USER atrest_replication",
        "may not grant a role to \"atrest_replication\"",
    );
    c.refused(
        "master",
        "COMMENT ON ROLE atrest_replication IS 'mine'",
        "may not comment on role \"atrest_replication\"",
    );
    c.refused(
        "master",
        "GRANT pg_write_server_files TO CURRENT_USER",
        "may not grant \"pg_write_server_files\"",
    );
    c.refused(
        "master",
        "DO $$BEGIN EXECUTE 'GRANT pg_execute_server_program TO master'; END$$",
        "may not grant \"pg_execute_server_program\"",
    );
    assert_eq!(c.ok("atrest_admin", MEMBERS), "0");
    assert_eq!(
        c.ok(
            "atrest_admin",
            "SELECT rolname FROM pg_roles WHERE rolname ~ '^(x|y|z|atrest_.*)$' ORDER BY 1"
        ),
        "atrest_admin\natrest_replication"
    );

    // What a master user is for still works.
    for sql in [
        "CREATE ROLE app LOGIN PASSWORD 'x'",
        "GRANT pg_monitor TO app",
        "GRANT pg_signal_backend TO app",
        "ALTER ROLE app CONNECTION LIMIT 5",
        "COMMENT ON ROLE app IS 'the application'",
        "ALTER ROLE app SET work_mem = '1MB'",
        "REVOKE pg_monitor FROM app",
        "DROP ROLE app",
        "CREATE DATABASE d2",
    ] {
        c.ok("master", sql);
    }

    // Superusers are not restricted.
    for sql in [
        "GRANT pg_read_server_files TO atrest_admin",
        "ALTER ROLE atrest_replication CONNECTION LIMIT 2",
        "ALTER SYSTEM SET work_mem = '2MB'",
    ] {
        c.ok("atrest_admin", sql);
    }

    // A role that has the privileges of one of them is refused too, and
    // the check after each role statement catches such a member whoever
    // made it (here a superuser): the master's role statements fail until
    // it is gone.
    c.ok(
        "atrest_admin",
        "CREATE ROLE legacy; GRANT pg_read_server_files TO legacy",
    );
    c.refused(
        "master",
        "GRANT legacy TO master",
        "role \"master\" may not grant \"legacy\": it has the privileges of \"pg_read_server_files\", which reach the server's files and programs",
    );
    c.refused(
        "master",
        "CREATE ROLE w",
        "role \"master\" may not leave role \"legacy\" a member of \"pg_read_server_files\": it reaches the server's files and programs",
    );
    c.ok("atrest_admin", "DROP ROLE legacy");
    c.ok("master", "CREATE ROLE w");
    for role in SERVER_FILES {
        c.refused("master", &format!("GRANT {role} TO w"), "may not grant");
    }
    assert_eq!(c.ok("atrest_admin", MEMBERS), "0");

    // No WARNING (a leaked cache reference would be one), no crash.
    let log = std::fs::read_to_string(c.log()).unwrap();
    assert!(
        !log.contains("WARNING:") && !log.contains("terminated by signal"),
        "{log}"
    );

    eprintln!(
        "guard for PostgreSQL {major} verified in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
