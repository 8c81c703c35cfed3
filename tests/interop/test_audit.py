"""The audit trail: one record per request, tamper-evident, fail closed.

* After 10,000 mixed calls from several boto3 clients in parallel (allowed,
  denied by policy, refused as not found, invalid ciphertexts, validation
  errors, calls allowed by a grant, plus one unauthenticated, one badly
  signed, one malformed, one non-POST and one unknown-operation request, and
  refused REST calls), the number of new records in
  `<data-dir>/audit/audit.log` equals the number of authenticated requests
  sent, and the five refused before authentication (unsigned, badly signed,
  non-POST, unknown path, wrong method) are one record of their address
  with their count and kinds, written at the end of the interval (here: at
  shutdown); read both
  from the file and through `atrest audit --limit`: the same request ids, the
  same (operation, result) counts, seq without gaps, each `prev` the previous
  `mac`. Every record has the required fields (who, from where, which key,
  which grant, the context key *names*); `atrest metering` counts exactly
  what the log holds for the account; a unique encryption-context value
  appears nowhere in the data dir, and no data-key plaintext, plaintext or
  secret access key appears in the log or in query output.
* `atrest audit verify` (online) and `atrest audit verify --offline` accept
  the log; after the server stops, `--offline` detects, each on a fresh copy,
  one record edited, one deleted from the middle, two swapped, one inserted,
  and the last one deleted (caught through the head file), each time naming
  the first bad record's line number; the unmodified copy verifies. The
  server refuses to start on a damaged log and starts again once repaired.
* Requests refused before authentication (an unknown path, signed or not,
  a method a REST route does not take, a body over the size limit, a bad
  signature) are counted per client address and leave one record per
  address and interval (`--audit-refusal-interval`): operation
  `unauthenticated`, with their `count` and `kinds`; the chain verifies.
* Queries filter by key, principal, operation and time, return the most
  recent N, and show a non-admin only its own account's records.
* Killing the server (SIGKILL) loses no record of an answer it gave, in
  both `--audit-sync` modes, even with a sync interval longer than the
  test: the records are written before the answers; the log verifies after
  restart.
* Fail closed: with the log made unwritable (`chattr +i`), CreateKey,
  Encrypt, DisableKey (and then everything) fail with HTTP 500
  KMSInternalException and nothing changes (key count and key states the
  same after `chattr -i` and a restart); the log still verifies.

Capabilities: K8 audit (also K7 principals, O1 API).
"""

from __future__ import annotations

import base64
import collections
import json
import re
import shutil
import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from conftest import (
    REGION,
    atrest_client_cmd,
    atrest_run,
    audit_lines,
    audit_log_path,
    audit_records,
    expect_error,
    new_account,
    new_user,
    raw_request,
    rest_call,
    root_arn,
    user_arn,
)

A = "111122223333"
B = "444455556666"
TOTAL = 10_000
THREADS = 4
TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")


def request_id(resp: dict) -> str:
    return resp["ResponseMetadata"]["RequestId"]


class Sent:
    """What the test sent: request ids and (operation, outcome) counts."""

    def __init__(self):
        self.lock = threading.Lock()
        self.ids: list[str] = []
        self.outcomes: collections.Counter = collections.Counter()
        self.data_keys: list[bytes] = []

    def add(self, rid: str, operation: str, outcome: str):
        assert rid, (operation, outcome)
        with self.lock:
            self.ids.append(rid)
            self.outcomes[(operation, outcome)] += 1


def call(sent: Sent, operation: str, fn, expect: str = "Success", **kw) -> dict | None:
    """Makes one call, which must end with `expect`, and records it."""
    try:
        out = fn(**kw)
    except ClientError as e:
        code = e.response["Error"]["Code"]
        assert code == expect, (operation, kw, e.response["Error"])
        sent.add(e.response["ResponseMetadata"]["RequestId"], operation, code)
        return None
    assert expect == "Success", (operation, kw, "succeeded")
    sent.add(request_id(out), operation, "Success")
    return out


def verify_offline(data_dir: Path, root_key_file: Path) -> subprocess.CompletedProcess:
    return atrest_run("audit", "verify", "--offline", "--data-dir", str(data_dir),
                      "--root-key-file", str(root_key_file), check=False)


def audit_copy(workdir: Path, data_dir: Path, name: str, lines: list[bytes]) -> Path:
    """A data-dir-shaped copy (root.json and the audit dir) whose log holds `lines`."""
    d = workdir / name
    d.mkdir()
    shutil.copy2(data_dir / "root.json", d / "root.json")
    shutil.copytree(data_dir / "audit", d / "audit")
    (d / "audit" / "audit.log").write_bytes(b"".join(line + b"\n" for line in lines))
    return d


def test_every_request_is_recorded_and_tampering_is_detected(make_server):
    # Refusals before authentication are written at shutdown, not during
    # the load (see the end of the checks on the final log).
    srv = make_server(args=("--audit-refusal-interval", "3600")).start()
    admin_creds = srv.credentials()
    root_a = new_account(srv, A)
    limited = new_user(srv, A, "limited")
    granted = new_user(srv, A, "granted")
    ra = srv.client(creds=root_a)
    key = ra.create_key(Description="audited")["KeyMetadata"]
    kid, arn = key["KeyId"], key["Arn"]
    grant = ra.create_grant(KeyId=kid, GranteePrincipal=user_arn(A, "granted"), Operations=["Encrypt", "Decrypt"])
    unique = "ctx-value-" + uuid.uuid4().hex
    ctx = {"tenant-name": unique}
    marker = ("plaintext-marker-" + uuid.uuid4().hex).encode()
    blob = ra.encrypt(KeyId=kid, Plaintext=marker, EncryptionContext=ctx)["CiphertextBlob"]
    bad_blob = bytearray(blob)
    bad_blob[-3] ^= 0x40
    bad_blob = bytes(bad_blob)
    missing = f"arn:aws:kms:{REGION}:{A}:key/{uuid.uuid4()}"
    admin_account = srv.client().create_key()["KeyMetadata"]["AWSAccountId"]

    log = audit_log_path(srv)
    n0 = len(audit_lines(log))
    sent = Sent()

    # The odd requests, each sent once.
    specials = []
    # Those refused before authentication: counted, by kind.
    unauthenticated = collections.Counter()

    def special(resp, operation, outcome, status=400, authenticated=True):
        assert resp.status_code == status, (operation, resp.status_code, resp.text)
        body = resp.json()
        assert body.get("__type", body.get("code")) == outcome, body
        rid = resp.headers.get("x-amzn-RequestId") or body.get("requestId")
        if authenticated:
            sent.add(rid, operation, outcome)
            specials.append(rid)
        else:
            assert rid, (operation, outcome)
            unauthenticated[outcome] += 1

    special(raw_request(srv, b"{}", sign=False), "ListKeys", "MissingAuthenticationTokenException",
            authenticated=False)
    special(raw_request(srv, b"{}", creds=(root_a[0], "x" * 40)), "ListKeys", "InvalidSignatureException",
            authenticated=False)
    special(raw_request(srv, b'{"KeyId": ', target="TrentService.DescribeKey", creds=root_a), "DescribeKey",
            "SerializationException")
    special(raw_request(srv, b"{}", method="GET", creds=root_a), "ListKeys", "UnknownOperationException", status=405,
            authenticated=False)
    special(raw_request(srv, b"{}", target="TrentService.LaunchRockets", creds=root_a), "LaunchRockets",
            "UnknownOperationException")
    # Requests no route takes are refused before authentication.
    special(rest_call(srv, "GET", "/v1/no-such-thing", creds=root_a), "http:GET", "NotFoundException", status=404,
            authenticated=False)
    special(rest_call(srv, "DELETE", "/v1/metering", creds=root_a), "http:DELETE", "MethodNotAllowedException",
            status=405, authenticated=False)
    special(rest_call(srv, "GET", "/v1/accounts", creds=root_a), "admin:ListAccounts", "AccessDeniedException",
            status=403)
    n_unauth = sum(unauthenticated.values())
    assert n_unauth == 5

    def worker(t: int):
        c_root = srv.client(creds=root_a)
        c_raw = srv.client(creds=root_a, validate=False)
        c_limited = srv.client(creds=limited)
        c_granted = srv.client(creds=granted)
        c_admin = srv.client(creds=admin_creds)
        mine = range(t, TOTAL - len(specials) - n_unauth, THREADS)
        for i in mine:
            k = i % 12
            if k == 0:
                call(sent, "Encrypt", c_root.encrypt, KeyId=kid, Plaintext=marker, EncryptionContext=ctx)
            elif k == 1:
                out = call(sent, "Decrypt", c_root.decrypt, CiphertextBlob=blob, EncryptionContext=ctx)
                assert out["Plaintext"] == marker
            elif k == 2:
                out = call(sent, "GenerateDataKey", c_root.generate_data_key, KeyId=kid, KeySpec="AES_256",
                           EncryptionContext=ctx)
                with sent.lock:
                    sent.data_keys.append(out["Plaintext"])
            elif k == 3:
                call(sent, "DescribeKey", c_root.describe_key, KeyId=arn)
            elif k == 4:
                call(sent, "ListKeys", c_admin.list_keys)
            elif k == 5:
                call(sent, "Encrypt", c_limited.encrypt, "AccessDeniedException", KeyId=kid, Plaintext=b"x")
            elif k == 6:
                call(sent, "DescribeKey", c_root.describe_key, "NotFoundException", KeyId=missing)
            elif k == 7:
                call(sent, "Decrypt", c_root.decrypt, "InvalidCiphertextException", CiphertextBlob=bad_blob,
                     EncryptionContext=ctx)
            elif k == 8:
                call(sent, "Encrypt", c_granted.encrypt, KeyId=kid, Plaintext=b"granted",
                     EncryptionContext=ctx, GrantTokens=[grant["GrantToken"]])
            elif k == 9:
                call(sent, "GenerateRandom", c_root.generate_random, NumberOfBytes=32)
            elif k == 10:
                call(sent, "GenerateRandom", c_raw.generate_random, "ValidationException", NumberOfBytes=5000)
            else:
                call(sent, "Decrypt", c_root.decrypt, "InvalidCiphertextException", CiphertextBlob=blob,
                     EncryptionContext={"tenant-name": "someone-else"})

    started = time.monotonic()
    with ThreadPoolExecutor(THREADS) as ex:
        for f in [ex.submit(worker, t) for t in range(THREADS)]:
            f.result()
    elapsed = time.monotonic() - started
    assert len(sent.ids) == TOTAL - n_unauth == len(set(sent.ids)), (len(sent.ids), len(set(sent.ids)))

    # -- records equal requests, in the file -----------------------------
    lines = audit_lines(log)
    new = [json.loads(line) for line in lines[n0:]]
    assert len(new) == TOTAL - n_unauth, \
        f"{len(new)} new records for {TOTAL - n_unauth} authenticated requests (load took {elapsed:.1f}s)"
    assert not [r for r in new if r["operation"] == "unauthenticated"], "refusals written before the interval"
    assert sorted(r["request_id"] for r in new) == sorted(sent.ids)
    assert collections.Counter((r["operation"], r["result"]) for r in new) == sent.outcomes
    # The chain: seq without gaps, each prev the previous mac.
    prev_mac = json.loads(lines[n0 - 1])["mac"]
    for i, r in enumerate(new):
        assert r["seq"] == n0 + 1 + i, r
        assert r["prev"] == prev_mac, r
        assert HEX64.match(r["mac"]), r
        prev_mac = r["mac"]

    # -- every record has the required fields ----------------------------
    by_id = {r["request_id"]: r for r in new}
    akids = {root_a[0]: root_arn(A), limited[0]: user_arn(A, "limited"), granted[0]: user_arn(A, "granted")}
    akids[admin_creds[0]] = root_arn(admin_account)
    for r in new:
        assert TIME_RE.match(r["time"]) and r["operation"] and r["result"] and r["request_id"], r
        assert re.match(r"^127\.0\.0\.1:\d+$", r["source"]), r
        # Every record here is of an authenticated request.
        assert "count" not in r and "kinds" not in r, r
        assert r["region"] == REGION, r
        assert r["principal"] == akids[r["access_key_id"]], r
        assert r["account"] == r["principal"].split(":")[4], r
        if r["operation"] in ("Encrypt", "Decrypt", "GenerateDataKey", "DescribeKey") and \
                r["request_id"] not in specials and r["result"] != "NotFoundException":
            assert r.get("key_arn") == arn, r
        if r["operation"] in ("Encrypt", "GenerateDataKey") or (r["operation"] == "Decrypt"):
            if r["principal"] != user_arn(A, "limited"):
                assert r.get("context_keys") == ["tenant-name"], r
        if r["principal"] == user_arn(A, "granted"):
            assert r["grant_id"] == grant["GrantId"] and r["result"] == "Success", r
        else:
            assert "grant_id" not in r, r
        if r["principal"] == user_arn(A, "limited"):
            assert r["result"] == "AccessDeniedException" and r["operation"] == "Encrypt", r
        assert "via_service" not in r, r
    for rid, (op, outcome) in zip(specials, [("DescribeKey", "SerializationException"),
                                              ("LaunchRockets", "UnknownOperationException")]):
        assert (by_id[rid]["operation"], by_id[rid]["result"]) == (op, outcome)
    assert by_id[specials[-1]]["operation"] == "admin:ListAccounts"
    assert by_id[specials[-1]]["principal"] == root_arn(A)

    # -- the same, through `atrest audit --limit` ------------------------
    q = atrest_client_cmd(srv, "audit", "--limit", str(TOTAL + n0 + 50))
    queried = json.loads(q.stdout)["records"]
    q_new = [r for r in queried if r["seq"] > n0]
    assert len(q_new) == TOTAL - n_unauth, len(q_new)
    assert sorted(r["request_id"] for r in q_new) == sorted(sent.ids)
    assert [r["seq"] for r in queried] == list(range(1, len(queried) + 1))
    assert q_new == new
    last5 = json.loads(atrest_client_cmd(srv, "audit", "--limit", "5").stdout)["records"]
    now_lines = audit_records(log)
    assert [r["seq"] for r in last5] == [r["seq"] for r in now_lines[-6:-1]]  # (the query itself comes after)

    # -- metering counts exactly what the log holds for the account -------
    usage = json.loads(atrest_client_cmd(srv, "metering", "--account", A).stdout)["usage"]
    metered = {(u["region"], u["operation"]): (u["success"], u["error"]) for u in usage}
    from_log = collections.defaultdict(lambda: [0, 0])
    for r in audit_records(log):
        if r.get("account") == A:
            # Made-up operation names are metered together, as `unknown`.
            op = "unknown" if r["operation"] == "LaunchRockets" else r["operation"]
            from_log[(r["region"], op)][0 if r["result"] == "Success" else 1] += 1
    assert metered == {k: tuple(v) for k, v in from_log.items()}
    assert metered[(REGION, "unknown")] == (0, 1)

    # -- no values, no secrets -------------------------------------------
    log_bytes = log.read_bytes()
    for f in srv.data_dir.rglob("*"):
        if f.is_file():
            assert unique.encode() not in f.read_bytes(), f"context value in {f}"
    assert unique not in q.stdout and unique.encode() not in srv.logs()
    secrets = [admin_creds[1], root_a[1], limited[1], granted[1]]
    for s in secrets:
        assert s.encode() not in log_bytes and s not in q.stdout
    assert marker not in log_bytes and marker.decode() not in q.stdout
    assert len(sent.data_keys) > 500
    for dk in sent.data_keys:
        for form in (dk, base64.b64encode(dk), dk.hex().encode()):
            assert form not in log_bytes, "a data key plaintext is in the audit log"

    # -- verification -----------------------------------------------------
    p = atrest_client_cmd(srv, "audit", "verify")
    assert "audit trail verified" in p.stdout, p.stdout
    assert srv.stop() == 0, srv.last_output()
    lines = audit_lines(log)  # the final log, at rest
    n = len(lines)
    # The refusals before authentication: written at shutdown, one record
    # for the address, with their count and kinds.
    agg = [json.loads(line) for line in lines if b'"operation":"unauthenticated"' in line]
    assert len(agg) == 1, agg
    assert agg[0]["source"] == "127.0.0.1" and agg[0]["result"] == "Refused", agg
    assert agg[0]["count"] == n_unauth and agg[0]["kinds"] == dict(unauthenticated), agg
    assert TIME_RE.match(agg[0]["time"]) and "principal" not in agg[0] and "account" not in agg[0], agg
    assert json.loads(lines[-1]) == agg[0], "the refusals are the last record, written at shutdown"
    p = verify_offline(srv.data_dir, srv.root_key_file)
    assert p.returncode == 0 and f"audit trail verified: {n} records" in p.stdout, (p.stdout, p.stderr)

    def expect_bad(name: str, damaged: list[bytes], first_bad: int):
        d = audit_copy(make_server.workdir, srv.data_dir, name, damaged)
        p = verify_offline(d, srv.root_key_file)
        out = p.stdout + p.stderr
        assert p.returncode != 0, f"{name}: damage not detected: {out}"
        assert f"record {first_bad} is bad" in out, f"{name}: expected record {first_bad}: {out}"
        assert f"the {first_bad - 1} records before it verify" in out, out

    # One record edited: a value changed (the JSON stays valid).
    e = next(i for i in range(n // 3, n) if b'"result":"Success"' in lines[i])
    edited = lines.copy()
    edited[e] = lines[e].replace(b'"result":"Success"', b'"result":"Failure"')
    expect_bad("edited", edited, e + 1)
    # One record deleted from the middle.
    d = n // 2
    expect_bad("deleted", lines[:d] + lines[d + 1:], d + 1)
    # Two records swapped.
    r = n // 4
    expect_bad("reordered", lines[:r] + [lines[r + 1], lines[r]] + lines[r + 2:], r + 1)
    # One record inserted: a forged copy of record m with another request id.
    m = 2 * n // 3
    forged = re.sub(rb'"request_id":"[^"]+"', b'"request_id":"' + str(uuid.uuid4()).encode() + b'"', lines[m])
    assert forged != lines[m]
    expect_bad("inserted", lines[:m] + [forged] + lines[m:], m + 1)
    # The last record deleted: the head file says there were n.
    expect_bad("truncated", lines[:-1], n)
    # The unmodified copy verifies.
    intact = audit_copy(make_server.workdir, srv.data_dir, "intact", lines)
    p = verify_offline(intact, srv.root_key_file)
    assert p.returncode == 0 and f"audit trail verified: {n} records" in p.stdout, (p.stdout, p.stderr)

    # Without the data dir's root key nothing verifies.
    other_key = make_server.workdir / "other.root.key"
    other_key.write_bytes(bytes(range(32)))
    other_key.chmod(0o600)
    p = verify_offline(intact, other_key)
    assert p.returncode != 0 and "verified" not in p.stdout, (p.stdout, p.stderr)

    # The server refuses to start on a damaged log, and starts once repaired.
    original = log.read_bytes()
    log.write_bytes(b"".join(line + b"\n" for line in edited))
    rc, out = srv.run_until_exit()
    assert rc != 0 and f"audit.log is damaged at record {e + 1}:" in out, out
    log.write_bytes(original)
    srv.start()
    assert srv.client().list_keys()["Keys"]
    p = atrest_client_cmd(srv, "audit", "verify")
    assert p.returncode == 0 and "audit trail verified" in p.stdout, p.stdout


def test_requests_refused_before_authentication_are_counted(make_server):
    """Requests the router refuses (an unknown path, signed or not; a method
    a REST route does not take), bodies over the limit and bad signatures
    are refused before their caller is known: counted per address, one
    record per address and interval, with their count and kinds."""
    server = make_server(args=("--audit-refusal-interval", "1")).start()
    log = audit_log_path(server)
    # The interval's records of the start (none are expected).
    time.sleep(1.5)
    n0 = len(audit_lines(log))
    too_big = raw_request(server, b'{"Pad": "' + b"x" * 70_000 + b'"}', target="TrentService.Encrypt")
    assert too_big.status_code == 400, too_big.text
    unknown_signed = rest_call(server, "GET", "/v1/no-such-thing")
    unknown_unsigned = raw_request(server, b"", method="GET", path="/favicon.ico", target=None, content_type=None,
                                   sign=False)
    assert unknown_signed.status_code == 404 and unknown_unsigned.status_code == 404
    wrong_method = rest_call(server, "DELETE", "/v1/accounts")
    assert wrong_method.status_code == 405, wrong_method.text
    bad_signature = raw_request(server, b"{}", creds=(server.credentials()[0], "x" * 40))
    assert bad_signature.status_code == 400, bad_signature.text
    # An authenticated request keeps its own record.
    signed = rest_call(server, "GET", "/v1/metering")
    assert signed.status_code == 200, signed.text
    deadline = time.monotonic() + 10
    while True:
        new = audit_records(log)[n0:]
        agg = [r for r in new if r["operation"] == "unauthenticated"]
        if agg or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    ids = [r["request_id"] for r in new]
    for resp in (unknown_signed, unknown_unsigned, wrong_method):
        assert resp.json()["requestId"] not in ids, new
    assert too_big.headers["x-amzn-RequestId"] not in ids, new
    assert len(agg) == 1, new
    assert agg[0]["source"] == "127.0.0.1" and agg[0]["count"] == 5, agg
    assert agg[0]["kinds"] == {"ValidationException": 1, "NotFoundException": 2, "MethodNotAllowedException": 1,
                               "InvalidSignatureException": 1}, agg
    assert [r["operation"] for r in new if r["operation"] != "unauthenticated"] == ["audit:GetMetering"], new
    p = atrest_client_cmd(server, "audit", "verify")
    assert p.returncode == 0 and "audit trail verified" in p.stdout, p.stdout


def test_audit_queries_filter_and_scope(server):
    root_a = new_account(server, A)
    root_b = new_account(server, B)
    alice = new_user(server, A, "alice", manager=root_a, policy={"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "kms:*", "Resource": "*"}]})
    ka, kb, kal = server.client(creds=root_a), server.client(creds=root_b), server.client(creds=alice)
    k1 = ka.create_key()["KeyMetadata"]
    k2 = ka.create_key()["KeyMetadata"]
    kb_key = kb.create_key()["KeyMetadata"]
    for _ in range(3):
        ka.encrypt(KeyId=k1["KeyId"], Plaintext=b"1")
    kal.encrypt(KeyId=k2["KeyId"], Plaintext=b"2")
    kal.describe_key(KeyId=k1["KeyId"])
    kb.encrypt(KeyId=kb_key["KeyId"], Plaintext=b"b")
    expect_error("AccessDeniedException", kb.describe_key, KeyId=k1["Arn"])
    time.sleep(0.05)
    all_records = audit_records(audit_log_path(server))

    last = all_records[-1]["seq"]

    def q(*args, creds=None):
        """Query records (leaving out the records of the queries themselves)."""
        out = atrest_client_cmd(server, "audit", "--limit", "1000", *args, env_creds=creds).stdout
        return [r for r in json.loads(out)["records"] if r["seq"] <= last]

    def expected(pred, account=None):
        return [r["request_id"] for r in all_records if pred(r) and (account is None or r.get("account") == account)]

    got = q("--key", k1["Arn"])
    assert [r["request_id"] for r in got] == expected(lambda r: r.get("key_arn") == k1["Arn"])
    # CreateKey, 3 Encrypt, alice's DescribeKey, B's refused DescribeKey.
    assert [(r["operation"], r["result"]) for r in got] == [
        ("CreateKey", "Success"), ("Encrypt", "Success"), ("Encrypt", "Success"), ("Encrypt", "Success"),
        ("DescribeKey", "Success"), ("DescribeKey", "AccessDeniedException")]
    got = q("--principal", user_arn(A, "alice"))
    assert [r["operation"] for r in got] == ["Encrypt", "DescribeKey"]
    got = q("--operation", "Encrypt")
    assert [r["request_id"] for r in got] == expected(lambda r: r["operation"] == "Encrypt")
    assert len(got) == 5
    got = q("--operation", "Encrypt", "--principal", root_arn(B))
    assert len(got) == 1 and got[0]["key_arn"] == kb_key["Arn"]
    # Time windows: since is inclusive, until exclusive.
    t_mid = all_records[len(all_records) // 2]["time"]
    assert [r["request_id"] for r in q("--since", t_mid)] == expected(lambda r: r["time"] >= t_mid)
    assert [r["request_id"] for r in q("--until", t_mid)] == expected(lambda r: r["time"] < t_mid)
    assert q("--until", "2000-01-01") == []
    # --limit: the most recent.
    two = json.loads(atrest_client_cmd(server, "audit", "--operation", "Encrypt", "--limit", "2").stdout)["records"]
    assert [r["request_id"] for r in two] == expected(lambda r: r["operation"] == "Encrypt")[-2:]
    # A non-admin sees only its own account's records (and may filter them).
    mine = q(creds=root_a)
    assert mine and all(r.get("account") == A for r in mine)
    assert {r["request_id"] for r in mine} >= set(expected(lambda r: True, account=A))
    assert q("--key", kb_key["Arn"], creds=root_a) == []
    theirs = q("--key", k1["Arn"], creds=root_b)
    assert [r["operation"] for r in theirs] == ["DescribeKey"] and theirs[0]["result"] == "AccessDeniedException"
    # Only admins verify.
    p = atrest_client_cmd(server, "audit", "verify", env_creds=root_a, check=False)
    assert p.returncode != 0 and "AccessDeniedException" in p.stderr, p.stderr


def test_fail_closed_when_the_log_cannot_be_written(make_server):
    srv = make_server().start()
    kms = srv.client()
    keys = [kms.create_key(Description=f"k{i}")["KeyMetadata"]["KeyId"] for i in range(3)]
    blob = kms.encrypt(KeyId=keys[0], Plaintext=b"before")["CiphertextBlob"]
    n_before = len(audit_lines(audit_log_path(srv)))
    log = audit_log_path(srv)
    if shutil.which("chattr") is None:
        pytest.fail("chattr (e2fsprogs) is needed to make the audit log unwritable")
    subprocess.run(["chattr", "+i", str(log)], check=True)
    try:
        def refused(fn, **kw):
            r = expect_error("KMSInternalException", fn, status=500, **kw)
            assert unique_detail not in r["Error"]["Message"]

        unique_detail = str(log)  # internal details never reach the client
        refused(kms.create_key, Description="must not exist")
        refused(kms.encrypt, KeyId=keys[0], Plaintext=b"x")
        refused(kms.disable_key, KeyId=keys[1])
        # After a write failure, everything is refused until a restart.
        refused(kms.list_keys)
        refused(kms.describe_key, KeyId=keys[1])
        refused(kms.decrypt, CiphertextBlob=blob)
        r = rest_call(srv, "POST", "/v1/accounts", {"id": "999988887777"})
        assert r.status_code == 500 and r.json()["code"] == "KMSInternalException", r.text
        subprocess.run(["chattr", "-i", str(log)], check=True)
        refused(kms.list_keys)
    finally:
        subprocess.run(["chattr", "-i", str(log)], check=False)
    srv.stop()
    assert len(audit_lines(log)) == n_before
    p = verify_offline(srv.data_dir, srv.root_key_file)
    assert p.returncode == 0 and f"audit trail verified: {n_before} records" in p.stdout, (p.stdout, p.stderr)

    srv.start()
    kms = srv.client()
    listed = [k["KeyId"] for k in kms.list_keys()["Keys"]]
    assert sorted(listed) == sorted(keys)
    assert all(kms.describe_key(KeyId=k)["KeyMetadata"]["KeyState"] == "Enabled" for k in keys)
    assert "must not exist" not in {kms.describe_key(KeyId=k)["KeyMetadata"]["Description"] for k in listed}
    accounts = [a["id"] for a in rest_call(srv, "GET", "/v1/accounts").json()["accounts"]]
    assert "999988887777" not in accounts
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"before"
    p = atrest_client_cmd(srv, "audit", "verify")
    assert p.returncode == 0 and "audit trail verified" in p.stdout


@pytest.mark.parametrize("mode", ["changes", "every"])
def test_a_killed_server_loses_no_record_of_an_answer(make_server, mode):
    # A sync interval far longer than the test: with `changes`, the answers
    # to Encrypt, Decrypt and DescribeKey go out before any sync of their
    # records; with `every`, after it.
    srv = make_server().start("--audit-sync", mode, "--audit-sync-interval-ms", "10000")
    kms = srv.client()
    key = kms.create_key(Description=f"killed-{mode}")["KeyMetadata"]["KeyId"]
    ids = []
    for i in range(40):
        out = kms.encrypt(KeyId=key, Plaintext=f"m{i}".encode())
        ids.append(request_id(out))
        ids.append(request_id(kms.decrypt(CiphertextBlob=out["CiphertextBlob"])))
    ids.append(request_id(kms.describe_key(KeyId=key)))
    r = expect_error("NotFoundException", kms.describe_key, KeyId=str(uuid.uuid4()))
    ids.append(r["ResponseMetadata"]["RequestId"])
    assert srv.kill() != 0
    recorded = {json.loads(line)["request_id"] for line in audit_lines(audit_log_path(srv))}
    missing = [i for i in ids if i not in recorded]
    assert not missing, f"{len(missing)} answered requests have no record: {missing[:3]}"
    srv.start()
    p = atrest_client_cmd(srv, "audit", "verify")
    assert p.returncode == 0 and "audit trail verified" in p.stdout, (p.stdout, p.stderr)
    srv.stop()
    p = verify_offline(srv.data_dir, srv.root_key_file)
    assert p.returncode == 0, (p.stdout, p.stderr)
