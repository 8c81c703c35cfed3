"""Grants through boto3: CreateGrant, ListGrants, ListRetirableGrants,
RetireGrant and RevokeGrant, as AWS KMS has them.

* A grant lets its grantee (a user with no policy of its own, a user of
  another account, a service principal such as `disk.atrest`) perform
  exactly the listed operations at once, with or without its grant token;
  every operation that takes GrantTokens accepts an authentic token and
  refuses a forged or tampered one (InvalidGrantTokenException).
* EncryptionContextEquals and EncryptionContextSubset constraints hold on
  every call that carries a context.
* RetireGrant is allowed to the retiring principal, to the grantee when the
  grant includes RetireGrant, and to the issuing account's root (by token, or
  by KeyId and GrantId); to no one else. RevokeGrant needs kms:RevokeGrant on
  the key. A retired or revoked grant allows nothing any more.
* A Name makes CreateGrant idempotent; a grant that allows CreateGrant lets
  its grantee create only narrower grants (a subset of its operations, with
  its constraints); key policies can limit CreateGrant with
  kms:GrantOperations; an explicit Deny beats a grant.
* ListGrants (filters, pagination) and ListRetirableGrants show what AWS
  shows (ARN key id, issuing account root, operations, constraints, names);
  ListRetirableGrants includes grants on other accounts' keys whose retiring
  principal is the caller's, but never shows another account's grants.

Capabilities: K7 policies, grants and users (also K2: grants are how
services act on customers' keys).
"""

from __future__ import annotations

import json

from botocore.exceptions import ClientError

from conftest import (
    code_of,
    REGION,
    expect_denied,
    expect_error,
    new_account,
    new_user,
    policy_doc,
    put_user_policy,
    root_arn,
    user_arn,
)

A = "111122223333"
B = "444455556666"


def tamper(token: str) -> str:
    """The token with one character in its middle changed."""
    i = len(token) // 2
    c = "A" if token[i] != "A" else "B"
    return token[:i] + c + token[i + 1:]


def grants_of(kms, key_id, **kw) -> list[dict]:
    return kms.list_grants(KeyId=key_id, **kw)["Grants"]


def test_grant_use_tokens_listing_retire_and_revoke(server):
    root_a = new_account(server, A)
    ra = server.client(creds=root_a)
    app = server.client(creds=new_user(server, A, "app", manager=root_a))
    retirer = server.client(creds=new_user(server, A, "retirer", manager=root_a))
    other = server.client(creds=new_user(server, A, "other", manager=root_a))
    key = ra.create_key()["KeyMetadata"]
    kid, arn, app_arn = key["KeyId"], key["Arn"], user_arn(A, "app")

    # Without a grant, app (no identity policy) may do nothing.
    expect_denied(app.encrypt, KeyId=kid, Plaintext=b"x",
                  principal=app_arn, op="Encrypt", key_arn=arn, why="no-identity")

    ops = ["Encrypt", "Decrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext", "DescribeKey",
           "ReEncryptFrom", "ReEncryptTo"]
    g = ra.create_grant(KeyId=kid, GranteePrincipal=app_arn, Operations=ops,
                        RetiringPrincipal=user_arn(A, "retirer"))
    gid, token = g["GrantId"], g["GrantToken"]
    assert gid and token

    # The grantee uses it at once, with and without the token, on every
    # operation that takes GrantTokens.
    blob = app.encrypt(KeyId=kid, Plaintext=b"granted", GrantTokens=[token])["CiphertextBlob"]
    assert app.decrypt(CiphertextBlob=blob, GrantTokens=[token])["Plaintext"] == b"granted"
    assert app.decrypt(CiphertextBlob=blob)["Plaintext"] == b"granted"
    dk = app.generate_data_key(KeyId=kid, KeySpec="AES_256", GrantTokens=[token])
    assert app.decrypt(CiphertextBlob=dk["CiphertextBlob"])["Plaintext"] == dk["Plaintext"]
    app.generate_data_key_without_plaintext(KeyId=kid, NumberOfBytes=32, GrantTokens=[token])
    assert app.describe_key(KeyId=arn, GrantTokens=[token])["KeyMetadata"]["KeyId"] == kid
    re = app.re_encrypt(CiphertextBlob=blob, DestinationKeyId=kid, GrantTokens=[token])
    assert app.decrypt(CiphertextBlob=re["CiphertextBlob"])["Plaintext"] == b"granted"
    # Tokens are accepted from anyone on any operation taking GrantTokens.
    ra.encrypt(KeyId=kid, Plaintext=b"x", GrantTokens=[token])
    # ... but only authentic ones.
    for bad in (tamper(token), "not-a-grant-token", token[:-8]):
        expect_error("InvalidGrantTokenException", app.encrypt, KeyId=kid, Plaintext=b"x", GrantTokens=[bad])
        expect_error("InvalidGrantTokenException", app.decrypt, CiphertextBlob=blob, GrantTokens=[token, bad])
        expect_error("InvalidGrantTokenException", ra.describe_key, KeyId=kid, GrantTokens=[bad])
        expect_error("InvalidGrantTokenException", ra.generate_data_key, KeyId=kid, KeySpec="AES_256",
                     GrantTokens=[bad])
        expect_error("InvalidGrantTokenException", ra.create_grant, KeyId=kid, GranteePrincipal=app_arn,
                     Operations=["Decrypt"], GrantTokens=[bad])
    # Operations outside the grant stay refused.
    expect_denied(app.disable_key, KeyId=kid, principal=app_arn, op="DisableKey", key_arn=arn, why="no-identity")
    expect_denied(app.create_grant, KeyId=kid, GranteePrincipal=app_arn, Operations=["Decrypt"],
                  principal=app_arn, op="CreateGrant", key_arn=arn, why="no-identity")
    expect_denied(app.list_grants, KeyId=kid, principal=app_arn, op="ListGrants", key_arn=arn, why="no-identity")
    other_key = ra.create_key()["KeyMetadata"]
    expect_denied(app.encrypt, KeyId=other_key["KeyId"], Plaintext=b"x", GrantTokens=[token],
                  principal=app_arn, op="Encrypt", key_arn=other_key["Arn"], why="no-identity")

    # Listing shows what AWS shows.
    listed = grants_of(ra, kid)
    assert len(listed) == 1
    e = listed[0]
    assert e["KeyId"] == arn and e["GrantId"] == gid
    assert e["GranteePrincipal"] == app_arn and e["RetiringPrincipal"] == user_arn(A, "retirer")
    assert e["IssuingAccount"] == root_arn(A)
    assert sorted(e["Operations"]) == sorted(ops)
    assert "Constraints" not in e and "Name" not in e
    assert e["CreationDate"].year >= 2024
    g2 = ra.create_grant(KeyId=arn, GranteePrincipal=user_arn(A, "other"), Operations=["Decrypt"],
                         Name="second-grant")
    assert {x["GrantId"] for x in grants_of(ra, kid)} == {gid, g2["GrantId"]}
    assert [x["GrantId"] for x in grants_of(ra, kid, GrantId=gid)] == [gid]
    assert [x["GrantId"] for x in grants_of(ra, arn, GranteePrincipal=user_arn(A, "other"))] == [g2["GrantId"]]
    assert [x["Name"] for x in grants_of(ra, kid, GrantId=g2["GrantId"])] == ["second-grant"]
    page1 = ra.list_grants(KeyId=kid, Limit=1)
    assert len(page1["Grants"]) == 1 and page1["Truncated"] is True
    page2 = ra.list_grants(KeyId=kid, Limit=1, Marker=page1["NextMarker"])
    assert len(page2["Grants"]) == 1 and not page2.get("Truncated")
    assert {page1["Grants"][0]["GrantId"], page2["Grants"][0]["GrantId"]} == {gid, g2["GrantId"]}
    retirable = ra.list_retirable_grants(RetiringPrincipal=user_arn(A, "retirer"))["Grants"]
    assert [(x["GrantId"], x["KeyId"]) for x in retirable] == [(gid, arn)]
    assert ra.list_retirable_grants(RetiringPrincipal=user_arn(A, "nobody"))["Grants"] == []
    expect_error("AccessDeniedException", app.list_retirable_grants, RetiringPrincipal=user_arn(A, "retirer"))

    # RetireGrant: not by the grantee (RetireGrant is not in its grant), not
    # by anyone else; by the retiring principal, with the token.
    for who in (app, other):
        expect_error("AccessDeniedException", who.retire_grant, GrantToken=token)
        expect_error("AccessDeniedException", who.retire_grant, KeyId=arn, GrantId=gid)
    expect_error("InvalidGrantTokenException", retirer.retire_grant, GrantToken=tamper(token))
    retirer.retire_grant(GrantToken=token)
    assert [x["GrantId"] for x in grants_of(ra, kid)] == [g2["GrantId"]]
    assert ra.list_retirable_grants(RetiringPrincipal=user_arn(A, "retirer"))["Grants"] == []
    expect_denied(app.decrypt, CiphertextBlob=blob, principal=app_arn, op="Decrypt", key_arn=arn,
                  why="no-identity")
    assert code_of(retirer.retire_grant, GrantToken=token) in ("InvalidGrantIdException", "NotFoundException")

    # The grantee may retire a grant that includes RetireGrant.
    g3 = ra.create_grant(KeyId=kid, GranteePrincipal=app_arn, Operations=["Encrypt", "RetireGrant"])
    app.encrypt(KeyId=kid, Plaintext=b"x")
    app.retire_grant(GrantToken=g3["GrantToken"])
    expect_denied(app.encrypt, KeyId=kid, Plaintext=b"x", principal=app_arn, op="Encrypt", key_arn=arn,
                  why="no-identity")
    # The issuing account's root may retire any grant it issued, by id.
    g4 = ra.create_grant(KeyId=kid, GranteePrincipal=app_arn, Operations=["Encrypt"])
    ra.retire_grant(KeyId=arn, GrantId=g4["GrantId"])

    # RevokeGrant needs kms:RevokeGrant on the key: not the grantee's, not
    # by its grant; the root's (key policy) or a user's identity policy.
    g5 = ra.create_grant(KeyId=kid, GranteePrincipal=app_arn, Operations=["Encrypt", "Decrypt"])
    expect_denied(app.revoke_grant, KeyId=kid, GrantId=g5["GrantId"],
                  principal=app_arn, op="RevokeGrant", key_arn=arn, why="no-identity")
    put_user_policy(server, A, "other", "revoker", {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "kms:RevokeGrant", "Resource": arn}]}, manager=root_a)
    other.revoke_grant(KeyId=kid, GrantId=g5["GrantId"])
    expect_denied(app.encrypt, KeyId=kid, Plaintext=b"x", principal=app_arn, op="Encrypt", key_arn=arn,
                  why="no-identity")
    ra.revoke_grant(KeyId=arn, GrantId=g2["GrantId"])
    assert grants_of(ra, kid) == []
    assert code_of(ra.revoke_grant, KeyId=kid, GrantId=g2["GrantId"]) in (
        "InvalidGrantIdException", "NotFoundException")

    # DryRun checks without creating.
    expect_error("DryRunOperationException", ra.create_grant, KeyId=kid, GranteePrincipal=app_arn,
                 Operations=["Encrypt"], DryRun=True, status=412)
    assert grants_of(ra, kid) == []


def test_grant_constraints(server):
    root_a = new_account(server, A)
    ra = server.client(creds=root_a)
    app = server.client(creds=new_user(server, A, "app", manager=root_a))
    key = ra.create_key()["KeyMetadata"]
    kid = key["KeyId"]
    acme = {"tenant": "acme"}
    ra.create_grant(KeyId=kid, GranteePrincipal=user_arn(A, "app"), Operations=["Encrypt", "Decrypt"],
                    Constraints={"EncryptionContextEquals": {"tenant": "acme", "object": "o1"}})
    ra.create_grant(KeyId=kid, GranteePrincipal=user_arn(A, "app"),
                    Operations=["GenerateDataKey", "Decrypt"], Constraints={"EncryptionContextSubset": acme})
    exact = {"tenant": "acme", "object": "o1"}

    blob = app.encrypt(KeyId=kid, Plaintext=b"exact", EncryptionContext=exact)["CiphertextBlob"]
    assert app.decrypt(CiphertextBlob=blob, EncryptionContext=exact)["Plaintext"] == b"exact"
    for ctx in ({}, acme, {"tenant": "acme", "object": "o1", "more": "x"}, {"tenant": "acme", "object": "o2"}):
        expect_error("AccessDeniedException", app.encrypt, KeyId=kid, Plaintext=b"x", EncryptionContext=ctx)
    # Subset: any context containing tenant=acme.
    for ctx in (acme, {"tenant": "acme", "object": "anything"}):
        dk = app.generate_data_key(KeyId=kid, KeySpec="AES_256", EncryptionContext=ctx)
        assert app.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext=ctx)["Plaintext"] == dk["Plaintext"]
    for ctx in ({}, {"tenant": "globex"}, {"object": "acme"}, {"Tenant": "acme"}):
        expect_error("AccessDeniedException", app.generate_data_key, KeyId=kid, KeySpec="AES_256",
                     EncryptionContext=ctx)
    other = ra.encrypt(KeyId=kid, Plaintext=b"globex", EncryptionContext={"tenant": "globex"})["CiphertextBlob"]
    expect_error("AccessDeniedException", app.decrypt, CiphertextBlob=other, EncryptionContext={"tenant": "globex"})

    # Listing shows the constraints; an empty constraint constrains nothing.
    shown = {json.dumps(g.get("Constraints"), sort_keys=True) for g in ra.list_grants(KeyId=kid)["Grants"]}
    assert shown == {json.dumps({"EncryptionContextEquals": exact}, sort_keys=True),
                     json.dumps({"EncryptionContextSubset": acme}, sort_keys=True)}

    # Bad grants are refused.
    expect_error("ValidationException", ra.create_grant, KeyId=kid, GranteePrincipal="not a principal",
                 Operations=["Encrypt"])
    kms_raw = server.client(creds=root_a, validate=False)
    expect_error("ValidationException", kms_raw.create_grant, KeyId=kid, GranteePrincipal=user_arn(A, "app"),
                 Operations=["Fly"])
    expect_error("ValidationException", kms_raw.create_grant, KeyId=kid, GranteePrincipal=user_arn(A, "app"),
                 Operations=[])
    expect_error("ValidationException", ra.create_grant, KeyId=kid, GranteePrincipal=user_arn(A, "app"),
                 Operations=["Sign"])
    expect_error("NotFoundException", ra.create_grant, KeyId=kid[:-1] + ("0" if kid[-1] != "0" else "1"),
                 GranteePrincipal=user_arn(A, "app"), Operations=["Encrypt"])
    assert len(ra.list_grants(KeyId=kid)["Grants"]) == 2


def test_idempotent_names_narrower_grants_and_grant_operations(server):
    root_a = new_account(server, A)
    ra = server.client(creds=root_a)
    app = server.client(creds=new_user(server, A, "app", manager=root_a))
    child = server.client(creds=new_user(server, A, "child", manager=root_a))
    opsadmin = server.client(creds=new_user(server, A, "opsadmin", manager=root_a))
    key = ra.create_key(Policy=policy_doc(
        {"Effect": "Allow", "Principal": {"AWS": root_arn(A)}, "Action": "kms:*", "Resource": "*"},
        {"Effect": "Allow", "Principal": {"AWS": user_arn(A, "opsadmin")}, "Action": "kms:CreateGrant",
         "Resource": "*",
         "Condition": {"ForAllValues:StringEquals": {"kms:GrantOperations": ["Encrypt", "Decrypt"]}}},
    ))["KeyMetadata"]
    kid, arn = key["KeyId"], key["Arn"]

    # Idempotent Name: the same request returns the same grant.
    req = dict(KeyId=kid, GranteePrincipal=user_arn(A, "app"), Operations=["Decrypt", "Encrypt"],
               Name="app-grant", Constraints={"EncryptionContextSubset": {"tenant": "acme"}})
    first = ra.create_grant(**req)
    again = ra.create_grant(**req)
    assert again["GrantId"] == first["GrantId"]
    assert len(ra.list_grants(KeyId=kid)["Grants"]) == 1
    # Without a name, every call is a new grant.
    a = ra.create_grant(KeyId=kid, GranteePrincipal=user_arn(A, "child"), Operations=["Encrypt"])
    b = ra.create_grant(KeyId=kid, GranteePrincipal=user_arn(A, "child"), Operations=["Encrypt"])
    assert a["GrantId"] != b["GrantId"]
    ra.revoke_grant(KeyId=kid, GrantId=a["GrantId"])
    ra.revoke_grant(KeyId=kid, GrantId=b["GrantId"])

    # A grant allowing CreateGrant: only narrower grants.
    parent = ra.create_grant(KeyId=kid, GranteePrincipal=user_arn(A, "app"),
                             Operations=["Encrypt", "Decrypt", "CreateGrant"],
                             Constraints={"EncryptionContextSubset": {"tenant": "acme"}})
    narrower = [
        dict(Operations=["Decrypt"], Constraints={"EncryptionContextSubset": {"tenant": "acme"}}),
        dict(Operations=["Decrypt", "Encrypt"], Constraints={"EncryptionContextSubset": {"tenant": "acme", "o": "1"}}),
        dict(Operations=["Encrypt"], Constraints={"EncryptionContextEquals": {"tenant": "acme", "o": "2"}}),
    ]
    wider = [
        dict(Operations=["Decrypt"]),  # unconstrained
        dict(Operations=["Decrypt", "GenerateDataKey"], Constraints={"EncryptionContextSubset": {"tenant": "acme"}}),
        dict(Operations=["Decrypt"], Constraints={"EncryptionContextSubset": {"tenant": "globex"}}),
        dict(Operations=["Decrypt"], Constraints={"EncryptionContextEquals": {"object": "o1"}}),
        dict(Operations=["RetireGrant"], Constraints={"EncryptionContextSubset": {"tenant": "acme"}}),
    ]
    made = []
    for spec in narrower:
        made.append(app.create_grant(KeyId=kid, GranteePrincipal=user_arn(A, "child"), **spec)["GrantId"])
    for spec in wider:
        expect_error("AccessDeniedException", app.create_grant, KeyId=kid, GranteePrincipal=user_arn(A, "child"),
                     GrantTokens=[parent["GrantToken"]], **spec)
    children = [g for g in ra.list_grants(KeyId=kid)["Grants"] if g["GranteePrincipal"] == user_arn(A, "child")]
    assert sorted(g["GrantId"] for g in children) == sorted(made)
    assert all(g["IssuingAccount"] == root_arn(A) for g in children)
    # The child grant works, within its constraints.
    child.encrypt(KeyId=kid, Plaintext=b"x", EncryptionContext={"tenant": "acme", "o": "2"})
    expect_error("AccessDeniedException", child.encrypt, KeyId=kid, Plaintext=b"x",
                 EncryptionContext={"tenant": "acme", "o": "3"})

    # kms:GrantOperations in the key policy: opsadmin may grant only
    # Encrypt and Decrypt.
    opsadmin.create_grant(KeyId=kid, GranteePrincipal=user_arn(A, "child"), Operations=["Decrypt"])
    opsadmin.create_grant(KeyId=kid, GranteePrincipal=user_arn(A, "child"), Operations=["Encrypt", "Decrypt"])
    for ops in (["Decrypt", "CreateGrant"], ["GenerateDataKey"], ["RetireGrant"]):
        expect_denied(opsadmin.create_grant, KeyId=kid, GranteePrincipal=user_arn(A, "child"), Operations=ops,
                      principal=user_arn(A, "opsadmin"), op="CreateGrant", key_arn=arn, why="no-identity")

    # An explicit Deny beats a grant.
    put_user_policy(server, A, "app", "deny-decrypt", {"Version": "2012-10-17", "Statement": [
        {"Effect": "Deny", "Action": "kms:Decrypt", "Resource": "*"}]}, manager=root_a)
    blob = app.encrypt(KeyId=kid, Plaintext=b"x", EncryptionContext={"tenant": "acme"})["CiphertextBlob"]
    expect_denied(app.decrypt, CiphertextBlob=blob, EncryptionContext={"tenant": "acme"},
                  principal=user_arn(A, "app"), op="Decrypt", key_arn=arn, why="deny-identity")


def test_cross_account_and_service_grantees(server):
    root_a = new_account(server, A)
    root_b = new_account(server, B)
    ra, rb = server.client(creds=root_a), server.client(creds=root_b)
    svc = server.client(creds=new_user(server, B, "svc"))  # no identity policy at all
    key = ra.create_key()["KeyMetadata"]
    kid, arn = key["KeyId"], key["Arn"]
    expect_denied(svc.encrypt, KeyId=arn, Plaintext=b"x",
                  principal=user_arn(B, "svc"), op="Encrypt", key_arn=arn, why="no-resource")

    # A grant to a user of another account lets it use the key by ARN.
    g = ra.create_grant(KeyId=kid, GranteePrincipal=user_arn(B, "svc"),
                        Operations=["Encrypt", "Decrypt", "DescribeKey"], RetiringPrincipal=root_arn(B))
    blob = svc.encrypt(KeyId=arn, Plaintext=b"cross", GrantTokens=[g["GrantToken"]])["CiphertextBlob"]
    assert svc.decrypt(CiphertextBlob=blob)["Plaintext"] == b"cross"
    assert svc.describe_key(KeyId=arn)["KeyMetadata"]["AWSAccountId"] == A
    expect_error("AccessDeniedException", svc.list_grants, KeyId=arn)
    # ... and is listed as retirable by the other account, which retires it.
    retirable = rb.list_retirable_grants(RetiringPrincipal=root_arn(B))["Grants"]
    assert [(x["GrantId"], x["KeyId"], x["IssuingAccount"]) for x in retirable] == [
        (g["GrantId"], arn, root_arn(A))]
    rb.retire_grant(GrantToken=g["GrantToken"])
    expect_denied(svc.decrypt, CiphertextBlob=blob,
                  principal=user_arn(B, "svc"), op="Decrypt", key_arn=arn, why="no-resource")
    assert ra.list_grants(KeyId=kid)["Grants"] == []

    # Service principals can be grantees and retiring principals.
    gs = ra.create_grant(KeyId=kid, GranteePrincipal="disk.atrest", RetiringPrincipal="disk.atrest",
                         Operations=["GenerateDataKeyWithoutPlaintext", "Decrypt"],
                         Constraints={"EncryptionContextSubset": {"volume": "vol-1"}})
    listed = ra.list_grants(KeyId=kid, GranteePrincipal="disk.atrest")["Grants"]
    assert [x["GrantId"] for x in listed] == [gs["GrantId"]]
    assert listed[0]["RetiringPrincipal"] == "disk.atrest"
    assert [x["GrantId"] for x in ra.list_retirable_grants(RetiringPrincipal="disk.atrest")["Grants"]] == [
        gs["GrantId"]]
    # ListRetirableGrants shows a caller only what concerns its own account:
    # another account learns nothing of A's grants (AWS: "You must specify a
    # principal in your AWS account"), whether their retiring principal is a
    # user of A or a service principal.
    ga = ra.create_grant(KeyId=kid, GranteePrincipal=user_arn(A, "app"), Operations=["Decrypt"],
                         RetiringPrincipal=user_arn(A, "retirer"))
    assert [x["GrantId"] for x in ra.list_retirable_grants(RetiringPrincipal=user_arn(A, "retirer"))["Grants"]] == [
        ga["GrantId"]]
    for principal in (user_arn(A, "retirer"), "disk.atrest"):
        try:
            leaked = rb.list_retirable_grants(RetiringPrincipal=principal)["Grants"]
        except ClientError as e:
            assert e.response["Error"]["Code"] in ("AccessDeniedException", "ValidationException"), e.response
            continue
        assert [x for x in leaked if x["KeyId"] == arn] == [], f"account {B} sees {A}'s grants: {leaked}"
    ra.revoke_grant(KeyId=kid, GrantId=ga["GrantId"])
    # A grant does not let the issuing account's other users in.
    expect_error("AccessDeniedException", svc.encrypt, KeyId=arn, Plaintext=b"x", GrantTokens=[gs["GrantToken"]])
    ra.revoke_grant(KeyId=kid, GrantId=gs["GrantId"])
    assert ra.list_retirable_grants(RetiringPrincipal="disk.atrest")["Grants"] == []
    # Grants are per region: the key ARN of another region is not found.
    expect_error("NotFoundException", ra.list_grants, KeyId=arn.replace(REGION, "eu-west-1"))
