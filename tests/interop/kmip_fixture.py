"""A PyKMIP server for the KMIP provider's interop tests.

`kmip_server(workdir)` makes a throwaway CA, a server certificate for
127.0.0.1 (IP SAN) and a client certificate (ECDSA P-256: PyKMIP's "TLS1.2"
auth suite offers only ECDHE-ECDSA among the AEAD suites rustls speaks),
writes a PyKMIP server configuration (TLS 1.2, client certificates required,
a private policy dir and SQLite database), starts `pykmip-server` on a free
loopback port in its own process group, waits until it completes a KMIP
round trip, and at exit stops it by pid (SIGINT, then SIGKILL to its process
group: PyKMIP runs a multiprocessing manager and a policy monitor beside
it) and removes its temp dir.

The same client certificate serves atrest and the PyKMIP client that
creates, revokes and destroys keys: PyKMIP names a key's owner after the
certificate's common name, and only the owner may use the key.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from conftest import free_port, subprocess_env

PYKMIP_SERVER = Path(sys.executable).parent / "pykmip-server"


# -- certificates -------------------------------------------------------------

def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path: Path, key) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def make_ca(directory: Path, cn: str):
    """A self-signed CA; returns (key, cert) and writes ca.pem."""
    now = datetime.datetime.now(datetime.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def make_leaf(directory: Path, stem: str, ca, cn: str, server: bool) -> tuple[Path, Path]:
    """A certificate signed by `ca` (for 127.0.0.1 if `server`, else a client
    certificate); returns (cert.pem, key.pem)."""
    ca_key, ca_cert = ca
    now = datetime.datetime.now(datetime.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    if server:
        b = b.add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
    cert = b.sign(ca_key, hashes.SHA256())
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key_path, key)
    return cert_path, key_path


# -- the server ---------------------------------------------------------------

class KmipServer:
    """A running PyKMIP server and the files a client needs."""

    def __init__(self, root: Path):
        self.root = root
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        pki = root / "pki"
        ca = make_ca(pki, "atrest interop KMIP CA")
        self.ca_file = pki / "ca.pem"
        self.server_cert, self.server_key = make_leaf(pki, "server", ca, "127.0.0.1", server=True)
        # The common name is the client's identity, the owner of its keys.
        self.client_cert, self.client_key = make_leaf(pki, "client", ca, "atrest", server=False)
        # A client certificate from another CA, same name: the server must
        # refuse the TLS handshake.
        other = make_ca(root / "other-ca", "some other CA")
        self.foreign_cert, self.foreign_key = make_leaf(
            root / "other-ca", "client", other, "atrest", server=False
        )
        (root / "policies").mkdir()
        self.log_path = root / "server.log"
        self.stdout_path = root / "server.stdout.log"

    @property
    def address(self) -> str:
        assert self.port is not None, "server not started"
        return f"127.0.0.1:{self.port}"

    # -- process ---------------------------------------------------------
    def _write_config(self) -> Path:
        conf = self.root / "server.conf"
        conf.write_text(
            "[server]\n"
            "hostname=127.0.0.1\n"
            f"port={self.port}\n"
            f"certificate_path={self.server_cert}\n"
            f"key_path={self.server_key}\n"
            f"ca_path={self.ca_file}\n"
            "auth_suite=TLS1.2\n"
            f"policy_path={self.root / 'policies'}\n"
            "enable_tls_client_auth=True\n"
            "logging_level=DEBUG\n"
            f"database_path={self.root / 'pykmip.db'}\n"
        )
        return conf

    def start(self, timeout: float = 60) -> "KmipServer":
        if not PYKMIP_SERVER.exists():
            raise RuntimeError(f"{PYKMIP_SERVER} not found: pip install -r tests/interop/requirements.txt")
        for attempt in range(3):
            self.port = free_port()
            conf = self._write_config()
            with open(self.stdout_path, "ab") as out:
                self.proc = subprocess.Popen(
                    [str(PYKMIP_SERVER), "-f", str(conf), "-l", str(self.log_path)],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    env=subprocess_env(), cwd=self.root, start_new_session=True,
                )
            if self._wait_ready(timeout):
                return self
            self.stop()
            if attempt < 2 and "Address already in use" in self.logs():
                continue
            raise RuntimeError(f"PyKMIP did not start:\n{self.logs()[-4000:]}")
        raise AssertionError("unreachable")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    pass
            except OSError:
                time.sleep(0.2)
                continue
            # Accepting; make sure a KMIP request goes through too.
            try:
                with self.client() as c:
                    c.locate(maximum_items=1)
                return True
            except Exception:  # noqa: BLE001 - not ready yet
                time.sleep(0.3)
        return False

    def stop(self, timeout: float = 20) -> None:
        p, self.proc = self.proc, None
        if p is None:
            return
        if p.poll() is None:
            # SIGINT interrupts PyKMIP's accept() at once (SIGTERM waits for
            # its 10 s accept timeout).
            p.send_signal(signal.SIGINT)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # Its helpers (multiprocessing manager, policy monitor) share its
        # process group, which start_new_session made ours alone.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(5)

    def logs(self) -> str:
        out = ""
        for path in (self.stdout_path, self.log_path):
            if path.exists():
                out += path.read_text(errors="replace")
        return out

    # -- a PyKMIP client -------------------------------------------------
    def client(self):
        from kmip.pie.client import ProxyKmipClient

        # An empty client configuration: never /etc/pykmip/pykmip.conf.
        conf = self.root / "client.conf"
        if not conf.exists():
            conf.write_text("[client]\n")
        return ProxyKmipClient(
            hostname="127.0.0.1",
            port=self.port,
            cert=str(self.client_cert),
            key=str(self.client_key),
            ca=str(self.ca_file),
            ssl_version="PROTOCOL_TLSv1_2",
            config_file=str(conf),
        )

    def create_key(self, algorithm: str = "AES", length: int = 256, activate: bool = True) -> str:
        """Creates a symmetric key (Active unless `activate` is false);
        returns its unique identifier."""
        from kmip.core import enums

        with self.client() as c:
            uid = c.create(getattr(enums.CryptographicAlgorithm, algorithm), length)
            if activate:
                c.activate(uid)
        return str(uid)

    def revoke(self, uid: str, compromised: bool = False) -> None:
        """Revokes the key: Deactivated (Compromised if `compromised`)."""
        from kmip.core import enums

        reason = (
            enums.RevocationReasonCode.KEY_COMPROMISE
            if compromised
            else enums.RevocationReasonCode.CESSATION_OF_OPERATION
        )
        with self.client() as c:
            if compromised:
                c.revoke(reason, uid, compromise_occurrence_date=int(time.time()))
            else:
                c.revoke(reason, uid)

    def destroy(self, uid: str) -> None:
        """Destroys the key (revoking it first if it is still Active)."""
        from kmip.core import enums

        with self.client() as c:
            state = c.get_attributes(uid, ["State"])[1][0].attribute_value.value
            if state == enums.State.ACTIVE:
                c.revoke(enums.RevocationReasonCode.CESSATION_OF_OPERATION, uid)
            c.destroy(uid)

    def state(self, uid: str) -> str:
        with self.client() as c:
            return c.get_attributes(uid, ["State"])[1][0].attribute_value.value.name

    # -- atrest's providers file -----------------------------------------
    def provider_config(self, **over) -> dict:
        conf = {
            "type": "kmip",
            "address": self.address,
            "ca_file": str(self.ca_file),
            "client_cert": str(self.client_cert),
            "client_key": str(self.client_key),
            "timeout_ms": 3000,
            "retries": 1,
        }
        conf.update(over)
        return conf

    def providers_file(self, path: Path, name: str, **over) -> Path:
        """Writes atrest's providers file with one KMIP provider `name`
        (fields in `over` replace the defaults)."""
        path.write_text(json.dumps({name: self.provider_config(**over)}, indent=2))
        return path


@contextlib.contextmanager
def kmip_server(workdir: Path | None = None):
    """A started PyKMIP server; stopped and its files removed at exit."""
    root = Path(tempfile.mkdtemp(prefix="atrest-kmip-", dir=workdir))
    server = None
    try:
        server = KmipServer(root)
        server.start()
        yield server
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)
