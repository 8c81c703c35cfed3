"""The KMIP key provider against PyKMIP's server, over mutual TLS.

`atrest provider check` runs the conformance suite against a PyKMIP server
started by kmip_fixture (a throwaway CA, server and client certificates,
TLS 1.2, client certificates required): an Active AES-256 key passes every
check; a key revoked, destroyed, not yet activated or not AES-256 fails with
the reason in the check's detail; a client certificate from another CA is
refused by the server's TLS handshake, a server atrest does not trust is a
configuration error, and an address nobody listens on is reported
unavailable within a bounded time. No output carries key material.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time

import pytest

from conftest import ATREST_BIN, free_port, subprocess_env
from kmip_fixture import kmip_server

# PyKMIP 0.11 uses APIs SQLAlchemy 2 and Python's ssl deprecate.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:kmip.*")


@pytest.fixture(scope="module")
def kmip(tmp_path_factory):
    with kmip_server(tmp_path_factory.mktemp("kmip")) as server:
        yield server


def provider_check(providers, name: str, key: str, timeout: float = 120) -> tuple[int, dict, str]:
    """Runs `atrest provider check`; returns (exit code, JSON report, all output)."""
    if not ATREST_BIN.exists():
        pytest.fail(f"atrest binary not found at {ATREST_BIN}; build it (cargo build -p atrest) or set ATREST_BIN")
    p = subprocess.run(
        [str(ATREST_BIN), "provider", "check", "--providers", str(providers), "--provider", name, "--key", key],
        capture_output=True, text=True, timeout=timeout, env=subprocess_env(), stdin=subprocess.DEVNULL,
    )
    try:
        report = json.loads(p.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"provider check printed no JSON (exit {p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p.returncode, report, p.stdout + p.stderr


def checks(report: dict) -> dict[str, dict]:
    return {c["name"]: c for c in report["checks"]}


def check_named(report: dict, prefix: str) -> dict:
    found = [c for c in report["checks"] if c["name"].startswith(prefix)]
    assert len(found) == 1, f"no single check named {prefix!r} in {report}"
    return found[0]


def key_material(kmip, uid: str) -> bytes:
    with kmip.client() as c:
        return bytes(c.get(uid).value)


def assert_no_secret(output: str, *secrets: bytes) -> None:
    for s in secrets:
        for form in (s.hex(), s.hex().upper(), base64.b64encode(s).decode()):
            assert form not in output, "key material in the output"
    assert "PRIVATE KEY" not in output


def test_conformance_suite_passes(kmip, tmp_path):
    uid = kmip.create_key()
    providers = kmip.providers_file(tmp_path / "providers.json", "corp-kmip")
    code, report, out = provider_check(providers, "corp-kmip", uid)
    assert code == 0, out
    assert report["passed"] is True
    assert report["type"] == "kmip"
    assert report["provider"] == "corp-kmip"
    assert report["endpoint"] == kmip.address
    assert len(report["checks"]) >= 9
    failed = [c for c in report["checks"] if not c["passed"]]
    assert not failed, failed
    assert "Active" in check_named(report, "describe")["detail"]
    assert_no_secret(out, key_material(kmip, uid))
    # The suite changes nothing at the server.
    assert kmip.state(uid) == "ACTIVE"


@pytest.mark.parametrize("compromised,state", [(False, "Deactivated"), (True, "Compromised")])
def test_revoked_key_is_refused(kmip, tmp_path, compromised, state):
    uid = kmip.create_key()
    providers = kmip.providers_file(tmp_path / "providers.json", "corp")
    code, _, out = provider_check(providers, "corp", uid)
    assert code == 0, out

    kmip.revoke(uid, compromised=compromised)
    code, report, out = provider_check(providers, "corp", uid)
    assert code == 1, out
    assert report["passed"] is False
    describe = check_named(report, "describe")
    assert not describe["passed"] and state in describe["detail"], describe
    health = check_named(report, "the health check")
    assert not health["passed"], health
    assert "refused" in health["detail"] and state in health["detail"], health
    wrap = check_named(report, "wrap and unwrap")
    assert not wrap["passed"] and f"KMIP key {uid} is {state}" in wrap["detail"], wrap
    # Checks that need no usable key still pass: the provider works.
    assert check_named(report, "a missing key")["passed"]
    assert_no_secret(out, key_material(kmip, uid))


def test_destroyed_key_is_not_found(kmip, tmp_path):
    uid = kmip.create_key()
    providers = kmip.providers_file(tmp_path / "providers.json", "corp")
    kmip.destroy(uid)
    code, report, out = provider_check(providers, "corp", uid)
    assert code == 1, out
    for name in ("describe", "the health check", "wrap and unwrap"):
        c = check_named(report, name)
        assert not c["passed"], c
        assert "no such key" in c["detail"] or "refused" in c["detail"], c


def test_pre_active_key_is_refused(kmip, tmp_path):
    uid = kmip.create_key(activate=False)
    providers = kmip.providers_file(tmp_path / "providers.json", "corp")
    code, report, out = provider_check(providers, "corp", uid)
    assert code == 1, out
    assert "PreActive" in check_named(report, "describe")["detail"]
    assert f"KMIP key {uid} is PreActive" in check_named(report, "wrap and unwrap")["detail"]


def test_a_key_that_is_not_aes_256_is_refused(kmip, tmp_path):
    uid = kmip.create_key(length=128)
    providers = kmip.providers_file(tmp_path / "providers.json", "corp")
    code, report, out = provider_check(providers, "corp", uid)
    assert code == 1, out
    # It exists and is Active...
    assert check_named(report, "describe")["passed"]
    # ...but atrest will not wrap under it.
    wrap = check_named(report, "wrap and unwrap")
    assert not wrap["passed"] and "AES-256" in wrap["detail"] and "128" in wrap["detail"], wrap
    assert_no_secret(out, key_material(kmip, uid))


def test_client_certificate_from_another_ca_is_refused(kmip, tmp_path):
    uid = kmip.create_key()
    providers = kmip.providers_file(
        tmp_path / "providers.json", "corp",
        client_cert=str(kmip.foreign_cert), client_key=str(kmip.foreign_key),
    )
    code, report, out = provider_check(providers, "corp", uid)
    assert code == 1, out
    describe = check_named(report, "describe")
    assert not describe["passed"]
    assert "refused atrest's client certificate" in describe["detail"], describe
    assert all(not c["passed"] for c in report["checks"] if c["name"].startswith(("describe", "wrap and", "the health"))), report
    key_pem = kmip.foreign_key.read_text()
    body = "".join(key_pem.strip().splitlines()[1:-1])
    assert body[:40] not in out.replace("\n", "")
    assert_no_secret(out, key_material(kmip, uid))


def test_a_server_atrest_does_not_trust_is_a_configuration_error(kmip, tmp_path):
    uid = kmip.create_key()
    other_ca = kmip.root / "other-ca" / "ca.pem"
    providers = kmip.providers_file(tmp_path / "providers.json", "corp", ca_file=str(other_ca))
    code, report, out = provider_check(providers, "corp", uid)
    assert code == 1, out
    describe = check_named(report, "describe")
    assert not describe["passed"]
    assert "provider configuration" in describe["detail"] and "not trusted" in describe["detail"], describe


def test_unreachable_server_is_unavailable_within_bounded_time(kmip, tmp_path):
    port = free_port()  # nobody listens there
    providers = kmip.providers_file(
        tmp_path / "providers.json", "corp", address=f"127.0.0.1:{port}", timeout_ms=500, retries=1,
    )
    started = time.monotonic()
    code, report, out = provider_check(providers, "corp", "1", timeout=60)
    elapsed = time.monotonic() - started
    assert code == 1, out
    assert report["endpoint"] == f"127.0.0.1:{port}"
    describe = check_named(report, "describe")
    assert not describe["passed"] and "unavailable" in describe["detail"], describe
    # About a dozen calls, each at most one retry with backoff: seconds, not minutes.
    assert elapsed < 30, elapsed


def test_a_disk_on_a_kmip_key_locks_when_the_key_is_revoked(kmip, make_server, tmp_path):
    """An EXTERNAL_KMS key backed by a PyKMIP key: a disk under it works
    until the key is revoked in PyKMIP, then locks within the check period
    (KMIP revocation is final, so it stays locked)."""
    from conftest import atrest_client_cmd, audit_log_path, audit_records, new_account, rest_call

    uid = kmip.create_key()
    providers = kmip.providers_file(tmp_path / "providers.json", "corp-kmip")
    server = make_server(args=("--key-providers", str(providers), "--key-provider-check-interval", "1")).start()
    creds = new_account(server, "111122223333")
    kms = server.client(creds=creds)
    key = kms.create_key(Origin="EXTERNAL_KMS", CustomKeyStoreId="corp-kmip", XksKeyId=uid)["KeyMetadata"]["Arn"]
    ct = kms.encrypt(KeyId=key, Plaintext=b"kmip-backed")["CiphertextBlob"]
    assert kms.decrypt(CiphertextBlob=ct)["Plaintext"] == b"kmip-backed"
    d = json.loads(atrest_client_cmd(server, "disk", "create", "--size", "1M", "--key-id", key, env_creds=creds).stdout)
    assert rest_call(server, "POST", "/v1/snapshots", {"disk_id": d["id"]}, creds=creds).status_code == 201

    kmip.revoke(uid)
    deadline = time.monotonic() + 20
    while True:
        resp = rest_call(server, "POST", "/v1/snapshots", {"disk_id": d["id"]}, creds=creds)
        if resp.status_code == 409:
            break
        assert time.monotonic() < deadline, f"the disk did not lock: {resp.status_code} {resp.text}"
        time.sleep(0.25)
    assert resp.json()["code"] == "DiskLockedException" and key in resp.json()["message"], resp.text
    err = None
    try:
        kms.decrypt(CiphertextBlob=ct)
    except Exception as e:  # noqa: BLE001 - botocore ClientError
        err = e
    assert err is not None and err.response["Error"]["Code"] == "KMSInvalidStateException", err
    assert "Deactivated" in err.response["Error"]["Message"], err.response
    recs = audit_records(audit_log_path(server))
    assert any(r["operation"] == "ExternalKeyCheck" and "Deactivated" in r["result"] for r in recs)
