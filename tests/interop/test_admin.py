"""Accounts and access keys through the `atrest admin` CLI: an admin creates
an account with a chosen 12-digit id, creates an access key for it and imports
an existing AWS-style pair (from a file and from standard input); boto3 then
uses both keys in that account, while another account cannot use its keys
(AccessDeniedException); a non-admin key cannot create accounts (the CLI exits
non-zero naming AccessDeniedException). The same admin REST API is also
driven directly with botocore-signed requests (service `atrest`), so a fault
in the CLI and a fault in the server are told apart.

Capabilities: O1 API, K1 keys, K11 root of trust (access key secrets sealed).
"""

from __future__ import annotations

import json

from conftest import atrest_admin, expect_error, raw_request, read_credentials, write_credentials

EXAMPLE_AKID = "AKIAIOSFODNN7EXAMPLE"
EXAMPLE_SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
EXAMPLE2_AKID = "AKIAI44QH8DHBEXAMPLE"
EXAMPLE2_SECRET = "je7MtGbClwBF/2Zp9Utk/h3yCo8nvbEXAMPLEKEY"


def test_admin_cli_accounts_access_keys_and_isolation(server, tmp_path):
    out = json.loads(atrest_admin(server, "account", "create", "--id", "123456789012").stdout)
    assert out["id"] == "123456789012" and out["admin"] is False
    accounts = json.loads(atrest_admin(server, "account", "list").stdout)["accounts"]
    ids = {a["id"]: a["admin"] for a in accounts}
    assert ids.get("123456789012") is False and list(ids.values()).count(True) == 1

    created = json.loads(atrest_admin(server, "access-key", "create", "--account", "123456789012").stdout)
    assert created["account"] == "123456789012"
    assert created["access_key_id"].startswith("AKIA") and len(created["secret_access_key"]) >= 16

    secret_file = tmp_path / "secret.txt"
    secret_file.write_text(EXAMPLE_SECRET + "\n")
    imported = json.loads(atrest_admin(
        server, "access-key", "import", "--account", "123456789012",
        "--access-key-id", EXAMPLE_AKID, "--secret-access-key-file", str(secret_file),
    ).stdout)
    assert imported["access_key_id"] == EXAMPLE_AKID and imported["account"] == "123456789012"

    listed = atrest_admin(server, "access-key", "list", "--account", "123456789012").stdout
    keys = {k["access_key_id"] for k in json.loads(listed)["access_keys"]}
    assert keys == {created["access_key_id"], EXAMPLE_AKID}
    assert EXAMPLE_SECRET not in listed and created["secret_access_key"] not in listed

    # Both keys act for account 123456789012.
    a = server.client(creds=(created["access_key_id"], created["secret_access_key"]))
    b = server.client(creds=(EXAMPLE_AKID, EXAMPLE_SECRET))
    md = a.create_key(Description="in 123456789012")["KeyMetadata"]
    assert md["AWSAccountId"] == "123456789012"
    assert md["KeyId"] in {k["KeyId"] for k in b.list_keys()["Keys"]}
    blob = a.encrypt(KeyId=md["KeyId"], Plaintext=b"shared account")["CiphertextBlob"]
    assert b.decrypt(CiphertextBlob=blob)["Plaintext"] == b"shared account"
    b.create_alias(AliasName="alias/imported", TargetKeyId=md["KeyId"])
    assert a.describe_key(KeyId="alias/imported")["KeyMetadata"]["KeyId"] == md["KeyId"]
    # The aws-CLI-style credentials file works for the imported pair too.
    creds_file = write_credentials(tmp_path / "imported-credentials", EXAMPLE_AKID, EXAMPLE_SECRET)
    assert server.client(creds=read_credentials(creds_file)).list_keys()["Keys"]

    # A second account, its key pair imported from standard input.
    atrest_admin(server, "account", "create", "--id", "210987654321")
    atrest_admin(server, "access-key", "import", "--account", "210987654321",
                 "--access-key-id", EXAMPLE2_AKID, stdin=EXAMPLE2_SECRET + "\n")
    other = server.client(creds=(EXAMPLE2_AKID, EXAMPLE2_SECRET))
    assert other.list_keys()["Keys"] == []
    expect_error("AccessDeniedException", other.describe_key, KeyId=md["Arn"])
    expect_error("AccessDeniedException", other.encrypt, KeyId=md["Arn"], Plaintext=b"x")
    expect_error("AccessDeniedException", other.decrypt, CiphertextBlob=blob)
    expect_error("NotFoundException", other.describe_key, KeyId="alias/imported")
    theirs = other.create_key()["KeyMetadata"]
    expect_error("AccessDeniedException", a.describe_key, KeyId=theirs["Arn"])

    # Refusals: an existing account id, an existing access key id.
    p = atrest_admin(server, "account", "create", "--id", "123456789012", check=False)
    assert p.returncode != 0 and "AlreadyExistsException" in p.stderr
    p = atrest_admin(server, "access-key", "import", "--account", "210987654321",
                     "--access-key-id", EXAMPLE_AKID, stdin="another-secret-0123456789\n", check=False)
    assert p.returncode != 0 and "AlreadyExistsException" in p.stderr
    assert server.client(creds=(EXAMPLE_AKID, EXAMPLE_SECRET)).list_keys()["Keys"], "the pair still works"


def test_non_admin_key_cannot_administer(server):
    atrest_admin(server, "account", "create", "--id", "333344445555")
    created = json.loads(atrest_admin(server, "access-key", "create", "--account", "333344445555").stdout)
    non_admin = (created["access_key_id"], created["secret_access_key"])
    # Environment credentials take precedence over the (admin) credentials file.
    p = atrest_admin(server, "account", "create", "--id", "444455556666", env_creds=non_admin, check=False)
    assert p.returncode != 0
    assert "AccessDeniedException" in p.stderr, p.stderr
    p = atrest_admin(server, "access-key", "create", "--account", "333344445555", env_creds=non_admin, check=False)
    assert p.returncode != 0 and "AccessDeniedException" in p.stderr
    accounts = {a["id"] for a in json.loads(atrest_admin(server, "account", "list").stdout)["accounts"]}
    assert "444455556666" not in accounts and "333344445555" in accounts
    keys = json.loads(atrest_admin(server, "access-key", "list", "--account", "333344445555").stdout)["access_keys"]
    assert len(keys) == 1


def rest(server, method, path, body=None, creds=None):
    data = json.dumps(body).encode() if body is not None else b""
    return raw_request(server, data, method=method, path=path, target=None, service="atrest",
                       content_type="application/json" if body is not None else None, creds=creds)


def test_admin_rest_api_direct(server):
    r = rest(server, "POST", "/v1/accounts", {"id": "555566667777"})
    assert r.status_code == 201 and r.json() == {"id": "555566667777", "admin": False}
    r = rest(server, "POST", "/v1/accounts", {"id": "555566667777"})
    assert r.status_code == 400 and r.json()["code"] == "AlreadyExistsException"
    r = rest(server, "POST", "/v1/accounts/555566667777/access-keys", {})
    assert r.status_code == 201
    creds = (r.json()["access_key_id"], r.json()["secret_access_key"])
    r = rest(server, "POST", "/v1/accounts/555566667777/access-keys",
             {"access_key_id": EXAMPLE_AKID, "secret_access_key": EXAMPLE_SECRET})
    assert r.status_code == 201 and r.json()["access_key_id"] == EXAMPLE_AKID
    r = rest(server, "GET", "/v1/accounts/555566667777/access-keys")
    assert r.status_code == 200
    assert {k["access_key_id"] for k in r.json()["access_keys"]} == {creds[0], EXAMPLE_AKID}

    mine = server.client().create_key()["KeyMetadata"]
    theirs = server.client(creds=creds)
    assert theirs.create_key()["KeyMetadata"]["AWSAccountId"] == "555566667777"
    expect_error("AccessDeniedException", theirs.describe_key, KeyId=mine["Arn"])
    expect_error("AccessDeniedException", server.client(creds=(EXAMPLE_AKID, EXAMPLE_SECRET)).encrypt,
                 KeyId=mine["Arn"], Plaintext=b"x")

    r = rest(server, "POST", "/v1/accounts", {"id": "666677778888"}, creds=creds)
    assert r.status_code == 403 and r.json()["code"] == "AccessDeniedException"
    # A KMS-scoped signature does not open the admin API.
    r = raw_request(server, json.dumps({"id": "777788889999"}), method="POST", path="/v1/accounts",
                    target=None, service="kms", content_type="application/json")
    # The REST API answers failed authentication 401 (the KMS API: 400, as AWS).
    assert r.status_code == 401 and r.json()["code"] == "InvalidSignatureException"
    r = rest(server, "GET", "/v1/accounts")
    assert {a["id"] for a in r.json()["accounts"]} >= {"555566667777"}
    assert not {"666677778888", "777788889999"} & {a["id"] for a in r.json()["accounts"]}
