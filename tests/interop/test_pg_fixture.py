"""The PostgreSQL fixture of the shared-store tests (pg_fixture.py) does what
it says: Debian's server on a free loopback port only, its own data dir owned
by the `postgres` OS user (never root), trust for the superuser over TCP, a
fresh database per test, a restart that keeps the data and the port, a fast
and an immediate stop by pid, and nothing left behind (no process of its
group, no directory). A missing server skips, or fails under
ATREST_REQUIRE_POSTGRES=1.
"""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
from pathlib import Path

import pytest

import pg_fixture
from pg_fixture import PgError, PgServer, _group_members, find_bindir, pg_server, pg_url  # noqa: F401


def _uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError("no Uid line")


def test_server_runs_as_postgres_on_loopback_with_fresh_databases(pg_server, pg_url):
    s = pg_server
    assert s.running() and s.pid is not None
    # The postmaster itself (setpriv execs it), as the postgres OS user.
    assert Path(f"/proc/{s.pid}/exe").resolve().name == "postgres"
    if os.geteuid() == 0:
        assert _uid_of(s.pid) == pwd.getpwnam("postgres").pw_uid
        assert s.data_dir.stat().st_uid == pwd.getpwnam("postgres").pw_uid
    # Loopback only, trust for the superuser over TCP.
    assert s.sql("SHOW listen_addresses") == "127.0.0.1"
    assert s.sql("SHOW port") == str(s.port)
    assert s.sql("SELECT current_user") == "postgres"
    assert s.sql("SHOW data_directory") == str(s.data_dir)
    # The per-test database is new and empty, and its URL names it.
    db = pg_url.rsplit("/", 1)[1]
    assert pg_url == f"postgres://postgres@127.0.0.1:{s.port}/{db}"
    assert s.sql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", dbname=db) == "0"
    # A client reaching it by URL (psql takes the URI form).
    out = subprocess.run(["psql", pg_url, "-X", "-A", "-t", "-c", "SELECT current_database()"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.strip() == db, out.stderr
    # Two fresh databases differ; a dropped one is gone.
    other = s.create_database()
    assert other != db
    s.drop_database(other)
    assert s.sql(f"SELECT count(*) FROM pg_database WHERE datname = '{other}'") == "0"
    with pytest.raises(ValueError):
        s.create_database("Bad-Name; DROP")


def test_restart_keeps_data_and_port(pg_server, pg_url):
    s = pg_server
    db = pg_url.rsplit("/", 1)[1]
    s.sql("CREATE TABLE t (v int); INSERT INTO t VALUES (1), (2)", dbname=db)
    port, pid = s.port, s.pid
    s.restart("fast")
    assert s.port == port and s.pid != pid
    assert not _group_members(pid), "the old server's processes are still there"
    assert s.sql("SELECT sum(v) FROM t", dbname=db) == "3"
    # An immediate stop (no checkpoint) and a start: crash recovery keeps
    # what was committed.
    s.sql("INSERT INTO t VALUES (4)", dbname=db)
    s.restart("immediate", down_for=0.5)
    assert s.sql("SELECT sum(v) FROM t", dbname=db) == "7"
    # While it is down, connections are refused.
    s.stop("fast")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    with pytest.raises(PgError):
        s.sql("SELECT 1", dbname=db)
    s.start_again()
    assert s.sql("SELECT 1", dbname=db) == "1"


def test_remove_leaves_nothing(tmp_path):
    s = PgServer(pg_fixture.require_postgres()).start(tmp_path)
    root, pid, port = s.root, s.pid, s.port
    assert root.is_dir() and _group_members(pid)
    s.remove()
    assert not root.exists()
    assert not _group_members(pid)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    s.remove()  # twice is fine


def test_missing_binaries_skip_or_fail(tmp_path, monkeypatch):
    empty = tmp_path / "bin"
    empty.mkdir()
    assert find_bindir(str(empty)) is None
    assert find_bindir(None, pattern=str(tmp_path / "nothing" / "*" / "bin")) is None
    with pytest.raises(PgError, match="no PostgreSQL server binaries"):
        monkeypatch.setattr(pg_fixture, "find_bindir", lambda *a, **k: None)
        PgServer()
    monkeypatch.setattr(pg_fixture, "_REQUIRE", False)
    with pytest.raises(pytest.skip.Exception):
        pg_fixture.require_postgres()
    monkeypatch.setattr(pg_fixture, "_REQUIRE", True)
    with pytest.raises(pytest.fail.Exception, match="ATREST_REQUIRE_POSTGRES"):
        pg_fixture.require_postgres()


def test_newest_version_is_chosen(tmp_path):
    for v in ("9.6", "13", "15"):
        d = tmp_path / v / "bin"
        d.mkdir(parents=True)
        for b in ("initdb", "postgres", "pg_isready"):
            (d / b).write_text("#!/bin/sh\n")
            (d / b).chmod(0o755)
    assert find_bindir(None, pattern=str(tmp_path / "*" / "bin")) == tmp_path / "15" / "bin"
