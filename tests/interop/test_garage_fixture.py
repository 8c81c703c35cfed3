"""The Garage fixture works: boto3 puts, gets and lists objects through a
started node, a second bucket works, and a wrong secret is refused."""

from __future__ import annotations

import os

import pytest
from botocore.exceptions import ClientError

from garage_fixture import garage, s3_client  # noqa: F401  (garage is a fixture)


def test_put_get_list(garage):  # noqa: F811
    s3 = s3_client(garage)
    s3.put_object(Bucket=garage.bucket, Key="blocks/ab/cd", Body=b"x" * 1000)
    s3.put_object(Bucket=garage.bucket, Key="manifest", Body=b"m")
    got = s3.get_object(Bucket=garage.bucket, Key="blocks/ab/cd")["Body"].read()
    assert got == b"x" * 1000
    listed = s3.list_objects_v2(Bucket=garage.bucket)
    assert sorted(o["Key"] for o in listed["Contents"]) == ["blocks/ab/cd", "manifest"]
    blocks = s3.list_objects_v2(Bucket=garage.bucket, Prefix="blocks/")
    assert [o["Size"] for o in blocks["Contents"]] == [1000]

    second = garage.new_bucket("second")
    s3.put_object(Bucket=second, Key="k", Body=b"v")
    assert s3.get_object(Bucket=second, Key="k")["Body"].read() == b"v"

    bad = s3_client(garage, secret="0" * 64)
    with pytest.raises(ClientError) as e:
        bad.get_object(Bucket=garage.bucket, Key="manifest")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_stop_removes_everything(garage):  # noqa: F811
    root, pid = garage.root, garage.proc.pid
    garage.stop()
    assert not root.exists()
    try:
        os.kill(pid, 0)
        alive = True
    except ProcessLookupError:
        alive = False
    assert not alive
