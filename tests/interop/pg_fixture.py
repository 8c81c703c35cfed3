"""A throwaway PostgreSQL server (Debian's) for the tests of atrest's shared
metadata store (issue 22).

`PgServer().start(tmp_path)` runs Debian's `initdb` and `postgres` (the
newest /usr/lib/postgresql/<version>/bin that has both, or ATREST_PG_BINDIR)
in a fresh directory: its own data dir, listening on a free loopback port
only, its Unix socket in that directory, `trust` authentication (initdb's
`--auth=trust`: local and host 127.0.0.1/32, ::1/128) for the superuser
`postgres`. PostgreSQL refuses to run as root, so when the tests run as root
the directory is given to the `postgres` OS user and the programs run as that
user through `setpriv` (which execs: the pid we hold is the postmaster's).

* `url(dbname)`: `postgres://postgres@127.0.0.1:PORT/DBNAME`.
* `create_database(name=None)`: a fresh database (a random name if none);
  `drop_database(name)`.
* `sql(text, dbname)`: runs SQL with psql over TCP, returns its output.
* `stop(mode)`: `fast` (SIGINT) or `immediate` (SIGQUIT: no checkpoint, crash
  recovery at the next start), by pid; SIGKILL to its process group if it
  lingers. `start_again()`: the same data dir and port. `restart(mode,
  down_for)`: both, with the server down `down_for` seconds in between.
* `remove()`: stops and removes the directory. Safe to call twice.

Fixtures: `pg_server` (one server per test module, removed at the module's
end) and `pg_url` (a fresh database on it for one test; its URL). Import them
with `from pg_fixture import pg_server, pg_url`. Without PostgreSQL's
binaries the fixtures skip the test, unless ATREST_REQUIRE_POSTGRES=1 (read
at import, before conftest scrubs ATREST_* from the environment): then the
test fails.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import free_port, subprocess_env

START_TIMEOUT = 60.0
PG_USER = "postgres"  # both the OS user the server runs as and the database superuser

_REQUIRE = os.environ.get("ATREST_REQUIRE_POSTGRES", "") not in ("", "0")
_BINDIR_OVERRIDE = os.environ.get("ATREST_PG_BINDIR")


class PgError(RuntimeError):
    pass


def find_bindir(override: str | None = _BINDIR_OVERRIDE, pattern: str = "/usr/lib/postgresql/*/bin") -> Path | None:
    """The directory with `initdb` and `postgres`: `override` if given (it
    must hold both), else the newest of Debian's versioned dirs that does."""
    def ok(d: Path) -> bool:
        return all(os.access(d / b, os.X_OK) for b in ("initdb", "postgres", "pg_isready"))

    if override:
        d = Path(override)
        return d if ok(d) else None
    found = [Path(p) for p in glob.glob(pattern) if ok(Path(p))]

    def version(d: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", d.parent.name)) or (0,)

    return max(found, key=version) if found else None


class PgServer:
    """A running PostgreSQL: `port`, `root` (its directory), `pid` once started."""

    def __init__(self, bindir: Path | None = None, *, fsync: bool = True, max_connections: int = 200):
        self.bindir = bindir or find_bindir()
        if self.bindir is None:
            raise PgError("no PostgreSQL server binaries (initdb, postgres) under /usr/lib/postgresql/*/bin "
                          "(apt-get install postgresql) or in ATREST_PG_BINDIR")
        self.fsync = fsync
        self.max_connections = max_connections
        self.root: Path | None = None
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self._as_root = os.geteuid() == 0

    # -- paths and addresses ---------------------------------------------------
    @property
    def data_dir(self) -> Path:
        assert self.root is not None, "not started"
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        assert self.root is not None, "not started"
        return self.root / "postgres.log"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def url(self, dbname: str = "postgres") -> str:
        assert self.port is not None, "not started"
        return f"postgres://{PG_USER}@127.0.0.1:{self.port}/{dbname}"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- lifecycle -------------------------------------------------------------
    def start(self, tmp_path: Path | str | None = None) -> "PgServer":
        """initdb in a new dir under `tmp_path` (default: the system temp dir)
        and start the server on a free loopback port; up to three tries if
        the port is taken before the server binds it."""
        assert self.root is None, "already started"
        base = Path(tmp_path) if tmp_path is not None else Path(tempfile.gettempdir())
        self.root = Path(tempfile.mkdtemp(prefix="atrest-pg-", dir=base))
        # The postgres user must be able to reach its dir: the parents of a
        # pytest tmp_path are 0700 root. Put ours where it can, beside the
        # system temp dir, when the given base is not traversable.
        if self._as_root and not _traversable_by(self.root, PG_USER):
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = Path(tempfile.mkdtemp(prefix="atrest-pg-", dir=tempfile.gettempdir()))
        self.root.chmod(0o700)
        self._chown(self.root)
        try:
            self._initdb()
            last: Exception | None = None
            for _ in range(3):
                self.port = free_port()
                self._write_port()
                try:
                    self._spawn_and_wait()
                    return self
                except PgError as e:
                    last = e
                    if "could not bind" not in self.log() and "Address already in use" not in self.log():
                        raise
            raise last  # type: ignore[misc]
        except BaseException:
            self.remove()
            raise

    def start_again(self) -> "PgServer":
        """Starts the stopped server on its data dir and port."""
        assert self.root is not None and self.port is not None, "never started"
        assert not self.running(), "already running"
        self._spawn_and_wait()
        return self

    def stop(self, mode: str = "fast", timeout: float = 30) -> int | None:
        """Stops the server by its pid: `fast` (SIGINT: clients disconnected,
        a checkpoint), `immediate` (SIGQUIT: no checkpoint; crash recovery at
        the next start) or `kill` (SIGKILL to its process group). Returns
        the postmaster's exit status."""
        proc = self.proc
        if proc is None:
            return None
        sig = {"fast": signal.SIGINT, "smart": signal.SIGTERM, "immediate": signal.SIGQUIT,
               "kill": signal.SIGKILL}[mode]
        if proc.poll() is None:
            if mode == "kill":
                self._killpg(proc.pid)
            else:
                proc.send_signal(sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._killpg(proc.pid)
                proc.wait(timeout=timeout)
        # The backends exit when they see their postmaster gone; wait for
        # them, so that a restart finds the port and the shared memory free.
        self._wait_group_gone(proc.pid, timeout)
        return proc.returncode

    def restart(self, mode: str = "fast", down_for: float = 0.0) -> None:
        """Stops the server (see `stop`), waits `down_for` seconds, starts it
        again on the same port and data dir."""
        self.stop(mode)
        if down_for > 0:
            time.sleep(down_for)
        self.start_again()

    def remove(self) -> None:
        """Stops the server (fast, then by force) and removes its directory."""
        try:
            if self.running():
                self.stop("fast", timeout=15)
        finally:
            if self.proc is not None:
                self._killpg(self.proc.pid)
                self._wait_group_gone(self.proc.pid, 5)
            self.proc = None
            if self.root is not None:
                shutil.rmtree(self.root, ignore_errors=True)
                self.root = None

    # -- SQL -----------------------------------------------------------------
    def sql(self, text: str, dbname: str = "postgres", check: bool = True, timeout: float = 60) -> str:
        """Runs `text` with psql over TCP as the superuser (unaligned,
        tuples only); its output, stripped. Raises PgError on failure."""
        assert self.port is not None, "not started"
        psql = self.bindir / "psql"
        if not psql.exists():
            psql = Path(shutil.which("psql") or "psql")
        p = subprocess.run(
            [str(psql), "-h", "127.0.0.1", "-p", str(self.port), "-U", PG_USER, "-d", dbname,
             "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-c", text],
            env=subprocess_env(PGCONNECT_TIMEOUT="10"), capture_output=True, text=True, timeout=timeout,
        )
        if check and p.returncode != 0:
            raise PgError(f"psql failed ({p.returncode}): {p.stderr.strip()}")
        return p.stdout.strip()

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; returns its name."""
        name = name or f"atrest_{secrets.token_hex(6)}"
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
            raise ValueError(f"database name {name!r}: lower-case letters, digits and _ only")
        self.sql(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        """Drops `name`, disconnecting its clients (WITH (FORCE))."""
        self.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except (OSError, AssertionError):
            return ""

    # -- internals -------------------------------------------------------------
    def _cmd(self, *args: str) -> list[str]:
        """`args`, run as the postgres OS user when we are root."""
        if not self._as_root:
            return list(args)
        return ["setpriv", f"--reuid={PG_USER}", f"--regid={PG_USER}", "--init-groups", "--", *args]

    def _env(self) -> dict[str, str]:
        env = subprocess_env(LC_ALL="C.UTF-8", LANG="C.UTF-8")
        if self._as_root:
            env["HOME"] = str(self.root)
            env["USER"] = env["LOGNAME"] = PG_USER
        for k in [k for k in env if k.startswith("PG")]:
            del env[k]
        return env

    def _chown(self, path: Path) -> None:
        if self._as_root:
            pw = pwd.getpwnam(PG_USER)
            os.chown(path, pw.pw_uid, pw.pw_gid)

    def _initdb(self) -> None:
        p = subprocess.run(
            self._cmd(str(self.bindir / "initdb"), "-D", str(self.data_dir), "-U", PG_USER,
                      "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"),
            env=self._env(), capture_output=True, text=True, timeout=120, cwd=self.root,
        )
        if p.returncode != 0:
            raise PgError(f"initdb failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
        conf = self.data_dir / "postgresql.conf"
        with conf.open("a") as f:
            f.write(
                "\n# atrest tests\n"
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.root}'\n"
                f"max_connections = {self.max_connections}\n"
                f"fsync = {'on' if self.fsync else 'off'}\n"
                "shared_buffers = 32MB\n"
                "logging_collector = off\n"
                "log_min_messages = warning\n"
                "include_if_exists = 'port.conf'\n"
            )

    def _write_port(self) -> None:
        path = self.data_dir / "port.conf"
        path.write_text(f"port = {self.port}\n")
        self._chown(path)

    def _spawn_and_wait(self) -> None:
        log = open(self.log_path, "ab")
        if self._as_root:
            self._chown(self.log_path)
        try:
            self.proc = subprocess.Popen(
                self._cmd(str(self.bindir / "postgres"), "-D", str(self.data_dir)),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=self._env(), cwd=self.root, start_new_session=True,
            )
        finally:
            log.close()
        self.starts += 1
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise PgError(f"postgres exited ({self.proc.returncode}):\n{self._log_tail()}")
            p = subprocess.run(
                [str(self.bindir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port), "-U", PG_USER,
                 "-d", "postgres", "-t", "2"],
                env=subprocess_env(), capture_output=True, timeout=10,
            )
            if p.returncode == 0:
                return
            if time.monotonic() > deadline:
                self.stop("kill")
                raise PgError(f"postgres not ready on port {self.port} after {START_TIMEOUT}s:\n{self._log_tail()}")
            time.sleep(0.05)

    def _log_tail(self) -> str:
        return "\n".join(self.log().splitlines()[-30:])

    @staticmethod
    def _killpg(pid: int) -> None:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    @staticmethod
    def _wait_group_gone(pgid: int, timeout: float) -> None:
        """Waits until no process of group `pgid` (the postmaster's session)
        is left; SIGKILLs the group if some linger past `timeout`."""
        deadline = time.monotonic() + timeout
        while _group_members(pgid):
            if time.monotonic() > deadline:
                PgServer._killpg(pgid)
                deadline = time.monotonic() + 5
            time.sleep(0.02)


def _group_members(pgid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        # fields[0] is the state, [2] the process group.
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            out.append(int(d.name))
    return out


def _traversable_by(path: Path, user: str) -> bool:
    """Whether `user` may reach `path` (x on every parent directory)."""
    pw = pwd.getpwnam(user)
    p = path.resolve().parent
    while True:
        st = p.stat()
        if st.st_uid == pw.pw_uid:
            ok = st.st_mode & 0o100
        elif st.st_gid == pw.pw_gid:
            ok = st.st_mode & 0o010
        else:
            ok = st.st_mode & 0o001
        if not ok:
            return False
        if p.parent == p:
            return True
        p = p.parent


def require_postgres() -> Path:
    """The binaries' dir; skips (or, with ATREST_REQUIRE_POSTGRES=1, fails)
    the calling test without them."""
    bindir = find_bindir()
    if bindir is None:
        if _REQUIRE:
            pytest.fail("ATREST_REQUIRE_POSTGRES is set but Debian's PostgreSQL server is not installed "
                        "(apt-get install postgresql: initdb and postgres under /usr/lib/postgresql/*/bin)")
        pytest.skip("PostgreSQL server binaries not installed (/usr/lib/postgresql/*/bin)")
    return bindir


@pytest.fixture(scope="module")
def pg_server(tmp_path_factory):
    """A started PostgreSQL for the test module; stopped by pid and removed
    after its last test."""
    bindir = require_postgres()
    server = PgServer(bindir)
    try:
        server.start(tmp_path_factory.mktemp("pg"))
        yield server
    finally:
        server.remove()


@pytest.fixture
def pg_url(pg_server):
    """A fresh database on the module's PostgreSQL, for one test: its URL.
    Dropped after the test (a test that restarted the server leaves it
    running: the drop waits for it)."""
    if not pg_server.running():
        pg_server.start_again()
    name = pg_server.create_database()
    try:
        yield pg_server.url(name)
    finally:
        if not pg_server.running():
            pg_server.start_again()
        try:
            pg_server.drop_database(name)
        except PgError as e:
            print(f"teardown: could not drop database {name}: {e}")
