"""Key policies, users and identity policies through boto3 and the
`atrest admin user ...` CLI, with AWS's authorization rules:

* same account: a user whose identity policy allows an action may use a key
  whose policy allows the account; a user named directly by a key policy
  needs no identity policy; a user with neither is refused in AWS's words
  ("... because no identity-based policy allows the kms:Encrypt action", or
  "no resource-based policy" when the key policy allows nothing);
* an explicit Deny wins, in the key policy and in an identity policy, even
  over a key policy that names the user;
* another account needs both: the key policy (naming the account, a user of
  it, or anyone with a kms:CallerAccount condition) and an identity policy of
  the caller (an account's root has its identity side implicitly);
* identity policies can be read back, replaced and deleted, and take effect
  at once; an account's root manages its own users and their access keys
  (created, or imported from an existing pair) but cannot create root keys
  or touch another account;
* the lockout safety check of PutKeyPolicy and CreateKey (and its bypass,
  after which the root is locked out as AWS warns), malformed documents
  refused with a message naming the statement and member;
* a CMEK-style key policy with kms:EncryptionContext:<k>,
  kms:EncryptionContextKeys (ForAllValues), kms:RequestAlias and
  aws:PrincipalArn conditions enforced on every data-plane call.

Capabilities: K7 policies and users (also O1 API, K1 keys).
"""

from __future__ import annotations

import json

import pytest

from conftest import (
    REGION,
    atrest_admin,
    expect_denied,
    expect_error,
    new_account,
    new_user,
    policy_doc,
    put_user_policy,
    root_arn,
    user_arn,
)

A = "111122223333"
B = "444455556666"
C = "777788889999"


def allow(principal, actions, resource="*", **extra) -> dict:
    st = {"Effect": "Allow", "Principal": principal, "Action": actions, "Resource": resource}
    st.update(extra)
    return st


def identity(*statements: dict) -> dict:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def key_arns_of(account: str) -> str:
    return f"arn:aws:kms:{REGION}:{account}:key/*"


def test_same_account_identity_and_key_policies(server):
    root_a = new_account(server, A)
    ra = server.client(creds=root_a)
    k_default = ra.create_key(Description="default policy")["KeyMetadata"]
    k_other = ra.create_key(Description="default policy too")["KeyMetadata"]
    k_bob = ra.create_key(
        Description="names bob",
        Policy=policy_doc(
            allow({"AWS": root_arn(A)}, "kms:*"),
            allow({"AWS": user_arn(A, "bob")}, ["kms:Encrypt", "kms:Decrypt", "kms:DescribeKey"]),
        ),
    )["KeyMetadata"]
    k_strict = ra.create_key(
        Description="root may only manage the policy",
        Policy=policy_doc(allow({"AWS": root_arn(A)}, ["kms:PutKeyPolicy", "kms:GetKeyPolicy", "kms:DescribeKey"])),
    )["KeyMetadata"]
    # The default key policy is AWS's: the account root may do kms:*.
    default_policy = json.loads(ra.get_key_policy(KeyId=k_default["KeyId"], PolicyName="default")["Policy"])
    stmts = default_policy["Statement"]
    assert len(stmts) == 1 and stmts[0]["Effect"] == "Allow", default_policy
    assert stmts[0]["Principal"] == {"AWS": root_arn(A)} and stmts[0]["Action"] in ("kms:*", ["kms:*"])
    assert ra.list_key_policies(KeyId=k_default["KeyId"])["PolicyNames"] == ["default"]
    expect_error("NotFoundException", ra.get_key_policy, KeyId=k_default["KeyId"], PolicyName="other")

    # The account's root manages its own users (the admin is not needed).
    alice = new_user(server, A, "alice", manager=root_a, policy=identity(
        {"Effect": "Allow", "Action": ["kms:Encrypt", "kms:Decrypt", "kms:DescribeKey"],
         "Resource": k_default["Arn"]},
    ))
    bob = new_user(server, A, "bob", manager=root_a)
    carol = new_user(server, A, "carol", manager=root_a)
    dave = new_user(server, A, "dave", manager=root_a, policy=identity(
        {"Effect": "Allow", "Action": "kms:*", "Resource": key_arns_of(A)},
    ))
    users = json.loads(atrest_admin(server, "user", "list", "--account", A, env_creds=root_a).stdout)["users"]
    assert {u["name"]: u["policies"] for u in users} == {
        "alice": ["main"], "bob": [], "carol": [], "dave": ["main"]}
    ca, cb, cc, cd = (server.client(creds=c) for c in (alice, bob, carol, dave))

    # Identity policy only (key policy allows the account): allowed, and only
    # on the key its Resource names.
    blob = ca.encrypt(KeyId=k_default["KeyId"], Plaintext=b"alice")["CiphertextBlob"]
    assert ca.decrypt(CiphertextBlob=blob)["Plaintext"] == b"alice"
    assert ca.describe_key(KeyId=k_default["Arn"])["KeyMetadata"]["KeyId"] == k_default["KeyId"]
    expect_denied(ca.encrypt, KeyId=k_other["KeyId"], Plaintext=b"x",
                  principal=user_arn(A, "alice"), op="Encrypt", key_arn=k_other["Arn"], why="no-identity")
    expect_denied(ca.generate_data_key, KeyId=k_default["KeyId"], KeySpec="AES_256",
                  principal=user_arn(A, "alice"), op="GenerateDataKey", key_arn=k_default["Arn"], why="no-identity")
    # ... but an identity policy alone is not enough when the key policy
    # allows nothing to the account.
    expect_denied(cd.encrypt, KeyId=k_strict["KeyId"], Plaintext=b"x",
                  principal=user_arn(A, "dave"), op="Encrypt", key_arn=k_strict["Arn"], why="no-resource")

    # Key policy naming the user directly: allowed without an identity policy.
    blob_b = cb.encrypt(KeyId=k_bob["KeyId"], Plaintext=b"bob")["CiphertextBlob"]
    assert cb.decrypt(CiphertextBlob=blob_b)["Plaintext"] == b"bob"
    expect_denied(cb.generate_data_key, KeyId=k_bob["KeyId"], KeySpec="AES_256",
                  principal=user_arn(A, "bob"), op="GenerateDataKey", key_arn=k_bob["Arn"], why="no-identity")
    expect_denied(cb.encrypt, KeyId=k_default["KeyId"], Plaintext=b"x",
                  principal=user_arn(A, "bob"), op="Encrypt", key_arn=k_default["Arn"], why="no-identity")

    # Nothing at all: refused, in AWS's words, for every kind of call.
    for kid, arn, why in ((k_default["KeyId"], k_default["Arn"], "no-identity"),
                          (k_strict["KeyId"], k_strict["Arn"], "no-resource")):
        expect_denied(cc.encrypt, KeyId=kid, Plaintext=b"x",
                      principal=user_arn(A, "carol"), op="Encrypt", key_arn=arn, why=why)
        # (k_strict's policy gives the account DescribeKey, so only an
        # identity policy is missing for that one.)
        expect_denied(cc.describe_key, KeyId=kid,
                      principal=user_arn(A, "carol"), op="DescribeKey", key_arn=arn, why="no-identity")
    expect_denied(cc.decrypt, CiphertextBlob=blob,
                  principal=user_arn(A, "carol"), op="Decrypt", key_arn=k_default["Arn"], why="no-identity")
    expect_denied(cc.disable_key, KeyId=k_default["KeyId"],
                  principal=user_arn(A, "carol"), op="DisableKey", key_arn=k_default["Arn"], why="no-identity")
    expect_error("AccessDeniedException", cc.create_key)
    expect_error("AccessDeniedException", cc.list_keys)

    # Explicit Deny in the key policy wins over an Allow naming the user.
    k_deny = ra.create_key(Policy=policy_doc(
        allow({"AWS": root_arn(A)}, "kms:*"),
        allow({"AWS": user_arn(A, "bob")}, "kms:*"),
        {"Effect": "Deny", "Principal": {"AWS": user_arn(A, "bob")}, "Action": "kms:Decrypt", "Resource": "*"},
    ))["KeyMetadata"]
    blob_d = cb.encrypt(KeyId=k_deny["KeyId"], Plaintext=b"deny")["CiphertextBlob"]
    expect_denied(cb.decrypt, CiphertextBlob=blob_d,
                  principal=user_arn(A, "bob"), op="Decrypt", key_arn=k_deny["Arn"], why="deny-resource")
    assert ra.decrypt(CiphertextBlob=blob_d)["Plaintext"] == b"deny"  # the Deny names only bob

    # Explicit Deny in an identity policy wins, even over a key policy that
    # names the user directly.
    k_dave = ra.create_key(Policy=policy_doc(
        allow({"AWS": root_arn(A)}, "kms:*"),
        allow({"AWS": user_arn(A, "dave")}, "kms:*"),
    ))["KeyMetadata"]
    put_user_policy(server, A, "dave", "no-decrypt", identity(
        {"Effect": "Deny", "Action": "kms:Decrypt", "Resource": "*"}), manager=root_a)
    got = json.loads(atrest_admin(server, "user", "get-policy", "--account", A, "--user", "dave",
                                  "--name", "no-decrypt", env_creds=root_a).stdout)
    assert json.loads(got["document"])["Statement"][0]["Effect"] == "Deny"
    blob_dd = cd.encrypt(KeyId=k_dave["KeyId"], Plaintext=b"dave")["CiphertextBlob"]
    blob_dk = cd.encrypt(KeyId=k_default["KeyId"], Plaintext=b"dave")["CiphertextBlob"]
    expect_denied(cd.decrypt, CiphertextBlob=blob_dd,
                  principal=user_arn(A, "dave"), op="Decrypt", key_arn=k_dave["Arn"], why="deny-identity")
    expect_denied(cd.decrypt, CiphertextBlob=blob_dk,
                  principal=user_arn(A, "dave"), op="Decrypt", key_arn=k_default["Arn"], why="deny-identity")

    # Changes take effect at once: without the Deny dave decrypts; without
    # her policy alice is refused again.
    atrest_admin(server, "user", "delete-policy", "--account", A, "--user", "dave", "--name", "no-decrypt",
                 env_creds=root_a)
    assert cd.decrypt(CiphertextBlob=blob_dd)["Plaintext"] == b"dave"
    assert cd.decrypt(CiphertextBlob=blob_dk)["Plaintext"] == b"dave"
    atrest_admin(server, "user", "delete-policy", "--account", A, "--user", "alice", "--name", "main",
                 env_creds=root_a)
    expect_denied(ca.decrypt, CiphertextBlob=blob,
                  principal=user_arn(A, "alice"), op="Decrypt", key_arn=k_default["Arn"], why="no-identity")
    p = atrest_admin(server, "user", "get-policy", "--account", A, "--user", "alice", "--name", "main",
                     env_creds=root_a, check=False)
    assert p.returncode != 0 and "NotFoundException" in p.stderr, p.stderr

    # An identity policy allowing CreateKey lets a user create keys (whose
    # default policy names the account).
    put_user_policy(server, A, "carol", "create", identity(
        {"Effect": "Allow", "Action": ["kms:CreateKey", "kms:DescribeKey"], "Resource": "*"}), manager=root_a)
    mine = cc.create_key(Description="by carol")["KeyMetadata"]
    assert mine["AWSAccountId"] == A
    assert cc.describe_key(KeyId=mine["KeyId"])["KeyMetadata"]["Description"] == "by carol"


def test_who_may_manage_users_and_access_keys(server):
    root_a = new_account(server, A)
    root_b = new_account(server, B)
    new_user(server, A, "alice", manager=root_a)
    # A root creates keys for its own users, not root keys, and nothing in
    # another account.
    p = atrest_admin(server, "access-key", "create", "--account", A, env_creds=root_a, check=False)
    assert p.returncode != 0 and "AccessDeniedException" in p.stderr, p.stderr
    for args in (("user", "create", "--account", B, "--name", "mallory"),
                 ("user", "list", "--account", B),
                 ("access-key", "create", "--account", B, "--user", "alice"),
                 ("account", "suspend", B)):
        p = atrest_admin(server, *args, env_creds=root_a, check=False)
        assert p.returncode != 0 and "AccessDeniedException" in p.stderr, (args, p.stderr)
    # A user cannot manage users, not even of its own account.
    alice = new_user(server, A, "alice2", manager=root_a)
    p = atrest_admin(server, "user", "create", "--account", A, "--name", "eve", env_creds=alice, check=False)
    assert p.returncode != 0 and "AccessDeniedException" in p.stderr, p.stderr
    p = atrest_admin(server, "access-key", "create", "--account", A, "--user", "alice", env_creds=alice,
                     check=False)
    assert p.returncode != 0 and "AccessDeniedException" in p.stderr, p.stderr
    names = {u["name"] for u in json.loads(atrest_admin(server, "user", "list", "--account", A).stdout)["users"]}
    assert names == {"alice", "alice2"}
    assert json.loads(atrest_admin(server, "user", "list", "--account", B, env_creds=root_b).stdout)["users"] == []
    # Duplicate users and unknown users are refused.
    p = atrest_admin(server, "user", "create", "--account", A, "--name", "alice", env_creds=root_a, check=False)
    assert p.returncode != 0 and "AlreadyExistsException" in p.stderr, p.stderr
    p = atrest_admin(server, "access-key", "create", "--account", A, "--user", "nobody", env_creds=root_a,
                     check=False)
    assert p.returncode != 0 and "NotFoundException" in p.stderr, p.stderr
    # Existing key pairs can be imported for a user, by an admin or by the
    # account's root; they act as that user.
    secret_file = server.workdir / "user-secret.txt"
    secret_file.write_text("wJalrXUtnFEMI/K7MDENG+bPxRfiCYUSEREXAMPLE\n")
    out = json.loads(atrest_admin(server, "access-key", "import", "--account", A, "--user", "alice",
                                  "--access-key-id", "AKIAUSERIMPORTEXAMPL",
                                  "--secret-access-key-file", str(secret_file)).stdout)
    assert out["user"] == "alice" and out["access_key_id"] == "AKIAUSERIMPORTEXAMPL"
    atrest_admin(server, "access-key", "import", "--account", A, "--user", "alice2",
                 "--access-key-id", "AKIAUSERIMPORTEXAMP2", env_creds=root_a,
                 stdin="je7MtGbClwBF/2Zp9Utk/h3yCo8nvbUSEREXAMPLE\n")
    p = atrest_admin(server, "access-key", "import", "--account", A, "--access-key-id", "AKIAROOTIMPORTEXAMPL",
                     env_creds=root_a, stdin="je7MtGbClwBF/2Zp9Utk/h3yCo8nvbROOTEXAMPLE\n", check=False)
    assert p.returncode != 0 and "AccessDeniedException" in p.stderr, p.stderr
    ra = server.client(creds=root_a)
    key = ra.create_key()["KeyMetadata"]
    for akid, secret, user in (("AKIAUSERIMPORTEXAMPL", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYUSEREXAMPLE", "alice"),
                               ("AKIAUSERIMPORTEXAMP2", "je7MtGbClwBF/2Zp9Utk/h3yCo8nvbUSEREXAMPLE", "alice2")):
        expect_denied(server.client(creds=(akid, secret)).encrypt, KeyId=key["KeyId"], Plaintext=b"x",
                      principal=user_arn(A, user), op="Encrypt", key_arn=key["Arn"], why="no-identity")
    # An identity policy that is malformed is refused, naming where.
    p = put_user_policy(server, A, "alice", "bad", identity(
        {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "kms:*", "Resource": "*"}),
        manager=root_a, check=False)
    assert p.returncode != 0 and "MalformedPolicyDocumentException" in p.stderr and "Statement[0]" in p.stderr, \
        p.stderr


def test_cross_account(server):
    root_a = new_account(server, A)
    root_b = new_account(server, B)
    root_c = new_account(server, C)
    ra, rb, rc = (server.client(creds=c) for c in (root_a, root_b, root_c))
    may_use_a_keys = identity({"Effect": "Allow", "Action": ["kms:Encrypt", "kms:Decrypt", "kms:DescribeKey"],
                               "Resource": key_arns_of(A)})
    erin = new_user(server, B, "erin", policy=may_use_a_keys)
    frank = new_user(server, B, "frank")
    gina = new_user(server, B, "gina", policy=may_use_a_keys)
    cuser = new_user(server, C, "carl", policy=identity({"Effect": "Allow", "Action": "kms:*", "Resource": "*"}))
    ce, cf, cg, cc = (server.client(creds=c) for c in (erin, frank, gina, cuser))

    crypto = ["kms:Encrypt", "kms:Decrypt", "kms:DescribeKey"]
    k_shared = ra.create_key(Policy=policy_doc(
        allow({"AWS": root_arn(A)}, "kms:*"), allow({"AWS": root_arn(B)}, crypto)))["KeyMetadata"]
    k_private = ra.create_key()["KeyMetadata"]
    k_gina = ra.create_key(Policy=policy_doc(
        allow({"AWS": root_arn(A)}, "kms:*"), allow({"AWS": user_arn(B, "gina")}, crypto)))["KeyMetadata"]
    k_caller = ra.create_key(Policy=policy_doc(
        allow({"AWS": root_arn(A)}, "kms:*"),
        allow({"AWS": "*"}, crypto, Condition={"StringEquals": {"kms:CallerAccount": B}})))["KeyMetadata"]

    # Key policy (the account) + identity policy: allowed, by key ARN.
    blob = ce.encrypt(KeyId=k_shared["Arn"], Plaintext=b"from B")["CiphertextBlob"]
    assert ce.decrypt(CiphertextBlob=blob)["Plaintext"] == b"from B"
    assert ra.decrypt(CiphertextBlob=blob)["Plaintext"] == b"from B"
    assert ce.describe_key(KeyId=k_shared["Arn"])["KeyMetadata"]["AWSAccountId"] == A
    # The other account's root has its identity side implicitly.
    assert rb.decrypt(CiphertextBlob=blob)["Plaintext"] == b"from B"
    # Without an identity policy: refused.
    expect_denied(cf.encrypt, KeyId=k_shared["Arn"], Plaintext=b"x",
                  principal=user_arn(B, "frank"), op="Encrypt", key_arn=k_shared["Arn"], why="no-identity")
    expect_denied(cf.decrypt, CiphertextBlob=blob,
                  principal=user_arn(B, "frank"), op="Decrypt", key_arn=k_shared["Arn"], why="no-identity")
    # Without the key policy: refused, identity policy or not, root or not.
    expect_denied(ce.encrypt, KeyId=k_private["Arn"], Plaintext=b"x",
                  principal=user_arn(B, "erin"), op="Encrypt", key_arn=k_private["Arn"], why="no-resource")
    expect_denied(rb.encrypt, KeyId=k_private["Arn"], Plaintext=b"x",
                  principal=root_arn(B), op="Encrypt", key_arn=k_private["Arn"], why="no-resource")
    expect_denied(cc.encrypt, KeyId=k_shared["Arn"], Plaintext=b"x",
                  principal=user_arn(C, "carl"), op="Encrypt", key_arn=k_shared["Arn"], why="no-resource")
    # Management actions the key policy does not give the other account.
    expect_denied(ce.disable_key, KeyId=k_shared["Arn"],
                  principal=user_arn(B, "erin"), op="DisableKey", key_arn=k_shared["Arn"], why="no-resource")

    # Key policy naming one user of the other account: that user (with an
    # identity policy) only.
    blob_g = cg.encrypt(KeyId=k_gina["Arn"], Plaintext=b"gina")["CiphertextBlob"]
    assert cg.decrypt(CiphertextBlob=blob_g)["Plaintext"] == b"gina"
    expect_denied(ce.encrypt, KeyId=k_gina["Arn"], Plaintext=b"x",
                  principal=user_arn(B, "erin"), op="Encrypt", key_arn=k_gina["Arn"], why="no-resource")
    expect_denied(rb.encrypt, KeyId=k_gina["Arn"], Plaintext=b"x",
                  principal=root_arn(B), op="Encrypt", key_arn=k_gina["Arn"], why="no-resource")
    atrest_admin(server, "user", "delete-policy", "--account", B, "--user", "gina", "--name", "main",
                 env_creds=root_b)
    expect_denied(cg.decrypt, CiphertextBlob=blob_g,
                  principal=user_arn(B, "gina"), op="Decrypt", key_arn=k_gina["Arn"], why="no-identity")

    # "Principal": "*" with a kms:CallerAccount condition: account B only.
    blob_c = rb.encrypt(KeyId=k_caller["Arn"], Plaintext=b"caller")["CiphertextBlob"]
    assert ce.decrypt(CiphertextBlob=blob_c)["Plaintext"] == b"caller"
    expect_denied(cf.decrypt, CiphertextBlob=blob_c,
                  principal=user_arn(B, "frank"), op="Decrypt", key_arn=k_caller["Arn"], why="no-identity")
    expect_denied(rc.encrypt, KeyId=k_caller["Arn"], Plaintext=b"x",
                  principal=root_arn(C), op="Encrypt", key_arn=k_caller["Arn"], why="no-resource")
    expect_denied(cc.decrypt, CiphertextBlob=blob_c,
                  principal=user_arn(C, "carl"), op="Decrypt", key_arn=k_caller["Arn"], why="no-resource")


def test_lockout_safety_check_bypass_and_malformed_policies(server):
    root_a = new_account(server, A)
    ra = server.client(creds=root_a)
    bob = new_user(server, A, "bob", manager=root_a)
    admin_like = new_user(server, A, "keyadmin", manager=root_a, policy=identity(
        {"Effect": "Allow", "Action": "kms:*", "Resource": "*"}))
    cb, cadm = server.client(creds=bob), server.client(creds=admin_like)
    key = ra.create_key()["KeyMetadata"]
    before = ra.get_key_policy(KeyId=key["KeyId"], PolicyName="default")["Policy"]
    only_bob = policy_doc(allow({"AWS": user_arn(A, "bob")}, ["kms:Encrypt", "kms:DescribeKey"]))
    lockout = "The new key policy will not allow you to update the key policy in the future."

    # PutKeyPolicy and CreateKey refuse a policy that locks the caller out.
    r = expect_error("MalformedPolicyDocumentException", ra.put_key_policy,
                     KeyId=key["KeyId"], PolicyName="default", Policy=only_bob)
    assert r["Error"]["Message"] == lockout
    assert ra.get_key_policy(KeyId=key["KeyId"], PolicyName="default")["Policy"] == before
    n_keys = len(ra.list_keys()["Keys"])
    r = expect_error("MalformedPolicyDocumentException", ra.create_key, Policy=only_bob)
    assert r["Error"]["Message"] == lockout
    assert len(ra.list_keys()["Keys"]) == n_keys
    # A user allowed by identity policy passes the check with a policy that
    # names only the account, not with one that names only bob.
    account_only = policy_doc(allow({"AWS": root_arn(A)}, "kms:*"))
    cadm.put_key_policy(KeyId=key["KeyId"], PolicyName="default", Policy=account_only)
    r = expect_error("MalformedPolicyDocumentException", cadm.put_key_policy,
                     KeyId=key["KeyId"], PolicyName="default", Policy=only_bob)
    assert r["Error"]["Message"] == lockout

    # With the bypass the policy is set, and locks the root out as AWS warns.
    ra.put_key_policy(KeyId=key["KeyId"], PolicyName="default", Policy=only_bob,
                      BypassPolicyLockoutSafetyCheck=True)
    blob = cb.encrypt(KeyId=key["KeyId"], Plaintext=b"bob only")["CiphertextBlob"]
    assert cb.describe_key(KeyId=key["KeyId"])["KeyMetadata"]["KeyId"] == key["KeyId"]
    expect_denied(ra.get_key_policy, KeyId=key["KeyId"], PolicyName="default",
                  principal=root_arn(A), op="GetKeyPolicy", key_arn=key["Arn"], why="no-resource")
    expect_denied(ra.put_key_policy, KeyId=key["KeyId"], PolicyName="default", Policy=account_only,
                  principal=root_arn(A), op="PutKeyPolicy", key_arn=key["Arn"], why="no-resource")
    expect_denied(ra.decrypt, CiphertextBlob=blob,
                  principal=root_arn(A), op="Decrypt", key_arn=key["Arn"], why="no-resource")
    expect_denied(cb.decrypt, CiphertextBlob=blob,
                  principal=user_arn(A, "bob"), op="Decrypt", key_arn=key["Arn"], why="no-resource")
    locked = ra.create_key(Policy=only_bob, BypassPolicyLockoutSafetyCheck=True)["KeyMetadata"]
    assert len(ra.list_keys()["Keys"]) == n_keys + 1
    expect_denied(ra.describe_key, KeyId=locked["KeyId"],
                  principal=root_arn(A), op="DescribeKey", key_arn=locked["Arn"], why="no-resource")
    assert cb.describe_key(KeyId=locked["Arn"])["KeyMetadata"]["KeyId"] == locked["KeyId"]

    # Malformed documents: refused, naming the statement and the member.
    fresh = ra.create_key()["KeyMetadata"]
    good = allow({"AWS": root_arn(A)}, "kms:*")
    cases = [
        (policy_doc(good, {"Principal": {"AWS": "*"}, "Action": "kms:*", "Resource": "*"}),
         ["Statement[1]", "Effect"]),
        (policy_doc(good, allow({"AWS": "*"}, "kms:*", Condition={"StringEqualz": {"kms:CallerAccount": A}})),
         ["Statement[1]", "StringEqualz"]),
        (policy_doc({"Effect": "Allow", "Principal": {"AWS": root_arn(A)}, "Actions": "kms:*", "Resource": "*"}),
         ["Statement[0]", "Actions"]),
        (policy_doc(good, {"Effect": "Allow", "Action": "kms:*", "Resource": "*"}),
         ["Statement[1]", "Principal"]),
        (policy_doc(good, {"Effect": "Perhaps", "Principal": {"AWS": "*"}, "Action": "kms:*", "Resource": "*"}),
         ["Statement[1]", "Effect"]),
        ('{"Version": "2012-10-17", "Statement": [', ["JSON"]),
    ]
    for doc, words in cases:
        for call in (lambda d: ra.put_key_policy(KeyId=fresh["KeyId"], PolicyName="default", Policy=d),
                     lambda d: ra.create_key(Policy=d)):
            r = expect_error("MalformedPolicyDocumentException", call, doc)
            msg = r["Error"]["Message"]
            assert all(w in msg for w in words), (doc, msg)
            assert "will not allow you" not in msg
    assert len(ra.list_keys()["Keys"]) == n_keys + 2
    assert json.loads(ra.get_key_policy(KeyId=fresh["KeyId"], PolicyName="default")["Policy"])["Statement"][0][
        "Principal"] == {"AWS": root_arn(A)}
    # A policy with a name other than "default" does not exist.
    expect_error("NotFoundException", ra.put_key_policy, KeyId=fresh["KeyId"], PolicyName="custom",
                 Policy=account_only)


def test_cmek_style_key_policy_conditions(server):
    root_a = new_account(server, A)
    ra = server.client(creds=root_a)
    app = server.client(creds=new_user(server, A, "app", manager=root_a))
    aliased = server.client(creds=new_user(server, A, "aliasuser", manager=root_a))
    reader = server.client(creds=new_user(server, A, "reader-1", manager=root_a))
    writer = server.client(creds=new_user(server, A, "writer", manager=root_a))
    key_admin_actions = ["kms:Create*", "kms:Describe*", "kms:Enable*", "kms:List*", "kms:Put*", "kms:Update*",
                         "kms:Revoke*", "kms:Disable*", "kms:Get*", "kms:Delete*", "kms:TagResource",
                         "kms:UntagResource", "kms:ScheduleKeyDeletion", "kms:CancelKeyDeletion"]
    policy = policy_doc(
        dict(allow({"AWS": root_arn(A)}, key_admin_actions), Sid="KeyAdministration"),
        dict(allow({"AWS": user_arn(A, "app")},
                   ["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey*", "kms:ReEncrypt*"],
                   Condition={"StringEquals": {"kms:EncryptionContext:tenant": "acme"},
                              "ForAllValues:StringEquals": {"kms:EncryptionContextKeys": ["tenant", "object"]}}),
             Sid="TenantScopedUse"),
        dict(allow({"AWS": user_arn(A, "aliasuser")}, ["kms:Encrypt"],
                   Condition={"StringEquals": {"kms:RequestAlias": "alias/cmek"}}), Sid="OnlyThroughTheAlias"),
        dict(allow({"AWS": "*"}, ["kms:DescribeKey"],
                   Condition={"StringLike": {"aws:PrincipalArn": f"arn:aws:iam::{A}:user/reader-*"}}),
             Sid="Readers"),
    )
    key = ra.create_key(Description="tenant key", Policy=policy)["KeyMetadata"]
    ra.create_alias(AliasName="alias/cmek", TargetKeyId=key["KeyId"])
    arn, app_arn = key["Arn"], user_arn(A, "app")

    acme = {"tenant": "acme"}
    blob = app.encrypt(KeyId=key["KeyId"], Plaintext=b"acme data", EncryptionContext=acme)["CiphertextBlob"]
    assert app.decrypt(CiphertextBlob=blob, EncryptionContext=acme)["Plaintext"] == b"acme data"
    ctx2 = {"tenant": "acme", "object": "o-17"}
    blob2 = app.encrypt(KeyId=key["KeyId"], Plaintext=b"object", EncryptionContext=ctx2)["CiphertextBlob"]
    assert app.decrypt(CiphertextBlob=blob2, EncryptionContext=ctx2)["Plaintext"] == b"object"
    dk = app.generate_data_key(KeyId=key["KeyId"], KeySpec="AES_256", EncryptionContext=acme)
    assert app.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext=acme)["Plaintext"] == dk["Plaintext"]
    app.generate_data_key_without_plaintext(KeyId=key["KeyId"], KeySpec="AES_256", EncryptionContext=ctx2)
    re = app.re_encrypt(CiphertextBlob=blob, SourceEncryptionContext=acme, DestinationKeyId=key["KeyId"],
                        DestinationEncryptionContext=ctx2)
    assert app.decrypt(CiphertextBlob=re["CiphertextBlob"], EncryptionContext=ctx2)["Plaintext"] == b"acme data"

    # Another tenant, no context, or a context key outside the allowed set:
    # refused.
    for ctx in ({"tenant": "globex"}, {}, {"object": "o-17"}, {"tenant": "acme", "extra": "x"},
                {"Tenant": "acme"}):
        expect_denied(app.encrypt, KeyId=key["KeyId"], Plaintext=b"x", EncryptionContext=ctx,
                      principal=app_arn, op="Encrypt", key_arn=arn, why="no-resource")
        expect_denied(app.generate_data_key, KeyId=key["KeyId"], KeySpec="AES_256", EncryptionContext=ctx,
                      principal=app_arn, op="GenerateDataKey", key_arn=arn, why="no-resource")
    # Decrypt with the wrong context is refused before the ciphertext is
    # even checked (the policy does not allow the request).
    expect_denied(app.decrypt, CiphertextBlob=blob, EncryptionContext={"tenant": "globex"},
                  principal=app_arn, op="Decrypt", key_arn=arn, why="no-resource")
    # The key's administrators cannot use it.
    expect_denied(ra.encrypt, KeyId=key["KeyId"], Plaintext=b"x", EncryptionContext=acme,
                  principal=root_arn(A), op="Encrypt", key_arn=arn, why="no-resource")
    expect_denied(ra.decrypt, CiphertextBlob=blob, EncryptionContext=acme,
                  principal=root_arn(A), op="Decrypt", key_arn=arn, why="no-resource")
    assert ra.describe_key(KeyId=key["KeyId"])["KeyMetadata"]["Description"] == "tenant key"

    # kms:RequestAlias: through the alias only.
    aliased.encrypt(KeyId="alias/cmek", Plaintext=b"via alias")
    aliased.encrypt(KeyId=f"arn:aws:kms:{REGION}:{A}:alias/cmek", Plaintext=b"via alias arn")
    for kid in (key["KeyId"], arn):
        expect_denied(aliased.encrypt, KeyId=kid, Plaintext=b"x",
                      principal=user_arn(A, "aliasuser"), op="Encrypt", key_arn=arn, why="no-resource")

    # aws:PrincipalArn: reader-* may describe the key, writer may not.
    assert reader.describe_key(KeyId=arn)["KeyMetadata"]["KeyId"] == key["KeyId"]
    expect_denied(writer.describe_key, KeyId=arn,
                  principal=user_arn(A, "writer"), op="DescribeKey", key_arn=arn, why="no-identity")
    expect_denied(reader.encrypt, KeyId=arn, Plaintext=b"x",
                  principal=user_arn(A, "reader-1"), op="Encrypt", key_arn=arn, why="no-resource")


@pytest.mark.parametrize("bad_user", ["", "a" * 65, "sp ace", "slash/y"])
def test_user_names_are_validated(server, bad_user):
    root_a = new_account(server, A)
    p = atrest_admin(server, "user", "create", "--account", A, "--name", bad_user, env_creds=root_a, check=False)
    assert p.returncode != 0, p.stdout
    assert json.loads(atrest_admin(server, "user", "list", "--account", A).stdout)["users"] == []
