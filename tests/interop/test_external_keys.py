"""Keys held in another KMS (issue 7: K12, K11): atrest keys with origin
EXTERNAL_KMS whose data keys a key provider wraps, and a root of trust a
provider holds.

Providers proven here (the KMIP, Azure Key Vault and Vault transit providers
have their own files: test_provider_kmip.py, test_provider_fakes.py):

* a second atrest server acting as AWS KMS (SigV4, static credentials):
  the conformance suite (`atrest provider check`), EXTERNAL_KMS keys used
  through boto3, revocation at the remote side (DisableKey there) seen by
  the health check within its period (the key turns unusable, a disk under
  it locks, and so does a PostgreSQL instance under the close policy; the
  reason is shown by DescribeKey and the locks, and audited), recovery when
  the remote key is enabled again, and a rotation there that needs no
  change here;
* moto's server (a third-party AWS KMS implementation): the conformance
  suite, and an EXTERNAL_KMS key used end to end (moto does not enforce key
  states, so it proves wrap and unwrap only);
* an unreachable provider: the server starts, reports the custom key store
  FAILED, answers DependencyTimeoutException (503) for its keys, and
  everything else works;
* the root of trust wrapped by a provider (auto-unseal): the server starts
  and restarts on it, and does not start once the remote key is disabled.

No secret of a provider (the remote secret access key) appears in atrest's
logs, audit trail or data dir.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from conftest import (
    ATREST_BIN,
    audit_log_path,
    audit_records,
    free_port,
    new_account,
    rest_call,
    atrest_client_cmd,
)

A = "111122223333"
REMOTE = "444455556666"


def provider_check(providers: Path, name: str, key: str, *extra: str) -> tuple[int, dict]:
    p = subprocess.run(
        [str(ATREST_BIN), "provider", "check", "--providers", str(providers), "--provider", name, "--key", key, *extra],
        capture_output=True, text=True, timeout=120,
    )
    try:
        out = json.loads(p.stdout)
    except json.JSONDecodeError:
        out = {"stdout": p.stdout, "stderr": p.stderr}
    return p.returncode, out


def write_providers(path: Path, providers: dict) -> Path:
    path.write_text(json.dumps(providers))
    os.chmod(path, 0o600)
    return path


def aws_provider(endpoint: str, creds: tuple[str, str]) -> dict:
    return {
        "type": "aws-kms", "region": "us-east-1", "endpoint": endpoint,
        "access_key_id": creds[0], "secret_access_key": creds[1],
        "timeout_ms": 2000, "retries": 1,
    }


def wait_until(what: str, fn, timeout: float = 20):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.25)
    raise AssertionError(f"{what}: not within {timeout}s (last {last!r})")


@pytest.fixture
def remote_and_local(make_server):
    """A second atrest (the "customer's KMS") and a server using it as a key
    provider named `corp`, checked every second."""
    remote = make_server(name="remote").start()
    rcreds = new_account(remote, REMOTE)
    rkms = remote.client(creds=rcreds)
    rkey = rkms.create_key(Description="customer key in their own KMS")["KeyMetadata"]["Arn"]
    providers = write_providers(make_server.workdir / "providers.json", {"corp": aws_provider(remote.url, rcreds)})
    local = make_server(name="local", args=(
        "--key-providers", str(providers), "--key-provider-check-interval", "1",
    )).start()
    return remote, rcreds, rkms, rkey, providers, local


def test_conformance_against_a_second_atrest(remote_and_local):
    _, _, _, rkey, providers, _ = remote_and_local
    rc, out = provider_check(providers, "corp", rkey)
    assert rc == 0 and out["passed"] is True, json.dumps(out, indent=1)
    assert out["type"] == "aws-kms" and len(out["checks"]) >= 9, out
    assert all(c["passed"] for c in out["checks"]), out


def test_external_key_use_revocation_and_recovery(remote_and_local):
    remote, rcreds, rkms, rkey, _, local = remote_and_local
    creds = new_account(local, A)
    kms = local.client(creds=creds)

    stores = kms.describe_custom_key_stores()["CustomKeyStores"]
    assert [(s["CustomKeyStoreId"], s["CustomKeyStoreType"], s["ConnectionState"]) for s in stores] == [
        ("corp", "EXTERNAL_KEY_STORE", "CONNECTED")], stores
    assert stores[0]["XksProxyConfiguration"]["UriEndpoint"].startswith(remote.url), stores

    meta = kms.create_key(Origin="EXTERNAL_KMS", CustomKeyStoreId="corp", XksKeyId=rkey,
                          Description="backed by the customer's KMS")["KeyMetadata"]
    assert meta["Origin"] == "EXTERNAL_KMS" and meta["KeyState"] == "Enabled", meta
    assert meta["CustomKeyStoreId"] == "corp" and meta["XksKeyConfiguration"]["Id"] == rkey, meta
    key = meta["Arn"]

    # Every use reaches the provider: the remote key's audit shows Encrypt
    # and Decrypt with atrest's wrapping context.
    ct = kms.encrypt(KeyId=key, Plaintext=b"external secret", EncryptionContext={"app": "x"})["CiphertextBlob"]
    assert ct[0] == 2, "an external key's ciphertext is a version-2 blob"
    assert kms.decrypt(CiphertextBlob=ct, EncryptionContext={"app": "x"})["Plaintext"] == b"external secret"
    with pytest.raises(ClientError) as e:
        kms.decrypt(CiphertextBlob=ct, EncryptionContext={"app": "y"})
    assert e.value.response["Error"]["Code"] == "InvalidCiphertextException"
    dk = kms.generate_data_key(KeyId=key, KeySpec="AES_256")
    assert kms.decrypt(CiphertextBlob=dk["CiphertextBlob"])["Plaintext"] == dk["Plaintext"]
    remote_ops = [r["operation"] for r in audit_records(audit_log_path(remote)) if r.get("key_arn") == rkey]
    assert remote_ops.count("Encrypt") >= 2 and remote_ops.count("Decrypt") >= 2, remote_ops

    # A CMEK project can use it: its provider is the custom key store.
    pid = json.loads(atrest_client_cmd(local, "project", "create", "ext", "--cmek", env_creds=creds).stdout)["id"]
    p = json.loads(atrest_client_cmd(local, "project", "set-key", pid, "--key", key, env_creds=creds).stdout)
    assert p["keys"]["us-east-1"] == {**p["keys"]["us-east-1"], "key_arn": key, "provider": "corp"}, p

    # Rotation is the provider's business.
    with pytest.raises(ClientError) as e:
        kms.enable_key_rotation(KeyId=key)
    assert e.value.response["Error"]["Code"] == "UnsupportedOperationException"

    # A disk under the external key.
    d = json.loads(atrest_client_cmd(local, "disk", "create", "--size", "1M", "--key-id", key, env_creds=creds).stdout)
    assert rest_call(local, "POST", "/v1/snapshots", {"disk_id": d["id"]}, creds=creds).status_code == 201

    # The customer disables the key in their KMS: within the check period
    # the key is unusable here, the disk is locked, DescribeKey says why.
    rkms.disable_key(KeyId=rkey)
    # (botocore drops members it does not model: read DescribeKey raw.)
    raw = wait_until("the refusal is seen", lambda: (
        (s := rest_describe(local, creds, key))["ExternalKeyStatus"]["State"] == "REFUSED" and s), timeout=15)
    assert raw["ExternalKeyStatus"]["State"] == "REFUSED", raw
    assert "disabled" in raw["ExternalKeyStatus"]["Reason"].lower(), raw
    with pytest.raises(ClientError) as e:
        kms.encrypt(KeyId=key, Plaintext=b"x")
    assert e.value.response["Error"]["Code"] == "KMSInvalidStateException", e.value.response
    assert "corp" in e.value.response["Error"]["Message"], e.value.response
    with pytest.raises(ClientError) as e:
        kms.decrypt(CiphertextBlob=ct, EncryptionContext={"app": "x"})
    assert e.value.response["Error"]["Code"] == "KMSInvalidStateException"
    resp = rest_call(local, "POST", "/v1/snapshots", {"disk_id": d["id"]}, creds=creds)
    assert resp.status_code == 409 and resp.json()["code"] == "DiskLockedException", resp.text
    msg = resp.json()["message"]
    assert key in msg and "provider" in msg and "disabled" in msg.lower(), msg
    recs = audit_records(audit_log_path(local))
    refused = [r for r in recs if r["operation"] == "ExternalKeyCheck" and r.get("key_arn") == key]
    assert refused and refused[-1]["result"].startswith("ExternalKeyRefused") and "disabled" in refused[-1]["result"].lower(), refused

    # The customer enables it again: usable, the disk unlocks, old
    # ciphertexts decrypt.
    rkms.enable_key(KeyId=rkey)
    wait_until("the key is usable again", lambda: rest_describe(local, creds, key)["ExternalKeyStatus"]["State"] == "USABLE", timeout=15)
    assert kms.decrypt(CiphertextBlob=ct, EncryptionContext={"app": "x"})["Plaintext"] == b"external secret"
    assert rest_call(local, "POST", "/v1/snapshots", {"disk_id": d["id"]}, creds=creds).status_code == 201
    recs = audit_records(audit_log_path(local))
    assert any(r["operation"] == "ExternalKeyCheck" and r["result"] == "ExternalKeyRestored" for r in recs)

    # The customer rotates the key in their KMS: nothing changes here; old
    # and new ciphertexts decrypt.
    rkms.rotate_key_on_demand(KeyId=rkey)
    assert len(rkms.list_key_rotations(KeyId=rkey)["Rotations"]) == 1
    assert kms.decrypt(CiphertextBlob=ct, EncryptionContext={"app": "x"})["Plaintext"] == b"external secret"
    ct2 = kms.encrypt(KeyId=key, Plaintext=b"after rotation")["CiphertextBlob"]
    assert kms.decrypt(CiphertextBlob=ct2)["Plaintext"] == b"after rotation"

    # Bad requests: typed errors.
    for kwargs, code in [
        ({"Origin": "EXTERNAL_KMS", "CustomKeyStoreId": "nope", "XksKeyId": rkey}, "CustomKeyStoreNotFoundException"),
        ({"Origin": "EXTERNAL_KMS", "CustomKeyStoreId": "corp", "XksKeyId": "00000000-0000-4000-8000-000000000000"}, "XksKeyNotFoundException"),
        ({"Origin": "EXTERNAL_KMS", "CustomKeyStoreId": "corp"}, "ValidationException"),
        ({"CustomKeyStoreId": "corp", "XksKeyId": rkey}, "UnsupportedOperationException"),
    ]:
        with pytest.raises(ClientError) as e:
            kms.create_key(**kwargs)
        assert e.value.response["Error"]["Code"] == code, (kwargs, e.value.response)
    rkms.disable_key(KeyId=rkey)
    with pytest.raises(ClientError) as e:
        kms.create_key(Origin="EXTERNAL_KMS", CustomKeyStoreId="corp", XksKeyId=rkey)
    assert e.value.response["Error"]["Code"] == "XksKeyInvalidConfigurationException", e.value.response
    rkms.enable_key(KeyId=rkey)

    # No provider secret anywhere atrest writes.
    secret = rcreds[1].encode()
    assert secret not in local.logs()
    for path in local.data_dir.rglob("*"):
        if path.is_file():
            assert secret not in path.read_bytes(), path


def rest_describe(server, creds, key: str) -> dict:
    """DescribeKey's raw JSON (with atrest's ExternalKeyStatus member)."""
    import requests
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    body = json.dumps({"KeyId": key})
    req = AWSRequest(method="POST", url=server.url + "/", data=body, headers={
        "Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "TrentService.DescribeKey"})
    SigV4Auth(Credentials(*creds), "kms", "us-east-1").add_auth(req)
    resp = requests.post(server.url + "/", data=body, headers=dict(req.headers), timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()["KeyMetadata"]


def test_moto_as_the_provider(make_server):
    work = make_server.workdir
    port = free_port()
    moto_bin = Path(sys.executable).with_name("moto_server")
    log = open(work / "moto.log", "wb")
    moto = subprocess.Popen([str(moto_bin), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        mkms = boto3.client("kms", endpoint_url=url, region_name="us-east-1", aws_access_key_id="moto",
                            aws_secret_access_key="moto-secret", config=Config(retries={"max_attempts": 1}))
        wait_until("moto answers", lambda: _answers(mkms), timeout=30)
        mkey = mkms.create_key()["KeyMetadata"]["KeyId"]
        providers = write_providers(work / "moto-providers.json", {
            "moto": {**aws_provider(url, ("moto", "moto-secret"))}})
        rc, out = provider_check(providers, "moto", mkey)
        assert rc == 0 and out["passed"], json.dumps(out, indent=1)

        server = make_server(args=("--key-providers", str(providers))).start()
        creds = new_account(server, A)
        kms = server.client(creds=creds)
        key = kms.create_key(Origin="EXTERNAL_KMS", CustomKeyStoreId="moto", XksKeyId=mkey)["KeyMetadata"]["Arn"]
        ct = kms.encrypt(KeyId=key, Plaintext=b"via moto")["CiphertextBlob"]
        assert kms.decrypt(CiphertextBlob=ct)["Plaintext"] == b"via moto"
        # A ciphertext whose wrapped data key was altered is refused (the
        # last byte of moto's ciphertext: its first 36 name the key).
        bad = bytearray(ct)
        n = int.from_bytes(ct[21:23], "big")
        bad[23 + n - 1] ^= 0x01
        with pytest.raises(ClientError) as e:
            kms.decrypt(CiphertextBlob=bytes(bad))
        assert e.value.response["Error"]["Code"] == "InvalidCiphertextException", e.value.response
    finally:
        moto.send_signal(signal.SIGTERM)
        try:
            moto.wait(timeout=15)
        except subprocess.TimeoutExpired:
            moto.kill()
            moto.wait()
        log.close()


def _answers(client) -> bool:
    try:
        client.list_keys()
        return True
    except Exception:  # noqa: BLE001 - not up yet
        return False


def test_an_unreachable_provider_does_not_stop_the_rest(make_server):
    work = make_server.workdir
    remote = make_server(name="remote").start()
    rcreds = new_account(remote, REMOTE)
    rkms = remote.client(creds=rcreds)
    rkey = rkms.create_key()["KeyMetadata"]["Arn"]
    providers = write_providers(work / "providers.json", {"corp": aws_provider(remote.url, rcreds)})
    server = make_server(name="local", args=(
        "--key-providers", str(providers), "--key-provider-check-interval", "1")).start()
    creds = new_account(server, A)
    kms = server.client(creds=creds)
    key = kms.create_key(Origin="EXTERNAL_KMS", CustomKeyStoreId="corp", XksKeyId=rkey)["KeyMetadata"]["Arn"]
    ct = kms.encrypt(KeyId=key, Plaintext=b"before")["CiphertextBlob"]

    # The provider goes away; atrest restarts without it.
    remote.stop()
    server.stop()
    server.start()
    kms = server.client(creds=creds)
    stores = wait_until("the store is reported FAILED", lambda: (
        (s := kms.describe_custom_key_stores(CustomKeyStoreId="corp")["CustomKeyStores"])
        and s[0]["ConnectionState"] == "FAILED" and s), timeout=20)
    assert stores[0]["ConnectionErrorCode"] == "XKS_PROXY_NOT_REACHABLE", stores
    started = time.monotonic()
    with pytest.raises(ClientError) as e:
        kms.decrypt(CiphertextBlob=ct)
    assert e.value.response["Error"]["Code"] == "DependencyTimeoutException", e.value.response
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert time.monotonic() - started < 15, "a dead provider must fail within its timeout and retries"
    with pytest.raises(ClientError) as e:
        kms.create_key(Origin="EXTERNAL_KMS", CustomKeyStoreId="corp", XksKeyId=rkey)
    assert e.value.response["Error"]["Code"] == "CustomKeyStoreInvalidStateException", e.value.response
    # Everything not under the provider works.
    own = kms.create_key()["KeyMetadata"]["Arn"]
    assert kms.decrypt(CiphertextBlob=kms.encrypt(KeyId=own, Plaintext=b"ok")["CiphertextBlob"])["Plaintext"] == b"ok"
    d = json.loads(atrest_client_cmd(server, "disk", "create", "--size", "1M", "--key-id", own, env_creds=creds).stdout)
    assert d["id"]
    # Not a revocation: the key is not locked, only unreachable.
    assert rest_describe(server, creds, key)["ExternalKeyStatus"]["State"] == "UNREACHABLE"


def test_root_of_trust_in_an_external_kms(make_server):
    work = make_server.workdir
    remote = make_server(name="remote").start()
    rcreds = new_account(remote, REMOTE)
    rkms = remote.client(creds=rcreds)
    rkey = rkms.create_key(Description="atrest root key wrapper")["KeyMetadata"]["Arn"]
    providers = write_providers(work / "providers.json", {"corp": aws_provider(remote.url, rcreds)})
    root_args = ("--key-providers", str(providers), "--root-provider", "corp", "--root-provider-key", rkey)
    server = make_server(name="sealed", args=root_args).start()
    desc = json.loads((server.data_dir / "root.json").read_text())
    assert desc["kind"] == "provider" and desc["provider"]["key"] == rkey, desc
    assert not server.root_key_file.exists(), "no root key file when a provider holds the root"
    creds = new_account(server, A)
    kms = server.client(creds=creds)
    key = kms.create_key()["KeyMetadata"]["Arn"]
    ct = kms.encrypt(KeyId=key, Plaintext=b"sealed by the provider")["CiphertextBlob"]
    server.stop()
    server.start()
    assert server.client(creds=creds).decrypt(CiphertextBlob=ct)["Plaintext"] == b"sealed by the provider"
    server.stop()

    # The customer disables the wrapping key: the server does not start.
    rkms.disable_key(KeyId=rkey)
    code, out = server.run_until_exit()
    assert code != 0 and "corp" in out and "disabled" in out.lower(), out
    assert rcreds[1] not in out
    rkms.enable_key(KeyId=rkey)
    server.start()
    assert server.client(creds=creds).decrypt(CiphertextBlob=ct)["Plaintext"] == b"sealed by the provider"


def test_an_instance_on_an_external_key_stops_when_the_customer_revokes_it(make_server):
    """The close policy: a PostgreSQL instance whose disk is under an
    external key stops within the check periods once the customer disables
    the key in their own KMS, and starts again once they enable it."""
    from conftest import create_db, psql, sql_value
    from test_db import db_json, wait_state

    work = make_server.workdir
    remote = make_server(name="remote").start()
    rcreds = new_account(remote, REMOTE)
    rkms = remote.client(creds=rcreds)
    rkey = rkms.create_key()["KeyMetadata"]["Arn"]
    providers = write_providers(work / "providers.json", {"corp": aws_provider(remote.url, rcreds)})
    local = make_server(name="local", args=(
        "--key-providers", str(providers), "--key-provider-check-interval", "1",
        "--disk-on-key-loss", "close", "--disk-close-after", "1", "--disk-key-check-interval", "1",
    )).start()
    kms = local.client()
    key = kms.create_key(Origin="EXTERNAL_KMS", CustomKeyStoreId="corp", XksKeyId=rkey)["KeyMetadata"]["Arn"]
    v = create_db(local, "ext", "--key", key, "--size", "512M")
    assert sql_value(v["port"], "SELECT 1") == "1"

    rkms.disable_key(KeyId=rkey)
    s = wait_state(local, "ext", "locked", timeout=60)
    assert key in s["reason"] and "provider" in s["reason"] and "disabled" in s["reason"].lower(), s
    assert psql(v["port"], "SELECT 1", check=False).returncode != 0

    rkms.enable_key(KeyId=rkey)
    wait_until("the key is usable again", lambda: rest_describe(local, local.credentials(), key)["ExternalKeyStatus"]["State"] == "USABLE", timeout=15)
    assert db_json(local, "start", "ext")["state"] == "running"
    assert sql_value(v["port"], "SELECT 1") == "1"
