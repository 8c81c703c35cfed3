"""A FAKE of Azure Key Vault, its token endpoint and Resource Manager's vault
read, for atrest's interop tests. NOT the real services.

Written from the public documentation (Key Vault keys REST API 7.4, the
Microsoft identity platform's OAuth 2.0 client-credentials flow, and the
Resource Manager `Microsoft.KeyVault/vaults` GET, api-version 2022-07-01)
and the request/answer shapes Azure's public SDKs send and test against.
One process serves all three on one port:

* `POST /{tenant}/oauth2/v2.0/token` (form): grant_type=client_credentials,
  client_id, client_secret, scope `https://vault.azure.net/.default` or
  `https://management.azure.com/.default` -> {access_token, expires_in}.
  invalid_client (wrong secret) is 401, other refusals 400, with AADSTS
  codes in error_description. A token is good only for its own scope.
* `GET {vault_resource_id}?api-version=2022-07-01` (management token) ->
  the vault resource with `location` and `properties.enablePurgeProtection`.
* Keys (vault token, `?api-version=7.4`): `GET /keys/{name}[/{version}]`,
  `POST /keys/{name}[/{version}]/wrapkey|unwrapkey` ({alg, value}: base64url),
  `POST /keys/{name}/create`, `POST /keys/{name}/rotate`,
  `PATCH /keys/{name}[/{version}]` ({attributes}), `DELETE /keys/{name}`.
  RSA keys (RSA-OAEP-256, RSA-OAEP) and oct-HSM keys (A256KW), versioned.
  Errors as the service gives them: 401 Unauthorized (bad or wrong-scope
  token), 403 Forbidden (AccessDenied; KeyDisabled for a disabled key),
  404 KeyNotFound, 400 BadParameter (bad alg, bad value, failed unwrap).

Control endpoints (tests only), JSON bodies:
  POST /_fake/keys/{name}              {"kty": "RSA"|"oct-HSM", "size": 2048}
  POST /_fake/keys/{name}/rotate|disable|enable|delete
  POST /_fake/keys/{name}/attributes   {"enabled", "exp", "nbf", "recoveryLevel", "key_ops"}
  POST /_fake/vault                    {"purge_protection": bool, "location": str}
  POST /_fake/deny                     {"ops": ["get", "wrapKey", "unwrapKey", "arm"]} ([] clears;
                                       "arm": Resource Manager refuses to read the vault)
  POST /_fake/fail                     {"status": 503, "count": 1, "where": "all"|"token"|"arm"|"vault"}
  POST /_fake/revoke-tokens            every issued token becomes invalid (401)
  GET  /_fake/stats                    request counters
"""

from __future__ import annotations

import argparse
import base64
import secrets
import threading
import time
import urllib.parse
import uuid

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap,
    aes_key_wrap,
)

from ._common import Faults, Reply, parse_json, serve

API_VERSION = "7.4"
ARM_API_VERSION = "2022-07-01"
VAULT_SCOPE = "https://vault.azure.net/.default"
ARM_SCOPE = "https://management.azure.com/.default"


def b64url(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def unb64url(s: str) -> bytes:
    if not isinstance(s, str):
        raise ValueError("not a string")
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def err(status: int, code: str, message: str, inner: str | None = None, headers=None) -> Reply:
    e = {"code": code, "message": message}
    if inner:
        e["innererror"] = {"code": inner}
    return Reply(status, {"error": e}, headers)


class Version:
    def __init__(self, kty: str, size: int):
        self.id = uuid.uuid4().hex
        self.kty = kty
        self.created = int(time.time())
        if kty.startswith("RSA"):
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=size)
            self.secret = None
        else:
            self.private = None
            self.secret = secrets.token_bytes(size // 8)


class Key:
    def __init__(self, name: str, kty: str, size: int):
        self.name = name
        self.kty = kty
        self.size = size
        self.versions: list[Version] = [Version(kty, size)]
        self.attributes: dict = {"enabled": True}
        self.key_ops = ["encrypt", "decrypt", "wrapKey", "unwrapKey"]
        if kty.startswith("RSA"):
            self.key_ops += ["sign", "verify"]

    def version(self, vid: str | None) -> Version | None:
        if not vid:
            return self.versions[-1]
        for v in self.versions:
            if v.id == vid:
                return v
        return None

    def rotate(self) -> Version:
        v = Version(self.kty, self.size)
        self.versions.append(v)
        return v


class App:
    def __init__(self, args):
        self.lock = threading.RLock()
        self.port = args.port
        self.tenant = args.tenant
        self.client_id = args.client_id
        if args.client_secret_file:
            with open(args.client_secret_file) as f:
                self.client_secret = f.read().rstrip("\n")
        else:
            self.client_secret = args.client_secret
        self.resource_id = args.vault_resource_id.rstrip("/")
        self.location = args.location
        self.purge_protection = not args.no_purge_protection
        self.token_lifetime = args.token_lifetime
        self.initial_keys = [(k, "RSA", 2048) for k in args.key] + [
            (k, "oct-HSM", 256) for k in args.oct_key
        ]
        self.keys: dict[str, Key] = {}
        self.tokens: dict[str, tuple[str, float]] = {}
        self.denied: set[str] = set()
        self.faults = Faults()
        self.stats: dict[str, int] = {}

    def started(self) -> None:
        for name, kty, size in self.initial_keys:
            self.keys[name] = Key(name, kty, size)

    @property
    def vault_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def count(self, what: str) -> None:
        with self.lock:
            self.stats[what] = self.stats.get(what, 0) + 1

    # -- dispatch ---------------------------------------------------------

    def handle(self, method, path, query, headers, body) -> Reply:
        if path.startswith("/_fake/"):
            return self.control(method, path[len("/_fake/") :], body)
        if path.endswith("/oauth2/v2.0/token"):
            area = "token"
        elif path.lower().startswith("/subscriptions/"):
            area = "arm"
        else:
            area = "vault"
        self.count(f"{area} {method}")
        fault = self.faults.take(area)
        if fault:
            status, fbody = fault
            return Reply(
                status,
                fbody or {"error": {"code": "ServiceUnavailable", "message": "injected failure"}},
                {"Retry-After": "0"},
            )
        with self.lock:
            if area == "token":
                return self.token(method, path, body)
            if area == "arm":
                return self.arm(method, path, query, headers)
            return self.vault(method, path, query, headers, body)

    # -- token endpoint ---------------------------------------------------

    def token(self, method, path, body) -> Reply:
        tenant = path.split("/")[1]

        def refuse(status, error, code, text):
            return Reply(
                status,
                {
                    "error": error,
                    "error_description": f"{code}: {text}\r\nTrace ID: {uuid.uuid4()}",
                    "error_codes": [int(code[6:])],
                    "timestamp": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
                    "trace_id": str(uuid.uuid4()),
                    "correlation_id": str(uuid.uuid4()),
                },
            )

        if method != "POST":
            return refuse(400, "invalid_request", "AADSTS900561", "The endpoint only accepts POST requests.")
        if tenant != self.tenant:
            return refuse(400, "invalid_request", "AADSTS90002", f"Tenant '{tenant}' not found.")
        form = dict(urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        if form.get("grant_type") != "client_credentials":
            return refuse(400, "unsupported_grant_type", "AADSTS70003", "The app requested an unsupported grant type.")
        if form.get("client_id") != self.client_id:
            return refuse(
                400,
                "unauthorized_client",
                "AADSTS700016",
                f"Application with identifier '{form.get('client_id')}' was not found in the directory.",
            )
        if not secrets.compare_digest(form.get("client_secret", ""), self.client_secret):
            return refuse(
                401,
                "invalid_client",
                "AADSTS7000215",
                f"Invalid client secret provided. Ensure the secret being sent in the request is the client "
                f"secret value, not the client secret ID, for a secret added to app '{self.client_id}'.",
            )
        scope = form.get("scope", "")
        if scope not in (VAULT_SCOPE, ARM_SCOPE):
            return refuse(400, "invalid_scope", "AADSTS70011", f"The provided value for scope {scope} is not valid.")
        token = secrets.token_urlsafe(32)
        self.tokens[token] = (scope, time.time() + self.token_lifetime)
        self.count(f"token issued {scope}")
        return Reply(
            200,
            {
                "token_type": "Bearer",
                "expires_in": self.token_lifetime,
                "ext_expires_in": self.token_lifetime,
                "access_token": token,
            },
        )

    def bearer_scope(self, headers) -> str | None:
        auth = headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return None
        entry = self.tokens.get(auth[len("Bearer ") :])
        if not entry or entry[1] < time.time():
            return None
        return entry[0]

    # -- Resource Manager ---------------------------------------------------

    def arm(self, method, path, query, headers) -> Reply:
        scope = self.bearer_scope(headers)
        if scope is None:
            return err(401, "InvalidAuthenticationToken", "The access token is invalid.")
        if scope != ARM_SCOPE:
            return err(
                401,
                "InvalidAuthenticationTokenAudience",
                "The access token has been obtained for wrong audience or resource 'https://vault.azure.net'.",
            )
        if query.get("api-version") != ARM_API_VERSION:
            return err(400, "MissingApiVersionParameter", "The api-version query parameter (?api-version=) is required.")
        if "arm" in self.denied:
            return err(
                403,
                "AuthorizationFailed",
                f"The client '{self.client_id}' does not have authorization to perform action "
                f"'Microsoft.KeyVault/vaults/read' over scope '{self.resource_id}'.",
            )
        if method != "GET":
            return err(405, "MethodNotAllowed", "The fake only reads vaults.")
        if path.rstrip("/").lower() != self.resource_id.lower():
            name = path.rstrip("/").rsplit("/", 1)[-1]
            return err(
                404,
                "ResourceNotFound",
                f"The Resource 'Microsoft.KeyVault/vaults/{name}' under resource group was not found.",
            )
        props = {
            "sku": {"family": "A", "name": "standard"},
            "tenantId": self.tenant,
            "accessPolicies": [],
            "enabledForDeployment": False,
            "enabledForDiskEncryption": False,
            "enabledForTemplateDeployment": False,
            "enableSoftDelete": True,
            "softDeleteRetentionInDays": 90,
            "enableRbacAuthorization": True,
            "vaultUri": self.vault_url + "/",
            "provisioningState": "Succeeded",
            "publicNetworkAccess": "Enabled",
        }
        if self.purge_protection:
            props["enablePurgeProtection"] = True
        return Reply(
            200,
            {
                "id": self.resource_id,
                "name": self.resource_id.rsplit("/", 1)[-1],
                "type": "Microsoft.KeyVault/vaults",
                "location": self.location,
                "tags": {},
                "properties": props,
            },
        )

    # -- Key Vault ----------------------------------------------------------

    def bundle(self, key: Key, v: Version) -> dict:
        jwk = {"kid": f"{self.vault_url}/keys/{key.name}/{v.id}", "kty": key.kty, "key_ops": key.key_ops}
        if v.private is not None:
            pub = v.private.public_key().public_numbers()
            jwk["n"] = b64url(pub.n.to_bytes((pub.n.bit_length() + 7) // 8, "big"))
            jwk["e"] = b64url(pub.e.to_bytes(3, "big"))
        attrs = {
            "enabled": key.attributes.get("enabled", True),
            "created": v.created,
            "updated": v.created,
            "recoveryLevel": key.attributes.get(
                "recoveryLevel", "Recoverable" if self.purge_protection else "Recoverable+Purgeable"
            ),
            "recoverableDays": 90,
        }
        for t in ("exp", "nbf"):
            if key.attributes.get(t) is not None:
                attrs[t] = key.attributes[t]
        return {"key": jwk, "attributes": attrs, "tags": {}}

    def vault(self, method, path, query, headers, body) -> Reply:
        scope = self.bearer_scope(headers)
        challenge = {
            "WWW-Authenticate": f'Bearer authorization="http://127.0.0.1:{self.port}/{self.tenant}", '
            f'resource="https://vault.azure.net"'
        }
        if scope is None:
            return err(401, "Unauthorized", "AKV10000: Request is missing a Bearer or PoP token.", headers=challenge)
        if scope != VAULT_SCOPE:
            return err(401, "Unauthorized", "AKV10022: Invalid audience.", headers=challenge)
        if query.get("api-version") != API_VERSION:
            return err(400, "BadParameter", "The specified version of the API is not supported by the fake.")
        parts = [p for p in path.split("/") if p]
        if len(parts) < 2 or parts[0] != "keys":
            return err(404, "NotFound", "Route not found.")
        name = parts[1]
        rest = parts[2:]
        op = rest[-1] if rest and rest[-1] in ("wrapkey", "unwrapkey", "create", "rotate") else None
        vid = rest[0] if rest and rest[0] not in ("wrapkey", "unwrapkey", "create", "rotate") else None
        if len(rest) > (1 if vid else 0) + (1 if op else 0):
            return err(404, "NotFound", "Route not found.")
        req = parse_json(body)
        if req is None:
            return err(400, "BadParameter", "The request body is not a JSON object.")

        needed = {"wrapkey": "wrapKey", "unwrapkey": "unwrapKey", "create": "create", "rotate": "rotate"}.get(
            op, {"GET": "get", "PATCH": "update", "DELETE": "delete"}.get(method, "get")
        )
        if needed in self.denied or "all" in self.denied:
            return err(
                403,
                "Forbidden",
                f"Caller is not authorized to perform action on resource. Action: "
                f"'Microsoft.KeyVault/vaults/keys/{needed}/action' (appid={self.client_id})",
                "ForbiddenByRbac",
            )

        if op == "create" and method == "POST":
            kty = req.get("kty", "RSA")
            if kty not in ("RSA", "RSA-HSM", "oct-HSM"):
                return err(400, "BadParameter", f"Invalid kty {kty}.")
            size = int(req.get("key_size") or (2048 if kty.startswith("RSA") else 256))
            self.keys[name] = Key(name, kty, size)
            k = self.keys[name]
            return Reply(200, self.bundle(k, k.versions[-1]))

        key = self.keys.get(name)
        if key is None:
            return err(404, "KeyNotFound", f"A key with (name/id) {name} was not found in this key vault.")
        v = key.version(vid)
        if v is None:
            return err(404, "KeyNotFound", f"A key with (name/id) {name}/{vid} was not found in this key vault.")

        if op is None and method == "GET":
            return Reply(200, self.bundle(key, v))
        if op is None and method == "PATCH":
            key.attributes.update((req.get("attributes") or {}))
            if "key_ops" in req:
                key.key_ops = list(req["key_ops"])
            return Reply(200, self.bundle(key, v))
        if op is None and method == "DELETE":
            del self.keys[name]
            b = self.bundle(key, v)
            b.update(
                {
                    "recoveryId": f"{self.vault_url}/deletedkeys/{name}",
                    "deletedDate": int(time.time()),
                    "scheduledPurgeDate": int(time.time()) + 90 * 86400,
                }
            )
            return Reply(200, b)
        if op == "rotate" and method == "POST":
            return Reply(200, self.bundle(key, key.rotate()))
        if op in ("wrapkey", "unwrapkey") and method == "POST":
            return self.wrap_unwrap(key, v, op, req)
        return err(405, "MethodNotAllowed", f"{method} is not allowed here.")

    def wrap_unwrap(self, key: Key, v: Version, op: str, req: dict) -> Reply:
        action = "wrapKey" if op == "wrapkey" else "unwrapKey"
        now = int(time.time())
        if not key.attributes.get("enabled", True):
            return err(403, "Forbidden", f"Operation {action} is not allowed on a disabled key.", "KeyDisabled")
        if key.attributes.get("exp") is not None and key.attributes["exp"] <= now:
            return err(403, "Forbidden", f"Operation {action} is not allowed on an expired key.", "KeyExpired")
        if key.attributes.get("nbf") is not None and key.attributes["nbf"] > now:
            return err(403, "Forbidden", f"Operation {action} is not allowed on a key not yet valid.", "KeyNotYetValid")
        if action not in key.key_ops:
            return err(403, "Forbidden", f"Operation {action} is not permitted on this key.", "KeyOperationForbidden")
        alg = req.get("alg")
        try:
            value = unb64url(req.get("value"))
        except (ValueError, TypeError):
            return err(400, "BadParameter", "Property value is not valid base64url.")
        kid = f"{self.vault_url}/keys/{key.name}/{v.id}"
        if v.private is not None:
            hashes_for = {"RSA-OAEP-256": hashes.SHA256, "RSA-OAEP": hashes.SHA1}
            if alg not in hashes_for and alg != "RSA1_5":
                return err(400, "BadParameter", f"Invalid algorithm {alg!r} for an RSA key.")
            pad = (
                padding.PKCS1v15()
                if alg == "RSA1_5"
                else padding.OAEP(mgf=padding.MGF1(hashes_for[alg]()), algorithm=hashes_for[alg](), label=None)
            )
            try:
                if op == "wrapkey":
                    out = v.private.public_key().encrypt(value, pad)
                else:
                    out = v.private.decrypt(value, pad)
            except ValueError:
                return err(400, "BadParameter", f"{action} failed: the value is not valid for this key.")
        else:
            if alg != "A256KW" or len(v.secret) != 32:
                return err(400, "BadParameter", f"Invalid algorithm {alg!r} for an oct-HSM key.")
            try:
                out = aes_key_wrap(v.secret, value) if op == "wrapkey" else aes_key_unwrap(v.secret, value)
            except (ValueError, InvalidUnwrap):
                return err(400, "BadParameter", f"{action} failed: the value is not valid for this key.")
        return Reply(200, {"kid": kid, "value": b64url(out)})

    # -- control ----------------------------------------------------------------

    def control(self, method, what, body) -> Reply:
        req = parse_json(body) or {}
        with self.lock:
            if what == "stats" and method == "GET":
                return Reply(200, dict(self.stats))
            if method != "POST":
                return Reply(405, {"error": "POST"})
            if what == "fail":
                self.faults.set(req)
                return Reply(200, {"ok": True})
            if what == "deny":
                self.denied = set(req.get("ops", ["all"]))
                return Reply(200, {"denied": sorted(self.denied)})
            if what == "revoke-tokens":
                self.tokens.clear()
                return Reply(200, {"ok": True})
            if what == "vault":
                if "purge_protection" in req:
                    self.purge_protection = bool(req["purge_protection"])
                if "location" in req:
                    self.location = req["location"]
                return Reply(200, {"purge_protection": self.purge_protection, "location": self.location})
            parts = what.split("/")
            if parts[0] == "keys" and len(parts) in (2, 3):
                name = parts[1]
                if len(parts) == 2:
                    kty = req.get("kty", "RSA")
                    size = int(req.get("size") or (2048 if kty.startswith("RSA") else 256))
                    self.keys[name] = Key(name, kty, size)
                    return Reply(200, {"version": self.keys[name].versions[-1].id})
                key = self.keys.get(name)
                if key is None:
                    return Reply(404, {"error": "no such key"})
                action = parts[2]
                if action == "rotate":
                    return Reply(200, {"version": key.rotate().id})
                if action == "disable":
                    key.attributes["enabled"] = False
                elif action == "enable":
                    key.attributes["enabled"] = True
                elif action == "delete":
                    del self.keys[name]
                elif action == "attributes":
                    if "key_ops" in req:
                        key.key_ops = list(req.pop("key_ops"))
                    key.attributes.update(req)
                else:
                    return Reply(404, {"error": "unknown action"})
                return Reply(200, {"ok": True, "versions": [v.id for v in key.versions]})
            return Reply(404, {"error": "unknown control endpoint"})


def main() -> None:
    ap = argparse.ArgumentParser(description="FAKE Azure Key Vault (tests only)")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--tenant", default="tenant-1")
    ap.add_argument("--client-id", default="client-1")
    ap.add_argument("--client-secret", default="")
    ap.add_argument("--client-secret-file")
    ap.add_argument(
        "--vault-resource-id",
        default="/subscriptions/sub-1/resourceGroups/rg-1/providers/Microsoft.KeyVault/vaults/vault-1",
    )
    ap.add_argument("--location", default="westeurope")
    ap.add_argument("--no-purge-protection", action="store_true")
    ap.add_argument("--token-lifetime", type=int, default=3599)
    ap.add_argument("--key", action="append", default=[], help="an RSA-2048 key to create")
    ap.add_argument("--oct-key", action="append", default=[], help="an oct-HSM AES-256 key to create")
    args = ap.parse_args()
    if not (args.client_secret or args.client_secret_file):
        ap.error("--client-secret or --client-secret-file is required")
    serve(App(args), args.port)


if __name__ == "__main__":
    main()
