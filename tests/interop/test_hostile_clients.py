"""Hostile clients cannot take the service down or bloat it (issue 19).

* 10,000 connections from eight addresses (127.0.0.2-9) that send a KMS
  request's head and one byte of a 60,000-byte body, and then stall, are
  held past the deadlines; separately 10,000 that stall in the middle of a
  TLS handshake, and 10,000 that stall in NBD option negotiation. Meanwhile
  another client (127.0.0.1) runs a boto3 loop and `/healthz`: their p99
  stays under 100 ms. Each stalled connection is cut with the documented
  answer (408 mid-body; closed mid-handshake and mid-negotiation), or
  refused over its address's limit (429 in plain HTTP), and afterwards
  nothing leaks: open connections and runtime tasks back where they were,
  file descriptors within a few, resident memory within 10 % of the steady
  state after a first such burst.
* A request head trickled one byte a second is cut at the head deadline
  with 408; a kept-alive connection idle past the idle timeout is closed.
* 100,000 requests without credentials (pipelined) grow the audit trail by
  under 5 MB, into one record per address; every authenticated request
  sent meanwhile has its own record, and the trail verifies.

Capabilities: K8 audit, D3 NBD, O3 operations (limits).
"""

from __future__ import annotations

import json
import select
import os
import re
import socket
import threading
import time
from pathlib import Path

import pytest
import requests

from conftest import (
    REGION,
    atrest_client_cmd,
    audit_log_path,
    audit_records,
    free_port,
    make_tls_files,
    raw_request,
)

ATTACKERS = [f"127.0.0.{i}" for i in range(2, 10)]
STALLED = 10_000
PER_ADDRESS = 256
# Short deadlines, so that the test outlasts them.
DEADLINES = ("--header-timeout", "2", "--body-timeout", "2", "--tls-handshake-timeout", "2",
             "--nbd-negotiation-timeout", "2", "--idle-timeout", "3",
             "--max-connections-per-address", str(PER_ADDRESS))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def hwm_kib(pid: int) -> int:
    """Peak resident memory since the last `reset_hwm`."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def reset_hwm(pid: int):
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def metrics(port: int) -> dict[str, float]:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    out = {}
    for line in text.splitlines():
        if line.startswith("atrest_connections") or line.startswith("atrest_runtime"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def stall(port: int, payload: bytes, n: int = STALLED) -> list[socket.socket]:
    """Opens `n` connections at once, spread over ATTACKERS, each sending
    `payload` and then nothing."""
    socks = []
    for i in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((ATTACKERS[i % len(ATTACKERS)], 0))
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        socks.append(s)
    # Send each its payload as soon as it is connected.
    poller = select.poll()
    waiting = {s.fileno(): s for s in socks}
    for fd in waiting:
        poller.register(fd, select.POLLOUT)
    deadline = time.monotonic() + 20
    while waiting and time.monotonic() < deadline:
        for fd, ev in poller.poll(1000):
            s = waiting.pop(fd)
            poller.unregister(fd)
            if ev & select.POLLOUT and payload:
                try:
                    s.send(payload)
                except OSError:
                    pass  # refused and closed before the payload went
    return socks


def outcomes(socks: list[socket.socket], within: float = 10) -> dict[str, int]:
    """What stalled connections were told, counted: `408`, `429`, `closed`
    (without an HTTP answer), or `open` (still open `within` seconds after
    the call: held past every deadline). Closes them all."""
    got = {s: b"" for s in socks}
    counts: dict[str, int] = {}
    pending = list(socks)
    deadline = time.monotonic() + within
    while pending:
        still = []
        for s in pending:
            s.setblocking(False)
            done = False
            try:
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        done = True
                        break
                    got[s] += chunk
            except BlockingIOError:
                pass
            except OSError:
                done = True  # reset
            if done:
                m = re.match(rb"HTTP/1\.1 (\d{3}) ", got[s])
                key = m.group(1).decode() if m else "closed"
                counts[key] = counts.get(key, 0) + 1
                s.close()
            else:
                still.append(s)
        pending = still
        if pending and time.monotonic() > deadline:
            for s in pending:
                try:
                    s.getpeername()
                    key = "open"
                except OSError:
                    # Its connect never completed: a SYN the kernel's queue
                    # had no room for, still being retried.
                    key = "unconnected"
                counts[key] = counts.get(key, 0) + 1
                s.close()
            break
        time.sleep(0.1)
    return counts


class Legit:
    """A well-behaved client from 127.0.0.1: a boto3 Encrypt loop and
    `/healthz`, timing every call."""

    def __init__(self, server, healthz_url: str, verify=None):
        self.kms = server.client()
        self.key = self.kms.create_key()["KeyMetadata"]["KeyId"]
        self.healthz_url = healthz_url
        self.session = requests.Session()
        self.verify = verify if verify is not None else True
        self.times: list[float] = []
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.is_set():
            for call in (lambda: self.kms.encrypt(KeyId=self.key, Plaintext=b"legit"),
                         lambda: self.session.get(self.healthz_url, timeout=5, verify=self.verify)):
                t = time.monotonic()
                try:
                    r = call()
                    if isinstance(r, requests.Response) and r.status_code != 200:
                        self.errors.append(f"healthz {r.status_code}")
                except Exception as e:  # noqa: BLE001 - recorded and asserted on
                    self.errors.append(repr(e))
                self.times.append(time.monotonic() - t)
            time.sleep(0.005)

    def run_for(self, seconds: float):
        self.thread.start()
        time.sleep(seconds)
        self.stop.set()
        self.thread.join()

    def p99(self) -> float:
        t = sorted(self.times)
        return t[int(len(t) * 0.99)]


def baseline(server, metrics_port: int, port: int, payload: bytes) -> tuple[int, int, float]:
    """The server's steady state: file descriptors, resident memory and
    runtime tasks once a first burst of the same stalled connections has
    come and gone. (The first burst leaves the allocator's and the
    runtime's pools at the size a burst needs; what a leak would show is
    growth with every burst, so the second burst is measured against the
    first.)"""
    # Held past the server's deadlines (2 s), as the measured burst is, so
    # that the server reaches the same peak of connections in flight (a
    # burst closed at once by the client never does, and the allocator
    # then keeps more after the measured one than after this one).
    socks = stall(port, payload)
    time.sleep(2.5)
    for s in socks:
        s.close()
    pid = server.proc.pid
    deadline = time.monotonic() + 30
    while True:
        time.sleep(1)
        m = metrics(metrics_port)
        if sum(v for k, v in m.items() if k.startswith("atrest_connections_open")) <= 1:
            break
        assert time.monotonic() < deadline, m
    # Resident memory settles as the allocator gives freed pages back.
    rss, deadline = rss_kib(pid), time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(1)
        metrics(metrics_port)
        now = rss_kib(pid)
        if abs(now - rss) < rss * 0.01:
            break
        rss = now
    return open_fds(pid), rss_kib(pid), metrics(metrics_port)["atrest_runtime_tasks_alive"]


def assert_nothing_leaked(server, metrics_port: int, before: tuple[int, int, float], listener: str):
    pid = server.proc.pid
    fds0, rss0, tasks0 = before
    deadline = time.monotonic() + 30
    while True:
        m = metrics(metrics_port)
        open_now = m[f'atrest_connections_open{{listener="{listener}"}}']
        fds, rss, tasks = open_fds(pid), rss_kib(pid), m["atrest_runtime_tasks_alive"]
        # The metrics request's own connection is open while it is answered.
        settled = (open_now <= (1 if listener == "metrics" else 0) and fds <= fds0 + 4 and tasks <= tasks0 + 4
                   and rss <= rss0 * 1.10)
        if settled or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    print(f"{listener}: fds {fds0} -> {fds}, tasks {tasks0} -> {tasks}, rss {rss0} -> {rss} KiB")
    assert open_now <= (1 if listener == "metrics" else 0), m
    assert fds <= fds0 + 4, f"file descriptors: {fds0} before, {fds} after"
    assert tasks <= tasks0 + 4, f"runtime tasks: {tasks0} before, {tasks} after"
    assert rss <= rss0 * 1.10, f"resident memory: {rss0} KiB before, {rss} KiB after"


def check_legit(legit: Legit, what: str):
    print(f"{what}: {len(legit.times)} calls of the other client, p50 "
          f"{sorted(legit.times)[len(legit.times) // 2] * 1000:.1f} ms, p99 {legit.p99() * 1000:.1f} ms")
    assert not legit.errors, (what, legit.errors[:5])
    assert len(legit.times) > 50, (what, len(legit.times))
    assert legit.p99() < 0.100, f"{what}: p99 {legit.p99() * 1000:.1f} ms over {len(legit.times)} calls"


def test_stalled_bodies_do_not_stop_the_api(make_server):
    mport = free_port()
    server = make_server(args=DEADLINES + ("--metrics-listen", f"127.0.0.1:{mport}")).start()
    legit = Legit(server, server.url + "/healthz")
    head = (b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-amz-json-1.1\r\n"
            b"X-Amz-Target: TrentService.Encrypt\r\nContent-Length: 60000\r\n\r\n{")
    before = baseline(server, mport, server.port, head)
    reset_hwm(server.proc.pid)
    t0 = time.monotonic()
    socks = stall(server.port, head)
    peak_open = metrics(mport)['atrest_connections_open{listener="http"}']
    # Memory holds to the bound of docs/design.md, section 5A: per plain
    # HTTP connection mid-request, a 64 KiB head buffer, a 64 KiB body and
    # 8 KiB of state (here the bodies are one byte: far less).
    peak = hwm_kib(server.proc.pid) - before[1]
    print(f"peak: {peak} KiB above the steady state with {peak_open:.0f} connections open")
    assert peak <= peak_open * 136 + 20 * 1024, (peak, peak_open)
    # Held past the deadlines, while the other client works.
    legit.run_for(max(3.5, 6 - (time.monotonic() - t0)))
    counts = outcomes(socks)
    check_legit(legit, "stalled bodies")
    assert peak_open <= PER_ADDRESS * len(ATTACKERS) + 2, peak_open  # (+ the other client's)
    # Admitted ones were cut at the body deadline with 408; the rest were
    # refused with 429 (or closed, once too many refusals linger).
    assert set(counts) <= {"408", "429", "closed", "unconnected"}, counts
    assert counts.get("unconnected", 0) < STALLED // 100, counts
    assert counts.get("408", 0) >= PER_ADDRESS * len(ATTACKERS), counts
    assert counts.get("429", 0) > 0, counts
    m = metrics(mport)
    assert m['atrest_connections_refused_total{listener="http",reason="per_address"}'] > 0, m
    # The 408 is the documented error shape.
    s = stall(server.port, head, n=1)[0]
    s.settimeout(10)
    answer = s.recv(65536)
    s.close()
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert body["__type"] == "RequestTimeoutException", body
    assert_nothing_leaked(server, mport, before, "http")


def test_stalled_tls_handshakes_do_not_stop_the_api(make_server):
    mport = free_port()
    tls = make_tls_files(make_server.workdir)
    server = make_server(tls=tls, args=DEADLINES + ("--metrics-listen", f"127.0.0.1:{mport}")).start()
    legit = Legit(server, server.url + "/healthz", verify=str(tls["ca"]))
    # A TLS record header announcing a 512-byte ClientHello, and 3 of its bytes.
    partial_hello = bytes([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01])
    before = baseline(server, mport, server.port, partial_hello)
    t0 = time.monotonic()
    socks = stall(server.port, partial_hello)
    legit.run_for(max(3.5, 6 - (time.monotonic() - t0)))
    counts = outcomes(socks)
    check_legit(legit, "stalled TLS handshakes")
    # Over TLS nothing can be said: every one is closed (cut at the
    # handshake deadline, or refused over its address's limit).
    assert set(counts) <= {"closed", "unconnected"}, counts
    assert counts.get("unconnected", 0) < STALLED // 100, counts
    assert_nothing_leaked(server, mport, before, "http")


def test_stalled_nbd_negotiations_do_not_stop_the_api(make_server):
    mport, nport = free_port(), free_port()
    server = make_server(args=DEADLINES + (
        "--metrics-listen", f"127.0.0.1:{mport}",
        "--nbd-listen", f"127.0.0.1:{nport}",
        "--nbd-plaintext-principal", "arn:aws:iam::000000000000:root")).start()
    legit = Legit(server, server.url + "/healthz")
    # Each reads nothing and sends half of its client flags.
    before = baseline(server, mport, nport, b"\x00\x00")
    t0 = time.monotonic()
    socks = stall(nport, b"\x00\x00")
    legit.run_for(max(3.5, 6 - (time.monotonic() - t0)))
    counts = outcomes(socks)
    check_legit(legit, "stalled NBD negotiations")
    assert set(counts) <= {"closed", "unconnected"}, counts
    assert counts.get("unconnected", 0) < STALLED // 100, counts
    m = metrics(mport)
    assert m['atrest_connections_refused_total{listener="nbd",reason="per_address"}'] > 0, m
    # NBD still negotiates for a client that does not stall.
    s = socket.create_connection(("127.0.0.1", nport), timeout=5)
    greeting = s.recv(18)
    s.close()
    assert greeting[:8] == b"NBDMAGIC", greeting
    assert_nothing_leaked(server, mport, before, "nbd")


def test_a_full_listener_answers_503_and_recovers(make_server):
    server = make_server(args=("--max-connections", "40", "--max-connections-per-address", "1000",
                               "--header-timeout", "30")).start()
    held = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(40)]
    time.sleep(0.5)
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    answer = b""
    while chunk := s.recv(65536):
        answer += chunk
    s.close()
    assert answer.startswith(b"HTTP/1.1 503 "), answer
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert body["__type"] == body["code"] == "ServiceUnavailableException" and body["message"], body
    assert b"retry-after: 1\r\n" in answer.lower(), answer
    for h in held:
        h.close()
    time.sleep(0.5)
    assert requests.get(server.url + "/healthz", timeout=5).status_code == 200
    assert server.client().list_keys()["Keys"] is not None


def test_a_trickled_head_and_an_idle_connection_are_cut(make_server):
    server = make_server(args=DEADLINES).start()
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    t0 = time.monotonic()
    answer = b""
    for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\n":
        s.sendall(bytes([b]))
        readable, _, _ = select.select([s], [], [], 0.5)
        if readable or time.monotonic() - t0 > 6:
            break
    s.settimeout(5)
    try:
        answer = s.recv(65536)
    except OSError:
        pass
    s.close()
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert 1.5 < time.monotonic() - t0 < 6, time.monotonic() - t0
    # A kept-alive connection idle past the idle timeout is closed quietly.
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    first = s.recv(65536)
    assert first.startswith(b"HTTP/1.1 200 "), first
    t0 = time.monotonic()
    assert s.recv(65536) == b""
    assert 2.5 < time.monotonic() - t0 < 6, time.monotonic() - t0
    s.close()


def test_unauthenticated_floods_do_not_bloat_the_audit_trail(make_server):
    server = make_server(args=("--audit-refusal-interval", "3600")).start()
    log_dir = audit_log_path(server).parent

    def trail_bytes() -> int:
        return sum(f.stat().st_size for f in log_dir.iterdir() if f.is_file())

    kms = server.client()
    kid = kms.create_key()["KeyMetadata"]["KeyId"]
    time.sleep(0.5)
    size0 = trail_bytes()
    n0 = len(audit_records(audit_log_path(server)))
    total, conns = 100_000, 4
    per_conn = total // conns
    request = b"GET /v1/does-not-exist HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    answered = [0] * conns
    ids: list[str] = []

    def flood(i: int):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=60)
        sender = threading.Thread(target=lambda: s.sendall(request * per_conn))
        sender.start()
        pat = b"HTTP/1.1 404 "
        carry = b""
        while answered[i] < per_conn:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            data = carry + chunk
            answered[i] += data.count(pat)
            carry = data[-(len(pat) - 1):]
        sender.join()
        s.close()

    threads = [threading.Thread(target=flood, args=(i,)) for i in range(conns)]
    for t in threads:
        t.start()
    # Authenticated requests meanwhile: each keeps its own record.
    for _ in range(100):
        ids.append(kms.encrypt(KeyId=kid, Plaintext=b"x")["ResponseMetadata"]["RequestId"])
    bad = raw_request(server, b"{}", creds=(server.credentials()[0], "x" * 40))
    assert bad.status_code == 400
    for t in threads:
        t.join()
    assert sum(answered) == total, answered
    assert server.stop() == 0, server.last_output()
    growth = trail_bytes() - size0
    assert growth < 5 * 1024 * 1024, f"the trail grew by {growth} bytes"
    records = audit_records(audit_log_path(server))[n0:]
    by_id = {r["request_id"] for r in records}
    assert all(i in by_id for i in ids), "an authenticated request has no record"
    agg = [r for r in records if r["operation"] == "unauthenticated"]
    assert len(agg) == 1 and agg[0]["source"] == "127.0.0.1", agg
    assert agg[0]["count"] == total + 1, agg
    assert agg[0]["kinds"] == {"NotFoundException": total, "InvalidSignatureException": 1}, agg
    assert len(records) == len(ids) + 1, len(records)
    server.start()
    p = atrest_client_cmd(server, "audit", "verify")
    assert p.returncode == 0 and "audit trail verified" in p.stdout, p.stdout
