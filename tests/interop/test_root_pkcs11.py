"""The root of trust in a PKCS#11 token, with SoftHSM2 as the token.

A server started with --root-pkcs11-module/--root-pkcs11-token (the PIN from
ATREST_ROOT_PKCS11_PIN or --root-pkcs11-pin-file) generates its wrapping key
in the token and keeps only the wrapped root key in root.json; keys and
ciphertexts survive a restart; nothing in the data dir but the store changes
across restarts; a wrong PIN, a wrong token label, a missing token, or the
wrong kind of root source makes `atrest serve` exit non-zero with a message
that says which, and none of these refused starts harms the data dir.

Each test gets its own SoftHSM2 token dir and configuration (SOFTHSM2_CONF
is passed to the server only). Without SoftHSM2 the tests fail, saying to
install the softhsm2 package (scripts/test.sh installs it).

Capabilities: K11 root of trust, K1 keys, K4 envelope encryption.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

MODULE_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib64/softhsm/libsofthsm2.so",
)
TOKEN = "atrest-interop"
OTHER_TOKEN = "other-token"
PIN = "interop-pin-4917"
SO_PIN = "so-pin-5678"
# The metadata store (and the audit trail beside it) change as the server
# runs; every other file in the data dir is written once, at first start.
STORE_FILES = {"kms.redb", "control.redb"}  # the key service's and the control plane's stores
STORE_DIRS = ("audit/", "disks/")  # the audit trail and the disk engine's store and pool


@dataclass
class SoftHsm:
    module: Path
    conf: Path
    tokendir: Path

    @property
    def env(self) -> dict[str, str]:
        return {"SOFTHSM2_CONF": str(self.conf)}

    def init_token(self, label: str, pin: str = PIN) -> None:
        p = subprocess.run(
            ["softhsm2-util", "--init-token", "--free", "--label", label, "--pin", pin, "--so-pin", SO_PIN],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert p.returncode == 0, f"softhsm2-util --init-token failed:\n{p.stdout}{p.stderr}"


@pytest.fixture
def softhsm(tmp_path) -> SoftHsm:
    """A private SoftHSM2 token dir with one token, TOKEN (user PIN: PIN)."""
    module = next((Path(m) for m in MODULE_CANDIDATES if Path(m).exists()), None)
    if module is None or shutil.which("softhsm2-util") is None:
        pytest.fail(
            "SoftHSM2 is not installed (no libsofthsm2.so or no softhsm2-util): "
            "install the softhsm2 package (apt-get install -y softhsm2); scripts/test.sh installs it"
        )
    tokendir = tmp_path / "softhsm-tokens"
    tokendir.mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokendir}\nobjectstore.backend = file\nlog.level = ERROR\n")
    hsm = SoftHsm(module=module, conf=conf, tokendir=tokendir)
    hsm.init_token(TOKEN)
    return hsm


def pkcs11_args(hsm: SoftHsm, token: str = TOKEN) -> tuple[str, ...]:
    return ("--root-pkcs11-module", str(hsm.module), "--root-pkcs11-token", token)


def pkcs11_server(make_server, hsm: SoftHsm, **kw):
    """A server sealed by the token; the PIN comes from ATREST_ROOT_PKCS11_PIN."""
    return make_server(args=pkcs11_args(hsm), env={**hsm.env, "ATREST_ROOT_PKCS11_PIN": PIN}, **kw)


def snapshot(data_dir: Path) -> dict[str, str]:
    """SHA-256 of every file in the data dir, by relative path."""
    return {
        str(p.relative_to(data_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(data_dir.rglob("*"))
        if p.is_file()
    }


def without_store(snap: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in snap.items() if k not in STORE_FILES and not k.startswith(STORE_DIRS)}


def test_pkcs11_root_survives_restart(make_server, softhsm, tmp_path):
    srv = pkcs11_server(make_server, softhsm).start()
    kms = srv.client()
    key_id = kms.create_key(Description="sealed by the token")["KeyMetadata"]["KeyId"]
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"sealed by a PKCS#11 token")["CiphertextBlob"]
    assert srv.stop() == 0

    out = srv.logs().decode(errors="replace")
    assert f"PKCS#11 key 'atrest-root' in token '{TOKEN}'" in out, out
    assert not srv.root_key_file.exists(), "a PKCS#11-sealed data dir needs no key file"

    desc = json.loads((srv.data_dir / "root.json").read_text())
    assert desc["kind"] == "pkcs11", desc
    assert set(desc) == {"v", "kind", "check", "pkcs11"}, desc
    assert set(desc["pkcs11"]) == {"token_label", "key_label", "iv", "wrapped"}, desc
    assert desc["pkcs11"]["token_label"] == TOKEN and desc["pkcs11"]["key_label"] == "atrest-root", desc
    assert len(bytes.fromhex(desc["pkcs11"]["iv"])) == 12, desc
    assert stat.S_IMODE(os.stat(srv.data_dir / "root.json").st_mode) == 0o600
    # Neither the PIN nor the module path is kept, and the PIN is never logged.
    assert PIN.encode() not in srv.logs()
    for p in srv.data_dir.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            assert PIN.encode() not in data, p
            assert b"libsofthsm2" not in data, p

    before = snapshot(srv.data_dir)
    assert STORE_FILES <= set(before), before

    # Restart (the PIN from a file this time; a trailing newline is ignored,
    # and the file wins over the environment): the key still decrypts.
    pin_file = tmp_path / "pin"
    pin_file.write_text(PIN + "\n")
    pin_file.chmod(0o600)
    srv.start("--root-pkcs11-pin-file", str(pin_file), env={"ATREST_ROOT_PKCS11_PIN": "not-the-pin"})
    kms = srv.client()
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"sealed by a PKCS#11 token"
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["Description"] == "sealed by the token"
    assert srv.stop() == 0

    # Nothing but the store changed: root.json was not rewritten, no other
    # file appeared or went away.
    after = snapshot(srv.data_dir)
    assert without_store(after) == without_store(before), (before, after)
    assert "root.json" in set(without_store(after)), after
    assert "admin-credentials" not in set(without_store(after)), after

    # Without the token, the key material cannot be opened: the start fails
    # naming the token, and harms nothing.
    away = softhsm.tokendir.with_name("tokens-moved-away")
    softhsm.tokendir.rename(away)
    try:
        rc, out = srv.run_until_exit()
        assert rc != 0, out
        assert f"'{TOKEN}'" in out and "PKCS#11" in out, out
        # An empty token dir: the module works but holds no such token.
        softhsm.tokendir.mkdir()
        rc, out = srv.run_until_exit()
        assert rc != 0, out
        assert f"no PKCS#11 token labelled '{TOKEN}'" in out, out
        assert "cannot be unsealed" in out, out
        softhsm.tokendir.rmdir()
    finally:
        if not softhsm.tokendir.exists():
            away.rename(softhsm.tokendir)
    assert without_store(snapshot(srv.data_dir)) == without_store(before)

    # With the token back, everything opens again.
    srv.start()
    kms = srv.client()
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"sealed by a PKCS#11 token"


def test_pkcs11_refusals(make_server, softhsm):
    srv = pkcs11_server(make_server, softhsm).start()
    kms = srv.client()
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"still here")["CiphertextBlob"]
    assert srv.stop() == 0
    before = without_store(snapshot(srv.data_dir))

    # A wrong PIN: refused, naming the PIN problem.
    rc, out = srv.run_until_exit(env={"ATREST_ROOT_PKCS11_PIN": "wrong-pin-0000"})
    assert rc != 0, out
    assert "PIN" in out and "CKR_PIN_INCORRECT" in out, out
    assert "wrong-pin-0000" not in out

    # No PIN at all: refused before touching the token, saying how to give one.
    srv.base_env = dict(softhsm.env)
    rc, out = srv.run_until_exit()
    assert rc != 0, out
    assert "--root-pkcs11-pin-file" in out and "ATREST_ROOT_PKCS11_PIN" in out, out
    srv.base_env = {**softhsm.env, "ATREST_ROOT_PKCS11_PIN": PIN}

    # A token label that is not there: refused, listing the labels present.
    softhsm.init_token(OTHER_TOKEN, "other-pin-1111")
    srv.base_args = list(pkcs11_args(softhsm, "no-such-token"))
    rc, out = srv.run_until_exit()
    assert rc != 0, out
    assert "'no-such-token'" in out and f"'{TOKEN}'" in out and f"'{OTHER_TOKEN}'" in out, out

    # Another token, holding a key of the same label (made by another data
    # dir's first start), does not open it.
    other = make_server(
        args=pkcs11_args(softhsm, OTHER_TOKEN),
        env={**softhsm.env, "ATREST_ROOT_PKCS11_PIN": "other-pin-1111"},
    )
    other.start()
    assert other.stop() == 0
    srv.base_args = list(pkcs11_args(softhsm, OTHER_TOKEN))
    rc, out = srv.run_until_exit(env={"ATREST_ROOT_PKCS11_PIN": "other-pin-1111"})
    assert rc != 0, out
    assert "does not open this data dir" in out and f"key 'atrest-root' in token '{TOKEN}'" in out, out
    srv.base_args = list(pkcs11_args(softhsm))

    # A key label that is not in the token: refused; no key is created for an
    # existing data dir.
    rc, out = srv.run_until_exit("--root-pkcs11-key-label", "another-key")
    assert rc != 0, out
    assert "'another-key'" in out and "cannot be unsealed" in out, out

    # A module that cannot be loaded: refused, naming the path.
    srv.base_args = ["--root-pkcs11-module", "/nonexistent/libpkcs11.so", "--root-pkcs11-token", TOKEN]
    rc, out = srv.run_until_exit()
    assert rc != 0, out
    assert "/nonexistent/libpkcs11.so" in out and "module" in out, out

    # Started without the PKCS#11 flags (so with the default key file): refused,
    # naming the kind; no key file is created.
    srv.base_args = []
    rc, out = srv.run_until_exit()
    assert rc != 0, out
    assert "PKCS#11" in out, out
    assert not srv.root_key_file.exists(), "a refused start must not create a key file"

    # The PKCS#11 flags conflict with the other sources.
    rc, out = srv.run_until_exit(*pkcs11_args(softhsm), "--root-key-file", str(srv.root_key_file))
    assert rc == 2 and "cannot be used with" in out, out

    # None of that harmed anything.
    assert without_store(snapshot(srv.data_dir)) == before
    srv.base_args = list(pkcs11_args(softhsm))
    srv.start()
    assert srv.client().decrypt(CiphertextBlob=blob)["Plaintext"] == b"still here"


def test_key_file_data_dir_refuses_pkcs11(make_server, softhsm):
    srv = make_server().start()
    assert srv.stop() == 0
    before = snapshot(srv.data_dir)
    rc, out = srv.run_until_exit(*pkcs11_args(softhsm), env={**softhsm.env, "ATREST_ROOT_PKCS11_PIN": PIN})
    assert rc != 0, out
    assert "key-file" in out, out
    assert without_store(snapshot(srv.data_dir)) == without_store(before)
    srv.start()
