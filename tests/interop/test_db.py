"""Encrypted PostgreSQL instances through the real server, the real
PostgreSQL 15 server, psql, pgbench and psycopg (issue 6).

* Create under a customer key, load, stop, start, restart, restart the
  atrest server: the data is there; `show` reports the key and the disk;
  a marker row is in plaintext in no file under the data dir.
* SIGKILL of the postmaster, and separately of the atrest server, during a
  pgbench load: every transaction the client saw committed (a ledger kept
  client-side) is there after the restart (the service restarts a dead
  postmaster by itself, and its instances with the server).
* A disabled key: restart, start and replica creation are refused, each
  naming the key; enabling it unlocks. With the close policy a running
  instance stops within the check period.
* Replicas: a replica receives writes, reports the primary's key, is read
  only, and survives a switchover both ways.
* Classes: a tde instance's encryption cannot be turned off; a disk
  instance's can be enabled, its key set, and disabled, with the data kept.
* Bad input: unknown instance, bad names and members, a port in use, a
  missing PostgreSQL: clear errors and nothing half-created.

Capabilities: R1, R2, R4, R5, R6, R8 (R3 in test_db_backup.py).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import psycopg
import pytest

from conftest import (
    DB_PASSWORD,
    atrest_client_cmd,
    audit_log_path,
    all_disks,
    audit_records,
    create_db,
    db_cmd,
    db_json,
    psql,
    rest_call,
    scan_for,
    sql_value,
    subprocess_env,
)


def postmaster_pid(instance_id: str) -> int:
    """The pid of the postmaster serving `instance_id` (by its data dir,
    which names the instance)."""
    needle = f"/{instance_id}/mnt/pgdata"
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"postgres") and any(needle.encode() in a for a in cmd):
            stat = (d / "stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] != "Z":
                return int(d.name)
    raise AssertionError(f"no postmaster for {instance_id}")


def wait_state(server, name: str, state: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    v = {}
    while time.monotonic() < deadline:
        p = db_cmd(server, "show", name, check=False)
        if p.returncode == 0:
            v = json.loads(p.stdout)
            if v["state"] == state:
                return v
        time.sleep(0.5)
    raise AssertionError(f"{name} not {state} after {timeout}s: {v}")


def wait_sql(port: int, sql: str, want: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    got = None
    while time.monotonic() < deadline:
        p = psql(port, sql, check=False)
        got = p.stdout.strip()
        if p.returncode == 0 and got == want:
            return
        time.sleep(0.3)
    raise AssertionError(f"{sql!r} gave {got!r}, not {want!r}")


def disks(server) -> list[dict]:
    """Every disk of the admin's account, instance disks included (the
    customer's own list hides those: asserted where it matters)."""
    return all_disks(server)


def customer_disks(server) -> list[dict]:
    return json.loads(atrest_client_cmd(server, "disk", "list").stdout)["disks"]


def test_create_load_restart_show_the_key_and_no_plaintext_at_rest(server):
    kms = server.client()
    key = kms.create_key(Description="db key")["KeyMetadata"]["Arn"]
    v = create_db(server, "orders", "--key", key, "--size", "1G")
    assert v["state"] == "running" and v["encrypted"] is True and v["key_arn"] == key, v
    assert v["class"] == "tde" and v["role"] == "primary" and v["host"] == "127.0.0.1", v
    assert "master_password" not in v, "a given password is never echoed"
    port = v["port"]
    marker = "MARKER-" + os.urandom(8).hex()
    psql(port, f"CREATE TABLE t (id serial PRIMARY KEY, v text); "
               f"INSERT INTO t (v) SELECT '{marker}' FROM generate_series(1, 2000);")
    # PostgreSQL's data directory, WAL and temporary files are on the disk.
    datadir = sql_value(port, "SHOW data_directory")
    assert datadir.endswith(f"/{v['id']}/mnt/pgdata"), datadir
    assert sql_value(port, "SELECT count(*) FROM t") == "2000"
    # The service's grant on the customer's key, for the disk.
    assert any(g["GranteePrincipal"] == "disk.atrest" for g in kms.list_grants(KeyId=key)["Grants"])
    assert [d["state"] for d in disks(server) if d["id"] == v["disk"]] == ["in-use"]
    assert [d["managed_for"] for d in disks(server) if d["id"] == v["disk"]] == \
        [f"database instance orders ({v['id']})"]
    assert all(d["id"] != v["disk"] for d in customer_disks(server)), "the customer sees the instance's disk"

    s = db_json(server, "stop", "orders")
    assert s["state"] == "stopped", s
    assert psql(port, "SELECT 1", check=False).returncode != 0
    assert [d["state"] for d in disks(server) if d["id"] == v["disk"]] == ["available"]
    # Stopped: no file anywhere under the data dir holds the marker.
    assert scan_for(server.data_dir, marker.encode()) == []

    assert db_json(server, "start", "orders")["state"] == "running"
    assert sql_value(port, "SELECT count(*) FROM t WHERE v = %s" % f"'{marker}'") == "2000"
    r = db_json(server, "restart", "orders")
    assert r["state"] == "running" and r["key_arn"] == key
    assert sql_value(port, "SELECT count(*) FROM t") == "2000"

    # The atrest server restarts: the instance starts with it.
    server.stop()
    server.start()
    kms = server.client()
    wait_state(server, "orders", "running")
    assert sql_value(port, "SELECT count(*) FROM t") == "2000"
    listed = db_json(server, "list")["instances"]
    assert [(i["name"], i["key_arn"], i["disk"]) for i in listed] == [("orders", key, v["disk"])]
    # Running: still nothing in plaintext under the data dir.
    assert scan_for(server.data_dir, marker.encode()) == []

    # Generated password: answered once, and it works.
    g = db_json(server, "create", "gen", "--service-key", "--size", "256M")
    assert len(g["master_password"]) >= 16
    assert sql_value(g["port"], "SELECT 1", password=g["master_password"]) == "1"
    assert "master_password" not in db_json(server, "show", "gen")
    assert g["key_arn"] != key and g["encrypted"] is True
    alias = kms.list_aliases(KeyId=g["key_arn"])["Aliases"]
    assert [a["AliasName"] for a in alias] == ["alias/atrest/db"]

    db_cmd(server, "delete", "gen")
    assert all(d["id"] != g["disk"] for d in disks(server))
    assert db_cmd(server, "show", "gen", check=False).returncode != 0

    # Audited and metered as the account's, with the key named.
    account = v["account"]
    recs = audit_records(audit_log_path(server))
    ops = {r["operation"] for r in recs if r.get("account") == account}
    for op in ("db:CreateInstance", "db:StopInstance", "db:StartInstance", "db:RestartInstance",
               "db:ListInstances", "db:DescribeInstance", "db:DeleteInstance",
               "disk:AttachDisk", "disk:DetachDisk", "CreateGrant", "Decrypt"):
        assert op in ops, (op, sorted(ops))
    create = [r for r in recs if r["operation"] == "db:CreateInstance" and r.get("key_arn") == key]
    assert create and create[0]["result"] == "Success", create
    usage = json.loads(atrest_client_cmd(server, "metering").stdout)["usage"]
    metered = {u["operation"] for u in usage if u["account"] == account}
    assert {"db:CreateInstance", "db:StartInstance", "db:DeleteInstance", "disk:AttachDisk"} <= metered, metered


class Ledger(threading.Thread):
    """Inserts rows one transaction at a time; keeps the ids whose COMMIT
    returned (what the client saw committed)."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.port = port
        self.acked: list[int] = []
        self.error: str | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres",
                                 password=DB_PASSWORD, dbname="postgres",
                                 autocommit=True, connect_timeout=10) as c:
                i = 0
                while not self.stop.is_set():
                    i += 1
                    c.execute("INSERT INTO ledger (id, pad) VALUES (%s, repeat('x', 200))", (i,))
                    self.acked.append(i)
        except Exception as e:  # the server went away: that is the test
            self.error = repr(e)


def pgbench(port: int, *args: str, **kw) -> subprocess.Popen:
    env = subprocess_env(PGPASSWORD=DB_PASSWORD)
    return subprocess.Popen(["pgbench", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                             *args, "postgres"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def load_then(port: int, crash) -> list[int]:
    """pgbench and the ledger run; after some commits, `crash()`; returns
    the acknowledged ids."""
    bench = pgbench(port, "-c", "4", "-T", "120", "-n")
    ledger = Ledger(port)
    ledger.start()
    deadline = time.monotonic() + 60
    while len(ledger.acked) < 300 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(ledger.acked) >= 300, ledger.error
    crash()
    ledger.join(60)
    assert not ledger.is_alive(), "the ledger kept committing after the crash"
    assert ledger.error, "the ledger saw no failure"
    bench.wait(60)
    return ledger.acked


def test_committed_transactions_survive_sigkill_of_postgres_and_of_atrest(server):
    v = create_db(server, "bank", "--service-key", "--size", "1G")
    port = v["port"]
    env = subprocess_env(PGPASSWORD=DB_PASSWORD)
    subprocess.run(["pgbench", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-i", "-s", "2",
                    "-q", "postgres"], env=env, check=True, capture_output=True, timeout=300)
    psql(port, "CREATE TABLE ledger (id int PRIMARY KEY, pad text)")

    # 1. The postmaster is killed.
    pid = postmaster_pid(v["id"])
    acked = load_then(port, lambda: os.kill(pid, signal.SIGKILL))
    # The service starts it again (crash recovery) at its next check.
    wait_state(server, "bank", "running", timeout=90)
    assert postmaster_pid(v["id"]) != pid
    have = {int(x) for x in sql_value(port, "SELECT id FROM ledger").split()}
    missing = set(acked) - have
    assert not missing, f"{len(missing)} acknowledged commits lost, e.g. {sorted(missing)[:5]}"
    psql(port, "TRUNCATE ledger")

    # 2. The atrest server is killed: the disk goes from under PostgreSQL.
    acked = load_then(port, server.kill)
    server.start()
    wait_state(server, "bank", "running")
    have = {int(x) for x in sql_value(port, "SELECT id FROM ledger").split()}
    missing = set(acked) - have
    assert not missing, f"{len(missing)} acknowledged commits lost, e.g. {sorted(missing)[:5]}"
    # pgbench's tables are consistent after crash recovery.
    assert sql_value(port, "SELECT sum(abalance) = (SELECT sum(bbalance) FROM pgbench_branches) "
                           "FROM pgbench_accounts") == "t"


def test_a_disabled_key_refuses_start_restart_and_replicas_and_enabling_unlocks(make_server):
    server = make_server().start("--disk-on-key-loss", "keep")
    kms = server.client()
    key = kms.create_key()["KeyMetadata"]["Arn"]
    v = create_db(server, "locked", "--key", key, "--size", "512M")
    port = v["port"]
    psql(port, "CREATE TABLE t AS SELECT 42 AS x")
    db_json(server, "replica", "create", "locked", "--name", "locked-standby")
    kms.disable_key(KeyId=key)

    def refused(*args):
        p = db_cmd(server, *args, check=False)
        assert p.returncode != 0, p.stdout
        assert key in p.stderr and "disabled" in p.stderr.lower(), p.stderr
        return p.stderr

    refused("restart", "locked")
    # Refused before stopping anything: it keeps serving (policy keep).
    assert sql_value(port, "SELECT x FROM t") == "42"
    refused("replica", "create", "locked")
    refused("switchover", "locked-standby")
    refused("clone", "locked", "--as", "copy")
    refused("resize", "locked", "--size", "1G")
    refused("set", "locked", "work_mem=8MB")
    assert sorted(i["name"] for i in db_json(server, "list")["instances"]) == ["locked", "locked-standby"]
    assert db_json(server, "show", "locked")["role"] == "primary"
    db_json(server, "stop", "locked")
    err = refused("start", "locked")
    assert "InstanceLockedException" in err or "locked" in err
    s = db_json(server, "show", "locked")
    assert s["state"] == "locked" and key in s["reason"], s
    kms.enable_key(KeyId=key)
    assert db_json(server, "start", "locked")["state"] == "running"
    assert sql_value(port, "SELECT x FROM t") == "42"


def test_parameters_resize_and_clone(server):
    v = create_db(server, "shape", "--service-key", "--size", "256M")
    port = v["port"]
    psql(port, "CREATE TABLE t AS SELECT generate_series(1, 1000) AS x")
    s = db_json(server, "set", "shape", "work_mem=12MB", "max_connections=50")
    assert s["state"] == "running"
    assert sql_value(port, "SHOW work_mem") == "12MB"
    assert sql_value(port, "SHOW max_connections") == "50"
    # A value PostgreSQL refuses (out of range): the instance runs on with
    # the old ones.
    bad = db_cmd(server, "set", "shape", "shared_buffers=1kB", check=False)
    assert bad.returncode != 0 and "previous" in bad.stderr, bad.stderr
    assert sql_value(port, "SHOW work_mem") == "12MB"
    # A value not of the parameter's form never reaches PostgreSQL.
    p = db_cmd(server, "set", "shape", "shared_buffers=lots", check=False)
    assert p.returncode != 0 and "'shared_buffers' must be" in p.stderr, p.stderr
    for refused in ("port=1", "archive_command=x", "archive_cleanup_command=x",
                    "primary_conninfo=x", "session_preload_libraries=x"):
        p = db_cmd(server, "set", "shape", refused, check=False)
        assert p.returncode != 0 and "allow-list" in p.stderr, p.stderr
    db_json(server, "set", "shape", "work_mem=")
    assert sql_value(port, "SHOW work_mem") == "4MB"

    r = db_json(server, "resize", "shape", "--size", "1G")
    assert r["state"] == "running"
    disk = [d for d in disks(server) if d["id"] == v["disk"]][0]
    assert disk["size"] == 1 << 30
    # The file system grew with the disk: write more than the old size.
    psql(port, "CREATE TABLE big AS SELECT repeat('y', 1000) AS pad FROM generate_series(1, 250000)",
         timeout=300)
    assert sql_value(port, "SELECT count(*) FROM big") == "250000"
    p = db_cmd(server, "resize", "shape", "--size", "128M", check=False)
    assert p.returncode != 0 and "only grow" in p.stderr

    c = db_json(server, "clone", "shape", "--as", "shape-copy")
    assert c["name"] == "shape-copy" and c["key_arn"] == v["key_arn"] and c["disk"] != v["disk"]
    assert c["port"] != port and c["state"] == "running"
    assert sql_value(c["port"], "SELECT count(*) FROM t") == "1000"
    psql(c["port"], "INSERT INTO t VALUES (0)")
    assert sql_value(port, "SELECT count(*) FROM t") == "1000", "the copy is independent"


def test_the_close_policy_stops_a_running_instance_when_its_key_goes(make_server):
    server = make_server().start("--disk-on-key-loss", "close", "--disk-close-after", "1",
                                 "--disk-key-check-interval", "1")
    kms = server.client()
    key = kms.create_key()["KeyMetadata"]["Arn"]
    v = create_db(server, "revoked", "--key", key, "--size", "512M")
    assert sql_value(v["port"], "SELECT 1") == "1"
    kms.disable_key(KeyId=key)
    s = wait_state(server, "revoked", "locked", timeout=30)
    assert key in s["reason"]
    assert psql(v["port"], "SELECT 1", check=False).returncode != 0
    kms.enable_key(KeyId=key)
    assert db_json(server, "start", "revoked")["state"] == "running"
    assert sql_value(v["port"], "SELECT 1") == "1"


def test_a_replica_follows_its_primary_and_survives_switchover_both_ways(server):
    kms = server.client()
    key = kms.create_key()["KeyMetadata"]["Arn"]
    p = create_db(server, "main", "--key", key, "--size", "512M")
    psql(p["port"], "CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
    r = db_json(server, "replica", "create", "main")
    assert r["name"] == "main-replica-1" and r["role"] == "replica" and r["primary"] == "main", r
    assert r["key_arn"] == key and r["encrypted"] is True and r["disk"] != p["disk"], r
    wait_sql(r["port"], "SELECT count(*) FROM t", "1")
    psql(p["port"], "INSERT INTO t VALUES (2)")
    wait_sql(r["port"], "SELECT count(*) FROM t", "2")
    ro = psql(r["port"], "INSERT INTO t VALUES (99)", check=False)
    assert ro.returncode != 0 and "read-only" in ro.stderr
    # Its encryption is the primary's.
    other = kms.create_key()["KeyMetadata"]["Arn"]
    p2 = db_cmd(server, "encryption", "main-replica-1", "set-key", "--key", other, check=False)
    assert p2.returncode != 0 and "follows its primary" in p2.stderr

    s = db_json(server, "switchover", "main-replica-1")
    assert s["role"] == "primary" and s["key_arn"] == key, s
    old = db_json(server, "show", "main")
    assert old["role"] == "replica" and old["primary"] == "main-replica-1" and old["state"] == "running"
    psql(r["port"], "INSERT INTO t VALUES (3)")
    wait_sql(p["port"], "SELECT count(*) FROM t", "3")
    assert psql(p["port"], "INSERT INTO t VALUES (98)", check=False).returncode != 0

    back = db_json(server, "switchover", "main")
    assert back["role"] == "primary"
    psql(p["port"], "INSERT INTO t VALUES (4)")
    wait_sql(r["port"], "SELECT string_agg(x::text, ',' ORDER BY x) FROM t", "1,2,3,4")
    assert db_json(server, "show", "main-replica-1")["role"] == "replica"
    # A primary with a replica cannot be deleted first.
    d = db_cmd(server, "delete", "main", check=False)
    assert d.returncode != 0 and "main-replica-1" in d.stderr


def test_encryption_by_class(server):
    kms = server.client()
    k1 = kms.create_key()["KeyMetadata"]["Arn"]
    k2 = kms.create_key()["KeyMetadata"]["Arn"]
    t = create_db(server, "tde1", "--key", k1, "--size", "256M")
    p = db_cmd(server, "encryption", "tde1", "disable", check=False)
    assert p.returncode != 0 and "cannot be turned off" in p.stderr, p.stderr
    assert db_json(server, "show", "tde1")["encrypted"] is True
    p = db_cmd(server, "create", "tde2", "--unencrypted", check=False)
    assert p.returncode != 0 and "class disk" in p.stderr

    d = create_db(server, "plain", "--class", "disk", "--unencrypted", "--size", "256M")
    assert d["encrypted"] is False and "key_arn" not in d
    psql(d["port"], "CREATE TABLE t AS SELECT generate_series(1, 500) AS x")
    e = db_json(server, "encryption", "plain", "enable", "--key", k1)
    assert e["encrypted"] is True and e["key_arn"] == k1 and e["disk"] != d["disk"], e
    assert e["state"] == "running" and e["port"] == d["port"]
    assert sql_value(d["port"], "SELECT count(*) FROM t") == "500"
    assert all(x["id"] != d["disk"] for x in disks(server)), "the plaintext disk is deleted"
    k = db_json(server, "encryption", "plain", "set-key", "--key", k2)
    assert k["key_arn"] == k2 and k["disk"] == e["disk"]
    assert sql_value(d["port"], "SELECT count(*) FROM t") == "500"
    # The old key no longer matters: disabling it locks nothing.
    kms.disable_key(KeyId=k1)
    assert db_json(server, "restart", "plain")["state"] == "running"
    off = db_json(server, "encryption", "plain", "disable")
    assert off["encrypted"] is False and "key_arn" not in off
    assert sql_value(d["port"], "SELECT count(*) FROM t") == "500"
    p = db_cmd(server, "encryption", "plain", "disable", check=False)
    assert p.returncode != 0 and "not encrypted" in p.stderr


def test_bad_input_gets_clear_errors_and_leaves_nothing_behind(make_server):
    server = make_server().start()
    for args in (["show", "nope"], ["start", "nope"], ["stop", "nope"], ["delete", "nope"],
                 ["switchover", "nope"], ["replica", "create", "nope"]):
        p = db_cmd(server, *args, check=False)
        assert p.returncode != 0 and "NotFoundException" in p.stderr and "nope" in p.stderr, (args, p.stderr)
    r = rest_call(server, "GET", "/v1/instances/nope")
    assert r.status_code == 404 and r.json()["code"] == "NotFoundException"

    cases = [
        ({"name": "Bad_Name", "service_key": True}, 400, "not a valid instance name"),
        ({"name": "x1"}, 400, "exactly one of"),
        ({"name": "x1", "service_key": True, "key_id": "alias/x"}, 400, "exactly one of"),
        ({"name": "x1", "service_key": True, "class": "gold"}, 400, "not an instance class"),
        ({"name": "x1", "service_key": True, "colour": "red"}, 400, "unknown member 'colour'"),
        ({"name": "x1", "service_key": True, "port": "5432"}, 400, "'port' must be a number"),
        ({"name": "x1", "service_key": True, "port": 80}, 400, "privileged"),
        ({"name": "x1", "service_key": True, "master_password": "short"}, 400, "8 to 128"),
        ({"name": "x1", "service_key": True, "master_username": "pg_x"}, 400, "master user name"),
        ({"name": "x1", "key_id": "alias/does-not-exist"}, 400, "NotFoundException"),
    ]
    for body, status, text in cases:
        r = rest_call(server, "POST", "/v1/instances", body)
        assert r.status_code == status and text in (r.json()["message"] + r.json()["code"]), (body, r.text)
    r = rest_call(server, "POST", "/v1/instances/nope/encryption", {"action": "explode"})
    assert r.status_code in (400, 404), r.text

    # A port in use: refused before anything is made.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        busy = s.getsockname()[1]
        p = db_cmd(server, "create", "x2", "--service-key", "--port", str(busy), check=False)
        assert p.returncode != 0 and f"port {busy} is in use" in p.stderr, p.stderr
    # A duplicate name.
    create_db(server, "dup", "--service-key", "--size", "256M")
    p = db_cmd(server, "create", "dup", "--service-key", check=False)
    assert p.returncode != 0 and "already exists" in p.stderr
    assert [i["name"] for i in db_json(server, "list")["instances"]] == ["dup"]
    assert len(disks(server)) == 1
    server.stop()

    # PostgreSQL missing: a clear 503, nothing created.
    server.start("--db-pg-bin", "/nonexistent/pg/bin")
    r = rest_call(server, "POST", "/v1/instances", {"name": "x3", "service_key": True})
    assert r.status_code == 503, r.text
    assert "initdb was not found in /nonexistent/pg/bin" in r.json()["message"]
    assert [i["name"] for i in db_json(server, "list")["instances"]] == ["dup"]
    assert len(disks(server)) == 1


def test_a_server_not_run_as_root_serves_everything_but_instances():
    """The README's first command as an ordinary user: the server starts and
    serves; creating an instance answers 503 saying why."""
    import pwd
    import shutil
    import tempfile
    import urllib.request

    from conftest import ATREST_BIN, free_port

    nobody = pwd.getpwnam("nobody")
    top = Path(tempfile.mkdtemp(prefix="atrest-nonroot-"))
    top.chmod(0o755)
    home = top / "home"
    home.mkdir()
    os.chown(home, nobody.pw_uid, nobody.pw_gid)
    data = home / "data"
    port = free_port()
    proc = subprocess.Popen(
        ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups", "--",
         str(ATREST_BIN), "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data)],
        env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    assert r.read().decode().strip() == "ok"
                    break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode()
                assert time.monotonic() < deadline, "not ready"
                time.sleep(0.1)
        from conftest import atrest_run
        p = atrest_run("db", "--endpoint", f"http://127.0.0.1:{port}", "--credentials-file",
                       str(home / "data.admin-credentials"), "create", "x", "--service-key", check=False)
        assert p.returncode != 0 and "ServiceUnavailableException" in p.stderr, p.stderr
        assert "run atrest as root" in p.stderr
        p = atrest_run("db", "--endpoint", f"http://127.0.0.1:{port}", "--credentials-file",
                       str(home / "data.admin-credentials"), "list")
        assert json.loads(p.stdout)["instances"] == []
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(top, ignore_errors=True)
