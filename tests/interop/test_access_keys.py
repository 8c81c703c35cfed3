"""The life cycle of access keys, as AWS IAM has it (UpdateAccessKey
Active/Inactive, DeleteAccessKey, ListAccessKeys with last use), through the
CLI and the REST API, and where it takes effect:

* a boto3 loop signing with a user's key every 50 ms: the first call sent
  after `atrest admin access-key deactivate` returns fails with AWS's answer
  for an inactive key (400 UnrecognizedClientException), and the first
  call after `activate` returns succeeds;
* NBD with the key's TLS pre-shared key: nbdinfo connects; after
  deactivation the next connection is refused, after activation it works,
  after deletion it is refused, and the KMS and REST APIs answer as for an
  unknown key (400 and 401);
* who may: a user its own keys, an account's root its account's, not
  another account's; the last active root key of the admin account cannot
  be deleted or deactivated (409);
* last use (time, service, region) is listed at once, and is stored within
  the flush interval (`--access-key-last-used-flush-secs`, testing only):
  it survives a SIGKILL;
* the admin credentials are beside the data dir (mode 0600), no file in the
  data dir holds the admin's secret, an earlier release's
  `<data dir>/admin-credentials` is moved out at start, and
  `--admin-credentials` inside the data dir is refused.

Capabilities: K7 (accounts, users, access keys), D3/D4 (NBD PSK).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time

import pytest
from botocore.exceptions import ClientError

from conftest import (
    atrest_admin,
    atrest_client_cmd,
    expect_error,
    free_port,
    make_tls_files,
    new_account,
    new_user,
    put_user_policy,
    read_credentials,
    rest_call,
)

A = "111122223333"
B = "444455556666"
FLUSH = ("--access-key-last-used-flush-secs", "1")
ALLOW_ALL = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*"}]}
# IAM's "manage your own access keys": a user needs a policy for it, as on
# AWS (the policy variable names the signed-in user).
OWN_KEYS = {"Version": "2012-10-17", "Statement": [{
    "Effect": "Allow",
    "Action": ["iam:CreateAccessKey", "iam:UpdateAccessKey", "iam:DeleteAccessKey", "iam:ListAccessKeys"],
    "Resource": "arn:aws:iam::*:user/${aws:username}",
}]}


def keys_of(server, account: str, creds=None) -> dict[str, dict]:
    out = json.loads(atrest_admin(server, "access-key", "list", "--account", account, env_creds=creds).stdout)
    return {k["access_key_id"]: k for k in out["access_keys"]}


def admin_account(server) -> str:
    return next(a["id"] for a in json.loads(atrest_admin(server, "account", "list").stdout)["accounts"]
                if a["admin"])


class Loop(threading.Thread):
    """Calls GenerateRandom every 50 ms; records (sent, finished, error code
    or None) for each call."""

    def __init__(self, client):
        super().__init__(daemon=True)
        self.client, self.calls, self.halt = client, [], threading.Event()

    def run(self):
        while not self.halt.is_set():
            sent = time.monotonic()
            try:
                self.client.generate_random(NumberOfBytes=8)
                code = None
            except ClientError as e:
                code = (e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"])
            self.calls.append((sent, time.monotonic(), code))
            time.sleep(0.05)

    def sent_after(self, t: float, n: int, timeout: float = 10) -> list:
        """The first `n` calls sent after `t` (waits for them)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            after = [c for c in list(self.calls) if c[0] > t]
            if len(after) >= n:
                return after[:n]
            time.sleep(0.02)
        raise AssertionError(f"fewer than {n} calls after the change")


def test_deactivation_stops_a_running_client_at_once(make_server):
    server = make_server(args=FLUSH).start()
    root_a = new_account(server, A)
    akid, secret = new_user(server, A, "looper", manager=root_a, policy=ALLOW_ALL)
    put_user_policy(server, A, "looper", "own-keys", OWN_KEYS, manager=root_a)
    loop = Loop(server.client(creds=(akid, secret)))
    loop.start()
    try:
        loop.sent_after(0, 3)
        assert all(c[2] is None for c in loop.calls), loop.calls

        # Deactivated by the user itself, through the CLI.
        info = json.loads(atrest_admin(server, "access-key", "deactivate", "--account", A, akid,
                                       env_creds=(akid, secret)).stdout)
        assert info["status"] == "Inactive" and info["active"] is False, info
        done = time.monotonic()
        after = loop.sent_after(done, 3)
        assert all(c[2] == ("UnrecognizedClientException", 400) for c in after), after

        # Activated again by the account's root.
        atrest_admin(server, "access-key", "activate", "--account", A, akid, env_creds=root_a)
        done = time.monotonic()
        after = loop.sent_after(done, 3)
        assert all(c[2] is None for c in after), after
    finally:
        loop.halt.set()
        loop.join(10)

    # The REST API answers an inactive key as it answers an unknown one: 401.
    atrest_admin(server, "access-key", "deactivate", "--account", A, akid, env_creds=root_a)
    r = rest_call(server, "GET", f"/v1/accounts/{A}/access-keys", creds=(akid, secret))
    assert r.status_code == 401 and r.json()["code"] == "UnrecognizedClientException", r.text
    # An inactive key cannot reactivate itself (it cannot sign).
    p = atrest_admin(server, "access-key", "activate", "--account", A, akid, env_creds=(akid, secret),
                     check=False)
    assert p.returncode != 0 and "UnrecognizedClientException" in p.stderr, p.stderr


def test_who_may_change_which_keys(make_server):
    server = make_server().start()
    root_a = new_account(server, A)
    root_b = new_account(server, B)
    alice = new_user(server, A, "alice", manager=root_a)
    bob = new_user(server, A, "bob", manager=root_a)
    # Without a policy a user may not manage even its own keys (as on AWS).
    p = atrest_admin(server, "access-key", "list", "--account", A, env_creds=alice, check=False)
    assert p.returncode != 0 and "AccessDeniedException" in p.stderr and "iam:ListAccessKeys" in p.stderr
    put_user_policy(server, A, "alice", "own-keys", OWN_KEYS, manager=root_a)

    # A user: its own keys only; it lists only its own.
    p = atrest_admin(server, "access-key", "deactivate", "--account", A, bob[0], env_creds=alice, check=False)
    assert p.returncode != 0 and "AccessDeniedException" in p.stderr, p.stderr
    assert set(keys_of(server, A, alice)) == {alice[0]}
    # Another account's root: nothing of account A.
    for action in ("deactivate", "activate", "delete"):
        p = atrest_admin(server, "access-key", action, "--account", A, alice[0], env_creds=root_b, check=False)
        assert p.returncode != 0 and "AccessDeniedException" in p.stderr, (action, p.stderr)
    r = rest_call(server, "DELETE", f"/v1/accounts/{A}/access-keys/{alice[0]}", creds=root_b)
    assert r.status_code == 403 and r.json()["code"] == "AccessDeniedException", r.text
    # An unknown key in one's own account.
    r = rest_call(server, "POST", f"/v1/accounts/{A}/access-keys/AKIANOSUCHKEY0000000/deactivate", creds=root_a)
    assert r.json()["code"] == "NotFoundException", r.text
    # The account's root: any key of its account.
    atrest_admin(server, "access-key", "delete", "--account", A, bob[0], env_creds=root_a)
    assert set(keys_of(server, A)) == {root_a[0], alice[0]}

    # The operator cannot lock itself out: the admin account's last active
    # root key can be neither deleted nor deactivated.
    admin_akid, _ = server.credentials()
    acct = admin_account(server)
    for action in ("delete", "deactivate"):
        p = atrest_admin(server, "access-key", action, "--account", acct, admin_akid, check=False)
        assert p.returncode != 0 and "ConflictException (409)" in p.stderr, p.stderr
        assert "lock the operator out" in p.stderr, p.stderr
    assert keys_of(server, acct)[admin_akid]["status"] == "Active"


@pytest.mark.skipif(not shutil.which("nbdinfo"), reason="libnbd-bin is installed by scripts/test.sh")
def test_nbd_psk_follows_the_key(make_server):
    work = make_server.workdir
    tls = make_tls_files(work / "tls")
    port = free_port()
    server = make_server(args=(
        "--nbd-listen", f"127.0.0.1:{port}",
        "--nbd-tls-cert", str(tls["cert"]), "--nbd-tls-key", str(tls["key"]),
        *FLUSH,
    )).start()
    creds = new_account(server, A)
    disk = json.loads(atrest_client_cmd(server, "disk", "create", "--size", "16M", env_creds=creds).stdout)
    psk = work / "keys.psk"
    atrest_client_cmd(server, "nbd", "psk", "--out", str(psk), env_creds=creds)
    assert psk.read_text().split(":")[0] == creds[0]
    uri = f"nbds://{creds[0]}@127.0.0.1:{port}/{disk['id']}?tls-psk-file={psk}"

    def nbdinfo() -> subprocess.CompletedProcess:
        return subprocess.run(["nbdinfo", "--json", uri], capture_output=True, text=True, timeout=60)

    ok = nbdinfo()
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["exports"][0]["export-size"] == 16 << 20
    last = keys_of(server, A)[creds[0]]["last_used"]
    assert last["service"] == "nbd" and last["region"] == server.regions[0], last

    atrest_admin(server, "access-key", "deactivate", "--account", A, creds[0])
    refused = nbdinfo()
    assert refused.returncode != 0, refused.stdout

    atrest_admin(server, "access-key", "activate", "--account", A, creds[0])
    assert nbdinfo().returncode == 0

    atrest_admin(server, "access-key", "delete", "--account", A, creds[0])
    assert creds[0] not in keys_of(server, A)
    refused = nbdinfo()
    assert refused.returncode != 0, refused.stdout
    # As for an unknown key: 400 on the KMS API, 401 on the REST API.
    expect_error("UnrecognizedClientException", server.client(creds=creds).list_keys)
    r = rest_call(server, "GET", "/v1/disks", creds=creds)
    assert r.status_code == 401 and r.json()["code"] == "UnrecognizedClientException", r.text


def test_last_use_is_listed_and_stored_within_the_flush_interval(make_server):
    server = make_server(args=FLUSH).start()
    root_a = new_account(server, A)
    akid, secret = new_user(server, A, "user", manager=root_a, policy=ALLOW_ALL)
    assert keys_of(server, A)[akid]["last_used"] is None

    before = time.time()
    server.client(creds=(akid, secret), region=server.regions[0]).generate_random(NumberOfBytes=8)
    last = keys_of(server, A)[akid]["last_used"]
    assert last["service"] == "kms" and last["region"] == server.regions[0], last
    assert before - 1 <= last["time"] <= time.time() + 1, last
    # The root's key was last used by the REST API (the CLI, just now).
    assert keys_of(server, A, root_a)[root_a[0]]["last_used"]["service"] == "atrest"

    # Within the flush interval it is in the store: a SIGKILL (no shutdown
    # flush) does not lose it.
    time.sleep(2.5)
    server.kill()
    server.start()
    last_after = keys_of(server, A)[akid]["last_used"]
    assert last_after["service"] == "kms" and abs(last_after["time"] - last["time"]) < 0.01, last_after

    # The table shows status and last use in columns of their own.
    p = atrest_admin(server, "--output", "table", "access-key", "list", "--account", A)
    header = p.stdout.splitlines()[0].split()
    assert {"ACCESS_KEY_ID", "STATUS", "LAST_USED", "LAST_SERVICE", "LAST_REGION"} <= set(header), p.stdout
    assert "Active" in p.stdout and "kms" in p.stdout, p.stdout


def test_admin_credentials_live_beside_the_data_dir(make_server):
    server = make_server().start()
    akid, secret = server.credentials()
    creds = server.credentials_file
    assert creds.parent == server.data_dir.parent and creds.name == server.data_dir.name + ".admin-credentials"
    assert (creds.stat().st_mode & 0o777) == 0o600, oct(creds.stat().st_mode)
    assert str(creds) in server.logs().decode(), "the banner names where the credentials are"
    assert server.stop() == 0

    def holders() -> list[str]:
        return [str(p) for p in server.data_dir.rglob("*")
                if p.is_file() and secret.encode() in p.read_bytes()]

    assert holders() == []
    assert not (server.data_dir / "admin-credentials").exists()

    # An earlier release's data dir: the file inside it is moved out at start.
    shutil.move(creds, server.data_dir / "admin-credentials")
    server.start()
    assert not (server.data_dir / "admin-credentials").exists()
    assert read_credentials(creds) == (akid, secret)
    assert (creds.stat().st_mode & 0o777) == 0o600
    assert f"AWS_SHARED_CREDENTIALS_FILE={creds}" in creds.read_text()
    assert "moved the admin credentials" in server.logs().decode()
    assert server.client().generate_random(NumberOfBytes=8)["Plaintext"]
    assert server.stop() == 0
    assert holders() == []

    # A path inside the data dir is refused, naming the rule.
    rc, out = server.run_until_exit("--admin-credentials", str(server.data_dir / "sub" / "creds"))
    assert rc != 0 and "inside the data dir" in out, out

    # --admin-credentials elsewhere: the first start writes it there.
    other = make_server(name="custom")
    target = make_server.workdir / "elsewhere" / "admin.ini"
    target.parent.mkdir()
    other.start("--admin-credentials", str(target))
    assert not other.credentials_file.exists()
    assert (target.stat().st_mode & 0o777) == 0o600
    assert other.client(creds=read_credentials(target)).generate_random(NumberOfBytes=8)["Plaintext"]
    assert other.stop() == 0
    # A file that atrest did not write is never overwritten.
    third = make_server(name="third")
    foreign = make_server.workdir / "foreign-credentials"
    foreign.write_text("[default]\naws_access_key_id = AKIAOTHER\n")
    rc, out = third.run_until_exit("--admin-credentials", str(foreign))
    assert rc != 0 and "not an atrest admin credentials file" in out, out
    assert foreign.read_text() == "[default]\naws_access_key_id = AKIAOTHER\n"
    assert os.path.exists(foreign)
