"""HMAC keys and imported HMAC and asymmetric material through boto3 and the
aws CLI (issue 20, items 3 and 7).

* Each HMAC spec (HMAC_224/256/384/512) is created by boto3 and by the aws
  CLI; GenerateMac and VerifyMac round-trip with the spec's algorithm, and
  the MAC has the hash's length.
* An HMAC key with IMPORTED material (wrapped client-side by `cryptography`
  as AWS documents it): every MAC atrest makes equals Python's
  `hmac.new(key, msg, sha)`, for each spec, at AWS's shortest and longest
  material; material outside AWS's bounds is IncorrectKeyMaterialException.
* Refusals: a tampered MAC, a MAC of another message or key, a truncated
  MAC (KMSInvalidMacException); an algorithm that is not the key's, or a
  symmetric or RSA key (InvalidKeyUsageException); an unknown algorithm, an
  empty or 4097-byte message (ValidationException); a disabled key
  (DisabledException); DryRun (DryRunOperationException).
* Authorization: a user without a policy and another account are denied;
  a user whose identity policy allows kms:GenerateMac only for
  kms:MacAlgorithm HMAC_SHA_512 gets exactly that; a grant for GenerateMac
  and VerifyMac lets its grantee use the key.
* An ECC_NIST_P256 private key made by `cryptography`, wrapped with
  RSA_AES_KEY_WRAP_SHA_256, imports into an EXTERNAL ECC_NIST_P256 key
  (Enabled); material of another curve is IncorrectKeyMaterialException,
  RSA-OAEP for an RSA private key is ValidationException.

Capabilities: K3 BYOK, K5 key kinds.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from conftest import aws_cli, aws_json, boto_account, expect_error, new_user, user_arn
from test_byok import wrap

SPECS = [
    ("HMAC_224", "HMAC_SHA_224", hashlib.sha224, 28, 64),
    ("HMAC_256", "HMAC_SHA_256", hashlib.sha256, 32, 64),
    ("HMAC_384", "HMAC_SHA_384", hashlib.sha384, 48, 128),
    ("HMAC_512", "HMAC_SHA_512", hashlib.sha512, 64, 128),
]


def hmac_key(kms, spec, origin="AWS_KMS", **kw) -> str:
    md = kms.create_key(KeySpec=spec, KeyUsage="GENERATE_VERIFY_MAC", Origin=origin, **kw)["KeyMetadata"]
    assert md["KeySpec"] == spec and md["KeyUsage"] == "GENERATE_VERIFY_MAC", md
    return md["Arn"]


def import_raw(kms, key_id, material, algorithm="RSAES_OAEP_SHA_256", spec="RSA_3072", **kw):
    p = kms.get_parameters_for_import(KeyId=key_id, WrappingAlgorithm=algorithm, WrappingKeySpec=spec)
    # AWS's default ExpirationModel (KEY_MATERIAL_EXPIRES) needs a ValidTo.
    if "ExpirationModel" not in kw and "ValidTo" not in kw:
        kw["ExpirationModel"] = "KEY_MATERIAL_DOES_NOT_EXPIRE"
    return kms.import_key_material(KeyId=key_id, ImportToken=p["ImportToken"],
                                   EncryptedKeyMaterial=wrap(p["PublicKey"], material, algorithm), **kw)


@pytest.mark.parametrize("spec,alg,sha,lo,hi", SPECS)
def test_generated_hmac_keys_boto3_and_cli(server, kms, tmp_path, spec, alg, sha, lo, hi):
    arn = hmac_key(kms, spec)
    md = kms.describe_key(KeyId=arn)["KeyMetadata"]
    assert md["MacAlgorithms"] == [alg]
    out = kms.generate_mac(KeyId=arn, MacAlgorithm=alg, Message=b"hello")
    assert out["KeyId"] == arn and out["MacAlgorithm"] == alg
    assert len(out["Mac"]) == sha().digest_size
    v = kms.verify_mac(KeyId=arn, MacAlgorithm=alg, Message=b"hello", Mac=out["Mac"])
    assert v["MacValid"] is True and v["KeyId"] == arn and v["MacAlgorithm"] == alg

    # The aws CLI: create, GenerateMac, VerifyMac (the same MAC as boto3's).
    cli_key = aws_json(server, "kms", "create-key", "--key-spec", spec, "--key-usage", "GENERATE_VERIFY_MAC")
    cid = cli_key["KeyMetadata"]["KeyId"]
    (tmp_path / "msg.bin").write_bytes(b"hello")
    g = aws_json(server, "kms", "generate-mac", "--key-id", cid, "--mac-algorithm", alg,
                 "--message", f"fileb://{tmp_path / 'msg.bin'}")
    tag = base64.b64decode(g["Mac"])
    assert len(tag) == sha().digest_size and g["MacAlgorithm"] == alg
    assert kms.generate_mac(KeyId=cid, MacAlgorithm=alg, Message=b"hello")["Mac"] == tag
    (tmp_path / "mac.bin").write_bytes(tag)
    v = aws_json(server, "kms", "verify-mac", "--key-id", cid, "--mac-algorithm", alg,
                 "--message", f"fileb://{tmp_path / 'msg.bin'}", "--mac", f"fileb://{tmp_path / 'mac.bin'}")
    assert v["MacValid"] is True
    (tmp_path / "mac.bin").write_bytes(tag[:-1] + bytes([tag[-1] ^ 1]))
    bad = aws_cli(server, "kms", "verify-mac", "--key-id", cid, "--mac-algorithm", alg,
                  "--message", f"fileb://{tmp_path / 'msg.bin'}", "--mac", f"fileb://{tmp_path / 'mac.bin'}",
                  check=False)
    assert bad.returncode != 0 and "KMSInvalidMacException" in bad.stderr, bad.stderr


@pytest.mark.parametrize("spec,alg,sha,lo,hi", SPECS)
def test_imported_hmac_material_macs_equal_pythons_hmac(kms, spec, alg, sha, lo, hi):
    for n in (lo, hi):
        arn = hmac_key(kms, spec, origin="EXTERNAL")
        assert kms.describe_key(KeyId=arn)["KeyMetadata"]["KeyState"] == "PendingImport"
        material = bytes((i * 7 + n) % 256 for i in range(n))
        out = import_raw(kms, arn, material)
        assert len(out["KeyMaterialId"]) == 64
        assert kms.describe_key(KeyId=arn)["KeyMetadata"]["KeyState"] == "Enabled"
        for msg in (b"x", b"The quick brown fox jumps over the lazy dog", bytes(range(256)) * 16):
            tag = kms.generate_mac(KeyId=arn, MacAlgorithm=alg, Message=msg)["Mac"]
            assert tag == hmac.new(material, msg, sha).digest(), (spec, n)
            assert kms.verify_mac(KeyId=arn, MacAlgorithm=alg, Message=msg,
                                  Mac=hmac.new(material, msg, sha).digest())["MacValid"] is True
    for n in (lo - 1, hi + 1):
        arn = hmac_key(kms, spec, origin="EXTERNAL")
        expect_error("IncorrectKeyMaterialException", import_raw, kms, arn, bytes(n))


def test_mac_refusals(kms, kms_raw):
    k256 = hmac_key(kms, "HMAC_256")
    k384 = hmac_key(kms, "HMAC_384")
    other = hmac_key(kms, "HMAC_256")
    sym = kms.create_key()["KeyMetadata"]["Arn"]
    rsa_key = kms.create_key(KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["Arn"]
    tag = kms.generate_mac(KeyId=k256, MacAlgorithm="HMAC_SHA_256", Message=b"msg")["Mac"]

    tampered = bytes([tag[0] ^ 1]) + tag[1:]
    for key, msg, mac in [(k256, b"msg", tampered), (k256, b"msh", tag), (other, b"msg", tag),
                          (k256, b"msg", tag[:16]), (k256, b"msg", tag + b"\0")]:
        expect_error("KMSInvalidMacException", kms.verify_mac, KeyId=key, MacAlgorithm="HMAC_SHA_256",
                     Message=msg, Mac=mac)
    for key, alg in [(k384, "HMAC_SHA_256"), (k256, "HMAC_SHA_512"), (sym, "HMAC_SHA_256"),
                     (rsa_key, "HMAC_SHA_256")]:
        expect_error("InvalidKeyUsageException", kms.generate_mac, KeyId=key, MacAlgorithm=alg, Message=b"m")
        expect_error("InvalidKeyUsageException", kms.verify_mac, KeyId=key, MacAlgorithm=alg, Message=b"m",
                     Mac=tag)
    expect_error("ValidationException", kms_raw.generate_mac, KeyId=k256, MacAlgorithm="HMAC_MD5", Message=b"m")
    expect_error("ValidationException", kms_raw.generate_mac, KeyId=k256, MacAlgorithm="HMAC_SHA_256",
                 Message=b"")
    expect_error("ValidationException", kms_raw.generate_mac, KeyId=k256, MacAlgorithm="HMAC_SHA_256",
                 Message=b"m" * 4097)
    assert kms.generate_mac(KeyId=k256, MacAlgorithm="HMAC_SHA_256", Message=b"m" * 4096)["Mac"]
    expect_error("DryRunOperationException", kms.generate_mac, KeyId=k256, MacAlgorithm="HMAC_SHA_256",
                 Message=b"m", DryRun=True, status=412)
    kms.disable_key(KeyId=k256)
    expect_error("DisabledException", kms.generate_mac, KeyId=k256, MacAlgorithm="HMAC_SHA_256", Message=b"m")
    expect_error("DisabledException", kms.verify_mac, KeyId=k256, MacAlgorithm="HMAC_SHA_256",
                 Message=b"msg", Mac=tag)


def test_mac_authorization(server, kms):
    account = boto_account(server)
    key = hmac_key(kms, "HMAC_512")
    k256 = hmac_key(kms, "HMAC_256")
    nobody = server.client(creds=new_user(server, account, "nobody"))
    only512 = server.client(creds=new_user(server, account, "only512", policy={
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": ["kms:GenerateMac", "kms:VerifyMac"], "Resource": "*",
                       "Condition": {"StringEquals": {"kms:MacAlgorithm": "HMAC_SHA_512"}}}]}))
    expect_error("AccessDeniedException", nobody.generate_mac, KeyId=key, MacAlgorithm="HMAC_SHA_512",
                 Message=b"m")
    tag = only512.generate_mac(KeyId=key, MacAlgorithm="HMAC_SHA_512", Message=b"m")["Mac"]
    assert only512.verify_mac(KeyId=key, MacAlgorithm="HMAC_SHA_512", Message=b"m", Mac=tag)["MacValid"]
    expect_error("AccessDeniedException", only512.generate_mac, KeyId=k256, MacAlgorithm="HMAC_SHA_256",
                 Message=b"m")
    # A grant lets its grantee use the key; Encrypt is not a grant operation
    # of an HMAC key.
    kms.create_grant(KeyId=key, GranteePrincipal=user_arn(account, "nobody"),
                     Operations=["GenerateMac", "VerifyMac"])
    assert nobody.generate_mac(KeyId=key, MacAlgorithm="HMAC_SHA_512", Message=b"m")["Mac"] == tag
    expect_error("ValidationException", kms.create_grant, KeyId=key,
                 GranteePrincipal=user_arn(account, "nobody"), Operations=["Encrypt"])


def test_import_asymmetric_material(kms):
    arn = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY", Origin="EXTERNAL")["KeyMetadata"]["Arn"]
    assert kms.describe_key(KeyId=arn)["KeyMetadata"]["KeyState"] == "PendingImport"
    private = ec.generate_private_key(ec.SECP256R1())
    pkcs8 = private.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    wrong = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    expect_error("IncorrectKeyMaterialException", import_raw, kms, arn, wrong, "RSA_AES_KEY_WRAP_SHA_256",
                 "RSA_2048")
    out = import_raw(kms, arn, pkcs8, "RSA_AES_KEY_WRAP_SHA_256", "RSA_2048")
    md = kms.describe_key(KeyId=arn)["KeyMetadata"]
    assert md["KeyState"] == "Enabled" and md["Origin"] == "EXTERNAL", md
    assert md["CurrentKeyMaterialId"] == out["KeyMaterialId"]
    # GetPublicKey is the asymmetric engineer's; where it exists, it must
    # answer the imported key's public key.
    try:
        pub = kms.get_public_key(KeyId=arn)["PublicKey"]
    except kms.exceptions.UnsupportedOperationException:
        pub = None
    if pub is not None:
        assert pub == private.public_key().public_bytes(serialization.Encoding.DER,
                                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    # An RSA private key goes only with RSA_AES_KEY_WRAP.
    rsa_arn = kms.create_key(KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY", Origin="EXTERNAL")["KeyMetadata"]["Arn"]
    expect_error("ValidationException", kms.get_parameters_for_import, KeyId=rsa_arn,
                 WrappingAlgorithm="RSAES_OAEP_SHA_256", WrappingKeySpec="RSA_4096")
    rsa_pkcs8 = rsa.generate_private_key(65537, 2048).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    import_raw(kms, rsa_arn, rsa_pkcs8, "RSA_AES_KEY_WRAP_SHA_1", "RSA_3072")
    assert kms.describe_key(KeyId=rsa_arn)["KeyMetadata"]["KeyState"] == "Enabled"
    expect_error("UnsupportedOperationException", kms.create_key, KeySpec="ECC_NIST_EDWARDS25519",
                 KeyUsage="SIGN_VERIFY", Origin="EXTERNAL")
