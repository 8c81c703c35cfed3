"""Shared fixtures and helpers for atrest's third-party interop suite.

Every test drives a real `atrest serve` process (found through the env
variable ATREST_BIN, by default <repo>/target/debug/atrest) with boto3, the
aws CLI (v1, the `aws` script beside this Python's executable) or raw
SigV4-signed HTTP. Each server gets a free loopback port and a private temp
dir; both are cleaned up at teardown whatever the test's outcome. The real
~/.aws is never read: AWS_* variables are scrubbed and AWS_CONFIG_FILE /
AWS_SHARED_CREDENTIALS_FILE point at empty files unless a helper says
otherwise.
"""

from __future__ import annotations

import base64
import configparser
import datetime
import hashlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import boto3
import pytest
import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

REPO = Path(__file__).resolve().parents[2]
ATREST_BIN = Path(os.environ.get("ATREST_BIN") or REPO / "target" / "debug" / "atrest")
# The aws CLI of the environment running the tests (the venv's bin dir).
AWS_CLI = Path(sys.executable).parent / "aws"
REGION = "us-east-1"

# Variables that could make a client or the server read something other than
# what a test sets up.
_SCRUB_PREFIXES = ("AWS_", "ATREST_", "BOTO_")
_SCRUB_NAMES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")

_EMPTY_AWS_FILE: Path | None = None


def _scrubbed(env: dict[str, str]) -> dict[str, str]:
    out = {
        k: v
        for k, v in env.items()
        if not k.startswith(_SCRUB_PREFIXES) and k not in _SCRUB_NAMES
    }
    out["NO_PROXY"] = out["no_proxy"] = "127.0.0.1,localhost"
    if _EMPTY_AWS_FILE is not None:
        out["AWS_CONFIG_FILE"] = str(_EMPTY_AWS_FILE)
        out["AWS_SHARED_CREDENTIALS_FILE"] = str(_EMPTY_AWS_FILE)
    out["AWS_EC2_METADATA_DISABLED"] = "true"
    return out


@pytest.fixture(scope="session", autouse=True)
def _isolated_aws_environment():
    """Scrubs AWS_*/ATREST_* from this process for the whole session, so
    in-process boto3 never sees the real ~/.aws or ambient credentials."""
    global _EMPTY_AWS_FILE
    saved = dict(os.environ)
    tmp = Path(tempfile.mkdtemp(prefix="atrest-interop-aws-"))
    empty = tmp / "empty"
    empty.write_text("")
    _EMPTY_AWS_FILE = empty
    clean = _scrubbed(saved)
    os.environ.clear()
    os.environ.update(clean)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
        _EMPTY_AWS_FILE = None
        shutil.rmtree(tmp, ignore_errors=True)


def subprocess_env(**extra: str) -> dict[str, str]:
    """A clean environment for a child process, plus `extra`."""
    env = _scrubbed(dict(os.environ))
    # The CLI prints tables for people by default; the tests read its JSON.
    env["ATREST_OUTPUT"] = "json"
    env.update(extra)
    return env


def free_port() -> int:
    """A currently free loopback port (bind port 0 and read it back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_credentials(path: Path, profile: str = "default") -> tuple[str, str]:
    """(access key id, secret) from an AWS shared-credentials file."""
    cp = configparser.ConfigParser()
    assert cp.read(path), f"cannot read credentials file {path}"
    sec = cp[profile]
    return sec["aws_access_key_id"].strip(), sec["aws_secret_access_key"].strip()


def write_credentials(path: Path, akid: str, secret: str) -> Path:
    path.write_text(f"[default]\naws_access_key_id = {akid}\naws_secret_access_key = {secret}\n")
    path.chmod(0o600)
    return path


class ServerExited(RuntimeError):
    """The server process ended before it became ready."""


class Server:
    """One `atrest serve` process over one data dir (restartable)."""

    def __init__(
        self,
        workdir: Path,
        name: str,
        regions: tuple[str, ...] = (REGION,),
        tls: dict[str, Path] | None = None,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ):
        self.workdir = workdir
        self.name = name
        self.data_dir = workdir / name
        self.regions = list(regions)
        self.tls = tls
        self.base_args = list(args)
        self.base_env = dict(env or {})
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.runs = 0
        self.log_paths: list[Path] = []

    # -- paths ---------------------------------------------------------
    @property
    def root_key_file(self) -> Path:
        """The default root key file: a sibling of the data dir."""
        return self.data_dir.with_name(self.data_dir.name + ".root.key")

    @property
    def credentials_file(self) -> Path:
        """The default admin credentials file: a sibling of the data dir
        (the data dir holds no plaintext secret). A server of an earlier
        release kept them in the data dir; that place counts while it is the
        only one (this release moves them out at its first start)."""
        path = self.data_dir.with_name(self.data_dir.name + ".admin-credentials")
        legacy = self.data_dir / "admin-credentials"
        if not path.exists() and legacy.exists():
            return legacy
        return path

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def url(self) -> str:
        assert self.port is not None, "server not started"
        return f"{self.scheme}://127.0.0.1:{self.port}"

    # -- process -------------------------------------------------------
    def _spawn(self, extra_args, extra_env) -> subprocess.Popen:
        if not ATREST_BIN.exists():
            pytest.fail(f"atrest binary not found at {ATREST_BIN}; build it (cargo build -p atrest) or set ATREST_BIN")
        self.port = free_port()
        self.runs += 1
        out_path = self.workdir / f"{self.name}.run{self.runs}.stdout.log"
        err_path = self.workdir / f"{self.name}.run{self.runs}.stderr.log"
        self.log_paths += [out_path, err_path]
        cmd = [str(ATREST_BIN), "serve", "--listen", f"127.0.0.1:{self.port}", "--data-dir", str(self.data_dir)]
        for r in self.regions:
            cmd += ["--region", r]
        if self.tls:
            cmd += ["--tls-cert", str(self.tls["cert"]), "--tls-key", str(self.tls["key"])]
        cmd += self.base_args + list(extra_args)
        env = subprocess_env(**self.base_env)
        env.update(extra_env or {})
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env)

    def start(self, *extra_args: str, env: dict[str, str] | None = None, timeout: float = 30) -> "Server":
        assert self.proc is None or self.proc.poll() is not None, "already running"
        for attempt in range(3):
            self.proc = self._spawn(extra_args, env)
            try:
                self.wait_ready(timeout)
                return self
            except ServerExited:
                # The free port was taken between our probe and the bind: retry.
                if attempt < 2 and "Address already in use" in self.last_output():
                    continue
                raise
        raise AssertionError("unreachable")

    def run_until_exit(self, *extra_args: str, env: dict[str, str] | None = None, timeout: float = 30) -> tuple[int, str]:
        """Starts the server expecting it to refuse to start; returns its exit
        code and its stderr+stdout. Fails the test if it is still running."""
        proc = self._spawn(extra_args, env)
        self.proc = proc
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail("atrest serve was expected to exit but kept running")
        return rc, self.last_output()

    def last_output(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.log_paths[-2:][::-1])

    def health(self) -> tuple[int, str]:
        ctx = None
        if self.tls:
            ctx = ssl.create_default_context(cafile=str(self.tls["ca"]))
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ctx))
        with opener.open(self.url + "/healthz", timeout=2) as r:
            return r.status, r.read().decode()

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerExited(f"atrest serve exited with {self.proc.returncode}:\n{self.last_output()}")
            try:
                status, body = self.health()
                # Ready: answering, and its banner (printed once start-up
                # returns, a moment after the listener answers) is out.
                if status == 200 and body.strip() == "ok" and self._banner_out():
                    return
            except (OSError, urllib.error.URLError) as e:  # not listening yet
                last = e
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"atrest serve not ready after {timeout}s ({last}):\n{self.last_output()}")

    def _banner_out(self) -> bool:
        out = self.log_paths[-2] if len(self.log_paths) >= 2 else None
        return out is not None and out.exists() and b" listening on " in out.read_bytes()

    def stop(self, timeout: float = 15) -> int | None:
        """SIGTERM, wait, SIGKILL if needed. Returns the exit code."""
        p = self.proc
        if p is None:
            return None
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=timeout)
        return p.returncode

    @property
    def run_base(self) -> Path:
        """Where this server mounts disks and runs databases while it runs
        (`/run/atrest/<first 8 bytes of SHA-256 of the data dir, hex>`)."""
        real = os.path.realpath(self.data_dir)
        return Path("/run/atrest") / hashlib.sha256(real.encode()).digest()[:8].hex()

    def release_host(self) -> list[str]:
        """After the server is gone: what it left on the host (a test that
        failed mid-way, a server killed during its shutdown) is undone:
        PostgreSQL servers on its mounts killed by pid, mounts lazily
        unmounted, loop devices detached, the run dir removed. Returns what
        was found."""
        base = str(self.run_base)
        found = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                cmd = (d / "cmdline").read_bytes()
            except OSError:
                continue
            if b"postgres" in cmd.split(b"\0")[0] and base.encode() in cmd:
                found.append(f"postgres {d.name}")
                try:
                    os.kill(int(d.name), signal.SIGKILL)
                except OSError:
                    pass
        if found:
            time.sleep(0.2)
        mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()
                  if line.split()[1].startswith(base)]
        for m in sorted(mounts, key=len, reverse=True):
            found.append(f"mount {m}")
            subprocess.run(["umount", "-l", m], capture_output=True)
        loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
        for line in loops.splitlines():
            if base in line:
                found.append(f"loop {line.split(':')[0]}")
                subprocess.run(["losetup", "-d", line.split(":")[0]], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
        # The instances' OS users (one per instance, its comment naming
        # this server's run dir): what a server keeps between its runs,
        # removed with the server.
        tag = f"atrest {self.run_base.name} "
        for line in Path("/etc/passwd").read_text().splitlines():
            fields = line.split(":")
            if len(fields) > 4 and fields[4].startswith(tag):
                subprocess.run(["userdel", fields[0]], capture_output=True)
                subprocess.run(["groupdel", fields[0]], capture_output=True)
        return found

    def kill(self) -> int:
        """SIGKILL (no chance to flush or clean up)."""
        assert self.proc is not None
        self.proc.kill()
        return self.proc.wait(timeout=15)

    def logs(self) -> bytes:
        return b"".join(p.read_bytes() for p in self.log_paths if p.exists())

    # -- clients -------------------------------------------------------
    def credentials(self) -> tuple[str, str]:
        return read_credentials(self.credentials_file)

    def client(
        self,
        region: str = REGION,
        creds: tuple[str, str] | None = None,
        validate: bool = True,
        verify=None,
        endpoint: str | None = None,
    ):
        """A boto3 KMS client for this server (no retries, so a fault is seen)."""
        akid, secret = creds or self.credentials()
        session = boto3.session.Session(aws_access_key_id=akid, aws_secret_access_key=secret, region_name=region)
        if verify is None and self.tls:
            verify = str(self.tls["ca"])
        return session.client(
            "kms",
            endpoint_url=endpoint or self.url,
            verify=verify,
            config=Config(
                retries={"max_attempts": 1, "mode": "standard"},
                parameter_validation=validate,
                connect_timeout=5,
                read_timeout=30,
            ),
        )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keeps each phase's report on the test item (make_server prints the
    servers' logs of a failed test)."""
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture
def make_server(request):
    """Factory for servers in a private temp dir; all are stopped (by pid)
    and the dir removed at teardown, even when the test fails (whose
    servers' last log lines are printed first)."""
    workdir = Path(tempfile.mkdtemp(prefix="atrest-interop-"))
    servers: list[Server] = []

    def make(**kw) -> Server:
        s = Server(workdir, name=kw.pop("name", f"node{len(servers) + 1}"), **kw)
        servers.append(s)
        return s

    make.workdir = workdir
    try:
        yield make
    finally:
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            for s in servers:
                tail = s.logs().decode(errors="replace").splitlines()[-40:]
                print(f"--- last lines of {s.name}'s log ---\n" + "\n".join(tail))
        for s in servers:
            try:
                # Stopping database instances takes a while: wait for it.
                s.stop(timeout=90)
            except Exception:  # keep tearing down the others
                if s.proc is not None and s.proc.poll() is None:
                    s.proc.kill()
            left = s.release_host()
            if left:
                print(f"teardown: {s.name} left {left}")
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def server(make_server) -> Server:
    """A started single-region server with a fresh data dir."""
    return make_server().start()


@pytest.fixture
def kms(server):
    """boto3 KMS client of the server's admin account (client-side validation on)."""
    return server.client()


@pytest.fixture
def kms_raw(server):
    """boto3 KMS client with client-side parameter validation off, so the
    server's own validation is what answers."""
    return server.client(validate=False)


# -- assertions ----------------------------------------------------------


def code_of(fn, *a, **kw) -> str | None:
    """The AWS error code `fn(*a, **kw)` raises, or None if it succeeds."""
    try:
        fn(*a, **kw)
    except ClientError as e:
        return e.response["Error"]["Code"]
    return None


def expect_error(code: str, fn, *args, status: int = 400, **kwargs) -> dict:
    """Calls fn, which must fail with AWS error `code` and HTTP `status`."""
    with pytest.raises(ClientError) as ei:
        fn(*args, **kwargs)
    resp = ei.value.response
    assert resp["Error"]["Code"] == code, f"expected {code}, got {resp['Error']}"
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == status, resp
    return resp


# -- raw HTTP ------------------------------------------------------------


def raw_request(
    server: Server,
    body: bytes | str = b"{}",
    *,
    target: str | None = "TrentService.ListKeys",
    creds: tuple[str, str] | None = None,
    region: str = REGION,
    service: str = "kms",
    method: str = "POST",
    path: str = "/",
    content_type: str | None = "application/x-amz-json-1.1",
    sign: bool = True,
    headers: dict[str, str] | None = None,
) -> requests.Response:
    """Sends one request, SigV4-signed by botocore unless sign=False."""
    if isinstance(body, str):
        body = body.encode()
    headers = dict(headers or {})
    if content_type is not None:
        headers["Content-Type"] = content_type
    if target is not None:
        headers["X-Amz-Target"] = target
    req = AWSRequest(method=method, url=server.url + path, data=body, headers=headers)
    if sign:
        akid, secret = creds or server.credentials()
        SigV4Auth(Credentials(akid, secret), service, region).add_auth(req)
    prepared = req.prepare()
    verify = str(server.tls["ca"]) if server.tls else True
    return requests.request(
        method,
        prepared.url,
        headers=dict(prepared.headers.items()),
        data=body,
        timeout=30,
        verify=verify,
    )


def error_type(resp: requests.Response) -> str:
    """The AWS `__type` of a JSON error response."""
    return resp.json()["__type"]


# -- command-line clients ------------------------------------------------


def aws_cli(
    server: Server,
    *args: str,
    creds_file: Path | None = None,
    region: str = REGION,
    check: bool = True,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess:
    """Runs `aws --endpoint-url <server> --output json <args>` (awscli v1)."""
    assert AWS_CLI.exists(), f"aws CLI not found beside {sys.executable}"
    env = subprocess_env(
        AWS_SHARED_CREDENTIALS_FILE=str(creds_file or server.credentials_file),
        AWS_DEFAULT_REGION=region,
        AWS_MAX_ATTEMPTS="1",
        AWS_RETRY_MODE="standard",
    )
    cmd = [str(AWS_CLI), "--endpoint-url", server.url, "--output", "json", *args]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=cwd)
    if check:
        assert p.returncode == 0, f"{cmd} failed ({p.returncode}):\n{p.stderr}"
    return p


def aws_json(server: Server, *args: str, **kw) -> dict:
    p = aws_cli(server, *args, **kw)
    return json.loads(p.stdout) if p.stdout.strip() else {}


def atrest_admin(
    server: Server,
    *args: str,
    creds_file: Path | None = None,
    env_creds: tuple[str, str] | None = None,
    stdin: str | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess:
    """Runs `atrest admin --endpoint <server> ... <args>`."""
    extra = {}
    if env_creds:
        extra = {"AWS_ACCESS_KEY_ID": env_creds[0], "AWS_SECRET_ACCESS_KEY": env_creds[1]}
    cmd = [
        str(ATREST_BIN),
        "admin",
        "--endpoint",
        server.url,
        "--region",
        server.regions[0],
        "--credentials-file",
        str(creds_file or server.credentials_file),
        *args,
    ]
    p = subprocess.run(
        cmd,
        env=subprocess_env(**extra),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check:
        assert p.returncode == 0, f"{cmd} failed ({p.returncode}):\n{p.stderr}"
    return p


# -- TLS material --------------------------------------------------------


def make_tls_files(directory: Path) -> dict[str, Path]:
    """A self-signed CA and a server certificate for 127.0.0.1 signed by it."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "atrest interop test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"ca": directory / "ca.pem", "cert": directory / "server.pem", "key": directory / "server.key"}
    paths["ca"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    paths["key"].chmod(0o600)
    # The CA's key, for tests that issue client certificates.
    paths["ca_key"] = directory / "ca.key"
    paths["ca_key"].write_bytes(
        ca_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    paths["ca_key"].chmod(0o600)
    return paths


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# -- accounts, users, policies (issue 3) ---------------------------------


def rest_call(
    server: Server,
    method: str,
    path: str,
    body: dict | None = None,
    *,
    creds: tuple[str, str] | None = None,
    region: str | None = None,
    headers: dict[str, str] | None = None,
) -> requests.Response:
    """One botocore-signed request to atrest's REST API (SigV4 service `atrest`)."""
    data = json.dumps(body).encode() if body is not None else b""
    return raw_request(
        server,
        data,
        method=method,
        path=path,
        target=None,
        service="atrest",
        region=region or server.regions[0],
        content_type="application/json" if body is not None else None,
        creds=creds,
        headers=headers,
    )


def atrest_run(*args: str, env_creds: tuple[str, str] | None = None, check: bool = True,
               timeout: float = 120) -> subprocess.CompletedProcess:
    """Runs `atrest <args>` in a clean environment (no ambient credentials)."""
    extra = {}
    if env_creds:
        extra = {"AWS_ACCESS_KEY_ID": env_creds[0], "AWS_SECRET_ACCESS_KEY": env_creds[1]}
    cmd = [str(ATREST_BIN), *args]
    p = subprocess.run(cmd, env=subprocess_env(**extra), capture_output=True, text=True, timeout=timeout)
    if check:
        assert p.returncode == 0, f"{cmd} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    return p


def atrest_client_cmd(
    server: Server,
    command: str,
    *args: str,
    env_creds: tuple[str, str] | None = None,
    creds_file: Path | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess:
    """Runs `atrest <command> --endpoint <server> ... <args>` (audit, metering)."""
    return atrest_run(
        command,
        "--endpoint", server.url,
        "--region", server.regions[0],
        "--credentials-file", str(creds_file or server.credentials_file),
        *args,
        env_creds=env_creds,
        check=check,
    )


def new_account(server: Server, account: str) -> tuple[str, str]:
    """Creates `account` (as the admin) and an access key for its root."""
    atrest_admin(server, "account", "create", "--id", account)
    out = json.loads(atrest_admin(server, "access-key", "create", "--account", account).stdout)
    assert out["account"] == account and out.get("user") is None, out
    return out["access_key_id"], out["secret_access_key"]


def put_user_policy(
    server: Server,
    account: str,
    user: str,
    name: str,
    document: dict | str,
    *,
    manager: tuple[str, str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess:
    """`atrest admin user put-policy` with the document in a temp file; run
    as `manager` (env credentials) or as the admin."""
    text = document if isinstance(document, str) else json.dumps(document)
    fd, name_ = tempfile.mkstemp(prefix="policy-", suffix=".json", dir=server.workdir)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return atrest_admin(
        server, "user", "put-policy", "--account", account, "--user", user, "--name", name,
        "--document-file", name_, env_creds=manager, check=check,
    )


def new_user(
    server: Server,
    account: str,
    name: str,
    *,
    policy: dict | None = None,
    manager: tuple[str, str] | None = None,
) -> tuple[str, str]:
    """Creates user `name` in `account` (as `manager` or the admin), attaches
    `policy` as identity policy `main` if given, and returns an access key."""
    out = json.loads(atrest_admin(server, "user", "create", "--account", account, "--name", name,
                                  env_creds=manager).stdout)
    assert out["arn"] == f"arn:aws:iam::{account}:user/{name}", out
    if policy is not None:
        put_user_policy(server, account, name, "main", policy, manager=manager)
    key = json.loads(atrest_admin(server, "access-key", "create", "--account", account, "--user", name,
                                  env_creds=manager).stdout)
    assert key["user"] == name and key["account"] == account, key
    return key["access_key_id"], key["secret_access_key"]


def policy_doc(*statements: dict) -> str:
    """A policy document (JSON text) of `statements`."""
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def root_arn(account: str) -> str:
    return f"arn:aws:iam::{account}:root"


def user_arn(account: str, name: str) -> str:
    return f"arn:aws:iam::{account}:user/{name}"


def access_denied_message(principal: str, op: str, key_arn: str, why: str) -> str:
    """AWS's AccessDeniedException message. `why` is `no-resource`,
    `no-identity`, `deny-resource` or `deny-identity`."""
    tail = {
        "no-resource": f"because no resource-based policy allows the kms:{op} action",
        "no-identity": f"because no identity-based policy allows the kms:{op} action",
        "deny-resource": "with an explicit deny in a resource-based policy",
        "deny-identity": "with an explicit deny in an identity-based policy",
    }[why]
    return f"User: {principal} is not authorized to perform: kms:{op} on resource: {key_arn} {tail}"


def expect_denied(fn, *args, principal: str, op: str, key_arn: str, why: str, **kwargs) -> dict:
    """fn must fail with AccessDeniedException (400) in AWS's exact wording."""
    resp = expect_error("AccessDeniedException", fn, *args, **kwargs)
    assert resp["Error"]["Message"] == access_denied_message(principal, op, key_arn, why), resp["Error"]
    return resp


# -- the audit trail (issue 3) -------------------------------------------


def audit_log_path(server: Server) -> Path:
    return server.data_dir / "audit" / "audit.log"


def audit_lines(path: Path) -> list[bytes]:
    """The record lines of an audit log file (each without its `\\n`). A
    running server preallocates the file with zeros past the last record;
    that tail is not a record."""
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    assert data[end:].strip(b"\0") == b"", f"{path}: bytes after the last complete record: {data[end:][:200]!r}"
    return data[:end].split(b"\n")[:-1] if end else []


def audit_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in audit_lines(path)]


# -- database instances (issue 6) --------------------------------------------

DB_PASSWORD = "interop-Pass-1"


def db_cmd(server: Server, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """`atrest db <args>` against `server` as its admin."""
    return atrest_run(
        "db",
        "--endpoint", server.url,
        "--region", server.regions[0],
        "--credentials-file", str(server.credentials_file),
        *args,
        check=check,
        timeout=timeout,
    )


def db_json(server: Server, *args: str, timeout: float = 600) -> dict:
    """`atrest db <args>`, which must succeed, parsed."""
    return json.loads(db_cmd(server, *args, timeout=timeout).stdout)


def create_db(server: Server, name: str, *extra: str, password: str = DB_PASSWORD) -> dict:
    """Creates and starts an instance with a known master password."""
    pw = server.workdir / f"{name}.pw"
    pw.write_text(password + "\n")
    return db_json(server, "create", name, "--password-file", str(pw), *extra)


def all_disks(server: Server, account: str | None = None) -> list[dict]:
    """Every disk of `account` (default: the admin's own), the database
    service's instance disks included: the operators' inventory (`atrest
    admin account disks`), where a customer's `disk list` hides them."""
    if account is None:
        account = boto_account(server)
    p = atrest_run("admin", "--endpoint", server.url, "--region", server.regions[0],
                   "--credentials-file", str(server.credentials_file), "--output", "json",
                   "account", "disks", account)
    return json.loads(p.stdout)["disks"]


def boto_account(server: Server) -> str:
    """The admin's account id."""
    sts = [a for a in json.loads(atrest_run(
        "admin", "--endpoint", server.url, "--credentials-file", str(server.credentials_file),
        "--output", "json", "account", "list").stdout)["accounts"] if a["admin"]]
    assert len(sts) == 1, sts
    return sts[0]["id"]


def psql(port: int, sql: str, *, password: str = DB_PASSWORD, user: str = "postgres",
         dbname: str = "postgres", check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    """Runs SQL through the real psql over TCP (unaligned, tuples only)."""
    env = subprocess_env(PGPASSWORD=password, PGCONNECT_TIMEOUT="10")
    p = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-p", str(port), "-U", user, "-d", dbname,
         "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql],
        env=env, capture_output=True, text=True, timeout=timeout,
    )
    if check:
        assert p.returncode == 0, f"psql failed ({p.returncode}): {p.stderr}"
    return p


def sql_value(port: int, sql: str, **kw) -> str:
    """The output of one query, stripped."""
    return psql(port, sql, **kw).stdout.strip()


def scan_for(root: Path, marker: bytes) -> list[Path]:
    """The files under `root` whose bytes hold `marker`."""
    hits = []
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            try:
                if marker in p.read_bytes():
                    hits.append(p)
            except OSError:
                pass
    return hits
