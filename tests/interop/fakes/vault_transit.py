"""A FAKE of HashiCorp Vault's transit secrets engine, for atrest's interop
tests. NOT Vault (nor OpenBao).

Written from Vault's public transit API documentation and the shapes its
public clients and tests use. Every `/v1/` request needs `X-Vault-Token`
(403 "permission denied" otherwise) and, when the fake has a namespace,
`X-Vault-Namespace`. On the mount (default `transit`):

* `POST /v1/{mount}/keys/{name}` ({type}) creates a key; `GET` reads it
  (`data`: type, keys, latest_version, min_decryption_version,
  min_encryption_version, deletion_allowed, supports_encryption...; 404 with
  an empty `errors` list when missing); `DELETE` deletes it when
  deletion_allowed (400 otherwise); `POST .../rotate` adds a version;
  `POST .../config` sets min_decryption_version, min_encryption_version,
  deletion_allowed.
* `POST /v1/{mount}/encrypt/{name}` ({plaintext: base64, key_version?}) ->
  data.ciphertext `vault:vN:base64(nonce || ciphertext || tag)`; like Vault,
  encrypting under a missing key creates it (upsert) unless started with
  `--no-upsert`.
* `POST /v1/{mount}/decrypt/{name}` ({ciphertext}) -> data.plaintext; 400
  "encryption key not found", "invalid ciphertext: ...", "cipher: message
  authentication failed".
* `POST /v1/{mount}/rewrap/{name}` ({ciphertext}) -> the ciphertext under
  the latest version.
* Anything else under `/v1/` -> 404 "no handler for route".

Key types: aes256-gcm96, aes128-gcm96, chacha20-poly1305 (encryption) and
ed25519 (signing only: encrypt is refused).

Control endpoints (tests only), JSON bodies:
  POST /_fake/deny     {"ops": ["read", "encrypt", "decrypt", "rewrap"]} ([] clears; no body: all)
  POST /_fake/fail     {"status": 503, "count": 1}  (503 answers say "Vault is sealed")
  GET  /_fake/stats    request counters
"""

from __future__ import annotations

import argparse
import base64
import binascii
import secrets
import threading
import time

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from ._common import Faults, Reply, parse_json, serve

TYPES = {
    "aes256-gcm96": (32, AESGCM),
    "aes128-gcm96": (16, AESGCM),
    "chacha20-poly1305": (32, ChaCha20Poly1305),
    "ed25519": (32, None),
}


def errors(status: int, *msgs: str) -> Reply:
    return Reply(status, {"errors": list(msgs)})


class Key:
    def __init__(self, name: str, ktype: str):
        self.name = name
        self.type = ktype
        self.versions: dict[int, tuple[bytes, int]] = {}
        self.latest = 0
        self.min_decryption_version = 1
        self.min_encryption_version = 0
        self.deletion_allowed = False
        self.rotate()

    def rotate(self) -> None:
        self.latest += 1
        self.versions[self.latest] = (secrets.token_bytes(TYPES[self.type][0]), int(time.time()))

    @property
    def encrypts(self) -> bool:
        return TYPES[self.type][1] is not None

    def data(self) -> dict:
        return {
            "allow_plaintext_backup": False,
            "auto_rotate_period": 0,
            "deletion_allowed": self.deletion_allowed,
            "derived": False,
            "exportable": False,
            "imported_key": False,
            "keys": {str(n): t for n, (_, t) in self.versions.items()},
            "latest_version": self.latest,
            "min_available_version": 0,
            "min_decryption_version": self.min_decryption_version,
            "min_encryption_version": self.min_encryption_version,
            "name": self.name,
            "supports_decryption": self.encrypts,
            "supports_derivation": self.encrypts,
            "supports_encryption": self.encrypts,
            "supports_signing": not self.encrypts,
            "type": self.type,
        }

    def encrypt(self, plaintext: bytes, version: int | None = None) -> str:
        n = version or self.latest
        key, _ = self.versions[n]
        nonce = secrets.token_bytes(12)
        ct = TYPES[self.type][1](key).encrypt(nonce, plaintext, None)
        return f"vault:v{n}:" + base64.b64encode(nonce + ct).decode()

    def decrypt(self, ciphertext) -> bytes | str:
        """The plaintext, or Vault's error text."""
        if not isinstance(ciphertext, str) or not ciphertext:
            return "missing ciphertext to decrypt"
        if not ciphertext.startswith("vault:"):
            return "invalid ciphertext: no prefix"
        parts = ciphertext.split(":", 2)
        if len(parts) != 3 or not parts[1].startswith("v"):
            return "invalid ciphertext: wrong number of fields"
        try:
            n = int(parts[1][1:])
        except ValueError:
            return "invalid ciphertext: version number could not be decoded"
        if n > self.latest:
            return "invalid ciphertext: version is too new"
        if n < self.min_decryption_version or n not in self.versions:
            return "invalid ciphertext: version is disallowed by policy (too old)"
        try:
            raw = base64.b64decode(parts[2], validate=True)
        except (binascii.Error, ValueError):
            return "invalid ciphertext: could not decode ciphertext"
        if len(raw) < 12 + 16:
            return "invalid ciphertext: unable to decrypt"
        key, _ = self.versions[n]
        try:
            return TYPES[self.type][1](key).decrypt(raw[:12], raw[12:], None)
        except InvalidTag:
            return "cipher: message authentication failed"


class App:
    def __init__(self, args):
        self.lock = threading.RLock()
        self.port = args.port
        if args.token_file:
            with open(args.token_file) as f:
                self.token = f.read().rstrip("\n")
        else:
            self.token = args.token
        self.mount = args.mount.strip("/")
        self.namespace = args.namespace
        self.upsert = not args.no_upsert
        self.initial = args.key
        self.keys: dict[str, Key] = {}
        self.denied: set[str] = set()
        self.faults = Faults()
        self.stats: dict[str, int] = {}

    def started(self) -> None:
        for k in self.initial:
            name, _, ktype = k.partition(":")
            self.keys[name] = Key(name, ktype or "aes256-gcm96")

    def handle(self, method, path, query, headers, body) -> Reply:
        if path.startswith("/_fake/"):
            return self.control(method, path[len("/_fake/") :], body)
        with self.lock:
            self.stats[f"{method} {path}"] = self.stats.get(f"{method} {path}", 0) + 1
        fault = self.faults.take("all")
        if fault:
            status, fbody = fault
            return Reply(status, fbody or {"errors": ["Vault is sealed"]})
        if not path.startswith("/v1/"):
            return errors(404, "not found")
        token = headers.get("X-Vault-Token", "")
        if not token or not secrets.compare_digest(token, self.token):
            return errors(403, "permission denied")
        if self.namespace and headers.get("X-Vault-Namespace", "").strip("/") != self.namespace:
            return errors(403, "permission denied")
        route = path[len("/v1/") :]
        if not route.startswith(self.mount + "/"):
            return errors(404, f'no handler for route "{route}". route entry not found.')
        parts = route[len(self.mount) + 1 :].split("/")
        req = parse_json(body)
        if req is None:
            return errors(400, "failed to parse JSON input")
        with self.lock:
            return self.transit(method, route, parts, req)

    def transit(self, method, route, parts, req) -> Reply:
        op = parts[0]
        name = parts[1] if len(parts) > 1 else ""
        extra = parts[2:]
        needed = {"keys": "read" if method == "GET" else "write"}.get(op, op)
        if needed in self.denied or "all" in self.denied:
            return errors(403, "permission denied")
        if not name:
            return errors(404, f'no handler for route "{route}". route entry not found.')
        key = self.keys.get(name)

        if op == "keys" and not extra:
            if method == "GET":
                if key is None:
                    return errors(404)
                return Reply(200, {"request_id": secrets.token_hex(8), "lease_id": "", "renewable": False,
                                   "lease_duration": 0, "data": key.data(), "wrap_info": None,
                                   "warnings": None, "auth": None})
            if method == "POST":
                ktype = req.get("type", "aes256-gcm96")
                if ktype not in TYPES:
                    return errors(400, f"unknown key type: {ktype}")
                if key is None:
                    self.keys[name] = key = Key(name, ktype)
                return Reply(200, {"data": key.data()})
            if method == "DELETE":
                if key is None:
                    return Reply(204)
                if not key.deletion_allowed:
                    return errors(400, "deletion is not allowed for this key")
                del self.keys[name]
                return Reply(204)
        if op == "keys" and extra in (["rotate"], ["config"]) and method == "POST":
            if key is None:
                return errors(400, "key not found")
            if extra == ["rotate"]:
                key.rotate()
            else:
                for f in ("min_decryption_version", "min_encryption_version"):
                    if f in req:
                        setattr(key, f, int(req[f]))
                if "deletion_allowed" in req:
                    key.deletion_allowed = bool(req["deletion_allowed"])
            return Reply(200, {"data": key.data()})
        if extra or method != "POST":
            return errors(405, "unsupported operation")

        if op == "encrypt":
            try:
                plaintext = base64.b64decode(req.get("plaintext", ""), validate=True)
            except (binascii.Error, ValueError, TypeError):
                return errors(400, "failed to base64-decode plaintext")
            if key is None:
                if not self.upsert:
                    return errors(400, "encryption key not found")
                self.keys[name] = key = Key(name, req.get("type", "aes256-gcm96"))
            if not key.encrypts:
                return errors(400, f"key type {key.type} does not support encryption")
            version = req.get("key_version") or None
            if version is not None and (version not in key.versions or version < key.min_encryption_version):
                return errors(400, "invalid key version")
            ct = key.encrypt(plaintext, version)
            return Reply(200, {"data": {"ciphertext": ct, "key_version": int(ct.split(":")[1][1:])}})
        if op in ("decrypt", "rewrap"):
            if key is None:
                return errors(400, "encryption key not found")
            if not key.encrypts:
                return errors(400, f"key type {key.type} does not support decryption")
            out = key.decrypt(req.get("ciphertext"))
            if isinstance(out, str):
                return errors(400, out)
            if op == "decrypt":
                return Reply(200, {"data": {"plaintext": base64.b64encode(out).decode()}})
            ct = key.encrypt(out)
            return Reply(200, {"data": {"ciphertext": ct, "key_version": key.latest}})
        return errors(404, f'no handler for route "{route}". route entry not found.')

    def control(self, method, what, body) -> Reply:
        req = parse_json(body) or {}
        with self.lock:
            if what == "stats" and method == "GET":
                return Reply(200, dict(self.stats))
            if method != "POST":
                return Reply(405, {"errors": ["POST"]})
            if what == "fail":
                self.faults.set(req)
                return Reply(200, {"ok": True})
            if what == "deny":
                self.denied = set(req.get("ops", ["all"]))
                return Reply(200, {"denied": sorted(self.denied)})
            return Reply(404, {"errors": ["unknown control endpoint"]})


def main() -> None:
    ap = argparse.ArgumentParser(description="FAKE Vault transit (tests only)")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--token", default="")
    ap.add_argument("--token-file")
    ap.add_argument("--mount", default="transit")
    ap.add_argument("--namespace", default="")
    ap.add_argument("--no-upsert", action="store_true")
    ap.add_argument("--key", action="append", default=[], help="NAME[:TYPE] to create (aes256-gcm96)")
    args = ap.parse_args()
    if not (args.token or args.token_file):
        ap.error("--token or --token-file is required")
    serve(App(args), args.port)


if __name__ == "__main__":
    main()
