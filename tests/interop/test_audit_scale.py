"""The audit trail at scale, in segments (issue 19).

* A 1 GiB trail: a server answers a few real requests and stops;
  `audit-fill` (the bench crate's tool, beside ATREST_BIN) grows its trail
  to 1 GiB of realistic, correctly chained records in 64 MiB segments; the
  server starts again on it. Then 8 parallel signed `GET /v1/audit?limit=1`
  (by the admin, by an account's root, by a user with no policy, who is
  refused) are each answered in under a second, the server's peak resident
  memory stays within 100 MB of its idle size, and each answer is the true
  newest record the caller may see. A query for an account whose only
  records lie before the whole gigabyte (a scan of every segment) stays
  within the same memory.
* A tiny segment size (`--audit-segment-bytes 4096`): the trail is sealed
  into many segments; a query by time across them returns exactly what a
  scan of the files finds; paging with `before`/`next_before` yields every
  record exactly once (admin and account root); `atrest audit --limit N`
  returns the N most recent across pages; `atrest audit verify` passes
  across segments, online and offline, and offline detects an edited and a
  deleted sealed segment; the server restarts on the sealed trail.

Capabilities: K8 audit, O1 API.
"""

from __future__ import annotations

import json
import shutil
import urllib.parse
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import (
    ATREST_BIN,
    atrest_client_cmd,
    atrest_run,
    new_account,
    new_user,
    rest_call,
)

AUDIT_FILL = ATREST_BIN.parent / "audit-fill"
A = "111122223333"
B = "999988887777"
GIB = 1 << 30
MB = 1_000_000


def audit_dir(server) -> Path:
    return server.data_dir / "audit"


def segment_files(server) -> list[Path]:
    """The sealed segments, in seq order (their names sort so)."""
    return sorted(p for p in audit_dir(server).glob("audit-*.log"))


def file_records(path: Path) -> list[dict]:
    """The whole records of one segment file (a running server's active file
    ends in preallocated zeros, and maybe a record being written)."""
    data = path.read_bytes() if path.exists() else b""
    end = data.rfind(b"\n") + 1
    return [json.loads(line) for line in data[:end].split(b"\n")[:-1]]


def all_records(server) -> list[dict]:
    """Every record of the trail, oldest first: sealed segments, then
    audit.log."""
    out = []
    for p in segment_files(server) + [audit_dir(server) / "audit.log"]:
        out.extend(file_records(p))
    return out


def tail_records(server, at_least: int = 200) -> list[dict]:
    """The newest records (those of audit.log, and of the last sealed
    segment too when audit.log holds few)."""
    out = file_records(audit_dir(server) / "audit.log")
    segs = segment_files(server)
    if len(out) < at_least and segs:
        out = file_records(segs[-1]) + out
    return out


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def fill(server, size: str, *args: str) -> float:
    if not AUDIT_FILL.exists():
        pytest.fail(f"{AUDIT_FILL} not found; build it (cargo build -p atrest-bench)")
    t = time.monotonic()
    p = subprocess.run(
        [str(AUDIT_FILL), "--data-dir", str(server.data_dir), "--bytes", size, *args],
        capture_output=True, text=True, timeout=600,
    )
    assert p.returncode == 0, p.stderr
    print(p.stdout.strip())
    return time.monotonic() - t


def timed_query(server, query: str, creds=None):
    t = time.monotonic()
    r = rest_call(server, "GET", f"/v1/audit?{query}", creds=creds)
    return time.monotonic() - t, r


def check_newest(answer: dict, records: list[dict], burst_after: int, account: str | None):
    """`answer` (a record) is the newest the caller could see when it was
    computed: every record it may see that is newer is one of the burst's
    own queries (appended after their answers)."""
    visible = [r for r in records if account is None or r.get("account") == account]
    newer = [r for r in visible if r["seq"] > answer["seq"]]
    assert all(r["seq"] > burst_after and r["operation"] == "audit:QueryAudit" for r in newer), \
        (answer["seq"], [(r["seq"], r["operation"]) for r in newer][:5])
    mine = [r for r in visible if r["seq"] == answer["seq"]]
    assert mine == [answer]


def test_queries_on_a_1_gib_trail_are_fast_and_small(make_server):
    srv = make_server().start()
    root_a = new_account(srv, A)
    root_b = new_account(srv, B)
    nobody = new_user(srv, A, "nobody")  # no policy: may not query
    ka = srv.client(creds=root_a)
    key = ka.create_key(Description="scale")["KeyMetadata"]["KeyId"]
    ka.encrypt(KeyId=key, Plaintext=b"x")
    srv.client(creds=root_b).create_key(Description="b")
    srv.client().list_keys()
    srv.stop()
    b_newest = [r for r in all_records(srv) if r.get("account") == B][-1]

    # -- 1 GiB of records of account A and another, none of B --------------
    fill_s = fill(srv, "1G", "--account", A, "--account", "444455556666")
    sizes = [p.stat().st_size for p in audit_dir(srv).glob("audit*.log")]
    assert sum(sizes) >= GIB, sizes
    assert len(segment_files(srv)) >= 15
    assert fill_s < 60, f"audit-fill took {fill_s:.1f}s"

    t = time.monotonic()
    srv.start(timeout=120)
    start_s = time.monotonic() - t
    pid = srv.proc.pid
    time.sleep(1)
    idle_kb = status_kb(pid, "VmRSS")
    before = tail_records(srv)[-1]["seq"]
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset the peak (VmHWM)

    # -- 8 at once: the admin, A's root, a user without a policy ----------
    callers = [None] * 4 + [root_a] * 2 + [nobody] * 2
    with ThreadPoolExecutor(len(callers)) as ex:
        results = list(ex.map(lambda c: timed_query(srv, "limit=1", creds=c), callers))
    peak_kb = status_kb(pid, "VmHWM")
    lat = [round(s, 3) for s, _ in results]
    for (s, r), c in zip(results, callers):
        assert s < 1.0, f"a query took {s:.2f}s: {lat}"
        if c is nobody:
            assert r.status_code == 403 and r.json()["code"] == "AccessDeniedException", r.text
        else:
            assert r.status_code == 200, r.text
            body = r.json()
            assert len(body["records"]) == 1, body
            assert body["next_before"] == body["records"][0]["seq"], body
    grown_mb = (peak_kb - idle_kb) * 1024 / MB
    assert grown_mb < 100, f"peak {peak_kb} kB, idle {idle_kb} kB"

    # -- the worst case: B's records all lie before the gigabyte ----------
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    idle2_kb = status_kb(pid, "VmRSS")
    with ThreadPoolExecutor(4) as ex:
        scans = list(ex.map(lambda c: timed_query(srv, "limit=1", creds=c), [root_b] * 4))
    scan_peak_kb = status_kb(pid, "VmHWM")
    scan_lat = [round(s, 3) for s, _ in scans]
    for s, r in scans:
        assert r.status_code == 200, r.text
        got = r.json()["records"]
        assert len(got) == 1
        # The newest of B's records then: its last before the fill, or one
        # of these scans' own records.
        assert got[0] == b_newest or (got[0]["operation"] == "audit:QueryAudit" and got[0]["seq"] > before)
        assert s < 10, scan_lat
    scan_grown_mb = (scan_peak_kb - idle2_kb) * 1024 / MB
    assert scan_grown_mb < 100, f"peak {scan_peak_kb} kB, idle {idle2_kb} kB"
    srv.stop()

    records = tail_records(srv, at_least=400)
    for (_, r), c in zip(results, callers):
        if c is not nobody:
            check_newest(r.json()["records"][0], records, before, None if c is None else A)
    print(f"\naudit scale: fill 1 GiB {fill_s:.1f}s; restart on it {start_s:.1f}s; idle {idle_kb / 1024:.1f} MiB; "
          f"8 parallel limit=1 latencies {lat}s, peak +{grown_mb:.1f} MB; "
          f"4 parallel full scans {scan_lat}s, peak +{scan_grown_mb:.1f} MB")


def audit_copy(workdir: Path, srv, name: str) -> Path:
    """A data-dir-shaped copy (root.json and the audit dir)."""
    d = workdir / name
    d.mkdir()
    shutil.copy2(srv.data_dir / "root.json", d / "root.json")
    shutil.copytree(srv.data_dir / "audit", d / "audit")
    return d


def verify_offline(data_dir: Path, root_key_file: Path) -> subprocess.CompletedProcess:
    return atrest_run("audit", "verify", "--offline", "--data-dir", str(data_dir),
                      "--root-key-file", str(root_key_file), check=False)


def test_tiny_segments_query_page_and_verify(make_server):
    srv = make_server().start("--audit-segment-bytes", "4096")
    root_a = new_account(srv, A)
    ka, kadmin = srv.client(creds=root_a), srv.client()
    key_a = ka.create_key()["KeyMetadata"]["KeyId"]
    key_admin = kadmin.create_key()["KeyMetadata"]["KeyId"]
    for i in range(120):
        ka.encrypt(KeyId=key_a, Plaintext=b"a")
        kadmin.describe_key(KeyId=key_admin)
        if i % 10 == 0:
            time.sleep(0.01)
    time.sleep(0.1)

    # -- sealed into many segments, whose names say what they hold --------
    segs = segment_files(srv)
    assert len(segs) >= 10, segs
    recs = all_records(srv)
    assert [r["seq"] for r in recs] == list(range(1, len(recs) + 1))
    for p in segs:
        held = file_records(p)
        first, last = (int(x) for x in p.name.split("-")[1:3])
        assert (held[0]["seq"], held[-1]["seq"]) == (first, last), p.name
        assert p.stat().st_size >= 4096

    # -- a time window across segments: exactly what the files hold --------
    lo, hi = recs[40]["time"], recs[200]["time"]
    want = [r["seq"] for r in recs if lo <= r["time"] < hi]
    window = urllib.parse.urlencode({"since": lo, "until": hi})
    r = rest_call(srv, "GET", f"/v1/audit?{window}")
    assert r.status_code == 200, r.text
    assert [x["seq"] for x in r.json()["records"]] == want
    assert "next_before" not in r.json()
    p = atrest_client_cmd(srv, "audit", "--since", lo, "--until", hi, "--limit", "1000")
    assert [x["seq"] for x in json.loads(p.stdout)["records"]] == want
    # A's root sees A's records of the window, and may not ask for another
    # account's.
    r = rest_call(srv, "GET", f"/v1/audit?{window}", creds=root_a)
    assert [x["seq"] for x in r.json()["records"]] == [
        x["seq"] for x in recs if lo <= x["time"] < hi and x.get("account") == A]
    r = rest_call(srv, "GET", "/v1/audit?account=444455556666", creds=root_a)
    assert r.status_code == 403 and r.json()["code"] == "AccessDeniedException", r.text

    # -- paging: every record exactly once ------------------------------
    for creds, page in [(None, 7), (root_a, 5)]:
        seen, before, newest = [], None, None
        while True:
            q = f"limit={page}" + (f"&before={before}" if before else "")
            r = rest_call(srv, "GET", f"/v1/audit?{q}", creds=creds)
            assert r.status_code == 200, r.text
            body = r.json()
            got = [x["seq"] for x in body["records"]]
            assert got == sorted(got) and len(got) <= page
            if newest is None:
                newest = got[-1]
            seen = got + seen
            if "next_before" not in body:
                break
            assert body["next_before"] == got[0]
            before = body["next_before"]
        now = all_records(srv)
        want = [x["seq"] for x in now if x["seq"] <= newest and (creds is None or x.get("account") == A)]
        assert seen == want, (creds is None, len(seen), len(want))

    # -- atrest audit --limit N: the N most recent (test_audit.py pages
    # through more than 10,000) ----------------------------------------
    last = all_records(srv)[-1]["seq"]
    out = json.loads(atrest_client_cmd(srv, "audit", "--limit", "2500").stdout)["records"]
    assert [x["seq"] for x in out] == list(range(1, last + 1))
    out = [x["seq"] for x in json.loads(atrest_client_cmd(srv, "audit", "--limit", "100").stdout)["records"]]
    assert out == list(range(last + 2 - 100, last + 2))

    # -- verify across segments --------------------------------------------
    p = atrest_client_cmd(srv, "audit", "verify")
    assert p.returncode == 0 and "audit trail verified" in p.stdout, (p.stdout, p.stderr)
    srv.stop()
    total = len(all_records(srv))
    p = verify_offline(srv.data_dir, srv.root_key_file)
    assert p.returncode == 0 and f"audit trail verified: {total} records" in p.stdout, (p.stdout, p.stderr)

    segs = segment_files(srv)
    mid = segs[len(segs) // 2]
    mid_recs = file_records(mid)
    # An edited record in a sealed segment.
    d = audit_copy(make_server.workdir, srv, "edited")
    lines = (d / "audit" / mid.name).read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b'"Success"', b'"Failure"', 1)
    (d / "audit" / mid.name).write_bytes(b"\n".join(lines))
    p = verify_offline(d, srv.root_key_file)
    bad = mid_recs[2]["seq"]
    assert p.returncode != 0 and f"record {bad} is bad" in p.stderr and "bad MAC" in p.stderr, p.stderr
    # A deleted sealed segment.
    d = audit_copy(make_server.workdir, srv, "deleted")
    (d / "audit" / mid.name).unlink()
    p = verify_offline(d, srv.root_key_file)
    first = mid_recs[0]["seq"]
    assert p.returncode != 0 and f"record {first} is bad" in p.stderr and "missing" in p.stderr, p.stderr
    # The unmodified copy verifies.
    d = audit_copy(make_server.workdir, srv, "intact")
    assert verify_offline(d, srv.root_key_file).returncode == 0

    # -- the server restarts on the sealed trail and carries on ----------
    srv.start("--audit-segment-bytes", "4096")
    srv.client().describe_key(KeyId=key_admin)
    out = json.loads(atrest_client_cmd(srv, "audit", "--limit", "3").stdout)["records"]
    assert [x["seq"] for x in out] == [total - 1, total, total + 1]
    assert out[-1]["operation"] == "DescribeKey"
    p = atrest_client_cmd(srv, "audit", "verify")
    assert p.returncode == 0 and "audit trail verified" in p.stdout, (p.stdout, p.stderr)
    usage = json.loads(atrest_client_cmd(srv, "metering", "--account", A).stdout)["usage"]
    enc = [u for u in usage if u["operation"] == "Encrypt"]
    assert enc and enc[0]["success"] == 120
