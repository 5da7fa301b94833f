"""The storage contract: a Protocol every backend implements, and safe object keys.

Keys are logical: `<tenant>/<batch>/<position>-<custom_id>/<n>.<ext>`. A backend maps
them onto its own namespace (an S3 prefix, a directory), so a key never carries
backend configuration.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

MAX_KEY_LENGTH = 1024
MAX_CUSTOM_ID_SEGMENT = 64

# Tenants and batch ids are ours (not client text), so they are validated, not rewritten:
# rewriting could merge two tenants' namespaces.
_STRICT_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
# Runs of dots go too, so no segment ever contains `..`, even harmlessly.
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+|\.{2,}")
_UNDERSCORES = re.compile(r"_{2,}")
_EXT = re.compile(r"[a-z0-9]{1,8}")
_CONTROL_OR_BACKSLASH = re.compile(r"[\x00-\x1f\x7f\\]")
_PREFIX_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class StorageError(Exception):
    """A storage backend failed; the message never holds a credential or signature."""


@dataclass(frozen=True)
class ObjectInfo:
    """What a backend knows about a stored object without downloading it."""

    key: str
    size: int
    content_type: str | None
    sha256: str | None = None


@runtime_checkable
class Storage(Protocol):
    """An object store reachable through short-lived presigned URLs."""

    def presign_put(self, key: str, content_type: str, expires_in: int) -> str:
        """Return a URL that accepts one HTTP PUT of `key` with exactly `content_type`."""
        ...

    def presign_get(self, key: str, expires_in: int) -> str:
        """Return a URL that serves `key` to an HTTP GET until it expires."""
        ...

    def head(self, key: str) -> ObjectInfo | None:
        """Return the object's size and type, or None when it does not exist."""
        ...

    def describe(self) -> str:
        """Return a description of the backend that is safe to log."""
        ...

    def exists(self, key: str) -> bool:
        """Return True when an object is stored at `key` (cheap: no download, no hashing)."""
        ...

    def read(self, key: str, max_bytes: int) -> bytes | None:
        """Return the object's bytes, or None when absent; StorageError above `max_bytes`."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object at `key` if it exists."""
        ...


@runtime_checkable
class DirectUploads(Protocol):
    """A backend a provider may PUT an image into itself (Runware's `uploadEndpoint`).

    S3-compatible storage is one. The local backend is not: its presigned URLs are our own API,
    so a provider's PUT would only come back through us. The provider writes a *staging* key
    (`staging_key`); only after the store step has read and verified it does a server-side copy
    put it at the final key, so a late or corrupted PUT can never replace a verified image.
    """

    def presign_upload(self, key: str, expires_in: int) -> str:
        """A URL accepting one PUT of `key` whatever its Content-Type (the copy sets the verified one)."""
        ...

    def read_tagged(self, key: str, max_bytes: int) -> tuple[bytes, str] | None:
        """The object's bytes and ETag, or None when absent; StorageError above `max_bytes`."""
        ...

    def copy_verified(self, source: str, target: str, *, etag: str, sha256: str, content_type: str) -> bool:
        """Copy `source` to `target` inside the store if it still is the object read as `etag`.

        True when the copy holds exactly the bytes whose SHA-256 is `sha256`; False when the
        source changed or vanished since it was read (`target` may then hold the changed bytes,
        so the caller must write it again; deleting it could remove a concurrent run's good copy).
        """
        ...


def staging_key(request_id: str, ext: str) -> str:
    """Where a provider uploads the one image of its request `request_id` (`incoming/<id>.<ext>`).

    One key per provider request, so a late upload of an earlier attempt never passes for this
    attempt's image; outside the tenants' folders, so nothing reads it by mistake. It needs only
    what a submit knows (the task id and the output format); the store step names the final key.
    """
    if not _EXT.fullmatch(ext):
        raise ValueError("extension must be 1-8 lowercase letters or digits")
    return validate_key(f"incoming/{sanitize_segment(request_id, 128)}.{ext}")


def validate_key(key: str) -> str:
    """Return `key` if it is a safe relative object key, else raise ValueError."""
    if not key or len(key) > MAX_KEY_LENGTH:
        raise ValueError("object key is empty or too long")
    if _CONTROL_OR_BACKSLASH.search(key):
        raise ValueError("object key contains a control character or backslash")
    for segment in key.split("/"):
        # Dot-leading segments cover `.` and `..`, and keep the local backend's hidden
        # temporary files unaddressable.
        if not segment or segment.startswith("."):
            raise ValueError("object key has an empty or dot-leading segment")
    return key


def sanitize_segment(value: str, max_length: int = MAX_CUSTOM_ID_SEGMENT) -> str:
    """Turn client text into one safe path segment: `[A-Za-z0-9._-]`, no leading dot, bounded."""
    cleaned = _UNDERSCORES.sub("_", _UNSAFE_CHARS.sub("_", value)).lstrip(".")[:max_length].rstrip(".")
    return cleaned or "_"


def object_key(
    tenant: str,
    batch_id: str,
    position: int,
    custom_id: str,
    index: int,
    ext: str,
    *,
    prefix: str = "",
) -> str:
    """Return `[prefix/]<tenant>/<batch>/<position>-<custom_id>/<index>.<ext>` for one image."""
    for name, value in (("tenant", tenant), ("batch_id", batch_id)):
        if not _STRICT_SEGMENT.fullmatch(value):
            raise ValueError(f"{name} is not a safe path segment")
    if position < 0 or index < 0:
        raise ValueError("position and index must be non-negative")
    ext = ext.lower().lstrip(".")
    if not _EXT.fullmatch(ext):
        raise ValueError("extension must be 1-8 lowercase letters or digits")
    parts = [p for p in prefix.split("/") if p]
    if not all(_PREFIX_SEGMENT.fullmatch(p) for p in parts):
        raise ValueError("prefix has an unsafe segment")
    # The position keeps keys unique even if two custom ids sanitise to the same text.
    parts += [tenant, batch_id, f"{position}-{sanitize_segment(custom_id)}", f"{index}.{ext}"]
    return validate_key("/".join(parts))
