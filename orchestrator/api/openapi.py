"""The OpenAPI 3.1 document (`GET /v1/openapi.json`), built from the app's URL map and the
`operation(...)` declaration behind each route (orchestrator.api.operations), so it cannot drift."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from flask import Flask
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from orchestrator.api.operations import Content, Operation, ResponseSpec
from orchestrator.responses import Problem

PROBLEM_JSON = "application/problem+json"
_RULE_PARAM = re.compile(r"<(?:(\w+)(?:\([^)]*\))?:)?(\w+)>")
_TITLES = {400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found", 405: "Method not allowed",
           409: "Conflict", 413: "Payload too large", 414: "URI too long", 415: "Unsupported media type",
           422: "Unprocessable content", 431: "Request header fields too large",
           503: "Unavailable"}


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
