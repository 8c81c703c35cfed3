"""Multi-Region keys (issue 20): one server serving us-east-1 and eu-west-1.
A multi-Region key made in us-east-1 (id `mrk-` and 32 hex digits) is
replicated to eu-west-1 with the aws CLI; ciphertexts made in either region
decrypt in the other; an on-demand rotation of the primary reaches the
replica (old and new ciphertexts decrypt there); UpdatePrimaryRegion swaps
the roles, as DescribeKey shows in both regions; ScheduleKeyDeletion of the
primary waits in PendingReplicaDeletion until the replica is deleted (the
server restarted with its lifecycle clock 8 days ahead), then the primary
is PendingDeletion.

Capabilities: K10 regions, K1 keys, K5 rotation, K6 key states, O1 API.
"""

from __future__ import annotations

import re
import time

import pytest

from conftest import aws_json, code_of, expect_error

US, EU = "us-east-1", "eu-west-1"
MRK_ID = re.compile(r"^mrk-[0-9a-f]{32}$")


def wait_for(what: str, check, srv, seconds: float = 20):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    pytest.fail(f"{what} did not happen within {seconds}s:\n{srv.last_output()[-3000:]}")


def test_multi_region_keys(make_server):
    srv = make_server(regions=(US, EU)).start()
    us = srv.client(region=US)
    eu = srv.client(region=EU)

    md = us.create_key(Description="primary", MultiRegion=True)["KeyMetadata"]
    key_id = md["KeyId"]
    assert MRK_ID.match(key_id), key_id
    account = md["AWSAccountId"]
    us_arn = f"arn:aws:kms:{US}:{account}:key/{key_id}"
    eu_arn = f"arn:aws:kms:{EU}:{account}:key/{key_id}"
    assert md["Arn"] == us_arn and md["MultiRegion"] is True
    assert md["MultiRegionConfiguration"] == {
        "MultiRegionKeyType": "PRIMARY",
        "PrimaryKey": {"Arn": us_arn, "Region": US},
        "ReplicaKeys": [],
    }
    assert [k["KeyId"] for k in us.list_keys()["Keys"]] == [key_id]
    assert eu.list_keys()["Keys"] == []
    old_blob = us.encrypt(KeyId=key_id, Plaintext=b"before rotation")["CiphertextBlob"]

    # Replicate with the aws CLI.
    out = aws_json(
        srv, "kms", "replicate-key", "--key-id", key_id, "--replica-region", EU,
        "--description", "replica", "--tags", "TagKey=site,TagValue=eu",
    )
    rmd = out["ReplicaKeyMetadata"]
    assert rmd["KeyId"] == key_id and rmd["Arn"] == eu_arn and rmd["Description"] == "replica"
    assert rmd["MultiRegionConfiguration"]["MultiRegionKeyType"] == "REPLICA"
    assert out["ReplicaTags"] == [{"TagKey": "site", "TagValue": "eu"}]
    assert '"kms:*"' in out["ReplicaPolicy"]
    cli_md = aws_json(srv, "kms", "describe-key", "--key-id", key_id, region=EU)["KeyMetadata"]
    assert cli_md["Arn"] == eu_arn
    assert cli_md["MultiRegionConfiguration"] == {
        "MultiRegionKeyType": "REPLICA",
        "PrimaryKey": {"Arn": us_arn, "Region": US},
        "ReplicaKeys": [{"Arn": eu_arn, "Region": EU}],
    }
    assert us.describe_key(KeyId=key_id)["KeyMetadata"]["MultiRegionConfiguration"]["ReplicaKeys"] == [
        {"Arn": eu_arn, "Region": EU}
    ]
    assert [k["KeyArn"] for k in eu.list_keys()["Keys"]] == [eu_arn]
    # Independent properties.
    assert us.describe_key(KeyId=key_id)["KeyMetadata"]["Description"] == "primary"
    assert us.list_resource_tags(KeyId=key_id)["Tags"] == []

    # Encrypt in one region, decrypt in the other, both ways.
    dec = eu.decrypt(CiphertextBlob=old_blob)
    assert dec["Plaintext"] == b"before rotation" and dec["KeyId"] == eu_arn
    eu_blob = eu.encrypt(KeyId=key_id, Plaintext=b"made in eu", EncryptionContext={"k": "v"})["CiphertextBlob"]
    dec = us.decrypt(CiphertextBlob=eu_blob, EncryptionContext={"k": "v"})
    assert dec["Plaintext"] == b"made in eu" and dec["KeyId"] == us_arn

    # Errors.
    expect_error("AlreadyExistsException", us.replicate_key, KeyId=key_id, ReplicaRegion=EU)
    single = us.create_key()["KeyMetadata"]["KeyId"]
    expect_error("UnsupportedOperationException", us.replicate_key, KeyId=single, ReplicaRegion=EU)
    expect_error("UnsupportedOperationException", eu.replicate_key, KeyId=key_id, ReplicaRegion=US)
    expect_error("UnsupportedOperationException", us.replicate_key, KeyId=key_id, ReplicaRegion="ap-south-1")
    expect_error("UnsupportedOperationException", eu.enable_key_rotation, KeyId=key_id)
    expect_error("UnsupportedOperationException", eu.rotate_key_on_demand, KeyId=key_id)
    unknown = "mrk-0123456789abcdef0123456789abcdef"
    err = expect_error("NotFoundException", us.describe_key, KeyId=unknown)
    assert err["Error"]["Message"] == f"Key 'arn:aws:kms:{US}:{account}:key/{unknown}' does not exist"
    expect_error("UnsupportedOperationException", us.update_primary_region, KeyId=single, PrimaryRegion=EU)

    # Rotate the primary on demand: the replica decrypts old and new.
    us.rotate_key_on_demand(KeyId=key_id)
    new_blob = us.encrypt(KeyId=key_id, Plaintext=b"after rotation")["CiphertextBlob"]
    assert eu.decrypt(CiphertextBlob=old_blob)["Plaintext"] == b"before rotation"
    assert eu.decrypt(CiphertextBlob=new_blob)["Plaintext"] == b"after rotation"
    us_material = us.describe_key(KeyId=key_id)["KeyMetadata"]["CurrentKeyMaterialId"]
    assert eu.describe_key(KeyId=key_id)["KeyMetadata"]["CurrentKeyMaterialId"] == us_material
    assert [r["RotationType"] for r in eu.list_key_rotations(KeyId=key_id)["Rotations"]] == ["ON_DEMAND"]

    # UpdatePrimaryRegion: eu-west-1 becomes the primary.
    us.update_primary_region(KeyId=key_id, PrimaryRegion=EU)
    us_md = us.describe_key(KeyId=key_id)["KeyMetadata"]
    eu_md = eu.describe_key(KeyId=key_id)["KeyMetadata"]
    assert us_md["MultiRegionConfiguration"] == {
        "MultiRegionKeyType": "REPLICA",
        "PrimaryKey": {"Arn": eu_arn, "Region": EU},
        "ReplicaKeys": [{"Arn": us_arn, "Region": US}],
    }
    assert eu_md["MultiRegionConfiguration"]["MultiRegionKeyType"] == "PRIMARY"
    assert eu_md["MultiRegionConfiguration"]["PrimaryKey"] == {"Arn": eu_arn, "Region": EU}
    cli_md = aws_json(srv, "kms", "describe-key", "--key-id", us_arn)["KeyMetadata"]
    assert cli_md["MultiRegionConfiguration"]["MultiRegionKeyType"] == "REPLICA"
    expect_error("UnsupportedOperationException", us.rotate_key_on_demand, KeyId=key_id)
    expect_error("UnsupportedOperationException", us.update_primary_region, KeyId=key_id, PrimaryRegion=US)

    # Deleting the primary (now in eu-west-1) waits for its replica.
    r = eu.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    assert r["KeyState"] == "PendingReplicaDeletion" and "DeletionDate" not in r, r
    assert eu.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "PendingReplicaDeletion"
    expect_error("KMSInvalidStateException", eu.encrypt, KeyId=key_id, Plaintext=b"x")
    assert us.decrypt(CiphertextBlob=new_blob)["Plaintext"] == b"after rotation"
    us.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    assert us.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "PendingDeletion"

    assert srv.stop() == 0, srv.last_output()
    srv.start("--lifecycle-clock-offset-days", "8", "--lifecycle-interval", "1")
    us = srv.client(region=US)
    eu = srv.client(region=EU)
    wait_for(
        "deletion of the replica",
        lambda: code_of(us.describe_key, KeyId=key_id) == "NotFoundException",
        srv,
    )
    assert us.list_keys()["Keys"] == [{"KeyId": single, "KeyArn": f"arn:aws:kms:{US}:{account}:key/{single}"}]
    md = eu.describe_key(KeyId=key_id)["KeyMetadata"]
    assert md["KeyState"] == "PendingDeletion", md
    assert "DeletionDate" in md
    assert md["MultiRegionConfiguration"]["ReplicaKeys"] == []
    # Its ciphertexts no longer decrypt in us-east-1.
    assert code_of(us.decrypt, CiphertextBlob=new_blob) in ("InvalidCiphertextException", "NotFoundException")
    # The primary can still be cancelled.
    eu.cancel_key_deletion(KeyId=key_id)
    assert eu.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Disabled"
