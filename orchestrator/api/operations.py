"""Route declarations that are also the OpenAPI document (`GET /v1/openapi.json`, built by
orchestrator.api.openapi from the same declarations).

Every public route is declared once, with `operation(...)`. That one declaration registers the
Flask rule, enforces the API key, validates query and header parameters with pydantic models,
checks the body's media type, serialises the pydantic model the view returns, and describes all
of it in the document, which is built from the app's real URL map. Nothing is written twice, so
the document cannot drift from the code.

How to declare a route (instead of `@bp.get(...)` + `@require_key()`)::

    from orchestrator.api.operations import Body, operation
    from orchestrator.api.body import read_json_object
    from orchestrator.responses import PickOut
    from orchestrator.schemas import PickIn

    @operation(bp, "POST", "/batches/<uuid:batch_id>/picks", "Pick an asset",
               auth="client",            # "admin", or None for a public route
               query=MyQuery,            # optional pydantic model; the view gets it as `query=`
               headers=MyHeaders,        # optional pydantic model (field alias = header name) -> `headers=`
               body=Body(PickIn),        # request body: a JSON model (+ other media types, see Body)
               responses={201: PickOut}, # status -> pydantic model, Content(...), or None (no body)
               problems=(409,),          # extra problem statuses the view may raise
               response_headers={201: {"Location": "the new pick"}})  # headers the view sets
    def pick(batch_id: uuid.UUID) -> tuple[PickOut, int]:
        data = PickIn.model_validate(read_json_object())   # the same model validates the body
        ...
        return PickOut(...), 201

- Path parameters come from the rule: `<uuid:x>` is documented as a UUID, `<int:x>` as an
  integer, anything else as a string.
- Problem responses (`application/problem+json`, schema `Problem`) are added for you: 401 with
  auth, 403 with auth="admin", 404 with path parameters, 400 with query or header parameters,
  400/413/415/422 with a body, and 414/431 everywhere (the HTTP server's limits). Declare any
  other status the view raises in `problems`.
- A view returns the pydantic model declared for its status (optionally `(model, status)` or
  `(model, status, headers)`); returning another model is a programming error (TypeError). For
  non-JSON answers (streams, 204) return a flask Response and declare it with Content or None.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import wraps
from typing import Any, TypeVar, get_args, get_origin

from flask import Blueprint, jsonify, request
from pydantic import BaseModel, ValidationError

from orchestrator import jsonbody
from orchestrator.api.auth import require_key
from orchestrator.errors import DomainError

F = TypeVar("F", bound=Callable[..., Any])


class InvalidParameters(DomainError, status=400, slug="invalid-parameters", title="Invalid parameters"):
    """A query or header parameter does not match its declaration."""

    def __init__(self, where: str, problems: Iterable[tuple[tuple[Any, ...], str]]):
        errors = [{"position": None, "custom_id": None, "field": ".".join([where, *(str(p) for p in loc)]),
                   "message": message} for loc, message in problems]
        summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        super().__init__(f"invalid {summary}", errors=errors, error_count=len(errors))


class UnsupportedMediaType(DomainError, status=415, slug="media-type", title="Unsupported media type"):
    """The body's media type is not one the operation takes."""


class EmptyBody(DomainError, status=400, slug="empty-body", title="Empty body"):
    """A required body is missing."""


@dataclass(frozen=True)
class Content:
    """A non-default media type: a pydantic model of the content (or of each line), or a raw schema."""

    media_type: str
    model: type[BaseModel] | None = None
    schema: Mapping[str, Any] | None = None
    description: str = ""


@dataclass(frozen=True)
class Body:
    """A request body: `json` is the application/json model; `others` add more media types."""

    json: type[BaseModel] | None
    others: tuple[Content, ...] = ()
    required: bool = True
    default_media_type: str = "application/json"  # assumed when the request names none

    def media_types(self) -> list[str]:
        """Every media type this body may be sent as."""
        return (["application/json"] if self.json else []) + [c.media_type for c in self.others]


ResponseSpec = type[BaseModel] | Content | None


@dataclass
class Operation:
    """One declared route: what the document says and what the wrapper enforces."""

    method: str
    summary: str
    description: str
    auth: str | None
    query: type[BaseModel] | None
    headers: type[BaseModel] | None
    body: Body | None
    responses: dict[int, ResponseSpec]
    problems: tuple[int, ...]
    tags: tuple[str, ...] = field(default_factory=tuple)
    response_headers: Mapping[int, Mapping[str, str]] = field(default_factory=dict)

    def problem_statuses(self, has_path_params: bool) -> list[int]:
        """Problem statuses this operation can answer."""
        # The HTTP server refuses a request line or header fields over 8 KiB before any view runs.
        statuses = {*self.problems, 414, 431}
        if self.auth:
            statuses.add(401)
        if self.auth == "admin":
            statuses.add(403)
        if has_path_params:
            statuses.add(404)
        if self.query or self.headers:
            statuses.add(400)
        if self.body:
            statuses |= {400, 413, 415, 422}
        return sorted(statuses - set(self.responses))


def operation(bp: Blueprint, method: str, rule: str, summary: str, *, auth: str | None = "client",
              query: type[BaseModel] | None = None, headers: type[BaseModel] | None = None,
              body: Body | None = None, responses: Mapping[int, ResponseSpec],
              problems: Iterable[int] = (), tags: Iterable[str] = (),
              response_headers: Mapping[int, Mapping[str, str]] | None = None) -> Callable[[F], F]:
    """Declare, register and document one route (see the module docstring)."""

    def decorator(view: F) -> F:
        op = Operation(method.upper(), summary, (view.__doc__ or "").strip(), auth, query, headers, body,
                       dict(responses), tuple(problems), tuple(tags) or (bp.name,), dict(response_headers or {}))

        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if op.query is not None:
                kwargs["query"] = _parse_params(op.query, "query", request.args.getlist)
            if op.headers is not None:
                kwargs["headers"] = _parse_params(op.headers, "header", _header_list)
            if op.body is not None:
                _check_body(op.body)
            return _render(op, view(*args, **kwargs))

        guarded = require_key(auth)(wrapper) if auth else wrapper
        guarded.__operation__ = op  # type: ignore[attr-defined]
        bp.add_url_rule(rule, endpoint=view.__name__, view_func=guarded, methods=[op.method])
        return view

    return decorator


def _header_list(name: str) -> list[str]:
    return request.headers.getlist(name)


def _parse_params(model: type[BaseModel], where: str, getlist: Callable[[str], list[str]]) -> BaseModel:
    values: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        key = info.alias or name
        given = getlist(key)
        if not given:
            continue
        values[key] = given if _is_list(info.annotation) else given[-1]
    try:
        jsonbody.check(values)  # NUL characters and the like never reach the database
    except jsonbody.BodyProblem as exc:
        raise InvalidParameters(where, [((exc.path or ("?",))[:1], exc.message)]) from None
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise InvalidParameters(where, [(e["loc"], e["msg"].removeprefix("Value error, ")) for e in exc.errors()]) \
            from None


def _is_list(annotation: Any) -> bool:
    if get_origin(annotation) in (list, tuple, set):
        return True
    return any(_is_list(a) for a in get_args(annotation) if a is not type(None))


def _check_body(body: Body) -> None:
    mimetype = request.mimetype or body.default_media_type
    if mimetype not in body.media_types():
        raise UnsupportedMediaType(f"send {' or '.join(body.media_types())}, not {mimetype}")
    if body.required and not request.content_length and not request.get_data(cache=True):
        raise EmptyBody(f"send a {mimetype} body")


def _render(op: Operation, result: Any) -> Any:
    """Serialise a returned model after checking it is the one declared for its status."""
    if isinstance(result, tuple) and result and isinstance(result[0], BaseModel):
        model, status, *rest = (*result, 200) if len(result) == 1 else result
    elif isinstance(result, BaseModel):
        model, status, rest = result, 200, []
    else:
        return result
    declared = op.responses.get(status)
    if not (isinstance(declared, type) and isinstance(model, declared)):
        raise TypeError(f"{op.method} returned {type(model).__name__} with {status}; declared {declared!r}")
    resp = jsonify(model.model_dump(mode="json", by_alias=True))
    resp.status_code = status
    for extra in rest:
        resp.headers.update(extra)
    return resp
