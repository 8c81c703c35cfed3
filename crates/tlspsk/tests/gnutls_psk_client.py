#!/usr/bin/env python3
"""A TLS-PSK client on libgnutls, set up the way qemu (crypto/tlssession.c)
and libnbd (lib/crypto.c) set theirs up: PSK credentials only (no
certificate credentials), the key given in hex, a priority string.

gnutls-cli 3.7.9 (Debian 12) crashes after any TLS 1.2 PSK handshake (its
session printout calls gnutls_psk_server_get_username on the client), so
TLS 1.2 interop is proven with this client, which calls the library
directly through ctypes and needs no headers or compiler.

usage: gnutls_psk_client.py PORT IDENTITY HEXKEY PRIORITY LINE
Connects to 127.0.0.1:PORT, sends LINE and a newline, prints
"description: ..." and "echo: ..." lines; exits 0 on success, 2 if the
handshake failed ("error: ..." on stdout).
"""

import ctypes
import ctypes.util
import socket
import sys

GNUTLS_CLIENT = 1 << 1
GNUTLS_CRD_PSK = 4
GNUTLS_PSK_KEY_HEX = 1
GNUTLS_SHUT_RDWR = 0
# Not failures: retry (GnuTLS answers E_AGAIN after taking in a TLS 1.3
# NewSessionTicket, even on a blocking socket).
GNUTLS_E_AGAIN = -28
GNUTLS_E_INTERRUPTED = -52
RETRY = (GNUTLS_E_AGAIN, GNUTLS_E_INTERRUPTED)


class Datum(ctypes.Structure):
    _fields_ = [("data", ctypes.c_char_p), ("size", ctypes.c_uint)]


def load():
    name = ctypes.util.find_library("gnutls") or "libgnutls.so.30"
    lib = ctypes.CDLL(name)
    lib.gnutls_strerror.restype = ctypes.c_char_p
    lib.gnutls_session_get_desc.restype = ctypes.c_char_p
    lib.gnutls_record_send.restype = ctypes.c_ssize_t
    lib.gnutls_record_send.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    lib.gnutls_record_recv.restype = ctypes.c_ssize_t
    lib.gnutls_record_recv.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    lib.gnutls_psk_set_client_credentials.argtypes = [
        ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(Datum), ctypes.c_int]
    lib.gnutls_priority_set_direct.argtypes = [
        ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p)]
    lib.gnutls_credentials_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
    lib.gnutls_transport_set_int2.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    for f in ("gnutls_handshake", "gnutls_session_get_desc"):
        getattr(lib, f).argtypes = [ctypes.c_void_p]
    lib.gnutls_bye.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return lib


def check(lib, ret, what):
    if ret < 0:
        print(f"error: {what}: {lib.gnutls_strerror(ret).decode()}")
        sys.exit(2)


def main():
    port, identity, hexkey, priority, line = sys.argv[1:6]
    lib = load()
    cred = ctypes.c_void_p()
    check(lib, lib.gnutls_psk_allocate_client_credentials(ctypes.byref(cred)), "credentials")
    key = hexkey.encode()
    datum = Datum(key, len(key))
    check(lib, lib.gnutls_psk_set_client_credentials(
        cred, identity.encode(), ctypes.byref(datum), GNUTLS_PSK_KEY_HEX), "set key")
    session = ctypes.c_void_p()
    check(lib, lib.gnutls_init(ctypes.byref(session), GNUTLS_CLIENT), "init")
    err_pos = ctypes.c_char_p()
    check(lib, lib.gnutls_priority_set_direct(session, priority.encode(), ctypes.byref(err_pos)),
          "priority")
    check(lib, lib.gnutls_credentials_set(session, GNUTLS_CRD_PSK, cred), "credentials_set")
    sock = socket.create_connection(("127.0.0.1", int(port)))
    lib.gnutls_transport_set_int2(session, sock.fileno(), sock.fileno())
    ret = lib.gnutls_handshake(session)
    while ret in RETRY:
        ret = lib.gnutls_handshake(session)
    check(lib, ret, "handshake")
    print(f"description: {lib.gnutls_session_get_desc(session).decode()}", flush=True)
    data = (line + "\n").encode()
    check(lib, lib.gnutls_record_send(session, data, len(data)), "send")
    received = b""
    buf = ctypes.create_string_buffer(4096)
    while not received.endswith(b"\n"):
        n = lib.gnutls_record_recv(session, buf, len(buf))
        if n in RETRY:
            continue
        check(lib, n, "recv")
        if n == 0:
            break
        received += buf.raw[:n]
    print(f"echo: {received.decode().rstrip()}", flush=True)
    lib.gnutls_bye(session, GNUTLS_SHUT_RDWR)
    sock.close()


if __name__ == "__main__":
    main()
