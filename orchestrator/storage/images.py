"""The store step's pure parts: download a provider image, verify it, upload it.

All I/O goes through an injected `httpx.Client`. Errors form one small tree, and each
carries `transient` (worth retrying the same step later):

    ImageError
    ├── DisallowedHost   scheme, host or port not on the allow-list, or the host resolved to an
    │                    internal address (a client built by netpolicy.guarded_client); no request was made
    ├── TooLarge         body above the size cap (declared or streamed)
    ├── DownloadFailed   network error or bad status; `expired` for 404/410
    ├── InvalidImage     does not decode, wrong format or wrong dimensions
    └── UploadFailed     the presigned PUT failed

Messages never contain presigned signatures: URLs pass through `redact_url` first.
"""

from __future__ import annotations

import hashlib
import io
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
from PIL import Image

from orchestrator.netpolicy import AddressRefused
from orchestrator.redact import redact_text, redact_url

DEFAULT_MAX_PIXELS = 8192 * 8192
_DEFAULT_PORTS = {"http": 80, "https": 443}
# Pillow format name → (content type, file extension). Providers only emit these three.
_FORMATS = {"JPEG": ("image/jpeg", "jpg"), "PNG": ("image/png", "png"), "WEBP": ("image/webp", "webp")}
_FORMAT_ALIASES = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}
_S3_ERROR_CODE = re.compile(rb"<Code>([A-Za-z]{1,64})</Code>")


class ImageError(Exception):
    """Base of every store-step error."""

    transient = False


class DisallowedHost(ImageError):
    """The URL's scheme, host or port is not allowed; nothing was requested."""


class TooLarge(ImageError):
    """The body is larger than the cap."""


class DownloadFailed(ImageError):
    """The download failed; `transient` for 5xx/429/timeouts, `expired` for 404/410."""

    def __init__(self, message: str, *, transient: bool, expired: bool = False, status: int | None = None):
        super().__init__(message)
        self.transient = transient
        self.expired = expired
        self.status = status


class InvalidImage(ImageError):
    """The bytes are not the image that was asked for."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class UploadFailed(ImageError):
    """The PUT to a presigned URL failed; `transient` for 5xx/429/timeouts."""

    def __init__(self, message: str, *, transient: bool, status: int | None = None):
        super().__init__(message)
        self.transient = transient
        self.status = status


@dataclass(frozen=True)
class VerifiedImage:
    """Facts about an image that decoded fully and matched the request."""

    sha256: str
    width: int
    height: int
    content_type: str
    ext: str
    size: int


def _host_port(netloc: str, scheme: str | None) -> tuple[str, int | None]:
    """Split `host[:port]` (IPv6 in brackets) into a normalised host and port."""
    parts = urlsplit(f"//{netloc}")
    host = (parts.hostname or "").rstrip(".")
    port = parts.port  # raises ValueError on a malformed port
    if port is None and scheme is not None:
        port = _DEFAULT_PORTS[scheme]
    return host, port


def host_allowed(url: str, allowed_hosts: Iterable[str]) -> bool:
    """Return True if `url` is http(s) and its host (and port) match an allow-list entry.

    Entries are `host`, `host:port`, `*.suffix` or `*.suffix:port`. Without a port an
    entry allows only the scheme's default port; `*.suffix` matches subdomains, not the
    suffix itself.
    """
    try:
        parts = urlsplit(url)
        if parts.scheme not in _DEFAULT_PORTS or parts.username is not None or parts.password is not None:
            return False
        host, port = _host_port(parts.netloc, parts.scheme)
        # httpx must see the same host and port, or a parser quirk could send the request elsewhere.
        seen = httpx.URL(url)
        if seen.host.rstrip(".") != host or (seen.port or _DEFAULT_PORTS[parts.scheme]) != port:
            return False
    except (ValueError, httpx.InvalidURL):
        return False
    for entry in allowed_hosts:
        try:
            pattern, entry_port = _host_port(entry.strip().lower(), None)
        except ValueError:
            continue
        if (entry_port or _DEFAULT_PORTS[parts.scheme]) != port or not pattern:
            continue
        if entry.strip().startswith("*."):
            if host.endswith("." + pattern.removeprefix("*.")):
                return True
        elif host == pattern:
            return True
    return False


def download_image(
    client: httpx.Client,
    url: str,
    *,
    allowed_hosts: Iterable[str],
    max_bytes: int,
    timeout: float,
    max_redirects: int = 3,
) -> bytes:
    """Fetch `url` from an allowed host, capped at `max_bytes` and `timeout` seconds overall."""
    allowed = list(allowed_hosts)
    deadline = time.monotonic() + timeout
    current = url
    for _ in range(max_redirects + 1):
        # Checked on every hop: a redirect must not lead outside the allow-list.
        if not host_allowed(current, allowed):
            raise DisallowedHost(f"host not allowed: {redact_url(current)}")
        try:
            with client.stream("GET", current, timeout=timeout, follow_redirects=False) as resp:
                if resp.is_redirect:
                    current = str(resp.url.join(resp.headers["location"]))
                    continue
                _check_download_status(resp.status_code, current)
                return _read_capped(resp, max_bytes, deadline)
        except AddressRefused as exc:
            # The allowed name resolved to an internal address: refused like a host off the list.
            raise DisallowedHost(f"address not allowed for {redact_url(current)}: {exc}") from None
        except httpx.TransportError as exc:
            raise DownloadFailed(_transport_message("GET", current, exc), transient=True) from None
    raise DownloadFailed(f"too many redirects from {redact_url(url)}", transient=False)


def _check_download_status(status: int, url: str) -> None:
    if status == 200:
        return
    message = f"GET {redact_url(url)} answered {status}"
    if status in (404, 410):
        # The provider's copy is gone: the job must be regenerated, not the download retried.
        raise DownloadFailed(message, transient=False, expired=True, status=status)
    raise DownloadFailed(message, transient=status in (408, 425, 429) or status >= 500, status=status)


def _read_capped(resp: httpx.Response, max_bytes: int, deadline: float) -> bytes:
    declared = resp.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise TooLarge(f"declared size {declared} exceeds {max_bytes} bytes")
    body = bytearray()
    # iter_bytes counts decoded bytes, so a compressed bomb hits the cap too.
    for chunk in resp.iter_bytes():
        body += chunk
        if len(body) > max_bytes:
            raise TooLarge(f"body exceeds {max_bytes} bytes")
        # httpx timeouts are per read; this bounds a server that trickles bytes forever.
        if time.monotonic() > deadline:
            raise DownloadFailed("download exceeded its overall time limit", transient=True)
    return bytes(body)


def _transport_message(method: str, url: str, exc: Exception) -> str:
    kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "failed"
    return f"{method} {redact_url(url)} {kind}: {type(exc).__name__}: {redact_text(str(exc))}"


def extension_for(output_format: str) -> str:
    """The file extension of images in a job's `output_format` (jpeg -> jpg)."""
    return _FORMATS[_FORMAT_ALIASES[output_format.lower()]][1]


def verify_image(
    data: bytes,
    *,
    expected_format: str | None,
    width: int | None,
    height: int | None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> VerifiedImage:
    """Decode `data` fully and check its format and dimensions; raise InvalidImage otherwise."""
    expected = None
    if expected_format is not None:
        expected = _FORMAT_ALIASES.get(expected_format.lower())
        if expected is None:
            raise ValueError(f"unsupported expected format {expected_format!r}")
    try:
        with Image.open(io.BytesIO(data), formats=list(_FORMATS)) as img:
            fmt, (w, h) = img.format or "", img.size
            # Header checks first, so a mismatched or oversized image is never decoded.
            _check_header(fmt, w, h, expected, width, height, max_pixels)
            img.load()
    except InvalidImage:
        raise
    except Exception as exc:
        # Pillow raises many types (OSError, SyntaxError, struct.error, ...) on hostile input.
        raise InvalidImage(f"not a decodable JPEG, PNG or WebP image ({type(exc).__name__})") from None
    content_type, ext = _FORMATS[fmt]
    return VerifiedImage(
        sha256=hashlib.sha256(data).hexdigest(),
        width=w,
        height=h,
        content_type=content_type,
        ext=ext,
        size=len(data),
    )


def _check_header(
    fmt: str, w: int, h: int, expected: str | None, width: int | None, height: int | None, max_pixels: int
) -> None:
    if expected is not None and fmt != expected:
        raise InvalidImage(f"format is {fmt}, expected {expected}")
    if (width is not None and w != width) or (height is not None and h != height):
        raise InvalidImage(f"dimensions are {w}x{h}, expected {width}x{height}")
    if w * h > max_pixels:
        raise InvalidImage(f"{w}x{h} exceeds {max_pixels} pixels")


def upload(client: httpx.Client, url: str, data: bytes, content_type: str, timeout: float) -> None:
    """PUT `data` to a presigned URL; raise UploadFailed unless it answers 2xx."""
    try:
        resp = client.put(
            url, content=data, headers={"Content-Type": content_type}, timeout=timeout, follow_redirects=False
        )
    except httpx.TransportError as exc:
        raise UploadFailed(_transport_message("PUT", url, exc), transient=True) from None
    if resp.is_success:
        return
    # S3's error XML names the cause (e.g. SignatureDoesNotMatch); nothing else of the body
    # is quoted, since it can echo the canonical request.
    code = _S3_ERROR_CODE.search(resp.content[:4096])
    detail = f" ({code.group(1).decode()})" if code else ""
    status = resp.status_code
    raise UploadFailed(
        f"PUT {redact_url(url)} answered {status}{detail}",
        transient=status in (408, 425, 429) or status >= 500,
        status=status,
    )
