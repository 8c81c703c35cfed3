"""Shared plumbing of the FAKE services (not real services; tests only).

A threaded HTTP/1.1 server on 127.0.0.1 whose handler dispatches to one
function per request, JSON helpers, failure injection (`/_fake/fail`), and
request counters (`/_fake/stats`). Nothing here logs a request body, a
header or a secret.
"""

from __future__ import annotations

import json
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Reply:
    """An answer: status, JSON (or raw) body, extra headers."""

    def __init__(self, status: int, body=None, headers: dict[str, str] | None = None):
        self.status = status
        self.body = body
        self.headers = headers or {}


class Faults:
    """Failure injection: the next `count` requests whose area matches get
    `status` (count -1: every request until cleared with count 0)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.status = 0
        self.count = 0
        self.where = "all"
        self.body = None

    def set(self, spec: dict) -> None:
        with self.lock:
            self.status = int(spec.get("status", 503))
            self.count = int(spec.get("count", 1))
            self.where = spec.get("where", "all")
            self.body = spec.get("body")

    def take(self, area: str):
        with self.lock:
            if self.count == 0 or self.where not in ("all", area):
                return None
            if self.count > 0:
                self.count -= 1
            return self.status, self.body


class FakeServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def make_handler(app):
    """A request handler class calling `app.handle(method, path, query,
    headers, body) -> Reply`."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "atrest-fake"
        sys_version = ""

        def log_message(self, format, *args):  # noqa: A002 - quiet
            pass

        def _serve(self, method: str) -> None:
            url = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            try:
                reply = app.handle(method, url.path, query, self.headers, body)
            except Exception as e:  # a bug in the fake: say so, briefly
                print(f"fake: {method} {url.path}: {type(e).__name__}: {e}", file=sys.stderr)
                reply = Reply(500, {"error": {"code": "FakeBug", "message": type(e).__name__}})
            if isinstance(reply.body, (bytes, str)):
                data = reply.body.encode() if isinstance(reply.body, str) else reply.body
                ctype = "text/plain"
            elif reply.body is None:
                data, ctype = b"", None
            else:
                data, ctype = json.dumps(reply.body).encode(), "application/json; charset=utf-8"
            self.send_response(reply.status)
            if ctype:
                self.send_header("Content-Type", ctype)
            for k, v in reply.headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if method != "HEAD":
                self.wfile.write(data)

        def do_GET(self):
            self._serve("GET")

        def do_POST(self):
            self._serve("POST")

        def do_PUT(self):
            self._serve("PUT")

        def do_PATCH(self):
            self._serve("PATCH")

        def do_DELETE(self):
            self._serve("DELETE")

    return Handler


def parse_json(body: bytes):
    """The body as a JSON object, or None."""
    if not body:
        return {}
    try:
        v = json.loads(body)
    except ValueError:
        return None
    return v if isinstance(v, dict) else None


def serve(app, port: int) -> None:
    """Listens on 127.0.0.1:port (0: any free port), prints {"port": N} on
    one line, and serves until killed."""
    server = FakeServer(("127.0.0.1", port), make_handler(app))
    app.port = server.server_address[1]
    app.started()
    print(json.dumps({"port": app.port}), flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
