"""Route declarations that are also the OpenAPI document (`GET /v1/openapi.json`).

Every public route is declared once, with `operation(...)`. That one declaration registers the
Flask rule, enforces the API key, validates query and header parameters with pydantic models,
checks the body's media type, serialises the pydantic model the view returns, and describes all
of it in the document, which is built from the app's real URL map. Nothing is written twice, so
the document cannot drift from the code.

How to declare a route (instead of `@bp.get(...)` + `@require_key()`)::

    from orchestrator.api.spec import Body, operation
    from orchestrator.api.body import read_json_object
    from orchestrator.schemas import PickIn, PickOut

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

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import wraps
from typing import Any, TypeVar, get_args, get_origin

from flask import Blueprint, Flask, jsonify, request
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema

from orchestrator import jsonbody
from orchestrator.api.auth import require_key
from orchestrator.errors import DomainError
from orchestrator.schemas import Problem

PROBLEM_JSON = "application/problem+json"
F = TypeVar("F", bound=Callable[..., Any])
_RULE_PARAM = re.compile(r"<(?:(\w+)(?:\([^)]*\))?:)?(\w+)>")
_TITLES = {400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found", 405: "Method not allowed",
           409: "Conflict", 413: "Payload too large", 414: "URI too long", 415: "Unsupported media type",
           422: "Unprocessable content", 431: "Request header fields too large",
           503: "Unavailable"}


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


# ---- the document ----

def document(app: Flask, title: str, version: str, prefix: str = "/v1/") -> dict[str, Any]:
    """The OpenAPI 3.1 document of every declared route under `prefix`, from the app's URL map."""
    found: list[tuple[str, list[dict[str, Any]], Operation]] = []
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        op = getattr(app.view_functions.get(rule.endpoint), "__operation__", None)
        if op is None or not rule.rule.startswith(prefix):
            continue
        path, params = _path_params(rule.rule)
        found.append((path, params, op))
    pairs: list[tuple[type[BaseModel], Any]] = [(Problem, "serialization")]
    for _, _, op in found:
        if op.body:
            pairs += [(m, "validation") for m in [op.body.json, *(c.model for c in op.body.others)] if m]
        pairs += [(m.model if isinstance(m, Content) else m, "serialization") for m in op.responses.values()
                  if (m.model if isinstance(m, Content) else m) is not None]
    refs, defs = models_json_schema(list(dict.fromkeys(pairs)), ref_template="#/components/schemas/{model}")
    components = dict(defs.get("$defs", {}))
    paths: dict[str, dict[str, Any]] = {}
    for path, params, op in found:
        paths.setdefault(path, {})[op.method.lower()] = _operation_doc(op, params, refs, components)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {"schemas": components,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                      "description": "an API key: Authorization: Bearer <key>"}}},
    }


def _path_params(rule: str) -> tuple[str, list[dict[str, Any]]]:
    params: list[dict[str, Any]] = []

    def repl(m: re.Match[str]) -> str:
        converter, name = m.group(1) or "default", m.group(2)
        schema = {"uuid": {"type": "string", "format": "uuid"}, "int": {"type": "integer"}}.get(
            converter, {"type": "string", "pattern": "^[^/]+$"})
        params.append({"name": name, "in": "path", "required": True, "schema": schema})
        return "{" + name + "}"

    return _RULE_PARAM.sub(repl, rule), params


def _operation_doc(op: Operation, path_params: list[dict[str, Any]], refs: Mapping[Any, Any],
                   components: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"summary": op.summary, "operationId": _operation_id(op.summary), "tags": list(op.tags)}
    if op.description:
        out["description"] = op.description
    params = [*path_params, REQUEST_ID_PARAM]
    for model, where in ((op.query, "query"), (op.headers, "header")):
        if model is not None:
            params += _model_params(model, where, components)
    out["parameters"] = params
    if op.body:
        content: dict[str, Any] = {}
        if op.body.json:
            content["application/json"] = {"schema": refs[(op.body.json, "validation")]}
        for c in op.body.others:
            content[c.media_type] = _content_doc(c, refs, "validation")
        out["requestBody"] = {"required": op.body.required, "content": content}
    responses: dict[str, Any] = {}
    for status, spec in sorted(op.responses.items()):
        responses[str(status)] = _response_doc(status, spec, refs)
        extra = {name: {"description": text, "schema": {"type": "string"}}
                 for name, text in op.response_headers.get(status, {}).items()}
        responses[str(status)]["headers"] = {**REQUEST_ID_HEADER, **extra}
    problem = {"description": "a problem document (RFC 9457)",
               "content": {PROBLEM_JSON: {"schema": refs[(Problem, "serialization")]}}}
    for status in op.problem_statuses(bool(path_params)):
        # The HTTP server's own 414/431 answers come before the app, without a request id.
        headers = {} if status in (414, 431) else REQUEST_ID_HEADER
        responses[str(status)] = {**problem, "description": _TITLES.get(status, "Problem"), "headers": headers}
    out["responses"] = responses
    out["security"] = [{"bearer": []}] if op.auth else []
    return out


REQUEST_ID_PARAM: dict[str, Any] = {
    "name": "X-Request-Id", "in": "header", "required": False, "schema": {"type": "string"},
    "description": "your id for this request, echoed back and logged (first 64 characters); one is made if absent"}
REQUEST_ID_HEADER: dict[str, Any] = {"X-Request-Id": {"description": "the request's id (yours, or a generated one)",
                                                      "schema": {"type": "string"}}}


def _operation_id(summary: str) -> str:
    words = re.findall(r"[A-Za-z0-9]+", summary)
    return words[0].lower() + "".join(w.capitalize() for w in words[1:]) if words else "operation"


def _model_params(model: type[BaseModel], where: str, components: dict[str, Any]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(schema.pop("$defs", {}))
    required = set(schema.get("required", []))
    params = []
    for name, prop in schema.get("properties", {}).items():
        prop = dict(prop)
        description = prop.pop("description", None)
        prop.pop("title", None)
        param: dict[str, Any] = {"name": name, "in": where, "required": name in required, "schema": prop}
        if description:
            param["description"] = description
        if where == "query" and prop.get("type") == "array":
            param.update(style="form", explode=True)
        params.append(param)
    return params


def _content_doc(c: Content, refs: Mapping[Any, Any], mode: str) -> dict[str, Any]:
    if c.model is not None:
        doc: dict[str, Any] = {"schema": refs[(c.model, mode)]}
    else:
        doc = {"schema": dict(c.schema or {})}
    return doc


def _response_doc(status: int, spec: ResponseSpec, refs: Mapping[Any, Any]) -> dict[str, Any]:
    if spec is None:
        return {"description": "no content"}
    if isinstance(spec, Content):
        return {"description": spec.description or "OK",
                "content": {spec.media_type: _content_doc(spec, refs, "serialization")}}
    return {"description": (spec.__doc__ or "OK").strip().splitlines()[0],
            "content": {"application/json": {"schema": refs[(spec, "serialization")]}}}
