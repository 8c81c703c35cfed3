"""Several atrest nodes on one shared PostgreSQL (issue 22), driven by boto3,
the atrest CLI, qemu-img and raw SigV4 REST calls, against Debian's
PostgreSQL started by pg_fixture.py on a free loopback port.

Each test gets a fresh database on the module's PostgreSQL and starts its
nodes on loopback (`atrest serve --store postgres://... --node-name nodeN`),
each with its own data dir; node 1 bootstraps the admin, nodes 2 and 3 share
node 1's root key file (`--root-key-file`) and its admin credentials.

* Keys made on node 1 are seen and used on nodes 2 and 3 within the 1 s
  bound; `GET /v1/nodes` and `atrest node list` show every node up with its
  addresses; DisableKey, RevokeGrant, an access key's deactivation and an
  account's suspension on one node are honoured by another within 1 s
  (measured).
* A boto3 load over three nodes while node 2 is SIGKILLed: every
  acknowledged CreateKey exists afterwards, every acknowledged ciphertext
  decrypts, the survivors answer every call; node 2 comes back under the same
  id; `atrest audit verify` checks all three chains (a line per node).
* Rotation and deletion run once, on the node holding the `lifecycle` lease;
  when that node is SIGKILLed another takes the lease over and runs a
  rotation that came due after the death, within 15 s.
* PostgreSQL restarted under load: the nodes reconnect, nothing acknowledged
  is lost, calls in the outage fail only with DependencyTimeoutException or
  KMSInternalException, none hangs past boto3's timeout.
* A node started with another root key is refused and says why.
* `atrest store copy` of a populated single-node data dir into PostgreSQL,
  then a node serving from it decrypts every ciphertext made before.
* A disk lives on one node: another node's REST API answers 421
  WrongNodeException and its NBD server an error, both naming the host.

Capabilities: O4 availability, K5 rotation, K8/K9 consistency, K12 audit,
P5 root of trust.
"""

from __future__ import annotations

import datetime
import json
import random
import re
import secrets
import shutil
import subprocess
import threading
import time
import uuid

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from conftest import (
    ATREST_BIN,
    Server,
    atrest_admin,
    atrest_client_cmd,
    atrest_run,
    audit_log_path,
    audit_records,
    code_of,
    expect_error,
    free_port,
    new_account,
    rest_call,
    root_arn,
)
from pg_fixture import pg_server, pg_url  # noqa: F401  (fixtures)

A = "111122223333"
B = "444455556666"
ROOT_A = f"arn:aws:iam::{A}:root"
BOUND = 1.0  # the documented consistency bound, seconds
TAKEOVER = 15.0  # a lease's takeover after its holder's death, seconds
OUTAGE_CODES = {"DependencyTimeoutException", "KMSInternalException"}
CONNECTION_ERRORS = (EndpointConnectionError, ConnectionClosedError)


@pytest.fixture(scope="module", autouse=True)
def _server_has_a_shared_store():
    """The tests need `atrest serve --store`: say so plainly if the binary
    under test predates it."""
    p = subprocess.run([str(ATREST_BIN), "serve", "--help"], capture_output=True, text=True, timeout=30)
    if "--store" not in p.stdout:
        pytest.fail(f"{ATREST_BIN} has no `serve --store` option (issue 22's server side)")


# -- a cluster of nodes ------------------------------------------------------


class Cluster:
    """Nodes of one store: `add` makes one (not started); node 1 is the
    first added, whose root key file and admin credentials the others use."""

    def __init__(self, make_server, store_url: str):
        self.make_server = make_server
        self.store_url = store_url
        self.nodes: list[Server] = []
        self.nbd_ports: dict[str, int] = {}

    @property
    def first(self) -> Server:
        return self.nodes[0]

    def add(self, name: str | None = None, *args: str, nbd: bool = False, shared_root: bool = True,
            store: str | None = None) -> Server:
        name = name or f"node{len(self.nodes) + 1}"
        cmd = ["--store", store or self.store_url, "--node-name", name]
        if self.nodes and shared_root:
            cmd += ["--root-key-file", str(self.first.root_key_file)]
        if nbd:
            port = free_port()
            self.nbd_ports[name] = port
            cmd += ["--nbd-listen", f"127.0.0.1:{port}", "--advertise-nbd", f"127.0.0.1:{port}",
                    "--nbd-plaintext-principal", ROOT_A]
        node = self.make_server(name=name, args=tuple(cmd + list(args)))
        self.nodes.append(node)
        return node

    def start(self, node: Server, *extra: str) -> Server:
        node.start(*extra)
        share_credentials(self.first, node)
        return node

    def start_all(self, *extra: str) -> list[Server]:
        for n in self.nodes:
            if n.proc is None or n.proc.poll() is not None:
                self.start(n, *extra)
        return self.nodes


def share_credentials(first: Server, node: Server) -> None:
    """A node started on an already bootstrapped store writes no admin
    credentials: its clients use node 1's (the same admin, one store)."""
    if node is not first and not node.credentials_file.exists():
        shutil.copy(first.credentials_file, node.credentials_file)
        node.credentials_file.chmod(0o600)


@pytest.fixture
def cluster(make_server, pg_url):
    return Cluster(make_server, pg_url)


def three_nodes(cluster: Cluster, *extra: str, nbd: bool = False) -> list[Server]:
    for _ in range(3):
        cluster.add(nbd=nbd)
    return cluster.start_all(*extra)


def nodes_view(server: Server, creds=None) -> dict:
    """`GET /v1/nodes` on `server`: the whole answer, `nodes` a list."""
    r = rest_call(server, "GET", "/v1/nodes", creds=creds)
    assert r.status_code == 200, f"GET /v1/nodes on {server.name}: {r.status_code} {r.text}"
    body = r.json()
    if isinstance(body, list):
        body = {"nodes": body}
    assert isinstance(body.get("nodes"), list), body
    return body


def nodes_by_name(server: Server) -> dict[str, dict]:
    return {n["name"]: n for n in nodes_view(server)["nodes"]}


def heartbeat_age(record: dict) -> float:
    """Seconds since a node record's heartbeat (`heartbeat_ms`, or a
    `heartbeat`/`heartbeat_time` as epoch ms, epoch s or RFC 3339)."""
    for field in ("heartbeat_ms", "heartbeat", "heartbeat_time", "last_heartbeat"):
        if field in record:
            v = record[field]
            break
    else:
        raise AssertionError(f"no heartbeat field in {record}")
    now = time.time()
    if isinstance(v, (int, float)):
        return now - (v / 1000 if v > 1e11 else v)
    t = datetime.datetime.fromisoformat(str(v).replace("Z", "+00:00"))
    return now - t.timestamp()


def lease_holder(view: dict, name: str) -> str | None:
    """The holder (a node id) of lease `name`, if `GET /v1/nodes` shows
    leases (a top-level `leases` list of {name, holder}, or each node's
    `leases` list of names); None when it does not show them."""
    leases = view.get("leases")
    if isinstance(leases, list):
        for lease in leases:
            if lease.get("name") == name:
                return lease.get("holder")
        return ""
    shown = False
    for n in view["nodes"]:
        if isinstance(n.get("leases"), list):
            shown = True
            if name in n["leases"] or any(isinstance(x, dict) and x.get("name") == name for x in n["leases"]):
                return n["id"]
    return "" if shown else None


def wait_for(what: str, fn, timeout: float, interval: float = 0.02):
    """Calls fn until it returns a truthy value; that value and the seconds
    it took. Fails the test after `timeout`."""
    start = time.monotonic()
    last = None
    while True:
        try:
            v = fn()
            if v:
                return v, time.monotonic() - start
            last = v
        except ClientError as e:
            last = e.response["Error"]
        if time.monotonic() - start > timeout:
            pytest.fail(f"{what}: not within {timeout}s (last: {last})")
        time.sleep(interval)


def refused_within(what: str, fn, code: str, bound: float = BOUND) -> float:
    """Calls fn until it fails with `code`: the seconds that took, which
    must be <= bound (measured from the call of this function, right after
    the change returned on another node)."""
    start = time.monotonic()
    while True:
        c = code_of(fn)
        took = time.monotonic() - start
        if c == code:
            print(f"{what}: refused after {took * 1000:.1f} ms")
            assert took <= bound, f"{what}: refused only after {took:.3f}s (bound {bound}s)"
            return took
        assert c is None, f"{what}: unexpected {c}"
        assert took <= bound, f"{what}: still allowed {took:.3f}s after the change (bound {bound}s)"
        time.sleep(0.01)


def chain_records(node: Server, operation: str, key_arn: str) -> list[dict]:
    """The records of `operation` on `key_arn` in the node's own audit chain."""
    path = audit_log_path(node)
    if not path.exists():
        return []
    return [r for r in audit_records(path) if r.get("operation") == operation and r.get("key_arn") == key_arn]


# -- 1. keys made on one node are used on the others ---------------------------


def test_keys_made_on_one_node_are_used_on_the_others_and_changes_reach_them_within_a_second(cluster):
    n1, n2, n3 = (cluster.add(), cluster.add(), cluster.add("node3", "--advertise-api", "https://kms-3.example.test:8443"))
    cluster.start_all()
    k1, k2, k3 = n1.client(), n2.client(), n3.client()

    # Every node lists every node, up, with its addresses.
    view = nodes_by_name(n2)
    assert set(view) == {"node1", "node2", "node3"}, view
    for node in (n1, n2):
        rec = view[node.name]
        assert rec["api_url"].rstrip("/") == node.url, rec
        assert rec["health"] == "up", rec
        uuid.UUID(rec["id"])
        assert heartbeat_age(rec) < 10, rec
        assert rec["disks"] == [] and rec["instances"] == [], rec
    assert view["node3"]["api_url"].rstrip("/") == "https://kms-3.example.test:8443", view["node3"]
    assert len({r["id"] for r in view.values()}) == 3
    for other in (n1, n3):
        assert {n["id"] for n in nodes_view(other)["nodes"]} == {r["id"] for r in view.values()}
    listed = json.loads(atrest_client_cmd(n3, "node", "list").stdout)
    listed = listed["nodes"] if isinstance(listed, dict) else listed
    assert {n["id"] for n in listed} == {r["id"] for r in view.values()}, listed
    assert {n["name"]: n["health"] for n in listed} == {"node1": "up", "node2": "up", "node3": "up"}

    # A key and an alias made on node 1, seen on nodes 2 and 3 within 1 s.
    key = k1.create_key(Description="made on node 1")["KeyMetadata"]
    k1.create_alias(AliasName="alias/cluster", TargetKeyId=key["KeyId"])
    for kms, name in ((k2, "node2"), (k3, "node3")):
        _, took = wait_for(f"the alias on {name}", lambda kms=kms: kms.describe_key(KeyId="alias/cluster"), BOUND)
        print(f"alias visible on {name} after {took * 1000:.1f} ms")
    assert k3.describe_key(KeyId="alias/cluster")["KeyMetadata"]["KeyId"] == key["KeyId"]

    # Used across nodes: encrypt on one, decrypt on another.
    ctx = {"case": "cluster"}
    blob = k2.encrypt(KeyId="alias/cluster", Plaintext=b"from node 2", EncryptionContext=ctx)["CiphertextBlob"]
    assert k3.decrypt(CiphertextBlob=blob, EncryptionContext=ctx)["Plaintext"] == b"from node 2"
    dk = k3.generate_data_key(KeyId=key["Arn"], KeySpec="AES_256")
    assert k1.decrypt(CiphertextBlob=dk["CiphertextBlob"])["Plaintext"] == dk["Plaintext"]
    assert k2.decrypt(CiphertextBlob=dk["CiphertextBlob"])["Plaintext"] == dk["Plaintext"]

    # DisableKey on node 1, then Decrypt on node 3: refused within 1 s.
    k1.disable_key(KeyId=key["KeyId"])
    refused_within("Decrypt on node 3 after DisableKey on node 1",
                   lambda: k3.decrypt(CiphertextBlob=blob, EncryptionContext=ctx), "DisabledException")
    k1.enable_key(KeyId=key["KeyId"])
    wait_for("Decrypt on node 3 after EnableKey", lambda: k3.decrypt(CiphertextBlob=blob, EncryptionContext=ctx), BOUND)

    # A grant revoked on node 2 no longer works on node 3 within 1 s.
    root_b = new_account(n1, B)
    kb3 = n3.client(creds=root_b)
    grant = k1.create_grant(KeyId=key["KeyId"], GranteePrincipal=root_arn(B), Operations=["Decrypt"])
    plain_blob = k1.encrypt(KeyId=key["KeyId"], Plaintext=b"granted")["CiphertextBlob"]
    wait_for("the grant on node 3", lambda: kb3.decrypt(CiphertextBlob=plain_blob, KeyId=key["Arn"]), BOUND)
    k2.revoke_grant(KeyId=key["KeyId"], GrantId=grant["GrantId"])
    refused_within("a revoked grant on node 3", lambda: kb3.decrypt(CiphertextBlob=plain_blob, KeyId=key["Arn"]),
                   "AccessDeniedException")

    # An access key deactivated through node 1 signs nothing on node 3.
    root_a = new_account(n1, A)
    ka3 = n3.client(creds=root_a)
    wait_for("account A's key on node 3", lambda: ka3.list_keys() is not None, BOUND)
    extra = json.loads(atrest_admin(n1, "access-key", "create", "--account", A).stdout)
    kx3 = n3.client(creds=(extra["access_key_id"], extra["secret_access_key"]))
    wait_for("the new access key on node 3", lambda: kx3.list_keys() is not None, BOUND)
    atrest_admin(n1, "access-key", "deactivate", "--account", A, extra["access_key_id"])
    refused_within("a deactivated access key on node 3", kx3.list_keys, "UnrecognizedClientException")

    # An account suspended through node 2 is suspended on node 3.
    key_a = ka3.create_key()["KeyMetadata"]
    atrest_admin(n2, "account", "suspend", A)
    refused_within("a suspended account on node 3", lambda: ka3.encrypt(KeyId=key_a["KeyId"], Plaintext=b"x"),
                   "AccountSuspendedException")
    atrest_admin(n2, "account", "resume", A)
    wait_for("a resumed account on node 3", lambda: ka3.encrypt(KeyId=key_a["KeyId"], Plaintext=b"x"), BOUND)


# -- 2. a node killed under load ------------------------------------------------


class Load:
    """boto3 calls from `threads` threads, each spreading its calls over
    `nodes` round-robin (a load balancer without health checks): CreateKey,
    Encrypt under the new key on the same node, Encrypt under a shared key,
    GenerateDataKey, Decrypt of an earlier acknowledged blob (checked).
    Records what was acknowledged and every failure."""

    def __init__(self, nodes: list[Server], shared_key: str, threads: int = 6, read_timeout: float | None = None):
        self.nodes = nodes
        self.shared_key = shared_key
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.keys: list[tuple[str, str, float]] = []  # (key id, node, time acked)
        self.blobs: list[tuple[bytes, bytes, str, float]] = []  # (blob, plaintext, node, time acked)
        self.failures: list[tuple[str, str, str, float, float]] = []  # (node, op, error, when, took)
        self.wrong: list[str] = []
        self.ok_calls: list[tuple[str, str, float]] = []  # (node, op, when)
        self.max_took = 0.0
        # boto3 clients are made here, not in the threads (creating one is
        # not thread-safe); one per thread per node.
        self.clients = [[n.client() for n in nodes] for _ in range(threads)]
        if read_timeout is not None:
            for row in self.clients:
                for c in row:
                    c.meta.config.read_timeout = read_timeout
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def start(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=60)
            assert not t.is_alive(), "a load thread hangs"

    def _call(self, node: str, op: str, fn, **kw):
        start = time.monotonic()
        try:
            out = fn(**kw)
        except (ClientError, ReadTimeoutError, *CONNECTION_ERRORS) as e:
            took = time.monotonic() - start
            if isinstance(e, ClientError):
                err = e.response["Error"]["Code"]
            else:
                err = type(e).__name__
            with self.lock:
                self.failures.append((node, op, err, time.time(), took))
                self.max_took = max(self.max_took, took)
            return None
        took = time.monotonic() - start
        with self.lock:
            self.ok_calls.append((node, op, time.time()))
            self.max_took = max(self.max_took, took)
        return out

    def _run(self, i: int) -> None:
        clients = self.clients[i]
        rng = random.Random(i)
        n = len(self.nodes)
        step = i
        while not self.stop_event.is_set():
            j = step % n
            step += 1
            kms, name = clients[j], self.nodes[j].name
            created = self._call(name, "CreateKey", kms.create_key, Description=f"load {i}")
            if created:
                kid = created["KeyMetadata"]["KeyId"]
                with self.lock:
                    self.keys.append((kid, name, time.time()))
                # Read-your-writes on the node that made the key.
                pt = secrets.token_bytes(24)
                enc = self._call(name, "Encrypt(new key)", kms.encrypt, KeyId=kid, Plaintext=pt)
                if enc:
                    with self.lock:
                        self.blobs.append((enc["CiphertextBlob"], pt, name, time.time()))
            pt = secrets.token_bytes(32)
            enc = self._call(name, "Encrypt", kms.encrypt, KeyId=self.shared_key, Plaintext=pt)
            if enc:
                with self.lock:
                    self.blobs.append((enc["CiphertextBlob"], pt, name, time.time()))
            dk = self._call(name, "GenerateDataKey", kms.generate_data_key, KeyId=self.shared_key, KeySpec="AES_256")
            if dk:
                with self.lock:
                    self.blobs.append((dk["CiphertextBlob"], dk["Plaintext"], name, time.time()))
            # An acknowledged blob at least 1.5 s old (past the bound, so
            # another node than its maker's must know its key).
            with self.lock:
                cut = time.time() - 1.5
                picks = [self.blobs[r] for r in (rng.randrange(len(self.blobs)) for _ in range(4))
                         if self.blobs[r][3] < cut] if self.blobs else []
            if picks:
                blob, want, _, _ = picks[0]
                dec = self._call(name, "Decrypt", kms.decrypt, CiphertextBlob=blob)
                if dec and dec["Plaintext"] != want:
                    with self.lock:
                        self.wrong.append(f"Decrypt on {name} returned another plaintext")

    def failures_of(self, node: str) -> list[tuple]:
        return [f for f in self.failures if f[0] == node]


def verify_acknowledged(load: Load, readers: list[Server]) -> None:
    """Every acknowledged key exists and every acknowledged blob decrypts to
    its plaintext, read on `readers` in turn."""
    clients = [r.client() for r in readers]
    for i, (kid, made_on, _) in enumerate(load.keys):
        md = clients[i % len(clients)].describe_key(KeyId=kid)["KeyMetadata"]
        assert md["KeyState"] == "Enabled", (kid, made_on, md)
    for i, (blob, want, made_on, _) in enumerate(load.blobs):
        got = clients[i % len(clients)].decrypt(CiphertextBlob=blob)["Plaintext"]
        assert got == want, f"a blob acknowledged by {made_on} decrypts to another plaintext"


def test_a_node_killed_under_load_loses_nothing_acknowledged(cluster):
    n1, n2, n3 = three_nodes(cluster)
    shared = n1.client().create_key(Description="shared by the load")["KeyMetadata"]["KeyId"]
    wait_for("the shared key on node 3", lambda: n3.client().describe_key(KeyId=shared), BOUND)
    ids_before = {n["name"]: n["id"] for n in nodes_view(n1)["nodes"]}

    load = Load([n1, n2, n3], shared, threads=6).start()
    try:
        time.sleep(2.5)
        killed_at = time.time()
        assert n2.kill() == -9
        time.sleep(3.0)
    finally:
        load.stop()

    acked_by_2 = [k for k in load.keys if k[1] == "node2"]
    assert acked_by_2, "node 2 acknowledged nothing before it was killed"
    assert [k for k in load.keys if k[2] > killed_at + 0.5], "nothing acknowledged after the kill"
    assert not load.wrong, load.wrong
    assert any(c[1] == "Decrypt" for c in load.ok_calls), "the load checked no Decrypt"
    # The survivors answered every call; node 2's failures are connection
    # errors (the kill), never an AWS error.
    for node in ("node1", "node3"):
        assert not load.failures_of(node), load.failures_of(node)[:5]
    bad = [f for f in load.failures_of("node2") if f[2] not in ("EndpointConnectionError", "ConnectionClosedError")]
    assert not bad, bad[:5]
    assert not [f for f in load.failures_of("node2") if f[3] < killed_at], "node 2 failed before the kill"
    print(f"acknowledged: {len(load.keys)} keys ({len(acked_by_2)} by node 2), {len(load.blobs)} ciphertexts; "
          f"{len(load.failures)} calls to node 2 failed after the kill")

    verify_acknowledged(load, [n1, n3])

    # Node 2 comes back under its id, and sees everything.
    cluster.start(n2)
    view = wait_for("node 2 up again", lambda: (v := nodes_by_name(n1)) and v["node2"]["health"] == "up" and v, 10)[0]
    assert {n: r["id"] for n, r in view.items()} == ids_before
    verify_acknowledged(load, [n2])

    # The audit trail: one chain per node, node 2's through a SIGKILL; the
    # records of each chain carry its node's id.
    p = atrest_client_cmd(n3, "audit", "verify")
    lines = p.stdout.splitlines()
    for name, nid in ids_before.items():
        mine = [line for line in lines if nid in line or re.search(rf"\b{name}\b", line)]
        assert mine and all(re.search(r"verified|\bok\b", line, re.I) for line in mine), \
            f"{name} ({nid}) in:\n{p.stdout}"
    for node in (n1, n2, n3):
        recs = audit_records(audit_log_path(node))
        node_ids = {r.get("node") or r.get("node_id") for r in recs}
        assert node_ids == {ids_before[node.name]}, (node.name, node_ids)


# -- 3. the periodic tasks under a lease -------------------------------------------


def test_rotation_and_deletion_run_once_and_the_lease_moves_when_its_holder_dies(cluster):
    # Set up on a lone node with the real clock: a key rotating every 90
    # days, a key rotating every 2560 days (re-enabled at 90 days later,
    # after the holder's death: then it is due at once), a key scheduled
    # for deletion in 7 days.
    n1 = cluster.add()
    cluster.start(n1)
    kms = n1.client()
    rot = kms.create_key(Description="rotates at 90 days")["KeyMetadata"]
    kms.enable_key_rotation(KeyId=rot["KeyId"], RotationPeriodInDays=90)
    rot_blob = kms.encrypt(KeyId=rot["KeyId"], Plaintext=b"before rotation")["CiphertextBlob"]
    later = kms.create_key(Description="made due after the holder's death")["KeyMetadata"]
    kms.enable_key_rotation(KeyId=later["KeyId"], RotationPeriodInDays=2560)
    doomed = kms.create_key(Description="deleted at 7 days")["KeyMetadata"]
    kms.create_alias(AliasName="alias/doomed", TargetKeyId=doomed["KeyId"])
    kms.schedule_key_deletion(KeyId=doomed["KeyId"], PendingWindowInDays=7)
    assert n1.stop() == 0, n1.last_output()

    # Three nodes 91 days ahead, ticking every second: the rotation and the
    # deletion are due on every node; exactly one runs them.
    cluster.add()
    cluster.add()
    clock = ("--lifecycle-clock-offset-days", "91", "--lifecycle-interval", "1")
    nodes = cluster.start_all(*clock)
    clients = {n.name: n.client() for n in nodes}
    wait_for("the rotation and the deletion",
             lambda: code_of(clients["node2"].describe_key, KeyId=doomed["KeyId"]) == "NotFoundException"
             and clients["node2"].list_key_rotations(KeyId=rot["KeyId"])["Rotations"], 25, interval=0.2)
    time.sleep(3)  # a few more ticks on every node must not rotate it again
    seen = set()
    for name, c in clients.items():
        rotations = c.list_key_rotations(KeyId=rot["KeyId"])["Rotations"]
        assert len(rotations) == 1 and rotations[0]["RotationType"] == "AUTOMATIC", (name, rotations)
        seen.add(rotations[0]["KeyMaterialId"])
        expect_error("NotFoundException", c.describe_key, KeyId="alias/doomed")
        assert c.decrypt(CiphertextBlob=rot_blob)["Plaintext"] == b"before rotation"
    assert len(seen) == 1
    # One record of each in all the chains together: the holder's.
    rotated_in = [n for n in nodes for _ in chain_records(n, "AutomaticKeyRotation", rot["Arn"])]
    deleted_in = [n for n in nodes for _ in chain_records(n, "ScheduledKeyDeletion", doomed["Arn"])]
    assert len(rotated_in) == 1 and len(deleted_in) == 1, ([n.name for n in rotated_in], [n.name for n in deleted_in])
    holder = rotated_in[0]
    view = nodes_view(holder)
    ids = {n["name"]: n["id"] for n in view["nodes"]}
    shown = lease_holder(view, "lifecycle")
    if shown is not None:
        assert shown == ids[holder.name], (shown, holder.name, view)
    print(f"lifecycle lease held by {holder.name}")

    # The holder dies. A rotation made due afterwards is run by a survivor
    # within 15 s (the lease's ttl, 10 s, then a tick).
    assert holder.kill() == -9
    died = time.monotonic()
    survivors = [n for n in nodes if n is not holder]
    clients[survivors[0].name].enable_key_rotation(KeyId=later["KeyId"], RotationPeriodInDays=90)
    reader = clients[survivors[1].name]
    wait_for("a survivor's rotation", lambda: reader.list_key_rotations(KeyId=later["KeyId"])["Rotations"],
             TAKEOVER + 2, interval=0.1)
    took = time.monotonic() - died
    print(f"rotation by the new holder {took:.1f} s after the old holder's death")
    assert took <= TAKEOVER + 1, f"takeover took {took:.1f}s"
    time.sleep(3)
    for n in survivors:
        c = clients[n.name]
        assert len(c.list_key_rotations(KeyId=later["KeyId"])["Rotations"]) == 1
        assert len(c.list_key_rotations(KeyId=rot["KeyId"])["Rotations"]) == 1
    new_in = [n for n in survivors for _ in chain_records(n, "AutomaticKeyRotation", later["Arn"])]
    assert len(new_in) == 1, [n.name for n in new_in]
    view = nodes_view(survivors[0])
    shown = lease_holder(view, "lifecycle")
    if shown is not None:
        assert shown == ids[new_in[0].name], (shown, view)
    # The dead node shows as down (its heartbeat is over 10 s old by now or
    # soon).
    wait_for(f"{holder.name} down", lambda: nodes_by_name(survivors[0])[holder.name]["health"] == "down", 5, 0.2)


# -- 4. PostgreSQL restarted under load ------------------------------------------------


def test_postgres_restart_under_load_loses_nothing_and_fails_only_with_service_errors(cluster, pg_server):
    n1, n2, n3 = three_nodes(cluster)
    shared = n1.client().create_key(Description="shared by the load")["KeyMetadata"]["KeyId"]
    wait_for("the shared key on node 3", lambda: n3.client().describe_key(KeyId=shared), BOUND)

    load = Load([n1, n2, n3], shared, threads=6, read_timeout=25).start()
    try:
        time.sleep(2.0)
        down_at = time.time()
        pg_server.stop("fast")
        time.sleep(3.0)
        pg_server.start_again()
        up_at = time.time()

        # The nodes reconnect: each acknowledges a CreateKey again.
        def reconnected():
            with load.lock:
                return all(any(c[0] == n.name and c[1] == "CreateKey" and c[2] > up_at for c in load.ok_calls)
                           for n in (n1, n2, n3))
        _, took = wait_for("every node acknowledging CreateKey after PostgreSQL's restart", reconnected, 20, 0.1)
        print(f"all nodes writing again {took:.1f} s after PostgreSQL came back")
        time.sleep(1.0)
    finally:
        load.stop()

    for n in (n1, n2, n3):
        assert n.proc.poll() is None, f"{n.name} exited:\n{n.last_output()[-3000:]}"
    assert not load.wrong, load.wrong
    failed = load.failures
    assert failed, "no call failed while PostgreSQL was down: the outage was not exercised"
    bad = [f for f in failed if f[2] not in OUTAGE_CODES]
    assert not bad, f"calls failed otherwise than with {OUTAGE_CODES}: {bad[:10]}"
    early = [f for f in failed if f[3] < down_at - 0.1]
    assert not early, f"calls failed before the outage: {early[:5]}"
    print(f"{len(failed)} calls failed in the outage ({sorted({f[2] for f in failed})}); "
          f"slowest call {load.max_took:.2f} s; acknowledged {len(load.keys)} keys, {len(load.blobs)} ciphertexts")
    verify_acknowledged(load, [n1, n2, n3])


# -- 5. one root of trust ----------------------------------------------------------------


def test_a_node_with_another_root_key_is_refused(cluster):
    n1 = cluster.add()
    cluster.start(n1)
    key = n1.client().create_key()["KeyMetadata"]["KeyId"]
    blob = n1.client().encrypt(KeyId=key, Plaintext=b"before the intruder")["CiphertextBlob"]

    # Another root key (a valid key file, not the cluster's): refused,
    # saying why, before it serves anything.
    other = cluster.first.workdir / "other.root.key"
    other.write_bytes(secrets.token_bytes(32))
    other.chmod(0o600)
    intruder = cluster.add("intruder", "--root-key-file", str(other), shared_root=False)
    rc, out = intruder.run_until_exit()
    assert rc != 0, out
    assert re.search(r"sealed by a different root key", out, re.I), out
    assert " listening on " not in out, out

    # No root key file at all: refused before one is made (a new one would
    # be another root).
    newcomer = cluster.add("newcomer", shared_root=False)
    rc, out = newcomer.run_until_exit()
    assert rc != 0, out
    assert "root key file" in out and "does not exist" in out, out
    assert not newcomer.root_key_file.exists()

    # They left no trace in the store: node 1 is still the only node, and
    # serves as before.
    assert [n["name"] for n in nodes_view(n1)["nodes"]] == ["node1"]
    assert n1.client().decrypt(CiphertextBlob=blob)["Plaintext"] == b"before the intruder"


# -- 6. a single-node installation moved into PostgreSQL --------------------------------


def _store_copy_lines(out: str, table: str) -> list[str]:
    """The lines of `atrest store copy`'s report naming `table` (as `keys`,
    `kms.keys`, `kms/keys`; not `access_keys` nor `keys_by_owner`)."""
    lines = [line for line in out.splitlines() if re.search(rf"(^|[\s.:/]){re.escape(table)}(\s|:|,|$)", line)]
    assert lines, f"no line for table {table} in:\n{out}"
    return lines


def test_store_copy_moves_a_single_node_installation(make_server, pg_url):
    single = make_server(name="single").start()
    kms = single.client()
    root_b = new_account(single, B)
    made: list[tuple[bytes, bytes, dict, str | None]] = []  # blob, plaintext, context, grant token
    keys = []
    for i in range(6):
        k = kms.create_key(Description=f"key {i}", Tags=[{"TagKey": "n", "TagValue": str(i)}])["KeyMetadata"]
        keys.append(k)
        kms.create_alias(AliasName=f"alias/moved-{i}", TargetKeyId=k["KeyId"])
        for j in range(3):
            ctx = {"i": str(i), "j": str(j)}
            pt = secrets.token_bytes(32)
            made.append((kms.encrypt(KeyId=f"alias/moved-{i}", Plaintext=pt, EncryptionContext=ctx)["CiphertextBlob"],
                         pt, ctx, None))
        dk = kms.generate_data_key(KeyId=k["Arn"], KeySpec="AES_256")
        made.append((dk["CiphertextBlob"], dk["Plaintext"], {}, None))
    kms.enable_key_rotation(KeyId=keys[0]["KeyId"])
    kms.rotate_key_on_demand(KeyId=keys[0]["KeyId"])
    pt = b"after an on-demand rotation"
    made.append((kms.encrypt(KeyId=keys[0]["KeyId"], Plaintext=pt)["CiphertextBlob"], pt, {}, None))
    grant = kms.create_grant(KeyId=keys[1]["KeyId"], GranteePrincipal=root_arn(B), Operations=["Decrypt"])
    kms.disable_key(KeyId=keys[5]["KeyId"])
    sign_key = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    sig = kms.sign(KeyId=sign_key["KeyId"], Message=b"m" * 32, MessageType="DIGEST",
                   SigningAlgorithm="ECDSA_SHA_256")["Signature"]
    assert single.stop() == 0, single.last_output()

    p = atrest_run("store", "copy", "--from", str(single.data_dir), "--to", pg_url)
    out = p.stdout + p.stderr
    print(out)
    # Per table: its count and a checksum.
    for table, at_least in (("keys", 7), ("aliases", 6), ("grants", 1), ("accounts", 2), ("access_keys", 2)):
        def counted(line: str) -> bool:
            counts = [int(x) for x in re.findall(r"(?<![0-9a-fA-F])\d+(?![0-9a-fA-F])", line)]
            return bool(counts) and max(counts) >= at_least and bool(re.search(r"\b[0-9a-f]{16,}\b", line))
        lines = _store_copy_lines(out, table)
        assert any(counted(line) for line in lines), f"no count >= {at_least} and checksum for {table}: {lines}"
    # A second copy into the now populated store is refused (never merged).
    p2 = atrest_run("store", "copy", "--from", str(single.data_dir), "--to", pg_url, check=False)
    assert p2.returncode != 0, p2.stdout

    # A node on the copy, with the installation's root key, a data dir of
    # its own: every ciphertext made before decrypts.
    moved = make_server(name="moved", args=("--store", pg_url, "--node-name", "moved",
                                            "--root-key-file", str(single.root_key_file))).start()
    share_credentials(single, moved)
    kms = moved.client()
    for i, k in enumerate(keys):
        md = kms.describe_key(KeyId=f"alias/moved-{i}")["KeyMetadata"]
        assert md["KeyId"] == k["KeyId"]
        assert md["KeyState"] == ("Disabled" if i == 5 else "Enabled")
        assert kms.list_resource_tags(KeyId=k["KeyId"])["Tags"] == [{"TagKey": "n", "TagValue": str(i)}]
    # The disabled key stayed disabled: its ciphertexts are refused until
    # it is enabled on the new node.
    blob_5, _, ctx_5, _ = next(m for m in made if m[2].get("i") == "5")
    expect_error("DisabledException", kms.decrypt, CiphertextBlob=blob_5, EncryptionContext=ctx_5)
    kms.enable_key(KeyId=keys[5]["KeyId"])
    for blob, pt, ctx, _ in made:
        assert kms.decrypt(CiphertextBlob=blob, EncryptionContext=ctx)["Plaintext"] == pt
    assert len(kms.list_key_rotations(KeyId=keys[0]["KeyId"])["Rotations"]) == 1
    assert kms.get_key_rotation_status(KeyId=keys[0]["KeyId"])["KeyRotationEnabled"] is True
    assert kms.verify(KeyId=sign_key["KeyId"], Message=b"m" * 32, MessageType="DIGEST",
                      SigningAlgorithm="ECDSA_SHA_256", Signature=sig)["SignatureValid"] is True
    # The grant and the other account's access key moved too.
    kb = moved.client(creds=root_b)
    blob_1 = next(b for b, _, ctx, _ in made if ctx.get("i") == "1")
    ctx_1 = next(ctx for _, _, ctx, _ in made if ctx.get("i") == "1")
    assert kb.decrypt(CiphertextBlob=blob_1, EncryptionContext=ctx_1, KeyId=keys[1]["Arn"])["Plaintext"]
    assert [g["GrantId"] for g in kms.list_grants(KeyId=keys[1]["KeyId"])["Grants"]] == [grant["GrantId"]]


# -- 7. a disk lives on one node ------------------------------------------------------------


def test_a_disk_on_another_node_answers_an_error_naming_its_host(cluster):
    if not shutil.which("qemu-img"):
        pytest.skip("qemu-img not installed (qemu-utils)")
    n1, n2 = cluster.add(nbd=True), cluster.add(nbd=True)
    cluster.start_all()
    creds = new_account(n1, A)
    disk = json.loads(atrest_client_cmd(n1, "disk", "create", "--size", "8M", env_creds=creds).stdout)
    nbd1, nbd2 = cluster.nbd_ports["node1"], cluster.nbd_ports["node2"]

    # Its own node serves it.
    assert rest_call(n1, "GET", f"/v1/disks/{disk['id']}", creds=creds).status_code == 200
    p = subprocess.run(["qemu-img", "info", f"nbd://127.0.0.1:{nbd1}/{disk['id']}"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr

    # The registry shows where it lives.
    wait_for("the disk in node 1's record",
             lambda: any(d.get("id") == disk["id"] for d in nodes_by_name(n2)["node1"]["disks"]), 5, 0.2)

    # Node 2's REST API: 421 WrongNodeException naming node 1.
    r = rest_call(n2, "GET", f"/v1/disks/{disk['id']}", creds=creds)
    assert r.status_code == 421, (r.status_code, r.text)
    body = r.json()
    assert body.get("__type", body.get("code")) == "WrongNodeException", body
    text = json.dumps(body)
    assert "node1" in text and n1.url in text and f"127.0.0.1:{nbd1}" in text, body

    # Node 2's NBD server: an error naming node 1's NBD address.
    p = subprocess.run(["qemu-img", "info", f"nbd://127.0.0.1:{nbd2}/{disk['id']}"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0, p.stdout
    assert f"127.0.0.1:{nbd1}" in p.stderr, p.stderr
