"""Every principal against every route (issue 18, K7, K8, D3, D9, O1).

The REST and NBD surface authorizes each principal as the key service
does: identity policies decide (an account's root may do everything in its
account, a user only what a policy allows, an explicit Deny wins), and
where an operation uses an encrypted resource's key, the caller's own
right to that key through the service counts too.

The matrix is driven by the OpenAPI document: a route the test does not
know fails the test, so a new route gets its row. Each cell is asserted:
refused cells answer 403 AccessDeniedException naming the action (and an
explicit deny as such); authorized cells answer anything but a refusal
(a route is driven at a resource that does not exist, so that what it does
is not done: authorization comes before the lookup); another account
never gets a success on this account's resources, and its lists hold none
of them.
"""

from __future__ import annotations

import json
import time

import pytest
from botocore.exceptions import ClientError

from conftest import (
    DB_PASSWORD,
    atrest_client_cmd,
    atrest_run,
    free_port,
    make_tls_files,
    new_account,
    new_user,
    rest_call,
    user_arn,
    write_credentials,
)
from test_nbd import Nbd

A = "111122223333"
B = "444455556666"
REGION = "us-east-1"

EVERYTHING = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
DENIED = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": "*", "Resource": "*"},
    {"Effect": "Deny", "Action": ["disk:*", "db:*", "project:*", "iam:*", "audit:*", "admin:*", "kms:*"],
     "Resource": "*"},
]}

# Well-formed ids of resources that do not exist.
GHOST = {
    "disk": "disk-00000000deadbeef",
    "snapshot": "snap-00000000deadbeef",
    "job": "job-00000000deadbeef",
    "instance": "ghost",
    "backup": "bk-00000000deadbeef",
    "project": "prj-00000000deadbeef",
    "access_key": "AKIA0000000000DEADBE",
    "user": "ghost",
    "policy": "ghost",
}

# A body each route accepts by type (what it would do then is refused or
# fails on a resource that does not exist), for principal `u` at the
# resources `i` (ghosts, or for another account A's own).
BODIES = {
    "disk:CreateDisk": lambda u, i: {"snapshot_id": i["snapshot"]},
    "disk:ResizeDisk": lambda u, i: {"size": 32 << 20},
    "disk:RollbackDisk": lambda u, i: {"snapshot_id": i["snapshot"]},
    "disk:RekeyDisk": lambda u, i: {"reencrypt": True},
    "disk:ConvertDisk": lambda u, i: {"encrypted": False},
    "disk:CreateSnapshot": lambda u, i: {"disk_id": i["disk"]},
    "disk:CopySnapshot": lambda u, i: {"region": REGION},
    "db:CreateInstance": lambda u, i: {"name": f"m-{u}", "key_id": "alias/ghost"},
    "db:CreateReplica": lambda u, i: {},
    "db:ChangeEncryption": lambda u, i: {"action": "enable"},
    "db:SetParameters": lambda u, i: {"parameters": {"work_mem": "8MB"}},
    "db:ResizeInstance": lambda u, i: {"size": 2 << 30},
    "db:SetBackupRetention": lambda u, i: {"days": 7},
    "db:CloneInstance": lambda u, i: {"name": f"c-{u}"},
    "db:RestoreBackup": lambda u, i: {"name": f"r-{u}"},
    "db:CopyBackup": lambda u, i: {"region": REGION},
    "project:CreateProject": lambda u, i: {"name": f"p-{u}"},
    "project:SetKey": lambda u, i: {"key_id": "alias/ghost"},
    "project:CreateDisk": lambda u, i: {"size": 1 << 20},
    "project:CreateInstance": lambda u, i: {"name": f"pi-{u}"},
    "admin:CreateAccount": lambda u, i: {},
    # A user's own key; the root's for a user (a root makes no root keys).
    "iam:CreateAccessKey": lambda u, i: {"user": {"root": "allowed", "admin": "ghost", "other": "allowed"}.get(u, u)},
    "iam:CreateUser": lambda u, i: {"name": f"new-{u}"},
    "iam:PutUserPolicy": lambda u, i: {"document": EVERYTHING},
}

# What another account may do at these routes: make its own.
OWN_CREATES = {"project:CreateProject", "kms:EnsureServiceKey"}

# Actions only an admin account's principals may take.
ADMIN_ONLY = {"admin:CreateAccount", "admin:ListAccounts", "admin:SuspendAccount", "admin:ResumeAccount",
              "admin:ListAccountDisks", "audit:VerifyAudit", "admin:ListNodes",
              "admin:RemoveNode"}
# Actions only an account's root takes (users do not manage users).
ROOT_ONLY = {"iam:CreateAccessKey", "iam:CreateUser", "iam:ListUsers", "iam:PutUserPolicy", "iam:GetUserPolicy", "iam:DeleteUserPolicy"}


def fill(path: str, account: str, ids: dict[str, str]) -> str:
    """The route's path with its parameters: `account`, and `ids` by kind."""
    kind = path.split("/")[2]  # disks, snapshots, jobs, instances, backups, projects, accounts, ...
    values = {
        "account": account,
        "service": "disk",
        "region": REGION,
        "name": ids["instance"],
        "user": ids["user"],
        "policy": ids["policy"],
    }
    values["id"] = {
        "disks": ids["disk"], "snapshots": ids["snapshot"], "jobs": ids["job"], "backups": ids["backup"],
        "projects": ids["project"], "accounts": ids["access_key"],
    }.get(kind, "x")
    for k, v in values.items():
        path = path.replace("{" + k + "}", v)
    assert "{" not in path, path
    return path


def routes(server, creds) -> list[tuple[str, str, str]]:
    """(method, path, action) of every documented route."""
    doc = rest_call(server, "GET", "/v1/openapi.json", creds=creds).json()
    out = []
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method not in ("get", "post", "put", "delete"):
                continue
            action = op.get("x-atrest-action")
            if path == "/v1/openapi.json":
                continue
            assert action, f"{method.upper()} {path} names no action"
            out.append((method.upper(), path, action))
    return out


def call(server, creds, method, path, action, who, ids):
    body = BODIES[action](who, ids) if action in BODIES else ({} if method in ("POST", "PUT") else None)
    return rest_call(server, method, path, body, creds=creds)


def refused(r, action: str, explicit: bool = False) -> bool:
    if r.status_code != 403:
        return False
    j = r.json()
    return (j.get("code") == "AccessDeniedException" and action in j.get("message", "")
            and (not explicit or "explicit deny" in j["message"]))


@pytest.fixture
def world(make_server):
    """A server with NBD (PSK over TLS); account A with its root and four
    users, account B; A's disk, snapshot, project and key K, whose key
    policy denies the user `keydenied` everything."""
    work = make_server.workdir
    tls = make_tls_files(work / "tls")
    port = free_port()
    server = make_server(args=(
        "--nbd-listen", f"127.0.0.1:{port}",
        "--nbd-tls-cert", str(tls["cert"]), "--nbd-tls-key", str(tls["key"]),
    )).start()
    admin = server.credentials()
    root = new_account(server, A)
    other = new_account(server, B)
    users = {
        "nopolicy": new_user(server, A, "nopolicy"),
        "allowed": new_user(server, A, "allowed", policy=EVERYTHING),
        "denied": new_user(server, A, "denied", policy=DENIED),
        "keydenied": new_user(server, A, "keydenied", policy=EVERYTHING),
    }
    kms = server.client(creds=root)
    key_policy = {"Version": "2012-10-17", "Statement": [
        {"Sid": "Enable IAM User Permissions", "Effect": "Allow",
         "Principal": {"AWS": f"arn:aws:iam::{A}:root"}, "Action": "kms:*", "Resource": "*"},
        {"Sid": "Not keydenied", "Effect": "Deny",
         "Principal": {"AWS": user_arn(A, "keydenied")}, "Action": "kms:*", "Resource": "*"},
    ]}
    key = kms.create_key(Policy=json.dumps(key_policy))["KeyMetadata"]["Arn"]

    def ok(r, status=(200, 201)):
        assert r.status_code in status, r.text
        return r.json()

    disk = ok(rest_call(server, "POST", "/v1/disks", {"size": 16 << 20, "key_id": key}, creds=root))
    snap = ok(rest_call(server, "POST", "/v1/snapshots", {"disk_id": disk["id"]}, creds=root))
    project = ok(rest_call(server, "POST", "/v1/projects", {"name": "matrix"}, creds=root))

    class World:
        pass

    w = World()
    w.server, w.port, w.work, w.key = server, port, work, key
    w.principals = {"admin": admin, "root": root, "other": other, **users}
    w.real = {
        "disk": disk["id"], "snapshot": snap["id"], "job": GHOST["job"], "instance": "orders",
        "backup": GHOST["backup"], "project": project["id"], "access_key": users["allowed"][0],
        "user": "allowed", "policy": "main",
    }
    return w


def test_every_route_for_every_principal(world):
    """Every documented route × {admin, A's root, a user with no policy, a
    user allowed everything, a user with an explicit Deny, a user the key
    policy denies, B's root}: 0 unexpected Allows, 0 unexpected refusals."""
    s = world.server
    table = routes(s, world.principals["root"])
    assert len(table) >= 60, len(table)
    actions = {a for _, _, a in table}
    for needed in ("disk:AttachDisk", "disk:DeleteDisk", "db:StopInstance", "db:RestoreBackup",
                   "project:SetKey", "iam:CreateAccessKey", "iam:UpdateAccessKey"):
        assert needed in actions, needed
    unexpected = []
    cells = 0
    for method, path, action in table:
        for who, creds in world.principals.items():
            cells += 1
            ghost_path = fill(path, A, GHOST)
            if who == "other":
                # B's root, at A's real resources and A's account.
                r = call(s, creds, method, fill(path, A, world.real), action, who, world.real)
                account_route = path.startswith("/v1/accounts/")
                if action in ADMIN_ONLY or account_route:
                    ok = refused(r, action)
                elif method != "GET":
                    ok = action in OWN_CREATES or r.status_code >= 400
                elif "{" in path:
                    ok = r.status_code in (403, 404)
                else:
                    ok = r.status_code == 200 and not any(
                        v in r.text for v in (world.real["disk"], world.real["snapshot"], world.real["project"]))
                if not ok:
                    unexpected.append((who, method, path, r.status_code, r.text[:200]))
                continue
            r = call(s, creds, method, ghost_path, action, who, GHOST)
            if who in ("nopolicy", "denied"):
                special = action in ADMIN_ONLY or action in ROOT_ONLY
                ok = refused(r, action, explicit=(who == "denied" and not special))
            elif who == "admin":
                ok = not refused(r, action) and r.status_code < 500
            elif action in ADMIN_ONLY or (who != "root" and action in ROOT_ONLY):
                ok = refused(r, action)
            else:  # root, allowed, keydenied: identity allows; no key in play at a ghost
                ok = r.status_code != 403 and r.status_code < 500
            if not ok:
                unexpected.append((who, method, ghost_path, r.status_code, r.text[:200]))
    assert not unexpected, f"{len(unexpected)} of {cells} cells:\n" + "\n".join(map(str, unexpected))


def denied_by_key(r, key: str) -> bool:
    j = r.json()
    return r.status_code == 403 and j.get("code") == "AccessDeniedException" and key in j.get("message", "")


def test_the_key_decides_as_the_caller(world):
    """A user allowed every action by its identity policy, whom the key's
    policy denies, may not create, snapshot, clone, roll back, re-key,
    re-encrypt, convert or attach under that key (over REST and NBD), nor start, back up
    or restore an instance under it; the account's root may."""
    s, key = world.server, world.key
    kd = world.principals["keydenied"]
    root = world.principals["root"]
    disk, snap = world.real["disk"], world.real["snapshot"]
    cases = [
        ("POST", "/v1/disks", {"size": 1 << 20, "key_id": key}),
        ("POST", "/v1/disks", {"snapshot_id": snap}),
        ("POST", "/v1/snapshots", {"disk_id": disk}),
        ("POST", "/v1/snapshots", {"disk_id": disk, "to_object_store": True}),
        ("POST", f"/v1/disks/{disk}/rollback", {"snapshot_id": snap}),
        ("POST", f"/v1/disks/{disk}/rekey", {"reencrypt": True}),
        ("POST", f"/v1/disks/{disk}/convert", {"encrypted": False}),
        ("POST", f"/v1/disks/{disk}/attach-local", {}),
    ]
    for method, path, body in cases:
        r = rest_call(s, method, path, body, creds=kd)
        assert denied_by_key(r, key), (path, r.status_code, r.text)
    # Nothing was made or changed.
    listed = rest_call(s, "GET", "/v1/disks", creds=root).json()["disks"]
    assert [d["id"] for d in listed] == [disk], listed
    assert rest_call(s, "GET", "/v1/jobs", creds=root).json()["jobs"] == []
    snaps = rest_call(s, "GET", "/v1/snapshots", creds=root).json()["snapshots"]
    assert [x["id"] for x in snaps] == [snap], snaps
    # The CLI says the same.
    p = atrest_client_cmd(s, "disk", "create", "--size", "1M", "--key-id", key, env_creds=kd, check=False)
    assert p.returncode != 0 and "AccessDeniedException" in p.stderr and key in p.stderr, p.stderr
    # The root may (a clone, then the clone's deletion).
    r = rest_call(s, "POST", "/v1/disks", {"snapshot_id": snap}, creds=root)
    assert r.status_code == 201, r.text
    assert rest_call(s, "DELETE", f"/v1/disks/{r.json()['id']}", creds=root).status_code == 200
    # A snapshot the root stored in the object store: the denied user may
    # neither copy it nor restore it.
    stored = rest_call(s, "POST", "/v1/snapshots", {"disk_id": disk, "to_object_store": True}, creds=root).json()
    deadline = time.time() + 60
    while rest_call(s, "GET", f"/v1/snapshots/{stored['id']}", creds=root).json()["state"] != "available":
        assert time.time() < deadline, "the upload does not finish"
        time.sleep(0.2)
    for path, body in ((f"/v1/snapshots/{stored['id']}/copy", {"region": REGION}),
                       ("/v1/disks", {"snapshot_id": stored["id"]})):
        r = rest_call(s, "POST", path, body, creds=kd)
        assert denied_by_key(r, key), (path, r.status_code, r.text)
    assert rest_call(s, "DELETE", f"/v1/snapshots/{stored['id']}", creds=root).status_code == 200

    # NBD: the report's case. The denied user's qemu-io read is refused;
    # the root's works, and reads what the root wrote.
    def nbd_for(creds, name):
        d = world.work / f"psk-{name}"
        d.mkdir()
        f = d / "keys.psk"
        atrest_client_cmd(s, "nbd", "psk", "--out", str(f), env_creds=creds)
        return Nbd(world.port, "psk", psk_file=f, psk_user=creds[0])

    nbd_root = nbd_for(root, "root")
    nbd_root.qemu_io(disk, "write -P 0x5a 0 64k")
    nbd_root.qemu_io(disk, "read -P 0x5a 0 64k")
    p = nbd_for(kd, "keydenied").qemu_io(disk, "read -P 0x5a 0 64k", check=False)
    assert p.returncode != 0, p.stdout
    assert "read 65536/65536" not in p.stdout, p.stdout
    # A user with no policy may not attach either.
    p = nbd_for(world.principals["nopolicy"], "nopolicy").qemu_io(disk, "read 0 4k", check=False)
    assert p.returncode != 0, p.stdout
    # ... while the root's still works.
    nbd_root.qemu_io(disk, "read -P 0x5a 0 64k")

    # An instance under the key: the denied user may not start it, restart
    # it, back it up, or restore its backup; the root may.
    root_file = write_credentials(world.work / "root-a.credentials", *root)

    def db(*args):
        return json.loads(atrest_run("db", "--endpoint", s.url, "--region", REGION,
                                     "--credentials-file", str(root_file), "--output", "json", *args,
                                     timeout=600).stdout)

    pw = world.work / "orders.pw"
    pw.write_text(DB_PASSWORD + "\n")
    inst = db("create", "orders", "--key", key, "--size", "512M", "--password-file", str(pw))
    assert inst["state"] == "running", inst
    for method, path in (("POST", "/v1/instances/orders/restart"), ("POST", "/v1/instances/orders/backups")):
        r = rest_call(s, method, path, {}, creds=kd)
        assert denied_by_key(r, key), (path, r.status_code, r.text)
    backup = db("backup", "orders")["id"]
    r = rest_call(s, "POST", f"/v1/backups/{backup}/restore", {"name": "copy"}, creds=kd)
    assert denied_by_key(r, key), r.text
    r = rest_call(s, "POST", "/v1/instances/orders/stop", {}, creds=kd)
    assert r.status_code == 200, r.text
    r = rest_call(s, "POST", "/v1/instances/orders/start", {}, creds=kd)
    assert denied_by_key(r, key), r.text
    assert db("show", "orders")["state"] == "stopped"
    assert db("start", "orders")["state"] == "running"
    assert [i["name"] for i in db("list")["instances"]] == ["orders"]
    assert [b["id"] for b in db("backups")["backups"]] == [backup]


def test_resource_tags_are_condition_keys(world):
    """A disk's tags are `aws:ResourceTag/<key>` to identity policies, a
    creation's `aws:RequestTag/<key>` and `aws:TagKeys`: a user allowed the
    team's disks only sees, changes and makes those."""
    s = world.server
    root = world.principals["root"]
    blue_only = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "disk:*", "Resource": "*",
         "Condition": {"StringEquals": {"aws:ResourceTag/team": "blue"}}},
        {"Effect": "Allow", "Action": "disk:CreateDisk", "Resource": "*",
         "Condition": {"StringEquals": {"aws:RequestTag/team": "blue"},
                       "ForAllValues:StringEquals": {"aws:TagKeys": ["team", "env"]}}},
    ]}
    user = new_user(s, A, "blueteam", policy=blue_only)

    def make(creds, tags, status=201):
        r = rest_call(s, "POST", "/v1/disks", {"size": 1 << 20, "tags": tags}, creds=creds)
        assert r.status_code == status, r.text
        return r.json()

    blue = make(root, {"team": "blue", "env": "prod"})
    red = make(root, {"team": "red"})
    assert blue["tags"] == {"team": "blue", "env": "prod"}
    r = rest_call(s, "GET", f"/v1/disks/{blue['id']}", creds=user)
    assert r.status_code == 200 and r.json()["tags"]["team"] == "blue", r.text
    for method, path, body in (("GET", f"/v1/disks/{red['id']}", None),
                               ("DELETE", f"/v1/disks/{red['id']}", None),
                               ("POST", f"/v1/disks/{red['id']}/resize", {"size": 2 << 20}),
                               ("POST", "/v1/snapshots", {"disk_id": red["id"]})):
        r = rest_call(s, method, path, body, creds=user)
        assert refused(r, "disk:"), (path, r.status_code, r.text)
        assert red["id"] in r.json()["message"], r.text
    # Creations: the team's tag, and no other keys than team and env.
    mine = make(user, {"team": "blue"})
    assert mine["tags"] == {"team": "blue"}
    for tags in ({"team": "red"}, {}, {"team": "blue", "owner": "eve"}):
        r = rest_call(s, "POST", "/v1/disks", {"size": 1 << 20, "tags": tags}, creds=user)
        assert refused(r, "disk:CreateDisk"), (tags, r.text)
    r = rest_call(s, "DELETE", f"/v1/disks/{mine['id']}", creds=user)
    assert r.status_code == 200, r.text
    # The rules on tags, with a clear refusal.
    for tags, word in (({"aws:team": "x"}, "reserved"), ({"": "x"}, "tag key"),
                       ({"k": "v" * 257}, "value"), ({f"k{i}": "" for i in range(51)}, "at most 50")):
        r = rest_call(s, "POST", "/v1/disks", {"size": 1 << 20, "tags": tags}, creds=root)
        assert r.status_code == 400 and word in r.json()["message"], (tags, r.text)
    r = rest_call(s, "POST", "/v1/disks", {"size": 1 << 20, "tags": {"k": 1}}, creds=root)
    assert r.status_code == 400, r.text
    # The CLI tags too, and shows them.
    out = json.loads(atrest_client_cmd(s, "disk", "create", "--size", "1M", "--tag", "team=blue",
                                       "--tag", "env=", env_creds=root).stdout)
    assert out["tags"] == {"team": "blue", "env": ""}, out


def test_instance_tags_are_condition_keys(world):
    """An instance's tags are condition keys too: a user allowed the blue
    team's instances describes and restarts those, and no other."""
    s = world.server
    root = world.principals["root"]
    policy = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "db:*", "Resource": "*",
         "Condition": {"StringEquals": {"aws:ResourceTag/team": "blue"}}},
        {"Effect": "Allow", "Action": "db:CreateInstance", "Resource": "*",
         "Condition": {"StringEquals": {"aws:RequestTag/team": "blue"}}},
    ]}
    user = new_user(s, A, "dbteam", policy=policy)
    root_file = write_credentials(world.work / "root-tags.credentials", *root)
    pw = world.work / "tags.pw"
    pw.write_text(DB_PASSWORD + "\n")

    def db(*args):
        return json.loads(atrest_run("db", "--endpoint", s.url, "--region", REGION,
                                     "--credentials-file", str(root_file), "--output", "json", *args,
                                     timeout=600).stdout)

    blue = db("create", "blue", "--service-key", "--size", "256M", "--password-file", str(pw), "--tag", "team=blue")
    red = db("create", "red", "--service-key", "--size", "256M", "--password-file", str(pw), "--tag", "team=red")
    assert blue["tags"] == {"team": "blue"} and red["tags"] == {"team": "red"}
    r = rest_call(s, "GET", "/v1/instances/blue", creds=user)
    assert r.status_code == 200 and r.json()["tags"] == {"team": "blue"}, r.text
    # By id as well as by name: the policy sees the instance's tags.
    r = rest_call(s, "GET", f"/v1/instances/{red['id']}", creds=user)
    assert refused(r, "db:DescribeInstance") and "instance/red" in r.json()["message"], r.text
    for method, path in (("GET", "/v1/instances/red"), ("POST", "/v1/instances/red/stop"),
                         ("DELETE", "/v1/instances/red")):
        r = rest_call(s, method, path, {} if method == "POST" else None, creds=user)
        assert refused(r, "db:"), (path, r.status_code, r.text)
    assert db("show", "red")["state"] == "running"
    r = rest_call(s, "POST", "/v1/instances/blue/stop", {}, creds=user)
    assert r.status_code == 200 and r.json()["state"] == "stopped", r.text
    # A creation without the team's tag is refused before anything is made.
    r = rest_call(s, "POST", "/v1/instances", {"name": "green", "service_key": True, "tags": {"team": "red"}},
                  creds=user)
    assert refused(r, "db:CreateInstance"), r.text
    assert sorted(i["name"] for i in db("list")["instances"]) == ["blue", "red"]
    r = rest_call(s, "POST", "/v1/instances", {"name": "bad", "service_key": True, "tags": {"aws:x": "y"}},
                  creds=root)
    assert r.status_code == 400 and "reserved" in r.json()["message"], r.text


def test_project_tags_are_condition_keys(world):
    """A project's tags are condition keys: a user allowed the blue team's
    projects sees and pauses those, creates only blue ones."""
    s = world.server
    root = world.principals["root"]
    policy = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "project:*", "Resource": "*",
         "Condition": {"StringEquals": {"aws:ResourceTag/team": "blue"}}},
        {"Effect": "Allow", "Action": "project:CreateProject", "Resource": "*",
         "Condition": {"StringEquals": {"aws:RequestTag/team": "blue"}}},
    ]}
    user = new_user(s, A, "projteam", policy=policy)
    blue = json.loads(atrest_client_cmd(s, "project", "create", "pblue", "--tag", "team=blue", "--output", "json",
                                        env_creds=root).stdout)
    red = rest_call(s, "POST", "/v1/projects", {"name": "pred", "tags": {"team": "red"}}, creds=root).json()
    assert blue["tags"] == {"team": "blue"} and red["tags"] == {"team": "red"}, (blue, red)
    r = rest_call(s, "GET", f"/v1/projects/{blue['id']}", creds=user)
    assert r.status_code == 200 and r.json()["tags"] == {"team": "blue"}, r.text
    for method, path in (("GET", f"/v1/projects/{red['id']}"), ("POST", f"/v1/projects/{red['id']}/pause"),
                         ("DELETE", f"/v1/projects/{red['id']}")):
        r = rest_call(s, method, path, {} if method == "POST" else None, creds=user)
        assert refused(r, "project:") and red["id"] in r.json()["message"], (path, r.text)
    r = rest_call(s, "POST", f"/v1/projects/{blue['id']}/pause", {}, creds=user)
    assert r.status_code == 200 and r.json()["paused"] is True, r.text
    r = rest_call(s, "POST", "/v1/projects", {"name": "mine", "tags": {"team": "blue"}}, creds=user)
    assert r.status_code == 201, r.text
    r = rest_call(s, "POST", "/v1/projects", {"name": "theirs"}, creds=user)
    assert refused(r, "project:CreateProject"), r.text


def test_nbd_for_every_principal(world):
    """The NBD surface, as every principal with its own access key's PSK:
    the export (A's disk under K) opens for A's root and for the user its
    policy and the key allow; for the user with no policy, the user with
    an explicit Deny, the user K's policy denies, B's root and the admin it
    does not, and nothing of the disk is read."""
    s, disk = world.server, world.real["disk"]
    expect = {"root": True, "allowed": True, "nopolicy": False, "denied": False, "keydenied": False,
              "other": False, "admin": False}
    assert set(expect) == set(world.principals)
    # What the root writes is what an allowed principal reads.
    outcomes = {}
    for who in ["root", *sorted(set(expect) - {"root"})]:
        creds = world.principals[who]
        d = world.work / f"nbd-psk-{who}"
        d.mkdir()
        f = d / "keys.psk"
        atrest_client_cmd(s, "nbd", "psk", "--out", str(f), env_creds=creds)
        nbd = Nbd(world.port, "psk", psk_file=f, psk_user=creds[0])
        if who == "root":
            nbd.qemu_io(disk, "write -P 0x3c 1M 64k")
        p = nbd.qemu_io(disk, "read -P 0x3c 1M 64k", check=False)
        outcomes[who] = p.returncode == 0 and "Pattern verification failed" not in p.stdout
        if not expect[who]:
            assert "read 65536/65536" not in p.stdout, (who, p.stdout)
    assert outcomes == expect, outcomes


def test_multi_region_operations_for_every_principal(make_server):
    """ReplicateKey and UpdatePrimaryRegion (issue 20) for every principal,
    on a fresh multi-Region key per cell, over a server serving two regions:
    the account's root and a user allowed everything succeed (the replica
    exists, the primary moved); a user without a policy, one whose identity
    policy denies kms:*, one the key policy denies, another account and the
    admin are refused with AccessDeniedException (the explicit denies said
    as such) and nothing changes."""
    eu = "eu-west-1"
    server = make_server(regions=(REGION, eu)).start()
    admin = server.credentials()
    root = new_account(server, A)
    other = new_account(server, B)
    principals = {
        "admin": admin,
        "root": root,
        "other": other,
        "nopolicy": new_user(server, A, "nopolicy"),
        "allowed": new_user(server, A, "allowed", policy=EVERYTHING),
        "denied": new_user(server, A, "denied", policy=DENIED),
        "keydenied": new_user(server, A, "keydenied", policy=EVERYTHING),
    }
    key_policy = json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{A}:root"}, "Action": "kms:*", "Resource": "*"},
        {"Effect": "Deny", "Principal": {"AWS": user_arn(A, "keydenied")}, "Action": "kms:*", "Resource": "*"},
    ]})
    owner = server.client(creds=root)
    owner_eu = server.client(region=eu, creds=root)
    cells = 0
    for who, creds in principals.items():
        for op in ("ReplicateKey", "UpdatePrimaryRegion"):
            arn = owner.create_key(MultiRegion=True, Policy=key_policy)["KeyMetadata"]["Arn"]
            if op == "UpdatePrimaryRegion":
                owner.replicate_key(KeyId=arn, ReplicaRegion=eu, Policy=key_policy)
            client = server.client(creds=creds)
            try:
                if op == "ReplicateKey":
                    client.replicate_key(KeyId=arn, ReplicaRegion=eu)
                else:
                    client.update_primary_region(KeyId=arn, PrimaryRegion=eu)
                error = None
            except ClientError as e:
                error = e.response["Error"]
            config = owner.describe_key(KeyId=arn)["KeyMetadata"]["MultiRegionConfiguration"]
            if who in ("root", "allowed"):
                assert error is None, (op, who, error)
                if op == "ReplicateKey":
                    assert [r["Region"] for r in config["ReplicaKeys"]] == [eu], config
                    owner_eu.describe_key(KeyId=arn.replace(REGION, eu))
                else:
                    assert config["MultiRegionKeyType"] == "REPLICA", config
                    assert config["PrimaryKey"]["Region"] == eu, config
            else:
                assert error is not None, (op, who)
                assert error["Code"] == "AccessDeniedException", (op, who, error)
                assert f"kms:{op}" in error["Message"] and arn in error["Message"], (op, who, error)
                if who == "denied":
                    assert "explicit deny in an identity-based policy" in error["Message"], error
                if who == "keydenied":
                    assert "explicit deny in a resource-based policy" in error["Message"], error
                # Nothing changed.
                assert config["MultiRegionKeyType"] == "PRIMARY", config
                assert len(config["ReplicaKeys"]) == (1 if op == "UpdatePrimaryRegion" else 0), config
            cells += 1
    assert cells == len(principals) * 2


def test_asymmetric_key_operations_for_every_principal(world):
    """Issue 20's operations on asymmetric keys (and GenerateDataKeyPair* on
    a symmetric one) × {A's root, a user allowed everything, a user with no
    policy, a user with an explicit Deny, a user the key policy denies, B's
    root}, over boto3: each cell is a success, or AccessDeniedException
    naming the action and the key (as an explicit deny where one applies)."""
    s = world.server
    root_kms = s.client(creds=world.principals["root"])
    key_policy = {"Version": "2012-10-17", "Statement": [
        {"Sid": "Enable IAM User Permissions", "Effect": "Allow",
         "Principal": {"AWS": f"arn:aws:iam::{A}:root"}, "Action": "kms:*", "Resource": "*"},
        {"Sid": "Not keydenied", "Effect": "Deny",
         "Principal": {"AWS": user_arn(A, "keydenied")}, "Action": "kms:*", "Resource": "*"},
    ]}

    def key(**kw):
        return root_kms.create_key(Policy=json.dumps(key_policy), **kw)["KeyMetadata"]["Arn"]

    sign = key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")
    agree = key(KeySpec="ECC_NIST_P384", KeyUsage="KEY_AGREEMENT")
    rsa = key(KeySpec="RSA_2048", KeyUsage="ENCRYPT_DECRYPT")
    sym = key()
    sig = root_kms.sign(KeyId=sign, Message=b"m", SigningAlgorithm="ECDSA_SHA_256")["Signature"]
    peer = root_kms.get_public_key(KeyId=agree)["PublicKey"]
    ct = root_kms.encrypt(KeyId=rsa, Plaintext=b"p", EncryptionAlgorithm="RSAES_OAEP_SHA_256")["CiphertextBlob"]
    cells = [
        ("Sign", sign, "sign", dict(KeyId=sign, Message=b"m", SigningAlgorithm="ECDSA_SHA_256")),
        ("Verify", sign, "verify", dict(KeyId=sign, Message=b"m", Signature=sig, SigningAlgorithm="ECDSA_SHA_256")),
        ("GetPublicKey", sign, "get_public_key", dict(KeyId=sign)),
        ("DeriveSharedSecret", agree, "derive_shared_secret",
         dict(KeyId=agree, KeyAgreementAlgorithm="ECDH", PublicKey=peer)),
        ("Encrypt", rsa, "encrypt", dict(KeyId=rsa, Plaintext=b"q", EncryptionAlgorithm="RSAES_OAEP_SHA_1")),
        ("Decrypt", rsa, "decrypt", dict(KeyId=rsa, CiphertextBlob=ct, EncryptionAlgorithm="RSAES_OAEP_SHA_256")),
        ("GenerateDataKeyPair", sym, "generate_data_key_pair", dict(KeyId=sym, KeyPairSpec="ECC_NIST_P256")),
        ("GenerateDataKeyPairWithoutPlaintext", sym, "generate_data_key_pair_without_plaintext",
         dict(KeyId=sym, KeyPairSpec="ECC_NIST_P256")),
    ]
    unexpected = []
    for who in ("root", "allowed", "nopolicy", "denied", "keydenied", "other"):
        client = s.client(creds=world.principals[who])
        for action, key_arn, method, kw in cells:
            try:
                out = getattr(client, method)(**kw)
                ok = who in ("root", "allowed") and out["KeyId"] == key_arn
            except ClientError as e:
                err = e.response["Error"]
                msg = err.get("Message", "")
                ok = (who not in ("root", "allowed") and err["Code"] == "AccessDeniedException"
                      and f"kms:{action}" in msg and key_arn in msg
                      and (who not in ("denied", "keydenied") or "explicit deny" in msg))
            if not ok:
                unexpected.append((who, action))
    assert not unexpected, unexpected
