"""Bad input over raw, correctly SigV4-signed HTTP: malformed JSON, JSON
array/null/string/number bodies, members of the wrong JSON type, bad base64,
an unknown operation, a missing X-Amz-Target, and a body over 64 KiB are
answered with HTTP 400 and the AWS `__type` a KMS client expects
(SerializationException, ValidationException, UnknownOperationException),
never a 5xx; a GET / is a 4xx; the server keeps serving correctly afterwards.

Capabilities: O1 API.
"""

from __future__ import annotations

import json

import pytest

from conftest import error_type, raw_request

SER = "SerializationException"
VAL = "ValidationException"
UNK = "UnknownOperationException"

CASES = [
    # (label, target, body, expected __type)
    ("truncated json", "TrentService.CreateKey", b'{"Description": "x"', SER),
    ("not json", "TrentService.ListKeys", b"hello there", SER),
    ("trailing garbage", "TrentService.ListKeys", b"{} {}", SER),
    ("invalid utf-8", "TrentService.CreateKey", b'{"Description": "\xff\xfe"}', SER),
    ("json array", "TrentService.ListKeys", b"[]", SER),
    ("json array of nulls", "TrentService.DescribeKey", b"[null, null]", SER),
    ("json null", "TrentService.ListKeys", b"null", SER),
    ("json string", "TrentService.ListKeys", b'"ListKeys"', SER),
    ("json number", "TrentService.ListKeys", b"42", SER),
    ("limit as string", "TrentService.ListKeys", b'{"Limit": "10"}', SER),
    ("limit as float", "TrentService.ListKeys", b'{"Limit": 1.5}', SER),
    ("description as number", "TrentService.CreateKey", b'{"Description": 7}', SER),
    ("multiregion as string", "TrentService.CreateKey", b'{"MultiRegion": "true"}', SER),
    ("tags as object", "TrentService.CreateKey", b'{"Tags": {"TagKey": "a"}}', SER),
    ("number as list", "TrentService.GenerateRandom", b'{"NumberOfBytes": [1]}', SER),
    ("plaintext not base64", "TrentService.Encrypt", b'{"KeyId": "alias/x", "Plaintext": "***"}', SER),
    ("key id as number", "TrentService.DescribeKey", b'{"KeyId": 12}', SER),
    ("missing required member", "TrentService.DescribeKey", b"{}", VAL),
    ("missing required member (empty body)", "TrentService.GenerateRandom", b"", VAL),
    ("unknown operation", "TrentService.DeleteEverything", b"{}", UNK),
    ("wrong service prefix", "KMS.ListKeys", b"{}", UNK),
    ("missing target", None, b"{}", UNK),
]


def assert_still_serving(server):
    status, body = server.health()
    assert status == 200 and body.strip() == "ok"
    kms = server.client()
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"alive")["CiphertextBlob"]
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"alive"


@pytest.mark.parametrize("label,target,body,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_body_is_a_client_error(server, label, target, body, expected):
    r = raw_request(server, body, target=target)
    assert r.status_code == 400, f"{label}: {r.status_code} {r.text}"
    assert r.headers["Content-Type"].startswith("application/x-amz-json-1.1")
    assert error_type(r) == expected, f"{label}: {r.text}"
    assert r.json().get("message"), "an error carries a message"
    assert_still_serving(server)


def test_positional_json_array_is_not_a_request(server):
    """A JSON array whose elements line up with a request's members must not
    be read as that request: the AWS JSON protocol takes only objects."""
    kms = server.client()
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    for target, body in (
        ("TrentService.DescribeKey", f'["{key_id}", null]'),
        ("TrentService.GenerateRandom", "[4, null, null]"),
    ):
        r = raw_request(server, body, target=target)
        assert r.status_code == 400, f"{target} {body}: {r.status_code} {r.text}"
        assert error_type(r) == SER, f"{target} {body}: {r.text}"
    assert_still_serving(server)


def test_oversized_body_is_validation_exception(server):
    big = json.dumps({"Description": "x" * (64 * 1024 + 1)}).encode()
    assert len(big) > 64 * 1024
    r = raw_request(server, big, target="TrentService.CreateKey")
    assert r.status_code == 400 and error_type(r) == VAL, r.text
    # A large JSON whose size is just under the limit is parsed normally.
    ok = json.dumps({"Description": "y" * 8192}).encode()
    r = raw_request(server, ok, target="TrentService.CreateKey")
    assert r.status_code == 200 and r.json()["KeyMetadata"]["Description"] == "y" * 8192
    assert_still_serving(server)


def test_get_is_a_client_error(server):
    r = raw_request(server, b"", method="GET", target="TrentService.ListKeys", content_type=None)
    assert 400 <= r.status_code < 500, r.status_code
    r = raw_request(server, b"", method="GET", target=None, content_type=None, sign=False)
    assert 400 <= r.status_code < 500, r.status_code
    assert_still_serving(server)


def test_storm_of_bad_requests_then_good_ones(server):
    for _ in range(5):
        for label, target, body, expected in CASES:
            r = raw_request(server, body, target=target)
            assert r.status_code == 400 and error_type(r) == expected, label
    assert_still_serving(server)
