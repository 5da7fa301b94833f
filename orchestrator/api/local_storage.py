"""Flask routes that serve the local storage backend's presigned PUT and GET URLs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import IO

from flask import Blueprint, Response, request, send_file

from orchestrator.errors import PROBLEM_TYPES
from orchestrator.storage.local import (
    KeyConflict,
    LocalStorage,
    ObjectTooLarge,
    SignatureInvalid,
    content_type_for,
)

CHUNK_SIZE = 64 * 1024


def problem(status: int, slug: str, title: str, detail: str) -> Response:
    """Return an RFC 9457 problem document with a stable `type`."""
    body = {"type": PROBLEM_TYPES + slug, "title": title, "status": status, "detail": detail}
    return Response(json.dumps(body), status=status, mimetype="application/problem+json")


def _read_chunks(stream: IO[bytes], chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    while chunk := stream.read(chunk_size):
        yield chunk


def _check(storage: LocalStorage, method: str, key: str) -> Response | None:
    """Return an error response if the key is unsafe or the signature is bad, else None."""
    try:
        storage.path_for(key)
    except ValueError:
        return problem(400, "storage-invalid-key", "Invalid object key", "The object key is not allowed.")
    content_type = request.mimetype if method == "PUT" else None
    try:
        storage.verify(method, key, request.args.get("expires"), request.args.get("sig"), content_type)
    except SignatureInvalid as exc:
        return problem(403, "storage-forbidden", "Forbidden", str(exc))
    return None


def make_storage_blueprint(storage: LocalStorage) -> Blueprint:
    """Return a blueprint serving `PUT` and `GET /storage/<key>` for `storage`."""
    bp = Blueprint("storage", __name__, url_prefix="/storage")
    too_large = f"Objects are limited to {storage.max_bytes} bytes."

    @bp.put("/<path:key>")
    def put_object(key: str) -> Response:
        """Store the raw request body at `key`: 201 if new, 200 if replaced."""
        if (error := _check(storage, "PUT", key)) is not None:
            return error
        if request.content_length is not None and request.content_length > storage.max_bytes:
            return problem(413, "storage-too-large", "Object too large", too_large)
        try:
            created = storage.write(key, _read_chunks(request.stream))
        except ObjectTooLarge:
            # Chunked bodies have no Content-Length; the cap is enforced while streaming.
            return problem(413, "storage-too-large", "Object too large", too_large)
        except KeyConflict as exc:
            return problem(409, "storage-key-conflict", "Key conflict", str(exc))
        return Response(status=201 if created else 200)

    @bp.get("/<path:key>")
    def get_object(key: str) -> Response:
        """Send the object at `key`; 404 if it does not exist."""
        if (error := _check(storage, "GET", key)) is not None:
            return error
        path = storage.path_for(key)
        if not path.is_file():
            return problem(404, "storage-not-found", "Not found", "No object is stored at this key.")
        response = send_file(path, mimetype=content_type_for(key), conditional=True, etag=True)
        # Stored bytes come from third parties; never let a browser reinterpret them.
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    return bp
