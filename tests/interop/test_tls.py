"""TLS: with --tls-cert/--tls-key (a server certificate for 127.0.0.1 signed
by a throwaway CA made with `cryptography`), boto3 and the aws CLI talk to the
https endpoint verifying against that CA; a client that does not trust the CA
refuses the connection; plain HTTP to the same port gets no answer.

Capabilities: O1 API, K4 envelope encryption.
"""

from __future__ import annotations

import json
import os
import subprocess

import botocore.exceptions
import pytest
import requests

from conftest import AWS_CLI, REGION, make_tls_files, subprocess_env


def test_https_with_custom_ca(make_server):
    tls = make_tls_files(make_server.workdir / "tls")
    srv = make_server(tls=tls).start()
    assert srv.url.startswith("https://127.0.0.1:")

    kms = srv.client(verify=str(tls["ca"]))
    key_id = kms.create_key(Description="over tls")["KeyMetadata"]["KeyId"]
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"through tls")["CiphertextBlob"]
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"through tls"

    # The aws CLI with --ca-bundle.
    env = subprocess_env(
        AWS_SHARED_CREDENTIALS_FILE=str(srv.credentials_file), AWS_DEFAULT_REGION=REGION, AWS_MAX_ATTEMPTS="1",
    )
    p = subprocess.run(
        [str(AWS_CLI), "--endpoint-url", srv.url, "--ca-bundle", str(tls["ca"]), "--output", "json",
         "kms", "describe-key", "--key-id", key_id],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["KeyMetadata"]["Description"] == "over tls"

    # A client that does not trust the CA refuses the server.
    untrusting = srv.client(verify=True)
    with pytest.raises(botocore.exceptions.SSLError):
        untrusting.list_keys()
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(srv.url + "/healthz", timeout=10, verify=True)

    # Plain HTTP to the TLS port: no HTTP answer at all.
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://127.0.0.1:{srv.port}/healthz", timeout=10)
    plain = srv.client(endpoint=f"http://127.0.0.1:{srv.port}")
    with pytest.raises((botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError)):
        plain.list_keys()

    # Still serving TLS afterwards.
    status, body = srv.health()
    assert status == 200 and body.strip() == "ok"
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Enabled"
    assert os.stat(tls["key"]).st_mode & 0o077 == 0
