"""The web console (/console/) in a real browser: Debian's chromium driven by
Playwright, against the real binary. Each test signs in through the page and
walks a flow, checking what the page shows and what the API (boto3, the
CLI, the audit trail) then reports.

* Keys: the create wizard (a broken policy refused and nothing created;
  description, alias, tags, rotation and policy as typed), the key used from
  boto3; disable with its confirmation (boto3 then gets DisabledException),
  enable, rotate now, schedule deletion and cancel, the policy editor (check,
  save), the encrypt/decrypt/data-key tester; the list's paging and search.
* BYOK: a key with imported material, wrapped with RSA-OAEP-SHA-256 by the
  test from the wrapping key the page hands out.
* Security: CSRF on every change; a user with no policy sees errors and no
  key, and changes nothing; another account's keys never show; the idle
  timeout; a deactivated access key ends its session at once; sign-out ends
  it for good; the cookie's attributes (Secure under TLS); the CSP header on
  every answer and no inline script in any page; the admin's secret never in
  a page after sign-in nor in the server's log; a data key's plaintext shown
  once; failed sign-ins limited; sign-in, sign-out and a console change in
  the audit trail as the principal's.
* Accessibility: every page the tests reach is checked (console_fixture:
  every field labelled); sign-in and key creation with the keyboard alone.
* Audit page: the search finds the console's records; verify.
* Admin: an account, a user, its identity policy through the validating
  editor, an access key whose secret is shown once and works, deactivation,
  suspension; a non-admin sees no accounts and may not create one.
* Disks: a disk under the wizard's key (chosen by alias), written and read
  with qemu-io at the NBD URI the page gives, snapshot, resize; the key
  disabled in the console: the disk shown Locked with the key and reason,
  qemu refused; enabled: readable again. 1 GiB written with qemu-io, then
  Re-encrypt: the page's <progress> moves as the script polls the job,
  without a reload, and the page reloads itself when the job is done; the
  API reports the job over the whole disk, the disk available and a fresh
  data key made under its grant; the data reads back. Move to this key (by
  alias): the API's key and grant follow. Convert into a new disk under
  the disk service key (its live bar too): the new disk reads the same.
* Databases: a tde instance under the wizard's key, psql at the endpoint
  the page gives, stop and start, a backup, a point-in-time restore from
  the backups page (exactly the rows before the instant); the key disabled:
  both instances shown Locked, a restart refused naming the key. A replica
  made from the instance page, listed there and in the list, read only;
  switched over from the primary's page and back from the replica's, the
  API's roles following and psql writing on each new primary. A disk-class
  instance: encryption enabled, its key set, disabled, each as the API
  then reports it, psql keeping the rows.
* Projects (CMEK): the key policy to copy is the API's and the copy button
  copies it; a key whose policy lacks kms:CreateGrant is refused naming it;
  the copied policy pasted into the key's editor and saved, test-and-save
  passes; a disk and an instance in the project under the key (the
  generated password shown once); the key disabled: revoked, resources
  locked, pause, resume refused naming the key; enabled: resume works.
* Metering and nodes: the SVG charts and the table give the CLI's numbers;
  a non-admin sees only its account; the node list is GET /v1/nodes's.
* Screenshots of the main pages (target/console-screenshots; ATREST_CONSOLE_SCREENSHOTS=docs/console refreshes the README's).

Capabilities: O2, O3 (console), K3, K5, K6 (keys, BYOK, rotation), K8, K9,
K13, D3, R3, P3, P5.
"""

from __future__ import annotations

import base64
from pathlib import Path
import datetime
import json
import os
import re
import shutil
import subprocess
import time
import urllib.parse

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.serialization import load_der_public_key

from conftest import (
    DB_PASSWORD,
    atrest_admin,
    atrest_client_cmd,
    audit_log_path,
    audit_records,
    expect_error,
    free_port,
    make_tls_files,
    new_account,
    new_user,
    psql,
    rest_call,
    root_arn,
    sql_value,
    user_arn,
)
from console_fixture import browser, http_session, ui  # noqa: F401 (fixtures)

A = "111122223333"
B = "444455556666"

ALLOW_ALL_KMS = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*"}]}


def key_id_of(c) -> str:
    m = re.fullmatch(r"/console/keys/([0-9a-f-]{36})", c.path())
    assert m, f"not on a key page: {c.page.url}"
    return m.group(1)


def key_ids(kms) -> set[str]:
    out, marker = set(), None
    while True:
        r = kms.list_keys(**({"Marker": marker} if marker else {}))
        out |= {k["KeyId"] for k in r["Keys"]}
        if not r.get("Truncated"):
            return out
        marker = r["NextMarker"]


def list_rows(c) -> list[str]:
    """The key ids of the keys list's rows."""
    return c.page.locator("tbody tr td:nth-child(2) a").all_inner_texts()


def create_in_wizard(c, *, description="", alias="", tags="", origin=None, rotation=None,
                     days=None, policy=None) -> str:
    c.goto("/console/keys/new")
    c.page.fill("#description", description)
    c.page.fill("#alias", alias)
    c.page.fill("#tags", tags)
    if origin:
        c.page.select_option("#origin", origin)
    if rotation is not None:
        c.page.set_checked("#rotation", rotation)
    if days is not None:
        c.page.fill("#rotation_days", str(days))
    if policy is not None:
        c.page.fill("#policy", policy)
    c.click("Create key")
    return key_id_of(c)


def audit(server, *args) -> list[dict]:
    return json.loads(atrest_client_cmd(server, "audit", "--limit", "5000", *args).stdout)["records"]


# -- keys ------------------------------------------------------------------------


def test_key_wizard_and_key_page_flows(server, ui):
    root_a = new_account(server, A)
    kms = server.client(creds=root_a)
    before = key_ids(kms)
    c = ui(server)
    c.goto("/console/")
    assert c.path().startswith("/console/sign-in"), c.page.url
    c.screenshot("sign-in")
    c.sign_in(root_a)
    assert c.page.locator(".principal").inner_text() == root_arn(A)

    # -- the wizard: its default policy is the account's, a broken one is refused
    c.click("Create key", role="link")
    assert c.path() == "/console/keys/new"
    default = json.loads(c.value("#policy"))
    assert default["Statement"][0]["Principal"] == {"AWS": root_arn(A)}, default
    assert default["Statement"][0]["Action"] == "kms:*", default
    assert c.page.is_checked("#rotation"), "the wizard proposes rotation on"
    c.page.fill("#description", "console wizard key")
    c.page.fill("#alias", "console-key")
    c.page.fill("#tags", "team=infra\nenv = test")
    c.page.check("#rotation")
    c.page.fill("#rotation_days", "180")
    c.page.fill("#policy", '{"Version": "2012-10-17", "Statement": [')
    c.screenshot("key-wizard")
    c.click("Create key")
    assert c.path() == "/console/keys/new"
    alerts = " ".join(c.alerts())
    assert "The key was not created" in alerts and "The policy is not valid" in alerts, alerts
    assert key_ids(kms) == before, "a key was created with a broken policy"
    # What was typed is kept.
    assert c.value("#description") == "console wizard key" and c.value("#alias") == "console-key"
    assert c.value("#rotation_days") == "180" and c.page.is_checked("#rotation")
    # Check policy: the check only, never a key.
    c.click("Check policy")
    assert "The policy is not valid" in " ".join(c.alerts())
    policy = {
        "Version": "2012-10-17",
        "Id": "console-test",
        "Statement": [
            {"Sid": "Root", "Effect": "Allow", "Principal": {"AWS": root_arn(A)}, "Action": "kms:*",
             "Resource": "*"},
            {"Sid": "Deny bob", "Effect": "Deny", "Principal": {"AWS": user_arn(A, "bob")},
             "Action": "kms:Decrypt", "Resource": "*"},
        ],
    }
    c.page.fill("#policy", json.dumps(policy, indent=2))
    c.click("Check policy")
    assert c.page.locator("#policy-check").inner_text().strip() == "The policy is valid."
    assert c.alerts() == []
    assert key_ids(kms) == before, "Check policy created a key"
    c.click("Create key")
    key = key_id_of(c)
    assert c.flash().startswith(f"Key {key} created."), c.flash()
    assert key_ids(kms) == before | {key}

    # -- what the API says of it
    meta = kms.describe_key(KeyId=key)["KeyMetadata"]
    assert meta["Description"] == "console wizard key" and meta["KeyState"] == "Enabled"
    assert meta["Origin"] == "AWS_KMS" and meta["KeySpec"] == "SYMMETRIC_DEFAULT"
    aliases = kms.list_aliases(KeyId=key)["Aliases"]
    assert [a["AliasName"] for a in aliases] == ["alias/console-key"]
    tags = {t["TagKey"]: t["TagValue"] for t in kms.list_resource_tags(KeyId=key)["Tags"]}
    assert tags == {"team": "infra", "env": "test"}
    rot = kms.get_key_rotation_status(KeyId=key)
    assert rot["KeyRotationEnabled"] is True and rot["RotationPeriodInDays"] == 180, rot
    assert json.loads(kms.get_key_policy(KeyId=key, PolicyName="default")["Policy"]) == policy
    blob = kms.encrypt(KeyId="alias/console-key", Plaintext=b"from boto3")["CiphertextBlob"]
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"from boto3"

    # -- the key page shows it
    text = c.text()
    for shown in (key, meta["Arn"], "console wizard key", "alias/console-key", "team", "infra",
                  "on, every 180 days", "Enabled"):
        assert shown in text, f"{shown!r} not on the key page"
    c.screenshot("key-page")

    # -- disable (confirmed), enable
    c.click("Disable", role="link")
    assert c.path() == f"/console/keys/{key}/confirm/disable"
    assert "stops every use of it" in c.text()
    c.click("Cancel", role="link")
    assert c.path() == f"/console/keys/{key}"
    assert kms.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "Enabled"
    c.click("Disable", role="link")
    c.click("Disable the key")
    assert c.path() == f"/console/keys/{key}" and c.flash() == "The key is disabled."
    assert c.page.locator("dl.facts .badge").inner_text() == "Disabled"
    assert kms.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "Disabled"
    expect_error("DisabledException", kms.encrypt, KeyId=key, Plaintext=b"x")
    c.click("Enable")
    assert c.flash() == "The key is enabled."
    assert kms.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "Enabled"
    kms.encrypt(KeyId=key, Plaintext=b"x")

    # -- rotate now: the history shows it, as ListKeyRotations does
    assert kms.list_key_rotations(KeyId=key)["Rotations"] == []
    c.click("Rotate now")
    assert c.flash() == "The key material is rotated."
    rotations = kms.list_key_rotations(KeyId=key)["Rotations"]
    assert [r["RotationType"] for r in rotations] == ["ON_DEMAND"], rotations
    history = c.page.locator("table:has(caption:text('Rotation history')) tbody tr")
    assert history.count() == 1 and "ON_DEMAND" in history.inner_text()
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"from boto3", "old ciphertext after rotation"
    # Rotation off and on again from the key page.
    c.click("Turn rotation off")
    assert c.flash() == "Automatic rotation is off."
    assert kms.get_key_rotation_status(KeyId=key)["KeyRotationEnabled"] is False
    c.page.fill("#rotation_days", "400")
    c.click("Turn rotation on")
    rot = kms.get_key_rotation_status(KeyId=key)
    assert rot["KeyRotationEnabled"] is True and rot["RotationPeriodInDays"] == 400, rot

    # -- schedule deletion (7 days), cancel
    c.click("Schedule deletion", role="link")
    assert c.path() == f"/console/keys/{key}/confirm/schedule-deletion"
    c.page.fill("#pending_days", "7")
    c.click("Schedule deletion")
    assert c.flash() == "The key's deletion is scheduled."
    meta = kms.describe_key(KeyId=key)["KeyMetadata"]
    assert meta["KeyState"] == "PendingDeletion", meta
    due = meta["DeletionDate"] - datetime.datetime.now(datetime.timezone.utc)
    assert datetime.timedelta(days=6, hours=23) < due <= datetime.timedelta(days=7, minutes=5), due
    assert "PendingDeletion" in c.page.locator("dl.facts").inner_text()
    expect_error("KMSInvalidStateException", kms.encrypt, KeyId=key, Plaintext=b"x")
    c.click("Cancel deletion")
    assert c.flash() == "The deletion is cancelled; the key is disabled."
    assert kms.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "Disabled"
    c.click("Enable")
    assert kms.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "Enabled"

    # -- a refusal shows the API's words and the page still renders
    c.page.fill("#alias", "console-key")
    c.click("Add alias")
    alerts = " ".join(c.alerts())
    assert "AlreadyExistsException" in alerts, alerts
    assert "Key policy" in c.text() and key in c.text()

    # -- the policy editor: check, refuse broken, save
    saved = kms.get_key_policy(KeyId=key, PolicyName="default")["Policy"]
    c.page.fill("#policy", '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow"}]}')
    c.click("Save policy")
    assert "The policy is not valid" in " ".join(c.alerts())
    assert kms.get_key_policy(KeyId=key, PolicyName="default")["Policy"] == saved, "a broken policy was saved"
    policy["Statement"][1]["Sid"] = "Deny carol"
    policy["Statement"][1]["Principal"] = {"AWS": user_arn(A, "carol")}
    c.page.fill("#policy", json.dumps(policy))
    c.click("Check policy")
    assert c.page.locator("#policy-check").inner_text().strip() == "The policy is valid."
    assert kms.get_key_policy(KeyId=key, PolicyName="default")["Policy"] == saved, "Check policy saved"
    c.click("Save policy")
    assert c.flash() == "The key policy is saved."
    assert json.loads(kms.get_key_policy(KeyId=key, PolicyName="default")["Policy"]) == policy
    assert "Deny carol" in c.value("#policy")

    # -- the tester: encrypt in the page, decrypt with boto3 and in the page
    c.page.fill("#plaintext", "hello from the console")
    c.click("Encrypt")
    ct = c.value("#result")
    assert kms.decrypt(CiphertextBlob=base64.b64decode(ct))["Plaintext"] == b"hello from the console"
    c.page.fill("#ciphertext", ct)
    c.click("Decrypt")
    assert c.value("#result") == "hello from the console"
    theirs = kms.encrypt(KeyId=key, Plaintext=b"made by boto3")["CiphertextBlob"]
    c.page.fill("#ciphertext", base64.b64encode(theirs).decode())
    c.click("Decrypt")
    assert c.value("#result") == "made by boto3"
    c.page.fill("#ciphertext", base64.b64encode(b"not a ciphertext at all, really").decode())
    c.click("Decrypt")
    assert any("InvalidCiphertextException" in a for a in c.alerts()), c.alerts()

    # -- a data key: its plaintext shown once, never again
    c.click("Generate a data key")
    plain = c.value("#result")
    assert len(base64.b64decode(plain)) == 32
    wrapped = base64.b64decode(c.value("#result-blob"))
    assert kms.decrypt(CiphertextBlob=wrapped)["Plaintext"] == base64.b64decode(plain)
    assert plain in c.page.content()
    c.goto(f"/console/keys/{key}")
    assert plain not in c.page.content()
    assert c.page.locator("#result").count() == 0
    c.goto("/console/keys")
    assert plain not in c.page.content()
    assert plain.encode() not in server.logs()
    assert plain.encode() not in audit_log_path(server).read_bytes()


def test_keys_list_paging_and_search(server, ui):
    root_a = new_account(server, A)
    kms = server.client(creds=root_a)
    made = []
    for i in range(30):
        k = kms.create_key(Description=f"bulk key {i}")["KeyMetadata"]["KeyId"]
        kms.create_alias(AliasName=f"alias/bulk-{i:02d}", TargetKeyId=k)
        made.append(k)
    everything = key_ids(kms)
    assert everything == set(made)
    c = ui(server)
    c.sign_in(root_a)
    first = list_rows(c)
    assert len(first) == 25, first
    assert c.page.locator("caption").first.inner_text() == f"Keys of account {A}"
    assert c.page.get_by_role("link", name="Next page", exact=True).count() == 1
    c.screenshot("keys")
    # Each row: its alias and metadata.
    row = c.page.locator("tbody tr", has=c.page.locator(f"a:text-is('{first[0]}')"))
    i = made.index(first[0])
    assert f"alias/bulk-{i:02d}" in row.inner_text() and f"bulk key {i}" in row.inner_text()
    assert "Enabled" in row.inner_text() and "SYMMETRIC_DEFAULT" in row.inner_text()
    c.click("Next page", role="link")
    second = list_rows(c)
    assert len(second) == 5, second
    assert c.page.get_by_role("link", name="Next page", exact=True).count() == 0
    assert set(first) | set(second) == everything and not set(first) & set(second)

    # Search by alias: 30 match, paged the same way.
    c.goto("/console/keys")
    c.page.fill("#q", "bulk")
    c.click("Search")
    hits = list_rows(c)
    assert len(hits) == 25 and c.value("#q") == "bulk"
    c.click("Next page", role="link")
    assert set(hits) | set(list_rows(c)) == everything
    c.page.fill("#q", "BULK-07")
    c.click("Search")
    assert list_rows(c) == [made[7]]
    # By part of a key id.
    c.page.fill("#q", made[12][:13])
    c.click("Search")
    assert made[12] in list_rows(c) and len(list_rows(c)) < 30
    c.page.fill("#q", "no-such-alias")
    c.click("Search")
    assert list_rows(c) == [] and "No keys." in c.text()
    # A row's link opens the key.
    c.page.fill("#q", "bulk-29")
    c.click("Search")
    c.click(made[29], role="link")
    assert key_id_of(c) == made[29] and "alias/bulk-29" in c.text()


def test_byok_import_through_the_console(server, ui, tmp_path):
    root_a = new_account(server, A)
    kms = server.client(creds=root_a)
    c = ui(server)
    c.sign_in(root_a)
    key = create_in_wizard(c, description="byok key", alias="byok", origin="EXTERNAL")
    assert "Import its key material below." in c.flash()
    meta = kms.describe_key(KeyId=key)["KeyMetadata"]
    assert meta["Origin"] == "EXTERNAL" and meta["KeyState"] == "PendingImport", meta
    # The wizard turns rotation on only for generated material.
    assert kms.get_key_rotation_status(KeyId=key)["KeyRotationEnabled"] is False
    expect_error("KMSInvalidStateException", kms.encrypt, KeyId=key, Plaintext=b"x")
    assert "Key material (BYOK)" in c.text()

    def parameters():
        c.click("Download wrapping key and import token")
        pub, token = c.value("#public_key"), c.value("#token")
        assert pub and token
        return load_der_public_key(base64.b64decode(pub)), token

    # Garbage instead of wrapped material: the API's refusal, nothing imported.
    _, token = parameters()
    c.page.fill("#import_token", token)
    c.page.fill("#encrypted_key_material", base64.b64encode(os.urandom(256)).decode())
    c.click("Import key material")
    assert c.alerts(), "a bad import shows no error"
    assert kms.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "PendingImport"

    # The import that succeeds goes through files: the page's downloads of
    # the wrapping key and token, and its file inputs (the console's script
    # reads a chosen file into the form's base64 field).
    _, token = parameters()
    with c.page.expect_download() as d:
        c.page.get_by_role("link", name="Download the wrapping public key").click()
    public_der = Path(d.value.path()).read_bytes()
    with c.page.expect_download() as d:
        c.page.get_by_role("link", name="Download the import token").click()
    token_bytes = Path(d.value.path()).read_bytes()
    assert base64.b64encode(public_der).decode() == c.value("#public_key")
    assert base64.b64encode(token_bytes).decode() == token
    public = load_der_public_key(public_der)
    material = os.urandom(32)
    oaep = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    wrapped = public.encrypt(material, oaep)
    (tmp_path / "wrapped.bin").write_bytes(wrapped)
    (tmp_path / "token.bin").write_bytes(token_bytes)
    c.page.set_input_files("#encrypted_key_material_file", str(tmp_path / "wrapped.bin"))
    c.page.set_input_files("#import_token_file", str(tmp_path / "token.bin"))
    c.page.wait_for_function(
        "document.getElementById('encrypted_key_material').value.length > 0"
        " && document.getElementById('import_token').value.length > 0")
    assert c.value("#encrypted_key_material") == base64.b64encode(wrapped).decode()
    assert c.value("#import_token") == token
    c.click("Import key material")
    assert c.flash() == "The key material is imported; the key is enabled.", (c.flash(), c.alerts())
    meta = kms.describe_key(KeyId=key)["KeyMetadata"]
    assert meta["KeyState"] == "Enabled" and meta["ExpirationModel"] == "KEY_MATERIAL_DOES_NOT_EXPIRE", meta
    blob = kms.encrypt(KeyId="alias/byok", Plaintext=b"imported material")["CiphertextBlob"]
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"imported material"
    # The same material again is accepted, other material is not: the key
    # holds what the test wrapped.
    other = os.urandom(32)
    p = kms.get_parameters_for_import(KeyId=key, WrappingAlgorithm="RSAES_OAEP_SHA_256",
                                      WrappingKeySpec="RSA_2048")
    wrapped_other = load_der_public_key(p["PublicKey"]).encrypt(other, oaep)
    expect_error("IncorrectKeyMaterialException", kms.import_key_material, KeyId=key,
                 ImportToken=p["ImportToken"], EncryptedKeyMaterial=wrapped_other,
                 ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")
    assert material.hex() not in server.logs().decode(errors="replace")


# -- security --------------------------------------------------------------------


def test_changes_without_the_csrf_token_are_refused(server, ui):
    root_a = new_account(server, A)
    kms = server.client(creds=root_a)
    key = kms.create_key(Description="csrf target")["KeyMetadata"]["KeyId"]
    c = ui(server)
    c.sign_in(root_a)
    c.goto(f"/console/keys/{key}")
    token = c.csrf()
    assert token and len(token) >= 40
    before = key_ids(kms)
    wizard = {"description": "forged", "alias": "", "tags": "", "origin": "AWS_KMS",
              "key_spec": "SYMMETRIC_DEFAULT", "key_usage": "ENCRYPT_DECRYPT", "rotation_days": "365",
              "policy": json.dumps({"Version": "2012-10-17", "Statement": [{
                  "Effect": "Allow", "Principal": {"AWS": root_arn(A)}, "Action": "kms:*", "Resource": "*"}]}),
              "step": "1", "create": "1"}
    # The browser's own request context (its cookie): no token, a wrong
    # token, an empty one.
    for form in (wizard, wizard | {"csrf": "x" * len(token)}, wizard | {"csrf": ""}):
        r = c.page.request.post(c.url("/console/keys/new"), form=form, max_redirects=0)
        assert r.status == 403, (r.status, r.text())
        assert "CSRF" in r.text()
    for action in ("disable", "schedule-deletion", "rotate", "policy"):
        r = c.page.request.post(c.url(f"/console/keys/{key}/{action}"),
                                form={"pending_days": "7", "policy": "{}", "save": "1"}, max_redirects=0)
        assert r.status == 403, (action, r.status)
    # Outside the browser, with the session cookie: the same.
    cookie = c.session_cookie()["value"]
    s = http_session(server, cookie)
    r = s.post(c.url(f"/console/keys/{key}/disable"), data={}, allow_redirects=False)
    assert r.status_code == 403, r.status_code
    # Sign-out too needs it.
    r = s.post(c.url("/console/sign-out"), data={}, allow_redirects=False)
    assert r.status_code == 403
    # Nothing changed.
    assert key_ids(kms) == before
    assert kms.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "Enabled"
    assert kms.list_key_rotations(KeyId=key)["Rotations"] == []
    # The control: with the token the same request does change it.
    r = s.post(c.url(f"/console/keys/{key}/disable"), data={"csrf": token}, allow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/console/keys/{key}"
    assert kms.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "Disabled"
    # The sign-in form has its own token.
    r = http_session(server).post(c.url("/console/sign-in"),
                                  data={"access_key_id": root_a[0], "secret_access_key": root_a[1]},
                                  allow_redirects=False)
    assert r.status_code == 403 and "atrest-console=" not in r.headers.get("set-cookie", "")


def test_a_user_without_policy_sees_and_changes_nothing(server, ui):
    root_a = new_account(server, A)
    kms = server.client(creds=root_a)
    key = kms.create_key(Description="secret description")["KeyMetadata"]
    kms.create_alias(AliasName="alias/hidden-alias", TargetKeyId=key["KeyId"])
    before = key_ids(kms)
    nobody = new_user(server, A, "nobody")
    c = ui(server)
    c.sign_in(nobody)
    assert c.page.locator(".principal").inner_text() == user_arn(A, "nobody")
    alerts = " ".join(c.alerts())
    assert "AccessDeniedException" in alerts and "kms:ListKeys" in alerts, alerts
    html = c.page.content()
    assert key["KeyId"] not in html and "hidden-alias" not in html and "secret description" not in html
    assert list_rows(c) == []
    c.page.fill("#q", "hidden")
    c.click("Search")
    assert "AccessDeniedException" in " ".join(c.alerts())
    assert "hidden-alias" not in c.page.content().replace('value="hidden"', "")
    # The key page by its id: a refusal, not the key.
    c.goto(f"/console/keys/{key['KeyId']}")
    assert "AccessDeniedException" in " ".join(c.alerts())
    assert "secret description" not in c.page.content() and "hidden-alias" not in c.page.content()
    # Changes: refused by the API, shown; nothing made or changed.
    create_page = c.goto("/console/keys/new")
    assert create_page.status == 200
    c.page.fill("#description", "made by nobody")
    c.click("Create key")
    assert c.path() == "/console/keys/new"
    assert "AccessDeniedException" in " ".join(c.alerts())
    token = c.csrf()
    for action, form in (("disable", {}), ("schedule-deletion", {"pending_days": "7"}),
                         ("alias", {"alias": "nobody-alias"})):
        r = c.page.request.post(c.url(f"/console/keys/{key['KeyId']}/{action}"), form=form | {"csrf": token},
                                max_redirects=0)
        assert r.status != 303 and "AccessDeniedException" in r.text(), (action, r.status)
    assert key_ids(kms) == before
    assert kms.describe_key(KeyId=key["KeyId"])["KeyMetadata"]["KeyState"] == "Enabled"
    assert [a["AliasName"] for a in kms.list_aliases(KeyId=key["KeyId"])["Aliases"]] == ["alias/hidden-alias"]


def test_another_accounts_keys_never_show(server, ui):
    root_a, root_b = new_account(server, A), new_account(server, B)
    ka, kb = server.client(creds=root_a), server.client(creds=root_b)
    theirs = [ka.create_key(Description=f"account A key {i}")["KeyMetadata"] for i in range(3)]
    ka.create_alias(AliasName="alias/a-only", TargetKeyId=theirs[0]["KeyId"])
    mine = kb.create_key(Description="account B key")["KeyMetadata"]["KeyId"]
    kb.create_alias(AliasName="alias/b-only", TargetKeyId=mine)
    c = ui(server)
    c.sign_in(root_b)
    assert list_rows(c) == [mine]
    pages = [c.page.content()]
    c.page.fill("#q", "only")
    c.click("Search")
    assert list_rows(c) == [mine]
    pages.append(c.page.content())
    c.page.fill("#q", theirs[1]["KeyId"][:8])
    c.click("Search")
    assert list_rows(c) == []
    pages.append(c.page.content())
    # Their key by id or ARN: a refusal, nothing of it.
    for ref in (theirs[0]["KeyId"], urllib.parse.quote(theirs[0]["Arn"], safe="")):
        c.goto(f"/console/keys/{ref}")
        assert c.alerts(), f"{ref} gave no error"
        pages.append(c.page.content())
    for html in pages:
        assert "a-only" not in html and "account A key" not in html
        for k in theirs[1:]:
            assert k["KeyId"] not in html
    # The console's tester on their key: refused.
    c.goto(f"/console/keys/{mine}")
    r = c.page.request.post(c.url(f"/console/keys/{theirs[0]['KeyId']}/encrypt"),
                            form={"csrf": c.csrf(), "plaintext": "x"}, max_redirects=0)
    assert "CiphertextBlob" not in r.text() and 'id="result"' not in r.text()


def test_session_idle_timeout(make_server, ui):
    server = make_server(args=("--console-idle-timeout", "2")).start()
    root_a = new_account(server, A)
    c = ui(server)
    c.sign_in(root_a)
    # Use keeps it alive: each request within the timeout.
    for _ in range(3):
        time.sleep(1.0)
        c.goto("/console/keys/new")
        assert c.path() == "/console/keys/new", c.page.url
    token = c.csrf()
    time.sleep(3)
    c.goto("/console/keys/new")
    assert c.path().startswith("/console/sign-in?") and "why=expired" in c.path(), c.page.url
    assert "expired" in c.flash(), c.flash()
    # A change with the expired session: refused, nothing made.
    kms = server.client(creds=root_a)
    r = c.page.request.post(c.url("/console/keys/new"), form={"csrf": token, "create": "1"}, max_redirects=0)
    assert r.status == 401 and "sign in again" in r.text()
    assert key_ids(kms) == set()
    # Signing in again goes where the person was going.
    c.sign_in(root_a, expect="/console/keys/new")


def test_a_deactivated_access_key_ends_the_session_at_once(server, ui):
    root_a = new_account(server, A)
    alice = new_user(server, A, "alice", policy=ALLOW_ALL_KMS)
    c = ui(server)
    c.sign_in(alice)
    assert c.alerts() == []
    atrest_admin(server, "access-key", "deactivate", "--account", A, alice[0])
    c.goto("/console/keys")
    assert c.path() == "/console/sign-in?why=inactive", c.page.url
    assert "no longer active" in c.flash()
    # Active again: the ended session stays ended.
    atrest_admin(server, "access-key", "activate", "--account", A, alice[0])
    c.goto("/console/keys")
    assert c.path().startswith("/console/sign-in"), c.page.url
    # A change posted by a page opened before the deactivation: refused.
    c.sign_in(alice)
    c.goto("/console/keys/new")
    c.page.fill("#description", "after deactivation")
    atrest_admin(server, "access-key", "deactivate", "--account", A, alice[0])
    c.checks = False  # a plain-text refusal, no page
    c.click("Create key")
    assert "no longer active" in c.page.inner_text("body")
    c.checks = True
    assert key_ids(server.client(creds=root_a)) == set()
    # Signing in with the inactive key is refused.
    c.goto("/console/sign-in")
    c.sign_in(alice, expect=None)
    assert c.path().startswith("/console/sign-in")
    assert "The access key ID or secret is wrong, or the key is not active." in c.alerts()


def test_sign_out_ends_the_session(server, ui):
    root_a = new_account(server, A)
    c = ui(server)
    c.sign_in(root_a)
    cookie = c.session_cookie()
    s = http_session(server, cookie["value"])
    assert s.get(c.url("/console/keys"), allow_redirects=False).status_code == 200
    c.click("Sign out")
    assert c.path() == "/console/sign-in?why=signed-out" and c.flash() == "You are signed out."
    assert c.session_cookie() is None, "the cookie is left in the browser"
    # The old cookie no longer works, for pages or changes.
    r = s.get(c.url("/console/keys"), allow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/console/sign-in"), r.status_code
    r = s.post(c.url("/console/keys/new"), data={"csrf": "whatever"}, allow_redirects=False)
    assert r.status_code == 401
    c.goto("/console/keys")
    assert c.path().startswith("/console/sign-in")


def test_cookie_attributes(make_server, ui, tmp_path):
    server = make_server().start()
    root_a = new_account(server, A)
    c = ui(server)
    c.sign_in(root_a)
    cookie = c.session_cookie()
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict", cookie
    assert cookie["path"] == "/console/" and cookie["secure"] is False, cookie
    assert cookie["expires"] == -1, "the session cookie outlives the browser"
    assert len(cookie["value"]) >= 43
    # No script sees it.
    assert "atrest-console" not in c.page.evaluate("document.cookie")

    # Under TLS it is Secure (read from the raw Set-Cookie header).
    tls = make_tls_files(tmp_path / "tls")
    srv = make_server(name="tls", tls=tls).start()
    root = srv.credentials()
    s = http_session(srv)
    s.verify = str(tls["ca"])
    r = s.get(srv.url + "/console/sign-in")
    pre = r.raw.headers.getlist("Set-Cookie")
    assert any(h.startswith("atrest-console-sign-in=") and "Secure" in h and "HttpOnly" in h for h in pre), pre
    token = re.search(r'name="csrf" value="([^"]+)"', r.text).group(1)
    r = s.post(srv.url + "/console/sign-in", allow_redirects=False, data={
        "csrf": token, "next": "/console/keys", "access_key_id": root[0], "secret_access_key": root[1]})
    assert r.status_code == 303, r.text
    set_cookie = [h for h in r.raw.headers.getlist("Set-Cookie") if h.startswith("atrest-console=")]
    assert len(set_cookie) == 1, r.raw.headers.getlist("Set-Cookie")
    attrs = {a.strip().split("=")[0].lower(): a.strip() for a in set_cookie[0].split(";")[1:]}
    assert {"path", "httponly", "samesite", "secure"} <= set(attrs), set_cookie
    assert attrs["path"] == "Path=/console/" and attrs["samesite"] == "SameSite=Strict"


def test_security_headers_and_no_inline_script_on_every_page(server, ui):
    root = server.credentials()
    kms = server.client()
    key = kms.create_key(Description="headers")["KeyMetadata"]["KeyId"]
    c = ui(server)
    c.sign_in(root)
    cookie = c.session_cookie()["value"]
    s = http_session(server, cookie)
    paths = ["/console/keys", "/console/keys/new", f"/console/keys/{key}",
             f"/console/keys/{key}/confirm/disable", f"/console/keys/{key}/confirm/schedule-deletion",
             "/console/keys?q=x", "/console/disks", "/console/databases", "/console/projects",
             "/console/audit", "/console/metering", "/console/nodes", "/console/admin",
             "/console/no-such-page", "/console/keys/00000000-0000-0000-0000-000000000000"]
    for p in paths:
        # In the browser (labels, DOM, CSP violations)...
        c.goto(p)
        # ...and the raw answer.
        r = s.get(c.url(p), allow_redirects=False)
        assert r.status_code in (200, 400, 404), (p, r.status_code)
        h = r.headers
        csp = h.get("content-security-policy", "")
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp, (p, csp)
        assert h.get("x-content-type-options") == "nosniff" and h.get("cache-control") == "no-store", (p, h)
        assert h.get("x-frame-options") == "DENY", p
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", r.text), f"{p}: inline <script>"
        assert not re.search(r"<[^>]+\son[a-z]+\s*=", r.text), f"{p}: inline event handler"
        assert not re.search(r"<[^>]+\sstyle\s*=", r.text), f"{p}: inline style"
    # Signed out pages and the assets too.
    anon = http_session(server)
    for p in ("/console/sign-in", "/console/static/console.css", "/console/static/console.js", "/console/keys"):
        r = anon.get(c.url(p), allow_redirects=False)
        assert "script-src 'self'" in r.headers.get("content-security-policy", ""), p
    # Only the console's own script, nothing from elsewhere.
    scripts = re.findall(r'<script[^>]*src="([^"]+)"', s.get(c.url("/console/keys")).text)
    assert scripts == ["/console/static/console.js"], scripts
    assert not re.search(r'(src|href)="(https?:)?//', s.get(c.url("/console/keys")).text)


def test_no_secret_in_pages_or_logs(server, ui):
    akid, secret = server.credentials()
    kms = server.client()
    key = kms.create_key(Description="secrecy")["KeyMetadata"]["KeyId"]
    c = ui(server)
    c.goto("/console/sign-in")
    # A wrong secret first: it appears nowhere either.
    wrong = "W" + secret[1:-1] + "x"
    c.sign_in((akid, wrong), expect=None)
    assert "The access key ID or secret is wrong, or the key is not active." in c.alerts()
    assert c.value("#secret_access_key") == "", "the typed secret is sent back"
    c.sign_in((akid, secret))
    for p in ("/console/keys", "/console/keys/new", f"/console/keys/{key}", "/console/disks",
              "/console/databases", "/console/projects", "/console/audit", "/console/metering",
              "/console/nodes", "/console/admin"):
        c.goto(p)
    c.goto(f"/console/keys/{key}")
    c.page.fill("#plaintext", "x")
    c.click("Encrypt")
    c.click("Generate a data key")
    assert len(c.seen) > 10
    for html in c.seen:
        assert secret not in html and wrong not in html
    cookie = c.session_cookie()["value"]
    for p in ("/console/keys", f"/console/keys/{key}"):
        body = http_session(server, cookie).get(c.url(p)).text
        assert secret not in body
    c.click("Sign out")
    logs = server.logs()
    assert logs, "the server wrote no log"
    for s in (secret, wrong):
        assert s.encode() not in logs, "a secret in the server's log"
        assert s.encode() not in audit_log_path(server).read_bytes(), "a secret in the audit trail"


def test_failed_sign_ins_are_limited(server, ui):
    root_a = new_account(server, A)
    c = ui(server)
    c.goto("/console/sign-in")
    for i in range(10):
        c.sign_in((root_a[0], f"wrong-secret-{i}"), expect=None)
        assert c.documents[-1][1] == 401
        assert c.alerts() == ["The access key ID or secret is wrong, or the key is not active."], c.alerts()
    c.sign_in(root_a, expect=None)
    assert c.documents[-1][1] == 429
    alerts = " ".join(c.alerts())
    assert "Too many failed sign-ins" in alerts, alerts
    assert c.session_cookie() is None
    # Another browser from the same address, with the admin's right secret: refused too.
    other = ui(server)
    other.sign_in(server.credentials(), expect=None)
    assert "Too many failed sign-ins" in " ".join(other.alerts())


def test_sign_in_sign_out_and_changes_are_audited(server, ui):
    new_account(server, A)
    alice = new_user(server, A, "alice", policy=ALLOW_ALL_KMS)
    c = ui(server)
    c.goto("/console/sign-in")
    c.sign_in((alice[0], "not-her-secret"), expect=None)
    c.sign_in(alice)
    key = create_in_wizard(c, description="audited", rotation=False)
    c.click("Sign out")
    meta = server.client(creds=alice).describe_key(KeyId=key)["KeyMetadata"]
    recs = audit(server)
    mine = [r for r in recs if r.get("access_key_id") == alice[0]]
    ops = [(r["operation"], r["result"]) for r in mine]
    assert ("console:SignIn", "IncorrectSecret") in ops, ops
    signin = [r for r in mine if r["operation"] == "console:SignIn" and r["result"] == "Success"]
    create = [r for r in mine if r["operation"] == "CreateKey"]
    signout = [r for r in mine if r["operation"] == "console:SignOut"]
    assert len(signin) == 1 and len(create) == 1 and len(signout) == 1, ops
    for r in signin + create + signout:
        assert r["principal"] == user_arn(A, "alice") and r["account"] == A, r
        assert r["source"].startswith("127.0.0.1:"), r
    assert create[0]["result"] == "Success" and create[0]["key_arn"] == meta["Arn"]
    assert signin[0]["seq"] < create[0]["seq"] < signout[0]["seq"]
    # The reads the pages made are alice's too (the console acts as her).
    assert any(r["operation"] == "ListKeys" for r in mine)
    # And the same through the REST API's audit query, filtered by operation.
    by_op = json.loads(atrest_client_cmd(server, "audit", "--operation", "console:SignOut").stdout)["records"]
    assert [r["request_id"] for r in by_op] == [signout[0]["request_id"]]
    p = atrest_client_cmd(server, "audit", "verify")
    assert "audit trail verified" in p.stdout

    # The console's audit page, as the admin: the search finds the same
    # records, and the trail verifies.
    admin = ui(server)
    admin.sign_in(server.credentials())
    admin.click("Audit", role="link")
    admin.page.fill("#operation", "console:SignIn")
    admin.page.fill("#principal", user_arn(A, "alice"))
    admin.click("Search")
    rows = admin.page.locator("tbody tr").all_inner_texts()
    assert len(rows) == 2, rows
    assert "IncorrectSecret" in rows[1] and "Success" in rows[0], rows  # newest first
    assert all("console:SignIn" in r and user_arn(A, "alice") in r for r in rows), rows
    admin.page.fill("#operation", "CreateKey")
    admin.click("Search")
    rows = admin.page.locator("tbody tr").all_inner_texts()
    assert len(rows) == 1 and meta["Arn"] in rows[0], rows
    admin.screenshot("audit")
    admin.click("Verify the audit trail")
    status = admin.page.locator("div[role=status]").inner_text()
    assert "The audit trail verifies" in status, status
    # Alice may not verify: the API's refusal.
    c.sign_in(alice)
    c.goto("/console/audit")
    c.click("Verify the audit trail")
    assert any("AccessDenied" in a for a in c.alerts()), c.alerts()


def test_no_console_flag(make_server):
    server = make_server(args=("--no-console",)).start()
    s = http_session(server)
    for p in ("/console/", "/console/sign-in", "/console/static/console.js"):
        r = s.get(server.url + p, allow_redirects=False)
        assert r.status_code != 200 and "Sign in" not in r.text, (p, r.status_code)
    assert server.health()[0] == 200


# -- accessibility ---------------------------------------------------------------


def focused(c) -> dict:
    return c.page.evaluate("""() => { const e = document.activeElement;
        return {tag: e.tagName, id: e.id, text: (e.innerText || e.value || '').trim()}; }""")


def tab_to(c, pred, limit=80) -> dict:
    """Presses Tab until the focused element satisfies `pred`."""
    for _ in range(limit):
        f = focused(c)
        if pred(f):
            return f
        c.page.keyboard.press("Tab")
    raise AssertionError(f"not reached with Tab in {limit} presses; last focus {focused(c)}")


def test_keyboard_only(server, ui):
    root_a = new_account(server, A)
    kms = server.client(creds=root_a)
    c = ui(server)
    c.goto("/console/sign-in")
    tab_to(c, lambda f: f["id"] == "access_key_id")
    c.page.keyboard.type(root_a[0])
    tab_to(c, lambda f: f["id"] == "secret_access_key")
    c.page.keyboard.type(root_a[1])
    with c.page.expect_navigation():
        c.page.keyboard.press("Enter")
    c.check()
    assert c.path() == "/console/keys", c.page.url
    # The skip link comes first.
    c.page.keyboard.press("Tab")
    assert focused(c)["text"] == "Skip to content"
    tab_to(c, lambda f: f["tag"] == "A" and f["text"] == "Create key")
    with c.page.expect_navigation():
        c.page.keyboard.press("Enter")
    c.check()
    assert c.path() == "/console/keys/new"
    tab_to(c, lambda f: f["id"] == "description")
    c.page.keyboard.type("typed with the keyboard")
    tab_to(c, lambda f: f["id"] == "rotation")
    c.page.keyboard.press("Space")  # rotation off
    tab_to(c, lambda f: f["tag"] == "BUTTON" and f["text"] == "Create key")
    with c.page.expect_navigation():
        c.page.keyboard.press("Enter")
    c.check()
    key = key_id_of(c)
    assert kms.describe_key(KeyId=key)["KeyMetadata"]["Description"] == "typed with the keyboard"
    assert kms.get_key_rotation_status(KeyId=key)["KeyRotationEnabled"] is False
    # Disable through its confirmation, by keyboard.
    tab_to(c, lambda f: f["tag"] == "A" and f["text"] == "Disable")
    with c.page.expect_navigation():
        c.page.keyboard.press("Enter")
    c.check()
    tab_to(c, lambda f: f["tag"] == "BUTTON" and f["text"] == "Disable the key")
    with c.page.expect_navigation():
        c.page.keyboard.press("Enter")
    c.check()
    assert kms.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "Disabled"
    # Sign out by keyboard.
    tab_to(c, lambda f: f["tag"] == "BUTTON" and f["text"] == "Sign out")
    with c.page.expect_navigation():
        c.page.keyboard.press("Enter")
    assert c.path() == "/console/sign-in?why=signed-out"


# -- disks -----------------------------------------------------------------------


def qemu_io(uri: str, *cmds: str, timeout: float = 60) -> subprocess.CompletedProcess:
    args = ["qemu-io", "-f", "raw"]
    for c in cmds:
        args += ["-c", c]
    return subprocess.run([*args, uri], capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(not shutil.which("qemu-io"), reason="qemu-utils is installed by scripts/test.sh")
def test_disk_under_a_wizard_key_read_with_qemu_and_locked_when_the_key_is(make_server, ui):
    nbd_port = free_port()
    server = make_server(args=("--nbd-listen", f"127.0.0.1:{nbd_port}",
                               "--nbd-plaintext-principal", root_arn(A))).start()
    root_a = new_account(server, A)
    kms = server.client(creds=root_a)
    c = ui(server)
    c.sign_in(root_a)
    key = create_in_wizard(c, description="disk key", alias="disk-key")
    key_arn = kms.describe_key(KeyId=key)["KeyMetadata"]["Arn"]

    # -- create: the key chosen by its alias
    c.click("Disks", role="link")
    assert c.path() == "/console/disks" and "No disks." in c.text()
    options = c.page.locator("#key_id option").all_inner_texts()
    assert options[0].startswith("The disk service key"), options
    assert f"alias/disk-key ({key})" in options, options
    c.page.fill("#name", "console-disk")
    c.page.fill("#size", "64M")
    c.page.select_option("#key_id", key)
    c.click("Create disk")
    m = re.fullmatch(r"/console/disks/(\S+)", c.path())
    assert m, (c.page.url, c.alerts())
    disk_id = m.group(1)
    assert c.flash() == f"Disk {disk_id} created."
    d = rest_call(server, "GET", f"/v1/disks/{disk_id}", creds=root_a).json()
    assert d["key_arn"] == key_arn and d["size"] == 64 << 20 and d["tags"] == {"Name": "console-disk"}, d
    assert d["encrypted"] is True
    facts = c.page.locator("dl.facts").inner_text()
    assert "64 MiB" in facts and "alias/disk-key" in facts and "console-disk" in facts, facts
    assert c.page.locator("dl.facts span[title='67108864 bytes']").count() == 1
    c.screenshot("disk-page")

    # -- attach with qemu-io at the URI the page gives
    uri = c.value("#nbd_uri")
    assert uri == f"nbd://127.0.0.1:{nbd_port}/{disk_id}", uri
    p = qemu_io(uri, "write -P 0x5c 0 64k", "flush")
    assert p.returncode == 0, (p.stdout, p.stderr)
    p = qemu_io(uri, "read -P 0x5c 0 64k")
    assert p.returncode == 0 and "Pattern verification failed" not in p.stdout, (p.stdout, p.stderr)

    # -- the list shows it, by alias, not locked
    c.click("Disks", role="link")
    row = c.page.locator("tbody tr", has=c.page.locator(f"a:has-text('{disk_id}')"))
    assert "console-disk" in row.inner_text() and "alias/disk-key" in row.inner_text()
    assert "64 MiB" in row.inner_text() and "Locked" not in row.inner_text()
    c.screenshot("disks")

    # -- snapshot and resize from its page
    c.goto(f"/console/disks/{disk_id}")
    c.click("Take snapshot")
    assert c.flash().startswith("Snapshot ") and c.flash().endswith(" taken."), c.flash()
    snaps = rest_call(server, "GET", "/v1/snapshots", creds=root_a).json()["snapshots"]
    assert [s["disk"] for s in snaps] == [disk_id], snaps
    assert snaps[0]["id"] in c.flash()
    c.page.fill("#new_size", "128M")
    c.click("Resize")
    assert c.flash() == "The disk is resized.", (c.flash(), c.alerts())
    assert rest_call(server, "GET", f"/v1/disks/{disk_id}", creds=root_a).json()["size"] == 128 << 20

    # -- disable the key in the console: the disk is locked, in the page and for qemu
    c.goto(f"/console/keys/{key}")
    c.click("Disable", role="link")
    c.click("Disable the key")
    assert kms.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "Disabled"
    c.click("Disks", role="link")
    row = c.page.locator("tbody tr", has=c.page.locator(f"a:has-text('{disk_id}')"))
    assert "Locked" in row.inner_text() and "the key is disabled" in row.inner_text(), row.inner_text()
    assert "alias/disk-key" in row.inner_text()
    c.goto(f"/console/disks/{disk_id}")
    alerts = " ".join(c.alerts())
    assert "This disk is locked" in alerts and "alias/disk-key" in alerts and "disabled" in alerts, alerts
    p = qemu_io(uri, "read -P 0x5c 0 64k")
    assert p.returncode != 0, p.stdout
    # -- enabled again: unlocked, the data is there
    c.goto(f"/console/keys/{key}")
    c.click("Enable")
    c.click("Disks", role="link")
    row = c.page.locator("tbody tr", has=c.page.locator(f"a:has-text('{disk_id}')"))
    assert "Locked" not in row.inner_text(), row.inner_text()
    p = qemu_io(uri, "read -P 0x5c 0 64k")
    assert p.returncode == 0 and "Pattern verification failed" not in p.stdout, (p.stdout, p.stderr)


# What the page's <progress id="job"> says, and whether this is still the
# document the test marked (a reload makes a new one, without the mark).
_JOB_JS = """() => {
  const p = document.getElementById('job');
  const t = document.getElementById('job-text');
  return {marked: window.__atrestMarked === true, present: !!p,
          value: p ? p.getAttribute('value') : null, max: p ? p.getAttribute('max') : null,
          text: t ? t.textContent : null};
}"""


def watch_job_bar(c, timeout: float = 120.0) -> list[dict]:
    """Marks the page's document, then samples its `<progress id="job">`
    (which the script updates from /console/jobs/{id}/progress) every 50
    ms until a new document, loaded by the script itself, shows no
    progress. Returns the samples of the marked document (never reloaded
    by the test)."""
    from playwright.sync_api import Error as PlaywrightError

    assert c.page.locator("progress#job").count() == 1, "no job progress bar on the page"
    docs = len(c.documents)
    c.page.evaluate("() => { window.__atrestMarked = true; }")
    samples: list[dict] = []
    deadline = time.monotonic() + timeout
    while True:
        assert time.monotonic() < deadline, f"the page did not reload by itself in {timeout} s: {samples[-3:]}"
        try:
            s = c.page.evaluate(_JOB_JS)
        except PlaywrightError:  # the script's reload is under way
            s = None
        if s is not None:
            if s["marked"]:
                samples.append(s)
            elif not s["present"]:
                break
        time.sleep(0.05)
    c.page.wait_for_load_state()
    assert len(c.documents) > docs, "a new document without the mark, but none was loaded"
    c.check()
    return samples


def assert_live(samples: list[dict], total: int) -> None:
    """The bar moved in the page as the test watched it: at least two
    values, never backwards, out of `total`, the label following."""
    values = [int(s["value"]) for s in samples]
    assert samples and all(s["present"] and int(s["max"]) == total for s in samples), samples[:3]
    assert values == sorted(values), f"the bar went backwards: {values}"
    distinct = sorted(set(values))
    assert len(distinct) >= 2, f"the bar never moved without a reload: {distinct}"
    assert all(0 <= v <= total for v in values), values
    labels = {s["text"] for s in samples}
    assert len(labels) >= 2, f"the label never changed: {labels}"


REGION = 64 << 20  # a region of the filled disk, each of its own byte


def fill_disk(uri: str, regions: int) -> None:
    """Writes `regions` regions of REGION bytes at the start of the disk at
    `uri`, region i all bytes 0x40 + i."""
    p = qemu_io(uri, *(f"write -P {0x40 + i:#x} {i * REGION} {REGION}" for i in range(regions)), "flush",
                timeout=180)
    assert p.returncode == 0 and p.stdout.count("wrote ") == regions, (p.stdout, p.stderr)


def filled_reads(regions: int) -> list[str]:
    """qemu-io reads of the first and last 64 KiB of every region fill_disk wrote."""
    out = []
    for i in range(regions):
        out += [f"read -P {0x40 + i:#x} {i * REGION} 64k", f"read -P {0x40 + i:#x} {(i + 1) * REGION - 65536} 64k"]
    return out


def disk_grant(kms, key: str, disk_id: str) -> str | None:
    """The id of the disk service's grant on `key` for disk `disk_id`."""
    for g in kms.list_grants(KeyId=key)["Grants"]:
        if g.get("Constraints", {}).get("EncryptionContextSubset") == {"atrest:disk:id": disk_id}:
            return g["GrantId"]
    return None


def data_keys_made(server, grant: str) -> int:
    """How many data keys the disk service made under `grant` (the audit trail)."""
    return sum(1 for r in audit_records(audit_log_path(server))
               if r["operation"] == "GenerateDataKeyWithoutPlaintext" and r.get("grant_id") == grant
               and r["principal"] == "disk.atrest" and r["result"] == "Success")


def assert_reads(uri: str, *cmds: str) -> None:
    p = qemu_io(uri, *cmds)
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert "Pattern verification failed" not in p.stdout and p.stdout.count("read ") == len(cmds), p.stdout


@pytest.mark.skipif(not shutil.which("qemu-io"), reason="qemu-utils is installed by scripts/test.sh")
def test_disk_reencrypt_with_live_progress_rekey_and_convert(make_server, ui):
    nbd_port = free_port()
    server = make_server(args=("--nbd-listen", f"127.0.0.1:{nbd_port}",
                               "--nbd-plaintext-principal", root_arn(A))).start()
    root_a = new_account(server, A)
    kms = server.client(creds=root_a)
    c = ui(server)
    c.sign_in(root_a)
    key = create_in_wizard(c, description="first disk key", alias="disk-key-1", rotation=False)
    key_arn = kms.describe_key(KeyId=key)["KeyMetadata"]["Arn"]
    other = kms.create_key(Description="second disk key")["KeyMetadata"]
    kms.create_alias(AliasName="alias/disk-key-2", TargetKeyId=other["KeyId"])

    # -- a disk under the first key, 1 GiB of it written at the page's URI:
    # enough for the re-encryption of a debug build to take seconds
    regions = 16
    size = regions * REGION + REGION
    c.click("Disks", role="link")
    c.page.fill("#name", "rekeyed")
    c.page.fill("#size", f"{size >> 20}M")
    c.page.select_option("#key_id", key)
    c.click("Create disk")
    m = re.fullmatch(r"/console/disks/(\S+)", c.path())
    assert m, (c.page.url, c.alerts())
    disk_id = m.group(1)
    uri = c.value("#nbd_uri")
    assert uri == f"nbd://127.0.0.1:{nbd_port}/{disk_id}", uri
    t0 = time.monotonic()
    fill_disk(uri, regions)
    p = qemu_io(uri, f"write -P 0x3c {size - 65536} 64k", "flush")
    assert p.returncode == 0, (p.stdout, p.stderr)
    print(f"wrote {regions * REGION >> 20} MiB in {time.monotonic() - t0:.1f} s")
    written = (*filled_reads(regions), f"read -P 0 {regions * REGION} 64k", f"read -P 0 {size - 131072} 64k",
               f"read -P 0x3c {size - 65536} 64k")
    assert_reads(uri, *written)

    # -- re-encrypt: the bar moves in the page, which reloads itself when done
    grant = disk_grant(kms, key, disk_id)
    keys_before = data_keys_made(server, grant)
    assert keys_before >= 1, "no data key was made for the disk"
    c.goto(f"/console/disks/{disk_id}")
    t0 = time.monotonic()
    c.click("Re-encrypt")
    m = re.fullmatch(r"Re-encryption started\. Job (job-[0-9a-f]{16})\.", c.flash())
    assert m, (c.flash(), c.alerts())
    job = m.group(1)
    assert c.page.locator("progress#job").get_attribute("data-job") == job
    d = rest_call(server, "GET", f"/v1/disks/{disk_id}", creds=root_a).json()
    assert d["state"] == "re-encrypting" and "reencrypt" in d, d
    samples = watch_job_bar(c)
    print(f"re-encryption: {time.monotonic() - t0:.1f} s, {len(samples)} samples, "
          f"values {sorted({int(s['value']) for s in samples})}")
    assert_live(samples, size)
    assert c.path() == f"/console/disks/{disk_id}" and c.page.locator("progress").count() == 0
    jobs = c.page.locator("section:has(h2#jobs-h)").inner_text()
    assert f"{job} reencrypt: done" in jobs, jobs
    # -- the API: the job done over the whole disk, the disk available under the same key
    j = rest_call(server, "GET", f"/v1/jobs/{job}", creds=root_a).json()["job"]
    assert j["state"] == "succeeded" and j["kind"] == "reencrypt" and j["disk"] == disk_id, j
    assert j["progress"] == {"done": size, "total": size}, j
    d = rest_call(server, "GET", f"/v1/disks/{disk_id}", creds=root_a).json()
    assert d["state"] == "available" and "reencrypt" not in d and d["key_arn"] == key_arn, d
    # A fresh data key, made by the disk service under the disk's grant.
    assert data_keys_made(server, grant) == keys_before + 1
    assert_reads(uri, *written)

    # -- move to the second key, chosen by its alias
    label = f"alias/disk-key-2 ({other['KeyId']})"
    assert label in c.page.locator("#rekey_key_id option").all_inner_texts()
    c.page.select_option("#rekey_key_id", label=label)
    c.click("Move to this key")
    assert c.flash() == "The disk is moved to the key.", (c.flash(), c.alerts())
    d = rest_call(server, "GET", f"/v1/disks/{disk_id}", creds=root_a).json()
    assert d["key_arn"] == other["Arn"] and d["state"] == "available", d
    facts = c.page.locator("dl.facts").inner_text()
    assert "alias/disk-key-2" in facts and other["Arn"] in facts and "alias/disk-key-1" not in facts, facts
    assert disk_grant(kms, other["KeyId"], disk_id), "no grant on the new key"
    assert disk_grant(kms, key, disk_id) is None, "the grant on the old key is left"
    assert_reads(uri, *written)

    # -- convert into a new encrypted disk under the disk service key (the
    # key choice's first option): its bar, then the new disk
    assert not c.page.is_checked("#convert_encrypted")
    c.page.check("#convert_encrypted")
    assert c.value("#convert_key_id") == ""
    assert c.page.locator("#convert_key_id option:checked").inner_text().startswith("The disk service key")
    t0 = time.monotonic()
    c.click("Convert into a new disk")
    m = re.fullmatch(r"Conversion started\. Job (job-[0-9a-f]{16}) makes disk (disk-[0-9a-f]{16})\.", c.flash())
    assert m, (c.flash(), c.alerts())
    job, new = m.groups()
    assert c.page.locator("progress#job").get_attribute("data-job") == job
    samples = watch_job_bar(c)
    print(f"conversion: {time.monotonic() - t0:.1f} s, values {sorted({int(s['value']) for s in samples})}")
    assert_live(samples, size)
    j = rest_call(server, "GET", f"/v1/jobs/{job}", creds=root_a).json()["job"]
    assert j["state"] == "succeeded" and j["kind"] == "convert" and j["target"] == new, j
    c.click(new, role="link")
    assert c.path() == f"/console/disks/{new}", c.page.url
    n = rest_call(server, "GET", f"/v1/disks/{new}", creds=root_a).json()
    service = kms.describe_key(KeyId="alias/atrest/disk")["KeyMetadata"]["Arn"]
    assert n["encrypted"] is True and n["key_arn"] == service and n["size"] == size, n
    assert n["state"] == "available", n
    assert "alias/atrest/disk" in c.page.locator("dl.facts").inner_text()
    new_uri = c.value("#nbd_uri")
    assert new_uri == f"nbd://127.0.0.1:{nbd_port}/{new}", new_uri
    assert_reads(new_uri, *written)
    # The source is untouched, still under the second key.
    assert rest_call(server, "GET", f"/v1/disks/{disk_id}", creds=root_a).json()["key_arn"] == other["Arn"]


# -- admin -----------------------------------------------------------------------


def test_admin_accounts_users_policies_and_access_keys(server, ui):
    root = server.credentials()
    c = ui(server)
    c.sign_in(root)
    c.click("Admin", role="link")
    # A new account.
    c.page.fill("#id", B)
    c.click("Create account")
    assert c.flash() == f"Account {B} created.", (c.flash(), c.alerts())
    accounts = {a["id"]: a for a in rest_call(server, "GET", "/v1/accounts").json()["accounts"]}
    assert B in accounts and accounts[B]["admin"] is False
    c.click(B, role="link")
    assert f"Users of account {B}" in c.text()
    # A user, and its identity policy through the validating editor.
    c.page.fill("#name", "carol")
    c.click("Create user")
    assert c.flash() == "User carol created."
    c.page.fill("#policy-carol", "main")
    c.click("Write policy")
    assert "Identity policy" in c.page.title()
    c.page.fill("#document", '{"Version": "2012-10-17", "Statement": {"Effect": "Allow"}}')
    c.click("Save policy")
    assert "The policy is not valid" in " ".join(c.alerts())
    r = rest_call(server, "GET", f"/v1/accounts/{B}/users/carol/policies/main")
    assert r.status_code != 200 and r.json()["code"] == "NotFoundException", r.text
    doc = {"Version": "2012-10-17",
           "Statement": [{"Effect": "Allow", "Action": ["kms:ListKeys", "kms:CreateKey"], "Resource": "*"}]}
    c.page.fill("#document", json.dumps(doc))
    c.click("Check policy")
    assert c.page.locator("#document-check").inner_text().strip() == "The policy is valid."
    c.click("Save policy")
    assert c.flash() == "Policy main of carol saved.", (c.flash(), c.alerts())
    got = rest_call(server, "GET", f"/v1/accounts/{B}/users/carol/policies/main").json()
    assert json.loads(got["document"]) == doc, got
    # An access key for her: the secret shown once, and it works.
    c.page.fill("#user", "carol")
    c.click("Create access key")
    akid, secret = c.value("#new_access_key_id"), c.value("#new_secret_access_key")
    assert akid.startswith("AKIA") and len(secret) >= 40
    carol = server.client(creds=(akid, secret))
    made = carol.create_key(Description="carol's")["KeyMetadata"]
    assert made["Arn"].split(":")[4] == B
    expect_error("AccessDeniedException", carol.describe_key, KeyId=made["KeyId"])
    c.click("Back to the account", role="link")
    assert akid in c.text() and secret not in c.page.content()
    assert secret.encode() not in server.logs()
    assert sum(secret in h for h in c.seen) == 1, "the new secret was shown more than once"
    # Deactivate it from the console: carol's calls fail; activate again.
    row = c.page.locator("tr", has=c.page.locator(f"code:text-is('{akid}')"))
    row.get_by_role("button", name="Deactivate").click()
    c.page.wait_for_load_state()
    c.check()
    assert c.flash() == f"Access key {akid}: deactivated."
    expect_error("UnrecognizedClientException", carol.list_keys)
    row = c.page.locator("tr", has=c.page.locator(f"code:text-is('{akid}')"))
    row.get_by_role("button", name="Activate").click()
    c.page.wait_for_load_state()
    c.check()
    carol.list_keys()
    # Suspend the account: its principals are refused; resume.
    c.goto(f"/console/admin?account={B}")
    row = c.page.locator("tr", has=c.page.locator(f"a:text-is('{B}')"))
    row.get_by_role("button", name="Suspend").click()
    c.page.wait_for_load_state()
    c.check()
    assert c.flash() == f"Account {B}: suspended."
    assert "Suspended" in c.page.locator("tr", has=c.page.locator(f"a:text-is('{B}')")).inner_text()
    expect_error("AccountSuspendedException", carol.create_key)
    c.page.locator("tr", has=c.page.locator(f"a:text-is('{B}')")).get_by_role("button", name="Resume").click()
    c.page.wait_for_load_state()
    c.check()
    assert c.flash() == f"Account {B}: resumed."
    carol.create_key()
    c.screenshot("admin")

    # A non-admin sees no accounts and may not create one.
    root_a = new_account(server, A)
    other = ui(server)
    other.sign_in(root_a)
    other.goto("/console/admin")
    assert "Accounts" not in [h.strip() for h in other.page.locator("h2").all_inner_texts()]
    assert f"Users of account {A}" in other.text()
    r = other.page.request.post(other.url("/console/admin/accounts"), form={"csrf": other.csrf(), "id": "999999999999"},
                                max_redirects=0)
    assert r.status != 303 and "AccessDenied" in r.text(), r.status
    assert "999999999999" not in [a["id"] for a in rest_call(server, "GET", "/v1/accounts").json()["accounts"]]


# -- databases -------------------------------------------------------------------


def sql_counts(port: int) -> str:
    return sql_value(port, "SELECT string_agg(phase || '=' || n, ',' ORDER BY phase) "
                           "FROM (SELECT phase, count(*) n FROM t GROUP BY phase) x")


def instance_row(c, name: str):
    return c.page.locator("tbody tr", has=c.page.locator(f"a:text-is('{name}')"))


@pytest.mark.skipif(not shutil.which("psql"), reason="postgresql is installed by scripts/test.sh")
def test_database_under_a_wizard_key_psql_locked_and_point_in_time_restore(server, ui):
    from test_db_backup import switch_and_wait_archived, utc_now_in_db

    kms = server.client()
    c = ui(server)
    c.context.set_default_timeout(240_000)  # initdb, backups and restores of a debug build
    c.sign_in(server.credentials())
    key = create_in_wizard(c, description="db key", alias="db-key", rotation=False)
    key_arn = kms.describe_key(KeyId=key)["KeyMetadata"]["Arn"]

    # -- create: tde, under the wizard's key chosen by alias, a given password
    c.click("Databases", role="link")
    assert "No instances." in c.text()
    assert f"alias/db-key ({key})" in c.page.locator("#key_id option").all_inner_texts()
    c.page.fill("#name", "shop")
    c.page.select_option("#class", "tde")
    c.page.select_option("#key_id", key)
    c.page.fill("#size", "1G")
    c.page.fill("#master_password", DB_PASSWORD)
    c.click("Create instance")
    assert c.path() == "/console/databases/shop", (c.page.url, c.alerts())
    assert c.flash() == "Database instance shop created."
    v = rest_call(server, "GET", "/v1/instances/shop").json()
    assert v["key_arn"] == key_arn and v["encrypted"] is True and v["class"] == "tde", v
    assert v["state"] == "running", v
    assert DB_PASSWORD not in c.page.content(), "a given password is shown"
    facts = c.page.locator("dl.facts").inner_text()
    assert "alias/db-key" in facts and "running" in facts and "tde" in facts, facts
    # -- connect with psql at the endpoint the page gives
    cmd = c.value("#psql_cmd")
    port = int(re.search(r"port=(\d+)", cmd).group(1))
    assert port == v["port"] and "host=127.0.0.1" in cmd and "user=postgres" in cmd, cmd
    psql(port, "CREATE TABLE t (id serial PRIMARY KEY, phase text NOT NULL); "
               "INSERT INTO t (phase) SELECT 'base' FROM generate_series(1, 50);")
    c.screenshot("database")

    # -- stop and start from the page
    c.click("Stop")
    assert c.flash() == "The instance is stopped.", (c.flash(), c.alerts())
    assert rest_call(server, "GET", "/v1/instances/shop").json()["state"] == "stopped"
    assert psql(port, "SELECT 1", check=False).returncode != 0
    c.click("Start")
    assert c.flash() == "The instance is started.", (c.flash(), c.alerts())
    assert sql_counts(port) == "base=50"

    # -- a backup, more commits around an instant T, restore to T from the backups page
    c.click("Back up now")
    assert re.fullmatch(r"Backup bk-\S+ made\.", c.flash()), (c.flash(), c.alerts())
    backup = c.flash().split()[1]
    backups = rest_call(server, "GET", "/v1/backups?instance=shop").json()["backups"]
    assert [b["id"] for b in backups] == [backup] and backups[0]["key_arn"] == key_arn, backups
    psql(port, "INSERT INTO t (phase) SELECT 'A' FROM generate_series(1, 40);")
    time.sleep(1.0)
    t = utc_now_in_db(port)
    time.sleep(1.0)
    psql(port, "INSERT INTO t (phase) SELECT 'B' FROM generate_series(1, 30);")
    switch_and_wait_archived(server, port, v["id"])
    c.goto("/console/backups")
    row = c.page.locator("tbody tr", has=c.page.locator(f"code:text-is('{backup}')"))
    assert "alias/db-key" in row.inner_text() and "shop" in row.inner_text()
    row.get_by_role("link", name="Restore…").click()
    c.page.wait_for_load_state()
    c.check()
    assert c.page.locator("#backup_id").input_value() == backup
    c.page.fill("#restore_name", "shop-pitr")
    c.page.fill("#to_time", t)
    c.click("Restore")
    assert c.path() == "/console/databases/shop-pitr", (c.page.url, c.alerts())
    assert c.flash() == f"Backup {backup} restored into instance shop-pitr."
    pitr = rest_call(server, "GET", "/v1/instances/shop-pitr").json()
    assert pitr["key_arn"] == key_arn and pitr["state"] == "running", pitr
    assert sql_counts(pitr["port"]) == "A=40,base=50"
    assert sql_counts(port) == "A=40,B=30,base=50"

    # -- disable the key in the console: both instances shown locked, a restart refused
    c.goto(f"/console/keys/{key}")
    c.click("Disable", role="link")
    c.click("Disable the key")
    c.click("Databases", role="link")
    for name in ("shop", "shop-pitr"):
        text = instance_row(c, name).inner_text()
        assert "Locked" in text and "the key is disabled" in text and "alias/db-key" in text, text
    c.screenshot("databases")
    c.click("shop", role="link")
    assert "Locked" in c.page.locator("dl.facts").inner_text()
    c.click("Restart")
    alerts = " ".join(c.alerts())
    assert key_arn in alerts or key in alerts, alerts
    assert "disabled" in alerts.lower(), alerts
    # -- enabled again: not locked, restart works, the data is there
    c.goto(f"/console/keys/{key}")
    c.click("Enable")
    c.goto("/console/databases/shop")
    assert "Locked" not in c.page.locator("dl.facts").inner_text()
    c.click("Restart")
    assert c.flash() == "The instance is restarted.", (c.flash(), c.alerts())
    assert sql_counts(port) == "A=40,B=30,base=50"


def wait_sql(port: int, sql: str, want: str, timeout: float = 60) -> None:
    """Waits until `sql` on `port` gives `want` (a replica catching up)."""
    deadline = time.monotonic() + timeout
    got = None
    while time.monotonic() < deadline:
        p = psql(port, sql, check=False)
        got = p.stdout.strip()
        if p.returncode == 0 and got == want:
            return
        time.sleep(0.3)
    raise AssertionError(f"{sql!r} on port {port} gave {got!r}, not {want!r}")


def replica_rows(c) -> dict[str, str]:
    """The replicas table of an instance page: name → row text."""
    rows = c.page.locator("section:has(h2#replicas-h) tbody tr")
    return {r.locator("td").first.inner_text().strip(): r.inner_text() for r in rows.all()}


@pytest.mark.skipif(not shutil.which("psql"), reason="postgresql is installed by scripts/test.sh")
def test_database_replica_listed_and_switched_over_both_ways(server, ui):
    kms = server.client()
    c = ui(server)
    c.context.set_default_timeout(240_000)  # initdb, base backups and switchovers of a debug build
    c.sign_in(server.credentials())
    key = create_in_wizard(c, description="replicated db key", alias="repl-key", rotation=False)
    key_arn = kms.describe_key(KeyId=key)["KeyMetadata"]["Arn"]
    c.click("Databases", role="link")
    c.page.fill("#name", "main")
    c.page.select_option("#class", "tde")
    c.page.select_option("#key_id", key)
    c.page.fill("#size", "512M")
    c.page.fill("#master_password", DB_PASSWORD)
    c.click("Create instance")
    assert c.path() == "/console/databases/main", (c.page.url, c.alerts())
    p = rest_call(server, "GET", "/v1/instances/main").json()
    assert p["role"] == "primary" and p["state"] == "running", p
    psql(p["port"], "CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
    assert "No replicas." in c.page.locator("section:has(h2#replicas-h)").inner_text()
    # A tde instance's encryption cannot be turned off: no such button.
    assert c.page.get_by_role("button", name="Disable encryption", exact=True).count() == 0

    # -- create a replica from the primary's page
    rport = free_port()
    c.page.fill("#replica_name", "main-standby")
    c.page.fill("#replica_port", str(rport))
    c.click("Create replica")
    assert c.path() == "/console/databases/main-standby", (c.page.url, c.alerts())
    assert c.flash() == "Replica main-standby created.", (c.flash(), c.alerts())
    r = rest_call(server, "GET", "/v1/instances/main-standby").json()
    assert r["role"] == "replica" and r["primary"] == "main" and r["port"] == rport, r
    assert r["key_arn"] == key_arn and r["state"] == "running" and r["disk"] != p["disk"], r
    facts = c.page.locator("dl.facts").inner_text()
    assert "replica of main" in facts and "alias/repl-key" in facts and f":{rport}" in facts, facts
    assert "This is a replica of main" in c.page.locator("section:has(h2#replicas-h)").inner_text()
    wait_sql(rport, "SELECT count(*) FROM t", "1")
    ro = psql(rport, "INSERT INTO t VALUES (99)", check=False)
    assert ro.returncode != 0 and "read-only" in ro.stderr, ro.stderr

    # -- listed: in the primary's replicas and in the instance list
    c.goto("/console/databases/main")
    rows = replica_rows(c)
    assert list(rows) == ["main-standby"], rows
    assert "running" in rows["main-standby"] and f"127.0.0.1:{rport}" in rows["main-standby"], rows
    c.click("Databases", role="link")
    listed = instance_row(c, "main-standby").inner_text()
    assert "replica of main" in listed and "alias/repl-key" in listed, listed
    assert "primary" in instance_row(c, "main").inner_text()

    # -- switch over from the primary's page: the replica is the primary
    c.goto("/console/databases/main")
    c.page.locator("section:has(h2#replicas-h) tbody tr", has=c.page.locator("a:text-is('main-standby')")) \
        .get_by_role("button", name="Switch over to this replica").click()
    c.page.wait_for_load_state()
    c.check()
    assert c.path() == "/console/databases/main-standby", (c.page.url, c.alerts())
    assert c.flash() == "main-standby is now the primary.", (c.flash(), c.alerts())
    new = rest_call(server, "GET", "/v1/instances/main-standby").json()
    old = rest_call(server, "GET", "/v1/instances/main").json()
    assert new["role"] == "primary" and "primary" not in new and new["key_arn"] == key_arn, new
    assert old["role"] == "replica" and old["primary"] == "main-standby" and old["state"] == "running", old
    assert list(replica_rows(c)) == ["main"], replica_rows(c)
    psql(rport, "INSERT INTO t VALUES (2)")
    wait_sql(p["port"], "SELECT count(*) FROM t", "2")
    ro = psql(p["port"], "INSERT INTO t VALUES (98)", check=False)
    assert ro.returncode != 0 and "read-only" in ro.stderr, ro.stderr

    # -- and back, from the old primary's page (a replica's "Switch over")
    c.goto("/console/databases/main")
    assert "This is a replica of main-standby" in c.page.locator("section:has(h2#replicas-h)").inner_text()
    c.click("Switch over")
    assert c.path() == "/console/databases/main" and c.flash() == "main is now the primary.", (c.flash(), c.alerts())
    assert rest_call(server, "GET", "/v1/instances/main").json()["role"] == "primary"
    back = rest_call(server, "GET", "/v1/instances/main-standby").json()
    assert back["role"] == "replica" and back["primary"] == "main", back
    psql(p["port"], "INSERT INTO t VALUES (3)")
    wait_sql(rport, "SELECT string_agg(x::text, ',' ORDER BY x) FROM t", "1,2,3")
    assert psql(rport, "INSERT INTO t VALUES (97)", check=False).returncode != 0


@pytest.mark.skipif(not shutil.which("psql"), reason="postgresql is installed by scripts/test.sh")
def test_database_disk_class_encryption_enabled_rekeyed_and_disabled(server, ui):
    kms = server.client()
    c = ui(server)
    c.context.set_default_timeout(240_000)
    c.sign_in(server.credentials())
    k1 = create_in_wizard(c, description="db enc key 1", alias="enc-key-1", rotation=False)
    k1_arn = kms.describe_key(KeyId=k1)["KeyMetadata"]["Arn"]
    k2 = kms.create_key(Description="db enc key 2")["KeyMetadata"]
    kms.create_alias(AliasName="alias/enc-key-2", TargetKeyId=k2["KeyId"])

    # -- an unencrypted disk-class instance
    c.click("Databases", role="link")
    c.page.fill("#name", "plain")
    c.page.select_option("#class", "disk")
    c.page.select_option("#key_id", "none")
    c.page.fill("#size", "256M")
    c.page.fill("#master_password", DB_PASSWORD)
    c.click("Create instance")
    assert c.path() == "/console/databases/plain", (c.page.url, c.alerts())
    v = rest_call(server, "GET", "/v1/instances/plain").json()
    assert v["class"] == "disk" and v["encrypted"] is False and "key_arn" not in v, v
    port = v["port"]
    facts = c.page.locator("dl.facts").inner_text()
    assert "none (not encrypted)" in facts, facts
    psql(port, "CREATE TABLE t AS SELECT generate_series(1, 500) AS x")
    section = c.page.locator("section:has(h2#encryption-h)")
    assert section.get_by_role("button", name="Set key", exact=True).count() == 0
    assert section.get_by_role("button", name="Disable encryption", exact=True).count() == 0

    # -- enable, under the first key chosen by alias
    c.page.select_option("#enc_key_id", label=f"alias/enc-key-1 ({k1})")
    c.click("Enable encryption")
    assert c.flash() == "Encryption is on.", (c.flash(), c.alerts())
    e = rest_call(server, "GET", "/v1/instances/plain").json()
    assert e["encrypted"] is True and e["key_arn"] == k1_arn and e["disk"] != v["disk"], e
    assert e["state"] == "running" and e["port"] == port, e
    facts = c.page.locator("dl.facts").inner_text()
    assert "alias/enc-key-1" in facts and k1_arn in facts, facts
    assert sql_value(port, "SELECT count(*) FROM t") == "500"
    psql(port, "INSERT INTO t VALUES (501)")
    assert section.get_by_role("button", name="Enable encryption", exact=True).count() == 0

    # -- set the key: the second one, chosen by alias
    assert c.value("#enc_key_id") == k1, "the key choice does not start at the current key"
    c.page.select_option("#enc_key_id", label=f"alias/enc-key-2 ({k2['KeyId']})")
    c.click("Set key")
    assert c.flash() == "The instance is under its new key.", (c.flash(), c.alerts())
    k = rest_call(server, "GET", "/v1/instances/plain").json()
    assert k["encrypted"] is True and k["key_arn"] == k2["Arn"] and k["disk"] == e["disk"], k
    assert k["state"] == "running", k
    assert "alias/enc-key-2" in c.page.locator("dl.facts").inner_text()
    assert sql_value(port, "SELECT count(*) FROM t") == "501"
    psql(port, "INSERT INTO t VALUES (502)")
    # The first key no longer matters: disabled, a restart still works.
    kms.disable_key(KeyId=k1)
    c.click("Restart")
    assert c.flash() == "The instance is restarted.", (c.flash(), c.alerts())
    assert sql_value(port, "SELECT count(*) FROM t") == "502"

    # -- disable: back to an unencrypted disk, the data kept
    c.click("Disable encryption")
    assert c.flash() == "Encryption is off.", (c.flash(), c.alerts())
    off = rest_call(server, "GET", "/v1/instances/plain").json()
    assert off["encrypted"] is False and "key_arn" not in off and off["state"] == "running", off
    assert off["disk"] != e["disk"], off
    assert "none (not encrypted)" in c.page.locator("dl.facts").inner_text()
    assert sql_value(port, "SELECT count(*) FROM t") == "502"
    psql(port, "INSERT INTO t VALUES (503)")
    assert sql_value(port, "SELECT max(x) FROM t") == "503"
    assert section.get_by_role("button", name="Enable encryption", exact=True).count() == 1


# -- projects (CMEK) ---------------------------------------------------------------


@pytest.mark.skipif(not shutil.which("psql"), reason="postgresql is installed by scripts/test.sh")
def test_cmek_project_wrong_policy_named_fixed_saved_revoked_paused_resumed(server, ui):
    region = server.regions[0]
    root_a = new_account(server, A)
    kms = server.client(creds=root_a)
    c = ui(server)
    c.context.set_default_timeout(240_000)
    c.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    c.sign_in(root_a)
    key = create_in_wizard(c, description="cmek key", alias="cmek-key", rotation=False)
    key_arn = kms.describe_key(KeyId=key)["KeyMetadata"]["Arn"]

    # -- create a CMEK project
    c.click("Projects", role="link")
    assert "No projects." in c.text()
    c.page.fill("#name", "payments")
    c.page.check("#cmek")
    c.click("Create project")
    m = re.fullmatch(r"/console/projects/(\S+)", c.path())
    assert m, (c.page.url, c.alerts())
    pid = m.group(1)
    assert c.flash() == f"Project payments ({pid}) created."
    p = rest_call(server, "GET", f"/v1/projects/{pid}", creds=root_a).json()
    assert p["cmek"] is True and p["keys"] == {}, p
    assert f"No key is configured in {region}" in c.text()

    # -- the policy to copy is the API's; the copy button copies it
    shown = json.loads(c.value(f"#policy-{region}"))
    api_policy = rest_call(server, "GET", f"/v1/projects/{pid}/key-policy/{region}", creds=root_a).json()
    assert shown == api_policy, (shown, api_policy)
    c.page.locator(f"button.copy[data-copy='policy-{region}']").click()
    assert json.loads(c.page.evaluate("navigator.clipboard.readText()")) == api_policy

    # -- a wrong policy: the service statement without kms:CreateGrant, saved in the key's editor
    wrong = json.loads(json.dumps(api_policy))
    wrong["Statement"][0]["Action"] = [a for a in wrong["Statement"][0]["Action"] if a != "kms:CreateGrant"]
    assert wrong != api_policy
    c.goto(f"/console/keys/{key}")
    c.page.fill("#policy", json.dumps(wrong))
    c.click("Save policy")
    assert c.flash() == "The key policy is saved.", (c.flash(), c.alerts())
    c.goto(f"/console/projects/{pid}")
    c.page.fill(f"#key-{region}", key_arn)
    c.click("Test and save")
    alerts = " ".join(c.alerts())
    assert "KeyAccessDeniedException" in alerts and "kms:CreateGrant" in alerts and key_arn in alerts, alerts
    assert c.value(f"#key-{region}") == key_arn, "the key typed is lost"
    assert rest_call(server, "GET", f"/v1/projects/{pid}", creds=root_a).json()["keys"] == {}
    # -- fixed: the copied policy pasted into the key's editor, saved, then test and save
    c.goto(f"/console/keys/{key}")
    c.page.fill("#policy", "")
    c.page.focus("#policy")
    c.page.keyboard.press("Control+V")
    assert json.loads(c.value("#policy")) == api_policy
    c.click("Save policy")
    assert c.flash() == "The key policy is saved."
    assert json.loads(kms.get_key_policy(KeyId=key, PolicyName="default")["Policy"]) == api_policy
    c.goto(f"/console/projects/{pid}")
    c.page.fill(f"#key-{region}", key_arn)
    c.click("Test and save")
    assert c.flash() == f"The key passed every test and is saved for {region}.", (c.flash(), c.alerts())
    p = rest_call(server, "GET", f"/v1/projects/{pid}", creds=root_a).json()
    assert p["keys"][region]["key_arn"] == key_arn, p
    section = c.page.locator("section", has=c.page.locator(f"h2:text-is('Key in {region}')"))
    assert "Usable" in section.inner_text() and "alias/cmek-key" in section.inner_text()
    assert "Keys usable" in c.text()

    # -- a disk and an instance in the project, under the key
    c.page.fill("#disk_size", "64M")
    c.click("Create disk in project")
    m = re.fullmatch(r"/console/disks/(\S+)", c.path())
    assert m, (c.page.url, c.alerts())
    disk_id = m.group(1)
    assert rest_call(server, "GET", f"/v1/disks/{disk_id}", creds=root_a).json()["key_arn"] == key_arn
    c.goto(f"/console/projects/{pid}")
    c.page.fill("#instance_name", "orders")
    c.page.select_option("#instance_class", "tde")
    c.click("Create instance in project")
    assert c.page.title().startswith("Instance orders created"), (c.page.title(), c.alerts())
    password = c.value("#master_password_once")
    assert len(password) >= 16
    v = rest_call(server, "GET", "/v1/instances/orders", creds=root_a).json()
    assert v["key_arn"] == key_arn and v["state"] == "running", v
    assert sql_value(v["port"], "SELECT 1", password=password) == "1"
    c.click("Go to the instance", role="link")
    assert password not in c.page.content(), "the generated password is shown again"
    c.goto(f"/console/projects/{pid}")
    assert password not in c.page.content()
    rows = c.page.locator("section:has(h2:text-is('Resources')) tbody tr").all_inner_texts()
    assert len(rows) == 2 and all("alias/cmek-key" in r for r in rows), rows
    c.screenshot("project")

    # -- revoke (disable the key in the console): shown revoked and locked; pause; resume refused
    c.goto(f"/console/keys/{key}")
    c.click("Disable", role="link")
    c.click("Disable the key")
    c.goto(f"/console/projects/{pid}")
    revoke = c.page.locator("section:has(h2:text-is('Revoke status'))").inner_text()
    assert "Revoked" in revoke and "the key is disabled" in revoke, revoke
    rows = c.page.locator("section:has(h2:text-is('Resources')) tbody tr").all_inner_texts()
    assert len(rows) == 2 and all("Locked" in r for r in rows), rows
    c.click("Pause project")
    assert c.flash() == "The project is paused: its instances are stopped.", (c.flash(), c.alerts())
    assert rest_call(server, "GET", f"/v1/projects/{pid}", creds=root_a).json()["paused"] is True
    assert psql(v["port"], "SELECT 1", password=password, check=False).returncode != 0
    c.click("Resume project")
    alerts = " ".join(c.alerts())
    assert "KeyAccessDeniedException" in alerts and key_arn in alerts and "Disabled" in alerts, alerts
    assert rest_call(server, "GET", f"/v1/projects/{pid}", creds=root_a).json()["paused"] is True
    # -- the key enabled again: resume works, the instance runs
    c.goto(f"/console/keys/{key}")
    c.click("Enable")
    c.goto(f"/console/projects/{pid}")
    c.click("Resume project")
    assert c.flash().startswith("The project is resumed"), (c.flash(), c.alerts())
    assert rest_call(server, "GET", f"/v1/projects/{pid}", creds=root_a).json()["paused"] is False
    assert sql_value(v["port"], "SELECT 1", password=password) == "1"


# -- metering and nodes ------------------------------------------------------------


def test_metering_charts_and_nodes(server, ui):
    root_a = new_account(server, A)
    kms = server.client(creds=root_a)
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    for _ in range(7):
        kms.encrypt(KeyId=key, Plaintext=b"m")
    kms.disable_key(KeyId=key)
    for _ in range(3):
        expect_error("DisabledException", kms.encrypt, KeyId=key, Plaintext=b"m")
    usage = json.loads(atrest_client_cmd(server, "metering", "--account", A).stdout)["usage"]
    enc = [u for u in usage if u["operation"] == "Encrypt"]
    assert len(enc) == 1 and (enc[0]["success"], enc[0]["error"]) == (7, 3), enc

    # The admin, one account: the charts (SVG plots) and the table say the same.
    c = ui(server)
    c.sign_in(server.credentials())
    c.click("Metering", role="link")
    c.page.fill("#account", A)
    c.page.select_option("#window", "1h")
    c.click("Show")
    for chart in ("chart-operations", "chart-accounts", "chart-time-operation", "chart-time-account"):
        svg = c.page.locator(f"svg#{chart}")
        assert svg.count() == 1 and svg.get_attribute("role") == "img" and svg.get_attribute("aria-label"), chart
    bars = c.page.locator("svg#chart-operations g title").all_text_contents()
    assert "Encrypt: 7 successful, 3 failed" in bars, bars
    by_account = c.page.locator("svg#chart-accounts g title").all_text_contents()
    total = sum(u["success"] + u["error"] for u in usage)
    assert by_account == [f"{A}: {sum(u['success'] for u in usage)} successful, "
                          f"{sum(u['error'] for u in usage)} failed"], (by_account, total)
    assert "Encrypt (10)" in c.page.locator("svg#chart-time-operation").text_content()
    rows = [r.split("\t") for r in c.page.locator("section:has(h2#totals-h) tbody tr").all_inner_texts()]
    assert sorted((r[0], r[2], int(r[3]), int(r[4])) for r in rows) == \
        sorted((u["account"], u["operation"], u["success"], u["error"]) for u in usage), rows
    c.screenshot("metering")
    # A non-admin sees its own account only, and no account field.
    other = ui(server)
    other.sign_in(root_a)
    other.goto("/console/metering")
    assert other.page.locator("#account").count() == 0
    accounts = {r.split("\t")[0] for r in other.page.locator("section:has(h2#totals-h) tbody tr").all_inner_texts()}
    assert accounts == {A}, accounts

    # Nodes: this node, up, as GET /v1/nodes reports it.
    c.click("Nodes", role="link")
    nodes = rest_call(server, "GET", "/v1/nodes").json()["nodes"]
    assert len(nodes) == 1
    facts = c.page.locator("dl.facts").first.inner_text()
    assert "ok" in facts and server.url in facts, facts
    row = c.page.locator("section:has(h2#nodes-h) tbody tr")
    assert row.count() == 1
    text = row.inner_text()
    assert nodes[0]["id"] in text and "up" in text and "this node" in text, text
    c.screenshot("nodes")
