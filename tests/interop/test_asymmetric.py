"""Asymmetric KMS keys (issue 20) through boto3 and the aws CLI, checked
outside atrest: every signature atrest makes verifies with Python's
`cryptography` and with the `openssl` CLI using only the public key from
GetPublicKey; RSA-OAEP ciphertexts made outside decrypt in atrest; ECDH
agrees with the other side computed by `cryptography`; GenerateDataKeyPair's
private keys match their public keys. Bad input gets AWS's exception types.

Capabilities: K1 keys, K4 envelope encryption, O1 API.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mldsa, padding, rsa

from conftest import aws_cli, aws_json, code_of, expect_error, new_account, rest_call

HASHES = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
OPENSSL_DIGEST = {"256": "sha256", "384": "sha384", "512": "sha512"}

SIGNING = {
    "RSA_2048": ["RSASSA_PSS_SHA_256", "RSASSA_PSS_SHA_384", "RSASSA_PSS_SHA_512",
                 "RSASSA_PKCS1_V1_5_SHA_256", "RSASSA_PKCS1_V1_5_SHA_384", "RSASSA_PKCS1_V1_5_SHA_512"],
    "RSA_3072": ["RSASSA_PSS_SHA_256", "RSASSA_PKCS1_V1_5_SHA_512"],
    "RSA_4096": ["RSASSA_PSS_SHA_512", "RSASSA_PKCS1_V1_5_SHA_256"],
    "ECC_NIST_P256": ["ECDSA_SHA_256"],
    "ECC_NIST_P384": ["ECDSA_SHA_384"],
    "ECC_NIST_P521": ["ECDSA_SHA_512"],
    "ECC_SECG_P256K1": ["ECDSA_SHA_256"],
    "ECC_NIST_EDWARDS25519": ["ED25519_SHA_512"],
    "ML_DSA_44": ["ML_DSA_SHAKE_256"],
    "ML_DSA_65": ["ML_DSA_SHAKE_256"],
    "ML_DSA_87": ["ML_DSA_SHAKE_256"],
}


def bits(alg: str) -> str:
    return alg.rsplit("_", 1)[1]


def digest(alg: str, message: bytes) -> bytes:
    return hashlib.new("sha" + bits(alg), message).digest()


def verify_with_cryptography(der: bytes, alg: str, message: bytes, sig: bytes) -> None:
    """Raises InvalidSignature unless `sig` is `alg`'s signature of `message`."""
    pub = serialization.load_der_public_key(der)
    if alg.startswith("RSASSA_PSS"):
        h = HASHES[bits(alg)]()
        pub.verify(sig, message, padding.PSS(mgf=padding.MGF1(h), salt_length=h.digest_size), h)
    elif alg.startswith("RSASSA_PKCS1"):
        pub.verify(sig, message, padding.PKCS1v15(), HASHES[bits(alg)]())
    elif alg.startswith("ECDSA"):
        pub.verify(sig, message, ec.ECDSA(HASHES[bits(alg)]()))
    else:  # Ed25519, ML-DSA: the message itself
        pub.verify(sig, message)


def verify_with_openssl(tmp, der: bytes, alg: str, message: bytes, sig: bytes, kind: str) -> bool:
    """Verifies with the openssl CLI (`dgst -verify` for RAW, `pkeyutl
    -verify` on the digest for DIGEST, `pkeyutl -rawin` for Ed25519)."""
    (tmp / "pub.der").write_bytes(der)
    (tmp / "msg.bin").write_bytes(message)
    (tmp / "sig.bin").write_bytes(sig)
    key = ["-keyform", "DER"]
    if alg == "ED25519_SHA_512":
        cmd = ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(tmp / "pub.der"), *key,
               "-rawin", "-in", str(tmp / "msg.bin"), "-sigfile", str(tmp / "sig.bin")]
    else:
        pss = ["rsa_padding_mode:pss", "rsa_pss_saltlen:digest"] if alg.startswith("RSASSA_PSS") else []
        if kind == "RAW":
            cmd = ["openssl", "dgst", "-" + OPENSSL_DIGEST[bits(alg)], "-verify", str(tmp / "pub.der"), *key,
                   "-signature", str(tmp / "sig.bin")]
            for o in pss:
                cmd += ["-sigopt", o]
            cmd.append(str(tmp / "msg.bin"))
        else:
            (tmp / "digest.bin").write_bytes(digest(alg, message))
            cmd = ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(tmp / "pub.der"), *key,
                   "-in", str(tmp / "digest.bin"), "-sigfile", str(tmp / "sig.bin"),
                   "-pkeyopt", "digest:" + OPENSSL_DIGEST[bits(alg)]]
            for o in pss:
                cmd += ["-pkeyopt", o]
    p = subprocess.run(cmd, capture_output=True, text=True)
    return p.returncode == 0 and "Verif" in p.stdout + p.stderr and "Failure" not in p.stdout


@pytest.fixture
def kms_root(make_server):
    server = make_server().start()
    creds = new_account(server, "111122223333")
    server.creds = creds
    return server, server.client(creds=creds), server.client(creds=creds, validate=False)


def create(kms, spec, usage):
    return kms.create_key(KeySpec=spec, KeyUsage=usage)["KeyMetadata"]["Arn"]


def test_every_signature_verifies_outside_atrest(kms_root, tmp_path):
    _, kms, _ = kms_root
    message = b"signed by atrest, verified elsewhere"
    openssl_checked = 0
    for spec, algs in SIGNING.items():
        arn = create(kms, spec, "SIGN_VERIFY")
        pk = kms.get_public_key(KeyId=arn)
        assert pk["KeyId"] == arn and pk["KeySpec"] == pk["CustomerMasterKeySpec"] == spec
        assert pk["KeyUsage"] == "SIGN_VERIFY" and "EncryptionAlgorithms" not in pk
        assert set(algs) <= set(pk["SigningAlgorithms"])
        der = pk["PublicKey"]
        for alg in algs:
            kinds = [("RAW", message)]
            if not alg.startswith(("ED25519", "ML_DSA")):
                kinds.append(("DIGEST", digest(alg, message)))
            for kind, m in kinds:
                out = kms.sign(KeyId=arn, Message=m, MessageType=kind, SigningAlgorithm=alg)
                assert out["KeyId"] == arn and out["SigningAlgorithm"] == alg
                sig = out["Signature"]
                verify_with_cryptography(der, alg, message, sig)
                if not spec.startswith("ML_DSA"):  # the openssl CLI here predates ML-DSA
                    assert verify_with_openssl(tmp_path, der, alg, message, sig, kind), (spec, alg, kind)
                    openssl_checked += 1
                v = kms.verify(KeyId=arn, Message=m, MessageType=kind, Signature=sig, SigningAlgorithm=alg)
                assert v["SignatureValid"] is True and v["KeyId"] == arn and v["SigningAlgorithm"] == alg
                tampered = bytearray(sig)
                tampered[-1] ^= 1
                expect_error("KMSInvalidSignatureException", kms.verify, KeyId=arn, Message=m,
                             MessageType=kind, Signature=bytes(tampered), SigningAlgorithm=alg)
                if not spec.startswith("ML_DSA"):
                    assert not verify_with_openssl(tmp_path, der, alg, message, bytes(tampered), kind)
    assert openssl_checked >= 25


def test_aws_cli_sign_verify_and_get_public_key(kms_root, tmp_path):
    server, kms, _ = kms_root
    creds_file = tmp_path / "creds"
    creds_file.write_text(
        f"[default]\naws_access_key_id = {server.creds[0]}\naws_secret_access_key = {server.creds[1]}\n")
    md = aws_json(server, "kms", "create-key", "--key-spec", "ECC_NIST_P384", "--key-usage", "SIGN_VERIFY",
                  creds_file=creds_file)["KeyMetadata"]
    assert md["SigningAlgorithms"] == ["ECDSA_SHA_384"]
    (tmp_path / "m.bin").write_bytes(b"the cli signs this")
    out = aws_json(server, "kms", "sign", "--key-id", md["Arn"], "--message", "fileb://m.bin",
                   "--message-type", "RAW", "--signing-algorithm", "ECDSA_SHA_384", creds_file=creds_file, cwd=tmp_path)
    sig = base64.b64decode(out["Signature"])
    pub = aws_json(server, "kms", "get-public-key", "--key-id", md["Arn"], creds_file=creds_file)
    der = base64.b64decode(pub["PublicKey"])
    assert pub["KeySpec"] == "ECC_NIST_P384" and pub["SigningAlgorithms"] == ["ECDSA_SHA_384"]
    verify_with_cryptography(der, "ECDSA_SHA_384", b"the cli signs this", sig)
    assert verify_with_openssl(tmp_path, der, "ECDSA_SHA_384", b"the cli signs this", sig, "RAW")
    (tmp_path / "s.bin").write_bytes(sig)
    v = aws_json(server, "kms", "verify", "--key-id", md["Arn"], "--message", "fileb://m.bin",
                 "--signature", "fileb://s.bin", "--signing-algorithm", "ECDSA_SHA_384",
                 creds_file=creds_file, cwd=tmp_path)
    assert v["SignatureValid"] is True
    # DIGEST through the CLI, RSA-PSS.
    rsa_md = aws_json(server, "kms", "create-key", "--key-spec", "RSA_2048", "--key-usage", "SIGN_VERIFY",
                      creds_file=creds_file)["KeyMetadata"]
    (tmp_path / "d.bin").write_bytes(hashlib.sha256(b"the cli signs this").digest())
    out = aws_json(server, "kms", "sign", "--key-id", rsa_md["KeyId"], "--message", "fileb://d.bin",
                   "--message-type", "DIGEST", "--signing-algorithm", "RSASSA_PSS_SHA_256",
                   creds_file=creds_file, cwd=tmp_path)
    der = base64.b64decode(aws_json(server, "kms", "get-public-key", "--key-id", rsa_md["KeyId"],
                                    creds_file=creds_file)["PublicKey"])
    verify_with_cryptography(der, "RSASSA_PSS_SHA_256", b"the cli signs this", base64.b64decode(out["Signature"]))
    # A tampered signature fails the CLI with AWS's error code.
    bad = bytearray(sig)
    bad[-1] ^= 1
    (tmp_path / "bad.bin").write_bytes(bytes(bad))
    p = aws_cli(server, "kms", "verify", "--key-id", md["Arn"], "--message", "fileb://m.bin",
                "--signature", "fileb://bad.bin", "--signing-algorithm", "ECDSA_SHA_384",
                creds_file=creds_file, cwd=tmp_path, check=False)
    assert p.returncode != 0 and "KMSInvalidSignatureException" in p.stderr
    # The CLI creates every asymmetric key type; each public key loads.
    combos = [(spec, "SIGN_VERIFY") for spec in SIGNING] + [
        (spec, "ENCRYPT_DECRYPT") for spec in ("RSA_2048", "RSA_3072", "RSA_4096")] + [
        (spec, "KEY_AGREEMENT") for spec in ("ECC_NIST_P256", "ECC_NIST_P384", "ECC_NIST_P521")]
    for spec, usage in combos:
        md = aws_json(server, "kms", "create-key", "--key-spec", spec, "--key-usage", usage,
                      creds_file=creds_file)["KeyMetadata"]
        assert md["KeySpec"] == spec and md["KeyUsage"] == usage
        pub = aws_json(server, "kms", "get-public-key", "--key-id", md["KeyId"], creds_file=creds_file)
        assert pub["KeyId"] == md["Arn"] and pub["KeySpec"] == spec and pub["KeyUsage"] == usage
        serialization.load_der_public_key(base64.b64decode(pub["PublicKey"]))


def test_rsa_oaep_ciphertexts_made_outside_decrypt_in_atrest(kms_root):
    _, kms, kms_raw = kms_root
    limits = {"RSA_2048": (214, 190), "RSA_3072": (342, 318), "RSA_4096": (470, 446)}
    for spec, (max1, max256) in limits.items():
        arn = create(kms, spec, "ENCRYPT_DECRYPT")
        pk = kms.get_public_key(KeyId=arn)
        assert pk["EncryptionAlgorithms"] == ["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"]
        pub = serialization.load_der_public_key(pk["PublicKey"])
        for alg, h, limit in (("RSAES_OAEP_SHA_1", hashes.SHA1, max1), ("RSAES_OAEP_SHA_256", hashes.SHA256, max256)):
            pt = bytes(range(256)) * 2
            pt = pt[:limit]
            ct = pub.encrypt(pt, padding.OAEP(mgf=padding.MGF1(h()), algorithm=h(), label=None))
            out = kms.decrypt(KeyId=arn, CiphertextBlob=ct, EncryptionAlgorithm=alg)
            assert out["Plaintext"] == pt and out["EncryptionAlgorithm"] == alg and out["KeyId"] == arn
            # atrest's own ciphertext is raw RSA-OAEP, as long as the modulus.
            enc = kms.encrypt(KeyId=arn, Plaintext=pt, EncryptionAlgorithm=alg)
            assert len(enc["CiphertextBlob"]) == pub.key_size // 8
            assert kms.decrypt(KeyId=arn, CiphertextBlob=enc["CiphertextBlob"],
                               EncryptionAlgorithm=alg)["Plaintext"] == pt
            expect_error("ValidationException", kms_raw.encrypt, KeyId=arn, Plaintext=pt + b"x" * (limit + 1 - len(pt)),
                         EncryptionAlgorithm=alg)
        expect_error("InvalidCiphertextException", kms.decrypt, KeyId=arn, CiphertextBlob=b"\x01" * (pub.key_size // 8),
                     EncryptionAlgorithm="RSAES_OAEP_SHA_256")
        expect_error("InvalidKeyUsageException", kms.encrypt, KeyId=arn, Plaintext=b"x")
        # ReEncrypt from RSA to a symmetric key and back.
        sym = kms.create_key()["KeyMetadata"]["Arn"]
        ct = pub.encrypt(b"moved", padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None))
        moved = kms.re_encrypt(CiphertextBlob=ct, SourceKeyId=arn, SourceEncryptionAlgorithm="RSAES_OAEP_SHA_256",
                               DestinationKeyId=sym)
        assert kms.decrypt(CiphertextBlob=moved["CiphertextBlob"])["Plaintext"] == b"moved"


def test_shared_secrets_agree_with_cryptography(kms_root):
    _, kms, kms_raw = kms_root
    for spec, curve in (("ECC_NIST_P256", ec.SECP256R1()), ("ECC_NIST_P384", ec.SECP384R1()),
                        ("ECC_NIST_P521", ec.SECP521R1())):
        arn = create(kms, spec, "KEY_AGREEMENT")
        pk = kms.get_public_key(KeyId=arn)
        assert pk["KeyAgreementAlgorithms"] == ["ECDH"] and pk["KeyUsage"] == "KEY_AGREEMENT"
        theirs = ec.generate_private_key(curve)
        their_der = theirs.public_key().public_bytes(serialization.Encoding.DER,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo)
        out = kms.derive_shared_secret(KeyId=arn, KeyAgreementAlgorithm="ECDH", PublicKey=their_der)
        assert out["KeyId"] == arn and out["KeyAgreementAlgorithm"] == "ECDH" and out["KeyOrigin"] == "AWS_KMS"
        expected = theirs.exchange(ec.ECDH(), serialization.load_der_public_key(pk["PublicKey"]))
        assert out["SharedSecret"] == expected
        # A bare point, another curve's key, garbage: ValidationException.
        point = theirs.public_key().public_bytes(serialization.Encoding.X962,
                                                 serialization.PublicFormat.UncompressedPoint)
        other = ec.generate_private_key(ec.SECP256K1()).public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        for bad in (point, other, b"\x30\x03\x02\x01\x01"):
            expect_error("ValidationException", kms_raw.derive_shared_secret, KeyId=arn,
                         KeyAgreementAlgorithm="ECDH", PublicKey=bad)
    sign = create(kms, "ECC_NIST_P256", "SIGN_VERIFY")
    expect_error("InvalidKeyUsageException", kms.derive_shared_secret, KeyId=sign, KeyAgreementAlgorithm="ECDH",
                 PublicKey=their_der)


def test_generate_data_key_pair_private_keys_match_their_public_keys(kms_root):
    _, kms, kms_raw = kms_root
    sym = kms.create_key()["KeyMetadata"]["Arn"]
    ctx = {"purpose": "pair"}
    for spec in ("RSA_2048", "ECC_NIST_P256", "ECC_NIST_P384", "ECC_NIST_P521", "ECC_SECG_P256K1",
                 "ECC_NIST_EDWARDS25519"):
        out = kms.generate_data_key_pair(KeyId=sym, KeyPairSpec=spec, EncryptionContext=ctx)
        assert out["KeyPairSpec"] == spec and out["KeyId"] == sym and out["KeyMaterialId"]
        blob_plain = kms.decrypt(CiphertextBlob=out["PrivateKeyCiphertextBlob"], EncryptionContext=ctx)["Plaintext"]
        assert blob_plain == out["PrivateKeyPlaintext"]
        expect_error("InvalidCiphertextException", kms.decrypt, CiphertextBlob=out["PrivateKeyCiphertextBlob"])
        pub = serialization.load_der_public_key(out["PublicKey"])
        for der in (out["PrivateKeyPlaintext"], blob_plain):
            private = serialization.load_der_private_key(der, password=None)
            if isinstance(private, rsa.RSAPrivateKey):
                sig = private.sign(b"m", padding.PKCS1v15(), hashes.SHA256())
                pub.verify(sig, b"m", padding.PKCS1v15(), hashes.SHA256())
            elif isinstance(private, ed25519.Ed25519PrivateKey):
                pub.verify(private.sign(b"m"), b"m")
            else:
                pub.verify(private.sign(b"m", ec.ECDSA(hashes.SHA256())), b"m", ec.ECDSA(hashes.SHA256()))
        without = kms.generate_data_key_pair_without_plaintext(KeyId=sym, KeyPairSpec=spec)
        assert "PrivateKeyPlaintext" not in without
        private = serialization.load_der_private_key(
            kms.decrypt(CiphertextBlob=without["PrivateKeyCiphertextBlob"])["Plaintext"], password=None)
        assert private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) == without["PublicKey"]
    expect_error("UnsupportedOperationException", kms.generate_data_key_pair, KeyId=sym, KeyPairSpec="SM2")
    rsa_key = create(kms, "RSA_2048", "ENCRYPT_DECRYPT")
    expect_error("InvalidKeyUsageException", kms.generate_data_key_pair, KeyId=rsa_key, KeyPairSpec="ECC_NIST_P256")


def test_bad_input_gets_aws_exceptions(kms_root):
    server, kms, kms_raw = kms_root
    p256 = create(kms, "ECC_NIST_P256", "SIGN_VERIFY")
    rsa_enc = create(kms, "RSA_2048", "ENCRYPT_DECRYPT")
    sig = kms.sign(KeyId=p256, Message=b"m", SigningAlgorithm="ECDSA_SHA_256")["Signature"]
    cases = [
        ("InvalidKeyUsageException", kms.sign, dict(KeyId=rsa_enc, Message=b"m", SigningAlgorithm="RSASSA_PSS_SHA_256")),
        ("InvalidKeyUsageException", kms.sign, dict(KeyId=p256, Message=b"m", SigningAlgorithm="RSASSA_PSS_SHA_256")),
        ("ValidationException", kms_raw.sign, dict(KeyId=p256, Message=b"m" * 4097, SigningAlgorithm="ECDSA_SHA_256")),
        ("ValidationException", kms_raw.sign, dict(KeyId=p256, Message=b"d" * 31, MessageType="DIGEST",
                                                   SigningAlgorithm="ECDSA_SHA_256")),
        ("ValidationException", kms_raw.sign, dict(KeyId=p256, Message=b"m", SigningAlgorithm="ECDSA_SHA_1")),
        ("KMSInvalidSignatureException", kms.verify, dict(KeyId=p256, Message=b"m", Signature=sig[:-1],
                                                          SigningAlgorithm="ECDSA_SHA_256")),
        ("KMSInvalidSignatureException", kms.verify, dict(KeyId=p256, Message=b"m", Signature=sig + b"\x00",
                                                          SigningAlgorithm="ECDSA_SHA_256")),
        ("KMSInvalidSignatureException", kms.verify, dict(KeyId=p256, Message=b"other", Signature=sig,
                                                          SigningAlgorithm="ECDSA_SHA_256")),
        ("InvalidCiphertextException", kms.decrypt, dict(KeyId=rsa_enc, CiphertextBlob=b"garbage" * 10,
                                                         EncryptionAlgorithm="RSAES_OAEP_SHA_1")),
        ("UnsupportedOperationException", kms.get_public_key, dict(KeyId=kms.create_key()["KeyMetadata"]["Arn"])),
    ]
    for code, fn, kw in cases:
        expect_error(code, fn, **kw)
    expect_error("DryRunOperationException", kms.sign, KeyId=p256, Message=b"m", SigningAlgorithm="ECDSA_SHA_256",
                 DryRun=True, status=412)
    # Ed25519ph's DIGEST and ML-DSA's EXTERNAL_MU are 64 bytes; EXTERNAL_MU is
    # ML-DSA's only; pure Ed25519 takes no DIGEST.
    ed = create(kms, "ECC_NIST_EDWARDS25519", "SIGN_VERIFY")
    ml = create(kms, "ML_DSA_44", "SIGN_VERIFY")
    for key, m, kind, alg in [
        (ed, b"d" * 63, "DIGEST", "ED25519_PH_SHA_512"),
        (ed, b"d" * 65, "DIGEST", "ED25519_PH_SHA_512"),
        (ed, b"d" * 64, "DIGEST", "ED25519_SHA_512"),
        (ed, b"d" * 64, "EXTERNAL_MU", "ED25519_PH_SHA_512"),
        (ml, b"d" * 63, "EXTERNAL_MU", "ML_DSA_SHAKE_256"),
        (ml, b"d" * 64, "DIGEST", "ML_DSA_SHAKE_256"),
        (p256, b"d" * 64, "EXTERNAL_MU", "ECDSA_SHA_256"),
    ]:
        assert code_of(kms.sign, KeyId=key, Message=m, MessageType=kind,
                       SigningAlgorithm=alg) == "ValidationException", (kind, alg, len(m))
    kms.disable_key(KeyId=p256)
    expect_error("DisabledException", kms.sign, KeyId=p256, Message=b"m", SigningAlgorithm="ECDSA_SHA_256")
    expect_error("DisabledException", kms.get_public_key, KeyId=p256)
    # A disk under a key that is not a symmetric encryption key: a clear 400.
    r = rest_call(server, "POST", "/v1/disks", {"size": 16 << 20, "key_id": rsa_enc}, creds=server.creds)
    assert r.status_code == 400, r.text
    assert "not a symmetric encryption key" in r.text, r.text
    assert json.loads(r.text).get("code") != "KMSInternalException"


# RFC 8032's Ed25519 verification (section 5.1.7, after its section 6
# reference code), with dom2 for Ed25519ph: neither `cryptography` nor the
# openssl 3.0 CLI here has Ed25519ph, so this is the verifier outside atrest.
_P = 2**255 - 19
_L = 2**252 + 27742317777372353535851937790883648493
_D = -121665 * pow(121666, _P - 2, _P) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)


def _add(a, b):
    x = (a[1] - a[0]) * (b[1] - b[0]) % _P
    y = (a[1] + a[0]) * (b[1] + b[0]) % _P
    c = 2 * a[3] * b[3] * _D % _P
    d = 2 * a[2] * b[2] % _P
    e, f, g, h = y - x, d - c, d + c, y + x
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _mul(s, pt):
    q = (0, 1, 1, 0)
    while s:
        if s & 1:
            q = _add(q, pt)
        pt = _add(pt, pt)
        s >>= 1
    return q


def _recover_x(y, sign):
    if y >= _P:
        return None
    x2 = (y * y - 1) * pow(_D * y * y + 1, _P - 2, _P)
    if x2 == 0:
        return None if sign else 0
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P:
        x = x * _SQRT_M1 % _P
    if (x * x - x2) % _P:
        return None
    return _P - x if (x & 1) != sign else x


def _decompress(b):
    y = int.from_bytes(b, "little")
    x = _recover_x(y & ((1 << 255) - 1), y >> 255)
    return None if x is None else (x, y & ((1 << 255) - 1), 1, x * (y & ((1 << 255) - 1)) % _P)


_GY = 4 * pow(5, _P - 2, _P) % _P
_G = (_recover_x(_GY, 0), _GY, 1, _recover_x(_GY, 0) * _GY % _P)


def ed25519_verify(public: bytes, message: bytes, sig: bytes, prehash: bool) -> bool:
    """RFC 8032 Ed25519 (prehash=False) or Ed25519ph with an empty context."""
    if len(sig) != 64 or len(public) != 32:
        return False
    a, r, s = _decompress(public), _decompress(sig[:32]), int.from_bytes(sig[32:], "little")
    if a is None or r is None or s >= _L:
        return False
    dom = b"SigEd25519 no Ed25519 collisions\x01\x00" if prehash else b""
    m = hashlib.sha512(message).digest() if prehash else message
    h = int.from_bytes(hashlib.sha512(dom + sig[:32] + public + m).digest(), "little") % _L
    sb, rha = _mul(s, _G), _add(r, _mul(h, a))
    return (sb[0] * rha[2] - rha[0] * sb[2]) % _P == 0 and (sb[1] * rha[2] - rha[1] * sb[2]) % _P == 0


def test_the_python_ed25519_verifier_is_rfc_8032():
    # Section 7.3 (Ed25519ph, "abc") and 7.1 TEST 1 (Ed25519, empty message).
    ph_pub = bytes.fromhex("ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf")
    ph_sig = bytes.fromhex("98a70222f0b8121aa9d30f813d683f809e462b469c7ff87639499bb94e6dae41"
                           "31f85042463c2a355a2003d062adf5aaa10b8c61e636062aaad11c2a26083406")
    assert ed25519_verify(ph_pub, b"abc", ph_sig, prehash=True)
    assert not ed25519_verify(ph_pub, b"abd", ph_sig, prehash=True)
    assert not ed25519_verify(ph_pub, b"abc", ph_sig, prehash=False)
    pub = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
    sig = bytes.fromhex("e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
                        "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b")
    assert ed25519_verify(pub, b"", sig, prehash=False)
    assert not ed25519_verify(pub, b"", sig, prehash=True)
    # And it agrees with `cryptography` on a fresh pure Ed25519 signature.
    k = ed25519.Ed25519PrivateKey.generate()
    raw = k.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert ed25519_verify(raw, b"x", k.sign(b"x"), prehash=False)


def test_ed25519ph_signatures_verify_outside_atrest(kms_root):
    _, kms, _ = kms_root
    arn = create(kms, "ECC_NIST_EDWARDS25519", "SIGN_VERIFY")
    pk = kms.get_public_key(KeyId=arn)
    assert "ED25519_PH_SHA_512" in pk["SigningAlgorithms"]
    public = serialization.load_der_public_key(pk["PublicKey"]).public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    message = b"Ed25519ph: KMS hashes with SHA-512, then signs"
    d = hashlib.sha512(message).digest()
    raw = kms.sign(KeyId=arn, Message=message, MessageType="RAW", SigningAlgorithm="ED25519_PH_SHA_512")
    assert raw["SigningAlgorithm"] == "ED25519_PH_SHA_512" and raw["KeyId"] == arn
    dig = kms.sign(KeyId=arn, Message=d, MessageType="DIGEST", SigningAlgorithm="ED25519_PH_SHA_512")
    # Deterministic: the RAW message and its digest get the same signature.
    assert raw["Signature"] == dig["Signature"]
    sig = raw["Signature"]
    assert ed25519_verify(public, message, sig, prehash=True)
    assert not ed25519_verify(public, message, sig, prehash=False)
    tampered = bytearray(sig)
    tampered[5] ^= 1
    assert not ed25519_verify(public, message, bytes(tampered), prehash=True)
    for kind, m in [("RAW", message), ("DIGEST", d)]:
        v = kms.verify(KeyId=arn, Message=m, MessageType=kind, Signature=sig, SigningAlgorithm="ED25519_PH_SHA_512")
        assert v["SignatureValid"] is True
        expect_error("KMSInvalidSignatureException", kms.verify, KeyId=arn, Message=m, MessageType=kind,
                     Signature=bytes(tampered), SigningAlgorithm="ED25519_PH_SHA_512")
    # Pure Ed25519's signature is another one, and is not Ed25519ph's.
    pure = kms.sign(KeyId=arn, Message=message, SigningAlgorithm="ED25519_SHA_512")["Signature"]
    assert ed25519_verify(public, message, pure, prehash=False)
    expect_error("KMSInvalidSignatureException", kms.verify, KeyId=arn, Message=message, Signature=pure,
                 SigningAlgorithm="ED25519_PH_SHA_512")


def spki_bit_string(der: bytes) -> bytes:
    """The contents of the BIT STRING of a DER SubjectPublicKeyInfo (minimal
    DER parse: SEQUENCE { SEQUENCE algorithm, BIT STRING key })."""
    def header(b, i):
        tag, n = b[i], b[i + 1]
        i += 2
        if n & 0x80:
            k = n & 0x7F
            n = int.from_bytes(b[i:i + k], "big")
            i += k
        return tag, n, i
    tag, n, i = header(der, 0)
    assert tag == 0x30 and i + n == len(der)
    tag, n, j = header(der, i)
    assert tag == 0x30
    tag, n, k = header(der, j + n)
    assert tag == 0x03 and der[k] == 0 and k + n == len(der)
    return der[k + 1:k + n]


ML_DSA = {"ML_DSA_44": (mldsa.MLDSA44PublicKey, 1312), "ML_DSA_65": (mldsa.MLDSA65PublicKey, 1952),
          "ML_DSA_87": (mldsa.MLDSA87PublicKey, 2592)}


def test_ml_dsa_external_mu_computed_outside_atrest(kms_root):
    _, kms, _ = kms_root
    message = b"a document too large to send, hashed by the client into mu"
    for spec, (cls, pk_len) in ML_DSA.items():
        arn = create(kms, spec, "SIGN_VERIFY")
        der = kms.get_public_key(KeyId=arn)["PublicKey"]
        pk = spki_bit_string(der)
        assert len(pk) == pk_len
        # FIPS 204: tr = SHAKE256(pk, 64); mu = SHAKE256(tr || 0x00 || len(ctx)=0 || M, 64).
        tr = hashlib.shake_256(pk).digest(64)
        mu = hashlib.shake_256(tr + b"\x00\x00" + message).digest(64)
        public = cls.from_public_bytes(pk)
        hasher = mldsa.MLDSAMuHasher(public)
        hasher.update(message)
        assert hasher.finalize() == mu, spec
        out = kms.sign(KeyId=arn, Message=mu, MessageType="EXTERNAL_MU", SigningAlgorithm="ML_DSA_SHAKE_256")
        assert out["SigningAlgorithm"] == "ML_DSA_SHAKE_256" and out["KeyId"] == arn
        over_mu = out["Signature"]
        # Outside atrest: the signature over mu is the signature of M.
        public.verify(over_mu, message)
        public.verify_mu(over_mu, mu)
        # In atrest: as a RAW signature of M, and as one over mu.
        for kind, m in [("RAW", message), ("EXTERNAL_MU", mu)]:
            v = kms.verify(KeyId=arn, Message=m, MessageType=kind, Signature=over_mu,
                           SigningAlgorithm="ML_DSA_SHAKE_256")
            assert v["SignatureValid"] is True, (spec, kind)
        # A RAW signature of M verifies as an EXTERNAL_MU signature of its mu.
        over_m = kms.sign(KeyId=arn, Message=message, SigningAlgorithm="ML_DSA_SHAKE_256")["Signature"]
        v = kms.verify(KeyId=arn, Message=mu, MessageType="EXTERNAL_MU", Signature=over_m,
                       SigningAlgorithm="ML_DSA_SHAKE_256")
        assert v["SignatureValid"] is True
        public.verify_mu(over_m, mu)
        # mu of another message, or mu signed as if RAW, does not verify.
        other = hashlib.shake_256(tr + b"\x00\x00" + message + b"!").digest(64)
        expect_error("KMSInvalidSignatureException", kms.verify, KeyId=arn, Message=other,
                     MessageType="EXTERNAL_MU", Signature=over_mu, SigningAlgorithm="ML_DSA_SHAKE_256")
        as_raw = kms.sign(KeyId=arn, Message=mu, SigningAlgorithm="ML_DSA_SHAKE_256")["Signature"]
        expect_error("KMSInvalidSignatureException", kms.verify, KeyId=arn, Message=mu,
                     MessageType="EXTERNAL_MU", Signature=as_raw, SigningAlgorithm="ML_DSA_SHAKE_256")
