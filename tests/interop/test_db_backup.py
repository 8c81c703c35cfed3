"""Encrypted backups, continuous WAL archiving and point-in-time restore of
PostgreSQL instances, through the real server, PostgreSQL 15's
pg_basebackup, archive_command and restore_command, and psql (issue 6, R3).

* A backup, more commits, a restore to an instant between them: exactly
  the rows committed before it; a restore without a time: all of them.
  The restored instance is encrypted under the same key, keeps the master
  user and password, accepts writes and archives into its own directory.
  Before the first backup no WAL is kept; a time past the last archived
  commit is refused cleanly.
* A marker row is in plaintext in no file under the data dir nor in the
  backup storage (base backups and WAL), while the database shows it.
* A disabled key: backup and restore are refused, each naming the key;
  enabled again, both work.
* Bad input: an unknown backup (404), a taken name (409), a bad or too
  early --to-time (400), unknown members, an unencrypted instance (409);
  a tampered base backup makes the restore fail with nothing left behind.

Capability: R3.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from conftest import (
    all_disks,
    atrest_client_cmd,
    audit_log_path,
    audit_records,
    create_db,
    db_cmd,
    db_json,
    psql,
    rest_call,
    scan_for,
    sql_value,
)


def backup_root(server) -> Path:
    return server.data_dir / "objects" / "db"


def wal_files(server, instance_id: str) -> list[str]:
    d = backup_root(server) / instance_id / "wal"
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def switch_and_wait_archived(server, port: int, instance_id: str, timeout: float = 120) -> str:
    """Forces a WAL switch and waits until the switched file is in the
    instance's archive (as the server wrote it)."""
    seg = sql_value(port, "SELECT pg_walfile_name(pg_switch_wal())")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if seg in wal_files(server, instance_id):
            archived = sql_value(port, "SELECT last_archived_wal FROM pg_stat_archiver")
            assert archived[:24] >= seg[:24], (archived, seg)
            return seg
        time.sleep(0.3)
    raise AssertionError(f"{seg} not archived within {timeout}s: {wal_files(server, instance_id)}")


def disk_ids(server) -> set[str]:
    """Every disk of the admin's account, instance disks included."""
    return {d["id"] for d in all_disks(server)}


def instance_names(server) -> list[str]:
    return sorted(i["name"] for i in db_json(server, "list")["instances"])


def instance_with_backup(server, name: str, sql: str):
    """An instance under a new customer key, `sql` run on it, backed up:
    (the KMS client, the key, the instance, the backup)."""
    kms = server.client()
    key = kms.create_key()["KeyMetadata"]["Arn"]
    v = create_db(server, name, "--key", key, "--size", "1G")
    psql(v["port"], sql)
    return kms, key, v, db_json(server, "backup", name)


def utc_now_in_db(port: int) -> str:
    """The database's clock, as RFC 3339 with microseconds."""
    return sql_value(port, """SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')""")


def test_backup_then_point_in_time_restore_and_full_restore(server):
    kms = server.client()
    key = kms.create_key(Description="db backups")["KeyMetadata"]["Arn"]
    src = create_db(server, "src", "--key", key, "--size", "1G")
    port = src["port"]
    psql(port, "CREATE TABLE t (id serial PRIMARY KEY, phase text NOT NULL); "
               "INSERT INTO t (phase) SELECT 'base' FROM generate_series(1, 50);")
    # Before the first backup, PostgreSQL archives but nothing is kept (no
    # backup could use it).
    seg = sql_value(port, "SELECT pg_walfile_name(pg_switch_wal())")
    deadline = time.monotonic() + 60
    while sql_value(port, "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver") < seg:
        assert time.monotonic() < deadline, "not archived"
        time.sleep(0.3)
    assert wal_files(server, src["id"]) == []

    b = db_json(server, "backup", "src")
    assert b["id"].startswith("bk-") and len(b["id"]) == 19, b
    assert (b["instance"], b["instance_id"], b["key_arn"]) == ("src", src["id"], key), b
    assert b["size"] > b["data_size"] > 0 and b["start_time"] <= b["end_time"], b
    base = backup_root(server) / src["id"] / "base"
    assert sorted(p.name for p in base.iterdir()) == [f"{b['id']}.json", f"{b['id']}.tar.enc"]
    # The WAL that makes the backup consistent is archived.
    assert b["end_wal"] in wal_files(server, src["id"]), (b, wal_files(server, src["id"]))
    # The service uses the key through its own grant, bound to the instance.
    grants = [g for g in kms.list_grants(KeyId=key)["Grants"] if g["GranteePrincipal"] == "db.atrest"]
    assert len(grants) == 1, grants
    assert grants[0]["Constraints"]["EncryptionContextSubset"] == {"atrest:db:id": src["id"]}
    assert sorted(grants[0]["Operations"]) == ["Decrypt", "GenerateDataKey"]

    # Rows A; the instant T; rows B.
    psql(port, "INSERT INTO t (phase) SELECT 'A' FROM generate_series(1, 40);")
    time.sleep(1.0)
    t = utc_now_in_db(port)
    time.sleep(1.0)
    psql(port, "INSERT INTO t (phase) SELECT 'B' FROM generate_series(1, 30);")
    switch_and_wait_archived(server, port, src["id"])

    pitr = db_json(server, "restore", b["id"], "--as", "pitr", "--to-time", t)
    assert pitr["state"] == "running" and pitr["role"] == "primary", pitr
    assert pitr["encrypted"] is True and pitr["key_arn"] == key and pitr["disk"] != src["disk"], pitr
    assert pitr["master_username"] == src["master_username"] and "master_password" not in pitr
    # The source's password works: it is in the restored catalog.
    counts = sql_value(pitr["port"], "SELECT string_agg(phase || '=' || n, ',' ORDER BY phase) "
                                     "FROM (SELECT phase, count(*) n FROM t GROUP BY phase) x")
    assert counts == "A=40,base=50", counts

    full = db_json(server, "restore", b["id"], "--as", "full")
    counts = sql_value(full["port"], "SELECT string_agg(phase || '=' || n, ',' ORDER BY phase) "
                                     "FROM (SELECT phase, count(*) n FROM t GROUP BY phase) x")
    assert counts == "A=40,B=30,base=50", counts

    # A restored instance is a primary of its own: it accepts writes and
    # archives into its own directory (its new timeline's history first).
    psql(pitr["port"], "INSERT INTO t (phase) VALUES ('after');")
    assert sql_value(pitr["port"], "SELECT pg_is_in_recovery()") == "f"
    deadline = time.monotonic() + 60
    while "00000002.history" not in wal_files(server, pitr["id"]) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert "00000002.history" in wal_files(server, pitr["id"]), wal_files(server, pitr["id"])
    # ... and can be backed up itself.
    b2 = db_json(server, "backup", "pitr")
    assert b2["instance_id"] == pitr["id"] and b2["key_arn"] == key, b2

    # Listing, showing, deleting.
    assert [x["id"] for x in db_json(server, "backups", "src")["backups"]] == [b["id"]]
    assert {x["id"] for x in db_json(server, "backups")["backups"]} == {b["id"], b2["id"]}
    assert db_json(server, "backup-show", b["id"]) == b
    assert db_json(server, "backup-delete", b2["id"]) == {"deleted": b2["id"]}
    assert [x["id"] for x in db_json(server, "backups")["backups"]] == [b["id"]]
    assert not (backup_root(server) / pitr["id"] / "base" / f"{b2['id']}.tar.enc").exists()
    # A backup outlives its instance, and restores without it.
    db_cmd(server, "delete", "src")
    gone = db_json(server, "restore", b["id"], "--as", "after-delete")
    counts = sql_value(gone["port"], "SELECT count(*) FROM t")
    assert counts == "120", counts
    # With its instance gone nothing commits after a recent instant, so
    # recovery cannot reach it: a clear 400, nothing left behind.
    names, disks_before = instance_names(server), disk_ids(server)
    recent = (datetime.now(timezone.utc) - timedelta(seconds=1)).isoformat()
    p = db_cmd(server, "restore", b["id"], "--as", "too-late", "--to-time", recent, check=False)
    assert p.returncode != 0 and "ValidationException" in p.stderr, p.stderr
    assert "no transaction after" in p.stderr, p.stderr
    assert instance_names(server) == names and disk_ids(server) == disks_before

    # Audited and metered with the key.
    recs = audit_records(audit_log_path(server))
    for op in ("db:CreateBackup", "db:RestoreBackup", "db:DescribeBackup", "db:DeleteBackup",
               "GenerateDataKey", "Decrypt", "CreateGrant"):
        assert any(r["operation"] == op and r.get("key_arn") == key
                   and r.get("account") == src["account"] for r in recs), op
    # The data keys of backups and WAL are made by the service, under its
    # grant, with the instance's encryption context.
    gdk = [r for r in recs if r["operation"] == "GenerateDataKey" and r.get("key_arn") == key]
    assert gdk and all("db.atrest" in json.dumps(r) for r in gdk), gdk[:1]


def test_no_plaintext_in_the_data_dir_or_the_backup_storage(server):
    marker = "MARKER-" + os.urandom(8).hex()
    _, _, v, b = instance_with_backup(
        server, "secrets", f"CREATE TABLE s (v text); INSERT INTO s SELECT '{marker}' FROM generate_series(1, 500);")
    port = v["port"]
    psql(port, f"INSERT INTO s SELECT '{marker}-after' FROM generate_series(1, 500);")
    switch_and_wait_archived(server, port, v["id"])
    # The database holds the marker (so the scan below can fail).
    assert sql_value(port, f"SELECT count(*) FROM s WHERE v LIKE '{marker}%'") == "1000"
    storage = backup_root(server) / v["id"]
    files = [p for p in storage.rglob("*") if p.is_file()]
    assert len(files) >= 4 and sum(p.stat().st_size for p in files) > 16 << 20, files
    for p in files:
        assert p.read_bytes()[:8] == b"ATRBKUP\0" or p.suffix == ".json", p
    assert scan_for(server.data_dir, marker.encode()) == []
    assert backup_root(server).is_relative_to(server.data_dir)
    # A restore brings it back.
    r = db_json(server, "restore", b["id"], "--as", "secrets-copy")
    assert sql_value(r["port"], f"SELECT count(*) FROM s WHERE v LIKE '{marker}%'") == "1000"
    assert scan_for(server.data_dir, marker.encode()) == []


def test_a_disabled_key_refuses_backup_and_restore(server):
    kms, key, _, b = instance_with_backup(
        server, "locked", "CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2), (3);")
    disks_before = disk_ids(server)

    kms.disable_key(KeyId=key)
    p = db_cmd(server, "backup", "locked", check=False)
    assert p.returncode != 0 and key in p.stderr and "disabled" in p.stderr, p.stderr
    p = db_cmd(server, "restore", b["id"], "--as", "copy", check=False)
    assert p.returncode != 0 and key in p.stderr and "disabled" in p.stderr, p.stderr
    assert instance_names(server) == ["locked"]
    assert disk_ids(server) == disks_before
    assert [x["id"] for x in db_json(server, "backups")["backups"]] == [b["id"]]

    kms.enable_key(KeyId=key)
    # The close policy may have stopped the instance meanwhile.
    if db_json(server, "show", "locked")["state"] != "running":
        db_json(server, "start", "locked")
    b2 = db_json(server, "backup", "locked")
    copy = db_json(server, "restore", b2["id"], "--as", "copy")
    assert sql_value(copy["port"], "SELECT sum(x) FROM t") == "6"
    assert instance_names(server) == ["copy", "locked"]


def test_bad_input_and_a_tampered_backup(server):
    _, _, v, b = instance_with_backup(
        server, "orig", "CREATE TABLE t (x int); INSERT INTO t SELECT generate_series(1, 1000);")

    # Unknown backups and instances.
    for args in (["backup-show", "bk-0000000000000000"], ["backup-delete", "bk-0000000000000000"],
                 ["restore", "bk-0000000000000000", "--as", "x1"], ["backup-show", "../etc"],
                 ["backup", "nope"], ["backups", "nope"]):
        p = db_cmd(server, *args, check=False)
        assert p.returncode != 0 and "NotFoundException" in p.stderr, (args, p.stderr)
    r = rest_call(server, "GET", "/v1/backups/bk-0000000000000000")
    assert r.status_code == 404 and r.json()["code"] == "NotFoundException", r.text
    assert "backup 'bk-0000000000000000' does not exist" in r.json()["message"], r.text

    # A taken name: 409.
    r = rest_call(server, "POST", f"/v1/backups/{b['id']}/restore", {"name": "orig"})
    assert r.status_code == 409 and "already exists" in r.json()["message"], r.text
    # Bad times: 400.
    for t, text in (("yesterday", "not a time with a time zone"),
                    ("2024-05-01 12:00:00", "not a time with a time zone"),
                    ("2000-01-01T00:00:00Z", "before backup"),
                    ("2999-01-01T00:00:00Z", "in the future")):
        r = rest_call(server, "POST", f"/v1/backups/{b['id']}/restore", {"name": "x2", "to_time": t})
        assert r.status_code == 400 and text in r.json()["message"], (t, r.text)
    p = db_cmd(server, "restore", b["id"], "--as", "x2", "--to-time", "soon", check=False)
    assert p.returncode != 0 and "ValidationException" in p.stderr, p.stderr
    # Unknown members, a bad name.
    for body, text in (({"name": "x3", "colour": "red"}, "unknown member 'colour'"),
                       ({}, "'name' is required"),
                       ({"name": "Bad_Name"}, "not a valid instance name")):
        r = rest_call(server, "POST", f"/v1/backups/{b['id']}/restore", body)
        assert r.status_code == 400 and text in r.json()["message"], (body, r.text)
    r = rest_call(server, "POST", "/v1/instances/orig/backups", {"full": True})
    assert r.status_code == 400 and "unknown member 'full'" in r.json()["message"], r.text
    r = rest_call(server, "GET", "/v1/backups?colour=red")
    assert r.status_code == 400, r.text

    # An unencrypted instance cannot be backed up encrypted.
    create_db(server, "plain", "--class", "disk", "--unencrypted", "--size", "256M")
    p = db_cmd(server, "backup", "plain", check=False)
    assert p.returncode != 0 and "ConflictException" in p.stderr and "enable encryption first" in p.stderr, p.stderr

    # One flipped byte in the middle of the base backup: the restore fails
    # cleanly and leaves nothing behind.
    names, disks_before = instance_names(server), disk_ids(server)
    tar = backup_root(server) / v["id"] / "base" / f"{b['id']}.tar.enc"
    good = tar.read_bytes()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0x01
    tar.write_bytes(bytes(bad))
    p = db_cmd(server, "restore", b["id"], "--as", "tampered", check=False)
    assert p.returncode != 0 and "tampered" in p.stderr, p.stderr
    assert instance_names(server) == names and disk_ids(server) == disks_before
    # Truncated: likewise.
    tar.write_bytes(good[: len(good) - 17])
    p = db_cmd(server, "restore", b["id"], "--as", "tampered", check=False)
    assert p.returncode != 0 and "tampered" in p.stderr, p.stderr
    assert instance_names(server) == names and disk_ids(server) == disks_before
    # Repaired, it restores.
    tar.write_bytes(good)
    r = db_json(server, "restore", b["id"], "--as", "repaired")
    assert sql_value(r["port"], "SELECT count(*) FROM t") == "1000"


# -- backups of the previous release (files in a directory) -----------------


PREV_BIN = os.environ.get("ATREST_PREV_BIN")


def previous_release_backup(server, backup_dir: Path, *args: str):
    """With the previous release (backups as files under `backup_dir`): an
    instance, rows 'before', a backup, 40 rows 'A', the instant T, 30 rows
    'B', archived. Stops the server. Answers (instance, backup, T)."""
    import pytest
    import conftest
    if not PREV_BIN or not Path(PREV_BIN).is_file():
        pytest.fail("ATREST_PREV_BIN must name the previous release's binary (scripts/test.sh builds it)")
    saved = conftest.ATREST_BIN
    conftest.ATREST_BIN = Path(PREV_BIN)
    try:
        server.start(*args)
        kms = server.client()
        key = kms.create_key(Description="backed up by the previous release")["KeyMetadata"]["Arn"]
        src = create_db(server, "src", "--key", key, "--size", "1G")
        port = src["port"]
        psql(port, "CREATE TABLE t (id serial PRIMARY KEY, phase text NOT NULL); "
                   "INSERT INTO t (phase) SELECT 'before' FROM generate_series(1, 500);")
        b = db_json(server, "backup", "src")
        assert (backup_dir / src["id"] / "base" / f"{b['id']}.json").is_file()
        psql(port, "INSERT INTO t (phase) SELECT 'A' FROM generate_series(1, 40);")
        time.sleep(1.0)
        t = utc_now_in_db(port)
        time.sleep(1.0)
        psql(port, "INSERT INTO t (phase) SELECT 'B' FROM generate_series(1, 30);")
        seg = sql_value(port, "SELECT pg_walfile_name(pg_switch_wal())")
        wal = backup_dir / src["id"] / "wal"
        deadline = time.monotonic() + 120
        while not (wal / seg).is_file():
            assert time.monotonic() < deadline, f"{seg} not archived by the previous release"
            time.sleep(0.3)
        server.stop(timeout=90)
    finally:
        conftest.ATREST_BIN = saved
    return src, b, t


def wait_listed(server, backup_id: str, timeout: float = 60) -> dict:
    """The backup, once the server lists it (the move of an earlier
    release's backups runs in the background at the start)."""
    deadline = time.monotonic() + timeout
    while True:
        got = [x for x in db_json(server, "backups")["backups"] if x["id"] == backup_id]
        if got:
            return got[0]
        assert time.monotonic() < deadline, f"{backup_id} not listed:\n{server.last_output()}"
        time.sleep(0.5)


def wait_running(server, name: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while db_json(server, "show", name)["state"] != "running":
        assert time.monotonic() < deadline, db_json(server, "show", name)
        time.sleep(1)


def test_backups_of_the_previous_release_in_the_backup_dir_move_under_db(make_server):
    """--db-backup-dir DIR of the previous release held `DIR/<instance>/...`;
    DIR is now a store of its own, whose objects are `DIR/db/...`: the
    backups move there at the start, are listed, and restore to a point in
    time (the WAL the previous release archived included)."""
    server = make_server()
    backup_dir = make_server.workdir / "db-backups"
    args = ("--db-backup-dir", str(backup_dir))
    src, b, t = previous_release_backup(server, backup_dir, *args)
    server.start(*args, timeout=120)
    listed = wait_listed(server, b["id"])
    assert listed["instance_id"] == src["id"], listed
    i = src["id"]
    assert (backup_dir / "db" / i / "base" / f"{b['id']}.tar.enc").is_file()
    assert (backup_dir / "db" / i / "base" / f"{b['id']}.json").is_file()
    assert not (backup_dir / i / "base" / f"{b['id']}.json").exists()
    assert sorted(p.name for p in (backup_dir / "db" / i / "wal").iterdir())
    wait_running(server, "src")
    pitr = db_json(server, "restore", b["id"], "--as", "pitr", "--to-time", t)
    assert counts(pitr["port"]) == "A=40,before=500", counts(pitr["port"])
    # A restart moves nothing more and keeps them.
    server.stop(timeout=90)
    server.start(*args, timeout=120)
    assert wait_listed(server, b["id"])["id"] == b["id"]


def counts(port: int) -> str:
    return sql_value(port, "SELECT string_agg(phase || '=' || n, ',' ORDER BY phase) "
                           "FROM (SELECT phase, count(*) n FROM t GROUP BY phase) x")
