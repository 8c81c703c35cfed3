"""The aws CLI (awscli v1, the `aws` beside this Python) works against atrest
with only --endpoint-url and a shared-credentials file: create-key,
describe-key, list-keys, create-alias, encrypt/decrypt through fileb:// with an
--encryption-context, generate-data-key, rotate-key-on-demand,
list-key-rotations, schedule-key-deletion, cancel-key-deletion,
tag-resource/list-resource-tags; and a service error reaches the user as its
error code on stderr with a non-zero exit status.

Capabilities: K1 keys, K4 envelope encryption, K5 rotation, K6 key states, O1 API.
"""

from __future__ import annotations

import base64
import os
import uuid

from conftest import REGION, aws_cli, aws_json


def test_aws_cli_key_lifecycle_and_crypto(server, tmp_path):
    md = aws_json(server, "kms", "create-key", "--description", "made by the aws cli")["KeyMetadata"]
    key_id, arn = md["KeyId"], md["Arn"]
    assert md["KeyState"] == "Enabled" and md["Description"] == "made by the aws cli"
    assert arn == f"arn:aws:kms:{REGION}:{md['AWSAccountId']}:key/{key_id}"

    assert aws_json(server, "kms", "describe-key", "--key-id", key_id)["KeyMetadata"]["Arn"] == arn
    listed = aws_json(server, "kms", "list-keys")["Keys"]
    assert {"KeyId": key_id, "KeyArn": arn} in listed

    aws_cli(server, "kms", "create-alias", "--alias-name", "alias/cli", "--target-key-id", key_id)
    aliases = aws_json(server, "kms", "list-aliases", "--key-id", key_id)["Aliases"]
    assert [a["AliasName"] for a in aliases] == ["alias/cli"]
    assert aws_json(server, "kms", "describe-key", "--key-id", "alias/cli")["KeyMetadata"]["KeyId"] == key_id

    # encrypt / decrypt with fileb:// and an encryption context
    plaintext = os.urandom(300)
    (tmp_path / "plain.bin").write_bytes(plaintext)
    enc = aws_json(
        server, "kms", "encrypt", "--key-id", "alias/cli",
        "--plaintext", "fileb://plain.bin",
        "--encryption-context", "purpose=interop,stage=cli",
        cwd=tmp_path,
    )
    assert enc["KeyId"] == arn
    (tmp_path / "blob.bin").write_bytes(base64.b64decode(enc["CiphertextBlob"]))
    dec = aws_json(
        server, "kms", "decrypt", "--ciphertext-blob", "fileb://blob.bin",
        "--encryption-context", "stage=cli,purpose=interop",
        cwd=tmp_path,
    )
    assert base64.b64decode(dec["Plaintext"]) == plaintext and dec["KeyId"] == arn
    # --query/--output text, as scripts use it
    text = aws_cli(
        server, "kms", "decrypt", "--ciphertext-blob", f"fileb://{tmp_path / 'blob.bin'}",
        "--encryption-context", '{"purpose":"interop","stage":"cli"}',
        "--query", "Plaintext", "--output", "text",
    ).stdout.strip()
    assert base64.b64decode(text) == plaintext
    # the wrong context is refused
    p = aws_cli(
        server, "kms", "decrypt", "--ciphertext-blob", f"fileb://{tmp_path / 'blob.bin'}",
        "--encryption-context", "purpose=other", check=False,
    )
    assert p.returncode != 0 and "InvalidCiphertextException" in p.stderr

    # generate-data-key
    dk = aws_json(server, "kms", "generate-data-key", "--key-id", key_id, "--key-spec", "AES_256",
                  "--encryption-context", "file=a.txt")
    data_key = base64.b64decode(dk["Plaintext"])
    assert len(data_key) == 32 and dk["KeyId"] == arn
    (tmp_path / "dk.bin").write_bytes(base64.b64decode(dk["CiphertextBlob"]))
    dec = aws_json(server, "kms", "decrypt", "--ciphertext-blob", "fileb://dk.bin",
                   "--encryption-context", "file=a.txt", cwd=tmp_path)
    assert base64.b64decode(dec["Plaintext"]) == data_key

    # rotation
    assert aws_json(server, "kms", "rotate-key-on-demand", "--key-id", key_id)["KeyId"] in (key_id, arn)
    rotations = aws_json(server, "kms", "list-key-rotations", "--key-id", key_id)["Rotations"]
    assert len(rotations) == 1 and rotations[0]["RotationType"] == "ON_DEMAND"
    dec = aws_json(server, "kms", "decrypt", "--ciphertext-blob", "fileb://dk.bin",
                   "--encryption-context", "file=a.txt", cwd=tmp_path)
    assert base64.b64decode(dec["Plaintext"]) == data_key, "pre-rotation blob must still decrypt"

    # tags
    aws_cli(server, "kms", "tag-resource", "--key-id", key_id,
            "--tags", "TagKey=env,TagValue=test", "TagKey=owner,TagValue=cli")
    tags = aws_json(server, "kms", "list-resource-tags", "--key-id", key_id)["Tags"]
    assert sorted((t["TagKey"], t["TagValue"]) for t in tags) == [("env", "test"), ("owner", "cli")]

    # deletion scheduled, then cancelled
    sched = aws_json(server, "kms", "schedule-key-deletion", "--key-id", key_id, "--pending-window-in-days", "7")
    assert sched["KeyState"] == "PendingDeletion" and sched["PendingWindowInDays"] == 7 and sched["KeyId"] == arn
    assert aws_json(server, "kms", "describe-key", "--key-id", key_id)["KeyMetadata"]["KeyState"] == "PendingDeletion"
    assert aws_json(server, "kms", "cancel-key-deletion", "--key-id", key_id)["KeyId"] == arn
    assert aws_json(server, "kms", "describe-key", "--key-id", key_id)["KeyMetadata"]["KeyState"] == "Disabled"


def test_aws_cli_reports_service_errors(server):
    missing = str(uuid.uuid4())
    p = aws_cli(server, "kms", "describe-key", "--key-id", missing, check=False)
    assert p.returncode != 0
    assert "NotFoundException" in p.stderr and "DescribeKey" in p.stderr
    assert p.stdout.strip() == ""

    p = aws_cli(server, "kms", "create-alias", "--alias-name", "alias/aws/reserved",
                "--target-key-id", missing, check=False)
    assert p.returncode != 0 and "NotAuthorizedException" in p.stderr

    # an unserved region is refused at authentication
    p = aws_cli(server, "kms", "list-keys", region="ap-southeast-2", check=False)
    assert p.returncode != 0 and "InvalidSignatureException" in p.stderr
