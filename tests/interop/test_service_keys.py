"""Service keys (the AWS-managed-key equivalent) through the REST endpoint
`PUT /v1/service-keys/{service}` (SigV4 service `atrest`) and boto3.

* The first PUT creates `alias/atrest/<service>` in the caller's account and
  the signed region and returns {"key_arn", "alias", "service"}; repeats
  return the same ARN; another service or another region gets another key;
  another account gets its own; the audit trail records the creation by the
  service principal through the service. Bad service names and unsigned
  requests are refused.
* Through boto3 the customer sees the key as AWS shows AWS managed keys:
  DescribeKey KeyManager `AWS`, ListKeys and ListAliases list it,
  GetKeyPolicy works, rotation is off until EnableKeyRotation turns it on.
* The customer may not change it: DisableKey, ScheduleKeyDeletion,
  PutKeyPolicy, UpdateKeyDescription, TagResource, UntagResource ->
  AccessDeniedException; CreateAlias or UpdateAlias pointing a customer
  alias at it -> UnsupportedOperationException; its reserved alias can be
  neither created, re-pointed nor deleted by the customer; and it is usable
  only through the service: direct Encrypt, GenerateDataKey, CreateGrant by
  the customer -> AccessDeniedException. Nothing of it changed afterwards.

Capabilities: K2 service keys (also K7 key policies, K10 regions).
"""

from __future__ import annotations

import json

from botocore.exceptions import ClientError

from conftest import (
    audit_log_path,
    audit_records,
    expect_error,
    new_account,
    raw_request,
    rest_call,
    root_arn,
)

A = "111122223333"
B = "444455556666"
EU = "eu-west-1"


def ensure(server, service, creds, region=None):
    return rest_call(server, "PUT", f"/v1/service-keys/{service}", creds=creds, region=region)


def test_service_key_endpoint(make_server):
    server = make_server(regions=("us-east-1", EU)).start()
    root_a = new_account(server, A)
    root_b = new_account(server, B)

    r = ensure(server, "disk", root_a)
    assert r.status_code == 200, r.text
    first = r.json()
    assert first["service"] == "disk" and first["alias"] == "alias/atrest/disk"
    assert first["key_arn"].startswith(f"arn:aws:kms:us-east-1:{A}:key/"), first
    # Same service, account and region: the same key, however often.
    for _ in range(3):
        again = ensure(server, "disk", root_a)
        assert again.status_code == 200 and again.json() == first, again.text
    # Another service, another region, another account: another key each.
    rds = ensure(server, "rds", root_a).json()
    eu = ensure(server, "disk", root_a, region=EU).json()
    other = ensure(server, "disk", root_b).json()
    assert rds["alias"] == "alias/atrest/rds"
    assert eu["key_arn"].startswith(f"arn:aws:kms:{EU}:{A}:key/")
    assert other["key_arn"].startswith(f"arn:aws:kms:us-east-1:{B}:key/")
    arns = {first["key_arn"], rds["key_arn"], eu["key_arn"], other["key_arn"]}
    assert len(arns) == 4
    assert ensure(server, "disk", root_a, region=EU).json() == eu

    # The aliases resolve, each in its own region and account.
    ka, ka_eu, kb = server.client(creds=root_a), server.client(creds=root_a, region=EU), server.client(creds=root_b)
    assert ka.describe_key(KeyId="alias/atrest/disk")["KeyMetadata"]["Arn"] == first["key_arn"]
    assert ka.describe_key(KeyId="alias/atrest/rds")["KeyMetadata"]["Arn"] == rds["key_arn"]
    assert ka_eu.describe_key(KeyId="alias/atrest/disk")["KeyMetadata"]["Arn"] == eu["key_arn"]
    assert kb.describe_key(KeyId="alias/atrest/disk")["KeyMetadata"]["Arn"] == other["key_arn"]
    expect_error("NotFoundException", kb.describe_key, KeyId="alias/atrest/rds")
    expect_error("AccessDeniedException", kb.describe_key, KeyId=first["key_arn"])
    # One key per service and region: no duplicates in the listings.
    disk_keys = [k for k in ka.list_keys()["Keys"] if k["KeyArn"] in arns]
    assert sorted(k["KeyArn"] for k in disk_keys) == sorted([first["key_arn"], rds["key_arn"]])

    # The audit trail shows who created it: the service principal, through
    # the service, for the customer's account (and the REST call itself).
    records = audit_records(audit_log_path(server))
    created = [r for r in records if r["operation"] == "CreateKey" and r.get("key_arn") == first["key_arn"]]
    assert len(created) == 1, created
    assert created[0]["principal"] == "disk.atrest" and created[0]["account"] == A, created
    assert created[0]["via_service"] == "disk.us-east-1.atrest" and created[0]["result"] == "Success", created
    ensured = [r for r in records if r["operation"] == "kms:EnsureServiceKey" and r.get("account") == A]
    assert len(ensured) >= 4 and all(r["principal"] == root_arn(A) for r in ensured), ensured
    # Refusals: bad service names, unsigned or wrongly signed requests.
    for bad in ("Disk", "disk-1", "a" * 33, "d%2Fk"):
        r = ensure(server, bad, root_a)
        assert r.status_code == 400, (bad, r.status_code, r.text)
        assert r.json()["code"] == "ValidationException", r.text
    r = raw_request(server, b"", method="PUT", path="/v1/service-keys/disk", target=None, service="atrest",
                    content_type=None, sign=False)
    assert r.status_code == 401 and r.json()["code"] == "MissingAuthenticationTokenException", r.text
    r = raw_request(server, b"", method="PUT", path="/v1/service-keys/ebs", target=None, service="kms",
                    content_type=None, creds=root_a)
    assert r.status_code == 401, r.text
    assert "alias/atrest/ebs" not in {a["AliasName"] for a in ka.list_aliases()["Aliases"]}


def test_service_key_as_customers_see_it(server):
    root_a = new_account(server, A)
    kms = server.client(creds=root_a)
    arn = ensure(server, "disk", root_a).json()["key_arn"]
    kid = arn.rsplit("/", 1)[1]

    md = kms.describe_key(KeyId="alias/atrest/disk")["KeyMetadata"]
    assert md["KeyManager"] == "AWS" and md["Arn"] == arn and md["KeyId"] == kid
    assert md["KeyState"] == "Enabled" and md["Enabled"] is True and md["Origin"] == "AWS_KMS"
    assert md["AWSAccountId"] == A and md["Description"]
    assert kid in {k["KeyId"] for k in kms.list_keys()["Keys"]}
    aliases = {a["AliasName"]: a for a in kms.list_aliases()["Aliases"]}
    assert aliases["alias/atrest/disk"]["TargetKeyId"] == kid
    assert aliases["alias/atrest/disk"]["AliasArn"] == f"arn:aws:kms:us-east-1:{A}:alias/atrest/disk"
    assert [a["AliasName"] for a in kms.list_aliases(KeyId=kid)["Aliases"]] == ["alias/atrest/disk"]
    policy = json.loads(kms.get_key_policy(KeyId=kid, PolicyName="default")["Policy"])
    assert policy["Statement"], policy
    assert kms.list_key_policies(KeyId=kid)["PolicyNames"] == ["default"]
    # Rotation is off until the customer turns it on.
    assert kms.get_key_rotation_status(KeyId=kid)["KeyRotationEnabled"] is False
    kms.enable_key_rotation(KeyId=kid)
    assert kms.get_key_rotation_status(KeyId=kid)["KeyRotationEnabled"] is True
    kms.list_resource_tags(KeyId=kid)
    kms.list_grants(KeyId=kid)


def test_customers_cannot_change_or_use_service_keys(server):
    root_a = new_account(server, A)
    kms = server.client(creds=root_a)
    arn = ensure(server, "disk", root_a).json()["key_arn"]
    kid = arn.rsplit("/", 1)[1]
    before = kms.describe_key(KeyId=kid)["KeyMetadata"]
    policy_before = kms.get_key_policy(KeyId=kid, PolicyName="default")["Policy"]
    mine = kms.create_key(Description="customer key")["KeyMetadata"]
    kms.create_alias(AliasName="alias/mine", TargetKeyId=mine["KeyId"])

    denied = [
        (kms.disable_key, dict(KeyId=kid)),
        (kms.schedule_key_deletion, dict(KeyId=kid, PendingWindowInDays=7)),
        (kms.put_key_policy, dict(KeyId=kid, PolicyName="default", BypassPolicyLockoutSafetyCheck=True,
                                  Policy=json.dumps({"Version": "2012-10-17", "Statement": [
                                      {"Effect": "Allow", "Principal": {"AWS": root_arn(A)}, "Action": "kms:*",
                                       "Resource": "*"}]}))),
        (kms.update_key_description, dict(KeyId=kid, Description="mine now")),
        (kms.tag_resource, dict(KeyId=kid, Tags=[{"TagKey": "owner", "TagValue": "me"}])),
        (kms.untag_resource, dict(KeyId=kid, TagKeys=["owner"])),
        # Usable only through the service.
        (kms.encrypt, dict(KeyId=kid, Plaintext=b"direct")),
        (kms.encrypt, dict(KeyId="alias/atrest/disk", Plaintext=b"direct")),
        (kms.generate_data_key, dict(KeyId=kid, KeySpec="AES_256")),
        (kms.generate_data_key_without_plaintext, dict(KeyId=kid, KeySpec="AES_256")),
        (kms.create_grant, dict(KeyId=kid, GranteePrincipal=root_arn(A), Operations=["Encrypt"])),
    ]
    for fn, kw in denied:
        r = expect_error("AccessDeniedException", fn, **kw)
        assert arn in r["Error"]["Message"], (fn, r["Error"])
    # Customer aliases cannot point at it.
    expect_error("UnsupportedOperationException", kms.create_alias, AliasName="alias/sneaky", TargetKeyId=kid)
    expect_error("UnsupportedOperationException", kms.update_alias, AliasName="alias/mine", TargetKeyId=kid)
    # Its reserved alias is the service's: not re-pointed, deleted or created.
    for fn, kw in ((kms.update_alias, dict(AliasName="alias/atrest/disk", TargetKeyId=mine["KeyId"])),
                   (kms.delete_alias, dict(AliasName="alias/atrest/disk")),
                   (kms.create_alias, dict(AliasName="alias/atrest/rds", TargetKeyId=mine["KeyId"]))):
        try:
            fn(**kw)
            raise AssertionError(f"{fn} {kw} was allowed")
        except ClientError as e:
            assert e.response["ResponseMetadata"]["HTTPStatusCode"] == 400, e.response
            assert e.response["Error"]["Code"] in ("InvalidAliasNameException", "NotAuthorizedException",
                                                   "AccessDeniedException"), e.response["Error"]

    # Nothing changed.
    after = kms.describe_key(KeyId=kid)["KeyMetadata"]
    for field in ("KeyState", "Enabled", "Description", "KeyManager", "Arn"):
        assert after[field] == before[field], field
    assert "DeletionDate" not in after
    assert kms.get_key_policy(KeyId=kid, PolicyName="default")["Policy"] == policy_before
    assert kms.list_resource_tags(KeyId=kid)["Tags"] == []
    aliases = {a["AliasName"]: a.get("TargetKeyId") for a in kms.list_aliases()["Aliases"]}
    assert aliases["alias/atrest/disk"] == kid and aliases["alias/mine"] == mine["KeyId"]
    assert "alias/sneaky" not in aliases and "alias/atrest/rds" not in aliases
    # The next PUT returns the same, unchanged key.
    assert ensure(server, "disk", root_a).json()["key_arn"] == arn
