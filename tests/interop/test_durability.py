"""Durability: everything a client was told succeeded survives SIGKILL of
the server. ~200 data keys (plaintext + blob recorded), aliases, automatic
rotation settings, on-demand rotations and a pending deletion are made, the
server is killed with SIGKILL (no shutdown path runs) and restarted on the same
data dir; every blob decrypts to the same bytes and all of that state is
still there, seen through boto3.

Capabilities: K1 keys, K4 envelope encryption, K5 rotation, K6 key states, O1 API.
"""

from __future__ import annotations

import random

from conftest import expect_error


def test_state_survives_sigkill(make_server):
    srv = make_server().start()
    kms = srv.client()

    keys = [kms.create_key(Description=f"durable-{i}")["KeyMetadata"] for i in range(4)]
    ids = [k["KeyId"] for k in keys]
    rnd = random.Random(1234)
    data_keys = []  # (plaintext, blob, context)
    for i in range(200):
        key_id = ids[i % 3]
        ctx = {"n": str(i)} if i % 2 else {}
        spec = rnd.choice([{"KeySpec": "AES_256"}, {"KeySpec": "AES_128"}, {"NumberOfBytes": rnd.randint(1, 1024)}])
        r = kms.generate_data_key(KeyId=key_id, EncryptionContext=ctx, **spec)
        data_keys.append((r["Plaintext"], r["CiphertextBlob"], ctx))

    for i, key_id in enumerate(ids[:3]):
        kms.create_alias(AliasName=f"alias/durable-{i}", TargetKeyId=key_id)
        kms.create_alias(AliasName=f"alias/durable-{i}-b", TargetKeyId=key_id)
    kms.enable_key_rotation(KeyId=ids[0], RotationPeriodInDays=180)
    kms.enable_key_rotation(KeyId=ids[1])
    for _ in range(2):
        kms.rotate_key_on_demand(KeyId=ids[0])
    kms.rotate_key_on_demand(KeyId=ids[2])
    # More data keys under the rotated material.
    for i in range(10):
        r = kms.generate_data_key(KeyId=ids[0], KeySpec="AES_256", EncryptionContext={"after": str(i)})
        data_keys.append((r["Plaintext"], r["CiphertextBlob"], {"after": str(i)}))
    kms.update_key_description(KeyId=ids[1], Description="changed before the crash")
    kms.disable_key(KeyId=ids[2])
    kms.tag_resource(KeyId=ids[0], Tags=[{"TagKey": "keep", "TagValue": "me"}])
    sched = kms.schedule_key_deletion(KeyId=ids[3], PendingWindowInDays=9)

    def snapshot(c):
        return {
            "keys": sorted(k["KeyId"] for k in c.list_keys()["Keys"]),
            "aliases": sorted((a["AliasName"], a["TargetKeyId"]) for a in c.list_aliases()["Aliases"]),
            "rotations": {i: c.list_key_rotations(KeyId=i)["Rotations"] for i in ids},
            "status": {i: c.get_key_rotation_status(KeyId=i) for i in ids[:3]},
            "meta": {i: c.describe_key(KeyId=i)["KeyMetadata"] for i in ids},
            "tags": c.list_resource_tags(KeyId=ids[0])["Tags"],
        }

    before = snapshot(kms)
    assert len(before["rotations"][ids[0]]) == 2 and len(before["rotations"][ids[2]]) == 1

    assert srv.kill() == -9
    srv.start()
    kms = srv.client()
    after = snapshot(kms)

    assert after["keys"] == before["keys"] == sorted(ids)
    assert after["aliases"] == before["aliases"] and len(after["aliases"]) == 6
    for i in ids:
        assert after["rotations"][i] == before["rotations"][i], i
    assert [r["RotationType"] for r in after["rotations"][ids[0]]] == ["ON_DEMAND", "ON_DEMAND"]
    for i in ids[:3]:
        b, a = before["status"][i], after["status"][i]
        for field in ("KeyRotationEnabled", "RotationPeriodInDays", "NextRotationDate"):
            assert a.get(field) == b.get(field), (i, field)
    assert after["status"][ids[0]]["RotationPeriodInDays"] == 180
    assert after["status"][ids[1]]["RotationPeriodInDays"] == 365
    assert after["status"][ids[2]]["KeyRotationEnabled"] is False
    for i in ids:
        b, a = before["meta"][i], after["meta"][i]
        for field in ("Arn", "KeyState", "Description", "CreationDate", "DeletionDate", "CurrentKeyMaterialId"):
            assert a.get(field) == b.get(field), (i, field)
    assert after["meta"][ids[1]]["Description"] == "changed before the crash"
    assert after["meta"][ids[2]]["KeyState"] == "Disabled"
    assert after["meta"][ids[3]]["KeyState"] == "PendingDeletion"
    assert after["meta"][ids[3]]["DeletionDate"] == sched["DeletionDate"]
    assert after["tags"] == [{"TagKey": "keep", "TagValue": "me"}]

    kms.enable_key(KeyId=ids[2])  # the disabled key's blobs decrypt once it is enabled again
    for plaintext, blob, ctx in data_keys:
        assert kms.decrypt(CiphertextBlob=blob, EncryptionContext=ctx)["Plaintext"] == plaintext
    # The key pending deletion is still pending and still refuses use; it can be cancelled.
    expect_error("KMSInvalidStateException", kms.encrypt, KeyId=ids[3], Plaintext=b"x")
    kms.cancel_key_deletion(KeyId=ids[3])
    assert kms.describe_key(KeyId=ids[3])["KeyMetadata"]["KeyState"] == "Disabled"
    # And the restarted server keeps accepting writes.
    kms.rotate_key_on_demand(KeyId=ids[0])
    assert len(kms.list_key_rotations(KeyId=ids[0])["Rotations"]) == 3
