"""Projects with customer-managed keys (issue 8: P1 to P5, K10), end to end
through the REST API and the `atrest project` CLI, with boto3 as the
customer's key administration.

* A CMEK project gets a key in region A only after test-and-save; the key
  policy atrest generates is attached with boto3's PutKeyPolicy and is what
  makes the test pass. A disk in region B is refused
  (RegionNotConfiguredException); in A it is created under the key, as is a
  PostgreSQL instance.
* Revoke (DisableKey, or the policy statement removed), pause, resume
  fails naming the key; restore, resume works and the instance runs again.
* A key whose policy lacks a permission is refused naming it.
* A project without CMEK uses the managed (service) keys; CMEK is fixed.
* The `stop` revocation policy pauses the project by itself.
* Idempotent creation, and typed 4xx errors for bad input.
"""

from __future__ import annotations

import json
import time

from conftest import atrest_client_cmd, new_account, psql, rest_call, sql_value

A = "111122223333"
RA, RB = "us-east-1", "eu-west-1"


def project_cmd(server, creds, *args, check=True):
    p = atrest_client_cmd(server, "project", *args, env_creds=creds, check=check)
    return json.loads(p.stdout) if check else p


def ok(resp, status=200):
    assert resp.status_code == status, (resp.status_code, resp.text)
    return resp.json()


def err(resp, status, code):
    body = resp.json()
    assert (resp.status_code, body.get("code")) == (status, code), (resp.status_code, resp.text)
    return body["message"]


def test_cmek_project_end_to_end(make_server):
    server = make_server(regions=(RA, RB)).start()
    creds = new_account(server, A)
    kms = server.client(creds=creds, region=RA)

    p = project_cmd(server, creds, "create", "payments", "--cmek")
    pid = p["id"]
    assert p["cmek"] is True and p["keys"] == {} and p["revocation"] == {"policy": "keep"}, p

    # Nothing can be created before a key is configured for the region.
    msg = err(rest_call(server, "POST", f"/v1/projects/{pid}/disks", {"size": 1 << 20}, creds=creds, region=RA),
              409, "RegionNotConfiguredException")
    assert RA in msg and pid in msg, msg

    # The customer's key in A, with the policy atrest generates for A.
    key = kms.create_key(Description="payments CMEK")["KeyMetadata"]["Arn"]
    policy = project_cmd(server, creds, "key-policy", pid, "--key-region", RA)
    via = policy["Statement"][0]["Condition"]["StringEquals"]["kms:ViaService"]
    assert via == [f"disk.{RA}.atrest", f"db.{RA}.atrest"], policy
    kms.put_key_policy(KeyId=key, PolicyName="default", Policy=json.dumps(policy))
    p = project_cmd(server, creds, "set-key", pid, "--key", key, "--key-region", RA)
    assert p["keys"][RA]["key_arn"] == key and p["keys"][RA]["provider"] == "atrest", p
    # The test grant was retired: no grant is left on the key.
    assert kms.list_grants(KeyId=key)["Grants"] == []

    # Region B has no key: refused there (K10); in A, under the key.
    msg = err(rest_call(server, "POST", f"/v1/projects/{pid}/disks", {"size": 1 << 20}, creds=creds, region=RB),
              409, "RegionNotConfiguredException")
    assert RB in msg, msg
    d = ok(rest_call(server, "POST", f"/v1/projects/{pid}/disks", {"size": 1 << 20}, creds=creds, region=RA), 201)
    assert d["encrypted"] is True and d["key_arn"] == key, d
    # Its snapshots are under the same key (P4).
    s = ok(rest_call(server, "POST", "/v1/snapshots", {"disk_id": d["id"]}, creds=creds, region=RA), 201)
    assert s["key_arn"] == key, s
    # A project's resource cannot choose another key.
    err(rest_call(server, "POST", f"/v1/projects/{pid}/disks", {"size": 1 << 20, "key_id": key}, creds=creds,
                  region=RA), 400, "ValidationException")
    pw = server.workdir / "pw"
    pw.write_text("interop-Pass-1\n")
    v = project_cmd(server, creds, "create-db", pid, "orders", "--size", "512M", "--password-file", str(pw))
    assert v["key_arn"] == key and v["state"] == "running", v
    assert sql_value(v["port"], "SELECT 1") == "1"
    shown = project_cmd(server, creds, "show", pid)
    assert sorted((r["kind"], r["region"]) for r in shown["resources"]) == [("disk", RA), ("instance", RA)], shown

    # Revoke (disable), pause, resume fails naming the key; restore, resume.
    kms.disable_key(KeyId=key)
    paused = project_cmd(server, creds, "pause", pid)
    assert paused["paused"] is True
    assert psql(v["port"], "SELECT 1", check=False).returncode != 0, "a paused project's instance is stopped"
    msg = err(rest_call(server, "POST", f"/v1/projects/{pid}/resume", creds=creds, region=RA),
              400, "KeyAccessDeniedException")
    assert key in msg and "Disabled" in msg, msg
    r = project_cmd(server, creds, "resume", pid, check=False)
    assert r.returncode != 0 and key in r.stderr, r.stderr
    kms.enable_key(KeyId=key)
    resumed = project_cmd(server, creds, "resume", pid)
    assert resumed["paused"] is False
    assert sql_value(v["port"], "SELECT 1") == "1"

    # Revoke by removing the policy statement: resume fails naming the key
    # and the permission; putting the statement back restores it.
    project_cmd(server, creds, "pause", pid)
    admin_only = dict(policy, Statement=policy["Statement"][1:])
    kms.put_key_policy(KeyId=key, PolicyName="default", Policy=json.dumps(admin_only),
                       BypassPolicyLockoutSafetyCheck=True)
    msg = err(rest_call(server, "POST", f"/v1/projects/{pid}/resume", creds=creds, region=RA),
              400, "KeyAccessDeniedException")
    assert key in msg and "kms:GenerateDataKey" in msg, msg
    kms.put_key_policy(KeyId=key, PolicyName="default", Policy=json.dumps(policy))
    assert project_cmd(server, creds, "resume", pid)["paused"] is False

    # A paused project creates nothing; a project with resources is not deleted.
    project_cmd(server, creds, "pause", pid)
    err(rest_call(server, "POST", f"/v1/projects/{pid}/disks", {"size": 1 << 20}, creds=creds, region=RA),
        409, "ConflictException")
    err(rest_call(server, "DELETE", f"/v1/projects/{pid}", creds=creds, region=RA), 409, "ConflictException")


def test_test_and_save_names_the_missing_permission(make_server):
    server = make_server(regions=(RA, RB)).start()
    creds = new_account(server, A)
    kms = server.client(creds=creds, region=RA)
    pid = project_cmd(server, creds, "create", "strict", "--cmek")["id"]
    policy = project_cmd(server, creds, "key-policy", pid, "--key-region", RA)
    without_grants = json.loads(json.dumps(policy))
    without_grants["Statement"][0]["Action"] = [
        a for a in policy["Statement"][0]["Action"] if a != "kms:CreateGrant"]
    key = kms.create_key()["KeyMetadata"]["Arn"]
    kms.put_key_policy(KeyId=key, PolicyName="default", Policy=json.dumps(without_grants),
                       BypassPolicyLockoutSafetyCheck=True)
    msg = err(rest_call(server, "PUT", f"/v1/projects/{pid}/keys/{RA}", {"key_id": key}, creds=creds, region=RA),
              400, "KeyAccessDeniedException")
    assert "kms:CreateGrant" in msg and key in msg and f"disk.{RA}.atrest" in msg, msg
    assert ok(rest_call(server, "GET", f"/v1/projects/{pid}", creds=creds))["keys"] == {}

    # A key of another region is not accepted for this one (K10).
    other = server.client(creds=creds, region=RB).create_key()["KeyMetadata"]["Arn"]
    msg = err(rest_call(server, "PUT", f"/v1/projects/{pid}/keys/{RA}", {"key_id": other}, creds=creds, region=RA),
              400, "KeyAccessDeniedException")
    assert "kms:DescribeKey" in msg, msg
    # A region this server does not serve.
    err(rest_call(server, "PUT", f"/v1/projects/{pid}/keys/ap-south-9", {"key_id": key}, creds=creds),
        400, "ValidationException")


def test_projects_without_cmek_use_managed_keys_and_creation_is_idempotent(make_server):
    server = make_server().start()
    creds = new_account(server, A)
    body = {"name": "web", "client_token": "tok-1"}
    p = ok(rest_call(server, "POST", "/v1/projects", body, creds=creds), 201)
    again = ok(rest_call(server, "POST", "/v1/projects", body, creds=creds), 200)
    assert again["id"] == p["id"] and p["cmek"] is False
    err(rest_call(server, "POST", "/v1/projects", {"name": "web2", "client_token": "tok-1"}, creds=creds),
        409, "ConflictException")
    err(rest_call(server, "POST", "/v1/projects", {"name": "web"}, creds=creds), 409, "ConflictException")
    d = ok(rest_call(server, "POST", f"/v1/projects/{p['id']}/disks", {"size": 1 << 20}, creds=creds), 201)
    kms = server.client(creds=creds)
    managed = kms.describe_key(KeyId="alias/atrest/disk")["KeyMetadata"]
    assert d["key_arn"] == managed["Arn"] and managed["KeyManager"] == "AWS", (d, managed)
    # CMEK cannot be turned on later.
    key = kms.create_key()["KeyMetadata"]["Arn"]
    msg = err(rest_call(server, "PUT", f"/v1/projects/{p['id']}/keys/{RA}", {"key_id": key}, creds=creds),
              409, "ConflictException")
    assert "without CMEK" in msg, msg

    # Bad input: typed 4xx, nothing created.
    for path, b, status, code in [
        ("/v1/projects", {}, 400, "ValidationException"),
        ("/v1/projects", {"name": "Bad Name"}, 400, "ValidationException"),
        ("/v1/projects", {"name": "x", "cmek": "yes"}, 400, "SerializationException"),
        ("/v1/projects", {"name": "x", "colour": 1}, 400, "ValidationException"),
        ("/v1/projects", {"name": "x", "revocation": {"policy": "sometimes"}}, 400, "ValidationException"),
        ("/v1/projects", {"name": "x", "client_token": ""}, 400, "ValidationException"),
        ("/v1/projects/prj-0000000000000000/disks", {"size": 4096}, 404, "NotFoundException"),
        (f"/v1/projects/{p['id']}/disks", {"size": "big"}, 400, "SerializationException"),
        (f"/v1/projects/{p['id']}/disks", {}, 400, "ValidationException"),
    ]:
        err(rest_call(server, "POST", path, b, creds=creds), status, code)
    err(rest_call(server, "GET", "/v1/projects/prj-0000000000000000", creds=creds), 404, "NotFoundException")
    err(rest_call(server, "GET", "/v1/projects?limit=0", creds=creds), 400, "ValidationException")
    # Another account sees nothing of it.
    other = new_account(server, "444455556666")
    err(rest_call(server, "GET", f"/v1/projects/{p['id']}", creds=other), 404, "NotFoundException")
    assert ok(rest_call(server, "GET", "/v1/projects", creds=other))["projects"] == []

    # Pagination.
    for i in range(3):
        ok(rest_call(server, "POST", "/v1/projects", {"name": f"page-{i}"}, creds=creds), 201)
    first = ok(rest_call(server, "GET", "/v1/projects?limit=2", creds=creds))
    assert len(first["projects"]) == 2 and first["next_token"], first
    rest = ok(rest_call(server, "GET", f"/v1/projects?limit=2&next_token={first['next_token']}", creds=creds))
    assert len(rest["projects"]) == 2 and "next_token" not in rest, rest
    ids = [x["id"] for x in first["projects"] + rest["projects"]]
    assert len(set(ids)) == 4

    # An empty project is deleted.
    e = ok(rest_call(server, "POST", "/v1/projects", {"name": "empty"}, creds=creds), 201)
    ok(rest_call(server, "DELETE", f"/v1/projects/{e['id']}", creds=creds))
    err(rest_call(server, "GET", f"/v1/projects/{e['id']}", creds=creds), 404, "NotFoundException")


def test_the_stop_policy_pauses_a_project_whose_key_is_disabled(make_server):
    server = make_server(args=("--disk-on-key-loss", "keep", "--disk-key-check-interval", "1")).start()
    creds = new_account(server, A)
    kms = server.client(creds=creds)
    p = project_cmd(server, creds, "create", "strict", "--cmek", "--revocation", "stop", "--stop-after", "1")
    assert p["revocation"] == {"policy": "stop", "after_seconds": 1}, p
    key = kms.create_key()["KeyMetadata"]["Arn"]
    project_cmd(server, creds, "set-key", p["id"], "--key", key)
    pw = server.workdir / "pw"
    pw.write_text("interop-Pass-1\n")
    v = project_cmd(server, creds, "create-db", p["id"], "ledger", "--size", "512M", "--password-file", str(pw))
    assert sql_value(v["port"], "SELECT 1") == "1"
    kms.disable_key(KeyId=key)
    deadline = time.monotonic() + 30
    while not project_cmd(server, creds, "show", p["id"])["paused"]:
        assert time.monotonic() < deadline, "the project was not paused"
        time.sleep(0.5)
    assert psql(v["port"], "SELECT 1", check=False).returncode != 0
    kms.enable_key(KeyId=key)
    assert project_cmd(server, creds, "resume", p["id"])["paused"] is False
    assert sql_value(v["port"], "SELECT 1") == "1"


def test_the_cli_prints_tables_reads_profiles_and_completes(make_server, tmp_path):
    """O1's CLI: human tables by default and `--output json`, a profile file
    so the endpoint and region are not repeated, and shell completions."""
    from conftest import ATREST_BIN, subprocess_env
    import subprocess

    server = make_server().start()
    creds = new_account(server, A)
    project_cmd(server, creds, "create", "alpha")
    project_cmd(server, creds, "create", "beta", "--cmek")
    config = tmp_path / "config"
    config.write_text(f"# atrest profiles\n[default]\nendpoint = http://127.0.0.1:1\n\n"
                      f"[profile test]\nendpoint = {server.url}\nregion = {RA}\n")
    env = subprocess_env(AWS_ACCESS_KEY_ID=creds[0], AWS_SECRET_ACCESS_KEY=creds[1],
                         ATREST_CONFIG_FILE=str(config))
    del env["ATREST_OUTPUT"]

    def run(*args):
        return subprocess.run([str(ATREST_BIN), *args], env=env, capture_output=True, text=True, timeout=60)

    p = run("project", "list", "--profile", "test")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert {"ID", "NAME", "CMEK", "PAUSED"} <= set(lines[0].split()), p.stdout
    assert any(" alpha " in f" {line} " for line in lines) and any("beta" in line for line in lines), p.stdout
    p = run("project", "list", "--profile", "test", "--output", "json")
    assert sorted(x["name"] for x in json.loads(p.stdout)["projects"]) == ["alpha", "beta"], p.stdout
    # The default profile points nowhere: the flag wins over it.
    p = run("project", "list")
    assert p.returncode != 0 and "127.0.0.1:1" in p.stderr, p.stderr
    p = run("project", "list", "--endpoint", server.url, "--output", "json")
    assert p.returncode == 0, p.stderr
    # A misspelt setting is refused, naming it.
    config.write_text("[default]\nendpont = x\n")
    p = run("project", "list")
    assert p.returncode != 0 and "endpont" in p.stderr, p.stderr

    for shell in ("bash", "zsh", "fish"):
        p = run("completions", shell)
        assert p.returncode == 0 and "project" in p.stdout and "create-disk" in p.stdout, (shell, p.stderr)


def test_every_create_takes_an_idempotency_key_and_every_list_pages(make_server):
    server = make_server().start()
    creds = new_account(server, A)
    key = {"Idempotency-Key": "create-disk-1"}
    d1 = ok(rest_call(server, "POST", "/v1/disks", {"size": 1 << 20}, creds=creds, headers=key), 201)
    d2 = ok(rest_call(server, "POST", "/v1/disks", {"size": 1 << 20}, creds=creds, headers=key), 201)
    assert d1 == d2, "a retry with the same key answers the first disk"
    assert len(ok(rest_call(server, "GET", "/v1/disks", creds=creds))["disks"]) == 1
    msg = err(rest_call(server, "POST", "/v1/disks", {"size": 2 << 20}, creds=creds, headers=key),
              409, "ConflictException")
    assert "create-disk-1" in msg, msg
    # Another account's key space is its own.
    other = new_account(server, "444455556666")
    ok(rest_call(server, "POST", "/v1/disks", {"size": 1 << 20}, creds=other, headers=key), 201)
    err(rest_call(server, "POST", "/v1/disks", {"size": 1 << 20}, creds=creds,
                  headers={"Idempotency-Key": "bad key with spaces"}), 400, "ValidationException")
    # A replay does not repeat a secret shown once.
    admin = server.credentials()
    k = {"Idempotency-Key": "ak-1"}
    first = ok(rest_call(server, "POST", f"/v1/accounts/{A}/access-keys", {}, creds=admin, headers=k), 201)
    again = ok(rest_call(server, "POST", f"/v1/accounts/{A}/access-keys", {}, creds=admin, headers=k), 201)
    assert first["secret_access_key"] and "secret_access_key" not in again, again
    assert again["access_key_id"] == first["access_key_id"]

    # Pages of disks, in id order.
    for _ in range(4):
        ok(rest_call(server, "POST", "/v1/disks", {"size": 1 << 20}, creds=creds), 201)
    seen, token = [], None
    while True:
        q = "?limit=2" + (f"&next_token={token}" if token else "")
        page = ok(rest_call(server, "GET", "/v1/disks" + q, creds=creds))
        assert len(page["disks"]) <= 2
        seen += [x["id"] for x in page["disks"]]
        token = page.get("next_token")
        if not token:
            break
    assert len(seen) == 5 and seen == sorted(seen), seen
    err(rest_call(server, "GET", "/v1/disks?limit=5000", creds=creds), 400, "ValidationException")
    doc = ok(rest_call(server, "GET", "/v1/openapi.json", creds=creds))
    params = {p["name"] for p in doc["paths"]["/v1/disks"]["get"]["parameters"]}
    assert {"limit", "next_token"} <= params, params
    params = {p["name"] for p in doc["paths"]["/v1/disks"]["post"]["parameters"]}
    assert "Idempotency-Key" in params, params
