"""The one JSON parser for request bodies: hostile input becomes a problem that says where, never a 5xx.

`json.loads` alone lets through what Postgres or the encoder later chokes on (NUL characters,
lone surrogates, NaN/Infinity), and raises bare RecursionError/ValueError for very deep nesting
or very long integers. `loads` refuses all of these and names the place: for a batch, the item
position and field (`items.3.prompt` -> position 3, field `prompt`), else the dotted path.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from orchestrator.errors import BatchRejected, ItemProblem

MAX_DEPTH = 64  # far beyond any real batch; keeps every later recursive step (pydantic, encoders) safe
MAX_INT_DIGITS = 30  # any real seed, size or count fits in 64 bits (20 digits)
_SURROGATE = re.compile("[\ud800-\udfff]")
_UNSAFE = re.compile("[\x00\ud800-\udfff]")
# The \u escape of a NUL or a surrogate (a valid pair \ud83d\ude00 matches too: it just takes the full check).
_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{},:]')
Path = tuple[str | int, ...]


@dataclass(frozen=True)
class _Refused:
    """Stands in for a number we refuse to build, so the walk can report where it was."""

    reason: str


def _int(text: str) -> int | _Refused:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        return _Refused(f"integer with {digits} digits; at most {MAX_INT_DIGITS}")
    return int(text)


def _float(text: str) -> float | _Refused:
    value = float(text)
    return value if math.isfinite(value) else _Refused(f"number {text[:20]} is out of range")


def _constant(text: str) -> _Refused:
    return _Refused(f"{text} is not valid JSON")


class BodyProblem(Exception):
    """Where (a path inside the document, or None for the whole body) and what is wrong.

    `custom_ids` maps the path of each enclosing object to its custom_id, when the document
    could not be parsed at all (too deep) and so cannot be looked into afterwards.
    """

    def __init__(self, path: Path | None, message: str, custom_ids: dict[Path, str] | None = None):
        super().__init__(message)
        self.path, self.message, self.custom_ids = path, message, custom_ids or {}


def loads(raw: bytes | str) -> Any:
    """Parse JSON text, or raise BodyProblem naming the first hostile place."""
    try:
        # Decoded as json.loads decodes bytes (UTF-8/16/32, surrogates kept), so _SUSPECT sees the text.
        text = raw.decode(json.detect_encoding(raw), "surrogatepass") if isinstance(raw, bytes) else raw
        data = json.loads(text, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except UnicodeDecodeError:
        raise BodyProblem(None, "the body is not valid UTF-8") from None
    except json.JSONDecodeError as exc:
        raise BodyProblem(None, f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        path, custom_ids = _deep_path(raw)
        raise BodyProblem(path, f"nested deeper than {MAX_DEPTH} levels", custom_ids) from None
    except ValueError as exc:  # e.g. int() limits not caught above
        raise BodyProblem(None, f"invalid JSON: {exc}") from None
    # The full walk (a path for every value) costs a second on a 100,000-item batch; it runs only
    # when there may be something to name: a refused number or too deep a nesting (the cheap walk
    # over the containers finds them), or a NUL or surrogate, which a parsed string can only hold
    # if the text has it raw or as a \u escape.
    if _suspect(text) or not _plain(data, 0):
        check(data)
    return data


def _suspect(text: str) -> bool:
    """Whether the text may hold a NUL or a lone surrogate (each test is one pass in C)."""
    if "\x00" in text or _ESCAPE.search(text):
        return True
    if text.isascii():
        return False
    try:
        text.encode("utf-8")  # strict: fails on a surrogate
    except UnicodeEncodeError:
        return True
    return False


def _plain(value: Any, depth: int) -> bool:
    """No refused number and no nesting past MAX_DEPTH (recursion stops there, so the stack is safe)."""
    if depth > MAX_DEPTH:
        return False
    children = value.values() if type(value) is dict else value if type(value) is list else ()
    for child in children:
        kind = type(child)
        if kind is _Refused or ((kind is dict or kind is list) and not _plain(child, depth + 1)):
            return False
    return True


def check(data: Any) -> None:
    """Raise BodyProblem for the first value Postgres or a JSON encoder would refuse, or too deep a nesting."""
    for path, value in _walk(data):
        message = _refusal(value)
        if message:
            raise BodyProblem(path, message)


def _walk(data: Any) -> Iterator[tuple[Path, Any]]:
    # Iterative, so depth cannot exhaust the stack here either.
    stack: list[tuple[Path, Any]] = [((), data)]
    while stack:
        path, value = stack.pop()
        if len(path) > MAX_DEPTH:
            yield path[:MAX_DEPTH + 1], _Refused(f"nested deeper than {MAX_DEPTH} levels")
            return
        if isinstance(value, dict):
            for key, child in reversed(value.items()):
                yield (*path, key), key  # keys are strings too
                stack.append(((*path, key), child))
        elif isinstance(value, list):
            stack.extend(((*path, i), child) for i, child in reversed(list(enumerate(value))))
        else:
            yield path, value


def _refusal(value: Any) -> str | None:
    if isinstance(value, _Refused):
        return value.reason
    if isinstance(value, str):
        if "\x00" in value:
            return "contains a NUL character (\\u0000)"
        if _SURROGATE.search(value):
            return "contains a lone UTF-16 surrogate (e.g. \\ud800)"
    return None


def _deep_path(raw: bytes | str) -> tuple[Path | None, dict[Path, str]]:
    """Where nesting first goes past MAX_DEPTH, and the custom_ids on the way (run only once parsing failed)."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    path: list[str | int] = []
    kinds: list[bytes] = []  # the open containers
    key: str | int | None = None  # the current key (object) or index (array) of the innermost container
    custom_ids: dict[Path, str] = {}
    for m in _TOKEN.finditer(data):
        tok = m.group()
        if tok in (b"[", b"{"):
            if kinds:
                path.append(key if key is not None else 0)
            kinds.append(tok)
            key = 0 if tok == b"[" else None
            if len(kinds) > MAX_DEPTH:
                return tuple(path), custom_ids
        elif tok in (b"]", b"}"):
            kinds.pop()
            key = path.pop() if path else None
        elif tok == b",":
            key = key + 1 if kinds and kinds[-1] == b"[" and isinstance(key, int) else None
        elif tok.startswith(b'"') and kinds and kinds[-1] == b"{":
            text = tok[1:-1].decode("utf-8", "replace")
            if key is None:
                key = text  # an object key
            elif key == "custom_id":
                custom_ids[tuple(path)] = text  # its value
    return None, custom_ids


def as_item_problem(problem: BodyProblem, data: Any = None, prefix: str = "",
                    position: int | None = None) -> ItemProblem:
    """The problem as a batch item problem: `items.<n>.<field>` names item n; others keep their path."""
    path = list(problem.path or ())
    item_path: Path | None = () if position is not None else None  # a JSONL line is the item itself
    if position is None and len(path) >= 2 and path[0] == "items" and isinstance(path[1], int):
        position, item_path, path = path[1], ("items", path[1]), path[2:]
    cid = None
    if item_path is not None:
        item = _get(data, item_path)
        cid = item.get("custom_id") if isinstance(item, dict) else problem.custom_ids.get(item_path)
    custom_id = cid if isinstance(cid, str) and _refusal(cid) is None else None
    # A hostile key is named escaped, so the problem document itself stays clean.
    field = ".".join(_escaped(str(p)) for p in path) or ("item" if position is not None else "body")
    return ItemProblem(position, custom_id, prefix + field, problem.message)


def _escaped(text: str) -> str:
    return _UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _get(data: Any, path: Path) -> Any:
    for part in path:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def loads_batch_body(raw: bytes | str, prefix: str = "") -> Any:
    """`loads`, raising BatchRejected (422) with the item and field instead of BodyProblem."""
    try:
        return loads(raw)
    except BodyProblem as exc:
        raise BatchRejected([as_item_problem(exc, partial(raw), prefix)]) from None


def partial(raw: bytes | str) -> Any:
    """The document without its refused parts, for naming custom_ids (None if it does not parse)."""
    try:
        return json.loads(raw, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except (ValueError, RecursionError):
        return None
