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

* Copy to another region (issue 21): a backup copied to eu-west-1 under
  a key there holds the WAL archived since it began, re-encrypted; it is
  listed and restored in eu-west-1 with the source key disabled, and is
  refused naming the destination key once that is disabled.

Capabilities: R3 (issue 21).
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timedelta, timezone

from conftest import (
    DB_PASSWORD,
    atrest_client_cmd,
    atrest_run,
    create_db,
    db_cmd,
    db_json,
    free_port,
    new_account,
    new_user,
    psql,
    rest_call,
    sql_value,
)
from garage_fixture import garage, s3_client  # noqa: F401  (fixture)
# At collection, before the session scrubs ATREST_* from the environment:
# test_db_backup reads ATREST_PREV_BIN when it is imported.
from test_db_backup import previous_release_backup, wait_listed, wait_running

PREFIX = "atrest"
ACCOUNT = "111122223333"


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


def as_account(server, creds, *args: str, check: bool = True):
    """`atrest db <args>` as `creds` (an account's root), parsed if it
    succeeded."""
    p = atrest_client_cmd(server, "db", *args, env_creds=creds, check=check)
    return json.loads(p.stdout) if check else p


def test_point_in_time_restore_on_a_second_server_through_the_first_servers_key_service(make_server, garage):
    """Issue 21: backup to the store, more commits, point-in-time restore
    on the second server to a time between them: the rows of before are
    there, the rows of after are not. Server B (another data dir, the same
    bucket and prefix) has no record of the backup; A's key service
    decrypts its data keys for B's provider principal (a user at A allowed
    kms:Decrypt), and the new instance is under B's own key. Another
    account of B cannot see it."""
    a = start(make_server, garage)
    creds_a = new_account(a, ACCOUNT)
    key_a = a.client(creds=creds_a).create_key(Description="db on A")["KeyMetadata"]["Arn"]
    pw = make_server.workdir / "pw"
    pw.write_text(DB_PASSWORD + "\n")
    src = as_account(a, creds_a, "create", "src", "--password-file", str(pw), "--key", key_a, "--size", "1G")
    port = src["port"]
    psql(port, "CREATE TABLE t (id serial PRIMARY KEY, phase text NOT NULL); "
               "INSERT INTO t (phase) SELECT 'before' FROM generate_series(1, 500);")
    b = as_account(a, creds_a, "backup", "src")
    psql(port, "INSERT INTO t (phase) SELECT 'A' FROM generate_series(1, 40);")
    time.sleep(1.0)
    t = utc_now_in_db(port)
    time.sleep(1.0)
    psql(port, "INSERT INTO t (phase) SELECT 'B' FROM generate_series(1, 30);")
    switch_and_wait_archived(garage, port, src["id"])

    b_at_a = new_user(a, ACCOUNT, "restorer", policy={"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "kms:Decrypt", "Resource": key_a}]})
    providers = make_server.workdir / "providers-b.json"
    providers.write_text(json.dumps({"siteA": {
        "type": "aws-kms", "region": "us-east-1", "endpoint": a.url,
        "access_key_id": b_at_a[0], "secret_access_key": b_at_a[1], "timeout_ms": 5000, "retries": 1}}))
    os.chmod(providers, 0o600)
    srv_b = start(make_server, garage, args=(*store_args(garage), "--key-providers", str(providers)))
    creds_b = new_account(srv_b, ACCOUNT)

    # Without the provider B cannot open it (its own key service did not
    # wrap the data keys); nothing is left behind.
    p = as_account(srv_b, creds_b, "restore", b["id"], "--as", "nokey", "--to-time", t, check=False)
    assert p.returncode != 0, p.stdout
    assert as_account(srv_b, creds_b, "list")["instances"] == []
    r = as_account(srv_b, creds_b, "restore", b["id"], "--as", "onb", "--to-time", t,
                   "--source-key-provider", "siteA")
    assert r["state"] == "running", r
    assert r["key_arn"] != key_a and ":111122223333:" in r["key_arn"], r
    assert counts(r["port"]) == "A=40,before=500", counts(r["port"])
    # The restored instance is B's own: it writes and is backed up on B.
    psql(r["port"], "INSERT INTO t (phase) SELECT 'onb' FROM generate_series(1, 3);")
    b2 = as_account(srv_b, creds_b, "backup", "onb")
    assert b2["instance_id"] == r["id"] and b2["key_arn"] == r["key_arn"], b2

    # Another account of B: not found.
    other = new_account(srv_b, "444455556666")
    resp = rest_call(srv_b, "POST", f"/v1/backups/{b['id']}/restore",
                     {"name": "theirs", "source_key_provider": "siteA"}, creds=other)
    assert resp.status_code == 404, resp.text
    # An unknown provider is refused, naming it.
    resp = rest_call(srv_b, "POST", f"/v1/backups/{b['id']}/restore",
                     {"name": "x", "source_key_provider": "nowhere"}, creds=creds_b)
    assert resp.status_code in (400, 404) and "nowhere" in resp.text, resp.text
    # key_id alone is refused.
    resp = rest_call(srv_b, "POST", f"/v1/backups/{b['id']}/restore",
                     {"name": "x", "key_id": "alias/whatever"}, creds=creds_b)
    assert resp.status_code == 400, resp.text


EU = "eu-west-1"


def db_in(server, region: str, *args: str, check: bool = True):
    """`atrest db <args>` signed for `region`, parsed if it must succeed."""
    p = atrest_run("db", "--endpoint", server.url, "--region", region,
                   "--credentials-file", str(server.credentials_file), *args,
                   check=check, timeout=600)
    return json.loads(p.stdout) if check else p


def test_a_backup_copied_to_another_region_restores_there_without_the_source_key(make_server, garage):
    server = make_server(regions=("us-east-1", EU), args=store_args(garage), env=store_env(garage)).start()
    src_kms, eu_kms = server.client(), server.client(region=EU)
    src_key = src_kms.create_key(Description="db in us-east-1")["KeyMetadata"]["Arn"]
    eu_key = eu_kms.create_key(Description="copies in eu-west-1")["KeyMetadata"]["Arn"]
    assert f":{EU}:" in eu_key
    src = create_db(server, "src", "--key", src_key, "--size", "1G")
    port, i = src["port"], src["id"]
    marker = "MARKER-" + os.urandom(8).hex()
    psql(port, "CREATE TABLE t (id serial PRIMARY KEY, phase text NOT NULL, v text); "
               f"INSERT INTO t (phase, v) SELECT 'before', '{marker}' FROM generate_series(1, 500);")
    b = db_json(server, "backup", "src")
    # More commits after the backup: the copy carries them (it flushes the
    # source's current WAL to the archive first).
    psql(port, f"INSERT INTO t (phase, v) SELECT 'after', '{marker}' FROM generate_series(1, 40);")

    # Refusals: an unknown region, a key that cannot be used, another
    # account's backup.
    r = rest_call(server, "POST", f"/v1/backups/{b['id']}/copy", {"region": "mars-north-1"})
    assert r.status_code == 400 and "mars-north-1" in r.text, r.text
    off = eu_kms.create_key(Description="disabled")["KeyMetadata"]["Arn"]
    eu_kms.disable_key(KeyId=off)
    r = rest_call(server, "POST", f"/v1/backups/{b['id']}/copy", {"region": EU, "key_id": off})
    assert r.status_code == 409 and off in r.text, r.text
    other = new_account(server, "444455556666")
    r = rest_call(server, "POST", f"/v1/backups/{b['id']}/copy", {"region": EU}, creds=other)
    assert r.status_code == 404, r.text
    assert keys(garage, "db/") == sorted(k for k in keys(garage, f"db/{i}/")), keys(garage, "db/")

    c = db_json(server, "backup-copy", b["id"], "--to-region", EU, "--key-id", eu_key)
    assert c["id"] != b["id"] and c["copy_of"] == b["id"], c
    assert c["region"] == EU and c["key_arn"] == eu_key and c["instance_id"] == c["id"], c
    assert (c["start_wal"], c["end_wal"], c["end_time"]) == (b["start_wal"], b["end_wal"], b["end_time"])
    ns = c["instance_id"]
    copied = keys(garage, f"db/{ns}/")
    assert f"db/{ns}/base/{c['id']}.json" in copied and f"db/{ns}/base/{c['id']}.tar.enc" in copied, copied
    copied_wal = wal(garage, ns)
    assert b["end_wal"] in copied_wal and all(
        w.endswith(".history") or w[:24] >= b["start_wal"] for w in copied_wal), copied_wal
    assert set(copied_wal) <= set(wal(garage, i))
    # Re-encrypted: other bytes, under the destination key; no plaintext.
    assert get(garage, f"db/{ns}/base/{c['id']}.tar.enc") != get(garage, f"db/{i}/base/{b['id']}.tar.enc")
    for k in copied:
        body = get(garage, k)
        assert marker.encode() not in body, k
        if k.endswith(".tar.enc") or "/wal/" in k:
            assert eu_key.encode() in body[:8192] and src_key.encode() not in body[:8192], k
    # Listed in eu-west-1 (not in us-east-1).
    assert [x["id"] for x in db_in(server, EU, "backups")["backups"]] == [c["id"]]
    assert c["id"] not in [x["id"] for x in db_json(server, "backups")["backups"]]

    # The source key disabled: the copy still restores in eu-west-1, with
    # the commits made after the backup.
    src_kms.disable_key(KeyId=src_key)
    r = db_in(server, EU, "restore", c["id"], "--as", "eu-copy")
    assert r["state"] == "running" and r["key_arn"] == eu_key, r
    assert counts(r["port"]) == "after=40,before=500", counts(r["port"])
    # To a time: the backup's end (only the rows of before).
    r2 = db_in(server, EU, "restore", c["id"], "--as", "eu-pitr", "--to-time", c["end_time"])
    assert counts(r2["port"]) == "before=500", counts(r2["port"])

    # The destination key disabled: restoring the copy is refused naming it.
    eu_kms.disable_key(KeyId=eu_key)
    p = db_in(server, EU, "restore", c["id"], "--as", "eu-locked", check=False)
    assert p.returncode != 0 and eu_key in p.stderr, p.stderr
