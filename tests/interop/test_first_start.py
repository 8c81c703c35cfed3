"""A first start is smooth (issue 23, point 9; O3).

* A first start refused for a wrong flag leaves nothing behind: refused
  before anything is made (NBD asked for without TLS or a plaintext
  principal), or after the data dir, the root key, the admin account and its
  credentials file were made (a metrics port already taken): the data dir,
  the root key file and the credentials file are gone, and a data dir that
  existed empty is empty again. The next start is a first start and prints
  the credentials notice.
* A start that fails on an existing installation removes nothing.
* `--nbd-plaintext-principal admin` serves plaintext NBD on loopback as the
  root of the admin account the first start made (whose id is random):
  qemu-io writes and reads the admin's disk, nbdinfo lists only the admin's
  disks.

Capabilities: O3 (operations), D3 (NBD).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess

import pytest

from conftest import atrest_client_cmd, free_port, new_account

A = "111122223333"


def start_with_metrics_port_taken(server) -> tuple[int, str]:
    """Starts `server` with a metrics port something else listens on (its
    bind fails after the data dir is open); returns the exit code and the
    output."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    try:
        return server.run_until_exit("--metrics-listen", f"127.0.0.1:{s.getsockname()[1]}")
    finally:
        s.close()


def made(server) -> dict[str, bool]:
    return {
        "data dir": server.data_dir.exists(),
        "root key": server.root_key_file.exists(),
        "credentials": server.credentials_file.exists(),
    }


def test_a_refused_first_start_leaves_nothing_behind(make_server):
    server = make_server(name="fresh")
    # Refused before anything is made.
    rc, out = server.run_until_exit("--nbd-listen", f"127.0.0.1:{free_port()}")
    assert rc != 0 and "NBD needs TLS" in out, out
    assert made(server) == {"data dir": False, "root key": False, "credentials": False}

    # Refused after the data dir, the root key, the admin and its
    # credentials were made: the metrics listener cannot bind.
    rc, out = start_with_metrics_port_taken(server)
    assert rc != 0 and "binding metrics listener" in out, out
    assert "removed what it had created" in out, out
    assert made(server) == {"data dir": False, "root key": False, "credentials": False}
    # Nothing of the account it made was ever shown to anyone.
    assert "First start" not in out, out

    # A data dir that existed empty (made by a package or systemd) is left
    # there, empty.
    server.data_dir.mkdir(mode=0o700)
    rc, out = start_with_metrics_port_taken(server)
    assert rc != 0, out
    assert server.data_dir.is_dir() and list(server.data_dir.iterdir()) == []
    assert not server.root_key_file.exists() and not server.credentials_file.exists()

    # The next start is a first start: it says so, and the admin works.
    server.start()
    out = server.last_output()
    assert "First start: created admin account" in out, out
    assert server.client().list_keys()["Keys"] == []
    server.stop()


def test_a_failed_start_of_an_existing_installation_removes_nothing(make_server):
    server = make_server(name="existing").start()
    key = server.client().create_key()["KeyMetadata"]["KeyId"]
    server.stop()
    before = {p: p.read_bytes() for p in (server.root_key_file, server.credentials_file)}
    files = sorted(p.relative_to(server.data_dir) for p in server.data_dir.rglob("*"))
    rc, out = start_with_metrics_port_taken(server)
    assert rc != 0 and "binding metrics listener" in out, out
    assert "removed what it had created" not in out, out
    assert {p: p.read_bytes() for p in before} == before
    assert sorted(p.relative_to(server.data_dir) for p in server.data_dir.rglob("*")) == files
    server.start()
    assert server.client().describe_key(KeyId=key)["KeyMetadata"]["Enabled"]
    server.stop()


@pytest.mark.skipif(not all(shutil.which(t) for t in ("qemu-io", "nbdinfo")),
                    reason="qemu-utils and libnbd-bin are installed by scripts/test.sh")
def test_plaintext_nbd_as_the_admin_without_knowing_its_account_id(make_server):
    port = free_port()
    server = make_server(args=("--nbd-listen", f"127.0.0.1:{port}",
                               "--nbd-plaintext-principal", "admin")).start()
    out = server.last_output()
    assert "plaintext on loopback allowed" in out, out
    admin = json.loads(atrest_client_cmd(server, "disk", "create", "--size", "8M").stdout)
    # Another account's disk is not the admin's.
    other = new_account(server, A)
    theirs = json.loads(atrest_client_cmd(server, "disk", "create", "--size", "8M", env_creds=other).stdout)

    uri = f"nbd://127.0.0.1:{port}/{admin['id']}"
    p = subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x5c 0 64k", "-c", "read -P 0x5c 0 64k", uri],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "read 65536/65536" in p.stdout, (p.stdout, p.stderr)
    p = subprocess.run(["nbdinfo", "--list", "--json", f"nbd://127.0.0.1:{port}"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    names = [e["export-name"] for e in json.loads(p.stdout)["exports"]]
    assert admin["id"] in names and theirs["id"] not in names, names
    p = subprocess.run(["qemu-io", "-f", "raw", "-c", "read 0 4k", f"nbd://127.0.0.1:{port}/{theirs['id']}"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0, p.stdout
    server.stop()
