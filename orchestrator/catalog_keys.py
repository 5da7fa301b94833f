"""Catalog identities: content keys (what an image depends on) and stable object keys.

A content key hashes everything that decides the pixels: the requested model and the
normalized parameters (rendered prompt, size, steps, guidance, seed, LoRAs, native fields...).
Two rows with the same content key would be generated the same way, so an image stored for one
may stand for the other.

A key pattern such as `catalog/{sku}/{n}.{ext}` names a row's image from its own fields, so
a shop's URLs stay put across nights. Keys are relative to the tenant's namespace (the
tenant id is prefixed), so a tenant can never address another tenant's objects.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from string import Formatter
from typing import Any

from orchestrator.storage.base import validate_key

# Fields the pattern may use besides row columns: the image index and the stored file's extension.
BUILTINS = ("n", "ext")
_LITERAL = re.compile(r"[A-Za-z0-9._/-]*")
_VALUE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


class KeyPatternError(ValueError):
    """The pattern (or a row's value for it) cannot make a safe, unique key."""


def content_key(model: str, params: Mapping[str, Any]) -> str:
    """sha256 over the model and the normalized generation parameters, order-independent."""
    canonical = json.dumps({"model": model, "params": params}, sort_keys=True, separators=(",", ":"),
                           default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def pattern_fields(pattern: str) -> list[str]:
    """Check a pattern's syntax and return its placeholders (row columns and builtins).

    Rules: literal text uses `[A-Za-z0-9._/-]` only; placeholders are plain names (no format
    specs or conversions); the first path segment is literal (so catalog keys never collide
    with the per-batch keys `<tenant>/<batch id>/...`); the last segment ends in `.{ext}` so
    the key's extension matches the stored image.
    """
    fields: list[str] = []
    try:
        parsed = list(Formatter().parse(pattern))
    except ValueError as exc:
        raise KeyPatternError(f"is not a valid pattern: {exc}") from None
    for literal, name, spec, conversion in parsed:
        if not _LITERAL.fullmatch(literal):
            bad = sorted({ch for ch in literal if not _LITERAL.fullmatch(ch)})
            raise KeyPatternError(f"has characters not allowed in an object key: {''.join(bad)!r} "
                                  "(use letters, digits, '.', '_', '-', '/')")
        if name is None:
            continue
        if spec or conversion or not _FIELD.fullmatch(name):
            raise KeyPatternError(f"placeholder {{{name}}} must be a plain column name like {{sku}}")
        fields.append(name)
    if any(not seg or seg.startswith(".") for seg in pattern.split("/")):
        raise KeyPatternError("has an empty or dot-leading path segment (no '//', '.' or '..')")
    first = pattern.split("/", 1)[0]
    if not first or "{" in first or first.startswith("."):
        raise KeyPatternError("must start with a literal folder, e.g. catalog/{sku}/{n}.{ext}")
    if not pattern.endswith(".{ext}") or fields.count("ext") != 1:
        raise KeyPatternError("must end with .{ext} (the stored image's extension) and use {ext} only there")
    if "/" not in pattern:
        raise KeyPatternError("must have at least a folder and a file name")
    return fields


def check_pattern(pattern: str, columns: Sequence[str] | None, num_images: int) -> list[str]:
    """Validate a pattern against the columns rows will have (None when not known yet)."""
    fields = pattern_fields(pattern)
    if num_images > 1 and "n" not in fields:
        raise KeyPatternError("must contain {n} when a row makes more than one image")
    if columns is not None:
        missing = [f for f in fields if f not in BUILTINS and f not in columns]
        if missing:
            raise KeyPatternError(f"placeholder {{{missing[0]}}} is not a column of the rows "
                                  f"(columns: {', '.join(columns) or 'none'})")
    return fields


def render(tenant: str, pattern: str, row: Mapping[str, Any], index: int, ext: str) -> str:
    """The full object key of image `index` of `row`."""
    values: dict[str, str] = {"n": str(index), "ext": ext}
    for _, name, _, _ in Formatter().parse(pattern):
        if name is None or name in BUILTINS:
            continue
        raw = row.get(name)
        value = "" if raw is None else str(raw)
        if not _VALUE.fullmatch(value):
            raise KeyPatternError(f"value {value[:60]!r} of column {name!r} is not safe in an object key "
                                  "(use letters, digits, '.', '_', '-'; not empty, not starting with '.')")
        values[name] = value
    return validate_key(f"{tenant}/{pattern.format_map(values)}")


EXTENSIONS = {"jpeg": "jpg", "jpg": "jpg", "png": "png", "webp": "webp"}


def row_keys(tenant: str, pattern: str, rows: Sequence[Mapping[str, Any]], num_images: int,
             output_format: str) -> tuple[list[list[str]], list[tuple[int, str]]]:
    """Per row, the full key of each of its images, and (position, message) for every bad row.

    Every key must be unique across the catalog, or two rows would overwrite each other.
    """
    ext = EXTENSIONS[output_format]
    out: list[list[str]] = []
    problems: list[tuple[int, str]] = []
    seen: dict[str, int] = {}
    for position, row in enumerate(rows):
        keys: list[str] = []
        try:
            for index in range(num_images):
                key = render(tenant, pattern, row, index, ext)
                if key in seen:
                    raise KeyPatternError(f"makes the same key as row {seen[key]}: {key.split('/', 1)[1]}")
                seen[key] = position
                keys.append(key)
        except (KeyPatternError, ValueError) as exc:
            problems.append((position, str(exc)))
        out.append(keys)
    return out, problems
