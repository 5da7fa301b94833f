"""Choose a storage backend from `ORCH_STORAGE_URL`."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from orchestrator.storage.base import Storage
from orchestrator.storage.local import LocalStorage
from orchestrator.storage.s3 import S3Storage


def storage_from_url(url: str, *, s3_endpoint_url: str | None, secret_key: str, public_url: str) -> Storage:
    """Return the backend for `s3://bucket/prefix` or `file:///absolute/dir`."""
    scheme = urlsplit(url).scheme.lower()
    if scheme == "s3":
        return S3Storage.from_url(url, endpoint_url=s3_endpoint_url or None)
    if scheme == "file":
        return LocalStorage(_file_url_path(url), secret_key=secret_key, public_url=public_url)
    raise ValueError("unsupported storage URL: expected s3://bucket/prefix or file:///absolute/dir")


def _file_url_path(url: str) -> Path:
    """Return the absolute directory named by a `file://` URL."""
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
        raise ValueError("a file:// storage URL must look like file:///absolute/dir")
    path = Path(unquote(parts.path))
    if not path.is_absolute() or ".." in path.parts:
        raise ValueError("a file:// storage URL needs an absolute directory without '..'")
    return path
