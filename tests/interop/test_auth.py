"""SigV4 authentication as AWS answers it, driven by botocore's own signer
(boto3 clients with altered credentials/region, and `SigV4Auth` on an
`AWSRequest` sent with requests): a wrong secret, a wrong service in the
scope, an unserved region, a signature 6 minutes in the past or future, and a
body changed after signing are InvalidSignatureException; an unknown access key
is UnrecognizedClientException; no Authorization header is
MissingAuthenticationTokenException. Every one is HTTP 400, and correctly
signed requests (also 4 minutes off, inside AWS's 5-minute window) succeed.
A request carrying an X-Amz-* header or Content-Type that its signature does
not cover is InvalidSignatureException naming the header (400; 401 on the
REST API), so a captured DescribeKey cannot be replayed as a DisableKey.

Capabilities: O1 API, K10 regions.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from unittest import mock

import botocore.auth
import pytest
import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from conftest import expect_error, error_type, raw_request



def shifted_clock(minutes: int):
    """Patches botocore's signing clock by `minutes` (naive UTC, as botocore uses)."""
    def fake(remove_tzinfo=True):
        t = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=minutes)
        return t.replace(tzinfo=None) if remove_tzinfo else t
    return mock.patch("botocore.auth.get_current_datetime", fake)


def test_correct_signature_is_accepted(server, kms):
    assert kms.list_keys()["Keys"] == []
    r = raw_request(server, b"{}", target="TrentService.ListKeys")
    assert r.status_code == 200 and r.json()["Keys"] == []


def test_wrong_secret_is_invalid_signature(server):
    akid, secret = server.credentials()
    wrong = server.client(creds=(akid, secret[:-1] + ("A" if secret[-1] != "A" else "B")))
    err = expect_error("InvalidSignatureException", wrong.list_keys)
    assert "signature" in err["Error"]["Message"].lower()
    r = raw_request(server, b"{}", creds=(akid, "not-the-secret-at-all-0000000000"))
    assert r.status_code == 400 and error_type(r) == "InvalidSignatureException"


def test_unknown_access_key_is_unrecognized_client(server):
    c = server.client(creds=("AKIAUNKNOWNUNKNOWN00", "some-secret-that-does-not-matter"))
    expect_error("UnrecognizedClientException", c.list_keys)
    expect_error("UnrecognizedClientException", c.create_key)


def test_unserved_region_is_invalid_signature(server):
    c = server.client(region="ap-south-1")
    err = expect_error("InvalidSignatureException", c.list_keys)
    assert "Credential should be scoped to a valid region, not 'ap-south-1'" in err["Error"]["Message"]
    r = raw_request(server, b"{}", region="eu-central-1")
    assert r.status_code == 400 and error_type(r) == "InvalidSignatureException"


@pytest.mark.parametrize("service", ["s3", "atrest", "sts"])
def test_wrong_service_in_scope_is_invalid_signature(server, service):
    r = raw_request(server, b"{}", service=service)
    assert r.status_code == 400, r.text
    assert error_type(r) == "InvalidSignatureException"


@pytest.mark.parametrize("minutes", [-6, 6, -60, 60 * 24])
def test_skewed_timestamp_is_invalid_signature(server, minutes):
    c = server.client()
    with shifted_clock(minutes):
        expect_error("InvalidSignatureException", c.list_keys)
        r = raw_request(server, b"{}")
    assert r.status_code == 400 and error_type(r) == "InvalidSignatureException"


@pytest.mark.parametrize("minutes", [-4, 4])
def test_small_skew_is_accepted(server, minutes):
    c = server.client()
    with shifted_clock(minutes):
        assert c.list_keys()["Keys"] == []


def test_missing_authorization_is_missing_token(server):
    r = raw_request(server, b"{}", sign=False)
    assert r.status_code == 400
    assert error_type(r) == "MissingAuthenticationTokenException"


def test_body_changed_after_signing_is_invalid_signature(server):
    akid, secret = server.credentials()
    body = b'{"Description":"signed"}'
    req = AWSRequest(
        method="POST", url=server.url + "/", data=body,
        headers={"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "TrentService.CreateKey"},
    )
    SigV4Auth(Credentials(akid, secret), "kms", "us-east-1").add_auth(req)
    headers = dict(req.prepare().headers.items())
    r = requests.post(server.url + "/", headers=headers, data=b'{"Description":"swapd"}', timeout=30)
    assert r.status_code == 400 and error_type(r) == "InvalidSignatureException"
    # A changed target header (signed) is refused too.
    headers2 = dict(headers, **{"X-Amz-Target": "TrentService.ListKeys"})
    r = requests.post(server.url + "/", headers=headers2, data=body, timeout=30)
    assert r.status_code == 400 and error_type(r) == "InvalidSignatureException"
    # Neither created a key; the original request as signed does.
    assert server.client().list_keys()["Keys"] == []
    r = requests.post(server.url + "/", headers=headers, data=body, timeout=30)
    assert r.status_code == 200 and r.json()["KeyMetadata"]["Description"] == "signed"


# -- headers left out of the signature --------------------------------------


def partly_signed(server, body: bytes, signed: dict[str, str], unsigned: dict[str, str],
                  service: str = "kms", method: str = "POST", path: str = "/") -> requests.Response:
    """Sends a request botocore signed with only the `signed` headers (its
    SigV4Auth signs every header present when it signs), then `unsigned`
    added: the signature is valid over what SignedHeaders lists."""
    akid, secret = server.credentials()
    req = AWSRequest(method=method, url=server.url + path, data=body, headers=dict(signed))
    SigV4Auth(Credentials(akid, secret), service, server.regions[0]).add_auth(req)
    headers = dict(req.prepare().headers.items())
    for name in unsigned:
        assert name.lower() not in headers["Authorization"].lower()
    headers.update(unsigned)
    return requests.request(method, server.url + path, headers=headers, data=body, timeout=30)


JSON_11 = {"Content-Type": "application/x-amz-json-1.1"}


def test_replay_as_another_operation_is_refused(server, kms):
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    body = json.dumps({"KeyId": key_id}).encode()
    describe = {"X-Amz-Target": "TrentService.DescribeKey"}

    # Signed without X-Amz-Target, sent as DisableKey: refused before the
    # operation, naming the header (the signature itself is valid).
    r = partly_signed(server, body, JSON_11, {"X-Amz-Target": "TrentService.DisableKey"})
    assert r.status_code == 400, r.text
    assert error_type(r) == "InvalidSignatureException"
    assert "x-amz-target header is not signed" in r.json()["message"], r.text
    # The same as a DescribeKey: refused too (it is the signature's form
    # that is wrong, not the operation).
    r = partly_signed(server, body, JSON_11, describe)
    assert r.status_code == 400 and error_type(r) == "InvalidSignatureException", r.text

    # A DescribeKey signed properly, its (signed) target rewritten to
    # DisableKey: the signature no longer matches.
    akid, secret = server.credentials()
    req = AWSRequest(method="POST", url=server.url + "/", data=body, headers={**JSON_11, **describe})
    SigV4Auth(Credentials(akid, secret), "kms", server.regions[0]).add_auth(req)
    headers = dict(req.prepare().headers.items())
    assert "x-amz-target" in headers["Authorization"] and "content-type" in headers["Authorization"]
    r = requests.post(server.url + "/", headers={**headers, "X-Amz-Target": "TrentService.DisableKey"},
                      data=body, timeout=30)
    assert r.status_code == 400 and error_type(r) == "InvalidSignatureException", r.text
    assert "does not match the signature" in r.json()["message"], r.text

    # None of it disabled the key; the request as signed is answered.
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Enabled"
    r = requests.post(server.url + "/", headers=headers, data=body, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["KeyMetadata"]["KeyState"] == "Enabled"
    # boto3, which signs both headers, still works, for a DisableKey too.
    kms.disable_key(KeyId=key_id)
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Disabled"


@pytest.mark.parametrize("name,value", [
    ("Content-Type", "application/x-amz-json-1.1"),
    ("X-Amz-Content-Sha256", hashlib.sha256(b"{}").hexdigest()),
    ("X-Amz-Security-Token", "a-session-token"),
    ("x-amz-anything", "1"),
])
def test_unsigned_header_is_invalid_signature(server, name, value):
    signed = {**JSON_11, "X-Amz-Target": "TrentService.ListKeys"}
    signed.pop(name, None)
    r = partly_signed(server, b"{}", signed, {name: value})
    assert r.status_code == 400, r.text
    assert error_type(r) == "InvalidSignatureException"
    assert f"{name.lower()} header is not signed" in r.json()["message"], r.text
    # Signed, the same header is accepted (a session token of an access key
    # is ignored, as a header the server does not use).
    r = partly_signed(server, b"{}", {**signed, name: value}, {})
    assert r.status_code == 200, r.text


def test_unsigned_header_on_rest_is_401(server):
    r = partly_signed(server, b"", {}, {"X-Amz-Target": "anything"}, service="atrest",
                      method="GET", path="/v1/accounts")
    assert r.status_code == 401, r.text
    assert r.json()["code"] == "InvalidSignatureException", r.text
    assert "x-amz-target header is not signed" in r.json()["message"], r.text
    assert r.headers["www-authenticate"] == "AWS4-HMAC-SHA256"
    # With no X-Amz-* header and no Content-Type, nothing more is required.
    r = partly_signed(server, b"", {}, {"User-Agent": "unsigned-is-fine"}, service="atrest",
                      method="GET", path="/v1/accounts")
    assert r.status_code == 200, r.text
