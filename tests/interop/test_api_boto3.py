"""Every KMS operation atrest implements, driven by boto3 against a real
`atrest serve`: each operation's happy path, every documented error type
(NotFound, Disabled, KMSInvalidState, InvalidCiphertext, IncorrectKey,
AlreadyExists, Validation, InvalidAliasName, InvalidArn, InvalidMarker,
LimitExceeded, Tag, UnsupportedOperation, InvalidGrantToken, DryRun,
AccessDenied from a second account made with `atrest admin`), and Limit/Marker
pagination through boto3's own paginators (list_keys, list_aliases,
list_key_rotations, list_resource_tags).

Capabilities: K1 keys, K4 envelope encryption, K5 rotation, K6 key states, O1 API.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import uuid

import pytest

from conftest import REGION, atrest_admin, expect_error

UTC = datetime.timezone.utc


def now() -> datetime.datetime:
    return datetime.datetime.now(UTC)


def new_key(kms, **kw) -> dict:
    return kms.create_key(**kw)["KeyMetadata"]


def account_of(kms) -> str:
    return new_key(kms)["AWSAccountId"]


def assert_near(when: datetime.datetime, expected: datetime.datetime, slack=datetime.timedelta(minutes=10)):
    assert abs(when - expected) < slack, f"{when} is not near {expected}"


# -- keys ----------------------------------------------------------------


def test_create_key_metadata_and_describe_by_every_name(kms):
    md = kms.create_key(
        Description="interop key",
        KeyUsage="ENCRYPT_DECRYPT",
        KeySpec="SYMMETRIC_DEFAULT",
        Origin="AWS_KMS",
        Tags=[{"TagKey": "team", "TagValue": "blue"}],
    )["KeyMetadata"]
    key_id = md["KeyId"]
    assert str(uuid.UUID(key_id)) == key_id
    assert re.fullmatch(r"\d{12}", md["AWSAccountId"])
    assert md["Arn"] == f"arn:aws:kms:{REGION}:{md['AWSAccountId']}:key/{key_id}"
    assert md["Description"] == "interop key"
    assert md["KeyState"] == "Enabled" and md["Enabled"] is True
    assert md["KeyUsage"] == "ENCRYPT_DECRYPT"
    assert md["KeySpec"] == md["CustomerMasterKeySpec"] == "SYMMETRIC_DEFAULT"
    assert md["EncryptionAlgorithms"] == ["SYMMETRIC_DEFAULT"]
    assert md["Origin"] == "AWS_KMS" and md["KeyManager"] == "CUSTOMER"
    assert md["MultiRegion"] is False
    assert "DeletionDate" not in md
    assert_near(md["CreationDate"], now())

    kms.create_alias(AliasName="alias/interop-describe", TargetKeyId=key_id)
    alias_arn = f"arn:aws:kms:{REGION}:{md['AWSAccountId']}:alias/interop-describe"
    for name in (key_id, md["Arn"], "alias/interop-describe", alias_arn):
        got = kms.describe_key(KeyId=name)["KeyMetadata"]
        assert got["KeyId"] == key_id and got["Arn"] == md["Arn"], name
        assert got["Description"] == "interop key"

    tags = kms.list_resource_tags(KeyId=key_id)["Tags"]
    assert tags == [{"TagKey": "team", "TagValue": "blue"}]


def test_list_keys_pages_with_paginator(kms):
    created = {new_key(kms)["KeyId"] for _ in range(7)}
    first = kms.list_keys(Limit=3)
    assert len(first["Keys"]) == 3 and first["Truncated"] is True and first["NextMarker"]
    second = kms.list_keys(Limit=3, Marker=first["NextMarker"])
    assert not {k["KeyId"] for k in first["Keys"]} & {k["KeyId"] for k in second["Keys"]}

    pages = list(kms.get_paginator("list_keys").paginate(PaginationConfig={"PageSize": 3}))
    assert [len(p["Keys"]) for p in pages] == [3, 3, 1]
    assert [p["Truncated"] for p in pages] == [True, True, False]
    assert "NextMarker" not in pages[-1]
    listed = [k["KeyId"] for p in pages for k in p["Keys"]]
    assert len(listed) == len(set(listed)) == 7
    assert set(listed) == created
    for p in pages:
        for k in p["Keys"]:
            assert k["KeyArn"].endswith(":key/" + k["KeyId"])
    # Without a limit everything fits one page.
    everything = kms.list_keys()
    assert everything["Truncated"] is False and {k["KeyId"] for k in everything["Keys"]} == created


def test_update_key_description(kms):
    key_id = new_key(kms, Description="before")["KeyId"]
    kms.update_key_description(KeyId=key_id, Description="after")
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["Description"] == "after"
    kms.update_key_description(KeyId=key_id, Description="")
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["Description"] == ""


def test_disable_and_enable_key(kms):
    key_id = new_key(kms)["KeyId"]
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"secret")["CiphertextBlob"]
    kms.disable_key(KeyId=key_id)
    md = kms.describe_key(KeyId=key_id)["KeyMetadata"]
    assert md["KeyState"] == "Disabled" and md["Enabled"] is False
    expect_error("DisabledException", kms.encrypt, KeyId=key_id, Plaintext=b"x")
    expect_error("DisabledException", kms.decrypt, CiphertextBlob=blob)
    expect_error("DisabledException", kms.generate_data_key, KeyId=key_id, KeySpec="AES_256")
    expect_error("DisabledException", kms.generate_data_key_without_plaintext, KeyId=key_id, KeySpec="AES_256")
    expect_error("DisabledException", kms.rotate_key_on_demand, KeyId=key_id)
    kms.enable_key(KeyId=key_id)
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Enabled"
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"secret"


def test_schedule_and_cancel_key_deletion(kms):
    key_id = new_key(kms)["KeyId"]
    arn = kms.describe_key(KeyId=key_id)["KeyMetadata"]["Arn"]
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"secret")["CiphertextBlob"]
    resp = kms.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    assert resp["KeyId"] == arn
    assert resp["KeyState"] == "PendingDeletion" and resp["PendingWindowInDays"] == 7
    assert_near(resp["DeletionDate"], now() + datetime.timedelta(days=7))
    md = kms.describe_key(KeyId=key_id)["KeyMetadata"]
    assert md["KeyState"] == "PendingDeletion" and md["Enabled"] is False
    assert_near(md["DeletionDate"], now() + datetime.timedelta(days=7))
    expect_error("KMSInvalidStateException", kms.encrypt, KeyId=key_id, Plaintext=b"x")
    expect_error("KMSInvalidStateException", kms.decrypt, CiphertextBlob=blob)
    expect_error("KMSInvalidStateException", kms.generate_data_key, KeyId=key_id, KeySpec="AES_256")
    expect_error("KMSInvalidStateException", kms.enable_key, KeyId=key_id)
    expect_error("KMSInvalidStateException", kms.schedule_key_deletion, KeyId=key_id, PendingWindowInDays=7)

    assert kms.cancel_key_deletion(KeyId=key_id)["KeyId"] == arn
    md = kms.describe_key(KeyId=key_id)["KeyMetadata"]
    assert md["KeyState"] == "Disabled" and "DeletionDate" not in md
    expect_error("KMSInvalidStateException", kms.cancel_key_deletion, KeyId=key_id)
    kms.enable_key(KeyId=key_id)
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"secret"

    # The default waiting period is 30 days.
    resp = kms.schedule_key_deletion(KeyId=key_id)
    assert resp["PendingWindowInDays"] == 30
    assert_near(resp["DeletionDate"], now() + datetime.timedelta(days=30))


# -- cryptographic operations ---------------------------------------------


def test_encrypt_decrypt_round_trip_with_context(kms):
    key = new_key(kms)
    kms.create_alias(AliasName="alias/interop-crypto", TargetKeyId=key["KeyId"])
    ctx = {"purpose": "interop", "tenant": "t-1", "ünïcode": "välue"}
    for size in (1, 17, 4096):
        plaintext = os.urandom(size)
        enc = kms.encrypt(KeyId="alias/interop-crypto", Plaintext=plaintext, EncryptionContext=ctx)
        assert enc["KeyId"] == key["Arn"] and enc["EncryptionAlgorithm"] == "SYMMETRIC_DEFAULT"
        blob = enc["CiphertextBlob"]
        if size >= 16:  # a short random plaintext can occur in any blob by chance
            assert plaintext not in blob
        # Context order does not matter.
        reordered = dict(reversed(list(ctx.items())))
        dec = kms.decrypt(CiphertextBlob=blob, EncryptionContext=reordered)
        assert dec["Plaintext"] == plaintext
        assert dec["KeyId"] == key["Arn"] and dec["EncryptionAlgorithm"] == "SYMMETRIC_DEFAULT"
        for named in (key["KeyId"], key["Arn"], "alias/interop-crypto"):
            assert kms.decrypt(CiphertextBlob=blob, EncryptionContext=ctx, KeyId=named)["Plaintext"] == plaintext
    # Same plaintext twice: different blobs.
    a = kms.encrypt(KeyId=key["KeyId"], Plaintext=b"same")["CiphertextBlob"]
    b = kms.encrypt(KeyId=key["KeyId"], Plaintext=b"same")["CiphertextBlob"]
    assert a != b


def test_decrypt_errors_context_and_key(kms):
    k1, k2 = new_key(kms), new_key(kms)
    blob = kms.encrypt(KeyId=k1["KeyId"], Plaintext=b"p", EncryptionContext={"a": "1"})["CiphertextBlob"]
    expect_error("InvalidCiphertextException", kms.decrypt, CiphertextBlob=blob)
    expect_error("InvalidCiphertextException", kms.decrypt, CiphertextBlob=blob, EncryptionContext={"a": "2"})
    expect_error("InvalidCiphertextException", kms.decrypt, CiphertextBlob=blob, EncryptionContext={"a": "1", "b": "2"})
    expect_error("InvalidCiphertextException", kms.decrypt, CiphertextBlob=b"not a ciphertext at all, not even close....................")
    expect_error("IncorrectKeyException", kms.decrypt, CiphertextBlob=blob, EncryptionContext={"a": "1"}, KeyId=k2["KeyId"])
    assert kms.decrypt(CiphertextBlob=blob, EncryptionContext={"a": "1"})["Plaintext"] == b"p"


def test_re_encrypt(kms):
    src, dst = new_key(kms), new_key(kms)
    blob = kms.encrypt(KeyId=src["KeyId"], Plaintext=b"move me", EncryptionContext={"v": "1"})["CiphertextBlob"]
    resp = kms.re_encrypt(
        CiphertextBlob=blob,
        SourceEncryptionContext={"v": "1"},
        DestinationKeyId=dst["KeyId"],
        DestinationEncryptionContext={"v": "2"},
    )
    assert resp["SourceKeyId"] == src["Arn"] and resp["KeyId"] == dst["Arn"]
    assert resp["SourceEncryptionAlgorithm"] == resp["DestinationEncryptionAlgorithm"] == "SYMMETRIC_DEFAULT"
    new_blob = resp["CiphertextBlob"]
    dec = kms.decrypt(CiphertextBlob=new_blob, EncryptionContext={"v": "2"})
    assert dec["Plaintext"] == b"move me" and dec["KeyId"] == dst["Arn"]
    expect_error("IncorrectKeyException", kms.decrypt, CiphertextBlob=new_blob, EncryptionContext={"v": "2"}, KeyId=src["KeyId"])
    expect_error("InvalidCiphertextException", kms.decrypt, CiphertextBlob=new_blob, EncryptionContext={"v": "1"})
    # Wrong source context, wrong named source key.
    expect_error("InvalidCiphertextException", kms.re_encrypt, CiphertextBlob=blob, DestinationKeyId=dst["KeyId"])
    expect_error(
        "IncorrectKeyException", kms.re_encrypt, CiphertextBlob=blob, SourceEncryptionContext={"v": "1"},
        SourceKeyId=dst["KeyId"], DestinationKeyId=dst["KeyId"],
    )
    # The original still decrypts under the source key.
    assert kms.decrypt(CiphertextBlob=blob, EncryptionContext={"v": "1"})["Plaintext"] == b"move me"


def test_generate_data_key_variants(kms):
    key = new_key(kms)
    ctx = {"bucket": "b1"}
    for kw, length in (({"KeySpec": "AES_256"}, 32), ({"KeySpec": "AES_128"}, 16), ({"NumberOfBytes": 64}, 64), ({"NumberOfBytes": 1}, 1)):
        resp = kms.generate_data_key(KeyId=key["KeyId"], EncryptionContext=ctx, **kw)
        assert resp["KeyId"] == key["Arn"]
        assert len(resp["Plaintext"]) == length
        assert kms.decrypt(CiphertextBlob=resp["CiphertextBlob"], EncryptionContext=ctx)["Plaintext"] == resp["Plaintext"]
    a = kms.generate_data_key(KeyId=key["KeyId"], KeySpec="AES_256")["Plaintext"]
    b = kms.generate_data_key(KeyId=key["KeyId"], KeySpec="AES_256")["Plaintext"]
    assert a != b

    wp = kms.generate_data_key_without_plaintext(KeyId=key["KeyId"], KeySpec="AES_256", EncryptionContext=ctx)
    assert "Plaintext" not in wp and wp["KeyId"] == key["Arn"]
    assert len(kms.decrypt(CiphertextBlob=wp["CiphertextBlob"], EncryptionContext=ctx)["Plaintext"]) == 32

    expect_error("ValidationException", kms.generate_data_key, KeyId=key["KeyId"], KeySpec="AES_256", NumberOfBytes=32)
    expect_error("ValidationException", kms.generate_data_key, KeyId=key["KeyId"])
    expect_error("ValidationException", kms.generate_data_key, KeyId=key["KeyId"], NumberOfBytes=1025)


def test_generate_random(kms, kms_raw):
    for n in (1, 32, 1024):
        assert len(kms.generate_random(NumberOfBytes=n)["Plaintext"]) == n
    assert kms.generate_random(NumberOfBytes=32)["Plaintext"] != kms.generate_random(NumberOfBytes=32)["Plaintext"]
    expect_error("ValidationException", kms_raw.generate_random, NumberOfBytes=0)
    expect_error("ValidationException", kms.generate_random, NumberOfBytes=1025)


# -- aliases ---------------------------------------------------------------


def test_alias_lifecycle(kms):
    a, b = new_key(kms), new_key(kms)
    kms.create_alias(AliasName="alias/app", TargetKeyId=a["KeyId"])
    entries = kms.list_aliases(KeyId=a["KeyId"])["Aliases"]
    assert [e["AliasName"] for e in entries] == ["alias/app"]
    assert entries[0]["TargetKeyId"] == a["KeyId"]
    assert entries[0]["AliasArn"] == f"arn:aws:kms:{REGION}:{a['AWSAccountId']}:alias/app"
    assert kms.describe_key(KeyId="alias/app")["KeyMetadata"]["KeyId"] == a["KeyId"]

    kms.update_alias(AliasName="alias/app", TargetKeyId=b["Arn"])
    assert kms.describe_key(KeyId="alias/app")["KeyMetadata"]["KeyId"] == b["KeyId"]
    assert kms.list_aliases(KeyId=a["KeyId"])["Aliases"] == []
    assert [e["AliasName"] for e in kms.list_aliases(KeyId=b["KeyId"])["Aliases"]] == ["alias/app"]
    blob = kms.encrypt(KeyId="alias/app", Plaintext=b"via alias")["CiphertextBlob"]
    assert kms.decrypt(CiphertextBlob=blob, KeyId=b["KeyId"])["Plaintext"] == b"via alias"

    kms.delete_alias(AliasName="alias/app")
    expect_error("NotFoundException", kms.describe_key, KeyId="alias/app")
    expect_error("NotFoundException", kms.delete_alias, AliasName="alias/app")
    expect_error("NotFoundException", kms.update_alias, AliasName="alias/app", TargetKeyId=a["KeyId"])
    assert kms.list_aliases()["Aliases"] == []


def test_list_aliases_pages_with_paginator(kms):
    key_id = new_key(kms)["KeyId"]
    other = new_key(kms)["KeyId"]
    names = [f"alias/page-{i:02d}" for i in range(7)]
    for n in names:
        kms.create_alias(AliasName=n, TargetKeyId=key_id)
    kms.create_alias(AliasName="alias/zz-other", TargetKeyId=other)
    pages = list(kms.get_paginator("list_aliases").paginate(PaginationConfig={"PageSize": 2}))
    assert [len(p["Aliases"]) for p in pages] == [2, 2, 2, 2]
    listed = [a["AliasName"] for p in pages for a in p["Aliases"]]
    assert sorted(listed) == sorted(names + ["alias/zz-other"]) and len(set(listed)) == 8
    # Filtered by key, across pages.
    pages = list(kms.get_paginator("list_aliases").paginate(KeyId=key_id, PaginationConfig={"PageSize": 3}))
    assert [len(p["Aliases"]) for p in pages] == [3, 3, 1]
    assert sorted(a["AliasName"] for p in pages for a in p["Aliases"]) == names


def test_alias_errors(kms, kms_raw):
    key = new_key(kms)
    kms.create_alias(AliasName="alias/taken", TargetKeyId=key["KeyId"])
    expect_error("AlreadyExistsException", kms.create_alias, AliasName="alias/taken", TargetKeyId=key["KeyId"])
    for bad in ("alias/aws/mine", "alias/atrest/mine", "no-prefix", "alias/"):
        expect_error("InvalidAliasNameException", kms_raw.create_alias, AliasName=bad, TargetKeyId=key["KeyId"])
    expect_error("NotFoundException", kms.create_alias, AliasName="alias/ghost", TargetKeyId=str(uuid.uuid4()))
    # 50 aliases per key is the quota.
    for i in range(49):
        kms.create_alias(AliasName=f"alias/many-{i}", TargetKeyId=key["KeyId"])
    assert len(kms.list_aliases(KeyId=key["KeyId"], Limit=100)["Aliases"]) == 50
    expect_error("LimitExceededException", kms.create_alias, AliasName="alias/one-too-many", TargetKeyId=key["KeyId"])
    # A key pending deletion takes no new alias.
    doomed = new_key(kms)["KeyId"]
    kms.schedule_key_deletion(KeyId=doomed, PendingWindowInDays=7)
    expect_error("KMSInvalidStateException", kms.create_alias, AliasName="alias/doomed", TargetKeyId=doomed)


# -- rotation --------------------------------------------------------------


def test_key_rotation_settings(kms, kms_raw):
    key_id = new_key(kms)["KeyId"]
    st = kms.get_key_rotation_status(KeyId=key_id)
    assert st["KeyRotationEnabled"] is False
    kms.enable_key_rotation(KeyId=key_id)
    st = kms.get_key_rotation_status(KeyId=key_id)
    assert st["KeyRotationEnabled"] is True and st["RotationPeriodInDays"] == 365
    assert_near(st["NextRotationDate"], now() + datetime.timedelta(days=365))
    kms.enable_key_rotation(KeyId=key_id, RotationPeriodInDays=90)
    st = kms.get_key_rotation_status(KeyId=key_id)
    assert st["RotationPeriodInDays"] == 90
    assert_near(st["NextRotationDate"], now() + datetime.timedelta(days=90))
    kms.disable_key_rotation(KeyId=key_id)
    assert kms.get_key_rotation_status(KeyId=key_id)["KeyRotationEnabled"] is False
    for bad in (89, 2561):
        expect_error("ValidationException", kms_raw.enable_key_rotation, KeyId=key_id, RotationPeriodInDays=bad)
    kms.enable_key_rotation(KeyId=key_id, RotationPeriodInDays=2560)
    assert kms.get_key_rotation_status(KeyId=key_id)["RotationPeriodInDays"] == 2560
    kms.disable_key(KeyId=key_id)
    expect_error("DisabledException", kms.enable_key_rotation, KeyId=key_id)


def test_rotate_on_demand_and_list_rotations(kms):
    key = new_key(kms)
    key_id = key["KeyId"]
    first_material = kms.describe_key(KeyId=key_id)["KeyMetadata"].get("CurrentKeyMaterialId")
    old_blob = kms.encrypt(KeyId=key_id, Plaintext=b"before rotation")["CiphertextBlob"]
    assert kms.list_key_rotations(KeyId=key_id)["Rotations"] == []
    for _ in range(3):
        assert kms.rotate_key_on_demand(KeyId=key_id)["KeyId"] in (key_id, key["Arn"])
    rotations = kms.list_key_rotations(KeyId=key_id)["Rotations"]
    assert len(rotations) == 3
    assert all(r["RotationType"] == "ON_DEMAND" and r["KeyId"] in (key_id, key["Arn"]) for r in rotations)
    assert all(abs(r["RotationDate"] - now()) < datetime.timedelta(minutes=10) for r in rotations)
    materials = [r["KeyMaterialId"] for r in rotations]
    assert len(set(materials)) == 3 and first_material not in materials
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["CurrentKeyMaterialId"] == materials[-1]

    dec = kms.decrypt(CiphertextBlob=old_blob)
    assert dec["Plaintext"] == b"before rotation" and dec["KeyMaterialId"] == first_material
    new_blob = kms.encrypt(KeyId=key_id, Plaintext=b"after rotation")["CiphertextBlob"]
    dec = kms.decrypt(CiphertextBlob=new_blob)
    assert dec["Plaintext"] == b"after rotation" and dec["KeyMaterialId"] == materials[-1]

    pages = list(kms.get_paginator("list_key_rotations").paginate(KeyId=key_id, PaginationConfig={"PageSize": 2}))
    assert [len(p["Rotations"]) for p in pages] == [2, 1]
    assert [r["KeyMaterialId"] for p in pages for r in p["Rotations"]] == materials


def test_on_demand_rotation_quota(kms):
    key_id = new_key(kms)["KeyId"]
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"v1")["CiphertextBlob"]
    for _ in range(25):
        kms.rotate_key_on_demand(KeyId=key_id)
    expect_error("LimitExceededException", kms.rotate_key_on_demand, KeyId=key_id)
    assert len(kms.list_key_rotations(KeyId=key_id)["Rotations"]) == 25
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"v1"


# -- tags ------------------------------------------------------------------


def test_tags(kms, kms_raw):
    key_id = new_key(kms)["KeyId"]
    kms.tag_resource(KeyId=key_id, Tags=[{"TagKey": k, "TagValue": v} for k, v in (("a", "1"), ("b", "2"), ("c", "3"))])
    tags = {t["TagKey"]: t["TagValue"] for t in kms.list_resource_tags(KeyId=key_id)["Tags"]}
    assert tags == {"a": "1", "b": "2", "c": "3"}
    kms.tag_resource(KeyId=key_id, Tags=[{"TagKey": "b", "TagValue": "two"}, {"TagKey": "d", "TagValue": ""}])
    kms.untag_resource(KeyId=key_id, TagKeys=["a", "not-there"])
    tags = {t["TagKey"]: t["TagValue"] for t in kms.list_resource_tags(KeyId=key_id)["Tags"]}
    assert tags == {"b": "two", "c": "3", "d": ""}

    pages = list(kms.get_paginator("list_resource_tags").paginate(KeyId=key_id, PaginationConfig={"PageSize": 2}))
    assert [len(p["Tags"]) for p in pages] == [2, 1]
    assert sorted(t["TagKey"] for p in pages for t in p["Tags"]) == ["b", "c", "d"]

    expect_error("TagException", kms.tag_resource, KeyId=key_id, Tags=[{"TagKey": "aws:reserved", "TagValue": "x"}])
    expect_error("TagException", kms.tag_resource, KeyId=key_id, Tags=[{"TagKey": "dup", "TagValue": "1"}, {"TagKey": "dup", "TagValue": "2"}])
    expect_error("TagException", kms_raw.tag_resource, KeyId=key_id, Tags=[{"TagKey": "", "TagValue": "x"}])
    expect_error("TagException", kms.create_key, Tags=[{"TagKey": "aws:x", "TagValue": "y"}])
    # Nothing changed by the refused requests.
    assert len(kms.list_resource_tags(KeyId=key_id)["Tags"]) == 3


# -- errors ----------------------------------------------------------------


def test_not_found_and_invalid_arn(kms, kms_raw):
    acct = account_of(kms)
    missing = str(uuid.uuid4())
    expect_error("NotFoundException", kms.describe_key, KeyId=missing)
    expect_error("NotFoundException", kms.describe_key, KeyId=f"arn:aws:kms:{REGION}:{acct}:key/{missing}")
    expect_error("NotFoundException", kms.describe_key, KeyId="alias/does-not-exist")
    expect_error("NotFoundException", kms.describe_key, KeyId="not-a-key-id")
    expect_error("NotFoundException", kms.encrypt, KeyId=missing, Plaintext=b"x")
    expect_error("NotFoundException", kms.enable_key, KeyId=missing)
    expect_error("NotFoundException", kms.list_key_rotations, KeyId=missing)
    for bad in (f"arn:aws:kms:{REGION}:not-an-account:key/{missing}", "arn:aws:s3:::my-bucket", "arn:aws:kms"):
        expect_error("InvalidArnException", kms.describe_key, KeyId=bad)


def test_invalid_marker(kms):
    key_id = new_key(kms)["KeyId"]
    new_key(kms)
    for n in ("alias/m1", "alias/m2"):
        kms.create_alias(AliasName=n, TargetKeyId=key_id)
    alias_marker = kms.list_aliases(Limit=1)["NextMarker"]
    keys_marker = kms.list_keys(Limit=1)["NextMarker"]
    expect_error("InvalidMarkerException", kms.list_keys, Marker="this-is-no-marker!")
    expect_error("InvalidMarkerException", kms.list_keys, Marker=alias_marker)
    expect_error("InvalidMarkerException", kms.list_aliases, Marker=keys_marker)
    expect_error("InvalidMarkerException", kms.list_key_rotations, KeyId=key_id, Marker=keys_marker)
    expect_error("InvalidMarkerException", kms.list_resource_tags, KeyId=key_id, Marker=keys_marker)


def test_validation_errors(kms, kms_raw):
    key_id = new_key(kms)["KeyId"]
    expect_error("ValidationException", kms.encrypt, KeyId=key_id, Plaintext=b"x" * 4097)
    expect_error("ValidationException", kms_raw.encrypt, KeyId=key_id, Plaintext=b"")
    expect_error("ValidationException", kms_raw.encrypt, KeyId=key_id)
    expect_error("ValidationException", kms_raw.describe_key)
    expect_error("ValidationException", kms_raw.decrypt)
    expect_error("ValidationException", kms_raw.create_alias, AliasName="alias/x")
    for days in (6, 31):
        expect_error("ValidationException", kms.schedule_key_deletion, KeyId=key_id, PendingWindowInDays=days)
    for limit in (0, 1001):
        expect_error("ValidationException", kms_raw.list_keys, Limit=limit)
    expect_error("ValidationException", kms.create_key, KeySpec="NOT_A_SPEC")
    expect_error("ValidationException", kms.encrypt, KeyId=key_id, Plaintext=b"x", EncryptionContext={"": "v"})
    # Nothing was scheduled by the refused requests.
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Enabled"


def test_unsupported_operations(kms):
    # An empty statement list is a malformed policy, said plainly.
    policy = '{"Version":"2012-10-17","Statement":[]}'
    expect_error("MalformedPolicyDocumentException", kms.create_key, Policy=policy)
    expect_error("UnsupportedOperationException", kms.create_key, Origin="AWS_CLOUDHSM")
    expect_error("UnsupportedOperationException", kms.create_key, MultiRegion=True)
    assert kms.list_keys()["Keys"] == [], "a refused CreateKey must not create a key"


def test_grant_tokens_and_dry_run(kms):
    key_id = new_key(kms)["KeyId"]
    # Forged grant tokens are refused (real ones are tested with grants).
    expect_error("InvalidGrantTokenException", kms.encrypt, KeyId=key_id, Plaintext=b"x", GrantTokens=["token"])
    expect_error("InvalidGrantTokenException", kms.describe_key, KeyId=key_id, GrantTokens=["token"])
    expect_error("DryRunOperationException", kms.encrypt, KeyId=key_id, Plaintext=b"x", DryRun=True, status=412)
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"x")["CiphertextBlob"]
    expect_error("DryRunOperationException", kms.decrypt, CiphertextBlob=blob, DryRun=True, status=412)
    expect_error("DryRunOperationException", kms.generate_data_key, KeyId=key_id, KeySpec="AES_256", DryRun=True, status=412)


def test_other_account_is_denied(server, kms):
    mine = new_key(kms)
    blob = kms.encrypt(KeyId=mine["KeyId"], Plaintext=b"mine")["CiphertextBlob"]
    atrest_admin(server, "account", "create", "--id", "222233334444")
    created = json.loads(atrest_admin(server, "access-key", "create", "--account", "222233334444").stdout)
    other = server.client(creds=(created["access_key_id"], created["secret_access_key"]))
    assert other.list_keys()["Keys"] == []
    expect_error("AccessDeniedException", other.describe_key, KeyId=mine["Arn"])
    expect_error("AccessDeniedException", other.encrypt, KeyId=mine["Arn"], Plaintext=b"x")
    expect_error("AccessDeniedException", other.generate_data_key, KeyId=mine["Arn"], KeySpec="AES_256")
    expect_error("AccessDeniedException", other.decrypt, CiphertextBlob=blob)
    expect_error("AccessDeniedException", other.disable_key, KeyId=mine["Arn"])
    expect_error("AccessDeniedException", other.schedule_key_deletion, KeyId=mine["Arn"], PendingWindowInDays=7)
    # A bare key id is looked up in the caller's own account.
    expect_error("NotFoundException", other.describe_key, KeyId=mine["KeyId"])
    # The owner's key is untouched and still works.
    assert kms.describe_key(KeyId=mine["KeyId"])["KeyMetadata"]["KeyState"] == "Enabled"
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"mine"
    theirs = new_key(other)
    assert theirs["AWSAccountId"] == "222233334444"
    expect_error("AccessDeniedException", kms.describe_key, KeyId=theirs["Arn"])
