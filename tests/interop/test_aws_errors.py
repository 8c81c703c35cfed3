"""AWS's errors, not approximations (issue 20, item 6): through real boto3,
each refusal carries the error code AWS KMS answers and, where AWS fixes it,
AWS's message: reserved alias names (NotAuthorizedException, no message),
alias names outside the pattern, validation messages that do not repeat a
plaintext, tag limits and reserved tag keys, InvalidCiphertextException with
no message (the body is only `{"__type": ...}`), the key ids of the rotation
answers, unknown `mrk-` key ids, ImportKeyMaterial's default expiry, and
DryRun after authorization and key state.

Capabilities: O1 API.
"""

from __future__ import annotations

import base64
import json

import pytest
from botocore.exceptions import ClientError

from conftest import raw_request

REGION = "us-east-1"


def err(fn, *args, **kwargs) -> dict:
    """The parsed error of a call that must fail (HTTP 4xx)."""
    with pytest.raises(ClientError) as ei:
        fn(*args, **kwargs)
    resp = ei.value.response
    assert 400 <= resp["ResponseMetadata"]["HTTPStatusCode"] < 500, resp
    return resp


def code(fn, *args, **kwargs) -> str:
    return err(fn, *args, **kwargs)["Error"]["Code"]


def message(fn, *args, **kwargs) -> str:
    return err(fn, *args, **kwargs)["Error"]["Message"]


def test_alias_errors(kms_raw):
    kms = kms_raw
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    kms.create_alias(AliasName="alias/mine", TargetKeyId=key)
    for fn, kw in (
        (kms.create_alias, {"AliasName": "alias/aws/ebs", "TargetKeyId": key}),
        (kms.update_alias, {"AliasName": "alias/aws/s3", "TargetKeyId": key}),
        (kms.delete_alias, {"AliasName": "alias/aws/rds"}),
    ):
        e = err(fn, **kw)
        assert e["Error"]["Code"] == "NotAuthorizedException", e
        assert e["Error"]["Message"] == "", e
    e = err(kms.create_alias, AliasName="alias/x y", TargetKeyId=key)
    assert e["Error"]["Code"] == "ValidationException"
    assert e["Error"]["Message"] == (
        "1 validation error detected: Value 'alias/x y' at 'aliasName' failed to satisfy constraint: "
        "Member must satisfy regular expression pattern: ^[a-zA-Z0-9:/_-]+$")
    assert code(kms.update_alias, AliasName="alias/x y", TargetKeyId=key) == "ValidationException"
    assert code(kms.create_alias, AliasName="mine", TargetKeyId=key) == "InvalidAliasNameException"
    assert message(kms.describe_key, KeyId="alias/none") == \
        f"Alias arn:aws:kms:{REGION}:{kms.describe_key(KeyId=key)['KeyMetadata']['AWSAccountId']}:alias/none is not found."


def test_validation_messages(kms_raw):
    kms = kms_raw
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    e = err(kms.encrypt, KeyId=key, Plaintext=b"x" * 4097)
    assert e["Error"]["Code"] == "ValidationException"
    assert e["Error"]["Message"] == ("1 validation error detected: Value at 'plaintext' failed to satisfy "
                                     "constraint: Member must have length less than or equal to 4096")
    assert message(kms.schedule_key_deletion, KeyId=key, PendingWindowInDays=6) == (
        "1 validation error detected: Value '6' at 'pendingWindowInDays' failed to satisfy constraint: "
        "Member must have value greater than or equal to 7")
    for n in (0, 1025):
        assert code(kms.generate_random, NumberOfBytes=n) == "ValidationException"
        assert code(kms.generate_data_key, KeyId=key, NumberOfBytes=n) == "ValidationException"
    for kw in ({}, {"KeySpec": "AES_256", "NumberOfBytes": 32}):
        e = err(kms.generate_data_key, KeyId=key, **kw)
        assert e["Error"]["Code"] == "ValidationException", kw
        assert e["Error"]["Message"] == "Please specify either number of bytes or key spec.", kw
    for days in (89, 2561):
        assert code(kms.enable_key_rotation, KeyId=key, RotationPeriodInDays=days) == "ValidationException"
    assert code(kms.get_key_policy, KeyId=key, PolicyName="not valid") == "ValidationException"
    e = err(kms.get_key_policy, KeyId=key, PolicyName="other")
    assert e["Error"]["Code"] == "NotFoundException"
    assert e["Error"]["Message"] == "No such policy exists"
    assert code(kms.list_keys, Marker="not-a-marker") == "InvalidMarkerException"


def test_tag_errors(kms_raw):
    kms = kms_raw
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    many = [{"TagKey": f"t{i}", "TagValue": "v"} for i in range(51)]
    assert code(kms.tag_resource, KeyId=key, Tags=many) == "TagException"
    assert code(kms.create_key, Tags=many) == "TagException"
    long = "k" * 129
    e = err(kms.tag_resource, KeyId=key, Tags=[{"TagKey": long, "TagValue": "v"}])
    assert e["Error"]["Code"] == "ValidationException"
    assert e["Error"]["Message"] == (
        f"1 validation error detected: Value '{long}' at 'tags.1.member.tagKey' failed to satisfy constraint: "
        "Member must have length less than or equal to 128")
    for reserved in ("aws:x", "AWS:x", "Aws:x"):
        e = err(kms.tag_resource, KeyId=key, Tags=[{"TagKey": reserved, "TagValue": "v"}])
        assert e["Error"]["Code"] == "TagException", reserved
    assert kms.list_resource_tags(KeyId=key)["Tags"] == []


def test_invalid_ciphertext_has_no_message(server, kms_raw):
    kms = kms_raw
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    blob = kms.encrypt(KeyId=key, Plaintext=b"x", EncryptionContext={"a": "1"})["CiphertextBlob"]
    for kw in ({"CiphertextBlob": blob}, {"CiphertextBlob": blob, "EncryptionContext": {"a": "2"}},
               {"CiphertextBlob": b"not a ciphertext blob at all, not at all"}):
        e = err(kms.decrypt, **kw)
        assert e["Error"]["Code"] == "InvalidCiphertextException", e
        assert e["Error"]["Message"] == "", e
    # On the wire: the type alone, as AWS sends it.
    r = raw_request(server, json.dumps({"CiphertextBlob": base64.b64encode(blob).decode()}),
                    target="TrentService.Decrypt")
    assert r.status_code == 400
    assert r.json() == {"__type": "InvalidCiphertextException"}, r.text


def test_key_ids_and_unknown_keys(kms_raw):
    kms = kms_raw
    md = kms.create_key()["KeyMetadata"]
    key, arn, account = md["KeyId"], md["Arn"], md["AWSAccountId"]
    assert kms.get_key_rotation_status(KeyId=arn)["KeyId"] == key
    assert kms.rotate_key_on_demand(KeyId=key)["KeyId"] == arn
    mrk = "mrk-1234abcd12ab34cd56ef1234567890ab"
    want = f"Key 'arn:aws:kms:{REGION}:{account}:key/{mrk}' does not exist"
    for key_id in (mrk, f"arn:aws:kms:{REGION}:{account}:key/{mrk}"):
        e = err(kms.describe_key, KeyId=key_id)
        assert e["Error"]["Code"] == "NotFoundException"
        assert e["Error"]["Message"] == want
        assert message(kms.encrypt, KeyId=key_id, Plaintext=b"x") == want
    gone = "1234abcd-12ab-34cd-56ef-1234567890ab"
    assert message(kms.describe_key, KeyId=gone) == f"Key 'arn:aws:kms:{REGION}:{account}:key/{gone}' does not exist"
    kms.disable_key(KeyId=key)
    e = err(kms.encrypt, KeyId=key, Plaintext=b"x")
    assert e["Error"]["Code"] == "DisabledException"
    assert e["Error"]["Message"] == f"{arn} is disabled."
    kms.schedule_key_deletion(KeyId=key, PendingWindowInDays=7)
    e = err(kms.encrypt, KeyId=key, Plaintext=b"x")
    assert e["Error"]["Code"] == "KMSInvalidStateException"
    assert e["Error"]["Message"] == f"{arn} is pending deletion."


def test_import_key_material_defaults_to_expiring(kms_raw):
    kms = kms_raw
    key = kms.create_key(Origin="EXTERNAL")["KeyMetadata"]["KeyId"]
    p = kms.get_parameters_for_import(KeyId=key, WrappingAlgorithm="RSAES_OAEP_SHA_256",
                                      WrappingKeySpec="RSA_2048")
    for kw in ({}, {"ExpirationModel": "KEY_MATERIAL_EXPIRES"}):
        e = err(kms.import_key_material, KeyId=key, ImportToken=p["ImportToken"],
                EncryptedKeyMaterial=b"\x00" * 256, **kw)
        assert e["Error"]["Code"] == "ValidationException", kw
        assert e["Error"]["Message"] == \
            "A validTo date must be set if the ExpirationModel is KEY_MATERIAL_EXPIRES", kw


def test_dry_run(server, kms_raw):
    kms = kms_raw
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    blob = kms.encrypt(KeyId=key, Plaintext=b"x")["CiphertextBlob"]
    grantee = kms.describe_key(KeyId=key)["KeyMetadata"]["AWSAccountId"]
    grantee = f"arn:aws:iam::{grantee}:root"
    grant = kms.create_grant(KeyId=key, GranteePrincipal=grantee, Operations=["Decrypt"], Name="g")
    calls = (
        (kms.encrypt, {"KeyId": key, "Plaintext": b"x"}),
        (kms.decrypt, {"CiphertextBlob": blob}),
        (kms.re_encrypt, {"CiphertextBlob": blob, "DestinationKeyId": key}),
        (kms.generate_data_key, {"KeyId": key, "KeySpec": "AES_256"}),
        (kms.generate_data_key_without_plaintext, {"KeyId": key, "NumberOfBytes": 16}),
        (kms.create_grant, {"KeyId": key, "GranteePrincipal": grantee, "Operations": ["Decrypt"], "Name": "g"}),
        (kms.retire_grant, {"KeyId": key, "GrantId": grant["GrantId"]}),
        (kms.revoke_grant, {"KeyId": key, "GrantId": grant["GrantId"]}),
    )
    for fn, kw in calls:
        e = err(fn, DryRun=True, **kw)
        assert e["Error"]["Code"] == "DryRunOperationException", (fn, e)
        assert e["ResponseMetadata"]["HTTPStatusCode"] == 412, e
        assert e["Error"]["Message"] == "The request would have succeeded, but the DryRun parameter was set."
    assert len(kms.list_grants(KeyId=key)["Grants"]) == 1
    kms.disable_key(KeyId=key)
    assert code(kms.encrypt, KeyId=key, Plaintext=b"x", DryRun=True) == "DisabledException"
