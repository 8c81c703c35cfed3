"""The audit trail across nodes (issue 22, point 4).

Each node keeps its own HMAC chain and writes its id into every record
(`node`); it publishes its chain's head and its metering in the node
registry at every heartbeat. `POST /v1/audit/verify` (and `atrest audit
verify`) checks every registered node's chain: its own locally, the others'
through the internal, HMAC-authenticated `/internal/v1/...` endpoints, and
reports each as `ok`, `damaged`, `truncated` (it ends before a head its node
published) or `unreachable`. `GET /v1/audit` merges every up node's records
by time, pages across them with `next_cursor` and names the nodes that did
not answer (`missing_nodes`). `GET /v1/metering` adds the others' published
counts to this node's.

Single node (run here): verify lists one node; records name it; paging by
`before`/`next_before` and by `cursor`/`next_cursor` agree; a chain cut back
together with its head file (undetectable from the files alone) is reported
`truncated` against the head the node had published; the internal endpoints
take only requests MACed under the cluster key (derived from the root key
as the server does: HKDF-SHA256, salt `atrest root derivation`, info
`atrest/cluster/v1`), refuse forged, altered, replayed and stale ones and
any customer's credentials with 403, authenticate their answers, and are not
in the OpenAPI document.

Several nodes (on a PostgreSQL the nodes share, started by pg_fixture): two nodes, records
of both merged and paged without a skip or a repeat, verify lists both `ok`;
metering counts both; node 2 killed: verify says `unreachable` and the
query lists it in `missing_nodes`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid

import pytest
import requests

from conftest import atrest_client_cmd, read_credentials, rest_call
from pg_fixture import pg_server, pg_url  # noqa: F401 (fixtures)

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


def cluster_key(root_key_file) -> bytes:
    root = root_key_file.read_bytes()
    assert len(root) == 32
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"atrest root derivation",
                info=b"atrest/cluster/v1").derive(root)


def sign(key: bytes, method: str, pq: str, body: bytes, *, node="test-node", time_ms=None, nonce=None):
    time_ms = int(time.time() * 1000) if time_ms is None else time_ms
    nonce = nonce or uuid.uuid4().hex
    msg = "\n".join(["atrest-internal-request-v1", method, pq, str(time_ms), nonce, node,
                     hashlib.sha256(body).hexdigest()])
    mac = hmac.new(key, msg.encode(), hashlib.sha256).hexdigest()
    return {"x-atrest-node": node, "x-atrest-time": str(time_ms), "x-atrest-nonce": nonce,
            "x-atrest-mac": mac}


def response_ok(key: bytes, nonce: str, r: requests.Response) -> bool:
    msg = "\n".join(["atrest-internal-response-v1", nonce, str(r.status_code),
                     hashlib.sha256(r.content).hexdigest()])
    want = hmac.new(key, msg.encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(want, r.headers.get("x-atrest-mac", ""))


def node_id(server) -> str:
    return json.loads((server.data_dir / "node.json").read_text())["id"]


def some_calls(server, n=5):
    kms = server.client()
    key = kms.create_key(Description="audit-nodes")["KeyMetadata"]["KeyId"]
    for i in range(n):
        kms.encrypt(KeyId=key, Plaintext=f"m{i}".encode())
    return key


def verify(server) -> dict:
    r = rest_call(server, "POST", "/v1/audit/verify")
    assert r.status_code == 200, r.text
    return r.json()


def all_pages(server, limit: int, key: str = "cursor") -> list[tuple[str, int]]:
    """Every record, newest first, paging with `cursor` (or `before`)."""
    out, param = [], None
    while True:
        path = f"/v1/audit?limit={limit}"
        if param is not None:
            path += f"&{key}={requests.utils.quote(str(param))}"
        r = rest_call(server, "GET", path)
        assert r.status_code == 200, r.text
        body = r.json()
        out += [(rec["node"], rec["seq"]) for rec in reversed(body["records"])]
        param = body.get("next_" + key)
        if param is None:
            return out


def test_one_node_verifies_as_one_node_and_names_itself(server):
    some_calls(server)
    me = node_id(server)
    v = verify(server)
    assert v["verified"] is True and v["first_bad"] is None, v
    assert [n["node"] for n in v["nodes"]] == [me], v
    n = v["nodes"][0]
    assert n["state"] == "ok" and n["verified"] is True and n["good_records"] == v["good_records"], v
    p = atrest_client_cmd(server, "audit", "verify")
    assert f"({me}): ok" in p.stdout and "audit trail verified" in p.stdout, p.stdout

    body = rest_call(server, "GET", "/v1/audit?limit=1000").json()
    assert body["records"] and all(r["node"] == me for r in body["records"]), body
    assert body["missing_nodes"] == []
    # The records as written name the node too.
    lines = (server.data_dir / "audit" / "audit.log").read_bytes().split(b"\n")
    assert any(f'"node":"{me}"'.encode() in line for line in lines)

    # Paging by cursor and by before walk the same records, no skip, no repeat.
    for limit in (1, 3, 7):
        by_cursor = all_pages(server, limit, "cursor")
        by_before = all_pages(server, limit, "before")
        seqs = [s for _, s in by_cursor]
        assert len(set(seqs)) == len(seqs), "a record repeated"
        # Records written while paging (the audit queries' own) may add to
        # the newest end only.
        assert seqs == sorted(seqs, reverse=True)
        assert seqs[-1] == 1 and seqs == list(range(seqs[0], 0, -1)), "a record skipped"
        assert [s for _, s in by_before][-len(seqs) // 2:] == seqs[-len(seqs) // 2:]
    r = rest_call(server, "GET", "/v1/audit?before=3&cursor=x%3A1")
    assert r.status_code == 400, r.text
    r = rest_call(server, "GET", "/v1/audit?cursor=not-a-cursor")
    assert r.status_code == 400 and "cursor" in r.text, r.text


def test_a_chain_cut_back_with_its_head_is_reported_truncated(make_server):
    srv = make_server().start()
    some_calls(srv, 3)
    srv.stop()
    audit = srv.data_dir / "audit"
    old_log, old_head = (audit / "audit.log").read_bytes(), (audit / "audit.head").read_bytes()
    srv.start()
    some_calls(srv, 10)
    time.sleep(5)  # two heartbeats: the longer chain's head is published
    assert verify(srv)["verified"] is True
    srv.stop()
    # The attack the files alone cannot show: an older, genuine log and head.
    (audit / "audit.log").write_bytes(old_log)
    (audit / "audit.head").write_bytes(old_head)
    srv.start()
    v = verify(srv)
    assert v["verified"] is False, v
    assert v["first_bad"] is None, "the files themselves are consistent"
    n = v["nodes"][0]
    assert n["state"] == "truncated" and "cut back" in n["reason"], n
    p = atrest_client_cmd(srv, "audit", "verify", check=False)
    assert p.returncode != 0 and "truncated" in p.stdout + p.stderr, (p.stdout, p.stderr)
    # It stays reported after more heartbeats and records.
    some_calls(srv, 2)
    time.sleep(5)
    assert verify(srv)["nodes"][0]["state"] == "truncated"


def test_internal_endpoints_take_only_the_cluster_key(server):
    some_calls(server)
    key = cluster_key(server.root_key_file)
    pq = "/internal/v1/audit/records?limit=5"
    url = server.url + pq
    h = sign(key, "GET", pq, b"")
    r = requests.get(url, headers=h, timeout=10)
    assert r.status_code == 200, r.text
    assert response_ok(key, h["x-atrest-nonce"], r), "the answer is authenticated"
    records = r.json()["records"]
    assert len(records) == 5 and all(x["node"] == node_id(server) for x in records)
    # Replayed: refused.
    r = requests.get(url, headers=h, timeout=10)
    assert r.status_code == 403, r.text
    # Genuinely signed, but two minutes old (or ahead).
    for skew in (-120_000, 120_000):
        old = sign(key, "GET", pq, b"", time_ms=int(time.time() * 1000) + skew)
        assert requests.get(url, headers=old, timeout=10).status_code == 403
    # Altered: another query than signed, another method, another body.
    h = sign(key, "GET", pq, b"")
    assert requests.get(server.url + "/internal/v1/audit/records?limit=500", headers=h,
                        timeout=10).status_code == 403
    vpath = "/internal/v1/audit/verify"
    h = sign(key, "POST", vpath, b"{}")
    assert requests.post(server.url + vpath, data=b'{"check_seq":1}', headers=h,
                         timeout=10).status_code == 403
    h = sign(key, "POST", vpath, b"{}")
    r = requests.post(server.url + vpath, data=b"{}", headers=h, timeout=60)
    assert r.status_code == 200 and r.json()["first_bad"] is None, r.text
    assert response_ok(key, h["x-atrest-nonce"], r)
    # Forged: another key; or none at all.
    forged = sign(hashlib.sha256(b"not the root").digest(), "GET", pq, b"")
    assert requests.get(url, headers=forged, timeout=10).status_code == 403
    assert requests.get(url, timeout=10).status_code == 403
    # The admin's own (SigV4) credentials open nothing here.
    r = rest_call(server, "GET", pq)
    assert r.status_code == 403, r.text
    r = rest_call(server, "POST", vpath, {})
    assert r.status_code == 403, r.text
    # A signed call to an unknown internal route is a signed 404.
    h = sign(key, "GET", "/internal/v1/nothing", b"")
    r = requests.get(server.url + "/internal/v1/nothing", headers=h, timeout=10)
    assert r.status_code == 404 and response_ok(key, h["x-atrest-nonce"], r)
    # Not in the API's description.
    doc = requests.get(server.url + "/v1/openapi.json", timeout=10).json()
    assert not [p for p in doc["paths"] if "internal" in p], list(doc["paths"])


def test_metering_on_one_node_is_its_own(server):
    some_calls(server, 4)
    usage = rest_call(server, "GET", "/v1/metering").json()["usage"]
    enc = [u for u in usage if u["operation"] == "Encrypt"]
    assert enc and enc[0]["success"] == 4, usage


# -- several nodes on one PostgreSQL ---------------------------------------

def test_two_nodes_verify_merge_meter_and_report_a_dead_one(make_server, pg_url):
    n1 = make_server(name="n1").start("--store", pg_url, "--node-name", "n1")
    n2 = make_server(name="n2").start("--store", pg_url, "--node-name", "n2",
                                      "--root-key-file", str(n1.root_key_file))
    ids = {node_id(n1): "n1", node_id(n2): "n2"}
    some_calls(n1, 3)
    # Records on node 2, with node 1's admin (the accounts are shared).
    admin = read_credentials(n1.credentials_file)
    for _ in range(3):
        r = rest_call(n2, "GET", "/v1/metering", creds=admin)
        assert r.status_code == 200, r.text
    time.sleep(5)  # heartbeats: heads and metering published
    v = verify(n1)
    assert v["verified"] is True, v
    assert sorted(n["node"] for n in v["nodes"]) == sorted(ids), v
    assert all(n["state"] == "ok" for n in v["nodes"]), v
    p = atrest_client_cmd(n1, "audit", "verify")
    assert p.stdout.count("): ok") == 2 and "audit trail verified: 2 nodes" in p.stdout, p.stdout

    # Merged, each record naming its node, paged without skip or repeat.
    for limit in (1, 2, 5):
        got = all_pages(n1, limit)
        assert len(set(got)) == len(got), "a record repeated"
        assert {n for n, _ in got} == set(ids), got
        for n in ids:
            seqs = sorted(s for m, s in got if m == n)
            assert seqs == list(range(1, len(seqs) + 1)), f"a record of {ids[n]} skipped"
    # Metering: node 2's published counts are added to node 1's.
    usage = rest_call(n1, "GET", "/v1/metering").json()["usage"]
    meter = [u for u in usage if u["operation"] == "audit:GetMetering"]
    assert meter and meter[0]["success"] >= 3, "node 2's counts are in node 1's answer"

    n2.kill()
    v = verify(n1)
    states = {ids[n["node"]]: n["state"] for n in v["nodes"]}
    assert states == {"n1": "ok", "n2": "unreachable"} and v["verified"] is False, v
    body = rest_call(n1, "GET", "/v1/audit?limit=10").json()
    assert [m["node"] for m in body["missing_nodes"]] == [node_id(n2)], body
    assert all(r["node"] == node_id(n1) for r in body["records"])

    # An operator removes the dead node (refused while it is up), and verify
    # passes over the chains that remain.
    r = rest_call(n1, "DELETE", f"/v1/nodes/{node_id(n1)}")
    assert r.status_code == 409 and r.json()["code"] == "ConflictException", r.text
    deadline = time.time() + 15
    while time.time() < deadline:
        view = rest_call(n1, "GET", "/v1/nodes").json()["nodes"]
        if any(n["id"] == node_id(n2) and n["health"] == "down" for n in view):
            break
        time.sleep(0.5)
    p = atrest_client_cmd(n1, "node", "remove", node_id(n2))
    assert p.returncode == 0, p.stderr
    assert [n["id"] for n in rest_call(n1, "GET", "/v1/nodes").json()["nodes"]] == [node_id(n1)]
    v = verify(n1)
    assert v["verified"] is True and [n["node"] for n in v["nodes"]] == [node_id(n1)], v
