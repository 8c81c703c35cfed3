"""The rotation and deletion schedule runs inside the server. Keys are set
up (rotation every 90 days; deletion in 7 days; a deletion scheduled then
cancelled; rotation every 365 days), the server is stopped with SIGTERM and
restarted with its lifecycle clock 91 days ahead and a 1-second tick. Within
seconds the doomed key is gone (DescribeKey NotFoundException, its alias gone,
its ciphertexts refused), the 90-day key shows exactly one AUTOMATIC rotation
in ListKeyRotations with its older ciphertexts still decrypting, and the
controls are untouched.

Capabilities: K5 rotation, K6 key states, K1 keys, O1 API.
"""

from __future__ import annotations

import datetime
import time

import pytest
from botocore.exceptions import ClientError

from conftest import code_of, expect_error

UTC = datetime.timezone.utc


def test_schedule_runs_in_the_server(make_server):
    srv = make_server().start()
    kms = srv.client()
    rotating = kms.create_key(Description="rotates every 90 days")["KeyMetadata"]
    kms.enable_key_rotation(KeyId=rotating["KeyId"], RotationPeriodInDays=90)
    old_blob = kms.encrypt(KeyId=rotating["KeyId"], Plaintext=b"old material", EncryptionContext={"k": "v"})["CiphertextBlob"]
    old_material = kms.describe_key(KeyId=rotating["KeyId"])["KeyMetadata"]["CurrentKeyMaterialId"]

    doomed = kms.create_key(Description="deleted after 7 days")["KeyMetadata"]
    kms.create_alias(AliasName="alias/doomed", TargetKeyId=doomed["KeyId"])
    doomed_blob = kms.encrypt(KeyId=doomed["KeyId"], Plaintext=b"gone soon")["CiphertextBlob"]
    kms.schedule_key_deletion(KeyId=doomed["KeyId"], PendingWindowInDays=7)

    reprieved = kms.create_key(Description="deletion cancelled")["KeyMetadata"]
    kms.schedule_key_deletion(KeyId=reprieved["KeyId"], PendingWindowInDays=7)
    kms.cancel_key_deletion(KeyId=reprieved["KeyId"])

    yearly = kms.create_key(Description="rotates yearly")["KeyMetadata"]
    kms.enable_key_rotation(KeyId=yearly["KeyId"])

    assert srv.stop() == 0, srv.last_output()
    srv.start("--lifecycle-clock-offset-days", "91", "--lifecycle-interval", "1")
    kms = srv.client()

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        gone = code_of(kms.describe_key, KeyId=doomed["KeyId"]) == "NotFoundException"
        rotated = bool(kms.list_key_rotations(KeyId=rotating["KeyId"])["Rotations"])
        if gone and rotated:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"lifecycle did not run within 20s:\n{srv.last_output()[-3000:]}")

    # The doomed key, its alias and its ciphertexts are gone.
    expect_error("NotFoundException", kms.describe_key, KeyId=doomed["KeyId"])
    expect_error("NotFoundException", kms.describe_key, KeyId=doomed["Arn"])
    expect_error("NotFoundException", kms.describe_key, KeyId="alias/doomed")
    assert "alias/doomed" not in {a["AliasName"] for a in kms.list_aliases()["Aliases"]}
    assert doomed["KeyId"] not in {k["KeyId"] for k in kms.list_keys()["Keys"]}
    with pytest.raises(ClientError) as ei:
        kms.decrypt(CiphertextBlob=doomed_blob)
    assert ei.value.response["Error"]["Code"] in ("InvalidCiphertextException", "NotFoundException")
    assert ei.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400

    # The 90-day key rotated exactly once, automatically; old blobs still decrypt.
    time.sleep(2.5)  # a couple more ticks must not rotate it again
    rotations = kms.list_key_rotations(KeyId=rotating["KeyId"])["Rotations"]
    assert len(rotations) == 1, rotations
    assert rotations[0]["RotationType"] == "AUTOMATIC"
    new_material = rotations[0]["KeyMaterialId"]
    assert new_material != old_material
    assert kms.describe_key(KeyId=rotating["KeyId"])["KeyMetadata"]["CurrentKeyMaterialId"] == new_material
    dec = kms.decrypt(CiphertextBlob=old_blob, EncryptionContext={"k": "v"})
    assert dec["Plaintext"] == b"old material" and dec["KeyMaterialId"] == old_material
    new_blob = kms.encrypt(KeyId=rotating["KeyId"], Plaintext=b"new material")["CiphertextBlob"]
    assert kms.decrypt(CiphertextBlob=new_blob)["KeyMaterialId"] == new_material
    status = kms.get_key_rotation_status(KeyId=rotating["KeyId"])
    assert status["KeyRotationEnabled"] is True and status["RotationPeriodInDays"] == 90
    # Next rotation: 90 days after the one just made (180 days after creation).
    expected_next = rotating["CreationDate"] + datetime.timedelta(days=180)
    assert abs(status["NextRotationDate"] - expected_next) < datetime.timedelta(hours=1), status

    # Controls: the cancelled deletion stays cancelled, the yearly key has not rotated.
    md = kms.describe_key(KeyId=reprieved["KeyId"])["KeyMetadata"]
    assert md["KeyState"] == "Disabled"
    assert kms.list_key_rotations(KeyId=yearly["KeyId"])["Rotations"] == []
    assert kms.describe_key(KeyId=yearly["KeyId"])["KeyMetadata"]["KeyState"] == "Enabled"
