"""Database backups and WAL archives in object storage, against a real S3
server (Garage, started on loopback by the fixture), through the real
binary and PostgreSQL.

* Backup to the store, more commits, point-in-time restore to a time
  between them: the rows of before are there, the rows of after are not.
  The objects are `<prefix>/db/<instance>/base/<backup>.tar.enc`, its
  manifest `<backup>.json` and `<prefix>/db/<instance>/wal/<file>`; a scan
  of every object in the bucket finds no plaintext marker.
* Retention: with a retention of N days, backups that ended longer ago go
  (never the newest), and the WAL only they needed with them.
* Bad input: an unreachable store, wrong credentials, a bucket that does
  not exist: the backup fails with a typed error (502
  ObjectStoreException) naming the store, and no backup is listed; a
  tampered or truncated base backup: the restore fails naming the object,
  and nothing is left behind.

Capabilities: R3 (issue 21).
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timedelta, timezone

from conftest import create_db, db_cmd, db_json, free_port, psql, rest_call, sql_value
from garage_fixture import garage, s3_client  # noqa: F401  (fixture)

PREFIX = "atrest"


def store_args(g, bucket: str | None = None, endpoint: str | None = None) -> tuple[str, ...]:
    return (
        "--object-store", f"s3://{bucket or g.bucket}/{PREFIX}",
        "--object-store-endpoint", endpoint or g.endpoint,
        "--object-store-region", g.region,
        "--object-store-path-style",
    )


def store_env(g, secret: str | None = None) -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": g.access_key_id, "AWS_SECRET_ACCESS_KEY": secret or g.secret}


def start(make_server, g, *, args=None, env=None):
    return make_server(args=args or store_args(g), env=env or store_env(g)).start()


def keys(g, prefix: str = "") -> list[str]:
    s3 = s3_client(g)
    out = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=g.bucket, Prefix=f"{PREFIX}/{prefix}"):
        out += [o["Key"].removeprefix(f"{PREFIX}/") for o in page.get("Contents", [])]
    return sorted(out)


def get(g, name: str) -> bytes:
    return s3_client(g).get_object(Bucket=g.bucket, Key=f"{PREFIX}/{name}")["Body"].read()


def put(g, name: str, body: bytes) -> None:
    s3_client(g).put_object(Bucket=g.bucket, Key=f"{PREFIX}/{name}", Body=body)


def wal(g, instance: str) -> list[str]:
    return [k.rsplit("/", 1)[1] for k in keys(g, f"db/{instance}/wal/")]


def switch_and_wait_archived(g, port: int, instance: str, timeout: float = 120) -> str:
    seg = sql_value(port, "SELECT pg_walfile_name(pg_switch_wal())")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if seg in wal(g, instance):
            return seg
        time.sleep(0.3)
    raise AssertionError(f"{seg} not archived within {timeout}s: {wal(g, instance)}")


def utc_now_in_db(port: int) -> str:
    return sql_value(port, """SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')""")


def counts(port: int) -> str:
    return sql_value(port, "SELECT string_agg(phase || '=' || n, ',' ORDER BY phase) "
                           "FROM (SELECT phase, count(*) n FROM t GROUP BY phase) x")


def instance_names(server) -> list[str]:
    return sorted(i["name"] for i in db_json(server, "list")["instances"])


def test_backup_to_garage_then_point_in_time_restore_and_retention(make_server, garage):
    server = start(make_server, garage)
    kms = server.client()
    key = kms.create_key(Description="db backups in garage")["KeyMetadata"]["Arn"]
    src = create_db(server, "src", "--key", key, "--size", "1G")
    port = src["port"]
    marker = "MARKER-" + os.urandom(8).hex()
    psql(port, "CREATE TABLE t (id serial PRIMARY KEY, phase text NOT NULL, v text); "
               f"INSERT INTO t (phase, v) SELECT 'before', '{marker}' FROM generate_series(1, 500);")

    b = db_json(server, "backup", "src")
    i = src["id"]
    base = keys(garage, f"db/{i}/base/")
    assert base == [f"db/{i}/base/{b['id']}.json", f"db/{i}/base/{b['id']}.tar.enc"], base
    assert b["end_wal"] in wal(garage, i)
    assert get(garage, f"db/{i}/base/{b['id']}.tar.enc")[:8] == b"ATRBKUP\0"
    assert json.loads(get(garage, f"db/{i}/base/{b['id']}.json"))["id"] == b["id"]

    # More commits: A, the instant T, then B.
    psql(port, f"INSERT INTO t (phase, v) SELECT 'A', '{marker}' FROM generate_series(1, 40);")
    time.sleep(1.0)
    t = utc_now_in_db(port)
    time.sleep(1.0)
    psql(port, f"INSERT INTO t (phase, v) SELECT 'B', '{marker}' FROM generate_series(1, 30);")
    switch_and_wait_archived(garage, port, i)

    pitr = db_json(server, "restore", b["id"], "--as", "pitr", "--to-time", t)
    assert pitr["state"] == "running" and pitr["key_arn"] == key, pitr
    assert counts(pitr["port"]) == "A=40,before=500", counts(pitr["port"])
    full = db_json(server, "restore", b["id"], "--as", "full")
    assert counts(full["port"]) == "A=40,B=30,before=500"

    # No object in the bucket holds the plaintext marker (the database
    # does, so the scan could fail).
    all_keys = keys(garage)
    assert len(all_keys) >= 4, all_keys
    for k in all_keys:
        assert marker.encode() not in get(garage, k), k

    # Retention. A second backup; the first made to look 10 days old.
    b2 = db_json(server, "backup", "src")
    old = json.loads(get(garage, f"db/{i}/base/{b['id']}.json"))
    ten_days = (datetime.now(timezone.utc) - timedelta(days=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
    old["start_time"] = old["end_time"] = ten_days
    put(garage, f"db/{i}/base/{b['id']}.json", json.dumps(old).encode())
    wal_before = wal(garage, i)
    assert any(w[:24] < b2["start_wal"] for w in wal_before if not w.endswith(".history")), wal_before

    # 0 keeps everything; 30 days keeps both; 1 day removes the old one.
    v = db_json(server, "modify", "src", "--backup-retention-days", "30")
    assert v["backup_retention_days"] == 30, v
    assert {x["id"] for x in db_json(server, "backups", "src")["backups"]} == {b["id"], b2["id"]}
    v = db_json(server, "modify", "src", "--backup-retention-days", "1")
    assert v["backup_retention_days"] == 1
    assert [x["id"] for x in db_json(server, "backups", "src")["backups"]] == [b2["id"]]
    assert keys(garage, f"db/{i}/base/") == [f"db/{i}/base/{b2['id']}.json", f"db/{i}/base/{b2['id']}.tar.enc"]
    # The WAL before what the kept backup needs is gone; what it needs stays.
    left = [w for w in wal(garage, i) if not w.endswith(".history") and not w.endswith(".backup")]
    assert left and all(w[:24] >= b2["start_wal"] for w in left), (b2["start_wal"], left)
    # The newest backup is never expired, even when older than the window.
    newest = json.loads(get(garage, f"db/{i}/base/{b2['id']}.json"))
    newest["end_time"] = ten_days
    put(garage, f"db/{i}/base/{b2['id']}.json", json.dumps(newest).encode())
    db_json(server, "modify", "src", "--backup-retention-days", "1")
    assert [x["id"] for x in db_json(server, "backups", "src")["backups"]] == [b2["id"]]
    # Out of range.
    p = db_cmd(server, "modify", "src", "--backup-retention-days", "36", check=False)
    assert p.returncode != 0 and "ValidationException" in p.stderr, p.stderr
    # The kept backup restores.
    r = db_json(server, "restore", b2["id"], "--as", "kept")
    assert counts(r["port"]) == "A=40,B=30,before=500"


def code(body: dict) -> str:
    return (body.get("code") or body.get("__type") or "").rsplit("#", 1)[-1]


def backup_refused(server, words: tuple[str, ...]) -> None:
    r = rest_call(server, "POST", "/v1/instances/src/backups", {})
    assert r.status_code == 502, r.text
    body = r.json()
    assert code(body) == "ObjectStoreException", body
    assert "backup storage s3://" in body["message"], body
    assert any(w in body["message"] for w in words), body


def test_bad_stores_and_bad_objects_fail_typed_and_list_nothing(make_server, garage):
    # A store nobody listens on; wrong credentials; a missing bucket.
    dead = f"http://127.0.0.1:{free_port()}"
    for args, env, words in (
        (store_args(garage, endpoint=dead), store_env(garage), (dead.removeprefix("http://"), "unreachable")),
        (store_args(garage), store_env(garage, secret="0" * 64), ("denied", "Denied", "signature")),
        (store_args(garage, bucket="no-such-bucket-21"), store_env(garage), ("no-such-bucket-21",)),
    ):
        server = start(make_server, garage, args=args, env=env)
        kms = server.client()
        key = kms.create_key()["KeyMetadata"]["Arn"]
        create_db(server, "src", "--key", key, "--size", "1G")
        backup_refused(server, words)
        # Nothing is listed: the listing fails typed too (the store is
        # what it is), and the real bucket holds no manifest.
        r = rest_call(server, "GET", "/v1/backups")
        assert r.status_code == 502 and code(r.json()) == "ObjectStoreException", r.text
        assert [k for k in keys(garage, "db/") if k.endswith(".json")] == []
        db_cmd(server, "delete", "src")
        server.stop()

    # A tampered, then a truncated base backup.
    server = start(make_server, garage)
    kms = server.client()
    key = kms.create_key()["KeyMetadata"]["Arn"]
    src = create_db(server, "src", "--key", key, "--size", "1G")
    psql(src["port"], "CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 1000);")
    b = db_json(server, "backup", "src")
    obj = f"db/{src['id']}/base/{b['id']}.tar.enc"
    good = get(garage, obj)
    names = instance_names(server)
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0x01
    for body in (bytes(bad), good[: len(good) - 17], good[: len(good) // 3]):
        put(garage, obj, body)
        p = db_cmd(server, "restore", b["id"], "--as", "tampered", check=False)
        assert p.returncode != 0 and "tampered" in p.stderr and obj in p.stderr, p.stderr
        assert instance_names(server) == names
    # A missing base backup: typed, naming the object.
    s3_client(garage).delete_object(Bucket=garage.bucket, Key=f"{PREFIX}/{obj}")
    r = rest_call(server, "POST", f"/v1/backups/{b['id']}/restore", {"name": "missing"})
    assert r.status_code == 502 and obj in r.json()["message"], r.text
    assert instance_names(server) == names
    # Repaired, it restores.
    put(garage, obj, good)
    r = db_json(server, "restore", b["id"], "--as", "repaired")
    assert sql_value(r["port"], "SELECT count(*) FROM t") == "1000"


def test_backups_of_the_previous_release_are_uploaded_to_the_store(make_server, garage):
    """The previous release kept backups as files in `<data dir>/backups`.
    This release uploads them to the store under `db/` (WAL and base
    backups first, manifests last), keeps the directory renamed
    `backups.migrated-<time>`, lists the backup and restores it to a point
    in time."""
    from test_db_backup import previous_release_backup, wait_listed, wait_running

    server = make_server(env=store_env(garage))
    old_dir = server.data_dir / "backups"
    src, b, t = previous_release_backup(server, old_dir)
    old_files = sorted(str(p.relative_to(old_dir)) for p in old_dir.rglob("*") if p.is_file())
    server.start(*store_args(garage), timeout=120)
    wait_listed(server, b["id"])
    i = src["id"]
    stored = keys(garage, f"db/{i}/")
    for f in old_files:
        if not f.split("/")[-1].startswith("."):
            assert f"db/{f}" in stored, (f, stored)
    assert get(garage, f"db/{i}/base/{b['id']}.tar.enc") == \
        next(server.data_dir.glob("backups.migrated-*")).joinpath(i, "base", f"{b['id']}.tar.enc").read_bytes()
    assert not old_dir.exists()
    wait_running(server, "src")
    pitr = db_json(server, "restore", b["id"], "--as", "pitr", "--to-time", t)
    assert counts(pitr["port"]) == "A=40,before=500", counts(pitr["port"])
