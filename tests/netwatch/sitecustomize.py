"""Loaded by the app under test (PYTHONPATH): records every attempt to reach a host that is
not this machine, so a test can check the app makes no outbound call offline."""
import os
import socket

_LOG = os.environ["NETWATCH_LOG"]
_LOCAL = {"127.0.0.1", "localhost", "::1", "0.0.0.0", ""}


def _record(kind, host):
    with open(_LOG, "a") as log:
        log.write(f"{kind} {host}\n")


_getaddrinfo = socket.getaddrinfo
_connect = socket.socket.connect


def getaddrinfo(host, *args, **kwargs):
    if isinstance(host, bytes):
        host = host.decode()
    if host not in _LOCAL:
        _record("dns", host)
    return _getaddrinfo(host, *args, **kwargs)


def connect(self, address):
    if isinstance(address, tuple) and address and address[0] not in _LOCAL:
        _record("connect", address[0])
    return _connect(self, address)


socket.getaddrinfo = getaddrinfo
socket.socket.connect = connect
