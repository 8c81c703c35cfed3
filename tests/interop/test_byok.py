"""Bring your own key (BYOK) through boto3, with the key material wrapped
client-side by Python's `cryptography` exactly as AWS's "Encrypt key
material" documentation describes: RSAES-OAEP with MGF1 and the same hash
(SHA-1 or SHA-256), or for RSA_AES_KEY_WRAP_SHA_*: a random 256-bit AES key
wrapped with RSA-OAEP, then the material wrapped under it with AES key wrap
with padding (RFC 5649), RSA part first.

* A key created with Origin EXTERNAL is PendingImport and refuses crypto;
  GetParametersForImport returns a DER SubjectPublicKeyInfo of the asked size
  (RSA 2048, 3072 and 4096 all exercised), a token and a 24-hour validity;
  ImportKeyMaterial with each of the four wrapping algorithms enables the key,
  and the ciphertexts it then makes are decrypted *offline* with the imported
  material (the blob format of docs/design.md), proving the material is the
  one we imported.
* DeleteImportedKeyMaterial returns the key to PendingImport (crypto
  refused with KMSInvalidStateException); re-importing the same material
  restores it and old ciphertexts decrypt; other material is
  IncorrectKeyMaterialException.
* Refusals: wrong-size material (IncorrectKeyMaterialException), a token of
  another key or a tampered one (InvalidImportTokenException), material that
  does not unwrap (InvalidCiphertextException), bad expiry parameters
  (ValidationException), import into or parameters for a non-EXTERNAL key
  (UnsupportedOperationException) or a key pending deletion
  (KMSInvalidStateException); automatic rotation of imported material
  (UnsupportedOperationException).
* Expiry: material imported with KEY_MATERIAL_EXPIRES returns the key to
  PendingImport once ValidTo passes (server restarted with its lifecycle
  clock 11 days ahead), while material that does not expire stays; an import
  token older than 24 hours is ExpiredImportTokenException; re-importing
  restores the key.
* New material (issue 20): ImportType NEW_KEY_MATERIAL is PENDING_ROTATION
  until RotateKeyOnDemand makes it current; ciphertexts made under the old
  material decrypt (and decrypt offline with it); ListKeyRotations shows
  each material's KeyMaterialState, ImportState, ExpirationModel and
  ValidTo; deleting non-current material (by KeyMaterialId) leaves the key
  Enabled while its ciphertexts wait for the same material.

Capabilities: K3 BYOK (also K6 key states, K4 ciphertexts).
"""

from __future__ import annotations

import datetime
import os
import struct
import time

import pytest
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding
from cryptography.hazmat.primitives.serialization import load_der_public_key

from conftest import expect_error

UTC = datetime.timezone.utc
ALGORITHMS = ["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256", "RSA_AES_KEY_WRAP_SHA_1", "RSA_AES_KEY_WRAP_SHA_256"]


def wrap(public_key_der: bytes, material: bytes, algorithm: str) -> bytes:
    """Wraps `material` for ImportKeyMaterial as AWS documents it."""
    public = load_der_public_key(public_key_der)
    h = hashes.SHA1() if algorithm.endswith("SHA_1") else hashes.SHA256()
    oaep = padding.OAEP(mgf=padding.MGF1(algorithm=h), algorithm=h, label=None)
    if algorithm.startswith("RSAES_OAEP"):
        return public.encrypt(material, oaep)
    assert algorithm.startswith("RSA_AES_KEY_WRAP")
    aes_key = os.urandom(32)
    return public.encrypt(aes_key, oaep) + aes_key_wrap_with_padding(aes_key, material)


def canonical_context(ctx: dict[str, str]) -> bytes:
    out = struct.pack(">H", len(ctx))
    for k in sorted(ctx, key=lambda s: s.encode()):
        kb, vb = k.encode(), ctx[k].encode()
        out += struct.pack(">H", len(kb)) + kb + struct.pack(">H", len(vb)) + vb
    return out


def open_blob_offline(material: bytes, blob: bytes, ctx: dict[str, str] | None = None) -> bytes:
    """Decrypts an atrest ciphertext blob (docs/design.md, 2.3) with the key
    version's material: HKDF-SHA256(material, salt, "atrest/kms/blob/v1"),
    AES-256-GCM, AAD = 49-byte header || canonical context."""
    assert blob[0] == 1, "blob format version"
    header, salt, nonce = blob[:49], blob[21:37], blob[37:49]
    key = HKDF(algorithm=SHA256(), length=32, salt=salt, info=b"atrest/kms/blob/v1").derive(material)
    return AESGCM(key).decrypt(nonce, blob[49:], header + canonical_context(ctx or {}))


def params(kms, key_id, algorithm="RSAES_OAEP_SHA_256", spec="RSA_2048") -> dict:
    return kms.get_parameters_for_import(KeyId=key_id, WrappingAlgorithm=algorithm, WrappingKeySpec=spec)


def import_material(kms, key_id, material, algorithm="RSAES_OAEP_SHA_256", spec="RSA_2048", **kw) -> dict:
    p = params(kms, key_id, algorithm, spec)
    # AWS's default ExpirationModel is KEY_MATERIAL_EXPIRES, which needs a
    # ValidTo: say "does not expire" unless the test says otherwise.
    if "ExpirationModel" not in kw and "ValidTo" not in kw:
        kw["ExpirationModel"] = "KEY_MATERIAL_DOES_NOT_EXPIRE"
    return kms.import_key_material(KeyId=key_id, ImportToken=p["ImportToken"],
                                   EncryptedKeyMaterial=wrap(p["PublicKey"], material, algorithm), **kw)


def external_key(kms, description="byok") -> dict:
    md = kms.create_key(Origin="EXTERNAL", Description=description)["KeyMetadata"]
    assert md["Origin"] == "EXTERNAL" and md["KeyState"] == "PendingImport" and md["Enabled"] is False, md
    return md


def state(kms, key_id) -> str:
    return kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"]


def expect_pending_import(kms, key_id, blob):
    expect_error("KMSInvalidStateException", kms.encrypt, KeyId=key_id, Plaintext=b"x")
    expect_error("KMSInvalidStateException", kms.decrypt, CiphertextBlob=blob)
    expect_error("KMSInvalidStateException", kms.generate_data_key, KeyId=key_id, KeySpec="AES_256")
    expect_error("KMSInvalidStateException", kms.re_encrypt, CiphertextBlob=blob, DestinationKeyId=key_id)


@pytest.mark.parametrize(
    "algorithm,spec",
    [
        ("RSAES_OAEP_SHA_1", "RSA_2048"),
        ("RSAES_OAEP_SHA_256", "RSA_3072"),
        ("RSA_AES_KEY_WRAP_SHA_1", "RSA_2048"),
        ("RSA_AES_KEY_WRAP_SHA_256", "RSA_4096"),
    ],
)
def test_import_with_each_wrapping_algorithm(kms, algorithm, spec):
    md = external_key(kms)
    kid = md["KeyId"]
    expect_error("KMSInvalidStateException", kms.encrypt, KeyId=kid, Plaintext=b"x")
    expect_error("KMSInvalidStateException", kms.generate_data_key, KeyId=kid, KeySpec="AES_256")
    assert "CurrentKeyMaterialId" not in md

    before = datetime.datetime.now(UTC)
    p = params(kms, kid, algorithm, spec)
    public = load_der_public_key(p["PublicKey"])
    assert public.key_size == int(spec.split("_")[1])
    assert p["KeyId"] == md["Arn"] and p["ImportToken"]
    valid_to = p["ParametersValidTo"]
    assert abs(valid_to - (before + datetime.timedelta(hours=24))) < datetime.timedelta(minutes=5), valid_to

    material = os.urandom(32)
    out = kms.import_key_material(KeyId=kid, ImportToken=p["ImportToken"],
                                  EncryptedKeyMaterial=wrap(p["PublicKey"], material, algorithm),
                                  ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")
    assert out["KeyId"] == md["Arn"]
    after = kms.describe_key(KeyId=kid)["KeyMetadata"]
    assert after["KeyState"] == "Enabled" and after["Enabled"] is True
    assert after["ExpirationModel"] == "KEY_MATERIAL_DOES_NOT_EXPIRE" and "ValidTo" not in after
    assert after["CurrentKeyMaterialId"] == out["KeyMaterialId"]

    ctx = {"purpose": "byok", "alg": algorithm}
    blob = kms.encrypt(KeyId=kid, Plaintext=b"imported " + algorithm.encode(), EncryptionContext=ctx)["CiphertextBlob"]
    assert kms.decrypt(CiphertextBlob=blob, EncryptionContext=ctx)["Plaintext"] == b"imported " + algorithm.encode()
    # The material the key now uses is exactly the one imported.
    assert open_blob_offline(material, blob, ctx) == b"imported " + algorithm.encode()
    dk = kms.generate_data_key(KeyId=kid, KeySpec="AES_256")
    assert open_blob_offline(material, dk["CiphertextBlob"]) == dk["Plaintext"]


def test_delete_reimport_and_refusals(kms):
    md = external_key(kms)
    kid, arn = md["KeyId"], md["Arn"]
    material = os.urandom(32)
    first = import_material(kms, kid, material, "RSA_AES_KEY_WRAP_SHA_256")
    old_blob = kms.encrypt(KeyId=kid, Plaintext=b"before deletion")["CiphertextBlob"]

    # Delete: PendingImport, crypto refused, metadata still readable.
    kms.delete_imported_key_material(KeyId=kid)
    assert state(kms, kid) == "PendingImport"
    expect_pending_import(kms, kid, old_blob)
    assert kms.describe_key(KeyId=arn)["KeyMetadata"]["Origin"] == "EXTERNAL"
    # Other material is refused, and so is material of the wrong size.
    expect_error("IncorrectKeyMaterialException", import_material, kms, kid, os.urandom(32))
    for size in (16, 31, 33, 64):
        expect_error("IncorrectKeyMaterialException", import_material, kms, kid, os.urandom(size))
    assert state(kms, kid) == "PendingImport"
    # The same material restores the key; old ciphertexts decrypt.
    again = import_material(kms, kid, material, "RSAES_OAEP_SHA_1", "RSA_3072")
    assert again["KeyMaterialId"] == first["KeyMaterialId"]
    assert state(kms, kid) == "Enabled"
    assert kms.decrypt(CiphertextBlob=old_blob)["Plaintext"] == b"before deletion"
    # Re-importing the same material into an enabled key is fine too.
    import_material(kms, kid, material)
    assert kms.decrypt(CiphertextBlob=old_blob)["Plaintext"] == b"before deletion"

    # Tokens: another key's, a tampered one, random bytes.
    other = external_key(kms, "other")
    mine = params(kms, kid)
    theirs = params(kms, other["KeyId"])
    expect_error("InvalidImportTokenException", kms.import_key_material, KeyId=kid, ImportToken=theirs["ImportToken"],
                 EncryptedKeyMaterial=wrap(theirs["PublicKey"], material, "RSAES_OAEP_SHA_256"),
                 ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")
    token = bytearray(mine["ImportToken"])
    token[len(token) // 2] ^= 0x01
    expect_error("InvalidImportTokenException", kms.import_key_material, KeyId=kid, ImportToken=bytes(token),
                 EncryptedKeyMaterial=wrap(mine["PublicKey"], material, "RSAES_OAEP_SHA_256"),
                 ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")
    expect_error("InvalidImportTokenException", kms.import_key_material, KeyId=kid, ImportToken=os.urandom(200),
                 EncryptedKeyMaterial=wrap(mine["PublicKey"], material, "RSAES_OAEP_SHA_256"),
                 ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")
    # Material that does not unwrap under the token's key and algorithm.
    undecryptable = [
        os.urandom(256),
        wrap(theirs["PublicKey"], material, "RSAES_OAEP_SHA_256"),  # another wrapping key
        wrap(mine["PublicKey"], material, "RSAES_OAEP_SHA_1"),  # another hash
        wrap(mine["PublicKey"], material, "RSA_AES_KEY_WRAP_SHA_256"),  # another algorithm
    ]
    for bad in undecryptable:
        expect_error("InvalidCiphertextException", kms.import_key_material, KeyId=kid, ImportToken=mine["ImportToken"],
                     EncryptedKeyMaterial=bad, ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")
    # ... and the other key is still waiting for its material.
    assert state(kms, other["KeyId"]) == "PendingImport"

    # Expiry parameters.
    now = datetime.datetime.now(UTC)
    good = wrap(mine["PublicKey"], material, "RSAES_OAEP_SHA_256")
    for kw in ({"ExpirationModel": "KEY_MATERIAL_EXPIRES"},
               {"ExpirationModel": "KEY_MATERIAL_EXPIRES", "ValidTo": now + datetime.timedelta(days=366)},
               {"ExpirationModel": "KEY_MATERIAL_EXPIRES", "ValidTo": now - datetime.timedelta(hours=1)},
               {"ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE", "ValidTo": now + datetime.timedelta(days=3)}):
        expect_error("ValidationException", kms.import_key_material, KeyId=kid, ImportToken=mine["ImportToken"],
                     EncryptedKeyMaterial=good, **kw)
    out = kms.import_key_material(KeyId=kid, ImportToken=mine["ImportToken"], EncryptedKeyMaterial=good,
                                  ExpirationModel="KEY_MATERIAL_EXPIRES",
                                  ValidTo=now + datetime.timedelta(days=364))
    assert out["KeyMaterialId"] == first["KeyMaterialId"]
    shown = kms.describe_key(KeyId=kid)["KeyMetadata"]
    assert shown["ExpirationModel"] == "KEY_MATERIAL_EXPIRES"
    assert abs(shown["ValidTo"] - (now + datetime.timedelta(days=364))) < datetime.timedelta(seconds=5)

    # A key pending deletion takes no material and gives no parameters.
    doomed = external_key(kms, "doomed")
    doomed_params = params(kms, doomed["KeyId"])
    kms.schedule_key_deletion(KeyId=doomed["KeyId"], PendingWindowInDays=7)
    expect_error("KMSInvalidStateException", params, kms, doomed["KeyId"])
    expect_error("KMSInvalidStateException", kms.import_key_material, KeyId=doomed["KeyId"],
                 ImportToken=doomed_params["ImportToken"],
                 EncryptedKeyMaterial=wrap(doomed_params["PublicKey"], os.urandom(32), "RSAES_OAEP_SHA_256"),
                 ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")
    assert state(kms, doomed["KeyId"]) == "PendingDeletion"
    # Imported material is not rotated by atrest.
    expect_error("UnsupportedOperationException", kms.enable_key_rotation, KeyId=kid)
    # Keys whose material atrest generated take no imports.
    native = kms.create_key()["KeyMetadata"]["KeyId"]
    expect_error("UnsupportedOperationException", params, kms, native)
    expect_error("UnsupportedOperationException", kms.import_key_material, KeyId=native,
                 ImportToken=mine["ImportToken"], EncryptedKeyMaterial=good,
                 ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")
    expect_error("UnsupportedOperationException", kms.delete_imported_key_material, KeyId=native)


def test_unknown_algorithms_and_specs(kms_raw):
    kid = external_key(kms_raw)["KeyId"]
    for alg, spec, code in (("RSAES_OAEP_SHA_512", "RSA_2048", "ValidationException"),
                            ("RSAES_OAEP_SHA_256", "RSA_1024", "ValidationException"),
                            ("RSAES_PKCS1_V1_5", "RSA_2048", "UnsupportedOperationException")):
        expect_error(code, kms_raw.get_parameters_for_import, KeyId=kid, WrappingAlgorithm=alg, WrappingKeySpec=spec)
    expect_error("NotFoundException", kms_raw.get_parameters_for_import, KeyId="alias/nothing",
                 WrappingAlgorithm="RSAES_OAEP_SHA_256", WrappingKeySpec="RSA_2048")


def test_material_expiry_and_token_expiry_via_lifecycle(make_server):
    srv = make_server().start()
    kms = srv.client()
    expiring = external_key(kms, "expires in 10 days")
    forever = external_key(kms, "does not expire")
    m1, m2 = os.urandom(32), os.urandom(32)
    valid_to = datetime.datetime.now(UTC) + datetime.timedelta(days=10)
    import_material(kms, expiring["KeyId"], m1, "RSA_AES_KEY_WRAP_SHA_1",
                    ExpirationModel="KEY_MATERIAL_EXPIRES", ValidTo=valid_to)
    import_material(kms, forever["KeyId"], m2)
    md = kms.describe_key(KeyId=expiring["KeyId"])["KeyMetadata"]
    assert md["ExpirationModel"] == "KEY_MATERIAL_EXPIRES"
    assert abs(md["ValidTo"] - valid_to) < datetime.timedelta(seconds=2)
    blob1 = kms.encrypt(KeyId=expiring["KeyId"], Plaintext=b"expiring")["CiphertextBlob"]
    blob2 = kms.encrypt(KeyId=forever["KeyId"], Plaintext=b"forever")["CiphertextBlob"]
    stale = params(kms, expiring["KeyId"])  # valid for 24 hours

    assert srv.stop() == 0, srv.last_output()
    srv.start("--lifecycle-clock-offset-days", "11", "--lifecycle-interval", "1")
    kms = srv.client()
    deadline = time.monotonic() + 20
    while state(kms, expiring["KeyId"]) != "PendingImport":
        if time.monotonic() > deadline:
            pytest.fail(f"expired material was not removed within 20s:\n{srv.last_output()[-3000:]}")
        time.sleep(0.2)
    expect_pending_import(kms, expiring["KeyId"], blob1)
    # Material that does not expire is untouched.
    assert state(kms, forever["KeyId"]) == "Enabled"
    assert kms.decrypt(CiphertextBlob=blob2)["Plaintext"] == b"forever"
    # An import token older than 24 hours is refused.
    expect_error("ExpiredImportTokenException", kms.import_key_material, KeyId=expiring["KeyId"],
                 ImportToken=stale["ImportToken"], EncryptedKeyMaterial=wrap(stale["PublicKey"], m1,
                                                                             "RSAES_OAEP_SHA_256"),
                 ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")
    # Re-importing the same material restores the key and its ciphertexts.
    expect_error("IncorrectKeyMaterialException", import_material, kms, expiring["KeyId"], m2)
    import_material(kms, expiring["KeyId"], m1)
    assert state(kms, expiring["KeyId"]) == "Enabled"
    assert kms.decrypt(CiphertextBlob=blob1)["Plaintext"] == b"expiring"
    md = kms.describe_key(KeyId=expiring["KeyId"])["KeyMetadata"]
    assert md["ExpirationModel"] == "KEY_MATERIAL_DOES_NOT_EXPIRE"
    time.sleep(2.5)  # further ticks leave it alone
    assert state(kms, expiring["KeyId"]) == "Enabled"


def test_byok_errors_carry_aws_codes(kms):
    """A wrapped-material error never leaks as a server fault (5xx)."""
    kid = external_key(kms)["KeyId"]
    p = params(kms, kid, "RSA_AES_KEY_WRAP_SHA_256", "RSA_2048")
    rsa_len = 256
    good = wrap(p["PublicKey"], os.urandom(32), "RSA_AES_KEY_WRAP_SHA_256")
    for bad in (good[:rsa_len], good[:rsa_len + 8], good[rsa_len:], b"\x00", good + b"\x00" * 8):
        try:
            kms.import_key_material(KeyId=kid, ImportToken=p["ImportToken"], EncryptedKeyMaterial=bad,
                                    ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")
            pytest.fail(f"accepted {len(bad)} bytes of broken material")
        except ClientError as e:
            assert e.response["ResponseMetadata"]["HTTPStatusCode"] == 400, e.response
            assert e.response["Error"]["Code"] in ("InvalidCiphertextException", "IncorrectKeyMaterialException"), \
                e.response["Error"]
    assert state(kms, kid) == "PendingImport"


def test_new_material_rotates_on_demand_and_old_ciphertexts_decrypt(kms, kms_raw):
    """AWS's on-demand rotation of imported material: NEW_KEY_MATERIAL is
    PENDING_ROTATION until RotateKeyOnDemand makes it current; every
    ciphertext decrypts under the material it was made with (checked
    offline with that material too); ListKeyRotations shows each material's
    state; non-current material can be deleted and re-imported by id."""
    kid = external_key(kms)["KeyId"]
    m1, m2 = os.urandom(32), os.urandom(32)
    id1 = import_material(kms, kid, m1, KeyMaterialDescription="first")["KeyMaterialId"]
    c1 = kms.encrypt(KeyId=kid, Plaintext=b"one")["CiphertextBlob"]
    assert open_blob_offline(m1, c1) == b"one"
    expect_error("KMSInvalidStateException", kms.rotate_key_on_demand, KeyId=kid)
    expect_error("ValidationException", import_material, kms, kid, os.urandom(32),
                 ImportType="NEW_KEY_MATERIAL", ExpirationModel="KEY_MATERIAL_EXPIRES")
    expect_error("IncorrectKeyMaterialException", import_material, kms, kid, m1, ImportType="NEW_KEY_MATERIAL")
    expect_error("IncorrectKeyMaterialException", import_material, kms, kid, m2,
                 ImportType="EXISTING_KEY_MATERIAL")
    valid_to = datetime.datetime.now(UTC) + datetime.timedelta(days=30)
    id2 = import_material(kms, kid, m2, ImportType="NEW_KEY_MATERIAL", KeyMaterialDescription="second",
                          ExpirationModel="KEY_MATERIAL_EXPIRES", ValidTo=valid_to)["KeyMaterialId"]
    assert id2 != id1
    assert kms.list_key_rotations(KeyId=kid)["Rotations"] == []
    every = kms.list_key_rotations(KeyId=kid, IncludeKeyMaterial="ALL_KEY_MATERIAL")["Rotations"]
    assert [(r["KeyMaterialId"], r["KeyMaterialState"], r["ImportState"]) for r in every] == [
        (id1, "CURRENT", "IMPORTED"), (id2, "PENDING_ROTATION", "IMPORTED")]
    assert every[0]["ExpirationModel"] == "KEY_MATERIAL_DOES_NOT_EXPIRE" and every[0]["KeyMaterialDescription"] == "first"
    assert every[1]["ExpirationModel"] == "KEY_MATERIAL_EXPIRES"
    assert abs(every[1]["ValidTo"] - valid_to) < datetime.timedelta(seconds=2)
    assert "RotationDate" not in every[0] and "RotationDate" not in every[1]
    # Pending material is not used yet; one pending material at a time.
    assert kms.decrypt(CiphertextBlob=kms.encrypt(KeyId=kid, Plaintext=b"x")["CiphertextBlob"])["KeyMaterialId"] == id1
    expect_error("KMSInvalidStateException", import_material, kms, kid, os.urandom(32),
                 ImportType="NEW_KEY_MATERIAL")

    before = datetime.datetime.now(UTC)
    kms.rotate_key_on_demand(KeyId=kid)
    md = kms.describe_key(KeyId=kid)["KeyMetadata"]
    assert md["CurrentKeyMaterialId"] == id2 and md["ExpirationModel"] == "KEY_MATERIAL_EXPIRES"
    c2 = kms.encrypt(KeyId=kid, Plaintext=b"two")["CiphertextBlob"]
    assert open_blob_offline(m2, c2) == b"two"
    assert kms.decrypt(CiphertextBlob=c2)["KeyMaterialId"] == id2
    d1 = kms.decrypt(CiphertextBlob=c1)
    assert d1["Plaintext"] == b"one" and d1["KeyMaterialId"] == id1
    rot = kms.list_key_rotations(KeyId=kid)["Rotations"]
    assert len(rot) == 1 and rot[0]["KeyMaterialId"] == id2 and rot[0]["RotationType"] == "ON_DEMAND"
    assert rot[0]["KeyMaterialState"] == "CURRENT"
    assert abs(rot[0]["RotationDate"] - before) < datetime.timedelta(minutes=5)
    every = kms.list_key_rotations(KeyId=kid, IncludeKeyMaterial="ALL_KEY_MATERIAL")["Rotations"]
    assert [r["KeyMaterialState"] for r in every] == ["NON_CURRENT", "CURRENT"]
    expect_error("KMSInvalidStateException", kms.rotate_key_on_demand, KeyId=kid)

    # Delete the old material: the key stays Enabled, its ciphertexts wait.
    assert kms.delete_imported_key_material(KeyId=kid, KeyMaterialId=id1)["KeyMaterialId"] == id1
    assert state(kms, kid) == "Enabled"
    expect_error("KMSInvalidStateException", kms.decrypt, CiphertextBlob=c1)
    assert kms.decrypt(CiphertextBlob=c2)["Plaintext"] == b"two"
    every = kms.list_key_rotations(KeyId=kid, IncludeKeyMaterial="ALL_KEY_MATERIAL")["Rotations"]
    assert every[0]["ImportState"] == "PENDING_IMPORT"
    import_material(kms, kid, m1, KeyMaterialId=id1)
    assert kms.decrypt(CiphertextBlob=c1)["Plaintext"] == b"one"
    # Delete the current material: PendingImport until it is back.
    kms.delete_imported_key_material(KeyId=kid)
    assert state(kms, kid) == "PendingImport"
    expect_pending_import(kms, kid, c2)
    import_material(kms, kid, m2)
    assert state(kms, kid) == "Enabled"
    assert kms.decrypt(CiphertextBlob=c2)["Plaintext"] == b"two"
    assert kms.decrypt(CiphertextBlob=c1)["Plaintext"] == b"one"
    expect_error("ValidationException", kms_raw.list_key_rotations, KeyId=kid, IncludeKeyMaterial="SOME")
