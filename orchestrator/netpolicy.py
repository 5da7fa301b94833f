"""Which addresses the system may connect to on a tenant's or a provider's behalf (no SSRF).

A client's `callback_url` and a provider's image URL are chosen by someone else. Both are
checked twice: when they arrive (`check_url`: a literal address, or every address the name
resolves to, must be public) and when we connect (`guarded_client`: the transport resolves the
name once, vets every address, and connects to a vetted address itself, so a name that changes
between the two checks - DNS rebinding - cannot steer the connection inside). Host header and
TLS SNI keep the original name. Redirects are the caller's business (callbacks follow none; the
store step re-checks its allow-list on every hop, and every hop connects through this guard).

Refused: loopback, private (RFC 1918, ULA), shared CGNAT space, link-local (cloud metadata at
169.254.169.254 included), multicast, unspecified, reserved and documentation ranges, and the
IPv4-mapped, IPv4-compatible, 6to4, NAT64 and Teredo forms of those. `allow_private` (operator
settings ORCH_CALLBACK_ALLOW_PRIVATE / ORCH_DOWNLOAD_ALLOW_PRIVATE, for local development and
the sandboxes) lets loopback, private and CGNAT addresses through; link-local, multicast,
unspecified and reserved addresses stay refused whatever the setting.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]
ALLOWED_WHEN_PRIVATE = frozenset({"loopback", "private", "shared (CGNAT)"})
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
# Special-purpose ranges Python's is_global does not (in every version) exclude.
_RESERVED = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "198.18.0.0/15", "198.51.100.0/24",
    "203.0.113.0/24", "240.0.0.0/4", "255.255.255.255/32", "100::/64", "2001:db8::/32", "3fff::/20", "5f00::/16"))
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


class AddressRefused(Exception):
    """The destination is not one we connect to; no connection was made."""


def system_resolver(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to, in the system's order (raises OSError if it does not)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def classify(address: str | IPAddress) -> str | None:
    """Why this address is not public (a short category), or None if it is public."""
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            inner = classify(embedded)
            return f"{inner} (as IPv6)" if inner else None
        if ip.scope_id:
            return "link-local"
    checks: tuple[tuple[str, bool], ...] = (
        ("unspecified", ip.is_unspecified), ("loopback", ip.is_loopback), ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast), ("shared (CGNAT)", ip in _CGNAT),
        ("reserved", ip.is_reserved or any(ip in n for n in _RESERVED if n.version == ip.version)),
        ("private", ip.is_private), ("not globally routable", not ip.is_global))
    return next((name for name, hit in checks if hit), None)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]  # the client's address
    if any(ip in n for n in _NAT64):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if int(ip) >> 32 == 0 and int(ip) > 1:  # IPv4-compatible ::a.b.c.d (deprecated; ::1 and :: excluded)
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


@dataclass(frozen=True)
class AddressPolicy:
    """What may be connected to, and how names are resolved (injectable for tests)."""

    allow_private: bool = False
    resolver: Resolver = field(default=system_resolver, compare=False)

    def refusal(self, address: str) -> str | None:
        """Why connecting to this address is refused, or None."""
        try:
            kind = classify(address)
        except ValueError:
            return "not an IP address"
        if kind is None or (self.allow_private and kind.removesuffix(" (as IPv6)") in ALLOWED_WHEN_PRIVATE):
            return None
        return f"a {kind} address"

    def vet(self, host: str, port: int) -> list[str]:
        """The addresses to connect to for host:port; raise AddressRefused unless every one is allowed."""
        host = host.strip("[]")
        try:
            addresses = [str(ipaddress.ip_address(host.split("%")[0]))] if _is_ip(host) else self.resolver(host, port)
        except (OSError, UnicodeError) as exc:
            raise AddressRefused(f"{host} does not resolve ({type(exc).__name__})") from None
        if not addresses:
            raise AddressRefused(f"{host} does not resolve")
        for address in addresses:
            reason = self.refusal(address)
            if reason:
                where = address if address == host else f"{host} resolves to {address},"
                raise AddressRefused(f"{where} {reason}; only public addresses are allowed")
        return addresses


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%")[0])
        return True
    except ValueError:
        return False


def check_url(url: str, policy: AddressPolicy) -> None:
    """Raise AddressRefused unless the URL is http(s) to a host whose every address is allowed."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise AddressRefused("not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AddressRefused("must be an http(s) URL with a host")
    policy.vet(parts.hostname, port)


class _GuardedBackend(httpcore.NetworkBackend):
    """Resolves once, vets, and connects to the vetted address: what is checked is what is used."""

    def __init__(self, policy: AddressPolicy):
        self._policy = policy
        self._inner = httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        last: Exception | None = None
        for address in self._policy.vet(host, port):
            try:
                return self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except httpcore.ConnectError as exc:
                last = exc
        raise last or httpcore.ConnectError(f"could not connect to {host}")

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        raise AddressRefused("unix sockets are not allowed")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class GuardedTransport(httpx.HTTPTransport):
    """An httpx transport whose every TCP connection goes through the address policy."""

    def __init__(self, policy: AddressPolicy, *, verify: ssl.SSLContext | bool = True,
                 limits: httpx.Limits = httpx.Limits(max_connections=20, max_keepalive_connections=10)):
        super().__init__(verify=verify, limits=limits, trust_env=False)
        # httpx builds an httpcore pool without a way to pass a network backend; build the same
        # pool with ours (no proxy: a proxy would make the connection somewhere we did not vet).
        ssl_context = verify if isinstance(verify, ssl.SSLContext) else httpx.create_ssl_context(verify=verify)
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context, max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections, keepalive_expiry=limits.keepalive_expiry,
            network_backend=_GuardedBackend(policy))


def guarded_client(policy: AddressPolicy, timeout: httpx.Timeout | float = 30.0) -> httpx.Client:
    """An httpx client that only ever connects to addresses the policy allows (and ignores proxy settings)."""
    return httpx.Client(transport=GuardedTransport(policy), timeout=timeout, trust_env=False, follow_redirects=False)
