"""Ciphertext integrity: for a blob from Encrypt, every single-byte change
(each position XOR 0x01, and each position + 0x80), every truncation, and
appended bytes are all rejected with InvalidCiphertextException (HTTP 400),
never decrypted and never a server fault; an empty blob is a
ValidationException. The untouched blob still decrypts afterwards.

Capabilities: K4 envelope encryption, O1 API.
"""

from __future__ import annotations

import uuid

from botocore.exceptions import ClientError

from conftest import expect_error


def rejection(kms, blob: bytes, ctx: dict) -> tuple[str, int] | None:
    """The error code and status a Decrypt of `blob` gets, or None if it decrypted."""
    try:
        kms.decrypt(CiphertextBlob=blob, EncryptionContext=ctx)
    except ClientError as e:
        return e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"]
    return None


def test_every_modified_blob_is_rejected(server):
    kms = server.client(validate=False)
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    kms.rotate_key_on_demand(KeyId=key_id)  # so a version bump could name real material
    ctx = {"purpose": "tamper"}
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"integrity matters", EncryptionContext=ctx)["CiphertextBlob"]
    assert kms.decrypt(CiphertextBlob=blob, EncryptionContext=ctx)["Plaintext"] == b"integrity matters"

    expected = ("InvalidCiphertextException", 400)
    failures = []
    variants = []
    for i in range(len(blob)):
        for label, new in (("xor 0x01", blob[i] ^ 0x01), ("+0x80", (blob[i] + 0x80) & 0xFF)):
            variants.append((f"byte {i} {label}", blob[:i] + bytes([new]) + blob[i + 1:]))
    for n in range(1, len(blob)):
        variants.append((f"truncated to {n}", blob[:n]))
    for extra in (b"\x00", b"\x01", b"\x00" * 16, blob[-16:]):
        variants.append((f"appended {len(extra)} bytes", blob + extra))
    variants.append(("doubled", blob + blob))
    # Header fields rewritten to name other real material: the header is
    # authenticated, so these must fail too. Layout: version(1) key id(16)
    # key version(4, big-endian) ...
    assert blob[0] == 1 and blob[1:17] == uuid.UUID(key_id).bytes and blob[17:21] == (2).to_bytes(4, "big")
    variants.append(("key version 2 -> 1", blob[:17] + (1).to_bytes(4, "big") + blob[21:]))
    other_id = kms.create_key()["KeyMetadata"]["KeyId"]
    variants.append(("key id swapped for another real key", blob[:1] + uuid.UUID(other_id).bytes + blob[17:]))

    for label, bad in variants:
        assert bad != blob
        got = rejection(kms, bad, ctx)
        if got != expected:
            failures.append(f"{label}: {got}")
    assert not failures, f"{len(failures)} of {len(variants)} tampered blobs were not InvalidCiphertextException:\n" + "\n".join(failures[:30])

    expect_error("ValidationException", kms.decrypt, CiphertextBlob=b"", EncryptionContext=ctx)
    # The original is unharmed by all of that.
    assert kms.decrypt(CiphertextBlob=blob, EncryptionContext=ctx)["Plaintext"] == b"integrity matters"


def test_blob_from_generate_data_key_resists_tampering(server):
    kms = server.client()
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    resp = kms.generate_data_key(KeyId=key_id, KeySpec="AES_256")
    blob = resp["CiphertextBlob"]
    for i in range(0, len(blob), 3):
        bad = blob[:i] + bytes([blob[i] ^ 0xFF]) + blob[i + 1:]
        assert rejection(kms, bad, {}) == ("InvalidCiphertextException", 400), i
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == resp["Plaintext"]
