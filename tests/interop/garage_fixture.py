"""A throwaway single-node Garage (S3-compatible object store) for tests.

`Garage().start(tmp_path)` writes a garage.toml in a fresh dir under
`tmp_path` (SQLite metadata, replication factor 1, RPC, S3 and admin APIs on
free loopback ports, a random rpc_secret), runs `garage server` in its own
process group, assigns and applies a one-node layout, creates a bucket and a
key allowed on it (read, write, owner), and waits until the S3 API accepts
connections. `stop()` stops the server by its pid (SIGTERM, then SIGKILL
after 2 s) and removes the dir.

The `garage` fixture (function scope) yields a started `Garage`; import it
into a test module with `from garage_fixture import garage`. Without a
`garage` binary (ATREST_GARAGE_BIN, else `garage` on PATH) the fixture
skips the test, unless ATREST_REQUIRE_GARAGE=1 (scripts/test.sh sets it):
then the test fails. Both variables are read at import, before conftest
scrubs ATREST_* from the environment.

`s3_client(garage)` is a boto3 S3 client for the node (path-style, region
"garage"), for tests that list or scan what a program stored.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from conftest import free_port, subprocess_env

REGION = "garage"
START_TIMEOUT = 60.0

_GARAGE_BIN = os.environ.get("ATREST_GARAGE_BIN") or shutil.which("garage")
_REQUIRE = os.environ.get("ATREST_REQUIRE_GARAGE", "") not in ("", "0")


class GarageError(RuntimeError):
    pass


class Garage:
    """A running single-node Garage: `endpoint`, `region`, `bucket`,
    `access_key_id`, `secret` once started."""

    def __init__(self, binary: str | None = None):
        self.binary = binary or _GARAGE_BIN
        if not self.binary:
            raise GarageError("no `garage` binary (set ATREST_GARAGE_BIN or put it on PATH)")
        self.root: Path | None = None
        self.config: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.endpoint = ""
        self.region = REGION
        self.bucket = "test-bucket"
        self.key_name = "test-key"
        self.access_key_id = ""
        self.secret = ""

    # -- lifecycle ---------------------------------------------------------
    def start(self, tmp_path: Path) -> "Garage":
        """Starts the node in a new dir under `tmp_path`; returns self. A
        port picked free may be taken before garage binds it: up to three
        tries."""
        last: Exception | None = None
        for _ in range(3):
            try:
                self._start_once(Path(tmp_path))
                return self
            except GarageError as e:
                last = e
                self.stop()
        raise last  # type: ignore[misc]

    def _start_once(self, tmp_path: Path) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="garage-", dir=tmp_path))
        s3, rpc, admin = free_port(), free_port(), free_port()
        self.endpoint = f"http://127.0.0.1:{s3}"
        self.config = self.root / "garage.toml"
        self.config.write_text(
            f'metadata_dir = "{self.root / "meta"}"\n'
            f'data_dir = "{self.root / "data"}"\n'
            'db_engine = "sqlite"\n'
            "metadata_fsync = false\n"
            "data_fsync = false\n"
            "replication_factor = 1\n"
            f'rpc_bind_addr = "127.0.0.1:{rpc}"\n'
            f'rpc_public_addr = "127.0.0.1:{rpc}"\n'
            f'rpc_secret = "{secrets.token_hex(32)}"\n'
            "\n[s3_api]\n"
            f's3_region = "{REGION}"\n'
            f'api_bind_addr = "127.0.0.1:{s3}"\n'
            'root_domain = ".s3.garage.localhost"\n'
            "\n[admin]\n"
            f'api_bind_addr = "127.0.0.1:{admin}"\n'
            f'admin_token = "{secrets.token_hex(16)}"\n'
        )
        self.config.chmod(0o600)
        log = open(self.root / "garage.log", "wb")
        try:
            self.proc = subprocess.Popen(
                [self.binary, "-c", str(self.config), "server"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env(RUST_LOG="garage=info"),
                start_new_session=True,
            )
        finally:
            log.close()
        deadline = time.monotonic() + START_TIMEOUT
        node = self._retry(deadline, "node", "id", "-q").strip().split("@")[0]
        if not node:
            raise GarageError(f"no node id from `garage node id`{self._log_hint()}")
        self._retry(deadline, "layout", "assign", "-z", "dc1", "-c", "1G", node)
        self._retry(deadline, "layout", "apply", "--version", "1")
        self._retry(deadline, "bucket", "create", self.bucket)
        out = self._retry(deadline, "key", "create", self.key_name)
        self.access_key_id, self.secret = _parse_key(out)
        self._allow(self.bucket, deadline)
        while True:
            try:
                socket.create_connection(("127.0.0.1", s3), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise GarageError(f"S3 API on port {s3} never came up{self._log_hint()}")
                time.sleep(0.1)

    def stop(self) -> None:
        """Stops the server by its pid (SIGTERM, then SIGKILL to its process
        group) and removes its dir. Safe to call twice."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                # Garage's graceful shutdown waits for idle keep-alive S3
                # connections (a boto3 client's pool holds one): give it 2 s.
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    # -- buckets and keys ----------------------------------------------------
    def new_bucket(self, name: str) -> str:
        """Creates bucket `name`, allowed for this node's key; returns it."""
        deadline = time.monotonic() + 30
        self._retry(deadline, "bucket", "create", name)
        self._allow(name, deadline)
        return name

    def cli(self, *args: str) -> str:
        """Runs `garage -c CONFIG ARGS...` once; its stdout (raises on failure)."""
        assert self.config is not None, "not started"
        p = subprocess.run(
            [self.binary, "-c", str(self.config), *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=self._env(),
            timeout=30,
        )
        if p.returncode != 0:
            raise GarageError(f"garage {' '.join(args)} failed ({p.returncode}): {p.stdout}{p.stderr}")
        return p.stdout

    def log(self) -> str:
        if self.root is None:
            return ""
        try:
            return (self.root / "garage.log").read_text(errors="replace")
        except OSError:
            return ""

    # -- internals -------------------------------------------------------------
    def _allow(self, bucket: str, deadline: float) -> None:
        self._retry(deadline, "bucket", "allow", "--read", "--write", "--owner", bucket,
                    "--key", self.key_name)

    def _retry(self, deadline: float, *args: str) -> str:
        """`cli(*args)` until it succeeds (the server takes a moment to
        listen and to take a layout) or the deadline passes."""
        while True:
            try:
                return self.cli(*args)
            except (GarageError, subprocess.TimeoutExpired) as e:
                if self.proc is not None and self.proc.poll() is not None:
                    raise GarageError(
                        f"garage server exited ({self.proc.returncode}); last: {e}{self._log_hint()}"
                    ) from None
                if time.monotonic() > deadline:
                    raise GarageError(f"gave up: {e}{self._log_hint()}") from None
                time.sleep(0.2)

    def _log_hint(self) -> str:
        tail = "\n".join(self.log().splitlines()[-40:])
        return f"\n--- garage log ---\n{tail}" if tail else ""

    @staticmethod
    def _env(**extra: str) -> dict[str, str]:
        env = subprocess_env(**extra)
        env.pop("GARAGE_RPC_SECRET", None)
        return env


def _parse_key(out: str) -> tuple[str, str]:
    """Key id and secret from `garage key create` ("Key ID: GK...",
    "Secret key: ...")."""
    kid = re.search(r"^\s*Key ID:\s*(\S+)", out, re.M)
    sec = re.search(r"^\s*Secret key:\s*(\S+)", out, re.M)
    if not (kid and sec):
        raise GarageError(f"no key id / secret in `garage key create` output:\n{out}")
    return kid.group(1), sec.group(1)


def s3_client(g: Garage, access_key_id: str | None = None, secret: str | None = None):
    """A boto3 S3 client for the node: path-style, region "garage"."""
    return boto3.client(
        "s3",
        endpoint_url=g.endpoint,
        region_name=g.region,
        aws_access_key_id=access_key_id or g.access_key_id,
        aws_secret_access_key=secret or g.secret,
        config=Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 2, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
        ),
    )


@pytest.fixture
def garage(tmp_path):
    """A started single-node Garage; stopped by pid and removed after the
    test. Skips without a `garage` binary unless ATREST_REQUIRE_GARAGE=1."""
    if not _GARAGE_BIN:
        if _REQUIRE:
            pytest.fail("ATREST_REQUIRE_GARAGE is set but no `garage` binary is on PATH "
                        "(cargo install garage --locked)")
        pytest.skip("`garage` not on PATH")
    g = Garage()
    try:
        g.start(tmp_path)
        yield g
    finally:
        g.stop()
