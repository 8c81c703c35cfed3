"""Regions: one server serving us-east-1 and eu-west-1 keeps them apart, as
AWS does. A key, its aliases and its ciphertexts made in one region are
invisible in the other (ListKeys/ListAliases empty, DescribeKey by id or ARN
NotFoundException, Decrypt refused), each region has its own alias namespace,
and a region the server does not serve is refused at authentication with
InvalidSignatureException.

Capabilities: K10 regions, K1 keys, O1 API.
"""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from conftest import expect_error


def test_regions_are_isolated(make_server):
    srv = make_server(regions=("us-east-1", "eu-west-1")).start()
    us = srv.client(region="us-east-1")
    eu = srv.client(region="eu-west-1")

    key = us.create_key(Description="lives in us-east-1")["KeyMetadata"]
    assert key["Arn"].startswith("arn:aws:kms:us-east-1:")
    us.create_alias(AliasName="alias/regional", TargetKeyId=key["KeyId"])
    blob = us.encrypt(KeyId=key["KeyId"], Plaintext=b"in us")["CiphertextBlob"]

    assert eu.list_keys()["Keys"] == []
    assert eu.list_aliases()["Aliases"] == []
    expect_error("NotFoundException", eu.describe_key, KeyId=key["Arn"])
    expect_error("NotFoundException", eu.describe_key, KeyId=key["KeyId"])
    expect_error("NotFoundException", eu.describe_key, KeyId="alias/regional")
    expect_error("NotFoundException", eu.encrypt, KeyId=key["Arn"], Plaintext=b"x")
    expect_error("NotFoundException", eu.enable_key_rotation, KeyId=key["Arn"])
    with pytest.raises(ClientError) as ei:
        eu.decrypt(CiphertextBlob=blob)
    assert ei.value.response["Error"]["Code"] in ("InvalidCiphertextException", "NotFoundException")
    assert ei.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400

    # Each region has its own alias namespace.
    eu_key = eu.create_key(Description="lives in eu-west-1")["KeyMetadata"]
    assert eu_key["Arn"].startswith("arn:aws:kms:eu-west-1:")
    assert eu_key["AWSAccountId"] == key["AWSAccountId"]
    eu.create_alias(AliasName="alias/regional", TargetKeyId=eu_key["KeyId"])
    assert eu.describe_key(KeyId="alias/regional")["KeyMetadata"]["KeyId"] == eu_key["KeyId"]
    assert us.describe_key(KeyId="alias/regional")["KeyMetadata"]["KeyId"] == key["KeyId"]
    assert [k["KeyId"] for k in us.list_keys()["Keys"]] == [key["KeyId"]]
    assert [k["KeyId"] for k in eu.list_keys()["Keys"]] == [eu_key["KeyId"]]
    expect_error("NotFoundException", us.describe_key, KeyId=eu_key["Arn"])
    # A cross-region alias target is not found either.
    expect_error("NotFoundException", eu.create_alias, AliasName="alias/cross", TargetKeyId=key["Arn"])

    assert us.decrypt(CiphertextBlob=blob)["Plaintext"] == b"in us"

    unserved = srv.client(region="ap-southeast-2")
    err = expect_error("InvalidSignatureException", unserved.list_keys)
    assert "Credential should be scoped to a valid region, not 'ap-southeast-2'" in err["Error"]["Message"]
