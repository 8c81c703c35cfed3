"""The root of trust. A server sealed with a passphrase (ATREST_ROOT_PASSPHRASE,
or --root-passphrase-file) works and survives restart; a wrong passphrase
makes `atrest serve` exit non-zero with a message naming the passphrase; a
data dir sealed with a key file refuses a passphrase (and the reverse) with a
message naming the right kind; the default root key file is 32 bytes, mode
0600, beside (not inside) the data dir; a key file with loose permissions or
a different key is refused; none of the refused starts damages the data dir.

Capabilities: K11 root of trust, K1 keys, K4 envelope encryption.
"""

from __future__ import annotations

import os
import stat

from conftest import expect_error

PASS = "correct horse battery staple"


def mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_passphrase_root(make_server, tmp_path):
    srv = make_server(env={"ATREST_ROOT_PASSPHRASE": PASS}).start()
    kms = srv.client()
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"sealed by a passphrase")["CiphertextBlob"]
    assert not srv.root_key_file.exists(), "a passphrase-sealed dir needs no key file"
    assert "passphrase" in srv.logs().decode(errors="replace")
    assert PASS.encode() not in srv.logs()
    for p in srv.data_dir.rglob("*"):
        if p.is_file():
            assert PASS.encode() not in p.read_bytes(), p

    assert srv.stop() == 0
    srv.start()
    kms = srv.client()
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"sealed by a passphrase"
    assert srv.stop() == 0

    rc, out = srv.run_until_exit(env={"ATREST_ROOT_PASSPHRASE": "not the passphrase"})
    assert rc != 0
    assert "passphrase" in out.lower(), out

    # Started without a passphrase (so with the default key file): refused, naming the kind.
    srv.base_env = {}
    rc, out = srv.run_until_exit()
    assert rc != 0
    assert "passphrase" in out.lower(), out
    assert not srv.root_key_file.exists(), "a refused start must not create a key file"

    # The passphrase from a file (trailing newline ignored) opens it too.
    pass_file = tmp_path / "passphrase"
    pass_file.write_text(PASS + "\n")
    pass_file.chmod(0o600)
    srv.start("--root-passphrase-file", str(pass_file))
    kms = srv.client()
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"sealed by a passphrase"
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Enabled"


def test_key_file_root(make_server, tmp_path):
    srv = make_server().start()
    kms = srv.client()
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"sealed by a key file")["CiphertextBlob"]
    assert srv.stop() == 0

    key_file = srv.root_key_file
    assert key_file.parent == srv.data_dir.parent and key_file.name == srv.data_dir.name + ".root.key"
    assert key_file.stat().st_size == 32
    assert mode(key_file) == 0o600, oct(mode(key_file))
    assert mode(srv.data_dir) == 0o700, oct(mode(srv.data_dir))
    assert mode(srv.credentials_file) == 0o600, oct(mode(srv.credentials_file))

    # A passphrase cannot open a key-file data dir; the message names the kind.
    rc, out = srv.run_until_exit(env={"ATREST_ROOT_PASSPHRASE": PASS})
    assert rc != 0
    assert "key-file" in out or "key file" in out, out

    # Another 32-byte key is refused.
    other = tmp_path / "other.root.key"
    other.write_bytes(os.urandom(32))
    other.chmod(0o600)
    rc, out = srv.run_until_exit("--root-key-file", str(other))
    assert rc != 0 and "root key file" in out.lower(), out

    # A key file other users could read is refused.
    key_file.chmod(0o644)
    try:
        rc, out = srv.run_until_exit()
        assert rc != 0 and "600" in out, out
    finally:
        key_file.chmod(0o600)

    # None of that harmed anything.
    srv.start()
    kms = srv.client()
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"sealed by a key file"
    expect_error("NotFoundException", kms.describe_key, KeyId="alias/none")
