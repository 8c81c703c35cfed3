"""Secrecy at rest: after 1,000 GenerateDataKey (AES_256) calls, no file
anywhere under the data dir holds any returned plaintext data key, raw, in
base64 (standard or URL-safe, padded or not) or in hex (either case), and none
holds the root key file's 32 bytes in any of those forms. The server's
captured stdout/stderr log holds no plaintext data key and no secret access
key either. A positive control (the admin access key id, which is meant to be
in the store and in the start banner) proves the scanner finds what is there.
The admin's secret access key is in no file of the data dir: its credentials
file is beside the data dir.

Capabilities: K4 envelope encryption, K11 root of trust, O1 API.
"""

from __future__ import annotations

import base64
from pathlib import Path


def encodings(secret: bytes) -> list[bytes]:
    """The forms a leaked secret could take in a file or a log line."""
    std = base64.b64encode(secret).rstrip(b"=")
    url = base64.urlsafe_b64encode(secret).rstrip(b"=")
    # A trailing base64 character carries only part of the last byte; the
    # prefix that depends on whole bytes only is what must never appear.
    whole = (len(secret) * 8) // 6
    return [secret, std[:whole], url[:whole], secret.hex().encode(), secret.hex().upper().encode()]


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def find_leaks(blobs: dict[str, bytes], secrets: dict[str, bytes]) -> list[str]:
    found = []
    for name, secret in secrets.items():
        for form in encodings(secret):
            for where, data in blobs.items():
                if form in data:
                    found.append(f"{name} ({form[:12]!r}...) in {where}")
    return found


def test_no_plaintext_or_root_key_at_rest_or_in_logs(make_server):
    srv = make_server().start()
    kms = srv.client()
    key_ids = [kms.create_key()["KeyMetadata"]["KeyId"] for _ in range(3)]
    kms.rotate_key_on_demand(KeyId=key_ids[0])
    kms.create_alias(AliasName="alias/secrecy", TargetKeyId=key_ids[1])

    plaintexts = {}
    for i in range(1000):
        r = kms.generate_data_key(KeyId=key_ids[i % 3], KeySpec="AES_256", EncryptionContext={"i": str(i)})
        assert len(r["Plaintext"]) == 32
        plaintexts[f"data key #{i}"] = r["Plaintext"]
    assert len(set(plaintexts.values())) == 1000
    # Data key pairs' private keys (issue 20), and keys of the other kinds
    # in use: their private keys and HMAC keys never leave the service, so
    # only the pairs' plaintext private keys can be looked for here (the
    # Rust test `data_dir_holds_no_plaintext_keys` scans for the others).
    for i, spec in enumerate(["RSA_2048", "ECC_NIST_P256", "ECC_NIST_EDWARDS25519"]):
        pair = kms.generate_data_key_pair(KeyId=key_ids[0], KeyPairSpec=spec)
        plaintexts[f"data key pair #{i} ({spec})"] = pair["PrivateKeyPlaintext"]
    signer = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    kms.sign(KeyId=signer, Message=b"x", SigningAlgorithm="ECDSA_SHA_256")
    mac = kms.create_key(KeySpec="HMAC_512", KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"]["KeyId"]
    kms.generate_mac(KeyId=mac, Message=b"x", MacAlgorithm="HMAC_SHA_512")
    # Some writes after the data keys, so the store is not just what it was before.
    kms.rotate_key_on_demand(KeyId=key_ids[2])
    kms.schedule_key_deletion(KeyId=key_ids[2], PendingWindowInDays=7)

    akid, secret_access_key = srv.credentials()
    assert srv.stop() == 0

    root_key = srv.root_key_file.read_bytes()
    assert len(root_key) == 32
    assert srv.root_key_file.parent != srv.data_dir and srv.root_key_file not in files_under(srv.data_dir)

    files = files_under(srv.data_dir)
    names = {p.name for p in files}
    assert "kms.redb" in names, names
    at_rest = {str(p.relative_to(srv.data_dir)): p.read_bytes() for p in files}
    assert sum(len(d) for d in at_rest.values()) > 0

    # Positive control: the scanner does find a value that is on disk.
    assert find_leaks(at_rest, {"admin access key id": akid.encode()}), "scanner failed its positive control"

    leaks = find_leaks(at_rest, {**plaintexts, "root key": root_key,
                                 "admin secret access key": secret_access_key.encode()})
    assert not leaks, "secrets found at rest:\n" + "\n".join(leaks[:20])

    logs = {"server stdout/stderr": srv.logs()}
    assert find_leaks(logs, {"admin access key id": akid.encode()}), "banner should name the access key id"
    leaks = find_leaks(logs, {**plaintexts, "root key": root_key, "secret access key": secret_access_key.encode()})
    assert not leaks, "secrets found in the server log:\n" + "\n".join(leaks[:20])
