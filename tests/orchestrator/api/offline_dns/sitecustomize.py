"""Loaded by the fuzzed API process (it is on that process's PYTHONPATH only).

The fuzzer invents callback URLs with made-up host names; intake resolves them to check their
addresses. This resolver answers only for literal addresses and localhost, so a fuzz run sends
no DNS traffic off the machine: every other name "does not resolve" (and is refused, 422).
"""

import ipaddress
import socket

_system_getaddrinfo = socket.getaddrinfo


def _offline_getaddrinfo(host, port, *args, **kwargs):  # type: ignore[no-untyped-def]
    name = host.decode() if isinstance(host, bytes) else host
    if name is None or name == "localhost":
        return _system_getaddrinfo(host, port, *args, **kwargs)
    try:
        ipaddress.ip_address(name.split("%")[0])
    except ValueError:
        raise socket.gaierror(socket.EAI_NONAME, "offline resolver: no DNS in the fuzz run") from None
    return _system_getaddrinfo(host, port, *args, **kwargs)


socket.getaddrinfo = _offline_getaddrinfo
