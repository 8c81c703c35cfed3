"""Encrypted disks through the real server: the `atrest disk` and
`atrest snapshot` commands, the REST API under /v1/disks, /v1/snapshots and
/v1/jobs (SigV4 service `atrest`), and the key service seen through boto3.

* The whole lifecycle through the CLI: create (under a customer key and
  under the default disk service key), list, show, snapshot, clone,
  rollback, resize, rekey to another key (re-wrap), rekey --reencrypt and
  convert (jobs followed to the end), regrant, snapshot list/show/delete,
  delete. The service's grants appear on the customer's key in ListGrants.
* Locking: with the key disabled, snapshot, clone, rollback, rekey and
  re-encrypt answer 409 DiskLockedException naming the key and the reason;
  enabling the key unlocks. A revoked grant locks likewise; regrant unlocks.
* Audit and metering: every disk operation is recorded (`disk:<Op>`) and
  metered to the owning account; the service's key-service calls are the
  account's too. (Attach and detach have no REST call: the Rust tests of
  the disk service check their records; NBD attaches come with issue 5.)
* Bad input: sizes, block sizes, unknown members, wrong types, unknown ids,
  another account's disk: typed 4xx errors, nothing created.

Capabilities: D1, D2, D5, D6, D7, D8, D9 (and K9 for disk operations).
"""

from __future__ import annotations

import json
import time

from conftest import (
    audit_log_path,
    audit_records,
    atrest_client_cmd,
    new_account,
    rest_call,
)

A = "111122223333"
B = "444455556666"


def disk_cmd(server, creds, *args, check=True):
    p = atrest_client_cmd(server, "disk", *args, env_creds=creds, check=check)
    return json.loads(p.stdout) if check else p


def snap_cmd(server, creds, *args, check=True):
    p = atrest_client_cmd(server, "snapshot", *args, env_creds=creds, check=check)
    return json.loads(p.stdout) if check else p


def test_the_disk_lifecycle_through_the_cli(server):
    creds = new_account(server, A)
    kms = server.client(creds=creds)
    key = kms.create_key()["KeyMetadata"]["Arn"]
    key2 = kms.create_key()["KeyMetadata"]["Arn"]

    d = disk_cmd(server, creds, "create", "--size", "64M", "--key-id", key)
    assert d["encrypted"] is True and d["key_arn"] == key and d["size"] == 64 << 20, d
    assert d["account"] == A and d["state"] == "available" and d["id"].startswith("disk-"), d
    grants = kms.list_grants(KeyId=key)["Grants"]
    assert any(g["GranteePrincipal"] == "disk.atrest"
               and g["Constraints"]["EncryptionContextSubset"] == {"atrest:disk:id": d["id"]}
               for g in grants), grants

    dflt = disk_cmd(server, creds, "create", "--size", "1G", "--block-size", "4096")
    svc_key = kms.describe_key(KeyId="alias/atrest/disk")["KeyMetadata"]
    assert dflt["key_arn"] == svc_key["Arn"] and svc_key["KeyManager"] == "AWS", (dflt, svc_key)
    plain = disk_cmd(server, creds, "create", "--size", "4096", "--unencrypted")
    assert plain["encrypted"] is False and "key_arn" not in plain, plain

    ids = {x["id"] for x in disk_cmd(server, creds, "list")["disks"]}
    assert ids == {d["id"], dflt["id"], plain["id"]}
    assert disk_cmd(server, creds, "show", d["id"])["id"] == d["id"]

    s = disk_cmd(server, creds, "snapshot", d["id"])
    assert s["disk"] == d["id"] and s["key_arn"] == key and s["size"] == 64 << 20, s
    c = disk_cmd(server, creds, "clone", s["id"])
    assert c["origin"] == s["id"] and c["key_arn"] == key and c["id"] != d["id"], c
    r = disk_cmd(server, creds, "rollback", d["id"], "--snapshot", s["id"])
    assert r["id"] == d["id"], r
    g = disk_cmd(server, creds, "resize", d["id"], "--size", "128M")
    assert g["size"] == 128 << 20, g

    moved = disk_cmd(server, creds, "rekey", d["id"], "--key-id", key2)
    assert moved["key_arn"] == key2, moved
    assert any(gr["Constraints"]["EncryptionContextSubset"] == {"atrest:disk:id": d["id"]}
               for gr in kms.list_grants(KeyId=key2)["Grants"])
    assert not any(gr["Constraints"]["EncryptionContextSubset"] == {"atrest:disk:id": d["id"]}
                   for gr in kms.list_grants(KeyId=key)["Grants"]), "old grant retired"

    after = disk_cmd(server, creds, "rekey", d["id"], "--reencrypt")
    assert after["key_arn"] == key2 and after["state"] == "available" and "reencrypt" not in after, after
    jobs = disk_cmd(server, creds, "jobs")["jobs"]
    assert [j["state"] for j in jobs if j["kind"] == "reencrypt"] == ["succeeded"], jobs

    conv = disk_cmd(server, creds, "convert", plain["id"], "--encrypted", "--key-id", key)
    assert conv["encrypted"] is True and conv["key_arn"] == key and conv["size"] == 4096, conv
    job = [j for j in disk_cmd(server, creds, "jobs")["jobs"] if j["kind"] == "convert"][0]
    assert job["state"] == "succeeded" and job["target"] == conv["id"], job
    assert job["progress"]["done"] == job["progress"]["total"] == 4096, job
    followed = disk_cmd(server, creds, "job", job["id"], "--follow")
    assert followed["id"] == job["id"] and followed["state"] == "succeeded"

    snaps = snap_cmd(server, creds, "list")["snapshots"]
    assert [x["id"] for x in snaps] == [s["id"]]
    assert snap_cmd(server, creds, "show", s["id"])["disk"] == d["id"]
    # The snapshot is referred to by the clone: deleting it keeps the clone readable.
    snap_cmd(server, creds, "delete", s["id"])
    assert snap_cmd(server, creds, "list")["snapshots"] == []
    for x in (d["id"], c["id"], dflt["id"], plain["id"], conv["id"]):
        disk_cmd(server, creds, "delete", x)
    assert disk_cmd(server, creds, "list")["disks"] == []
    for k in (key, key2):
        left = [gr for gr in kms.list_grants(KeyId=k)["Grants"] if gr["GranteePrincipal"] == "disk.atrest"]
        assert left == [], f"grants of deleted disks are retired: {left}"

    # Audited and metered as the account's.
    recs = audit_records(audit_log_path(server))
    ops = {r["operation"] for r in recs if r.get("account") == A}
    for op in ("disk:CreateDisk", "disk:CreateSnapshot", "disk:RollbackDisk", "disk:RekeyDisk",
               "disk:ConvertDisk", "disk:DeleteDisk", "CreateGrant", "GenerateDataKeyWithoutPlaintext", "ReEncrypt", "Decrypt"):
        assert op in ops, (op, sorted(ops))
    create = [r for r in recs if r["operation"] == "disk:CreateDisk" and r.get("key_arn") == key]
    assert create and create[0]["result"] == "Success", create
    usage = json.loads(atrest_client_cmd(server, "metering", env_creds=creds).stdout)["usage"]
    metered = {u["operation"] for u in usage if u["account"] == A}
    assert {"disk:CreateDisk", "disk:CreateSnapshot", "disk:RollbackDisk", "Decrypt"} <= metered, metered


def test_a_locked_key_refuses_each_operation_and_unlocks(server):
    creds = new_account(server, A)
    kms = server.client(creds=creds)
    key = kms.create_key()["KeyMetadata"]["Arn"]
    other = kms.create_key()["KeyMetadata"]["Arn"]
    d = disk_cmd(server, creds, "create", "--size", "1M", "--key-id", key)
    s = disk_cmd(server, creds, "snapshot", d["id"])

    def attempts():
        return {
            "snapshot": rest_call(server, "POST", "/v1/snapshots", {"disk_id": d["id"]}, creds=creds),
            "clone": rest_call(server, "POST", "/v1/disks", {"snapshot_id": s["id"]}, creds=creds),
            "rollback": rest_call(server, "POST", f"/v1/disks/{d['id']}/rollback", {"snapshot_id": s["id"]}, creds=creds),
            "rekey": rest_call(server, "POST", f"/v1/disks/{d['id']}/rekey", {"key_id": other}, creds=creds),
            "reencrypt": rest_call(server, "POST", f"/v1/disks/{d['id']}/rekey", {"reencrypt": True}, creds=creds),
        }

    kms.disable_key(KeyId=key)
    for op, resp in attempts().items():
        body = resp.json()
        assert resp.status_code == 409 and body["code"] == "DiskLockedException", (op, resp.status_code, body)
        assert key in body["message"] and "disabled" in body["message"], (op, body)
    assert len(disk_cmd(server, creds, "list")["disks"]) == 1
    p = disk_cmd(server, creds, "snapshot", d["id"], check=False)
    assert p.returncode != 0 and "DiskLockedException" in p.stderr and key in p.stderr, p.stderr

    kms.enable_key(KeyId=key)
    done = attempts()
    for op, resp in done.items():
        assert resp.status_code in (200, 201, 202), (op, resp.status_code, resp.text)
    # The re-encryption runs on: let it finish before its disk's grant is
    # revoked below (a running job keeps the disk busy).
    job = done["reencrypt"].json()["job"]["id"]
    deadline = time.monotonic() + 60
    while rest_call(server, "GET", f"/v1/jobs/{job}", creds=creds).json()["job"]["state"] == "running":
        assert time.monotonic() < deadline, "the re-encryption did not finish"
        time.sleep(0.1)

    # A revoked grant locks the disk; regrant (as the customer) unlocks it.
    grant = next(g for g in kms.list_grants(KeyId=other)["Grants"]
                 if g["Constraints"]["EncryptionContextSubset"] == {"atrest:disk:id": d["id"]})
    kms.revoke_grant(KeyId=other, GrantId=grant["GrantId"])
    resp = rest_call(server, "POST", "/v1/snapshots", {"disk_id": d["id"]}, creds=creds)
    assert resp.status_code == 409 and "revoked" in resp.json()["message"], resp.text
    disk_cmd(server, creds, "regrant", d["id"])
    resp = rest_call(server, "POST", "/v1/snapshots", {"disk_id": d["id"]}, creds=creds)
    assert resp.status_code == 201, resp.text


def test_bad_disk_requests_get_typed_errors_and_create_nothing(server):
    creds = new_account(server, A)
    other = new_account(server, B)
    cases = [
        ({"size": 1000}, 400, "ValidationException"),
        ({"size": 0}, 400, "ValidationException"),
        ({"size": (64 << 40) + 4096}, 400, "ValidationException"),
        ({"size": 4096, "block_size": 1024}, 400, "ValidationException"),
        ({"size": -1}, 400, "ValidationException"),
        ({"size": "big"}, 400, "SerializationException"),
        ({}, 400, "ValidationException"),
        ({"size": 4096, "colour": "red"}, 400, "ValidationException"),
        ({"size": 4096, "encrypted": False, "key_id": "alias/x"}, 400, "ValidationException"),
        ({"size": 4096, "key_id": "alias/does-not-exist"}, 400, "NotFoundException"),
        ({"snapshot_id": "snap-0000000000000000"}, 404, "NotFoundException"),
        ({"snapshot_id": "snap-0000000000000000", "size": 4096}, 400, "ValidationException"),
    ]
    for body, status, code in cases:
        resp = rest_call(server, "POST", "/v1/disks", body, creds=creds)
        assert (resp.status_code, resp.json().get("code")) == (status, code), (body, resp.status_code, resp.text)
    # Not JSON at all.
    resp = rest_call(server, "POST", "/v1/disks", None, creds=creds)
    assert resp.status_code == 400, resp.text
    assert rest_call(server, "GET", "/v1/disks", creds=creds).json()["disks"] == []

    d = rest_call(server, "POST", "/v1/disks", {"size": 4096}, creds=creds).json()
    for method, path, body, status in [
        ("GET", "/v1/disks/disk-0000000000000000", None, 404),
        ("DELETE", "/v1/snapshots/snap-0000000000000000", None, 404),
        ("GET", "/v1/jobs/job-0000000000000000", None, 404),
        ("POST", f"/v1/disks/{d['id']}/resize", {"size": 512}, 400),
        ("POST", f"/v1/disks/{d['id']}/resize", {"size": 2048}, 400),
        ("POST", f"/v1/disks/{d['id']}/rekey", {}, 400),
        ("POST", f"/v1/disks/{d['id']}/rekey", {"key_id": "alias/x", "reencrypt": True}, 400),
        ("POST", f"/v1/disks/{d['id']}/convert", {}, 400),
        ("POST", f"/v1/disks/{d['id']}/rollback", {"snapshot_id": "snap-0000000000000000"}, 404),
        ("PUT", f"/v1/disks/{d['id']}", None, 405),
    ]:
        resp = rest_call(server, method, path, body, creds=creds)
        assert resp.status_code == status, (method, path, body, resp.status_code, resp.text)
    # Another account neither sees nor touches it.
    assert rest_call(server, "GET", f"/v1/disks/{d['id']}", creds=other).status_code == 404
    assert rest_call(server, "DELETE", f"/v1/disks/{d['id']}", creds=other).status_code == 404
    assert rest_call(server, "POST", "/v1/snapshots", {"disk_id": d["id"]}, creds=other).status_code == 404
    assert rest_call(server, "GET", "/v1/disks", creds=other).json()["disks"] == []
    shown = rest_call(server, "GET", f"/v1/disks/{d['id']}", creds=creds).json()
    assert shown["size"] == 4096, shown


def test_disks_survive_a_restart_and_a_kill(server):
    creds = new_account(server, A)
    kms = server.client(creds=creds)
    key = kms.create_key()["KeyMetadata"]["Arn"]
    d = disk_cmd(server, creds, "create", "--size", "8M", "--key-id", key)
    s = disk_cmd(server, creds, "snapshot", d["id"])
    c = disk_cmd(server, creds, "clone", s["id"])
    before = (disk_cmd(server, creds, "list")["disks"], snap_cmd(server, creds, "list")["snapshots"])
    assert server.stop() == 0
    server.start()
    assert (disk_cmd(server, creds, "list")["disks"], snap_cmd(server, creds, "list")["snapshots"]) == before
    # Every change is committed before it is answered: a SIGKILL loses none.
    g = disk_cmd(server, creds, "resize", c["id"], "--size", "16M")
    server.kill()
    server.start()
    assert disk_cmd(server, creds, "show", c["id"])["size"] == g["size"] == 16 << 20
    assert disk_cmd(server, creds, "show", d["id"])["key_arn"] == key
    # The disk service keeps exactly its two files (docs/design.md, 4F).
    assert {p.name for p in (server.data_dir / "disks").iterdir()} == {"pool", "meta.redb"}
