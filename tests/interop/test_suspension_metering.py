"""Account suspension and metering.

Suspension: `atrest admin account suspend ID` makes every cryptographic
operation by or for that account (Encrypt, Decrypt, ReEncrypt,
GenerateDataKey, GenerateDataKeyWithoutPlaintext, GenerateRandom, CreateKey, and the
creation of a service key for it) fail with AccountSuspendedException naming
the account, for its root and its users, and also when another account uses
its keys or it uses another account's keys; DescribeKey, ListKeys, ListAliases, GetKeyPolicy and
ListGrants still work; other accounts are unaffected; only an admin may
suspend or resume; the state survives a restart; `resume` makes everything
work again and every ciphertext made before decrypts.

Metering: after a known mix of requests from two accounts in two regions
(successes, refusals, errors), `atrest metering [--account ID]` and the
Prometheus text at `http://<--metrics-listen>/metrics`
(`atrest_kms_requests_total{account,region,operation,outcome}`) show exactly
those numbers; a non-admin sees only its own account; the counts survive a
restart and keep counting after it.

Capabilities: K13 suspension, K9 metering (also K7 cross-account, K10 regions).
"""

from __future__ import annotations

import json
import re
import uuid

import requests

from conftest import (
    atrest_admin,
    atrest_client_cmd,
    expect_error,
    free_port,
    new_account,
    new_user,
    policy_doc,
    rest_call,
    root_arn,
)

A = "111122223333"
B = "444455556666"
M1 = "555566667777"
M2 = "888899990000"
EU = "eu-west-1"
US = "us-east-1"


def shared_key_policy(owner: str, other: str) -> str:
    return policy_doc(
        {"Effect": "Allow", "Principal": {"AWS": root_arn(owner)}, "Action": "kms:*", "Resource": "*"},
        {"Effect": "Allow", "Principal": {"AWS": root_arn(other)},
         "Action": ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey"],
         "Resource": "*"},
    )


def expect_suspended(account: str, fn, **kw):
    r = expect_error("AccountSuspendedException", fn, **kw)
    assert account in r["Error"]["Message"], r["Error"]


def test_suspension(make_server):
    srv = make_server().start()
    root_a, root_b = new_account(srv, A), new_account(srv, B)
    alice = new_user(srv, A, "alice", policy={"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "kms:*", "Resource": "*"}]})
    ka, kb, kal = srv.client(creds=root_a), srv.client(creds=root_b), srv.client(creds=alice)
    key_a = ka.create_key(Policy=shared_key_policy(A, B))["KeyMetadata"]
    key_b = kb.create_key(Policy=shared_key_policy(B, A))["KeyMetadata"]
    ka.create_alias(AliasName="alias/a", TargetKeyId=key_a["KeyId"])
    ka.create_grant(KeyId=key_a["KeyId"], GranteePrincipal=root_arn(B), Operations=["Decrypt"])
    ctx = {"case": "suspension"}
    # name -> (who made it, blob)
    blobs = {
        "a-own": ("a", ka.encrypt(KeyId=key_a["KeyId"], Plaintext=b"a-own", EncryptionContext=ctx)["CiphertextBlob"]),
        "b-on-a": ("b", kb.encrypt(KeyId=key_a["Arn"], Plaintext=b"b-on-a", EncryptionContext=ctx)["CiphertextBlob"]),
        "a-on-b": ("a", ka.encrypt(KeyId=key_b["Arn"], Plaintext=b"a-on-b", EncryptionContext=ctx)["CiphertextBlob"]),
        "alice": ("alice", kal.encrypt(KeyId=key_a["KeyId"], Plaintext=b"alice",
                                       EncryptionContext=ctx)["CiphertextBlob"]),
    }
    dk = ka.generate_data_key(KeyId=key_a["KeyId"], KeySpec="AES_256")

    # Only an admin suspends (not even the account's own root).
    p = atrest_admin(srv, "account", "suspend", A, env_creds=root_b, check=False)
    assert p.returncode != 0 and "AccessDeniedException" in p.stderr, p.stderr
    out = json.loads(atrest_admin(srv, "account", "suspend", A).stdout)
    assert out == {"id": A, "suspended": True}
    listed = {a["id"]: a for a in json.loads(atrest_admin(srv, "account", "list").stdout)["accounts"]}
    assert listed[A]["suspended"] is True and listed[B]["suspended"] is False
    p = atrest_admin(srv, "account", "resume", A, env_creds=root_a, check=False)
    assert p.returncode != 0 and "AccessDeniedException" in p.stderr, p.stderr

    def check_suspended(ka, kb, kal):
        for who in (ka, kal):  # the account's root and its users
            expect_suspended(A, who.encrypt, KeyId=key_a["KeyId"], Plaintext=b"x")
            expect_suspended(A, who.decrypt, CiphertextBlob=blobs["a-own"][1], EncryptionContext=ctx)
            expect_suspended(A, who.re_encrypt, CiphertextBlob=blobs["a-own"][1], SourceEncryptionContext=ctx,
                             DestinationKeyId=key_a["KeyId"])
            expect_suspended(A, who.generate_data_key, KeyId="alias/a", KeySpec="AES_256")
            expect_suspended(A, who.generate_data_key_without_plaintext, KeyId=key_a["KeyId"], KeySpec="AES_256")
            expect_suspended(A, who.generate_random, NumberOfBytes=16)
            expect_suspended(A, who.create_key)
            expect_suspended(A, who.decrypt, CiphertextBlob=dk["CiphertextBlob"])
        # A using B's key, and B using A's key (by policy or by grant).
        expect_suspended(A, ka.encrypt, KeyId=key_b["Arn"], Plaintext=b"x")
        expect_suspended(A, ka.decrypt, CiphertextBlob=blobs["a-on-b"][1], EncryptionContext=ctx)
        expect_suspended(A, kb.encrypt, KeyId=key_a["Arn"], Plaintext=b"x")
        expect_suspended(A, kb.decrypt, CiphertextBlob=blobs["b-on-a"][1], EncryptionContext=ctx)
        expect_suspended(A, kb.generate_data_key, KeyId=key_a["Arn"], KeySpec="AES_256")
        expect_suspended(A, kb.re_encrypt, CiphertextBlob=blobs["a-on-b"][1], SourceEncryptionContext=ctx,
                         DestinationKeyId=key_a["Arn"])
        # Metadata still works.
        assert ka.describe_key(KeyId=key_a["KeyId"])["KeyMetadata"]["KeyState"] == "Enabled"
        assert kal.describe_key(KeyId="alias/a")["KeyMetadata"]["KeyId"] == key_a["KeyId"]
        assert key_a["KeyId"] in {k["KeyId"] for k in ka.list_keys()["Keys"]}
        assert "alias/a" in {a["AliasName"] for a in ka.list_aliases()["Aliases"]}
        assert json.loads(ka.get_key_policy(KeyId=key_a["KeyId"], PolicyName="default")["Policy"])
        assert len(ka.list_grants(KeyId=key_a["KeyId"])["Grants"]) == 1
        assert kb.describe_key(KeyId=key_a["Arn"])["KeyMetadata"]["KeyId"] == key_a["KeyId"]
        # Another account's own work is unaffected.
        own = kb.encrypt(KeyId=key_b["KeyId"], Plaintext=b"b-own")["CiphertextBlob"]
        assert kb.decrypt(CiphertextBlob=own)["Plaintext"] == b"b-own"
        kb.generate_random(NumberOfBytes=16)
        kb.create_key(Description="B is not suspended")

    check_suspended(ka, kb, kal)
    # Creating a service key is a CreateKey for the account: refused too.
    r = rest_call(srv, "PUT", "/v1/service-keys/disk", creds=root_a)
    assert r.status_code == 400 and r.json()["code"] == "AccountSuspendedException", r.text
    assert A in r.json()["message"], r.text
    assert "alias/atrest/disk" not in {a["AliasName"] for a in ka.list_aliases()["Aliases"]}
    # Suspension is stored: it survives a restart.
    assert srv.stop() == 0, srv.last_output()
    srv.start()
    ka, kb, kal = srv.client(creds=root_a), srv.client(creds=root_b), srv.client(creds=alice)
    check_suspended(ka, kb, kal)

    out = json.loads(atrest_admin(srv, "account", "resume", A).stdout)
    assert out == {"id": A, "suspended": False}
    listed = {a["id"]: a for a in json.loads(atrest_admin(srv, "account", "list").stdout)["accounts"]}
    assert listed[A]["suspended"] is False
    # Everything works again; every ciphertext made before decrypts.
    clients = {"a": ka, "b": kb, "alice": kal}
    for name, (who, blob) in blobs.items():
        assert clients[who].decrypt(CiphertextBlob=blob, EncryptionContext=ctx)["Plaintext"] == name.encode()
    assert ka.decrypt(CiphertextBlob=dk["CiphertextBlob"])["Plaintext"] == dk["Plaintext"]
    re_out = kb.re_encrypt(CiphertextBlob=blobs["b-on-a"][1], SourceEncryptionContext=ctx,
                           DestinationKeyId=key_b["Arn"])
    assert kb.decrypt(CiphertextBlob=re_out["CiphertextBlob"])["Plaintext"] == b"b-on-a"
    kal.generate_data_key(KeyId="alias/a", KeySpec="AES_256")
    ka.generate_random(NumberOfBytes=16)
    ka.create_key(Description="after resume")
    kb.encrypt(KeyId=key_a["Arn"], Plaintext=b"x")
    r = rest_call(srv, "PUT", "/v1/service-keys/disk", creds=root_a)
    assert r.status_code == 200 and r.json()["key_arn"].startswith(f"arn:aws:kms:us-east-1:{A}:key/"), r.text
    # Unknown accounts cannot be suspended.
    p = atrest_admin(srv, "account", "suspend", "999999999999", check=False)
    assert p.returncode != 0 and "NotFoundException" in p.stderr, p.stderr


PROM_LINE = re.compile(
    r'^atrest_kms_requests_total\{account="(\d+)",region="([a-z0-9-]+)",operation="([^"]+)",'
    r'outcome="(success|error)"\} (\d+)$')


def prometheus(metrics_url: str) -> dict:
    r = requests.get(metrics_url, timeout=10)
    assert r.status_code == 200, r.text
    assert "# TYPE atrest_kms_requests_total counter" in r.text
    out = {}
    for line in r.text.splitlines():
        if line.startswith("atrest_kms_requests_total"):
            m = PROM_LINE.match(line)
            assert m, f"unexpected metrics line: {line}"
            acct, region, op, outcome, n = m.groups()
            out[(acct, region, op, outcome)] = int(n)
    return out


def cli_usage(srv, *args, creds=None) -> dict:
    usage = json.loads(atrest_client_cmd(srv, "metering", *args, env_creds=creds).stdout)["usage"]
    return {(u["account"], u["region"], u["operation"]): (u["success"], u["error"]) for u in usage}


def test_metering_counts_what_was_sent(make_server):
    metrics_port = free_port()
    srv = make_server(regions=(US, EU), args=("--metrics-listen", f"127.0.0.1:{metrics_port}")).start()
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    root1, root2 = new_account(srv, M1), new_account(srv, M2)
    c1, c1eu, c2 = srv.client(creds=root1), srv.client(creds=root1, region=EU), srv.client(creds=root2)
    expected: dict = {}

    def count(acct, region, op, ok, n=1):
        s, e = expected.get((acct, region, op), (0, 0))
        expected[(acct, region, op)] = (s + n, e) if ok else (s, e + n)

    k1 = c1.create_key()["KeyMetadata"]
    count(M1, US, "CreateKey", True)
    blobs = []
    for _ in range(7):
        blobs.append(c1.encrypt(KeyId=k1["KeyId"], Plaintext=b"m")["CiphertextBlob"])
    count(M1, US, "Encrypt", True, 7)
    for b in blobs[:3]:
        c1.decrypt(CiphertextBlob=b)
    count(M1, US, "Decrypt", True, 3)
    for _ in range(2):
        expect_error("NotFoundException", c1.encrypt, KeyId=str(uuid.uuid4()), Plaintext=b"m")
    count(M1, US, "Encrypt", False, 2)
    expect_error("InvalidCiphertextException", c1.decrypt, CiphertextBlob=b"\x01" + b"\x00" * 80)
    count(M1, US, "Decrypt", False)
    k1eu = c1eu.create_key()["KeyMetadata"]
    count(M1, EU, "CreateKey", True)
    for _ in range(2):
        c1eu.encrypt(KeyId=k1eu["KeyId"], Plaintext=b"eu")
    count(M1, EU, "Encrypt", True, 2)
    c2.create_key()
    count(M2, US, "CreateKey", True)
    k2 = c2.list_keys()["Keys"][0]["KeyId"]
    count(M2, US, "ListKeys", True)
    for _ in range(4):
        c2.generate_data_key(KeyId=k2, KeySpec="AES_256")
    count(M2, US, "GenerateDataKey", True, 4)
    for _ in range(5):
        expect_error("AccessDeniedException", c2.encrypt, KeyId=k1["Arn"], Plaintext=b"not yours")
    count(M2, US, "Encrypt", False, 5)

    def ours(d: dict) -> dict:
        return {k: v for k, v in d.items() if k[0] in (M1, M2)}

    def prom_expected() -> dict:
        out = {}
        for (acct, region, op), (s, e) in expected.items():
            if s:
                out[(acct, region, op, "success")] = s
            if e:
                out[(acct, region, op, "error")] = e
        return out

    def check():
        assert ours(cli_usage(srv)) == expected
        assert cli_usage(srv, "--account", M1) == {k: v for k, v in expected.items() if k[0] == M1}
        assert cli_usage(srv, "--account", M2) == {k: v for k, v in expected.items() if k[0] == M2}
        assert ours(prometheus(metrics_url)) == prom_expected()

    check()
    # A non-admin sees its own account (its own metering calls included).
    own = cli_usage(srv, creds=root1)
    assert {k[0] for k in own} == {M1}
    assert {k: v for k, v in own.items() if k[2] != "audit:GetMetering"} == {
        k: v for k, v in expected.items() if k[0] == M1}
    count(M1, US, "audit:GetMetering", True)
    p = atrest_client_cmd(srv, "metering", "--account", M2, env_creds=root1, check=False)
    assert p.returncode != 0 and "AccessDeniedException" in p.stderr, p.stderr
    count(M1, US, "audit:GetMetering", False)
    check()

    # The counts survive a restart (rebuilt from the audit log) and go on.
    assert srv.stop() == 0, srv.last_output()
    srv.start()
    check()
    srv.client(creds=root1).encrypt(KeyId=k1["KeyId"], Plaintext=b"after restart")
    count(M1, US, "Encrypt", True)
    check()
