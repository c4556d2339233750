"""Network guard for the test suite, loaded into every Python process the tests start (PYTHONPATH points here).

Any connection to a non-loopback address is refused at once and written to ``$COURSE_NETGUARD_LOG``, so a lesson
that secretly downloads fails its test (naming the host) instead of hanging — even when a library swallows the
error and carries on.
"""

from __future__ import annotations

import ipaddress
import os
import socket

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", ""}


class NetworkBlocked(ConnectionRefusedError):
    pass


def _is_local(host: object) -> bool:
    if host is None:
        return True
    host = host.decode() if isinstance(host, bytes) else str(host)
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _is_ip_literal(host: object) -> bool:
    host = host.decode() if isinstance(host, bytes) else str(host)
    try:
        ipaddress.ip_address(host.split("%")[0])
        return True
    except ValueError:
        return False


def _log(host: object, port: object) -> None:
    path = os.environ.get("COURSE_NETGUARD_LOG")
    if path:
        with open(path, "a") as handle:
            handle.write(f"{host}:{port} pid={os.getpid()}\n")


def install() -> None:
    if getattr(socket, "_course_netguard", False):
        return
    real_connect, real_connect_ex, real_getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def _check(address: object) -> None:
        if isinstance(address, tuple) and address and not _is_local(address[0]):
            _log(address[0], address[1] if len(address) > 1 else "?")
            raise NetworkBlocked(f"network guard: the tests run offline; blocked a connection to {address[0]}:{address[1]}")

    def connect(self, address):  # type: ignore[no-untyped-def]
        if self.family in (socket.AF_INET, socket.AF_INET6):
            _check(address)
        return real_connect(self, address)

    def connect_ex(self, address):  # type: ignore[no-untyped-def]
        if self.family in (socket.AF_INET, socket.AF_INET6):
            _check(address)
        return real_connect_ex(self, address)

    def getaddrinfo(host, port, *args, **kwargs):  # type: ignore[no-untyped-def]
        if not _is_local(host) and not _is_ip_literal(host):  # literals need no DNS; connect() checks them
            _log(host, port)
            raise socket.gaierror(socket.EAI_NONAME, f"network guard: the tests run offline; blocked a lookup of {host}")
        return real_getaddrinfo(host, port, *args, **kwargs)

    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
    socket.getaddrinfo = getaddrinfo
    socket._course_netguard = True  # type: ignore[attr-defined]


if os.environ.get("COURSE_NETGUARD") == "1":
    install()
