#!/usr/bin/env python3
"""The web console's pages on a large account and a large trail (issue 23;
docs/benchmarks.md, "The web console"):

* the keys list of an account with 10,000 keys (each with an alias): the
  first page, a page deep in the list (by its marker) and a search by alias;
* the audit page on a 1 GiB trail (`audit-fill`): the newest page, a
  filtered search and the next older page; the metering page (its charts
  over time count the last hour's records of that trail).

Server time is the page's own `Server-Timing` (from the request's arrival in
the console to its answer, every API call it makes included). The peer, in
the same run: the API calls the page makes, made by boto3 (ListKeys,
DescribeKey and ListAliases per key of the page) or by a signed REST client
(`GET /v1/audit`), timed on the client; the ratio is console / API.

    cargo build --release -p atrest -p atrest-bench
    target/venv/bin/python scripts/bench-console.py [--keys 10000] [--trail 1G] [--runs 20]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "interop"))
os.environ.setdefault("ATREST_BIN", str(REPO / "target" / "release" / "atrest"))

import requests  # noqa: E402

import conftest  # noqa: E402
from conftest import Server, read_credentials, rest_call  # noqa: E402


def sign_in(server: Server) -> requests.Session:
    akid, secret = read_credentials(server.credentials_file)
    s = requests.Session()
    page = s.get(f"{server.url}/console/sign-in")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    r = s.post(f"{server.url}/console/sign-in", data={
        "csrf": token, "access_key_id": akid, "secret_access_key": secret, "next": "/console/keys"},
        allow_redirects=False)
    assert r.status_code == 303, r.text
    return s


def server_ms(resp: requests.Response, search: bool = False) -> float:
    assert resp.status_code == 200, (resp.status_code, resp.text[:300])
    assert 'role="alert"' not in resp.text, resp.text[resp.text.find('role="alert"'):][:300]
    if search:
        assert "bench-0999" in resp.text and "/console/keys/" in resp.text, "the search found its key"
    m = re.search(r"dur=([0-9.]+)", resp.headers["server-timing"])
    return float(m.group(1))


def timed(fn, runs: int) -> tuple[float, float]:
    xs = []
    for _ in range(runs):
        xs.append(fn())
    xs.sort()
    return statistics.median(xs), xs[min(len(xs) - 1, int(len(xs) * 0.99))]


def client_ms(fn) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1000


def row(name: str, console: tuple[float, float], api: tuple[float, float] | None) -> str:
    ratio = f"{console[0] / api[0]:.2f}" if api else "-"
    api_s = f"{api[0]:.1f} / {api[1]:.1f}" if api else "-"
    return f"| {name} | {console[0]:.1f} / {console[1]:.1f} | {api_s} | {ratio} |"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--trail", default="1G")
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    fill_bin = Path(os.environ["ATREST_BIN"]).parent / "audit-fill"
    lines = ["| Page | console p50 / p99 ms (server) | API calls p50 / p99 ms (client) | ratio |",
             "|---|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="bench-console-") as tmp:
        server = Server(Path(tmp), "console")
        server.start()
        try:
            kms = server.client()
            t = time.monotonic()

            def make(i: int) -> str:
                k = kms.create_key(Description=f"bench key {i}")["KeyMetadata"]["KeyId"]
                kms.create_alias(AliasName=f"alias/bench-{i:05d}", TargetKeyId=k)
                return k

            with concurrent.futures.ThreadPoolExecutor(8) as ex:
                ids = list(ex.map(make, range(args.keys)))
            print(f"{args.keys} keys with aliases in {time.monotonic() - t:.0f} s", flush=True)
            s = sign_in(server)
            # A marker deep in the list: ListKeys' own, after 9,000 keys.
            deep = kms.list_keys(Limit=1000)
            for _ in range(max(0, args.keys // 1000 - 2)):
                deep = kms.list_keys(Limit=1000, Marker=deep["NextMarker"])
            marker = deep.get("NextMarker", "")

            def api_page(**kw):
                page = kms.list_keys(Limit=25, **kw)
                for k in page["Keys"]:
                    kms.describe_key(KeyId=k["KeyId"])
                    kms.list_aliases(KeyId=k["KeyId"])

            first = timed(lambda: server_ms(s.get(f"{server.url}/console/keys")), args.runs)
            first_api = timed(lambda: client_ms(api_page), args.runs)
            lines.append(row(f"keys, first page ({args.keys} keys)", first, first_api))
            if marker:
                deep_c = timed(lambda: server_ms(s.get(f"{server.url}/console/keys", params={"marker": marker})),
                               args.runs)
                deep_api = timed(lambda: client_ms(lambda: api_page(Marker=marker)), args.runs)
                lines.append(row(f"keys, a page after {(args.keys // 1000 - 1) * 1000}", deep_c, deep_api))
            search = timed(lambda: server_ms(s.get(f"{server.url}/console/keys", params={"q": "bench-0999"}), search=True),
                           max(3, args.runs // 4))
            lines.append(row("keys, search by alias (every alias and key listed)", search, None))
        finally:
            server.stop()
        # The trail: grown to the size asked, then the server again.
        t = time.monotonic()
        p = subprocess.run([str(fill_bin), "--data-dir", str(server.data_dir), "--bytes", args.trail],
                           capture_output=True, text=True, timeout=1800)
        assert p.returncode == 0, p.stderr
        print(f"audit-fill {args.trail} in {time.monotonic() - t:.0f} s", flush=True)
        server.start()
        try:
            s = sign_in(server)
            newest = timed(lambda: server_ms(s.get(f"{server.url}/console/audit")), args.runs)
            newest_api = timed(lambda: client_ms(lambda: rest_call(server, "GET", "/v1/audit?limit=50")),
                               args.runs)
            lines.append(row(f"audit, newest 50 ({args.trail} trail)", newest, newest_api))
            filt = timed(lambda: server_ms(s.get(f"{server.url}/console/audit",
                                                 params={"operation": "CreateKey"})), args.runs)
            filt_api = timed(lambda: client_ms(
                lambda: rest_call(server, "GET", "/v1/audit?limit=50&operation=CreateKey")), args.runs)
            lines.append(row("audit, operation = CreateKey", filt, filt_api))
            meter = timed(lambda: server_ms(s.get(f"{server.url}/console/metering")), max(3, args.runs // 4))
            lines.append(row("metering, the last hour's charts (audit trail)", meter, None))
            page = s.get(f"{server.url}/console/audit")
            nxt = re.search(r'href="(/console/audit\?[^"]*cursor=[^"]+)"', page.text)
            if nxt:
                url = server.url + nxt.group(1).replace("&amp;", "&")
                older = timed(lambda: server_ms(s.get(url)), args.runs)
                lines.append(row("audit, the next older page", older, None))
        finally:
            server.stop()
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
