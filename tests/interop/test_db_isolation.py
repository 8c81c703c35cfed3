"""Database instances cannot reach the host or each other (issue 17).

Each attack a hostile customer tried on the release before this one is
reproduced here against the real binary and the real PostgreSQL, and must
now fail as an attack:

* The master user's COPY ... PROGRAM, ALTER SYSTEM, untrusted languages,
  server files, and CREATEROLE's way to the roles that reach them: refused
  by PostgreSQL (and atrest's guard). The master still does what a managed
  service's master does.
* A symbolic link planted, as the instance's OS user, at every path atrest
  (root) writes, reads or removes in the instance's trees: after restart,
  backup, restore, replica creation and switchover, every link's target is
  unchanged, and its owner too.
* Two instances of two accounts: the first's OS user cannot open, list or
  connect to anything of the second's (files, socket, token, agent), nor
  signal its processes.
* An instance's disk through REST, the CLI and NBD: absent from the lists,
  every operation refused with a typed error naming the instance; the
  instance still starts and its data is intact.
* Parameters by allow-list: a refused one names itself, nothing changes;
  after every allowed change the server listens on 127.0.0.1 only.
* An instance created by the previous release (the binary of the last
  release, built by scripts/test.sh into ATREST_PREV_BIN), attacked as the
  report describes, still starts under this release with its master
  demoted, its data and its customer's password intact, and the attack's
  target untouched.

Capabilities: R1, R5, D3, K7.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

from conftest import (
    DB_PASSWORD,
    atrest_run,
    create_db,
    db_cmd,
    db_json,
    free_port,
    new_account,
    psql,
    rest_call,
    sql_value,
    subprocess_env,
    write_credentials,
)

ACCOUNT_B = "222233334444"


# -- helpers ------------------------------------------------------------------


def run_dir(server, instance_id: str) -> Path:
    return server.run_base / "db" / instance_id


def os_user(server, instance_id: str) -> tuple[int, int]:
    """(uid, gid) of the instance's own OS user (its socket directory's)."""
    st = (run_dir(server, instance_id) / "sock").stat()
    return st.st_uid, st.st_gid


@pytest.fixture
def shared_dir():
    """A directory under /tmp that every user may enter (pytest's own temp
    dirs are root's alone), removed afterwards."""
    import shutil
    import tempfile
    d = Path(tempfile.mkdtemp(prefix="atrest-isolation-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def as_user(uid: int, gid: int, *cmd: str, check: bool = False) -> subprocess.CompletedProcess:
    """`cmd` as uid:gid, with no supplementary groups (what the instance's
    own processes, or code the customer got to run there, could do)."""
    return subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--", *cmd],
        capture_output=True, text=True, timeout=60, check=check, env=subprocess_env(),
    )


def master_psql(port: int, sql: str, db: str = "postgres") -> subprocess.CompletedProcess:
    return psql(port, sql, dbname=db, check=False)


def refused(port: int, sql: str, *why: str) -> None:
    """`sql` fails for the master, saying one of `why`."""
    p = master_psql(port, sql)
    assert p.returncode != 0, f"{sql!r} was allowed: {p.stdout}"
    assert any(w in p.stderr for w in why), (sql, p.stderr)


def allowed(port: int, sql: str, db: str = "postgres") -> str:
    p = master_psql(port, sql, db)
    assert p.returncode == 0, (sql, p.stderr)
    return p.stdout.strip()


# -- 1. the master -----------------------------------------------------------


def test_the_master_is_powerful_inside_the_database_and_powerless_outside(server):
    v = create_db(server, "inside", "--service-key", "--size", "256M")
    port = v["port"]
    attrs = allowed(port, "SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls "
                          "FROM pg_roles WHERE rolname = current_user")
    assert attrs == "f|t|t|f|f", attrs
    # Nothing that reaches the server's files or processes.
    refused(port, "COPY (SELECT 1) TO PROGRAM 'id'", "pg_execute_server_program")
    refused(port, "CREATE TEMP TABLE x (l text); COPY x FROM PROGRAM 'id'", "pg_execute_server_program")
    refused(port, "COPY (SELECT 1) TO '/tmp/atrest-isolation-probe'", "pg_write_server_files")
    refused(port, "SELECT pg_read_file('/etc/passwd')", "permission denied")
    refused(port, "SELECT pg_ls_dir('.')", "permission denied")
    refused(port, "SELECT lo_import('/etc/passwd')", "permission denied")
    refused(port, "ALTER SYSTEM SET listen_addresses = '*'", "permission denied", "may not use ALTER SYSTEM")
    refused(port, "CREATE EXTENSION adminpack", "permission denied")
    refused(port, "CREATE EXTENSION file_fdw", "permission denied")
    refused(port, "CREATE FUNCTION sys(int) RETURNS int AS '/lib/x86_64-linux-gnu/libc.so.6', 'system' "
                  "LANGUAGE c", "permission denied")
    # CREATEROLE cannot reach them either (PostgreSQL 15 would let it: the guard).
    for sql in ("GRANT pg_execute_server_program TO current_user",
                "GRANT pg_read_server_files TO current_user",
                "GRANT pg_write_server_files TO current_user",
                "CREATE ROLE sneaky IN ROLE pg_execute_server_program",
                "ALTER GROUP pg_read_server_files ADD USER postgres"):
        p = master_psql(port, sql)
        assert p.returncode != 0, sql
    # atrest's own roles and database are out of reach.
    for sql in ("DROP ROLE atrest_replication", "ALTER ROLE atrest_replication PASSWORD 'x12345678'",
                "CREATE ROLE atrest_evil", "GRANT atrest_replication TO postgres",
                "ALTER ROLE atrest_admin NOSUPERUSER", "GRANT atrest_admin TO postgres"):
        assert master_psql(port, sql).returncode != 0, sql
    assert master_psql(port, "SELECT 1", db="atrest").returncode != 0
    nobody = psql(port, "SELECT 1", user="atrest_admin", check=False)
    assert nobody.returncode != 0 and "rejects connection" in nobody.stderr, nobody.stderr
    assert allowed(port, "SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member "
                         "WHERE m.roleid IN ('pg_execute_server_program'::regrole, "
                         "'pg_read_server_files'::regrole, 'pg_write_server_files'::regrole) "
                         "AND NOT r.rolsuper") == "0"

    # What a managed service's master does.
    allowed(port, "CREATE ROLE app LOGIN PASSWORD 'app-pass-1'")
    allowed(port, "GRANT pg_monitor, pg_signal_backend TO app")
    allowed(port, "ALTER ROLE app CONNECTION LIMIT 5")
    allowed(port, "CREATE DATABASE appdb")
    allowed(port, "GRANT CONNECT ON DATABASE appdb TO app")
    allowed(port, "CREATE EXTENSION pgcrypto")
    allowed(port, "CREATE TABLE t AS SELECT gen_random_uuid() AS u FROM generate_series(1, 10)")
    allowed(port, "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS 'BEGIN RETURN 1; END'")
    assert allowed(port, "SELECT f() + count(*) FROM t") == "11"
    assert int(allowed(port, "SELECT count(*) FROM pg_stat_activity")) >= 1
    allowed(port, "SELECT pg_walfile_name(pg_switch_wal())")
    assert psql(port, "SELECT current_user", user="app", password="app-pass-1").stdout.strip() == "app"
    allowed(port, "DROP DATABASE appdb")
    allowed(port, "DROP ROLE app")


# -- 2. root never follows a link ----------------------------------------------


# Every name atrest (root) writes, reads or removes where the instance's
# user can write: the data directory, the agent directory, the socket
# directory.
PLANTED = ("mnt/pgdata/postgresql.auto.conf", "mnt/pgdata/standby.signal",
           "mnt/pgdata/recovery.signal", "mnt/pgdata/atrest.conf", "mnt/agent/agent.token",
           "mnt/agent/postgres.log")


class Victims:
    """Root-owned files the links point at; each must stay as it was."""

    def __init__(self, top: Path):
        self.top = top
        top.mkdir(mode=0o755, exist_ok=True)
        self.files: dict[Path, tuple[bytes, int, int, int]] = {}

    def plant(self, server, instance_id: str) -> list[str]:
        uid, gid = os_user(server, instance_id)
        base = run_dir(server, instance_id)
        names = list(PLANTED)
        sock = base / "sock"
        names += [f"sock/{p.name}" for p in sock.iterdir() if p.name.endswith(".lock")]
        planted = []
        for rel in names:
            victim = self.top / f"{instance_id}-{rel.replace('/', '_')}"
            if victim not in self.files:
                victim.write_bytes(b"precious " + rel.encode())
                victim.chmod(0o644)
                st = victim.stat()
                self.files[victim] = (victim.read_bytes(), st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))
            target = base / rel
            # As the instance's user: replace the name with a link.
            p = as_user(uid, gid, "ln", "-sfn", str(victim), str(target))
            assert p.returncode == 0, (rel, p.stderr)
            planted.append(rel)
        return planted

    def check(self, step: str) -> None:
        for victim, (data, uid, gid, mode) in self.files.items():
            st = victim.lstat()
            assert stat.S_ISREG(st.st_mode), (step, victim)
            assert victim.read_bytes() == data, f"{step}: {victim.name} was written through a link"
            assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (uid, gid, mode), \
                f"{step}: {victim.name} changed hands or mode"


def test_root_never_follows_a_link_the_instance_planted(server, tmp_path):
    victims = Victims(tmp_path / "victims")
    kms = server.client()
    key = kms.create_key()["KeyMetadata"]["Arn"]
    p = create_db(server, "linked", "--key", key, "--size", "512M")
    port = p["port"]
    psql(port, "CREATE TABLE t (x int); INSERT INTO t SELECT generate_series(1, 100)")
    r = db_json(server, "replica", "create", "linked", "--name", "linked-standby")

    # The instance's user cannot write where root keeps its files.
    uid, gid = os_user(server, p["id"])
    base = run_dir(server, p["id"])
    for rel in ("mnt/atrest/planted", "conf/planted", "mnt/planted", "planted"):
        probe = as_user(uid, gid, "touch", str(base / rel))
        assert probe.returncode != 0 and "Permission denied" in probe.stderr, (rel, probe.stderr)
    mv = as_user(uid, gid, "mv", str(base / "mnt/pgdata"), str(base / "mnt/pgdata2"))
    assert mv.returncode != 0, "the data directory was moved by the instance's user"

    steps = [
        ("restart", lambda: db_json(server, "restart", "linked")),
        ("backup", lambda: db_json(server, "backup", "linked")),
        ("restore", lambda: db_json(server, "restore", backup["id"], "--as", "linked-copy")),
        ("replica creation", lambda: db_json(server, "replica", "create", "linked", "--name", "linked-2")),
        ("switchover", lambda: db_json(server, "switchover", "linked-standby")),
        ("switchover back", lambda: db_json(server, "switchover", "linked")),
        ("restart of a standby", lambda: db_json(server, "restart", "linked-standby")),
    ]
    backup = None
    for step, op in steps:
        for inst in (p["id"], r["id"]):
            victims.plant(server, inst)
        out = op()
        if step == "backup":
            backup = out
        victims.check(step)
        # The data is there whichever member is the primary now.
        assert sql_value(port, "SELECT count(*) FROM t") == "100", step
    # Everything still serves, as the records say.
    for name in ("linked", "linked-standby", "linked-copy", "linked-2"):
        assert db_json(server, "show", name)["state"] == "running", name
    assert db_json(server, "show", "linked")["role"] == "primary"
    assert sql_value(db_json(server, "show", "linked-copy")["port"], "SELECT count(*) FROM t") == "100"
    victims.check("end")


# -- 3. two tenants --------------------------------------------------------------


def test_one_instance_cannot_reach_another(server, tmp_path, shared_dir):
    creds_b = new_account(server, ACCOUNT_B)
    creds_file = write_credentials(tmp_path / "b.credentials", *creds_b)
    a = create_db(server, "tenant-a", "--service-key", "--size", "256M")
    pw = tmp_path / "b.pw"
    pw.write_text(DB_PASSWORD + "\n")
    b = json.loads(atrest_run("db", "--endpoint", server.url, "--region", server.regions[0],
                              "--credentials-file", str(creds_file), "create", "tenant-b",
                              "--service-key", "--size", "256M", "--password-file", str(pw),
                              timeout=600).stdout)
    assert b["account"] == ACCOUNT_B and b["account"] != a["account"]
    ua, ga = os_user(server, a["id"])
    ub, gb = os_user(server, b["id"])
    assert ua != ub and ga != gb and 0 not in (ua, ub)
    bdir = run_dir(server, b["id"])
    # Nothing of b's can be listed, opened or read by a's user.
    for path in (bdir, bdir / "mnt", bdir / "mnt/pgdata", bdir / "mnt/agent", bdir / "sock", bdir / "conf"):
        ls = as_user(ua, ga, "ls", str(path))
        assert ls.returncode != 0 and "Permission denied" in ls.stderr, (path, ls.stdout, ls.stderr)
    for path in (bdir / "mnt/agent/agent.token", bdir / "mnt/pgdata/PG_VERSION", bdir / "conf/postgresql.conf",
                 bdir / "mnt/agent/postgres.log"):
        cat = as_user(ua, ga, "cat", str(path))
        assert cat.returncode != 0 and "Permission denied" in cat.stderr, (path, cat.stderr)
    # b's socket: no connection.
    conn = as_user(ua, ga, "psql", "-h", str(bdir / "sock"), "-p", str(b["port"]), "-U", "postgres",
                   "-d", "postgres", "-c", "SELECT 1")
    assert conn.returncode != 0, conn.stdout
    # b's processes: no signal, no environment.
    bpid = int((bdir / "postmaster.pid").read_text().split()[0])
    kill = as_user(ua, ga, "kill", "-0", str(bpid))
    assert kill.returncode != 0, "a's user may signal b's postmaster"
    env = as_user(ua, ga, "cat", f"/proc/{bpid}/environ")
    assert env.returncode != 0
    # The WAL agent: a's user asking for b's instance is refused before
    # the body (the token a's user can read is a's, not b's).
    token_a = (run_dir(server, a["id"]) / "mnt/agent/agent.token")
    wal = shared_dir / "wal"
    wal.write_bytes(b"\0" * 8192)
    wal.chmod(0o644)
    agent = str(server.run_base / "db" / "agent.sock")
    from conftest import ATREST_BIN
    push = as_user(ua, ga, str(ATREST_BIN), "db-agent", "wal-push", "--socket", agent,
                   "--instance", b["id"], "--token-file", str(token_a), str(wal), "000000010000000000000077")
    assert push.returncode != 0 and "may not use the WAL agent" in push.stderr, push.stderr
    fetch = as_user(ua, ga, str(ATREST_BIN), "db-agent", "wal-fetch", "--socket", agent,
                    "--instance", b["id"], "--token-file", str(token_a), "000000010000000000000001",
                    str(shared_dir / "out"))
    assert fetch.returncode != 0 and "may not use the WAL agent" in fetch.stderr, fetch.stderr
    # Both still serve.
    assert sql_value(a["port"], "SELECT 1") == "1" and sql_value(b["port"], "SELECT 1") == "1"


def test_the_wal_agent_refuses_a_bad_token_before_reading_the_body(server, tmp_path):
    """A client that claims a 1 GiB body with a bogus token is answered at
    once: the server does not wait for (or keep) a byte of it."""
    v = create_db(server, "agent", "--service-key", "--size", "256M")
    uid, gid = os_user(server, v["id"])
    sock = str(server.run_base / "db" / "agent.sock")
    req = json.dumps({"op": "wal-push", "instance": v["id"], "token": "00" * 32,
                      "name": "000000010000000000000042", "size": 1 << 30}) + "\n"
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(sock)
    s.sendall(req.encode())
    f = s.makefile("rb")
    answer = f.readline()
    # The server closed the connection after its answer, nothing read.
    assert f.read() == b""
    f.close()
    s.close()
    a = json.loads(answer)
    assert a["ok"] is False and "may not use the WAL agent" in a["error"], a


# -- 4. the instance's disk ------------------------------------------------------


def test_an_instance_disk_is_the_database_services_own(make_server, tmp_path):
    pytest.importorskip("requests")
    server = make_server().start()
    creds = new_account(server, ACCOUNT_B)
    server.stop()
    nbd_port = free_port()
    server.start("--nbd-listen", f"127.0.0.1:{nbd_port}",
                 "--nbd-plaintext-principal", f"arn:aws:iam::{ACCOUNT_B}:root")
    creds_file = write_credentials(tmp_path / "b.credentials", *creds)

    def cli(*args, check=True):
        return atrest_run(*args[:1], "--endpoint", server.url, "--region", server.regions[0],
                          "--credentials-file", str(creds_file), *args[1:], check=check, timeout=600)

    pw = tmp_path / "pw"
    pw.write_text(DB_PASSWORD + "\n")
    v = json.loads(cli("db", "create", "owned", "--service-key", "--size", "256M",
                       "--password-file", str(pw)).stdout)
    disk = v["disk"]
    psql(v["port"], "CREATE TABLE t AS SELECT 'kept' AS x")
    # Not listed anywhere a customer looks.
    assert disk not in {d["id"] for d in json.loads(cli("disk", "list").stdout)["disks"]}
    listed = subprocess.run(["nbdinfo", "--list", "--json", f"nbd://127.0.0.1:{nbd_port}"],
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and disk not in listed.stdout, listed.stdout
    db_json_b = lambda *a: json.loads(cli("db", *a).stdout)  # noqa: E731
    for running in (True, False):
        if not running:
            db_json_b("stop", "owned")
        # REST: every operation refused, naming the instance.
        for method, path, body in (("GET", f"/v1/disks/{disk}", None),
                                   ("DELETE", f"/v1/disks/{disk}", None),
                                   ("POST", "/v1/snapshots", {"disk_id": disk}),
                                   ("POST", f"/v1/disks/{disk}/resize", {"size": 1 << 30}),
                                   ("POST", f"/v1/disks/{disk}/attach-local", {})):
            r = rest_call(server, method, path, body, creds=creds)
            assert r.status_code == 409, (method, path, r.status_code, r.text)
            j = r.json()
            assert j["code"] == "ManagedResourceException" and "owned" in j["message"] and v["id"] in j["message"], j
        # The CLI says the same.
        for args in (("disk", "show", disk), ("disk", "delete", disk), ("disk", "snapshot", disk),
                     ("disk", "resize", disk, "--size", "1G")):
            p = cli(*args, check=False)
            assert p.returncode != 0 and "ManagedResourceException" in p.stderr, (args, p.stderr)
        # NBD: the export cannot be opened.
        q = subprocess.run(["qemu-io", "-f", "raw", "-c", "read 0 4096",
                            f"nbd://127.0.0.1:{nbd_port}/{disk}"], capture_output=True, text=True, timeout=60)
        assert q.returncode != 0 or "read 4096/4096" not in q.stdout, q.stdout
        info = subprocess.run(["nbdinfo", f"nbd://127.0.0.1:{nbd_port}/{disk}"],
                              capture_output=True, text=True, timeout=60)
        assert info.returncode != 0, info.stdout
    # Nothing was changed behind the service's back: it starts, data intact.
    assert db_json_b("start", "owned")["state"] == "running"
    assert sql_value(v["port"], "SELECT x FROM t") == "kept"


# -- 5. parameters -------------------------------------------------------------


def listening(port: int) -> set[str]:
    """The local addresses with a socket listening on `port` (IPv4 and IPv6)."""
    out = set()
    for f, fam in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        for line in Path(f).read_text().splitlines()[1:]:
            cols = line.split()
            local, st = cols[1], cols[3]
            addr, p = local.split(":")
            if int(p, 16) != port or st != "0A":
                continue
            raw = bytes.fromhex(addr)
            if fam == socket.AF_INET:
                out.add(socket.inet_ntop(fam, raw[::-1]))
            else:
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                out.add(socket.inet_ntop(fam, words))
    return out


def test_parameters_are_allow_listed_and_the_server_stays_on_loopback(server):
    v = create_db(server, "params", "--service-key", "--size", "256M")
    port = v["port"]
    before = db_json(server, "show", "params")
    for name in ("listen_addresses", "port", "archive_command", "archive_cleanup_command",
                 "restore_command", "ssl", "ssl_cert_file", "primary_conninfo", "dynamic_library_path",
                 "session_preload_libraries", "local_preload_libraries", "log_directory",
                 "data_directory", "hba_file", "unix_socket_directories", "fsync", "wal_level"):
        r = rest_call(server, "POST", f"/v1/instances/params/parameters", {"parameters": {name: "x"}})
        assert r.status_code == 400, (name, r.text)
        assert r.json()["code"] == "InvalidParameterException" and name in r.json()["message"], r.json()
        p = db_cmd(server, "set", "params", f"{name}=x", check=False)
        assert p.returncode != 0 and name in p.stderr, p.stderr
    bad = db_cmd(server, "set", "params", "shared_preload_libraries=pg_stat_statements,/tmp/evil", check=False)
    assert bad.returncode != 0 and "shared_preload_libraries" in bad.stderr
    # Nothing changed: same server process, same settings.
    assert db_json(server, "show", "params")["state"] == before["state"] == "running"
    assert listening(port) == {"127.0.0.1"}
    # ALTER SYSTEM is refused to the master.
    refused(port, "ALTER SYSTEM SET listen_addresses = '*'", "permission denied", "may not use ALTER SYSTEM")
    # Allowed changes, each followed by a restart: only loopback.
    for params in (["work_mem=16MB", "max_connections=40", "log_min_duration_statement=250ms"],
                   ["shared_preload_libraries=pg_stat_statements", "pg_stat_statements.max=2000",
                    "random_page_cost=1.1", "statement_timeout=30s"],
                   ["autovacuum_naptime=30s", "log_connections=on", "timezone=Europe/Paris",
                    "search_path=public"]):
        db_json(server, "set", "params", *params)
        assert listening(port) == {"127.0.0.1"}, params
        assert sql_value(port, "SHOW listen_addresses") == "127.0.0.1"
    assert sql_value(port, "SHOW work_mem") == "16MB"
    # pg_stat_statements is loaded (the master reads it once a superuser
    # made its view, which is atrest's to do: not yet offered).
    assert sql_value(port, "SHOW pg_stat_statements.max") == "2000"
    libs = sql_value(port, "SHOW shared_preload_libraries")
    assert libs.endswith("pg_stat_statements") and "atrest_guard" in libs, libs


# -- 6. an instance of the previous release ----------------------------------------


PREV_BIN = os.environ.get("ATREST_PREV_BIN")


def test_an_instance_of_the_previous_release_starts_with_its_master_demoted(make_server, shared_dir):
    """The report's own attack, on the previous release: the superuser
    master plants `atrest.conf -> victim` with COPY ... PROGRAM. This
    release starts that instance without touching the victim, demotes the
    master, and keeps the data and the customer's password."""
    if not PREV_BIN or not Path(PREV_BIN).is_file():
        pytest.fail("ATREST_PREV_BIN must name the previous release's binary (scripts/test.sh builds it)")
    victim = shared_dir / "victim"
    victim.write_text("precious\n")
    victim.chmod(0o644)
    server = make_server()
    import conftest
    saved = conftest.ATREST_BIN
    conftest.ATREST_BIN = Path(PREV_BIN)
    try:
        server.start()
        old = create_db(server, "legacy", "--service-key", "--size", "512M")
        port = old["port"]
        psql(port, "CREATE TABLE t (id int PRIMARY KEY, v text); "
                   "INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 500) g; "
                   "CREATE SCHEMA app; CREATE TABLE app.u (id serial PRIMARY KEY); "
                   "CREATE FUNCTION app.f() RETURNS int LANGUAGE sql AS 'SELECT 7'; "
                   "CREATE ROLE helper LOGIN PASSWORD 'helper-pass'; "
                   "GRANT pg_execute_server_program TO helper")
        assert sql_value(port, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user") == "t"
        pgdata = sql_value(port, "SHOW data_directory")
        # The attack works on the previous release: a restart writes
        # atrest's settings through the link, as root, and gives the target
        # to PostgreSQL's user.
        control = shared_dir / "control"
        control.write_text("precious\n")
        control.chmod(0o644)
        psql(port, f"COPY (SELECT 1) TO PROGRAM 'cat > /dev/null; ln -sfn {control} {pgdata}/atrest.conf'")
        db_json(server, "restart", "legacy")
        assert "listen_addresses" in control.read_text() and control.stat().st_uid != 0, \
            "the previous release did not follow the link: this test proves nothing"
        psql(port, f"COPY (SELECT 1) TO PROGRAM 'cat > /dev/null; ln -sfn {victim} {pgdata}/atrest.conf'")
        old_disk = old["disk"]
        server.stop(timeout=90)
    finally:
        conftest.ATREST_BIN = saved
    server.start(timeout=120)
    # The credentials the previous release left in the data dir moved out.
    assert not (server.data_dir / "admin-credentials").exists()
    assert server.credentials_file == server.data_dir.with_name(server.data_dir.name + ".admin-credentials")
    deadline = time.monotonic() + 180
    while db_json(server, "show", "legacy")["state"] != "running":
        assert time.monotonic() < deadline, db_json(server, "show", "legacy")
        time.sleep(1)
    assert victim.read_text() == "precious\n" and victim.stat().st_uid == 0
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644
    # The customer's password works; the master is no superuser; the data
    # and what the master made are intact and its own.
    assert sql_value(port, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user") == "f"
    assert sql_value(port, "SELECT count(*) FROM t") == "500"
    assert sql_value(port, "SELECT app.f()") == "7"
    psql(port, "INSERT INTO t VALUES (501, 'after'); INSERT INTO app.u DEFAULT VALUES; DROP TABLE app.u")
    assert sql_value(port, "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relname = 't'") == "postgres"
    refused(port, "COPY (SELECT 1) TO PROGRAM 'id'", "pg_execute_server_program")
    # The helper role the old superuser made a server-program member lost it.
    h = psql(port, "COPY (SELECT 1) TO PROGRAM 'id'", user="helper", password="helper-pass", check=False)
    assert h.returncode != 0 and "pg_execute_server_program" in h.stderr, h.stderr
    # Its own OS user now, and its disk is the database service's.
    uid, _ = os_user(server, old["id"])
    assert uid != 0 and Path(f"/proc/{int((run_dir(server, old['id']) / 'postmaster.pid').read_text().split()[0])}").stat().st_uid == uid
    assert old_disk not in {d["id"] for d in json.loads(atrest_run(
        "disk", "--endpoint", server.url, "--credentials-file", str(server.credentials_file),
        "list").stdout)["disks"]}
    # And it keeps working across a restart of the new release.
    db_json(server, "restart", "legacy")
    assert sql_value(port, "SELECT count(*) FROM t") == "501"
