"""Local-directory storage with HMAC-signed, expiring URLs (the embedded default).

A URL looks like `{public_url}/storage/<key>?expires=<unix>&sig=<hex>`, where
`sig = HMAC-SHA256(k, "<METHOD>\\n<key>\\n<expires>[\\n<content-type>]")`; the content type
line is present for PUT only. `k` is derived from the app secret, so a signature made
here can never be replayed against another use of the same secret.
"""

from __future__ import annotations

import hashlib
import hmac
import mimetypes
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from urllib.parse import quote, urlencode

from orchestrator.storage.base import ObjectInfo, StorageError, validate_key

DEFAULT_MAX_BYTES = 50 * 1024 * 1024
_CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}
_KEY_CONTEXT = b"orchestrator.storage.local.v1"


class SignatureInvalid(StorageError):
    """A presigned local URL is malformed, tampered with, or expired."""


class ObjectTooLarge(StorageError):
    """An upload exceeded the backend's size cap; nothing was stored."""


class KeyConflict(StorageError):
    """The key collides with a directory, or a parent of it is a file."""


def content_type_for(key: str) -> str:
    """Return the content type implied by the key's extension."""
    suffix = Path(key).suffix.lower()
    return _CONTENT_TYPES.get(suffix) or mimetypes.guess_type(key)[0] or "application/octet-stream"


def normalize_content_type(value: str | None) -> str:
    """Return the media type without parameters, lowercased (what PUT signatures bind)."""
    return (value or "").split(";", 1)[0].strip().lower()


class LocalStorage:
    """Objects as files under `root`, served by the storage blueprint at `public_url`."""

    def __init__(
        self,
        root: Path | str,
        *,
        secret_key: str,
        public_url: str,
        max_bytes: int = DEFAULT_MAX_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not secret_key:
            raise ValueError("local storage needs a non-empty secret key")
        self.root = Path(root).resolve()
        self.public_url = public_url.rstrip("/")
        self.max_bytes = max_bytes
        self._clock = clock
        self._key = hmac.new(secret_key.encode(), _KEY_CONTEXT, hashlib.sha256).digest()

    def describe(self) -> str:
        """Return a description of the backend that is safe to log."""
        return f"local directory {self.root} served at {self.public_url}/storage/"

    def presign_put(self, key: str, content_type: str, expires_in: int) -> str:
        """Return a URL accepting one PUT of `key` with `content_type`, valid `expires_in` s."""
        return self._presign("PUT", key, expires_in, normalize_content_type(content_type))

    def presign_get(self, key: str, expires_in: int) -> str:
        """Return a URL serving `key` to GET for `expires_in` seconds."""
        return self._presign("GET", key, expires_in, None)

    def _presign(self, method: str, key: str, expires_in: int, content_type: str | None) -> str:
        validate_key(key)
        if expires_in <= 0:
            raise ValueError("expires_in must be positive")
        expires = int(self._clock()) + expires_in
        sig = self.sign(method, key, expires, content_type)
        query = urlencode({"expires": expires, "sig": sig})
        return f"{self.public_url}/storage/{quote(key, safe='/')}?{query}"

    def sign(self, method: str, key: str, expires: int, content_type: str | None = None) -> str:
        """Return the hex signature for one (method, key, expires[, content type]) tuple."""
        parts = [method.upper(), key, str(expires)]
        if content_type is not None:
            parts.append(normalize_content_type(content_type))
        return hmac.new(self._key, "\n".join(parts).encode(), hashlib.sha256).hexdigest()

    def verify(
        self, method: str, key: str, expires: str | None, sig: str | None, content_type: str | None = None
    ) -> None:
        """Raise SignatureInvalid unless `sig` signs this request and has not expired."""
        # isascii: str.isdigit() accepts digits such as "²" that int() refuses.
        if not expires or not sig or not (expires.isascii() and expires.isdigit()) or len(expires) > 12:
            raise SignatureInvalid("missing or malformed signature parameters")
        # PUT signatures bind the content type, so a URL minted for a PNG cannot store HTML.
        ct = (content_type or "") if method.upper() == "PUT" else None
        expected = self.sign(method, key, int(expires), ct)
        # Bytes, not str: compare_digest rejects non-ASCII str, and sig is attacker-chosen.
        if not hmac.compare_digest(expected.encode(), sig.lower().encode()):
            raise SignatureInvalid("signature does not match")
        if int(expires) < self._clock():
            raise SignatureInvalid("signature has expired")

    def path_for(self, key: str) -> Path:
        """Map a key to its file under root, refusing anything that could escape it."""
        validate_key(key)
        path = (self.root / key).resolve()
        # Defence in depth: validate_key already bans `..`; this also catches symlinks.
        if not path.is_relative_to(self.root) or path == self.root:
            raise ValueError("object key escapes the storage root")
        return path

    def head(self, key: str) -> ObjectInfo | None:
        """Return size, content type and sha256 of a stored file, or None if absent."""
        path = self.path_for(key)
        if not path.is_file():
            return None
        digest = hashlib.sha256()
        size = 0
        with path.open("rb") as fh:
            while chunk := fh.read(1024 * 1024):
                digest.update(chunk)
                size += len(chunk)
        return ObjectInfo(key=key, size=size, content_type=content_type_for(key), sha256=digest.hexdigest())

    def exists(self, key: str) -> bool:
        """Return True when a file is stored at `key`.

        Cheap enough for a catalog's 20,000 keys: the key is validated (no `..`, no dot-leading
        segment) but not resolved, since answering yes or no reads nothing.
        """
        return os.path.isfile(os.path.join(self.root, validate_key(key)))

    def read(self, key: str, max_bytes: int) -> bytes | None:
        """Return the stored file's bytes, or None when absent."""
        path = self.path_for(key)
        try:
            with path.open("rb") as fh:
                data = fh.read(max_bytes + 1)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        if len(data) > max_bytes:
            raise ObjectTooLarge(f"object exceeds {max_bytes} bytes")
        return data

    def delete(self, key: str) -> None:
        """Remove the file at `key` if present."""
        self.path_for(key).unlink(missing_ok=True)

    def write(self, key: str, chunks: Iterable[bytes], max_bytes: int | None = None) -> bool:
        """Store `chunks` atomically at `key`; return True if the object is new."""
        limit = self.max_bytes if max_bytes is None else max_bytes
        path = self.path_for(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise KeyConflict("a parent of the key is an object") from None
        if path.is_dir():
            raise KeyConflict("the key names a directory of objects")
        # Temp file in the same directory so the rename is atomic; its dot-leading name
        # can never be addressed by a key, so half-written files are never served.
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=".upload-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as fh:
                written = 0
                for chunk in chunks:
                    written += len(chunk)
                    if written > limit:
                        raise ObjectTooLarge(f"object exceeds {limit} bytes")
                    fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
            created = not path.exists()
            os.replace(tmp_name, path)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        return created
