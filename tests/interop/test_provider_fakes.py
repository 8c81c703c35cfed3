"""The Azure Key Vault and Vault transit key providers, through
`atrest provider check`, against FAKES of both services (tests/interop/fakes:
written from the services' public REST docs; not the real services).

Each test starts its fake as a child process on a free loopback port, writes
a providers file into a private temp dir, runs the conformance suite with
`atrest provider check`, changes the fake (disable, delete, remove access,
rotate, inject failures) and checks again. Fakes are stopped by pid and temp
dirs removed whatever the outcome.

What needs one provider instance across calls (old wrapped keys unwrap
after a rotation, tokens cached and refreshed on a 401, rewrap) is proven by
crates/keyprovider/tests/provider_fakes.rs against the same fakes
(ATREST_TEST_PYTHON=<this venv's python> cargo test -p atrest-keyprovider
--test provider_fakes).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import ATREST_BIN, subprocess_env
from fakes.control import Fake

AZ_SECRET = "az-Client~Secret.0123456789-abcdef"
VAULT_TOKEN = "hvs.CAESIfakeVaultToken0123456789"
RID = "/subscriptions/sub-1/resourceGroups/rg-1/providers/Microsoft.KeyVault/vaults/vault-1"


@pytest.fixture
def tmp():
    d = Path(tempfile.mkdtemp(prefix="atrest-provider-fakes-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def secret_file(tmp: Path, name: str, value: str) -> Path:
    p = tmp / name
    p.write_text(value + "\n")
    p.chmod(0o600)
    return p


@pytest.fixture
def azure(tmp):
    f = Fake(
        "azure_key_vault",
        "--client-secret-file",
        str(secret_file(tmp, "fake-secret", AZ_SECRET)),
        "--tenant",
        "tenant-1",
        "--client-id",
        "client-1",
        "--vault-resource-id",
        RID,
        "--location",
        "westeurope",
        "--key",
        "k1",
        "--oct-key",
        "hsm1",
        env=subprocess_env(),
    )
    try:
        yield f
    finally:
        f.stop()


@pytest.fixture
def vault(tmp):
    f = Fake(
        "vault_transit",
        "--token-file",
        str(secret_file(tmp, "fake-token", VAULT_TOKEN)),
        "--key",
        "k1",
        env=subprocess_env(),
    )
    try:
        yield f
    finally:
        f.stop()


def azure_config(fake: Fake, tmp: Path, secret: str = AZ_SECRET, **extra) -> dict:
    c = {
        "type": "azure-key-vault",
        "vault_url": fake.url,
        "authority_url": fake.url,
        "management_url": fake.url,
        "vault_resource_id": RID,
        "region": "westeurope",
        "tenant_id": "tenant-1",
        "client_id": "client-1",
        "client_secret": {"file": str(secret_file(tmp, "client-secret", secret))},
        "timeout_ms": 2000,
        "retries": 2,
    }
    c.update(extra)
    return c


def vault_config(fake: Fake, tmp: Path, token: str = VAULT_TOKEN, **extra) -> dict:
    c = {
        "type": "vault-transit",
        "address": fake.url,
        "token": {"file": str(secret_file(tmp, "vault-token", token))},
        "timeout_ms": 2000,
        "retries": 2,
    }
    c.update(extra)
    return c


def check(tmp: Path, config: dict, key: str, timeout: float = 90) -> tuple[int, dict | None, str]:
    """Runs `atrest provider check`: (exit code, its JSON, all output)."""
    providers = tmp / "providers.json"
    providers.write_text(json.dumps({"p": config}))
    r = subprocess.run(
        [str(ATREST_BIN), "provider", "check", "--providers", str(providers), "--provider", "p", "--key", key],
        env=subprocess_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
    )
    out = r.stdout.decode(errors="replace")
    text = out + r.stderr.decode(errors="replace")
    try:
        doc = json.loads(out)
    except ValueError:
        doc = None
    return r.returncode, doc, text


def detail(doc: dict, prefix: str) -> str:
    for c in doc["checks"]:
        if c["name"].startswith(prefix):
            return c["detail"]
    raise AssertionError(f"no check {prefix!r} in {doc}")


def assert_passes(tmp, config, key, kind):
    rc, doc, text = check(tmp, config, key)
    assert rc == 0, text
    assert doc["passed"] is True and doc["type"] == kind, doc
    assert len(doc["checks"]) == 9 and all(c["passed"] for c in doc["checks"]), doc
    return doc, text


def assert_fails(tmp, config, key, *words):
    """The check exits 1 and the describe and health details say `words`."""
    rc, doc, text = check(tmp, config, key)
    assert rc == 1, text
    assert doc is not None and doc["passed"] is False, text
    for w in words:
        assert w in detail(doc, "describe") and w in detail(doc, "the health check"), doc
    return doc, text


def transit(fake: Fake, method: str, path: str, body: dict | None = None) -> int:
    """A call to the fake's own transit API (as an operator would)."""
    req = urllib.request.Request(
        f"{fake.url}/v1/transit/{path}",
        data=json.dumps(body or {}).encode() if method != "GET" else None,
        method=method,
        headers={"X-Vault-Token": VAULT_TOKEN},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=10) as r:
        return r.status


# -- Azure Key Vault ---------------------------------------------------------


def test_azure_conformance_rsa_and_aes_keys(azure, tmp):
    doc, text = assert_passes(tmp, azure_config(azure, tmp), "k1", "azure-key-vault")
    assert doc["endpoint"] == azure.url
    assert AZ_SECRET not in text
    assert_passes(tmp, azure_config(azure, tmp, algorithm="A256KW"), "hsm1", "azure-key-vault")


def test_azure_rotation_at_the_provider_needs_no_change(azure, tmp):
    assert_passes(tmp, azure_config(azure, tmp), "k1", "azure-key-vault")
    old = azure.control("keys/k1/rotate")["version"]
    azure.control("keys/k1/rotate")
    assert_passes(tmp, azure_config(azure, tmp), "k1", "azure-key-vault")
    # A pinned (older) version still wraps and unwraps.
    assert_passes(tmp, azure_config(azure, tmp), f"k1/{old}", "azure-key-vault")


def test_azure_disabled_key_is_refused(azure, tmp):
    azure.control("keys/k1/disable")
    doc, _ = assert_fails(tmp, azure_config(azure, tmp), "k1", "Disabled")
    assert "refused" in detail(doc, "the health check")
    azure.control("keys/k1/enable")
    assert_passes(tmp, azure_config(azure, tmp), "k1", "azure-key-vault")


def test_azure_deleted_key_is_not_found(azure, tmp):
    azure.control("keys/k1/delete")
    assert_fails(tmp, azure_config(azure, tmp), "k1", "no such key", "KeyNotFound")


def test_azure_access_removed_is_refused(azure, tmp):
    azure.control("deny", {"ops": ["get", "wrapKey", "unwrapKey"]})
    assert_fails(tmp, azure_config(azure, tmp), "k1", "refused", "Forbidden")
    # Access removed for unwrap only: describe passes, the health check does not.
    azure.control("deny", {"ops": ["unwrapKey"]})
    rc, doc, text = check(tmp, azure_config(azure, tmp), "k1")
    assert rc == 1, text
    assert "refused" in detail(doc, "the health check"), doc


def test_azure_vault_without_purge_protection_is_refused(azure, tmp):
    azure.control("vault", {"purge_protection": False})
    doc, _ = assert_fails(tmp, azure_config(azure, tmp), "k1", "vault vault-1 has no purge protection")
    assert not any(c["passed"] for c in doc["checks"] if c["name"].startswith("wrap")), doc


def test_azure_vault_in_another_region_is_refused(azure, tmp):
    azure.control("vault", {"location": "East US"})
    assert_fails(tmp, azure_config(azure, tmp), "k1", "vault vault-1 is in East US, not westeurope")
    # Azure's two spellings of a region are the same region.
    azure.control("vault", {"location": "West Europe"})
    assert_passes(tmp, azure_config(azure, tmp), "k1", "azure-key-vault")


def test_azure_wrong_client_secret_is_refused_and_never_shown(azure, tmp):
    wrong = "wrong-Secret~value-9876543210"
    _, text = assert_fails(tmp, azure_config(azure, tmp, secret=wrong), "k1", "refused", "invalid_client")
    assert wrong not in text and AZ_SECRET not in text
    _, text = assert_fails(tmp, azure_config(azure, tmp, client_id="client-2"), "k1", "refused")
    assert AZ_SECRET not in text


def test_azure_one_503_is_retried(azure, tmp):
    azure.control("fail", {"status": 503, "count": 1})
    assert_passes(tmp, azure_config(azure, tmp), "k1", "azure-key-vault")
    azure.control("fail", {"status": 429, "count": 2, "where": "vault"})
    assert_passes(tmp, azure_config(azure, tmp), "k1", "azure-key-vault")


def test_azure_always_503_is_unavailable_in_bounded_time(azure, tmp):
    azure.control("fail", {"status": 503, "count": -1})
    started = time.monotonic()
    assert_fails(tmp, azure_config(azure, tmp), "k1", "unavailable")
    assert time.monotonic() - started < 45


# -- Vault transit -----------------------------------------------------------


def test_vault_conformance(vault, tmp):
    doc, text = assert_passes(tmp, vault_config(vault, tmp), "k1", "vault-transit")
    assert doc["endpoint"] == f"{vault.url}/v1/transit"
    assert VAULT_TOKEN not in text


def test_vault_rotation_at_the_provider_needs_no_change(vault, tmp):
    assert_passes(tmp, vault_config(vault, tmp), "k1", "vault-transit")
    assert transit(vault, "POST", "keys/k1/rotate") == 200
    assert transit(vault, "POST", "keys/k1/rotate") == 200
    assert_passes(tmp, vault_config(vault, tmp), "k1", "vault-transit")


def test_vault_access_removed_is_refused(vault, tmp):
    vault.control("deny", {})
    assert_fails(tmp, vault_config(vault, tmp), "k1", "refused", "permission denied")
    vault.control("deny", {"ops": ["decrypt"]})
    rc, doc, text = check(tmp, vault_config(vault, tmp), "k1")
    assert rc == 1, text
    assert "permission denied" in detail(doc, "the health check"), doc


def test_vault_wrong_token_is_refused_and_never_shown(vault, tmp):
    wrong = "hvs.wrongTokenValue0123456789"
    _, text = assert_fails(tmp, vault_config(vault, tmp, token=wrong), "k1", "refused", "permission denied")
    assert wrong not in text and VAULT_TOKEN not in text


def test_vault_missing_or_deleted_key_is_not_found(vault, tmp):
    # Transit's encrypt would create a missing key; the provider must not.
    assert_fails(tmp, vault_config(vault, tmp), "nope", "no such key")
    assert transit(vault, "GET", "keys/k1") == 200
    assert transit(vault, "POST", "keys/k1/config", {"deletion_allowed": True}) == 200
    assert transit(vault, "DELETE", "keys/k1") == 204
    assert_fails(tmp, vault_config(vault, tmp), "k1", "no such key")
    with pytest.raises(urllib.error.HTTPError) as e:
        transit(vault, "GET", "keys/nope")
    assert e.value.code == 404


def test_vault_namespace_and_mount(tmp):
    f = Fake(
        "vault_transit", "--token", VAULT_TOKEN, "--namespace", "team-a", "--mount", "kms/transit",
        "--key", "k1", env=subprocess_env(),
    )
    try:
        assert_passes(tmp, vault_config(f, tmp, namespace="team-a", mount="kms/transit"), "k1", "vault-transit")
        assert_fails(tmp, vault_config(f, tmp, mount="kms/transit"), "k1", "refused")
        assert_fails(tmp, vault_config(f, tmp, namespace="team-a"), "k1", "mounted at transit")
    finally:
        f.stop()


def test_vault_one_503_is_retried(vault, tmp):
    vault.control("fail", {"status": 503, "count": 1})
    assert_passes(tmp, vault_config(vault, tmp), "k1", "vault-transit")


def test_vault_always_503_is_unavailable_in_bounded_time(vault, tmp):
    vault.control("fail", {"status": 503, "count": -1})
    started = time.monotonic()
    assert_fails(tmp, vault_config(vault, tmp), "k1", "unavailable", "Vault is sealed")
    assert time.monotonic() - started < 45
