"""Disks over NBD with real clients: qemu-io, qemu-img, nbdinfo, nbdcopy and
fio's nbd engine, over plaintext (loopback), TLS with client certificates
and TLS with pre-shared keys (qemu's and libnbd's GnuTLS against atrest's
rustls and OpenSSL).

* qemu-io writes and verifies patterns (`-P`), aligned and unaligned, with
  and without FUA; write-zeroes and discard read back as zeros.
* qemu-img convert of an image into a disk and back, qemu-img compare.
* nbdinfo: size, block-size constraints, export list, TLS on.
* nbdcopy both ways; no plaintext of what was copied anywhere in the data
  dir.
* fio with its nbd engine, verifying what it wrote.
* TLS required: nothing but STARTTLS before the handshake (a raw client
  checks the replies), plaintext clients are refused.
* A locked disk refuses to attach, the reason (naming the key) reaching
  the client; enabling the key lets it attach. Attach and detach are
  audited.
* One client at a time unless the disk is shareable.
* SIGKILL of the server during writes, restart: every write acknowledged
  before a flush is there.

Capabilities: D3, D4 (and D9, K9 for attaches).
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import (
    atrest_client_cmd,
    audit_log_path,
    audit_records,
    free_port,
    make_tls_files,
    new_account,
    new_user,
    user_arn,
)

A = "111122223333"
ROOT_A = f"arn:aws:iam::{A}:root"

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("qemu-io", "qemu-img", "nbdinfo", "nbdcopy", "fio")),
    reason="qemu-utils, libnbd-bin and fio are installed by scripts/test.sh",
)


def run(*cmd: str, check: bool = True, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)
    if check:
        assert p.returncode == 0, f"{cmd} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    return p


def disk_cmd(server, creds, *args, check=True):
    p = atrest_client_cmd(server, "disk", *args, env_creds=creds, check=check)
    return json.loads(p.stdout) if check else p


def make_client_cert(directory: Path, ca_key, ca_cert, principal: str) -> None:
    """A client certificate for `principal` (URI SAN), in qemu's and libnbd's
    directory layout (ca-cert.pem is the *server's* CA there)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nbd client")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(principal)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "client-cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "client-key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption()))


def load_ca(tls: dict[str, Path]):
    """The test CA (it signs the server's certificate and the clients'; qemu
    checks its own certificate against the CA it is given)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(tls["ca_key"].read_bytes(), password=None)
    cert = x509.load_pem_x509_certificate(tls["ca"].read_bytes())
    return key, cert


class Nbd:
    """How each client reaches one export of the server, per transport."""

    def __init__(self, port: int, transport: str, tls_dir: Path | None = None,
                 psk_file: Path | None = None, psk_user: str | None = None):
        self.port, self.transport = port, transport
        self.tls_dir, self.psk_file, self.psk_user = tls_dir, psk_file, psk_user

    def uri(self, export: str = "") -> str:
        """libnbd's URI (nbdinfo, nbdcopy, fio)."""
        if self.transport == "plain":
            return f"nbd://127.0.0.1:{self.port}/{export}"
        if self.transport == "cert":
            return f"nbds://127.0.0.1:{self.port}/{export}?tls-certificates={self.tls_dir}"
        return f"nbds://{self.psk_user}@127.0.0.1:{self.port}/{export}?tls-psk-file={self.psk_file}"

    def qemu(self, export: str) -> list[str]:
        """qemu-io / qemu-img arguments naming the export (--image-opts form)."""
        opts = f"driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={self.port},export={export}"
        if self.transport == "plain":
            return ["--image-opts", opts]
        if self.transport == "cert":
            obj = f"tls-creds-x509,id=tls0,endpoint=client,dir={self.tls_dir}"
        else:
            obj = f"tls-creds-psk,id=tls0,endpoint=client,dir={self.psk_file.parent},username={self.psk_user}"
        return ["--object", obj, "--image-opts", opts + ",tls-creds=tls0"]

    def qemu_io(self, export: str, *cmds: str, check: bool = True) -> subprocess.CompletedProcess:
        args = ["qemu-io"]
        qa = self.qemu(export)
        if qa[0] == "--object":
            args += qa[:2]
            qa = qa[2:]
        args += qa
        for c in cmds:
            args += ["-c", c]
        p = run(*args, check=False)
        if check:
            assert p.returncode == 0 and "Pattern verification failed" not in p.stdout, \
                f"qemu-io {cmds} failed:\n{p.stdout}\n{p.stderr}"
        return p


@pytest.fixture
def nbd_env(make_server):
    """A server with NBD on: plaintext on loopback as account A's root, TLS
    with client certificates (signed by a test CA) and with PSKs."""
    work = make_server.workdir
    tls = make_tls_files(work / "tls")
    ca_key, ca_cert = load_ca(tls)
    ca_path = tls["ca"]
    port = free_port()
    server = make_server(args=(
        "--nbd-listen", f"127.0.0.1:{port}",
        "--nbd-tls-cert", str(tls["cert"]), "--nbd-tls-key", str(tls["key"]),
        "--nbd-tls-client-ca", str(ca_path),
        "--nbd-plaintext-principal", ROOT_A,
    )).start()
    creds = new_account(server, A)

    cert_dir = work / "qemu-x509"
    make_client_cert(cert_dir, ca_key, ca_cert, ROOT_A)
    shutil.copy(tls["ca"], cert_dir / "ca-cert.pem")

    psk_dir = work / "qemu-psk"
    psk_dir.mkdir()
    psk_file = psk_dir / "keys.psk"
    atrest_client_cmd(server, "nbd", "psk", "--out", str(psk_file), env_creds=creds)
    psk_user = psk_file.read_text().split(":")[0]
    assert psk_user == creds[0], psk_file.read_text()

    class Env:
        pass

    e = Env()
    e.server, e.creds, e.port, e.work = server, creds, port, work
    e.ca_key, e.ca_cert, e.tls = ca_key, ca_cert, tls
    e.nbd = {
        "plain": Nbd(port, "plain"),
        "cert": Nbd(port, "cert", tls_dir=cert_dir),
        "psk": Nbd(port, "psk", psk_file=psk_file, psk_user=psk_user),
    }
    return e


TRANSPORTS = ["plain", "cert", "psk"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_qemu_io_patterns_aligned_unaligned_fua(nbd_env, transport):
    e = nbd_env
    d = disk_cmd(e.server, e.creds, "create", "--size", "64M")
    n = e.nbd[transport]
    n.qemu_io(
        d["id"],
        "write -P 0xab 0 2M",
        "write -P 0xcd 1048577 3001",          # unaligned, crosses sectors
        "write -f -P 0x5a 4M 256k",             # FUA
        "write -z 8M 1M",                       # write zeroes
        "write -P 0x77 12M 64k",
        "discard 12M 64k",                      # trim
        "write -P 0x33 63M 1M",                 # the last megabyte
        "flush",
    )
    # A fresh connection sees every byte.
    n.qemu_io(
        d["id"],
        "read -P 0xab 0 1048577",
        "read -P 0xcd 1048577 3001",
        "read -P 0xab 1051578 2000",
        "read -P 0x5a 4M 256k",
        "read -P 0 8M 1M",
        "read -P 0 12M 64k",
        "read -P 0x33 63M 1M",
    )
    # Beyond the end: an error, not a hang or a crash.
    p = n.qemu_io(d["id"], "read 64M 4k", check=False)
    assert "error" in (p.stdout + p.stderr).lower() or p.returncode != 0, p.stdout


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_qemu_img_convert_and_compare_nbdinfo_nbdcopy_fio(nbd_env, transport):
    e = nbd_env
    n = e.nbd[transport]
    d = disk_cmd(e.server, e.creds, "create", "--size", "32M", "--block-size", "4096")
    src = e.work / f"src-{transport}.img"
    marker = b"ATREST-NBD-PLAINTEXT-MARKER-" + transport.encode()
    block = (marker * (4096 // len(marker) + 1))[:4096]
    with open(src, "wb") as f:
        for i in range(32 * 256):  # 32 MiB
            f.write(block if i % 3 else os.urandom(4096))

    # nbdinfo: size, block sizes, TLS.
    info = json.loads(run("nbdinfo", "--json", n.uri(d["id"])).stdout)
    exp = info["exports"][0]
    assert exp["export-size"] == 32 << 20, info
    assert exp["block_size_minimum"] == 4096 and exp["block_size_maximum"] == 32 << 20, info
    assert exp["is_read_only"] is False and exp["can_flush"] is True and exp["can_fua"] is True, info
    assert exp["can_multi_conn"] is True, info
    assert info["TLS"] is (transport != "plain"), info
    listed = run("nbdinfo", "--list", "--json", n.uri()).stdout
    assert d["id"] in listed, listed

    # qemu-img convert into the disk (it exists: -n) and back; compare.
    qa = n.qemu(d["id"])
    objs = qa[:2] if qa[0] == "--object" else []
    target = qa[-1]
    run("qemu-img", "convert", *objs, "-n", "-f", "raw", "--target-image-opts", str(src), target)
    back = e.work / f"back-{transport}.img"
    run("qemu-img", "convert", *objs, "--image-opts", target, "-O", "raw", str(back))
    assert back.read_bytes() == src.read_bytes()
    run("qemu-img", "compare", *objs, "--image-opts", f"driver=raw,file.filename={src}", target)

    # nbdcopy both ways (several connections: multi-conn).
    d2 = disk_cmd(e.server, e.creds, "create", "--size", "32M")
    run("nbdcopy", str(src), n.uri(d2["id"]))
    out = e.work / f"copy-{transport}.img"
    run("nbdcopy", n.uri(d2["id"]), str(out))
    assert out.read_bytes() == src.read_bytes()

    # fio's nbd engine, verifying what it wrote.
    fio_job(e, n, d2["id"])

    # What was copied is nowhere in the clear under the data dir.
    e.server.stop()
    for path in e.server.data_dir.rglob("*"):
        if path.is_file():
            assert marker not in path.read_bytes(), f"plaintext of the disk in {path}"
    e.server.start()


def fio_job(e, n: Nbd, export: str) -> None:
    """fio's nbd engine writes at random and verifies. fio refuses URIs that
    name local files (certificates, PSK files), so over TLS it reaches
    atrest through nbdkit's nbd plugin, which speaks TLS (certificates or
    PSK) to atrest and plaintext to fio on a Unix socket."""
    uri = n.uri(export)
    helper = None
    if n.transport != "plain":
        sock = e.work / f"fio-{n.transport}.sock"
        tls = ([f"tls-certificates={n.tls_dir}"] if n.transport == "cert"
               else [f"tls-psk={n.psk_file}", f"tls-username={n.psk_user}"])
        # In the foreground, as our own child: its pid is known from the
        # start (a daemonized nbdkit's pidfile may not exist yet when the
        # parent returns).
        helper = subprocess.Popen(
            ["nbdkit", "-f", "--unix", str(sock), "nbd", "hostname=127.0.0.1", f"port={n.port}",
             f"export={export}", "tls=require", *tls],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while not sock.exists():
            if helper.poll() is not None:
                raise AssertionError(f"nbdkit exited: {helper.stderr.read().decode()}")
            assert time.monotonic() < deadline, "nbdkit did not create its socket"
            time.sleep(0.05)
        uri = f"nbd+unix:///?socket={sock}"
    try:
        p = run("fio", "--name=nbd", "--ioengine=nbd", f"--uri={uri}", "--rw=randwrite",
                "--bs=4k", "--size=8M", "--iodepth=16", "--verify=crc32c", "--do_verify=1",
                "--verify_state_save=0", "--output-format=json", timeout=300, cwd=e.work)
    finally:
        if helper:
            helper.terminate()
            helper.communicate(timeout=30)
    res = json.loads(p.stdout[p.stdout.index("{"):])
    job = res["jobs"][0]
    assert job["error"] == 0 and job["write"]["io_bytes"] >= 8 << 20, job["error"]
    assert job["read"]["io_bytes"] >= 8 << 20, "fio did not read back what it wrote"


def test_tls_required_refuses_everything_before_starttls(make_server):
    work = make_server.workdir
    tls = make_tls_files(work / "tls")
    port = free_port()
    server = make_server(args=(
        "--nbd-listen", f"127.0.0.1:{port}",
        "--nbd-tls-cert", str(tls["cert"]), "--nbd-tls-key", str(tls["key"]),
    )).start()
    creds = new_account(server, A)
    d = disk_cmd(server, creds, "create", "--size", "8M")

    # Real clients without TLS are refused.
    p = run("qemu-img", "info", f"nbd://127.0.0.1:{port}/{d['id']}", check=False)
    assert p.returncode != 0 and "TLS" in p.stderr, p.stderr
    p = run("nbdinfo", f"nbd://127.0.0.1:{port}/{d['id']}", check=False)
    assert p.returncode != 0, p.stdout

    # A raw client: every option but STARTTLS answers NBD_REP_ERR_TLS_REQD.
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        hello = recv_exact(s, 18)
        assert hello[:16] == b"NBDMAGICIHAVEOPT", hello
        s.sendall(struct.pack(">I", 3))  # fixed newstyle, no zeroes
        for opt, data in [(8, b""), (3, b""), (6, struct.pack(">I", len(d["id"])) + d["id"].encode() + b"\0\0"),
                          (7, struct.pack(">I", len(d["id"])) + d["id"].encode() + b"\0\0")]:
            s.sendall(b"IHAVEOPT" + struct.pack(">II", opt, len(data)) + data)
            magic, ropt, rtype, rlen = struct.unpack(">QIII", recv_exact(s, 20))
            body = recv_exact(s, rlen)
            assert magic == 0x3e889045565a9 and ropt == opt, (hex(magic), ropt)
            assert rtype == (1 << 31) | 5, (opt, hex(rtype), body)
        # NBD_OPT_EXPORT_NAME before STARTTLS: the connection is closed.
        name = d["id"].encode()
        s.sendall(b"IHAVEOPT" + struct.pack(">II", 1, len(name)) + name)
        assert s.recv(1) == b"", "the server answered EXPORT_NAME without TLS"
    finally:
        s.close()

    # Plaintext NBD off loopback is refused at start.
    other = make_server(name="remote", args=("--nbd-listen", "0.0.0.0:0",
                                             "--nbd-plaintext-principal", ROOT_A))
    rc, out = other.run_until_exit()
    assert rc != 0 and "loopback" in out, out


def recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        assert chunk, f"connection closed after {len(buf)} of {n} bytes"
        buf += chunk
    return buf


def test_a_locked_disk_refuses_to_attach_and_unlocks(nbd_env):
    e = nbd_env
    kms = e.server.client(creds=e.creds)
    key = kms.create_key()["KeyMetadata"]["Arn"]
    d = disk_cmd(e.server, e.creds, "create", "--size", "8M", "--key-id", key)
    n = e.nbd["cert"]
    n.qemu_io(d["id"], "write -P 0x42 0 64k", "flush")

    kms.disable_key(KeyId=key)
    p = run("qemu-img", "info", *n.qemu(d["id"]), check=False)
    assert p.returncode != 0, p.stdout
    assert key in p.stderr and "disabled" in p.stderr.lower(), p.stderr
    # libnbd reports the error but not the server's text; the log has it.
    p = run("nbdinfo", n.uri(d["id"]), check=False)
    assert p.returncode != 0, p.stdout
    log = e.server.logs().decode(errors="replace")
    assert "NBD export refused" in log and key in log, log[-2000:]

    kms.enable_key(KeyId=key)
    n.qemu_io(d["id"], "read -P 0x42 0 64k")

    recs = [r for r in audit_records(audit_log_path(e.server))
            if r["operation"] in ("disk:AttachDisk", "disk:DetachDisk")]
    outcomes = {(r["operation"], r["result"]) for r in recs}
    assert ("disk:AttachDisk", "DiskLockedException") in outcomes, outcomes
    assert ("disk:AttachDisk", "Success") in outcomes, outcomes
    assert ("disk:DetachDisk", "Success") in outcomes, outcomes
    assert all(key in json.dumps(r) for r in recs
               if r["operation"] == "disk:AttachDisk" and r["result"] == "DiskLockedException"), recs
    # Metered to the disk's account.
    usage = json.loads(atrest_client_cmd(e.server, "metering", env_creds=e.creds).stdout)["usage"]
    metered = {u["operation"] for u in usage if u["account"] == A}
    assert {"disk:AttachDisk", "disk:DetachDisk"} <= metered, metered


def test_one_client_at_a_time_unless_shareable(nbd_env):
    e = nbd_env
    d = disk_cmd(e.server, e.creds, "create", "--size", "8M")
    shared = disk_cmd(e.server, e.creds, "create", "--size", "8M", "--shareable")
    assert shared["shareable"] is True and d["shareable"] is False
    # A second client (user alice with her own certificate, allowed the
    # account's disks) while account A's root holds the disk over plaintext.
    new_user(e.server, A, "alice", policy={"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "disk:*", "Resource": f"arn:aws:disk:*:{A}:disk/*"}]})
    alice_dir = e.work / "alice-x509"
    make_client_cert(alice_dir, e.ca_key, e.ca_cert, user_arn(A, "alice"))
    shutil.copy(e.tls["ca"], alice_dir / "ca-cert.pem")
    alice = Nbd(e.port, "cert", tls_dir=alice_dir)

    for disk, second_ok in [(d, False), (shared, True)]:
        holder = subprocess.Popen(
            ["qemu-io", *e.nbd["plain"].qemu(disk["id"]), "-c", "write -P 1 0 4k", "-c", "sleep 4000"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(1.5)
            p = run("qemu-img", "info", *alice.qemu(disk["id"]), check=False)
            if second_ok:
                assert p.returncode == 0, p.stderr
            else:
                assert p.returncode != 0 and "attached by" in p.stderr, p.stderr
        finally:
            holder.wait(timeout=60)
        # Once the first client is gone, the second may attach.
        run("qemu-img", "info", *alice.qemu(disk["id"]))


def test_sigkill_during_writes_keeps_every_flushed_write(nbd_env):
    e = nbd_env
    d = disk_cmd(e.server, e.creds, "create", "--size", "64M")
    n = e.nbd["plain"]
    acked: list[int] = []
    stop = threading.Event()

    def writer():
        i = 0
        while not stop.is_set() and i < 500:
            # One qemu-io per write: write, flush, exit 0 = acknowledged.
            p = n.qemu_io(d["id"], f"write -P {i % 250 + 1} {i * 65536} 64k", "flush", check=False)
            if p.returncode == 0 and "error" not in (p.stdout + p.stderr).lower():
                acked.append(i)
            else:
                return
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    time.sleep(4)
    e.server.kill()
    stop.set()
    t.join(timeout=120)
    assert len(acked) >= 3, f"only {len(acked)} writes before the kill"
    e.server.start()
    # Verify in batches (one connection for many reads).
    for lo in range(0, len(acked), 50):
        cmds = [f"read -P {i % 250 + 1} {i * 65536} 64k" for i in acked[lo:lo + 50]]
        n.qemu_io(d["id"], *cmds)


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/fuse")
                    or not os.path.exists("/dev/loop-control"),
                    reason="local attach needs root, /dev/fuse and /dev/loop-control")
def test_local_attach_mkfs_mount_detach_reattach(make_server):
    server = make_server().start()
    creds = new_account(server, A)
    d = disk_cmd(server, creds, "create", "--size", "64M")
    mnt = make_server.workdir / "mnt"
    mnt.mkdir()
    secret_text = b"ATREST-LOCAL-ATTACH-PLAINTEXT-" * 1000
    mounted = False
    try:
        a = disk_cmd(server, creds, "attach", d["id"], "--local")
        dev = a["device"]
        assert re.fullmatch(r"/dev/loop\d+", dev), a
        run("mkfs.ext4", "-q", "-F", dev)
        run("mount", dev, str(mnt))
        mounted = True
        (mnt / "a.txt").write_bytes(secret_text)
        (mnt / "sub").mkdir()
        (mnt / "sub" / "b.bin").write_bytes(os.urandom(1 << 20))
        digest = run("sha256sum", str(mnt / "sub" / "b.bin")).stdout.split()[0]
        # While it is attached and mounted, nothing under the data dir shows
        # the plaintext (the FUSE mount lives outside it).
        run("sync")
        for path in server.data_dir.rglob("*"):
            if path.is_file():
                assert b"ATREST-LOCAL-ATTACH-PLAINTEXT-" not in path.read_bytes(), path
        # Detaching while mounted is refused and changes nothing.
        p = disk_cmd(server, creds, "detach", d["id"], check=False)
        assert p.returncode != 0 and "unmount" in p.stderr, p.stderr
        run("umount", str(mnt))
        mounted = False
        disk_cmd(server, creds, "detach", d["id"])
        assert disk_cmd(server, creds, "show", d["id"])["state"] == "available"

        # Attach again (a new device perhaps): the files are intact.
        a = disk_cmd(server, creds, "attach", d["id"], "--local")
        run("mount", a["device"], str(mnt))
        mounted = True
        assert (mnt / "a.txt").read_bytes() == secret_text
        assert run("sha256sum", str(mnt / "sub" / "b.bin")).stdout.split()[0] == digest
        run("umount", str(mnt))
        mounted = False
        disk_cmd(server, creds, "detach", d["id"])
        p = disk_cmd(server, creds, "detach", d["id"], check=False)
        assert p.returncode != 0 and "not attached" in p.stderr, p.stderr
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(mnt)])
    # No plaintext of the files anywhere under the data dir.
    server.stop()
    for path in server.data_dir.rglob("*"):
        if path.is_file():
            assert b"ATREST-LOCAL-ATTACH-PLAINTEXT-" not in path.read_bytes(), path
    server.start()

    # A locked disk refuses to attach locally, naming the key.
    kms = server.client(creds=creds)
    key = kms.create_key()["KeyMetadata"]["Arn"]
    d2 = disk_cmd(server, creds, "create", "--size", "8M", "--key-id", key)
    kms.disable_key(KeyId=key)
    p = disk_cmd(server, creds, "attach", d2["id"], "--local", check=False)
    assert p.returncode != 0 and key in p.stderr, p.stderr
    kms.enable_key(KeyId=key)
    disk_cmd(server, creds, "attach", d2["id"], "--local")
    disk_cmd(server, creds, "detach", d2["id"])
