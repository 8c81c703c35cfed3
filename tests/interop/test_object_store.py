"""Snapshots in object storage against a real S3 server (Garage, started on
loopback by the fixture), through the real binary, qemu-img and nbdcopy.

* A snapshot stored with `atrest disk snapshot --to-object-store` is
  uploaded as ciphertext: the local disk and snapshots deleted, a disk
  restored from it equals the original (`qemu-img compare`), and a scan of
  every object in the bucket finds neither the plaintext marker nor the
  plaintext data key.
* Incremental: after writing 1 % of a 1 GiB disk, the next snapshot sends
  at most twice what changed.
* SIGKILL during an upload and during garbage collection, at several
  points: committed snapshots restore byte-identical after restart; the
  interrupted upload completes; a deleted snapshot's blocks go, a kept
  one's stay.
* `atrest recover snapshot` (offline, the server stopped) writes the
  plaintext image: `cmp` equal.
* Bad input: an unreachable store, wrong credentials, a missing bucket, a
  tampered or truncated object: a typed error naming the store or the
  object, and nothing marked complete that is not.

Capabilities: O4, D5, B5, B7 (issue 21).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import atrest_client_cmd, free_port, new_account, new_user, rest_call
from garage_fixture import garage, s3_client  # noqa: F401  (fixture)

A = "111122223333"
ROOT_A = f"arn:aws:iam::{A}:root"
MARKER = b"ATREST-ISSUE21-PLAINTEXT-MARKER:"
MiB = 1 << 20

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("qemu-img", "nbdcopy")),
    reason="qemu-img and nbdcopy are needed (scripts/test.sh installs them)",
)


def run(*cmd: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check:
        assert p.returncode == 0, f"{cmd} failed:\n{p.stdout}\n{p.stderr}"
    return p


def store_args(g, prefix: str = "atrest", bucket: str | None = None, endpoint: str | None = None):
    return (
        "--object-store", f"s3://{bucket or g.bucket}/{prefix}",
        "--object-store-endpoint", endpoint or g.endpoint,
        "--object-store-region", g.region,
        "--object-store-path-style",
    )


def store_env(g, secret: str | None = None) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": g.access_key_id,
        "AWS_SECRET_ACCESS_KEY": secret or g.secret,
    }


class Env:
    """One server with NBD (plaintext on loopback, account A's root) whose
    snapshots go to the Garage bucket."""

    def __init__(self, make_server, g, *, extra_env: dict[str, str] | None = None,
                 args: tuple[str, ...] | None = None, env: dict[str, str] | None = None,
                 regions: tuple[str, ...] = ("us-east-1",)):
        self.nbd_port = free_port()
        self.g = g
        env = dict(env if env is not None else store_env(g))
        env.update(extra_env or {})
        self.server = make_server(
            args=(
                "--nbd-listen", f"127.0.0.1:{self.nbd_port}",
                "--nbd-plaintext-principal", ROOT_A,
                *(args if args is not None else store_args(g)),
            ),
            env=env,
            regions=regions,
        ).start()
        self.creds = new_account(self.server, A)
        self.work = make_server.workdir

    def cli(self, *args: str, check: bool = True):
        p = atrest_client_cmd(self.server, *args, env_creds=self.creds, check=check)
        return json.loads(p.stdout) if check else p

    def rest(self, method: str, path: str, body: dict | None = None):
        return rest_call(self.server, method, path, body, creds=self.creds)

    def uri(self, disk: str) -> str:
        return f"nbd://127.0.0.1:{self.nbd_port}/{disk}"

    def write_image(self, disk: str, image: Path) -> None:
        run("nbdcopy", str(image), self.uri(disk))

    def read_image(self, disk: str, out: Path) -> Path:
        run("nbdcopy", self.uri(disk), str(out))
        return out

    def wait_snapshot(self, sid: str, timeout: float = 300) -> dict:
        deadline = time.time() + timeout
        while True:
            s = self.rest("GET", f"/v1/snapshots/{sid}").json()
            if s.get("state") == "available" or time.time() > deadline:
                return s
            time.sleep(0.2)

    def wait_disk(self, did: str, timeout: float = 300) -> dict:
        deadline = time.time() + timeout
        while True:
            d = self.rest("GET", f"/v1/disks/{did}").json()
            if d.get("state") != "restoring" or time.time() > deadline:
                return d
            time.sleep(0.2)

    def job_of(self, kind: str, target: str) -> dict | None:
        jobs = self.rest("GET", "/v1/jobs").json()["jobs"]
        found = [j for j in jobs if j["kind"] == kind and j.get("target") == target]
        return found[-1] if found else None


def make_image(path: Path, size: int, seed: int, data_mib: int) -> Path:
    """A sparse raw image: `data_mib` MiB of random data with the plaintext
    marker in every 64 KiB, the rest zeros."""
    rnd = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        for mib in rnd.sample(range(size // MiB), data_mib):
            f.seek(mib * MiB)
            chunk = bytearray(rnd.randbytes(MiB))
            for at in range(0, MiB, 65536):
                chunk[at:at + len(MARKER)] = MARKER
            f.write(chunk)
    return path


def compare(a: Path, b: Path) -> None:
    p = run("qemu-img", "compare", "-f", "raw", "-F", "raw", str(a), str(b), check=False)
    assert p.returncode == 0, f"images differ: {p.stdout}{p.stderr}"


def list_keys(s3, bucket: str, prefix: str = "") -> list[str]:
    return [o["Key"]
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for o in page.get("Contents", [])]


def all_objects(s3, bucket: str, prefix: str = "") -> dict[str, bytes]:
    """Every object's bytes (one that disappears meanwhile, collected as
    garbage, is left out)."""
    out = {}
    for k in list_keys(s3, bucket, prefix):
        try:
            out[k] = s3.get_object(Bucket=bucket, Key=k)["Body"].read()
        except s3.exceptions.NoSuchKey:
            pass
    return out


def data_key_of(env: Env, kms, sid: str) -> bytes:
    """The snapshot's plaintext data key, from its manifest's wrapped key,
    decrypted by the customer (who may)."""
    s3 = s3_client(env.g)
    m = json.loads(s3.get_object(Bucket=env.g.bucket, Key=f"atrest/snapshots/{sid}/manifest")["Body"].read())
    import base64

    out = kms.decrypt(CiphertextBlob=base64.b64decode(m["key"]["wrapped"]),
                      EncryptionContext=m["key"]["context"])
    return out["Plaintext"]


def test_a_stored_snapshot_restores_byte_identical_and_the_bucket_holds_no_plaintext(make_server, garage):
    e = Env(make_server, garage)
    kms = e.server.client(creds=e.creds)
    key = kms.create_key()["KeyMetadata"]["Arn"]
    size = 64 * MiB
    src = make_image(e.work / "src.raw", size, seed=1, data_mib=24)
    d = e.cli("disk", "create", "--size", "64M", "--key-id", key)
    e.write_image(d["id"], src)

    s = e.cli("disk", "snapshot", d["id"], "--to-object-store")
    assert s["storage"] == "object-store" and s["state"] == "available", s
    assert s["key_arn"] == key and s["size"] == size and s["disk"] == d["id"], s
    # 24 MiB of data (in 512 KiB blocks, with the header): about that much sent.
    assert 24 * MiB <= s["uploaded_bytes"] <= 26 * MiB, s
    listed = e.cli("snapshot", "list")["snapshots"]
    assert [x["id"] for x in listed] == [s["id"]], "the upload's local source is gone"

    e.cli("disk", "delete", d["id"])
    r = e.cli("disk", "clone", s["id"])
    assert r["state"] == "available" and r["key_arn"] == key and r["size"] == size, r
    job = e.job_of("restore", r["id"])
    assert job and job["state"] == "succeeded" and job["source"] == s["id"], job
    compare(src, e.read_image(r["id"], e.work / "restored.raw"))

    # Every object: no plaintext marker, no plaintext data key.
    dk = data_key_of(e, kms, s["id"])
    assert len(dk) == 64
    objs = all_objects(s3_client(garage), garage.bucket)
    assert any(k.startswith("atrest/blocks/") for k in objs), list(objs)[:5]
    assert f"atrest/snapshots/{s['id']}/manifest" in objs
    for k, body in objs.items():
        assert MARKER not in body, f"plaintext marker in {k}"
        for part in (dk, dk[:32], dk[32:]):
            assert part not in body, f"plaintext data key in {k}"

    # Deleting the stored snapshot removes its objects (garbage collection).
    e.cli("snapshot", "delete", s["id"])
    deadline = time.time() + 60
    while time.time() < deadline and list_keys(s3_client(garage), garage.bucket):
        time.sleep(0.5)
    left = list_keys(s3_client(garage), garage.bucket)
    assert left == [], left
    assert e.cli("snapshot", "list")["snapshots"] == []


def test_the_second_snapshot_sends_about_what_changed(make_server, garage):
    e = Env(make_server, garage)
    size = 1 << 30
    src = make_image(e.work / "base.raw", size, seed=2, data_mib=64)
    d = e.cli("disk", "create", "--size", "1G")
    e.write_image(d["id"], src)
    s1 = e.cli("disk", "snapshot", d["id"], "--to-object-store")
    assert s1["state"] == "available", s1

    # 1 % of the disk: twenty 512 KiB writes (10 MiB) at random places.
    rnd = random.Random(3)
    changed = 0
    with open(src, "r+b") as f:
        for _ in range(20):
            off = rnd.randrange(0, size // (512 << 10)) * (512 << 10)
            f.seek(off)
            f.write(rnd.randbytes(512 << 10))
            changed += 512 << 10
    # The whole image again: unchanged data encrypts to the same ciphertext
    # (same key, same sectors), so only the changed blocks are new.
    e.write_image(d["id"], src)
    s2 = e.cli("disk", "snapshot", d["id"], "--to-object-store")
    assert s2["state"] == "available", s2
    assert changed <= s2["uploaded_bytes"] <= 2 * changed, (changed, s2["uploaded_bytes"])

    r = e.cli("disk", "clone", s2["id"])
    compare(src, e.read_image(r["id"], e.work / "r2.raw"))


def test_sigkill_during_upload_and_garbage_collection(make_server, garage):
    e = Env(make_server, garage, extra_env={"ATREST_TEST_GC_STEP_MS": "40"})
    size = 256 * MiB
    img1 = make_image(e.work / "one.raw", size, seed=4, data_mib=96)
    d = e.cli("disk", "create", "--size", "256M")
    e.write_image(d["id"], img1)
    keep = e.cli("disk", "snapshot", d["id"], "--to-object-store")
    assert keep["state"] == "available", keep

    img2 = make_image(e.work / "two.raw", size, seed=5, data_mib=96)
    e.write_image(d["id"], img2)
    # Killed twice while uploading, at different points.
    s = e.rest("POST", "/v1/snapshots", {"disk_id": d["id"], "to_object_store": True}).json()
    assert s["state"] == "uploading" and s["job"], s
    for frac in (0.2, 0.6):
        deadline = time.time() + 120
        while time.time() < deadline:
            v = e.rest("GET", f"/v1/snapshots/{s['id']}").json()
            p = v.get("progress") or {"done": v["size"], "total": v["size"]}
            if p["done"] >= frac * p["total"]:
                break
            time.sleep(0.05)
        e.server.kill()
        e.server.start()
        v = e.rest("GET", f"/v1/snapshots/{s['id']}").json()
        assert v["state"] in ("uploading", "available"), v
    assert e.wait_snapshot(s["id"])["state"] == "available"

    # Both restore byte-identical.
    for sid, img in ((keep["id"], img1), (s["id"], img2)):
        r = e.cli("disk", "clone", sid)
        compare(img, e.read_image(r["id"], e.work / f"{sid}.raw"))
        e.cli("disk", "delete", r["id"])

    # Garbage collection killed at several points: `keep` is deleted, `s`
    # stays and keeps restoring.
    s3 = s3_client(garage)
    before = len(list_keys(s3, garage.bucket, "atrest/blocks/"))
    e.cli("snapshot", "delete", keep["id"])
    for _ in range(2):
        deadline = time.time() + 60
        while time.time() < deadline and len(list_keys(s3, garage.bucket, "atrest/blocks/")) >= before:
            time.sleep(0.05)
        time.sleep(0.3)
        e.server.kill()
        before = len(list_keys(s3, garage.bucket, "atrest/blocks/"))
        e.server.start()
    deadline = time.time() + 120
    while time.time() < deadline:
        names = all_objects(s3, garage.bucket, "atrest/")
        if f"atrest/snapshots/{keep['id']}/manifest" not in names:
            break
        time.sleep(0.5)
    names = all_objects(s3, garage.bucket, "atrest/")
    manifest = json.loads(names[f"atrest/snapshots/{s['id']}/manifest"])
    live = {f"atrest/blocks/{manifest['lineage']}/{dg}" for dg in manifest["blocks"].values()}
    blocks = {k for k in names if k.startswith("atrest/blocks/")}
    assert blocks == live, (len(blocks), len(live))
    assert [x["id"] for x in e.cli("snapshot", "list")["snapshots"]] == [s["id"]]
    r = e.cli("disk", "clone", s["id"])
    compare(img2, e.read_image(r["id"], e.work / "after-gc.raw"))


def test_recover_offline_equals_the_disk(make_server, garage):
    e = Env(make_server, garage)
    src = make_image(e.work / "rec.raw", 32 * MiB, seed=6, data_mib=12)
    d = e.cli("disk", "create", "--size", "32M", "--block-size", "4096")
    e.write_image(d["id"], src)
    s = e.cli("disk", "snapshot", d["id"], "--to-object-store")
    e.server.stop()
    out = e.work / "recovered.raw"
    env = dict(os.environ, **store_env(garage))
    p = subprocess.run(
        [str(atrest_bin()), "recover", "snapshot", "--from", f"s3://{garage.bucket}/atrest",
         "--object-store-endpoint", garage.endpoint, "--object-store-region", garage.region,
         "--object-store-path-style", "--id", s["id"], "--out", str(out),
         "--data-dir", str(e.server.data_dir)],
        capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert run("cmp", str(src), str(out), check=False).returncode == 0
    assert out.stat().st_mode & 0o777 == 0o600, oct(out.stat().st_mode)
    # An unknown id: a clear error, no file left.
    bad = e.work / "none.raw"
    p = subprocess.run(
        [str(atrest_bin()), "recover", "snapshot", "--from", f"s3://{garage.bucket}/atrest",
         "--object-store-endpoint", garage.endpoint, "--object-store-region", garage.region,
         "--object-store-path-style", "--id", "snap-0000000000000000", "--out", str(bad),
         "--data-dir", str(e.server.data_dir)],
        capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode != 0 and "snap-0000000000000000" in p.stderr and not bad.exists(), p.stderr


def atrest_bin() -> Path:
    from conftest import ATREST_BIN

    return ATREST_BIN


def failed_upload(e: Env, disk: str) -> tuple[dict, dict]:
    s = e.rest("POST", "/v1/snapshots", {"disk_id": disk, "to_object_store": True}).json()
    deadline = time.time() + 60
    while time.time() < deadline:
        j = e.rest("GET", f"/v1/jobs/{s['job']}").json()["job"]
        if j["state"] != "running":
            break
        time.sleep(0.2)
    return e.rest("GET", f"/v1/snapshots/{s['id']}").json(), j


def test_bad_stores_and_bad_objects_fail_typed_and_mark_nothing_complete(make_server, garage):
    # A store nobody listens on.
    dead = f"http://127.0.0.1:{free_port()}"
    e = Env(make_server, garage, args=store_args(garage, endpoint=dead))
    d = e.cli("disk", "create", "--size", "4M")
    run("nbdcopy", str(make_image(e.work / "small.raw", 4 * MiB, 7, 2)), e.uri(d["id"]))
    s, j = failed_upload(e, d["id"])
    assert j["state"] == "failed" and s["state"] == "uploading", (s, j)
    assert "127.0.0.1" in j["error"], j
    e.server.stop()

    # Wrong credentials; then a bucket that does not exist.
    for args, env, words in (
        (store_args(garage), store_env(garage, secret="0" * 64), ("denied", "Denied", "credential", "signature")),
        (store_args(garage, bucket="no-such-bucket-21"), store_env(garage), ("no-such-bucket-21",)),
    ):
        e = Env(make_server, garage, args=args, env=env)
        d = e.cli("disk", "create", "--size", "4M")
        run("nbdcopy", str(make_image(e.work / "small.raw", 4 * MiB, 7, 2)), e.uri(d["id"]))
        s, j = failed_upload(e, d["id"])
        assert j["state"] == "failed" and s["state"] == "uploading", (s, j)
        assert any(w in j["error"] for w in words), j
        assert e.rest("POST", "/v1/disks", {"snapshot_id": s["id"]}).status_code == 409
        e.server.stop()

    # A tampered block, then a truncated manifest.
    e = Env(make_server, garage)
    src = make_image(e.work / "t.raw", 8 * MiB, 8, 4)
    d = e.cli("disk", "create", "--size", "8M")
    e.write_image(d["id"], src)
    s = e.cli("disk", "snapshot", d["id"], "--to-object-store")
    s3 = s3_client(garage)
    mkey = f"atrest/snapshots/{s['id']}/manifest"
    m = json.loads(s3.get_object(Bucket=garage.bucket, Key=mkey)["Body"].read())
    victim = f"atrest/blocks/{m['lineage']}/{next(iter(m['blocks'].values()))}"
    body = bytearray(s3.get_object(Bucket=garage.bucket, Key=victim)["Body"].read())
    body[100] ^= 0xFF
    s3.put_object(Bucket=garage.bucket, Key=victim, Body=bytes(body))
    r = e.rest("POST", "/v1/disks", {"snapshot_id": s["id"]}).json()
    assert r["state"] == "restoring", r
    deadline = time.time() + 60
    while time.time() < deadline:
        j = e.job_of("restore", r["id"])
        if j and j["state"] != "running":
            break
        time.sleep(0.2)
    assert j["state"] == "failed" and victim.removeprefix("atrest/") in j["error"], j
    assert e.rest("GET", f"/v1/disks/{r['id']}").json()["state"] == "restoring"
    att = e.rest("POST", f"/v1/disks/{r['id']}/attach-local", {})
    assert att.status_code == 409, att.text

    manifest = s3.get_object(Bucket=garage.bucket, Key=mkey)["Body"].read()
    s3.put_object(Bucket=garage.bucket, Key=mkey, Body=manifest[: len(manifest) // 2])
    resp = e.rest("POST", "/v1/disks", {"snapshot_id": s["id"]})
    assert resp.status_code == 502, (resp.status_code, resp.headers, resp.text)
    err = resp.json()
    assert err["code"] == "ObjectStoreException" and "manifest" in err["message"], err


def test_restore_on_a_second_server_through_the_first_servers_key_service(make_server, garage):
    """Server A stores a snapshot and loses the disk; server B (another data
    dir, the same bucket) restores it: A's key service decrypts the data key
    for B's provider principal (allowed by A's policy), and B re-encrypts the
    disk under its own key."""
    a = Env(make_server, garage)
    kms_a = a.server.client(creds=a.creds)
    key_a = kms_a.create_key()["KeyMetadata"]["Arn"]
    src = make_image(a.work / "portable.raw", 16 * MiB, seed=11, data_mib=6)
    d = a.cli("disk", "create", "--size", "16M", "--key-id", key_a)
    a.write_image(d["id"], src)
    s = a.cli("disk", "snapshot", d["id"], "--to-object-store")
    a.cli("disk", "delete", d["id"])
    # B's principal at A: a user of the same account allowed to decrypt with the key.
    b_at_a = new_user(a.server, A, "restorer", policy={"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "kms:Decrypt", "Resource": key_a}]})
    providers = make_server.workdir / "providers-b.json"
    providers.write_text(json.dumps({"siteA": {
        "type": "aws-kms", "region": "us-east-1", "endpoint": a.server.url,
        "access_key_id": b_at_a[0], "secret_access_key": b_at_a[1], "timeout_ms": 5000, "retries": 1}}))
    os.chmod(providers, 0o600)
    b = Env(make_server, garage, args=(*store_args(garage), "--key-providers", str(providers)))
    kms_b = b.server.client(creds=b.creds)
    key_b = kms_b.create_key()["KeyMetadata"]["Arn"]

    # B has no record of it: without the provider it is unknown.
    assert b.rest("POST", "/v1/disks", {"snapshot_id": s["id"]}).status_code == 404
    r = b.cli("snapshot", "restore", s["id"], "--source-key-provider", "siteA", "--key-id", key_b)
    assert r["state"] == "available" and r["key_arn"] == key_b and r["size"] == 16 * MiB, r
    compare(src, b.read_image(r["id"], b.work / "on-b.raw"))

    # Another account of B cannot restore it (snapshots are not shared).
    other = new_account(b.server, "444455556666")
    resp = rest_call(b.server, "POST", "/v1/disks",
                     {"snapshot_id": s["id"], "source_key_provider": "siteA"}, creds=other)
    assert resp.status_code == 404, resp.text
    # On A, where the record is, another account is told nothing more.
    other_a = new_account(a.server, "444455556666")
    resp = rest_call(a.server, "POST", "/v1/disks",
                     {"snapshot_id": s["id"], "source_key_provider": "siteA"}, creds=other_a)
    assert resp.status_code == 404, resp.text
    # A tampered manifest is refused (its MAC), naming it.
    s3 = s3_client(garage)
    mkey = f"atrest/snapshots/{s['id']}/manifest"
    m = json.loads(s3.get_object(Bucket=garage.bucket, Key=mkey)["Body"].read())
    m["size"] = 32 * MiB
    s3.put_object(Bucket=garage.bucket, Key=mkey, Body=json.dumps(m).encode())
    resp = b.rest("POST", "/v1/disks", {"snapshot_id": s["id"], "source_key_provider": "siteA"})
    assert resp.status_code == 502 and "manifest" in resp.json()["message"], resp.text
    # The key's owner at A disables it: B can no longer restore; the disk
    # B restored is under B's key and stays readable.
    s3.put_object(Bucket=garage.bucket, Key=mkey, Body=json.dumps({**m, "size": 16 * MiB}).encode())
    kms_a.disable_key(KeyId=key_a)
    resp = b.rest("POST", "/v1/disks", {"snapshot_id": s["id"], "source_key_provider": "siteA"})
    assert resp.status_code in (400, 409) and "siteA" in resp.text, resp.text
    compare(src, b.read_image(r["id"], b.work / "on-b-again.raw"))


def test_a_copy_to_another_region_is_under_that_regions_key_alone(make_server, garage):
    west = garage.new_bucket("west-bucket")
    e = Env(make_server, garage, regions=("us-east-1", "eu-west-1"), args=(
        *store_args(garage), "--region-object-store", "eu-west-1=s3://west-bucket/atrest"))
    kms = e.server.client(creds=e.creds)
    kms_west = e.server.client(creds=e.creds, region="eu-west-1")
    key = kms.create_key()["KeyMetadata"]["Arn"]
    key_west = kms_west.create_key()["KeyMetadata"]["Arn"]
    src = make_image(e.work / "region.raw", 8 * MiB, seed=12, data_mib=3)
    d = e.cli("disk", "create", "--size", "8M", "--key-id", key)
    e.write_image(d["id"], src)
    s = e.cli("disk", "snapshot", d["id"], "--to-object-store")
    c = e.cli("snapshot", "copy", s["id"], "--to-region", "eu-west-1", "--key", key_west)
    assert c["state"] == "available" and c["key_arn"] == key_west and c["region"] == "eu-west-1", c
    s3 = s3_client(garage)
    keys = list_keys(s3, west, "atrest/")
    assert f"atrest/snapshots/{c['id']}/manifest" in keys and any("/blocks/" in k for k in keys), keys
    # Re-encrypted: no block of the copy is a block of the source.
    src_blocks = {k.rsplit("/", 1)[1] for k in list_keys(s3, garage.bucket, "atrest/blocks/")}
    assert not src_blocks & {k.rsplit("/", 1)[1] for k in keys if "/blocks/" in k}
    # The copy's data key is wrapped by the destination key: the source key cannot open it.
    m = json.loads(s3.get_object(Bucket=west, Key=f"atrest/snapshots/{c['id']}/manifest")["Body"].read())
    import base64
    blob = base64.b64decode(m["key"]["wrapped"])
    assert kms_west.decrypt(CiphertextBlob=blob, EncryptionContext=m["key"]["context"])["KeyId"] == key_west
    with pytest.raises(Exception):
        kms.decrypt(CiphertextBlob=blob, EncryptionContext=m["key"]["context"], KeyId=key)

    west_creds = (e.creds[0], e.creds[1])

    def restore_west():
        return rest_call(e.server, "POST", "/v1/disks", {"snapshot_id": c["id"]}, creds=west_creds,
                         region="eu-west-1")

    # Disabling the source key leaves the copy usable.
    kms.disable_key(KeyId=key)
    r = restore_west().json()
    deadline = time.time() + 60
    while time.time() < deadline:
        v = rest_call(e.server, "GET", f"/v1/disks/{r['id']}", creds=west_creds, region="eu-west-1").json()
        if v["state"] != "restoring":
            break
        time.sleep(0.2)
    assert v["state"] == "available" and v["key_arn"] == key_west, v
    out = e.work / "west.raw"
    # Read it back through the disk's region (NBD finds the disk by id).
    compare(src, e.read_image(r["id"], out))
    # Disabling the destination key locks it.
    kms_west.disable_key(KeyId=key_west)
    resp = restore_west()
    assert resp.status_code == 409 and resp.json()["code"] == "DiskLockedException", resp.text
