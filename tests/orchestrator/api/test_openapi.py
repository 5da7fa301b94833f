"""/v1/openapi.json is complete and true: generated from the route declarations the code runs."""

from __future__ import annotations

import re
from typing import Any

import jsonschema
import pytest
from flask import Blueprint, Flask
from flask.testing import FlaskClient
from openapi_spec_validator import validate
from pydantic import BaseModel

from orchestrator.api import openapi, operations
from orchestrator.responses import BatchOut

ITEM = {"model": "fal-ai/flux/schnell", "prompt": "a red fox"}


@pytest.fixture
def doc(client: FlaskClient) -> dict[str, Any]:
    resp = client.get("/v1/openapi.json")
    assert resp.status_code == 200
    return dict(resp.json)


def test_document_is_valid_openapi_31_and_covers_every_v1_route(client: FlaskClient, doc: dict[str, Any]) -> None:
    validate(doc)  # raises on any structural error
    routes = {(re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", r.rule), m.lower())
              for r in client.application.url_map.iter_rules() if r.rule.startswith("/v1/")
              for m in (r.methods or set()) - {"HEAD", "OPTIONS"}}
    documented = {(p, m) for p, ops in doc["paths"].items() for m in ops}
    assert routes == documented
    assert len(documented) >= 16


def test_every_operation_declares_its_path_query_and_header_parameters(doc: dict[str, Any]) -> None:
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == set(re.findall(r"{(\w+)}", path)), (method, path)
            for p in op.get("parameters", []):
                if p["in"] == "path":
                    assert p["required"] and p["schema"]["format"] == "uuid"
    params = {(p["in"], p["name"]): p for p in doc["paths"]["/v1/batches"]["get"]["parameters"]}
    assert set(params) == {("query", "state"), ("query", "cursor"), ("query", "limit"), ("query", "schedule_id"),
                           ("query", "provider"), ("query", "model"), ("query", "lane"), ("query", "q"),
                           ("query", "parent_batch_id"), ("header", "X-Request-Id")}
    assert params[("query", "limit")]["schema"] == {"type": "integer", "minimum": 1, "maximum": 500, "default": 100}
    state = params[("query", "state")]
    assert state["schema"]["maxItems"] == 20 and state["style"] == "form" and state["explode"] is True
    assert re.fullmatch(state["schema"]["items"]["pattern"], "queued,failed")
    assert not re.fullmatch(state["schema"]["items"]["pattern"], "bogus")
    jobs = {p["name"] for p in doc["paths"]["/v1/batches/{batch_id}/jobs"]["get"]["parameters"]}
    assert jobs == {"batch_id", "state", "cursor", "limit", "X-Request-Id"}
    post = {(p["in"], p["name"]) for p in doc["paths"]["/v1/batches"]["post"]["parameters"]}
    assert ("header", "Idempotency-Key") in post and ("query", "lane") in post and ("query", "callback_url") in post


def test_bodies_responses_problems_and_security(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": "an API key: Authorization: Bearer <key>"}
    post = doc["paths"]["/v1/batches"]["post"]
    body = post["requestBody"]["content"]
    assert body["application/json"]["schema"] == {"$ref": "#/components/schemas/BatchRequest"}
    assert body["application/x-ndjson"]["schema"] == {"$ref": "#/components/schemas/Item"}
    assert post["responses"]["201"]["content"]["application/json"]["schema"]["$ref"].endswith("/BatchOut")
    for status in ("400", "401", "409", "413", "415", "422"):
        problem = post["responses"][status]["content"]["application/problem+json"]["schema"]
        assert problem == {"$ref": "#/components/schemas/Problem"}, status
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            public = path in ("/v1/models", "/v1/openapi.json")
            assert op["security"] == ([] if public else [{"bearer": []}]), (method, path)
            assert public or "401" in op["responses"], (method, path)
            assert "{" not in path or "404" in op["responses"], (method, path)
            for status, resp in op["responses"].items():
                assert status == "204" or resp.get("content"), (method, path, status)
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert any(p["name"] == "X-Request-Id" and p["in"] == "header" for p in op["parameters"]), (method, path)
            for status, resp in op["responses"].items():
                assert ("X-Request-Id" in resp["headers"]) == (status not in ("414", "431")), (method, path, status)
    assert "Location" in post["responses"]["201"]["headers"]
    patch = doc["paths"]["/v1/schedules/{schedule_id}"]["patch"]["requestBody"]["content"]["application/json"]
    assert patch["schema"]["$ref"].endswith("/ScheduleUpdate") and "ScheduleIn" in schemas
    results = doc["paths"]["/v1/batches/{batch_id}/results"]["get"]["responses"]["200"]["content"]
    assert results["application/x-ndjson"]["schema"]["$ref"].endswith("/ManifestLine")
    job = schemas["JobDetail"]["properties"]["events"]["items"]["$ref"].rsplit("/", 1)[-1]
    assert "from" in schemas[job]["properties"]


def _schema_of(doc: dict[str, Any], path: str, method: str, status: int, media: str = "application/json") -> Any:
    ref = doc["paths"][path][method]["responses"][str(status)]["content"][media]["schema"]
    return {**ref, "components": doc["components"]}


def _check(doc: dict[str, Any], path: str, method: str, resp: Any) -> None:
    media = resp.mimetype
    schema = _schema_of(doc, path, method, resp.status_code, media)
    jsonschema.validate(resp.json, schema, format_checker=jsonschema.FormatChecker())


def test_real_answers_match_the_documented_schemas(client: FlaskClient, headers: dict[str, str],
                                                   doc: dict[str, Any]) -> None:
    created = client.post("/v1/batches", json={"items": [ITEM]}, headers=headers)
    _check(doc, "/v1/batches", "post", created)
    bid = created.json["id"]
    _check(doc, "/v1/batches", "get", client.get("/v1/batches", headers=headers))
    _check(doc, "/v1/batches/{batch_id}", "get", client.get(f"/v1/batches/{bid}", headers=headers))
    jobs = client.get(f"/v1/batches/{bid}/jobs", headers=headers)
    _check(doc, "/v1/batches/{batch_id}/jobs", "get", jobs)
    _check(doc, "/v1/batches/{batch_id}/cancel", "post", client.post(f"/v1/batches/{bid}/cancel", headers=headers))
    _check(doc, "/v1/batches/{batch_id}/retry", "post", client.post(f"/v1/batches/{bid}/retry", headers=headers))
    job = client.get(f"/v1/jobs/{jobs.json['data'][0]['id']}", headers=headers)
    _check(doc, "/v1/jobs/{job_id}", "get", job)
    assert job.json["events"][0]["from"] == "queued"
    _check(doc, "/v1/models", "get", client.get("/v1/models"))
    _check(doc, "/v1/callback-secret", "get", client.get("/v1/callback-secret", headers=headers))
    sched = client.post("/v1/schedules", json={"name": "n", "cron": "0 2 * * *", "template": {"items": [ITEM]}},
                        headers=headers)
    _check(doc, "/v1/schedules", "post", sched)
    _check(doc, "/v1/schedules", "get", client.get("/v1/schedules", headers=headers))
    sid = sched.json["id"]
    _check(doc, "/v1/schedules/{schedule_id}", "patch",
           client.patch(f"/v1/schedules/{sid}", json={"enabled": False}, headers=headers))
    _check(doc, "/v1/schedules/{schedule_id}/run", "post", client.post(f"/v1/schedules/{sid}/run", headers=headers))
    # Problems too: each is declared for the operation that answers it.
    _check(doc, "/v1/batches", "post", client.post("/v1/batches", json={"items": []}, headers=headers))
    _check(doc, "/v1/batches", "post", client.post("/v1/batches", data="x", content_type="text/csv", headers=headers))
    _check(doc, "/v1/batches", "get", client.get("/v1/batches?limit=0", headers=headers))
    _check(doc, "/v1/batches/{batch_id}", "get", client.get(f"/v1/batches/{bid}"))
    _check(doc, "/v1/batches/{batch_id}", "get", client.get("/v1/batches/not-a-uuid", headers=headers))
    _check(doc, "/v1/schedules", "post", client.post("/v1/schedules", json={"name": "n", "cron": "0 2 * * *",
                                                                             "template": {"items": [ITEM]}},
                                                      headers=headers))


def test_query_and_header_parameters_are_validated_by_their_declaration(client: FlaskClient,
                                                                         headers: dict[str, str]) -> None:
    bad = client.get("/v1/batches?limit=501", headers=headers)
    assert bad.status_code == 400 and bad.json["errors"][0]["field"] == "query.limit"
    long_key = {**headers, "Idempotency-Key": "k" * 201}
    bad = client.post("/v1/batches", json={"items": [ITEM]}, headers=long_key)
    assert bad.status_code == 400 and bad.json["errors"][0]["field"] == "header.Idempotency-Key"
    bad = client.post("/v1/batches?lane=fast", data='{"model": "flux-schnell", "prompt": "x"}\n',
                      content_type="application/x-ndjson", headers=headers)
    assert bad.status_code == 400 and bad.json["errors"][0]["field"] == "query.lane"


class _Declared(BaseModel):
    ok: bool


def test_a_view_returning_an_undeclared_model_is_a_programming_error() -> None:
    bp = Blueprint("t", __name__, url_prefix="/v1")

    @operations.operation(bp, "GET", "/right", "Right", auth=None, responses={200: _Declared})
    def right() -> _Declared:
        return _Declared(ok=True)

    @operations.operation(bp, "GET", "/wrong", "Wrong", auth=None, responses={200: _Declared})
    def wrong() -> BatchOut:
        return BatchOut.model_construct()

    app = Flask("t")
    app.register_blueprint(bp)
    client = app.test_client()
    assert client.get("/v1/right").json == {"ok": True}
    with pytest.raises(TypeError, match="declared"):
        app.testing = True
        client.get("/v1/wrong")
    ops = openapi.document(app, "t", "1")["paths"]
    assert set(ops) == {"/v1/right", "/v1/wrong"} and ops["/v1/right"]["get"]["security"] == []
