"""Catalog sources: rows read at each firing from storage (`storage:<key>`) or an HTTPS URL.

A storage key is relative to the tenant's own namespace (`storage:catalog/products.csv` reads
`<tenant>/catalog/products.csv`), so one tenant cannot read another's objects. An HTTPS source
is fetched under the same rules as every outbound call made for a tenant: the host's addresses
must all be public unless the operator allows private ones (`ORCH_SOURCE_ALLOW_PRIVATE`, which
also permits plain http for local development), the connection goes to the address that was
checked (no second DNS lookup to rebind), redirects are not followed, the body is capped
and the whole read has a deadline. The content type must be one a CSV or JSONL file is served
with.
"""

from __future__ import annotations

import csv
import io
import ipaddress
import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from orchestrator import netpolicy
from orchestrator.redact import redact_url
from orchestrator.storage.base import Storage, StorageError, validate_key

Resolver = Callable[[str, int], list[str]]
CSV_TYPES = ("text/csv", "application/csv", "text/plain", "application/octet-stream")
JSONL_TYPES = ("application/x-ndjson", "application/jsonl", "application/x-jsonlines", "application/ndjson",
               "application/json", "text/plain", "application/octet-stream")


class SourceError(ValueError):
    """The source cannot be used; `field` says which part of the request is at fault."""

    def __init__(self, message: str, field: str = "catalog.source"):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class SourcePolicy:
    """Operator limits on reading sources."""

    max_bytes: int = 64 * 1024 * 1024
    timeout: float = 30.0
    allow_private: bool = False
    max_rows: int = 100_000


@dataclass(frozen=True)
class Source:
    """A parsed `source` value."""

    kind: str  # "storage" | "http"
    location: str  # the tenant-relative key, or the URL
    format: str  # "csv" | "jsonl"


def parse(value: str, fmt: str | None, policy: SourcePolicy) -> Source:
    """Check a source's syntax (and, for a literal IP, its address) without any I/O."""
    if value.startswith("storage:"):
        key = value.removeprefix("storage:").lstrip("/")
        try:
            validate_key(key)
        except ValueError as exc:
            raise SourceError(f"storage key is not valid: {exc}") from None
        return Source("storage", key, fmt or _format_from(key))
    parts = urlsplit(value)
    allowed = ("https", "http") if policy.allow_private else ("https",)
    if parts.scheme not in allowed or not parts.hostname:
        raise SourceError("must be storage:<key> or an https:// URL")
    if parts.username or parts.password:
        raise SourceError("must not carry credentials in the URL")
    literal = _literal_ip(parts.hostname)
    if literal is not None and not policy.allow_private:
        check_address(literal, policy)
    return Source("http", value, fmt or _format_from(parts.path))


def _format_from(name: str) -> str:
    lowered = name.lower()
    if lowered.endswith(".csv"):
        return "csv"
    if lowered.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    raise SourceError("cannot tell the format from the name: end it in .csv or .jsonl, or set source_format",
                      field="catalog.source_format")


def _literal_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def check_address(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, policy: SourcePolicy) -> None:
    """Refuse a non-public address (loopback, private, link-local, CGNAT, reserved...): orchestrator.netpolicy."""
    reason = netpolicy.AddressPolicy(policy.allow_private).refusal(str(addr))
    if reason:
        raise SourceError(f"refused: {addr} is not a public address ({reason}; the operator setting "
                          "ORCH_SOURCE_ALLOW_PRIVATE allows loopback and private sources)")


def system_resolver(host: str, port: int) -> list[str]:
    """Every address `host` resolves to."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise SourceError(f"cannot resolve {host}: {exc.strerror or exc}") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def read_rows(source: Source, tenant: str, storage: Storage, http: httpx.Client, policy: SourcePolicy,
              resolver: Resolver = system_resolver) -> list[dict[str, Any]]:
    """Read and parse the whole source once; raises SourceError saying what went wrong."""
    if source.kind == "storage":
        try:
            data = storage.read(f"{tenant}/{source.location}", policy.max_bytes)
        except StorageError as exc:
            raise SourceError(f"cannot read storage:{source.location}: {exc}") from None
        if data is None:
            raise SourceError(f"storage:{source.location} does not exist")
        content_type = None
    else:
        data, content_type = fetch(source.location, http, policy, resolver)
    return parse_rows(data, source.format, content_type, policy.max_rows)


def fetch(url: str, http: httpx.Client, policy: SourcePolicy, resolver: Resolver = system_resolver) -> tuple[
        bytes, str]:
    """GET an http(s) URL from a checked address: pinned IP, Host and SNI kept, no redirects."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    literal = _literal_ip(host)
    addresses = [str(literal)] if literal is not None else resolver(host, port)
    if not addresses:
        raise SourceError(f"{host} has no address")
    for address in addresses:  # every answer must pass: the client could be handed any of them
        check_address(ipaddress.ip_address(address), policy)
    pinned = address_url(url, addresses[0])
    headers = {"Host": parts.netloc.rsplit("@", 1)[-1], "Accept": "text/csv, application/x-ndjson, */*;q=0.1"}
    extensions = {"sni_hostname": host} if parts.scheme == "https" and literal is None else {}
    deadline = time.monotonic() + policy.timeout
    try:
        with http.stream("GET", pinned, headers=headers, timeout=policy.timeout, follow_redirects=False,
                         extensions=extensions) as resp:
            if resp.status_code != 200:
                raise SourceError(f"GET {redact_url(url)} answered {resp.status_code}"
                                  + (" (redirects are not followed)" if resp.is_redirect else ""))
            content_type = resp.headers.get("content-type", "").split(";", 1)[0].strip().lower()
            declared = resp.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > policy.max_bytes:
                raise SourceError(f"the source is larger than {policy.max_bytes} bytes")
            body = bytearray()
            for chunk in resp.iter_bytes():
                body += chunk
                if len(body) > policy.max_bytes:
                    raise SourceError(f"the source is larger than {policy.max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise SourceError(f"reading the source took longer than {policy.timeout:g} s")
    except httpx.TimeoutException:
        raise SourceError(f"GET {redact_url(url)} timed out after {policy.timeout:g} s") from None
    except httpx.HTTPError as exc:
        raise SourceError(f"GET {redact_url(url)} failed: {type(exc).__name__}") from None
    return bytes(body), content_type


def address_url(url: str, address: str) -> str:
    """The URL with its host replaced by a checked IP address."""
    parts = urlsplit(url)
    host = f"[{address}]" if ":" in address else address
    netloc = f"{host}:{parts.port}" if parts.port else host
    return parts._replace(netloc=netloc).geturl()


def parse_rows(data: bytes, fmt: str, content_type: str | None, max_rows: int) -> list[dict[str, Any]]:
    """CSV (header line + rows) or JSONL (one object of scalars per line) as row dicts."""
    allowed = CSV_TYPES if fmt == "csv" else JSONL_TYPES
    if content_type is not None and content_type not in allowed:
        raise SourceError(f"content type {content_type or 'none'} is not {fmt.upper()} "
                          f"(expected one of {', '.join(allowed)})")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise SourceError("the source is not UTF-8 text") from None
    rows = _csv_rows(text) if fmt == "csv" else _jsonl_rows(text)
    if not rows:
        raise SourceError("the source has no rows")
    if len(rows) > max_rows:
        raise SourceError(f"the source has {len(rows)} rows; at most {max_rows} per batch")
    return rows


def _csv_rows(text: str) -> list[dict[str, Any]]:
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        rows = []
        for number, row in enumerate(reader, start=2):
            if None in row:
                raise SourceError(f"CSV line {number} has more fields than the header")
            rows.append(dict(row))
    except csv.Error as exc:
        raise SourceError(f"not valid CSV: {exc}") from None
    if reader.fieldnames is None or any(not (f or "").strip() for f in reader.fieldnames):
        raise SourceError("the CSV header line is missing or has an empty column name")
    return rows


def _jsonl_rows(text: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError, ValueError) as exc:
            raise SourceError(f"JSONL line {number} is not valid JSON: {exc}") from None
        if not isinstance(row, dict) or any(isinstance(v, dict | list) for v in row.values()):
            raise SourceError(f"JSONL line {number} must be an object of plain values (strings, numbers)")
        rows.append(row)
    return rows
